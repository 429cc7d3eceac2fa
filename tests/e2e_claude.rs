//! End to end against the real Claude Code client (2.1.332, pinned by `.ci/run`): its `SessionEnd` hook must stop a
//! broker that the session started, and what the session's Bash tool and a stdio MCP server leave behind must be
//! stopped once Claude Code is gone — after a clean `claude -p` exit, and after a SIGKILL with no hook at all.
//!
//! Claude Code (installed by `.ci/install-claude.sh`) runs `claude -p` in a throwaway HOME whose settings
//! install `session-reaper hook --agent claude` for `SessionStart` and `SessionEnd`. A fake Anthropic Messages
//! API on 127.0.0.1 answers the first model turn with a `Bash` tool call that runs
//! `session-reaper broker spawn --cwd <other repo> -- sleep 600`, and the next turn with plain text. Once
//! Claude Code has exited, the broker must be gone and `events.jsonl` must record the `session_end` stop.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// How long one whole `claude -p` run may take before it is killed.
const CLAUDE_DEADLINE: Duration = Duration::from_secs(120);
/// How long the broker and the `session_end` event may lag behind Claude Code's exit.
const AFTERMATH_DEADLINE: Duration = Duration::from_secs(15);
/// Pause between two looks at something polled against a deadline.
const POLL_INTERVAL: Duration = Duration::from_millis(25);
/// The fake API serves at most this many connections, then stops accepting.
const MAX_CONNECTIONS: usize = 64;
/// An idle connection to the fake API is dropped after this long.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(10);
/// Request bodies larger than this are refused (Claude Code's first turn is about 80 KB).
const MAX_BODY: usize = 32 * 1024 * 1024;
/// The id of the one tool call the fake model makes.
const TOOL_USE_ID: &str = "toolu_e2e_broker_spawn";
/// The broker's arguments after the program name `sleep`: nothing but such a process is ever signalled.
const BROKER_ARGS: &[&str] = &["600"];

#[test]
#[ignore = "needs the real Claude Code client: run .ci/install-claude.sh, then cargo test --test e2e_claude -- --include-ignored (.ci/run does)"]
fn claude_session_end_stops_the_broker_it_started() {
    let (claude, bin, _root, dirs) = setup();

    let tool_command = format!(
        "{} --state-dir {} broker spawn --json --cwd {} -- sleep 600",
        shell_quote(bin),
        shell_quote(&dirs.state),
        shell_quote(&dirs.other_repo),
    );
    let api = FakeAnthropic::start(Script {
        tool_command,
        watch: Vec::new(),
        hold_final: false,
    });
    write_settings(&dirs, bin);

    let started = Instant::now();
    let mut run = ClaudeRun::spawn(&claude, &dirs, api.addr(), &[]);
    let status = run.wait(CLAUDE_DEADLINE);
    let elapsed = started.elapsed();
    let report = || diagnostics(&dirs, &api);
    eprintln!("claude -p finished in {elapsed:.2?} with {status:?}");
    eprintln!("fake API saw:\n{}", api.log().requests.join("\n"));

    let log = api.log();
    let broker = log
        .tool_result
        .as_deref()
        .and_then(Broker::from_spawn_output);
    // From here on, a failing assertion still stops the broker.
    let _broker_guard = broker.map(BrokerGuard);

    let status =
        status.unwrap_or_else(|| panic!("claude -p ran past {CLAUDE_DEADLINE:?}\n{}", report()));
    assert!(status.success(), "claude -p failed: {status}\n{}", report());
    let broker = broker.unwrap_or_else(|| {
        panic!(
            "no broker record in the Bash tool result {:?}\n{}",
            log.tool_result,
            report()
        )
    });
    assert_eq!(
        log.broker_alive_at_tool_result,
        Some(true),
        "broker {broker:?} was not running while the session was\n{}",
        report()
    );

    let broker_gone = poll_until(AFTERMATH_DEADLINE, || !broker.is_running());
    assert!(
        broker_gone,
        "broker {broker:?} outlived the session\n{}",
        report()
    );
    let events = dirs.state.join("events.jsonl");
    let ended = poll_until(AFTERMATH_DEADLINE, || {
        !session_end_events(&events, broker.pid).is_empty()
    });
    assert!(
        ended,
        "no session_end event for pid {} in {}\n{}",
        broker.pid,
        events.display(),
        report()
    );
    eprintln!(
        "broker {broker:?} stopped; session_end events:\n{}",
        session_end_events(&events, broker.pid).join("\n")
    );
}

/// How long leftovers may outlive Claude Code before the test fails (the figure measured is printed; the contract
/// is 2 s on an idle machine, this bound leaves room for a loaded one).
const LEFTOVER_DEADLINE: Duration = Duration::from_secs(15);

/// The Bash tool starts a `setsid` sleep and a `nohup` sleep (no `broker spawn`): once `claude -p` has exited, both
/// are gone and the log names them.
#[test]
#[ignore = "needs the real Claude Code client: run .ci/install-claude.sh, then cargo test --test e2e_claude -- --include-ignored (.ci/run does)"]
fn claude_bash_tool_leftovers_are_stopped_once_claude_exits() {
    let (claude, bin, _root, dirs) = setup();
    let (tool_command, sleeps) = leaky_sleeps();
    let api = FakeAnthropic::start(Script {
        tool_command,
        watch: sleeps,
        hold_final: false,
    });
    write_settings(&dirs, bin);
    let mut run = ClaudeRun::spawn(&claude, &dirs, api.addr(), &[]);
    let status = run.wait(CLAUDE_DEADLINE);
    let exited = Instant::now();
    let report = || diagnostics(&dirs, &api);
    let planted = api.log().planted;
    let _guard = PlantedGuard(planted.clone());
    let status =
        status.unwrap_or_else(|| panic!("claude -p ran past {CLAUDE_DEADLINE:?}\n{}", report()));
    assert!(status.success(), "claude -p failed: {status}\n{}", report());
    assert_eq!(
        planted.len(),
        2,
        "both sleeps ran while the session did: {planted:?}\n{}",
        report()
    );
    assert_stopped_as_leftovers(&planted, exited, &dirs, "after claude -p exited", &report);
}

/// A `claude` killed with SIGKILL (no `SessionEnd` hook runs) with a leaky stdio MCP server (it ignores EOF) and two sleeps
/// from its Bash tool: the sentinel stops all three, with no sweep.
#[test]
#[ignore = "needs the real Claude Code client: run .ci/install-claude.sh, then cargo test --test e2e_claude -- --include-ignored (.ci/run does)"]
fn sigkilled_claude_leaves_no_mcp_server_and_no_sleep() {
    let (claude, bin, _root, dirs) = setup();
    let server_token = unique_sleep()[1].clone();
    let server = dirs.tmp.join("leaky_mcp.py");
    fs::write(&server, LEAKY_MCP_SERVER).expect("write the MCP server");
    let python = python3();
    let server_argv = vec![
        python.clone(),
        server.to_string_lossy().into_owned(),
        server_token,
    ];
    let config = dirs.tmp.join("mcp.json");
    let servers =
        json!({ "mcpServers": { "leaky": { "command": python, "args": &server_argv[1..] } } });
    fs::write(&config, servers.to_string()).expect("write the MCP config");
    let (tool_command, sleeps) = leaky_sleeps();
    let api = FakeAnthropic::start(Script {
        tool_command,
        watch: [sleeps, vec![server_argv.clone()]].concat(),
        hold_final: true,
    });
    write_settings(&dirs, bin);
    let extra = [
        OsStr::new("--mcp-config"),
        config.as_os_str(),
        OsStr::new("--strict-mcp-config"),
    ];
    let mut run = ClaudeRun::spawn(&claude, &dirs, api.addr(), &extra);
    let mid_turn = poll_until(CLAUDE_DEADLINE, || api.log().tool_result.is_some());
    let planted = api.log().planted;
    let _guard = PlantedGuard(planted.clone());
    let report = || diagnostics(&dirs, &api);
    assert!(mid_turn, "the Bash tool never ran\n{}", report());
    assert_eq!(
        planted.len(),
        3,
        "the MCP server and both sleeps ran mid-session: {planted:?}\n{}",
        report()
    );
    // While claude lives, `status` lists the server as its agent's MCP server, and neither sleep.
    let servers = mcp_servers_in_status(bin, &dirs);
    assert_eq!(
        servers,
        [server_argv],
        "status --json lists the live claude's MCP server\n{}",
        report()
    );
    run.kill();
    let killed = Instant::now();
    assert_stopped_as_leftovers(
        &planted,
        killed,
        &dirs,
        "after SIGKILL of claude (no sweep ran)",
        &report,
    );
}

/// Waits for every planted process to be gone (printing how long after `since` it took) and for the log to name
/// each as a stopped leftover.
fn assert_stopped_as_leftovers(
    planted: &[Planted],
    since: Instant,
    dirs: &Dirs,
    when: &str,
    report: &dyn Fn() -> String,
) {
    let gone = poll_until(LEFTOVER_DEADLINE, || {
        planted.iter().all(|p| !p.is_running())
    });
    let took = since.elapsed();
    assert!(gone, "leftovers outlived claude: {planted:?}\n{}", report());
    eprintln!("{} leftovers gone {took:.2?} {when}", planted.len());
    let events = dirs.state.join("events.jsonl");
    for planted in planted {
        let named = poll_until(AFTERMATH_DEADLINE, || {
            !leftover_events(&events, &planted.argv).is_empty()
        });
        assert!(
            named,
            "no leftover event names {:?}\n{}",
            planted.argv,
            report()
        );
    }
}

/// The argv of every MCP server `status --json` lists under a live session.
fn mcp_servers_in_status(bin: &Path, dirs: &Dirs) -> Vec<Vec<String>> {
    let out = Command::new(bin)
        .arg("--state-dir")
        .arg(&dirs.state)
        .args(["status", "--json"])
        .stdin(Stdio::null())
        .output()
        .expect("run status --json");
    let status: Value = serde_json::from_slice(&out.stdout).expect("status --json parses");
    status["leftovers"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|view| view["mcp_servers"].as_array().cloned().unwrap_or_default())
        .filter_map(|server| serde_json::from_value(server["argv"].clone()).ok())
        .collect()
}

/// A stdio MCP server that answers `initialize` and `tools/list`, then, at EOF on stdin (its client is gone), keeps
/// running: the leak real servers show.
const LEAKY_MCP_SERVER: &str = r#"
import json, sys, time
for line in sys.stdin:
    try:
        message = json.loads(line)
    except ValueError:
        continue
    if "id" not in message:
        continue
    method = message.get("method")
    if method == "initialize":
        result = {"protocolVersion": message.get("params", {}).get("protocolVersion", "2024-11-05"),
                  "capabilities": {"tools": {}}, "serverInfo": {"name": "leaky", "version": "1"}}
    elif method == "tools/list":
        result = {"tools": []}
    else:
        result = {}
    sys.stdout.write(json.dumps({"jsonrpc": "2.0", "id": message["id"], "result": result}) + "\n")
    sys.stdout.flush()
time.sleep(600)
"#;

/// The real python3 (a version manager's shim would exec it under another argv0).
fn python3() -> String {
    let out = Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .expect("python3 runs");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A Bash-tool command that leaves a `setsid` sleep and a `nohup` sleep behind, and their argvs.
fn leaky_sleeps() -> (String, Vec<Vec<String>>) {
    let (setsid_sleep, nohup_sleep) = (unique_sleep(), unique_sleep());
    let command = format!(
        "(setsid sleep {} >/dev/null 2>&1 &); nohup sleep {} >/dev/null 2>&1 & echo started",
        setsid_sleep[1], nohup_sleep[1]
    );
    (command, vec![setsid_sleep, nohup_sleep])
}

/// `["sleep", "<seconds>"]` with a fraction no other process on this machine has in its argv.
fn unique_sleep() -> Vec<String> {
    let mut bytes = [0u8; 4];
    File::open("/dev/urandom")
        .and_then(|mut file| io::Read::read_exact(&mut file, &mut bytes))
        .expect("random bytes");
    let fraction = u32::from_le_bytes(bytes) % 1_000_000;
    vec!["sleep".to_owned(), format!("900.{fraction:06}")]
}

/// A process the session left behind, by identity and its (unique) argv.
#[derive(Clone, Debug)]
struct Planted {
    pid: u32,
    start_ticks: u64,
    argv: Vec<String>,
}

impl Planted {
    /// The one live process whose argv is `argv`.
    fn find(argv: &[String]) -> Option<Self> {
        fs::read_dir("/proc").ok()?.flatten().find_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let planted = Self {
                pid,
                start_ticks: start_ticks(pid)?,
                argv: argv.to_vec(),
            };
            planted.is_running().then_some(planted)
        })
    }

    /// True while the pid is still this process: same start time, same argv, not a zombie.
    fn is_running(&self) -> bool {
        let cmdline = fs::read(format!("/proc/{}/cmdline", self.pid)).unwrap_or_default();
        let text = String::from_utf8_lossy(&cmdline);
        let argv: Vec<&str> = text
            .strip_suffix('\0')
            .unwrap_or_default()
            .split('\0')
            .collect();
        let state = fs::read_to_string(format!("/proc/{}/stat", self.pid)).unwrap_or_default();
        let zombie = state
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_none_or(|state| state == "Z" || state == "X");
        argv == self.argv && start_ticks(self.pid) == Some(self.start_ticks) && !zombie
    }
}

fn start_ticks(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(19)?
        .parse()
        .ok()
}

/// If the test fails with planted processes still up, stops them: only ours, identity checked just before.
struct PlantedGuard(Vec<Planted>);

impl Drop for PlantedGuard {
    fn drop(&mut self) {
        for planted in self.0.iter().filter(|planted| planted.is_running()) {
            let pid = planted.pid.to_string();
            let _ = Command::new("sh")
                .args(["-c", "kill -KILL \"$1\"", "sh", &pid])
                .status();
        }
    }
}

/// The `leftover` stop events of `events.jsonl` that name `argv`.
fn leftover_events(events: &Path, argv: &[String]) -> Vec<String> {
    let text = fs::read_to_string(events).unwrap_or_default();
    text.lines()
        .filter(|line| {
            serde_json::from_str::<Value>(line).is_ok_and(|event| {
                event["reason"] == "leftover"
                    && event["action"] == "stop"
                    && event["argv"].as_array().is_some_and(|logged| {
                        logged
                            .iter()
                            .filter_map(Value::as_str)
                            .eq(argv.iter().map(String::as_str))
                    })
            })
        })
        .map(str::to_owned)
        .collect()
}

/// The client, our binary, and the throwaway directories of one run (removed when the returned `TempDir` drops).
fn setup() -> (PathBuf, &'static Path, tempfile::TempDir, Dirs) {
    let claude = claude_binary();
    let root = tempfile::Builder::new()
        .prefix("e2e-claude-")
        .tempdir()
        .expect("temp dir");
    let dirs = Dirs::create(root.path());
    (
        claude,
        Path::new(env!("CARGO_BIN_EXE_session-reaper")),
        root,
        dirs,
    )
}

/// The Claude Code executable to drive; the tests are ignored unless asked for, so a missing client fails them.
fn claude_binary() -> PathBuf {
    let candidate = std::env::var_os("SESSION_REAPER_CLAUDE_BIN")
        .filter(|path| !path.is_empty())
        .map_or_else(
            || {
                Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("target/e2e-claude/node_modules/.bin/claude")
            },
            PathBuf::from,
        );
    if candidate.is_file() {
        return candidate;
    }
    // The tests are ignored unless asked for: asked for, a missing client fails them rather than passing silently.
    panic!(
        "real Claude Code not installed (run .ci/install-claude.sh); looked for {}",
        candidate.display()
    );
}

/// The throwaway directories of one run, all under one temp dir.
struct Dirs {
    /// HOME for Claude Code; holds `.claude/settings.json`.
    home: PathBuf,
    /// Claude Code's working directory: a git repository.
    workspace: PathBuf,
    /// Another git repository, where the broker is said to work.
    other_repo: PathBuf,
    /// session-reaper's `--state-dir`.
    state: PathBuf,
    /// TMPDIR and `CLAUDE_CODE_TMPDIR`, so that nothing lands in the shared /tmp.
    tmp: PathBuf,
    /// XDG base directories, so that nothing touches the real ones.
    xdg: PathBuf,
    /// Claude Code's stdout and stderr.
    stdout: PathBuf,
    stderr: PathBuf,
    /// Claude Code's debug log (`--debug-file`): it tells how each hook ran.
    debug_log: PathBuf,
}

impl Dirs {
    fn create(root: &Path) -> Self {
        let dirs = Self {
            home: root.join("home"),
            workspace: root.join("workspace"),
            other_repo: root.join("other-repo"),
            state: root.join("state"),
            tmp: root.join("tmp"),
            xdg: root.join("xdg"),
            stdout: root.join("claude.stdout"),
            stderr: root.join("claude.stderr"),
            debug_log: root.join("claude-debug.log"),
        };
        for dir in [
            dirs.home.join(".claude"),
            dirs.workspace.join(".git"),
            dirs.other_repo.join(".git"),
            dirs.state.clone(),
            dirs.tmp.clone(),
            dirs.xdg.clone(),
        ] {
            fs::create_dir_all(&dir)
                .unwrap_or_else(|err| panic!("create {}: {err}", dir.display()));
        }
        dirs
    }
}

/// Writes `$HOME/.claude/settings.json`: our hooks on `SessionStart` and `SessionEnd`, and Bash allowed without asking.
fn write_settings(dirs: &Dirs, bin: &Path) {
    let hook = format!(
        "{} --state-dir {} hook --agent claude",
        shell_quote(bin),
        shell_quote(&dirs.state)
    );
    let hook_entry = json!([{ "hooks": [{ "type": "command", "command": hook, "timeout": 5 }] }]);
    let settings = json!({
        "hooks": { "SessionStart": hook_entry, "SessionEnd": hook_entry },
        "permissions": { "allow": ["Bash"] },
    });
    let path = dirs.home.join(".claude/settings.json");
    let text = serde_json::to_string_pretty(&settings).expect("settings as JSON");
    fs::write(&path, text).unwrap_or_else(|err| panic!("write {}: {err}", path.display()));
}

/// Quotes a path for `sh`: both Claude Code's hooks and its Bash tool run commands through a shell.
fn shell_quote(path: &Path) -> String {
    let text = path.to_str().expect("temp and build paths are UTF-8");
    format!("'{}'", text.replace('\'', r"'\''"))
}

/// One `claude -p` child; killed on drop if it is still running.
struct ClaudeRun {
    child: Child,
}

impl ClaudeRun {
    fn spawn(claude: &Path, dirs: &Dirs, api: SocketAddr, extra: &[&OsStr]) -> Self {
        let mut command = Command::new(claude);
        command
            .arg("-p")
            .arg("start the broker")
            .args(extra)
            .arg("--debug-file")
            .arg(&dirs.debug_log)
            .current_dir(&dirs.workspace)
            .stdin(Stdio::null())
            .stdout(create_file(&dirs.stdout))
            .stderr(create_file(&dirs.stderr));
        // Nothing inherited from an outer Claude Code session, an API account or another reaper may leak in.
        for (name, _) in std::env::vars_os() {
            if inherited_var_to_drop(&name) {
                command.env_remove(name);
            }
        }
        command
            .env("HOME", &dirs.home)
            // No cgroup but under a parent a test made (tests/e2e_gemini.rs is the containment end to end).
            .env("SESSION_REAPER_CONTAINMENT", "off")
            .env("TMPDIR", &dirs.tmp)
            .env("CLAUDE_CODE_TMPDIR", &dirs.tmp)
            .env("XDG_CONFIG_HOME", dirs.xdg.join("config"))
            .env("XDG_STATE_HOME", dirs.xdg.join("state"))
            .env("XDG_DATA_HOME", dirs.xdg.join("data"))
            .env("XDG_CACHE_HOME", dirs.xdg.join("cache"))
            .env("ANTHROPIC_BASE_URL", format!("http://{api}"))
            .env("ANTHROPIC_API_KEY", "test-key")
            .env("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1")
            .env("DISABLE_AUTOUPDATER", "1");
        let child = command
            .spawn()
            .unwrap_or_else(|err| panic!("start {}: {err}", claude.display()));
        Self { child }
    }

    /// Waits for the exit; `None` if the deadline passed first (the child is then killed).
    fn wait(&mut self, deadline: Duration) -> Option<ExitStatus> {
        let mut status = None;
        poll_until(deadline, || {
            status = self.child.try_wait().expect("poll claude");
            status.is_some()
        });
        if status.is_none() {
            self.kill();
        }
        status
    }

    fn kill(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Drop for ClaudeRun {
    fn drop(&mut self) {
        self.kill();
    }
}

fn inherited_var_to_drop(name: &OsStr) -> bool {
    let name = name.to_string_lossy();
    ["CLAUDE", "ANTHROPIC", "SESSION_REAPER", "IS_SANDBOX"]
        .iter()
        .any(|prefix| name.starts_with(prefix))
}

fn create_file(path: &Path) -> File {
    File::create(path).unwrap_or_else(|err| panic!("create {}: {err}", path.display()))
}

/// The broker as `broker spawn` reported it.
#[derive(Clone, Copy, Debug)]
struct Broker {
    pid: u32,
    /// Start time in clock ticks since boot (`/proc/<pid>/stat` field 22), when the record gave it.
    start_ticks: Option<u64>,
}

impl Broker {
    /// Finds the broker record (`{"identity": {"pid": …, "start_ticks": …}, …}`) in the Bash tool's output.
    fn from_spawn_output(output: &str) -> Option<Self> {
        output.match_indices('{').find_map(|(start, _)| {
            let value = serde_json::Deserializer::from_str(&output[start..])
                .into_iter::<Value>()
                .next()?
                .ok()?;
            let identity = value.get("identity")?;
            Some(Self {
                pid: u32::try_from(identity.get("pid")?.as_u64()?).ok()?,
                start_ticks: identity.get("start_ticks").and_then(Value::as_u64),
            })
        })
    }

    /// True while the pid is still our `sleep 600` (same start time, not a zombie).
    fn is_running(self) -> bool {
        let proc_dir = PathBuf::from(format!("/proc/{}", self.pid));
        if !is_broker_cmdline(&fs::read(proc_dir.join("cmdline")).unwrap_or_default()) {
            return false;
        }
        let Ok(stat) = fs::read_to_string(proc_dir.join("stat")) else {
            return false;
        };
        // Fields after the parenthesised command name: state is field 3, starttime field 22.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map_or(Vec::new(), |(_, rest)| rest.split_whitespace().collect());
        let zombie = fields
            .first()
            .is_none_or(|state| *state == "Z" || *state == "X");
        let same_start = self
            .start_ticks
            .is_none_or(|ticks| fields.get(19).and_then(|field| field.parse().ok()) == Some(ticks));
        !zombie && same_start
    }
}

/// Whether a `/proc/<pid>/cmdline` is `sleep 600` (the program named by a bare or absolute path).
fn is_broker_cmdline(cmdline: &[u8]) -> bool {
    let text = String::from_utf8_lossy(cmdline);
    let mut args = text.strip_suffix('\0').unwrap_or_default().split('\0');
    let program = args.next().unwrap_or_default();
    Path::new(program).file_name() == Some(OsStr::new("sleep"))
        && args.eq(BROKER_ARGS.iter().copied())
}

/// If the test fails with the broker still up, stops it: only our own `sleep 600`, checked just before.
struct BrokerGuard(Broker);

impl Drop for BrokerGuard {
    fn drop(&mut self) {
        if self.0.is_running() {
            let pid = self.0.pid.to_string();
            let _ = Command::new("sh")
                .args(["-c", "kill -TERM \"$1\"", "sh", &pid])
                .status();
        }
    }
}

/// The lines of `events.jsonl` whose `reason` is `session_end` and whose `pid` is the broker's.
fn session_end_events(events: &Path, pid: u32) -> Vec<String> {
    let text = fs::read_to_string(events).unwrap_or_default();
    text.lines()
        .filter(|line| {
            serde_json::from_str::<Value>(line).is_ok_and(|event| {
                event.get("reason").and_then(Value::as_str) == Some("session_end")
                    && event.get("pid").and_then(Value::as_u64) == Some(u64::from(pid))
            })
        })
        .map(str::to_owned)
        .collect()
}

/// Calls `done` until it says true or the deadline passes; tells which.
fn poll_until(deadline: Duration, mut done: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + deadline;
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        thread::sleep(POLL_INTERVAL);
    }
}

/// Everything worth seeing when the test fails.
fn diagnostics(dirs: &Dirs, api: &FakeAnthropic) -> String {
    let read = |path: &Path| fs::read_to_string(path).unwrap_or_else(|err| format!("<{err}>"));
    let log = api.log();
    let mut text = String::new();
    let _ = writeln!(text, "--- claude stdout\n{}", read(&dirs.stdout));
    let _ = writeln!(text, "--- claude stderr\n{}", read(&dirs.stderr));
    let _ = writeln!(text, "--- fake API requests\n{}", log.requests.join("\n"));
    let hook_lines: Vec<String> = read(&dirs.debug_log)
        .lines()
        .filter(|line| line.to_ascii_lowercase().contains("hook"))
        .map(str::to_owned)
        .collect();
    let _ = writeln!(
        text,
        "--- hook lines of the debug log\n{}",
        hook_lines.join("\n")
    );
    let _ = writeln!(text, "--- Bash tool result\n{:?}", log.tool_result);
    let _ = writeln!(
        text,
        "--- events.jsonl\n{}",
        read(&dirs.state.join("events.jsonl"))
    );
    text
}

/// What the fake API has seen so far.
#[derive(Clone, Debug, Default)]
struct ApiLog {
    /// One summary line per request: method, path, model, stream, tools, reply.
    requests: Vec<String>,
    /// The text of the Bash tool's result, as Claude Code sent it back to the model.
    tool_result: Option<String>,
    /// Whether the broker named in that result was running when the result arrived, i.e. mid-session.
    broker_alive_at_tool_result: Option<bool>,
    /// The processes with a watched argv that ran when the tool result arrived.
    planted: Vec<Planted>,
}

/// What the fake model does in one run.
struct Script {
    /// The command of its one Bash tool call.
    tool_command: String,
    /// Argvs (unique to the run) of processes the command leaves behind, looked up when the result arrives.
    watch: Vec<Vec<String>>,
    /// Hold the reply to the tool result until the fake API is dropped: the session stays mid-turn (to be killed).
    hold_final: bool,
}

struct Shared {
    stop: AtomicBool,
    script: Script,
    log: Mutex<ApiLog>,
}

/// A minimal Anthropic Messages API on 127.0.0.1, one thread per connection, `Connection: close` on every reply.
struct FakeAnthropic {
    addr: SocketAddr,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

impl FakeAnthropic {
    fn start(script: Script) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the fake API");
        let addr = listener.local_addr().expect("fake API address");
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            script,
            log: Mutex::new(ApiLog::default()),
        });
        let acceptor = {
            let shared = Arc::clone(&shared);
            thread::spawn(move || accept_connections(&listener, &shared))
        };
        Self {
            addr,
            shared,
            acceptor: Some(acceptor),
        }
    }

    fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn log(&self) -> ApiLog {
        self.shared
            .log
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl Drop for FakeAnthropic {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept so that it sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

fn accept_connections(listener: &TcpListener, shared: &Arc<Shared>) {
    for stream in listener.incoming().take(MAX_CONNECTIONS) {
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(stream) = stream else { continue };
        let shared = Arc::clone(shared);
        // Each connection ends within CONNECTION_TIMEOUT of going quiet, so these threads end by themselves.
        thread::spawn(move || {
            let _ = serve_connection(stream, &shared);
        });
    }
}

struct Request {
    method: String,
    path: String,
    body: Vec<u8>,
}

struct Reply {
    status: &'static str,
    content_type: &'static str,
    body: Vec<u8>,
}

fn serve_connection(stream: TcpStream, shared: &Shared) -> io::Result<()> {
    stream.set_read_timeout(Some(CONNECTION_TIMEOUT))?;
    stream.set_write_timeout(Some(CONNECTION_TIMEOUT))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let Some(request) = read_request(&mut reader)? else {
        return Ok(());
    };
    let (reply, summary) = answer(&request, shared);
    lock(shared).requests.push(summary);
    let mut writer = stream;
    write!(
        writer,
        "HTTP/1.1 {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        reply.status,
        reply.content_type,
        reply.body.len()
    )?;
    if request.method != "HEAD" {
        writer.write_all(&reply.body)?;
    }
    writer.flush()?;
    writer.shutdown(Shutdown::Both)
}

fn lock(shared: &Shared) -> std::sync::MutexGuard<'_, ApiLog> {
    shared.log.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Reads one HTTP/1.1 request with a `Content-Length` body; `None` if the peer closed without sending one.
fn read_request(reader: &mut impl BufRead) -> io::Result<Option<Request>> {
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    let mut parts = line.split_whitespace();
    let (Some(method), Some(path)) = (parts.next(), parts.next()) else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("bad request line {line:?}"),
        ));
    };
    let (method, path) = (method.to_owned(), path.to_owned());
    let mut headers = HashMap::new();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Ok(None);
        }
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_owned());
        }
    }
    let length: usize = headers
        .get("content-length")
        .map_or(Ok(0), |value| value.parse())
        .map_err(|err| {
            io::Error::new(io::ErrorKind::InvalidData, format!("content-length: {err}"))
        })?;
    if length > MAX_BODY {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "request body too large",
        ));
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    Ok(Some(Request { method, path, body }))
}

/// Logs the tool result and what was running when it arrived; with `hold_final`, keeps the turn open.
fn note_tool_result(shared: &Shared, result: &str) {
    let alive = Broker::from_spawn_output(result).map(Broker::is_running);
    let planted = shared
        .script
        .watch
        .iter()
        .filter_map(|argv| {
            // A backgrounded job may not have exec'd yet when the shell returns.
            let mut found = None;
            poll_until(AFTERMATH_DEADLINE, || {
                found = Planted::find(argv);
                found.is_some()
            });
            found
        })
        .collect();
    {
        let mut log = lock(shared);
        log.tool_result = Some(result.to_owned());
        log.broker_alive_at_tool_result = alive;
        log.planted = planted;
    }
    let held_until = Instant::now() + CLAUDE_DEADLINE;
    while shared.script.hold_final
        && !shared.stop.load(Ordering::SeqCst)
        && Instant::now() < held_until
    {
        thread::sleep(POLL_INTERVAL);
    }
}

/// The reply to one request, and a one-line summary of both for the log.
fn answer(request: &Request, shared: &Shared) -> (Reply, String) {
    let route = request.path.split('?').next().unwrap_or_default();
    let head = format!("{} {}", request.method, request.path);
    if request.method != "POST" || !route.starts_with("/v1/messages") {
        return (
            json_reply("404 Not Found", &not_found()),
            format!("{head} -> 404"),
        );
    }
    let Ok(body) = serde_json::from_slice::<Value>(&request.body) else {
        return (
            json_reply("400 Bad Request", &json!({})),
            format!("{head} -> 400 (body is not JSON)"),
        );
    };
    if route == "/v1/messages/count_tokens" {
        return (
            json_reply("200 OK", &json!({ "input_tokens": 1 })),
            format!("{head} -> count"),
        );
    }
    if route != "/v1/messages" {
        return (
            json_reply("404 Not Found", &not_found()),
            format!("{head} -> 404"),
        );
    }

    let model = body
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or("claude-test");
    let stream = body.get("stream").and_then(Value::as_bool).unwrap_or(false);
    let tools: Vec<&str> = body
        .get("tools")
        .and_then(Value::as_array)
        .map(|tools| {
            tools
                .iter()
                .filter_map(|tool| tool.get("name")?.as_str())
                .collect()
        })
        .unwrap_or_default();
    let main_conversation = tools.contains(&"Bash");
    let tool_result = find_tool_result(&body);
    let content = if let Some(result) = &tool_result {
        note_tool_result(shared, result);
        json!([{ "type": "text", "text": "The broker is running." }])
    } else if main_conversation {
        json!([{
            "type": "tool_use",
            "id": TOOL_USE_ID,
            "name": "Bash",
            "input": { "command": shared.script.tool_command, "description": "Start the broker" },
        }])
    } else {
        json!([{ "type": "text", "text": "ok" }])
    };
    let answered = content[0]["type"].as_str().unwrap_or_default().to_owned();
    let summary = format!(
        "{head} model={model} stream={stream} tools={} -> {answered}",
        tools.len()
    );
    let message = json!({
        "id": "msg_e2e",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": if answered == "tool_use" { "tool_use" } else { "end_turn" },
        "stop_sequence": null,
        "usage": { "input_tokens": 1, "output_tokens": 1 },
    });
    let reply = if stream {
        Reply {
            status: "200 OK",
            content_type: "text/event-stream",
            body: server_sent_events(&message).into_bytes(),
        }
    } else {
        json_reply("200 OK", &message)
    };
    (reply, summary)
}

fn not_found() -> Value {
    json!({ "type": "error", "error": { "type": "not_found_error", "message": "not served by the e2e fake" } })
}

fn json_reply(status: &'static str, body: &Value) -> Reply {
    Reply {
        status,
        content_type: "application/json",
        body: body.to_string().into_bytes(),
    }
}

/// The text of the result of our tool call, if this request carries it back.
fn find_tool_result(body: &Value) -> Option<String> {
    let messages = body.get("messages")?.as_array()?;
    let block = messages
        .iter()
        .filter_map(|message| message.get("content")?.as_array())
        .flatten()
        .find(|block| {
            block.get("type").and_then(Value::as_str) == Some("tool_result")
                && block.get("tool_use_id").and_then(Value::as_str) == Some(TOOL_USE_ID)
        })?;
    match block.get("content") {
        Some(Value::String(text)) => Some(text.clone()),
        Some(Value::Array(parts)) => Some(
            parts
                .iter()
                .filter_map(|part| part.get("text")?.as_str())
                .collect::<Vec<_>>()
                .join("\n"),
        ),
        _ => Some(String::new()),
    }
}

/// The streamed form of a complete message: the event sequence the Messages API sends for `"stream": true`.
fn server_sent_events(message: &Value) -> String {
    let mut start = message.clone();
    start["content"] = json!([]);
    start["stop_reason"] = Value::Null;
    let mut events = vec![(
        "message_start",
        json!({ "type": "message_start", "message": start }),
    )];
    for (index, block) in message["content"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        let (empty, delta) = if block["type"] == "tool_use" {
            let mut empty = block.clone();
            empty["input"] = json!({});
            let partial = block["input"].to_string();
            (
                empty,
                json!({ "type": "input_json_delta", "partial_json": partial }),
            )
        } else {
            let text = block["text"].clone();
            (
                json!({ "type": "text", "text": "" }),
                json!({ "type": "text_delta", "text": text }),
            )
        };
        events.push((
            "content_block_start",
            json!({ "type": "content_block_start", "index": index, "content_block": empty }),
        ));
        events.push((
            "content_block_delta",
            json!({ "type": "content_block_delta", "index": index, "delta": delta }),
        ));
        events.push((
            "content_block_stop",
            json!({ "type": "content_block_stop", "index": index }),
        ));
    }
    events.push((
        "message_delta",
        json!({
            "type": "message_delta",
            "delta": { "stop_reason": message["stop_reason"], "stop_sequence": null },
            "usage": { "output_tokens": 1 },
        }),
    ));
    events.push(("message_stop", json!({ "type": "message_stop" })));
    let mut stream = String::new();
    for (name, data) in events {
        let _ = write!(stream, "event: {name}\ndata: {data}\n\n");
    }
    stream
}
