//! End to end against the real Factory Droid (0.225.2, installed by `.ci/install-droid.sh`): hooks written by
//! `session-reaper install --agent droid` (events at the top level of `~/.factory/hooks.json`, as Droid reads them)
//! record the session at `SessionStart` and end it at `SessionEnd`; the `(setsid sleep &)` and `nohup sleep &` its
//! shell tool left are stopped once `droid exec` has ended.
//!
//! `droid exec --auto high` runs offline in a throwaway `HOME` with a custom model (`~/.factory/settings.json`,
//! `generic-chat-completion-api`) pointing at a fake model on 127.0.0.1; no login. A custom harness (see
//! `e2e_support`): without the client the test is reported as ignored, with the reason; under `CI=true` it must run.

mod e2e_support;

use std::path::Path;
use std::process::Command;

use e2e_support::{Client, Run};

fn main() {
    e2e_support::main(&Client {
        test: "droid_exec_records_its_session_and_its_shell_tools_jobs_are_stopped",
        title: "Factory Droid",
        agent: "droid",
        bin_var: "SESSION_REAPER_DROID_BIN",
        default_path: "target/e2e-droid/node_modules/@factory/cli-linux-x64/bin/droid",
        script: ".ci/install-droid.sh",
        config: Some((".factory/settings.json", model)),
        end_reason: "session_end",
        command,
    });
}

/// A custom model at the fake model's address: no login needed.
fn model(run: &Run) -> String {
    serde_json::json!({"customModels": [{
        "model": "fake-model",
        "displayName": "Fake model",
        "baseUrl": format!("http://{}/v1", run.api),
        "apiKey": "not-a-key",
        "provider": "generic-chat-completion-api",
        "maxOutputTokens": 1000
    }]})
    .to_string()
}

fn command(run: &Run, droid: &Path) -> Command {
    let mut command = run.isolated(droid);
    command.args([
        "exec",
        "--auto",
        "high",
        "-m",
        "custom:fake-model",
        "start the two jobs",
    ]);
    command
}
