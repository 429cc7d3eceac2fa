//! `log`: a readable (or JSON) view of `events.jsonl`, filtered by session, age and action.

use std::time::{Duration, SystemTime};

use crate::config::{Config, LogRequest};
use crate::error::Outcome;
use crate::model::clock;
use crate::model::name::SessionId;
use crate::store::events::{Event, EventLog};
use crate::store::root::StateRoot;

/// Which events to show.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    pub session: Option<SessionId>,
    pub since: Option<Duration>,
    pub action: Option<String>,
}

impl Filter {
    pub fn keeps(&self, event: &Event, now: SystemTime) -> bool {
        self.session
            .as_ref()
            .is_none_or(|id| event.session.as_deref() == Some(id.as_str()))
            && self
                .action
                .as_ref()
                .is_none_or(|action| &event.action == action)
            && self
                .since
                .is_none_or(|since| clock::age(&event.ts, now).is_some_and(|age| age <= since))
    }
}

pub fn run(request: &LogRequest, config: &Config) -> anyhow::Result<Outcome> {
    let filter = &request.filter;
    let events: Vec<Event> = match StateRoot::open_existing(&config.state_dir)? {
        Some(root) => {
            let now = SystemTime::now();
            EventLog::new(&root)
                .read_all()
                .into_iter()
                .filter(|event| filter.keeps(event, now))
                .collect()
        }
        None => Vec::new(),
    };
    if request.freed {
        print_freed(&events, request.json);
        return Ok(Outcome::Done);
    }
    if request.json {
        println!("{}", serde_json::to_string_pretty(&events)?);
        return Ok(Outcome::Done);
    }
    if events.is_empty() {
        println!("no events");
    }
    for event in &events {
        println!("{}", line(event));
    }
    Ok(Outcome::Done)
}

/// The memory that the stops among `events` freed: what each stopped process held when it was found.
fn print_freed(events: &[Event], json: bool) {
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
            crate::leftovers::format_kib(total),
            freed.len()
        );
    }
}

/// One event as a line: `time  action  reason  result  pid  session  where  detail`.
pub fn line(event: &Event) -> String {
    let place = match (&event.workspace, &event.name) {
        (Some(workspace), Some(name)) if name != "default" => format!("{workspace} [{name}]"),
        (Some(workspace), _) => workspace.clone(),
        _ => String::new(),
    };
    let mut text = format!(
        "{:<24} {:<14} {:<13} {:<12} {:>7}  {}",
        event.ts,
        event.action,
        event.reason.as_deref().unwrap_or("-"),
        event.result,
        event.pid.map_or(String::new(), |pid| pid.to_string()),
        event.session.as_deref().unwrap_or("-"),
    );
    let held = event.argv.as_ref().map(|argv| {
        format!(
            "{} ({})",
            argv.join(" "),
            crate::leftovers::format_kib(event.rss_kib.unwrap_or(0))
        )
    });
    for extra in [
        place.as_str(),
        event.detail.as_deref().unwrap_or_default(),
        held.as_deref().unwrap_or_default(),
    ] {
        if !extra.is_empty() {
            text.push_str("  ");
            text.push_str(extra);
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

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
