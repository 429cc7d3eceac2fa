//! Acting on cgroups (DESIGN "Containment"): adopting an agent — it and its current descendants moved into a cgroup
//! of its own — at its first `SessionStart`; a cgroup for each broker `broker spawn` starts; detached helpers of
//! ours moved out of a contained agent's cgroup; and our empty cgroups removed once their process is gone. Only
//! cgroups named by `decide::containment` under a parent of ours are ever created or removed; a process is moved
//! only into one of ours, and only the agent and its own descendants of its uid.

use std::collections::HashSet;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::decide::containment::{
    self, Availability, Facts, agent_cgroup_name, agent_of_name, broker_cgroup_name, is_broker_name,
};
use crate::model::containment::{
    Mode, ROOT_VARIABLE, SWITCH_VARIABLE, SessionContainment, Setting,
};
use crate::model::record::{Identity, SessionRecord};
use crate::observe::cgroup::{self as observe, PROCS_FILE};
use crate::observe::proc;
use crate::store::Store;

/// The containment setting the environment gives (a command with no flag of its own: `broker spawn`, `doctor`).
pub(crate) fn setting_from_env() -> Setting {
    Setting {
        off: std::env::var(SWITCH_VARIABLE).is_ok_and(|value| value.eq_ignore_ascii_case("off")),
        root: std::env::var_os(ROOT_VARIABLE)
            .filter(|root| !root.is_empty())
            .map(PathBuf::from),
    }
}

/// What is observed for a decision about the process `pid`'s cgroup.
pub(crate) fn facts_for(pid: i32, setting: &Setting) -> Facts {
    let mounts = observe::mounts();
    let own = mounts
        .v2
        .as_deref()
        .and_then(|mount| observe::cgroup_of(mount, pid));
    let delegated = own.as_deref().is_some_and(is_delegated);
    let writable = own
        .as_deref()
        .is_some_and(|own| may_write(&containment::parent_for(own, setting.root.as_deref())));
    Facts {
        switched_off: setting.off,
        linux: cfg!(target_os = "linux"),
        v2: mounts.v2,
        v1: mounts.v1,
        own,
        configured: setting.root.clone(),
        systemd: Path::new("/run/systemd/system").is_dir(),
        delegated,
        writable,
    }
}

/// Whether the process `pid` could be given a cgroup of its own, and where.
pub(crate) fn availability_for(pid: i32, setting: &Setting) -> Availability {
    containment::availability(&facts_for(pid, setting))
}

/// True when a systemd unit delegated `dir` (it marks a delegated cgroup with an extended attribute).
fn is_delegated(dir: &Path) -> bool {
    ["trusted.delegate", "user.delegate"].iter().any(|name| {
        let mut value = [0u8; 8];
        rustix::fs::getxattr(dir, *name, &mut value[..])
            .is_ok_and(|len| value[..len].starts_with(b"1"))
    })
}

/// True when we may create cgroups in `parent` (or, while it does not exist, in its nearest existing ancestor) and
/// move processes into them.
fn may_write(parent: &Path) -> bool {
    use rustix::fs::{Access, access};
    let Some(existing) = parent.ancestors().find(|dir| dir.exists()) else {
        return false;
    };
    access(existing, Access::WRITE_OK).is_ok()
        && access(existing.join(PROCS_FILE), Access::WRITE_OK).is_ok()
}

/// `SessionStart` with no sentinel to hand it to: puts `agent` and its current descendants into its own cgroup (or
/// finds it there already) and says what the session record keeps: the cgroup, or why the lineage rules stand in.
pub(crate) fn adopt(agent: &Identity, setting: &Setting) -> SessionContainment {
    let planned = plan(agent, setting);
    match &planned.cgroup {
        Some(dir) => match place(agent, dir) {
            Ok(()) => planned,
            Err(why) => lineage(why),
        },
        None => planned,
    }
}

/// The cgroup `agent` is to have (the one it is in, if it is ours already), or why it can have none. Reads, never
/// writes.
pub(crate) fn plan(agent: &Identity, setting: &Setting) -> SessionContainment {
    let facts = facts_for(agent.pid, setting);
    let parent = match containment::availability(&facts) {
        Availability::Available { parent, .. } => parent,
        Availability::Unavailable { why } => return lineage(why),
    };
    let name = agent_cgroup_name(agent);
    let dir = facts
        .own
        .filter(|own| own.file_name().is_some_and(|n| *n == *name))
        .unwrap_or_else(|| parent.join(&name));
    SessionContainment {
        mode: Mode::Cgroup,
        cgroup: Some(dir),
        why: None,
    }
}

fn lineage(why: String) -> SessionContainment {
    SessionContainment {
        mode: Mode::Lineage,
        cgroup: None,
        why: Some(why),
    }
}

/// What `SessionStart` records, in the same write as the rest of the session record: the agent's cgroup, or why it
/// has none. With `deferred` (a sentinel is about to start for this agent) only the plan is recorded and the
/// sentinel moves the agent (`adopt_recorded`): a cgroup's first migration waits out an RCU grace period (about
/// 10 ms, measured), which stays off the agent's clock. Only a process the agents table recognises, or one
/// `--owner-pid` named (`named`), is adopted (DESIGN "Belonging": agent powers only for an agent).
pub(crate) fn note_start(
    record: &mut SessionRecord,
    setting: &Setting,
    named: bool,
    deferred: bool,
) {
    let agent = record.agent_identity.as_ref().filter(|agent| {
        proc::is_alive(agent)
            && (named || proc::cmdline(agent.pid).is_ok_and(|argv| proc::is_agent_program(&argv)))
    });
    let containment = match agent {
        Some(agent) if deferred => plan(agent, setting),
        Some(agent) => adopt(agent, setting),
        None => lineage("no agent process recognised".into()),
    };
    containment.store_in(record);
}

/// The sentinel, before it waits: moves `agent` (and its descendants) into the cgroup its sessions' records name,
/// unless it is there already; where that fails, the records say why and the lineage rules stand in.
pub(crate) fn adopt_recorded(store: &Store, agent: &Identity) {
    let mut placed: HashSet<PathBuf> = HashSet::new();
    for record in crate::act::leftovers::sessions_of(store, agent) {
        let Some(dir) = SessionContainment::cgroup_of(&record) else {
            continue;
        };
        let outcome = if placed.contains(&dir) {
            Ok(())
        } else {
            place(agent, &dir)
        };
        match outcome {
            Ok(()) => {
                placed.insert(dir);
            }
            Err(why) => uncontain(store, &record, &why),
        }
    }
}

/// Rewrites a session's containment as lineage, for `why`.
fn uncontain(store: &Store, record: &SessionRecord, why: &str) {
    let Ok(id) = crate::model::name::SessionId::parse(&record.session_id) else {
        return;
    };
    let _ = crate::act::executor::update_session(
        store,
        &id,
        crate::model::deadline::Deadline::after(Duration::from_millis(500)),
        |current| {
            Ok(current.cloned().map(|mut record| {
                lineage(why.to_owned()).store_in(&mut record);
                record
            }))
        },
    );
}

/// Moves `agent` and its current descendants into `dir` (made if need be) unless the agent is there already.
fn place(agent: &Identity, dir: &Path) -> Result<(), String> {
    let mount = observe::mounts().v2.ok_or("no cgroup2 hierarchy mounted")?;
    if observe::cgroup_of(&mount, agent.pid).as_deref() == Some(dir) {
        return Ok(());
    }
    let (Some(parent), Some(name)) = (dir.parent(), dir.file_name().and_then(|n| n.to_str()))
    else {
        return Err(format!("not a cgroup of ours: {}", dir.display()));
    };
    let dir = make_cgroup(parent, name)?;
    if !proc::is_alive(agent) {
        remove_if_empty(&dir);
        return Err("the agent exited before it could be adopted".into());
    }
    if let Err(err) = move_into(&dir, agent.pid) {
        remove_if_empty(&dir);
        return Err(format!("moving the agent into {}: {err}", dir.display()));
    }
    move_descendants(&dir, agent);
    Ok(())
}

/// Creates `parent/name` (and `parent` if need be). A concurrent tidy may remove an empty `parent` between the two
/// steps: then once more.
fn make_cgroup(parent: &Path, name: &str) -> Result<PathBuf, String> {
    let dir = parent.join(name);
    let mut tries = 0;
    loop {
        tries += 1;
        let made = std::fs::create_dir_all(parent).and_then(|()| match std::fs::create_dir(&dir) {
            Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
            other => other,
        });
        match made {
            Ok(()) => return Ok(dir),
            Err(err) if tries < 3 && err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => return Err(format!("creating cgroup {}: {err}", dir.display())),
        }
    }
}

/// Writes `pid` into `dir`'s `cgroup.procs`: the kernel moves the whole process.
fn move_into(dir: &Path, pid: i32) -> std::io::Result<()> {
    std::fs::write(dir.join(PROCS_FILE), pid.to_string())
}

/// Moves the agent's descendants of its uid, started after it, into `dir`: each is moved before its children are
/// read, so a child forked after the read is born inside; the walk ends when a round finds nothing new. The hook's
/// own chain (this process and the shell between it and the agent) stays where it is, so that the sentinel it starts
/// is in no agent's cgroup.
fn move_descendants(dir: &Path, agent: &Identity) {
    let hook_chain: HashSet<i32> = proc::self_and_ancestors()
        .into_iter()
        .filter(|pid| *pid != agent.pid)
        .collect();
    let mut seen: HashSet<i32> = HashSet::from([agent.pid]);
    let mut frontier = vec![agent.pid];
    while !frontier.is_empty() {
        let mut next = Vec::new();
        for parent in frontier {
            for child in crate::observe::table::children_of(parent) {
                if !seen.insert(child) || hook_chain.contains(&child) {
                    continue;
                }
                let Some(identity) = proc::identity_of(child) else {
                    continue;
                };
                if identity.uid != agent.uid || identity.start_ticks < agent.start_ticks {
                    continue;
                }
                if move_into(dir, child).is_ok() {
                    next.push(child);
                }
            }
        }
        frontier = next;
    }
}

/// The processes `dir` holds, as identities read now.
pub(crate) fn members(dir: &Path) -> Vec<Identity> {
    observe::procs(dir)
        .into_iter()
        .filter_map(proc::identity_of)
        .collect()
}

/// Removes `dir` if nothing is left in it (the kernel refuses a populated cgroup); true when it is gone.
pub(crate) fn remove_if_empty(dir: &Path) -> bool {
    match std::fs::remove_dir(dir) {
        Ok(()) => true,
        Err(err) => err.kind() == std::io::ErrorKind::NotFound,
    }
}

/// `broker spawn` from inside a contained session (or under a configured root): a fresh cgroup for the broker of
/// `lineage`, out of the caller's, and the open `cgroup.procs` into which the broker's child writes itself before it
/// runs the command (so nothing it forks is ever outside). `None` where containment is unavailable, or where the
/// caller is in no cgroup of ours (no session's cgroup to leave, and no parent of ours that a tidy would visit): the
/// lineage token alone then tells its tree.
pub(crate) fn for_broker(lineage: &str) -> Option<OwnedFd> {
    let setting = setting_from_env();
    let me = i32::try_from(std::process::id()).ok()?;
    let facts = facts_for(me, &setting);
    let contained = facts
        .own
        .as_deref()
        .and_then(|own| containment::detached_home(own, setting.root.as_deref()))
        .is_some();
    if !contained && setting.root.is_none() {
        return None;
    }
    let Availability::Available { parent, .. } = containment::availability(&facts) else {
        return None;
    };
    let dir = make_cgroup(&parent, &broker_cgroup_name(lineage)).ok()?;
    open_procs(&dir)
}

/// A detached helper of ours (sentinel, finisher) started from inside an agent's or broker's cgroup of ours: the
/// open `cgroup.procs` of their parent, which it moves itself into before it runs.
pub(crate) fn for_detached() -> Option<OwnedFd> {
    let setting = setting_from_env();
    let mount = observe::mounts().v2?;
    let me = i32::try_from(std::process::id()).ok()?;
    let own = observe::cgroup_of(&mount, me)?;
    let home = containment::detached_home(&own, setting.root.as_deref())?;
    open_procs(&home)
}

fn open_procs(dir: &Path) -> Option<OwnedFd> {
    use rustix::fs::{Mode as FileMode, OFlags, open};
    open(
        dir.join(PROCS_FILE),
        OFlags::WRONLY | OFlags::CLOEXEC,
        FileMode::empty(),
    )
    .ok()
}

/// Between fork and exec: moves the calling process into the cgroup whose `cgroup.procs` is `procs` (writing `0`
/// names the writer). Async-signal-safe: one `write`. A failure leaves it where it was (the lineage rules stand).
pub(crate) fn enter(procs: &OwnedFd) {
    let _ = rustix::io::write(procs, b"0");
}

/// How long an empty broker cgroup is left alone: `broker spawn` makes it a moment before the broker enters it.
const BROKER_CGROUP_SETTLE: Duration = Duration::from_secs(2);

/// Removes our cgroups that are empty and whose process is gone: each gone agent's recorded cgroup, and in each
/// parent of ours, agent cgroups of no live agent and broker cgroups empty for a while; then the `session-reaper`
/// parent itself when nothing is left in it. Cheap when there is nothing: the parents are read, never the table.
pub(crate) fn tidy(store: &Store) {
    let mut parents: HashSet<PathBuf> = HashSet::new();
    for record in store.sessions.all() {
        if let Some(dir) = contained_and_gone(&record) {
            remove_if_empty(&dir);
        }
        if let Some(parent) = SessionContainment::cgroup_of(&record)
            .and_then(|dir| dir.parent().map(Path::to_path_buf))
        {
            parents.insert(parent);
        }
    }
    parents.extend(setting_from_env().root);
    for parent in parents {
        tidy_parent(&parent);
    }
}

fn contained_and_gone(record: &SessionRecord) -> Option<PathBuf> {
    let dir = SessionContainment::cgroup_of(record)?;
    let agent = record.agent_identity.as_ref()?;
    (!proc::is_alive(agent)).then_some(dir)
}

fn tidy_parent(parent: &Path) {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for entry in entries.filter_map(Result::ok) {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let dir = entry.path();
        let stale = if let Some((pid, start)) = agent_of_name(name) {
            proc::stat(pid).map_or(true, |stat| stat.start_ticks != start || stat.state == 'Z')
        } else if is_broker_name(name) {
            entry
                .metadata()
                .and_then(|meta| meta.modified())
                .is_ok_and(|made| made.elapsed().unwrap_or_default() >= BROKER_CGROUP_SETTLE)
        } else {
            false
        };
        if stale && observe::populated(&dir) == Some(false) {
            remove_if_empty(&dir);
        }
    }
    if parent
        .file_name()
        .is_some_and(|name| name == containment::PARENT_NAME)
        && observe::populated(parent) == Some(false)
    {
        remove_if_empty(parent);
    }
}

/// The processes a contained session's cgroup holds now; empty for a session that is not contained, or whose cgroup
/// is in `claimed` already (another session of the same agent process has its members). Adds the cgroup there.
pub(crate) fn members_of<S: std::hash::BuildHasher>(
    record: &SessionRecord,
    claimed: &mut HashSet<PathBuf, S>,
) -> Vec<Identity> {
    match SessionContainment::cgroup_of(record) {
        Some(dir) if claimed.insert(dir.clone()) => members(&dir),
        _ => Vec::new(),
    }
}

/// The table leftover discovery needs when every session in question is contained: the details of their cgroups'
/// members only (every candidate is one), not of everything started since their agents. `None` when some session
/// with leftovers to find is not contained: the full observation is needed.
pub(crate) fn contained_table(sessions: &[SessionRecord]) -> Option<crate::observe::table::Table> {
    let mut pids: HashSet<i32> = HashSet::new();
    for record in sessions {
        let policy = crate::model::leftover::SessionFacts::of(record).policy;
        if record.agent_identity.is_none() || policy == crate::model::leftover::Policy::Off {
            continue;
        }
        let dir = SessionContainment::cgroup_of(record)?;
        pids.extend(observe::procs(&dir));
    }
    Some(crate::observe::table::Table::observe_only(&pids))
}

/// `doctor`: whether an agent started where this command runs would be contained (`available (how)`) or not
/// (`unavailable (why)`), and that line.
pub(crate) fn doctor_line() -> (bool, String) {
    let me = i32::try_from(std::process::id()).unwrap_or(0);
    let availability = availability_for(me, &setting_from_env());
    (
        matches!(availability, Availability::Available { .. }),
        availability.describe(),
    )
}
