//! `keep`: a process that is to outlive its session. `keep -- CMD…` starts CMD detached (its own session, stdin
//! null, output to `--log` or nowhere) with no session variable left in its environment and
//! `SESSION_REAPER_KEEP=1`, and prints its pid; `keep --pid P` marks a running process and its descendants so that
//! no leftover discovery picks them, and logs a `keep` event. `--json` prints what was started or marked as one
//! object.

use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use anyhow::Context;
use serde_json::json;

use crate::act::executor;
use crate::act::leftovers;
use crate::config::{Config, KeepRequest};
use crate::error::{Outcome, bad_input};
use crate::model::leftover::KEEP_VARIABLE;
use crate::observe::proc;
use crate::observe::table::Table;
use crate::store::Store;
use crate::store::events::Event;

pub(crate) fn run(request: &KeepRequest, config: &Config) -> anyhow::Result<Outcome> {
    match request {
        KeepRequest::Start { command, log, json } => start(command, log.as_deref(), *json),
        KeepRequest::Mark { pid, json } => mark(*pid, config, *json),
    }
}

fn start(argv: &[String], log: Option<&std::path::Path>, json: bool) -> anyhow::Result<Outcome> {
    let (program, arguments) = argv.split_first().context("no command given")?;
    let mut command = Command::new(program);
    command.args(arguments).stdin(Stdio::null());
    match log {
        Some(path) => {
            let file = std::fs::OpenOptions::new()
                .append(true)
                .create(true)
                .open(path)
                .map_err(|err| bad_input(format!("--log {}: {err}", path.display())))?;
            command.stdout(file.try_clone()?).stderr(file);
        }
        None => {
            command.stdout(Stdio::null()).stderr(Stdio::null());
        }
    }
    crate::act::launch::scrub_session_variables(&mut command);
    command.env(KEEP_VARIABLE, "1");
    // SAFETY: setsid is async-signal-safe and touches no memory of the parent.
    unsafe {
        command.pre_exec(|| {
            rustix::process::setsid()
                .map(drop)
                .map_err(std::io::Error::from)
        });
    }
    let child = command
        .spawn()
        .map_err(|err| bad_input(format!("starting {program:?}: {err}")))?;
    if json {
        let started = json!({"pid": child.id(), "command": argv, "log": log});
        println!("{started}");
    } else {
        println!("{}", child.id());
    }
    Ok(Outcome::Done)
}

fn mark(pid: i32, config: &Config, json: bool) -> anyhow::Result<Outcome> {
    let identity = proc::identity_of(pid)
        .filter(|_| pid > 1)
        .ok_or_else(|| bad_input(format!("--pid {pid}: expected a live process")))?;
    let uid = rustix::process::getuid().as_raw();
    if identity.uid != uid {
        return Err(bad_input(format!(
            "--pid {pid}: expected a process of ours (uid {uid}), it runs as uid {}",
            identity.uid
        )));
    }
    let store = Store::open(&config.state_dir)?;
    leftovers::prune_kept(&store);
    let table = Table::observe(identity.start_ticks);
    let mut marked = Vec::new();
    for process in table.descendants_of(pid) {
        if let Some(live) = proc::identity_of(process.identity.pid)
            .filter(|live| live.start_ticks == process.identity.start_ticks)
        {
            leftovers::mark_kept(&store, &live)?;
            marked.push(live.pid);
        }
    }
    let descendants = marked.len().saturating_sub(1);
    executor::note(
        &store,
        Event::new("keep", "kept")
            .pid(pid)
            .detail(format!("and {descendants} descendant(s)")),
    );
    if json {
        println!("{}", json!({"pid": pid, "kept": marked}));
    } else {
        println!(
            "{} pid {pid} and {descendants} descendant(s): no session's leftovers",
            crate::commands::term::lead("kept")
        );
    }
    Ok(Outcome::Done)
}
