//! What the benchmark binaries share: one child per measurement (spawn → stdin → `wait4`, so that each run's wall
//! time and peak RSS are that child's own), the table they print, the planted processes and state they clean up,
//! and the minimal `/proc` walk that the process scans are compared with.

#![allow(dead_code)]

use std::fmt::Write as _;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_session-reaper");

/// The command-line switches every bench binary takes: `--quick` (CI smoke: small sizes, few rounds) and
/// `--proc-walk NEEDLE` (this binary as the minimal `/proc` walk; see `proc_walk`); and the groups of cases to run
/// (`SESSION_REAPER_BENCH_ONLY=containment,scans`: a comma-separated list; unset, all of them).
pub(crate) struct Options {
    pub quick: bool,
    pub only: Option<Vec<String>>,
}

impl Options {
    /// Parses the arguments; runs and exits in `--proc-walk` mode. Sets a private umask (the state roots it makes
    /// must be 0700/0600, as the binary demands).
    pub(crate) fn from_args() -> Options {
        let args: Vec<String> = std::env::args().collect();
        if let Some(at) = args.iter().position(|arg| arg == "--proc-walk") {
            std::process::exit(proc_walk(args.get(at + 1).map_or("", String::as_str)));
        }
        // SAFETY: umask only sets this process's file-mode mask.
        unsafe { libc::umask(0o077) };
        Options {
            quick: args.iter().any(|arg| arg == "--quick")
                || std::env::var_os("SESSION_REAPER_BENCH_QUICK").is_some(),
            only: std::env::var("SESSION_REAPER_BENCH_ONLY")
                .ok()
                .map(|groups| groups.split(',').map(str::to_owned).collect()),
        }
    }

    /// Whether the cases of `group` run (`SESSION_REAPER_BENCH_ONLY`).
    pub(crate) fn runs(&self, group: &str) -> bool {
        self.only
            .as_ref()
            .is_none_or(|groups| groups.iter().any(|only| only == group))
    }

    /// Runs per case: ≥ 20 in a full run.
    pub(crate) fn rounds(&self) -> usize {
        if self.quick { 5 } else { 20 }
    }
}

/// The minimal direct `/proc` walk: read every `/proc/<pid>/cmdline`, count the argvs with `--resume NEEDLE`.
/// What any scan for resume orphans must do at least; exit 0.
fn proc_walk(needle: &str) -> i32 {
    let mut found = 0usize;
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(pid) = name
                .to_str()
                .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
            else {
                continue;
            };
            let Ok(argv) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
                continue;
            };
            let mut words = argv.split(|b| *b == 0);
            while let Some(word) = words.next() {
                if word == b"--resume" && words.clone().next() == Some(needle.as_bytes()) {
                    found += 1;
                }
            }
        }
    }
    let _ = writeln!(std::io::stdout(), "{found}");
    0
}

/// One case's runs.
#[derive(Clone, Debug, Default)]
pub(crate) struct Sample {
    pub wall: Vec<Duration>,
    /// Each run's peak resident set (KiB), from `wait4`.
    pub rss_kib: Vec<i64>,
}

impl Sample {
    fn sorted(&self) -> Vec<Duration> {
        let mut sorted = self.wall.clone();
        sorted.sort();
        sorted
    }

    pub(crate) fn median(&self) -> Duration {
        let sorted = self.sorted();
        sorted.get(sorted.len() / 2).copied().unwrap_or_default()
    }

    pub(crate) fn min(&self) -> Duration {
        self.sorted().first().copied().unwrap_or_default()
    }

    pub(crate) fn max(&self) -> Duration {
        self.sorted().last().copied().unwrap_or_default()
    }

    pub(crate) fn p90(&self) -> Duration {
        let sorted = self.sorted();
        sorted
            .get((sorted.len() * 9 / 10).min(sorted.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    }

    pub(crate) fn peak_rss_kib(&self) -> i64 {
        self.rss_kib.iter().copied().max().unwrap_or(0)
    }
}

/// Spawns `command` (stdout and stderr to /dev/null), writes `stdin` and closes it, and reaps it with `wait4`:
/// its wall time from spawn to exit, its own peak RSS and its exit code (`None`: killed by a signal).
pub(crate) fn run_once(mut command: Command, stdin: Option<&[u8]>) -> (Duration, i64, Option<i32>) {
    command.stdout(Stdio::null()).stderr(Stdio::null());
    command.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    let started = Instant::now();
    // Reaped by `wait4` below (for its rusage), not by `Child::wait`.
    #[allow(clippy::zombie_processes)]
    let mut child = command.spawn().expect("spawn a benchmark command");
    if let Some(bytes) = stdin {
        let mut pipe = child.stdin.take().expect("stdin pipe");
        let _ = pipe.write_all(bytes);
    }
    let (status, rss) = wait4(&child);
    let wall = started.elapsed();
    let code = libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status));
    (wall, rss, code)
}

/// Reaps `child` (it must not be waited for otherwise): its raw wait status and peak RSS (KiB).
pub(crate) fn wait4(child: &Child) -> (i32, i64) {
    let pid = i32::try_from(child.id()).expect("pid");
    let mut status = 0;
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    loop {
        // SAFETY: wait4 writes the status and a rusage into buffers we own; `pid` is our unreaped child.
        let got = unsafe { libc::wait4(pid, &raw mut status, 0, usage.as_mut_ptr()) };
        if got == pid {
            break;
        }
        assert!(
            std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted,
            "wait4 {pid}: {}",
            std::io::Error::last_os_error()
        );
    }
    // SAFETY: wait4 returned the child, so it filled the rusage.
    (status, unsafe { usage.assume_init() }.ru_maxrss)
}

/// Runs `make(round)` `rounds` times, each with `stdin(round)` when given; every run must exit 0 or 1.
pub(crate) fn measure(
    rounds: usize,
    stdin: Option<&dyn Fn(usize) -> Vec<u8>>,
    make: &dyn Fn(usize) -> Command,
) -> Sample {
    let mut sample = Sample::default();
    for round in 0..rounds {
        let command = make(round);
        let shown = format!("{command:?}");
        let bytes = stdin.map(|f| f(round));
        let (wall, rss, code) = run_once(command, bytes.as_deref());
        assert!(
            code.is_some_and(|c| c <= 1),
            "benchmark command failed ({code:?}): {shown}"
        );
        sample.wall.push(wall);
        sample.rss_kib.push(rss);
    }
    sample
}

/// `program args…` as a reference command.
pub(crate) fn reference(program: &str, args: &[&str]) -> Command {
    let mut command = Command::new(program);
    command.args(args);
    command
}

/// The binary with state root `state`, in an environment free of agent and session-reaper variables.
pub(crate) fn ours(state: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(BIN);
    command.arg("--state-dir").arg(state).args(args);
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy().into_owned();
        if ["SESSION_REAPER_", "CLAUDE", "GEMINI_", "CODEX_", "QWEN_"]
            .iter()
            .any(|prefix| name.starts_with(prefix))
        {
            command.env_remove(name);
        }
    }
    // No cgroup is made but under a parent a case made itself (`latency`'s containment cases turn it on).
    command.env("SESSION_REAPER_CONTAINMENT", "off");
    command
}

/// True when `ours(…, words)` with `--help` mentions `flag`: cases that depend on a feature this build may not
/// have yet are measured only where it has it.
pub(crate) fn supports(words: &[&str], flag: &str) -> bool {
    let mut args = words.to_vec();
    args.push("--help");
    Command::new(BIN)
        .args(&args)
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).contains(flag))
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e3
}

/// A target a figure is held to.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Target {
    None,
    /// Median at most this many times the reference's median.
    Ratio(f64),
    /// Median at most this long.
    Median(Duration),
    /// Every run (the max) at most this long.
    Max(Duration),
    /// Median at most this long and at most this many times the reference.
    MedianAndRatio(Duration, f64),
}

/// The printed table: one row per figure.
pub(crate) struct Table {
    pub missed: Vec<String>,
}

impl Table {
    pub(crate) fn new(title: &str) -> Table {
        let cpus = std::thread::available_parallelism().map_or(0, std::num::NonZero::get);
        println!("\n## {title}\n");
        println!(
            "{cpus} cpus, {} processes on the machine, load {}\n",
            count_pids(),
            std::fs::read_to_string("/proc/loadavg")
                .unwrap_or_default()
                .split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        );
        println!(
            "| case | runs | median | min–max | p90 | peak RSS | reference: median | ratio | target | met |"
        );
        println!("|---|---|---|---|---|---|---|---|---|---|");
        Table { missed: Vec::new() }
    }

    /// One row: `sample` beside `reference` (`name`), held to `target` and to an RSS bound (KiB) when given.
    pub(crate) fn row(
        &mut self,
        case: &str,
        sample: &Sample,
        reference: Option<(&str, &Sample)>,
        target: Target,
        rss_bound_kib: Option<i64>,
    ) {
        let ratio = reference.map(|(_, r)| ms(sample.median()) / ms(r.median()).max(1e-6));
        let (target_text, mut met) = match target {
            Target::None => (String::from("—"), true),
            Target::Ratio(bound) => (format!("≤ {bound}×"), ratio.is_none_or(|r| r <= bound)),
            Target::Median(bound) => (
                format!("median ≤ {:.0} ms", ms(bound)),
                sample.median() <= bound,
            ),
            Target::Max(bound) => (format!("max ≤ {:.0} ms", ms(bound)), sample.max() <= bound),
            Target::MedianAndRatio(bound, times) => (
                format!("median ≤ {:.0} ms, ≤ {times}×", ms(bound)),
                sample.median() <= bound && ratio.is_none_or(|r| r <= times),
            ),
        };
        let mut target_text = target_text;
        if let Some(bound) = rss_bound_kib {
            let _ = write!(target_text, "; RSS ≤ {} MiB", bound / 1024);
            met &= sample.peak_rss_kib() <= bound;
        }
        let verdict = if matches!(target, Target::None) && rss_bound_kib.is_none() {
            "—"
        } else if met {
            "yes"
        } else {
            self.missed.push(case.to_owned());
            "**no**"
        };
        println!(
            "| {case} | {} | {:.2} ms | {:.2}–{:.2} ms | {:.2} ms | {:.1} MiB | {} | {} | {target_text} | {verdict} |",
            sample.wall.len(),
            ms(sample.median()),
            ms(sample.min()),
            ms(sample.max()),
            ms(sample.p90()),
            f64::from(i32::try_from(sample.peak_rss_kib()).unwrap_or(i32::MAX)) / 1024.0,
            reference.map_or(String::from("—"), |(name, r)| format!(
                "{name}: {:.2} ms",
                ms(r.median())
            )),
            ratio.map_or(String::from("—"), |r| format!("{r:.2}×")),
        );
    }

    /// A row for a figure that is not a per-run wall time (a throughput, a ratio of two rows).
    pub(crate) fn figure(&mut self, case: &str, value: &str, target: &str, met: Option<bool>) {
        let verdict = match met {
            None => "—",
            Some(true) => "yes",
            Some(false) => {
                self.missed.push(case.to_owned());
                "**no**"
            }
        };
        println!("| {case} | | {value} | | | | | | {target} | {verdict} |");
    }

    pub(crate) fn finish(self) {
        if self.missed.is_empty() {
            println!("\nevery target met");
        } else {
            println!("\ntargets missed: {}", self.missed.join("; "));
        }
    }
}

pub(crate) fn count_pids() -> usize {
    std::fs::read_dir("/proc").map_or(0, |dir| {
        dir.filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
            .count()
    })
}

/// Processes the benchmark started, killed and reaped however it ends.
#[derive(Default)]
pub(crate) struct Planted(pub Vec<Child>);

impl Planted {
    /// `count` `sleep 600`s, each with `env` (a session variable, so that leftover discovery has candidates of our
    /// uid to look at).
    pub(crate) fn sleepers(count: usize, env: &[(&str, String)]) -> Planted {
        let mut planted = Planted::default();
        for _ in 0..count {
            let mut command = Command::new("sleep");
            command.arg("600").stdin(Stdio::null());
            // They die with the benchmark even when it is killed before its cleanup runs.
            // SAFETY: prctl is async-signal-safe; it only sets this child's parent-death signal.
            unsafe {
                std::os::unix::process::CommandExt::pre_exec(&mut command, || {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                    Ok(())
                });
            }
            for (name, value) in env {
                command.env(name, value);
            }
            planted.0.push(command.spawn().expect("start sleep"));
        }
        planted
    }
}

impl Drop for Planted {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A temporary state root whose brokers (every live process whose environment names it as its
/// `SESSION_REAPER_STATE_ROOT`) are killed when it is dropped, and whose tree is then removed.
pub(crate) struct Root {
    pub path: PathBuf,
}

impl Root {
    pub(crate) fn new(parent: &Path, name: &str) -> Root {
        let path = parent.join(name);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&path)
            .expect("state root");
        Root { path }
    }
}

impl Drop for Root {
    fn drop(&mut self) {
        // Brokers carry the root in their environment; finishers and sentinels name it on their command line.
        let root = self.path.to_string_lossy().into_owned();
        let mut ours = marked_with(&format!("SESSION_REAPER_STATE_ROOT={root}"));
        ours.extend(naming(&root));
        for pid in ours {
            // SAFETY: kill on a pid that names this run's own unique (temporary) state root.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Live pids whose environment holds exactly `wanted`.
pub(crate) fn marked_with(wanted: &str) -> Vec<i32> {
    with_word("environ", wanted)
}

/// Live pids other than this one with `word` as one of their argv words.
pub(crate) fn naming(word: &str) -> Vec<i32> {
    let me = i32::try_from(std::process::id()).unwrap_or(0);
    with_word("cmdline", word)
        .into_iter()
        .filter(|pid| *pid != me)
        .collect()
}

/// Live pids whose `/proc/<pid>/<file>` (NUL-separated words) has `word` as one of its words.
fn with_word(file: &str, word: &str) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/{file}"))
                .is_ok_and(|words| words.split(|b| *b == 0).any(|w| w == word.as_bytes()))
        })
        .collect()
}

/// `(pid, start_ticks)` of this process, as the identity in a record names it.
pub(crate) fn own_identity() -> serde_json::Value {
    let pid = std::process::id();
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("own stat");
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 1..]
        .split_whitespace()
        .collect();
    let ticks: u64 = fields[19].parse().unwrap();
    serde_json::json!({
        "boot_id": std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap().trim(),
        "pid": pid, "start_ticks": ticks,
        // SAFETY: getuid has no preconditions.
        "uid": unsafe { libc::getuid() },
    })
}

/// Creates `dir` and its missing parents 0700.
pub(crate) fn mkdir(dir: &Path) {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .unwrap_or_else(|err| panic!("mkdir {}: {err}", dir.display()));
}

/// Writes `bytes` to a new file 0600.
pub(crate) fn write_private(path: &Path, bytes: &[u8]) {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .unwrap_or_else(|err| panic!("write {}: {err}", path.display()));
    file.write_all(bytes).expect("write");
}

/// A hook payload.
pub(crate) fn payload(session: &str, event: &str, cwd: &str) -> Vec<u8> {
    serde_json::json!({
        "session_id": session, "hook_event_name": event, "cwd": cwd,
        "source": "startup", "reason": "other",
    })
    .to_string()
    .into_bytes()
}

/// Spawns a broker through the binary (`broker spawn`) and returns the record it printed.
pub(crate) fn spawn_broker(
    state: &Path,
    cwd: &Path,
    session: &str,
    flags: &[&str],
) -> serde_json::Value {
    let mut args = vec![
        "broker",
        "spawn",
        "--json",
        "--cwd",
        cwd.to_str().unwrap(),
        "--session",
        session,
    ];
    args.extend_from_slice(flags);
    args.extend_from_slice(&["--", "sleep", "600"]);
    let out = ours(state, &args).output().expect("broker spawn");
    assert!(
        out.status.success(),
        "broker spawn: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("spawn prints the record")
}

/// `command` (its program, arguments and environment) run by `strace strace_args output`.
pub(crate) fn under_strace(strace_args: &[&str], output: &Path, command: &Command) -> Command {
    let mut strace = Command::new("strace");
    strace
        .args(strace_args)
        .arg(output)
        .arg(command.get_program())
        .args(command.get_args());
    for (key, value) in command.get_envs() {
        match value {
            Some(value) => strace.env(key, value),
            None => strace.env_remove(key),
        };
    }
    strace
}

/// Runs `command` once more under `strace -c` (when strace is installed; the process itself, not the finisher or
/// sentinel it may start, which outlive it) and prints where its system calls went
/// (the top rows of the summary, to print after the table): the profile of a missed target. The whole summary is
/// kept in `target/bench-profiles/`.
pub(crate) fn profile(name: &str, command: &Command, stdin: Option<&[u8]>) -> String {
    if Command::new("strace").arg("-V").output().is_err() {
        return format!("\n(profile of {name}: strace is not installed)\n");
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-profiles");
    let _ = std::fs::create_dir_all(&dir);
    let file = dir.join(format!(
        "{}.txt",
        name.replace(|c: char| !c.is_ascii_alphanumeric(), "-")
    ));
    let _ = run_once(
        under_strace(&["-c", "-S", "time", "-o"], &file, command),
        stdin,
    );
    let summary = std::fs::read_to_string(&file).unwrap_or_default();
    let top: Vec<&str> = summary.lines().take(10).collect();
    let total = summary
        .lines()
        .find(|line| line.contains("total"))
        .unwrap_or_default();
    format!(
        "\nprofile of {name} (strace -c, top 8 by time; {}):\n```\n{}\n{total}\n```\n",
        file.display(),
        top.join("\n")
    )
}
