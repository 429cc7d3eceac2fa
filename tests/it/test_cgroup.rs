//! A cgroup v2 parent made by a test (under the v2 mount found in `/proc/self/mountinfo`) for the binary to make
//! its cgroups in (`SESSION_REAPER_CGROUP_ROOT`), removed with everything below it on drop, even when the test
//! fails. Shared by the integration tests and the real-client end-to-end test (`#[path]`), so it needs nothing else.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// A cgroup v2 directory this test made, under which the binary makes its own; on drop every process still in it
/// (all the test's own: agents, their leftovers, sentinels) is moved back to the test's cgroup and each directory
/// is removed, deepest first.
pub(crate) struct TestCgroup {
    pub dir: PathBuf,
    home: PathBuf,
}

impl TestCgroup {
    /// Makes the test's parent cgroup; `None` (said on stderr) where cgroup v2 is missing or not writable, except
    /// under `CI=true`, where that fails the test.
    pub(crate) fn new() -> Option<TestCgroup> {
        match Self::make() {
            Ok(made) => Some(made),
            Err(why) if std::env::var("CI").is_ok_and(|ci| ci == "true") => {
                panic!("containment test: cannot make a test cgroup under CI: {why}")
            }
            Err(why) => {
                eprintln!("SKIPPED: containment test: cannot make a test cgroup: {why}");
                None
            }
        }
    }

    pub(crate) fn make() -> Result<TestCgroup, String> {
        let mountinfo =
            std::fs::read_to_string("/proc/self/mountinfo").map_err(|e| e.to_string())?;
        let mount = mountinfo
            .lines()
            .filter_map(|line| line.split_once(" - "))
            .find(|(before, after)| {
                after.starts_with("cgroup2 ") && before.split(' ').nth(3) == Some("/")
            })
            .and_then(|(before, _)| before.split(' ').nth(4).map(PathBuf::from))
            .ok_or("no cgroup2 mount in /proc/self/mountinfo")?;
        let own = std::fs::read_to_string("/proc/self/cgroup").map_err(|e| e.to_string())?;
        let own = own
            .lines()
            .find_map(|line| line.strip_prefix("0::"))
            .ok_or("no cgroup v2 line in /proc/self/cgroup")?;
        let home = mount.join(own.trim_start_matches('/'));
        let dir = mount.join(format!("sr-test-{}-{}", std::process::id(), unique()));
        std::fs::create_dir(&dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
        let made = TestCgroup { dir, home };
        if !made.dir.join("cgroup.procs").exists() {
            return Err("the test cgroup has no cgroup.procs".into());
        }
        Ok(made)
    }

    /// Environment entries that turn containment on with this parent.
    pub(crate) fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("SESSION_REAPER_CONTAINMENT", "on".to_owned()),
            (
                "SESSION_REAPER_CGROUP_ROOT",
                self.dir.to_string_lossy().into_owned(),
            ),
        ]
    }

    /// The cgroups below the parent (ours: `agent-…`, `broker-…`).
    pub(crate) fn children(&self) -> Vec<String> {
        std::fs::read_dir(&self.dir)
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .filter(|entry| entry.path().is_dir())
                    .map(|entry| entry.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The cgroup path of `pid` (as `/proc/<pid>/cgroup` says), relative to the mount.
    pub(crate) fn cgroup_of(pid: i32) -> Option<String> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
        text.lines()
            .find_map(|line| line.strip_prefix("0::"))
            .map(str::to_owned)
    }

    /// True when `pid` is in a cgroup under the test's parent named `name_prefix…`.
    pub(crate) fn holds(&self, pid: i32, name_prefix: &str) -> bool {
        let parent = self.dir.file_name().unwrap().to_string_lossy().into_owned();
        Self::cgroup_of(pid).is_some_and(|path| {
            path.split('/')
                .collect::<Vec<_>>()
                .windows(2)
                .any(|pair| pair[0] == parent && pair[1].starts_with(name_prefix))
        })
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        let home_procs = self.home.join("cgroup.procs");
        let mut dirs: Vec<PathBuf> = walkdir(&self.dir);
        // Deepest first.
        dirs.sort_by_key(|dir| std::cmp::Reverse(dir.components().count()));
        for _ in 0..50 {
            let mut left = false;
            for dir in &dirs {
                let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
                for pid in procs.lines() {
                    let _ = std::fs::write(&home_procs, pid);
                }
                if dir.exists() && std::fs::remove_dir(dir).is_err() {
                    left = true;
                }
            }
            if !left {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!("test cgroup {} could not be removed", self.dir.display());
    }
}

fn walkdir(dir: &Path) -> Vec<PathBuf> {
    let mut found = vec![dir.to_path_buf()];
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.filter_map(Result::ok) {
            if entry.path().is_dir() {
                found.extend(walkdir(&entry.path()));
            }
        }
    }
    found
}

/// A name part no other test uses: the clock's nanoseconds and a counter.
fn unique() -> String {
    static COUNT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.subsec_nanos());
    format!(
        "{nanos:x}-{}",
        COUNT.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
    )
}
