//! The error kinds the command line branches on, and the exit-code table.
//!
//! | code | meaning |
//! |------|---------|
//! | 0 | done |
//! | 1 | done, but something could not be stopped or was refused (reported) |
//! | 2 | bad input or an unusable state root; nothing was changed |

use std::fmt;

/// Input the user (or the agent) got wrong: a flag, a payload, a settings file, an unusable state root.
/// Carried inside `anyhow::Error` so that `main` can map it to exit code 2.
#[derive(Debug)]
pub(crate) struct BadInput(pub String);

impl fmt::Display for BadInput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BadInput {}

/// Builds an `anyhow::Error` that exits 2.
pub(crate) fn bad_input(message: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(BadInput(message.into()))
}

/// How a command that did not fail ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Everything asked for was done.
    Done,
    /// Done, but something could not be stopped or was refused; it was reported.
    Partial,
}

impl Outcome {
    pub(crate) fn exit_code(self) -> u8 {
        match self {
            Outcome::Done => 0,
            Outcome::Partial => 1,
        }
    }

    /// `Partial` if `ok` is false.
    pub(crate) fn from_ok(ok: bool) -> Self {
        if ok { Outcome::Done } else { Outcome::Partial }
    }
}

/// Exit code of an error: 2 where any cause is `BadInput`, else 1.
pub(crate) fn exit_code_of(err: &anyhow::Error) -> u8 {
    if err.chain().any(<dyn std::error::Error>::is::<BadInput>) {
        2
    } else {
        1
    }
}
