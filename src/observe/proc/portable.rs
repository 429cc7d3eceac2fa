//! The portable process backend (macOS and other Unix; on Linux with the `portable-proc` feature) through
//! `sysinfo`. Identity uses the process start time in seconds in place of clock ticks and the boot time in place
//! of a boot id; signalling is verify-then-kill.

use std::io;
use std::sync::OnceLock;

use sysinfo::{Pid, Process, ProcessRefreshKind, ProcessesToUpdate, System, UpdateKind};

use super::ProcStat;
use crate::model::deadline::Deadline;
use crate::observe::world::{self, ProcFile};

fn system_with(pids: Option<&[Pid]>) -> System {
    let mut system = System::new();
    let what = pids.map_or(ProcessesToUpdate::All, ProcessesToUpdate::Some);
    let kind = ProcessRefreshKind::nothing()
        .with_cmd(UpdateKind::Always)
        .with_user(UpdateKind::Always)
        .with_memory();
    system.refresh_processes_specifics(what, true, kind);
    system
}

/// Looks one process up and reads what `read` wants of it.
fn with_process<T>(pid: i32, read: impl FnOnce(&Process) -> T) -> io::Result<T> {
    let key = usize::try_from(pid)
        .map(Pid::from)
        .map_err(|_| io::Error::from(io::ErrorKind::NotFound))?;
    let system = system_with(Some(&[key]));
    system
        .process(key)
        .map(read)
        .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))
}

fn argv_of(process: &Process) -> Vec<String> {
    process
        .cmd()
        .iter()
        .map(|arg| arg.to_string_lossy().into_owned())
        .collect()
}

pub(crate) fn boot_id() -> &'static str {
    static BOOT_ID: OnceLock<String> = OnceLock::new();
    BOOT_ID.get_or_init(|| System::boot_time().to_string())
}

pub(crate) fn stat(pid: i32) -> io::Result<ProcStat> {
    // libc, not rustix: a group or session made outside this pid namespace reads as 0, which rustix's `Pid` cannot
    // hold (it asserts in debug builds).
    // SAFETY: getpgid and getsid read nothing of ours; a bad pid is an error return (-1).
    let (group, session) = unsafe { (libc::getpgid(pid), libc::getsid(pid)) };
    let (group, session) = (group.max(0), session.max(0));
    let stat = with_process(pid, |process| ProcStat {
        pid,
        comm: process.name().to_string_lossy().into_owned(),
        state: if matches!(process.status(), sysinfo::ProcessStatus::Zombie) {
            'Z'
        } else {
            'S'
        },
        ppid: process
            .parent()
            .and_then(|parent| i32::try_from(parent.as_u32()).ok())
            .unwrap_or(0),
        pgid: group,
        sid: session,
        start_ticks: process.start_time(),
    });
    // What was remembered of `pid` is confirmed by this look, or forgotten (another process, or none).
    world::seen(pid, stat.as_ref().ok().map(|stat| stat.start_ticks));
    stat
}

/// Processes only: sysinfo lists no threads under their own pid.
pub(crate) fn tgid_and_uid(pid: i32) -> io::Result<(i32, u32)> {
    real_uid(pid).map(|uid| (pid, uid))
}

/// Pid namespaces are Linux's.
pub(crate) fn own_pid_ns() -> Option<u64> {
    None
}

pub(crate) fn rss_kib(pid: i32) -> Option<u64> {
    with_process(pid, |process| process.memory() / 1024).ok()
}

pub(crate) fn real_uid(pid: i32) -> io::Result<u32> {
    with_process(pid, |process| process.user_id().map(|uid| **uid))?
        .ok_or_else(|| io::Error::from(io::ErrorKind::PermissionDenied))
}

pub(crate) fn cmdline(pid: i32) -> io::Result<Vec<String>> {
    with_process(pid, argv_of)
}

/// The argv of the process `pid` whose start time a `stat` before this call showed (once per process while a
/// `World` is entered, as on Linux).
pub(crate) fn cmdline_of(pid: i32, start_ticks: u64) -> io::Result<Vec<String>> {
    file_of(pid, start_ticks, ProcFile::Cmdline).map(|bytes| super::split_nul(&bytes))
}

/// What `/proc/<pid>/<file>` holds on Linux, as far as sysinfo tells: the argv (NUL-terminated words); no
/// environment (other processes' environments are not readable portably: no lineage tokens are seen here); `statm`
/// where the system has it.
pub(crate) fn file_of(
    pid: i32,
    start_ticks: u64,
    file: ProcFile,
) -> io::Result<std::sync::Arc<[u8]>> {
    let read = || match file {
        ProcFile::Cmdline => with_process(pid, |process| {
            argv_of(process)
                .iter()
                .flat_map(|arg| arg.bytes().chain([0]))
                .collect()
        }),
        ProcFile::Environ => Ok(Vec::new()),
        ProcFile::Statm => super::read_proc_file(pid, file.name()),
    };
    world::file(pid, start_ticks, file, read, || {
        stat(pid).ok().map(|stat| stat.start_ticks)
    })
}

#[allow(clippy::unnecessary_wraps)]
pub(crate) fn environ_var(_pid: i32, _key: &str) -> io::Result<Option<String>> {
    // Other processes' environments are not readable portably: `sweep` finds no unrecorded brokers here.
    Ok(None)
}

#[allow(clippy::unnecessary_wraps)]
pub(crate) fn pids() -> io::Result<Vec<i32>> {
    Ok(system_with(None)
        .processes()
        .keys()
        .filter_map(|pid| i32::try_from(pid.as_u32()).ok())
        .collect())
}

/// One pass over the process table (sysinfo reads it whole; `deadline` only decides whether to start).
pub(crate) fn scan_cmdlines(deadline: Deadline) -> Vec<(i32, Vec<String>)> {
    if deadline.expired() {
        return Vec::new();
    }
    system_with(None)
        .processes()
        .iter()
        .filter_map(|(pid, process)| Some((i32::try_from(pid.as_u32()).ok()?, argv_of(process))))
        .filter(|(_, argv)| !argv.is_empty())
        .collect()
}

/// How long ago a process started; this backend's start time is in seconds since the epoch.
pub(crate) fn age_of(start_secs: u64) -> std::time::Duration {
    std::time::SystemTime::now()
        .duration_since(
            std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(start_secs),
        )
        .unwrap_or_default()
}
