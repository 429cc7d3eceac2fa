//! Pure decisions over records and a process snapshot: what ending a session does to a slot, which processes
//! resume a session, what a sweep does to a slot. No system calls here; the callers act on the result.

use std::collections::HashSet;
use std::time::{Duration, SystemTime};

use crate::clock;
use crate::events::Reason;
use crate::record::{BrokerRecord, SessionRecord};

/// What removing one owner does to a slot's record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OwnerRemoval {
    /// The session was not an owner: nothing to write.
    NotOwner,
    /// Other owners remain: write the record back.
    OthersRemain,
    /// It was the last owner: the broker is to be stopped.
    LastOwnerGone,
}

/// Removes `session` from `record`'s owners and says what follows. A slot with no owners to begin with (a legacy
/// or `--no-owner` broker) is never stopped by a session end.
pub fn remove_owner(record: &mut BrokerRecord, session: &str) -> OwnerRemoval {
    if !record.remove_owner(session) {
        OwnerRemoval::NotOwner
    } else if record.owners.is_empty() {
        OwnerRemoval::LastOwnerGone
    } else {
        OwnerRemoval::OthersRemain
    }
}

/// Flags marking Claude Code's own detached workers, which are never orphans.
pub const AGENT_WORKER_FLAGS: &[&str] = &["--bg-pty-host", "--bg-spare"];

/// True when `argv` resumes `session` (`--resume S`, `--resume=S`, `-r S`, `-rS`), or resumes the session's
/// recorded `title` through the long forms (a title may be a common word, so the terse `-r` forms are not trusted
/// with it). Tokens must match exactly: `S` does not match `S1`.
pub fn resumes(argv: &[String], session: &str, title: Option<&str>) -> bool {
    if argv
        .iter()
        .any(|arg| AGENT_WORKER_FLAGS.contains(&arg.as_str()))
    {
        return false;
    }
    let title = title.filter(|title| !title.is_empty());
    let long_match = |value: &str| value == session || Some(value) == title;
    argv.iter().enumerate().skip(1).any(|(index, arg)| {
        let next = argv.get(index + 1).map(String::as_str);
        match arg.as_str() {
            "--resume" => next.is_some_and(long_match),
            "-r" => next == Some(session),
            other => {
                other.strip_prefix("--resume=").is_some_and(long_match)
                    || other
                        .strip_prefix("-r")
                        .is_some_and(|rest| !rest.is_empty() && rest == session)
            }
        }
    })
}

/// The pids in a process snapshot that resume `session` and may be stopped: never a protected pid (this process,
/// its ancestors) nor the agent process of a live session (after `/clear` the agent keeps its old argv).
pub fn resume_orphans<S: std::hash::BuildHasher>(
    snapshot: &[(i32, Vec<String>)],
    session: &str,
    title: Option<&str>,
    protected: &HashSet<i32, S>,
) -> Vec<i32> {
    snapshot
        .iter()
        .filter(|(pid, argv)| *pid > 1 && !protected.contains(pid) && resumes(argv, session, title))
        .map(|(pid, _)| *pid)
        .collect()
}

/// Groups of live processes that resume the same session: two writers interleave one transcript.
pub fn duplicate_writers<'a>(
    snapshot: &[(i32, Vec<String>)],
    sessions: impl IntoIterator<Item = &'a SessionRecord>,
) -> Vec<(String, Vec<i32>)> {
    sessions
        .into_iter()
        .filter_map(|record| {
            let pids: Vec<i32> = snapshot
                .iter()
                .filter(|(_, argv)| resumes(argv, &record.session_id, None))
                .map(|(pid, _)| *pid)
                .collect();
            (pids.len() >= 2).then(|| (record.session_id.clone(), pids))
        })
        .collect()
}

/// What a sweep knows of one slot's broker and its owners: independent facts, not states of one machine.
#[derive(Clone, Copy, Debug)]
#[allow(clippy::struct_excessive_bools)]
pub struct SlotFacts {
    /// The recorded process still has its identity.
    pub alive: bool,
    /// The record is from another host sharing the state root: leave it alone.
    pub foreign_host: bool,
    /// The record is from an earlier boot of this host.
    pub earlier_boot: bool,
    /// Some owner's session is live (its agent process runs, or it has no record and so cannot be judged dead).
    pub owner_alive: bool,
}

/// What a sweep does with one slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlotVerdict {
    Keep,
    /// The record names a process that is gone (or from an earlier boot): remove the record.
    Prune(Reason),
    /// Stop the broker.
    Stop(Reason),
}

/// A sweep's verdict on one slot. `default_ttl` (zero disables) applies to brokers with no live owner; a broker's
/// own `idle_ttl_secs` applies even with live owners: it opted in to lazy respawn.
pub fn judge_slot(
    record: &BrokerRecord,
    facts: SlotFacts,
    now: SystemTime,
    default_ttl: Duration,
) -> SlotVerdict {
    if facts.foreign_host {
        return SlotVerdict::Keep;
    }
    if facts.earlier_boot || !facts.alive {
        return SlotVerdict::Prune(Reason::BrokerGone);
    }
    let idle = clock::age(&record.last_active, now).unwrap_or(Duration::MAX);
    let own_ttl = record
        .idle_ttl_secs
        .filter(|secs| *secs > 0)
        .map(Duration::from_secs);
    if own_ttl.is_some_and(|ttl| idle >= ttl) {
        return SlotVerdict::Stop(Reason::IdleTimeout);
    }
    if !facts.owner_alive && !default_ttl.is_zero() && idle >= default_ttl {
        return SlotVerdict::Stop(Reason::IdleTimeout);
    }
    SlotVerdict::Keep
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Identity, Owner};

    fn argv(text: &str) -> Vec<String> {
        text.split(' ').map(str::to_owned).collect()
    }

    #[test]
    fn resume_forms() {
        let s = "0b5f6b3e-1111-4222-8333-944445555666";
        for form in [
            format!("claude --resume {s}"),
            format!("claude --resume={s}"),
            format!("claude -r {s}"),
            format!("claude -r{s}"),
            format!("node cli.js --model x --resume {s} -p hi"),
        ] {
            assert!(resumes(&argv(&form), s, None), "{form}");
        }
    }

    #[test]
    fn exact_tokens_only() {
        assert!(!resumes(&argv("claude --resume s1"), "s", None));
        assert!(!resumes(&argv("claude --resume s"), "s1", None));
        assert!(!resumes(&argv("claude --resume=s10"), "s1", None));
        assert!(!resumes(&argv("claude -rs10"), "s1", None));
        assert!(!resumes(&argv("claude --resume"), "s1", None));
        assert!(
            !resumes(&argv("s1 --other"), "s1", None),
            "argv[0] is never an argument"
        );
    }

    #[test]
    fn workers_are_never_orphans() {
        assert!(!resumes(
            &argv("claude --bg-pty-host --resume s1"),
            "s1",
            None
        ));
        assert!(!resumes(&argv("claude --resume s1 --bg-spare"), "s1", None));
    }

    #[test]
    fn titles_match_only_the_long_forms() {
        assert!(resumes(
            &argv("claude --resume auth-refactor"),
            "s1",
            Some("auth-refactor")
        ));
        assert!(resumes(
            &argv("claude --resume=auth-refactor"),
            "s1",
            Some("auth-refactor")
        ));
        assert!(!resumes(
            &argv("grep -r auth-refactor"),
            "s1",
            Some("auth-refactor")
        ));
        assert!(!resumes(&argv("claude --resume x"), "s1", Some("")));
    }

    #[test]
    fn orphans_exclude_protected_and_init() {
        let snapshot = vec![
            (1, argv("init --resume s1")),
            (50, argv("claude --resume s1")),
            (60, argv("python3 -c x --resume s1")),
            (70, argv("claude --resume s2")),
        ];
        let protected: HashSet<i32> = [50].into();
        assert_eq!(resume_orphans(&snapshot, "s1", None, &protected), vec![60]);
    }

    fn record(owners: &[&str], last_active: &str, ttl: Option<u64>) -> BrokerRecord {
        BrokerRecord {
            version: 1,
            name: "default".into(),
            workspace: "/w".into(),
            cwd: "/w".into(),
            command: vec!["sleep".into()],
            endpoint: None,
            owners: owners
                .iter()
                .map(|s| Owner {
                    session: (*s).into(),
                    since: last_active.into(),
                    extra: serde_json::Map::new(),
                })
                .collect(),
            identity: Identity {
                boot_id: "b".into(),
                pid: 10,
                start_ticks: 1,
                uid: 0,
            },
            pgid: Some(10),
            created_at: last_active.into(),
            last_active: last_active.into(),
            idle_ttl_secs: ttl,
            grace_ms: 5000,
            shutdown: None,
            host: "h".into(),
            extra: serde_json::Map::new(),
        }
    }

    #[test]
    fn removing_owners() {
        let mut r = record(&["a", "b"], "2026-01-01T00:00:00Z", None);
        assert_eq!(remove_owner(&mut r, "c"), OwnerRemoval::NotOwner);
        assert_eq!(remove_owner(&mut r, "a"), OwnerRemoval::OthersRemain);
        assert_eq!(r.owner_ids(), ["b"]);
        assert_eq!(remove_owner(&mut r, "b"), OwnerRemoval::LastOwnerGone);
        let mut legacy = record(&[], "2026-01-01T00:00:00Z", None);
        assert_eq!(remove_owner(&mut legacy, "a"), OwnerRemoval::NotOwner);
    }

    const LIVE: SlotFacts = SlotFacts {
        alive: true,
        foreign_host: false,
        earlier_boot: false,
        owner_alive: true,
    };

    #[test]
    fn sweep_verdicts() {
        let now = clock::parse("2026-01-01T01:00:00Z").unwrap();
        let ttl = Duration::from_secs(1800);
        let fresh = record(&["a"], "2026-01-01T00:59:00Z", None);
        let stale = record(&["a"], "2026-01-01T00:00:00Z", None);
        assert_eq!(judge_slot(&fresh, LIVE, now, ttl), SlotVerdict::Keep);
        assert_eq!(
            judge_slot(&stale, LIVE, now, ttl),
            SlotVerdict::Keep,
            "live owner, no opt-in"
        );
        let ownerless = SlotFacts {
            owner_alive: false,
            ..LIVE
        };
        assert_eq!(
            judge_slot(&stale, ownerless, now, ttl),
            SlotVerdict::Stop(Reason::IdleTimeout)
        );
        assert_eq!(
            judge_slot(&stale, ownerless, now, Duration::ZERO),
            SlotVerdict::Keep,
            "0 disables"
        );
        let opted_in = record(&["a"], "2026-01-01T00:59:57Z", Some(2));
        assert_eq!(
            judge_slot(&opted_in, LIVE, now, ttl),
            SlotVerdict::Stop(Reason::IdleTimeout)
        );
        let dead = SlotFacts {
            alive: false,
            ..LIVE
        };
        assert_eq!(
            judge_slot(&fresh, dead, now, ttl),
            SlotVerdict::Prune(Reason::BrokerGone)
        );
        let foreign = SlotFacts {
            alive: false,
            foreign_host: true,
            ..LIVE
        };
        assert_eq!(judge_slot(&fresh, foreign, now, ttl), SlotVerdict::Keep);
    }
}
