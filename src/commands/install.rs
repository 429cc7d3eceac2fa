//! `install` / `uninstall`: our hook entries in an agent's settings (the editing lives in `crate::settings`), and
//! with `--with-sweep` the periodic sweep — shared by every agent: a systemd user timer where a user manager runs,
//! else a crontab line; with neither, it says so and exits 1 (the hooks are installed all the same). The sweep is
//! removed only when no other agent's hooks still name us. The report goes to stdout (or `--json`), warnings to
//! stderr.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::Context;

use crate::agents::{Agent, SessionEndReliability};
use crate::config::{Config, SettingsRequest};
use crate::error::Outcome;
use crate::observe::workspace;
use crate::settings::{self, InstallRequest, NOWHERE_FIX, Operation, PROGRAM, Scope, SweepState};

const SERVICE: &str = include_str!("../../hooks/systemd/session-reaper-sweep.service");
const TIMER: &str = include_str!("../../hooks/systemd/session-reaper-sweep.timer");
const UNIT: &str = "session-reaper-sweep";

pub(crate) fn run(args: &SettingsRequest, config: &Config) -> anyhow::Result<Outcome> {
    let spec = args.agent.spec();
    let binary = std::env::current_exe().context("finding this program's path")?;
    let state_dir = non_default_state_dir(&config.state_dir);
    let cwd = workspace::current_dir()?;
    let env = |name: &str| std::env::var_os(name);
    let (settings_path, command) = match args.scope {
        Scope::User => (
            match &args.settings {
                Some(path) => path.clone(),
                None => settings::user_settings_path(spec, &env)?,
            },
            settings::hook_command(
                spec,
                &binary_text(&binary)?,
                state_dir.as_deref(),
                args.flags,
            ),
        ),
        // A file a team commits: no absolute path of one person's binary or state root; at the repository's top.
        Scope::Project => (
            match &args.settings {
                Some(path) => path.clone(),
                None => spec.project_settings(&workspace::workspace_of(&cwd)?),
            },
            settings::hook_command(spec, PROGRAM, None, args.flags),
        ),
    };
    let request = InstallRequest {
        agent: args.agent,
        settings_path,
        command,
        dry_run: args.dry_run,
    };
    let report = match args.operation {
        Operation::Install => settings::install(&request)?,
        Operation::Uninstall => settings::uninstall(&request)?,
    };
    let sweep = Sweep {
        binary: &binary,
        state_dir: state_dir.as_deref(),
        dry_run: args.dry_run,
    };
    let mut said = Said::default();
    match args.operation {
        Operation::Install if args.with_sweep => sweep.install(&mut said)?,
        Operation::Install => advise_sweep(args.agent, &mut said),
        Operation::Uninstall if args.with_sweep => {
            let others = agents_with_our_hooks(args.agent);
            if others.is_empty() {
                sweep.uninstall(&mut said)?;
            } else {
                let names: Vec<&str> = others.iter().map(|agent| agent.as_str()).collect();
                said.sweep.push(format!(
                    "sweep: kept, because the hooks of {} still rely on it (uninstall those with --with-sweep last)",
                    names.join(", ")
                ));
            }
        }
        Operation::Uninstall => {}
    }
    if args.operation == Operation::Install {
        said.warnings
            .extend(spec.notes.iter().map(|note| (*note).to_owned()));
    }
    if args.json {
        let mut value = serde_json::to_value(&report)?;
        value["sweep"] = serde_json::json!(said.sweep);
        value["sweep_failed"] = serde_json::json!(said.failed);
        value["warnings"] = serde_json::json!(said.warnings);
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        print!("{report}");
        for line in &said.sweep {
            println!("{line}");
        }
        let mut stderr = std::io::stderr().lock();
        for warning in &said.warnings {
            writeln!(stderr, "\n!!! {warning}")?;
        }
    }
    Ok(Outcome::from_ok(!said.failed))
}

/// What `install` / `uninstall` has to say besides the settings report: the sweep's lines (stdout), warnings
/// (stderr, last), and whether the sweep asked for could not be installed (exit 1).
#[derive(Debug, Default)]
struct Said {
    sweep: Vec<String>,
    warnings: Vec<String>,
    failed: bool,
}

fn binary_text(binary: &Path) -> anyhow::Result<String> {
    binary.to_str().map(str::to_owned).ok_or_else(|| {
        crate::error::bad_input(format!(
            "{}: the binary path is not valid UTF-8, so it cannot go into a hook command",
            binary.display()
        ))
    })
}

/// The state root to name in hook commands and the sweep line: only one the agent's environment would not give
/// the hook by itself (the default root needs no flag).
fn non_default_state_dir(state_dir: &Path) -> Option<String> {
    let absolute = std::path::absolute(state_dir).unwrap_or_else(|_| state_dir.to_path_buf());
    let default = crate::store::root::default_root().ok();
    (default.as_deref() != Some(absolute.as_path()))
        .then(|| absolute.to_string_lossy().into_owned())
}

/// Other agents whose user settings still hold a hook of ours.
fn agents_with_our_hooks(except: Agent) -> Vec<Agent> {
    let env = |name: &str| std::env::var_os(name);
    Agent::all()
        .filter(|agent| *agent != except)
        .filter(|agent| {
            let spec = agent.spec();
            spec.user_settings(&env)
                .and_then(|path| std::fs::read_to_string(path).ok())
                .and_then(|text| settings::file::parse(spec, &text, Path::new("")).ok())
                .is_some_and(|(value, _)| {
                    settings::commands_in(spec, &value)
                        .iter()
                        .any(|(_, command)| settings::is_our_command(command))
                })
        })
        .collect()
}

/// An agent whose `SessionEnd` does not always fire needs the sweep: say so loudly when it is not installed.
fn advise_sweep(agent: Agent, said: &mut Said) {
    let SessionEndReliability::Partial(why) = agent.spec().session_end else {
        return;
    };
    let turn_on = match sweep_state() {
        SweepState::Installed => {
            said.sweep.push(format!("sweep: installed (needed: {why})"));
            return;
        }
        SweepState::Missing => {
            format!("Turn it on: session-reaper install --agent {agent} --with-sweep")
        }
        SweepState::Nowhere => NOWHERE_FIX.to_owned(),
    };
    said.warnings.push(format!(
        "{} needs the periodic sweep: {why}, so without it a session whose agent died ends only when \
         `session-reaper sweep` runs. {turn_on}",
        agent.spec().title
    ));
}

/// The periodic sweep's state on this machine.
pub(crate) fn sweep_state() -> SweepState {
    if sweep_installed() {
        SweepState::Installed
    } else if systemd_user_available() || crontab_available() {
        SweepState::Missing
    } else {
        SweepState::Nowhere
    }
}

struct Sweep<'a> {
    binary: &'a Path,
    state_dir: Option<&'a str>,
    dry_run: bool,
}

impl Sweep<'_> {
    /// `BIN [--state-dir DIR] sweep`, quoted for the shell.
    fn command(&self) -> String {
        let binary = self.binary.to_string_lossy();
        let mut words = vec![binary.as_ref()];
        if let Some(dir) = self.state_dir {
            words.extend(["--state-dir", dir]);
        }
        words.push("sweep");
        shlex::try_join(words).unwrap_or_default()
    }

    /// Quiet when all is well; what the sweep says on stderr (its errors) goes to cron's mail.
    fn cron_line(&self) -> String {
        format!("* * * * * {} >/dev/null", self.command())
    }

    fn unit_dir() -> Option<PathBuf> {
        let config = std::env::var_os("XDG_CONFIG_HOME")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".config")))?;
        Some(config.join("systemd/user"))
    }

    fn install(&self, said: &mut Said) -> anyhow::Result<()> {
        if systemd_user_available() {
            let dir = Self::unit_dir().context("no HOME for the systemd user unit")?;
            let service = SERVICE.replace("%h/.cargo/bin/session-reaper sweep", &self.command());
            if self.dry_run {
                said.sweep.push(format!(
                    "would write {} and enable {UNIT}.timer",
                    dir.join(format!("{UNIT}.service")).display()
                ));
                return Ok(());
            }
            std::fs::create_dir_all(&dir)?;
            std::fs::write(dir.join(format!("{UNIT}.service")), service)?;
            std::fs::write(dir.join(format!("{UNIT}.timer")), TIMER)?;
            systemctl(&["daemon-reload"])?;
            systemctl(&["enable", "--now", &format!("{UNIT}.timer")])?;
            said.sweep.push(format!(
                "sweep: systemd user timer {UNIT}.timer enabled (every minute)"
            ));
            return Ok(());
        }
        let line = self.cron_line();
        if !crontab_available() {
            said.warnings.push(format!(
                "the periodic sweep is NOT installed. {NOWHERE_FIX}. The line to run every minute:\n  {line}"
            ));
            // A dry run says so too, and exits 0: it was asked to write nothing.
            said.failed = !self.dry_run;
            return Ok(());
        }
        let current = crontab_list();
        if current.lines().any(|existing| existing == line) {
            said.sweep
                .push("sweep: crontab already runs session-reaper sweep".to_owned());
            return Ok(());
        }
        if self.dry_run {
            said.sweep
                .push(format!("would add to your crontab:\n  {line}"));
            return Ok(());
        }
        let mut kept: Vec<&str> = current
            .lines()
            .filter(|existing| !is_sweep_line(existing))
            .collect();
        kept.push(&line);
        crontab_write(&(kept.join("\n") + "\n"))?;
        said.sweep
            .push(format!("sweep: added to your crontab:\n  {line}"));
        Ok(())
    }

    fn uninstall(&self, said: &mut Said) -> anyhow::Result<()> {
        if let Some(dir) = Self::unit_dir().filter(|dir| dir.join(format!("{UNIT}.timer")).exists())
        {
            if self.dry_run {
                said.sweep.push(format!(
                    "would disable {UNIT}.timer and remove its units from {}",
                    dir.display()
                ));
                return Ok(());
            }
            let _ = systemctl(&["disable", "--now", &format!("{UNIT}.timer")]);
            let _ = std::fs::remove_file(dir.join(format!("{UNIT}.timer")));
            let _ = std::fs::remove_file(dir.join(format!("{UNIT}.service")));
            let _ = systemctl(&["daemon-reload"]);
            said.sweep
                .push("sweep: systemd user timer removed".to_owned());
        }
        if crontab_available() {
            let current = crontab_list();
            let kept: Vec<&str> = current
                .lines()
                .filter(|line| !is_sweep_line(line))
                .collect();
            if kept.len() != current.lines().count() {
                if self.dry_run {
                    said.sweep.push(
                        "would remove the session-reaper sweep line from your crontab".to_owned(),
                    );
                } else {
                    let mut text = kept.join("\n");
                    if !text.is_empty() {
                        text.push('\n');
                    }
                    crontab_write(&text)?;
                    said.sweep.push("sweep: crontab line removed".to_owned());
                }
            }
        }
        Ok(())
    }
}

/// True when the periodic sweep is installed (a systemd user timer of ours, or a crontab line).
pub(crate) fn sweep_installed() -> bool {
    Sweep::unit_dir().is_some_and(|dir| dir.join(format!("{UNIT}.timer")).exists())
        || crontab_list().lines().any(is_sweep_line)
}

/// A crontab line that runs our sweep (any binary path, any state root).
fn is_sweep_line(line: &str) -> bool {
    !line.trim_start().starts_with('#') && line.contains(PROGRAM) && line.contains(" sweep")
}

fn systemd_user_available() -> bool {
    Command::new("systemctl")
        .args(["--user", "show-environment"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

fn systemctl(args: &[&str]) -> anyhow::Result<()> {
    let status = Command::new("systemctl")
        .arg("--user")
        .args(args)
        .status()
        .context("running systemctl --user")?;
    anyhow::ensure!(
        status.success(),
        "systemctl --user {} failed",
        args.join(" ")
    );
    Ok(())
}

fn crontab_available() -> bool {
    Command::new("crontab")
        .arg("-l")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

fn crontab_list() -> String {
    Command::new("crontab")
        .arg("-l")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()
        .filter(|out| out.status.success())
        .map(|out| String::from_utf8_lossy(&out.stdout).into_owned())
        .unwrap_or_default()
}

fn crontab_write(text: &str) -> anyhow::Result<()> {
    let mut child = Command::new("crontab")
        .arg("-")
        .stdin(Stdio::piped())
        .spawn()
        .context("running crontab -")?;
    child
        .stdin
        .take()
        .context("crontab stdin")?
        .write_all(text.as_bytes())?;
    anyhow::ensure!(child.wait()?.success(), "crontab - failed");
    Ok(())
}
