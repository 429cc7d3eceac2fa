//! Slots and the owner index: unreadable records are occupied, never empty; read-only commands and dry runs change
//! nothing (the state root is compared byte for byte and by metadata); a session's end visits only the slots its
//! owner index names; the index protocol holds under concurrent attaches, ends and sweeps.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde_json::{Value, json};

use crate::harness::{Env, PATIENCE, Proc, stderr, stdout, wait_until};
use crate::hook_test::HookTest;
use crate::sweep::unique_id;

fn text(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

fn fixture(rel: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/state")
        .join(rel);
    std::fs::read(&path).unwrap_or_else(|err| panic!("{}: {err}", path.display()))
}

/// Every entry below `root` with its type, mode, owner, size, mtime and (for files) contents: what "nothing
/// changed" means here.
/// Mode, owner, size, mtime (s, ns) and contents of one entry.
type Entry = (u32, u32, u64, i64, i64, Vec<u8>);

fn fingerprint(root: &Path) -> BTreeMap<PathBuf, Entry> {
    let mut seen = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.map(Result::unwrap) {
            let path = entry.path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let contents = if meta.is_file() {
                std::fs::read(&path).unwrap_or_default()
            } else {
                Vec::new()
            };
            if meta.is_dir() {
                stack.push(path.clone());
            }
            seen.insert(
                path.strip_prefix(root).unwrap().to_path_buf(),
                (
                    meta.mode(),
                    meta.uid(),
                    meta.len(),
                    meta.mtime(),
                    meta.mtime_nsec(),
                    contents,
                ),
            );
        }
    }
    seen
}

fn slot_dir(env: &Env, record: &Value) -> PathBuf {
    let workspaces = env.state_dir().join("workspaces");
    for workspace in std::fs::read_dir(&workspaces).unwrap().map(Result::unwrap) {
        let dir = workspace.path().join(record["name"].as_str().unwrap());
        if let Ok(bytes) = std::fs::read(dir.join("broker.json"))
            && let Ok(value) = serde_json::from_slice::<Value>(&bytes)
            && value["identity"] == record["identity"]
        {
            return dir;
        }
    }
    panic!("no slot holds {record}");
}

fn hook(env: &mut Env, event: &str, session: &str, cwd: &Path, agent: Option<Proc>) -> Output {
    let test = HookTest::new(event, session, cwd);
    match agent {
        Some(agent) => test.owner(agent),
        None => test,
    }
    .run(env)
}

fn sweep_json(env: &mut Env, flags: &[&str]) -> Value {
    let mut args = vec!["sweep", "--json"];
    args.extend_from_slice(flags);
    let out = env.run(&args);
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|err| panic!("sweep --json ({err}): {}{}", stdout(&out), stderr(&out)))
}

/// A live broker whose record was replaced by one this build refuses (a newer version, or a file another user
/// owns) is never taken for a lost broker: the sweep reports the slot and leaves the broker running, and `status`
/// shows the slot as unreadable without writing anything.
#[test]
fn a_refused_record_keeps_its_live_broker_running_through_sweeps() {
    for case in ["version 2", "foreign owner"] {
        let mut env = Env::new();
        let ws = env.workspace("refused");
        let session = unique_id("refused");
        let (broker, record) = env.spawn_broker_with(&ws, &session, &[], &["sleep", "600"]);
        let dir = slot_dir(&env, &record);
        let path = dir.join("broker.json");
        match case {
            "version 2" => {
                let mut newer: Value = serde_json::from_slice(&fixture("v2/broker.json")).unwrap();
                newer["identity"] = record["identity"].clone();
                newer["workspace"] = json!(text(&ws));
                std::fs::write(&path, serde_json::to_vec_pretty(&newer).unwrap()).unwrap();
            }
            _ => std::os::unix::fs::chown(&path, Some(65534), Some(65534))
                .expect("chown needs root: the tests run as root"),
        }
        for round in 0..3 {
            let report = sweep_json(&mut env, &[]);
            assert!(
                broker.alive(),
                "{case}, sweep {round}: the broker was stopped: {report}"
            );
            let problems = report["problems"].to_string();
            assert!(
                problems.contains(if case == "version 2" {
                    "version 2"
                } else {
                    "uid"
                }),
                "{case}: the sweep reports the slot: {report}"
            );
            assert!(
                !report["actions"].to_string().contains("unrecorded"),
                "{case}: never unrecorded: {report}"
            );
        }
        let before = fingerprint(env.state_dir());
        let status = env.status();
        assert_eq!(fingerprint(env.state_dir()), before, "{case}: status wrote");
        assert!(
            status["unreadable"]
                .to_string()
                .contains(dir.file_name().unwrap().to_str().unwrap()),
            "{case}: status shows the slot as unreadable: {status}"
        );
        assert!(status["slots"].as_array().unwrap().is_empty(), "{status}");
        // A session's end cannot take the owner out of a record it cannot read: it reports, changes nothing.
        hook(&mut env, "SessionEnd", &session, &ws, None);
        assert!(broker.alive(), "{case}: SessionEnd stopped the broker");
        assert!(path.exists(), "{case}: the record stays");
        std::os::unix::fs::chown(&path, Some(0), Some(0)).unwrap();
        broker.kill();
    }
}

/// A state root with a bit of everything, read by every read-only command and every dry run: not one byte,
/// mode or timestamp changes, and nothing is created or renamed.
#[test]
fn read_only_commands_and_dry_runs_change_nothing() {
    let mut env = Env::new();
    let agent = env.sleeper();
    let ws = env.workspace("look");
    let other = env.workspace("look-other");
    let session = unique_id("look");
    hook(&mut env, "SessionStart", &session, &ws, Some(agent));
    let (_broker, record) = env.spawn_broker_with(&ws, &session, &[], &["sleep", "600"]);
    env.spawn_broker(&other, &session, &["sleep", "600"]);
    let dir = slot_dir(&env, &record);
    // A corrupt record in a second slot, a corrupt ticket, a corrupt session record, a newer-version one.
    let corrupt_slot = dir.parent().unwrap().join("corrupt");
    std::fs::create_dir(&corrupt_slot).unwrap();
    std::fs::set_permissions(&corrupt_slot, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::write(
        corrupt_slot.join("broker.json"),
        b"{\"version\": 1, \"owners\": [tr",
    )
    .unwrap();
    std::fs::write(
        env.state_dir().join("stopping/ab12cd34-1-1.json"),
        b"not json",
    )
    .unwrap();
    std::fs::write(env.state_dir().join("sessions/broken.json"), b"{").unwrap();
    std::fs::write(
        env.state_dir().join("sessions/future.json"),
        br#"{"version": 9, "session_id": "future"}"#,
    )
    .unwrap();
    let before = fingerprint(env.state_dir());
    let commands: [&[&str]; 14] = [
        &["status"],
        &["status", "--json"],
        &["doctor"],
        &["doctor", "--json"],
        &["log"],
        &["log", "--json"],
        &["log", "--session", &session],
        &["sweep", "--dry-run"],
        &["sweep", "--dry-run", "--json"],
        &["reap", "--session", &session, "--dry-run"],
        &["reap", "--session", &session, "--dry-run", "--json"],
        &["reap", "--all", "--reason", "shutdown", "--dry-run"],
        &["sweep", "--dry-run", "--idle-ttl", "1s"],
        &["status"],
    ];
    for args in commands {
        let out = env.run(args);
        assert!(out.status.code().is_some(), "{args:?} was killed: {out:?}");
        let after = fingerprint(env.state_dir());
        let changed: BTreeSet<&PathBuf> = before
            .keys()
            .chain(after.keys())
            .filter(|path| before.get(*path) != after.get(*path))
            .collect();
        assert!(changed.is_empty(), "{args:?} changed {changed:?}");
    }
    // And the dry runs say what a real run would do, from the same decisions.
    let dry = sweep_json(&mut env, &["--dry-run"]);
    assert!(
        dry["actions"].to_string().contains("would move aside"),
        "the corrupt slot would be moved aside: {dry}"
    );
    let real = sweep_json(&mut env, &[]);
    assert!(
        real["actions"].to_string().contains("moved aside"),
        "and a real sweep does: {real}"
    );
}

/// A root that does not exist yet stays non-existent after a look; one missing its sub-directories stays so.
#[test]
fn looking_at_a_missing_or_bare_root_creates_nothing() {
    let env = Env::new();
    let missing = env.state_dir().join("not-yet");
    for args in [
        &["status"][..],
        &["sweep", "--dry-run"],
        &["log"],
        &["reap", "--all", "--reason", "shutdown", "--dry-run"],
    ] {
        let mut command = Command::new(crate::harness::BIN);
        command.arg("--state-dir").arg(&missing).args(args);
        crate::harness::scrub_env(&mut command);
        let out = crate::harness::run_bounded(command, None);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {out:?}");
        assert!(!missing.exists(), "{args:?} created the root");
    }
    let before = fingerprint(env.state_dir());
    for args in [&["status"][..], &["sweep", "--dry-run"], &["doctor"]] {
        let mut command = Command::new(crate::harness::BIN);
        command.arg("--state-dir").arg(env.state_dir()).args(args);
        crate::harness::scrub_env(&mut command);
        let _ = crate::harness::run_bounded(command, None);
        assert_eq!(
            fingerprint(env.state_dir()),
            before,
            "{args:?} wrote into a bare root"
        );
    }
}

/// A session's end visits the slots its owner index names and no other: another workspace's slot whose lock is
/// held forever neither delays it nor shows up as a problem.
#[test]
fn a_session_end_visits_only_the_slots_it_owns() {
    let mut env = Env::new();
    let agent = env.sleeper();
    let mine = env.workspace("mine");
    let busy = env.workspace("busy");
    let session = unique_id("owner");
    let stranger = unique_id("stranger");
    hook(&mut env, "SessionStart", &session, &mine, Some(agent));
    let broker = env.spawn_broker(&mine, &session, &["sleep", "600"]);
    let (other_broker, other_record) =
        env.spawn_broker_with(&busy, &stranger, &[], &["sleep", "600"]);
    let lock = slot_dir(&env, &other_record).join("broker.lock");
    let mut holder = Command::new("flock");
    holder.arg("--exclusive").arg(&lock).args(["sleep", "600"]);
    let holder = env.spawn(holder);
    assert!(
        wait_until(PATIENCE, || {
            std::fs::File::open(&lock).is_ok_and(|file| file.try_lock().is_err())
        }),
        "the lock holder never took the lock"
    );
    assert!(
        env.session_record(&session)
            .expect("the session is recorded")["slots"]
            .as_array()
            .unwrap()
            .len()
            == 1,
        "the owner index names the one slot: {}",
        env.session_record(&session)
            .expect("the session is recorded")
    );
    let started = Instant::now();
    let out = hook(&mut env, "SessionEnd", &session, &mine, None);
    let took = started.elapsed();
    eprintln!("SessionEnd with another slot locked: {took:?}");
    assert!(
        stderr(&out).is_empty(),
        "no problem reported: {}",
        stderr(&out)
    );
    assert!(broker.gone_within(PATIENCE), "its own broker stopped");
    assert!(other_broker.alive() && holder.alive());
    assert!(
        env.events_where("error", None).is_empty(),
        "no busy slot was met: {:?}",
        env.events()
    );
}

/// Owners that a live session's index lacks (records from before the index) are indexed by the sweep, so the
/// session's end finds them.
#[test]
fn the_sweep_repairs_a_missing_index_entry() {
    let mut env = Env::new();
    let agent = env.sleeper();
    let ws = env.workspace("repair");
    let session = unique_id("repair");
    hook(&mut env, "SessionStart", &session, &ws, Some(agent));
    let broker = env.spawn_broker(&ws, &session, &["sleep", "600"]);
    let path = env.state_dir().join(format!("sessions/{session}.json"));
    let mut record = env
        .session_record(&session)
        .expect("the session is recorded");
    record["slots"] = json!([]);
    std::fs::write(&path, serde_json::to_vec_pretty(&record).unwrap()).unwrap();
    sweep_json(&mut env, &[]);
    assert_eq!(
        env.session_record(&session)
            .expect("the session is recorded")["slots"]
            .as_array()
            .unwrap()
            .len(),
        1,
        "indexed again: {}",
        env.session_record(&session)
            .expect("the session is recorded")
    );
    hook(&mut env, "SessionEnd", &session, &ws, None);
    assert!(
        broker.gone_within(PATIENCE),
        "the session's end found the broker"
    );
}

/// The owner-index protocol under load: 50 sessions attach to 10 shared slots (3 each), half of them end, while
/// sweeps run all along. At rest no live owner was lost, no ended session is an owner, every broker a live
/// session owns is running, and every slot that no live session owns is empty.
#[test]
#[allow(clippy::too_many_lines)]
fn the_owner_index_holds_under_concurrent_attaches_ends_and_sweeps() {
    let env = Arc::new(Mutex::new(Env::new()));
    let (workspaces, agent, state) = {
        let mut env = env.lock().unwrap();
        let workspaces: Vec<PathBuf> = (0..10)
            .map(|i| env.workspace(&format!("shared-{i}")))
            .collect();
        let agent = env.sleeper();
        (workspaces, agent, env.state_dir().to_path_buf())
    };
    let run = |args: &[&str], stdin: Option<&[u8]>| -> Output {
        let mut command = Command::new(crate::harness::BIN);
        command.arg("--state-dir").arg(&state).args(args);
        crate::harness::scrub_env(&mut command);
        crate::harness::run_bounded(command, stdin)
    };
    let sessions: Vec<String> = (0..50).map(|i| unique_id(&format!("load{i}"))).collect();
    let stop_sweeping = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sweeper = {
        let stop_sweeping = Arc::clone(&stop_sweeping);
        let state = state.clone();
        std::thread::spawn(move || {
            let mut sweeps = 0;
            while !stop_sweeping.load(std::sync::atomic::Ordering::SeqCst) {
                let mut command = Command::new(crate::harness::BIN);
                command
                    .arg("--state-dir")
                    .arg(&state)
                    .args(["sweep", "--json"]);
                crate::harness::scrub_env(&mut command);
                crate::harness::run_bounded(command, None);
                sweeps += 1;
            }
            sweeps
        })
    };
    let owned: Arc<Mutex<BTreeMap<String, BTreeSet<usize>>>> = Arc::default();
    std::thread::scope(|scope| {
        for chunk in sessions.chunks(7) {
            let owned = Arc::clone(&owned);
            let workspaces = &workspaces;
            let run = &run;
            scope.spawn(move || {
                for session in chunk {
                    let index: usize = session.bytes().map(usize::from).sum();
                    let payload = |event: &str| {
                        json!({"session_id": session, "hook_event_name": event, "cwd": workspaces[0]})
                            .to_string()
                    };
                    let pid = agent.pid.to_string();
                    run(
                        &["hook", "--agent", "claude", "--owner-pid", &pid],
                        Some(payload("SessionStart").as_bytes()),
                    );
                    for k in 0..3 {
                        let slot = (index + k * 3) % workspaces.len();
                        let out = run(
                            &["broker", "spawn", "--cwd", text(&workspaces[slot]), "--session", session, "--", "sleep", "600"],
                            None,
                        );
                        assert!(out.status.success(), "spawn: {}", stderr(&out));
                        owned.lock().unwrap().entry(session.clone()).or_default().insert(slot);
                    }
                    if index.is_multiple_of(2) {
                        run(&["hook", "--agent", "claude"], Some(payload("SessionEnd").as_bytes()));
                    }
                }
            });
        }
    });
    stop_sweeping.store(true, std::sync::atomic::Ordering::SeqCst);
    let sweeps = sweeper.join().unwrap();
    eprintln!("{sweeps} sweeps ran alongside");
    let mut env = env.lock().unwrap();
    let records = env.records();
    let owned = owned.lock().unwrap();
    let ended = |session: &str| session.bytes().map(usize::from).sum::<usize>() % 2 == 0;
    for (session, slots) in owned.iter() {
        for slot in slots {
            let key = format!("{}/default", text(&workspaces[*slot]));
            let record = records.get(&key);
            let owners: Vec<&str> = record
                .and_then(|record| record["owners"].as_array())
                .map(|owners| {
                    owners
                        .iter()
                        .filter_map(|o| o["session"].as_str())
                        .collect()
                })
                .unwrap_or_default();
            if ended(session) {
                assert!(
                    !owners.contains(&session.as_str()),
                    "ended {session} still owns {key}"
                );
            } else {
                assert!(
                    owners.contains(&session.as_str()),
                    "live {session} lost {key}: {record:?}"
                );
                let pid = record.unwrap()["identity"]["pid"].as_i64().unwrap();
                let ticks = record.unwrap()["identity"]["start_ticks"].as_u64().unwrap();
                assert!(
                    crate::harness::alive(i32::try_from(pid).unwrap(), ticks),
                    "the broker live {session} owns in {key} is not running"
                );
            }
        }
    }
    for (key, record) in &records {
        let owners = record["owners"].as_array().unwrap();
        assert!(
            owners
                .iter()
                .any(|o| !ended(o["session"].as_str().unwrap())),
            "{key} has no live owner but still a broker: {record}"
        );
    }
    let stops_while_owned: Vec<Value> = env
        .events_where("stop", None)
        .into_iter()
        .filter(|event| event["reason"] != "session_end")
        .collect();
    assert!(
        stops_while_owned.is_empty(),
        "stops for other reasons: {stops_while_owned:?}"
    );
    env.reap_children();
}
