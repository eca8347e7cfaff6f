//! Messages in and out of one MQTT connection: inbound publishes handed to
//! the dispatcher (acknowledged once the driver confirms), subscriptions,
//! and the session's queue sent within the output and in-flight limits.
//! Part of the protocol core ([`crate::core`]).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bindery::{Completion, Failure};
use bindery_classes::auth::Action;
use bindery_classes::connection::Io;
use bindery_classes::driver::Receipt;
use bindery_classes::topic::matches;
use bindery_classes::{Message, MessageId, Subscription};
use bytes::Bytes;

use crate::codec::{self, Packet, PublishIn, QoS};
use crate::core::Core;
use crate::guard::Permit;
use crate::persist::Join;
use crate::session::{Inflight, Queued, Session, Stage, Tag};

/// Unsent output past which queued messages wait.
const MAX_OUTPUT: usize = 1 << 20;
/// The header that carries an MQTT message's QoS through the kernel.
pub(crate) const QOS_HEADER: &str = "mqtt-qos";

/// The QoS a message was published with (HTTP publishes count as 1).
pub(crate) fn message_qos(m: &Message) -> QoS {
    m.headers
        .iter()
        .find(|(k, _)| &**k == QOS_HEADER)
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(1)
}

impl Core {
    /// An inbound PUBLISH: to the dispatcher; QoS 1 and 2 are acknowledged
    /// when the driver's outcome comes back ([`Core::published`]).
    pub(crate) fn publish_in(&mut self, io: &mut Io<'_>, p: PublishIn<'_>) -> Result<(), String> {
        if !codec::valid_topic(p.topic) {
            return Err(format!(
                "PUBLISH to {:?}, which is not a topic name",
                p.topic
            ));
        }
        let path = match &self.last_path {
            Some((t, path)) if t == p.topic => path.clone(),
            _ => {
                let path: Arc<str> = self.shared.path(p.topic).into();
                self.last_path = Some((p.topic.to_owned(), path.clone()));
                path
            }
        };
        match self.permit(io, Action::Publish, &path) {
            Permit::Allowed => {}
            Permit::Denied if p.qos == 0 => {
                tracing::debug!(instance = %self.shared.instance, topic = %p.topic, "QoS 0 publish not allowed: dropped");
                return Ok(());
            }
            Permit::Denied => return Err(format!("not allowed to publish to {:?}", p.topic)),
            Permit::Asked => {
                self.guard.held = Some(Packet::Publish(p.to_owned()));
                return Ok(());
            }
        }
        if p.qos == 2
            && self
                .connected
                .as_ref()
                .is_some_and(|c| !c.session.state.lock().incoming_qos2.insert(p.packet_id))
        {
            // A resend of a message already taken: acknowledge again only.
            self.send(io, &Packet::PubRec(p.packet_id));
            return Ok(());
        }
        // A driver that keeps retained messages for every node keeps
        // this one; else this instance does.
        let by_driver = p.retain && self.shared.retained_by_driver(&path).is_some();
        let headers = if by_driver {
            &self.shared.retain_headers
        } else {
            &self.shared.qos_headers
        };
        let message = Message {
            id: MessageId::next(),
            destination: path,
            content_type: self.shared.octets.clone(),
            headers: headers[usize::from(p.qos.min(2))].clone(),
            body: Bytes::copy_from_slice(p.payload),
            timestamp: self.wall,
            delivery_count: 0,
        };
        // Past the retained caps: delivered, not retained (nor stored).
        let retain = p.retain && !by_driver && self.shared.retain(p.topic, &message);
        let store = self.shared.store.as_ref();
        let done = if p.qos == 0 {
            if let Some(store) = store.filter(|_| retain) {
                store.retain(p.topic, &message, Completion::new(|_| {}));
            }
            Completion::shared(&self.receipts)
        } else {
            let tag = Tag::Published {
                qos: p.qos,
                packet_id: p.packet_id,
            };
            let done = io.wake().completion::<Receipt>(tag.to_u64());
            match store {
                None => done,
                Some(store) => {
                    // Acknowledged once the retained record and the copies
                    // for persistent sessions are stored too.
                    let targets = self.shared.store_targets(p.topic, p.qos);
                    // At QoS 2 a persistent session's record keeps the
                    // packet id too: a resend after a crash is known.
                    let record = self
                        .connected
                        .as_ref()
                        .filter(|c| p.qos == 2 && c.session.queue_path.is_some())
                        .map(|c| c.session.clone());
                    let parts =
                        1 + usize::from(retain) + targets.len() + usize::from(record.is_some());
                    if parts == 1 {
                        done
                    } else {
                        let join = Join::new(parts, done);
                        // In this order into the store's journal: a record
                        // that says the packet id was taken is never on
                        // disk without the copies it stands for (a crash
                        // between them at worst publishes a resend again).
                        self.shared.store_copies(p.topic, targets, &message, &join);
                        if retain {
                            store.retain(p.topic, &message, join.part(false, false));
                        }
                        if let Some(session) = &record {
                            self.shared
                                .save_session_then(session, Some(join.part(false, false)));
                        }
                        join.part(true, false)
                    }
                }
            }
        };
        self.shared.dispatcher.publish(message, done);
        Ok(())
    }

    /// The driver's outcome of a QoS 1 or 2 publish. A refusal closes the
    /// connection: MQTT 3.1.1 has no negative acknowledgement.
    pub(crate) fn published(
        &mut self,
        io: &mut Io<'_>,
        qos: QoS,
        id: u16,
        outcome: Result<Receipt, Failure>,
    ) {
        match outcome {
            Ok(r) => {
                self.backlog.store(r.backlog, Ordering::Relaxed);
                let ack = if qos == 1 {
                    Packet::PubAck(id)
                } else {
                    Packet::PubRec(id)
                };
                self.send(io, &ack);
            }
            Err(f) => {
                if qos == 2 {
                    // Not taken: a resend (DUP) must be published again,
                    // not acknowledged as a duplicate of what was refused.
                    if let Some(c) = &self.connected {
                        c.session.state.lock().incoming_qos2.remove(&id);
                    }
                }
                self.close(true, &format!("publish {id} refused: {f}"))
            }
        }
    }

    /// SUBSCRIBE: each filter granted or refused (0x80), then SUBACK.
    pub(crate) fn subscribe(
        &mut self,
        io: &mut Io<'_>,
        session: &Arc<Session>,
        packet_id: u16,
        filters: Vec<(String, QoS)>,
    ) {
        // With auth, every filter's answer first, in order.
        if self.shared.auth.is_some() {
            while let Some((filter, _)) = filters.get(self.guard.decided.len()) {
                if !bindery_classes::topic::valid_filter(filter) {
                    self.guard.decided.push(false);
                    continue;
                }
                let path = self.shared.path(filter);
                match self.permit(io, Action::Subscribe, &path) {
                    Permit::Allowed => self.guard.decided.push(true),
                    Permit::Denied => self.guard.decided.push(false),
                    Permit::Asked => {
                        self.guard.held = Some(Packet::Subscribe { packet_id, filters });
                        return;
                    }
                }
            }
        }
        let decided = std::mem::take(&mut self.guard.decided);
        let codes = filters
            .into_iter()
            .enumerate()
            .map(|(i, (filter, requested))| {
                if decided.get(i) == Some(&false) {
                    tracing::debug!(instance = %self.shared.instance, %filter, "subscription not allowed");
                    return 0x80;
                }
                self.subscribe_one(session, filter, requested.min(2))
            })
            .collect();
        self.ack_when_recorded(io, session, Packet::SubAck { packet_id, codes });
    }

    /// Saves the session's record and sends `ack` (SUBACK, UNSUBACK) once
    /// it is stored, after any still waiting: a client told its
    /// subscription is made finds it after a crash. Without persistence
    /// (or for a clean session) at once.
    pub(crate) fn ack_when_recorded(&mut self, io: &mut Io<'_>, session: &Session, ack: Packet) {
        if self.shared.store.is_none() || session.queue_path.is_none() {
            return self.send(io, &ack);
        }
        let seq = self.next_record;
        self.next_record = seq.wrapping_add(1);
        let done = io
            .wake()
            .completion::<Receipt>(Tag::Recorded { seq }.to_u64());
        let mut bytes = Vec::new();
        codec::encode(&mut bytes, &ack);
        self.recording.push_back((seq, bytes, false));
        self.shared.save_session_then(session, Some(done));
    }

    /// Record `seq` is stored: the acks waiting at the front go.
    pub(crate) fn recorded(&mut self, io: &mut Io<'_>, seq: u32) {
        if let Some(r) = self.recording.iter_mut().find(|r| r.0 == seq) {
            r.2 = true;
        }
        while self.recording.front().is_some_and(|r| r.2) {
            if let Some((_, bytes, _)) = self.recording.pop_front() {
                io.out().extend_from_slice(&bytes);
            }
        }
    }

    fn subscribe_one(&mut self, session: &Arc<Session>, filter: String, qos: QoS) -> u8 {
        if !self.shared.attach_sub(session, &filter, qos) {
            return 0x80;
        }
        let key: Arc<str> = filter.as_str().into();
        if let Some(driver) = self.shared.retained_by_driver(&self.shared.path(&filter)) {
            // Asked of the driver (another node may have set them); they
            // come into the session when it answers.
            let (s, root) = (session.clone(), self.shared.root.clone());
            let path = self.shared.path(&filter);
            driver.retained(
                &path,
                Completion::new(move |r: Result<Vec<Message>, bindery::Failure>| {
                    for message in r.unwrap_or_default() {
                        let topic = message.destination.strip_prefix(&*root).unwrap_or("");
                        if matches(&key, topic) {
                            s.push(Queued {
                                message,
                                filter: key.clone(),
                                retain: true,
                                stored: false,
                            });
                        }
                    }
                }),
            );
            return qos;
        }
        for message in self.shared.retained_matching(&filter) {
            session.push(Queued {
                message,
                filter: key.clone(),
                retain: true,
                stored: false,
            });
        }
        qos
    }

    /// Sends what waits in the session, within the output and in-flight
    /// limits, and credits the subscriptions it came from.
    pub(crate) fn drain(&mut self, io: &mut Io<'_>) {
        let Some(c) = self.connected.as_ref().filter(|_| !self.is_closing()) else {
            return;
        };
        let session = c.session.clone();
        let mut credit: Vec<(Arc<Subscription>, u32)> = Vec::new();
        let (mut stored_taken, mut settle) = (0u32, Vec::new());
        // A record this drain started (stored QoS 2 messages sent).
        let mut new_record = None;
        {
            let mut st = session.state.lock();
            // With overlapping subscriptions a message may arrive once per
            // match: it goes out once, at the highest grant among them.
            let overlapping = st.subs.len() > 1;
            // The subscription of the last message's filter (its grant and
            // its entry in `credit`): a run of messages from one
            // subscription looks it up once.
            type Found = Option<(QoS, usize)>;
            let mut last: Option<(Arc<str>, Found)> = None;
            let recorded = self.shared.store.is_some() && session.queue_path.is_some();
            while io.unsent() + self.recording.back().map_or(0, |r| r.1.len()) < MAX_OUTPUT {
                let Some(front) = st.queue.front() else { break };
                let topic = self.shared.topic(&front.message.destination);
                let sub = match &last {
                    Some((f, found)) if Arc::ptr_eq(f, &front.filter) => *found,
                    _ => {
                        let found = st.subs.get(&front.filter).map(|s| {
                            let at = credit
                                .iter()
                                .position(|(c, _)| Arc::ptr_eq(c, &s.subscription))
                                .unwrap_or_else(|| {
                                    credit.push((s.subscription.clone(), 0));
                                    credit.len() - 1
                                });
                            (s.qos, at)
                        });
                        last = Some((front.filter.clone(), found));
                        found
                    }
                };
                let granted = match topic {
                    Some(t) if overlapping || front.stored => st
                        .subs
                        .iter()
                        .filter(|(f, _)| matches(f, t))
                        .map(|(_, s)| s.qos)
                        .max(),
                    Some(t) => sub
                        .filter(|_| !t.starts_with('$') || matches(&front.filter, t))
                        .map(|(qos, _)| qos),
                    None => None,
                };
                let qos = granted.map(|g| g.min(self.shared.qos_of(&front.message)));
                let has_topic = topic.is_some();
                if qos.is_some_and(|q| q > 0)
                    && st.inflight.len() >= self.shared.config.max_inflight
                {
                    break;
                }
                let Some(q) = st.queue.pop_front() else { break };
                if q.stored {
                    stored_taken += 1;
                } else if let Some((_, at)) = sub.filter(|_| !q.retain) {
                    // One credit call per subscription per drain.
                    credit[at].1 += 1;
                }
                let released = q.stored && st.released.values().any(|&id| id == q.message.id);
                let Some(qos) = qos.filter(|_| has_topic && !released) else {
                    // Released: PUBREC'd before a restart that lost the
                    // ack (the record kept it); the client has it.
                    if q.stored {
                        // No subscription wants it any more.
                        settle.push(q.message.id);
                    }
                    continue;
                };
                if q.stored && qos == 0 {
                    settle.push(q.message.id);
                }
                if overlapping && !q.retain && !q.stored {
                    if st.recent.contains(&q.message.id) {
                        continue;
                    }
                    st.recent.push_back(q.message.id);
                    if st.recent.len() > 256 {
                        st.recent.pop_front();
                    }
                }
                let (packet_id, dup) = if q.stored && qos == 2 && recorded {
                    // Exactly once across a crash: the record keeps its
                    // packet id before it goes (then, after a restart, it
                    // goes again with that id and DUP).
                    match st.resend.remove(&q.message.id) {
                        Some(p) => (p, true),
                        None => {
                            let p = st.packet_id();
                            st.sent.insert(p, q.message.id);
                            if new_record.is_none() {
                                let seq = self.next_record;
                                self.next_record = seq.wrapping_add(1);
                                self.recording.push_back((seq, Vec::new(), false));
                                new_record = Some(seq);
                            }
                            (p, false)
                        }
                    }
                } else if qos > 0 {
                    (st.packet_id(), false)
                } else {
                    (0, false)
                };
                let topic = self
                    .shared
                    .topic(&q.message.destination)
                    .unwrap_or_default();
                // Behind a record being stored, everything waits its turn.
                let out = match self.recording.back_mut() {
                    Some(waiting) => &mut waiting.1,
                    None => io.out(),
                };
                let at = out.len();
                codec::encode_publish(out, topic, qos, q.retain, packet_id, &q.message.body);
                if dup {
                    out[at] |= 0x08;
                }
                if qos > 0 {
                    st.inflight.insert(
                        packet_id,
                        Inflight {
                            message: q.message,
                            qos,
                            stage: Stage::Sent,
                            stored: q.stored,
                        },
                    );
                }
            }
        }
        if let Some(seq) = new_record {
            let done = io
                .wake()
                .completion::<Receipt>(Tag::Recorded { seq }.to_u64());
            self.shared.save_session_then(&session, Some(done));
        }
        // Credit calls into drivers: not under the session lock.
        for (s, n) in credit {
            if n > 0 {
                s.credit(n);
            }
        }
        for id in settle {
            self.shared.settle(&session, id);
        }
        if stored_taken > 0 {
            // Not under the session lock: the driver may deliver at once.
            let sub = session.state.lock().store_sub.clone();
            if let Some(sub) = sub {
                sub.credit(stored_taken);
            }
        }
    }

    /// A driver ended a subscription (a slow consumer): the client is
    /// disconnected, and its session is not kept.
    pub(crate) fn ended(&mut self) {
        let Some(c) = &self.connected else { return };
        let why = c.session.state.lock().ended.clone().unwrap_or_default();
        tracing::warn!(
            instance = %self.shared.instance,
            client = %c.session.client_id,
            "disconnecting the client: {why}"
        );
        self.shared.stats.subscriptions_ended.inc();
        self.close(true, &why);
    }
}
