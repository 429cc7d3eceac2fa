//! `broker spawn|register|attach|detach|touch`: every change to a slot is made under its lock, decided from what
//! the slot holds at that moment.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde_json::{Value, json};

use crate::act::executor;
use crate::act::launch;
use crate::act::signal::Guard;
use crate::act::stopper;
use crate::config::{self, BrokerRequest, Config, OwnerSource, OwnerSpec, SlotSpec, StopPolicy};
use crate::decide::{self, SlotChange};
use crate::error::{Outcome, bad_input};
use crate::model::clock;
use crate::model::deadline::Deadline;
use crate::model::name::SessionId;
use crate::model::record::{BrokerRecord, Identity, StopTicket, VERSION};
use crate::observe::proc;
use crate::store::Store;
use crate::store::events::{Event, Reason};
use crate::store::slot::{LOCK_WAIT, Slot, SlotGuard, SlotView};

pub(crate) fn run(request: BrokerRequest, config: &Config) -> anyhow::Result<Outcome> {
    match request {
        BrokerRequest::Spawn {
            slot,
            owner,
            policy,
            log,
            endpoint,
            replace,
            wait,
            json,
            command,
        } => {
            let target = SlotTarget::open(slot, config, json)?;
            let owner = target.owner(&owner)?;
            target.refuse_other_pid_ns(owner.as_ref(), "spawn")?;
            let request = SpawnRequest {
                command: &command,
                log: log.as_deref(),
                endpoint: endpoint.as_deref(),
                policy,
                replace,
                wait,
            };
            spawn(&target, owner.as_ref(), &request)
        }
        BrokerRequest::Register {
            pid,
            slot,
            owner,
            policy,
            endpoint,
            json,
        } => {
            let adoptee = adoptable(pid)?;
            let target = SlotTarget::open(slot, config, json)?;
            let owner = target.owner(&owner)?;
            target.refuse_other_pid_ns(owner.as_ref(), "register")?;
            register(
                &target,
                adoptee,
                owner.as_ref(),
                &policy,
                endpoint.as_deref(),
            )
        }
        BrokerRequest::Attach { slot, owner, json } => {
            let target = SlotTarget::open(slot, config, json)?;
            let owner = target.owner(&owner)?.ok_or_else(config::no_owner_found)?;
            attach(&target, &owner)
        }
        BrokerRequest::Detach { slot, owner, json } => {
            let target = SlotTarget::open(slot, config, json)?;
            let owner = target.detaching_owner(&owner)?;
            detach(&target, &owner)
        }
        BrokerRequest::Touch { slot, json } => touch(&SlotTarget::open(slot, config, json)?),
    }
}

/// A process `broker register` may adopt: live, and one the guard would let us signal. Checked before the state
/// root is touched.
fn adoptable(pid: i32) -> anyhow::Result<(Identity, proc::ProcStat)> {
    if let Ok((tgid, _)) = proc::tgid_and_uid(pid)
        && tgid != pid
    {
        return Err(bad_input(format!(
            "--pid {pid}: is a thread of process {tgid}, not a process; give the process id"
        )));
    }
    let identity = proc::identity_of(pid)
        .ok_or_else(|| bad_input(format!("--pid {pid}: no such live process")))?;
    if let Err(refusal) = Guard::new().check(&identity) {
        return Err(bad_input(format!("--pid {pid}: cannot adopt: {refusal}")));
    }
    let stat = proc::stat(pid).with_context(|| format!("reading process {pid}"))?;
    Ok((identity, stat))
}

/// The slot a broker command is about, with the state it lives in.
pub(crate) struct SlotTarget {
    pub store: Store,
    pub workspace: PathBuf,
    pub cwd: PathBuf,
    pub slot: Slot,
    /// `--json`: records as JSON rather than lines for people.
    pub json: bool,
}

impl SlotTarget {
    fn open(spec: SlotSpec, config: &Config, json: bool) -> anyhow::Result<Self> {
        let store = Store::open(&config.state_dir)?;
        let slot = Slot::of(&store.root, &spec.workspace, &spec.name);
        crate::store::slot_dirs::refuse_unsafe(&slot, &store.root)?;
        Ok(SlotTarget {
            store,
            workspace: spec.workspace,
            cwd: spec.cwd,
            slot,
            json,
        })
    }

    /// The slot as people name it: its workspace, and the broker name unless it is `default`.
    fn place(&self) -> String {
        place(&self.workspace_text(), self.slot.name())
    }

    /// The session `spec` names (found among the live sessions by ancestry if need be); `None` for `--no-owner`.
    fn named_owner(&self, spec: &OwnerSpec) -> anyhow::Result<Option<SessionId>> {
        match spec {
            OwnerSpec::Nobody => Ok(None),
            OwnerSpec::Named(id, _source) => self.resolve(id).map(Some),
            OwnerSpec::Ancestry => config::session_of_ancestor(&self.store.sessions)
                .map(Some)
                .ok_or_else(config::no_owner_found),
        }
    }

    /// A session id as typed: a recorded session's whole id, or a prefix only one recorded session has (said on
    /// stderr); an ambiguous prefix is refused. An id no record knows is a new session's, taken as it is.
    fn resolve(&self, id: &SessionId) -> anyhow::Result<SessionId> {
        // A recorded whole id is itself: one file read, not every session's (a launcher's spawn stays cheap however
        // many sessions the root holds).
        if self.store.sessions.get(id)?.is_some() {
            return Ok(id.clone());
        }
        let records = self.store.sessions.all();
        let known = records.iter().map(|record| record.session_id.as_str());
        Ok(match crate::commands::resolve::resolve(id, known)? {
            Some(resolved) => {
                crate::commands::resolve::say_resolved(id, &resolved);
                resolved
            }
            None => id.clone(),
        })
    }

    /// The owner-to-be, refusing (exit 2) one whose session has ended. A variable naming an ended session (a
    /// `CLAUDE_CODE_SESSION_ID` left behind by `/clear`) gives way to the live session found by ancestry; the
    /// refusal names where the id came from.
    fn owner(&self, spec: &OwnerSpec) -> anyhow::Result<Option<SessionId>> {
        let owner = self.named_owner(spec)?;
        if let (Some(id), OwnerSpec::Named(_, source)) = (&owner, spec)
            && let Err(ended) = self.refuse_ended(id)
        {
            let OwnerSource::Env(name) = source else {
                return Err(ended.context(format!("{id} was given by --session")));
            };
            let Some(live) = config::session_of_ancestor(&self.store.sessions) else {
                return Err(ended.context(format!(
                    "${name} names {id}, and no live session was found among this process's ancestors; pass \
                     --session ID"
                )));
            };
            let _ = writeln!(
                std::io::stderr(),
                "session-reaper: ${name} names ended session {id}; using live session {live}, found by ancestry"
            );
            return Ok(Some(live));
        }
        if let Some(id) = &owner {
            self.refuse_ended(id)?;
            // Said to people only (stderr a terminal): scripts get no extra line.
            if matches!(spec, OwnerSpec::Named(_, OwnerSource::Flag))
                && crate::commands::term::get().progress
                && self.store.sessions.get(id)?.is_none()
            {
                let _ = writeln!(
                    std::io::stderr(),
                    "session-reaper: session {id} is new to {}: no agent and no hook started it, so `status` shows \
                     it as by hand and only `session-reaper reap --session {id}` ends it",
                    self.store.root.path().display()
                );
            }
        }
        Ok(owner)
    }

    /// The owner leaving. An ended session may always leave: refusing it would pin the broker forever.
    fn detaching_owner(&self, spec: &OwnerSpec) -> anyhow::Result<SessionId> {
        self.named_owner(spec)?.ok_or_else(config::no_owner_found)
    }

    /// A broker started (or adopted) from another pid namespace than its owner session's agent — a sandboxed shell
    /// tool, a container — would die with that sandbox, and its pid would mean nothing outside it: refused (exit 2).
    fn refuse_other_pid_ns(&self, owner: Option<&SessionId>, verb: &str) -> anyhow::Result<()> {
        let Some(id) = owner else { return Ok(()) };
        let Some(agent) = self.store.sessions.get(id)?.and_then(|r| r.agent_identity) else {
            return Ok(());
        };
        let here = proc::own_pid_ns();
        if !agent.is_other_pid_ns(here) {
            return Ok(());
        }
        Err(bad_input(format!(
            "broker {verb}: this command runs in pid namespace {} but session {id}'s agent runs in {} (a sandboxed \
             shell tool such as Codex's bubblewrap, or a container): a broker started here would die with the \
             sandboxed command, and its pid means nothing outside it; run `broker {verb}` outside the sandbox",
            here.map_or_else(|| "?".to_owned(), |ns| ns.to_string()),
            agent
                .pid_ns
                .map_or_else(|| "?".to_owned(), |ns| ns.to_string()),
        )))
    }

    /// A session that has ended is never made an owner: nothing would ever end it again.
    fn refuse_ended(&self, id: &SessionId) -> anyhow::Result<()> {
        match self.store.sessions.get(id)? {
            Some(record) if record.is_ended() => Err(bad_input(format!(
                "session {id} ended at {}: it cannot own a broker",
                record.ended_at.unwrap_or_default()
            ))),
            _ => Ok(()),
        }
    }

    fn workspace_text(&self) -> String {
        self.workspace.to_string_lossy().into_owned()
    }

    fn event(&self, action: &str, result: &str) -> Event {
        Event::new(action, result).slot(&self.workspace_text(), self.slot.name())
    }

    /// Indexes the slot with the owner-to-be (before its lock: see `Sessions::index_slot`), then takes the lock.
    fn lock_for(
        &self,
        owner: Option<&SessionId>,
        corrupt: OnCorrupt,
    ) -> anyhow::Result<SlotGuard<'_>> {
        // A slot held by a record that is refused as it stands is refused before anything is written.
        match self.slot.view(&self.store.root) {
            SlotView::Unreadable(unreadable) if !unreadable.corrupt => {
                return Err(bad_input(format!(
                    "{}: {}; the slot is left as it is",
                    self.slot.record_path().display(),
                    unreadable.why
                )));
            }
            // A command that needs the record: moved aside and refused before the owner index is written.
            SlotView::Unreadable(_) if corrupt == OnCorrupt::Refuse => {
                let guard = self.lock()?;
                self.live_broker(&guard, corrupt)?;
            }
            _ => {}
        }
        if let Some(owner) = owner {
            executor::index_slot(
                &self.store,
                owner,
                &self.slot.label(),
                Deadline::after(LOCK_WAIT),
            )?;
        }
        self.lock()
    }

    /// Creates the slot and takes its lock. A sweep removing the empty slot in between makes the lock fail on a
    /// vanished directory: created again and retried, within the lock's wait.
    fn lock(&self) -> anyhow::Result<SlotGuard<'_>> {
        crate::store::slot_dirs::lock_creating(
            &self.slot,
            &self.store.root,
            Deadline::after(LOCK_WAIT),
        )
    }

    /// The live broker of the slot, under its lock. A record whose process is gone is pruned (`broker_gone`); a
    /// corrupt one is moved aside and reported; one refused as it stands (a newer version, another host's) is an
    /// error: the slot is occupied, and nothing here may overwrite it.
    fn live_broker(
        &self,
        guard: &SlotGuard<'_>,
        corrupt: OnCorrupt,
    ) -> anyhow::Result<Option<BrokerRecord>> {
        let path = guard.slot().record_path();
        let view = guard.view();
        let record = match &view {
            SlotView::Empty => return Ok(None),
            SlotView::Unreadable(unreadable) if unreadable.corrupt => {
                let change = SlotChange::MoveAside {
                    why: unreadable.why.clone(),
                };
                executor::apply(&self.store, guard, &change)?;
                if corrupt == OnCorrupt::Refuse {
                    return Err(corrupt_record(&path, &unreadable.why));
                }
                let _ = writeln!(
                    std::io::stderr(),
                    "session-reaper: {}: {}; moved aside",
                    path.display(),
                    unreadable.why
                );
                return Ok(None);
            }
            SlotView::Unreadable(unreadable) => {
                return Err(bad_input(format!(
                    "{}: {}; the slot is left as it is",
                    path.display(),
                    unreadable.why
                )));
            }
            SlotView::Broker(record) => record,
        };
        if crate::decide::lineage::is_foreign(record, &proc::host()) {
            return Err(bad_input(format!(
                "{}: the broker was recorded by host {:?} (pid namespace {}); it is left alone from here",
                path.display(),
                record.host,
                record
                    .identity
                    .pid_ns
                    .map_or_else(|| "-".to_owned(), |ns| ns.to_string()),
            )));
        }
        if proc::is_alive(&record.identity) {
            return Ok(Some(record.clone()));
        }
        let change = SlotChange::Prune {
            record: record.clone(),
            reason: Reason::BrokerGone,
        };
        executor::apply(&self.store, guard, &change)?;
        Ok(None)
    }

    /// Re-checks under the slot lock that the owner has not ended meanwhile (see DESIGN invariant 2).
    fn recheck_owner(&self, owner: Option<&SessionId>) -> anyhow::Result<()> {
        owner.map_or(Ok(()), |id| self.refuse_ended(id))
    }
}

/// What a command does with a corrupt `broker.json` (after moving it aside, which every writer does): `spawn` starts
/// the broker it was asked for in the emptied slot; the others needed that record, so they stop there (exit 2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum OnCorrupt {
    Replace,
    Refuse,
}

/// The bad-input error of a command whose slot held a corrupt record: one line naming the file and what was
/// expected, and where the record went.
fn corrupt_record(path: &Path, why: &str) -> anyhow::Error {
    bad_input(format!(
        "{}: {why}; expected a broker record (a JSON object with \"version\": 1); moved aside to {}.corrupt-<time>, \
         nothing else changed",
        path.display(),
        path.file_name()
            .map_or_else(String::new, |name| name.to_string_lossy().into_owned())
    ))
}

/// A process about to become a slot's broker, and how it is to be stopped.
struct Adopted<'a> {
    command: Vec<String>,
    identity: Identity,
    pgid: Option<i32>,
    lineage: Option<String>,
    policy: &'a StopPolicy,
    endpoint: Option<&'a str>,
    owner: Option<&'a SessionId>,
}

impl SlotTarget {
    /// The record of a broker new to this slot.
    fn new_record(&self, broker: Adopted<'_>) -> BrokerRecord {
        let stamp = clock::Stamp::now();
        let now = stamp.wall;
        let mut record = BrokerRecord {
            version: VERSION,
            name: self.slot.name().to_owned(),
            workspace: self.workspace_text(),
            cwd: self.cwd.to_string_lossy().into_owned(),
            command: broker.command,
            endpoint: broker.endpoint.map(|e| Value::String(e.to_owned())),
            owners: Vec::new(),
            identity: broker.identity,
            pgid: broker.pgid,
            created_at: now.clone(),
            last_active: now.clone(),
            last_active_boot_ms: Some(stamp.boot_ms),
            idle_ttl_secs: broker.policy.idle_ttl.map(|ttl| ttl.as_secs()),
            grace_ms: clock::millis(broker.policy.grace),
            shutdown: broker.policy.shutdown.clone(),
            host: proc::host_name(),
            lineage: broker.lineage,
            extra: serde_json::Map::new(),
        };
        if let Some(owner) = broker.owner {
            record.add_owner(owner.as_str(), &now);
        }
        record
    }

    /// Writes a new broker's record under the held lock, logs it and prints it.
    fn record_broker(
        &self,
        guard: &SlotGuard<'_>,
        record: &BrokerRecord,
        owner: Option<&SessionId>,
        (action, result): (&str, &str),
        detail: String,
    ) -> anyhow::Result<Outcome> {
        guard.write(record)?;
        executor::note(
            &self.store,
            self.event(action, result)
                .session(owner.map(SessionId::as_str))
                .pid(record.identity.pid)
                .detail(detail),
        );
        let how = if action == "register" {
            Joined::Adopted
        } else {
            Joined::New
        };
        self.print_record(record, how);
        Ok(Outcome::Done)
    }

    /// A broker record, as JSON (`--json`: the record with `reused`) or as a line for people.
    fn print_record(&self, record: &BrokerRecord, how: Joined) {
        if self.json {
            let mut value = serde_json::to_value(record).unwrap_or_else(|_| json!({}));
            if let Some(object) = value.as_object_mut() {
                object.insert("reused".to_owned(), Value::Bool(how == Joined::Reused));
            }
            println!(
                "{}",
                serde_json::to_string_pretty(&value).unwrap_or_default()
            );
            return;
        }
        let owners = if record.owners.is_empty() {
            "no owner".to_owned()
        } else {
            format!("owners {}", record.owner_ids().join(", "))
        };
        let verb = match how {
            Joined::New => "started",
            Joined::Adopted => "adopted",
            Joined::Reused => "reused",
        };
        println!(
            "{} broker {} for {}: {} ({owners})",
            crate::commands::term::lead(verb),
            record.identity.pid,
            self.place(),
            record.command.join(" ")
        );
    }
}

/// Whether a command made a new broker or joined the live one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Joined {
    New,
    /// A process started elsewhere, recorded by `register`: never "started" by us.
    Adopted,
    Reused,
}

/// A slot as people name it: `<workspace>`, with ` [<name>]` unless the name is `default`.
pub(crate) fn place(workspace: &str, name: &str) -> String {
    if name == "default" {
        workspace.to_owned()
    } else {
        format!("{workspace} [{name}]")
    }
}

/// `--wait`: whether a new broker exits within `wait`, looked at every 10 ms. Without `--wait` nothing is looked at
/// (the same answer every time, however fast the broker fails): a broker that exits at once shows as `STALE` in
/// `status` until a sweep prunes its record (`prune`, `broker_gone`, in the log).
fn exited_within(
    child: &mut std::process::Child,
    wait: std::time::Duration,
) -> Option<std::process::ExitStatus> {
    let until = std::time::Instant::now() + wait;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if std::time::Instant::now() >= until {
            return None;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

struct SpawnRequest<'a> {
    command: &'a [String],
    log: Option<&'a Path>,
    endpoint: Option<&'a str>,
    policy: StopPolicy,
    replace: bool,
    wait: Option<std::time::Duration>,
}

fn spawn(
    target: &SlotTarget,
    owner: Option<&SessionId>,
    request: &SpawnRequest<'_>,
) -> anyhow::Result<Outcome> {
    // Refused before anything is written (the owner index included); re-checked under the lock.
    if let SlotView::Broker(record) = target.slot.view(&target.store.root)
        && proc::is_alive(&record.identity)
    {
        refuse_other_command(target, &record, request)?;
    }
    let guard = target.lock_for(owner, OnCorrupt::Replace)?;
    target.recheck_owner(owner)?;
    let mut carried = Vec::new();
    if let Some(record) = target.live_broker(&guard, OnCorrupt::Replace)? {
        if record.command == request.command {
            return join(target, &guard, &record, owner);
        }
        refuse_other_command(target, &record, request)?;
        carried.clone_from(&record.owners);
        replace(target, &guard, record)?;
    }
    let log = request
        .log
        .map_or_else(|| target.slot.dir().join("broker.log"), Path::to_path_buf);
    let marker = format!("{}/{}", target.workspace_text(), target.slot.name());
    let token = crate::act::launch::new_token()?;
    // The broker waits in its exec stub until its record is written (see `launch::spawn_broker`): a launcher
    // killed before that leaves nothing running, and one killed after it leaves a recorded broker.
    let pending = launch::spawn_broker(
        request.command,
        &launch::BrokerLaunch {
            cwd: &target.cwd,
            log: &log,
            marker: &marker,
            state_root: target.store.root.path(),
            lineage: &token,
        },
    )?;
    let pid = i32::try_from(pending.id()).context("pid out of range")?;
    let identity = proc::identity_of(pid).with_context(|| {
        format!(
            "broker `{}` (pid {pid}) vanished before it started",
            request.command.join(" ")
        )
    })?;
    let mut record = target.new_record(Adopted {
        command: request.command.to_vec(),
        identity,
        pgid: Some(pid),
        lineage: Some(token),
        policy: &request.policy,
        endpoint: request.endpoint,
        owner,
    });
    for carried in carried {
        if !record.owner_ids().contains(&carried.session.as_str()) {
            record.owners.push(carried);
        }
    }
    // Dropped without `go` on a failed write (a full disk): the stub exits and nothing runs unowned.
    guard.write(&record)?;
    let started = pending.go().and_then(|mut child| {
        match request
            .wait
            .and_then(|wait| exited_within(&mut child, wait))
        {
            Some(status) => Err(exited_at_once(
                target,
                request,
                (pid, &log),
                &status_text(Some(status)),
            )),
            None => Ok(()),
        }
    });
    if let Err(err) = started {
        // Nothing runs: the record goes (the slot is as if no broker had been started). Should that fail, the
        // record names a gone process: `STALE` in status, pruned by the next sweep. The spawn's error is the news.
        let _ = guard.clear();
        return Err(err);
    }
    let detail = record.command.join(" ");
    target.record_broker(&guard, &record, owner, ("spawn", "started"), detail)
}

/// Logs and says that a new broker exited within its `--wait`.
fn exited_at_once(
    target: &SlotTarget,
    request: &SpawnRequest<'_>,
    (pid, log): (i32, &Path),
    status: &str,
) -> anyhow::Error {
    executor::note(
        &target.store,
        target
            .event("spawn", "failed")
            .pid(pid)
            .detail(format!("exited at once ({status})")),
    );
    anyhow::anyhow!(
        "broker `{}` (pid {pid}) exited at once ({status}); see {}",
        request.command.join(" "),
        log.display()
    )
}

/// A live broker running another command than the one asked for is not joined: bad input naming the fix, unless
/// `--replace` asks for it to be stopped first.
fn refuse_other_command(
    target: &SlotTarget,
    record: &BrokerRecord,
    request: &SpawnRequest<'_>,
) -> anyhow::Result<()> {
    if record.command == request.command || request.replace {
        return Ok(());
    }
    Err(bad_input(format!(
        "{} already runs broker {} (`{}`), not `{}`: pass --name NAME for a second broker, or --replace to stop \
         this one first",
        target.place(),
        record.identity.pid,
        record.command.join(" "),
        request.command.join(" ")
    )))
}

/// How a process ended, for people.
fn status_text(status: Option<std::process::ExitStatus>) -> String {
    use std::os::unix::process::ExitStatusExt;
    match status {
        Some(status) => match (status.code(), status.signal()) {
            (Some(code), _) => format!("exit status {code}"),
            (None, Some(signal)) => format!("killed by signal {signal}"),
            _ => status.to_string(),
        },
        None => "gone".to_owned(),
    }
}

/// `--replace`: the slot's live broker is handed to a stop ticket under the held lock and stopped now; its owners
/// carry over to the new broker.
fn replace(target: &SlotTarget, guard: &SlotGuard<'_>, record: BrokerRecord) -> anyhow::Result<()> {
    let label = target.slot.label();
    let ticket = StopTicket::for_broker(
        &record,
        Reason::Manual.as_str(),
        None,
        &label,
        &clock::now_rfc3339(),
    );
    let change = SlotChange::HandOff {
        record,
        ticket: ticket.clone(),
        owners: decide::slot::OwnerDelta::default(),
        reason: Reason::Manual,
    };
    executor::apply(&target.store, guard, &change)?;
    let reports = crate::commands::stopper(&target.store, Guard::new())
        .run(vec![ticket.clone()], stopper::foreground_deadline(&ticket));
    if !target.json {
        super::print_stops(&reports);
    }
    anyhow::ensure!(
        reports.iter().all(|report| !report.outcome.is_failure()),
        "the broker {} being replaced could not be stopped",
        ticket.identity.pid
    );
    Ok(())
}

/// Adds `owner` to a live broker and refreshes its idle clock: the reuse path of spawn and register.
fn join(
    target: &SlotTarget,
    guard: &SlotGuard<'_>,
    record: &BrokerRecord,
    owner: Option<&SessionId>,
) -> anyhow::Result<Outcome> {
    let change =
        decide::slot::add_owner(record, owner.map(SessionId::as_str), &clock::Stamp::now());
    executor::apply(&target.store, guard, &change)?;
    if let Some(record) = change.record() {
        target.print_record(record, Joined::Reused);
    }
    Ok(Outcome::Done)
}

/// A process is the broker of one slot at most: adopting the broker of another slot is bad input naming that slot.
fn refuse_registered_elsewhere(target: &SlotTarget, identity: &Identity) -> anyhow::Result<()> {
    for slot in Slot::all(&target.store.root) {
        if slot.dir() == target.slot.dir() {
            continue;
        }
        if let Some(record) = slot.view(&target.store.root).broker()
            && record.identity.is_same_process(identity)
        {
            return Err(bad_input(format!(
                "--pid {}: already the broker of {}",
                identity.pid,
                place(&record.workspace, &record.name)
            )));
        }
    }
    Ok(())
}

/// A live agent is never a broker (DESIGN "Belonging"): its session's end, or its last owner's, would stop it.
fn refuse_live_agent(target: &SlotTarget, identity: &Identity) -> anyhow::Result<()> {
    let pid = identity.pid;
    let records = target.store.sessions.all();
    if let Some(session) = crate::decide::belonging::session_of_agent(&records, identity) {
        return Err(bad_input(format!(
            "--pid {pid}: is the agent process of live session {session}; a live agent is never adopted as a broker"
        )));
    }
    if let Some(agent) = proc::cmdline(pid)
        .ok()
        .and_then(|argv| crate::agents::agent_of_process(&argv))
    {
        return Err(bad_input(format!(
            "--pid {pid}: is a {} agent process; a live agent is never adopted as a broker",
            agent.as_str()
        )));
    }
    Ok(())
}

fn register(
    target: &SlotTarget,
    (identity, stat): (Identity, proc::ProcStat),
    owner: Option<&SessionId>,
    policy: &StopPolicy,
    endpoint: Option<&str>,
) -> anyhow::Result<Outcome> {
    let pid = identity.pid;
    refuse_live_agent(target, &identity)?;
    refuse_registered_elsewhere(target, &identity)?;
    let guard = target.lock_for(owner, OnCorrupt::Refuse)?;
    target.recheck_owner(owner)?;
    if let Some(record) = target.live_broker(&guard, OnCorrupt::Refuse)? {
        if !record.identity.is_same_process(&identity) {
            executor::note(
                &target.store,
                target
                    .event("refuse", "refused")
                    .pid(pid)
                    .detail(format!("slot has live broker {}", record.identity.pid)),
            );
            eprintln!(
                "session-reaper: {} already has a live broker (pid {}); not adopting {pid}",
                target.place(),
                record.identity.pid
            );
            return Ok(Outcome::Partial);
        }
        return join(target, &guard, &record, owner);
    }
    let record = target.new_record(Adopted {
        command: proc::cmdline(pid).unwrap_or_default(),
        identity,
        pgid: (stat.pgid == pid).then_some(pid),
        lineage: None,
        policy,
        endpoint,
        owner,
    });
    target.record_broker(
        &guard,
        &record,
        owner,
        ("register", "adopted"),
        String::new(),
    )
}

fn attach(target: &SlotTarget, owner: &SessionId) -> anyhow::Result<Outcome> {
    let guard = target.lock_for(Some(owner), OnCorrupt::Refuse)?;
    target.recheck_owner(Some(owner))?;
    let Some(record) = target.live_broker(&guard, OnCorrupt::Refuse)? else {
        eprintln!(
            "session-reaper: {} has no live broker to attach to; use `broker spawn`",
            target.place()
        );
        return Ok(Outcome::Partial);
    };
    join(target, &guard, &record, Some(owner))
}

fn detach(target: &SlotTarget, owner: &SessionId) -> anyhow::Result<Outcome> {
    let label = target.slot.label();
    let place = target.place();
    let ticket = {
        let guard = target.lock()?;
        let Some(record) = target.live_broker(&guard, OnCorrupt::Refuse)? else {
            target.say(
                &format!("{place} has no live broker; nothing to detach"),
                &json!({"session": owner, "detached": false, "broker": null, "stops": []}),
            );
            return Ok(Outcome::Done);
        };
        let change = decide::slot::remove_owners(
            &SlotView::Broker(record.clone()),
            &[owner.as_str()],
            Reason::Manual,
            (&proc::host(), &clock::now_rfc3339()),
            &label,
        );
        executor::apply(&target.store, &guard, &change)?;
        match change {
            SlotChange::HandOff { ticket, .. } => ticket,
            SlotChange::Write { record, .. } => {
                target.say(
                    &format!(
                        "{owner} detached; broker {} of {place} kept for {}",
                        record.identity.pid,
                        record.owner_ids().join(", ")
                    ),
                    &json!({"session": owner, "detached": true, "broker": record, "stops": []}),
                );
                return Ok(Outcome::Done);
            }
            _ => {
                target.say(
                    &format!("{owner} is not an owner of {place}; nothing changed"),
                    &json!({"session": owner, "detached": false, "broker": record, "stops": []}),
                );
                return Ok(Outcome::Done);
            }
        }
    };
    let reports = crate::commands::stopper(&target.store, Guard::new())
        .run(vec![ticket.clone()], stopper::foreground_deadline(&ticket));
    if target.json {
        let value = json!({"session": owner, "detached": true, "broker": null, "stops": reports});
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        super::print_stops(&reports);
    }
    Ok(Outcome::from_ok(
        reports.iter().all(|report| !report.outcome.is_failure()),
    ))
}

fn touch(target: &SlotTarget) -> anyhow::Result<Outcome> {
    let guard = target.lock()?;
    let Some(record) = target.live_broker(&guard, OnCorrupt::Refuse)? else {
        let _ = writeln!(
            std::io::stderr(),
            "session-reaper: {} has no live broker to touch",
            target.place()
        );
        return Ok(Outcome::Partial);
    };
    let change = decide::slot::add_owner(&record, None, &clock::Stamp::now());
    executor::apply(&target.store, &guard, &change)?;
    let record = change.record().unwrap_or(&record);
    target.say(
        &format!("{} last active {}", target.place(), record.last_active),
        &serde_json::to_value(record)?,
    );
    Ok(Outcome::Done)
}

impl SlotTarget {
    /// Prints `line` for people, or `value` with `--json`.
    fn say(&self, line: &str, value: &Value) {
        if self.json {
            println!(
                "{}",
                serde_json::to_string_pretty(value).unwrap_or_default()
            );
        } else {
            println!("{line}");
        }
    }
}
