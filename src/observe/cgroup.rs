//! Reading cgroup v2 (DESIGN "Containment"): where the v2 hierarchy is mounted (found in `/proc/self/mountinfo`,
//! never assumed), which cgroup a process is in, the processes a cgroup holds, whether anything is left in it, and
//! its memory when the memory controller is on. Nothing here writes; `act::cgroup` does.

use std::path::{Path, PathBuf};

/// The control file that lists (and, written, moves) a cgroup's processes.
pub(crate) const PROCS_FILE: &str = "cgroup.procs";

/// What the mount table says about cgroups.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Mounts {
    /// The first `cgroup2` mount whose root is the hierarchy's root (as seen from our cgroup namespace).
    pub v2: Option<PathBuf>,
    /// At least one cgroup v1 hierarchy is mounted (the hybrid layout, or v1 only).
    pub v1: bool,
}

/// Reads the mount table of this process.
pub(crate) fn mounts() -> Mounts {
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|text| mounts_in(&text))
        .unwrap_or_default()
}

/// The cgroup mounts named in `mountinfo` text (`proc(5)`: fields up to ` - `, then type, source, options).
pub(crate) fn mounts_in(mountinfo: &str) -> Mounts {
    let mut found = Mounts::default();
    for line in mountinfo.lines() {
        let Some((before, after)) = line.split_once(" - ") else {
            continue;
        };
        let fields: Vec<&str> = before.split(' ').collect();
        let (Some(root), Some(point)) = (fields.get(3), fields.get(4)) else {
            continue;
        };
        match after.split(' ').next() {
            Some("cgroup2") if found.v2.is_none() && *root == "/" => {
                found.v2 = Some(PathBuf::from(unescape(point)));
            }
            Some("cgroup") => found.v1 = true,
            _ => {}
        }
    }
    found
}

/// Undoes mountinfo's octal escapes (`\040` for a space, `\011`, `\012`, `\134`).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).and_then(|digits| {
            std::str::from_utf8(digits)
                .ok()
                .and_then(|digits| u8::from_str_radix(digits, 8).ok())
        });
        match (bytes[i], octal) {
            (b'\\', Some(byte)) => {
                out.push(byte);
                i += 4;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The v2 path (`/a/b`, relative to the hierarchy's root) in the text of `/proc/<pid>/cgroup`: its `0::` line.
pub(crate) fn v2_path_in(proc_cgroup: &str) -> Option<&str> {
    proc_cgroup
        .lines()
        .find_map(|line| line.strip_prefix("0::"))
        .filter(|path| path.starts_with('/'))
        .map(|path| path.trim_end_matches(" (deleted)"))
}

/// The v2 cgroup of `pid` as a directory under `mount`; `None` when it is gone or has no v2 cgroup.
pub(crate) fn cgroup_of(mount: &Path, pid: i32) -> Option<PathBuf> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    v2_path_in(&text).map(|path| join(mount, path))
}

/// `mount` joined with a hierarchy path (`/` is the mount itself).
pub(crate) fn join(mount: &Path, path: &str) -> PathBuf {
    let relative = path.trim_start_matches('/');
    if relative.is_empty() {
        mount.to_path_buf()
    } else {
        mount.join(relative)
    }
}

/// The pids a cgroup holds directly (`cgroup.procs`); empty when it is gone.
pub(crate) fn procs(dir: &Path) -> Vec<i32> {
    std::fs::read_to_string(dir.join(PROCS_FILE))
        .map(|text| {
            text.lines()
                .filter_map(|line| line.trim().parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// True while a process is in the cgroup or below it (`cgroup.events`: `populated 1`); `None` when it is gone.
pub(crate) fn populated(dir: &Path) -> Option<bool> {
    let text = std::fs::read_to_string(dir.join("cgroup.events")).ok()?;
    text.lines()
        .find_map(|line| line.strip_prefix("populated "))
        .map(|value| value.trim() == "1")
}

/// The memory the cgroup's processes hold (`memory.current`, bytes), where the memory controller is on for it.
pub(crate) fn memory_current(dir: &Path) -> Option<u64> {
    std::fs::read_to_string(dir.join("memory.current"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// A session's containment as `status` shows it: its mode, and for a contained one the processes its cgroup holds
/// and their memory (`memory.current` where the memory controller is on for it, else their resident memory added up).
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct View {
    pub mode: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub why: Option<String>,
    pub processes: Vec<Held>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
    /// Where `memory_bytes` comes from: `memory.current` or `rss`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_from: Option<&'static str>,
}

/// One process a session's cgroup holds.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Held {
    pub pid: i32,
    pub argv: Vec<String>,
    pub rss_kib: Option<u64>,
}

/// What `record` says of its containment, with its cgroup read now.
pub(crate) fn view_of(record: &crate::model::record::SessionRecord) -> View {
    use crate::model::containment::SessionContainment;
    let Some(containment) = SessionContainment::of(record) else {
        return View {
            mode: "lineage",
            why: Some("started before containment was recorded".into()),
            ..View::default()
        };
    };
    let mut view = View {
        mode: containment.mode.as_str(),
        why: containment.why,
        ..View::default()
    };
    if let Some(dir) = containment.cgroup {
        view.processes = procs(&dir)
            .into_iter()
            .map(|pid| Held {
                pid,
                argv: crate::observe::proc::cmdline(pid).unwrap_or_default(),
                rss_kib: crate::observe::proc::rss_kib(pid),
            })
            .collect();
        let summed = || {
            view.processes
                .iter()
                .map(|held| held.rss_kib.unwrap_or(0) * 1024)
                .sum::<u64>()
        };
        (view.memory_bytes, view.memory_from) = match memory_current(&dir) {
            Some(bytes) => (Some(bytes), Some("memory.current")),
            None => (Some(summed()), Some("rss")),
        };
        view.cgroup = Some(dir);
    }
    view
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hybrid_layouts_v2_mount_is_found_beside_v1() {
        let text = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
        assert_eq!(
            mounts_in(text),
            Mounts {
                v2: Some(PathBuf::from("/sys/fs/cgroup/unified")),
                v1: true
            }
        );
        let v1_only = "32 31 0:29 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n";
        assert_eq!(mounts_in(v1_only), Mounts { v2: None, v1: true });
        let bind = "50 1 0:38 /sub /mnt/cg\\040x rw - cgroup2 cgroup2 rw\n\
                    51 1 0:38 / /mnt/cg\\040y rw - cgroup2 cgroup2 rw\n";
        assert_eq!(
            mounts_in(bind).v2,
            Some(PathBuf::from("/mnt/cg y")),
            "a bind mount of a subtree is not the root; escapes undone"
        );
    }

    #[test]
    fn the_v2_line_of_proc_cgroup() {
        let hybrid = "9:name=systemd:/\n4:memory:/x\n0::/session-reaper/agent-1-2\n";
        assert_eq!(v2_path_in(hybrid), Some("/session-reaper/agent-1-2"));
        assert_eq!(v2_path_in("4:memory:/x\n"), None);
        assert_eq!(
            join(Path::new("/m"), "/"),
            PathBuf::from("/m"),
            "the root is the mount"
        );
        assert_eq!(join(Path::new("/m"), "/a/b"), PathBuf::from("/m/a/b"));
    }
}
