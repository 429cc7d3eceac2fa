//! The sweep issue: `sweep` (crashed agents, opt-in idle TTLs, overdue stop tickets, unrecorded brokers, duplicate
//! writers, tombstones, dry runs), `reap --all`, `log` filters and the ready-made hook files — all driving the real
//! binary against real processes, under a concurrent stress of hooks, spawns and sweeps.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use crate::harness::{
    BIN, Env, PATIENCE, Proc, named_python, run_bounded, scrub_env, stderr, stdout, wait_until,
};
use crate::hook_test::HookTest;
use crate::setup::assert_cli_accepts;

/// An id no other test (nor another run) uses: the resume scans look at every process of the machine.
pub(crate) fn unique_id(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!(
        "{prefix}-{}-{nanos:x}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst)
    )
}

fn parse(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|err| {
        panic!(
            "expected JSON on stdout ({err}): {}\nstderr: {}",
            stdout(out),
            stderr(out)
        )
    })
}

/// Runs a hook the way an agent does, with no sentinel: the sweep is the safety net under test.
pub(crate) fn hook(
    env: &mut Env,
    event: &str,
    session: &str,
    cwd: &Path,
    owner: Option<Proc>,
) -> Output {
    let test = HookTest::new(event, session, cwd).no_sentinel();
    match owner {
        Some(owner) => test.owner(owner),
        None => test,
    }
    .run(env)
}

/// `SessionStart` with `owner` as the agent process; checks that the session was recorded with its identity.
pub(crate) fn start_session(env: &mut Env, session: &str, cwd: &Path, owner: Proc) {
    hook(env, "SessionStart", session, cwd, Some(owner));
    let record = env
        .session_record(session)
        .expect("SessionStart recorded the session");
    assert_eq!(record["agent_identity"]["pid"], owner.pid, "{record}");
}

fn end_session(env: &mut Env, session: &str, cwd: &Path) {
    hook(env, "SessionEnd", session, cwd, None);
}

/// The broker identity a printed record names.
fn proc_in(record: &Value) -> Proc {
    Proc {
        pid: i32::try_from(record["identity"]["pid"].as_i64().unwrap()).unwrap(),
        ticks: record["identity"]["start_ticks"].as_u64().unwrap(),
    }
}

/// `sweep --json` with extra flags: exit code and report.
pub(crate) fn sweep(env: &mut Env, flags: &[&str]) -> (Option<i32>, Value) {
    let mut args = vec!["sweep", "--json"];
    args.extend_from_slice(flags);
    let out = env.run(&args);
    (out.status.code(), parse(&out))
}

pub(crate) fn actions<'a>(report: &'a Value, action: &str, reason: Option<&str>) -> Vec<&'a Value> {
    report["actions"]
        .as_array()
        .expect("actions")
        .iter()
        .filter(|a| a["action"] == action && reason.is_none_or(|r| a["reason"] == r))
        .collect()
}

/// Every `broker.json` path under the state root.
fn record_paths(state: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let Ok(workspaces) = std::fs::read_dir(state.join("workspaces")) else {
        return found;
    };
    for workspace in workspaces.flatten() {
        for slot in std::fs::read_dir(workspace.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            let record = slot.path().join("broker.json");
            if record.is_file() {
                found.push(record);
            }
        }
    }
    found
}

fn pending_tickets(state: &Path) -> Vec<Value> {
    std::fs::read_dir(state.join("stopping"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "json"))
        .filter_map(|path| serde_json::from_slice(&std::fs::read(path).ok()?).ok())
        .collect()
}

/// The argv of a live process.
fn cmdline(pid: i32) -> Option<Vec<String>> {
    let bytes = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(
        bytes
            .split(|b| *b == 0)
            .filter(|arg| !arg.is_empty())
            .map(|arg| String::from_utf8_lossy(arg).into_owned())
            .collect(),
    )
}

fn all_pids() -> Vec<i32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse().ok())
        .collect()
}

/// Live processes in process group `pgid`.
fn group_of(pgid: i32) -> Vec<Proc> {
    all_pids()
        .into_iter()
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|text| {
                let rest = &text[text.rfind(')').map_or(0, |i| i + 1)..];
                rest.split_whitespace().nth(2) == Some(&pgid.to_string())
            })
        })
        .filter_map(Proc::of)
        .collect()
}

/// Waits, polling, until `instant` has passed.
fn wait_past(instant: Instant) {
    assert!(wait_until(
        instant.saturating_duration_since(Instant::now()) + PATIENCE,
        || Instant::now() >= instant
    ));
}

/// The fake agent of test 1: a python process that runs the `SessionStart` hook and `broker spawn` (without
/// `--session`) as its children, reports the spawn, and sleeps.
const FAKE_AGENT: &str = r#"
import json, os, subprocess, sys, time
exe, state, ws, session, report = sys.argv[1:6]
payload = json.dumps({"session_id": session, "hook_event_name": "SessionStart", "cwd": ws})
subprocess.run([exe, "--state-dir", state, "hook", "--agent", "claude", "--sentinel", "off"], input=payload.encode(), check=True)
spawn = subprocess.run([exe, "--state-dir", state, "broker", "spawn", "--json", "--cwd", ws, "--", "sleep", "600"],
                       capture_output=True)
with open(report + ".tmp", "w") as f:
    json.dump({"code": spawn.returncode, "stdout": spawn.stdout.decode(), "stderr": spawn.stderr.decode()}, f)
os.rename(report + ".tmp", report)
time.sleep(600)
"#;

#[test]
fn sweep_stops_the_broker_of_a_sigkilled_agent_with_reason_owners_gone() {
    let mut env = Env::new();
    let ws = env.workspace("app");
    let session = unique_id("crashed");
    let report = env.work.path().join("agent-report.json");
    // Named like an agent: only a recognised agent above the hook is the session's agent.
    let mut agent = Command::new(named_python(&env, "claude"));
    scrub_env(&mut agent);
    agent
        .arg("-c")
        .arg(FAKE_AGENT)
        .arg(BIN)
        .arg(env.state_dir())
        .arg(&ws)
        .arg(&session)
        .arg(&report)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let agent = env.spawn(agent);
    assert!(
        wait_until(PATIENCE, || report.exists()),
        "the fake agent never reported"
    );
    let spawned: Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    assert_eq!(
        spawned["code"], 0,
        "spawn inside the agent failed: {spawned}"
    );
    let record: Value = serde_json::from_str(spawned["stdout"].as_str().unwrap()).unwrap();
    let broker = proc_in(&record);
    env.track(broker);
    assert_eq!(
        record["owners"][0]["session"], session,
        "the owner is found by ancestry"
    );
    assert_eq!(
        env.session_record(&session).unwrap()["agent_identity"]["pid"],
        agent.pid,
        "the agent is the recognised agent above the hook"
    );

    let (code, live) = sweep(&mut env, &[]);
    assert_eq!(code, Some(0));
    assert!(
        live["actions"].as_array().unwrap().is_empty(),
        "a live agent's broker is left alone: {live}"
    );
    assert!(broker.alive());

    agent.kill();
    env.reap_children();
    assert!(agent.gone_within(PATIENCE));
    let (code, report) = sweep(&mut env, &[]);
    assert_eq!(code, Some(0), "{report}");
    let ended = actions(&report, "end_session", Some("owners_gone"));
    assert_eq!(ended.len(), 1, "{report}");
    assert_eq!(ended[0]["target"], session);
    assert!(
        broker.gone_within(PATIENCE),
        "the orphaned broker was stopped"
    );
    let stops = env.events_where("stop", Some("owners_gone"));
    assert!(
        stops
            .iter()
            .any(|e| e["pid"] == broker.pid && e["result"] == "stopped"),
        "events: {stops:?}"
    );
    assert!(env.records().is_empty());
    assert!(
        env.session_record(&session).unwrap()["ended_at"].is_string(),
        "the session is marked ended"
    );
}

#[test]
fn broker_idle_ttl_applies_with_a_live_owner_and_touch_resets_the_clock() {
    const TTL: Duration = Duration::from_secs(2);
    /// Timestamps are stored to the millisecond and compared with a different clock: a little slack.
    const SLACK: Duration = Duration::from_millis(50);
    let mut env = Env::new();
    let ws = env.workspace("app");
    let owner = env.sleeper();
    start_session(&mut env, "idler", &ws, owner);

    // last_active lies between `began` (before the command) and `done` (after it).
    let began = Instant::now();
    let (broker, _) = env.spawn_broker_with(&ws, "idler", &["--idle-ttl", "2s"], &["sleep", "600"]);
    let mut done = Instant::now();
    let mut began = began;
    let mut proved_early_keep = false;
    for _ in 0..5 {
        let (code, report) = sweep(&mut env, &[]);
        assert_eq!(code, Some(0));
        if began.elapsed() < TTL {
            assert!(actions(&report, "stop", None).is_empty(), "{report}");
            assert!(broker.alive(), "stopped before its idle TTL");
            proved_early_keep = true;
            break;
        }
        // Too slow a machine to prove anything this round: reset the clock and look again.
        began = Instant::now();
        assert!(
            env.run(&["broker", "touch", "--cwd", ws.to_str().unwrap()])
                .status
                .success()
        );
        done = Instant::now();
    }
    assert!(
        proved_early_keep,
        "never managed a sweep within 2 s of activity"
    );

    // Idle past the TTL, but touched: the sweep right after the touch keeps it.
    wait_past(done + TTL + SLACK);
    let mut proved_touch_keeps = false;
    for _ in 0..5 {
        began = Instant::now();
        let touch = env.run(&["broker", "touch", "--cwd", ws.to_str().unwrap()]);
        assert!(touch.status.success(), "{}", stderr(&touch));
        done = Instant::now();
        let (code, report) = sweep(&mut env, &[]);
        assert_eq!(code, Some(0));
        if began.elapsed() < TTL {
            assert!(
                actions(&report, "stop", None).is_empty(),
                "a touch resets the idle clock: {report}"
            );
            assert!(broker.alive());
            proved_touch_keeps = true;
            break;
        }
    }
    assert!(
        proved_touch_keeps,
        "never managed a sweep within 2 s of a touch"
    );

    // The first sweep after 2 s of idleness stops it, though its owner lives: the broker opted in.
    wait_past(done + TTL + SLACK);
    let (code, report) = sweep(&mut env, &[]);
    assert_eq!(code, Some(0), "{report}");
    assert_eq!(
        actions(&report, "stop", Some("idle_timeout")).len(),
        1,
        "{report}"
    );
    assert!(broker.gone_within(PATIENCE));
    assert!(
        env.events_where("stop", Some("idle_timeout"))
            .iter()
            .any(|e| e["pid"] == broker.pid && e["result"] == "stopped")
    );
    assert!(owner.alive(), "the owner itself is never touched");
}

/// The detached finisher of this test's state root, once it has exec'd.
fn finisher_of(env: &Env) -> Option<Proc> {
    let root = env.state_dir().to_string_lossy().into_owned();
    all_pids().into_iter().find_map(|pid| {
        let argv = cmdline(pid)?;
        let ours = argv.iter().any(|a| a == "finish") && argv.iter().any(|a| a.contains(&root));
        ours.then(|| Proc::of(pid)).flatten()
    })
}

#[test]
fn sweep_sigkills_a_term_ignoring_broker_whose_finisher_was_killed_and_drops_its_ticket() {
    const GRACE: Duration = Duration::from_secs(5);
    let mut env = Env::new();
    let ws = env.workspace("app");
    let owner = env.sleeper();
    start_session(&mut env, "stubborn-owner", &ws, owner);
    let (broker, _) = env.spawn_broker_with(
        &ws,
        "stubborn-owner",
        &["--grace", "5s"],
        &["sh", "-c", "trap '' TERM; sleep 600 & wait"],
    );
    assert!(
        wait_until(PATIENCE, || group_of(broker.pid).len() >= 2),
        "the broker's child started"
    );
    let group = group_of(broker.pid);
    for member in &group {
        env.track(*member);
    }

    end_session(&mut env, "stubborn-owner", &ws);
    // The hook sent SIGTERM before it returned: the grace is over by `returned + GRACE` at the latest.
    let returned = Instant::now();
    let finisher = {
        let mut found = None;
        assert!(
            wait_until(PATIENCE, || {
                found = finisher_of(&env);
                found.is_some()
            }),
            "the hook handed the stop to a finisher"
        );
        found.unwrap()
    };
    finisher.kill();
    assert!(finisher.gone_within(PATIENCE));
    assert!(
        returned.elapsed() < GRACE,
        "too slow to beat the finisher: the test proves nothing"
    );
    let tickets = pending_tickets(env.state_dir());
    assert_eq!(
        tickets.len(),
        1,
        "the ticket outlives its finisher: {tickets:?}"
    );
    assert!(
        tickets[0]["term_at"].is_string(),
        "SIGTERM was sent: {}",
        tickets[0]
    );
    assert!(
        tickets[0].get("kill_at").is_none(),
        "the finisher had not escalated: {}",
        tickets[0]
    );
    assert!(
        group.iter().all(|member| member.alive()),
        "SIGTERM was ignored"
    );

    wait_past(returned + GRACE + Duration::from_millis(100));
    let (code, report) = sweep(&mut env, &[]);
    assert_eq!(code, Some(0), "{report}");
    let stops = report["stops"].as_array().unwrap();
    assert_eq!(stops.len(), 1, "{report}");
    assert_eq!(stops[0]["outcome"]["result"], "stopped", "{report}");
    assert!(
        stops[0]["outcome"]["by"]
            .as_str()
            .unwrap()
            .contains("SIGKILL"),
        "{report}"
    );
    for member in &group {
        assert!(
            member.gone_within(PATIENCE),
            "{member:?} of the broker's group survived"
        );
    }
    assert!(
        pending_tickets(env.state_dir()).is_empty(),
        "the ticket is removed once the process is gone"
    );
    assert!(
        env.events_where("stop", Some("session_end"))
            .iter()
            .any(|e| e["pid"] == broker.pid && e["result"] == "stopped")
    );
    assert!(owner.alive());
}

/// What one session of the stress test did.
struct SessionRun {
    id: String,
    slot: usize,
    /// The broker `broker spawn` or `broker attach` reported, when it succeeded.
    broker: Option<Proc>,
    /// It joined a live broker rather than starting one.
    reused: bool,
    ended: bool,
}

/// One session's life in the stress test: `SessionStart`, join the slot's broker (odd threads try `broker attach`
/// first, refused while the slot is empty), and `SessionEnd` unless it is one that never ends.
fn stress_session(
    env: &Env,
    id: String,
    slot: usize,
    ws: &Path,
    agent: Proc,
    attach_first: bool,
    end: bool,
) -> SessionRun {
    HookTest::new("SessionStart", &id, ws).owner(agent).run(env);
    let ws_text = ws.to_str().unwrap();
    let attach = || {
        let args = ["broker", "attach", "--cwd", ws_text, "--session", &id];
        Some(run_bounded(env.cmd(&args), None)).filter(|out| out.status.success())
    };
    let spawn = || {
        let args = [
            "broker",
            "spawn",
            "--cwd",
            ws_text,
            "--session",
            &id,
            "--",
            "sleep",
            "600",
        ];
        Some(run_bounded(env.cmd(&args), None)).filter(|out| out.status.success())
    };
    let joined = if attach_first {
        attach().or_else(spawn)
    } else {
        spawn()
    };
    let broker = joined.as_ref().map(|out| proc_in(&parse(out)));
    let reused = joined.is_some_and(|out| parse(&out)["reused"] == true);
    if end {
        HookTest::new("SessionEnd", &id, ws).run(env);
    }
    SessionRun {
        id,
        slot,
        broker,
        reused,
        ended: end,
    }
}

#[test]
#[allow(clippy::too_many_lines)] // one scenario, checked from every side
fn concurrent_sessions_spawns_ends_and_sweeps_lose_no_owner_and_leak_no_broker() {
    const THREADS: usize = 30;
    const SLOTS: usize = 5;
    // Threads 0, 1, 2, 5, 6, 7 run one session that never ends: slots 0-2 keep two owners each. The other
    // threads run two sessions in turn (as after `/clear`), each ending: slots 3-4 empty out and respawn.
    let keeps = |i: usize| i % SLOTS < 3 && i < 2 * SLOTS;
    let mut env = Env::new();
    let workspaces: Vec<PathBuf> = (0..SLOTS)
        .map(|k| env.workspace(&format!("ws{k}")))
        .collect();
    let agents: Vec<Proc> = (0..THREADS).map(|_| env.sleeper()).collect();
    let stop_sweeping = AtomicBool::new(false);

    let (runs, sweeps) = std::thread::scope(|scope| {
        let env = &env;
        let stop_sweeping = &stop_sweeping;
        let sweeper = scope.spawn(move || {
            let mut reports = Vec::new();
            while !stop_sweeping.load(Ordering::SeqCst) {
                reports.push(run_bounded(env.cmd(&["sweep", "--json"]), None));
            }
            reports
        });
        let threads: Vec<_> = (0..THREADS)
            .map(|index| {
                let (slot, agent) = (index % SLOTS, agents[index]);
                let ws = &workspaces[slot];
                scope.spawn(move || {
                    let rounds = if keeps(index) { 1 } else { 2 };
                    (0..rounds)
                        .map(|round| {
                            let id = format!("stress-{index:02}-{round}");
                            stress_session(env, id, slot, ws, agent, index % 2 == 1, !keeps(index))
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let runs: Vec<SessionRun> = threads
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        stop_sweeping.store(true, Ordering::SeqCst);
        (runs, sweeper.join().unwrap())
    });
    for run in &runs {
        if let Some(broker) = run.broker {
            env.track(broker);
        }
    }
    let failed: Vec<&str> = runs
        .iter()
        .filter(|r| r.broker.is_none())
        .map(|r| r.id.as_str())
        .collect();
    assert!(failed.is_empty(), "joining a broker failed for {failed:?}");
    assert!(!sweeps.is_empty());
    assert!(
        runs.iter().filter(|r| r.reused).count() >= SLOTS,
        "sessions shared brokers"
    );

    // Quiescence: one more sweep finishes any end a busy slot delayed, then every ticket completes.
    let (code, last) = sweep(&mut env, &[]);
    assert_eq!(code, Some(0), "{last}");
    assert!(
        wait_until(PATIENCE, || pending_tickets(env.state_dir()).is_empty()),
        "stop tickets left: {:?}",
        pending_tickets(env.state_dir())
    );

    // No owner lost, none left behind: each slot's owners are exactly the sessions that joined it and live on.
    let records = env.records();
    for (k, ws) in workspaces.iter().enumerate() {
        let expected: BTreeSet<&str> = runs
            .iter()
            .filter(|r| r.slot == k && !r.ended)
            .map(|r| r.id.as_str())
            .collect();
        let record = records.get(&format!("{}/default", ws.display()));
        let actual: BTreeSet<&str> = record
            .map(|r| {
                r["owners"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|o| o["session"].as_str().unwrap())
                    .collect()
            })
            .unwrap_or_default();
        assert_eq!(actual, expected, "owners of slot {k}: {record:?}");
        if let Some(record) = record {
            assert!(proc_in(record).alive(), "slot {k} records a dead broker");
        }
    }

    // No broker stopped under a live owner: every session still running holds a live broker.
    for run in runs.iter().filter(|r| !r.ended) {
        let broker = run.broker.unwrap();
        assert!(
            broker.alive(),
            "session {} lost its broker {broker:?}",
            run.id
        );
    }
    let mut stop_reasons: HashMap<String, usize> = HashMap::new();
    for event in env.events_where("stop", None) {
        *stop_reasons
            .entry(event["reason"].as_str().unwrap_or("-").to_owned())
            .or_default() += 1;
    }
    assert!(
        stop_reasons.keys().all(|reason| reason == "session_end"),
        "only session ends stop brokers here: {stop_reasons:?}"
    );
    for out in &sweeps {
        let report: Value =
            serde_json::from_slice(&out.stdout).unwrap_or_else(|_| panic!("sweep output: {out:?}"));
        let acted: Vec<&Value> = report["actions"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| {
                a["action"] == "stop" || a["action"] == "end_session" || a["action"] == "prune"
            })
            .filter(|a| a["reason"] != "session_end")
            .collect();
        assert!(acted.is_empty(), "a sweep misjudged a live slot: {report}");
    }

    // Nothing spawned is left without a record: every reported broker is recorded in a slot, or dead.
    let recorded: Vec<Proc> = env.records().values().map(proc_in).collect();
    for run in &runs {
        let broker = run.broker.unwrap();
        assert!(
            !broker.alive() || recorded.contains(&broker),
            "broker {broker:?} of session {} runs unrecorded",
            run.id
        );
    }
    assert!(agents.iter().all(|agent| agent.alive()));
}

#[test]
fn sweep_default_idle_ttl_stops_a_broker_with_no_owner_known_alive_and_0_disables_it() {
    let mut env = Env::new();
    let (app, docs) = (env.workspace("app"), env.workspace("docs"));
    let agent = env.sleeper();
    start_session(&mut env, "idle-live", &docs, agent);
    // An owner with no session record (its hooks never ran) is never judged dead, only idle.
    let unknown = env.spawn_broker(&app, "idle-unknown", &["sleep", "600"]);
    let kept = env.spawn_broker(&docs, "idle-live", &["sleep", "600"]);
    let spawned = Instant::now();
    wait_past(spawned + Duration::from_millis(1100));

    let (code, report) = sweep(&mut env, &["--idle-ttl", "0s"]);
    assert_eq!(code, Some(0), "{report}");
    assert_eq!(report["policy"]["idle_ttl_secs"], 0);
    assert!(
        report["actions"].as_array().unwrap().is_empty(),
        "0 disables: {report}"
    );

    let (code, report) = sweep(&mut env, &["--idle-ttl", "1s"]);
    assert_eq!(code, Some(0), "{report}");
    let stops = actions(&report, "stop", Some("idle_timeout"));
    assert_eq!(stops.len(), 1, "{report}");
    assert_eq!(stops[0]["pid"], unknown.pid);
    assert!(actions(&report, "end_session", None).is_empty(), "{report}");
    assert!(unknown.gone_within(PATIENCE));
    assert!(
        kept.alive(),
        "a broker whose owner's agent runs is no idle orphan"
    );
    assert!(agent.alive());
}

#[test]
fn reap_all_with_reason_shutdown_stops_every_broker_of_every_live_session() {
    let mut env = Env::new();
    let (app, docs) = (env.workspace("app"), env.workspace("docs"));
    let (agent_a, agent_b) = (env.sleeper(), env.sleeper());
    start_session(&mut env, "drain-a", &app, agent_a);
    start_session(&mut env, "drain-b", &docs, agent_b);
    let shared = env.spawn_broker(&app, "drain-a", &["sleep", "600"]);
    assert_eq!(env.spawn_broker(&app, "drain-b", &["sleep", "600"]), shared);
    let (lsp, _) = env.spawn_broker_with(&app, "drain-a", &["--name", "lsp"], &["sleep", "600"]);
    let docs_broker = env.spawn_broker(&docs, "drain-b", &["sleep", "600"]);

    let out = env.run(&[
        "reap",
        "--all",
        "--reason",
        "shutdown",
        "--deadline",
        "2s",
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let report = parse(&out);
    assert_eq!(report["sessions"].as_array().unwrap().len(), 2, "{report}");
    for broker in [shared, lsp, docs_broker] {
        assert!(
            broker.gone_within(PATIENCE),
            "{broker:?} survived the drain"
        );
        // A stop the drain handed to the finisher is logged once the finisher closes its ticket.
        assert!(
            wait_until(PATIENCE, || env
                .events_where("stop", Some("shutdown"))
                .iter()
                .any(|e| e["pid"] == broker.pid && e["result"] == "stopped")),
            "no shutdown stop logged for {broker:?}"
        );
    }
    for session in ["drain-a", "drain-b"] {
        let record = env.session_record(session).unwrap();
        assert_eq!(record["end_reason"], "shutdown", "{record}");
        assert!(
            env.events_where("session_end", Some("shutdown"))
                .iter()
                .any(|e| e["session"] == session)
        );
    }
    assert!(env.records().is_empty());
    assert!(
        agent_a.alive() && agent_b.alive(),
        "the agents themselves are not ours to stop"
    );
}

#[test]
fn sweep_refuses_an_idle_ttl_beyond_30_days_and_changes_nothing() {
    let mut env = Env::new();
    let ws = env.workspace("app");
    let owner = env.sleeper();
    start_session(&mut env, "ttl-check", &ws, owner);
    let before = env.state_files();
    let out = env.run(&["sweep", "--idle-ttl", "40days"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--idle-ttl"), "{}", stderr(&out));
    assert_eq!(
        crate::harness::error_lines(&stderr(&out)),
        1,
        "one line: {}",
        stderr(&out)
    );
    assert!(out.stdout.is_empty());
    assert_eq!(env.state_files(), before);
    let out = env.run(&["sweep", "-v", "--idle-ttl", "30days"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stdout(&out).starts_with("policy: idle ttl 30days"),
        "-v states the policy: {}",
        stdout(&out)
    );
}

#[test]
fn sweep_dry_run_reports_what_it_would_do_and_changes_nothing() {
    let mut env = Env::new();
    let (app, docs) = (env.workspace("app"), env.workspace("docs"));
    // A crashed session's broker, an unrecorded broker, an ended session's tombstone.
    let crashed = env.sleeper();
    start_session(&mut env, "dry-crashed", &app, crashed);
    let orphan = env.spawn_broker(&app, "dry-crashed", &["sleep", "600"]);
    let keeper = env.sleeper();
    start_session(&mut env, "dry-keeper", &docs, keeper);
    let lost = env.spawn_broker(&docs, "dry-keeper", &["sleep", "600"]);
    let docs_record = env
        .records()
        .get(&format!("{}/default", docs.display()))
        .cloned()
        .unwrap();
    assert_eq!(proc_in(&docs_record), lost);
    let lost_path = record_paths(env.state_dir())
        .into_iter()
        .find(|p| {
            serde_json::from_slice::<Value>(&std::fs::read(p).unwrap()).unwrap()["identity"]["pid"]
                == lost.pid
        })
        .unwrap();
    std::fs::remove_file(lost_path).unwrap();
    let tomb = env.sleeper();
    start_session(&mut env, "dry-tomb", &docs, tomb);
    end_session(&mut env, "dry-tomb", &docs);
    let ended = Instant::now();
    crashed.kill();
    env.reap_children();
    wait_past(ended + Duration::from_millis(1100));

    let before = env.state_files();
    let (code, report) = sweep(&mut env, &["--dry-run", "--retention", "1s"]);
    assert_eq!(code, Some(0), "{report}");
    assert_eq!(report["policy"]["dry_run"], true);
    assert_eq!(report["policy"]["retention_secs"], 1);
    assert_eq!(report["policy"]["idle_ttl_secs"], 1800);
    assert_eq!(report["policy"]["stuck_after_kills"], 3);
    let would = |action: &str, reason: Option<&str>, target: &str| {
        actions(&report, action, reason).iter().any(|a| {
            a["target"].as_str().unwrap().contains(target)
                && a["result"].as_str().unwrap().starts_with("would")
        })
    };
    assert!(
        would("end_session", Some("owners_gone"), "dry-crashed"),
        "{report}"
    );
    assert!(
        actions(&report, "stop", Some("owners_gone"))
            .iter()
            .any(|a| a["pid"] == orphan.pid && a["result"] == "would stop"),
        "{report}"
    );
    assert!(
        would("stop", Some("unrecorded"), docs.to_str().unwrap()),
        "{report}"
    );
    assert!(would("clean", None, "dry-tomb"), "{report}");
    assert_eq!(env.state_files(), before, "a dry run writes nothing");
    assert!(orphan.alive() && lost.alive(), "a dry run signals nothing");

    // The same sweep for real does what the dry run said.
    let (code, report) = sweep(&mut env, &["--retention", "1s"]);
    assert_eq!(code, Some(0), "{report}");
    assert!(orphan.gone_within(PATIENCE) && lost.gone_within(PATIENCE));
    assert!(env.session_record("dry-tomb").is_none());
    assert!(keeper.alive() && tomb.alive());
}

#[test]
fn sweep_stops_an_unrecorded_broker_of_its_own_state_root_only() {
    let mut env = Env::new();
    let mut other = Env::new();
    let ws = env.workspace("app");
    let other_ws = other.workspace("app");
    let (owner, other_owner) = (env.sleeper(), other.sleeper());
    start_session(&mut env, "lost-record", &ws, owner);
    start_session(&mut other, "lost-record", &other_ws, other_owner);
    let mine = env.spawn_broker(&ws, "lost-record", &["sleep", "600"]);
    let theirs = other.spawn_broker(&other_ws, "lost-record", &["sleep", "600"]);
    for state in [env.state_dir(), other.state_dir()] {
        let paths = record_paths(state);
        assert_eq!(paths.len(), 1);
        std::fs::remove_file(&paths[0]).unwrap();
    }

    let (code, report) = sweep(&mut env, &[]);
    assert_eq!(code, Some(0), "{report}");
    let stops = actions(&report, "stop", Some("unrecorded"));
    assert_eq!(stops.len(), 1, "{report}");
    assert_eq!(stops[0]["pid"], mine.pid);
    assert!(mine.gone_within(PATIENCE));
    assert!(
        env.events_where("stop", Some("unrecorded"))
            .iter()
            .any(|e| e["pid"] == mine.pid && e["result"] == "stopped")
    );
    let stopped = env.events_where("stop", Some("unrecorded"));
    assert_eq!(stopped[0]["workspace"], ws.to_str().unwrap(), "{stopped:?}");
    assert_eq!(stopped[0]["name"], "default", "{stopped:?}");
    assert!(
        theirs.alive(),
        "another state root's broker is not this sweep's"
    );
    assert!(other.events_where("stop", None).is_empty());

    // Its own sweep does stop it: it was as unrecorded there as ours was here.
    let (code, report) = sweep(&mut other, &[]);
    assert_eq!(code, Some(0), "{report}");
    assert!(theirs.gone_within(PATIENCE));
    assert!(owner.alive() && other_owner.alive());
}

#[test]
fn sweep_reports_duplicate_resume_writers_of_a_live_session_without_killing_them() {
    let mut env = Env::new();
    let ws = env.workspace("app");
    let session = unique_id("dup");
    let agent = env.sleeper();
    start_session(&mut env, &session, &ws, agent);
    let writers: Vec<Proc> = (0..2)
        .map(|_| {
            let mut command = Command::new(named_python(&env, "claude"));
            command
                .args(["-c", "import time; time.sleep(600)", "--resume", &session])
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            env.spawn(command)
        })
        .collect();
    // A vfork'd child can be seen before exec has set up its new argv: wait until both show `--resume`.
    for writer in &writers {
        assert!(wait_until(PATIENCE, || cmdline(writer.pid)
            .is_some_and(|argv| argv.contains(&session))));
    }

    let (code, report) = sweep(&mut env, &[]);
    assert_eq!(code, Some(0), "{report}");
    let reported = actions(&report, "duplicate_writers", None);
    assert_eq!(reported.len(), 1, "{report}");
    assert_eq!(reported[0]["target"], session);
    let events = env.events_where("duplicate_writers", None);
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["session"], session);
    let detail = events[0]["detail"].as_str().unwrap();
    for writer in &writers {
        assert!(detail.contains(&writer.pid.to_string()), "{detail}");
    }
    assert!(writers.iter().all(|w| w.alive()), "reported, never killed");
    assert!(env.events_where("stop", None).is_empty());
    assert!(pending_tickets(env.state_dir()).is_empty());
}

#[test]
fn sweep_drops_a_tombstone_past_its_retention_and_keeps_live_sessions() {
    let mut env = Env::new();
    let ws = env.workspace("app");
    let (gone, live) = (env.sleeper(), env.sleeper());
    start_session(&mut env, "tomb-ended", &ws, gone);
    start_session(&mut env, "tomb-live", &ws, live);
    end_session(&mut env, "tomb-ended", &ws);
    let ended = Instant::now();
    assert!(env.session_record("tomb-ended").unwrap()["ended_at"].is_string());

    let (code, report) = sweep(&mut env, &[]);
    assert_eq!(code, Some(0));
    assert!(
        actions(&report, "clean", None).is_empty(),
        "kept for 7 days by default: {report}"
    );
    assert!(env.session_record("tomb-ended").is_some());

    wait_past(ended + Duration::from_millis(1100));
    let (code, report) = sweep(&mut env, &["--retention", "1s"]);
    assert_eq!(code, Some(0), "{report}");
    let cleaned = actions(&report, "clean", None);
    assert_eq!(cleaned.len(), 1, "{report}");
    assert_eq!(cleaned[0]["target"], "tomb-ended");
    assert!(env.session_record("tomb-ended").is_none());
    assert!(
        env.session_record("tomb-live").is_some(),
        "a live session is no tombstone"
    );
}

#[test]
fn log_filters_by_session_action_and_age_in_text_and_json() {
    let mut env = Env::new();
    let ws = env.workspace("app");
    let (a, b) = (env.sleeper(), env.sleeper());
    start_session(&mut env, "log-a", &ws, a);
    start_session(&mut env, "log-b", &ws, b);
    let broker = env.spawn_broker(&ws, "log-a", &["sleep", "600"]);
    end_session(&mut env, "log-a", &ws);
    assert!(broker.gone_within(PATIENCE));
    // An old event, for --since.
    let old = json!({"ts": "2020-01-01T00:00:00.000Z", "action": "stop", "reason": "manual",
                     "session": "log-a", "result": "stopped"});
    let mut text = std::fs::read_to_string(env.state_dir().join("events.jsonl")).unwrap();
    text.push_str(&old.to_string());
    text.push('\n');
    std::fs::write(env.state_dir().join("events.jsonl"), text).unwrap();
    let logged = |env: &mut Env, args: &[&str]| -> Vec<Value> {
        let mut all = vec!["log", "--json"];
        all.extend_from_slice(args);
        let out = env.run(&all);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        // JSON Lines: one event a line.
        stdout(&out)
            .lines()
            .map(|line| serde_json::from_str(line).expect("one JSON event a line"))
            .collect()
    };

    let everything = logged(&mut env, &[]);
    assert_eq!(everything.len(), env.events().len());
    let of_a = logged(&mut env, &["--session", "log-a"]);
    assert!(of_a.iter().all(|e| e["session"] == "log-a"), "{of_a:?}");
    let kinds: BTreeSet<&str> = of_a.iter().map(|e| e["action"].as_str().unwrap()).collect();
    for kind in [
        "session_start",
        "spawn",
        "owner_remove",
        "session_end",
        "stop",
    ] {
        assert!(kinds.contains(kind), "{kind} missing from {kinds:?}");
    }
    let starts = logged(&mut env, &["--action", "session_start"]);
    assert!(starts.iter().all(|e| e["action"] == "session_start"));
    let sessions: BTreeSet<&str> = starts
        .iter()
        .map(|e| e["session"].as_str().unwrap())
        .collect();
    assert_eq!(sessions, BTreeSet::from(["log-a", "log-b"]));
    assert!(logged(&mut env, &["--session", "log-b", "--action", "spawn"]).is_empty());
    let recent = logged(&mut env, &["--session", "log-a", "--since", "1h"]);
    assert_eq!(
        recent.len() + 1,
        of_a.len(),
        "--since leaves out the 2020 event"
    );
    assert!(recent.iter().all(|e| e["ts"] != "2020-01-01T00:00:00.000Z"));

    let out = env.run(&["log", "--session", "log-a"]);
    assert_eq!(out.status.code(), Some(0));
    // A header, then one line an event.
    let lines: Vec<String> = stdout(&out).lines().skip(1).map(str::to_owned).collect();
    assert_eq!(lines.len(), of_a.len());
    assert!(lines.iter().all(|line| line.contains("log-a")), "{lines:?}");
    let out = env.run(&["log", "--session", "../x"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "an invalid session id is bad input"
    );
}

/// The arguments (after the program) of a command line, up to a shell redirection; the program's basename.
fn program_and_args(line: &str) -> (String, Vec<String>) {
    let words = crate::setup::shell_words(line);
    let (program, rest) = words.split_first().expect("a command");
    let args = rest
        .iter()
        .take_while(|word| {
            !word.starts_with('>') && !word.starts_with("2>") && !word.starts_with('|')
        })
        .cloned()
        .collect();
    (program.rsplit('/').next().unwrap().to_owned(), args)
}

#[test]
fn every_ready_made_hook_file_names_commands_our_cli_accepts() {
    let hooks = Path::new(env!("CARGO_MANIFEST_DIR")).join("hooks");
    let mut checked: Vec<String> = Vec::new();
    let mut stack = vec![hooks];
    let state = tempfile::tempdir().unwrap();
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            let extension = path.extension().map(|e| e.to_string_lossy().into_owned());
            if name == "plugin.json" {
                continue; // Goose's plugin manifest beside its hooks file: no commands.
            }
            let lines: Vec<String> = if extension.as_deref() == Some("json") {
                let value: Value = serde_json::from_str(&text)
                    .unwrap_or_else(|err| panic!("{}: {err}", path.display()));
                let commands = session_reaper::testing::all_commands(&value);
                assert!(!commands.is_empty(), "{} names no command", path.display());
                commands
            } else if extension.as_deref() == Some("cron") {
                let entries: Vec<String> = text
                    .lines()
                    .filter(|line| !line.trim().is_empty() && !line.trim_start().starts_with('#'))
                    .map(|line| {
                        line.split_whitespace()
                            .skip(5)
                            .collect::<Vec<_>>()
                            .join(" ")
                    })
                    .collect();
                assert_eq!(entries.len(), 1, "{}: one crontab entry", path.display());
                entries
            } else if extension.as_deref() == Some("service") {
                let exec: Vec<String> = text
                    .lines()
                    .filter_map(|line| line.strip_prefix("ExecStart="))
                    .map(str::to_owned)
                    .collect();
                assert_eq!(exec.len(), 1, "{}: one ExecStart", path.display());
                exec
            } else {
                continue;
            };
            for line in lines {
                let (program, args) = program_and_args(&line);
                assert_eq!(program, "session-reaper", "{}: {line}", path.display());
                assert_cli_accepts(state.path(), &args);
                checked.push(format!("{name}: {line}"));
            }
        }
    }
    for expected in ["settings.json", "hooks.json", ".cron", ".service"] {
        assert!(
            checked
                .iter()
                .any(|c| c.split(':').next().unwrap().ends_with(expected)),
            "no {expected} checked: {checked:?}"
        );
    }
}
