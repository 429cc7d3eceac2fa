//! Containment decided with no system call (DESIGN "Containment"): whether a cgroup of its own can hold an agent
//! here and, if not, why (said out loud by `doctor`, `status` and the session record); where our cgroups go; what
//! they are called; and which of them a detached helper leaves for.

use std::path::{Path, PathBuf};

use crate::model::record::Identity;

/// The cgroup our agent and broker cgroups are made in, below the agent's own (unless a root is configured).
pub(crate) const PARENT_NAME: &str = "session-reaper";
const AGENT_PREFIX: &str = "agent-";
const BROKER_PREFIX: &str = "broker-";

/// The cgroup of an agent process: named by its identity, so that a second `SessionStart` finds it.
pub(crate) fn agent_cgroup_name(agent: &Identity) -> String {
    format!("{AGENT_PREFIX}{}-{}", agent.pid, agent.start_ticks)
}

/// The cgroup of a broker: named by its lineage token (the pid is not known before it runs).
pub(crate) fn broker_cgroup_name(lineage: &str) -> String {
    let short: String = lineage.chars().take(16).collect();
    format!("{BROKER_PREFIX}{short}")
}

/// The `(pid, start_ticks)` an agent cgroup's name carries.
pub(crate) fn agent_of_name(name: &str) -> Option<(i32, u64)> {
    let (pid, start) = name.strip_prefix(AGENT_PREFIX)?.split_once('-')?;
    Some((pid.parse().ok()?, start.parse().ok()?))
}

/// True for the name of a cgroup we make for a broker.
pub(crate) fn is_broker_name(name: &str) -> bool {
    name.strip_prefix(BROKER_PREFIX)
        .is_some_and(|rest| !rest.is_empty() && rest.chars().all(|c| c.is_ascii_hexdigit()))
}

/// Where our cgroups go for a process in cgroup `own`: the configured root; else the `session-reaper` cgroup that
/// already holds `own` (a nested agent, or a broker spawned by a contained agent's tool: siblings, never nested);
/// else a `session-reaper` cgroup below `own`.
pub(crate) fn parent_for(own: &Path, configured: Option<&Path>) -> PathBuf {
    if let Some(root) = configured {
        return root.to_path_buf();
    }
    own.ancestors()
        .find(|dir| dir.file_name().is_some_and(|name| name == PARENT_NAME))
        .map_or_else(|| own.join(PARENT_NAME), Path::to_path_buf)
}

/// Where a detached helper of ours (a sentinel, the finisher) started from a process in `own` moves to: out of an
/// agent's or broker's cgroup of ours into their parent, so that it is nobody's leftover and never keeps a cgroup
/// from emptying. `None` when `own` is not one of ours.
pub(crate) fn detached_home(own: &Path, configured: Option<&Path>) -> Option<PathBuf> {
    let name = own.file_name()?.to_str()?;
    let parent = own.parent()?;
    let ours = agent_of_name(name).is_some() || is_broker_name(name);
    let under_ours = configured.map_or_else(
        || parent.file_name().is_some_and(|name| name == PARENT_NAME),
        |root| parent == root,
    );
    (ours && under_ours).then(|| parent.to_path_buf())
}

/// What was observed about the cgroups of this host, for one agent (or one broker's caller).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[expect(
    clippy::struct_excessive_bools,
    reason = "independent facts observed about the host, each one a step of the decision"
)]
pub(crate) struct Facts {
    /// `--containment off` or `SESSION_REAPER_CONTAINMENT=off`.
    pub switched_off: bool,
    pub linux: bool,
    /// The cgroup v2 mount, if any.
    pub v2: Option<PathBuf>,
    /// A cgroup v1 hierarchy is mounted.
    pub v1: bool,
    /// The process's v2 cgroup directory.
    pub own: Option<PathBuf>,
    /// `SESSION_REAPER_CGROUP_ROOT`.
    pub configured: Option<PathBuf>,
    /// systemd runs this host (`/run/systemd/system`).
    pub systemd: bool,
    /// The process's cgroup is one a systemd unit delegated (`trusted.delegate` or `user.delegate` is set on it).
    pub delegated: bool,
    /// We may create cgroups in the parent and move processes there (checked with `access`).
    pub writable: bool,
}

/// Whether a cgroup of its own can be had, and where; or why not.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Availability {
    Available { parent: PathBuf, how: String },
    Unavailable { why: String },
}

impl Availability {
    /// The line `doctor` prints.
    pub(crate) fn describe(&self) -> String {
        match self {
            Availability::Available { how, .. } => format!("available ({how})"),
            Availability::Unavailable { why } => format!("unavailable ({why})"),
        }
    }
}

/// The decision: in order, the switch, the platform, a v2 hierarchy, our place in it, systemd's single-writer rule
/// (its tree is written only where a unit delegated it or a root was configured), and permission.
pub(crate) fn availability(facts: &Facts) -> Availability {
    let unavailable = |why: String| Availability::Unavailable { why };
    if facts.switched_off {
        return unavailable(
            "switched off: --containment off or SESSION_REAPER_CONTAINMENT=off".into(),
        );
    }
    if !facts.linux {
        return unavailable("cgroups are Linux's".into());
    }
    let Some(v2) = &facts.v2 else {
        return unavailable(if facts.v1 {
            "cgroup v1 only: no cgroup2 hierarchy in /proc/self/mountinfo".into()
        } else {
            "no cgroup2 hierarchy in /proc/self/mountinfo".into()
        });
    };
    if let Some(root) = &facts.configured
        && !root.starts_with(v2)
    {
        return unavailable(format!(
            "SESSION_REAPER_CGROUP_ROOT {} is not under the cgroup2 mount {}",
            root.display(),
            v2.display()
        ));
    }
    let Some(own) = &facts.own else {
        return unavailable(format!(
            "no cgroup v2 path for the process under {}",
            v2.display()
        ));
    };
    if facts.systemd && facts.configured.is_none() && !facts.delegated {
        return unavailable(format!(
            "systemd manages {} and did not delegate it; set SESSION_REAPER_CGROUP_ROOT to a delegated cgroup",
            own.display()
        ));
    }
    let parent = parent_for(own, facts.configured.as_deref());
    if !facts.writable {
        return unavailable(format!("not writable: {}", parent.display()));
    }
    let how = match (&facts.configured, facts.delegated) {
        (Some(_), _) => "cgroup v2, under SESSION_REAPER_CGROUP_ROOT",
        (None, true) => "cgroup v2, in a cgroup systemd delegated",
        (None, false) => "cgroup v2",
    };
    Availability::Available {
        how: format!("{how}: {}", parent.display()),
        parent,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> Facts {
        Facts {
            linux: true,
            v2: Some("/sys/fs/cgroup/unified".into()),
            v1: true,
            own: Some("/sys/fs/cgroup/unified".into()),
            writable: true,
            ..Facts::default()
        }
    }

    fn why(facts: &Facts) -> String {
        match availability(facts) {
            Availability::Unavailable { why } => why,
            Availability::Available { how, .. } => panic!("available: {how}"),
        }
    }

    #[test]
    fn available_where_v2_is_mounted_and_writable() {
        assert_eq!(
            availability(&facts()),
            Availability::Available {
                parent: "/sys/fs/cgroup/unified/session-reaper".into(),
                how: "cgroup v2: /sys/fs/cgroup/unified/session-reaper".into()
            }
        );
    }

    #[test]
    fn every_fallback_says_why() {
        let off = Facts {
            switched_off: true,
            ..facts()
        };
        assert!(why(&off).contains("switched off"));
        let v1 = Facts {
            v2: None,
            ..facts()
        };
        assert!(why(&v1).contains("cgroup v1 only"));
        let elsewhere = Facts {
            linux: false,
            ..facts()
        };
        assert!(why(&elsewhere).contains("Linux"));
        let read_only = Facts {
            writable: false,
            ..facts()
        };
        assert!(why(&read_only).contains("not writable"));
        let systemd = Facts {
            systemd: true,
            ..facts()
        };
        assert!(why(&systemd).contains("systemd"));
        let outside = Facts {
            configured: Some("/tmp/x".into()),
            ..facts()
        };
        assert!(why(&outside).contains("not under"));
    }

    #[test]
    fn systemd_trees_are_written_only_where_delegated_or_configured() {
        let delegated = Facts {
            systemd: true,
            delegated: true,
            ..facts()
        };
        assert!(matches!(
            availability(&delegated),
            Availability::Available { .. }
        ));
        let configured = Facts {
            systemd: true,
            configured: Some("/sys/fs/cgroup/unified/test-1".into()),
            ..facts()
        };
        assert_eq!(
            availability(&configured),
            Availability::Available {
                parent: "/sys/fs/cgroup/unified/test-1".into(),
                how: "cgroup v2, under SESSION_REAPER_CGROUP_ROOT: /sys/fs/cgroup/unified/test-1"
                    .into()
            }
        );
    }

    #[test]
    fn placement_keeps_our_cgroups_siblings() {
        let root = Path::new("/cg");
        assert_eq!(parent_for(root, None), Path::new("/cg/session-reaper"));
        assert_eq!(
            parent_for(Path::new("/cg/session-reaper/agent-5-9"), None),
            Path::new("/cg/session-reaper"),
            "a broker or nested agent started inside an agent's cgroup goes beside it"
        );
        assert_eq!(
            parent_for(Path::new("/cg/x"), Some(Path::new("/cg/t"))),
            Path::new("/cg/t")
        );
    }

    #[test]
    fn names_and_homes() {
        let agent = Identity {
            pid: 42,
            start_ticks: 7,
            ..Identity::default()
        };
        assert_eq!(agent_cgroup_name(&agent), "agent-42-7");
        assert_eq!(agent_of_name("agent-42-7"), Some((42, 7)));
        assert_eq!(agent_of_name("agent-x"), None);
        assert_eq!(
            broker_cgroup_name("0123456789abcdef0123"),
            "broker-0123456789abcdef"
        );
        assert!(is_broker_name("broker-0123456789abcdef"));
        assert!(!is_broker_name("broker-"));
        assert_eq!(
            detached_home(Path::new("/cg/session-reaper/agent-42-7"), None),
            Some(PathBuf::from("/cg/session-reaper"))
        );
        assert_eq!(
            detached_home(Path::new("/cg/t/broker-ab"), Some(Path::new("/cg/t"))),
            Some(PathBuf::from("/cg/t"))
        );
        assert_eq!(detached_home(Path::new("/cg/other/agent-42-7"), None), None);
        assert_eq!(detached_home(Path::new("/cg/session-reaper"), None), None);
    }
}
