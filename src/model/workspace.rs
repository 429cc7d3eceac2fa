//! The directory key a canonical workspace path is stored under: `<slug>-<hash16>` (DESIGN "State root").

use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use sha2::{Digest, Sha256};

/// `<slug>-<hash16>`: a readable, collision-free directory name for a canonical workspace path.
pub fn workspace_key(workspace: &Path) -> String {
    let digest = Sha256::digest(workspace.as_os_str().as_bytes());
    let hash16 = hex(&digest[..8]);
    format!("{}-{hash16}", slug(workspace))
}

/// Lower-case hex of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut text, byte| {
            let _ = write!(text, "{byte:02x}");
            text
        })
}

/// The basename with runs outside `[A-Za-z0-9._-]` turned into `-`, trimmed; `workspace` when nothing is left.
pub(crate) fn slug(workspace: &Path) -> String {
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
