//! The Codex plugin for Claude Code (codex-plugin-cc 1.0.5–1.0.6), with no change to that plugin. It keeps one
//! `broker.json` per workspace under its state root (`$CLAUDE_PLUGIN_DATA/state`, else `<tmpdir>/codex-companion`),
//! shared by every session of the workspace and naming no owner; its own `SessionEnd` stops whatever broker the
//! session's cwd maps to. Here: where its state lives (`Discovery`), and the three entry points — a session's end,
//! a sweep, and the read-only views of `status`, `doctor` and leftover discovery. `observe` reads its files and
//! processes, `decide` judges them without I/O, `act` files stop tickets and cleans its files.

pub(crate) mod act;
pub(crate) mod decide;
pub(crate) mod observe;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use crate::act::signal::Guard;
use crate::adapters::{AdapterAction, AdapterReport};
use crate::model::deadline::Deadline;
use crate::store::Store;
use crate::store::events::Reason;
use decide::{Occasion, Verdict};

/// The adapter's name in tickets, events and reports.
pub(crate) const ADAPTER: &str = "codex-plugin";
/// The broker's script: `node …/app-server-broker.mjs serve --endpoint E --cwd C --pid-file P`.
pub(crate) const BROKER_SCRIPT: &str = "app-server-broker.mjs";
/// The session that spawned a broker, inherited through the plugin's `SessionStart` env file.
pub(crate) const SESSION_VAR: &str = "CODEX_COMPANION_SESSION_ID";
/// The line that asks a broker to shut down; a healthy one answers `{"id":1,"result":{}}` and exits.
pub(crate) const SHUTDOWN_MESSAGE: &str = r#"{"id":1,"method":"broker/shutdown","params":{}}"#;
/// How long after its start a broker may still be waiting for its `broker.json` (the plugin waits up to 2 s for
/// the endpoint before writing it): until then an unlisted broker is not judged.
pub(crate) const SPAWN_WINDOW: Duration = Duration::from_secs(3);

/// Where to look for the plugin's state: the roots it uses, every Claude Code plugin data dir, and `--codex-state`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Discovery {
    pub enabled: bool,
    pub extra_roots: Vec<PathBuf>,
}

impl Default for Discovery {
    fn default() -> Self {
        Discovery {
            enabled: true,
            extra_roots: Vec::new(),
        }
    }
}

/// One place the plugin may keep its state, and why we look there.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub(crate) struct Root {
    pub path: PathBuf,
    pub source: String,
}

impl Discovery {
    /// The words that say this on a command line (`--no-codex`, `--codex-state DIR`…): a hook hands them to the
    /// sentinel it starts, which looks where the hook was told to.
    pub(crate) fn words(&self) -> Vec<String> {
        if !self.enabled {
            return vec!["--no-codex".to_owned()];
        }
        self.extra_roots
            .iter()
            .flat_map(|dir| ["--codex-state".to_owned(), dir.display().to_string()])
            .collect()
    }

    /// `words` read back; `None` for any other word.
    pub(crate) fn from_words(words: &[&str]) -> Option<Self> {
        let mut discovery = Discovery::default();
        let mut words = words.iter();
        while let Some(word) = words.next() {
            match *word {
                "--no-codex" => discovery.enabled = false,
                "--codex-state" => discovery.extra_roots.push(PathBuf::from(words.next()?)),
                _ => return None,
            }
        }
        Some(discovery)
    }

    /// `--no-codex`.
    pub(crate) fn off() -> Self {
        Discovery {
            enabled: false,
            extra_roots: Vec::new(),
        }
    }

    /// Every place the plugin's state may be, existing or not (for `doctor`), first source first, each path once.
    pub(crate) fn candidates(&self) -> Vec<Root> {
        if !self.enabled {
            return Vec::new();
        }
        let mut roots = Vec::new();
        if let Some(data) = nonempty_env("CLAUDE_PLUGIN_DATA") {
            roots.push(root(Path::new(&data).join("state"), "$CLAUDE_PLUGIN_DATA"));
        }
        roots.push(root(tmp_dir().join("codex-companion"), "tmpdir"));
        if let Some(home) = nonempty_env("HOME") {
            let data = Path::new(&home).join(".claude/plugins/data");
            let mut found: Vec<PathBuf> = std::fs::read_dir(&data)
                .map(|entries| {
                    entries
                        .filter_map(Result::ok)
                        .map(|entry| entry.path().join("state"))
                        .collect()
                })
                .unwrap_or_default();
            found.sort();
            roots.extend(found.into_iter().map(|path| root(path, "plugin data")));
        }
        roots.extend(
            self.extra_roots
                .iter()
                .map(|path| root(path.clone(), "--codex-state")),
        );
        let mut seen = HashSet::new();
        roots.retain(|root| seen.insert(root.path.clone()));
        roots
    }

    /// The candidates that exist and are safe to read (directories of ours, not symlinks), by canonical path, each
    /// once.
    pub(crate) fn roots(&self) -> Vec<Root> {
        let uid = rustix::process::getuid().as_raw();
        let mut seen = HashSet::new();
        self.candidates()
            .into_iter()
            .filter(|root| observe::is_own_dir(&root.path, uid))
            .map(|root| Root {
                path: canonical(&root.path),
                source: root.source,
            })
            .filter(|root| seen.insert(root.path.clone()))
            .collect()
    }
}

fn root(path: PathBuf, source: &str) -> Root {
    Root {
        path,
        source: source.to_owned(),
    }
}

fn nonempty_env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|value| !value.is_empty())
}

/// Node's `os.tmpdir()` on Unix: `$TMPDIR`, `$TMP`, `$TEMP`, else `/tmp`, without a trailing slash.
pub(crate) fn tmp_dir() -> PathBuf {
    tmp_dir_from(nonempty_env)
}

/// `tmp_dir` from any environment (a broker's, read from /proc).
pub(crate) fn tmp_dir_from(var: impl Fn(&str) -> Option<String>) -> PathBuf {
    let dir = ["TMPDIR", "TMP", "TEMP"]
        .into_iter()
        .find_map(var)
        .unwrap_or_else(|| "/tmp".to_owned());
    let trimmed = dir.trim_end_matches('/');
    PathBuf::from(if trimmed.is_empty() { "/" } else { trimmed })
}

fn canonical(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
}

/// Ending session `session` (`SessionEnd`, `reap`, a sweep's `owners_gone`): stop the plugin's brokers whose owners
/// are all that session (or ended) and that are not busy; clean `broker.json` files whose broker is gone.
pub(crate) fn at_session_end(
    store: &Store,
    guard: &Guard,
    discovery: &Discovery,
    session: &str,
    reason: Reason,
    (dry_run, deadline): (bool, Deadline),
) -> AdapterReport {
    let occasion = Occasion::SessionEnd { session, reason };
    run(store, guard, discovery, &occasion, (dry_run, deadline))
}

/// A sweep: stop brokers whose owners are all gone, ownerless reparented ones and idle ones; clean dead records.
pub(crate) fn at_sweep(
    store: &Store,
    guard: &Guard,
    discovery: &Discovery,
    idle_ttl: Duration,
    dry_run: bool,
) -> AdapterReport {
    run(
        store,
        guard,
        discovery,
        &Occasion::Sweep { idle_ttl },
        (dry_run, Deadline::far()),
    )
}

/// observe → decide → act, for one occasion.
fn run(
    store: &Store,
    guard: &Guard,
    discovery: &Discovery,
    occasion: &Occasion<'_>,
    (dry_run, deadline): (bool, Deadline),
) -> AdapterReport {
    let mut report = AdapterReport::default();
    let roots = discovery.roots();
    if roots.is_empty() {
        return report;
    }
    let sessions = store.sessions.all();
    let world = observe::observe(&roots, &sessions, guard.uid(), deadline);
    for broker in &world.brokers {
        let verdict = decide::judge(&broker.facts(occasion.ending()), occasion);
        if matches!(verdict, Verdict::Leave) {
            continue;
        }
        act::apply(
            store,
            broker,
            &verdict,
            occasion,
            &world,
            dry_run,
            &mut report,
        );
    }
    report
}

/// One plugin broker as `status` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct BrokerStatus {
    pub workspace: String,
    pub state_dir: Option<String>,
    pub pid: Option<i32>,
    pub alive: bool,
    pub unlisted: bool,
    pub owners: Vec<String>,
    /// Why it counts as busy (a queued or running job), if it does.
    pub busy: Option<String>,
    pub idle_secs: Option<u64>,
    /// What checking its process found: `verified`, `dead`, `not_a_broker`, `endpoint_mismatch`, ….
    pub check: &'static str,
    pub endpoint: Option<String>,
}

/// The plugin's brokers, read-only (nothing is written, locked or signalled).
pub(crate) fn status(store: Option<&Store>, discovery: &Discovery) -> Vec<BrokerStatus> {
    let roots = discovery.roots();
    if roots.is_empty() {
        return Vec::new();
    }
    let sessions = store.map(|store| store.sessions.all()).unwrap_or_default();
    let uid = rustix::process::getuid().as_raw();
    observe::observe(&roots, &sessions, uid, Deadline::far())
        .brokers
        .iter()
        .map(|broker| {
            let facts = broker.facts(None);
            BrokerStatus {
                workspace: broker.workspace(),
                state_dir: broker
                    .state_dir
                    .as_ref()
                    .map(|dir| dir.display().to_string()),
                pid: broker.pid(),
                alive: facts.check == decide::ProcessCheck::Verified,
                unlisted: !facts.listed,
                owners: broker.owners.iter().map(|(id, _)| id.clone()).collect(),
                busy: facts.busy,
                idle_secs: facts.idle_for.map(|idle| idle.as_secs()),
                check: facts.check.as_str(),
                endpoint: broker.endpoint(),
            }
        })
        .collect()
}

/// Prints the `status` section.
pub(crate) fn print_status(brokers: &[BrokerStatus]) {
    if brokers.is_empty() {
        return;
    }
    println!("codex plugin brokers:");
    println!(
        "  {:<8} {:<6} {:<9} {:<6} {:<7} {:<24} workspace",
        "pid", "alive", "unlisted", "busy", "idle", "owners"
    );
    for broker in brokers {
        let owners = if broker.owners.is_empty() {
            "-".to_owned()
        } else {
            broker.owners.join(",")
        };
        let alive = match broker.check {
            "verified" => "yes".to_owned(),
            "dead" => "no".to_owned(),
            other => other.replace('_', " "),
        };
        println!(
            "  {:<8} {:<6} {:<9} {:<6} {:<7} {:<24} {}",
            broker.pid.map_or("-".to_owned(), |pid| pid.to_string()),
            alive,
            if broker.unlisted { "yes" } else { "no" },
            if broker.busy.is_some() { "yes" } else { "no" },
            broker.idle_secs.map_or("-".to_owned(), |secs| {
                humantime::format_duration(Duration::from_secs(secs)).to_string()
            }),
            crate::model::text::shorten(&owners, 24),
            broker.workspace
        );
        if let Some(why) = &broker.busy {
            println!("           busy: {why}");
        }
    }
}

/// What `doctor` reports: where the plugin is installed, if it is, and where its state lives.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Installation {
    pub installed_at: Option<PathBuf>,
    pub roots: Vec<RootReport>,
}

#[derive(Clone, Debug, Serialize)]
pub(crate) struct RootReport {
    #[serde(flatten)]
    pub root: Root,
    pub exists: bool,
    pub brokers: usize,
}

/// Looks for the plugin under `~/.claude/plugins` (its broker script) and for its state roots.
pub(crate) fn installation(discovery: &Discovery) -> Installation {
    let installed_at = nonempty_env("HOME")
        .and_then(|home| installed_under(&Path::new(&home).join(".claude/plugins")));
    let uid = rustix::process::getuid().as_raw();
    let roots = discovery
        .candidates()
        .into_iter()
        .map(|root| {
            let exists = observe::is_own_dir(&root.path, uid);
            let brokers = if exists {
                observe::broker_files(&root.path, uid).len()
            } else {
                0
            };
            RootReport {
                root,
                exists,
                brokers,
            }
        })
        .collect();
    Installation {
        installed_at,
        roots,
    }
}

/// The plugin's directory as Claude Code installs it — `cache/<marketplace>/<plugin>/<version>/`, else a
/// marketplace's `marketplaces/<marketplace>/plugins/<plugin>/` — holding `scripts/app-server-broker.mjs`; the last
/// by name (the newest version) when there are several. Only those levels are listed, never a plugin's own tree.
fn installed_under(plugins: &Path) -> Option<PathBuf> {
    let below = |dirs: Vec<PathBuf>, part: &str| -> Vec<PathBuf> {
        let mut found: Vec<PathBuf> = dirs
            .iter()
            .flat_map(|dir| match part {
                "*" => std::fs::read_dir(dir)
                    .map(|entries| entries.filter_map(Result::ok).map(|e| e.path()).collect())
                    .unwrap_or_default(),
                name => vec![dir.join(name)],
            })
            .filter(|path| path.is_dir())
            .collect();
        found.sort();
        found
    };
    let layouts: [&[&str]; 2] = [
        &["cache", "*", "*", "*"],
        &["marketplaces", "*", "plugins", "*"],
    ];
    layouts.iter().find_map(|layout| {
        let dirs = layout
            .iter()
            .fold(vec![plugins.to_path_buf()], |dirs, part| below(dirs, part));
        dirs.into_iter()
            .rev()
            .find(|dir| dir.join("scripts").join(BROKER_SCRIPT).is_file())
    })
}

/// `doctor`'s check: ok when the plugin is absent or installed with its state found; names where the state lives.
pub(crate) fn doctor_check() -> crate::model::check::Check {
    use crate::model::check::{Check, Level};
    let found = installation(&Discovery::default());
    let existing: Vec<String> = found
        .roots
        .iter()
        .filter(|root| root.exists)
        .map(|root| {
            format!(
                "{} ({}, {} broker.json)",
                root.root.path.display(),
                root.root.source,
                root.brokers
            )
        })
        .collect();
    let state = if existing.is_empty() {
        "no state yet".to_owned()
    } else {
        format!("state in {}", existing.join("; "))
    };
    let mut detail = match &found.installed_at {
        Some(dir) => format!("installed at {}; {state}", dir.display()),
        None if existing.is_empty() => "not installed".to_owned(),
        None => format!("not found under ~/.claude/plugins; {state}"),
    };
    // What a sweep would take care of: brokers the plugin lost, records of brokers that are gone.
    let brokers = status(None, &Discovery::default());
    let lost = brokers.iter().filter(|broker| broker.unlisted).count();
    let dead = brokers
        .iter()
        .filter(|broker| matches!(broker.check, "dead" | "not_a_broker"))
        .count();
    let running = brokers.iter().filter(|broker| broker.alive).count();
    if !brokers.is_empty() {
        detail = format!(
            "{detail}; {running} broker(s) running, {lost} unlisted, {dead} record(s) of gone brokers"
        );
    }
    let level = if lost + dead > 0 {
        Level::Warn
    } else {
        Level::Ok
    };
    Check {
        name: "codex plugin".to_owned(),
        level,
        detail,
        fix: (lost + dead > 0).then(|| {
            "install the periodic sweep (`session-reaper install --agent claude --with-sweep`), or run \
             `session-reaper sweep`"
                .to_owned()
        }),
    }
}

/// The plugin's brokers and their process groups, as observed: not leftovers of any one session.
pub(crate) fn claimed(
    discovery: &Discovery,
    deadline: Deadline,
) -> Vec<crate::model::record::Identity> {
    let roots = discovery.roots();
    if roots.is_empty() {
        return Vec::new();
    }
    let uid = rustix::process::getuid().as_raw();
    observe::observe(&roots, &[], uid, deadline)
        .brokers
        .iter()
        .filter_map(|broker| broker.process.as_ref())
        .flat_map(|seen| {
            let mut claimed = vec![seen.identity.clone()];
            if seen.stat.pgid == seen.identity.pid {
                claimed.extend(observe::members_of_live_leader(&seen.identity, deadline));
            }
            claimed
        })
        .collect()
}

/// The sweep-shaped action for a verdict.
fn action(
    verb: &'static str,
    reason: Option<Reason>,
    target: String,
    pid: Option<i32>,
    result: String,
) -> AdapterAction {
    AdapterAction {
        action: verb,
        reason: reason.map(|reason| reason.to_string()),
        target,
        pid,
        result,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tmpdir_is_nodes() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(key, _)| *key == name)
                    .map(|(_, value)| (*value).to_owned())
            }
        };
        assert_eq!(tmp_dir_from(env(&[])), PathBuf::from("/tmp"));
        assert_eq!(
            tmp_dir_from(env(&[("TMP", "/t2"), ("TMPDIR", "/t1/")])),
            PathBuf::from("/t1")
        );
        assert_eq!(tmp_dir_from(env(&[("TEMP", "/t3")])), PathBuf::from("/t3"));
        assert_eq!(tmp_dir_from(env(&[("TMPDIR", "/")])), PathBuf::from("/"));
    }

    #[test]
    fn only_real_directories_of_ours_are_roots() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("state");
        std::fs::create_dir_all(&real).unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let file = dir.path().join("file");
        std::fs::write(&file, "").unwrap();
        let discovery = Discovery {
            enabled: true,
            extra_roots: vec![
                real.clone(),
                link,
                file,
                dir.path().join("missing"),
                real.clone(),
            ],
        };
        let extra: Vec<PathBuf> = discovery
            .roots()
            .into_iter()
            .filter(|root| root.source == "--codex-state")
            .map(|root| root.path)
            .collect();
        assert_eq!(extra, [std::fs::canonicalize(&real).unwrap()]);
        assert!(Discovery::off().candidates().is_empty());
    }
}
