//! The only place that sends signals, and the checks that make it never reach the wrong process.
//!
//! Before any signal: pid > 1; not this process, not any ancestor; the target's real uid is ours; its identity
//! (boot, pid, start time, uid) matches the record — checked again after a pidfd is opened, so the pidfd is known
//! to name the recorded process, and the signal goes through that pidfd. "No such process" after verification means
//! the process is already gone, which is success.

use std::collections::HashSet;
use std::fmt;
use std::os::fd::OwnedFd;
use std::time::Duration;

use crate::proc;
use crate::record::Identity;

/// Why a process was not signalled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// pid 0, 1 or negative: would mean "every process" or init.
    BadPid,
    /// This process or one of its ancestors (the agent running the hook, the test, the shell).
    Ancestor,
    /// Another user's process.
    ForeignUid,
    /// The record is from an earlier boot of this host: stale.
    OtherBoot,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::BadPid => "pid is 0, 1 or negative",
            Refusal::Ancestor => "pid is this process or one of its ancestors",
            Refusal::ForeignUid => "process belongs to another user",
            Refusal::OtherBoot => "record is from an earlier boot",
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
pub enum Target {
    /// The recorded process runs; signals go through the handle.
    Live(Handle),
    /// No process has this identity any more (exited, or the pid was reused by another process).
    Gone,
    /// Must never be signalled.
    Refused(Refusal),
}

/// The processes this run must never signal, and who we are.
#[derive(Clone, Debug)]
pub struct Guard {
    protected: HashSet<i32>,
    uid: u32,
}

impl Guard {
    /// Snapshots this process's ancestry once.
    pub fn new() -> Self {
        Guard {
            protected: proc::self_and_ancestors(),
            uid: nix::unistd::getuid().as_raw(),
        }
    }

    pub fn uid(&self) -> u32 {
        self.uid
    }

    /// The checks that need no system call beyond the ancestry snapshot.
    pub fn check(&self, identity: &Identity) -> Result<(), Refusal> {
        if identity.pid <= 1 {
            Err(Refusal::BadPid)
        } else if self.protected.contains(&identity.pid) {
            Err(Refusal::Ancestor)
        } else if identity.uid != self.uid {
            Err(Refusal::ForeignUid)
        } else if identity.boot_id != proc::boot_id() {
            Err(Refusal::OtherBoot)
        } else {
            Ok(())
        }
    }

    /// Checks `identity` and, when it is live and allowed, opens a handle that pins it.
    pub fn target(&self, identity: &Identity) -> Target {
        if let Err(refusal) = self.check(identity) {
            return Target::Refused(refusal);
        }
        if !proc::is_alive(identity) {
            return Target::Gone;
        }
        let pidfd = open_pidfd(identity.pid);
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
pub struct Handle {
    identity: Identity,
    pidfd: Option<OwnedFd>,
}

/// Signals we send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sig {
    Term,
    Kill,
}

impl Sig {
    pub fn name(self) -> &'static str {
        match self {
            Sig::Term => "SIGTERM",
            Sig::Kill => "SIGKILL",
        }
    }

    fn nix(self) -> nix::sys::signal::Signal {
        match self {
            Sig::Term => nix::sys::signal::Signal::SIGTERM,
            Sig::Kill => nix::sys::signal::Signal::SIGKILL,
        }
    }
}

impl Handle {
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    pub fn has_pidfd(&self) -> bool {
        self.pidfd.is_some()
    }

    /// Signals the process itself. `Ok(false)` when it had already exited.
    pub fn signal(&self, sig: Sig) -> std::io::Result<bool> {
        let result = match &self.pidfd {
            Some(fd) => pidfd_signal(fd, sig),
            None if proc::is_alive(&self.identity) => {
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.identity.pid), sig.nix())
                    .map_err(std::io::Error::from)
            }
            None => return Ok(false),
        };
        match result {
            Ok(()) => Ok(true),
            Err(err) if err.raw_os_error() == Some(libc::ESRCH) => Ok(false),
            Err(err) => Err(err),
        }
    }

    /// Signals the process group `pgid` led by this process. Only while the leader is verifiably alive: while any
    /// member lives the kernel cannot hand the group id to another process. No such group while the leader lives
    /// means the record's `pgid` was wrong (the process leads no group): the process itself is signalled.
    pub fn signal_group(&self, pgid: i32, sig: Sig) -> std::io::Result<bool> {
        if pgid != self.identity.pid || self.has_exited() {
            return self.signal(sig);
        }
        match nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pgid), sig.nix()) {
            Ok(()) => Ok(true),
            Err(nix::errno::Errno::ESRCH) => self.signal(sig),
            Err(err) => Err(err.into()),
        }
    }

    /// True once the process has exited (a zombie has exited). Polls the pidfd; never `kill(pid, 0)`, to which a
    /// zombie looks alive.
    pub fn has_exited(&self) -> bool {
        match &self.pidfd {
            Some(fd) => pidfd_exited(fd, Duration::ZERO),
            None => !proc::is_alive(&self.identity),
        }
    }

    /// Waits up to `timeout` for the process to exit; true if it did.
    pub fn wait_exit(&self, timeout: Duration) -> bool {
        if let Some(fd) = &self.pidfd {
            return pidfd_exited(fd, timeout);
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

    pub fn pidfd(&self) -> Option<&OwnedFd> {
        self.pidfd.as_ref()
    }
}

#[cfg(target_os = "linux")]
fn open_pidfd(pid: i32) -> Option<OwnedFd> {
    let pid = rustix::process::Pid::from_raw(pid)?;
    rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()).ok()
}

#[cfg(not(target_os = "linux"))]
fn open_pidfd(_pid: i32) -> Option<OwnedFd> {
    None
}

#[cfg(target_os = "linux")]
fn pidfd_signal(fd: &OwnedFd, sig: Sig) -> std::io::Result<()> {
    let signal = match sig {
        Sig::Term => rustix::process::Signal::TERM,
        Sig::Kill => rustix::process::Signal::KILL,
    };
    rustix::process::pidfd_send_signal(fd, signal).map_err(std::io::Error::from)
}

#[cfg(not(target_os = "linux"))]
fn pidfd_signal(_fd: &OwnedFd, _sig: Sig) -> std::io::Result<()> {
    Err(std::io::Error::from(std::io::ErrorKind::Unsupported))
}

/// Whether a pidfd became readable (its process exited) within `timeout`.
#[cfg(target_os = "linux")]
pub fn pidfd_exited(fd: &OwnedFd, timeout: Duration) -> bool {
    use rustix::event::{PollFd, PollFlags, Timespec, poll};
    let timespec = Timespec::try_from(timeout).unwrap_or(Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    });
    let mut fds = [PollFd::new(fd, PollFlags::IN)];
    matches!(poll(&mut fds, Some(&timespec)), Ok(n) if n > 0)
}

#[cfg(not(target_os = "linux"))]
pub fn pidfd_exited(_fd: &OwnedFd, _timeout: Duration) -> bool {
    false
}

/// Whether this kernel offers pidfds (for `doctor`).
pub fn pidfd_supported() -> bool {
    open_pidfd(i32::try_from(std::process::id()).unwrap_or(0)).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(pid: i32) -> Identity {
        Identity {
            boot_id: proc::boot_id().to_owned(),
            pid,
            start_ticks: 1,
            uid: nix::unistd::getuid().as_raw(),
        }
    }

    #[test]
    fn refuses_init_zero_negative_self_and_parent() {
        let guard = Guard::new();
        let me = i32::try_from(std::process::id()).unwrap();
        let parent = nix::unistd::getppid().as_raw();
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
