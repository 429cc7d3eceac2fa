//! Process lineage (DESIGN "Process lineage"): which processes are a broker's members, when the stop of a broker
//! is done, which marked processes no record knows (the sweep's `unrecorded`), and which processes are resume
//! orphans. The decisions are pure functions over a pinned process snapshot and the records; what they are taken on
//! is read by `observe::lineage`.

use std::collections::HashSet;

use crate::model::host::Host;
use crate::model::reason::Reason;
use crate::model::record::{BrokerRecord, DEFAULT_GRACE_MS, Identity, StopTicket};
use crate::observe::Observed;

/// The members of a broker in `snapshot`, not counting the leader itself: processes of the leader's uid and boot,
/// started no earlier than it, that carry its lineage `token`; and, while the leader is verified alive, those of
/// its process group or session (pid = pgid = sid for a spawned broker: while the leader lives neither id can name
/// another group). A leaderless group is never a broker's as such: without a token, nothing is a member once the
/// leader is gone. A token carrier must descend from the broker: its parent is the leader, another carrier of the
/// token, or one of `adopters` (init and the leader's ancestors, which take orphans); a carrier whose parent is
/// anything else copied the token from outside the tree — a look-alike, never a member.
pub(crate) fn members<S: std::hash::BuildHasher>(
    leader: &Identity,
    token: Option<&str>,
    leader_alive: bool,
    snapshot: &[Observed],
    adopters: &HashSet<i32, S>,
) -> Vec<Identity> {
    let descends = |seen: &Observed| {
        seen.ppid == leader.pid
            || adopters.contains(&seen.ppid)
            || snapshot.iter().any(|parent| {
                parent.identity.pid == seen.ppid
                    && token.is_some()
                    && parent.markers.lineage.as_deref() == token
            })
    };
    snapshot
        .iter()
        .filter(|seen| {
            let id = &seen.identity;
            id.pid != leader.pid
                && id.uid == leader.uid
                && id.boot_id == leader.boot_id
                && id.start_ticks >= leader.start_ticks
        })
        .filter(|seen| {
            let carries = token.is_some_and(|token| seen.markers.lineage.as_deref() == Some(token))
                && descends(seen);
            let grouped = leader_alive && (seen.pgid == leader.pid || seen.sid == leader.pid);
            carries || grouped
        })
        .map(|seen| seen.identity.clone())
        .collect()
}

/// A stop is done when the leader and every member are gone; members left behind keep the ticket open.
pub(crate) fn is_stop_done(leader_alive: bool, live_members: usize) -> bool {
    !leader_alive && live_members == 0
}

/// True when a record is not ours to act on by pid: another host's (a shared state root), or written in another pid
/// namespace (a sandboxed shell tool, a container), whose pids mean nothing here.
pub(crate) fn is_foreign(record: &BrokerRecord, host: &Host) -> bool {
    crate::model::record::is_other_host(&record.host, &host.name)
        || record.identity.is_other_pid_ns(host.pid_ns)
}

pub(crate) use crate::model::known::Known;

/// A broker whose record is lost: the earliest-started carrier of a token no record knows, and how many other
/// processes carry it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Lost {
    pub leader: Identity,
    pub pgid: i32,
    pub token: String,
    pub marker: String,
    pub members: usize,
}

/// The sweep's `unrecorded` verdict: processes that carry `SESSION_REAPER_BROKER`, this `state_root` as their
/// `SESSION_REAPER_STATE_ROOT` and a lineage token that no record knows, grouped by token. A process with only the
/// state root (a shell inside a broker's terminal that exported it, a test harness) or with no token (a broker of an
/// older version, a child that scrubbed its environment) is never one; nor is anything a known record names by pid.
pub(crate) fn unrecorded(snapshot: &[Observed], known: &Known, state_root: &str) -> Vec<Lost> {
    let mut lost: Vec<Lost> = Vec::new();
    for seen in snapshot {
        let markers = &seen.markers;
        let (Some(marker), Some(token)) = (&markers.broker, &markers.lineage) else {
            continue;
        };
        if markers.state_root.as_deref() != Some(state_root)
            || known.tokens.contains(token)
            || known.pids.contains(&seen.identity.pid)
            || known.knows_slot_of(marker)
        {
            continue;
        }
        match lost.iter_mut().find(|lost| &lost.token == token) {
            Some(entry) => {
                entry.members += 1;
                let earlier = (seen.identity.start_ticks, seen.identity.pid)
                    < (entry.leader.start_ticks, entry.leader.pid);
                if earlier {
                    entry.leader = seen.identity.clone();
                    entry.pgid = seen.pgid;
                    entry.marker.clone_from(marker);
                }
            }
            None => lost.push(Lost {
                leader: seen.identity.clone(),
                pgid: seen.pgid,
                token: token.clone(),
                marker: marker.clone(),
                members: 0,
            }),
        }
    }
    lost
}

/// The pids of every broker's members in `snapshot`: processes marked with `SESSION_REAPER_BROKER`, carrying a
/// lineage token a record knows, recorded as a broker, or in the group or session of a recorded broker that is in
/// the snapshot (alive). Their owners decide them: they are never anyone's leftovers.
impl Lost {
    /// The stop ticket of this unrecorded broker (reason `unrecorded`): its group when it leads one, its lineage
    /// token, and the slot its marker (`<workspace>/<name>`) names, so that its event names the slot as a recorded
    /// broker's would. `stamp` is when and on which host it is filed.
    pub(crate) fn ticket(&self, stamp: (&str, &str)) -> StopTicket {
        let pid = self.leader.pid;
        let mut ticket = StopTicket::new(
            self.leader.clone(),
            (self.pgid == pid).then_some(pid),
            Reason::Unrecorded.as_str(),
            DEFAULT_GRACE_MS,
            "unrecorded".into(),
            stamp,
        );
        ticket.lineage = Some(self.token.clone());
        match self.marker.rsplit_once('/') {
            Some((workspace, name)) => {
                ticket.workspace = Some(workspace.to_owned());
                ticket.name = Some(name.to_owned());
            }
            None => ticket.workspace = Some(self.marker.clone()),
        }
        ticket
    }
}

#[cfg(test)]
pub(crate) fn member_pids(snapshot: &[Observed], records: &[BrokerRecord]) -> HashSet<i32> {
    let tokens: HashSet<&str> = records
        .iter()
        .filter_map(|record| record.lineage.as_deref())
        .collect();
    let live_leaders: HashSet<i32> = records
        .iter()
        .filter(|record| {
            snapshot
                .iter()
                .any(|seen| record.identity.is_same_process(&seen.identity))
        })
        .map(|record| record.identity.pid)
        .collect();
    snapshot
        .iter()
        .filter(|seen| {
            seen.markers.broker.is_some()
                || seen
                    .markers
                    .lineage
                    .as_deref()
                    .is_some_and(|token| tokens.contains(token))
                || records
                    .iter()
                    .any(|record| record.identity.is_same_process(&seen.identity))
                || live_leaders.contains(&seen.pgid)
                || live_leaders.contains(&seen.sid)
        })
        .map(|seen| seen.identity.pid)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::Markers;

    fn id(pid: i32, start: u64) -> Identity {
        Identity {
            boot_id: "b".into(),
            pid_ns: Some(7),
            pid,
            start_ticks: start,
            uid: 1000,
        }
    }

    fn seen(pid: i32, start: u64, group: (i32, i32), markers: Markers) -> Observed {
        Observed {
            identity: id(pid, start),
            ppid: 100,
            pgid: group.0,
            sid: group.1,
            markers,
        }
    }

    fn init() -> HashSet<i32> {
        HashSet::from([1])
    }

    #[test]
    fn a_token_copied_from_outside_the_tree_is_a_look_alike() {
        let leader = id(100, 50);
        let mut child = seen(101, 51, (101, 101), token("t1"));
        child.ppid = 100;
        let mut grandchild = seen(102, 52, (102, 102), token("t1"));
        grandchild.ppid = 101;
        let mut orphan = seen(103, 53, (103, 103), token("t1"));
        orphan.ppid = 1;
        let mut adopted = seen(104, 54, (104, 104), token("t1"));
        adopted.ppid = 7;
        let mut copied = seen(105, 55, (105, 105), token("t1"));
        copied.ppid = 999;
        let snapshot = [child, grandchild, orphan, adopted, copied];
        let adopters = HashSet::from([1, 7]);
        let pids: Vec<i32> = members(&leader, Some("t1"), true, &snapshot, &adopters)
            .iter()
            .map(|m| m.pid)
            .collect();
        assert_eq!(
            pids,
            [101, 102, 103, 104],
            "105's parent is outside the tree"
        );
    }

    fn token(token: &str) -> Markers {
        Markers {
            broker: Some("/w/default".into()),
            state_root: Some("/state".into()),
            lineage: Some(token.into()),
        }
    }

    #[test]
    fn members_carry_the_token_wherever_they_moved() {
        let leader = id(100, 50);
        let snapshot = [
            seen(100, 50, (100, 100), token("t1")),
            seen(101, 51, (101, 101), token("t1")), // setsid
            seen(102, 52, (102, 100), token("t1")), // setpgid
            seen(103, 53, (1, 1), token("t1")),     // double fork, reparented
            seen(104, 40, (104, 104), token("t1")), // started before the leader: a forged token
            seen(105, 60, (105, 105), token("t2")), // another broker's
            seen(106, 60, (100, 100), Markers::default()), // scrubbed env, still in the group
        ];
        let pids = |alive| -> Vec<i32> {
            members(&leader, Some("t1"), alive, &snapshot, &init())
                .iter()
                .map(|m| m.pid)
                .collect()
        };
        assert_eq!(pids(true), [101, 102, 103, 106]);
        assert_eq!(
            pids(false),
            [101, 102, 103],
            "a leaderless group is not signalled as such"
        );
    }

    #[test]
    fn a_reused_group_id_is_no_member_of_a_dead_tokenless_broker() {
        let leader = id(100, 50);
        // A daemon reused pid 100: setsid, forked, exited; its child leads nothing, started after the broker.
        let snapshot = [seen(101, 90, (100, 100), Markers::default())];
        assert!(members(&leader, None, false, &snapshot, &init()).is_empty());
        assert!(members(&leader, Some("t1"), false, &snapshot, &init()).is_empty());
        assert_eq!(
            members(&leader, None, true, &snapshot, &init()).len(),
            1,
            "register rules while the leader lives"
        );
    }

    #[test]
    fn other_users_and_boots_are_never_members() {
        let leader = id(100, 50);
        let mut other_user = seen(101, 60, (100, 100), token("t1"));
        other_user.identity.uid = 0;
        let mut other_boot = seen(102, 60, (100, 100), token("t1"));
        other_boot.identity.boot_id = "old".into();
        assert!(
            members(
                &leader,
                Some("t1"),
                true,
                &[other_user, other_boot],
                &init()
            )
            .is_empty()
        );
    }

    #[test]
    fn done_only_when_leader_and_members_are_gone() {
        assert!(is_stop_done(false, 0));
        assert!(
            !is_stop_done(false, 2),
            "members left behind keep the ticket"
        );
        assert!(!is_stop_done(true, 0));
    }

    #[test]
    fn unrecorded_needs_broker_marker_our_root_and_an_unknown_token() {
        let only_root = Markers {
            broker: None,
            state_root: Some("/state".into()),
            lineage: None,
        };
        let no_token = Markers {
            lineage: None,
            ..token("x")
        };
        let other_root = Markers {
            state_root: Some("/elsewhere".into()),
            ..token("t9")
        };
        let snapshot = [
            seen(10, 5, (10, 10), only_root),
            seen(11, 5, (11, 11), no_token),
            seen(12, 5, (12, 12), other_root),
            seen(13, 5, (13, 13), token("known")),
            seen(20, 8, (20, 20), token("lost")),
            seen(21, 9, (21, 21), token("lost")),
            seen(22, 7, (20, 20), token("lost")),
        ];
        let mut known = Known::default();
        known.tokens.insert("known".into());
        let lost = unrecorded(&snapshot, &known, "/state");
        assert_eq!(lost.len(), 1);
        assert_eq!(lost[0].leader.pid, 22, "the earliest carrier leads");
        assert_eq!(lost[0].members, 2);
        known.pids.insert(20);
        known.pids.insert(21);
        known.pids.insert(22);
        assert!(
            unrecorded(&snapshot, &known, "/state").is_empty(),
            "known pids"
        );
    }

    #[test]
    fn an_unreadable_slot_knows_the_markers_that_name_it() {
        let snapshot = [seen(20, 8, (20, 20), token("lost"))];
        let mut known = Known::default();
        let key = crate::model::workspace::workspace_key(std::path::Path::new("/w"));
        known.unreadable_slots.insert(format!("{key}/default"));
        assert!(unrecorded(&snapshot, &known, "/state").is_empty());
    }

    #[test]
    fn newer_records_are_read_loosely() {
        let mut known = Known::default();
        known.add_json(&serde_json::json!({"version": 9, "lineage": "t", "identity": {"pid": 4}}));
        assert!(known.tokens.contains("t") && known.pids.contains(&4));
    }

    #[test]
    fn member_pids_for_leftovers() {
        let mut record: BrokerRecord = serde_json::from_value(serde_json::json!({
            "name": "default", "workspace": "/w", "cwd": "/w", "command": ["x"],
            "identity": {"boot_id": "b", "pid_ns": 7, "pid": 100, "start_ticks": 50, "uid": 1000},
            "created_at": "t", "last_active": "t", "lineage": "t1"
        }))
        .unwrap();
        let snapshot = [
            seen(100, 50, (100, 100), Markers::default()),
            seen(
                101,
                60,
                (1, 1),
                Markers {
                    lineage: Some("t1".into()),
                    ..Markers::default()
                },
            ),
            seen(102, 60, (100, 100), Markers::default()),
            seen(
                103,
                60,
                (103, 103),
                Markers {
                    broker: Some("/x/y".into()),
                    ..Markers::default()
                },
            ),
            seen(
                104,
                60,
                (104, 104),
                Markers {
                    lineage: Some("zz".into()),
                    ..Markers::default()
                },
            ),
        ];
        let pids = member_pids(&snapshot, std::slice::from_ref(&record));
        assert_eq!(pids, [100, 101, 102, 103].into());
        record.identity.start_ticks = 1;
        let pids = member_pids(&snapshot, &[record]);
        assert!(
            !pids.contains(&102),
            "a dead leader's group is not a broker's"
        );
    }
}
