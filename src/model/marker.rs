//! The words by which processes are recognised from what they say about themselves: the variables a broker
//! carries (so that a sweep can find it when its record is lost: which slot, of which state root, and the lineage
//! token every process of its tree inherits) and the flags of an agent's own internal workers.

pub(crate) const BROKER_MARKER: &str = "SESSION_REAPER_BROKER";
pub(crate) const STATE_ROOT_MARKER: &str = "SESSION_REAPER_STATE_ROOT";
pub(crate) const LINEAGE_MARKER: &str = "SESSION_REAPER_LINEAGE";

/// Claude Code's own workers (`--bg-pty-host`, `--bg-spare`): part of the agent, never a leftover or an orphan.
pub(crate) const AGENT_WORKER_FLAGS: &[&str] = &["--bg-pty-host", "--bg-spare"];
