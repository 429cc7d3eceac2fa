//! The file half of the installer: read a settings file (JSON, or JSON with comments where the agent allows them),
//! apply the pure merge, and write back only what changed — the concrete syntax tree is edited in place, so the
//! user's comments, indentation and key order survive — through the one atomic writer of `state`, after saving
//! the previous contents to one backup beside it (`NAME.session-reaper.bak`, replaced on each change).

use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::Context;
use jsonc_parser::ParseOptions;
use jsonc_parser::cst::{CstArray, CstInputValue, CstNode, CstObject, CstObjectProp, CstRootNode};
use serde_json::{Map, Value};

use crate::agents::AgentSpec;
use crate::error::BadInput;
use crate::store::root::write_atomic;

/// A settings file as read: its text, its value, its syntax tree and what it was when read.
pub(crate) struct Loaded {
    pub text: String,
    pub value: Value,
    tree: CstRootNode,
    pub metadata: fs::Metadata,
}

fn bad(shown: &Path, message: impl std::fmt::Display) -> anyhow::Error {
    anyhow::Error::new(BadInput(format!("{}: {message}", shown.display())))
}

/// The file to rewrite for `path`: `path` itself, or the file at the end of its symlink chain (so a settings file
/// symlinked from a dotfiles repository stays a symlink).
pub(crate) fn write_target(path: &Path) -> io::Result<PathBuf> {
    let mut current = path.to_path_buf();
    for _ in 0..40 {
        match fs::symlink_metadata(&current) {
            Ok(meta) if meta.file_type().is_symlink() => {
                let link = fs::read_link(&current)?;
                current = match current.parent() {
                    Some(parent) if link.is_relative() => parent.join(link),
                    _ => link,
                };
            }
            Ok(_) => return Ok(current),
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(current),
            Err(err) => return Err(err),
        }
    }
    Err(io::Error::other("too many levels of symbolic links"))
}

/// Reads and parses the settings file; `None` when it does not exist. `shown` is the path named in errors.
pub(crate) fn load(
    spec: &AgentSpec,
    target: &Path,
    shown: &Path,
) -> anyhow::Result<Option<Loaded>> {
    let metadata = match fs::metadata(target) {
        Ok(metadata) => metadata,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(err).with_context(|| format!("cannot read {}", shown.display())),
    };
    if !metadata.is_file() {
        return Err(bad(
            shown,
            "expected a settings file, found a directory or special file",
        ));
    }
    let bytes = fs::read(target).with_context(|| format!("cannot read {}", shown.display()))?;
    let text = String::from_utf8(bytes)
        .map_err(|_| bad(shown, "expected JSON text, found bytes that are not UTF-8"))?;
    parse(spec, &text, shown).map(|(value, tree)| {
        Some(Loaded {
            text,
            value,
            tree,
            metadata,
        })
    })
}

/// The value and syntax tree of a settings text. Comments (and trailing commas) only where the agent allows them.
/// A plugin file of ours (`SettingsKind::Plugin`) reads as the settings document it stands for.
pub fn parse(spec: &AgentSpec, text: &str, shown: &Path) -> anyhow::Result<(Value, CstRootNode)> {
    if spec.is_plugin() {
        let tree =
            CstRootNode::parse("{}", &ParseOptions::default()).map_err(|err| bad(shown, err))?;
        return Ok((crate::settings::plugin::view(spec, text), tree));
    }
    let body = text.strip_prefix('\u{feff}').unwrap_or(text);
    let blank = body.trim().is_empty();
    if !spec.comments && !blank {
        serde_json::from_str::<Value>(body).map_err(|err| {
            bad(
                shown,
                format!(
                    "expected a JSON object, but this is not valid JSON ({err}); {} reads this file as plain JSON, without comments",
                    spec.title
                ),
            )
        })?;
    }
    let options = ParseOptions {
        allow_comments: spec.comments,
        allow_trailing_commas: spec.comments,
        allow_loose_object_property_names: false,
        allow_missing_commas: false,
        allow_single_quoted_strings: false,
        allow_hexadecimal_numbers: false,
        allow_unary_plus_numbers: false,
        allow_bare_decimal_point_numbers: false,
        allow_extended_string_escapes: false,
        allow_non_finite_numbers: false,
    };
    let tree = CstRootNode::parse(text, &options).map_err(|err| {
        bad(
            shown,
            format!("expected a JSON object (comments allowed), but it does not parse: {err}"),
        )
    })?;
    let value = if blank {
        Value::Object(Map::new())
    } else {
        tree.to_serde_value()
            .ok_or_else(|| bad(shown, "expected a JSON object, found no value"))?
    };
    Ok((value, tree))
}

/// `loaded`'s text changed to hold `new`: only the nodes that differ are rewritten.
pub(crate) fn edited_text(loaded: &Loaded, new: &Value) -> String {
    if loaded.tree.value().is_none() {
        return rendered(new);
    }
    apply(&Slot::Root(loaded.tree.clone()), &loaded.value, new);
    let mut text = loaded.tree.to_string();
    if loaded.text.ends_with('\n') && !text.ends_with('\n') {
        text.push('\n');
    }
    text
}

/// A new file's text: pretty-printed, two-space indent, final newline.
pub(crate) fn rendered(value: &Value) -> String {
    let mut text =
        serde_json::to_string_pretty(value).expect("a serde_json::Value always serializes");
    text.push('\n');
    text
}

/// Where a value sits in the tree, so that it can be replaced whole.
enum Slot {
    Root(CstRootNode),
    Prop(CstObjectProp),
    Element(CstArray, usize),
}

impl Slot {
    fn node(&self) -> Option<CstNode> {
        match self {
            Slot::Root(root) => root.value(),
            Slot::Prop(prop) => prop.value(),
            Slot::Element(array, index) => array.elements().into_iter().nth(*index),
        }
    }

    fn replace(&self, value: &Value) {
        match self {
            Slot::Root(root) => root.set_value(input(value)),
            Slot::Prop(prop) => prop.set_value(input(value)),
            Slot::Element(array, index) => {
                if let Some(old) = array.elements().into_iter().nth(*index) {
                    old.remove();
                }
                array.insert(*index, input(value));
            }
        }
    }
}

/// Makes the tree at `slot` (holding `old`) hold `new`, touching as little as possible.
fn apply(slot: &Slot, old: &Value, new: &Value) {
    if old == new {
        return;
    }
    let node = slot.node();
    match (
        old,
        new,
        node.as_ref().and_then(CstNode::as_object),
        node.as_ref().and_then(CstNode::as_array),
    ) {
        (Value::Object(old), Value::Object(new), Some(object), _) => {
            apply_object(&object, old, new);
        }
        (Value::Array(old), Value::Array(new), _, Some(array)) => apply_array(&array, old, new),
        _ => slot.replace(new),
    }
}

fn apply_object(object: &CstObject, old: &Map<String, Value>, new: &Map<String, Value>) {
    for prop in object.properties() {
        let Some(name) = prop.decoded_name() else {
            continue;
        };
        match (old.get(&name), new.get(&name)) {
            (_, None) => prop.remove(),
            (Some(before), Some(after)) => apply(&Slot::Prop(prop), before, after),
            (None, Some(_)) => {}
        }
    }
    for (index, (name, value)) in new.iter().enumerate() {
        if !old.contains_key(name) {
            object.insert(index, name, input(value));
        }
    }
}

/// Aligns `old` with `new` greedily: equal elements are kept, an element that no longer appears is removed (or, when
/// its counterpart is new too, changed in place), a new one is inserted where it belongs.
fn apply_array(array: &CstArray, old: &[Value], new: &[Value]) {
    let (mut i, mut j, mut k) = (0, 0, 0);
    while i < old.len() || j < new.len() {
        if i < old.len() && j < new.len() && old[i] == new[j] {
            i += 1;
            j += 1;
            k += 1;
        } else if i < old.len() && !new[j..].contains(&old[i]) {
            if j < new.len() && !old[i..].contains(&new[j]) {
                apply(&Slot::Element(array.clone(), k), &old[i], &new[j]);
                j += 1;
                k += 1;
            } else if let Some(element) = array.elements().into_iter().nth(k) {
                element.remove();
            }
            i += 1;
        } else {
            array.insert(k, input(&new[j]));
            j += 1;
            k += 1;
        }
    }
}

fn input(value: &Value) -> CstInputValue {
    match value {
        Value::Null => CstInputValue::Null,
        Value::Bool(b) => CstInputValue::Bool(*b),
        Value::Number(n) => CstInputValue::Number(n.to_string()),
        Value::String(s) => CstInputValue::String(s.clone()),
        Value::Array(items) => CstInputValue::Array(items.iter().map(input).collect()),
        Value::Object(map) => {
            CstInputValue::Object(map.iter().map(|(k, v)| (k.clone(), input(v))).collect())
        }
    }
}

/// Fails when the file at `target` is no longer the one we read (another program rewrote it meanwhile), so that
/// we never overwrite a change we did not see.
pub(crate) fn ensure_unchanged(target: &Path, read: &fs::Metadata) -> anyhow::Result<()> {
    let now = fs::metadata(target)?;
    let same = now.ino() == read.ino()
        && now.dev() == read.dev()
        && now.len() == read.len()
        && now.mtime() == read.mtime()
        && now.mtime_nsec() == read.mtime_nsec();
    anyhow::ensure!(same, "it changed while being edited; run the command again");
    Ok(())
}

/// The one backup of a settings file: `NAME.session-reaper.bak` beside it.
pub(crate) fn backup_path(target: &Path) -> PathBuf {
    let name = target
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    target.with_file_name(format!("{name}.session-reaper.bak"))
}

/// Replaces `target` with `text`: the previous contents (if any, and `backup` asks for it) saved to its one backup
/// first, both written by the atomic writer with the original's permission bits.
pub(crate) fn replace(
    target: &Path,
    text: &str,
    loaded: Option<&Loaded>,
    backup: bool,
) -> anyhow::Result<Option<PathBuf>> {
    let backup = if let Some(loaded) = loaded.filter(|_| backup) {
        let path = backup_path(target);
        let mode = loaded.metadata.permissions().mode() & 0o7777;
        write_atomic(&path, loaded.text.as_bytes(), mode)
            .with_context(|| format!("{}: cannot write a backup beside it", target.display()))?;
        fs::set_permissions(&path, fs::Permissions::from_mode(mode))?;
        Some(path)
    } else if loaded.is_some() {
        None
    } else {
        if let Some(parent) = target
            .parent()
            .filter(|parent| !parent.as_os_str().is_empty())
        {
            fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        None
    };
    let mode = loaded.map_or(0o644, |loaded| {
        loaded.metadata.permissions().mode() & 0o7777
    });
    write_atomic(target, text.as_bytes(), mode)
        .with_context(|| format!("{}: cannot write", target.display()))?;
    if loaded.is_some() {
        fs::set_permissions(target, fs::Permissions::from_mode(mode))?;
    }
    Ok(backup)
}
