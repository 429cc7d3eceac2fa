//! `demo`: the whole job on real processes, with nothing to set up, in a temporary state root. First the headline:
//! a fake Claude Code agent (a shell the demo starts, running our `SessionStart` hook) whose shell tool leaves a dev
//! server and a `nohup` job behind and which runs an MCP server; the agent is killed (SIGKILL), its sentinel stops all
//! three, and `log --freed` says what that gave back. Then the brokers: two sessions (the real Claude Code and
//! Gemini CLI payload shapes, with fresh random session ids, so the scan for `--resume` orphans can only match
//! what the demo itself planted), three brokers — one shared by both sessions, one that ignores SIGTERM.
//!
//! Everything the demo starts carries `SESSION_REAPER_DEMO=<its temp dir>` in its environment (inherited by what
//! that starts: hooks, sentinels, brokers). A guardian process (this binary, `demo --guard`, in a process group of
//! its own so that a terminal's Ctrl-C spares it) waits for the demo to close its stdin — at the end, or by dying
//! of SIGINT, SIGTERM or SIGPIPE (`demo | head -3`) — and then kills (SIGKILL) every process so marked (by
//! identity) and removes the temp dir. The demo signals only processes it started.

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

/// The variable that marks every process the demo started, directly or not: `SESSION_REAPER_DEMO=<temp dir>`.
const DEMO_MARKER: &str = "SESSION_REAPER_DEMO";

/// How long the demo waits for a stop it shows (a sentinel's, a finisher's) before saying it did not happen.
const SHOWN_STOP_WAIT: Duration = Duration::from_secs(15);

/// The fake agent: Claude Code as far as we can tell — it names its session to everything it starts
/// (`CLAUDE_CODE_SESSION_ID`, from the demo), gives its shell tool's commands `CLAUDE_PID`, runs our `SessionStart`
/// hook, and starts an MCP server itself on two pipes (its own stdin and stdout), without `CLAUDE_PID`. Its shell
/// tool runs each command in a shell that exits, leaving what it put in the background to init. It prints
/// the pids of what it left (`<dev server> <nohup job> <MCP server> <what the dev server is>`) and waits.
/// Arguments: our binary, the state root, the `SessionStart` payload file, the workspace.
const FAKE_AGENT: &str = r#"exe=$1 root=$2 payload=$3 app=$4
export CLAUDE_PID=$$
exec 3<&0 4>&1
"$exe" --state-dir "$root" hook --agent claude --owner-pid $$ <"$payload" >/dev/null 2>&1
cd "$app" || exit 1
if python=$(python3 -c 'import sys; print(sys.executable)' 2>/dev/null) && [ -n "$python" ]; then
    dev=$(sh -c '"$0" -m http.server 0 --bind 127.0.0.1 >/dev/null 2>&1 & echo $!' "$python")
    kind='python3 -m http.server'
else
    dev=$(sh -c 'sleep 600 >/dev/null 2>&1 & echo $!')
    kind='sleep 600, a stand-in: python3 was not found'
fi
job=$(sh -c 'nohup sleep 600 >/dev/null 2>&1 & echo $!')
env -u CLAUDE_PID sleep 600 <&3 >&4 3<&- 4>&- &
mcp=$!
echo "$dev $job $mcp $kind"
exec 3<&- 4>&-
wait
"#;

/// What the demo started, so that it can prove (and ensure) that all of it is gone.
struct Demo {
    exe: PathBuf,
    dir: PathBuf,
    root: PathBuf,
    agents: Vec<Child>,
    started: Vec<(String, Identity)>,
    step: usize,
    /// The guardian, whose stdin closes when the demo ends, however it ends.
    guardian: Option<Child>,
}

/// Plays the demo in `state_dir` (when `--state-dir` names one) or a temporary state root; `keep` keeps the demo's
/// directory (workspaces, state root, logs) and says where it is. Its processes are stopped either way.
pub(crate) fn run(keep: bool, state_dir: Option<&Path>) -> anyhow::Result<Outcome> {
    let mut demo = Demo::new(state_dir, keep)?;
    let result = demo.play();
    let leftovers = demo.clean_up();
    if keep {
        println!(
            "\nkept: {} (state root {})",
            demo.dir.display(),
            demo.root.display()
        );
    }
    demo.dismiss_guardian();
    let outcome = result?;
    anyhow::ensure!(
        leftovers.is_empty(),
        "still running after the demo: {}",
        leftovers.join(", ")
    );
    Ok(outcome)
}

/// `demo --guard DIR`: waits until the demo closes our stdin (it ended, or died), then kills (SIGKILL) every
/// process that carries the demo's mark, until none is left, and removes `dir` unless `keep`.
pub(crate) fn guard(dir: &Path, keep: bool) -> Outcome {
    let _ = std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink());
    let guard = Guard::new();
    for _ in 0..100 {
        let marked = marked_with(dir);
        if marked.is_empty() {
            break;
        }
        for identity in &marked {
            if let Target::Live(handle) = guard.target(identity) {
                let _ = handle.signal_group(Sig::Kill);
                let _ = handle.signal(Sig::Kill);
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    if !keep {
        let _ = std::fs::remove_dir_all(dir);
    }
    Outcome::Done
}

/// Live processes (other than this one) whose environment has `SESSION_REAPER_DEMO=<dir>`, read between two
/// identity reads.
fn marked_with(dir: &Path) -> Vec<Identity> {
    let wanted = dir.to_string_lossy();
    let me = i32::try_from(std::process::id()).unwrap_or_default();
    proc::pids()
        .unwrap_or_default()
        .into_iter()
        .filter(|pid| *pid != me)
        .filter_map(|pid| proc::pinned(pid, |pid| proc::environ_var(pid, DEMO_MARKER).ok()?))
        .filter(|(_, value)| *value == wanted)
        .map(|(identity, _)| identity)
        .collect()
}

impl Demo {
    fn new(state_dir: Option<&Path>, keep: bool) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("session-reaper-demo-{}", random_hex(8)));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let exe = std::env::current_exe()?;
        let mut demo = Demo {
            exe,
            root: state_dir.map_or_else(|| dir.join("state"), Path::to_path_buf),
            dir,
            agents: Vec::new(),
            started: Vec::new(),
            step: 0,
            guardian: None,
        };
        demo.guardian = Some(demo.start_guardian(keep)?);
        StateRoot::open(&demo.root)?;
        Ok(demo)
    }

    /// The guardian: our own binary, in a process group of its own, its stdin a pipe only we hold.
    fn start_guardian(&self, keep: bool) -> anyhow::Result<Child> {
        use std::os::unix::process::CommandExt;
        let mut command = Command::new(&self.exe);
        command.arg("demo").arg("--guard").arg(&self.dir);
        if keep {
            command.arg("--keep");
        }
        command
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0);
        command.spawn().context("starting the demo's guardian")
    }

    /// Closes the guardian's stdin and waits (bounded) for it to stop what is left and remove the temp dir.
    fn dismiss_guardian(&mut self) {
        if let Some(mut guardian) = self.guardian.take() {
            drop(guardian.stdin.take());
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if !matches!(guardian.try_wait(), Ok(None)) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }

    fn say(&mut self, text: &str) {
        self.step += 1;
        println!("\n{}. {text}", self.step);
    }

    /// Our own binary on the demo's state root, with no agent variables from the caller's environment.
    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(&self.exe);
        command.arg("--state-dir").arg(&self.root).args(args);
        self.mark(&mut command);
        command
    }

    /// The caller's environment less its agent variables, with the demo's mark.
    fn mark(&self, command: &mut Command) {
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
        command.env(DEMO_MARKER, &self.dir);
        // The demo's fake agents are moved into no cgroup: the demo touches nothing of the user's cgroup tree.
        command.env(crate::model::containment::SWITCH_VARIABLE, "off");
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
        let mut command = Command::new("sleep");
        self.mark(&mut command);
        let child = command
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
        self.headline(&app)?;
        self.brokers(&app, &docs)?;
        self.show_events()?;
        Ok(Outcome::Done)
    }

    /// The agent is killed; what its tools left behind is stopped by its sentinel.
    fn headline(&mut self, app: &Path) -> anyhow::Result<()> {
        use std::io::BufRead;
        let session = uuid_like();
        self.say(
            "An agent session starts: a fake Claude Code (a shell the demo starts) runs our SessionStart hook, which \
             starts a sentinel watching the agent process.",
        );
        let start = self.dir.join("agent-start.json");
        std::fs::write(&start, payload(CLAUDE_START, &session, app)?.to_string())?;
        let mut command = Command::new("sh");
        self.mark(&mut command);
        let mut agent = command
            .arg("-c")
            .arg(FAKE_AGENT)
            .arg("fake-claude")
            .arg(&self.exe)
            .arg(&self.root)
            .arg(&start)
            .arg(app)
            .env("CLAUDE_CODE_SESSION_ID", &session)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("starting the fake agent")?;
        let agent_pid = i32::try_from(agent.id())?;
        let agent_identity = proc::identity_of(agent_pid).context("the fake agent exited")?;
        self.started
            .push(("fake Claude Code".to_owned(), agent_identity.clone()));
        let mut report = String::new();
        if let Some(out) = agent.stdout.as_mut() {
            std::io::BufReader::new(out).read_line(&mut report)?;
        }
        self.agents.push(agent);
        let mut words = report.trim().splitn(4, ' ');
        let mut left = Vec::new();
        for label in ["dev server", "nohup job", "MCP server"] {
            let pid: i32 = words
                .next()
                .and_then(|word| word.parse().ok())
                .with_context(|| format!("the fake agent did not start its {label}"))?;
            let identity = proc::identity_of(pid)
                .with_context(|| format!("the fake agent's {label} exited"))?;
            self.started.push((label.to_owned(), identity.clone()));
            left.push((label, identity));
        }
        let kind = words.next().unwrap_or_default();
        // Shown once it serves: until its `sh -c` has exec'd the interpreter, it is a shell like any other.
        let serving = |pid: i32| {
            proc::cmdline(pid).is_ok_and(|argv| argv.iter().any(|arg| arg == "http.server"))
        };
        if kind.starts_with("python3") {
            let deadline = Instant::now() + SHOWN_STOP_WAIT;
            while !serving(left[0].1.pid) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        println!(
            "   session {} (agent pid {agent_pid}); its shell tool started a dev server ({kind}, pid {}) and \
             `nohup sleep 600 &` (pid {}); it runs an MCP server itself (pid {})",
            &session[..8],
            left[0].1.pid,
            left[1].1.pid,
            left[2].1.pid
        );
        self.show_status()?;

        self.say("The agent is killed (SIGKILL, as an OOM kill or a closed terminal would): no SessionEnd hook runs.");
        if let Target::Live(handle) = Guard::new().target(&agent_identity) {
            handle.signal(Sig::Kill)?;
        }
        let killed = Instant::now();
        for agent in &mut self.agents {
            let _ = agent.wait();
        }
        let mut stopped = Vec::new();
        for (label, identity) in &left {
            let gone = wait_gone(identity, SHOWN_STOP_WAIT);
            stopped.push(format!(
                "{label} (pid {}) {}",
                identity.pid,
                if gone { "stopped" } else { "STILL RUNNING" }
            ));
        }
        println!(
            "   within {} ms its sentinel saw the agent gone and stopped what its tools left: {}",
            killed.elapsed().as_millis(),
            stopped.join(", ")
        );
        let pids: Vec<i32> = left.iter().map(|(_, identity)| identity.pid).collect();
        self.wait_logged(&pids)?;
        self.say("What that gave back (`session-reaper log --freed`):");
        print!(
            "{}",
            indent(&compact(&self.output(&["log", "--freed"])?, &self.dir))
        );
        Ok(())
    }

    /// Waits (bounded) until the log has a `stop` line for each of `pids`: the sentinel writes it once it has seen
    /// the process exit, a moment after the demo has.
    fn wait_logged(&self, pids: &[i32]) -> anyhow::Result<()> {
        let log = EventLog::new(&StateRoot::open(&self.root)?);
        let deadline = Instant::now() + SHOWN_STOP_WAIT;
        let logged = |events: &[crate::store::events::Event]| {
            pids.iter().all(|pid| {
                events
                    .iter()
                    .any(|event| event.action == "stop" && event.pid == Some(*pid))
            })
        };
        while !logged(&log.read_all()) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }

    /// Brokers: shared by two sessions, stopped by the last owner's end; a stubborn one killed after its grace.
    fn brokers(&mut self, app: &Path, docs: &Path) -> anyhow::Result<()> {
        let (app, docs) = (app.to_path_buf(), docs.to_path_buf());
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
        Ok(())
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

/// Output shown inside the demo's own: indented, without the state root line and the legend.
fn indent(text: &str) -> String {
    text.lines()
        .take_while(|line| *line != "legend")
        .filter(|line| !line.starts_with("state:") && !line.starts_with("state root"))
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
    crate::model::workspace::hex(&digest[..bytes])
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
