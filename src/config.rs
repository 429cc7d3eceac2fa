//! Resolves what the command line leaves open, once: the state root, owner sessions from the environment or the
//! calling agent, and range checks on durations. Errors here are the user's input: exit 2.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::bad_input;
use crate::name::SessionId;
use crate::proc;
use crate::sessions::Sessions;

/// Settings every command shares.
#[derive(Clone, Debug)]
pub struct Config {
    pub state_dir: PathBuf,
    pub verbose: bool,
}

impl Config {
    pub fn new(state_dir_flag: Option<&Path>, verbose: bool) -> anyhow::Result<Self> {
        Ok(Config {
            state_dir: crate::state::resolve_root(state_dir_flag)?,
            verbose,
        })
    }
}

/// The environment variables naming the current session, in order of precedence.
pub const SESSION_ENV: [&str; 3] = [
    "SESSION_REAPER_SESSION_ID",
    "CLAUDE_CODE_SESSION_ID",
    "GEMINI_SESSION_ID",
];

/// How the owner of a broker was found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OwnerSource {
    Flag,
    Env(&'static str),
    Ancestry,
}

/// The owner session: `--session`, else the environment, else the live session whose recorded agent process is an
/// ancestor of this process (the newest, if several). `None` when nothing names one.
pub fn resolve_owner(
    flag: Option<&str>,
    sessions: &Sessions,
) -> anyhow::Result<Option<(SessionId, OwnerSource)>> {
    if let Some(text) = flag {
        return SessionId::parse(text).map(|id| Some((id, OwnerSource::Flag)));
    }
    for name in SESSION_ENV {
        if let Some(value) = std::env::var(name).ok().filter(|value| !value.is_empty()) {
            let id =
                SessionId::parse(&value).map_err(|err| bad_input(format!("${name}: {err}")))?;
            return Ok(Some((id, OwnerSource::Env(name))));
        }
    }
    Ok(session_of_ancestor(sessions).map(|id| (id, OwnerSource::Ancestry)))
}

/// The newest live session whose agent process is one of our ancestors.
pub fn session_of_ancestor(sessions: &Sessions) -> Option<SessionId> {
    let me = i32::try_from(std::process::id()).ok()?;
    let ancestors: Vec<i32> = proc::ancestors(me).iter().map(|stat| stat.pid).collect();
    sessions
        .all()
        .into_iter()
        .filter(|record| !record.is_ended())
        .filter(|record| {
            record.agent_identity.as_ref().is_some_and(|identity| {
                ancestors.contains(&identity.pid) && proc::is_alive(identity)
            })
        })
        .max_by(|a, b| a.started_at.cmp(&b.started_at))
        .and_then(|record| SessionId::parse(&record.session_id).ok())
}

/// The longest idle TTL a sweep accepts.
pub const MAX_IDLE_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

/// Refuses an idle TTL beyond 30 days (zero disables and is fine).
pub fn check_idle_ttl(ttl: Duration, flag: &str) -> anyhow::Result<Duration> {
    if ttl > MAX_IDLE_TTL {
        return Err(bad_input(format!(
            "{flag} {}: expected at most 30 days (0 disables)",
            in_days(ttl)
        )));
    }
    Ok(ttl)
}

/// A long duration as people write it: whole days when it is whole days.
fn in_days(duration: Duration) -> String {
    let secs = duration.as_secs();
    if secs.is_multiple_of(86_400) && duration.subsec_nanos() == 0 {
        format!("{}days", secs / 86_400)
    } else {
        humantime::format_duration(duration).to_string()
    }
}

/// Refuses a grace beyond an hour: a stop that long is a mistake.
pub fn check_grace(grace: Duration) -> anyhow::Result<Duration> {
    if grace > Duration::from_secs(3600) {
        return Err(bad_input(format!(
            "--grace {}: expected at most 1h",
            humantime::format_duration(grace)
        )));
    }
    Ok(grace)
}
