//! `sweep`, for cron: safe every minute beside live hooks. It ends sessions whose agent process is gone
//! (`owners_gone`), finishes ends a busy slot delayed, prunes records whose process is gone (`broker_gone`), stops
//! idle brokers (`idle_timeout`) and marked brokers no record knows (`unrecorded`), escalates overdue stop tickets,
//! reports duplicate `--resume` writers, and cleans tombstones, empty slots and an oversized log.

use std::collections::HashSet;
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::act::executor::{self, Mode};
use crate::act::finisher;
use crate::act::signal::Guard;
use crate::act::stopper::{self, StopOutcome, StopReport};
use crate::commands::session_end::{self, Ending};
use crate::config::{Config, SweepRequest};
use crate::decide::lineage::Known;
use crate::decide::resume;
use crate::decide::{self, SlotChange, SlotFacts, SweepPolicy};
use crate::error::Outcome;
use crate::model::clock;
use crate::model::deadline::Deadline;
use crate::model::name::SessionId;
use crate::model::plan::{Change, Plan};
use crate::model::record::{BrokerRecord, SessionRecord, StopTicket};
use crate::observe::proc::{self, Liveness};
use crate::store::Store;
use crate::store::events::{Event, Reason};
use crate::store::slot::{LOCK_WAIT, Slot, SlotView};

/// How long a sweep drives stop tickets before handing them to the finisher.
const SWEEP_STOP_DEADLINE: Duration = Duration::from_secs(3);

/// The policy a sweep runs with (printed with `-v`, included in `--json`).
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Policy {
    pub idle_ttl_secs: u64,
    pub retention_secs: u64,
    pub dry_run: bool,
    pub stuck_after_kills: u32,
}

pub(crate) use crate::model::action::SweepAction;

#[derive(Debug, Serialize)]
struct SweepReport {
    policy: Policy,
    actions: Vec<SweepAction>,
    stops: Vec<StopReport>,
    problems: Vec<String>,
}

struct Sweep<'a> {
    store: &'a Store,
    guard: Guard,
    policy: Policy,
    host: String,
    actions: Vec<SweepAction>,
    tickets: Vec<StopTicket>,
    problems: Vec<String>,
    /// The lineage tokens, pids and unreadable slots of the records `judge_slots` read.
    judged: Known,
}

pub(crate) fn run(args: &SweepRequest, config: &Config) -> anyhow::Result<Outcome> {
    let idle_ttl = args.idle_ttl;
    let Some(store) = Store::open_for(&config.state_dir, args.dry_run)? else {
        println!(
            "no state yet at {}: nothing to do",
            config.state_dir.display()
        );
        return Ok(Outcome::Done);
    };
    let policy = Policy {
        idle_ttl_secs: idle_ttl.as_secs(),
        retention_secs: args.retention.as_secs(),
        dry_run: args.dry_run,
        stuck_after_kills: stopper::STUCK_AFTER,
    };
    if config.verbose && !args.json {
        println!(
            "policy: idle ttl {} (brokers with no live owner; a broker's own --idle-ttl always applies), tombstones kept {}, {}",
            humantime::format_duration(idle_ttl),
            humantime::format_duration(args.retention),
            if args.dry_run { "dry run" } else { "acting" }
        );
    }
    let mut sweep = Sweep {
        store: &store,
        guard: Guard::new(),
        policy,
        host: proc::host_name(),
        actions: Vec::new(),
        tickets: Vec::new(),
        problems: Vec::new(),
        judged: Known::default(),
    };
    sweep.end_crashed_sessions();
    // The adapters claim their brokers first: a broker another tool shares is never one session's leftover.
    let claimed = crate::adapters::claimed(&args.codex, Deadline::far());
    for ticket in crate::act::leftovers::for_sweep(&store, &claimed, args.dry_run) {
        let what = ticket.argv.as_deref().unwrap_or_default().join(" ");
        let pid = Some(ticket.identity.pid);
        sweep.act("stop", Some(Reason::Leftover), what, pid, "stop");
        sweep.tickets.push(ticket);
    }
    let sessions = store.sessions.all();
    sweep.judge_slots(&sessions, idle_ttl);
    let plugin = crate::adapters::codex_plugin::at_sweep(
        &store,
        &sweep.guard,
        &args.codex,
        idle_ttl,
        args.dry_run,
    );
    sweep.actions.extend(plugin.actions);
    sweep.tickets.extend(plugin.tickets);
    sweep.problems.extend(plugin.problems);
    let snapshot = proc::scan_cmdlines(Deadline::far());
    sweep.stop_unrecorded();
    sweep.report_duplicate_writers(&snapshot, &sessions);
    sweep.drop_tombstones(&sessions, args.retention);
    let litter = crate::commands::sweep_litter::at_sweep(&store, args.dry_run);
    sweep.actions.extend(litter.actions);
    sweep.problems.extend(litter.problems);
    sweep.tickets_not_ours(args.dry_run);
    if !args.dry_run && store.log.rotate_if_oversized() {
        sweep.act("clean", None, "events.jsonl".to_owned(), None, "rotate");
    }
    let stops = sweep.drive_tickets()?;
    if !args.dry_run {
        crate::act::cgroup::tidy(&store);
    }
    let report = SweepReport {
        policy: sweep.policy,
        actions: sweep.actions,
        stops,
        problems: sweep.problems,
    };
    let ok =
        report.problems.is_empty() && report.stops.iter().all(|stop| !stop.outcome.is_failure());
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_human(&report);
    }
    Ok(Outcome::from_ok(ok))
}

impl Sweep<'_> {
    /// Records an action; `verb` is what is done ("prune", "stop", …), shown as "would prune" in a dry run and
    /// as "pruned" otherwise.
    fn act(
        &mut self,
        action: &'static str,
        reason: Option<Reason>,
        target: String,
        pid: Option<i32>,
        verb: &str,
    ) {
        let result = if self.policy.dry_run {
            format!("would {verb}")
        } else {
            past_tense(verb)
        };
        self.actions.push(SweepAction {
            action,
            reason: reason.map(|r| r.to_string()),
            target,
            pid,
            result,
        });
    }

    /// A session whose recorded agent process no longer has its identity ended without `SessionEnd` (SIGKILL, OOM,
    /// reboot, or an agent with no `SessionEnd` such as Codex): end it as `SessionEnd` would.
    fn end_crashed_sessions(&mut self) {
        for record in self.store.sessions.all() {
            if record.is_ended() || crate::model::record::is_other_host(&record.host, &self.host) {
                continue;
            }
            let Some(identity) = &record.agent_identity else {
                continue;
            };
            if identity.is_other_pid_ns(proc::own_pid_ns()) {
                continue;
            }
            if proc::is_alive(identity) {
                continue;
            }
            let Ok(session) = SessionId::parse(&record.session_id) else {
                continue;
            };
            let ending = Ending {
                session,
                reason: Reason::OwnersGone,
                agent_reason: None,
                seen: None,
                dry_run: self.policy.dry_run,
                // The sweep's own pass below judges the Codex plugin's brokers of crashed sessions.
                codex: crate::adapters::codex_plugin::Discovery::off(),
            };
            let report = session_end::end_session(
                self.store,
                &self.guard,
                &ending,
                Deadline::after(LOCK_WAIT),
            );
            self.act(
                "end_session",
                Some(Reason::OwnersGone),
                record.session_id.clone(),
                Some(identity.pid),
                "end",
            );
            // What ending it stops (its last-owned brokers, processes resuming it): a dry run shows no stops else.
            for ticket in &report.tickets {
                let (reason, pid) = (Reason::parse(&ticket.reason), Some(ticket.identity.pid));
                self.act("stop", reason, ticket.origin.clone(), pid, "stop");
            }
            self.problems.extend(report.problems);
            self.tickets.extend(report.tickets);
        }
    }

    /// Per slot, under its lock: drop owners whose session has ended, then prune, stop for idleness, or keep —
    /// one decided change a slot, the same in a dry run. Owners left in a slot whose live session does not index
    /// it (records of older versions) are indexed afterwards, each under its own session lock.
    fn judge_slots(&mut self, sessions: &[SessionRecord], idle_ttl: Duration) {
        let policy = SweepPolicy {
            now: SystemTime::now(),
            boot_now_ms: clock::boot_millis(),
            default_ttl: idle_ttl,
            retention: Duration::from_secs(self.policy.retention_secs),
        };
        let ended = |session: &str| {
            sessions
                .iter()
                .any(|record| record.session_id == session && record.is_ended())
        };
        let mode = Mode::dry(self.policy.dry_run);
        let liveness = Liveness::default();
        let here = proc::host();
        let mut unindexed: Vec<(String, String)> = Vec::new();
        let (slots, odd) = crate::store::slot_dirs::listing(&self.store.root);
        let odd = crate::commands::sweep_litter::odd_slots(&odd);
        self.actions.extend(odd.actions);
        self.problems.extend(odd.problems);
        for slot in slots {
            let label = slot.label();
            let mut seen: Option<BrokerRecord> = None;
            let decided = executor::update_slot(
                self.store,
                &slot,
                Deadline::after(LOCK_WAIT),
                mode,
                |view| {
                    seen = view.broker().cloned();
                    if matches!(view, SlotView::Unreadable(_)) {
                        self.judged.unreadable_slots.insert(label.clone());
                    }
                    let facts = observe_facts(view, sessions, &liveness, &self.host);
                    decide::slot::sweep(view, facts, ended, &policy, (&here, &label))
                },
            );
            if let Some(record) = &seen {
                self.judged.add_record(record);
            }
            match decided {
                Ok(change) => {
                    unindexed.extend(unindexed_owners(&change, seen.as_ref(), &label, sessions));
                    self.note(&label, change);
                }
                Err(err) => self.problems.push(format!("{label}: {err:#}")),
            }
        }
        if mode == Mode::Apply {
            for (session, label) in unindexed {
                if let Ok(id) = SessionId::parse(&session)
                    && let Err(err) =
                        executor::index_slot(self.store, &id, &label, Deadline::after(LOCK_WAIT))
                {
                    self.problems
                        .push(format!("indexing {label} for {session}: {err:#}"));
                }
            }
        }
    }

    /// Adds a slot's decided change to the report.
    fn note(&mut self, label: &str, change: SlotChange) {
        let pid = change.record().map(|record| record.identity.pid);
        match change {
            SlotChange::Keep => {}
            SlotChange::LeaveAlone { why } => self.problems.push(format!("{label}: {why}")),
            SlotChange::MoveAside { why } => {
                self.act(
                    "clean",
                    None,
                    label.to_owned(),
                    None,
                    "move aside corrupt broker.json",
                );
                self.problems
                    .push(format!("{label}: corrupt broker.json: {why}"));
            }
            SlotChange::RemoveEmpty { .. } => {
                self.act("clean", None, label.to_owned(), None, "remove empty slot");
            }
            SlotChange::Write { reason, .. } => self.act(
                "owner_remove",
                reason,
                label.to_owned(),
                pid,
                "remove ended owners",
            ),
            SlotChange::Prune { reason, .. } => {
                self.act("prune", Some(reason), label.to_owned(), pid, "prune");
            }
            SlotChange::HandOff { reason, ticket, .. } => {
                self.act("stop", Some(reason), label.to_owned(), pid, "stop");
                self.tickets.push(ticket);
            }
        }
    }

    /// Live processes of ours marked as brokers of this state root whose lineage token no record knows (their
    /// record was lost, or deleted by hand): one ticket per token, its members stopped with it. Descendants of a
    /// live broker carry a known token and are its own business (DESIGN "Process lineage").
    fn stop_unrecorded(&mut self) {
        let root = self.store.root.path().to_string_lossy().into_owned();
        // Processes first, then records: a broker recorded or handed to a ticket meanwhile is known.
        let snapshot = proc::observe(&HashSet::new(), Deadline::far()).0;
        // What the slots named as they were judged, before this snapshot: a process no judged record, ticket or
        // unreadable slot knows is only a candidate; the records are read again (now, after the snapshot) before
        // any is called lost. With no candidate, no second pass over the slots.
        for ticket in &self.tickets {
            self.judged.add_ticket(ticket);
        }
        if crate::decide::lineage::unrecorded(&snapshot, &self.judged, &root).is_empty() {
            return;
        }
        let known = crate::observe::lineage::known_to(self.store, &self.tickets);
        let (now, host) = (clock::now_rfc3339(), proc::host_name());
        for lost in crate::decide::lineage::unrecorded(&snapshot, &known, &root) {
            let pid = lost.leader.pid;
            // Gone since the snapshot (a stop whose ticket closed before the tickets were read): nobody's loss.
            if self.guard.check(&lost.leader).is_err() || !proc::is_alive(&lost.leader) {
                continue;
            }
            // The slot may be mid-spawn (child started, record not yet written): its lock says so.
            if !self.policy.dry_run && self.being_recorded(&lost.token, &lost.marker) {
                continue;
            }
            let ticket = lost.ticket((&now, &host));
            // Already filed (a directory scan can miss a ticket being rewritten by its stopper): known.
            if self.store.tickets.path_of(&ticket).exists() {
                continue;
            }
            self.act(
                "stop",
                Some(Reason::Unrecorded),
                lost.marker.clone(),
                Some(pid),
                "stop",
            );
            let applied = executor::execute(
                self.store,
                Plan::of(Change::Stop(ticket)),
                Mode::dry(self.policy.dry_run),
            );
            for (_, err) in &applied.failed {
                self.problems.push(format!("unrecorded {pid}: {err:#}"));
            }
            self.tickets.extend(applied.tickets());
        }
    }

    /// Takes the lock of the slot a marker names and re-reads it: true when the record now carries this token.
    fn being_recorded(&self, token: &str, marker: &str) -> bool {
        let Some((workspace, name)) = marker.rsplit_once('/') else {
            return false;
        };
        let Ok(name) = crate::model::name::SlotName::parse(name) else {
            return false;
        };
        let slot = Slot::of(&self.store.root, std::path::Path::new(workspace), &name);
        if !slot.dir().exists() {
            return false;
        }
        let Ok(guard) = slot.lock(&self.store.root, Deadline::after(LOCK_WAIT)) else {
            return true;
        };
        matches!(guard.view(), SlotView::Broker(record) if record.lineage.as_deref() == Some(token))
    }

    fn report_duplicate_writers(
        &mut self,
        snapshot: &[(i32, Vec<String>)],
        sessions: &[SessionRecord],
    ) {
        let live: Vec<&SessionRecord> = sessions
            .iter()
            .filter(|record| !record.is_ended())
            .collect();
        for (session, pids) in resume::duplicate_writers(snapshot, live) {
            let list: Vec<String> = pids.iter().map(i32::to_string).collect();
            self.act(
                "duplicate_writers",
                None,
                session.clone(),
                None,
                &format!("report pids {}", list.join(", ")),
            );
            let report = Event::planned("duplicate_writers", "reported")
                .session(Some(&session))
                .detail(format!(
                    "{} processes resume this session: pids {}",
                    pids.len(),
                    list.join(", ")
                ));
            executor::execute(
                self.store,
                Plan::of(Change::Report(report)),
                Mode::dry(self.policy.dry_run),
            );
        }
    }

    fn drop_tombstones(&mut self, sessions: &[SessionRecord], retention: Duration) {
        let now = SystemTime::now();
        for record in sessions {
            let expired = record
                .ended_at
                .as_deref()
                .and_then(|at| clock::age(at, now))
                .is_some_and(|age| age > retention);
            let Ok(id) = SessionId::parse(&record.session_id) else {
                continue;
            };
            if expired {
                self.act(
                    "clean",
                    None,
                    record.session_id.clone(),
                    None,
                    "drop tombstone",
                );
                if !self.policy.dry_run
                    && let Err(err) = self.store.sessions.remove(&id)
                {
                    self.problems.push(format!("tombstone {id}: {err:#}"));
                }
            }
        }
    }

    /// Runs this sweep's tickets and every pending one (overdue ones escalate to SIGKILL); hands on the rest.
    fn drive_tickets(&mut self) -> anyhow::Result<Vec<StopReport>> {
        if self.policy.dry_run {
            let pending = self.store.tickets.readable();
            for ticket in pending {
                self.act(
                    "escalate",
                    Some(Reason::parse(&ticket.reason).unwrap_or(Reason::Manual)),
                    ticket.origin.clone(),
                    Some(ticket.identity.pid),
                    "continue stop",
                );
            }
            return Ok(Vec::new());
        }
        let mut all = executor::pending(self.store);
        let filed: HashSet<String> = all
            .iter()
            .map(|t| StopTicket::file_name(&t.identity))
            .collect();
        all.extend(
            self.tickets
                .drain(..)
                .filter(|t| !filed.contains(&StopTicket::file_name(&t.identity))),
        );
        let stops = crate::commands::stopper(self.store, self.guard.clone())
            .run(all, Deadline::after(SWEEP_STOP_DEADLINE));
        if stops
            .iter()
            .any(|stop| matches!(stop.outcome, StopOutcome::Pending { stuck: false, .. }))
        {
            finisher::start(self.store)?;
        }
        Ok(stops)
    }
}

impl Sweep<'_> {
    /// Stop tickets it cannot read as they stand (another user's file) are reported, never acted on; the locks of
    /// tickets that are gone are removed.
    fn tickets_not_ours(&mut self, dry_run: bool) {
        for (path, why) in self.store.tickets.refused() {
            self.problems
                .push(format!("stop ticket {}: {why}", path.display()));
        }
        for path in self.store.tickets.remove_orphan_locks(dry_run) {
            let target = path
                .strip_prefix(self.store.root.path())
                .unwrap_or(&path)
                .display()
                .to_string();
            self.act("clean", None, target, None, "remove lock of a gone ticket");
        }
    }
}

/// "remove empty slot" -> "removed empty slot": how a done action reads.
fn past_tense(verb: &str) -> String {
    const PAST: [(&str, &str); 9] = [
        ("move", "moved"),
        ("stop", "stopping"),
        ("end", "ended"),
        ("prune", "pruned"),
        ("remove", "removed"),
        ("drop", "dropped"),
        ("report", "reported"),
        ("rotate", "rotated"),
        ("continue", "continued"),
    ];
    let (first, rest) = verb.split_once(' ').unwrap_or((verb, ""));
    let done = PAST
        .iter()
        .find(|(present, _)| *present == first)
        .map_or(first, |(_, past)| past);
    if rest.is_empty() {
        done.to_owned()
    } else {
        format!("{done} {rest}")
    }
}

/// Facts for an empty or unreadable slot, which no decision reads.
const NO_FACTS: SlotFacts = SlotFacts {
    alive: false,
    earlier_boot: false,
    owner_alive: false,
};

/// What the process table says of the broker a slot's view holds (nothing, for a slot without one); also what
/// `status` judges its "next sweep" line with. `host` is this machine's name.
pub(crate) fn observe_facts(
    view: &SlotView,
    sessions: &[SessionRecord],
    liveness: &Liveness,
    host: &str,
) -> SlotFacts {
    view.broker().map_or(NO_FACTS, |record| SlotFacts {
        alive: liveness.is_alive(&record.identity),
        earlier_boot: !crate::model::record::is_other_host(&record.host, host)
            && record.identity.boot_id != proc::boot_id(),
        owner_alive: record
            .owners
            .iter()
            .any(|owner| owner_alive(&owner.session, sessions, liveness)),
    })
}

/// An owner is known to be alive when its session is live and its recorded agent process still runs. An owner
/// with no session record (or no agent identity) is never judged dead — no `owners_gone` — but neither is it
/// known to be alive, so the sweep's default idle TTL applies to its broker.
fn owner_alive(session: &str, sessions: &[SessionRecord], liveness: &Liveness) -> bool {
    match sessions.iter().find(|record| record.session_id == session) {
        None => false,
        Some(record) if record.is_ended() => false,
        Some(record) => record
            .agent_identity
            .as_ref()
            .is_some_and(|agent| liveness.is_alive(agent)),
    }
}

/// Owners that stay in the slot after `change` whose live session does not index it: the repair the sweep makes
/// for records of older versions (and for an index entry lost to a crash).
fn unindexed_owners(
    change: &SlotChange,
    seen: Option<&BrokerRecord>,
    label: &str,
    sessions: &[SessionRecord],
) -> Vec<(String, String)> {
    let record = match change {
        SlotChange::Keep => seen,
        SlotChange::Write { record, .. } => Some(record),
        _ => None,
    };
    let Some(record) = record else {
        return Vec::new();
    };
    record
        .owners
        .iter()
        .filter(|owner| {
            sessions.iter().any(|session| {
                session.session_id == owner.session
                    && !session.is_ended()
                    && session
                        .slots
                        .as_ref()
                        .is_some_and(|slots| !slots.iter().any(|slot| slot == label))
            })
        })
        .map(|owner| (owner.session.clone(), label.to_owned()))
        .collect()
}

fn print_human(report: &SweepReport) {
    if report.actions.is_empty() && report.stops.is_empty() {
        println!("sweep: nothing to do");
    }
    for action in &report.actions {
        let reason = action.reason.as_deref().unwrap_or("-");
        let pid = action
            .pid
            .map_or(String::new(), |pid| format!("pid {pid} "));
        println!(
            "{:<17} {:<13} {pid}{}  {}",
            action.action,
            reason,
            action.target,
            crate::commands::term::lead(&action.result)
        );
    }
    crate::commands::print_stops(&report.stops);
    for problem in &report.problems {
        println!(
            "{}",
            crate::commands::term::lead(&format!("problem: {problem}"))
        );
    }
}
