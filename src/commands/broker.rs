//! `broker spawn|register|attach|detach|touch`: every change to a slot is made under its lock, decided from what
//! the slot holds at that moment.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::{Value, json};

use crate::cli::{BrokerCommand, OwnerArgs, SlotArgs, StopArgs};
use crate::clock;
use crate::config::{self, Config, OwnerSource};
use crate::error::{Outcome, bad_input};
use crate::events::{Event, Reason};
use crate::launch;
use crate::name::{SessionId, SlotName};
use crate::proc;
use crate::record::{BrokerRecord, Identity, Shutdown, VERSION};
use crate::signal::Guard;
use crate::slot::{LOCK_WAIT, Slot, SlotContent, SlotGuard};
use crate::stop::{self, StopReport};
use crate::store::Store;
use crate::workspace;

pub fn run(command: &BrokerCommand, config: &Config) -> anyhow::Result<Outcome> {
    match command {
        BrokerCommand::Spawn {
            slot,
            owner,
            no_owner,
            stop,
            log,
            endpoint,
            command,
        } => {
            let policy = StopPolicy::from_args(stop)?;
            check_owner_input(owner, *no_owner, config)?;
            let target = SlotTarget::resolve(slot, config)?;
            let owner = target.owner(owner, *no_owner)?;
            let request = SpawnRequest {
                command,
                log: log.as_deref(),
                endpoint: endpoint.as_deref(),
                policy,
            };
            spawn(&target, owner.as_ref(), &request)
        }
        BrokerCommand::Register {
            pid,
            slot,
            owner,
            no_owner,
            stop,
            endpoint,
        } => {
            let policy = StopPolicy::from_args(stop)?;
            check_owner_input(owner, *no_owner, config)?;
            let adoptee = adoptable(*pid)?;
            let target = SlotTarget::resolve(slot, config)?;
            let owner = target.owner(owner, *no_owner)?;
            register(
                &target,
                adoptee,
                owner.as_ref(),
                &policy,
                endpoint.as_deref(),
            )
        }
        BrokerCommand::Attach { slot, owner } => {
            check_owner_input(owner, false, config)?;
            let target = SlotTarget::resolve(slot, config)?;
            let owner = target
                .owner(owner, false)?
                .context("attach needs an owner")?;
            attach(&target, &owner)
        }
        BrokerCommand::Detach { slot, owner } => {
            check_owner_input(owner, false, config)?;
            let target = SlotTarget::resolve(slot, config)?;
            let owner = target.detaching_owner(owner)?;
            detach(&target, &owner)
        }
        BrokerCommand::Touch { slot } => touch(&SlotTarget::resolve(slot, config)?),
    }
}

/// Refuses a malformed owner before the state root is opened (and maybe created): bad input changes nothing. With
/// no id given and no state root yet, no session record can name the caller either, so that refusal comes first too.
fn check_owner_input(args: &OwnerArgs, no_owner: bool, config: &Config) -> anyhow::Result<()> {
    if no_owner {
        return Ok(());
    }
    if let Some(text) = &args.session {
        return SessionId::parse(text).map(drop);
    }
    for name in config::SESSION_ENV {
        if let Some(value) = std::env::var(name).ok().filter(|value| !value.is_empty()) {
            return SessionId::parse(&value)
                .map(drop)
                .map_err(|err| bad_input(format!("${name}: {err}")));
        }
    }
    if std::fs::symlink_metadata(&config.state_dir).is_err() {
        return Err(no_owner_found());
    }
    Ok(())
}

fn no_owner_found() -> anyhow::Error {
    bad_input(
        "no owner session: pass --session ID, set SESSION_REAPER_SESSION_ID, run inside a session whose SessionStart \
         hook ran, or pass --no-owner",
    )
}

/// A process `broker register` may adopt: live, and one the guard would let us signal. Checked before the state
/// root is touched.
fn adoptable(pid: i32) -> anyhow::Result<(Identity, proc::ProcStat)> {
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
    fn resolve(args: &SlotArgs, config: &Config) -> anyhow::Result<Self> {
        let name = SlotName::parse(&args.name)?;
        let cwd = match &args.cwd {
            Some(dir) => dir.clone(),
            None => workspace::current_dir()?,
        };
        let workspace = workspace::workspace_of(&cwd)?;
        let cwd = std::fs::canonicalize(&cwd).unwrap_or(cwd);
        let store = Store::open(&config.state_dir)?;
        let slot = Slot::of(&store.root, &workspace, &name);
        Ok(SlotTarget {
            store,
            workspace,
            cwd,
            slot,
        })
    }

    /// The owner session, refusing (exit 2) when none is found without `--no-owner`, or when it has ended.
    fn owner(&self, args: &OwnerArgs, no_owner: bool) -> anyhow::Result<Option<SessionId>> {
        if no_owner {
            return Ok(None);
        }
        let Some((id, _source)) =
            config::resolve_owner(args.session.as_deref(), &self.store.sessions)?
        else {
            return Err(no_owner_found());
        };
        self.refuse_ended(&id)?;
        Ok(Some(id))
    }

    /// The owner leaving. An ended session may always leave: refusing it would pin the broker forever.
    fn detaching_owner(&self, args: &OwnerArgs) -> anyhow::Result<SessionId> {
        config::resolve_owner(args.session.as_deref(), &self.store.sessions)?
            .map(|(id, _source)| id)
            .ok_or_else(no_owner_found)
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

    fn lock(&self) -> anyhow::Result<SlotGuard<'_>> {
        self.slot.create(&self.store.root)?;
        self.slot.lock(&self.store.root, LOCK_WAIT)
    }

    /// The live broker of the slot, under its lock. A record whose process is gone is pruned (`broker_gone`); a
    /// corrupt one was moved aside and is reported.
    fn live_broker(&self, guard: &SlotGuard<'_>) -> anyhow::Result<Option<BrokerRecord>> {
        match guard.read()? {
            SlotContent::Empty => Ok(None),
            SlotContent::Corrupt { moved_to, why } => {
                let detail = format!("{why}; moved aside to {}", moved_to.display());
                eprintln!(
                    "session-reaper: corrupt {}: {detail}",
                    guard.slot().record_path().display()
                );
                self.store
                    .log
                    .record(&self.event("corrupt", "moved_aside").detail(detail));
                Ok(None)
            }
            SlotContent::Broker(record)
                if crate::record::is_other_host(&record.host, &proc::host_name()) =>
            {
                Err(bad_input(format!(
                    "{}: the broker was recorded by host {:?}; it is left alone from here",
                    guard.slot().record_path().display(),
                    record.host
                )))
            }
            SlotContent::Broker(record) if proc::is_alive(&record.identity) => Ok(Some(record)),
            SlotContent::Broker(record) => {
                guard.clear()?;
                self.store.log.record(
                    &self.event("prune", "pruned").reason(&Reason::BrokerGone).pid(record.identity.pid).detail(
                        "the recorded process no longer has its identity (exited, or the pid was reused)",
                    ),
                );
                Ok(None)
            }
        }
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

/// How a broker is stopped, from the flags.
pub struct StopPolicy {
    pub idle_ttl: Option<Duration>,
    pub grace: Duration,
    pub shutdown: Option<Shutdown>,
}

impl StopPolicy {
    fn from_args(args: &StopArgs) -> anyhow::Result<Self> {
        let shutdown = match (
            &args.shutdown_socket,
            &args.shutdown_message,
            &args.shutdown_command,
        ) {
            (Some(socket), Some(message), None) => Some(Shutdown::Socket {
                socket: socket.to_string_lossy().into_owned(),
                message: message.clone(),
            }),
            (None, None, Some(command)) => Some(Shutdown::Command {
                command: command.clone(),
            }),
            _ => None,
        };
        let idle_ttl = args
            .idle_ttl
            .map(|ttl| config::check_idle_ttl(ttl, "--idle-ttl"))
            .transpose()?;
        Ok(StopPolicy {
            idle_ttl,
            grace: config::check_grace(args.grace)?,
            shutdown,
        })
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
    let guard = target.lock()?;
    target.recheck_owner(owner)?;
    if let Some(record) = target.live_broker(&guard)? {
        return join(target, &guard, record, owner);
    }
    let log = request
        .log
        .map_or_else(|| target.slot.dir().join("broker.log"), Path::to_path_buf);
    let marker = format!("{}/{}", target.workspace_text(), target.slot.name());
    let child = launch::spawn_broker(
        request.command,
        &target.cwd,
        &log,
        &marker,
        target.store.root.path(),
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
        policy: &request.policy,
        endpoint: request.endpoint,
        owner,
    });
    let detail = record.command.join(" ");
    target.record_broker(&guard, &record, owner, ("spawn", "started"), detail)
}

/// Adds `owner` to a live broker and refreshes its idle clock: the reuse path of spawn and register.
fn join(
    target: &SlotTarget,
    guard: &SlotGuard<'_>,
    mut record: BrokerRecord,
    owner: Option<&SessionId>,
) -> anyhow::Result<Outcome> {
    let now = clock::now_rfc3339();
    let added = owner.is_some_and(|id| record.add_owner(id.as_str(), &now));
    record.last_active = now;
    guard.write(&record)?;
    if added {
        target.store.log.record(
            &target
                .event("owner_add", "added")
                .session(owner.map(SessionId::as_str))
                .pid(record.identity.pid)
                .detail(format!("owners now {}", record.owner_ids().join(", "))),
        );
    }
    print_record(&record, true);
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
    let guard = target.lock()?;
    target.recheck_owner(owner)?;
    if let Some(record) = target.live_broker(&guard)? {
        if record.identity != identity {
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
        return join(target, &guard, record, owner);
    }
    let record = target.new_record(Adopted {
        command: proc::cmdline(pid).unwrap_or_default(),
        identity,
        pgid: (stat.pgid == pid).then_some(pid),
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
    let guard = target.lock()?;
    target.recheck_owner(Some(owner))?;
    let Some(record) = target.live_broker(&guard)? else {
        eprintln!(
            "session-reaper: {} has no live broker to attach to; use `broker spawn`",
            target.slot.label()
        );
        return Ok(Outcome::Partial);
    };
    join(target, &guard, record, Some(owner))
}

fn detach(target: &SlotTarget, owner: &SessionId) -> anyhow::Result<Outcome> {
    let ticket = {
        let guard = target.lock()?;
        let Some(mut record) = target.live_broker(&guard)? else {
            println!(
                "{} has no live broker; nothing to detach",
                target.slot.label()
            );
            return Ok(Outcome::Done);
        };
        match crate::plan::remove_owner(&mut record, owner.as_str()) {
            crate::plan::OwnerRemoval::NotOwner => {
                println!(
                    "{owner} is not an owner of {}; nothing changed",
                    target.slot.label()
                );
                return Ok(Outcome::Done);
            }
            crate::plan::OwnerRemoval::OthersRemain => {
                guard.write(&record)?;
                target
                    .store
                    .log
                    .record(&owner_removed(target, owner, &record));
                println!(
                    "{owner} detached; broker {} kept for {}",
                    record.identity.pid,
                    record.owner_ids().join(", ")
                );
                return Ok(Outcome::Done);
            }
            crate::plan::OwnerRemoval::LastOwnerGone => {
                let ticket = ticket_for(
                    &record,
                    Reason::Manual.as_str(),
                    Some(owner.as_str()),
                    &target.slot.label(),
                );
                target.store.tickets.file(&ticket)?;
                guard.clear()?;
                target
                    .store
                    .log
                    .record(&owner_removed(target, owner, &record));
                ticket
            }
        }
    };
    let reports = target
        .store
        .stopper(Guard::new())
        .run(vec![ticket.clone()], foreground_deadline(&ticket));
    print_stops(&reports);
    Ok(Outcome::from_ok(
        reports.iter().all(|report| !report.outcome.is_failure()),
    ))
}

fn touch(target: &SlotTarget) -> anyhow::Result<Outcome> {
    let guard = target.lock()?;
    let Some(mut record) = target.live_broker(&guard)? else {
        eprintln!(
            "session-reaper: {} has no live broker to touch",
            target.slot.label()
        );
        return Ok(Outcome::Partial);
    };
    record.last_active = clock::now_rfc3339();
    guard.write(&record)?;
    println!("{} last active {}", target.slot.label(), record.last_active);
    Ok(Outcome::Done)
}

fn owner_removed(target: &SlotTarget, owner: &SessionId, record: &BrokerRecord) -> Event {
    target
        .event("owner_remove", "removed")
        .reason(&Reason::Manual)
        .session(Some(owner.as_str()))
        .pid(record.identity.pid)
        .detail(if record.owners.is_empty() {
            "last owner: stopping".to_owned()
        } else {
            format!("owners now {}", record.owner_ids().join(", "))
        })
}

/// The stop ticket of a slot's broker.
pub fn ticket_for(
    record: &BrokerRecord,
    reason: &str,
    session: Option<&str>,
    origin: &str,
) -> crate::record::StopTicket {
    let mut ticket = stop::new_ticket(
        record.identity.clone(),
        record.pgid,
        reason,
        record.grace_ms,
        origin.to_owned(),
    );
    ticket.session = session.map(str::to_owned);
    ticket.workspace = Some(record.workspace.clone());
    ticket.name = Some(record.name.clone());
    ticket.shutdown.clone_from(&record.shutdown);
    ticket.host.clone_from(&record.host);
    ticket
}

/// How long a command in the foreground waits for a stop: the whole cascade and one SIGKILL retry.
pub fn foreground_deadline(ticket: &crate::record::StopTicket) -> Instant {
    Instant::now()
        + stop::GRACEFUL_WINDOW
        + Duration::from_millis(ticket.grace_ms)
        + stop::KILL_RETRY * 2
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

/// One line per stop, for people.
pub fn print_stops(reports: &[StopReport]) {
    for report in reports {
        let ticket = &report.ticket;
        let place = match (&ticket.workspace, &ticket.name) {
            (Some(workspace), Some(name)) => format!("{workspace} [{name}]"),
            _ => ticket.origin.clone(),
        };
        println!(
            "pid {:>7}  {:<13} {}  {}",
            ticket.identity.pid,
            ticket.reason,
            report.outcome.summary(),
            place
        );
    }
}

/// The source of an owner, for `-v` output.
pub fn describe_source(source: &OwnerSource) -> String {
    match source {
        OwnerSource::Flag => "--session".to_owned(),
        OwnerSource::Env(name) => format!("${name}"),
        OwnerSource::Ancestry => "the calling agent's session".to_owned(),
    }
}
