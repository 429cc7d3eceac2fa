//! Containment as data (DESIGN "Containment"): the switch and the cgroup root a run was given, and what a session
//! record keeps of it — the cgroup that holds its agent, or why the variable and process-group rules stand in.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::model::record::SessionRecord;

/// `SESSION_REAPER_CONTAINMENT=off` turns containment off like `--containment off`.
pub(crate) const SWITCH_VARIABLE: &str = "SESSION_REAPER_CONTAINMENT";
/// `SESSION_REAPER_CGROUP_ROOT=DIR`: the cgroup (a directory under the v2 mount) to create ours in, instead of a
/// `session-reaper` cgroup below the agent's own. Tests point it at a parent they made and remove.
pub(crate) const ROOT_VARIABLE: &str = "SESSION_REAPER_CGROUP_ROOT";

/// What a run was told about containment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Setting {
    pub off: bool,
    pub root: Option<PathBuf>,
}

/// How a session's processes are known.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Mode {
    /// A cgroup of its own holds the agent and everything it starts.
    Cgroup,
    /// The session variables, the agent's process group and the descendants its hooks saw (DESIGN "Leftovers").
    #[default]
    Lineage,
}

impl Mode {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Mode::Cgroup => "cgroup",
            Mode::Lineage => "lineage",
        }
    }
}

/// What a session record keeps under `"containment"`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SessionContainment {
    pub mode: Mode,
    /// The cgroup directory that holds the agent (mode `cgroup`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<PathBuf>,
    /// Why the session is not contained (mode `lineage`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub why: Option<String>,
}

const KEY: &str = "containment";

impl SessionContainment {
    /// What `record` keeps; `None` for a session no `SessionStart` of this version has seen.
    pub(crate) fn of(record: &SessionRecord) -> Option<Self> {
        record
            .extra
            .get(KEY)
            .and_then(|value| serde_json::from_value(value.clone()).ok())
    }

    pub(crate) fn store_in(&self, record: &mut SessionRecord) {
        if let Ok(value) = serde_json::to_value(self) {
            record.extra.insert(KEY.to_owned(), value);
        }
    }

    /// The cgroup of a contained session.
    pub(crate) fn cgroup_of(record: &SessionRecord) -> Option<PathBuf> {
        Self::of(record)
            .filter(|containment| containment.mode == Mode::Cgroup)
            .and_then(|containment| containment.cgroup)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_in_the_record_beside_unknown_fields() {
        let mut record = SessionRecord::new("s", "h".into(), "2026-01-01T00:00:00Z");
        assert_eq!(SessionContainment::of(&record), None);
        let contained = SessionContainment {
            mode: Mode::Cgroup,
            cgroup: Some(PathBuf::from("/cg/session-reaper/agent-1-2")),
            why: None,
        };
        contained.store_in(&mut record);
        let text = serde_json::to_string(&record).unwrap();
        assert!(
            text.contains(
                r#""containment":{"mode":"cgroup","cgroup":"/cg/session-reaper/agent-1-2"}"#
            ),
            "{text}"
        );
        let back: SessionRecord = serde_json::from_str(&text).unwrap();
        assert_eq!(
            SessionContainment::cgroup_of(&back),
            Some(PathBuf::from("/cg/session-reaper/agent-1-2"))
        );
    }
}
