//! Where this run stands: the host name records are stamped with and the pid namespace their pids mean something
//! in. Read once by `observe` and handed to decisions, which read nothing themselves.

/// This run's host and pid namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Host {
    pub name: String,
    /// The inode of this process's pid namespace, where it can be told.
    pub pid_ns: Option<u64>,
}
