//! What a session's leftovers are decided by, as data: the policy (`--leftovers`), the keep mark, and the facts
//! `SessionStart` records in the session record for discovery (DESIGN "Leftovers").

use serde::{Deserialize, Serialize};

use crate::agents::Agent;
use crate::model::record::{Identity, SessionRecord};

/// `SESSION_REAPER_KEEP=1` in a process's environment keeps it.
pub(crate) const KEEP_VARIABLE: &str = "SESSION_REAPER_KEEP";

/// Where `keep --pid` marks live in the state root: one file per kept process identity.
pub(crate) const KEPT: &str = "kept";

/// True for an agent (as a record names it) that names its session to the processes it starts (the agents table
/// says); for the others the agent's descendants and its process group stand in.
pub(crate) fn names_sessions(agent: &str) -> bool {
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
pub(crate) struct SessionFacts {
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
    /// The session's earlier agent processes (a crash, then a resume by another process): each keeps its own facts,
    /// and the leftovers of every gone one are stopped (DESIGN "Belonging": every agent a session had counts).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub earlier_agents: Vec<EarlierAgent>,
}

/// An agent process a session had before its current one, with what its hooks recorded for discovery.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct EarlierAgent {
    pub identity: Identity,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_pgid: Option<i32>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub descendants: Vec<Identity>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub done_at: Option<String>,
}

/// How many earlier agents a record remembers at most (the oldest go first).
pub(crate) const MAX_EARLIER_AGENTS: usize = 16;

fn yes() -> bool {
    true
}

const FACTS_KEY: &str = "leftovers";

/// True when a `SessionStart` (or an ending that stood in for it) recorded the session's discovery facts.
pub(crate) fn has_facts(record: &SessionRecord) -> bool {
    record.extra.contains_key(FACTS_KEY)
}

impl SessionFacts {
    pub(crate) fn of(record: &SessionRecord) -> Self {
        record
            .extra
            .get(FACTS_KEY)
            .and_then(|value| serde_json::from_value(value.clone()).ok())
            .unwrap_or_else(|| SessionFacts {
                sentinel: true,
                ..SessionFacts::default()
            })
    }

    /// A session's agent process changed from `previous` to another (a resume by another process): the previous
    /// one is remembered with its facts, never erased; the current facts start afresh.
    pub(crate) fn agent_replaced(&mut self, previous: Identity) {
        self.earlier_agents
            .retain(|earlier| !earlier.identity.is_same_process(&previous));
        self.earlier_agents.push(EarlierAgent {
            identity: previous,
            agent_pgid: self.agent_pgid.take(),
            descendants: std::mem::take(&mut self.descendants),
            done_at: self.done_at.take(),
        });
        if self.earlier_agents.len() > MAX_EARLIER_AGENTS {
            self.earlier_agents.remove(0);
        }
    }

    /// Every agent process of the session (the current one first, `current`) with the facts recorded for it.
    pub(crate) fn per_agent(&self, current: Option<&Identity>) -> Vec<(Identity, SessionFacts)> {
        let mut agents: Vec<(Identity, SessionFacts)> = current
            .map(|agent| {
                let mut facts = self.clone();
                facts.earlier_agents.clear();
                (agent.clone(), facts)
            })
            .into_iter()
            .collect();
        for earlier in &self.earlier_agents {
            if current.is_some_and(|agent| agent.is_same_process(&earlier.identity)) {
                continue;
            }
            agents.push((
                earlier.identity.clone(),
                SessionFacts {
                    policy: self.policy,
                    sentinel: self.sentinel,
                    agent_pgid: earlier.agent_pgid,
                    descendants: earlier.descendants.clone(),
                    done_at: earlier.done_at.clone(),
                    earlier_agents: Vec::new(),
                },
            ));
        }
        agents
    }

    /// Marks the leftovers of `agent` (current or earlier) dealt with at `now`.
    pub(crate) fn mark_done(&mut self, agent: &Identity, current: Option<&Identity>, now: &str) {
        if current.is_some_and(|current| current.is_same_process(agent)) {
            self.done_at = Some(now.to_owned());
        }
        for earlier in &mut self.earlier_agents {
            if earlier.identity.is_same_process(agent) {
                earlier.done_at = Some(now.to_owned());
            }
        }
    }

    pub(crate) fn store_in(&self, record: &mut SessionRecord) {
        if let Ok(value) = serde_json::to_value(self) {
            record.extra.insert(FACTS_KEY.to_owned(), value);
        }
    }
}

/// True when a `SessionEnd` of this agent reason leaves the agent running on (a new session follows).
pub(crate) fn agent_continues(reason: Option<&str>) -> bool {
    matches!(reason, Some("clear" | "compact" | "resume"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(pid: i32) -> Identity {
        Identity {
            boot_id: "b".into(),
            pid_ns: None,
            pid,
            start_ticks: 7,
            uid: 0,
        }
    }

    /// A resume by another process adds an agent, never erases one; each keeps its facts and its own done mark.
    #[test]
    fn every_agent_a_session_had_counts() {
        let mut facts = SessionFacts {
            agent_pgid: Some(10),
            descendants: vec![identity(11)],
            ..SessionFacts::default()
        };
        facts.agent_replaced(identity(10));
        assert_eq!(facts.agent_pgid, None, "the new agent's facts start afresh");
        let current = identity(20);
        let agents = facts.per_agent(Some(&current));
        assert_eq!(agents.len(), 2);
        assert_eq!(agents[0].0, current);
        assert_eq!(agents[1].0, identity(10));
        assert_eq!(agents[1].1.agent_pgid, Some(10));
        assert_eq!(agents[1].1.descendants, [identity(11)]);
        facts.mark_done(&identity(10), Some(&current), "t");
        let agents = facts.per_agent(Some(&current));
        assert_eq!(agents[1].1.done_at.as_deref(), Some("t"));
        assert_eq!(agents[0].1.done_at, None, "the current agent is not done");
        // The same agent replaced twice is remembered once; the list is bounded.
        facts.agent_replaced(identity(10));
        for pid in 100..100 + i32::try_from(MAX_EARLIER_AGENTS).unwrap() {
            facts.agent_replaced(identity(pid));
        }
        assert_eq!(facts.earlier_agents.len(), MAX_EARLIER_AGENTS);
    }
}
