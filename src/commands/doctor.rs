//! `doctor`: checks that say whether this machine is set up to never leak brokers and never stop the wrong one —
//! each ok, warn or fail, with a one-line fix.

use std::path::Path;

use crate::act::finisher;
use crate::act::signal;
use crate::act::stopper::STUCK_AFTER;
use crate::agents::{Agent, AgentSpec};
use crate::config::Config;
use crate::error::Outcome;
use crate::observe::proc;
use crate::settings::{self, probe};
use crate::store::Store;
use crate::store::root::StateRoot;

pub(crate) use crate::model::check::{Check, Level};

fn check(name: &str, level: Level, detail: impl Into<String>, fix: Option<String>) -> Check {
    Check {
        name: name.to_owned(),
        level,
        detail: detail.into(),
        fix,
    }
}

pub(crate) fn run(json_output: bool, config: &Config) -> anyhow::Result<Outcome> {
    let checks = checks(config);
    let worst = checks.iter().map(|c| c.level).max().unwrap_or(Level::Ok);
    if json_output {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({ "checks": checks, "worst": worst }))?
        );
    } else {
        for c in &checks {
            let tag = match c.level {
                Level::Ok => "ok  ",
                Level::Warn => "warn",
                Level::Fail => "FAIL",
            };
            println!("{tag}  {:<16} {}", c.name, c.detail);
            if let Some(fix) = &c.fix {
                println!("      {:<16} fix: {fix}", "");
            }
        }
    }
    Ok(Outcome::from_ok(worst != Level::Fail))
}

pub(crate) fn checks(config: &Config) -> Vec<Check> {
    let mut checks = Vec::new();
    let root = match StateRoot::open_existing(&config.state_dir) {
        Ok(Some(root)) => {
            checks.push(check(
                "state root",
                Level::Ok,
                root.path().display().to_string(),
                None,
            ));
            Some(root)
        }
        Ok(None) => {
            checks.push(check(
                "state root",
                Level::Warn,
                format!("{} does not exist yet", config.state_dir.display()),
                Some(
                    "it is created by the first hook; run `session-reaper install --agent claude`"
                        .into(),
                ),
            ));
            None
        }
        Err(err) => {
            checks.push(check(
                "state root",
                Level::Fail,
                format!("{err:#}"),
                Some("fix the permissions named above, or use a state root of your own with --state-dir".into()),
            ));
            None
        }
    };
    checks.push(filesystem_check(
        root.as_ref()
            .map_or(config.state_dir.as_path(), StateRoot::path),
    ));
    checks.push(if signal::pidfd_supported() {
        check(
            "pidfd",
            Level::Ok,
            "pidfd_open and pidfd_send_signal available",
            None,
        )
    } else {
        check(
            "pidfd",
            Level::Warn,
            "no pidfd: signals use verify-then-kill",
            Some("use Linux 5.3 or newer".into()),
        )
    });
    for agent in Agent::all() {
        checks.extend(hooks_checks(agent.spec(), &config.state_dir));
    }
    checks.push(crate::adapters::codex_plugin::doctor_check());
    let (contained, containment) = crate::act::cgroup::doctor_line();
    checks.push(check(
        "containment",
        if contained { Level::Ok } else { Level::Warn },
        containment,
        (!contained).then(|| {
            "see docs/containment.md: the session variables and process groups stand in".into()
        }),
    ));
    if let Some(root) = root {
        let store = Store::from_root(root);
        checks.push(tickets_check(&store));
        checks.push(corrupt_check(&store));
        checks.push(hook_errors_check(&store));
        checks.push(agents_check(&store));
    }
    checks
}

/// Live sessions whose recorded agent process is no agent executable: a wrapper around the hook (a launcher script,
/// `flock`, `xargs`) was taken for the agent, and the session ends as soon as that process exits.
fn agents_check(store: &Store) -> Check {
    let odd: Vec<String> = store
        .sessions
        .all()
        .into_iter()
        .filter(|session| !session.is_ended())
        .filter_map(|session| {
            let identity = session
                .agent_identity
                .as_ref()
                .filter(|id| crate::observe::proc::is_alive(id))?;
            let argv = crate::observe::proc::cmdline(identity.pid).unwrap_or_default();
            (!crate::observe::proc::is_agent_program(&argv)).then(|| {
                format!(
                    "{} (pid {}: {})",
                    session.session_id,
                    identity.pid,
                    argv.join(" ")
                )
            })
        })
        .collect();
    if odd.is_empty() {
        check(
            "agent processes",
            Level::Ok,
            "every live session's agent is an agent executable",
            None,
        )
    } else {
        check(
            "agent processes",
            Level::Warn,
            format!("recorded agent is not an agent executable: {}", odd.join("; ")),
            Some("run the hook directly from the agent's settings, or pass --owner-pid with the agent's pid".into()),
        )
    }
}

fn filesystem_check(path: &Path) -> Check {
    let probe = path
        .ancestors()
        .find(|p| p.exists())
        .unwrap_or(Path::new("/"));
    match rustix::fs::statfs(probe) {
        Ok(stat) => {
            // fs_type_t is i64 on x86_64 but narrower elsewhere.
            #[allow(clippy::useless_conversion)]
            let magic = i64::from(stat.f_type);
            match network_filesystem(magic) {
                Some(kind) => check(
                    "filesystem",
                    Level::Warn,
                    format!("{kind}: flock is unreliable on network filesystems"),
                    Some("set SESSION_REAPER_STATE_DIR to a local directory (e.g. under /run/user/$UID or /var/tmp)".into()),
                ),
                None => check("filesystem", Level::Ok, format!("local (magic {magic:#x})"), None),
            }
        }
        Err(err) => check(
            "filesystem",
            Level::Warn,
            format!("cannot tell: {err}"),
            None,
        ),
    }
}

/// The name of a network filesystem by its statfs magic number.
fn network_filesystem(magic: i64) -> Option<&'static str> {
    match magic {
        0x6969 => Some("nfs"),
        0x517b => Some("smb"),
        0xff53_4d42 => Some("cifs"),
        0xfe53_4d42 => Some("smb2"),
        0x6573_5546 => Some("fuse"),
        0x00c3_6400 => Some("ceph"),
        0x5346_414f => Some("afs"),
        0x0102_1997 => Some("9p"),
        0x0bd0_0bd0 => Some("lustre"),
        _ => None,
    }
}

/// The hooks of one agent: present for both events, not switched off, trusted (Codex), the sweep where `SessionEnd`
/// is unreliable — and each one run as the agent would run it, in probe mode (see `settings::probe`).
fn hooks_checks(spec: &AgentSpec, state_dir: &Path) -> Vec<Check> {
    let name = format!("{} hooks", spec.name);
    let env = |key: &str| std::env::var_os(key);
    let (Some(path), Some(config_dir)) = (spec.user_settings(&env), spec.user_config_dir(&env))
    else {
        return vec![check(&name, Level::Warn, "HOME not set", None)];
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        // The agent's own configuration directory is there: the agent is set up for this user.
        Err(_) if config_dir.exists() => {
            return vec![check(
                &name,
                Level::Warn,
                format!("not installed: no {}", path.display()),
                Some(format!("session-reaper install --agent {}", spec.name)),
            )];
        }
        Err(_) => {
            return vec![check(
                &name,
                Level::Ok,
                "agent not set up for this user",
                None,
            )];
        }
    };
    let value = match settings::file::parse(spec, &text, &path) {
        Ok((value, _)) => value,
        Err(err) => {
            return vec![check(
                &name,
                Level::Fail,
                format!("{err:#}"),
                Some(format!(
                    "fix the file, then session-reaper install --agent {}",
                    spec.name
                )),
            )];
        }
    };
    let ours = probe::our_entries(spec, &value);
    if !settings::merge::ours_in_ignored_wrapper(spec, &value).is_empty() {
        return vec![check(
            &name,
            Level::Fail,
            format!(
                "hooks of ours under \"hooks\" in {}: {} reads its events at the top level of this file and \
                 ignores them",
                path.display(),
                spec.title
            ),
            Some(format!(
                "session-reaper install --agent {} (moves them)",
                spec.name
            )),
        )];
    }
    if ours.is_empty() {
        return vec![check(
            &name,
            Level::Warn,
            format!("not installed in {}", path.display()),
            Some(format!("session-reaper install --agent {}", spec.name)),
        )];
    }
    let sweep = crate::commands::install::sweep_state();
    let findings = probe::findings(spec, &path, &value, &ours, state_dir, sweep);
    if findings.is_empty() {
        return vec![check(
            &name,
            Level::Ok,
            format!(
                "installed in {}; the hooks run and answer as expected",
                path.display()
            ),
            None,
        )];
    }
    findings
        .into_iter()
        .map(|finding| {
            check(
                &name,
                if finding.failure {
                    Level::Fail
                } else {
                    Level::Warn
                },
                finding.detail,
                Some(finding.fix),
            )
        })
        .collect()
}

/// Hook errors logged in the last day.
fn hook_errors_check(store: &Store) -> Check {
    let text =
        std::fs::read_to_string(store.root.join(crate::store::root::EVENTS)).unwrap_or_default();
    let now = std::time::SystemTime::now();
    let errors: Vec<serde_json::Value> = text
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|event| event["action"] == "hook" && event["result"] == "error")
        .filter(|event| {
            event["ts"]
                .as_str()
                .and_then(|ts| crate::model::clock::age(ts, now))
                .is_some_and(|age| age < std::time::Duration::from_secs(86_400))
        })
        .collect();
    match errors.last() {
        None => check("hook errors", Level::Ok, "none in the last day", None),
        Some(last) => check(
            "hook errors",
            Level::Warn,
            format!(
                "{} in the last day; latest: {}",
                errors.len(),
                last["detail"].as_str().unwrap_or("")
            ),
            Some("session-reaper log --action hook".into()),
        ),
    }
}

fn tickets_check(store: &Store) -> Check {
    let refused = store.tickets.refused();
    if !refused.is_empty() {
        let listed: Vec<String> = refused
            .iter()
            .map(|(path, why)| format!("{}: {why}", path.display()))
            .collect();
        return check(
            "stops",
            Level::Warn,
            format!(
                "{} stop ticket(s) not read as they stand, never acted on: {}",
                refused.len(),
                listed.join("; ")
            ),
            Some("if a ticket is another user's, that user's own session-reaper drives it; it is not ours to remove".into()),
        );
    }
    let tickets = store.tickets.readable();
    let stuck: Vec<String> = tickets
        .iter()
        .filter(|t| t.attempts >= STUCK_AFTER && proc::is_alive(&t.identity))
        .map(|t| t.identity.pid.to_string())
        .collect();
    if !stuck.is_empty() {
        return check(
            "stops",
            Level::Fail,
            format!("stuck after {STUCK_AFTER} SIGKILLs: pid {}", stuck.join(", ")),
            Some("the process is in uninterruptible sleep (D state); check `cat /proc/PID/stack`, then reboot if it never returns".into()),
        );
    }
    let overdue = tickets
        .iter()
        .filter(|t| {
            crate::model::clock::age(&t.requested_at, std::time::SystemTime::now()).is_some_and(
                |age| {
                    age > std::time::Duration::from_millis(t.grace_ms)
                        + std::time::Duration::from_secs(30)
                },
            )
        })
        .count();
    if overdue > 0 && !finisher::is_running(store) {
        return check(
            "stops",
            Level::Warn,
            format!(
                "{overdue} stop ticket(s) overdue and no finisher running (it died or was killed)"
            ),
            Some(
                "session-reaper sweep (and install the periodic sweep: install --with-sweep)"
                    .into(),
            ),
        );
    }
    check(
        "stops",
        Level::Ok,
        format!("{} pending", tickets.len()),
        None,
    )
}

fn corrupt_check(store: &Store) -> Check {
    let corrupt: Vec<String> = walkdir::WalkDir::new(store.root.path())
        .max_depth(4)
        .into_iter()
        .filter_map(Result::ok)
        .filter(|entry| entry.file_name().to_string_lossy().contains(".corrupt-"))
        .map(|entry| entry.path().display().to_string())
        .collect();
    if corrupt.is_empty() {
        check("records", Level::Ok, "no corrupt records", None)
    } else {
        check(
            "records",
            Level::Warn,
            format!(
                "{} corrupt record(s) moved aside: {}",
                corrupt.len(),
                corrupt.join(", ")
            ),
            Some("read them, then delete; a sweep stops any broker they named (unrecorded)".into()),
        )
    }
}
