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

use crate::act::executor;
use crate::act::finisher;
use crate::act::signal::Guard;
use crate::agents::{self, Agent};
use crate::commands::session_end::{self, Ending, Seen};
use crate::config::{Config, HookRequest};
use crate::decide::belonging;
use crate::error::bad_input;
use crate::model::clock;
use crate::model::deadline::Deadline;
use crate::model::name::SessionId;
use crate::model::record::{Identity, SessionRecord};
use crate::observe::proc;
use crate::store::Store;
use crate::store::events::{Event, Reason};

/// Time kept back from the deadline to hand work to the finisher and exit.
const EXIT_MARGIN: Duration = Duration::from_millis(150);

/// Runs the hook; never fails, never prints to stdout.
pub(crate) fn run(args: &HookRequest, state_dir_flag: Option<&Path>) {
    if crate::settings::probe::requested() {
        answer_probe(args, state_dir_flag);
        return;
    }
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
pub(crate) fn report(store: Option<&Store>, message: &str) {
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
    /// `None` when the payload names no session (older Copilot CLI): the hook then keys it by its agent process.
    pub session: Option<SessionId>,
    pub event: Option<String>,
    pub cwd: Option<String>,
    pub transcript_path: Option<String>,
    pub source: Option<String>,
    pub reason: Option<String>,
    pub title: Option<String>,
    /// The agent the payload's own field names point to (Copilot's `sessionId`, Goose's `event`).
    pub shaped_like: Option<Agent>,
}

impl Payload {
    /// Reads the fields we need through the agents table (snake or camel case, `hook_event_name` or `event`),
    /// tolerating unknown and null ones. An invalid session id is bad input; a missing one is not.
    pub fn from_json(value: &Value, agent: Option<Agent>) -> anyhow::Result<Self> {
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
        // Free text, capped before it can reach a record or an event (`model::bounded`).
        let capped = |key: &str| text(key).map(crate::model::bounded::capped);
        // Snake case, else camel case: `transcript_path` or `transcriptPath`.
        let field = |snake: &str| capped(snake).or_else(|| capped(&camel_case(snake)));
        let first_of = |names: Vec<&'static str>| names.into_iter().find_map(capped);
        let session_key = agents::payload_fields(agent, |spec| spec.session_fields)
            .into_iter()
            .find(|key| object.get(*key).is_some_and(|value| !value.is_null()));
        let session = session_key
            .map(|key| {
                let id = text(key).ok_or_else(|| {
                    bad_input(format!("hook payload: expected a non-empty string {key:?}"))
                })?;
                SessionId::parse(&id).map_err(|err| bad_input(format!("hook payload: {err}")))
            })
            .transpose()?;
        Ok(Payload {
            session,
            event: first_of(agents::payload_fields(agent, |spec| spec.event_fields)),
            cwd: field("cwd"),
            transcript_path: field("transcript_path"),
            source: field("source"),
            reason: field("reason"),
            title: field("session_title").or_else(|| capped("title")),
            shaped_like: agents::agent_from_payload_keys(&|key| object.contains_key(key)),
        })
    }
}

fn camel_case(snake: &str) -> String {
    let mut words = snake.split('_');
    let mut out = words.next().unwrap_or_default().to_owned();
    for word in words {
        let mut chars = word.chars();
        if let Some(first) = chars.next() {
            out.extend(first.to_uppercase());
            out.push_str(chars.as_str());
        }
    }
    out
}

/// The id of a session whose payload names none: its agent and agent process, stable while that process lives.
pub(crate) fn synthetic_session(
    agent: Option<Agent>,
    identity: &Identity,
) -> anyhow::Result<SessionId> {
    SessionId::parse(&format!(
        "{}-{}-{}",
        agent.map_or("agent", Agent::as_str),
        identity.pid,
        identity.start_ticks
    ))
}

pub(crate) use crate::model::hook_event::HookEvent;

/// The agent behind a payload: `--agent` (unless the environment shows an agent that runs that agent's hook files,
/// as Cursor and Copilot run Claude's: the session is then theirs), else the payload's own field names, else where
/// its transcript lives, else the environment's markers.
pub fn detect_agent(
    flag: Option<Agent>,
    payload: &Payload,
    has: &dyn Fn(&str) -> bool,
) -> Option<Agent> {
    if let Some(flag) = flag {
        return Some(agents::host_running_hooks_of(flag, has).unwrap_or(flag));
    }
    payload
        .shaped_like
        .or_else(|| {
            payload
                .transcript_path
                .as_deref()
                .and_then(agents::agent_from_transcript)
        })
        .or_else(|| agents::agent_from_env(has))
}

fn env_has(name: &str) -> bool {
    std::env::var_os(name).is_some()
}

fn handle(
    args: &HookRequest,
    store: &Store,
    payload: &Value,
    deadline: Deadline,
) -> anyhow::Result<()> {
    let mut payload = Payload::from_json(payload, args.agent)?;
    let event_name = payload
        .event
        .clone()
        .or_else(|| args.event.clone())
        .unwrap_or_default();
    let agent = detect_agent(args.agent, &payload, &env_has);
    let identity = agent_identity(args, agent)?;
    let event = HookEvent::parse(&event_name);
    let session = match (&payload.session, &identity) {
        (Some(session), _) => session.clone(),
        (None, _) if event == HookEvent::Other => {
            return Err(bad_input(
                "hook payload: expected a \"session_id\" (or a SessionStart/SessionEnd event to key it by its agent process)",
            ));
        }
        (None, Some(identity)) => synthetic_session(agent, identity)?,
        (None, None) => {
            return Err(bad_input(
                "hook payload names no session and no agent process was found to key it by; pass --owner-pid",
            ));
        }
    };
    payload.session = Some(session.clone());
    let seen = Hooked {
        session,
        payload: &payload,
        agent,
        identity,
        deadline,
        args,
    };
    match event {
        HookEvent::SessionStart => session_start(store, &seen),
        HookEvent::SessionEnd => session_end(store, &seen, deadline),
        HookEvent::Other => {
            refuse_unknown_event(store, &seen.session, &event_name)?;
            touch_session(store, &seen)
        }
    }
}

/// The session's agent process (DESIGN "Belonging"): the one `--owner-pid` names (never init, never another
/// user's), else a recognised agent among the hook's ancestors (`decide::belonging::hook_agent`). `None`: no agent
/// powers — the session is recorded, but no group, no descendants, no sentinel.
fn agent_identity(args: &HookRequest, detected: Option<Agent>) -> anyhow::Result<Option<Identity>> {
    let own_uid = rustix::process::getuid().as_raw();
    if let Some(pid) = args.owner_pid {
        let identity = proc::identity_of(pid)
            .ok_or_else(|| bad_input(format!("--owner-pid {pid}: no such live process")))?;
        if let Some(refusal) = belonging::owner_pid_refusal(pid, identity.uid, own_uid) {
            return Err(bad_input(refusal));
        }
        return Ok(Some(identity));
    }
    let me = i32::try_from(std::process::id()).context("pid out of range")?;
    let wanted: Vec<Agent> = args.agent.iter().chain(detected.iter()).copied().collect();
    let chosen = belonging::hook_agent(
        &proc::hook_ancestors(me),
        &crate::observe::table::agent_pids_named_by_env(),
        &belonging::acceptable_agents(&wanted),
        own_uid,
    );
    Ok(chosen.and_then(proc::identity_of))
}

/// One hook run: the session it is about (named by the payload or synthetic), the payload, the agent and its process.
struct Hooked<'a> {
    session: SessionId,
    payload: &'a Payload,
    agent: Option<Agent>,
    identity: Option<Identity>,
    deadline: Deadline,
    /// The hook's flags: leftover policy, sentinel, the wait for the agent's exit, the Codex plugin's roots.
    args: &'a HookRequest,
}

/// Records (or refreshes) the session, un-ending it if it is being resumed, and exports its id to later tool
/// commands through the agent's env file. A session already recorded under another agent (Cursor or Copilot running
/// Claude's hook files as well as their own) stays that agent's: the second start is logged, not re-keyed.
fn session_start(store: &Store, hooked: &Hooked) -> anyhow::Result<()> {
    let (before, record) = executor::update_session(
        store,
        &hooked.session,
        hooked.deadline.less(EXIT_MARGIN),
        |current| {
            let mut record = refreshed(current.cloned(), hooked, true);
            crate::act::cgroup::note_start(
                &mut record,
                &hooked.args.containment,
                hooked.args.owner_pid.is_some(),
                hooked.args.sentinel
                    && hooked
                        .identity
                        .as_ref()
                        .is_some_and(|agent| !crate::act::sentinel::is_running(store, agent)),
            );
            crate::act::leftovers::note_start(
                &mut record,
                current.and_then(|before| before.agent_identity.clone()),
                hooked.args.leftovers,
                hooked.args.sentinel,
            );
            Ok(Some(record))
        },
    )?;
    let agent_identity = record.as_ref().and_then(|r| r.agent_identity.clone());
    let first_agent = before.map(|record| record.agent);
    let agent = hooked.agent.map_or("unknown", Agent::as_str);
    let again = first_agent.filter(|first| !first.is_empty() && first != agent);
    executor::note(
        store,
        Event::new(
            "session_start",
            if again.is_some() {
                "duplicate"
            } else {
                "recorded"
            },
        )
        .session(Some(hooked.session.as_str()))
        .detail(match &again {
            Some(first) => format!("reached again through {agent}'s hooks; kept as agent {first}"),
            None => format!(
                "agent {agent} pid {} source {}",
                agent_identity.as_ref().map_or(0, |id| id.pid),
                hooked.payload.source.as_deref().unwrap_or("-")
            ),
        }),
    );
    export_session_id(&hooked.session)?;
    match agent_identity {
        Some(agent) if hooked.args.sentinel => {
            crate::act::sentinel::start(store, &agent, None, &hooked.args.codex.words())
        }
        _ => Ok(()),
    }
}

/// Another event refreshes a known session; for a session with no record it is a mistake (a hook run by hand with a
/// typo'd `hook_event_name`), reported rather than recorded as a live session.
fn refuse_unknown_event(store: &Store, session: &SessionId, event: &str) -> anyhow::Result<()> {
    if store.sessions.get(session)?.is_some() {
        return Ok(());
    }
    Err(bad_input(format!(
        "hook_event_name {event:?}: expected SessionStart or SessionEnd for session {session}, which has no record; \
         nothing recorded"
    )))
}

fn touch_session(store: &Store, hooked: &Hooked) -> anyhow::Result<()> {
    executor::update_session(
        store,
        &hooked.session,
        hooked.deadline.less(EXIT_MARGIN),
        |current| Ok(Some(refreshed(current.cloned(), hooked, false))),
    )?;
    crate::act::leftovers::record_descendants(
        store,
        &hooked.session,
        hooked.deadline.less(EXIT_MARGIN),
    )
}

/// A session record refreshed from a payload. `starting` clears an earlier end (`--resume` of an ended session).
/// The agent is written once: a session is never re-keyed to a second agent.
fn refreshed(current: Option<SessionRecord>, hooked: &Hooked, starting: bool) -> SessionRecord {
    let payload = hooked.payload;
    // An ancestor that has already exited (a forking wrapper) is never recorded as the agent.
    let identity = hooked.identity.clone().filter(proc::is_alive);
    let now = clock::now_rfc3339();
    let mut record = current
        .unwrap_or_else(|| SessionRecord::new(hooked.session.as_str(), proc::host_name(), &now));
    if let Some(agent) = hooked.agent.filter(|_| record.agent.is_empty()) {
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

/// Appends `export SESSION_REAPER_SESSION_ID='<id>'` to every env file the agents table names that is set (each once).
fn export_session_id(session: &SessionId) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut files: Vec<std::path::PathBuf> = agents::AGENTS
        .iter()
        .filter_map(|spec| spec.env_file_var)
        .filter_map(|name| {
            std::env::var_os(name)
                .filter(|value| !value.is_empty())
                .map(Into::into)
        })
        .collect();
    files.dedup();
    let uid = rustix::process::geteuid().as_raw();
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
fn session_end(store: &Store, hooked: &Hooked, deadline: Deadline) -> anyhow::Result<()> {
    let codex = &hooked.args.codex;
    let (payload, agent) = (hooked.payload, hooked.agent);
    let guard = Guard::new();
    let ending = Ending {
        session: hooked.session.clone(),
        reason: Reason::SessionEnd,
        agent_reason: payload.reason.clone(),
        seen: Some(Seen {
            agent: agent.map(|agent| agent.as_str().to_owned()),
            cwd: payload.cwd.clone(),
            transcript_path: payload.transcript_path.clone(),
            title: payload.title.clone(),
            agent_identity: hooked.identity.clone(),
            start_facts: Some((hooked.args.leftovers, hooked.args.sentinel)),
        }),
        dry_run: false,
        codex: codex.clone(),
    };
    let work_deadline = deadline.less(EXIT_MARGIN);
    let report = session_end::end_session(store, &guard, &ending, work_deadline.less(EXIT_MARGIN));
    crate::commands::stopper(store, guard).run(report.tickets, work_deadline);
    // Its own stops still running, or tickets an earlier, killed finisher left: a finisher completes them.
    if finisher::has_work(store) {
        finisher::start(store)?;
    }
    crate::commands::sentinel::at_session_end(
        store,
        &hooked.session,
        payload.reason.as_deref(),
        hooked.args.agent_exit_wait,
        codex,
    )?;
    if let Some(problem) = report.problems.first() {
        anyhow::bail!("session {}: {problem}", hooked.session);
    }
    Ok(())
}

/// Reads exactly one JSON value from stdin, waiting no later than `deadline` and never for end-of-file.
pub(crate) fn read_payload(deadline: Deadline) -> anyhow::Result<Value> {
    let stdin = std::io::stdin();
    read_one_value(stdin.as_fd(), deadline)
}

/// The largest hook payload we read: real ones are well under a KiB (a transcript path, a cwd, a few names).
pub(crate) const PAYLOAD_LIMIT: usize = 4 * 1024 * 1024;

/// Reads from `fd` until one whole JSON value has arrived; malformed input fails at once.
pub(crate) fn read_one_value(
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

/// Hook side: read the payload and resolve everything the hook would, then answer; change nothing.
fn answer_probe(args: &HookRequest, state_dir_flag: Option<&Path>) {
    let state_dir = crate::config::Config::new(state_dir_flag, false)
        .map(|config| std::path::absolute(&config.state_dir).unwrap_or(config.state_dir));
    let payload = read_payload(crate::model::deadline::Deadline::after(
        args.stdin_timeout.min(args.deadline),
    ))
    .and_then(|value| Payload::from_json(&value, args.agent));
    let mut answer = crate::settings::probe::Answer {
        deadline_ms: u64::try_from(args.deadline.as_millis()).ok(),
        ..crate::settings::probe::Answer::default()
    };
    match (state_dir, payload) {
        (Ok(dir), Ok(payload)) => {
            answer.state_dir = Some(dir);
            answer.agent = detect_agent(args.agent, &payload, &|name| {
                std::env::var_os(name).is_some()
            })
            .map(|agent| agent.as_str().to_owned());
            answer.event = payload.event.clone().or_else(|| args.event.clone());
            answer.session = payload.session.map(|session| session.to_string());
        }
        (Err(err), _) | (_, Err(err)) => answer.error = Some(format!("{err:#}")),
    }
    crate::settings::probe::say(&answer);
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
        let payload = Payload::from_json(&value, None).unwrap();
        assert_eq!(payload.transcript_path, None);
        assert_eq!(payload.source.as_deref(), Some("branch"));
    }

    #[test]
    fn an_invalid_session_is_bad_input_and_a_missing_one_is_not() {
        for value in [
            serde_json::json!({"session_id": "../x"}),
            serde_json::json!([1]),
        ] {
            assert_eq!(
                crate::error::exit_code_of(&Payload::from_json(&value, None).unwrap_err()),
                2
            );
        }
        let payload = Payload::from_json(&serde_json::json!({"cwd": "/w"}), None).unwrap();
        assert_eq!(payload.session, None);
        let identity = Identity {
            boot_id: "b".into(),
            pid_ns: None,
            pid: 4242,
            start_ticks: 77,
            uid: 0,
        };
        let id = synthetic_session(Some(Agent::Copilot), &identity).unwrap();
        assert_eq!(id.as_str(), "copilot-4242-77");
        assert_eq!(
            synthetic_session(Some(Agent::Copilot), &identity).unwrap(),
            id,
            "stable"
        );
    }

    /// Every payload fixture of every agent: its event and session are read through the table, with and without
    /// `--agent`, and the agent is recognised from the payload alone where its shape says so.
    #[test]
    fn every_agents_fixture_payloads_parse() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/payloads");
        let mut seen = std::collections::BTreeSet::new();
        for dir in std::fs::read_dir(&root).unwrap().flatten() {
            let dir_name = dir.file_name().to_string_lossy().into_owned();
            let agent = Agent::from_name(dir_name.split('-').next().unwrap())
                .expect("fixture dirs are named by agent");
            for file in std::fs::read_dir(dir.path()).unwrap().flatten() {
                let name = file.file_name().to_string_lossy().into_owned();
                let Some(stem) = name.strip_suffix(".json") else {
                    continue;
                };
                let value: Value =
                    serde_json::from_str(&std::fs::read_to_string(file.path()).unwrap()).unwrap();
                let expected_event = HookEvent::parse(stem.split('.').next().unwrap());
                for flag in [None, Some(agent)] {
                    let payload = Payload::from_json(&value, flag)
                        .unwrap_or_else(|err| panic!("{dir_name}/{name}: {err}"));
                    assert_eq!(
                        payload.session.is_none(),
                        name.contains("no-session-id"),
                        "{dir_name}/{name}"
                    );
                    match &payload.event {
                        Some(event) => {
                            assert_eq!(
                                HookEvent::parse(event),
                                expected_event,
                                "{dir_name}/{name}"
                            );
                        }
                        None => assert!(
                            !agent.spec().event_in_payload,
                            "{dir_name}/{name}: no event name"
                        ),
                    }
                    let no_env = |_: &str| false;
                    let detected = detect_agent(flag, &payload, &no_env);
                    if flag.is_some()
                        || payload.transcript_path.is_some()
                        || payload.shaped_like.is_some()
                    {
                        assert_eq!(detected, Some(agent), "{dir_name}/{name}");
                    }
                }
                seen.insert(agent);
            }
        }
        assert_eq!(
            seen.len(),
            Agent::all().count(),
            "a fixture for every agent: {seen:?}"
        );
    }

    #[test]
    fn claude_hooks_run_by_cursor_serve_cursors_session() {
        let payload = Payload::from_json(
            &serde_json::json!({"session_id": "a", "hook_event_name": "SessionStart"}),
            None,
        )
        .unwrap();
        let cursor_env = |name: &str| name == "CURSOR_VERSION";
        assert_eq!(
            detect_agent(Some(Agent::Claude), &payload, &cursor_env),
            Some(Agent::Cursor)
        );
        assert_eq!(
            detect_agent(Some(Agent::Claude), &payload, &|_| false),
            Some(Agent::Claude)
        );
        assert_eq!(
            detect_agent(Some(Agent::Gemini), &payload, &cursor_env),
            Some(Agent::Gemini)
        );
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
