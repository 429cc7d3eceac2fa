//! Setting up: `demo` cleans up after itself, `install`/`uninstall` keep the rest of a settings file and name a
//! command our CLI accepts, `doctor` flags an unsafe state root, and shell completions print. Every run that reads
//! agent settings gets a temporary HOME.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::{Value, json};

use crate::harness::{BIN, Env, PATIENCE, run_bounded, scrub_env, stderr, stdout, wait_until};

/// The words of a shell command line, with quotes and backslashes resolved (no expansion): the installer's own
/// reading, so that the test checks the words the installer means.
pub(crate) fn shell_words(line: &str) -> Vec<String> {
    session_reaper::testing::shell_words(line).expect("balanced quotes")
}

/// Asserts that `session-reaper ARGS…` parses: with `--help` appended, clap prints the subcommand's usage and
/// exits 0 only when the subcommand and every flag before it are valid. (`hook` exits 0 even on a usage error,
/// so the usage line on stdout is what counts; `state` keeps such an error's event out of the real state root.)
pub(crate) fn assert_cli_accepts(state: &Path, args: &[String]) {
    let mut command = Command::new(BIN);
    scrub_env(&mut command);
    command
        .arg("--state-dir")
        .arg(state)
        .args(args)
        .arg("--help");
    let out = run_bounded(command, None);
    let usage = format!(
        "Usage: session-reaper {}",
        args.first().map_or("", String::as_str)
    );
    assert!(
        out.status.success() && stdout(&out).contains(&usage),
        "session-reaper {} is refused by our CLI: {}",
        args.join(" "),
        stderr(&out)
    );
}

/// The binary with this test's state root and `home` as HOME (agent settings and crontab paths derive from it).
fn at_home(env: &Env, home: &Path, args: &[&str]) -> Command {
    let mut command = env.cmd(args);
    command.env("HOME", home).env_remove("XDG_CONFIG_HOME");
    command
}

/// The files in `dir` (recursively) with their bytes.
fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path.clone());
                files.push((path, Vec::new()));
            } else {
                files.push((path.clone(), std::fs::read(&path).unwrap_or_default()));
            }
        }
    }
    files.sort();
    files
}

#[test]
fn hook_command_check_rejects_what_the_cli_refuses() {
    // The acceptance check itself: a bad value or flag must not pass it (the hook exits 0 on usage errors).
    let state = tempfile::tempdir().unwrap();
    for args in [
        vec!["hook", "--agent", "bogus"],
        vec!["sweep", "--bogus"],
        vec!["bogus"],
    ] {
        let args: Vec<String> = args.into_iter().map(str::to_owned).collect();
        let refused = std::panic::catch_unwind(|| assert_cli_accepts(state.path(), &args)).is_err();
        assert!(refused, "{args:?} passed the acceptance check");
    }
    assert_cli_accepts(state.path(), &["hook".to_owned()]);
}

/// Whether a live process with this pid is one of the demo's (a `sleep 600`, a `sh -c trap …` broker, or anything
/// naming the demo's temporary directory).
fn demo_like(pid: i32) -> Option<String> {
    let bytes = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let argv: Vec<String> = bytes
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let line = argv.join(" ");
    let ours = argv == ["sleep", "600"]
        || (argv.first().is_some_and(|p| p.ends_with("sh"))
            && argv.get(2).is_some_and(|s| s.starts_with("trap")))
        || line.contains("session-reaper-demo-");
    ours.then_some(line)
}

#[test]
fn demo_exits_0_and_leaves_none_of_its_processes_behind() {
    let env = Env::new();
    let mut command = env.cmd(&["demo"]);
    command.env("TMPDIR", env.work.path());
    let out = run_bounded(command, None);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\n{}",
        stdout(&out),
        stderr(&out)
    );
    let text = stdout(&out);
    let line = text
        .lines()
        .find_map(|line| line.trim_start().strip_prefix("demo pids:"))
        .unwrap_or_else(|| panic!("no `demo pids:` line in:\n{text}"));
    assert!(line.ends_with("(all gone)"), "{line}");
    let pids: Vec<i32> = line
        .split_whitespace()
        .map_while(|word| word.parse().ok())
        .collect();
    assert!(pids.len() >= 5, "two fake agents and three brokers: {line}");
    for pid in &pids {
        assert_eq!(demo_like(*pid), None, "pid {pid} of the demo still runs");
    }
    // Nothing else of the demo's either (its finisher, say): no process names its temporary directory.
    let demo_dir = env.work.path().to_string_lossy().into_owned();
    let leftovers = || -> Vec<String> {
        std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
            .filter_map(|pid| {
                let bytes = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
                let line = String::from_utf8_lossy(&bytes).replace('\0', " ");
                line.contains(&demo_dir).then(|| format!("{pid}: {line}"))
            })
            .collect()
    };
    assert!(
        wait_until(PATIENCE, || leftovers().is_empty()),
        "still running: {:?}",
        leftovers()
    );
    let left: Vec<_> = std::fs::read_dir(env.work.path()).unwrap().collect();
    assert!(
        left.is_empty(),
        "the demo removes its temporary directory: {left:?}"
    );
}

/// A settings file a user already has: other keys, other hooks, among them one on an event we install into.
fn existing_settings() -> Value {
    json!({
        "model": "opus",
        "permissions": {"allow": ["Bash(ls:*)"]},
        "hooks": {
            "SessionStart": [
                {"matcher": "startup", "hooks": [{"type": "command", "command": "echo hello", "timeout": 3}]}
            ],
            "PreToolUse": [
                {"matcher": "Bash", "hooks": [{"type": "command", "command": "/usr/local/bin/guard"}]}
            ]
        },
        "statusLine": {"type": "command", "command": "date"}
    })
}

fn run_install(
    env: &Env,
    home: &Path,
    verb: &str,
    agent: &str,
    settings: &Path,
    extra: &[&str],
) -> Output {
    let mut args = vec![
        verb,
        "--agent",
        agent,
        "--settings",
        settings.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    run_bounded(at_home(env, home, &args), None)
}

#[test]
fn install_keeps_other_hooks_is_idempotent_and_uninstall_restores_the_original() {
    let env = Env::new();
    let home = env.work.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let settings = home.join("settings.json");
    let original = existing_settings();
    std::fs::write(&settings, serde_json::to_string_pretty(&original).unwrap()).unwrap();

    let out = run_install(&env, &home, "install", "claude", &settings, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let installed_bytes = std::fs::read(&settings).unwrap();
    let installed: Value = serde_json::from_slice(&installed_bytes).unwrap();
    for key in ["model", "permissions", "statusLine"] {
        assert_eq!(installed[key], original[key], "{key} kept");
    }
    assert_eq!(
        installed["hooks"]["PreToolUse"],
        original["hooks"]["PreToolUse"]
    );
    let commands = session_reaper::testing::all_commands(&installed);
    assert!(commands.iter().any(|c| c == "echo hello"), "{commands:?}");
    let ours: Vec<&String> = commands
        .iter()
        .filter(|c| session_reaper::testing::is_our_command(c))
        .collect();
    assert_eq!(ours.len(), 2, "SessionStart and SessionEnd: {commands:?}");

    let out = run_install(&env, &home, "install", "claude", &settings, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        std::fs::read(&settings).unwrap(),
        installed_bytes,
        "installing twice is installing once"
    );

    let out = run_install(&env, &home, "uninstall", "claude", &settings, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let restored: Value = serde_json::from_slice(&std::fs::read(&settings).unwrap()).unwrap();
    assert_eq!(restored, original);
}

#[test]
fn install_for_each_agent_writes_parseable_settings_naming_a_command_our_cli_accepts() {
    let env = Env::new();
    let home = env.work.path().join("home");
    for agent in session_reaper::testing::Agent::all().map(session_reaper::testing::Agent::as_str) {
        let settings = env.work.path().join(agent).join("settings.json");
        let out = run_install(&env, &home, "install", agent, &settings, &[]);
        assert_eq!(out.status.code(), Some(0), "{agent}: {}", stderr(&out));
        let spec = session_reaper::testing::Agent::from_name(agent)
            .unwrap()
            .spec();
        let text = std::fs::read_to_string(&settings).unwrap();
        let (value, _) = session_reaper::testing::parse_settings(spec, &text, &settings)
            .unwrap_or_else(|err| panic!("{agent}: installed file does not parse: {err}"));
        let (events, commands): (Vec<String>, Vec<String>) =
            session_reaper::testing::commands_in(spec, &value)
                .into_iter()
                .unzip();
        assert_eq!(
            events,
            spec.events().collect::<Vec<_>>(),
            "{agent}: {value}"
        );
        for command in commands {
            let words = shell_words(&command);
            let (program, args) = words.split_first().unwrap();
            assert_eq!(
                std::fs::canonicalize(program).unwrap(),
                std::fs::canonicalize(BIN).unwrap(),
                "{agent}: the hook runs this binary by its absolute path"
            );
            assert_eq!(args[..3], ["hook", "--agent", agent], "{agent}: {command}");
            assert_cli_accepts(env.state_dir(), args);
        }
    }
    assert!(
        !home.exists(),
        "with --settings nothing is written under HOME"
    );
}

#[test]
fn install_refuses_an_invalid_settings_file_with_exit_2_and_leaves_it_untouched() {
    let env = Env::new();
    let home = env.work.path().join("home");
    let dir = env.work.path().join("claude");
    std::fs::create_dir_all(&dir).unwrap();
    let settings = dir.join("settings.json");
    for garbage in ["{\"hooks\": {", "[1, 2]", "{\"hooks\": []}"] {
        std::fs::write(&settings, garbage).unwrap();
        let before = snapshot(&dir);
        for verb in ["install", "uninstall"] {
            let out = run_install(&env, &home, verb, "claude", &settings, &[]);
            assert_eq!(out.status.code(), Some(2), "{verb} {garbage}: {out:?}");
            assert!(
                stderr(&out).contains(settings.to_str().unwrap()),
                "the error names the file: {}",
                stderr(&out)
            );
            assert_eq!(
                snapshot(&dir),
                before,
                "{verb} {garbage}: file untouched, no backup"
            );
        }
    }
}

#[test]
fn install_dry_run_writes_nothing() {
    let env = Env::new();
    let home = env.work.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    // A file that does not exist yet, in a directory that does not either.
    let fresh = home.join(".claude").join("settings.json");
    let out = run_install(&env, &home, "install", "claude", &fresh, &["--dry-run"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stdout(&out).contains("would"), "{}", stdout(&out));
    assert!(snapshot(&home).is_empty(), "{:?}", snapshot(&home));
    // An existing file, and --with-sweep (dry run only: never the real crontab or systemd units).
    let settings = home.join("settings.json");
    std::fs::write(
        &settings,
        serde_json::to_string_pretty(&existing_settings()).unwrap(),
    )
    .unwrap();
    let before = snapshot(&home);
    for verb in ["install", "uninstall"] {
        let out = run_install(
            &env,
            &home,
            verb,
            "claude",
            &settings,
            &["--dry-run", "--with-sweep"],
        );
        assert_eq!(out.status.code(), Some(0), "{verb}: {}", stderr(&out));
        assert_eq!(snapshot(&home), before, "{verb} --dry-run wrote something");
    }
    // Installed for real, a dry-run uninstall leaves it installed.
    assert_eq!(
        run_install(&env, &home, "install", "claude", &settings, &[])
            .status
            .code(),
        Some(0)
    );
    let before = snapshot(&home);
    let out = run_install(
        &env,
        &home,
        "uninstall",
        "claude",
        &settings,
        &["--dry-run"],
    );
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(snapshot(&home), before);
}

fn doctor(env: &Env, home: &Path) -> (Option<i32>, Value) {
    let out = run_bounded(at_home(env, home, &["doctor", "--json"]), None);
    let report = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|err| panic!("doctor --json: {err}: {}", stdout(&out)));
    (out.status.code(), report)
}

#[test]
fn doctor_json_parses_and_fails_a_group_writable_state_root() {
    let env = Env::new();
    let home = env.work.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let state = env.state_dir();

    let (code, healthy) = doctor(&env, &home);
    let checks = healthy["checks"].as_array().expect("checks");
    assert!(!checks.is_empty());
    for check in checks {
        assert!(
            check["name"].is_string() && check["detail"].is_string(),
            "{check}"
        );
        assert!(
            ["ok", "warn", "fail"].contains(&check["level"].as_str().unwrap()),
            "{check}"
        );
    }
    assert_ne!(healthy["worst"], "fail", "{healthy}");
    assert_eq!(code, Some(0), "{healthy}");

    std::fs::set_permissions(state, std::fs::Permissions::from_mode(0o770)).unwrap();
    let (code, report) = doctor(&env, &home);
    std::fs::set_permissions(state, std::fs::Permissions::from_mode(0o700)).unwrap();
    assert_eq!(code, Some(1), "{report}");
    assert_eq!(report["worst"], "fail");
    let failed: Vec<&Value> = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["level"] == "fail")
        .collect();
    assert!(
        failed.iter().any(|c| c["detail"]
            .as_str()
            .unwrap()
            .contains(state.to_str().unwrap())),
        "a failed check names {}: {report}",
        state.display()
    );
    assert!(failed.iter().all(|c| c["fix"].is_string()), "{report}");
}

#[test]
fn completions_print_for_every_shell() {
    let env = Env::new();
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let out = run_bounded(env.cmd(&["completions", shell]), None);
        assert_eq!(out.status.code(), Some(0), "{shell}: {}", stderr(&out));
        assert!(
            stdout(&out).contains("session-reaper"),
            "{shell}: {}",
            stdout(&out)
        );
    }
}
