//! Wall time and peak memory of what agents and launchers run on every session, each beside a reference measured
//! in the same run: the hook beside `sh -c /bin/true` and `node -e 0`; the process scans beside a minimal direct
//! `/proc` walk (this binary with `--proc-walk`) and `pgrep -f`; the hook against a hung shutdown socket, 100 held
//! slot locks and a held session lock (max of the runs against the deadline); `broker spawn` of a new broker
//! beside `sh -c /bin/true` (at most 8×); `broker attach`/`detach` from 8
//! concurrent writers on one slot (updates per second); one `SessionEnd` of a session with 3 brokers and 40 carriers,
//! with its system calls and `/proc` opens counted under strace. Prints a table; asserts nothing about speed.
//!
//! Run: `cargo bench --bench latency` (`-- --quick`: 5 runs a case).

#[path = "support/mod.rs"]
mod support;

// The containment cases' cgroup parent, shared with the tests (made under the v2 mount, removed on drop).
#[allow(dead_code)]
#[path = "../tests/it/test_cgroup.rs"]
mod test_cgroup;

use std::os::unix::net::UnixListener;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use support::{
    Options, Planted, Root, Sample, Table, Target, measure, ours, payload, reference, spawn_broker,
};

/// The deadline the hook cases run with (the hook's default).
const DEADLINE: Duration = Duration::from_secs(1);
const HOOK_RSS_KIB: i64 = 8 * 1024;

#[allow(clippy::too_many_lines)] // the table, case by case
fn main() {
    let options = Options::from_args();
    let rounds = options.rounds();
    let temp = tempfile::Builder::new()
        .prefix("sr-bench-latency-")
        .tempdir()
        .expect("temp dir");
    let ws = temp.path().join("ws");
    support::mkdir(&ws.join(".git"));
    let ws_text = ws.to_str().unwrap().to_owned();
    let state = Root::new(temp.path(), "state");
    let sentinel_flag = support::supports(&["hook"], "--sentinel");
    let leftovers_flag = support::supports(&["hook"], "--leftovers");

    let mut table = Table::new(&format!("latency: {rounds} runs a case"));
    let mut sentinel_memory = None;
    let truth = measure(rounds, None, &|_| reference("/bin/true", &[]));
    let shell = measure(rounds, None, &|_| reference("sh", &["-c", "/bin/true"]));
    table.row("/bin/true", &truth, None, Target::None, None);
    table.row(
        "sh -c /bin/true",
        &shell,
        Some(("/bin/true", &truth)),
        Target::None,
        None,
    );
    let hooks = options.runs("hooks");
    let node = (hooks && which("node"))
        .then(|| measure(rounds, None, &|_| reference("node", &["-e", "0"])));
    if let Some(node) = &node {
        table.row(
            "node -e 0 (the floor of any Node hook)",
            node,
            Some(("sh -c /bin/true", &shell)),
            Target::None,
            None,
        );
    }

    // SessionStart: this benchmark is the agent process (the hook's nearest non-shell ancestor).
    let start = |prefix: &'static str, flags: &'static [&'static str]| {
        let path = state.path.clone();
        let ws = ws_text.clone();
        measure(
            rounds,
            Some(&move |round| payload(&format!("{prefix}-{round}"), "SessionStart", &ws)),
            &move |_| {
                let mut command = ours(&path, &["hook", "--agent", "claude"]);
                command.args(flags);
                command
            },
        )
    };
    let session_start = if hooks {
        start("start", &[])
    } else {
        Sample::default()
    };
    if hooks {
        table.row(
            "hook SessionStart",
            &session_start,
            Some(("sh -c /bin/true", &shell)),
            Target::Ratio(2.5),
            Some(HOOK_RSS_KIB),
        );
    }
    let mut profiles = Vec::new();
    if hooks && session_start.median().as_secs_f64() > 2.5 * shell.median().as_secs_f64() {
        profiles.push(support::profile(
            "hook SessionStart",
            &ours(&state.path, &["hook", "--agent", "claude"]),
            Some(&payload("start-profiled", "SessionStart", &ws_text)),
        ));
    }
    if let Some(node) = &node {
        table.row(
            "hook SessionStart vs node -e 0",
            &session_start,
            Some(("node -e 0", node)),
            Target::None,
            None,
        );
    }
    if hooks && sentinel_flag {
        let without = start("nosentinel", &["--sentinel", "off"]);
        table.row(
            "hook SessionStart --sentinel off",
            &without,
            Some(("sh -c /bin/true", &shell)),
            Target::Ratio(2.5),
            Some(HOOK_RSS_KIB),
        );
        // A new agent process each run: each SessionStart starts its sentinel.
        let agents = Planted::sleepers(rounds, &[]);
        let pids: Vec<String> = agents.0.iter().map(|c| c.id().to_string()).collect();
        let path = state.path.clone();
        let first = measure(
            rounds,
            Some(&|round| payload(&format!("first-{round}"), "SessionStart", &ws_text)),
            &|round| {
                let mut command = ours(&path, &["hook", "--agent", "claude"]);
                command.args(["--owner-pid", &pids[round]]);
                command
            },
        );
        table.row(
            "hook SessionStart, first of its agent (starts the sentinel)",
            &first,
            Some(("sh -c /bin/true", &shell)),
            Target::Ratio(2.5),
            Some(HOOK_RSS_KIB),
        );
        table.row(
            "hook SessionStart, first of its agent, vs --sentinel off",
            &first,
            Some(("--sentinel off", &without)),
            Target::Ratio(1.2),
            None,
        );
        // Printed after the table.
        sentinel_memory = Some(sentinel_rss(&path, rounds));
    }

    // A live broker to attach to (owned by "keeper" for the whole run).
    let broker = spawn_broker(&state.path, &ws, "keeper", &[]);
    if hooks {
        brokers(&mut table, &state.path, &ws_text, rounds, &shell);
    }
    let containment_memory =
        if options.runs("containment") && support::supports(&["hook"], "--containment") {
            containment(&mut table, temp.path(), &ws_text, rounds, &shell)
        } else {
            None
        };
    if options.runs("scans") {
        scans(&mut table, &state.path, &ws_text, rounds, leftovers_flag);
    }
    if options.runs("world") {
        session_end_world(&mut table, temp.path(), rounds, &shell);
    }
    if options.runs("deadlines") {
        deadlines(&mut table, temp.path(), &ws, rounds, &broker);
    }
    if options.runs("writers") {
        writers(&mut table, &state.path, &ws_text, &options);
    }
    let _ = ours(&state.path, &["reap", "--session", "keeper"]).output();
    table.finish();
    for line in [sentinel_memory, containment_memory].into_iter().flatten() {
        println!("{line}");
    }
    for profile in profiles {
        println!("{profile}");
    }
}

/// `broker attach` to a live broker and `broker spawn` of a new one, beside `sh -c /bin/true`.
fn brokers(table: &mut Table, state: &Path, ws_text: &str, rounds: usize, shell: &Sample) {
    let attach = measure(rounds, None, &|round| {
        let session = format!("attach-{round}");
        ours(
            state,
            &["broker", "attach", "--cwd", ws_text, "--session", &session],
        )
    });
    table.row(
        "broker attach (live broker)",
        &attach,
        Some(("sh -c /bin/true", shell)),
        Target::None,
        Some(HOOK_RSS_KIB),
    );

    // A new broker each run (its own slot), as a launcher or an agent's shell tool starts one: no fixed wait.
    let spawn = measure(rounds, None, &|round| {
        let name = format!("spawned-{round}");
        ours(
            state,
            &[
                "broker",
                "spawn",
                "--cwd",
                ws_text,
                "--name",
                &name,
                "--session",
                "spawner",
                "--",
                "sleep",
                "600",
            ],
        )
    });
    table.row(
        "broker spawn (a new broker)",
        &spawn,
        Some(("sh -c /bin/true", shell)),
        Target::Ratio(8.0),
        Some(HOOK_RSS_KIB),
    );
    let _ = ours(state, &["reap", "--session", "spawner"]).output();
}

/// The memory of the sentinels of `state` once they wait (blocked in `poll`, as `/proc/<pid>/wchan` says; at most
/// 10 s for all `expected` of them): `VmRSS`, and its private (`RssAnon`) and file-backed (`RssFile`) parts, median and
/// max, beside the bound (DESIGN "The sentinel": ≤ 2 MiB). Measured, not asserted.
fn sentinel_rss(state: &Path, expected: usize) -> String {
    sentinel_rss_within(state, expected, 2048)
}

/// `sentinel_rss` held to `bound_kib`.
fn sentinel_rss_within(state: &Path, expected: usize, bound_kib: u64) -> String {
    let root = state.to_string_lossy().into_owned();
    let sentinels = || -> Vec<i32> {
        support::naming(&root)
            .into_iter()
            .filter(|pid| support::naming("sentinel").contains(pid))
            .collect()
    };
    let waiting = |pid: &i32| {
        std::fs::read_to_string(format!("/proc/{pid}/wchan"))
            .is_ok_and(|wchan| wchan.contains("poll"))
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut found = sentinels();
    while (found.len() < expected || !found.iter().all(waiting)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        found = sentinels();
    }
    let field = |pid: i32, name: &str| -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
    };
    let figures = |name: &str| -> (u64, u64) {
        let mut values: Vec<u64> = found.iter().filter_map(|pid| field(*pid, name)).collect();
        values.sort_unstable();
        (
            values.get(values.len() / 2).copied().unwrap_or(0),
            values.last().copied().unwrap_or(0),
        )
    };
    let (rss, rss_max) = figures("VmRSS:");
    let (anon, _) = figures("RssAnon:");
    let (file, _) = figures("RssFile:");
    let (peak, _) = figures("VmHWM:");
    format!(
        "sentinel RSS while waiting ({} sentinels of this run, {expected} started by the case above, {} blocked in \
         poll): median {rss} KiB, max {rss_max} KiB (RssAnon {anon} KiB, RssFile {file} KiB; peak before the wait \
         {peak} KiB); bound {bound_kib} KiB: {}",
        found.len(),
        found.iter().filter(|pid| waiting(pid)).count(),
        if rss_max > 0 && rss_max <= bound_kib {
            "met"
        } else {
            "MISSED"
        }
    )
}

/// Containment (DESIGN "Containment"), where a cgroup v2 parent can be made: a `SessionStart` that adopts its agent
/// into a cgroup beside `sh -c /bin/true` and beside the same start with `--containment off`; the time from an
/// agent's SIGKILL to every one of its four leftovers gone (the sentinel stops them), contained beside today's
/// environment scan (`--containment off`, the leftovers carrying the session variable), with 300 other processes
/// running; and the memory of the contained agents' sentinels while they wait (≤ 1 MiB). Returns that last line.
fn containment(
    table: &mut Table,
    temp: &Path,
    ws: &str,
    rounds: usize,
    shell: &Sample,
) -> Option<String> {
    let cgroup = match test_cgroup::TestCgroup::make() {
        Ok(cgroup) => cgroup,
        Err(why) => {
            println!("containment cases skipped: {why}");
            return None;
        }
    };
    let on: Vec<(&str, String)> = cgroup.env();
    let off = vec![("SESSION_REAPER_CONTAINMENT", "off".to_owned())];
    let state = Root::new(temp, "state-containment");
    // A new agent process each run, so that each start adopts one (their sentinels are measured below).
    let agents = Planted::sleepers(rounds * 3, &[]);
    let pids: Vec<String> = agents.0.iter().map(|c| c.id().to_string()).collect();
    let start = |offset: usize, env: &[(&str, String)], flags: &[&str]| {
        measure(
            rounds,
            Some(&|round| payload(&format!("adopt-{offset}-{round}"), "SessionStart", ws)),
            &|round| {
                let mut command = ours(&state.path, &["hook", "--agent", "gemini"]);
                command
                    .args(["--owner-pid", &pids[offset + round]])
                    .args(flags)
                    .envs(env.iter().map(|(k, v)| (*k, v.as_str())));
                command
            },
        )
    };
    let adopting = start(0, &on, &[]);
    let plain = start(rounds, &off, &[]);
    // No sentinel to hand the move to: the hook moves the agent itself, and waits out the first migration's RCU
    // grace period.
    let moving = start(rounds * 2, &on, &["--sentinel", "off"]);
    let adopted = pids[..rounds]
        .iter()
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
                .is_ok_and(|text| text.contains("/agent-"))
        })
        .count();
    table.row(
        &format!(
            "hook SessionStart adopting its agent into a cgroup ({adopted} of {rounds} adopted)"
        ),
        &adopting,
        Some(("sh -c /bin/true", shell)),
        Target::Ratio(1.5),
        Some(HOOK_RSS_KIB),
    );
    table.row(
        "hook SessionStart adopting its agent, vs --containment off",
        &adopting,
        Some(("--containment off", &plain)),
        Target::None,
        None,
    );
    table.row(
        "hook SessionStart moving its agent itself (--sentinel off)",
        &moving,
        Some(("sh -c /bin/true", shell)),
        Target::None,
        Some(HOOK_RSS_KIB),
    );
    let memory = sentinel_rss_within(&state.path, rounds * 2, 1024);

    let _others = Planted::sleepers(300, &[]);
    // Alternated round by round, so that both meet the same load.
    let (mut contained, mut scanned) = (Sample::default(), Sample::default());
    for round in 0..rounds {
        contained.wall.push(agent_death(
            &state.path,
            ws,
            &format!("contained-{round}"),
            &on,
        ));
        scanned.wall.push(agent_death(
            &state.path,
            ws,
            &format!("scanned-{round}"),
            &off,
        ));
    }
    table.row(
        "agent SIGKILL → its 4 leftovers gone, contained (300 other processes)",
        &contained,
        Some(("environment scan", &scanned)),
        Target::Median(Duration::from_millis(50)),
        None,
    );
    table.row(
        "agent SIGKILL → its 4 leftovers gone, environment scan (--containment off)",
        &scanned,
        Some(("contained", &contained)),
        Target::None,
        None,
    );
    drop(agents);
    Some(format!("containment: {memory}"))
}

/// An agent (`sh` with four `sleep` children, named by `--owner-pid`, its session in `CLAUDE_CODE_SESSION_ID`) starts
/// its session with `env`, its sentinel waits, the agent is killed (SIGKILL): the time from the kill until all four
/// children are gone.
fn agent_death(state: &Path, ws: &str, tag: &str, env: &[(&str, String)]) -> Duration {
    let session = format!("death-{tag}");
    let mut agent = Command::new("sh");
    agent
        .args(["-c", "sleep 600 & sleep 600 & sleep 600 & sleep 600 & wait"])
        .env("CLAUDE_CODE_SESSION_ID", &session)
        .stdin(std::process::Stdio::null());
    let mut agent = agent.spawn().expect("start the agent");
    let pid = agent.id();
    let children = wait_for(|| {
        let text = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).ok()?;
        let children: Vec<i32> = text
            .split_whitespace()
            .filter_map(|c| c.parse().ok())
            .collect();
        (children.len() == 4).then_some(children)
    })
    .expect("the agent's four children");
    let mut hook = ours(
        state,
        &["hook", "--agent", "claude", "--owner-pid", &pid.to_string()],
    );
    hook.envs(env.iter().map(|(k, v)| (*k, v.as_str())));
    let (_, _, code) = support::run_once(hook, Some(&payload(&session, "SessionStart", ws)));
    assert!(code.is_some_and(|c| c <= 1), "SessionStart {session}");
    let root = state.to_string_lossy().into_owned();
    let waiting = wait_for(|| {
        support::naming(&pid.to_string())
            .into_iter()
            .filter(|sentinel| support::naming(&root).contains(sentinel))
            .find(|sentinel| {
                std::fs::read_to_string(format!("/proc/{sentinel}/wchan"))
                    .is_ok_and(|wchan| wchan.contains("poll"))
            })
    });
    assert!(waiting.is_some(), "no sentinel waits for agent {pid}");
    let killed = Instant::now();
    let _ = agent.kill();
    let _ = agent.wait();
    let gone = wait_for(|| {
        children
            .iter()
            .all(|child| {
                std::fs::read_to_string(format!("/proc/{child}/stat")).map_or(true, |stat| {
                    stat[stat.rfind(')').unwrap_or(0)..].starts_with(") Z")
                })
            })
            .then(|| killed.elapsed())
    });
    if gone.is_none() {
        // Leftovers nothing stopped (a failed case, still running: their pids are theirs) go with the benchmark.
        for child in &children {
            unsafe { libc::kill(*child, libc::SIGKILL) };
        }
    }
    gone.expect("the leftovers were stopped within 10 s")
}

/// Polls `probe` every 200 µs for at most 10 s.
fn wait_for<T>(mut probe: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(found) = probe() {
            return Some(found);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// The resume-orphan scan (and leftover discovery, where this build has it) beside the minimal walk and `pgrep -f`,
/// with 300 extra processes of ours planted.
fn scans(table: &mut Table, state: &Path, ws: &str, rounds: usize, leftovers: bool) {
    let id = "0b5f6b3e-1111-4222-8333-944445555666";
    let carrier = "bench-carrier";
    // The session's agent first, its 300 carriers after it (a carrier is only one if it started after the agent).
    let agents = Planted::sleepers(1, &[]);
    let agent = agents.0[0].id().to_string();
    if leftovers {
        measure(1, Some(&|_| payload(carrier, "SessionStart", ws)), &|_| {
            let mut command = ours(state, &["hook", "--agent", "claude", "--owner-pid", &agent]);
            command.args(["--sentinel", "off"]);
            command
        });
    }
    let _planted = Planted::sleepers(300, &[("CLAUDE_CODE_SESSION_ID", String::from(carrier))]);
    let walk = measure(rounds, None, &|_| {
        let mut command = Command::new(std::env::current_exe().unwrap());
        command.args(["--proc-walk", id]);
        command
    });
    let pgrep = measure(rounds, None, &|_| {
        reference("pgrep", &["-f", "--", &format!("--resume {id}")])
    });
    // No record knows `id` (only the planted `--resume` argvs name it): `--force`, or the reap refuses it.
    let reap = measure(rounds, None, &|_| {
        ours(
            state,
            &["reap", "--session", id, "--force", "--dry-run", "--json"],
        )
    });
    let processes = support::count_pids();
    table.row(
        &format!("minimal /proc walk ({processes} processes)"),
        &walk,
        Some(("pgrep -f", &pgrep)),
        Target::None,
        None,
    );
    table.row(
        &format!("pgrep -f ({processes} processes)"),
        &pgrep,
        Some(("minimal walk", &walk)),
        Target::None,
        None,
    );
    table.row(
        "reap --dry-run: resume-orphan scan",
        &reap,
        Some(("minimal walk", &walk)),
        Target::Ratio(1.3),
        None,
    );
    table.row(
        "reap --dry-run: resume-orphan scan vs pgrep -f",
        &reap,
        Some(("pgrep -f", &pgrep)),
        Target::Ratio(1.0),
        None,
    );
    if leftovers {
        // A session whose tools left 300 carriers of its id: discovery reads each one's environment and argv.
        let discovering = measure(rounds, None, &|_| {
            ours(
                state,
                &["reap", "--session", carrier, "--dry-run", "--json"],
            )
        });
        table.row(
            "reap --dry-run: leftover discovery over 300 carriers",
            &discovering,
            Some(("minimal walk", &walk)),
            Target::Ratio(1.3),
            None,
        );
        table.row(
            "reap --dry-run: leftover discovery vs pgrep -f",
            &discovering,
            Some(("pgrep -f", &pgrep)),
            Target::Ratio(1.0),
            None,
        );
    }
}

/// One `SessionEnd` of a session with 3 brokers and 40 other processes carrying its variable (5 more carry another
/// session's): its time, then one more run under `strace -f -ff` for its system calls and its opens of
/// `/proc/<pid>/{cmdline,environ,statm}` — each at most once per process (issue 17).
fn session_end_world(table: &mut Table, temp: &Path, rounds: usize, shell: &Sample) {
    let root = Root::new(temp, "world");
    let ws = temp.join("world-ws");
    support::mkdir(&ws.join(".git"));
    let ws_text = ws.to_str().unwrap().to_owned();
    let planted = std::cell::RefCell::new(Vec::new());
    // Each run ends its own session: its agent, brokers and carriers are planted before the run is timed.
    let plant = |session: &str| {
        let agent = Planted::sleepers(1, &[]);
        let owner = agent.0[0].id().to_string();
        for name in ["a", "b", "c"] {
            spawn_broker(
                &root.path,
                &ws,
                session,
                &["--name", &format!("{session}-{name}")],
            );
        }
        let carrying = Planted::sleepers(40, &[("CLAUDE_CODE_SESSION_ID", session.to_owned())]);
        let other = Planted::sleepers(5, &[("CLAUDE_CODE_SESSION_ID", format!("{session}-other"))]);
        planted.borrow_mut().extend([agent, carrying, other]);
        let mut command = ours(&root.path, &["hook", "--agent", "claude"]);
        command.args(["--owner-pid", &owner, "--sentinel", "off"]);
        command
    };
    let sample = measure(
        rounds,
        Some(&|round| payload(&format!("world-{round}"), "SessionEnd", &ws_text)),
        &|round| plant(&format!("world-{round}")),
    );
    let case = "hook SessionEnd, 3 brokers + 40 carriers of its session";
    table.row(
        case,
        &sample,
        Some(("sh -c /bin/true", shell)),
        Target::None,
        Some(HOOK_RSS_KIB),
    );
    planted.borrow_mut().clear();
    if Command::new("strace").arg("-V").output().is_err() {
        table.figure(
            &format!("{case}: system calls"),
            "strace is not installed",
            "—",
            None,
        );
        return;
    }
    let traces = temp.join("world-traces");
    support::mkdir(&traces);
    let command = plant("world-traced");
    support::run_once(
        support::under_strace(&["-f", "-ff", "-qq", "-o"], &traces.join("trace"), &command),
        Some(&payload("world-traced", "SessionEnd", &ws_text)),
    );
    let (mut calls, mut opens, mut most) = (0, 0, 0);
    for entry in std::fs::read_dir(&traces).expect("the traces").flatten() {
        let trace = std::fs::read_to_string(entry.path()).unwrap_or_default();
        let mut per_file = std::collections::HashMap::new();
        for line in trace.lines().filter(|line| !line.starts_with("---")) {
            calls += 1;
            let path = line.split('"').nth(1).unwrap_or_default();
            let file = path.rsplit('/').next().unwrap_or_default();
            let proc_file = line.starts_with("openat(")
                && path.starts_with("/proc/")
                && path
                    .split('/')
                    .nth(2)
                    .is_some_and(|pid| pid.parse::<u32>().is_ok())
                && matches!(file, "cmdline" | "environ" | "statm");
            if proc_file {
                opens += 1;
                let count = per_file.entry(path.to_owned()).or_insert(0);
                *count += 1;
                most = most.max(*count);
            }
        }
    }
    table.figure(
        &format!("{case}: system calls (strace -f, every process it ran)"),
        &format!("{calls} calls, {opens} opens of /proc/<pid>/{{cmdline,environ,statm}}, at most {most} of one file in one process"),
        "each file ≤ 1 per process",
        Some(most <= 1),
    );
    planted.borrow_mut().clear();
}

/// The hook's deadline against what can make it wait: the max of the runs is what is held to the deadline.
fn deadlines(table: &mut Table, temp: &Path, ws: &Path, rounds: usize, broker: &serde_json::Value) {
    let ws_text = ws.to_str().unwrap();
    let deadline = format!("{}ms", DEADLINE.as_millis());
    let end_hook = |state: &Path| {
        let mut command = ours(
            state,
            &["hook", "--agent", "claude", "--deadline", &deadline],
        );
        command.env("SESSION_REAPER_SENTINEL", "off");
        command
    };

    // A shutdown socket that never accepts: each run ends the only owner of its own broker.
    let hung = Root::new(temp, "hung");
    let socket_path = temp.join("hung.sock");
    let _listener = UnixListener::bind(&socket_path).expect("bind the hung socket");
    let socket = socket_path.to_str().unwrap();
    for round in 0..rounds {
        let name = format!("hung{round}");
        spawn_broker(
            &hung.path,
            ws,
            &format!("hung-{round}"),
            &[
                "--name",
                &name,
                "--shutdown-socket",
                socket,
                "--shutdown-message",
                "shutdown",
            ],
        );
    }
    let sample = measure(
        rounds,
        Some(&|round| payload(&format!("hung-{round}"), "SessionEnd", ws_text)),
        &|_| end_hook(&hung.path),
    );
    deadline_row(table, "hook SessionEnd, hung shutdown socket", &sample);

    // 100 slots the session owns, each lock held by this process for the whole case.
    let locked = Root::new(temp, "locked");
    let keys = plant_owned_slots(&locked.path, 100, broker, "locked", rounds);
    let _held: Vec<std::fs::File> = keys
        .iter()
        .map(|key| {
            let file =
                std::fs::File::open(locked.path.join(format!("workspaces/{key}/broker.lock")))
                    .expect("slot lock");
            file.lock().expect("hold the slot lock");
            file
        })
        .collect();
    let sample = measure(
        rounds,
        Some(&|round| payload(&format!("locked-{round}"), "SessionEnd", ws_text)),
        &|_| end_hook(&locked.path),
    );
    deadline_row(table, "hook SessionEnd, 100 slot locks held", &sample);

    // The session's own lock held.
    let held = Root::new(temp, "session-lock");
    plant_owned_slots(&held.path, 1, broker, "held", 1);
    let lock = std::fs::File::options()
        .write(true)
        .create(true)
        .truncate(false)
        .open(held.path.join("sessions/held-0.lock"))
        .expect("session lock");
    lock.lock().expect("hold the session lock");
    let sample = measure(
        rounds,
        Some(&|_| payload("held-0", "SessionEnd", ws_text)),
        &|_| end_hook(&held.path),
    );
    deadline_row(table, "hook SessionEnd, session lock held", &sample);
    let start = measure(
        rounds,
        Some(&|_| payload("held-0", "SessionStart", ws_text)),
        &|_| end_hook(&held.path),
    );
    deadline_row(table, "hook SessionStart, session lock held", &start);
}

fn deadline_row(table: &mut Table, case: &str, sample: &Sample) {
    table.row(
        &format!("{case} (--deadline {}ms)", DEADLINE.as_millis()),
        sample,
        None,
        Target::Max(DEADLINE),
        Some(HOOK_RSS_KIB),
    );
}

/// `count` slots (`workspaces/<key>/default`) naming `broker`, each owned by "keeper" and by `<prefix>-0` …
/// `<prefix>-<sessions - 1>`, whose session records index them all. Returns the slot paths (`<key>/default`).
fn plant_owned_slots(
    root: &Path,
    count: usize,
    broker: &serde_json::Value,
    prefix: &str,
    sessions: usize,
) -> Vec<String> {
    let now = "2026-01-01T00:00:00.000Z";
    let mut owners = vec![serde_json::json!({"session": "keeper", "since": now})];
    owners.extend(
        (0..sessions)
            .map(|n| serde_json::json!({"session": format!("{prefix}-{n}"), "since": now})),
    );
    let slots: Vec<String> = (0..count)
        .map(|index| {
            let workspace = format!("/nonexistent/bench/{prefix}{index}");
            let slot = format!(
                "{}/default",
                session_reaper::testing::workspace_key(Path::new(&workspace))
            );
            let dir = root.join("workspaces").join(&slot);
            support::mkdir(&dir);
            let record = serde_json::json!({
                "version": 1, "name": "default", "workspace": workspace, "cwd": "/",
                "command": ["sleep", "600"], "owners": owners,
                "identity": broker["identity"], "pgid": broker["identity"]["pid"],
                "created_at": now, "last_active": now, "grace_ms": 5000, "host": broker["host"],
            });
            support::write_private(
                &dir.join("broker.json"),
                &serde_json::to_vec_pretty(&record).unwrap(),
            );
            support::write_private(&dir.join("broker.lock"), b"");
            slot
        })
        .collect();
    support::mkdir(&root.join("sessions"));
    for n in 0..sessions {
        let id = format!("{prefix}-{n}");
        let record = serde_json::json!({
            "version": 1, "session_id": id, "agent": "claude", "cwd": "/",
            "host": broker["host"], "started_at": now, "last_seen": now,
            "ended_at": null, "end_reason": null, "slots": slots,
        });
        support::write_private(
            &root.join(format!("sessions/{id}.json")),
            &serde_json::to_vec_pretty(&record).unwrap(),
        );
    }
    slots
}

/// `broker attach` then `broker detach` by 8 concurrent writers on one slot, beside one writer alone.
fn writers(table: &mut Table, state: &Path, ws: &str, options: &Options) {
    let per_writer = if options.quick { 5 } else { 25 };
    let run = |writers: usize| {
        let started = Instant::now();
        std::thread::scope(|scope| {
            for writer in 0..writers {
                scope.spawn(move || {
                    let session = format!("writer-{writer}");
                    for _ in 0..per_writer {
                        for verb in ["attach", "detach"] {
                            let out =
                                ours(state, &["broker", verb, "--cwd", ws, "--session", &session])
                                    .output()
                                    .expect("broker update");
                            assert!(
                                out.status.success(),
                                "broker {verb}: {}",
                                String::from_utf8_lossy(&out.stderr)
                            );
                        }
                    }
                });
            }
        });
        let updates = writers * per_writer * 2;
        (
            updates,
            f64::from(u32::try_from(updates).unwrap()) / started.elapsed().as_secs_f64(),
        )
    };
    let (alone_updates, alone) = run(1);
    let (updates, together) = run(8);
    // Every writer ended detached: an owner left behind would be a lost update.
    let record = std::fs::read_dir(state.join("workspaces"))
        .expect("workspaces")
        .flatten()
        .map(|entry| entry.path().join("default/broker.json"))
        .find(|path| path.exists())
        .and_then(|path| std::fs::read(path).ok())
        .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
        .expect("the writers' slot");
    let left: Vec<&str> = record["owners"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|owner| owner["session"].as_str())
        .filter(|session| session.starts_with("writer-"))
        .collect();
    table.figure(
        "broker attach/detach, 8 writers: writers left as owners (lost updates)",
        &left.len().to_string(),
        "0",
        Some(left.is_empty()),
    );
    table.figure(
        &format!("broker attach/detach, 1 writer ({alone_updates} updates)"),
        &format!("{alone:.0} updates/s"),
        "—",
        None,
    );
    table.figure(
        &format!("broker attach/detach, 8 concurrent writers on one slot ({updates} updates)"),
        &format!(
            "{together:.0} updates/s ({:.2}× one writer)",
            together / alone
        ),
        "—",
        None,
    );
}

fn which(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .output()
        .is_ok_and(|out| out.status.success())
}
