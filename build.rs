//! Build script: the version `--version` prints, with the git commit when built from a git checkout of this crate
//! (`0.1.0 (git 1a2b3c4d5e6f)`), and the bare version otherwise — from a crate tarball, without git, or inside
//! some other repository (`cargo package` verifies under `target/package/`). It never fails the build.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let version = std::env::var("CARGO_PKG_VERSION").unwrap_or_default();
    let manifest_dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    let full = match commit_of(&manifest_dir) {
        Some(commit) => format!("{version} (git {commit})"),
        None => version,
    };
    println!("cargo:rustc-env=SESSION_REAPER_VERSION={full}");
}

/// The checked-out commit of the repository whose top level is `dir`, and re-runs of this script when it moves.
fn commit_of(dir: &Path) -> Option<String> {
    let top = git(dir, &["rev-parse", "--show-toplevel"])?;
    if std::fs::canonicalize(&top).ok()? != std::fs::canonicalize(dir).ok()? {
        return None;
    }
    // HEAD moves on a checkout; the branch's ref (loose or packed) on a commit.
    for file in ["HEAD", "packed-refs"] {
        if let Some(path) = git(dir, &["rev-parse", "--git-path", file]) {
            println!("cargo:rerun-if-changed={}", dir.join(path).display());
        }
    }
    if let Some(reference) = git(dir, &["symbolic-ref", "-q", "HEAD"])
        && let Some(path) = git(dir, &["rev-parse", "--git-path", &reference])
    {
        println!("cargo:rerun-if-changed={}", dir.join(path).display());
    }
    git(dir, &["rev-parse", "--short=12", "HEAD"])
}

/// One line of git's output, or `None` when git is missing or fails.
fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    let line = text.trim();
    (out.status.success() && !line.is_empty()).then(|| line.to_owned())
}
