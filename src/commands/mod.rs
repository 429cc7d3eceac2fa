//! The subcommands, one module each, and the one report line they share.

pub mod broker;
pub mod demo;
pub mod doctor;
pub mod install;
pub mod keep;
pub mod log;
pub mod reap;
pub mod reference;
pub mod status;
pub mod status_json;
pub mod status_tree;
pub mod sweep;
pub mod sweep_litter;

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
            crate::term::lead(&report.outcome.summary()),
            place
        );
    }
}
