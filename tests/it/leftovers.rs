//! Leftovers and the sentinel: what a fake agent's tools start and never register (background jobs, `setsid` and
//! `nohup` daemons, a stdio MCP server that ignores EOF, a nested agent) is stopped once the agent is gone — seen
//! by the sentinel, by the bounded wait after `SessionEnd`, or by a sweep — and nothing else is touched. Every
//! test uses fresh random session ids, so whole-table scans only ever match what the test planted.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{
    BIN, Env, FakeAgent, PATIENCE, Proc, fresh_session, sentinels_of, stdout, wait_until,
};
use crate::hook_test::HookTest;

/// What the stop of a process that ignores SIGTERM may take: the default grace, and slack for a loaded machine.
const GRACE_AND_SLACK: Duration = Duration::from_secs(5 + 10);

/// Plants, through the agent, one of each kind of leftover; returns them by name.
fn plant_leftovers(env: &mut Env, agent: &mut FakeAgent) -> Vec<(&'static str, Proc)> {
    let claude = env.work.path().join("claude");
    if !claude.exists() {
        std::fs::copy("/bin/sh", &claude).expect("a nested agent executable named claude");
    }
    let orders = [
        format!("run sleep 600 & echo $! > {}", env.work_path("plain.pid")),
        format!(
            "run (setsid sh -c 'echo $$ > {}; exec sleep 600' &)",
            env.work_path("daemon.pid")
        ),
        format!(
            "run nohup sh -c 'echo $$ > {}; exec sleep 600' >/dev/null 2>&1 &",
            env.work_path("nohup.pid")
        ),
        format!(
            "mcp exec python3 -c 'import os, sys, time; open(\"{}\", \"w\").write(str(os.getpid())); sys.stdin.read(); time.sleep(600)'",
            env.work_path("mcp.pid")
        ),
        format!(
            "run ({} -c 'sleep 600 & echo $! > {}; echo $$ > {}; wait' &)",
            claude.display(),
            env.work_path("nested-child.pid"),
            env.work_path("nested.pid")
        ),
    ];
    for order in &orders {
        agent.order(order);
    }
    ["plain", "daemon", "nohup", "mcp", "nested", "nested-child"]
        .into_iter()
        .map(|name| (name, env.planted(&format!("{name}.pid"))))
        .collect()
}

/// Orders a `setsid` daemon (double fork) that writes its pid to `<name>.pid`.
fn order_daemon(env: &Env, agent: &mut FakeAgent, name: &str) {
    agent.order(&format!(
        "run (setsid sh -c 'echo $$ > {}; exec sleep 600' &)",
        env.work_path(&format!("{name}.pid"))
    ));
}

/// Orders a plain background job (`&`) that writes its pid to `<name>.pid`.
fn order_background(env: &Env, agent: &mut FakeAgent, name: &str) {
    agent.order(&format!(
        "run sleep 600 & echo $! > {}",
        env.work_path(&format!("{name}.pid"))
    ));
}

fn all_gone_within(procs: &[(&str, Proc)], limit: Duration) -> Result<Duration, Vec<String>> {
    let started = Instant::now();
    if wait_until(limit, || procs.iter().all(|(_, proc)| !proc.alive())) {
        return Ok(started.elapsed());
    }
    Err(procs
        .iter()
        .filter(|(_, proc)| proc.alive())
        .map(|(name, proc)| format!("{name} (pid {})", proc.pid))
        .collect())
}

fn leftover_stops(env: &Env) -> Vec<Value> {
    env.events_where("stop", Some("leftover"))
        .into_iter()
        .filter(|event| event["result"] == "stopped")
        .collect()
}

/// Waits for a `leftover` stop event naming each of `procs` (the event follows the confirmed exit).
fn stopped_as_leftovers(env: &Env, procs: &[(&str, Proc)]) -> bool {
    wait_until(PATIENCE, || {
        let stops = leftover_stops(env);
        procs
            .iter()
            .all(|(_, proc)| stops.iter().any(|event| event["pid"] == proc.pid))
    })
}

fn no_sentinel_for(env: &Env, agent: &FakeAgent) -> bool {
    wait_until(PATIENCE, || {
        sentinels_of(env.state_dir())
            .iter()
            .all(|(_, watched)| *watched != agent.proc.pid)
    })
}

#[test]
fn leftovers_go_once_the_agent_exits_after_session_end_and_nothing_else_does() {
    let mut env = Env::new();
    let workspace = env.workspace("ws");
    let session = fresh_session("lo");
    // A look-alike: it names the session but was running before the agent started.
    let mut older = std::process::Command::new("sleep");
    older.arg("600").env("CLAUDE_CODE_SESSION_ID", &session);
    let older = env.spawn(older);
    // Start times count clock ticks: let one pass, so that the agent starts strictly later than the look-alike.
    assert!(wait_until(PATIENCE, || uptime_ticks() > older.ticks + 1));
    let mut agent = env.fake_agent(&session, "CLAUDE_CODE_SESSION_ID", &["--agent", "claude"]);
    agent.order("start");
    let leftovers = plant_leftovers(&mut env, &mut agent);

    let (mut second, mut untouched) = plant_untouched(&mut env, &mut agent, &workspace);
    untouched.push(("older look-alike", older));
    // While the agent lives: status lists its leftovers-to-be and its sentinel; a dry-run reap lists them too.
    let status = env.status();
    let view = status["leftovers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|view| view["session"] == session.as_str())
        .cloned()
        .expect("status shows the session's leftovers");
    assert_eq!(view["sentinel"], true, "{view}");
    let listed: Vec<i64> = view["leftovers"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|leftover| leftover["pid"].as_i64())
        .collect();
    for name in ["plain", "daemon", "nohup", "nested", "nested-child"] {
        let pid = leftovers.iter().find(|(n, _)| *n == name).unwrap().1.pid;
        assert!(listed.contains(&i64::from(pid)), "{name} not in {view}");
    }
    for (name, proc) in &untouched {
        assert!(
            !listed.contains(&i64::from(proc.pid)),
            "{name} listed: {view}"
        );
    }
    let dry = env.run(&["reap", "--session", &session, "--dry-run"]);
    let plain = leftovers[0].1.pid;
    assert!(
        stdout(&dry).contains(&format!("pid {plain:>7}")) && stdout(&dry).contains("would stop"),
        "{}",
        stdout(&dry)
    );

    agent.order("end prompt_input_exit");
    agent.exit();
    let took = all_gone_within(&leftovers, PATIENCE).unwrap_or_else(|alive| {
        panic!(
            "still alive after the agent exited: {alive:?}\n{:#?}",
            env.events()
        )
    });
    eprintln!("leftovers gone {took:?} after the agent exited");
    assert!(
        no_sentinel_for(&env, &agent),
        "the sentinel exits when its work is done"
    );
    for (name, proc) in &untouched {
        assert!(proc.alive(), "{name} (pid {}) was stopped", proc.pid);
    }
    assert!(
        stopped_as_leftovers(&env, &leftovers),
        "{:#?}",
        env.events()
    );
    let stops = leftover_stops(&env);
    for (name, proc) in &leftovers {
        let event = stops
            .iter()
            .find(|event| event["pid"] == proc.pid)
            .unwrap_or_else(|| panic!("no leftover stop event for {name}: {stops:#?}"));
        assert_eq!(event["session"], session.as_str());
        assert!(
            event["argv"]
                .as_array()
                .is_some_and(|argv| !argv.is_empty()),
            "{event}"
        );
        assert!(event["rss_kib"].as_u64().is_some(), "{event}");
    }
    let freed: Value =
        serde_json::from_slice(&env.run(&["log", "--freed", "--json"]).stdout).unwrap();
    assert!(freed["stops"].as_u64().unwrap() >= 6, "{freed}");
    assert!(freed["freed_kib"].as_u64().unwrap() > 0, "{freed}");
    second.exit();
}

/// Plants, beside `agent`'s leftovers, what must survive its exit: another live session's carriers and one of ours
/// still under that live agent, an agent's background-shell helper and the shell it holds, a `keep` command, a
/// `keep --pid` mark, `SESSION_REAPER_KEEP=1`, and a broker another live session co-owns. Returns that other agent
/// and the planted processes.
fn plant_untouched(
    env: &mut Env,
    agent: &mut FakeAgent,
    workspace: &std::path::Path,
) -> (FakeAgent, Vec<(&'static str, Proc)>) {
    let session = agent.session.clone();
    // Another live session: its own carriers, and one carrying our session while still under that live agent.
    let other = fresh_session("lo-other");
    let mut second = env.fake_agent(&other, "CLAUDE_CODE_SESSION_ID", &["--agent", "claude"]);
    second.order("start");
    order_daemon(env, &mut second, "other");
    second.order(&format!(
        "mcp exec env CLAUDE_CODE_SESSION_ID={session} sh -c 'echo $$ > {}; exec sleep 600'",
        env.work_path("held.pid")
    ));
    // An agent's own background-shell helper and the shell it holds; a kept command; a marked process; a process
    // with SESSION_REAPER_KEEP=1; a broker the other session co-owns.
    agent.order(&format!(
        "run (sh -c 'sleep 600 & echo $! > {}; echo $$ > {}; wait' --bg-pty-host &)",
        env.work_path("bg-child.pid"),
        env.work_path("bg.pid")
    ));
    agent.order(&format!(
        "run {BIN} keep -- sh -c 'echo $$ > {}; exec sleep 600' > /dev/null",
        env.work_path("kept.pid")
    ));
    order_background(env, agent, "marked");
    agent.order(&format!(
        "run SESSION_REAPER_KEEP=1 setsid sh -c 'echo $$ > {}; exec sleep 600' &",
        env.work_path("keep-env.pid")
    ));
    let broker = env.spawn_broker(workspace, &session, &["sleep", "600"]);
    let attach = env.run(&[
        "broker",
        "attach",
        "--cwd",
        workspace.to_str().unwrap(),
        "--session",
        &other,
    ]);
    assert!(
        attach.status.success(),
        "{}",
        crate::harness::stderr(&attach)
    );
    let mut untouched: Vec<(&str, Proc)> = [
        "other", "held", "bg", "bg-child", "kept", "marked", "keep-env",
    ]
    .into_iter()
    .map(|name| (name, env.planted(&format!("{name}.pid"))))
    .collect();
    untouched.push(("broker", broker));
    let marked = untouched
        .iter()
        .find(|(name, _)| *name == "marked")
        .unwrap()
        .1;
    let keep = env.run(&["keep", "--pid", &marked.pid.to_string()]);
    assert!(keep.status.success(), "{}", crate::harness::stderr(&keep));
    (second, untouched)
}

#[test]
fn a_clear_stops_no_leftover_while_the_agent_lives() {
    let mut env = Env::new();
    let session = fresh_session("lo-clear");
    let mut agent = env.fake_agent(&session, "CLAUDE_CODE_SESSION_ID", &["--agent", "claude"]);
    agent.order("start");
    let leftovers = plant_leftovers(&mut env, &mut agent);
    agent.order("end clear");
    // The hook has returned: anything it would stop has at least been signalled by now.
    let ended = env.events_where("session_end", None);
    assert!(!ended.is_empty(), "the session ended");
    for (name, proc) in &leftovers {
        assert!(proc.alive(), "{name} stopped by a clear");
    }
    assert!(
        sentinels_of(env.state_dir())
            .iter()
            .any(|(_, watched)| *watched == agent.proc.pid),
        "the sentinel still watches the agent"
    );
    // The agent goes: the cleared session's leftovers go with it.
    agent.exit();
    if let Err(alive) = all_gone_within(&leftovers, PATIENCE) {
        panic!("still alive after the agent exited: {alive:?}");
    }
}

/// An agent killed with SIGKILL: no `SessionEnd`, no sweep. The sentinel stops the session's broker and its leftovers — or,
/// with the sentinel off, one sweep does.
fn sigkilled_agent(variable: &str, agent_flag: &str, sentinel: bool) {
    let mut env = Env::new();
    let workspace = env.workspace("ws");
    let session = fresh_session("lo-kill");
    let mut flags = vec!["--agent", agent_flag];
    if !sentinel {
        flags.extend(["--sentinel", "off"]);
    }
    let mut agent = env.fake_agent(&session, variable, &flags);
    agent.order("start");
    let broker = env.spawn_broker(&workspace, &session, &["sleep", "600"]);
    order_background(&env, &mut agent, "plain");
    order_daemon(&env, &mut agent, "daemon");
    agent.order(&format!(
        "run (setsid python3 -c 'import os, signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); open(\"{}\", \"w\").write(str(os.getpid())); time.sleep(600)' &)",
        env.work_path("stubborn.pid")
    ));
    let quick: Vec<(&str, Proc)> = vec![
        ("broker", broker),
        ("plain", env.planted("plain.pid")),
        ("daemon", env.planted("daemon.pid")),
    ];
    let stubborn = vec![("stubborn", env.planted("stubborn.pid"))];
    let unrelated = env.sleeper();
    agent.kill();
    if sentinel {
        let took = all_gone_within(&quick, PATIENCE).unwrap_or_else(|alive| {
            panic!("{variable}: still alive: {alive:?}\n{:#?}", env.events())
        });
        eprintln!(
            "{variable}: broker and leftovers gone {took:?} after SIGKILL of the agent (sentinel)"
        );
        let took = all_gone_within(&stubborn, GRACE_AND_SLACK + PATIENCE)
            .unwrap_or_else(|alive| panic!("{variable}: still alive: {alive:?}"));
        eprintln!("{variable}: the one ignoring SIGTERM gone {took:?} after SIGKILL of the agent");
        assert!(
            !env.events_where("session_end", Some("agent_gone"))
                .is_empty(),
            "the session ended as agent_gone"
        );
    } else {
        assert!(
            sentinels_of(env.state_dir()).is_empty(),
            "--sentinel off starts no sentinel"
        );
        assert!(
            quick.iter().all(|(_, proc)| proc.alive()),
            "nothing stops them but a sweep"
        );
        let sweep = env.run(&["sweep"]);
        assert!(sweep.status.success(), "{}", stdout(&sweep));
        let mut all = quick.clone();
        all.extend(stubborn);
        if let Err(alive) = all_gone_within(&all, GRACE_AND_SLACK + PATIENCE) {
            panic!(
                "{variable}: still alive after one sweep: {alive:?}\n{}",
                stdout(&sweep)
            );
        }
    }
    assert!(unrelated.alive(), "a process the agent did not start stays");
    // The stop event follows the confirmed exit: it may trail the process's end by a moment.
    assert!(
        wait_until(PATIENCE, || leftover_stops(&env).len() >= 3),
        "{:#?}",
        env.events()
    );
}

#[test]
fn sigkilled_agent_the_sentinel_stops_broker_and_leftovers_for_every_session_variable() {
    for (variable, agent) in [
        ("CLAUDE_CODE_SESSION_ID", "claude"),
        ("QWEN_CODE_SESSION_ID", "qwen"),
        ("CODEX_THREAD_ID", "codex"),
    ] {
        sigkilled_agent(variable, agent, true);
    }
}

#[test]
fn sigkilled_agent_with_the_sentinel_off_one_sweep_stops_broker_and_leftovers() {
    for (variable, agent) in [
        ("CLAUDE_CODE_SESSION_ID", "claude"),
        ("CODEX_THREAD_ID", "codex"),
    ] {
        sigkilled_agent(variable, agent, false);
    }
}

/// An agent that names no session (Gemini CLI): what its hooks saw below it, and its own process group, stand in.
#[test]
fn agents_that_name_no_session_leave_descendants_and_group_members() {
    let mut env = Env::new();
    let session = fresh_session("lo-gemini");
    let mut agent = env.fake_agent(&session, "-", &["--agent", "gemini"]);
    // Below the agent when SessionStart runs, in a session of its own (out of the agent's group).
    agent.order(&format!(
        "mcp exec setsid sh -c 'echo $$ > {}; exec sleep 600'",
        env.work_path("seen.pid")
    ));
    let seen = env.planted("seen.pid");
    agent.order("start");
    // Started later, in the agent's group.
    order_background(&env, &mut agent, "grouped");
    let grouped = env.planted("grouped.pid");
    let unrelated = env.sleeper();
    agent.kill();
    let left = [("seen", seen), ("grouped", grouped)];
    if let Err(alive) = all_gone_within(&left, PATIENCE) {
        panic!("still alive: {alive:?}\n{:#?}", env.events());
    }
    assert!(unrelated.alive());
    assert!(
        stopped_as_leftovers(&env, &left),
        "not all stopped as leftovers: {:#?}",
        env.events()
    );
}

/// The other `SessionEnd` hooks of the agent are its children and carry its session: never signalled.
#[test]
fn other_session_end_hooks_of_the_agent_are_never_signalled() {
    let mut env = Env::new();
    let session = fresh_session("lo-hooks");
    let mut agent = env.fake_agent(&session, "CLAUDE_CODE_SESSION_ID", &["--agent", "claude"]);
    agent.order("start");
    let (signalled, done) = (env.work_path("signalled"), env.work_path("done"));
    agent.order(&format!(
        "hook python3 -c 'import signal, time; mark = lambda *_: open(\"{signalled}\", \"w\").close(); [signal.signal(s, mark) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)]; time.sleep(1.5); open(\"{done}\", \"w\").close()'"
    ));
    agent.order("end other");
    agent.exit();
    assert!(
        std::path::Path::new(&done).exists(),
        "the other hook ran to its end"
    );
    assert!(no_sentinel_for(&env, &agent));
    assert!(
        !std::path::Path::new(&signalled).exists(),
        "the other hook was signalled"
    );
}

/// With the sentinel off, the `SessionEnd` at which the agent exits waits (bounded) for the exit and stops the
/// leftovers then.
#[test]
fn with_the_sentinel_off_session_end_waits_for_the_agent_to_exit() {
    let mut env = Env::new();
    let session = fresh_session("lo-off");
    let mut agent = env.fake_agent(
        &session,
        "CLAUDE_CODE_SESSION_ID",
        &["--agent", "claude", "--sentinel", "off"],
    );
    agent.order("start");
    assert!(sentinels_of(env.state_dir()).is_empty());
    order_daemon(&env, &mut agent, "daemon");
    let daemon = env.planted("daemon.pid");
    agent.order("end other");
    assert!(daemon.alive(), "nothing is stopped while the agent lives");
    agent.exit();
    assert!(daemon.gone_within(PATIENCE), "{:#?}", env.events());
}

/// A session whose `SessionStart` never ran (the hooks installed mid-session, a start that missed its deadline on a
/// loaded machine): its `SessionEnd` records the agent as the start would have, so the agent's exit still takes the
/// session's leftovers.
#[test]
fn a_session_whose_start_was_never_seen_still_loses_its_leftovers_when_the_agent_exits() {
    let mut env = Env::new();
    let session = fresh_session("lo-nostart");
    let mut agent = env.fake_agent(&session, "CLAUDE_CODE_SESSION_ID", &["--agent", "claude"]);
    order_daemon(&env, &mut agent, "daemon");
    let daemon = env.planted("daemon.pid");
    agent.order("end other");
    assert!(daemon.alive(), "nothing is stopped while the agent lives");
    let record: Value = serde_json::from_slice(
        &std::fs::read(env.state_dir().join(format!("sessions/{session}.json"))).unwrap(),
    )
    .unwrap();
    assert_eq!(
        record["agent_identity"]["pid"], agent.proc.pid,
        "the ending recorded the agent: {record:#}"
    );
    agent.exit();
    assert!(daemon.gone_within(PATIENCE), "{:#?}", env.events());
    assert!(stopped_as_leftovers(&env, &[("daemon", daemon)]));
}

/// `--leftovers report` lists what the session left behind and stops none of it.
#[test]
fn the_report_policy_only_reports() {
    let mut env = Env::new();
    let session = fresh_session("lo-report");
    let mut agent = env.fake_agent(
        &session,
        "CLAUDE_CODE_SESSION_ID",
        &["--agent", "claude", "--leftovers", "report"],
    );
    agent.order("start");
    order_daemon(&env, &mut agent, "daemon");
    let daemon = env.planted("daemon.pid");
    agent.exit();
    assert!(
        wait_until(PATIENCE, || !env
            .events_where("leftover", Some("leftover"))
            .is_empty()),
        "{:#?}",
        env.events()
    );
    assert!(no_sentinel_for(&env, &agent));
    assert!(daemon.alive(), "reported, not stopped");
}

/// 200 agents at once, each with two `SessionStart`s: exactly one sentinel per agent process, none once they are
/// gone.
#[test]
fn two_hundred_agents_one_sentinel_each_and_none_left() {
    const AGENTS: usize = 200;
    let mut env = Env::new();
    // A copy of sh named like an agent: only a recognised agent gets a sentinel.
    let agent_exe = env.work.path().join("claude");
    std::fs::copy("/bin/sh", &agent_exe).expect("an agent executable");
    let state = env.state_dir().to_string_lossy().into_owned();
    let mut agents = Vec::new();
    for index in 0..AGENTS {
        let session = fresh_session(&format!("lo-many{index}"));
        let start = env.work.path().join(format!("{session}.start"));
        let end = env.work.path().join(format!("{session}.end"));
        std::fs::write(
            &start,
            format!(r#"{{"session_id":"{session}","hook_event_name":"SessionStart"}}"#),
        )
        .unwrap();
        std::fs::write(
            &end,
            format!(
                r#"{{"session_id":"{session}","hook_event_name":"SessionEnd","reason":"other"}}"#
            ),
        )
        .unwrap();
        // A generous deadline: 400 hooks at once on a loaded 2-core machine.
        let hook = format!("{BIN} --state-dir {state} hook --agent claude --deadline 30s");
        let script = format!(
            "{hook} < {s}; {hook} < {s}; read line; {hook} < {e}",
            s = start.display(),
            e = end.display()
        );
        let mut command = std::process::Command::new(&agent_exe);
        command
            .args(["-c", &script])
            .stdin(std::process::Stdio::piped());
        crate::harness::scrub_env(&mut command);
        let mut child = command.spawn().expect("start an agent");
        let stdin = child.stdin.take();
        let proc = Proc::of(i32::try_from(child.id()).unwrap()).expect("agent runs");
        env.track(proc);
        agents.push((child, stdin, proc));
    }
    let pids: std::collections::HashSet<i32> = agents.iter().map(|(_, _, proc)| proc.pid).collect();
    let one_each = wait_until(PATIENCE * 4, || {
        let sentinels = sentinels_of(env.state_dir());
        let watched: std::collections::HashSet<i32> =
            sentinels.iter().map(|(_, watched)| *watched).collect();
        sentinels.len() == AGENTS && watched == pids
    });
    let sentinels = sentinels_of(env.state_dir());
    let errors: Vec<Value> = env
        .events()
        .into_iter()
        .filter(|event| event["action"] == "hook" || event["action"] == "error")
        .collect();
    assert!(
        one_each,
        "{} sentinels for {AGENTS} agents; {} session starts; errors: {errors:#?}",
        sentinels.len(),
        env.events_where("session_start", None).len()
    );
    for (_, stdin, _) in &mut agents {
        stdin.take();
    }
    for (child, _, _) in &mut agents {
        let _ = child.wait();
    }
    assert!(
        wait_until(PATIENCE * 4, || sentinels_of(env.state_dir()).is_empty()),
        "{} sentinels left",
        sentinels_of(env.state_dir()).len()
    );
}

/// `reap --duplicates` keeps the newest `--resume` writer of a live session and stops the others.
#[test]
fn reap_duplicates_keeps_the_newest_writer() {
    let mut env = Env::new();
    let session = fresh_session("lo-dup");
    let payload = format!(r#"{{"session_id":"{session}","hook_event_name":"SessionStart"}}"#);
    HookTest::raw(payload.as_bytes())
        .args(&["--agent", "claude", "--sentinel", "off"])
        .run(&env);
    // Writers are agent processes: a `claude` (here python3 under that name) resuming the session.
    let claude = env.work.path().join("claude");
    std::os::unix::fs::symlink(crate::harness::python3(), &claude).expect("a claude executable");
    let writers: Vec<Proc> = (0..3)
        .map(|_| {
            let mut command = std::process::Command::new(&claude);
            command.args(["-c", "import time; time.sleep(600)", "--resume", &session]);
            env.spawn(command)
        })
        .collect();
    let dry = env.run(&["reap", "--duplicates", "--dry-run"]);
    assert!(stdout(&dry).contains("would stop"), "{}", stdout(&dry));
    assert!(writers.iter().all(|writer| writer.alive()));
    let out = env.run(&["reap", "--duplicates"]);
    assert!(out.status.success(), "{}", stdout(&out));
    assert!(writers[0].gone_within(PATIENCE) && writers[1].gone_within(PATIENCE));
    assert!(writers[2].alive(), "the newest writer stays");
    env.reap_children();
}

/// Clock ticks since boot now (the unit of a process's start time).
fn uptime_ticks() -> u64 {
    let uptime = std::fs::read_to_string("/proc/uptime").unwrap_or_default();
    let seconds: f64 = uptime
        .split_whitespace()
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0.0);
    // SAFETY: sysconf has no preconditions.
    let hertz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let ticks = (seconds * hertz as f64) as u64;
    ticks
}

/// The recorded agent's pid now belongs to another process (pid reuse, forged here by a start time that does not
/// match): the agent counts as gone, its session's leftovers are stopped by one sweep, and the process that holds
/// the pid now is never signalled.
#[test]
fn a_reused_agent_pid_is_never_signalled() {
    let mut env = Env::new();
    let session = fresh_session("lo-reuse");
    let impostor = env.sleeper();
    let payload = format!(r#"{{"session_id":"{session}","hook_event_name":"SessionStart"}}"#);
    HookTest::raw(payload.as_bytes())
        .args(&["--agent", "claude"])
        .no_sentinel()
        .owner(impostor)
        .run(&env);
    let path = env.state_dir().join(format!("sessions/{session}.json"));
    let mut record: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    record["agent_identity"]["start_ticks"] = (impostor.ticks - 1).into();
    std::fs::write(&path, serde_json::to_vec(&record).unwrap()).unwrap();
    let mut carrier = std::process::Command::new("sleep");
    carrier.arg("600").env("CLAUDE_CODE_SESSION_ID", &session);
    let carrier = env.spawn(carrier);
    let sweep = env.run(&["sweep"]);
    assert!(sweep.status.success(), "{}", stdout(&sweep));
    env.reap_children();
    assert!(carrier.gone_within(PATIENCE), "{}", stdout(&sweep));
    assert!(
        impostor.alive(),
        "the process that holds the pid now was signalled"
    );
}

/// An agent waits for EOF on what it gave its hook: the sentinel the hook starts keeps no inherited descriptor
/// (here a pipe on fd 5, not close-on-exec) and not the hook's stdout.
#[test]
fn the_sentinel_keeps_no_descriptor_of_the_hook() {
    use std::io::Read;
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let mut env = Env::new();
    let session = fresh_session("lo-fds");
    let agent = env.sleeper();
    let (mut reader, writer) = std::io::pipe().expect("a pipe");
    let payload = format!(r#"{{"session_id":"{session}","hook_event_name":"SessionStart"}}"#);
    let pid = agent.pid.to_string();
    let mut hook = env.cmd(&["hook", "--agent", "claude", "--owner-pid", &pid]);
    let raw = writer.as_raw_fd();
    // SAFETY: dup2 is async-signal-safe; the new fd 5 is not close-on-exec.
    unsafe {
        hook.pre_exec(move || {
            if libc::dup2(raw, 5) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = crate::harness::run_bounded(hook, Some(payload.as_bytes()));
    assert!(out.status.success() && out.stdout.is_empty(), "{out:?}");
    drop(writer);
    assert!(
        wait_until(PATIENCE, || sentinels_of(env.state_dir())
            .iter()
            .any(|(_, watched)| *watched == agent.pid)),
        "a sentinel watches the agent"
    );
    let (done, got) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut rest = Vec::new();
        let _ = reader.read_to_end(&mut rest);
        let _ = done.send(());
    });
    assert!(
        got.recv_timeout(PATIENCE).is_ok(),
        "fd 5 is still open in the sentinel: no EOF"
    );
}

/// Orders a stdio MCP server (a python3 that reads its stdin to EOF, then stays) that writes its pid to `<name>.pid`.
fn order_mcp_server(env: &Env, agent: &mut FakeAgent, name: &str) {
    agent.order(&format!(
        "mcp exec python3 -c 'import os, sys, time; open(\"{}\", \"w\").write(str(os.getpid())); sys.stdin.read(); time.sleep(600)'",
        env.work_path(&format!("{name}.pid"))
    ));
}

/// The MCP servers `status --json` lists under `session`: (pid, argv, rss).
fn mcp_servers_of(status: &Value, session: &str) -> Vec<(i64, Vec<String>, u64)> {
    let view = status["leftovers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|view| view["session"] == session)
        .unwrap_or_else(|| panic!("no view of {session}: {status}"));
    view["mcp_servers"]
        .as_array()
        .unwrap_or_else(|| panic!("no mcp_servers in {view}"))
        .iter()
        .map(|server| {
            (
                server["pid"].as_i64().unwrap(),
                serde_json::from_value(server["argv"].clone()).unwrap(),
                server["rss_kib"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// `status` lists, under each live session, the stdio MCP servers its agent process runs (pid, argv, RSS) — and not
/// the agent's shell-tool commands, nor another agent's server; human output and `--json` alike.
#[test]
fn status_lists_each_agents_mcp_servers_under_that_agent() {
    let mut env = Env::new();
    let (one, two) = (fresh_session("mcp-a"), fresh_session("mcp-b"));
    let mut first = env.fake_agent(&one, "CLAUDE_CODE_SESSION_ID", &["--agent", "claude"]);
    first.order("start");
    order_mcp_server(&env, &mut first, "server-a");
    // A shell-tool command of the same agent that runs a plain program: not a server.
    first.order(&format!(
        "run exec python3 -c 'import os, time; open(\"{}\", \"w\").write(str(os.getpid())); time.sleep(600)'",
        env.work_path("tool.pid")
    ));
    let mut second = env.fake_agent(&two, "CLAUDE_CODE_SESSION_ID", &["--agent", "claude"]);
    second.order("start");
    order_mcp_server(&env, &mut second, "server-b");
    let (server_a, tool, server_b) = (
        env.planted("server-a.pid"),
        env.planted("tool.pid"),
        env.planted("server-b.pid"),
    );

    let status = env.status();
    let under_one = mcp_servers_of(&status, &one);
    let under_two = mcp_servers_of(&status, &two);
    let pids = |servers: &[(i64, Vec<String>, u64)]| -> Vec<i64> {
        servers.iter().map(|(pid, _, _)| *pid).collect()
    };
    assert_eq!(pids(&under_one), [i64::from(server_a.pid)], "{status:#}");
    assert_eq!(pids(&under_two), [i64::from(server_b.pid)], "{status:#}");
    let (_, argv, rss_kib) = &under_one[0];
    assert!(
        argv.first()
            .is_some_and(|program| program.ends_with("python3"))
            && *rss_kib > 0,
        "{under_one:?}"
    );
    assert!(!pids(&under_one).contains(&i64::from(tool.pid)));

    // The human tree: each server on a row of its own agent's session, the tool command on none.
    let text = stdout(&env.run(&["status"]));
    let row = |pid: i32| format!("mcp server {pid}  `");
    let session_of_row = |pid: i32| -> Option<String> {
        let mut current = None;
        for line in text.lines() {
            if line.starts_with(&one) {
                current = Some(one.clone());
            } else if line.starts_with(&two) {
                current = Some(two.clone());
            } else if !line.starts_with(['│', '├', '└']) {
                current = None;
            }
            if line.contains(&row(pid)) {
                return current;
            }
        }
        None
    };
    assert_eq!(session_of_row(server_a.pid), Some(one.clone()), "{text}");
    assert_eq!(session_of_row(server_b.pid), Some(two.clone()), "{text}");
    assert_eq!(session_of_row(tool.pid), None, "{text}");
    first.exit();
    second.exit();
}
