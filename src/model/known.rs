//! What the records of a state root name — every lineage token and pid, live, unreadable, refused or newer-version
//! records alike — and the slots whose record could not be read: what the sweep's `unrecorded` verdict is taken
//! against.

use std::collections::HashSet;
use std::path::Path;

use serde_json::Value;

use crate::model::record::{BrokerRecord, StopTicket};

/// Every lineage token and pid the records of a state root name — live, unreadable, refused (another host's, another
/// namespace's) or newer-version records alike — and the slots whose record could not be read at all.
#[derive(Clone, Debug, Default)]
pub(crate) struct Known {
    pub tokens: HashSet<String>,
    pub pids: HashSet<i32>,
    /// Labels (`<workspace-key>/<name>`) of slots whose record exists but does not read: any marker naming one is
    /// taken as known.
    pub unreadable_slots: HashSet<String>,
}

impl Known {
    /// What a record (of any version) names, read loosely from its JSON.
    pub(crate) fn add_json(&mut self, value: &Value) {
        if let Some(token) = value.get("lineage").and_then(Value::as_str) {
            self.tokens.insert(token.to_owned());
        }
        if let Some(pid) = value
            .pointer("/identity/pid")
            .and_then(Value::as_i64)
            .and_then(|pid| i32::try_from(pid).ok())
        {
            self.pids.insert(pid);
        }
    }

    /// What a record read as this version's names.
    pub(crate) fn add_record(&mut self, record: &BrokerRecord) {
        self.tokens.extend(record.lineage.clone());
        self.pids.insert(record.identity.pid);
    }

    pub(crate) fn add_ticket(&mut self, ticket: &StopTicket) {
        self.tokens.extend(ticket.lineage.clone());
        self.pids.insert(ticket.identity.pid);
        self.pids
            .extend(ticket.members.iter().map(|member| member.pid));
    }

    pub(crate) fn knows_slot_of(&self, marker: &str) -> bool {
        let Some((workspace, name)) = marker.rsplit_once('/') else {
            return false;
        };
        let key = crate::model::workspace::workspace_key(Path::new(workspace));
        self.unreadable_slots.contains(&format!("{key}/{name}"))
    }
}
