//! The command line as the interface: request values reach the command
//! only through named placeholders in its arguments, each checked against
//! its pattern before anything runs.
//!
//! `{name}` is the route's capture `name`; `{query.name}` is the query
//! parameter `name`. Values are percent-decoded, then refused (400) when
//! they are empty, longer than `max_value_bytes`, hold a control character
//! (NUL included), start with `-` (an option to the command), contain a
//! `..` path segment, or do not match the placeholder's pattern whole.

use std::collections::BTreeMap;

use bindery_classes::route::{RouteRequest, decode};
use regex::Regex;

/// One argument, split into literal text and placeholders.
#[derive(Debug)]
enum Piece {
    Text(String),
    Capture(String),
    Query(String),
}

/// A command line with placeholders, checked at instance creation.
#[derive(Debug)]
pub(crate) struct Template {
    args: Vec<Vec<Piece>>,
    patterns: BTreeMap<String, Regex>,
    max_value_bytes: usize,
}

impl Template {
    /// Splits `command` and compiles `patterns`; every placeholder the
    /// command uses must have one, and every pattern must be used.
    pub(crate) fn new(
        command: &[String],
        patterns: &BTreeMap<String, String>,
        max_value_bytes: usize,
    ) -> Result<Template, String> {
        if command.is_empty() {
            return Err("command: must name a program".into());
        }
        let mut compiled = BTreeMap::new();
        for (name, pattern) in patterns {
            let re = Regex::new(&format!("^(?:{pattern})$"))
                .map_err(|e| format!("placeholders.{name}: {e}"))?;
            compiled.insert(name.clone(), re);
        }
        let mut args = Vec::new();
        let mut used = Vec::new();
        for (i, arg) in command.iter().enumerate() {
            let pieces = split(arg).map_err(|e| format!("command[{i}]: {e}"))?;
            for p in &pieces {
                let name = match p {
                    Piece::Capture(n) => n.clone(),
                    Piece::Query(n) => format!("query.{n}"),
                    Piece::Text(_) => continue,
                };
                if i == 0 {
                    return Err(format!(
                        "command[0]: the program cannot be a placeholder ({{{name}}})"
                    ));
                }
                if !compiled.contains_key(&name) {
                    return Err(format!(
                        "command[{i}]: placeholder {{{name}}} has no pattern in [placeholders]"
                    ));
                }
                used.push(name);
            }
            args.push(pieces);
        }
        if let Some(unused) = compiled.keys().find(|k| !used.contains(k)) {
            return Err(format!(
                "placeholders.{unused}: no argument of the command uses it"
            ));
        }
        Ok(Template {
            args,
            patterns: compiled,
            max_value_bytes,
        })
    }

    /// The argv for `request`, or why it is refused (a 400).
    pub(crate) fn argv(&self, request: &RouteRequest) -> Result<Vec<String>, String> {
        let mut argv = Vec::with_capacity(self.args.len());
        for pieces in &self.args {
            let mut arg = String::new();
            for piece in pieces {
                match piece {
                    Piece::Text(t) => arg.push_str(t),
                    Piece::Capture(name) => {
                        let raw = request.captures.get(name).ok_or_else(|| {
                            format!("placeholder {{{name}}}: the route captured no {name:?}")
                        })?;
                        let value = decode(raw).map_err(|e| format!("{{{name}}}: {e}"))?;
                        arg.push_str(&self.check(name, value)?);
                    }
                    Piece::Query(name) => {
                        let key = format!("query.{name}");
                        let value = match request.query_param(name) {
                            Some(Ok(v)) => v,
                            Some(Err(e)) => return Err(format!("{{{key}}}: {e}")),
                            None => return Err(format!("query parameter {name:?} is required")),
                        };
                        arg.push_str(&self.check(&key, value)?);
                    }
                }
            }
            argv.push(arg);
        }
        Ok(argv)
    }

    fn check(&self, name: &str, value: String) -> Result<String, String> {
        let refuse = |why: &str| Err(format!("{{{name}}}: value refused: {why}"));
        if value.is_empty() {
            return refuse("empty");
        }
        if value.len() > self.max_value_bytes {
            return refuse(&format!("longer than {} bytes", self.max_value_bytes));
        }
        if value.chars().any(char::is_control) {
            return refuse("a control character");
        }
        if value.starts_with('-') {
            return refuse("it starts with '-'");
        }
        if value.split(['/', '\\']).any(|s| s == "..") {
            return refuse("a '..' path segment");
        }
        match self.patterns.get(name) {
            Some(re) if re.is_match(&value) => Ok(value),
            _ => refuse("it does not match the placeholder's pattern"),
        }
    }
}

/// Splits `{name}` and `{query.name}` out of one argument; `{{` and `}}`
/// are literal braces.
fn split(arg: &str) -> Result<Vec<Piece>, String> {
    let mut pieces = Vec::new();
    let mut text = String::new();
    let mut chars = arg.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '{' if chars.peek() == Some(&'{') => {
                chars.next();
                text.push('{');
            }
            '}' if chars.peek() == Some(&'}') => {
                chars.next();
                text.push('}');
            }
            '{' => {
                let name: String = chars.by_ref().take_while(|&c| c != '}').collect();
                let valid = |n: &str| {
                    !n.is_empty()
                        && n.bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
                };
                if !text.is_empty() {
                    pieces.push(Piece::Text(std::mem::take(&mut text)));
                }
                match name.strip_prefix("query.") {
                    Some(q) if valid(q) => pieces.push(Piece::Query(q.to_owned())),
                    None if valid(&name) => pieces.push(Piece::Capture(name)),
                    _ => return Err(format!("{{{name}}} is not a placeholder name")),
                }
            }
            '}' => return Err("a lone '}' (write '}}')".into()),
            c => text.push(c),
        }
    }
    if !text.is_empty() {
        pieces.push(Piece::Text(text));
    }
    Ok(pieces)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bindery::routes::Captures;

    fn template(command: &[&str], patterns: &[(&str, &str)]) -> Result<Template, String> {
        let command: Vec<String> = command.iter().map(|s| s.to_string()).collect();
        let patterns = patterns
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Template::new(&command, &patterns, 64)
    }

    fn request(name: &str, query: &str) -> RouteRequest {
        RouteRequest {
            captures: Captures(vec![("name".into(), name.into())]),
            query: query.into(),
            ..RouteRequest::default()
        }
    }

    #[test]
    fn placeholders_are_filled_from_captures_and_query() {
        let t = template(
            &["show", "--pkg={name}", "{query.format}"],
            &[("name", "[a-z0-9.-]+"), ("query.format", "json|text")],
        )
        .unwrap();
        assert_eq!(
            t.argv(&request("curl", "format=json")).unwrap(),
            ["show", "--pkg=curl", "json"]
        );
        assert_eq!(
            t.argv(&request("lib%2Dx", "format=text")).unwrap(),
            ["show", "--pkg=lib-x", "text"]
        );
    }

    #[test]
    fn hostile_values_are_refused() {
        let t = template(&["show", "{name}"], &[("name", ".+")]).unwrap();
        for bad in [
            "a;rm",
            "$(id)",
            "..",
            "..%2Fetc",
            "a%00b",
            "-rf",
            "%zz",
            &"a".repeat(65),
        ] {
            let strict = template(&["show", "{name}"], &[("name", "[a-z]+")]).unwrap();
            assert!(strict.argv(&request(bad, "")).is_err(), "{bad}");
        }
        for bad in ["..", "a/../b", "a%00", "-x", "", "a%0a"] {
            assert!(t.argv(&request(bad, "")).is_err(), "{bad}");
        }
        assert!(
            t.argv(&request("a;b $(c)", "")).is_ok(),
            "argv, not a shell"
        );
    }

    #[test]
    fn configuration_errors_name_the_argument() {
        assert!(template(&[], &[]).is_err());
        let e = template(&["x", "{name}"], &[]).unwrap_err();
        assert!(e.contains("command[1]") && e.contains("{name}"), "{e}");
        assert!(template(&["{name}"], &[("name", "a")]).is_err());
        assert!(
            template(&["x"], &[("name", "a")])
                .unwrap_err()
                .contains("placeholders.name")
        );
        assert!(template(&["x", "{na me}"], &[]).is_err());
        assert!(template(&["x", "{name}"], &[("name", "(")]).is_err());
        assert!(template(&["x", "{{literal}}"], &[]).is_ok());
    }
}
