//! The integration tests: one binary, driving the real `session-reaper` against real child processes.

mod belonging;
mod codex_plugin;
mod containment;
mod demo;
mod docs;
mod edges;
mod first_hour;
mod foundation;
mod hardening;
mod harness;
mod hooks;
mod layers;
mod leftovers;
mod lineage;
mod newcomer;
mod newcomer_path;
mod packaging;
mod reliability;
mod reshaped;
mod settings;
mod sweep;
mod test_cgroup;
