//! What a session's end, a sweep and `status` cost as the state root grows: 10, 1,000, 10,000 and 100,000
//! workspaces (records written from a fixture-shaped template, session records with their owner index), 300 extra
//! processes of ours planted, each case beside a reference measured in the same run. Prints a table; asserts
//! nothing about speed.
//!
//! Run: `cargo bench --bench scale` (`-- --quick`: 10 and 1,000 workspaces, 5 runs each).

#[path = "support/mod.rs"]
mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use session_reaper::testing::workspace_key;
use support::{Options, Planted, Root, Sample, Table, Target, measure, ours, payload, reference};

/// The owners of one session's end case: `rounds` sessions own the same slots, one ends per run.
struct Owned {
    prefix: &'static str,
    slots: Vec<usize>,
}

#[allow(clippy::too_many_lines)] // the table, case by case
fn main() {
    let options = Options::from_args();
    let rounds = options.rounds();
    // SESSION_REAPER_BENCH_SIZES=10000,100000 measures only those sizes.
    let sizes: Vec<usize> = match std::env::var("SESSION_REAPER_BENCH_SIZES") {
        Ok(list) => list
            .split(',')
            .filter_map(|size| size.trim().parse().ok())
            .collect(),
        Err(_) if options.quick => vec![10, 1_000],
        Err(_) => vec![10, 1_000, 10_000, 100_000],
    };
    let temp = tempfile::Builder::new()
        .prefix("sr-bench-scale-")
        .tempdir()
        .expect("temp dir");
    let cwd = temp.path().join("ws");
    support::mkdir(&cwd.join(".git"));
    let cwd_text = cwd.to_str().unwrap().to_owned();

    // One live broker that every planted record names, owned by a session that never ends ("keeper"): no run stops it.
    let brokers = Root::new(temp.path(), "brokers");
    let broker = support::spawn_broker(&brokers.path, &cwd, "keeper", &[]);
    let _cleanup = ReapOnDrop(&brokers.path);
    let _planted = Planted::sleepers(
        300,
        &[("CLAUDE_CODE_SESSION_ID", String::from("bench-bystander"))],
    );
    let leftovers_flag = support::supports(&["hook"], "--leftovers");

    let truth = measure(rounds, None, &|_| reference("/bin/true", &[]));
    let mut table = Table::new(&format!(
        "scale: {rounds} runs a case, 300 extra processes of ours planted"
    ));
    table.row("/bin/true", &truth, None, Target::None, None);
    let mut by_size: Vec<(usize, [Sample; 4])> = Vec::new();
    let mut profiles: Vec<String> = Vec::new();
    let mut planted: Vec<(usize, Duration)> = Vec::new();
    for &size in &sizes {
        let root = Root::new(temp.path(), &format!("scale-{size}"));
        let one_percent = Owned {
            prefix: "pct",
            slots: (0..(size / 100).max(1)).collect(),
        };
        let ten = Owned {
            prefix: "ten",
            slots: (0..10)
                .map(|i| (size / 100).max(1) + i)
                .map(|i| i % size)
                .collect(),
        };
        let planting = Instant::now();
        plant(
            &root.path,
            size,
            &broker,
            &[&one_percent, &ten],
            2 * rounds + 1,
        );
        planted.push((size, planting.elapsed()));
        let end = |owned: &Owned, offset: usize, extra: &'static [&'static str], runs: usize| {
            let path = root.path.clone();
            let cwd = cwd_text.clone();
            let prefix = owned.prefix;
            measure(
                runs,
                Some(&move |round| {
                    payload(&format!("{prefix}-{}", round + offset), "SessionEnd", &cwd)
                }),
                &move |_| {
                    let mut command = ours(&path, &["hook", "--agent", "claude"]);
                    command.args(extra);
                    command
                },
            )
        };
        // Ending a session that owns 1,000 slots rewrites 1,000 records: 5 runs at 100,000 workspaces.
        let pct = end(
            &one_percent,
            0,
            &[],
            if size >= 100_000 {
                rounds.min(5)
            } else {
                rounds
            },
        );
        let ten_end = end(&ten, 0, &[], rounds);
        let hook_rss = Some(8 * 1024);
        table.row(
            &format!(
                "hook SessionEnd, owns {} slots (~1 %), {size} workspaces",
                one_percent.slots.len()
            ),
            &pct,
            Some(("/bin/true", &truth)),
            Target::None,
            hook_rss,
        );
        table.row(
            &format!("hook SessionEnd, owns 10 slots, {size} workspaces"),
            &ten_end,
            Some(("/bin/true", &truth)),
            Target::Median(Duration::from_millis(15)),
            hook_rss,
        );
        if ten_end.median() > Duration::from_millis(15) && (size == 10 || size >= 100_000) {
            // One more session of the same slots, ended under strace.
            let command = ours(&root.path, &["hook", "--agent", "claude"]);
            support::profile(
                &format!("hook SessionEnd 10 slots {size} workspaces"),
                &command,
                Some(&payload(
                    &format!("ten-{}", 2 * rounds - 1),
                    "SessionEnd",
                    &cwd_text,
                )),
            );
        }
        if leftovers_flag {
            let bare = end(&ten, rounds, &["--leftovers", "off"], rounds);
            table.row(
                &format!("hook SessionEnd, owns 10 slots, {size} workspaces, vs --leftovers off"),
                &ten_end,
                Some(("--leftovers off", &bare)),
                Target::MedianAndRatio(Duration::from_millis(15), 1.3),
                hook_rss,
            );
        }
        // A full scan of 100,000 workspaces takes seconds: 3 runs there (and of the reference from 10,000 up).
        let scan_rounds = if size >= 100_000 {
            rounds.min(3)
        } else {
            rounds
        };
        let reference_rounds = if size >= 10_000 {
            rounds.min(3)
        } else {
            rounds
        };
        let records = measure(reference_rounds, None, &|_| {
            reference(
                "sh",
                &[
                    "-c",
                    &format!(
                        "find {}/workspaces -name broker.json -exec cat {{}} + >/dev/null",
                        root.path.display()
                    ),
                ],
            )
        });
        let sweep = measure(scan_rounds, None, &|_| {
            ours(&root.path, &["sweep", "--dry-run", "--json"])
        });
        let sweep_target = match size {
            10_000 => Target::Median(Duration::from_millis(250)),
            100_000 => Target::Median(Duration::from_millis(2500)),
            _ => Target::None,
        };
        if matches!(sweep_target, Target::Median(bound) if sweep.median() > bound) {
            profiles.push(support::profile(
                &format!("sweep --dry-run {size} workspaces"),
                &ours(&root.path, &["sweep", "--dry-run", "--json"]),
                None,
            ));
        }
        table.row(
            &format!("sweep --dry-run --json, {size} workspaces"),
            &sweep,
            Some(("find+cat every broker.json", &records)),
            sweep_target,
            None,
        );
        let status = measure(scan_rounds, None, &|_| {
            ours(&root.path, &["status", "--json"])
        });
        table.row(
            &format!("status --json, {size} workspaces"),
            &status,
            Some(("find+cat every broker.json", &records)),
            Target::None,
            (size == 100_000).then_some(32 * 1024),
        );
        by_size.push((size, [pct, ten_end, sweep, status]));
    }
    let names = [
        "hook SessionEnd (~1 % of slots)",
        "hook SessionEnd (10 slots)",
        "sweep --dry-run",
        "status --json",
    ];
    for pair in by_size.windows(2) {
        let ((small, small_samples), (large, large_samples)) = (&pair[0], &pair[1]);
        if *small < 1_000 {
            continue;
        }
        for (index, name) in names.iter().enumerate() {
            let ratio = large_samples[index].median().as_secs_f64()
                / small_samples[index].median().as_secs_f64();
            let (target, met) = if index >= 2 && *large == 100_000 {
                ("≤ 11", Some(ratio <= 11.0))
            } else {
                ("—", None)
            };
            table.figure(
                &format!("{name}: median at {large} / at {small} workspaces"),
                &format!("{ratio:.2}"),
                target,
                met,
            );
        }
    }
    table.finish();
    for (size, took) in planted {
        println!("planted {size} workspaces in {:.2} s", took.as_secs_f64());
    }
    for profile in profiles {
        println!("{profile}");
    }
}

/// Plants `size` workspaces under `root`, each with one broker record naming `broker`'s live process and owned by
/// "keeper"; the slots of each `Owned` also by `<prefix>-0` … `<prefix>-<sessions - 1>`, whose session records
/// (live: their agent is this process) index exactly those slots.
fn plant(root: &Path, size: usize, broker: &serde_json::Value, owned: &[&Owned], sessions: usize) {
    // Fresh records: the sweep keeps every slot (a state root where 100,000 brokers are all due for an idle stop is
    // another case, a stop per slot).
    let now = &session_reaper::testing::now_rfc3339();
    let host = broker["host"].as_str().unwrap_or_default().to_owned();
    let keys: Vec<String> = (0..size)
        .map(|index| workspace_key(Path::new(&format!("/nonexistent/bench/ws{index}"))))
        .collect();
    let owner_entry = |session: &str| serde_json::json!({"session": session, "since": now});
    let mut template = serde_json::json!({
        "version": 1, "name": "default", "workspace": "", "cwd": "/",
        "command": ["sleep", "600"], "owners": [],
        "identity": broker["identity"], "pgid": broker["identity"]["pid"],
        "created_at": now, "last_active": now, "grace_ms": 5000, "host": host,
    });
    support::mkdir(&root.join("sessions"));
    support::mkdir(&root.join("stopping"));
    for (index, key) in keys.iter().enumerate() {
        let dir = root.join("workspaces").join(key).join("default");
        support::mkdir(&dir);
        let mut owners = vec![owner_entry("keeper")];
        for case in owned.iter().filter(|case| case.slots.contains(&index)) {
            owners.extend((0..sessions).map(|n| owner_entry(&format!("{}-{n}", case.prefix))));
        }
        template["workspace"] = format!("/nonexistent/bench/ws{index}").into();
        template["owners"] = owners.into();
        support::write_private(
            &dir.join("broker.json"),
            &serde_json::to_vec_pretty(&template).unwrap(),
        );
    }
    let agent = support::own_identity();
    for case in owned {
        let slots: Vec<String> = case
            .slots
            .iter()
            .map(|index| format!("{}/default", keys[*index]))
            .collect();
        for n in 0..sessions {
            let id = format!("{}-{n}", case.prefix);
            let record = serde_json::json!({
                "version": 1, "session_id": id, "agent": "claude", "cwd": "/",
                "agent_identity": agent, "host": host, "started_at": now, "last_seen": now,
                "ended_at": null, "end_reason": null, "slots": slots,
            });
            support::write_private(
                &root.join(format!("sessions/{id}.json")),
                &serde_json::to_vec_pretty(&record).unwrap(),
            );
        }
    }
}

/// Ends the broker's owner in its own state root (a stop through the binary), however `main` ends.
struct ReapOnDrop<'a>(&'a Path);

impl Drop for ReapOnDrop<'_> {
    fn drop(&mut self) {
        let _ = ours(self.0, &["reap", "--session", "keeper"]).output();
    }
}
