//! Agent settings: our `SessionStart`/`SessionEnd` hook entries in the settings file of every agent in
//! [`crate::agents`] — `merge` (pure JSON), `file` (load, back up, replace through the one atomic writer, comments
//! kept), `plugin` (a plugin file of ours, OpenCode's), `report` (what was done) and `probe` (doctor's check that the
//! configured hooks really run).
//!
//! Removal is clean: a file that holds nothing but our entries is removed rather than left as `{}` (with the
//! agent's own folders above it that this leaves empty), and no backup is kept that holds nothing but our entries.

pub(crate) mod file;
pub(crate) mod merge;
pub(crate) mod plugin;
pub(crate) mod probe;
pub(crate) mod report;

use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::{Map, Value};

use crate::agents::{Agent, AgentSpec};
use anyhow::Context;

use crate::error::BadInput;
pub(crate) use merge::{Change, HookFlags, PROGRAM, commands_in, hook_command, is_our_command};
pub(crate) use report::{InstallReport, Operation};

/// Which settings file the default path points at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Scope {
    /// The user's own settings, under the home directory (or the agent's config-dir variable).
    User,
    /// The settings of the repository the current directory is in, at its top level (for teams to commit).
    Project,
}

/// What to do where neither a systemd user manager nor `crontab` is there.
pub(crate) const NOWHERE_FIX: &str = "This machine has no systemd user manager and no crontab: run `session-reaper sweep` \
    every minute some other way (a login script, a supervisor), or install cron";

/// Whether the periodic sweep is installed, and where it could be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SweepState {
    Installed,
    /// Not installed; `install --with-sweep` would install it.
    Missing,
    /// Not installed, and neither a systemd user manager nor `crontab` is there to install it.
    Nowhere,
}

/// One `install` or `uninstall` run on one settings file.
#[derive(Clone, Debug)]
pub(crate) struct InstallRequest {
    pub agent: Agent,
    /// The settings file to edit (a symlink is followed, and the file it points at is rewritten).
    pub settings_path: PathBuf,
    /// The hook command to install (see [`hook_command`]); unused by `uninstall`.
    pub command: String,
    /// Compute and report, write nothing.
    pub dry_run: bool,
}

/// The user's settings file of `spec`, honouring the agent's own variable, else `HOME`.
///
/// # Errors
/// [`BadInput`] when `HOME` is needed and unset.
pub(crate) fn user_settings_path(
    spec: &AgentSpec,
    env: &dyn Fn(&str) -> Option<std::ffi::OsString>,
) -> anyhow::Result<PathBuf> {
    spec.user_settings(env).ok_or_else(|| {
        anyhow::Error::new(BadInput(
            "HOME is not set, so the user settings file is unknown; pass --settings FILE".into(),
        ))
    })
}

/// Adds our hook entries (see [`merge::merge_entries`]); creates the file and its directories when missing.
pub(crate) fn install(req: &InstallRequest) -> anyhow::Result<InstallReport> {
    apply(req, Operation::Install)
}

/// Removes our hook entries (see [`merge::remove_entries`]). A missing file, or one without entries of ours, is left
/// alone (no write, no backup).
pub(crate) fn uninstall(req: &InstallRequest) -> anyhow::Result<InstallReport> {
    apply(req, Operation::Uninstall)
}

fn with_path(err: anyhow::Error, path: &Path) -> anyhow::Error {
    match err.downcast::<BadInput>() {
        Ok(BadInput(message)) => {
            anyhow::Error::new(BadInput(format!("{}: {message}", path.display())))
        }
        Err(err) => err.context(path.display().to_string()),
    }
}

fn apply(req: &InstallRequest, operation: Operation) -> anyhow::Result<InstallReport> {
    let spec = req.agent.spec();
    let path = &req.settings_path;
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.clone());
    let target = file::write_target(&absolute)
        .map_err(|err| anyhow::anyhow!("{}: cannot follow symlink: {err}", path.display()))?;
    let loaded = file::load(spec, &target, path)?;
    if let Some(template) = plugin::template(spec) {
        return apply_plugin(req, operation, &target, loaded.as_ref(), template);
    }
    let mut value = loaded
        .as_ref()
        .map_or_else(|| Value::Object(Map::new()), |loaded| loaded.value.clone());
    let changes = match operation {
        Operation::Install => merge::merge_entries(&mut value, spec, &req.command),
        Operation::Uninstall => merge::remove_entries(&mut value, spec),
    }
    .map_err(|err| with_path(err, path))?;
    let mut report = InstallReport::new(req, operation, changes);
    report.created = operation == Operation::Install && loaded.is_none();
    report.notes = match operation {
        Operation::Install => merge::advisories(spec, &value),
        Operation::Uninstall => Vec::new(),
    };
    if operation == Operation::Uninstall
        && report.changed()
        && spec.trust_by_position
        && !commands_in(spec, &value).is_empty()
    {
        report.notes.push(format!(
            "{} keys hook trust by position: a hook listed after the removed one may ask to be trusted again",
            spec.title
        ));
    }
    let emptied = operation == Operation::Uninstall && value.as_object().is_some_and(Map::is_empty);
    let backup = file::backup_path(&target);
    let previous = std::fs::read_to_string(&backup).ok();
    // The file is ours alone when it held nothing else and no backup of the user's says it was there before us.
    report.removed = emptied
        && previous
            .as_deref()
            .is_none_or(|text| holds_only_ours(spec, text));
    if !report.changed() || req.dry_run {
        return Ok(report);
    }
    if let Some(loaded) = &loaded {
        file::ensure_unchanged(&target, &loaded.metadata)
            .map_err(|err| anyhow::anyhow!("{}: left as it is: {err}", path.display()))?;
    }
    report.written = true;
    if report.removed {
        remove_our_file(spec, &target)?;
        return Ok(report);
    }
    let text = match &loaded {
        Some(loaded) => file::edited_text(loaded, &value),
        None => file::rendered(&value),
    };
    // A backup is kept of what the user had: not of a file that held only our entries, and not when the file is
    // back to what the backup holds (an uninstall that restored it).
    let restored = previous.as_deref() == Some(text.as_str());
    let keep_backup = loaded
        .as_ref()
        .filter(|loaded| !restored && !holds_only_ours(spec, &loaded.text));
    report.backup = file::replace(&target, &text, loaded.as_ref(), keep_backup.is_some())?;
    if restored {
        let _ = std::fs::remove_file(&backup);
    }
    if let Some((companion, contents)) = spec.companion {
        write_companion(&target, companion, contents)?;
    }
    Ok(report)
}

/// True when a settings text holds entries of ours and nothing else.
fn holds_only_ours(spec: &AgentSpec, text: &str) -> bool {
    let Ok((mut value, _)) = file::parse(spec, text, Path::new("")) else {
        return false;
    };
    merge::remove_entries(&mut value, spec).is_ok_and(|changes| !changes.is_empty())
        && value.as_object().is_some_and(Map::is_empty)
}

/// Install or uninstall for an agent whose hook is a plugin file of ours: written whole from its template, or
/// removed; a file of the same name that is not ours is never touched.
fn apply_plugin(
    req: &InstallRequest,
    operation: Operation,
    target: &Path,
    loaded: Option<&file::Loaded>,
    template: &str,
) -> anyhow::Result<InstallReport> {
    let spec = req.agent.spec();
    let path = &req.settings_path;
    if loaded.is_some_and(|loaded| !plugin::is_ours(&loaded.text)) {
        return match operation {
            Operation::Install => Err(anyhow::Error::new(BadInput(format!(
                "{}: expected a plugin file of {PROGRAM}'s there, found another; left as it is (move it away, or \
                 pass --settings with another file name)",
                path.display()
            )))),
            Operation::Uninstall => Ok(InstallReport::new(req, operation, Vec::new())),
        };
    }
    let current = loaded.and_then(|loaded| plugin::command_in(&loaded.text));
    let text = plugin::render(template, &req.command);
    let changes = spec
        .events()
        .map(|event| {
            let event = event.to_owned();
            match (operation, &current) {
                (Operation::Uninstall, Some(command)) => Change::Removed {
                    event,
                    command: command.clone(),
                },
                (Operation::Install, None) => Change::Added {
                    event,
                    command: req.command.clone(),
                },
                (Operation::Install, Some(_)) if loaded.is_some_and(|l| l.text == text) => {
                    Change::Unchanged {
                        event,
                        command: req.command.clone(),
                    }
                }
                (Operation::Install, Some(old_command)) => Change::Replaced {
                    event,
                    old_command: old_command.clone(),
                    command: req.command.clone(),
                },
                (Operation::Uninstall, None) => Change::Unchanged {
                    event,
                    command: String::new(),
                },
            }
        })
        .filter(|change| operation == Operation::Install || change.is_change())
        .collect();
    let mut report = InstallReport::new(req, operation, changes);
    report.created = operation == Operation::Install && loaded.is_none();
    report.removed = operation == Operation::Uninstall && report.changed();
    if !report.changed() || req.dry_run {
        return Ok(report);
    }
    report.written = true;
    match operation {
        Operation::Install => {
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent)
                    .with_context(|| format!("cannot create {}", parent.display()))?;
            }
            crate::store::root::write_atomic(target, text.as_bytes(), 0o644)
                .with_context(|| format!("{}: cannot write", path.display()))?;
        }
        Operation::Uninstall => remove_our_file(spec, target)?,
    }
    Ok(report)
}

/// The companion file of a settings file (`hooks/hooks.json` -> `plugin.json` of the same plugin).
fn companion_path(target: &Path, companion: &str) -> PathBuf {
    let mut path = target.parent().unwrap_or(Path::new("/")).to_path_buf();
    for part in Path::new(companion).components() {
        match part {
            std::path::Component::ParentDir => {
                path.pop();
            }
            other => path.push(other),
        }
    }
    path
}

/// Writes the companion file (Goose's `plugin.json`) when it is missing.
fn write_companion(target: &Path, companion: &str, contents: &str) -> anyhow::Result<()> {
    let path = companion_path(target, companion);
    if path.exists() {
        return Ok(());
    }
    crate::store::root::write_atomic(&path, contents.as_bytes(), 0o644)
}

/// Removes a settings file that held only our entries (or a plugin file of ours), its backup, our companion file
/// (if unchanged), then the agent's own folders above it that this leaves empty.
fn remove_our_file(spec: &AgentSpec, target: &Path) -> anyhow::Result<()> {
    std::fs::remove_file(target).with_context(|| format!("cannot remove {}", target.display()))?;
    let _ = std::fs::remove_file(file::backup_path(target));
    if let Some((companion, contents)) = spec.companion {
        let companion = companion_path(target, companion);
        if std::fs::read_to_string(&companion).is_ok_and(|text| text == contents) {
            std::fs::remove_file(&companion)?;
        }
    }
    for dir in target.ancestors().skip(1).take(spec.own_dirs_above(target)) {
        if std::fs::remove_dir(dir).is_err() {
            break;
        }
    }
    Ok(())
}
