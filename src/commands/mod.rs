//! The subcommands, one module each.

pub mod broker;
pub mod reap;
pub mod status;
