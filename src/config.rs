//! Turns the command line into typed requests, once: the state root, slots (workspace and name), owner sessions
//! named by a flag or the environment, stop policies, reasons and durations, each checked here. Nothing below this
//! module sees clap; every error made here is the user's input (exit 2) and is found before the state root is
//! opened, so bad input changes nothing.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::adapters::codex_plugin::Discovery;
use crate::agents::Agent;
use crate::cli::{
    BrokerCommand, Cli, CodexArgs, Command, HookArgs, KeepArgs, LeftoversChoice, LogArgs,
    OwnerArgs, ReapArgs, SentinelArgs, SettingsArgs, SlotArgs, StopArgs, SweepArgs, Switch,
};
use crate::error::bad_input;
use crate::model::event::Filter;
use crate::model::leftover::Policy;
use crate::model::name::{SessionId, SlotName};
use crate::model::record::{Identity, Shutdown};
use crate::observe::proc;
use crate::observe::workspace;
use crate::settings::{Operation, Scope};
use crate::store::events::Reason;
use crate::store::sessions::Sessions;

/// Settings every command shares.
#[derive(Clone, Debug)]
pub(crate) struct Config {
    pub state_dir: PathBuf,
    pub verbose: bool,
}

impl Config {
    pub(crate) fn new(state_dir_flag: Option<&Path>, verbose: bool) -> anyhow::Result<Self> {
        Ok(Config {
            state_dir: crate::store::root::resolve_root(state_dir_flag)?,
            verbose,
        })
    }

    /// The shared settings and the request of one command line.
    pub(crate) fn from_cli(cli: &Cli) -> anyhow::Result<(Config, Request)> {
        let config = Config::new(cli.state_dir.as_deref(), cli.verbose)?;
        let request = match &cli.command {
            Command::Hook(args) => {
                // Checked here like any other request; the hook itself runs from `lib::run_hook`.
                hook_request(args)?;
                Request::Hook
            }
            Command::Broker(command) => Request::Broker(broker_request(command, &config)?),
            Command::Reap(args) => Request::Reap(reap_request(args)?),
            Command::Sweep(args) => Request::Sweep(sweep_request(args)?),
            Command::Status(args) => Request::Status {
                json: args.json,
                codex: codex_discovery(&args.codex)?,
            },
            Command::Log(args) => Request::Log(log_request(args)?),
            Command::Doctor(args) => Request::Doctor { json: args.json },
            Command::Install(args) => Request::Settings(settings_request(
                &args.settings,
                Operation::Install,
                crate::settings::HookFlags {
                    leftovers: args.leftovers.map(policy_of),
                    sentinel: args.sentinel.map(|switch| switch == Switch::On),
                },
            )),
            Command::Uninstall(args) => Request::Settings(settings_request(
                args,
                Operation::Uninstall,
                crate::settings::HookFlags::default(),
            )),
            Command::Demo(args) => Request::Demo {
                keep: args.keep,
                state_dir: cli.state_dir.as_ref().map(|_| config.state_dir.clone()),
                guard: args.guard.clone(),
            },
            Command::Completions { shell } => Request::Completions(*shell),
            Command::Man(args) => Request::Man(args.dir.clone()),
            Command::Finish => Request::Finish,
            Command::Keep(args) => Request::Keep(keep_request(args)?),
            Command::Sentinel(args) => sentinel_request(args),
        };
        Ok((config, request))
    }
}

/// What one command line asks for.
#[derive(Debug)]
pub(crate) enum Request {
    Hook,
    Broker(BrokerRequest),
    Reap(ReapRequest),
    Sweep(SweepRequest),
    Status {
        json: bool,
        codex: Discovery,
    },
    Log(LogRequest),
    Doctor {
        json: bool,
    },
    Settings(SettingsRequest),
    /// `demo`: in `state_dir` when `--state-dir` names one (kept), else in a temporary directory.
    Demo {
        keep: bool,
        state_dir: Option<PathBuf>,
        /// `demo --guard DIR`: the demo's guardian (internal).
        guard: Option<PathBuf>,
    },
    Completions(clap_complete::Shell),
    /// `man`: the man page on stdout, or every page written into this directory.
    Man(Option<PathBuf>),
    Finish,
    Keep(KeepRequest),
    Sentinel {
        agent: Identity,
        within: Option<Duration>,
    },
}

/// `keep …`: start a command that outlives its session, or mark a running process.
#[derive(Clone, Debug)]
pub(crate) enum KeepRequest {
    Start {
        command: Vec<String>,
        log: Option<PathBuf>,
        json: bool,
    },
    Mark {
        pid: i32,
        json: bool,
    },
}

fn keep_request(args: &KeepArgs) -> anyhow::Result<KeepRequest> {
    match args.pid {
        Some(pid) if pid <= 1 => Err(bad_input(format!(
            "--pid {pid}: expected the pid of a live process (> 1)"
        ))),
        Some(pid) => Ok(KeepRequest::Mark {
            pid,
            json: args.output.json,
        }),
        None => Ok(KeepRequest::Start {
            command: args.command.clone(),
            log: args.log.clone(),
            json: args.output.json,
        }),
    }
}

/// The agent a sentinel watches: the identity its hook recorded (this boot, our uid).
fn sentinel_request(args: &SentinelArgs) -> Request {
    Request::Sentinel {
        agent: Identity {
            boot_id: proc::boot_id().to_owned(),
            pid_ns: proc::own_pid_ns(),
            pid: args.pid,
            start_ticks: args.start_ticks,
            uid: rustix::process::getuid().as_raw(),
        },
        within: args.within,
    }
}

/// The leftovers policy a `--leftovers` choice names.
fn policy_of(choice: LeftoversChoice) -> Policy {
    match choice {
        LeftoversChoice::Stop => Policy::Stop,
        LeftoversChoice::Report => Policy::Report,
        LeftoversChoice::Off => Policy::Off,
    }
}

/// `hook`: its flags are checked here like any other; a refusal is reported by the hook, which still exits 0.
#[derive(Clone, Debug)]
pub(crate) struct HookRequest {
    pub agent: Option<Agent>,
    pub event: Option<String>,
    pub deadline: Duration,
    pub stdin_timeout: Duration,
    pub owner_pid: Option<i32>,
    pub leftovers: Policy,
    pub sentinel: bool,
    /// `--containment` and `SESSION_REAPER_CGROUP_ROOT`.
    pub containment: crate::model::containment::Setting,
    pub agent_exit_wait: Duration,
    pub codex: Discovery,
}

/// The hook request of `session-reaper hook …`. A `--codex-state` dir that does not exist is looked at and found
/// empty: a hook refuses nothing but an out-of-bounds duration (reported, exit 0).
pub(crate) fn hook_request(args: &HookArgs) -> anyhow::Result<HookRequest> {
    Ok(HookRequest {
        agent: args.agent.0,
        event: args.event.clone(),
        deadline: check_bounded(args.deadline, "--deadline", MAX_WAIT)?,
        stdin_timeout: check_bounded(args.stdin_timeout, "--stdin-timeout", MAX_WAIT)?,
        owner_pid: args.owner_pid,
        leftovers: policy_of(args.leftovers),
        sentinel: args.sentinel == Switch::On,
        containment: crate::model::containment::Setting {
            off: args.containment == Switch::Off,
            root: std::env::var_os(crate::model::containment::ROOT_VARIABLE)
                .filter(|root| !root.is_empty())
                .map(PathBuf::from),
        },
        // Bounded like any wait: at most ten minutes.
        agent_exit_wait: args.agent_exit_wait.min(Duration::from_secs(600)),
        codex: Discovery {
            enabled: !args.codex.no_codex,
            extra_roots: args.codex.codex_state.clone(),
        },
    })
}

/// `--codex-state DIR…` (each an existing directory) and `--no-codex`.
fn codex_discovery(args: &CodexArgs) -> anyhow::Result<Discovery> {
    if args.no_codex {
        return Ok(Discovery::off());
    }
    for dir in &args.codex_state {
        if !dir.is_dir() {
            return Err(bad_input(format!(
                "--codex-state {}: expected an existing directory (the Codex plugin's state dir)",
                dir.display()
            )));
        }
    }
    Ok(Discovery {
        enabled: true,
        extra_roots: args.codex_state.clone(),
    })
}

/// The slot a broker command is about: a workspace (canonical) and a broker name.
#[derive(Clone, Debug)]
pub(crate) struct SlotSpec {
    pub cwd: PathBuf,
    pub workspace: PathBuf,
    pub name: SlotName,
}

fn slot_spec(args: &SlotArgs) -> anyhow::Result<SlotSpec> {
    let name = SlotName::parse(&args.name)?;
    let cwd = match &args.cwd {
        Some(dir) => dir.clone(),
        None => workspace::current_dir()?,
    };
    let workspace = workspace::workspace_of(&cwd)?;
    let cwd = std::fs::canonicalize(&cwd).unwrap_or(cwd);
    Ok(SlotSpec {
        cwd,
        workspace,
        name,
    })
}

/// `--log FILE`: its directory must exist (bad input otherwise, before anything is started or written).
fn broker_log(path: &Path) -> anyhow::Result<PathBuf> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    if !dir.is_dir() {
        return Err(bad_input(format!(
            "--log {}: expected a file in an existing directory",
            path.display()
        )));
    }
    Ok(path.to_path_buf())
}

/// The environment variables naming the current session, in order of precedence: ours, then each agent's shell-tool
/// variables from the agents table.
pub(crate) fn session_env() -> Vec<&'static str> {
    crate::agents::session_variables()
}

/// How the owner of a broker was named.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum OwnerSource {
    Flag,
    Env(&'static str),
}

/// Who is to own a broker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum OwnerSpec {
    /// Named by `--session` or the environment.
    Named(SessionId, OwnerSource),
    /// To be found among the live sessions: the one whose agent process is an ancestor of ours.
    Ancestry,
    /// `--no-owner`.
    Nobody,
}

/// `--session`, else the environment, else the calling agent's session; `--no-owner` for nobody. With nothing
/// named and no state root yet, no session record can name the caller either: refused here, before the root is
/// created.
fn owner_spec(args: &OwnerArgs, no_owner: bool, state_dir: &Path) -> anyhow::Result<OwnerSpec> {
    if no_owner {
        return Ok(OwnerSpec::Nobody);
    }
    if let Some(text) = &args.session {
        return Ok(OwnerSpec::Named(SessionId::parse(text)?, OwnerSource::Flag));
    }
    for name in session_env() {
        if let Some(value) = std::env::var(name).ok().filter(|value| !value.is_empty()) {
            let id =
                SessionId::parse(&value).map_err(|err| bad_input(format!("${name}: {err}")))?;
            return Ok(OwnerSpec::Named(id, OwnerSource::Env(name)));
        }
    }
    if std::fs::symlink_metadata(state_dir).is_err() {
        return Err(no_owner_found());
    }
    Ok(OwnerSpec::Ancestry)
}

/// The refusal when nothing names an owner.
pub(crate) fn no_owner_found() -> anyhow::Error {
    bad_input(
        "no owner session: pass --session ID, set SESSION_REAPER_SESSION_ID, run inside a session whose \
         SessionStart hook ran, or pass --no-owner",
    )
}

/// The newest live session whose agent process is one of our ancestors.
pub(crate) fn session_of_ancestor(sessions: &Sessions) -> Option<SessionId> {
    let me = i32::try_from(std::process::id()).ok()?;
    let ancestors: Vec<i32> = proc::ancestors(me).iter().map(|stat| stat.pid).collect();
    sessions
        .all()
        .into_iter()
        .filter(|record| !record.is_ended())
        .filter(|record| {
            record.agent_identity.as_ref().is_some_and(|identity| {
                ancestors.contains(&identity.pid) && proc::is_alive(identity)
            })
        })
        .max_by(|a, b| a.started_at.cmp(&b.started_at))
        .and_then(|record| SessionId::parse(&record.session_id).ok())
}

/// How a broker is stopped.
#[derive(Clone, Debug)]
pub(crate) struct StopPolicy {
    pub idle_ttl: Option<Duration>,
    pub grace: Duration,
    pub shutdown: Option<Shutdown>,
}

fn stop_policy(args: &StopArgs) -> anyhow::Result<StopPolicy> {
    let shutdown = match (
        &args.shutdown_socket,
        &args.shutdown_message,
        &args.shutdown_command,
    ) {
        (Some(socket), Some(message), None) => Some(Shutdown::Socket {
            socket: socket.to_string_lossy().into_owned(),
            message: message.clone(),
        }),
        (None, None, Some(command)) => Some(Shutdown::Command {
            command: command.clone(),
        }),
        _ => None,
    };
    Ok(StopPolicy {
        idle_ttl: args.idle_ttl,
        grace: check_grace(args.grace)?,
        shutdown,
    })
}

/// `broker …`.
#[derive(Clone, Debug)]
pub(crate) enum BrokerRequest {
    Spawn {
        slot: SlotSpec,
        owner: OwnerSpec,
        policy: StopPolicy,
        log: Option<PathBuf>,
        endpoint: Option<String>,
        replace: bool,
        /// `--wait`: how long to watch the new broker for an exit at once (none by default).
        wait: Option<Duration>,
        json: bool,
        command: Vec<String>,
    },
    Register {
        pid: i32,
        slot: SlotSpec,
        owner: OwnerSpec,
        policy: StopPolicy,
        endpoint: Option<String>,
        json: bool,
    },
    Attach {
        slot: SlotSpec,
        owner: OwnerSpec,
        json: bool,
    },
    Detach {
        slot: SlotSpec,
        owner: OwnerSpec,
        json: bool,
    },
    Touch {
        slot: SlotSpec,
        json: bool,
    },
}

fn broker_request(command: &BrokerCommand, config: &Config) -> anyhow::Result<BrokerRequest> {
    let state_dir = &config.state_dir;
    Ok(match command {
        BrokerCommand::Spawn {
            slot,
            owner,
            no_owner,
            stop,
            log,
            endpoint,
            replace,
            wait,
            output,
            command,
        } => {
            let policy = stop_policy(stop)?;
            let owner = owner_spec(owner, *no_owner, state_dir)?;
            BrokerRequest::Spawn {
                slot: slot_spec(slot)?,
                owner,
                policy,
                log: log.as_deref().map(broker_log).transpose()?,
                endpoint: endpoint.clone(),
                replace: *replace,
                wait: *wait,
                json: output.json,
                command: command.clone(),
            }
        }
        BrokerCommand::Register {
            pid,
            slot,
            owner,
            no_owner,
            stop,
            endpoint,
            output,
        } => {
            let policy = stop_policy(stop)?;
            let owner = owner_spec(owner, *no_owner, state_dir)?;
            BrokerRequest::Register {
                pid: *pid,
                slot: slot_spec(slot)?,
                owner,
                policy,
                endpoint: endpoint.clone(),
                json: output.json,
            }
        }
        BrokerCommand::Attach {
            slot,
            owner,
            output,
        } => {
            let owner = owner_spec(owner, false, state_dir)?;
            BrokerRequest::Attach {
                slot: slot_spec(slot)?,
                owner,
                json: output.json,
            }
        }
        BrokerCommand::Detach {
            slot,
            owner,
            output,
        } => {
            let owner = owner_spec(owner, false, state_dir)?;
            BrokerRequest::Detach {
                slot: slot_spec(slot)?,
                owner,
                json: output.json,
            }
        }
        BrokerCommand::Touch { slot, output } => BrokerRequest::Touch {
            slot: slot_spec(slot)?,
            json: output.json,
        },
    })
}

/// Which sessions `reap` ends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum ReapTarget {
    /// A session id or a unique prefix of one, resolved against the session records; `force` ends an id no record
    /// knows.
    Session {
        id: SessionId,
        force: bool,
    },
    AllLive,
    /// Duplicate `--resume` writers of live sessions.
    Duplicates,
}

/// `reap …`.
#[derive(Clone, Debug)]
pub(crate) struct ReapRequest {
    pub target: ReapTarget,
    pub reason: Reason,
    pub deadline: Option<Duration>,
    pub dry_run: bool,
    pub json: bool,
    pub codex: Discovery,
}

fn reap_request(args: &ReapArgs) -> anyhow::Result<ReapRequest> {
    let allowed: &[Reason] = if args.all {
        &[Reason::Shutdown, Reason::Restart]
    } else {
        &[
            Reason::Manual,
            Reason::Shutdown,
            Reason::Restart,
            Reason::SessionEnd,
        ]
    };
    let reason = match &args.reason {
        None => Reason::Manual,
        Some(text) => Reason::parse(text)
            .filter(|reason| allowed.contains(reason))
            .ok_or_else(|| {
                let names: Vec<&str> = allowed.iter().map(|reason| reason.as_str()).collect();
                bad_input(format!(
                    "--reason {text:?}: expected one of {}",
                    names.join(", ")
                ))
            })?,
    };
    let target = match &args.session {
        Some(text) => ReapTarget::Session {
            id: SessionId::parse(text)?,
            force: args.force,
        },
        None if args.duplicates => ReapTarget::Duplicates,
        None => ReapTarget::AllLive,
    };
    Ok(ReapRequest {
        target,
        reason,
        deadline: args
            .deadline
            .map(|deadline| check_bounded(deadline, "--deadline", MAX_WAIT))
            .transpose()?,
        dry_run: args.dry_run,
        json: args.json,
        codex: codex_discovery(&args.codex)?,
    })
}

/// `sweep …`.
#[derive(Clone, Debug)]
pub(crate) struct SweepRequest {
    pub idle_ttl: Duration,
    pub retention: Duration,
    pub dry_run: bool,
    pub json: bool,
    pub codex: Discovery,
}

fn sweep_request(args: &SweepArgs) -> anyhow::Result<SweepRequest> {
    Ok(SweepRequest {
        idle_ttl: args.idle_ttl,
        retention: check_bounded(args.retention, "--retention", MAX_HISTORY)?,
        dry_run: args.dry_run,
        json: args.json,
        codex: codex_discovery(&args.codex)?,
    })
}

/// `log …`: which events to show, and how.
#[derive(Clone, Debug, Default)]
pub(crate) struct LogRequest {
    pub filter: Filter,
    pub json: bool,
    /// Total the memory freed instead of listing.
    pub freed: bool,
}

fn log_request(args: &LogArgs) -> anyhow::Result<LogRequest> {
    Ok(LogRequest {
        filter: Filter {
            session: args.session.as_deref().map(SessionId::parse).transpose()?,
            since: args
                .since
                .map(|since| check_bounded(since, "--since", MAX_HISTORY))
                .transpose()?,
            action: args.action.map(crate::cli::LogAction::as_str),
        },
        json: args.json,
        freed: args.freed,
    })
}

/// `install` / `uninstall`: which agent's settings, where, and whether the periodic sweep goes with them.
#[derive(Clone, Debug)]
pub(crate) struct SettingsRequest {
    pub operation: Operation,
    pub agent: Agent,
    pub scope: Scope,
    pub settings: Option<PathBuf>,
    pub with_sweep: bool,
    pub dry_run: bool,
    /// Print the outcome as one JSON object.
    pub json: bool,
    /// The hook flags to write into the installed commands (install only).
    pub flags: crate::settings::HookFlags,
}

fn settings_request(
    args: &SettingsArgs,
    operation: Operation,
    flags: crate::settings::HookFlags,
) -> SettingsRequest {
    SettingsRequest {
        operation,
        agent: args.agent,
        scope: args.scope,
        settings: args.settings.clone(),
        with_sweep: args.with_sweep,
        dry_run: args.dry_run,
        json: args.json,
        flags,
    }
}

/// The longest wait a flag may ask for: a deadline, a stdin timeout, a grace.
pub(crate) const MAX_WAIT: Duration = Duration::from_secs(3600);
/// The furthest back a flag may reach: `--since`, `--retention` (ten years of 365.25 days, as humantime counts).
pub(crate) const MAX_HISTORY: Duration = Duration::from_secs(10 * 31_557_600);

/// Refuses a duration flag beyond its bound, naming the flag, the value and the bound (exit 2).
pub(crate) fn check_bounded(
    value: Duration,
    flag: &str,
    max: Duration,
) -> anyhow::Result<Duration> {
    if value > max {
        return Err(bad_input(format!(
            "{flag} {}: expected at most {}",
            in_days(value),
            in_days(max)
        )));
    }
    Ok(value)
}

/// A long duration as people write it: whole days when it is whole days.
fn in_days(duration: Duration) -> String {
    let secs = duration.as_secs();
    // Beyond a year humantime's own form (`500000000000years`) reads better than a count of days.
    if secs.is_multiple_of(86_400) && duration.subsec_nanos() == 0 && secs < 365 * 86_400 {
        format!("{}days", secs / 86_400)
    } else if secs >= 365 * 86_400 {
        humantime::format_duration(duration).to_string()
    } else {
        crate::model::clock::rounded(duration)
    }
}

/// Refuses a grace beyond an hour: a stop that long is a mistake.
pub(crate) fn check_grace(grace: Duration) -> anyhow::Result<Duration> {
    check_bounded(grace, "--grace", MAX_WAIT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_grace_over_an_hour_is_refused() {
        assert!(check_grace(Duration::from_secs(3600)).is_ok());
        assert!(check_grace(Duration::from_secs(3601)).is_err());
    }

    #[test]
    fn absurd_durations_are_refused_by_name() {
        let absurd = crate::model::clock::parse_duration("500000000000years").unwrap();
        let err = check_bounded(absurd, "--deadline", MAX_WAIT).unwrap_err();
        assert_eq!(crate::error::exit_code_of(&err), 2);
        let text = err.to_string();
        assert!(
            text.starts_with("--deadline ") && text.ends_with("expected at most 1h"),
            "{text}"
        );
        assert!(check_bounded(MAX_HISTORY, "--since", MAX_HISTORY).is_ok());
    }
}
