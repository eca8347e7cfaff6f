//! Topic filters: one matcher for every terminal and driver.
//!
//! A topic (or a destination path) is segments split by `/`. A filter is a
//! topic whose segments may be `+` (any one segment) or, as the last
//! segment, `#` (any rest, including none: `a/#` matches `a`). As MQTT
//! says, a filter that starts with a wildcard does not match a topic whose
//! first segment starts with `$` (`#` does not match `$SYS/load`).
//! Destination paths keep their leading `/`, so their first segment is
//! empty and the `$` rule never applies to them.

/// Whether `s` has a wildcard segment (`+` or `#`): a filter, not a topic.
/// On every publish: one pass over the bytes, segments looked at only
/// around a `+` or `#`.
pub fn is_filter(s: &str) -> bool {
    let b = s.as_bytes();
    // No early exit: a loop the compiler turns into wide compares.
    let wild = b.iter().fold(false, |w, &c| w | (c == b'+') | (c == b'#'));
    wild && b.iter().enumerate().any(|(i, &c)| {
        (c == b'+' || c == b'#')
            && (i == 0 || b[i - 1] == b'/')
            && b.get(i + 1).is_none_or(|&n| n == b'/')
    })
}

/// Whether `f` is a well-formed filter: not empty, `#` only as the whole
/// last segment, `+` only as a whole segment.
pub fn valid_filter(f: &str) -> bool {
    if f.is_empty() {
        return false;
    }
    let mut segments = f.split('/').peekable();
    while let Some(s) = segments.next() {
        let ok = match s {
            "#" => segments.peek().is_none(),
            "+" => true,
            s => !s.contains('+') && !s.contains('#'),
        };
        if !ok {
            return false;
        }
    }
    true
}

/// Whether `filter` matches `topic` (see the module docs).
pub fn matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut t = topic.split('/');
    let mut f = filter.split('/').peekable();
    while let Some(part) = f.next() {
        if part == "#" && f.peek().is_none() {
            return true;
        }
        match t.next() {
            Some(seg) if part == "+" || part == seg => {}
            _ => return false,
        }
    }
    t.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_match_segments() {
        assert!(matches("/t/a/+", "/t/a/b"));
        assert!(!matches("/t/a/+", "/t/a/b/c"));
        assert!(!matches("/t/a/+", "/t/a"));
        assert!(matches("/t/a/#", "/t/a"));
        assert!(matches("/t/a/#", "/t/a/b/c"));
        assert!(matches("/t/+/c", "/t/x/c"));
        assert!(!matches("/t/+/c", "/t/x/d"));
        assert!(matches("sport/+/player1", "sport/tennis/player1"));
        assert!(matches("#", "a/b"));
        assert!(
            matches("+/+", "/finance"),
            "a leading / is an empty segment"
        );
        assert!(!matches("+", "/finance"));
        assert!(matches("a/b", "a/b") && !matches("a/b", "a/c"));
    }

    #[test]
    fn filters_have_a_wildcard_segment() {
        for f in ["+", "#", "a/+", "+/a", "a/+/b", "a/#", "/+", "a//#"] {
            assert!(is_filter(f), "{f}");
        }
        for t in ["", "a", "a+", "+a", "a/b+/c", "a/#b", "c#/d", "a/b", "/"] {
            assert!(!is_filter(t), "{t}");
        }
    }

    #[test]
    fn a_leading_wildcard_does_not_match_dollar_topics() {
        assert!(!matches("#", "$SYS/load"));
        assert!(!matches("+/load", "$SYS/load"));
        assert!(matches("$SYS/#", "$SYS/load"));
        assert!(
            matches("/topics/#", "/topics/$SYS/load"),
            "paths: the rule is MQTT's, at the top"
        );
    }

    #[test]
    fn filters_are_told_from_topics_and_checked() {
        assert!(is_filter("a/+/c") && is_filter("a/#") && !is_filter("a/b+"));
        assert!(valid_filter("a/+/c") && valid_filter("#") && valid_filter("/a/#"));
        assert!(!valid_filter("a/#/c") && !valid_filter("a/b#") && !valid_filter("a+/b"));
        assert!(!valid_filter(""));
    }
}
