//! The MQTT protocol core of one connection: packets in, packets out, no
//! socket and no reactor (see [`bindery_classes::connection`]).
//!
//! This file is the connection's life: CONNECT (sessions, takeover),
//! keep-alive, the acknowledgement handshakes, DISCONNECT and the will.
//! Messages in and out (publish, subscribe, the session's queue, pacing)
//! are in [`crate::traffic`].
//!
//! A little over 400 lines: the acknowledgement handshakes include the
//! settling of stored messages ([`crate::restore`]), which belongs with
//! them.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use bindery::{Completion, Failure, Note};
use bindery_classes::connection::{Ended, Flow, Intake, Io, Protocol, Reading};
use bindery_classes::driver::Receipt;

use crate::Shared;
use crate::codec::{self, Connect, Decoded, Packet, Publish, Will};
use crate::guard::Guard;
use crate::session::{Session, Stage, Sub, Tag};

/// Bytes read in one go.
const READ_CHUNK: usize = 16 * 1024;
/// Buffered messages behind the slowest subscriber past which a publisher
/// is slowed: it reads small batches with pauses until the backlog clears,
/// so subscribers catch up instead of the driver dropping.
const SLOW_BACKLOG: u32 = 256;

/// A connection past CONNECT.
pub(crate) struct Connected {
    pub(crate) session: Arc<Session>,
    epoch: u64,
    keep_alive: Option<Duration>,
    will: Option<Will>,
}

/// One connection's MQTT state.
pub(crate) struct Core {
    pub(crate) shared: Arc<Shared>,
    pub(crate) connected: Option<Connected>,
    /// Until CONNECT: when the connection is given up.
    connect_by: Instant,
    last_seen: Instant,
    /// Set once the connection is ending: whether abnormally (the will is
    /// published).
    closing: Option<bool>,
    /// The backlog the driver reported for this connection's last publish.
    pub(crate) backlog: Arc<AtomicU32>,
    /// Where QoS 0 receipts go (into `backlog`): one function for all of
    /// them, no allocation per publish.
    pub(crate) receipts: Arc<dyn Fn(Result<Receipt, Failure>) + Send + Sync>,
    /// The wall clock when the input being handled was read: messages
    /// published from one read share it.
    pub(crate) wall: std::time::SystemTime,
    /// The topic last published to and its path: a publisher that keeps to
    /// one topic allocates no path per message.
    pub(crate) last_path: Option<(String, Arc<str>)>,
    /// Input bytes seen by the last `receive` and left unused.
    unused: usize,
    /// The peer, for log lines.
    pub(crate) peer: String,
    /// Who the client is and what it may do ([`crate::guard`]).
    pub(crate) guard: Guard,
    /// What waits for a persistent session's record to be stored, in
    /// order: SUBACKs and UNSUBACKs, stored QoS 2 PUBLISHes whose packet
    /// id the record keeps, and every packet queued behind them
    /// (sequence, encoded packets, stored yet).
    pub(crate) recording: std::collections::VecDeque<(u32, Vec<u8>, bool)>,
    /// The next record's sequence number.
    pub(crate) next_record: u32,
}

impl Core {
    pub(crate) fn new(shared: Arc<Shared>, now: Instant) -> Core {
        let connect_by = now + Duration::from_secs(shared.config.connect_timeout_secs.max(1));
        let backlog = Arc::new(AtomicU32::new(0));
        let to = backlog.clone();
        Core {
            shared,
            connected: None,
            connect_by,
            last_seen: now,
            closing: None,
            backlog,
            receipts: Arc::new(move |r: Result<Receipt, Failure>| {
                if let Ok(r) = r {
                    to.store(r.backlog, Ordering::Relaxed);
                }
            }),
            wall: std::time::SystemTime::now(),
            last_path: None,
            unused: 0,
            peer: String::new(),
            guard: Guard::default(),
            recording: Default::default(),
            next_record: 0,
        }
    }

    pub(crate) fn send(&self, io: &mut Io<'_>, p: &Packet) {
        codec::encode(io.out(), p);
    }

    pub(crate) fn is_closing(&self) -> bool {
        self.closing.is_some()
    }

    /// Ends the connection (once the output is tried). Without a
    /// DISCONNECT first (`abnormal`), the will is published.
    pub(crate) fn close(&mut self, abnormal: bool, why: &str) {
        if self.closing.is_some() {
            return;
        }
        self.closing = Some(abnormal);
        if abnormal {
            self.shared.stats.closed_for_errors.inc();
            tracing::debug!(instance = %self.shared.instance, "closing connection: {why}");
        }
    }

    fn publish_will(&self, will: &Will) {
        let message = self
            .shared
            .message(&will.topic, will.qos, will.payload.clone());
        if will.retain && self.shared.retain(&will.topic, &message) {
            if let Some(store) = &self.shared.store {
                store.retain(&will.topic, &message, Completion::new(|_| {}));
            }
        }
        self.shared
            .dispatcher
            .publish(message, Completion::new(|_| {}));
    }

    pub(crate) fn handle(&mut self, io: &mut Io<'_>, p: Packet) -> Result<(), String> {
        let Some(c) = &self.connected else {
            return match p {
                Packet::Connect(c) => self.connect(io, *c),
                other => Err(format!("{} before CONNECT", name(&other))),
            };
        };
        if let Packet::Publish(p) = &p {
            return self.publish_in(io, p.as_in());
        }
        let session = c.session.clone();
        match p {
            Packet::Connect(_) => return Err("a second CONNECT".into()),
            Packet::Publish(_) => {}
            Packet::PubAck(id) => {
                let done = {
                    let mut st = session.state.lock();
                    match st.inflight.get(&id) {
                        Some(i) if i.qos == 1 => st.inflight.remove(&id),
                        _ => None,
                    }
                };
                if let Some(i) = done.filter(|i| i.stored) {
                    self.shared.settle(&session, i.message.id);
                }
            }
            Packet::PubRec(id) => {
                // At QoS 2 the client has the message once it says PUBREC:
                // a stored one is settled then, never sent again.
                let stored = match session.state.lock().inflight.get_mut(&id) {
                    Some(i) => {
                        i.stage = Stage::Released;
                        std::mem::take(&mut i.stored).then_some(i.message.id)
                    }
                    None => None,
                };
                match stored {
                    // PUBREL once the ack is kept: after a crash the
                    // message is then never sent again.
                    Some(m) => {
                        let done = io
                            .wake()
                            .completion::<()>(Tag::Settled { packet_id: id }.to_u64());
                        self.shared.release_stored(&session, id, m, done);
                    }
                    None => self.send(io, &Packet::PubRel(id)),
                }
            }
            Packet::PubRel(id) => {
                // PUBCOMP once a persistent session's record forgets the
                // id: the client may use it again for a new message.
                session.state.lock().incoming_qos2.remove(&id);
                self.ack_when_recorded(io, &session, Packet::PubComp(id));
            }
            Packet::PubComp(id) => {
                {
                    let mut st = session.state.lock();
                    if st
                        .inflight
                        .get(&id)
                        .is_some_and(|i| i.stage == Stage::Released)
                    {
                        st.inflight.remove(&id);
                    }
                }
                self.shared.completed(&session, id);
            }
            Packet::Subscribe { packet_id, filters } => {
                self.subscribe(io, &session, packet_id, filters)
            }
            Packet::Unsubscribe { packet_id, filters } => {
                let gone: Vec<Sub> = {
                    let mut st = session.state.lock();
                    filters
                        .iter()
                        .filter_map(|f| st.subs.remove(f.as_str()))
                        .collect()
                };
                // Cancelling takes driver locks: not under the session's.
                drop(gone);
                self.ack_when_recorded(io, &session, Packet::UnsubAck(packet_id));
            }
            Packet::PingReq => self.send(io, &Packet::PingResp),
            Packet::Disconnect => {
                if let Some(c) = &mut self.connected {
                    c.will = None;
                }
                self.close(false, "DISCONNECT");
            }
            other => return Err(format!("a client may not send {}", name(&other))),
        }
        Ok(())
    }

    /// Refuses a CONNECT with a CONNACK return code, then closes.
    pub(crate) fn refuse(&mut self, io: &mut Io<'_>, code: u8, why: &str) -> Result<(), String> {
        self.send(
            io,
            &Packet::ConnAck {
                session_present: false,
                code,
            },
        );
        self.close(false, why);
        Ok(())
    }

    fn connect(&mut self, io: &mut Io<'_>, c: Connect) -> Result<(), String> {
        if c.level != 4 {
            return self.refuse(io, 1, "unacceptable protocol level");
        }
        let Some(c) = self.admit(io, c) else {
            return Ok(());
        };
        let client_id = match c.client_id.as_str() {
            "" if !c.clean_session => {
                return self.refuse(io, 2, "an empty client id needs a clean session");
            }
            "" => self.shared.sessions.anonymous(),
            id => id.to_owned(),
        };
        let epoch = self.shared.sessions.epoch();
        self.shared.expire_sessions();
        let owner = self.guard.identity.as_ref().and_then(|i| i.user.clone());
        let shared = self.shared.clone();
        let attached = self.shared.sessions.attach(
            &client_id,
            c.clean_session,
            owner,
            (io.wake().clone(), epoch),
            self.shared.config.max_sessions,
            || shared.new_session(client_id.clone(), c.clean_session),
        );
        let Ok((session, present, replaced)) = attached else {
            self.shared.session_refused(&client_id, &self.peer);
            return self.refuse(io, 3, "max_sessions persistent sessions are kept");
        };
        if let Some(old) = replaced {
            self.shared.forget(&old);
        }
        let new_persistent = !present && !c.clean_session;
        if new_persistent {
            self.shared.open_queue(&session);
        }
        let keep_alive =
            (c.keep_alive > 0).then(|| Duration::from_millis(u64::from(c.keep_alive) * 1500));
        // A resumed session's subscriptions are checked against the rules
        // in effect now ([`Core::recheck`]).
        self.guard.checked = match &self.shared.auth {
            Some(auth) if !present => Some(auth.get().generation()),
            _ => None,
        };
        self.connected = Some(Connected {
            session: session.clone(),
            epoch,
            keep_alive,
            will: c.will,
        });
        let connack = Packet::ConnAck {
            session_present: present,
            code: 0,
        };
        if new_persistent {
            // Once its record is stored: a client told nothing of a
            // session finds it after a crash.
            self.ack_when_recorded(io, &session, connack);
        } else {
            self.send(io, &connack);
        }
        // Resend what was in flight when the last connection ended.
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
                    topic: self
                        .shared
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
            self.send(io, p);
        }
        Ok(())
    }
}

impl Protocol for Core {
    const TURN: usize = 32 * 1024;

    fn certified(&mut self, chain: &[bindery_classes::connection::CertificateDer<'static>]) {
        self.certified_by(chain);
    }

    fn receive(&mut self, io: &mut Io<'_>, input: &[u8]) -> usize {
        if input.len() > self.unused {
            self.last_seen = io.now();
            self.wall = std::time::SystemTime::now();
        }
        if self.connected.is_none()
            && !self.guard.waiting()
            && input.first().is_some_and(|&b| b != 0x10)
        {
            // Not even the start of a CONNECT: no need to wait for the rest.
            self.close(true, "a packet before CONNECT");
        }
        let mut used = 0;
        while self.closing.is_none() && !self.guard.waiting() {
            let max = self.shared.config.max_packet_bytes;
            // PUBLISH first, borrowed from the input: no copy of its topic.
            let known = self.last_path.as_ref().map(|(t, _)| t.as_str());
            match codec::decode_publish(&input[used..], max, known) {
                Ok(Some((p, n))) if self.connected.is_some() => {
                    used += n;
                    if let Err(why) = self.publish_in(io, p) {
                        self.close(true, &why);
                    }
                    continue;
                }
                Ok(_) => {}
                Err(e) => {
                    self.close(true, &e.0);
                    continue;
                }
            }
            match codec::decode(&input[used..], max) {
                Ok(Decoded::Packet(p, n)) => {
                    used += n;
                    if let Err(why) = self.handle(io, p) {
                        self.close(true, &why);
                    }
                }
                Ok(Decoded::Partial) => break,
                Err(e) => self.close(true, &e.0),
            }
        }
        if self.closing.is_some() {
            used = input.len();
        }
        self.unused = input.len() - used;
        used
    }

    fn note(&mut self, io: &mut Io<'_>, note: Note) {
        match Tag::from_u64(note.tag) {
            Some(Tag::Wake) | None => {}
            Some(Tag::TakenOver) => self.close(true, "another connection took this client id"),
            Some(Tag::Ended) => self.ended(),
            Some(Tag::Published { qos, packet_id }) => {
                if let Ok(outcome) = note.take::<Result<Receipt, Failure>>() {
                    self.published(io, qos, packet_id, outcome);
                }
            }
            Some(Tag::Login | Tag::Authorized) => self.answered(io, note),
            Some(Tag::Recorded { seq }) => match note.take::<Result<Receipt, Failure>>() {
                Ok(Ok(_)) => self.recorded(io, seq),
                Ok(Err(f)) => self.close(true, &format!("session record not stored: {f}")),
                Err(_) => {}
            },
            Some(Tag::Settled { packet_id }) => match note.take::<Result<(), bindery::Failure>>() {
                Ok(Ok(())) => self.send(io, &Packet::PubRel(packet_id)),
                Ok(Err(f)) => self.close(true, &format!("stored message not acked: {f}")),
                Err(_) => {}
            },
        }
    }

    fn intake(&self, reading: &Reading) -> Intake {
        if self.closing.is_some() || self.guard.waiting() {
            return Intake::Wait;
        }
        let backlog = self.backlog.load(Ordering::Relaxed);
        if backlog <= SLOW_BACKLOG {
            return Intake::Read(READ_CHUNK);
        }
        if reading.this_turn == 0 {
            // Subscribers are behind: a little at a time.
            return Intake::Read(1024);
        }
        // Then pause, longer the further behind they are.
        let pause = Duration::from_micros(u64::from(backlog).clamp(500, 20_000));
        Intake::PauseUntil(reading.now + pause)
    }

    fn pump(&mut self, io: &mut Io<'_>) {
        self.recheck(io);
        if self.subs_current() {
            self.drain(io);
        }
    }

    fn deadline(&self) -> Option<Instant> {
        if self.closing.is_some() {
            return None;
        }
        match &self.connected {
            None => Some(self.connect_by),
            Some(c) => c.keep_alive.map(|k| self.last_seen + k),
        }
    }

    fn expire(&mut self, io: &mut Io<'_>) {
        match &self.connected {
            None if io.now() >= self.connect_by => self.close(true, "no CONNECT in time"),
            Some(Connected {
                keep_alive: Some(k),
                ..
            }) if io.now() >= self.last_seen + *k => self.close(true, "keep-alive expired"),
            _ => {}
        }
    }

    fn peer_closed(&mut self, _: &mut Io<'_>) {
        self.close(true, "the client closed the connection");
    }

    fn shutdown(&mut self, _: &mut Io<'_>) {
        self.shared.stopping.store(true, Ordering::Release);
        self.close(false, "server stopping");
    }

    fn flow(&self) -> Flow {
        if self.closing.is_some() {
            Flow::Close
        } else {
            Flow::Open
        }
    }

    fn closed(&mut self, why: &Ended) {
        if self.closing.is_none() {
            self.close(true, &why.to_string());
        }
        if let Some(c) = self.connected.take() {
            if self.closing == Some(true) {
                if let Some(will) = &c.will {
                    self.publish_will(will);
                }
            }
            if self.shared.sessions.detach(&c.session, c.epoch) {
                self.shared.forget(&c.session);
            }
        }
    }
}

/// A packet's name, for log lines.
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
