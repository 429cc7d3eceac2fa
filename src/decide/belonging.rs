//! Who owns a process (DESIGN "Belonging"): which process a hook may take as its session's agent, which live
//! agents no stop may reach, which carriers of a session's variable serve someone else (a terminal multiplexer
//! in use), and how far the stop of a leftover may reach. Pure functions over what `observe` read; no system call.

use std::collections::{HashMap, HashSet};

use crate::agents::{AGENTS, Agent};
use crate::model::record::{Identity, SessionRecord};
use crate::observe::Ancestor;
use crate::observe::table::{Observed, Table};

/// The agents a hook may take as its session's agent: `wanted` (the `--agent` flag and the agent the payload
/// showed), and the agents that run those agents' hook files (Cursor and Copilot run Claude's). Empty: any agent.
pub(crate) fn acceptable_agents(wanted: &[Agent]) -> Vec<Agent> {
    let mut accepted: Vec<Agent> = wanted.to_vec();
    for spec in AGENTS {
        if wanted.iter().any(|agent| spec.also_runs.contains(agent))
            && !accepted.contains(&spec.agent)
        {
            accepted.push(spec.agent);
        }
    }
    accepted
}

/// The hook's agent process among its `ancestors` (nearest first): a process the agents table recognises, of our
/// uid, never pid 1, of an acceptable agent (`acceptable_agents`; `--agent` narrows, it never promotes a
/// non-agent). An agent-pid variable (`CLAUDE_PID`) picks among them only when it names such an ancestor;
/// otherwise the nearest one is the agent. `None`: no agent powers (no group, no descendants, no sentinel).
pub(crate) fn hook_agent(
    ancestors: &[Ancestor],
    named_by_env: &[i32],
    accepted: &[Agent],
    own_uid: u32,
) -> Option<i32> {
    let is_agent = |ancestor: &&Ancestor| {
        ancestor.pid > 1
            && ancestor.uid == own_uid
            && ancestor
                .agent
                .is_some_and(|agent| accepted.is_empty() || accepted.contains(&agent))
    };
    let candidates: Vec<&Ancestor> = ancestors.iter().filter(is_agent).collect();
    candidates
        .iter()
        .find(|ancestor| named_by_env.contains(&ancestor.pid))
        .or_else(|| candidates.first())
        .map(|ancestor| ancestor.pid)
}

/// Why `--owner-pid` cannot name an agent: init, or another user's process. `None` when it may.
pub(crate) fn owner_pid_refusal(pid: i32, uid: u32, own_uid: u32) -> Option<String> {
    if pid <= 1 {
        Some(format!(
            "--owner-pid {pid}: pid 0 and 1 are never an agent process"
        ))
    } else if uid != own_uid {
        Some(format!(
            "--owner-pid {pid}: the process belongs to uid {uid}, not to us (uid {own_uid})"
        ))
    } else {
        None
    }
}

/// The agent processes of the sessions in `records` that have not ended: what no stop may reach while they live.
pub(crate) fn live_agents(records: &[SessionRecord]) -> Vec<Identity> {
    records
        .iter()
        .filter(|record| !record.is_ended())
        .filter_map(|record| record.agent_identity.clone())
        .collect()
}

/// The live session whose recorded agent process `identity` is, if any.
pub(crate) fn session_of_agent<'r>(
    records: &'r [SessionRecord],
    identity: &Identity,
) -> Option<&'r str> {
    records
        .iter()
        .filter(|record| !record.is_ended())
        .find(|record| {
            record
                .agent_identity
                .as_ref()
                .is_some_and(|agent| agent.is_same_process(identity))
        })
        .map(|record| record.session_id.as_str())
}

/// True when `identity` is one of `live_agents` (the recorded agents of live sessions): never a leftover, a broker,
/// a member, nor a signal's target.
pub(crate) fn is_live_agent(identity: &Identity, live_agents: &[Identity]) -> bool {
    live_agents
        .iter()
        .any(|agent| agent.is_same_process(identity))
}

// ---- Terminal multiplexers: what serves a live terminal is reported, never stopped ----

/// Shells: a window running one with no command (`-bash`, `zsh -l`) is a person's terminal.
const SHELLS: &[&str] = &["sh", "bash", "dash", "zsh", "fish", "ksh", "tcsh", "csh"];

/// A client of a terminal multiplexer: a person's terminal attached to one of its servers.
fn is_multiplexer_client(p: &Observed) -> bool {
    p.comm == "tmux: client" || p.comm == "screen" || (p.comm == "tmux" && !p.argv.is_empty())
}

/// The socket a tmux process talks to, as its argv names it (`-L name`, `-S path`; `default` otherwise). Screen has
/// no such name: every screen client counts for every screen server.
fn socket_label(p: &Observed) -> Option<String> {
    if p.comm == "SCREEN" || p.comm == "screen" {
        return None;
    }
    let mut words = p.argv.iter().skip(1);
    while let Some(word) = words.next() {
        if word == "-L" || word == "-S" {
            return words.next().cloned();
        }
        if let Some(value) = word.strip_prefix("-L").or_else(|| word.strip_prefix("-S"))
            && !value.is_empty()
        {
            return Some(value.to_owned());
        }
        if !word.starts_with('-') {
            break;
        }
    }
    Some("default".to_owned())
}

/// A shell run for a person: a shell with no `-c` and no script (`-bash`, `bash -l`, `zsh -i`).
pub(crate) fn is_interactive_shell(argv: &[String]) -> bool {
    let Some((program, words)) = argv.split_first() else {
        return false;
    };
    let base = program
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .trim_start_matches('-');
    SHELLS.contains(&base)
        && !words
            .iter()
            .any(|arg| arg == "-c" || (!arg.starts_with('-') && !arg.starts_with('+')))
}

/// True when `p` runs an agent: one a live session records, or a recognised agent executable.
fn runs_an_agent(p: &Observed, live_agents: &[Identity]) -> bool {
    is_live_agent(&p.identity, live_agents) || p.is_agent_executable()
}

/// True when the multiplexer server `server` serves a live terminal: a client of its socket is attached (same
/// uid), or one of its windows is, or holds, a live agent or an interactive shell.
pub(crate) fn serves_a_live_terminal(
    table: &Table,
    server: &Observed,
    live_agents: &[Identity],
) -> bool {
    let label = socket_label(server);
    let attached = table.procs.values().any(|client| {
        client.identity.pid != server.identity.pid
            && client.ppid != server.identity.pid
            && is_multiplexer_client(client)
            // A client whose details were not read (older than the agents of interest, or another user's) may
            // be attached: in doubt, the server is spared.
            && (client.identity.uid == server.identity.uid || !client.detailed)
            && (label.is_none() || socket_label(client) == label)
    });
    attached
        || table
            .descendants_of(server.identity.pid)
            .into_iter()
            .filter(|p| p.identity.pid != server.identity.pid)
            .any(|p| runs_an_agent(p, live_agents) || is_interactive_shell(&p.argv))
}

/// The multiplexer server in live use that `p` is, or runs under (a window of it, or anything in one): reported,
/// never stopped.
pub(crate) fn in_a_live_terminal<'t>(
    table: &'t Table,
    p: &'t Observed,
    live_agents: &[Identity],
) -> Option<&'t Observed> {
    std::iter::once(p)
        .chain(table.ancestors(p.identity.pid))
        .find(|candidate| candidate.is_multiplexer_server())
        .filter(|server| serves_a_live_terminal(table, server, live_agents))
}

// ---- How far a leftover's stop reaches ----

/// What a leftover's stop must never reach, besides what the signal guard refuses.
#[derive(Clone, Debug, Default)]
pub(crate) struct Spared<'a> {
    pub live_agents: &'a [Identity],
    /// `keep --pid` marks.
    pub kept: &'a [Identity],
}

/// The descendants of a leftover being stopped (`leader`) and of its members already known (`known`) that the
/// stop reaches: processes of the leader's uid and boot, started no earlier than it, that are not marked to be
/// kept (`SESSION_REAPER_KEEP=1` or `keep --pid`, nor below such a mark), not a broker's, not a live agent and not
/// below one, not in a terminal in live use. Never a group or session expansion: only the tree below.
pub(crate) fn stop_reach(
    table: &Table,
    leader: &Identity,
    known: &[Identity],
    spared: &Spared<'_>,
) -> Vec<Identity> {
    stop_reach_in(table, &table.children_index(), leader, known, spared)
}

/// `stop_reach` with the table's `children_index` built once for many leaders: the tree below each root is walked
/// from the top down, and nothing below a spared process is reached through it.
pub(crate) fn stop_reach_in(
    table: &Table,
    children: &HashMap<i32, Vec<i32>>,
    leader: &Identity,
    known: &[Identity],
    spared: &Spared<'_>,
) -> Vec<Identity> {
    let roots: HashSet<i32> = std::iter::once(leader)
        .chain(known)
        .filter(|root| table.is_live(root))
        .map(|root| root.pid)
        .collect();
    // A root below another root is walked as a root of its own: its tree is never reached through the other.
    let mut seen = roots.clone();
    let mut below: Vec<i32> = roots.iter().copied().collect();
    let mut reached: Vec<Identity> = Vec::new();
    while let Some(parent) = below.pop() {
        for child in children.get(&parent).into_iter().flatten() {
            if !seen.insert(*child) {
                continue;
            }
            let Some(p) = table.get(*child).filter(|p| !is_spared(table, p, spared)) else {
                continue;
            };
            let id = &p.identity;
            if id.uid == leader.uid
                && id.boot_id == leader.boot_id
                && id.start_ticks >= leader.start_ticks
            {
                reached.push(id.clone());
            }
            below.push(*child);
        }
    }
    reached.sort_by_key(|identity| identity.pid);
    reached
}

fn is_spared(table: &Table, p: &Observed, spared: &Spared<'_>) -> bool {
    p.keep
        || p.broker
        || spared.kept.iter().any(|mark| p.is(mark))
        || runs_an_agent(p, spared.live_agents)
        || (p.is_multiplexer_server() && serves_a_live_terminal(table, p, spared.live_agents))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decide::leftovers::tests::{identity, process};

    fn ancestor(pid: i32, agent: Option<Agent>) -> Ancestor {
        Ancestor {
            pid,
            uid: 1000,
            agent,
        }
    }

    #[test]
    fn only_a_recognised_agent_of_ours_gets_agent_powers() {
        let daemon = [ancestor(300, None), ancestor(1, None)];
        assert_eq!(
            hook_agent(&daemon, &[], &[], 1000),
            None,
            "a daemon is no agent"
        );
        assert_eq!(
            hook_agent(&daemon, &[], &[Agent::Gemini], 1000),
            None,
            "--agent narrows, never promotes"
        );
        let chain = [
            ancestor(400, None),
            ancestor(300, Some(Agent::Claude)),
            ancestor(200, Some(Agent::Gemini)),
            ancestor(1, Some(Agent::Claude)),
        ];
        assert_eq!(hook_agent(&chain, &[], &[], 1000), Some(300));
        assert_eq!(hook_agent(&chain, &[], &[Agent::Gemini], 1000), Some(200));
        assert_eq!(hook_agent(&chain, &[], &[Agent::Qwen], 1000), None);
        assert_eq!(hook_agent(&chain, &[], &[], 0), None, "another uid's");
        assert_eq!(
            hook_agent(&[ancestor(1, Some(Agent::Claude))], &[], &[], 1000),
            None,
            "never pid 1"
        );
    }

    #[test]
    fn an_agent_pid_variable_is_believed_only_for_a_recognised_ancestor() {
        let chain = [
            ancestor(400, None),
            ancestor(300, Some(Agent::Claude)),
            ancestor(200, Some(Agent::Claude)),
        ];
        assert_eq!(hook_agent(&chain, &[200], &[], 1000), Some(200));
        assert_eq!(
            hook_agent(&chain, &[1], &[], 1000),
            Some(300),
            "CLAUDE_PID=1"
        );
        assert_eq!(
            hook_agent(&chain, &[400], &[], 1000),
            Some(300),
            "naming the wrapper shell"
        );
        assert_eq!(hook_agent(&[ancestor(400, None)], &[400], &[], 1000), None);
    }

    #[test]
    fn cursor_and_copilot_may_run_claudes_hooks() {
        let accepted = acceptable_agents(&[Agent::Claude]);
        assert!(accepted.contains(&Agent::Claude));
        assert!(accepted.contains(&Agent::Cursor));
        assert!(!accepted.contains(&Agent::Gemini));
    }

    #[test]
    fn owner_pid_is_never_init_or_another_users() {
        assert!(owner_pid_refusal(1, 0, 0).is_some());
        assert!(owner_pid_refusal(42, 1000, 0).is_some());
        assert_eq!(owner_pid_refusal(42, 0, 0), None);
    }

    fn argv(text: &str) -> Vec<String> {
        text.split(' ').map(str::to_owned).collect()
    }

    #[test]
    fn interactive_shells_are_shells_with_no_command() {
        for shell in ["-bash", "bash", "/bin/zsh -l", "bash -i", "-sh"] {
            assert!(is_interactive_shell(&argv(shell)), "{shell}");
        }
        for other in [
            "sh -c npm run dev",
            "bash script.sh",
            "npm run dev",
            "sleep 9",
        ] {
            assert!(!is_interactive_shell(&argv(other)), "{other}");
        }
    }

    fn named(mut p: Observed, comm: &str) -> Observed {
        comm.clone_into(&mut p.comm);
        p
    }

    #[test]
    fn a_multiplexer_in_live_use_is_spared_and_a_forgotten_one_is_not() {
        let server = named(process(200, 1, 60, "tmux -L dev new -d"), "tmux: server");
        let dev = process(201, 200, 61, "sh -c npm-run-dev");
        let forgotten = Table::from_processes(vec![server.clone(), dev.clone()]);
        assert!(!serves_a_live_terminal(&forgotten, &server, &[]));
        assert!(in_a_live_terminal(&forgotten, &dev, &[]).is_none());
        // The user's window: an interactive shell.
        let used = Table::from_processes(vec![
            server.clone(),
            dev.clone(),
            process(202, 200, 70, "-bash"),
        ]);
        assert!(in_a_live_terminal(&used, &dev, &[]).is_some());
        // A second agent's window.
        let mut agent_window = process(203, 200, 70, "python3 agent.py");
        agent_window.identity = identity(203, 70);
        let with_agent =
            Table::from_processes(vec![server.clone(), dev.clone(), agent_window.clone()]);
        assert!(serves_a_live_terminal(
            &with_agent,
            &server,
            &[identity(203, 70)]
        ));
        assert!(!serves_a_live_terminal(&with_agent, &server, &[]));
        // An attached client of the same socket; one of another socket does not count.
        let client = named(process(300, 299, 80, "tmux -L dev attach"), "tmux: client");
        let attached = Table::from_processes(vec![server.clone(), dev.clone(), client]);
        assert!(serves_a_live_terminal(&attached, &server, &[]));
        let elsewhere = named(process(300, 299, 80, "tmux attach"), "tmux: client");
        let other = Table::from_processes(vec![server.clone(), dev, elsewhere]);
        assert!(!serves_a_live_terminal(&other, &server, &[]));
    }

    #[test]
    fn a_stop_reaches_the_tree_below_and_nothing_kept_or_beside_it() {
        let mut kept = process(202, 200, 62, "kept");
        kept.keep = true;
        let mut grouped = process(205, 1, 65, "same-group");
        grouped.pgid = 200;
        let table = Table::from_processes(vec![
            process(1, 0, 1, "init"),
            process(200, 1, 60, "leader"),
            process(201, 200, 61, "child"),
            kept,
            process(203, 202, 63, "under-kept"),
            process(204, 201, 64, "grandchild"),
            grouped,
            process(206, 200, 40, "older-than-the-leader?"),
        ]);
        let reached = stop_reach(&table, &identity(200, 60), &[], &Spared::default());
        let pids: Vec<i32> = reached.iter().map(|id| id.pid).collect();
        assert_eq!(pids, [201, 204]);
        // A live agent below the leader, and what it holds, stay.
        let table = Table::from_processes(vec![
            process(200, 1, 60, "leader"),
            process(201, 200, 61, "claude"),
            process(202, 201, 62, "its-tool"),
        ]);
        assert!(stop_reach(&table, &identity(200, 60), &[], &Spared::default()).is_empty());
    }

    #[test]
    fn a_stop_reaches_below_its_known_members_and_through_what_it_does_not_signal() {
        let table = Table::from_processes(vec![
            process(1, 0, 1, "init"),
            process(200, 1, 60, "leader"),
            // A member already known, reparented to init when its parent died: its tree is still reached.
            process(210, 1, 70, "known-member"),
            process(211, 210, 71, "under-the-member"),
            // Older than the leader (never signalled) but not spared: what runs below it is reached.
            process(220, 200, 50, "older"),
            process(221, 220, 72, "under-the-older"),
            process(230, 1, 73, "beside"),
        ]);
        let reached = stop_reach(
            &table,
            &identity(200, 60),
            &[identity(210, 70), identity(999, 1)],
            &Spared::default(),
        );
        let pids: Vec<i32> = reached.iter().map(|id| id.pid).collect();
        assert_eq!(
            pids,
            [211, 221],
            "never a root, a gone member or what is beside"
        );
        let children = table.children_index();
        assert_eq!(
            stop_reach_in(
                &table,
                &children,
                &identity(200, 60),
                &[],
                &Spared::default()
            ),
            stop_reach(&table, &identity(200, 60), &[], &Spared::default()),
        );
    }
}
