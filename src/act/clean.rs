//! Removing a tool's files once its broker is gone (a `Change::Clean` the executor applies): a file goes only while
//! it still names that broker — `broker.json` only if it still names the pid; pid file, socket and log only inside
//! the broker's session dir, under the tool's own names.

use std::collections::HashSet;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::model::plan::Cleanup;

/// The plugin makes each broker's session dir with `mkdtemp("<tmpdir>/cxc-")`.
const SESSION_DIR_PREFIX: &str = "cxc-";
/// The largest file read to see whom it names.
const MAX_FILE: u64 = 1024 * 1024;

/// A small regular file of `uid`, read without following a symlink or blocking on a FIFO.
fn read_small(path: &Path, uid: u32) -> Option<Vec<u8>> {
    crate::store::root::read_regular(path, uid, MAX_FILE)
        .ok()?
        .map(|(bytes, _)| bytes)
}

/// The pid a `broker.json` names.
fn names_pid(bytes: &[u8]) -> Option<i32> {
    let value: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    i32::try_from(value.get("pid")?.as_i64()?).ok()
}

fn is_own_dir(path: &Path, uid: u32) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|meta| meta.is_dir() && meta.uid() == uid)
}

/// What a clean-up removed, for its event.
pub(crate) fn describe(removed: &[PathBuf]) -> String {
    if removed.is_empty() {
        "nothing left to remove".to_owned()
    } else {
        let names: Vec<String> = removed.iter().map(|p| p.display().to_string()).collect();
        format!("removed {}", names.join(", "))
    }
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
        && read_small(path, uid).and_then(|bytes| names_pid(&bytes)) == Some(files.pid)
        && std::fs::remove_file(path).is_ok()
    {
        removed.push(path.clone());
    }
    let Some(dir) = files.session_dir.as_ref().filter(|dir| {
        dir.file_name()
            .is_some_and(|name| name.to_string_lossy().starts_with(SESSION_DIR_PREFIX))
            && is_own_dir(dir, uid)
    }) else {
        return removed;
    };
    // Only the plugin's own names, directly in its session dir.
    let own = |name: &'static str| move |path: &&PathBuf| path.as_path() == dir.join(name);
    if let Some(path) = files.pid_file.as_ref().filter(own("broker.pid"))
        && read_small(path, uid).is_some_and(|bytes| {
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
