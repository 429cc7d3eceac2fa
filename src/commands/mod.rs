//! The subcommands, one module each.

pub mod broker;
pub mod demo;
pub mod doctor;
pub mod install;
pub mod log;
pub mod reap;
pub mod status;
pub mod sweep;
