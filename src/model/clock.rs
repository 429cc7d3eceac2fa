//! Timestamps as stored in records and events: RFC 3339 UTC strings, and human durations on the command line.

use std::time::{Duration, SystemTime};

/// Now, as stored in records (`2026-11-25T00:16:47.123Z`).
pub fn now_rfc3339() -> String {
    format(SystemTime::now())
}

pub(crate) fn format(time: SystemTime) -> String {
    humantime::format_rfc3339_millis(time).to_string()
}

/// Milliseconds on the boot clock (`CLOCK_BOOTTIME`: monotonic, counts suspend, never stepped). Where there is no
/// boot clock (other Unix), the monotonic clock.
pub(crate) fn boot_millis() -> u64 {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    let clock = rustix::time::ClockId::Boottime;
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let clock = rustix::time::ClockId::Monotonic;
    let now = rustix::time::clock_gettime(clock);
    u64::try_from(now.tv_sec).unwrap_or(0) * 1000
        + u64::try_from(now.tv_nsec).unwrap_or(0) / 1_000_000
}

/// One moment on both clocks: the wall clock for people and records, the boot clock for timing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Stamp {
    pub wall: String,
    pub boot_ms: u64,
}

impl Stamp {
    pub(crate) fn now() -> Self {
        Stamp {
            wall: now_rfc3339(),
            boot_ms: boot_millis(),
        }
    }
}

/// Parses a stored timestamp; `None` for anything that is not RFC 3339.
pub fn parse(text: &str) -> Option<SystemTime> {
    humantime::parse_rfc3339_weak(text).ok()
}

/// How long ago `text` was, or `None` when it does not parse. A time in the future is zero ago.
pub(crate) fn age(text: &str, now: SystemTime) -> Option<Duration> {
    parse(text).map(|then| now.duration_since(then).unwrap_or_default())
}

/// A human duration (`90s`, `30m`, `2h`, `500ms`); the message names what was expected.
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    let trimmed = text.trim();
    if trimmed.chars().all(|c| c.is_ascii_digit()) && !trimmed.is_empty() {
        return Err(format!(
            "expected a duration with a unit like 90s, 30m or 2h, got {text:?}"
        ));
    }
    humantime::parse_duration(trimmed)
        .map_err(|_| format!("expected a duration like 90s, 30m or 2h, got {text:?}"))
}

/// The longest idle TTL accepted (a sweep's or a broker's own).
pub(crate) const MAX_IDLE_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

/// An idle TTL: a duration as `parse_duration` reads it, or a bare `0` (disables); at most 30 days. A refusal
/// echoes the text as given (`30M` is thirty months, not minutes).
pub(crate) fn parse_idle_ttl(text: &str) -> Result<Duration, String> {
    if text.trim() == "0" {
        return Ok(Duration::ZERO);
    }
    let ttl = parse_duration(text)?;
    if ttl > MAX_IDLE_TTL {
        return Err(format!(
            "expected at most 30 days (0 disables), got {text:?} ({})",
            rounded(ttl)
        ));
    }
    Ok(ttl)
}

/// A duration for people, rounded to its two largest units (`698ms`, `1.2s`, `30m`, `2h 5m`, `3days`).
pub(crate) fn rounded(duration: Duration) -> String {
    let millis = duration.as_millis();
    if millis < 1000 {
        return format!("{millis}ms");
    }
    if millis < 10_000 {
        let tenths = millis / 100;
        return if tenths.is_multiple_of(10) {
            format!("{}s", tenths / 10)
        } else {
            format!("{}.{}s", tenths / 10, tenths % 10)
        };
    }
    let secs = duration.as_secs();
    let units = [(86_400, "days"), (3600, "h"), (60, "m"), (1, "s")];
    let mut parts = Vec::new();
    let mut rest = secs;
    for (size, name) in units {
        if rest >= size {
            parts.push(format!("{}{name}", rest / size));
            rest %= size;
        }
        if parts.len() == 2 || (!parts.is_empty() && rest == 0) {
            break;
        }
        if !parts.is_empty() && rest < size / 60 {
            break;
        }
    }
    if parts.is_empty() {
        parts.push("0s".to_owned());
    }
    parts.join(" ")
}

/// Milliseconds of a duration, saturating.
pub(crate) fn millis(duration: Duration) -> u64 {
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
    fn idle_ttls_accept_zero_and_refuse_more_than_30_days_as_given() {
        assert_eq!(parse_idle_ttl("0"), Ok(Duration::ZERO));
        assert_eq!(parse_idle_ttl("30m"), Ok(Duration::from_secs(1800)));
        let refusal = parse_idle_ttl("30M").unwrap_err();
        assert!(refusal.contains("\"30M\""), "{refusal}");
        assert!(parse_idle_ttl("31days").is_err());
    }

    #[test]
    fn durations_for_people_are_rounded() {
        assert_eq!(rounded(Duration::from_nanos(698_472_201)), "698ms");
        assert_eq!(rounded(Duration::from_millis(1234)), "1.2s");
        assert_eq!(rounded(Duration::from_secs(5)), "5s");
        assert_eq!(rounded(Duration::from_secs(1800)), "30m");
        assert_eq!(rounded(Duration::from_secs(7500)), "2h 5m");
        assert_eq!(rounded(Duration::from_secs(3 * 86_400 + 7)), "3days");
        assert_eq!(rounded(Duration::from_secs(90)), "1m 30s");
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
