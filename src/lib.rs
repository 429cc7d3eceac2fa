//! session-reaper: owner-keyed broker records, session hooks and a stop cascade that never signals the wrong
//! process. `run` is the whole program; `main` only maps its result to an exit code.

pub mod act;
pub mod adapters;
pub mod agents;
pub mod cli;
pub mod clock;
pub mod commands;
pub mod config;
pub mod decide;
pub mod error;
pub mod events;
pub mod finisher;
pub mod hook;
pub mod launch;
pub mod name;
pub mod plan;
pub mod proc;
pub mod record;
pub mod sessions;
pub mod settings;
pub mod signal;
pub mod slot;
pub mod state;
pub mod stop;
pub mod store;
pub mod teardown;
pub mod ticket;
pub mod workspace;

use clap::Parser;

use crate::cli::{Cli, Command};
use crate::config::{Config, Request};
use crate::error::{Outcome, exit_code_of};

/// Runs the command line and returns the exit code (see `error` for the table).
pub fn run() -> u8 {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => return parse_failure(&err),
    };
    if let Command::Hook(args) = &cli.command {
        hook::run(&config::hook_request(args), cli.state_dir.as_deref());
        return 0;
    }
    match Config::from_cli(&cli).and_then(|(config, request)| dispatch(&config, request)) {
        Ok(outcome) => outcome.exit_code(),
        Err(err) => {
            eprintln!("session-reaper: {}", format!("{err:#}").replace('\n', " "));
            exit_code_of(&err)
        }
    }
}

fn dispatch(config: &Config, request: Request) -> anyhow::Result<Outcome> {
    match request {
        Request::Hook(_) => Ok(Outcome::Done),
        Request::Broker(request) => commands::broker::run(request, config),
        Request::Reap(request) => commands::reap::run(&request, config),
        Request::Sweep(request) => commands::sweep::run(&request, config),
        Request::Status { json, codex } => commands::status::run(json, &codex, config),
        Request::Log(request) => commands::log::run(&request, config),
        Request::Doctor { json } => commands::doctor::run(json, config),
        Request::Settings(request) => commands::install::run(&request, config),
        Request::Demo => commands::demo::run(),
        Request::Finish => finisher::run(&store::Store::open(&config.state_dir)?),
        Request::Completions(shell) => {
            let mut command = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(
                shell,
                &mut command,
                "session-reaper",
                &mut std::io::stdout(),
            );
            Ok(Outcome::Done)
        }
    }
}

/// Help and version go to stdout with exit 0. Anything else is a usage error: one line, exit 2 — except in hook
/// mode, where a bad flag must still exit 0 with nothing on stdout.
fn parse_failure(err: &clap::Error) -> u8 {
    use clap::error::ErrorKind;
    if matches!(
        err.kind(),
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion
    ) {
        let _ = err.print();
        return 0;
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
        let store = Config::new(state_dir_in_args().as_deref(), false)
            .and_then(|config| store::Store::open(&config.state_dir))
            .ok();
        hook::report(store.as_ref(), &line);
        return 0;
    }
    eprintln!("session-reaper: {}", line.trim_start_matches("error: "));
    2
}

/// The first argument that is neither a global flag nor its value: the subcommand clap would have run.
fn subcommand_in_args() -> Option<String> {
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--state-dir" {
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
