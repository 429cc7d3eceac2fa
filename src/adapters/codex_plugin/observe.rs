//! What the plugin's files and processes say: every `<root>/<slug>-<hash16>/broker.json` and `state.json`, and every
//! process of ours running `app-server-broker.mjs serve --endpoint …` — read between two identity reads (pinned
//! observation), argv and environment only for those candidates. Nothing is written or signalled here.

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde_json::Value;

use super::Root;
use super::decide::{
    self, ArgvFacts, Facts, JobFacts, OwnerState, ProcessCheck, SessionFacts, flag_value,
};
use crate::model::deadline::Deadline;
use crate::model::record::{Identity, SessionRecord};
use crate::observe::proc::{self, ProcStat};

/// The largest plugin file we read (its `state.json` keeps at most 50 jobs).
const MAX_FILE: u64 = 1024 * 1024;

/// One `broker.json`, as far as it could be read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BrokerFile {
    pub path: PathBuf,
    pub pid: Option<i32>,
    pub endpoint: Option<String>,
    pub pid_file: Option<String>,
    pub log_file: Option<String>,
    pub session_dir: Option<String>,
    /// `sessionIds`, else `[sessionId]` (codex-plugin-cc pull request #381), else empty.
    pub sessions: Vec<String>,
}

impl BrokerFile {
    pub fn parse(path: PathBuf, bytes: &[u8]) -> Option<Self> {
        let value: Value = serde_json::from_slice(bytes).ok()?;
        let object = value.as_object()?;
        let text = |key: &str| {
            object
                .get(key)
                .and_then(Value::as_str)
                .filter(|text| !text.is_empty())
                .map(str::to_owned)
        };
        let mut sessions: Vec<String> = object
            .get("sessionIds")
            .and_then(Value::as_array)
            .map(|ids| {
                ids.iter()
                    .filter_map(Value::as_str)
                    .filter(|id| !id.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        if sessions.is_empty() {
            sessions.extend(text("sessionId"));
        }
        Some(BrokerFile {
            pid: object
                .get("pid")
                .and_then(Value::as_i64)
                .and_then(|pid| i32::try_from(pid).ok()),
            endpoint: text("endpoint"),
            pid_file: text("pidFile"),
            log_file: text("logFile"),
            session_dir: text("sessionDir"),
            sessions,
            path,
        })
    }
}

/// A process of ours seen between two identity reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Seen {
    pub identity: Identity,
    pub stat: ProcStat,
    pub argv: Vec<String>,
    /// `CODEX_COMPANION_SESSION_ID`, else `CLAUDE_CODE_SESSION_ID`, of its environment.
    pub session: Option<String>,
    /// `CLAUDE_PID` of its environment: the agent that spawned it.
    pub agent_pid: Option<i32>,
    /// The plugin state root its environment implies.
    pub root: PathBuf,
    /// Its parent is not the plugin's spawner (`codex-companion.mjs`): init or a subreaper took it.
    pub reparented: bool,
}

impl Seen {
    fn flag(&self, flag: &str) -> Option<&str> {
        flag_value(&self.argv, flag)
    }
}

/// One plugin broker: named by a `broker.json`, found by process, or both.
#[derive(Clone, Debug)]
pub(crate) struct Broker {
    /// `<root>/<slug>-<hash16>`: its workspace's plugin state.
    pub state_dir: Option<PathBuf>,
    pub file: Option<BrokerFile>,
    pub check: ProcessCheck,
    /// The verified broker process (none unless `check` is `Verified`).
    pub process: Option<Seen>,
    pub owners: Vec<(String, OwnerState)>,
    pub jobs: Vec<JobFacts>,
    pub idle_for: Option<Duration>,
    pub age: Duration,
}

impl Broker {
    /// The facts a verdict is made on; `ending` is the session ending, whose jobs do not hold the broker.
    pub(crate) fn facts(&self, ending: Option<&str>) -> Facts<'_> {
        Facts {
            listed: self.file.is_some(),
            check: self.check,
            owners: &self.owners,
            busy: decide::busy(&self.jobs, ending),
            idle_for: self.idle_for,
            age: self.age,
            reparented: self.process.as_ref().is_some_and(|seen| seen.reparented),
        }
    }

    pub(crate) fn pid(&self) -> Option<i32> {
        self.process
            .as_ref()
            .map(|seen| seen.identity.pid)
            .or_else(|| self.file.as_ref().and_then(|file| file.pid))
    }

    pub(crate) fn endpoint(&self) -> Option<String> {
        self.file
            .as_ref()
            .and_then(|file| file.endpoint.clone())
            .or_else(|| {
                self.process
                    .as_ref()
                    .and_then(|seen| seen.flag("--endpoint").map(str::to_owned))
            })
    }

    /// The broker's workspace: its `--cwd`, else its state dir's name.
    pub(crate) fn workspace(&self) -> String {
        self.process
            .as_ref()
            .and_then(|seen| seen.flag("--cwd").map(str::to_owned))
            .or_else(|| {
                self.state_dir
                    .as_ref()
                    .and_then(|dir| dir.file_name())
                    .map(|name| name.to_string_lossy().into_owned())
            })
            .unwrap_or_default()
    }

    /// The pid file, socket, log and session dir the plugin made for this broker.
    pub(crate) fn files(&self) -> super::act::Cleanup {
        let from_argv = |flag: &str| {
            self.process
                .as_ref()
                .and_then(|seen| seen.flag(flag).map(str::to_owned))
        };
        let file = self.file.as_ref();
        let endpoint = self.endpoint();
        let pid_file = file
            .and_then(|file| file.pid_file.clone())
            .or_else(|| from_argv("--pid-file"));
        let session_dir = file.and_then(|file| file.session_dir.clone()).or_else(|| {
            pid_file
                .as_deref()
                .and_then(|pid_file| Path::new(pid_file).parent())
                .map(|dir| dir.to_string_lossy().into_owned())
        });
        let log_file = file.and_then(|file| file.log_file.clone()).or_else(|| {
            session_dir
                .as_deref()
                .map(|dir| format!("{dir}/broker.log"))
        });
        super::act::Cleanup {
            broker_json: file.map(|file| file.path.clone()),
            pid: self.pid().unwrap_or_default(),
            pid_file: pid_file.map(PathBuf::from),
            socket: endpoint
                .as_deref()
                .and_then(decide::socket_path)
                .map(PathBuf::from),
            log_file: log_file.map(PathBuf::from),
            session_dir: session_dir.map(PathBuf::from),
        }
    }
}

/// Everything observed in one pass.
#[derive(Clone, Debug, Default)]
pub(crate) struct World {
    pub brokers: Vec<Broker>,
    /// Socket paths of every live broker process of ours: never removed when cleaning a dead record.
    pub live_sockets: HashSet<PathBuf>,
}

/// One pass over `roots` and the process table.
/// The process table is scanned no later than `deadline` (a session's end passes its own).
pub(crate) fn observe(
    roots: &[Root],
    sessions: &[SessionRecord],
    uid: u32,
    deadline: Deadline,
) -> World {
    let candidates: Vec<Seen> = proc::scan_cmdlines(deadline)
        .into_iter()
        .filter(|(_, argv)| decide::runs_broker(argv))
        .filter_map(|(pid, _)| pinned(pid))
        .filter(|seen| seen.identity.uid == uid)
        .collect();
    let live_sockets: HashSet<PathBuf> = candidates
        .iter()
        .filter_map(|seen| seen.flag("--endpoint").and_then(decide::socket_path))
        .map(PathBuf::from)
        .collect();
    let mut brokers = Vec::new();
    let mut named_endpoints: HashSet<String> = HashSet::new();
    // Pids a record names: a process so named is judged through that record only (a refused one stays refused).
    let mut named_pids: HashSet<i32> = HashSet::new();
    for root in roots {
        for file in broker_files(&root.path, uid) {
            named_endpoints.extend(file.endpoint.as_deref().map(socket_key));
            let (check, seen) = check_listed(&file, &candidates, uid);
            if check != ProcessCheck::NotABroker {
                named_pids.extend(file.pid);
            }
            let process = seen.filter(|_| check == ProcessCheck::Verified);
            let state_dir = file.path.parent().map(Path::to_path_buf);
            let owner_ids = if file.sessions.is_empty() {
                process
                    .as_ref()
                    .and_then(|seen| seen.session.clone())
                    .into_iter()
                    .collect()
            } else {
                file.sessions.clone()
            };
            brokers.push(assemble(
                state_dir,
                Some(file),
                check,
                process,
                &owner_ids,
                sessions,
            ));
        }
    }
    for seen in candidates {
        let endpoint = seen.flag("--endpoint").map(socket_key);
        let listed = endpoint
            .as_ref()
            .is_some_and(|endpoint| named_endpoints.contains(endpoint));
        if listed || named_pids.contains(&seen.identity.pid) {
            continue;
        }
        let Some(root) = roots.iter().find(|root| root.path == seen.root) else {
            continue;
        };
        let state_dir = seen
            .flag("--cwd")
            .and_then(|cwd| crate::observe::workspace::workspace_of(Path::new(cwd)).ok())
            .map(|workspace| {
                root.path
                    .join(crate::model::workspace::workspace_key(&workspace))
            });
        let owner_ids: Vec<String> = seen.session.clone().into_iter().collect();
        brokers.push(assemble(
            state_dir,
            None,
            ProcessCheck::Verified,
            Some(seen),
            &owner_ids,
            sessions,
        ));
    }
    World {
        brokers,
        live_sockets,
    }
}

/// What the pid a `broker.json` names is, and that process as seen.
fn check_listed(file: &BrokerFile, candidates: &[Seen], uid: u32) -> (ProcessCheck, Option<Seen>) {
    let seen = file.pid.filter(|pid| *pid > 1).and_then(|pid| {
        candidates
            .iter()
            .find(|seen| seen.identity.pid == pid)
            .cloned()
            .or_else(|| pinned(pid))
    });
    let argv_facts = seen.as_ref().map(|seen| ArgvFacts {
        argv: &seen.argv,
        uid: seen.identity.uid,
    });
    let endpoint = file.endpoint.as_deref();
    let check = |socket_answers| {
        decide::check_process(file.pid, argv_facts.as_ref(), endpoint, uid, socket_answers)
    };
    let mut found = check(false);
    // The pid is not the broker: is the broker alive elsewhere (its pid meaning something else there)?
    if matches!(found, ProcessCheck::Dead | ProcessCheck::NotABroker)
        && endpoint
            .and_then(decide::socket_path)
            .is_some_and(|path| socket_answers(Path::new(path)))
    {
        found = check(true);
    }
    (found, seen)
}

/// The key an endpoint is compared by: its socket path, else the endpoint itself.
fn socket_key(endpoint: &str) -> String {
    decide::socket_path(endpoint).unwrap_or(endpoint).to_owned()
}

fn assemble(
    state_dir: Option<PathBuf>,
    file: Option<BrokerFile>,
    check: ProcessCheck,
    process: Option<Seen>,
    owner_ids: &[String],
    sessions: &[SessionRecord],
) -> Broker {
    let owners = owner_ids
        .iter()
        .map(|id| (id.clone(), session_state(id, sessions, process.as_ref())))
        .collect();
    let uid = rustix::process::getuid().as_raw();
    let state_json = state_dir
        .as_ref()
        .and_then(|dir| read_small(&dir.join("state.json"), uid));
    let jobs = state_json
        .as_ref()
        .map(|(bytes, _)| jobs_of(bytes, sessions))
        .unwrap_or_default();
    let age = process.as_ref().map_or(Duration::MAX, |seen| {
        proc::age_of(seen.identity.start_ticks)
    });
    let mut broker = Broker {
        state_dir,
        file,
        check,
        process,
        owners,
        jobs,
        idle_for: None,
        age,
    };
    let log = broker.files().log_file;
    let touched = [
        state_json.map(|(_, modified)| modified),
        log.and_then(|log| std::fs::symlink_metadata(log).ok()?.modified().ok()),
    ]
    .into_iter()
    .flatten()
    .max();
    broker.idle_for = touched
        .map(|at| SystemTime::now().duration_since(at).unwrap_or_default())
        .or((age != Duration::MAX).then_some(age));
    broker
}

/// How an owner session stands: our record of it, else the agent pid in the spawning broker's environment.
fn session_state(session: &str, sessions: &[SessionRecord], spawner: Option<&Seen>) -> OwnerState {
    let record = sessions.iter().find(|record| record.session_id == session);
    let spawner_alive = spawner
        .filter(|seen| seen.session.as_deref() == Some(session))
        .and_then(|seen| Some((seen.agent_pid?, seen.identity.start_ticks)))
        .map(|(pid, broker_start)| {
            // The agent started before the broker it spawned; a process with its pid that started later took a
            // reused pid.
            proc::identity_of(pid).is_some_and(|agent| agent.start_ticks <= broker_start)
        });
    decide::owner_state(SessionFacts {
        recorded_ended: record.map(SessionRecord::is_ended),
        recorded_agent_alive: record
            .and_then(|record| record.agent_identity.as_ref())
            .map(proc::is_alive),
        spawner_alive,
    })
}

/// The jobs of a `state.json`: `{"version":1,"config":{…},"jobs":[{"id","status","sessionId","pid",…}]}`.
fn jobs_of(bytes: &[u8], sessions: &[SessionRecord]) -> Vec<JobFacts> {
    let Ok(value) = serde_json::from_slice::<Value>(bytes) else {
        return Vec::new();
    };
    let Some(jobs) = value.get("jobs").and_then(Value::as_array) else {
        return Vec::new();
    };
    jobs.iter()
        .filter_map(|job| {
            let text = |key: &str| job.get(key).and_then(Value::as_str).map(str::to_owned);
            let session = text("sessionId").filter(|id| !id.is_empty());
            let pid = job
                .get("pid")
                .and_then(Value::as_i64)
                .and_then(|pid| i32::try_from(pid).ok())
                .filter(|pid| *pid > 1);
            Some(JobFacts {
                id: text("id").unwrap_or_default(),
                status: text("status")?,
                session: session.map(|id| {
                    let state = session_state(&id, sessions, None);
                    (id, state)
                }),
                pid_alive: pid.is_some_and(|pid| proc::identity_of(pid).is_some()),
            })
        })
        .collect()
}

/// Every readable `broker.json` directly below the workspace dirs of `root`.
pub(crate) fn broker_files(root: &Path, uid: u32) -> Vec<BrokerFile> {
    let Ok(entries) = std::fs::read_dir(root) else {
        return Vec::new();
    };
    let mut dirs: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|dir| is_own_dir(dir, uid))
        .collect();
    dirs.sort();
    dirs.into_iter()
        .filter_map(|dir| {
            let path = dir.join("broker.json");
            let (bytes, _) = read_small(&path, uid)?;
            BrokerFile::parse(path, &bytes)
        })
        .collect()
}

/// True when something listens on the unix socket at `path`: a non-blocking connect, closed at once (what the
/// plugin itself does to probe its broker). A FIFO or a regular file there is no socket.
fn socket_answers(path: &Path) -> bool {
    use rustix::net::{
        AddressFamily, SocketAddrUnix, SocketFlags, SocketType, connect, socket_with,
    };
    use std::os::unix::fs::FileTypeExt;
    if !std::fs::symlink_metadata(path).is_ok_and(|meta| meta.file_type().is_socket()) {
        return false;
    }
    let Ok(fd) = socket_with(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::NONBLOCK | SocketFlags::CLOEXEC,
        None,
    ) else {
        return false;
    };
    let Ok(address) = SocketAddrUnix::new(path) else {
        return false;
    };
    match connect(&fd, &address) {
        Ok(()) => true,
        // A listener whose backlog is full still listens.
        Err(err) => err == rustix::io::Errno::AGAIN,
    }
}

/// A directory of ours, not a symlink.
pub(crate) fn is_own_dir(path: &Path, uid: u32) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|meta| meta.is_dir() && meta.uid() == uid)
}

/// A small regular file of ours, read without following a symlink or blocking on a FIFO; with its mtime.
pub(crate) fn read_small(path: &Path, uid: u32) -> Option<(Vec<u8>, SystemTime)> {
    let (bytes, meta) = crate::store::root::read_regular(path, uid, MAX_FILE).ok()??;
    Some((bytes, meta.modified().ok()?))
}

/// Reads what a process says about itself between two identity reads; `None` if it changed (or is a thread).
pub(crate) fn pinned(pid: i32) -> Option<Seen> {
    let before = proc::identity_of(pid)?;
    if !leads_its_thread_group(pid) {
        return None;
    }
    let argv = proc::cmdline(pid).ok()?;
    let var = |name: &str| {
        proc::environ_var(pid, name)
            .ok()
            .flatten()
            .filter(|value| !value.is_empty())
    };
    // The plugin runs in Claude Code: its session variable and its agent-pid variable, from the agents table.
    let claude = crate::agents::Agent::Claude.spec();
    let session = var(super::SESSION_VAR).or_else(|| {
        claude
            .session_vars
            .iter()
            .find_map(|claude_var| var(claude_var.name))
    });
    let agent_pid = claude
        .agent_pid_var
        .and_then(var)
        .and_then(|pid| pid.parse().ok());
    let root = match var("CLAUDE_PLUGIN_DATA") {
        Some(data) => Path::new(&data).join("state"),
        None => super::tmp_dir_from(var).join("codex-companion"),
    };
    let stat = proc::stat(pid).ok()?;
    let parent_argv = proc::cmdline(stat.ppid).unwrap_or_default();
    let reparented = stat.ppid <= 1
        || !parent_argv.iter().any(|arg| {
            Path::new(arg)
                .file_name()
                .is_some_and(|name| name == "codex-companion.mjs")
        });
    let after = proc::identity_of(pid)?;
    (before == after).then(|| Seen {
        identity: after,
        stat,
        argv,
        session,
        agent_pid,
        root: std::fs::canonicalize(&root).unwrap_or(root),
        reparented,
    })
}

/// A thread id is never a process: `Tgid` must be the pid.
fn leads_its_thread_group(pid: i32) -> bool {
    match crate::observe::proc::read_proc_text(pid, "status") {
        Ok(status) => status
            .lines()
            .find_map(|line| line.strip_prefix("Tgid:"))
            .is_some_and(|tgid| tgid.trim() == pid.to_string()),
        // No /proc (the portable backend): the process table lists processes only.
        Err(_) => !Path::new("/proc/self").exists(),
    }
}

/// The members of a process that leads its group and is alive now (those of its group or session, and of its
/// lineage token if it has one): what a group signal through it would reach, and more.
pub(crate) fn members_of_live_leader(leader: &Identity, deadline: Deadline) -> Vec<Identity> {
    let (snapshot, _) = proc::observe(&std::collections::HashSet::from([leader.pid]), deadline);
    let token = snapshot
        .iter()
        .find(|seen| leader.is_same_process(&seen.identity))
        .and_then(|seen| seen.markers.lineage.clone());
    crate::decide::lineage::members(
        leader,
        token.as_deref(),
        proc::is_alive(leader),
        &snapshot,
        &proc::adopters_of(leader),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_files_of_both_plugin_versions() {
        let old = br#"{"endpoint":"unix:/tmp/cxc-AbC123/broker.sock","pidFile":"/tmp/cxc-AbC123/broker.pid",
            "logFile":"/tmp/cxc-AbC123/broker.log","sessionDir":"/tmp/cxc-AbC123","pid":1234}"#;
        let file = BrokerFile::parse("b.json".into(), old).unwrap();
        assert_eq!(file.pid, Some(1234));
        assert_eq!(file.session_dir.as_deref(), Some("/tmp/cxc-AbC123"));
        assert!(file.sessions.is_empty());
        let new = br#"{"endpoint":"unix:/s","pid":5,"sessionId":"a","sessionIds":["a","b"]}"#;
        assert_eq!(
            BrokerFile::parse("b.json".into(), new).unwrap().sessions,
            ["a", "b"]
        );
        let one = br#"{"endpoint":"unix:/s","pid":null,"sessionId":"a"}"#;
        let file = BrokerFile::parse("b.json".into(), one).unwrap();
        assert_eq!(
            (file.pid, file.sessions.as_slice()),
            (None, &["a".to_owned()][..])
        );
        assert!(BrokerFile::parse("b.json".into(), b"{\"pid\":").is_none());
        assert!(BrokerFile::parse("b.json".into(), b"[1]").is_none());
    }

    #[test]
    fn a_process_is_read_pinned_and_aged() {
        let me = i32::try_from(std::process::id()).unwrap();
        let seen = pinned(me).unwrap();
        assert_eq!(seen.identity.pid, me);
        assert!(proc::age_of(seen.identity.start_ticks) < Duration::from_secs(24 * 3600));
        assert!(pinned(i32::MAX).is_none());
    }
}
