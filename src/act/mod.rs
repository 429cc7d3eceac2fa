//! Acting on decided changes: the executor applies them under their locks (one event per applied change) or, in
//! a dry run, only returns them to be described; the stopper runs stop tickets through `signal` (the only place
//! that sends signals); `launch` starts brokers and detached helpers; the finisher completes what a hook could not.

pub mod cgroup;
pub mod executor;
pub mod finisher;
pub mod launch;
pub mod leftovers;
pub mod sentinel;
pub mod signal;
pub mod stopper;

pub use executor::{Mode, update_slot};
