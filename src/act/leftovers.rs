//! Acting on leftovers: discovery over one observation of the process table, stop tickets filed (reason
//! `leftover`; the stop event carries the argv and the memory freed) or reports logged as the session's policy
//! says, what `SessionStart` records for discovery, and `keep --pid` marks.

use std::path::PathBuf;
use std::time::Duration;

use crate::act::executor::{self, Mode};
use crate::act::sentinel;
use crate::decide::belonging;
use crate::decide::leftovers::{Found, Query, find_with_spared};
use crate::model::clock;
use crate::model::deadline::Deadline;
use crate::model::leftover::{KEPT, Policy, SessionFacts, names_sessions};
use crate::model::name::SessionId;
use crate::model::record::{Identity, SessionRecord, StopTicket, is_other_host};
use crate::observe::proc;
use crate::observe::table::Table;
use crate::store::Store;

/// Finds the leftovers of `sessions` (those with an agent identity of this boot and a policy other than `off`)
/// in one observation of the process table: of each session's current agent process. What the adapters `claimed`
/// is theirs, never a leftover.
pub(crate) fn discover(
    store: &Store,
    sessions: &[SessionRecord],
    claimed: &[Identity],
) -> Vec<Found> {
    let targets = current_agents(sessions);
    discover_targets(store, &targets, &store.sessions.all(), claimed)
}

/// Each session's current agent with its facts.
fn current_agents(sessions: &[SessionRecord]) -> Vec<(&SessionRecord, Identity, SessionFacts)> {
    sessions
        .iter()
        .filter_map(|record| {
            let agent = record.agent_identity.clone()?;
            let mut facts = SessionFacts::of(record);
            facts.earlier_agents.clear();
            Some((record, agent, facts))
        })
        .collect()
}

/// `all`: every session record of the root, as read once by the caller.
fn discover_targets(
    store: &Store,
    targets: &[(&SessionRecord, Identity, SessionFacts)],
    all: &[SessionRecord],
    claimed: &[Identity],
) -> Vec<Found> {
    let since = targets
        .iter()
        .map(|(_, agent, _)| agent)
        .filter(|agent| agent.boot_id == proc::boot_id())
        .map(|agent| agent.start_ticks)
        .min();
    match since {
        Some(since) => {
            // Contained sessions need only their cgroups' members read (when every agent asked about is its
            // session's current one: an earlier agent's leftovers are found by the full observation).
            let current = targets
                .iter()
                .all(|(record, agent, _)| record.agent_identity.as_ref() == Some(agent));
            let records: Vec<SessionRecord> = targets
                .iter()
                .map(|(record, _, _)| (*record).clone())
                .collect();
            let table = current
                .then(|| crate::act::cgroup::contained_table(&records))
                .flatten()
                .unwrap_or_else(|| Table::observe(since));
            discover_in_targets(store, &table, targets, all, claimed)
        }
        None => Vec::new(),
    }
}

/// The start of the oldest agent of this boot among `sessions`: the table needs the details of what started since.
pub(crate) fn observed_since(sessions: &[SessionRecord]) -> Option<u64> {
    sessions
        .iter()
        .filter_map(|record| record.agent_identity.as_ref())
        .filter(|agent| agent.boot_id == proc::boot_id())
        .map(|agent| agent.start_ticks)
        .min()
}

/// `discover` in a table already observed (with the details of everything started since `observed_since`).
pub(crate) fn discover_in(
    store: &Store,
    table: &Table,
    sessions: &[SessionRecord],
    claimed: &[Identity],
) -> Vec<Found> {
    discover_in_targets(
        store,
        table,
        &current_agents(sessions),
        &store.sessions.all(),
        claimed,
    )
}

fn discover_in_targets(
    store: &Store,
    table: &Table,
    targets: &[(&SessionRecord, Identity, SessionFacts)],
    all: &[SessionRecord],
    claimed: &[Identity],
) -> Vec<Found> {
    let targets: Vec<&(&SessionRecord, Identity, SessionFacts)> = targets
        .iter()
        .filter(|(_, agent, facts)| agent.boot_id == proc::boot_id() && facts.policy != Policy::Off)
        .collect();
    if targets.is_empty() {
        return Vec::new();
    }
    let recorded_agents: Vec<Identity> = all
        .iter()
        .flat_map(|record| {
            SessionFacts::of(record)
                .per_agent(record.agent_identity.as_ref())
                .into_iter()
                .map(|(agent, _)| agent)
        })
        .collect();
    let live_agents = belonging::live_agents(all);
    let kept = kept_marks(store);
    let protected = proc::self_and_ancestors();
    // An agent's cgroup is shared by all its sessions (a /clear starts another): its members go to one of them.
    let mut cgroups_taken = std::collections::HashSet::new();
    targets
        .into_iter()
        .map(|(record, agent, facts)| {
            let contained = crate::act::cgroup::members_of(record, &mut cgroups_taken);
            let query = Query {
                contained: &contained,
                claimed,
                session: &record.session_id,
                agent,
                names_sessions: names_sessions(&record.agent),
                facts,
                recorded_agents: &recorded_agents,
                live_agents: &live_agents,
                protected: &protected,
                kept: &kept,
            };
            let (leftovers, spared) = find_with_spared(table, &query);
            Found {
                session: record.session_id.clone(),
                policy: facts.policy,
                leftovers,
                spared,
            }
        })
        .collect()
}

/// Files tickets for what is to be stopped and logs what is only reported (the plan `decide::leftovers::plan`
/// makes, through the executor); `dry_run` does neither. Returns the tickets to run.
pub(crate) fn act_on(store: &Store, found: &[Found], dry_run: bool) -> Vec<StopTicket> {
    let (now, host) = (clock::now_rfc3339(), proc::host_name());
    let plan = crate::decide::leftovers::plan(found, (&now, &host));
    executor::execute(store, plan, Mode::dry(dry_run)).tickets()
}

/// `reap`: the leftovers-to-be of the sessions being ended, filed (or, in a dry run, only listed) as their policy
/// says. A manual end does not wait for the agent: what it would leave behind goes with it.
pub(crate) fn for_reap(
    store: &Store,
    sessions: &[SessionId],
    claimed: &[Identity],
    dry_run: bool,
) -> (Vec<Found>, Vec<StopTicket>) {
    let records: Vec<SessionRecord> = sessions
        .iter()
        .filter_map(|id| store.sessions.get(id).ok().flatten())
        .collect();
    let found = discover(store, &records, claimed);
    let tickets = act_on(store, &found, dry_run);
    (found, tickets)
}

/// `sweep`: the leftovers of agents that are gone with nothing attending to them (no sentinel: turned off,
/// killed, or a reboot), filed as their policy says.
pub(crate) fn for_sweep(store: &Store, claimed: &[Identity], dry_run: bool) -> Vec<StopTicket> {
    let sessions = store.sessions.all();
    agents_gone_unattended(store, &sessions)
        .iter()
        .flat_map(|agent| stop_leftovers_of(store, agent, claimed, dry_run))
        .collect()
}

/// The sessions whose current agent process is `agent`, on this host.
pub(crate) fn sessions_of(store: &Store, agent: &Identity) -> Vec<SessionRecord> {
    let host = proc::host_name();
    store
        .sessions
        .all()
        .into_iter()
        .filter(|record| {
            record
                .agent_identity
                .as_ref()
                .is_some_and(|recorded| recorded.is_same_process(agent))
        })
        .filter(|record| !is_other_host(&record.host, &host))
        .collect()
}

/// Once `agent` is gone: files tickets for the leftovers it left in each session it was (or had been) the agent
/// of, not yet dealt with. A session is marked dealt with for `agent` once a look finds none of its leftovers
/// left (what a stop could not catch — a fast forker — is looked for again by the next sweep). Returns the tickets
/// to run.
pub(crate) fn stop_leftovers_of(
    store: &Store,
    agent: &Identity,
    claimed: &[Identity],
    dry_run: bool,
) -> Vec<StopTicket> {
    let host = proc::host_name();
    let all = store.sessions.all();
    let records: Vec<&SessionRecord> = all
        .iter()
        .filter(|record| !is_other_host(&record.host, &host))
        .collect();
    let targets: Vec<(&SessionRecord, Identity, SessionFacts)> = records
        .into_iter()
        .filter_map(|record| {
            let (identity, facts) = SessionFacts::of(record)
                .per_agent(record.agent_identity.as_ref())
                .into_iter()
                .find(|(identity, facts)| {
                    identity.is_same_process(agent) && facts.done_at.is_none()
                })?;
            Some((record, identity, facts))
        })
        .collect();
    let found = discover_targets(store, &targets, &all, claimed);
    let tickets = act_on(store, &found, dry_run);
    if !dry_run {
        for (record, _, facts) in &targets {
            let left = found
                .iter()
                .find(|found| found.session == record.session_id)
                .is_some_and(|found| facts.policy == Policy::Stop && !found.leftovers.is_empty());
            if !left {
                mark_done(store, &record.session_id, agent);
            }
        }
    }
    tickets
}

fn mark_done(store: &Store, session: &str, agent: &Identity) {
    let Ok(id) = SessionId::parse(session) else {
        return;
    };
    let now = clock::now_rfc3339();
    let _ = executor::update_session(
        store,
        &id,
        Deadline::after(Duration::from_millis(500)),
        |current| {
            Ok(current.cloned().map(|mut record| {
                let mut facts = SessionFacts::of(&record);
                facts.mark_done(agent, record.agent_identity.as_ref(), &now);
                facts.store_in(&mut record);
                record
            }))
        },
    );
}

/// Agent processes of this host's sessions — current or earlier — that are gone, whose leftovers nothing has dealt
/// with yet and whose sentinel is not at work on them: the sweep's share.
pub(crate) fn agents_gone_unattended(store: &Store, sessions: &[SessionRecord]) -> Vec<Identity> {
    let host = proc::host_name();
    let mut agents: Vec<Identity> = sessions
        .iter()
        .filter(|record| !is_other_host(&record.host, &host))
        .flat_map(|record| SessionFacts::of(record).per_agent(record.agent_identity.as_ref()))
        .filter(|(_, facts)| facts.done_at.is_none())
        .map(|(agent, _)| agent)
        .filter(|agent| agent.boot_id == proc::boot_id() && !proc::is_alive(agent))
        .filter(|agent| !sentinel::is_running(store, agent))
        .collect();
    agents.sort_by_key(|agent| (agent.pid, agent.start_ticks));
    agents.dedup();
    agents
}

/// What `SessionStart` records for discovery, in the same write as the rest of the session record: the policy,
/// the agent's group when it leads one, and its descendants when it names no session.
pub(crate) fn note_start(
    record: &mut SessionRecord,
    previous_agent: Option<Identity>,
    policy: Policy,
    sentinel: bool,
) {
    let mut facts = SessionFacts::of(record);
    if let Some(previous) = previous_agent.filter(|previous| {
        record
            .agent_identity
            .as_ref()
            .is_some_and(|current| !current.is_same_process(previous))
    }) {
        facts.agent_replaced(previous);
    }
    facts.policy = policy;
    facts.sentinel = sentinel;
    facts.done_at = None;
    if let Some(agent) = record.agent_identity.as_ref() {
        facts.agent_pgid = proc::stat(agent.pid)
            .ok()
            .filter(|stat| stat.pgid == agent.pid && stat.start_ticks == agent.start_ticks)
            .map(|stat| stat.pgid);
        // A contained agent's cgroup holds its descendants: no snapshot of them is needed.
        if !names_sessions(&record.agent)
            && crate::model::containment::SessionContainment::cgroup_of(record).is_none()
        {
            remember_descendants(&mut facts, agent);
        }
    }
    facts.store_in(record);
}

/// For an agent that names no session, adds the agent's descendants seen now to its session's record (waiting for
/// its lock no later than `deadline`, the hook's).
pub(crate) fn record_descendants(
    store: &Store,
    session: &SessionId,
    deadline: Deadline,
) -> anyhow::Result<()> {
    let Some(record) = store.sessions.get(session)? else {
        return Ok(());
    };
    let Some(agent) = record.agent_identity.as_ref() else {
        return Ok(());
    };
    if names_sessions(&record.agent)
        || record.is_ended()
        || crate::model::containment::SessionContainment::cgroup_of(&record).is_some()
    {
        return Ok(());
    }
    let mut facts = SessionFacts::of(&record);
    let before = facts.descendants.len();
    remember_descendants(&mut facts, agent);
    if facts.descendants.len() != before {
        write_facts(store, session, &facts, deadline)?;
    }
    Ok(())
}

/// How many descendants a record remembers at most.
const MAX_DESCENDANTS: usize = 512;

fn remember_descendants(facts: &mut SessionFacts, agent: &Identity) {
    // The process tree only (stat and argv): no environment is needed to know who is below the agent.
    let table = Table::observe(u64::MAX);
    if !table.is_live(agent) {
        return;
    }
    let hook_chain = proc::self_and_ancestors();
    // Forget those that are gone; add those seen now (never this hook and its shell).
    facts.descendants.retain(|seen| table.is_live(seen));
    for p in table.descendants_of(agent.pid) {
        let pid = p.identity.pid;
        if pid == agent.pid
            || hook_chain.contains(&pid)
            || facts.descendants.len() >= MAX_DESCENDANTS
        {
            continue;
        }
        if let Some(identity) = proc::identity_of(pid).filter(|identity| {
            identity.uid == agent.uid
                && identity.start_ticks == p.identity.start_ticks
                && !facts.descendants.contains(identity)
        }) {
            facts.descendants.push(identity);
        }
    }
}

fn write_facts(
    store: &Store,
    session: &SessionId,
    facts: &SessionFacts,
    deadline: Deadline,
) -> anyhow::Result<()> {
    executor::update_session(store, session, deadline, |current| {
        Ok(current.cloned().map(|mut record| {
            facts.store_in(&mut record);
            record
        }))
    })
    .map(drop)
}

// ---- keep marks ----

fn kept_path(store: &Store, identity: &Identity) -> PathBuf {
    store.root.join(KEPT).join(StopTicket::file_name(identity))
}

/// Marks `identity` as kept: no leftover discovery ever picks it (or its descendants).
pub(crate) fn mark_kept(store: &Store, identity: &Identity) -> anyhow::Result<()> {
    store.root.ensure_dir(&store.root.join(KEPT))?;
    store.root.write_atomic(
        &kept_path(store, identity),
        &crate::model::record::to_bytes(identity),
    )
}

/// Every `keep --pid` mark of this boot.
pub(crate) fn kept_marks(store: &Store) -> Vec<Identity> {
    let Ok(entries) = std::fs::read_dir(store.root.join(KEPT)) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| store.root.read_file(&entry.path()).ok().flatten())
        .filter_map(|bytes| serde_json::from_slice::<Identity>(&bytes).ok())
        .filter(|identity| identity.boot_id == proc::boot_id())
        .collect()
}

/// Removes the marks of processes that are gone.
pub(crate) fn prune_kept(store: &Store) {
    for identity in kept_marks(store) {
        if !proc::is_alive(&identity) {
            let _ = std::fs::remove_file(kept_path(store, &identity));
        }
    }
}
