//! Which processes are one session's leftovers: a pure decision over an observed process table (DESIGN
//! "Leftovers" and "Belonging"); no system call.

use std::collections::{HashMap, HashSet};

use serde::Serialize;

use crate::decide::belonging;
use crate::model::event::Event;
use crate::model::leftover::{Policy, SessionFacts};
use crate::model::plan::{Change, Plan};
use crate::model::reason::Reason;
use crate::model::record::{DEFAULT_GRACE_MS, Identity, StopTicket};
use crate::observe::table::{Observed, Table};

/// One session's question: which processes are its leftovers?
#[derive(Clone, Debug)]
pub(crate) struct Query<'a> {
    pub session: &'a str,
    /// The session's agent process.
    pub agent: &'a Identity,
    pub names_sessions: bool,
    pub facts: &'a SessionFacts,
    /// Agent processes that session records name (live or not: the table says).
    pub recorded_agents: &'a [Identity],
    /// The recorded agents of live sessions (`belonging::live_agents`): never a leftover.
    pub live_agents: &'a [Identity],
    /// This process and its ancestors (a hook's agent, shell and so on).
    pub protected: &'a HashSet<i32>,
    /// Processes marked with `keep --pid`.
    pub kept: &'a [Identity],
    /// The processes the session's cgroup holds (DESIGN "Containment"): its own whatever their environment says.
    pub contained: &'a [Identity],
    /// What the adapters claim (another tool's brokers, which that tool shares between sessions): never a leftover.
    pub claimed: &'a [Identity],
}

/// One leftover and how it was known to be the session's.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Leftover {
    pub pid: i32,
    #[serde(skip)]
    pub identity: Identity,
    pub argv: Vec<String>,
    pub rss_kib: u64,
    /// The variable that named the session, `descendant` or `process group`.
    pub via: &'static str,
}

/// The leftovers of one session in `table`: processes of the agent's uid, started no earlier than the agent,
/// that name the session (or, for agents that name none, that the hooks saw below the agent, or that are in the
/// dead agent's own group); never the agent, its workers, a broker's member, a kept process, a protected pid, or
/// a process still in some live agent's hands.
#[cfg(test)]
pub(crate) fn find(table: &Table, query: &Query<'_>) -> Vec<Leftover> {
    find_with_spared(table, query).0
}

/// `find`, and beside the leftovers the session's carriers that serve a live terminal (a multiplexer server in
/// use, its windows and what runs in them): reported, never stopped (DESIGN "Belonging").
pub(crate) fn find_with_spared(table: &Table, query: &Query<'_>) -> (Vec<Leftover>, Vec<Leftover>) {
    let agent_alive = table.is_live(query.agent);
    let matched: HashMap<i32, &'static str> = table
        .procs
        .values()
        .filter_map(|p| matches(table, p, query, agent_alive).map(|via| (p.identity.pid, via)))
        .collect();
    let leftover = |p: &Observed, via: &'static str| Leftover {
        pid: p.identity.pid,
        identity: p.identity.clone(),
        argv: p.argv.clone(),
        rss_kib: p.rss_kib,
        via,
    };
    let (mut found, mut spared): (Vec<Leftover>, Vec<Leftover>) = (Vec::new(), Vec::new());
    for (p, via) in matched
        .iter()
        .filter_map(|(pid, via)| table.get(*pid).map(|p| (p, *via)))
        .filter(|(p, _)| !query.protected.contains(&p.identity.pid))
        .filter(|(p, _)| !in_agents_hands(table, p, query, &matched))
        .filter(|(p, _)| !is_kept(table, p, query.kept))
    {
        if belonging::in_a_live_terminal(table, p, query.live_agents).is_some() {
            spared.push(leftover(p, "serves a live terminal"));
        } else {
            found.push(leftover(p, via));
        }
    }
    // What the stop of each will reach (its tree, by the same rules) is listed too: a dry run shows exactly what
    // the real run signals.
    let spare = belonging::Spared {
        live_agents: query.live_agents,
        kept: query.kept,
    };
    let children = table.children_index();
    // In one table a pid names one process.
    let mut listed: HashSet<i32> = found.iter().chain(&spared).map(|l| l.pid).collect();
    let mut reached: Vec<Leftover> = Vec::new();
    for chosen in &found {
        for identity in belonging::stop_reach_in(table, &children, &chosen.identity, &[], &spare) {
            let claimed = query
                .claimed
                .iter()
                .any(|claimed| claimed.is_same_process(&identity));
            if let Some(p) = table
                .get(identity.pid)
                .filter(|_| !claimed && !query.protected.contains(&identity.pid))
                .filter(|_| listed.insert(identity.pid))
            {
                reached.push(leftover(p, "descendant of a leftover"));
            }
        }
    }
    found.extend(reached);
    found.sort_by_key(|leftover| leftover.pid);
    spared.sort_by_key(|leftover| leftover.pid);
    (found, spared)
}

fn matches(
    table: &Table,
    p: &Observed,
    query: &Query<'_>,
    agent_alive: bool,
) -> Option<&'static str> {
    let agent = query.agent;
    let eligible = p.detailed
        && p.identity.uid == agent.uid
        && p.identity.boot_id == agent.boot_id
        && p.identity.start_ticks >= agent.start_ticks
        && p.identity.pid != agent.pid
        && !belonging::is_live_agent(&p.identity, query.live_agents)
        && !p.keep
        && !p.broker
        && !p.is_agent_worker()
        && !query.claimed.iter().any(|claimed| p.is(claimed));
    if !eligible {
        return None;
    }
    if query.contained.iter().any(|member| p.is(member)) {
        return Some("cgroup");
    }
    if let Some(variable) = p.carries(query.session) {
        // It names another agent process that was already running when it started: that agent's, not ours. The
        // claim (`CLAUDE_PID`) is believed only for an agent — a recorded one, or a recognised executable — never
        // for init or any other process it may name.
        let other_agent = p
            .agent_pid
            .filter(|pid| *pid != agent.pid)
            .is_some_and(|pid| {
                table.get(pid).is_some_and(|owner| {
                    owner.identity.start_ticks <= p.identity.start_ticks
                        && (owner.is_agent_executable()
                            || query
                                .recorded_agents
                                .iter()
                                .any(|recorded| owner.is(recorded)))
                })
            });
        return (!other_agent).then_some(variable);
    }
    if query.names_sessions {
        return None;
    }
    if query.facts.descendants.iter().any(|seen| p.is(seen)) {
        return Some("descendant");
    }
    let own_group = query.facts.agent_pgid == Some(agent.pid) && p.pgid == agent.pid;
    (!agent_alive && own_group).then_some("process group")
}

/// True when a live agent process, an agent's worker, or an agent executable that is not itself one of this
/// session's leftovers (a nested agent being stopped) is among `p`'s ancestors.
fn in_agents_hands(
    table: &Table,
    p: &Observed,
    query: &Query<'_>,
    matched: &HashMap<i32, &'static str>,
) -> bool {
    table.ancestors(p.identity.pid).any(|ancestor| {
        ancestor.is(query.agent)
            || query.recorded_agents.iter().any(|agent| ancestor.is(agent))
            || ancestor.is_agent_worker()
            || (ancestor.is_agent_executable() && !matched.contains_key(&ancestor.identity.pid))
    })
}

fn is_kept(table: &Table, p: &Observed, kept: &[Identity]) -> bool {
    kept.iter()
        .any(|mark| p.is(mark) || table.ancestors(p.identity.pid).any(|a| a.is(mark)))
}

/// One session's leftovers as found, with what its policy says to do.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Found {
    pub session: String,
    pub policy: Policy,
    pub leftovers: Vec<Leftover>,
    /// Carriers of the session that serve a live terminal: reported, never stopped.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub spared: Vec<Leftover>,
}

/// The stop ticket of one leftover: the process alone (its children are leftovers of their own), default grace;
/// `stamp` is when and on which host it is filed.
pub(crate) fn ticket_for(session: &str, leftover: &Leftover, stamp: (&str, &str)) -> StopTicket {
    let mut ticket = StopTicket::new(
        leftover.identity.clone(),
        None,
        Reason::Leftover.as_str(),
        DEFAULT_GRACE_MS,
        "leftover".to_owned(),
        stamp,
    );
    ticket.session = Some(session.to_owned());
    ticket.argv = Some(leftover.argv.clone());
    ticket.rss_kib = Some(leftover.rss_kib);
    ticket
}

/// What the leftovers found ask for, as each session's policy says: a stop for each leftover under `stop`, a
/// report for each under `report`, and a report for each spared carrier (reported, never stopped).
pub(crate) fn plan(found: &[Found], stamp: (&str, &str)) -> Plan {
    let mut plan = Plan::default();
    for found in found {
        let session = Some(found.session.as_str());
        for spared in &found.spared {
            let mut event = Event::planned("leftover", "spared")
                .reason(&Reason::Leftover)
                .session(session)
                .pid(spared.pid)
                .detail(format!("{}: reported, never stopped", spared.via));
            event.argv = Some(spared.argv.clone());
            plan.push(Change::Report(event));
        }
        for leftover in &found.leftovers {
            match found.policy {
                Policy::Stop => {
                    plan.push(Change::Stop(ticket_for(&found.session, leftover, stamp)));
                }
                Policy::Report => {
                    let mut event = Event::planned("leftover", "reported")
                        .reason(&Reason::Leftover)
                        .session(session)
                        .pid(leftover.pid)
                        .detail(format!("via {}; policy report: left running", leftover.via));
                    event.argv = Some(leftover.argv.clone());
                    event.rss_kib = Some(leftover.rss_kib);
                    plan.push(Change::Report(event));
                }
                Policy::Off => {}
            }
        }
    }
    plan
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::model::leftover::agent_continues;
    use crate::model::record::SessionRecord;
    use crate::observe::table::{read_environ, rss_kib_of};

    const SESSION: &str = "s-1";

    fn found(policy: Policy) -> Found {
        let leftover = |pid: i32, via: &'static str| Leftover {
            pid,
            identity: identity(pid, 50),
            argv: vec!["sleep".into(), "600".into()],
            rss_kib: 300,
            via,
        };
        Found {
            session: SESSION.into(),
            policy,
            leftovers: vec![leftover(41, "descendant")],
            spared: vec![leftover(42, "tmux server")],
        }
    }

    #[test]
    fn a_plan_stops_or_reports_as_the_policy_says_and_always_reports_the_spared() {
        let stamp = ("2026-01-02T00:00:00Z", "host-a");
        let stop = plan(&[found(Policy::Stop)], stamp);
        let [Change::Report(spared), Change::Stop(ticket)] = stop.0.as_slice() else {
            panic!("{stop:?}");
        };
        assert_eq!(
            (spared.action.as_str(), spared.result.as_str()),
            ("leftover", "spared")
        );
        assert_eq!(spared.pid, Some(42));
        assert!(spared.ts.is_empty(), "stamped when applied, not decided");
        assert_eq!(ticket.identity.pid, 41);
        assert_eq!(ticket.reason, "leftover");
        assert_eq!(ticket.session.as_deref(), Some(SESSION));
        assert_eq!(
            (ticket.host.as_str(), ticket.rss_kib),
            ("host-a", Some(300))
        );
        let report = plan(&[found(Policy::Report)], stamp);
        let [Change::Report(_), Change::Report(reported)] = report.0.as_slice() else {
            panic!("{report:?}");
        };
        assert_eq!(reported.result, "reported");
        assert_eq!(reported.rss_kib, Some(300));
        assert_eq!(
            plan(&[found(Policy::Off)], stamp).0.len(),
            1,
            "only the spared"
        );
    }

    pub(crate) fn identity(pid: i32, start_ticks: u64) -> Identity {
        Identity {
            boot_id: "boot".into(),
            pid_ns: None,
            pid,
            start_ticks,
            uid: 1000,
        }
    }

    /// A process of ours, read in full.
    pub(crate) fn process(pid: i32, parent: i32, start: u64, argv: &str) -> Observed {
        Observed {
            identity: identity(pid, start),
            ppid: parent,
            pgid: pid,
            comm: argv.split(' ').next().unwrap_or_default().to_owned(),
            argv: argv.split(' ').map(str::to_owned).collect(),
            detailed: true,
            rss_kib: 100,
            ..Observed::default()
        }
    }

    /// A process of ours naming the session through Claude Code's variable.
    fn claude_carrier(pid: i32, parent: i32, start: u64, argv: &str) -> Observed {
        carrying(
            process(pid, parent, start, argv),
            "CLAUDE_CODE_SESSION_ID",
            SESSION,
        )
    }

    fn carrying(mut p: Observed, variable: &'static str, session: &str) -> Observed {
        p.sessions.push((variable, session.to_owned()));
        p
    }

    struct World {
        table: Table,
        agent: Identity,
        facts: SessionFacts,
        recorded: Vec<Identity>,
        live: Vec<Identity>,
        protected: HashSet<i32>,
        kept: Vec<Identity>,
        names_sessions: bool,
    }

    impl World {
        fn new(procs: Vec<Observed>) -> Self {
            World {
                table: Table::from_processes(procs),
                agent: identity(100, 50),
                facts: SessionFacts::default(),
                recorded: vec![identity(100, 50)],
                live: Vec::new(),
                protected: HashSet::new(),
                kept: Vec::new(),
                names_sessions: true,
            }
        }

        fn pids(&self) -> Vec<i32> {
            let query = Query {
                session: SESSION,
                agent: &self.agent,
                names_sessions: self.names_sessions,
                facts: &self.facts,
                recorded_agents: &self.recorded,
                live_agents: &self.live,
                protected: &self.protected,
                kept: &self.kept,
                contained: &[],
                claimed: &[],
            };
            find(&self.table, &query)
                .into_iter()
                .map(|l| l.pid)
                .collect()
        }
    }

    fn init() -> Observed {
        process(1, 0, 1, "init")
    }

    #[test]
    fn carriers_reparented_to_init_are_leftovers_once_the_agent_is_gone() {
        let world = World::new(vec![
            init(),
            claude_carrier(200, 1, 60, "sleep 600"),
            carrying(
                process(201, 1, 61, "node mcp.js"),
                "QWEN_CODE_SESSION_ID",
                SESSION,
            ),
            carrying(
                process(202, 1, 62, "sleep 1"),
                "CLAUDE_CODE_SESSION_ID",
                "other",
            ),
        ]);
        assert_eq!(world.pids(), [200, 201]);
    }

    #[test]
    fn under_a_live_agent_is_not_a_leftover() {
        let mut world = World::new(vec![
            init(),
            process(100, 1, 50, "claude"),
            claude_carrier(200, 100, 60, "sleep 600"),
            claude_carrier(300, 1, 70, "setsid-job"),
        ]);
        assert_eq!(world.pids(), [300], "the agent's own child is its business");
        // Another recorded agent, alive, holding a carrier of our session (after /clear, its MCP server).
        world.table = Table::from_processes(vec![
            init(),
            process(400, 1, 55, "python3 agent.py"),
            claude_carrier(401, 400, 80, "mcp"),
        ]);
        world.recorded.push(identity(400, 55));
        assert!(world.pids().is_empty());
    }

    #[test]
    fn agent_workers_and_what_they_hold_are_never_leftovers() {
        let world = World::new(vec![
            init(),
            claude_carrier(200, 1, 60, "claude --bg-pty-host"),
            claude_carrier(201, 200, 61, "bash"),
            claude_carrier(202, 1, 62, "claude --bg-spare"),
        ]);
        assert!(world.pids().is_empty());
    }

    #[test]
    fn a_nested_agent_of_the_session_goes_with_its_children() {
        let world = World::new(vec![
            init(),
            claude_carrier(200, 1, 60, "claude -p x"),
            claude_carrier(201, 200, 61, "sleep 9"),
            // Someone else's claude: what is under it stays.
            process(300, 1, 40, "claude"),
            claude_carrier(301, 300, 70, "sleep 9"),
        ]);
        assert_eq!(world.pids(), [200, 201]);
    }

    #[test]
    fn brokers_kept_older_foreign_and_protected_processes_stay() {
        let mut broker = claude_carrier(200, 1, 60, "broker");
        broker.broker = true;
        let mut keep_env = claude_carrier(201, 1, 60, "keep");
        keep_env.keep = true;
        let older = claude_carrier(202, 1, 40, "old");
        let mut foreign = claude_carrier(203, 1, 60, "x");
        foreign.identity.uid = 0;
        let mut unread = claude_carrier(204, 1, 60, "y");
        unread.detailed = false;
        let marked = claude_carrier(205, 1, 60, "kept");
        let under_marked = claude_carrier(206, 205, 61, "child");
        let hook = claude_carrier(207, 1, 60, "hook");
        let mut world = World::new(vec![
            init(),
            broker,
            keep_env,
            older,
            foreign,
            unread,
            marked,
            under_marked,
            hook,
        ]);
        world.kept.push(identity(205, 60));
        world.protected.insert(207);
        assert!(world.pids().is_empty(), "{:?}", world.pids());
    }

    #[test]
    fn a_carrier_naming_another_live_agent_is_that_agents() {
        let mut p = claude_carrier(200, 1, 60, "sleep");
        p.agent_pid = Some(500);
        let mut world = World::new(vec![init(), p.clone(), process(500, 1, 55, "claude")]);
        assert!(world.pids().is_empty());
        // The pid it names is gone (or was reused later): ours.
        world.table = Table::from_processes(vec![init(), p.clone(), process(500, 1, 65, "other")]);
        assert_eq!(world.pids(), [200]);
        // It names init, or some other process that is no agent: a claim not believed.
        p.agent_pid = Some(1);
        world.table = Table::from_processes(vec![init(), p.clone()]);
        assert_eq!(world.pids(), [200]);
        p.agent_pid = Some(500);
        world.table =
            Table::from_processes(vec![init(), p, process(500, 1, 55, "python3 server.py")]);
        assert_eq!(world.pids(), [200]);
    }

    #[test]
    fn agents_that_name_no_session_use_descendants_and_their_own_group() {
        let mut grouped = process(201, 1, 61, "sleep");
        grouped.pgid = 100;
        let mut world = World::new(vec![
            init(),
            process(200, 1, 60, "daemon"),
            grouped.clone(),
            process(202, 1, 62, "unrelated"),
        ]);
        world.names_sessions = false;
        world.facts.descendants.push(identity(200, 60));
        world.facts.agent_pgid = Some(100);
        assert_eq!(world.pids(), [200, 201]);
        // A group the agent did not lead stands for nothing.
        world.facts.agent_pgid = Some(99);
        assert_eq!(world.pids(), [200]);
        // While the agent lives its group members are its own.
        world.facts.agent_pgid = Some(100);
        world.table = Table::from_processes(vec![init(), process(100, 1, 50, "gemini"), grouped]);
        assert!(world.pids().is_empty());
    }

    /// What a leftover's stop reaches is listed with it (a dry run lists what the real run signals): its child
    /// that scrubbed the variable, not its kept child, nor a process merely sharing its group.
    #[test]
    fn a_leftovers_tree_is_listed_with_it_and_nothing_beside_it() {
        let mut kept = process(202, 200, 62, "kept");
        kept.keep = true;
        let mut same_group = process(203, 1, 63, "neighbour");
        same_group.pgid = 200;
        let world = World::new(vec![
            init(),
            claude_carrier(200, 1, 60, "leader"),
            process(201, 200, 61, "scrubbed-child"),
            kept,
            same_group,
        ]);
        assert_eq!(world.pids(), [200, 201]);
    }

    #[test]
    fn facts_round_trip_through_the_record() {
        let mut record = SessionRecord::new("a", "h".into(), "2026-01-01T00:00:00Z");
        assert!(SessionFacts::of(&record).sentinel, "on by default");
        let facts = SessionFacts {
            policy: Policy::Report,
            sentinel: false,
            agent_pgid: Some(4),
            descendants: vec![identity(5, 6)],
            done_at: None,
            earlier_agents: Vec::new(),
        };
        facts.store_in(&mut record);
        assert_eq!(SessionFacts::of(&record), facts);
    }

    #[test]
    fn environment_is_read_for_carriers_keep_and_broker_marks() {
        let mut p = Observed::default();
        read_environ(
            &mut p,
            b"A=1\0CLAUDE_CODE_SESSION_ID=s\0CLAUDE_PID=42\0SESSION_REAPER_KEEP=1\0SESSION_REAPER_BROKER=/w/d\0",
        );
        assert_eq!(p.sessions, [("CLAUDE_CODE_SESSION_ID", "s".to_owned())]);
        assert_eq!(p.agent_pid, Some(42));
        assert!(p.keep && p.broker);
        assert_eq!(rss_kib_of("1000 512 100 1 0 200 0"), 512 * 4096 / 1024);
    }

    #[test]
    fn clear_compact_and_resume_leave_the_agent_running() {
        for reason in ["clear", "compact", "resume"] {
            assert!(agent_continues(Some(reason)));
        }
        for reason in [
            None,
            Some("other"),
            Some("prompt_input_exit"),
            Some("logout"),
        ] {
            assert!(!agent_continues(reason));
        }
    }
}
