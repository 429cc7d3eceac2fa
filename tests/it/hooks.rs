//! Hook mode and the end of a session, through the real binary against real processes: every agent's sample
//! payload and garbage on stdin, the deadline against a stalled stdin, socket, lock or broker, the recorded agent
//! identity, owners found by agent ancestry, `SessionEnd` across workspaces, `--resume` orphans, the detached
//! finisher and `reap --session`.

use std::fs;
use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::harness::owners;
use crate::harness::uuid;
use crate::harness::{
    BIN, Env, PATIENCE, Proc, named_python, run_bounded, scrub_env, stderr, stdout, wait_until,
};
use crate::hook_test::{self, HookTest, assert_hook_contract};

/// The deadline of tests about what a hook records, not when: room for a loaded 2-core machine (the default, 1 s, is
/// what the timing tests hold the hook to).
const ROOMY: &str = "10s";

/// The deadline the timing tests give the hook.
const DEADLINE: Duration = Duration::from_secs(1);
/// What a loaded 2-core machine may add to the deadline before the hook counts as late.
const SLACK: Duration = Duration::from_secs(2);

// ---------------------------------------------------------------------------------------------------------------
// Helpers

fn payload_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/payloads")
}

/// Every payload fixture as (agent directory, file name, bytes), sorted. Each session id is replaced (everywhere
/// in the text, consistently per id) by a fresh one: a `SessionEnd` scans the whole process table for `--resume <id>`,
/// and a test may only ever match processes it planted itself.
fn fixture_payloads() -> Vec<Fixture> {
    let mut fresh: std::collections::HashMap<String, String> = std::collections::HashMap::new();
    raw_fixture_payloads()
        .into_iter()
        .map(|(dir, name, raw)| {
            let original = parse(&raw)["session_id"].as_str().unwrap().to_owned();
            let id = fresh.entry(original.clone()).or_insert_with(uuid).clone();
            let text = String::from_utf8(raw).unwrap().replace(&original, &id);
            (dir, name, text.into_bytes())
        })
        .collect()
}

fn raw_fixture_payloads() -> Vec<Fixture> {
    let mut all = Vec::new();
    for dir in fs::read_dir(payload_dir()).expect("fixtures/payloads") {
        let dir = dir.unwrap().path();
        let dir_name = dir.file_name().unwrap().to_string_lossy().into_owned();
        // The agents whose payloads are Claude-shaped and carry a transcript path; the others' shapes (camelCase,
        // `event`, no session id) are driven through the binary in `settings::`.
        if !["claude", "gemini", "qwen", "codex"].contains(&agent_of_dir(&dir_name)) {
            continue;
        }
        for file in fs::read_dir(&dir).unwrap() {
            let file = file.unwrap().path();
            if file.extension().is_some_and(|ext| ext == "json") {
                let name = file.file_name().unwrap().to_string_lossy().into_owned();
                all.push((dir_name.clone(), name, fs::read(&file).unwrap()));
            }
        }
    }
    all.sort();
    all
}

/// `claude-2.1.330` -> `claude`.
fn agent_of_dir(dir: &str) -> &str {
    dir.split('-').next().unwrap()
}

fn parse(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).expect("valid JSON")
}

/// The real python3 (not a shim script), so that planted processes start fast and keep their pid.
fn python() -> &'static str {
    static PYTHON: OnceLock<String> = OnceLock::new();
    PYTHON.get_or_init(|| {
        let out = Command::new("python3")
            .args(["-c", "import sys; print(sys.executable)"])
            .output()
            .expect("python3 is needed by these tests");
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    })
}

fn payload(event: &str, id: &str, cwd: &Path) -> Value {
    let mut payload = hook_test::payload(event, id, cwd);
    payload["transcript_path"] = json!(format!("/home/t/.claude/projects/x/{id}.jsonl"));
    payload["source"] = json!("startup");
    payload["reason"] = json!("prompt_input_exit");
    payload
}

fn bytes(value: &Value) -> Vec<u8> {
    serde_json::to_vec(value).unwrap()
}

/// Runs `hook ARGS` with `stdin` (then closed) and checks it was a good citizen.
fn hook(env: &mut Env, args: &[&str], stdin: &[u8]) -> Output {
    HookTest::raw(stdin).args(args).run(env)
}

fn start(env: &mut Env, id: &str, cwd: &Path) {
    let out = hook(env, &[], &bytes(&payload("SessionStart", id, cwd)));
    assert!(out.stderr.is_empty(), "SessionStart {id}: {}", stderr(&out));
}

fn end(env: &mut Env, id: &str, cwd: &Path) -> Output {
    hook(
        env,
        &["--deadline", "1s"],
        &bytes(&payload("SessionEnd", id, cwd)),
    )
}

/// Kills a process after `PATIENCE` unless dropped first: no test hangs on a hung binary.
struct Watchdog {
    done: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Watchdog {
    fn new(target: Option<Proc>) -> Self {
        let done = Arc::new(AtomicBool::new(false));
        let seen = done.clone();
        let thread = std::thread::spawn(move || {
            let deadline = Instant::now() + PATIENCE;
            while Instant::now() < deadline {
                if seen.load(Ordering::SeqCst) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            if let Some(target) = target.filter(|t| t.alive()) {
                unsafe { libc::kill(target.pid, libc::SIGKILL) };
            }
        });
        Watchdog {
            done,
            thread: Some(thread),
        }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.done.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Runs the hook with `stdin` written to a pipe that stays open until the hook has exited when `hold_open`
/// (an agent that never closes it), and measures its wall time.
fn timed_hook(
    env: &Env,
    args: &[&str],
    stdin: &[u8],
    hold_open: bool,
    label: &str,
) -> (Output, Duration) {
    let mut full = vec!["hook"];
    full.extend_from_slice(args);
    let mut command = env.cmd(&full);
    command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let started = Instant::now();
    let mut child = command.spawn().expect("start the hook");
    let mut pipe = child.stdin.take().unwrap();
    let _ = pipe.write_all(stdin);
    let held = if hold_open {
        Some(pipe)
    } else {
        drop(pipe);
        None
    };
    let watchdog = Watchdog::new(Proc::of(i32::try_from(child.id()).unwrap()));
    let out = child.wait_with_output().expect("wait for the hook");
    let elapsed = started.elapsed();
    drop(watchdog);
    drop(held);
    eprintln!("hook wall time [{label}]: {elapsed:?} (args {args:?})");
    assert_hook_contract(&out, label);
    (out, elapsed)
}

fn assert_within_deadline(elapsed: Duration, deadline: Duration, label: &str) {
    assert!(
        elapsed < deadline + SLACK,
        "{label}: the hook took {elapsed:?}, past its deadline {deadline:?} + {SLACK:?} slack"
    );
}

/// Every slot directory (`workspaces/<key>/<name>`).
fn slot_dirs(env: &Env) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    for key in fs::read_dir(env.state_dir().join("workspaces"))
        .into_iter()
        .flatten()
        .flatten()
    {
        for slot in fs::read_dir(key.path()).into_iter().flatten().flatten() {
            if slot.path().is_dir() {
                dirs.push(slot.path());
            }
        }
    }
    dirs
}

/// Waits until no stop is left to anyone: no ticket on disk and no finisher of ours running. A finisher removes a
/// ticket and then logs its stop, so only then are the events final.
fn settle(env: &Env) {
    assert!(
        wait_until(PATIENCE, || env.tickets().is_empty()
            && finishers(env).is_empty()),
        "stops settled: tickets {:?}",
        env.tickets()
    );
}

/// Events about one pid.
fn events_for(env: &Env, pid: i32) -> Vec<Value> {
    env.events()
        .into_iter()
        .filter(|event| event["pid"] == json!(pid))
        .collect()
}

fn argv_of(pid: i32) -> Vec<String> {
    fs::read(format!("/proc/{pid}/cmdline"))
        .unwrap_or_default()
        .split(|byte| *byte == 0)
        .filter(|arg| !arg.is_empty())
        .map(|arg| String::from_utf8_lossy(arg).into_owned())
        .collect()
}

/// Finishers our binary started for this test: `… --state-dir <this test's root> finish`.
fn finishers(env: &Env) -> Vec<Proc> {
    let state = env.state_dir().to_string_lossy().into_owned();
    fs::read_dir("/proc")
        .unwrap()
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let argv = argv_of(*pid);
            argv.iter().any(|arg| arg == "finish") && argv.contains(&state)
        })
        .filter_map(Proc::of)
        .filter(|proc| proc.alive())
        .collect()
}

/// True once the process ignores SIGTERM (`SigIgn` in /proc status).
fn ignores_sigterm(pid: i32) -> bool {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("SigIgn:"))
        .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
        .is_some_and(|mask| mask & (1 << (libc::SIGTERM - 1)) != 0)
}

/// `broker spawn` with extra flags; the broker is killed when the test ends.
fn spawn_broker_with(env: &mut Env, cwd: &Path, flags: &[&str], command: &[&str]) -> (Proc, Value) {
    let mut args = vec!["broker", "spawn", "--cwd", cwd.to_str().unwrap()];
    args.extend_from_slice(flags);
    args.push("--");
    args.extend_from_slice(command);
    let out = env.run(&args);
    assert!(
        out.status.success(),
        "broker spawn {flags:?}: {}",
        stderr(&out)
    );
    let record = parse(&out.stdout);
    (broker_of(&record), record)
}

fn broker_of(record: &Value) -> Proc {
    Proc {
        pid: i32::try_from(record["identity"]["pid"].as_i64().unwrap()).unwrap(),
        ticks: record["identity"]["start_ticks"].as_u64().unwrap(),
    }
}

/// A broker that ignores SIGTERM, with `grace`; returned once it really ignores it.
fn stubborn_broker(env: &mut Env, cwd: &Path, session: &str, grace: &str) -> Proc {
    let flags = ["--session", session, "--grace", grace];
    let (broker, _) = spawn_broker_with(
        env,
        cwd,
        &flags,
        &["sh", "-c", "trap '' TERM; exec sleep 600"],
    );
    assert!(
        wait_until(PATIENCE, || ignores_sigterm(broker.pid)),
        "the broker ignores SIGTERM"
    );
    broker
}

/// A process (a child of the test) whose argv carries `args`: a stand-in for a `claude --resume …`.
fn plant(env: &mut Env, args: &[&str]) -> Proc {
    let mut command = Command::new(named_python(env, "claude"));
    command
        .args(["-c", "import time; time.sleep(600)"])
        .args(args);
    env.spawn(command)
}

/// A test child holding an exclusive flock on `path` until it is killed; returned once it holds it.
fn hold_lock(env: &mut Env, path: &Path) -> Proc {
    let ready = env.work.path().join(format!("locked-{}", uuid()));
    let mut command = Command::new(python());
    command
        .args([
            "-c",
            "import fcntl, sys, time\n\
             f = open(sys.argv[1], 'a')\n\
             fcntl.flock(f, fcntl.LOCK_EX)\n\
             open(sys.argv[2], 'w').close()\n\
             time.sleep(600)\n",
        ])
        .arg(path)
        .arg(&ready);
    let holder = env.spawn(command);
    assert!(
        wait_until(PATIENCE, || ready.exists()),
        "the lock holder took {}",
        path.display()
    );
    holder
}

fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

/// A shell command line running our binary on this test's state root, after `prefix` (variable assignments).
fn bin_line(env: &Env, prefix: &str, args: &[&str]) -> String {
    let mut line = format!(
        "{prefix} {} --state-dir {}",
        shell_quote(BIN),
        shell_quote(env.state_dir().to_str().unwrap())
    );
    for arg in args {
        line.push(' ');
        line.push_str(&shell_quote(arg));
    }
    line
}

/// A fake agent: runs each step as `/bin/sh -c STEP` (the way agents run hooks), feeding it `stdin`, then writes
/// `{pid, steps: [{sh_pid, rc, stdout, stderr}]}` to a file and exits, or lingers when asked to.
const FAKE_AGENT: &str = r#"
import json, os, subprocess, sys, time
plan = json.loads(sys.argv[1])
results = []
for step in plan["steps"]:
    shell = subprocess.Popen(["/bin/sh", "-c", step["sh"] + "\nrc=$?; exit $rc"], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = shell.communicate(step["stdin"].encode(), timeout=60)
    results.append({"sh_pid": shell.pid, "rc": shell.returncode, "stdout": out.decode(), "stderr": err.decode()})
tmp = plan["done"] + ".tmp"
with open(tmp, "w") as f:
    json.dump({"pid": os.getpid(), "steps": results}, f)
os.rename(tmp, plan["done"])
if plan["linger"]:
    time.sleep(600)
"#;

struct Step {
    sh: String,
    stdin: String,
}

fn hook_step(env: &Env, args: &[&str], payload: &Value) -> Step {
    let mut full = vec!["hook"];
    full.extend_from_slice(args);
    Step {
        sh: bin_line(env, "", &full),
        stdin: payload.to_string(),
    }
}

fn bin_step(env: &Env, prefix: &str, args: &[&str]) -> Step {
    Step {
        sh: bin_line(env, prefix, args),
        stdin: String::new(),
    }
}

struct AgentRun {
    agent: Proc,
    steps: Vec<Value>,
}

/// Starts a fake agent process with `extra_argv` after its script, waits until it has run `steps`; it exits then,
/// or lingers (killed when the test ends).
fn fake_agent(env: &mut Env, steps: &[Step], linger: bool, extra_argv: &[&str]) -> AgentRun {
    fake_agent_named(env, "claude", steps, linger, extra_argv)
}

/// `fake_agent`, its program named `name` (an agent's executable: `gemini`, `codex`, …).
fn fake_agent_named(
    env: &mut Env,
    name: &str,
    steps: &[Step],
    linger: bool,
    extra_argv: &[&str],
) -> AgentRun {
    let done = env.work.path().join(format!("agent-{}.json", uuid()));
    let plan = json!({
        "steps": steps.iter().map(|s| json!({"sh": s.sh, "stdin": s.stdin})).collect::<Vec<_>>(),
        "done": done,
        "linger": linger,
    });
    let mut command = Command::new(named_python(env, name));
    command
        .arg("-c")
        .arg(FAKE_AGENT)
        .arg(plan.to_string())
        .args(extra_argv);
    scrub_env(&mut command);
    let agent = env.spawn(command);
    assert!(
        wait_until(PATIENCE * 2, || done.exists()),
        "the fake agent ran its steps"
    );
    let result = parse(&fs::read(&done).unwrap());
    assert_eq!(result["pid"], json!(agent.pid));
    let steps = result["steps"].as_array().unwrap().clone();
    AgentRun { agent, steps }
}

/// The broker a `broker spawn` step printed; tracked so that it dies with the test.
fn spawned_by_step(env: &mut Env, step: &Value) -> Value {
    assert_eq!(
        step["rc"], 0,
        "broker spawn step failed: {}",
        step["stderr"]
    );
    let record: Value =
        serde_json::from_str(step["stdout"].as_str().unwrap()).expect("spawn prints JSON");
    env.track(broker_of(&record));
    record
}

/// A unix socket that accepts connections (or, with `accept` false, never does) and never answers.
struct SilentListener {
    stop: Arc<AtomicBool>,
    held: Arc<Mutex<Vec<UnixStream>>>,
    thread: Option<JoinHandle<()>>,
}

impl SilentListener {
    fn bind(path: &Path, accept: bool) -> Self {
        let listener = UnixListener::bind(path).expect("bind the test socket");
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let held = Arc::new(Mutex::new(Vec::new()));
        let (stopping, holding) = (stop.clone(), held.clone());
        let thread = std::thread::spawn(move || {
            while !stopping.load(Ordering::SeqCst) {
                if accept {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            stream.set_nonblocking(true).unwrap();
                            holding.lock().unwrap().push(stream);
                            continue;
                        }
                        Err(err) if err.kind() == ErrorKind::WouldBlock => {}
                        Err(err) => panic!("accept: {err}"),
                    }
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        SilentListener {
            stop,
            held,
            thread: Some(thread),
        }
    }

    /// Everything received so far on the accepted connections.
    fn received(&self) -> String {
        let mut text = String::new();
        for stream in self.held.lock().unwrap().iter_mut() {
            let mut buffer = [0u8; 1024];
            while let Ok(read) = stream.read(&mut buffer) {
                if read == 0 {
                    break;
                }
                text.push_str(&String::from_utf8_lossy(&buffer[..read]));
            }
        }
        text
    }
}

impl Drop for SilentListener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// 1. Payloads: every sample, explicit agents, garbage

type Fixture = (String, String, Vec<u8>);

/// The start of the session a `SessionEnd` fixture ends, when the agent's samples hold one (`startup` preferred).
fn start_fixture_for<'a>(fixtures: &'a [Fixture], dir: &str, id: &str) -> Option<&'a Fixture> {
    let starts: Vec<&Fixture> = fixtures
        .iter()
        .filter(|(d, n, b)| {
            d == dir && n.starts_with("SessionStart") && parse(b)["session_id"] == id
        })
        .collect();
    let startup = starts
        .iter()
        .find(|(.., b)| parse(b)["source"] == "startup");
    startup.or(starts.first()).copied()
}

/// What a `SessionStart` payload must leave in its session record.
fn check_started(env: &Env, what: &str, sent: &Value, record: &Value, agent: Proc) {
    assert_eq!(record["source"], sent["source"], "{what}");
    assert!(
        record["ended_at"].is_null() && record["end_reason"].is_null(),
        "{what}: live"
    );
    if let Some(title) = sent.get("session_title") {
        assert_eq!(&record["title"], title, "{what}");
    }
    let identity = &record["agent_identity"];
    assert_eq!(
        identity["pid"],
        json!(agent.pid),
        "{what}: the agent is the recognised agent above the hook"
    );
    assert_eq!(identity["start_ticks"], json!(agent.ticks), "{what}");
    assert_eq!(env.events_where("session_start", None).len(), 1, "{what}");
}

/// What a `SessionEnd` payload must leave in its session record (`before`: the record its start left).
fn check_ended(env: &Env, what: &str, sent: &Value, record: &Value, before: Option<&Value>) {
    assert!(record["ended_at"].is_string(), "{what}: ended");
    assert_eq!(
        record["end_reason"], sent["reason"],
        "{what}: the agent's reason is kept"
    );
    if let Some(before) = before {
        if before.get("started_at").is_some() {
            assert_eq!(
                record["started_at"], before["started_at"],
                "{what}: the same record"
            );
        }
        assert_eq!(
            record["agent_identity"]["pid"], before["agent_identity"]["pid"],
            "{what}"
        );
        assert_eq!(
            record["agent_identity"]["start_ticks"], before["agent_identity"]["start_ticks"],
            "{what}"
        );
    }
    let ends = env.events_where("session_end", Some("session_end"));
    assert_eq!(ends.len(), 1, "{what}: {ends:?}");
    assert_eq!(ends[0]["session"], sent["session_id"], "{what}");
}

#[test]
fn every_fixture_payload_records_or_ends_its_session_with_the_agent_detected() {
    let fixtures = fixture_payloads();
    let names: Vec<String> = fixtures
        .iter()
        .map(|(dir, name, _)| format!("{dir}/{name}"))
        .collect();
    assert_eq!(
        fixtures.len(),
        20,
        "every sample payload is a fixture: {names:?}"
    );
    for dir in [
        "claude",
        "claude-2.1.330",
        "gemini",
        "gemini-0.61.0",
        "qwen",
        "codex",
    ] {
        assert!(
            fixtures.iter().any(|(d, ..)| d == dir),
            "fixtures for {dir}"
        );
    }
    for (dir, name, raw) in &fixtures {
        let what = format!("{dir}/{name}");
        let sent = parse(raw);
        let id = sent["session_id"].as_str().unwrap();
        let event = sent["hook_event_name"].as_str().unwrap();
        let mut env = Env::new();
        // Run by a fake agent named like the fixture's agent (only a recognised agent is one), lingering so that
        // its session stays live; its `SessionStart` first when the fixture ends a session the samples started.
        let flags = ["--agent", "auto", "--deadline", ROOMY];
        let start = start_fixture_for(&fixtures, dir, id).filter(|_| event == "SessionEnd");
        let mut steps: Vec<Step> = start
            .iter()
            .map(|(_, _, start)| hook_step(&env, &flags, &parse(start)))
            .collect();
        steps.push(hook_step(&env, &flags, &sent));
        let run = fake_agent_named(&mut env, agent_of_dir(dir), &steps, true, &[]);
        for step in &run.steps {
            assert_eq!(step["rc"], 0, "{what}: {step}");
            assert_eq!(step["stdout"], "", "{what}: {step}");
            assert_eq!(step["stderr"], "", "{what}: {step}");
        }
        let before =
            start.map(|_| json!({"agent_identity": crate::harness::identity_json(run.agent)}));
        let record = env
            .session_record(id)
            .unwrap_or_else(|| panic!("{what}: no session record"));
        assert_eq!(record["version"], 1, "{what}");
        assert_eq!(record["session_id"], id, "{what}");
        assert_eq!(
            record["agent"],
            agent_of_dir(dir),
            "{what}: agent from the transcript path"
        );
        assert_eq!(record["cwd"], sent["cwd"], "{what}");
        assert_eq!(record["transcript_path"], sent["transcript_path"], "{what}");
        assert!(
            record["host"].as_str().is_some_and(|h| !h.is_empty()),
            "{what}: host"
        );
        match event {
            "SessionStart" => check_started(&env, &what, &sent, &record, run.agent),
            "SessionEnd" => check_ended(&env, &what, &sent, &record, before.as_ref()),
            other => panic!("{what}: unexpected event {other}"),
        }
        assert!(
            env.events_where("hook", None).is_empty(),
            "{what}: no hook error"
        );
    }
}

#[test]
fn explicit_agent_flag_wins_over_detection_for_every_fixture() {
    for (dir, name, raw) in fixture_payloads() {
        let id = parse(&raw)["session_id"].as_str().unwrap().to_owned();
        let flag = match agent_of_dir(&dir) {
            "claude" => "gemini",
            "gemini" => "qwen",
            "qwen" => "codex",
            _ => "claude",
        };
        let mut env = Env::new();
        let out = hook(&mut env, &["--agent", flag, "--deadline", ROOMY], &raw);
        assert!(out.stderr.is_empty(), "{dir}/{name}: {}", stderr(&out));
        let record = env.session_record(&id).unwrap();
        assert_eq!(record["agent"], flag, "{dir}/{name} with --agent {flag}");
    }
}

#[test]
fn codex_payload_with_null_transcript_is_detected_from_the_codex_environment() {
    let env = Env::new();
    let mut sent = parse(&fs::read(payload_dir().join("codex/SessionStart.json")).unwrap());
    sent["transcript_path"] = Value::Null;
    // Codex 0.171.0 gives hooks no CODEX_THREAD_ID and no env file; its npm wrapper's marker is what is there.
    let env_file = env.work.path().join("codex.env");
    let mut command = env.cmd(&["hook"]);
    command
        .env("CODEX_MANAGED_BY_NPM", "1")
        .env("CODEX_ENV_FILE", &env_file);
    let out = run_bounded(command, Some(&bytes(&sent)));
    assert_hook_contract(&out, "codex hook");
    assert!(out.stderr.is_empty(), "{}", stderr(&out));
    let record = env
        .session_record(sent["session_id"].as_str().unwrap())
        .unwrap();
    assert_eq!(record["agent"], "codex");
    assert!(
        record.get("transcript_path").is_none_or(Value::is_null),
        "{record}"
    );
    assert!(
        !env_file.exists(),
        "CODEX_ENV_FILE is no agent's: nothing is written there"
    );
}

#[test]
fn garbage_on_stdin_exits_0_silently_with_one_stderr_line_and_one_event() {
    let long_id = format!(
        "{{\"session_id\":\"{}\",\"hook_event_name\":\"SessionStart\"}}",
        "a".repeat(300)
    );
    let inputs: Vec<(&str, Vec<u8>)> = vec![
        ("not json", b"not json".to_vec()),
        ("array", b"[]".to_vec()),
        ("empty object", b"{}".to_vec()),
        (
            "path id",
            br#"{"session_id":"../x","hook_event_name":"SessionStart"}"#.to_vec(),
        ),
        ("300-char id", long_id.into_bytes()),
        (
            "number id",
            br#"{"session_id":5,"hook_event_name":"SessionEnd"}"#.to_vec(),
        ),
        (
            "truncated",
            br#"{"session_id":"abc","hook_event_name":"SessionStart","cwd":"/x""#.to_vec(),
        ),
        ("empty stdin", Vec::new()),
    ];
    for (what, input) in inputs {
        let mut env = Env::new();
        let out = hook(&mut env, &[], &input);
        let text = stderr(&out);
        assert_eq!(
            text.lines().count(),
            1,
            "{what}: one stderr line, got {text:?}"
        );
        assert!(
            text.starts_with("session-reaper hook: "),
            "{what}: {text:?}"
        );
        let errors = env.events_where("hook", None);
        assert_eq!(errors.len(), 1, "{what}: one event: {errors:?}");
        assert_eq!(errors[0]["result"], "error", "{what}");
        assert!(
            text.contains(errors[0]["detail"].as_str().unwrap()),
            "{what}: stderr and event agree"
        );
        let files: Vec<PathBuf> = env
            .state_files()
            .into_iter()
            .map(|(path, _)| path)
            .collect();
        assert_eq!(
            files,
            [PathBuf::from("events.jsonl")],
            "{what}: nothing but the event written"
        );
    }
}

/// Bad hook flags, the way agents run us: `session-reaper hook …`, the state root from the environment.
fn bad_hook_flags(state_dir_flag: bool) {
    let sent = bytes(&payload("SessionStart", &uuid(), Path::new("/tmp")));
    for args in [
        &["--agent", "bogus"][..],
        &["--deadline", "soon"],
        &["--no-such-flag"],
    ] {
        let env = Env::new();
        let mut command = if state_dir_flag {
            env.cmd(&["hook"])
        } else {
            let mut command = Command::new(BIN);
            command.arg("hook");
            scrub_env(&mut command);
            command.env("SESSION_REAPER_STATE_DIR", env.state_dir());
            command
        };
        command.args(args);
        let out = run_bounded(command, Some(&sent));
        assert_hook_contract(&out, &format!("hook {args:?}"));
        assert_eq!(
            stderr(&out).lines().count(),
            1,
            "{args:?}: {}",
            stderr(&out)
        );
        let errors = env.events_where("hook", None);
        assert_eq!(errors.len(), 1, "{args:?}: {errors:?}");
        assert_eq!(errors[0]["result"], "error");
        assert!(
            env.state_files()
                .iter()
                .all(|(path, _)| path == Path::new("events.jsonl")),
            "{args:?}"
        );
    }
}

#[test]
fn bad_hook_flags_still_exit_0_silently_with_one_stderr_line_and_one_event() {
    bad_hook_flags(false);
}

#[test]
fn regression_bad_hook_flag_after_global_state_dir_still_exits_0() {
    bad_hook_flags(true);
}

#[test]
fn payload_followed_by_more_bytes_is_read_as_one_value() {
    let mut env = Env::new();
    let id = uuid();
    let mut input = bytes(&payload("SessionStart", &id, env.work.path()));
    input.extend_from_slice(b"\n{\"session_id\": \"other\"} trailing garbage");
    let out = hook(&mut env, &[], &input);
    assert!(out.stderr.is_empty(), "{}", stderr(&out));
    assert!(env.session_record(&id).is_some());
    assert!(env.session_record("other").is_none());
}

#[test]
fn session_end_of_a_never_started_session_leaves_a_complete_tombstone() {
    let mut env = Env::new();
    let raw = fs::read(payload_dir().join("claude/SessionEnd.other.json")).unwrap();
    let sent = parse(&raw);
    hook(&mut env, &[], &raw);
    let record = env
        .session_record(sent["session_id"].as_str().unwrap())
        .unwrap();
    assert!(record["ended_at"].is_string());
    assert_eq!(record["end_reason"], "other");
    assert_eq!(record["agent"], "claude", "{record}");
    assert_eq!(record["cwd"], sent["cwd"], "{record}");
    assert_eq!(
        record["transcript_path"], sent["transcript_path"],
        "{record}"
    );
}

#[test]
fn other_events_refresh_last_seen_without_ending_the_session() {
    let mut env = Env::new();
    let id = uuid();
    let ws = env.workspace("ws");
    start(&mut env, &id, &ws);
    let before = env.session_record(&id).unwrap();
    let out = hook(
        &mut env,
        &[],
        &bytes(&payload("UserPromptSubmit", &id, &ws)),
    );
    assert!(out.stderr.is_empty(), "{}", stderr(&out));
    let after = env.session_record(&id).unwrap();
    assert!(after["ended_at"].is_null());
    assert_eq!(after["started_at"], before["started_at"]);
    assert!(after["last_seen"].as_str() >= before["last_seen"].as_str());
    assert!(env.events_where("session_end", None).is_empty());
}

// ---------------------------------------------------------------------------------------------------------------
// 2. The deadline holds whatever stalls

#[test]
fn deadline_holds_when_stdin_never_sends_and_never_closes() {
    let env = Env::new();
    let (out, elapsed) = timed_hook(&env, &["--deadline", "1s"], b"", true, "silent open stdin");
    assert_within_deadline(elapsed, DEADLINE, "silent open stdin");
    assert_eq!(stderr(&out).lines().count(), 1, "{}", stderr(&out));
    assert_eq!(env.events_where("hook", None).len(), 1);
    // A longer stdin timeout than the deadline: the deadline still wins.
    let args = ["--deadline", "1s", "--stdin-timeout", "20s"];
    let (_, elapsed) = timed_hook(
        &env,
        &args,
        b"",
        true,
        "silent open stdin, long stdin timeout",
    );
    assert_within_deadline(elapsed, DEADLINE, "silent open stdin, long stdin timeout");
    // Half a payload and then silence.
    let (out, elapsed) = timed_hook(
        &env,
        &["--deadline", "1s"],
        b"{\"session_id\": \"ab",
        true,
        "half payload",
    );
    assert_within_deadline(elapsed, DEADLINE, "half payload");
    assert_eq!(stderr(&out).lines().count(), 1);
}

#[test]
fn deadline_holds_when_stdin_sends_a_payload_but_never_closes() {
    let mut env = Env::new();
    let ws = env.workspace("ws");
    let id = uuid();
    let sent = bytes(&payload("SessionStart", &id, &ws));
    let (out, elapsed) = timed_hook(
        &env,
        &["--deadline", "1s"],
        &sent,
        true,
        "start, open stdin",
    );
    assert_within_deadline(elapsed, DEADLINE, "start, open stdin");
    assert!(out.stderr.is_empty(), "{}", stderr(&out));
    assert!(env.session_record(&id).unwrap()["ended_at"].is_null());
    // The /clear case: SessionEnd's stdin is never closed.
    let broker = env.spawn_broker(&ws, &id, &["sleep", "600"]);
    let sent = bytes(&payload("SessionEnd", &id, &ws));
    let (out, elapsed) = timed_hook(&env, &["--deadline", "1s"], &sent, true, "end, open stdin");
    assert_within_deadline(elapsed, DEADLINE, "end, open stdin");
    assert!(out.stderr.is_empty(), "{}", stderr(&out));
    assert!(env.session_record(&id).unwrap()["ended_at"].is_string());
    assert!(broker.gone_within(PATIENCE), "the broker was stopped");
}

#[test]
fn deadline_holds_when_shutdown_socket_accepts_and_never_answers() {
    let mut env = Env::new();
    let id = uuid();
    let (ws, ws2) = (env.workspace("a"), env.workspace("b"));
    let (silent, deaf) = (
        env.work.path().join("silent.sock"),
        env.work.path().join("deaf.sock"),
    );
    let accepting = SilentListener::bind(&silent, true);
    let _never_accepting = SilentListener::bind(&deaf, false);
    let mut brokers = Vec::new();
    for (cwd, socket) in [(&ws, &silent), (&ws2, &deaf)] {
        let flags = [
            "--session",
            &id,
            "--shutdown-socket",
            socket.to_str().unwrap(),
            "--shutdown-message",
            "please stop",
        ];
        brokers.push(spawn_broker_with(&mut env, cwd, &flags, &["sleep", "600"]).0);
    }
    let sent = bytes(&payload("SessionEnd", &id, &ws));
    let (_, elapsed) = timed_hook(
        &env,
        &["--deadline", "1s"],
        &sent,
        false,
        "silent shutdown sockets",
    );
    assert_within_deadline(elapsed, DEADLINE, "silent shutdown sockets");
    for broker in brokers {
        assert!(
            broker.gone_within(PATIENCE),
            "broker {} stopped after its socket stayed silent",
            broker.pid
        );
    }
    assert!(
        wait_until(PATIENCE, || accepting.received().contains("please stop")),
        "the graceful message reached the socket"
    );
    settle(&env);
    assert_eq!(
        env.events_where("stop", Some("session_end")).len(),
        2,
        "{:?}",
        env.events()
    );
}

#[test]
fn deadline_holds_when_slot_lock_is_held_forever() {
    let mut env = Env::new();
    let ws = env.workspace("ws");
    let id = uuid();
    let broker = env.spawn_broker(&ws, &id, &["sleep", "600"]);
    let slots = slot_dirs(&env);
    assert_eq!(slots.len(), 1);
    let holder = hold_lock(&mut env, &slots[0].join("broker.lock"));
    let sent = bytes(&payload("SessionEnd", &id, &ws));
    let (out, elapsed) = timed_hook(
        &env,
        &["--deadline", "1s"],
        &sent,
        false,
        "slot lock held forever",
    );
    assert_within_deadline(elapsed, DEADLINE, "slot lock held forever");
    let text = stderr(&out);
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(text.contains("busy"), "the busy slot is named: {text}");
    assert_eq!(
        env.events_where("hook", None).len(),
        1,
        "{:?}",
        env.events()
    );
    assert!(broker.alive(), "nothing decided without the lock");
    let records = env.records();
    assert_eq!(
        owners(records.values().next().unwrap()),
        [id.as_str()],
        "the record is untouched"
    );
    assert!(
        env.session_record(&id).unwrap()["ended_at"].is_string(),
        "the session is ended anyway"
    );
    // Once the lock is free, ending the session again finishes the job.
    holder.kill();
    assert!(holder.gone_within(PATIENCE));
    env.reap_children();
    let out = end(&mut env, &id, &ws);
    assert!(out.stderr.is_empty(), "{}", stderr(&out));
    assert!(
        broker.gone_within(PATIENCE),
        "stopped on the second SessionEnd"
    );
}

#[test]
fn deadline_holds_when_broker_ignores_sigterm_and_finisher_sigkills_it() {
    let mut env = Env::new();
    let ws = env.workspace("ws");
    let id = uuid();
    let broker = stubborn_broker(&mut env, &ws, &id, "5s");
    let sent = bytes(&payload("SessionEnd", &id, &ws));
    let (out, elapsed) = timed_hook(
        &env,
        &["--deadline", "1s"],
        &sent,
        false,
        "SIGTERM ignored, 5s grace",
    );
    let handed_over = Instant::now();
    assert_within_deadline(elapsed, DEADLINE, "SIGTERM ignored, 5s grace");
    assert!(out.stderr.is_empty(), "{}", stderr(&out));
    assert!(
        broker.alive(),
        "still inside its grace when the hook returned"
    );
    assert_eq!(env.tickets().len(), 1, "the stop is handed on as a ticket");
    assert!(
        broker.gone_within(Duration::from_secs(15)),
        "the finisher SIGKILLed it within grace + 10 s"
    );
    eprintln!(
        "stubborn broker gone {:?} after the hook returned",
        handed_over.elapsed()
    );
    assert!(
        wait_until(PATIENCE, || env.tickets().is_empty()),
        "the ticket was removed"
    );
    settle(&env);
    let stops = env.events_where("stop", Some("session_end"));
    assert_eq!(stops.len(), 1, "{stops:?}");
    assert_eq!(stops[0]["result"], "stopped");
    assert!(
        stops[0]["detail"].as_str().unwrap().contains("SIGKILL"),
        "{stops:?}"
    );
    assert!(
        wait_until(PATIENCE, || finishers(&env).is_empty()),
        "the finisher exits when no ticket is left"
    );
}

// ---------------------------------------------------------------------------------------------------------------
// 3. The agent identity, env files, resume and /clear

#[test]
fn session_start_records_the_fake_agent_not_its_shell() {
    let mut env = Env::new();
    let ws = env.workspace("ws");
    let id = uuid();
    let step = hook_step(&env, &[], &payload("SessionStart", &id, &ws));
    let run = fake_agent(&mut env, &[step], false, &[]);
    assert_eq!(run.steps[0]["rc"], 0);
    assert_eq!(run.steps[0]["stdout"], "", "SessionStart prints nothing");
    assert_eq!(run.steps[0]["stderr"], "");
    let record = env.session_record(&id).unwrap();
    assert_eq!(
        record["agent_identity"]["pid"],
        json!(run.agent.pid),
        "the agent, not sh"
    );
    assert_ne!(record["agent_identity"]["pid"], run.steps[0]["sh_pid"]);
    assert_eq!(
        record["agent_identity"]["start_ticks"],
        json!(run.agent.ticks)
    );
    assert_eq!(
        record["agent_identity"]["uid"],
        json!(unsafe { libc::getuid() })
    );
    assert_eq!(record["agent"], "claude");
}

#[test]
fn owner_pid_overrides_the_detected_agent_process() {
    let mut env = Env::new();
    let ws = env.workspace("ws");
    let id = uuid();
    let sleeper = env.sleeper();
    let pid = sleeper.pid.to_string();
    hook(
        &mut env,
        &["--owner-pid", &pid],
        &bytes(&payload("SessionStart", &id, &ws)),
    );
    let record = env.session_record(&id).unwrap();
    assert_eq!(record["agent_identity"]["pid"], json!(sleeper.pid));
    assert_eq!(
        record["agent_identity"]["start_ticks"],
        json!(sleeper.ticks)
    );
    // A pid that cannot exist: an error, and no record.
    let other = uuid();
    let out = hook(
        &mut env,
        &["--owner-pid", "2147483647"],
        &bytes(&payload("SessionStart", &other, &ws)),
    );
    assert_eq!(stderr(&out).lines().count(), 1, "{}", stderr(&out));
    assert!(stderr(&out).contains("2147483647"));
    assert!(env.session_record(&other).is_none());
}

#[test]
fn session_start_exports_session_id_to_claudes_env_file() {
    let env = Env::new();
    let ws = env.workspace("ws");
    let id = uuid();
    let claude_file = env.work.path().join("claude.env");
    fs::write(&claude_file, "export EARLIER='kept'\n").unwrap();
    let mut command = env.cmd(&["hook"]);
    command.env("CLAUDE_ENV_FILE", &claude_file);
    let out = run_bounded(command, Some(&bytes(&payload("SessionStart", &id, &ws))));
    assert_hook_contract(&out, "SessionStart with env files");
    assert!(out.stderr.is_empty(), "{}", stderr(&out));
    let line = format!("export SESSION_REAPER_SESSION_ID='{id}'\n");
    assert_eq!(
        fs::read_to_string(&claude_file).unwrap(),
        format!("export EARLIER='kept'\n{line}")
    );
    // Sourced by a later tool command, the line sets the variable.
    let sourced = Command::new("/bin/sh")
        .arg("-c")
        .arg(r#". "$1"; printf %s "$SESSION_REAPER_SESSION_ID""#)
        .arg("sh")
        .arg(&claude_file)
        .output()
        .unwrap();
    assert_eq!(stdout(&sourced), id);
    // SessionEnd never writes.
    let mut command = env.cmd(&["hook"]);
    command.env("CLAUDE_ENV_FILE", &claude_file);
    assert_hook_contract(
        &run_bounded(command, Some(&bytes(&payload("SessionEnd", &id, &ws)))),
        "end",
    );
    assert_eq!(
        fs::read_to_string(&claude_file).unwrap().lines().count(),
        2,
        "SessionEnd wrote to the env file"
    );
}

#[test]
fn resume_refreshes_the_same_record_and_clear_gets_a_new_one() {
    let mut env = Env::new();
    let ws = env.workspace("ws");
    let (first, after_clear) = (uuid(), uuid());
    start(&mut env, &first, &ws);
    let original = env.session_record(&first).unwrap();
    let mut clear = payload("SessionEnd", &first, &ws);
    clear["reason"] = json!("clear");
    hook(&mut env, &[], &bytes(&clear));
    assert_eq!(env.session_record(&first).unwrap()["end_reason"], "clear");
    let mut new_start = payload("SessionStart", &after_clear, &ws);
    new_start["source"] = json!("clear");
    hook(&mut env, &[], &bytes(&new_start));
    let fresh = env.session_record(&after_clear).unwrap();
    assert_eq!(fresh["source"], "clear");
    assert!(fresh["ended_at"].is_null());
    assert_eq!(
        env.session_record(&first).unwrap()["end_reason"],
        "clear",
        "the old id stays ended"
    );
    // `claude --resume first`: the same record, live again, with the new source and title.
    let mut resume = payload("SessionStart", &first, &ws);
    resume["source"] = json!("resume");
    resume["session_title"] = json!("auth-work");
    hook(&mut env, &[], &bytes(&resume));
    let resumed = env.session_record(&first).unwrap();
    assert!(
        resumed["ended_at"].is_null() && resumed["end_reason"].is_null(),
        "{resumed}"
    );
    assert_eq!(resumed["source"], "resume");
    assert_eq!(resumed["title"], "auth-work");
    assert_eq!(
        resumed["started_at"], original["started_at"],
        "the same record, refreshed"
    );
    assert!(resumed["last_seen"].as_str() >= original["last_seen"].as_str());
    let mut sessions: Vec<String> = fs::read_dir(env.state_dir().join("sessions"))
        .unwrap()
        .filter_map(|e| {
            e.ok()?
                .file_name()
                .to_str()?
                .strip_suffix(".json")
                .map(str::to_owned)
        })
        .collect();
    sessions.sort();
    let mut expected = vec![first, after_clear];
    expected.sort();
    assert_eq!(sessions, expected);
}

// ---------------------------------------------------------------------------------------------------------------
// 4. Owners: agent ancestry and environment precedence

#[test]
fn broker_spawn_finds_its_owner_by_agent_ancestry_without_env() {
    let mut env = Env::new();
    let ws = env.workspace("ws");
    let id = uuid();
    let steps = [
        hook_step(&env, &[], &payload("SessionStart", &id, &ws)),
        bin_step(
            &env,
            "",
            &[
                "broker",
                "spawn",
                "--json",
                "--cwd",
                ws.to_str().unwrap(),
                "--",
                "sleep",
                "600",
            ],
        ),
    ];
    let run = fake_agent(&mut env, &steps, true, &[]);
    let record = spawned_by_step(&mut env, &run.steps[1]);
    assert_eq!(
        owners(&record),
        [id.as_str()],
        "the session whose agent is an ancestor owns it"
    );
    assert_eq!(record["reused"], false);
    // The test itself is no descendant of that agent: it finds no owner.
    let out = env.run(&[
        "broker",
        "spawn",
        "--cwd",
        ws.to_str().unwrap(),
        "--",
        "sleep",
        "600",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    // And the owner is real: ending the session stops the broker.
    end(&mut env, &id, &ws);
    assert!(broker_of(&record).gone_within(PATIENCE));
    assert!(run.agent.alive(), "the agent is never touched");
}

#[test]
fn broker_owner_precedence_is_flag_then_env_vars_then_ancestry() {
    let mut env = Env::new();
    let id = uuid();
    let (flag, ours, claude, gemini) = (uuid(), uuid(), uuid(), uuid());
    let all = format!(
        "SESSION_REAPER_SESSION_ID={ours} CLAUDE_CODE_SESSION_ID={claude} GEMINI_SESSION_ID={gemini}"
    );
    let cases: Vec<(String, Vec<&str>, &str)> = vec![
        (String::new(), vec![], id.as_str()),
        (
            format!("GEMINI_SESSION_ID={gemini}"),
            vec![],
            gemini.as_str(),
        ),
        (
            format!("CLAUDE_CODE_SESSION_ID={claude} GEMINI_SESSION_ID={gemini}"),
            vec![],
            claude.as_str(),
        ),
        (all.clone(), vec![], ours.as_str()),
        (all, vec!["--session", flag.as_str()], flag.as_str()),
        (
            format!("SESSION_REAPER_SESSION_ID= CLAUDE_CODE_SESSION_ID={claude}"),
            vec![],
            claude.as_str(),
        ),
    ];
    let first_ws = env.workspace("case0");
    let mut steps = vec![hook_step(
        &env,
        &[],
        &payload("SessionStart", &id, &first_ws),
    )];
    for (index, (prefix, flags, _)) in cases.iter().enumerate() {
        let ws = env.workspace(&format!("case{index}"));
        let mut args = vec!["broker", "spawn", "--json", "--cwd", ws.to_str().unwrap()];
        args.extend(flags);
        args.extend(["--", "sleep", "600"]);
        let args: Vec<String> = args.into_iter().map(str::to_owned).collect();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        steps.push(bin_step(&env, prefix, &args));
    }
    let run = fake_agent(&mut env, &steps, true, &[]);
    for (index, (prefix, flags, expected)) in cases.iter().enumerate() {
        let record = spawned_by_step(&mut env, &run.steps[index + 1]);
        assert_eq!(
            owners(&record),
            [expected.to_string()],
            "case {index}: {prefix} {flags:?}"
        );
    }
}

#[test]
fn broker_spawn_without_any_owner_is_refused_unless_no_owner() {
    let mut env = Env::new();
    let ws = env.workspace("ws");
    let out = env.run(&[
        "broker",
        "spawn",
        "--cwd",
        ws.to_str().unwrap(),
        "--",
        "sleep",
        "600",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("no owner"), "{}", stderr(&out));
    assert!(env.records().is_empty(), "nothing started");
    let (_, record) = spawn_broker_with(&mut env, &ws, &["--no-owner"], &["sleep", "600"]);
    assert!(owners(&record).is_empty());
}

#[test]
fn ended_session_cannot_own_a_broker() {
    let mut env = Env::new();
    let ws = env.workspace("ws");
    let id = uuid();
    start(&mut env, &id, &ws);
    end(&mut env, &id, &ws);
    let cwd = ws.to_str().unwrap();
    let out = env.run(&[
        "broker",
        "spawn",
        "--cwd",
        cwd,
        "--session",
        &id,
        "--",
        "sleep",
        "600",
    ]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "--session of an ended session: {}",
        stderr(&out)
    );
    let mut command = env.cmd(&["broker", "spawn", "--cwd", cwd, "--", "sleep", "600"]);
    command.env("SESSION_REAPER_SESSION_ID", &id);
    let out = env.run_command(command);
    assert_eq!(
        out.status.code(),
        Some(2),
        "$SESSION_REAPER_SESSION_ID of an ended session: {}",
        stderr(&out)
    );
    // Our test process is that session's recorded agent; ancestry must not pick an ended session either.
    let out = env.run(&["broker", "spawn", "--cwd", cwd, "--", "sleep", "600"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "ancestry of an ended session: {}",
        stderr(&out)
    );
    assert!(env.records().is_empty(), "nothing started");
}

// ---------------------------------------------------------------------------------------------------------------
// 5. SessionEnd across workspaces

#[test]
fn regression_session_end_stops_broker_of_a_worktree_or_another_repo() {
    let mut env = Env::new();
    let id = uuid();
    let main_repo = env.workspace("main");
    let worktree = env.work.path().join("main-wt");
    fs::create_dir_all(worktree.join("src")).unwrap();
    fs::write(
        worktree.join(".git"),
        "gitdir: ../main/.git/worktrees/main-wt\n",
    )
    .unwrap();
    let other_repo = env.workspace("other");
    start(&mut env, &id, &main_repo);
    let in_worktree = env.spawn_broker(&worktree.join("src"), &id, &["sleep", "600"]);
    let in_other = env.spawn_broker(&other_repo, &id, &["sleep", "600"]);
    let workspaces: Vec<String> = env
        .records()
        .values()
        .map(|r| r["workspace"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        workspaces.contains(
            &fs::canonicalize(&worktree)
                .unwrap()
                .to_string_lossy()
                .into_owned()
        ),
        "{workspaces:?}"
    );
    let out = end(&mut env, &id, &main_repo);
    assert!(out.stderr.is_empty(), "{}", stderr(&out));
    assert!(
        in_worktree.gone_within(PATIENCE),
        "the worktree's broker was found from the main repo's SessionEnd"
    );
    assert!(
        in_other.gone_within(PATIENCE),
        "another repository's broker was found too"
    );
    settle(&env);
    assert!(env.records().is_empty());
    assert_eq!(
        env.events_where("stop", Some("session_end")).len(),
        2,
        "{:?}",
        env.events()
    );
}

#[test]
fn regression_shared_broker_survives_the_end_of_one_owner() {
    let mut env = Env::new();
    let ws = env.workspace("ws");
    let (a, b) = (uuid(), uuid());
    let broker = env.spawn_broker(&ws, &a, &["sleep", "600"]);
    let (again, record) = spawn_broker_with(&mut env, &ws, &["--session", &b], &["sleep", "600"]);
    assert_eq!(again, broker);
    assert_eq!(record["reused"], true);
    let out = end(&mut env, &a, &ws);
    assert!(out.stderr.is_empty(), "{}", stderr(&out));
    assert!(broker.alive(), "session B still owns it");
    assert_eq!(owners(env.records().values().next().unwrap()), [b.as_str()]);
    assert!(
        env.events_where("stop", None).is_empty(),
        "{:?}",
        env.events()
    );
    let removed = env.events_where("owner_remove", Some("session_end"));
    assert_eq!(removed.len(), 1);
    assert_eq!(removed[0]["session"], json!(a));
    end(&mut env, &b, &ws);
    assert!(
        broker.gone_within(PATIENCE),
        "the last owner's end stops it"
    );
}

#[test]
fn regression_another_hosts_record_is_left_alone_by_session_end() {
    let mut env = Env::new();
    let ws = env.workspace("shared-home");
    let id = uuid();
    start(&mut env, &id, &ws);
    let broker = env.spawn_broker(&ws, &id, &["sleep", "600"]);
    // The state root is shared over a network home: the record was written by another host.
    let path = walk_records(&env);
    let mut record: Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
    record["host"] = json!("another-host.example");
    let planted = serde_json::to_vec_pretty(&record).unwrap();
    fs::write(&path, &planted).unwrap();
    let out = end(&mut env, &id, &ws);
    assert!(out.stderr.is_empty(), "{}", stderr(&out));
    assert_eq!(
        fs::read(&path).unwrap(),
        planted,
        "neither acted on nor pruned"
    );
    assert!(broker.alive(), "another host's broker is never signalled");
    let tickets = fs::read_dir(env.state_dir().join("stopping"))
        .unwrap()
        .count();
    assert_eq!(tickets, 0, "no stop ticket for another host's broker");
    assert!(
        events_for(&env, broker.pid)
            .iter()
            .all(|e| e["action"] == "spawn"),
        "{:?}",
        env.events()
    );
}

/// The path of the only broker.json under the state root.
fn walk_records(env: &Env) -> PathBuf {
    let workspaces = env.state_dir().join("workspaces");
    let found: Vec<PathBuf> = fs::read_dir(&workspaces)
        .unwrap()
        .flatten()
        .flat_map(|ws| {
            fs::read_dir(ws.path())
                .unwrap()
                .flatten()
                .map(|slot| slot.path().join("broker.json"))
        })
        .filter(|path| path.exists())
        .collect();
    assert_eq!(found.len(), 1, "{found:?}");
    found.into_iter().next().unwrap()
}

#[test]
fn regression_legacy_ownerless_slot_is_left_alone_by_session_end() {
    let mut env = Env::new();
    let (legacy_ws, owned_ws) = (env.workspace("legacy"), env.workspace("owned"));
    let id = uuid();
    let (legacy, before) =
        spawn_broker_with(&mut env, &legacy_ws, &["--no-owner"], &["sleep", "600"]);
    let owned = env.spawn_broker(&owned_ws, &id, &["sleep", "600"]);
    end(&mut env, &id, &legacy_ws);
    assert!(owned.gone_within(PATIENCE));
    assert!(
        legacy.alive(),
        "an ownerless broker is never stopped by a session end"
    );
    let records = env.records();
    assert_eq!(records.len(), 1);
    let after = records.values().next().unwrap();
    assert_eq!(after["identity"], before["identity"]);
    assert!(owners(after).is_empty());
    assert!(
        events_for(&env, legacy.pid)
            .iter()
            .all(|e| e["action"] == "spawn"),
        "{:?}",
        env.events()
    );
}

// ---------------------------------------------------------------------------------------------------------------
// 6. `--resume` orphans

#[test]
fn session_end_stops_resume_orphans_in_every_argv_form() {
    let mut env = Env::new();
    let ws = env.workspace("ws");
    let id = uuid();
    start(&mut env, &id, &ws);
    let (equals, terse) = (format!("--resume={id}"), format!("-r{id}"));
    let forms: Vec<Vec<&str>> = vec![
        vec!["--resume", id.as_str()],
        vec![equals.as_str()],
        vec!["-r", id.as_str()],
        vec![terse.as_str()],
        vec!["--model", "x", "--resume", id.as_str()],
    ];
    let orphans: Vec<Proc> = forms.iter().map(|form| plant(&mut env, form)).collect();
    let sent = bytes(&payload("SessionEnd", &id, &ws));
    let (out, elapsed) = timed_hook(
        &env,
        &["--deadline", "1s"],
        &sent,
        false,
        "five resume orphans",
    );
    assert_within_deadline(elapsed, DEADLINE, "five resume orphans");
    assert!(out.stderr.is_empty(), "{}", stderr(&out));
    for (orphan, form) in orphans.iter().zip(&forms) {
        assert!(orphan.gone_within(PATIENCE), "orphan {form:?} stopped");
    }
    settle(&env);
    for (orphan, form) in orphans.iter().zip(&forms) {
        let stops: Vec<Value> = events_for(&env, orphan.pid)
            .into_iter()
            .filter(|e| e["action"] == "stop" && e["reason"] == "resume_orphan")
            .collect();
        assert_eq!(stops.len(), 1, "{form:?}: {:?}", env.events());
        assert_eq!(stops[0]["result"], "stopped");
        assert_eq!(stops[0]["session"], json!(id));
    }
}

#[test]
fn session_end_stops_orphans_resuming_the_recorded_title() {
    let mut env = Env::new();
    let ws = env.workspace("ws");
    let id = uuid();
    let title = format!("title-{}", uuid());
    let mut sent = payload("SessionStart", &id, &ws);
    sent["session_title"] = json!(title);
    hook(&mut env, &[], &bytes(&sent));
    let equals = format!("--resume={title}");
    let by_title = plant(&mut env, &["--resume", &title]);
    let by_title_equals = plant(&mut env, &[equals.as_str()]);
    let terse = plant(&mut env, &["-r", &title]);
    end(&mut env, &id, &ws);
    assert!(by_title.gone_within(PATIENCE), "--resume <title> stopped");
    assert!(
        by_title_equals.gone_within(PATIENCE),
        "--resume=<title> stopped"
    );
    settle(&env);
    assert!(terse.alive(), "a title is only trusted in the long forms");
    assert!(events_for(&env, terse.pid).is_empty());
    assert_eq!(
        env.events_where("stop", Some("resume_orphan")).len(),
        2,
        "{:?}",
        env.events()
    );
}

#[test]
fn resume_orphans_match_exact_tokens_only_and_spare_claude_workers() {
    let mut env = Env::new();
    let ws = env.workspace("ws");
    let id = uuid();
    let (longer, terse_longer, prefix) = (format!("{id}1"), format!("-r{id}1"), format!("x{id}"));
    let survivors = [
        plant(&mut env, &["--resume", &longer]),
        plant(&mut env, &[terse_longer.as_str()]),
        plant(&mut env, &["--resume", &prefix]),
        plant(&mut env, &["--bg-pty-host", "--resume", &id]),
        plant(&mut env, &["--resume", &id, "--bg-spare"]),
        plant(&mut env, &["--resume"]),
    ];
    let control = plant(&mut env, &["--resume", &id]);
    let out = end(&mut env, &id, &ws);
    assert!(out.stderr.is_empty(), "{}", stderr(&out));
    assert!(control.gone_within(PATIENCE), "the exact match is stopped");
    settle(&env);
    for survivor in survivors {
        assert!(survivor.alive(), "{:?} must survive", argv_of(survivor.pid));
        assert!(
            events_for(&env, survivor.pid).is_empty(),
            "{:?}",
            env.events()
        );
    }
}

#[test]
fn regression_session_end_hook_never_stops_its_own_agent_that_resumes_the_session() {
    let mut env = Env::new();
    let ws = env.workspace("ws");
    let id = uuid();
    let orphan = plant(&mut env, &["--resume", &id]);
    let steps = [
        hook_step(&env, &[], &payload("SessionStart", &id, &ws)),
        hook_step(
            &env,
            &["--deadline", "1s"],
            &payload("SessionEnd", &id, &ws),
        ),
    ];
    // `claude --resume <id>` runs its SessionEnd hook as a grandchild through `sh -c`.
    let run = fake_agent(&mut env, &steps, true, &["--resume", &id]);
    for step in &run.steps {
        assert_eq!(step["rc"], 0);
        assert_eq!(step["stdout"], "");
        assert_eq!(step["stderr"], "", "{step}");
    }
    assert!(
        orphan.gone_within(PATIENCE),
        "the planted orphan is stopped"
    );
    settle(&env);
    assert!(run.agent.alive(), "the hook's own agent survives");
    assert!(
        events_for(&env, run.agent.pid).is_empty(),
        "{:?}",
        env.events()
    );
}

#[test]
fn resume_orphan_scan_spares_the_agent_of_another_live_session_after_clear() {
    let mut env = Env::new();
    let ws = env.workspace("ws");
    let (old, new) = (uuid(), uuid());
    let mut clear_end = payload("SessionEnd", &old, &ws);
    clear_end["reason"] = json!("clear");
    let mut clear_start = payload("SessionStart", &new, &ws);
    clear_start["source"] = json!("clear");
    // The agent was started as `--resume old`; /clear ended `old` and started `new` in the same process.
    let steps = [
        hook_step(&env, &[], &clear_end),
        hook_step(&env, &[], &clear_start),
    ];
    let run = fake_agent(&mut env, &steps, true, &["--resume", &old]);
    assert_eq!(
        env.session_record(&new).unwrap()["agent_identity"]["pid"],
        json!(run.agent.pid)
    );
    let orphan = plant(&mut env, &["--resume", &old]);
    // Reaping `old` from outside the agent's tree: only the agent of the live session `new` protects it.
    let out = env.run(&["reap", "--session", &old]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    assert!(orphan.gone_within(PATIENCE), "the real orphan is stopped");
    assert!(
        run.agent.alive(),
        "the agent of live session {new} survives"
    );
    assert!(
        events_for(&env, run.agent.pid).is_empty(),
        "{:?}",
        env.events()
    );
}

// ---------------------------------------------------------------------------------------------------------------
// 7. The finisher

/// Ends `id` whose broker ignores SIGTERM, finds the finisher the hook started and kills it: the ticket must stay.
fn finisher_killed_mid_stop(env: &mut Env, grace: &str) -> Proc {
    let ws = env.workspace("ws");
    let id = uuid();
    let broker = stubborn_broker(env, &ws, &id, grace);
    let out = end(env, &id, &ws);
    assert!(out.stderr.is_empty(), "{}", stderr(&out));
    let mut found = Vec::new();
    assert!(wait_until(PATIENCE, || {
        found = finishers(env);
        !found.is_empty()
    }));
    assert_eq!(found.len(), 1, "one finisher");
    let finisher = found[0];
    assert!(argv_of(finisher.pid).iter().any(|arg| arg == "finish"));
    unsafe { libc::kill(finisher.pid, libc::SIGKILL) };
    assert!(finisher.gone_within(PATIENCE));
    assert!(
        broker.alive(),
        "the finisher was killed inside the grace (a slower box needs a longer grace)"
    );
    assert_eq!(env.tickets().len(), 1, "the ticket outlives its finisher");
    broker
}

#[test]
fn killed_finisher_leaves_its_ticket_to_the_next_finisher() {
    let mut env = Env::new();
    let broker = finisher_killed_mid_stop(&mut env, "6s");
    let out = env.run(&["finish"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(broker.gone_within(PATIENCE));
    assert!(env.tickets().is_empty());
    let stops = env.events_where("stop", Some("session_end"));
    assert_eq!(stops.len(), 1, "{stops:?}");
    assert!(
        stops[0]["detail"].as_str().unwrap().contains("SIGKILL"),
        "{stops:?}"
    );
}

#[test]
fn killed_finisher_leaves_its_ticket_to_the_next_session_end_hook() {
    let mut env = Env::new();
    let broker = finisher_killed_mid_stop(&mut env, "6s");
    // Any later SessionEnd, even of a session that owns nothing, hands the leftover ticket to a new finisher.
    let ws = env.workspace("elsewhere");
    let out = end(&mut env, &uuid(), &ws);
    assert!(out.stderr.is_empty(), "{}", stderr(&out));
    assert!(
        broker.gone_within(Duration::from_secs(16)),
        "finished by the next hook's finisher"
    );
    assert!(wait_until(PATIENCE, || env.tickets().is_empty()));
    assert!(wait_until(PATIENCE, || finishers(&env).is_empty()));
}

#[test]
fn only_one_finisher_works_at_a_time() {
    let mut env = Env::new();
    let ws = env.workspace("ws");
    let id = uuid();
    let lock = env.state_dir().join("finisher.lock");
    let holder = hold_lock(&mut env, &lock);
    let broker = stubborn_broker(&mut env, &ws, &id, "1s");
    end(&mut env, &id, &ws);
    assert_eq!(env.tickets().len(), 1);
    // The hook's finisher found the lock taken and left; so does one run by hand.
    let out = env.run(&["finish"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        broker.alive(),
        "no second finisher worked while the lock was held"
    );
    assert_eq!(env.tickets().len(), 1);
    assert!(wait_until(PATIENCE, || finishers(&env).is_empty()));
    holder.kill();
    assert!(holder.gone_within(PATIENCE));
    env.reap_children();
    let out = env.run(&["finish"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(broker.gone_within(PATIENCE));
    assert!(env.tickets().is_empty());
}

#[test]
fn regression_finisher_leaves_another_hosts_ticket_alone_and_exits() {
    let mut env = Env::new();
    // A state root shared over a network home: another host's ticket, for a process of ours that has its pid.
    let sleeper = env.sleeper();
    let boot_id = fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .unwrap()
        .trim()
        .to_owned();
    let ticket = json!({
        "version": 1,
        "identity": {"boot_id": boot_id, "pid": sleeper.pid, "start_ticks": sleeper.ticks,
                     "uid": unsafe { libc::getuid() }},
        "reason": "session_end",
        "requested_at": "2026-01-01T00:00:00Z",
        "grace_ms": 100,
        "attempts": 0,
        "origin": "resume-orphan",
        "host": format!("not-this-host-{}", uuid()),
    });
    fs::create_dir_all(env.state_dir().join("stopping")).unwrap();
    let path = env
        .state_dir()
        .join("stopping")
        .join(format!("foreign-{}.json", sleeper.pid));
    fs::write(&path, serde_json::to_vec_pretty(&ticket).unwrap()).unwrap();
    let started = Instant::now();
    let out = env.run(&["finish"]);
    eprintln!(
        "finish with only a foreign ticket took {:?}",
        started.elapsed()
    );
    assert!(
        out.status.success(),
        "the finisher exits instead of spinning: {}",
        stderr(&out)
    );
    assert!(sleeper.alive(), "another host's ticket is never acted on");
    assert!(path.exists(), "nor dropped");
    // Nor does a hook start finishers for it.
    let ws = env.workspace("ws");
    end(&mut env, &uuid(), &ws);
    assert!(finishers(&env).is_empty());
}

// ---------------------------------------------------------------------------------------------------------------
// 8. `reap --session`

/// A session owning a broker, with a resume orphan: what `reap` acts on.
fn reapable(env: &mut Env) -> (String, Proc, Proc) {
    let ws = env.workspace("ws");
    let id = uuid();
    start(env, &id, &ws);
    let broker = env.spawn_broker(&ws, &id, &["sleep", "600"]);
    let orphan = plant(env, &["--resume", &id]);
    (id, broker, orphan)
}

#[test]
fn reap_reports_each_action_with_reason_and_result() {
    let mut env = Env::new();
    let (id, broker, orphan) = reapable(&mut env);
    let out = env.run(&["reap", "--session", &id]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let report = stdout(&out);
    eprintln!("{report}");
    assert!(broker.gone_within(PATIENCE) && orphan.gone_within(PATIENCE));
    assert!(
        report.contains(&format!("session {id} ended (manual)")),
        "{report}"
    );
    let line_of = |pid: i32, reason: &str| {
        report.lines().any(|line| {
            line.contains(&format!(" {pid} ")) && line.contains(reason) && line.contains("stopped")
        })
    };
    assert!(
        line_of(broker.pid, "manual"),
        "the broker's stop, reason and result: {report}"
    );
    assert!(
        line_of(orphan.pid, "resume_orphan"),
        "the orphan's stop, reason and result: {report}"
    );
    assert!(env.session_record(&id).unwrap()["end_reason"] == "manual");
}

#[test]
fn reap_json_parses_and_names_each_stop() {
    let mut env = Env::new();
    let (id, broker, orphan) = reapable(&mut env);
    let out = env.run(&[
        "reap",
        "--session",
        &id,
        "--reason",
        "session_end",
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let report = parse(&out.stdout);
    assert_eq!(report["dry_run"], false);
    assert_eq!(report["sessions"][0]["session"], json!(id));
    assert_eq!(report["sessions"][0]["slots"][0]["stopping"], true);
    let stops = report["stops"].as_array().unwrap();
    assert_eq!(stops.len(), 2, "{report}");
    for (proc, reason) in [(broker, "session_end"), (orphan, "resume_orphan")] {
        let stop = stops
            .iter()
            .find(|s| s["ticket"]["identity"]["pid"] == json!(proc.pid))
            .expect("a stop");
        assert_eq!(stop["ticket"]["reason"], reason);
        assert_eq!(stop["outcome"]["result"], "stopped");
        assert!(proc.gone_within(PATIENCE));
    }
}

#[test]
fn reap_dry_run_signals_nothing_and_writes_nothing() {
    let mut env = Env::new();
    let (id, broker, orphan) = reapable(&mut env);
    let before = env.state_files();
    let out = env.run(&["reap", "--session", &id, "--dry-run"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let report = stdout(&out);
    assert!(report.contains("would"), "{report}");
    assert!(
        report.contains(&broker.pid.to_string()) && report.contains(&orphan.pid.to_string()),
        "{report}"
    );
    let out = env.run(&["reap", "--session", &id, "--dry-run", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let json = parse(&out.stdout);
    assert_eq!(json["dry_run"], true);
    assert_eq!(json["would_stop"], 2, "{json}");
    assert_eq!(
        json["sessions"][0]["resume_orphans"][0][0],
        json!(orphan.pid)
    );
    assert!(
        broker.alive() && orphan.alive(),
        "a dry run signals nothing"
    );
    assert!(env.state_files() == before, "a dry run writes nothing");
    assert!(env.session_record(&id).unwrap()["ended_at"].is_null());
}
