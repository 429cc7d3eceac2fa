//! The command line as clap sees it: flags and their help, nothing resolved. `config` turns it into requests.

// Doc comments here are `--help` text, read in a terminal: no Markdown backticks.
#![allow(clippy::doc_markdown)]

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::agents::Agent;
use crate::model::clock::{parse_duration, parse_idle_ttl};
use crate::settings::Scope;

/// Keeps coding-agent sessions from leaking helper processes ("brokers").
///
/// Brokers are recorded per workspace with the sessions that own them; when a session ends, brokers no live session
/// owns are stopped, and orphaned `claude --resume <id>` processes with them. A process is only ever signalled when
/// its full identity (boot, pid, start time, uid) matches the record.
#[derive(Debug, Parser)]
#[command(
    name = "session-reaper",
    version = env!("SESSION_REAPER_VERSION"),
    propagate_version = true,
    max_term_width = 100,
    arg_required_else_help = true
)]
pub(crate) struct Cli {
    /// State root [default: $SESSION_REAPER_STATE_DIR, $XDG_STATE_HOME/session-reaper, ~/.local/state/session-reaper]
    #[arg(long, global = true, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,

    /// Say more: the effective policy, every decision
    #[arg(short, long, global = true)]
    pub verbose: bool,

    /// Colour and progress lines on a terminal: auto (a TTY without $NO_COLOR), always, never
    #[arg(
        long,
        global = true,
        value_enum,
        value_name = "WHEN",
        default_value = "auto"
    )]
    pub color: ColorWhen,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Run as an agent's SessionStart/SessionEnd hook (JSON payload on stdin; always exits 0, prints nothing)
    #[command(after_help = "Example (Claude Code settings.json):\n  \
        {\"type\": \"command\", \"command\": \"session-reaper hook --agent claude\", \"timeout\": 5}")]
    Hook(HookArgs),

    /// Spawn, adopt, attach to, detach from or touch a workspace's broker
    #[command(
        subcommand,
        after_help = "Example:\n  session-reaper broker spawn --cwd ~/src/app -- npm run dev"
    )]
    Broker(BrokerCommand),

    /// End a session now (as SessionEnd would), or drain every live session on shutdown
    #[command(
        after_help = "Examples:\n  session-reaper reap --session 0b5f6b3e-… --dry-run\n  \
        session-reaper reap --all --reason shutdown --deadline 2s"
    )]
    Reap(ReapArgs),

    /// For cron: end crashed sessions, prune dead records, stop idle and unrecorded brokers, finish stuck stops
    #[command(
        after_help = "Example (crontab; errors go to cron's mail): * * * * * session-reaper sweep >/dev/null"
    )]
    Sweep(SweepArgs),

    /// Show brokers, their owners and liveness, pending stop tickets and live sessions
    #[command(
        after_help = "Example:\n  session-reaper status --json | jq '.slots[] | {workspace, owners, alive}'"
    )]
    Status(StatusArgs),

    /// Show the audit log (events.jsonl)
    #[command(after_help = "Example:\n  session-reaper log --since 1h --action stop")]
    Log(LogArgs),

    /// Check the state root, filesystem, installed hooks, stuck stops and kernel support
    #[command(after_help = "Example:\n  session-reaper doctor")]
    Doctor(JsonArg),

    /// Add our SessionStart/SessionEnd hooks to an agent's settings (keeps everything else; twice = once)
    #[command(after_help = "Example:\n  session-reaper install --agent claude --with-sweep")]
    Install(InstallArgs),

    /// Remove exactly our hooks from an agent's settings
    #[command(after_help = "Example:\n  session-reaper uninstall --agent claude")]
    Uninstall(SettingsArgs),

    /// Show the whole job on real processes in a temporary state root (signals only what it starts)
    #[command(after_help = "Example:\n  cargo run --release -- demo")]
    Demo(DemoArgs),

    /// Print shell completions
    #[command(
        after_help = "Example:\n  session-reaper completions bash > ~/.local/share/bash-completion/completions/session-reaper"
    )]
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },

    /// Complete pending stop tickets in the background (started by hooks; not for people)
    #[command(hide = true)]
    Finish,

    /// Start a command that outlives its session, or mark a running process (and its descendants) as kept
    #[command(
        after_help = "Examples:\n  session-reaper keep -- npm run dev\n  session-reaper keep --pid 4242"
    )]
    Keep(KeepArgs),

    /// Watch one agent process and do the agent-gone work when it exits (started by hooks; not for people)
    #[command(hide = true)]
    Sentinel(SentinelArgs),

    /// Print the man page (roff, generated from this command line), or write one page per command to --dir
    #[command(
        hide = true,
        after_help = "Examples:\n  session-reaper man | man -l -\n  session-reaper man --dir /usr/local/share/man/man1"
    )]
    Man(ManArgs),
}

#[derive(Debug, Args)]
pub(crate) struct ManArgs {
    /// Write session-reaper.1 and a page per command (session-reaper-status.1, …) into this directory
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub(crate) struct KeepArgs {
    /// Mark this running process and its descendants instead of starting a command
    #[arg(
        long,
        value_name = "PID",
        allow_negative_numbers = true,
        conflicts_with = "command"
    )]
    pub pid: Option<i32>,

    /// Append the command's stdout and stderr here [default: discarded]
    #[arg(long, value_name = "FILE", conflicts_with = "pid")]
    pub log: Option<PathBuf>,

    #[command(flatten)]
    pub output: JsonFlag,

    /// The command to start detached, its environment naming no session
    #[arg(last = true, value_name = "CMD", required_unless_present = "pid")]
    pub command: Vec<String>,
}

#[derive(Debug, Args)]
pub(crate) struct SentinelArgs {
    #[arg(long, value_name = "PID")]
    pub pid: i32,
    #[arg(long, value_name = "TICKS")]
    pub start_ticks: u64,
    /// Give up when the agent outlives this (the bounded wait after a SessionEnd)
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub within: Option<Duration>,
}

/// What to do with what a session leaves behind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum LeftoversChoice {
    Stop,
    Report,
    Off,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum Switch {
    On,
    Off,
}

#[derive(Debug, Args)]
pub(crate) struct HookArgs {
    /// Which agent runs us: one of the agents table, or auto (detected from the payload and environment)
    #[arg(long, value_parser = agent_choice, default_value = "auto", value_name = "AGENT")]
    pub agent: AgentChoice,

    /// The hook event, when the payload lacks `hook_event_name`
    #[arg(long, value_name = "EVENT")]
    pub event: Option<String>,

    /// Return within this long, whatever happens; what is left goes to a background finisher
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "1s")]
    pub deadline: Duration,

    /// How long to wait for the payload on stdin (it may never be closed)
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "500ms")]
    pub stdin_timeout: Duration,

    /// The agent process, when it is not the nearest non-shell ancestor
    #[arg(long, value_name = "PID")]
    pub owner_pid: Option<i32>,

    /// What the session's tools leave behind once the agent is gone: stop it, only report it, or ignore it
    #[arg(
        long,
        value_enum,
        env = "SESSION_REAPER_LEFTOVERS",
        default_value = "stop"
    )]
    pub leftovers: LeftoversChoice,

    /// A watcher per agent process that does the agent-gone work the moment the agent exits
    #[arg(
        long,
        value_enum,
        env = "SESSION_REAPER_SENTINEL",
        default_value = "on"
    )]
    pub sentinel: Switch,

    /// A cgroup of its own for the agent process (cgroup v2), so that everything it starts is known whatever it does
    /// to its environment; off, or where unavailable, the session variables and process group stand in
    #[arg(
        long,
        value_enum,
        env = "SESSION_REAPER_CONTAINMENT",
        default_value = "on"
    )]
    pub containment: Switch,

    /// With no sentinel: how long after SessionEnd to wait for the agent to exit before leaving it to the sweep
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "30s")]
    pub agent_exit_wait: Duration,

    #[command(flatten)]
    pub codex: CodexArgs,
}

/// Where the Codex plugin for Claude Code keeps its brokers, and whether to look at all.
#[derive(Debug, Args)]
pub(crate) struct CodexArgs {
    /// Also look for the Codex plugin's brokers in this state dir (repeatable) [always looked at:
    /// $CLAUDE_PLUGIN_DATA/state, $TMPDIR/codex-companion, ~/.claude/plugins/data/*/state]
    #[arg(long = "codex-state", value_name = "DIR")]
    pub codex_state: Vec<PathBuf>,

    /// Leave the Codex plugin's brokers alone
    #[arg(long, conflicts_with = "codex_state")]
    pub no_codex: bool,
}

/// When to colour output (and print progress lines on stderr).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum ColorWhen {
    Auto,
    Always,
    Never,
}

/// `--json`: one JSON shape per record type instead of text for people.
#[derive(Clone, Copy, Debug, Default, Args)]
pub(crate) struct JsonFlag {
    /// Print JSON (one object per record; `log` prints JSON Lines) instead of text for people
    #[arg(long)]
    pub json: bool,
}

/// `--agent` of `hook`: an agent, or `auto` (detected from the payload and environment).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct AgentChoice(pub Option<Agent>);

/// Parses `auto` or an agent's name (the names of [`Agent`], as clap spells them).
fn agent_choice(text: &str) -> Result<AgentChoice, String> {
    if text == "auto" {
        return Ok(AgentChoice(None));
    }
    <Agent as ValueEnum>::from_str(text, false)
        .map(|agent| AgentChoice(Some(agent)))
        .map_err(|_| {
            let names: Vec<&str> = Agent::all().map(Agent::as_str).collect();
            format!("expected auto or one of {}", names.join(", "))
        })
}

/// Which slot: a workspace (by any directory inside it) and a broker name.
#[derive(Debug, Args)]
pub(crate) struct SlotArgs {
    /// A directory in the workspace (its git top-level is the workspace) [default: the current directory]
    #[arg(long, value_name = "DIR")]
    pub cwd: Option<PathBuf>,

    /// The broker's name within the workspace
    #[arg(long, value_name = "NAME", default_value = "default")]
    pub name: String,
}

/// Who owns: a session id, else found from the environment or the calling agent.
#[derive(Debug, Args)]
pub(crate) struct OwnerArgs {
    /// Owner session [default: $SESSION_REAPER_SESSION_ID, then each agent's session variable in the agents table
    /// ($CLAUDE_CODE_SESSION_ID, $QWEN_CODE_SESSION_ID, $CODEX_THREAD_ID, …), else the live session whose agent
    /// process is an ancestor of this one]
    #[arg(long, value_name = "ID")]
    pub session: Option<String>,
}

/// How a broker is to be stopped.
#[derive(Debug, Args)]
pub(crate) struct StopArgs {
    /// Stop the broker when it has been idle this long, even with live owners (lazy respawn; 0 disables)
    #[arg(long, value_name = "DURATION", value_parser = parse_idle_ttl)]
    pub idle_ttl: Option<Duration>,

    /// Time between SIGTERM and SIGKILL
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "5s")]
    pub grace: Duration,

    /// Graceful step: a unix socket to write one line to before SIGTERM
    #[arg(
        long,
        value_name = "PATH",
        requires = "shutdown_message",
        conflicts_with = "shutdown_command"
    )]
    pub shutdown_socket: Option<PathBuf>,

    /// The line written to --shutdown-socket
    #[arg(long, value_name = "LINE", requires = "shutdown_socket")]
    pub shutdown_message: Option<String>,

    /// Graceful step: a shell command to run before SIGTERM (bounded to 750 ms)
    #[arg(long, value_name = "COMMAND")]
    pub shutdown_command: Option<String>,
}

#[derive(Debug, Subcommand)]
pub(crate) enum BrokerCommand {
    /// Start CMD detached as the workspace's broker, or join the live one running the same command
    #[command(
        after_help = "Example:\n  session-reaper broker spawn --cwd ~/src/app --session s1 -- npm run dev"
    )]
    Spawn {
        #[command(flatten)]
        slot: SlotArgs,
        #[command(flatten)]
        owner: OwnerArgs,
        /// Record the broker with no owner (only a sweep's idle TTL or `reap` will stop it)
        #[arg(long, conflicts_with = "session")]
        no_owner: bool,
        #[command(flatten)]
        stop: StopArgs,
        /// Append the broker's stdout and stderr here [default: broker.log in the slot]
        #[arg(long, value_name = "FILE")]
        log: Option<PathBuf>,
        /// Where clients reach the broker (stored, never interpreted)
        #[arg(long, value_name = "ENDPOINT")]
        endpoint: Option<String>,
        /// Stop the slot's live broker first when it runs another command (else that is refused)
        #[arg(long)]
        replace: bool,
        /// Watch the new broker this long and fail (exit 1, with its exit status) if it exits in that time
        /// [default: no wait; a broker that exits at once shows as `exited` in status]
        #[arg(
            long,
            value_name = "DURATION",
            value_parser = parse_duration,
            num_args = 0..=1,
            require_equals = true,
            default_missing_value = "300ms"
        )]
        wait: Option<Duration>,
        #[command(flatten)]
        output: JsonFlag,
        /// The broker's command line
        #[arg(last = true, required = true, value_name = "CMD")]
        command: Vec<String>,
    },
    /// Adopt a process started elsewhere as the workspace's broker
    #[command(
        after_help = "Example:\n  session-reaper broker register --pid 4242 --cwd ~/src/app --session s1"
    )]
    Register {
        /// The process to adopt
        #[arg(long, value_name = "PID", allow_negative_numbers = true)]
        pid: i32,
        #[command(flatten)]
        slot: SlotArgs,
        #[command(flatten)]
        owner: OwnerArgs,
        /// Record the broker with no owner
        #[arg(long, conflicts_with = "session")]
        no_owner: bool,
        #[command(flatten)]
        stop: StopArgs,
        /// Where clients reach the broker (stored, never interpreted)
        #[arg(long, value_name = "ENDPOINT")]
        endpoint: Option<String>,
        #[command(flatten)]
        output: JsonFlag,
    },
    /// Add a session as an owner of the workspace's live broker
    #[command(after_help = "Example:\n  session-reaper broker attach --cwd ~/src/app --session s2")]
    Attach {
        #[command(flatten)]
        slot: SlotArgs,
        #[command(flatten)]
        owner: OwnerArgs,
        #[command(flatten)]
        output: JsonFlag,
    },
    /// Remove a session from the owners; the last owner out stops the broker
    #[command(after_help = "Example:\n  session-reaper broker detach --cwd ~/src/app --session s2")]
    Detach {
        #[command(flatten)]
        slot: SlotArgs,
        #[command(flatten)]
        owner: OwnerArgs,
        #[command(flatten)]
        output: JsonFlag,
    },
    /// Mark the broker as used now (resets its idle clock)
    #[command(after_help = "Example:\n  session-reaper broker touch --cwd ~/src/app")]
    Touch {
        #[command(flatten)]
        slot: SlotArgs,
        #[command(flatten)]
        output: JsonFlag,
    },
}

// Independent flags of one command line.
#[allow(clippy::struct_excessive_bools)]
#[derive(Debug, Args)]
pub(crate) struct ReapArgs {
    /// The session to end: its id or a unique prefix of one (as `status` shows it)
    #[arg(
        long,
        value_name = "ID",
        required_unless_present_any = ["all", "duplicates"],
        conflicts_with_all = ["all", "duplicates"]
    )]
    pub session: Option<String>,

    /// End a session no record knows (one started before the hooks were installed)
    #[arg(long, requires = "session")]
    pub force: bool,
    /// Stop all but the newest of the processes resuming one live session (duplicate --resume writers)
    #[arg(long, conflicts_with = "all")]
    pub duplicates: bool,

    /// End every live session (agent or host shutdown); needs --reason shutdown or restart
    #[arg(long, requires = "reason")]
    pub all: bool,

    /// Why: manual (default for --session), shutdown, restart, session_end
    #[arg(long, value_name = "REASON")]
    pub reason: Option<String>,

    /// Return within this long; what is left goes to a background finisher [default: wait for every stop]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub deadline: Option<Duration>,

    /// Show what would be done; signal nothing, write nothing
    #[arg(long)]
    pub dry_run: bool,

    /// Print JSON instead of text for people
    #[arg(long)]
    pub json: bool,

    #[command(flatten)]
    pub codex: CodexArgs,
}

#[derive(Debug, Args)]
pub(crate) struct SweepArgs {
    /// Stop brokers with no live owner after this long idle (0 disables; at most 30 days)
    #[arg(long, value_name = "DURATION", value_parser = parse_idle_ttl, default_value = "30m")]
    pub idle_ttl: Duration,

    /// How long before a session tombstone is deleted
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "7days")]
    pub retention: Duration,

    /// Show what would be done; signal nothing, write nothing
    #[arg(long)]
    pub dry_run: bool,

    /// Print JSON instead of text for people
    #[arg(long)]
    pub json: bool,

    #[command(flatten)]
    pub codex: CodexArgs,
}

#[derive(Debug, Args)]
pub(crate) struct StatusArgs {
    /// Print JSON instead of text for people
    #[arg(long)]
    pub json: bool,

    #[command(flatten)]
    pub codex: CodexArgs,
}

#[derive(Debug, Args)]
pub(crate) struct JsonArg {
    /// Print JSON instead of text for people
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct LogArgs {
    /// Only events of this session (its id or a unique prefix of one)
    #[arg(long, value_name = "ID")]
    pub session: Option<String>,

    /// Only events newer than this (e.g. 1h)
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub since: Option<Duration>,

    /// Only this action
    #[arg(long, value_enum, value_name = "ACTION")]
    pub action: Option<LogAction>,

    /// Total the memory freed by the stops shown (leftovers record what they held)
    #[arg(long)]
    pub freed: bool,

    /// Print JSON instead of text for people
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct SettingsArgs {
    /// The agent whose settings to change
    #[arg(long, value_enum)]
    pub agent: Agent,

    /// User settings (~/.claude/…) or the repository's, at its top level (<repo>/.claude/…, no absolute paths)
    #[arg(long, value_enum, default_value = "user")]
    pub scope: Scope,

    /// The settings file to change [default: the agent's for --scope]
    #[arg(long, value_name = "FILE")]
    pub settings: Option<PathBuf>,

    /// Also install (or remove) the periodic sweep: a systemd user timer, else a crontab line
    #[arg(long)]
    pub with_sweep: bool,

    /// Show the change; write nothing
    #[arg(long)]
    pub dry_run: bool,

    /// Print what was done as one JSON object (warnings included) instead of text
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct InstallArgs {
    #[command(flatten)]
    pub settings: SettingsArgs,

    /// Write `--leftovers POLICY` into the hook commands (what the session's tools leave behind once the agent is
    /// gone: stop it, only report it, or ignore it) [default: written as nothing, the hook's default `stop`]
    #[arg(long, value_enum, value_name = "POLICY")]
    pub leftovers: Option<LeftoversChoice>,

    /// Write `--sentinel on|off` into the hook commands (a watcher per agent process) [default: written as
    /// nothing, the hook's default `on`]
    #[arg(long, value_enum, value_name = "SWITCH")]
    pub sentinel: Option<Switch>,
}

#[derive(Debug, Args)]
pub(crate) struct DemoArgs {
    /// Keep the demo's directory (its state root, logs and events) and print where it is
    #[arg(long)]
    pub keep: bool,

    /// (internal) Be the demo's guardian: once stdin closes, stop what the demo in DIR started and remove DIR
    #[arg(long, hide = true, value_name = "DIR")]
    pub guard: Option<PathBuf>,
}

/// The actions `events.jsonl` records, as `log --action` accepts them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
#[value(rename_all = "snake_case")]
pub(crate) enum LogAction {
    SessionStart,
    SessionEnd,
    Spawn,
    Register,
    OwnerAdd,
    OwnerRemove,
    Stop,
    Stuck,
    Ticket,
    Prune,
    Refuse,
    Keep,
    Clean,
    Corrupt,
    DuplicateWriters,
    Leftover,
    Sentinel,
    Hook,
    Error,
}

impl LogAction {
    /// The action's name in events.jsonl.
    pub(crate) fn as_str(self) -> String {
        self.to_possible_value()
            .map(|value| value.get_name().to_owned())
            .unwrap_or_default()
    }
}
