//! The domain's values, with no I/O: records as stored (typed, serde-compatible with every version read), ids and
//! names, timestamps and the one `Deadline` that bounds every wait.

pub mod action;
pub mod bounded;
pub mod check;
pub mod clock;
pub mod containment;
pub mod deadline;
pub mod hook_event;
pub mod host;
pub mod known;
pub mod leftover;
pub mod marker;
pub mod name;
pub mod reason;
pub mod record;
pub mod slot;
pub mod text;
pub mod workspace;
