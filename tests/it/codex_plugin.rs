//! The Codex plugin adapter (issue 11), against stand-in plugin brokers started by the tests (`fixtures/codex-plugin`:
//! the plugin's layout, argv and shutdown protocol, run with node): brokers stopped at their own session's end
//! through the shutdown line, SIGTERM or SIGKILL of the group, and their files cleaned; busy, foreign, stale and
//! look-alike records left alone; the spawn race's unlisted loser; a sweep after a session killed by SIGKILL; `status` and
//! `doctor`. Every test has its own plugin state root, tmpdir, state dir and fresh session ids.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::harness::{
    BrokerMode, Env, PATIENCE, PluginBroker, Proc, plugin_script, run_bounded, stderr, stdout,
    wait_until,
};
use crate::hook_test::HookTest;
use crate::sweep::unique_id;

/// The plugin's spawn window (`SPAWN_WINDOW`) and a margin: an unlisted broker younger than that is not judged.
const SPAWN_WINDOW: Duration = Duration::from_secs(4);

fn codex_flag(env: &Env) -> [String; 2] {
    [
        "--codex-state".to_owned(),
        env.plugin_root().display().to_string(),
    ]
}

/// Runs a hook as an agent does, looking at this test's plugin state; it must keep its contract.
fn hook(env: &mut Env, event: &str, session: &str, cwd: &Path, extra: &[&str]) -> Output {
    let flag = codex_flag(env);
    HookTest::new(event, session, cwd)
        .args(&[flag[0].as_str(), flag[1].as_str()])
        .args(extra)
        .run(env)
}

/// A live session: an agent process (a sleeper the test owns) recorded by `SessionStart`.
fn start(env: &mut Env, session: &str, cwd: &Path) -> Proc {
    start_with(env, session, cwd, &[])
}

/// `start` with more hook flags (`--sentinel off`: the sweep is what the test is about).
fn start_with(env: &mut Env, session: &str, cwd: &Path, flags: &[&str]) -> Proc {
    let agent = env.sleeper();
    let pid = agent.pid.to_string();
    let mut args = vec!["--owner-pid", pid.as_str()];
    args.extend_from_slice(flags);
    hook(env, "SessionStart", session, cwd, &args);
    agent
}

fn end(env: &mut Env, session: &str, cwd: &Path) {
    hook(env, "SessionEnd", session, cwd, &[]);
}

fn sweep(env: &mut Env) -> Value {
    let flag = codex_flag(env);
    let out = env.run(&["sweep", "--json", &flag[0], &flag[1]]);
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|err| panic!("sweep --json ({err}): {}\n{}", stdout(&out), stderr(&out)))
}

fn status(env: &mut Env, extra: &[&str]) -> Value {
    let mut args = vec!["status", "--json"];
    args.extend_from_slice(extra);
    let out = env.run(&args);
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|err| panic!("status --json ({err}): {}\n{}", stdout(&out), stderr(&out)))
}

/// A test's world with one live session in workspace `app` and its plugin broker.
fn one_session(prefix: &str, mode: BrokerMode) -> (Env, PathBuf, String, PluginBroker) {
    let (mut env, ws, session) = one_live_session(prefix);
    let broker = env.plugin_broker(&ws, &session, mode);
    (env, ws, session, broker)
}

/// A test's world with one live session in workspace `app`.
fn one_live_session(prefix: &str) -> (Env, PathBuf, String) {
    let mut env = Env::new();
    let ws = env.workspace("app");
    let session = unique_id(prefix);
    start(&mut env, &session, &ws);
    (env, ws, session)
}

/// `status --json --codex-state <this test's plugin root>`.
fn status_of_our_plugin(env: &mut Env) -> Value {
    let flag = codex_flag(env);
    status(env, &[&flag[0], &flag[1]])
}

/// The plugin brokers `status --json` lists.
fn plugin_rows(status: &Value) -> &[Value] {
    status["codex_plugin"]
        .as_array()
        .unwrap_or_else(|| panic!("a codex_plugin list: {status}"))
}

/// Their pids.
fn plugin_pids(status: &Value) -> Vec<i32> {
    plugin_rows(status)
        .iter()
        .filter_map(|broker| i32::try_from(broker["pid"].as_i64()?).ok())
        .collect()
}

/// The broker and its app-server child are gone.
fn stopped(broker: &PluginBroker) -> bool {
    !broker.proc.alive() && !broker.app_server.alive()
}

/// Waits for the broker and its group to go and for its files to be cleaned.
fn assert_stopped_and_cleaned(broker: &PluginBroker, listed: bool) {
    assert!(
        wait_until(PATIENCE, || stopped(broker)),
        "broker {} (or its app-server) still runs",
        broker.proc.pid
    );
    let files = [
        &broker.pid_file,
        &broker.socket,
        &broker.session_dir,
        &broker.broker_json,
    ];
    let left = || -> Vec<&&PathBuf> {
        files
            .iter()
            .filter(|path| path.exists())
            .filter(|path| listed || **path != &broker.broker_json)
            .collect()
    };
    assert!(
        wait_until(PATIENCE, || left().is_empty()),
        "left behind: {:?}",
        left()
    );
}

/// The listed broker stopped for `reason`, its files cleaned; `context` is shown when it did not.
fn assert_stopped_for(env: &Env, broker: &PluginBroker, reason: &str, context: &Value) {
    assert_stopped_and_cleaned(broker, true);
    let event = stop_event(env, broker).unwrap_or_else(|| panic!("no stop event: {context}"));
    assert_eq!(event["reason"], reason, "{event} {context}");
}

fn stop_event(env: &Env, broker: &PluginBroker) -> Option<Value> {
    env.events_where("stop", None)
        .into_iter()
        .find(|event| event["pid"] == broker.proc.pid && event["result"] == "stopped")
}

/// Ends `session` by its `SessionEnd` hook; its broker must stop (reason `session_end`) and its files go. Returns
/// what stopped it.
fn end_stops_and_cleans(env: &mut Env, session: &str, cwd: &Path, broker: &PluginBroker) -> String {
    let started = Instant::now();
    end(env, session, cwd);
    let hook = started.elapsed();
    assert!(wait_until(PATIENCE, || stopped(broker)), "still runs");
    // Figures for the report (never asserted: the machine is loaded).
    eprintln!(
        "figure {session}: SessionEnd hook returned in {} ms; broker and group gone {} ms after it started",
        hook.as_millis(),
        started.elapsed().as_millis()
    );
    assert_stopped_and_cleaned(broker, true);
    let event = stop_event(env, broker).expect("a stop event");
    assert_eq!(event["reason"], "session_end", "{event}");
    // What stopped it; the members stopped with it (its app-server) are counted after a `; `.
    let detail = event["detail"].as_str().unwrap_or_default();
    detail.split("; ").next().unwrap_or_default().to_owned()
}

fn assert_alive(broker: &PluginBroker, why: &str) {
    assert!(
        broker.proc.alive() && broker.app_server.alive(),
        "broker {} was stopped: {why}",
        broker.proc.pid
    );
}

#[test]
fn a_session_end_stops_its_broker_by_the_shutdown_line_and_cleans_the_plugins_files() {
    let (mut env, ws, session, broker) = one_session("cxp-answers", BrokerMode::Answers);
    assert!(broker.broker_json.exists() && broker.socket.exists());

    assert_eq!(
        end_stops_and_cleans(&mut env, &session, &ws, &broker),
        "graceful shutdown"
    );
    let trace = std::fs::read_to_string(env.plugin_trace(&session)).unwrap_or_default();
    assert!(
        trace.contains(r#"{"id":1,"method":"broker/shutdown","params":{}}"#),
        "the broker got the plugin's shutdown line: {trace:?}"
    );
    let clean = env.events_where("clean", Some("session_end"));
    assert!(
        clean.iter().any(|e| e["pid"] == broker.proc.pid),
        "{clean:?}"
    );
}

#[test]
fn a_broker_that_accepts_and_never_answers_gets_sigterm_after_the_window() {
    let (mut env, ws, session, broker) = one_session("cxp-silent", BrokerMode::Silent);

    assert_eq!(
        end_stops_and_cleans(&mut env, &session, &ws, &broker),
        "SIGTERM"
    );
    let trace = std::fs::read_to_string(env.plugin_trace(&session)).unwrap_or_default();
    assert!(trace.contains("broker/shutdown"), "asked first: {trace:?}");
}

#[test]
fn a_broker_that_ignores_sigterm_is_killed_with_its_group_by_the_finisher() {
    let (mut env, ws, session, broker) = one_session("cxp-stubborn", BrokerMode::Stubborn);

    // The hook returns within its deadline; the grace and the SIGKILL are the finisher's.
    let by = end_stops_and_cleans(&mut env, &session, &ws, &broker);
    assert!(by.starts_with("SIGKILL"), "{by}");
}

#[test]
fn a_running_job_of_another_live_session_keeps_the_broker_until_it_is_done() {
    let mut env = Env::new();
    let ws = env.workspace("app");
    let (owner, other) = (unique_id("cxp-owner"), unique_id("cxp-other"));
    start(&mut env, &owner, &ws);
    start(&mut env, &other, &ws);
    let broker = env.plugin_broker(&ws, &owner, BrokerMode::Answers);
    let state_json = broker.state_dir.join("state.json");
    let jobs = |status: &str| {
        json!({"version": 1, "config": {"stopReviewGate": false}, "jobs": [
            {"id": "task-1", "status": status, "sessionId": other, "pid": null, "updatedAt": "2026-01-01T00:00:00Z"}
        ]})
        .to_string()
    };
    std::fs::write(&state_json, jobs("running")).unwrap();

    end(&mut env, &owner, &ws);
    let kept = env.events_where("keep", None);
    assert!(
        kept.iter().any(
            |e| e["pid"] == broker.proc.pid && e["detail"].as_str().unwrap().contains("task-1")
        ),
        "the report says why it was kept: {kept:?}"
    );
    let swept = sweep(&mut env);
    assert!(
        swept["actions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["action"] == "keep" && a["pid"] == broker.proc.pid),
        "{swept}"
    );
    assert_alive(&broker, "a running job of a live session");
    assert!(broker.broker_json.exists());

    // The job is done: its owner has ended, so the next sweep stops it.
    std::fs::write(&state_json, jobs("completed")).unwrap();
    let swept = sweep(&mut env);
    assert_stopped_for(&env, &broker, "session_end", &swept);
}

#[test]
fn a_broker_spawned_under_another_workspace_is_stopped_at_its_sessions_end_and_no_other() {
    let mut env = Env::new();
    let main = env.workspace("main");
    let nested = env.workspace("main-worktree");
    let (spawner, neighbour) = (unique_id("cxp-worktree"), unique_id("cxp-neighbour"));
    start(&mut env, &spawner, &main);
    start(&mut env, &neighbour, &main);
    // The session runs in `main`, its tool started the plugin's broker in a worktree; a neighbour session of `main`
    // has its own broker there. The plugin's own SessionEnd would shut down main's broker — the neighbour's.
    let theirs = env.plugin_broker(&nested, &spawner, BrokerMode::Answers);
    let neighbours = env.plugin_broker(&main, &neighbour, BrokerMode::Answers);

    end(&mut env, &spawner, &main);
    assert_stopped_and_cleaned(&theirs, true);
    assert_alive(
        &neighbours,
        "another live session's broker in the session's cwd",
    );
    assert!(neighbours.broker_json.exists());
}

#[test]
fn a_stale_broker_json_whose_pid_is_now_an_unrelated_process_is_cleaned_and_never_signalled() {
    let (mut env, ws, session) = one_live_session("cxp-stale");
    let unrelated = env.sleeper();
    let session_dir = env.work.path().join("cxc-stale01");
    std::fs::create_dir_all(&session_dir).unwrap();
    let pid_file = session_dir.join("broker.pid");
    std::fs::write(&pid_file, format!("{}\n", unrelated.pid)).unwrap();
    let state_dir = env.plugin_root().join("app-0123456789abcdef");
    std::fs::create_dir_all(&state_dir).unwrap();
    let broker_json = state_dir.join("broker.json");
    let record = json!({
        "endpoint": format!("unix:{}/broker.sock", session_dir.display()),
        "pidFile": pid_file, "logFile": session_dir.join("broker.log"),
        "sessionDir": session_dir, "pid": unrelated.pid, "sessionId": session,
    });
    std::fs::write(&broker_json, record.to_string()).unwrap();

    end(&mut env, &session, &ws);
    sweep(&mut env);
    assert!(unrelated.alive(), "an unrelated process is never signalled");
    assert!(!broker_json.exists(), "the stale record is cleaned");
    assert!(!session_dir.exists(), "with its pid file and session dir");
    let clean = env.events_where("clean", Some("broker_gone"));
    assert!(clean.iter().any(|e| e["pid"] == unrelated.pid), "{clean:?}");
    assert!(
        env.events_where("stop", None)
            .iter()
            .all(|e| e["pid"] != unrelated.pid)
    );
}

#[test]
fn a_broker_json_whose_endpoint_is_not_its_processes_argv_is_never_signalled() {
    let (mut env, ws, session, broker) = one_session("cxp-mismatch", BrokerMode::Answers);
    let mut record: Value =
        serde_json::from_slice(&std::fs::read(&broker.broker_json).unwrap()).unwrap();
    record["endpoint"] = json!("unix:/nonexistent/cxc-other/broker.sock");
    let bytes = record.to_string();
    std::fs::write(&broker.broker_json, &bytes).unwrap();

    end(&mut env, &session, &ws);
    sweep(&mut env);
    assert_alive(&broker, "its argv names another endpoint than the record");
    assert_eq!(
        std::fs::read_to_string(&broker.broker_json).unwrap(),
        bytes,
        "the record is left as it was"
    );
    let refused = env.events_where("refuse", None);
    assert!(
        refused.iter().any(|e| e["pid"] == broker.proc.pid),
        "{refused:?}"
    );
    let trace = std::fs::read_to_string(env.plugin_trace(&session)).unwrap_or_default();
    assert!(trace.is_empty(), "not even asked to shut down: {trace:?}");
}

/// Runs a companion held at its barrier in a thread; returns the thread and the companion's pid once it has
/// started its broker and found no `broker.json` naming another.
fn held_companion(
    env: &Env,
    ws: &Path,
    session: &str,
    barrier: &Path,
) -> (std::thread::JoinHandle<Output>, i32) {
    let before: Vec<_> = checked(barrier);
    let mut command = env.companion(ws, session, BrokerMode::Answers, Some(&env.plugin_data()));
    command.arg("--barrier").arg(barrier);
    let thread = std::thread::spawn(move || run_bounded(command, None));
    let mut companion = None;
    assert!(
        wait_until(PATIENCE, || {
            companion = checked(barrier)
                .into_iter()
                .find(|pid| !before.contains(pid));
            companion.is_some()
        }),
        "the companion of {session} never reached its barrier"
    );
    (thread, companion.unwrap())
}

fn checked(barrier: &Path) -> Vec<i32> {
    std::fs::read_dir(barrier)
        .unwrap()
        .flatten()
        .filter_map(|entry| {
            entry
                .file_name()
                .to_str()?
                .strip_prefix("checked-")?
                .parse()
                .ok()
        })
        .collect()
}

#[test]
fn two_sessions_racing_to_spawn_leave_an_unlisted_loser_and_each_broker_stops_at_its_own_sessions_end()
 {
    let mut env = Env::new();
    let ws = env.workspace("app");
    let (loser, winner) = (unique_id("cxp-loser"), unique_id("cxp-winner"));
    start(&mut env, &loser, &ws);
    start(&mut env, &winner, &ws);
    let barrier = env.work.path().join("barrier");
    std::fs::create_dir_all(&barrier).unwrap();
    // Both companions look for a live broker before either has written broker.json (the plugin's
    // `ensureBrokerSession`): each starts its own; the loser writes first, the winner overwrites.
    let (first, first_pid) = held_companion(&env, &ws, &loser, &barrier);
    let (second, second_pid) = held_companion(&env, &ws, &winner, &barrier);
    std::fs::write(barrier.join(format!("go-{first_pid}")), "").unwrap();
    let first = first.join().unwrap();
    assert!(first.status.success(), "{}", stderr(&first));
    std::fs::write(barrier.join(format!("go-{second_pid}")), "").unwrap();
    let second = second.join().unwrap();
    assert!(second.status.success(), "{}", stderr(&second));
    let lost = env.broker_printed(&first.stdout);
    let won = env.broker_printed(&second.stdout);
    let record: Value = serde_json::from_slice(&std::fs::read(&won.broker_json).unwrap()).unwrap();
    assert_eq!(record["pid"], won.proc.pid, "the last write won");
    assert_ne!(lost.proc.pid, won.proc.pid);

    let listed = status_of_our_plugin(&mut env);
    let brokers = plugin_rows(&listed);
    let row = |pid: i32| {
        brokers
            .iter()
            .find(|b| b["pid"] == pid)
            .unwrap_or_else(|| panic!("status lists {pid}: {listed}"))
    };
    assert_eq!(row(lost.proc.pid)["unlisted"], true, "{listed}");
    assert_eq!(row(lost.proc.pid)["owners"], json!([loser]), "{listed}");
    assert_eq!(row(won.proc.pid)["unlisted"], false, "{listed}");

    // Past the plugin's spawn window, with both sessions live: a sweep stops neither.
    let spawned = Instant::now();
    assert!(wait_until(PATIENCE, || spawned.elapsed() > SPAWN_WINDOW));
    sweep(&mut env);
    assert_alive(&lost, "its session lives");
    assert_alive(&won, "its session lives");

    end(&mut env, &loser, &ws);
    assert_stopped_and_cleaned(&lost, false);
    assert_eq!(stop_event(&env, &lost).unwrap()["reason"], "session_end");
    assert_alive(&won, "another session's end");
    assert!(won.broker_json.exists(), "the winner's record stays");

    end(&mut env, &winner, &ws);
    assert_stopped_and_cleaned(&won, true);
}

#[test]
fn a_sweep_after_a_sigkilled_session_stops_its_broker_and_keeps_one_busy_for_a_live_session() {
    let mut env = Env::new();
    let (one, two) = (env.workspace("one"), env.workspace("two"));
    let (crashed, also_crashed, live) = (
        unique_id("cxp-crashed"),
        unique_id("cxp-crashed2"),
        unique_id("cxp-live"),
    );
    // No sentinel: the sweep is the safety net under test (a sentinel would end them first, as `agent_gone`).
    let unwatched = ["--sentinel", "off"];
    let agent = start_with(&mut env, &crashed, &one, &unwatched);
    let other_agent = start_with(&mut env, &also_crashed, &two, &unwatched);
    start(&mut env, &live, &two);
    let orphan = env.plugin_broker(&one, &crashed, BrokerMode::Answers);
    let busy = env.plugin_broker(&two, &also_crashed, BrokerMode::Answers);
    std::fs::write(
        busy.state_dir.join("state.json"),
        json!({"version": 1, "config": {}, "jobs": [
            {"id": "review-7", "status": "running", "sessionId": live, "pid": null}
        ]})
        .to_string(),
    )
    .unwrap();
    // Both agents die without SessionEnd.
    agent.kill();
    other_agent.kill();
    env.reap_children();
    assert!(agent.gone_within(PATIENCE) && other_agent.gone_within(PATIENCE));

    let swept = sweep(&mut env);
    assert_stopped_for(&env, &orphan, "owners_gone", &swept);
    assert_alive(&busy, "a running job of a live session");
    assert!(
        swept["actions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["action"] == "keep" && a["result"].as_str().unwrap().contains("review-7")),
        "{swept}"
    );
}

#[test]
fn status_and_doctor_find_the_plugin_in_claude_codes_plugin_data_and_the_tmpdir() {
    let (mut env, ws, session) = one_live_session("cxp-status");
    // As Claude Code installs it: the plugin under ~/.claude/plugins, its data dir beside.
    let home = env.work.path().join("home");
    let install = home.join(".claude/plugins/cache/openai-codex/codex/1.0.5/scripts");
    std::fs::create_dir_all(&install).unwrap();
    std::fs::copy(
        plugin_script("app-server-broker.mjs"),
        install.join("app-server-broker.mjs"),
    )
    .unwrap();
    let data = home.join(".claude/plugins/data/codex-openai-codex");
    let in_data = env.companion(&ws, &session, BrokerMode::Answers, Some(&data));
    let in_data = env.companion_broker(in_data);
    // And without CLAUDE_PLUGIN_DATA: <tmpdir>/codex-companion.
    let in_tmp = env.companion(&ws, &session, BrokerMode::Answers, None);
    let in_tmp = env.companion_broker(in_tmp);
    assert!(
        in_tmp
            .state_dir
            .starts_with(env.work.path().join("codex-companion"))
    );

    let found = status(&mut env, &[]);
    let pids = plugin_pids(&found);
    assert!(
        pids.contains(&in_data.proc.pid) && pids.contains(&in_tmp.proc.pid),
        "{found}"
    );
    let human = stdout(&env.run(&["status"]));
    assert!(
        human.contains(&format!("codex broker {}", in_data.proc.pid)),
        "{human}"
    );
    let off = status(&mut env, &["--no-codex"]);
    assert_eq!(off["codex_plugin"], json!([]), "{off}");

    let out = env.run(&["doctor", "--json"]);
    let doctor: Value = serde_json::from_slice(&out.stdout).expect("doctor --json");
    let check = doctor["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "codex plugin")
        .unwrap_or_else(|| panic!("a codex plugin check: {doctor}"))
        .clone();
    let detail = check["detail"].as_str().unwrap();
    assert!(
        detail.contains(&format!(
            "installed at {}",
            install.parent().unwrap().display()
        )),
        "{detail}"
    );
    assert!(
        detail.contains(&data.join("state").display().to_string()),
        "{detail}"
    );
    assert!(
        detail.contains(
            &env.work
                .path()
                .join("codex-companion")
                .display()
                .to_string()
        ),
        "{detail}"
    );
    assert!(
        detail.contains("2 broker(s) running, 0 unlisted, 0 record(s) of gone brokers"),
        "{detail}"
    );
    assert_eq!(check["level"], "ok", "{check}");
    // Read-only: both still run.
    assert_alive(&in_data, "status and doctor only read");
    assert_alive(&in_tmp, "status and doctor only read");
}

#[test]
fn no_codex_leaves_the_plugins_brokers_alone_and_a_bad_codex_state_is_refused() {
    let (mut env, ws, session, broker) = one_session("cxp-off", BrokerMode::Answers);
    HookTest::new("SessionEnd", &session, &ws)
        .args(&["--no-codex"])
        .run(&env);
    assert_alive(&broker, "--no-codex");

    let missing = env.work.path().join("no-such-dir");
    let out = env.run(&["sweep", "--codex-state", missing.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = stderr(&out);
    assert!(
        err.contains("--codex-state") && err.contains("expected an existing directory"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    assert_alive(&broker, "bad input changes nothing");
    // A hook refuses nothing: a missing dir is simply empty.
    hook(
        &mut env,
        "SessionEnd",
        &session,
        &ws,
        &["--codex-state", missing.to_str().unwrap()],
    );
}

#[test]
fn reap_dry_run_names_the_plugins_broker_and_signals_nothing() {
    let (mut env, _, session, broker) = one_session("cxp-dry", BrokerMode::Answers);
    let flag = codex_flag(&env);
    let before = std::fs::read(&broker.broker_json).unwrap();
    let out = env.run(&[
        "reap",
        "--session",
        &session,
        "--dry-run",
        &flag[0],
        &flag[1],
    ]);
    assert!(out.status.success(), "{out:?}");
    let text = stdout(&out);
    assert!(
        text.contains("would stop") && text.contains(&broker.proc.pid.to_string()),
        "{text}"
    );
    assert_alive(&broker, "a dry run");
    assert_eq!(std::fs::read(&broker.broker_json).unwrap(), before);

    let out = env.run(&["reap", "--session", &session, "--json", &flag[0], &flag[1]]);
    assert!(out.status.success(), "{out:?}");
    let value: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        value["sessions"][0]["codex_plugin"][0]["pid"], broker.proc.pid,
        "{value}"
    );
    assert_stopped_and_cleaned(&broker, true);
}

/// The stand-in scripts keep the plugin's argv shape: what the adapter's identity check relies on.
#[test]
fn the_stand_in_broker_has_the_plugins_command_line() {
    let mut env = Env::new();
    let ws = env.workspace("app");
    let session = unique_id("cxp-argv");
    let broker = env.plugin_broker(&ws, &session, BrokerMode::Answers);
    let argv: Vec<String> = std::fs::read(format!("/proc/{}/cmdline", broker.proc.pid))
        .unwrap()
        .split(|b| *b == 0)
        .filter(|arg| !arg.is_empty())
        .map(|arg| String::from_utf8_lossy(arg).into_owned())
        .collect();
    assert!(argv[1].ends_with("/app-server-broker.mjs"), "{argv:?}");
    assert_eq!(
        argv[2..],
        [
            "serve".to_owned(),
            "--endpoint".to_owned(),
            broker.endpoint.clone(),
            "--cwd".to_owned(),
            ws.display().to_string(),
            "--pid-file".to_owned(),
            broker.pid_file.display().to_string()
        ]
    );
    let environ = std::fs::read(format!("/proc/{}/environ", broker.proc.pid)).unwrap();
    let wanted = format!("CODEX_COMPANION_SESSION_ID={session}");
    assert!(environ.split(|b| *b == 0).any(|e| e == wanted.as_bytes()));
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", broker.proc.pid)).unwrap();
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 1..]
        .split_whitespace()
        .collect();
    assert_eq!(
        (fields[2], fields[3]),
        (
            broker.proc.pid.to_string().as_str(),
            broker.proc.pid.to_string().as_str()
        ),
        "pid = pgid = sid"
    );
}

#[test]
fn fifos_and_symlinks_in_the_plugins_state_are_neither_read_nor_followed() {
    let (mut env, ws, session, broker) = one_session("cxp-hostile", BrokerMode::Stubborn);
    // Another workspace's broker.json is a FIFO (a read would block forever), a third's a symlink to the live one.
    let fifo_dir = env.plugin_root().join("fifo-0000000000000001");
    std::fs::create_dir_all(&fifo_dir).unwrap();
    let fifo = fifo_dir.join("broker.json");
    let made = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(made.success(), "mkfifo");
    let link_dir = env.plugin_root().join("link-0000000000000002");
    std::fs::create_dir_all(&link_dir).unwrap();
    std::os::unix::fs::symlink(&broker.broker_json, link_dir.join("broker.json")).unwrap();
    // Its session dir holds a symlink where the log should be, pointing at a file that must survive.
    let precious = env.work.path().join("precious.txt");
    std::fs::write(&precious, "keep me").unwrap();
    let log = broker.session_dir.join("broker.log");
    std::fs::remove_file(&log).unwrap();
    std::os::unix::fs::symlink(&precious, &log).unwrap();

    let listed = status_of_our_plugin(&mut env);
    assert_eq!(
        plugin_rows(&listed).len(),
        1,
        "the FIFO and the symlink are not records: {listed}"
    );
    end(&mut env, &session, &ws);
    assert!(
        wait_until(PATIENCE, || stopped(&broker)),
        "the broker is still stopped"
    );
    assert!(
        wait_until(PATIENCE, || !broker.broker_json.exists()),
        "its record is cleaned"
    );
    assert_eq!(std::fs::read_to_string(&precious).unwrap(), "keep me");
    assert!(
        std::fs::symlink_metadata(&log).is_ok(),
        "a symlink is not the plugin's log: left in place"
    );
    assert!(std::fs::symlink_metadata(&fifo).is_ok() && link_dir.join("broker.json").is_symlink());
}

#[test]
fn a_broker_of_a_state_root_we_were_not_given_is_never_touched() {
    let (mut env, ws, session) = one_live_session("cxp-foreign-root");
    // Ours, so that the root we look at exists; and one whose plugin keeps its state elsewhere.
    let ours = env.plugin_broker(&ws, &unique_id("cxp-bystander"), BrokerMode::Answers);
    let elsewhere = env.work.path().join("someone-elses-plugin-data");
    let command = env.companion(&ws, &session, BrokerMode::Answers, Some(&elsewhere));
    let theirs = env.companion_broker(command);
    // Its record gone too, so that only the process could say it is a broker: still not ours to judge.
    std::fs::remove_file(&theirs.broker_json).unwrap();

    let listed = status_of_our_plugin(&mut env);
    assert_eq!(plugin_pids(&listed), [ours.proc.pid], "{listed}");
    end(&mut env, &session, &ws);
    sweep(&mut env);
    assert_alive(&theirs, "its state root is not one we look at");
    assert_alive(&ours, "another session's broker");
}

#[test]
fn a_record_written_in_another_pid_namespace_is_neither_signalled_nor_cleaned() {
    let (mut env, ws, session) = one_live_session("cxp-pidns");
    // The plugin runs in a private pid namespace (a container, a sandbox): its broker.json names the broker by its
    // pid in there, which means another process — or none — out here.
    let session_dir = env.work.path().join("cxc-pidns01");
    std::fs::create_dir_all(&session_dir).unwrap();
    let socket = session_dir.join("broker.sock");
    let pid_file = session_dir.join("broker.pid");
    let endpoint = format!("unix:{}", socket.display());
    let script = plugin_script("app-server-broker.mjs");
    let mut command = crate::harness::unshare_pid_namespace();
    command
        .args(["--kill-child", "sh", "-c"])
        .arg(r#"node "$0" serve --endpoint "$1" --cwd "$2" --pid-file "$3" & wait"#)
        .arg(&script)
        .arg(&endpoint)
        .arg(&ws)
        .arg(&pid_file)
        .env("CODEX_COMPANION_SESSION_ID", &session)
        .env("CLAUDE_PLUGIN_DATA", env.plugin_data());
    env.spawn(command);
    assert!(
        wait_until(PATIENCE, || socket.exists() && pid_file.exists()),
        "the namespaced broker never listened (unshare --pid needs root)"
    );
    let inner: i32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let mut outer = None;
    assert!(wait_until(PATIENCE, || {
        outer = crate::harness::all_pids().into_iter().find(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|argv| {
                argv.split(|b| *b == 0)
                    .any(|arg| arg == endpoint.as_bytes())
            }) && std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|comm| comm.trim() == "node")
        });
        outer.is_some()
    }));
    let outer = Proc::of(outer.unwrap()).unwrap();
    env.track(outer);
    assert_ne!(
        inner, outer.pid,
        "the hostile case: the record's pid is not the broker's pid out here"
    );
    let before_inner = Proc::of(inner);
    let state_dir = env.plugin_root().join("app-00000000000000ns");
    std::fs::create_dir_all(&state_dir).unwrap();
    let broker_json = state_dir.join("broker.json");
    let record = json!({"endpoint": endpoint, "pidFile": pid_file, "logFile": session_dir.join("broker.log"),
                        "sessionDir": session_dir, "pid": inner})
    .to_string();
    std::fs::write(&broker_json, &record).unwrap();

    let listed = status_of_our_plugin(&mut env);
    let row = plugin_rows(&listed)
        .iter()
        .find(|b| b["pid"] == inner)
        .unwrap_or_else(|| panic!("{listed}"))
        .clone();
    assert_eq!(row["check"], "listening_elsewhere", "{row}");
    end(&mut env, &session, &ws);
    sweep(&mut env);
    assert!(outer.alive(), "the namespaced broker runs on");
    assert_eq!(
        std::fs::read_to_string(&broker_json).unwrap(),
        record,
        "its record stays"
    );
    assert_eq!(
        Proc::of(inner),
        before_inner,
        "the pid out here is untouched"
    );
    assert!(
        env.events()
            .iter()
            .all(|e| e["pid"] != inner && e["pid"] != outer.pid),
        "{:?}",
        env.events()
    );
}

#[test]
fn a_sweep_stops_an_idle_broker_no_live_owner_holds_and_keeps_a_live_owners() {
    let (mut env, ws, live) = one_live_session("cxp-idle-live");
    // One broker of a session we have no record of, one of a live session; both untouched for two hours.
    let unknown = env.plugin_broker(
        &env.workspace("elsewhere"),
        &unique_id("cxp-idle-unknown"),
        BrokerMode::Answers,
    );
    let held = env.plugin_broker(&ws, &live, BrokerMode::Answers);
    let long_ago = std::time::SystemTime::now() - Duration::from_secs(2 * 3600);
    for broker in [&unknown, &held] {
        let log = std::fs::File::options()
            .append(true)
            .open(broker.session_dir.join("broker.log"))
            .unwrap();
        log.set_modified(long_ago).unwrap();
    }
    let swept = sweep(&mut env);
    assert_stopped_for(&env, &unknown, "idle_timeout", &swept);
    assert_alive(&held, "a live owner holds it");
}

#[test]
fn many_sessions_racing_for_one_workspace_and_ending_at_once_beside_sweeps_leave_nothing_and_touch_no_bystander()
 {
    let mut env = Env::new();
    let ws = env.workspace("app");
    let sessions: Vec<String> = (0..4)
        .map(|n| unique_id(&format!("cxp-storm{n}")))
        .collect();
    for session in &sessions {
        start(&mut env, session, &ws);
    }
    let (bystander, other_ws) = (unique_id("cxp-bystander"), env.workspace("other"));
    start(&mut env, &bystander, &other_ws);
    let kept = env.plugin_broker(&other_ws, &bystander, BrokerMode::Answers);
    // Four companions in one workspace, each past its look for a live broker before any writes broker.json, then
    // all let go at once: whichever write lands last wins, the other three are unlisted.
    let barrier = env.work.path().join("barrier");
    std::fs::create_dir_all(&barrier).unwrap();
    let held: Vec<_> = sessions
        .iter()
        .map(|session| held_companion(&env, &ws, session, &barrier))
        .collect();
    for (_, pid) in &held {
        std::fs::write(barrier.join(format!("go-{pid}")), "").unwrap();
    }
    let brokers: Vec<PluginBroker> = held
        .into_iter()
        .map(|(thread, _)| {
            let out = thread.join().unwrap();
            assert!(out.status.success(), "{}", stderr(&out));
            env.broker_printed(&out.stdout)
        })
        .collect();
    let listed = status_of_our_plugin(&mut env);
    let unlisted = plugin_rows(&listed)
        .iter()
        .filter(|b| b["unlisted"] == true)
        .count();
    assert_eq!(unlisted, 3, "{listed}");
    let spawned = Instant::now();
    assert!(wait_until(PATIENCE, || spawned.elapsed() > SPAWN_WINDOW));

    let flag = codex_flag(&env);
    let runs: Vec<_> = sessions
        .iter()
        .map(|session| {
            let command = env.cmd(&["hook", "--agent", "claude", &flag[0], &flag[1]]);
            let payload =
                json!({"session_id": session, "hook_event_name": "SessionEnd", "cwd": ws});
            (command, Some(payload.to_string().into_bytes()))
        })
        .chain((0..2).map(|_| (env.cmd(&["sweep", &flag[0], &flag[1]]), None)))
        .map(|(command, stdin)| std::thread::spawn(move || run_bounded(command, stdin.as_deref())))
        .collect();
    for run in runs {
        let out = run.join().unwrap();
        assert!(out.status.code().is_some(), "{out:?}");
    }
    sweep(&mut env);
    for broker in &brokers {
        assert_stopped_and_cleaned(broker, false);
    }
    assert!(
        !brokers[0].broker_json.exists(),
        "the workspace's record is gone with its broker"
    );
    assert_alive(&kept, "a live session's broker in another workspace");
    assert!(kept.broker_json.exists());
}

/// Adapters claim their brokers before leftover discovery does (DESIGN "Adapters"): a plugin broker that carries its
/// first session's variable and still works for another live session is never stopped as the first session's
/// leftover once that session's agent is gone — the adapter keeps it, and stops it when its job is done.
#[test]
fn a_shared_plugin_broker_carrying_one_sessions_variable_is_never_that_sessions_leftover() {
    let mut env = Env::new();
    let ws = env.workspace("app");
    let (owner, other) = (unique_id("cxp-claim"), unique_id("cxp-claim-other"));
    let owner_agent = start(&mut env, &owner, &ws);
    start(&mut env, &other, &ws);
    // The companion runs inside the owner's shell tool: the broker inherits the owner's session variable.
    let data = env.plugin_data();
    let mut companion = env.companion(&ws, &owner, BrokerMode::Answers, Some(&data));
    companion.env("CLAUDE_CODE_SESSION_ID", &owner);
    let broker = env.companion_broker(companion);
    let state_json = broker.state_dir.join("state.json");
    let job = json!({"version": 1, "config": {"stopReviewGate": false}, "jobs": [
        {"id": "task-1", "status": "running", "sessionId": other, "pid": null, "updatedAt": "2026-01-01T00:00:00Z"}
    ]});
    std::fs::write(&state_json, job.to_string()).unwrap();
    // A plain leftover of the owner's tool, beside it: the sweep does stop that one.
    let mut leftover = Command::new("sleep");
    leftover.arg("600").env("CLAUDE_CODE_SESSION_ID", &owner);
    let leftover = env.spawn(leftover);

    // The owner's agent dies with no hook: the sweep ends its session and stops its leftovers.
    owner_agent.kill();
    env.reap_children();
    assert!(
        owner_agent.gone_within(PATIENCE),
        "the owner's agent is gone"
    );
    let swept = sweep(&mut env);
    assert!(
        leftover.gone_within(PATIENCE),
        "the owner's leftover is stopped: {swept}"
    );
    assert_alive(&broker, "a broker the adapter claims is never a leftover");
    assert!(
        env.events_where("stop", Some("leftover"))
            .iter()
            .all(|event| event["pid"] != broker.proc.pid),
        "no leftover stop names the plugin's broker: {:?}",
        env.events()
    );
}
