//! The only place that sends signals, and the checks that make it never reach the wrong process.
//!
//! Before any signal: pid > 1; not this process, not any ancestor; the target's real uid is ours; its identity
//! (boot, pid, start time, uid) matches the record — checked again after a pidfd is opened, so the pidfd is known
//! to name the recorded process, and the signal goes through that pidfd. "No such process" after verification means
//! the process is already gone, which is success.
//!
//! A process group is signalled only through its leader's pidfd while the leader is verified alive: with
//! `PIDFD_SIGNAL_PROCESS_GROUP` (Linux 6.9) the kernel resolves the group from the pidfd itself, so no reused id can
//! be hit. Older kernels fall back to `killpg` right after the pidfd says the leader has not exited; the window is
//! the instant between that poll and `killpg`, in which the leader would have to exit, be reaped, every member of its
//! group exit and another process take the id for a new group.

use std::collections::HashSet;
use std::fmt;
use std::os::fd::OwnedFd;
use std::time::Duration;

use crate::act::pidfd;
use crate::model::record::Identity;
use crate::observe::proc;

/// Why a process was not signalled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// pid 0, 1 or negative: would mean "every process" or init.
    BadPid,
    /// This process or one of its ancestors (the agent running the hook, the test, the shell).
    Ancestor,
    /// Another user's process.
    ForeignUid,
    /// The recorded agent process of a live session (DESIGN "Belonging"): never a leftover, a broker or a member.
    LiveAgent,
    /// The record is from an earlier boot of this host: stale.
    OtherBoot,
    /// The record was written in another pid namespace (a sandbox, a container): its pid means nothing here.
    OtherPidNamespace,
}

impl Refusal {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Refusal::BadPid => "pid is 0, 1 or negative",
            Refusal::Ancestor => "pid is this process or one of its ancestors",
            Refusal::ForeignUid => "process belongs to another user",
            Refusal::LiveAgent => "process is the agent of a live session",
            Refusal::OtherBoot => "record is from an earlier boot",
            Refusal::OtherPidNamespace => {
                "record was written in another pid namespace (a sandbox or container); its pid means nothing here"
            }
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What checking a recorded identity against the live system found.
#[derive(Debug)]
pub(crate) enum Target {
    /// The recorded process runs; signals go through the handle.
    Live(Handle),
    /// No process has this identity any more (exited, or the pid was reused by another process).
    Gone,
    /// Must never be signalled.
    Refused(Refusal),
}

/// The processes this run must never signal, and who we are.
#[derive(Clone, Debug)]
pub(crate) struct Guard {
    protected: HashSet<i32>,
    uid: u32,
    /// The recorded agents of live sessions, refused like ancestors.
    live_agents: Vec<Identity>,
}

impl Guard {
    /// Snapshots this process's ancestry once.
    pub(crate) fn new() -> Self {
        Guard {
            protected: proc::self_and_ancestors(),
            uid: rustix::process::getuid().as_raw(),
            live_agents: Vec::new(),
        }
    }

    /// This guard, refusing also the recorded agents of live sessions (`decide::belonging::live_agents`).
    #[must_use]
    pub(crate) fn sparing_agents(mut self, live_agents: Vec<Identity>) -> Self {
        self.live_agents = live_agents;
        self
    }

    pub(crate) fn uid(&self) -> u32 {
        self.uid
    }

    /// The recorded agents of live sessions this guard refuses.
    pub(crate) fn live_agents(&self) -> &[Identity] {
        &self.live_agents
    }

    /// The checks that need no system call beyond the ancestry snapshot.
    pub(crate) fn check(&self, identity: &Identity) -> Result<(), Refusal> {
        if identity.pid <= 1 {
            Err(Refusal::BadPid)
        } else if self.protected.contains(&identity.pid) {
            Err(Refusal::Ancestor)
        } else if crate::decide::belonging::is_live_agent(identity, &self.live_agents) {
            Err(Refusal::LiveAgent)
        } else if identity.uid != self.uid {
            Err(Refusal::ForeignUid)
        } else if identity.boot_id != proc::boot_id() {
            Err(Refusal::OtherBoot)
        } else if identity.is_other_pid_ns(proc::own_pid_ns()) {
            Err(Refusal::OtherPidNamespace)
        } else {
            Ok(())
        }
    }

    /// Checks `identity` and, when it is live and allowed, opens a handle that pins it.
    pub(crate) fn target(&self, identity: &Identity) -> Target {
        if let Err(refusal) = self.check(identity) {
            return Target::Refused(refusal);
        }
        if !proc::is_alive(identity) {
            return Target::Gone;
        }
        let pidfd = pidfd::open(identity.pid);
        // Re-check after opening: the pidfd now pins a process; make sure it is the recorded one.
        if !proc::is_alive(identity) {
            return Target::Gone;
        }
        Target::Live(Handle {
            identity: identity.clone(),
            pidfd,
        })
    }
}

impl Default for Guard {
    fn default() -> Self {
        Self::new()
    }
}

/// A verified live process. Holds a pidfd where the kernel has them.
#[derive(Debug)]
pub(crate) struct Handle {
    identity: Identity,
    pidfd: Option<OwnedFd>,
}

/// Signals we send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Sig {
    Term,
    Kill,
    /// Freezes a leftover's tree before its SIGKILL (it forks no more while it is walked).
    Stop,
}

impl Sig {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Sig::Term => "SIGTERM",
            Sig::Kill => "SIGKILL",
            Sig::Stop => "SIGSTOP",
        }
    }

    fn signal(self) -> rustix::process::Signal {
        match self {
            Sig::Term => rustix::process::Signal::TERM,
            Sig::Kill => rustix::process::Signal::KILL,
            Sig::Stop => rustix::process::Signal::STOP,
        }
    }
}

const ESRCH: i32 = rustix::io::Errno::SRCH.raw_os_error();
const EINVAL: i32 = rustix::io::Errno::INVAL.raw_os_error();

/// The pid of `identity` as the kernel takes it (a pid of 0 or less names no process: "no such process").
fn pid_of(identity: &Identity) -> std::io::Result<rustix::process::Pid> {
    (identity.pid > 0)
        .then(|| rustix::process::Pid::from_raw(identity.pid))
        .flatten()
        .ok_or_else(|| std::io::Error::from_raw_os_error(ESRCH))
}

impl Handle {
    pub(crate) fn identity(&self) -> &Identity {
        &self.identity
    }

    /// Signals the process itself. `Ok(false)` when it had already exited.
    pub(crate) fn signal(&self, sig: Sig) -> std::io::Result<bool> {
        let result = match &self.pidfd {
            Some(fd) => pidfd::signal(fd, sig.signal()),
            None if proc::is_alive(&self.identity) => {
                rustix::process::kill_process(pid_of(&self.identity)?, sig.signal())
                    .map_err(std::io::Error::from)
            }
            None => return Ok(false),
        };
        match result {
            Ok(()) => Ok(true),
            Err(err) if err.raw_os_error() == Some(ESRCH) => Ok(false),
            Err(err) => Err(err),
        }
    }

    /// Signals the process group this process leads, only while it is verifiably alive (see the module comment);
    /// a process that leads no group, or has exited, gets the signal itself (a no-op once gone).
    pub(crate) fn signal_group(&self, sig: Sig) -> std::io::Result<bool> {
        if self.has_exited() {
            return self.signal(sig);
        }
        let result = match &self.pidfd {
            Some(fd) => match pidfd::signal_group(fd, sig.signal()) {
                Err(err) if err.raw_os_error() == Some(EINVAL) => self.killpg_if_alive(sig),
                other => other,
            },
            None => self.killpg_if_alive(sig),
        };
        match result {
            Ok(()) => Ok(true),
            Err(err) if err.raw_os_error() == Some(ESRCH) => self.signal(sig),
            Err(err) => Err(err),
        }
    }

    /// The fallback of kernels without `PIDFD_SIGNAL_PROCESS_GROUP`: `killpg` right after the leader is seen alive.
    fn killpg_if_alive(&self, sig: Sig) -> std::io::Result<()> {
        if self.has_exited() {
            return Err(std::io::Error::from_raw_os_error(ESRCH));
        }
        rustix::process::kill_process_group(pid_of(&self.identity)?, sig.signal())
            .map_err(std::io::Error::from)
    }

    /// True once the process has exited (a zombie has exited). Polls the pidfd; never `kill(pid, 0)`, to which a
    /// zombie looks alive.
    pub(crate) fn has_exited(&self) -> bool {
        match &self.pidfd {
            Some(fd) => pidfd::exited(fd, Duration::ZERO),
            None => !proc::is_alive(&self.identity),
        }
    }

    /// Waits up to `timeout` for the process to exit; true if it did.
    #[cfg(test)]
    pub(crate) fn wait_exit(&self, timeout: Duration) -> bool {
        if let Some(fd) = &self.pidfd {
            return pidfd::exited(fd, timeout);
        }
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if !proc::is_alive(&self.identity) {
                return true;
            }
            if std::time::Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    pub(crate) fn pidfd(&self) -> Option<&OwnedFd> {
        self.pidfd.as_ref()
    }
}

/// Whether this kernel offers pidfds (for `doctor`).
pub(crate) fn pidfd_supported() -> bool {
    pidfd::open(i32::try_from(std::process::id()).unwrap_or(0)).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(pid: i32) -> Identity {
        Identity {
            boot_id: proc::boot_id().to_owned(),
            pid_ns: proc::own_pid_ns(),
            pid,
            start_ticks: 1,
            uid: rustix::process::getuid().as_raw(),
        }
    }

    #[test]
    fn refuses_init_zero_negative_self_and_parent() {
        let guard = Guard::new();
        let me = i32::try_from(std::process::id()).unwrap();
        let parent = rustix::process::Pid::as_raw(rustix::process::getppid());
        assert_eq!(guard.check(&identity(0)), Err(Refusal::BadPid));
        assert_eq!(guard.check(&identity(1)), Err(Refusal::BadPid));
        assert_eq!(guard.check(&identity(-1)), Err(Refusal::BadPid));
        assert_eq!(guard.check(&identity(me)), Err(Refusal::Ancestor));
        assert_eq!(guard.check(&identity(parent)), Err(Refusal::Ancestor));
    }

    #[test]
    fn refuses_other_boots_and_users() {
        let guard = Guard::new();
        let mut id = identity(999_999);
        id.uid += 1;
        assert_eq!(guard.check(&id), Err(Refusal::ForeignUid));
        let mut id = identity(999_999);
        id.boot_id = "another-boot".into();
        assert_eq!(guard.check(&id), Err(Refusal::OtherBoot));
        let mut id = identity(999_999);
        id.pid_ns = Some(1);
        assert_eq!(guard.check(&id), Err(Refusal::OtherPidNamespace));
        id.pid_ns = None;
        assert_eq!(
            guard.check(&id),
            Ok(()),
            "an older record: this namespace's"
        );
    }

    /// A group is signalled through its leader's pidfd: every member of the group, not the process alone.
    #[test]
    fn group_signal_reaches_the_whole_group_through_the_pidfd() {
        use std::os::unix::process::CommandExt;
        let mut leader = std::process::Command::new("sh")
            .args(["-c", "sleep 30 & echo $!; wait"])
            .stdout(std::process::Stdio::piped())
            .process_group(0)
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(leader.stdout.take().unwrap()),
            &mut line,
        )
        .unwrap();
        let child = proc::identity_of(line.trim().parse().unwrap()).unwrap();
        let pid = i32::try_from(leader.id()).unwrap();
        let Target::Live(handle) = Guard::new().target(&proc::identity_of(pid).unwrap()) else {
            panic!("live")
        };
        assert!(handle.signal_group(Sig::Kill).unwrap());
        leader.wait().unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while proc::is_alive(&child) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(
            !proc::is_alive(&child),
            "the group member got the signal too"
        );
    }

    #[test]
    fn a_reused_pid_is_gone_not_signalled() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = i32::try_from(child.id()).unwrap();
        let mut id = proc::identity_of(pid).unwrap();
        id.start_ticks += 1;
        assert!(matches!(Guard::new().target(&id), Target::Gone));
        assert!(child.try_wait().unwrap().is_none(), "still running");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// Where the kernel has no pidfd, a handle verifies the identity before each signal and polls /proc.
    #[test]
    fn without_a_pidfd_signals_are_verify_then_kill() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = i32::try_from(child.id()).unwrap();
        let identity = proc::identity_of(pid).unwrap();
        let stale = Handle {
            identity: Identity {
                start_ticks: identity.start_ticks + 1,
                ..identity.clone()
            },
            pidfd: None,
        };
        assert!(
            !stale.signal(Sig::Kill).unwrap(),
            "a reused pid is never signalled"
        );
        assert!(child.try_wait().unwrap().is_none(), "still running");
        let handle = Handle {
            identity,
            pidfd: None,
        };
        assert!(!handle.has_exited());
        assert!(handle.signal(Sig::Kill).unwrap());
        assert!(
            handle.wait_exit(Duration::from_secs(10)),
            "a zombie counts as exited"
        );
        child.wait().unwrap();
    }

    #[test]
    fn pidfd_sees_a_zombie_as_exited() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = i32::try_from(child.id()).unwrap();
        let Target::Live(handle) = Guard::new().target(&proc::identity_of(pid).unwrap()) else {
            panic!("live")
        };
        assert!(!handle.has_exited());
        assert!(handle.signal(Sig::Kill).unwrap());
        assert!(
            handle.wait_exit(Duration::from_secs(10)),
            "exited (zombie, not yet reaped)"
        );
        child.wait().unwrap();
        assert!(
            !handle.signal(Sig::Kill).unwrap(),
            "already gone is success"
        );
    }
}
