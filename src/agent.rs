//! The coding agents we serve, and how each one is recognised from a hook payload and its environment.

use std::fmt;

/// A coding agent whose hooks can call us.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Agent {
    Claude,
    Gemini,
    Qwen,
    Codex,
}

impl Agent {
    pub const ALL: [Agent; 4] = [Agent::Claude, Agent::Gemini, Agent::Qwen, Agent::Codex];

    pub fn as_str(self) -> &'static str {
        match self {
            Agent::Claude => "claude",
            Agent::Gemini => "gemini",
            Agent::Qwen => "qwen",
            Agent::Codex => "codex",
        }
    }
}

impl fmt::Display for Agent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
