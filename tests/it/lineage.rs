//! Process lineage (DESIGN "Process lineage", issue 9): a broker's whole tree is stopped and nothing else — escaped
//! children, pid reuse in a private pid namespace, look-alike resume commands, thread ids, forking wrappers around
//! the hook, pids of another pid namespace. Each test is named after the defect it guards.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::{Value, json};

use crate::harness::{
    BIN, Env, PATIENCE, Proc, marked_with_state_root, named_program, named_python, python3,
    run_bounded, scrub_env, stderr, stdout, wait_until,
};
use crate::sweep::{actions, hook, start_session, sweep, unique_id};

/// A broker that starts one child in each escape shape and writes their pids (one a line) to the file named by
/// its first argument: `setsid` (a new session), `setpgrp` (a new group, still in the broker's session), a double
/// fork that `setsid`s (reparented, new session), a plain double fork (reparented, still in the group).
const ESCAPING_BROKER: &str = r#"
pids=$0
setsid sleep 601 & echo $! >> "$pids"
perl -e 'setpgrp(0,0); sleep 602' & echo $! >> "$pids"
( setsid bash -c 'sleep 604 & echo $! >> "$0"' "$pids" & )
( sleep 605 & echo $! >> "$pids" )
wait
"#;

/// Spawns `ESCAPING_BROKER` for `session` and returns the broker and its four escaped children once they run.
fn spawn_escaping_broker(env: &mut Env, ws: &Path, session: &str) -> (Proc, Vec<Proc>) {
    let pids_file = env.work.path().join(format!("pids-{}", unique_id("esc")));
    let pids_arg = pids_file.to_str().unwrap().to_owned();
    let broker = env.spawn_broker(ws, session, &["bash", "-c", ESCAPING_BROKER, &pids_arg]);
    let read = || -> Vec<i32> {
        fs::read_to_string(&pids_file)
            .unwrap_or_default()
            .lines()
            .filter_map(|line| line.trim().parse().ok())
            .collect()
    };
    assert!(
        wait_until(PATIENCE, || read().len() == 4),
        "the broker started its four escaping children"
    );
    let children: Vec<Proc> = read()
        .into_iter()
        .map(|pid| Proc::of(pid).expect("escaped child runs"))
        .collect();
    for child in &children {
        env.track(*child);
    }
    // perl's setpgrp and the double fork's setsid happen after the pid was written: wait for them.
    let left = |pid: i32| {
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let fields: Vec<&str> = stat[stat.rfind(')').map_or(0, |i| i + 1)..]
            .split_whitespace()
            .collect();
        fields.get(2).and_then(|pgid| pgid.parse::<i32>().ok()) != Some(broker.pid)
    };
    assert!(
        wait_until(PATIENCE, || children.iter().filter(|c| left(c.pid)).count()
            == 3),
        "three children left the broker's group"
    );
    (broker, children)
}

fn assert_all_gone(procs: &[Proc], what: &str) {
    for proc in procs {
        assert!(
            proc.gone_within(PATIENCE),
            "{what}: pid {} survived",
            proc.pid
        );
    }
}

/// The broker and its escaped children are gone, and the stop event (with `reason`) counts the members.
fn assert_tree_stopped(env: &Env, broker: Proc, children: &[Proc], what: &str, reason: &str) {
    assert_all_gone(&[broker], what);
    assert_all_gone(children, what);
    assert_members_counted(env, reason, broker.pid);
}

/// The stop event of the broker says how many members were stopped with it.
fn assert_members_counted(env: &Env, reason: &str, pid: i32) {
    let stopped = |env: &Env| {
        env.events_where("stop", Some(reason))
            .into_iter()
            .find(|e| e["pid"] == pid && e["result"] == "stopped")
    };
    assert!(
        wait_until(PATIENCE, || stopped(env).is_some()),
        "a stop event: {:?}",
        env.events()
    );
    let detail = stopped(env).unwrap()["detail"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let count: usize = detail
        .split("; ")
        .find_map(|part| part.strip_suffix(" members stopped"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("the event counts the members: {detail}"));
    assert!(count >= 4, "{detail}");
}

#[test]
fn escaped_children_of_a_broker_are_stopped_by_detach() {
    let mut env = Env::new();
    let ws = env.workspace("app");
    let session = unique_id("esc-detach");
    let (broker, children) = spawn_escaping_broker(&mut env, &ws, &session);
    let out = env.run(&[
        "broker",
        "detach",
        "--cwd",
        ws.to_str().unwrap(),
        "--session",
        &session,
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_tree_stopped(&env, broker, &children, "detach", "manual");
}

#[test]
fn escaped_children_of_a_broker_are_stopped_by_session_end() {
    let mut env = Env::new();
    let ws = env.workspace("app");
    let session = unique_id("esc-end");
    let (broker, children) = spawn_escaping_broker(&mut env, &ws, &session);
    hook(&mut env, "SessionEnd", &session, &ws, None);
    assert_tree_stopped(&env, broker, &children, "SessionEnd", "session_end");
}

#[test]
fn escaped_children_of_a_broker_are_stopped_by_sweep_owners_gone() {
    let mut env = Env::new();
    let ws = env.workspace("app");
    let session = unique_id("esc-sweep");
    let agent = env.sleeper();
    start_session(&mut env, &session, &ws, agent);
    let (broker, children) = spawn_escaping_broker(&mut env, &ws, &session);
    agent.kill();
    env.reap_children();
    assert!(agent.gone_within(PATIENCE));
    let (_, report) = sweep(&mut env, &[]);
    assert_eq!(
        actions(&report, "end_session", Some("owners_gone")).len(),
        1,
        "{report}"
    );
    assert_tree_stopped(&env, broker, &children, "sweep", "owners_gone");
}

/// Defect 3: a live broker's own processes outside its group (a `forkpty` terminal, a detached worker, a child that
/// only changed group) were stopped by every sweep as `unrecorded`.
#[test]
fn a_live_brokers_forkpty_terminal_and_detached_worker_survive_20_sweeps() {
    let mut env = Env::new();
    let ws = env.workspace("app");
    let session = unique_id("forkpty");
    let agent = env.sleeper();
    start_session(&mut env, &session, &ws, agent);
    let pids_file = env.work.path().join("worker-pids");
    let script = r#"
        script -qfc 'sleep 700' /dev/null > /dev/null 2>&1 & echo $! >> "$0"
        setsid sleep 701 & echo $! >> "$0"
        perl -e 'setpgrp(0,0); sleep 702' & echo $! >> "$0"
        wait
    "#;
    let broker = env.spawn_broker(
        &ws,
        &session,
        &["bash", "-c", script, pids_file.to_str().unwrap()],
    );
    assert!(wait_until(PATIENCE, || fs::read_to_string(&pids_file)
        .is_ok_and(|text| text.lines().count() == 3)));
    let mut procs: Vec<Proc> = fs::read_to_string(&pids_file)
        .unwrap()
        .lines()
        .map(|pid| Proc::of(pid.trim().parse().unwrap()).expect("worker runs"))
        .collect();
    // The terminal's own child: `script` forks it into a new session on the pty.
    let terminal = procs[0].pid;
    let children = || {
        fs::read_to_string(format!("/proc/{terminal}/task/{terminal}/children")).unwrap_or_default()
    };
    assert!(wait_until(PATIENCE, || !children().trim().is_empty()));
    let shell: i32 = children()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    procs.push(Proc::of(shell).unwrap());
    procs.push(broker);
    for _ in 0..20 {
        let (code, report) = sweep(&mut env, &[]);
        assert_eq!(code, Some(0), "{report}");
        assert!(
            actions(&report, "stop", None).is_empty(),
            "nothing of a live broker is stopped: {report}"
        );
    }
    for proc in &procs {
        assert!(proc.alive(), "pid {} survived 20 sweeps", proc.pid);
    }
    assert!(env.events_where("stop", Some("unrecorded")).is_empty());
}

/// Defect 3: any process that merely had `SESSION_REAPER_STATE_ROOT` in its environment was stopped as
/// `unrecorded`; the contract's marker is `SESSION_REAPER_BROKER` with a lineage token no record knows.
#[test]
fn a_process_with_only_the_state_root_marker_is_never_stopped_as_unrecorded() {
    let mut env = Env::new();
    let mut command = Command::new("sleep");
    command
        .arg("600")
        .env("SESSION_REAPER_STATE_ROOT", env.state_dir());
    scrub_env(&mut command);
    command.env("SESSION_REAPER_STATE_ROOT", env.state_dir());
    let bystander = env.spawn(command);
    let mut tokenless = Command::new("sleep");
    scrub_env(&mut tokenless);
    tokenless
        .arg("600")
        .env("SESSION_REAPER_STATE_ROOT", env.state_dir())
        .env("SESSION_REAPER_BROKER", "/nowhere/default");
    let old_broker = env.spawn(tokenless);
    for _ in 0..3 {
        let (code, report) = sweep(&mut env, &[]);
        assert_eq!(code, Some(0), "{report}");
        assert!(actions(&report, "stop", None).is_empty(), "{report}");
    }
    assert!(bystander.alive() && old_broker.alive());
}

#[test]
fn a_marked_broker_whose_record_was_deleted_is_stopped_as_unrecorded_with_its_members() {
    let mut env = Env::new();
    let ws = env.workspace("app");
    let session = unique_id("deleted");
    let (broker, children) = spawn_escaping_broker(&mut env, &ws, &session);
    let records: Vec<PathBuf> = walk(env.state_dir())
        .into_iter()
        .filter(|p| p.ends_with("broker.json"))
        .collect();
    assert_eq!(records.len(), 1);
    fs::remove_file(&records[0]).unwrap();
    let (_, report) = sweep(&mut env, &[]);
    let stops = actions(&report, "stop", Some("unrecorded"));
    assert_eq!(stops.len(), 1, "one ticket for the whole lineage: {report}");
    assert_eq!(stops[0]["pid"], broker.pid, "{report}");
    assert_all_gone(&[broker], "unrecorded");
    assert_all_gone(&children, "unrecorded");
}

/// Runs `script` (bash, with `args`) as pid 1 of a private pid namespace with its own /proc. Fails loudly when the
/// namespace cannot be made: these tests never pass by skipping.
pub(crate) fn in_private_pid_namespace(script: &str, args: &[&str]) -> Output {
    let mut command = crate::harness::unshare_pid_namespace();
    command
        .args(["--kill-child", "bash", "-c", script, "ns"])
        .args(args);
    scrub_env(&mut command);
    let out = run_bounded(command, None);
    assert!(
        !stderr(&out).contains("unshare failed")
            && !stderr(&out).contains("Operation not permitted"),
        "could not create a private pid namespace (these tests need root): {}",
        stderr(&out)
    );
    out
}

/// Defect 1: with the broker and its group gone, a daemon that reused the pid (`setsid`, fork, parent exits) forms
/// a leaderless group with the same id whose members started after the broker; `SessionEnd` and `reap` stopped
/// it. Forced reuse in a private pid namespace (`ns_last_pid`), once through `SessionEnd` with a lineage token and
/// once through `reap` with a record of an older version (no token: the register rules).
#[test]
fn pid_reuse_never_gets_an_innocent_daemons_group_signalled() {
    const SCRIPT: &str = r#"
        set -u
        BIN=$1 STATE=$2 WS=$3 S=$4 MODE=$5
        out=$("$BIN" --state-dir "$STATE" broker spawn --json --cwd "$WS" --session "$S" -- sleep 600) || { echo spawn_failed; exit 1; }
        P=$(printf '%s\n' "$out" | sed -n 's/.*"pid": \([0-9]*\).*/\1/p' | head -n 1)
        echo "broker=$P"
        if [ "$MODE" = reap ]; then
            rec=$(find "$STATE/workspaces" -name broker.json)
            sed -i 's/"lineage": "[0-9a-f]*"/"lineage": null/' "$rec"
            grep -q '"lineage": null' "$rec" && echo tokenless
        fi
        kill -KILL "$P"
        while [ -e "/proc/$P" ]; do sleep 0.01; done
        echo $((P - 1)) > /proc/sys/kernel/ns_last_pid
        setsid bash -c 'echo $$ > "$0/lead"; sleep 602 & echo $! > "$0/daemon"' "$STATE/.." &
        wait $!
        LEAD=$(cat "$STATE/../lead"); D=$(cat "$STATE/../daemon")
        [ "$LEAD" = "$P" ] && echo reuse=ok || echo "reuse=failed lead=$LEAD"
        read -r st < "/proc/$D/stat"; f=(${st##*) })
        [ "${f[2]}" = "$P" ] && [ "${f[3]}" = "$P" ] && [ ! -e "/proc/$P" ] && echo leaderless_group=ok
        if [ "$MODE" = hook ]; then
            printf '{"session_id":"%s","hook_event_name":"SessionEnd","cwd":"%s"}' "$S" "$WS" \
                | "$BIN" --state-dir "$STATE" hook --agent claude
        else
            "$BIN" --state-dir "$STATE" reap --session "$S" > /dev/null
        fi
        for _ in $(seq 1 2000); do
            [ -z "$(ls -A "$STATE/stopping" 2>/dev/null)" ] && break
            sleep 0.01
        done
        [ -z "$(ls -A "$STATE/stopping" 2>/dev/null)" ] && echo tickets=closed
        kill -0 "$D" 2>/dev/null && echo daemon=alive
        grep '"action":"stop"' "$STATE/events.jsonl"
    "#;
    for mode in ["hook", "reap"] {
        let env = Env::new();
        let ws = env.workspace("app");
        let state = env.state_dir().join("root");
        let session = unique_id("reuse");
        let out = in_private_pid_namespace(
            SCRIPT,
            &[
                BIN,
                state.to_str().unwrap(),
                ws.to_str().unwrap(),
                &session,
                mode,
            ],
        );
        let text = stdout(&out);
        let report = format!("{mode}: {text}\n{}", stderr(&out));
        assert!(text.contains("reuse=ok"), "pid reuse was forced: {report}");
        assert!(text.contains("leaderless_group=ok"), "{report}");
        assert!(mode == "hook" || text.contains("tokenless"), "{report}");
        assert!(text.contains("tickets=closed"), "{report}");
        assert!(
            text.contains("daemon=alive"),
            "the innocent daemon lives: {report}"
        );
        assert!(
            !text.contains(r#""result":"stopped""#),
            "nothing was stopped: {report}"
        );
    }
}

/// Defect 1, second form: a record whose `pgid` names another (leaderless) group got that group killed once the
/// broker was gone. A `pgid` other than the broker's pid is ignored.
#[test]
fn a_record_pgid_naming_another_leaderless_group_is_ignored() {
    let mut env = Env::new();
    let ws = env.workspace("app");
    let session = unique_id("pgid");
    let broker = env.spawn_broker(&ws, &session, &["sleep", "600"]);
    // An innocent leaderless group, started after the broker.
    let daemon_file = env.work.path().join("daemon");
    let mut setsid = Command::new("setsid");
    setsid.args([
        "bash",
        "-c",
        r#"sleep 603 & echo $! > "$0""#,
        daemon_file.to_str().unwrap(),
    ]);
    let leader = env.spawn(setsid);
    assert!(wait_until(PATIENCE, || fs::read_to_string(&daemon_file)
        .is_ok_and(|text| text.ends_with('\n'))));
    let daemon = Proc::of(
        fs::read_to_string(&daemon_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap(),
    )
    .unwrap();
    env.track(daemon);
    env.reap_children();
    assert!(leader.gone_within(PATIENCE), "the group lost its leader");
    let record_path = walk(env.state_dir())
        .into_iter()
        .find(|p| p.ends_with("broker.json"))
        .unwrap();
    let mut record: Value = serde_json::from_slice(&fs::read(&record_path).unwrap()).unwrap();
    record["pgid"] = json!(leader.pid);
    fs::write(&record_path, serde_json::to_vec_pretty(&record).unwrap()).unwrap();
    unsafe { libc::kill(broker.pid, libc::SIGKILL) };
    assert!(broker.gone_within(PATIENCE));
    let out = env.run(&["reap", "--session", &session]);
    assert!(out.status.code().is_some(), "{}", stderr(&out));
    assert!(wait_until(PATIENCE, || fs::read_dir(
        env.state_dir().join("stopping")
    )
    .map_or(true, |mut dir| dir.next().is_none())));
    assert!(daemon.alive(), "the other group's member lives");
}

/// Defect 4: `plan::resumes` ignored the program, so `grep -r <id>`, `cp -r <id>`, `vim -r<id>`, a tmux client of
/// `claude --resume <id>` were stopped as resume orphans. Only agent processes match.
#[test]
fn look_alike_resume_commands_are_never_stopped_as_resume_orphans() {
    let mut env = Env::new();
    let ws = env.workspace("app");
    let id = unique_id("lookalike");
    let sleep = ["-c", "import time; time.sleep(600)"];
    let plant = |env: &mut Env, program: &str, args: &[&str]| {
        let mut command = Command::new(named_python(env, program));
        command.args(sleep).args(args);
        env.spawn(command)
    };
    let terse = format!("-r{id}");
    let look_alikes = [
        plant(&mut env, "grep", &["-r", &id, "/root/.claude"]),
        plant(&mut env, "grep", &["--", "--resume", &id, "log.txt"]),
        plant(&mut env, "cp", &["-r", &id, "/backup/"]),
        plant(&mut env, "rm", &["-r", &id]),
        plant(&mut env, "vim", &[&terse]),
        plant(
            &mut env,
            "tmux",
            &["new-session", "-d", "claude", "--resume", &id],
        ),
    ];
    let orphan = plant(&mut env, "claude", &["--resume", &id]);
    hook(&mut env, "SessionEnd", &id, &ws, None);
    assert!(
        orphan.gone_within(PATIENCE),
        "the agent resuming the session is stopped"
    );
    for look_alike in look_alikes {
        assert!(look_alike.alive(), "look-alike {} stopped", look_alike.pid);
    }
    assert!(
        wait_until(PATIENCE, || env
            .events_where("stop", Some("resume_orphan"))
            .len()
            == 1),
        "{:?}",
        env.events()
    );
}

/// Defect 6: `broker register --pid <tid>` accepted a thread id; the fallback `kill(tid)` signals the whole process.
#[test]
fn broker_register_refuses_a_thread_id() {
    let mut env = Env::new();
    let ws = env.workspace("app");
    let mut command = Command::new(python3());
    command.args([
        "-c",
        "import threading, time\nthreading.Thread(target=time.sleep, args=(600,)).start()\ntime.sleep(600)",
    ]);
    let process = env.spawn(command);
    let task_dir = format!("/proc/{}/task", process.pid);
    let tid = || -> Option<i32> {
        fs::read_dir(&task_dir)
            .ok()?
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse().ok())
            .find(|tid| *tid != process.pid)
    };
    assert!(wait_until(PATIENCE, || tid().is_some()));
    let tid = tid().unwrap().to_string();
    let out = env.run(&[
        "broker",
        "register",
        "--pid",
        &tid,
        "--cwd",
        ws.to_str().unwrap(),
        "--no-owner",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("thread"), "{}", stderr(&out));
    assert!(env.records().is_empty(), "nothing recorded");
    assert!(process.alive());
}

/// Defect 7: with `flock …` or a launcher around the hook, the recorded agent was the wrapper's short-lived pid
/// and the next sweep ended the live session (`owners_gone`). The nearest agent executable is preferred.
#[test]
fn a_forking_wrapper_around_the_hook_never_becomes_the_agent() {
    let mut env = Env::new();
    let ws = env.workspace("app");
    let (by_flock, by_launcher) = (unique_id("flock"), unique_id("launcher"));
    let payload = |session: &str| {
        let path = env.work.path().join(format!("{session}.json"));
        let body = json!({"session_id": session, "hook_event_name": "SessionStart", "cwd": ws});
        fs::write(&path, body.to_string()).unwrap();
        path
    };
    let (flock_payload, launcher_payload) = (payload(&by_flock), payload(&by_launcher));
    let lock = env.work.path().join("hook.lock");
    let done = env.work.path().join("hooks-done");
    let script = format!(
        r#"flock {lock} {bin} --state-dir {state} hook --agent claude < {flock_payload}
        {python} -c 'import subprocess, sys; subprocess.run(sys.argv[1:], stdin=open("{launcher_payload}"))' {bin} --state-dir {state} hook --agent claude
        touch {done}
        sleep 600; true"#,
        lock = lock.display(),
        bin = BIN,
        state = env.state_dir().display(),
        flock_payload = flock_payload.display(),
        launcher_payload = launcher_payload.display(),
        python = python3(),
        done = done.display(),
    );
    let mut agent = Command::new(named_program(&env, "claude", "/bin/bash"));
    scrub_env(&mut agent);
    agent.args(["-c", &script]);
    let agent = env.spawn(agent);
    assert!(wait_until(PATIENCE * 2, || done.exists()), "the hooks ran");
    for session in [&by_flock, &by_launcher] {
        let record = env.session_record(session).expect("recorded");
        assert_eq!(
            record["agent_identity"]["pid"], agent.pid,
            "{session}: {record}"
        );
    }
    let broker = env.spawn_broker(&ws, &by_flock, &["sleep", "600"]);
    let (_, report) = sweep(&mut env, &[]);
    assert!(
        actions(&report, "end_session", None).is_empty(),
        "live sessions are not ended: {report}"
    );
    assert!(broker.alive());
}

/// Defect 8: `broker spawn` from a private pid namespace (Codex's sandboxed shell tool) recorded a pid that names
/// nothing outside it, for a broker that dies with the sandbox. Refused, with the reason.
#[test]
fn broker_spawn_from_another_pid_namespace_is_refused_with_the_reason() {
    let mut env = Env::new();
    let ws = env.workspace("app");
    let session = unique_id("sandboxed");
    let agent = env.sleeper();
    start_session(&mut env, &session, &ws, agent);
    let script = r#""$1" --state-dir "$2" broker spawn --json --cwd "$3" --session "$4" -- sleep 600; echo "rc=$?""#;
    let out = in_private_pid_namespace(
        script,
        &[
            BIN,
            env.state_dir().to_str().unwrap(),
            ws.to_str().unwrap(),
            &session,
        ],
    );
    assert!(
        stdout(&out).contains("rc=2"),
        "{} {}",
        stdout(&out),
        stderr(&out)
    );
    let why = stderr(&out);
    assert!(
        why.contains("pid namespace") && why.contains("die with the sandboxed command"),
        "{why}"
    );
    assert_eq!(why.trim().lines().count(), 1, "one line: {why}");
    assert!(env.records().is_empty(), "nothing recorded");
    assert!(
        marked_with_state_root(env.state_dir()).is_empty(),
        "nothing started"
    );
}

/// Defect 8: a record naming a process of another pid namespace — here one that matches a live process by pid,
/// start time and uid, and differs only in its namespace — is never acted on by pid: `reap`, `SessionEnd` and
/// `sweep` leave the process and the record alone.
#[test]
fn a_record_from_another_pid_namespace_is_never_signalled_from_outside() {
    let mut env = Env::new();
    let ws = env.workspace("app");
    let session = unique_id("other-ns");
    let mut unshare = crate::harness::unshare_pid_namespace();
    unshare.args(["--kill-child", "sleep", "600"]);
    let outer = env.spawn(unshare);
    let children = || {
        fs::read_to_string(format!("/proc/{0}/task/{0}/children", outer.pid)).unwrap_or_default()
    };
    assert!(
        wait_until(PATIENCE, || !children().trim().is_empty()),
        "could not create a private pid namespace (these tests need root)"
    );
    let inner: i32 = children()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let inner = Proc::of(inner).unwrap();
    env.track(inner);
    let ns = fs::metadata(format!("/proc/{}/ns/pid", inner.pid))
        .unwrap()
        .ino();
    let ours = fs::metadata("/proc/self/ns/pid").unwrap().ino();
    assert_ne!(ns, ours, "the sleeper runs in its own pid namespace");
    // A slot for the workspace, then the hand-written record in it.
    let placeholder = env.spawn_broker(&ws, &session, &["sleep", "600"]);
    let record_path = walk(env.state_dir())
        .into_iter()
        .find(|p| p.ends_with("broker.json"))
        .unwrap();
    let mut record: Value = serde_json::from_slice(&fs::read(&record_path).unwrap()).unwrap();
    record["identity"]["pid_ns"] = json!(ns);
    record["identity"]["pid"] = json!(inner.pid);
    record["identity"]["start_ticks"] = json!(inner.ticks);
    record["pgid"] = json!(inner.pid);
    record["lineage"] = Value::Null;
    let written = serde_json::to_vec_pretty(&record).unwrap();
    fs::write(&record_path, &written).unwrap();
    placeholder.kill();
    let out = env.run(&["reap", "--session", &session]);
    assert!(out.status.code().is_some());
    hook(&mut env, "SessionEnd", &session, &ws, None);
    let (_, report) = sweep(&mut env, &[]);
    assert!(
        actions(&report, "prune", None).is_empty() && actions(&report, "stop", None).is_empty(),
        "{report}"
    );
    assert!(
        inner.alive(),
        "the other namespace's process was never signalled"
    );
    assert_eq!(
        fs::read(&record_path).unwrap(),
        written,
        "the record is left alone"
    );
    let status = env.status();
    assert_eq!(
        status["slots"][0]["identity"]["pid_ns"],
        json!(ns),
        "{status}"
    );
}

/// Hardening: the broker and the finisher inherited the caller's descriptors that were not close-on-exec (an agent
/// waits for EOF on the hook's pipes).
#[test]
fn a_broker_inherits_no_descriptor_but_the_standard_three() {
    let mut env = Env::new();
    let ws = env.workspace("app");
    let session = unique_id("fds");
    let held = env.work.path().join("held-open");
    let mut command = Command::new("bash");
    scrub_env(&mut command);
    command.args([
        "-c",
        r#"exec 7>"$0"; exec "$1" --state-dir "$2" broker spawn --json --cwd "$3" --session "$4" -- sleep 600"#,
        held.to_str().unwrap(),
        BIN,
        env.state_dir().to_str().unwrap(),
        ws.to_str().unwrap(),
        &session,
    ]);
    let out = env.run_command(command);
    assert!(out.status.success(), "{}", stderr(&out));
    let record: Value = serde_json::from_slice(&out.stdout).unwrap();
    let pid = record["identity"]["pid"].as_i64().unwrap();
    let fds: Vec<String> = fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    let mut fds = fds;
    fds.sort();
    assert_eq!(fds, ["0", "1", "2"], "only the standard streams");
}

/// Hardening: the default `broker.log` was opened following symlinks.
#[test]
fn the_default_broker_log_is_never_opened_through_a_symlink() {
    let mut env = Env::new();
    let ws = env.workspace("app");
    let session = unique_id("log-link");
    let first = env.spawn_broker(&ws, &session, &["sleep", "600"]);
    let out = env.run(&[
        "broker",
        "detach",
        "--cwd",
        ws.to_str().unwrap(),
        "--session",
        &session,
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(first.gone_within(PATIENCE));
    let log = walk(env.state_dir())
        .into_iter()
        .find(|p| p.ends_with("broker.log"))
        .expect("the slot's broker.log");
    let victim = env.work.path().join("victim");
    fs::write(&victim, b"untouched").unwrap();
    fs::remove_file(&log).unwrap();
    std::os::unix::fs::symlink(&victim, &log).unwrap();
    let out = env.run(&[
        "broker",
        "spawn",
        "--cwd",
        ws.to_str().unwrap(),
        "--session",
        &session,
        "--",
        "sh",
        "-c",
        "echo written",
    ]);
    assert!(!out.status.success(), "refused: {}", stdout(&out));
    assert!(stderr(&out).contains("broker.log"), "{}", stderr(&out));
    assert_eq!(fs::read(&victim).unwrap(), b"untouched");
}

/// Every path under `root`.
fn walk(root: &Path) -> Vec<PathBuf> {
    walkdir::WalkDir::new(root)
        .into_iter()
        .flatten()
        .map(walkdir::DirEntry::into_path)
        .collect()
}

/// `status` shows each broker's members (pid, argv, RSS), and a stop whose leader is gone while members run, with
/// nothing driving it, as stuck — not stopped.
#[test]
fn status_shows_members_and_a_stop_that_left_members_behind_as_stuck() {
    let mut env = Env::new();
    let ws = env.workspace("app");
    let session = unique_id("status");
    let (broker, children) = spawn_escaping_broker(&mut env, &ws, &session);
    let status = env.status();
    let members = status["slots"][0]["members"].as_array().expect("members");
    for child in &children {
        let member = members
            .iter()
            .find(|m| m["pid"] == child.pid)
            .unwrap_or_else(|| panic!("member {} listed: {status}", child.pid));
        assert!(member["argv"][0].as_str().is_some_and(|a| !a.is_empty()));
        assert!(member["rss_kib"].as_u64().is_some(), "{member}");
    }
    let text = stdout(&env.run(&["status"]));
    assert!(
        text.contains("member") && text.contains("sleep 601"),
        "{text}"
    );
    // A stop that lost its leader and not its members: the record moved into a ticket nobody drives.
    let record_path = walk(env.state_dir())
        .into_iter()
        .find(|p| p.ends_with("broker.json"))
        .unwrap();
    let record: Value = serde_json::from_slice(&fs::read(&record_path).unwrap()).unwrap();
    fs::remove_file(&record_path).unwrap();
    unsafe { libc::kill(broker.pid, libc::SIGKILL) };
    assert!(broker.gone_within(PATIENCE));
    let identity = &record["identity"];
    let boot: String = identity["boot_id"]
        .as_str()
        .unwrap()
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(8)
        .collect();
    let ticket = json!({
        "version": 1, "identity": identity, "pgid": broker.pid, "reason": "manual",
        "requested_at": "2026-01-01T00:00:00Z", "grace_ms": 5000, "origin": "app/default",
        "lineage": record["lineage"], "term_at": "2026-01-01T00:00:00Z"
    });
    let stopping = env.state_dir().join("stopping");
    fs::create_dir_all(&stopping).unwrap();
    let ticket_path = stopping.join(format!("{boot}-{}-{}.json", broker.pid, broker.ticks));
    fs::write(&ticket_path, ticket.to_string()).unwrap();
    let out = env.run(&["status", "--json"]);
    let status: Value = serde_json::from_slice(&out.stdout).unwrap();
    let ticket = &status["tickets"][0];
    assert_eq!(ticket["stuck"], true, "{status}");
    assert_eq!(ticket["alive"], true, "{status}");
    assert_eq!(
        ticket["members_left"].as_array().map(Vec::len),
        Some(4),
        "{status}"
    );
    assert_eq!(out.status.code(), Some(1), "stuck is reported");
    let text = stdout(&env.run(&["status"]));
    assert!(
        text.contains("STUCK pid") && text.contains("4 members left behind"),
        "{text}"
    );
}

/// Hardening: `broker spawn` that could not write its record (a full disk) left the child running unrecorded. In a
/// private mount namespace the state root is a 64 KiB tmpfs, filled up after the slot exists.
#[test]
fn broker_spawn_that_cannot_write_its_record_leaves_no_process_behind() {
    const SCRIPT: &str = r#"
        set -u
        BIN=$1 STATE=$2 WS=$3
        mount -t tmpfs -o size=64k,mode=0700 tmpfs "$STATE" || { echo mount_failed; exit 1; }
        out=$("$BIN" --state-dir "$STATE" broker spawn --json --no-owner --cwd "$WS" -- sleep 600) || { echo first_failed; exit 1; }
        P=$(printf '%s\n' "$out" | sed -n 's/.*"pid": \([0-9]*\).*/\1/p' | head -n 1)
        kill -KILL "$P"
        while kill -0 "$P" 2>/dev/null; do sleep 0.01; done
        rm -f "$(find "$STATE/workspaces" -name broker.json)"
        dd if=/dev/zero of="$STATE/fill" bs=4k > /dev/null 2>&1
        "$BIN" --state-dir "$STATE" broker spawn --json --no-owner --cwd "$WS" -- sleep 600 > /dev/null
        echo "rc=$?"
        for p in /proc/[0-9]*; do
            grep -qzxF "SESSION_REAPER_STATE_ROOT=$STATE" "$p/environ" 2>/dev/null && echo "left=${p#/proc/}"
        done
        echo done
    "#;
    let env = Env::new();
    let ws = env.workspace("app");
    let mut command = Command::new("unshare");
    command.args([
        "--mount",
        "bash",
        "-c",
        SCRIPT,
        "mnt",
        BIN,
        env.state_dir().to_str().unwrap(),
        ws.to_str().unwrap(),
    ]);
    scrub_env(&mut command);
    let out = run_bounded(command, None);
    let text = stdout(&out);
    let report = format!("{text}\n{}", stderr(&out));
    assert!(
        text.contains("done") && !text.contains("mount_failed"),
        "a private 64 KiB tmpfs: {report}"
    );
    assert!(!text.contains("rc=0"), "the spawn failed: {report}");
    assert!(
        !text.contains("left="),
        "no unrecorded broker runs: {report}"
    );
}

/// The binary with no state root given: it resolves one from `home` and `xdg_state_home`, in `cwd`.
fn without_state_dir(
    home: &Path,
    xdg_state_home: Option<&str>,
    cwd: &Path,
    args: &[&str],
) -> Output {
    let mut command = Command::new(BIN);
    scrub_env(&mut command);
    command
        .env("HOME", home)
        .env_remove("XDG_STATE_HOME")
        .current_dir(cwd)
        .args(args);
    if let Some(xdg) = xdg_state_home {
        command.env("XDG_STATE_HOME", xdg);
    }
    run_bounded(command, None)
}

/// Hardening: a relative `XDG_STATE_HOME` was honoured (the spec says to ignore it), and root with another user's
/// `$HOME` created root-owned directories in that home.
#[test]
fn a_relative_xdg_state_home_is_ignored_and_another_users_home_is_refused() {
    let env = Env::new();
    let (home, cwd) = (env.work.path().join("home"), env.work.path().join("cwd"));
    fs::create_dir_all(&home).unwrap();
    fs::create_dir_all(&cwd).unwrap();
    let session = unique_id("xdg");
    let out = without_state_dir(
        &home,
        Some("relative/state"),
        &cwd,
        &["reap", "--session", &session, "--force"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        !cwd.join("relative").exists(),
        "a relative XDG_STATE_HOME is ignored"
    );
    assert!(
        home.join(".local/state/session-reaper").is_dir(),
        "~/.local/state is used"
    );

    let other = env.work.path().join("other-home");
    fs::create_dir_all(&other).unwrap();
    std::os::unix::fs::chown(&other, Some(54_321), Some(54_321)).unwrap();
    let out = without_state_dir(
        &other,
        None,
        &cwd,
        &["reap", "--session", &session, "--force"],
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("belongs to uid 54321"),
        "{}",
        stderr(&out)
    );
    assert!(
        !other.join(".local").exists(),
        "nothing created in another user's home"
    );
}
