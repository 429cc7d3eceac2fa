//! Something to install (issue 21, items 8 and 9): the license files and manifest fields a registry needs,
//! `--version` naming the git commit it was built from, a man page generated from the clap definitions, shell
//! completions and help that offer only what people type, each flag's default said once.

use std::path::Path;
use std::process::Command;

use crate::harness::{Env, run_bounded, stdout};

fn manifest_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn output_of(env: &Env, args: &[&str]) -> String {
    let out = run_bounded(env.cmd_as_typed(args), None);
    assert!(
        out.status.success(),
        "session-reaper {}: {:?}",
        args.join(" "),
        out
    );
    stdout(&out)
}

#[test]
fn both_license_files_and_the_repository_are_in_the_manifest() {
    let manifest = std::fs::read_to_string(manifest_dir().join("Cargo.toml")).unwrap();
    assert!(manifest.contains(r#"license = "MIT OR Apache-2.0""#));
    assert!(
        manifest.contains(r#"repository = "https://github.com/session-reaper/session-reaper""#)
    );
    let mit = std::fs::read_to_string(manifest_dir().join("LICENSE-MIT")).unwrap();
    assert!(mit.contains("Permission is hereby granted, free of charge"));
    let apache = std::fs::read_to_string(manifest_dir().join("LICENSE-APACHE")).unwrap();
    assert!(apache.contains("Apache License") && apache.contains("Version 2.0, January 2004"));
}

/// Built from a git checkout, `--version` names its commit; built from anything else (a crate tarball, no git),
/// only the version. The build script asks git itself, as this test does.
#[test]
fn version_names_the_git_commit_it_was_built_from() {
    let git = |args: &[&str]| {
        Command::new("git")
            .arg("-C")
            .arg(manifest_dir())
            .args(args)
            .output()
            .ok()
            .filter(|out| out.status.success())
            .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    };
    let checkout = git(&["rev-parse", "--show-toplevel"]).is_some_and(|top| {
        std::fs::canonicalize(top).ok() == std::fs::canonicalize(manifest_dir()).ok()
    });
    let expected = match git(&["rev-parse", "--short=12", "HEAD"]).filter(|_| checkout) {
        Some(head) => format!("session-reaper {} (git {head})", env!("CARGO_PKG_VERSION")),
        None => format!("session-reaper {}", env!("CARGO_PKG_VERSION")),
    };
    let env = Env::new();
    assert_eq!(output_of(&env, &["--version"]).trim(), expected);
}

/// The subcommands a completion script offers at the top level.
fn offered_subcommands(env: &Env, shell: &str) -> Vec<String> {
    let script = output_of(env, &["completions", shell]);
    match shell {
        // `complete … -n "__fish_session_reaper_needs_command" -f -a "status" -d '…'`
        "fish" => script
            .lines()
            .filter(|line| line.contains("__fish_session_reaper_needs_command"))
            .filter_map(|line| line.split(" -a \"").nth(1)?.split('"').next())
            .map(str::to_owned)
            .collect(),
        // The first `opts="…"`: the top level's words.
        "bash" => script
            .lines()
            .filter_map(|line| line.trim().strip_prefix("opts=\""))
            .find(|words| words.contains(" hook "))
            .expect("an opts line")
            .trim_end_matches('"')
            .split_whitespace()
            .filter(|word| !word.starts_with('-'))
            .map(str::to_owned)
            .collect(),
        _ => unreachable!(),
    }
}

#[test]
fn completions_and_the_man_page_offer_no_internal_command() {
    let env = Env::new();
    for shell in ["bash", "fish"] {
        let offered = offered_subcommands(&env, shell);
        for wanted in ["hook", "broker", "status", "log", "keep", "demo"] {
            assert!(
                offered.iter().any(|o| o == wanted),
                "{shell}: {wanted} missing from {offered:?}"
            );
        }
        for internal in ["finish", "sentinel", "man"] {
            assert!(
                !offered.iter().any(|o| o == internal),
                "{shell} offers the internal {internal}: {offered:?}"
            );
        }
    }
    for (shell, offer) in [
        ("zsh", "'{}:"),
        ("elvish", "cand {} '"),
        ("powershell", "::new('{}', '{}'"),
    ] {
        let script = output_of(&env, &["completions", shell]);
        assert!(script.contains(&offer.replace("{}", "status")), "{shell}");
        for internal in ["finish", "sentinel"] {
            let offered = offer.replace("{}", internal);
            assert!(!script.contains(&offered), "{shell} offers {offered}");
        }
    }
}

/// `man` renders session-reaper(1) from the clap definitions: every visible command with its help, no internal
/// one; `man --dir` writes that page and one per command.
#[test]
fn the_man_page_is_generated_from_the_command_line() {
    let env = Env::new();
    let page = output_of(&env, &["man"]);
    assert!(page.contains(".TH session-reaper 1"), "{page}");
    assert!(page.contains(".SH SUBCOMMANDS"));
    for (command, about) in [
        ("status", "Show brokers, their owners and liveness"),
        ("hook", "Run as an agent"),
        ("keep", "Start a command that outlives its session"),
    ] {
        assert!(
            page.contains(&format!("session\\-reaper\\-{command}(1)")) && page.contains(about),
            "{command} missing from the man page"
        );
    }
    for internal in ["finish(1)", "sentinel(1)", "\\-man(1)"] {
        assert!(!page.contains(internal), "the man page shows {internal}");
    }
    let dir = env.work.path().join("man1");
    output_of(&env, &["man", "--dir", dir.to_str().unwrap()]);
    for name in [
        "session-reaper.1",
        "session-reaper-status.1",
        "session-reaper-broker-spawn.1",
    ] {
        let text = std::fs::read_to_string(dir.join(name)).unwrap_or_default();
        assert!(text.contains(".TH"), "{name} not written");
    }
    assert!(!dir.join("session-reaper-sentinel.1").exists());
}

/// Each flag's default is said once: by clap's `[default: …]`, not also by its help text.
#[test]
fn no_flag_shows_two_defaults() {
    let env = Env::new();
    for args in [
        &["hook", "--help"][..],
        &["broker", "spawn", "--help"],
        &["sweep", "--help"],
        &["reap", "--help"],
        &["install", "--help"],
    ] {
        let help = output_of(&env, args);
        for line in help.lines() {
            assert!(
                line.matches("[default:").count() <= 1,
                "{}: two defaults on one line: {line}",
                args.join(" ")
            );
        }
    }
}
