//! Session ids as people type them: the full id, or a prefix that only one known session has (like git's and
//! docker's short ids). Ambiguous or unknown ids are refused with the candidates, before anything is written.

use std::fmt::Write as _;

use crate::error::bad_input;
use crate::model::name::SessionId;

/// How many candidates a refusal lists.
const SHOWN: usize = 8;

/// The shortest prefix taken for a whole id, as git takes its abbreviated hashes.
pub(crate) const MIN_PREFIX: usize = 4;

/// The one known session `given` names: itself when known, else the only known id it prefixes. `Ok(None)` when no
/// known id matches; an ambiguous prefix is bad input naming the candidates.
pub(crate) fn resolve<'k>(
    given: &SessionId,
    known: impl IntoIterator<Item = &'k str>,
) -> anyhow::Result<Option<SessionId>> {
    let known: Vec<&str> = known.into_iter().collect();
    if known.contains(&given.as_str()) {
        return Ok(Some(given.clone()));
    }
    let mut matches: Vec<&str> = known
        .iter()
        .copied()
        .filter(|id| id.starts_with(given.as_str()))
        .collect();
    matches.sort_unstable();
    matches.dedup();
    match matches.as_slice() {
        [] => Ok(None),
        some if given.as_str().chars().count() < MIN_PREFIX => Err(bad_input(format!(
            "session {given}: a prefix needs at least {MIN_PREFIX} characters; it prefixes {}",
            listed(some)
        ))),
        [only] => Ok(Some(SessionId::parse(only)?)),
        many => Err(bad_input(format!(
            "session {given} is ambiguous: it prefixes {}",
            listed(many)
        ))),
    }
}

/// The refusal of an id no known session has, listing the known ones.
pub(crate) fn unknown<'k>(
    given: &SessionId,
    known: impl IntoIterator<Item = &'k str>,
    hint: &str,
) -> anyhow::Error {
    let mut known: Vec<&str> = known.into_iter().collect();
    known.sort_unstable();
    known.dedup();
    let candidates = if known.is_empty() {
        "no session is recorded".to_owned()
    } else {
        format!("known: {}", listed(&known))
    };
    bad_input(format!("no session {given} ({candidates}){hint}"))
}

fn listed(ids: &[&str]) -> String {
    let mut text = ids
        .iter()
        .take(SHOWN)
        .copied()
        .collect::<Vec<_>>()
        .join(", ");
    if ids.len() > SHOWN {
        let _ = write!(text, " and {} more", ids.len() - SHOWN);
    }
    text
}

/// Says on stderr which session a prefix resolved to (nothing when the id was given whole).
pub(crate) fn say_resolved(given: &SessionId, resolved: &SessionId) {
    if given != resolved {
        eprintln!("session-reaper: {given} is session {resolved}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(text: &str) -> SessionId {
        SessionId::parse(text).unwrap()
    }

    const KNOWN: [&str; 3] = [
        "bebbb456-0001-4000-8000-000000000001",
        "bebbb456-0002-4000-8000-000000000002",
        "0b5f6b3e-7777-4000-8000-000000000003",
    ];

    #[test]
    fn a_unique_prefix_names_its_session() {
        let got = resolve(&id("0b5f"), KNOWN).unwrap();
        assert_eq!(got, Some(id(KNOWN[2])));
        assert_eq!(resolve(&id(KNOWN[0]), KNOWN).unwrap(), Some(id(KNOWN[0])));
    }

    #[test]
    fn an_ambiguous_prefix_is_refused_with_its_candidates() {
        let err = resolve(&id("bebbb456"), KNOWN).unwrap_err();
        assert_eq!(crate::error::exit_code_of(&err), 2);
        assert!(err.to_string().contains(KNOWN[0]) && err.to_string().contains(KNOWN[1]));
    }

    #[test]
    fn an_unknown_id_matches_nothing() {
        assert_eq!(resolve(&id("ffff"), KNOWN).unwrap(), None);
        let err = unknown(&id("ffff"), KNOWN, "");
        assert!(err.to_string().contains(KNOWN[2]), "{err}");
    }

    #[test]
    fn a_prefix_shorter_than_four_characters_is_refused() {
        for short in ["0", "0b", "0b5"] {
            let err = resolve(&id(short), KNOWN).unwrap_err();
            assert_eq!(crate::error::exit_code_of(&err), 2);
            assert!(err.to_string().contains("at least 4 characters"), "{err}");
        }
        assert_eq!(resolve(&id("zz"), KNOWN).unwrap(), None);
    }

    #[test]
    fn a_whole_id_that_prefixes_another_is_itself() {
        let known = ["abc", "abcd"];
        assert_eq!(resolve(&id("abc"), known).unwrap(), Some(id("abc")));
    }
}
