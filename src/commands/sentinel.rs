//! The sentinel: one detached watcher per agent process (DESIGN "The sentinel"). The first `SessionStart` of an
//! agent starts it (`setsid`, double fork, standard streams on /dev/null, inherited descriptors closed, session
//! variables scrubbed — see `launch::spawn_detached`); a lock named after the agent's identity keeps it to one. It
//! waits on the agent's pidfd and on the state root's inotify watch — nothing polls — and when the agent exits
//! it ends the agent's live sessions (`agent_gone`), stops their leftovers, runs the stops and exits. It exits too
//! when the state root disappears. With `--within`, it is the bounded wait of a `SessionEnd` whose agent has no
//! sentinel (turned off, or killed): it gives up when the agent outlives the bound, and the sweep does the rest.

use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::act::executor;
use crate::act::finisher;
use crate::act::leftovers;
use crate::act::signal::Guard;
use crate::commands::session_end::{self, Ending};
use crate::error::Outcome;
use crate::model::name::SessionId;
use crate::model::record::{Identity, StopTicket};
use crate::observe::proc;
use crate::store::Store;
use crate::store::events::{Event, Reason};

use crate::act::sentinel::{DIR, LOCK_WAIT, lock_path};
use crate::adapters::codex_plugin::Discovery;

/// The sentinel's own entry point, taken before the command-line parser is built: the exact words `start` writes
/// (`--state-dir ROOT sentinel --pid P --start-ticks T [--within Nms]`) are read by hand, so that a process that
/// spends its life waiting touches as little of the binary as it can (DESIGN "The sentinel": ≤ 2 MiB). Any other
/// shape (a person typing `sentinel`) is `None` and goes through the parser. Returns the exit code.
pub(crate) fn entry(args: &[std::ffi::OsString]) -> Option<u8> {
    let words: Vec<&str> = args.iter().map(|arg| arg.to_str()).collect::<Option<_>>()?;
    let (root, agent, within, codex) = match words.as_slice() {
        [
            "--state-dir",
            root,
            "sentinel",
            "--pid",
            pid,
            "--start-ticks",
            start,
            rest @ ..,
        ] => {
            let (within, rest) = match rest {
                ["--within", millis, rest @ ..] => (
                    Some(Duration::from_millis(
                        millis.strip_suffix("ms")?.parse().ok()?,
                    )),
                    rest,
                ),
                rest => (None, rest),
            };
            let codex = Discovery::from_words(rest)?;
            let agent = Identity {
                boot_id: proc::boot_id().to_owned(),
                pid_ns: proc::own_pid_ns(),
                pid: pid.parse().ok()?,
                start_ticks: start.parse().ok()?,
                uid: rustix::process::getuid().as_raw(),
            };
            (*root, agent, within, codex)
        }
        _ => return None,
    };
    // A root that is gone already is never made again: the sentinel of a deleted root has nothing to watch.
    let outcome = crate::store::root::resolve_root(Some(std::path::Path::new(root)))
        .and_then(|root| Store::open_for(&root, true))
        .and_then(|store| match store {
            Some(store) => run(&store, &agent, within, &codex),
            None => Ok(Outcome::Done),
        });
    Some(match outcome {
        Ok(outcome) => outcome.exit_code(),
        Err(err) => crate::error::exit_code_of(&err),
    })
}

/// The sentinel's life: lock, wait, do the agent-gone work, exit.
pub(crate) fn run(
    store: &Store,
    agent: &Identity,
    within: Option<Duration>,
    codex: &Discovery,
) -> anyhow::Result<Outcome> {
    // The root as it was when this sentinel started: one deleted or renamed before its watch is set is noticed.
    let root = root_key(store);
    store.root.ensure_dir(&store.root.join(DIR))?;
    let lock = store.root.open_lock_file(&lock_path(store, agent))?;
    let deadline = Instant::now() + LOCK_WAIT;
    while lock.try_lock().is_err() {
        if Instant::now() >= deadline {
            return Ok(Outcome::Done);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // Who holds it, for `status` (the lock, not this, says whether one runs).
    let _ = lock.set_len(0);
    let _ = std::io::Write::write_all(&mut &lock, std::process::id().to_string().as_bytes());
    // The cgroup its SessionStart planned (off the agent's clock).
    crate::act::cgroup::adopt_recorded(store, agent);
    let watched = match wait_for_exit(store, agent, within, root)? {
        Waited::AgentGone => {
            let _world = crate::observe::World::enter();
            agent_gone(store, agent, codex)
        }
        Waited::RootGone | Waited::TimedOut => Ok(Outcome::Done),
    };
    // The lock file goes with the sentinel (the state root may be gone already).
    let _ = std::fs::remove_file(lock_path(store, agent));
    watched
}

enum Waited {
    AgentGone,
    RootGone,
    TimedOut,
}

/// How often a sentinel with no inotify instance to spare (the per-user limit, 128 by default, is shared by
/// every program of the user) looks whether its state root still exists.
const ROOT_CHECK: Duration = Duration::from_secs(30);

/// Blocks until the agent exits, the state root is deleted or moved, or `within` passes.
fn wait_for_exit(
    store: &Store,
    agent: &Identity,
    within: Option<Duration>,
    root: Option<(u64, u64)>,
) -> anyhow::Result<Waited> {
    use rustix::event::{PollFd, PollFlags, Timespec, poll};
    let Some(pidfd) = open_pidfd(agent) else {
        return Ok(Waited::AgentGone);
    };
    let watch = watch_root(store);
    if root_key(store) != root {
        return Ok(Waited::RootGone);
    }
    let ends = within.map(|within| Instant::now() + within);
    release_file_pages();
    loop {
        let remaining = ends.map(|ends| ends.saturating_duration_since(Instant::now()));
        if remaining.is_some_and(|left| left.is_zero()) {
            return Ok(Waited::TimedOut);
        }
        if watch.is_none() && std::fs::symlink_metadata(store.root.path()).is_err() {
            return Ok(Waited::RootGone);
        }
        let wake = match (remaining, watch.is_none()) {
            (Some(left), true) => Some(left.min(ROOT_CHECK)),
            (None, true) => Some(ROOT_CHECK),
            (left, false) => left,
        };
        let timespec = wake.map(|left| {
            Timespec::try_from(left).unwrap_or(Timespec {
                tv_sec: 1,
                tv_nsec: 0,
            })
        });
        let mut fds = vec![PollFd::new(&pidfd, PollFlags::IN)];
        if let Some(watch) = &watch {
            fds.push(PollFd::new(watch, PollFlags::IN));
        }
        match poll(&mut fds, timespec.as_ref()) {
            Ok(0) | Err(rustix::io::Errno::INTR) => {}
            Ok(_) => {
                if !fds[0].revents().is_empty() {
                    return Ok(Waited::AgentGone);
                }
                if fds.get(1).is_some_and(|fd| !fd.revents().is_empty()) {
                    // Something in the parent directory went away: the root, or a neighbour.
                    if let Some(watch) = &watch {
                        drain(watch);
                    }
                    if root_key(store) != root {
                        return Ok(Waited::RootGone);
                    }
                }
            }
            Err(err) => return Err(err).context("waiting for the agent"),
        }
    }
}

/// Unmaps, before the long wait, the pages of this process's read-only file mappings — the program's code and
/// constants, libc's — that the start touched: a sentinel lives as long as its agent, and they are the bulk of its
/// resident memory (2.9 of 3.0 MiB, measured; its private memory is under 200 KiB). The pages stay in the page cache,
/// shared with every other process mapping the same files, and fault back in when the agent exits. Only a mapping
/// with no private (copy-on-write) page is released: for those, `MADV_DONTNEED` loses nothing (the relocated RELRO
/// segment and every writable mapping keep their pages). Best effort: on any failure the pages simply stay.
fn release_file_pages() {
    let Ok(smaps) = std::fs::read_to_string("/proc/self/smaps") else {
        return;
    };
    let clean = clean_file_mappings(&smaps);
    drop(smaps);
    for (start, end) in clean {
        // SAFETY: the range is a whole private mapping of a file, never writable and holding no copy-on-write page:
        // every page dropped is re-read from the unchanged file on its next use, so no memory content changes.
        unsafe {
            let _ = rustix::mm::madvise(
                start as *mut std::ffi::c_void,
                end - start,
                rustix::mm::Advice::LinuxDontNeed,
            );
        }
    }
}

/// The `(start, end)` of each private, read-only file mapping in `smaps` whose pages are all the file's own
/// (`Anonymous: 0 kB`).
fn clean_file_mappings(smaps: &str) -> Vec<(usize, usize)> {
    let mut found = Vec::new();
    // The mapping being read: its range, and whether it is read-only, private and of a file.
    let mut current: Option<((usize, usize), bool)> = None;
    for line in smaps.lines() {
        let mut fields = line.split_whitespace();
        let first = fields.next().unwrap_or_default();
        if let Some((start, end)) = first.split_once('-')
            && let (Ok(start), Ok(end)) = (
                usize::from_str_radix(start, 16),
                usize::from_str_radix(end, 16),
            )
        {
            let perms = fields.next().unwrap_or_default();
            let path = fields.nth(3).unwrap_or_default();
            let candidate = perms.len() == 4
                && !perms.contains('w')
                && perms.ends_with('p')
                && path.starts_with('/');
            current = Some(((start, end), candidate));
        } else if first == "Anonymous:"
            && let Some((range, true)) = current.take()
            && fields.next() == Some("0")
        {
            found.push(range);
        }
    }
    found
}

/// An inotify watch for the deletion or move of the state root: on the root itself (`DELETE_SELF`, `MOVE_SELF`)
/// and on its parent directory (`DELETE`, `MOVED_FROM` of any entry) — the root's own watch never fires while
/// anything under it is still open (this sentinel's lock is), its parent's fires at the `rmdir` or `rename`.
/// `None` (reported) when none can be had.
fn watch_root(store: &Store) -> Option<OwnedFd> {
    use rustix::fs::inotify;
    let root = store.root.path();
    let watch = inotify::init(inotify::CreateFlags::CLOEXEC | inotify::CreateFlags::NONBLOCK)
        .and_then(|fd| {
            inotify::add_watch(
                &fd,
                root,
                inotify::WatchFlags::DELETE_SELF | inotify::WatchFlags::MOVE_SELF,
            )?;
            if let Some(parent) = root.parent() {
                inotify::add_watch(
                    &fd,
                    parent,
                    inotify::WatchFlags::DELETE
                        | inotify::WatchFlags::MOVED_FROM
                        | inotify::WatchFlags::DELETE_SELF
                        | inotify::WatchFlags::MOVE_SELF
                        | inotify::WatchFlags::ONLYDIR,
                )?;
            }
            Ok(fd)
        });
    match watch {
        Ok(fd) => Some(fd),
        Err(err) => {
            executor::note(store, Event::new("sentinel", "degraded").detail(format!(
                "no inotify watch on the state root ({err}): looking every {}s whether it still exists",
                ROOT_CHECK.as_secs()
            )));
            None
        }
    }
}

/// The state root's directory as a file: its device and inode, which a rename elsewhere or a new directory of the
/// same name does not keep.
fn root_key(store: &Store) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(store.root.path())
        .ok()
        .map(|meta| (meta.dev(), meta.ino()))
}

/// Reads (and drops) every pending event of the watch: the root's path is what is checked after it.
fn drain(watch: &OwnedFd) {
    let mut buffer = [0u8; 4096];
    while matches!(rustix::io::read(watch, &mut buffer), Ok(read) if read > 0) {}
}

/// A pidfd that is known to name `agent` (identity checked after opening), `None` when it is gone already.
fn open_pidfd(agent: &Identity) -> Option<OwnedFd> {
    let fd = crate::act::pidfd::open(agent.pid)?;
    proc::is_alive(agent).then_some(fd)
}

/// The agent-gone work: end the agent's sessions still live, stop their (and its ended sessions') leftovers.
pub(crate) fn agent_gone(
    store: &Store,
    agent: &Identity,
    codex: &Discovery,
) -> anyhow::Result<Outcome> {
    let guard = Guard::new();
    let tickets = end_sessions_of(store, &guard, agent, Reason::AgentGone, codex);
    let outcome = run_stops(store, guard, tickets, agent, codex);
    crate::act::cgroup::tidy(store);
    outcome
}

/// Ends every live session of `agent` with `reason`; returns the tickets filed.
pub(crate) fn end_sessions_of(
    store: &Store,
    guard: &Guard,
    agent: &Identity,
    reason: Reason,
    codex: &Discovery,
) -> Vec<StopTicket> {
    let mut tickets = Vec::new();
    for record in leftovers::sessions_of(store, agent) {
        let Ok(session) = SessionId::parse(&record.session_id) else {
            continue;
        };
        if record.is_ended() {
            continue;
        }
        let ending = Ending {
            session,
            reason,
            agent_reason: None,
            seen: None,
            dry_run: false,
            // Where the hook was told to look (its environment is the sentinel's, less the session variables).
            codex: codex.clone(),
        };
        let report = session_end::end_session(
            store,
            guard,
            &ending,
            crate::model::deadline::Deadline::after(crate::store::slot::LOCK_WAIT),
        );
        tickets.extend(report.tickets);
    }
    tickets
}

/// Adds the leftovers of `agent`'s sessions to `tickets`, runs them through the whole cascade and hands what is
/// still running to the finisher.
fn run_stops(
    store: &Store,
    guard: Guard,
    mut tickets: Vec<StopTicket>,
    agent: &Identity,
    codex: &Discovery,
) -> anyhow::Result<Outcome> {
    // The adapters claim their brokers first: a broker another tool shares is never one session's leftover.
    let claimed = crate::adapters::claimed(
        codex,
        crate::model::deadline::Deadline::after(crate::store::slot::LOCK_WAIT),
    );
    tickets.extend(leftovers::stop_leftovers_of(store, agent, &claimed, false));
    if tickets.is_empty() {
        return Ok(Outcome::Done);
    }
    let deadline = crate::act::stopper::longest_stop(&tickets);
    let stops = crate::commands::stopper(store, guard).run(tickets, deadline);
    if stops.iter().any(|stop| {
        matches!(
            stop.outcome,
            crate::act::stopper::StopOutcome::Pending { .. }
        )
    }) {
        executor::note(
            store,
            Event::new("sentinel", "handed_on")
                .pid(agent.pid)
                .detail("stops still running: the finisher completes them"),
        );
        finisher::start(store)?;
    }
    Ok(Outcome::Done)
}

/// `SessionEnd`: when the agent is about to exit (not a `clear`, `compact` or `resume`) and no sentinel watches
/// it, a bounded watcher waits for the exit and does the agent-gone work.
pub(crate) fn at_session_end(
    store: &Store,
    session: &SessionId,
    agent_reason: Option<&str>,
    wait: Duration,
    codex: &Discovery,
) -> anyhow::Result<()> {
    if crate::model::leftover::agent_continues(agent_reason) {
        return Ok(());
    }
    let Some(agent) = store
        .sessions
        .get(session)?
        .and_then(|record| record.agent_identity)
    else {
        return Ok(());
    };
    if proc::is_alive(&agent) && !crate::act::sentinel::is_running(store, &agent) {
        crate::act::sentinel::start(store, &agent, Some(wait), &codex.words())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_clean_read_only_file_mappings_are_released() {
        let smaps = "\
55d0a0000000-55d0a0071000 r--p 00000000 08:01 42 /usr/bin/session-reaper
Rss:                 252 kB
Anonymous:             0 kB
55d0a0071000-55d0a025e000 r-xp 00071000 08:01 42 /usr/bin/session-reaper
Anonymous:             0 kB
55d0a025e000-55d0a0269000 r--p 0025e000 08:01 42 /usr/bin/session-reaper
Anonymous:            44 kB
55d0a0269000-55d0a026a000 rw-p 00269000 08:01 42 /usr/bin/session-reaper
Anonymous:             4 kB
55d0a1000000-55d0a1022000 rw-p 00000000 00:00 0 [heap]
Anonymous:           136 kB
7f0000000000-7f0000001000 r-xp 00000000 00:00 0 [vdso]
Anonymous:             0 kB
7f0000002000-7f0000003000 r--s 00000000 08:01 7 /dev/shm/shared
Anonymous:             0 kB
";
        assert_eq!(
            clean_file_mappings(smaps),
            [
                (0x55d0_a000_0000, 0x55d0_a007_1000),
                (0x55d0_a007_1000, 0x55d0_a025_e000)
            ],
            "text and constants; not RELRO (relocated), data, heap, vdso or a shared mapping"
        );
    }

    #[test]
    fn the_entry_reads_only_the_shape_start_writes() {
        let words = |line: &str| -> Vec<std::ffi::OsString> {
            line.split(' ').map(std::ffi::OsString::from).collect()
        };
        // Not the shape: left to the parser (which reports what is wrong).
        for line in [
            "--state-dir /s sentinel --pid x --start-ticks 5",
            "--state-dir /s sentinel --pid 5 --start-ticks 5 --within 3s",
            "--state-dir /s sentinel --pid 5 --start-ticks 5 --extra",
            "sentinel --pid 5 --start-ticks 5",
            "--state-dir /s status",
        ] {
            assert_eq!(entry(&words(line)), None, "{line}");
        }
    }
}
