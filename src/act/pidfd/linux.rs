//! pidfds on Linux: `pidfd_open`, `pidfd_send_signal` (to the process, or with `PIDFD_SIGNAL_PROCESS_GROUP` to the
//! group it leads) and `poll` for its exit.

use std::os::fd::OwnedFd;
use std::time::Duration;

use rustix::event::{PollFd, PollFlags, Timespec, poll};
use rustix::process::Signal;

/// A pidfd for `pid`, if the process exists and the kernel has pidfds (5.3+).
pub(crate) fn open(pid: i32) -> Option<OwnedFd> {
    let pid = rustix::process::Pid::from_raw(pid)?;
    rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()).ok()
}

/// Sends `signal` to the pidfd's process.
pub(crate) fn signal(fd: &OwnedFd, signal: Signal) -> std::io::Result<()> {
    rustix::process::pidfd_send_signal(fd, signal).map_err(std::io::Error::from)
}

/// `pidfd_send_signal(fd, sig, NULL, PIDFD_SIGNAL_PROCESS_GROUP)`: the group whose id is the pidfd's process, resolved
/// by the kernel. rustix offers no flags argument, hence the raw call; `EINVAL` on kernels before 6.9.
pub(crate) fn signal_group(fd: &OwnedFd, signal: Signal) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: a raw system call on a descriptor we own, with a null siginfo.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            fd.as_raw_fd(),
            signal.as_raw(),
            std::ptr::null::<libc::siginfo_t>(),
            libc::PIDFD_SIGNAL_PROCESS_GROUP,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Whether the pidfd became readable (its process exited) within `timeout`.
pub(crate) fn exited(fd: &OwnedFd, timeout: Duration) -> bool {
    any_exited(std::iter::once(fd), timeout)
}

/// Waits up to `timeout` until one of `fds` becomes readable (its process exited); true if one did. With no
/// descriptor it returns at once.
pub(crate) fn any_exited<'a>(
    fds: impl IntoIterator<Item = &'a OwnedFd>,
    timeout: Duration,
) -> bool {
    let mut fds: Vec<PollFd<'_>> = fds
        .into_iter()
        .map(|fd| PollFd::new(fd, PollFlags::IN))
        .collect();
    if fds.is_empty() {
        return false;
    }
    let timespec = Timespec::try_from(timeout).unwrap_or(Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    });
    matches!(poll(&mut fds, Some(&timespec)), Ok(n) if n > 0)
}
