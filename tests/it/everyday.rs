//! Everyday use of the broker commands and `keep`: `broker spawn` without a fixed wait (an early exit still shown),
//! broker commands run by hand, session prefixes, `keep`'s event and JSON, reported leftovers in `status`.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{Env, PATIENCE, Proc, fresh_session, stderr, stdout, wait_until};

/// The wait `broker spawn` used to make every time: a spawn now returns well before it.
const OLD_FIXED_WAIT: Duration = Duration::from_millis(300);

#[test]
fn broker_spawn_returns_without_a_fixed_wait_and_an_early_exit_still_shows() {
    let mut env = Env::new();
    let ws = env.workspace("app");
    let cwd = ws.to_str().unwrap();
    // The fastest of five: the machine may be loaded, but not for every run.
    let fastest = (0..5)
        .map(|round| {
            let name = format!("b{round}");
            let started = Instant::now();
            let out = env.run(&[
                "broker",
                "spawn",
                "--cwd",
                cwd,
                "--name",
                &name,
                "--no-owner",
                "--",
                "sleep",
                "600",
            ]);
            assert!(out.status.success(), "{}", stderr(&out));
            started.elapsed()
        })
        .min()
        .unwrap();
    assert!(
        fastest < OLD_FIXED_WAIT,
        "the fastest spawn took {fastest:?}"
    );

    // A broker that exits at once: recorded, and `status` says it no longer runs.
    let out = env.run(&[
        "broker",
        "spawn",
        "--cwd",
        cwd,
        "--name",
        "early",
        "--no-owner",
        "--",
        "sh",
        "-c",
        "exit 3",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let early_gone = |env: &mut Env| {
        env.status()["slots"]
            .as_array()
            .unwrap()
            .iter()
            .any(|slot| slot["name"] == "early" && slot["alive"] == false)
    };
    assert!(wait_until(PATIENCE, || early_gone(&mut env)));
    let text = stdout(&env.run(&["status"]));
    let row = text
        .lines()
        .find(|line| line.contains("[early]"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(row.contains("STALE"), "{row}");

    // `--wait`: watched, and refused with its exit status when it exits meanwhile.
    let out = env.run(&[
        "broker",
        "spawn",
        "--wait",
        "--cwd",
        cwd,
        "--name",
        "waited",
        "--no-owner",
        "--",
        "sh",
        "-c",
        "exit 4",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(
        stderr(&out).contains("exited at once (exit status 4)"),
        "{}",
        stderr(&out)
    );
    assert!(
        env.events_where("spawn", None)
            .iter()
            .any(|event| event["result"] == "failed"
                && event["detail"] == "exited at once (exit status 4)")
    );
    let out = env.run(&[
        "broker",
        "spawn",
        "--wait=50ms",
        "--cwd",
        cwd,
        "--name",
        "lives",
        "--no-owner",
        "--",
        "sleep",
        "600",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
}

/// A broker command run by hand names a session no agent or hook knows: `status` shows it as by hand, not as a
/// live session; `reap` ends it.
#[test]
fn a_session_named_only_by_hand_is_shown_for_what_it_is() {
    let mut env = Env::new();
    let ws = env.workspace("app");
    let session = fresh_session("byhand");
    let out = env.run(&[
        "broker",
        "spawn",
        "--cwd",
        ws.to_str().unwrap(),
        "--session",
        &session,
        "--",
        "sleep",
        "600",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&env.run(&["status"]));
    assert!(text.contains("sessions (0 live, 1 by hand)"), "{text}");
    let line = text
        .lines()
        .find(|line| line.starts_with(&session))
        .unwrap();
    assert!(line.contains(" by hand "), "{line}");
    let out = env.run(&["reap", "--session", &session]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&env.run(&["status"])).contains("sessions (0 live)"));
}

/// Like git's short ids: a prefix of fewer than four characters is refused, four are enough.
#[test]
fn a_session_prefix_needs_four_characters() {
    let mut env = Env::new();
    let ws = env.workspace("app");
    let session = format!("a{}", fresh_session("prefix"));
    let out = env.run(&[
        "broker",
        "spawn",
        "--cwd",
        ws.to_str().unwrap(),
        "--session",
        &session,
        "--",
        "sleep",
        "600",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    for short in [&session[..1], &session[..3]] {
        for command in [
            &["reap", "--session", short][..],
            &["log", "--session", short],
        ] {
            let out = env.run(command);
            assert_eq!(out.status.code(), Some(2), "{command:?}: {}", stdout(&out));
            assert!(
                stderr(&out).contains("a prefix needs at least 4 characters"),
                "{}",
                stderr(&out)
            );
        }
    }
    let out = env.run(&["reap", "--session", &session[..4], "--dry-run"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains(&session), "{}", stdout(&out));
}

/// `keep --pid` logs a `keep` event; `--json` prints what was started or marked.
#[test]
fn keep_logs_its_mark_and_prints_json() {
    let mut env = Env::new();
    let sleeper = env.sleeper();
    let pid = sleeper.pid.to_string();
    let out = env.run(&["keep", "--pid", &pid, "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let marked: Value = serde_json::from_slice(&out.stdout).expect("keep --json parses");
    assert_eq!(marked["pid"], sleeper.pid);
    assert_eq!(marked["kept"], serde_json::json!([sleeper.pid]));
    let events = env.events_where("keep", None);
    assert!(
        events
            .iter()
            .any(|event| event["pid"] == sleeper.pid && event["result"] == "kept"),
        "{events:?}"
    );

    let out = env.run(&["keep", "--json", "--", "sleep", "600"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let started: Value = serde_json::from_slice(&out.stdout).expect("keep --json parses");
    let kept = Proc::of(i32::try_from(started["pid"].as_i64().unwrap()).unwrap()).unwrap();
    env.track(kept);
    assert_eq!(started["command"], serde_json::json!(["sleep", "600"]));
}

/// `--leftovers report` leaves a leftover running once its agent is gone: `status` shows it (text and JSON), not
/// only `log`.
#[test]
fn a_reported_leftover_shows_in_status() {
    let mut env = Env::new();
    let session = fresh_session("reported");
    let mut agent = env.fake_agent(
        &session,
        "CLAUDE_CODE_SESSION_ID",
        &["--agent", "claude", "--leftovers", "report"],
    );
    agent.order("start");
    agent.order(&format!(
        "run (setsid sh -c 'echo $$ > {}; exec sleep 600' &)",
        env.work_path("daemon.pid")
    ));
    let daemon = env.planted("daemon.pid");
    agent.kill();
    assert!(
        wait_until(PATIENCE, || !env
            .events_where("leftover", Some("leftover"))
            .is_empty()),
        "{:#?}",
        env.events()
    );
    assert!(daemon.alive(), "reported, not stopped");
    let status = env.status();
    let reported = status["reported_leftovers"].as_array().unwrap();
    assert!(
        reported
            .iter()
            .any(|row| row["pid"] == daemon.pid && row["session"] == session.as_str()),
        "{status:#}"
    );
    let text = stdout(&env.run(&["status"]));
    assert!(
        text.lines()
            .any(|line| line.contains(&format!("reported {}  sleep 600", daemon.pid))),
        "{text}"
    );
}

/// Every object key anywhere in `value`.
fn keys(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, inner) in map {
                out.push(key.clone());
                keys(inner, out);
            }
        }
        Value::Array(items) => items.iter().for_each(|item| keys(item, out)),
        _ => {}
    }
}

/// A session is `session` in every JSON a command prints (records on disk keep the `session_id` they have).
#[test]
fn json_names_a_session_session_everywhere() {
    let mut env = Env::new();
    let ws = env.workspace("app");
    let agent = env.sleeper();
    let session = fresh_session("keys");
    let payload = crate::hook_test::hook_payload(&session, "SessionStart", &ws);
    let mut hook = env.cmd(&["hook", "--agent", "claude", "--owner-pid"]);
    hook.arg(agent.pid.to_string())
        .env("SESSION_REAPER_SENTINEL", "off")
        .env("SESSION_REAPER_LEFTOVERS", "off");
    let out = crate::harness::run_bounded(hook, Some(&payload));
    assert!(out.status.success());
    env.spawn_broker(&ws, &session, &["sleep", "600"]);
    let mut printed = Vec::new();
    for command in [
        &["status", "--json"][..],
        &["sweep", "--dry-run", "--json"],
        &["reap", "--session", &session, "--dry-run", "--json"],
    ] {
        let out = env.run(command);
        let value: Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|_| panic!("{command:?}: {}", stdout(&out)));
        printed.push((command.join(" "), value));
    }
    let log = env.run(&["log", "--json"]);
    for line in stdout(&log).lines() {
        printed.push(("log --json".to_owned(), serde_json::from_str(line).unwrap()));
    }
    for (command, value) in &printed {
        let mut found = Vec::new();
        keys(value, &mut found);
        assert!(
            !found.iter().any(|key| key == "session_id"),
            "{command} prints session_id: {value:#}"
        );
    }
    let status = &printed[0].1;
    assert_eq!(status["sessions"][0]["session"], session.as_str());
}

/// `--color always` colours the result words of `log`, `sweep`, `reap` and `broker spawn`, as it does `status`'s
/// state words; `never` (and `NO_COLOR` with `auto`) does not.
#[test]
fn every_output_for_people_is_coloured_the_same_way() {
    let mut env = Env::new();
    let ws = env.workspace("app");
    let cwd = ws.to_str().unwrap().to_owned();
    let session = fresh_session("colour");
    let escape = "\u{1b}[";
    let spawn = |when: &str| -> Vec<String> {
        [
            "--color",
            when,
            "broker",
            "spawn",
            "--cwd",
            &cwd,
            "--session",
            &session,
            "--",
            "sleep",
            "600",
        ]
        .map(str::to_owned)
        .to_vec()
    };
    for (when, coloured) in [("always", true), ("never", false)] {
        let words = spawn(when);
        let words: Vec<&str> = words.iter().map(String::as_str).collect();
        let out = env.run(&words);
        assert_eq!(stdout(&out).contains(escape), coloured, "{}", stdout(&out));
    }
    // A broker that exited: the sweep would prune its record.
    let out = env.run(&[
        "broker",
        "spawn",
        "--cwd",
        &cwd,
        "--name",
        "exited",
        "--no-owner",
        "--",
        "true",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    for command in [
        &["log"][..],
        &["status"],
        &["sweep", "--dry-run"],
        &["reap", "--session", &session],
    ] {
        for (when, coloured) in [("always", true), ("never", false)] {
            let mut words = vec!["--color", when];
            words.extend_from_slice(command);
            if command[0] == "reap" && when == "never" {
                continue;
            }
            let out = env.run(&words);
            assert_eq!(
                stdout(&out).contains(escape),
                coloured,
                "{command:?} --color {when}: {}",
                stdout(&out)
            );
        }
        let mut auto = env.cmd(command);
        auto.env("NO_COLOR", "1");
        let out = env.run_command(auto);
        assert!(!stdout(&out).contains(escape), "{command:?} with NO_COLOR");
    }
}
