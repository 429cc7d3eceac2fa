//! The process table leftover discovery reads: one pass over `/proc` with pinned identities (identity → environ,
//! argv → identity unchanged; environ only of our processes started after the agents of interest), or only the
//! part of it a decision looks at (a contained session's members and their ancestors; a leftover's tree).

use std::collections::{HashMap, HashSet};

use crate::model::leftover::KEEP_VARIABLE;

use crate::model::record::Identity;
use crate::observe::proc;
use crate::observe::world::ProcFile;

/// One process as observed.
#[derive(Clone, Debug, Default)]
pub(crate) struct Observed {
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
    pub(crate) fn is(&self, identity: &Identity) -> bool {
        self.identity.pid == identity.pid && self.identity.start_ticks == identity.start_ticks
    }

    /// One of an agent's own detached workers (Claude Code's `--bg-pty-host` background-shell helper, `--bg-spare`).
    pub(crate) fn is_agent_worker(&self) -> bool {
        self.argv
            .iter()
            .any(|arg| crate::model::marker::AGENT_WORKER_FLAGS.contains(&arg.as_str()))
    }

    /// An agent's executable (`proc::AGENT_PROGRAMS`, or a runtime running one): what is below a live one is still
    /// in that agent's hands.
    pub(crate) fn is_agent_executable(&self) -> bool {
        proc::is_agent_program(&self.argv)
            || crate::agents::AGENTS
                .iter()
                .any(|spec| spec.executables.contains(&self.comm.as_str()))
    }

    /// The server of a terminal multiplexer (tmux names its server `tmux: server`; screen's is `SCREEN`): whether
    /// it serves a live terminal is told by its clients, anywhere in the table.
    pub(crate) fn is_multiplexer_server(&self) -> bool {
        self.comm == "tmux: server" || self.comm == "SCREEN"
    }

    pub(crate) fn carries(&self, session: &str) -> Option<&'static str> {
        self.sessions
            .iter()
            .find(|(_, value)| value == session)
            .map(|(variable, _)| *variable)
    }
}

/// The process table at one moment.
#[derive(Clone, Debug, Default)]
pub(crate) struct Table {
    pub(crate) procs: HashMap<i32, Observed>,
}

impl Table {
    pub(crate) fn from_processes(procs: impl IntoIterator<Item = Observed>) -> Self {
        Table {
            procs: procs.into_iter().map(|p| (p.identity.pid, p)).collect(),
        }
    }

    /// Reads every process's stat; the environment and memory of our processes started at or after `since_ticks`;
    /// and the argv of those and of their ancestors (what the rules judge by argv: agent workers, agent executables
    /// above a carrier). A process whose identity changed while it was read is left out.
    pub(crate) fn observe(since_ticks: u64) -> Self {
        Table::observe_all_with(|stat| stat.start_ticks >= since_ticks)
    }

    /// Like `observe`, with the environment, memory and argv read only of `members` (a contained session's cgroup
    /// holds every candidate) and of their ancestors' argv. Of the rest, only what the rules look at besides the
    /// members is read (its stat): their ancestors and the agents they name. The whole table's stat is read only when
    /// a terminal multiplexer's server is among those (its clients, anywhere, say whether it serves a live
    /// terminal).
    pub(crate) fn observe_only(members: &HashSet<i32>) -> Self {
        let uid = rustix::process::getuid().as_raw();
        let wanted = |stat: &proc::ProcStat| members.contains(&stat.pid);
        let mut procs: HashMap<i32, Observed> = HashMap::new();
        let mut next: Vec<i32> = members.iter().copied().collect();
        while let Some(pid) = next.pop() {
            if pid <= 0 || procs.contains_key(&pid) {
                continue;
            }
            let Some(p) = observe_one(pid, wanted, uid) else {
                continue;
            };
            if p.is_multiplexer_server() {
                return Table::observe_all_with(wanted);
            }
            next.push(p.ppid);
            next.extend(p.agent_pid);
            procs.insert(pid, p);
        }
        let mut table = Table::from_processes(procs.into_values());
        table.read_argv();
        table
    }

    /// Every process's stat, and the details of those `wanted` says.
    fn observe_all_with(wanted: impl Fn(&proc::ProcStat) -> bool) -> Self {
        let uid = rustix::process::getuid().as_raw();
        let procs = proc::pids()
            .unwrap_or_default()
            .into_iter()
            .filter_map(|pid| observe_one(pid, &wanted, uid));
        let mut table = Table::from_processes(procs);
        table.read_argv();
        table
    }

    /// `roots` that are still the processes they name and their descendants (from each root down, the children
    /// every thread lists), detailed as `observe(since_ticks)` details them: the tree a stop walks, without reading
    /// the rest of the table. The full `observe` where the kernel lists no children, or where a terminal
    /// multiplexer's server is in the tree (its clients, anywhere, say whether it serves a live terminal).
    pub(crate) fn observe_below(roots: &[Identity], since_ticks: u64) -> Self {
        if !lists_children() {
            return Table::observe(since_ticks);
        }
        let uid = rustix::process::getuid().as_raw();
        let wanted = |stat: &proc::ProcStat| stat.start_ticks >= since_ticks;
        let mut procs: HashMap<i32, Observed> = HashMap::new();
        let mut frontier: Vec<i32> = Vec::new();
        for root in roots {
            if procs.contains_key(&root.pid) {
                continue;
            }
            if let Some(p) = observe_one(root.pid, wanted, uid)
                .filter(|p| p.identity.start_ticks == root.start_ticks)
            {
                frontier.push(root.pid);
                procs.insert(root.pid, p);
            }
        }
        while let Some(parent) = frontier.pop() {
            for child in children_of(parent) {
                if procs.contains_key(&child) {
                    continue;
                }
                // Still its child: a pid reused since the list was read is not in the tree.
                let Some(p) = observe_one(child, wanted, uid).filter(|p| p.ppid == parent) else {
                    continue;
                };
                if p.is_multiplexer_server() {
                    return Table::observe(since_ticks);
                }
                frontier.push(child);
                procs.insert(child, p);
            }
        }
        let mut table = Table::from_processes(procs.into_values());
        table.read_argv();
        table
    }

    /// Reads the argv of the ancestors of every detailed process (a detailed one's own was read with its details),
    /// pinned by start time: one whose pid was reused meanwhile leaves the table.
    fn read_argv(&mut self) {
        let mut wanted: HashSet<i32> = HashSet::new();
        for p in self.procs.values().filter(|p| p.detailed) {
            wanted.extend(self.ancestors(p.identity.pid).map(|a| a.identity.pid));
            // The agent it names (`CLAUDE_PID`): believed only if that is an agent, which its argv says.
            wanted.extend(p.agent_pid.filter(|pid| self.procs.contains_key(pid)));
        }
        // Terminal multiplexers' clients and servers: which socket each talks to is in its argv (DESIGN
        // "Belonging": a server with an attached client serves a live terminal).
        wanted.extend(
            self.procs
                .values()
                .filter(|p| p.comm.starts_with("tmux") || p.comm.eq_ignore_ascii_case("screen"))
                .map(|p| p.identity.pid),
        );
        wanted.retain(|pid| self.procs.get(pid).is_some_and(|p| !p.detailed));
        for pid in wanted {
            let Some(p) = self.procs.get_mut(&pid) else {
                continue;
            };
            let argv = proc::cmdline_of(pid, p.identity.start_ticks).unwrap_or_default();
            let again = proc::stat(pid).ok();
            if again.is_some_and(|again| {
                again.start_ticks == p.identity.start_ticks && again.state != 'Z'
            }) {
                p.argv = argv;
            } else {
                self.procs.remove(&pid);
            }
        }
    }

    pub(crate) fn get(&self, pid: i32) -> Option<&Observed> {
        self.procs.get(&pid)
    }

    pub(crate) fn is_live(&self, identity: &Identity) -> bool {
        self.get(identity.pid).is_some_and(|p| p.is(identity))
    }

    /// The ancestors of `pid`, nearest first.
    pub(crate) fn ancestors(&self, pid: i32) -> impl Iterator<Item = &Observed> {
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

    /// Each process's children, by the parent's pid: a tree walked from the top down visits each process once.
    pub(crate) fn children_index(&self) -> HashMap<i32, Vec<i32>> {
        let mut index: HashMap<i32, Vec<i32>> = HashMap::new();
        for p in self.procs.values() {
            index.entry(p.ppid).or_default().push(p.identity.pid);
        }
        index
    }

    /// The processes whose parent is `pid`.
    pub(crate) fn children_of(&self, pid: i32) -> impl Iterator<Item = &Observed> {
        self.procs.values().filter(move |p| p.ppid == pid)
    }

    /// `pid` and every live descendant of it.
    pub(crate) fn descendants_of(&self, pid: i32) -> Vec<&Observed> {
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

/// Whether the kernel lists each thread's children (`/proc/<pid>/task/<tid>/children`, `CONFIG_PROC_CHILDREN`).
fn lists_children() -> bool {
    static LISTS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *LISTS.get_or_init(|| std::path::Path::new("/proc/thread-self/children").exists())
}

/// The children of every thread of `pid` (`/proc/<pid>/task/<tid>/children`); empty once it is gone.
pub(crate) fn children_of(pid: i32) -> Vec<i32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .filter_map(Result::ok)
        .filter_map(|task| std::fs::read_to_string(task.path().join("children")).ok())
        .flat_map(|text| {
            text.split_whitespace()
                .filter_map(|pid| pid.parse().ok())
                .collect::<Vec<i32>>()
        })
        .collect()
}

fn observe_one(pid: i32, wanted: impl Fn(&proc::ProcStat) -> bool, uid: u32) -> Option<Observed> {
    let stat = proc::stat(pid).ok().filter(|stat| stat.state != 'Z')?;
    let detail = wanted(&stat);
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
    if detail
        && let Ok(meta) = std::fs::metadata(format!("/proc/{pid}"))
        && std::os::unix::fs::MetadataExt::uid(&meta) == uid
        && let Ok(environ) = proc::file_of(pid, stat.start_ticks, ProcFile::Environ)
    {
        read_environ(&mut observed, &environ);
        observed.identity.uid = uid;
        observed.rss_kib = proc::file_of(pid, stat.start_ticks, ProcFile::Statm)
            .map_or(0, |statm| rss_kib_of(&String::from_utf8_lossy(&statm)));
        observed.argv = proc::cmdline(pid).unwrap_or_default();
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
pub(crate) fn rss_kib_of(statm: &str) -> u64 {
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|pages| pages.parse().ok())
        .unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let page = u64::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
    pages * page / 1024
}

pub(crate) fn read_environ(observed: &mut Observed, environ: &[u8]) {
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
        } else if key == crate::model::marker::BROKER_MARKER {
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

/// The pids this process's environment names as its agent (`CLAUDE_PID` and the like): a claim, which the hook
/// believes only for a recognised agent among its ancestors.
pub(crate) fn agent_pids_named_by_env() -> Vec<i32> {
    crate::agents::agent_pid_variables()
        .filter_map(|variable| std::env::var(variable).ok()?.trim().parse().ok())
        .collect()
}
