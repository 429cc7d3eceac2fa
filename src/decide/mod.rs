//! Deciding, with no I/O: from what was observed (a slot's view, session records, facts about processes) to the
//! change to make. The executor (`act::executor`) applies a change under its lock, or describes it in a dry run;
//! both come from these same functions, so a dry run shows exactly what a real run would do.

pub mod belonging;
pub mod containment;
pub mod leftovers;
pub mod lineage;
pub mod resume;
pub mod slot;

pub use slot::{SlotChange, SlotFacts, SweepPolicy};
