//! Adapters: other tools' brokers, which those tools record in their own files. An adapter reads those records,
//! decides ownership from what the tool itself knows, hands stops to our cascade and cleans the tool's files only
//! after a confirmed exit. Adapters claim their processes before leftover discovery does: a broker shared by several
//! sessions is never one session's leftover. The one adapter so far is the Codex plugin for Claude Code.

pub(crate) mod codex_plugin;

/// One thing an adapter did (or, in a dry run, would do): a sweep's action, so that a sweep reports it as its own.
pub(crate) type AdapterAction = crate::model::action::SweepAction;

/// What one pass of an adapter decided: its actions, the stop tickets it filed (for the caller's stopper) and the
/// problems it met.
#[derive(Clone, Debug, Default)]
pub(crate) struct AdapterReport {
    pub actions: Vec<AdapterAction>,
    pub tickets: Vec<crate::model::record::StopTicket>,
    pub problems: Vec<String>,
}

/// Prints adapter actions for people, one line each.
pub(crate) fn print_actions(actions: &[AdapterAction]) {
    for action in actions {
        let pid = action
            .pid
            .map_or(String::new(), |pid| format!("pid {pid:>7}  "));
        println!(
            "  {pid}{:<7} {:<13} {}  {}",
            action.action,
            action.reason.as_deref().unwrap_or("-"),
            action.result,
            action.target
        );
    }
}

/// The processes the adapters claim (their brokers and those brokers' process-group members): leftover discovery
/// leaves them to the adapters, whatever session variable they inherited.
pub(crate) fn claimed(
    discovery: &codex_plugin::Discovery,
    deadline: crate::model::deadline::Deadline,
) -> Vec<crate::model::record::Identity> {
    codex_plugin::claimed(discovery, deadline)
}
