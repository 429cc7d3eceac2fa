//! Deadlines against a hostile state root: FIFOs and huge files, held locks, slow payloads, absurd durations, closed
//! and full pipes, and two drivers on one stop ticket. Each deadline is measured over at least 20 runs and the
//! maximum printed; the only bound asserted is the deadline itself plus a margin for a loaded machine.

use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::harness::{
    Env, PATIENCE, Proc, closed_pipe, fresh_id, full_pipe, hold_flocks, measured, run_bounded,
    run_timed, run_timed_into, stderr, stdout, wait_until,
};
use crate::hook_test::{self, assert_hook_contract};

/// What a loaded 2-core machine may add to a deadline before a run counts as late: process start, and the fsyncs
/// of a shared filesystem that other builds and tests keep busy (a thread in fsync delays even `_exit`).
const MARGIN: Duration = Duration::from_secs(2);
/// How many times each deadline is measured.
const RUNS: usize = 20;
const NO_DELAY: Duration = Duration::ZERO;

fn payload(event: &str, id: &str, cwd: &Path) -> Vec<u8> {
    let mut payload = hook_test::payload(event, id, cwd);
    payload["transcript_path"] = json!(format!("/home/t/.claude/projects/x/{id}.jsonl"));
    payload.to_string().into_bytes()
}

/// Runs a hook with `args`, `stdin` after `delay`; asserts it was a good citizen (exit 0, nothing on stdout).
fn timed_hook(env: &Env, args: &[&str], stdin: &[u8], delay: Duration) -> (Output, Duration) {
    let mut words = vec!["hook"];
    words.extend_from_slice(args);
    let (out, elapsed) = run_timed(env.cmd(&words), stdin, delay);
    assert_hook_contract(&out, &format!("hook {args:?}"));
    (out, elapsed)
}

fn assert_within(elapsed: Duration, deadline: Duration, what: &str) {
    assert!(
        elapsed < deadline + MARGIN,
        "{what}: took {elapsed:?}, past its deadline {deadline:?} + {MARGIN:?}"
    );
}

/// Starts a session and gives it a broker in `ws`; returns the session id, the broker and its slot directory.
fn session_with_broker(env: &mut Env, ws: &Path) -> (String, Proc, PathBuf) {
    let id = fresh_id();
    timed_hook(env, &[], &payload("SessionStart", &id, ws), NO_DELAY);
    let broker = env.spawn_broker(ws, &id, &["sleep", "600"]);
    let slot = slot_dirs(env.state_dir())
        .into_iter()
        .next()
        .expect("the broker's slot");
    (id, broker, slot)
}

/// Every slot directory (`workspaces/<key>/<name>`).
fn slot_dirs(state: &Path) -> Vec<PathBuf> {
    let mut slots = Vec::new();
    for workspace in fs::read_dir(state.join("workspaces"))
        .into_iter()
        .flatten()
        .flatten()
    {
        for slot in fs::read_dir(workspace.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            if slot.file_type().is_ok_and(|kind| kind.is_dir()) {
                slots.push(slot.path());
            }
        }
    }
    slots.sort();
    slots
}

fn mkfifo(path: &Path) {
    let _ = fs::remove_file(path);
    let status = Command::new("mkfifo").arg(path).status().expect("mkfifo");
    assert!(status.success(), "mkfifo {}", path.display());
}

/// `SessionStart` on even runs, `SessionEnd` on odd ones: a measurement covers both.
fn start_or_end(run: usize) -> &'static str {
    if run.is_multiple_of(2) {
        "SessionStart"
    } else {
        "SessionEnd"
    }
}

fn hook_errors(env: &Env) -> Vec<Value> {
    env.events_where("hook", None)
}

// ---------------------------------------------------------------------------------------------------------------
// FIFOs and huge files

/// Where a planted file goes, relative to the state root, given the session id and the slot directory.
type Place = fn(&str, &Path) -> PathBuf;

#[test]
fn fifos_in_place_of_state_files_hook_exits_0_within_deadline_and_cli_commands_refuse_or_leave_them()
 {
    let places: [(&str, Place); 4] = [
        ("session record", |id, _| {
            PathBuf::from(format!("sessions/{id}.json"))
        }),
        ("stop ticket", |_, _| {
            PathBuf::from("stopping/planted-1-1.json")
        }),
        ("broker.json", |_, slot| slot.join("broker.json")),
        ("events.jsonl", |_, _| PathBuf::from("events.jsonl")),
    ];
    for (what, place) in places {
        let mut env = Env::new();
        let ws = env.workspace("ws");
        let (id, broker, slot) = session_with_broker(&mut env, &ws);
        let relative = place(&id, slot.strip_prefix(env.state_dir()).unwrap());
        let fifo = env.state_dir().join(&relative);
        mkfifo(&fifo);

        for event in ["SessionStart", "SessionEnd"] {
            let (out, elapsed) = timed_hook(
                &env,
                &["--deadline", "1s"],
                &payload(event, &id, &ws),
                NO_DELAY,
            );
            eprintln!("FIFO as {what}: {event} hook took {elapsed:?}");
            assert_within(
                elapsed,
                Duration::from_secs(1),
                &format!("{event} with a FIFO as {what}"),
            );
            // Each hook reads what it needs: SessionStart no slot, neither event names a ticket it only lists.
            let reads_it = match what {
                "stop ticket" => false,
                "broker.json" => event == "SessionEnd",
                _ => true,
            };
            if reads_it {
                assert!(
                    stderr(&out).contains(&fifo.display().to_string()),
                    "{event} with a FIFO as {what} names it: {}",
                    stderr(&out)
                );
            }
        }
        if what == "broker.json" {
            assert!(
                broker.alive(),
                "an unreadable record's broker is not stopped on a guess"
            );
        }

        cli_commands_with_a_fifo(&mut env, &id, what, &fifo);
        if what == "broker.json" {
            assert!(broker.alive(), "a sweep stops nothing it cannot read");
        }
        let kind = fs::symlink_metadata(&fifo).unwrap().file_type();
        assert!(
            std::os::unix::fs::FileTypeExt::is_fifo(&kind),
            "the FIFO is left where it was"
        );
    }
}

/// Each CLI command against a state root with a FIFO as `what`: it never blocks, and refuses (exit 2, one line
/// naming the FIFO) or, for a slot's record, reports the slot as unreadable (exit 1).
fn cli_commands_with_a_fifo(env: &mut Env, id: &str, what: &str, fifo: &Path) {
    let log_reads_it = what == "events.jsonl";
    let commands: Vec<Vec<&str>> = vec![
        vec!["status"],
        vec!["sweep"],
        vec!["reap", "--session", id, "--dry-run"],
        vec!["doctor"],
        vec!["log"],
    ];
    for args in commands {
        if args == ["log"] && !log_reads_it {
            continue;
        }
        let started = Instant::now();
        let out = env.run(&args);
        let text = stderr(&out);
        assert!(
            started.elapsed() < PATIENCE,
            "{args:?} never blocks on the FIFO"
        );
        // A slot's record is checked as it is read (only `doctor` looks at every slot up front): there, the
        // FIFO is an unreadable slot, reported and left alone.
        if what == "broker.json" && args != ["doctor"] {
            assert_eq!(
                out.status.code(),
                Some(1),
                "{args:?} with a FIFO as {what}: stdout {} stderr {text}",
                stdout(&out)
            );
            let shown = format!("{}{text}", stdout(&out));
            assert!(
                shown.contains(&fifo.display().to_string()) && shown.contains("FIFO"),
                "{args:?} reports the FIFO: {shown}"
            );
            continue;
        }
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?} with a FIFO as {what} refuses; stdout {} stderr {text}",
            stdout(&out)
        );
        assert_eq!(text.lines().count(), 1, "{args:?}: one line: {text}");
        assert!(
            text.contains(&fifo.display().to_string()) && text.contains("FIFO"),
            "{args:?} names the FIFO: {text}"
        );
    }
}

#[test]
fn a_fifo_as_the_agents_env_file_costs_the_hook_nothing() {
    let env = Env::new();
    let ws = env.workspace("ws");
    let env_file = env.work.path().join("claude-env");
    mkfifo(&env_file);
    let id = fresh_id();
    let max = measured("SessionStart with a FIFO as $CLAUDE_ENV_FILE", RUNS, |_| {
        let mut command = env.cmd(&["hook", "--deadline", "1s"]);
        command.env("CLAUDE_ENV_FILE", &env_file);
        let (out, elapsed) = run_timed(command, &payload("SessionStart", &id, &ws), NO_DELAY);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        assert!(out.stdout.is_empty());
        assert!(
            stderr(&out).contains(&env_file.display().to_string()),
            "the env file is named: {}",
            stderr(&out)
        );
        elapsed
    });
    assert_within(max, Duration::from_secs(1), "a FIFO as $CLAUDE_ENV_FILE");
    // The session itself was recorded: only the export failed.
    assert!(
        env.state_dir()
            .join(format!("sessions/{id}.json"))
            .is_file()
    );
    // With a reader on the FIFO the open succeeds, and the fstat check still refuses it.
    let mut reader = {
        use std::os::unix::fs::OpenOptionsExt;
        fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&env_file)
            .expect("a reader on the FIFO")
    };
    let mut command = env.cmd(&["hook", "--deadline", "1s"]);
    command.env("CLAUDE_ENV_FILE", &env_file);
    let (out, elapsed) = run_timed(command, &payload("SessionStart", &id, &ws), NO_DELAY);
    assert_eq!(out.status.code(), Some(0));
    assert_within(
        elapsed,
        Duration::from_secs(1),
        "a FIFO with a reader as $CLAUDE_ENV_FILE",
    );
    assert!(stderr(&out).contains("FIFO"), "{}", stderr(&out));
    let mut written = Vec::new();
    let _ = std::io::Read::read_to_end(&mut reader, &mut written);
    assert!(written.is_empty(), "nothing is exported into a FIFO");
}

#[test]
fn a_one_gigabyte_file_in_sessions_is_refused_unread_within_the_deadline() {
    let mut env = Env::new();
    let ws = env.workspace("ws");
    let id = fresh_id();
    let sessions = env.state_dir().join("sessions");
    fs::create_dir_all(&sessions).unwrap();
    for name in [format!("{id}.json"), format!("{}.json", fresh_id())] {
        let file = fs::File::create(sessions.join(name)).unwrap();
        file.set_len(1 << 30).unwrap();
    }
    let max = measured("hook with 1 GiB files in sessions/", RUNS, |run| {
        let event = start_or_end(run);
        let (out, elapsed) = timed_hook(
            &env,
            &["--deadline", "1s"],
            &payload(event, &id, &ws),
            NO_DELAY,
        );
        assert!(
            stderr(&out).contains("1073741824 bytes, expected at most 1048576"),
            "{event}: the oversized record is refused by its size, unread: {}",
            stderr(&out)
        );
        elapsed
    });
    assert_within(max, Duration::from_secs(1), "1 GiB files in sessions/");
    eprintln!(
        "largest resident set of any child so far: {} MiB",
        max_child_rss_kib() / 1024
    );
    let out = env.run(&["status", "--json"]);
    assert!(out.status.code().is_some(), "status ends: {}", stderr(&out));
}

/// The largest resident set of any child this test binary waited for (KiB): a figure, not an assertion.
fn max_child_rss_kib() -> i64 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    unsafe {
        libc::getrusage(libc::RUSAGE_CHILDREN, usage.as_mut_ptr());
        usage.assume_init().ru_maxrss
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Deadlines

#[test]
fn hook_deadline_holds_with_100_slot_locks_held_by_another_process() {
    let mut env = Env::new();
    let ws = env.workspace("ws");
    let id = fresh_id();
    timed_hook(&env, &[], &payload("SessionStart", &id, &ws), NO_DELAY);
    let mut brokers = Vec::new();
    for n in 0..100 {
        let name = format!("b{n}");
        let (broker, _) = env.spawn_broker_with(&ws, &id, &["--name", &name], &["sleep", "600"]);
        brokers.push(broker);
    }
    let locks: Vec<PathBuf> = slot_dirs(env.state_dir())
        .iter()
        .map(|slot| slot.join("broker.lock"))
        .collect();
    assert_eq!(locks.len(), 100, "100 slots");
    let _holder = hold_flocks(&mut env, &locks);
    let max = measured("SessionEnd with 100 slot locks held", RUNS, |_| {
        let (out, elapsed) = timed_hook(
            &env,
            &["--deadline", "1s"],
            &payload("SessionEnd", &id, &ws),
            NO_DELAY,
        );
        assert!(stderr(&out).contains("busy"), "{}", stderr(&out));
        elapsed
    });
    assert_within(max, Duration::from_secs(1), "100 held slot locks");
    assert!(
        brokers.iter().all(|broker| broker.alive()),
        "nothing is decided without a slot's lock"
    );
}

#[test]
fn hook_deadline_holds_with_the_session_lock_held() {
    let mut env = Env::new();
    let ws = env.workspace("ws");
    let id = fresh_id();
    let lock = env.state_dir().join(format!("sessions/{id}.lock"));
    fs::create_dir_all(lock.parent().unwrap()).unwrap();
    let _holder = hold_flocks(&mut env, &[lock]);
    for (deadline, text) in [
        (Duration::from_secs(1), "1s"),
        (Duration::from_millis(300), "300ms"),
    ] {
        let max = measured(
            &format!("hook --deadline {text} with the session lock held"),
            RUNS,
            |run| {
                let event = start_or_end(run);
                let (out, elapsed) = timed_hook(
                    &env,
                    &["--deadline", text],
                    &payload(event, &id, &ws),
                    NO_DELAY,
                );
                assert!(
                    stderr(&out).contains("busy") && stderr(&out).contains(&id),
                    "{event}: the held session lock is named: {}",
                    stderr(&out)
                );
                elapsed
            },
        );
        assert_within(
            max,
            deadline,
            &format!("--deadline {text} with the session lock held"),
        );
    }
    assert!(
        !env.state_dir().join(format!("sessions/{id}.json")).exists(),
        "nothing is written without the session lock"
    );
}

#[test]
fn hook_deadline_holds_with_10000_workspaces() {
    let mut env = Env::new();
    let ws = env.workspace("ws");
    let (_owner, broker, slot) = session_with_broker(&mut env, &ws);
    // Ten thousand copies of a slot our own code wrote (record and lock file), one per workspace.
    let record = fs::read(slot.join("broker.json")).unwrap();
    let workspaces = env.state_dir().join("workspaces");
    for n in 0..10_000u32 {
        let dir = workspaces.join(format!("w{n}-{n:016x}")).join("default");
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("broker.json"), &record).unwrap();
        fs::write(dir.join("broker.lock"), b"").unwrap();
    }
    // Written out before measuring: the hooks' own fsyncs must not pay for the setup's twenty thousand creations.
    let root = fs::File::open(env.state_dir()).unwrap();
    assert_eq!(
        unsafe { libc::syncfs(std::os::fd::AsRawFd::as_raw_fd(&root)) },
        0
    );
    let max = measured(
        "SessionEnd of an unindexed session at 10,000 workspaces",
        RUNS,
        |_| {
            // Never seen before: nothing is indexed for it, so its end visits every slot.
            let (_, elapsed) = timed_hook(
                &env,
                &["--deadline", "1s"],
                &payload("SessionEnd", &fresh_id(), &ws),
                NO_DELAY,
            );
            elapsed
        },
    );
    assert_within(max, Duration::from_secs(1), "10,000 workspaces");
    assert!(
        broker.alive(),
        "another session's end stops nothing of this one's"
    );
}

#[test]
fn a_payload_arriving_after_400ms_is_read_and_the_deadline_holds() {
    let env = Env::new();
    let ws = env.workspace("ws");
    let max = measured("SessionStart payload arriving after 400 ms", RUNS, |_| {
        let id = fresh_id();
        let (out, elapsed) = timed_hook(
            &env,
            &["--deadline", "1s", "--stdin-timeout", "900ms"],
            &payload("SessionStart", &id, &ws),
            Duration::from_millis(400),
        );
        assert!(
            env.state_dir()
                .join(format!("sessions/{id}.json"))
                .is_file(),
            "the late payload was read: {}",
            stderr(&out)
        );
        elapsed
    });
    assert_within(max, Duration::from_secs(1), "a payload after 400 ms");
}

#[test]
fn absurd_durations_exit_2_on_the_command_line_and_0_with_the_error_logged_in_a_hook() {
    let mut env = Env::new();
    let ws = env.workspace("ws");
    let absurd = "500000000000years";
    for flag in ["--deadline", "--stdin-timeout"] {
        let id = fresh_id();
        let before = hook_errors(&env).len();
        let (out, elapsed) = timed_hook(
            &env,
            &[flag, absurd],
            &payload("SessionStart", &id, &ws),
            NO_DELAY,
        );
        assert_within(
            elapsed,
            Duration::from_secs(1),
            &format!("hook {flag} {absurd}"),
        );
        let text = stderr(&out);
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(
            text.contains(flag) && text.contains("expected at most 1h"),
            "hook {flag}: {text}"
        );
        assert!(!text.contains("panicked"), "{text}");
        assert_eq!(hook_errors(&env).len(), before + 1, "the error is logged");
    }
    let cases: [&[&str]; 7] = [
        &["reap", "--session", "s1", "--deadline", absurd],
        &["sweep", "--idle-ttl", absurd],
        &["sweep", "--retention", absurd],
        &["log", "--since", absurd],
        &[
            "broker",
            "spawn",
            "--no-owner",
            "--grace",
            absurd,
            "--",
            "true",
        ],
        &[
            "broker",
            "spawn",
            "--no-owner",
            "--idle-ttl",
            absurd,
            "--",
            "true",
        ],
        &["reap", "--session", "s1", "--deadline", "2h"],
    ];
    for args in cases {
        let before = env.state_files();
        let out = env.run(args);
        let text = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {text}");
        assert_eq!(crate::harness::error_lines(&text), 1, "{args:?}: {text}");
        assert!(text.contains("expected at most"), "{args:?}: {text}");
        assert_eq!(env.state_files(), before, "{args:?} changed nothing");
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Closed and full pipes; the watchdog

/// No panic, no backtrace: the command ended by SIGPIPE or exited, never with Rust's panic status.
fn assert_quiet(out: &Output, what: &str) {
    let text = stderr(out);
    assert!(
        !text.contains("panicked") && !text.contains("backtrace"),
        "{what}: {text}"
    );
    assert_ne!(out.status.code(), Some(101), "{what} panicked: {text}");
    assert!(
        out.status.success()
            || out.status.signal() == Some(libc::SIGPIPE)
            || out.status.code() == Some(2),
        "{what}: ended by {:?}: {text}",
        out.status
    );
}

#[test]
fn a_closed_stdout_ends_status_log_and_completions_quietly() {
    let mut env = Env::new();
    let ws = env.workspace("ws");
    let (_id, _broker, _slot) = session_with_broker(&mut env, &ws);
    let commands: [&[&str]; 4] = [
        &["status"],
        &["status", "--json"],
        &["log", "--json"],
        &["completions", "bash"],
    ];
    for args in commands {
        // Closed before the first write.
        let mut command = env.cmd(args);
        command.stdout(closed_pipe()).stderr(Stdio::piped());
        let out = command.output().expect("run");
        assert_quiet(&out, &format!("{args:?} into a closed pipe"));
        // `| head -1`: closed after the first line.
        let mut command = env.cmd(args);
        command.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = command.spawn().expect("run");
        let mut first = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut first)
            .unwrap();
        assert!(!first.is_empty(), "{args:?} printed a line");
        let out = child.wait_with_output().expect("wait");
        assert_quiet(&out, &format!("{args:?} | head -1"));
    }
    // And through a real shell pipeline.
    let line = format!(
        "{} --state-dir {} completions bash | head -1",
        crate::harness::BIN,
        env.state_dir().display()
    );
    let out = run_bounded(
        {
            let mut command = Command::new("sh");
            command.args(["-c", &line]);
            command
        },
        None,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).is_empty(),
        "no panic, no backtrace: {}",
        stderr(&out)
    );
}

#[test]
fn a_closed_stderr_ends_a_command_quietly_and_a_hook_exits_0() {
    let env = Env::new();
    let mut command = env.cmd(&["log", "--since", "500000000000years"]);
    command.stderr(closed_pipe()).stdout(Stdio::piped());
    let out = command.output().expect("run");
    assert_quiet(&out, "a refused command with a closed stderr");
    for stdin in [&b"not json"[..], &b"{\"session_id\": \"../x\"}"[..]] {
        let command = env.cmd(&["hook", "--deadline", "1s"]);
        let (out, elapsed) = run_timed_into(command, stdin, NO_DELAY, closed_pipe());
        assert_eq!(
            out.status.code(),
            Some(0),
            "a hook with a closed stderr exits 0"
        );
        assert!(out.stdout.is_empty());
        assert_within(
            elapsed,
            Duration::from_secs(1),
            "a hook with a closed stderr",
        );
    }
    assert_eq!(
        hook_errors(&env).len(),
        2,
        "each error still reached the log"
    );
}

#[test]
fn the_watchdog_ends_a_hook_blocked_on_a_full_stderr_at_its_deadline() {
    let env = Env::new();
    let max = measured(
        "hook blocked on a full stderr pipe, --deadline 500ms",
        RUNS,
        |_| {
            let (_reader, writer) = full_pipe();
            let command = env.cmd(&["hook", "--deadline", "500ms"]);
            let (out, elapsed) = run_timed_into(command, b"not json", NO_DELAY, writer);
            assert_eq!(out.status.code(), Some(0), "the watchdog exits 0");
            assert!(out.stdout.is_empty(), "and writes nothing to stdout");
            elapsed
        },
    );
    assert_within(
        max,
        Duration::from_millis(500),
        "a hook blocked on its stderr",
    );
    assert!(
        hook_errors(&env).len() >= RUNS,
        "the error was logged before the blocked stderr line: {:?}",
        env.events()
    );
}

// ---------------------------------------------------------------------------------------------------------------
// One driver per ticket

#[test]
fn sweep_and_finisher_on_one_overdue_ticket_log_exactly_one_stop_50_rounds() {
    let mut env = Env::new();
    let boot_id = fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .unwrap()
        .trim()
        .to_owned();
    let boot: String = boot_id
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(8)
        .collect();
    let host = fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_owned();
    let stopping = env.state_dir().join("stopping");
    fs::create_dir_all(&stopping).unwrap();
    // The state root must exist before the first run (the sweep creates it; the finisher expects it).
    assert!(env.run(&["status"]).status.success());
    for round in 0..50 {
        let sleeper = env.sleeper();
        let ticket = json!({
            "version": 1,
            "identity": {"boot_id": boot_id, "pid": sleeper.pid, "start_ticks": sleeper.ticks,
                         "uid": unsafe { libc::geteuid() }},
            "reason": "session_end",
            "requested_at": "2026-01-01T00:00:00.000Z",
            "grace_ms": 0,
            "attempts": 0,
            "origin": format!("edges-{round}"),
            "host": host,
            "term_at": "2026-01-01T00:00:00.000Z",
        });
        let path = stopping.join(format!("{boot}-{}-{}.json", sleeper.pid, sleeper.ticks));
        fs::write(&path, serde_json::to_vec(&ticket).unwrap()).unwrap();
        let drivers: Vec<_> = [vec!["sweep"], vec!["finish"]]
            .into_iter()
            .map(|args| {
                let mut command = env.cmd(&args);
                command.stdout(Stdio::null()).stderr(Stdio::piped());
                command.spawn().expect("start a driver")
            })
            .collect();
        for driver in drivers {
            let out = driver.wait_with_output().expect("a driver ends");
            assert!(!stderr(&out).contains("panicked"), "{}", stderr(&out));
        }
        env.reap_children();
        assert!(
            sleeper.gone_within(PATIENCE),
            "round {round}: the process was stopped"
        );
        assert!(
            wait_until(PATIENCE, || !path.exists()),
            "round {round}: the ticket is gone"
        );
        let stops: Vec<Value> = env
            .events_where("stop", None)
            .into_iter()
            .filter(|event| event["pid"] == sleeper.pid)
            .collect();
        assert_eq!(stops.len(), 1, "round {round}: one stop event: {stops:?}");
        assert_eq!(stops[0]["result"], "stopped", "{stops:?}");
    }
    // A finisher a driver started may still be looking: when it is done, no lock of a finished ticket is left.
    assert!(wait_until(PATIENCE, || {
        fs::read_dir(&stopping)
            .unwrap()
            .flatten()
            .all(|entry| !entry.file_name().to_string_lossy().ends_with(".lock"))
    }));
}
