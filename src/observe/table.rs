//! The process table leftover discovery reads: one pass over `/proc` with pinned identities (identity → argv,
//! environ → identity unchanged; environ only of our processes started after the agents of interest).

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
        let uid = rustix::process::getuid().as_raw();
        let procs = proc::pids()
            .unwrap_or_default()
            .into_iter()
            .filter_map(|pid| observe_one(pid, |stat| stat.start_ticks >= since_ticks, uid));
        let mut table = Table::from_processes(procs);
        table.read_argv();
        table
    }

    /// Like `observe`, with the environment, memory and argv read only of `members` (a contained session's cgroup
    /// holds every candidate) and of their ancestors' argv: the rest of the table is its stat alone.
    pub(crate) fn observe_only(members: &HashSet<i32>) -> Self {
        let uid = rustix::process::getuid().as_raw();
        let procs = proc::pids()
            .unwrap_or_default()
            .into_iter()
            .filter_map(|pid| observe_one(pid, |stat| members.contains(&stat.pid), uid));
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
