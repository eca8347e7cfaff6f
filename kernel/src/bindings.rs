//! Binding tables: one per module class, mapping keys to instances.
//!
//! A table holds one kind of key ([`KeyKind`]):
//!
//! - **paths**, matched by longest prefix on segment boundaries: `/queues/`
//!   serves `/queues/orders/eu`, while `/queue` does not serve `/queues/x`;
//! - **MIME types**, parameters ignored, falling back from `type/sub+suffix`
//!   to `type/suffix`, then `type/*`, then `*/*`;
//! - **exact** keys such as listen addresses or names;
//! - **routes**, a method and a path pattern (`GET /pkg/{name}`,
//!   `POST /jobs/`), see [`crate::routes`].
//!
//! Readers never lock: a table is an immutable index behind an
//! [`ArcSwap`], replaced whole when a binding changes, with a generation
//! number that callers holding cached handles can compare cheaply.
//!
//! Longer than most files here: the three key kinds' indexes, the lock-free
//! table over them, and their tests.

use std::any::Any;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use rustc_hash::FxHashMap;
use serde::Serialize;

pub(crate) use crate::registry::Handle;
use crate::routes::{Captures, RouteIndex};

/// How a class's table matches keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyKind {
    /// URL paths, longest prefix on segment boundaries.
    Path,
    /// MIME types with wildcard and suffix fallback.
    Mime,
    /// Keys compared exactly.
    Exact,
    /// A method and a path pattern ([`crate::routes`]).
    Route,
}

impl KeyKind {
    /// Normalizes a key as written in configuration, or says why it is not
    /// a valid key of this kind.
    pub fn normalize(self, key: &str) -> Result<String, String> {
        match self {
            KeyKind::Path => {
                if !key.starts_with('/') {
                    return Err("a path key must start with '/'".into());
                }
                let trimmed = key.trim_end_matches('/');
                if trimmed.contains("//") {
                    return Err("a path key must not contain an empty segment".into());
                }
                Ok(trimmed.to_owned())
            }
            KeyKind::Mime => {
                let essence = key
                    .split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_ascii_lowercase();
                let Some((ty, sub)) = essence.split_once('/') else {
                    return Err("a MIME key must be type/subtype".into());
                };
                let token =
                    |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_graphic() && b != b'/');
                if !token(ty) || !token(sub) {
                    return Err("a MIME key must be type/subtype".into());
                }
                if ty == "*" && sub != "*" {
                    return Err("a MIME key with type '*' must be '*/*'".into());
                }
                if (ty != "*" && ty.contains('*')) || (sub != "*" && sub.contains('*')) {
                    return Err("'*' must stand alone for a whole type or subtype".into());
                }
                Ok(essence)
            }
            KeyKind::Route => crate::routes::normalize(key),
            KeyKind::Exact => {
                if key.is_empty() {
                    return Err("an empty key".into());
                }
                Ok(key.to_owned())
            }
        }
    }

    /// How a normalized key is shown.
    fn display(self, normalized: &str) -> String {
        match self {
            KeyKind::Path => format!("{normalized}/"),
            _ => normalized.to_owned(),
        }
    }
}

/// One binding: a key, and the instance bound to it.
pub struct Binding {
    key: Arc<str>,
    instance: Arc<str>,
    module: Arc<str>,
    handle: Handle,
}

impl Binding {
    /// The key as bound (paths end in `/`).
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The name of the bound instance.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// `class.name` of the bound instance's module.
    pub fn module(&self) -> &str {
        &self.module
    }

    /// The instance's handle, if it is of type `H`.
    pub fn handle<H: Any>(&self) -> Option<&H> {
        self.handle.downcast_ref()
    }
}

impl fmt::Debug for Binding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Binding")
            .field("key", &self.key)
            .field("instance", &self.instance)
            .finish()
    }
}

/// MIME keys by type, then subtype: a lookup hashes two short strings and
/// builds none.
#[derive(Default)]
struct MimeIndex {
    types: FxHashMap<Box<str>, MimeType>,
    any: Option<u32>,
}

#[derive(Default)]
struct MimeType {
    subtypes: FxHashMap<Box<str>, u32>,
    wildcard: Option<u32>,
}

impl MimeIndex {
    fn new(normalized: &[Box<str>]) -> MimeIndex {
        let mut index = MimeIndex::default();
        for (i, k) in normalized.iter().enumerate() {
            let i = i as u32;
            let (ty, sub) = k.split_once('/').unwrap_or((k, ""));
            if ty == "*" {
                index.any = Some(i);
                continue;
            }
            let entry = index.types.entry(ty.into()).or_default();
            if sub == "*" {
                entry.wildcard = Some(i);
            } else {
                entry.subtypes.insert(sub.into(), i);
            }
        }
        index
    }

    /// `essence` is lowercase `type/subtype` with no parameters.
    #[inline]
    fn find(&self, essence: &str) -> Option<u32> {
        let Some((ty, sub)) = essence.split_once('/') else {
            return self.any;
        };
        let Some(t) = self.types.get(ty) else {
            return self.any;
        };
        if let Some(&i) = t.subtypes.get(sub) {
            return Some(i);
        }
        if let Some(plus) = sub.rfind('+') {
            if let Some(&i) = t.subtypes.get(&sub[plus + 1..]) {
                return Some(i);
            }
        }
        t.wildcard.or(self.any)
    }
}

/// An immutable index of one table's bindings: what readers search.
pub struct Index {
    kind: KeyKind,
    bindings: Vec<Arc<Binding>>,
    map: FxHashMap<Box<str>, u32>,
    mime: MimeIndex,
    routes: RouteIndex,
    /// Bit `n` set: some key is `n` bytes long (keys of 256 or more bytes
    /// always set bit 255's neighbour check off; see `may_have`).
    lengths: [u64; 4],
    long_keys: bool,
}

impl Index {
    fn new(kind: KeyKind, bindings: Vec<Arc<Binding>>, normalized: &[Box<str>]) -> Index {
        let mut map = FxHashMap::default();
        let mut lengths = [0u64; 4];
        let mut long_keys = false;
        for (i, k) in normalized.iter().enumerate() {
            map.insert(k.clone(), i as u32);
            if k.len() < 256 {
                lengths[k.len() / 64] |= 1 << (k.len() % 64);
            } else {
                long_keys = true;
            }
        }
        let mime = if kind == KeyKind::Mime {
            MimeIndex::new(normalized)
        } else {
            MimeIndex::default()
        };
        let routes = if kind == KeyKind::Route {
            RouteIndex::new(normalized)
        } else {
            RouteIndex::default()
        };
        Index {
            kind,
            bindings,
            map,
            mime,
            routes,
            lengths,
            long_keys,
        }
    }

    #[inline]
    fn may_have(&self, len: usize) -> bool {
        if len < 256 {
            self.lengths[len / 64] & (1 << (len % 64)) != 0
        } else {
            self.long_keys
        }
    }

    #[inline]
    fn get(&self, key: &str) -> Option<&Arc<Binding>> {
        if !self.may_have(key.len()) {
            return None;
        }
        self.map.get(key).map(|&i| &self.bindings[i as usize])
    }

    /// Finds the binding serving `key`, by this table's kind of match.
    #[inline]
    pub fn find(&self, key: &str) -> Option<&Arc<Binding>> {
        match self.kind {
            KeyKind::Path => self.find_path(key),
            KeyKind::Mime => self.find_mime(key),
            KeyKind::Exact => self.get(key),
            KeyKind::Route => {
                let (method, path) = key.split_once(' ')?;
                self.route(method, path).map(|(b, _)| b)
            }
        }
    }

    /// The route serving `method` on `path` in a route table, and what
    /// its pattern captured.
    #[inline]
    pub fn route(&self, method: &str, path: &str) -> Option<(&Arc<Binding>, Captures)> {
        let (i, captures) = self.routes.find(method, path)?;
        Some((&self.bindings[i as usize], captures))
    }

    /// Whether the table has no binding.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.bindings.is_empty()
    }

    fn find_path(&self, path: &str) -> Option<&Arc<Binding>> {
        let path = path.trim_end_matches('/');
        let bytes = path.as_bytes();
        let mut end = bytes.len();
        loop {
            // `end` is 0, the path's length, or the offset of a '/'.
            if let Some(b) = self.get(&path[..end]) {
                return Some(b);
            }
            if end == 0 {
                return None;
            }
            end = bytes[..end].iter().rposition(|&b| b == b'/')?;
        }
    }

    fn find_mime(&self, content_type: &str) -> Option<&Arc<Binding>> {
        // One pass: cut the parameters, note upper case.
        let bytes = content_type.as_bytes();
        let mut end = bytes.len();
        let mut upper = false;
        for (i, &b) in bytes.iter().enumerate() {
            if b == b';' {
                end = i;
                break;
            }
            upper |= b.is_ascii_uppercase();
        }
        let essence = content_type[..end].trim();
        if !upper {
            // The common case, an exact key, costs one hash.
            if let Some(b) = self.get(essence) {
                return Some(b);
            }
        }
        let found = if upper {
            let mut lower = [0u8; 128];
            match lower.get_mut(..essence.len()) {
                Some(out) => {
                    for (o, b) in out.iter_mut().zip(essence.bytes()) {
                        *o = b.to_ascii_lowercase();
                    }
                    // ASCII lowercasing keeps UTF-8 valid.
                    self.mime.find(std::str::from_utf8(out).unwrap_or(""))
                }
                None => self.mime.any,
            }
        } else {
            self.mime.find(essence)
        };
        found.map(|i| &self.bindings[i as usize])
    }

    /// Every binding, in key order.
    pub fn bindings(&self) -> &[Arc<Binding>] {
        &self.bindings
    }
}

thread_local! {
    static LOOKUPS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// How many lookups ([`Table::lookup`], [`Table::index`]) the calling
/// thread has made: lets a test see that a caller keeps its handles instead
/// of looking them up per message. Costs a thread-local increment.
pub fn thread_lookups() -> u64 {
    LOOKUPS.with(|c| c.get())
}

#[inline]
fn count_lookup() {
    LOOKUPS.with(|c| c.set(c.get() + 1));
}

/// A class's binding table.
pub struct Table {
    class: Arc<str>,
    kind: KeyKind,
    current: ArcSwap<Index>,
    generation: AtomicU64,
    writer: Mutex<()>,
}

impl fmt::Debug for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Table")
            .field("class", &self.class)
            .field("kind", &self.kind)
            .field("bindings", &self.current.load().bindings)
            .finish()
    }
}

impl Table {
    /// An empty table for `class`.
    pub fn new(class: &str, kind: KeyKind) -> Table {
        Table {
            class: class.into(),
            kind,
            current: ArcSwap::from_pointee(Index::new(kind, Vec::new(), &[])),
            generation: AtomicU64::new(0),
            writer: Mutex::new(()),
        }
    }

    /// The class this table serves.
    pub fn class(&self) -> &str {
        &self.class
    }

    /// The kind of key this table matches.
    pub fn kind(&self) -> KeyKind {
        self.kind
    }

    /// The current index. Hold it for a batch of lookups; it does not change
    /// under you.
    #[inline]
    pub fn index(&self) -> arc_swap::Guard<Arc<Index>> {
        count_lookup();
        self.current.load()
    }

    /// Looks `key` up and returns a clone of the bound handle, if one is
    /// bound and it is of type `H`. Keep the handle: it stays valid after the
    /// binding changes (compare [`Table::generation`] to notice).
    #[inline]
    pub fn lookup<H: Any + Clone>(&self, key: &str) -> Option<H> {
        count_lookup();
        self.current.load().find(key)?.handle::<H>().cloned()
    }

    /// Bumped on every change of the table.
    #[inline]
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Binds `key` to an instance's handle. A key already bound is an error
    /// naming both instances. (A server binds through its
    /// [`Runtime`](crate::Runtime), which also refuses a route that would
    /// shadow a driver's path; a table used alone binds here.)
    pub fn bind(
        &self,
        key: &str,
        instance: &str,
        module: &str,
        handle: Handle,
    ) -> Result<(), crate::Error> {
        let err = |reason: String| crate::Error::Binding {
            class: self.class.to_string(),
            key: key.to_owned(),
            reason,
        };
        let normalized = self.kind.normalize(key).map_err(err)?;
        let _w = self.writer.lock();
        let old = self.current.load();
        if let Some(&i) = old.map.get(normalized.as_str()) {
            let other = &old.bindings[i as usize];
            return Err(err(format!(
                "instance {:?} is bound to {} already; instance {instance:?} cannot be too",
                other.instance, other.key
            )));
        }
        let mut entries: Vec<(Box<str>, Arc<Binding>)> = old
            .bindings
            .iter()
            .zip(keys_of(&old))
            .map(|(b, k)| (k, b.clone()))
            .collect();
        entries.push((
            normalized.clone().into(),
            Arc::new(Binding {
                key: self.kind.display(&normalized).into(),
                instance: instance.into(),
                module: module.into(),
                handle,
            }),
        ));
        self.publish(entries);
        Ok(())
    }

    /// Removes the binding of `key`; says whether there was one.
    pub fn unbind(&self, key: &str) -> bool {
        let Ok(normalized) = self.kind.normalize(key) else {
            return false;
        };
        let _w = self.writer.lock();
        let old = self.current.load();
        if !old.map.contains_key(normalized.as_str()) {
            return false;
        }
        let entries = old
            .bindings
            .iter()
            .zip(keys_of(&old))
            .filter(|(_, k)| **k != *normalized)
            .map(|(b, k)| (k, b.clone()))
            .collect();
        self.publish(entries);
        true
    }

    /// Points `key`, bound to `instance`, at a new handle of that instance
    /// (a restart); says whether it was bound to it.
    pub(crate) fn rebind(&self, key: &str, instance: &str, handle: Handle) -> bool {
        let Ok(normalized) = self.kind.normalize(key) else {
            return false;
        };
        let _w = self.writer.lock();
        let old = self.current.load();
        let mut found = false;
        let entries = old
            .bindings
            .iter()
            .zip(keys_of(&old))
            .map(|(b, k)| {
                if *k == *normalized && &*b.instance == instance {
                    found = true;
                    let fresh = Binding {
                        key: b.key.clone(),
                        instance: b.instance.clone(),
                        module: b.module.clone(),
                        handle: handle.clone(),
                    };
                    (k, Arc::new(fresh))
                } else {
                    (k, b.clone())
                }
            })
            .collect();
        if found {
            self.publish(entries);
        }
        found
    }

    /// `key` as this table shows it once bound (paths end in `/`); keys
    /// it cannot take are shown as written.
    pub fn display(&self, key: &str) -> String {
        self.kind
            .normalize(key)
            .map_or_else(|_| key.to_owned(), |n| self.kind.display(&n))
    }

    /// Whether two keys are the same key in this table.
    pub fn same_key(&self, a: &str, b: &str) -> bool {
        match (self.kind.normalize(a), self.kind.normalize(b)) {
            (Ok(a), Ok(b)) => a == b,
            _ => a == b,
        }
    }

    fn publish(&self, mut entries: Vec<(Box<str>, Arc<Binding>)>) {
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        let (keys, bindings): (Vec<_>, Vec<_>) = entries.into_iter().unzip();
        self.current
            .store(Arc::new(Index::new(self.kind, bindings, &keys)));
        self.generation.fetch_add(1, Ordering::AcqRel);
    }
}

/// The normalized keys of an index, in binding order.
fn keys_of(index: &Index) -> Vec<Box<str>> {
    let mut keys = vec![Box::<str>::default(); index.bindings.len()];
    for (k, &i) in &index.map {
        keys[i as usize] = k.clone();
    }
    keys
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(kind: KeyKind, keys: &[&str]) -> Table {
        let t = Table::new("test", kind);
        for k in keys {
            t.bind(k, k, "test.x", Arc::new(k.to_string())).unwrap();
        }
        t
    }

    fn found(t: &Table, key: &str) -> Option<String> {
        t.lookup::<String>(key)
    }

    #[test]
    fn paths_match_longest_prefix_on_segment_boundaries() {
        let t = table(
            KeyKind::Path,
            &["/queues/", "/queues/orders/", "/queue", "/topics"],
        );
        assert_eq!(
            found(&t, "/queues/orders/eu").as_deref(),
            Some("/queues/orders/")
        );
        assert_eq!(
            found(&t, "/queues/orders").as_deref(),
            Some("/queues/orders/")
        );
        assert_eq!(found(&t, "/queues/ordersx").as_deref(), Some("/queues/"));
        assert_eq!(found(&t, "/queues/billing").as_deref(), Some("/queues/"));
        assert_eq!(found(&t, "/queues").as_deref(), Some("/queues/"));
        assert_eq!(found(&t, "/queue/x").as_deref(), Some("/queue"));
        assert_eq!(found(&t, "/queuesx/y"), None);
        assert_eq!(found(&t, "/topics/a/b/c").as_deref(), Some("/topics"));
        assert_eq!(found(&t, "/other"), None);
        assert_eq!(found(&t, ""), None);
        assert_eq!(found(&t, "queues/x"), None);
    }

    #[test]
    fn root_path_serves_everything() {
        let t = table(KeyKind::Path, &["/", "/a/"]);
        assert_eq!(found(&t, "/a/b").as_deref(), Some("/a/"));
        assert_eq!(found(&t, "/b/c").as_deref(), Some("/"));
        assert_eq!(found(&t, "/").as_deref(), Some("/"));
    }

    #[test]
    fn mime_falls_back_through_suffix_and_wildcards() {
        let t = table(KeyKind::Mime, &["application/json", "text/*", "*/*"]);
        assert_eq!(
            found(&t, "application/json").as_deref(),
            Some("application/json")
        );
        assert_eq!(
            found(&t, "Application/JSON; charset=utf-8").as_deref(),
            Some("application/json")
        );
        assert_eq!(
            found(&t, "application/vnd.acme+json").as_deref(),
            Some("application/json")
        );
        assert_eq!(
            found(&t, "text/plain;charset=utf-8").as_deref(),
            Some("text/*")
        );
        assert_eq!(found(&t, "image/png").as_deref(), Some("*/*"));
        assert_eq!(found(&t, "garbage").as_deref(), Some("*/*"));
        let t = table(KeyKind::Mime, &["application/json"]);
        assert_eq!(found(&t, "text/plain"), None);
        assert_eq!(found(&t, &"X".repeat(500)), None);
    }

    #[test]
    fn mime_keys_are_validated() {
        let t = Table::new("parser", KeyKind::Mime);
        for bad in ["json", "*/json", "appl*/json", "/x", "a/"] {
            assert!(t.bind(bad, "i", "m", Arc::new(())).is_err(), "{bad}");
        }
    }

    #[test]
    fn two_instances_on_one_key_is_an_error_naming_both() {
        let t = table(KeyKind::Path, &["/queues/"]);
        let e = t
            .bind("/queues", "second", "driver.x", Arc::new(String::new()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("\"/queues/\"") && e.contains("second"), "{e}");
    }

    #[test]
    fn rebinding_bumps_the_generation_and_keeps_old_handles() {
        let t = table(KeyKind::Exact, &["a"]);
        let g = t.generation();
        let old = found(&t, "a").unwrap();
        assert!(t.unbind("a"));
        assert!(!t.unbind("a"));
        assert!(t.generation() > g);
        assert_eq!(found(&t, "a"), None);
        assert_eq!(old, "a");
        t.bind("a", "b", "m", Arc::new("new".to_string())).unwrap();
        assert_eq!(found(&t, "a").as_deref(), Some("new"));
    }

    #[test]
    fn wrong_handle_type_finds_nothing() {
        let t = table(KeyKind::Exact, &["a"]);
        assert_eq!(t.lookup::<u32>("a"), None);
    }
}
