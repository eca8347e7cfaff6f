//! The ACL file: rules on kernel paths, first match wins, no match denies.
//!
//! ```text
//! # allow|deny  WHO         ACTIONS             PATTERN
//! allow         alice       publish,subscribe   /topics/sensors/#
//! allow         *           all                 /topics/users/%u/#
//! allow         @all        subscribe           /topics/public/#
//! deny          bob         consume             /queues/payroll
//! allow         *           publish,consume     /queues/+
//! ```
//!
//! - WHO: a user name; `*` any authenticated user; `@anonymous` a
//!   connection without credentials (when the instance allows them);
//!   `@all` anyone.
//! - ACTIONS: `publish`, `subscribe`, `consume`, comma-separated, or `all`.
//! - A word starting with `#` begins a comment, to the end of the line.
//! - PATTERN: a kernel path (MQTT topic `a/b` under the root `/topics/` is
//!   `/topics/a/b`), `/`-separated; `+` matches one segment, a final `#`
//!   any number (none included), `%u` in a segment the user's name (a rule
//!   with `%u` never matches an anonymous connection).
//!
//! A subscription filter (MQTT `sensors/+/t`) is judged by what it could
//! receive: an `allow` rule applies only if its pattern covers every topic
//! the filter matches, a `deny` rule as soon as they share one topic.

/// Who a rule is for.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Who {
    User(String),
    AnyUser,
    Anonymous,
    All,
}

/// One rule.
#[derive(Clone, Debug)]
struct Rule {
    allow: bool,
    who: Who,
    /// Bit `1 << Action as u8`.
    actions: u8,
    pattern: Vec<String>,
}

/// The rules of one file, in order.
#[derive(Clone, Debug, Default)]
pub struct Acl {
    rules: Vec<Rule>,
}

use bindery_classes::auth::Action;

impl Acl {
    /// Parses an ACL file; errors name the line.
    pub fn parse(text: &str) -> Result<Acl, String> {
        let mut rules = Vec::new();
        for (n, line) in text.lines().enumerate() {
            // A comment is a word starting with `#` and what follows it
            // (a `#` inside a pattern is a wildcard).
            let words: Vec<&str> = line
                .split_whitespace()
                .take_while(|w| !w.starts_with('#'))
                .collect();
            if words.is_empty() {
                continue;
            }
            let at = n + 1;
            rules.push(Rule::parse(&words).map_err(|e| format!("line {at}: {e}"))?);
        }
        Ok(Acl { rules })
    }

    /// Whether `user` (`None`: anonymous) may do `action` on `path`.
    pub fn allows(&self, user: Option<&str>, action: Action, path: &str) -> bool {
        let path: Vec<&str> = path.split('/').collect();
        for rule in &self.rules {
            if rule.actions & (1 << action as u8) == 0 || !rule.who.is(user) {
                continue;
            }
            let Some(pattern) = rule.pattern_for(user) else {
                continue;
            };
            let filter = action == Action::Subscribe;
            let applies = if rule.allow || !filter {
                covers(&pattern, &path, filter)
            } else {
                overlaps(&pattern, &path)
            };
            if applies {
                return rule.allow;
            }
        }
        false
    }
}

impl Who {
    fn is(&self, user: Option<&str>) -> bool {
        match (self, user) {
            (Who::All, _) | (Who::AnyUser, Some(_)) | (Who::Anonymous, None) => true,
            (Who::User(u), Some(v)) => u == v,
            _ => false,
        }
    }
}

impl Rule {
    fn parse(words: &[&str]) -> Result<Rule, String> {
        let [verb, who, actions, pattern] = words else {
            return Err(format!(
                "expected `allow|deny WHO ACTIONS PATTERN`, found {} words",
                words.len()
            ));
        };
        let allow = match *verb {
            "allow" => true,
            "deny" => false,
            other => return Err(format!("{other:?}: expected allow or deny")),
        };
        let who = match *who {
            "*" => Who::AnyUser,
            "@anonymous" => Who::Anonymous,
            "@all" => Who::All,
            w if w.starts_with('@') => {
                return Err(format!("{w:?}: expected a user, *, @anonymous or @all"));
            }
            w => Who::User(w.to_owned()),
        };
        let mut bits = 0u8;
        for a in actions.split(',') {
            bits |= match a {
                "publish" => 1 << Action::Publish as u8,
                "subscribe" => 1 << Action::Subscribe as u8,
                "consume" => 1 << Action::Consume as u8,
                "all" => 0b111,
                other => {
                    return Err(format!(
                        "{other:?}: expected publish, subscribe, consume or all"
                    ));
                }
            };
        }
        if !pattern.starts_with('/') {
            return Err(format!(
                "{pattern:?}: a pattern is a path, starting with '/'"
            ));
        }
        let segments: Vec<String> = pattern.split('/').map(str::to_owned).collect();
        for (i, s) in segments.iter().enumerate() {
            if s.contains('#') && (s != "#" || i + 1 != segments.len()) {
                return Err(format!("{pattern:?}: '#' must be a whole, last segment"));
            }
            if s.contains('+') && s != "+" {
                return Err(format!("{pattern:?}: '+' must be a whole segment"));
            }
        }
        Ok(Rule {
            allow,
            who,
            actions: bits,
            pattern: segments,
        })
    }

    /// The pattern with `%u` replaced; `None` if it names the user and
    /// there is none (or the name could not be a segment).
    fn pattern_for(&self, user: Option<&str>) -> Option<Vec<String>> {
        if !self.pattern.iter().any(|s| s.contains("%u")) {
            return Some(self.pattern.clone());
        }
        let user = user.filter(|u| !u.contains(['/', '+', '#']))?;
        Some(self.pattern.iter().map(|s| s.replace("%u", user)).collect())
    }
}

/// Whether `pattern` matches every path `target` names: `target` is a
/// filter (with `+` and `#`) when `filter`, else a literal path.
fn covers(pattern: &[String], target: &[&str], filter: bool) -> bool {
    let mut i = 0;
    loop {
        match (pattern.get(i).map(String::as_str), target.get(i).copied()) {
            (Some("#"), _) => return true,
            (None, None) => return true,
            (_, None) | (None, _) => return false,
            (Some(_), Some("#")) if filter => return false,
            (Some("+"), Some("+")) => {}
            (Some("+"), Some(_)) => {}
            (Some(_), Some("+")) if filter => return false,
            (Some(p), Some(t)) if p == t => {}
            _ => return false,
        }
        i += 1;
    }
}

/// Whether some path matches both `pattern` and the filter `target`.
fn overlaps(pattern: &[String], target: &[&str]) -> bool {
    let mut i = 0;
    loop {
        match (pattern.get(i).map(String::as_str), target.get(i).copied()) {
            (Some("#"), _) | (_, Some("#")) => return true,
            (None, None) => return true,
            (None, _) | (_, None) => return false,
            (Some("+"), _) | (_, Some("+")) => {}
            (Some(p), Some(t)) if p == t => {}
            _ => return false,
        }
        i += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Action::*;

    const RULES: &str = "
        # a comment
        deny   bob   all                /topics/secret/#
        allow  alice publish,subscribe  /topics/sensors/#
        allow  *     all                /topics/users/%u/#   # own space
        allow  @all  subscribe          /topics/public/+
        allow  *     consume            /queues/+
    ";

    #[test]
    fn first_match_wins_and_nothing_matching_denies() {
        let acl = Acl::parse(RULES).unwrap();
        assert!(acl.allows(Some("alice"), Publish, "/topics/sensors/t1"));
        assert!(acl.allows(Some("alice"), Publish, "/topics/sensors"));
        assert!(!acl.allows(Some("alice"), Consume, "/topics/sensors/t1"));
        assert!(!acl.allows(Some("bob"), Publish, "/topics/sensors/t1"));
        assert!(acl.allows(Some("bob"), Publish, "/topics/users/bob/x"));
        assert!(!acl.allows(Some("bob"), Publish, "/topics/users/alice/x"));
        assert!(!acl.allows(None, Publish, "/topics/users/%u/x"));
        assert!(acl.allows(None, Subscribe, "/topics/public/news"));
        assert!(!acl.allows(None, Subscribe, "/topics/public/news/x"));
        assert!(acl.allows(Some("carol"), Consume, "/queues/jobs"));
        assert!(!acl.allows(Some("carol"), Consume, "/queues/jobs/deeper"));
    }

    #[test]
    fn filters_are_judged_by_what_they_could_receive() {
        let acl = Acl::parse(RULES).unwrap();
        assert!(acl.allows(Some("alice"), Subscribe, "/topics/sensors/+/t"));
        assert!(acl.allows(Some("alice"), Subscribe, "/topics/sensors/#"));
        assert!(!acl.allows(Some("alice"), Subscribe, "/topics/#"));
        assert!(!acl.allows(Some("alice"), Subscribe, "/topics/+/t1"));
        assert!(acl.allows(None, Subscribe, "/topics/public/+"));
        assert!(!acl.allows(None, Subscribe, "/topics/public/#"));
        // A deny applies as soon as the filter could reach what it denies.
        let acl = Acl::parse("deny bob all /topics/secret/#\nallow * all /topics/#").unwrap();
        assert!(!acl.allows(Some("bob"), Subscribe, "/topics/#"));
        assert!(!acl.allows(Some("bob"), Subscribe, "/topics/+/x"));
        assert!(acl.allows(Some("bob"), Subscribe, "/topics/open/#"));
        assert!(acl.allows(Some("eve"), Subscribe, "/topics/#"));
    }

    #[test]
    fn errors_name_the_line() {
        for (text, want) in [
            ("allow alice publish", "line 1"),
            ("\npermit alice publish /a", "line 2"),
            ("allow @root publish /a", "@root"),
            ("allow alice post /a", "post"),
            ("allow alice publish a/b", "starting with '/'"),
            ("allow alice publish /a/#/b", "'#'"),
            ("allow alice publish /a/b+", "'+'"),
        ] {
            let e = Acl::parse(text).unwrap_err();
            assert!(e.contains(want), "{text:?}: {e}");
        }
    }
}
