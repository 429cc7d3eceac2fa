//! `reap --duplicates`: several live processes resuming one live session write one transcript at once (20 such
//! writers of one session at 1262 % CPU have been reported). Of each such set the newest is kept; the others are
//! stopped, each by its pinned identity (identity → argv → identity unchanged).

use std::collections::HashSet;

use serde::Serialize;

use crate::decide::resume;
use crate::model::record::{Identity, SessionRecord, StopTicket};
use crate::observe::proc;

/// One session's writers: the one kept and those to stop.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Duplicates {
    pub session: String,
    pub kept: i32,
    pub stopped: Vec<i32>,
    #[serde(skip)]
    pub tickets: Vec<StopTicket>,
}

/// Of `writers`, the newest (latest start; the larger pid breaks a tie) and the rest.
pub(crate) fn choose(writers: &[Identity]) -> Option<(&Identity, Vec<&Identity>)> {
    let newest = writers
        .iter()
        .max_by_key(|identity| (identity.start_ticks, identity.pid))?;
    Some((
        newest,
        writers
            .iter()
            .filter(|identity| *identity != newest)
            .collect(),
    ))
}

/// The duplicate writers of the live sessions, with tickets for all but the newest of each (never this process
/// or one of its ancestors).
pub(crate) fn find(
    sessions: &[SessionRecord],
    deadline: crate::model::deadline::Deadline,
) -> Vec<Duplicates> {
    let snapshot = proc::scan_cmdlines(deadline);
    let live: Vec<&SessionRecord> = sessions
        .iter()
        .filter(|record| !record.is_ended())
        .collect();
    let protected: HashSet<i32> = proc::self_and_ancestors();
    let (now, host) = (crate::model::clock::now_rfc3339(), proc::host_name());
    let stamp = (now.as_str(), host.as_str());
    resume::duplicate_writers(&snapshot, live)
        .into_iter()
        .filter_map(|(session, pids)| {
            let writers: Vec<Identity> = pids
                .iter()
                .filter_map(|pid| pinned(*pid, &snapshot))
                .collect();
            let (newest, others) = choose(&writers)?;
            let others: Vec<&Identity> = others
                .into_iter()
                .filter(|identity| !protected.contains(&identity.pid))
                .collect();
            let tickets: Vec<StopTicket> = others
                .iter()
                .map(|identity| resume::duplicate_ticket((*identity).clone(), &session, stamp))
                .collect();
            (!tickets.is_empty()).then(|| Duplicates {
                session,
                kept: newest.pid,
                stopped: others.iter().map(|identity| identity.pid).collect(),
                tickets,
            })
        })
        .collect()
}

/// The identity of `pid` if its argv still reads as in the snapshot and the identity held across that read.
fn pinned(pid: i32, snapshot: &[(i32, Vec<String>)]) -> Option<Identity> {
    let before = proc::identity_of(pid)?;
    let argv = proc::cmdline(pid).ok()?;
    let seen = snapshot
        .iter()
        .find(|(p, _)| *p == pid)
        .map(|(_, argv)| argv)?;
    (&argv == seen && proc::identity_of(pid).as_ref() == Some(&before)).then_some(before)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(pid: i32, start_ticks: u64) -> Identity {
        Identity {
            boot_id: "b".into(),
            pid_ns: None,
            pid,
            start_ticks,
            uid: 0,
        }
    }

    #[test]
    fn the_newest_writer_is_kept() {
        let writers = [identity(30, 5), identity(10, 9), identity(20, 7)];
        let (kept, stopped) = choose(&writers).unwrap();
        assert_eq!(kept.pid, 10, "latest start wins over pid order");
        let stopped: Vec<i32> = stopped.iter().map(|identity| identity.pid).collect();
        assert_eq!(stopped, [30, 20]);
        assert!(choose(&[]).is_none());
    }
}
