//! The domain's values, with no I/O: records as stored (typed, serde-compatible with every version read), ids and
//! names, timestamps and the one `Deadline` that bounds every wait.

pub(crate) mod action;
pub(crate) mod bounded;
pub(crate) mod check;
pub(crate) mod clock;
pub(crate) mod containment;
pub(crate) mod deadline;
pub(crate) mod event;
pub(crate) mod hook_event;
pub(crate) mod host;
pub(crate) mod known;
pub(crate) mod leftover;
pub(crate) mod marker;
pub(crate) mod name;
pub(crate) mod plan;
pub(crate) mod reason;
pub(crate) mod record;
pub(crate) mod slot;
pub(crate) mod text;
pub(crate) mod workspace;
