//! `demo`: the whole job on real processes, with nothing to set up. A temporary state root, two fake agent
//! processes, the real Claude Code and Gemini CLI payload shapes (with fresh random session ids, so the scan for
//! `--resume` orphans can only match what the demo itself planted), three brokers — one shared by both sessions,
//! one that ignores SIGTERM — and at the end a check that every process the demo started is gone. It signals only
//! processes it started, by identity.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::act::signal::{Guard, Sig, Target};
use crate::error::Outcome;
use crate::model::record::Identity;
use crate::observe::proc;
use crate::store::events::EventLog;
use crate::store::root::StateRoot;

const CLAUDE_START: &str = include_str!("../../fixtures/payloads/claude-2.1.330/SessionStart.json");
const CLAUDE_END: &str = include_str!("../../fixtures/payloads/claude-2.1.330/SessionEnd.json");
const GEMINI_START: &str = include_str!("../../fixtures/payloads/gemini-0.61.0/SessionStart.json");
const GEMINI_END: &str = include_str!("../../fixtures/payloads/gemini-0.61.0/SessionEnd.json");

/// What the demo started, so that it can prove (and ensure) that all of it is gone.
struct Demo {
    exe: PathBuf,
    dir: PathBuf,
    root: PathBuf,
    agents: Vec<Child>,
    started: Vec<(String, Identity)>,
    step: usize,
}

/// Plays the demo in `state_dir` (when `--state-dir` names one) or a temporary state root; `keep` keeps the demo's
/// directory (workspaces, state root, logs) and says where it is. Its processes are stopped either way.
pub fn run(keep: bool, state_dir: Option<&Path>) -> anyhow::Result<Outcome> {
    let mut demo = Demo::new(state_dir)?;
    let result = demo.play();
    let leftovers = demo.clean_up();
    if keep {
        println!(
            "\nkept: {} (state root {})",
            demo.dir.display(),
            demo.root.display()
        );
    } else {
        let _ = std::fs::remove_dir_all(&demo.dir);
    }
    let outcome = result?;
    anyhow::ensure!(
        leftovers.is_empty(),
        "still running after the demo: {}",
        leftovers.join(", ")
    );
    Ok(outcome)
}

impl Demo {
    fn new(state_dir: Option<&Path>) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("session-reaper-demo-{}", random_hex(8)));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let root = state_dir.map_or_else(|| dir.join("state"), Path::to_path_buf);
        StateRoot::open(&root)?;
        Ok(Demo {
            exe: std::env::current_exe()?,
            dir,
            root,
            agents: Vec::new(),
            started: Vec::new(),
            step: 0,
        })
    }

    fn say(&mut self, text: &str) {
        self.step += 1;
        println!("\n{}. {text}", self.step);
    }

    /// Our own binary on the demo's state root, with no agent variables from the caller's environment.
    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(&self.exe);
        command.arg("--state-dir").arg(&self.root).args(args);
        for (name, _) in std::env::vars_os() {
            let name = name.to_string_lossy();
            if name.starts_with("SESSION_REAPER_")
                || name.starts_with("CLAUDE")
                || name.starts_with("GEMINI_")
                || name.starts_with("CODEX_")
            {
                command.env_remove(name.as_ref());
            }
        }
        // The demo's fake agents are moved into no cgroup: it shows brokers and sessions, and touches nothing else.
        command.env(crate::model::containment::SWITCH_VARIABLE, "off");
        command
    }

    fn output(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = self.command(args).stdin(Stdio::null()).output()?;
        anyhow::ensure!(
            out.status.code().is_some_and(|code| code <= 1),
            "`session-reaper {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn hook(
        &self,
        payload: &Value,
        agent: &str,
        owner_pid: Option<u32>,
    ) -> anyhow::Result<Duration> {
        let mut args = vec!["hook".to_owned(), "--agent".to_owned(), agent.to_owned()];
        if let Some(pid) = owner_pid {
            args.extend(["--owner-pid".to_owned(), pid.to_string()]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let started = Instant::now();
        let mut child = self
            .command(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        child
            .stdin
            .take()
            .context("hook stdin")?
            .write_all(payload.to_string().as_bytes())?;
        let out = child.wait_with_output()?;
        anyhow::ensure!(
            out.status.success() && out.stdout.is_empty(),
            "the hook broke its contract"
        );
        Ok(started.elapsed())
    }

    fn spawn_broker(
        &mut self,
        label: &str,
        workspace: &Path,
        session: &str,
        extra: &[&str],
        argv: &[&str],
    ) -> anyhow::Result<Value> {
        let mut words = vec![
            "broker",
            "spawn",
            "--json",
            "--cwd",
            workspace.to_str().context("workspace path")?,
            "--session",
            session,
        ];
        words.extend_from_slice(extra);
        words.push("--");
        words.extend_from_slice(argv);
        let record: Value =
            serde_json::from_str(&self.output(&words)?).context("spawn printed no record")?;
        let identity: Identity = serde_json::from_value(record["identity"].clone())?;
        if record["reused"] != Value::Bool(true) {
            self.started.push((label.to_owned(), identity));
        }
        Ok(record)
    }

    fn fake_agent(&mut self) -> anyhow::Result<u32> {
        let child = Command::new("sleep")
            .arg("600")
            .stdin(Stdio::null())
            .spawn()
            .context("starting a fake agent")?;
        let pid = child.id();
        if let Some(identity) = proc::identity_of(i32::try_from(pid)?) {
            self.started.push(("fake agent".to_owned(), identity));
        }
        self.agents.push(child);
        Ok(pid)
    }

    fn play(&mut self) -> anyhow::Result<Outcome> {
        println!(
            "session-reaper demo: real processes, state root {}",
            self.root.display()
        );
        let app = self.dir.join("app");
        std::fs::create_dir_all(app.join(".git"))?;
        let docs = self.dir.join("docs");
        std::fs::create_dir_all(docs.join(".git"))?;
        let (a, b) = (uuid_like(), uuid_like());

        self.say("Two agent sessions start: SessionStart payloads from Claude Code 2.1.330 (A) and Gemini CLI 0.61.0 (B).");
        let agent_a = self.fake_agent()?;
        let agent_b = self.fake_agent()?;
        let took = self.hook(&payload(CLAUDE_START, &a, &app)?, "claude", Some(agent_a))?;
        println!(
            "   A = {a} (agent pid {agent_a}); hook took {} ms, printed nothing",
            took.as_millis()
        );
        let took = self.hook(&payload(GEMINI_START, &b, &app)?, "gemini", Some(agent_b))?;
        println!(
            "   B = {b} (agent pid {agent_b}); hook took {} ms, printed nothing",
            took.as_millis()
        );

        self.say("A starts a broker for workspace app; B asks for the same one and is attached to it (no second process).");
        self.spawn_broker("shared broker (app)", &app, &a, &[], &["sleep", "600"])?;
        let second = self.spawn_broker("shared broker (app)", &app, &b, &[], &["sleep", "600"])?;
        println!(
            "   pid {} reused={} owners={}",
            second["identity"]["pid"],
            second["reused"],
            owners(&second)
        );

        self.say("A also starts a broker in workspace docs, and a stubborn one that ignores SIGTERM (grace 1s).");
        let docs_broker = self.spawn_broker("docs broker", &docs, &a, &[], &["sleep", "600"])?;
        let stubborn = self.spawn_broker(
            "stubborn broker",
            &app,
            &a,
            &["--name", "stubborn", "--grace", "1s"],
            &["sh", "-c", "trap '' TERM; sleep 600 & wait"],
        )?;
        println!(
            "   docs pid {}, stubborn pid {}",
            docs_broker["identity"]["pid"], stubborn["identity"]["pid"]
        );
        self.show_status()?;

        self.say("A ends (SessionEnd from Claude Code, run from a cwd in app): every workspace is scanned, not only A's.");
        let took = self.hook(&payload(CLAUDE_END, &a, &app)?, "claude", None)?;
        println!(
            "   hook returned in {} ms; waiting out the grace and the SIGKILL were handed to a detached finisher",
            took.as_millis()
        );
        let stubborn_id: Identity = serde_json::from_value(stubborn["identity"].clone())?;
        let gone = wait_gone(&stubborn_id, Duration::from_secs(15));
        println!(
            "   stubborn broker {}",
            if gone {
                "gone: SIGTERM ignored, SIGKILL after the 1s grace"
            } else {
                "STILL RUNNING"
            }
        );
        self.show_status()?;
        println!("   the shared broker survived: B still owns it");

        self.say("B ends (SessionEnd from Gemini CLI): it was the last owner, so the shared broker stops.");
        self.hook(&payload(GEMINI_END, &b, &app)?, "gemini", None)?;
        self.show_status()?;

        self.show_events()?;
        Ok(Outcome::Done)
    }

    fn show_status(&self) -> anyhow::Result<()> {
        print!(
            "{}",
            indent(&compact(&self.output(&["status"])?, &self.dir))
        );
        Ok(())
    }

    fn show_events(&mut self) -> anyhow::Result<()> {
        self.say("What happened, from events.jsonl (every action with its reason):");
        let log = EventLog::new(&StateRoot::open(&self.root)?);
        for event in log.read_all().iter().filter(|e| {
            matches!(
                e.action.as_str(),
                "stop" | "owner_remove" | "owner_add" | "spawn"
            )
        }) {
            println!(
                "   {:<12} {:<12} {:<8} pid {:<7} session {:<8}  {:<15} {}",
                event.action,
                event.reason.as_deref().unwrap_or("-"),
                event.result,
                event.pid.unwrap_or_default(),
                event
                    .session
                    .as_deref()
                    .map_or("-", |s| &s[..s.len().min(8)]),
                compact(&event.workspace.clone().unwrap_or_default(), &self.dir)
                    + event
                        .name
                        .as_deref()
                        .filter(|n| *n != "default")
                        .map(|n| format!(" [{n}]"))
                        .unwrap_or_default()
                        .as_str(),
                event.detail.as_deref().unwrap_or_default()
            );
        }
        Ok(())
    }

    /// Stops whatever the demo started that still runs (only those, by identity); returns what had to be stopped.
    fn clean_up(&mut self) -> Vec<String> {
        self.say("Checking that nothing the demo started is still running:");
        let guard = Guard::new();
        let mut leftovers = Vec::new();
        for child in &mut self.agents {
            let _ = child.kill();
            let _ = child.wait();
        }
        let mut pids = Vec::new();
        for (label, identity) in &self.started {
            pids.push(identity.pid.to_string());
            if label == "fake agent" || !proc::is_alive(identity) {
                continue;
            }
            leftovers.push(format!("{label} (pid {})", identity.pid));
            if let Target::Live(handle) = guard.target(identity) {
                let _ = handle.signal_group(Sig::Kill);
            }
        }
        let verdict = if leftovers.is_empty() {
            "all gone"
        } else {
            "some were left and have now been killed"
        };
        println!("   demo pids: {} ({verdict})", pids.join(" "));
        leftovers
    }
}

fn wait_gone(identity: &Identity, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while proc::is_alive(identity) {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

/// A fixture payload with a fresh session id and the demo's cwd.
fn payload(fixture: &str, session: &str, cwd: &Path) -> anyhow::Result<Value> {
    let mut value: Value = serde_json::from_str(fixture)?;
    value["session_id"] = Value::String(session.to_owned());
    value["cwd"] = Value::String(cwd.to_string_lossy().into_owned());
    Ok(value)
}

fn owners(record: &Value) -> String {
    let list: Vec<&str> = record["owners"]
        .as_array()
        .map(|owners| {
            owners
                .iter()
                .filter_map(|o| o["session"].as_str())
                .collect()
        })
        .unwrap_or_default();
    format!(
        "[{}]",
        list.iter()
            .map(|id| &id[..8])
            .collect::<Vec<_>>()
            .join(", ")
    )
}

fn indent(text: &str) -> String {
    text.lines()
        .filter(|line| !line.starts_with("state:"))
        .fold(String::new(), |mut out, line| {
            out.push_str("   | ");
            out.push_str(line);
            out.push('\n');
            out
        })
}

/// Paths inside the demo's temp dir, shown relative to it.
fn compact(text: &str, dir: &Path) -> String {
    text.replace(&format!("{}/", dir.display()), "")
}

fn random_hex(bytes: usize) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let digest = Sha256::digest(format!(
        "{nanos}-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    crate::observe::workspace::hex(&digest[..bytes])
}

/// A random id shaped like the agents' UUIDs.
fn uuid_like() -> String {
    let hex = random_hex(16);
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}
