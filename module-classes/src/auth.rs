//! The auth class: who a connection is, and what it may do on which path.
//!
//! A terminal whose configuration names an auth instance (`auth = "name"`,
//! looked up once, by name, like its dispatcher) asks it two things:
//!
//! - [`Auth::authenticate`]: the credentials a client presented (MQTT
//!   username and password, HTTP Basic or Bearer) give an [`Identity`], or
//!   a [`Login`] refusal: [`Login::BadCredentials`] (the terminal answers
//!   CONNACK 4 / HTTP 401) or [`Login::NotAuthorized`] (CONNACK 5 / 401);
//! - [`Auth::authorize`]: may this identity [`Action::Publish`],
//!   [`Action::Subscribe`] or [`Action::Consume`] on this kernel path (a
//!   topic filter with `+` and `#` for MQTT subscriptions)?
//!
//! A terminal with no `auth` allows everything, as before the class
//! existed, and pays nothing for it.
//!
//! # Implementing
//!
//! - Both methods return at once and complete their [`Completion`] later,
//!   from any thread: an implementation that asks a remote service or
//!   verifies a slow password hash does it off the reactor (a worker
//!   thread), so no reactor ever waits.
//! - A refusal never says whether a user exists: an unknown user and a
//!   wrong password are both [`Login::BadCredentials`], and take about as
//!   long.
//! - A [`Failure`](bindery::Failure) means "cannot judge now" (a service
//!   down): terminals answer it as unavailable (CONNACK 3, HTTP 503), never
//!   as allowed.
//! - [`Auth::generation`] changes whenever the rules change (a reload),
//!   and differs between incarnations (a process-wide counter): terminals
//!   cache decisions per connection ([`Decisions`]) and drop them when it
//!   moves. Terminals follow the binding ([`Bound`]), so a restarted or
//!   reconfigured instance answers from its next question on.
//! - Never log a password or token.
//!
//! # Threading
//!
//! Called from every reactor at once; must not block.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use bindery::{BoxError, Completion, InstanceContext, Registrar, Runtime, Table};
use parking_lot::RwLock;

/// A secret a client presented (password, token): its bytes never show in
/// `Debug` output or logs.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(pub Vec<u8>);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// What a client presented to prove who it is.
#[derive(Clone, Debug, Default)]
pub struct Credentials {
    /// The user name (MQTT username, HTTP Basic user).
    pub username: Option<String>,
    /// The password (MQTT password, HTTP Basic password).
    pub password: Option<Secret>,
    /// A bearer token (HTTP `Authorization: Bearer`).
    pub token: Option<Secret>,
    /// The peer's address, for log lines.
    pub peer: String,
}

impl Credentials {
    /// Nothing was presented.
    pub fn is_empty(&self) -> bool {
        self.username.is_none() && self.password.is_none() && self.token.is_none()
    }
}

/// Who a connection is, once authenticated.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Identity {
    /// The user's name; `None` for an anonymous connection (allowed by the
    /// auth instance without credentials).
    pub user: Option<Arc<str>>,
}

impl Identity {
    /// The identity of `user`.
    pub fn user(user: &str) -> Identity {
        Identity {
            user: Some(user.into()),
        }
    }

    /// An anonymous identity.
    pub fn anonymous() -> Identity {
        Identity { user: None }
    }
}

/// The outcome of [`Auth::authenticate`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Login {
    /// Authenticated as this identity.
    Accepted(Identity),
    /// The credentials are wrong: an unknown user or a wrong password,
    /// indistinguishably.
    BadCredentials,
    /// No credentials, and anonymous connections are not allowed.
    NotAuthorized,
}

/// What a connection wants to do on a path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    /// Send messages to the path (HTTP `POST`, MQTT `PUBLISH`).
    Publish = 0,
    /// Receive what is published on the path or filter (MQTT `SUBSCRIBE`,
    /// an HTTP event stream).
    Subscribe = 1,
    /// Take and acknowledge messages from a queue (HTTP `GET`, `DELETE`).
    Consume = 2,
}

impl Action {
    /// The action's name in rules and log lines.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Publish => "publish",
            Action::Subscribe => "subscribe",
            Action::Consume => "consume",
        }
    }
}

/// Authenticates connections and authorizes what they do.
pub trait Auth: Send + Sync + 'static {
    /// Who presented `credentials`; completes with a [`Login`].
    fn authenticate(&self, credentials: Credentials, done: Completion<Login>);

    /// Whether `who` may do `action` on `path` (a kernel path; for
    /// [`Action::Subscribe`] possibly a filter with `+` and `#`).
    fn authorize(&self, who: &Identity, action: Action, path: &str, done: Completion<bool>);

    /// Changes whenever the rules change: cached decisions older than it
    /// are dropped.
    fn generation(&self) -> u64 {
        0
    }

    /// The realm named in HTTP `WWW-Authenticate`.
    fn realm(&self) -> &str {
        "bindery"
    }

    /// Whether bearer tokens ([`Credentials::token`]) can let anyone in:
    /// HTTP then offers `Bearer` beside `Basic` in `WWW-Authenticate`.
    /// An implementation that says false answers every token
    /// [`Login::BadCredentials`].
    fn accepts_tokens(&self) -> bool {
        false
    }
}

/// An auth instance as the binding table holds it.
pub type AuthHandle = Arc<dyn Auth>;

/// Registers an auth module's factory. Instances bind by name; with no
/// `bind` they are `default`.
pub fn register<A, F>(reg: &mut Registrar<'_, crate::class::Auth>, make: F)
where
    A: Auth,
    F: Fn(&InstanceContext) -> Result<A, BoxError> + Send + Sync + 'static,
{
    reg.register(move |cx| make(cx).map(|a| Arc::new(a) as AuthHandle));
    reg.default_keys(&["default"]);
}

/// The auth instance named `name`, or an error saying none is bound (for
/// a terminal's start hook).
pub fn require(rt: &Runtime, name: &str) -> Result<AuthHandle, BoxError> {
    lookup(rt, name).ok_or_else(|| {
        format!("no auth instance is bound to {name:?} (set `auth` in the instance's config)")
            .into()
    })
}

/// The auth instance named `name`.
pub fn lookup(rt: &Runtime, name: &str) -> Option<AuthHandle> {
    rt.lookup::<AuthHandle>(crate::class::AUTH, name)
}

/// A terminal's auth instance, found by name once and followed through
/// the binding table: when the instance is restarted or made anew by a
/// reload (a changed configuration), the next question goes to the new
/// incarnation. Cheap to ask: an atomic load while nothing changed.
pub struct Bound {
    name: String,
    /// `None`: a fixed instance ([`Bound::fixed`]).
    table: Option<Arc<Table>>,
    current: RwLock<(u64, AuthHandle)>,
}

impl fmt::Debug for Bound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bound").field("name", &self.name).finish()
    }
}

impl Bound {
    /// The auth instance named `name`, or an error saying none is bound
    /// (for a terminal's start hook).
    pub fn require(rt: &Runtime, name: &str) -> Result<Bound, BoxError> {
        let handle = require(rt, name)?;
        let table = rt
            .table(crate::class::AUTH)
            .ok_or("no auth module is linked")?
            .clone();
        Ok(Bound {
            name: name.to_owned(),
            current: RwLock::new((table.generation(), handle)),
            table: Some(table),
        })
    }

    /// An instance bound in no table, always the same (tests, embedding).
    pub fn fixed(handle: AuthHandle) -> Bound {
        Bound {
            name: String::new(),
            table: None,
            current: RwLock::new((0, handle)),
        }
    }

    /// The instance bound now (the last one found, if the name was
    /// unbound since).
    pub fn get(&self) -> AuthHandle {
        let Some(table) = &self.table else {
            return self.current.read().1.clone();
        };
        let now = table.generation();
        {
            let current = self.current.read();
            if current.0 == now {
                return current.1.clone();
            }
        }
        let mut current = self.current.write();
        if let Some(h) = table.lookup::<AuthHandle>(&self.name) {
            *current = (now, h);
        }
        current.1.clone()
    }
}

/// A connection's cache of decisions, per (action, path), bounded: the
/// hot path asks the auth instance once per path and generation.
#[derive(Debug)]
pub struct Decisions {
    /// The instance (its address) and its generation the decisions are of.
    generation: (usize, u64),
    /// By path: the decision per action (indexed by `Action as usize`).
    map: HashMap<Box<str>, [Option<bool>; 3]>,
    cap: usize,
}

impl Decisions {
    /// An empty cache of at most `cap` paths (cleared when full).
    pub fn new(cap: usize) -> Decisions {
        Decisions {
            generation: (0, 0),
            map: HashMap::new(),
            cap: cap.max(1),
        }
    }

    /// The cached decision, if it is of this instance of `auth` and its
    /// current generation.
    pub fn get(&mut self, auth: &AuthHandle, action: Action, path: &str) -> Option<bool> {
        let now = (Arc::as_ptr(auth) as *const () as usize, auth.generation());
        if now != self.generation {
            self.map.clear();
            self.generation = now;
            return None;
        }
        self.map.get(path).and_then(|d| d[action as usize])
    }

    /// Remembers a decision `auth` made at `generation` (read before
    /// asking).
    pub fn put(
        &mut self,
        auth: &AuthHandle,
        generation: u64,
        action: Action,
        path: &str,
        allowed: bool,
    ) {
        let generation = (Arc::as_ptr(auth) as *const () as usize, generation);
        if generation != self.generation {
            self.map.clear();
            self.generation = generation;
        }
        if !self.map.contains_key(path) && self.map.len() >= self.cap {
            self.map.clear();
        }
        self.map.entry(path.into()).or_default()[action as usize] = Some(allowed);
    }

    /// Forgets everything (the connection's identity changed).
    pub fn clear(&mut self) {
        self.map.clear();
    }
}

/// Decodes an HTTP `Authorization` header into credentials: `Basic`
/// (base64 `user:password`) or `Bearer` (a token). `None` if the header is
/// neither or malformed.
pub fn from_authorization(header: &str, peer: &str) -> Option<Credentials> {
    let (scheme, rest) = header.trim().split_once(' ')?;
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("basic") {
        let raw = base64_decode(rest)?;
        let colon = raw.iter().position(|&b| b == b':')?;
        let user = String::from_utf8(raw[..colon].to_vec()).ok()?;
        return Some(Credentials {
            username: Some(user),
            password: Some(Secret(raw[colon + 1..].to_vec())),
            token: None,
            peer: peer.to_owned(),
        });
    }
    if scheme.eq_ignore_ascii_case("bearer") && !rest.is_empty() {
        return Some(Credentials {
            token: Some(Secret(rest.as_bytes().to_vec())),
            peer: peer.to_owned(),
            ..Credentials::default()
        });
    }
    None
}

/// Standard base64 with padding (RFC 4648), as HTTP Basic uses it.
fn base64_decode(s: &str) -> Option<Vec<u8>> {
    fn val(c: u8) -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    }
    let s = s.as_bytes();
    if s.len() % 4 != 0 {
        return None;
    }
    let mut out = Vec::with_capacity(s.len() / 4 * 3);
    for (i, chunk) in s.chunks(4).enumerate() {
        let last = i == s.len() / 4 - 1;
        let pad = chunk.iter().rev().take_while(|&&c| c == b'=').count();
        if pad > 2 || (pad > 0 && !last) {
            return None;
        }
        let mut n = 0u32;
        for &c in &chunk[..4 - pad] {
            n = n << 6 | val(c)?;
        }
        n <<= 6 * pad as u32;
        let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&bytes[..3 - pad]);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_basic_and_bearer() {
        // "alice:s3cr:et" in base64.
        let c = from_authorization("Basic YWxpY2U6czNjcjpldA==", "p").unwrap();
        assert_eq!(c.username.as_deref(), Some("alice"));
        assert_eq!(c.password.unwrap().0, b"s3cr:et");
        let c = from_authorization("bearer abc.def", "p").unwrap();
        assert_eq!(c.token.unwrap().0, b"abc.def");
        assert!(from_authorization("Basic !!!!", "p").is_none());
        assert!(from_authorization("Basic YWJj", "p").is_none()); // no colon
        assert!(from_authorization("Digest x", "p").is_none());
        assert_eq!(base64_decode("YQ==").unwrap(), b"a");
        assert_eq!(base64_decode("YWI=").unwrap(), b"ab");
        assert!(base64_decode("Y===").is_none());
    }

    #[test]
    fn decisions_follow_the_generation_and_stay_bounded() {
        struct Gen(std::sync::atomic::AtomicU64);
        impl Auth for Gen {
            fn authenticate(&self, _: Credentials, _: Completion<Login>) {}
            fn authorize(&self, _: &Identity, _: Action, _: &str, _: Completion<bool>) {}
            fn generation(&self) -> u64 {
                self.0.load(std::sync::atomic::Ordering::Relaxed)
            }
        }
        let counter = Arc::new(Gen(0.into()));
        let auth: AuthHandle = counter.clone();
        let mut d = Decisions::new(2);
        assert_eq!(d.get(&auth, Action::Publish, "/a"), None);
        d.put(&auth, 0, Action::Publish, "/a", true);
        assert_eq!(d.get(&auth, Action::Publish, "/a"), Some(true));
        assert_eq!(d.get(&auth, Action::Subscribe, "/a"), None);
        d.put(&auth, 0, Action::Publish, "/b", false);
        d.put(&auth, 0, Action::Publish, "/c", false);
        assert!(d.map.len() <= 2);
        counter.0.store(1, std::sync::atomic::Ordering::Relaxed);
        assert_eq!(d.get(&auth, Action::Publish, "/c"), None);
        // Another instance, same generation: its own decisions.
        d.put(&auth, 1, Action::Publish, "/c", true);
        let other: AuthHandle = Arc::new(Gen(1.into()));
        assert_eq!(d.get(&other, Action::Publish, "/c"), None);
    }

    #[test]
    fn secrets_do_not_print() {
        let c = from_authorization("Basic YWxpY2U6aHVudGVyMg==", "p").unwrap();
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}
