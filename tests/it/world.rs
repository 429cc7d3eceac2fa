//! One invocation reads each process's `/proc/<pid>/cmdline` and `/proc/<pid>/environ` at most once (issue 17): a
//! `SessionEnd` hook with three owned brokers and forty other processes carrying a session variable, traced by
//! `strace`, opens none of them twice.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

use crate::harness::*;
use crate::hook_test::HookTest;

/// The `/proc/<pid>/<file>` opens in one strace output file (one traced process): (pid, file) → count.
fn proc_opens(trace: &str) -> HashMap<(i32, String), usize> {
    let mut opens = HashMap::new();
    for line in trace.lines().filter(|line| line.starts_with("openat(")) {
        let Some(path) = line.split('"').nth(1) else {
            continue;
        };
        let mut parts = path.strip_prefix("/proc/").unwrap_or("").split('/');
        if let (Some(Ok(pid)), Some(file @ ("cmdline" | "environ")), None) =
            (parts.next().map(str::parse), parts.next(), parts.next())
        {
            *opens.entry((pid, file.to_owned())).or_insert(0) += 1;
        }
    }
    opens
}

/// `command` run under `strace -f -ff -e trace=openat`, one output file per process under `prefix`.
fn traced(command: &Command, prefix: &Path) -> Command {
    assert!(
        Command::new("strace")
            .arg("-V")
            .output()
            .is_ok_and(|out| out.status.success()),
        "strace is missing: this test needs it (.ci/run installs it)"
    );
    let mut strace = Command::new("strace");
    strace
        .args(["-f", "-ff", "-qq", "-e", "trace=openat", "-o"])
        .arg(prefix)
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

/// Issue 17 "Must show": one `SessionEnd` (3 owned slots, 40 other processes carrying the session's variable, a few
/// carrying another session's) opens each `/proc/<pid>/cmdline` and `/proc/<pid>/environ` at most once per process
/// of ours — and it did read the planted processes (the count is not vacuous) and ended the session's brokers.
#[test]
fn one_session_end_opens_each_proc_cmdline_and_environ_at_most_once() {
    let mut env = Env::new();
    let session = fresh_session("world");
    let other = fresh_session("other");
    let agent = env.sleeper();
    let brokers: Vec<Proc> = (0..3)
        .map(|at| {
            let ws = env.workspace(&format!("ws{at}"));
            env.spawn_broker(&ws, &session, &["sleep", "600"])
        })
        .collect();
    let carriers: Vec<Proc> = (0..45)
        .map(|at| {
            let mut command = Command::new("sleep");
            command.arg("600").env(
                "CLAUDE_CODE_SESSION_ID",
                if at < 40 { &session } else { &other },
            );
            env.spawn(command)
        })
        .collect();

    let ws = env.workspace("ws0");
    let hook = HookTest::new("SessionEnd", &session, &ws)
        .owner(agent)
        .no_sentinel()
        // Room for a loaded machine and strace's own cost: the deadline is not what this test is about.
        .args(&["--agent-exit-wait", "0s", "--deadline", "10s"]);
    let (command, stdin) = hook.command(&env);
    let traces = tempfile::tempdir().expect("a dir for the traces");
    let prefix = traces.path().join("trace");
    let logged_before = env.events().len();
    let out = run_bounded(traced(&command, &prefix), Some(&stdin));
    hook.check(&env, &out, logged_before);

    let mut read_of_ours = 0;
    let mut twice = Vec::new();
    for entry in std::fs::read_dir(traces.path()).expect("the traces") {
        let path = entry.expect("a trace").path();
        let trace = std::fs::read_to_string(&path).expect("a trace file");
        for ((pid, file), count) in proc_opens(&trace) {
            if carriers.iter().chain(&brokers).any(|proc| proc.pid == pid) {
                read_of_ours += 1;
            }
            if count > 1 {
                twice.push(format!(
                    "{}: /proc/{pid}/{file} {count} times",
                    path.display()
                ));
            }
        }
    }
    assert!(
        read_of_ours >= 40,
        "the hook read the planted processes ({read_of_ours} files)"
    );
    assert!(
        twice.is_empty(),
        "opened more than once:\n{}",
        twice.join("\n")
    );
    for broker in &brokers {
        assert!(
            broker.gone_within(PATIENCE),
            "the session's broker {broker:?} stopped"
        );
    }
    for carrier in &carriers[40..] {
        assert!(
            carrier.alive(),
            "another session's process {carrier:?} kept"
        );
    }
}
