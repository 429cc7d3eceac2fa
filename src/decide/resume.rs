//! Pure decisions over a process snapshot: which processes resume a session, and which live writers of one
//! session are duplicates. No system calls here; the callers act on the result.

use std::collections::HashSet;

use crate::model::reason::Reason;
use crate::model::record::{DEFAULT_GRACE_MS, Identity, SessionRecord, StopTicket};

use crate::model::marker::AGENT_WORKER_FLAGS;

/// True when `argv` is an agent process (its program is a known agent executable, or node/bun running one) that
/// resumes `session` (`--resume S`, `--resume=S`, `-r S`, `-rS`), or resumes the session's recorded `title` through
/// the long forms (a title may be a common word, so the terse `-r` forms are not trusted with it). Tokens must match
/// exactly: `S` does not match `S1`. `grep -r S`, `cp -r S`, `vim -rS`, a `tmux … claude --resume S` client are
/// not agents.
pub fn resumes(argv: &[String], session: &str, title: Option<&str>) -> bool {
    if crate::agents::agent_of_process(argv).is_none()
        || argv
            .iter()
            .any(|arg| AGENT_WORKER_FLAGS.contains(&arg.as_str()))
    {
        return false;
    }
    let title = title.filter(|title| !title.is_empty());
    let long_match = |value: &str| value == session || Some(value) == title;
    argv.iter().enumerate().skip(1).any(|(index, arg)| {
        let next = argv.get(index + 1).map(String::as_str);
        match arg.as_str() {
            "--resume" => next.is_some_and(long_match),
            "-r" => next == Some(session),
            other => {
                other.strip_prefix("--resume=").is_some_and(long_match)
                    || other
                        .strip_prefix("-r")
                        .is_some_and(|rest| !rest.is_empty() && rest == session)
            }
        }
    })
}

/// The pids in a process snapshot that resume `session` and may be stopped: never a protected pid (this process,
/// its ancestors) nor the agent process of a live session (after `/clear` the agent keeps its old argv).
pub(crate) fn resume_orphans<S: std::hash::BuildHasher>(
    snapshot: &[(i32, Vec<String>)],
    session: &str,
    title: Option<&str>,
    protected: &HashSet<i32, S>,
) -> Vec<i32> {
    snapshot
        .iter()
        .filter(|(pid, argv)| *pid > 1 && !protected.contains(pid) && resumes(argv, session, title))
        .map(|(pid, _)| *pid)
        .collect()
}

/// Groups of live processes that resume the same session: two writers interleave one transcript.
pub(crate) fn duplicate_writers<'a>(
    snapshot: &[(i32, Vec<String>)],
    sessions: impl IntoIterator<Item = &'a SessionRecord>,
) -> Vec<(String, Vec<i32>)> {
    sessions
        .into_iter()
        .filter_map(|record| {
            let pids: Vec<i32> = snapshot
                .iter()
                .filter(|(_, argv)| resumes(argv, &record.session_id, None))
                .map(|(pid, _)| *pid)
                .collect();
            (pids.len() >= 2).then(|| (record.session_id.clone(), pids))
        })
        .collect()
}

/// The stop ticket of a process that resumes the ended `session` (reason `resume_orphan`); `stamp` is when and on
/// which host it is filed.
pub(crate) fn orphan_ticket(identity: Identity, session: &str, stamp: (&str, &str)) -> StopTicket {
    writer_ticket(
        identity,
        session,
        Reason::ResumeOrphan,
        "resume-orphan",
        stamp,
    )
}

/// The stop ticket of a duplicate `--resume` writer of the live `session` (reason `manual`: a person asked).
pub(crate) fn duplicate_ticket(
    identity: Identity,
    session: &str,
    stamp: (&str, &str),
) -> StopTicket {
    writer_ticket(identity, session, Reason::Manual, "duplicate-writer", stamp)
}

fn writer_ticket(
    identity: Identity,
    session: &str,
    reason: Reason,
    origin: &str,
    stamp: (&str, &str),
) -> StopTicket {
    let mut ticket = StopTicket::new(
        identity,
        None,
        reason.as_str(),
        DEFAULT_GRACE_MS,
        origin.to_owned(),
        stamp,
    );
    ticket.session = Some(session.to_owned());
    ticket
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(text: &str) -> Vec<String> {
        text.split(' ').map(str::to_owned).collect()
    }

    #[test]
    fn resume_forms() {
        let s = "0b5f6b3e-1111-4222-8333-944445555666";
        for form in [
            format!("claude --resume {s}"),
            format!("claude --resume={s}"),
            format!("claude -r {s}"),
            format!("claude -r{s}"),
            format!(
                "node /usr/lib/node_modules/@anthropic-ai/claude-code/cli.js --model x --resume {s} -p hi"
            ),
        ] {
            assert!(resumes(&argv(&form), s, None), "{form}");
        }
    }

    #[test]
    fn exact_tokens_only() {
        assert!(!resumes(&argv("claude --resume s1"), "s", None));
        assert!(!resumes(&argv("claude --resume s"), "s1", None));
        assert!(!resumes(&argv("claude --resume=s10"), "s1", None));
        assert!(!resumes(&argv("claude -rs10"), "s1", None));
        assert!(!resumes(&argv("claude --resume"), "s1", None));
        assert!(
            !resumes(&argv("s1 --other"), "s1", None),
            "argv[0] is never an argument"
        );
    }

    /// Defect: `grep -r <id>`, `grep -- --resume <id>`, `cp -r <id>`, `rm -r <id>`, `vim -r<id>` and a tmux client
    /// running `claude --resume <id>` were all stopped as resume orphans.
    #[test]
    fn look_alikes_are_not_resume_orphans() {
        let s = "0b5f6b3e-1111-4222-8333-944445555666";
        for form in [
            format!("grep -r {s} /root/.claude"),
            format!("grep -- --resume {s} log.txt"),
            format!("cp -r {s} /backup/"),
            format!("rm -r {s}"),
            format!("vim -r{s}"),
            format!("tmux new-session -d claude --resume {s}"),
            format!("node server.js --resume {s}"),
        ] {
            assert!(!resumes(&argv(&form), s, None), "{form}");
        }
        assert!(resumes(&argv(&format!("codex -r {s}")), s, None));
        assert!(resumes(
            &argv(&format!("node /usr/bin/qwen -r{s}")),
            s,
            None
        ));
    }

    #[test]
    fn workers_are_never_orphans() {
        assert!(!resumes(
            &argv("claude --bg-pty-host --resume s1"),
            "s1",
            None
        ));
        assert!(!resumes(&argv("claude --resume s1 --bg-spare"), "s1", None));
    }

    #[test]
    fn titles_match_only_the_long_forms() {
        assert!(resumes(
            &argv("claude --resume auth-refactor"),
            "s1",
            Some("auth-refactor")
        ));
        assert!(resumes(
            &argv("claude --resume=auth-refactor"),
            "s1",
            Some("auth-refactor")
        ));
        assert!(!resumes(
            &argv("grep -r auth-refactor"),
            "s1",
            Some("auth-refactor")
        ));
        assert!(!resumes(&argv("claude --resume x"), "s1", Some("")));
    }

    #[test]
    fn orphans_exclude_protected_and_init() {
        let snapshot = vec![
            (1, argv("init --resume s1")),
            (50, argv("claude --resume s1")),
            (60, argv("/usr/local/bin/claude --resume s1")),
            (65, argv("python3 -c x --resume s1")),
            (70, argv("claude --resume s2")),
        ];
        let protected: HashSet<i32> = [50].into();
        assert_eq!(resume_orphans(&snapshot, "s1", None, &protected), vec![60]);
    }
}
