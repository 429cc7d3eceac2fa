//! One line of the audit log (`events.jsonl`): what was done, to what, why and with what result. A plan's changes
//! carry the event they log; the executor stamps it when it applies the change.

use serde::{Deserialize, Serialize};

use crate::model::clock;
use crate::model::name::SessionId;

/// One line of `events.jsonl`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Event {
    pub ts: String,
    pub action: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<i32>,
    pub result: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// The argv of a stopped process that no record named (a leftover).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub argv: Option<Vec<String>>,
    /// The memory (RSS, KiB) a stopped process held when it was found.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rss_kib: Option<u64>,
}

impl Event {
    pub(crate) fn new(action: &str, result: &str) -> Self {
        Event {
            ts: clock::now_rfc3339(),
            action: action.to_owned(),
            result: result.to_owned(),
            ..Event::default()
        }
    }

    /// An event of a plan: stamped by the executor when it applies the change (a decision reads no clock).
    pub(crate) fn planned(action: &str, result: &str) -> Self {
        Event {
            action: action.to_owned(),
            result: result.to_owned(),
            ..Event::default()
        }
    }

    #[must_use]
    pub(crate) fn reason(mut self, reason: &impl ToString) -> Self {
        self.reason = Some(reason.to_string());
        self
    }

    #[must_use]
    pub(crate) fn session(mut self, session: Option<&str>) -> Self {
        self.session = session.map(str::to_owned);
        self
    }

    #[must_use]
    pub(crate) fn slot(mut self, workspace: &str, name: &str) -> Self {
        self.workspace = Some(workspace.to_owned());
        self.name = Some(name.to_owned());
        self
    }

    #[must_use]
    pub(crate) fn pid(mut self, pid: i32) -> Self {
        self.pid = Some(pid);
        self
    }

    #[must_use]
    pub(crate) fn detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }
}

/// Which events to show.
#[derive(Clone, Debug, Default)]
pub(crate) struct Filter {
    pub session: Option<SessionId>,
    pub since: Option<std::time::Duration>,
    pub action: Option<String>,
}

impl Filter {
    /// Whether `event` is one to show at `now`.
    pub(crate) fn keeps(&self, event: &Event, now: std::time::SystemTime) -> bool {
        self.session
            .as_ref()
            .is_none_or(|id| event.sessions().any(|session| session == id.as_str()))
            && self
                .action
                .as_ref()
                .is_none_or(|action| &event.action == action)
            && self
                .since
                .is_none_or(|since| clock::age(&event.ts, now).is_some_and(|age| age <= since))
    }
}

impl Event {
    /// The sessions the event names (owner events name several, comma-separated).
    pub(crate) fn sessions(&self) -> impl Iterator<Item = &str> {
        self.session
            .as_deref()
            .unwrap_or_default()
            .split(',')
            .filter(|id| !id.is_empty())
    }
}
