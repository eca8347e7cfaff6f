//! Sessions: what a client id keeps — subscriptions, messages waiting to be
//! sent, messages in flight — across connections when `clean_session` is
//! false.
//!
//! A session's subscriptions deliver into the session, never to a
//! connection directly, so messages keep arriving (bounded by
//! `max_queued`, the excess counted) while the client is away. An attached
//! connection is woken by a note when the queue goes from empty to not.
//!
//! Bounded: a session holds at most `max_queued` messages and
//! `max_queued_bytes` bytes waiting ([`Waiting`]), and an instance keeps
//! at most `max_sessions` persistent sessions ([`Sessions::attach`]).

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use bindery_classes::connection::Wake;
use bindery_classes::metrics::{Counter, Gauge};
use bindery_classes::{Consumer, Delivery, Message, MessageId, Subscription};
use parking_lot::Mutex;

use crate::codec::QoS;
use crate::rewire::{Job, Rewire};

pub(crate) use crate::tag::Tag;

/// A message waiting to be sent, and the subscription to credit once taken.
pub(crate) struct Queued {
    pub(crate) message: Message,
    pub(crate) filter: Arc<str>,
    pub(crate) retain: bool,
    /// Taken from the session's durable queue ([`crate::persist`]): acked
    /// there once the client has it.
    pub(crate) stored: bool,
}

/// What a queued message costs in a session's byte cap.
fn cost(q: &Queued) -> usize {
    q.message.body.len() + q.message.destination.len()
}

/// A session's messages waiting to be sent, and their bytes.
#[derive(Default)]
pub(crate) struct Waiting {
    items: VecDeque<Queued>,
    bytes: usize,
}

impl Waiting {
    /// The next message.
    pub(crate) fn front(&self) -> Option<&Queued> {
        self.items.front()
    }

    /// Takes the next message.
    pub(crate) fn pop_front(&mut self) -> Option<Queued> {
        let q = self.items.pop_front()?;
        self.bytes -= cost(&q);
        Some(q)
    }

    /// Adds a message at the end.
    pub(crate) fn push_back(&mut self, q: Queued) {
        self.bytes += cost(&q);
        self.items.push_back(q);
    }

    /// How many wait.
    pub(crate) fn len(&self) -> usize {
        self.items.len()
    }

    /// Their bytes (payloads and destinations).
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    /// Drops them all.
    pub(crate) fn clear(&mut self) {
        self.items.clear();
        self.bytes = 0;
    }

    /// Keeps those `keep` says.
    pub(crate) fn retain(&mut self, keep: impl FnMut(&Queued) -> bool) {
        self.items.retain(keep);
        self.bytes = self.items.iter().map(cost).sum();
    }

    /// Every one, in order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &Queued> {
        self.items.iter()
    }
}

/// Where an outgoing QoS 1 or 2 message stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Stage {
    /// Sent; waiting for PUBACK (QoS 1) or PUBREC (QoS 2).
    Sent,
    /// PUBREL sent; waiting for PUBCOMP.
    Released,
}

/// A message sent with QoS 1 or 2 and not yet settled.
pub(crate) struct Inflight {
    pub(crate) message: Message,
    pub(crate) qos: QoS,
    pub(crate) stage: Stage,
    /// From the session's durable queue, not yet acked there.
    pub(crate) stored: bool,
}

/// A subscription: its granted QoS and the driver's handle.
pub(crate) struct Sub {
    pub(crate) qos: QoS,
    pub(crate) subscription: Arc<Subscription>,
    /// Which subscription this is ([`crate::rewire::serial`]).
    pub(crate) serial: u64,
}

#[derive(Default)]
pub(crate) struct State {
    pub(crate) subs: HashMap<Arc<str>, Sub, foldhash::fast::RandomState>,
    pub(crate) queue: Waiting,
    pub(crate) inflight: BTreeMap<u16, Inflight>,
    pub(crate) incoming_qos2: HashSet<u16>,
    pub(crate) next_id: u16,
    pub(crate) attached: Option<(Wake, u64)>,
    pub(crate) recent: VecDeque<MessageId>,
    /// Why a driver ended a subscription of this session: the session is
    /// over (its connection is closed, and it is not resumed).
    pub(crate) ended: Option<String>,
    /// The user who made the session (with auth): only they resume it.
    pub(crate) owner: Option<Arc<str>>,
    /// The subscription to the session's durable queue, with persistence.
    pub(crate) store_sub: Option<Arc<Subscription>>,
    /// Which subscription `store_sub` is ([`crate::rewire::serial`]).
    pub(crate) store_serial: u64,
    /// Stored QoS 2 messages PUBREC'd and not yet PUBCOMP'd: packet id
    /// and queue message id, kept in the session record
    /// ([`crate::persist::SessionRecord`]).
    pub(crate) released: HashMap<u16, MessageId>,
    /// Stored QoS 2 messages sent (or about to be, once the record says
    /// so) and not yet PUBREC'd: packet id and queue message id, kept in
    /// the session record ([`crate::persist::SessionRecord::sent`]).
    pub(crate) sent: HashMap<u16, MessageId>,
    /// From the record read at start: stored QoS 2 messages sent before
    /// the restart, to send again with the same packet id and DUP.
    pub(crate) resend: HashMap<MessageId, u16>,
    /// Since when no connection has had the session (for expiry).
    pub(crate) detached_at: Option<Instant>,
}

impl State {
    /// The messages taken from the session's durable queue and not yet
    /// acked there: waiting to be sent, or in flight.
    pub(crate) fn stored_ids(&self) -> Vec<MessageId> {
        let waiting = self.queue.iter().filter(|q| q.stored).map(|q| q.message.id);
        let sent = self
            .inflight
            .values()
            .filter(|i| i.stored)
            .map(|i| i.message.id);
        waiting.chain(sent).collect()
    }

    /// A packet id not in flight.
    pub(crate) fn packet_id(&mut self) -> u16 {
        loop {
            self.next_id = self.next_id.wrapping_add(1);
            if self.next_id != 0
                && !self.inflight.contains_key(&self.next_id)
                && !self.resend.values().any(|&p| p == self.next_id)
            {
                return self.next_id;
            }
        }
    }
}

/// One client id's session.
pub(crate) struct Session {
    pub(crate) client_id: String,
    pub(crate) clean: bool,
    pub(crate) state: Mutex<State>,
    pub(crate) max_queued: usize,
    /// Bytes waiting at most (0: no cap).
    pub(crate) max_queued_bytes: usize,
    pub(crate) dropped: Counter,
    /// The durable queue of this persistent session's QoS 1 and 2
    /// messages, with persistence ([`crate::persist`]).
    pub(crate) queue_path: Option<String>,
    /// The store that queue is in.
    store: Option<Arc<crate::persist::Store>>,
    /// Messages stored (or being stored) in that queue and not yet acked.
    pub(crate) pending: AtomicUsize,
}

impl Session {
    pub(crate) fn new(
        client_id: String,
        clean: bool,
        (max_queued, max_queued_bytes): (usize, usize),
        dropped: Counter,
        queue: Option<(Arc<crate::persist::Store>, String)>,
    ) -> Arc<Session> {
        let (store, queue_path) = match queue.filter(|_| !clean) {
            Some((store, path)) => (Some(store), Some(path)),
            None => (None, None),
        };
        Arc::new(Session {
            client_id,
            clean,
            state: Mutex::new(State::default()),
            max_queued,
            max_queued_bytes,
            dropped,
            queue_path,
            store,
            pending: AtomicUsize::new(0),
        })
    }

    /// Whether a message at `qos` to `topic` goes to this session's
    /// durable queue: the session has one, and a subscription matching
    /// `topic` was granted QoS 1 or 2. Returns the QoS it is stored at.
    pub(crate) fn stores(&self, topic: &str, qos: QoS) -> Option<QoS> {
        self.queue_path.as_ref()?;
        if qos == 0 {
            return None;
        }
        let st = self.state.lock();
        let granted = st
            .subs
            .iter()
            .filter(|(f, _)| bindery_classes::topic::matches(f, topic))
            .map(|(_, s)| s.qos)
            .max()?;
        Some(granted.min(qos)).filter(|&q| q > 0)
    }

    /// A consumer that delivers into this session for `filter` (the
    /// subscription numbered `serial` on `driver`), named after the client
    /// for the drivers' log lines.
    /// With persistence, a message this instance's MQTT publishers sent
    /// (header `via`) that the session stores is skipped here: the
    /// publisher stored it in the session's durable queue already.
    /// Closed because the driver's instance stops, the subscription is
    /// made again ([`crate::rewire`]); closed otherwise, the session ends.
    pub(crate) fn consumer(
        self: &Arc<Session>,
        filter: Arc<str>,
        (instance, via, root): (&str, &Arc<str>, &Arc<str>),
        (driver, rewire, serial): (Weak<dyn bindery_classes::Driver>, Arc<Rewire>, u64),
    ) -> Consumer {
        let weak: Weak<Session> = Arc::downgrade(self);
        let name = format!("{instance}: mqtt client {:?}", self.client_id);
        let (me, root) = (via.clone(), root.clone());
        Consumer::new(move |d| match (weak.upgrade(), d) {
            (Some(s), Delivery::Message(m)) => {
                if let (Some(store), Some(path)) = (&s.store, &s.queue_path) {
                    let qos = crate::traffic::message_qos(&m);
                    let topic = m.destination.strip_prefix(&*root).unwrap_or_default();
                    if let Some(q) = s.stores(topic, qos) {
                        if crate::persist::header(&m, crate::persist::VIA) != Some(&*me) {
                            // From elsewhere (HTTP, another instance): into
                            // the session's queue too, though its publisher
                            // was answered without waiting for it.
                            store.copy(&s, path, topic, q, &m);
                        }
                        // From this instance's MQTT clients: the publisher
                        // stored it already.
                        return;
                    }
                }
                s.push(Queued {
                    message: m,
                    filter: filter.clone(),
                    retain: false,
                    stored: false,
                })
            }
            (Some(_), Delivery::Closed(_)) if crate::rewire::instance_gone(&driver) => rewire
                .later(Job::Sub {
                    session: weak.clone(),
                    filter: filter.clone(),
                    serial,
                }),
            (Some(s), Delivery::Closed(why)) => s.end(why),
            (None, _) => {}
        })
        .named(name)
    }

    /// A driver ended a subscription: the session is over; its connection,
    /// if any, is told to close.
    fn end(&self, why: String) {
        let attached = {
            let mut st = self.state.lock();
            if st.ended.is_some() {
                return;
            }
            st.ended = Some(why);
            st.attached.clone()
        };
        if let Some((wake, _)) = attached {
            Tag::Ended.send(&wake);
        }
    }

    /// Queues a message; wakes the attached connection if the queue was
    /// empty. A full queue (`max_queued` messages or `max_queued_bytes`)
    /// drops the message, counted. One from the durable queue is always
    /// taken: that queue's credit bounds those.
    pub(crate) fn push(&self, q: Queued) {
        let wake = {
            let mut st = self.state.lock();
            if !q.stored
                && (st.queue.len() >= self.max_queued
                    || (self.max_queued_bytes > 0
                        && st.queue.bytes() + cost(&q) > self.max_queued_bytes))
            {
                self.dropped.inc();
                return;
            }
            if q.stored
                && st
                    .inflight
                    .values()
                    .any(|i| i.stored && i.message.id == q.message.id)
            {
                // Read again from a restarted store while in flight: its
                // ack settles both.
                return;
            }
            st.queue.push_back(q);
            if st.queue.len() == 1 {
                st.attached.clone()
            } else {
                None
            }
        };
        if let Some((wake, _)) = wake {
            Tag::Wake.send(&wake);
        }
    }
}

/// The sessions of one terminal instance, by client id.
#[derive(Default)]
pub(crate) struct Sessions {
    map: Mutex<HashMap<String, Arc<Session>>>,
    /// The persistent ones in `map` (changed under its lock), mirrored
    /// in /metrics.
    kept: AtomicUsize,
    kept_gauge: Gauge,
    /// Those of `map` with a durable queue: what a publish looks through
    /// (changed under `map`'s lock).
    persistent: parking_lot::RwLock<HashMap<String, Arc<Session>>>,
    last_sweep: Mutex<Option<Instant>>,
    next_conn: AtomicU64,
    next_anonymous: AtomicU64,
}

/// What [`Sessions::attach`] gives: the session, whether it existed, and
/// the persistent session it replaced.
pub(crate) type Attached = (Arc<Session>, bool, Option<Arc<Session>>);

/// A new persistent session refused: `max_sessions` are kept.
#[derive(Debug)]
pub(crate) struct Full;

impl Sessions {
    /// No sessions; `gauge` follows how many persistent ones there are.
    pub(crate) fn counted(gauge: Gauge) -> Sessions {
        Sessions {
            kept_gauge: gauge,
            ..Default::default()
        }
    }

    /// How many persistent sessions are kept.
    pub(crate) fn persistent_count(&self) -> usize {
        self.kept.load(Ordering::Relaxed)
    }

    /// Puts `s` in `map` (under its lock), counting persistent ones.
    fn put(&self, map: &mut HashMap<String, Arc<Session>>, s: Arc<Session>) {
        let id = s.client_id.clone();
        self.index(&id, Some(&s));
        let added = !s.clean;
        let old = map.insert(id, s);
        self.count(added, old.is_some_and(|o| !o.clean));
    }

    /// Takes `client_id` out of `map` (under its lock).
    fn take(
        &self,
        map: &mut HashMap<String, Arc<Session>>,
        client_id: &str,
    ) -> Option<Arc<Session>> {
        self.index(client_id, None);
        let old = map.remove(client_id);
        self.count(false, old.as_ref().is_some_and(|o| !o.clean));
        old
    }

    fn count(&self, added: bool, removed: bool) {
        let n = match (added, removed) {
            (true, false) => self.kept.fetch_add(1, Ordering::Relaxed) + 1,
            (false, true) => self.kept.fetch_sub(1, Ordering::Relaxed) - 1,
            _ => return,
        };
        self.kept_gauge.set(n as u64);
    }

    /// A connection number, to tell attachments apart.
    pub(crate) fn epoch(&self) -> u64 {
        self.next_conn.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// A client id for a client that gave none.
    pub(crate) fn anonymous(&self) -> String {
        format!(
            "bindery-{}",
            self.next_anonymous.fetch_add(1, Ordering::Relaxed) + 1
        )
    }

    /// Attaches a connection to `client_id`'s session, taking it over from
    /// any other connection; returns the session, whether it existed, and
    /// the persistent session it replaced, if any (to be forgotten).
    /// [`Full`] if it would make a persistent session past `max` (0: no
    /// cap); nothing is changed then.
    pub(crate) fn attach(
        &self,
        client_id: &str,
        clean: bool,
        owner: Option<Arc<str>>,
        at: (Wake, u64),
        max: usize,
        make: impl FnOnce() -> Arc<Session>,
    ) -> Result<Attached, Full> {
        let mut map = self.map.lock();
        let existing = map.get(client_id).cloned();
        // One more persistent session, unless it replaces one.
        if !clean
            && max > 0
            && existing.as_ref().is_none_or(|o| o.clean)
            && self.persistent_count() >= max
        {
            return Err(Full);
        }
        if let Some(old) = &existing {
            let previous = old.state.lock().attached.take();
            if let Some((wake, _)) = previous {
                Tag::TakenOver.send(&wake);
            }
        }
        let (session, present, replaced) = match existing {
            Some(old)
                if !clean
                    && !old.clean
                    && old.state.lock().ended.is_none()
                    && old.state.lock().owner == owner =>
            {
                (old, true, None)
            }
            old => {
                let s = make();
                s.state.lock().owner = owner;
                self.put(&mut map, s.clone());
                (s, false, old.filter(|o| !o.clean))
            }
        };
        {
            let mut st = session.state.lock();
            st.attached = Some(at);
            st.detached_at = None;
        }
        Ok((session, present, replaced))
    }

    /// Puts a session read back from the store in place, detached.
    pub(crate) fn restore(&self, session: Arc<Session>) {
        session.state.lock().detached_at = Some(Instant::now());
        let mut map = self.map.lock();
        self.put(&mut map, session);
    }

    /// Takes out the sessions nobody has had for `ttl`, at most once a
    /// second (0: never).
    pub(crate) fn expired(&self, ttl: u64) -> Vec<Arc<Session>> {
        let now = Instant::now();
        {
            let mut last = self.last_sweep.lock();
            if ttl == 0 || last.is_some_and(|l| now < l + Duration::from_secs(1)) {
                return Vec::new();
            }
            *last = Some(now);
        }
        let ttl = Duration::from_secs(ttl);
        let mut map = self.map.lock();
        let gone: Vec<String> = map
            .iter()
            .filter(|(_, s)| {
                let st = s.state.lock();
                st.attached.is_none() && st.detached_at.is_some_and(|d| now >= d + ttl)
            })
            .map(|(k, _)| k.clone())
            .collect();
        gone.iter().filter_map(|k| self.take(&mut map, k)).collect()
    }

    /// Every session.
    pub(crate) fn all(&self) -> Vec<Arc<Session>> {
        self.map.lock().values().cloned().collect()
    }

    /// The sessions with a durable queue (persistence) that a publish to
    /// `topic` at `qos` is stored for, with the QoS it is stored at.
    pub(crate) fn storing(&self, topic: &str, qos: QoS) -> Vec<(Arc<Session>, QoS)> {
        self.persistent
            .read()
            .values()
            .filter_map(|s| s.stores(topic, qos).map(|q| (s.clone(), q)))
            .collect()
    }

    /// Keeps `persistent` in step with the map (call under its lock).
    fn index(&self, client_id: &str, now: Option<&Arc<Session>>) {
        let mut p = self.persistent.write();
        match now.filter(|s| s.queue_path.is_some()) {
            Some(s) => {
                p.insert(client_id.to_owned(), s.clone());
            }
            None => {
                p.remove(client_id);
            }
        }
    }

    /// Detaches connection `epoch`; a clean session ends with it, and so
    /// does one a driver ended. Returns whether a persistent session
    /// ended (to be forgotten in the store).
    pub(crate) fn detach(&self, session: &Arc<Session>, epoch: u64) -> bool {
        let mut map = self.map.lock();
        let (mine, ended) = {
            let mut st = session.state.lock();
            let mine = st.attached.as_ref().is_some_and(|a| a.1 == epoch);
            if mine {
                st.attached = None;
                st.detached_at = Some(Instant::now());
            }
            (mine, st.ended.is_some())
        };
        if mine && (session.clean || ended) {
            if map
                .get(&session.client_id)
                .is_some_and(|s| Arc::ptr_eq(s, session))
            {
                self.take(&mut map, &session.client_id);
            }
            drop(map);
            // Cancelling subscriptions takes driver locks: never under ours.
            let subs = std::mem::take(&mut session.state.lock().subs);
            drop(subs);
            return !session.clean;
        }
        false
    }
}
