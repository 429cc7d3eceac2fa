//! The workspace of a cwd: its git top-level, else the cwd itself (the directory key it is stored under is
//! `model::workspace`).

use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::error::bad_input;

/// The canonical workspace of `cwd`: the nearest ancestor holding a `.git` entry (a directory, or a file as in a
/// worktree), else `cwd`. No `git` subprocess: a hook must stay fast and work without git installed.
pub(crate) fn workspace_of(cwd: &Path) -> anyhow::Result<PathBuf> {
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

/// The current directory, named in the error when it is gone.
pub(crate) fn current_dir() -> anyhow::Result<PathBuf> {
    std::env::current_dir().context("reading the current directory")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::workspace::{slug, workspace_key};

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
