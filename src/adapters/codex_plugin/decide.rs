//! Pure verdicts on the plugin's brokers: whether a recorded pid checks out, who owns a broker and whether they are
//! still there, whether it is busy, and what a session's end or a sweep does with it. No I/O here.

use std::time::Duration;

use crate::store::events::Reason;

/// When the adapter runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Occasion<'a> {
    /// Session `session` ends (`SessionEnd`, `reap`, a crashed session's end in a sweep).
    SessionEnd { session: &'a str, reason: Reason },
    /// A sweep: owners gone, ownerless and reparented, idle.
    Sweep { idle_ttl: Duration },
}

impl Occasion<'_> {
    /// The session that is ending, if any: its jobs and ownership do not hold its brokers.
    pub(crate) fn ending(&self) -> Option<&str> {
        match self {
            Occasion::SessionEnd { session, .. } => Some(session),
            Occasion::Sweep { .. } => None,
        }
    }
}

/// What checking the process a `broker.json` names found (DESIGN "Never signal the wrong process").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ProcessCheck {
    /// Same uid, argv runs `app-server-broker.mjs` with the recorded endpoint: this is the broker.
    Verified,
    /// The record names no pid.
    NoPid,
    /// No such process: the broker is gone.
    Dead,
    /// A live process of another program has the pid now: the broker is gone, the process is not ours to touch.
    NotABroker,
    /// Another user's process.
    ForeignUid,
    /// A broker, but its argv names another endpoint than the record: never signalled through this record.
    EndpointMismatch,
    /// The pid is not the broker, yet something listens on the recorded socket: the broker lives where its pid
    /// means something else (another pid namespace). Neither signalled nor cleaned.
    ListeningElsewhere,
}

impl ProcessCheck {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            ProcessCheck::Verified => "verified",
            ProcessCheck::NoPid => "no_pid",
            ProcessCheck::Dead => "dead",
            ProcessCheck::NotABroker => "not_a_broker",
            ProcessCheck::ForeignUid => "foreign_uid",
            ProcessCheck::EndpointMismatch => "endpoint_mismatch",
            ProcessCheck::ListeningElsewhere => "listening_elsewhere",
        }
    }
}

/// The argv facts `check_process` needs.
pub(crate) struct ArgvFacts<'a> {
    pub argv: &'a [String],
    pub uid: u32,
}

/// Judges the process a record names (`process`: `None` when there is none); `socket_answers`: whether something
/// listens on the recorded socket.
pub(crate) fn check_process(
    recorded_pid: Option<i32>,
    process: Option<&ArgvFacts<'_>>,
    endpoint: Option<&str>,
    our_uid: u32,
    socket_answers: bool,
) -> ProcessCheck {
    if recorded_pid.is_none_or(|pid| pid <= 1) {
        return ProcessCheck::NoPid;
    }
    let not_the_broker = || {
        if socket_answers {
            ProcessCheck::ListeningElsewhere
        } else {
            ProcessCheck::Dead
        }
    };
    let Some(process) = process else {
        return not_the_broker();
    };
    if process.uid != our_uid {
        ProcessCheck::ForeignUid
    } else if !runs_broker(process.argv) {
        match not_the_broker() {
            ProcessCheck::Dead => ProcessCheck::NotABroker,
            elsewhere => elsewhere,
        }
    } else if !endpoint.is_some_and(|endpoint| names_endpoint(process.argv, endpoint)) {
        ProcessCheck::EndpointMismatch
    } else {
        ProcessCheck::Verified
    }
}

/// True when argv runs the plugin's broker: `node …/app-server-broker.mjs serve --endpoint E …` (node as the
/// plugin starts it: its companion's `process.execPath`).
pub(crate) fn runs_broker(argv: &[String]) -> bool {
    let base = |arg: Option<&String>| {
        arg.and_then(|arg| std::path::Path::new(arg).file_name())
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    base(argv.first()).starts_with("node")
        && base(argv.get(1)) == super::BROKER_SCRIPT
        && argv.get(2).is_some_and(|arg| arg == "serve")
        && flag_value(argv, "--endpoint").is_some()
}

/// True when argv's `--endpoint` is `endpoint`, or names its socket path.
pub(crate) fn names_endpoint(argv: &[String], endpoint: &str) -> bool {
    let path = socket_path(endpoint);
    flag_value(argv, "--endpoint").is_some_and(|value| {
        value == endpoint || path.is_some_and(|path| socket_path(value) == Some(path))
    })
}

/// The socket path of a `unix:` endpoint.
pub fn socket_path(endpoint: &str) -> Option<&str> {
    endpoint
        .strip_prefix("unix:")
        .filter(|path| !path.is_empty())
}

/// The value after `flag` in argv (`--flag V` or `--flag=V`).
pub(crate) fn flag_value<'a>(argv: &'a [String], flag: &str) -> Option<&'a str> {
    argv.iter().enumerate().find_map(|(index, arg)| {
        if arg == flag {
            argv.get(index + 1).map(String::as_str)
        } else {
            arg.strip_prefix(flag)
                .and_then(|rest| rest.strip_prefix('='))
        }
    })
}

/// Whether an owner session is still there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum OwnerState {
    /// Its session is live and its agent process runs.
    Live,
    /// Its session ended (`SessionEnd`), its agent may run on (`/clear`).
    Ended,
    /// Its agent process is gone (SIGKILL, OOM, a closed terminal): it will never end by itself.
    Gone,
    /// We know nothing of it: never judged gone.
    Unknown,
}

/// What is known of a session: its record, if we have one, and the agent pid in the broker's environment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct SessionFacts {
    /// `Some(ended)` when we have a record of the session.
    pub recorded_ended: Option<bool>,
    /// Whether the record's agent process still has its identity (`None`: the record names none).
    pub recorded_agent_alive: Option<bool>,
    /// Whether the spawning agent named in the broker's environment (`CLAUDE_PID`) still runs, when this is the
    /// spawning session and no record names its agent.
    pub spawner_alive: Option<bool>,
}

pub(crate) fn owner_state(facts: SessionFacts) -> OwnerState {
    match (
        facts.recorded_ended,
        facts.recorded_agent_alive,
        facts.spawner_alive,
    ) {
        (Some(_), Some(false), _) | (None | Some(false), None, Some(false)) => OwnerState::Gone,
        (Some(true), _, _) => OwnerState::Ended,
        (Some(false), Some(true), _) | (None | Some(false), None, Some(true)) => OwnerState::Live,
        (Some(false) | None, None, None) | (None, Some(_), _) => OwnerState::Unknown,
    }
}

/// One job of the workspace's `state.json`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct JobFacts {
    pub id: String,
    pub status: String,
    pub session: Option<(String, OwnerState)>,
    pub pid_alive: bool,
}

/// Why the broker is busy: a `queued`/`running` job whose pid is alive, or whose session is live (or not known to be
/// gone) and is not the one ending.
pub(crate) fn busy(jobs: &[JobFacts], ending: Option<&str>) -> Option<String> {
    jobs.iter()
        .filter(|job| matches!(job.status.as_str(), "queued" | "running"))
        .find_map(|job| {
            if job.pid_alive {
                return Some(format!(
                    "job {} is {} (its process runs)",
                    job.id, job.status
                ));
            }
            let (session, state) = job.session.as_ref()?;
            let holds = Some(session.as_str()) != ending
                && matches!(state, OwnerState::Live | OwnerState::Unknown);
            holds.then(|| format!("job {} of session {session} is {}", job.id, job.status))
        })
}

/// Everything a verdict is made on, for one broker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Facts<'a> {
    /// Named by a `broker.json` (else found by process only: the spawn race's loser).
    pub listed: bool,
    pub check: ProcessCheck,
    pub owners: &'a [(String, OwnerState)],
    pub busy: Option<String>,
    /// Since `state.json` and the log were last written.
    pub idle_for: Option<Duration>,
    /// Since the broker started.
    pub age: Duration,
    /// Its spawner is gone: its parent is init or a subreaper.
    pub reparented: bool,
}

/// What to do with one broker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Stop it through our cascade; its files are cleaned after a confirmed exit.
    Stop(Reason),
    /// It would be stopped, but must not be: why.
    Keep(String),
    /// Its broker is gone: clean the plugin's files (no signal).
    Clean(Reason),
    /// Never signalled through this record: why.
    Refuse(String),
    /// Nothing to do.
    Leave,
}

/// The verdict on one broker at `occasion`.
pub(crate) fn judge(facts: &Facts<'_>, occasion: &Occasion<'_>) -> Verdict {
    match facts.check {
        ProcessCheck::Verified => {}
        ProcessCheck::Dead | ProcessCheck::NotABroker if facts.listed => {
            return Verdict::Clean(Reason::BrokerGone);
        }
        ProcessCheck::ForeignUid => {
            return Verdict::Refuse("the recorded pid is another user's process".to_owned());
        }
        ProcessCheck::EndpointMismatch => {
            return Verdict::Refuse(
                "the recorded pid runs a broker with another endpoint than broker.json names"
                    .to_owned(),
            );
        }
        ProcessCheck::NoPid
        | ProcessCheck::Dead
        | ProcessCheck::NotABroker
        | ProcessCheck::ListeningElsewhere => {
            return Verdict::Leave;
        }
    }
    if !facts.listed && facts.age < super::SPAWN_WINDOW {
        // Maybe still waiting for its endpoint before the plugin writes broker.json.
        return Verdict::Leave;
    }
    let reason = match occasion {
        Occasion::SessionEnd { session, reason } => {
            let all_done = !facts.owners.is_empty()
                && facts.owners.iter().all(|(owner, state)| {
                    owner == session || matches!(state, OwnerState::Ended | OwnerState::Gone)
                });
            all_done.then_some(*reason)
        }
        Occasion::Sweep { idle_ttl } => sweep_reason(facts, *idle_ttl),
    };
    match (reason, &facts.busy) {
        (None, _) => Verdict::Leave,
        (Some(_), Some(why)) => Verdict::Keep(why.clone()),
        (Some(reason), None) => Verdict::Stop(reason),
    }
}

fn sweep_reason(facts: &Facts<'_>, idle_ttl: Duration) -> Option<Reason> {
    let states = || facts.owners.iter().map(|(_, state)| *state);
    if !facts.owners.is_empty()
        && states().all(|state| matches!(state, OwnerState::Ended | OwnerState::Gone))
    {
        return Some(if states().any(|state| state == OwnerState::Gone) {
            Reason::OwnersGone
        } else {
            Reason::SessionEnd
        });
    }
    if facts.owners.is_empty() && facts.reparented {
        return Some(Reason::OwnersGone);
    }
    let idle = !idle_ttl.is_zero()
        && !states().any(|state| state == OwnerState::Live)
        && facts.idle_for.is_some_and(|idle| idle >= idle_ttl);
    idle.then_some(Reason::IdleTimeout)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(words: &str) -> Vec<String> {
        words.split_whitespace().map(str::to_owned).collect()
    }

    const BROKER: &str = "node /p/scripts/app-server-broker.mjs serve --endpoint unix:/t/cxc-1/broker.sock --cwd /w --pid-file /t/cxc-1/broker.pid";

    fn facts(owners: &[(String, OwnerState)]) -> Facts<'_> {
        Facts {
            listed: true,
            check: ProcessCheck::Verified,
            owners,
            busy: None,
            idle_for: Some(Duration::from_secs(5)),
            age: Duration::from_secs(60),
            reparented: true,
        }
    }

    fn owners(list: &[(&str, OwnerState)]) -> Vec<(String, OwnerState)> {
        list.iter()
            .map(|(id, state)| ((*id).to_owned(), *state))
            .collect()
    }

    fn end_of(session: &str) -> Occasion<'_> {
        Occasion::SessionEnd {
            session,
            reason: Reason::SessionEnd,
        }
    }

    const SWEEP: Occasion<'static> = Occasion::Sweep {
        idle_ttl: Duration::from_secs(1800),
    };

    #[test]
    fn a_recorded_pid_is_the_broker_only_with_its_script_and_endpoint() {
        let argv = argv(BROKER);
        let me = ArgvFacts {
            argv: &argv,
            uid: 7,
        };
        let endpoint = Some("unix:/t/cxc-1/broker.sock");
        assert_eq!(
            check_process(Some(10), Some(&me), endpoint, 7, false),
            ProcessCheck::Verified
        );
        assert_eq!(
            check_process(
                Some(10),
                Some(&me),
                Some("unix:/t/cxc-2/broker.sock"),
                7,
                false
            ),
            ProcessCheck::EndpointMismatch
        );
        assert_eq!(
            check_process(Some(10), Some(&me), None, 7, false),
            ProcessCheck::EndpointMismatch
        );
        assert_eq!(
            check_process(Some(10), Some(&me), endpoint, 8, false),
            ProcessCheck::ForeignUid
        );
        let sleeper = super::tests::argv("sleep 600 unix:/t/cxc-1/broker.sock");
        let other = ArgvFacts {
            argv: &sleeper,
            uid: 7,
        };
        assert_eq!(
            check_process(Some(10), Some(&other), endpoint, 7, false),
            ProcessCheck::NotABroker
        );
        assert_eq!(
            check_process(Some(10), None, endpoint, 7, false),
            ProcessCheck::Dead
        );
        for pid in [None, Some(0), Some(1), Some(-5)] {
            assert_eq!(
                check_process(pid, Some(&me), endpoint, 7, false),
                ProcessCheck::NoPid
            );
        }
    }

    #[test]
    fn look_alike_argv_is_not_a_broker() {
        for words in [
            "node /p/app-server-broker.mjs.bak serve --endpoint unix:/s",
            "node /p/app-server-broker.mjs status --endpoint unix:/s",
            "node /p/app-server-broker.mjs serve",
            "grep app-server-broker.mjs serve --endpoint",
            "vim /p/app-server-broker.mjs serve --endpoint unix:/s",
            "node --inspect /p/app-server-broker.mjs serve --endpoint unix:/s x",
            "sh -c node /p/app-server-broker.mjs serve --endpoint unix:/s",
        ] {
            assert!(!runs_broker(&argv(words)), "{words}");
        }
        assert!(runs_broker(&argv(
            "node app-server-broker.mjs serve --endpoint=unix:/s"
        )));
        assert!(runs_broker(&argv(
            "/home/a/.nvm/versions/node/v22.1.0/bin/node /p/app-server-broker.mjs serve --endpoint unix:/s"
        )));
    }

    #[test]
    fn owner_states() {
        let state = |recorded_ended, recorded_agent_alive, spawner_alive| {
            owner_state(SessionFacts {
                recorded_ended,
                recorded_agent_alive,
                spawner_alive,
            })
        };
        assert_eq!(state(Some(false), Some(true), None), OwnerState::Live);
        assert_eq!(state(Some(true), Some(true), None), OwnerState::Ended);
        assert_eq!(state(Some(true), Some(false), None), OwnerState::Gone);
        assert_eq!(
            state(Some(false), Some(false), Some(true)),
            OwnerState::Gone
        );
        assert_eq!(state(None, None, None), OwnerState::Unknown);
        assert_eq!(state(Some(false), None, None), OwnerState::Unknown);
        assert_eq!(state(None, None, Some(false)), OwnerState::Gone);
        assert_eq!(state(None, None, Some(true)), OwnerState::Live);
        assert_eq!(state(Some(true), None, Some(true)), OwnerState::Ended);
    }

    #[test]
    fn busy_is_a_live_job_or_a_job_of_another_session_not_known_gone() {
        let job = |status: &str, session: Option<(&str, OwnerState)>, pid_alive| JobFacts {
            id: "j".into(),
            status: status.into(),
            session: session.map(|(id, state)| (id.to_owned(), state)),
            pid_alive,
        };
        let cases = [
            (job("running", None, true), Some("s"), true),
            (job("completed", None, true), None, false),
            (
                job("queued", Some(("t", OwnerState::Live)), false),
                Some("s"),
                true,
            ),
            (
                job("running", Some(("t", OwnerState::Unknown)), false),
                None,
                true,
            ),
            (
                job("running", Some(("s", OwnerState::Live)), false),
                Some("s"),
                false,
            ),
            (
                job("running", Some(("t", OwnerState::Gone)), false),
                None,
                false,
            ),
            (
                job("running", Some(("t", OwnerState::Ended)), false),
                None,
                false,
            ),
            (job("running", None, false), None, false),
        ];
        for (job, ending, held) in cases {
            assert_eq!(
                busy(std::slice::from_ref(&job), ending).is_some(),
                held,
                "{job:?} ending {ending:?}"
            );
        }
    }

    #[test]
    fn a_session_end_stops_what_only_it_owned_unless_busy() {
        let only_s = owners(&[("s", OwnerState::Live)]);
        assert_eq!(
            judge(&facts(&only_s), &end_of("s")),
            Verdict::Stop(Reason::SessionEnd)
        );
        assert_eq!(judge(&facts(&only_s), &end_of("t")), Verdict::Leave);
        let shared = owners(&[("s", OwnerState::Live), ("t", OwnerState::Live)]);
        assert_eq!(judge(&facts(&shared), &end_of("s")), Verdict::Leave);
        let with_ended = owners(&[("s", OwnerState::Live), ("t", OwnerState::Ended)]);
        assert_eq!(
            judge(&facts(&with_ended), &end_of("s")),
            Verdict::Stop(Reason::SessionEnd)
        );
        let mut busy = facts(&only_s);
        busy.busy = Some("job j".into());
        assert_eq!(judge(&busy, &end_of("s")), Verdict::Keep("job j".into()));
        assert_eq!(
            judge(&facts(&[]), &end_of("s")),
            Verdict::Leave,
            "no known owner"
        );
    }

    #[test]
    fn unlisted_brokers_wait_out_the_spawn_window_and_their_session() {
        let only_s = owners(&[("s", OwnerState::Live)]);
        let mut young = facts(&only_s);
        young.listed = false;
        young.age = Duration::from_secs(1);
        assert_eq!(judge(&young, &end_of("s")), Verdict::Leave);
        let mut old = young.clone();
        old.age = Duration::from_secs(10);
        assert_eq!(judge(&old, &end_of("s")), Verdict::Stop(Reason::SessionEnd));
        assert_eq!(judge(&old, &end_of("t")), Verdict::Leave);
        assert_eq!(judge(&old, &SWEEP), Verdict::Leave, "its session lives");
    }

    #[test]
    fn records_whose_pid_fails_its_check_are_cleaned_or_refused_never_stopped() {
        let only_s = owners(&[("s", OwnerState::Gone)]);
        for (check, verdict) in [
            (ProcessCheck::Dead, Verdict::Clean(Reason::BrokerGone)),
            (ProcessCheck::NotABroker, Verdict::Clean(Reason::BrokerGone)),
            (ProcessCheck::NoPid, Verdict::Leave),
            (ProcessCheck::ListeningElsewhere, Verdict::Leave),
        ] {
            let mut f = facts(&only_s);
            f.check = check;
            assert_eq!(judge(&f, &SWEEP), verdict, "{check:?}");
            assert_eq!(judge(&f, &end_of("s")), verdict, "{check:?}");
        }
        for check in [ProcessCheck::EndpointMismatch, ProcessCheck::ForeignUid] {
            let mut f = facts(&only_s);
            f.check = check;
            assert!(matches!(judge(&f, &SWEEP), Verdict::Refuse(_)), "{check:?}");
        }
    }

    #[test]
    fn sweep_verdicts() {
        let gone = owners(&[("s", OwnerState::Gone), ("t", OwnerState::Ended)]);
        assert_eq!(
            judge(&facts(&gone), &SWEEP),
            Verdict::Stop(Reason::OwnersGone)
        );
        let ended = owners(&[("t", OwnerState::Ended)]);
        assert_eq!(
            judge(&facts(&ended), &SWEEP),
            Verdict::Stop(Reason::SessionEnd)
        );
        let live = owners(&[("s", OwnerState::Gone), ("t", OwnerState::Live)]);
        assert_eq!(judge(&facts(&live), &SWEEP), Verdict::Leave);
        let mut busy = facts(&gone);
        busy.busy = Some("job j".into());
        assert!(matches!(judge(&busy, &SWEEP), Verdict::Keep(_)));
        // No known owner: stopped once reparented (its spawner gone); else only when idle.
        assert_eq!(
            judge(&facts(&[]), &SWEEP),
            Verdict::Stop(Reason::OwnersGone)
        );
        let mut spawner_runs = facts(&[]);
        spawner_runs.reparented = false;
        assert_eq!(judge(&spawner_runs, &SWEEP), Verdict::Leave);
        spawner_runs.idle_for = Some(Duration::from_secs(3600));
        assert_eq!(
            judge(&spawner_runs, &SWEEP),
            Verdict::Stop(Reason::IdleTimeout)
        );
        // Idle with a live owner: kept (the sweep's TTL applies to brokers no live owner holds).
        let mut idle_live = facts(&live);
        idle_live.idle_for = Some(Duration::from_secs(3600));
        assert_eq!(judge(&idle_live, &SWEEP), Verdict::Leave);
        let unknown = owners(&[("u", OwnerState::Unknown)]);
        let mut idle_unknown = facts(&unknown);
        idle_unknown.idle_for = Some(Duration::from_secs(3600));
        assert_eq!(
            judge(&idle_unknown, &SWEEP),
            Verdict::Stop(Reason::IdleTimeout)
        );
        let off = Occasion::Sweep {
            idle_ttl: Duration::ZERO,
        };
        assert_eq!(judge(&idle_unknown, &off), Verdict::Leave);
    }

    #[test]
    fn endpoints_and_flags() {
        let argv = argv(BROKER);
        assert_eq!(flag_value(&argv, "--cwd"), Some("/w"));
        assert!(names_endpoint(&argv, "unix:/t/cxc-1/broker.sock"));
        assert!(!names_endpoint(&argv, "unix:/t/cxc-1/broker.sock2"));
        assert_eq!(socket_path("unix:/a/b"), Some("/a/b"));
        assert_eq!(socket_path("pipe:\\\\.\\pipe\\x"), None);
        assert_eq!(socket_path("unix:"), None);
    }
}
