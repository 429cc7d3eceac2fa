//! The reliability suite (README "Reliability", RELIABILITY.md): load, crashes, wrong targets, look-alikes, fuzzing
//! and hostile state, each against the real binary and real processes. The default run holds the small variants;
//! `SESSION_REAPER_HEAVY=1` runs the heavy ones (20 load rounds, 500 crashes, 1,000 look-alikes as processes, more
//! fuzz cases). Every test prints its figures (`-- --nocapture`): operations, faults injected, violations found.

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config as ProptestConfig, TestRunner};
use serde_json::{Value, json};

use crate::harness::owners;
use crate::harness::{
    Env, PATIENCE, Proc, StateRootProcesses, marked_with_state_root, run_bounded, sized, stderr,
    unparsable_files, wait_until,
};
use crate::hook_test::hook_payload;
use crate::sweep::unique_id;

/// True when this build has the `--leftovers` policy (leftover discovery): the load test then starts leftovers too.
fn has_leftovers() -> bool {
    let out = Command::new(crate::harness::BIN)
        .args(["hook", "--help"])
        .output()
        .expect("hook --help");
    String::from_utf8_lossy(&out.stdout).contains("--leftovers")
}

/// A number from `range`, drawn by a deterministic runner (seeded: a failing run is reproduced by the same seed).
fn pick(runner: &mut TestRunner, range: std::ops::Range<u64>) -> u64 {
    range.new_tree(runner).expect("a value").current()
}

/// The identity (`pid`, `start_ticks`) a `broker spawn`/`attach` printed.
fn printed_broker(out: &Output) -> Option<Proc> {
    let value: Value = serde_json::from_slice(&out.stdout).ok()?;
    Some(Proc {
        pid: i32::try_from(value.pointer("/identity/pid")?.as_i64()?).ok()?,
        ticks: value.pointer("/identity/start_ticks")?.as_u64()?,
    })
}

/// Every slot record: `(slot dir, record)`.
fn slot_records(env: &Env) -> Vec<(PathBuf, Value)> {
    let mut records = Vec::new();
    let Ok(keys) = std::fs::read_dir(env.state_dir().join("workspaces")) else {
        return records;
    };
    for key in keys.flatten() {
        let Ok(names) = std::fs::read_dir(key.path()) else {
            continue;
        };
        for name in names.flatten() {
            let path = name.path().join("broker.json");
            if let Some(value) = std::fs::read(&path)
                .ok()
                .and_then(|bytes| serde_json::from_slice::<Value>(&bytes).ok())
            {
                records.push((name.path(), value));
            }
        }
    }
    records
}

fn recorded_proc(record: &Value) -> Option<Proc> {
    Some(Proc {
        pid: i32::try_from(record.pointer("/identity/pid")?.as_i64()?).ok()?,
        ticks: record.pointer("/identity/start_ticks")?.as_u64()?,
    })
}

/// Live brokers of this state root that no slot record names: leaked.
fn unrecorded_brokers(env: &Env) -> Vec<Proc> {
    let recorded: Vec<Proc> = slot_records(env)
        .iter()
        .filter_map(|(_, record)| recorded_proc(record))
        .collect();
    marked_with_state_root(env.state_dir())
        .into_iter()
        .filter(|proc| !recorded.contains(proc) && proc.alive())
        .collect()
}

fn hook_command(env: &Env, agent: Proc) -> Command {
    let mut command = env.cmd(&["hook", "--agent", "claude", "--owner-pid"]);
    command.arg(agent.pid.to_string());
    command
}

/// Runs sweeps until the state is quiet: no ticket left and no broker of this root that no record names. True if it
/// got there within `PATIENCE`.
fn quiesce(env: &Env) -> bool {
    wait_until(PATIENCE, || {
        let _ = run_bounded(env.cmd(&["sweep"]), None);
        env.tickets().is_empty() && unrecorded_brokers(env).is_empty()
    })
}

/// `sleep 600` started through a shell that exits at once (so the sleep is reparented, as a tool's background job
/// is), with `CLAUDE_CODE_SESSION_ID=<session>`; its identity once it has exec'd.
fn detached_sleep(session: &str) -> Proc {
    let out = Command::new("sh")
        .args(["-c", "sleep 600 </dev/null >/dev/null 2>&1 & echo $!"])
        .env("CLAUDE_CODE_SESSION_ID", session)
        .stdin(Stdio::null())
        .output()
        .expect("start a leftover");
    let pid: i32 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("the leftover's pid");
    assert!(
        wait_until(PATIENCE, || std::fs::read(format!("/proc/{pid}/cmdline"))
            .is_ok_and(|argv| argv.starts_with(b"sleep\0"))),
        "the leftover never exec'd"
    );
    Proc::of(pid).expect("the leftover runs")
}

/// One session of the load test: its agent, and what it was given.
struct LoadSession {
    id: String,
    agent: Proc,
    stays: bool,
    attached: Vec<(String, Proc)>,
    leftover: Option<Proc>,
    failures: Vec<String>,
}

#[test]
#[allow(clippy::too_many_lines)] // one scenario, checked from every side
fn load_many_sessions_on_shared_slots_lose_no_owner_stop_no_owned_broker_and_leak_nothing() {
    const SESSIONS: usize = 50;
    const SLOTS: usize = 10;
    let rounds = sized(2, 20);
    let mut env = Env::new();
    let _cleanup = StateRootProcesses(env.state_dir().to_path_buf());
    let ws = env.workspace("shared");
    let leftovers = has_leftovers();
    let mut operations = 0usize;
    let mut violations: Vec<String> = Vec::new();
    for round in 0..rounds {
        let mut sessions: Vec<LoadSession> = (0..SESSIONS)
            .map(|index| LoadSession {
                id: unique_id(&format!("load{round}-{index}")),
                agent: env.sleeper(),
                stays: index % 10 == 0,
                attached: Vec::new(),
                leftover: None,
                failures: Vec::new(),
            })
            .collect();
        let stop = AtomicBool::new(false);
        let sweeps = Mutex::new(0usize);
        std::thread::scope(|scope| {
            scope.spawn(|| {
                while !stop.load(Ordering::SeqCst) {
                    let _ = run_bounded(env.cmd(&["sweep"]), None);
                    *sweeps.lock().unwrap() += 1;
                }
            });
            let handles: Vec<_> = sessions
                .iter_mut()
                .enumerate()
                .map(|(index, session)| {
                    let env = &env;
                    let ws = &ws;
                    scope.spawn(move || {
                        let hook = |event: &str| {
                            let out = run_bounded(
                                hook_command(env, session.agent),
                                Some(&hook_payload(&session.id, event, ws)),
                            );
                            (out.status.success() && out.stdout.is_empty())
                                .then_some(())
                                .ok_or_else(|| format!("{event} hook: {out:?}"))
                        };
                        if let Err(why) = hook("SessionStart") {
                            session.failures.push(why);
                        }
                        for slot in [index % SLOTS, (index * 3 + 1 + round) % SLOTS] {
                            let name = format!("n{slot}");
                            let out = run_bounded(
                                env.cmd(&[
                                    "broker",
                                    "spawn",
                                    "--json",
                                    "--cwd",
                                    ws.to_str().unwrap(),
                                    "--name",
                                    &name,
                                    "--session",
                                    &session.id,
                                    "--",
                                    "sleep",
                                    "600",
                                ]),
                                None,
                            );
                            match printed_broker(&out) {
                                Some(proc) if out.status.success() => {
                                    session.attached.push((name, proc));
                                }
                                _ => session
                                    .failures
                                    .push(format!("spawn {name}: {}", stderr(&out))),
                            }
                        }
                        if leftovers {
                            // A leftover as the tools leave them: carrying the session's variable, fallen out of
                            // every agent's hands (its shell exited, it was reparented).
                            session.leftover = Some(detached_sleep(&session.id));
                        }
                        if !session.stays {
                            if let Err(why) = hook("SessionEnd") {
                                session.failures.push(why);
                            }
                            session.agent.kill();
                        }
                    })
                })
                .collect();
            for handle in handles {
                handle.join().expect("a session thread");
            }
            stop.store(true, Ordering::SeqCst);
        });
        for leftover in sessions.iter().filter_map(|session| session.leftover) {
            env.track(leftover);
        }
        env.reap_children();
        operations += SESSIONS * 4 + *sweeps.lock().unwrap();
        let quiet = quiesce(&env);
        if !quiet {
            violations.push(format!(
                "round {round}: never quiet: tickets {:?}, unrecorded brokers {:?}",
                env.tickets(),
                unrecorded_brokers(&env)
            ));
        }
        let records = slot_records(&env);
        let by_name: HashMap<String, &Value> = records
            .iter()
            .map(|(dir, record)| {
                (
                    dir.file_name().unwrap().to_string_lossy().into_owned(),
                    record,
                )
            })
            .collect();
        for session in &sessions {
            violations.extend(
                session
                    .failures
                    .iter()
                    .map(|why| format!("round {round} {}: {why}", session.id)),
            );
            if session.stays {
                for (name, proc) in &session.attached {
                    match by_name.get(name) {
                        Some(record) if recorded_proc(record) == Some(*proc) => {
                            if !owners(record).contains(&session.id) {
                                violations.push(format!("lost owner {} of {name}", session.id));
                            }
                        }
                        _ => violations.push(format!(
                            "broker {name} {proc:?} of live owner {} replaced or gone",
                            session.id
                        )),
                    }
                    if !proc.alive() {
                        violations.push(format!(
                            "broker {name} stopped while {} owns it",
                            session.id
                        ));
                    }
                }
            } else {
                for (name, record) in &by_name {
                    if owners(record).contains(&session.id) {
                        violations.push(format!("ended session {} still owns {name}", session.id));
                    }
                }
                if let Some(leftover) = session.leftover
                    && !wait_until(PATIENCE, || !leftover.alive())
                {
                    let record = std::fs::read_to_string(
                        env.state_dir()
                            .join("sessions")
                            .join(format!("{}.json", session.id)),
                    )
                    .unwrap_or_default();
                    let events: Vec<String> =
                        std::fs::read_to_string(env.state_dir().join("events.jsonl"))
                            .unwrap_or_default()
                            .lines()
                            .filter(|line| {
                                line.contains(&session.id)
                                    || line.contains(&format!("\"pid\":{}", leftover.pid))
                                    || line.contains(&format!("\"pid\":{}", session.agent.pid))
                            })
                            .map(str::to_owned)
                            .collect();
                    violations.push(format!(
                        "leftover {leftover:?} of ended {} still runs; record {record}; events {events:#?}",
                        session.id
                    ));
                }
            }
        }
        violations.extend(unparsable_files(env.state_dir()));
        // The stayers end too, so that each round starts from slots that are all owned by live sessions or empty.
        for session in sessions.iter().filter(|session| session.stays) {
            let _ = run_bounded(
                hook_command(&env, session.agent),
                Some(&hook_payload(&session.id, "SessionEnd", &ws)),
            );
            session.agent.kill();
        }
        env.reap_children();
        if !quiesce(&env) {
            violations.push(format!(
                "round {round}: never quiet after the stayers ended"
            ));
        }
    }
    let live: Vec<Proc> = marked_with_state_root(env.state_dir())
        .into_iter()
        .filter(|proc| {
            slot_records(&env)
                .iter()
                .all(|(_, r)| recorded_proc(r) != Some(*proc))
        })
        .collect();
    if !live.is_empty() {
        violations.push(format!("brokers left without a record: {live:?}"));
    }
    println!(
        "reliability load: {rounds} rounds x {SESSIONS} sessions on {SLOTS} slots (leftovers: {leftovers}), {operations} operations, {} violations",
        violations.len()
    );
    assert!(violations.is_empty(), "violations: {violations:#?}");
}

/// A process as a report shows it: pid, argv and the session-reaper variables of its environment.
fn describe(proc: Proc) -> String {
    let words = |file: &str| -> Vec<String> {
        std::fs::read(format!("/proc/{}/{file}", proc.pid))
            .unwrap_or_default()
            .split(|b| *b == 0)
            .map(|word| String::from_utf8_lossy(word).into_owned())
            .collect()
    };
    let marks: Vec<String> = words("environ")
        .into_iter()
        .filter(|entry| entry.starts_with("SESSION_REAPER_"))
        .collect();
    format!("pid {} {:?} {marks:?}", proc.pid, words("cmdline"))
}

/// One operation of the crash test, as a command and its stdin.
fn crash_operation(
    env: &Env,
    runner: &mut TestRunner,
    sessions: &[(String, Proc)],
    ws: &Path,
) -> (&'static str, Command, Option<Vec<u8>>) {
    let (session, agent) =
        &sessions[usize::try_from(pick(runner, 0..sessions.len() as u64)).unwrap()];
    let name = format!("n{}", pick(runner, 0..3));
    let cwd = ws.to_str().unwrap();
    let broker = |verb: &str| {
        let mut words = vec![
            "broker",
            verb,
            "--cwd",
            cwd,
            "--name",
            &name,
            "--session",
            session,
        ];
        if verb == "spawn" {
            words.extend(["--", "sleep", "600"]);
        }
        env.cmd(&words)
    };
    match pick(runner, 0..8) {
        0 => (
            "hook SessionStart",
            hook_command(env, *agent),
            Some(hook_payload(session, "SessionStart", ws)),
        ),
        1 => (
            "hook SessionEnd",
            hook_command(env, *agent),
            Some(hook_payload(session, "SessionEnd", ws)),
        ),
        2 | 3 => ("broker spawn", broker("spawn"), None),
        4 => ("broker attach", broker("attach"), None),
        5 => ("broker detach", broker("detach"), None),
        6 => ("sweep", env.cmd(&["sweep"]), None),
        _ => ("finisher", env.cmd(&["finish"]), None),
    }
}

#[test]
fn sigkill_at_random_moments_leaves_parsable_files_completed_tickets_and_nothing_unowned() {
    let operations = sized(50, 500);
    let mut env = Env::new();
    let _cleanup = StateRootProcesses(env.state_dir().to_path_buf());
    let ws = env.workspace("crashes");
    let mut runner = TestRunner::deterministic();
    let sessions: Vec<(String, Proc)> = (0..6)
        .map(|index| (unique_id(&format!("crash{index}")), env.sleeper()))
        .collect();
    let mut killed = 0usize;
    let mut by_kind: HashMap<&str, usize> = HashMap::new();
    for _ in 0..operations {
        let (kind, mut command, stdin) = crash_operation(&env, &mut runner, &sessions, &ws);
        *by_kind.entry(kind).or_default() += 1;
        command
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut child = command.spawn().expect("start an operation");
        if let Some(bytes) = stdin {
            use std::io::Write;
            let _ = child.stdin.take().unwrap().write_all(&bytes);
        }
        // The fault: SIGKILL after a random 0–60 ms, wherever the operation is by then.
        std::thread::sleep(Duration::from_micros(pick(&mut runner, 0..60_000)));
        if child.try_wait().ok().flatten().is_none() {
            let _ = child.kill();
            killed += 1;
        }
        let _ = child.wait();
    }
    let mut violations = unparsable_files(env.state_dir());
    // Every ticket is completed by the next sweep (itself, or the finisher it hands the rest to).
    let pending = env.tickets();
    let _ = env.run(&["sweep"]);
    if !wait_until(PATIENCE, || pending.iter().all(|ticket| !ticket.exists())) {
        violations.push(format!(
            "tickets not completed by the next sweep: {:?}",
            pending
                .iter()
                .filter(|ticket| ticket.exists())
                .collect::<Vec<_>>()
        ));
    }
    // Nothing of ours left running unowned: after that sweep every live broker is recorded with an owner.
    let unowned: Vec<String> = marked_with_state_root(env.state_dir())
        .into_iter()
        .filter(|proc| {
            !slot_records(&env).iter().any(|(_, record)| {
                recorded_proc(record) == Some(*proc) && !owners(record).is_empty()
            })
        })
        .map(describe)
        .collect();
    if !unowned.is_empty() {
        violations.push(format!(
            "running without a record or an owner after the sweep: {unowned:?}"
        ));
    }
    // With every agent gone, the sweeps end their sessions and stop their brokers; brokers whose owners never got an
    // agent recorded (their SessionStart was killed) cannot be judged dead, only idle: a 1 s idle TTL stops them.
    for (_, agent) in &sessions {
        agent.kill();
    }
    env.reap_children();
    let all_stopped = wait_until(PATIENCE, || {
        let _ = run_bounded(env.cmd(&["sweep", "--idle-ttl", "1s"]), None);
        marked_with_state_root(env.state_dir()).is_empty() && env.tickets().is_empty()
    });
    if !all_stopped {
        let left: Vec<String> = marked_with_state_root(env.state_dir())
            .into_iter()
            .map(describe)
            .collect();
        violations.push(format!(
            "left running after every owner died and the sweeps ran: {left:?} (tickets {:?}; records {:?})",
            env.tickets(),
            slot_records(&env)
        ));
    }
    violations.extend(unparsable_files(env.state_dir()));
    println!(
        "reliability crashes: {operations} operations ({by_kind:?}), {killed} SIGKILLed mid-run, {} tickets pending after them, {} violations",
        pending.len(),
        violations.len()
    );
    assert!(violations.is_empty(), "violations: {violations:#?}");
}

/// Runs inside a private pid namespace as its pid 1 (`unshare --pid --fork --mount-proc`): starts every wrong
/// target, writes one broker record per case naming it (all owned by one session, indexed by it), then has the
/// binary end that session and sweep twice, from a shell whose parent is another shell (the caller and its
/// ancestors are themselves cases). Prints, as JSON, which targets are still alive and how the callers exited.
const WRONG_TARGETS_DRIVER: &str = r#"
import json, os, socket, subprocess, sys, threading, time
binary, state, plan = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
boot = open('/proc/sys/kernel/random/boot_id').read().strip()
pid_ns = os.stat('/proc/self/ns/pid').st_ino
errors = []
import signal
caught = []
for number in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2):
    signal.signal(number, lambda n, _: caught.append(n))

def ticks(pid, task=None):
    path = f'/proc/{pid}/task/{task}/stat' if task else f'/proc/{pid}/stat'
    text = open(path).read()
    return int(text[text.rfind(')') + 2:].split()[19])

def state_of(pid, task=None):
    path = f'/proc/{pid}/task/{task}/stat' if task else f'/proc/{pid}/stat'
    try:
        text = open(path).read()
    except OSError:
        return None, None
    fields = text[text.rfind(')') + 2:].split()
    return fields[0], int(fields[19])

def ident(pid, start=None, uid=0, boot_id=boot):
    return {"boot_id": boot_id, "pid_ns": pid_ns, "pid": pid,
            "start_ticks": start if start is not None else 0, "uid": uid}

def sleeper(*prefix):
    proc = subprocess.Popen(list(prefix) + ['sleep', '600'], stdin=subprocess.DEVNULL)
    for _ in range(1000):
        try:
            if open(f'/proc/{proc.pid}/cmdline', 'rb').read().split(b'\0')[0] == b'sleep':
                break
        except OSError:
            pass
        time.sleep(0.002)
    return proc

cases = {}      # case -> (identity, pgid, host override, [(pid, task, start) that must stay alive])
host = socket.gethostname()

cases['pid 0'] = (ident(0), 0, None, [])
cases['pid 1 (this namespace\'s init, the callers\' ancestor)'] = (ident(1, ticks(1)), 1, None, [(1, None, ticks(1))])
cases['pid -1'] = (ident(-1), -1, None, [])

# A thread of a process other than this namespace's init (init ignores the signals it has no handler for).
threaded = subprocess.Popen([sys.executable, '-c', 'import threading, time, sys\nready = threading.Event()\ntid = []\ndef worker():\n    tid.append(threading.get_native_id()); ready.set(); time.sleep(600)\nthreading.Thread(target=worker, daemon=True).start()\nready.wait()\nprint(tid[0], flush=True)\ntime.sleep(600)'], stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
thread = int(threaded.stdout.readline())
cases['a thread id'] = (ident(thread, ticks(threaded.pid, thread)), thread, None, [(threaded.pid, None, ticks(threaded.pid)), (threaded.pid, thread, ticks(threaded.pid, thread))])

victim = sleeper()
cases['another boot'] = (ident(victim.pid, ticks(victim.pid), boot_id='00000000-0000-4000-8000-000000000000'), victim.pid, None, [(victim.pid, None, ticks(victim.pid))])
remote = sleeper()
cases['another host'] = (ident(remote.pid, ticks(remote.pid)), remote.pid, 'elsewhere.invalid', [(remote.pid, None, ticks(remote.pid))])
nobody = sleeper('setpriv', '--reuid=65534', '--regid=65534', '--clear-groups')
if os.stat(f'/proc/{nobody.pid}').st_uid != 65534:
    errors.append('setpriv did not start a process under uid 65534')
cases['another uid (the record says so)'] = (ident(nobody.pid, ticks(nobody.pid), uid=65534), nobody.pid, None, [(nobody.pid, None, ticks(nobody.pid))])
cases['another uid (the record claims ours)'] = (ident(nobody.pid, ticks(nobody.pid), uid=0), nobody.pid, None, [])

# Pid reuse: the record names a dead leader whose pid is given, through ns_last_pid, to a new group leader.
old = sleeper()
old_pid, old_ticks = old.pid, ticks(old.pid)
old.kill(); old.wait()
# The new process must start in a later clock tick than the old one: within one tick (10 ms) a reused pid has the
# very same identity (boot, pid, start ticks, uid) and no record could tell them apart.
while float(open('/proc/uptime').read().split()[0]) * os.sysconf('SC_CLK_TCK') < old_ticks + 3:
    time.sleep(0.005)
with open('/proc/sys/kernel/ns_last_pid', 'w') as f:
    f.write(str(old_pid - 1))
reused = sleeper('setsid')
if reused.pid != old_pid:
    errors.append(f'pid {old_pid} was not reused (got {reused.pid})')
cases['a reused leader pid'] = (ident(old_pid, old_ticks), old_pid, None, [(reused.pid, None, ticks(reused.pid))])

# A leaderless group: its leader is gone, its members keep the old pgid.
group = subprocess.Popen(['setsid', 'sh', '-c', 'sleep 600 & sleep 600 & echo started; wait'], stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
group.stdout.readline()
leader, leader_ticks = group.pid, ticks(group.pid)
members = [int(p) for p in open(f'/proc/{leader}/task/{leader}/children').read().split()]
group.kill(); group.wait()
cases['a leaderless group with the old pgid'] = (ident(leader, leader_ticks), leader, None, [(m, None, ticks(m)) for m in members])

# The callers: an outer shell runs an inner one that waits for "go", then runs the binary.
commands = ' ; '.join([
    f'{binary} --state-dir {state} reap --session {plan["session"]} --json > {state}/../reap.out 2>&1',
    f'echo reap=$? >> {state}/../codes',
    f'{binary} --state-dir {state} sweep --idle-ttl 1s --json > {state}/../sweep.out 2>&1',
    f'echo sweep=$? >> {state}/../codes',
    f'{binary} --state-dir {state} sweep --idle-ttl 1s >> {state}/../sweep.out 2>&1',
    f'echo sweep2=$? >> {state}/../codes',
    'true'])
outer = subprocess.Popen(['sh', '-c', f'sh -c \'read go; {commands}\'; echo inner=$? >> {state}/../codes'], stdin=subprocess.PIPE)
inner = None
for _ in range(1000):
    try:
        kids = open(f'/proc/{outer.pid}/task/{outer.pid}/children').read().split()
    except OSError:
        kids = []
    if kids:
        inner = int(kids[0])
        break
    time.sleep(0.002)
if inner is None:
    errors.append('the inner shell never started')
else:
    cases['the caller (the shell running session-reaper)'] = (ident(inner, ticks(inner)), inner, None, [])
    cases['the caller\'s parent'] = (ident(outer.pid, ticks(outer.pid)), outer.pid, None, [])

now = '2020-01-01T00:00:00.000Z'
for case, (identity, pgid, other_host, _) in cases.items():
    slot = os.path.join(state, plan['slots'][case])
    os.makedirs(slot, mode=0o700, exist_ok=True)
    record = {"version": 1, "name": "default", "workspace": plan['workspaces'][case], "cwd": "/",
              "command": ["sleep", "600"], "owners": [{"session": plan['session'], "since": now}],
              "identity": identity, "pgid": pgid, "created_at": now, "last_active": now, "grace_ms": 500,
              "host": other_host or host}
    with open(os.open(os.path.join(slot, 'broker.json'), os.O_WRONLY | os.O_CREAT, 0o600), 'w') as f:
        json.dump(record, f)
session = {"version": 1, "session_id": plan['session'], "agent": "claude", "cwd": "/", "host": host,
           "started_at": now, "last_seen": now, "ended_at": None, "end_reason": None,
           "slots": [plan['slots'][case].split('workspaces/', 1)[1] for case in cases]}
os.makedirs(os.path.join(state, 'sessions'), mode=0o700, exist_ok=True)
with open(os.open(os.path.join(state, 'sessions', plan['session'] + '.json'), os.O_WRONLY | os.O_CREAT, 0o600), 'w') as f:
    json.dump(session, f)

outer.stdin.write(b'go\n'); outer.stdin.close()
outer_code = outer.wait()
time.sleep(0)
alive = {}
for case, (_, _, _, targets) in cases.items():
    alive[case] = all(state_of(pid, task) == ('S', start) or (state_of(pid, task)[0] not in (None, 'Z') and state_of(pid, task)[1] == start) for pid, task, start in targets)
codes = dict(line.strip().split('=') for line in open(f'{state}/../codes'))
if caught:
    alive["pid 1 (this namespace's init, the callers' ancestor)"] = False
print(json.dumps({"caught": caught, "errors": errors, "alive": alive, "outer": outer_code, "codes": codes, "cases": list(cases)}))
"#;

#[test]
#[allow(clippy::too_many_lines)] // one scenario, checked from every side
fn wrong_targets_in_a_private_pid_namespace_get_no_signal() {
    let env = Env::new();
    let _cleanup = StateRootProcesses(env.state_dir().to_path_buf());
    let session = unique_id("wrong");
    let names = [
        "pid 0",
        "pid 1 (this namespace's init, the callers' ancestor)",
        "pid -1",
        "a thread id",
        "another boot",
        "another host",
        "another uid (the record says so)",
        "another uid (the record claims ours)",
        "a reused leader pid",
        "a leaderless group with the old pgid",
        "the caller (the shell running session-reaper)",
        "the caller's parent",
    ];
    let mut slots = serde_json::Map::new();
    let mut workspaces = serde_json::Map::new();
    for (index, name) in names.iter().enumerate() {
        let workspace = format!("/nonexistent/wrong-target/{index}");
        let key = session_reaper::testing::workspace_key(Path::new(&workspace));
        slots.insert(
            (*name).to_owned(),
            json!(format!("workspaces/{key}/default")),
        );
        workspaces.insert((*name).to_owned(), json!(workspace));
    }
    let plan = json!({"session": session, "slots": slots, "workspaces": workspaces});
    let state = env.state_dir().join("root");
    std::fs::create_dir(&state).unwrap();
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o700)).unwrap();
    let mut command = crate::harness::unshare_pid_namespace();
    command
        .args(["/usr/bin/python3", "-c", WRONG_TARGETS_DRIVER])
        .arg(crate::harness::BIN)
        .arg(&state)
        .arg(plan.to_string());
    crate::harness::scrub_env(&mut command);
    let out = run_bounded(command, None);
    assert!(
        out.status.success(),
        "the pid-namespace driver failed (is unshare available, are we root?): {}{}",
        String::from_utf8_lossy(&out.stdout),
        stderr(&out)
    );
    let report: Value = serde_json::from_slice(&out.stdout).expect("the driver prints JSON");
    assert_eq!(
        report["errors"],
        json!([]),
        "the hostile cases could not be set up"
    );
    let cases: Vec<&str> = report["cases"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(cases.len(), names.len(), "every case was set up: {cases:?}");
    let signalled: Vec<&str> = cases
        .iter()
        .copied()
        .filter(|case| report["alive"][case] != json!(true))
        .collect();
    let codes = &report["codes"];
    println!(
        "reliability wrong targets: {} records naming wrong targets, reap + 2 sweeps: {} targets signalled; exit codes {codes}, outer shell {}",
        cases.len(),
        signalled.len(),
        report["outer"]
    );
    let events = std::fs::read_to_string(state.join("events.jsonl")).unwrap_or_default();
    assert!(
        signalled.is_empty(),
        "signalled: {signalled:?}\nevents: {events}\nreap: {}\nsweep: {}",
        std::fs::read_to_string(env.state_dir().join("reap.out")).unwrap_or_default(),
        std::fs::read_to_string(env.state_dir().join("sweep.out")).unwrap_or_default()
    );
    // The callers were not signalled: the inner shell and the outer one exited on their own.
    assert_eq!(
        codes["inner"],
        json!("0"),
        "the calling shell was signalled"
    );
    assert_eq!(
        report["outer"],
        json!(0),
        "the caller's parent was signalled"
    );
    for step in ["reap", "sweep", "sweep2"] {
        let code: i32 = codes[step].as_str().unwrap_or("-1").parse().unwrap();
        assert!(
            (0..=1).contains(&code),
            "{step} exited {code} (a panic is 101)"
        );
    }
}

/// One generated command line around a session id, and whether it is one of the real forms of resuming it.
#[derive(Clone, Debug)]
struct Variant {
    argv: Vec<String>,
    real: bool,
}

/// Programs: `(argv words, is an agent, can be imitated by a process started under that argv[0])`.
fn programs() -> Vec<(Vec<&'static str>, bool, bool)> {
    vec![
        (vec!["claude"], true, true),
        (vec!["/usr/local/bin/claude"], true, true),
        (
            vec![
                "node",
                "/usr/lib/node_modules/@anthropic-ai/claude-code/cli.js",
            ],
            true,
            false,
        ),
        (
            vec!["node", "--no-warnings", "/home/dev/.npm-global/bin/claude"],
            true,
            false,
        ),
        (vec!["grep"], false, true),
        (vec!["vim"], false, true),
        (vec!["cp"], false, true),
        (vec!["rg"], false, true),
        (vec!["less"], false, true),
        (vec!["python3"], false, true),
        (vec!["tmux", "new", "-d", "claude"], false, true),
        (vec!["ssh", "devbox", "claude"], false, true),
        (vec!["sudo", "claude"], false, true),
        (vec!["claudette"], false, true),
        (vec!["claude-monitor"], false, true),
        (vec!["xclaude"], false, true),
        (vec!["node", "server.js"], false, false),
    ]
}

/// The words around a session id `s` (and the session's recorded title `t`): `(words, a real form)`.
fn forms(s: &str, t: &str, other: &str) -> Vec<(Vec<String>, bool)> {
    let words = |list: &[&str]| list.iter().map(|w| (*w).to_owned()).collect::<Vec<_>>();
    let short = &s[..s.len() - 1];
    vec![
        (words(&["--resume", s]), true),
        (words(&[&format!("--resume={s}")]), true),
        (words(&["-r", s]), true),
        (words(&[&format!("-r{s}")]), true),
        (words(&["--resume", t]), true),
        (words(&[&format!("--resume={t}")]), true),
        (words(&["-r", t]), false),
        (words(&[&format!("-r{t}")]), false),
        (words(&["--resume", &format!("{s}1")]), false),
        (words(&["--resume", &format!("x{s}")]), false),
        (words(&["--resume", short]), false),
        (words(&[&format!("--resume={s}x")]), false),
        (words(&["-r", &format!("{s}-2")]), false),
        (words(&[&format!("-r{s}0")]), false),
        (words(&[&format!("-r={s}")]), false),
        (words(&[s]), false),
        (words(&["--resumed", s]), false),
        (words(&["--resume-session", s]), false),
        (words(&["-R", s]), false),
        (words(&["--r", s]), false),
        (words(&["--resume", "--", s]), false),
        (words(&[s, "--resume"]), false),
        (words(&["-p", &format!("--resume {s}")]), false),
        (words(&["--session-id", s]), false),
        (words(&["--resume", other]), false),
        (words(&["-r", other]), false),
        (words(&["--title", t]), false),
        (words(&["--continue"]), false),
    ]
}

const FILLERS: &[&str] = &[
    "--verbose",
    "-p",
    "--print",
    "--debug",
    "--dangerously-skip-permissions",
    "--output-format=json",
];

/// Command lines around `session`: every program × form, with fillers before and after and sometimes Claude's
/// own worker flag (never an orphan). `process` keeps to programs a process can imitate by its argv[0].
fn variants(session: &str, title: &str, process: bool) -> impl Strategy<Value = Variant> {
    let programs: Vec<_> = programs().into_iter().filter(|p| !process || p.2).collect();
    let other = format!(
        "{}{}",
        &session[..session.len() - 1],
        if session.ends_with('0') { '1' } else { '0' }
    );
    let forms = forms(session, title, &other);
    let (agents, others): (Vec<_>, Vec<_>) = programs.into_iter().partition(|p| p.1);
    let (real, near): (Vec<_>, Vec<_>) = forms.into_iter().partition(|f| f.1);
    // Half agents, half other programs; half real forms, half near misses: both kinds of error get their chances.
    (
        proptest::bool::ANY,
        0..agents.len().max(others.len()),
        proptest::bool::ANY,
        0..real.len().max(near.len()),
        proptest::collection::vec(0..FILLERS.len(), 0..3),
        proptest::collection::vec(0..FILLERS.len(), 0..3),
        proptest::bool::weighted(0.1),
    )
        .prop_map(
            move |(agent, program, real_form, form, before, after, worker)| {
                let programs = if agent { &agents } else { &others };
                let forms = if real_form { &real } else { &near };
                let (program, form) = (program % programs.len(), form % forms.len());
                let (words, agent, _) = &programs[program];
                let (form_words, real_form) = &forms[form];
                let mut argv: Vec<String> = words.iter().map(|w| (*w).to_owned()).collect();
                argv.extend(before.iter().map(|i| FILLERS[*i].to_owned()));
                argv.extend(form_words.iter().cloned());
                argv.extend(after.iter().map(|i| FILLERS[*i].to_owned()));
                if worker {
                    argv.push("--bg-pty-host".to_owned());
                }
                Variant {
                    argv,
                    real: *agent && *real_form && !worker,
                }
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    /// The pure matcher over 2,000 generated command lines: 0 false matches, 0 misses of the real forms.
    #[test]
    fn look_alikes_the_resume_matcher_matches_exactly_the_real_forms(
        variant in variants("0b5f6b3e-1ad7-454b-b79c-2a700b021481", "fix-the-login-form", false)
    ) {
        let matched = session_reaper::testing::resumes(
            &variant.argv,
            "0b5f6b3e-1ad7-454b-b79c-2a700b021481",
            Some("fix-the-login-form"),
        );
        prop_assert_eq!(matched, variant.real, "argv {:?}", variant.argv);
    }
}

/// Processes started under a look-alike command line (`sh -c 'read x' …` with the argv[0] and words of the
/// variant; stdin held open), killed on drop.
struct LookAlikes(Vec<(Child, Variant)>);

impl LookAlikes {
    fn start(variants: Vec<Variant>) -> LookAlikes {
        use std::os::unix::process::CommandExt;
        let mut started = LookAlikes(Vec::new());
        for variant in variants {
            let mut command = Command::new("/bin/sh");
            command
                .arg0(&variant.argv[0])
                .args(["-c", "read x"])
                .args(&variant.argv[1..])
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            let child = command.spawn().expect("start a look-alike");
            let pid = child.id();
            let shown = variant.argv[0].clone();
            assert!(
                wait_until(PATIENCE, || std::fs::read(format!("/proc/{pid}/cmdline"))
                    .is_ok_and(
                        |argv| argv.split(|b| *b == 0).next() == Some(shown.as_bytes())
                    )),
                "look-alike {pid} never showed its argv"
            );
            started.0.push((child, variant));
        }
        started
    }
}

impl Drop for LookAlikes {
    fn drop(&mut self) {
        for (child, _) in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[test]
fn look_alikes_as_processes_reap_dry_run_finds_exactly_the_real_forms() {
    let total = sized(60, 1_000);
    let batch = 100;
    let mut env = Env::new();
    let session = unique_id("lookalike");
    let title = unique_id("fix-the-login-form");
    // The session's record, with its title (a resume by title is a real form of the long flags).
    let sessions = env.state_dir().join("sessions");
    std::fs::create_dir_all(&sessions).unwrap();
    let record = json!({
        "version": 1, "session_id": session, "agent": "claude", "cwd": "/", "host": "",
        "title": title, "started_at": "2026-01-01T00:00:00.000Z", "last_seen": "2026-01-01T00:00:00.000Z",
        "ended_at": null, "end_reason": null, "slots": [],
    });
    std::fs::write(sessions.join(format!("{session}.json")), record.to_string()).unwrap();
    for dir in [env.state_dir().to_path_buf(), sessions.clone()] {
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    }
    let strategy = variants(&session, &title, true);
    let mut runner = TestRunner::deterministic();
    let (mut false_matches, mut misses, mut real_forms) = (Vec::new(), Vec::new(), 0usize);
    let mut done = 0;
    while done < total {
        let count = batch.min(total - done);
        let generated: Vec<Variant> = (0..count)
            .map(|_| strategy.new_tree(&mut runner).expect("a variant").current())
            .collect();
        real_forms += generated.iter().filter(|v| v.real).count();
        let planted = LookAlikes::start(generated);
        let out = env.run(&["reap", "--session", &session, "--dry-run", "--json"]);
        assert!(
            out.status.code().is_some_and(|c| c <= 1),
            "reap --dry-run: {}",
            stderr(&out)
        );
        let report: Value = serde_json::from_slice(&out.stdout).expect("reap --json");
        let found: HashSet<u32> = report["sessions"][0]["resume_orphans"]
            .as_array()
            .expect("resume_orphans")
            .iter()
            .filter_map(|orphan| orphan.get(0).or_else(|| orphan.get("pid"))?.as_u64())
            .map(|pid| u32::try_from(pid).unwrap())
            .collect();
        for (child, variant) in &planted.0 {
            match (found.contains(&child.id()), variant.real) {
                (true, false) => false_matches.push(variant.argv.clone()),
                (false, true) => misses.push(variant.argv.clone()),
                _ => {}
            }
        }
        done += count;
    }
    println!(
        "reliability look-alikes (processes): {total} command lines ({real_forms} real forms), {} false matches, {} misses",
        false_matches.len(),
        misses.len()
    );
    assert!(
        false_matches.is_empty() && misses.is_empty(),
        "false matches {false_matches:#?}\nmisses {misses:#?}"
    );
}

/// The fixture files the fuzzers start from: every agent's hook payloads, and the v1 state records.
fn fixture_values(under: &str) -> Vec<Value> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(under);
    let mut found = Vec::new();
    let mut stack = vec![root];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("fixtures").flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|ext| ext == "json") {
                found.push(
                    serde_json::from_slice(&std::fs::read(&path).unwrap())
                        .expect("a fixture parses"),
                );
            }
        }
    }
    assert!(!found.is_empty(), "no fixtures under {under}");
    found
}

/// A codex-plugin-cc `broker.json` (both plugin versions' fields) and its `state.json`.
fn plugin_templates() -> Vec<Value> {
    vec![
        json!({"endpoint": "unix:/tmp/cxc-1/broker.sock", "pid": 4242, "pidFile": "/tmp/cxc-1/broker.pid",
               "logFile": "/tmp/cxc-1/broker.log", "sessionDir": "/tmp/cxc-1", "sessionId": "s-1",
               "sessionIds": ["s-1", "s-2"]}),
        json!({"version": 1, "config": {"model": "gpt"}, "jobs": [
            {"id": "j1", "status": "running", "sessionId": "s-1", "pid": 4243},
            {"id": "j2", "status": "done", "sessionId": "", "pid": -1}]}),
    ]
}

/// Any JSON value, small and nested.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        "[\\PC]{0,12}".prop_map(Value::from),
        prop_oneof![
            Just("0b5f6b3e-1ad7-454b-b79c-2a700b021481"),
            Just("SessionEnd"),
            Just("SessionStart"),
            Just("/tmp"),
            Just(".."),
            Just("../../etc"),
            Just("a/b"),
            Just("")
        ]
        .prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            proptest::collection::btree_map("[a-z_]{1,10}", inner, 0..4)
                .prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    })
}

/// A fixture with up to four of its fields (top-level or one level down) deleted or replaced by any value.
fn mutated(templates: Vec<Value>) -> impl Strategy<Value = Value> {
    (
        0..templates.len(),
        proptest::collection::vec(
            (any::<prop::sample::Index>(), any::<bool>(), any_json()),
            0..5,
        ),
    )
        .prop_map(move |(which, edits)| {
            let mut value = templates[which].clone();
            for (index, delete, replacement) in edits {
                let Some(object) = value.as_object_mut() else {
                    break;
                };
                let keys: Vec<String> = object.keys().cloned().collect();
                if keys.is_empty() {
                    break;
                }
                let key = &keys[index.index(keys.len())];
                let nested = object
                    .get_mut(key)
                    .and_then(Value::as_object_mut)
                    .filter(|_| !delete);
                match nested {
                    Some(inner) if !inner.is_empty() => {
                        let inner_key = inner.keys().nth(index.index(inner.len())).unwrap().clone();
                        inner.insert(inner_key, replacement);
                    }
                    _ if delete => {
                        object.remove(key);
                    }
                    _ => {
                        object.insert(key.clone(), replacement);
                    }
                }
            }
            value
        })
}

/// The bytes a fuzzed file holds: a mutated fixture, serialised; sometimes cut short, sometimes any bytes at all.
fn fuzzed_bytes(templates: Vec<Value>) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        6 => mutated(templates.clone()).prop_map(|value| serde_json::to_vec(&value).unwrap()),
        2 => (mutated(templates), any::<prop::sample::Index>()).prop_map(|(value, cut)| {
            let bytes = serde_json::to_vec(&value).unwrap();
            bytes[..cut.index(bytes.len().max(1)).min(bytes.len())].to_vec()
        }),
        1 => proptest::collection::vec(any::<u8>(), 0..64),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_500))]

    /// Every agent's hook payloads, mutated: parsing and agent detection never panic (4 × 2,500 cases with the
    /// three records below).
    #[test]
    fn fuzz_hook_payloads_never_panic(value in mutated(fixture_values("payloads"))) {
        for agent in [None, Some(session_reaper::testing::Agent::Claude), Some(session_reaper::testing::Agent::Codex)] {
            if let Ok(payload) = session_reaper::testing::Payload::from_json(&value, agent) {
                let _ = session_reaper::testing::detect_agent(agent, &payload, &|_| false);
                if let Some(session) = &payload.session {
                    let _ = session_reaper::testing::SessionId::parse(session.as_str());
                }
            }
        }
    }

    #[test]
    fn fuzz_broker_and_session_records_never_panic(bytes in fuzzed_bytes(
        fixture_values("state/v1").into_iter().chain(fixture_values("state/v2")).collect())) {
        let path = Path::new("/fuzz/record.json");
        let _ = session_reaper::testing::parse_record::<session_reaper::testing::BrokerRecord>(&bytes, path);
        let _ = session_reaper::testing::parse_record::<session_reaper::testing::SessionRecord>(&bytes, path);
    }

    #[test]
    fn fuzz_stop_tickets_never_panic(bytes in fuzzed_bytes(fixture_values("state/v1/stopping"))) {
        let _ = session_reaper::testing::parse_record::<session_reaper::testing::StopTicket>(
            &bytes, Path::new("/fuzz/ticket.json"));
    }

    #[test]
    fn fuzz_codex_plugin_broker_files_never_panic(bytes in fuzzed_bytes(plugin_templates())) {
        if let Some(file) = session_reaper::testing::BrokerFile::parse(
            PathBuf::from("/fuzz/broker.json"), &bytes)
            && let Some(endpoint) = file.endpoint.as_deref() {
            let _ = session_reaper::testing::socket_path(endpoint);
        }
    }
}

/// The binary in hook mode with fuzzed payloads of every agent (and every `--agent`): always exit 0, nothing on
/// stdout, never a panic, within the deadline.
#[test]
fn fuzz_the_hook_binary_always_exits_0_silently_within_its_deadline() {
    let cases = sized(120, 1_500);
    let env = Env::new();
    let _cleanup = StateRootProcesses(env.state_dir().to_path_buf());
    let strategy = fuzzed_bytes(fixture_values("payloads"));
    let mut runner = TestRunner::deterministic();
    let agents = ["auto", "claude", "gemini", "qwen", "codex"];
    let mut violations = Vec::new();
    let mut slowest = Duration::ZERO;
    for case in 0..cases {
        let bytes = strategy.new_tree(&mut runner).expect("a payload").current();
        let mut command = env.cmd(&[
            "hook",
            "--agent",
            agents[case % agents.len()],
            "--deadline",
            "1s",
        ]);
        command.env("SESSION_REAPER_SENTINEL", "off");
        let started = Instant::now();
        let out = run_bounded(command, Some(&bytes));
        let took = started.elapsed();
        slowest = slowest.max(took);
        if out.status.code() != Some(0)
            || !out.stdout.is_empty()
            || stderr(&out).contains("panicked")
        {
            violations.push(format!("{:?}: {out:?}", String::from_utf8_lossy(&bytes)));
        }
        // 1 s deadline; a generous margin for process start on a loaded machine.
        if took > Duration::from_secs(3) {
            violations.push(format!(
                "took {took:?}: {:?}",
                String::from_utf8_lossy(&bytes)
            ));
        }
    }
    println!(
        "reliability fuzz (hook binary): {cases} payloads, slowest {slowest:?}, {} violations",
        violations.len()
    );
    assert!(violations.is_empty(), "{violations:#?}");
}

/// Fuzzed records, tickets and Codex plugin files in a state root: `sweep --dry-run`, `status` and the hook never
/// panic, and every CLI command exits 0, 1 or 2.
#[test]
fn fuzz_state_files_never_make_a_command_panic() {
    let cases = sized(25, 300);
    let mut runner = TestRunner::deterministic();
    let records = fuzzed_bytes(
        fixture_values("state/v1")
            .into_iter()
            .chain(fixture_values("state/v2"))
            .collect(),
    );
    let tickets = fuzzed_bytes(fixture_values("state/v1/stopping"));
    let plugin = fuzzed_bytes(plugin_templates());
    let mut violations = Vec::new();
    for _ in 0..cases {
        let env = Env::new();
        let _cleanup = StateRootProcesses(env.state_dir().to_path_buf());
        let root = env.state_dir();
        let slot = root.join("workspaces/app-0123456789abcdef/default");
        let plugin_dir = env.work.path().join("plugin-state/app-0123456789abcdef");
        for dir in [
            &slot,
            &root.join("sessions"),
            &root.join("stopping"),
            &plugin_dir,
        ] {
            std::fs::create_dir_all(dir).unwrap();
        }
        let mut write = |path: PathBuf, strategy: &dyn Fn(&mut TestRunner) -> Vec<u8>| {
            std::fs::write(path, strategy(&mut runner)).unwrap();
        };
        write(slot.join("broker.json"), &|r| {
            records.new_tree(r).unwrap().current()
        });
        write(root.join("sessions/fuzz-session.json"), &|r| {
            records.new_tree(r).unwrap().current()
        });
        write(root.join("stopping/fuzz-ticket.json"), &|r| {
            tickets.new_tree(r).unwrap().current()
        });
        write(plugin_dir.join("broker.json"), &|r| {
            plugin.new_tree(r).unwrap().current()
        });
        write(plugin_dir.join("state.json"), &|r| {
            plugin.new_tree(r).unwrap().current()
        });
        for entry in crate::harness::walkdir_all(root) {
            let mode = if entry.is_dir() { 0o700 } else { 0o600 };
            std::fs::set_permissions(&entry, std::fs::Permissions::from_mode(mode)).unwrap();
        }
        let codex = env.work.path().join("plugin-state");
        let codex = codex.to_str().unwrap();
        for args in [
            vec!["sweep", "--dry-run", "--json", "--codex-state", codex],
            vec!["status", "--json"],
            vec![
                "reap",
                "--session",
                "fuzz-session",
                "--dry-run",
                "--json",
                "--codex-state",
                codex,
            ],
        ] {
            let out = run_bounded(env.cmd(&args), None);
            if out.status.code().is_none_or(|code| code > 2) || stderr(&out).contains("panicked") {
                violations.push(format!("{args:?}: {out:?}"));
            }
        }
        let out = run_bounded(
            env.cmd(&["hook", "--agent", "claude", "--codex-state", codex]),
            Some(&hook_payload("fuzz-session", "SessionEnd", env.work.path())),
        );
        if out.status.code() != Some(0)
            || !out.stdout.is_empty()
            || stderr(&out).contains("panicked")
        {
            violations.push(format!("hook: {out:?}"));
        }
    }
    println!(
        "reliability fuzz (state files): {cases} state roots x 4 commands, {} violations",
        violations.len()
    );
    assert!(violations.is_empty(), "{violations:#?}");
}

/// One hostile state: what is planted (after a live broker owned by a live session exists) and the path a user
/// must be told about.
struct Hostile {
    name: &'static str,
    plant: fn(&HostileWorld) -> PathBuf,
    /// A bug this case shows in the current build: it runs only in the heavy run (and fails there) until fixed.
    known_bug: Option<&'static str>,
}

/// The world a hostile case is planted in: a live broker `broker` in slot `slot`, owned by session "owner"; a
/// second slot `other` of the same workspace; the hooks and reaps run for "bystander", which owns nothing.
struct HostileWorld {
    root: PathBuf,
    slot: PathBuf,
    other: PathBuf,
    record: Value,
}

impl HostileWorld {
    /// The live broker's record, with no owner and idle for years: if any command were fooled into reading it, it
    /// would stop the broker.
    fn bait(&self) -> Vec<u8> {
        let mut bait = self.record.clone();
        bait["owners"] = json!([]);
        bait["last_active"] = json!("2020-01-01T00:00:00.000Z");
        bait["idle_ttl_secs"] = json!(1);
        serde_json::to_vec(&bait).unwrap()
    }

    /// A stop ticket for the live broker.
    fn bait_ticket(&self) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "version": 1, "identity": self.record["identity"], "pgid": self.record["pgid"],
            "reason": "manual", "requested_at": "2020-01-01T00:00:00.000Z", "grace_ms": 100, "attempts": 0,
            "origin": "resume-orphan", "host": self.record["host"],
        }))
        .unwrap()
    }

    fn elsewhere(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let dir = self.root.parent().unwrap().join("elsewhere");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }
}

fn symlink(target: &Path, link: &Path) -> PathBuf {
    std::os::unix::fs::symlink(target, link).expect("plant a symlink");
    link.to_path_buf()
}

fn fifo(path: &Path) -> PathBuf {
    let status = Command::new("mkfifo").arg(path).status().expect("mkfifo");
    assert!(status.success(), "mkfifo {}", path.display());
    path.to_path_buf()
}

fn chown_nobody(path: &Path) -> PathBuf {
    std::os::unix::fs::lchown(path, Some(65534), Some(65534)).expect("chown to nobody");
    path.to_path_buf()
}

fn sparse(path: &Path) -> PathBuf {
    let file = std::fs::File::create(path).expect("a sparse file");
    file.set_len(1 << 30).expect("1 GB sparse");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path.to_path_buf()
}

fn moved_dir(path: &Path) -> PathBuf {
    let aside = path.with_extension("real");
    std::fs::rename(path, &aside).unwrap();
    symlink(&aside, path)
}

#[allow(clippy::too_many_lines)] // a table
fn hostile_cases() -> Vec<Hostile> {
    vec![
        Hostile {
            name: "state root: a symlink",
            plant: |w| symlink(&w.root, &w.root.with_extension("link")),
            known_bug: None,
        },
        Hostile {
            name: "workspaces/: a symlink",
            plant: |w| moved_dir(&w.root.join("workspaces")),
            known_bug: None,
        },
        Hostile {
            name: "a workspace dir: a symlink",
            plant: |w| moved_dir(w.other.parent().unwrap()),
            known_bug: None,
        },
        // Was a bug (skipped without a word): `status` and `sweep` now report it, unfollowed.
        Hostile {
            name: "a slot dir: a symlink",
            plant: |w| symlink(&w.slot, &w.slot.with_file_name("alias")),
            known_bug: None,
        },
        Hostile {
            name: "broker.json: a symlink to a record naming the live broker",
            plant: |w| {
                std::fs::create_dir_all(&w.other).unwrap();
                symlink(
                    &w.elsewhere("broker.json", &w.bait()),
                    &w.other.join("broker.json"),
                )
            },
            known_bug: None,
        },
        Hostile {
            name: "sessions/: a symlink",
            plant: |w| moved_dir(&w.root.join("sessions")),
            known_bug: None,
        },
        Hostile {
            name: "the hook's session record: a symlink",
            plant: |w| {
                symlink(
                    &w.elsewhere("bystander.json", b"{}"),
                    &w.root.join("sessions/bystander.json"),
                )
            },
            known_bug: None,
        },
        Hostile {
            name: "a stop ticket: a symlink to one naming the live broker",
            plant: |w| {
                symlink(
                    &w.elsewhere("ticket.json", &w.bait_ticket()),
                    &w.root.join("stopping/bait.json"),
                )
            },
            known_bug: None,
        },
        Hostile {
            name: "events.jsonl: a symlink",
            plant: |w| {
                let target = w.elsewhere("events.jsonl", b"");
                let _ = std::fs::remove_file(w.root.join("events.jsonl"));
                symlink(&target, &w.root.join("events.jsonl"))
            },
            known_bug: None,
        },
        Hostile {
            name: "broker.json: a FIFO",
            plant: |w| {
                std::fs::create_dir_all(&w.other).unwrap();
                fifo(&w.other.join("broker.json"))
            },
            known_bug: None,
        },
        Hostile {
            name: "the hook's session record: a FIFO",
            plant: |w| fifo(&w.root.join("sessions/bystander.json")),
            known_bug: None,
        },
        Hostile {
            name: "a stop ticket: a FIFO",
            plant: |w| fifo(&w.root.join("stopping/fifo.json")),
            known_bug: None,
        },
        Hostile {
            name: "events.jsonl: a FIFO",
            plant: |w| {
                let _ = std::fs::remove_file(w.root.join("events.jsonl"));
                fifo(&w.root.join("events.jsonl"))
            },
            known_bug: None,
        },
        Hostile {
            name: "broker.json: a directory",
            plant: |w| {
                let path = w.other.join("broker.json");
                std::fs::create_dir_all(&path).unwrap();
                path
            },
            known_bug: None,
        },
        Hostile {
            name: "the hook's session record: a directory",
            plant: |w| {
                let path = w.root.join("sessions/bystander.json");
                std::fs::create_dir_all(&path).unwrap();
                path
            },
            known_bug: None,
        },
        Hostile {
            name: "a stop ticket: a directory",
            plant: |w| {
                let path = w.root.join("stopping/dir.json");
                std::fs::create_dir_all(&path).unwrap();
                path
            },
            known_bug: None,
        },
        Hostile {
            name: "events.jsonl: a directory",
            plant: |w| {
                let path = w.root.join("events.jsonl");
                let _ = std::fs::remove_file(&path);
                std::fs::create_dir_all(&path).unwrap();
                path
            },
            known_bug: None,
        },
        Hostile {
            name: "state root: group-writable",
            plant: |w| {
                std::fs::set_permissions(&w.root, std::fs::Permissions::from_mode(0o770)).unwrap();
                w.root.clone()
            },
            known_bug: None,
        },
        Hostile {
            name: "a slot dir: world-writable",
            plant: |w| {
                std::fs::create_dir_all(&w.other).unwrap();
                std::fs::write(w.other.join("broker.json"), w.bait()).unwrap();
                std::fs::set_permissions(&w.other, std::fs::Permissions::from_mode(0o777)).unwrap();
                w.other.clone()
            },
            known_bug: None,
        },
        Hostile {
            name: "broker.json: owned by another user, naming the live broker",
            plant: |w| {
                std::fs::create_dir_all(&w.other).unwrap();
                let path = w.other.join("broker.json");
                std::fs::write(&path, w.bait()).unwrap();
                chown_nobody(&path)
            },
            known_bug: None,
        },
        Hostile {
            name: "a stop ticket: owned by another user, naming the live broker",
            plant: |w| {
                let path = w.root.join("stopping/foreign.json");
                std::fs::write(&path, w.bait_ticket()).unwrap();
                chown_nobody(&path)
            },
            known_bug: None,
        },
        Hostile {
            name: "the hook's session record: owned by another user",
            plant: |w| {
                let path = w.root.join("sessions/bystander.json");
                std::fs::write(&path, b"{\"version\":1,\"session_id\":\"bystander\",\"started_at\":\"x\",\"last_seen\":\"x\"}").unwrap();
                chown_nobody(&path)
            },
            known_bug: None,
        },
        Hostile {
            name: "a workspace dir: owned by another user",
            plant: |w| {
                std::fs::create_dir_all(&w.other).unwrap();
                std::fs::write(w.other.join("broker.json"), w.bait()).unwrap();
                chown_nobody(w.other.parent().unwrap())
            },
            known_bug: None,
        },
        Hostile {
            name: "the hook's session record: 1 GB (sparse)",
            plant: |w| sparse(&w.root.join("sessions/bystander.json")),
            known_bug: None,
        },
        Hostile {
            name: "broker.json: 1 GB (sparse)",
            plant: |w| {
                std::fs::create_dir_all(&w.other).unwrap();
                sparse(&w.other.join("broker.json"))
            },
            known_bug: None,
        },
        Hostile {
            name: "a stop ticket: 1 GB (sparse)",
            plant: |w| sparse(&w.root.join("stopping/huge.json")),
            known_bug: None,
        },
    ]
}

#[test]
#[allow(clippy::too_many_lines)] // one scenario, checked from every side
fn hostile_state_is_refused_with_a_clear_error_and_no_action_and_the_hook_holds_its_deadline() {
    // Cases that show a known bug run only in the heavy run, where they fail until it is fixed.
    let (cases, deferred): (Vec<Hostile>, Vec<Hostile>) = hostile_cases()
        .into_iter()
        .partition(|case| case.known_bug.is_none() || crate::harness::heavy());
    for case in &deferred {
        println!(
            "hostile case deferred to SESSION_REAPER_HEAVY=1 (known bug: {}): {}",
            case.known_bug.unwrap(),
            case.name
        );
    }
    let mut violations: Vec<String> = Vec::new();
    let mut slowest_hook = Duration::ZERO;
    for case in &cases {
        let mut env = Env::new();
        let _cleanup = StateRootProcesses(env.state_dir().to_path_buf());
        let ws = env.workspace("app");
        let (broker, record) = env.spawn_broker_with(&ws, "owner", &[], &["sleep", "600"]);
        let key = session_reaper::testing::workspace_key(&ws);
        let slot = env
            .state_dir()
            .join("workspaces")
            .join(&key)
            .join("default");
        let world = HostileWorld {
            root: env.state_dir().to_path_buf(),
            other: slot.with_file_name("other"),
            slot,
            record,
        };
        std::fs::create_dir_all(world.root.join("stopping")).unwrap();
        let planted = (case.plant)(&world);
        // A symlinked state root is used as the state root; every other case keeps the real one.
        let root = if case.name.starts_with("state root: a symlink") {
            planted.clone()
        } else {
            world.root.clone()
        };
        let command = |args: &[&str]| {
            let mut command = Command::new(crate::harness::BIN);
            command.arg("--state-dir").arg(&root).args(args);
            crate::harness::scrub_env(&mut command);
            command
                .env("TMPDIR", env.work.path())
                .env("HOME", env.work.path().join("home"))
                .stdin(Stdio::null());
            command
        };
        let mentioned = planted.file_name().unwrap().to_string_lossy().into_owned();
        let mut told = false;
        for event in ["SessionStart", "SessionEnd"] {
            let mut hook = command(&["hook", "--agent", "claude", "--deadline", "1s"]);
            hook.env("SESSION_REAPER_SENTINEL", "off");
            let started = Instant::now();
            let out = crate::harness::run_bounded_for(
                hook,
                Some(&hook_payload("bystander", event, &ws)),
                Duration::from_secs(10),
            );
            let took = started.elapsed();
            slowest_hook = slowest_hook.max(took);
            if out.status.code() != Some(0) || !out.stdout.is_empty() {
                violations.push(format!("{}: hook {event}: {out:?}", case.name));
            }
            if took > Duration::from_millis(2500) {
                violations.push(format!(
                    "{}: hook {event} took {took:?} (deadline 1 s)",
                    case.name
                ));
            }
            told |= stderr(&out).contains(&mentioned);
        }
        for args in [
            &["status", "--json"][..],
            &["sweep", "--json"],
            &["reap", "--session", "bystander", "--json"],
            &["log"],
            &["doctor"],
        ] {
            let started = Instant::now();
            let out = crate::harness::run_bounded_for(command(args), None, Duration::from_secs(10));
            let code = out.status.code();
            if code.is_none_or(|code| code > 2) || stderr(&out).contains("panicked") {
                violations.push(format!(
                    "{}: {args:?} exited {code:?}: {}",
                    case.name,
                    stderr(&out)
                ));
            }
            if started.elapsed() > Duration::from_secs(9) {
                violations.push(format!("{}: {args:?} hung", case.name));
            }
            if code == Some(2) && stderr(&out).trim().lines().count() != 1 {
                violations.push(format!(
                    "{}: {args:?}: not a one-line error: {}",
                    case.name,
                    stderr(&out)
                ));
            }
            told |= stderr(&out).contains(&mentioned)
                || crate::harness::stdout(&out).contains(&mentioned);
        }
        if !told {
            violations.push(format!("{}: no command named {mentioned}", case.name));
        }
        if !broker.alive() {
            violations.push(format!("{}: the live broker was stopped", case.name));
        }
        let _ = std::fs::set_permissions(&world.root, std::fs::Permissions::from_mode(0o700));
    }
    println!(
        "reliability hostile state: {} cases x 7 commands ({} deferred: known bugs), slowest hook {slowest_hook:?} (deadline 1 s), {} violations",
        cases.len(),
        deferred.len(),
        violations.len()
    );
    assert!(violations.is_empty(), "{violations:#?}");
}

/// Runs in a private mount namespace (`unshare --mount`): a 64 KiB tmpfs as the state root's filesystem, a live
/// broker recorded on it, the disk then filled; every command's exit code, stderr and wall time go to `$out`.
const FULL_DISK_SCRIPT: &str = r#"
set -u
bin=$1 disk=$2 out=$3 ws=$4
mount -t tmpfs -o size=64k tmpfs "$disk" || { echo "mount failed" >&2; exit 3; }
mkdir -m 700 "$disk/state"
state="$disk/state"
run() { # name, stdin file or -, command...
    name=$1 input=$2; shift 2
    start=$(date +%s%N)
    if [ "$input" = - ]; then "$bin" --state-dir "$state" "$@" </dev/null >"$out/$name.stdout" 2>"$out/$name.stderr"
    else "$bin" --state-dir "$state" "$@" <"$input" >"$out/$name.stdout" 2>"$out/$name.stderr"; fi
    echo "$name $? $(( ($(date +%s%N) - start) / 1000000 ))" >>"$out/codes"
}
run spawn - broker spawn --json --cwd "$ws" --session owner -- sleep 600
dd if=/dev/zero of="$disk/fill" bs=1k 2>/dev/null
echo "free $(df -k "$disk" | awk 'NR==2 {print $4}')" >>"$out/codes"
printf '{"session_id":"bystander","hook_event_name":"SessionStart","cwd":"%s","source":"startup"}' "$ws" >"$out/start.json"
printf '{"session_id":"bystander","hook_event_name":"SessionEnd","cwd":"%s","reason":"other"}' "$ws" >"$out/end.json"
SESSION_REAPER_SENTINEL=off run hook_start "$out/start.json" hook --agent claude --deadline 1s
SESSION_REAPER_SENTINEL=off run hook_end "$out/end.json" hook --agent claude --deadline 1s
run spawn_second - broker spawn --cwd "$ws" --name second --session owner -- sleep 600
run attach - broker attach --cwd "$ws" --session another
run detach - broker detach --cwd "$ws" --session owner
run sweep - sweep
run status - status --json
cat "$state"/workspaces/*/default/broker.json >"$out/after.json"
"#;

#[test]
fn a_full_disk_is_refused_with_a_clear_error_loses_no_record_and_leaks_no_broker() {
    let env = Env::new();
    let _cleanup = StateRootProcesses(env.work.path().join("disk/state"));
    let ws = env.workspace("app");
    let disk = env.work.path().join("disk");
    let out_dir = env.work.path().join("out");
    std::fs::create_dir_all(&disk).unwrap();
    std::fs::create_dir_all(&out_dir).unwrap();
    let mut command = Command::new("unshare");
    command
        .args([
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            FULL_DISK_SCRIPT,
            "sh",
        ])
        .arg(crate::harness::BIN)
        .arg(&disk)
        .arg(&out_dir)
        .arg(&ws);
    crate::harness::scrub_env(&mut command);
    let out = run_bounded(command, None);
    assert!(
        out.status.success(),
        "the full-disk setup failed (unshare, mount as root): {}",
        stderr(&out)
    );
    let codes = std::fs::read_to_string(out_dir.join("codes")).unwrap();
    let code_of = |name: &str| -> (i32, u64) {
        let line = codes
            .lines()
            .find(|line| line.split(' ').next() == Some(name))
            .unwrap_or_else(|| panic!("{name} never ran: {codes}"));
        let words: Vec<&str> = line.split(' ').collect();
        (words[1].parse().unwrap(), words[2].parse().unwrap())
    };
    let text = |name: &str| std::fs::read_to_string(out_dir.join(name)).unwrap_or_default();
    assert_eq!(
        code_of("spawn").0,
        0,
        "the first spawn (with space left) failed: {}",
        text("spawn.stderr")
    );
    let spawned: Value =
        serde_json::from_str(&text("spawn.stdout")).expect("spawn printed the record");
    let broker = recorded_proc(&spawned).expect("the broker's identity");
    assert!(codes.contains("free 0"), "the disk is not full: {codes}");
    let mut violations = Vec::new();
    for hook in ["hook_start", "hook_end"] {
        let (code, ms) = code_of(hook);
        if code != 0 || !text(&format!("{hook}.stdout")).is_empty() || ms > 2500 {
            violations.push(format!(
                "{hook}: exit {code}, {ms} ms, stdout {:?}",
                text(&format!("{hook}.stdout"))
            ));
        }
    }
    for name in ["spawn_second", "attach", "detach", "sweep", "status"] {
        let (code, _) = code_of(name);
        let err = text(&format!("{name}.stderr"));
        if !(0..=2).contains(&code) || err.contains("panicked") {
            violations.push(format!("{name}: exit {code}: {err}"));
        }
        if code != 0 && err.trim().lines().count() != 1 {
            violations.push(format!(
                "{name}: exit {code} without a one-line error: {err:?}"
            ));
        }
    }
    if code_of("spawn_second").0 == 0 {
        violations.push("a spawn on a full disk reported success".to_owned());
    }
    // The record survived every failed write, and names the live broker.
    let after: Value = serde_json::from_str(&text("after.json")).unwrap_or(Value::Null);
    if recorded_proc(&after) != Some(broker) {
        violations.push(format!("the record was lost or changed: {after}"));
    }
    if !broker.alive() {
        violations.push("the live broker was stopped".to_owned());
    }
    // No broker of that state root runs without a record: a spawn that cannot record must not leave its process.
    let leaked: Vec<Proc> = marked_with_state_root(&disk.join("state"))
        .into_iter()
        .filter(|proc| *proc != broker)
        .collect();
    if !leaked.is_empty() {
        violations.push(format!("brokers running without a record: {leaked:?}"));
    }
    println!(
        "reliability full disk: 64 KiB tmpfs filled, 7 commands, {} violations; {}",
        violations.len(),
        codes.replace('\n', "; ")
    );
    assert!(
        violations.is_empty(),
        "{violations:#?}\n{codes}\nsecond spawn: {}\nattach: {}",
        text("spawn_second.stderr"),
        text("attach.stderr")
    );
}
