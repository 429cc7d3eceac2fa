//! What the real-client end-to-end tests of Factory Droid, Copilot CLI and OpenCode share: the harness (ignored with
//! its reason when the client is absent, required under `CI=true`), a throwaway home, a fake `OpenAI` chat-completions
//! model on 127.0.0.1 whose first turn makes the shell tool leave `(setsid sleep &)` and `nohup sleep &` behind, and
//! the checks after the agent has ended: its session's start and end recorded, and both jobs gone.
//!
//! The jobs are `sleep 600 0.<marker>` (GNU sleep adds its arguments up), each marker fresh and random: only the
//! processes this run planted match it, and only those are ever signalled (on drop, if the test failed).

use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

#[path = "../common/waiting.rs"]
mod waiting;
use waiting::{drain, poll};

pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_session-reaper");
/// How long one whole agent run may take before it is killed.
const AGENT_DEADLINE: Duration = Duration::from_secs(180);
/// How long the jobs and the end event may lag behind the agent's exit.
const AFTERMATH_DEADLINE: Duration = Duration::from_secs(20);

/// A configuration file below the run's home and how its text is made for the run.
pub(crate) type ConfigFile = (&'static str, fn(&Run) -> String);

/// One real client under test.
pub(crate) struct Client {
    /// The test's name, as the harness reports it.
    pub test: &'static str,
    pub title: &'static str,
    /// Its name for `--agent`.
    pub agent: &'static str,
    /// The variable naming its executable, else `default_path` below the repository.
    pub bin_var: &'static str,
    pub default_path: &'static str,
    /// The script that installs it.
    pub script: &'static str,
    /// The `reason` of the event that ends its session: `session_end` (its end hook), or `agent_gone` (the sentinel).
    pub end_reason: &'static str,
    /// The client's configuration file, below the run's home, as the run needs it (its fake model's address).
    pub config: Option<ConfigFile>,
    /// The command that runs the client (given its executable).
    pub command: fn(&Run, &Path) -> Command,
}

/// A test binary's `main`: lists, filters, reports ignored or runs the one test, as libtest would print it.
pub(crate) fn main(client: &Client) {
    let name = client.test;
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|arg| arg == "--list") {
        println!("{name}: test");
        return;
    }
    let filters: Vec<&String> = args.iter().filter(|arg| !arg.starts_with('-')).collect();
    if !filters.is_empty() && !filters.iter().any(|filter| name.contains(filter.as_str())) {
        println!(
            "\nrunning 0 tests\n\ntest result: ok. 0 passed; 0 failed; 0 ignored; 0 measured; 1 filtered out\n"
        );
        return;
    }
    println!("\nrunning 1 test");
    let Some(binary) = client_binary(client) else {
        return;
    };
    let started = Instant::now();
    let result =
        std::panic::catch_unwind(|| the_jobs_its_shell_tool_left_are_gone(client, &binary));
    let elapsed = started.elapsed().as_secs_f64();
    if result.is_ok() {
        println!(
            "test {name} ... ok\n\ntest result: ok. 1 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in {elapsed:.2}s\n"
        );
    } else {
        println!(
            "test {name} ... FAILED\n\ntest result: FAILED. 0 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; finished in {elapsed:.2}s\n"
        );
        std::process::exit(101);
    }
}

/// The client's executable, or `None` after reporting the test as ignored. Under `CI=true` a missing client fails.
fn client_binary(client: &Client) -> Option<PathBuf> {
    let name = client.test;
    let candidate = std::env::var_os(client.bin_var)
        .filter(|path| !path.is_empty())
        .map_or_else(
            || Path::new(env!("CARGO_MANIFEST_DIR")).join(client.default_path),
            PathBuf::from,
        );
    if candidate.is_file() {
        return Some(candidate);
    }
    let reason = format!(
        "{} not installed (run {}); looked for {}",
        client.title,
        client.script,
        candidate.display()
    );
    if std::env::var("CI").as_deref() == Ok("true") {
        println!(
            "test {name} ... FAILED\n\nCI=true but {reason}\n\ntest result: FAILED. 0 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out\n"
        );
        std::process::exit(101);
    }
    println!(
        "test {name} ... ignored, {reason}\n\ntest result: ok. 0 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out\n"
    );
    None
}

/// One run: its throwaway directories and the fake model's address.
pub(crate) struct Run {
    _root: tempfile::TempDir,
    pub home: PathBuf,
    pub work: PathBuf,
    pub state: PathBuf,
    pub api: SocketAddr,
}

impl Run {
    /// A command with the run's `HOME`, in its work directory, without the developer's own agent, session, model
    /// or XDG variables.
    pub(crate) fn isolated(&self, program: &Path) -> Command {
        let mut command = Command::new(program);
        for (name, _) in std::env::vars_os() {
            let name = name.to_string_lossy().into_owned();
            if [
                "CLAUDE",
                "CODEX",
                "OPENAI",
                "ANTHROPIC",
                "SESSION_REAPER",
                "GEMINI",
                "QWEN",
                "COPILOT",
                "GITHUB_TOKEN",
                "GH_TOKEN",
                "OPENCODE",
                "FACTORY",
                "DROID",
                "XDG_",
            ]
            .iter()
            .any(|prefix| name.starts_with(prefix))
            {
                command.env_remove(name);
            }
        }
        // A temp dir of the test's own: a client that unpacks native modules into TMPDIR (OpenCode, a Bun binary)
        // leaves nothing in the shared /tmp.
        let tmp = self.home.join("tmp");
        fs::create_dir_all(&tmp).expect("the client's TMPDIR");
        command
            .env("HOME", &self.home)
            .env("TMPDIR", &tmp)
            .current_dir(&self.work)
            .stdin(Stdio::null());
        command
    }

    /// Writes `text` to `relative` below the home directory.
    fn write_home(&self, relative: &str, text: &str) {
        let path = self.home.join(relative);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, text).unwrap();
    }

    fn events(&self) -> Vec<Value> {
        fs::read_to_string(self.state.join("events.jsonl"))
            .unwrap_or_default()
            .lines()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect()
    }
}

/// The two jobs the shell tool is made to leave, by their markers.
#[derive(Clone)]
struct Jobs {
    markers: [String; 2],
}

impl Jobs {
    fn new() -> Jobs {
        let mut bytes = [0u8; 16];
        rustix::rand::getrandom(&mut bytes, rustix::rand::GetRandomFlags::empty()).unwrap();
        let number = |half: &[u8]| {
            let mut word = [0u8; 8];
            word.copy_from_slice(half);
            // `0.` then digits: what GNU sleep adds to its 600 s, a fraction of a second.
            format!("0.{}", u64::from_le_bytes(word) % 1_000_000_000_000 + 1)
        };
        Jobs {
            markers: [number(&bytes[..8]), number(&bytes[8..])],
        }
    }

    /// The shell tool's command: both jobs detached from the tool's pipes, then a word for the model.
    fn command(&self) -> String {
        format!(
            "(setsid sleep 600 {} >/dev/null 2>&1 &); nohup sleep 600 {} >/dev/null 2>&1 & echo started",
            self.markers[0], self.markers[1]
        )
    }

    /// The pids of the planted jobs still running (not zombies), each with its marker.
    fn running(&self) -> Vec<(i32, String)> {
        let mut found = Vec::new();
        for entry in fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let Ok(cmdline) = fs::read(entry.path().join("cmdline")) else {
                continue;
            };
            let argv: Vec<String> = cmdline
                .split(|byte| *byte == 0)
                .map(|arg| String::from_utf8_lossy(arg).into_owned())
                .collect();
            let Some(marker) = self
                .markers
                .iter()
                .find(|marker| argv.get(2) == Some(marker) && argv[1] == "600")
            else {
                continue;
            };
            let stat = fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
            let state = stat[stat.rfind(')').map_or(0, |at| at + 1)..]
                .split_whitespace()
                .next()
                .unwrap_or("Z");
            if state != "Z" {
                found.push((pid, marker.clone()));
            }
        }
        found
    }
}

/// A failing test must not leak what it planted: on drop, SIGKILL to each process carrying one of its fresh markers.
struct Planted(Jobs);

impl Drop for Planted {
    fn drop(&mut self) {
        for (pid, _) in self.0.running() {
            if let Some(pid) = rustix::process::Pid::from_raw(pid) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
        }
    }
}

fn the_jobs_its_shell_tool_left_are_gone(client: &Client, binary: &Path) {
    let root = tempfile::Builder::new()
        .prefix(&format!("e2e-{}-", client.agent))
        .tempdir()
        .expect("temp dir");
    let path = fs::canonicalize(root.path()).unwrap();
    let planted = Planted(Jobs::new());
    let jobs = &planted.0;
    let api = FakeModel::start(jobs.clone());
    let run = Run {
        home: path.join("home"),
        work: path.join("work"),
        state: path.join("state"),
        api: api.addr,
        _root: root,
    };
    for dir in [&run.home, &run.work] {
        fs::create_dir_all(dir).unwrap();
    }
    let install = run
        .isolated(Path::new(BIN))
        .args(["--state-dir", run.state.to_str().unwrap()])
        .args(["install", "--agent", client.agent])
        .output()
        .unwrap();
    assert!(
        install.status.success(),
        "install: {}{}",
        String::from_utf8_lossy(&install.stdout),
        String::from_utf8_lossy(&install.stderr)
    );

    if let Some((relative, text)) = client.config {
        run.write_home(relative, &text(&run));
    }
    let mut command = (client.command)(&run, binary);
    let started = Instant::now();
    let (status, stdout, stderr) = bounded(&mut command);
    let ran_for = started.elapsed();
    let planted_at_tool = api.jobs_at_second_turn.lock().unwrap().clone();
    let report = || {
        format!(
            "{} stdout:\n{stdout}\nstderr:\n{stderr}\nfake model saw: {:#?}\njobs at the tool's answer: \
             {planted_at_tool:?}\nevents:\n{}",
            client.title,
            api.log.lock().unwrap(),
            fs::read_to_string(run.state.join("events.jsonl")).unwrap_or_default()
        )
    };
    eprintln!(
        "{} ran for {ran_for:.2?} and ended with {status:?}",
        client.title
    );
    let status =
        status.unwrap_or_else(|| panic!("ran past {AGENT_DEADLINE:?}, killed\n{}", report()));
    assert!(status.success(), "exit {status}\n{}", report());
    assert_eq!(
        planted_at_tool.len(),
        2,
        "both jobs ran when the tool answered\n{}",
        report()
    );
    let ended = Instant::now();
    assert!(
        poll(AFTERMATH_DEADLINE, || jobs.running().is_empty()),
        "still running after the agent ended: {:?}\n{}",
        jobs.running(),
        report()
    );
    eprintln!(
        "both jobs gone {:.0?} after {} ended",
        ended.elapsed(),
        client.title
    );
    let session = assert_recorded(client, &run, jobs, &report);
    eprintln!(
        "session {session}: start and end recorded, the shell tool's (setsid sleep &) and nohup sleep & stopped"
    );
}

/// The session the agent's hook started, after checking that its end (of `client.end_reason`) and the stop of both
/// jobs are logged.
fn assert_recorded(client: &Client, run: &Run, jobs: &Jobs, report: &dyn Fn() -> String) -> String {
    let start = run
        .events()
        .into_iter()
        .find(|event| {
            event["action"] == "session_start"
                && event["detail"]
                    .as_str()
                    .is_some_and(|detail| detail.starts_with(&format!("agent {} ", client.agent)))
        })
        .unwrap_or_else(|| panic!("no session_start of {}\n{}", client.agent, report()));
    let session = start["session"].as_str().unwrap().to_owned();
    let ended_by = |event: &Value| {
        event["action"] == "session_end"
            && event["session"] == session.as_str()
            && event["reason"] == client.end_reason
    };
    assert!(
        poll(AFTERMATH_DEADLINE, || run.events().iter().any(ended_by)),
        "no session_end ({}) of {session}\n{}",
        client.end_reason,
        report()
    );
    let stopped: Vec<Value> = run
        .events()
        .into_iter()
        .filter(|event| event["action"] == "stop" && event["session"] == session.as_str())
        .collect();
    let logged = |marker: &str| {
        stopped.iter().any(|event| {
            event["argv"].as_array().and_then(|argv| argv.get(2)) == Some(&json!(marker))
        })
    };
    // The `setsid` job left every session and group the client knows: only our stop can have ended it. The `nohup`
    // job stays in the tool command's own session, which a client may end itself when it exits (Copilot CLI does,
    // racing our stop); then it is gone with nothing of ours logged, which is as good.
    let [escaped, in_the_tools_session] = &jobs.markers;
    assert!(
        logged(escaped),
        "the stop of the setsid job {escaped} is logged for {session}\n{}",
        report()
    );
    if !logged(in_the_tools_session) {
        eprintln!(
            "the nohup job {in_the_tools_session} was ended by {} itself before our stop",
            client.title
        );
    }
    session
}

/// Runs `command` bounded by [`AGENT_DEADLINE`]: its exit status (`None` when it was killed), stdout and stderr.
fn bounded(command: &mut Command) -> (Option<ExitStatus>, String, String) {
    command.stdout(Stdio::piped()).stderr(Stdio::piped());
    let started = Instant::now();
    let mut child = command.spawn().expect("start the client");
    let stdout = drain(child.stdout.take().unwrap());
    let stderr = drain(child.stderr.take().unwrap());
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if started.elapsed() > AGENT_DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        thread::sleep(Duration::from_millis(50));
    };
    (status, stdout.join().unwrap(), stderr.join().unwrap())
}

/// The shell tools the fake model knows, by the names the clients give them (Droid: `Execute`; Copilot CLI and
/// OpenCode: `bash`), with the arguments each takes.
fn shell_call(tools: &[String], command: &str) -> Option<(String, Value)> {
    let name = ["Execute", "bash"]
        .into_iter()
        .find(|name| tools.iter().any(|tool| tool == name))?;
    let arguments = if name == "Execute" {
        json!({"command": command, "riskLevel": "low", "riskLevelReason": "a test", "summary": "start two jobs"})
    } else {
        json!({"command": command, "description": "start two jobs"})
    };
    Some((name.to_owned(), arguments))
}

/// A fake `OpenAI` chat-completions model: with the shell tool offered and no tool result yet, it calls the tool
/// with the planted command; otherwise (a tool's answer, or a request without tools such as a title) it says one
/// word. Streams when asked to.
struct FakeModel {
    addr: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
    jobs_at_second_turn: Arc<Mutex<Vec<(i32, String)>>>,
    stop: Arc<AtomicBool>,
}

impl FakeModel {
    fn start(jobs: Jobs) -> FakeModel {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the fake model");
        let addr = listener.local_addr().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (log2, seen2, stop2) = (log.clone(), seen.clone(), stop.clone());
        thread::spawn(move || {
            for stream in listener.incoming().take(256) {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let (log, seen, jobs) = (log2.clone(), seen2.clone(), jobs.clone());
                thread::spawn(move || {
                    let _ = serve(stream, &jobs, &log, &seen);
                });
            }
        });
        FakeModel {
            addr,
            log,
            jobs_at_second_turn: seen,
            stop,
        }
    }
}

impl Drop for FakeModel {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
    }
}

/// One request's body, by `Content-Length` or chunked.
fn read_body(
    reader: &mut BufReader<TcpStream>,
    length: usize,
    chunked: bool,
) -> io::Result<Vec<u8>> {
    if !chunked {
        let mut body = vec![0; length.min(64 * 1024 * 1024)];
        reader.read_exact(&mut body)?;
        return Ok(body);
    }
    let mut body = Vec::new();
    loop {
        let mut size = String::new();
        reader.read_line(&mut size)?;
        let size = usize::from_str_radix(size.trim().split(';').next().unwrap_or("0"), 16)
            .map_err(|_| io::Error::other("bad chunk size"))?;
        let mut chunk = vec![0; size + 2];
        reader.read_exact(&mut chunk)?;
        if size == 0 {
            return Ok(body);
        }
        body.extend_from_slice(&chunk[..size]);
    }
}

fn serve(
    stream: TcpStream,
    jobs: &Jobs,
    log: &Mutex<Vec<String>>,
    seen: &Mutex<Vec<(i32, String)>>,
) -> io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = stream;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let request_line = line.trim_end().to_owned();
        let (mut length, mut chunked) = (0usize, false);
        loop {
            line.clear();
            if reader.read_line(&mut line)? == 0 {
                return Ok(());
            }
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().unwrap_or(0);
                } else if name.eq_ignore_ascii_case("transfer-encoding") {
                    chunked = value.trim().eq_ignore_ascii_case("chunked");
                }
            }
        }
        let body = read_body(&mut reader, length, chunked)?;
        let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let (content_type, reply) = if request_line.starts_with("POST")
            && request_line.contains("/chat/completions")
        {
            let tools: Vec<String> = request["tools"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|tool| tool.pointer("/function/name").and_then(Value::as_str))
                .map(str::to_owned)
                .collect();
            let answered = request["messages"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|message| message["role"] == "tool");
            if answered {
                let mut running = seen.lock().unwrap();
                if running.is_empty() {
                    // The tool has answered; a job forked just before may still be on its way to exec'ing sleep.
                    poll(Duration::from_secs(5), || jobs.running().len() == 2);
                    *running = jobs.running();
                }
            }
            let call = shell_call(&tools, &jobs.command()).filter(|_| !answered);
            log.lock().unwrap().push(format!(
                "{request_line} stream={} tools={} -> {}",
                request["stream"],
                tools.len(),
                call.as_ref().map_or("text", |(name, _)| name.as_str())
            ));
            completion(call, request["stream"] == true)
        } else if request_line.starts_with("GET") && request_line.contains("/models") {
            log.lock().unwrap().push(request_line.clone());
            (
                "application/json",
                json!({"object": "list", "data": [{"id": "fake-model", "object": "model"}]})
                    .to_string(),
            )
        } else {
            log.lock().unwrap().push(format!("{request_line} -> 404"));
            write!(
                writer,
                "HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{{}}"
            )?;
            writer.flush()?;
            continue;
        };
        write!(
            writer,
            "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n{reply}",
            reply.len()
        )?;
        writer.flush()?;
    }
}

/// A chat completion holding the tool call, or a one-word answer; as server-sent chunks when `stream`.
fn completion(call: Option<(String, Value)>, stream: bool) -> (&'static str, String) {
    let usage = json!({"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2});
    let (message, finish) = match call {
        Some((name, arguments)) => (
            json!({"role": "assistant", "content": null, "tool_calls": [{"index": 0, "id": "call_e2e", "type": "function",
                "function": {"name": name, "arguments": arguments.to_string()}}]}),
            "tool_calls",
        ),
        None => (json!({"role": "assistant", "content": "Done."}), "stop"),
    };
    if !stream {
        let body = json!({"id": "chatcmpl-e2e", "object": "chat.completion", "created": 0, "model": "fake-model",
            "choices": [{"index": 0, "message": message, "finish_reason": finish}], "usage": usage});
        return ("application/json", body.to_string());
    }
    let chunk = |delta: Value, finish: Value, usage: Option<&Value>| {
        let mut chunk = json!({"id": "chatcmpl-e2e", "object": "chat.completion.chunk", "created": 0,
            "model": "fake-model", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]});
        if let Some(usage) = usage {
            chunk["usage"] = usage.clone();
        }
        format!("data: {chunk}\n\n")
    };
    let text = chunk(message, Value::Null, None)
        + &chunk(json!({}), json!(finish), Some(&usage))
        + "data: [DONE]\n\n";
    ("text/event-stream", text)
}
