//! Agent-settings installer: adds and removes our `SessionStart`/`SessionEnd` hook entries in the
//! settings JSON of Claude Code, Gemini CLI, Qwen Code and Codex CLI, leaving every other key and hook
//! as it was.
//!
//! The pure half ([`merge_entries`], [`remove_entries`], [`is_our_command`], [`commands_in`]) works on a
//! `serde_json::Value`; the file half ([`install`], [`uninstall`]) reads the file, refuses one it cannot
//! edit safely, writes a backup beside it and replaces it atomically with its permission bits kept.
//!
//! What each agent expects (checked against their sources and docs):
//! - Claude Code: `hooks.<Event>` = array of matcher groups `{"matcher"?, "hooks": [{"type": "command",
//!   "command", "timeout" (seconds)}]}`; no matcher = every source.
//! - Gemini CLI: the same shape, `timeout` in milliseconds, an optional hook `name` (what
//!   `hooksConfig.disabled` lists). Hooks run by default since 0.26 (`hooksConfig.enabled` defaults to
//!   true), so we do not write that switch; we warn when a file turns it off.
//! - Qwen Code: Claude's shape. Its command-hook `timeout` was read as milliseconds until
//!   QwenLM/qwen-code#11615; since then it is seconds, except that values of 1000 or more keep their
//!   millisecond meaning. `5000` therefore means five seconds on every version, where `5` would be
//!   5 ms (an instant kill) on the older ones.
//! - Codex CLI: `hooks.json` must hold nothing but `hooks` (it is parsed with `deny_unknown_fields`);
//!   `timeout` in whole seconds; a new or changed hook runs only after the user trusts it in `/hooks`,
//!   and that trust is keyed by the hook's position. We install `SessionStart` only; Codex releases
//!   from mid-2026 also fire `SessionEnd` (default timeout 1 s, capped at 3 s), which [`events_for`]
//!   could add. Older releases silently ignore event names they do not know.

use std::borrow::Cow;
use std::ffi::OsString;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use serde::Serialize;
use serde_json::{Map, Value, json};

use crate::agent::Agent;
use crate::error::BadInput;

/// The program name our hook commands start with (its basename is how we recognise our entries).
pub const PROGRAM: &str = "session-reaper";

/// The `name` we give our Gemini hooks; Gemini's `hooksConfig.disabled` lists hooks by this name.
pub const GEMINI_HOOK_NAME: &str = "session-reaper";

/// Hook timeout for Claude Code and Codex CLI, in seconds.
pub const TIMEOUT_SECS: u64 = 5;

/// Hook timeout for Gemini CLI, in milliseconds.
pub const GEMINI_TIMEOUT_MS: u64 = 5000;

/// Hook timeout for Qwen Code: five seconds on every version (see the module docs for why not `5`).
pub const QWEN_TIMEOUT: u64 = 5000;

/// Which settings file the default path points at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// The user's own settings, under the home directory (or the agent's config-dir variable).
    User,
    /// The settings of the project in the current directory.
    Project,
}

/// One `install` or `uninstall` run.
#[derive(Clone, Debug)]
pub struct InstallRequest<'a> {
    pub agent: Agent,
    /// The settings file to edit (a symlink is followed, and the file it points at is rewritten).
    pub settings_path: PathBuf,
    /// Absolute path of the binary the hook command runs; unused by `uninstall`.
    pub binary: &'a Path,
    /// Compute and report, write nothing.
    pub dry_run: bool,
}

/// Which way a report went.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Operation {
    Install,
    Uninstall,
}

/// What happened to one hook entry of ours.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "change", rename_all = "lowercase")]
pub enum Change {
    /// A new matcher group holding our entry was appended to the event.
    Added { event: String, command: String },
    /// An entry of ours was rewritten in place (another binary path, or fields it lacked).
    Replaced {
        event: String,
        old_command: String,
        command: String,
    },
    /// An entry of ours was removed (uninstall, or a duplicate found while installing).
    Removed { event: String, command: String },
    /// An entry of ours was already exactly right.
    Unchanged { event: String, command: String },
}

impl Change {
    /// The hook event the entry sits under.
    #[must_use]
    pub fn event(&self) -> &str {
        match self {
            Change::Added { event, .. }
            | Change::Replaced { event, .. }
            | Change::Removed { event, .. }
            | Change::Unchanged { event, .. } => event,
        }
    }

    /// True unless the entry was left as it was.
    #[must_use]
    pub fn is_change(&self) -> bool {
        !matches!(self, Change::Unchanged { .. })
    }
}

/// The outcome of [`install`] or [`uninstall`].
#[derive(Clone, Debug, Serialize)]
pub struct InstallReport {
    pub operation: Operation,
    pub agent: Agent,
    /// The settings file as requested.
    pub path: PathBuf,
    /// Every entry of ours that was looked at, in file order.
    pub changes: Vec<Change>,
    pub dry_run: bool,
    /// Install found no file and creates it (or would, under `dry_run`), with its parent directories.
    pub created: bool,
    /// The file was rewritten.
    pub written: bool,
    /// Where the previous contents were saved, when the file was rewritten.
    pub backup: Option<PathBuf>,
    /// Things the user should know: a switch in the file that keeps our hooks from running, a trust step.
    pub notes: Vec<String>,
}

impl InstallReport {
    /// True when the file's contents change (or would, under `dry_run`).
    #[must_use]
    pub fn changed(&self) -> bool {
        self.changes.iter().any(Change::is_change)
    }
}

impl fmt::Display for InstallReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path = self.path.display();
        let agent = self.agent;
        let headline = match (self.operation, self.changed(), self.dry_run) {
            (Operation::Install, false, _) => {
                format!("hooks already installed in {path}; nothing to do")
            }
            (Operation::Uninstall, false, _) => {
                format!("no {PROGRAM} hooks in {path}; nothing to do")
            }
            (Operation::Install, true, true) => {
                format!("would install hooks in {path} (dry run, nothing written)")
            }
            (Operation::Uninstall, true, true) => {
                format!("would remove hooks from {path} (dry run, nothing written)")
            }
            (Operation::Install, true, false) if self.created => {
                format!("installed hooks in {path} (new file)")
            }
            (Operation::Install, true, false) => format!("installed hooks in {path}"),
            (Operation::Uninstall, true, false) => format!("removed hooks from {path}"),
        };
        writeln!(f, "{agent}: {headline}")?;
        for change in &self.changes {
            let (verb, event, what) = match change {
                Change::Added { event, command } => ("added", event, command.clone()),
                Change::Replaced {
                    event,
                    old_command,
                    command,
                } if old_command == command => ("completed", event, command.clone()),
                Change::Replaced {
                    event,
                    old_command,
                    command,
                } => ("replaced", event, format!("{old_command} -> {command}")),
                Change::Removed { event, command } => ("removed", event, command.clone()),
                Change::Unchanged { event, command } => ("unchanged", event, command.clone()),
            };
            writeln!(f, "  {verb:<10} {event}: {what}")?;
        }
        if let Some(backup) = &self.backup {
            writeln!(f, "  backup: {}", backup.display())?;
        }
        for note in &self.notes {
            writeln!(f, "  note: {note}")?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Paths

fn config_dir_name(agent: Agent) -> &'static str {
    match agent {
        Agent::Claude => ".claude",
        Agent::Gemini => ".gemini",
        Agent::Qwen => ".qwen",
        Agent::Codex => ".codex",
    }
}

fn settings_file_name(agent: Agent) -> &'static str {
    match agent {
        Agent::Codex => "hooks.json",
        Agent::Claude | Agent::Gemini | Agent::Qwen => "settings.json",
    }
}

/// The settings file an agent reads for `scope`, from the home and current directories alone:
/// `~/.claude/settings.json`, `~/.gemini/settings.json`, `~/.qwen/settings.json`, `~/.codex/hooks.json`
/// (scope user) or the same under `cwd` (scope project).
#[must_use]
pub fn default_settings_path(agent: Agent, scope: Scope, home: &Path, cwd: &Path) -> PathBuf {
    let base = match scope {
        Scope::User => home,
        Scope::Project => cwd,
    };
    base.join(config_dir_name(agent))
        .join(settings_file_name(agent))
}

/// Like [`default_settings_path`], honouring the variables the agents themselves honour for the user
/// scope: `CLAUDE_CONFIG_DIR` (Claude Code's config dir), `GEMINI_CLI_HOME` (replaces the home
/// directory for Gemini CLI), `CODEX_HOME` (Codex's config dir), else `HOME`.
/// `env` looks a variable up (pass `&|name| std::env::var_os(name)`).
///
/// # Errors
/// [`BadInput`] when the user scope needs `HOME` and it is unset or empty.
pub fn resolve_settings_path(
    agent: Agent,
    scope: Scope,
    cwd: &Path,
    env: &dyn Fn(&str) -> Option<OsString>,
) -> anyhow::Result<PathBuf> {
    let nonempty = |name: &str| {
        env(name)
            .filter(|value| !value.is_empty())
            .map(PathBuf::from)
    };
    if scope == Scope::Project {
        return Ok(default_settings_path(agent, scope, Path::new(""), cwd));
    }
    match agent {
        Agent::Claude => {
            if let Some(dir) = nonempty("CLAUDE_CONFIG_DIR") {
                return Ok(dir.join(settings_file_name(agent)));
            }
        }
        Agent::Codex => {
            if let Some(dir) = nonempty("CODEX_HOME") {
                return Ok(dir.join(settings_file_name(agent)));
            }
        }
        Agent::Gemini => {
            if let Some(home) = nonempty("GEMINI_CLI_HOME") {
                return Ok(default_settings_path(agent, scope, &home, cwd));
            }
        }
        Agent::Qwen => {}
    }
    let home = nonempty("HOME").ok_or_else(|| {
        anyhow::Error::new(BadInput(
            "HOME is not set, so the user settings file is unknown; pass --settings FILE".into(),
        ))
    })?;
    Ok(default_settings_path(agent, scope, &home, cwd))
}

// ---------------------------------------------------------------------------------------------
// Hook commands

/// `s` quoted for a POSIX shell: unchanged when it holds only `[A-Za-z0-9/._+-]`, else in single quotes.
#[must_use]
pub fn shell_quote(s: &str) -> Cow<'_, str> {
    let plain = |c: char| c.is_ascii_alphanumeric() || matches!(c, '/' | '.' | '_' | '+' | '-');
    if !s.is_empty() && s.chars().all(plain) {
        Cow::Borrowed(s)
    } else {
        Cow::Owned(format!("'{}'", s.replace('\'', r"'\''")))
    }
}

/// The command line our hook runs: `BIN hook --agent AGENT`, with BIN quoted for the shell if needed.
#[must_use]
pub fn hook_command(agent: Agent, binary: &str) -> String {
    format!("{} hook --agent {}", shell_quote(binary), agent.as_str())
}

/// The hook events we install for `agent` (Codex: `SessionStart` only).
#[must_use]
pub fn events_for(agent: Agent) -> &'static [&'static str] {
    match agent {
        Agent::Codex => &["SessionStart"],
        Agent::Claude | Agent::Gemini | Agent::Qwen => &["SessionStart", "SessionEnd"],
    }
}

/// Our hook object for `agent`, running `command`.
#[must_use]
pub fn hook_entry(agent: Agent, command: &str) -> Value {
    match agent {
        Agent::Gemini => json!({
            "name": GEMINI_HOOK_NAME,
            "type": "command",
            "command": command,
            "timeout": GEMINI_TIMEOUT_MS,
        }),
        Agent::Qwen => json!({ "type": "command", "command": command, "timeout": QWEN_TIMEOUT }),
        Agent::Claude | Agent::Codex => {
            json!({ "type": "command", "command": command, "timeout": TIMEOUT_SECS })
        }
    }
}

/// The first `max` words of a shell command line, with quotes and backslashes resolved as `sh` would
/// (no expansion). An unterminated quote runs to the end of the line.
pub fn shell_words(line: &str, max: usize) -> Vec<String> {
    let mut words = Vec::new();
    let mut chars = line.chars().peekable();
    while words.len() < max {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            break;
        }
        let mut word = String::new();
        while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
            match c {
                '\'' => word.extend(chars.by_ref().take_while(|&c| c != '\'')),
                '"' => {
                    while let Some(c) = chars.next() {
                        match c {
                            '"' => break,
                            '\\' => match chars.next() {
                                Some(next @ ('"' | '\\' | '$' | '`')) => word.push(next),
                                Some('\n') => {}
                                Some(next) => {
                                    word.push('\\');
                                    word.push(next);
                                }
                                None => word.push('\\'),
                            },
                            other => word.push(other),
                        }
                    }
                }
                '\\' => match chars.next() {
                    Some('\n') | None => {}
                    Some(next) => word.push(next),
                },
                other => word.push(other),
            }
        }
        words.push(word);
    }
    words
}

/// True for a command line of ours: its first word (quotes removed) has basename `session-reaper` and
/// its second word is `hook`. Matches `/usr/bin/session-reaper hook --agent claude`,
/// `'/opt/my tools/session-reaper' hook` and `"${CLAUDE_PLUGIN_ROOT}/bin/session-reaper" hook ...`.
#[must_use]
pub fn is_our_command(command: &str) -> bool {
    let words = shell_words(command, 2);
    match words.as_slice() {
        [program, verb] => program.rsplit('/').next() == Some(PROGRAM) && verb == "hook",
        _ => false,
    }
}

fn is_our_hook(hook: &Value) -> bool {
    hook.get("command")
        .and_then(Value::as_str)
        .is_some_and(is_our_command)
}

fn command_of(hook: &Value) -> String {
    hook.get("command")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

/// Every hook `command` string in a settings (or Codex `hooks.json`, or Claude plugin `hooks.json`)
/// document, in file order.
#[must_use]
pub fn commands_in(value: &Value) -> Vec<String> {
    let Some(hooks) = value.get("hooks").and_then(Value::as_object) else {
        return Vec::new();
    };
    hooks
        .values()
        .filter_map(Value::as_array)
        .flatten()
        .filter_map(|group| group.get("hooks").and_then(Value::as_array))
        .flatten()
        .filter_map(|hook| hook.get("command").and_then(Value::as_str))
        .map(str::to_owned)
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Pure merge and removal

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn bad_shape(what: &str, expected: &str, found: &Value) -> anyhow::Error {
    anyhow::Error::new(BadInput(format!(
        "{what} must be {expected}, found {}",
        kind_of(found)
    )))
}

/// The top-level object and its `hooks` object (if any), or the user's-input error saying which is wrong.
fn hooks_shape(settings: &Value) -> anyhow::Result<Option<&Map<String, Value>>> {
    let root = settings
        .as_object()
        .ok_or_else(|| bad_shape("the top level", "a JSON object", settings))?;
    match root.get("hooks") {
        None => Ok(None),
        Some(Value::Object(hooks)) => Ok(Some(hooks)),
        Some(other) => Err(bad_shape("\"hooks\"", "an object", other)),
    }
}

/// Where an entry of ours sits: (matcher group index, hook index) within one event array.
fn our_positions(groups: &[Value]) -> Vec<(usize, usize)> {
    let mut found = Vec::new();
    for (g, group) in groups.iter().enumerate() {
        if let Some(hooks) = group.get("hooks").and_then(Value::as_array) {
            found.extend(
                hooks
                    .iter()
                    .enumerate()
                    .filter(|(_, hook)| is_our_hook(hook))
                    .map(|(h, _)| (g, h)),
            );
        }
    }
    found
}

/// Rewrites `hook` (an entry of ours) into `wanted`: the command and type are set, fields it lacks are
/// added, fields the user tuned (a longer timeout, a status message) are kept. Returns whether it changed.
fn conform(hook: &mut Value, wanted: &Value) -> bool {
    let (Some(hook), Some(wanted)) = (hook.as_object_mut(), wanted.as_object()) else {
        return false;
    };
    let mut changed = false;
    for (key, value) in wanted {
        let overwrite = matches!(key.as_str(), "command" | "type");
        match hook.get(key) {
            Some(current) if current == value || !overwrite => {}
            _ => {
                hook.insert(key.clone(), value.clone());
                changed = true;
            }
        }
    }
    changed
}

/// Removes the hooks at `positions` (all in one event array), then the matcher groups this emptied.
fn remove_positions(groups: &mut Vec<Value>, positions: &[(usize, usize)]) {
    let mut emptied = Vec::new();
    for &(g, h) in positions.iter().rev() {
        if let Some(hooks) = groups[g].get_mut("hooks").and_then(Value::as_array_mut) {
            hooks.remove(h);
            if hooks.is_empty() && emptied.last() != Some(&g) {
                emptied.push(g);
            }
        }
    }
    // `emptied` is in descending order, so removing front to back keeps the indices valid.
    for g in emptied {
        groups.remove(g);
    }
}

/// Adds our hook entry for `agent` (running `binary`, quoted here when needed) to each of the agent's
/// events. An entry of ours already there is rewritten in place (another binary path, missing fields)
/// and any further entries of ours in that event are dropped, so installing twice equals installing once.
/// Every other key, event and hook is left as it was.
///
/// # Errors
/// [`BadInput`] (and `settings` untouched) when the top level is not an object, `hooks` is not an
/// object, or one of the agent's event entries is not an array.
pub fn merge_entries(
    settings: &mut Value,
    agent: Agent,
    binary: &str,
) -> anyhow::Result<Vec<Change>> {
    let events = events_for(agent);
    if let Some(hooks) = hooks_shape(settings)? {
        for event in events {
            if let Some(value) = hooks.get(*event).filter(|value| !value.is_array()) {
                return Err(bad_shape(&format!("\"hooks.{event}\""), "an array", value));
            }
        }
    }
    let command = hook_command(agent, binary);
    let wanted = hook_entry(agent, &command);
    let Some(root) = settings.as_object_mut() else {
        unreachable!("checked by hooks_shape")
    };
    let Some(hooks) = root
        .entry("hooks")
        .or_insert_with(|| Value::Object(Map::new()))
        .as_object_mut()
    else {
        unreachable!("checked by hooks_shape")
    };
    let mut changes = Vec::new();
    for event in events {
        let Some(groups) = hooks
            .entry(*event)
            .or_insert_with(|| Value::Array(Vec::new()))
            .as_array_mut()
        else {
            unreachable!("checked above")
        };
        let positions = our_positions(groups);
        let Some((&(g, h), duplicates)) = positions.split_first() else {
            groups.push(json!({ "hooks": [wanted.clone()] }));
            changes.push(Change::Added {
                event: (*event).to_owned(),
                command: command.clone(),
            });
            continue;
        };
        let hook = &mut groups[g]["hooks"][h];
        let old_command = command_of(hook);
        if conform(hook, &wanted) {
            changes.push(Change::Replaced {
                event: (*event).to_owned(),
                old_command,
                command: command.clone(),
            });
        } else {
            changes.push(Change::Unchanged {
                event: (*event).to_owned(),
                command: command.clone(),
            });
        }
        for &(dg, dh) in duplicates {
            changes.push(Change::Removed {
                event: (*event).to_owned(),
                command: command_of(&groups[dg]["hooks"][dh]),
            });
        }
        remove_positions(groups, duplicates);
    }
    Ok(changes)
}

/// Removes exactly our hook entries, from every event. A matcher group, an event array or the `hooks`
/// object that this emptied is removed too; one that was already empty is kept. So install followed by
/// uninstall gives back the original document, except that an empty `hooks` object, or an empty array
/// under an event we install into, does not survive the round trip (the installed document cannot tell
/// it from an absent one).
///
/// # Errors
/// [`BadInput`] (and `settings` untouched) when the top level or `hooks` is not an object.
pub fn remove_entries(settings: &mut Value) -> anyhow::Result<Vec<Change>> {
    if hooks_shape(settings)?.is_none() {
        return Ok(Vec::new());
    }
    let Some(root) = settings.as_object_mut() else {
        unreachable!("checked by hooks_shape")
    };
    let Some(hooks) = root.get_mut("hooks").and_then(Value::as_object_mut) else {
        unreachable!("checked by hooks_shape")
    };
    let mut changes = Vec::new();
    let mut emptied_events = Vec::new();
    for (event, value) in hooks.iter_mut() {
        let Some(groups) = value.as_array_mut() else {
            continue;
        };
        let positions = our_positions(groups);
        if positions.is_empty() {
            continue;
        }
        for &(g, h) in &positions {
            changes.push(Change::Removed {
                event: event.clone(),
                command: command_of(&groups[g]["hooks"][h]),
            });
        }
        remove_positions(groups, &positions);
        if groups.is_empty() {
            emptied_events.push(event.clone());
        }
    }
    // `retain` keeps the order of the remaining keys (`remove` would swap under `preserve_order`).
    hooks.retain(|event, _| !emptied_events.contains(event));
    if !changes.is_empty() && hooks.is_empty() {
        root.retain(|key, _| key != "hooks");
    }
    Ok(changes)
}

/// Warnings about `settings` for `agent`: switches that keep our hooks from running, and a Codex
/// `hooks.json` that Codex itself would refuse.
#[must_use]
pub fn advisories(agent: Agent, settings: &Value) -> Vec<String> {
    let mut notes = Vec::new();
    let lists_us = |list: Option<&Value>| {
        list.and_then(Value::as_array)
            .is_some_and(|names| names.iter().any(|name| name == GEMINI_HOOK_NAME))
    };
    match agent {
        Agent::Claude | Agent::Qwen => {
            if settings.get("disableAllHooks") == Some(&Value::Bool(true)) {
                notes.push("\"disableAllHooks\" is true in this file: no hooks run until it is removed or set to false".into());
            }
        }
        Agent::Gemini => {
            if settings.pointer("/hooksConfig/enabled") == Some(&Value::Bool(false)) {
                notes.push("\"hooksConfig.enabled\" is false in this file: Gemini CLI runs no hooks until it is true".into());
            }
            if lists_us(settings.pointer("/hooksConfig/disabled"))
                || lists_us(settings.pointer("/hooks/disabled"))
            {
                notes.push(format!("this file lists \"{GEMINI_HOOK_NAME}\" among the disabled hooks: remove it there"));
            }
        }
        Agent::Codex => {
            if let Some(root) = settings.as_object() {
                let others: Vec<&str> = root
                    .keys()
                    .map(String::as_str)
                    .filter(|key| *key != "hooks")
                    .collect();
                if !others.is_empty() {
                    notes.push(format!(
                        "Codex accepts only \"hooks\" at the top of hooks.json and ignores this whole file while it also has: {}",
                        others.join(", ")
                    ));
                }
            }
        }
    }
    notes
}

// ---------------------------------------------------------------------------------------------
// Files

/// Adds our hook entries to `req.settings_path` (see [`merge_entries`]); creates the file and its
/// directories when missing. Writes only when something changes.
///
/// # Errors
/// [`BadInput`] (file untouched) when the file is not UTF-8 JSON of the expected shape, or the binary
/// path is not absolute UTF-8; an I/O error when it cannot be read, backed up or written.
pub fn install(req: &InstallRequest) -> anyhow::Result<InstallReport> {
    apply(req, Operation::Install)
}

/// Removes our hook entries from `req.settings_path` (see [`remove_entries`]). A missing file, or one
/// without entries of ours, is left alone (no write, no backup).
///
/// # Errors
/// As [`install`], except that the binary path is not looked at.
pub fn uninstall(req: &InstallRequest) -> anyhow::Result<InstallReport> {
    apply(req, Operation::Uninstall)
}

/// A settings file as read.
struct Loaded {
    text: String,
    value: Value,
    metadata: fs::Metadata,
}

fn apply(req: &InstallRequest, operation: Operation) -> anyhow::Result<InstallReport> {
    let path = &req.settings_path;
    let binary = match operation {
        Operation::Install => Some(binary_string(req.binary)?),
        Operation::Uninstall => None,
    };
    let target =
        write_target(path).with_context(|| format!("{}: cannot follow symlink", path.display()))?;
    let loaded = load(&target, path)?;
    let mut value = loaded
        .as_ref()
        .map_or_else(|| Value::Object(Map::new()), |loaded| loaded.value.clone());
    let changes = match &binary {
        Some(binary) => merge_entries(&mut value, req.agent, binary),
        None => remove_entries(&mut value),
    }
    .map_err(|err| with_path(err, path))?;
    let mut report = InstallReport {
        operation,
        agent: req.agent,
        path: path.clone(),
        changes,
        dry_run: req.dry_run,
        created: operation == Operation::Install && loaded.is_none(),
        written: false,
        backup: None,
        notes: match operation {
            Operation::Install => advisories(req.agent, &value),
            Operation::Uninstall => Vec::new(),
        },
    };
    if operation == Operation::Install && report.changed() {
        if req.agent == Agent::Codex {
            report.notes.push(
                "Codex runs a new or changed hook only once you trust it: start codex, open /hooks and trust the session-reaper hook"
                    .into(),
            );
        }
        if !binary
            .as_deref()
            .is_some_and(|binary| Path::new(binary).is_file())
        {
            report.notes.push(format!(
                "{} is not a file here; the hook will fail until it is",
                req.binary.display()
            ));
        }
    }
    if operation == Operation::Uninstall
        && report.changed()
        && req.agent == Agent::Codex
        && !commands_in(&value).is_empty()
    {
        report.notes.push(
            "Codex keys hook trust by position: a hook listed after the removed one may ask to be trusted again in /hooks".into(),
        );
    }
    if !report.changed() || req.dry_run {
        return Ok(report);
    }
    if let Some(loaded) = &loaded {
        ensure_unchanged(&target, &loaded.metadata)
            .with_context(|| format!("{}: left as it is", path.display()))?;
    }
    let text = render(&value, loaded.as_ref().map(|loaded| loaded.text.as_str()));
    match &loaded {
        Some(loaded) => {
            let backup = write_backup(&target, loaded)
                .with_context(|| format!("{}: cannot write a backup beside it", path.display()))?;
            report.backup = Some(backup);
        }
        None => {
            if let Some(parent) = target
                .parent()
                .filter(|parent| !parent.as_os_str().is_empty())
            {
                fs::create_dir_all(parent)
                    .with_context(|| format!("cannot create {}", parent.display()))?;
            }
        }
    }
    replace_atomically(
        &target,
        text.as_bytes(),
        loaded.as_ref().map(|loaded| &loaded.metadata),
    )
    .with_context(|| format!("{}: cannot write", path.display()))?;
    report.written = true;
    Ok(report)
}

fn binary_string(binary: &Path) -> anyhow::Result<String> {
    let Some(text) = binary.to_str() else {
        return Err(anyhow::Error::new(BadInput(format!(
            "{}: the binary path is not valid UTF-8, so it cannot go into a hook command",
            binary.display()
        ))));
    };
    if !binary.is_absolute() {
        return Err(anyhow::Error::new(BadInput(format!(
            "{text}: the hook command needs an absolute path to the binary"
        ))));
    }
    Ok(text.to_owned())
}

/// Fails when the file at `target` is no longer the one we read (another program rewrote it meanwhile),
/// so that we never overwrite a change we did not see.
fn ensure_unchanged(target: &Path, read: &fs::Metadata) -> anyhow::Result<()> {
    let now = fs::metadata(target)?;
    let same = now.ino() == read.ino()
        && now.dev() == read.dev()
        && now.len() == read.len()
        && now.mtime() == read.mtime()
        && now.mtime_nsec() == read.mtime_nsec();
    anyhow::ensure!(same, "it changed while being edited; run the command again");
    Ok(())
}

/// Prefixes a [`BadInput`] from the pure functions with the file it is about.
fn with_path(err: anyhow::Error, path: &Path) -> anyhow::Error {
    match err.downcast::<BadInput>() {
        Ok(BadInput(message)) => {
            anyhow::Error::new(BadInput(format!("{}: {message}", path.display())))
        }
        Err(err) => err.context(path.display().to_string()),
    }
}

/// The file to rewrite for `path`: `path` itself, or the file at the end of its symlink chain (so a
/// settings file symlinked from a dotfiles repository stays a symlink).
fn write_target(path: &Path) -> io::Result<PathBuf> {
    let mut current = path.to_path_buf();
    for _ in 0..40 {
        match fs::symlink_metadata(&current) {
            Ok(meta) if meta.file_type().is_symlink() => {
                let link = fs::read_link(&current)?;
                current = match current.parent() {
                    Some(parent) if link.is_relative() => parent.join(link),
                    _ => link,
                };
            }
            Ok(_) => return Ok(current),
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(current),
            Err(err) => return Err(err),
        }
    }
    Err(io::Error::other("too many levels of symbolic links"))
}

/// Reads and parses the settings file; `None` when it does not exist. `shown` is the path named in errors.
fn load(target: &Path, shown: &Path) -> anyhow::Result<Option<Loaded>> {
    let mut file = match File::open(target) {
        Ok(file) => file,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(err) => {
            return Err(anyhow::Error::new(err).context(format!("cannot read {}", shown.display())));
        }
    };
    let metadata = file
        .metadata()
        .with_context(|| format!("cannot read {}", shown.display()))?;
    if !metadata.is_file() {
        return Err(anyhow::Error::new(BadInput(format!(
            "{}: expected a settings file, found a directory or special file",
            shown.display()
        ))));
    }
    let mut bytes = Vec::new();
    io::Read::read_to_end(&mut file, &mut bytes)
        .with_context(|| format!("cannot read {}", shown.display()))?;
    let Ok(text) = String::from_utf8(bytes) else {
        return Err(anyhow::Error::new(BadInput(format!(
            "{}: expected JSON text, found bytes that are not UTF-8",
            shown.display()
        ))));
    };
    let body = text.strip_prefix('\u{feff}').unwrap_or(&text);
    let value = if body.trim().is_empty() {
        Value::Object(Map::new())
    } else {
        serde_json::from_str(body).map_err(|err| {
            anyhow::Error::new(BadInput(format!(
                "{}: expected a JSON object, but this is not valid JSON ({err}); comments and trailing commas are not supported",
                shown.display()
            )))
        })?
    };
    Ok(Some(Loaded {
        text,
        value,
        metadata,
    }))
}

/// The indentation unit of a pretty-printed JSON text: the leading whitespace of its first indented line.
fn detect_indent(text: &str) -> &str {
    text.lines()
        .skip(1)
        .filter(|line| !line.trim().is_empty())
        .map(|line| &line[..line.len() - line.trim_start_matches([' ', '\t']).len()])
        .find(|indent| !indent.is_empty())
        .unwrap_or("  ")
}

/// `value` pretty-printed with the original's indentation, and a final newline unless the original lacked one.
fn render(value: &Value, original: Option<&str>) -> String {
    let indent = original.map_or("  ", detect_indent);
    let mut out = Vec::new();
    let formatter = serde_json::ser::PrettyFormatter::with_indent(indent.as_bytes());
    let mut serializer = serde_json::Serializer::with_formatter(&mut out, formatter);
    value
        .serialize(&mut serializer)
        .expect("a serde_json::Value always serializes");
    let mut text = String::from_utf8(out).expect("serde_json writes UTF-8");
    if original.is_none_or(|original| original.ends_with('\n')) {
        text.push('\n');
    }
    text
}

/// Creates `dir/name` (or `dir/name-1`, `-2`, ... when taken) with `mode`, never overwriting.
fn create_unique(dir: &Path, name: &str, mode: u32) -> io::Result<(File, PathBuf)> {
    for attempt in 0..1000 {
        let candidate = if attempt == 0 {
            dir.join(name)
        } else {
            dir.join(format!("{name}-{attempt}"))
        };
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&candidate)
        {
            Ok(file) => return Ok((file, candidate)),
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {}
            Err(err) => return Err(err),
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AlreadyExists,
        format!("no free name like {name} in {}", dir.display()),
    ))
}

/// Gives `file` the permission bits (exactly, whatever the umask) and, where allowed, the owner of `like`.
fn copy_attributes(file: &File, like: &fs::Metadata) -> io::Result<()> {
    file.set_permissions(fs::Permissions::from_mode(like.mode() & 0o7777))?;
    if file.metadata()?.uid() != like.uid() || file.metadata()?.gid() != like.gid() {
        // Only root can give a file away; for anyone else the new file simply stays theirs.
        let _ = std::os::unix::fs::fchown(file, Some(like.uid()), Some(like.gid()));
    }
    Ok(())
}

fn parent_dir(path: &Path) -> &Path {
    path.parent()
        .filter(|parent| !parent.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

fn file_name_of(path: &Path) -> io::Result<String> {
    path.file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "the settings path has no file name",
            )
        })
}

/// Copies the file's current contents to `NAME.bak-<unix seconds>` beside it, with its permissions.
fn write_backup(target: &Path, loaded: &Loaded) -> io::Result<PathBuf> {
    let seconds = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs());
    let name = format!("{}.bak-{seconds}", file_name_of(target)?);
    let (mut file, backup) = create_unique(parent_dir(target), &name, 0o600)?;
    let written = copy_attributes(&file, &loaded.metadata)
        .and_then(|()| file.write_all(loaded.text.as_bytes()))
        .and_then(|()| file.sync_all());
    if let Err(err) = written {
        let _ = fs::remove_file(&backup);
        return Err(err);
    }
    Ok(backup)
}

/// Replaces `target` with `bytes`: a temporary file in the same directory, fsynced, renamed over it,
/// then the directory fsynced. The old file's permission bits (and owner, when we may) carry over.
fn replace_atomically(target: &Path, bytes: &[u8], old: Option<&fs::Metadata>) -> io::Result<()> {
    let dir = parent_dir(target);
    let name = format!(".{}.tmp-{}", file_name_of(target)?, std::process::id());
    let (mut file, temp) = create_unique(dir, &name, if old.is_some() { 0o600 } else { 0o666 })?;
    let written = old
        .map_or(Ok(()), |old| copy_attributes(&file, old))
        .and_then(|()| file.write_all(bytes))
        .and_then(|()| file.sync_all())
        .and_then(|()| fs::rename(&temp, target));
    if let Err(err) = written {
        let _ = fs::remove_file(&temp);
        return Err(err);
    }
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const BIN: &str = "/usr/local/bin/session-reaper";

    fn install_value(mut value: Value, agent: Agent) -> Value {
        merge_entries(&mut value, agent, BIN).expect("merge");
        value
    }

    fn is_bad_input(err: &anyhow::Error) -> bool {
        err.downcast_ref::<BadInput>().is_some()
    }

    /// A document with unrelated keys and other hooks, including other `SessionStart` hooks.
    fn busy_settings() -> Value {
        json!({
            "model": "opus",
            "env": { "FOO": "1" },
            "hooks": {
                "PreToolUse": [ { "matcher": "Bash", "hooks": [ { "type": "command", "command": "lint.sh" } ] } ],
                "SessionStart": [
                    { "matcher": "startup", "hooks": [ { "type": "command", "command": "mytool hook claude session-start", "timeout": 10 } ] }
                ],
                "Stop": []
            },
            "permissions": { "allow": ["Bash(ls)"] }
        })
    }

    #[test]
    fn shell_quote_leaves_plain_paths_and_quotes_the_rest() {
        assert_eq!(
            shell_quote("/usr/bin/session-reaper"),
            "/usr/bin/session-reaper"
        );
        assert_eq!(
            shell_quote("/home/a b/bin/session-reaper"),
            "'/home/a b/bin/session-reaper'"
        );
        assert_eq!(
            shell_quote("/o'neil/session-reaper"),
            r"'/o'\''neil/session-reaper'"
        );
        assert_eq!(shell_quote("/x/$HOME"), "'/x/$HOME'");
        assert_eq!(shell_quote(""), "''");
    }

    #[test]
    fn our_commands_are_recognised() {
        assert!(is_our_command(
            "/usr/bin/session-reaper hook --agent claude"
        ));
        assert!(is_our_command("session-reaper hook"));
        assert!(is_our_command("  session-reaper   hook  "));
        assert!(is_our_command(
            "'/home/a b/bin/session-reaper' hook --agent gemini"
        ));
        assert!(is_our_command(r"'/o'\''neil/session-reaper' hook"));
        assert!(is_our_command(
            "\"${CLAUDE_PLUGIN_ROOT}/bin/session-reaper\" hook --agent claude"
        ));
        assert!(is_our_command(
            "\"${CLAUDE_PLUGIN_ROOT}\"/bin/session-reaper hook"
        ));
        assert!(is_our_command(r"/opt/my\ tools/session-reaper hook"));
        assert!(is_our_command(&hook_command(
            Agent::Qwen,
            "/weird $dir/session-reaper"
        )));
        assert!(!is_our_command("session-reaper sweep"));
        assert!(!is_our_command("session-reaper"));
        assert!(!is_our_command("/usr/bin/session-reaper-old hook"));
        assert!(!is_our_command("mytool hook claude session-start"));
        assert!(!is_our_command("echo session-reaper hook"));
        assert!(!is_our_command("'session-reaper hook'"));
        assert!(!is_our_command(""));
    }

    #[test]
    fn shell_words_resolve_quotes() {
        assert_eq!(
            shell_words(r#"a "b c" 'd e' f\ g "h\"i""#, 10),
            ["a", "b c", "d e", "f g", "h\"i"]
        );
        assert_eq!(shell_words("x 'unterminated", 10), ["x", "unterminated"]);
        assert_eq!(shell_words("one two three", 2), ["one", "two"]);
    }

    #[test]
    fn entries_per_agent() {
        let claude = install_value(json!({}), Agent::Claude);
        assert_eq!(
            claude,
            json!({ "hooks": {
                "SessionStart": [ { "hooks": [ { "type": "command", "command": format!("{BIN} hook --agent claude"), "timeout": 5 } ] } ],
                "SessionEnd": [ { "hooks": [ { "type": "command", "command": format!("{BIN} hook --agent claude"), "timeout": 5 } ] } ]
            } })
        );
        let gemini = install_value(json!({}), Agent::Gemini);
        assert_eq!(
            gemini["hooks"]["SessionEnd"][0]["hooks"][0],
            json!({ "name": "session-reaper", "type": "command", "command": format!("{BIN} hook --agent gemini"), "timeout": 5000 })
        );
        let qwen = install_value(json!({}), Agent::Qwen);
        assert_eq!(
            qwen["hooks"]["SessionStart"][0]["hooks"][0]["timeout"],
            json!(5000)
        );
        assert_eq!(
            qwen["hooks"]["SessionStart"][0]["hooks"][0]["command"],
            json!(format!("{BIN} hook --agent qwen"))
        );
        let codex = install_value(json!({}), Agent::Codex);
        assert_eq!(
            codex,
            json!({ "hooks": { "SessionStart": [ { "hooks": [ { "type": "command", "command": format!("{BIN} hook --agent codex"), "timeout": 5 } ] } ] } })
        );
    }

    #[test]
    fn merge_keeps_other_keys_and_hooks() {
        let original = busy_settings();
        let merged = install_value(original.clone(), Agent::Claude);
        for key in ["model", "env", "permissions"] {
            assert_eq!(merged[key], original[key]);
        }
        assert_eq!(
            merged["hooks"]["PreToolUse"],
            original["hooks"]["PreToolUse"]
        );
        assert_eq!(merged["hooks"]["Stop"], json!([]));
        let start = merged["hooks"]["SessionStart"].as_array().unwrap();
        assert_eq!(start.len(), 2);
        assert_eq!(start[0], original["hooks"]["SessionStart"][0]);
        assert_eq!(
            start[1]["hooks"][0]["command"],
            json!(format!("{BIN} hook --agent claude"))
        );
        assert!(start[1].get("matcher").is_none());
        assert_eq!(commands_in(&merged).len(), 4);
    }

    #[test]
    fn merge_is_idempotent() {
        for agent in Agent::ALL {
            let once = install_value(busy_settings(), agent);
            let mut twice = once.clone();
            let changes = merge_entries(&mut twice, agent, BIN).unwrap();
            assert_eq!(twice, once, "{agent}");
            assert!(
                changes.iter().all(|change| !change.is_change()),
                "{agent}: {changes:?}"
            );
            assert_eq!(changes.len(), events_for(agent).len());
        }
    }

    #[test]
    fn old_binary_path_is_replaced_in_place() {
        let mut value = json!({ "hooks": { "SessionStart": [
            { "hooks": [ { "type": "command", "command": "other.sh" } ] },
            { "matcher": "startup", "hooks": [
                { "type": "command", "command": "/old/place/session-reaper hook --agent claude", "timeout": 30, "statusMessage": "reaping" }
            ] },
            { "hooks": [ { "type": "command", "command": "last.sh" } ] }
        ] } });
        let changes = merge_entries(&mut value, Agent::Claude, BIN).unwrap();
        let start = value["hooks"]["SessionStart"].as_array().unwrap();
        assert_eq!(start.len(), 3);
        assert_eq!(start[0]["hooks"][0]["command"], "other.sh");
        assert_eq!(start[2]["hooks"][0]["command"], "last.sh");
        assert_eq!(
            start[1],
            json!({ "matcher": "startup", "hooks": [
                { "type": "command", "command": format!("{BIN} hook --agent claude"), "timeout": 30, "statusMessage": "reaping" }
            ] })
        );
        assert_eq!(
            changes[0],
            Change::Replaced {
                event: "SessionStart".into(),
                old_command: "/old/place/session-reaper hook --agent claude".into(),
                command: format!("{BIN} hook --agent claude"),
            }
        );
        assert!(matches!(changes[1], Change::Added { ref event, .. } if event == "SessionEnd"));
    }

    #[test]
    fn duplicate_entries_of_ours_collapse_to_one() {
        let mut value = json!({ "hooks": { "SessionStart": [
            { "hooks": [ { "type": "command", "command": "/a/session-reaper hook --agent codex" }, { "type": "command", "command": "keep.sh" } ] },
            { "hooks": [ { "type": "command", "command": "/b/session-reaper hook --agent codex" } ] }
        ] } });
        let changes = merge_entries(&mut value, Agent::Codex, BIN).unwrap();
        assert_eq!(
            value,
            json!({ "hooks": { "SessionStart": [
                { "hooks": [ { "type": "command", "command": format!("{BIN} hook --agent codex"), "timeout": 5 }, { "type": "command", "command": "keep.sh" } ] }
            ] } })
        );
        assert_eq!(changes.len(), 2);
        assert!(
            matches!(&changes[1], Change::Removed { command, .. } if command == "/b/session-reaper hook --agent codex")
        );
    }

    #[test]
    fn round_trip_restores_the_original() {
        let documents = [
            json!({}),
            busy_settings(),
            json!({ "hooksConfig": { "enabled": true }, "hooks": { "disabled": ["x"], "SessionEnd": [ { "hooks": [ { "name": "n", "type": "command", "command": "a b", "timeout": 100 } ] } ] } }),
            json!({ "hooks": { "SessionStart": [ { "matcher": "", "hooks": [] } ] }, "z": null }),
        ];
        for agent in Agent::ALL {
            for original in &documents {
                let mut value = install_value(original.clone(), agent);
                let removed = remove_entries(&mut value).unwrap();
                assert_eq!(&value, original, "{agent}: {original}");
                assert_eq!(removed.len(), events_for(agent).len());
            }
        }
    }

    #[test]
    fn round_trip_keeps_key_order() {
        let text = r#"{"zeta":1,"hooks":{"Stop":[],"SessionStart":[{"hooks":[{"type":"command","command":"x"}]}],"Alpha":[]},"alpha":2}"#;
        let original: Value = serde_json::from_str(text).unwrap();
        let reparsed = original.to_string();
        if reparsed != text {
            return; // serde_json without `preserve_order`: maps are sorted, so order cannot be checked here.
        }
        for agent in Agent::ALL {
            let mut value = install_value(original.clone(), agent);
            remove_entries(&mut value).unwrap();
            assert_eq!(value.to_string(), text, "{agent}");
        }
    }

    #[test]
    fn uninstall_without_our_entries_changes_nothing() {
        let mut value = busy_settings();
        assert!(remove_entries(&mut value).unwrap().is_empty());
        assert_eq!(value, busy_settings());
        let mut empty_hooks = json!({ "hooks": {} });
        assert!(remove_entries(&mut empty_hooks).unwrap().is_empty());
        assert_eq!(empty_hooks, json!({ "hooks": {} }));
    }

    #[test]
    fn uninstall_removes_ours_from_any_event_and_keeps_neighbours() {
        let mut value = json!({ "hooks": {
            "Stop": [ { "hooks": [ { "type": "command", "command": "session-reaper hook --agent claude" }, { "type": "command", "command": "x" } ] } ],
            "SessionEnd": [ { "hooks": [ { "type": "command", "command": "\"${CLAUDE_PLUGIN_ROOT}/bin/session-reaper\" hook" } ] } ]
        } });
        let removed = remove_entries(&mut value).unwrap();
        assert_eq!(removed.len(), 2);
        assert_eq!(
            value,
            json!({ "hooks": { "Stop": [ { "hooks": [ { "type": "command", "command": "x" } ] } ] } })
        );
    }

    #[test]
    fn wrong_shapes_are_refused_untouched() {
        let cases = [
            json!([]),
            json!("text"),
            json!({ "hooks": [] }),
            json!({ "hooks": "none" }),
            json!({ "hooks": null }),
            json!({ "hooks": { "SessionStart": {} } }),
            json!({ "hooks": { "SessionEnd": "x" } }),
        ];
        for case in cases {
            let mut value = case.clone();
            let err = merge_entries(&mut value, Agent::Claude, BIN).expect_err("refused");
            assert!(is_bad_input(&err), "{case}: {err}");
            assert_eq!(value, case);
        }
        let mut value = json!({ "hooks": 3 });
        let err = remove_entries(&mut value).expect_err("refused");
        assert!(is_bad_input(&err));
        assert_eq!(
            err.to_string(),
            "\"hooks\" must be an object, found a number"
        );
        // Codex installs SessionStart only, so another event's shape is not its business.
        let mut codex = json!({ "hooks": { "SessionEnd": "x" } });
        assert!(merge_entries(&mut codex, Agent::Codex, BIN).is_ok());
    }

    #[test]
    fn odd_groups_are_left_alone() {
        let original = json!({ "hooks": { "SessionStart": [ 1, "x", { "matcher": "m" }, { "hooks": "no" }, { "hooks": [ null, 2 ] } ] } });
        let mut value = install_value(original.clone(), Agent::Gemini);
        assert_eq!(value["hooks"]["SessionStart"].as_array().unwrap().len(), 6);
        remove_entries(&mut value).unwrap();
        assert_eq!(value, original);
    }

    #[test]
    fn commands_in_lists_every_command() {
        let value = json!({ "description": "plugin", "hooks": {
            "SessionStart": [ { "hooks": [ { "command": "a" }, { "type": "command" } ] }, { "hooks": [ { "command": "b" } ] } ],
            "disabled": ["x"],
            "Stop": [ { "hooks": [ { "command": "c" } ] } ]
        } });
        assert_eq!(commands_in(&value), ["a", "b", "c"]);
        assert!(commands_in(&json!([])).is_empty());
    }

    #[test]
    fn ready_made_files_match_the_installer() {
        let files = [
            (
                Agent::Claude,
                include_str!("../hooks/claude-code/settings.json"),
            ),
            (
                Agent::Gemini,
                include_str!("../hooks/gemini-cli/settings.json"),
            ),
            (
                Agent::Qwen,
                include_str!("../hooks/qwen-code/settings.json"),
            ),
            (Agent::Codex, include_str!("../hooks/codex/hooks.json")),
        ];
        for (agent, text) in files {
            let file: Value = serde_json::from_str(text).unwrap();
            let mut expected = json!({});
            merge_entries(&mut expected, agent, PROGRAM).unwrap();
            assert_eq!(file, expected, "{agent}");
        }
        let plugin: Value =
            serde_json::from_str(include_str!("../hooks/claude-code/hooks.json")).unwrap();
        let commands = commands_in(&plugin);
        assert_eq!(commands.len(), 2);
        assert!(commands.iter().all(|command| is_our_command(command)));
        let mut as_settings = json!({ "hooks": plugin["hooks"].clone() });
        remove_entries(&mut as_settings).unwrap();
        assert_eq!(as_settings, json!({}));
    }

    #[test]
    fn advisories_flag_switches_that_silence_us() {
        assert_eq!(
            advisories(Agent::Claude, &json!({ "disableAllHooks": true })).len(),
            1
        );
        assert_eq!(
            advisories(Agent::Qwen, &json!({ "disableAllHooks": true })).len(),
            1
        );
        assert!(advisories(Agent::Claude, &json!({ "disableAllHooks": false })).is_empty());
        assert_eq!(
            advisories(
                Agent::Gemini,
                &json!({ "hooksConfig": { "enabled": false, "disabled": ["session-reaper"] } })
            )
            .len(),
            2
        );
        assert!(
            advisories(
                Agent::Gemini,
                &json!({ "hooksConfig": { "enabled": true } })
            )
            .is_empty()
        );
        assert_eq!(
            advisories(Agent::Codex, &json!({ "hooks": {}, "description": "x" })).len(),
            1
        );
        assert!(advisories(Agent::Codex, &json!({ "hooks": {} })).is_empty());
    }

    #[test]
    fn default_paths() {
        let home = Path::new("/home/u");
        let cwd = Path::new("/src/p");
        assert_eq!(
            default_settings_path(Agent::Claude, Scope::User, home, cwd),
            Path::new("/home/u/.claude/settings.json")
        );
        assert_eq!(
            default_settings_path(Agent::Gemini, Scope::Project, home, cwd),
            Path::new("/src/p/.gemini/settings.json")
        );
        assert_eq!(
            default_settings_path(Agent::Qwen, Scope::User, home, cwd),
            Path::new("/home/u/.qwen/settings.json")
        );
        assert_eq!(
            default_settings_path(Agent::Codex, Scope::User, home, cwd),
            Path::new("/home/u/.codex/hooks.json")
        );
        assert_eq!(
            default_settings_path(Agent::Codex, Scope::Project, home, cwd),
            Path::new("/src/p/.codex/hooks.json")
        );
    }

    #[test]
    fn resolved_paths_honour_the_agents_variables() {
        let env = |name: &str| match name {
            "HOME" => Some(OsString::from("/home/u")),
            "CLAUDE_CONFIG_DIR" => Some(OsString::from("/cfg/claude")),
            "CODEX_HOME" => Some(OsString::from("/cfg/codex")),
            "GEMINI_CLI_HOME" => Some(OsString::from("/alt")),
            _ => None,
        };
        let cwd = Path::new("/src/p");
        let user = |agent| resolve_settings_path(agent, Scope::User, cwd, &env).unwrap();
        assert_eq!(user(Agent::Claude), Path::new("/cfg/claude/settings.json"));
        assert_eq!(user(Agent::Codex), Path::new("/cfg/codex/hooks.json"));
        assert_eq!(user(Agent::Gemini), Path::new("/alt/.gemini/settings.json"));
        assert_eq!(user(Agent::Qwen), Path::new("/home/u/.qwen/settings.json"));
        assert_eq!(
            resolve_settings_path(Agent::Claude, Scope::Project, cwd, &env).unwrap(),
            Path::new("/src/p/.claude/settings.json")
        );
        let no_home = |_: &str| None;
        assert!(is_bad_input(
            &resolve_settings_path(Agent::Qwen, Scope::User, cwd, &no_home).unwrap_err()
        ));
    }

    #[test]
    fn indentation_is_kept() {
        assert_eq!(detect_indent("{\n    \"a\": 1\n}\n"), "    ");
        assert_eq!(detect_indent("{\n\t\"a\": {\n\t\t\"b\": 1\n\t}\n}"), "\t");
        assert_eq!(detect_indent("{\"a\":1}"), "  ");
        assert_eq!(
            render(&json!({ "a": [1] }), Some("{\n    \"x\": 1\n}")),
            "{\n    \"a\": [\n        1\n    ]\n}"
        );
        assert_eq!(render(&json!({}), None), "{}\n");
    }

    // --- files -----------------------------------------------------------------------------

    fn request(agent: Agent, path: &Path, dry_run: bool) -> InstallRequest<'static> {
        InstallRequest {
            agent,
            settings_path: path.to_path_buf(),
            binary: Path::new(BIN),
            dry_run,
        }
    }

    fn backups(dir: &Path) -> Vec<PathBuf> {
        let mut found: Vec<PathBuf> = fs::read_dir(dir)
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .filter(|path| path.to_string_lossy().contains(".bak-"))
            .collect();
        found.sort();
        found
    }

    #[test]
    fn install_creates_a_missing_file_and_its_directories() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("deep/.claude/settings.json");
        let report = install(&request(Agent::Claude, &path, false)).unwrap();
        assert!(report.written && report.created && report.backup.is_none());
        let value: Value = serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(value, install_value(json!({}), Agent::Claude));
        assert!(report.to_string().contains("installed hooks in"));
    }

    #[test]
    fn install_backs_up_keeps_mode_and_is_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("settings.json");
        let original = "{\n    \"model\": \"opus\",\n    \"hooks\": {}\n}\n";
        fs::write(&path, original).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();

        let report = install(&request(Agent::Gemini, &path, false)).unwrap();
        assert!(report.written && !report.created);
        let backup = report.backup.clone().expect("backup");
        assert_eq!(fs::read_to_string(&backup).unwrap(), original);
        assert_eq!(fs::metadata(&backup).unwrap().mode() & 0o777, 0o640);
        assert_eq!(fs::metadata(&path).unwrap().mode() & 0o777, 0o640);
        let text = fs::read_to_string(&path).unwrap();
        assert!(
            text.contains("\n    \"model\": \"opus\"")
                && text.contains("\n    \"hooks\": {\n        \"Session"),
            "{text}"
        );

        let again = install(&request(Agent::Gemini, &path, false)).unwrap();
        assert!(!again.written && !again.changed() && again.backup.is_none());
        assert_eq!(fs::read_to_string(&path).unwrap(), text);
        assert_eq!(backups(dir.path()).len(), 1);
        assert!(again.to_string().contains("already installed"));

        let removed = uninstall(&request(Agent::Gemini, &path, false)).unwrap();
        assert!(removed.written);
        assert_eq!(removed.changes.len(), 2);
        let value: Value = serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(value, json!({ "model": "opus" }));
    }

    #[test]
    fn dry_run_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hooks.json");
        let report = install(&request(Agent::Codex, &path, true)).unwrap();
        assert!(report.changed() && !report.written && report.dry_run);
        assert!(!path.exists());
        assert!(report.to_string().contains("dry run"));
        assert!(report.notes.iter().any(|note| note.contains("/hooks")));

        fs::write(&path, "{\"hooks\":{\"SessionStart\":[{\"hooks\":[{\"type\":\"command\",\"command\":\"session-reaper hook\"}]}]}}").unwrap();
        let before = fs::read_to_string(&path).unwrap();
        let report = uninstall(&request(Agent::Codex, &path, true)).unwrap();
        assert!(report.changed() && !report.written);
        assert_eq!(fs::read_to_string(&path).unwrap(), before);
        assert!(backups(dir.path()).is_empty());
    }

    #[test]
    fn uninstall_without_entries_neither_writes_nor_backs_up() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("settings.json");
        fs::write(&path, "{\"a\": 1}").unwrap();
        let report = uninstall(&request(Agent::Qwen, &path, false)).unwrap();
        assert!(!report.written && report.backup.is_none() && !report.changed());
        assert!(backups(dir.path()).is_empty());
        let missing = uninstall(&request(
            Agent::Qwen,
            &dir.path().join("absent.json"),
            false,
        ))
        .unwrap();
        assert!(!missing.written);
        assert!(!dir.path().join("absent.json").exists());
    }

    #[test]
    fn bad_files_are_refused_and_left_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let cases = [
            ("{ \"a\": 1, }", "not valid JSON"),
            ("// comment\n{}", "not valid JSON"),
            (
                "[1, 2]",
                "the top level must be a JSON object, found an array",
            ),
            (
                "{\"hooks\": []}",
                "\"hooks\" must be an object, found an array",
            ),
            (
                "{\"hooks\": {\"SessionEnd\": 1}}",
                "\"hooks.SessionEnd\" must be an array, found a number",
            ),
        ];
        for (text, expected) in cases {
            let path = dir.path().join("settings.json");
            fs::write(&path, text).unwrap();
            let err = install(&request(Agent::Claude, &path, false)).expect_err(text);
            assert!(is_bad_input(&err), "{text}: {err:#}");
            let message = err.to_string();
            assert!(
                message.starts_with(&path.display().to_string()),
                "{message}"
            );
            assert!(message.contains(expected), "{message}");
            assert!(!message.contains('\n'), "{message}");
            assert_eq!(fs::read_to_string(&path).unwrap(), text);
            assert!(backups(dir.path()).is_empty());
        }
        fs::write(dir.path().join("binary.json"), [0xff, 0xfe, 0x7b]).unwrap();
        let err = install(&request(
            Agent::Claude,
            &dir.path().join("binary.json"),
            false,
        ))
        .unwrap_err();
        assert!(is_bad_input(&err));
    }

    #[test]
    fn a_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let err = install(&request(Agent::Claude, dir.path(), false)).unwrap_err();
        assert!(is_bad_input(&err), "{err:#}");
    }

    #[test]
    fn a_file_changed_behind_our_back_is_not_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("settings.json");
        fs::write(&path, "{}").unwrap();
        let read = fs::metadata(&path).unwrap();
        assert!(ensure_unchanged(&path, &read).is_ok());
        fs::write(&path, "{\"model\": \"x\"}").unwrap();
        assert!(ensure_unchanged(&path, &read).is_err());
    }

    #[test]
    fn relative_binary_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("settings.json");
        let req = InstallRequest {
            agent: Agent::Claude,
            settings_path: path.clone(),
            binary: Path::new("session-reaper"),
            dry_run: false,
        };
        assert!(is_bad_input(&install(&req).unwrap_err()));
        assert!(!path.exists());
    }

    #[test]
    fn a_symlinked_settings_file_stays_a_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("dotfiles/settings.json");
        fs::create_dir_all(real.parent().unwrap()).unwrap();
        fs::write(&real, "{}\n").unwrap();
        let link = dir.path().join("settings.json");
        std::os::unix::fs::symlink("dotfiles/settings.json", &link).unwrap();
        let report = install(&request(Agent::Claude, &link, false)).unwrap();
        assert!(report.written);
        assert!(
            fs::symlink_metadata(&link)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        let value: Value = serde_json::from_str(&fs::read_to_string(&real).unwrap()).unwrap();
        assert_eq!(value, install_value(json!({}), Agent::Claude));
        assert!(
            report
                .backup
                .unwrap()
                .starts_with(dir.path().join("dotfiles"))
        );
    }

    #[test]
    fn report_serializes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("settings.json");
        let report = install(&request(Agent::Qwen, &path, true)).unwrap();
        let value = serde_json::to_value(&report).unwrap();
        assert_eq!(value["operation"], "install");
        assert_eq!(value["agent"], "qwen");
        assert_eq!(value["changes"][0]["change"], "added");
        assert_eq!(value["changes"][0]["event"], "SessionStart");
        assert_eq!(value["written"], false);
    }

    // --- property ----------------------------------------------------------------------------

    fn json_leaf() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            "[a-z ]{0,8}".prop_map(Value::from),
        ]
    }

    fn json_any() -> impl Strategy<Value = Value> {
        json_leaf().prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::vec(("[a-z]{1,6}", inner), 0..4)
                    .prop_map(|pairs| Value::Object(pairs.into_iter().collect())),
            ]
        })
    }

    /// A hook command that is not ours (ours would be replaced by install, by design).
    fn foreign_command() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-z/ .'\"-]{0,24}",
            Just("session-reaper sweep".to_owned()),
            Just("mytool hook".to_owned())
        ]
        .prop_filter("not ours", |command| !is_our_command(command))
    }

    fn hook_object() -> impl Strategy<Value = Value> {
        (
            foreign_command(),
            prop::option::of(0u64..100_000),
            prop::collection::vec(("[a-z]{1,5}", json_leaf()), 0..2),
        )
            .prop_map(|(command, timeout, extra)| {
                let mut hook: Map<String, Value> = extra.into_iter().collect();
                hook.insert("type".into(), json!("command"));
                hook.insert("command".into(), json!(command));
                if let Some(timeout) = timeout {
                    hook.insert("timeout".into(), json!(timeout));
                }
                Value::Object(hook)
            })
    }

    fn matcher_group() -> impl Strategy<Value = Value> {
        prop_oneof![
            4 => (prop::option::of("[a-z|*]{0,8}"), prop::collection::vec(hook_object(), 0..3)).prop_map(|(matcher, hooks)| {
                let mut group = Map::new();
                if let Some(matcher) = matcher {
                    group.insert("matcher".into(), json!(matcher));
                }
                group.insert("hooks".into(), Value::Array(hooks));
                Value::Object(group)
            }),
            1 => json_any(),
        ]
    }

    /// A `hooks` object: event arrays of (mostly well-formed) matcher groups, plus keys that are not
    /// event arrays at all (Gemini's legacy `hooks.enabled` / `hooks.disabled`, or junk), never under an
    /// event we install into (install refuses those, see `wrong_shapes_are_refused_untouched`).
    fn hooks_object() -> impl Strategy<Value = Value> {
        let event = prop_oneof![
            Just("SessionStart".to_owned()),
            Just("SessionEnd".to_owned()),
            Just("PreToolUse".to_owned()),
            Just("Stop".to_owned()),
            "[A-Z][a-z]{0,6}",
        ];
        let groups = prop::collection::vec(matcher_group(), 0..4).prop_map(Value::Array);
        let other_key = prop_oneof![
            Just("enabled".to_owned()),
            Just("disabled".to_owned()),
            "[a-z]{1,6}"
        ];
        let not_an_array =
            json_any().prop_map(|value| if value.is_array() { Value::Null } else { value });
        (
            prop::collection::vec((event, groups), 0..5),
            prop::collection::vec((other_key, not_an_array), 0..2),
        )
            .prop_map(|(events, others)| Value::Object(events.into_iter().chain(others).collect()))
    }

    fn settings_document() -> impl Strategy<Value = Value> {
        (
            prop::collection::vec(("[a-z]{1,8}", json_any()), 0..5),
            prop::option::of(hooks_object()),
            0usize..6,
        )
            .prop_map(|(pairs, hooks, position)| {
                let mut pairs: Vec<(String, Value)> = pairs
                    .into_iter()
                    .filter(|(key, _)| key != "hooks")
                    .collect();
                if let Some(hooks) = hooks {
                    pairs.insert(position.min(pairs.len()), ("hooks".to_owned(), hooks));
                }
                Value::Object(pairs.into_iter().collect())
            })
    }

    /// What a round trip gives back for `original`: the same, less an empty array under an event we
    /// install into and a `hooks` object left empty by that (see [`remove_entries`]).
    fn expected_after_round_trip(original: &Value, agent: Agent) -> Value {
        let mut expected = original.clone();
        if let Some(root) = expected.as_object_mut() {
            let mut emptied = false;
            if let Some(hooks) = root.get_mut("hooks").and_then(Value::as_object_mut) {
                hooks.retain(|event, value| {
                    !(events_for(agent).contains(&event.as_str())
                        && value.as_array().is_some_and(Vec::is_empty))
                });
                emptied = hooks.is_empty();
            }
            if emptied {
                root.retain(|key, _| key != "hooks");
            }
        }
        expected
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn install_then_uninstall_round_trips(original in settings_document(), agent in prop::sample::select(Agent::ALL.to_vec())) {
            let mut value = original.clone();
            let added = merge_entries(&mut value, agent, BIN).unwrap();
            let all_added = added.iter().all(|change| matches!(change, Change::Added { .. }));
            prop_assert!(all_added, "{:?}", added);
            let mut twice = value.clone();
            merge_entries(&mut twice, agent, "/elsewhere/session-reaper").unwrap();
            merge_entries(&mut twice, agent, BIN).unwrap();
            prop_assert_eq!(&twice, &value);
            let removed = remove_entries(&mut value).unwrap();
            prop_assert_eq!(removed.len(), events_for(agent).len());
            let expected = expected_after_round_trip(&original, agent);
            prop_assert_eq!(&value, &expected);
            // Key order survives too (meaningful when serde_json keeps insertion order).
            prop_assert_eq!(value.to_string(), expected.to_string());
        }
    }
}
