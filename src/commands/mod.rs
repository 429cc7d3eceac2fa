//! The subcommands, one module each, and the one report line they share.

pub mod backstop;
pub mod broker;
pub mod demo;
pub mod doctor;
pub mod duplicates;
pub mod hook;
pub mod install;
pub mod keep;
pub mod leftovers;
pub mod log;
pub mod reap;
pub mod reference;
pub mod resolve;
pub mod sentinel;
pub mod session_end;
pub mod status;
pub mod status_json;
pub mod status_tree;
pub mod sweep;
pub mod sweep_litter;
pub mod term;

use crate::act::signal::Guard;
use crate::act::stopper::{Listener, Stopper};
use crate::store::Store;

/// The stopper every command uses: progress lines for a person waiting, and the adapters told of each confirmed
/// stop (they clean their tool's files only then).
pub fn stopper(store: &Store, guard: Guard) -> Stopper {
    Stopper::of(store, guard).telling(Listener {
        progress: Some(term::progress),
        stopped: Some(crate::adapters::after_stop),
    })
}

/// One line per stop, for people.
pub fn print_stops(reports: &[crate::act::stopper::StopReport]) {
    for report in reports {
        let ticket = &report.ticket;
        let place = match (&ticket.workspace, &ticket.name) {
            (Some(workspace), Some(name)) => broker::place(workspace, name),
            _ => ticket.origin.clone(),
        };
        println!(
            "pid {:>7}  {:<13} {}  {}",
            ticket.identity.pid,
            ticket.reason,
            crate::commands::term::lead(&report.outcome.summary()),
            place
        );
    }
}
