//! End to end against the real Codex CLI (0.171.0, installed by `.ci/install-codex.sh`): hooks installed by
//! `session-reaper install --agent codex` must record the session at `SessionStart` and, at `SessionEnd`, stop a broker
//! that the session's shell tool started in another repository.
//!
//! `codex exec` runs offline in a throwaway `HOME` and `CODEX_HOME` against a fake Responses API on 127.0.0.1 (a
//! `model_provider` with `wire_api = "responses"`). The first model turn calls the `exec_command` tool with
//! `{"cmd": "session-reaper broker spawn --cwd <other repo> -- sleep 600"}` (no `--session`: the owner comes from
//! `CODEX_THREAD_ID`, which Codex gives its shell tool); the second answers with a message. The run passes
//! `--dangerously-bypass-hook-trust` (hooks run only once trusted) and `--dangerously-bypass-approvals-and-sandbox`:
//! Codex's default sandbox runs the shell tool in bubblewrap with a private pid namespace, where a broker would die
//! with its command instead of outliving it as on a developer's machine.
//!
//! A custom harness: without the client the test is reported as ignored, with the reason; under `CI=true` it must
//! run, and a missing client fails it.

use std::fmt::Write as _;
use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

#[path = "common/waiting.rs"]
mod waiting;
use waiting::{drain, poll};

const NAME: &str = "codex_exec_session_end_stops_the_broker_its_shell_tool_started";
/// How long one whole `codex exec` run may take before it is killed.
const CODEX_DEADLINE: Duration = Duration::from_secs(180);
/// How long the broker and the `session_end` event may lag behind Codex's exit.
const AFTERMATH_DEADLINE: Duration = Duration::from_secs(20);
const BIN: &str = env!("CARGO_BIN_EXE_session-reaper");

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|arg| arg == "--list") {
        println!("{NAME}: test");
        return;
    }
    let filters: Vec<&String> = args.iter().filter(|arg| !arg.starts_with('-')).collect();
    if !filters.is_empty() && !filters.iter().any(|filter| NAME.contains(filter.as_str())) {
        println!(
            "\nrunning 0 tests\n\ntest result: ok. 0 passed; 0 failed; 0 ignored; 0 measured; 1 filtered out\n"
        );
        return;
    }
    println!("\nrunning 1 test");
    let Some(codex) = codex_binary() else {
        return;
    };
    let started = Instant::now();
    let result = std::panic::catch_unwind(|| codex_exec_session_end_stops_the_broker(&codex));
    let elapsed = started.elapsed().as_secs_f64();
    if result.is_ok() {
        println!(
            "test {NAME} ... ok\n\ntest result: ok. 1 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in {elapsed:.2}s\n"
        );
    } else {
        println!(
            "test {NAME} ... FAILED\n\ntest result: FAILED. 0 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; finished in {elapsed:.2}s\n"
        );
        std::process::exit(101);
    }
}

/// The Codex executable, or `None` after reporting the test as ignored. Under `CI=true` a missing client fails.
fn codex_binary() -> Option<PathBuf> {
    let candidate = std::env::var_os("SESSION_REAPER_CODEX_BIN")
        .filter(|path| !path.is_empty())
        .map_or_else(
            || {
                Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("target/e2e-codex/node_modules/.bin/codex")
            },
            PathBuf::from,
        );
    if candidate.is_file() {
        return Some(candidate);
    }
    let reason = format!(
        "Codex CLI not installed (run .ci/install-codex.sh); looked for {}",
        candidate.display()
    );
    if std::env::var("CI").as_deref() == Ok("true") {
        println!(
            "test {NAME} ... FAILED\n\nCI=true but {reason}\n\ntest result: FAILED. 0 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out\n"
        );
        std::process::exit(101);
    }
    println!(
        "test {NAME} ... ignored, {reason}\n\ntest result: ok. 0 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out\n"
    );
    None
}

/// The throwaway directories of one run.
struct Dirs {
    _root: tempfile::TempDir,
    home: PathBuf,
    codex_home: PathBuf,
    state: PathBuf,
    workspace: PathBuf,
    other_repo: PathBuf,
    spawn_output: PathBuf,
}

impl Dirs {
    fn create() -> Dirs {
        let root = tempfile::Builder::new()
            .prefix("e2e-codex-")
            .tempdir()
            .expect("temp dir");
        // Codex refuses to put its helper links under a temporary directory's CODEX_HOME only with a warning.
        let path = fs::canonicalize(root.path()).unwrap();
        let dirs = Dirs {
            home: path.join("home"),
            codex_home: path.join("home/.codex"),
            state: path.join("state"),
            workspace: path.join("ws"),
            other_repo: path.join("other-repo"),
            spawn_output: path.join("spawn.json"),
            _root: root,
        };
        for dir in [
            &dirs.codex_home,
            &dirs.workspace,
            &dirs.other_repo.join(".git"),
        ] {
            fs::create_dir_all(dir).unwrap();
        }
        dirs
    }
}

fn quote(path: &Path) -> String {
    shlex::try_quote(path.to_str().unwrap())
        .unwrap()
        .into_owned()
}

/// A command with the test's `HOME` and `CODEX_HOME`, and none of the developer's own agent or session variables.
fn isolated(program: &Path, dirs: &Dirs) -> Command {
    let mut command = Command::new(program);
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy().into_owned();
        if [
            "CLAUDE",
            "CODEX",
            "OPENAI",
            "SESSION_REAPER",
            "GEMINI",
            "QWEN",
            "XDG_",
        ]
        .iter()
        .any(|prefix| name.starts_with(prefix))
        {
            command.env_remove(name);
        }
    }
    // A temp dir of the test's own: nothing the client unpacks lands in the shared /tmp.
    let tmp = dirs.home.join("tmp");
    std::fs::create_dir_all(&tmp).expect("the client's TMPDIR");
    command
        .env("HOME", &dirs.home)
        .env("TMPDIR", &tmp)
        // No cgroup but under a parent a test made (tests/e2e_gemini.rs is the containment end to end).
        .env("SESSION_REAPER_CONTAINMENT", "off")
        .env("CODEX_HOME", &dirs.codex_home)
        .stdin(Stdio::null());
    command
}

fn codex_exec_session_end_stops_the_broker(codex: &Path) {
    let dirs = Dirs::create();
    let tool_command = format!(
        "{} --state-dir {} broker spawn --json --cwd {} -- sleep 600 > {}",
        quote(Path::new(BIN)),
        quote(&dirs.state),
        quote(&dirs.other_repo),
        quote(&dirs.spawn_output),
    );
    let api = FakeResponses::start(tool_command, dirs.spawn_output.clone());

    install_hooks(&dirs, api.addr);
    let started = Instant::now();
    let (status, stdout, stderr) = run_codex(codex, &dirs);
    let broker = Broker::from_spawn_output(&dirs.spawn_output);
    let _guard = broker.map(BrokerGuard);
    let report = || {
        format!(
            "codex stdout:\n{stdout}\ncodex stderr:\n{stderr}\nfake API saw: {:?}\nevents:\n{}",
            api.log.lock().unwrap(),
            fs::read_to_string(dirs.state.join("events.jsonl")).unwrap_or_default()
        )
    };
    eprintln!(
        "codex exec finished in {:.2?} with {status:?}",
        started.elapsed()
    );
    let status =
        status.unwrap_or_else(|| panic!("codex exec ran past {CODEX_DEADLINE:?}\n{}", report()));
    assert!(
        status.success(),
        "codex exec failed: {status}\n{}",
        report()
    );
    assert!(
        !stderr.contains("clamping"),
        "Codex warned about our SessionEnd timeout\n{}",
        report()
    );
    let broker = broker.unwrap_or_else(|| panic!("the shell tool started no broker\n{}", report()));
    assert!(
        api.broker_alive_at_second_turn.load(Ordering::SeqCst),
        "broker {broker:?} was not running during the session\n{}",
        report()
    );

    let session =
        session_id(&stderr).unwrap_or_else(|| panic!("no session id printed\n{}", report()));
    assert!(
        poll(AFTERMATH_DEADLINE, || !broker.alive()),
        "broker {broker:?} outlived the session\n{}",
        report()
    );
    let events = || fs::read_to_string(dirs.state.join("events.jsonl")).unwrap_or_default();
    let has = |action: &str| {
        events()
            .lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .any(|event| event["action"] == action && event["session"] == session.as_str())
    };
    assert!(
        poll(AFTERMATH_DEADLINE, || has("session_start")
            && has("session_end")),
        "no start and end of {session}\n{}",
        report()
    );
    let record: Value = serde_json::from_slice(
        &fs::read(dirs.state.join(format!("sessions/{session}.json"))).unwrap(),
    )
    .unwrap();
    assert_eq!(record["agent"], "codex", "{record}");
    assert!(!record["ended_at"].is_null(), "{record}");
    let owners = fs::read_to_string(&dirs.spawn_output).unwrap();
    assert!(
        owners.contains(&session),
        "the broker's owner is the session, from CODEX_THREAD_ID: {owners}"
    );
    eprintln!("broker {broker:?} stopped at the end of Codex session {session}");
}

/// `session-reaper install --agent codex` in the test's home (it must end with the trust step), and a config
/// pointing Codex at the fake API.
fn install_hooks(dirs: &Dirs, api: SocketAddr) {
    let mut install = isolated(Path::new(BIN), dirs);
    let out = install
        .args([
            "--state-dir",
            dirs.state.to_str().unwrap(),
            "install",
            "--agent",
            "codex",
        ])
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&out.stdout).into_owned();
    let warned = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "install: {printed}{warned}");
    let last = warned
        .lines()
        .rev()
        .find(|line| !line.trim().is_empty())
        .unwrap_or_default();
    assert!(
        last.contains("TRUST") && last.contains("/hooks"),
        "install's warnings end with the trust step: {warned}"
    );
    fs::write(
        dirs.codex_home.join("config.toml"),
        format!(
            "model = \"fake-model\"\nmodel_provider = \"fake\"\n\n[model_providers.fake]\nname = \"fake\"\nbase_url = \"http://{api}/v1\"\nwire_api = \"responses\"\n"
        ),
    )
    .unwrap();
}

/// `codex exec` in the workspace, bounded: its exit status (`None` when it was killed), stdout and stderr.
fn run_codex(codex: &Path, dirs: &Dirs) -> (Option<std::process::ExitStatus>, String, String) {
    let mut run = isolated(codex, dirs);
    run.current_dir(&dirs.workspace)
        .args([
            "exec",
            "--dangerously-bypass-hook-trust",
            "--dangerously-bypass-approvals-and-sandbox",
            "--skip-git-repo-check",
            "start the dev server",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let started = Instant::now();
    let mut child = run.spawn().expect("start codex exec");
    let stdout = drain(child.stdout.take().unwrap());
    let stderr = drain(child.stderr.take().unwrap());
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if started.elapsed() > CODEX_DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        thread::sleep(Duration::from_millis(50));
    };
    let (stdout, stderr) = (stdout.join().unwrap(), stderr.join().unwrap());
    (status, stdout, stderr)
}

/// The session id `codex exec` prints in its banner (`session id: …`).
fn session_id(stderr: &str) -> Option<String> {
    stderr
        .lines()
        .find_map(|line| line.trim().strip_prefix("session id: ").map(str::to_owned))
}

/// The broker as `broker spawn` reported it: what this test may signal, by identity.
#[derive(Clone, Copy, Debug)]
struct Broker {
    pid: i32,
    start_ticks: u64,
}

impl Broker {
    fn from_spawn_output(path: &Path) -> Option<Broker> {
        let value: Value = serde_json::from_slice(&fs::read(path).ok()?).ok()?;
        Some(Broker {
            pid: i32::try_from(value.pointer("/identity/pid")?.as_i64()?).ok()?,
            start_ticks: value.pointer("/identity/start_ticks")?.as_u64()?,
        })
    }

    fn alive(self) -> bool {
        let Ok(stat) = fs::read_to_string(format!("/proc/{}/stat", self.pid)) else {
            return false;
        };
        let fields: Vec<&str> = stat[stat.rfind(')').unwrap_or(0) + 1..]
            .split_whitespace()
            .collect();
        fields.first() != Some(&"Z")
            && fields.get(19).and_then(|t| t.parse().ok()) == Some(self.start_ticks)
    }
}

/// Kills the broker on drop if it still runs (a failing test must not leak it).
struct BrokerGuard(Broker);

impl Drop for BrokerGuard {
    fn drop(&mut self) {
        if self.0.alive() {
            unsafe {
                libc::kill(-self.0.pid, libc::SIGKILL);
                libc::kill(self.0.pid, libc::SIGKILL);
            }
        }
    }
}

/// A fake `OpenAI` Responses API: `POST /v1/responses` streams (as server-sent events) a call of the `exec_command`
/// tool first, and once the tool's output comes back, a closing message.
struct FakeResponses {
    addr: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
    broker_alive_at_second_turn: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
}

impl FakeResponses {
    fn start(tool_command: String, spawn_output: PathBuf) -> FakeResponses {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the fake API");
        let addr = listener.local_addr().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let alive = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let (log2, alive2, stop2) = (log.clone(), alive.clone(), stop.clone());
        thread::spawn(move || {
            for stream in listener.incoming().take(64) {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let (log, alive, tool_command, spawn_output) = (
                    log2.clone(),
                    alive2.clone(),
                    tool_command.clone(),
                    spawn_output.clone(),
                );
                thread::spawn(move || {
                    let _ = serve(stream, &tool_command, &spawn_output, &log, &alive);
                });
            }
        });
        FakeResponses {
            addr,
            log,
            broker_alive_at_second_turn: alive,
            stop,
        }
    }
}

impl Drop for FakeResponses {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
    }
}

fn serve(
    stream: TcpStream,
    tool_command: &str,
    spawn_output: &Path,
    log: &Mutex<Vec<String>>,
    alive: &AtomicBool,
) -> io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = stream;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let request_line = line.trim_end().to_owned();
        let mut length = 0usize;
        loop {
            line.clear();
            if reader.read_line(&mut line)? == 0 {
                return Ok(());
            }
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0; length.min(64 * 1024 * 1024)];
        reader.read_exact(&mut body)?;
        let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let (status, content_type, reply) = if request_line.starts_with("POST")
            && request_line.contains("/responses")
        {
            let turn_output = request["input"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|item| item["type"] == "function_call_output");
            let item = if turn_output {
                if Broker::from_spawn_output(spawn_output).is_some_and(Broker::alive) {
                    alive.store(true, Ordering::SeqCst);
                }
                json!({"type": "message", "role": "assistant", "id": "msg_e2e", "content": [{"type": "output_text", "text": "The dev server runs."}]})
            } else {
                json!({"type": "function_call", "id": "fc_e2e", "call_id": "call_e2e", "name": "exec_command", "arguments": json!({"cmd": tool_command}).to_string()})
            };
            log.lock()
                .unwrap()
                .push(format!("{request_line} -> {}", item["type"]));
            ("200 OK", "text/event-stream", stream_of(&item))
        } else {
            log.lock().unwrap().push(format!("{request_line} -> 404"));
            ("404 Not Found", "application/json", "{}".to_owned())
        };
        write!(
            writer,
            "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n{reply}",
            reply.len()
        )?;
        writer.flush()?;
    }
}

/// The server-sent events of one response holding `item`.
fn stream_of(item: &Value) -> String {
    let usage = json!({"input_tokens": 1, "output_tokens": 1, "total_tokens": 2, "input_tokens_details": {"cached_tokens": 0}, "output_tokens_details": {"reasoning_tokens": 0}});
    [
        json!({"type": "response.created", "response": {"id": "resp_e2e"}}),
        json!({"type": "response.output_item.added", "output_index": 0, "item": item}),
        json!({"type": "response.output_item.done", "output_index": 0, "item": item}),
        json!({"type": "response.completed", "response": {"id": "resp_e2e", "usage": usage}}),
    ]
    .iter()
    .fold(String::new(), |mut out, event| {
        let _ = write!(
            out,
            "event: {}\ndata: {event}\n\n",
            event["type"].as_str().unwrap()
        );
        out
    })
}
