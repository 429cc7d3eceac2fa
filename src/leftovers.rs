//! Leftovers: what a session's tools started and never registered — dev servers, `nohup`/`setsid` jobs, MCP
//! servers, nested agents — stopped once the session's agent process is gone (DESIGN "Leftovers").
//!
//! `Table::observe` reads the process table once with pinned identities (identity → argv, environ → identity
//! unchanged; environ only of our processes started after the agents of interest). `find` decides, with no system
//! call, which of those processes are one session's leftovers. The rest of the module acts on that decision: it
//! files stop tickets (reason `leftover`; the stop event carries the argv and the memory freed) or only reports
//! them, as the session's policy says, and records what `SessionStart` saw (the agent's group, its descendants).

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::act::stopper;
use crate::agents::Agent;
use crate::model::clock;
use crate::model::deadline::Deadline;
use crate::model::name::SessionId;
use crate::model::record::{Identity, SessionRecord, StopTicket, is_other_host};
use crate::observe::proc;
use crate::store::Store;
use crate::store::events::{Event, Reason};

/// `SESSION_REAPER_KEEP=1` in a process's environment keeps it.
pub const KEEP_VARIABLE: &str = "SESSION_REAPER_KEEP";

/// Where `keep --pid` marks live in the state root: one file per kept process identity.
pub const KEPT: &str = "kept";

/// True for an agent (as a record names it) that names its session to the processes it starts (the agents table
/// says); for the others the agent's descendants and its process group stand in.
pub fn names_sessions(agent: &str) -> bool {
    Agent::from_name(agent).is_some_and(|agent| agent.spec().names_sessions())
}

/// What to do with a session's leftovers (`--leftovers`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Policy {
    #[default]
    Stop,
    Report,
    Off,
}

impl Policy {
    pub fn as_str(self) -> &'static str {
        match self {
            Policy::Stop => "stop",
            Policy::Report => "report",
            Policy::Off => "off",
        }
    }
}

/// What `SessionStart` records for leftover discovery, kept in the session record under `"leftovers"`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionFacts {
    #[serde(default)]
    pub policy: Policy,
    /// False when the sentinel was turned off for this session's agent.
    #[serde(default = "yes")]
    pub sentinel: bool,
    /// The agent's process group, when the agent leads it (only then does the group stand in after a crash).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_pgid: Option<i32>,
    /// The agent's descendants seen by its hooks (agents that name no session).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub descendants: Vec<Identity>,
    /// When the leftovers were dealt with after the agent was gone; nothing looks again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub done_at: Option<String>,
}

fn yes() -> bool {
    true
}

const FACTS_KEY: &str = "leftovers";

/// True when a `SessionStart` (or an ending that stood in for it) recorded the session's discovery facts.
pub fn has_facts(record: &SessionRecord) -> bool {
    record.extra.contains_key(FACTS_KEY)
}

impl SessionFacts {
    pub fn of(record: &SessionRecord) -> Self {
        record
            .extra
            .get(FACTS_KEY)
            .and_then(|value| serde_json::from_value(value.clone()).ok())
            .unwrap_or_else(|| SessionFacts {
                sentinel: true,
                ..SessionFacts::default()
            })
    }

    pub fn store_in(&self, record: &mut SessionRecord) {
        if let Ok(value) = serde_json::to_value(self) {
            record.extra.insert(FACTS_KEY.to_owned(), value);
        }
    }
}

/// One process as observed.
#[derive(Clone, Debug, Default)]
pub struct Observed {
    /// `uid` is `u32::MAX` when its details were not read (another user's, or older than every agent of interest).
    pub identity: Identity,
    pub ppid: i32,
    pub pgid: i32,
    pub comm: String,
    pub argv: Vec<String>,
    /// The session variables it carries: (variable, value).
    pub sessions: Vec<(&'static str, String)>,
    /// The agent pid it names (`CLAUDE_PID`).
    pub agent_pid: Option<i32>,
    /// The agents' tool-only variables it carries (`AgentSpec::tool_marks`): a tool's command, not a server.
    pub tool_marks: Vec<&'static str>,
    pub keep: bool,
    /// Carries `SESSION_REAPER_BROKER`: a broker's member, which its owners decide.
    pub broker: bool,
    pub rss_kib: u64,
    /// Its environment was read.
    pub detailed: bool,
}

impl Observed {
    fn is(&self, identity: &Identity) -> bool {
        self.identity.pid == identity.pid && self.identity.start_ticks == identity.start_ticks
    }

    /// One of an agent's own detached workers (Claude Code's `--bg-pty-host` background-shell helper, `--bg-spare`).
    pub(crate) fn is_agent_worker(&self) -> bool {
        self.argv
            .iter()
            .any(|arg| crate::decide::resume::AGENT_WORKER_FLAGS.contains(&arg.as_str()))
    }

    /// An agent's executable (`proc::AGENT_PROGRAMS`, or a runtime running one): what is below a live one is still
    /// in that agent's hands.
    fn is_agent_executable(&self) -> bool {
        proc::is_agent_program(&self.argv)
            || crate::agents::AGENTS
                .iter()
                .any(|spec| spec.executables.contains(&self.comm.as_str()))
    }

    fn carries(&self, session: &str) -> Option<&'static str> {
        self.sessions
            .iter()
            .find(|(_, value)| value == session)
            .map(|(variable, _)| *variable)
    }
}

/// The process table at one moment.
#[derive(Clone, Debug, Default)]
pub struct Table {
    procs: HashMap<i32, Observed>,
}

impl Table {
    pub fn from_processes(procs: impl IntoIterator<Item = Observed>) -> Self {
        Table {
            procs: procs.into_iter().map(|p| (p.identity.pid, p)).collect(),
        }
    }

    /// Reads every process's stat; the environment and memory of our processes started at or after `since_ticks`;
    /// and the argv of those and of their ancestors (what the rules judge by argv: agent workers, agent executables
    /// above a carrier). A process whose identity changed while it was read is left out.
    pub fn observe(since_ticks: u64) -> Self {
        let uid = nix::unistd::getuid().as_raw();
        let procs = proc::pids()
            .unwrap_or_default()
            .into_iter()
            .filter_map(|pid| observe_one(pid, since_ticks, uid));
        let mut table = Table::from_processes(procs);
        table.read_argv();
        table
    }

    /// Reads the argv of every detailed process and of its ancestors, pinned by start time: one whose pid was
    /// reused meanwhile leaves the table.
    fn read_argv(&mut self) {
        let mut wanted: HashSet<i32> = HashSet::new();
        for p in self.procs.values().filter(|p| p.detailed) {
            wanted.insert(p.identity.pid);
            wanted.extend(self.ancestors(p.identity.pid).map(|a| a.identity.pid));
        }
        for pid in wanted {
            let argv = proc::cmdline(pid).unwrap_or_default();
            let again = proc::stat(pid).ok();
            match self.procs.get_mut(&pid) {
                Some(p)
                    if again.is_some_and(|again| {
                        again.start_ticks == p.identity.start_ticks && again.state != 'Z'
                    }) =>
                {
                    p.argv = argv;
                }
                _ => {
                    self.procs.remove(&pid);
                }
            }
        }
    }

    pub fn get(&self, pid: i32) -> Option<&Observed> {
        self.procs.get(&pid)
    }

    pub fn is_live(&self, identity: &Identity) -> bool {
        self.get(identity.pid).is_some_and(|p| p.is(identity))
    }

    /// The ancestors of `pid`, nearest first.
    fn ancestors(&self, pid: i32) -> impl Iterator<Item = &Observed> {
        let mut next = self.get(pid).map_or(0, |p| p.ppid);
        let mut seen = 0;
        std::iter::from_fn(move || {
            if next <= 0 || seen > 4096 {
                return None;
            }
            seen += 1;
            let parent = self.get(next)?;
            next = parent.ppid;
            Some(parent)
        })
    }

    /// The processes whose parent is `pid`.
    pub fn children_of(&self, pid: i32) -> impl Iterator<Item = &Observed> {
        self.procs.values().filter(move |p| p.ppid == pid)
    }

    /// `pid` and every live descendant of it.
    pub fn descendants_of(&self, pid: i32) -> Vec<&Observed> {
        self.procs
            .values()
            .filter(|p| {
                p.identity.pid == pid
                    || self
                        .ancestors(p.identity.pid)
                        .any(|a| a.identity.pid == pid)
            })
            .collect()
    }
}

fn observe_one(pid: i32, since_ticks: u64, uid: u32) -> Option<Observed> {
    let stat = proc::stat(pid).ok().filter(|stat| stat.state != 'Z')?;
    let mut observed = Observed {
        identity: Identity {
            boot_id: proc::boot_id().to_owned(),
            pid_ns: proc::own_pid_ns(),
            pid,
            start_ticks: stat.start_ticks,
            uid: u32::MAX,
        },
        ppid: stat.ppid,
        pgid: stat.pgid,
        comm: stat.comm,
        ..Observed::default()
    };
    // The owner of /proc/<pid> is a cheap first look at the uid; the signal path re-checks the real uid.
    if stat.start_ticks >= since_ticks
        && let Ok(meta) = std::fs::metadata(format!("/proc/{pid}"))
        && std::os::unix::fs::MetadataExt::uid(&meta) == uid
        && let Ok(environ) = proc::read_proc_file(pid, "environ")
    {
        read_environ(&mut observed, &environ);
        observed.identity.uid = uid;
        observed.rss_kib = proc::read_proc_file(pid, "statm")
            .map_or(0, |statm| rss_kib_of(&String::from_utf8_lossy(&statm)));
        observed.detailed = true;
    }
    if !observed.detailed {
        // One read, one moment: nothing to pin.
        return Some(observed);
    }
    // Pinned: what was read belongs to this identity only if the identity still holds.
    let again = proc::stat(pid).ok()?;
    (again.start_ticks == observed.identity.start_ticks && again.state != 'Z').then_some(observed)
}

/// The resident memory (KiB) in `/proc/<pid>/statm` (its second field counts pages).
fn rss_kib_of(statm: &str) -> u64 {
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|pages| pages.parse().ok())
        .unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let page = u64::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
    pages * page / 1024
}

fn read_environ(observed: &mut Observed, environ: &[u8]) {
    for entry in environ.split(|byte| *byte == 0) {
        let entry = String::from_utf8_lossy(entry);
        let Some((key, value)) = entry.split_once('=') else {
            continue;
        };
        if let Some((variable, _)) =
            crate::agents::carrier_variables().find(|(name, _)| *name == key)
        {
            observed.sessions.push((variable, value.to_owned()));
        } else if crate::agents::agent_pid_variables().any(|name| name == key) {
            observed.agent_pid = value.parse().ok();
        } else if key == KEEP_VARIABLE {
            observed.keep = value == "1";
        } else if key == crate::act::launch::BROKER_MARKER {
            observed.broker = true;
        }
        if let Some(mark) = crate::agents::AGENTS
            .iter()
            .find_map(|spec| spec.tool_marks.iter().find(|mark| **mark == key))
            && !observed.tool_marks.contains(mark)
        {
            observed.tool_marks.push(mark);
        }
    }
}

/// One session's question: which processes are its leftovers?
#[derive(Clone, Debug)]
pub struct Query<'a> {
    pub session: &'a str,
    /// The session's agent process.
    pub agent: &'a Identity,
    pub names_sessions: bool,
    pub facts: &'a SessionFacts,
    /// Agent processes that session records name (live or not: the table says).
    pub recorded_agents: &'a [Identity],
    /// This process and its ancestors (a hook's agent, shell and so on).
    pub protected: &'a HashSet<i32>,
    /// Processes marked with `keep --pid`.
    pub kept: &'a [Identity],
}

/// One leftover and how it was known to be the session's.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Leftover {
    pub pid: i32,
    #[serde(skip)]
    pub identity: Identity,
    pub argv: Vec<String>,
    pub rss_kib: u64,
    /// The variable that named the session, `descendant` or `process group`.
    pub via: &'static str,
}

/// The leftovers of one session in `table`: processes of the agent's uid, started no earlier than the agent,
/// that name the session (or, for agents that name none, that the hooks saw below the agent, or that are in the
/// dead agent's own group); never the agent, its workers, a broker's member, a kept process, a protected pid, or
/// a process still in some live agent's hands.
pub fn find(table: &Table, query: &Query<'_>) -> Vec<Leftover> {
    let agent_alive = table.is_live(query.agent);
    let matched: HashMap<i32, &'static str> = table
        .procs
        .values()
        .filter_map(|p| matches(table, p, query, agent_alive).map(|via| (p.identity.pid, via)))
        .collect();
    let mut found: Vec<Leftover> = matched
        .iter()
        .filter_map(|(pid, via)| table.get(*pid).map(|p| (p, *via)))
        .filter(|(p, _)| !query.protected.contains(&p.identity.pid))
        .filter(|(p, _)| !in_agents_hands(table, p, query, &matched))
        .filter(|(p, _)| !is_kept(table, p, query.kept))
        .map(|(p, via)| Leftover {
            pid: p.identity.pid,
            identity: p.identity.clone(),
            argv: p.argv.clone(),
            rss_kib: p.rss_kib,
            via,
        })
        .collect();
    found.sort_by_key(|leftover| leftover.pid);
    found
}

fn matches(
    table: &Table,
    p: &Observed,
    query: &Query<'_>,
    agent_alive: bool,
) -> Option<&'static str> {
    let agent = query.agent;
    let eligible = p.detailed
        && p.identity.uid == agent.uid
        && p.identity.boot_id == agent.boot_id
        && p.identity.start_ticks >= agent.start_ticks
        && p.identity.pid != agent.pid
        && !p.keep
        && !p.broker
        && !p.is_agent_worker();
    if !eligible {
        return None;
    }
    if let Some(variable) = p.carries(query.session) {
        // It names another agent process that was already running when it started: that agent's, not ours.
        let other_agent = p
            .agent_pid
            .filter(|pid| *pid != agent.pid)
            .is_some_and(|pid| {
                table
                    .get(pid)
                    .is_some_and(|owner| owner.identity.start_ticks <= p.identity.start_ticks)
            });
        return (!other_agent).then_some(variable);
    }
    if query.names_sessions {
        return None;
    }
    if query.facts.descendants.iter().any(|seen| p.is(seen)) {
        return Some("descendant");
    }
    let own_group = query.facts.agent_pgid == Some(agent.pid) && p.pgid == agent.pid;
    (!agent_alive && own_group).then_some("process group")
}

/// True when a live agent process, an agent's worker, or an agent executable that is not itself one of this
/// session's leftovers (a nested agent being stopped) is among `p`'s ancestors.
fn in_agents_hands(
    table: &Table,
    p: &Observed,
    query: &Query<'_>,
    matched: &HashMap<i32, &'static str>,
) -> bool {
    table.ancestors(p.identity.pid).any(|ancestor| {
        ancestor.is(query.agent)
            || query.recorded_agents.iter().any(|agent| ancestor.is(agent))
            || ancestor.is_agent_worker()
            || (ancestor.is_agent_executable() && !matched.contains_key(&ancestor.identity.pid))
    })
}

fn is_kept(table: &Table, p: &Observed, kept: &[Identity]) -> bool {
    kept.iter()
        .any(|mark| p.is(mark) || table.ancestors(p.identity.pid).any(|a| a.is(mark)))
}

// ---- acting on the decision ----

/// One session's leftovers as found, with what its policy says to do.
#[derive(Clone, Debug, Serialize)]
pub struct Found {
    pub session: String,
    pub policy: Policy,
    pub leftovers: Vec<Leftover>,
}

/// Finds the leftovers of `sessions` (those with an agent identity of this boot and a policy other than `off`)
/// in one observation of the process table.
pub fn discover(store: &Store, sessions: &[SessionRecord]) -> Vec<Found> {
    match observed_since(sessions) {
        Some(since) => discover_in(store, &Table::observe(since), sessions),
        None => Vec::new(),
    }
}

/// The start of the oldest agent of this boot among `sessions`: the table needs the details of what started since.
fn observed_since(sessions: &[SessionRecord]) -> Option<u64> {
    sessions
        .iter()
        .filter_map(|record| record.agent_identity.as_ref())
        .filter(|agent| agent.boot_id == proc::boot_id())
        .map(|agent| agent.start_ticks)
        .min()
}

/// `discover` in a table already observed (with the details of everything started since `observed_since`).
fn discover_in(store: &Store, table: &Table, sessions: &[SessionRecord]) -> Vec<Found> {
    let targets: Vec<(&SessionRecord, &Identity, SessionFacts)> = sessions
        .iter()
        .filter_map(|record| {
            let agent = record.agent_identity.as_ref()?;
            let facts = SessionFacts::of(record);
            (agent.boot_id == proc::boot_id() && facts.policy != Policy::Off)
                .then_some((record, agent, facts))
        })
        .collect();
    if targets.is_empty() {
        return Vec::new();
    }
    let recorded_agents: Vec<Identity> = store
        .sessions
        .all()
        .into_iter()
        .filter_map(|record| record.agent_identity)
        .collect();
    let kept = kept_marks(store);
    let protected = proc::self_and_ancestors();
    targets
        .into_iter()
        .map(|(record, agent, facts)| {
            let query = Query {
                session: &record.session_id,
                agent,
                names_sessions: names_sessions(&record.agent),
                facts: &facts,
                recorded_agents: &recorded_agents,
                protected: &protected,
                kept: &kept,
            };
            Found {
                session: record.session_id.clone(),
                policy: facts.policy,
                leftovers: find(table, &query),
            }
        })
        .collect()
}

/// The stop ticket of one leftover: the process alone (its children are leftovers of their own), default grace.
pub fn ticket_for(session: &str, leftover: &Leftover) -> StopTicket {
    let mut ticket = stopper::new_ticket(
        leftover.identity.clone(),
        None,
        Reason::Leftover.as_str(),
        stopper::DEFAULT_GRACE_MS,
        "leftover".to_owned(),
    );
    ticket.session = Some(session.to_owned());
    ticket.argv = Some(leftover.argv.clone());
    ticket.rss_kib = Some(leftover.rss_kib);
    ticket
}

/// Files tickets for what is to be stopped and logs what is only reported; `dry_run` does neither. Returns the
/// tickets to run.
pub fn act_on(store: &Store, found: &[Found], dry_run: bool) -> Vec<StopTicket> {
    let mut tickets = Vec::new();
    for found in found {
        for leftover in &found.leftovers {
            match found.policy {
                Policy::Stop => {
                    let ticket = ticket_for(&found.session, leftover);
                    if !dry_run && let Err(err) = store.tickets.file(&ticket) {
                        store.log.record(
                            &Event::new("error", "failed")
                                .session(Some(&found.session))
                                .pid(leftover.pid)
                                .detail(format!("leftover ticket: {err:#}")),
                        );
                        continue;
                    }
                    tickets.push(ticket);
                }
                Policy::Report if !dry_run => {
                    let mut event = Event::new("leftover", "reported")
                        .reason(&Reason::Leftover)
                        .session(Some(&found.session))
                        .pid(leftover.pid)
                        .detail(format!("via {}; policy report: left running", leftover.via));
                    event.argv = Some(leftover.argv.clone());
                    event.rss_kib = Some(leftover.rss_kib);
                    store.log.record(&event);
                }
                Policy::Report | Policy::Off => {}
            }
        }
    }
    tickets
}

/// `reap`: the leftovers-to-be of the sessions being ended, filed (or, in a dry run, only listed) as their policy
/// says. A manual end does not wait for the agent: what it would leave behind goes with it.
pub fn for_reap(
    store: &Store,
    sessions: &[SessionId],
    dry_run: bool,
) -> (Vec<Found>, Vec<StopTicket>) {
    let records: Vec<SessionRecord> = sessions
        .iter()
        .filter_map(|id| store.sessions.get(id).ok().flatten())
        .collect();
    let found = discover(store, &records);
    let tickets = act_on(store, &found, dry_run);
    (found, tickets)
}

/// `sweep`: the leftovers of agents that are gone with nothing attending to them (no sentinel: turned off,
/// killed, or a reboot), filed as their policy says.
pub fn for_sweep(store: &Store, dry_run: bool) -> Vec<StopTicket> {
    let sessions = store.sessions.all();
    agents_gone_unattended(store, &sessions)
        .iter()
        .flat_map(|agent| stop_leftovers_of(store, agent, dry_run))
        .collect()
}

/// The lines `reap` prints for one session's leftovers.
pub fn print_found(found: &[Found], session: &str, dry_run: bool) {
    for found in found.iter().filter(|found| found.session == session) {
        let what = match (found.policy, dry_run) {
            (Policy::Stop, true) => "leftover, would stop:",
            (Policy::Stop, false) => "leftover, stopping:",
            _ => "leftover, reported:",
        };
        for leftover in &found.leftovers {
            print_leftover(&format!("  {what}"), leftover);
        }
    }
}

/// The sessions whose agent process is `agent`, on this host.
pub fn sessions_of(store: &Store, agent: &Identity) -> Vec<SessionRecord> {
    let host = proc::host_name();
    store
        .sessions
        .all()
        .into_iter()
        .filter(|record| {
            record
                .agent_identity
                .as_ref()
                .is_some_and(|recorded| recorded.is_same_process(agent))
        })
        .filter(|record| !is_other_host(&record.host, &host))
        .collect()
}

/// Once `agent` is gone: files tickets for the leftovers of each of its sessions not yet dealt with, and marks them
/// dealt with. Returns the tickets to run.
pub fn stop_leftovers_of(store: &Store, agent: &Identity, dry_run: bool) -> Vec<StopTicket> {
    let pending: Vec<SessionRecord> = sessions_of(store, agent)
        .into_iter()
        .filter(|record| SessionFacts::of(record).done_at.is_none())
        .collect();
    let found = discover(store, &pending);
    let tickets = act_on(store, &found, dry_run);
    if !dry_run {
        for record in &pending {
            mark_done(store, &record.session_id);
        }
    }
    tickets
}

fn mark_done(store: &Store, session: &str) {
    let Ok(id) = SessionId::parse(session) else {
        return;
    };
    let now = clock::now_rfc3339();
    let _ = store.sessions.update(
        &id,
        Deadline::after(Duration::from_millis(500)),
        |current| {
            Ok(current.cloned().map(|mut record| {
                let mut facts = SessionFacts::of(&record);
                facts.done_at = Some(now);
                facts.store_in(&mut record);
                record
            }))
        },
    );
}

/// Agent processes of this host's sessions that are gone, whose leftovers nothing has dealt with yet and whose
/// sentinel is not at work on them: the sweep's share.
pub fn agents_gone_unattended(store: &Store, sessions: &[SessionRecord]) -> Vec<Identity> {
    let host = proc::host_name();
    let mut agents: Vec<Identity> = sessions
        .iter()
        .filter(|record| !is_other_host(&record.host, &host))
        .filter(|record| SessionFacts::of(record).done_at.is_none())
        .filter_map(|record| record.agent_identity.clone())
        .filter(|agent| agent.boot_id == proc::boot_id() && !proc::is_alive(agent))
        .filter(|agent| !crate::sentinel::is_running(store, agent))
        .collect();
    agents.sort_by_key(|agent| (agent.pid, agent.start_ticks));
    agents.dedup();
    agents
}

/// What `SessionStart` records for discovery, in the same write as the rest of the session record: the policy,
/// the agent's group when it leads one, and its descendants when it names no session.
pub fn note_start(record: &mut SessionRecord, policy: Policy, sentinel: bool) {
    let mut facts = SessionFacts::of(record);
    facts.policy = policy;
    facts.sentinel = sentinel;
    facts.done_at = None;
    if let Some(agent) = record.agent_identity.as_ref() {
        facts.agent_pgid = proc::stat(agent.pid)
            .ok()
            .filter(|stat| stat.pgid == agent.pid && stat.start_ticks == agent.start_ticks)
            .map(|stat| stat.pgid);
        if !names_sessions(&record.agent) {
            remember_descendants(&mut facts, agent);
        }
    }
    facts.store_in(record);
}

/// For an agent that names no session, adds the agent's descendants seen now to its session's record.
pub fn record_descendants(store: &Store, session: &SessionId) -> anyhow::Result<()> {
    let Some(record) = store.sessions.get(session)? else {
        return Ok(());
    };
    let Some(agent) = record.agent_identity.as_ref() else {
        return Ok(());
    };
    if names_sessions(&record.agent) || record.is_ended() {
        return Ok(());
    }
    let mut facts = SessionFacts::of(&record);
    let before = facts.descendants.len();
    remember_descendants(&mut facts, agent);
    if facts.descendants.len() != before {
        write_facts(store, session, &facts)?;
    }
    Ok(())
}

/// How many descendants a record remembers at most.
const MAX_DESCENDANTS: usize = 512;

fn remember_descendants(facts: &mut SessionFacts, agent: &Identity) {
    // The process tree only (stat and argv): no environment is needed to know who is below the agent.
    let table = Table::observe(u64::MAX);
    if !table.is_live(agent) {
        return;
    }
    let hook_chain = proc::self_and_ancestors();
    // Forget those that are gone; add those seen now (never this hook and its shell).
    facts.descendants.retain(|seen| table.is_live(seen));
    for p in table.descendants_of(agent.pid) {
        let pid = p.identity.pid;
        if pid == agent.pid
            || hook_chain.contains(&pid)
            || facts.descendants.len() >= MAX_DESCENDANTS
        {
            continue;
        }
        if let Some(identity) = proc::identity_of(pid).filter(|identity| {
            identity.uid == agent.uid
                && identity.start_ticks == p.identity.start_ticks
                && !facts.descendants.contains(identity)
        }) {
            facts.descendants.push(identity);
        }
    }
}

fn write_facts(store: &Store, session: &SessionId, facts: &SessionFacts) -> anyhow::Result<()> {
    store
        .sessions
        .update(
            session,
            Deadline::after(Duration::from_millis(300)),
            |current| {
                Ok(current.cloned().map(|mut record| {
                    facts.store_in(&mut record);
                    record
                }))
            },
        )
        .map(drop)
}

/// The agent process named by the hook's own environment (`CLAUDE_PID`), if it is one of the hook's ancestors.
pub fn agent_named_by_env() -> Option<Identity> {
    let me = i32::try_from(std::process::id()).ok()?;
    let ancestors: Vec<i32> = proc::ancestors(me).iter().map(|stat| stat.pid).collect();
    crate::agents::agent_pid_variables().find_map(|variable| {
        let pid: i32 = std::env::var(variable).ok()?.parse().ok()?;
        ancestors
            .contains(&pid)
            .then(|| proc::identity_of(pid))
            .flatten()
    })
}

/// True when a `SessionEnd` of this agent reason leaves the agent running on (a new session follows).
pub fn agent_continues(reason: Option<&str>) -> bool {
    matches!(reason, Some("clear" | "compact" | "resume"))
}

// ---- keep marks ----

fn kept_path(store: &Store, identity: &Identity) -> PathBuf {
    store.root.join(KEPT).join(StopTicket::file_name(identity))
}

/// Marks `identity` as kept: no leftover discovery ever picks it (or its descendants).
pub fn mark_kept(store: &Store, identity: &Identity) -> anyhow::Result<()> {
    store.root.ensure_dir(&store.root.join(KEPT))?;
    store.root.write_atomic(
        &kept_path(store, identity),
        &crate::model::record::to_bytes(identity),
    )
}

/// Every `keep --pid` mark of this boot.
pub fn kept_marks(store: &Store) -> Vec<Identity> {
    let Ok(entries) = std::fs::read_dir(store.root.join(KEPT)) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| store.root.read_file(&entry.path()).ok().flatten())
        .filter_map(|bytes| serde_json::from_slice::<Identity>(&bytes).ok())
        .filter(|identity| identity.boot_id == proc::boot_id())
        .collect()
}

/// Removes the marks of processes that are gone.
pub fn prune_kept(store: &Store) {
    for identity in kept_marks(store) {
        if !proc::is_alive(&identity) {
            let _ = std::fs::remove_file(kept_path(store, &identity));
        }
    }
}

// ---- visibility ----

/// A live session's leftovers-to-be, its agent's MCP servers and its sentinel, as `status` shows them.
#[derive(Clone, Debug, Serialize)]
pub struct SessionView {
    pub session: String,
    pub agent_pid: i32,
    pub policy: Policy,
    pub sentinel: bool,
    /// The sentinel's pid, when one watches the agent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sentinel_pid: Option<i32>,
    pub leftovers: Vec<Leftover>,
    /// The stdio MCP servers the live agent process runs (`mcp`).
    pub mcp_servers: Vec<crate::mcp::McpServer>,
}

/// For each live session: what would be stopped if its agent went now, and the MCP servers its agent runs — from
/// one observation of the process table.
pub fn status_view(store: &Store, live: &[SessionRecord]) -> Vec<SessionView> {
    let table = observed_since(live).map(Table::observe).unwrap_or_default();
    let found = discover_in(store, &table, live);
    live.iter()
        .map(|record| {
            let agent = record.agent_identity.as_ref();
            let sentinel = agent.is_some_and(|agent| crate::sentinel::is_running(store, agent));
            let spec = Agent::from_name(&record.agent).map(Agent::spec);
            SessionView {
                session: record.session_id.clone(),
                agent_pid: agent.map_or(0, |agent| agent.pid),
                policy: SessionFacts::of(record).policy,
                sentinel,
                sentinel_pid: agent
                    .filter(|_| sentinel)
                    .and_then(|agent| crate::sentinel::pid_of(store, agent)),
                leftovers: found
                    .iter()
                    .find(|found| found.session == record.session_id)
                    .map(|found| found.leftovers.clone())
                    .unwrap_or_default(),
                mcp_servers: agent.map_or_else(Vec::new, |agent| {
                    crate::mcp::servers_of(&table, agent, spec, &crate::mcp::speaks_stdio)
                }),
            }
        })
        .collect()
}

/// One line per leftover: pid, memory, how it was found, argv.
pub fn print_leftover(prefix: &str, leftover: &Leftover) {
    println!(
        "{prefix} pid {:>7}  {:>8}  {}  {}",
        leftover.pid,
        format_kib(leftover.rss_kib),
        leftover.via,
        leftover.argv.join(" ")
    );
}

/// Memory as people read it.
pub fn format_kib(kib: u64) -> String {
    #[allow(clippy::cast_precision_loss)]
    let mib = kib as f64 / 1024.0;
    if kib >= 1024 * 1024 {
        format!("{:.1} GiB", mib / 1024.0)
    } else if kib >= 1024 {
        format!("{mib:.1} MiB")
    } else {
        format!("{kib} KiB")
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    const SESSION: &str = "s-1";

    pub(crate) fn identity(pid: i32, start_ticks: u64) -> Identity {
        Identity {
            boot_id: "boot".into(),
            pid_ns: None,
            pid,
            start_ticks,
            uid: 1000,
        }
    }

    /// A process of ours, read in full.
    pub(crate) fn process(pid: i32, parent: i32, start: u64, argv: &str) -> Observed {
        Observed {
            identity: identity(pid, start),
            ppid: parent,
            pgid: pid,
            comm: argv.split(' ').next().unwrap_or_default().to_owned(),
            argv: argv.split(' ').map(str::to_owned).collect(),
            detailed: true,
            rss_kib: 100,
            ..Observed::default()
        }
    }

    /// A process of ours naming the session through Claude Code's variable.
    fn claude_carrier(pid: i32, parent: i32, start: u64, argv: &str) -> Observed {
        carrying(
            process(pid, parent, start, argv),
            "CLAUDE_CODE_SESSION_ID",
            SESSION,
        )
    }

    fn carrying(mut p: Observed, variable: &'static str, session: &str) -> Observed {
        p.sessions.push((variable, session.to_owned()));
        p
    }

    struct World {
        table: Table,
        agent: Identity,
        facts: SessionFacts,
        recorded: Vec<Identity>,
        protected: HashSet<i32>,
        kept: Vec<Identity>,
        names_sessions: bool,
    }

    impl World {
        fn new(procs: Vec<Observed>) -> Self {
            World {
                table: Table::from_processes(procs),
                agent: identity(100, 50),
                facts: SessionFacts::default(),
                recorded: vec![identity(100, 50)],
                protected: HashSet::new(),
                kept: Vec::new(),
                names_sessions: true,
            }
        }

        fn pids(&self) -> Vec<i32> {
            let query = Query {
                session: SESSION,
                agent: &self.agent,
                names_sessions: self.names_sessions,
                facts: &self.facts,
                recorded_agents: &self.recorded,
                protected: &self.protected,
                kept: &self.kept,
            };
            find(&self.table, &query)
                .into_iter()
                .map(|l| l.pid)
                .collect()
        }
    }

    fn init() -> Observed {
        process(1, 0, 1, "init")
    }

    #[test]
    fn carriers_reparented_to_init_are_leftovers_once_the_agent_is_gone() {
        let world = World::new(vec![
            init(),
            claude_carrier(200, 1, 60, "sleep 600"),
            carrying(
                process(201, 1, 61, "node mcp.js"),
                "QWEN_CODE_SESSION_ID",
                SESSION,
            ),
            carrying(
                process(202, 1, 62, "sleep 1"),
                "CLAUDE_CODE_SESSION_ID",
                "other",
            ),
        ]);
        assert_eq!(world.pids(), [200, 201]);
    }

    #[test]
    fn under_a_live_agent_is_not_a_leftover() {
        let mut world = World::new(vec![
            init(),
            process(100, 1, 50, "claude"),
            claude_carrier(200, 100, 60, "sleep 600"),
            claude_carrier(300, 1, 70, "setsid-job"),
        ]);
        assert_eq!(world.pids(), [300], "the agent's own child is its business");
        // Another recorded agent, alive, holding a carrier of our session (after /clear, its MCP server).
        world.table = Table::from_processes(vec![
            init(),
            process(400, 1, 55, "python3 agent.py"),
            claude_carrier(401, 400, 80, "mcp"),
        ]);
        world.recorded.push(identity(400, 55));
        assert!(world.pids().is_empty());
    }

    #[test]
    fn agent_workers_and_what_they_hold_are_never_leftovers() {
        let world = World::new(vec![
            init(),
            claude_carrier(200, 1, 60, "claude --bg-pty-host"),
            claude_carrier(201, 200, 61, "bash"),
            claude_carrier(202, 1, 62, "claude --bg-spare"),
        ]);
        assert!(world.pids().is_empty());
    }

    #[test]
    fn a_nested_agent_of_the_session_goes_with_its_children() {
        let world = World::new(vec![
            init(),
            claude_carrier(200, 1, 60, "claude -p x"),
            claude_carrier(201, 200, 61, "sleep 9"),
            // Someone else's claude: what is under it stays.
            process(300, 1, 40, "claude"),
            claude_carrier(301, 300, 70, "sleep 9"),
        ]);
        assert_eq!(world.pids(), [200, 201]);
    }

    #[test]
    fn brokers_kept_older_foreign_and_protected_processes_stay() {
        let mut broker = claude_carrier(200, 1, 60, "broker");
        broker.broker = true;
        let mut keep_env = claude_carrier(201, 1, 60, "keep");
        keep_env.keep = true;
        let older = claude_carrier(202, 1, 40, "old");
        let mut foreign = claude_carrier(203, 1, 60, "x");
        foreign.identity.uid = 0;
        let mut unread = claude_carrier(204, 1, 60, "y");
        unread.detailed = false;
        let marked = claude_carrier(205, 1, 60, "kept");
        let under_marked = claude_carrier(206, 205, 61, "child");
        let hook = claude_carrier(207, 1, 60, "hook");
        let mut world = World::new(vec![
            init(),
            broker,
            keep_env,
            older,
            foreign,
            unread,
            marked,
            under_marked,
            hook,
        ]);
        world.kept.push(identity(205, 60));
        world.protected.insert(207);
        assert!(world.pids().is_empty(), "{:?}", world.pids());
    }

    #[test]
    fn a_carrier_naming_another_live_agent_is_that_agents() {
        let mut p = claude_carrier(200, 1, 60, "sleep");
        p.agent_pid = Some(500);
        let mut world = World::new(vec![init(), p.clone(), process(500, 1, 55, "claude")]);
        assert!(world.pids().is_empty());
        // The pid it names is gone (or was reused later): ours.
        world.table = Table::from_processes(vec![init(), p, process(500, 1, 65, "other")]);
        assert_eq!(world.pids(), [200]);
    }

    #[test]
    fn agents_that_name_no_session_use_descendants_and_their_own_group() {
        let mut grouped = process(201, 1, 61, "sleep");
        grouped.pgid = 100;
        let mut world = World::new(vec![
            init(),
            process(200, 1, 60, "daemon"),
            grouped.clone(),
            process(202, 1, 62, "unrelated"),
        ]);
        world.names_sessions = false;
        world.facts.descendants.push(identity(200, 60));
        world.facts.agent_pgid = Some(100);
        assert_eq!(world.pids(), [200, 201]);
        // A group the agent did not lead stands for nothing.
        world.facts.agent_pgid = Some(99);
        assert_eq!(world.pids(), [200]);
        // While the agent lives its group members are its own.
        world.facts.agent_pgid = Some(100);
        world.table = Table::from_processes(vec![init(), process(100, 1, 50, "gemini"), grouped]);
        assert!(world.pids().is_empty());
    }

    #[test]
    fn facts_round_trip_through_the_record() {
        let mut record = SessionRecord::new("a", "h".into(), "2026-01-01T00:00:00Z");
        assert!(SessionFacts::of(&record).sentinel, "on by default");
        let facts = SessionFacts {
            policy: Policy::Report,
            sentinel: false,
            agent_pgid: Some(4),
            descendants: vec![identity(5, 6)],
            done_at: None,
        };
        facts.store_in(&mut record);
        assert_eq!(SessionFacts::of(&record), facts);
    }

    #[test]
    fn environment_is_read_for_carriers_keep_and_broker_marks() {
        let mut p = Observed::default();
        read_environ(
            &mut p,
            b"A=1\0CLAUDE_CODE_SESSION_ID=s\0CLAUDE_PID=42\0SESSION_REAPER_KEEP=1\0SESSION_REAPER_BROKER=/w/d\0",
        );
        assert_eq!(p.sessions, [("CLAUDE_CODE_SESSION_ID", "s".to_owned())]);
        assert_eq!(p.agent_pid, Some(42));
        assert!(p.keep && p.broker);
        assert_eq!(rss_kib_of("1000 512 100 1 0 200 0"), 512 * 4096 / 1024);
    }

    #[test]
    fn clear_compact_and_resume_leave_the_agent_running() {
        for reason in ["clear", "compact", "resume"] {
            assert!(agent_continues(Some(reason)));
        }
        for reason in [
            None,
            Some("other"),
            Some("prompt_input_exit"),
            Some("logout"),
        ] {
            assert!(!agent_continues(reason));
        }
    }
}
