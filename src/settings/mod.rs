//! Agent settings: our `SessionStart`/`SessionEnd` hook entries in the settings file of every agent in
//! [`crate::agents`] — `merge` (pure JSON), `file` (load, back up, replace through the one atomic writer, comments
//! kept), `report` (what was done) and `probe` (doctor's check that the configured hooks really run).

pub mod file;
pub mod merge;
pub mod probe;
pub mod report;

use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::{Map, Value};

use crate::agents::{Agent, AgentSpec};
use crate::error::BadInput;
pub use merge::{
    Change, HookFlags, PROGRAM, commands_in, hook_command, is_our_command, shell_words,
};
pub use report::{InstallReport, Operation};

/// Which settings file the default path points at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// The user's own settings, under the home directory (or the agent's config-dir variable).
    User,
    /// The settings of the repository the current directory is in, at its top level (for teams to commit).
    Project,
}

/// One `install` or `uninstall` run on one settings file.
#[derive(Clone, Debug)]
pub struct InstallRequest {
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
pub fn user_settings_path(
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
pub fn install(req: &InstallRequest) -> anyhow::Result<InstallReport> {
    apply(req, Operation::Install)
}

/// Removes our hook entries (see [`merge::remove_entries`]). A missing file, or one without entries of ours, is left
/// alone (no write, no backup).
pub fn uninstall(req: &InstallRequest) -> anyhow::Result<InstallReport> {
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
    let mut value = loaded
        .as_ref()
        .map_or_else(|| Value::Object(Map::new()), |loaded| loaded.value.clone());
    let changes = match operation {
        Operation::Install => merge::merge_entries(&mut value, spec, &req.command),
        Operation::Uninstall => merge::remove_entries(&mut value, spec),
    }
    .map_err(|err| with_path(err, path))?;
    let mut report = InstallReport {
        operation,
        agent: req.agent,
        path: path.clone(),
        changes,
        dry_run: req.dry_run,
        created: operation == Operation::Install && loaded.is_none(),
        written: false,
        backup: None,
        notes: match operation {
            Operation::Install => merge::advisories(spec, &value),
            Operation::Uninstall => Vec::new(),
        },
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
    if !report.changed() || req.dry_run {
        return Ok(report);
    }
    if let Some(loaded) = &loaded {
        file::ensure_unchanged(&target, &loaded.metadata)
            .map_err(|err| anyhow::anyhow!("{}: left as it is: {err}", path.display()))?;
    }
    let emptied = operation == Operation::Uninstall && value.as_object().is_some_and(Map::is_empty);
    if emptied && let Some((companion, _)) = spec.companion {
        remove_plugin(spec, &target, companion)?;
        report.written = true;
        return Ok(report);
    }
    let text = match &loaded {
        Some(loaded) => file::edited_text(loaded, &value),
        None => file::rendered(&value),
    };
    report.backup = file::replace(&target, &text, loaded.as_ref())?;
    if let Some((companion, contents)) = spec.companion {
        write_companion(&target, companion, contents)?;
    }
    report.written = true;
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

/// Removes a plugin that only we filled: the emptied hook file and its backup, our companion file (if unchanged),
/// then the directories they leave empty.
fn remove_plugin(spec: &AgentSpec, target: &Path, companion: &str) -> anyhow::Result<()> {
    std::fs::remove_file(target)?;
    let _ = std::fs::remove_file(file::backup_path(target));
    let companion = companion_path(target, companion);
    let contents = spec
        .companion
        .map(|(_, contents)| contents)
        .unwrap_or_default();
    if std::fs::read_to_string(&companion).is_ok_and(|text| text == contents) {
        std::fs::remove_file(&companion)?;
    }
    for dir in [target.parent(), companion.parent()].into_iter().flatten() {
        let _ = std::fs::remove_dir(dir);
    }
    Ok(())
}
