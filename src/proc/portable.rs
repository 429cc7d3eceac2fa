//! The portable process backend (macOS and other Unix) through `sysinfo`. Identity uses the process start time in
//! seconds in place of clock ticks and the boot time in place of a boot id; signalling is verify-then-kill.

use std::io;
use std::sync::OnceLock;

use sysinfo::{Pid, ProcessRefreshKind, ProcessesToUpdate, System, UpdateKind};

use super::ProcStat;
use crate::record::Identity;

fn system_with(pids: Option<&[Pid]>) -> System {
    let mut system = System::new();
    let what = pids.map_or(ProcessesToUpdate::All, ProcessesToUpdate::Some);
    let kind = ProcessRefreshKind::nothing()
        .with_cmd(UpdateKind::Always)
        .with_user(UpdateKind::Always);
    system.refresh_processes_specifics(what, true, kind);
    system
}

pub fn boot_id() -> &'static str {
    static BOOT_ID: OnceLock<String> = OnceLock::new();
    BOOT_ID.get_or_init(|| System::boot_time().to_string())
}

pub fn stat(pid: i32) -> io::Result<ProcStat> {
    let key =
        Pid::from(usize::try_from(pid).map_err(|_| io::Error::from(io::ErrorKind::NotFound))?);
    let system = system_with(Some(&[key]));
    let process = system
        .process(key)
        .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
    let pgid = nix::unistd::getpgid(Some(nix::unistd::Pid::from_raw(pid)))
        .map(|p| p.as_raw())
        .unwrap_or(0);
    let sid = nix::unistd::getsid(Some(nix::unistd::Pid::from_raw(pid)))
        .map(|p| p.as_raw())
        .unwrap_or(0);
    let state = if matches!(process.status(), sysinfo::ProcessStatus::Zombie) {
        'Z'
    } else {
        'S'
    };
    Ok(ProcStat {
        pid,
        comm: process.name().to_string_lossy().into_owned(),
        state,
        ppid: process
            .parent()
            .and_then(|p| i32::try_from(p.as_u32()).ok())
            .unwrap_or(0),
        pgid,
        sid,
        start_ticks: process.start_time(),
    })
}

pub fn real_uid(pid: i32) -> io::Result<u32> {
    let key =
        Pid::from(usize::try_from(pid).map_err(|_| io::Error::from(io::ErrorKind::NotFound))?);
    let system = system_with(Some(&[key]));
    let process = system
        .process(key)
        .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
    process
        .user_id()
        .map(|uid| **uid)
        .ok_or_else(|| io::Error::from(io::ErrorKind::PermissionDenied))
}

pub fn cmdline(pid: i32) -> io::Result<Vec<String>> {
    let key =
        Pid::from(usize::try_from(pid).map_err(|_| io::Error::from(io::ErrorKind::NotFound))?);
    let system = system_with(Some(&[key]));
    let process = system
        .process(key)
        .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
    Ok(process
        .cmd()
        .iter()
        .map(|arg| arg.to_string_lossy().into_owned())
        .collect())
}

pub fn environ_var(_pid: i32, _key: &str) -> io::Result<Option<String>> {
    // Other processes' environments are not readable portably.
    Ok(None)
}

pub fn pids() -> io::Result<Vec<i32>> {
    let system = system_with(None);
    Ok(system
        .processes()
        .keys()
        .filter_map(|pid| i32::try_from(pid.as_u32()).ok())
        .collect())
}

pub fn scan_cmdlines() -> Vec<(i32, Vec<String>)> {
    let system = system_with(None);
    system
        .processes()
        .iter()
        .filter_map(|(pid, process)| {
            let argv: Vec<String> = process
                .cmd()
                .iter()
                .map(|a| a.to_string_lossy().into_owned())
                .collect();
            (!argv.is_empty())
                .then(|| (i32::try_from(pid.as_u32()).ok(), argv))
                .and_then(|(p, a)| Some((p?, a)))
        })
        .collect()
}

pub fn group_members(pgid: i32, leader: &Identity) -> Vec<Identity> {
    pids()
        .unwrap_or_default()
        .into_iter()
        .filter_map(|pid| stat(pid).ok())
        .filter(|stat| {
            stat.pgid == pgid && stat.state != 'Z' && stat.start_ticks >= leader.start_ticks
        })
        .filter_map(|stat| super::identity_of(stat.pid).filter(|id| id.uid == leader.uid))
        .collect()
}
