//! The integration tests: one binary, driving the real `session-reaper` against real child processes.

mod codex_plugin;
mod edges;
mod foundation;
mod harness;
mod hooks;
mod lineage;
mod newcomer;
mod reliability;
mod reshaped;
mod sweep;
