//! The subcommands, one module each, and the one report line they share.

pub(crate) mod backstop;
pub(crate) mod broker;
pub(crate) mod demo;
pub(crate) mod doctor;
pub(crate) mod duplicates;
pub(crate) mod hook;
pub(crate) mod install;
pub(crate) mod keep;
pub(crate) mod leftovers;
pub(crate) mod log;
pub(crate) mod reap;
pub(crate) mod reference;
pub(crate) mod resolve;
pub(crate) mod sentinel;
pub(crate) mod session_end;
pub(crate) mod status;
pub(crate) mod status_json;
pub(crate) mod status_tree;
pub(crate) mod sweep;
pub(crate) mod sweep_litter;
pub(crate) mod term;

use crate::act::signal::Guard;
use crate::act::stopper::{Listener, Stopper};
use crate::store::Store;

/// The stopper every command uses: progress lines for a person waiting (an adapter's files named in a ticket are
/// cleaned by the stopper's executor once the exit is confirmed).
pub(crate) fn stopper(store: &Store, guard: Guard) -> Stopper {
    Stopper::of(store, guard).telling(Listener {
        progress: Some(term::progress),
    })
}

/// One line per stop, for people.
pub(crate) fn print_stops(reports: &[crate::act::stopper::StopReport]) {
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
