//! session-reaper: owner-keyed broker records, session hooks and a stop cascade that never signals the wrong
//! process. `run` is the whole program; `main` only maps its result to an exit code.

mod act;
mod adapters;
mod agents;
mod cli;
mod commands;
mod config;
mod decide;
mod error;
mod model;
mod observe;
mod settings;
mod store;

/// What the integration tests and the benchmarks reach, and nothing else: the crate is private (`unreachable_pub`
/// in `Cargo.toml` makes the compiler point at what nothing uses).
#[doc(hidden)]
pub mod testing {
    pub use crate::adapters::codex_plugin::BrokerStatus;
    pub use crate::adapters::codex_plugin::decide::socket_path;
    pub use crate::adapters::codex_plugin::observe::BrokerFile;
    pub use crate::agents::{AGENTS, Agent, AgentSpec, EventsAt, Layout};
    pub use crate::commands::hook::{Payload, detect_agent};
    pub use crate::commands::leftovers::SessionView;
    pub use crate::commands::status::{Member, SlotStatus, Snapshot, TicketStatus};
    pub use crate::commands::status_tree::{Facts, StatusTree, build, render};
    pub use crate::decide::leftovers::Leftover;
    pub use crate::decide::resume::resumes;
    pub use crate::model::clock::{now_rfc3339, parse as parse_time};
    pub use crate::model::leftover::Policy;
    pub use crate::model::name::SessionId;
    pub use crate::model::record::{
        BrokerRecord, SessionRecord, StopTicket, parse as parse_record,
    };
    pub use crate::model::workspace::workspace_key;
    pub use crate::observe::cgroup::View as CgroupView;
    pub use crate::observe::mcp::McpServer;
    pub use crate::settings::file::parse as parse_settings;
    pub use crate::settings::merge::{
        all_commands, commands_in, events_of, is_our_command, shell_words,
    };
    pub use crate::settings::plugin::command_in;
    pub use crate::settings::probe::PROBE_SESSION;
}

use std::io::Write;

use clap::Parser;

use crate::cli::{Cli, Command};
use crate::config::{Config, Request};
use crate::error::{Outcome, exit_code_of};
use crate::model::deadline::Deadline;

/// The hook's deadline when its own flags could not be read.
const DEFAULT_HOOK_DEADLINE: std::time::Duration = std::time::Duration::from_secs(1);

/// Runs the command line and returns the exit code (see `error` for the table).
pub fn run() -> u8 {
    // The sentinel waits for its agent with as little of the program loaded as it can (see `sentinel::entry`).
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    if let Some(code) = commands::sentinel::entry(&args) {
        return code;
    }
    // A broker's exec stub waits for its launcher's `go` (see `launch::spawn_broker`) before anything else runs.
    if let Some(code) = act::launch::stub_entry(&args) {
        return code;
    }
    drop(args);
    if subcommand_in_args().as_deref() == Some("hook") {
        return run_hook();
    }
    quiet_on_closed_output();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => return parse_failure(&with_our_hints(err)),
    };
    commands::term::init(cli.color, false);
    match Config::from_cli(&cli).and_then(|(config, request)| dispatch(&config, request)) {
        Ok(outcome) => outcome.exit_code(),
        Err(err) => {
            let line = format!("{err:#}").replace('\n', " ");
            let _ = writeln!(std::io::stderr(), "session-reaper: {line}");
            exit_code_of(&err)
        }
    }
}

/// Hook mode: exit 0 whatever happens, under the backstop (caught panics, a watchdog at the deadline).
fn run_hook() -> u8 {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            commands::backstop::run_guarded(Deadline::after(DEFAULT_HOOK_DEADLINE), None, || {
                parse_failure(&err);
            });
            return 0;
        }
    };
    let state_dir = cli.state_dir.as_deref();
    let Command::Hook(args) = &cli.command else {
        return 0;
    };
    match config::hook_request(args) {
        Ok(request) => {
            commands::backstop::run_guarded(Deadline::after(request.deadline), state_dir, || {
                // One invocation, one look at each process's argv and environment.
                let _world = observe::World::enter();
                commands::hook::run(&request, state_dir);
            });
        }
        Err(err) if settings::probe::requested() => {
            settings::probe::say(&settings::probe::Answer {
                error: Some(format!("{err:#}")),
                ..Default::default()
            });
        }
        Err(err) => {
            commands::backstop::run_guarded(
                Deadline::after(DEFAULT_HOOK_DEADLINE),
                state_dir,
                || {
                    commands::backstop::report(state_dir, &format!("{err:#}"));
                },
            );
        }
    }
    0
}

/// Outside hook mode a closed stdout or stderr (`status | head -1`) ends the command quietly, as it does any Unix
/// filter: SIGPIPE back to its default instead of a panic on the failed write. (A hook keeps it ignored and never
/// fails on a write: it must exit 0.)
fn quiet_on_closed_output() {
    // SAFETY: restoring the default disposition installs no handler code. (rustix has no signal dispositions.)
    let _ = unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
}

fn dispatch(config: &Config, request: Request) -> anyhow::Result<Outcome> {
    let reach = match &request {
        Request::Status { .. } | Request::Sweep(_) | Request::Reap(_) => {
            Some(store::root::Reach::Records)
        }
        Request::Doctor { .. } => Some(store::root::Reach::Whole),
        Request::Log(_) => Some(store::root::Reach::Top),
        _ => None,
    };
    if let Some(reach) = reach {
        store::root::refuse_special_files(&config.state_dir, reach)?;
    }
    // A command that ends soon reads each process's argv and environment once; the long-lived ones (a broker, a
    // sentinel, the finisher) enter their own World per pass, so that a process that exec'd since is read anew.
    let _world = (!matches!(
        request,
        Request::Broker(_) | Request::Sentinel { .. } | Request::Finish | Request::Demo { .. }
    ))
    .then(observe::World::enter);
    match request {
        Request::Hook => Ok(Outcome::Done),
        Request::Broker(request) => commands::broker::run(request, config),
        Request::Reap(request) => commands::reap::run(&request, config),
        Request::Sweep(request) => commands::sweep::run(&request, config),
        Request::Status { json, codex } => commands::status::run(json, &codex, config),
        Request::Log(request) => commands::log::run(&request, config),
        Request::Doctor { json } => commands::doctor::run(json, config),
        Request::Settings(request) => commands::install::run(&request, config),
        Request::Demo {
            guard: Some(dir),
            keep,
            ..
        } => Ok(commands::demo::guard(&dir, keep)),
        Request::Demo {
            keep, state_dir, ..
        } => commands::demo::run(keep, state_dir.as_deref()),
        Request::Finish => {
            let store = store::Store::open(&config.state_dir)?;
            act::finisher::run(
                &store,
                &commands::stopper(&store, act::signal::Guard::new()),
            )
        }
        Request::Keep(request) => commands::keep::run(&request, config),
        Request::Sentinel { agent, within } => commands::sentinel::run(
            &store::Store::open(&config.state_dir)?,
            &agent,
            within,
            &adapters::codex_plugin::Discovery::default(),
        ),
        Request::Completions(shell) => Ok(commands::reference::completions(shell)),
        Request::Man(dir) => commands::reference::man(dir.as_deref()),
    }
}

/// Help and version go to stdout with exit 0; a bare invocation prints the short help (exit 2). Anything else is
/// a usage error, rendered by clap with its hints (exit 2) — except in hook mode, where a bad flag must still exit
/// 0 with nothing on stdout: the error goes to stderr and events.jsonl as one line.
fn parse_failure(err: &clap::Error) -> u8 {
    use clap::error::ErrorKind;
    match err.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
            let _ = err.print();
            return 0;
        }
        ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand if std::env::args().len() <= 1 => {
            let help = <Cli as clap::CommandFactory>::command().render_help();
            eprint!("{help}");
            return 2;
        }
        _ => {}
    }
    let rendered = err.render().to_string();
    let line = rendered
        .split("\n\n")
        .next()
        .unwrap_or_default()
        .lines()
        .map(str::trim)
        .collect::<Vec<_>>()
        .join(" ");
    let hook_mode = subcommand_in_args().as_deref() == Some("hook");
    if hook_mode && settings::probe::requested() {
        settings::probe::say(&settings::probe::Answer {
            error: Some(line),
            ..Default::default()
        });
        return 0;
    }
    if hook_mode {
        commands::backstop::report(state_dir_in_args().as_deref(), &line);
        return 0;
    }
    let _ = err.print();
    2
}

/// Clap's error with what it cannot know: a broker command given without `--` gets the hint to put it after `--`,
/// and the hidden `finish` is never suggested for a mistyped subcommand.
fn with_our_hints(err: clap::Error) -> clap::Error {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    let args: Vec<String> = std::env::args().collect();
    let spawn = args
        .windows(2)
        .any(|pair| pair[0] == "broker" && pair[1] == "spawn");
    match err.kind() {
        ErrorKind::UnknownArgument if spawn && !args.iter().any(|arg| arg == "--") => {
            let mut err = err;
            if let Some(ContextValue::String(word)) = err.get(ContextKind::InvalidArg).cloned() {
                err.insert(
                    ContextKind::Suggested,
                    ContextValue::StyledStrs(vec![
                        format!("the broker's command goes after `--`: broker spawn [OPTIONS] -- {word} …")
                            .into(),
                    ]),
                );
            }
            err
        }
        ErrorKind::InvalidSubcommand
            if matches!(
                err.get(ContextKind::SuggestedSubcommand),
                Some(ContextValue::Strings(names)) if names.iter().any(|name| name == "finish")
            ) =>
        {
            let mut command = <Cli as clap::CommandFactory>::command();
            let mut plain = clap::Error::new(ErrorKind::InvalidSubcommand).with_cmd(&command);
            for kind in [ContextKind::InvalidSubcommand, ContextKind::Usage] {
                if let Some(value) = err.get(kind).cloned() {
                    plain.insert(kind, value);
                }
            }
            if plain.get(ContextKind::Usage).is_none() {
                plain.insert(
                    ContextKind::Usage,
                    ContextValue::StyledStr(command.render_usage()),
                );
            }
            plain
        }
        _ => err,
    }
}

/// The first argument that is neither a global flag nor its value: the subcommand clap would have run.
fn subcommand_in_args() -> Option<String> {
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--state-dir" || arg == "--color" {
            args.next();
        } else if !arg.starts_with('-') {
            return Some(arg);
        }
    }
    None
}

/// `--state-dir` picked out of arguments clap refused, so a hook's usage error still reaches its log.
fn state_dir_in_args() -> Option<std::path::PathBuf> {
    let args: Vec<String> = std::env::args().collect();
    args.iter().enumerate().find_map(|(index, arg)| {
        arg.strip_prefix("--state-dir=")
            .map(Into::into)
            .or_else(|| {
                (arg == "--state-dir")
                    .then(|| args.get(index + 1).map(Into::into))
                    .flatten()
            })
    })
}
