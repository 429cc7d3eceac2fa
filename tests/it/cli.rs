//! The command line as people meet it: short session ids, the `status` picture (a checked-in snapshot), usage
//! errors, JSON on request, colour only for terminals, log files in missing directories.

use std::path::Path;
use std::process::{Command, Output};

use serde_json::{Value, json};

use crate::harness::uuid;
use crate::harness::{BIN, Env, PATIENCE, Proc, run_bounded, scrub_env, stderr, stdout};

/// Records a live session `id` in `cwd` whose agent is `agent` (`SessionStart` through the hook).
fn start_session(env: &mut Env, id: &str, cwd: &Path, agent: Proc) {
    let payload = json!({"session_id": id, "hook_event_name": "SessionStart", "cwd": cwd, "source": "startup"});
    let out = env.run_stdin(
        &[
            "hook",
            "--agent",
            "claude",
            "--owner-pid",
            &agent.pid.to_string(),
            // These tests look at what status shows of a dead agent before anything acts on it.
            "--sentinel",
            "off",
        ],
        payload.to_string().as_bytes(),
    );
    assert!(out.status.success(), "hook: {}", stderr(&out));
}

fn end_session(env: &mut Env, id: &str, cwd: &Path) {
    let payload =
        json!({"session_id": id, "hook_event_name": "SessionEnd", "cwd": cwd, "reason": "clear"});
    let out = env.run_stdin(
        &["hook", "--agent", "claude"],
        payload.to_string().as_bytes(),
    );
    assert!(out.status.success(), "hook: {}", stderr(&out));
}

fn code(out: &Output) -> i32 {
    out.status.code().unwrap_or(-1)
}

/// Asserts a refusal: exit 2, nothing in the state root changed.
fn assert_refused_unchanged(env: &mut Env, args: &[&str]) -> Output {
    let before = env.state_files();
    let out = env.run(args);
    assert_eq!(code(&out), 2, "{args:?}: {}{}", stdout(&out), stderr(&out));
    assert!(
        env.state_files() == before,
        "{args:?} changed the state root"
    );
    out
}

#[test]
fn point_1_short_session_ids_resolve_and_unknown_ones_need_force() {
    let mut env = Env::new();
    let ws = env.workspace("app");
    let agent = env.sleeper();
    let (one, two) = (uuid(), uuid());
    let two = format!("{}{}", &one[..8], &two[8..]);
    start_session(&mut env, &one, &ws, agent);
    start_session(&mut env, &two, &ws, agent);
    let broker = env.spawn_broker(&ws, &one, &["sleep", "600"]);

    // The shared 8-character prefix is ambiguous: exit 2 with both candidates, nothing written.
    let out = assert_refused_unchanged(&mut env, &["reap", "--session", &one[..8]]);
    assert!(
        stderr(&out).contains(&one) && stderr(&out).contains(&two),
        "{}",
        stderr(&out)
    );
    // An id no record knows: exit 2, no tombstone, the candidates listed.
    let out = assert_refused_unchanged(&mut env, &["reap", "--session", "bebbb456"]);
    assert!(
        stderr(&out).contains("--force") && stderr(&out).contains(&one),
        "{}",
        stderr(&out)
    );
    assert!(broker.alive());

    // A unique prefix ends the real session, and says which one it was.
    let prefix = &one[..one.len() - 4];
    let out = env.run(&["reap", "--session", prefix]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!("{prefix} is session {one}")),
        "{}",
        stderr(&out)
    );
    assert!(stdout(&out).contains(&format!("session {one} ended")));
    assert!(broker.gone_within(PATIENCE), "the session's broker runs on");

    // --force ends an id no record knows (a session started before the hooks were installed).
    let out = env.run(&["reap", "--session", "bebbb456", "--force"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
}

#[test]
fn point_2_status_shows_every_owner_whole_a_dead_agent_and_a_legend() {
    let mut env = Env::new();
    let ws = env.workspace("app");
    let (alive_agent, doomed_agent) = (env.sleeper(), env.sleeper());
    let (one, two) = (uuid(), format!("{}-second-owner-with-a-long-id", uuid()));
    start_session(&mut env, &one, &ws, alive_agent);
    start_session(&mut env, &two, &ws, doomed_agent);
    env.spawn_broker(&ws, &one, &["sleep", "600"]);
    env.spawn_broker(&ws, &two, &["sleep", "600"]);
    let stale = env
        .spawn_broker_with(&ws, &one, &["--name", "stale"], &["sleep", "600"])
        .0;
    stale.kill();
    doomed_agent.kill();
    env.reap_children();
    assert!(stale.gone_within(PATIENCE) && doomed_agent.gone_within(PATIENCE));

    let out = env.run(&["status"]);
    let text = stdout(&out);
    assert!(
        text.contains(&format!("shared with {two}")),
        "the second owner is hidden:\n{text}"
    );
    let line_of = |id: &str| {
        text.lines()
            .find(|line| line.starts_with(id))
            .unwrap_or_default()
            .to_owned()
    };
    assert!(line_of(&two).contains(" gone "), "{text}");
    assert!(line_of(&one).contains(" live "), "{text}");
    assert!(text.contains("STALE") && text.contains("legend"), "{text}");
    let legend = text.split("legend").nth(1).unwrap_or_default();
    for word in ["live", "gone", "STALE"] {
        assert!(
            legend
                .lines()
                .any(|line| line.trim_start().starts_with(word)),
            "{word} is not explained:\n{text}"
        );
    }
    // What the next sweep does is the sweep's own dry run.
    assert!(
        text.contains("next sweep: end the session (owners_gone)"),
        "{text}"
    );
    assert!(
        text.contains("next sweep: prune the record (broker_gone)"),
        "{text}"
    );
    let dry = stdout(&env.run(&["sweep", "--dry-run"]));
    assert!(
        dry.contains("owners_gone") && dry.contains("broker_gone"),
        "{dry}"
    );
}

#[test]
fn point_3_spawn_refuses_another_command_and_reports_a_broker_that_dies_at_once() {
    let mut env = Env::new();
    let ws = env.workspace("app");
    let (dev, _) = env.spawn_broker_with(&ws, "s1", &[], &["sleep", "600"]);
    let ws_arg = ws.to_str().unwrap();
    let out = assert_refused_unchanged(
        &mut env,
        &[
            "broker",
            "spawn",
            "--cwd",
            ws_arg,
            "--session",
            "s2",
            "--",
            "sleep",
            "601",
        ],
    );
    assert!(
        stderr(&out).contains("--name") && stderr(&out).contains("--replace"),
        "{}",
        stderr(&out)
    );
    assert!(dev.alive());

    let (replacement, record) = env.spawn_broker_with(&ws, "s2", &["--replace"], &["sleep", "601"]);
    assert!(dev.gone_within(PATIENCE), "--replace left the old broker");
    assert!(replacement.alive());
    let owners: Vec<&str> = record["owners"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|owner| owner["session"].as_str())
        .collect();
    assert_eq!(owners, ["s2", "s1"], "the old broker's owners carry over");

    // Watched with `--wait` (without it the record is kept and `status` shows it STALE: tests/it/everyday.rs).
    let out = env.run(&[
        "broker",
        "spawn",
        "--wait",
        "--cwd",
        ws_arg,
        "--session",
        "s1",
        "--name",
        "dies",
        "--",
        "sh",
        "-c",
        "echo bad config >&2; exit 3",
    ]);
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("exit status 3") && stderr(&out).contains("broker.log"),
        "{}",
        stderr(&out)
    );
    assert!(
        env.status()["slots"]
            .as_array()
            .unwrap()
            .iter()
            .all(|slot| slot["name"] != "dies")
    );
}

#[test]
fn point_4_a_trailing_slash_does_not_bypass_the_state_root_checks_and_demo_honours_state_dir() {
    let dir = tempfile::tempdir().unwrap();
    let real = dir.path().join("real");
    std::fs::create_dir(&real).unwrap();
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    for given in [link.display().to_string(), format!("{}/", link.display())] {
        let mut command = Command::new(BIN);
        scrub_env(&mut command);
        command.args(["--state-dir", &given, "sweep"]);
        let out = run_bounded(command, None);
        assert_eq!(code(&out), 2, "--state-dir {given}: {}", stderr(&out));
        assert!(
            std::fs::read_dir(&real).unwrap().next().is_none(),
            "--state-dir {given} wrote through the symlink"
        );
    }

    let state = dir.path().join("demo-state");
    let mut command = Command::new(BIN);
    scrub_env(&mut command);
    command.env("TMPDIR", dir.path());
    command
        .arg("--state-dir")
        .arg(&state)
        .args(["demo", "--keep"]);
    let out = run_bounded(command, None);
    assert_eq!(code(&out), 0, "{}{}", stdout(&out), stderr(&out));
    assert!(
        state.join("events.jsonl").is_file(),
        "demo ignored --state-dir:\n{}",
        stdout(&out)
    );
    assert!(stdout(&out).contains("kept: "), "{}", stdout(&out));
}

#[test]
fn point_5_usage_errors_are_clap_s_with_hints_and_flags_mean_what_help_says() {
    let mut env = Env::new();
    let ws = env.workspace("app");
    let ws_arg = ws.to_str().unwrap();
    // Clap's own rendering: the hint to use `--`, exit 2.
    let out = env.run(&[
        "broker",
        "spawn",
        "--cwd",
        ws_arg,
        "--session",
        "s1",
        "npm",
        "run",
        "dev",
    ]);
    assert_eq!(code(&out), 2);
    assert!(
        stderr(&out).contains("tip:") && stderr(&out).contains("--"),
        "{}",
        stderr(&out)
    );
    let out = env.run(&["statsu"]);
    assert!(
        stderr(&out).contains("status"),
        "no suggestion: {}",
        stderr(&out)
    );
    // A bare invocation prints the short help; the hidden `finish` never shows.
    let mut bare = Command::new(BIN);
    scrub_env(&mut bare);
    let out = run_bounded(bare, None);
    assert_eq!(code(&out), 2);
    assert!(
        stderr(&out).contains("Usage: session-reaper"),
        "{}",
        stderr(&out)
    );
    for args in [&["fin"][..], &["fini", "--x"], &["help", "bogus"]] {
        let out = env.run(args);
        assert!(
            !stderr(&out).contains("finish"),
            "{args:?}: {}",
            stderr(&out)
        );
    }
    // `log --action` is an enum: a typo is refused with the possible values.
    let out = env.run(&["log", "--action", "stp"]);
    assert_eq!(code(&out), 2);
    assert!(stderr(&out).contains("stop"), "{}", stderr(&out));
    // Durations echoed as given; `0` disables.
    let out = env.run(&["sweep", "--idle-ttl", "30M"]);
    assert_eq!(code(&out), 2);
    assert!(
        stderr(&out).contains("'30M'") && !stderr(&out).contains("2years"),
        "{}",
        stderr(&out)
    );
    let out = env.run(&["sweep", "--idle-ttl", "0", "--dry-run"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    // In hook mode a usage error exits 0, prints nothing on stdout, and is on stderr and in events.jsonl.
    let out = crate::hook_test::HookTest::raw(b"{}")
        .agent("bogus")
        .logs("hook", Some("error"))
        .run(&env);
    assert!(stderr(&out).contains("bogus"), "{}", stderr(&out));
    assert!(
        env.events_where("hook", None)
            .iter()
            .any(|event| event.to_string().contains("bogus")),
        "the hook's usage error names the input in events.jsonl"
    );
}

#[test]
fn point_6_every_command_speaks_to_people_and_json_on_request() {
    let mut env = Env::new();
    let ws = env.workspace("app");
    let ws_arg = ws.to_str().unwrap();
    let out = env.run_command(env.cmd_as_typed(&[
        "broker",
        "spawn",
        "--cwd",
        ws_arg,
        "--session",
        "s1",
        "--",
        "sleep",
        "600",
    ]));
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        stdout(&out).starts_with("started broker "),
        "{}",
        stdout(&out)
    );
    assert!(serde_json::from_slice::<Value>(&out.stdout).is_err());
    let out = env.run(&[
        "broker",
        "attach",
        "--json",
        "--cwd",
        ws_arg,
        "--session",
        "s2",
    ]);
    let record: Value = serde_json::from_slice(&out.stdout).expect("attach --json");
    assert_eq!(record["reused"], true);
    let out = env.run(&["broker", "touch", "--json", "--cwd", ws_arg]);
    let touched: Value = serde_json::from_slice(&out.stdout).expect("touch --json");
    assert_eq!(
        touched["identity"], record["identity"],
        "one shape per record type"
    );
    let out = env.run(&[
        "broker",
        "detach",
        "--json",
        "--cwd",
        ws_arg,
        "--session",
        "s2",
    ]);
    let detached: Value = serde_json::from_slice(&out.stdout).expect("detach --json");
    assert_eq!(detached["broker"]["identity"], record["identity"]);

    // `log --json`: JSON Lines; the text form has a header.
    let out = env.run(&["log", "--json"]);
    let text = stdout(&out);
    assert!(text.lines().count() >= 2);
    for line in text.lines() {
        serde_json::from_str::<Value>(line).unwrap_or_else(|_| panic!("not JSON Lines: {line}"));
    }
    assert!(stdout(&env.run(&["log"])).starts_with("TIME "));

    // A real `reap --json` has no `would_stop`; a dry run has.
    let dry: Value = serde_json::from_slice(
        &env.run(&["reap", "--session", "s1", "--dry-run", "--json"])
            .stdout,
    )
    .unwrap();
    assert_eq!(dry["would_stop"], 1);
    let real: Value =
        serde_json::from_slice(&env.run(&["reap", "--session", "s1", "--json"]).stdout).unwrap();
    assert!(real.get("would_stop").is_none(), "{real}");
    let help = stdout(&env.run(&["status", "--help"]));
    assert!(
        help.contains("Print JSON instead of text for people"),
        "{help}"
    );
}

/// Runs `script` under a pseudo-terminal (util-linux `script`), with `env` added; its output (stdout and stderr
/// together, as a terminal shows them).
fn on_a_tty(state: &Path, script: &str, env: &[(&str, &str)]) -> String {
    let mut command = Command::new("script");
    scrub_env(&mut command);
    command
        .args(["-qec", script, "/dev/null"])
        .env("SESSION_REAPER_STATE_DIR", state)
        .env_remove("NO_COLOR");
    for (name, value) in env {
        command.env(name, value);
    }
    let out = run_bounded(command, None);
    assert!(
        out.status.code().is_some(),
        "`script` from util-linux is needed to test a terminal: {}",
        stderr(&out)
    );
    stdout(&out)
}

#[test]
fn point_7_a_terminal_gets_progress_and_colour_pipes_and_no_color_do_not() {
    let mut env = Env::new();
    let ws = env.workspace("app");
    env.spawn_broker(&ws, "keep", &["sleep", "600"]);
    let stubborn = env
        .spawn_broker_with(
            &ws,
            "s1",
            &["--name", "stubborn", "--grace", "2s"],
            &["sh", "-c", "trap '' TERM; while :; do sleep 1; done"],
        )
        .0;
    // A broker with a dead record, so that status shows a coloured STALE.
    let state = env.state_dir().to_path_buf();
    let reap = format!("{BIN} reap --session s1");
    let shown = on_a_tty(&state, &reap, &[]);
    assert!(
        shown.contains(&format!("SIGTERM sent to {}, SIGKILL in 2s", stubborn.pid)),
        "no progress line on a terminal:\n{shown}"
    );
    assert!(stubborn.gone_within(PATIENCE));
    let coloured = on_a_tty(&state, &format!("{BIN} status"), &[]);
    assert!(
        coloured.contains("\u{1b}[32mlive"),
        "no colour on a terminal:\n{coloured}"
    );
    let plain = on_a_tty(&state, &format!("{BIN} status"), &[("NO_COLOR", "1")]);
    assert!(!plain.contains('\u{1b}'), "NO_COLOR ignored:\n{plain}");
    let never = on_a_tty(&state, &format!("{BIN} --color never status"), &[]);
    assert!(!never.contains('\u{1b}'), "--color never ignored:\n{never}");
    let piped = env.run(&["status"]);
    assert!(!stdout(&piped).contains('\u{1b}') && !stderr(&piped).contains('\u{1b}'));
    let forced = env.run(&["--color", "always", "status"]);
    assert!(stdout(&forced).contains('\u{1b}'));
}

#[test]
fn point_8_the_real_client_test_is_ignored_with_its_reason_and_ci_runs_it() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let e2e = std::fs::read_to_string(root.join("tests/e2e_claude.rs")).unwrap();
    assert!(
        e2e.contains("#[ignore = \"needs the real Claude Code client"),
        "the e2e test passes when it skipped"
    );
    let ci = std::fs::read_to_string(root.join(".ci/run")).unwrap();
    assert!(ci.contains("--test e2e_claude -- --include-ignored"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    for needed in [
        "python3",
        "node",
        "cargo install --path . --locked",
        "Rust 1.89",
    ] {
        assert!(readme.contains(needed), "README does not say {needed:?}");
    }
}

#[test]
fn point_9_an_ended_session_in_the_environment_gives_way_to_ancestry_and_brokers_drop_session_variables()
 {
    let mut env = Env::new();
    let ws = env.workspace("app");
    let (old, live) = (uuid(), uuid());
    let old_agent = env.sleeper();
    start_session(&mut env, &old, &ws, old_agent);
    end_session(&mut env, &old, &ws);

    // With no live session among its ancestors, the refusal names the variable.
    let mut command = env.cmd(&[
        "broker",
        "spawn",
        "--cwd",
        ws.to_str().unwrap(),
        "--",
        "sleep",
        "600",
    ]);
    command.env("CLAUDE_CODE_SESSION_ID", &old);
    let out = env.run_command(command);
    assert_eq!(code(&out), 2);
    assert!(
        stderr(&out).contains("$CLAUDE_CODE_SESSION_ID"),
        "{}",
        stderr(&out)
    );

    // A shell that is the live session's agent runs `broker spawn` with the stale variable (as after /clear).
    let payload = json!({"session_id": live, "hook_event_name": "SessionStart", "cwd": ws});
    let state = env.state_dir().display().to_string();
    let script = format!(
        "echo '{payload}' | {BIN} --state-dir {state} hook --agent claude --sentinel off --owner-pid $$; \
         CLAUDE_CODE_SESSION_ID={old} SESSION_REAPER_SESSION_ID= GEMINI_SESSION_ID=gem-x \
         {BIN} --state-dir {state} broker spawn --json --cwd {} -- sleep 600; true",
        ws.display()
    );
    let mut agent = Command::new("sh");
    scrub_env(&mut agent);
    agent.args(["-c", &script]);
    let out = env.run_command(agent);
    assert!(
        stderr(&out).contains(&format!("using live session {live}")),
        "{}",
        stderr(&out)
    );
    let record: Value = serde_json::from_slice(&out.stdout).expect("spawn --json");
    assert_eq!(record["owners"][0]["session"], live.as_str());
    let pid = record["identity"]["pid"].as_i64().unwrap();
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    for variable in [
        "GEMINI_SESSION_ID=",
        "SESSION_REAPER_SESSION_ID=",
        "CLAUDE_CODE_SESSION_ID=",
    ] {
        assert!(
            !environ
                .split(|byte| *byte == 0)
                .any(|entry| entry.starts_with(variable.as_bytes())),
            "the broker inherited {variable}"
        );
    }
}

#[test]
fn point_10_a_log_in_a_missing_directory_is_bad_input() {
    let mut env = Env::new();
    let ws = env.workspace("app");
    let out = assert_refused_unchanged(
        &mut env,
        &[
            "broker",
            "spawn",
            "--cwd",
            ws.to_str().unwrap(),
            "--session",
            "s1",
            "--log",
            "/nonexistent/dir/x.log",
            "--",
            "sleep",
            "600",
        ],
    );
    assert!(
        stderr(&out).contains("/nonexistent/dir/x.log"),
        "{}",
        stderr(&out)
    );
    // Durations for people are rounded.
    let grace = env.run(&[
        "broker",
        "spawn",
        "--cwd",
        ws.to_str().unwrap(),
        "--grace",
        "3601500ms",
        "--",
        "true",
    ]);
    assert_eq!(code(&grace), 2);
    assert!(stderr(&grace).contains("--grace 1h:"), "{}", stderr(&grace));

    // The same process is the broker of one slot at most.
    let (broker, _) = env.spawn_broker_with(&ws, "s1", &[], &["sleep", "600"]);
    let out = assert_refused_unchanged(
        &mut env,
        &[
            "broker",
            "register",
            "--pid",
            &broker.pid.to_string(),
            "--cwd",
            ws.to_str().unwrap(),
            "--name",
            "second",
            "--session",
            "s1",
        ],
    );
    assert!(
        stderr(&out).contains("already the broker of"),
        "{}",
        stderr(&out)
    );

    // A hook run by hand with a typo'd event name records no live session; the mistake is reported.
    let id = uuid();
    let payload = json!({"session_id": id, "hook_event_name": "SessionStrat", "cwd": ws});
    let out = env.run_stdin(
        &["hook", "--agent", "claude"],
        payload.to_string().as_bytes(),
    );
    assert_eq!(code(&out), 0);
    assert!(stderr(&out).contains("SessionStrat"), "{}", stderr(&out));
    assert!(!env.state_dir().join(format!("sessions/{id}.json")).exists());

    // The --shutdown-command learns the broker's pid; a graceful step that fails is logged.
    let seen = env.state_dir().with_extension("pid-seen");
    let command = format!("echo $SESSION_REAPER_BROKER_PID > {}", seen.display());
    let (graceful, _) = env.spawn_broker_with(
        &ws,
        "s2",
        &["--name", "graceful", "--shutdown-command", &command],
        &["sleep", "600"],
    );
    let (socketed, _) = env.spawn_broker_with(
        &ws,
        "s3",
        &[
            "--name",
            "socketed",
            "--shutdown-socket",
            "/nonexistent/broker.sock",
            "--shutdown-message",
            "bye",
        ],
        &["sleep", "600"],
    );
    assert_eq!(code(&env.run(&["reap", "--session", "s2"])), 0);
    assert_eq!(code(&env.run(&["reap", "--session", "s3"])), 0);
    assert!(graceful.gone_within(PATIENCE) && socketed.gone_within(PATIENCE));
    assert_eq!(
        std::fs::read_to_string(&seen).unwrap_or_default().trim(),
        graceful.pid.to_string()
    );
    assert!(
        env.events()
            .iter()
            .any(|event| event["action"] == "error" && event.to_string().contains("graceful step")),
        "the failed graceful step is not logged"
    );
}

/// The fixture world of the `status` snapshot: three sessions (one whose agent was killed), a broker two of them
/// share, one with members, a stale record, a stuck stop, a leftover and a Codex plugin broker — fixed ids, pids,
/// times and memory, so the picture only changes when the renderer does.
// One fixture world, read top to bottom.
#[allow(clippy::too_many_lines)]
pub(crate) fn fixture_world() -> session_reaper::testing::StatusTree {
    use session_reaper::testing::{Facts, build};
    use session_reaper::testing::{Member, SlotStatus, Snapshot, TicketStatus};
    const NOW: &str = "2026-12-03T10:00:00Z";
    let (a, b, c) = (
        "0b5f6b3e-41c2-4d57-9a51-3c6f0e9d2a11",
        "3f0c2a9e-8d14-4b6a-b1f2-77e0c4d9a5b3",
        "9a0c3d41-5e6f-4a7b-8c9d-0e1f2a3b4c5d",
    );
    let identity =
        |pid: i32| json!({"boot_id": "b00t", "pid": pid, "start_ticks": 1000 + pid, "uid": 1000});
    let broker = |name: &str,
                  workspace: &str,
                  command: &[&str],
                  owners: &[&str],
                  pid: i32,
                  active: &str| {
        let owners: Vec<Value> = owners
            .iter()
            .map(|owner| json!({"session": owner, "since": "2026-12-03T09:00:00Z"}))
            .collect();
        serde_json::from_value(json!({
            "name": name, "workspace": workspace, "cwd": workspace, "command": command, "owners": owners,
            "identity": identity(pid), "pgid": pid, "created_at": "2026-12-03T09:00:00Z", "last_active": active,
            "host": "h"
        }))
        .unwrap()
    };
    let session = |id: &str, agent: &str, pid: i32, cwd: &str, started: &str| {
        serde_json::from_value(json!({
            "session_id": id, "agent": agent, "cwd": cwd, "agent_identity": identity(pid), "host": "h",
            "started_at": started, "last_seen": started
        }))
        .unwrap()
    };
    let member = |pid: i32, argv: &str, rss_kib: u64| Member {
        pid,
        argv: argv.split(' ').map(str::to_owned).collect(),
        rss_kib: Some(rss_kib),
    };
    let slot = |label: &str, alive: bool, record, members| SlotStatus {
        slot: label.to_owned(),
        alive,
        record,
        members,
    };
    let snapshot = Snapshot {
        state_dir: "/home/me/.local/state/session-reaper".to_owned(),
        slots: vec![
            slot(
                "app-1/default",
                true,
                broker("default", "/home/me/src/app", &["npm", "run", "dev"], &[a, b], 4242, "2026-12-03T09:58:00Z"),
                vec![
                    member(4243, "node vite --port 5173", 120_400),
                    member(4250, "esbuild --service", 22_000),
                ],
            ),
            slot(
                "docs-2/default",
                true,
                broker("default", "/home/me/src/docs", &["mkdocs", "serve"], &[c], 4300, "2026-12-03T09:20:00Z"),
                Vec::new(),
            ),
            slot(
                "app-1/storybook",
                false,
                broker("storybook", "/home/me/src/app", &["npm", "run", "storybook"], &["5d2e7f10"], 4400, "2026-12-03T08:00:00Z"),
                Vec::new(),
            ),
        ],
        unreadable: Vec::new(),
        tickets: vec![TicketStatus {
            alive: true,
            stuck: true,
            members_left: vec![member(4501, "node worker.js", 30_100)],
            ticket: serde_json::from_value(json!({
                "identity": identity(4500), "pgid": 4500, "reason": "session_end",
                "requested_at": "2026-12-03T09:45:00Z", "grace_ms": 5000, "attempts": 3,
                "origin": "api-3/default", "workspace": "/home/me/src/api", "name": "default", "host": "h"
            }))
            .unwrap(),
        }],
        sessions: vec![
            session(a, "claude", 1033, "/home/me/src/app", "2026-12-03T08:30:00Z"),
            session(b, "gemini", 1090, "/home/me/src/app", "2026-12-03T09:10:00Z"),
            session(c, "claude", 1200, "/home/me/src/docs", "2026-12-03T09:15:00Z"),
        ],
        finisher_running: true,
        leftovers: Vec::new(),
        reported_leftovers: Vec::new(),
        codex_plugin: vec![session_reaper::testing::BrokerStatus {
            workspace: "/home/me/src/app".to_owned(),
            state_dir: None,
            pid: Some(4600),
            alive: true,
            unlisted: false,
            owners: vec![b.to_owned()],
            busy: None,
            idle_secs: Some(95),
            check: "verified",
            endpoint: None,
        }],
    };
    let facts = Facts {
        now: session_reaper::testing::parse_time(NOW),
        rss_kib: [
            (1033, 412_000),
            (1090, 198_000),
            (4242, 96_500),
            (4300, 41_200),
            (4600, 88_000),
        ]
        .into_iter()
        .collect(),
        agent_alive: [
            (a.to_owned(), true),
            (b.to_owned(), true),
            (c.to_owned(), false),
        ]
        .into_iter()
        .collect(),
        next_sweep: [
            (
                "docs-2/default".to_owned(),
                format!("drop ended owners {c}; stop (idle_timeout)"),
            ),
            (
                "app-1/storybook".to_owned(),
                "prune the record (broker_gone)".to_owned(),
            ),
        ]
        .into_iter()
        .collect(),
    };
    // What the leftovers discovery reports: the agents' MCP servers, the leftovers-to-be, the sentinels.
    let view = |session: &str, agent_pid: i32, sentinel_pid: Option<i32>, policy| {
        session_reaper::testing::SessionView {
            session: session.to_owned(),
            agent_pid,
            policy,
            sentinel: sentinel_pid.is_some(),
            sentinel_pid,
            leftovers: Vec::new(),
            spared: Vec::new(),
            mcp_servers: Vec::new(),
            containment: session_reaper::testing::CgroupView::default(),
        }
    };
    let (stop, report) = (
        session_reaper::testing::Policy::Stop,
        session_reaper::testing::Policy::Report,
    );
    let mut watched = view(a, 1033, Some(1036), stop);
    watched.mcp_servers = vec![
        session_reaper::testing::McpServer {
            pid: 1040,
            argv: vec![
                "npx".into(),
                "-y".into(),
                "@modelcontextprotocol/server-memory".into(),
            ],
            rss_kib: 98_300,
            processes: 2,
        },
        session_reaper::testing::McpServer {
            pid: 1052,
            argv: vec!["uvx".into(), "mcp-server-git".into()],
            rss_kib: 31_000,
            processes: 1,
        },
    ];
    let mut dead = view(c, 1200, Some(1260), stop);
    dead.leftovers = vec![session_reaper::testing::Leftover {
        pid: 1250,
        identity: serde_json::from_value(identity(1250)).unwrap(),
        argv: vec![
            "python3".into(),
            "-m".into(),
            "http.server".into(),
            "8000".into(),
        ],
        rss_kib: 18_300,
        via: "CLAUDE_CODE_SESSION_ID",
    }];
    let mut snapshot = snapshot;
    snapshot.leftovers = vec![watched, view(b, 1090, None, report), dead];
    build(&snapshot, &facts)
}

#[test]
fn status_reads_well_for_a_fixture_world() {
    let tree = fixture_world();
    let text = session_reaper::testing::render(&tree, false);
    insta::assert_snapshot!("status_tree", text);
}
