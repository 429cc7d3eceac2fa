//! Acting on decided changes: the executor applies them under their locks (one event per applied change) or, in
//! a dry run, only returns them to be described.

pub mod executor;

pub use executor::{Mode, update_slot};
