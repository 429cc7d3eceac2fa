//! `install` / `uninstall`: our hook entries in an agent's settings (the merging lives in `crate::install`), and
//! with `--with-sweep` the periodic sweep: a systemd user timer where a user manager runs, else a crontab line,
//! else the line is printed for the user to add.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::Context;

use crate::config::SettingsRequest;
use crate::error::Outcome;
use crate::install::{self, InstallRequest, Operation};
use crate::observe::workspace;

const SERVICE: &str = include_str!("../../hooks/systemd/session-reaper-sweep.service");
const TIMER: &str = include_str!("../../hooks/systemd/session-reaper-sweep.timer");
const UNIT: &str = "session-reaper-sweep";

pub fn run(args: &SettingsRequest) -> anyhow::Result<Outcome> {
    let operation = args.operation;
    let binary = std::env::current_exe().context("finding this program's path")?;
    let cwd = workspace::current_dir()?;
    let settings_path = match &args.settings {
        Some(path) => path.clone(),
        None => install::resolve_settings_path(args.agent, args.scope, &cwd, &|name| {
            std::env::var_os(name)
        })?,
    };
    let request = InstallRequest {
        agent: args.agent,
        settings_path,
        binary: &binary,
        dry_run: args.dry_run,
    };
    let report = match operation {
        Operation::Install => install::install(&request)?,
        Operation::Uninstall => install::uninstall(&request)?,
    };
    print!("{report}");
    if args.with_sweep {
        let sweep = Sweep {
            binary: &binary,
            dry_run: args.dry_run,
        };
        match operation {
            Operation::Install => sweep.install()?,
            Operation::Uninstall => sweep.uninstall()?,
        }
    }
    Ok(Outcome::Done)
}

struct Sweep<'a> {
    binary: &'a Path,
    dry_run: bool,
}

impl Sweep<'_> {
    fn cron_line(&self) -> String {
        format!(
            "* * * * * {} sweep >/dev/null 2>&1",
            install::shell_quote(&self.binary.to_string_lossy())
        )
    }

    fn unit_dir() -> Option<PathBuf> {
        let config = std::env::var_os("XDG_CONFIG_HOME")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".config")))?;
        Some(config.join("systemd/user"))
    }

    fn install(&self) -> anyhow::Result<()> {
        if systemd_user_available() {
            let dir = Self::unit_dir().context("no HOME for the systemd user unit")?;
            let exec = install::shell_quote(&self.binary.to_string_lossy()).into_owned();
            let service = SERVICE.replace("%h/.cargo/bin/session-reaper", &exec);
            if self.dry_run {
                println!(
                    "would write {} and enable {UNIT}.timer",
                    dir.join(format!("{UNIT}.service")).display()
                );
                return Ok(());
            }
            std::fs::create_dir_all(&dir)?;
            std::fs::write(dir.join(format!("{UNIT}.service")), service)?;
            std::fs::write(dir.join(format!("{UNIT}.timer")), TIMER)?;
            systemctl(&["daemon-reload"])?;
            systemctl(&["enable", "--now", &format!("{UNIT}.timer")])?;
            println!("sweep: systemd user timer {UNIT}.timer enabled (every minute)");
            return Ok(());
        }
        let line = self.cron_line();
        if !crontab_available() {
            println!(
                "sweep: no systemd user manager and no crontab here; run this every minute yourself:\n  {line}"
            );
            return Ok(());
        }
        let current = crontab_list();
        if current
            .lines()
            .any(|existing| existing.contains(" sweep") && existing.contains("session-reaper"))
        {
            println!("sweep: crontab already runs session-reaper sweep");
            return Ok(());
        }
        if self.dry_run {
            println!("would add to your crontab:\n  {line}");
            return Ok(());
        }
        let mut updated = current;
        if !updated.is_empty() && !updated.ends_with('\n') {
            updated.push('\n');
        }
        updated.push_str(&line);
        updated.push('\n');
        crontab_write(&updated)?;
        println!("sweep: added to your crontab:\n  {line}");
        Ok(())
    }

    fn uninstall(&self) -> anyhow::Result<()> {
        if let Some(dir) = Self::unit_dir().filter(|dir| dir.join(format!("{UNIT}.timer")).exists())
        {
            if self.dry_run {
                println!(
                    "would disable {UNIT}.timer and remove its units from {}",
                    dir.display()
                );
                return Ok(());
            }
            let _ = systemctl(&["disable", "--now", &format!("{UNIT}.timer")]);
            let _ = std::fs::remove_file(dir.join(format!("{UNIT}.timer")));
            let _ = std::fs::remove_file(dir.join(format!("{UNIT}.service")));
            let _ = systemctl(&["daemon-reload"]);
            println!("sweep: systemd user timer removed");
        }
        if crontab_available() {
            let current = crontab_list();
            let kept: Vec<&str> = current
                .lines()
                .filter(|line| !(line.contains("session-reaper") && line.contains(" sweep")))
                .collect();
            if kept.len() != current.lines().count() {
                if self.dry_run {
                    println!("would remove the session-reaper sweep line from your crontab");
                } else {
                    let mut text = kept.join("\n");
                    if !text.is_empty() {
                        text.push('\n');
                    }
                    crontab_write(&text)?;
                    println!("sweep: crontab line removed");
                }
            }
        }
        Ok(())
    }
}

fn quiet(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

fn systemd_user_available() -> bool {
    quiet("systemctl", &["--user", "show-environment"])
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
