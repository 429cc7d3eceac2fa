//! `log`: a readable (or JSON) view of `events.jsonl`, filtered by session, age and action.

use std::io::Write;
use std::time::SystemTime;

use crate::config::{Config, LogRequest};
use crate::error::Outcome;
use crate::store::events::{Event, EventLog};
use crate::store::root::StateRoot;

pub(crate) fn run(request: &LogRequest, config: &Config) -> anyhow::Result<Outcome> {
    let mut filter = request.filter.clone();
    let all = match StateRoot::open_existing(&config.state_dir)? {
        Some(root) => EventLog::new(&root).read_all(),
        None => Vec::new(),
    };
    if let Some(given) = &filter.session {
        let known: Vec<&str> = all.iter().flat_map(Event::sessions).collect();
        let resolved = crate::commands::resolve::resolve(given, known.iter().copied())?
            .ok_or_else(|| {
                crate::commands::resolve::unknown(given, known.iter().copied(), " in the log")
            })?;
        crate::commands::resolve::say_resolved(given, &resolved);
        filter.session = Some(resolved);
    }
    let now = SystemTime::now();
    let events: Vec<&Event> = all
        .iter()
        .filter(|event| filter.keeps(event, now))
        .collect();
    if request.freed {
        print_freed(&events, request.json);
        return Ok(Outcome::Done);
    }
    if request.json {
        let mut out = std::io::stdout().lock();
        for event in &events {
            writeln!(out, "{}", serde_json::to_string(event)?)?;
        }
        return Ok(Outcome::Done);
    }
    if events.is_empty() {
        println!("no events");
        return Ok(Outcome::Done);
    }
    println!("{}", columns(&HEADER.map(str::to_owned), false));
    let color = crate::commands::term::get().color;
    for event in &events {
        println!("{}", columns(&fields(event), color));
    }
    Ok(Outcome::Done)
}

/// The memory that the stops among `events` freed: what each stopped process held when it was found.
fn print_freed(events: &[&Event], json: bool) {
    let freed: Vec<u64> = events
        .iter()
        .filter(|event| event.action == "stop" && event.result == "stopped")
        .filter_map(|event| event.rss_kib)
        .collect();
    let total: u64 = freed.iter().sum();
    if json {
        println!(
            "{}",
            serde_json::json!({ "freed_kib": total, "stops": freed.len() })
        );
    } else {
        println!(
            "freed {} in {} stop(s)",
            crate::commands::leftovers::format_kib(total),
            freed.len()
        );
    }
}

/// The column titles of `log`.
const HEADER: [&str; 8] = [
    "TIME", "ACTION", "REASON", "RESULT", "PID", "SESSION", "WHERE", "DETAIL",
];

/// The fields of a line in fixed columns (the last two as they come); `color` paints the result.
fn columns(fields: &[String; 8], color: bool) -> String {
    let [ts, action, reason, result, pid, session, place, detail] = fields;
    let result = crate::commands::term::paint(result, 13, color);
    let mut text = format!("{ts:<24} {action:<17} {reason:<13} {result} {pid:>7}  {session:<36}");
    for extra in [place, detail] {
        if !extra.is_empty() {
            text.push_str("  ");
            text.push_str(extra);
        }
    }
    text.trim_end().to_owned()
}

/// One event's fields, in the order of `HEADER`: `time  action  reason  result  pid  session  where  detail`.
fn fields(event: &Event) -> [String; 8] {
    let place = match (&event.workspace, &event.name) {
        (Some(workspace), Some(name)) => super::broker::place(workspace, name),
        (Some(workspace), None) => workspace.clone(),
        _ => String::new(),
    };
    [
        event.ts.clone(),
        event.action.clone(),
        event.reason.clone().unwrap_or_else(|| "-".to_owned()),
        event.result.clone(),
        event
            .pid
            .map_or_else(|| "-".to_owned(), |pid| pid.to_string()),
        event.session.clone().unwrap_or_else(|| "-".to_owned()),
        place,
        match &event.argv {
            // A leftover's stop says what it ran and the memory it held.
            Some(argv) => format!(
                "{} {} ({})",
                event.detail.clone().unwrap_or_default(),
                argv.join(" "),
                crate::commands::leftovers::format_kib(event.rss_kib.unwrap_or(0))
            )
            .trim_start()
            .to_owned(),
            None => event.detail.clone().unwrap_or_default(),
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::clock;
    use crate::model::event::Filter;
    use crate::model::name::SessionId;
    use std::time::Duration;

    #[test]
    fn filters_by_session_action_and_age() {
        let now = SystemTime::now();
        let mut old = Event::new("stop", "stopped").session(Some("a"));
        old.ts = clock::format(now - Duration::from_secs(7200));
        let fresh = Event::new("prune", "pruned").session(Some("b"));
        let by_session = Filter {
            session: Some(SessionId::parse("a").unwrap()),
            ..Filter::default()
        };
        assert!(by_session.keeps(&old, now) && !by_session.keeps(&fresh, now));
        let by_age = Filter {
            since: Some(Duration::from_secs(3600)),
            ..Filter::default()
        };
        assert!(!by_age.keeps(&old, now) && by_age.keeps(&fresh, now));
        let by_action = Filter {
            action: Some("prune".into()),
            ..Filter::default()
        };
        assert!(by_action.keeps(&fresh, now) && !by_action.keeps(&old, now));
    }
}
