//! The integration tests: one binary, driving the real `session-reaper` against real child processes.

mod belonging;
mod codex_plugin;
mod edges;
mod foundation;
mod hardening;
mod harness;
mod hooks;
mod leftovers;
mod lineage;
mod newcomer;
mod newcomer_path;
mod reliability;
mod reshaped;
mod settings;
mod sweep;
