//! The integration tests: one binary, driving the real `session-reaper` against real child processes.

mod foundation;
mod harness;
mod hooks;
mod newcomer;
mod settings;
mod sweep;
