//! What a slot holds, as read at one moment: `Empty | Broker | Unreadable(reason)` — an unreadable record is never
//! taken for an empty one. Reading it is the store's (`store::slot`); deciding on it is `decide::slot`'s.

use crate::model::record::BrokerRecord;

/// Why a record that exists could not be used. It still counts as occupying its place: an unreadable record is
/// never taken for an empty one (its broker may be alive), never overwritten silently.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub(crate) struct Unreadable {
    pub why: String,
    /// Not JSON, or not the shape of a record: a writer moves it aside (and reports it). Otherwise the record is
    /// refused as it stands (a newer version, not a regular file, another user's) and left in place.
    pub corrupt: bool,
}

/// What a slot holds, as read at one moment (under its lock for a change, without it for a look).
#[derive(Clone, Debug)]
#[allow(clippy::large_enum_variant)]
pub(crate) enum SlotView {
    Empty,
    Broker(BrokerRecord),
    Unreadable(Unreadable),
}
