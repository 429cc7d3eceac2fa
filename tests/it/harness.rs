//! The integration-test harness: a temp state root and workspaces per test, the real binary, and every process a
//! test starts (directly, or through the binary as a broker) killed on drop — by identity, never by name.

#![allow(dead_code)]

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;

pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_session-reaper");

/// Generous: tests must pass on a loaded 2-core machine.
pub(crate) const PATIENCE: Duration = Duration::from_secs(30);

/// Polls `condition` until it holds or `limit` passes; true if it held.
pub(crate) fn wait_until(limit: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    let mut pause = Duration::from_millis(2);
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// `(state, start_ticks)` of a process from /proc, or None when it is gone.
pub(crate) fn proc_stat(pid: i32) -> Option<(char, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some((
        fields.first()?.chars().next()?,
        fields.get(19)?.parse().ok()?,
    ))
}

pub(crate) fn start_ticks(pid: i32) -> Option<u64> {
    proc_stat(pid).map(|(_, ticks)| ticks)
}

/// True while the process with this pid and start time runs (a zombie counts as gone).
pub(crate) fn alive(pid: i32, ticks: u64) -> bool {
    matches!(proc_stat(pid), Some((state, t)) if t == ticks && state != 'Z')
}

/// A process known by identity: what the harness may signal on cleanup.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Proc {
    pub pid: i32,
    pub ticks: u64,
}

impl Proc {
    pub(crate) fn of(pid: i32) -> Option<Proc> {
        start_ticks(pid).map(|ticks| Proc { pid, ticks })
    }

    pub(crate) fn alive(self) -> bool {
        alive(self.pid, self.ticks)
    }

    /// Waits for it to be gone; true if it went.
    pub(crate) fn gone_within(self, limit: Duration) -> bool {
        wait_until(limit, || !self.alive())
    }

    /// SIGKILLs it (and its group when it leads one), only while its identity still matches.
    pub(crate) fn kill(self) {
        if self.alive() {
            unsafe {
                libc::kill(-self.pid, libc::SIGKILL);
                libc::kill(self.pid, libc::SIGKILL);
            }
        }
    }
}

/// One test's world. Everything it makes on disk is under one temp dir (`base`: the state root, the work dir, and
/// whatever a test plants beside them); every process the harness starts carries `base` in its environment
/// (`TEST_MARKER`), inherited by all it starts in turn. On drop, even when the test failed, every such process
/// and every process of the state root is killed (SIGKILL, by identity), then `base` is removed.
pub(crate) struct Env {
    pub state: TempDir,
    pub work: TempDir,
    children: Vec<Child>,
    planted: Vec<Proc>,
    /// Dropped last: the state and work dirs are inside it.
    base: TempDir,
}

/// The environment variable that marks every process a test started, directly or not: `SR_TEST_ENV=<base>`.
pub(crate) const TEST_MARKER: &str = "SR_TEST_ENV";

impl Default for Env {
    fn default() -> Self {
        Self::new()
    }
}

impl Env {
    pub(crate) fn new() -> Self {
        let base = tempfile::Builder::new()
            .prefix("sr-test-")
            .tempdir()
            .expect("temp dir of the test");
        Env {
            state: tempfile::Builder::new()
                .prefix("sr-state-")
                .tempdir_in(base.path())
                .expect("temp state dir"),
            work: tempfile::Builder::new()
                .prefix("sr-work-")
                .tempdir_in(base.path())
                .expect("temp work dir"),
            children: Vec::new(),
            planted: Vec::new(),
            base,
        }
    }

    /// Marks `command` (and so everything it starts) as this test's: killed when the test ends.
    pub(crate) fn mark(&self, command: &mut Command) {
        command.env(TEST_MARKER, self.base.path());
    }

    pub(crate) fn state_dir(&self) -> &Path {
        self.state.path()
    }

    /// A fresh git workspace (a directory with `.git`) under the work dir.
    pub(crate) fn workspace(&self, name: &str) -> PathBuf {
        let dir = self.work.path().join(name);
        std::fs::create_dir_all(dir.join(".git")).expect("workspace");
        std::fs::canonicalize(dir).expect("canonical workspace")
    }

    /// The binary with this test's state root and an environment free of agent variables. `broker spawn`,
    /// `register` and `attach` get `--json` (the record, which the tests read and which tracks the broker); use
    /// `cmd_as_typed` for their text for people.
    pub(crate) fn cmd(&self, args: &[&str]) -> Command {
        let records = matches!(args, ["broker", "spawn" | "register" | "attach", ..])
            && !args
                .iter()
                .any(|arg| matches!(*arg, "--json" | "--help" | "-h"));
        let mut words = args.to_vec();
        if records {
            words.insert(2, "--json");
        }
        self.cmd_as_typed(&words)
    }

    /// The binary with this test's state root and exactly `args`.
    pub(crate) fn cmd_as_typed(&self, args: &[&str]) -> Command {
        let mut command = Command::new(BIN);
        command.arg("--state-dir").arg(self.state_dir()).args(args);
        scrub_env(&mut command);
        self.mark(&mut command);
        // The Codex plugin adapter looks in <tmpdir>/codex-companion and ~/.claude/plugins/data: the test's own.
        command
            .env("TMPDIR", self.work.path())
            .env("HOME", self.work.path().join("home"));
        command.stdin(Stdio::null());
        command
    }

    /// Runs the binary to completion (bounded) and records any broker it reports.
    pub(crate) fn run(&mut self, args: &[&str]) -> Output {
        let out = run_bounded(self.cmd(args), None);
        self.note_brokers(&out);
        out
    }

    /// Runs the binary with `stdin` bytes, closing stdin after them.
    pub(crate) fn run_stdin(&mut self, args: &[&str], stdin: &[u8]) -> Output {
        let out = run_bounded(self.cmd(args), Some(stdin));
        self.note_brokers(&out);
        out
    }

    /// Runs a prepared command (bounded).
    pub(crate) fn run_command(&mut self, command: Command) -> Output {
        let out = run_bounded(command, None);
        self.note_brokers(&out);
        out
    }

    /// `broker spawn` printed the record (or, for people, "started broker PID …"): remember the broker so it
    /// dies with the test.
    fn note_brokers(&mut self, out: &Output) {
        let text = String::from_utf8_lossy(&out.stdout);
        for line in text.lines() {
            if let Some(proc) = line
                .strip_prefix("started broker ")
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|pid| pid.parse().ok())
                .and_then(Proc::of)
            {
                self.track(proc);
            }
        }
        if let Ok(value) = serde_json::from_slice::<Value>(&out.stdout)
            && let Some(pid) = value.pointer("/identity/pid").and_then(Value::as_i64)
        {
            let ticks = value
                .pointer("/identity/start_ticks")
                .and_then(Value::as_u64)
                .unwrap_or(0);
            self.track(Proc {
                pid: i32::try_from(pid).unwrap(),
                ticks,
            });
        }
    }

    /// Kill `proc` on drop (if it is still that process).
    pub(crate) fn track(&mut self, proc: Proc) {
        if !self.planted.contains(&proc) {
            self.planted.push(proc);
        }
    }

    /// Starts a child process of the test (killed on drop) and returns its identity once it has exec'd.
    pub(crate) fn spawn(&mut self, mut command: Command) -> Proc {
        command.stdin(Stdio::null());
        self.mark(&mut command);
        let child = command.spawn().expect("spawn child");
        let pid = i32::try_from(child.id()).unwrap();
        self.children.push(child);
        // `spawn` returns once the vfork'd child has begun exec, before the kernel has set up its new argv: until
        // then /proc shows the test's argv or none, and a scan for `--resume` would miss it. (A child that already
        // exited has nothing left to show.)
        let program = command.get_program().to_string_lossy().into_owned();
        let exec_done = || {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|argv| argv.split(|b| *b == 0).next() == Some(program.as_bytes()))
                || matches!(proc_stat(pid), None | Some(('Z', _)))
        };
        assert!(
            wait_until(PATIENCE, exec_done),
            "{program} never showed its argv"
        );
        Proc::of(pid).expect("child started")
    }

    /// `sleep 600` as a child of the test.
    pub(crate) fn sleeper(&mut self) -> Proc {
        let mut command = Command::new("sleep");
        command.arg("600");
        self.spawn(command)
    }

    /// Reaps exited direct children, so that a killed one does not linger as a zombie.
    pub(crate) fn reap_children(&mut self) {
        for child in &mut self.children {
            let _ = child.try_wait();
        }
    }

    /// Spawns a broker for `session` in `workspace` and returns its identity.
    pub(crate) fn spawn_broker(&mut self, workspace: &Path, session: &str, argv: &[&str]) -> Proc {
        self.spawn_broker_with(workspace, session, &[], argv).0
    }

    /// `broker spawn` with extra flags: the broker's identity and the record it printed.
    pub(crate) fn spawn_broker_with(
        &mut self,
        workspace: &Path,
        session: &str,
        flags: &[&str],
        argv: &[&str],
    ) -> (Proc, Value) {
        let mut words = vec![
            "broker",
            "spawn",
            "--json",
            "--cwd",
            workspace.to_str().unwrap(),
        ];
        // `--no-owner` among the flags: no session.
        if !flags.contains(&"--no-owner") {
            words.extend(["--session", session]);
        }
        words.extend_from_slice(flags);
        words.push("--");
        words.extend_from_slice(argv);
        let out = self.run(&words);
        assert!(
            out.status.success(),
            "spawn failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let value: Value = serde_json::from_slice(&out.stdout).expect("spawn prints JSON");
        let identity = |key: &str| {
            value
                .pointer(&format!("/identity/{key}"))
                .and_then(Value::as_u64)
        };
        let proc = Proc {
            pid: i32::try_from(identity("pid").unwrap()).unwrap(),
            ticks: identity("start_ticks").unwrap(),
        };
        (proc, value)
    }

    /// Every event in events.jsonl.
    pub(crate) fn events(&self) -> Vec<Value> {
        let bytes = std::fs::read(self.state_dir().join("events.jsonl")).unwrap_or_default();
        String::from_utf8_lossy(&bytes)
            .lines()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect()
    }

    /// Events with this action (and reason, if given).
    pub(crate) fn events_where(&self, action: &str, reason: Option<&str>) -> Vec<Value> {
        self.events()
            .into_iter()
            .filter(|e| e["action"] == action && reason.is_none_or(|r| e["reason"] == r))
            .collect()
    }

    /// The session record of `session`, if there is one that parses.
    pub(crate) fn session_record(&self, session: &str) -> Option<Value> {
        let path = self.state_dir().join(format!("sessions/{session}.json"));
        serde_json::from_slice(&std::fs::read(path).ok()?).ok()
    }

    /// The stop tickets on disk (`stopping/*.json`).
    pub(crate) fn tickets(&self) -> Vec<PathBuf> {
        std::fs::read_dir(self.state_dir().join("stopping"))
            .map(|entries| {
                entries
                    .flatten()
                    .map(|entry| entry.path())
                    .filter(|path| path.extension().is_some_and(|ext| ext == "json"))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// `status --json`.
    pub(crate) fn status(&mut self) -> Value {
        let out = self.run(&["status", "--json"]);
        serde_json::from_slice(&out.stdout).expect("status --json parses")
    }

    /// The broker.json of every slot, by workspace path.
    pub(crate) fn records(&self) -> HashMap<String, Value> {
        walkdir(self.state_dir().join("workspaces"))
            .into_iter()
            .filter(|p| p.file_name().is_some_and(|n| n == "broker.json"))
            .filter_map(|p| serde_json::from_slice::<Value>(&std::fs::read(&p).ok()?).ok())
            .map(|v| {
                (
                    format!(
                        "{}/{}",
                        v["workspace"].as_str().unwrap_or(""),
                        v["name"].as_str().unwrap_or("")
                    ),
                    v,
                )
            })
            .collect()
    }

    /// All files under the state root (relative), for "nothing changed" checks.
    pub(crate) fn state_files(&self) -> Vec<(PathBuf, Vec<u8>)> {
        let mut files: Vec<(PathBuf, Vec<u8>)> = walkdir(self.state_dir().to_path_buf())
            .into_iter()
            .filter(|p| p.is_file())
            .map(|p| {
                (
                    p.strip_prefix(self.state_dir()).unwrap().to_path_buf(),
                    std::fs::read(&p).unwrap_or_default(),
                )
            })
            .collect();
        files.sort();
        files
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        for proc in &self.planted {
            proc.kill();
        }
        // Until a look finds none (a hook being killed may have just started a finisher): what carries the test's
        // marker, brokers our binary started for this test by paths the harness did not see (a fake agent's own
        // `broker spawn`, a thread's direct run: they carry the unique state root in their environment), the
        // finishers and sentinels naming the state root, and stand-in plugin brokers (TMPDIR is the work dir).
        // Only then is the state root removed: nothing is left to write into it again.
        let marker = format!("{TEST_MARKER}={}", self.base.path().display());
        for _ in 0..100 {
            let mut found = with_env_entry(&marker);
            found.extend(marked_with_state_root(self.state_dir()));
            found.extend(naming(self.state_dir()));
            found.extend(plugin_brokers_of(self.work.path()));
            if found.is_empty() {
                break;
            }
            for proc in found {
                proc.kill();
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Live processes whose environment names `state_root` as their `SESSION_REAPER_STATE_ROOT`: brokers that our
/// binary started for the test owning that (unique, temporary) root, and nothing else.
pub(crate) fn marked_with_state_root(state_root: &Path) -> Vec<Proc> {
    with_env_entry(&format!(
        "SESSION_REAPER_STATE_ROOT={}",
        state_root.display()
    ))
}

/// Stand-in plugin brokers (and their app servers) started for the test whose work dir is `work`: their
/// environment has `TMPDIR=<work>` and a `FAKE_BROKER_MODE`.
pub(crate) fn plugin_brokers_of(work: &Path) -> Vec<Proc> {
    with_env_entry(&format!("TMPDIR={}", work.display()))
        .into_iter()
        .filter(|proc| {
            std::fs::read(format!("/proc/{}/environ", proc.pid)).is_ok_and(|environ| {
                environ
                    .split(|b| *b == 0)
                    .any(|entry| entry.starts_with(b"FAKE_BROKER_MODE="))
            }) && Proc::of(proc.pid) == Some(*proc)
        })
        .collect()
}

/// Live processes whose environment has exactly `wanted` (`NAME=value`), read between two identity reads.
pub(crate) fn with_env_entry(wanted: &str) -> Vec<Proc> {
    all_pids()
        .into_iter()
        .filter_map(|pid| {
            let before = Proc::of(pid)?;
            let environ = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
            let marked = environ
                .split(|b| *b == 0)
                .any(|entry| entry == wanted.as_bytes());
            // The identity read before the environment still holds: the environment was this process's.
            (marked && Proc::of(pid) == Some(before)).then_some(before)
        })
        .collect()
}

/// Removes agent and session-reaper variables so that the developer's own session never leaks into a test, and
/// turns containment off: a test that wants it turns it on with a cgroup root of its own (`containment::TestCgroup`),
/// so that no test makes a cgroup anywhere else.
pub(crate) fn scrub_env(command: &mut Command) {
    command.env("SESSION_REAPER_CONTAINMENT", "off");
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy().into_owned();
        if name.starts_with("SESSION_REAPER_")
            || name.starts_with("CLAUDE")
            || name.starts_with("GEMINI_")
            || name.starts_with("CODEX_")
            || name.starts_with("QWEN_")
        {
            command.env_remove(name);
        }
    }
}

/// Runs `command` with optional stdin, killing it after `PATIENCE`.
pub(crate) fn run_bounded(command: Command, stdin: Option<&[u8]>) -> Output {
    run_bounded_for(command, stdin, PATIENCE)
}

/// Runs `command` with optional stdin, killing it after `limit`.
pub(crate) fn run_bounded_for(
    mut command: Command,
    stdin: Option<&[u8]>,
    limit: Duration,
) -> Output {
    command.stdout(Stdio::piped()).stderr(Stdio::piped());
    if stdin.is_some() {
        command.stdin(Stdio::piped());
    }
    let mut child = command.spawn().expect("start session-reaper");
    if let Some(bytes) = stdin {
        let mut pipe = child.stdin.take().unwrap();
        let _ = pipe.write_all(bytes);
    }
    let me = Proc::of(i32::try_from(child.id()).unwrap());
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let finished = done.clone();
    let watchdog = std::thread::spawn(move || {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if finished.load(std::sync::atomic::Ordering::SeqCst) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if let Some(me) = me.filter(|me| me.alive()) {
            unsafe { libc::kill(me.pid, libc::SIGKILL) };
        }
    });
    let out = child.wait_with_output().expect("wait for session-reaper");
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let _ = watchdog.join();
    out
}

pub(crate) fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub(crate) fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn walkdir(root: PathBuf) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(path.clone());
            }
            out.push(path);
        }
    }
    out
}

/// A home of the test's own for commands that read or write agent settings, the crontab or systemd user units:
/// `HOME` points there, XDG and agent config variables are unset, and `PATH` starts with a `bin/` holding a fake
/// `crontab` (its table is `home/crontab`) and a `systemctl` that reports no user manager.
pub(crate) struct Home {
    pub dir: PathBuf,
}

impl Home {
    pub(crate) fn new(env: &Env) -> Home {
        let dir = env.work.path().join("home");
        let bin = dir.join("bin");
        std::fs::create_dir_all(&bin).expect("home/bin");
        let table = dir.join("crontab");
        let crontab = format!(
            "#!/bin/sh\nif [ \"$1\" = -l ]; then [ -f '{0}' ] && exec cat '{0}'; echo 'no crontab' >&2; exit 1; fi\nif [ \"$1\" = - ]; then exec cat > '{0}'; fi\nexit 2\n",
            table.display()
        );
        for (name, script) in [
            ("crontab", crontab.as_str()),
            ("systemctl", "#!/bin/sh\nexit 1\n"),
        ] {
            let path = bin.join(name);
            std::fs::write(&path, script).expect("fake tool");
            std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755))
                .unwrap();
        }
        Home { dir }
    }

    /// The fake crontab's table.
    pub(crate) fn crontab(&self) -> String {
        std::fs::read_to_string(self.dir.join("crontab")).unwrap_or_default()
    }

    /// The binary run in this home, with `--state-dir` of the test (pass `state` to choose another).
    pub(crate) fn cmd(&self, env: &Env, state: Option<&Path>, args: &[&str]) -> Command {
        let mut command = Command::new(BIN);
        command
            .arg("--state-dir")
            .arg(state.unwrap_or(env.state_dir()))
            .args(args);
        scrub_env(&mut command);
        env.mark(&mut command);
        for name in [
            "XDG_CONFIG_HOME",
            "XDG_STATE_HOME",
            "COPILOT_HOME",
            "CURSOR_VERSION",
            "FACTORY_PROJECT_DIR",
        ] {
            command.env_remove(name);
        }
        let path = std::env::var("PATH").unwrap_or_default();
        command
            .env("HOME", &self.dir)
            .env("PATH", format!("{}:{path}", self.dir.join("bin").display()))
            .current_dir(env.work.path())
            .stdin(Stdio::null());
        command
    }
}

/// The Codex plugin's stand-in scripts (`fixtures/codex-plugin/scripts`): our own, reproducing its layout, argv and
/// shutdown protocol.
pub(crate) fn plugin_script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/codex-plugin/scripts")
        .join(name)
}

/// How a stand-in plugin broker behaves when asked to stop (`FAKE_BROKER_MODE`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BrokerMode {
    /// Answers the shutdown line and exits; exits on SIGTERM.
    Answers,
    /// Accepts and never answers; exits on SIGTERM.
    Silent,
    /// Never answers, ignores SIGTERM.
    Stubborn,
}

impl BrokerMode {
    fn as_str(self) -> &'static str {
        match self {
            BrokerMode::Answers => "answers",
            BrokerMode::Silent => "silent",
            BrokerMode::Stubborn => "stubborn",
        }
    }
}

/// One plugin broker a test started, with the files the plugin keeps for it.
#[derive(Clone, Debug)]
pub(crate) struct PluginBroker {
    pub proc: Proc,
    /// Its `codex app-server` stand-in, in its process group.
    pub app_server: Proc,
    pub endpoint: String,
    pub socket: PathBuf,
    pub pid_file: PathBuf,
    pub session_dir: PathBuf,
    /// `<root>/<slug>-<hash16>`.
    pub state_dir: PathBuf,
    pub broker_json: PathBuf,
}

impl Env {
    /// `$CLAUDE_PLUGIN_DATA` of this test's plugin; its state root is `<it>/state`.
    pub(crate) fn plugin_data(&self) -> PathBuf {
        self.work.path().join("plugin-data")
    }

    pub(crate) fn plugin_root(&self) -> PathBuf {
        self.plugin_data().join("state")
    }

    /// The file that gets every line the brokers of `session` received.
    pub(crate) fn plugin_trace(&self, session: &str) -> PathBuf {
        self.work.path().join(format!("trace-{session}"))
    }

    /// The plugin's companion starting a broker for `session` in `cwd`, as a shell tool of that session would:
    /// `CODEX_COMPANION_SESSION_ID` set, this test's `CLAUDE_PLUGIN_DATA` (unless `plugin_data` is `None`: then the
    /// state goes to `<TMPDIR>/codex-companion`) and TMPDIR.
    pub(crate) fn companion(
        &self,
        cwd: &Path,
        session: &str,
        mode: BrokerMode,
        plugin_data: Option<&Path>,
    ) -> Command {
        let mut command = Command::new("node");
        command
            .arg(plugin_script("codex-companion.mjs"))
            .args(["spawn", "--cwd"])
            .arg(cwd);
        scrub_env(&mut command);
        command
            .env("TMPDIR", self.work.path())
            .env("CODEX_COMPANION_SESSION_ID", session)
            .env("FAKE_BROKER_MODE", mode.as_str())
            .env("FAKE_BROKER_TRACE", self.plugin_trace(session))
            .stdin(Stdio::null());
        if let Some(data) = plugin_data {
            command.env("CLAUDE_PLUGIN_DATA", data);
        }
        command
    }

    /// Starts a plugin broker for `session` in `cwd` (state under this test's `CLAUDE_PLUGIN_DATA`) and waits for
    /// its `broker.json`.
    pub(crate) fn plugin_broker(
        &mut self,
        cwd: &Path,
        session: &str,
        mode: BrokerMode,
    ) -> PluginBroker {
        let data = self.plugin_data();
        let command = self.companion(cwd, session, mode, Some(&data));
        self.companion_broker(command)
    }

    /// Runs a prepared companion to its end and tracks the broker it started (killed on drop, with its group).
    pub(crate) fn companion_broker(&mut self, command: Command) -> PluginBroker {
        let out = run_bounded(command, None);
        assert!(
            out.status.success(),
            "companion failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.broker_printed(&out.stdout)
    }

    /// The broker a companion printed, tracked.
    pub(crate) fn broker_printed(&mut self, stdout: &[u8]) -> PluginBroker {
        let value: Value = serde_json::from_slice(stdout).expect("companion prints JSON");
        let text = |key: &str| value[key].as_str().expect("companion field").to_owned();
        let pid = i32::try_from(value["pid"].as_i64().expect("pid")).unwrap();
        let proc = Proc::of(pid).expect("broker runs");
        self.track(proc);
        let mut app_server = None;
        assert!(
            wait_until(PATIENCE, || {
                app_server = group_members_of(proc).into_iter().find(|p| p.pid != pid);
                app_server.is_some()
            }),
            "the broker's app-server child never showed"
        );
        let app_server = app_server.unwrap();
        self.track(app_server);
        let endpoint = text("endpoint");
        let state_dir = PathBuf::from(text("stateDir"));
        PluginBroker {
            proc,
            app_server,
            socket: PathBuf::from(endpoint.trim_start_matches("unix:")),
            endpoint,
            pid_file: PathBuf::from(text("pidFile")),
            session_dir: PathBuf::from(text("sessionDir")),
            broker_json: state_dir.join("broker.json"),
            state_dir,
        }
    }
}

/// Live processes in the process group `leader` leads, started no earlier than it.
pub(crate) fn group_members_of(leader: Proc) -> Vec<Proc> {
    all_pids()
        .into_iter()
        .filter_map(|pid| {
            let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let fields: Vec<&str> = text[text.rfind(')')? + 1..].split_whitespace().collect();
            let pgid: i32 = fields.get(2)?.parse().ok()?;
            let proc = Proc::of(pid)?;
            (pgid == leader.pid && proc.ticks >= leader.ticks && proc.alive()).then_some(proc)
        })
        .collect()
}

/// Every pid in /proc right now.
pub(crate) fn all_pids() -> Vec<i32> {
    std::fs::read_dir("/proc")
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
                .collect()
        })
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------------------------
// Edges: held locks, timed runs, closed and full pipes.

/// A fresh random id: tests only ever match what they planted.
pub(crate) fn fresh_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/uuid")
        .expect("a random uuid")
        .trim()
        .to_owned()
}

/// The real python3 (not a shim script), so that a planted lock holder starts fast.
pub(crate) fn python3() -> &'static str {
    static PYTHON: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    PYTHON.get_or_init(|| {
        let out = Command::new("python3")
            .args(["-c", "import sys; print(sys.executable)"])
            .output()
            .expect("python3 is needed to hold locks from another process");
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    })
}

/// Another process (a child of the test, killed on drop) holding an exclusive flock on every path — each created
/// if missing — until it is killed. Fails loudly when it cannot take them.
pub(crate) fn hold_flocks(env: &mut Env, paths: &[PathBuf]) -> Proc {
    let ready = env.work.path().join(format!("locked-{}", fresh_id()));
    let mut command = Command::new(python3());
    command
        .args([
            "-c",
            "import fcntl, sys, time\n\
             held = []\n\
             for path in sys.argv[2:]:\n\
             \x20   f = open(path, 'a')\n\
             \x20   fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)\n\
             \x20   held.append(f)\n\
             open(sys.argv[1], 'w').close()\n\
             time.sleep(600)\n",
        ])
        .arg(&ready)
        .args(paths);
    let holder = env.spawn(command);
    assert!(
        wait_until(PATIENCE, || ready.exists()),
        "the lock holder could not take {} locks",
        paths.len()
    );
    holder
}

/// Runs `command` with `stdin` written after `delay` and then kept open (a hook must never wait for EOF); returns
/// its output and the time from spawn to exit. Killed after `PATIENCE`.
pub(crate) fn run_timed(command: Command, stdin: &[u8], delay: Duration) -> (Output, Duration) {
    run_timed_into(command, stdin, delay, Stdio::piped())
}

/// `run_timed` with the command's stderr going to `stderr` (a closed or a full pipe).
pub(crate) fn run_timed_into(
    mut command: Command,
    stdin: &[u8],
    delay: Duration,
    stderr: impl Into<Stdio>,
) -> (Output, Duration) {
    command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(stderr);
    let started = Instant::now();
    let mut child = command.spawn().expect("start session-reaper");
    let mut pipe = child.stdin.take().unwrap();
    let bytes = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        std::thread::sleep(delay);
        let _ = pipe.write_all(&bytes);
        pipe
    });
    let me = Proc::of(i32::try_from(child.id()).unwrap());
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let finished = done.clone();
    let watchdog = std::thread::spawn(move || {
        let deadline = Instant::now() + PATIENCE;
        while Instant::now() < deadline && !finished.load(std::sync::atomic::Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(20));
        }
        if let Some(me) =
            me.filter(|me| me.alive() && !finished.load(std::sync::atomic::Ordering::SeqCst))
        {
            unsafe { libc::kill(me.pid, libc::SIGKILL) };
        }
    });
    let out = child.wait_with_output().expect("wait for session-reaper");
    let elapsed = started.elapsed();
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let _ = watchdog.join();
    drop(writer.join());
    (out, elapsed)
}

/// Runs `measure` `runs` times, prints the median and the maximum, and returns the maximum.
pub(crate) fn measured(
    label: &str,
    runs: usize,
    mut measure: impl FnMut(usize) -> Duration,
) -> Duration {
    let mut times: Vec<Duration> = (0..runs).map(&mut measure).collect();
    times.sort();
    let max = *times.last().expect("at least one run");
    eprintln!(
        "{label}: {runs} runs, median {:?}, max {max:?}",
        times[times.len() / 2]
    );
    max
}

/// A pipe whose read end is already closed: every write to the other end fails (EPIPE, or SIGPIPE).
pub(crate) fn closed_pipe() -> std::io::PipeWriter {
    let (reader, writer) = std::io::pipe().expect("a pipe");
    drop(reader);
    writer
}

/// A pipe filled to capacity that nobody reads: the next write to it blocks. The reader is returned to keep it so.
pub(crate) fn full_pipe() -> (std::io::PipeReader, std::io::PipeWriter) {
    use std::os::fd::AsRawFd;
    let (reader, mut writer) = std::io::pipe().expect("a pipe");
    let fd = writer.as_raw_fd();
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK);
    }
    let chunk = [b'x'; 4096];
    let mut filled = 0usize;
    loop {
        match writer.write(&chunk) {
            Ok(written) => filled += written,
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(err) => panic!("filling a pipe: {err}"),
        }
    }
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK);
    }
    assert!(filled > 0, "the pipe took no bytes");
    (reader, writer)
}

/// A program called `name` in the test's work dir: a symlink to `program`, so that a process started through it
/// shows `<dir>/name` as its argv[0] — an agent executable (`claude`) or a look-alike (`grep`).
pub(crate) fn named_program(env: &Env, name: &str, program: &str) -> PathBuf {
    let dir = env.work.path().join("bin");
    std::fs::create_dir_all(&dir).expect("bin dir");
    let path = dir.join(name);
    if !path.exists() {
        std::os::unix::fs::symlink(program, &path).expect("symlink to the program");
    }
    path
}

/// `named_program` running python3.
pub(crate) fn named_python(env: &Env, name: &str) -> PathBuf {
    named_program(env, name, python3())
}

/// The lines of an error message on stderr, without what clap renders around a usage error (indented context such
/// as the missing arguments, `tip:` and the possible values; blank lines; `Usage:`; "For more information"): a bad
/// input is one such line.
pub(crate) fn error_lines(text: &str) -> usize {
    text.lines()
        .filter(|line| {
            !(line.trim().is_empty()
                || line.starts_with(char::is_whitespace)
                || line.starts_with("Usage:")
                || line.starts_with("For more information"))
        })
        .count()
}

// ---- leftovers: fake agents and what they plant ----

/// A session id (or any value) no other test and no other process on this machine uses.
pub(crate) fn fresh_session(prefix: &str) -> String {
    let mut bytes = [0u8; 8];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut file| std::io::Read::read_exact(&mut file, &mut bytes))
        .expect("random bytes");
    let hex = bytes.iter().fold(String::new(), |mut hex, byte| {
        use std::fmt::Write as _;
        let _ = write!(hex, "{byte:02x}");
        hex
    });
    format!("{prefix}-{}-{hex}", std::process::id())
}

/// `fixtures/fake_agent.py`: a fake agent driven by orders on its stdin (see the script).
pub(crate) fn fake_agent_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/fake_agent.py")
}

/// A running fake agent (its own process group, like an agent a terminal started); killed with the test.
pub(crate) struct FakeAgent {
    pub proc: Proc,
    pub session: String,
    stdin: Option<std::process::ChildStdin>,
    answers: std::sync::mpsc::Receiver<String>,
}

impl FakeAgent {
    /// Gives one order and waits for its "ok".
    pub(crate) fn order(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("agent still takes orders");
        writeln!(stdin, "{line}").expect("order the fake agent");
        stdin.flush().expect("flush the order");
        let answer = self.answers.recv_timeout(PATIENCE);
        assert_eq!(
            answer.as_deref(),
            Ok("ok"),
            "fake agent did not answer {line:?}"
        );
    }

    /// Orders it to exit and waits until it is gone.
    pub(crate) fn exit(&mut self) {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = writeln!(stdin, "exit");
        }
        assert!(self.proc.gone_within(PATIENCE), "fake agent did not exit");
    }

    /// SIGKILLs it alone (not its group, where its children are): no hook runs.
    pub(crate) fn kill(&mut self) {
        self.stdin.take();
        if self.proc.alive() {
            unsafe { libc::kill(self.proc.pid, libc::SIGKILL) };
        }
        assert!(
            self.proc.gone_within(PATIENCE),
            "fake agent survived SIGKILL"
        );
    }
}

impl Env {
    /// Starts a fake agent for `session` that names it through `variable` ("-" for none) and runs our hook with
    /// `hook_flags`.
    pub(crate) fn fake_agent(
        &mut self,
        session: &str,
        variable: &str,
        hook_flags: &[&str],
    ) -> FakeAgent {
        // Run through a program named like the agent it stands for, so that the agents table recognises it: only a
        // recognised agent gets agent powers (DESIGN "Belonging").
        let agent = hook_flags
            .iter()
            .position(|flag| *flag == "--agent")
            .and_then(|at| hook_flags.get(at + 1))
            .copied()
            .unwrap_or("claude");
        let program = named_python(self, agent);
        self.fake_agent_as(program, session, variable, hook_flags, &[])
    }

    /// `fake_agent` run through `program` (a python3 named like an agent: `named_python(env, "gemini")`), with
    /// `extra_env` added to its environment (and so to its hooks' and tools').
    pub(crate) fn fake_agent_as(
        &mut self,
        program: impl AsRef<std::ffi::OsStr>,
        session: &str,
        variable: &str,
        hook_flags: &[&str],
        extra_env: &[(&str, &str)],
    ) -> FakeAgent {
        use std::io::BufRead;
        use std::os::unix::process::CommandExt;
        let mut command = Command::new(program);
        command
            .arg(fake_agent_script())
            .arg(BIN)
            .arg(self.state_dir())
            .arg(session)
            .arg(variable)
            // Room for a loaded machine: the hook's own deadline is not what these tests are about.
            .args(["--deadline", "10s"])
            .args(hook_flags)
            .current_dir(self.work.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .process_group(0);
        scrub_env(&mut command);
        command.envs(extra_env.iter().copied());
        self.mark(&mut command);
        let mut child = command.spawn().expect("start the fake agent");
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("agent stdout");
        let (tell, answers) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tell.send(line).is_err() {
                    return;
                }
            }
        });
        let proc = Proc::of(i32::try_from(child.id()).unwrap()).expect("fake agent started");
        self.children.push(child);
        self.track(proc);
        FakeAgent {
            proc,
            session: session.to_owned(),
            stdin,
            answers,
        }
    }

    /// The process whose pid a planted command wrote to `name` in the work dir (waits for it); killed with the
    /// test.
    pub(crate) fn planted(&mut self, name: &str) -> Proc {
        let path = self.work.path().join(name);
        let mut found = None;
        let written = wait_until(PATIENCE, || {
            found = std::fs::read_to_string(&path)
                .ok()
                .and_then(|text| text.trim().parse::<i32>().ok())
                .and_then(Proc::of);
            found.is_some()
        });
        assert!(written, "no pid in {}", path.display());
        let proc = found.unwrap();
        self.track(proc);
        proc
    }

    /// A path in the work dir, as a shell word.
    pub(crate) fn work_path(&self, name: &str) -> String {
        self.work.path().join(name).to_string_lossy().into_owned()
    }
}

/// Live sentinels of the state root `state_dir`: their pids and the agent pids they watch.
pub(crate) fn sentinels_of(state_dir: &Path) -> Vec<(i32, i32)> {
    let root = state_dir.to_string_lossy().into_owned();
    all_pids()
        .into_iter()
        .filter_map(|pid| {
            let argv: Vec<String> = std::fs::read(format!("/proc/{pid}/cmdline"))
                .ok()?
                .split(|b| *b == 0)
                .map(|arg| String::from_utf8_lossy(arg).into_owned())
                .collect();
            let is_ours = argv.first().is_some_and(|argv0| argv0 == BIN)
                && argv.iter().any(|arg| arg == "sentinel")
                && argv.contains(&root);
            let watched = argv
                .iter()
                .position(|arg| arg == "--pid")
                .and_then(|at| argv.get(at + 1)?.parse().ok())?;
            (is_ours && !matches!(proc_stat(pid), None | Some(('Z', _)))).then_some((pid, watched))
        })
        .collect()
}
// ---- The reliability suite's helpers (tests/it/reliability.rs) ----

/// True when the heavy variants of the reliability suite run: `SESSION_REAPER_HEAVY=1`.
pub(crate) fn heavy() -> bool {
    std::env::var("SESSION_REAPER_HEAVY").is_ok_and(|value| value == "1")
}

/// `small` in the default run, `large` in the heavy one.
pub(crate) fn sized(small: usize, large: usize) -> usize {
    if heavy() { large } else { small }
}

/// Live processes other than this one with `word` as one of their argv words: the finishers and sentinels of a
/// (unique, temporary) state root name it after `--state-dir`.
pub(crate) fn naming(word: &Path) -> Vec<Proc> {
    let me = i32::try_from(std::process::id()).unwrap();
    let word = word.as_os_str().as_encoded_bytes();
    all_pids()
        .into_iter()
        .filter(|pid| *pid != me)
        .filter_map(|pid| {
            let before = Proc::of(pid)?;
            let argv = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let named = argv.split(|b| *b == 0).any(|arg| arg == word);
            (named && Proc::of(pid) == Some(before)).then_some(before)
        })
        .collect()
}

/// Every process of a state root's own (brokers by their environment mark; finishers and sentinels by their
/// argv), killed on drop: a test that stresses the state root leaves nothing of it running.
pub(crate) struct StateRootProcesses(pub PathBuf);

impl StateRootProcesses {
    pub(crate) fn live(&self) -> Vec<Proc> {
        let mut found = marked_with_state_root(&self.0);
        found.extend(naming(&self.0));
        found.sort_by_key(|proc| proc.pid);
        found.dedup();
        found
    }
}

impl Drop for StateRootProcesses {
    fn drop(&mut self) {
        for proc in self.live() {
            proc.kill();
        }
    }
}

/// The files under `dir` that must parse and do not: every `*.json` as a JSON value, every line of every
/// `events.jsonl*` as one; each with why.
pub(crate) fn unparsable_files(dir: &Path) -> Vec<String> {
    let mut bad = Vec::new();
    for path in walkdir(dir.to_path_buf()) {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if !path.is_file() {
            continue;
        }
        let Ok(bytes) = std::fs::read(&path) else {
            bad.push(format!("{}: unreadable", path.display()));
            continue;
        };
        if path.extension().is_some_and(|ext| ext == "json") {
            if let Err(err) = serde_json::from_slice::<Value>(&bytes) {
                bad.push(format!("{}: {err}", path.display()));
            }
        } else if name.starts_with("events.jsonl") {
            for (index, line) in bytes.split(|b| *b == b'\n').enumerate() {
                if !line.is_empty() && serde_json::from_slice::<Value>(line).is_err() {
                    bad.push(format!("{} line {}: not JSON", path.display(), index + 1));
                }
            }
        }
    }
    bad
}

/// The identity a record names for `proc`, as our own records spell it.
pub(crate) fn identity_json(proc: Proc) -> Value {
    serde_json::json!({
        "boot_id": std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap().trim(),
        "pid": proc.pid,
        "start_ticks": proc.ticks,
        "uid": std::fs::metadata(format!("/proc/{}", proc.pid)).map_or(0, |m| std::os::unix::fs::MetadataExt::uid(&m)),
    })
}

/// Every path below `root` (directories and files).
pub(crate) fn walkdir_all(root: &Path) -> Vec<PathBuf> {
    walkdir(root.to_path_buf())
}

/// `unshare --pid --fork --mount-proc`: what follows runs as pid 1 of a private pid namespace with its own `/proc`
/// (as root; a test whose namespace cannot be made fails, it never passes by skipping).
pub(crate) fn unshare_pid_namespace() -> Command {
    let mut command = Command::new("unshare");
    command.args(["--pid", "--fork", "--mount-proc"]);
    command
}

/// The sessions a broker record names as owners, in its order.
pub(crate) fn owners(record: &Value) -> Vec<String> {
    record["owners"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|owner| owner["session"].as_str().map(str::to_owned))
        .collect()
}

/// A fresh random UUID (the kernel's): a session id no other test or run uses.
pub(crate) fn uuid() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/uuid")
        .expect("the kernel's uuid source")
        .trim()
        .to_owned()
}
