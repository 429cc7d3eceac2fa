//! Belonging (DESIGN "Belonging", issue 18): what a session passes on is not what it owns. Each test sets up one
//! hostile or everyday scene for real — a daemon running the hook, a hook with only shells up to init in a private
//! pid namespace, a live agent offered as a broker, a kept process in a leftover's group, a deleted state root, a
//! crash then a resume by another agent, a fast forker, a tmux server shared with the user and a second agent —
//! and checks that nothing that was not the session's is ever stopped. Fresh random ids throughout.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{
    BIN, Env, PATIENCE, Proc, fresh_session, named_python, scrub_env, sentinels_of, stderr, stdout,
    unshare_pid_namespace, wait_until,
};
use crate::test_cgroup::TestCgroup;

/// How long "still running later" is watched for: long enough for a sentinel, a finisher and a grace to act.
const LATER: Duration = Duration::from_secs(3);

/// Every one of `procs` still runs after `LATER`, and at every look on the way.
fn all_run_later(procs: &[(&str, Proc)]) -> Result<(), String> {
    let until = Instant::now() + LATER;
    while Instant::now() < until {
        if let Some((name, proc)) = procs.iter().find(|(_, proc)| !proc.alive()) {
            return Err(format!("{name} (pid {}) was stopped", proc.pid));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// The pid a planted command wrote to `name`, its process tracked (killed with the test).
fn planted(env: &mut Env, name: &str) -> Proc {
    env.planted(name)
}

/// A daemon (double-forked, `setsid`, reparented away from the test) that starts a worker, runs the `SessionStart`
/// hook with `flags` and the default settings, starts a second worker and exits: the shape of issue 18's first
/// finding. Returns the two workers.
fn daemon_runs_the_hook(
    env: &mut Env,
    session: &str,
    flags: &[&str],
    tag: &str,
) -> Vec<(&'static str, Proc)> {
    let daemon = named_python(env, "reaperd");
    let script = r#"
import json, os, subprocess, sys
binary, state, session, tag = sys.argv[1:5]
flags = sys.argv[5:]
first = subprocess.Popen(["sleep", "600"])
open(tag + ".first", "w").write(str(first.pid))
payload = json.dumps({"session_id": session, "hook_event_name": "SessionStart", "cwd": os.getcwd(), "source": "startup"})
subprocess.run([binary, "--state-dir", state, "hook", "--deadline", "10s", *flags], input=payload.encode(), timeout=60)
second = subprocess.Popen(["sleep", "600"])
open(tag + ".second", "w").write(str(second.pid))
open(tag + ".daemon", "w").write(str(os.getpid()))
"#;
    let line = format!(
        "{} -c '{}' {} {} {} {} {} &",
        daemon.display(),
        script.replace('\'', r"'\''"),
        BIN,
        env.state_dir().display(),
        session,
        env.work_path(tag),
        flags.join(" ")
    );
    let mut command = Command::new("setsid");
    command
        .args(["sh", "-c", &line])
        .current_dir(env.work.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    scrub_env(&mut command);
    let status = command.status().expect("start the daemon");
    assert!(status.success(), "the daemon's launcher failed");
    let first = planted(env, &format!("{tag}.first"));
    let second = planted(env, &format!("{tag}.second"));
    let daemon = planted(env, &format!("{tag}.daemon"));
    assert!(daemon.gone_within(PATIENCE), "the daemon exits");
    vec![
        ("worker started before the hook", first),
        ("worker started after the hook", second),
    ]
}

#[test]
fn a_setsid_daemon_running_session_start_gets_no_agent_powers() {
    let mut env = Env::new();
    for (tag, flags) in [("plain", vec![]), ("narrowed", vec!["--agent", "gemini"])] {
        let session = fresh_session("bl-daemon");
        let workers = daemon_runs_the_hook(&mut env, &session, &flags, tag);
        let record = env
            .session_record(&session)
            .expect("the session is recorded");
        assert!(
            record["agent_identity"].is_null(),
            "{tag}: a daemon is no agent: {record}"
        );
        assert!(
            record["leftovers"].get("agent_pgid").is_none(),
            "{tag}: no group: {record}"
        );
        assert!(
            record["leftovers"].get("descendants").is_none(),
            "{tag}: no descendants: {record}"
        );
        assert!(
            sentinels_of(env.state_dir()).is_empty(),
            "{tag}: no sentinel"
        );
        all_run_later(&workers).unwrap_or_else(|err| panic!("{tag}: {err}"));
        let sweep = env.run(&["sweep"]);
        assert!(sweep.status.success(), "{}", stderr(&sweep));
        all_run_later(&workers).unwrap_or_else(|err| panic!("{tag} after a sweep: {err}"));
    }
}

/// An agent the agents table does not know runs its `SessionStart` hook through a launcher that forks (the hook runs
/// in the launcher's child, the launcher waits and exits): neither the launcher nor the unknown agent is taken as
/// the session's agent, so the launcher's exit ends nothing and the agent and its worker run on.
#[test]
fn a_forking_launcher_under_an_unknown_agent_is_never_taken_as_the_agent() {
    let mut env = Env::new();
    let session = fresh_session("bl-launcher");
    let agent = named_python(&env, "mycoder");
    let launcher = named_python(&env, "hooklauncher");
    let script = r#"
import json, os, subprocess, sys, time
binary, state, session, launcher, tag = sys.argv[1:6]
worker = subprocess.Popen(["sleep", "600"])
open(tag + ".worker", "w").write(str(worker.pid))
fork = "import os, subprocess, sys\npid = os.fork()\nif pid == 0:\n    subprocess.run(sys.argv[1:], input=sys.stdin.buffer.read(), timeout=60)\n    os._exit(0)\nos.waitpid(pid, 0)\n"
payload = json.dumps({"session_id": session, "hook_event_name": "SessionStart", "cwd": os.getcwd(), "source": "startup"})
subprocess.run([launcher, "-c", fork, binary, "--state-dir", state, "hook", "--deadline", "10s"], input=payload.encode(), timeout=60)
open(tag + ".agent", "w").write(str(os.getpid()))
time.sleep(600)
"#;
    let mut command = Command::new(&agent);
    command
        .args(["-c", script, BIN])
        .arg(env.state_dir())
        .args([
            &session,
            &launcher.to_string_lossy().into_owned(),
            &env.work_path("scene"),
        ])
        .current_dir(env.work.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    scrub_env(&mut command);
    env.spawn(command);
    let worker = planted(&mut env, "scene.worker");
    let agent = planted(&mut env, "scene.agent");
    let record = env
        .session_record(&session)
        .expect("the session is recorded");
    assert!(
        record["agent_identity"].is_null(),
        "neither the launcher nor an unknown agent is the agent: {record}"
    );
    assert!(sentinels_of(env.state_dir()).is_empty(), "no sentinel");
    let scene = [("the unknown agent", agent), ("its worker", worker)];
    all_run_later(&scene).unwrap();
    let sweep = env.run(&["sweep"]);
    assert!(sweep.status.success(), "{}", stderr(&sweep));
    all_run_later(&scene).unwrap_or_else(|err| panic!("after a sweep: {err}"));
}

/// A hook run by a script where every ancestor up to pid 1 is a shell, a wrapper or some other program — here
/// pid 1 of a private pid namespace, a python3 standing in for init — takes no agent; `CLAUDE_PID=1` and
/// `CLAUDE_PID=<the wrapper shell>` are claims it does not believe.
#[test]
fn a_hook_under_shells_up_to_init_in_a_pid_namespace_has_no_agent() {
    let env = Env::new();
    let sessions: Vec<String> = (0..3).map(|_| fresh_session("bl-ns")).collect();
    let payload = |session: &str| {
        format!(
            r#"{{"session_id":"{session}","hook_event_name":"SessionStart","cwd":"/tmp","source":"startup"}}"#
        )
    };
    let hook = format!(
        "{BIN} --state-dir {} hook --deadline 10s",
        env.state_dir().display()
    );
    let mut lines = Vec::new();
    for (index, session) in sessions.iter().enumerate() {
        let file = env.work.path().join(format!("payload-{index}"));
        std::fs::write(&file, payload(session)).unwrap();
        let claim = match index {
            0 => String::new(),
            1 => "CLAUDE_PID=1 ".to_owned(),
            _ => "CLAUDE_PID=$$ ".to_owned(),
        };
        // `; true`: the shell stays (no exec of its last command), so that `$$` names a live wrapper.
        lines.push(format!(
            "sh -c '{claim}timeout 30 {hook} < {}; true'",
            file.display()
        ));
    }
    let init = "import subprocess, sys\nfor line in sys.argv[1:]:\n    subprocess.run(['sh', '-c', line])\n";
    let mut command = unshare_pid_namespace();
    command.args(["python3", "-c", init]).args(&lines);
    scrub_env(&mut command);
    let out = crate::harness::run_bounded(command, None);
    assert!(
        out.status.success(),
        "the private pid namespace could not be made (unshare --pid --fork --mount-proc): {}",
        stderr(&out)
    );
    for (index, session) in sessions.iter().enumerate() {
        let record = env
            .session_record(session)
            .unwrap_or_else(|| panic!("hook {index} recorded no session: {}", stderr(&out)));
        assert!(
            record["agent_identity"].is_null(),
            "hook {index}: no agent: {record}"
        );
    }
    assert!(sentinels_of(env.state_dir()).is_empty(), "no sentinel");
}

#[test]
fn broker_register_refuses_a_live_sessions_agent_and_says_adopted_for_what_it_adopts() {
    let mut env = Env::new();
    let ws = env.workspace("app");
    let session = fresh_session("bl-reg");
    let mut agent = env.fake_agent(&session, "CLAUDE_CODE_SESSION_ID", &["--agent", "claude"]);
    agent.order("start");
    let pid = agent.proc.pid.to_string();
    let out = env.run(&[
        "broker",
        "register",
        "--pid",
        &pid,
        "--cwd",
        ws.to_str().unwrap(),
        "--no-owner",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!("agent process of live session {session}")),
        "names why: {}",
        stderr(&out)
    );
    assert!(env.records().is_empty(), "nothing recorded");
    assert!(agent.proc.alive());
    // A process started elsewhere is adopted, never "started".
    let sleeper = env.sleeper();
    let out = env.run_command(env.cmd_as_typed(&[
        "broker",
        "register",
        "--pid",
        &sleeper.pid.to_string(),
        "--cwd",
        ws.to_str().unwrap(),
        "--no-owner",
    ]));
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).starts_with("adopted broker"),
        "{}",
        stdout(&out)
    );
}

/// A leftover that leads a process group holding a process marked `SESSION_REAPER_KEEP=1`: the leader stops,
/// the kept member runs on (no group expansion).
#[test]
fn a_leftovers_stop_never_reaches_a_kept_member_of_its_group() {
    let mut env = Env::new();
    let session = fresh_session("bl-keep");
    let mut agent = env.fake_agent(&session, "CLAUDE_CODE_SESSION_ID", &["--agent", "claude"]);
    agent.order("start");
    agent.order(&format!(
        "run (setsid sh -c 'echo $$ > {}; SESSION_REAPER_KEEP=1 sleep 600 & echo $! > {}; sleep 600 & echo $! > {}; wait' &)",
        env.work_path("leader.pid"),
        env.work_path("kept.pid"),
        env.work_path("member.pid"),
    ));
    let leader = env.planted("leader.pid");
    let kept = env.planted("kept.pid");
    let member = env.planted("member.pid");
    assert_eq!(
        group_of(kept),
        leader.pid,
        "the kept process is in the leader's group"
    );
    agent.exit();
    assert!(leader.gone_within(PATIENCE), "the leader is a leftover");
    assert!(member.gone_within(PATIENCE), "its plain child is one too");
    all_run_later(&[("kept member", kept)]).unwrap();
}

/// A leftover whose child was marked with `keep --pid` after it started: the stop's walk of the leftover's tree
/// honours the mark as discovery does — the leader stops, the marked child (and what it started) runs on.
#[test]
fn a_leftovers_stop_never_reaches_a_child_marked_with_keep_pid() {
    let mut env = Env::new();
    let session = fresh_session("bl-keep-pid");
    let mut agent = env.fake_agent(&session, "CLAUDE_CODE_SESSION_ID", &["--agent", "claude"]);
    agent.order("start");
    agent.order(&format!(
        "run (setsid sh -c 'echo $$ > {}; sh -c \"sleep 600 & echo \\$! > {}; wait\" & echo $! > {}; wait' &)",
        env.work_path("leader.pid"),
        env.work_path("grandchild.pid"),
        env.work_path("marked.pid"),
    ));
    let leader = env.planted("leader.pid");
    let marked = env.planted("marked.pid");
    let below = env.planted("grandchild.pid");
    let out = env.run(&["keep", "--pid", &marked.pid.to_string()]);
    assert!(out.status.success(), "keep --pid: {}", stderr(&out));
    agent.exit();
    assert!(leader.gone_within(PATIENCE), "the leader is a leftover");
    all_run_later(&[("the marked child", marked), ("what it started", below)])
        .unwrap_or_else(|err| panic!("{err}: {:#?}", env.events()));
}

fn group_of(proc: Proc) -> i32 {
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", proc.pid)).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    after.split(' ').nth(2).unwrap().parse().unwrap()
}

#[test]
fn deleting_or_renaming_a_state_root_ends_its_sentinel_within_a_second() {
    for how in ["rm -rf", "mv"] {
        let mut env = Env::new();
        let session = fresh_session("bl-rm");
        let mut agent = env.fake_agent(&session, "CLAUDE_CODE_SESSION_ID", &["--agent", "claude"]);
        agent.order("start");
        let watching = || {
            sentinels_of(env.state_dir())
                .iter()
                .any(|(_, watched)| *watched == agent.proc.pid)
        };
        assert!(
            wait_until(PATIENCE, watching),
            "{how}: a sentinel watches the agent"
        );
        let sentinel = sentinels_of(env.state_dir())[0].0;
        let sentinel = Proc::of(sentinel).expect("the sentinel runs");
        env.track(sentinel);
        // Settled: it holds its lock (and writes its pid into it) before it waits.
        let locks = env.state_dir().join("sentinels");
        let holding = wait_until(PATIENCE, || {
            std::fs::read_dir(&locks)
                .into_iter()
                .flatten()
                .flatten()
                .any(|entry| {
                    std::fs::read_to_string(entry.path())
                        .is_ok_and(|text| text.trim() == sentinel.pid.to_string())
                })
        });
        assert!(holding, "{how}: the sentinel holds its lock");
        let moved = env.state_dir().with_extension("moved");
        let done = if how == "mv" {
            std::fs::rename(env.state_dir(), &moved).is_ok()
        } else {
            Command::new("rm")
                .arg("-rf")
                .arg(env.state_dir())
                .status()
                .unwrap()
                .success()
        };
        assert!(done, "{how} of the state root");
        let started = Instant::now();
        let gone = sentinel.gone_within(Duration::from_secs(1));
        eprintln!(
            "sentinel gone {:?} after {how} of its state root",
            started.elapsed()
        );
        let _ = std::fs::remove_dir_all(&moved);
        assert!(
            gone,
            "the sentinel still runs {:?} after {how} of its state root",
            started.elapsed()
        );
    }
}

/// Sentinel off: agent A crashes (SIGKILL, no hook) leaving a daemon; agent B resumes the session, ends it
/// cleanly and exits; one sweep stops A's daemon — a resume adds an agent to the session, it never erases one.
#[test]
fn a_crash_then_a_resume_by_another_agent_keeps_the_crashed_agents_leftovers_stoppable() {
    let mut env = Env::new();
    let session = fresh_session("bl-resume");
    let flags = [
        "--agent",
        "claude",
        "--sentinel",
        "off",
        "--agent-exit-wait",
        "1s",
    ];
    let mut crashed = env.fake_agent(&session, "CLAUDE_CODE_SESSION_ID", &flags);
    crashed.order("start");
    crashed.order(&format!(
        "run (setsid sh -c 'echo $$ > {}; exec sleep 600' &)",
        env.work_path("crashed-daemon.pid")
    ));
    let daemon = env.planted("crashed-daemon.pid");
    crashed.kill();
    let mut resumed = env.fake_agent(&session, "CLAUDE_CODE_SESSION_ID", &flags);
    resumed.order("start");
    let record = env.session_record(&session).unwrap();
    assert_eq!(record["agent_identity"]["pid"], resumed.proc.pid);
    let earlier = record["leftovers"]["earlier_agents"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        earlier
            .iter()
            .any(|agent| agent["identity"]["pid"] == crashed.proc.pid),
        "the crashed agent is remembered: {record}"
    );
    resumed.order("end other");
    resumed.exit();
    let sweep = env.run(&["sweep"]);
    assert!(sweep.status.success(), "{}", stderr(&sweep));
    assert!(
        daemon.gone_within(PATIENCE),
        "the crashed agent's daemon is stopped: {:#?}",
        env.events()
    );
}

/// A leftover whose tree forks every 2 ms inside a private pid namespace (under `ulimit -u`): the stop ends
/// within its deadline, says how many processes it could not stop yet, and keeps the ticket; the next sweep (or
/// the finisher it hands on to) finishes it.
#[test]
fn a_fast_forker_is_reported_then_finished() {
    let mut env = Env::new();
    let session = fresh_session("bl-fork");
    let mut agent = env.fake_agent(
        &session,
        "CLAUDE_CODE_SESSION_ID",
        &["--agent", "claude", "--sentinel", "off"],
    );
    agent.order("start");
    // The namespace's init ignores SIGTERM (and, as a namespace's init, anything it has no handler for): only
    // SIGKILL, after the grace, ends it and everything in it.
    let forker =
        "ulimit -u 400 2>/dev/null; trap \"\" TERM; while :; do sleep 0.3 & sleep 0.002; done";
    agent.order(&format!(
        "run (setsid unshare --pid --fork --mount-proc sh -c '{forker}' & echo $! > {}) ",
        env.work_path("forker.pid")
    ));
    let unshare = env.planted("forker.pid");
    let init_of_namespace = || -> Option<Proc> {
        let children =
            std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", unshare.pid)).ok()?;
        children
            .split_whitespace()
            .next()?
            .parse()
            .ok()
            .and_then(Proc::of)
    };
    assert!(
        wait_until(PATIENCE, || init_of_namespace().is_some()),
        "the private pid namespace could not be made (unshare --pid --fork --mount-proc)"
    );
    let init = init_of_namespace().unwrap();
    env.track(init);
    // Forking: more than one process in the namespace's tree.
    assert!(wait_until(PATIENCE, || std::fs::read_to_string(format!(
        "/proc/{0}/task/{0}/children",
        init.pid
    ))
    .is_ok_and(|children| children.split_whitespace().count() > 3)));
    agent.kill();
    let started = Instant::now();
    let out = env.run(&["sweep", "--json"]);
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(3 + 10),
        "the sweep's stop took {took:?}"
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    let text = format!("{}{}", stdout(&out), stderr(&out));
    assert!(
        init.alive(),
        "the namespace's init outlives SIGTERM and the sweep's deadline: {text}"
    );
    let not_stopped: Vec<u64> = report["stops"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|stop| stop["outcome"]["result"] == "pending")
        .filter_map(|stop| stop["outcome"]["running"].as_u64())
        .collect();
    eprintln!("the sweep's stop took {took:?}; could not stop yet: {not_stopped:?}");
    assert!(
        not_stopped.iter().any(|running| *running > 0),
        "the sweep reports how many it could not stop: {text}"
    );
    // The next sweep (or the finisher the first one handed on to) finishes it.
    let finished = wait_until(PATIENCE * 2, || {
        let _ = env.run(&["sweep"]);
        !init.alive() && !unshare.alive()
    });
    assert!(
        finished,
        "the forker outlived the next sweeps: {:#?}",
        env.events()
    );
}

// ---- A tmux server a tool started: shared with the user and a second agent, or forgotten ----

/// The children of a process, by `/proc/<pid>/task/<pid>/children`.
fn children_of(proc: Proc) -> Vec<Proc> {
    std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", proc.pid))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|pid| pid.parse().ok())
        .filter_map(Proc::of)
        .collect()
}

/// The tmux server listening on `socket` (its argv names the socket: `tmux -S <socket> …`).
fn tmux_server(socket: &std::path::Path) -> Option<Proc> {
    crate::harness::naming(socket).into_iter().find(|proc| {
        std::fs::read_to_string(format!("/proc/{}/comm", proc.pid))
            .is_ok_and(|comm| comm.trim() == "tmux: server")
    })
}

/// `tmux -S socket ARGS` from a clean environment (a person's terminal, not the agent's tool).
fn tmux_clean(socket: &std::path::Path, args: &[&str]) {
    let mut command = Command::new("env");
    command
        .args([
            "-i",
            "PATH=/usr/local/bin:/usr/bin:/bin",
            "SHELL=/bin/sh",
            "tmux",
            "-S",
        ])
        .arg(socket)
        .args(args)
        .stdin(Stdio::null());
    let out = crate::harness::run_bounded(command, None);
    assert!(
        out.status.success(),
        "tmux {args:?} failed (is tmux installed? .ci/run installs it): {}",
        stderr(&out)
    );
}

/// Agent S's tool starts a tmux server for its dev server (`tmux new-session -d -s dev …`): the server and every
/// window opened in it later carry S's variables. Returns the socket, the server and the dev server.
fn tool_starts_tmux(
    env: &mut Env,
    agent: &mut crate::harness::FakeAgent,
) -> (std::path::PathBuf, Proc, Proc) {
    let socket = env.work.path().join("tmux.sock");
    agent.order(&format!(
        "run tmux -S {} new-session -d -s dev \"sh -c 'echo \\$\\$ > {}; exec sleep 600'\"",
        socket.display(),
        env.work_path("dev.pid")
    ));
    let dev = env.planted("dev.pid");
    let mut server = None;
    assert!(
        wait_until(PATIENCE, || {
            server = tmux_server(&socket);
            server.is_some()
        }),
        "no tmux server on {} (is tmux installed? .ci/run installs it)",
        socket.display()
    );
    let server = server.unwrap();
    env.track(server);
    (socket, server, dev)
}

/// A second agent T, run by the user in a window of the shared server: it inherits S's variables from tmux, runs
/// its own `SessionStart` as session `t_session`, and starts two tools (one naming T, one with what it inherited).
fn second_agent_in_a_window(
    env: &mut Env,
    socket: &std::path::Path,
    t_session: &str,
) -> (Proc, Vec<Proc>) {
    let script = env.work.path().join("t_agent.py");
    std::fs::write(
        &script,
        r#"
import json, os, subprocess, sys, time
binary, state, session, work = sys.argv[1:5]
own = dict(os.environ, CLAUDE_CODE_SESSION_ID=session, CLAUDE_PID=str(os.getpid()))
payload = json.dumps({"session_id": session, "hook_event_name": "SessionStart", "cwd": work, "source": "startup"})
subprocess.run(["sh", "-c", binary + " --state-dir " + state + " hook --agent claude --deadline 10s"],
               input=payload.encode(), env=own, start_new_session=True, timeout=60)
tool = subprocess.Popen(["sleep", "600"], env=own)
inherited = subprocess.Popen(["sleep", "601"])
open(os.path.join(work, "t.pids.tmp"), "w").write("%d %d %d" % (os.getpid(), tool.pid, inherited.pid))
os.rename(os.path.join(work, "t.pids.tmp"), os.path.join(work, "t.pids"))
time.sleep(600)
"#,
    )
    .unwrap();
    let claude = named_python(env, "claude");
    let command = format!(
        "{} {} {} {} {} {}",
        claude.display(),
        script.display(),
        BIN,
        env.state_dir().display(),
        t_session,
        env.work.path().display()
    );
    // Opened by the user from their own terminal: tmux gives the window the server's (S's) environment.
    tmux_clean(socket, &["new-window", "-t", "dev", &command]);
    let pids = env.work.path().join("t.pids");
    assert!(
        wait_until(PATIENCE, || pids.exists()),
        "agent T started in its window"
    );
    let procs: Vec<Proc> = std::fs::read_to_string(&pids)
        .unwrap()
        .split_whitespace()
        .map(|pid| Proc::of(pid.parse().unwrap()).expect("T's process runs"))
        .collect();
    for proc in &procs {
        env.track(*proc);
    }
    (procs[0], procs[1..].to_vec())
}

#[test]
fn a_tmux_server_shared_with_the_user_and_a_second_agent_is_never_stopped() {
    tmux_scene(None);
}

/// The same scene with containment on (issue 19): the tmux server, the user's window and agent T were all forked
/// inside S's cgroup, so S's cgroup holds them when S is gone; every belonging rule still spares them.
#[test]
fn a_tmux_server_shared_with_the_user_and_a_second_agent_is_never_stopped_with_containment_on() {
    let cgroup = TestCgroup::new().expect("containment needs a test cgroup here (cgroup v2, root)");
    tmux_scene(Some(&cgroup));
}

/// Agent S's tool starts a tmux server; the user opens a window from a clean terminal and starts a second agent T
/// in another window; S exits. With `cgroup`, S (and everything it starts) is contained under the test's parent.
fn tmux_scene(cgroup: Option<&TestCgroup>) {
    let mut env = Env::new();
    let s_session = fresh_session("bl-tmux-s");
    let t_session = fresh_session("bl-tmux-t");
    let hook_flags = ["--agent", "claude"];
    let mut s_agent = match cgroup {
        None => env.fake_agent(&s_session, "CLAUDE_CODE_SESSION_ID", &hook_flags),
        Some(cgroup) => {
            let entries = cgroup.env();
            let extra: Vec<(&str, &str)> = entries.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let claude = named_python(&env, "claude");
            env.fake_agent_as(
                &claude,
                &s_session,
                "CLAUDE_CODE_SESSION_ID",
                &hook_flags,
                &extra,
            )
        }
    };
    s_agent.order("start");
    if let Some(cgroup) = cgroup {
        assert!(
            wait_until(PATIENCE, || cgroup.holds(s_agent.proc.pid, "agent-")),
            "S is in a cgroup of its own: {:?}",
            TestCgroup::cgroup_of(s_agent.proc.pid)
        );
    }
    let (socket, server, dev) = tool_starts_tmux(&mut env, &mut s_agent);
    // The user's window, opened from a clean terminal: an interactive login shell.
    tmux_clean(&socket, &["new-window", "-t", "dev"]);
    assert!(
        wait_until(PATIENCE, || children_of(server).len() >= 2),
        "the user's window opened"
    );
    let user_window = children_of(server)
        .into_iter()
        .find(|proc| *proc != dev)
        .expect("the user's window");
    let (t_agent, t_tools) = second_agent_in_a_window(&mut env, &socket, &t_session);
    let record = env
        .session_record(&t_session)
        .expect("T's session is recorded");
    assert_eq!(record["agent_identity"]["pid"], t_agent.pid, "{record}");
    // While S lives, `status` shows the server as S's carrier spared, not as a leftover-to-be.
    let status = env.status();
    let view = status["leftovers"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|view| view["session"] == s_session.as_str())
        .cloned()
        .unwrap_or_default();
    let pids = |key: &str| -> Vec<Value> {
        view[key]
            .as_array()
            .into_iter()
            .flatten()
            .map(|leftover| leftover["pid"].clone())
            .collect()
    };
    assert!(pids("spared").contains(&server.pid.into()), "{view:#}");
    assert!(!pids("leftovers").contains(&server.pid.into()), "{view:#}");

    s_agent.exit();
    // S's sentinel does its work: S's session ends.
    assert!(
        wait_until(PATIENCE, || env
            .session_record(&s_session)
            .is_some_and(|record| record["ended_at"].is_string())),
        "S's session ends once S is gone"
    );
    let mut running = vec![
        ("the tmux server", server),
        ("the user's window", user_window),
        ("the dev server in S's window", dev),
        ("agent T", t_agent),
    ];
    running.extend(t_tools.iter().map(|proc| ("T's tool", *proc)));
    all_run_later(&running).unwrap_or_else(|err| panic!("{err}: {:#?}", env.events()));
    let status = env.status();
    for view in status["leftovers"].as_array().into_iter().flatten() {
        for leftover in view["leftovers"].as_array().into_iter().flatten() {
            assert_ne!(
                leftover["pid"], t_agent.pid,
                "T's agent listed as a leftover of {}",
                view["session"]
            );
        }
    }
    let spared = env.events_where("leftover", Some("leftover"));
    assert!(
        spared
            .iter()
            .any(|event| event["result"] == "spared" && event["pid"] == server.pid),
        "the server in use is reported: {spared:#?}"
    );
}

#[test]
fn a_detached_tmux_server_nobody_uses_goes_with_its_session() {
    let mut env = Env::new();
    let session = fresh_session("bl-tmux-alone");
    let mut agent = env.fake_agent(&session, "CLAUDE_CODE_SESSION_ID", &["--agent", "claude"]);
    agent.order("start");
    let (_socket, server, dev) = tool_starts_tmux(&mut env, &mut agent);
    agent.exit();
    assert!(
        server.gone_within(PATIENCE),
        "the forgotten tmux server is a leftover: {:#?}",
        env.events()
    );
    assert!(dev.gone_within(PATIENCE), "and its dev server with it");
}

// ---- The low items ----

/// A process that copied a live broker's lineage token without descending from it is a look-alike: the broker's
/// stop never reaches it.
#[test]
fn a_copied_lineage_token_is_no_member() {
    let mut env = Env::new();
    let ws = env.workspace("app");
    let session = fresh_session("bl-token");
    let (broker, record) = env.spawn_broker_with(&ws, &session, &[], &["sleep", "600"]);
    env.track(broker);
    let token = record["lineage"]
        .as_str()
        .expect("a lineage token")
        .to_owned();
    let mut copy = Command::new("sleep");
    copy.arg("600")
        .env("SESSION_REAPER_LINEAGE", &token)
        .env("SESSION_REAPER_BROKER", format!("{}/default", ws.display()))
        .env("SESSION_REAPER_STATE_ROOT", env.state_dir());
    let look_alike = env.spawn(copy);
    let out = env.run(&["reap", "--session", &session, "--force"]);
    let stopped = broker.gone_within(PATIENCE);
    assert!(
        stopped,
        "the broker is stopped: {}{}",
        stdout(&out),
        stderr(&out)
    );
    all_run_later(&[("the look-alike", look_alike)]).unwrap();
}

/// Refusals name what is wrong and never advise removing what is not ours.
#[test]
fn refusals_never_advise_removing_what_is_not_ours() {
    let mut env = Env::new();
    let ws = env.workspace("app");
    let out = env.run(&[
        "broker",
        "spawn",
        "--cwd",
        ws.to_str().unwrap(),
        "--no-owner",
        "--log",
        "/dev/null",
        "--",
        "sleep",
        "600",
    ]);
    let text = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{text}{}", stdout(&out));
    assert!(
        text.contains("/dev/null") && !text.contains("remove it"),
        "{text}"
    );
    // A state root that is some other program's directory: a socket in a subdirectory.
    let foreign = env.work.path().join("shared-tmp");
    std::fs::create_dir_all(foreign.join("stopping")).unwrap();
    let socket = foreign.join("stopping").join("agent.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let mut command = Command::new(BIN);
    command.arg("--state-dir").arg(&foreign).arg("sweep");
    scrub_env(&mut command);
    let out = crate::harness::run_bounded(command, None);
    let text = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(
        text.contains("agent.sock") && !text.contains("remove it"),
        "{text}"
    );
    assert!(socket.exists(), "left alone");
}

/// A stop ticket owned by another user is seen by `doctor` and `sweep` (and left alone); the lock of a ticket that
/// is gone does not outlive it.
#[test]
fn a_foreign_ticket_is_reported_and_a_gone_tickets_lock_is_removed() {
    let mut env = Env::new();
    let stopping = env.state_dir().join("stopping");
    std::fs::create_dir_all(&stopping).unwrap();
    let ticket = stopping.join("b-1-2.json");
    std::fs::write(&ticket, r#"{"version":1,"identity":{"boot_id":"b","pid":2,"start_ticks":2,"uid":65534},"reason":"manual","requested_at":"2026-01-01T00:00:00Z","grace_ms":5000,"attempts":0,"origin":"manual"}"#).unwrap();
    let chowned = Command::new("chown")
        .args(["65534:65534"])
        .arg(&ticket)
        .status()
        .unwrap();
    assert!(
        chowned.success(),
        "chown to another user (tests run as root)"
    );
    let orphan_lock = stopping.join("gone-3-4.lock");
    std::fs::write(&orphan_lock, b"").unwrap();
    let doctor = env.run(&["doctor", "--json"]);
    assert!(
        stdout(&doctor).contains("b-1-2.json"),
        "doctor names the foreign ticket: {}",
        stdout(&doctor)
    );
    let sweep = env.run(&["sweep"]);
    let text = format!("{}{}", stdout(&sweep), stderr(&sweep));
    assert!(text.contains("b-1-2.json"), "the sweep names it: {text}");
    assert!(ticket.exists(), "left alone");
    assert!(
        !orphan_lock.exists(),
        "the gone ticket's lock is removed: {text}"
    );
}

/// A tmux server S's tool started, with a person's client attached (a terminal running `tmux attach`): reported,
/// never stopped, with its windows.
#[test]
fn a_tmux_server_with_an_attached_client_is_never_stopped() {
    let mut env = Env::new();
    let session = fresh_session("bl-tmux-attached");
    let mut agent = env.fake_agent(&session, "CLAUDE_CODE_SESSION_ID", &["--agent", "claude"]);
    agent.order("start");
    let (socket, server, dev) = tool_starts_tmux(&mut env, &mut agent);
    // A terminal (a pty from `script`) attached to the server, from a clean environment.
    let mut terminal = Command::new("sh");
    terminal
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("TERM", "xterm")
        .arg("-c")
        // `script`'s stdin stays open (a pipe from a sleeper): a terminal nobody types in, not one that closed.
        .arg(format!(
            "sleep 600 | script -qc 'tmux -S {} attach -t dev' /dev/null",
            socket.display()
        ))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let terminal = env.spawn(terminal);
    let attached = wait_until(PATIENCE, || {
        crate::harness::naming(&socket).into_iter().any(|proc| {
            std::fs::read_to_string(format!("/proc/{}/comm", proc.pid))
                .is_ok_and(|comm| comm.trim() == "tmux: client")
        })
    });
    assert!(
        attached,
        "no tmux client attached (script and tmux are needed)"
    );
    agent.exit();
    assert!(
        wait_until(PATIENCE, || env
            .session_record(&session)
            .is_some_and(|record| record["ended_at"].is_string())),
        "the session ends once its agent is gone"
    );
    all_run_later(&[
        ("the tmux server", server),
        ("its dev server", dev),
        ("the terminal", terminal),
    ])
    .unwrap_or_else(|err| panic!("{err}: {:#?}", env.events()));
}

/// `sweep --dry-run` lists exactly what the real sweep signals: a leftover, its child that scrubbed the session
/// variable (its stop reaches it), not its kept child.
#[test]
fn a_dry_run_lists_exactly_what_the_real_run_signals() {
    let mut env = Env::new();
    let session = fresh_session("bl-dry");
    let mut agent = env.fake_agent(
        &session,
        "CLAUDE_CODE_SESSION_ID",
        &["--agent", "claude", "--sentinel", "off"],
    );
    agent.order("start");
    agent.order(&format!(
        "run (setsid sh -c 'echo $$ > {}; env -u CLAUDE_CODE_SESSION_ID -u CLAUDE_PID sleep 600 & echo $! > {}; SESSION_REAPER_KEEP=1 sleep 600 & echo $! > {}; wait' &)",
        env.work_path("leader.pid"),
        env.work_path("scrubbed.pid"),
        env.work_path("kept.pid"),
    ));
    let leader = env.planted("leader.pid");
    let scrubbed = env.planted("scrubbed.pid");
    let kept = env.planted("kept.pid");
    agent.kill();
    let pids_of = |value: &Value, key: &str| -> Vec<i64> {
        let mut pids: Vec<i64> = value[key]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|entry| {
                entry["reason"] == "leftover" || entry["ticket"]["reason"] == "leftover"
            })
            .flat_map(|entry| {
                let ticket = &entry["ticket"];
                std::iter::once(
                    entry["pid"]
                        .as_i64()
                        .or_else(|| ticket["identity"]["pid"].as_i64()),
                )
                .chain(
                    ticket["members"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|member| member["pid"].as_i64()),
                )
                .flatten()
                .collect::<Vec<_>>()
            })
            .collect();
        pids.sort_unstable();
        pids.dedup();
        pids
    };
    let dry = env.run(&["sweep", "--dry-run", "--json"]);
    let dry: Value = serde_json::from_slice(&dry.stdout).expect("dry-run JSON");
    let listed = pids_of(&dry, "actions");
    let real = env.run(&["sweep", "--json"]);
    let real: Value = serde_json::from_slice(&real.stdout).expect("sweep JSON");
    let signalled = pids_of(&real, "stops");
    let expected = vec![i64::from(leader.pid), i64::from(scrubbed.pid)];
    assert_eq!(
        listed, expected,
        "the dry run lists the leftover and its tree: {dry:#}"
    );
    assert_eq!(signalled, expected, "the real run signals those: {real:#}");
    assert!(leader.gone_within(PATIENCE) && scrubbed.gone_within(PATIENCE));
    all_run_later(&[("the kept child", kept)]).unwrap();
}
