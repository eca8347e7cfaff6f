//! "Did you mean ...?": the closest of a few known names to a mistyped one,
//! as cargo suggests for a mistyped command.

/// The edit (Levenshtein) distance between `a` and `b`, in characters.
pub(crate) fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = if ca == cb {
                diagonal
            } else {
                1 + diagonal.min(above).min(row[j])
            };
            diagonal = above;
        }
    }
    row[b.len()]
}

/// The candidate closest to `word`, if one is close enough to be what was
/// meant: at most a third of `word`'s length away, and at most 3 edits (as
/// cargo), at least 1. Ties go to the first candidate.
pub(crate) fn closest<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let limit = (word.chars().count() / 3).clamp(1, 3);
    candidates
        .into_iter()
        .filter(|c| *c != word)
        .map(|c| (distance(word, c), c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// `"; did you mean X?"` for the closest candidate, or nothing.
pub(crate) fn did_you_mean<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
    quote: impl Fn(&str) -> String,
) -> String {
    closest(word, candidates).map_or_else(String::new, |c| format!("; did you mean {}?", quote(c)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distances() {
        assert_eq!(distance("", ""), 0);
        assert_eq!(distance("abc", ""), 3);
        assert_eq!(distance("kitten", "sitting"), 3);
        assert_eq!(distance("driver.memque", "driver.memqueue"), 2);
        assert_eq!(distance("drivr.topic", "driver.topic"), 1);
    }

    #[test]
    fn suggests_only_what_is_close() {
        let linked = ["driver.memqueue", "driver.topic", "parser.json"];
        assert_eq!(closest("driver.memque", linked), Some("driver.memqueue"));
        assert_eq!(closest("drivr.topic", linked), Some("driver.topic"));
        assert_eq!(closest("driver.redis", linked), None);
        assert_eq!(closest("thread", ["threads", "data_dir"]), Some("threads"));
        assert_eq!(closest("x", ["threads"]), None);
    }
}
