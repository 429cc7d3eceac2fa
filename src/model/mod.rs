//! The domain's values, with no I/O: records as stored (typed, serde-compatible with every version read), ids and
//! names, timestamps and the one `Deadline` that bounds every wait.

pub mod bounded;
pub mod clock;
pub mod containment;
pub mod deadline;
pub mod leftover;
pub mod name;
pub mod record;
