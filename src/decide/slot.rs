//! What to do with one broker slot: ending a session (or detaching one owner), attaching, a sweep's verdict. Each
//! decision takes the slot's view and facts observed beforehand and returns one `SlotChange`; nothing here reads a
//! file, a process or the clock beyond the `now` it is given.

use std::time::{Duration, SystemTime};

use crate::model::clock::{self, Stamp};
use crate::model::host::Host;
use crate::model::reason::Reason;
use crate::model::record::{BrokerRecord, StopTicket};
use crate::model::slot::SlotView;

/// The owners a change adds or removes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct OwnerDelta {
    pub added: Vec<String>,
    pub removed: Vec<String>,
}

/// One change to one slot, applied under its lock by the executor (or described, in a dry run).
#[derive(Clone, Debug, PartialEq)]
#[allow(clippy::large_enum_variant)]
pub(crate) enum SlotChange {
    /// Nothing to do.
    Keep,
    /// Nothing to do, for a reason worth reporting: another host's record, or one that is refused as it stands.
    LeaveAlone { why: String },
    /// The record, with its owners changed or its idle clock refreshed, is written back.
    Write {
        record: BrokerRecord,
        owners: OwnerDelta,
        reason: Option<Reason>,
    },
    /// The broker leaves the slot for a stop ticket; the slot is emptied in the same locked step (DESIGN invariant
    /// 2: a concurrent spawn either attaches to a broker that keeps running or starts a new one).
    HandOff {
        record: BrokerRecord,
        ticket: StopTicket,
        owners: OwnerDelta,
        reason: Reason,
    },
    /// The record names a process that is gone (or an earlier boot's): it is removed.
    Prune {
        record: BrokerRecord,
        reason: Reason,
    },
    /// A record that does not parse is moved aside and reported, never dropped.
    MoveAside { why: String },
    /// An empty slot's directory is removed (a sweep's clean-up), unless its broker log is younger than `keep_log`.
    RemoveEmpty { keep_log: Duration },
}

impl SlotChange {
    /// The broker the change is about, if any.
    pub(crate) fn record(&self) -> Option<&BrokerRecord> {
        match self {
            SlotChange::Write { record, .. }
            | SlotChange::HandOff { record, .. }
            | SlotChange::Prune { record, .. } => Some(record),
            _ => None,
        }
    }

    /// True when the change removes `session` from the owners.
    #[cfg(test)]
    pub(crate) fn removes(&self, session: &str) -> bool {
        match self {
            SlotChange::Write { owners, .. } | SlotChange::HandOff { owners, .. } => {
                owners.removed.iter().any(|removed| removed == session)
            }
            _ => false,
        }
    }
}

/// What a record that is not a plain broker of this host asks for, whatever the caller wanted: `Err` is the change
/// to make instead (nothing for an empty slot or another host's record, moving a corrupt record aside, leaving a
/// refused one alone and saying why); `Ok` is the record to decide on.
#[allow(clippy::result_large_err)]
fn usable<'v>(view: &'v SlotView, host: &Host) -> Result<&'v BrokerRecord, SlotChange> {
    match view {
        SlotView::Empty => Err(SlotChange::Keep),
        SlotView::Unreadable(unreadable) if unreadable.corrupt => Err(SlotChange::MoveAside {
            why: unreadable.why.clone(),
        }),
        SlotView::Unreadable(unreadable) => Err(SlotChange::LeaveAlone {
            why: unreadable.why.clone(),
        }),
        // A state root shared over a network home: another host's record is neither acted on nor pruned; nor is one
        // written in another pid namespace.
        SlotView::Broker(record) if crate::decide::lineage::is_foreign(record, host) => {
            Err(SlotChange::Keep)
        }
        SlotView::Broker(record) => Ok(record),
    }
}

/// Removes `sessions` from the owners of the slot's broker — the one owner-removal path, for a session's end, a
/// detach and a sweep dropping owners whose session has ended. Others left: the record is written back. None
/// left: the broker is handed to a stop ticket. A broker that had no owners to begin with (a legacy or
/// `--no-owner` one) is never stopped by an owner leaving.
pub(crate) fn remove_owners(
    view: &SlotView,
    sessions: &[&str],
    reason: Reason,
    (host, now): (&Host, &str),
    label: &str,
) -> SlotChange {
    let record = match usable(view, host) {
        Ok(record) => record,
        Err(other) => return other,
    };
    let mut record = record.clone();
    let removed: Vec<String> = sessions
        .iter()
        .filter(|session| record.remove_owner(session))
        .map(|session| (*session).to_owned())
        .collect();
    if removed.is_empty() {
        return SlotChange::Keep;
    }
    let owners = OwnerDelta {
        added: Vec::new(),
        removed,
    };
    if record.owners.is_empty() {
        let session = (owners.removed.len() == 1).then(|| owners.removed[0].as_str());
        let ticket = StopTicket::for_broker(&record, reason.as_str(), session, label, now);
        SlotChange::HandOff {
            record,
            ticket,
            owners,
            reason,
        }
    } else {
        SlotChange::Write {
            record,
            owners,
            reason: Some(reason),
        }
    }
}

/// Makes `session` an owner of a live broker (the reuse path of spawn and register, and `attach`) and refreshes
/// its idle clock, on both clocks.
pub(crate) fn add_owner(record: &BrokerRecord, session: Option<&str>, now: &Stamp) -> SlotChange {
    let mut record = record.clone();
    let added: Vec<String> = session
        .filter(|session| record.add_owner(session, &now.wall))
        .map(str::to_owned)
        .into_iter()
        .collect();
    now.wall.clone_into(&mut record.last_active);
    record.last_active_boot_ms = Some(now.boot_ms);
    SlotChange::Write {
        record,
        owners: OwnerDelta {
            added,
            removed: Vec::new(),
        },
        reason: None,
    }
}

/// What a sweep knows of one slot's broker and its owners: independent facts, observed before deciding.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SlotFacts {
    /// The recorded process still has its identity.
    pub alive: bool,
    /// The record is from an earlier boot of this host.
    pub earlier_boot: bool,
    /// Some remaining owner's session is live (its agent process runs). An owner with no session record cannot be
    /// judged dead, but neither is it known to be alive.
    pub owner_alive: bool,
}

/// The clock and the limits a sweep decides with.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SweepPolicy {
    pub now: SystemTime,
    /// The boot clock at `now` (ms): what idle time is measured on, where the record has a boot stamp.
    pub boot_now_ms: u64,
    /// Brokers with no owner known to be alive stop after this long idle; zero disables.
    pub default_ttl: Duration,
    /// How long tombstones and the logs of empty slots are kept.
    pub retention: Duration,
}

/// A sweep's verdict on one slot: prune a record whose process is gone; stop a broker idle past its TTL; drop
/// owners whose session has ended (`ended` says which), handing the broker to a stop ticket when none is left;
/// otherwise keep. `default_ttl` (zero disables) applies to brokers with no owner known to be alive; a broker's own
/// `idle_ttl_secs` applies even with live owners: it opted in to lazy respawn. An empty slot is cleaned up.
pub(crate) fn sweep(
    view: &SlotView,
    facts: SlotFacts,
    ended: impl Fn(&str) -> bool,
    policy: &SweepPolicy,
    (host, label): (&Host, &str),
) -> SlotChange {
    if matches!(view, SlotView::Empty) {
        return SlotChange::RemoveEmpty {
            keep_log: policy.retention,
        };
    }
    let (now, default_ttl) = (policy.now, policy.default_ttl);
    let record = match usable(view, host) {
        Ok(record) => record,
        Err(other) => return other,
    };
    if facts.earlier_boot || !facts.alive {
        return SlotChange::Prune {
            record: record.clone(),
            reason: Reason::BrokerGone,
        };
    }
    let ended_owners: Vec<&str> = record
        .owners
        .iter()
        .map(|owner| owner.session.as_str())
        .filter(|session| ended(session))
        .collect();
    let idle = idle_for(record, now, policy.boot_now_ms);
    let own_ttl = record
        .idle_ttl_secs
        .filter(|secs| *secs > 0)
        .map(Duration::from_secs);
    let idle_out = own_ttl.is_some_and(|ttl| idle >= ttl)
        || (!facts.owner_alive && !default_ttl.is_zero() && idle >= default_ttl);
    if idle_out {
        let mut record = record.clone();
        let removed = ended_owners
            .iter()
            .filter(|session| record.remove_owner(session))
            .map(|session| (*session).to_owned())
            .collect();
        let ticket = StopTicket::for_broker(
            &record,
            Reason::IdleTimeout.as_str(),
            None,
            label,
            &clock::format(now),
        );
        return SlotChange::HandOff {
            record,
            ticket,
            owners: OwnerDelta {
                added: Vec::new(),
                removed,
            },
            reason: Reason::IdleTimeout,
        };
    }
    remove_owners(
        view,
        &ended_owners,
        Reason::SessionEnd,
        (host, &clock::format(now)),
        label,
    )
}

/// How long a broker has been idle: on the boot clock when its record has a boot stamp of this boot (a wall clock
/// stepped back or forward since changes nothing), else by its wall-clock `last_active` (records of older versions;
/// a time in the future is zero ago, one that does not parse is idle forever). A boot stamp ahead of the boot clock
/// was written in an earlier boot: the wall clock decides.
pub(crate) fn idle_for(record: &BrokerRecord, now: SystemTime, boot_now_ms: u64) -> Duration {
    match record.last_active_boot_ms {
        Some(boot) if boot <= boot_now_ms => Duration::from_millis(boot_now_ms - boot),
        _ => clock::age(&record.last_active, now).unwrap_or(Duration::MAX),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::record::{Identity, Owner};
    use crate::model::slot::Unreadable;

    const HOST: &str = "h";

    fn here() -> Host {
        Host {
            name: HOST.into(),
            pid_ns: None,
        }
    }
    const NOW: &str = "2026-01-01T00:00:00Z";
    const LABEL: &str = "w-0123456789abcdef/default";

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
                pid_ns: None,
                pid: 10,
                start_ticks: 1,
                uid: 0,
            },
            pgid: Some(10),
            created_at: last_active.into(),
            last_active: last_active.into(),
            last_active_boot_ms: None,
            idle_ttl_secs: ttl,
            grace_ms: 5000,
            shutdown: None,
            host: HOST.into(),
            lineage: None,
            extra: serde_json::Map::new(),
        }
    }

    fn view(owners: &[&str]) -> SlotView {
        SlotView::Broker(record(owners, "2026-01-01T00:00:00Z", None))
    }

    fn owners_after(change: &SlotChange) -> Vec<String> {
        change.record().map_or_else(Vec::new, |record| {
            record.owner_ids().into_iter().map(str::to_owned).collect()
        })
    }

    #[test]
    fn ending_one_of_two_owners_writes_the_other_back() {
        let change = remove_owners(
            &view(&["a", "b"]),
            &["a"],
            Reason::SessionEnd,
            (&here(), NOW),
            LABEL,
        );
        assert!(matches!(change, SlotChange::Write { .. }), "{change:?}");
        assert_eq!(owners_after(&change), ["b"]);
        assert!(change.removes("a") && !change.removes("b"));
    }

    #[test]
    fn the_last_owner_leaving_hands_the_broker_to_a_ticket() {
        let change = remove_owners(
            &view(&["a"]),
            &["a"],
            Reason::SessionEnd,
            (&here(), NOW),
            LABEL,
        );
        let SlotChange::HandOff { ticket, reason, .. } = &change else {
            panic!("{change:?}")
        };
        assert_eq!(*reason, Reason::SessionEnd);
        assert_eq!(ticket.session.as_deref(), Some("a"));
        assert_eq!(ticket.origin, LABEL);
        assert_eq!(ticket.identity.pid, 10);
    }

    #[test]
    fn not_an_owner_ownerless_and_empty_slots_are_kept() {
        for (slot, leaving) in [
            (view(&["b"]), "a"),
            (view(&[]), "a"),
            (SlotView::Empty, "a"),
        ] {
            assert_eq!(
                remove_owners(&slot, &[leaving], Reason::SessionEnd, (&here(), NOW), LABEL),
                SlotChange::Keep
            );
        }
    }

    #[test]
    fn unreadable_is_never_empty() {
        let refused = SlotView::Unreadable(Unreadable {
            why: "record version 2 is newer".into(),
            corrupt: false,
        });
        assert!(matches!(
            remove_owners(&refused, &["a"], Reason::SessionEnd, (&here(), NOW), LABEL),
            SlotChange::LeaveAlone { .. }
        ));
        let corrupt = SlotView::Unreadable(Unreadable {
            why: "not JSON".into(),
            corrupt: true,
        });
        assert!(matches!(
            remove_owners(&corrupt, &["a"], Reason::SessionEnd, (&here(), NOW), LABEL),
            SlotChange::MoveAside { .. }
        ));
        let facts = SlotFacts {
            alive: false,
            earlier_boot: false,
            owner_alive: false,
        };
        assert!(matches!(
            sweep(
                &refused,
                facts,
                |_| true,
                &policy(clock::parse(NOW).unwrap(), Duration::ZERO),
                (&here(), LABEL)
            ),
            SlotChange::LeaveAlone { .. }
        ));
    }

    #[test]
    fn another_hosts_record_is_left_alone() {
        let mut foreign = record(&["a"], "2026-01-01T00:00:00Z", None);
        foreign.host = "elsewhere".into();
        let view = SlotView::Broker(foreign);
        assert_eq!(
            remove_owners(&view, &["a"], Reason::SessionEnd, (&here(), NOW), LABEL),
            SlotChange::Keep
        );
        let dead = SlotFacts {
            alive: false,
            earlier_boot: false,
            owner_alive: false,
        };
        assert_eq!(
            sweep(
                &view,
                dead,
                |_| true,
                &policy(clock::parse(NOW).unwrap(), Duration::ZERO),
                (&here(), LABEL)
            ),
            SlotChange::Keep
        );
    }

    #[test]
    fn attaching_adds_once_and_refreshes_the_idle_clock() {
        let base = record(&["a"], "2026-01-01T00:00:00Z", None);
        let at = Stamp {
            wall: "2026-01-02T00:00:00Z".into(),
            boot_ms: 77,
        };
        let change = add_owner(&base, Some("b"), &at);
        assert_eq!(owners_after(&change), ["a", "b"]);
        assert_eq!(change.record().unwrap().last_active, "2026-01-02T00:00:00Z");
        assert_eq!(change.record().unwrap().last_active_boot_ms, Some(77));
        let again = add_owner(&base, Some("a"), &at);
        let SlotChange::Write { owners, .. } = again else {
            panic!()
        };
        assert!(owners.added.is_empty());
    }

    /// Hardening: a wall clock stepped back stalled idle TTLs, one stepped forward hastened them. The boot stamp
    /// decides where there is one; older records fall back to the wall clock.
    #[test]
    fn idle_time_is_read_on_the_boot_clock_where_the_record_has_it() {
        let now = clock::parse("2026-01-01T01:00:00Z").unwrap();
        let mut ahead = record(&[], "2026-01-02T00:00:00Z", None);
        ahead.last_active_boot_ms = Some(1_000);
        assert_eq!(
            idle_for(&ahead, now, 3_601_000),
            Duration::from_secs(3600),
            "a future wall stamp does not stall it"
        );
        let mut behind = record(&[], "2025-01-01T00:00:00Z", None);
        behind.last_active_boot_ms = Some(3_600_000);
        assert_eq!(idle_for(&behind, now, 3_601_000), Duration::from_secs(1));
        let old = record(&[], "2026-01-01T00:00:00Z", None);
        assert_eq!(idle_for(&old, now, 5), Duration::from_secs(3600));
        behind.last_active_boot_ms = Some(9_999_999);
        assert!(
            idle_for(&behind, now, 5) > Duration::from_secs(86_400),
            "another boot's stamp: the wall clock"
        );
    }

    const LIVE: SlotFacts = SlotFacts {
        alive: true,
        earlier_boot: false,
        owner_alive: true,
    };

    fn policy(now: SystemTime, default_ttl: Duration) -> SweepPolicy {
        SweepPolicy {
            now,
            boot_now_ms: 0,
            default_ttl,
            retention: Duration::from_secs(60),
        }
    }

    fn verdict(record: BrokerRecord, facts: SlotFacts, ttl: Duration) -> SlotChange {
        let now = clock::parse("2026-01-01T01:00:00Z").unwrap();
        sweep(
            &SlotView::Broker(record),
            facts,
            |_| false,
            &policy(now, ttl),
            (&here(), LABEL),
        )
    }

    #[test]
    fn sweep_verdicts() {
        let ttl = Duration::from_secs(1800);
        let fresh = record(&["a"], "2026-01-01T00:59:00Z", None);
        let stale = record(&["a"], "2026-01-01T00:00:00Z", None);
        assert_eq!(verdict(fresh.clone(), LIVE, ttl), SlotChange::Keep);
        assert_eq!(
            verdict(stale.clone(), LIVE, ttl),
            SlotChange::Keep,
            "live owner, no opt-in"
        );
        let ownerless = SlotFacts {
            owner_alive: false,
            ..LIVE
        };
        assert!(matches!(
            verdict(stale.clone(), ownerless, ttl),
            SlotChange::HandOff {
                reason: Reason::IdleTimeout,
                ..
            }
        ));
        assert_eq!(
            verdict(stale, ownerless, Duration::ZERO),
            SlotChange::Keep,
            "0 disables"
        );
        let opted_in = record(&["a"], "2026-01-01T00:59:57Z", Some(2));
        assert!(matches!(
            verdict(opted_in, LIVE, ttl),
            SlotChange::HandOff {
                reason: Reason::IdleTimeout,
                ..
            }
        ));
        let dead = SlotFacts {
            alive: false,
            ..LIVE
        };
        assert!(matches!(
            verdict(fresh.clone(), dead, ttl),
            SlotChange::Prune {
                reason: Reason::BrokerGone,
                ..
            }
        ));
        let rebooted = SlotFacts {
            earlier_boot: true,
            ..LIVE
        };
        assert!(matches!(
            verdict(fresh, rebooted, ttl),
            SlotChange::Prune { .. }
        ));
    }

    #[test]
    fn sweep_drops_ended_owners_and_stops_when_none_is_left() {
        let now = clock::parse(NOW).unwrap();
        let shared = SlotView::Broker(record(&["a", "b"], &clock::format(now), None));
        let policy = policy(now, Duration::ZERO);
        let change = sweep(&shared, LIVE, |s| s == "a", &policy, (&here(), LABEL));
        assert!(matches!(change, SlotChange::Write { .. }) && change.removes("a"));
        assert_eq!(owners_after(&change), ["b"]);
        let change = sweep(&shared, LIVE, |_| true, &policy, (&here(), LABEL));
        assert!(matches!(
            change,
            SlotChange::HandOff {
                reason: Reason::SessionEnd,
                ..
            }
        ));
        assert!(matches!(
            sweep(&SlotView::Empty, LIVE, |_| true, &policy, (&here(), LABEL)),
            SlotChange::RemoveEmpty { .. }
        ));
    }
}
