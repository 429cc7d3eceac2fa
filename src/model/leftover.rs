//! What a session's leftovers are decided by, as data: the policy (`--leftovers`), the keep mark, and the facts
//! `SessionStart` records in the session record for discovery (DESIGN "Leftovers").

use serde::{Deserialize, Serialize};

use crate::agents::Agent;
use crate::model::record::{Identity, SessionRecord};

/// `SESSION_REAPER_KEEP=1` in a process's environment keeps it.
pub const KEEP_VARIABLE: &str = "SESSION_REAPER_KEEP";

/// Where `keep --pid` marks live in the state root: one file per kept process identity.
pub const KEPT: &str = "kept";

/// True for an agent (as a record names it) that names its session to the processes it starts (the agents table
/// says); for the others the agent's descendants and its process group stand in.
pub fn names_sessions(agent: &str) -> bool {
    Agent::from_name(agent).is_some_and(|agent| agent.spec().names_sessions())
}

/// What to do with a session's leftovers (`--leftovers`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Policy {
    #[default]
    Stop,
    Report,
    Off,
}

impl Policy {
    pub fn as_str(self) -> &'static str {
        match self {
            Policy::Stop => "stop",
            Policy::Report => "report",
            Policy::Off => "off",
        }
    }
}

/// What `SessionStart` records for leftover discovery, kept in the session record under `"leftovers"`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionFacts {
    #[serde(default)]
    pub policy: Policy,
    /// False when the sentinel was turned off for this session's agent.
    #[serde(default = "yes")]
    pub sentinel: bool,
    /// The agent's process group, when the agent leads it (only then does the group stand in after a crash).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_pgid: Option<i32>,
    /// The agent's descendants seen by its hooks (agents that name no session).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub descendants: Vec<Identity>,
    /// When the leftovers were dealt with after the agent was gone; nothing looks again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub done_at: Option<String>,
}

fn yes() -> bool {
    true
}

const FACTS_KEY: &str = "leftovers";

/// True when a `SessionStart` (or an ending that stood in for it) recorded the session's discovery facts.
pub fn has_facts(record: &SessionRecord) -> bool {
    record.extra.contains_key(FACTS_KEY)
}

impl SessionFacts {
    pub fn of(record: &SessionRecord) -> Self {
        record
            .extra
            .get(FACTS_KEY)
            .and_then(|value| serde_json::from_value(value.clone()).ok())
            .unwrap_or_else(|| SessionFacts {
                sentinel: true,
                ..SessionFacts::default()
            })
    }

    pub fn store_in(&self, record: &mut SessionRecord) {
        if let Ok(value) = serde_json::to_value(self) {
            record.extra.insert(FACTS_KEY.to_owned(), value);
        }
    }
}

/// True when a `SessionEnd` of this agent reason leaves the agent running on (a new session follows).
pub fn agent_continues(reason: Option<&str>) -> bool {
    matches!(reason, Some("clear" | "compact" | "resume"))
}
