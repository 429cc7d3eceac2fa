//! End to end against the real OpenCode (1.18.33, installed by `.ci/install-opencode.sh`): the plugin written by
//! `session-reaper install --agent opencode` runs the hook at `session.created`, which records the session and starts
//! the sentinel; OpenCode fires no end event, so the sentinel ends the session (`agent_gone`) once `opencode run` has
//! exited, and stops the `(setsid sleep &)` and `nohup sleep &` its shell tool left (each command in a session of
//! its own, carrying the `SESSION_REAPER_SESSION_ID` the plugin gave it).
//!
//! `opencode run` works offline in a throwaway `HOME` against an `@ai-sdk/openai-compatible` provider on 127.0.0.1;
//! at its first run with a plugin folder it installs `@opencode-ai/plugin` (and the provider's package) from the npm
//! registry. A custom harness (see `e2e_support`): without the client the test is reported as ignored, with the
//! reason; under `CI=true` it must run.

mod e2e_support;

use std::path::Path;
use std::process::Command;

use e2e_support::{Client, Run};

fn main() {
    e2e_support::main(&Client {
        test: "opencode_run_records_its_session_and_the_sentinel_stops_its_shell_tools_jobs",
        title: "OpenCode",
        agent: "opencode",
        bin_var: "SESSION_REAPER_OPENCODE_BIN",
        default_path: "target/e2e-opencode/node_modules/.bin/opencode",
        script: ".ci/install-opencode.sh",
        config: Some((".config/opencode/opencode.json", config)),
        end_reason: "agent_gone",
        command,
    });
}

/// A provider at the fake model's address, and the shell tool allowed.
fn config(run: &Run) -> String {
    serde_json::json!({
        "$schema": "https://opencode.ai/config.json",
        "provider": {"fake": {
            "npm": "@ai-sdk/openai-compatible",
            "name": "Fake",
            "options": {"baseURL": format!("http://{}/v1", run.api), "apiKey": "not-a-key"},
            "models": {"fake-model": {"name": "Fake model"}}
        }},
        "permission": {"bash": "allow"},
        "autoupdate": false,
        "share": "disabled"
    })
    .to_string()
}

fn command(run: &Run, opencode: &Path) -> Command {
    let mut command = run.isolated(opencode);
    command
        .env("OPENCODE_DISABLE_MODELS_FETCH", "1")
        .env("OPENCODE_DISABLE_AUTOUPDATE", "1")
        .env("OPENCODE_DISABLE_LSP_DOWNLOAD", "1")
        .args(["run", "-m", "fake/fake-model", "start the two jobs"]);
    command
}
