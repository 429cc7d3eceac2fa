//! Acting on the verdicts: a stop becomes one of our stop tickets (the shutdown line on the broker's socket, bounded
//! to 750 ms → SIGTERM to its group → grace → SIGKILL), carrying the plugin's files to clean once the stopper has
//! confirmed the exit; a dead record is cleaned at once. A file is removed only while it still names that broker:
//! `broker.json` only if it still names the pid, and pid file, socket and log only inside the broker's session dir.

use std::collections::HashSet;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::decide::{Occasion, Verdict};
use super::observe::{Broker, BrokerFile, World, read_small};
use super::{ADAPTER, SHUTDOWN_MESSAGE, action};
use crate::act::stopper;
use crate::adapters::AdapterReport;
use crate::model::record::{Shutdown, StopTicket};
use crate::store::Store;
use crate::store::events::{Event, EventLog, Reason};

/// The plugin makes each broker's session dir with `mkdtemp("<tmpdir>/cxc-")`.
const SESSION_DIR_PREFIX: &str = "cxc-";

/// Where a stop ticket of ours keeps the plugin's files to clean.
pub(crate) const TICKET_KEY: &str = "codex_plugin";

/// The plugin's files of one broker.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Cleanup {
    pub broker_json: Option<PathBuf>,
    pub pid: i32,
    pub pid_file: Option<PathBuf>,
    pub socket: Option<PathBuf>,
    pub log_file: Option<PathBuf>,
    pub session_dir: Option<PathBuf>,
}

/// The stop ticket of a verified broker: its identity as observed, its group when it leads one, the shutdown line
/// as the graceful step, and its files.
pub(crate) fn ticket(broker: &Broker, reason: Reason, session: Option<&str>) -> Option<StopTicket> {
    let seen = broker.process.as_ref()?;
    let pgid = (seen.stat.pgid == seen.identity.pid).then_some(seen.identity.pid);
    let mut ticket = stopper::new_ticket(
        seen.identity.clone(),
        pgid,
        reason.as_str(),
        stopper::DEFAULT_GRACE_MS,
        ADAPTER.to_owned(),
    );
    let files = broker.files();
    ticket.session = session.map(str::to_owned);
    ticket.workspace = Some(broker.workspace());
    ticket.name = Some(ADAPTER.to_owned());
    ticket.shutdown = files.socket.as_ref().map(|socket| Shutdown::Socket {
        socket: socket.to_string_lossy().into_owned(),
        message: SHUTDOWN_MESSAGE.to_owned(),
    });
    ticket.extra.insert(
        TICKET_KEY.to_owned(),
        serde_json::to_value(&files).unwrap_or_default(),
    );
    Some(ticket)
}

/// Applies one verdict (describes it only, in a dry run), adding to `report`.
pub(crate) fn apply(
    store: &Store,
    broker: &Broker,
    verdict: &Verdict,
    occasion: &Occasion<'_>,
    world: &World,
    dry_run: bool,
    report: &mut AdapterReport,
) {
    let target = format!("{ADAPTER} {}", broker.workspace());
    let pid = broker.pid();
    let done = |verb: &str, past: &str| {
        if dry_run {
            format!("would {verb}")
        } else {
            past.to_owned()
        }
    };
    let event = |action: &str, result: &str| {
        let mut event = Event::new(action, result)
            .session(occasion.ending())
            .slot(&broker.workspace(), ADAPTER);
        event.pid = pid;
        event
    };
    match verdict {
        Verdict::Leave => {}
        Verdict::Stop(reason) => {
            let Some(ticket) = ticket(broker, *reason, occasion.ending()) else {
                return;
            };
            if store.tickets.path_of(&ticket).exists() {
                // Already being stopped: whoever runs the pending tickets drives it.
                return;
            }
            if !dry_run && let Err(err) = store.tickets.file(&ticket) {
                report.problems.push(format!("{target}: {err:#}"));
                return;
            }
            report.actions.push(action(
                "stop",
                Some(*reason),
                target,
                pid,
                done("stop", "stopping"),
            ));
            report.tickets.push(ticket);
        }
        Verdict::Keep(why) => {
            if !dry_run {
                store.log.record(&event("keep", "kept").detail(why.clone()));
            }
            report
                .actions
                .push(action("keep", None, target, pid, format!("kept: {why}")));
        }
        Verdict::Refuse(why) => {
            if !dry_run {
                store
                    .log
                    .record(&event("refuse", "refused").detail(why.clone()));
            }
            report.actions.push(action(
                "refuse",
                None,
                target,
                pid,
                format!("refused: {why}"),
            ));
        }
        Verdict::Clean(reason) => {
            let result = if dry_run {
                done("clean", "")
            } else {
                let removed = clean(&broker.files(), &world.live_sockets);
                store.log.record(
                    &event("clean", "cleaned")
                        .reason(reason)
                        .detail(describe(&removed)),
                );
                format!("cleaned: {}", describe(&removed))
            };
            report
                .actions
                .push(action("clean", Some(*reason), target, pid, result));
        }
    }
}

fn describe(removed: &[PathBuf]) -> String {
    if removed.is_empty() {
        "nothing left to remove".to_owned()
    } else {
        let names: Vec<String> = removed.iter().map(|p| p.display().to_string()).collect();
        format!("removed {}", names.join(", "))
    }
}

/// The stopper confirmed the exit of a ticket's process: clean the plugin's files it names.
pub(crate) fn after_stop(ticket: &StopTicket, log: &EventLog) {
    let Some(files) = ticket
        .extra
        .get(TICKET_KEY)
        .and_then(|value| serde_json::from_value::<Cleanup>(value.clone()).ok())
    else {
        return;
    };
    if files.pid != ticket.identity.pid {
        return;
    }
    let removed = clean(&files, &HashSet::new());
    let mut event = Event::new("clean", "cleaned")
        .reason(&ticket.reason)
        .session(ticket.session.as_deref())
        .pid(ticket.identity.pid)
        .detail(describe(&removed));
    event.workspace.clone_from(&ticket.workspace);
    event.name = Some(ADAPTER.to_owned());
    log.record(&event);
}

/// Removes the plugin's files of a broker that is gone; returns what was removed. `broker.json` goes only while it
/// still names `files.pid`; `broker.pid` (naming that pid), `broker.sock` (unless a live broker listens on it) and
/// `broker.log` only when they are ours, of their kind and directly in a `cxc-…` session dir of ours; the session dir
/// only when it is then empty.
pub(crate) fn clean<S: std::hash::BuildHasher>(
    files: &Cleanup,
    live_sockets: &HashSet<PathBuf, S>,
) -> Vec<PathBuf> {
    let uid = rustix::process::getuid().as_raw();
    let mut removed = Vec::new();
    if let Some(path) = &files.broker_json
        && let Some((bytes, _)) = read_small(path, uid)
        && BrokerFile::parse(path.clone(), &bytes).and_then(|file| file.pid) == Some(files.pid)
        && std::fs::remove_file(path).is_ok()
    {
        removed.push(path.clone());
    }
    let Some(dir) = files.session_dir.as_ref().filter(|dir| {
        dir.file_name()
            .is_some_and(|name| name.to_string_lossy().starts_with(SESSION_DIR_PREFIX))
            && super::observe::is_own_dir(dir, uid)
    }) else {
        return removed;
    };
    // Only the plugin's own names, directly in its session dir.
    let own = |name: &'static str| move |path: &&PathBuf| path.as_path() == dir.join(name);
    if let Some(path) = files.pid_file.as_ref().filter(own("broker.pid"))
        && read_small(path, uid).is_some_and(|(bytes, _)| {
            let text = String::from_utf8_lossy(&bytes);
            text.trim().is_empty() || text.trim() == files.pid.to_string()
        })
        && std::fs::remove_file(path).is_ok()
    {
        removed.push(path.clone());
    }
    if let Some(path) = files.socket.as_ref().filter(own("broker.sock"))
        && !live_sockets.contains(path)
        && is_own(path, uid, |meta| meta.file_type().is_socket())
        && std::fs::remove_file(path).is_ok()
    {
        removed.push(path.clone());
    }
    if let Some(path) = files.log_file.as_ref().filter(own("broker.log"))
        && is_own(path, uid, std::fs::Metadata::is_file)
        && std::fs::remove_file(path).is_ok()
    {
        removed.push(path.clone());
    }
    if std::fs::remove_dir(dir).is_ok() {
        removed.push(dir.clone());
    }
    removed
}

fn is_own(path: &Path, uid: u32, kind: impl Fn(&std::fs::Metadata) -> bool) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|meta| meta.uid() == uid && kind(&meta))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(dir: &Path, pid: i32) -> Cleanup {
        let session_dir = dir.join("cxc-abc");
        std::fs::create_dir_all(&session_dir).unwrap();
        let broker_json = dir.join("broker.json");
        std::fs::write(
            &broker_json,
            format!(
                r#"{{"endpoint":"unix:{0}/broker.sock","pid":{pid}}}"#,
                session_dir.display()
            ),
        )
        .unwrap();
        std::fs::write(session_dir.join("broker.pid"), format!("{pid}\n")).unwrap();
        std::fs::write(session_dir.join("broker.log"), "log\n").unwrap();
        let socket = session_dir.join("broker.sock");
        let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        drop(listener);
        Cleanup {
            broker_json: Some(broker_json),
            pid,
            pid_file: Some(session_dir.join("broker.pid")),
            socket: Some(socket),
            log_file: Some(session_dir.join("broker.log")),
            session_dir: Some(session_dir),
        }
    }

    #[test]
    fn cleans_every_file_that_still_names_the_broker() {
        let dir = tempfile::tempdir().unwrap();
        let files = layout(dir.path(), 4242);
        let removed = clean(&files, &HashSet::new());
        assert_eq!(removed.len(), 5, "{removed:?}");
        assert!(!files.session_dir.unwrap().exists());
        assert!(!files.broker_json.unwrap().exists());
    }

    #[test]
    fn a_rewritten_broker_json_and_a_live_socket_stay() {
        let dir = tempfile::tempdir().unwrap();
        let files = layout(dir.path(), 4242);
        let json = files.broker_json.clone().unwrap();
        std::fs::write(&json, r#"{"endpoint":"unix:/elsewhere","pid":777}"#).unwrap();
        let live: HashSet<PathBuf> = files.socket.iter().cloned().collect();
        let removed = clean(&files, &live);
        assert!(json.exists(), "names another broker now");
        assert!(
            files.socket.as_ref().unwrap().exists(),
            "a live broker listens there"
        );
        assert!(files.session_dir.as_ref().unwrap().exists(), "not empty");
        assert_eq!(removed.len(), 2, "pid file and log: {removed:?}");
    }

    #[test]
    fn only_the_plugins_own_names_in_a_plugin_session_dir_go() {
        let dir = tempfile::tempdir().unwrap();
        let mut files = layout(dir.path(), 4242);
        let session_dir = files.session_dir.clone().unwrap();
        let renamed = session_dir.join("notes.txt");
        std::fs::write(&renamed, "mine").unwrap();
        files.log_file = Some(renamed.clone());
        clean(&files, &HashSet::new());
        assert!(renamed.exists(), "not the plugin's log name");
        // A session dir that is not the plugin's (a broker.json naming a home directory, say): nothing in it goes.
        let home = dir.path().join("home");
        std::fs::create_dir_all(&home).unwrap();
        std::fs::write(home.join("broker.log"), "precious").unwrap();
        let stranger = Cleanup {
            broker_json: None,
            pid: 4242,
            pid_file: None,
            socket: None,
            log_file: Some(home.join("broker.log")),
            session_dir: Some(home.clone()),
        };
        assert!(clean(&stranger, &HashSet::new()).is_empty());
        assert!(home.join("broker.log").exists());
    }

    #[test]
    fn files_outside_the_session_dir_or_not_ours_in_kind_stay() {
        let dir = tempfile::tempdir().unwrap();
        let mut files = layout(dir.path(), 4242);
        let outside = dir.path().join("precious.log");
        std::fs::write(&outside, "keep").unwrap();
        files.log_file = Some(outside.clone());
        let pid_file = files.pid_file.clone().unwrap();
        std::fs::write(&pid_file, "999\n").unwrap();
        let fake_socket = files.socket.clone().unwrap();
        std::fs::remove_file(&fake_socket).unwrap();
        std::fs::write(&fake_socket, "a regular file").unwrap();
        clean(&files, &HashSet::new());
        assert!(outside.exists());
        assert!(pid_file.exists(), "names another pid");
        assert!(fake_socket.exists(), "not a socket");
    }
}
