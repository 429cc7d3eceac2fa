//! What a sweep or an adapter did (or, in a dry run, would do) to one target: the typed line of its report.

use serde::Serialize;

/// One thing a sweep did (or, with `--dry-run`, would do).
#[derive(Clone, Debug, Serialize)]
pub(crate) struct SweepAction {
    pub action: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub target: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<i32>,
    pub result: String,
}
