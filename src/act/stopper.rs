//! The stop cascade (DESIGN invariant 4): an optional graceful step bounded to 750 ms, SIGTERM to the broker's
//! process group and each of its members (DESIGN "Process lineage": the processes carrying its lineage token,
//! wherever they moved), wait out the grace, SIGKILL them. A stop is done when the leader and every member are
//! gone. `next_step` decides from a ticket and the clock alone;
//! `Stopper` carries the steps out, persisting progress in the ticket so that a finisher, a later hook or a sweep
//! can pick it up where it was left.

use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;

use crate::act::executor::{self, Mode};
use crate::act::signal::{Guard, Handle, Refusal, Sig, Target};
use crate::decide::{belonging, lineage};
use crate::model::clock;
use crate::model::deadline::Deadline;
use crate::model::plan::{Change, Plan};
use crate::model::record::{Identity, Shutdown, StopTicket};
use crate::observe::proc;
use crate::observe::table::Table;
use crate::store::events::{Event, EventLog};
use crate::store::sessions::Sessions;
use crate::store::tickets::{Claim, TicketLock, Tickets};

/// How long the graceful step (socket message or command) may take before SIGTERM.
pub(crate) const GRACEFUL_WINDOW: Duration = Duration::from_millis(750);
/// How long after a SIGKILL before it is sent again (and `attempts` grows).
pub(crate) const KILL_RETRY: Duration = Duration::from_secs(1);
/// After this many SIGKILLs a process that still runs is reported as stuck.
pub(crate) const STUCK_AFTER: u32 = 3;
/// How long a run keeps watching after its last signal, for processes that exit promptly, before it gives up on a
/// deadline that no step of the cascade can reach.
const SETTLE: Duration = Duration::from_millis(100);
/// How many times a leftover's tree is walked and frozen before its SIGKILL, at most, and for how long.
const FREEZE_ROUNDS: usize = 64;
const FREEZE_WINDOW: Duration = Duration::from_millis(500);

/// What to do next for one ticket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Step {
    Graceful,
    Term,
    Kill,
    Wait(SystemTime),
    Done,
}

fn stamp(text: Option<&String>) -> Option<SystemTime> {
    text.map(|text| clock::parse(text).unwrap_or(SystemTime::UNIX_EPOCH))
}

/// Milliseconds on the boot clock (see `clock::boot_millis`).
pub(crate) fn boot_millis() -> u64 {
    clock::boot_millis()
}

/// The ticket with its cascade stamps placed on the wall clock from the boot clock, where the ticket has them: a
/// wall clock stepped back (or forward) since a step neither stalls nor rushes the cascade. Pure.
pub(crate) fn on_wall_clock(ticket: &StopTicket, now: SystemTime, boot_now_ms: u64) -> StopTicket {
    let mut placed = ticket.clone();
    let place = |boot: Option<u64>, wall: &mut Option<String>| {
        if let Some(boot) = boot.filter(|boot| *boot <= boot_now_ms) {
            let at = now
                .checked_sub(Duration::from_millis(boot_now_ms - boot))
                .unwrap_or(SystemTime::UNIX_EPOCH);
            *wall = Some(clock::format(at));
        }
    };
    place(ticket.graceful_boot_ms, &mut placed.graceful_at);
    place(ticket.term_boot_ms, &mut placed.term_at);
    place(ticket.kill_boot_ms, &mut placed.kill_at);
    placed
}

/// The next step of a ticket whose process is (or is not) `alive` at `now`.
pub(crate) fn next_step(ticket: &StopTicket, now: SystemTime, alive: bool) -> Step {
    if !alive {
        return Step::Done;
    }
    let graceful_at = stamp(ticket.graceful_at.as_ref());
    let Some(term_at) = stamp(ticket.term_at.as_ref()) else {
        return match graceful_at {
            None if ticket.shutdown.is_some() => Step::Graceful,
            Some(at) if now < at + GRACEFUL_WINDOW => Step::Wait(at + GRACEFUL_WINDOW),
            _ => Step::Term,
        };
    };
    let wake = match stamp(ticket.kill_at.as_ref()) {
        None => term_at + Duration::from_millis(ticket.grace_ms),
        Some(kill_at) => kill_at + KILL_RETRY,
    };
    if now < wake {
        Step::Wait(wake)
    } else {
        Step::Kill
    }
}

/// How a ticket ended up after a run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "result")]
pub(crate) enum StopOutcome {
    /// The process and its members are gone; `by` says what made them go, `members` how many members there were.
    Stopped { by: String, members: usize },
    /// It was gone before anything was sent.
    AlreadyGone,
    /// It must not be signalled; the ticket was dropped.
    Refused { why: String },
    /// An earlier boot's record: dropped without acting.
    Stale,
    /// Another host's ticket (shared state root) or another pid namespace's: left alone.
    Foreign,
    /// Still running at the deadline; the ticket stays for the finisher or a sweep.
    /// `running`: how many of its processes (the leader and members) it could not stop yet.
    Pending {
        stuck: bool,
        attempts: u32,
        #[serde(default)]
        running: usize,
    },
    /// Another process drives the ticket right now; left to it.
    DrivenElsewhere,
    /// Another process finished the ticket already.
    DoneElsewhere,
}

impl StopOutcome {
    pub(crate) fn is_failure(&self) -> bool {
        matches!(
            self,
            StopOutcome::Refused { .. } | StopOutcome::Pending { stuck: true, .. }
        )
    }

    pub(crate) fn summary(&self) -> String {
        match self {
            StopOutcome::Stopped { by, members: 0 } => format!("stopped ({by})"),
            StopOutcome::Stopped { by, members } => format!("stopped ({by}; {members} members)"),
            StopOutcome::AlreadyGone => "already gone".to_owned(),
            StopOutcome::Refused { why } => format!("refused: {why}"),
            StopOutcome::Stale => "stale (earlier boot): dropped".to_owned(),
            StopOutcome::Foreign => "another host's or pid namespace's: left alone".to_owned(),
            StopOutcome::Pending {
                stuck: true,
                attempts,
                ..
            } => format!("STUCK after {attempts} SIGKILLs"),
            StopOutcome::Pending { running: 0, .. } => "stopping (handed on)".to_owned(),
            StopOutcome::Pending { running, .. } => {
                format!("stopping (handed on; {running} could not be stopped yet)")
            }
            StopOutcome::DrivenElsewhere => "being stopped by another session-reaper".to_owned(),
            StopOutcome::DoneElsewhere => "stopped by another session-reaper".to_owned(),
        }
    }
}

/// One ticket and what became of it.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct StopReport {
    pub ticket: StopTicket,
    pub outcome: StopOutcome,
}

struct Active {
    ticket: StopTicket,
    /// Held while this run drives the ticket: one driver per ticket.
    claim: Option<TicketLock>,
    handle: Option<Handle>,
    /// Verified handles of the broker's members (other than the leader) seen so far.
    members: Vec<Handle>,
    /// The last look for members did not cover the whole process table (the deadline came).
    members_unsure: bool,
    /// Who may adopt the broker's orphans (init, its ancestors while it lived), read at the first look.
    adopters: std::collections::HashSet<i32>,
    /// The processes the run's tickets name: a leftover's walk leaves them to their own tickets.
    ticketed: std::rc::Rc<Vec<Identity>>,
    /// A member was refused (a live agent, an ancestor, another user's): the group is signalled member by member.
    group_refused: bool,
    helper: Option<Child>,
    signalled: bool,
    outcome: Option<StopOutcome>,
}

impl Active {
    fn leader_alive(&self) -> bool {
        self.handle
            .as_ref()
            .is_some_and(|handle| !handle.has_exited())
    }

    fn live_members(&self) -> usize {
        self.members
            .iter()
            .filter(|member| !member.has_exited())
            .count()
    }

    /// True while the broker or a member runs, or the last look for members was cut short by the deadline.
    fn is_running(&self) -> bool {
        self.members_unsure || !lineage::is_stop_done(self.leader_alive(), self.live_members())
    }
}

/// Carries out stop tickets.
pub(crate) struct Stopper {
    tickets: Tickets,
    log: EventLog,
    guard: Guard,
    host: String,
    /// Whose live sessions' agents the guard refuses, read once a run has something to stop.
    sessions: Option<Sessions>,
    /// `keep --pid` marks: a leftover's stop never reaches them, nor what runs below them.
    kept: Vec<Identity>,
    /// What the layers above want told: a progress line for a person waiting. The stopper knows no terminal; the
    /// files an adapter wants cleaned after a confirmed exit are in the ticket, a change the executor applies.
    listener: Listener,
}

/// What the commands layer wires into a stopper (`commands::stopper`): a progress line for a person waiting.
#[derive(Clone, Copy, Default)]
pub(crate) struct Listener {
    pub progress: Option<fn(&str)>,
}

impl Stopper {
    /// The stopper of an opened state root: its tickets and its event log; its guard refuses, besides what `guard`
    /// does, the recorded agents of this root's live sessions (read when there is something to stop).
    pub(crate) fn of(store: &crate::store::Store, guard: Guard) -> Stopper {
        let mut stopper = Stopper::new(store.tickets.clone(), store.log.clone(), guard)
            .sparing_agents_of(store.sessions.clone());
        stopper.kept = crate::act::leftovers::kept_marks(store);
        stopper
    }

    pub(crate) fn new(tickets: Tickets, log: EventLog, guard: Guard) -> Self {
        Stopper {
            tickets,
            log,
            guard,
            host: proc::host_name(),
            sessions: None,
            kept: Vec::new(),
            listener: Listener::default(),
        }
    }

    /// This stopper, refusing the recorded agents of the live sessions of `sessions` (DESIGN "Belonging").
    #[must_use]
    pub(crate) fn sparing_agents_of(mut self, sessions: Sessions) -> Self {
        self.sessions = Some(sessions);
        self
    }

    /// The same stopper, telling `listener` what it does.
    #[must_use]
    pub(crate) fn telling(mut self, listener: Listener) -> Self {
        self.listener = listener;
        self
    }

    /// Drives `tickets` until each is done or `deadline` passes; what is left stays filed.
    pub(crate) fn run(&self, tickets: Vec<StopTicket>, deadline: Deadline) -> Vec<StopReport> {
        if tickets.is_empty() {
            return Vec::new();
        }
        let sparing = self.sessions.as_ref().map(|sessions| Stopper {
            tickets: self.tickets.clone(),
            log: self.log.clone(),
            guard: self
                .guard
                .clone()
                .sparing_agents(belonging::live_agents(&sessions.all())),
            host: self.host.clone(),
            sessions: None,
            kept: self.kept.clone(),
            listener: self.listener,
        });
        if let Some(sparing) = sparing {
            return sparing.run(tickets, deadline);
        }
        // One look at the process table for every broker ticket's members to begin with (a leftover's tree is
        // walked from the leftover down instead).
        let groups: std::collections::HashSet<i32> =
            tickets.iter().map(|ticket| ticket.identity.pid).collect();
        let first_look = if tickets.iter().all(is_leftover) {
            (Vec::new(), true)
        } else {
            proc::observe(&groups, deadline)
        };
        let ticketed = std::rc::Rc::new(
            tickets
                .iter()
                .map(|ticket| ticket.identity.clone())
                .collect::<Vec<_>>(),
        );
        let mut active: Vec<Active> = tickets
            .into_iter()
            .map(|ticket| self.start(ticket, &first_look, &ticketed))
            .collect();
        let mut last_signal = Instant::now();
        let deadline_at = SystemTime::now() + deadline.remaining();
        loop {
            let now = SystemTime::now();
            let mut next_step_at = now + Duration::from_secs(3600);
            for item in active.iter_mut().filter(|item| item.outcome.is_none()) {
                reap_helper(item, now);
                let mut alive = item.is_running();
                if !alive && item.ticket.lineage.is_some() {
                    // Before calling it done, look once more for members (one forked just before its parent died),
                    // over the whole table: only a complete look proves the stop done.
                    self.refresh_members(item, &proc::observe(&groups, deadline));
                    alive = item.is_running();
                }
                match next_step(&on_wall_clock(&item.ticket, now, boot_millis()), now, alive) {
                    Step::Done => self.finish(item, None),
                    Step::Wait(at) => next_step_at = next_step_at.min(at),
                    step => {
                        self.act(item, step, (now, deadline));
                        last_signal = Instant::now();
                        next_step_at = now;
                    }
                }
            }
            let open: Vec<&Active> = active
                .iter()
                .filter(|item| item.outcome.is_none())
                .collect();
            let nothing_reachable = next_step_at > deadline_at && last_signal.elapsed() >= SETTLE;
            if open.is_empty() || deadline.expired() || nothing_reachable {
                break;
            }
            let wake = next_step_at.min(SystemTime::now() + Duration::from_millis(25));
            let until_wake = wake.duration_since(SystemTime::now()).unwrap_or_default();
            let until_deadline = deadline.remaining();
            let handles: Vec<&Handle> = open
                .iter()
                .flat_map(|item| item.handle.iter().chain(&item.members))
                .collect();
            wait_for_any_exit(
                &handles,
                until_wake.min(until_deadline).max(Duration::from_millis(1)),
            );
        }
        active
            .into_iter()
            .map(|mut item| {
                if let Some(mut helper) = item.helper.take() {
                    end_helper(&mut helper);
                }
                let running = usize::from(item.leader_alive()) + item.live_members();
                let outcome = item.outcome.take().unwrap_or(StopOutcome::Pending {
                    stuck: item.ticket.attempts >= STUCK_AFTER,
                    attempts: item.ticket.attempts,
                    running,
                });
                StopReport {
                    ticket: item.ticket,
                    outcome,
                }
            })
            .collect()
    }

    fn start(
        &self,
        ticket: StopTicket,
        look: &(Vec<proc::Observed>, bool),
        ticketed: &std::rc::Rc<Vec<Identity>>,
    ) -> Active {
        let mut item = Active {
            ticket,
            claim: None,
            handle: None,
            members: Vec::new(),
            members_unsure: false,
            adopters: std::collections::HashSet::new(),
            ticketed: std::rc::Rc::clone(ticketed),
            group_refused: false,
            helper: None,
            signalled: false,
            outcome: None,
        };
        if crate::model::record::is_other_host(&item.ticket.host, &self.host) {
            item.outcome = Some(StopOutcome::Foreign);
            return item;
        }
        match self.tickets.claim(&item.ticket) {
            Ok(Claim::Mine(current, claim)) => {
                item.ticket = current;
                item.claim = Some(claim);
            }
            Ok(Claim::Busy) => {
                item.outcome = Some(StopOutcome::DrivenElsewhere);
                return item;
            }
            Ok(Claim::Finished) => {
                item.outcome = Some(StopOutcome::DoneElsewhere);
                return item;
            }
            Err(err) => {
                self.log
                    .record(&event_for(&item.ticket, "error", "failed").detail(format!("{err:#}")));
                item.outcome = Some(StopOutcome::Pending {
                    stuck: item.ticket.attempts >= STUCK_AFTER,
                    attempts: item.ticket.attempts,
                    running: 0,
                });
                return item;
            }
        }
        match self.guard.target(&item.ticket.identity) {
            Target::Live(handle) => item.handle = Some(handle),
            Target::Gone => {}
            Target::Refused(Refusal::OtherBoot) => self.finish(&mut item, Some(StopOutcome::Stale)),
            // Another pid namespace's: left alone (the ticket stays), like another host's.
            Target::Refused(Refusal::OtherPidNamespace) => {
                item.outcome = Some(StopOutcome::Foreign);
            }
            Target::Refused(refusal) => {
                self.finish(
                    &mut item,
                    Some(StopOutcome::Refused {
                        why: refusal.to_string(),
                    }),
                );
            }
        }
        if item.outcome.is_none() {
            self.refresh_members(&mut item, look);
        }
        item
    }

    /// Looks for the broker's members (DESIGN "Process lineage") and keeps a verified handle on each new one; the
    /// ticket remembers their identities so that a later run still knows them.
    fn refresh_members(
        &self,
        item: &mut Active,
        (snapshot, complete): &(Vec<proc::Observed>, bool),
    ) {
        if is_leftover(&item.ticket) {
            self.refresh_descendants(item);
            return;
        }
        item.members_unsure = !complete;
        let leader_alive = item.leader_alive();
        let leader = &item.ticket.identity;
        if item.adopters.is_empty() {
            item.adopters = proc::adopters_of(leader);
        }
        let mut found = lineage::members(
            leader,
            item.ticket.lineage.as_deref(),
            leader_alive,
            snapshot,
            &item.adopters,
        );
        found.extend(item.ticket.members.iter().cloned());
        // A live agent in the broker's group: the group is never signalled as such, only its members.
        if self.adopt_members(item, found) {
            item.group_refused = true;
        }
    }

    /// A leftover's members (DESIGN "Belonging"): its descendants, and theirs, that are leftovers by the same rules
    /// (`belonging::stop_reach`) — never its group or session. Each new one gets a verified handle.
    fn refresh_descendants(&self, item: &mut Active) {
        let known: Vec<Identity> = item
            .members
            .iter()
            .filter(|member| !member.has_exited())
            .map(|member| member.identity().clone())
            .collect();
        let roots: Vec<Identity> = std::iter::once(item.ticket.identity.clone())
            .chain(known.iter().cloned())
            .collect();
        let table = Table::observe_below(&roots, item.ticket.identity.start_ticks);
        let spared = belonging::Spared {
            live_agents: self.guard.live_agents(),
            kept: &self.kept,
        };
        let reached = belonging::stop_reach(&table, &item.ticket.identity, &known, &spared)
            .into_iter()
            .filter(|member| {
                !item
                    .ticketed
                    .iter()
                    .any(|other| other.is_same_process(member))
            })
            .collect();
        self.adopt_members(item, reached);
    }

    /// Keeps a verified handle on each of `found` not yet known, and remembers every member in the ticket (a gone one
    /// is never signalled: its identity no longer matches), so that the run that closes the ticket can say how many
    /// there were. True when the guard refused one of them.
    fn adopt_members(&self, item: &mut Active, found: Vec<Identity>) -> bool {
        let mut refused = false;
        for member in found {
            let known = item
                .members
                .iter()
                .any(|handle| handle.identity().is_same_process(&member));
            if known {
                continue;
            }
            match self.guard.target(&member) {
                Target::Live(handle) => item.members.push(handle),
                Target::Refused(_) => refused = true,
                Target::Gone => {}
            }
        }
        for handle in &item.members {
            let identity = handle.identity();
            if !item.ticket.members.iter().any(|m| m == identity) {
                item.ticket.members.push(identity.clone());
            }
        }
        refused
    }

    /// Before a leftover's SIGKILL: stops (SIGSTOP) the leader and every member, then looks again, until a look
    /// finds no new member — a tree that forks faster than it can be walked is frozen first, so that the SIGKILL
    /// reaches all of it. Bounded by `FREEZE_ROUNDS` and the deadline.
    fn freeze(&self, item: &mut Active, deadline: Deadline) {
        let mut stopped = 0;
        for _ in 0..FREEZE_ROUNDS {
            if let Some(handle) = item.handle.as_ref().filter(|_| stopped == 0) {
                let _ = handle.signal(Sig::Stop);
            }
            for member in item.members.iter().skip(stopped) {
                let _ = member.signal(Sig::Stop);
            }
            stopped = item.members.len();
            if deadline.expired() {
                return;
            }
            self.refresh_descendants(item);
            if item.members.len() == stopped {
                return;
            }
        }
    }

    fn act(&self, item: &mut Active, step: Step, (now, deadline): (SystemTime, Deadline)) {
        let stamp = clock::format(now);
        match step {
            Step::Graceful => {
                match item
                    .ticket
                    .shutdown
                    .as_ref()
                    .map(|shutdown| graceful(shutdown, item.ticket.identity.pid))
                {
                    Some(Ok(helper)) => item.helper = helper,
                    Some(Err(err)) => self.log.record(
                        &event_for(&item.ticket, "error", "failed")
                            .detail(format!("graceful step: {err}")),
                    ),
                    None => {}
                }
                item.ticket.graceful_at = Some(stamp);
                item.ticket.graceful_boot_ms = Some(boot_millis());
            }
            Step::Term => {
                if is_leftover(&item.ticket) {
                    self.refresh_descendants(item);
                }
                self.send(item, Sig::Term);
                item.ticket.term_at = Some(stamp);
                item.ticket.term_boot_ms = Some(boot_millis());
                let grace = Duration::from_millis(item.ticket.grace_ms);
                if let Some(progress) = self.listener.progress
                    && grace >= Duration::from_secs(1)
                {
                    progress(&format!(
                        "SIGTERM sent to {}, SIGKILL in {}…",
                        item.ticket.identity.pid,
                        clock::rounded(grace)
                    ));
                }
            }
            Step::Kill => {
                if is_leftover(&item.ticket) {
                    self.freeze(item, Deadline::after(FREEZE_WINDOW).min(deadline));
                } else {
                    let groups = std::collections::HashSet::from([item.ticket.identity.pid]);
                    self.refresh_members(item, &proc::observe(&groups, deadline));
                }
                self.send(item, Sig::Kill);
                item.ticket.kill_at = Some(stamp);
                item.ticket.kill_boot_ms = Some(boot_millis());
                item.ticket.attempts += 1;
                if item.ticket.attempts == STUCK_AFTER {
                    self.log.record(
                        &event_for(&item.ticket, "stuck", "still_running").detail(format!(
                            "still running after {STUCK_AFTER} SIGKILLs (uninterruptible?); the ticket stays"
                        )),
                    );
                }
            }
            Step::Wait(_) | Step::Done => return,
        }
        item.signalled = true;
        let Some(claim) = &item.claim else {
            return;
        };
        if let Err(err) = self.tickets.save(&item.ticket, claim) {
            self.log
                .record(&event_for(&item.ticket, "error", "failed").detail(format!("{err:#}")));
        }
    }

    /// Signals the broker's group through its leader while the leader is verified alive (a recorded `pgid` other
    /// than the leader's pid is ignored), then each verified member one by one: members that left the group, and
    /// all of them once the leader is gone — a leaderless group is never signalled as such.
    fn send(&self, item: &Active, sig: Sig) {
        let ticket = &item.ticket;
        let leads_group = ticket.pgid == Some(ticket.identity.pid) && !item.group_refused;
        let mut result = match &item.handle {
            Some(handle) if leads_group => handle.signal_group(sig).map(drop),
            Some(handle) => handle.signal(sig).map(drop),
            None => Ok(()),
        };
        for member in item.members.iter().filter(|member| !member.has_exited()) {
            if let Err(err) = member.signal(sig) {
                result = Err(err);
            }
        }
        if let Err(err) = result {
            self.log.record(
                &event_for(ticket, "error", "failed").detail(format!("{}: {err}", sig.name())),
            );
        }
    }

    fn finish(&self, item: &mut Active, outcome: Option<StopOutcome>) {
        let outcome = outcome.unwrap_or_else(|| {
            if item.signalled || item.ticket.term_at.is_some() || item.ticket.graceful_at.is_some()
            {
                StopOutcome::Stopped {
                    by: stopped_by(&item.ticket),
                    members: item.ticket.members.len(),
                }
            } else {
                StopOutcome::AlreadyGone
            }
        });
        let (action, result) = match &outcome {
            StopOutcome::Stopped { .. } => ("stop", "stopped"),
            StopOutcome::AlreadyGone => ("stop", "already_gone"),
            StopOutcome::Refused { .. } => ("refuse", "refused"),
            StopOutcome::Stale => ("prune", "stale"),
            StopOutcome::Foreign
            | StopOutcome::Pending { .. }
            | StopOutcome::DrivenElsewhere
            | StopOutcome::DoneElsewhere => ("stop", "pending"),
        };
        let detail = match &outcome {
            StopOutcome::Stopped { by, members: 0 } => by.clone(),
            StopOutcome::Stopped { by, members } => format!("{by}; {members} members stopped"),
            StopOutcome::Refused { why } => why.clone(),
            other => other.summary(),
        };
        // Only the driver finishes a ticket, and only once: its claim is given up here.
        let Some(claim) = item.claim.take() else {
            item.outcome = Some(outcome);
            return;
        };
        // The event first: whoever sees the ticket gone can read why.
        self.log
            .record(&event_for(&item.ticket, action, result).detail(detail));
        if let Err(err) = self.tickets.remove(&item.ticket, &claim) {
            self.log
                .record(&event_for(&item.ticket, "error", "failed").detail(format!("{err:#}")));
        }
        if matches!(
            outcome,
            StopOutcome::Stopped { .. } | StopOutcome::AlreadyGone
        ) && let Some(clean) = Change::clean_after_exit(&item.ticket)
        {
            // A tool's files named in the ticket go once the exit is confirmed: a change the executor applies.
            executor::execute_on(&self.tickets, &self.log, Plan::of(clean), Mode::Apply);
        }
        item.outcome = Some(outcome);
    }
}

/// A leftover's ticket (`decide::leftovers::ticket_for`): its stop reaches its descendants, never its group.
fn is_leftover(ticket: &StopTicket) -> bool {
    ticket.origin == "leftover" && ticket.lineage.is_none()
}

fn reap_helper(item: &mut Active, now: SystemTime) {
    let Some(helper) = item.helper.as_mut() else {
        return;
    };
    let overdue =
        stamp(item.ticket.graceful_at.as_ref()).is_some_and(|at| now >= at + GRACEFUL_WINDOW);
    if matches!(helper.try_wait(), Ok(Some(_))) || overdue {
        end_helper(helper);
        item.helper = None;
    }
}

fn event_for(ticket: &StopTicket, action: &str, result: &str) -> Event {
    let mut event = Event::new(action, result)
        .reason(&ticket.reason)
        .session(ticket.session.as_deref())
        .pid(ticket.identity.pid);
    event.workspace.clone_from(&ticket.workspace);
    event.name.clone_from(&ticket.name);
    event.argv.clone_from(&ticket.argv);
    event.rss_kib = ticket.rss_kib;
    event
}

fn stopped_by(ticket: &StopTicket) -> String {
    if ticket.kill_at.is_some() {
        format!("SIGKILL after {}ms grace", ticket.grace_ms)
    } else if ticket.term_at.is_some() {
        "SIGTERM".to_owned()
    } else {
        "graceful shutdown".to_owned()
    }
}

/// Waits until one of `handles` exits or `timeout` passes.
fn wait_for_any_exit(handles: &[&Handle], timeout: Duration) {
    let fds: Vec<_> = handles.iter().filter_map(|h| h.pidfd()).collect();
    if fds.is_empty() {
        std::thread::sleep(timeout);
    } else {
        crate::act::pidfd::any_exited(fds, timeout);
    }
}

/// Takes the graceful step; a shutdown command is returned as a child to be bounded by the window.
/// The graceful step: the line to the broker's socket, or its `--shutdown-command` (with the broker's pid in
/// `SESSION_REAPER_BROKER_PID`), whose process is returned to be waited for. A failure is returned to be logged.
fn graceful(shutdown: &Shutdown, pid: i32) -> std::io::Result<Option<Child>> {
    match shutdown {
        Shutdown::Socket { socket, message } => {
            send_line(socket, message)
                .map_err(|err| std::io::Error::new(err.kind(), format!("{socket}: {err}")))?;
            Ok(None)
        }
        Shutdown::Command { command } => {
            use std::os::unix::process::CommandExt;
            Command::new("/bin/sh")
                .arg("-c")
                .arg(command)
                .env("SESSION_REAPER_BROKER_PID", pid.to_string())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .process_group(0)
                .spawn()
                .map(Some)
        }
    }
}

/// Writes one line to a unix socket without ever blocking: a listener that never accepts, or accepts and never
/// reads, costs nothing.
fn send_line(socket: &str, message: &str) -> std::io::Result<()> {
    use rustix::net::{
        AddressFamily, SocketAddrUnix, SocketFlags, SocketType, connect, socket_with,
    };
    let fd = socket_with(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::NONBLOCK | SocketFlags::CLOEXEC,
        None,
    )?;
    connect(&fd, &SocketAddrUnix::new(socket)?)?;
    let mut stream = std::os::unix::net::UnixStream::from(fd);
    let mut line = message.as_bytes().to_vec();
    if !line.ends_with(b"\n") {
        line.push(b'\n');
    }
    stream.write_all(&line)
}

/// Ends a shutdown command we started (its own process group) and reaps it.
fn end_helper(helper: &mut Child) {
    if matches!(helper.try_wait(), Ok(None))
        && let Some(pid) = i32::try_from(helper.id())
            .ok()
            .and_then(rustix::process::Pid::from_raw)
    {
        let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
    }
    let _ = helper.wait();
}

/// How long a command in the foreground waits for a stop: the whole cascade and one SIGKILL retry.
pub(crate) fn foreground_deadline(ticket: &StopTicket) -> Deadline {
    Deadline::after(GRACEFUL_WINDOW + Duration::from_millis(ticket.grace_ms) + KILL_RETRY * 2)
}

/// The `foreground_deadline` of the longest of `tickets` (already passed when there is none).
pub(crate) fn longest_stop(tickets: &[StopTicket]) -> Deadline {
    tickets
        .iter()
        .map(foreground_deadline)
        .max()
        .unwrap_or_else(Deadline::now)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ticket() -> StopTicket {
        let identity = Identity {
            boot_id: "b".into(),
            pid_ns: None,
            pid: 10,
            start_ticks: 1,
            uid: 0,
        };
        StopTicket::new(
            identity,
            Some(10),
            "manual",
            5000,
            "w/default".into(),
            (&clock::now_rfc3339(), &proc::host_name()),
        )
    }

    fn at(ms: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000) + Duration::from_millis(ms)
    }

    #[test]
    fn dead_is_done_whatever_the_phase() {
        let mut t = ticket();
        assert_eq!(next_step(&t, at(0), false), Step::Done);
        t.term_at = Some(clock::format(at(0)));
        assert_eq!(next_step(&t, at(10), false), Step::Done);
    }

    #[test]
    fn term_then_wait_grace_then_kill_then_retry() {
        let mut t = ticket();
        assert_eq!(next_step(&t, at(0), true), Step::Term);
        t.term_at = Some(clock::format(at(0)));
        assert_eq!(next_step(&t, at(4999), true), Step::Wait(at(5000)));
        assert_eq!(next_step(&t, at(5000), true), Step::Kill);
        t.kill_at = Some(clock::format(at(5000)));
        assert_eq!(next_step(&t, at(5500), true), Step::Wait(at(6000)));
        assert_eq!(next_step(&t, at(6000), true), Step::Kill);
    }

    #[test]
    fn graceful_step_is_bounded_to_its_window() {
        let mut t = ticket();
        t.shutdown = Some(Shutdown::Command {
            command: "true".into(),
        });
        assert_eq!(next_step(&t, at(0), true), Step::Graceful);
        t.graceful_at = Some(clock::format(at(0)));
        assert_eq!(next_step(&t, at(100), true), Step::Wait(at(750)));
        assert_eq!(next_step(&t, at(750), true), Step::Term);
    }

    /// Hardening: a wall clock stepped back stalled escalation (the grace seemed not to have run). The boot clock
    /// times the cascade.
    #[test]
    fn a_clock_stepped_back_never_stalls_escalation() {
        let mut t = ticket();
        // SIGTERM was sent at boot-clock 10 s; the wall clock said "now + 1 h" then, and was stepped back since.
        t.term_at = Some(clock::format(at(3_600_000)));
        t.term_boot_ms = Some(10_000);
        assert_eq!(
            next_step(&t, at(0), true),
            Step::Wait(at(3_605_000)),
            "by the wall clock: stalled"
        );
        let placed = on_wall_clock(&t, at(0), 15_000);
        assert_eq!(
            next_step(&placed, at(0), true),
            Step::Kill,
            "5 s of grace ran on the boot clock"
        );
        let placed = on_wall_clock(&t, at(0), 12_000);
        assert_eq!(next_step(&placed, at(0), true), Step::Wait(at(3000)));
        assert!(boot_millis() > 0);
    }

    #[test]
    fn unreadable_stamps_count_as_long_ago() {
        let mut t = ticket();
        t.term_at = Some("garbage".into());
        assert_eq!(next_step(&t, at(0), true), Step::Kill);
    }

    proptest::proptest! {
        /// Whatever the ticket's progress, a live process always gets a step that moves it on, or a wait no longer
        /// than the grace (or one SIGKILL retry) from now.
        #[test]
        fn never_waits_past_the_grace_plus_retry(grace in 0u64..20_000, term_ago in proptest::option::of(0u64..50_000),
                                                 kill_ago in proptest::option::of(0u64..50_000)) {
            let now = 100_000;
            let mut t = ticket();
            t.grace_ms = grace;
            t.term_at = term_ago.map(|ago| clock::format(at(now - ago)));
            t.kill_at = term_ago.and(kill_ago).map(|ago| clock::format(at(now - ago.min(term_ago.unwrap_or(0)))));
            if let Step::Wait(wake) = next_step(&t, at(now), true) {
                let longest = Duration::from_millis(grace.max(1000));
                proptest::prop_assert!(wake <= at(now) + longest);
                proptest::prop_assert!(wake > at(now));
            }
        }
    }
}
