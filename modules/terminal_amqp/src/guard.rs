//! Authentication and authorization, when the instance names an auth
//! instance (`auth = "name"`). Part of the protocol core ([`crate::core`]).
//!
//! At `connection.start-ok`, the SASL response (`PLAIN`: `\0user\0password`;
//! `AMQPLAIN`: a table with `LOGIN` and `PASSWORD`) is authenticated. A
//! `PLAIN` response with an empty user name carries a bearer token in its
//! password (as RabbitMQ's OAuth 2 backend takes one). Refused (bad
//! credentials, or none where the instance wants some): `connection.close`
//! 403 `ACCESS_REFUSED` naming the user, never the password, counted in
//! `bindery_amqp_auth_failures_total` and logged; an instance that cannot
//! judge: 541 `INTERNAL_ERROR`.
//!
//! Then each method that reaches a path is authorized, the decision cached
//! per connection and rules generation: `basic.publish` is `publish` on
//! every path it resolves to, `basic.consume`, `basic.get`, `queue.purge`
//! and `queue.delete` are `consume` on the queue's path, a `queue.declare`
//! that makes a queue needs `consume` or `publish` on its path, and
//! `queue.bind` to a topic exchange `subscribe` on the topic filter's path
//! and `publish` on the queue's (what the binding feeds it). Refused:
//! `channel.close` 403 naming the path.
//!
//! A question the cache cannot answer goes to the auth instance; the frame
//! that asked is left unread (no frame after it is read either) until the
//! answer comes back as a note; the frame is then handled again from the
//! start and finds the answer. So a frame is handled whole or not at all,
//! and frames keep their order.

use std::collections::HashSet;
use std::sync::Arc;

use bindery::{Failure, Note};
use bindery_classes::auth::{
    Action, AuthHandle, Bound, Credentials, Decisions, Identity, Login, Secret,
};
use bindery_classes::connection::{CertificateDer, Io, certificate};
use bytes::Bytes;

use crate::core::{Core, Refusal, code, hard, soft};
use crate::wire::{Reader, Value};

/// Decisions cached per connection at most (paths).
const CACHED: usize = 256;
/// The note tag of a login's answer.
pub(crate) const LOGIN: u64 = u64::MAX - 1;
/// The note tag of an authorization's answer.
pub(crate) const ACCESS: u64 = u64::MAX - 2;

/// A connection's authentication state.
pub(crate) struct Guard {
    /// Who the client is, once logged in.
    pub(crate) identity: Option<Identity>,
    decisions: Decisions,
    /// A question asked and not answered yet.
    asked: Option<Asked>,
    /// Answers to the held frame's questions (kept until it is handled,
    /// so that one the cache cannot keep is not asked again).
    answers: Vec<(Action, String, bool)>,
    /// The answer to the login.
    login: Option<Result<Login, Failure>>,
    /// The server-named queues this connection declared: its own, used
    /// without asking.
    pub(crate) made: HashSet<String>,
    /// With `use_identity_as_username`: the user the verified client
    /// certificate names (`Some(None)`: it names nobody usable; `None`: no
    /// certificate).
    certificate: Option<Option<Arc<str>>>,
}

/// What the auth instance was asked.
enum Asked {
    Login,
    Access(AuthHandle, u64, Action, String),
}

impl Default for Guard {
    fn default() -> Self {
        Guard {
            identity: None,
            decisions: Decisions::new(CACHED),
            asked: None,
            answers: Vec::new(),
            login: None,
            made: HashSet::new(),
            certificate: None,
        }
    }
}

impl Guard {
    /// Waiting for the auth instance: no frame is read meanwhile.
    pub(crate) fn waiting(&self) -> bool {
        self.asked.is_some()
    }

    /// The held frame was handled: its answers are spent.
    pub(crate) fn handled(&mut self) {
        self.answers.clear();
    }
}

/// A refusal that means "asked; hold the frame".
pub(crate) fn held() -> Refusal {
    Refusal {
        code: 0,
        text: String::new(),
        connection: false,
        held: true,
    }
}

/// The user name and secret of a SASL response, for log lines and the
/// auth instance; an error names what is wrong with it.
fn sasl(mechanism: &str, response: &Bytes) -> Result<(String, Secret), String> {
    match mechanism {
        "PLAIN" => {
            // authzid NUL authcid NUL password (RFC 4616).
            let mut parts = response.splitn(3, |&b| b == 0);
            let (_, Some(user), Some(password)) = (parts.next(), parts.next(), parts.next()) else {
                return Err("the PLAIN response is not authzid\\0user\\0password".into());
            };
            let user = String::from_utf8(user.to_vec())
                .map_err(|_| "the PLAIN response's user name is not UTF-8".to_owned())?;
            Ok((user, Secret(password.to_vec())))
        }
        _ => {
            // AMQPLAIN: a field table without its length.
            let mut framed = (response.len() as u32).to_be_bytes().to_vec();
            framed.extend_from_slice(response);
            let table = Reader::new(&framed)
                .table("AMQPLAIN response")
                .map_err(|e| format!("the AMQPLAIN response: {e}"))?;
            let field = |name: &str| {
                table
                    .iter()
                    .find(|(k, _)| k == name)
                    .and_then(|(_, v)| match v {
                        Value::Str(s) | Value::Bytes(s) => Some(s.to_vec()),
                        _ => None,
                    })
            };
            let user = field("LOGIN").ok_or("the AMQPLAIN response has no LOGIN")?;
            let password = field("PASSWORD").ok_or("the AMQPLAIN response has no PASSWORD")?;
            let user = String::from_utf8(user)
                .map_err(|_| "the AMQPLAIN LOGIN is not UTF-8".to_owned())?;
            Ok((user, Secret(password)))
        }
    }
}

impl Core {
    /// At `start-ok`: `Ok` to go on (no auth, or the client logged in);
    /// [`held`] while the auth instance is asked; a refusal closes the
    /// connection.
    pub(crate) fn login(
        &mut self,
        io: &mut Io<'_>,
        mechanism: &str,
        response: &Bytes,
    ) -> Result<(), Refusal> {
        let Some(auth) = self.shared.auth.as_ref().map(Bound::get) else {
            return Ok(());
        };
        if self.guard.identity.is_some() {
            return Ok(());
        }
        if self.shared.config.use_identity_as_username {
            return self.certificate_login(mechanism);
        }
        let (user, secret) = sasl(mechanism, response)
            .map_err(|e| hard(code::ACCESS_REFUSED, format!("ACCESS_REFUSED - {e}")))?;
        let Some(outcome) = self.guard.login.take() else {
            let mut credentials = Credentials {
                peer: self.peer.clone(),
                ..Credentials::default()
            };
            if user.is_empty() && mechanism == "PLAIN" && auth.accepts_tokens() {
                credentials.token = Some(secret);
            } else if !(user.is_empty() && secret.0.is_empty()) {
                credentials.username = Some(user);
                credentials.password = Some(secret);
            }
            self.guard.asked = Some(Asked::Login);
            auth.authenticate(credentials, io.wake().completion::<Login>(LOGIN));
            return Err(held());
        };
        let refused = |why: &str| {
            hard(
                code::ACCESS_REFUSED,
                format!(
                    "ACCESS_REFUSED - login refused for user {user:?} (mechanism {mechanism}): {why}"
                ),
            )
        };
        match outcome {
            Ok(Login::Accepted(who)) => {
                self.guard.identity = Some(who);
                Ok(())
            }
            Ok(Login::BadCredentials) => {
                self.shared.stats.auth_failures.inc();
                tracing::info!(
                    instance = %self.shared.instance,
                    peer = %self.peer,
                    user = ?user,
                    "login failed: bad credentials"
                );
                Err(refused("bad user name or password"))
            }
            Ok(Login::NotAuthorized) => Err(refused("not authorized")),
            Err(f) => {
                tracing::warn!(instance = %self.shared.instance, "auth could not judge a login: {f}");
                Err(hard(
                    541,
                    "INTERNAL_ERROR - authentication is unavailable; try again later",
                ))
            }
        }
    }

    /// The verified client certificate TLS handed over (leaf first): its
    /// name is the user, with `use_identity_as_username`.
    pub(crate) fn certified_by(&mut self, chain: &[CertificateDer<'static>]) {
        if self.shared.config.use_identity_as_username {
            let name = chain.first().and_then(|leaf| certificate::user_name(leaf));
            self.guard.certificate = Some(name.map(Into::into));
        }
    }

    /// A login with `use_identity_as_username`: the certificate says who.
    fn certificate_login(&mut self, mechanism: &str) -> Result<(), Refusal> {
        match &self.guard.certificate {
            Some(Some(user)) => {
                self.guard.identity = Some(Identity {
                    user: Some(user.clone()),
                });
                Ok(())
            }
            Some(None) => {
                self.shared.stats.auth_failures.inc();
                tracing::info!(
                    instance = %self.shared.instance,
                    peer = %self.peer,
                    "login failed: the client certificate names no user"
                );
                Err(hard(
                    code::ACCESS_REFUSED,
                    format!(
                        "ACCESS_REFUSED - login refused (mechanism {mechanism}): the client certificate names no user"
                    ),
                ))
            }
            None => Err(hard(
                code::ACCESS_REFUSED,
                format!(
                    "ACCESS_REFUSED - login refused (mechanism {mechanism}): no client certificate"
                ),
            )),
        }
    }

    /// `Ok` if the client may do `action` on `path`; a 403 channel
    /// refusal naming the path if not; [`held`] while the auth instance is
    /// asked.
    pub(crate) fn allow(
        &mut self,
        io: &mut Io<'_>,
        action: Action,
        path: &str,
    ) -> Result<(), Refusal> {
        match self.permit(io, action, path) {
            Some(true) => Ok(()),
            Some(false) => Err(self.denied(action, path)),
            None => Err(held()),
        }
    }

    /// [`Core::allow`] for queue `name` at `path`, but a server-named
    /// queue this connection made is its own: allowed.
    pub(crate) fn allow_queue(
        &mut self,
        io: &mut Io<'_>,
        action: Action,
        name: &str,
        path: &str,
    ) -> Result<(), Refusal> {
        if self.shared.auth.is_none() || self.own_queue(name) {
            return Ok(());
        }
        self.allow(io, action, path)
    }

    /// Whether `name` is a server-named queue this connection declared.
    pub(crate) fn own_queue(&self, name: &str) -> bool {
        self.guard.made.contains(name)
    }

    /// The 403 for `action` on `path`.
    pub(crate) fn denied(&self, action: Action, path: &str) -> Refusal {
        let user = self
            .guard
            .identity
            .as_ref()
            .and_then(|i| i.user.as_deref())
            .unwrap_or("@anonymous");
        soft(
            code::ACCESS_REFUSED,
            format!(
                "ACCESS_REFUSED - {} on {path} refused to user {user:?}",
                action.as_str()
            ),
        )
    }

    /// Whether the client may do `action` on `path`: `None` when asked.
    pub(crate) fn permit(&mut self, io: &mut Io<'_>, action: Action, path: &str) -> Option<bool> {
        let Some(auth) = self.shared.auth.as_ref().map(Bound::get) else {
            return Some(true);
        };
        if let Some((_, _, a)) = self
            .guard
            .answers
            .iter()
            .find(|(a, p, _)| *a == action && p == path)
        {
            return Some(*a);
        }
        if let Some(d) = self.guard.decisions.get(&auth, action, path) {
            return Some(d);
        }
        let who = self.guard.identity.clone().unwrap_or_default();
        let generation = auth.generation();
        self.guard.asked = Some(Asked::Access(
            auth.clone(),
            generation,
            action,
            path.to_owned(),
        ));
        auth.authorize(&who, action, path, io.wake().completion::<bool>(ACCESS));
        None
    }

    /// A note from the auth instance: the answer to the login or to a
    /// question of access. The held frame is read again after it.
    pub(crate) fn answered(&mut self, note: Note) {
        match self.guard.asked.take() {
            Some(Asked::Login) if note.tag == LOGIN => {
                self.guard.login = Some(match note.take::<Result<Login, Failure>>() {
                    Ok(outcome) => outcome,
                    Err(_) => Err(Failure::new(bindery::FailureKind::Internal, "no answer")),
                });
            }
            Some(Asked::Access(auth, generation, action, path)) if note.tag == ACCESS => {
                let allowed = match note.take::<Result<bool, Failure>>() {
                    Ok(Ok(allowed)) => {
                        self.guard
                            .decisions
                            .put(&auth, generation, action, &path, allowed);
                        allowed
                    }
                    Ok(Err(f)) => {
                        tracing::warn!(instance = %self.shared.instance, "auth could not judge {} on {path}: {f}", action.as_str());
                        false
                    }
                    Err(_) => false,
                };
                self.guard.answers.push((action, path, allowed));
            }
            other => self.guard.asked = other,
        }
    }
}
