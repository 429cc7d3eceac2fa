//! Why something was stopped, pruned or ended: the `reason` of every event and stop ticket (DESIGN invariant 7).

use serde::{Deserialize, Serialize};

/// Why something was stopped, pruned or ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Reason {
    SessionEnd,
    OwnersGone,
    IdleTimeout,
    BrokerGone,
    ResumeOrphan,
    Manual,
    Shutdown,
    Restart,
    Unrecorded,
    /// The sentinel (or the finisher, or a sweep) saw the agent process exit.
    AgentGone,
    /// A process a session's tools started and never registered, stopped once its agent was gone.
    Leftover,
}

impl Reason {
    pub(crate) const ALL: [Reason; 11] = [
        Reason::SessionEnd,
        Reason::OwnersGone,
        Reason::IdleTimeout,
        Reason::BrokerGone,
        Reason::ResumeOrphan,
        Reason::Manual,
        Reason::Shutdown,
        Reason::Restart,
        Reason::Unrecorded,
        Reason::AgentGone,
        Reason::Leftover,
    ];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Reason::SessionEnd => "session_end",
            Reason::OwnersGone => "owners_gone",
            Reason::IdleTimeout => "idle_timeout",
            Reason::BrokerGone => "broker_gone",
            Reason::ResumeOrphan => "resume_orphan",
            Reason::Manual => "manual",
            Reason::Shutdown => "shutdown",
            Reason::Restart => "restart",
            Reason::Unrecorded => "unrecorded",
            Reason::AgentGone => "agent_gone",
            Reason::Leftover => "leftover",
        }
    }

    pub(crate) fn parse(text: &str) -> Option<Reason> {
        Reason::ALL
            .into_iter()
            .find(|reason| reason.as_str() == text)
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
