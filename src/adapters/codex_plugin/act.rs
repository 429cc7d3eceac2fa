//! Acting on the verdicts: a stop becomes one of our stop tickets (the shutdown line on the broker's socket, bounded
//! to 750 ms → SIGTERM to its group → grace → SIGKILL), carrying the plugin's files to clean once the stopper has
//! confirmed the exit; a dead record is cleaned at once. Each verdict is a plan the executor applies (`act::clean`
//! says which files go).

use super::decide::{Occasion, Verdict};
use super::observe::{Broker, World};
use super::{ADAPTER, SHUTDOWN_MESSAGE, action};
use crate::act::executor::{self, Mode};
use crate::adapters::AdapterReport;
use crate::model::plan::{Change, Plan};
use crate::model::record::{DEFAULT_GRACE_MS, Shutdown, StopTicket};
use crate::store::Store;
use crate::store::events::{Event, Reason};

pub(crate) use crate::model::plan::Cleanup;

/// The stop ticket of a verified broker: its identity as observed, its group when it leads one, the shutdown line
/// as the graceful step, and its files. `stamp` is when and on which host it is filed.
pub(crate) fn ticket(
    broker: &Broker,
    reason: Reason,
    session: Option<&str>,
    stamp: (&str, &str),
) -> Option<StopTicket> {
    let seen = broker.process.as_ref()?;
    let pgid = (seen.stat.pgid == seen.identity.pid).then_some(seen.identity.pid);
    let mut ticket = StopTicket::new(
        seen.identity.clone(),
        pgid,
        reason.as_str(),
        DEFAULT_GRACE_MS,
        ADAPTER.to_owned(),
        stamp,
    );
    let files = broker.files();
    ticket.session = session.map(str::to_owned);
    ticket.workspace = Some(broker.workspace());
    ticket.name = Some(ADAPTER.to_owned());
    ticket.shutdown = files.socket.as_ref().map(|socket| Shutdown::Socket {
        socket: socket.to_string_lossy().into_owned(),
        message: SHUTDOWN_MESSAGE.to_owned(),
    });
    files.attach_to(&mut ticket);
    Some(ticket)
}

/// The change one verdict asks for (none for `Leave`, or a broker that cannot be stopped by its identity).
pub(crate) fn plan(
    broker: &Broker,
    verdict: &Verdict,
    occasion: &Occasion<'_>,
    world: &World,
    stamp: (&str, &str),
) -> Option<Change> {
    let event = |action: &str, result: &str| {
        let mut event = Event::planned(action, result)
            .session(occasion.ending())
            .slot(&broker.workspace(), ADAPTER);
        event.pid = broker.pid();
        event
    };
    Some(match verdict {
        Verdict::Leave => return None,
        Verdict::Stop(reason) => Change::Stop(ticket(broker, *reason, occasion.ending(), stamp)?),
        Verdict::Keep(why) => Change::Report(event("keep", "kept").detail(why.clone())),
        Verdict::Refuse(why) => Change::Report(event("refuse", "refused").detail(why.clone())),
        Verdict::Clean(reason) => Change::Clean {
            files: broker.files(),
            live_sockets: world.live_sockets.iter().cloned().collect(),
            event: event("clean", "cleaned").reason(reason),
        },
    })
}

/// Applies one verdict (describes it only, in a dry run) through the executor, adding to `report`.
pub(crate) fn apply(
    store: &Store,
    broker: &Broker,
    verdict: &Verdict,
    occasion: &Occasion<'_>,
    world: &World,
    dry_run: bool,
    report: &mut AdapterReport,
) {
    let now = crate::model::clock::now_rfc3339();
    let host = crate::store::root::host_name();
    let Some(change) = plan(broker, verdict, occasion, world, (&now, &host)) else {
        return;
    };
    // Already being stopped: whoever runs the pending tickets drives it.
    if let Change::Stop(ticket) = &change
        && store.tickets.path_of(ticket).exists()
    {
        return;
    }
    let target = format!("{ADAPTER} {}", broker.workspace());
    let pid = broker.pid();
    let applied = executor::execute(store, Plan::of(change), Mode::dry(dry_run));
    for (_, err) in &applied.failed {
        report.problems.push(format!("{target}: {err:#}"));
    }
    for change in applied.done {
        let (name, reason, result) = match (&change, verdict) {
            (Change::Stop(_), Verdict::Stop(reason)) => (
                "stop",
                Some(*reason),
                if dry_run { "would stop" } else { "stopping" }.to_owned(),
            ),
            (Change::Report(_), Verdict::Keep(why)) => ("keep", None, format!("kept: {why}")),
            (Change::Report(_), Verdict::Refuse(why)) => {
                ("refuse", None, format!("refused: {why}"))
            }
            (Change::Clean { event, .. }, Verdict::Clean(reason)) => (
                "clean",
                Some(*reason),
                if dry_run {
                    "would clean".to_owned()
                } else {
                    format!("cleaned: {}", event.detail.as_deref().unwrap_or_default())
                },
            ),
            _ => continue,
        };
        report
            .actions
            .push(action(name, reason, target.clone(), pid, result));
        if let Change::Stop(ticket) = change {
            report.tickets.push(ticket);
        }
    }
}
