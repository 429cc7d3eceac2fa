//! No pidfds outside Linux: nothing opens, so the callers verify identity before each signal instead.

use std::os::fd::OwnedFd;
use std::time::Duration;

use rustix::process::Signal;

pub(crate) fn open(_pid: i32) -> Option<OwnedFd> {
    None
}

pub(crate) fn signal(_fd: &OwnedFd, _signal: Signal) -> std::io::Result<()> {
    Err(std::io::Error::from(std::io::ErrorKind::Unsupported))
}

pub(crate) fn signal_group(_fd: &OwnedFd, _signal: Signal) -> std::io::Result<()> {
    Err(rustix::io::Errno::INVAL.into())
}

pub(crate) fn exited(_fd: &OwnedFd, _timeout: Duration) -> bool {
    false
}

pub(crate) fn any_exited<'a>(
    fds: impl IntoIterator<Item = &'a OwnedFd>,
    _timeout: Duration,
) -> bool {
    let _ = fds.into_iter();
    false
}
