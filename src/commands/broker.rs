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
use crate::config::{self, BrokerRequest, Config, OwnerSpec, SlotSpec, StopPolicy};
use crate::decide::{self, SlotChange};
use crate::error::{Outcome, bad_input};
use crate::model::clock;
use crate::model::deadline::Deadline;
use crate::model::name::SessionId;
use crate::model::record::{BrokerRecord, Identity, VERSION};
use crate::observe::proc;
use crate::store::Store;
use crate::store::events::{Event, Reason};
use crate::store::slot::{LOCK_WAIT, Slot, SlotGuard, SlotView};

pub fn run(request: BrokerRequest, config: &Config) -> anyhow::Result<Outcome> {
    match request {
        BrokerRequest::Spawn {
            slot,
            owner,
            policy,
            log,
            endpoint,
            command,
        } => {
            let target = SlotTarget::open(slot, config)?;
            let owner = target.owner(&owner)?;
            target.refuse_other_pid_ns(owner.as_ref(), "spawn")?;
            let request = SpawnRequest {
                command: &command,
                log: log.as_deref(),
                endpoint: endpoint.as_deref(),
                policy,
            };
            spawn(&target, owner.as_ref(), &request)
        }
        BrokerRequest::Register {
            pid,
            slot,
            owner,
            policy,
            endpoint,
        } => {
            let adoptee = adoptable(pid)?;
            let target = SlotTarget::open(slot, config)?;
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
        BrokerRequest::Attach { slot, owner } => {
            let target = SlotTarget::open(slot, config)?;
            let owner = target.owner(&owner)?.ok_or_else(config::no_owner_found)?;
            attach(&target, &owner)
        }
        BrokerRequest::Detach { slot, owner } => {
            let target = SlotTarget::open(slot, config)?;
            let owner = target.detaching_owner(&owner)?;
            detach(&target, &owner)
        }
        BrokerRequest::Touch { slot } => touch(&SlotTarget::open(slot, config)?),
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
pub struct SlotTarget {
    pub store: Store,
    pub workspace: PathBuf,
    pub cwd: PathBuf,
    pub slot: Slot,
}

impl SlotTarget {
    fn open(spec: SlotSpec, config: &Config) -> anyhow::Result<Self> {
        let store = Store::open(&config.state_dir)?;
        let slot = Slot::of(&store.root, &spec.workspace, &spec.name);
        Ok(SlotTarget {
            store,
            workspace: spec.workspace,
            cwd: spec.cwd,
            slot,
        })
    }

    /// The session `spec` names (found among the live sessions by ancestry if need be); `None` for `--no-owner`.
    fn named_owner(&self, spec: &OwnerSpec) -> anyhow::Result<Option<SessionId>> {
        match spec {
            OwnerSpec::Nobody => Ok(None),
            OwnerSpec::Named(id, _source) => Ok(Some(id.clone())),
            OwnerSpec::Ancestry => config::session_of_ancestor(&self.store.sessions)
                .map(Some)
                .ok_or_else(config::no_owner_found),
        }
    }

    /// The owner-to-be, refusing (exit 2) one whose session has ended.
    fn owner(&self, spec: &OwnerSpec) -> anyhow::Result<Option<SessionId>> {
        let owner = self.named_owner(spec)?;
        if let Some(id) = &owner {
            self.refuse_ended(id)?;
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
    fn lock_for(&self, owner: Option<&SessionId>) -> anyhow::Result<SlotGuard<'_>> {
        // A slot held by a record that is refused as it stands is refused before anything is written.
        if let SlotView::Unreadable(unreadable) = self.slot.view(&self.store.root)
            && !unreadable.corrupt
        {
            return Err(bad_input(format!(
                "{}: {}; the slot is left as it is",
                self.slot.record_path().display(),
                unreadable.why
            )));
        }
        if let Some(owner) = owner {
            self.store.sessions.index_slot(
                owner,
                &self.slot.label(),
                Deadline::after(LOCK_WAIT),
            )?;
        }
        self.lock()
    }

    /// Creates the slot and takes its lock. A sweep removing the empty slot in between makes the lock fail on a
    /// vanished directory: created again and retried (a few times).
    fn lock(&self) -> anyhow::Result<SlotGuard<'_>> {
        let mut tries = 0;
        loop {
            self.slot.create(&self.store.root)?;
            match self.slot.lock(&self.store.root, Deadline::after(LOCK_WAIT)) {
                Err(_) if tries < 3 && !self.slot.dir().exists() => tries += 1,
                result => return result,
            }
        }
    }

    /// The live broker of the slot, under its lock. A record whose process is gone is pruned (`broker_gone`); a
    /// corrupt one is moved aside and reported; one refused as it stands (a newer version, another host's) is an
    /// error: the slot is occupied, and nothing here may overwrite it.
    fn live_broker(&self, guard: &SlotGuard<'_>) -> anyhow::Result<Option<BrokerRecord>> {
        let path = guard.slot().record_path();
        let view = guard.view();
        let record = match &view {
            SlotView::Empty => return Ok(None),
            SlotView::Unreadable(unreadable) if unreadable.corrupt => {
                let change = SlotChange::MoveAside {
                    why: unreadable.why.clone(),
                };
                executor::apply(&self.store, guard, &change)?;
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
        if crate::decide::lineage::is_foreign(record, &proc::host_name()) {
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
        let now = clock::now_rfc3339();
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
        self.store.log.record(
            &self
                .event(action, result)
                .session(owner.map(SessionId::as_str))
                .pid(record.identity.pid)
                .detail(detail),
        );
        print_record(record, false);
        Ok(Outcome::Done)
    }
}

struct SpawnRequest<'a> {
    command: &'a [String],
    log: Option<&'a Path>,
    endpoint: Option<&'a str>,
    policy: StopPolicy,
}

fn spawn(
    target: &SlotTarget,
    owner: Option<&SessionId>,
    request: &SpawnRequest<'_>,
) -> anyhow::Result<Outcome> {
    let guard = target.lock_for(owner)?;
    target.recheck_owner(owner)?;
    if let Some(record) = target.live_broker(&guard)? {
        return join(target, &guard, &record, owner);
    }
    let log = request
        .log
        .map_or_else(|| target.slot.dir().join("broker.log"), Path::to_path_buf);
    let marker = format!("{}/{}", target.workspace_text(), target.slot.name());
    let token = crate::decide::lineage::new_token()?;
    let child = launch::spawn_broker(
        request.command,
        &launch::BrokerLaunch {
            cwd: &target.cwd,
            log: &log,
            marker: &marker,
            state_root: target.store.root.path(),
            lineage: &token,
        },
    )?;
    let pid = i32::try_from(child.id()).context("pid out of range")?;
    let Some(identity) = proc::identity_of(pid) else {
        target.store.log.record(
            &target
                .event("spawn", "failed")
                .pid(pid)
                .detail("exited at once"),
        );
        anyhow::bail!(
            "broker {:?} exited as soon as it started; see {}",
            request.command[0],
            log.display()
        );
    };
    let record = target.new_record(Adopted {
        command: request.command.to_vec(),
        identity,
        pgid: Some(pid),
        lineage: Some(token),
        policy: &request.policy,
        endpoint: request.endpoint,
        owner,
    });
    let detail = record.command.join(" ");
    let recorded = target.record_broker(&guard, &record, owner, ("spawn", "started"), detail);
    if recorded.is_err() {
        // A broker no record knows would run on unowned (a full disk, a failed write): stop it now.
        abandon(&record);
    }
    recorded
}

/// SIGKILLs a broker we just started and could not record, with its group, through its verified identity.
fn abandon(record: &BrokerRecord) {
    if let crate::act::signal::Target::Live(handle) = Guard::new().target(&record.identity) {
        let _ = handle.signal_group(crate::act::signal::Sig::Kill);
    }
}

/// Adds `owner` to a live broker and refreshes its idle clock: the reuse path of spawn and register.
fn join(
    target: &SlotTarget,
    guard: &SlotGuard<'_>,
    record: &BrokerRecord,
    owner: Option<&SessionId>,
) -> anyhow::Result<Outcome> {
    let change =
        decide::slot::add_owner(record, owner.map(SessionId::as_str), &clock::now_rfc3339());
    executor::apply(&target.store, guard, &change)?;
    if let Some(record) = change.record() {
        print_record(record, true);
    }
    Ok(Outcome::Done)
}

fn register(
    target: &SlotTarget,
    (identity, stat): (Identity, proc::ProcStat),
    owner: Option<&SessionId>,
    policy: &StopPolicy,
    endpoint: Option<&str>,
) -> anyhow::Result<Outcome> {
    let pid = identity.pid;
    let guard = target.lock_for(owner)?;
    target.recheck_owner(owner)?;
    if let Some(record) = target.live_broker(&guard)? {
        if !record.identity.is_same_process(&identity) {
            target.store.log.record(
                &target
                    .event("refuse", "refused")
                    .pid(pid)
                    .detail(format!("slot has live broker {}", record.identity.pid)),
            );
            eprintln!(
                "session-reaper: {} already has a live broker (pid {}); not adopting {pid}",
                target.slot.label(),
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
    let guard = target.lock_for(Some(owner))?;
    target.recheck_owner(Some(owner))?;
    let Some(record) = target.live_broker(&guard)? else {
        eprintln!(
            "session-reaper: {} has no live broker to attach to; use `broker spawn`",
            target.slot.label()
        );
        return Ok(Outcome::Partial);
    };
    join(target, &guard, &record, Some(owner))
}

fn detach(target: &SlotTarget, owner: &SessionId) -> anyhow::Result<Outcome> {
    let label = target.slot.label();
    let ticket = {
        let guard = target.lock()?;
        let Some(record) = target.live_broker(&guard)? else {
            println!("{label} has no live broker; nothing to detach");
            return Ok(Outcome::Done);
        };
        let change = decide::slot::remove_owners(
            &SlotView::Broker(record),
            &[owner.as_str()],
            Reason::Manual,
            &proc::host_name(),
            &label,
        );
        executor::apply(&target.store, &guard, &change)?;
        match change {
            SlotChange::HandOff { ticket, .. } => ticket,
            SlotChange::Write { record, .. } => {
                println!(
                    "{owner} detached; broker {} kept for {}",
                    record.identity.pid,
                    record.owner_ids().join(", ")
                );
                return Ok(Outcome::Done);
            }
            _ => {
                println!("{owner} is not an owner of {label}; nothing changed");
                return Ok(Outcome::Done);
            }
        }
    };
    let reports = target
        .store
        .stopper(Guard::new())
        .run(vec![ticket.clone()], stopper::foreground_deadline(&ticket));
    super::print_stops(&reports);
    Ok(Outcome::from_ok(
        reports.iter().all(|report| !report.outcome.is_failure()),
    ))
}

fn touch(target: &SlotTarget) -> anyhow::Result<Outcome> {
    let guard = target.lock()?;
    let Some(record) = target.live_broker(&guard)? else {
        let _ = writeln!(
            std::io::stderr(),
            "session-reaper: {} has no live broker to touch",
            target.slot.label()
        );
        return Ok(Outcome::Partial);
    };
    let change = decide::slot::add_owner(&record, None, &clock::now_rfc3339());
    executor::apply(&target.store, &guard, &change)?;
    println!(
        "{} last active {}",
        target.slot.label(),
        change
            .record()
            .map_or("", |record| record.last_active.as_str())
    );
    Ok(Outcome::Done)
}

fn print_record(record: &BrokerRecord, reused: bool) {
    let mut value = serde_json::to_value(record).unwrap_or_else(|_| json!({}));
    if let Some(object) = value.as_object_mut() {
        object.insert("reused".to_owned(), Value::Bool(reused));
    }
    println!(
        "{}",
        serde_json::to_string_pretty(&value).unwrap_or_default()
    );
}
