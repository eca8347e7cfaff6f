//! One MQTT connection: a reactor handler.

use std::io::{self, Read};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime};

use bindery::reactor::TimerId;
use bindery::{Completion, Cx, Failure, Handler, Note};
use bindery_classes::driver::{Receipt, SubscribeOptions};
use bindery_classes::listener::{self, OpenConnection};
use bindery_classes::topic::matches;
use bindery_classes::{Message, MessageId, Subscription};
use mio::Interest;
use mio::event::Event;
use mio::net::TcpStream;

use crate::Shared;
use crate::codec::{self, Connect, Decoded, Packet, Publish, QoS, Will};
use crate::session::{self, Inflight, Queued, Session, Stage, Sub};

/// Inbound publishes waiting for the driver: `PUBLISHED | qos << 16 | id`.
const PUBLISHED: u64 = 1 << 40;
/// Unsent output past which queued messages wait.
const MAX_OUTPUT: usize = 1 << 20;
/// Bytes read in one turn before other connections on the reactor get
/// theirs (a fast publisher must not starve its subscribers).
const READ_BATCH: usize = 32 * 1024;
/// The note tag that continues reading after a full batch.
const CONTINUE: u64 = 3;
/// Buffered messages behind the slowest subscriber past which a publisher
/// is slowed: it reads small batches with pauses until the backlog clears,
/// so subscribers catch up instead of the driver dropping.
const SLOW_BACKLOG: u32 = 256;
/// The header that carries an MQTT message's QoS through the kernel.
pub(crate) const QOS_HEADER: &str = "mqtt-qos";

struct Connected {
    session: Arc<Session>,
    epoch: u64,
    keep_alive: Option<Duration>,
    will: Option<Will>,
}

pub(crate) struct Conn {
    stream: TcpStream,
    shared: Arc<Shared>,
    rbuf: Vec<u8>,
    wbuf: Vec<u8>,
    wpos: usize,
    connected: Option<Connected>,
    last_seen: Instant,
    timer: TimerId,
    closed: bool,
    /// The backlog the driver reported for this connection's last publish.
    backlog: Arc<AtomicU32>,
    resume: Option<TimerId>,
    /// The topic last published to and its path: a publisher that keeps to
    /// one topic allocates no path per message.
    last_path: Option<(String, Arc<str>)>,
    _open: OpenConnection,
}

fn message_qos(m: &Message) -> QoS {
    m.headers
        .iter()
        .find(|(k, _)| &**k == QOS_HEADER)
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(1)
}

impl Conn {
    pub(crate) fn start(
        cx: &mut Cx<'_>,
        stream: TcpStream,
        shared: Arc<Shared>,
        open: OpenConnection,
    ) -> io::Result<Box<dyn Handler>> {
        let timer = cx.set_timer(Duration::from_secs(
            shared.config.connect_timeout_secs.max(1),
        ));
        let mut conn = Conn {
            stream,
            shared,
            rbuf: Vec::new(),
            wbuf: Vec::new(),
            wpos: 0,
            connected: None,
            last_seen: Instant::now(),
            timer,
            closed: false,
            backlog: Arc::new(AtomicU32::new(0)),
            resume: None,
            last_path: None,
            _open: open,
        };
        cx.registry().register(
            &mut conn.stream,
            cx.token(),
            Interest::READABLE | Interest::WRITABLE,
        )?;
        Ok(Box::new(conn))
    }

    fn send(&mut self, p: &Packet) {
        codec::encode(&mut self.wbuf, p);
    }

    fn flush(&mut self) -> io::Result<()> {
        listener::write_out(&mut self.stream, &mut self.wbuf, &mut self.wpos)
    }

    /// Ends the connection. Without a DISCONNECT first (`abnormal`), the
    /// will is published.
    fn close(&mut self, cx: &mut Cx<'_>, abnormal: bool, why: &str) {
        if self.closed {
            return;
        }
        self.closed = true;
        if abnormal {
            self.shared
                .stats
                .closed_for_errors
                .fetch_add(1, Ordering::Relaxed);
            tracing::debug!(instance = %self.shared.instance, "closing connection: {why}");
        }
        let _ = self.flush();
        if let Some(c) = self.connected.take() {
            if abnormal {
                if let Some(will) = &c.will {
                    self.publish_will(will);
                }
            }
            self.shared.sessions.detach(&c.session, c.epoch);
        }
        cx.close();
    }

    fn publish_will(&self, will: &Will) {
        let message = self
            .shared
            .message(&will.topic, will.qos, will.payload.clone());
        if will.retain {
            self.retain(&will.topic, &message);
        }
        self.shared
            .dispatcher
            .publish(message, Completion::new(|_| {}));
    }

    fn retain(&self, topic: &str, message: &Message) {
        let mut retained = self.shared.retained.lock();
        if message.body.is_empty() {
            retained.remove(topic);
        } else {
            retained.insert(topic.to_owned(), message.clone());
        }
    }

    fn read(&mut self, cx: &mut Cx<'_>) {
        if self.resume.is_some() {
            return;
        }
        let mut chunk = [0u8; 16 * 1024];
        let mut taken = 0;
        loop {
            let backlog = self.backlog.load(Ordering::Relaxed);
            let slow = backlog > SLOW_BACKLOG;
            if slow && taken > 0 {
                // Subscribers are behind: pause (longer the further behind
                // they are), then read a little more.
                let pause = Duration::from_micros(u64::from(backlog).clamp(500, 20_000));
                self.resume = Some(cx.set_timer(pause));
                return;
            }
            if taken >= READ_BATCH {
                // Yield: notes queued meanwhile (deliveries to subscribers
                // on this reactor) run first, then this connection reads on.
                cx.handle().notify(cx.address(), Note::new(CONTINUE, ()));
                return;
            }
            let want = if slow { 1024 } else { chunk.len() };
            match self.stream.read(&mut chunk[..want]) {
                Ok(0) => return self.close(cx, true, "the client closed the connection"),
                Ok(n) => {
                    taken += n;
                    self.rbuf.extend_from_slice(&chunk[..n]);
                    self.last_seen = Instant::now();
                    if !self.packets(cx) {
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return self.close(cx, true, &format!("read failed: {e}")),
            }
        }
    }

    /// Handles every whole packet in the buffer; false once closed.
    fn packets(&mut self, cx: &mut Cx<'_>) -> bool {
        if self.connected.is_none() && self.rbuf.first().is_some_and(|&b| b != 0x10) {
            // Not even the start of a CONNECT: no need to wait for the rest.
            self.close(cx, true, "a packet before CONNECT");
            return false;
        }
        let mut used = 0;
        loop {
            match codec::decode(&self.rbuf[used..], self.shared.config.max_packet_bytes) {
                Ok(Decoded::Packet(p, n)) => {
                    used += n;
                    if let Err(why) = self.handle(cx, p) {
                        self.close(cx, true, &why);
                    }
                    if self.closed {
                        return false;
                    }
                }
                Ok(Decoded::Partial) => break,
                Err(e) => {
                    self.close(cx, true, &e.0);
                    return false;
                }
            }
        }
        self.rbuf.drain(..used);
        true
    }

    fn handle(&mut self, cx: &mut Cx<'_>, p: Packet) -> Result<(), String> {
        let Some(c) = &self.connected else {
            return match p {
                Packet::Connect(c) => self.connect(cx, *c),
                other => Err(format!("{} before CONNECT", name(&other))),
            };
        };
        let session = c.session.clone();
        match p {
            Packet::Connect(_) => return Err("a second CONNECT".into()),
            Packet::Publish(p) => self.publish_in(cx, &session, p)?,
            Packet::PubAck(id) => {
                let mut st = session.state.lock();
                if st.inflight.get(&id).is_some_and(|i| i.qos == 1) {
                    st.inflight.remove(&id);
                }
            }
            Packet::PubRec(id) => {
                if let Some(i) = session.state.lock().inflight.get_mut(&id) {
                    i.stage = Stage::Released;
                }
                self.send(&Packet::PubRel(id));
            }
            Packet::PubRel(id) => {
                session.state.lock().incoming_qos2.remove(&id);
                self.send(&Packet::PubComp(id));
            }
            Packet::PubComp(id) => {
                let mut st = session.state.lock();
                if st
                    .inflight
                    .get(&id)
                    .is_some_and(|i| i.stage == Stage::Released)
                {
                    st.inflight.remove(&id);
                }
            }
            Packet::Subscribe { packet_id, filters } => {
                self.subscribe(&session, packet_id, filters)
            }
            Packet::Unsubscribe { packet_id, filters } => {
                let gone: Vec<Sub> = {
                    let mut st = session.state.lock();
                    filters
                        .iter()
                        .filter_map(|f| st.subs.remove(f.as_str()))
                        .collect()
                };
                drop(gone);
                self.send(&Packet::UnsubAck(packet_id));
            }
            Packet::PingReq => self.send(&Packet::PingResp),
            Packet::Disconnect => {
                if let Some(c) = &mut self.connected {
                    c.will = None;
                }
                self.close(cx, false, "DISCONNECT");
                return Ok(());
            }
            other => return Err(format!("a client may not send {}", name(&other))),
        }
        self.drain();
        Ok(())
    }

    fn connect(&mut self, cx: &mut Cx<'_>, c: Connect) -> Result<(), String> {
        if c.level != 4 {
            self.send(&Packet::ConnAck {
                session_present: false,
                code: 1,
            });
            self.close(cx, false, "unacceptable protocol level");
            return Ok(());
        }
        let client_id = if c.client_id.is_empty() {
            if !c.clean_session {
                self.send(&Packet::ConnAck {
                    session_present: false,
                    code: 2,
                });
                self.close(cx, false, "an empty client id needs a clean session");
                return Ok(());
            }
            self.shared.sessions.anonymous()
        } else {
            c.client_id.clone()
        };
        let epoch = self.shared.sessions.epoch();
        let config = &self.shared.config;
        let (session, present) = self.shared.sessions.attach(
            &client_id,
            c.clean_session,
            (cx.handle(), cx.address(), epoch),
            || {
                Session::new(
                    client_id.clone(),
                    c.clean_session,
                    config.max_queued,
                    self.shared.stats.dropped.clone(),
                )
            },
        );
        let keep_alive =
            (c.keep_alive > 0).then(|| Duration::from_millis(c.keep_alive as u64 * 1500));
        if let Some(k) = keep_alive {
            self.timer = cx.set_timer(k);
        }
        self.connected = Some(Connected {
            session: session.clone(),
            epoch,
            keep_alive,
            will: c.will,
        });
        self.send(&Packet::ConnAck {
            session_present: present,
            code: 0,
        });
        // Resend what was in flight when the last connection ended.
        let shared = self.shared.clone();
        let resend: Vec<Packet> = session
            .state
            .lock()
            .inflight
            .iter()
            .map(|(&id, i)| match i.stage {
                Stage::Sent => Packet::Publish(Publish {
                    dup: true,
                    qos: i.qos,
                    retain: false,
                    topic: shared
                        .topic(&i.message.destination)
                        .unwrap_or_default()
                        .to_owned(),
                    packet_id: id,
                    payload: i.message.body.clone(),
                }),
                Stage::Released => Packet::PubRel(id),
            })
            .collect();
        for p in &resend {
            self.send(p);
        }
        Ok(())
    }

    fn publish_in(
        &mut self,
        cx: &mut Cx<'_>,
        session: &Arc<Session>,
        p: Publish,
    ) -> Result<(), String> {
        if !codec::valid_topic(&p.topic) {
            return Err(format!(
                "PUBLISH to {:?}, which is not a topic name",
                p.topic
            ));
        }
        if p.qos == 2 && !session.state.lock().incoming_qos2.insert(p.packet_id) {
            // A resend of a message already taken: acknowledge again only.
            self.send(&Packet::PubRec(p.packet_id));
            return Ok(());
        }
        let path = match &self.last_path {
            Some((t, path)) if *t == p.topic => path.clone(),
            _ => {
                let path: Arc<str> = self.shared.path(&p.topic).into();
                self.last_path = Some((p.topic.clone(), path.clone()));
                path
            }
        };
        let message = Message {
            id: MessageId::next(),
            destination: path,
            content_type: self.shared.octets.clone(),
            headers: self.shared.qos_headers[usize::from(p.qos.min(2))].clone(),
            body: p.payload,
            timestamp: SystemTime::now(),
            delivery_count: 0,
        };
        if p.retain {
            self.retain(&p.topic, &message);
        }
        let done = if p.qos == 0 {
            let backlog = self.backlog.clone();
            Completion::new(move |r: Result<Receipt, Failure>| {
                if let Ok(r) = r {
                    backlog.store(r.backlog, Ordering::Relaxed);
                }
            })
        } else {
            cx.completion::<Receipt>(PUBLISHED | (p.qos as u64) << 16 | p.packet_id as u64)
        };
        self.shared.dispatcher.publish(message, done);
        Ok(())
    }

    fn published(&mut self, cx: &mut Cx<'_>, tag: u64, outcome: Result<Receipt, Failure>) {
        let id = (tag & 0xffff) as u16;
        let qos = (tag >> 16) & 3;
        if let Ok(r) = &outcome {
            self.backlog.store(r.backlog, Ordering::Relaxed);
        }
        match outcome {
            Ok(_) if qos == 1 => self.send(&Packet::PubAck(id)),
            Ok(_) => self.send(&Packet::PubRec(id)),
            Err(f) => {
                if qos == 2 {
                    // Not taken: a resend (DUP) must be published again,
                    // not acknowledged as a duplicate of what was refused.
                    if let Some(c) = &self.connected {
                        c.session.state.lock().incoming_qos2.remove(&id);
                    }
                }
                self.close(cx, true, &format!("publish {id} refused: {f}"))
            }
        }
    }

    fn subscribe(&mut self, session: &Arc<Session>, packet_id: u16, filters: Vec<(String, QoS)>) {
        let mut codes = Vec::with_capacity(filters.len());
        for (filter, requested) in filters {
            let code = self.subscribe_one(session, filter, requested.min(2));
            codes.push(code);
        }
        self.send(&Packet::SubAck { packet_id, codes });
    }

    fn subscribe_one(&mut self, session: &Arc<Session>, filter: String, qos: QoS) -> u8 {
        if !bindery_classes::topic::valid_filter(&filter) {
            return 0x80;
        }
        let path = self.shared.path(&filter);
        let Ok(driver) = self.shared.dispatcher.driver(&path) else {
            return 0x80;
        };
        let key: Arc<str> = filter.as_str().into();
        let options = SubscribeOptions {
            credit: self.shared.config.max_queued as u32,
            lease: Duration::from_secs(60),
        };
        // The driver may deliver at once: never call it under the session lock.
        let consumer = session.consumer(key.clone(), &self.shared.instance);
        let Ok(subscription) = driver.subscribe(&path, consumer, options) else {
            return 0x80;
        };
        let old = session.state.lock().subs.insert(
            key.clone(),
            Sub {
                qos,
                subscription: Arc::new(subscription),
            },
        );
        drop(old);
        let retained: Vec<Message> = self
            .shared
            .retained
            .lock()
            .iter()
            .filter(|(t, _)| matches(&filter, t))
            .map(|(_, m)| m.clone())
            .collect();
        for message in retained {
            session.push(Queued {
                message,
                filter: key.clone(),
                retain: true,
            });
        }
        qos
    }

    /// Sends what waits in the session, within the in-flight limit.
    fn drain(&mut self) {
        let Some(c) = self.connected.as_ref().filter(|_| !self.closed) else {
            return;
        };
        let session = c.session.clone();
        let mut credit: Vec<(Arc<Subscription>, u32)> = Vec::new();
        let mut out = Vec::new();
        {
            let mut st = session.state.lock();
            // With overlapping subscriptions a message may arrive once per
            // match: it goes out once, at the highest grant among them.
            let overlapping = st.subs.len() > 1;
            while self.wbuf.len() + out.len() < MAX_OUTPUT {
                let Some(front) = st.queue.front() else { break };
                let topic = self.shared.topic(&front.message.destination);
                let granted = match topic {
                    Some(t) if overlapping => st
                        .subs
                        .iter()
                        .filter(|(f, _)| matches(f, t))
                        .map(|(_, s)| s.qos)
                        .max(),
                    Some(t) => st
                        .subs
                        .get(&front.filter)
                        .filter(|_| !t.starts_with('$') || matches(&front.filter, t))
                        .map(|s| s.qos),
                    None => None,
                };
                let qos = granted.map(|g| g.min(message_qos(&front.message)));
                let has_topic = topic.is_some();
                if qos.is_some_and(|q| q > 0)
                    && st.inflight.len() >= self.shared.config.max_inflight
                {
                    break;
                }
                let Some(q) = st.queue.pop_front() else { break };
                if let Some(s) = st.subs.get(&q.filter).filter(|_| !q.retain) {
                    // One credit call per subscription per drain.
                    match credit
                        .iter_mut()
                        .find(|(sub, _)| Arc::ptr_eq(sub, &s.subscription))
                    {
                        Some((_, n)) => *n += 1,
                        None => credit.push((s.subscription.clone(), 1)),
                    }
                }
                let Some(qos) = qos.filter(|_| has_topic) else {
                    continue;
                };
                if overlapping && !q.retain {
                    if st.recent.contains(&q.message.id) {
                        continue;
                    }
                    st.recent.push_back(q.message.id);
                    if st.recent.len() > 256 {
                        st.recent.pop_front();
                    }
                }
                let packet_id = if qos > 0 { st.packet_id() } else { 0 };
                let topic = self
                    .shared
                    .topic(&q.message.destination)
                    .unwrap_or_default();
                codec::encode_publish(&mut out, topic, qos, q.retain, packet_id, &q.message.body);
                if qos > 0 {
                    st.inflight.insert(
                        packet_id,
                        Inflight {
                            message: q.message,
                            qos,
                            stage: Stage::Sent,
                        },
                    );
                }
            }
        }
        self.wbuf.extend_from_slice(&out);
        for (s, n) in credit {
            s.credit(n);
        }
    }

    /// A driver ended a subscription (a slow consumer): the client is
    /// disconnected, and its session is not kept.
    fn ended(&mut self, cx: &mut Cx<'_>) {
        let Some(c) = &self.connected else { return };
        let why = c.session.state.lock().ended.clone().unwrap_or_default();
        tracing::warn!(
            instance = %self.shared.instance,
            client = %c.session.client_id,
            "disconnecting the client: {why}"
        );
        self.shared
            .stats
            .subscriptions_ended
            .fetch_add(1, Ordering::Relaxed);
        self.close(cx, true, &why);
    }

    fn after(&mut self, cx: &mut Cx<'_>) {
        if self.closed {
            return;
        }
        if let Err(e) = self.flush() {
            self.close(cx, true, &format!("write failed: {e}"));
        }
    }
}

fn name(p: &Packet) -> &'static str {
    match p {
        Packet::Connect(_) => "CONNECT",
        Packet::ConnAck { .. } => "CONNACK",
        Packet::Publish(_) => "PUBLISH",
        Packet::PubAck(_) => "PUBACK",
        Packet::PubRec(_) => "PUBREC",
        Packet::PubRel(_) => "PUBREL",
        Packet::PubComp(_) => "PUBCOMP",
        Packet::Subscribe { .. } => "SUBSCRIBE",
        Packet::SubAck { .. } => "SUBACK",
        Packet::Unsubscribe { .. } => "UNSUBSCRIBE",
        Packet::UnsubAck(_) => "UNSUBACK",
        Packet::PingReq => "PINGREQ",
        Packet::PingResp => "PINGRESP",
        Packet::Disconnect => "DISCONNECT",
    }
}

impl Handler for Conn {
    fn ready(&mut self, cx: &mut Cx<'_>, event: &Event) {
        if event.is_readable() || event.is_read_closed() {
            self.read(cx);
        }
        self.drain();
        self.after(cx);
    }

    fn notify(&mut self, cx: &mut Cx<'_>, note: Note) {
        match note.tag {
            session::WAKE => {}
            CONTINUE => self.read(cx),
            session::TAKEN_OVER => {
                return self.close(cx, true, "another connection took this client id");
            }
            session::ENDED => return self.ended(cx),
            tag if tag & PUBLISHED != 0 => {
                if let Ok(outcome) = note.take::<Result<Receipt, Failure>>() {
                    self.published(cx, tag, outcome);
                }
            }
            _ => {}
        }
        self.drain();
        self.after(cx);
    }

    fn timeout(&mut self, cx: &mut Cx<'_>, timer: TimerId) {
        if Some(timer) == self.resume {
            self.resume = None;
            self.read(cx);
            self.drain();
            return self.after(cx);
        }
        if timer != self.timer {
            return;
        }
        let Some(c) = &self.connected else {
            return self.close(cx, true, "no CONNECT in time");
        };
        let Some(k) = c.keep_alive else { return };
        let quiet = self.last_seen.elapsed();
        if quiet >= k {
            return self.close(cx, true, "keep-alive expired");
        }
        self.timer = cx.set_timer(k - quiet);
    }

    fn shutdown(&mut self, cx: &mut Cx<'_>) {
        self.close(cx, false, "server stopping");
    }
}
