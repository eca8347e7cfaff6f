//! Persistence (`persistence = "/durable/mqtt/"`): the terminal's state kept
//! as messages in durable queues of the driver bound at that prefix, found
//! in the binding table, so no file format lives here and the same state
//! could live in any durable queue driver.
//!
//! - `PREFIX/retained`: one record per retained publish (header
//!   `mqtt-topic`, the payload as body; an empty body clears).
//! - `PREFIX/sessions`: one record per change of a persistent session
//!   (header `mqtt-client`, optional `mqtt-owner`; body: its subscriptions,
//!   each a QoS byte, a u16 length and the filter; header `mqtt-released`:
//!   QoS 2 messages PUBREC'd, not yet PUBCOMP'd; header `mqtt-gone`: the
//!   session ended).
//! - `PREFIX/queue/CLIENT` (client id percent-encoded): the QoS 1 and 2
//!   messages for one persistent session, acked once the client acks them
//!   (PUBACK, or PUBREC at QoS 2).
//!
//! Records are latest-wins: the terminal holds every record leased (one
//! subscription per records queue, long leases) and acks a record once a
//! later one for the same topic or client is stored, so the queues hold
//! about one record per retained topic and per session. At start both
//! records queues are read to the end before the terminal listens.
//!
//! A little over 400 lines: the format and every operation on it in one
//! place, so what is on disk is read in one file (docs/mqtt.md has the
//! whole story).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bindery::{Completion, Failure};
use bindery_classes::driver::{DriverHandle, Receipt, SubscribeOptions};
use bindery_classes::message::Header;
use bindery_classes::{Consumer, Delivery, Message, MessageId, Subscription};

pub(crate) use crate::join::Join;
use parking_lot::Mutex;

use crate::rewire::Rewire;
use crate::session::Session;

/// Leases on stored records and queued messages: they stay with the
/// terminal until it acks them (a restart gives them back).
pub(crate) const LEASE: Duration = Duration::from_secs(10 * 365 * 86_400);
/// How long start waits for a records queue to be read.
const LOAD_WAIT: Duration = Duration::from_secs(30);

pub(crate) const TOPIC: &str = "mqtt-topic";
pub(crate) const CLIENT: &str = "mqtt-client";
pub(crate) const OWNER: &str = "mqtt-owner";
pub(crate) const GONE: &str = "mqtt-gone";
/// On messages an MQTT client of this instance published, with
/// persistence: the instance's name.
pub(crate) const VIA: &str = "mqtt-via";
/// On session records: QoS 2 messages PUBREC'd, not yet PUBCOMP'd.
pub(crate) const RELEASED: &str = "mqtt-released";
/// On session records: stored QoS 2 messages sent, not yet PUBREC'd.
pub(crate) const SENT: &str = "mqtt-sent";
/// A session record's header: inbound QoS 2 packet ids PUBREC'd and not
/// yet PUBREL'd, comma-separated.
pub(crate) const INCOMING: &str = "mqtt-incoming";

/// A header's value.
pub(crate) fn header<'a>(m: &'a Message, name: &str) -> Option<&'a str> {
    m.headers
        .iter()
        .find(|(k, _)| &**k == name)
        .map(|(_, v)| &**v)
}

/// The durable store of one terminal instance.
pub(crate) struct Store {
    /// The driver instance last found at `prefix` (another is looked up
    /// once it stops: [`Store::current`]).
    driver: Mutex<DriverHandle>,
    /// Where to look it up.
    runtime: Arc<bindery::Runtime>,
    /// Where its records' subscriptions go when its instance stops.
    rewire: Arc<Rewire>,
    pub(crate) prefix: String,
    /// The live record per retained topic and per client id, with the
    /// subscriptions that hold them leased.
    retained: Records,
    sessions: Records,
}

/// One records queue: its path, the live record per key, the lease holder.
struct Records {
    dest: String,
    live: Mutex<HashMap<String, MessageId>>,
    sub: Mutex<Option<Subscription>>,
}

impl Records {
    fn new(dest: String) -> Records {
        Records {
            dest,
            live: Mutex::default(),
            sub: Mutex::default(),
        }
    }
}

impl Store {
    /// The store at `prefix` of `runtime`, whose driver must keep durable
    /// queues.
    pub(crate) fn new(
        runtime: Arc<bindery::Runtime>,
        prefix: &str,
        rewire: Arc<Rewire>,
    ) -> Result<Store, String> {
        let driver = bindery_classes::driver::lookup(&runtime, prefix)
            .ok_or_else(|| format!("persistence {prefix:?}: no driver is bound there"))?;
        if !durable(&driver) {
            return Err(format!(
                "persistence {prefix:?}: the driver bound there does not keep durable queues"
            ));
        }
        Ok(Store {
            driver: Mutex::new(driver),
            runtime,
            rewire,
            prefix: prefix.to_owned(),
            retained: Records::new(format!("{prefix}retained")),
            sessions: Records::new(format!("{prefix}sessions")),
        })
    }

    /// The driver instance serving the prefix now: the one last used,
    /// or, once it stops, the one bound there since, if it keeps durable
    /// queues (`None` until then).
    pub(crate) fn current(&self) -> Option<DriverHandle> {
        let mut driver = self.driver.lock();
        if !driver.stopped() {
            return Some(driver.clone());
        }
        let next = bindery_classes::driver::lookup(&self.runtime, &self.prefix)
            .filter(|d| !d.stopped() && durable(d))?;
        *driver = next.clone();
        Some(next)
    }

    /// [`Store::current`], or the stopped one (which refuses, so the
    /// caller's completion reports `Unavailable`).
    pub(crate) fn driver(&self) -> DriverHandle {
        self.current().unwrap_or_else(|| self.driver.lock().clone())
    }

    /// Holds every record leased again, on the driver instance serving
    /// the prefix now (the last one stopped: its leases ended with it).
    /// False while none serves it. Superseded records acked while no
    /// driver served are acked at the next start's reading.
    pub(crate) fn hold_records(&self) -> bool {
        let Some(driver) = self.current() else {
            return false;
        };
        for records in [&self.retained, &self.sessions] {
            let consumer = self.records_consumer(&records.dest, &driver, None);
            let options = SubscribeOptions {
                credit: u32::MAX / 2,
                lease: LEASE,
            };
            match driver.subscribe(&records.dest, consumer, options) {
                Ok(sub) => *records.sub.lock() = Some(sub),
                Err(_) => return false,
            }
        }
        tracing::info!(prefix = %self.prefix, "MQTT state records held again after their driver instance was replaced");
        true
    }

    /// A consumer holding `dest`'s records leased on `driver` (sending
    /// them to `feed` while start reads them); when the driver's
    /// instance stops, [`Store::hold_records`] runs again on the next.
    fn records_consumer(
        &self,
        dest: &str,
        driver: &DriverHandle,
        feed: Option<Arc<Mutex<Option<std::sync::mpsc::Sender<Message>>>>>,
    ) -> Consumer {
        let (gone, rewire) = (Arc::downgrade(driver), self.rewire.clone());
        Consumer::new(move |d| match d {
            Delivery::Message(m) => {
                if let Some(tx) = feed.as_ref().and_then(|f| f.lock().clone()) {
                    let _ = tx.send(m);
                }
            }
            Delivery::Closed(_) if crate::rewire::instance_gone(&gone) => {
                rewire.later(crate::rewire::Job::Records);
            }
            Delivery::Closed(_) => {}
        })
        .named(format!("mqtt state {dest}"))
    }

    /// The queue of `client`'s messages.
    pub(crate) fn queue_path(&self, client: &str) -> String {
        queue_path(&self.prefix, client)
    }

    /// Every retained record, latest per topic, superseded ones acked.
    pub(crate) fn load_retained(&self) -> Result<Vec<Message>, String> {
        self.load(&self.retained, TOPIC)
    }

    /// Every session record, latest per client, superseded ones acked.
    pub(crate) fn load_sessions(&self) -> Result<Vec<Message>, String> {
        self.load(&self.sessions, CLIENT)
    }

    fn load(&self, records: &Records, key: &str) -> Result<Vec<Message>, String> {
        let all = self.read_all(records)?;
        let mut latest: HashMap<String, Message> = HashMap::new();
        for m in all {
            let Some(k) = header(&m, key).map(str::to_owned) else {
                self.ack(&records.dest, m.id);
                continue;
            };
            match latest.get(&k) {
                Some(old) if old.id > m.id => self.ack(&records.dest, m.id),
                _ => {
                    if let Some(old) = latest.insert(k, m) {
                        self.ack(&records.dest, old.id);
                    }
                }
            }
        }
        let mut live = records.live.lock();
        for (k, m) in &latest {
            live.insert(k.clone(), m.id);
        }
        Ok(latest.into_values().collect())
    }

    fn ack(&self, dest: &str, id: MessageId) {
        self.driver().ack(dest, id, Completion::new(|_| {}));
    }

    /// Acks `dest`'s message `id` (a queued message the client took).
    pub(crate) fn ack_queued(&self, dest: &str, id: MessageId) {
        self.ack(dest, id);
    }

    /// Stores a record keyed `key` in `records`; `done` completes once it
    /// is stored, and the record it supersedes is then acked.
    fn record(
        self: &Arc<Self>,
        which: fn(&Store) -> &Records,
        key: &str,
        headers: Vec<Header>,
        body: bytes::Bytes,
        done: Completion<Receipt>,
    ) {
        let records = which(self);
        let mut m = Message::new(&records.dest, "application/octet-stream", body);
        m.headers = headers.into();
        let (me, key, id) = (self.clone(), key.to_owned(), m.id);
        self.driver().publish(
            m,
            Completion::new(move |r: Result<Receipt, Failure>| {
                if r.is_ok() {
                    let records = which(&me);
                    let stale = {
                        let mut live = records.live.lock();
                        match live.get(&key) {
                            Some(&old) if old > id => Some(id),
                            old => {
                                let old = old.copied();
                                live.insert(key, id);
                                old
                            }
                        }
                    };
                    if let Some(stale) = stale {
                        me.ack(&records.dest, stale);
                    }
                }
                done.complete(r);
            }),
        );
    }

    /// Keeps `topic`'s retained message (an empty body clears it).
    pub(crate) fn retain(self: &Arc<Self>, topic: &str, m: &Message, done: Completion<Receipt>) {
        let qos = header(m, crate::traffic::QOS_HEADER).unwrap_or("1");
        let headers = vec![
            (TOPIC.into(), topic.into()),
            (crate::traffic::QOS_HEADER.into(), qos.into()),
        ];
        self.record(|s| &s.retained, topic, headers, m.body.clone(), done);
    }

    /// Keeps `client`'s session (`None`: it is gone); `done`, if any,
    /// completes once the record is stored.
    pub(crate) fn session(
        self: &Arc<Self>,
        client: &str,
        record: Option<SessionRecord<'_>>,
        done: Option<Completion<Receipt>>,
    ) {
        let mut headers: Vec<Header> = vec![(CLIENT.into(), client.into())];
        let body = match record {
            None => {
                headers.push((GONE.into(), "1".into()));
                Vec::new()
            }
            Some(r) => {
                if let Some(o) = r.owner {
                    headers.push((OWNER.into(), o.into()));
                }
                for (name, pairs) in [(RELEASED, &r.released), (SENT, &r.sent)] {
                    if !pairs.is_empty() {
                        let list: Vec<String> =
                            pairs.iter().map(|(p, id)| format!("{p}:{id}")).collect();
                        headers.push((name.into(), list.join(",").into()));
                    }
                }
                if !r.incoming.is_empty() {
                    let list: Vec<String> = r.incoming.iter().map(u16::to_string).collect();
                    headers.push((INCOMING.into(), list.join(",").into()));
                }
                encode_subs(&r.subs)
            }
        };
        let client_owned = client.to_owned();
        let done = done.unwrap_or_else(|| {
            Completion::new(move |r: Result<Receipt, Failure>| {
                if let Err(f) = r {
                    tracing::warn!(client = %client_owned, "session record not stored: {f}");
                }
            })
        });
        self.record(|s| &s.sessions, client, headers, body.into(), done);
    }

    /// Acks every message waiting in `client`'s queue (the session is
    /// gone). Takes what the driver hands over at once (a driver that
    /// delivers later leaves the rest; see docs/mqtt.md), so it never
    /// competes with a new session of the same client id.
    pub(crate) fn purge(&self, client: &str) {
        let dest = self.queue_path(client);
        let (consumer, rx) = Consumer::channel();
        let options = SubscribeOptions {
            credit: u32::MAX / 2,
            lease: LEASE,
        };
        let Ok(sub) = self.driver().subscribe(&dest, consumer, options) else {
            return;
        };
        for d in rx.try_iter() {
            if let Delivery::Message(m) = d {
                self.ack(&dest, m.id);
            }
        }
        sub.cancel();
    }

    /// Stores a copy of `m` (to `topic`, delivered at `qos`) in `session`'s
    /// queue at `path`, not waiting: a refusal drops it, counted. For
    /// messages whose publisher was not an MQTT client of this instance.
    pub(crate) fn copy(
        &self,
        session: &Arc<Session>,
        path: &str,
        topic: &str,
        qos: u8,
        m: &Message,
    ) {
        if session.pending.fetch_add(1, Ordering::AcqRel) >= session.max_queued {
            session.pending.fetch_sub(1, Ordering::AcqRel);
            session.dropped.inc();
            return;
        }
        let mut copy = m.clone();
        copy.id = MessageId::next();
        copy.destination = path.into();
        copy.headers = vec![
            (crate::traffic::QOS_HEADER.into(), qos.to_string().into()),
            (TOPIC.into(), topic.into()),
        ]
        .into();
        let s = session.clone();
        self.driver().publish(
            copy,
            Completion::new(move |r: Result<Receipt, Failure>| {
                if let Err(f) = r {
                    s.pending.fetch_sub(1, Ordering::AcqRel);
                    s.dropped.inc();
                    tracing::debug!(client = %s.client_id, "not stored for the session: {f}");
                }
            }),
        );
    }

    /// Gives back every record held leased (the instance stops while the
    /// driver runs on: a restarted instance reads them again).
    pub(crate) fn release_records(&self) {
        let driver = self.driver();
        for records in [&self.retained, &self.sessions] {
            if let Some(sub) = records.sub.lock().take() {
                sub.cancel();
            }
            let ids: Vec<MessageId> = records.live.lock().values().copied().collect();
            for id in ids {
                let _ = driver.release(&records.dest, id);
            }
        }
    }

    /// Acks a `gone` session record once its queue is purged.
    pub(crate) fn drop_record(&self, client: &str, id: MessageId) {
        let mut live = self.sessions.live.lock();
        if live.get(client) == Some(&id) {
            live.remove(client);
        }
        drop(live);
        self.ack(&self.sessions.dest, id);
    }

    /// Reads every message waiting in `records` (as many as the driver's
    /// counters say), keeping them leased to a subscription that
    /// `records` holds from then on, so later records are leased too and
    /// can be acked.
    fn read_all(&self, records: &Records) -> Result<Vec<Message>, String> {
        let (driver, dest) = (self.driver(), &records.dest);
        // Waiting ones: after a restart of the server nothing is leased;
        // after one of the instance, the last incarnation gave its leases
        // back.
        let expected = driver
            .stats()
            .into_iter()
            .find(|s| s.destination == *dest)
            .map_or(0, |s| s.depth) as usize;
        let (tx, rx) = std::sync::mpsc::channel();
        let tx = Arc::new(Mutex::new(Some(tx)));
        let consumer = self.records_consumer(dest, &driver, Some(tx.clone()));
        let options = SubscribeOptions {
            credit: u32::MAX / 2,
            lease: LEASE,
        };
        let sub = driver
            .subscribe(dest, consumer, options)
            .map_err(|f| format!("cannot read {dest}: {f}"))?;
        let mut got = Vec::new();
        let until = std::time::Instant::now() + LOAD_WAIT;
        while got.len() < expected {
            let left = until.saturating_duration_since(std::time::Instant::now());
            match rx.recv_timeout(left) {
                Ok(m) => got.push(m),
                Err(_) => {
                    return Err(format!(
                        "read {} of the {expected} records in {dest} in {LOAD_WAIT:?}",
                        got.len()
                    ));
                }
            }
        }
        got.extend(rx.try_iter());
        tx.lock().take();
        *records.sub.lock() = Some(sub);
        Ok(got)
    }
}

/// The queue of `client`'s messages under `prefix`: the client id with
/// every byte but `[A-Za-z0-9._-]` percent-encoded, so no client id can
/// name another's queue or a wildcard.
pub(crate) fn queue_path(prefix: &str, client: &str) -> String {
    let mut p = format!("{prefix}queue/");
    for b in client.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.' {
            p.push(b as char);
        } else {
            p.push_str(&format!("%{b:02X}"));
        }
    }
    p
}

/// A session record's body: each subscription a QoS byte, a u16 length
/// (little-endian) and the filter (filters are at most 65535 bytes in
/// MQTT).
pub(crate) fn encode_subs(subs: &[(Arc<str>, u8)]) -> Vec<u8> {
    let mut body = Vec::new();
    for (filter, qos) in subs {
        let f = filter.as_bytes();
        let n = f.len().min(usize::from(u16::MAX));
        body.push(*qos);
        body.extend_from_slice(&(n as u16).to_le_bytes());
        body.extend_from_slice(&f[..n]);
    }
    body
}

/// What a session record keeps.
pub(crate) struct SessionRecord<'a> {
    /// The user who made the session (with auth).
    pub(crate) owner: Option<&'a str>,
    /// Filters and granted QoS.
    pub(crate) subs: Vec<(Arc<str>, u8)>,
    /// QoS 2 messages the client PUBREC'd and has not PUBCOMP'd: packet id
    /// and the id the message had in the session's queue. After a restart
    /// PUBREL is sent again for each, and that message, if still queued
    /// (its ack lost), is acked rather than sent.
    pub(crate) released: Vec<(u16, MessageId)>,
    /// Stored QoS 2 messages sent and not yet PUBREC'd: packet id and
    /// queue id. After a restart each is sent again with that packet id
    /// and DUP, so a client that delivers on PUBLISH (and drops a DUP it
    /// has) gets it once.
    pub(crate) sent: Vec<(u16, MessageId)>,
    /// Inbound QoS 2 packet ids taken (published, PUBREC'd) and not yet
    /// released: a resend of one after a restart is acknowledged, not
    /// published again.
    pub(crate) incoming: Vec<u16>,
}

/// The `mqtt-incoming` header's packet ids (malformed ones are skipped).
pub(crate) fn decode_incoming(m: &Message) -> Vec<u16> {
    header(m, INCOMING)
        .unwrap_or_default()
        .split(',')
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// The `mqtt-released` header's pairs (malformed ones are skipped).
pub(crate) fn decode_released(m: &Message) -> Vec<(u16, MessageId)> {
    decode_pairs(m, RELEASED)
}

/// The `mqtt-sent` header of a session record ([`SessionRecord::sent`]).
pub(crate) fn decode_sent(m: &Message) -> Vec<(u16, MessageId)> {
    decode_pairs(m, SENT)
}

/// A header of `packet id:message id` pairs, comma-separated.
fn decode_pairs(m: &Message, name: &str) -> Vec<(u16, MessageId)> {
    header(m, name)
        .unwrap_or_default()
        .split(',')
        .filter_map(|pair| {
            let (p, id) = pair.split_once(':')?;
            Some((p.parse().ok()?, MessageId::parse(id)?))
        })
        .collect()
}

/// The subscriptions a session record holds (a torn or foreign body
/// yields what it can, never a panic).
pub(crate) fn decode_subs(body: &[u8]) -> Vec<(String, u8)> {
    let mut out = Vec::new();
    let mut rest = body;
    while rest.len() >= 3 {
        let qos = rest[0].min(2);
        let n = usize::from(u16::from_le_bytes([rest[1], rest[2]]));
        let Some(f) = rest.get(3..3 + n) else { break };
        if let Ok(f) = std::str::from_utf8(f) {
            out.push((f.to_owned(), qos));
        }
        rest = &rest[3 + n..];
    }
    out
}

/// Whether `driver` keeps durable queues (what a store needs).
fn durable(driver: &DriverHandle) -> bool {
    let info = driver.info();
    info.queue && info.durable
}
