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
pub fn is_filter(s: &str) -> bool {
    s.split('/').any(|seg| seg == "+" || seg == "#")
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
