//! End to end against the real GitHub Copilot CLI (1.0.102, installed by `.ci/install-copilot.sh`): hooks written
//! by `session-reaper install --agent copilot` record the session at `sessionStart` and end it at `sessionEnd`; the
//! `(setsid sleep &)` and `nohup sleep &` its shell tool left (each command in a session of its own, carrying
//! `COPILOT_AGENT_SESSION_ID`) are stopped once `copilot -p` has ended.
//!
//! The native binary (`@github/copilot-linux-x64/copilot`) runs offline in a throwaway `HOME` (`COPILOT_OFFLINE`,
//! an `openai` provider on 127.0.0.1). A custom harness (see `e2e_support`): without the client the test is reported
//! as ignored, with the reason; under `CI=true` it must run.

mod e2e_support;

use std::path::Path;
use std::process::Command;

use e2e_support::{Client, Run};

fn main() {
    e2e_support::main(&Client {
        test: "copilot_p_records_its_session_and_its_shell_tools_jobs_are_stopped",
        title: "Copilot CLI",
        agent: "copilot",
        bin_var: "SESSION_REAPER_COPILOT_BIN",
        default_path: "target/e2e-copilot/node_modules/@github/copilot-linux-x64/copilot",
        script: ".ci/install-copilot.sh",
        end_reason: "session_end",
        config: None,
        command,
    });
}

fn command(run: &Run, copilot: &Path) -> Command {
    let mut command = run.isolated(copilot);
    command
        .env("COPILOT_OFFLINE", "true")
        .env("COPILOT_AUTO_UPDATE", "false")
        .env("COPILOT_PROVIDER_TYPE", "openai")
        .env(
            "COPILOT_PROVIDER_BASE_URL",
            format!("http://{}/v1", run.api),
        )
        .env("COPILOT_PROVIDER_API_KEY", "not-a-key")
        .env("COPILOT_MODEL", "fake-model")
        .args(["-p", "start the two jobs", "--allow-all-tools"]);
    command
}
