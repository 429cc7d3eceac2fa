//! The hook events we act on, by any agent's spelling of them (`SessionStart`, `session_start`, `sessionStart`).

/// The events we act on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum HookEvent {
    SessionStart,
    SessionEnd,
    Other,
}

impl HookEvent {
    pub(crate) fn parse(name: &str) -> Self {
        let folded: String = name
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .collect::<String>()
            .to_lowercase();
        match folded.as_str() {
            "sessionstart" => HookEvent::SessionStart,
            "sessionend" => HookEvent::SessionEnd,
            _ => HookEvent::Other,
        }
    }
}
