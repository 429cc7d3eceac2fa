//! End to end against the real Gemini CLI (0.61.0, installed by `.ci/install-gemini.sh`): with hooks installed by
//! `session-reaper install --agent gemini` and containment on, the jobs its shell tool leaves behind —
//! `(setsid sleep … &)` and `nohup sleep … &`, which carry no session variable and leave Gemini's process groups —
//! are gone once `gemini -p` exits (DESIGN "Containment").
//!
//! `gemini -p` runs offline in a throwaway `HOME` against a fake Gemini API on 127.0.0.1 (`GOOGLE_GEMINI_BASE_URL`,
//! `GEMINI_API_KEY`). The fake answers JSON requests — the model router's classifier, the next-speaker check — with
//! an object filled from the request's own schema (an unanswered classifier makes Gemini retry for minutes); the
//! first conversation turn calls `run_shell_command` with the two jobs, each `sleep` given a fresh random duration
//! as its marker; the next answers with a message. Every cgroup lives under a parent the test made
//! (`SESSION_REAPER_CGROUP_ROOT`) and goes with it; the marked sleeps are killed on drop if the test failed.
//!
//! A custom harness: without the client (or, outside CI, without a writable cgroup v2) the test is reported as
//! ignored, with the reason; under `CI=true` it must run, and a missing client or cgroup fails it.

// Only what this test uses of the fixture.
#[allow(dead_code)]
#[path = "it/test_cgroup.rs"]
mod test_cgroup;

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

use test_cgroup::TestCgroup;

const NAME: &str = "gemini_p_leaves_no_setsid_or_nohup_job_behind";
/// How long one whole `gemini -p` run may take before it is killed.
const GEMINI_DEADLINE: Duration = Duration::from_secs(180);
/// How long the jobs may outlive Gemini's exit.
const AFTERMATH_DEADLINE: Duration = Duration::from_secs(10);
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
    let Some(gemini) = gemini_binary() else {
        return;
    };
    let Some(cgroup) = test_cgroup_or_ignored() else {
        return;
    };
    let started = Instant::now();
    let result = std::panic::catch_unwind(|| gemini_p_leaves_nothing_behind(&gemini, &cgroup));
    drop(cgroup);
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

fn under_ci() -> bool {
    std::env::var("CI").as_deref() == Ok("true")
}

/// Reports the test ignored (or, under CI, failed) for `reason`.
fn ignored(reason: &str) {
    if under_ci() {
        println!(
            "test {NAME} ... FAILED\n\nCI=true but {reason}\n\ntest result: FAILED. 0 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out\n"
        );
        std::process::exit(101);
    }
    println!(
        "test {NAME} ... ignored, {reason}\n\ntest result: ok. 0 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out\n"
    );
}

/// The Gemini CLI executable, or `None` after reporting the test as ignored.
fn gemini_binary() -> Option<PathBuf> {
    let candidate = std::env::var_os("SESSION_REAPER_GEMINI_BIN")
        .filter(|path| !path.is_empty())
        .map_or_else(
            || {
                Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("target/e2e-gemini/node_modules/.bin/gemini")
            },
            PathBuf::from,
        );
    if candidate.is_file() {
        return Some(candidate);
    }
    ignored(&format!(
        "Gemini CLI not installed (run .ci/install-gemini.sh); looked for {}",
        candidate.display()
    ));
    None
}

/// The test's cgroup parent; where none can be made, the test is reported as ignored (failed under CI).
fn test_cgroup_or_ignored() -> Option<TestCgroup> {
    match TestCgroup::make() {
        Ok(cgroup) => Some(cgroup),
        Err(why) => {
            ignored(&format!("no writable cgroup v2 for containment: {why}"));
            None
        }
    }
}

/// The throwaway directories of one run.
struct Dirs {
    _root: tempfile::TempDir,
    home: PathBuf,
    state: PathBuf,
    workspace: PathBuf,
}

impl Dirs {
    fn create() -> Dirs {
        let root = tempfile::Builder::new()
            .prefix("e2e-gemini-")
            .tempdir()
            .expect("temp dir");
        let path = fs::canonicalize(root.path()).unwrap();
        let dirs = Dirs {
            home: path.join("home"),
            state: path.join("state"),
            workspace: path.join("ws"),
            _root: root,
        };
        for dir in [&dirs.home, &dirs.workspace] {
            fs::create_dir_all(dir).unwrap();
        }
        dirs
    }
}

/// A command with the test's `HOME`, containment under the test's cgroup, and none of the developer's own agent or
/// session variables.
fn isolated(program: &Path, dirs: &Dirs, cgroup: &TestCgroup) -> Command {
    let mut command = Command::new(program);
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy().into_owned();
        if [
            "CLAUDE",
            "CODEX",
            "GOOGLE",
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
        .envs(cgroup.env())
        .stdin(Stdio::null());
    command
}

/// A fresh random marker: the fractional part of a `sleep` duration, so that the job's argv names it.
fn marker() -> String {
    let mut bytes = [0u8; 4];
    fs::File::open("/dev/urandom")
        .and_then(|mut file| file.read_exact(&mut bytes))
        .expect("random bytes");
    format!("{}", u32::from_le_bytes(bytes) % 900_000_000 + 100_000_000)
}

/// The live processes whose argv is exactly `sleep 600.<marker>`.
fn marked(marker: &str) -> Vec<i32> {
    let wanted = format!("sleep\x00600.{marker}\x00");
    fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|argv| argv == wanted.as_bytes())
                && fs::read_to_string(format!("/proc/{pid}/stat"))
                    .is_ok_and(|stat| !stat[stat.rfind(')').unwrap_or(0)..].starts_with(") Z"))
        })
        .collect()
}

/// Kills, on drop, any process still running one of the test's marked sleeps (a failing test must not leak them).
struct MarkedGuard(Vec<String>);

impl Drop for MarkedGuard {
    fn drop(&mut self) {
        for marker in &self.0 {
            for pid in marked(marker) {
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
        }
    }
}

fn gemini_p_leaves_nothing_behind(gemini: &Path, cgroup: &TestCgroup) {
    let dirs = Dirs::create();
    let (setsid_marker, nohup_marker) = (marker(), marker());
    let _guard = MarkedGuard(vec![setsid_marker.clone(), nohup_marker.clone()]);
    let tool_command = format!(
        "(setsid sleep 600.{setsid_marker} >/dev/null 2>&1 &); nohup sleep 600.{nohup_marker} >/dev/null 2>&1 &"
    );
    let api = FakeGemini::start(tool_command, [setsid_marker.clone(), nohup_marker.clone()]);
    install_hooks(&dirs, cgroup);

    let started = Instant::now();
    let (status, stdout, stderr) = run_gemini(gemini, &dirs, cgroup, api.addr);
    let report = || {
        format!(
            "gemini stdout:\n{stdout}\ngemini stderr:\n{stderr}\nfake API saw: {:#?}\nevents:\n{}",
            api.log.lock().unwrap(),
            fs::read_to_string(dirs.state.join("events.jsonl")).unwrap_or_default()
        )
    };
    eprintln!(
        "gemini -p finished in {:.2?} with {status:?}",
        started.elapsed()
    );
    let status =
        status.unwrap_or_else(|| panic!("gemini -p ran past {GEMINI_DEADLINE:?}\n{}", report()));
    assert!(status.success(), "gemini -p failed: {status}\n{}", report());
    let seen = api.jobs_seen.lock().unwrap().clone();
    assert!(
        seen.len() == 2,
        "both jobs ran while the session lived (seen at the turn after the tool): {seen:?}\n{}",
        report()
    );
    let exited = Instant::now();
    let gone = poll(AFTERMATH_DEADLINE, || {
        marked(&setsid_marker).is_empty() && marked(&nohup_marker).is_empty()
    });
    assert!(
        gone,
        "still running {:?} after gemini -p exited: setsid {:?}, nohup {:?}\n{}",
        exited.elapsed(),
        marked(&setsid_marker),
        marked(&nohup_marker),
        report()
    );
    eprintln!(
        "both jobs gone {:.2?} after gemini -p exited; the fake API saw {:#?}",
        exited.elapsed(),
        api.log.lock().unwrap()
    );
    let sessions: Vec<Value> = fs::read_dir(dirs.state.join("sessions"))
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|entry| serde_json::from_slice(&fs::read(entry.path()).ok()?).ok())
        .collect();
    assert!(
        sessions
            .iter()
            .any(|record| record["agent"] == "gemini" && record["containment"]["mode"] == "cgroup"),
        "a Gemini session contained in a cgroup: {sessions:#?}"
    );
    assert!(
        poll(AFTERMATH_DEADLINE, || cgroup.children().is_empty()),
        "no cgroup of ours remains: {:?}",
        cgroup.children()
    );
}

/// `session-reaper install --agent gemini` in the test's home.
fn install_hooks(dirs: &Dirs, cgroup: &TestCgroup) {
    let out = isolated(Path::new(BIN), dirs, cgroup)
        .args([
            "--state-dir",
            dirs.state.to_str().unwrap(),
            "install",
            "--agent",
            "gemini",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "install: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Beside our hooks: the API key as the way in (headless Gemini asks for none otherwise), and no update check.
    let settings = dirs.home.join(".gemini/settings.json");
    let mut value: Value = serde_json::from_slice(&fs::read(&settings).unwrap()).unwrap();
    value["security"] = json!({"auth": {"selectedType": "gemini-api-key"}});
    value["general"] = json!({"disableAutoUpdate": true, "disableUpdateNag": true});
    fs::write(&settings, serde_json::to_vec_pretty(&value).unwrap()).unwrap();
}

/// `gemini -p` in the workspace, bounded: its exit status (`None` when it was killed), stdout and stderr.
fn run_gemini(
    gemini: &Path,
    dirs: &Dirs,
    cgroup: &TestCgroup,
    api: SocketAddr,
) -> (Option<std::process::ExitStatus>, String, String) {
    let mut run = isolated(gemini, dirs, cgroup);
    run.current_dir(&dirs.workspace)
        .env("GEMINI_API_KEY", "fake-key")
        .env("GOOGLE_GEMINI_BASE_URL", format!("http://{api}"))
        .env("GEMINI_CLI_TRUST_WORKSPACE", "true")
        .args([
            "--approval-mode",
            "yolo",
            "-p",
            "start the two background jobs",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let started = Instant::now();
    let mut child = run.spawn().expect("start gemini -p");
    let stdout = drain(child.stdout.take().unwrap());
    let stderr = drain(child.stderr.take().unwrap());
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if started.elapsed() > GEMINI_DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        thread::sleep(Duration::from_millis(50));
    };
    let (stdout, stderr) = (stdout.join().unwrap(), stderr.join().unwrap());
    (status, stdout, stderr)
}

/// A fake Gemini API (`generativelanguage` v1beta): `…:generateContent` and `…:streamGenerateContent` (server-sent
/// events with `alt=sse`), `…:countTokens`.
struct FakeGemini {
    addr: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
    /// The marked jobs found running when the tool's result came back.
    jobs_seen: Arc<Mutex<Vec<i32>>>,
    stop: Arc<AtomicBool>,
}

/// What the fake needs to answer a request.
struct Script {
    tool_command: String,
    markers: [String; 2],
    log: Arc<Mutex<Vec<String>>>,
    jobs_seen: Arc<Mutex<Vec<i32>>>,
}

impl FakeGemini {
    fn start(tool_command: String, markers: [String; 2]) -> FakeGemini {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the fake API");
        let addr = listener.local_addr().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let jobs_seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let script = Arc::new(Script {
            tool_command,
            markers,
            log: log.clone(),
            jobs_seen: jobs_seen.clone(),
        });
        let stop2 = stop.clone();
        thread::spawn(move || {
            for stream in listener.incoming().take(256) {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let script = script.clone();
                thread::spawn(move || {
                    let _ = serve(stream, &script);
                });
            }
        });
        FakeGemini {
            addr,
            log,
            jobs_seen,
            stop,
        }
    }
}

impl Drop for FakeGemini {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
    }
}

fn serve(stream: TcpStream, script: &Script) -> io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
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
        let (status, content_type, reply) = answer(&request_line, &request, script);
        write!(
            writer,
            "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n{reply}",
            reply.len()
        )?;
        writer.flush()?;
    }
}

/// The reply to one request: (status, content type, body).
fn answer(
    request_line: &str,
    request: &Value,
    script: &Script,
) -> (&'static str, &'static str, String) {
    let log = |what: &str| {
        script
            .log
            .lock()
            .unwrap()
            .push(format!("{request_line} -> {what}"));
    };
    if !request_line.starts_with("POST") {
        log("404");
        return ("404 Not Found", "application/json", "{}".to_owned());
    }
    if request_line.contains(":countTokens") {
        log("count");
        return (
            "200 OK",
            "application/json",
            json!({"totalTokens": 8}).to_string(),
        );
    }
    let config = &request["generationConfig"];
    let schema = config
        .get("responseJsonSchema")
        .or_else(|| config.get("responseSchema"))
        .filter(|schema| !schema.is_null());
    let parts = if let Some(schema) = schema {
        // The router's classifier, the next-speaker check: an object of the shape asked for.
        let filled = filled_from(schema);
        log(&format!("json {filled}"));
        json!([{"text": filled.to_string()}])
    } else if config["responseMimeType"] == "application/json" {
        log("json {}");
        json!([{"text": "{}"}])
    } else if has_function_response(request) {
        let mut seen = script.jobs_seen.lock().unwrap();
        *seen = script
            .markers
            .iter()
            .flat_map(|marker| marked(marker))
            .collect();
        log(&format!("message (jobs running: {seen:?})"));
        json!([{"text": "Both jobs are running."}])
    } else {
        log("run_shell_command");
        json!([{"functionCall": {"name": "run_shell_command", "args": {"command": script.tool_command, "description": "start two background jobs"}}}])
    };
    let response = json!({
        "candidates": [{"content": {"role": "model", "parts": parts}, "finishReason": "STOP", "index": 0}],
        "usageMetadata": {"promptTokenCount": 4, "candidatesTokenCount": 4, "totalTokenCount": 8},
        "modelVersion": "gemini-2.5-flash",
    });
    if request_line.contains(":streamGenerateContent") {
        (
            "200 OK",
            "text/event-stream",
            format!("data: {response}\r\n\r\n"),
        )
    } else {
        ("200 OK", "application/json", response.to_string())
    }
}

fn has_function_response(request: &Value) -> bool {
    request["contents"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|content| content["parts"].as_array().into_iter().flatten())
        .any(|part| part.get("functionResponse").is_some())
}

/// A value of the shape `schema` (JSON Schema, or the API's own `Type` upper-case names) asks for: an enum's first
/// value, a number's minimum (else 1), every property of an object.
fn filled_from(schema: &Value) -> Value {
    if let Some(first) = schema["enum"].as_array().and_then(|values| values.first()) {
        return first.clone();
    }
    let kind = schema["type"]
        .as_str()
        .unwrap_or("object")
        .to_ascii_lowercase();
    match kind.as_str() {
        "string" => json!("simple"),
        "integer" | "number" => schema
            .get("minimum")
            .filter(|minimum| minimum.is_number())
            .cloned()
            .unwrap_or(json!(1)),
        "boolean" => json!(false),
        "array" => json!([]),
        _ => {
            let mut object = serde_json::Map::new();
            if let Some(properties) = schema["properties"].as_object() {
                for (name, property) in properties {
                    object.insert(name.clone(), filled_from(property));
                }
            }
            Value::Object(object)
        }
    }
}
