//! An agent that takes our hook as a plugin file of ours (OpenCode's JavaScript plugin, `SettingsKind::Plugin`): the
//! file is its template with the hook command on its `const COMMAND = "…";` line, and it reads back as a settings
//! document of one flat entry per event, so that `doctor`, the sweep's bookkeeping and the reports treat it like
//! any other agent's settings.

use serde_json::{Value, json};

use crate::agents::{AgentSpec, SettingsKind};

/// The line that holds the hook command, up to the command's JSON string.
const COMMAND_LINE: &str = "const COMMAND = ";

/// The first line of every plugin file of ours.
const MARK: &str = "// session-reaper:";

/// The template of `spec`'s plugin, if it takes one.
pub(crate) fn template(spec: &AgentSpec) -> Option<&'static str> {
    match spec.kind {
        SettingsKind::Plugin(template) => Some(template),
        SettingsKind::Json => None,
    }
}

/// `template` with `command` on its command line.
pub(crate) fn render(template: &str, command: &str) -> String {
    let quoted = serde_json::to_string(command).expect("a string always serializes");
    template
        .lines()
        .map(|line| {
            if line.starts_with(COMMAND_LINE) {
                format!("{COMMAND_LINE}{quoted};")
            } else {
                line.to_owned()
            }
        })
        .fold(String::new(), |text, line| text + &line + "\n")
}

/// True for a plugin file we wrote.
pub(crate) fn is_ours(text: &str) -> bool {
    text.starts_with(MARK)
}

/// The hook command of a plugin file of ours.
pub fn command_in(text: &str) -> Option<String> {
    let quoted = text
        .lines()
        .find_map(|line| line.strip_prefix(COMMAND_LINE))?
        .trim_end()
        .strip_suffix(';')?;
    serde_json::from_str(quoted).ok()
}

/// The settings document a plugin file stands for: our entry under each of the agent's events when the file is
/// ours, else nothing.
pub(crate) fn view(spec: &AgentSpec, text: &str) -> Value {
    let Some(command) = command_in(text).filter(|_| is_ours(text)) else {
        return json!({});
    };
    let events: serde_json::Map<String, Value> = spec
        .events()
        .map(|event| (event.to_owned(), json!([{ spec.command_key: command }])))
        .collect();
    json!({ "hooks": events })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agents::Agent;
    use crate::settings::merge::{HookFlags, PROGRAM, commands_in, hook_command};

    #[test]
    fn the_ready_made_plugin_is_the_template_and_reads_back_as_our_hook() {
        let spec = Agent::Opencode.spec();
        let template = template(spec).unwrap();
        let ready_made = hook_command(spec, PROGRAM, None, HookFlags::default());
        assert_eq!(render(template, &ready_made), template);
        assert!(is_ours(template));
        let command = "'/opt/my tools/session-reaper' hook --agent opencode --state-dir \"/s\"";
        let rendered = render(template, command);
        assert_eq!(command_in(&rendered).as_deref(), Some(command));
        assert_eq!(
            commands_in(spec, &view(spec, &rendered)),
            [("SessionStart".to_owned(), command.to_owned())]
        );
        assert_eq!(
            view(spec, "export const Mine = async () => ({});\n"),
            json!({})
        );
    }
}
