//! Starting detached processes: brokers (own session, stdin null, output to a log, session variables stripped from
//! the environment, a fresh lineage token added, run only once recorded: the exec stub) and the finisher (setsid
//! and a double fork, so no agent waits on it). Neither inherits any descriptor of the caller but 0-2: an agent
//! waits for EOF on the hook's pipes.

use std::ffi::OsString;
use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::Context;

/// Removes every variable that ties a process to an agent session (`agents::is_session_marker`) from `command`'s
/// environment: a broker outlives the session, so it must not carry them (a child `claude` would think it is nested;
/// a leftover scan would take the broker for the session's); what it starts is nobody's leftover.
pub(crate) fn scrub_session_variables(command: &mut Command) {
    for (name, _) in std::env::vars_os() {
        if name.to_str().is_some_and(crate::agents::is_session_marker) {
            command.env_remove(name);
        }
    }
}

pub(crate) use crate::model::marker::{BROKER_MARKER, LINEAGE_MARKER, STATE_ROOT_MARKER};

/// Where a broker is started and what marks it.
pub(crate) struct BrokerLaunch<'a> {
    pub cwd: &'a Path,
    pub log: &'a Path,
    pub marker: &'a str,
    pub state_root: &'a Path,
    pub lineage: &'a str,
}

/// Starts `argv` as a broker in its own session (pid = pgid = sid), held before its command runs: the child is our
/// own executable as a stub (`stub_entry`) that waits on a channel on its stdin and execs `argv` only when the
/// launcher says `go` (`PendingBroker::go`), after it has recorded the stub's pid and start time, which the exec
/// keeps. A launcher that dies first (a SIGKILL between spawn and record) closes the channel: the stub reads EOF
/// and exits without running anything, so no broker ever runs unrecorded beyond its launcher's life. Returns once
/// the stub has exec'd (`spawn` reports a failed exec of our own executable through a close-on-exec pipe).
pub(crate) fn spawn_broker(
    argv: &[String],
    launch: &BrokerLaunch<'_>,
) -> anyhow::Result<PendingBroker> {
    let (program, arguments) = argv.split_first().context("no broker command given")?;
    let log = launch.log;
    let output = crate::store::root::open_nofollow(
        log,
        OpenOptions::new().append(true).create(true).mode(0o600),
    )
    .with_context(|| format!("opening broker log {}", log.display()))?;
    crate::store::root::check_regular_file(&output, log, rustix::process::geteuid().as_raw())?;
    let (channel, stub_end) = UnixStream::pair().context("making the broker's start channel")?;
    let mut command = Command::new(own_executable()?);
    command
        .arg0("session-reaper")
        .arg(STUB_WORD)
        .arg("--")
        .arg(program)
        .args(arguments)
        .current_dir(launch.cwd)
        .stdin(Stdio::from(OwnedFd::from(stub_end)))
        .stdout(output.try_clone()?)
        .stderr(output);
    scrub_session_variables(&mut command);
    command
        .env(BROKER_MARKER, launch.marker)
        .env(STATE_ROOT_MARKER, launch.state_root)
        .env(LINEAGE_MARKER, launch.lineage);
    // A cgroup of its own, out of the caller's (a session's): entered before the command runs.
    let cgroup = crate::act::cgroup::for_broker(launch.lineage);
    // SAFETY: setsid, write and fcntl/close_range are async-signal-safe and touch no memory of the parent.
    unsafe {
        command.pre_exec(move || {
            rustix::process::setsid().map_err(std::io::Error::from)?;
            if let Some(procs) = &cgroup {
                crate::act::cgroup::enter(procs);
            }
            close_above_stderr(Closing::AtExec);
            Ok(())
        });
    }
    let child = command
        .spawn()
        .with_context(|| format!("starting broker {program:?}"))?;
    // `command` (holding the stub's end of the channel) is dropped on return: the stub alone holds that end, so
    // the launcher's death is the stub's EOF.
    Ok(PendingBroker {
        child,
        channel,
        program: program.clone(),
    })
}

/// Our own executable, for the stub: `/proc/self/exe` where there is one — the very binary running now, even when
/// an upgrade has replaced or removed its file meanwhile (its stub speaks our protocol) — else its path.
fn own_executable() -> anyhow::Result<PathBuf> {
    let running = Path::new("/proc/self/exe");
    if std::fs::symlink_metadata(running).is_ok() {
        return Ok(running.to_path_buf());
    }
    std::env::current_exe().context("finding our own executable")
}

/// The word that makes our executable the broker's exec stub: `session-reaper launch-broker -- CMD…` with the
/// launcher's channel on stdin (see `spawn_broker`). Not a command for people.
const STUB_WORD: &str = "launch-broker";

/// What the launcher writes once the broker is recorded.
const GO: &[u8] = b"go";

/// A broker started by `spawn_broker`, waiting in the stub. Dropped without `go`, it never runs its command: the
/// stub reads EOF and exits.
pub(crate) struct PendingBroker {
    child: Child,
    channel: UnixStream,
    program: String,
}

impl PendingBroker {
    /// The pid of the stub, which the broker keeps (with its start time) when the stub execs it.
    pub(crate) fn id(&self) -> u32 {
        self.child.id()
    }

    /// Lets the stub exec the broker command. Returns once it has: the stub reports a failed exec (and exits)
    /// through the channel, whose end it holds close-on-exec, so EOF with nothing read is success.
    pub(crate) fn go(mut self) -> anyhow::Result<Child> {
        let starting = || format!("starting broker {:?}", self.program);
        // MSG_NOSIGNAL: a stub killed meanwhile is an error here, not a SIGPIPE (default outside hook mode).
        rustix::net::send(&self.channel, GO, rustix::net::SendFlags::NOSIGNAL)
            .map_err(std::io::Error::from)
            .with_context(|| format!("{}: its exec stub is gone", starting()))?;
        let mut report = String::new();
        self.channel
            .read_to_string(&mut report)
            .with_context(starting)?;
        if report.is_empty() {
            Ok(self.child)
        } else {
            let _ = self.child.wait();
            Err(anyhow::anyhow!(report).context(starting()))
        }
    }
}

/// The broker's exec stub (see `spawn_broker`), taken before the command-line parser is built: `args` are
/// `launch-broker -- CMD…` and stdin is the launcher's channel (anything else is `None` and goes through the parser,
/// so a person typing the word gets the parser's answer). Waits for `go`, then execs `CMD…` with stdin on /dev/null;
/// on EOF (the launcher died before it recorded us) exits without running anything. Returns the exit code.
pub(crate) fn stub_entry(args: &[OsString]) -> Option<u8> {
    let [word, dashes, program, arguments @ ..] = args else {
        return None;
    };
    if word != STUB_WORD || dashes != "--" {
        return None;
    }
    let stdin = std::io::stdin();
    let on_socket = rustix::fs::fstat(&stdin).is_ok_and(|stat| {
        rustix::fs::FileType::from_raw_mode(stat.st_mode) == rustix::fs::FileType::Socket
    });
    if !on_socket {
        return None;
    }
    // Our own copy, closed by the exec: the launcher's EOF that says the exec happened.
    let Ok(mut channel) = rustix::io::fcntl_dupfd_cloexec(&stdin, 3).map(UnixStream::from) else {
        return Some(1);
    };
    let mut word = [0u8; GO.len()];
    if channel.read_exact(&mut word).is_err() || word != GO {
        // The launcher died (or gave up) before the broker was recorded: nothing runs.
        return Some(0);
    }
    let err = Command::new(program)
        .args(arguments)
        .stdin(Stdio::null())
        .exec();
    let _ = channel.write_all(err.to_string().as_bytes());
    Some(127)
}

/// Starts `exe args…` fully detached: a new session, then a second fork so that it is no child of ours, stdio on
/// /dev/null, every other inherited descriptor closed at exec (an agent waits for EOF on its hook's pipes), and no
/// session variable in its environment (it is nobody's leftover). Returns once the intermediate process has exited:
/// the grandchild closes the pipe through which `spawn` would learn of a failed exec, so the caller (a hook on the
/// agent's clock) never waits for the grandchild to be scheduled. A failed exec of our own executable (deleted by
/// an upgrade mid-run) goes unreported: the sweep is the safety net for a sentinel or finisher that never started.
pub(crate) fn spawn_detached(
    exe: &Path,
    args: &[&str],
    env: &[(&str, &Path)],
) -> anyhow::Result<()> {
    let mut command = Command::new(exe);
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    scrub_session_variables(&mut command);
    for (name, value) in env {
        command.env(name, value);
    }
    // Out of a contained agent's cgroup (a hook of its runs inside it): a helper of ours is nobody's leftover.
    let home = crate::act::cgroup::for_detached();
    // SAFETY: between fork and exec only async-signal-safe calls: setsid, write, fork, _exit, fcntl/close_range.
    // The intermediate child exits at once; the grandchild goes on to exec. Our process is single-threaded when it
    // calls this.
    unsafe {
        command.pre_exec(move || {
            rustix::process::setsid().map_err(std::io::Error::from)?;
            if let Some(procs) = &home {
                crate::act::cgroup::enter(procs);
            }
            // rustix offers no fork: libc's, as async-signal-safe as the rest.
            match libc::fork() {
                -1 => Err(std::io::Error::last_os_error()),
                0 => {
                    close_above_stderr(Closing::Now);
                    Ok(())
                }
                _ => libc::_exit(0),
            }
        });
    }
    let mut intermediate = command
        .spawn()
        .with_context(|| format!("starting {}", exe.display()))?;
    intermediate
        .wait()
        .context("reaping the intermediate process")?;
    Ok(())
}

/// When `close_above_stderr` closes the descriptors above 2.
#[derive(Clone, Copy)]
enum Closing {
    /// At exec (close-on-exec): the pipe through which `spawn` learns of a failed exec stays until then.
    AtExec,
    /// Now: `spawn` stops waiting as well (the detached grandchild, whose exec nobody waits for).
    Now,
}

/// Closes every descriptor above 2, so that the program starts with only its standard streams (an agent waits for
/// EOF on its hook's pipes). Called between fork and exec: `close_range` (Linux 5.9; `CLOSE_RANGE_CLOEXEC` 5.11),
/// else `fcntl`/`close` on each possible descriptor.
fn close_above_stderr(when: Closing) {
    #[cfg(target_os = "linux")]
    {
        let flags = match when {
            Closing::AtExec => libc::CLOSE_RANGE_CLOEXEC,
            Closing::Now => 0,
        };
        // SAFETY: a raw system call with integer arguments.
        let done = unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, flags) } == 0;
        if done {
            return;
        }
    }
    // SAFETY: sysconf, fcntl and close are async-signal-safe; on a descriptor that is not open they fail harmlessly.
    unsafe {
        let open_max = libc::sysconf(libc::_SC_OPEN_MAX);
        let last = if open_max > 0 {
            open_max.min(65_536)
        } else {
            1024
        };
        for fd in 3..i32::try_from(last).unwrap_or(1024) {
            match when {
                Closing::AtExec => libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC),
                Closing::Now => libc::close(fd),
            };
        }
    }
}

/// A fresh lineage token: 128 random bits in hex.
pub(crate) fn new_token() -> anyhow::Result<String> {
    use anyhow::Context;
    use std::fmt::Write;
    let mut bytes = [0u8; 16];
    let mut filled = 0;
    while filled < bytes.len() {
        filled +=
            rustix::rand::getrandom(&mut bytes[filled..], rustix::rand::GetRandomFlags::empty())
                .context("reading random bytes for a lineage token")?;
    }
    Ok(bytes
        .iter()
        .fold(String::with_capacity(32), |mut hex, byte| {
            let _ = write!(hex, "{byte:02x}");
            hex
        }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_fresh_128_bit_hex() {
        let (a, b) = (new_token().unwrap(), new_token().unwrap());
        assert_eq!(a.len(), 32);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }
}
