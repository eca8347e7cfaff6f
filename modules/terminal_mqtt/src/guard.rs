//! Authentication and authorization, when the instance names an auth
//! instance (`auth = "name"`). Part of the protocol core
//! ([`crate::core`]).
//!
//! CONNECT's username and password are authenticated: bad credentials
//! (an unknown user or a wrong password, indistinguishably) get CONNACK 4,
//! none where the auth instance wants some CONNACK 5, an auth instance
//! that cannot judge CONNACK 3. A will's topic must be publishable by the
//! client (else CONNACK 5). Each PUBLISH topic and SUBSCRIBE filter is
//! authorized, cached per connection and rules generation: a refused
//! filter gets 0x80 in SUBACK and no subscription; a refused QoS 0 publish
//! is dropped, a refused QoS 1 or 2 publish closes the connection (MQTT
//! 3.1.1 has no negative acknowledgement; it allows closing). A
//! persistent session is resumed only by the user who made it.
//!
//! With `use_identity_as_username`, the user is the name in the client
//! certificate TLS verified (its subject CN, else its first DNS or e-mail
//! alternative name: [`bindery_classes::connection::certificate`]), and
//! CONNECT's username and password are ignored, as mosquitto does; the
//! auth instance is not asked to authenticate, only to authorize. No
//! certificate gets CONNACK 5; a certificate naming nobody CONNACK 4.
//!
//! When the rules change (the auth instance's generation moves), each
//! subscription a connection holds is authorized again and cancelled if
//! no longer allowed; so is each of a resumed persistent session.
//!
//! A question the cache cannot answer goes to the auth instance; the
//! packet that asked is held and no further packet is read until the
//! answer comes back as a note, so packets keep their order. The packet
//! is then handled again, and finds the answer.

use std::sync::Arc;

use bindery::{Failure, Note};
use bindery_classes::auth::{
    Action, AuthHandle, Bound, Credentials, Decisions, Identity, Login, Secret,
};
use bindery_classes::connection::{CertificateDer, Io, certificate};

use crate::codec::{Connect, Packet};
use crate::core::Core;
use crate::session::Tag;

/// Decisions cached per connection at most (paths).
const CACHED: usize = 256;

/// A connection's authentication state.
pub(crate) struct Guard {
    /// Who the client is, once CONNECT is accepted.
    pub(crate) identity: Option<Identity>,
    decisions: Decisions,
    /// The packet waiting for an answer.
    pub(crate) held: Option<Packet>,
    /// The filters of a held SUBSCRIBE decided so far.
    pub(crate) decided: Vec<bool>,
    /// The question asked: of which instance, at which generation, what.
    asked: Option<(AuthHandle, u64, Action, String)>,
    /// The answer to it, for the held packet's next turn.
    answer: Option<(Action, String, bool)>,
    /// The rules generation the session's subscriptions were last checked
    /// against (`None`: a resumed session, not checked yet).
    pub(crate) checked: Option<u64>,
    /// Subscriptions still to check against changed rules.
    recheck: Vec<Arc<str>>,
    /// With `use_identity_as_username`: the user the verified client
    /// certificate names (`Some(None)`: it names nobody usable; `None`:
    /// no certificate).
    certificate: Option<Option<Arc<str>>>,
}

impl Default for Guard {
    fn default() -> Self {
        Guard {
            identity: None,
            decisions: Decisions::new(CACHED),
            held: None,
            decided: Vec::new(),
            asked: None,
            answer: None,
            checked: None,
            recheck: Vec::new(),
            certificate: None,
        }
    }
}

/// An authorization, now or later.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Permit {
    Allowed,
    Denied,
    /// Asked; hold the packet until the answer comes.
    Asked,
}

impl Guard {
    /// Waiting for the auth instance: no packet is read meanwhile.
    pub(crate) fn waiting(&self) -> bool {
        self.held.is_some() || self.asked.is_some()
    }
}

impl Core {
    /// Whether the session's subscriptions are checked against the rules
    /// in effect: until they are, nothing queued is sent.
    pub(crate) fn subs_current(&self) -> bool {
        match self.shared.auth.as_ref().map(Bound::get) {
            None => true,
            Some(auth) => {
                self.guard.recheck.is_empty() && self.guard.checked == Some(auth.generation())
            }
        }
    }

    /// After the rules change (or when a persistent session resumes), each
    /// subscription of the session is authorized again; one no longer
    /// allowed is cancelled, and what it queued is not sent.
    pub(crate) fn recheck(&mut self, io: &mut Io<'_>) {
        let (Some(auth), Some(c)) = (self.shared.auth.as_ref().map(Bound::get), &self.connected)
        else {
            return;
        };
        if self.guard.waiting() {
            return;
        }
        let session = c.session.clone();
        let now = auth.generation();
        if self.guard.checked != Some(now) {
            self.guard.checked = Some(now);
            self.guard.recheck = session.state.lock().subs.keys().cloned().collect();
        }
        while let Some(filter) = self.guard.recheck.last().cloned() {
            match self.permit(io, Action::Subscribe, &self.shared.path(&filter)) {
                Permit::Asked => return,
                Permit::Allowed => {}
                Permit::Denied => {
                    let gone = session.state.lock().subs.remove(&filter);
                    // Cancelling takes driver locks: not under the session's.
                    drop(gone);
                    tracing::info!(
                        instance = %self.shared.instance,
                        client = %session.client_id,
                        %filter,
                        "subscription cancelled: the rules no longer allow it"
                    );
                }
            }
            self.guard.recheck.pop();
        }
    }

    /// Whether the client may do `action` on `path`.
    pub(crate) fn permit(&mut self, io: &mut Io<'_>, action: Action, path: &str) -> Permit {
        let Some(auth) = self.shared.auth.as_ref().map(Bound::get) else {
            return Permit::Allowed;
        };
        if let Some((a, p, answer)) = self.guard.answer.take() {
            if a == action && p == path {
                return if answer {
                    Permit::Allowed
                } else {
                    Permit::Denied
                };
            }
        }
        match self.guard.decisions.get(&auth, action, path) {
            Some(true) => Permit::Allowed,
            Some(false) => Permit::Denied,
            None => {
                let who = self.guard.identity.clone().unwrap_or_default();
                let generation = auth.generation();
                self.guard.asked = Some((auth.clone(), generation, action, path.to_owned()));
                let done = io.wake().completion::<bool>(Tag::Authorized.to_u64());
                auth.authorize(&who, action, path, done);
                Permit::Asked
            }
        }
    }

    /// At CONNECT: the packet back to go on with (no auth, or the client
    /// is known and its will allowed); `None` when it is held for an
    /// answer or refused.
    pub(crate) fn admit(&mut self, io: &mut Io<'_>, c: Connect) -> Option<Connect> {
        if self.shared.config.use_identity_as_username && self.guard.identity.is_none() {
            match &self.guard.certificate {
                Some(Some(user)) => {
                    self.guard.identity = Some(Identity {
                        user: Some(user.clone()),
                    });
                }
                Some(None) => {
                    self.shared.stats.auth_failures.inc();
                    tracing::info!(
                        instance = %self.shared.instance,
                        peer = %self.peer,
                        "login failed: the client certificate names no user"
                    );
                    let _ = self.refuse(io, 4, "the client certificate names no user");
                    return None;
                }
                None => {
                    let _ = self.refuse(io, 5, "no client certificate");
                    return None;
                }
            }
        }
        if !self.logged_in(io, &c) {
            self.guard.held = Some(Packet::Connect(Box::new(c)));
            return None;
        }
        if let Some(will) = &c.will {
            match self.permit(io, Action::Publish, &self.shared.path(&will.topic)) {
                Permit::Allowed => {}
                Permit::Denied => {
                    let _ = self.refuse(io, 5, "the will's topic is not allowed");
                    return None;
                }
                Permit::Asked => {
                    self.guard.held = Some(Packet::Connect(Box::new(c)));
                    return None;
                }
            }
        }
        Some(c)
    }

    /// The client certificate TLS verified (leaf first): its name is the
    /// user, with `use_identity_as_username`.
    pub(crate) fn certified_by(&mut self, chain: &[CertificateDer<'static>]) {
        if self.shared.config.use_identity_as_username {
            let name = chain.first().and_then(|leaf| certificate::user_name(leaf));
            self.guard.certificate = Some(name.map(Into::into));
        }
    }

    /// A note from the auth instance: the answer to a login or a question
    /// of access.
    pub(crate) fn answered(&mut self, io: &mut Io<'_>, note: Note) {
        let note = match note.take::<Result<Login, Failure>>() {
            Ok(outcome) => return self.login_answered(io, outcome),
            Err(note) => note,
        };
        if let Ok(outcome) = note.take::<Result<bool, Failure>>() {
            self.access_answered(io, outcome);
        }
    }

    /// At CONNECT: `true` to go on (no auth, or already authenticated);
    /// `false` when the CONNECT is held for the auth instance's answer.
    fn logged_in(&mut self, io: &mut Io<'_>, c: &Connect) -> bool {
        let Some(auth) = self.shared.auth.as_ref().map(Bound::get) else {
            return true;
        };
        if self.guard.identity.is_some() {
            return true;
        }
        let credentials = Credentials {
            username: c.username.clone(),
            password: c.password.as_ref().map(|p| Secret(p.to_vec())),
            token: None,
            peer: self.peer.clone(),
        };
        auth.authenticate(
            credentials,
            io.wake().completion::<Login>(Tag::Login.to_u64()),
        );
        false
    }

    /// The auth instance's answer to CONNECT.
    fn login_answered(&mut self, io: &mut Io<'_>, outcome: Result<Login, Failure>) {
        let Some(Packet::Connect(c)) = self.guard.held.take() else {
            return;
        };
        let (code, why) = match outcome {
            Ok(Login::Accepted(who)) => {
                self.guard.identity = Some(who);
                return self.rehandle(io, Packet::Connect(c));
            }
            Ok(Login::BadCredentials) => {
                self.shared.stats.auth_failures.inc();
                tracing::info!(
                    instance = %self.shared.instance,
                    peer = %self.peer,
                    user = ?c.username,
                    "login failed: bad credentials"
                );
                (4, "bad user name or password")
            }
            Ok(Login::NotAuthorized) => (5, "not authorized"),
            Err(f) => {
                tracing::warn!(instance = %self.shared.instance, "auth could not judge a CONNECT: {f}");
                (3, "authentication unavailable")
            }
        };
        let _ = self.refuse(io, code, why);
    }

    /// The auth instance's answer to a question of access.
    fn access_answered(&mut self, io: &mut Io<'_>, outcome: Result<bool, Failure>) {
        let Some((auth, generation, action, path)) = self.guard.asked.take() else {
            return;
        };
        let allowed = match outcome {
            Ok(allowed) => {
                self.guard
                    .decisions
                    .put(&auth, generation, action, &path, allowed);
                allowed
            }
            Err(f) => {
                tracing::warn!(instance = %self.shared.instance, "auth could not judge {} on {path}: {f}", action.as_str());
                false
            }
        };
        self.guard.answer = Some((action, path, allowed));
        match self.guard.held.take() {
            Some(p) => self.rehandle(io, p),
            None => self.recheck(io),
        }
    }

    /// Handles a held packet again, now that its answer is in.
    fn rehandle(&mut self, io: &mut Io<'_>, p: Packet) {
        if let Err(why) = self.handle(io, p) {
            self.close(true, &why);
        }
    }
}
