//! `completions` and `man`: the command line's own reference, generated from the clap definitions. Both leave out
//! the internal commands (`finish`, `sentinel`, and `man` itself): hooks start those, people never type them.

use std::io::Write;
use std::path::Path;

use anyhow::Context;
use clap::CommandFactory;

use crate::cli::Cli;
use crate::error::Outcome;

/// The command line as people use it: its flags and every visible subcommand, none of the hidden ones. (clap can
/// hide a subcommand from help but not remove it, and the generators list hidden ones: the command is rebuilt.)
fn public_command() -> clap::Command {
    let full = Cli::command();
    let mut public = clap::Command::new("session-reaper")
        .version(env!("SESSION_REAPER_VERSION"))
        .propagate_version(true)
        .max_term_width(100)
        .args(full.get_arguments().cloned())
        .subcommands(
            full.get_subcommands()
                .filter(|sub| !sub.is_hide_set())
                .cloned(),
        );
    if let Some(about) = full.get_about() {
        public = public.about(about.clone());
    }
    if let Some(about) = full.get_long_about() {
        public = public.long_about(about.clone());
    }
    public
}

/// `completions SHELL`: the completion script, on stdout.
pub(crate) fn completions(shell: clap_complete::Shell) -> Outcome {
    let mut command = public_command();
    clap_complete::generate(
        shell,
        &mut command,
        "session-reaper",
        &mut std::io::stdout(),
    );
    Outcome::Done
}

/// `man`: session-reaper(1) on stdout, or with `dir` that page and one per command (`session-reaper-status.1`, …).
pub(crate) fn man(dir: Option<&Path>) -> anyhow::Result<Outcome> {
    let command = public_command();
    if let Some(dir) = dir {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        clap_mangen::generate_to(command, dir)
            .with_context(|| format!("writing man pages into {}", dir.display()))?;
        return Ok(Outcome::Done);
    }
    let mut page = Vec::new();
    clap_mangen::Man::new(command).render(&mut page)?;
    std::io::stdout().write_all(&page)?;
    Ok(Outcome::Done)
}
