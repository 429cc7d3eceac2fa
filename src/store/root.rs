//! The state root: where it is, the safety checks it must pass, and safe file access below it.
//!
//! Every directory we use is checked (not a symlink, owned by us, not group/other-writable) and every file is opened
//! without following symlinks and must be a regular file owned by us. Writes are atomic: a temp file in the same
//! directory, renamed over the target (no fsync: see `write_atomic`).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::error::bad_input;

pub(crate) const SESSIONS: &str = "sessions";
pub(crate) const WORKSPACES: &str = "workspaces";
pub(crate) const STOPPING: &str = "stopping";
pub(crate) const EVENTS: &str = "events.jsonl";

/// Where the state root comes from, in order of precedence (resolved once, in `Config`).
pub(crate) fn resolve_root(flag: Option<&Path>) -> anyhow::Result<PathBuf> {
    let from_env = |name: &str| {
        std::env::var_os(name)
            .filter(|value| !value.is_empty())
            .map(PathBuf::from)
    };
    if let Some(path) = flag
        .map(Path::to_path_buf)
        .or_else(|| from_env("SESSION_REAPER_STATE_DIR"))
    {
        return Ok(lexical(&path));
    }
    default_root()
}

/// The root used when neither `--state-dir` nor `SESSION_REAPER_STATE_DIR` names one: under `XDG_STATE_HOME`, else
/// `~/.local/state` (what a hook gets from an agent that does not pass our variable on).
pub(crate) fn default_root() -> anyhow::Result<PathBuf> {
    let from_env = |name: &str| {
        std::env::var_os(name)
            .filter(|value| !value.is_empty())
            .map(PathBuf::from)
    };
    // The XDG base directory spec: a relative XDG_STATE_HOME is invalid and ignored.
    if let Some(xdg) = from_env("XDG_STATE_HOME").filter(|xdg| xdg.is_absolute()) {
        return Ok(xdg.join("session-reaper"));
    }
    let home = from_env("HOME").ok_or_else(|| {
        bad_input(
            "no state root: set --state-dir, SESSION_REAPER_STATE_DIR, XDG_STATE_HOME or HOME",
        )
    })?;
    refuse_foreign_home(&home)?;
    Ok(home.join(".local/state/session-reaper"))
}

/// `path` without trailing slashes or `.` components, so that `link/` is checked as `link` (a trailing slash would
/// make every later look-up follow the symlink the checks refuse).
pub(crate) fn lexical(path: &Path) -> PathBuf {
    path.components().collect()
}

/// Root (`sudo` keeping `$HOME`) would create root-owned directories in another user's home: refused unless the
/// home is ours.
fn refuse_foreign_home(home: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let euid = rustix::process::geteuid().as_raw();
    match std::fs::metadata(home) {
        Ok(meta) if meta.uid() != euid => Err(bad_input(format!(
            "HOME {} belongs to uid {}, not to us (uid {euid}): refusing to keep state there; pass --state-dir or \
             set SESSION_REAPER_STATE_DIR",
            home.display(),
            meta.uid()
        ))),
        _ => Ok(()),
    }
}

/// A checked state root. Holding one means the root passed the safety checks.
#[derive(Clone, Debug)]
pub(crate) struct StateRoot {
    path: PathBuf,
    uid: u32,
}

impl StateRoot {
    /// Creates the root (0700) if missing and checks it and its fixed sub-directories.
    pub(crate) fn open(path: &Path) -> anyhow::Result<Self> {
        let path = if path.is_absolute() {
            path.to_path_buf()
        } else {
            std::env::current_dir()?.join(path)
        };
        let uid = rustix::process::geteuid().as_raw();
        if let Some(parent) = path.parent()
            && !parent.exists()
        {
            fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))
                .map_err(|err| bad_input(format!("state root {}: {err:#}", path.display())))?;
        }
        let root = StateRoot { path, uid };
        root.ensure_dir(&root.path)?;
        for sub in [SESSIONS, WORKSPACES, STOPPING] {
            root.ensure_dir(&root.path.join(sub))?;
        }
        Ok(root)
    }

    /// Opens an existing root without creating anything (for read-only commands — `status`, `doctor`, `log`, every
    /// `--dry-run` — which must change nothing): the root and whichever fixed sub-directories exist are checked;
    /// missing ones are simply empty.
    pub(crate) fn open_existing(path: &Path) -> anyhow::Result<Option<Self>> {
        let path = if path.is_absolute() {
            path.to_path_buf()
        } else {
            std::env::current_dir()?.join(path)
        };
        match fs::symlink_metadata(&path) {
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
            _ => {}
        }
        let root = StateRoot {
            path,
            uid: rustix::process::geteuid().as_raw(),
        };
        root.check_dir(&root.path)?;
        for sub in [SESSIONS, WORKSPACES, STOPPING] {
            let dir = root.path.join(sub);
            if fs::symlink_metadata(&dir).is_ok() {
                root.check_dir(&dir)?;
            }
        }
        Ok(Some(root))
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn uid(&self) -> u32 {
        self.uid
    }

    pub(crate) fn join(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.path.join(rel)
    }

    /// Creates `dir` (0700) if missing, then checks it. Fails with exit 2 naming the path and the fix.
    pub(crate) fn ensure_dir(&self, dir: &Path) -> anyhow::Result<()> {
        match fs::DirBuilder::new().mode(0o700).create(dir) {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {}
            Err(err) => {
                return Err(bad_input(format!(
                    "state directory {}: cannot create: {err}",
                    dir.display()
                )));
            }
        }
        self.check_dir(dir)
    }

    /// Checks an existing directory: not a symlink, ours, not group/other-writable.
    pub(crate) fn check_dir(&self, dir: &Path) -> anyhow::Result<()> {
        let meta = fs::symlink_metadata(dir)
            .map_err(|err| bad_input(format!("state directory {}: {err}", dir.display())))?;
        let problem = unsafe_dir_reason(&meta, self.uid);
        match problem {
            None => Ok(()),
            Some(reason) => Err(bad_input(format!(
                "unsafe state directory {}: {reason}; fix: {}",
                dir.display(),
                fix_for(reason, dir)
            ))),
        }
    }

    /// Reads a record below the root (at most `RECORD_LIMIT` bytes); `None` if it does not exist.
    pub(crate) fn read_file(&self, path: &Path) -> anyhow::Result<Option<Vec<u8>>> {
        self.read_file_limited(path, RECORD_LIMIT)
    }

    /// Reads a file below the root that may be at most `limit` bytes; `None` if it does not exist. A FIFO, a
    /// symlink, another user's file or a file over the limit is refused without blocking and without reading it.
    pub(crate) fn read_file_limited(
        &self,
        path: &Path,
        limit: u64,
    ) -> anyhow::Result<Option<Vec<u8>>> {
        read_regular(path, self.uid, limit).map(|read| read.map(|(bytes, _)| bytes))
    }

    /// Opens (creating if needed) a file that is only ever locked (see `lock`).
    pub(crate) fn open_lock_file(&self, path: &Path) -> anyhow::Result<File> {
        let file = open_nofollow(
            path,
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .mode(0o600),
        )
        .map_err(|err| refusal(path, &err))
        .with_context(|| format!("opening lock {}", path.display()))?;
        self.check_file(&file, path)?;
        Ok(file)
    }

    /// Opens an existing lock file without creating it; `None` if it does not exist.
    pub(crate) fn open_existing_lock_file(&self, path: &Path) -> anyhow::Result<Option<File>> {
        match open_nofollow(path, OpenOptions::new().read(true)) {
            Ok(file) => self.check_file(&file, path).map(|_| Some(file)),
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(err) => Err(refusal(path, &err)),
        }
    }

    /// Opens a file for appending (events), creating it 0600.
    pub(crate) fn open_append(&self, path: &Path) -> anyhow::Result<File> {
        let file = open_nofollow(
            path,
            OpenOptions::new().append(true).create(true).mode(0o600),
        )
        .map_err(|err| refusal(path, &err))?;
        self.check_file(&file, path)?;
        Ok(file)
    }

    /// Checks an open file (`fstat`, so no race with the path): a regular file of ours. Returns its size.
    fn check_file(&self, file: &File, path: &Path) -> anyhow::Result<u64> {
        check_regular_file(file, path, self.uid)
    }

    /// Atomically replaces `path` with `bytes`: temp file in the same directory, renamed over it. A method of the
    /// root on purpose: every write goes through a root that was opened and checked.
    #[allow(clippy::unused_self)]
    pub(crate) fn write_atomic(&self, path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
        write_atomic(path, bytes, 0o600)
    }

    /// Atomically creates `path` with `bytes` unless it exists; false when it did (it is left as is).
    #[allow(clippy::unused_self)]
    pub(crate) fn create_atomic(&self, path: &Path, bytes: &[u8]) -> anyhow::Result<bool> {
        create_atomic(path, bytes, 0o600)
    }
}

/// Atomically replaces `path` with `bytes` (mode for a new file): temp file, then rename over `path`.
///
/// No fsync: everything under the state root describes processes of this boot, which a power loss or a kernel crash
/// ends too, so a record that survived one would be stale anyway (and one torn by it is moved aside as corrupt). What
/// the writer must survive is its own SIGKILL at any point, and the rename alone gives that: readers see the old
/// bytes or the new, never a mix.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    publish_via_temp(path, bytes, mode, |temp, path| fs::rename(temp, path)).map(drop)
}

/// Like `write_atomic`, but never replaces an existing file: false when `path` already exists (it is left as is).
pub(crate) fn create_atomic(path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<bool> {
    publish_via_temp(path, bytes, mode, |temp, path| {
        let linked = fs::hard_link(temp, path);
        fs::remove_file(temp)?;
        linked
    })
    .map(|published| published.is_some())
}

/// The one atomic writer: writes a temp file in `path`'s directory and `publish`es it (rename, or link for
/// create-only). `None` when publishing found `path` already there.
fn publish_via_temp(
    path: &Path,
    bytes: &[u8],
    mode: u32,
    publish: impl FnOnce(&Path, &Path) -> io::Result<()>,
) -> anyhow::Result<Option<()>> {
    let dir = path.parent().context("a file to write has no directory")?;
    let name = path
        .file_name()
        .context("a file to write has no name")?
        .to_string_lossy();
    let temp = dir.join(temp_name(&name));
    let result = (|| -> anyhow::Result<Option<()>> {
        let mut file = open_nofollow(
            &temp,
            OpenOptions::new().write(true).create_new(true).mode(mode),
        )
        .with_context(|| format!("creating {}", temp.display()))?;
        file.write_all(bytes)
            .with_context(|| format!("writing {}", temp.display()))?;
        match publish(&temp, path) {
            Ok(()) => Ok(Some(())),
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists => Ok(None),
            Err(err) => Err(err).with_context(|| format!("writing over {}", path.display())),
        }
    })();
    if !matches!(result, Ok(Some(()))) {
        let _ = fs::remove_file(&temp);
    }
    result
}

/// Moves a corrupt record aside to `<name>.corrupt-<ts>` in its directory; returns the new path. The one
/// way a record that does not parse leaves its place: never dropped, never overwritten.
pub(crate) fn quarantine(path: &Path) -> anyhow::Result<PathBuf> {
    let dir = path
        .parent()
        .context("a record to move aside has no directory")?;
    let name = path
        .file_name()
        .context("a record to move aside has no name")?
        .to_string_lossy();
    let stamp = crate::model::clock::now_rfc3339().replace(':', "");
    let moved_to = dir.join(format!("{name}.corrupt-{stamp}"));
    fs::rename(path, &moved_to).with_context(|| format!("moving aside {}", path.display()))?;
    Ok(moved_to)
}

/// The name of the writer's temp file for `name`: `.<name>.tmp-<pid>-<nanos>` (what `store::temps` recognises).
pub(crate) fn temp_name(name: &str) -> String {
    format!(".{name}.tmp-{}-{}", std::process::id(), temp_suffix())
}

fn temp_suffix() -> u128 {
    use std::time::{SystemTime, UNIX_EPOCH};
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default()
}

/// The largest record (session, slot, ticket) we read: real ones are a few KiB.
pub(crate) const RECORD_LIMIT: u64 = 1024 * 1024;

/// Opens without following a symlink, without blocking (a FIFO opens at once and is then refused by its `fstat`),
/// and without leaking into children.
pub(crate) fn open_nofollow(path: &Path, options: &mut OpenOptions) -> io::Result<File> {
    options
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
}

/// Reads a regular file of `uid` of at most `limit` bytes, with its metadata; `None` if it does not exist. Opened
/// without following a symlink or blocking on a FIFO, checked with `fstat` before a byte is read: anything else, or
/// anything larger, is refused unread.
pub(crate) fn read_regular(
    path: &Path,
    uid: u32,
    limit: u64,
) -> anyhow::Result<Option<(Vec<u8>, fs::Metadata)>> {
    let file = match open_nofollow(path, OpenOptions::new().read(true)) {
        Ok(file) => file,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(refusal(path, &err)),
    };
    let meta = checked_metadata(&file, path, uid)?;
    if meta.len() > limit {
        return Err(too_large(path, meta.len(), limit));
    }
    // Sized from the fstat, so that a record reads in one call (and one more that finds the end).
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or_default() + 1);
    io::Read::read_to_end(&mut io::Read::take(&file, limit + 1), &mut bytes)
        .with_context(|| format!("reading {}", path.display()))?;
    if bytes.len() as u64 > limit {
        return Err(too_large(path, bytes.len() as u64, limit));
    }
    Ok(Some((bytes, meta)))
}

/// Checks an open file with `fstat`: a regular file owned by `uid`. Returns its size.
pub(crate) fn check_regular_file(file: &File, path: &Path, uid: u32) -> anyhow::Result<u64> {
    checked_metadata(file, path, uid).map(|meta| meta.len())
}

/// `check_regular_file`, returning the whole `fstat`.
fn checked_metadata(file: &File, path: &Path, uid: u32) -> anyhow::Result<fs::Metadata> {
    let meta = file
        .metadata()
        .with_context(|| format!("inspecting {}", path.display()))?;
    if !meta.file_type().is_file() {
        return Err(bad_input(format!(
            "unsafe file {}: expected a regular file, found {}; left alone; fix: give a path to a regular file \
             of your own",
            path.display(),
            kind_of(&meta)
        )));
    }
    if meta.uid() != uid {
        return Err(bad_input(format!(
            "unsafe file {}: owned by uid {}, not by us (uid {uid}); left alone; fix: give a path of your own",
            path.display(),
            meta.uid(),
        )));
    }
    Ok(meta)
}

fn kind_of(meta: &fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let kind = meta.file_type();
    if kind.is_fifo() {
        "a FIFO"
    } else if kind.is_dir() {
        "a directory"
    } else if kind.is_socket() {
        "a socket"
    } else if kind.is_char_device() || kind.is_block_device() {
        "a device"
    } else {
        "something else"
    }
}

/// An open that failed: a symlink (`ELOOP` under `O_NOFOLLOW`) is named as such.
fn refusal(path: &Path, err: &io::Error) -> anyhow::Error {
    if err.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) {
        bad_input(format!(
            "unsafe state file {}: it is a symlink, never followed; left alone; fix: if session-reaper made it, \
             move it aside, else give a path of your own",
            path.display()
        ))
    } else {
        anyhow::anyhow!("opening {}: {err}", path.display())
    }
}

fn too_large(path: &Path, size: u64, limit: u64) -> anyhow::Error {
    bad_input(format!(
        "unsafe state file {}: {size} bytes, expected at most {limit}; fix: move it aside",
        path.display()
    ))
}

/// How much of a state root `refuse_special_files` looks at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Reach {
    /// The files at the top (the event log and its locks): for `log`.
    Top,
    /// The top, session records and stop tickets: a few directory reads, for the commands that act. (A slot's
    /// `broker.json` is checked when it is read: a special file there is an unreadable slot, left alone.)
    Records,
    /// Every level we keep files at, slots included: for `doctor`, which looks at everything.
    Whole,
}

/// Refuses (exit 2, naming the path) a state root holding a FIFO, socket or device where we keep files: none is
/// ever ours, and opening one could block. Reads directory entries only (their type comes with them), opens
/// nothing; a missing root is fine.
pub(crate) fn refuse_special_files(root: &Path, reach: Reach) -> anyhow::Result<()> {
    let depth = match reach {
        Reach::Top => 1,
        Reach::Records => 2,
        Reach::Whole => 4,
    };
    let workspaces = root.join(WORKSPACES);
    let special = walkdir::WalkDir::new(root)
        .min_depth(1)
        .max_depth(depth)
        .follow_links(false)
        .into_iter()
        .filter_entry(|entry| reach == Reach::Whole || entry.path() != workspaces)
        .filter_map(Result::ok)
        .find(|entry| {
            let kind = entry.file_type();
            !(kind.is_file() || kind.is_dir() || kind.is_symlink())
        });
    match special {
        None => Ok(()),
        Some(entry) => {
            let kind = entry
                .metadata()
                .map_or("a special file", |meta| kind_of(&meta));
            Err(bad_input(format!(
                "unsafe state root: {} is {kind}, which session-reaper never makes, so the directory holds files \
                 that are not ours; left alone; fix: give --state-dir a directory of session-reaper's own",
                entry.path().display()
            )))
        }
    }
}

/// Why a directory is unsafe to keep state in, if it is.
pub(crate) fn unsafe_dir_reason(meta: &fs::Metadata, uid: u32) -> Option<&'static str> {
    if meta.file_type().is_symlink() {
        Some("it is a symlink")
    } else if !meta.is_dir() {
        Some("it is not a directory")
    } else if meta.uid() != uid {
        Some("it is owned by another user")
    } else if meta.permissions().mode() & 0o022 != 0 {
        Some("it is group- or other-writable")
    } else {
        None
    }
}

fn fix_for(reason: &str, dir: &Path) -> String {
    match reason {
        "it is group- or other-writable" => format!("chmod go-w {}", dir.display()),
        "it is owned by another user" => format!(
            "use a state root of your own (--state-dir) or chown {}",
            dir.display()
        ),
        _ => format!("remove {} or choose another --state-dir", dir.display()),
    }
}

/// This machine's host name, as the store stamps it on what it writes (a state root on a network home is shared
/// between hosts, and another host's records are neither acted on nor pruned). Read once per run.
pub(crate) fn host_name() -> String {
    static NAME: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    NAME.get_or_init(|| {
        rustix::system::uname()
            .nodename()
            .to_string_lossy()
            .into_owned()
    })
    .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_root_0700_with_subdirs() {
        let temp = tempfile::tempdir().unwrap();
        let root = StateRoot::open(&temp.path().join("a/state")).unwrap();
        let mode = fs::metadata(root.path()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        assert!(
            root.join(WORKSPACES).is_dir()
                && root.join(SESSIONS).is_dir()
                && root.join(STOPPING).is_dir()
        );
    }

    #[test]
    fn refuses_symlinked_and_writable_roots() {
        let temp = tempfile::tempdir().unwrap();
        let real = temp.path().join("real");
        fs::create_dir(&real).unwrap();
        let link = temp.path().join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let err = StateRoot::open(&link).unwrap_err();
        assert_eq!(crate::error::exit_code_of(&err), 2);
        assert!(err.to_string().contains("symlink"), "{err}");

        fs::set_permissions(&real, fs::Permissions::from_mode(0o770)).unwrap();
        let err = StateRoot::open(&real).unwrap_err();
        assert!(err.to_string().contains("chmod go-w"), "{err}");
    }

    #[test]
    fn refuses_symlinked_subdir() {
        let temp = tempfile::tempdir().unwrap();
        let root = temp.path().join("root");
        fs::DirBuilder::new().mode(0o700).create(&root).unwrap();
        std::os::unix::fs::symlink(temp.path(), root.join(SESSIONS)).unwrap();
        assert!(StateRoot::open(&root).is_err());
    }

    #[test]
    fn atomic_write_replaces_and_leaves_no_temp() {
        let temp = tempfile::tempdir().unwrap();
        let root = StateRoot::open(temp.path()).unwrap();
        let target = root.join("x.json");
        root.write_atomic(&target, b"one").unwrap();
        root.write_atomic(&target, b"two").unwrap();
        assert_eq!(root.read_file(&target).unwrap().unwrap(), b"two");
        let names: Vec<_> = fs::read_dir(root.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(
            names.iter().all(|n| !n.to_string_lossy().contains(".tmp-")),
            "{names:?}"
        );
    }

    #[test]
    fn reading_through_a_symlink_is_refused() {
        let temp = tempfile::tempdir().unwrap();
        let root = StateRoot::open(&temp.path().join("s")).unwrap();
        fs::write(temp.path().join("elsewhere"), "{}").unwrap();
        std::os::unix::fs::symlink(temp.path().join("elsewhere"), root.join("x.json")).unwrap();
        assert!(root.read_file(&root.join("x.json")).is_err());
    }
}
