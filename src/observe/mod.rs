//! Observing the world: the process table with pinned identities (argv and environ read only for candidates),
//! host facts, and where a cwd's workspace is.

pub mod cgroup;
pub mod lineage;
pub mod mcp;
pub mod proc;
pub mod table;
pub mod workspace;

pub use proc::{Ancestor, Markers, Observed};
