//! Brokers and their owners: owner updates under concurrency and SIGKILL, the stop cascade on real process groups,
//! identity checks against planted records, bad input that changes nothing, and v1 records read and rewritten
//! without losing fields.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::harness::{
    BIN, Env, PATIENCE, Proc, run_bounded, scrub_env, stderr, stdout, wait_until,
};

// ---------------------------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------------------------

fn text(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

/// Asserts a zero exit and returns stdout parsed as JSON.
fn json_of(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "exit {:?}: {}{}",
        out.status.code(),
        stdout(out),
        stderr(out)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|err| panic!("stdout is not JSON ({err}): {}", stdout(out)))
}

fn assert_ok(out: &Output) {
    assert!(
        out.status.success(),
        "exit {:?}: {}{}",
        out.status.code(),
        stdout(out),
        stderr(out)
    );
}

fn pid_of(record: &Value) -> i32 {
    i32::try_from(
        record
            .pointer("/identity/pid")
            .and_then(Value::as_i64)
            .expect("identity.pid"),
    )
    .unwrap()
}

fn proc_of(record: &Value) -> Proc {
    Proc {
        pid: pid_of(record),
        ticks: record
            .pointer("/identity/start_ticks")
            .and_then(Value::as_u64)
            .unwrap(),
    }
}

fn owners(record: &Value) -> BTreeSet<String> {
    crate::harness::owners(record).into_iter().collect()
}

fn set(ids: &[&str]) -> BTreeSet<String> {
    ids.iter().map(|id| (*id).to_owned()).collect()
}

/// `<state>/workspaces/<slug>-<hash16>/<name>`, computed from the contract (not from the code under test). Test
/// workspaces have plain names, so the slug is the basename.
fn slot_dir(env: &Env, workspace: &Path, name: &str) -> PathBuf {
    let digest = Sha256::digest(workspace.as_os_str().as_encoded_bytes());
    let hash16 = digest.iter().take(8).fold(String::new(), |mut hex, byte| {
        let _ = write!(hex, "{byte:02x}");
        hex
    });
    let slug = workspace.file_name().unwrap().to_str().unwrap();
    env.state_dir()
        .join("workspaces")
        .join(format!("{slug}-{hash16}"))
        .join(name)
}

fn record_path(env: &Env, workspace: &Path) -> PathBuf {
    slot_dir(env, workspace, "default").join("broker.json")
}

fn read_record(env: &Env, workspace: &Path) -> Value {
    let bytes = std::fs::read(record_path(env, workspace)).expect("broker.json exists");
    serde_json::from_slice(&bytes).unwrap_or_else(|err| {
        panic!(
            "broker.json does not parse ({err}): {}",
            String::from_utf8_lossy(&bytes)
        )
    })
}

fn write_record(env: &Env, workspace: &Path, record: &Value) {
    std::fs::write(
        record_path(env, workspace),
        serde_json::to_vec_pretty(record).unwrap(),
    )
    .unwrap();
}

/// Events of one workspace with this action.
fn events_of(env: &Env, workspace: &Path, action: &str) -> Vec<Value> {
    env.events_where(action, None)
        .into_iter()
        .filter(|e| e["workspace"] == text(workspace))
        .collect()
}

/// The `status --json` entry of a workspace's default slot.
fn status_slot(env: &mut Env, workspace: &Path) -> Option<Value> {
    let status = env.status();
    status["slots"]
        .as_array()
        .expect("slots")
        .iter()
        .find(|s| s["workspace"] == text(workspace))
        .cloned()
}

/// Fields of `/proc/<pid>/stat` after the command name: `[0]` is the state, `[2]` the pgid, `[19]` the start time.
fn stat_fields(pid: i32) -> Option<Vec<String>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    Some(
        text[text.rfind(')')? + 1..]
            .split_whitespace()
            .map(str::to_owned)
            .collect(),
    )
}

/// Live (non-zombie) members of process group `pgid`.
fn group_members(pgid: i32) -> Vec<Proc> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| {
            let fields = stat_fields(pid)?;
            (fields[0] != "Z" && fields[2] == pgid.to_string()).then(|| Proc {
                pid,
                ticks: fields[19].parse().unwrap(),
            })
        })
        .collect()
}

fn comm(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim()
        .to_owned()
}

/// Whether a process ignores SIGTERM (`SigIgn` in /proc status).
fn ignores_term(pid: i32) -> bool {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("SigIgn:"))
        .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
        .is_some_and(|mask| mask & (1 << (libc::SIGTERM - 1)) != 0)
}

/// Runs all `commands` at once (released together by a barrier) and returns their outputs in order.
fn run_together(commands: Vec<Command>) -> Vec<Output> {
    let barrier = Arc::new(Barrier::new(commands.len()));
    let threads: Vec<_> = commands
        .into_iter()
        .map(|command| {
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                barrier.wait();
                run_bounded(command, None)
            })
        })
        .collect();
    threads
        .into_iter()
        .map(|thread| thread.join().expect("runner thread"))
        .collect()
}

/// The binary against an explicit state root (which may not exist yet).
fn bare(state: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(BIN);
    command
        .arg("--state-dir")
        .arg(state)
        .args(args)
        .stdin(Stdio::null());
    scrub_env(&mut command);
    command
}

/// Every entry under `root` (directories too), with file contents: for "nothing changed" checks.
fn tree(root: &Path) -> Vec<(PathBuf, Option<Vec<u8>>)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let rel = path.strip_prefix(root).unwrap().to_path_buf();
            if entry.file_type().unwrap().is_dir() {
                stack.push(path);
                out.push((rel, None));
            } else {
                out.push((rel, Some(std::fs::read(&path).unwrap_or_default())));
            }
        }
    }
    out.sort();
    out
}

/// A `sleep 600` child of the test leading its own process group, as a broker would.
fn group_leader_sleeper(env: &mut Env) -> Proc {
    let mut command = Command::new("sleep");
    command.arg("600").process_group(0);
    env.spawn(command)
}

/// A small deterministic PRNG (xorshift64*), seeded from the clock and printed, so a failing run can be replayed.
struct Rng(u64);

impl Rng {
    fn new() -> Self {
        let seed = std::env::var("FOUNDATION_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap();
                (now.as_secs() << 30 ^ u64::from(now.subsec_nanos())) | 1
            });
        eprintln!("rng seed {seed} (FOUNDATION_SEED={seed} to replay)");
        Rng(seed)
    }

    fn below(&mut self, bound: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % bound
    }
}

// ---------------------------------------------------------------------------------------------------------------
// 1-4: owner updates are serialised, decided under the lock, atomic on disk
// ---------------------------------------------------------------------------------------------------------------

#[test]
fn eight_concurrent_writers_lose_no_owner_over_fifty_rounds() {
    const WRITERS: usize = 8;
    const ROUNDS: usize = 50;
    let mut env = Env::new();
    let ws = env.workspace("race");
    let broker = env.spawn_broker(&ws, "keeper", &["sleep", "600"]);
    let busy_retries = Arc::new(std::sync::atomic::AtomicUsize::new(0));

    std::thread::scope(|scope| {
        for writer in 0..WRITERS {
            let env = &env;
            let ws = &ws;
            let busy_retries = busy_retries.clone();
            scope.spawn(move || {
                let run = |verb: &str, session: &str| {
                    let args = ["broker", verb, "--cwd", text(ws), "--session", session];
                    // A bounded lock wait may run out on a loaded machine; that is reported (exit 1, "slot busy")
                    // and changes nothing, so it is retried. Anything else is a failure.
                    loop {
                        let out = run_bounded(env.cmd(&args), None);
                        if out.status.success() {
                            return;
                        }
                        assert!(
                            stderr(&out).contains("busy"),
                            "{verb} {session}: {}",
                            stderr(&out)
                        );
                        busy_retries.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    }
                };
                for round in 0..ROUNDS {
                    let session = format!("w{writer}-r{round}");
                    run("attach", &session);
                    run("detach", &session);
                }
                run("attach", &format!("w{writer}-final"));
            });
        }
    });

    let mut expected = set(&["keeper"]);
    expected.extend((0..WRITERS).map(|writer| format!("w{writer}-final")));
    assert_eq!(owners(&read_record(&env, &ws)), expected);
    assert!(broker.alive(), "the broker was never left without an owner");
    assert_eq!(
        events_of(&env, &ws, "owner_add").len(),
        WRITERS * (ROUNDS + 1),
        "one owner_add per attach"
    );
    assert_eq!(
        events_of(&env, &ws, "owner_remove").len(),
        WRITERS * ROUNDS,
        "one owner_remove per detach"
    );
    assert!(events_of(&env, &ws, "stop").is_empty());
    eprintln!(
        "slot-busy retries: {}",
        busy_retries.load(std::sync::atomic::Ordering::SeqCst)
    );
}

#[test]
fn two_last_owners_detaching_at_once_stop_the_broker_exactly_once() {
    let mut env = Env::new();
    for round in 0..5 {
        let ws = env.workspace(&format!("pair{round}"));
        let broker = env.spawn_broker(&ws, "s1", &["sleep", "600"]);
        assert_ok(&env.run(&["broker", "attach", "--cwd", text(&ws), "--session", "s2"]));

        let outs = run_together(
            ["s1", "s2"]
                .iter()
                .map(|session| {
                    env.cmd(&["broker", "detach", "--cwd", text(&ws), "--session", session])
                })
                .collect(),
        );
        for out in &outs {
            assert_ok(out);
        }
        assert!(
            broker.gone_within(PATIENCE),
            "round {round}: broker stopped"
        );
        let stops: Vec<Value> = events_of(&env, &ws, "stop")
            .into_iter()
            .filter(|e| e["pid"] == broker.pid)
            .collect();
        assert_eq!(stops.len(), 1, "round {round}: exactly one stop: {stops:?}");
        assert_eq!(stops[0]["result"], "stopped");
        assert_eq!(
            events_of(&env, &ws, "owner_remove").len(),
            2,
            "round {round}"
        );
        assert!(
            !record_path(&env, &ws).exists(),
            "round {round}: slot emptied"
        );
        let status = env.status();
        assert!(
            status["slots"]
                .as_array()
                .unwrap()
                .iter()
                .all(|s| s["identity"]["pid"] != broker.pid)
        );
        assert!(
            status["tickets"].as_array().unwrap().is_empty(),
            "round {round}: no ticket left"
        );
    }
}

/// One owner change in the SIGKILL test: what the file must hold if it committed.
enum Change {
    Add(String),
    Remove(String),
}

#[test]
fn sigkilled_writers_leave_broker_json_whole_and_old_or_new() {
    const UPDATES: usize = 240;
    let mut env = Env::new();
    let ws = env.workspace("torn");
    let broker = env.spawn_broker(&ws, "keeper", &["sleep", "600"]);
    let mut rng = Rng::new();
    // Kill moments spread over twice a writer's typical run time, measured here (it varies with the machine's load).
    let mut runs: Vec<Duration> = (0..7)
        .map(|_| {
            let started = Instant::now();
            let mut touch = env.cmd(&["broker", "touch", "--cwd", text(&ws)]);
            assert!(touch.stdout(Stdio::null()).status().unwrap().success());
            started.elapsed()
        })
        .collect();
    runs.sort();
    let window = runs[runs.len() / 2];
    let window_us = u64::try_from(window.as_micros()).unwrap().max(1000);
    let mut current = set(&["keeper"]);
    let (mut committed, mut killed_before, mut killed_after, mut left_temp) = (0, 0, 0, 0);

    for update in 0..UPDATES {
        let removable: Vec<String> = current.iter().filter(|s| *s != "keeper").cloned().collect();
        let change = if !removable.is_empty() && rng.below(3) == 0 {
            Change::Remove(
                removable[usize::try_from(rng.below(removable.len() as u64)).unwrap()].clone(),
            )
        } else {
            Change::Add(format!("k{update}"))
        };
        let (verb, session) = match &change {
            Change::Add(id) => ("attach", id.as_str()),
            Change::Remove(id) => ("detach", id.as_str()),
        };
        let mut next = current.clone();
        match &change {
            Change::Add(id) => next.insert(id.clone()),
            Change::Remove(id) => next.remove(id),
        };

        let mut command = env.cmd(&["broker", verb, "--cwd", text(&ws), "--session", session]);
        command.stdout(Stdio::null()).stderr(Stdio::null());
        let mut writer = command.spawn().expect("start writer");
        // The random moment of the kill: anywhere from before exec to after exit.
        std::thread::sleep(Duration::from_micros(rng.below(window_us * 2)));
        let _ = writer.kill(); // our own unreaped child: its pid cannot have been reused
        let status = writer.wait().unwrap();

        let now = owners(&read_record(&env, &ws));
        if status.success() {
            assert_eq!(
                now, next,
                "update {update}: {verb} {session} exited 0 but did not commit"
            );
            committed += 1;
        } else {
            assert_eq!(
                status.signal(),
                Some(libc::SIGKILL),
                "update {update}: writer failed on its own"
            );
            assert!(
                now == current || now == next,
                "update {update}: {verb} {session}: {now:?} is neither old {current:?} nor new {next:?}"
            );
            if now == next {
                killed_after += 1;
            } else {
                killed_before += 1;
            }
            left_temp += usize::from(!temp_files(&env, &ws).is_empty());
        }
        current = now;
    }

    assert!(broker.alive());
    eprintln!(
        "{UPDATES} updates (median run {window:?}): {committed} completed, {killed_after} killed after commit, \
         {killed_before} killed before; {left_temp} kills left a temp file"
    );
    // A temp file left by a killed writer breaks nothing: status shows the one record, the slot still takes
    // updates, and the next write under the lock removes it.
    let dead_temp = slot_dir(&env, &ws, "default").join(".broker.json.tmp-999999-1");
    std::fs::write(&dead_temp, b"{\"version\": 1, \"na").unwrap();
    let slot = status_slot(&mut env, &ws).expect("status lists the slot");
    assert_eq!(owners(&slot), current);
    assert_ok(&env.run(&["broker", "attach", "--cwd", text(&ws), "--session", "after"]));
    current.insert("after".to_owned());
    assert_eq!(owners(&read_record(&env, &ws)), current);
    assert_eq!(env.status()["slots"].as_array().unwrap().len(), 1);
    assert!(
        temp_files(&env, &ws).is_empty(),
        "cleared by the next write"
    );
}

/// Temp files in the default slot of `ws`.
fn temp_files(env: &Env, ws: &Path) -> Vec<String> {
    std::fs::read_dir(slot_dir(env, ws, "default"))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|name| name.contains(".tmp-"))
        .collect()
}

#[test]
fn two_concurrent_spawns_start_one_broker_and_the_other_reuses_it() {
    let mut env = Env::new();
    for round in 0..5 {
        let ws = env.workspace(&format!("twin{round}"));
        let outs = run_together(
            ["a", "b"]
                .iter()
                .map(|session| {
                    env.cmd(&[
                        "broker",
                        "spawn",
                        "--cwd",
                        text(&ws),
                        "--session",
                        session,
                        "--",
                        "sleep",
                        "600",
                    ])
                })
                .collect(),
        );
        let records: Vec<Value> = outs.iter().map(json_of).collect();
        for record in &records {
            env.track(proc_of(record));
        }
        let reused: Vec<bool> = records
            .iter()
            .map(|r| r["reused"].as_bool().expect("reused"))
            .collect();
        assert_eq!(
            reused.iter().filter(|r| **r).count(),
            1,
            "round {round}: one reuse: {reused:?}"
        );
        assert_eq!(
            proc_of(&records[0]),
            proc_of(&records[1]),
            "round {round}: the same broker"
        );
        assert!(proc_of(&records[0]).alive());
        assert_eq!(owners(&read_record(&env, &ws)), set(&["a", "b"]));
        assert_eq!(
            events_of(&env, &ws, "spawn").len(),
            1,
            "round {round}: one child started"
        );
    }
}

// ---------------------------------------------------------------------------------------------------------------
// 5: never signal the wrong process
// ---------------------------------------------------------------------------------------------------------------

/// Spawns a real broker for `s1` in `ws`, kills it, then rewrites its record to name `identity` (pgid = pid), so
/// the slot holds a record that looks like ours but names some other process.
fn plant(env: &mut Env, ws: &Path, identity: &Value) {
    let real = env.spawn_broker(ws, "s1", &["sleep", "600"]);
    real.kill();
    assert!(real.gone_within(PATIENCE));
    let mut record = read_record(env, ws);
    for field in ["boot_id", "pid", "start_ticks", "uid"] {
        if let Some(value) = identity.get(field) {
            record["identity"][field] = value.clone();
        }
    }
    record["pgid"] = record["identity"]["pid"].clone();
    write_record(env, ws, &record);
}

fn own_identity(pid: i32) -> Value {
    let fields = stat_fields(pid).expect("process exists");
    let uid = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|line| {
            line.strip_prefix("Uid:")
                .map(|rest| rest.split_whitespace().next().unwrap().to_owned())
        })
        .unwrap();
    json!({"pid": pid, "start_ticks": fields[19].parse::<u64>().unwrap(), "uid": uid.parse::<u32>().unwrap()})
}

/// What a planted record must lead to.
#[derive(Debug)]
enum Expect {
    /// The identity does not match a live process: status shows it dead, detach prunes it (exit 0).
    Pruned,
    /// The identity is live but must not be signalled: detach refuses (exit 1).
    Refused,
}

fn check_planted(
    env: &mut Env,
    case: &str,
    identity: &Value,
    witness: Option<Proc>,
    expect: &Expect,
) {
    let ws = env.workspace(case);
    plant(env, &ws, identity);
    let slot =
        status_slot(env, &ws).unwrap_or_else(|| panic!("{case}: status lists the planted record"));
    assert_eq!(
        slot["alive"],
        matches!(expect, Expect::Refused),
        "{case}: status alive"
    );

    let out = env.run(&["broker", "detach", "--cwd", text(&ws), "--session", "s1"]);
    let code = out.status.code();
    eprintln!(
        "{case}: detach exit {code:?}: {}{}",
        stdout(&out).trim(),
        stderr(&out).trim()
    );
    match expect {
        Expect::Pruned => {
            assert_eq!(code, Some(0), "{case}");
            let prunes = events_of(env, &ws, "prune");
            assert!(
                prunes.iter().any(|e| e["reason"] == "broker_gone"),
                "{case}: {prunes:?}"
            );
        }
        Expect::Refused => {
            assert_eq!(code, Some(1), "{case}: a refusal is reported");
            assert_eq!(events_of(env, &ws, "refuse").len(), 1, "{case}");
            assert!(
                env.status()["tickets"].as_array().unwrap().is_empty(),
                "{case}: refused ticket dropped"
            );
        }
    }
    assert!(
        events_of(env, &ws, "stop")
            .iter()
            .all(|e| e["result"] == "already_gone"),
        "{case}: nothing stopped"
    );
    assert!(
        !record_path(env, &ws).exists(),
        "{case}: the record is gone from the slot"
    );
    if let Some(witness) = witness {
        assert!(witness.alive(), "{case}: pid {} was signalled", witness.pid);
    }
}

#[test]
fn planted_records_naming_other_processes_are_never_signalled() {
    let mut env = Env::new();
    let me = i32::try_from(std::process::id()).unwrap();
    let parent = i32::try_from(std::os::unix::process::parent_id()).unwrap();
    let bystander = group_leader_sleeper(&mut env);

    let mut reused = own_identity(bystander.pid);
    reused["start_ticks"] = json!(bystander.ticks + 1);
    check_planted(
        &mut env,
        "reused-pid",
        &reused,
        Some(bystander),
        &Expect::Pruned,
    );

    let mut other_boot = own_identity(bystander.pid);
    other_boot["boot_id"] = json!("00000000-0000-0000-0000-000000000000");
    check_planted(
        &mut env,
        "earlier-boot",
        &other_boot,
        Some(bystander),
        &Expect::Pruned,
    );

    check_planted(
        &mut env,
        "pid-zero",
        &json!({"pid": 0}),
        None,
        &Expect::Pruned,
    );
    check_planted(
        &mut env,
        "pid-minus-one",
        &json!({"pid": -1}),
        None,
        &Expect::Pruned,
    );

    // pid 1, the test and its parent with their true identities: live, and refused by the guard.
    let init = Proc::of(1).expect("pid 1");
    let init_expect = if own_identity(1)["uid"] == own_identity(me)["uid"] {
        Expect::Refused
    } else {
        Expect::Pruned
    };
    check_planted(
        &mut env,
        "pid-one",
        &own_identity(1),
        Some(init),
        &init_expect,
    );
    check_planted(
        &mut env,
        "self",
        &own_identity(me),
        Proc::of(me),
        &Expect::Refused,
    );
    check_planted(
        &mut env,
        "parent",
        &own_identity(parent),
        Proc::of(parent),
        &Expect::Refused,
    );

    assert!(bystander.alive());
}

// ---------------------------------------------------------------------------------------------------------------
// 6, 11, 12: the stop cascade
// ---------------------------------------------------------------------------------------------------------------

/// Spawns `script` under `sh -c` as a broker with `--grace 1s`, waits until its leader ignores SIGTERM and its
/// group has two members, and returns (leader, grandchild).
fn term_ignoring_broker(env: &mut Env, ws: &Path, script: &str) -> (Proc, Proc) {
    let out = env.run(&[
        "broker",
        "spawn",
        "--cwd",
        text(ws),
        "--session",
        "s1",
        "--grace",
        "1s",
        "--",
        "sh",
        "-c",
        script,
    ]);
    let leader = proc_of(&json_of(&out));
    // Ready when the leader ignores SIGTERM and the grandchild has exec'd its sleep (so its signal dispositions
    // are final).
    let ready = || {
        let members = group_members(leader.pid);
        ignores_term(leader.pid)
            && members.len() == 2
            && members
                .iter()
                .any(|p| p.pid != leader.pid && comm(p.pid) == "sleep")
    };
    assert!(wait_until(PATIENCE, ready), "the broker set up its group");
    let grandchild = *group_members(leader.pid)
        .iter()
        .find(|p| p.pid != leader.pid)
        .unwrap();
    env.track(grandchild);
    (leader, grandchild)
}

fn detach_timed(env: &mut Env, ws: &Path, session: &str) -> (Output, Duration) {
    let started = Instant::now();
    let out = env.run(&["broker", "detach", "--cwd", text(ws), "--session", session]);
    (out, started.elapsed())
}

#[test]
fn a_broker_ignoring_sigterm_is_sigkilled_with_its_group_after_the_grace() {
    let mut env = Env::new();
    let cases = [
        // The grandchild inherits the ignored SIGTERM.
        (
            "ignoring-grandchild",
            r#"trap "" TERM; sleep 600 & wait"#,
            true,
        ),
        // The grandchild dies of SIGTERM; the leader (an exec'd sleep that inherited the ignore) does not.
        (
            "dying-grandchild",
            r#"trap "" TERM; (trap - TERM; exec sleep 600) & exec sleep 601"#,
            false,
        ),
    ];
    for (case, script, grandchild_ignores) in cases {
        let ws = env.workspace(case);
        let (leader, grandchild) = term_ignoring_broker(&mut env, &ws, script);
        assert_eq!(
            ignores_term(grandchild.pid),
            grandchild_ignores,
            "{case}: the case is what it says"
        );

        let (out, took) = detach_timed(&mut env, &ws, "s1");
        assert_ok(&out);
        eprintln!("{case}: detach took {took:?}: {}", stdout(&out).trim());
        assert!(
            took >= Duration::from_secs(1),
            "{case}: SIGKILL came only after the 1 s grace ({took:?})"
        );
        assert!(
            took < Duration::from_secs(1) + PATIENCE / 2,
            "{case}: bounded ({took:?})"
        );
        assert!(leader.gone_within(PATIENCE), "{case}: leader gone");
        assert!(grandchild.gone_within(PATIENCE), "{case}: grandchild gone");
        let stops = events_of(&env, &ws, "stop");
        assert_eq!(stops.len(), 1, "{case}: {stops:?}");
        assert!(
            stops[0]["detail"].as_str().unwrap().contains("SIGKILL"),
            "{case}: {stops:?}"
        );
        assert!(
            env.status()["tickets"].as_array().unwrap().is_empty(),
            "{case}: ticket closed"
        );
    }
}

#[test]
fn register_adopts_a_running_process_and_the_last_detach_stops_it() {
    let mut env = Env::new();
    let ws = env.workspace("adopt");
    let sleeper = env.sleeper();
    let pid = sleeper.pid.to_string();
    let out = env.run(&[
        "broker",
        "register",
        "--pid",
        &pid,
        "--cwd",
        text(&ws),
        "--session",
        "s1",
    ]);
    let record = json_of(&out);
    assert_eq!(proc_of(&record), sleeper);
    assert_eq!(record["reused"], false);
    assert_eq!(record["command"], json!(["sleep", "600"]));
    assert!(
        record.get("pgid").is_none(),
        "a process in the test's group is not recorded as a group leader"
    );
    assert_eq!(status_slot(&mut env, &ws).expect("listed")["alive"], true);
    assert_eq!(events_of(&env, &ws, "register").len(), 1);

    assert_ok(&env.run(&["broker", "attach", "--cwd", text(&ws), "--session", "s2"]));
    assert_ok(&env.run(&["broker", "detach", "--cwd", text(&ws), "--session", "s1"]));
    assert!(sleeper.alive(), "kept for s2");
    let (out, _) = detach_timed(&mut env, &ws, "s2");
    assert_ok(&out);
    // Our child is a zombie until we reap it; the stop saw it exit through its pidfd.
    env.reap_children();
    assert!(sleeper.gone_within(PATIENCE));
    assert_eq!(events_of(&env, &ws, "stop")[0]["result"], "stopped");
    assert!(status_slot(&mut env, &ws).is_none());
}

#[test]
fn a_record_claiming_a_group_its_process_does_not_lead_still_stops_that_process() {
    let mut env = Env::new();
    let ws = env.workspace("no-group");
    let sleeper = env.sleeper(); // in the test's process group, not leading one
    let pid = sleeper.pid.to_string();
    let args = [
        "broker",
        "register",
        "--pid",
        &pid,
        "--cwd",
        text(&ws),
        "--session",
        "s1",
    ];
    json_of(&env.run(&[&args[..], &["--grace", "1s"]].concat()));
    let mut record = read_record(&env, &ws);
    record["pgid"] = json!(sleeper.pid);
    write_record(&env, &ws, &record);

    let (out, took) = detach_timed(&mut env, &ws, "s1");
    assert_ok(&out);
    env.reap_children();
    assert!(
        sleeper.gone_within(PATIENCE),
        "signalled through its pidfd ({took:?})"
    );
    assert_eq!(events_of(&env, &ws, "stop")[0]["result"], "stopped");
    assert!(env.status()["tickets"].as_array().unwrap().is_empty());
}

/// Spawns `sleep 600` as a broker with these stop flags, detaches its only owner and checks the stop finished in
/// bounded time. Returns the stop event.
fn stop_with(env: &mut Env, ws: &Path, flags: &[&str]) -> Value {
    let mut args = vec![
        "broker",
        "spawn",
        "--cwd",
        text(ws),
        "--session",
        "s1",
        "--grace",
        "5s",
    ];
    args.extend_from_slice(flags);
    args.extend_from_slice(&["--", "sleep", "600"]);
    let broker = proc_of(&json_of(&env.run(&args)));
    let (out, took) = detach_timed(env, ws, "s1");
    assert_ok(&out);
    assert!(
        took < Duration::from_secs(5) + PATIENCE / 2,
        "{flags:?}: bounded ({took:?})"
    );
    assert!(broker.gone_within(PATIENCE), "{flags:?}");
    let stops = events_of(env, ws, "stop");
    assert_eq!(stops.len(), 1, "{flags:?}: {stops:?}");
    eprintln!("{flags:?}: {took:?}, {}", stops[0]["detail"]);
    stops[0].clone()
}

#[test]
fn graceful_shutdown_by_socket_is_bounded_whether_the_listener_reads_or_never_accepts() {
    let mut env = Env::new();

    // A listener that accepts, reads the line, and never answers or closes.
    let reading = env.work.path().join("reading.sock");
    let listener = std::os::unix::net::UnixListener::bind(&reading).unwrap();
    let (lines, received) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        let mut line = String::new();
        BufReader::new(&stream).read_line(&mut line).unwrap();
        lines.send(line).unwrap();
        stream // held open until the thread is joined
    });
    let ws = env.workspace("socket-reads");
    stop_with(
        &mut env,
        &ws,
        &[
            "--shutdown-socket",
            text(&reading),
            "--shutdown-message",
            "please stop",
        ],
    );
    assert_eq!(
        received.recv_timeout(PATIENCE).expect("the line arrived"),
        "please stop\n"
    );
    drop(reader.join().unwrap());

    // A listener that never accepts: the connection waits in its backlog.
    let deaf = env.work.path().join("deaf.sock");
    let _deaf_listener = std::os::unix::net::UnixListener::bind(&deaf).unwrap();
    let ws = env.workspace("socket-deaf");
    stop_with(
        &mut env,
        &ws,
        &[
            "--shutdown-socket",
            text(&deaf),
            "--shutdown-message",
            "stop",
        ],
    );

    // Nobody there at all.
    let ws = env.workspace("socket-missing");
    let missing = env.work.path().join("missing.sock");
    stop_with(
        &mut env,
        &ws,
        &[
            "--shutdown-socket",
            text(&missing),
            "--shutdown-message",
            "stop",
        ],
    );
}

#[test]
fn graceful_shutdown_by_command_stops_a_term_ignoring_broker_and_a_hanging_command_is_cut_off() {
    let mut env = Env::new();

    // The broker ignores SIGTERM and leaves only when the shutdown command drops its stop file, so ending well
    // before the 20 s grace (and without SIGKILL) proves the command did it.
    let ws = env.workspace("command-stops");
    let stop_file = env.work.path().join("stop-now");
    let script = format!(
        r#"trap "" TERM; while [ ! -e '{}' ]; do sleep 0.05; done"#,
        text(&stop_file)
    );
    let command = format!("touch '{}'", text(&stop_file));
    let out = env.run(&[
        "broker",
        "spawn",
        "--cwd",
        text(&ws),
        "--session",
        "s1",
        "--grace",
        "20s",
        "--shutdown-command",
        &command,
        "--",
        "sh",
        "-c",
        &script,
    ]);
    let broker = proc_of(&json_of(&out));
    assert!(wait_until(PATIENCE, || ignores_term(broker.pid)));
    let (out, took) = detach_timed(&mut env, &ws, "s1");
    assert_ok(&out);
    assert!(broker.gone_within(PATIENCE));
    assert!(
        took < Duration::from_secs(20),
        "gone before the grace ran out ({took:?})"
    );
    let stop = &events_of(&env, &ws, "stop")[0];
    assert!(
        !stop["detail"].as_str().unwrap().contains("SIGKILL"),
        "{stop}"
    );

    // A shutdown command that hangs is cut off after its window; the cascade goes on with SIGTERM.
    let ws = env.workspace("command-hangs");
    let helper_pid = env.work.path().join("helper.pid");
    let hanging = format!("echo $$ > '{}'; exec sleep 600", text(&helper_pid));
    let stop = stop_with(&mut env, &ws, &["--shutdown-command", &hanging]);
    assert_eq!(stop["detail"], "SIGTERM", "{stop}");
    // The helper wrote its pid unless a starved machine cut it off even before that; either way it must be gone.
    if let Ok(pid) = std::fs::read_to_string(&helper_pid) {
        let helper: i32 = pid.trim().parse().unwrap();
        let ended = wait_until(PATIENCE, || stat_fields(helper).is_none_or(|f| f[0] == "Z"));
        assert!(ended, "the hanging command was ended");
    }
}

// ---------------------------------------------------------------------------------------------------------------
// 7, 9, 10: bad input changes nothing
// ---------------------------------------------------------------------------------------------------------------

/// Every bad-input case as `broker` arguments. `{ws}` is a real workspace, `{empty}` an empty argument, `{long}`
/// 300 characters, `{space}` "a b" and `{me}` the test's pid.
const BAD_INPUTS: &[&str] = &[
    "spawn --cwd {ws} --session s9 --grace soon -- sleep 600",
    "spawn --cwd {ws} --session s9 --grace 2h -- sleep 600",
    "spawn --cwd {ws} --session s9 --idle-ttl 40days -- sleep 600",
    "spawn --cwd {ws} --session s9 --idle-ttl soon -- sleep 600",
    "spawn --cwd {ws} --session s9 --name ../x -- sleep 600",
    "spawn --cwd {ws} --session s9 sleep 600",
    "spawn --cwd {ws} --session s9 --",
    "spawn --cwd /nonexistent/sr-test/dir --session s9 -- sleep 600",
    "spawn --cwd {ws} --session s9 --shutdown-socket /tmp/x.sock -- sleep 600",
    "spawn --cwd {ws} -- sleep 600",
    "spawn --cwd {ws} --session ../x -- sleep 600",
    "spawn --cwd {ws} --session {empty} -- sleep 600",
    "spawn --cwd {ws} --session {long} -- sleep 600",
    "spawn --cwd {ws} --session {space} -- sleep 600",
    "attach --cwd {ws} --session ../x",
    "attach --cwd {ws} --session {empty}",
    "detach --cwd {ws} --session {long}",
    "detach --cwd {ws} --session {space}",
    "touch --cwd /nonexistent/sr-test/dir",
    "register --pid abc --cwd {ws} --session s9",
    "register --pid 0 --cwd {ws} --session s9",
    "register --pid -1 --cwd {ws} --session s9",
    "register --pid {me} --cwd {ws} --session s9",
    "register --pid 2147483647 --cwd {ws} --session s9",
];

/// The arguments of a `BAD_INPUTS` case.
fn bad_input_args(case: &str, ws: &Path) -> Vec<String> {
    let args = case.split_whitespace().map(|arg| match arg {
        "{ws}" => text(ws).to_owned(),
        "{empty}" => String::new(),
        "{long}" => "a".repeat(300),
        "{space}" => "a b".to_owned(),
        "{me}" => std::process::id().to_string(),
        other => other.to_owned(),
    });
    std::iter::once("broker".to_owned()).chain(args).collect()
}

fn assert_refused_cleanly(out: &Output, case: &str) {
    assert_eq!(
        out.status.code(),
        Some(2),
        "{case}: exit 2; stderr: {}",
        stderr(out)
    );
    let err = stderr(out);
    assert_eq!(
        crate::harness::error_lines(&err),
        1,
        "{case}: exactly one line on stderr: {err:?}"
    );
    assert!(err.ends_with('\n') && err.len() > 20, "{case}: {err:?}");
    assert!(
        out.stdout.is_empty(),
        "{case}: nothing on stdout: {}",
        stdout(out)
    );
}

#[test]
fn bad_input_exits_2_with_one_line_and_changes_nothing() {
    let mut env = Env::new();
    let ws = env.workspace("bad");
    for (existing, label) in [(false, "fresh root"), (true, "existing root")] {
        let state = if existing {
            env.state_dir().to_path_buf()
        } else {
            env.work.path().join("fresh-state")
        };
        if existing {
            env.spawn_broker(&ws, "s1", &["sleep", "600"]);
        }
        let before = tree(&state);
        for case in BAD_INPUTS {
            let args = bad_input_args(case, &ws);
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let shown = format!("{label}: {case}");
            let out = run_bounded(bare(&state, &args), None);
            assert_refused_cleanly(&out, &shown);
            assert!(
                existing || !state.exists(),
                "{shown}: the state root was created"
            );
            assert!(tree(&state) == before, "{shown}: the state root changed");
        }
    }
}

#[test]
fn a_corrupt_broker_json_is_moved_aside_reported_and_the_next_spawn_works() {
    let mut env = Env::new();
    let ws = env.workspace("corrupt");
    env.spawn_broker(&ws, "s1", &["sleep", "600"]);
    let garbage = b"{\"version\": 1, \"owners\": [tr";
    std::fs::write(record_path(&env, &ws), garbage).unwrap();

    // status reads without a lock and leaves the corrupt file where it is. (It is not fully read-only: it creates
    // `finisher.lock` at the root, so only the slot is compared.)
    let slot = slot_dir(&env, &ws, "default");
    let before = tree(&slot);
    assert!(status_slot(&mut env, &ws).is_none());
    assert!(
        tree(&slot) == before,
        "status left the corrupt record alone"
    );

    let out = env.run(&[
        "broker",
        "spawn",
        "--cwd",
        text(&ws),
        "--session",
        "s2",
        "--",
        "sleep",
        "600",
    ]);
    let record = json_of(&out);
    assert!(
        stderr(&out).contains("corrupt"),
        "reported on stderr: {}",
        stderr(&out)
    );
    assert_eq!(stderr(&out).lines().count(), 1);
    assert_eq!(record["reused"], false, "a new broker");
    assert_eq!(owners(&record), set(&["s2"]));
    assert!(proc_of(&record).alive());
    assert_eq!(owners(&read_record(&env, &ws)), set(&["s2"]));

    let aside: Vec<PathBuf> = std::fs::read_dir(slot_dir(&env, &ws, "default"))
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with("broker.json.corrupt-")
        })
        .collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
    assert_eq!(std::fs::read(&aside[0]).unwrap(), garbage, "kept as it was");
    let corrupt = events_of(&env, &ws, "corrupt");
    assert_eq!(corrupt.len(), 1);
    assert!(
        corrupt[0]["detail"]
            .as_str()
            .unwrap()
            .contains("broker.json.corrupt-"),
        "{corrupt:?}"
    );
}

#[test]
fn a_version_2_record_is_refused_and_left_byte_for_byte() {
    let mut env = Env::new();
    let ws = env.workspace("future");
    let broker = env.spawn_broker(&ws, "s1", &["sleep", "600"]);
    let mut record = read_record(&env, &ws);
    record["version"] = json!(2);
    record["owners_v2"] = json!({"s1": {"weight": 1}});
    write_record(&env, &ws, &record);
    let sleeper = env.sleeper();
    let sleeper_pid = sleeper.pid.to_string();

    let before = env.state_files();
    let commands: [&[&str]; 5] = [
        &["spawn", "--session", "s2", "--", "sleep", "600"],
        &["attach", "--session", "s2"],
        &["detach", "--session", "s1"],
        &["touch"],
        &["register", "--pid", &sleeper_pid, "--session", "s2"],
    ];
    for command in commands {
        let mut args = vec!["broker", command[0], "--cwd", text(&ws)];
        args.extend_from_slice(&command[1..]);
        let out = env.run(&args);
        assert_refused_cleanly(&out, &args.join(" "));
        assert!(stderr(&out).contains("version 2"), "{}", stderr(&out));
        assert!(
            env.state_files() == before,
            "{args:?}: the state root changed"
        );
    }
    assert!(broker.alive() && sleeper.alive(), "nothing was stopped");
}

#[test]
fn detach_of_an_ended_session_is_not_refused() {
    let mut env = Env::new();
    let ws = env.workspace("ended");
    let broker = env.spawn_broker(&ws, "s1", &["sleep", "600"]);
    assert_ok(&env.run(&["broker", "attach", "--cwd", text(&ws), "--session", "s2"]));
    let tombstone = json!({
        "version": 1, "session_id": "s2", "agent": "claude", "cwd": text(&ws),
        "started_at": "2026-01-01T00:00:00.000Z", "last_seen": "2026-01-01T00:00:00.000Z",
        "ended_at": "2026-01-01T01:00:00.000Z", "end_reason": "manual"
    });
    std::fs::write(
        env.state_dir().join("sessions/s2.json"),
        tombstone.to_string(),
    )
    .unwrap();

    let out = env.run(&["broker", "attach", "--cwd", text(&ws), "--session", "s2"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "an ended session is never made an owner"
    );
    assert_ok(&env.run(&["broker", "detach", "--cwd", text(&ws), "--session", "s2"]));
    assert_eq!(owners(&read_record(&env, &ws)), set(&["s1"]));
    assert!(broker.alive());
}

// ---------------------------------------------------------------------------------------------------------------
// 8: the issue's "done when" walk-through
// ---------------------------------------------------------------------------------------------------------------

#[test]
fn walkthrough_spawn_reuse_detach_keep_detach_stop() {
    let mut env = Env::new();
    let ws = env.workspace("walk");
    let spawn = |env: &mut Env, session: &str| {
        json_of(&env.run(&[
            "broker",
            "spawn",
            "--cwd",
            text(&ws),
            "--session",
            session,
            "--grace",
            "3s",
            "--",
            "sleep",
            "600",
        ]))
    };

    let first = spawn(&mut env, "s1");
    assert_eq!(first["reused"], false);
    assert_eq!(owners(&first), set(&["s1"]));
    let broker = proc_of(&first);
    assert!(broker.alive());
    let slot = status_slot(&mut env, &ws).expect("listed");
    assert_eq!(
        (slot["alive"].clone(), owners(&slot)),
        (json!(true), set(&["s1"]))
    );
    assert_eq!(slot["grace_ms"], 3000);
    assert_eq!(slot["pgid"], broker.pid, "spawned in its own session");

    let second = spawn(&mut env, "s2");
    assert_eq!(second["reused"], true);
    assert_eq!(proc_of(&second), broker);
    assert_eq!(owners(&second), set(&["s1", "s2"]));
    assert_eq!(
        owners(&status_slot(&mut env, &ws).unwrap()),
        set(&["s1", "s2"])
    );

    let out = env.run(&["broker", "detach", "--cwd", text(&ws), "--session", "s1"]);
    assert_ok(&out);
    assert!(broker.alive(), "kept for s2");
    let slot = status_slot(&mut env, &ws).expect("still listed");
    assert_eq!(
        (slot["alive"].clone(), owners(&slot)),
        (json!(true), set(&["s2"]))
    );

    let (out, took) = detach_timed(&mut env, &ws, "s2");
    assert_ok(&out);
    assert!(broker.gone_within(PATIENCE));
    eprintln!("last detach took {took:?}: {}", stdout(&out).trim());
    assert!(took < Duration::from_secs(3) + PATIENCE / 2, "{took:?}");
    let status = env.status();
    assert!(status["slots"].as_array().unwrap().is_empty(), "{status}");
    assert!(status["tickets"].as_array().unwrap().is_empty(), "{status}");
    let stops = events_of(&env, &ws, "stop");
    assert_eq!(
        (stops.len(), stops[0]["result"].clone()),
        (1, json!("stopped")),
        "{stops:?}"
    );
    assert_eq!(stops[0]["reason"], "manual");
}

// ---------------------------------------------------------------------------------------------------------------
// Backward compatibility: the checked-in v1 records
// ---------------------------------------------------------------------------------------------------------------

fn fixture(rel: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/state/v1")
        .join(rel);
    std::fs::read(&path).unwrap_or_else(|err| panic!("{}: {err}", path.display()))
}

fn make_dirs(dir: &Path) {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .unwrap();
}

/// The fixture record's fields, except those made live for this machine and those a rewrite is meant to change.
fn stable_fields(record: &Value) -> Value {
    let mut record = record.clone();
    let fields = "workspace cwd identity pgid host shutdown owners last_active last_active_boot_ms";
    for field in fields.split(' ') {
        record.as_object_mut().unwrap().remove(field);
    }
    record
}

const FIXTURE_SESSION: &str = "0b5f6b3e-1ad7-454b-b79c-2a700b021481";
const FIXTURE_SESSION_FILE: &str = "sessions/0b5f6b3e-1ad7-454b-b79c-2a700b021481.json";
const FIXTURE_TICKET: &str = "stopping/5f0c2d3a-4243-1234999.json";

/// Copies the v1 fixtures into the state root under the contract's layout. The broker record is made to name
/// `broker` (a live process of ours) on this host, in `ws` entered from `cwd`; every other field is the fixture's.
/// Returns the record as planted.
fn install_fixtures(env: &Env, ws: &Path, cwd: &Path, broker: Proc) -> Value {
    for dir in ["sessions", "stopping"] {
        make_dirs(&env.state_dir().join(dir));
    }
    for file in [FIXTURE_SESSION_FILE, FIXTURE_TICKET] {
        std::fs::write(env.state_dir().join(file), fixture(file)).unwrap();
    }
    let mut planted: Value = serde_json::from_slice(&fixture("broker.json")).unwrap();
    planted["workspace"] = json!(text(ws));
    planted["cwd"] = json!(text(cwd));
    planted["identity"] = json!({
        "boot_id": std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap().trim(),
        "pid": broker.pid, "start_ticks": broker.ticks, "uid": own_identity(broker.pid)["uid"],
    });
    planted["pgid"] = json!(broker.pid);
    planted["host"] = json!(hostname());
    planted["shutdown"]["socket"] = json!(text(&env.work.path().join("no-such.sock")));
    make_dirs(&slot_dir(env, ws, "default"));
    write_record(env, ws, &planted);
    planted
}

/// The session and ticket fixtures are byte-for-byte as checked in.
fn assert_fixtures_untouched(env: &Env) {
    for file in [FIXTURE_SESSION_FILE, FIXTURE_TICKET] {
        assert_eq!(
            std::fs::read(env.state_dir().join(file)).unwrap(),
            fixture(file),
            "{file}"
        );
    }
}

#[test]
fn v1_fixture_records_are_read_and_rewrites_keep_unknown_fields() {
    let mut env = Env::new();
    let ws = env.workspace("app");
    let server = ws.join("server");
    make_dirs(&server);
    let original: Value = serde_json::from_slice(&fixture("broker.json")).unwrap();
    let broker = group_leader_sleeper(&mut env);
    let planted = install_fixtures(&env, &ws, &server, broker);

    // status reads all three as they are.
    let status = env.status();
    let slot = status["slots"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["workspace"] == text(&ws));
    let slot = slot.expect("slot listed");
    assert_eq!(slot["alive"], true);
    assert_eq!(slot["x_future"], original["x_future"]);
    assert_eq!(slot["owners"], original["owners"]);
    let sessions = status["sessions"].as_array().unwrap();
    let session = sessions.iter().find(|s| s["session"] == FIXTURE_SESSION);
    let session = session.expect("session listed");
    assert_eq!(
        session["x_model"],
        "a session field this build does not know"
    );
    assert_eq!(session["title"], "fix the login form");
    let ticket = &status["tickets"][0];
    assert_eq!(ticket["alive"], false);
    assert_eq!(ticket["attempts"], 1);
    assert_eq!(
        ticket["x_retry_policy"],
        "a ticket field this build does not know"
    );
    assert_fixtures_untouched(&env);

    // A rewrite keeps every field it does not own, at the top level and inside an owner.
    let cwd = text(&server);
    assert_ok(&env.run(&["broker", "attach", "--cwd", cwd, "--session", "s2"]));
    let rewritten = read_record(&env, &ws);
    assert_eq!(stable_fields(&rewritten), stable_fields(&original));
    assert_eq!(rewritten["owners"][0], original["owners"][0]);
    assert_eq!(rewritten["owners"][1]["session"], "s2");
    assert_eq!(rewritten["shutdown"], planted["shutdown"]);
    assert_eq!(rewritten["cwd"], planted["cwd"]);
    assert_ok(&env.run(&["broker", "detach", "--cwd", cwd, "--session", "s2"]));
    let rewritten = read_record(&env, &ws);
    assert_eq!(stable_fields(&rewritten), stable_fields(&original));
    assert_eq!(rewritten["owners"], original["owners"]);
    assert_fixtures_untouched(&env);

    // And the old record still drives a stop.
    let out = env.run(&[
        "broker",
        "detach",
        "--cwd",
        cwd,
        "--session",
        FIXTURE_SESSION,
    ]);
    assert_ok(&out);
    env.reap_children();
    assert!(broker.gone_within(PATIENCE));
    assert!(!record_path(&env, &ws).exists());
    assert_fixtures_untouched(&env);
}

fn hostname() -> String {
    let mut buf = [0u8; 256];
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    assert_eq!(rc, 0);
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// A command that changes nothing in a slot does not rewrite its record: same inode, same bytes.
#[test]
fn a_slot_is_not_rewritten_when_nothing_changed() {
    use std::os::unix::fs::MetadataExt;
    let mut env = Env::new();
    let ws = env.workspace("quiet");
    let broker = env.spawn_broker(&ws, "s1", &["sleep", "600"]);
    let record_file = walk_broker_json(env.state_dir())
        .into_iter()
        .next()
        .expect("broker.json");
    let before = std::fs::metadata(&record_file).unwrap();
    let bytes = std::fs::read(&record_file).unwrap();
    for args in [
        vec![
            "broker",
            "detach",
            "--cwd",
            ws.to_str().unwrap(),
            "--session",
            "not-an-owner",
        ],
        vec!["status", "--json"],
        vec!["sweep"],
    ] {
        let out = env.run(&args);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        let after = std::fs::metadata(&record_file).unwrap();
        assert_eq!(
            (after.ino(), after.mtime_nsec()),
            (before.ino(), before.mtime_nsec()),
            "{args:?} rewrote it"
        );
        assert_eq!(std::fs::read(&record_file).unwrap(), bytes, "{args:?}");
    }
    assert!(broker.alive());
}

fn walk_broker_json(state: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    for workspace in std::fs::read_dir(state.join("workspaces"))
        .unwrap()
        .flatten()
    {
        for slot in std::fs::read_dir(workspace.path()).unwrap().flatten() {
            let path = slot.path().join("broker.json");
            if path.exists() {
                found.push(path);
            }
        }
    }
    found
}

// ---------------------------------------------------------------------------------------------------------------
// A killed launcher (issue 18): the broker waits in an exec stub of ours until its record is written
// ---------------------------------------------------------------------------------------------------------------

/// The processes of this test's state root (brokers and their exec stubs, by their environment mark) that no slot
/// records: what a killed launcher must never leave running.
fn unrecorded_brokers(env: &Env) -> Vec<Proc> {
    let recorded: Vec<Proc> = env.records().values().map(proc_of).collect();
    crate::harness::marked_with_state_root(env.state_dir())
        .into_iter()
        .filter(|proc| !recorded.contains(proc))
        .collect()
}

/// Polls until no broker of the state root runs unrecorded; panics, naming them, if one still does at `PATIENCE`.
fn assert_none_unrecorded(env: &Env, case: &str) {
    if !wait_until(PATIENCE, || unrecorded_brokers(env).is_empty()) {
        let left: Vec<String> = unrecorded_brokers(env)
            .iter()
            .map(|proc| {
                let argv = std::fs::read(format!("/proc/{}/cmdline", proc.pid)).unwrap_or_default();
                format!(
                    "{} `{}`",
                    proc.pid,
                    String::from_utf8_lossy(&argv).replace('\0', " ")
                )
            })
            .collect();
        panic!("{case}: brokers run unrecorded: {left:?}");
    }
}

/// `broker spawn` killed before it writes the record leaves nothing running: its broker waits in the exec stub,
/// which reads EOF when the launcher dies and exits without running the command. The launcher runs under
/// `RLIMIT_FSIZE` 0 on an existing state root, so the kernel kills it (SIGXFSZ) at its first file write — the
/// record's — exactly: the same death as a SIGKILL at that point, without a race to win.
#[test]
fn a_launcher_killed_before_the_record_leaves_no_broker_running() {
    let mut env = Env::new();
    let ws = env.workspace("unrecorded");
    assert_ok(&env.run(&["status"]));
    let started = env.work.path().join("broker-started");
    let script = format!(": > {}; exec sleep 600", started.display());
    let mut command = env.cmd(&[
        "broker",
        "spawn",
        "--cwd",
        text(&ws),
        "--no-owner",
        "--",
        "sh",
        "-c",
        &script,
    ]);
    // SAFETY: getrlimit/setrlimit are async-signal-safe. No core file either (SIGXFSZ dumps core by default).
    unsafe {
        command.pre_exec(|| {
            for resource in [libc::RLIMIT_FSIZE, libc::RLIMIT_CORE] {
                let mut limit = std::mem::zeroed::<libc::rlimit>();
                if libc::getrlimit(resource, &raw mut limit) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                limit.rlim_cur = 0;
                if libc::setrlimit(resource, &raw const limit) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let out = env.run_command(command);
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGXFSZ),
        "setting up: the launcher must die at its first file write: {:?} {}",
        out.status,
        stderr(&out)
    );
    assert!(
        !record_path(&env, &ws).exists(),
        "setting up: killed before the record"
    );
    assert_none_unrecorded(&env, "killed before the record");
    assert!(
        !started.exists(),
        "the broker command never ran: it was not recorded"
    );
    // The next spawn in the slot works (the dead launcher's temp file is cleared by its write).
    let broker = env.spawn_broker(&ws, "next", &["sleep", "600"]);
    assert!(broker.alive());
    assert!(temp_files(&env, &ws).is_empty());
}

/// `broker spawn --wait` killed by SIGKILL while it watches a broker that never exits: the record was written
/// before the broker ran, so it names the running broker, nothing runs unrecorded, and ending the owning session
/// stops it.
#[test]
fn a_launcher_sigkilled_while_it_waits_leaves_a_recorded_broker_its_session_stops() {
    let mut env = Env::new();
    let ws = env.workspace("waited");
    let session = format!("waiter-{}", std::process::id());
    let mut command = env.cmd(&[
        "broker",
        "spawn",
        "--wait=600s",
        "--cwd",
        text(&ws),
        "--session",
        &session,
        "--",
        "sh",
        "-c",
        "exec sleep 600",
    ]);
    command.stdout(Stdio::null()).stderr(Stdio::null());
    let mut launcher = command.spawn().expect("start broker spawn");
    // Recorded, then exec'd: the recorded pid runs `sleep` (the stub's pid and start time, kept by the exec).
    let mut broker = None;
    let exec_d = wait_until(PATIENCE, || {
        let Some(record) = std::fs::read(record_path(&env, &ws))
            .ok()
            .and_then(|bytes| serde_json::from_slice::<Value>(&bytes).ok())
        else {
            return false;
        };
        let proc = proc_of(&record);
        broker = Some(proc);
        proc.alive() && comm(proc.pid) == "sleep"
    });
    assert!(
        exec_d,
        "the broker is recorded while its launcher still waits, then runs: {broker:?}"
    );
    let broker = broker.unwrap();
    env.track(broker);
    assert_eq!(
        launcher.try_wait().unwrap(),
        None,
        "setting up: the launcher is still waiting"
    );
    launcher.kill().unwrap(); // our own unreaped child: its pid cannot have been reused
    assert_eq!(launcher.wait().unwrap().signal(), Some(libc::SIGKILL));
    assert_none_unrecorded(&env, "SIGKILLed while it waits");
    assert_eq!(proc_of(&read_record(&env, &ws)), broker);
    assert_eq!(owners(&read_record(&env, &ws)), set(&[&session]));
    assert_ok(&env.run(&["reap", "--session", &session]));
    assert!(
        broker.gone_within(PATIENCE),
        "ending the owning session stops the broker"
    );
}

/// `broker spawn` killed by SIGKILL at random moments of its life, from before its exec to after its exit: after
/// each kill, every broker of the state root is recorded (or gone) — never one running unrecorded.
#[test]
fn launchers_sigkilled_at_random_moments_never_leave_a_broker_unrecorded() {
    const ROUNDS: usize = 30;
    let env = Env::new();
    let ws = env.workspace("random-kills");
    let mut rng = Rng::new();
    let spawn_named = |env: &Env, name: &str| {
        let mut command = env.cmd(&[
            "broker",
            "spawn",
            "--cwd",
            text(&ws),
            "--name",
            name,
            "--no-owner",
            "--",
            "sleep",
            "600",
        ]);
        command.stdout(Stdio::null()).stderr(Stdio::null());
        command
    };
    // Kill moments spread over a launcher's typical run time, measured here (it varies with the load).
    let mut runs: Vec<Duration> = (0..5)
        .map(|round| {
            let started = Instant::now();
            assert!(
                spawn_named(&env, &format!("m{round}"))
                    .status()
                    .unwrap()
                    .success()
            );
            started.elapsed()
        })
        .collect();
    runs.sort();
    let window = runs[runs.len() / 2];
    let window_us = u64::try_from(window.as_micros()).unwrap().max(1000);
    let (mut nothing_ran, mut recorded_never_ran, mut recorded_running, mut completed) =
        (0, 0, 0, 0);
    for round in 0..ROUNDS {
        let name = format!("r{round}");
        let mut launcher = spawn_named(&env, &name)
            .spawn()
            .expect("start broker spawn");
        // The random moment of the kill (not a wait for anything): from before its exec to after its exit.
        std::thread::sleep(Duration::from_micros(rng.below(window_us)));
        let _ = launcher.kill(); // our own unreaped child: its pid cannot have been reused
        let status = launcher.wait().unwrap();
        assert_none_unrecorded(&env, &format!("round {round} ({status:?})"));
        let recorded = env
            .records()
            .into_values()
            .find(|record| record["name"] == name.as_str())
            .map(|record| proc_of(&record));
        match (status.success(), recorded) {
            (true, Some(broker)) => {
                assert!(
                    broker.alive(),
                    "round {round}: a completed spawn's broker runs"
                );
                completed += 1;
            }
            (false, Some(broker)) if broker.alive() => recorded_running += 1,
            // Killed between the record and `go`: the stub exited, the record names a gone process (`STALE`).
            (false, Some(_)) => recorded_never_ran += 1,
            (false, None) => nothing_ran += 1,
            (true, None) => panic!("round {round}: exited 0 without a record"),
        }
        for record in env.records().values() {
            proc_of(record).kill();
        }
    }
    eprintln!(
        "{ROUNDS} launchers killed at random (median run {window:?}): {completed} completed, {recorded_running} \
         killed with their broker recorded and running, {recorded_never_ran} killed between the record and `go` \
         (nothing ran), {nothing_ran} killed before the record (nothing ran)"
    );
}
