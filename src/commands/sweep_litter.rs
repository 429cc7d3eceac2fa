//! What a sweep cleans and reports beside the slots it judges: the atomic writer's temp files that killed writers
//! left behind (removed, one event), and entries of `workspaces/` that are not directories (reported, never
//! followed).

use std::time::SystemTime;

use crate::commands::sweep::SweepAction;
use crate::model::bounded;
use crate::store::Store;
use crate::store::events::Event;
use crate::store::{slot_dirs, temps};

/// What this part of a sweep did (or would do) and what it could not do.
#[derive(Debug, Default)]
pub struct Litter {
    pub actions: Vec<SweepAction>,
    pub problems: Vec<String>,
}

/// Removes (or, in a dry run, lists) the temp files left behind and reports odd entries of `workspaces/`.
pub fn at_sweep(store: &Store, dry_run: bool) -> Litter {
    let mut litter = Litter::default();
    let mut removed = Vec::new();
    for path in temps::left_behind(&store.root, SystemTime::now()) {
        let shown = path
            .strip_prefix(store.root.path())
            .unwrap_or(&path)
            .display()
            .to_string();
        if !dry_run && let Err(err) = std::fs::remove_file(&path) {
            litter
                .problems
                .push(format!("removing {}: {err}", path.display()));
            continue;
        }
        litter.actions.push(SweepAction {
            action: "clean",
            reason: None,
            target: shown.clone(),
            pid: None,
            result: if dry_run {
                "would remove temp file left by an interrupted write".to_owned()
            } else {
                "removed temp file left by an interrupted write".to_owned()
            },
        });
        removed.push(shown);
    }
    if !removed.is_empty() && !dry_run {
        store.log.record(
            &Event::new("clean", "removed").detail(bounded::capped(format!(
                "{} temp file(s) of interrupted writes (older than {}) removed: {}",
                removed.len(),
                humantime::format_duration(temps::LEFT_BEHIND_AFTER),
                removed.join(", ")
            ))),
        );
    }
    for odd in slot_dirs::odd_entries(&store.root) {
        litter.actions.push(SweepAction {
            action: "refuse",
            reason: None,
            target: odd.label.clone(),
            pid: None,
            result: format!("left alone: {}", odd.what),
        });
        litter.problems.push(odd.problem());
    }
    litter
}
