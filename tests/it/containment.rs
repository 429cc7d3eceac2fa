//! Containment (DESIGN "Containment"): a fake agent adopted into a cgroup of its own at `SessionStart` loses what
//! its tools left — `setsid`, `nohup`, `env -i setsid` and a double-forked daemon that closed its descriptors, none
//! of them carrying a session variable or the agent's group — once it is gone, and nothing else is touched. Every
//! cgroup lives under a parent the test made (`TestCgroup`, via `SESSION_REAPER_CGROUP_ROOT`) and goes with it,
//! even when the test fails. Under `CI=true` a test that cannot make its cgroup fails; elsewhere it says so and
//! passes only where cgroup v2 is not writable (a developer's unprivileged machine).

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{
    BIN, Env, FakeAgent, PATIENCE, Proc, fresh_session, named_python, stdout, wait_until,
};
use crate::test_cgroup::TestCgroup;

/// A fake agent run through a python3 named `program` (the agents table recognises it), contained under `cgroup`.
fn contained_agent(
    env: &mut Env,
    cgroup: &TestCgroup,
    program: &str,
    session: &str,
    variable: &str,
) -> FakeAgent {
    contained_agent_with(env, cgroup, program, session, variable, &[])
}

/// `contained_agent` whose hooks get `flags` too.
fn contained_agent_with(
    env: &mut Env,
    cgroup: &TestCgroup,
    program: &str,
    session: &str,
    variable: &str,
    flags: &[&str],
) -> FakeAgent {
    let named = named_python(env, program);
    let entries = cgroup.env();
    let extra: Vec<(&str, &str)> = entries.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut hook_flags = vec!["--agent", program];
    hook_flags.extend_from_slice(flags);
    let mut agent = env.fake_agent_as(&named, session, variable, &hook_flags, &extra);
    agent.order("start");
    // The sentinel moves it, a moment after SessionStart returns.
    assert!(
        wait_until(PATIENCE, || cgroup.holds(agent.proc.pid, "agent-")),
        "the agent is in its own cgroup: {:?}",
        TestCgroup::cgroup_of(agent.proc.pid)
    );
    agent
}

/// Plants, through the agent's tool, the four that leave everything but the cgroup behind: `setsid`, `nohup`,
/// `env -i setsid`, and a daemon that double-forks, starts a session and closes every descriptor. Each writes its
/// pid to `<tag>-<kind>.pid`.
fn plant_four(env: &mut Env, agent: &mut FakeAgent, tag: &str) -> Vec<(String, Proc)> {
    let pid_file = |kind: &str| env.work_path(&format!("{tag}-{kind}.pid"));
    let daemon = env.work.path().join("daemon.py");
    std::fs::write(&daemon, DAEMON).expect("the daemon script");
    let orders = [
        format!(
            "run (setsid sh -c 'echo $$ > {}; exec sleep 600' &)",
            pid_file("setsid")
        ),
        format!(
            "run nohup sh -c 'echo $$ > {}; exec sleep 600' >/dev/null 2>&1 &",
            pid_file("nohup")
        ),
        format!(
            "run (env -i /usr/bin/setsid /bin/sh -c 'echo $$ > {}; exec /bin/sleep 600' &)",
            pid_file("env-i")
        ),
        format!("run python3 {} {}", daemon.display(), pid_file("daemon")),
    ];
    for order in &orders {
        agent.order(order);
    }
    ["setsid", "nohup", "env-i", "daemon"]
        .into_iter()
        .map(|kind| (kind.to_owned(), env.planted(&format!("{tag}-{kind}.pid"))))
        .collect()
}

/// A classic daemon: fork, `setsid`, fork again, every descriptor closed; its pid written to `argv[1]`.
const DAEMON: &str = "import os, sys, time
if os.fork():
    os._exit(0)
os.setsid()
if os.fork():
    os._exit(0)
os.closerange(0, 1024)
with open(sys.argv[1], 'w') as out:
    out.write(str(os.getpid()))
time.sleep(600)
";

fn alive_of(procs: &[(String, Proc)]) -> Vec<String> {
    procs
        .iter()
        .filter(|(_, proc)| proc.alive())
        .map(|(kind, proc)| format!("{kind} (pid {})", proc.pid))
        .collect()
}

fn gone_within(procs: &[(String, Proc)], limit: Duration) -> Result<Duration, Vec<String>> {
    let started = Instant::now();
    if wait_until(limit, || procs.iter().all(|(_, proc)| !proc.alive())) {
        Ok(started.elapsed())
    } else {
        Err(alive_of(procs))
    }
}

/// Each of `procs` has a `leftover` stop event that says the cgroup named it.
fn stopped_through_the_cgroup(env: &Env, procs: &[(String, Proc)]) -> bool {
    wait_until(PATIENCE, || {
        let stops: Vec<Value> = env
            .events_where("stop", Some("leftover"))
            .into_iter()
            .filter(|event| event["result"] == "stopped")
            .collect();
        procs
            .iter()
            .all(|(_, proc)| stops.iter().any(|event| event["pid"] == proc.pid))
    })
}

fn session_containment(env: &Env, session: &str) -> Value {
    std::fs::read(env.state_dir().join(format!("sessions/{session}.json")))
        .ok()
        .and_then(|bytes| serde_json::from_slice::<Value>(&bytes).ok())
        .map_or(Value::Null, |record| record["containment"].clone())
}

#[test]
fn a_gemini_like_agents_four_leftovers_go_after_its_clean_exit_and_another_sessions_stay() {
    let Some(cgroup) = TestCgroup::new() else {
        return;
    };
    let mut env = Env::new();
    let session = fresh_session("cg-gemini");
    let mut agent = contained_agent(&mut env, &cgroup, "gemini", &session, "-");
    let containment = session_containment(&env, &session);
    assert_eq!(containment["mode"], "cgroup", "{containment}");
    let four = plant_four(&mut env, &mut agent, "a");
    for (kind, proc) in &four {
        assert!(
            cgroup.holds(proc.pid, "agent-"),
            "{kind} born in the agent's cgroup"
        );
    }
    // Another live, contained session with its own leftovers-to-be.
    let other_session = fresh_session("cg-other");
    let mut other = contained_agent(&mut env, &cgroup, "gemini", &other_session, "-");
    let others = plant_four(&mut env, &mut other, "b");
    let unrelated = env.sleeper();

    agent.order("end exit");
    agent.exit();
    if let Err(alive) = gone_within(&four, PATIENCE) {
        panic!(
            "still alive after the agent's clean exit: {alive:?}\n{:#?}",
            env.events()
        );
    }
    assert!(
        stopped_through_the_cgroup(&env, &four),
        "{:#?}",
        env.events()
    );
    assert!(
        alive_of(&others).len() == 4 && other.proc.alive() && unrelated.alive(),
        "another live session's processes and an unrelated one are untouched: {:?}",
        alive_of(&others)
    );
    assert!(
        wait_until(PATIENCE, || cgroup.children().len() == 1),
        "the gone agent's cgroup is removed, the live one's stays: {:?}",
        cgroup.children()
    );

    other.kill();
    if let Err(alive) = gone_within(&others, PATIENCE) {
        panic!("still alive after the other agent's SIGKILL: {alive:?}");
    }
    assert!(
        wait_until(PATIENCE, || cgroup.children().is_empty()),
        "no cgroup of ours remains: {:?}",
        cgroup.children()
    );
    assert!(unrelated.alive());
}

#[test]
fn a_gemini_like_agents_four_leftovers_go_within_a_second_of_its_sigkill_with_no_hook_or_sweep() {
    let Some(cgroup) = TestCgroup::new() else {
        return;
    };
    let mut env = Env::new();
    let session = fresh_session("cg-kill");
    let mut agent = contained_agent(&mut env, &cgroup, "gemini", &session, "-");
    let four = plant_four(&mut env, &mut agent, "k");
    let killed = Instant::now();
    agent.kill();
    match gone_within(&four, PATIENCE) {
        Ok(_) => {
            let took = killed.elapsed();
            eprintln!("four leftovers gone {took:?} after the agent's SIGKILL");
            assert!(took <= Duration::from_secs(1), "took {took:?}");
        }
        Err(alive) => panic!("still alive: {alive:?}\n{:#?}", env.events()),
    }
    assert!(stopped_through_the_cgroup(&env, &four));
    assert!(
        wait_until(PATIENCE, || cgroup.children().is_empty()),
        "{:?}",
        cgroup.children()
    );
}

#[test]
fn a_claude_like_agents_four_leftovers_go_after_its_sigkill() {
    let Some(cgroup) = TestCgroup::new() else {
        return;
    };
    let mut env = Env::new();
    let session = fresh_session("cg-claude");
    let mut agent = contained_agent(
        &mut env,
        &cgroup,
        "claude",
        &session,
        "CLAUDE_CODE_SESSION_ID",
    );
    let four = plant_four(&mut env, &mut agent, "c");
    agent.kill();
    if let Err(alive) = gone_within(&four, PATIENCE) {
        panic!("still alive: {alive:?}\n{:#?}", env.events());
    }
    assert!(stopped_through_the_cgroup(&env, &four));
    assert!(
        wait_until(PATIENCE, || cgroup.children().is_empty()),
        "{:?}",
        cgroup.children()
    );
}

/// With the sentinel off the hook moves the agent itself, and after a SIGKILL one sweep stops what the cgroup holds
/// and removes it.
#[test]
fn with_the_sentinel_off_the_hook_adopts_and_one_sweep_stops_the_four() {
    let Some(cgroup) = TestCgroup::new() else {
        return;
    };
    let mut env = Env::new();
    let session = fresh_session("cg-sweep");
    let mut agent = contained_agent_with(
        &mut env,
        &cgroup,
        "gemini",
        &session,
        "-",
        &["--sentinel", "off"],
    );
    let four = plant_four(&mut env, &mut agent, "w");
    agent.kill();
    assert_eq!(alive_of(&four).len(), 4, "nothing stops them but a sweep");
    let mut sweep = env.cmd(&["sweep"]);
    sweep.envs(cgroup.env());
    let out = crate::harness::run_bounded(sweep, None);
    assert!(out.status.success(), "{}", stdout(&out));
    if let Err(alive) = gone_within(&four, PATIENCE) {
        panic!("still alive after one sweep: {alive:?}\n{}", stdout(&out));
    }
    assert!(stopped_through_the_cgroup(&env, &four));
    assert!(
        wait_until(PATIENCE, || {
            let mut sweep = env.cmd(&["sweep"]);
            sweep.envs(cgroup.env());
            let _ = crate::harness::run_bounded(sweep, None);
            cgroup.children().is_empty()
        }),
        "no cgroup of ours remains: {:?}",
        cgroup.children()
    );
}

#[test]
fn a_broker_spawned_inside_a_session_and_shared_survives_that_sessions_end() {
    let Some(cgroup) = TestCgroup::new() else {
        return;
    };
    let mut env = Env::new();
    let workspace = env.workspace("ws");
    let session = fresh_session("cg-broker");
    let mut agent = contained_agent(&mut env, &cgroup, "gemini", &session, "-");
    let record = env.work_path("broker.json");
    agent.order(&format!(
        "run {BIN} --state-dir {} broker spawn --json --cwd {} --session {session} -- sleep 600 > {record}",
        env.state_dir().display(),
        workspace.display()
    ));
    assert!(
        wait_until(PATIENCE, || std::fs::read_to_string(&record)
            .is_ok_and(|text| serde_json::from_str::<Value>(&text).is_ok())),
        "broker spawn printed its record"
    );
    let printed: Value = serde_json::from_str(&std::fs::read_to_string(&record).unwrap()).unwrap();
    let broker = Proc::of(i32::try_from(printed["identity"]["pid"].as_i64().unwrap()).unwrap())
        .expect("the broker runs");
    env.track(broker);
    assert!(
        cgroup.holds(broker.pid, "broker-"),
        "the broker has a cgroup of its own, out of the session's: {:?}",
        TestCgroup::cgroup_of(broker.pid)
    );
    let second = fresh_session("cg-broker-b");
    let out = env.run(&[
        "broker",
        "attach",
        "--cwd",
        &workspace.to_string_lossy(),
        "--session",
        &second,
    ]);
    assert!(out.status.success(), "{}", stdout(&out));
    let four = plant_four(&mut env, &mut agent, "s");
    agent.kill();
    if let Err(alive) = gone_within(&four, PATIENCE) {
        panic!("still alive: {alive:?}");
    }
    assert!(
        broker.alive(),
        "a broker another session owns survives the first session's end"
    );
    let out = env.run(&[
        "broker",
        "detach",
        "--cwd",
        &workspace.to_string_lossy(),
        "--session",
        &second,
    ]);
    assert!(out.status.success(), "{}", stdout(&out));
    assert!(broker.gone_within(PATIENCE), "the last owner out stops it");
    // The sweep removes what is empty; an empty broker cgroup is left a moment for a spawn in flight.
    assert!(
        wait_until(PATIENCE, || {
            let mut sweep = env.cmd(&["sweep"]);
            sweep.envs(cgroup.env());
            let _ = crate::harness::run_bounded(sweep, None);
            cgroup.children().is_empty()
        }),
        "no cgroup of ours remains: {:?}",
        cgroup.children()
    );
}

#[test]
fn with_containment_off_the_session_says_so_and_no_cgroup_is_made() {
    let Some(cgroup) = TestCgroup::new() else {
        return;
    };
    let mut env = Env::new();
    let session = fresh_session("cg-off");
    let named = named_python(&env, "gemini");
    let root = cgroup.dir.to_string_lossy().into_owned();
    let mut agent = env.fake_agent_as(
        &named,
        &session,
        "-",
        &["--agent", "gemini", "--containment", "off"],
        &[
            ("SESSION_REAPER_CONTAINMENT", "on"),
            ("SESSION_REAPER_CGROUP_ROOT", &root),
        ],
    );
    agent.order("start");
    let containment = session_containment(&env, &session);
    assert_eq!(containment["mode"], "lineage", "{containment}");
    assert!(
        containment["why"]
            .as_str()
            .unwrap_or_default()
            .contains("switched off"),
        "{containment}"
    );
    assert!(cgroup.children().is_empty());
    agent.exit();
}

#[test]
fn doctor_and_status_say_which_mode_applies() {
    let Some(cgroup) = TestCgroup::new() else {
        return;
    };
    let mut env = Env::new();
    let session = fresh_session("cg-status");
    let mut agent = contained_agent(&mut env, &cgroup, "gemini", &session, "-");
    let four = plant_four(&mut env, &mut agent, "d");
    let mut doctor = env.cmd(&["doctor"]);
    doctor.envs(cgroup.env());
    let out = crate::harness::run_bounded(doctor, None);
    assert!(
        stdout(&out).lines().any(|line| line.contains("containment")
            && line.contains("available (cgroup v2, under SESSION_REAPER_CGROUP_ROOT")),
        "{}",
        stdout(&out)
    );
    let mut doctor = env.cmd(&["doctor"]);
    doctor.env("SESSION_REAPER_CONTAINMENT", "off");
    let out = crate::harness::run_bounded(doctor, None);
    assert!(
        stdout(&out)
            .lines()
            .any(|line| line.contains("containment") && line.contains("unavailable (switched off")),
        "{}",
        stdout(&out)
    );
    let status = env.status();
    let view = status["leftovers"]
        .as_array()
        .and_then(|sessions| sessions.iter().find(|s| s["session"] == session.as_str()))
        .cloned()
        .unwrap_or(Value::Null);
    assert_eq!(view["containment"]["mode"], "cgroup", "{status:#}");
    let held: Vec<i64> = view["containment"]["processes"]
        .as_array()
        .map(|procs| procs.iter().filter_map(|p| p["pid"].as_i64()).collect())
        .unwrap_or_default();
    for (kind, proc) in &four {
        assert!(
            held.contains(&i64::from(proc.pid)),
            "{kind} listed: {view:#}"
        );
    }
    let text = stdout(&env.run(&["status"]));
    assert!(
        text.contains("; cgroup agent-") && text.contains(" process"),
        "status names the cgroup and what it holds: {text}"
    );
    agent.kill();
    assert!(gone_within(&four, PATIENCE).is_ok());
}
