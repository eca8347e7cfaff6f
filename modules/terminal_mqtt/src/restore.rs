//! The terminal's side of persistence ([`crate::persist`]): what is
//! written when, and what start reads back. Without `persistence` these
//! keep everything in memory as before (most do nothing). A little over
//! 400 lines: every write of the list below, kept together.
//!
//! - Start ([`Shared::load`]): retained messages, then persistent
//!   sessions (owner, subscriptions made again on the drivers, the durable
//!   queue subscribed), all before the terminal listens.
//! - A persistent session made, subscribing or unsubscribing: a session
//!   record ([`Shared::save_session`]).
//! - A persistent session replaced by a clean one, ended by a driver, or
//!   expired ([`Shared::forget`]): a `gone` record, its queue emptied.
//! - An inbound QoS 1 or 2 publish ([`Shared::store_copies`]): a copy
//!   in the durable queue of every persistent session it is for; the
//!   PUBACK or PUBREC waits for them. A message from elsewhere (HTTP) is
//!   copied as the topic driver delivers it to the session
//!   ([`crate::persist::Store::copy`]).
//! - A stored QoS 2 message PUBREC'd ([`Shared::release_stored`]): the
//!   session record keeps its packet id, then it is acked, then PUBREL.
//! - The instance stopping ([`Shared::release_all`]): leases given back.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bindery::{Completion, Failure, FailureKind};
use bindery_classes::driver::{Receipt, SubscribeOptions};
use bindery_classes::{Consumer, Delivery, Message, MessageId, Subscription};

use crate::Shared;
use crate::codec::QoS;
use crate::persist::{self, Join};
use crate::rewire::{self, Job};
use crate::session::{Queued, Session, Sub};

impl Shared {
    /// A new session for `client_id`, with its durable queue when it is
    /// persistent and the instance has a store.
    pub(crate) fn new_session(&self, client_id: String, clean: bool) -> Arc<Session> {
        let queue = self
            .store
            .as_ref()
            .map(|s| (s.clone(), s.queue_path(&client_id)));
        Session::new(
            client_id,
            clean,
            (self.config.max_queued, self.config.max_queued_bytes),
            self.stats.dropped.clone(),
            queue,
        )
    }

    /// Subscribes `session` to `filter` on the driver bound there; false
    /// if the filter is not valid or no driver takes it.
    pub(crate) fn attach_sub(&self, session: &Arc<Session>, filter: &str, qos: QoS) -> bool {
        if !bindery_classes::topic::valid_filter(filter) {
            return false;
        }
        let key: Arc<str> = filter.into();
        let Some((subscription, serial)) = self.subscribe_for(session, &key) else {
            return false;
        };
        let old = session.state.lock().subs.insert(
            key,
            Sub {
                qos,
                subscription,
                serial,
            },
        );
        drop(old);
        true
    }

    /// Subscribes `session` for `filter` on the driver bound at its path.
    fn subscribe_for(
        &self,
        session: &Arc<Session>,
        filter: &Arc<str>,
    ) -> Option<(Arc<Subscription>, u64)> {
        let path = self.path(filter);
        let driver = self.dispatcher.driver(&path).ok()?;
        let options = SubscribeOptions {
            credit: self.config.max_queued as u32,
            lease: Duration::from_secs(60),
        };
        let serial = rewire::serial();
        let wiring = (Arc::downgrade(&driver), self.rewire.clone(), serial);
        // The driver may deliver at once: never call it under the session lock.
        let consumer = session.consumer(
            filter.clone(),
            (&self.instance, &self.via, &self.root),
            wiring,
        );
        let subscription = driver.subscribe(&path, consumer, options).ok()?;
        Some((Arc::new(subscription), serial))
    }

    /// Makes `session`'s subscription to `filter` (numbered `serial`,
    /// ended with its driver's instance) again on what is bound there
    /// now: true once made, or once the session has replaced or dropped
    /// it meanwhile.
    pub(crate) fn replace_sub(
        &self,
        session: &Arc<Session>,
        filter: &Arc<str>,
        qos: QoS,
        serial: u64,
    ) -> bool {
        let Some((subscription, new)) = self.subscribe_for(session, filter) else {
            return false;
        };
        let fresh = Sub {
            qos,
            subscription,
            serial: new,
        };
        let old = match session.state.lock().subs.get_mut(filter) {
            Some(s) if s.serial == serial => std::mem::replace(s, fresh),
            _ => fresh, // replaced or dropped meanwhile: this one goes
        };
        drop(old);
        true
    }

    /// Subscribes a persistent session to its durable queue: what it holds
    /// comes into the session's queue as the client takes it. If no
    /// durable driver serves the store's prefix just now, tried again
    /// ([`crate::rewire`]).
    pub(crate) fn open_queue(&self, session: &Arc<Session>) {
        if !self.try_open_queue(session) {
            let serial = session.state.lock().store_serial;
            self.rewire.later(Job::Queue {
                session: Arc::downgrade(session),
                serial,
            });
        }
    }

    /// [`Shared::open_queue`] once: false if no durable driver is bound
    /// at the store's prefix (or it refuses).
    fn try_open_queue(&self, session: &Arc<Session>) -> bool {
        let (Some(store), Some(path)) = (&self.store, &session.queue_path) else {
            return true;
        };
        let Some(driver) = store.current() else {
            return false;
        };
        let weak = Arc::downgrade(session);
        let root = self.root.clone();
        let (serial, gone, rewire) = (
            rewire::serial(),
            Arc::downgrade(&driver),
            self.rewire.clone(),
        );
        let consumer = Consumer::new(move |d| match (weak.upgrade(), d) {
            (Some(s), Delivery::Message(mut m)) => {
                if let Some(t) = persist::header(&m, persist::TOPIC) {
                    m.destination = format!("{root}{t}").into();
                }
                s.push(Queued {
                    message: m,
                    filter: "".into(),
                    retain: false,
                    stored: true,
                });
            }
            // Closed as the driver's instance stops: read again from what
            // is bound next. Otherwise the session stays, and so do its
            // messages.
            (Some(_), Delivery::Closed(_)) if rewire::instance_gone(&gone) => {
                rewire.later(Job::Queue {
                    session: weak.clone(),
                    serial,
                });
            }
            _ => {}
        })
        .named(format!(
            "{}: mqtt client {:?} (stored)",
            self.instance, session.client_id
        ));
        // In flight from an earlier reading: read again, and skipped
        // (`Session::push`), so they take credit of their own.
        let again = session
            .state
            .lock()
            .inflight
            .values()
            .filter(|i| i.stored)
            .count();
        let options = SubscribeOptions {
            credit: (self.config.max_inflight.max(1) + again) as u32,
            lease: persist::LEASE,
        };
        match driver.subscribe(path, consumer, options) {
            Ok(sub) => {
                let mut st = session.state.lock();
                st.store_sub = Some(Arc::new(sub));
                st.store_serial = serial;
                true
            }
            Err(f) => {
                tracing::warn!(
                    instance = %self.instance,
                    client = %session.client_id,
                    "cannot read the session's stored messages: {f}"
                );
                false
            }
        }
    }

    /// Reads `session`'s durable queue again after its subscription
    /// (numbered `serial`) ended with the driver's instance: what waited
    /// unsent from the last reading is dropped, as the new one delivers it
    /// again. True once done or no longer needed.
    pub(crate) fn reopen_queue(&self, session: &Arc<Session>, serial: u64) -> bool {
        let old = {
            let mut st = session.state.lock();
            if st.store_serial != serial {
                return true;
            }
            st.queue.retain(|q| !q.stored);
            st.store_sub.take()
        };
        drop(old);
        let made = self.try_open_queue(session);
        if made {
            tracing::info!(
                instance = %self.instance,
                client = %session.client_id,
                "reading the session's stored messages again after its driver instance was replaced"
            );
        }
        made
    }

    /// Settles message `id` of `session`'s durable queue: the client has
    /// it (or no subscription wants it any more).
    pub(crate) fn settle(&self, session: &Session, id: MessageId) {
        if let (Some(store), Some(path)) = (&self.store, &session.queue_path) {
            let _ = session
                .pending
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                    Some(n.saturating_sub(1))
                });
            store.ack_queued(path, id);
        }
    }

    /// [`Shared::settle`], completing `done` once the ack is kept.
    pub(crate) fn settle_then(&self, session: &Session, id: MessageId, done: Completion<()>) {
        match (&self.store, &session.queue_path) {
            (Some(store), Some(path)) => {
                let _ = session
                    .pending
                    .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                        Some(n.saturating_sub(1))
                    });
                store.driver().ack(path, id, done);
            }
            _ => done.succeed(()),
        }
    }

    /// Writes `session`'s record (persistent sessions, with a store).
    pub(crate) fn save_session(&self, session: &Session) {
        self.save_session_then(session, None);
    }

    /// [`Shared::save_session`]; `done` completes once it is stored (at
    /// once without a store).
    pub(crate) fn save_session_then(&self, session: &Session, done: Option<Completion<Receipt>>) {
        let Some(store) = self.store.as_ref().filter(|_| session.queue_path.is_some()) else {
            if let Some(done) = done {
                done.fail(Failure::new(FailureKind::Unsupported, "no store"));
            }
            return;
        };
        let (owner, subs, released, sent, incoming) = {
            let st = session.state.lock();
            let subs = st.subs.iter().map(|(f, s)| (f.clone(), s.qos)).collect();
            let released = st.released.iter().map(|(&p, &m)| (p, m)).collect();
            let sent = st.sent.iter().map(|(&p, &m)| (p, m)).collect();
            let incoming = st.incoming_qos2.iter().copied().collect();
            (st.owner.clone(), subs, released, sent, incoming)
        };
        let record = persist::SessionRecord {
            owner: owner.as_deref(),
            subs,
            released,
            sent,
            incoming,
        };
        store.session(&session.client_id, Some(record), done);
    }

    /// The client PUBREC'd stored QoS 2 message `id` sent as `packet_id`:
    /// the session record says so, then the message is acked in its
    /// queue, then `done` completes (and PUBREL may go). A restart
    /// between the two finds the message in the record and acks it.
    pub(crate) fn release_stored(
        self: &Arc<Self>,
        session: &Arc<Session>,
        packet_id: u16,
        id: MessageId,
        done: Completion<()>,
    ) {
        {
            let mut st = session.state.lock();
            st.released.insert(packet_id, id);
            st.sent.remove(&packet_id);
        }
        let (me, s) = (self.clone(), session.clone());
        let saved = Completion::new(move |r: Result<Receipt, Failure>| match r {
            Ok(_) => me.settle_then(&s, id, done),
            Err(f) => done.fail(f),
        });
        self.save_session_then(session, Some(saved));
    }

    /// PUBCOMP for a released stored message: the record forgets it.
    pub(crate) fn completed(&self, session: &Session, packet_id: u16) {
        if session.state.lock().released.remove(&packet_id).is_some() {
            self.save_session(session);
        }
    }

    /// A persistent session is over: its subscriptions end and, with a
    /// store, its record says so and its queue is emptied. Not while the
    /// server stops (sessions end then only because drivers stop).
    pub(crate) fn forget(&self, session: &Arc<Session>) {
        let (subs, store_sub, held) = {
            let mut st = session.state.lock();
            let held = st.stored_ids();
            st.queue.clear();
            st.inflight.clear();
            (std::mem::take(&mut st.subs), st.store_sub.take(), held)
        };
        drop(subs);
        drop(store_sub);
        let (Some(store), Some(path)) = (&self.store, &session.queue_path) else {
            return;
        };
        if self.stopping.load(Ordering::Acquire)
            || self.runtime.as_ref().is_some_and(|r| r.is_stopping())
        {
            return;
        }
        for id in held {
            store.ack_queued(path, id);
        }
        store.session(&session.client_id, None, None);
        // (The record says it is gone: a restart empties its queue again.)
        store.purge(&session.client_id);
    }

    /// The instance stops (the server runs on, or it stops too): stored
    /// records and messages held leased are given back, so the next
    /// incarnation reads them all.
    pub(crate) fn release_all(&self) {
        let Some(store) = &self.store else { return };
        store.release_records();
        for s in self.sessions.all() {
            let Some(path) = &s.queue_path else { continue };
            let (sub, held) = {
                let mut st = s.state.lock();
                let held = st.stored_ids();
                st.queue.retain(|q| !q.stored);
                st.inflight.retain(|_, i| !i.stored);
                (st.store_sub.take(), held)
            };
            drop(sub);
            for id in held {
                let _ = store.driver().release(path, id);
            }
        }
    }

    /// A CONNECT asked for a new persistent session past `max_sessions`:
    /// counted, and logged (the 1st, 2nd, 4th, 8th...).
    pub(crate) fn session_refused(&self, client_id: &str, peer: &str) {
        self.stats.sessions_refused.inc();
        let n = self.stats.sessions_refused.get();
        if n.is_power_of_two() {
            tracing::warn!(
                instance = %self.instance,
                client = ?client_id,
                peer,
                refused = n,
                max_sessions = self.config.max_sessions,
                "new persistent session refused (CONNACK 3): the instance keeps its max_sessions"
            );
        }
    }

    /// Ends the sessions past their expiry.
    pub(crate) fn expire_sessions(&self) {
        for s in self.sessions.expired(self.config.session_expiry_secs) {
            tracing::debug!(instance = %self.instance, client = %s.client_id, "session expired");
            if !s.clean {
                self.forget(&s);
            }
        }
    }

    /// The persistent sessions (with a store) a publish to `topic` at
    /// `qos` is stored for, each with the QoS it is stored at.
    pub(crate) fn store_targets(&self, topic: &str, qos: QoS) -> Vec<(Arc<Session>, QoS)> {
        if self.store.is_none() || qos == 0 {
            return Vec::new();
        }
        self.sessions.storing(topic, qos)
    }

    /// Stores a copy of `message` in the durable queue of each of
    /// `targets`, each a part of `join` (a session at its `max_queued` is
    /// skipped, counted as dropped).
    pub(crate) fn store_copies(
        &self,
        topic: &str,
        targets: Vec<(Arc<Session>, QoS)>,
        message: &Message,
        join: &Arc<Join>,
    ) {
        let Some(store) = &self.store else { return };
        for (s, q) in &targets {
            let part = join.part(false, true);
            let Some(path) = &s.queue_path else {
                part.fail(Failure::new(FailureKind::Full, "no queue"));
                continue;
            };
            if s.pending.fetch_add(1, Ordering::AcqRel) >= self.config.max_queued {
                s.pending.fetch_sub(1, Ordering::AcqRel);
                s.dropped.inc();
                part.fail(Failure::new(FailureKind::Full, "session queue full"));
                continue;
            }
            let mut copy = message.clone();
            copy.id = MessageId::next();
            copy.destination = path.as_str().into();
            let mut headers = self.qos_headers[usize::from(*q)].to_vec();
            headers.push((persist::TOPIC.into(), topic.into()));
            copy.headers = headers.into();
            let session = s.clone();
            store.driver().publish(
                copy,
                Completion::new(move |r: Result<Receipt, Failure>| {
                    if let Err(f) = &r {
                        session.pending.fetch_sub(1, Ordering::AcqRel);
                        if matches!(f.kind, FailureKind::Full | FailureKind::Capacity) {
                            session.dropped.inc();
                        }
                    }
                    // A driver at its cap of queues is a full session
                    // queue here: dropped and counted, the publish goes on.
                    let r = r.map_err(|f| match f.kind {
                        FailureKind::Capacity => Failure::new(FailureKind::Full, f.reason),
                        _ => f,
                    });
                    part.complete(r);
                }),
            );
        }
    }

    /// Reads the store back (start, before listening).
    pub(crate) fn load(&self) -> Result<(), String> {
        let Some(store) = &self.store else {
            return Ok(());
        };
        let retained = store.load_retained()?;
        {
            let mut map = self.retained.lock();
            for m in retained {
                let Some(topic) = persist::header(&m, persist::TOPIC) else {
                    continue;
                };
                if m.body.is_empty() {
                    continue;
                }
                let qos = crate::traffic::message_qos(&m);
                let message = self.message(topic, qos, m.body.clone());
                map.insert(topic.to_owned(), message);
            }
        }
        let depth: HashMap<String, u64> = store
            .driver()
            .stats()
            .into_iter()
            .map(|s| (s.destination, s.depth + s.leased))
            .collect();
        let records = store.load_sessions()?;
        let (mut live, mut gone) = (0, 0);
        for m in records {
            let Some(client) = persist::header(&m, persist::CLIENT) else {
                continue;
            };
            if persist::header(&m, persist::GONE).is_some() {
                store.purge(client);
                store.drop_record(client, m.id);
                gone += 1;
                continue;
            }
            let session = self.new_session(client.to_owned(), false);
            {
                let mut st = session.state.lock();
                st.owner = persist::header(&m, persist::OWNER).map(Arc::from);
                st.incoming_qos2.extend(persist::decode_incoming(&m));
                // PUBREL goes again for these when the client is back.
                // Sent again, same packet id, DUP, when the queue hands
                // them over again (`Core::drain`).
                for (packet_id, id) in persist::decode_sent(&m) {
                    st.resend.insert(id, packet_id);
                    st.sent.insert(packet_id, id);
                }
                for (packet_id, id) in persist::decode_released(&m) {
                    st.released.insert(packet_id, id);
                    let mut placeholder = Message::new("", "", bytes::Bytes::new());
                    placeholder.id = id;
                    st.inflight.insert(
                        packet_id,
                        crate::session::Inflight {
                            message: placeholder,
                            qos: 2,
                            stage: crate::session::Stage::Released,
                            stored: false,
                        },
                    );
                }
            }
            for (filter, qos) in persist::decode_subs(&m.body) {
                if !self.attach_sub(&session, &filter, qos) {
                    tracing::warn!(instance = %self.instance, client, %filter, "stored subscription not made again");
                }
            }
            if let Some(path) = &session.queue_path {
                let n = depth.get(path).copied().unwrap_or(0) as usize;
                session.pending.store(n, Ordering::Release);
            }
            self.open_queue(&session);
            self.sessions.restore(session);
            live += 1;
        }
        tracing::info!(
            instance = %self.instance,
            retained = self.retained.lock().len(),
            sessions = live,
            ended = gone,
            "MQTT state loaded"
        );
        Ok(())
    }
}
