//! One deadline end to end: a point in time every wait of an invocation is bounded by (stdin, each lock, the
//! `/proc` scan, the stopper). Built once from `--deadline` (or far away for commands that have none) and passed
//! down; a wait asks it how long is left instead of carrying its own fixed timeout.

use std::time::{Duration, Instant};

/// How far away "no deadline" is: far enough never to matter, near enough never to overflow.
const FAR: Duration = Duration::from_secs(24 * 3600);

/// A point in time by which work must be done.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Deadline(Instant);

impl Deadline {
    /// `duration` from now; a duration too large to add saturates to the far deadline.
    pub(crate) fn after(duration: Duration) -> Self {
        let now = Instant::now();
        Deadline(now.checked_add(duration.min(FAR)).unwrap_or(now))
    }

    /// The deadline of commands that have none (a day away).
    pub(crate) fn far() -> Self {
        Deadline::after(FAR)
    }

    /// Already passed: a wait under it tries once and gives up.
    pub(crate) fn now() -> Self {
        Deadline(Instant::now())
    }

    pub(crate) fn at(instant: Instant) -> Self {
        Deadline(instant)
    }

    /// How long is left (zero once passed).
    pub(crate) fn remaining(self) -> Duration {
        self.0.saturating_duration_since(Instant::now())
    }

    pub(crate) fn expired(self) -> bool {
        Instant::now() >= self.0
    }

    /// The earlier of the two.
    #[must_use]
    pub(crate) fn min(self, other: Deadline) -> Deadline {
        Deadline(self.0.min(other.0))
    }

    /// This deadline moved `margin` earlier (kept back to hand work on and exit), never before now.
    #[must_use]
    pub(crate) fn less(self, margin: Duration) -> Deadline {
        let earlier = self.0.checked_sub(margin).unwrap_or(self.0);
        Deadline(earlier.max(Instant::now().min(self.0)))
    }

    /// This deadline moved `extra` later (saturating like `after`).
    #[must_use]
    pub(crate) fn later(self, extra: Duration) -> Deadline {
        Deadline(self.0.checked_add(extra.min(FAR)).unwrap_or(self.0))
    }

    /// Sleeps `pause`, or less when the deadline comes first.
    pub(crate) fn sleep(self, pause: Duration) {
        std::thread::sleep(pause.min(self.remaining()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absurd_durations_saturate() {
        let deadline = Deadline::after(Duration::MAX);
        assert!(deadline.remaining() <= FAR && !deadline.expired());
    }

    #[test]
    fn remaining_shrinks_to_zero() {
        let deadline = Deadline::after(Duration::from_millis(5));
        assert!(deadline.remaining() <= Duration::from_millis(5));
        std::thread::sleep(Duration::from_millis(10));
        assert!(deadline.expired());
        assert_eq!(deadline.remaining(), Duration::ZERO);
    }

    #[test]
    fn min_and_less() {
        let near = Deadline::after(Duration::from_secs(1));
        let far = Deadline::far();
        assert_eq!(near.min(far), near);
        assert_eq!(far.min(near), near);
        assert!(near.less(Duration::from_millis(500)) < near);
        assert!(near.less(Duration::from_secs(5)) <= near);
        assert!(near.less(Duration::from_secs(5)).remaining() <= Duration::from_millis(1));
    }
}
