//! Authentication and authorization of requests, when the instance names
//! an auth instance (`auth = "name"`). Part of the protocol core
//! ([`crate::core`]).
//!
//! Each request's `Authorization` (Basic or Bearer) is authenticated once
//! per connection, header value and rules generation; each (action, path) is authorized
//! once per connection and rules generation ([`Decisions`]). What is not
//! cached is asked of the auth instance, whose answer comes back as a
//! note; meanwhile the request waits in a [`Slot::Auth`] at the back of the
//! answer order, and no further request is read, so answers keep their
//! order. Missing or wrong credentials: `401` with `WWW-Authenticate:
//! Basic realm="..."` (and `Bearer realm="..."` when the auth instance
//! takes tokens; a refused token gets `Bearer realm="...",
//! error="invalid_token"`, RFC 6750), the same answer whether the user
//! exists or not;
//! authenticated but not allowed: `403`; the auth instance unable to
//! judge: `503`. An event stream ends (a `closed` event) at its first
//! delivery after the rules change; the client subscribes again and is
//! judged by the rules in effect.

use bindery::Failure;
use bindery_classes::auth::{self, Action, AuthHandle, Bound, Decisions, Identity, Login};
use bindery_classes::connection::Io;
use bindery_classes::http::request::Request;
use bindery_classes::http::response;

use crate::core::{Core, Slot};

/// Decisions cached per connection at most (paths).
const CACHED: usize = 256;

/// A connection's authentication state.
#[derive(Debug)]
pub(crate) struct Guard {
    /// The `Authorization` value last authenticated, who it is, and the
    /// rules generation then (a reload authenticates again).
    login: Option<(Option<String>, Identity, u64)>,
    decisions: Decisions,
    /// The rules generation the last subscription was allowed under: an
    /// event stream ends when it moves.
    subscribed_at: Option<u64>,
}

impl Default for Guard {
    fn default() -> Self {
        Guard {
            login: None,
            decisions: Decisions::new(CACHED),
            subscribed_at: None,
        }
    }
}

/// A request waiting for the auth instance.
pub(crate) struct Waiting {
    pub(crate) req: Request,
    pub(crate) close: bool,
    /// The instance asked.
    auth: AuthHandle,
    /// The rules generation when the question was asked.
    generation: u64,
}

/// What a request does, and on which path, for authorization.
fn action_of(req: &Request) -> Option<(Action, &str)> {
    match req.method.as_str() {
        "POST" | "PUT" => Some((Action::Publish, &req.path)),
        "GET" if req.event_stream => Some((Action::Subscribe, &req.path)),
        "GET" => Some((Action::Consume, &req.path)),
        "DELETE" => Some((
            Action::Consume,
            req.path
                .rsplit_once("/messages/")
                .map_or(&req.path, |q| q.0),
        )),
        _ => None,
    }
}

impl Core {
    /// Lets `req` through now (`Some`), or answers it (401, 403) or puts
    /// it in a waiting slot (`None`).
    pub(crate) fn guard(&mut self, io: &mut Io<'_>, req: Request, close: bool) -> Option<Request> {
        let Some(auth) = self.shared.auth.as_ref().map(Bound::get) else {
            return Some(req);
        };
        let Some((action, path)) = action_of(&req) else {
            return Some(req);
        };
        let generation = auth.generation();
        let known = match &self.guard.login {
            Some((header, who, g)) if *header == req.authorization && *g == generation => {
                Some(who.clone())
            }
            _ => None,
        };
        let Some(who) = known else {
            let credentials = match &req.authorization {
                None => Default::default(),
                Some(h) => match auth::from_authorization(h, &self.peer) {
                    Some(c) => c,
                    None => {
                        self.unauthenticated(close, false);
                        return None;
                    }
                },
            };
            let tag = self.tag();
            self.slots.push_back(Slot::Auth {
                tag,
                waiting: Box::new(Waiting {
                    req,
                    close,
                    auth: auth.clone(),
                    generation,
                }),
            });
            auth.authenticate(credentials, io.wake().completion::<Login>(tag));
            return None;
        };
        match self.guard.decisions.get(&auth, action, path) {
            Some(true) => {
                if action == Action::Subscribe {
                    self.guard.subscribed_at = Some(generation);
                }
                Some(req)
            }
            Some(false) => {
                self.forbidden(action, close);
                None
            }
            None => {
                let tag = self.tag();
                let path = path.to_owned();
                self.slots.push_back(Slot::Auth {
                    tag,
                    waiting: Box::new(Waiting {
                        req,
                        close,
                        auth: auth.clone(),
                        generation,
                    }),
                });
                auth.authorize(&who, action, &path, io.wake().completion::<bool>(tag));
                None
            }
        }
    }

    /// Ends the event stream if the rules changed since it was allowed
    /// (the delivery at hand is not sent): the client subscribes again and
    /// is judged by the rules in effect. True if it ended.
    pub(crate) fn stream_revoked(&mut self, io: &mut Io<'_>) -> bool {
        let Some(auth) = self.shared.auth.as_ref().map(Bound::get) else {
            return false;
        };
        if self.guard.subscribed_at == Some(auth.generation()) || self.close_now {
            return self.close_now;
        }
        tracing::info!(
            instance = %self.shared.instance,
            peer = %self.peer,
            "ending an event stream: the access rules changed"
        );
        response::event(
            io.out(),
            "-",
            "closed",
            b"the access rules changed: subscribe again",
        );
        self.close_now = true;
        true
    }

    /// Whether a request waits for the auth instance (no more are read).
    pub(crate) fn authorizing(&self) -> bool {
        matches!(self.slots.back(), Some(Slot::Auth { .. }))
    }

    /// Takes the waiting request `tag`, if it is the one at the back.
    fn take_waiting(&mut self, tag: u64) -> Option<Waiting> {
        match self.slots.back() {
            Some(Slot::Auth { tag: t, .. }) if *t == tag => {}
            _ => return None,
        }
        match self.slots.pop_back() {
            Some(Slot::Auth { waiting, .. }) => Some(*waiting),
            _ => None,
        }
    }

    /// The auth instance's answer to a login.
    pub(crate) fn logged_in(&mut self, io: &mut Io<'_>, tag: u64, outcome: Result<Login, Failure>) {
        let Some(w) = self.take_waiting(tag) else {
            return;
        };
        match outcome {
            Ok(Login::Accepted(who)) => {
                self.guard.login = Some((w.req.authorization.clone(), who, w.generation));
                self.guard.decisions.clear();
                self.resume(io, w.req, w.close);
            }
            Ok(refused) => {
                if refused == Login::BadCredentials {
                    self.shared.stats.auth_failures.inc();
                    let user = w
                        .req
                        .authorization
                        .as_deref()
                        .and_then(|h| auth::from_authorization(h, &self.peer))
                        .and_then(|c| c.username);
                    tracing::info!(
                        instance = %self.shared.instance,
                        peer = %self.peer,
                        user = ?user,
                        "login failed: bad credentials"
                    );
                }
                let bearer = w.req.authorization.as_deref().is_some_and(|h| {
                    h.get(..7)
                        .is_some_and(|s| s.eq_ignore_ascii_case("bearer "))
                });
                self.unauthenticated(w.close, bearer);
            }
            Err(f) => self.auth_unavailable(&f, w.close),
        }
    }

    /// The auth instance's answer to a question of access.
    pub(crate) fn authorized(&mut self, io: &mut Io<'_>, tag: u64, outcome: Result<bool, Failure>) {
        let Some(w) = self.take_waiting(tag) else {
            return;
        };
        let Some((action, path)) = action_of(&w.req) else {
            return;
        };
        match outcome {
            Ok(allowed) => {
                let path = path.to_owned();
                self.guard
                    .decisions
                    .put(&w.auth, w.generation, action, &path, allowed);
                if allowed {
                    self.resume(io, w.req, w.close);
                } else {
                    self.forbidden(action, w.close);
                }
            }
            Err(f) => self.auth_unavailable(&f, w.close),
        }
    }

    /// Runs the request again through the guard (cached now).
    fn resume(&mut self, io: &mut Io<'_>, req: Request, close: bool) {
        if let Some(req) = self.guard(io, req, close) {
            self.route(io, req, close);
        }
    }

    /// 401, with the challenges: Basic, and Bearer if the instance takes
    /// tokens; only Bearer, with `error="invalid_token"`, for a refused
    /// token (`bearer`).
    fn unauthenticated(&mut self, close: bool, bearer: bool) {
        let auth = self.shared.auth.as_ref().map(Bound::get);
        let realm = auth
            .as_ref()
            .map_or("bindery".to_owned(), |a| a.realm().to_owned())
            .replace(['"', '\\'], "");
        let tokens = auth.as_ref().is_some_and(|a| a.accepts_tokens());
        let basic = format!("Basic realm=\"{realm}\"");
        let offer = format!("Bearer realm=\"{realm}\"");
        let invalid = format!("Bearer realm=\"{realm}\", error=\"invalid_token\"");
        let challenges: Vec<(&str, &str)> = if bearer && tokens {
            vec![("WWW-Authenticate", &invalid)]
        } else if tokens {
            vec![("WWW-Authenticate", &basic), ("WWW-Authenticate", &offer)]
        } else {
            vec![("WWW-Authenticate", &basic)]
        };
        let mut out = Vec::new();
        response::text(&mut out, 401, &challenges, "authentication required", close);
        self.slots.push_back(Slot::Ready(out));
    }

    fn forbidden(&mut self, action: Action, close: bool) {
        let mut out = Vec::new();
        let why = format!("not allowed to {} here", action.as_str());
        response::text(&mut out, 403, &[], &why, close);
        self.slots.push_back(Slot::Ready(out));
    }

    fn auth_unavailable(&mut self, f: &Failure, close: bool) {
        tracing::warn!(instance = %self.shared.instance, "auth could not judge a request: {f}");
        let mut out = Vec::new();
        response::text(
            &mut out,
            503,
            &[("Retry-After", "1")],
            "authentication is unavailable",
            close,
        );
        self.slots.push_back(Slot::Ready(out));
    }
}
