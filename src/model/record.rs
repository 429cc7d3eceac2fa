//! The JSON records kept under the state root: brokers, sessions and stop tickets, and the process identity they
//! name. Every record is `"version": 1`; unknown fields are kept through a rewrite, a newer version is refused.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::bad_input;

pub(crate) const VERSION: u32 = 1;

/// Who a process is: a pid alone proves nothing, all the fields together do.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Identity {
    pub boot_id: String,
    /// The inode of the writer's pid namespace (`/proc/self/ns/pid`): the pid counts in that namespace only. Absent
    /// in records written before it existed, which are read as this namespace's (the register rules).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid_ns: Option<u64>,
    pub pid: i32,
    pub start_ticks: u64,
    pub uid: u32,
}

impl Identity {
    /// True when `live` (an identity just read from the system) is the process this recorded identity names. An
    /// identity with no namespace is an older record's: taken as this namespace's.
    pub fn is_same_process(&self, live: &Identity) -> bool {
        self.boot_id == live.boot_id
            && self.pid == live.pid
            && self.start_ticks == live.start_ticks
            && self.uid == live.uid
            && self.pid_ns.is_none_or(|ns| live.pid_ns == Some(ns))
    }

    /// True when the identity was written in another pid namespace than `here`: its pid means nothing here. A
    /// record that names a namespace is taken as another's when this one cannot be told (`here` is `None`: the
    /// portable backend, or a `/proc` without `ns/`): a pid is trusted only where its namespace is known to match.
    pub fn is_other_pid_ns(&self, here: Option<u64>) -> bool {
        match (self.pid_ns, here) {
            (Some(recorded), Some(here)) => recorded != here,
            (Some(_), None) => true,
            (None, _) => false,
        }
    }
}

/// A session that holds a broker.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    pub session: String,
    pub since: String,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// How to ask a broker to stop before it is signalled.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Shutdown {
    /// One line written to a unix socket.
    Socket { socket: String, message: String },
    /// A shell command, run with `sh -c`.
    Command { command: String },
}

/// `workspaces/<key>/<name>/broker.json`: the live broker of one slot.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BrokerRecord {
    #[serde(default = "version_one")]
    pub version: u32,
    pub name: String,
    pub workspace: String,
    pub cwd: String,
    pub command: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<Value>,
    #[serde(default)]
    pub owners: Vec<Owner>,
    pub identity: Identity,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pgid: Option<i32>,
    pub created_at: String,
    pub last_active: String,
    /// `last_active` on the boot clock (ms, `CLOCK_BOOTTIME`): what idle TTLs are timed by, so that a wall clock
    /// stepped back neither stalls nor hastens an idle stop. Absent in records of older versions (and in ones
    /// another boot wrote, where it means nothing): they fall back to `last_active`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_active_boot_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_ttl_secs: Option<u64>,
    #[serde(default = "default_grace_ms")]
    pub grace_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shutdown: Option<Shutdown>,
    #[serde(default)]
    pub host: String,
    /// The lineage token (`SESSION_REAPER_LINEAGE`) every process of the broker's tree carries; absent for adopted
    /// brokers and records of older versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lineage: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// True when a record names another host than `here`: a state root shared over a network home. Such a record is
/// left alone — neither acted on nor pruned. (An empty host is an old record of this host.)
pub(crate) fn is_other_host(recorded: &str, here: &str) -> bool {
    !recorded.is_empty() && recorded != here
}

impl BrokerRecord {
    pub fn has_owner(&self, session: &str) -> bool {
        self.owners.iter().any(|owner| owner.session == session)
    }

    /// Adds `session` as an owner; false if it already was one.
    pub fn add_owner(&mut self, session: &str, now: &str) -> bool {
        if self.has_owner(session) {
            return false;
        }
        self.owners.push(Owner {
            session: session.to_owned(),
            since: now.to_owned(),
            extra: Map::new(),
        });
        true
    }

    /// Removes `session` from the owners; false if it was not one.
    pub fn remove_owner(&mut self, session: &str) -> bool {
        let before = self.owners.len();
        self.owners.retain(|owner| owner.session != session);
        self.owners.len() != before
    }

    pub fn owner_ids(&self) -> Vec<&str> {
        self.owners
            .iter()
            .map(|owner| owner.session.as_str())
            .collect()
    }
}

/// `sessions/<id>.json`: one agent session; kept as a tombstone after it ends.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SessionRecord {
    #[serde(default = "version_one")]
    pub version: u32,
    pub session_id: String,
    #[serde(default)]
    pub agent: String,
    #[serde(default)]
    pub cwd: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transcript_path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_identity: Option<Identity>,
    #[serde(default)]
    pub host: String,
    pub started_at: String,
    pub last_seen: String,
    #[serde(default)]
    pub ended_at: Option<String>,
    #[serde(default)]
    pub end_reason: Option<String>,
    /// The owner index: every slot (`<workspace-key>/<name>`) this session was made an owner of, written under the
    /// session lock *before* the slot, so that the session's end visits exactly those. `None` in records written
    /// before the index existed: their end falls back to visiting every slot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slots: Option<Vec<String>>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl SessionRecord {
    /// A session first seen now, on this host, with nothing else known yet.
    pub fn new(session_id: &str, host: String, now: &str) -> Self {
        SessionRecord {
            version: VERSION,
            session_id: session_id.to_owned(),
            agent: String::new(),
            cwd: String::new(),
            transcript_path: None,
            title: None,
            source: None,
            agent_identity: None,
            host,
            started_at: now.to_owned(),
            last_seen: now.to_owned(),
            ended_at: None,
            end_reason: None,
            slots: Some(Vec::new()),
            extra: Map::new(),
        }
    }

    pub fn is_ended(&self) -> bool {
        self.ended_at.is_some()
    }

    /// Adds `slot` to the owner index; false if it was there already.
    pub fn index_slot(&mut self, slot: &str) -> bool {
        let slots = self.slots.get_or_insert_with(Vec::new);
        if slots.iter().any(|known| known == slot) {
            return false;
        }
        slots.push(slot.to_owned());
        true
    }
}

/// `stopping/<ticket>.json`: a durable request to stop one identified process (or its group).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StopTicket {
    #[serde(default = "version_one")]
    pub version: u32,
    pub identity: Identity,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pgid: Option<i32>,
    pub reason: String,
    pub requested_at: String,
    pub grace_ms: u64,
    #[serde(default)]
    pub attempts: u32,
    /// `<workspace>/<name>` of the slot the broker came from, or `resume-orphan`, or `unrecorded`.
    pub origin: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shutdown: Option<Shutdown>,
    #[serde(default)]
    pub host: String,
    /// When the graceful step (socket message or command) was taken.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub graceful_at: Option<String>,
    /// When SIGTERM was sent; the grace runs from here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub term_at: Option<String>,
    /// When the last SIGKILL was sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kill_at: Option<String>,
    /// The same steps on the boot clock (ms, monotonic): what times the cascade, whatever the wall clock does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub graceful_boot_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub term_boot_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kill_boot_ms: Option<u64>,
    /// A leftover's argv and the memory it held when found (KiB): its stop event carries them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub argv: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rss_kib: Option<u64>,
    /// The broker's lineage token: its members are found by it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lineage: Option<String>,
    /// Members of the broker seen so far (identities), kept so that a later run still knows them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<Identity>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl StopTicket {
    /// The file name of the ticket of a process: one ticket per process, whoever asks for its stop.
    pub fn file_name(identity: &Identity) -> String {
        let boot: String = identity
            .boot_id
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .take(8)
            .collect();
        format!("{boot}-{}-{}.json", identity.pid, identity.start_ticks)
    }
}

fn version_one() -> u32 {
    VERSION
}

/// How long a stop waits between SIGTERM and SIGKILL unless a record says otherwise.
pub(crate) const DEFAULT_GRACE_MS: u64 = 5000;

fn default_grace_ms() -> u64 {
    DEFAULT_GRACE_MS
}

impl StopTicket {
    /// A ticket to stop `identity` (and, while its leader is verified alive, its group `pgid`), requested at `now`
    /// on `host`.
    pub fn new(
        identity: Identity,
        pgid: Option<i32>,
        reason: &str,
        grace_ms: u64,
        origin: String,
        (now, host): (&str, &str),
    ) -> StopTicket {
        StopTicket {
            version: VERSION,
            identity,
            pgid,
            reason: reason.to_owned(),
            requested_at: now.to_owned(),
            grace_ms,
            attempts: 0,
            origin,
            session: None,
            workspace: None,
            name: None,
            shutdown: None,
            host: host.to_owned(),
            graceful_at: None,
            term_at: None,
            kill_at: None,
            graceful_boot_ms: None,
            term_boot_ms: None,
            kill_boot_ms: None,
            argv: None,
            rss_kib: None,
            lineage: None,
            members: Vec::new(),
            extra: serde_json::Map::new(),
        }
    }

    /// The ticket that stops a recorded broker: its identity, group, grace, shutdown step, host and lineage.
    pub fn for_broker(
        record: &BrokerRecord,
        reason: &str,
        session: Option<&str>,
        origin: &str,
        now: &str,
    ) -> StopTicket {
        let mut ticket = StopTicket::new(
            record.identity.clone(),
            record.pgid,
            reason,
            record.grace_ms,
            origin.to_owned(),
            (now, &record.host),
        );
        ticket.session = session.map(str::to_owned);
        ticket.workspace = Some(record.workspace.clone());
        ticket.name = Some(record.name.clone());
        ticket.shutdown.clone_from(&record.shutdown);
        ticket.lineage.clone_from(&record.lineage);
        ticket
    }
}

/// What a record file held.
pub enum Parsed<T> {
    Record(T),
    /// Not JSON, or not the shape of the record: to be moved aside and reported.
    Corrupt(String),
}

/// Parses a record, refusing (exit 2) a newer version than this build reads, so it is never rewritten.
pub fn parse<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
    path: &std::path::Path,
) -> anyhow::Result<Parsed<T>> {
    /// The version alone, read without building the document.
    #[derive(Deserialize)]
    struct Head {
        #[serde(default)]
        version: Option<u64>,
    }
    // The common case in one pass, straight into the record: an object of a version this build reads that has the
    // record's shape. Anything else takes the path below, which says what is wrong with it.
    let object = bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
    if object
        && let Ok(head) = serde_json::from_slice::<Head>(bytes)
        && head
            .version
            .is_none_or(|version| version <= u64::from(VERSION))
        && let Ok(record) = serde_json::from_slice::<T>(bytes)
    {
        return Ok(Parsed::Record(record));
    }
    let value: Value = match serde_json::from_slice(bytes) {
        Ok(value) => value,
        Err(err) => return Ok(Parsed::Corrupt(format!("not JSON: {err}"))),
    };
    let Some(object) = value.as_object() else {
        return Ok(Parsed::Corrupt("expected a JSON object".to_owned()));
    };
    if let Some(version) = object.get("version").and_then(Value::as_u64)
        && version > u64::from(VERSION)
    {
        return Err(bad_input(format!(
            "{}: record version {version} is newer than this session-reaper reads ({VERSION}); upgrade session-reaper",
            path.display()
        )));
    }
    match serde_json::from_value(value) {
        Ok(record) => Ok(Parsed::Record(record)),
        Err(err) => Ok(Parsed::Corrupt(format!("not a valid record: {err}"))),
    }
}

/// Serialises a record for storage (pretty, one trailing newline).
pub(crate) fn to_bytes<T: Serialize>(record: &T) -> Vec<u8> {
    let mut bytes = serde_json::to_vec_pretty(record).expect("records serialise");
    bytes.push(b'\n');
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_broker() -> Value {
        serde_json::json!({
            "version": 1, "name": "default", "workspace": "/w", "cwd": "/w", "command": ["sleep", "1"],
            "owners": [{"session": "s1", "since": "2026-01-01T00:00:00Z", "note": "kept"}],
            "identity": {"boot_id": "b", "pid": 10, "start_ticks": 5, "uid": 0},
            "pgid": 10, "created_at": "2026-01-01T00:00:00Z", "last_active": "2026-01-01T00:00:00Z",
            "grace_ms": 5000, "host": "h", "future_field": {"x": 1}
        })
    }

    #[test]
    fn unknown_fields_survive_a_rewrite() {
        let original = sample_broker();
        let bytes = serde_json::to_vec(&original).unwrap();
        let Parsed::Record(mut record) = parse::<BrokerRecord>(&bytes, "b.json".as_ref()).unwrap()
        else {
            panic!("parses")
        };
        record.add_owner("s2", "2026-01-02T00:00:00Z");
        let back: Value = serde_json::from_slice(&to_bytes(&record)).unwrap();
        assert_eq!(back["future_field"], original["future_field"]);
        assert_eq!(back["owners"][0]["note"], "kept");
        assert_eq!(back["owners"][1]["session"], "s2");
    }

    #[test]
    fn newer_version_is_refused() {
        let mut value = sample_broker();
        value["version"] = 2.into();
        let err = parse::<BrokerRecord>(&serde_json::to_vec(&value).unwrap(), "b.json".as_ref())
            .err()
            .unwrap();
        assert_eq!(crate::error::exit_code_of(&err), 2);
    }

    #[test]
    fn garbage_is_corrupt_not_an_error() {
        for bytes in [&b"{"[..], b"[]", b"{\"version\":1}", b"\xff"] {
            assert!(matches!(
                parse::<BrokerRecord>(bytes, "b.json".as_ref()).unwrap(),
                Parsed::Corrupt(_)
            ));
        }
    }

    #[test]
    fn shutdown_forms() {
        let socket: Shutdown = serde_json::from_str(r#"{"socket":"/s","message":"bye"}"#).unwrap();
        assert!(matches!(socket, Shutdown::Socket { .. }));
        let command: Shutdown = serde_json::from_str(r#"{"command":"stop"}"#).unwrap();
        assert!(matches!(command, Shutdown::Command { .. }));
    }

    #[test]
    fn a_pid_counts_only_in_a_namespace_known_to_match() {
        let at = |pid_ns| Identity {
            pid_ns,
            ..Identity::default()
        };
        assert!(
            !at(None).is_other_pid_ns(Some(4)),
            "an older record: this namespace's"
        );
        assert!(!at(None).is_other_pid_ns(None));
        assert!(!at(Some(4)).is_other_pid_ns(Some(4)));
        assert!(at(Some(4)).is_other_pid_ns(Some(5)));
        assert!(
            at(Some(4)).is_other_pid_ns(None),
            "this namespace unknown: never trusted"
        );
    }

    #[test]
    fn ticket_names_are_per_process() {
        let id = Identity {
            boot_id: "1b2c-3d4e-5f60".into(),
            pid_ns: None,
            pid: 42,
            start_ticks: 7,
            uid: 0,
        };
        assert_eq!(StopTicket::file_name(&id), "1b2c3d4e-42-7.json");
    }
}
