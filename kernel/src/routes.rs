//! Route keys: a method and a path pattern (`GET /pkg/list.json`,
//! `POST /jobs/`, `GET /pkg/{name}`), the key kind of classes that add
//! HTTP endpoints.
//!
//! - A pattern's segments are literal, or `{name}`: one whole segment,
//!   captured under `name` (lowercase letters, digits, `_`).
//! - A pattern that ends in `/` is a **segment prefix**: `POST /jobs/`
//!   serves `/jobs`, `/jobs/a` and `/jobs/a/b`, the remainder (`a/b`)
//!   captured as `rest`. Otherwise the pattern matches whole paths only.
//! - Several routes may match one request: a literal exact route wins over
//!   an exact pattern, and either over a prefix; among prefixes, the
//!   longest.
//!
//! A route and a path key (a driver's) **overlap** when some request path
//! would match both: the route would shadow the driver's path, so binding
//! either is refused while the other is bound (see [`overlaps`]).

use rustc_hash::FxHashMap;

/// The capture holding a prefix route's remainder.
pub const REST: &str = "rest";

/// Normalizes `METHOD /pattern`, or says what is wrong with it.
pub(crate) fn normalize(key: &str) -> Result<String, String> {
    let Some((method, path)) = key.trim().split_once(' ') else {
        return Err("a route key is `METHOD /path` (GET /pkg/list.json)".into());
    };
    let method = method.trim().to_ascii_uppercase();
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(format!("{method:?} is not a method (GET, POST, ...)"));
    }
    let path = path.trim();
    if !path.starts_with('/') {
        return Err("a route's path must start with '/'".into());
    }
    let body = path.strip_suffix('/').unwrap_or(path);
    let mut names = Vec::new();
    for segment in body.split('/').skip(1) {
        if segment.is_empty() {
            return Err("a route's path must not contain an empty segment".into());
        }
        if let Some(name) = capture_name(segment) {
            let ok = !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
            if !ok {
                return Err(format!(
                    "capture {segment} must be {{name}} of lowercase letters, digits and '_'"
                ));
            }
            if name == REST || names.contains(&name) {
                return Err(format!("capture name {name:?} is taken"));
            }
            names.push(name);
        } else if segment.contains(['{', '}', ' ', '?', '#']) {
            return Err(format!(
                "segment {segment:?}: a capture is a whole segment, {{name}}"
            ));
        }
    }
    Ok(format!("{method} {path}"))
}

fn capture_name(segment: &str) -> Option<&str> {
    segment.strip_prefix('{')?.strip_suffix('}')
}

/// One route pattern, split.
#[derive(Debug)]
struct Pattern {
    method: Box<str>,
    segments: Vec<Box<str>>,
    prefix: bool,
    literal: bool,
}

impl Pattern {
    /// `normalized` comes from [`normalize`].
    fn new(normalized: &str) -> Pattern {
        let (method, path) = normalized.split_once(' ').unwrap_or((normalized, "/"));
        let prefix = path.ends_with('/');
        let body = path.strip_suffix('/').unwrap_or(path);
        let segments: Vec<Box<str>> = body.split('/').skip(1).map(Into::into).collect();
        let literal = segments.iter().all(|s| capture_name(s).is_none());
        Pattern {
            method: method.into(),
            segments,
            prefix,
            literal,
        }
    }

    /// The captures if `path`'s segments fit; prefix remainder as `rest`.
    fn fit(&self, path: &str) -> Option<Captures> {
        let body = path.strip_prefix('/')?;
        let body = body.strip_suffix('/').unwrap_or(body);
        let mut parts = if body.is_empty() {
            Vec::new()
        } else {
            body.split('/').collect()
        };
        if parts.len() < self.segments.len() || (!self.prefix && parts.len() > self.segments.len())
        {
            return None;
        }
        let mut captures = Captures::default();
        for (want, got) in self.segments.iter().zip(&parts) {
            match capture_name(want) {
                Some(name) if !got.is_empty() => captures.0.push((name.into(), (*got).into())),
                _ if **want == **got => {}
                _ => return None,
            }
        }
        if self.prefix {
            let rest = parts.split_off(self.segments.len()).join("/");
            captures.0.push((REST.into(), rest));
        }
        Some(captures)
    }
}

/// What a route match captured, by name, in pattern order (a prefix
/// route's remainder last, as [`REST`]). Values are as the request wrote
/// them: not percent-decoded.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Captures(pub Vec<(Box<str>, String)>);

impl Captures {
    /// The value captured as `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| &**n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A route table's index: literal exact routes by method and path, the
/// rest (patterns, prefixes) in the order they are tried.
#[derive(Default)]
pub(crate) struct RouteIndex {
    exact: FxHashMap<Box<str>, FxHashMap<Box<str>, u32>>,
    ordered: Vec<(Pattern, u32)>,
}

impl RouteIndex {
    pub(crate) fn new(normalized: &[Box<str>]) -> RouteIndex {
        let mut index = RouteIndex::default();
        for (i, key) in normalized.iter().enumerate() {
            let pattern = Pattern::new(key);
            if pattern.literal && !pattern.prefix {
                let path = key.split_once(' ').map_or("/", |(_, p)| p);
                index
                    .exact
                    .entry(pattern.method.clone())
                    .or_default()
                    .insert(path.into(), i as u32);
            } else {
                index.ordered.push((pattern, i as u32));
            }
        }
        // Exact patterns first, then prefixes, longest first.
        index
            .ordered
            .sort_by_key(|(p, _)| (p.prefix, std::cmp::Reverse(p.segments.len())));
        index
    }

    /// The binding serving `method` on `path`, and what it captured.
    pub(crate) fn find(&self, method: &str, path: &str) -> Option<(u32, Captures)> {
        if self.exact.is_empty() && self.ordered.is_empty() {
            return None;
        }
        if let Some(&i) = self.exact.get(method).and_then(|m| m.get(path)) {
            return Some((i, Captures::default()));
        }
        self.ordered
            .iter()
            .filter(|(p, _)| &*p.method == method)
            .find_map(|(p, i)| p.fit(path).map(|c| (*i, c)))
    }
}

/// Whether the route `route` (normalized) and the path key `path` (a
/// driver's, normalized: no trailing `/`, the root is empty) could both
/// match one request path.
pub fn overlaps(route: &str, path: &str) -> bool {
    let pattern = Pattern::new(route);
    let theirs: Vec<&str> = path.split('/').skip(1).filter(|s| !s.is_empty()).collect();
    let shared = pattern.segments.len().min(theirs.len());
    if theirs.len() > pattern.segments.len() && !pattern.prefix {
        return false;
    }
    pattern.segments[..shared]
        .iter()
        .zip(&theirs[..shared])
        .all(|(mine, theirs)| capture_name(mine).is_some() || **mine == **theirs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index(keys: &[&str]) -> (RouteIndex, Vec<Box<str>>) {
        let mut keys: Vec<Box<str>> = keys.iter().map(|k| normalize(k).unwrap().into()).collect();
        keys.sort();
        (RouteIndex::new(&keys), keys)
    }

    fn found(keys: &[&str], method: &str, path: &str) -> Option<(String, Vec<(String, String)>)> {
        let (index, keys) = index(keys);
        index.find(method, path).map(|(i, c)| {
            (
                keys[i as usize].to_string(),
                c.0.into_iter().map(|(n, v)| (n.into(), v)).collect(),
            )
        })
    }

    #[test]
    fn keys_are_normalized_or_refused_with_a_reason() {
        assert_eq!(normalize("get /a/b").unwrap(), "GET /a/b");
        assert_eq!(normalize("POST /jobs/").unwrap(), "POST /jobs/");
        assert_eq!(normalize("GET /pkg/{name}/x").unwrap(), "GET /pkg/{name}/x");
        for bad in [
            "/a",
            "GET a",
            "G3T /a",
            "GET /a//b",
            "GET /a{b}",
            "GET /{A}",
            "GET /{x}/{x}",
            "GET /{rest}",
            "GET /{}",
        ] {
            assert!(normalize(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn exact_patterns_and_prefixes_in_that_order() {
        let keys = [
            "GET /pkg/list.json",
            "GET /pkg/{name}",
            "GET /pkg/",
            "POST /jobs/",
            "POST /jobs/urgent/",
        ];
        let hit = |m: &str, p: &str| found(&keys, m, p).map(|(k, _)| k);
        assert_eq!(
            hit("GET", "/pkg/list.json").as_deref(),
            Some("GET /pkg/list.json")
        );
        assert_eq!(
            found(&keys, "GET", "/pkg/curl").unwrap(),
            (
                "GET /pkg/{name}".into(),
                vec![("name".into(), "curl".into())]
            )
        );
        assert_eq!(
            found(&keys, "GET", "/pkg/a/b").unwrap(),
            ("GET /pkg/".into(), vec![("rest".into(), "a/b".into())])
        );
        assert_eq!(hit("GET", "/pkg").as_deref(), Some("GET /pkg/"));
        assert_eq!(
            hit("POST", "/jobs/urgent/x").as_deref(),
            Some("POST /jobs/urgent/")
        );
        assert_eq!(hit("POST", "/jobs/x").as_deref(), Some("POST /jobs/"));
        assert_eq!(hit("POST", "/jobsx"), None);
        assert_eq!(hit("DELETE", "/pkg/list.json"), None);
        assert_eq!(
            hit("GET", "/pkg/list.json/more").as_deref(),
            Some("GET /pkg/")
        );
        assert_eq!(found(&["GET /a"], "GET", "/a/b"), None);
        assert_eq!(found(&[], "GET", "/a"), None);
    }

    #[test]
    fn routes_overlap_the_paths_they_would_shadow() {
        let r = |k: &str| normalize(k).unwrap();
        assert!(overlaps(&r("GET /queues/list"), "/queues"));
        assert!(overlaps(&r("GET /queues/"), "/queues/a"));
        assert!(overlaps(&r("GET /{x}/a"), "/queues"));
        assert!(overlaps(&r("GET /pkg/list.json"), ""));
        assert!(!overlaps(&r("GET /pkg/list.json"), "/queues"));
        assert!(!overlaps(&r("GET /queues"), "/queues/a"));
        assert!(!overlaps(&r("GET /queuesx/"), "/queues"));
        assert!(overlaps(&r("GET /queues"), "/queues"));
    }
}
