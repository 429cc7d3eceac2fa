//! Wall time and peak memory of the commands agents and launchers run on every session, each beside a reference
//! measured in the same run (`/bin/true`, a raw `/proc` walk, `pgrep -f`). Prints ratios; asserts nothing.
//!
//! Run: `cargo bench --bench latency` (add `-- --quick` for fewer rounds).

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_session-reaper");

struct Sample {
    wall: Vec<Duration>,
    max_rss_kib: i64,
}

impl Sample {
    fn median(&self) -> Duration {
        let mut sorted = self.wall.clone();
        sorted.sort();
        sorted[sorted.len() / 2]
    }

    fn p90(&self) -> Duration {
        let mut sorted = self.wall.clone();
        sorted.sort();
        sorted[(sorted.len() * 9 / 10).min(sorted.len() - 1)]
    }
}

/// Peak RSS of any waited-for child so far (KiB).
fn children_max_rss() -> i64 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes a rusage into the buffer we own.
    unsafe {
        libc::getrusage(libc::RUSAGE_CHILDREN, usage.as_mut_ptr());
        usage.assume_init().ru_maxrss
    }
}

/// Runs `make()` `rounds` times, timing spawn-to-exit; the stdin bytes (if any) are written and closed.
fn measure(
    rounds: usize,
    stdin: Option<&dyn Fn(usize) -> Vec<u8>>,
    make: &dyn Fn(usize) -> Command,
) -> Sample {
    let mut wall = Vec::with_capacity(rounds);
    for round in 0..rounds {
        let mut command = make(round);
        command.stdout(Stdio::null()).stderr(Stdio::null());
        command.stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
        let payload = stdin.map(|f| f(round));
        let shown = format!("{command:?}");
        let started = Instant::now();
        let mut child = command.spawn().expect("spawn");
        if let Some(bytes) = payload {
            child.stdin.take().unwrap().write_all(&bytes).unwrap();
        }
        let status = child.wait().expect("wait");
        wall.push(started.elapsed());
        assert!(
            status.code().is_some_and(|c| c <= 1),
            "benchmark command failed: {status}: {shown}"
        );
    }
    Sample {
        wall,
        max_rss_kib: children_max_rss(),
    }
}

fn ours(state: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(BIN);
    command.arg("--state-dir").arg(state).args(args);
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy().into_owned();
        if name.starts_with("SESSION_REAPER_")
            || name.starts_with("CLAUDE")
            || name.starts_with("GEMINI_")
        {
            command.env_remove(name);
        }
    }
    command
}

fn row(name: &str, sample: &Sample, reference: &Sample, reference_name: &str) {
    let ratio = sample.median().as_secs_f64() / reference.median().as_secs_f64();
    println!(
        "| {name:<44} | {:>8.2} ms | {:>8.2} ms | {:>6.1}x {reference_name:<14} |",
        sample.median().as_secs_f64() * 1e3,
        sample.p90().as_secs_f64() * 1e3,
        ratio
    );
}

#[allow(clippy::too_many_lines)]
fn main() {
    let quick = std::env::args().any(|arg| arg == "--quick");
    let rounds = if quick { 20 } else { 100 };
    let temp = tempfile::tempdir().expect("temp dir");
    let state = temp.path().join("state");
    let work = temp.path().join("work");
    std::fs::create_dir_all(work.join("ws/.git")).unwrap();
    let ws = work.join("ws");
    let ws_arg = ws.to_str().unwrap();

    let truth = measure(rounds, None, &|_| Command::new("/bin/true"));
    let true_rss = truth.max_rss_kib;

    // A live broker to attach to.
    let spawn = ours(
        &state,
        &[
            "broker",
            "spawn",
            "--json",
            "--cwd",
            ws_arg,
            "--session",
            "owner",
            "--",
            "sleep",
            "600",
        ],
    )
    .output()
    .unwrap();
    let record: serde_json::Value = serde_json::from_slice(&spawn.stdout).expect("spawn record");
    let _cleanup = StopOnDrop {
        state: state.clone(),
    };

    let attach = measure(rounds, None, &|round| {
        let session = format!("s{}", round % 8);
        ours(
            &state,
            &["broker", "attach", "--cwd", ws_arg, "--session", &session],
        )
    });
    let attach_rss = attach.max_rss_kib;

    let start_payload = |round: usize| {
        format!(r#"{{"session_id":"bench-{round}","hook_event_name":"SessionStart","cwd":"{ws_arg}","source":"startup"}}"#)
            .into_bytes()
    };
    let session_start = measure(rounds, Some(&start_payload), &|_| {
        ours(&state, &["hook", "--agent", "claude"])
    });

    // 1,000 workspaces, each with a broker record owned by another session: SessionEnd must visit every one.
    let wide = temp.path().join("wide");
    plant_workspaces(&wide, 1000, &record);
    let end_payload = |round: usize| {
        format!(r#"{{"session_id":"end-{round}","hook_event_name":"SessionEnd","cwd":"{ws_arg}","reason":"other"}}"#).into_bytes()
    };
    let end_rounds = rounds.min(50);
    let session_end = measure(end_rounds, Some(&end_payload), &|_| {
        ours(&wide, &["hook", "--agent", "claude"])
    });
    let end_rss = session_end.max_rss_kib;

    // The resume-orphan scan beside the tools a person would reach for.
    let id = "0b5f6b3e-1111-4222-8333-944445555666";
    let reap_dry = measure(rounds, None, &|_| {
        ours(&state, &["reap", "--session", id, "--dry-run"])
    });
    let pgrep = measure(rounds, None, &|_| {
        let mut command = Command::new("pgrep");
        command.args(["-f", "--", &format!("--resume {id}")]);
        command
    });
    let walk = measure(rounds, None, &|_| {
        let mut command = Command::new("sh");
        command.args(["-c", "cat /proc/[0-9]*/cmdline >/dev/null 2>&1"]);
        command
    });

    let leftovers = leftover_costs(temp.path(), rounds, ws_arg);

    let cpus = std::thread::available_parallelism().map_or(0, std::num::NonZero::get);
    let processes = std::fs::read_dir("/proc").map_or(0, |dir| {
        dir.filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
            .count()
    });
    println!(
        "session-reaper latency ({rounds} rounds, {cpus} cpus, {processes} processes on the machine)\n"
    );
    println!(
        "| {:<44} | {:>11} | {:>11} | {:<22} |",
        "command", "median", "p90", "vs reference"
    );
    println!("|{:-<46}|{:-<13}|{:-<13}|{:-<24}|", "", "", "", "");
    row("/bin/true", &truth, &truth, "/bin/true");
    row("broker attach (live broker)", &attach, &truth, "/bin/true");
    row("hook SessionStart", &session_start, &truth, "/bin/true");
    row(
        &format!("hook SessionEnd, 1,000 workspaces ({end_rounds} runs)"),
        &session_end,
        &truth,
        "/bin/true",
    );
    row(
        "reap --session --dry-run (full /proc scan)",
        &reap_dry,
        &pgrep,
        "pgrep -f",
    );
    row("sh: cat every /proc/*/cmdline", &walk, &truth, "/bin/true");
    row("pgrep -f", &pgrep, &truth, "/bin/true");
    leftovers.print();
    println!(
        "\npeak RSS of any child: /bin/true {true_rss} KiB; after attach {attach_rss} KiB; after SessionEnd x1,000 workspaces {end_rss} KiB"
    );
    println!(
        "sentinel RSS while it waits: {} KiB",
        leftovers.sentinel_rss_kib
    );
}

/// What leftover discovery and the sentinel cost, each beside the same command without them.
struct LeftoverCosts {
    start_with_sentinel: Sample,
    start_without: Sample,
    end_planted: Sample,
    end_bare: Sample,
    reap_discovering: Sample,
    reap_off: Sample,
    planted: usize,
    sentinel_rss_kib: u64,
}

impl LeftoverCosts {
    fn print(&self) {
        let planted = self.planted;
        row(
            "hook SessionStart, starting a sentinel",
            &self.start_with_sentinel,
            &self.start_without,
            "--sentinel off",
        );
        row(
            &format!("hook SessionEnd, {planted} carriers planted"),
            &self.end_planted,
            &self.end_bare,
            "none planted",
        );
        row(
            &format!("reap --dry-run, discovery over {planted}"),
            &self.reap_discovering,
            &self.reap_off,
            "--leftovers off",
        );
    }
}

/// Kills the processes the benchmark planted, however it ends.
struct Planted(Vec<std::process::Child>);

impl Drop for Planted {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn sleeper(env: &[(&str, &str)]) -> std::process::Child {
    let mut command = Command::new("sleep");
    command.arg("600").stdin(Stdio::null());
    for (name, value) in env {
        command.env(name, value);
    }
    command.spawn().expect("start sleep")
}

fn leftover_costs(temp: &Path, rounds: usize, ws: &str) -> LeftoverCosts {
    const PLANTED: usize = 300;
    let state = temp.join("leftovers");
    let payload = |session: &str, event: &str| {
        format!(r#"{{"session_id":"{session}","hook_event_name":"{event}","cwd":"{ws}","reason":"other"}}"#)
            .into_bytes()
    };
    // One agent per SessionStart round, so that every round with the sentinel on starts one.
    let agents = Planted((0..rounds).map(|_| sleeper(&[])).collect());
    let pids: Vec<String> = agents
        .0
        .iter()
        .map(|child| child.id().to_string())
        .collect();
    let start = |sentinel: &'static str, prefix: &'static str| {
        let pids = pids.clone();
        let state = state.clone();
        measure(
            rounds,
            Some(&move |round| payload(&format!("{prefix}-{round}"), "SessionStart")),
            &move |round| {
                hook_with(
                    &state,
                    &["--sentinel", sentinel, "--owner-pid", &pids[round]],
                )
            },
        )
    };
    let start_without = start("off", "off");
    let start_with_sentinel = start("on", "on");
    let sentinel_rss_kib = sentinel_rss(&state);

    // One agent for the session whose carriers are planted, and one whose policy is off.
    let agent = agents.0[0].id().to_string();
    for (session, policy) in [("bench-lo", "stop"), ("bench-off", "off")] {
        measure(1, Some(&|_| payload(session, "SessionStart")), &|_| {
            hook_with(
                &state,
                &[
                    "--sentinel",
                    "off",
                    "--leftovers",
                    policy,
                    "--owner-pid",
                    &agent,
                ],
            )
        });
    }
    let end = |prefix: &'static str| {
        let state = state.clone();
        measure(
            rounds.min(50),
            Some(&move |round| payload(&format!("{prefix}-{round}"), "SessionEnd")),
            &move |_| hook_with(&state, &["--sentinel", "off"]),
        )
    };
    let end_bare = end("bare");
    let _planted = Planted(
        (0..PLANTED)
            .map(|_| sleeper(&[("CLAUDE_CODE_SESSION_ID", "bench-lo")]))
            .collect(),
    );
    let end_planted = end("planted");
    let reap = |session: &'static str| {
        let state = state.clone();
        measure(rounds, None, &move |_| {
            ours(&state, &["reap", "--session", session, "--dry-run"])
        })
    };
    let reap_discovering = reap("bench-lo");
    let reap_off = reap("bench-off");
    LeftoverCosts {
        start_with_sentinel,
        start_without,
        end_planted,
        end_bare,
        reap_discovering,
        reap_off,
        planted: PLANTED,
        sentinel_rss_kib,
    }
}

/// `hook --agent claude` with more flags.
fn hook_with(state: &Path, flags: &[&str]) -> Command {
    let mut command = ours(state, &["hook", "--agent", "claude"]);
    command.args(flags);
    command
}

/// The resident memory of one sentinel of `state` (KiB), 0 when none runs.
fn sentinel_rss(state: &Path) -> u64 {
    let root = state.to_string_lossy().into_owned();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .find_map(|pid| {
            let argv = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let argv: Vec<&[u8]> = argv.split(|b| *b == 0).collect();
            let ours = argv.contains(&b"sentinel".as_slice()) && argv.contains(&root.as_bytes());
            if !ours {
                return None;
            }
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
            status
                .lines()
                .find_map(|line| line.strip_prefix("VmRSS:"))?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

/// Stops the benchmark's own broker (recorded in its temp state root) however `main` ends, a panic included.
struct StopOnDrop {
    state: std::path::PathBuf,
}

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        let _ = ours(&self.state, &["reap", "--session", "owner"]).output();
        for index in 0..8 {
            let _ = ours(&self.state, &["reap", "--session", &format!("s{index}")]).output();
        }
    }
}

/// `count` workspaces under the state root `root`, each with a broker record (naming `broker`'s live process)
/// owned by a session that never ends.
fn plant_workspaces(root: &Path, count: usize, broker: &serde_json::Value) {
    let now = "2026-01-01T00:00:00.000Z";
    for index in 0..count {
        let dir = root.join(format!("workspaces/ws{index}-{index:016x}/default"));
        std::fs::create_dir_all(&dir).unwrap();
        let record = serde_json::json!({
            "version": 1, "name": "default", "workspace": format!("/nonexistent/ws{index}"), "cwd": "/",
            "command": ["sleep", "600"], "owners": [{"session": "keeper", "since": now}],
            "identity": broker["identity"], "pgid": broker["identity"]["pid"],
            "created_at": now, "last_active": now, "grace_ms": 5000, "host": broker["host"],
        });
        std::fs::write(
            dir.join("broker.json"),
            serde_json::to_vec_pretty(&record).unwrap(),
        )
        .unwrap();
    }
    set_private(root);
}

fn set_private(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    for entry in walk(dir) {
        let mode = if entry.is_dir() { 0o700 } else { 0o600 };
        std::fs::set_permissions(&entry, std::fs::Permissions::from_mode(mode)).unwrap();
    }
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = vec![dir.to_path_buf()];
    let mut index = 0;
    while index < out.len() {
        if out[index].is_dir() {
            let children: Vec<_> = std::fs::read_dir(&out[index])
                .unwrap()
                .filter_map(Result::ok)
                .map(|e| e.path())
                .collect();
            out.extend(children);
        }
        index += 1;
    }
    out
}
