//! Proof that the installed hooks run: `doctor` runs each hook command of ours exactly as its agent would (the
//! agent's shell form, the caller's environment plus the agent's markers) with a probe payload and
//! `SESSION_REAPER_PROBE=1`. In that mode the hook changes nothing — no state root is opened, nothing is logged —
//! and answers on stderr with what it would have done: its agent, event, session, state root and deadline. The
//! checks compare that answer with what the settings file and this `doctor` expect.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::agents::{Agent, AgentSpec, Casing, Layout, SessionEndReliability, timeout_millis};
use crate::model::hook_event::HookEvent;
use crate::settings::{NOWHERE_FIX, SweepState};

/// The variable that puts a hook into probe mode.
pub(crate) const PROBE_VAR: &str = "SESSION_REAPER_PROBE";
/// What the probe's stderr line starts with.
pub(crate) const ANSWER_PREFIX: &str = "session-reaper probe: ";
/// The session id of a probe payload.
pub const PROBE_SESSION: &str = "session-reaper-probe";

/// True when this hook run is a probe.
pub(crate) fn requested() -> bool {
    std::env::var_os(PROBE_VAR).is_some_and(|value| value == "1")
}

/// The hook's answer to a probe.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Answer {
    pub agent: Option<String>,
    pub event: Option<String>,
    pub session: Option<String>,
    pub state_dir: Option<PathBuf>,
    pub deadline_ms: Option<u64>,
    pub error: Option<String>,
}

/// Prints the probe answer as one stderr line.
pub(crate) fn say(answer: &Answer) {
    let line = serde_json::to_string(answer).unwrap_or_default();
    let _ = writeln!(std::io::stderr(), "{ANSWER_PREFIX}{line}");
}

/// A payload as `spec`'s agent would send it for `event` (one of its settings-file event names).
pub(crate) fn payload_for(spec: &AgentSpec, event: &str, cwd: &Path) -> Value {
    let mut payload = serde_json::Map::new();
    if spec.event_in_payload {
        payload.insert(spec.event_fields[0].into(), json!(canonical_event(event)));
    }
    payload.insert(spec.session_fields[0].into(), json!(PROBE_SESSION));
    payload.insert("cwd".into(), json!(cwd));
    if spec.casing == Casing::Camel {
        payload.insert("timestamp".into(), json!(0));
    }
    if HookEvent::parse(event) == HookEvent::SessionStart {
        payload.insert("source".into(), json!("startup"));
    } else {
        payload.insert("reason".into(), json!("other"));
    }
    Value::Object(payload)
}

/// `SessionStart` for `sessionStart`: the payload's spelling of an event.
fn canonical_event(event: &str) -> String {
    let mut chars = event.chars();
    chars
        .next()
        .map(|first| first.to_uppercase().chain(chars).collect())
        .unwrap_or_default()
}

/// What running one hook command gave.
#[derive(Clone, Debug)]
pub(crate) struct Run {
    pub status: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub answer: Option<Answer>,
}

/// Runs `command` as `spec`'s agent runs hooks (its shell, `-c`), with `payload` on stdin, bounded by `limit`.
pub(crate) fn run(
    spec: &AgentSpec,
    command: &str,
    payload: &Value,
    limit: Duration,
) -> std::io::Result<Run> {
    let shell = if Path::new(spec.shell.program).exists() {
        spec.shell.program
    } else {
        "sh"
    };
    let mut child = Command::new(shell)
        .args([spec.shell.flag, command])
        .env(PROBE_VAR, "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(payload.to_string().as_bytes());
    }
    let started = Instant::now();
    while child.try_wait()?.is_none() {
        if started.elapsed() > limit {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let output = child.wait_with_output()?;
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let answer = stderr
        .lines()
        .find_map(|line| line.strip_prefix(ANSWER_PREFIX))
        .and_then(|json| serde_json::from_str(json).ok());
    Ok(Run {
        status: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr,
        answer,
    })
}

/// One problem (or all clear) found about an agent's hooks: a failure or a warning, with its fix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Finding {
    pub failure: bool,
    pub detail: String,
    pub fix: String,
}

fn fail(detail: impl Into<String>, fix: impl Into<String>) -> Finding {
    Finding {
        failure: true,
        detail: detail.into(),
        fix: fix.into(),
    }
}

fn warn(detail: impl Into<String>, fix: impl Into<String>) -> Finding {
    Finding {
        failure: false,
        detail: detail.into(),
        fix: fix.into(),
    }
}

/// Judges one probe run of the hook installed for `event`: binary runs, arguments parse, exit 0, stdout empty, the
/// agent, event and state root it would use, and its deadline against the agent's timeout for it.
pub(crate) fn judge(
    spec: &AgentSpec,
    settings: &Value,
    event: &str,
    entry: &Value,
    run: &Run,
    state_dir: &Path,
) -> Vec<Finding> {
    let reinstall = format!("session-reaper install --agent {}", spec.name);
    let first_line = |text: &str| {
        text.lines()
            .find(|line| !line.trim().is_empty())
            .unwrap_or("")
            .trim()
            .to_owned()
    };
    let mut findings = Vec::new();
    if run.status == Some(127) || run.status == Some(126) {
        return vec![fail(
            format!(
                "{event}: the hook's program does not run: {}",
                first_line(&run.stderr)
            ),
            reinstall,
        )];
    }
    let Some(answer) = &run.answer else {
        return vec![fail(
            format!(
                "{event}: the command did not answer as session-reaper's hook (exit {}): {}",
                run.status
                    .map_or("by signal".into(), |code| code.to_string()),
                first_line(&run.stderr)
            ),
            reinstall,
        )];
    };
    if let Some(error) = &answer.error {
        return vec![fail(
            format!("{event}: the hook refuses its arguments or payload: {error}"),
            reinstall,
        )];
    }
    if run.status != Some(0) {
        findings.push(fail(
            format!("{event}: the hook exits {:?}, not 0", run.status),
            reinstall.clone(),
        ));
    }
    if !run.stdout.trim().is_empty() {
        findings.push(fail(
            format!(
                "{event}: the hook printed on stdout (it becomes model context): {}",
                first_line(&run.stdout)
            ),
            reinstall.clone(),
        ));
    }
    if answer.agent.as_deref() != Some(spec.name) {
        findings.push(fail(
            format!(
                "{event}: the hook runs as agent {} in {}'s settings",
                answer.agent.as_deref().unwrap_or("unknown"),
                spec.title
            ),
            reinstall.clone(),
        ));
    }
    let expected = HookEvent::parse(event);
    if answer.event.as_deref().map(HookEvent::parse) != Some(expected) {
        findings.push(fail(
            format!("{event}: the hook would handle it as {:?}", answer.event),
            reinstall.clone(),
        ));
    }
    let checked = std::path::absolute(state_dir).unwrap_or_else(|_| state_dir.to_path_buf());
    if answer.state_dir.as_deref() != Some(checked.as_path()) {
        findings.push(fail(
            format!(
                "{event}: the hook uses state root {}, not {} (the one checked here)",
                answer.state_dir.as_deref().map_or("?".into(), |dir| dir.display().to_string()),
                checked.display()
            ),
            format!("reinstall with the state root you use (session-reaper --state-dir DIR install --agent {}), or run doctor with --state-dir", spec.name),
        ));
    }
    if expected == HookEvent::SessionEnd {
        findings.extend(deadline_findings(spec, settings, event, entry, answer));
    }
    findings
}

/// Our `SessionEnd` hook's deadline against the time the agent gives it, and a timeout above the agent's cap.
fn deadline_findings(
    spec: &AgentSpec,
    settings: &Value,
    event: &str,
    entry: &Value,
    answer: &Answer,
) -> Vec<Finding> {
    let mut findings = Vec::new();
    let Some(deadline) = answer.deadline_ms else {
        return findings;
    };
    let timeout = entry.get(spec.timeout_field).and_then(Value::as_u64);
    if let (Some(timeout), Some(cap)) = (timeout, spec.end_timeout_cap)
        && timeout > cap
    {
        findings.push(warn(
            format!(
                "{event}: \"{}\": {timeout} is above {}'s limit of {cap}; it is clamped",
                spec.timeout_field, spec.title
            ),
            format!("set it to {cap}"),
        ));
    }
    let budget = session_end_budget(spec, settings, timeout);
    if deadline > budget {
        findings.push(warn(
                format!("{event}: the hook's --deadline {deadline}ms exceeds the {budget}ms {} gives SessionEnd hooks: it may be killed midway", spec.title),
                "lower --deadline, or raise the hook's timeout".to_owned(),
            ));
    }
    findings
}

/// How long the agent lets our `SessionEnd` hook run, in ms, given the whole settings document (Claude Code: 1.5 s
/// shared by all `SessionEnd` hooks, raised by the largest `timeout` among them up to 60 s, overridden by
/// `CLAUDE_CODE_SESSIONEND_HOOKS_TIMEOUT_MS`; others: our entry's own timeout, capped where the agent caps it).
pub(crate) fn session_end_budget(spec: &AgentSpec, settings: &Value, own: Option<u64>) -> u64 {
    let millis = |value: u64| {
        timeout_millis(
            value.min(spec.end_timeout_cap.unwrap_or(u64::MAX)),
            spec.timeout_unit,
        )
    };
    match spec.agent {
        Agent::Claude => {
            if let Some(ms) = std::env::var("CLAUDE_CODE_SESSIONEND_HOOKS_TIMEOUT_MS")
                .ok()
                .and_then(|v| v.parse().ok())
            {
                return ms;
            }
            let largest = settings
                .pointer(&format!("/hooks/{}", spec.end_event.unwrap_or_default()))
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|group| group.get("hooks").and_then(Value::as_array))
                .flatten()
                .filter_map(|hook| hook.get(spec.timeout_field).and_then(Value::as_u64))
                .max();
            largest.map_or(0, millis).max(1500)
        }
        Agent::Codex => own.map_or(1000, millis),
        _ => own.map_or(u64::MAX, millis),
    }
}

/// Every finding about an agent's hooks whose entries of ours are `ours`: a switch that turns hooks off, a missing
/// event, each hook run in probe mode and judged, Codex's trust, and the sweep where `SessionEnd` is unreliable.
pub(crate) fn findings(
    spec: &AgentSpec,
    path: &Path,
    value: &Value,
    ours: &[OurEntry],
    state_dir: &Path,
    sweep: SweepState,
) -> Vec<Finding> {
    let mut findings = Vec::new();
    if let Some(switch) = spec.hooks_disabled_by(value) {
        findings.push(fail(
            format!(
                "{switch} in {}: {} runs no hooks",
                path.display(),
                spec.title
            ),
            "remove it, or set it the other way",
        ));
    }
    for event in spec.events() {
        if !ours.iter().any(|(found, ..)| found == event) {
            findings.push(fail(
                format!("no {event} hook of ours in {}", path.display()),
                format!("session-reaper install --agent {}", spec.name),
            ));
        }
    }
    let cwd = crate::observe::workspace::current_dir().unwrap_or_default();
    for (event, _, _, entry) in ours {
        let command = entry
            .get(spec.command_key)
            .and_then(Value::as_str)
            .unwrap_or_default();
        let payload = payload_for(spec, event, &cwd);
        match run(spec, command, &payload, std::time::Duration::from_secs(10)) {
            Ok(run) => findings.extend(judge(spec, value, event, entry, &run, state_dir)),
            Err(err) => findings.push(fail(
                format!("{event}: cannot run {}: {err}", spec.shell.program),
                "install a POSIX shell",
            )),
        }
    }
    if spec.trust_by_position {
        let positions: Vec<(String, usize, usize)> = ours
            .iter()
            .map(|(event, group, index, _)| (event.clone(), *group, *index))
            .collect();
        for event in codex_untrusted(path, &positions) {
            findings.push(fail(
                format!(
                    "{event} hook not trusted: {} skips untrusted hooks without a word",
                    spec.title
                ),
                "start codex, open /hooks and trust the session-reaper hooks",
            ));
        }
    }
    if let SessionEndReliability::Partial(why) = spec.session_end {
        let fix = match sweep {
            SweepState::Installed => None,
            SweepState::Missing => Some(format!(
                "session-reaper install --agent {} --with-sweep",
                spec.name
            )),
            SweepState::Nowhere => Some(NOWHERE_FIX.to_owned()),
        };
        if let Some(fix) = fix {
            findings.push(warn(format!("no periodic sweep, and {why}"), fix));
        }
    }
    findings
}

/// An entry of ours: its event, matcher group and index within the group (0 in a flat layout), and the entry.
pub(crate) type OurEntry = (String, usize, usize, Value);

/// Our entries in a settings document: (event, group, index within the group, entry).
pub(crate) fn our_entries(spec: &AgentSpec, value: &Value) -> Vec<OurEntry> {
    let Some(hooks) = crate::settings::merge::events_of(spec, value) else {
        return Vec::new();
    };
    let ours = |entry: &Value| {
        entry
            .get(spec.command_key)
            .and_then(Value::as_str)
            .is_some_and(crate::settings::is_our_command)
    };
    let mut found = Vec::new();
    for (event, items) in hooks {
        for (g, item) in items.as_array().into_iter().flatten().enumerate() {
            match spec.layout {
                Layout::Flat if ours(item) => found.push((event.clone(), g, 0, item.clone())),
                Layout::Flat => {}
                Layout::Grouped => {
                    for (h, entry) in item
                        .get("hooks")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                        .enumerate()
                    {
                        if ours(entry) {
                            found.push((event.clone(), g, h, entry.clone()));
                        }
                    }
                }
            }
        }
    }
    found
}

/// Codex records trust in `$CODEX_HOME/config.toml` as `[hooks.state."<hooks.json>:<event>:<group>:<hook>"]` with a
/// `trusted_hash = "sha256:…"` of the hook as trusted (verified on 0.171.0 through its app-server's `hooks/list`).
/// The untrusted positions among `positions` (event as in the file, group, hook index).
pub(crate) fn codex_untrusted(
    hooks_file: &Path,
    positions: &[(String, usize, usize)],
) -> Vec<String> {
    let config = hooks_file.with_file_name("config.toml");
    let table: toml::Table = std::fs::read_to_string(&config)
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or_default();
    let state = table.get("hooks").and_then(|hooks| hooks.get("state"));
    let trusted = |key: &str| {
        state
            .and_then(|state| state.get(key))
            .and_then(|entry| entry.get("trusted_hash"))
            .is_some_and(|hash| hash.as_str().is_some_and(|hash| !hash.is_empty()))
    };
    let paths: Vec<PathBuf> = [
        Some(hooks_file.to_path_buf()),
        std::fs::canonicalize(hooks_file).ok(),
    ]
    .into_iter()
    .flatten()
    .collect();
    positions
        .iter()
        .map(|(event, group, index)| (event, format!("{}:{group}:{index}", snake_event(event))))
        .filter(|(_, suffix)| {
            !paths
                .iter()
                .any(|path| trusted(&format!("{}:{suffix}", path.display())))
        })
        .map(|(event, _)| event.clone())
        .collect()
}

/// `session_start` for `SessionStart`.
fn snake_event(event: &str) -> String {
    let mut out = String::new();
    for (i, c) in event.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_spellings() {
        assert_eq!(snake_event("SessionStart"), "session_start");
        assert_eq!(canonical_event("sessionEnd"), "SessionEnd");
    }

    #[test]
    fn session_end_budgets() {
        let claude = Agent::Claude.spec();
        let settings =
            json!({"hooks": {"SessionEnd": [{"hooks": [{"timeout": 5}, {"timeout": 30}]}]}});
        if std::env::var_os("CLAUDE_CODE_SESSIONEND_HOOKS_TIMEOUT_MS").is_none() {
            assert_eq!(
                session_end_budget(claude, &settings, Some(5)),
                30_000,
                "the largest settings timeout"
            );
            assert_eq!(session_end_budget(claude, &json!({}), None), 1500);
        }
        let codex = Agent::Codex.spec();
        assert_eq!(
            session_end_budget(codex, &json!({}), Some(10)),
            3000,
            "clamped to 3 s"
        );
        assert_eq!(session_end_budget(codex, &json!({}), None), 1000);
        assert_eq!(
            session_end_budget(Agent::Gemini.spec(), &json!({}), Some(5000)),
            5000
        );
    }

    #[test]
    fn probe_payloads_follow_the_table() {
        let copilot = payload_for(Agent::Copilot.spec(), "sessionStart", Path::new("/w"));
        assert_eq!(copilot["sessionId"], PROBE_SESSION);
        assert!(copilot.get("hook_event_name").is_none());
        let goose = payload_for(Agent::Goose.spec(), "SessionEnd", Path::new("/w"));
        assert_eq!(goose["event"], "SessionEnd");
    }
}
