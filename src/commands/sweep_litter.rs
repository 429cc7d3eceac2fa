//! What a sweep cleans and reports beside the slots it judges: the atomic writer's temp files that killed writers
//! left behind in the root, `sessions/` and `stopping/` (removed, one event), and entries of `workspaces/` that are
//! not slot directories (reported, never followed).

use std::time::SystemTime;

use crate::act::executor;
use crate::commands::sweep::SweepAction;
use crate::model::bounded;
use crate::store::Store;
use crate::store::events::Event;
use crate::store::slot_dirs::OddEntry;
use crate::store::temps;

/// What this part of a sweep did (or would do) and what it could not do.
#[derive(Debug, Default)]
pub(crate) struct Litter {
    pub actions: Vec<SweepAction>,
    pub problems: Vec<String>,
}

/// Removes (or, in a dry run, lists) the temp files left behind.
pub(crate) fn at_sweep(store: &Store, dry_run: bool) -> Litter {
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
        executor::note(
            store,
            Event::new("clean", "removed").detail(bounded::capped(format!(
                "{} temp file(s) of interrupted writes (older than {}) removed: {}",
                removed.len(),
                humantime::format_duration(temps::LEFT_BEHIND_AFTER),
                removed.join(", ")
            ))),
        );
    }
    litter
}

/// What a sweep says of the odd entries of `workspaces/` its listing found: each reported, none followed.
pub(crate) fn odd_slots(odd: &[OddEntry]) -> Litter {
    let mut litter = Litter::default();
    for entry in odd {
        litter.actions.push(SweepAction {
            action: "refuse",
            reason: None,
            target: entry.label.clone(),
            pid: None,
            result: format!("left alone: {}", entry.what),
        });
        litter.problems.push(entry.problem());
    }
    litter
}
