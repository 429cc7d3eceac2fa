//! The coding agents we serve, as data: one [`AgentSpec`] per agent holds every per-agent fact — where its hook
//! settings live and how they are shaped, how its payloads name events and sessions, how it is recognised (payload,
//! environment, executable), which variables its shell tool carries, what switches its hooks off and whether its
//! `SessionEnd` can be relied on. Code elsewhere asks the table; adding an agent is one more row here.
//!
//! Sources (what a real client did wins over documentation; where they disagreed it is said on the row):
//! Claude Code, Gemini CLI, Qwen Code, Codex CLI, Factory Droid, Copilot CLI and OpenCode were run for real (Claude
//! 2.1.330/2.1.332, Gemini 0.61.0, Qwen 0.24.4, Codex 0.171.0, Droid 0.225.2, Copilot CLI 1.0.102, OpenCode 1.18.33;
//! see `docs/agents.md`); Cursor (cursor.com/docs/hooks) and Goose (its hooks guide, Open Plugins) cannot be
//! installed here and follow their documentation only.

use std::fmt;
use std::path::{Path, PathBuf};

use serde_json::Value;

/// A coding agent whose hooks can call us. The one enum: clap parses it (`--agent claude`), serde writes it.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    serde::Serialize,
    serde::Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Agent {
    Claude,
    Gemini,
    Qwen,
    Codex,
    Cursor,
    Copilot,
    Droid,
    Goose,
    Opencode,
}

impl Agent {
    /// Every agent, in table order.
    pub fn all() -> impl Iterator<Item = Agent> {
        AGENTS.iter().map(|spec| spec.agent)
    }

    /// This agent's row of the table.
    pub fn spec(self) -> &'static AgentSpec {
        AGENTS
            .iter()
            .find(|spec| spec.agent == self)
            .expect("every agent has a row in AGENTS")
    }

    pub fn as_str(self) -> &'static str {
        self.spec().name
    }

    /// The agent named `name` (as recorded in a session record).
    pub fn from_name(name: &str) -> Option<Agent> {
        AGENTS
            .iter()
            .find(|spec| spec.name == name)
            .map(|spec| spec.agent)
    }
}

impl fmt::Display for Agent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where an agent's configuration directory is, and which variable moves it.
#[derive(Clone, Copy, Debug)]
pub enum ConfigDirOverride {
    /// The variable names the configuration directory itself (`CLAUDE_CONFIG_DIR`, `CODEX_HOME`).
    Dir(&'static str),
    /// The variable replaces the home directory the configuration directory sits in (`GEMINI_CLI_HOME`).
    Home(&'static str),
    /// `XDG_CONFIG_HOME` replaces the `.config` the configuration directory sits in (`.config/opencode`).
    XdgConfig,
    None,
}

/// Where a settings document keeps its events.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventsAt {
    /// Under a top-level `"hooks"` object: `{"hooks": {"SessionStart": […]}}`.
    HooksKey,
    /// At the top level, keyed directly by event name: `{"SessionStart": […]}` (Factory Droid's `hooks.json`, which
    /// ignores a `"hooks"` wrapper with only a warning in its log).
    TopLevel,
}

/// How an agent is told to run our hook.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SettingsKind {
    /// Entries of ours in a JSON settings file the user may share with other programs.
    Json,
    /// A whole plugin file of ours (OpenCode's JavaScript plugin): its text, whose `const COMMAND = "…";` line holds
    /// the hook command as a JSON string (see `settings::plugin`).
    Plugin(&'static str),
}

/// How the hook entries of one event are laid out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// Claude's shape: `hooks.<Event>` = matcher groups `{"matcher"?, "hooks": [entry…]}`.
    Grouped,
    /// Cursor's and Copilot's shape: `hooks.<event>` = entries directly, and a top-level `"version": 1`.
    Flat,
}

/// The unit of a hook's `timeout` field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeUnit {
    Seconds,
    Millis,
}

/// The casing of payload field names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Casing {
    Snake,
    Camel,
}

/// Whether a `SessionEnd` hook fires whenever the agent's session ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionEndReliability {
    Reliable,
    /// Fires in some modes only (the text says which): the sweep (or the sentinel) must end the others.
    Partial(&'static str),
}

/// A settings switch that keeps hooks from running: the JSON pointer and the value that means "off".
#[derive(Clone, Copy, Debug)]
pub struct HooksOff {
    pub pointer: &'static str,
    pub value: bool,
}

/// How the agent runs a hook command: the shell and its flag (the command follows as one word).
#[derive(Clone, Copy, Debug)]
pub struct ShellForm {
    pub program: &'static str,
    pub flag: &'static str,
}

/// A variable through which an agent names its session, and whether its tools' processes carry it.
#[derive(Clone, Copy, Debug)]
pub struct SessionVar {
    pub name: &'static str,
    /// Its shell-tool commands (and what they start) carry it (verified on the real client): a process that outlives
    /// the agent names its session through it, so leftover discovery reads it. False for a variable only its hooks
    /// are known to get.
    pub tools: bool,
}

impl SessionVar {
    /// A variable the shell tool's commands carry.
    const fn tools(name: &'static str) -> Self {
        SessionVar { name, tools: true }
    }

    /// A variable only the hooks are known to carry.
    const fn hooks(name: &'static str) -> Self {
        SessionVar { name, tools: false }
    }
}

/// One agent's every fact. (Its booleans are independent facts about an agent, not states of one machine.)
#[allow(clippy::struct_excessive_bools)]
#[derive(Debug)]
pub struct AgentSpec {
    pub agent: Agent,
    /// The name on the command line and in records.
    pub name: &'static str,
    /// The product's name, for people.
    pub title: &'static str,
    /// The configuration directory below the home directory (user scope) or the repository top level (project).
    pub config_dir: &'static str,
    pub config_dir_override: ConfigDirOverride,
    /// The configuration directory in a repository, when it is not `config_dir` (OpenCode: `.opencode`).
    pub project_config_dir: Option<&'static str>,
    /// The hook settings file, relative to the configuration directory.
    pub settings_file: &'static str,
    pub kind: SettingsKind,
    pub events_at: EventsAt,
    /// A file written near the settings file when missing (Goose's `plugin.json`): path relative to the settings
    /// file's directory, contents.
    pub companion: Option<(&'static str, &'static str)>,
    /// The file may hold comments (JSONC); comments are kept on rewrite.
    pub comments: bool,
    pub layout: Layout,
    /// The key of an entry holding its shell command (`command`; Copilot: `bash`).
    pub command_key: &'static str,
    /// Our events, as named in the settings file: start, then end (absent when the agent has none).
    pub start_event: &'static str,
    pub end_event: Option<&'static str>,
    /// The payload names its event; when not (Copilot's camelCase events), our command passes `--event`.
    pub event_in_payload: bool,
    /// Payload fields that name the event, tried in order.
    pub event_fields: &'static [&'static str],
    /// Payload fields that name the session, tried in order.
    pub session_fields: &'static [&'static str],
    pub casing: Casing,
    pub timeout_field: &'static str,
    pub timeout_unit: TimeUnit,
    /// The timeouts we write, in `timeout_unit`: start, end.
    pub timeouts: (u64, u64),
    /// The largest `SessionEnd` timeout the agent honours (Codex clamps above 3 s), in `timeout_unit`.
    pub end_timeout_cap: Option<u64>,
    /// Extra fields of our entry (Gemini's `name`, which its `hooksConfig.disabled` lists).
    pub entry_extras: &'static [(&'static str, &'static str)],
    /// A path fragment of the agent's transcripts (`/.claude/`).
    pub transcript_needle: Option<&'static str>,
    /// Variables in a hook's environment that mark this agent (only ones no other agent sets).
    pub env_markers: &'static [&'static str],
    /// Variables naming the session in the environment of its hooks or its shell tool (verified on real clients):
    /// what `broker spawn` reads for its owner, what a detached process is started without, and (those its tools
    /// carry) what leftover discovery reads.
    pub session_vars: &'static [SessionVar],
    /// The variable naming the agent's own pid in its hooks' and shell-tool commands' environment (`CLAUDE_PID`).
    pub agent_pid_var: Option<&'static str>,
    /// Variables its shell-tool commands or hooks carry and its stdio MCP servers do not: a child of the agent that
    /// carries one is a tool's command, not a server (see `mcp`).
    pub tool_marks: &'static [&'static str],
    /// The variable naming a file whose `export` lines reach later shell-tool commands.
    pub env_file_var: Option<&'static str>,
    /// Basenames of the agent's executable as its process shows it in `/proc` (argv[0], or the script a runtime
    /// runs, `.js` and the like dropped; also its `comm`), verified on the real clients where they were run.
    pub executables: &'static [&'static str],
    /// npm package paths in the script a runtime (`node`, `bun`) runs, for an agent whose script has a generic name
    /// (`cli.js`) or whose npm launcher starts its native binary (`@github/copilot/npm-loader.js`).
    pub script_needles: &'static [&'static str],
    /// How a shell script the agent puts in front of its shell tool's commands begins (`bash -c 'owner_is_alive()
    /// …'`, Droid's watchdog leading the tool's session): the agent's own helper, not a tool's command.
    pub tool_wrappers: &'static [&'static str],
    /// Settings switches that keep every hook from running.
    pub hooks_off: &'static [HooksOff],
    /// Agents whose hook files this agent runs as well (Cursor and Copilot run Claude's): a session reached through
    /// those is still this agent's.
    pub also_runs: &'static [Agent],
    pub session_end: SessionEndReliability,
    /// Hook trust is keyed by position in the file (Codex): a new entry goes last, so trusted ones keep their key.
    pub trust_by_position: bool,
    /// The file may hold nothing but `hooks` (Codex parses it with `deny_unknown_fields`).
    pub hooks_only_file: bool,
    pub shell: ShellForm,
    /// Said after a successful install, last.
    pub notes: &'static [&'static str],
}

const BASH_C: ShellForm = ShellForm {
    program: "/bin/bash",
    flag: "-c",
};
const SH_C: ShellForm = ShellForm {
    program: "/bin/sh",
    flag: "-c",
};

/// The defaults of a row: Claude's settings shape and payloads, which most agents share. Each row says only where
/// its agent differs.
const CLAUDE_SHAPED: AgentSpec = AgentSpec {
    agent: Agent::Claude,
    name: "",
    title: "",
    config_dir: "",
    config_dir_override: ConfigDirOverride::None,
    project_config_dir: None,
    settings_file: "settings.json",
    kind: SettingsKind::Json,
    events_at: EventsAt::HooksKey,
    companion: None,
    comments: false,
    layout: Layout::Grouped,
    command_key: "command",
    start_event: "SessionStart",
    end_event: Some("SessionEnd"),
    event_in_payload: true,
    event_fields: &["hook_event_name"],
    session_fields: &["session_id"],
    casing: Casing::Snake,
    timeout_field: "timeout",
    timeout_unit: TimeUnit::Seconds,
    timeouts: (5, 5),
    end_timeout_cap: None,
    entry_extras: &[],
    transcript_needle: None,
    env_markers: &[],
    session_vars: &[],
    agent_pid_var: None,
    tool_marks: &[],
    env_file_var: None,
    executables: &[],
    script_needles: &[],
    tool_wrappers: &[],
    hooks_off: &[],
    also_runs: &[],
    session_end: SessionEndReliability::Reliable,
    trust_by_position: false,
    hooks_only_file: false,
    shell: BASH_C,
    notes: &[],
};

/// The table.
pub static AGENTS: &[AgentSpec] = &[
    AgentSpec {
        agent: Agent::Claude,
        name: "claude",
        title: "Claude Code",
        config_dir: ".claude",
        config_dir_override: ConfigDirOverride::Dir("CLAUDE_CONFIG_DIR"),
        end_timeout_cap: Some(60),
        transcript_needle: Some("/.claude/"),
        env_markers: &["CLAUDECODE", "CLAUDE_CODE_ENTRYPOINT", "CLAUDE_PID"],
        // Hooks, Bash-tool commands (2.1.132+) and stdio MCP servers (2.1.154+); hooks and Bash-tool commands also
        // get CLAUDE_PID (2.1.332), MCP servers do not.
        session_vars: &[SessionVar::tools("CLAUDE_CODE_SESSION_ID")],
        agent_pid_var: Some("CLAUDE_PID"),
        tool_marks: &["CLAUDE_PID"],
        env_file_var: Some("CLAUDE_ENV_FILE"),
        executables: &["claude"],
        script_needles: &["/@anthropic-ai/claude-code/"],
        hooks_off: &[HooksOff {
            pointer: "/disableAllHooks",
            value: true,
        }],
        shell: SH_C,
        ..CLAUDE_SHAPED
    },
    AgentSpec {
        agent: Agent::Gemini,
        name: "gemini",
        title: "Gemini CLI",
        config_dir: ".gemini",
        config_dir_override: ConfigDirOverride::Home("GEMINI_CLI_HOME"),
        comments: true,
        timeout_unit: TimeUnit::Millis,
        timeouts: (5000, 5000),
        entry_extras: &[("name", "session-reaper")],
        transcript_needle: Some("/.gemini/"),
        env_markers: &["GEMINI_CLI"],
        // Seen by hooks (0.61.0); the shell tool's commands are not known to carry it: its leftovers are found by
        // descent.
        session_vars: &[SessionVar::hooks("GEMINI_SESSION_ID")],
        executables: &["gemini"],
        script_needles: &["/@google/gemini-cli/"],
        hooks_off: &[HooksOff {
            pointer: "/hooksConfig/enabled",
            value: false,
        }],
        ..CLAUDE_SHAPED
    },
    AgentSpec {
        agent: Agent::Qwen,
        name: "qwen",
        title: "Qwen Code",
        config_dir: ".qwen",
        comments: true,
        // Seconds, but 1000 or more is read as milliseconds (older releases read every value as ms): 5000 means
        // five seconds on every release.
        timeout_unit: TimeUnit::Millis,
        timeouts: (5000, 5000),
        transcript_needle: Some("/.qwen/"),
        env_markers: &[
            "QWEN_CODE_SESSION_ID",
            "QWEN_CODE_LAUNCHER_PID",
            "QWEN_CODE",
        ],
        // Hooks and shell-tool commands (0.24.4); only the shell tool's get QWEN_CODE=1.
        session_vars: &[SessionVar::tools("QWEN_CODE_SESSION_ID")],
        tool_marks: &["QWEN_CODE"],
        executables: &["qwen"],
        script_needles: &["/@qwen-code/qwen-code/"],
        hooks_off: &[HooksOff {
            pointer: "/disableAllHooks",
            value: true,
        }],
        session_end: SessionEndReliability::Partial(
            "headless `qwen -p` never fires SessionEnd, nor does the TUI on SIGHUP or SIGTERM",
        ),
        ..CLAUDE_SHAPED
    },
    AgentSpec {
        agent: Agent::Codex,
        name: "codex",
        title: "Codex CLI",
        config_dir: ".codex",
        config_dir_override: ConfigDirOverride::Dir("CODEX_HOME"),
        settings_file: "hooks.json",
        // SessionEnd: 1 s when absent, a value above 3 clamped with a warning at every start.
        timeouts: (5, 3),
        end_timeout_cap: Some(3),
        transcript_needle: Some("/.codex/"),
        env_markers: &["CODEX_MANAGED_BY_NPM", "CODEX_THREAD_ID"],
        // Shell-tool commands only (0.171.0), each with its CODEX_TOOL_CALL_ID; hooks get neither.
        session_vars: &[
            SessionVar::tools("CODEX_THREAD_ID"),
            SessionVar::tools("CODEX_SESSION_ID"),
        ],
        tool_marks: &["CODEX_TOOL_CALL_ID"],
        executables: &["codex"],
        script_needles: &["/@openai/codex/"],
        session_end: SessionEndReliability::Partial(
            "releases before 0.145 have no SessionEnd; it also fires when a thread is archived or unloaded",
        ),
        trust_by_position: true,
        hooks_only_file: true,
        notes: &[
            "CODEX RUNS NO HOOK UNTIL YOU TRUST IT: start `codex`, open /hooks and trust both session-reaper hooks \
             (untrusted hooks are skipped without a word); `session-reaper doctor` checks it",
        ],
        ..CLAUDE_SHAPED
    },
    AgentSpec {
        agent: Agent::Cursor,
        name: "cursor",
        title: "Cursor",
        config_dir: ".cursor",
        settings_file: "hooks.json",
        layout: Layout::Flat,
        start_event: "sessionStart",
        end_event: Some("sessionEnd"),
        session_fields: &["session_id", "conversation_id"],
        transcript_needle: Some("/.cursor/"),
        env_markers: &["CURSOR_VERSION", "CURSOR_TRACE_ID"],
        executables: &["cursor", "cursor-agent", "Cursor"],
        also_runs: &[Agent::Claude],
        // sessionEnd is fire-and-forget and fires per conversation, not when Cursor exits.
        session_end: SessionEndReliability::Partial(
            "sessionEnd is fire-and-forget and per conversation; Cursor's exit fires nothing",
        ),
        shell: SH_C,
        ..CLAUDE_SHAPED
    },
    AgentSpec {
        agent: Agent::Copilot,
        name: "copilot",
        title: "GitHub Copilot CLI",
        config_dir: ".copilot",
        config_dir_override: ConfigDirOverride::Dir("COPILOT_HOME"),
        settings_file: "hooks/session-reaper.json",
        layout: Layout::Flat,
        command_key: "bash",
        start_event: "sessionStart",
        end_event: Some("sessionEnd"),
        // camelCase events carry camelCase fields; PascalCase ones (VS Code format) snake_case.
        event_in_payload: false,
        event_fields: &["hook_event_name", "hookEventName"],
        session_fields: &["sessionId", "session_id"],
        casing: Casing::Camel,
        timeout_field: "timeoutSec",
        entry_extras: &[("type", "command")],
        transcript_needle: Some("/.copilot/"),
        env_markers: &["COPILOT_CLI"],
        // The shell tool's commands (1.0.102), each in a session of its own: equal to the hooks' `sessionId`.
        session_vars: &[SessionVar::tools("COPILOT_AGENT_SESSION_ID")],
        // The native binary (`@github/copilot-linux-x64/copilot`), run by `node …/npm-loader.js` (the npm launcher,
        // which does not pass signals on): the nearest, the native one, is the agent.
        executables: &["copilot"],
        script_needles: &["/@github/copilot/"],
        also_runs: &[Agent::Claude],
        ..CLAUDE_SHAPED
    },
    AgentSpec {
        agent: Agent::Droid,
        name: "droid",
        title: "Factory Droid",
        config_dir: ".factory",
        settings_file: "hooks.json",
        // Verified on 0.225.2: `{"SessionStart": […]}`; a `"hooks"` wrapper is ignored (an older file of ours had one).
        events_at: EventsAt::TopLevel,
        transcript_needle: Some("/.factory/"),
        // Both in its hooks' environment (0.225.2), with CLAUDE_ENV_FILE: what our SessionStart appends there reaches
        // its shell tool's commands (SESSION_REAPER_SESSION_ID seen in them).
        env_markers: &["FACTORY_PROJECT_DIR", "DROID_PROJECT_DIR"],
        env_file_var: Some("CLAUDE_ENV_FILE"),
        // A Bun-compiled binary (`@factory/cli-linux-x64/bin/droid`); its shell tool's commands run under a
        // `bash -c 'owner_is_alive() …'` watchdog that leads a session of their own.
        executables: &["droid"],
        script_needles: &["/@factory/cli/"],
        tool_wrappers: &["owner_is_alive()"],
        shell: SH_C,
        ..CLAUDE_SHAPED
    },
    AgentSpec {
        agent: Agent::Goose,
        name: "goose",
        title: "Goose",
        config_dir: ".agents",
        settings_file: "plugins/session-reaper/hooks/hooks.json",
        companion: Some((
            "../plugin.json",
            "{\n  \"name\": \"session-reaper\",\n  \"description\": \"Ends session-reaper sessions: SessionStart and SessionEnd hooks\"\n}\n",
        )),
        event_fields: &["event", "hook_event_name"],
        env_markers: &["GOOSE_SESSION_ID"],
        executables: &["goose"],
        shell: SH_C,
        ..CLAUDE_SHAPED
    },
    AgentSpec {
        agent: Agent::Opencode,
        name: "opencode",
        title: "OpenCode",
        config_dir: ".config/opencode",
        config_dir_override: ConfigDirOverride::XdgConfig,
        project_config_dir: Some(".opencode"),
        // No hook commands: a JavaScript plugin of ours runs the hook at `session.created` with a Claude-shaped
        // SessionStart payload, and gives the shell tool SESSION_REAPER_SESSION_ID through `shell.env`.
        settings_file: "plugin/session-reaper.js",
        kind: SettingsKind::Plugin(include_str!("../hooks/opencode/session-reaper.js")),
        layout: Layout::Flat,
        end_event: None,
        env_markers: &["OPENCODE_PID"],
        // The shell tool's commands carry OPENCODE_PID (1.18.33), each in a session of its own.
        agent_pid_var: Some("OPENCODE_PID"),
        // A Bun-compiled ELF: `opencode-ai/bin/opencode.exe` (hard link of `opencode-linux-x64/bin/opencode`),
        // started as `node_modules/.bin/opencode`. Kilo CLI (an OpenCode fork, `@kilocode/cli-linux-x64/bin/kilo`,
        // 7.7.9) runs the same plugin from `~/.config/kilo/plugin/`: its sessions are OpenCode's to us.
        executables: &["opencode", "opencode.exe", "kilo"],
        script_needles: &["/opencode-ai/", "/@kilocode/cli"],
        session_end: SessionEndReliability::Partial(
            "OpenCode fires no end event, not even on SIGTERM: its sessions end when the sentinel sees it exit",
        ),
        shell: SH_C,
        ..CLAUDE_SHAPED
    },
];

impl AgentSpec {
    /// The events we install, as the settings file names them.
    pub fn events(&self) -> impl Iterator<Item = &'static str> {
        std::iter::once(self.start_event).chain(self.end_event)
    }

    /// Our entry for `event` running `command`.
    pub fn entry(&self, event: &str, command: &str) -> Value {
        let mut entry = serde_json::Map::new();
        for (key, value) in self.entry_extras {
            entry.insert((*key).to_owned(), Value::from(*value));
        }
        if self.layout == Layout::Grouped {
            entry.insert("type".into(), Value::from("command"));
        }
        let command = if self.event_in_payload {
            command.to_owned()
        } else {
            format!("{command} --event {event}")
        };
        entry.insert(self.command_key.into(), Value::from(command));
        let timeout = if Some(event) == self.end_event {
            self.timeouts.1
        } else {
            self.timeouts.0
        };
        entry.insert(self.timeout_field.into(), Value::from(timeout));
        Value::Object(entry)
    }

    /// The user's settings file below the home directory `home`: no variables consulted.
    pub fn settings_under(&self, home: &Path) -> PathBuf {
        home.join(self.config_dir).join(self.settings_file)
    }

    /// A repository's settings file, at its top level `repo`.
    pub fn project_settings(&self, repo: &Path) -> PathBuf {
        repo.join(self.project_config_dir.unwrap_or(self.config_dir))
            .join(self.settings_file)
    }

    /// How many directories above a settings file at `path` are the agent's own (its settings file's folders and
    /// its configuration directory, as the path spells them; none for a path chosen elsewhere): what an uninstall
    /// that emptied them may remove.
    pub fn own_dirs_above(&self, path: &Path) -> usize {
        let depth = |dir: &str| Path::new(dir).join(self.settings_file).components().count();
        [Some(self.config_dir), self.project_config_dir]
            .into_iter()
            .flatten()
            .filter(|dir| path.ends_with(Path::new(dir).join(self.settings_file)))
            .map(depth)
            .max()
            .or_else(|| path.ends_with(self.settings_file).then(|| depth("")))
            .map_or(0, |components| components.saturating_sub(1))
    }

    /// The user's settings file, honouring the agent's own override variable; `None` without a home directory.
    pub fn user_settings(
        &self,
        env: &dyn Fn(&str) -> Option<std::ffi::OsString>,
    ) -> Option<PathBuf> {
        let nonempty = |name: &str| env(name).filter(|v| !v.is_empty()).map(PathBuf::from);
        match self.config_dir_override {
            ConfigDirOverride::Dir(name) => {
                if let Some(dir) = nonempty(name) {
                    return Some(dir.join(self.settings_file));
                }
            }
            ConfigDirOverride::Home(name) => {
                if let Some(home) = nonempty(name) {
                    return Some(self.settings_under(&home));
                }
            }
            ConfigDirOverride::XdgConfig => {
                if let (Some(config), Some(dir)) = (
                    nonempty("XDG_CONFIG_HOME"),
                    self.config_dir.strip_prefix(".config/"),
                ) {
                    return Some(config.join(dir).join(self.settings_file));
                }
            }
            ConfigDirOverride::None => {}
        }
        nonempty("HOME").map(|home| self.settings_under(&home))
    }

    /// The user's configuration directory of the agent (where its settings file is, up to the agent's own folder):
    /// its presence says the agent is set up for this user.
    pub fn user_config_dir(
        &self,
        env: &dyn Fn(&str) -> Option<std::ffi::OsString>,
    ) -> Option<PathBuf> {
        let settings = self.user_settings(env)?;
        let above = Path::new(self.settings_file).components().count();
        settings.ancestors().nth(above).map(Path::to_path_buf)
    }

    /// True when our hook goes into a plugin file of ours rather than into entries of a settings file.
    pub fn is_plugin(&self) -> bool {
        matches!(self.kind, SettingsKind::Plugin(_))
    }

    /// True for an agent that names its session to the processes its tools start; for the others the agent's
    /// descendants and its process group stand in.
    pub fn names_sessions(&self) -> bool {
        self.session_vars.iter().any(|var| var.tools)
    }

    /// The first switch in `settings` that keeps hooks from running, as `"/disableAllHooks": true`.
    pub fn hooks_disabled_by(&self, settings: &Value) -> Option<String> {
        self.hooks_off
            .iter()
            .find(|off| settings.pointer(off.pointer) == Some(&Value::Bool(off.value)))
            .map(|off| format!("\"{}\": {}", &off.pointer[1..].replace('/', "."), off.value))
    }
}

/// The agent named by the environment's markers, if any: the first row whose marker is set.
pub(crate) fn agent_from_env(has: &dyn Fn(&str) -> bool) -> Option<Agent> {
    AGENTS
        .iter()
        .find(|spec| spec.env_markers.iter().any(|name| has(name)))
        .map(|spec| spec.agent)
}

/// The payload fields to try for one purpose (event or session names): the named agent's first, then every other
/// agent's, each once.
pub(crate) fn payload_fields(
    agent: Option<Agent>,
    fields: impl Fn(&AgentSpec) -> &'static [&'static str],
) -> Vec<&'static str> {
    let mut names: Vec<&'static str> = agent
        .map(|agent| fields(agent.spec()).to_vec())
        .unwrap_or_default();
    for spec in AGENTS {
        for name in fields(spec) {
            if !names.contains(name) {
                names.push(name);
            }
        }
    }
    names
}

/// The agent a payload's own field names point to: a field present that exactly one agent's row lists (Copilot's
/// `sessionId`, Goose's `event`, Cursor's `conversation_id`).
pub(crate) fn agent_from_payload_keys(has: &dyn Fn(&str) -> bool) -> Option<Agent> {
    let listed_by = |name: &str| {
        AGENTS
            .iter()
            .filter(|spec| spec.event_fields.contains(&name) || spec.session_fields.contains(&name))
            .count()
    };
    AGENTS
        .iter()
        .find(|spec| {
            spec.event_fields
                .iter()
                .chain(spec.session_fields)
                .any(|name| has(name) && listed_by(name) == 1)
        })
        .map(|spec| spec.agent)
}

/// The agent whose markers the environment carries and which runs `flagged`'s hook files too (Cursor and Copilot
/// run Claude's): a hook installed for `flagged` then serves that agent's session.
pub(crate) fn host_running_hooks_of(flagged: Agent, has: &dyn Fn(&str) -> bool) -> Option<Agent> {
    AGENTS
        .iter()
        .find(|spec| {
            spec.also_runs.contains(&flagged) && spec.env_markers.iter().any(|name| has(name))
        })
        .map(|spec| spec.agent)
}

/// The agent whose transcripts live under a path like this one.
pub(crate) fn agent_from_transcript(path: &str) -> Option<Agent> {
    AGENTS
        .iter()
        .find(|spec| {
            spec.transcript_needle
                .is_some_and(|needle| path.contains(needle))
        })
        .map(|spec| spec.agent)
}

/// Script runtimes an agent is run with (`#!/usr/bin/env node` makes the argv `node /path/to/claude …`).
const RUNTIMES: &[&str] = &["node", "nodejs", "bun", "deno"];

/// The agent whose process `argv` is: its program is one of an agent's executables, or a script runtime whose script
/// is one (by name, `.js` and the like dropped, or by its npm package).
pub(crate) fn agent_of_process(argv: &[String]) -> Option<Agent> {
    let base = |path: &str| {
        path.rsplit('/')
            .next()
            .unwrap_or_default()
            .trim_start_matches('-')
            .to_owned()
    };
    let (program, rest) = argv.split_first()?;
    let program = base(program);
    let by_name = |name: &str| AGENTS.iter().find(|spec| spec.executables.contains(&name));
    if let Some(spec) = by_name(&program) {
        return Some(spec.agent);
    }
    if !RUNTIMES.contains(&program.as_str()) {
        return None;
    }
    // The first argument that is not a runtime option is the script.
    let script = rest.iter().find(|arg| !arg.starts_with('-'))?;
    let name = base(script);
    let stem = [".js", ".mjs", ".cjs", ".ts"]
        .iter()
        .find_map(|ext| name.strip_suffix(ext))
        .unwrap_or(&name);
    by_name(stem)
        .or_else(|| {
            AGENTS.iter().find(|spec| {
                spec.script_needles
                    .iter()
                    .any(|needle| script.contains(needle))
            })
        })
        .map(|spec| spec.agent)
}

/// The agent whose helper `argv` is: a shell running a script that begins as one of an agent's `tool_wrappers`
/// (Droid's `bash -c 'owner_is_alive() …'` watchdog, which leads the session of its shell tool's commands).
#[cfg(test)]
pub(crate) fn agent_of_tool_wrapper(argv: &[String]) -> Option<Agent> {
    let (program, rest) = argv.split_first()?;
    let shell = program.rsplit('/').next().unwrap_or_default();
    if !matches!(shell, "bash" | "sh" | "dash" | "zsh") {
        return None;
    }
    let script = rest
        .iter()
        .position(|arg| arg == "-c")
        .and_then(|index| rest.get(index + 1))?;
    let script = script.trim_start();
    AGENTS
        .iter()
        .find(|spec| {
            spec.tool_wrappers
                .iter()
                .any(|start| script.starts_with(start))
        })
        .map(|spec| spec.agent)
}

/// The variable our `SessionStart` exports through an agent's env file, which later tool commands then carry.
pub(crate) const OWN_SESSION_VAR: &str = "SESSION_REAPER_SESSION_ID";

/// Every variable naming a session in a hook's or a shell tool's environment, ours first, then in table order: what
/// a broker launcher reads to find its owner, and what a process that outlives its session must not carry.
pub(crate) fn session_variables() -> Vec<&'static str> {
    std::iter::once(OWN_SESSION_VAR)
        .chain(
            AGENTS
                .iter()
                .flat_map(|spec| spec.session_vars.iter().map(|var| var.name)),
        )
        .collect()
}

/// The variables that carry a session to the processes an agent's tools start, each with the agent that sets it
/// (`None` for ours, which any agent with an env file passes on): what leftover discovery reads in an environment.
pub(crate) fn carrier_variables() -> impl Iterator<Item = (&'static str, Option<Agent>)> {
    std::iter::once((OWN_SESSION_VAR, None)).chain(AGENTS.iter().flat_map(|spec| {
        spec.session_vars
            .iter()
            .filter(|var| var.tools)
            .map(|var| (var.name, Some(spec.agent)))
    }))
}

/// The variables naming an agent's own pid (`CLAUDE_PID`).
pub(crate) fn agent_pid_variables() -> impl Iterator<Item = &'static str> {
    AGENTS.iter().filter_map(|spec| spec.agent_pid_var)
}

/// True for a variable that ties a process to an agent session: a session variable, an agent marker, an env file,
/// or Claude Code's `CLAUDECODE*` / `CLAUDE_CODE_*` family. Brokers and the sentinel are started without them.
pub(crate) fn is_session_marker(name: &str) -> bool {
    name.starts_with("CLAUDECODE")
        || name.starts_with("CLAUDE_CODE_")
        || session_variables().contains(&name)
        || AGENTS.iter().any(|spec| {
            spec.env_markers.contains(&name)
                || spec.env_file_var == Some(name)
                || spec.agent_pid_var == Some(name)
        })
}

/// Converts a timeout in an agent's unit to milliseconds.
pub(crate) fn timeout_millis(value: u64, unit: TimeUnit) -> u64 {
    match unit {
        TimeUnit::Seconds => value.saturating_mul(1000),
        TimeUnit::Millis => value,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_agent_has_one_row_and_a_unique_name() {
        let names: Vec<&str> = AGENTS.iter().map(|spec| spec.name).collect();
        let mut unique = names.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), names.len());
        for spec in AGENTS {
            assert_eq!(spec.agent.spec().name, spec.name);
            assert_eq!(Agent::from_name(spec.name), Some(spec.agent));
            let parsed = <Agent as clap::ValueEnum>::from_str(spec.name, false).unwrap();
            assert_eq!(parsed, spec.agent, "clap spells it as the table does");
        }
    }

    #[test]
    fn agent_processes_are_recognised() {
        let argv = |words: &[&str]| words.iter().map(|w| (*w).to_owned()).collect::<Vec<_>>();
        assert_eq!(
            agent_of_process(&argv(&[
                "/usr/bin/node",
                "--expose-gc",
                "/x/node_modules/@qwen-code/qwen-code/cli.js"
            ])),
            Some(Agent::Qwen)
        );
        assert_eq!(
            agent_of_process(&argv(&[
                "/x/vendor/x86_64-unknown-linux-musl/bin/codex",
                "exec"
            ])),
            Some(Agent::Codex)
        );
        assert_eq!(
            agent_of_process(&argv(&["claude", "-p"])),
            Some(Agent::Claude)
        );
        assert_eq!(
            agent_of_process(&argv(&["node", "/usr/local/bin/gemini"])),
            Some(Agent::Gemini)
        );
        assert_eq!(agent_of_process(&argv(&["sleep", "600"])), None);
        assert_eq!(agent_of_process(&argv(&["python3", "fake_agent.py"])), None);
    }

    /// One process of a captured tree: `pid=N ppid=N pgid=N sid=N ARGS` (indented by depth), argv split at spaces.
    struct Captured {
        pid: i32,
        ppid: i32,
        argv: Vec<String>,
    }

    fn captured_tree(text: &str) -> Vec<Captured> {
        text.lines()
            .filter(|line| !line.starts_with('#'))
            .filter_map(|line| {
                let mut fields = line.trim_start().splitn(5, ' ');
                let mut number =
                    |key: &str| -> Option<i32> { fields.next()?.strip_prefix(key)?.parse().ok() };
                let pid = number("pid=")?;
                let parent = number("ppid=")?;
                number("pgid=")?;
                number("sid=")?;
                let argv = fields.next()?.split(' ').map(str::to_owned).collect();
                Some(Captured {
                    pid,
                    ppid: parent,
                    argv,
                })
            })
            .collect()
    }

    /// The agent of the process whose argv contains `needle`: its nearest ancestor the table recognises, as
    /// `proc::agent_process` would find it, with that ancestor's argv.
    fn agent_above(tree: &[Captured], needle: &str) -> Option<(Agent, String)> {
        let by_pid = |pid: i32| tree.iter().find(|p| p.pid == pid);
        let start = tree
            .iter()
            .rev()
            .find(|p| p.argv.iter().any(|arg| arg.contains(needle)))?;
        std::iter::successors(by_pid(start.ppid), |p| by_pid(p.ppid))
            .find_map(|p| agent_of_process(&p.argv).map(|agent| (agent, p.argv[0].clone())))
    }

    /// Every real client's process as captured in `/proc` (fixtures/payloads/<agent>-<version>/): the hook's agent is
    /// the client's own binary (never `timeout`, never Copilot's npm launcher in front of its native binary), and no
    /// command of the shell tool is taken for an agent.
    #[test]
    fn real_clients_are_recognised_in_their_captured_process_trees() {
        let cases = [
            (
                Agent::Droid,
                include_str!("../fixtures/payloads/droid-0.225.2/process-tree-at-start.txt"),
                include_str!("../fixtures/payloads/droid-0.225.2/process-tree-at-tool.txt"),
                "@factory/cli-linux-x64/bin/droid",
            ),
            (
                Agent::Copilot,
                include_str!("../fixtures/payloads/copilot-1.0.102/process-tree-at-start.txt"),
                include_str!("../fixtures/payloads/copilot-1.0.102/process-tree-at-tool.txt"),
                "@github/copilot-linux-x64/copilot",
            ),
            (
                Agent::Opencode,
                include_str!("../fixtures/payloads/opencode-1.18.33/process-tree-at-start.txt"),
                include_str!("../fixtures/payloads/opencode-1.18.33/process-tree-at-tool.txt"),
                "node_modules/.bin/opencode",
            ),
        ];
        for (agent, at_start, at_tool, binary) in cases {
            let start = captured_tree(at_start);
            let (found, program) = agent_above(&start, "capture.sh").expect("a hook in the tree");
            assert_eq!(found, agent, "{program}");
            assert!(program.ends_with(binary), "{agent}: the agent is {program}");
            let tool = captured_tree(at_tool);
            let (found, program) =
                agent_above(&tool, "tool.env").expect("a tool command in the tree");
            assert_eq!(found, agent, "{program}");
            assert!(
                program.ends_with(binary),
                "{agent}: the tool's agent is {program}"
            );
            for process in tool.iter().filter(|p| !p.argv[0].ends_with(binary)) {
                let argv = &process.argv;
                let launcher = argv[0] == "node" || argv[0] == "timeout";
                assert!(
                    launcher || agent_of_process(argv).is_none(),
                    "{agent}: {argv:?} is no agent"
                );
            }
            let wrappers: Vec<&Captured> = tool
                .iter()
                .filter(|p| agent_of_tool_wrapper(&p.argv).is_some())
                .collect();
            match agent {
                Agent::Droid => {
                    assert!(
                        !wrappers.is_empty(),
                        "Droid's watchdog leads the tool's session"
                    );
                    assert!(
                        wrappers
                            .iter()
                            .all(|p| agent_of_tool_wrapper(&p.argv) == Some(agent))
                    );
                }
                _ => assert!(wrappers.is_empty(), "{agent}"),
            }
        }
        let argv = |words: &[&str]| words.iter().map(|w| (*w).to_owned()).collect::<Vec<_>>();
        assert_eq!(
            agent_of_process(&argv(&["node", "/p/node_modules/.bin/copilot", "-p", "x"])),
            Some(Agent::Copilot),
            "the npm launcher is Copilot's too (the native binary below it is nearer)"
        );
        assert_eq!(
            agent_of_process(&argv(&[
                "/p/node_modules/opencode-ai/bin/opencode.exe",
                "run"
            ])),
            Some(Agent::Opencode)
        );
        assert_eq!(
            agent_of_tool_wrapper(&argv(&["/bin/bash", "-c", "owner_is_alive; sleep 1"])),
            None,
            "a script that only calls it is not the watchdog"
        );
    }

    #[test]
    fn scrub_list_covers_every_session_variable() {
        for name in [
            "SESSION_REAPER_SESSION_ID",
            "CLAUDE_CODE_SESSION_ID",
            "CLAUDE_CODE_ENTRYPOINT",
            "CLAUDE_PID",
            "CLAUDECODE",
            "GEMINI_SESSION_ID",
            "QWEN_CODE_SESSION_ID",
            "CODEX_THREAD_ID",
            "CODEX_SESSION_ID",
            "COPILOT_AGENT_SESSION_ID",
            "OPENCODE_PID",
            "CLAUDE_ENV_FILE",
        ] {
            assert!(is_session_marker(name), "{name}");
        }
        for name in [
            "PATH",
            "HOME",
            "CLAUDE_CONFIG_DIR",
            "SESSION_REAPER_STATE_DIR",
        ] {
            assert!(!is_session_marker(name), "{name}");
        }
    }

    /// The one table: every variable that leftover discovery, the scrub list of launch and keep, owner resolution of
    /// `broker spawn` and the agent-pid lookup use is a row's (or ours), and the verified ones are where the clients
    /// put them.
    #[test]
    fn every_session_variable_in_use_is_in_the_table() {
        let rows = |name: &str| -> Vec<Agent> {
            AGENTS
                .iter()
                .filter(|spec| {
                    spec.session_vars.iter().any(|var| var.name == name)
                        || spec.agent_pid_var == Some(name)
                })
                .map(|spec| spec.agent)
                .collect()
        };
        let owner_order = crate::config::session_env();
        assert_eq!(owner_order[0], OWN_SESSION_VAR, "ours is tried first");
        for name in &owner_order[1..] {
            assert_eq!(rows(name).len(), 1, "{name} is one row's");
        }
        for (name, agent) in carrier_variables() {
            assert!(
                owner_order.contains(&name),
                "{name}: owner resolution reads it"
            );
            assert!(is_session_marker(name), "{name}: scrubbed");
            match agent {
                None => assert_eq!(name, OWN_SESSION_VAR),
                Some(agent) => assert_eq!(rows(name), [agent], "{name}"),
            }
        }
        for name in agent_pid_variables() {
            assert_eq!(rows(name).len(), 1, "{name} is one row's");
            assert!(is_session_marker(name), "{name}: scrubbed");
        }
        for name in &owner_order {
            assert!(is_session_marker(name), "{name}: scrubbed");
        }
        let carriers: Vec<(&str, Option<Agent>)> = carrier_variables().collect();
        assert_eq!(
            carriers,
            [
                (OWN_SESSION_VAR, None),
                ("CLAUDE_CODE_SESSION_ID", Some(Agent::Claude)),
                ("QWEN_CODE_SESSION_ID", Some(Agent::Qwen)),
                ("CODEX_THREAD_ID", Some(Agent::Codex)),
                ("CODEX_SESSION_ID", Some(Agent::Codex)),
                ("COPILOT_AGENT_SESSION_ID", Some(Agent::Copilot)),
            ],
            "verified on Claude Code 2.1.332, Qwen Code 0.24.4, Codex CLI 0.171.0 and Copilot CLI 1.0.102 (Gemini's \
             shell tool exports none; Droid's carries ours through its env file, OpenCode's through our plugin)"
        );
        assert_eq!(
            agent_pid_variables().collect::<Vec<_>>(),
            ["CLAUDE_PID", "OPENCODE_PID"]
        );
        assert!(owner_order.contains(&"GEMINI_SESSION_ID"), "hooks see it");
        let named: Vec<&str> = AGENTS
            .iter()
            .filter(|spec| spec.names_sessions())
            .map(|spec| spec.name)
            .collect();
        assert_eq!(named, ["claude", "qwen", "codex", "copilot"]);
    }

    #[test]
    fn entries_carry_the_tables_fields() {
        let codex = Agent::Codex.spec();
        assert_eq!(codex.entry("SessionEnd", "x")["timeout"], 3);
        assert_eq!(codex.entry("SessionStart", "x")["timeout"], 5);
        let copilot = Agent::Copilot.spec().entry("sessionStart", "x");
        assert_eq!(
            copilot,
            serde_json::json!({"type": "command", "bash": "x --event sessionStart", "timeoutSec": 5})
        );
        assert_eq!(
            Agent::Gemini.spec().entry("SessionStart", "x")["name"],
            "session-reaper"
        );
    }
}
