//! Agents as data, end to end through the binary: `install` / `uninstall` for every agent of the table (empty file,
//! a busy file with comments where the agent allows them, twice, after the agent rewrote it, back to the original),
//! at most one backup per file and none of our entries alone, an empty home left empty, `--state-dir` and `--scope
//! project` in what is written, the shared sweep (and no place for it), `--json`, every agent's payload shapes, one
//! session reached through two agents' hooks, Droid's old wrapped file, OpenCode's plugin, and `doctor` running the
//! installed hooks.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Output;

use serde_json::{Value, json};

use crate::harness::{Env, Home, run_bounded, stderr, stdout};
use crate::hook_test::HookTest;

use session_reaper::testing::{AGENTS, Agent, AgentSpec, EventsAt, Layout};

/// Runs `args` in `home` with the test's state root.
fn run(env: &Env, home: &Home, args: &[&str]) -> Output {
    run_bounded(home.cmd(env, None, args), None)
}

fn install(env: &Env, home: &Home, verb: &str, agent: &str, settings: &Path) -> Output {
    let out = run(
        env,
        home,
        &[
            verb,
            "--agent",
            agent,
            "--settings",
            settings.to_str().unwrap(),
        ],
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{verb} {agent}: {}{}",
        stdout(&out),
        stderr(&out)
    );
    out
}

fn read_value(spec: &AgentSpec, path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap();
    session_reaper::testing::parse_settings(spec, &text, path)
        .unwrap()
        .0
}

/// A settings file someone already has for `spec`: other keys, a foreign hook on one of our events and on another
/// event, and (where the agent reads JSONC) comments.
fn busy_file(spec: &AgentSpec) -> String {
    let foreign = |command: &str| match spec.layout {
        Layout::Flat => json!({ spec.command_key: command }),
        Layout::Grouped => {
            json!({ "matcher": "startup", "hooks": [ { "type": "command", spec.command_key: command } ] })
        }
    };
    let start = serde_json::to_string(&foreign("echo mine-at-start")).unwrap();
    let other = serde_json::to_string(&foreign("lint.sh")).unwrap();
    let version = if spec.layout == Layout::Flat {
        "\n  \"version\": 1,"
    } else {
        ""
    };
    let (comment, trailing) = if spec.comments {
        (
            "\n  // my own settings, keep this comment",
            "  /* and this one */\n",
        )
    } else {
        ("", "")
    };
    let extra = if spec.hooks_only_file {
        ""
    } else {
        "\n  \"model\": \"opus\",\n  \"env\": {\"FOO\": \"1\"},"
    };
    let events = format!(
        "\"{}\": [{start}],\n    \"PreToolUse\": [{other}]",
        spec.start_event
    );
    match spec.events_at {
        EventsAt::HooksKey => format!(
            "{{{comment}{version}{extra}\n  \"hooks\": {{\n    {events}\n  }}\n{trailing}}}\n"
        ),
        EventsAt::TopLevel => format!("{{{comment}{version}{extra}\n  {events}\n{trailing}}}\n"),
    }
}

/// The JSON-settings agents (not those that take a plugin file of ours).
fn json_agents() -> impl Iterator<Item = &'static AgentSpec> {
    AGENTS.iter().filter(|spec| !spec.is_plugin())
}

/// Every file below `dir`, relative, sorted.
fn files_below(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(current) = stack.pop() {
        for entry in std::fs::read_dir(&current).into_iter().flatten().flatten() {
            let path = entry.path();
            found.push(path.strip_prefix(dir).unwrap().display().to_string());
            if path.is_dir() {
                stack.push(path);
            }
        }
    }
    found.sort();
    found
}

/// Where the agent reads JSONC, both comments of [`busy_file`] are still in `text`.
fn assert_comments_kept(spec: &AgentSpec, text: &str) {
    if spec.comments {
        assert!(
            text.contains("// my own settings, keep this comment")
                && text.contains("/* and this one */"),
            "{}: {text}",
            spec.name
        );
    }
}

fn settings_path(env: &Env, spec: &AgentSpec, case: &str) -> PathBuf {
    env.work
        .path()
        .join(case)
        .join(spec.name)
        .join(spec.settings_file)
}

fn ours(spec: &AgentSpec, value: &Value) -> Vec<(String, String)> {
    session_reaper::testing::commands_in(spec, value)
        .into_iter()
        .filter(|(_, command)| session_reaper::testing::is_our_command(command))
        .collect()
}

#[test]
fn every_agent_installs_into_an_empty_file_twice_and_uninstalls_to_nothing() {
    let env = Env::new();
    let home = Home::new(&env);
    for spec in AGENTS {
        let path = settings_path(&env, spec, "empty");
        install(&env, &home, "install", spec.name, &path);
        let value = read_value(spec, &path);
        let found = ours(spec, &value);
        let events: Vec<&str> = found.iter().map(|(event, _)| event.as_str()).collect();
        assert_eq!(
            events,
            spec.events().collect::<Vec<_>>(),
            "{}: {value}",
            spec.name
        );
        if let Some((companion, contents)) = spec.companion {
            let companion = path.parent().unwrap().join(companion);
            assert_eq!(
                std::fs::read_to_string(&companion).unwrap(),
                contents,
                "{}",
                spec.name
            );
        }
        let bytes = std::fs::read(&path).unwrap();
        let again = install(&env, &home, "install", spec.name, &path);
        assert!(
            stdout(&again).contains("already installed"),
            "{}: {}",
            spec.name,
            stdout(&again)
        );
        assert_eq!(
            std::fs::read(&path).unwrap(),
            bytes,
            "{}: twice is once",
            spec.name
        );
        let out = install(&env, &home, "uninstall", spec.name, &path);
        assert!(
            stdout(&out).contains("and the file, which held nothing else"),
            "{}: {}",
            spec.name,
            stdout(&out)
        );
        let case = env.work.path().join("empty").join(spec.name);
        assert_eq!(
            files_below(&case),
            Vec::<String>::new(),
            "{}: a file only we filled is gone, with its backup and the folders it leaves empty",
            spec.name
        );
    }
}

/// Issue 21 (5): `install` then `uninstall` of every agent in an empty home gives back the empty home, and `doctor`
/// then has nothing to suggest for agents the user never had.
#[test]
fn install_then_uninstall_of_every_agent_leaves_an_empty_home_empty() {
    let env = Env::new();
    let home = Home::new(&env);
    let before = files_below(&home.dir);
    for spec in AGENTS {
        let out = run(&env, &home, &["install", "--agent", spec.name]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}: {}",
            spec.name,
            stderr(&out)
        );
    }
    assert!(files_below(&home.dir).len() > before.len());
    // Installing again over our own files: still no backup of our entries alone.
    for spec in AGENTS {
        let out = run(
            &env,
            &home,
            &["install", "--agent", spec.name, "--leftovers", "report"],
        );
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}: {}",
            spec.name,
            stderr(&out)
        );
    }
    let backups: Vec<String> = files_below(&home.dir)
        .into_iter()
        .filter(|name| name.contains(".session-reaper.bak"))
        .collect();
    assert_eq!(
        backups,
        Vec::<String>::new(),
        "no backup holds only our entries"
    );
    for spec in AGENTS {
        let out = run(&env, &home, &["uninstall", "--agent", spec.name]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}: {}",
            spec.name,
            stderr(&out)
        );
    }
    assert_eq!(files_below(&home.dir), before, "the home is as it was");
    for spec in AGENTS {
        let checks = doctor_check(&env, &home, &format!("{} hooks", spec.name));
        assert!(
            checks.iter().all(|(level, _)| level == "ok"),
            "{}: {checks:?}",
            spec.name
        );
    }
}

#[test]
fn every_agent_keeps_a_busy_file_and_its_comments_and_uninstall_restores_its_value() {
    let env = Env::new();
    let home = Home::new(&env);
    for spec in json_agents() {
        let path = settings_path(&env, spec, "busy");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let original_text = busy_file(spec);
        std::fs::write(&path, &original_text).unwrap();
        let original = read_value(spec, &path);

        install(&env, &home, "install", spec.name, &path);
        let installed_text = std::fs::read_to_string(&path).unwrap();
        let installed = read_value(spec, &path);
        assert_eq!(
            ours(spec, &installed).len(),
            2,
            "{}: {installed_text}",
            spec.name
        );
        let commands = session_reaper::testing::commands_in(spec, &installed);
        assert!(
            commands.iter().any(|(_, c)| c == "echo mine-at-start")
                && commands.iter().any(|(_, c)| c == "lint.sh"),
            "{}",
            spec.name
        );
        for key in ["model", "env", "version"] {
            assert_eq!(
                installed.get(key),
                original.get(key),
                "{}: {key} kept",
                spec.name
            );
        }
        assert_comments_kept(spec, &installed_text);
        // Ours runs first in the shared budget, except where trust is keyed by position (Codex): last.
        let start = session_reaper::testing::events_of(spec, &installed).unwrap()[spec.start_event]
            .as_array()
            .unwrap();
        let first_is_ours = session_reaper::testing::is_our_command(
            &session_reaper::testing::all_commands(
                &json!({ "hooks": { "x": [start[0].clone()] } }),
            )[0],
        );
        assert_eq!(
            first_is_ours, !spec.trust_by_position,
            "{}: {installed_text}",
            spec.name
        );

        install(&env, &home, "install", spec.name, &path);
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            installed_text,
            "{}: twice is once",
            spec.name
        );

        install(&env, &home, "uninstall", spec.name, &path);
        let restored_text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            read_value(spec, &path),
            original,
            "{}: {restored_text}",
            spec.name
        );
        assert_eq!(
            read_value(spec, &path).to_string(),
            original.to_string(),
            "{}: key order kept",
            spec.name
        );
        assert_comments_kept(spec, &restored_text);
        let backups: Vec<String> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .flatten()
            .map(|entry| entry.file_name().to_string_lossy().into_owned())
            .filter(|name| name.contains(".bak"))
            .collect();
        // Given back byte for byte, the backup of the original has nothing more to offer and goes.
        let expected: Vec<String> = if restored_text == original_text {
            Vec::new()
        } else {
            vec![format!(
                "{}.session-reaper.bak",
                path.file_name().unwrap().to_string_lossy()
            )]
        };
        assert_eq!(backups, expected, "{}: {restored_text}", spec.name);
    }
}

#[test]
fn comments_are_refused_where_the_agent_reads_plain_json() {
    let env = Env::new();
    let home = Home::new(&env);
    for spec in json_agents().filter(|spec| !spec.comments) {
        let path = settings_path(&env, spec, "comments");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, "// no\n{}\n").unwrap();
        let out = run(
            &env,
            &home,
            &[
                "install",
                "--agent",
                spec.name,
                "--settings",
                path.to_str().unwrap(),
            ],
        );
        assert_eq!(out.status.code(), Some(2), "{}", spec.name);
        assert!(
            stderr(&out).contains("not valid JSON") && stderr(&out).lines().count() == 1,
            "{}: {}",
            spec.name,
            stderr(&out)
        );
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "// no\n{}\n");
    }
}

#[test]
fn qwen_rewriting_its_file_changes_nothing_for_us() {
    let env = Env::new();
    let home = Home::new(&env);
    let spec = Agent::Qwen.spec();
    let path = settings_path(&env, spec, "rewrite");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, "{\"model\": {\"name\": \"qwen3\"}}\n").unwrap();
    install(&env, &home, "install", "qwen", &path);
    // What Qwen Code 0.24.4 does on start: adds "$version": 4 and re-indents, keeping our hooks.
    let mut value = read_value(spec, &path);
    value
        .as_object_mut()
        .unwrap()
        .insert("$version".into(), json!(4));
    let rewritten = {
        let mut out = Vec::new();
        let formatter = serde_json::ser::PrettyFormatter::with_indent(b"    ");
        let mut serializer = serde_json::Serializer::with_formatter(&mut out, formatter);
        serde::Serialize::serialize(&value, &mut serializer).unwrap();
        String::from_utf8(out).unwrap()
    };
    std::fs::write(&path, &rewritten).unwrap();
    let again = install(&env, &home, "install", "qwen", &path);
    assert!(
        stdout(&again).contains("already installed"),
        "{}",
        stdout(&again)
    );
    assert_eq!(std::fs::read_to_string(&path).unwrap(), rewritten);
    install(&env, &home, "uninstall", "qwen", &path);
    assert_eq!(
        read_value(spec, &path),
        json!({"model": {"name": "qwen3"}, "$version": 4})
    );
}

#[test]
fn a_non_default_state_dir_goes_into_the_hook_command_and_the_sweep_line() {
    let env = Env::new();
    let home = Home::new(&env);
    let path = settings_path(&env, Agent::Claude.spec(), "state");
    let out = run(
        &env,
        &home,
        &[
            "install",
            "--agent",
            "claude",
            "--with-sweep",
            "--settings",
            path.to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let value = read_value(Agent::Claude.spec(), &path);
    let state = env.state_dir().to_str().unwrap();
    for (event, command) in ours(Agent::Claude.spec(), &value) {
        let words = session_reaper::testing::shell_words(&command).unwrap();
        assert_eq!(
            words[1..],
            ["hook", "--agent", "claude", "--state-dir", state],
            "{event}"
        );
    }
    let table = home.crontab();
    assert!(
        table.contains(&format!("--state-dir {state} sweep")),
        "{table}"
    );

    // The default root needs no flag: the hook gets it from the same HOME.
    let default = home.dir.join(".local/state/session-reaper");
    let plain = settings_path(&env, Agent::Claude.spec(), "default");
    let out = run_bounded(
        home.cmd(
            &env,
            Some(&default),
            &[
                "install",
                "--agent",
                "claude",
                "--settings",
                plain.to_str().unwrap(),
            ],
        ),
        None,
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    for (_, command) in ours(
        Agent::Claude.spec(),
        &read_value(Agent::Claude.spec(), &plain),
    ) {
        assert!(!command.contains("--state-dir"), "{command}");
    }
}

#[test]
fn project_scope_writes_a_relative_command_at_the_repository_top_level() {
    let env = Env::new();
    let home = Home::new(&env);
    let repo = env.workspace("repo");
    let deep = repo.join("src/module");
    std::fs::create_dir_all(&deep).unwrap();
    let mut command = home.cmd(
        &env,
        None,
        &["install", "--agent", "claude", "--scope", "project"],
    );
    command.current_dir(&deep);
    let out = run_bounded(command, None);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(!deep.join(".claude").exists(), "not in the subdirectory");
    let value = read_value(Agent::Claude.spec(), &repo.join(".claude/settings.json"));
    let found = ours(Agent::Claude.spec(), &value);
    assert_eq!(found.len(), 2);
    for (_, command) in found {
        assert_eq!(
            command, "session-reaper hook --agent claude",
            "no absolute path, no personal state root"
        );
    }
}

#[test]
fn codex_install_ends_with_the_trust_step_and_claude_with_sweep_is_shared() {
    let env = Env::new();
    let home = Home::new(&env);
    // Codex: its SessionEnd is not always there, so the sweep is advised loudly, and trust comes last.
    let out = run(&env, &home, &["install", "--agent", "codex"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        !stdout(&out).contains("!!!"),
        "warnings go to stderr: {}",
        stdout(&out)
    );
    let text = stderr(&out);
    let last = text
        .lines()
        .rev()
        .find(|line| !line.trim().is_empty())
        .unwrap();
    assert!(
        last.starts_with("!!! CODEX RUNS NO HOOK UNTIL YOU TRUST IT") && last.contains("/hooks"),
        "{text}"
    );
    assert!(text.contains("needs the periodic sweep"), "{text}");
    let codex = read_value(Agent::Codex.spec(), &home.dir.join(".codex/hooks.json"));
    assert_eq!(codex["hooks"]["SessionEnd"][0]["hooks"][0]["timeout"], 3);

    // Claude with the sweep, then Gemini: uninstalling Claude's keeps the sweep the others rely on.
    assert_eq!(
        run(
            &env,
            &home,
            &["install", "--agent", "claude", "--with-sweep"]
        )
        .status
        .code(),
        Some(0)
    );
    assert_eq!(
        home.crontab()
            .lines()
            .filter(|l| l.contains(" sweep"))
            .count(),
        1,
        "{}",
        home.crontab()
    );
    let again = run(
        &env,
        &home,
        &["install", "--agent", "gemini", "--with-sweep"],
    );
    assert!(
        stdout(&again).contains("already runs"),
        "{}",
        stdout(&again)
    );
    let out = run(
        &env,
        &home,
        &["uninstall", "--agent", "claude", "--with-sweep"],
    );
    assert!(
        stdout(&out).contains("sweep: kept")
            && stdout(&out).contains("gemini")
            && stdout(&out).contains("codex"),
        "{}",
        stdout(&out)
    );
    assert_eq!(
        home.crontab()
            .lines()
            .filter(|l| l.contains(" sweep"))
            .count(),
        1
    );
    assert_eq!(
        run(&env, &home, &["uninstall", "--agent", "codex"])
            .status
            .code(),
        Some(0)
    );
    let out = run(
        &env,
        &home,
        &["uninstall", "--agent", "gemini", "--with-sweep"],
    );
    assert!(
        stdout(&out).contains("crontab line removed"),
        "{}",
        stdout(&out)
    );
    assert!(!home.crontab().contains(" sweep"), "{}", home.crontab());
}

// --- payloads -------------------------------------------------------------------------------------------------

fn fixture(path: &str) -> Vec<u8> {
    std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fixtures/payloads")
            .join(path),
    )
    .unwrap()
}

/// The payload with its session id replaced by one fresh for this test run (a `SessionEnd` scans the process table
/// for `--resume <id>`: only ids nobody else can hold).
fn fresh(payload: &[u8]) -> Vec<u8> {
    static ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let id = ID.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/kernel/random/uuid")
            .unwrap()
            .trim()
            .to_owned()
    });
    let mut value: Value = serde_json::from_slice(payload).unwrap();
    for key in ["session_id", "sessionId"] {
        if value.get(key).is_some() {
            value[key] = json!(id);
        }
    }
    serde_json::to_vec(&value).unwrap()
}

/// The session records of the test's state root, by id.
fn sessions(env: &Env) -> Vec<Value> {
    std::fs::read_dir(env.state_dir().join("sessions"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| serde_json::from_slice(&std::fs::read(entry.path()).ok()?).ok())
        .collect()
}

fn hook(env: &mut Env, args: &[&str], payload: &[u8], extra_env: &[(&str, &str)]) {
    extra_env
        .iter()
        .fold(HookTest::raw(payload).args(args), |test, (name, value)| {
            test.env(name, value)
        })
        .silent()
        .run(env);
}

#[test]
fn the_new_agents_payload_shapes_record_their_sessions() {
    let cases: &[(&str, &str, &[&str])] = &[
        (
            "copilot/sessionStart.json",
            "copilot",
            &["--agent", "copilot", "--event", "sessionStart"],
        ),
        (
            "copilot/SessionStart.vscode.json",
            "copilot",
            &["--agent", "copilot"],
        ),
        ("cursor/sessionStart.json", "cursor", &["--agent", "auto"]),
        ("droid/SessionStart.json", "droid", &["--agent", "auto"]),
        ("goose/SessionStart.json", "goose", &["--agent", "auto"]),
    ];
    for (file, agent, args) in cases {
        let mut env = Env::new();
        let payload = fixture(file);
        hook(&mut env, args, &payload, &[]);
        let value: Value = serde_json::from_slice(&payload).unwrap();
        let id = value
            .get("sessionId")
            .or_else(|| value.get("session_id"))
            .unwrap();
        let records = sessions(&env);
        assert_eq!(records.len(), 1, "{file}");
        assert_eq!(records[0]["session_id"], *id, "{file}");
        assert_eq!(records[0]["agent"], *agent, "{file}");
        assert!(records[0]["ended_at"].is_null(), "{file}");
    }
    // Goose's end names its event in `event`; Copilot's camelCase end gets it from --event.
    let mut env = Env::new();
    hook(
        &mut env,
        &[],
        &fresh(&fixture("goose/SessionStart.json")),
        &[],
    );
    hook(
        &mut env,
        &[],
        &fresh(&fixture("goose/SessionEnd.json")),
        &[],
    );
    assert!(!sessions(&env)[0]["ended_at"].is_null());
    assert_eq!(sessions(&env)[0]["agent"], "goose");
    let mut env = Env::new();
    hook(
        &mut env,
        &["--agent", "copilot", "--event", "sessionStart"],
        &fresh(&fixture("copilot/sessionStart.json")),
        &[],
    );
    hook(
        &mut env,
        &["--agent", "copilot", "--event", "sessionEnd"],
        &fresh(&fixture("copilot/sessionEnd.json")),
        &[],
    );
    assert!(!sessions(&env)[0]["ended_at"].is_null());
}

/// The payloads the real clients sent (fixtures/payloads/<agent>-<version>/), through the hook as `install` writes its
/// command for each: recorded under that agent, and ended by its end event where it has one.
#[test]
fn real_clients_captured_payloads_start_and_end_their_sessions() {
    let cases: &[(&str, &str, &[&str], Option<&str>)] = &[
        (
            "droid-0.225.2/SessionStart.json",
            "droid",
            &[],
            Some("droid-0.225.2/SessionEnd.json"),
        ),
        (
            "copilot-1.0.102/sessionStart.json",
            "copilot",
            &["--event", "sessionStart"],
            Some("copilot-1.0.102/sessionEnd.json"),
        ),
        ("opencode-1.18.33/SessionStart.json", "opencode", &[], None),
    ];
    for (start, agent, extra, end) in cases {
        let mut env = Env::new();
        let mut args = vec!["--agent", agent];
        args.extend_from_slice(extra);
        hook(&mut env, &args, &fresh(&fixture(start)), &[]);
        let records = sessions(&env);
        assert_eq!(records.len(), 1, "{start}");
        assert_eq!(records[0]["agent"], *agent, "{start}");
        assert!(records[0]["ended_at"].is_null(), "{start}");
        if let Some(end) = end {
            let args: Vec<&str> = args
                .iter()
                .map(|arg| {
                    if *arg == "sessionStart" {
                        "sessionEnd"
                    } else {
                        arg
                    }
                })
                .collect();
            hook(&mut env, &args, &fresh(&fixture(end)), &[]);
            assert!(!sessions(&env)[0]["ended_at"].is_null(), "{end}");
        }
    }
}

#[test]
fn a_payload_without_session_id_is_keyed_by_its_agent_process() {
    let mut env = Env::new();
    let payload = fixture("copilot/sessionStart.no-session-id.json");
    // The agent process named explicitly (no recognised agent is above the test), with no sentinel on the test.
    let me = std::process::id().to_string();
    let no_sentinel = [("SESSION_REAPER_SENTINEL", "off")];
    hook(
        &mut env,
        &[
            "--agent",
            "copilot",
            "--event",
            "sessionStart",
            "--owner-pid",
            &me,
        ],
        &payload,
        &no_sentinel,
    );
    hook(
        &mut env,
        &[
            "--agent",
            "copilot",
            "--event",
            "sessionStart",
            "--owner-pid",
            &me,
        ],
        &payload,
        &no_sentinel,
    );
    let records = sessions(&env);
    assert_eq!(records.len(), 1, "one stable synthetic id: {records:?}");
    let pid = std::process::id();
    let id = records[0]["session_id"].as_str().unwrap();
    assert!(
        id.starts_with(&format!("copilot-{pid}-")),
        "keyed by the agent process (the test, named by --owner-pid): {id}"
    );
    assert_eq!(records[0]["agent_identity"]["pid"], pid);
    hook(
        &mut env,
        &[
            "--agent",
            "copilot",
            "--event",
            "sessionEnd",
            "--owner-pid",
            &me,
        ],
        &fixture("copilot/sessionStart.no-session-id.json"),
        &no_sentinel,
    );
    assert!(
        !sessions(&env)[0]["ended_at"].is_null(),
        "the same synthetic id ends it"
    );
}

#[test]
fn one_session_reached_through_two_agents_hooks_is_kept_once_under_the_first() {
    let mut env = Env::new();
    let payload = fixture("cursor/sessionStart.json");
    // Cursor runs its own hook, then Claude's hooks from ~/.claude/settings.json for the same conversation.
    hook(&mut env, &["--agent", "cursor"], &payload, &[]);
    hook(
        &mut env,
        &["--agent", "claude"],
        &payload,
        &[("CURSOR_VERSION", "2.3")],
    );
    hook(&mut env, &["--agent", "claude"], &payload, &[]);
    let records = sessions(&env);
    assert_eq!(records.len(), 1);
    assert_eq!(
        records[0]["agent"], "cursor",
        "never re-keyed to a second agent"
    );
    let duplicates: Vec<Value> = env
        .events_where("session_start", None)
        .into_iter()
        .filter(|e| e["result"] == "duplicate")
        .collect();
    assert_eq!(duplicates.len(), 1, "{:?}", env.events());
    assert!(
        duplicates[0]["detail"]
            .as_str()
            .unwrap()
            .contains("kept as agent cursor")
    );
}

// --- doctor ---------------------------------------------------------------------------------------------------

/// `doctor --json` in `home`: exit code and the checks named `NAME hooks`.
fn doctor(env: &Env, home: &Home, state: Option<&Path>, agent: &str) -> (Option<i32>, Vec<Value>) {
    let out = run_bounded(home.cmd(env, state, &["doctor", "--json"]), None);
    let value: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|err| panic!("{err}: {}{}", stdout(&out), stderr(&out)));
    let checks = value["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|check| check["name"] == format!("{agent} hooks"))
        .cloned()
        .collect();
    (out.status.code(), checks)
}

fn failures(checks: &[Value]) -> Vec<String> {
    checks
        .iter()
        .filter(|check| check["level"] == "fail")
        .map(|check| {
            format!(
                "{} -> fix: {}",
                check["detail"].as_str().unwrap(),
                check["fix"].as_str().unwrap_or("")
            )
        })
        .collect()
}

/// Claude's settings, installed by us, then changed by `edit`.
fn claude_setup(env: &Env, home: &Home, edit: impl FnOnce(&mut Value)) {
    assert_eq!(
        run(env, home, &["install", "--agent", "claude"])
            .status
            .code(),
        Some(0)
    );
    let path = home.dir.join(".claude/settings.json");
    let mut value = read_value(Agent::Claude.spec(), &path);
    edit(&mut value);
    std::fs::write(&path, serde_json::to_string_pretty(&value).unwrap()).unwrap();
}

fn set_command(value: &mut Value, edit: impl Fn(&str) -> String) {
    for event in ["SessionStart", "SessionEnd"] {
        let command = value["hooks"][event][0]["hooks"][0]["command"]
            .as_str()
            .unwrap()
            .to_owned();
        value["hooks"][event][0]["hooks"][0]["command"] = json!(edit(&command));
    }
}

#[test]
fn doctor_says_ok_for_hooks_that_run() {
    let env = Env::new();
    let home = Home::new(&env);
    claude_setup(&env, &home, |_| {});
    let (code, checks) = doctor(&env, &home, None, "claude");
    assert_eq!(checks.len(), 1, "{checks:?}");
    assert_eq!(checks[0]["level"], "ok", "{checks:?}");
    assert!(
        checks[0]["detail"]
            .as_str()
            .unwrap()
            .contains("the hooks run"),
        "{checks:?}"
    );
    assert_eq!(code, Some(0), "{checks:?}");
    assert!(
        !env.state_dir().join("events.jsonl").exists()
            || !std::fs::read_to_string(env.state_dir().join("events.jsonl"))
                .unwrap()
                .contains(session_reaper::testing::PROBE_SESSION),
        "the probe changed nothing"
    );
    assert!(
        !env.state_dir()
            .join("sessions")
            .join(format!("{}.json", session_reaper::testing::PROBE_SESSION))
            .exists()
    );
}

/// Claude's hooks installed by us, then broken by `edit`: `doctor` fails with `detail` and `fix`.
fn claude_broken_by(edit: impl FnOnce(&mut Value), detail: &str, fix: &str) {
    let env = Env::new();
    let home = Home::new(&env);
    claude_setup(&env, &home, edit);
    assert_doctor_fails(&env, &home, None, "claude", detail, fix);
}

fn assert_doctor_fails(
    env: &Env,
    home: &Home,
    state: Option<&Path>,
    agent: &str,
    detail: &str,
    fix: &str,
) {
    let (code, checks) = doctor(env, home, state, agent);
    let found = failures(&checks);
    assert!(
        found.iter().any(|f| f.contains(detail) && f.contains(fix)),
        "expected a failure with {detail:?} and fix {fix:?}: {checks:#?}"
    );
    assert_eq!(code, Some(1), "{checks:?}");
}

#[test]
fn doctor_fails_a_hook_whose_binary_is_missing() {
    claude_broken_by(
        |value| {
            set_command(value, |c| {
                c.replacen(
                    env!("CARGO_BIN_EXE_session-reaper"),
                    "/nonexistent/bin/session-reaper",
                    1,
                )
            });
        },
        "does not run",
        "session-reaper install --agent claude",
    );
}

#[test]
fn doctor_fails_a_typoed_flag() {
    claude_broken_by(
        |value| {
            set_command(value, |c| format!("{c} --deadlin 1s"));
        },
        "--deadlin",
        "session-reaper install --agent claude",
    );
}

#[test]
fn doctor_fails_another_agents_hook_in_claudes_file() {
    claude_broken_by(
        |value| {
            set_command(value, |c| c.replace("--agent claude", "--agent gemini"));
        },
        "runs as agent gemini",
        "install --agent claude",
    );
}

#[test]
fn doctor_fails_a_hook_using_another_state_root() {
    let env = Env::new();
    let home = Home::new(&env);
    claude_setup(&env, &home, |_| {});
    let other = env.work.path().join("other-state");
    assert_doctor_fails(&env, &home, Some(&other), "claude", "not ", "--state-dir");
}

#[test]
fn doctor_fails_a_removed_session_end() {
    claude_broken_by(
        |value| {
            value["hooks"].as_object_mut().unwrap().remove("SessionEnd");
        },
        "no SessionEnd hook",
        "install --agent claude",
    );
}

#[test]
fn doctor_fails_hooks_switched_off() {
    claude_broken_by(
        |value| {
            value["disableAllHooks"] = json!(true);
        },
        "\"disableAllHooks\": true",
        "remove it",
    );
}

/// A home with Codex's hooks and the sweep installed by us.
fn codex_installed() -> (Env, Home) {
    let env = Env::new();
    let home = Home::new(&env);
    let out = run(
        &env,
        &home,
        &["install", "--agent", "codex", "--with-sweep"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    (env, home)
}

#[test]
fn doctor_fails_an_untrusted_codex_hook_and_passes_a_trusted_one() {
    let (env, home) = codex_installed();
    assert_doctor_fails(&env, &home, None, "codex", "not trusted", "open /hooks");
    // What Codex 0.171.0 writes to $CODEX_HOME/config.toml when a person trusts the hooks in /hooks.
    let hooks = home.dir.join(".codex/hooks.json");
    let mut config = String::new();
    for event in ["session_start", "session_end"] {
        let _ = writeln!(
            config,
            "[hooks.state.\"{}:{event}:0:0\"]\ntrusted_hash = \"sha256:00\"",
            hooks.display()
        );
    }
    std::fs::write(home.dir.join(".codex/config.toml"), config).unwrap();
    let (code, checks) = doctor(&env, &home, None, "codex");
    assert!(failures(&checks).is_empty(), "{checks:#?}");
    assert_eq!(code, Some(0), "{checks:?}");
}

/// The level and detail of the check named `name`.
fn doctor_check(env: &Env, home: &Home, name: &str) -> Vec<(String, String)> {
    let out = run_bounded(home.cmd(env, None, &["doctor", "--json"]), None);
    let value: Value = serde_json::from_slice(&out.stdout).unwrap();
    value["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|check| check["name"] == name)
        .map(|check| {
            (
                check["level"].as_str().unwrap().to_owned(),
                format!("{} -> {}", check["detail"], check["fix"]),
            )
        })
        .collect()
}

#[test]
fn doctor_warns_of_an_agent_without_reliable_session_end_and_no_sweep() {
    let env = Env::new();
    let home = Home::new(&env);
    let out = run(&env, &home, &["install", "--agent", "qwen"]);
    assert!(
        stderr(&out).contains("!!! Qwen Code needs the periodic sweep"),
        "{}",
        stderr(&out)
    );
    let checks = doctor_check(&env, &home, "qwen hooks");
    assert!(
        checks.iter().any(|(level, text)| level == "warn"
            && text.contains("qwen -p")
            && text.contains("--with-sweep")),
        "{checks:?}"
    );
    assert_eq!(
        run(&env, &home, &["install", "--agent", "qwen", "--with-sweep"])
            .status
            .code(),
        Some(0)
    );
    let checks = doctor_check(&env, &home, "qwen hooks");
    assert_eq!(checks.len(), 1, "{checks:?}");
    assert_eq!(checks[0].0, "ok", "{checks:?}");
}

#[test]
fn doctor_reports_recent_hook_errors_and_an_agent_process_that_is_no_agent() {
    let mut env = Env::new();
    let home = Home::new(&env);
    // A SessionStart naming as its agent (`--owner-pid`) the test binary, no agent executable.
    let me = std::process::id().to_string();
    hook(
        &mut env,
        &["--agent", "claude", "--owner-pid", &me],
        &fresh(&fixture("claude/SessionStart.startup.json")),
        &[("SESSION_REAPER_SENTINEL", "off")],
    );
    let checks = doctor_check(&env, &home, "agent processes");
    assert!(
        checks.iter().any(|(level, text)| level == "warn"
            && text.contains(&format!("pid {}", std::process::id()))),
        "{checks:?}"
    );
    assert_eq!(doctor_check(&env, &home, "hook errors")[0].0, "ok");
    let out = run_bounded(env.cmd(&["hook"]), Some(b"not json"));
    assert_eq!(out.status.code(), Some(0));
    let checks = doctor_check(&env, &home, "hook errors");
    assert!(
        checks[0].0 == "warn"
            && checks[0].1.contains("expected JSON")
            && checks[0].1.contains("log --action hook"),
        "{checks:?}"
    );
}

#[test]
fn doctor_warns_of_a_codex_session_end_timeout_codex_would_clamp() {
    let (env, home) = codex_installed();
    let path = home.dir.join(".codex/hooks.json");
    let mut value = read_value(Agent::Codex.spec(), &path);
    value["hooks"]["SessionEnd"][0]["hooks"][0]["timeout"] = json!(10);
    std::fs::write(&path, value.to_string()).unwrap();
    let (_, checks) = doctor(&env, &home, None, "codex");
    assert!(
        checks.iter().any(|check| check["level"] == "warn"
            && check["detail"]
                .as_str()
                .unwrap()
                .contains("above Codex CLI's limit of 3")
            && check["fix"] == "set it to 3"),
        "{checks:#?}"
    );
}

/// Runs an installed hook command as an agent does (`sh -c COMMAND`, the payload on stdin); the agent process is
/// then this test process, which no sentinel may watch: `extra_env` says how.
fn run_installed(command: &str, payload: &[u8], extra_env: &[(&str, &str)]) {
    let mut sh = std::process::Command::new("sh");
    sh.args(["-c", command]);
    crate::harness::scrub_env(&mut sh);
    for (name, value) in extra_env {
        sh.env(name, value);
    }
    let out = run_bounded(sh, Some(payload));
    assert_eq!(out.status.code(), Some(0), "{command}: {}", stderr(&out));
    assert!(out.stderr.is_empty(), "{command}: {}", stderr(&out));
}

/// Installs for every agent with `flags`, and returns the words after `hook` of each of our commands.
fn install_with(env: &Env, home: &Home, case: &str, flags: &[&str]) -> Vec<(PathBuf, Vec<String>)> {
    let mut written = Vec::new();
    for spec in AGENTS {
        let path = settings_path(env, spec, case);
        let mut args = vec![
            "install",
            "--agent",
            spec.name,
            "--settings",
            path.to_str().unwrap(),
        ];
        args.extend_from_slice(flags);
        let out = run(env, home, &args);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}: {}",
            spec.name,
            stderr(&out)
        );
        for (event, command) in ours(spec, &read_value(spec, &path)) {
            let words = session_reaper::testing::shell_words(&command).unwrap();
            assert_eq!(words[1], "hook", "{}: {event}", spec.name);
            written.push((path.clone(), words));
        }
    }
    written
}

/// Uninstalls every agent's hooks from `case`'s files and checks that nothing of ours is left.
fn uninstall_all(env: &Env, home: &Home, case: &str) {
    for spec in AGENTS {
        let path = settings_path(env, spec, case);
        install(env, home, "uninstall", spec.name, &path);
        if path.exists() {
            assert!(
                ours(spec, &read_value(spec, &path)).is_empty(),
                "{}: uninstalled",
                spec.name
            );
        }
    }
}

/// The value after `flag` among a command's words.
fn flag_value<'a>(words: &'a [String], flag: &str) -> Option<&'a str> {
    let at = words.iter().position(|word| word == flag)?;
    words.get(at + 1).map(String::as_str)
}

/// Runs the `SessionStart` command installed in Claude Code's file of `case` with a fresh payload; returns the one
/// session record it wrote.
fn start_installed_claude_hook(env: &Env, case: &str, extra_env: &[(&str, &str)]) -> Value {
    let claude = Agent::Claude.spec();
    let path = settings_path(env, claude, case);
    let (_, start) = ours(claude, &read_value(claude, &path))
        .into_iter()
        .find(|(event, _)| event == "SessionStart")
        .unwrap();
    run_installed(
        &start,
        &fresh(&fixture("claude/SessionStart.startup.json")),
        extra_env,
    );
    let mut recorded = sessions(env);
    assert_eq!(recorded.len(), 1, "{recorded:?}");
    recorded.remove(0)
}

/// `install --leftovers report|off|stop` writes the policy into every agent's hook commands; installing again with
/// another policy replaces it in place (one entry per event); the installed hook records that policy for its
/// session; uninstall removes the entries whatever flags they carry.
#[test]
fn install_writes_the_leftovers_policy_into_the_hooks_and_uninstall_removes_them() {
    let env = Env::new();
    let home = Home::new(&env);
    for policy in ["report", "off", "stop"] {
        let written = install_with(&env, &home, "leftovers", &["--leftovers", policy]);
        assert_eq!(
            written.len(),
            AGENTS
                .iter()
                .map(|spec| spec.events().count())
                .sum::<usize>(),
            "{policy}: one entry per event, the previous policy replaced"
        );
        for (path, words) in &written {
            assert_eq!(
                flag_value(words, "--leftovers"),
                Some(policy),
                "{}",
                path.display()
            );
            assert_eq!(flag_value(words, "--sentinel"), None, "{words:?}");
        }
    }
    // The hook the file now holds runs with the policy it names.
    install_with(&env, &home, "leftovers", &["--leftovers", "report"]);
    let recorded =
        start_installed_claude_hook(&env, "leftovers", &[("SESSION_REAPER_SENTINEL", "off")]);
    assert_eq!(recorded["leftovers"]["policy"], "report", "{recorded}");
    // Flags mean nothing to uninstall: refused, nothing changed.
    let claude = Agent::Claude.spec();
    let path = settings_path(&env, claude, "leftovers");
    let before = std::fs::read(&path).unwrap();
    let refused = run(
        &env,
        &home,
        &[
            "uninstall",
            "--agent",
            "claude",
            "--settings",
            path.to_str().unwrap(),
            "--leftovers",
            "off",
        ],
    );
    assert_eq!(refused.status.code(), Some(2), "{}", stderr(&refused));
    assert!(
        stderr(&refused).contains("--leftovers"),
        "{}",
        stderr(&refused)
    );
    assert_eq!(std::fs::read(&path).unwrap(), before);
    uninstall_all(&env, &home, "leftovers");
}

/// `install --sentinel off|on` writes the switch into every agent's hook commands; the installed hook with `off`
/// starts no sentinel and records that; uninstall removes the entries.
#[test]
fn install_writes_the_sentinel_switch_into_the_hooks_and_uninstall_removes_them() {
    let env = Env::new();
    let home = Home::new(&env);
    for switch in ["on", "off"] {
        for (path, words) in install_with(&env, &home, "sentinel", &["--sentinel", switch]) {
            assert_eq!(
                flag_value(&words, "--sentinel"),
                Some(switch),
                "{}",
                path.display()
            );
            assert_eq!(flag_value(&words, "--leftovers"), None, "{words:?}");
        }
    }
    // No variable turns it off here: the command's own `--sentinel off` must.
    let recorded = start_installed_claude_hook(&env, "sentinel", &[]);
    assert_eq!(recorded["leftovers"]["sentinel"], false, "{recorded}");
    assert!(
        crate::harness::sentinels_of(env.state_dir()).is_empty(),
        "a hook installed with --sentinel off starts none"
    );
    uninstall_all(&env, &home, "sentinel");
}

// --- Droid's real shape, OpenCode's plugin, the sweep with nowhere to go, --json ----------------------------------

#[test]
fn droid_hooks_go_at_the_top_level_and_an_old_wrapped_install_is_moved_there() {
    let env = Env::new();
    let home = Home::new(&env);
    let path = home.dir.join(".factory/hooks.json");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    // What `install --agent droid` wrote before: Droid 0.225.2 ignores the wrapper, so these never ran.
    let old = "session-reaper hook --agent droid";
    std::fs::write(
        &path,
        serde_json::to_string_pretty(&json!({ "hooks": {
            "SessionStart": [ { "hooks": [ { "type": "command", "command": old, "timeout": 5 } ] } ],
            "SessionEnd": [ { "hooks": [ { "type": "command", "command": old, "timeout": 5 } ] } ]
        } }))
        .unwrap(),
    )
    .unwrap();
    let checks = doctor_check(&env, &home, "droid hooks");
    assert!(
        checks.iter().any(|(level, text)| level == "fail"
            && text.contains("ignores them")
            && text.contains("install --agent droid")),
        "{checks:?}"
    );
    let out = run(&env, &home, &["install", "--agent", "droid"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("hooks.SessionStart"),
        "{}",
        stdout(&out)
    );
    let value: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert!(value.get("hooks").is_none(), "the wrapper is gone: {value}");
    assert_eq!(ours(Agent::Droid.spec(), &value).len(), 2, "{value}");
    assert_eq!(value["SessionEnd"][0]["hooks"][0]["type"], "command");
    let checks = doctor_check(&env, &home, "droid hooks");
    assert!(checks.iter().all(|(level, _)| level == "ok"), "{checks:?}");
    let out = run(&env, &home, &["uninstall", "--agent", "droid"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        !home.dir.join(".factory").exists(),
        "nothing of ours is left"
    );
}

#[test]
fn opencode_gets_a_plugin_of_ours_that_doctor_runs_and_uninstall_removes() {
    let env = Env::new();
    let home = Home::new(&env);
    let plugin = home.dir.join(".config/opencode/plugin/session-reaper.js");
    let out = run(&env, &home, &["install", "--agent", "opencode"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = std::fs::read_to_string(&plugin).unwrap();
    let command = session_reaper::testing::command_in(&text).unwrap();
    let words = session_reaper::testing::shell_words(&command).unwrap();
    assert_eq!(
        words[1..],
        [
            "hook",
            "--agent",
            "opencode",
            "--state-dir",
            env.state_dir().to_str().unwrap()
        ]
    );
    assert!(text.contains("\"shell.env\"") && text.contains("SESSION_REAPER_SESSION_ID"));
    let checks = doctor_check(&env, &home, "opencode hooks");
    assert!(
        checks
            .iter()
            .all(|(level, text)| level == "ok" || text.contains("sweep")),
        "the installed plugin's command answers as the hook: {checks:?}"
    );
    // Another state root: the plugin is rewritten whole; a file of someone else's is never touched.
    let other = env.work.path().join("other-state");
    let out = run_bounded(
        home.cmd(&env, Some(&other), &["install", "--agent", "opencode"]),
        None,
    );
    assert!(stdout(&out).contains("replaced"), "{}", stdout(&out));
    let foreign = home.dir.join(".config/opencode/plugin/mine.js");
    std::fs::write(&foreign, "export const Mine = async () => ({});\n").unwrap();
    let out = run(
        &env,
        &home,
        &[
            "install",
            "--agent",
            "opencode",
            "--settings",
            foreign.to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(2), "{}", stdout(&out));
    assert_eq!(
        std::fs::read_to_string(&foreign).unwrap(),
        "export const Mine = async () => ({});\n"
    );
    let out = run(&env, &home, &["uninstall", "--agent", "opencode"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(!plugin.exists());
    assert!(
        foreign.exists(),
        "the user's plugin stays, and so does its folder"
    );
}

#[test]
fn with_sweep_and_nowhere_to_install_it_says_so_exits_non_zero_and_doctor_agrees() {
    let env = Env::new();
    let home = Home::new(&env);
    // No crontab at all, and a systemctl without a user manager.
    let bare = env.work.path().join("bare-bin");
    std::fs::create_dir_all(&bare).unwrap();
    std::fs::copy(home.dir.join("bin/systemctl"), bare.join("systemctl")).unwrap();
    let cmd = |args: &[&str]| {
        let mut command = home.cmd(&env, None, args);
        command.env("PATH", &bare);
        run_bounded(command, None)
    };
    let out = cmd(&["install", "--agent", "qwen", "--with-sweep"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    let said = stderr(&out);
    assert!(
        said.contains("NOT installed") && said.contains("no systemd user manager and no crontab"),
        "{said}"
    );
    let line = said
        .lines()
        .find(|line| line.contains("* * * * *"))
        .unwrap_or_else(|| panic!("the line to run: {said}"));
    assert!(
        line.trim_end().ends_with("sweep >/dev/null"),
        "errors are not thrown away: {line}"
    );
    let installed = read_value(Agent::Qwen.spec(), &home.dir.join(".qwen/settings.json"));
    assert_eq!(
        ours(Agent::Qwen.spec(), &installed).len(),
        2,
        "the hooks are installed"
    );
    let doctor = {
        let mut command = home.cmd(&env, None, &["doctor", "--json"]);
        command.env("PATH", format!("{}:/usr/bin:/bin", bare.display()));
        run_bounded(command, None)
    };
    let value: Value = serde_json::from_slice(&doctor.stdout).unwrap();
    let qwen: Vec<&Value> = value["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|check| check["name"] == "qwen hooks")
        .collect();
    assert!(
        qwen.iter().any(|check| check["detail"]
            .as_str()
            .unwrap()
            .contains("no periodic sweep")
            && check["fix"]
                .as_str()
                .unwrap()
                .contains("no systemd user manager and no crontab")
            && !check["fix"].as_str().unwrap().contains("--with-sweep")),
        "doctor does not recommend what cannot work: {qwen:?}"
    );
}

#[test]
fn install_and_uninstall_answer_in_json_and_uninstall_offers_no_install_only_flag() {
    let env = Env::new();
    let home = Home::new(&env);
    let out = run(&env, &home, &["install", "--agent", "codex", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let value: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(value["operation"], "install");
    assert_eq!(value["agent"], "codex");
    assert_eq!(value["created"], true);
    assert_eq!(value["changes"].as_array().unwrap().len(), 2);
    assert!(
        value["warnings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|warning| warning.as_str().unwrap().contains("TRUST")),
        "{value}"
    );
    assert!(stderr(&out).is_empty(), "{}", stderr(&out));
    let out = run(&env, &home, &["uninstall", "--agent", "codex", "--json"]);
    let value: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(value["operation"], "uninstall");
    assert_eq!(value["removed"], true);
    let help = stdout(&run(&env, &home, &["uninstall", "--help"]));
    assert!(
        !help.contains("--leftovers") && !help.contains("--sentinel") && help.contains("--json"),
        "{help}"
    );
    let out = run(
        &env,
        &home,
        &["uninstall", "--agent", "codex", "--leftovers", "stop"],
    );
    assert_eq!(out.status.code(), Some(2), "refused by the parser");
}
