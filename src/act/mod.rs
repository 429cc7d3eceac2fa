//! Acting on decided changes: the executor applies them under their locks (one event per applied change) or, in
//! a dry run, only returns them to be described; the stopper runs stop tickets through `signal` (the only place
//! that sends signals); `launch` starts brokers and detached helpers; the finisher completes what a hook could not.

pub(crate) mod cgroup;
pub(crate) mod clean;
pub(crate) mod executor;
pub(crate) mod finisher;
pub(crate) mod launch;
pub(crate) mod leftovers;
pub(crate) mod pidfd;
pub(crate) mod sentinel;
pub(crate) mod signal;
pub(crate) mod stopper;
