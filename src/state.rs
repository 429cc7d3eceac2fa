//! The state root: where it is, the safety checks it must pass, and safe file access below it.
//!
//! Every directory we use is checked (not a symlink, owned by us, not group/other-writable) and every file is opened
//! without following symlinks and must be a regular file owned by us. Writes are atomic: a temp file in the same
//! directory, fsync, rename over the target, fsync of the directory.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::error::bad_input;

pub const SESSIONS: &str = "sessions";
pub const WORKSPACES: &str = "workspaces";
pub const STOPPING: &str = "stopping";
pub const EVENTS: &str = "events.jsonl";

/// Where the state root comes from, in order of precedence (resolved once, in `Config`).
pub fn resolve_root(flag: Option<&Path>) -> anyhow::Result<PathBuf> {
    let from_env = |name: &str| {
        std::env::var_os(name)
            .filter(|value| !value.is_empty())
            .map(PathBuf::from)
    };
    if let Some(path) = flag
        .map(Path::to_path_buf)
        .or_else(|| from_env("SESSION_REAPER_STATE_DIR"))
    {
        return Ok(path);
    }
    default_root()
}

/// The root used when neither `--state-dir` nor `SESSION_REAPER_STATE_DIR` names one: under `XDG_STATE_HOME`, else
/// `~/.local/state` (what a hook gets from an agent that does not pass our variable on).
pub fn default_root() -> anyhow::Result<PathBuf> {
    let from_env = |name: &str| {
        std::env::var_os(name)
            .filter(|value| !value.is_empty())
            .map(PathBuf::from)
    };
    if let Some(xdg) = from_env("XDG_STATE_HOME") {
        return Ok(xdg.join("session-reaper"));
    }
    let home = from_env("HOME").ok_or_else(|| {
        bad_input(
            "no state root: set --state-dir, SESSION_REAPER_STATE_DIR, XDG_STATE_HOME or HOME",
        )
    })?;
    Ok(home.join(".local/state/session-reaper"))
}

/// A checked state root. Holding one means the root passed the safety checks.
#[derive(Clone, Debug)]
pub struct StateRoot {
    path: PathBuf,
    uid: u32,
}

impl StateRoot {
    /// Creates the root (0700) if missing and checks it and its fixed sub-directories.
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        let path = if path.is_absolute() {
            path.to_path_buf()
        } else {
            std::env::current_dir()?.join(path)
        };
        let uid = nix::unistd::geteuid().as_raw();
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
    pub fn open_existing(path: &Path) -> anyhow::Result<Option<Self>> {
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
            uid: nix::unistd::geteuid().as_raw(),
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

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn uid(&self) -> u32 {
        self.uid
    }

    pub fn join(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.path.join(rel)
    }

    /// Creates `dir` (0700) if missing, then checks it. Fails with exit 2 naming the path and the fix.
    pub fn ensure_dir(&self, dir: &Path) -> anyhow::Result<()> {
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
    pub fn check_dir(&self, dir: &Path) -> anyhow::Result<()> {
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

    /// Opens a file below the root for reading; `None` if it does not exist.
    pub fn read_file(&self, path: &Path) -> anyhow::Result<Option<Vec<u8>>> {
        let file = match open_nofollow(path, OpenOptions::new().read(true)) {
            Ok(file) => file,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(err) => return Err(err).with_context(|| format!("opening {}", path.display())),
        };
        self.check_file(&file, path)?;
        let mut bytes = Vec::new();
        io::Read::read_to_end(&mut &file, &mut bytes)
            .with_context(|| format!("reading {}", path.display()))?;
        Ok(Some(bytes))
    }

    /// Opens (creating if needed) a file that is only ever locked, never renamed or deleted while in use.
    pub fn open_lock_file(&self, path: &Path) -> anyhow::Result<File> {
        let file = open_nofollow(
            path,
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .mode(0o600),
        )
        .with_context(|| format!("opening lock {}", path.display()))?;
        self.check_file(&file, path)?;
        Ok(file)
    }

    /// Opens a file for appending (events), creating it 0600.
    pub fn open_append(&self, path: &Path) -> anyhow::Result<File> {
        let file = open_nofollow(
            path,
            OpenOptions::new().append(true).create(true).mode(0o600),
        )
        .with_context(|| format!("opening {}", path.display()))?;
        self.check_file(&file, path)?;
        Ok(file)
    }

    fn check_file(&self, file: &File, path: &Path) -> anyhow::Result<()> {
        let meta = file
            .metadata()
            .with_context(|| format!("inspecting {}", path.display()))?;
        if !meta.file_type().is_file() {
            return Err(bad_input(format!(
                "unsafe state file {}: expected a regular file",
                path.display()
            )));
        }
        if meta.uid() != self.uid {
            return Err(bad_input(format!(
                "unsafe state file {}: owned by uid {}, expected {}; fix: remove it",
                path.display(),
                meta.uid(),
                self.uid
            )));
        }
        Ok(())
    }

    /// Atomically replaces `path` with `bytes`: temp file in the same directory, fsync, rename, fsync directory.
    pub fn write_atomic(&self, path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
        write_atomic(path, bytes, 0o600)
    }
}

/// Atomically replaces `path` with `bytes` (mode for a new file): temp file, fsync, rename, fsync directory.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    let dir = path.parent().context("a file to write has no directory")?;
    let name = path
        .file_name()
        .context("a file to write has no name")?
        .to_string_lossy();
    let temp = dir.join(format!(
        ".{name}.tmp-{}-{}",
        std::process::id(),
        temp_suffix()
    ));
    let result = (|| -> anyhow::Result<()> {
        let mut file = open_nofollow(
            &temp,
            OpenOptions::new().write(true).create_new(true).mode(mode),
        )
        .with_context(|| format!("creating {}", temp.display()))?;
        file.write_all(bytes)
            .with_context(|| format!("writing {}", temp.display()))?;
        file.sync_all()
            .with_context(|| format!("syncing {}", temp.display()))?;
        fs::rename(&temp, path).with_context(|| format!("renaming over {}", path.display()))?;
        sync_dir(dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&temp);
    }
    result
}

/// Moves a corrupt record aside to `<name>.corrupt-<ts>` in its directory, durably; returns the new path. The one
/// way a record that does not parse leaves its place: never dropped, never overwritten.
pub fn quarantine(path: &Path) -> anyhow::Result<PathBuf> {
    let dir = path
        .parent()
        .context("a record to move aside has no directory")?;
    let name = path
        .file_name()
        .context("a record to move aside has no name")?
        .to_string_lossy();
    let stamp = crate::clock::now_rfc3339().replace(':', "");
    let moved_to = dir.join(format!("{name}.corrupt-{stamp}"));
    fs::rename(path, &moved_to).with_context(|| format!("moving aside {}", path.display()))?;
    sync_dir(dir)?;
    Ok(moved_to)
}

/// fsync of a directory, so that a rename or unlink in it is durable.
pub fn sync_dir(dir: &Path) -> anyhow::Result<()> {
    File::open(dir)
        .and_then(|handle| handle.sync_all())
        .with_context(|| format!("syncing directory {}", dir.display()))
}

fn temp_suffix() -> u128 {
    use std::time::{SystemTime, UNIX_EPOCH};
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default()
}

fn open_nofollow(path: &Path, options: &mut OpenOptions) -> io::Result<File> {
    options
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

/// Why a directory is unsafe to keep state in, if it is.
pub fn unsafe_dir_reason(meta: &fs::Metadata, uid: u32) -> Option<&'static str> {
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
