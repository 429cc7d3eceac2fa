//! The integration tests: one binary, driving the real `session-reaper` against real child processes.

mod belonging;
mod brokers;
mod cli;
mod codex_plugin;
mod containment;
mod deadlines;
mod demo;
mod docs;
mod everyday;
mod harness;
mod hook_test;
mod hooks;
mod layers;
mod leftovers;
mod lineage;
mod owner_index;
mod packaging;
mod records;
mod reliability;
mod settings;
mod setup;
mod sweep;
mod test_cgroup;
mod world;
