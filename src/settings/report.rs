//! What `install` / `uninstall` did to one settings file, for people (`Display`) and for `--json`.

use std::fmt;
use std::path::PathBuf;

use serde::Serialize;

use crate::agents::Agent;
use crate::settings::merge::{Change, PROGRAM};

/// Which way a report went.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Operation {
    Install,
    Uninstall,
}

/// The outcome of one install or uninstall. (Its booleans are independent facts, as `--json` shows them.)
#[allow(clippy::struct_excessive_bools)]
#[derive(Clone, Debug, Serialize)]
pub(crate) struct InstallReport {
    pub operation: Operation,
    pub agent: Agent,
    /// The settings file as requested.
    pub path: PathBuf,
    /// Every entry of ours that was looked at, in file order.
    pub changes: Vec<Change>,
    pub dry_run: bool,
    /// Install found no file and creates it (or would, under `dry_run`), with its parent directories.
    pub created: bool,
    /// The file was rewritten or removed (or would be, under `dry_run`: then false).
    pub written: bool,
    /// Uninstall removes the file (or would, under `dry_run`): it held nothing but our entries, and no backup says
    /// the user had it before; the agent's own folders it leaves empty go too.
    pub removed: bool,
    /// Where the previous contents were saved, when the file was rewritten.
    pub backup: Option<PathBuf>,
    /// Things the user should know: a switch that keeps our hooks from running, a trust step.
    pub notes: Vec<String>,
}

impl InstallReport {
    /// The report of `operation` on `req`'s file with these changes, before anything is written.
    pub(crate) fn new(
        req: &crate::settings::InstallRequest,
        operation: Operation,
        changes: Vec<Change>,
    ) -> Self {
        InstallReport {
            operation,
            agent: req.agent,
            path: req.settings_path.clone(),
            changes,
            dry_run: req.dry_run,
            created: false,
            written: false,
            removed: false,
            backup: None,
            notes: Vec::new(),
        }
    }

    /// True when the file's contents change (or would, under `dry_run`).
    pub(crate) fn changed(&self) -> bool {
        self.changes.iter().any(Change::is_change)
    }

    fn headline(&self) -> String {
        let path = self.path.display();
        match (self.operation, self.changed(), self.dry_run) {
            (Operation::Install, false, _) => {
                format!("hooks already installed in {path}; nothing to do")
            }
            (Operation::Uninstall, false, _) => {
                format!("no {PROGRAM} hooks in {path}; nothing to do")
            }
            (Operation::Install, true, true) => {
                format!("would install hooks in {path} (dry run, nothing written)")
            }
            (Operation::Uninstall, true, true) if self.removed => {
                format!(
                    "would remove hooks from {path}, and the file, which holds nothing else (dry run, nothing written)"
                )
            }
            (Operation::Uninstall, true, true) => {
                format!("would remove hooks from {path} (dry run, nothing written)")
            }
            (Operation::Install, true, false) if self.created => {
                format!("installed hooks in {path} (new file)")
            }
            (Operation::Install, true, false) => format!("installed hooks in {path}"),
            (Operation::Uninstall, true, false) if self.removed => {
                format!("removed hooks from {path}, and the file, which held nothing else")
            }
            (Operation::Uninstall, true, false) => format!("removed hooks from {path}"),
        }
    }
}

impl fmt::Display for InstallReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}: {}", self.agent, self.headline())?;
        for change in &self.changes {
            let (verb, event, what) = match change {
                Change::Added { event, command } => ("added", event, command.clone()),
                Change::Replaced {
                    event,
                    old_command,
                    command,
                } if old_command == command => ("completed", event, command.clone()),
                Change::Replaced {
                    event,
                    old_command,
                    command,
                } => ("replaced", event, format!("{old_command} -> {command}")),
                Change::Removed { event, command } => ("removed", event, command.clone()),
                Change::Unchanged { event, command } => ("unchanged", event, command.clone()),
            };
            writeln!(f, "  {verb:<10} {event}: {what}")?;
        }
        if let Some(backup) = &self.backup {
            writeln!(f, "  backup: {}", backup.display())?;
        }
        for note in &self.notes {
            writeln!(f, "  note: {note}")?;
        }
        Ok(())
    }
}
