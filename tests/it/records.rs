//! Records under stress, each against the real binary: temp files of killed writers, unbounded payload fields,
//! corrupt slot records, idle TTLs under a stepped clock, sweeps racing spawns, symlinked slots, and a resume
//! orphan's pid reused.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde_json::{Value, json};

use crate::harness::*;
use crate::hook_test::{HookTest, hook_payload};

/// The slot directory `broker spawn` made for `workspace` (the only one under the workspace's key).
fn slot_dir_of(env: &Env, name: &str) -> PathBuf {
    let found: Vec<PathBuf> = walkdir_all(&env.state_dir().join("workspaces"))
        .into_iter()
        .filter(|path| path.join("broker.json").is_file() && path.ends_with(name))
        .collect();
    assert_eq!(found.len(), 1, "one slot named {name}: {found:?}");
    found[0].clone()
}

/// Writes each file with a modification time `age` ago.
fn plant(paths: &[&PathBuf], age: Duration) {
    for path in paths {
        std::fs::write(path, b"{\"version\": 1, \"sess").unwrap();
        let file = std::fs::File::options().write(true).open(path).unwrap();
        file.set_modified(SystemTime::now() - age).unwrap();
    }
}

/// Rewrites a record by hand, atomically (as a writer under a stepped clock would have left it).
fn rewrite(path: &Path, edit: impl FnOnce(&mut Value)) {
    let mut record: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    edit(&mut record);
    let temp = path.with_extension("edit");
    std::fs::write(&temp, serde_json::to_vec_pretty(&record).unwrap()).unwrap();
    std::fs::rename(&temp, path).unwrap();
}

/// The boot clock now (ms), as the kernel shows it in `/proc/uptime` (`CLOCK_BOOTTIME`).
/// The boot clock as the binary reads it (`CLOCK_BOOTTIME`): `/proc/uptime` was seen lagging it by up to 0.7 s on
/// this kind of machine, which made a fresh stamp look as if it came from the future.
fn boot_now_ms() -> u64 {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::Boottime);
    u64::try_from(now.tv_sec).unwrap() * 1000 + u64::try_from(now.tv_nsec).unwrap() / 1_000_000
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Item 1: a writer killed between create and rename leaves `.<name>.tmp-<pid>-<nanos>`; the sweep removes such
/// files in the root, `sessions/` and `stopping/` once older than the bound (one event), a dry run only lists them,
/// and a fresh temp, look-alike names, a symlink and another user's file are left as they are.
#[test]
fn sweep_removes_temp_files_killed_writers_left_and_nothing_else() {
    let mut env = Env::new();
    let ws = env.workspace("temps");
    let broker = env.spawn_broker(&ws, &fresh_id(), &["sleep", "600"]);
    let state = env.state_dir().to_path_buf();
    let hour = Duration::from_secs(3600);
    let left_behind = [
        state.join("sessions/.s1.json.tmp-4242-1764000000000000000"),
        state.join("stopping/.0b1c2d3e-77-9.json.tmp-4242-1764000000000000001"),
        state.join(".x.json.tmp-4242-1764000000000000008"),
    ];
    plant(&left_behind.iter().collect::<Vec<_>>(), hour);
    let fresh = state.join("sessions/.s2.json.tmp-4243-1764000000000000003");
    plant(&[&fresh], Duration::ZERO);
    let alike = [
        state.join("sessions/.s3.json.tmp-x-1764000000000000004"),
        state.join("sessions/s4.json.tmp-4242-1764000000000000005"),
        state.join("stopping/.s5.json.tmp-4242"),
    ];
    plant(&alike.iter().collect::<Vec<_>>(), hour);
    let outside = env.work.path().join("not-ours-to-remove");
    plant(&[&outside], hour);
    let kept = std::fs::read(&outside).unwrap();
    let link = state.join("sessions/.s6.json.tmp-4242-1764000000000000006");
    std::os::unix::fs::symlink(&outside, &link).unwrap();
    let foreign = state.join("sessions/.s7.json.tmp-4242-1764000000000000007");
    plant(&[&foreign], hour);
    std::os::unix::fs::chown(&foreign, Some(65534), Some(65534)).expect(
        "chown to another user (the tests run as root): cannot set up another user's temp file",
    );

    let dry = env.run(&["sweep", "--dry-run", "--idle-ttl", "0"]);
    let dry_text = stdout(&dry);
    assert!(dry.status.success(), "{dry:?}");
    for path in &left_behind {
        assert!(
            path.exists(),
            "a dry run removes nothing: {}",
            path.display()
        );
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        assert!(dry_text.contains(&name), "listed: {name}\n{dry_text}");
    }
    assert_eq!(
        dry_text.matches("would remove temp file").count(),
        3,
        "{dry_text}"
    );
    assert!(env.events_where("clean", None).is_empty());

    let out = env.run(&["sweep", "--idle-ttl", "0"]);
    assert!(out.status.success(), "{out:?}");
    for path in &left_behind {
        assert!(!path.exists(), "removed: {}", path.display());
    }
    for path in alike.iter().chain([&fresh, &foreign]) {
        assert!(path.exists(), "left alone: {}", path.display());
    }
    assert!(link.symlink_metadata().is_ok(), "a symlink is left alone");
    assert_eq!(std::fs::read(&outside).unwrap(), kept, "never followed");
    let cleaned = env.events_where("clean", None);
    assert_eq!(cleaned.len(), 1, "one event: {cleaned:?}");
    let detail = cleaned[0]["detail"].as_str().unwrap();
    assert!(detail.starts_with("3 temp file(s)"), "{detail}");
    assert!(broker.alive(), "the sweep stopped nothing");
}

/// Item 1, in slot directories: a writer's temp file left in a slot goes under the slot's lock — with the emptied
/// slot the sweep removes, or at the slot's next write — never by a sweep reading every slot directory.
#[test]
fn temp_files_in_slot_directories_go_under_the_slots_lock() {
    let mut env = Env::new();
    let ws = env.workspace("temps");
    let session = fresh_id();
    let broker = env.spawn_broker(&ws, &session, &["sleep", "600"]);
    let log = env.work.path().join("gone.log");
    let (gone, _) = env.spawn_broker_with(
        &ws,
        &session,
        &["--name", "gone", "--log", log.to_str().unwrap()],
        &["sleep", "600"],
    );
    let (slot, gone_slot) = (slot_dir_of(&env, "default"), slot_dir_of(&env, "gone"));
    let in_slots = [
        slot.join(".broker.json.tmp-4242-1764000000000000002"),
        gone_slot.join(".broker.json.tmp-4242-1764000000000000009"),
    ];
    plant(
        &in_slots.iter().collect::<Vec<_>>(),
        Duration::from_secs(3600),
    );
    let cwd = ws.to_str().unwrap();
    let detach = [
        "broker",
        "detach",
        "--cwd",
        cwd,
        "--name",
        "gone",
        "--session",
        &session,
    ];
    assert!(env.run(&detach).status.success());
    assert!(gone.gone_within(PATIENCE) && gone_slot.is_dir());
    let dry = env.run(&["sweep", "--dry-run", "--idle-ttl", "0"]);
    assert!(
        stdout(&dry).contains("gone  would remove empty slot") && in_slots[1].exists(),
        "{dry:?}"
    );
    assert!(env.run(&["sweep", "--idle-ttl", "0"]).status.success());
    assert!(
        !gone_slot.exists(),
        "the emptied slot went, with its temp file"
    );
    assert!(broker.alive(), "the sweep stopped nothing");
    assert!(in_slots[0].exists(), "a live slot is not read by the sweep");
    let touch = env.run(&["broker", "touch", "--cwd", cwd]);
    assert!(touch.status.success(), "{touch:?}");
    assert!(!in_slots[0].exists(), "the slot's next write removed it");
    assert!(
        names_in(&slot).contains(&"broker.json".to_owned()),
        "the record stays"
    );
}

/// Item 2: a payload whose free-text fields are a megabyte each is taken with those fields cut to the documented
/// bound: the session record and every event stay small, the hook exits 0 with nothing on stdout.
#[test]
fn megabyte_payload_fields_are_cut_before_records_and_events() {
    let mut env = Env::new();
    let ws = env.workspace("payload");
    let agent = env.sleeper();
    let session = fresh_id();
    let huge = |c: &str| c.repeat(1024 * 1024);
    let start = json!({
        "session_id": session, "hook_event_name": "SessionStart",
        "cwd": format!("{}/{}", ws.display(), huge("d")),
        "transcript_path": format!("/t/{}", huge("é")), "source": huge("s"),
    });
    let end = json!({
        "session_id": session, "hook_event_name": "SessionEnd", "cwd": ws, "reason": huge("r"),
        "title": huge("t"),
    });
    let pid = agent.pid.to_string();
    let flags = [
        "hook",
        "--agent",
        "claude",
        "--owner-pid",
        pid.as_str(),
        "--sentinel",
        "off",
        "--agent-exit-wait",
        "0s",
    ];
    let record_path = env.state_dir().join(format!("sessions/{session}.json"));
    let fields = [
        (
            &start,
            vec![
                ("cwd", ws.to_string_lossy().len() + 1 + 1024 * 1024),
                ("transcript_path", 3 + 2 * 1024 * 1024),
                ("source", 1024 * 1024),
            ],
        ),
        (
            &end,
            vec![("end_reason", 1024 * 1024), ("title", 1024 * 1024)],
        ),
    ];
    for (payload, cut) in fields {
        let out = env.run_stdin(&flags, payload.to_string().as_bytes());
        assert!(out.status.success(), "{out:?}");
        assert!(out.stdout.is_empty(), "nothing on stdout");
        assert!(
            out.stderr.is_empty(),
            "taken without an error: {}",
            stderr(&out)
        );
        assert!(
            std::fs::metadata(&record_path).unwrap().len() < 32 * 1024,
            "the session record stays small"
        );
        let record: Value = serde_json::from_slice(&std::fs::read(&record_path).unwrap()).unwrap();
        for (field, length) in cut {
            let text = record[field]
                .as_str()
                .unwrap_or_else(|| panic!("{field} recorded: {record}"));
            assert!(text.len() <= 4096, "{field}: {} bytes", text.len());
            assert!(
                text.ends_with(&format!("…[cut: {length} bytes]")),
                "{field} ends with the marker: {}",
                &text[text.floor_char_boundary(text.len().saturating_sub(60))..]
            );
        }
    }
    let log = std::fs::read_to_string(env.state_dir().join("events.jsonl")).unwrap();
    assert!(!log.is_empty());
    for line in log.lines() {
        assert!(line.len() < 16 * 1024, "an event of {} bytes", line.len());
    }
    assert!(
        walkdir_all(env.state_dir())
            .iter()
            .filter(|path| path.is_file())
            .all(|path| std::fs::metadata(path).unwrap().len() < 64 * 1024),
        "every state file stays small"
    );
}

/// Item 3: a corrupt `broker.json` is bad input for every command that needs the record (`touch`, `attach`,
/// `detach`, `register`): exit 2, one line naming the file and what was expected; the record is moved aside (the
/// documented quarantine) and nothing else changes. `spawn` moves it aside and starts its broker (its own test);
/// a session's end reports it (exit 1: the session was ended); the hook exits 0.
#[test]
fn a_corrupt_broker_json_is_bad_input_for_the_commands_that_need_it() {
    let mut env = Env::new();
    let ws = env.workspace("corrupt");
    let session = fresh_id();
    let broker = env.spawn_broker(&ws, &session, &["sleep", "600"]);
    let slot = slot_dir_of(&env, "default");
    let record = slot.join("broker.json");
    let adoptee = env.sleeper();
    let pid = adoptee.pid.to_string();
    let cwd = ws.to_str().unwrap();
    let garbage = b"{\"version\": 1, \"owners\": [tr";
    let commands: [&[&str]; 4] = [
        &["broker", "touch", "--cwd", cwd],
        &["broker", "attach", "--cwd", cwd, "--session", &session],
        &["broker", "detach", "--cwd", cwd, "--session", &session],
        &[
            "broker",
            "register",
            "--cwd",
            cwd,
            "--pid",
            &pid,
            "--session",
            &session,
        ],
    ];
    for (round, args) in commands.iter().enumerate() {
        std::fs::write(&record, garbage).unwrap();
        let sessions_before: Vec<_> = env
            .state_files()
            .into_iter()
            .filter(|(path, _)| path.starts_with("sessions"))
            .collect();
        let out = env.run(args);
        let text = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
        assert_eq!(text.lines().count(), 1, "{args:?}: one line: {text}");
        assert!(
            text.contains(&record.display().to_string())
                && text.contains("expected a broker record"),
            "{args:?} names the file and what was expected: {text}"
        );
        assert!(out.stdout.is_empty(), "{args:?}: {}", stdout(&out));
        assert!(!record.exists(), "{args:?}: moved aside");
        let aside: Vec<String> = names_in(&slot)
            .into_iter()
            .filter(|name| name.starts_with("broker.json.corrupt-"))
            .collect();
        assert_eq!(aside.len(), round + 1, "{args:?}: {aside:?}");
        let sessions_after: Vec<_> = env
            .state_files()
            .into_iter()
            .filter(|(path, _)| path.starts_with("sessions"))
            .collect();
        assert_eq!(
            sessions_before, sessions_after,
            "{args:?}: session records unchanged"
        );
        assert!(
            broker.alive() && adoptee.alive(),
            "{args:?}: nothing signalled"
        );
    }
    assert!(
        env.records().is_empty(),
        "no record written over the corrupt one"
    );

    // A session's end over a corrupt slot: the rest of the end is done, the record is reported (exit 1).
    std::fs::write(&record, garbage).unwrap();
    let out = env.run(&["reap", "--session", &session, "--force"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(stdout(&out).contains("corrupt"), "{}", stdout(&out));
    // And the hook: exit 0, nothing on stdout.
    std::fs::write(&record, garbage).unwrap();
    HookTest::raw(&hook_payload(&fresh_id(), "SessionEnd", &ws))
        .args(&["--agent", "claude"])
        .no_sentinel()
        .run(&env);
}

/// Item 4: idle TTLs are timed on the boot clock. A record whose wall-clock `last_active` is a day ahead (the clock
/// was stepped back since) is still stopped once its boot stamp is past the TTL; one whose `last_active` is a day
/// behind (stepped forward) but whose boot stamp is fresh is kept; a record of an older version (no boot stamp)
/// falls back to the wall clock. The TTL and the planted stamps are sized to the host's uptime (a machine booted a
/// minute ago has no boot stamp 20 minutes old): the TTL is a third of it (at most 10 minutes), the stalled stamp
/// two TTLs old.
#[test]
fn idle_ttls_are_timed_on_the_boot_clock_whatever_the_wall_clock_says() {
    let mut env = Env::new();
    let boot = boot_now_ms();
    let ttl_secs = (boot / 3000).min(600);
    assert!(
        ttl_secs >= 10,
        "this host booted {boot} ms ago: too recently for an idle TTL of 10 s with room for a loaded machine"
    );
    let ttl = format!("{ttl_secs}s");
    let two_ttls = 2 * ttl_secs * 1000;
    let mut spawn = |name: &str| {
        let ws = env.workspace(name);
        let (proc, record) = env.spawn_broker_with(
            &ws,
            "",
            &["--no-owner", "--idle-ttl", &ttl],
            &["sleep", "600"],
        );
        let stamp = record["last_active_boot_ms"]
            .as_u64()
            .expect("a boot stamp");
        assert!(stamp >= boot && stamp <= boot_now_ms(), "{stamp} vs {boot}");
        (proc, ws)
    };
    let (stalled, stalled_ws) = spawn("stalled");
    let (hastened, hastened_ws) = spawn("hastened");
    let (legacy, legacy_ws) = spawn("legacy");
    let day = Duration::from_secs(86_400);
    let wall = |at: SystemTime| humantime::format_rfc3339_millis(at).to_string();
    let path_of = |env: &Env, ws: &Path| {
        let record = walkdir_all(&env.state_dir().join("workspaces"))
            .into_iter()
            .find(|path| {
                path.file_name().is_some_and(|name| name == "broker.json")
                    && std::fs::read_to_string(path)
                        .unwrap()
                        .contains(&format!("\"workspace\": \"{}\"", ws.display()))
            });
        record.expect("the slot's record")
    };
    rewrite(&path_of(&env, &stalled_ws), |record| {
        record["last_active"] = json!(wall(SystemTime::now() + day));
        record["last_active_boot_ms"] = json!(boot_now_ms() - two_ttls);
    });
    rewrite(&path_of(&env, &hastened_ws), |record| {
        record["last_active"] = json!(wall(SystemTime::now() - day));
        record["last_active_boot_ms"] = json!(boot_now_ms());
    });
    rewrite(&path_of(&env, &legacy_ws), |record| {
        record["last_active"] = json!(wall(SystemTime::now() - day));
        record
            .as_object_mut()
            .unwrap()
            .remove("last_active_boot_ms");
    });

    let out = env.run(&["sweep", "--idle-ttl", "0"]);
    assert!(out.status.success(), "{out:?}");
    let stopped: Vec<String> = env
        .events_where("stop", Some("idle_timeout"))
        .iter()
        .chain(env.events_where("ticket", Some("idle_timeout")).iter())
        .filter_map(|event| event["workspace"].as_str().map(str::to_owned))
        .collect();
    assert!(
        stalled.gone_within(PATIENCE),
        "a wall clock stepped back must not stall the idle stop: {}",
        stdout(&out)
    );
    assert!(
        legacy.gone_within(PATIENCE),
        "a record with no boot stamp falls back to the wall clock"
    );
    assert!(
        hastened.alive(),
        "a wall clock stepped forward must not hasten the idle stop"
    );
    let hastened_text = hastened_ws.display().to_string();
    assert!(!stopped.contains(&hastened_text), "{stopped:?}");
    assert!(path_of(&env, &hastened_ws).exists(), "its record stays");
}

/// Runs the binary with `args` (bounded); `Err` with what it said when it did not exit 0.
fn succeeds(env: &Env, args: &[&str]) -> Result<Value, String> {
    let out = run_bounded(env.cmd(args), None);
    if out.status.success() {
        Ok(serde_json::from_slice(&out.stdout).unwrap_or(Value::Null))
    } else {
        Err(format!(
            "{args:?} exited {:?}: {}{}",
            out.status.code(),
            stdout(&out),
            stderr(&out)
        ))
    }
}

/// Item 5: two looping sweeps remove emptied slots (and the workspace directory) while, 200 times over two slots
/// of one workspace, a broker is spawned into a slot, detached (stopped) and its session reaped (which visits the
/// emptied slot again): no spawn, detach, reap or sweep fails, and no broker is left running unrecorded.
#[test]
fn sweeps_racing_spawns_and_detaches_into_one_workspace_fail_none() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let env = Env::new();
    let ws = env.workspace("race");
    let (cwd, log) = (
        ws.to_str().unwrap().to_owned(),
        env.work.path().join("brokers.log"),
    );
    let log = log.to_str().unwrap();
    let done = AtomicBool::new(false);
    let rounds = 100;
    let sweep = || {
        let (mut runs, mut failures) = (0, Vec::new());
        while !done.load(Ordering::SeqCst) {
            runs += 1;
            let args = ["sweep", "--idle-ttl", "0", "--retention", "0s", "--json"];
            if let Err(failure) = succeeds(&env, &args) {
                failures.push(failure);
            }
        }
        (runs, failures)
    };
    let churn = |name: &str| {
        let (mut brokers, mut failures) = (Vec::new(), Vec::new());
        for round in 0..rounds {
            let session = format!("race-{name}-{round}");
            let slot = ["--cwd", cwd.as_str(), "--name", name, "--session", &session];
            let mut spawn = vec!["broker", "spawn"];
            spawn.extend(slot);
            spawn.extend(["--log", log, "--", "sleep", "600"]);
            match succeeds(&env, &spawn) {
                Ok(record) => brokers.push(Proc {
                    pid: i32::try_from(record["identity"]["pid"].as_i64().unwrap()).unwrap(),
                    ticks: record["identity"]["start_ticks"].as_u64().unwrap(),
                }),
                Err(failure) => failures.push(failure),
            }
            let mut detach = vec!["broker", "detach"];
            detach.extend(slot);
            let reap = ["reap", "--session", &session];
            for args in [&detach[..], &reap[..]] {
                if let Err(failure) = succeeds(&env, args) {
                    failures.push(failure);
                }
            }
        }
        (brokers, failures)
    };
    let ((sweeps, failures), brokers) = std::thread::scope(|scope| {
        let sweepers = [scope.spawn(sweep), scope.spawn(sweep)];
        let churners = [scope.spawn(|| churn("a")), scope.spawn(|| churn("b"))];
        let mut brokers = Vec::new();
        let mut failures = Vec::new();
        for churner in churners {
            // A panic here would leave the sweepers looping: `done` is set whatever the churners did.
            let joined = churner.join();
            if let Ok((started, failed)) = joined {
                brokers.extend(started);
                failures.extend(failed);
            } else {
                failures.push("a churner panicked".to_owned());
            }
        }
        done.store(true, Ordering::SeqCst);
        let mut sweeps = 0;
        for sweeper in sweepers {
            let (runs, failed) = sweeper.join().expect("sweeper");
            sweeps += runs;
            failures.extend(failed);
        }
        ((sweeps, failures), brokers)
    });
    assert!(
        failures.is_empty(),
        "{} commands failed ({sweeps} sweeps ran): {failures:#?}",
        failures.len()
    );
    assert!(sweeps > 2, "the sweeps raced the churn ({sweeps} ran)");
    assert_eq!(brokers.len(), 2 * rounds);
    let left: Vec<Proc> = brokers
        .into_iter()
        .filter(|proc| !proc.gone_within(PATIENCE))
        .collect();
    assert!(left.is_empty(), "brokers left running: {left:?}");
    assert!(
        marked_with_state_root(env.state_dir()).is_empty(),
        "no broker of this root left running"
    );
    let unrecorded = env.events_where("stop", Some("unrecorded"));
    assert!(
        unrecorded.is_empty(),
        "no broker was ever unrecorded: {unrecorded:?}"
    );
    let spawns = env
        .events()
        .iter()
        .filter(|event| event["action"] == "spawn")
        .count();
    assert_eq!(spawns, 2 * rounds, "every spawn logged once");
}

/// Item 6: a symlink in place of a slot directory, pointing at another root's slot that holds a live broker of
/// ours, is shown by `status` as unreadable (with the reason) and reported by `sweep`, which never follows it: that
/// broker, idle far past any TTL, stays alive and its slot untouched; `broker spawn` into it is refused.
#[test]
fn a_symlinked_slot_is_reported_and_never_followed() {
    let mut other = Env::new();
    let ws = other.workspace("shared");
    let (broker, _) = other.spawn_broker_with(
        &ws,
        "",
        &["--no-owner", "--idle-ttl", "1m"],
        &["sleep", "600"],
    );
    let real_slot = slot_dir_of(&other, "default");
    rewrite(&real_slot.join("broker.json"), |record| {
        record["last_active"] = json!("2020-01-01T00:00:00Z");
        record["last_active_boot_ms"] = json!(0);
    });
    let slot_before = names_in(&real_slot);
    let record_before = std::fs::read(real_slot.join("broker.json")).unwrap();

    let mut env = Env::new();
    assert!(
        env.run(&["sweep"]).status.success(),
        "a state root of its own"
    );
    let key = real_slot.parent().unwrap().file_name().unwrap();
    let key_dir = env.state_dir().join("workspaces").join(key);
    std::fs::create_dir(&key_dir).unwrap();
    std::fs::set_permissions(
        &key_dir,
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .unwrap();
    let link = key_dir.join("default");
    std::os::unix::fs::symlink(&real_slot, &link).unwrap();
    // And a whole workspace directory that is a symlink.
    let key_link = env
        .state_dir()
        .join("workspaces/elsewhere-0123456789abcdef");
    std::os::unix::fs::symlink(real_slot.parent().unwrap(), &key_link).unwrap();

    let status = env.run(&["status", "--json"]);
    assert_eq!(status.status.code(), Some(1), "{status:?}");
    let status: Value = serde_json::from_slice(&status.stdout).unwrap();
    let unreadable = status["unreadable"].as_array().unwrap();
    let label = format!("{}/default", key.to_string_lossy());
    for (what, target) in [
        (&label, &real_slot),
        (
            &"elsewhere-0123456789abcdef".to_owned(),
            &real_slot.parent().unwrap().to_path_buf(),
        ),
    ] {
        let entry = unreadable
            .iter()
            .find(|entry| entry["slot"] == what.as_str())
            .unwrap_or_else(|| panic!("{what} shown as unreadable: {unreadable:?}"));
        let problem = entry["problem"].as_str().unwrap();
        assert!(
            problem.contains(&format!("a symlink to {}", target.display())),
            "{problem}"
        );
    }
    let text = env.run(&["status"]);
    assert!(stdout(&text).contains("a symlink to"), "{}", stdout(&text));

    for args in [&["sweep", "--dry-run"][..], &["sweep", "--idle-ttl", "1s"]] {
        let out = env.run(args);
        assert_eq!(out.status.code(), Some(1), "{args:?} reports it: {out:?}");
        let said = stdout(&out);
        assert!(
            said.contains(&link.display().to_string()) && said.contains("never followed"),
            "{args:?}: {said}"
        );
    }
    let spawn = env.run(&[
        "broker",
        "spawn",
        "--cwd",
        ws.to_str().unwrap(),
        "--no-owner",
        "--",
        "sleep",
        "600",
    ]);
    assert_eq!(spawn.status.code(), Some(2), "{spawn:?}");
    assert!(stderr(&spawn).contains("symlink"), "{}", stderr(&spawn));

    assert!(broker.alive(), "the other root's broker is never signalled");
    assert_eq!(names_in(&real_slot), slot_before, "nothing created there");
    assert_eq!(
        std::fs::read(real_slot.join("broker.json")).unwrap(),
        record_before,
        "its record untouched"
    );
    assert!(
        env.events()
            .iter()
            .all(|event| event["action"] != "stop" && event["action"] != "prune"),
        "{:?}",
        env.events()
    );
}

/// Item 7 (defect 5, match then identity): a resume orphan is pinned by the identity read when it was matched. In a
/// private pid namespace, an agent resuming the session shrugs off the SIGTERM of `SessionEnd`; with the finisher
/// kept away (its lock held) the ticket stays pending; the orphan then exits and its pid is forced onto an innocent
/// process (`ns_last_pid`). The sweep that drives the ticket finds the orphan gone and closes the ticket: the pid's
/// next owner gets no signal at all.
#[test]
fn a_resume_orphan_that_exits_before_its_stop_never_costs_its_pids_next_owner_a_signal() {
    const SCRIPT: &str = r#"
        set -u
        BIN=$1 STATE=$2 WS=$3 S=$4 AGENT=$5 DIR=$6
        "$BIN" --state-dir "$STATE" sweep > /dev/null || { echo root_failed; exit 1; }
        exec 9>> "$STATE/finisher.lock"
        flock -n 9 && echo finisher_kept_away
        "$AGENT" -c 'import signal, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
open(sys.argv[1], "w").write("ready")
time.sleep(600)' "$DIR/orphan-ready" --resume "$S" &
        C=$!
        for _ in $(seq 1 3000); do [ -e "$DIR/orphan-ready" ] && break; sleep 0.01; done
        printf '{"session_id":"%s","hook_event_name":"SessionEnd","cwd":"%s"}' "$S" "$WS" \
            | "$BIN" --state-dir "$STATE" hook --agent claude --sentinel off --deadline 1s
        grep -q '"action":"stop"' "$STATE/events.jsonl" || echo no_stop_logged_yet
        ls "$STATE/stopping/"*.json > /dev/null 2>&1 && kill -0 "$C" && echo ticket_pending=ok
        kill -KILL "$C"; wait "$C" 2> /dev/null
        while [ -e "/proc/$C" ]; do sleep 0.01; done
        echo $((C - 1)) > /proc/sys/kernel/ns_last_pid
        python3 -c 'import signal, sys, time
def note(number, frame):
    open(sys.argv[1], "a").write(str(number) + "\n")
for number in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1):
    signal.signal(number, note)
open(sys.argv[2], "w").write("ready")
time.sleep(600)' "$DIR/signals" "$DIR/innocent-ready" &
        I=$!
        [ "$I" = "$C" ] && echo reuse=ok || echo "reuse=failed orphan=$C innocent=$I"
        for _ in $(seq 1 3000); do [ -e "$DIR/innocent-ready" ] && break; sleep 0.01; done
        exec 9>&-
        "$BIN" --state-dir "$STATE" sweep --idle-ttl 0 > "$DIR/sweep.out" 2>&1
        for _ in $(seq 1 2000); do
            [ -z "$(ls -A "$STATE/stopping" 2> /dev/null | grep json)" ] && break
            sleep 0.01
        done
        [ -z "$(ls -A "$STATE/stopping" 2> /dev/null | grep json)" ] && echo tickets=closed
        kill -0 "$I" 2> /dev/null && echo innocent=alive
        [ -s "$DIR/signals" ] && echo "innocent_signalled=$(tr '\n' ' ' < "$DIR/signals")" || echo innocent_unsignalled
        grep '"action":"stop"' "$STATE/events.jsonl"
        kill -KILL "$I"
    "#;
    let env = Env::new();
    let ws = env.workspace("app");
    let state = env.state_dir().join("root");
    let session = fresh_session("pinned");
    let agent = named_python(&env, "claude");
    let out = crate::lineage::in_private_pid_namespace(
        SCRIPT,
        &[
            BIN,
            state.to_str().unwrap(),
            ws.to_str().unwrap(),
            &session,
            agent.to_str().unwrap(),
            env.work.path().to_str().unwrap(),
        ],
    );
    let text = stdout(&out);
    let sweep = std::fs::read_to_string(env.work.path().join("sweep.out")).unwrap_or_default();
    let report = format!("{text}\n{}\nsweep: {sweep}", stderr(&out));
    assert!(text.contains("finisher_kept_away"), "{report}");
    assert!(
        text.contains("ticket_pending=ok"),
        "the orphan outlived SIGTERM with its ticket pending: {report}"
    );
    assert!(text.contains("reuse=ok"), "pid reuse was forced: {report}");
    assert!(text.contains("tickets=closed"), "{report}");
    assert!(text.contains("innocent=alive"), "{report}");
    assert!(
        text.contains("innocent_unsignalled"),
        "the pid's next owner got a signal: {report}"
    );
    assert!(
        text.contains(r#""reason":"resume_orphan""#),
        "the orphan's stop is logged: {report}"
    );
}
