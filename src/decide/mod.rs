//! Deciding, with no I/O: from what was observed (a slot's view, session records, facts about processes) to the
//! change to make. The executor (`act::executor`) applies a change under its lock, or describes it in a dry run;
//! both come from these same functions, so a dry run shows exactly what a real run would do.

pub(crate) mod belonging;
pub(crate) mod containment;
pub(crate) mod leftovers;
pub(crate) mod lineage;
pub(crate) mod resume;
pub(crate) mod slot;

pub(crate) use slot::{SlotChange, SlotFacts, SweepPolicy};
