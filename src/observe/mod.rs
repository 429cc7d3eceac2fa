//! Observing the world: the process table with pinned identities (argv and environ read only for candidates),
//! host facts, and where a cwd's workspace is.

pub(crate) mod cgroup;
pub(crate) mod lineage;
pub(crate) mod mcp;
pub(crate) mod proc;
pub(crate) mod table;
pub(crate) mod workspace;
pub(crate) mod world;

#[cfg(test)]
pub(crate) use proc::Markers;
pub(crate) use proc::{Ancestor, Observed};
pub(crate) use world::World;
