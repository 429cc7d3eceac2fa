//! Temp files of the atomic writer (`root::temp_name`) that a writer killed between create and rename left behind
//! in `sessions/`, `stopping/` and the root. A sweep removes them once they are older than any write takes: only
//! names of the writer's pattern, only regular files of ours, never through a symlink.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::store::root::{SESSIONS, STOPPING, StateRoot};

/// How old a temp file must be before it counts as left behind. A write lasts milliseconds (an fsync on a loaded
/// disk, seconds): a temp file this old has no writer any more.
pub(crate) const LEFT_BEHIND_AFTER: Duration = Duration::from_secs(10 * 60);

/// True for a name the atomic writer gives its temp files: `.<name>.tmp-<pid>-<nanos>`, digits only in the last two.
pub(crate) fn is_writer_temp(name: &str) -> bool {
    let digits = |text: &str| !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit());
    let Some((target, tail)) = name
        .strip_prefix('.')
        .and_then(|rest| rest.rsplit_once(".tmp-"))
    else {
        return false;
    };
    let Some((pid, nanos)) = tail.split_once('-') else {
        return false;
    };
    !target.is_empty() && digits(pid) && digits(nanos)
}

/// The writer's temp files left behind (older than `LEFT_BEHIND_AFTER` at `now`) in the root, `sessions/` and
/// `stopping/`. (In a slot directory they are removed under the slot's lock, by the slot's next write or when the
/// sweep removes the emptied slot: reading every slot directory would cost a sweep as much as its records.)
pub(crate) fn left_behind(root: &StateRoot, now: SystemTime) -> Vec<PathBuf> {
    [
        root.path().to_path_buf(),
        root.join(SESSIONS),
        root.join(STOPPING),
    ]
    .into_iter()
    .flat_map(|dir| left_behind_in(&dir, root.uid(), now))
    .collect()
}

fn left_behind_in(dir: &Path, uid: u32, now: SystemTime) -> Vec<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter(|entry| entry.file_name().to_str().is_some_and(is_writer_temp))
        // `DirEntry::metadata` does not follow a symlink: a symlink is not a regular file, and is left alone.
        .filter(|entry| {
            entry.metadata().is_ok_and(|meta| {
                meta.file_type().is_file()
                    && meta.uid() == uid
                    && meta.modified().is_ok_and(|at| {
                        now.duration_since(at)
                            .is_ok_and(|age| age > LEFT_BEHIND_AFTER)
                    })
            })
        })
        .map(|entry| entry.path())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_writers_own_names_are_recognised_and_look_alikes_are_not() {
        assert!(is_writer_temp(&crate::store::root::temp_name("s1.json")));
        assert!(is_writer_temp(&crate::store::root::temp_name(
            "broker.json"
        )));
        for other in [
            "s1.json",
            ".s1.json",
            "s1.json.tmp-1-2",
            ".s1.json.tmp-1",
            ".s1.json.tmp-x-2",
            ".s1.json.tmp-1-2x",
            "..tmp-1-2",
            ".s1.json.tmp-1-2.json",
            "broker.json.corrupt-2026-01-01T000000Z",
        ] {
            assert!(!is_writer_temp(other), "{other}");
        }
    }

    #[test]
    fn only_old_regular_files_of_the_pattern_are_left_behind() {
        let temp = tempfile::tempdir().unwrap();
        let root = StateRoot::open(&temp.path().join("state")).unwrap();
        let sessions = root.join(SESSIONS);
        let old = sessions.join(".a.json.tmp-1-2");
        let fresh = sessions.join(".b.json.tmp-1-2");
        let alike = sessions.join(".c.json.tmp-1-x");
        let link = sessions.join(".d.json.tmp-1-2");
        for path in [&old, &fresh, &alike] {
            std::fs::write(path, b"{").unwrap();
        }
        std::os::unix::fs::symlink(&old, &link).unwrap();
        let later = SystemTime::now() + LEFT_BEHIND_AFTER + Duration::from_secs(60);
        let mut found = left_behind(&root, later);
        found.sort();
        assert_eq!(
            found,
            [old.clone(), fresh.clone()],
            "a symlink is never one"
        );
        assert!(left_behind(&root, SystemTime::now()).is_empty(), "fresh");
    }
}
