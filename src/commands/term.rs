//! What a terminal gets beyond plain text: colour for state words and progress lines on stderr for waits — only on
//! a TTY, never in hook mode; `NO_COLOR` and `--color never|auto|always` honoured. Set once, at start.

use std::io::{IsTerminal, Write};
use std::sync::OnceLock;

use crate::cli::ColorWhen;

/// What this run may print beyond plain text.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Terminal {
    /// State words on stdout are coloured.
    pub color: bool,
    /// Waits over about a second say what they wait for, on stderr.
    pub progress: bool,
}

/// The facts the choice is made from (independent yes/no facts of this run).
#[allow(clippy::struct_excessive_bools)]
#[derive(Clone, Copy, Debug)]
pub(crate) struct Facts {
    pub when: ColorWhen,
    pub no_color: bool,
    pub stdout_tty: bool,
    pub stderr_tty: bool,
    pub hook_mode: bool,
}

impl Terminal {
    /// Colour: `always`, or `auto` on a TTY without `NO_COLOR`; progress: stderr a TTY. Neither in hook mode.
    pub(crate) fn decide(facts: Facts) -> Self {
        if facts.hook_mode {
            return Terminal::default();
        }
        Terminal {
            color: match facts.when {
                ColorWhen::Always => true,
                ColorWhen::Never => false,
                ColorWhen::Auto => facts.stdout_tty && !facts.no_color,
            },
            progress: facts.stderr_tty,
        }
    }
}

static TERMINAL: OnceLock<Terminal> = OnceLock::new();

/// Decides, once, from the flag, the environment and the standard streams.
pub(crate) fn init(when: ColorWhen, hook_mode: bool) -> Terminal {
    let terminal = Terminal::decide(Facts {
        when,
        no_color: std::env::var_os("NO_COLOR").is_some_and(|value| !value.is_empty()),
        stdout_tty: std::io::stdout().is_terminal(),
        stderr_tty: std::io::stderr().is_terminal(),
        hook_mode,
    });
    *TERMINAL.get_or_init(|| terminal)
}

/// This run's choice (plain text when `init` never ran, as in a library caller or a test).
pub(crate) fn get() -> Terminal {
    TERMINAL.get().copied().unwrap_or_default()
}

/// The colour a state word is shown in: green for what is fine, yellow for what a sweep will clean, red for what
/// needs a person.
fn colour_of(word: &str) -> Option<&'static str> {
    match word {
        "live" | "yes" | "running" | "kept" | "stopped" | "started" | "reused" | "pruned" => {
            Some("32")
        }
        "STALE" | "gone" | "ended" | "stopping" | "leftover" | "would" | "reported"
        | "already_gone" => Some("33"),
        "STUCK" | "UNREADABLE" | "dead" | "DEAD" | "failed" | "refused" | "stuck" | "problem:" => {
            Some("31;1")
        }
        _ => None,
    }
}

/// `text` with its first word painted as `paint` would (this run's colour choice): the result at the head of a
/// line for people (`stopped (SIGTERM)`, `would prune`, `failed: …`).
pub(crate) fn lead(text: &str) -> String {
    let (word, rest) = text.split_at(text.find(' ').unwrap_or(text.len()));
    format!("{}{rest}", paint(word, 0, get().color))
}

/// `word`, coloured when `color` says so and the word has a colour; padded to `width` outside the escapes.
pub(crate) fn paint(word: &str, width: usize, color: bool) -> String {
    let padded = format!("{word:<width$}");
    match colour_of(word) {
        Some(code) if color => {
            let pad = &padded[word.len()..];
            format!("\u{1b}[{code}m{word}\u{1b}[0m{pad}")
        }
        _ => padded,
    }
}

/// One progress line on stderr, when this run may print them.
pub(crate) fn progress(line: &str) {
    if get().progress {
        let _ = writeln!(std::io::stderr(), "session-reaper: {line}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(when: ColorWhen) -> Facts {
        Facts {
            when,
            no_color: false,
            stdout_tty: true,
            stderr_tty: true,
            hook_mode: false,
        }
    }

    #[test]
    fn colour_follows_the_flag_the_tty_and_no_color() {
        assert!(Terminal::decide(facts(ColorWhen::Auto)).color);
        assert!(!Terminal::decide(facts(ColorWhen::Never)).color);
        let no_color = Facts {
            no_color: true,
            ..facts(ColorWhen::Auto)
        };
        assert!(!Terminal::decide(no_color).color);
        let piped = Facts {
            stdout_tty: false,
            stderr_tty: false,
            ..facts(ColorWhen::Auto)
        };
        assert_eq!(Terminal::decide(piped), Terminal::default());
        assert!(
            Terminal::decide(Facts {
                stdout_tty: false,
                ..facts(ColorWhen::Always)
            })
            .color
        );
    }

    #[test]
    fn hook_mode_gets_plain_text() {
        let hook = Facts {
            hook_mode: true,
            ..facts(ColorWhen::Always)
        };
        assert_eq!(Terminal::decide(hook), Terminal::default());
    }

    #[test]
    fn painting_pads_outside_the_escapes() {
        assert_eq!(paint("STALE", 7, false), "STALE  ");
        assert_eq!(paint("STALE", 7, true), "\u{1b}[33mSTALE\u{1b}[0m  ");
        assert_eq!(paint("other", 6, true), "other ");
    }
}
