//! `HookTest`: one hook invocation as a test declares it — the event, the session, the flags, the agent process, the
//! environment — and the hook contract (exit 0, nothing on stdout; a silent stderr and the events it must log where
//! the test says so), checked in one place (in the style of just's `Test::new()`).

use std::path::Path;
use std::process::{Command, Output};

use serde_json::{Map, Value, json};

use crate::harness::{Env, Proc, run_bounded, stderr, stdout};

/// What one hook run is and what it must do.
#[must_use]
pub(crate) struct HookTest {
    payload: Payload,
    flags: Vec<String>,
    env: Vec<(String, String)>,
    silent: bool,
    logs: Vec<(String, Option<String>)>,
}

/// The bytes on the hook's stdin: a payload built from its fields, or given whole (bad input, a client's capture).
enum Payload {
    Built(Map<String, Value>),
    Raw(Vec<u8>),
}

/// The payload every agent sends at least: the session, the event, the working directory.
pub(crate) fn payload(event: &str, session: &str, cwd: &Path) -> Value {
    json!({"session_id": session, "hook_event_name": event, "cwd": cwd})
}

impl HookTest {
    /// `hook --agent claude` for `event` of `session` in `cwd`.
    pub(crate) fn new(event: &str, session: &str, cwd: &Path) -> Self {
        let Value::Object(fields) = payload(event, session, cwd) else {
            unreachable!("a payload is an object")
        };
        HookTest {
            payload: Payload::Built(fields),
            flags: vec!["--agent".to_owned(), "claude".to_owned()],
            env: Vec::new(),
            silent: false,
            logs: Vec::new(),
        }
    }

    /// `hook` with exactly `stdin`, and no flag but those given: bad input, or a payload a client wrote.
    pub(crate) fn raw(stdin: &[u8]) -> Self {
        HookTest {
            payload: Payload::Raw(stdin.to_vec()),
            flags: Vec::new(),
            env: Vec::new(),
            silent: false,
            logs: Vec::new(),
        }
    }

    /// `--agent NAME` in place of `claude`.
    pub(crate) fn agent(mut self, name: &str) -> Self {
        match self.flags.iter().position(|flag| flag == "--agent") {
            Some(at) => name.clone_into(&mut self.flags[at + 1]),
            None => self.flags.extend(["--agent".to_owned(), name.to_owned()]),
        }
        self
    }

    /// `--owner-pid`: `agent` is the session's agent process.
    pub(crate) fn owner(self, agent: Proc) -> Self {
        self.args(&["--owner-pid", &agent.pid.to_string()])
    }

    /// `--sentinel off`: nothing watches the agent (the test drives the end itself).
    pub(crate) fn no_sentinel(self) -> Self {
        self.args(&["--sentinel", "off"])
    }

    /// More flags, after those already given.
    pub(crate) fn args(mut self, args: &[&str]) -> Self {
        self.flags.extend(args.iter().map(|arg| (*arg).to_owned()));
        self
    }

    /// `name=value` in the hook's environment.
    pub(crate) fn env(mut self, name: &str, value: &str) -> Self {
        self.env.push((name.to_owned(), value.to_owned()));
        self
    }

    /// The hook must say nothing on stderr either.
    pub(crate) fn silent(mut self) -> Self {
        self.silent = true;
        self
    }

    /// The hook must log an event `action` (with `result`, when given) in `events.jsonl`.
    pub(crate) fn logs(mut self, action: &str, result: Option<&str>) -> Self {
        self.logs
            .push((action.to_owned(), result.map(str::to_owned)));
        self
    }

    /// The command and its stdin, for a test that runs them its own way (timed, delayed stdin).
    pub(crate) fn command(&self, env: &Env) -> (Command, Vec<u8>) {
        let mut words = vec!["hook"];
        words.extend(self.flags.iter().map(String::as_str));
        let mut command = env.cmd(&words);
        command.envs(self.env.iter().map(|(name, value)| (name, value)));
        let stdin = match &self.payload {
            Payload::Built(fields) => serde_json::to_vec(fields).expect("a payload serialises"),
            Payload::Raw(bytes) => bytes.clone(),
        };
        (command, stdin)
    }

    /// Runs the hook (bounded) and checks the contract: exit 0, nothing on stdout, and what the test added.
    pub(crate) fn run(self, env: &Env) -> Output {
        let logged_before = env.events().len();
        let (command, stdin) = self.command(env);
        let out = run_bounded(command, Some(&stdin));
        self.check(env, &out, logged_before);
        out
    }

    /// The contract, for a run made by `command`: `logged_before` is how many events the log held before it.
    pub(crate) fn check(&self, env: &Env, out: &Output, logged_before: usize) {
        let what = self.describe();
        assert_hook_contract(out, &what);
        if self.silent {
            assert!(
                out.stderr.is_empty(),
                "{what}: said on stderr: {}",
                stderr(out)
            );
        }
        let events = env.events();
        let new = events.get(logged_before..).unwrap_or_default();
        for (action, result) in &self.logs {
            assert!(
                new.iter().any(|event| event["action"] == action.as_str()
                    && result
                        .as_ref()
                        .is_none_or(|result| event["result"] == result.as_str())),
                "{what}: no {action} {result:?} event among {new:?}"
            );
        }
    }

    fn describe(&self) -> String {
        let event = match &self.payload {
            Payload::Built(fields) => fields
                .get("hook_event_name")
                .and_then(Value::as_str)
                .unwrap_or("?")
                .to_owned(),
            Payload::Raw(bytes) => format!("{} bytes of stdin", bytes.len()),
        };
        format!("hook {event} {}", self.flags.join(" "))
    }
}

/// What every hook run must do, whatever happened: exit 0 and not one byte on stdout.
pub(crate) fn assert_hook_contract(out: &Output, what: &str) {
    assert_eq!(
        out.status.code(),
        Some(0),
        "{what}: a hook exits 0 whatever happens; stderr: {}",
        stderr(out)
    );
    assert!(
        out.stdout.is_empty(),
        "{what}: a hook writes nothing on stdout, it wrote {:?}",
        stdout(out)
    );
}

/// `payload` as the bytes a hook reads, with the fields Claude Code adds (`source`, `reason`).
pub(crate) fn hook_payload(session: &str, event: &str, cwd: &Path) -> Vec<u8> {
    let mut payload = payload(event, session, cwd);
    payload["source"] = json!("startup");
    payload["reason"] = json!("other");
    payload.to_string().into_bytes()
}
