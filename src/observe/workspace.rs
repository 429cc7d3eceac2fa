//! The workspace of a cwd (its git top-level, else the cwd itself) and the directory key it is stored under.

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use anyhow::Context;
use sha2::{Digest, Sha256};

use crate::error::bad_input;

/// The canonical workspace of `cwd`: the nearest ancestor holding a `.git` entry (a directory, or a file as in a
/// worktree), else `cwd`. No `git` subprocess: a hook must stay fast and work without git installed.
pub fn workspace_of(cwd: &Path) -> anyhow::Result<PathBuf> {
    let canonical = std::fs::canonicalize(cwd).map_err(|err| {
        bad_input(format!(
            "cwd {}: {err}; expected an existing directory",
            cwd.display()
        ))
    })?;
    if !canonical.is_dir() {
        return Err(bad_input(format!(
            "cwd {}: expected a directory",
            cwd.display()
        )));
    }
    Ok(canonical
        .ancestors()
        .find(|dir| std::fs::symlink_metadata(dir.join(".git")).is_ok())
        .unwrap_or(&canonical)
        .to_path_buf())
}

/// `<slug>-<hash16>`: a readable, collision-free directory name for a canonical workspace path.
pub fn workspace_key(workspace: &Path) -> String {
    let digest = Sha256::digest(workspace.as_os_str().as_bytes());
    let hash16 = hex(&digest[..8]);
    format!("{}-{hash16}", slug(workspace))
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut text, byte| {
            let _ = write!(text, "{byte:02x}");
            text
        })
}

/// The basename with runs outside `[A-Za-z0-9._-]` turned into `-`, trimmed; `workspace` when nothing is left.
fn slug(workspace: &Path) -> String {
    let base = workspace
        .file_name()
        .map(|name| name.to_string_lossy())
        .unwrap_or_default();
    let mut out = String::with_capacity(base.len());
    for ch in base.chars() {
        if ch.is_ascii_alphanumeric() || matches!(ch, '.' | '_' | '-') {
            out.push(ch);
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    let trimmed = out.trim_matches('-');
    if trimmed.is_empty() || trimmed.chars().all(|c| c == '.') {
        "workspace".to_owned()
    } else {
        trimmed.to_owned()
    }
}

/// The current directory, named in the error when it is gone.
pub fn current_dir() -> anyhow::Result<PathBuf> {
    std::env::current_dir().context("reading the current directory")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_vectors() {
        assert_eq!(workspace_key(Path::new("/tmp/x")), "x-2e56aa36f538b33b");
        assert_eq!(workspace_key(Path::new("/")), "workspace-8a5edab282632443");
        assert_eq!(
            workspace_key(Path::new("/home/a/my repo!")),
            "my-repo-21b524ccbdce1272"
        );
    }

    #[test]
    fn slugs() {
        assert_eq!(slug(Path::new("/a/--x  y!!z--")), "x-y-z");
        assert_eq!(slug(Path::new("/a/日本")), "workspace");
        assert_eq!(slug(Path::new("/a/v1.2_b")), "v1.2_b");
    }

    #[test]
    fn finds_git_top_level_dir_or_file() {
        let root = tempfile::tempdir().unwrap();
        let repo = root.path().join("repo");
        std::fs::create_dir_all(repo.join(".git")).unwrap();
        std::fs::create_dir_all(repo.join("src/deep")).unwrap();
        let worktree = root.path().join("wt");
        std::fs::create_dir_all(worktree.join("sub")).unwrap();
        std::fs::write(worktree.join(".git"), "gitdir: ../repo/.git/worktrees/wt\n").unwrap();
        let plain = root.path().join("plain");
        std::fs::create_dir_all(&plain).unwrap();
        let canonical = |p: &Path| std::fs::canonicalize(p).unwrap();
        assert_eq!(
            workspace_of(&repo.join("src/deep")).unwrap(),
            canonical(&repo)
        );
        assert_eq!(
            workspace_of(&worktree.join("sub")).unwrap(),
            canonical(&worktree)
        );
        // Inside the temp dir nothing above has .git, unless the machine's /tmp does; compare to itself.
        let found = workspace_of(&plain).unwrap();
        assert!(found == canonical(&plain) || canonical(&plain).starts_with(&found));
    }

    #[test]
    fn missing_cwd_is_bad_input() {
        let err = workspace_of(Path::new("/nonexistent/dir/for/sure")).unwrap_err();
        assert_eq!(crate::error::exit_code_of(&err), 2);
    }
}
