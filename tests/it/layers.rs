//! The floor plan of DESIGN "Architecture", checked from the code's own imports: every module sits inside a layer,
//! imports only go down (model < store < observe < decide < act < adapters < commands), nothing in `decide/` reads
//! the system, and `settings/` stands beside the layers without reaching into the hook or the configuration.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// The layers, lowest first.
const LAYERS: [&str; 7] = [
    "model", "store", "observe", "decide", "act", "adapters", "commands",
];

/// The files that may sit at the top of `src/`.
const TOP: [&str; 6] = [
    "main.rs",
    "lib.rs",
    "cli.rs",
    "config.rs",
    "error.rs",
    "agents.rs",
];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("reading src/") {
        let path = entry.expect("a src/ entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            out.push(path);
        }
    }
}

/// The code of a file without its unit tests (a test module may build what it checks from any layer).
fn code_of(path: &Path) -> String {
    let text = std::fs::read_to_string(path).expect("reading a source file");
    match text.find("#[cfg(test)]\nmod tests") {
        Some(at) => text[..at].to_owned(),
        None => text,
    }
}

/// The first-level modules of the crate a file names through `crate::`.
fn imports(code: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for (at, _) in code.match_indices("crate::") {
        let name: String = code[at + "crate::".len()..]
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || *c == '_')
            .collect();
        if !name.is_empty() {
            found.insert(name);
        }
    }
    found
}

fn rank(layer: &str) -> Option<usize> {
    LAYERS.iter().position(|name| *name == layer)
}

/// What a file of `layer` may not import, besides every layer above it.
fn forbidden(layer: &str, module: &str) -> bool {
    match (layer, module) {
        (_, "cli" | "config" | "lib")
            if rank(layer).is_some_and(|r| r < rank("commands").unwrap()) =>
        {
            true
        }
        ("decide", "store") | ("settings", "commands" | "config" | "cli") => true,
        (layer, "settings") => rank(layer).is_some_and(|r| r < rank("commands").unwrap()),
        (layer, module) => {
            matches!((rank(layer), rank(module)), (Some(me), Some(them)) if them > me)
        }
    }
}

#[test]
fn every_module_sits_in_a_layer_and_imports_only_go_down() {
    let root = src();
    let mut files = Vec::new();
    rust_files(&root, &mut files);
    files.sort();
    let mut loose = Vec::new();
    let mut upward = Vec::new();
    for path in &files {
        let relative = path.strip_prefix(&root).unwrap();
        let parts: Vec<String> = relative
            .iter()
            .map(|part| part.to_string_lossy().into_owned())
            .collect();
        let layer = match parts.as_slice() {
            [file] => {
                if !TOP.contains(&file.as_str()) {
                    loose.push(file.clone());
                }
                continue;
            }
            [dir, ..] => dir.clone(),
            [] => continue,
        };
        for module in imports(&code_of(path)) {
            if forbidden(&layer, &module) {
                upward.push(format!("{} imports crate::{module}", relative.display()));
            }
        }
    }
    assert!(
        loose.is_empty(),
        "modules outside any layer (DESIGN \"Architecture\"): {loose:?}"
    );
    assert!(
        upward.is_empty(),
        "imports that climb a layer:\n{}",
        upward.join("\n")
    );
}

/// The files at the top of `src/` below the commands (the configuration reads input, the agents table is data):
/// none reaches up into `commands/`, which dispatch on them.
#[test]
fn the_top_files_below_the_commands_import_no_command() {
    for name in ["cli.rs", "config.rs", "error.rs", "agents.rs"] {
        let climbing: Vec<String> = imports(&code_of(&src().join(name)))
            .into_iter()
            .filter(|module| module == "commands" || module == "lib")
            .collect();
        assert!(
            climbing.is_empty(),
            "src/{name} imports {climbing:?}: what it needs belongs below the commands"
        );
    }
}

#[test]
fn nothing_in_decide_reads_the_system() {
    let mut files = Vec::new();
    rust_files(&src().join("decide"), &mut files);
    let reaching: Vec<String> = files
        .iter()
        .filter_map(|path| {
            let code = code_of(path);
            let hits: Vec<&str> = [
                "rustix",
                "nix::",
                "libc::",
                "std::fs",
                "std::process",
                "std::env",
                "getrandom",
                "gethostname",
                "SystemTime::now",
                "Instant::now",
                "proc::",
                "store::",
            ]
            .into_iter()
            .filter(|word| code.contains(word))
            .collect();
            (!hits.is_empty()).then(|| format!("{}: {hits:?}", path.display()))
        })
        .collect();
    assert!(
        reaching.is_empty(),
        "decide/ must be pure (no system call, clock or randomness):\n{}",
        reaching.join("\n")
    );
}

/// The files of `src/` (their code without unit tests) in which `needle` appears, relative to `src/`.
fn files_with(needle: &str) -> BTreeSet<String> {
    let root = src();
    let mut files = Vec::new();
    rust_files(&root, &mut files);
    files
        .iter()
        .filter(|path| code_of(path).contains(needle))
        .map(|path| path.strip_prefix(&root).unwrap().display().to_string())
        .collect()
}

#[test]
fn stop_tickets_are_filed_only_by_the_executor() {
    let filing = files_with("tickets.file(");
    assert_eq!(
        filing,
        BTreeSet::from(["act/executor.rs".to_owned()]),
        "a stop ticket is a plan's change: only act/executor.rs files one"
    );
}

#[test]
fn events_are_appended_only_by_the_executor_the_stopper_and_the_hooks_error_line() {
    let allowed = BTreeSet::from([
        "act/executor.rs".to_owned(),
        "act/stopper.rs".to_owned(),
        "commands/hook.rs".to_owned(),
    ]);
    // `store/events.rs` defines the log; everyone else hands an event to the executor.
    let appending: BTreeSet<String> = ["log.record(", ".record(&", "log.append("]
        .into_iter()
        .flat_map(files_with)
        .filter(|file| file != "store/events.rs")
        .collect();
    let stray: Vec<&String> = appending.difference(&allowed).collect();
    assert!(
        stray.is_empty(),
        "events are appended only from {allowed:?}; also from: {stray:?}"
    );
    let hook = code_of(&src().join("commands/hook.rs"));
    assert_eq!(
        hook.matches(".record(").count(),
        1,
        "commands/hook.rs appends only its own error line"
    );
}

/// Issue 17: no unbounded wait on a hook's path. `Deadline::far()` (a day away) is for commands a person runs with
/// no deadline (`sweep` from cron, `reap` without `--deadline`, `status`); what a hook, its sentinel or its
/// finisher runs takes the invocation's deadline, or one derived from its tickets.
#[test]
fn no_far_deadline_on_a_hooks_path() {
    let root = src();
    let mut files = vec![
        root.join("commands/hook.rs"),
        root.join("commands/session_end.rs"),
        root.join("commands/sentinel.rs"),
    ];
    for layer in ["act", "observe", "decide"] {
        rust_files(&root.join(layer), &mut files);
    }
    let unbounded: Vec<String> = files
        .iter()
        .filter(|path| code_of(path).contains("Deadline::far"))
        .map(|path| path.strip_prefix(&root).unwrap().display().to_string())
        .collect();
    assert!(
        files.len() > 3 && unbounded.is_empty(),
        "Deadline::far() on a hook's path: {unbounded:?}"
    );
}
