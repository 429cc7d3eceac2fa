//! `reap --session S` ends one session now, as `SessionEnd` would; `reap --all --reason shutdown|restart` drains
//! every live session within a deadline (agent or host shutdown), handing what is left to the finisher.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::act::executor::{self, Mode};
use crate::act::finisher;
use crate::act::signal::Guard;
use crate::act::stopper::{StopOutcome, StopReport};
use crate::commands::session_end::{self, EndReport, Ending};
use crate::config::{Config, ReapRequest, ReapTarget};
use crate::error::Outcome;
use crate::model::deadline::Deadline;
use crate::model::name::SessionId;
use crate::model::plan::{Change, Plan};
use crate::store::Store;
use crate::store::slot::LOCK_WAIT;

/// How long `reap --all` waits when no `--deadline` is given.
const DRAIN_DEADLINE: Duration = Duration::from_secs(2);

pub(crate) fn run(request: &ReapRequest, config: &Config) -> anyhow::Result<Outcome> {
    let Some(store) = Store::open_for(&config.state_dir, request.dry_run)? else {
        println!(
            "no state yet at {}: nothing to do",
            config.state_dir.display()
        );
        return Ok(Outcome::Done);
    };
    let all = request.target == ReapTarget::AllLive;
    let sessions = match &request.target {
        ReapTarget::Session { id, force } => vec![resolve_session(&store, id, *force)?],
        ReapTarget::AllLive => live_sessions(&store),
        ReapTarget::Duplicates => return duplicates(request, &store),
    };
    let guard = Guard::new();
    let started = Instant::now();
    // `--deadline` bounds the whole run, lock waits included.
    let overall = request.deadline.map_or_else(Deadline::far, Deadline::after);
    let reports: Vec<EndReport> = sessions
        .iter()
        .map(|session| {
            let ending = Ending {
                session: session.clone(),
                reason: request.reason,
                agent_reason: None,
                seen: None,
                dry_run: request.dry_run,
                codex: request.codex.clone(),
            };
            session_end::end_session(
                &store,
                &guard,
                &ending,
                Deadline::after(LOCK_WAIT).min(overall),
            )
        })
        .collect();
    // The adapters claim their brokers first: a broker another tool shares is never one session's leftover.
    let claimed = crate::adapters::claimed(&request.codex, overall);
    let (leftovers, leftover_tickets) =
        crate::act::leftovers::for_reap(&store, &sessions, &claimed, request.dry_run);
    let tickets: Vec<_> = reports
        .iter()
        .flat_map(|report| report.tickets.clone())
        .chain(leftover_tickets)
        .collect();
    let stops = if request.dry_run {
        Vec::new()
    } else {
        let deadline = request
            .deadline
            .or(all.then_some(DRAIN_DEADLINE))
            .map_or_else(
                || crate::act::stopper::longest_stop(&tickets),
                |deadline| Deadline::at(started).later(deadline),
            );
        let stops = crate::commands::stopper(&store, guard).run(tickets.clone(), deadline);
        if stops
            .iter()
            .any(|stop| matches!(stop.outcome, StopOutcome::Pending { .. }))
        {
            finisher::start(&store)?;
        }
        stops
    };
    let ok = reports.iter().all(|report| report.problems.is_empty())
        && stops.iter().all(|stop| !stop.outcome.is_failure());
    if request.json {
        let mut value = json!({ "dry_run": request.dry_run, "sessions": reports, "leftovers": leftovers, "stops": stops });
        if request.dry_run {
            value["would_stop"] = json!(tickets.len());
        }
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        print_human(request.dry_run, &reports, &leftovers, &stops);
    }
    Ok(Outcome::from_ok(ok))
}

/// The session `id` names among the records (a unique prefix will do); an id no record knows only with `force`.
fn resolve_session(store: &Store, id: &SessionId, force: bool) -> anyhow::Result<SessionId> {
    let records = store.sessions.all();
    let owners: Vec<String> = crate::store::slot::Slot::all(&store.root)
        .iter()
        .filter_map(|slot| slot.view(&store.root).broker().cloned())
        .flat_map(|record| record.owners.into_iter().map(|owner| owner.session))
        .collect();
    let known = records
        .iter()
        .map(|record| record.session_id.as_str())
        .chain(owners.iter().map(String::as_str));
    match crate::commands::resolve::resolve(id, known.clone())? {
        Some(resolved) => {
            crate::commands::resolve::say_resolved(id, &resolved);
            Ok(resolved)
        }
        None if force => Ok(id.clone()),
        None => Err(crate::commands::resolve::unknown(
            id,
            known,
            "; pass --force to end it anyway (a session started before the hooks were installed)",
        )),
    }
}

fn live_sessions(store: &Store) -> Vec<SessionId> {
    store
        .sessions
        .all()
        .into_iter()
        .filter(|record| !record.is_ended())
        .filter_map(|record| SessionId::parse(&record.session_id).ok())
        .collect()
}

fn print_human(
    dry_run: bool,
    reports: &[EndReport],
    leftovers: &[crate::decide::leftovers::Found],
    stops: &[StopReport],
) {
    let verb = if dry_run { "would end" } else { "ended" };
    if reports.is_empty() {
        println!("no live session to end");
    }
    for report in reports {
        println!(
            "session {} {} ({})",
            report.session,
            crate::commands::term::lead(verb),
            report.reason
        );
        for slot in &report.slots {
            let what = if slot.stopping {
                if dry_run {
                    "last owner: would stop"
                } else {
                    "last owner: stopping"
                }
            } else {
                "owner removed; kept for others"
            };
            println!(
                "  broker pid {:>7}  {what}  {}",
                slot.pid,
                super::broker::place(&slot.workspace, &slot.name)
            );
        }
        for (pid, argv) in &report.resume_orphans {
            let what = if dry_run { "would stop" } else { "stopping" };
            println!("  resume orphan pid {pid:>7}  {what}  {}", argv.join(" "));
        }
        crate::commands::leftovers::print_found(leftovers, &report.session, dry_run);
        crate::adapters::print_actions(&report.codex_plugin);
        let no_leftover = leftovers
            .iter()
            .all(|found| found.session != report.session || found.leftovers.is_empty());
        if report.slots.is_empty()
            && report.resume_orphans.is_empty()
            && report.codex_plugin.is_empty()
            && no_leftover
        {
            println!("  owned no broker; no process resumes it; left nothing behind");
        }
        for problem in &report.problems {
            println!(
                "  {}",
                crate::commands::term::lead(&format!("problem: {problem}"))
            );
        }
    }
    crate::commands::print_stops(stops);
}

/// `reap --duplicates`: all but the newest writer of each live session are stopped, each by its identity.
fn duplicates(request: &ReapRequest, store: &Store) -> anyhow::Result<Outcome> {
    let deadline = request.deadline.map_or_else(Deadline::far, Deadline::after);
    let found = crate::commands::duplicates::find(&store.sessions.all(), deadline);
    let tickets: Vec<_> = found.iter().flat_map(|d| d.tickets.clone()).collect();
    let stops = if request.dry_run {
        Vec::new()
    } else {
        let plan = Plan(tickets.iter().cloned().map(Change::Stop).collect());
        let applied = executor::execute(store, plan, Mode::Apply);
        if let Some((_, err)) = applied.failed.into_iter().next() {
            return Err(err);
        }
        crate::commands::stopper(store, Guard::new())
            .run(tickets.clone(), crate::act::stopper::longest_stop(&tickets))
    };
    if request.json {
        let value = json!({ "dry_run": request.dry_run, "duplicates": found, "stops": stops });
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        if found.is_empty() {
            println!("no live session has duplicate --resume writers");
        }
        let verb = if request.dry_run {
            "would stop"
        } else {
            "stopping"
        };
        for duplicates in &found {
            let pids: Vec<String> = duplicates.stopped.iter().map(i32::to_string).collect();
            println!(
                "session {}: keeping the newest writer pid {}; {verb} pids {}",
                duplicates.session,
                duplicates.kept,
                pids.join(", ")
            );
        }
        crate::commands::print_stops(&stops);
    }
    Ok(Outcome::from_ok(
        stops.iter().all(|stop| !stop.outcome.is_failure()),
    ))
}
