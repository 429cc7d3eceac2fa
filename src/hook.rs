//! Hook mode: what an agent runs on `SessionStart` and `SessionEnd`. A good citizen (DESIGN invariant 5): exits 0,
//! writes nothing to stdout (`SessionStart` stdout becomes model context), reads exactly one JSON value from stdin
//! with a timeout (stdin may never close), returns within its deadline and hands longer work to the finisher.
//! Problems go to stderr as one line and to `events.jsonl`.

use std::io::Write;
use std::os::fd::AsFd;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::Value;

use crate::act::finisher;
use crate::act::signal::Guard;
use crate::agent::Agent;
use crate::config::{Config, HookRequest};
use crate::error::bad_input;
use crate::model::clock;
use crate::model::deadline::Deadline;
use crate::model::name::SessionId;
use crate::model::record::{Identity, SessionRecord};
use crate::observe::proc;
use crate::store::Store;
use crate::store::events::{Event, Reason};
use crate::teardown::{self, Ending, Seen};

/// Time kept back from the deadline to hand work to the finisher and exit.
const EXIT_MARGIN: Duration = Duration::from_millis(150);

/// Runs the hook; never fails, never prints to stdout.
pub fn run(args: &HookRequest, state_dir_flag: Option<&Path>) {
    let deadline = Deadline::after(args.deadline);
    let store =
        Config::new(state_dir_flag, false).and_then(|config| Store::open(&config.state_dir));
    let result =
        read_payload(Deadline::after(args.stdin_timeout).min(deadline)).and_then(|payload| {
            handle(
                args,
                store.as_ref().map_err(|err| anyhow::anyhow!("{err:#}"))?,
                &payload,
                deadline,
            )
        });
    if let Err(err) = result {
        report(store.as_ref().ok(), &format!("{err:#}"));
    }
}

/// One stderr line and one event; the hook still exits 0.
pub fn report(store: Option<&Store>, message: &str) {
    let line = message.replace('\n', " ");
    // The event first: a stderr nobody reads (a full pipe) may block the line until the watchdog ends us.
    if let Some(store) = store {
        store
            .log
            .record(&Event::new("hook", "error").detail(line.clone()));
    }
    let _ = writeln!(std::io::stderr(), "session-reaper hook: {line}");
}

/// What we use of a hook payload; everything else is ignored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Payload {
    pub session: SessionId,
    pub event: Option<String>,
    pub cwd: Option<String>,
    pub transcript_path: Option<String>,
    pub source: Option<String>,
    pub reason: Option<String>,
    pub title: Option<String>,
}

impl Payload {
    /// Reads the fields we need, tolerating unknown and null ones; a missing or invalid `session_id` is bad input.
    pub fn from_json(value: &Value) -> anyhow::Result<Self> {
        let object = value
            .as_object()
            .ok_or_else(|| bad_input("hook payload: expected a JSON object"))?;
        let text = |key: &str| {
            object
                .get(key)
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
        };
        let session_text = text("session_id")
            .ok_or_else(|| bad_input("hook payload: expected a non-empty string \"session_id\""))?;
        let session = SessionId::parse(&session_text)
            .map_err(|err| bad_input(format!("hook payload: {err}")))?;
        Ok(Payload {
            session,
            event: text("hook_event_name"),
            cwd: text("cwd"),
            transcript_path: text("transcript_path"),
            source: text("source"),
            reason: text("reason"),
            title: text("session_title").or_else(|| text("title")),
        })
    }
}

/// The events we act on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HookEvent {
    SessionStart,
    SessionEnd,
    Other,
}

impl HookEvent {
    pub fn parse(name: &str) -> Self {
        let folded: String = name
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .collect::<String>()
            .to_lowercase();
        match folded.as_str() {
            "sessionstart" => HookEvent::SessionStart,
            "sessionend" => HookEvent::SessionEnd,
            _ => HookEvent::Other,
        }
    }
}

/// The agent behind a payload: `--agent`, else where its transcript lives, else its environment markers.
pub fn detect_agent(flag: Option<Agent>, payload: &Payload) -> Option<Agent> {
    if flag.is_some() {
        return flag;
    }
    let transcript = payload.transcript_path.as_deref().unwrap_or_default();
    for (needle, agent) in [
        ("/.codex/", Agent::Codex),
        ("/.qwen/", Agent::Qwen),
        ("/.gemini/", Agent::Gemini),
        ("/.claude/", Agent::Claude),
    ] {
        if transcript.contains(needle) {
            return Some(agent);
        }
    }
    let has = |name: &str| std::env::var_os(name).is_some();
    if has("CODEX_ENV_FILE") {
        Some(Agent::Codex)
    } else if has("QWEN_CODE") || has("QWEN_SESSION_ID") {
        Some(Agent::Qwen)
    } else if has("GEMINI_SESSION_ID") || has("GEMINI_CLI") {
        Some(Agent::Gemini)
    } else if has("CLAUDE_CODE_SESSION_ID") || has("CLAUDECODE") {
        Some(Agent::Claude)
    } else {
        None
    }
}

fn handle(
    args: &HookRequest,
    store: &Store,
    payload: &Value,
    deadline: Deadline,
) -> anyhow::Result<()> {
    let payload = Payload::from_json(payload)?;
    let event_name = payload
        .event
        .clone()
        .or_else(|| args.event.clone())
        .unwrap_or_default();
    let agent = detect_agent(args.agent, &payload);
    match HookEvent::parse(&event_name) {
        HookEvent::SessionStart => session_start(args, store, &payload, agent, deadline),
        HookEvent::SessionEnd => session_end(store, &payload, agent, deadline, &args.codex),
        HookEvent::Other => touch_session(args, store, &payload, agent, deadline),
    }
}

fn agent_identity(args: &HookRequest) -> anyhow::Result<Option<Identity>> {
    if let Some(pid) = args.owner_pid {
        return proc::identity_of(pid)
            .map(Some)
            .ok_or_else(|| bad_input(format!("--owner-pid {pid}: no such live process")));
    }
    let me = i32::try_from(std::process::id()).context("pid out of range")?;
    Ok(proc::agent_process(me).and_then(|stat| proc::identity_of(stat.pid)))
}

/// Records (or refreshes) the session, un-ending it if it is being resumed, and exports its id to later tool
/// commands through the agent's env file.
fn session_start(
    args: &HookRequest,
    store: &Store,
    payload: &Payload,
    agent: Option<Agent>,
    deadline: Deadline,
) -> anyhow::Result<()> {
    let record = refresh_session(
        args,
        store,
        payload,
        agent,
        (true, deadline.less(EXIT_MARGIN)),
    )?;
    store.log.record(
        &Event::new("session_start", "recorded")
            .session(Some(payload.session.as_str()))
            .detail(format!(
                "agent {} pid {} source {}",
                agent.map_or("unknown", Agent::as_str),
                record.and_then(|r| r.agent_identity).map_or(0, |id| id.pid),
                payload.source.as_deref().unwrap_or("-")
            )),
    );
    export_session_id(&payload.session)
}

fn touch_session(
    args: &HookRequest,
    store: &Store,
    payload: &Payload,
    agent: Option<Agent>,
    deadline: Deadline,
) -> anyhow::Result<()> {
    refresh_session(
        args,
        store,
        payload,
        agent,
        (false, deadline.less(EXIT_MARGIN)),
    )
    .map(drop)
}

/// Writes the session's record refreshed from the payload, under its lock; returns it.
fn refresh_session(
    args: &HookRequest,
    store: &Store,
    payload: &Payload,
    agent: Option<Agent>,
    (starting, deadline): (bool, Deadline),
) -> anyhow::Result<Option<SessionRecord>> {
    let identity = agent_identity(args)?;
    store
        .sessions
        .update(&payload.session, deadline, |current| {
            // An ancestor that has already exited (a forking wrapper) is never recorded as the agent.
            let identity = identity.clone().filter(proc::is_alive);
            Ok(Some(refreshed(
                current.cloned(),
                payload,
                agent,
                identity,
                starting,
            )))
        })
        .map(|(_, after)| after)
}

/// A session record refreshed from a payload. `starting` clears an earlier end (`--resume` of an ended session).
fn refreshed(
    current: Option<SessionRecord>,
    payload: &Payload,
    agent: Option<Agent>,
    identity: Option<Identity>,
    starting: bool,
) -> SessionRecord {
    let now = clock::now_rfc3339();
    let mut record = current
        .unwrap_or_else(|| SessionRecord::new(payload.session.as_str(), proc::host_name(), &now));
    if let Some(agent) = agent {
        agent.as_str().clone_into(&mut record.agent);
    }
    if let Some(cwd) = &payload.cwd {
        record.cwd.clone_from(cwd);
    }
    record.transcript_path = payload.transcript_path.clone().or(record.transcript_path);
    record.title = payload.title.clone().or(record.title);
    if starting {
        record.source = payload.source.clone().or(record.source);
        record.agent_identity = identity.or(record.agent_identity);
        record.ended_at = None;
        record.end_reason = None;
        record.host = proc::host_name();
    } else if record.agent_identity.is_none() {
        record.agent_identity = identity;
    }
    record.last_seen = now;
    record
}

/// Appends `export SESSION_REAPER_SESSION_ID='<id>'` to `$CLAUDE_ENV_FILE` and `$CODEX_ENV_FILE` (each once).
fn export_session_id(session: &SessionId) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut files: Vec<std::path::PathBuf> = ["CLAUDE_ENV_FILE", "CODEX_ENV_FILE"]
        .iter()
        .filter_map(|name| {
            std::env::var_os(name)
                .filter(|value| !value.is_empty())
                .map(Into::into)
        })
        .collect();
    files.dedup();
    let uid = nix::unistd::geteuid().as_raw();
    for file in files {
        // Like a state file: no symlink followed, no blocking on a FIFO, a regular file of ours or nothing.
        let mut handle = crate::store::root::open_nofollow(
            &file,
            std::fs::OpenOptions::new()
                .append(true)
                .create(true)
                .mode(0o600),
        )
        .with_context(|| format!("opening env file {}", file.display()))?;
        crate::store::root::check_regular_file(&handle, &file, uid)?;
        // The id is validated to [A-Za-z0-9._-], so single quotes need no escaping.
        writeln!(handle, "export SESSION_REAPER_SESSION_ID='{session}'")
            .with_context(|| format!("writing env file {}", file.display()))?;
    }
    Ok(())
}

/// Ends the session within the deadline; stops that need longer go to the finisher, and so do tickets left behind
/// by an earlier run (a finisher that was killed): the next hook picks them up.
fn session_end(
    store: &Store,
    payload: &Payload,
    agent: Option<Agent>,
    deadline: Deadline,
    codex: &crate::adapters::codex_plugin::Discovery,
) -> anyhow::Result<()> {
    let guard = Guard::new();
    let ending = Ending {
        session: payload.session.clone(),
        reason: Reason::SessionEnd,
        agent_reason: payload.reason.clone(),
        seen: Some(Seen {
            agent: agent.map(|agent| agent.as_str().to_owned()),
            cwd: payload.cwd.clone(),
            transcript_path: payload.transcript_path.clone(),
            title: payload.title.clone(),
        }),
        dry_run: false,
        codex: codex.clone(),
    };
    let work_deadline = deadline.less(EXIT_MARGIN);
    let report = teardown::end_session(store, &guard, &ending, work_deadline.less(EXIT_MARGIN));
    store.stopper(guard).run(report.tickets, work_deadline);
    // Its own stops still running, or tickets an earlier, killed finisher left: a finisher completes them.
    if finisher::has_work(store) {
        finisher::start(store)?;
    }
    if let Some(problem) = report.problems.first() {
        anyhow::bail!("session {}: {problem}", payload.session);
    }
    Ok(())
}

/// Reads exactly one JSON value from stdin, waiting no later than `deadline` and never for end-of-file.
pub fn read_payload(deadline: Deadline) -> anyhow::Result<Value> {
    let stdin = std::io::stdin();
    read_one_value(stdin.as_fd(), deadline)
}

/// The largest hook payload we read: real ones are well under a KiB (a transcript path, a cwd, a few names).
pub const PAYLOAD_LIMIT: usize = 4 * 1024 * 1024;

/// Reads from `fd` until one whole JSON value has arrived; malformed input fails at once.
pub fn read_one_value(
    fd: std::os::fd::BorrowedFd<'_>,
    deadline: Deadline,
) -> anyhow::Result<Value> {
    use rustix::event::{PollFd, PollFlags, Timespec, poll};
    let started = Instant::now();
    let mut buffer: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    // Parse again only when the last read could have completed a value: an object or array ends with `}` or `]`
    // (so a slow, large payload costs one parse per closing bracket, not one per chunk); anything else parses at once.
    let mut parse_due = false;
    loop {
        if std::mem::take(&mut parse_due) {
            let mut values = serde_json::Deserializer::from_slice(&buffer).into_iter::<Value>();
            match values.next() {
                Some(Ok(value)) => return Ok(value),
                Some(Err(err)) if err.is_eof() => {}
                Some(Err(err)) => {
                    return Err(bad_input(format!(
                        "hook payload on stdin: expected JSON: {err}"
                    )));
                }
                None => {}
            }
        }
        if buffer.len() > PAYLOAD_LIMIT {
            return Err(bad_input(format!(
                "hook payload on stdin: expected at most {PAYLOAD_LIMIT} bytes of JSON, got more"
            )));
        }
        let remaining = deadline.remaining();
        if remaining.is_zero() {
            return Err(bad_input(format!(
                "hook payload on stdin: no complete JSON value within {}",
                humantime::format_duration(Duration::from_millis(clock::millis(started.elapsed())))
            )));
        }
        let timespec = Timespec::try_from(remaining).unwrap_or(Timespec {
            tv_sec: 0,
            tv_nsec: 1_000_000,
        });
        let mut fds = [PollFd::new(&fd, PollFlags::IN | PollFlags::HUP)];
        match poll(&mut fds, Some(&timespec)) {
            Ok(0) | Err(rustix::io::Errno::INTR) => continue,
            Ok(_) => {}
            Err(err) => return Err(err).context("waiting for the hook payload"),
        }
        match rustix::io::read(fd, &mut chunk) {
            Ok(0) => {
                return Err(bad_input(if buffer.is_empty() {
                    "hook payload on stdin: expected a JSON object, got nothing".to_owned()
                } else {
                    "hook payload on stdin: expected JSON, got a truncated value".to_owned()
                }));
            }
            Ok(read) => {
                let fresh = &chunk[..read];
                buffer.extend_from_slice(fresh);
                let container = buffer
                    .iter()
                    .find(|byte| !byte.is_ascii_whitespace())
                    .is_some_and(|first| matches!(first, b'{' | b'['));
                parse_due = buffer.iter().any(|byte| !byte.is_ascii_whitespace())
                    && (!container || fresh.iter().any(|byte| matches!(byte, b'}' | b']')));
            }
            Err(rustix::io::Errno::INTR | rustix::io::Errno::AGAIN) => {}
            Err(err) => return Err(err).context("reading the hook payload"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_names() {
        for name in ["SessionStart", "session-start", "session_start"] {
            assert_eq!(HookEvent::parse(name), HookEvent::SessionStart);
        }
        assert_eq!(HookEvent::parse("SessionEnd"), HookEvent::SessionEnd);
        assert_eq!(HookEvent::parse("PreToolUse"), HookEvent::Other);
    }

    #[test]
    fn payload_tolerates_nulls_and_unknowns() {
        let value = serde_json::json!({"session_id": "abc", "transcript_path": null, "weird": [1], "source": "branch"});
        let payload = Payload::from_json(&value).unwrap();
        assert_eq!(payload.transcript_path, None);
        assert_eq!(payload.source.as_deref(), Some("branch"));
    }

    #[test]
    fn payload_needs_a_valid_session() {
        for value in [
            serde_json::json!({}),
            serde_json::json!({"session_id": "../x"}),
            serde_json::json!([1]),
        ] {
            assert_eq!(
                crate::error::exit_code_of(&Payload::from_json(&value).unwrap_err()),
                2
            );
        }
    }

    #[test]
    fn agent_from_transcript() {
        let mut payload = Payload::from_json(&serde_json::json!({"session_id": "a"})).unwrap();
        payload.transcript_path = Some("/home/a/.gemini/tmp/x.jsonl".into());
        assert_eq!(detect_agent(None, &payload), Some(Agent::Gemini));
        assert_eq!(detect_agent(Some(Agent::Qwen), &payload), Some(Agent::Qwen));
    }

    #[test]
    fn reads_one_value_without_eof() {
        let (reader, mut writer) = std::io::pipe().unwrap();
        writer
            .write_all(b"{\"session_id\": \"a\"} trailing")
            .unwrap();
        let value =
            read_one_value(reader.as_fd(), Deadline::after(Duration::from_secs(5))).unwrap();
        assert_eq!(value["session_id"], "a");
        drop(writer);
    }

    #[test]
    fn an_endless_payload_is_refused_at_its_size_bound() {
        let (reader, mut writer) = std::io::pipe().unwrap();
        let feeder = std::thread::spawn(move || {
            let _ = writer.write_all(b"{\"session_id\": \"");
            let chunk = vec![b'a'; 64 * 1024];
            while writer.write_all(&chunk).is_ok() {}
        });
        let err =
            read_one_value(reader.as_fd(), Deadline::after(Duration::from_secs(30))).unwrap_err();
        assert!(err.to_string().contains("expected at most"), "{err}");
        drop(reader);
        feeder.join().unwrap();
    }

    #[test]
    fn times_out_on_silence_and_fails_fast_on_garbage() {
        let (reader, mut writer) = std::io::pipe().unwrap();
        let started = Instant::now();
        assert!(
            read_one_value(reader.as_fd(), Deadline::after(Duration::from_millis(100))).is_err()
        );
        assert!(started.elapsed() < Duration::from_secs(5));
        writer.write_all(b"not json").unwrap();
        let err =
            read_one_value(reader.as_fd(), Deadline::after(Duration::from_secs(30))).unwrap_err();
        assert!(err.to_string().contains("expected JSON"), "{err}");
    }
}
