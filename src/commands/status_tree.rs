//! `status` for people: a tree — session → its brokers → their members and leftovers — with agent liveness, RSS
//! per process and per session, what the next sweep would do and a legend for every state word. `observe` reads
//! the processes and asks the sweep's own decisions in dry-run mode; `build` turns a snapshot and those facts into
//! a `StatusTree`; `render` prints the tree and nothing else, so a test renders a fixture world with fixed ids,
//! pids and times.

use std::collections::{BTreeSet, HashMap};
use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

use crate::act::executor::{self, Mode};
use crate::adapters::codex_plugin::BrokerStatus;
use crate::commands::status::{Member, SlotStatus, Snapshot, TicketStatus};
use crate::commands::term::paint;
use crate::decide::{self, SlotChange, SweepPolicy};
use crate::model::clock;
use crate::model::record::SessionRecord;
use crate::observe::proc;
use crate::store::Store;
use crate::store::slot::{LOCK_WAIT, Slot};

/// The whole picture, every value already in the words and numbers people read.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StatusTree {
    pub state_dir: String,
    pub sessions: Vec<SessionNode>,
    /// Brokers none of whose owners is a live session (owned by ended or unknown sessions, or by nobody).
    pub unowned: Vec<BrokerNode>,
    pub stopping: Vec<StopNode>,
    /// What `--leftovers report` left running, still running, with the session it was reported for.
    pub reported: Vec<(ProcessNode, String)>,
    /// `(what, why)` of every record that could not be read.
    pub unreadable: Vec<(String, String)>,
    pub finisher_running: bool,
    /// The idle TTL the next sweep is judged with.
    pub sweep_idle_ttl: String,
}

/// One live session (its record is not ended).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SessionNode {
    pub id: String,
    pub agent: String,
    pub agent_pid: Option<i32>,
    pub agent_state: AgentState,
    pub agent_rss_kib: Option<u64>,
    pub cwd: String,
    pub started: String,
    pub brokers: Vec<BrokerNode>,
    /// Processes of the session that will outlive it (filled by the leftovers discovery when it reports them).
    pub leftovers: Vec<ProcessNode>,
    /// The stdio MCP servers its live agent process runs.
    pub mcp_servers: Vec<McpNode>,
    /// The session's sentinel and leftovers policy, in words (absent when leftover discovery said nothing of it).
    pub sentinel: Option<String>,
    /// What the next sweep does to the session, if anything.
    pub next_sweep: Option<String>,
}

/// Whether a session's agent process still runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AgentState {
    Live,
    /// The recorded agent process is gone (SIGKILL, OOM, a crash): the next sweep ends the session.
    Gone,
    /// No agent process was recorded (a hook run by hand): the session ends only by `SessionEnd` or `reap`.
    #[default]
    Unknown,
    /// Named only by `broker` commands run by hand (no hook ever saw it, no agent): not a live agent session; it
    /// ends with `reap --session ID`.
    ByHand,
}

impl AgentState {
    fn word(self) -> &'static str {
        match self {
            AgentState::Live => "live",
            AgentState::Gone => "gone",
            AgentState::Unknown => "unknown",
            AgentState::ByHand => "by hand",
        }
    }
}

/// One broker, ours or the Codex plugin's.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BrokerNode {
    pub pid: i32,
    /// `live` or `STALE`.
    pub state: &'static str,
    /// `broker`, or `codex broker` for the Codex plugin's.
    pub kind: &'static str,
    pub place: String,
    pub command: String,
    pub owners: Vec<String>,
    pub rss_kib: Option<u64>,
    pub idle: Option<String>,
    /// The processes of its tree besides the leader (lineage).
    pub members: Vec<ProcessNode>,
    pub next_sweep: Option<String>,
}

/// A process below a broker or a session.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ProcessNode {
    pub pid: i32,
    pub argv: String,
    pub rss_kib: Option<u64>,
    /// A state word (`live`, `leftover`, `STUCK`) when there is more to say than that it runs.
    pub state: Option<&'static str>,
}

/// A stdio MCP server of a session's agent, with what runs below it (an `npx` wrapper's server).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct McpNode {
    /// The server; its memory is that of the server and of every process below it.
    pub process: ProcessNode,
    /// How many processes that memory counts.
    pub processes: usize,
}

/// A pending stop ticket.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StopNode {
    pub pid: i32,
    /// `stopping`, `STUCK` or `gone`.
    pub state: &'static str,
    pub reason: String,
    pub attempts: u32,
    pub since: String,
    pub place: String,
    /// Members still running although the stop went on without them (left behind by a gone leader).
    pub left: Vec<ProcessNode>,
}

/// What the processes and the sweep's decisions say, observed once for `build`.
#[derive(Clone, Debug, Default)]
pub struct Facts {
    pub now: Option<SystemTime>,
    /// Resident memory by pid.
    pub rss_kib: HashMap<i32, u64>,
    /// Agent liveness by session id (sessions with no recorded agent are absent).
    pub agent_alive: HashMap<String, bool>,
    /// The next sweep's change, in words, by slot label.
    pub next_sweep: HashMap<String, String>,
}

/// The idle TTL a sweep runs with unless cron passes another (`sweep --idle-ttl`'s default).
pub(crate) const DEFAULT_SWEEP_TTL: Duration = Duration::from_secs(30 * 60);

/// Reads what `build` needs beyond the snapshot: liveness, RSS, and each slot's change as the sweep would decide
/// it (the sweep's own decision, through the executor in dry-run mode: nothing is locked or written).
pub(crate) fn observe(store: &Store, snapshot: &Snapshot) -> Facts {
    let mut facts = Facts {
        now: Some(SystemTime::now()),
        ..Facts::default()
    };
    for session in &snapshot.sessions {
        if let Some(identity) = &session.agent_identity {
            facts
                .agent_alive
                .insert(session.session_id.clone(), proc::is_alive(identity));
            note_rss(&mut facts, identity.pid);
        }
    }
    for slot in &snapshot.slots {
        note_rss(&mut facts, slot.record.identity.pid);
    }
    for broker in &snapshot.codex_plugin {
        if let Some(pid) = broker.pid {
            note_rss(&mut facts, pid);
        }
    }
    let sessions = store.sessions.all();
    let policy = SweepPolicy {
        now: SystemTime::now(),
        boot_now_ms: crate::model::clock::boot_millis(),
        default_ttl: DEFAULT_SWEEP_TTL,
        retention: Duration::from_secs(7 * 86_400),
    };
    // The sweep ends sessions whose agent is gone before it judges the slots: their owners count as ended.
    let ended = |session: &str| {
        sessions.iter().any(|record| {
            record.session_id == session
                && (record.is_ended() || facts.agent_alive.get(session) == Some(&false))
        })
    };
    let host = proc::host_name();
    let liveness = proc::Liveness::default();
    let mut next = HashMap::new();
    for slot in Slot::all(&store.root) {
        let label = slot.label();
        let decided = executor::update_slot(
            store,
            &slot,
            crate::model::deadline::Deadline::after(LOCK_WAIT),
            Mode::DryRun,
            |view| {
                let facts =
                    crate::commands::sweep::observe_facts(view, &sessions, &liveness, &host);
                decide::slot::sweep(view, facts, ended, &policy, (&proc::host(), &label))
            },
        );
        if let Some(words) = decided.ok().as_ref().and_then(change_in_words) {
            next.insert(label, words);
        }
    }
    facts.next_sweep = next;
    facts
}

fn note_rss(facts: &mut Facts, pid: i32) {
    if let Some(kib) = rss_kib(pid) {
        facts.rss_kib.insert(pid, kib);
    }
}

/// Resident memory of a process, from `/proc/<pid>/status` (`None` elsewhere or when it is gone).
fn rss_kib(pid: i32) -> Option<u64> {
    let status = proc::read_proc_text(pid, "status").ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
}

/// A sweep's change as people read it; `None` when it would keep the slot as it is.
fn change_in_words(change: &SlotChange) -> Option<String> {
    match change {
        SlotChange::Keep | SlotChange::RemoveEmpty { .. } => None,
        SlotChange::LeaveAlone { why } => Some(format!("leave alone ({why})")),
        SlotChange::Write { owners, .. } => {
            Some(format!("drop ended owners {}", owners.removed.join(", ")))
        }
        SlotChange::HandOff { reason, .. } => Some(format!("stop ({reason})")),
        SlotChange::Prune { reason, .. } => Some(format!("prune the record ({reason})")),
        SlotChange::MoveAside { .. } => Some("move the corrupt record aside".to_owned()),
    }
}

/// The tree of `snapshot`, with `facts` for liveness, memory and the next sweep.
pub fn build(snapshot: &Snapshot, facts: &Facts) -> StatusTree {
    let now = facts.now.unwrap_or_else(SystemTime::now);
    let ago = |stamp: &str| clock::age(stamp, now).map(clock::rounded);
    let mut brokers: Vec<BrokerNode> = snapshot
        .slots
        .iter()
        .map(|slot| broker_node(slot, facts, &ago))
        .chain(
            snapshot
                .codex_plugin
                .iter()
                .map(|broker| plugin_node(broker, facts)),
        )
        .collect();
    let live: BTreeSet<&str> = snapshot
        .sessions
        .iter()
        .map(|session| session.session_id.as_str())
        .collect();
    let sessions = snapshot
        .sessions
        .iter()
        .map(|session| {
            let mut node = session_node(session, facts, &ago);
            if let Some(view) = snapshot
                .leftovers
                .iter()
                .find(|view| view.session == session.session_id)
            {
                add_leftovers_view(&mut node, view);
            }
            node.brokers = brokers
                .iter()
                .filter(|broker| broker.owners.contains(&node.id))
                .cloned()
                .collect();
            node
        })
        .collect();
    brokers.retain(|broker| {
        !broker
            .owners
            .iter()
            .any(|owner| live.contains(owner.as_str()))
    });
    StatusTree {
        state_dir: snapshot.state_dir.clone(),
        sessions,
        unowned: brokers,
        stopping: snapshot
            .tickets
            .iter()
            .map(|ticket| stop_node(ticket, &ago))
            .collect(),
        reported: snapshot
            .reported_leftovers
            .iter()
            .map(|leftover| {
                let node = ProcessNode {
                    pid: leftover.pid,
                    argv: leftover.argv.join(" "),
                    rss_kib: leftover.rss_kib,
                    state: Some("reported"),
                };
                let when = ago(&leftover.reported_at).unwrap_or_default();
                let session = leftover.session.as_deref().unwrap_or("-");
                (node, format!("session {session}, reported {when} ago"))
            })
            .collect(),
        unreadable: snapshot
            .unreadable
            .iter()
            .map(|unreadable| (unreadable.slot.clone(), unreadable.problem.clone()))
            .collect(),
        finisher_running: snapshot.finisher_running,
        sweep_idle_ttl: clock::rounded(DEFAULT_SWEEP_TTL),
    }
}

fn session_node(
    session: &SessionRecord,
    facts: &Facts,
    ago: &impl Fn(&str) -> Option<String>,
) -> SessionNode {
    let agent_state = match facts.agent_alive.get(&session.session_id) {
        Some(true) => AgentState::Live,
        Some(false) => AgentState::Gone,
        // No hook recorded an agent kind: the record was made by a broker command's owner index.
        None if session.agent.is_empty() => AgentState::ByHand,
        None => AgentState::Unknown,
    };
    let agent_pid = session.agent_identity.as_ref().map(|identity| identity.pid);
    SessionNode {
        id: session.session_id.clone(),
        agent: session.agent.clone(),
        agent_pid,
        agent_state,
        agent_rss_kib: agent_pid
            .filter(|_| agent_state == AgentState::Live)
            .and_then(|pid| facts.rss_kib.get(&pid).copied()),
        cwd: session.cwd.clone(),
        started: ago(&session.started_at).unwrap_or_default(),
        next_sweep: (agent_state == AgentState::Gone)
            .then(|| "end the session (owners_gone)".to_owned()),
        ..SessionNode::default()
    }
}

/// What leftover discovery says of a session: its leftovers-to-be, its agent's MCP servers, its sentinel.
fn add_leftovers_view(node: &mut SessionNode, view: &crate::commands::leftovers::SessionView) {
    let row = |pid: i32, argv: &[String], rss_kib: u64| ProcessNode {
        pid,
        argv: argv.join(" "),
        rss_kib: Some(rss_kib),
        state: None,
    };
    node.leftovers = view
        .leftovers
        .iter()
        .map(|leftover| ProcessNode {
            state: Some("leftover"),
            ..row(leftover.pid, &leftover.argv, leftover.rss_kib)
        })
        .collect();
    node.mcp_servers = view
        .mcp_servers
        .iter()
        .map(|server| McpNode {
            process: row(server.pid, &server.argv, server.rss_kib),
            processes: server.processes,
        })
        .collect();
    let watching = match (view.sentinel, view.sentinel_pid) {
        (true, Some(pid)) => format!("pid {pid} (watching agent {})", view.agent_pid),
        (true, None) => format!("watching agent {}", view.agent_pid),
        (false, _) => "none".to_owned(),
    };
    let mut line = format!("{watching}; leftovers {}", view.policy.as_str());
    if !view.containment.mode.is_empty() {
        line.push_str("; ");
        line.push_str(&containment_words(&view.containment));
    }
    node.sentinel = Some(line);
}

/// A session's containment in a few words: `cgroup agent-1-2: 3 processes, 12.0 MiB` or `lineage (why)`.
fn containment_words(view: &crate::observe::cgroup::View) -> String {
    match &view.cgroup {
        Some(dir) => {
            let name = dir
                .file_name()
                .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
            #[allow(clippy::cast_precision_loss)]
            let mib = view
                .memory_bytes
                .map(|bytes| bytes as f64 / (1024.0 * 1024.0));
            let memory = mib.map_or_else(String::new, |mib| format!(", {mib:.1} MiB"));
            let count = view.processes.len();
            let noun = if count == 1 { "process" } else { "processes" };
            format!("cgroup {name}: {count} {noun}{memory}")
        }
        None => format!("{} ({})", view.mode, view.why.as_deref().unwrap_or("-")),
    }
}

fn broker_node(
    slot: &SlotStatus,
    facts: &Facts,
    ago: &impl Fn(&str) -> Option<String>,
) -> BrokerNode {
    let record = &slot.record;
    let pid = record.identity.pid;
    BrokerNode {
        pid,
        state: if slot.alive { "live" } else { "STALE" },
        kind: "broker",
        place: super::broker::place(&record.workspace, &record.name),
        command: record.command.join(" "),
        owners: record.owner_ids().into_iter().map(str::to_owned).collect(),
        rss_kib: slot
            .alive
            .then(|| facts.rss_kib.get(&pid).copied())
            .flatten(),
        idle: ago(&record.last_active),
        members: slot.members.iter().map(process_node).collect(),
        next_sweep: facts.next_sweep.get(&slot.slot).cloned(),
    }
}

fn process_node(member: &Member) -> ProcessNode {
    ProcessNode {
        pid: member.pid,
        argv: member.argv.join(" "),
        rss_kib: member.rss_kib,
        state: None,
    }
}

fn plugin_node(broker: &BrokerStatus, facts: &Facts) -> BrokerNode {
    let pid = broker.pid.unwrap_or_default();
    BrokerNode {
        pid,
        state: if broker.alive { "live" } else { "STALE" },
        kind: "codex broker",
        place: broker.workspace.clone(),
        command: broker.busy.as_ref().map_or_else(
            || "codex app-server".to_owned(),
            |why| format!("busy: {why}"),
        ),
        owners: broker.owners.clone(),
        rss_kib: broker
            .alive
            .then(|| facts.rss_kib.get(&pid).copied())
            .flatten(),
        idle: broker
            .idle_secs
            .map(|secs| clock::rounded(Duration::from_secs(secs))),
        members: Vec::new(),
        next_sweep: None,
    }
}

fn stop_node(ticket: &TicketStatus, ago: &impl Fn(&str) -> Option<String>) -> StopNode {
    let record = &ticket.ticket;
    StopNode {
        pid: record.identity.pid,
        state: if ticket.stuck {
            "STUCK"
        } else if ticket.alive {
            "stopping"
        } else {
            "gone"
        },
        reason: record.reason.clone(),
        attempts: record.attempts,
        since: ago(&record.requested_at).unwrap_or_default(),
        place: match (&record.workspace, &record.name) {
            (Some(workspace), Some(name)) => super::broker::place(workspace, name),
            _ => record.origin.clone(),
        },
        left: ticket.members_left.iter().map(process_node).collect(),
    }
}

/// Memory for people (`812 KiB`, `52.0 MiB`, `1.20 GiB`); `-` when unknown.
fn memory(kib: Option<u64>) -> String {
    #[allow(clippy::cast_precision_loss)]
    match kib {
        None => "-".to_owned(),
        Some(kib) if kib < 1024 => format!("{kib} KiB"),
        Some(kib) if kib < 1024 * 1024 => format!("{:.1} MiB", kib as f64 / 1024.0),
        Some(kib) => format!("{:.2} GiB", kib as f64 / (1024.0 * 1024.0)),
    }
}

/// What every state word means (only the words the picture uses are listed).
const LEGEND: [(&str, &str); 11] = [
    ("live", "the process runs with the identity recorded for it"),
    (
        "gone",
        "the agent process is gone (killed, crashed): the next sweep ends the session; a stop ticket whose process is gone is closed",
    ),
    (
        "unknown",
        "no agent process was recorded (a hook run by hand): only SessionEnd or `reap` ends the session",
    ),
    (
        "by hand",
        "a session named only by `broker` commands run by hand: no agent, not counted as live; `reap --session ID` ends it",
    ),
    (
        "STALE",
        "the recorded process no longer runs (exited, or its pid was reused): the next sweep prunes the record",
    ),
    (
        "stopping",
        "a stop is under way (SIGTERM sent, SIGKILL after the grace)",
    ),
    (
        "STUCK",
        "still running after 3 SIGKILLs (uninterruptible sleep?), or members left behind by a leader that is gone: needs a person; `doctor` says more",
    ),
    (
        "leftover",
        "a process of the session that will outlive it (see `keep` and `--leftovers`)",
    ),
    (
        "reported",
        "a leftover of a session whose agent is gone, left running by `--leftovers report`: yours to stop or `keep`",
    ),
    (
        "mcp server",
        "a stdio MCP server the live agent runs (its child on pipes, no tool's command); the agent's to stop, a leftover once the agent is gone",
    ),
    (
        "UNREADABLE",
        "a record that cannot be read (corrupt, or from a newer session-reaper): left as it is",
    ),
];

/// The tree as text; `color` paints the state words.
pub fn render(tree: &StatusTree, color: bool) -> String {
    let mut out = String::new();
    let mut used: BTreeSet<&str> = BTreeSet::new();
    let mut word = |word: &'static str, width: usize| {
        used.insert(word);
        paint(word, width, color)
    };
    let _ = writeln!(out, "state root {}", tree.state_dir);
    let by_hand = tree
        .sessions
        .iter()
        .filter(|session| session.agent_state == AgentState::ByHand)
        .count();
    let live = tree.sessions.len() - by_hand;
    match by_hand {
        0 => writeln!(out, "\nsessions ({live} live)"),
        _ => writeln!(out, "\nsessions ({live} live, {by_hand} by hand)"),
    }
    .unwrap_or_default();
    if tree.sessions.is_empty() {
        let _ = writeln!(out, "  none");
    }
    for session in &tree.sessions {
        render_session(&mut out, session, &mut word);
    }
    render_others(&mut out, tree, &mut word);
    let changes = tree
        .sessions
        .iter()
        .filter_map(|session| session.next_sweep.as_ref())
        .count()
        + all_brokers(tree)
            .filter(|broker| broker.next_sweep.is_some())
            .count();
    let _ = writeln!(
        out,
        "\nnext sweep (sweep --dry-run, idle TTL {}): {}",
        tree.sweep_idle_ttl,
        match changes {
            0 => "nothing to do".to_owned(),
            1 => "1 change, shown with its row".to_owned(),
            n => format!("{n} changes, shown with their rows"),
        }
    );
    let legend: Vec<_> = LEGEND
        .iter()
        .filter(|(name, _)| used.contains(name))
        .collect();
    if !legend.is_empty() {
        let _ = writeln!(out, "\nlegend");
    }
    for (name, meaning) in legend {
        let _ = writeln!(out, "  {}  {meaning}", paint(name, 10, color));
    }
    out
}

/// One live session: its line, its facts, then its brokers, its agent's MCP servers and its leftovers.
fn render_session(
    out: &mut String,
    session: &SessionNode,
    word: &mut impl FnMut(&'static str, usize) -> String,
) {
    let total = session_rss(session);
    let agent = session
        .agent_pid
        .map_or_else(|| "-".to_owned(), |pid| pid.to_string());
    let _ = writeln!(
        out,
        "{}  {}  agent {} {}  started {} ago  rss {}",
        session.id,
        session.agent,
        agent,
        word(session.agent_state.word(), 0).trim_end(),
        if session.started.is_empty() {
            "?"
        } else {
            &session.started
        },
        memory(total)
    );
    let _ = writeln!(out, "│ cwd {}", session.cwd);
    if let Some(next) = &session.next_sweep {
        let _ = writeln!(out, "│ next sweep: {next}");
    }
    if let Some(sentinel) = &session.sentinel {
        let _ = writeln!(out, "│ sentinel {sentinel}");
    }
    let rows = session.brokers.len() + session.mcp_servers.len() + session.leftovers.len();
    let mut row = 0;
    for broker in &session.brokers {
        row += 1;
        render_broker(out, broker, row == rows, Some(&session.id), word);
    }
    for server in &session.mcp_servers {
        row += 1;
        let (branch, _) = branches(row == rows);
        let below = match server.processes {
            0 | 1 => String::new(),
            n => format!(" ({n} processes)"),
        };
        let _ = writeln!(
            out,
            "{branch}{} {}  `{}`  rss {}{below}",
            word("mcp server", 0).trim_end(),
            server.process.pid,
            server.process.argv,
            memory(server.process.rss_kib)
        );
    }
    for leftover in &session.leftovers {
        row += 1;
        let (branch, _) = branches(row == rows);
        let state = word(leftover.state.unwrap_or("leftover"), 0);
        let _ = writeln!(
            out,
            "{branch}{} {}  {}  rss {}",
            state.trim_end(),
            leftover.pid,
            leftover.argv,
            memory(leftover.rss_kib)
        );
    }
    if rows == 0 {
        let _ = writeln!(out, "└─ no brokers");
    }
}

/// Brokers with no live owner, stop tickets and unreadable records.
fn render_others(
    out: &mut String,
    tree: &StatusTree,
    word: &mut impl FnMut(&'static str, usize) -> String,
) {
    if !tree.unowned.is_empty() {
        let _ = writeln!(out, "\nbrokers with no live owner");
        let rows = tree.unowned.len();
        for (index, broker) in tree.unowned.iter().enumerate() {
            render_broker(out, broker, index + 1 == rows, None, word);
        }
    }
    if !tree.stopping.is_empty() {
        let _ = writeln!(
            out,
            "\nstop tickets{}",
            if tree.finisher_running {
                " (a finisher is driving them)"
            } else {
                ""
            }
        );
        for stop in &tree.stopping {
            let kills = match (stop.attempts, stop.left.len()) {
                (0, 0) => String::new(),
                (0, left) => format!(", {left} members left behind"),
                (attempts, _) => format!(", {attempts} SIGKILLs"),
            };
            let _ = writeln!(
                out,
                "  {} pid {}  {} ({}{kills}, since {} ago)",
                word(stop.state, 0).trim_end(),
                stop.pid,
                stop.place,
                stop.reason,
                stop.since
            );
            for member in &stop.left {
                let _ = writeln!(
                    out,
                    "    left {}  `{}`  rss {}",
                    member.pid,
                    member.argv,
                    memory(member.rss_kib)
                );
            }
        }
    }
    if !tree.reported.is_empty() {
        let _ = writeln!(out, "\nleftovers left running (--leftovers report)");
        for (leftover, said) in &tree.reported {
            let _ = writeln!(
                out,
                "  {} {}  {}  rss {}  ({said})",
                word("reported", 0).trim_end(),
                leftover.pid,
                leftover.argv,
                memory(leftover.rss_kib)
            );
        }
    }
    if !tree.unreadable.is_empty() {
        let _ = writeln!(out, "\nunreadable records");
        for (what, why) in &tree.unreadable {
            let _ = writeln!(out, "  {} {what}: {why}", word("UNREADABLE", 0).trim_end());
        }
    }
}

/// Every broker in the tree once (a shared one is listed under each owner).
fn all_brokers(tree: &StatusTree) -> impl Iterator<Item = &BrokerNode> {
    let mut seen = BTreeSet::new();
    tree.sessions
        .iter()
        .flat_map(|session| session.brokers.iter())
        .chain(tree.unowned.iter())
        .filter(move |broker| seen.insert((broker.kind, broker.pid, broker.place.clone())))
}

/// A session's memory: its agent, its brokers (a shared one counts in each owner) and their members, its agent's MCP
/// servers, its leftovers.
fn session_rss(session: &SessionNode) -> Option<u64> {
    let parts = std::iter::once(session.agent_rss_kib)
        .chain(session.brokers.iter().flat_map(|broker| {
            std::iter::once(broker.rss_kib)
                .chain(broker.members.iter().map(|member| member.rss_kib))
        }))
        .chain(
            session
                .mcp_servers
                .iter()
                .map(|server| server.process.rss_kib),
        )
        .chain(session.leftovers.iter().map(|leftover| leftover.rss_kib));
    parts.flatten().reduce(|a, b| a + b)
}

/// The branch of a row and the prefix of its children.
fn branches(last: bool) -> (&'static str, &'static str) {
    if last {
        ("└─ ", "   ")
    } else {
        ("├─ ", "│  ")
    }
}

fn render_broker(
    out: &mut String,
    broker: &BrokerNode,
    last: bool,
    under: Option<&str>,
    word: &mut impl FnMut(&'static str, usize) -> String,
) {
    let (branch, indent) = branches(last);
    let others: Vec<&str> = broker
        .owners
        .iter()
        .map(String::as_str)
        .filter(|owner| Some(*owner) != under)
        .collect();
    let owners = match (under, others.is_empty()) {
        (Some(_), true) => "sole owner".to_owned(),
        (Some(_), false) => format!("shared with {}", others.join(", ")),
        (None, true) => "no owner".to_owned(),
        (None, false) => format!("owners {} (none live)", others.join(", ")),
    };
    let _ = writeln!(
        out,
        "{branch}{} {} {}  {}  `{}`  rss {}",
        broker.kind,
        broker.pid,
        word(broker.state, 0).trim_end(),
        broker.place,
        broker.command,
        memory(broker.rss_kib)
    );
    let idle = broker
        .idle
        .as_ref()
        .map_or_else(String::new, |idle| format!(", idle {idle}"));
    let _ = writeln!(out, "{indent}│ {owners}{idle}");
    if let Some(next) = &broker.next_sweep {
        let _ = writeln!(out, "{indent}│ next sweep: {next}");
    }
    let rows = broker.members.len();
    for (index, member) in broker.members.iter().enumerate() {
        let (member_branch, _) = branches(index + 1 == rows);
        let state = member
            .state
            .map(|state| format!(" {}", word(state, 0).trim_end()))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "{indent}{member_branch}member {}{state}  `{}`  rss {}",
            member.pid,
            member.argv,
            memory(member.rss_kib)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_is_rounded_for_people() {
        assert_eq!(memory(None), "-");
        assert_eq!(memory(Some(812)), "812 KiB");
        assert_eq!(memory(Some(53_248)), "52.0 MiB");
    }

    #[test]
    fn a_session_counts_its_agent_brokers_members_and_leftovers() {
        let session = SessionNode {
            agent_rss_kib: Some(100),
            brokers: vec![BrokerNode {
                rss_kib: Some(10),
                members: vec![ProcessNode {
                    rss_kib: Some(1),
                    ..ProcessNode::default()
                }],
                ..BrokerNode::default()
            }],
            leftovers: vec![ProcessNode {
                rss_kib: None,
                ..ProcessNode::default()
            }],
            ..SessionNode::default()
        };
        assert_eq!(session_rss(&session), Some(111));
    }
}
