//! The pure half of the installer: our hook entries added to, or removed from, a settings document (a
//! `serde_json::Value`) in the shape its agent's table row names — Claude's matcher groups or Cursor's and
//! Copilot's flat entries, under a `hooks` object or (Factory Droid) at the top level. No files, no I/O; every other
//! key, event and hook is left as it was.

use serde::Serialize;
use serde_json::{Map, Value, json};

use crate::agents::{AgentSpec, EventsAt, Layout};
use crate::error::BadInput;
use crate::model::leftover::Policy;

/// The program name our hook commands start with (its basename is how we recognise our entries).
pub(crate) const PROGRAM: &str = "session-reaper";

/// What happened to one hook entry of ours.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "change", rename_all = "lowercase")]
pub(crate) enum Change {
    /// A new entry of ours was added to the event.
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
    /// True unless the entry was left as it was.
    pub(crate) fn is_change(&self) -> bool {
        !matches!(self, Change::Unchanged { .. })
    }
}

/// The hook flags `install` writes into the commands it installs; `None` writes nothing (the hook's default, or
/// its environment, decides).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct HookFlags {
    pub leftovers: Option<Policy>,
    pub sentinel: Option<bool>,
}

/// The command line our hook runs: `BIN hook --agent AGENT [--state-dir DIR] [--leftovers P] [--sentinel S]`, each
/// word quoted for the shell.
pub(crate) fn hook_command(
    spec: &AgentSpec,
    binary: &str,
    state_dir: Option<&str>,
    flags: HookFlags,
) -> String {
    let mut words = vec![binary, "hook", "--agent", spec.name];
    if let Some(dir) = state_dir {
        words.extend(["--state-dir", dir]);
    }
    if let Some(policy) = flags.leftovers {
        words.extend(["--leftovers", policy.as_str()]);
    }
    if let Some(on) = flags.sentinel {
        words.extend(["--sentinel", if on { "on" } else { "off" }]);
    }
    shlex::try_join(words.iter().copied()).unwrap_or_else(|_| words.join(" "))
}

/// The words of a shell command line as `sh` would split them (quotes resolved, nothing expanded); `None` for an
/// unterminated quote.
pub fn shell_words(line: &str) -> Option<Vec<String>> {
    shlex::split(line)
}

/// True for a command line of ours: its first word has basename `session-reaper` and its second is `hook`.
/// Matches `/usr/bin/session-reaper hook --agent claude`, `'/opt/my tools/session-reaper' hook` and
/// `"${CLAUDE_PLUGIN_ROOT}/bin/session-reaper" hook ...`.
pub fn is_our_command(command: &str) -> bool {
    let mut words = shlex::Shlex::new(command);
    match (words.next(), words.next()) {
        (Some(program), Some(verb)) => {
            program.rsplit('/').next() == Some(PROGRAM) && verb == "hook"
        }
        _ => false,
    }
}

fn command_of(spec: &AgentSpec, entry: &Value) -> Option<String> {
    entry
        .get(spec.command_key)
        .and_then(Value::as_str)
        .map(str::to_owned)
}

/// The object that holds `spec`'s events in `settings`: its `hooks` object, or the top level (Factory Droid).
pub fn events_of<'a>(spec: &AgentSpec, settings: &'a Value) -> Option<&'a Map<String, Value>> {
    match spec.events_at {
        EventsAt::HooksKey => settings.get("hooks")?.as_object(),
        EventsAt::TopLevel => settings.as_object(),
    }
}

/// Our hook commands in a `hooks` wrapper that an agent keyed by event at the top level ignores (Factory Droid):
/// an older install of ours wrote them there.
pub(crate) fn ours_in_ignored_wrapper(spec: &AgentSpec, settings: &Value) -> Vec<String> {
    if spec.events_at != EventsAt::TopLevel {
        return Vec::new();
    }
    let Some(wrapper) = settings.get("hooks").and_then(Value::as_object) else {
        return Vec::new();
    };
    wrapper
        .values()
        .filter_map(Value::as_array)
        .flat_map(|items| entries(spec, items))
        .filter_map(|entry| command_of(spec, entry))
        .filter(|command| is_our_command(command))
        .collect()
}

/// Every hook command in a document of `spec`'s shape, by event, in file order.
pub fn commands_in(spec: &AgentSpec, settings: &Value) -> Vec<(String, String)> {
    let Some(hooks) = events_of(spec, settings) else {
        return Vec::new();
    };
    hooks
        .iter()
        .filter_map(|(event, value)| Some((event, value.as_array()?)))
        .flat_map(|(event, items)| {
            entries(spec, items)
                .into_iter()
                .filter_map(move |entry| Some((event.clone(), command_of(spec, entry)?)))
        })
        .collect()
}

/// Every hook command in a hooks document of any agent's shape (matcher groups or flat entries, `command` or `bash`,
/// under `hooks` or at the top level), in file order: for files whose agent is not known (ready-made files, a
/// plugin's `hooks.json`).
pub fn all_commands(settings: &Value) -> Vec<String> {
    let Some(hooks) = settings
        .get("hooks")
        .and_then(Value::as_object)
        .or_else(|| settings.as_object())
    else {
        return Vec::new();
    };
    let command = |entry: &Value| {
        ["command", "bash"]
            .iter()
            .find_map(|key| entry.get(*key)?.as_str().map(str::to_owned))
    };
    hooks
        .values()
        .filter_map(Value::as_array)
        .flatten()
        .flat_map(|item| match item.get("hooks").and_then(Value::as_array) {
            Some(group) => group.iter().filter_map(command).collect::<Vec<_>>(),
            None => command(item).into_iter().collect(),
        })
        .collect()
}

/// The hook entries of one event array, whatever the layout.
fn entries<'a>(spec: &AgentSpec, items: &'a [Value]) -> Vec<&'a Value> {
    match spec.layout {
        Layout::Flat => items.iter().collect(),
        Layout::Grouped => items
            .iter()
            .filter_map(|group| group.get("hooks").and_then(Value::as_array))
            .flatten()
            .collect(),
    }
}

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

/// The object holding the events (if any), or the user's-input error saying what is wrong.
fn hooks_shape<'a>(
    spec: &AgentSpec,
    settings: &'a Value,
) -> anyhow::Result<Option<&'a Map<String, Value>>> {
    let root = settings
        .as_object()
        .ok_or_else(|| bad_shape("the top level", "a JSON object", settings))?;
    if spec.events_at == EventsAt::TopLevel {
        return Ok(Some(root));
    }
    match root.get("hooks") {
        None => Ok(None),
        Some(Value::Object(hooks)) => Ok(Some(hooks)),
        Some(other) => Err(bad_shape("\"hooks\"", "an object", other)),
    }
}

/// How an event is named in messages: `"hooks.SessionStart"`, or `"SessionStart"` at the top level.
fn event_label(spec: &AgentSpec, event: &str) -> String {
    match spec.events_at {
        EventsAt::HooksKey => format!("\"hooks.{event}\""),
        EventsAt::TopLevel => format!("\"{event}\""),
    }
}

/// Where an entry of ours sits in one event array: (item, hook within a group; 0 for flat entries).
fn our_positions(spec: &AgentSpec, items: &[Value]) -> Vec<(usize, usize)> {
    let ours =
        |entry: &Value| command_of(spec, entry).is_some_and(|command| is_our_command(&command));
    match spec.layout {
        Layout::Flat => items
            .iter()
            .enumerate()
            .filter(|(_, entry)| ours(entry))
            .map(|(i, _)| (i, 0))
            .collect(),
        Layout::Grouped => items
            .iter()
            .enumerate()
            .filter_map(|(g, group)| Some((g, group.get("hooks")?.as_array()?)))
            .flat_map(|(g, hooks)| {
                hooks
                    .iter()
                    .enumerate()
                    .filter(|(_, hook)| ours(hook))
                    .map(move |(h, _)| (g, h))
            })
            .collect(),
    }
}

fn entry_at<'a>(spec: &AgentSpec, items: &'a mut [Value], (i, h): (usize, usize)) -> &'a mut Value {
    match spec.layout {
        Layout::Flat => &mut items[i],
        Layout::Grouped => &mut items[i]["hooks"][h],
    }
}

/// Rewrites an entry of ours into `wanted`: command and type set, missing fields added, fields the user tuned (a
/// longer timeout, a status message) kept. Returns whether it changed.
fn conform(spec: &AgentSpec, entry: &mut Value, wanted: &Value) -> bool {
    let (Some(entry), Some(wanted)) = (entry.as_object_mut(), wanted.as_object()) else {
        return false;
    };
    let mut changed = false;
    for (key, value) in wanted {
        let overwrite = key == spec.command_key || key == "type";
        match entry.get(key) {
            Some(current) if current == value || !overwrite => {}
            _ => {
                entry.insert(key.clone(), value.clone());
                changed = true;
            }
        }
    }
    changed
}

/// Removes the entries at `positions` (all in one event array), then the matcher groups this emptied.
fn remove_positions(spec: &AgentSpec, items: &mut Vec<Value>, positions: &[(usize, usize)]) {
    if spec.layout == Layout::Flat {
        for &(i, _) in positions.iter().rev() {
            items.remove(i);
        }
        return;
    }
    let mut emptied = Vec::new();
    for &(g, h) in positions.iter().rev() {
        if let Some(hooks) = items[g].get_mut("hooks").and_then(Value::as_array_mut) {
            hooks.remove(h);
            if hooks.is_empty() && emptied.last() != Some(&g) {
                emptied.push(g);
            }
        }
    }
    // Descending order: removing front to back keeps the indices valid.
    for g in emptied {
        items.remove(g);
    }
}

/// Adds our entry running `command` to each of the agent's events. Ours goes first in the event (so that it runs
/// first within a shared budget), except where the agent keys hook trust by position (Codex): there it goes last,
/// so that no hook the user already trusted moves. An entry of ours already there is rewritten in place and further
/// ones are dropped, so installing twice equals installing once.
///
/// # Errors
/// [`BadInput`] (and `settings` untouched) when the top level is not an object, `hooks` is not an object, or one
/// of the agent's event entries is not an array.
pub(crate) fn merge_entries(
    settings: &mut Value,
    spec: &AgentSpec,
    command: &str,
) -> anyhow::Result<Vec<Change>> {
    if let Some(hooks) = hooks_shape(spec, settings)? {
        for event in spec.events() {
            if let Some(value) = hooks.get(event).filter(|value| !value.is_array()) {
                return Err(bad_shape(&event_label(spec, event), "an array", value));
            }
        }
    }
    let Some(root) = settings.as_object_mut() else {
        unreachable!("checked by hooks_shape")
    };
    let mut changes = Vec::new();
    let hooks = match spec.events_at {
        EventsAt::HooksKey => {
            if spec.layout == Layout::Flat
                && !root.contains_key("hooks")
                && !root.contains_key("version")
            {
                root.insert("version".into(), json!(1));
            }
            let Some(hooks) = root
                .entry("hooks")
                .or_insert_with(|| Value::Object(Map::new()))
                .as_object_mut()
            else {
                unreachable!("checked by hooks_shape")
            };
            hooks
        }
        EventsAt::TopLevel => {
            changes.extend(migrate_wrapper(spec, root));
            root
        }
    };
    for event in spec.events() {
        let wanted = spec.entry(event, command);
        let Some(items) = hooks
            .entry(event)
            .or_insert_with(|| Value::Array(Vec::new()))
            .as_array_mut()
        else {
            unreachable!("checked above")
        };
        let positions = our_positions(spec, items);
        let Some((&first, duplicates)) = positions.split_first() else {
            let item = match spec.layout {
                Layout::Flat => wanted.clone(),
                Layout::Grouped => json!({ "hooks": [wanted.clone()] }),
            };
            if spec.trust_by_position {
                items.push(item);
            } else {
                items.insert(0, item);
            }
            changes.push(Change::Added {
                event: event.to_owned(),
                command: command.to_owned(),
            });
            continue;
        };
        let entry = entry_at(spec, items, first);
        let old_command = command_of(spec, entry).unwrap_or_default();
        changes.push(if conform(spec, entry, &wanted) {
            Change::Replaced {
                event: event.to_owned(),
                old_command,
                command: command.to_owned(),
            }
        } else {
            Change::Unchanged {
                event: event.to_owned(),
                command: command.to_owned(),
            }
        });
        for &position in duplicates {
            changes.push(Change::Removed {
                event: event.to_owned(),
                command: command_of(spec, entry_at(spec, items, position)).unwrap_or_default(),
            });
        }
        remove_positions(spec, items, duplicates);
    }
    Ok(changes)
}

/// Removes exactly our entries, from every event. A matcher group, an event array or the `hooks` object that this
/// emptied is removed too (and, for a flat layout, the `"version": 1` that goes with `hooks`); one that was already
/// empty is kept. So install then uninstall gives back the original document, except that an empty `hooks` object,
/// or an empty array under one of our events, does not survive (the installed document cannot tell it from none).
/// Where the events are at the top level (Droid), entries of ours in an ignored `hooks` wrapper go as well.
///
/// # Errors
/// [`BadInput`] (and `settings` untouched) when the top level or `hooks` is not an object.
pub(crate) fn remove_entries(
    settings: &mut Value,
    spec: &AgentSpec,
) -> anyhow::Result<Vec<Change>> {
    if hooks_shape(spec, settings)?.is_none() {
        return Ok(Vec::new());
    }
    let Some(root) = settings.as_object_mut() else {
        unreachable!("checked by hooks_shape")
    };
    if spec.events_at == EventsAt::TopLevel {
        let mut changes = migrate_wrapper(spec, root);
        changes.extend(remove_ours(spec, root, ""));
        return Ok(changes);
    }
    let Some(hooks) = root.get_mut("hooks").and_then(Value::as_object_mut) else {
        unreachable!("checked by hooks_shape")
    };
    let changes = remove_ours(spec, hooks, "");
    if !changes.is_empty() && hooks.is_empty() {
        let flat = spec.layout == Layout::Flat;
        root.retain(|key, value| {
            key != "hooks" && !(flat && key == "version" && *value == json!(1))
        });
    }
    Ok(changes)
}

/// Removes our entries from every event array of `events` (naming each event with `prefix` in front), then the
/// event arrays this emptied.
fn remove_ours(spec: &AgentSpec, events: &mut Map<String, Value>, prefix: &str) -> Vec<Change> {
    let mut changes = Vec::new();
    let mut emptied_events = Vec::new();
    for (event, value) in events.iter_mut() {
        let Some(items) = value.as_array_mut() else {
            continue;
        };
        let positions = our_positions(spec, items);
        if positions.is_empty() {
            continue;
        }
        for &position in &positions {
            changes.push(Change::Removed {
                event: format!("{prefix}{event}"),
                command: command_of(spec, entry_at(spec, items, position)).unwrap_or_default(),
            });
        }
        remove_positions(spec, items, &positions);
        if items.is_empty() {
            emptied_events.push(event.clone());
        }
    }
    // `retain` keeps the order of the remaining keys (`remove` would swap under `preserve_order`).
    events.retain(|event, _| !emptied_events.contains(event));
    changes
}

/// Where the events are at the top level (Droid), takes our entries out of a `hooks` wrapper the agent ignores (an
/// older install of ours wrote them there), and the wrapper too when this emptied it.
fn migrate_wrapper(spec: &AgentSpec, root: &mut Map<String, Value>) -> Vec<Change> {
    let Some(wrapper) = root.get_mut("hooks").and_then(Value::as_object_mut) else {
        return Vec::new();
    };
    let changes = remove_ours(spec, wrapper, "hooks.");
    if !changes.is_empty() && wrapper.is_empty() {
        root.retain(|key, _| key != "hooks");
    }
    changes
}

/// Warnings about `settings` for `spec`: switches that keep our hooks from running, a Gemini hook list naming us,
/// and a Codex `hooks.json` that Codex itself would refuse.
pub(crate) fn advisories(spec: &AgentSpec, settings: &Value) -> Vec<String> {
    let mut notes = Vec::new();
    if let Some(switch) = spec.hooks_disabled_by(settings) {
        notes.push(format!(
            "{switch} in this file: {} runs no hooks until it is changed",
            spec.title
        ));
    }
    let lists_us = |pointer: &str| {
        settings
            .pointer(pointer)
            .and_then(Value::as_array)
            .is_some_and(|names| names.iter().any(|name| name == PROGRAM))
    };
    if spec.entry_extras.iter().any(|(key, _)| *key == "name")
        && (lists_us("/hooksConfig/disabled") || lists_us("/hooks/disabled"))
    {
        notes.push(format!(
            "this file lists \"{PROGRAM}\" among the disabled hooks: remove it there"
        ));
    }
    if spec.hooks_only_file
        && let Some(root) = settings.as_object()
    {
        let others: Vec<&str> = root
            .keys()
            .map(String::as_str)
            .filter(|key| *key != "hooks")
            .collect();
        if !others.is_empty() {
            notes.push(format!(
                "{} accepts only \"hooks\" at the top of this file and ignores all of it while it also has: {}",
                spec.title,
                others.join(", ")
            ));
        }
    }
    notes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agents::{AGENTS, Agent, EventsAt};
    use proptest::prelude::*;

    const BIN: &str = "/usr/local/bin/session-reaper";

    fn command(spec: &AgentSpec) -> String {
        hook_command(spec, BIN, None, HookFlags::default())
    }

    #[test]
    fn commands_are_quoted_and_recognised() {
        let claude = Agent::Claude.spec();
        assert_eq!(
            hook_command(
                claude,
                "/a b/session-reaper",
                Some("/s t"),
                HookFlags::default()
            ),
            "'/a b/session-reaper' hook --agent claude --state-dir '/s t'"
        );
        for line in [
            "/usr/bin/session-reaper hook --agent claude",
            "session-reaper hook",
            "'/home/a b/bin/session-reaper' hook --agent gemini",
            "\"${CLAUDE_PLUGIN_ROOT}/bin/session-reaper\" hook --agent claude",
            r"/opt/my\ tools/session-reaper hook",
            &hook_command(claude, "/o'neil/session-reaper", None, HookFlags::default()),
        ] {
            assert!(is_our_command(line), "{line}");
        }
        for line in [
            "session-reaper sweep",
            "session-reaper",
            "/usr/bin/session-reaper-old hook",
            "echo session-reaper hook",
            "'session-reaper hook'",
            "",
        ] {
            assert!(!is_our_command(line), "{line}");
        }
    }

    #[test]
    fn wrong_shapes_are_refused_untouched() {
        for case in [
            json!([]),
            json!({ "hooks": [] }),
            json!({ "hooks": null }),
            json!({ "hooks": { "SessionStart": {} } }),
        ] {
            let mut value = case.clone();
            let err = merge_entries(&mut value, Agent::Claude.spec(), BIN).expect_err("refused");
            assert!(err.downcast_ref::<BadInput>().is_some(), "{case}: {err}");
            assert_eq!(value, case);
        }
        let mut value = json!({ "hooks": 3 });
        assert_eq!(
            remove_entries(&mut value, Agent::Claude.spec())
                .unwrap_err()
                .to_string(),
            "\"hooks\" must be an object, found a number"
        );
    }

    #[test]
    fn an_old_binary_path_is_replaced_in_place_and_duplicates_collapse() {
        let spec = Agent::Claude.spec();
        let mut value = json!({ "hooks": { "SessionStart": [
            { "hooks": [ { "type": "command", "command": "other.sh" } ] },
            { "matcher": "startup", "hooks": [ { "type": "command", "command": "/old/session-reaper hook --agent claude", "timeout": 30 } ] },
            { "hooks": [ { "type": "command", "command": "/older/session-reaper hook --agent claude" } ] }
        ] } });
        let changes = merge_entries(&mut value, spec, &command(spec)).unwrap();
        let start = value["hooks"]["SessionStart"].as_array().unwrap();
        assert_eq!(start.len(), 2);
        assert_eq!(
            start[1]["hooks"][0],
            json!({ "type": "command", "command": command(spec), "timeout": 30 }),
            "a tuned timeout is kept"
        );
        assert!(
            matches!(&changes[0], Change::Replaced { old_command, .. } if old_command == "/old/session-reaper hook --agent claude")
        );
        assert!(matches!(&changes[1], Change::Removed { .. }));
    }

    #[test]
    fn droid_events_go_at_the_top_level_and_an_old_wrapped_install_is_migrated() {
        let spec = Agent::Droid.spec();
        let ours = command(spec);
        let mut value = json!({ "hooks": { "SessionStart": [
            { "hooks": [ { "type": "command", "command": "/old/session-reaper hook --agent droid" } ] }
        ], "PreToolUse": [ { "hooks": [ { "type": "command", "command": "lint.sh" } ] } ] } });
        let changes = merge_entries(&mut value, spec, &ours).unwrap();
        assert_eq!(
            value,
            json!({
                "hooks": { "PreToolUse": [ { "hooks": [ { "type": "command", "command": "lint.sh" } ] } ] },
                "SessionStart": [ { "hooks": [ spec.entry("SessionStart", &ours) ] } ],
                "SessionEnd": [ { "hooks": [ spec.entry("SessionEnd", &ours) ] } ]
            }),
            "only our entries move; the user's wrapped ones are theirs"
        );
        assert!(
            matches!(&changes[0], Change::Removed { event, .. } if event == "hooks.SessionStart")
        );
        assert_eq!(commands_in(spec, &value).len(), 2);
        let mut wrapped_only = json!({ "hooks": { "SessionEnd": [
            { "hooks": [ { "type": "command", "command": "session-reaper hook --agent droid" } ] }
        ] } });
        merge_entries(&mut wrapped_only, spec, &ours).unwrap();
        assert!(wrapped_only.get("hooks").is_none(), "{wrapped_only}");
        let mut both = value.clone();
        remove_entries(&mut both, spec).unwrap();
        assert_eq!(
            both,
            json!({ "hooks": { "PreToolUse": [ { "hooks": [ { "type": "command", "command": "lint.sh" } ] } ] } })
        );
        let mut old = json!({ "hooks": { "SessionEnd": [
            { "hooks": [ { "type": "command", "command": "session-reaper hook --agent droid" } ] }
        ] } });
        assert_eq!(remove_entries(&mut old, spec).unwrap().len(), 1);
        assert_eq!(old, json!({}));
    }

    #[test]
    fn ready_made_files_match_the_installer() {
        let files = [
            (
                Agent::Claude,
                include_str!("../../hooks/claude-code/settings.json"),
            ),
            (
                Agent::Gemini,
                include_str!("../../hooks/gemini-cli/settings.json"),
            ),
            (
                Agent::Qwen,
                include_str!("../../hooks/qwen-code/settings.json"),
            ),
            (Agent::Codex, include_str!("../../hooks/codex/hooks.json")),
            (Agent::Cursor, include_str!("../../hooks/cursor/hooks.json")),
            (
                Agent::Copilot,
                include_str!("../../hooks/copilot-cli/session-reaper.json"),
            ),
            (
                Agent::Droid,
                include_str!("../../hooks/factory-droid/hooks.json"),
            ),
            (
                Agent::Goose,
                include_str!("../../hooks/goose/session-reaper/hooks/hooks.json"),
            ),
        ];
        let plugins = AGENTS.iter().filter(|spec| spec.is_plugin()).count();
        assert_eq!(
            files.len() + plugins,
            AGENTS.len(),
            "a ready-made file per agent (a plugin agent's is its template, checked in `plugin`)"
        );
        for (agent, text) in files {
            let spec = agent.spec();
            let file: Value = serde_json::from_str(text).unwrap();
            let mut expected = json!({});
            merge_entries(
                &mut expected,
                spec,
                &hook_command(spec, PROGRAM, None, HookFlags::default()),
            )
            .unwrap();
            assert_eq!(file, expected, "{agent}");
        }
        assert_eq!(
            include_str!("../../hooks/goose/session-reaper/plugin.json"),
            Agent::Goose.spec().companion.unwrap().1
        );
        let plugin: Value =
            serde_json::from_str(include_str!("../../hooks/claude-code/hooks.json")).unwrap();
        assert!(
            all_commands(&plugin)
                .iter()
                .all(|command| is_our_command(command))
        );
    }

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

    /// An entry that is not ours, in `spec`'s shape.
    fn foreign(spec: &'static AgentSpec) -> impl Strategy<Value = Value> {
        ("[a-z/ .'\"-]{0,24}", prop::option::of(0u64..100_000)).prop_filter_map(
            "not ours",
            move |(command, timeout)| {
                (!is_our_command(&command)).then(|| {
                    let mut entry = Map::new();
                    entry.insert(spec.command_key.into(), json!(command));
                    if let Some(timeout) = timeout {
                        entry.insert(spec.timeout_field.into(), json!(timeout));
                    }
                    match spec.layout {
                        Layout::Flat => Value::Object(entry),
                        Layout::Grouped => json!({ "hooks": [Value::Object(entry)] }),
                    }
                })
            },
        )
    }

    fn document(spec: &'static AgentSpec) -> impl Strategy<Value = Value> {
        let event = prop_oneof![
            Just(spec.start_event.to_owned()),
            Just(spec.end_event.unwrap_or("x").to_owned()),
            "[A-Z][a-z]{0,6}"
        ];
        let hooks = prop::collection::vec(
            (
                event,
                prop::collection::vec(foreign(spec), 1..3).prop_map(Value::Array),
            ),
            0..4,
        )
        .prop_map(|events| Value::Object(events.into_iter().collect()));
        (
            prop::collection::vec(("[a-z]{1,8}", json_any()), 0..4),
            prop::option::of(hooks),
        )
            .prop_map(|(pairs, hooks)| {
                let mut root: Map<String, Value> = pairs
                    .into_iter()
                    .filter(|(key, _)| key != "hooks" && key != "version")
                    .collect();
                match (hooks, spec.events_at) {
                    (Some(Value::Object(events)), EventsAt::TopLevel) => root.extend(events),
                    (Some(hooks), _) => {
                        root.insert("hooks".into(), hooks);
                    }
                    (None, _) => {}
                }
                Value::Object(root)
            })
    }

    fn any_agent_document() -> impl Strategy<Value = (&'static AgentSpec, Value)> {
        let json_agents: Vec<&AgentSpec> = AGENTS.iter().filter(|spec| !spec.is_plugin()).collect();
        prop::sample::select(json_agents).prop_flat_map(|spec| (Just(spec), document(spec)))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Install then uninstall gives the original back (an empty `hooks` object aside, which cannot be told from
        /// none), twice equals once, and the syntax-tree edit writes text whose value is the merged one.
        #[test]
        fn install_then_uninstall_round_trips((spec, original) in any_agent_document()) {
            let mut value = original.clone();
            let added = merge_entries(&mut value, spec, &command(spec)).unwrap();
            prop_assert!(added.iter().all(|change| matches!(change, Change::Added { .. })), "{:?}", added);
            let mut twice = value.clone();
            merge_entries(&mut twice, spec, "/elsewhere/session-reaper hook --agent x").unwrap();
            merge_entries(&mut twice, spec, &command(spec)).unwrap();
            prop_assert_eq!(&twice, &value);

            let text = serde_json::to_string_pretty(&original).unwrap();
            let (parsed, _) = crate::settings::file::parse(spec, &text, std::path::Path::new("x")).unwrap();
            let loaded_text = crate::settings::file::edited_text(&loaded(spec, &text), &value);
            let (reparsed, _) = crate::settings::file::parse(spec, &loaded_text, std::path::Path::new("x")).unwrap();
            prop_assert_eq!(&parsed, &original);
            prop_assert_eq!(&reparsed, &value, "{}", loaded_text);

            remove_entries(&mut value, spec).unwrap();
            let mut expected = original.clone();
            if expected.get("hooks").is_some_and(|hooks| hooks.as_object().is_some_and(Map::is_empty)) {
                expected.as_object_mut().unwrap().remove("hooks");
            }
            prop_assert_eq!(value.to_string(), expected.to_string());
        }
    }

    fn loaded(spec: &AgentSpec, text: &str) -> crate::settings::file::Loaded {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.json");
        std::fs::write(&path, text).unwrap();
        crate::settings::file::load(spec, &path, &path)
            .unwrap()
            .unwrap()
    }
}
