//! A plan: the changes one decision asks for, in order, as data. `act::executor::apply` carries them out one by
//! one, logging exactly one event for each (or, in a dry run, applies nothing and hands the same changes back, so
//! `--dry-run` lists what a real run does). Stop tickets are filed, and events logged, nowhere else.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::model::event::Event;
use crate::model::record::StopTicket;

/// Where a stop ticket keeps the files to clean once its process is confirmed gone (the key the Codex-plugin
/// adapter, the first to ask for it, has always written: tickets filed by earlier versions keep their meaning).
pub(crate) const CLEANUP_KEY: &str = "codex_plugin";

/// A tool's files of one broker, to remove once that broker is gone: a file is removed only while it still names
/// the broker (`act::clean` says exactly when).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Cleanup {
    pub broker_json: Option<PathBuf>,
    pub pid: i32,
    pub pid_file: Option<PathBuf>,
    pub socket: Option<PathBuf>,
    pub log_file: Option<PathBuf>,
    pub session_dir: Option<PathBuf>,
}

impl Cleanup {
    /// What `ticket` asks to clean after its process exits, if anything (only for the process it names).
    pub(crate) fn after(ticket: &StopTicket) -> Option<Cleanup> {
        let files: Cleanup = serde_json::from_value(ticket.extra.get(CLEANUP_KEY)?.clone()).ok()?;
        (files.pid == ticket.identity.pid).then_some(files)
    }

    /// Puts `self` into `ticket`, to be cleaned once the stopper has confirmed the exit.
    pub(crate) fn attach_to(&self, ticket: &mut StopTicket) {
        ticket.extra.insert(
            CLEANUP_KEY.to_owned(),
            serde_json::to_value(self).unwrap_or_default(),
        );
    }
}

/// One change of a plan.
#[derive(Clone, Debug, PartialEq)]
#[allow(clippy::large_enum_variant)]
pub(crate) enum Change {
    /// A process to stop (a leftover, a resume orphan, an unrecorded broker, a duplicate writer, an adapter's
    /// verdict; the ticket carries its typed reason): the ticket is filed, and a stopper drives it.
    Stop(StopTicket),
    /// A finding reported and left as it is (a leftover reported or spared, an adapter's keep or refusal, duplicate
    /// writers): its event.
    Report(Event),
    /// A tool's files to remove (its broker is gone or its exit confirmed); the event's detail says what went.
    Clean {
        files: Cleanup,
        /// Sockets a live broker listens on: never removed.
        live_sockets: Vec<PathBuf>,
        event: Event,
    },
    /// A command's own note: a session started or ended, a keep mark, a sweep's litter, a broker registered or
    /// spawned or refused, a sentinel's state, a record moved aside.
    Note(Event),
}

impl Change {
    /// The event a stop ticket's clean-up logs: the ticket's reason, session, process and slot.
    pub(crate) fn clean_after_exit(ticket: &StopTicket) -> Option<Change> {
        let files = Cleanup::after(ticket)?;
        let mut event = Event::planned("clean", "cleaned")
            .reason(&ticket.reason)
            .session(ticket.session.as_deref())
            .pid(ticket.identity.pid);
        event.workspace.clone_from(&ticket.workspace);
        event.name.clone_from(&ticket.name);
        Some(Change::Clean {
            files,
            live_sockets: Vec::new(),
            event,
        })
    }
}

/// The changes of one decision, in the order they are applied.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Plan(pub Vec<Change>);

impl Plan {
    pub(crate) fn of(change: Change) -> Plan {
        Plan(vec![change])
    }

    pub(crate) fn push(&mut self, change: Change) {
        self.0.push(change);
    }
}

impl Extend<Change> for Plan {
    fn extend<I: IntoIterator<Item = Change>>(&mut self, changes: I) {
        self.0.extend(changes);
    }
}

impl IntoIterator for Plan {
    type Item = Change;
    type IntoIter = std::vec::IntoIter<Change>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::record::Identity;

    fn ticket(pid: i32) -> StopTicket {
        let identity = Identity {
            boot_id: "boot".into(),
            pid_ns: None,
            pid,
            start_ticks: 7,
            uid: 1000,
        };
        let mut ticket =
            StopTicket::new(identity, None, "session_end", 100, "x".into(), ("t", "h"));
        ticket.session = Some("s-1".into());
        ticket.name = Some("codex-plugin".into());
        ticket
    }

    #[test]
    fn a_ticket_carries_what_to_clean_after_its_exit_and_only_for_its_own_process() {
        assert_eq!(
            Change::clean_after_exit(&ticket(10)),
            None,
            "nothing to clean"
        );
        let mut with_files = ticket(10);
        let files = Cleanup {
            pid: 10,
            log_file: Some("/tmp/cxc-1/broker.log".into()),
            ..Cleanup::default()
        };
        files.attach_to(&mut with_files);
        let Some(Change::Clean {
            files: found,
            event,
            ..
        }) = Change::clean_after_exit(&with_files)
        else {
            panic!("a clean-up");
        };
        assert_eq!(found, files);
        assert_eq!(
            (event.action.as_str(), event.result.as_str()),
            ("clean", "cleaned")
        );
        assert_eq!(event.reason.as_deref(), Some("session_end"));
        assert_eq!(event.name.as_deref(), Some("codex-plugin"));
        assert_eq!(event.pid, Some(10));
        let mut other = ticket(11);
        files.attach_to(&mut other);
        assert_eq!(
            Change::clean_after_exit(&other),
            None,
            "files of another pid"
        );
    }
}
