//! Timestamps as stored in records and events: RFC 3339 UTC strings, and human durations on the command line.

use std::time::{Duration, SystemTime};

/// Now, as stored in records (`2026-11-25T00:16:47.123Z`).
pub fn now_rfc3339() -> String {
    format(SystemTime::now())
}

pub fn format(time: SystemTime) -> String {
    humantime::format_rfc3339_millis(time).to_string()
}

/// Parses a stored timestamp; `None` for anything that is not RFC 3339.
pub fn parse(text: &str) -> Option<SystemTime> {
    humantime::parse_rfc3339_weak(text).ok()
}

/// How long ago `text` was, or `None` when it does not parse. A time in the future is zero ago.
pub fn age(text: &str, now: SystemTime) -> Option<Duration> {
    parse(text).map(|then| now.duration_since(then).unwrap_or_default())
}

/// A human duration (`90s`, `30m`, `2h`, `500ms`); the message names what was expected.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let trimmed = text.trim();
    if trimmed.chars().all(|c| c.is_ascii_digit()) && !trimmed.is_empty() {
        return Err(format!(
            "expected a duration with a unit like 90s, 30m or 2h, got {text:?}"
        ));
    }
    humantime::parse_duration(trimmed)
        .map_err(|_| format!("expected a duration like 90s, 30m or 2h, got {text:?}"))
}

/// Milliseconds of a duration, saturating.
pub fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_need_a_unit() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert!(parse_duration("90").is_err());
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn timestamps_round_trip() {
        let now = SystemTime::now();
        let text = format(now);
        assert!(text.ends_with('Z'));
        let back = parse(&text).unwrap();
        assert!(now.duration_since(back).unwrap() < Duration::from_millis(1));
        assert_eq!(parse("yesterday"), None);
    }
}
