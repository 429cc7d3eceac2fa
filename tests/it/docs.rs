//! The documentation held to the code: every transcript in README.md and docs/ is real output of this binary
//! (`SESSION_REAPER_BLESS=1` rewrites the ones that differ from what the binary prints now), and every Markdown file
//! in the repository parses cleanly as `CommonMark`: fences closed, nothing swallowed, relative links and anchors that
//! lead somewhere.
//!
//! A transcript is a `console` block right after a marker:
//!
//! ```text
//! <!-- check: NAME [any-order] [script=PATH] [fixture=status-tree]
//! shell lines run first, unseen: the world the transcript needs
//! -->
//! ```
//!
//! Without `script=` the block's `$ ` commands run in order in one `bash`, in a world of their own: `HOME` is a
//! temporary directory (the default state root below it, a workspace `~/src/app` with `.git` as the cwd, a fake
//! `crontab` and a `systemctl` that finds no user manager first on `PATH`), this binary first on `PATH`, no agent
//! variables, `NO_COLOR=1`. With `script=PATH` the script prints the whole transcript itself (given this binary).
//! Output is compared with pids, times, sizes, durations and hashes masked, and with that world's paths under the
//! names the docs use (`/home/me`, `/home/me/.cargo/bin/session-reaper`, `/tmp`).

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use pulldown_cmark::{CodeBlockKind, Event, HeadingLevel, Options, Parser, Tag, TagEnd};

use crate::harness::{BIN, Env, Home, fresh_session, python3, run_bounded_for, with_env_entry};

/// Rewrites the transcripts that differ from real output, instead of failing.
const BLESS: &str = "SESSION_REAPER_BLESS";

/// How long one transcript may take (a loaded 2-core machine).
const TRANSCRIPT_LIMIT: Duration = Duration::from_secs(60);

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Every Markdown file of the repository (not the build's, not hidden directories').
fn markdown_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = walkdir::WalkDir::new(repo())
        .into_iter()
        .filter_entry(|entry| {
            let name = entry.file_name().to_string_lossy();
            entry.depth() == 0
                || !(name.starts_with('.') || name == "target" || name == "node_modules")
        })
        .filter_map(Result::ok)
        .filter(|entry| {
            entry.file_type().is_file() && entry.path().extension() == Some("md".as_ref())
        })
        .map(|entry| entry.path().to_path_buf())
        .collect();
    files.sort();
    files
}

fn relative(path: &Path) -> String {
    path.strip_prefix(repo())
        .unwrap_or(path)
        .display()
        .to_string()
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset].matches('\n').count() + 1
}

// ---- transcripts ----

/// One `$ command` of a transcript and the output shown under it.
#[derive(Debug, Clone, PartialEq)]
struct Step {
    command: String,
    output: String,
}

/// One checked `console` block.
#[derive(Debug)]
struct Transcript {
    file: PathBuf,
    name: String,
    any_order: bool,
    script: Option<String>,
    fixture: Option<String>,
    setup: String,
    /// Byte range of the block's content (between the fence lines) in its file.
    body: std::ops::Range<usize>,
    steps: Vec<Step>,
}

fn steps_of(body: &str) -> Vec<Step> {
    let mut steps: Vec<Step> = Vec::new();
    for line in body.lines() {
        if let Some(command) = line.strip_prefix("$ ") {
            steps.push(Step {
                command: command.to_owned(),
                output: String::new(),
            });
        } else {
            let step = steps
                .last_mut()
                .unwrap_or_else(|| panic!("output before any `$ ` command: {line:?}"));
            step.output.push_str(line);
            step.output.push('\n');
        }
    }
    steps
}

/// The transcripts of one Markdown file; a `console` block without a marker is an unchecked transcript: an error.
fn transcripts_of(file: &Path, text: &str) -> Result<Vec<Transcript>, String> {
    let mut found = Vec::new();
    for (event, range) in Parser::new_ext(text, Options::ENABLE_TABLES).into_offset_iter() {
        let Event::Start(Tag::CodeBlock(CodeBlockKind::Fenced(info))) = event else {
            continue;
        };
        if info.split_whitespace().next() != Some("console") {
            continue;
        }
        let at = format!("{}:{}", relative(file), line_of(text, range.start));
        let before = text[..range.start].trim_end_matches([' ', '\n']);
        let Some(open) = before
            .rfind("<!-- check: ")
            .filter(|_| before.ends_with("-->"))
        else {
            return Err(format!(
                "{at}: a console block without a `<!-- check: NAME -->` marker right before it: every transcript is checked"
            ));
        };
        let marker = &before[open + "<!-- check: ".len()..before.len() - "-->".len()];
        let (head, setup) = marker.split_once('\n').unwrap_or((marker, ""));
        let mut words = head.split_whitespace();
        let name = words
            .next()
            .ok_or_else(|| format!("{at}: a marker without a name"))?;
        let (mut any_order, mut script, mut fixture) = (false, None, None);
        for word in words {
            match word.split_once('=') {
                None if word == "any-order" => any_order = true,
                Some(("script", path)) => script = Some(path.to_owned()),
                Some(("fixture", which)) => fixture = Some(which.to_owned()),
                _ => return Err(format!("{at}: unknown marker option {word:?}")),
            }
        }
        let block = &text[range.clone()];
        let start = range.start + block.find('\n').map_or(block.len(), |n| n + 1);
        let end = range.start
            + block
                .trim_end_matches('\n')
                .rfind('\n')
                .map_or(block.len(), |n| n + 1);
        let steps = steps_of(&text[start..end]);
        if steps.is_empty() {
            return Err(format!("{at}: transcript {name} has no `$ ` command"));
        }
        found.push(Transcript {
            file: file.to_path_buf(),
            name: name.to_owned(),
            any_order,
            script,
            fixture,
            setup: setup.to_owned(),
            body: start..end,
            steps,
        });
    }
    Ok(found)
}

/// A world for one transcript: its own HOME, workspace and temp dir; every process it started (they carry a
/// marker of this run in their environment) is killed when it is dropped.
struct World {
    env: Env,
    home: Home,
    marker: String,
}

impl World {
    fn new() -> World {
        let env = Env::new();
        let home = Home::new(&env);
        std::fs::create_dir_all(home.dir.join("src/app/.git")).expect("workspace");
        std::fs::create_dir_all(env.work.path().join("tmp")).expect("tmp");
        // The real python3 first on PATH (the home's bin comes before the caller's PATH): a version manager's shim
        // runs helpers of its own, which would show up as a broker's members.
        let bin = home.dir.join("bin");
        std::fs::create_dir_all(&bin).expect("home bin");
        let _ = std::os::unix::fs::symlink(python3(), bin.join("python3"));
        World {
            env,
            home,
            marker: format!("SR_DOCS_RUN={}", fresh_session("docs")),
        }
    }

    fn bash(&self, script: &str) -> Command {
        let bin_dir = Path::new(BIN).parent().unwrap();
        let path = format!(
            "{}:{}:{}",
            bin_dir.display(),
            self.home.dir.join("bin").display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let (name, value) = self.marker.split_once('=').unwrap();
        let mut command = Command::new("bash");
        command
            .args(["--noprofile", "--norc", "-c", script])
            .env_clear()
            .env("PATH", path)
            .env("HOME", &self.home.dir)
            .env("TMPDIR", self.env.work.path().join("tmp"))
            .env("LANG", "C.UTF-8")
            .env("NO_COLOR", "1")
            .env("REPO", repo())
            .env(name, value)
            // No hook of a transcript may adopt the test as its agent.
            .env("SESSION_REAPER_SENTINEL", "off")
            .env("SESSION_REAPER_LEFTOVERS", "off")
            // Nor make a cgroup in this machine's tree.
            .env("SESSION_REAPER_CONTAINMENT", "off")
            .current_dir(self.home.dir.join("src/app"));
        command
    }

    /// Real output of each step (or, for a script, the steps it printed).
    fn run(&mut self, transcript: &Transcript) -> Vec<Step> {
        if let Some(script) = &transcript.script {
            let command = self.bash(&format!("exec bash \"$REPO\"/{script} {BIN}"));
            let out = run_bounded_for(command, None, TRANSCRIPT_LIMIT);
            assert!(
                out.status.success(),
                "{script} failed:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            return steps_of(&self.as_in_docs(&String::from_utf8_lossy(&out.stdout)));
        }
        // Output goes to a file: a process a command leaves running in the background keeps no pipe open.
        let log = self.env.work.path().join("transcript.out");
        let mut script = format!("exec >'{}' 2>&1\n", log.display());
        script.push_str(&transcript.setup);
        script.push('\n');
        for step in &transcript.steps {
            let _ = write!(script, "printf '\\036\\n'\n{{ {}\n}}\n", step.command);
        }
        run_bounded_for(self.bash(&script), None, TRANSCRIPT_LIMIT);
        let text = self.as_in_docs(&std::fs::read_to_string(&log).unwrap_or_default());
        let outputs: Vec<&str> = text.split("\u{1e}\n").skip(1).collect();
        assert_eq!(
            outputs.len(),
            transcript.steps.len(),
            "transcript {} did not run to its end:\n{text}",
            transcript.name
        );
        transcript
            .steps
            .iter()
            .zip(outputs)
            .map(|(step, output)| {
                let mut output = output.to_owned();
                if !output.is_empty() && !output.ends_with('\n') {
                    output.push('\n');
                }
                Step {
                    command: step.command.clone(),
                    output,
                }
            })
            .collect()
    }

    /// This world's paths under the names the docs use.
    fn as_in_docs(&self, text: &str) -> String {
        let home = self.home.dir.display().to_string();
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        text.replace(
            &format!("\"host\": \"{}\"", host.trim()),
            "\"host\": \"myhost\"",
        )
        .replace(BIN, "/home/me/.cargo/bin/session-reaper")
        .replace(
            &self.env.work.path().join("tmp").display().to_string(),
            "/tmp",
        )
        .replace(&home, "/home/me")
    }
}

impl Drop for World {
    fn drop(&mut self) {
        for proc in with_env_entry(&self.marker) {
            proc.kill();
        }
    }
}

/// What may differ between two runs, masked: 16-hex-digit hashes, hexadecimal numbers, digits (pids, times),
/// durations and sizes, and runs of spaces (column padding).
fn mask(text: &str) -> String {
    unrandom(text)
        .lines()
        .map(|line| {
            let mut out = String::new();
            for word in line.split_inclusive(['-', '/', ' ', '(', ')', ',', '"', '`']) {
                let core = word.trim_end_matches(['-', '/', ' ', '(', ')', ',', '"', '`']);
                let tail = &word[core.len()..];
                if core.len() >= 16 && core.chars().all(|c| c.is_ascii_hexdigit()) {
                    out.push_str("HASH");
                } else if core.starts_with("0x") && core.len() > 2 {
                    out.push_str("0xHEX");
                } else {
                    out.push_str(core);
                }
                out.push_str(tail);
            }
            let mut masked = String::new();
            for c in out.chars() {
                if c.is_ascii_digit() || (c == '.' && masked.ends_with('N')) {
                    if !masked.ends_with('N') {
                        masked.push('N');
                    }
                } else if c != ' ' || !masked.ends_with(' ') {
                    masked.push(c);
                }
            }
            let mut words: Vec<&str> = Vec::new();
            for word in masked.split(' ') {
                let kind = match word.trim_start_matches('N') {
                    _ if !word.starts_with('N') => word,
                    "ms" | "s" | "m" | "h" | "d" | "days" | "µs" | "ns" => "DUR",
                    _ => word,
                };
                let kind = match kind {
                    "KiB" | "MiB" | "GiB" | "KiB)" | "MiB)" | "GiB)"
                        if words.last() == Some(&"N") =>
                    {
                        words.pop();
                        "SIZE"
                    }
                    _ => kind,
                };
                if !(kind == "DUR" && words.last() == Some(&"DUR")) {
                    words.push(kind);
                }
            }
            words.join(" ").trim_end().to_owned()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// UUIDs (boot ids, session ids) and `mkdtemp` suffixes of the Codex plugin's session dirs, masked.
fn unrandom(text: &str) -> String {
    const UUID: [usize; 5] = [8, 4, 4, 4, 12];
    let is_uuid = |candidate: &str| {
        let parts: Vec<&str> = candidate.split('-').collect();
        parts.len() == 5
            && parts
                .iter()
                .zip(UUID)
                .all(|(part, len)| part.len() == len && part.chars().all(|c| c.is_ascii_hexdigit()))
    };
    let mut out = String::new();
    let mut rest = text;
    while !rest.is_empty() {
        if rest.len() >= 36 && rest.is_char_boundary(36) && is_uuid(&rest[..36]) {
            out.push_str("UUID");
            rest = &rest[36..];
        } else if let Some(after) = rest.strip_prefix("cxc-")
            && after.len() >= 6
            && after.is_char_boundary(6)
            && after[..6].chars().all(|c| c.is_ascii_alphanumeric())
        {
            out.push_str("cxc-RANDOM");
            rest = &after[6..];
        } else {
            let next = rest.chars().next().unwrap();
            out.push(next);
            rest = &rest[next.len_utf8()..];
        }
    }
    out
}

fn masked_lines(text: &str, any_order: bool) -> Vec<String> {
    let mut lines: Vec<String> = mask(text).lines().map(str::to_owned).collect();
    if any_order {
        lines.sort();
    }
    lines
}

fn render(steps: &[Step]) -> String {
    steps.iter().fold(String::new(), |mut text, step| {
        let _ = write!(text, "$ {}\n{}", step.command, step.output);
        text
    })
}

/// The failures of one transcript, and (bless) its body as the binary prints it now.
fn check(transcript: &Transcript) -> (Vec<String>, Option<String>) {
    let at = format!(
        "{} transcript {}",
        relative(&transcript.file),
        transcript.name
    );
    if let Some(fixture) = &transcript.fixture {
        assert_eq!(fixture, "status-tree", "{at}: unknown fixture");
        let tree = crate::cli::fixture_world();
        let rendered = session_reaper::testing::render(&tree, false);
        let actual = vec![Step {
            command: transcript.steps[0].command.clone(),
            output: rendered,
        }];
        return if actual == transcript.steps {
            (Vec::new(), None)
        } else {
            (
                vec![format!("{at}: not the fixture's picture")],
                Some(render(&actual)),
            )
        };
    }
    let mut world = World::new();
    let actual = world.run(transcript);
    let mut failures = Vec::new();
    let mut blessed = Vec::new();
    let commands = |steps: &[Step]| steps.iter().map(|s| s.command.clone()).collect::<Vec<_>>();
    if transcript.script.is_some()
        && mask(&commands(&actual).join("\n")) != mask(&commands(&transcript.steps).join("\n"))
    {
        failures.push(format!(
            "{at}: the script runs other commands:\n{}\nthan the transcript shows:\n{}",
            commands(&actual).join("\n"),
            commands(&transcript.steps).join("\n")
        ));
        return (failures, Some(render(&actual)));
    }
    for (shown, real) in transcript.steps.iter().zip(&actual) {
        if masked_lines(&shown.output, transcript.any_order)
            == masked_lines(&real.output, transcript.any_order)
        {
            blessed.push(shown.clone());
        } else {
            failures.push(format!(
                "{at}: `{}` printed\n{}\n(masked: {:?})\nbut the transcript shows\n{}\n(masked: {:?})",
                shown.command,
                real.output,
                masked_lines(&real.output, transcript.any_order),
                shown.output,
                masked_lines(&shown.output, transcript.any_order),
            ));
            blessed.push(real.clone());
        }
    }
    let body = (!failures.is_empty()).then(|| render(&blessed));
    (failures, body)
}

#[test]
fn every_transcript_in_the_docs_is_real_output_of_this_binary() {
    let bless = std::env::var_os(BLESS).is_some_and(|value| value == "1");
    let mut failures = Vec::new();
    let mut checked = 0;
    for file in markdown_files() {
        let text = std::fs::read_to_string(&file).unwrap();
        let transcripts = match transcripts_of(&file, &text) {
            Ok(transcripts) => transcripts,
            Err(error) => {
                failures.push(error);
                continue;
            }
        };
        let mut rewritten = text.clone();
        // From the last block up, so that the earlier ranges stay valid.
        for transcript in transcripts.iter().rev() {
            checked += 1;
            let (mut found, body) = check(transcript);
            if let (true, Some(body)) = (bless, body) {
                rewritten.replace_range(transcript.body.clone(), &body);
                found.clear();
            }
            failures.extend(found);
        }
        if rewritten != text {
            std::fs::write(&file, rewritten).unwrap();
            eprintln!("blessed {}", relative(&file));
        }
    }
    assert!(
        failures.is_empty(),
        "{} transcript(s) differ from real output (after a change on purpose: {BLESS}=1 cargo test --test it docs:: \
         rewrites them; read the diff):\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
    assert!(checked >= 10, "only {checked} transcripts found");
}

#[test]
fn masking_keeps_what_a_reader_reads_and_hides_what_changes_between_runs() {
    assert_eq!(
        mask("agent 4825 live  started 119ms ago  rss 43.7 MiB"),
        mask("agent 77 live started 1h 2m ago rss 912 KiB")
    );
    assert_eq!(
        mask("local (magic 0xef53)  app-2e56aa36f538b33b/default"),
        mask("local (magic 0x794c7630)  app-0123456789abcdef/default")
    );
    assert_eq!(
        mask(
            "boot ca1e8e71-53fd-44de-906c-889cbe0f3ab1 /tmp/cxc-HByRNk/broker.log 4ba81752d305cdffe172ff94e99e2a21"
        ),
        mask(
            "boot 0b5f6b3e-41c2-4d57-9a51-3c6f0e9d2a11 /tmp/cxc-IuvL2P/broker.log 0123456789abcdef0123456789abcdef"
        )
    );
    assert_ne!(mask("stopped (SIGTERM)"), mask("stopped (SIGKILL)"));
    assert_ne!(mask("leftover 1 sleep 900"), mask("mcp server 1 sleep 900"));
}

#[test]
fn a_transcript_is_read_with_its_marker_and_an_unmarked_one_is_refused() {
    let text = "# t\n\n<!-- check: one any-order\nmkdir x\n-->\n```console\n$ a\nout\n$ b\n```\n";
    let found = transcripts_of(Path::new("t.md"), text).unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].name, "one");
    assert!(found[0].any_order);
    assert_eq!(found[0].setup, "mkdir x\n");
    assert_eq!(&text[found[0].body.clone()], "$ a\nout\n$ b\n");
    assert_eq!(found[0].steps[0].output, "out\n");
    let unmarked = "# t\n\n```console\n$ a\n```\n";
    assert!(transcripts_of(Path::new("t.md"), unmarked).is_err());
}

// ---- Markdown ----

/// GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens.
fn slug(heading: &str) -> String {
    heading
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// The anchors of a Markdown text's headings (a repeated one gets `-1`, `-2`, … as on GitHub).
fn anchors(text: &str) -> HashSet<String> {
    let mut anchors = HashSet::new();
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut heading: Option<String> = None;
    for event in Parser::new_ext(text, Options::ENABLE_TABLES) {
        match event {
            Event::Start(Tag::Heading { .. }) => heading = Some(String::new()),
            Event::Text(part) | Event::Code(part) => {
                if let Some(heading) = &mut heading {
                    heading.push_str(&part);
                }
            }
            Event::End(TagEnd::Heading(_)) => {
                let base = slug(&heading.take().unwrap_or_default());
                let count = seen.entry(base.clone()).or_insert(0);
                anchors.insert(if *count == 0 {
                    base.clone()
                } else {
                    format!("{base}-{count}")
                });
                *count += 1;
            }
            _ => {}
        }
    }
    anchors
}

/// What is wrong with one Markdown file: unclosed fences, fence-like or heading lines inside a code block (a
/// fence that did not close where it was meant to), links to files or anchors that do not exist.
fn markdown_problems(file: &Path, text: &str) -> Vec<String> {
    let mut problems = Vec::new();
    let at = |offset: usize| format!("{}:{}", relative(file), line_of(text, offset));
    let mut headings = 0;
    for (event, range) in Parser::new_ext(text, Options::ENABLE_TABLES).into_offset_iter() {
        match event {
            Event::Start(Tag::CodeBlock(CodeBlockKind::Fenced(_))) => {
                let block = &text[range.clone()];
                let lines: Vec<&str> = block.trim_end_matches('\n').lines().collect();
                let fence: String = lines[0]
                    .trim_start()
                    .chars()
                    .take_while(|c| matches!(c, '`' | '~'))
                    .collect();
                let last = lines.last().unwrap().trim();
                let closed = lines.len() > 1
                    && last.starts_with(&fence)
                    && last.chars().all(|c| c == fence.chars().next().unwrap());
                if !closed {
                    problems.push(format!("{}: a fence that never closes", at(range.start)));
                }
                let inner = lines.len().saturating_sub(usize::from(closed));
                let mut offset = range.start + lines[0].len() + 1;
                for line in lines.iter().take(inner).skip(1) {
                    let trimmed = line.trim_start();
                    if trimmed.starts_with("```") || trimmed.starts_with("~~~") {
                        problems.push(format!(
                            "{}: a fence-like line inside a code block (a fence that did not close?): {line:?}",
                            at(offset)
                        ));
                    }
                    if trimmed.starts_with("## ") || trimmed.starts_with("### ") {
                        problems.push(format!(
                            "{}: a heading swallowed by a code block: {line:?}",
                            at(offset)
                        ));
                    }
                    offset += line.len() + 1;
                }
            }
            Event::Start(Tag::Heading { level, .. }) => {
                headings += 1;
                if headings == 1 && level != HeadingLevel::H1 {
                    problems.push(format!(
                        "{}: the first heading is not a title (#)",
                        at(range.start)
                    ));
                }
            }
            Event::Start(Tag::Link { dest_url, .. } | Tag::Image { dest_url, .. }) => {
                if let Some(problem) = link_problem(file, text, &dest_url) {
                    problems.push(format!("{}: {problem}", at(range.start)));
                }
            }
            _ => {}
        }
    }
    if text.matches("<!--").count() != text.matches("-->").count() {
        problems.push(format!(
            "{}: an HTML comment that never closes",
            relative(file)
        ));
    }
    problems
}

/// Why a link leads nowhere, if it does: a relative path that names no file, or an anchor no heading has.
fn link_problem(file: &Path, text: &str, dest: &str) -> Option<String> {
    if dest.contains("://") || dest.starts_with("mailto:") {
        return None;
    }
    let (path, anchor) = dest
        .split_once('#')
        .map_or((dest, None), |(p, a)| (p, Some(a)));
    let target = if path.is_empty() {
        file.to_path_buf()
    } else {
        let joined = file.parent().unwrap().join(path);
        let normal: PathBuf = joined.components().fold(PathBuf::new(), |mut out, part| {
            match part {
                std::path::Component::ParentDir => {
                    out.pop();
                }
                std::path::Component::CurDir => {}
                other => out.push(other),
            }
            out
        });
        if !normal.exists() {
            return Some(format!("link to {dest}: no such file"));
        }
        normal
    };
    let anchor = anchor?;
    let target_text = if target == file {
        text.to_owned()
    } else if target.extension() == Some("md".as_ref()) {
        std::fs::read_to_string(&target).ok()?
    } else {
        return None;
    };
    (!anchors(&target_text).contains(anchor))
        .then(|| format!("link to {dest}: no heading has that anchor"))
}

#[test]
fn every_markdown_file_parses_cleanly() {
    let files = markdown_files();
    assert!(files.len() >= 10, "Markdown files not found: {files:?}");
    let problems: Vec<String> = files
        .iter()
        .flat_map(|file| markdown_problems(file, &std::fs::read_to_string(file).unwrap()))
        .collect();
    assert!(
        problems.is_empty(),
        "Markdown problems:\n{}",
        problems.join("\n")
    );
}

#[test]
fn the_markdown_checks_catch_a_fence_that_swallows_a_section() {
    let broken = "# t\n\n```console\n$ a\n``` `status`\nwrites nothing.\n\n### `log`\n\n```console\n$ b\n```\n";
    let problems = markdown_problems(&repo().join("t.md"), broken);
    assert!(
        problems.iter().any(|p| p.contains("fence-like line"))
            && problems.iter().any(|p| p.contains("heading swallowed")),
        "{problems:?}"
    );
    let unclosed = "# t\n\n```sh\nrm -rf x\n";
    assert!(
        markdown_problems(&repo().join("t.md"), unclosed)
            .iter()
            .any(|p| p.contains("never closes"))
    );
    let links = "# t\n\n## A b\n\n[x](#a-b) [y](#nowhere) [z](docs/nothing.md) [w](Cargo.toml) [v](docs/agents.md)\n";
    let problems = markdown_problems(&repo().join("t.md"), links);
    assert_eq!(problems.len(), 2, "{problems:?}");
}

#[test]
fn the_readme_is_short_and_starts_the_demo() {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let lines = readme.lines().count();
    assert!(
        lines <= 300,
        "README.md has {lines} lines (at most 300: the rest goes to docs/)"
    );
    assert!(readme.contains("cargo run --release -- demo"));
    assert!(
        readme.contains("docs/picture.svg"),
        "the README shows no picture"
    );
}

/// The picture in the README is drawn from the headline transcript: the same commands.
#[test]
fn the_picture_shows_the_headline_transcript() {
    let svg = std::fs::read_to_string(repo().join("docs/picture.svg")).unwrap();
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let headline = transcripts_of(&repo().join("README.md"), &readme)
        .unwrap()
        .into_iter()
        .find(|t| t.name == "headline")
        .expect("the README's headline transcript");
    for step in &headline.steps {
        let command = step.command.split("    #").next().unwrap().trim();
        let command = command
            .replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;");
        let shown = if command.starts_with("kill") {
            "kill -9".to_owned()
        } else {
            command
        };
        assert!(
            svg.contains(&shown),
            "docs/picture.svg does not show `{shown}`: run scripts/picture.sh"
        );
    }
}
