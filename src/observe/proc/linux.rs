//! The Linux process backend: reads `/proc` directly.

use std::fs;
use std::io;
use std::sync::{Arc, OnceLock};

use super::{ProcStat, split_nul};
use crate::model::deadline::Deadline;
use crate::observe::world::{self, ProcFile};

/// `/proc/sys/kernel/random/boot_id`, read once.
pub(crate) fn boot_id() -> &'static str {
    static BOOT_ID: OnceLock<String> = OnceLock::new();
    BOOT_ID.get_or_init(|| {
        fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .map(|id| id.trim().to_owned())
            .unwrap_or_default()
    })
}

/// Parses `/proc/<pid>/stat`. The command name may contain spaces and parentheses, so fields are read after the
/// LAST `)`.
pub(crate) fn parse_stat(pid: i32, text: &str) -> Option<ProcStat> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text.get(open + 1..close)?.to_owned();
    let fields: Vec<&str> = text.get(close + 1..)?.split_whitespace().collect();
    // fields[0] is field 3 (state); field N is fields[N - 3].
    Some(ProcStat {
        pid,
        comm,
        state: fields.first()?.chars().next()?,
        ppid: fields.get(1)?.parse().ok()?,
        pgid: fields.get(2)?.parse().ok()?,
        sid: fields.get(3)?.parse().ok()?,
        start_ticks: fields.get(19)?.parse().ok()?,
    })
}

pub(crate) fn stat(pid: i32) -> io::Result<ProcStat> {
    if pid <= 0 {
        return Err(io::Error::from(io::ErrorKind::NotFound));
    }
    let stat = super::read_proc_text(pid, "stat").and_then(|text| {
        parse_stat(pid, &text)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "unparsable /proc stat"))
    });
    // What was remembered of `pid` is confirmed by this look, or forgotten (another process, or none).
    world::seen(pid, stat.as_ref().ok().map(|stat| stat.start_ticks));
    stat
}

/// `file` of `pid`, whose start ticks a `stat` before this call showed: once per process while a `World` is entered
/// (`observe::world`).
pub(crate) fn file_of(pid: i32, start_ticks: u64, file: ProcFile) -> io::Result<Arc<[u8]>> {
    world::file(
        pid,
        start_ticks,
        file,
        || super::read_proc_file(pid, file.name()),
        || stat(pid).ok().map(|stat| stat.start_ticks),
    )
}

/// `file` of `pid` as it is now: the identity is read first when a `World` remembers (its key).
fn file_now(pid: i32, file: ProcFile) -> io::Result<Arc<[u8]>> {
    if !world::remembering() {
        return super::read_proc_file(pid, file.name()).map(Arc::from);
    }
    file_of(pid, stat(pid)?.start_ticks, file)
}

/// The thread-group id (the process a thread belongs to) and the real uid of `pid`, from `/proc/<pid>/status`.
/// `/proc/<tid>` answers for a thread too: its `Tgid` is then another pid.
pub(crate) fn tgid_and_uid(pid: i32) -> io::Result<(i32, u32)> {
    let text = super::read_proc_text(pid, "status")?;
    let field = |key: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix(key))
            .and_then(|rest| rest.split_whitespace().next())
            .map(str::to_owned)
    };
    let tgid = field("Tgid:").and_then(|tgid| tgid.parse().ok());
    let uid = field("Uid:").and_then(|uid| uid.parse().ok());
    tgid.zip(uid)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no Tgid/Uid in /proc status"))
}

/// The inode of this process's pid namespace (`/proc/self/ns/pid`), read once; `None` where it cannot be read.
pub(crate) fn own_pid_ns() -> Option<u64> {
    static PID_NS: OnceLock<Option<u64>> = OnceLock::new();
    *PID_NS.get_or_init(|| {
        use std::os::unix::fs::MetadataExt;
        fs::metadata("/proc/self/ns/pid")
            .ok()
            .map(|meta| meta.ino())
    })
}

/// The resident memory of a process in KiB (`VmRSS:` of `/proc/<pid>/status`).
pub(crate) fn rss_kib(pid: i32) -> Option<u64> {
    super::read_proc_text(pid, "status")
        .ok()?
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
}

/// The environment of a process as it was at exec (`NAME=value` entries separated by NUL).
pub(crate) fn environ(pid: i32) -> io::Result<Arc<[u8]>> {
    file_now(pid, ProcFile::Environ)
}

/// The argv of a process (lossy UTF-8); empty for kernel threads.
pub(crate) fn cmdline(pid: i32) -> io::Result<Vec<String>> {
    file_now(pid, ProcFile::Cmdline).map(|bytes| split_nul(&bytes))
}

/// The argv of the process `pid` whose start ticks a `stat` before this call showed.
pub(crate) fn cmdline_of(pid: i32, start_ticks: u64) -> io::Result<Vec<String>> {
    file_of(pid, start_ticks, ProcFile::Cmdline).map(|bytes| split_nul(&bytes))
}

/// The value of one environment variable of a process, as it was at exec.
pub(crate) fn environ_var(pid: i32, key: &str) -> io::Result<Option<String>> {
    Ok(super::env_value(&environ(pid)?, key))
}

/// Every pid in `/proc` right now.
pub(crate) fn pids() -> io::Result<Vec<i32>> {
    Ok(fs::read_dir("/proc")?
        .filter_map(Result::ok)
        .filter_map(|entry| {
            entry
                .file_name()
                .to_str()
                .and_then(|name| name.parse().ok())
        })
        .collect())
}

/// One pass over the process table: pid and argv of every process we can read, as far as `deadline` lets it get
/// (checked between entries; a partial scan finds fewer processes to stop, never more).
pub(crate) fn scan_cmdlines(deadline: Deadline) -> Vec<(i32, Vec<String>)> {
    pids()
        .unwrap_or_default()
        .into_iter()
        .take_while(|_| !deadline.expired())
        .filter_map(|pid| {
            // One open a process, no `stat` (the callers pin what matches); remembered for whoever reads it next.
            let read = world::unpinned(pid, ProcFile::Cmdline, || {
                super::read_proc_file(pid, ProcFile::Cmdline.name())
            });
            match read {
                Some(bytes) => bytes.map(|bytes| split_nul(&bytes)),
                None => cmdline(pid),
            }
            .ok()
            .filter(|argv| !argv.is_empty())
            .map(|argv| (pid, argv))
        })
        .collect()
}

/// How long ago a process started, from its start time in clock ticks since boot.
pub(crate) fn age_of(start_ticks: u64) -> std::time::Duration {
    let uptime = std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|text| text.split_whitespace().next()?.parse::<f64>().ok());
    let ticks_per_sec = rustix::param::clock_ticks_per_second();
    match uptime {
        Some(uptime) if ticks_per_sec > 0 => {
            #[allow(clippy::cast_precision_loss)]
            let started = start_ticks as f64 / ticks_per_sec as f64;
            std::time::Duration::try_from_secs_f64((uptime - started).max(0.0))
                .unwrap_or(std::time::Duration::MAX)
        }
        _ => std::time::Duration::MAX,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::record::Identity;

    #[test]
    fn stat_parses_after_the_last_paren() {
        let text =
            "1234 (a) b) (c) S 1 1234 1234 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 98765 1000 100";
        let stat = parse_stat(1234, text).unwrap();
        assert_eq!(stat.comm, "a) b) (c");
        assert_eq!(
            (stat.state, stat.ppid, stat.pgid, stat.sid, stat.start_ticks),
            ('S', 1, 1234, 1234, 98765)
        );
    }

    #[test]
    fn stat_of_self_matches_identity() {
        let me = i32::try_from(std::process::id()).unwrap();
        let id = super::super::identity_of(me).unwrap();
        assert_eq!(id.pid, me);
        assert!(super::super::is_alive(&id));
        let reused = Identity {
            start_ticks: id.start_ticks + 1,
            ..id
        };
        assert!(!super::super::is_alive(&reused));
    }

    #[test]
    fn cmdline_splits_on_nul() {
        assert_eq!(split_nul(b"sleep\x00600\x00"), ["sleep", "600"]);
        assert!(split_nul(b"").is_empty());
    }
}
