//! `demo` (issue 21, item 3): the headline first — a fake agent killed, what its tools left stopped by its sentinel,
//! `log --freed` — then the brokers; interrupted (SIGINT, SIGTERM) or with its output closed (`demo | head -3`), it
//! still stops everything it started and removes its temp dir.

use std::io::BufRead;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use crate::harness::{
    BIN, Env, PATIENCE, Proc, naming, scrub_env, stderr, stdout, wait_until, with_env_entry,
};

/// Generous: the whole demo, on a loaded machine.
const DEMO_PATIENCE: Duration = Duration::from_secs(90);

/// `session-reaper demo` as a newcomer types it: no `--state-dir` (its own temp state root), its temp dir under the
/// test's work dir.
fn demo_command(env: &Env) -> Command {
    let mut command = Command::new(BIN);
    command.arg("demo");
    scrub_env(&mut command);
    env.mark(&mut command);
    command
        .env("TMPDIR", env.work.path())
        .env("HOME", env.work.path().join("home"))
        .stdin(Stdio::null());
    command
}

#[test]
fn demo_shows_the_killed_agent_and_what_its_sentinel_stopped_before_the_brokers() {
    let env = Env::new();
    let out = crate::harness::run_bounded_for(demo_command(&env), None, DEMO_PATIENCE);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}\n{}", stderr(&out));
    let at = |needle: &str| {
        text.find(needle)
            .unwrap_or_else(|| panic!("no {needle:?} in:\n{text}"))
    };
    let killed = at("The agent is killed (SIGKILL");
    let freed = at("| freed ");
    let brokers = at("starts a broker for workspace app");
    assert!(
        killed < freed && freed < brokers,
        "the headline comes first:\n{text}"
    );
    let stopped = text
        .lines()
        .find(|line| line.contains("its sentinel saw the agent gone"))
        .unwrap();
    for what in ["dev server", "nohup job", "MCP server"] {
        assert!(
            stopped.contains(&format!("{what} (pid ")),
            "{what} missing: {stopped}"
        );
    }
    assert_eq!(stopped.matches(") stopped").count(), 3, "{stopped}");
    assert!(!stopped.contains("STILL RUNNING"), "{stopped}");
    let freed_line = text[freed..].lines().next().unwrap();
    assert!(
        freed_line.contains("in 3 stop(s)")
            && (freed_line.contains("MiB") || freed_line.contains("KiB")),
        "{freed_line}"
    );
    assert_eq!(status_tree_leftovers(&text), 2, "{text}");
    assert_demo_gone(&env);
}

/// The leftovers the first status tree shows (the dev server and the `nohup` job; the MCP server is the agent's).
fn status_tree_leftovers(text: &str) -> usize {
    text.split("2. The agent is killed")
        .next()
        .unwrap()
        .lines()
        .filter(|line| line.contains("leftover ") && line.contains("─"))
        .count()
}

/// A demo running with its output on a pipe the test reads, in a process group of its own (as a shell runs a
/// foreground job), its temp dir under the test's work dir.
struct RunningDemo {
    child: Child,
    lines: Option<Receiver<String>>,
    dir: PathBuf,
}

impl RunningDemo {
    fn start(env: &mut Env) -> RunningDemo {
        let mut command = demo_command(env);
        command
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .process_group(0);
        let mut child = command.spawn().expect("start the demo");
        env.track(Proc::of(i32::try_from(child.id()).unwrap()).expect("the demo runs"));
        let out = child.stdout.take().unwrap();
        let (tell, lines) = std::sync::mpsc::channel();
        // Reads until the receiver is dropped: then the pipe's read end closes with the thread.
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines() {
                let Ok(line) = line else { return };
                if tell.send(line).is_err() {
                    return;
                }
            }
        });
        let mut demo = RunningDemo {
            child,
            lines: Some(lines),
            dir: PathBuf::new(),
        };
        let first = demo.until("state root");
        let root = first.rsplit(' ').next().unwrap();
        demo.dir = Path::new(root).parent().unwrap().to_path_buf();
        assert!(
            demo.dir.starts_with(env.work.path()) && demo.dir.is_dir(),
            "{first}"
        );
        demo
    }

    /// Reads lines until one contains `needle`; returns it.
    fn until(&mut self, needle: &str) -> String {
        let lines = self.lines.as_ref().expect("still reading");
        let deadline = Instant::now() + DEMO_PATIENCE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = lines
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("the demo never printed {needle:?}"));
            if line.contains(needle) {
                return line;
            }
        }
    }

    /// Waits for the demo process itself to end (it is our child: reaped here).
    fn ended(&mut self) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + PATIENCE;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }
}

/// Interrupted mid-way — after its brokers started, while its sentinels watch — the demo leaves nothing behind.
fn interrupted_by(signal: i32, whole_group: bool) {
    let mut env = Env::new();
    let mut demo = RunningDemo::start(&mut env);
    demo.until("A also starts a broker in workspace docs");
    demo.until("docs pid");
    let pid = i32::try_from(demo.child.id()).unwrap();
    // Ctrl-C reaches the terminal's foreground process group; `kill` reaches the one process.
    let target = if whole_group { -pid } else { pid };
    assert_eq!(unsafe { libc::kill(target, signal) }, 0);
    let status = demo.ended().expect("the demo ended");
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(signal),
        "{status:?}"
    );
    assert_nothing_left(&demo.dir);
}

#[test]
fn demo_interrupted_by_ctrl_c_stops_everything_and_removes_its_temp_dir() {
    interrupted_by(libc::SIGINT, true);
}

#[test]
fn demo_killed_by_sigterm_stops_everything_and_removes_its_temp_dir() {
    interrupted_by(libc::SIGTERM, false);
}

/// `demo | head -3`: its stdout closes after three lines; the next write ends it (SIGPIPE), and still nothing of it
/// stays.
#[test]
fn demo_piped_into_head_stops_everything_and_removes_its_temp_dir() {
    let mut env = Env::new();
    let mut demo = RunningDemo::start(&mut env);
    demo.until("An agent session starts");
    demo.until("its shell tool started a dev server");
    drop(demo.lines.take());
    let status = demo.ended().expect("the demo ended on its closed output");
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(libc::SIGPIPE),
        "{status:?}"
    );
    assert_nothing_left(&demo.dir);
}

/// No process carries the demo's mark or names its dir (the guardian), and the dir is gone.
fn assert_nothing_left(dir: &Path) {
    let marker = format!("SESSION_REAPER_DEMO={}", dir.display());
    let left = || {
        let mut left = with_env_entry(&marker);
        left.extend(naming(dir));
        left
    };
    assert!(
        wait_until(PATIENCE, || left().is_empty() && !dir.exists()),
        "left behind: processes {:?}, dir exists: {}",
        left(),
        dir.exists()
    );
}

/// After a run to the end: the temp dir under the work dir is gone and no process names it.
fn assert_demo_gone(env: &Env) {
    let dirs: Vec<PathBuf> = std::fs::read_dir(env.work.path())
        .unwrap()
        .filter_map(|entry| Some(entry.ok()?.path()))
        .filter(|path| {
            path.file_name()
                .is_some_and(|name| name.to_string_lossy().starts_with("session-reaper-demo-"))
        })
        .collect();
    assert!(dirs.is_empty(), "the demo's temp dir stays: {dirs:?}");
}
