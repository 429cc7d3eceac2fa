//! Starting detached processes: brokers (own session, stdin null, output to a log, agent markers stripped from the
//! environment) and the finisher (setsid and a double fork, so no agent waits on it).

use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use anyhow::Context;

/// Environment variables that mark a process as running inside an agent session; a broker outlives the session,
/// so it must not carry them (a child `claude` would think it is nested).
pub fn is_agent_marker(name: &str) -> bool {
    crate::agents::is_session_marker(name)
}

/// Starts `argv` as a broker in its own session (pid = pgid = sid). Returns once the child has exec'd: `spawn`
/// reports exec failure through a close-on-exec pipe, so success means the program is running.
/// The variables a broker carries so that a sweep can find it when its record is lost: which slot it is, and of
/// which state root (a sweep judges only its own root's brokers).
pub const BROKER_MARKER: &str = "SESSION_REAPER_BROKER";
pub const STATE_ROOT_MARKER: &str = "SESSION_REAPER_STATE_ROOT";

pub fn spawn_broker(
    argv: &[String],
    cwd: &Path,
    log: &Path,
    marker: &str,
    state_root: &Path,
) -> anyhow::Result<Child> {
    let (program, arguments) = argv.split_first().context("no broker command given")?;
    let output = crate::state::open_nofollow(
        log,
        OpenOptions::new().append(true).create(true).mode(0o600),
    )
    .with_context(|| format!("opening broker log {}", log.display()))?;
    crate::state::check_regular_file(&output, log, nix::unistd::geteuid().as_raw())?;
    let mut command = Command::new(program);
    command
        .args(arguments)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(output.try_clone()?)
        .stderr(output);
    for (name, _) in std::env::vars_os() {
        if name.to_str().is_some_and(is_agent_marker) {
            command.env_remove(name);
        }
    }
    command
        .env(BROKER_MARKER, marker)
        .env(STATE_ROOT_MARKER, state_root);
    // SAFETY: setsid is async-signal-safe and touches no memory of the parent.
    unsafe {
        command.pre_exec(|| {
            nix::unistd::setsid()
                .map(drop)
                .map_err(std::io::Error::from)
        });
    }
    command
        .spawn()
        .with_context(|| format!("starting broker {program:?}"))
}

/// Starts `exe args…` fully detached: a new session, then a second fork so that it is no child of ours, stdio on
/// /dev/null. Returns when the detached process has exec'd.
pub fn spawn_detached(exe: &Path, args: &[&str], env: &[(&str, &Path)]) -> anyhow::Result<()> {
    let mut command = Command::new(exe);
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    for (name, value) in env {
        command.env(name, value);
    }
    // SAFETY: between fork and exec only async-signal-safe calls: setsid, fork, _exit. The intermediate child exits
    // at once; the grandchild goes on to exec. Our process is single-threaded when it calls this.
    unsafe {
        command.pre_exec(|| {
            nix::unistd::setsid().map_err(std::io::Error::from)?;
            match nix::unistd::fork().map_err(std::io::Error::from)? {
                nix::unistd::ForkResult::Parent { .. } => nix::libc::_exit(0),
                nix::unistd::ForkResult::Child => Ok(()),
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
