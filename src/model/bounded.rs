//! Bounds on free text that arrives from outside (hook payloads) before it is written into a record or an event:
//! one cap for every field, a cut on a character boundary that says how long the text was.

/// The most bytes of one free-text field a record or an event keeps (the longest path Linux accepts). Real payload
/// fields are well under it; a longer one is cut (see `capped`).
pub(crate) const FIELD_LIMIT: usize = 4096;

/// `text` if it fits in `FIELD_LIMIT` bytes; else its longest prefix that ends on a character boundary and leaves
/// room for a marker, followed by the marker `…[cut: N bytes]` (N: the length it had). The result never exceeds
/// `FIELD_LIMIT` bytes.
pub(crate) fn capped(text: String) -> String {
    if text.len() <= FIELD_LIMIT {
        return text;
    }
    let marker = format!("…[cut: {} bytes]", text.len());
    let mut end = FIELD_LIMIT - marker.len();
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let mut cut = text;
    cut.truncate(end);
    cut.push_str(&marker);
    cut
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_text_is_kept_as_is() {
        assert_eq!(capped("/home/me/work".to_owned()), "/home/me/work");
        let exact = "x".repeat(FIELD_LIMIT);
        assert_eq!(capped(exact.clone()), exact);
    }

    #[test]
    fn long_text_is_cut_on_a_char_boundary_with_its_length() {
        // Three-byte characters, so that the cut falls inside one unless it is moved to a boundary.
        let long = "€".repeat(400_000);
        let cut = capped(long.clone());
        assert!(cut.len() <= FIELD_LIMIT, "{}", cut.len());
        assert!(
            cut.ends_with(&format!("…[cut: {} bytes]", long.len())),
            "{cut}"
        );
        assert!(long.starts_with(cut.trim_end_matches(|c| c != '€')));
    }

    proptest::proptest! {
        #[test]
        fn never_longer_than_the_limit(text in "\\PC{0,3000}", repeat in 1usize..4) {
            let text = text.repeat(repeat);
            let cut = capped(text.clone());
            proptest::prop_assert!(cut.len() <= FIELD_LIMIT);
            if text.len() <= FIELD_LIMIT {
                proptest::prop_assert_eq!(cut, text);
            }
        }
    }
}
