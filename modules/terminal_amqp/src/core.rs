//! The AMQP protocol core of one connection: frames in, frames out, no
//! socket and no reactor (see [`bindery_classes::connection`]).
//!
//! This file is the connection's life: the protocol header, negotiation
//! (start, tune, open), heartbeats, frame dispatch to channels, and the
//! close handshakes. What channels do is in [`crate::channel`],
//! [`crate::queues`] (exchanges, queues, bindings), [`crate::publish`] and
//! [`crate::consume`] (consumers, `basic.get`, acknowledgements). Longer than most files: the handshake's
//! and the close handshakes' states and their reply codes belong together.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bindery::Note;
use bindery_classes::connection::{Ended, Flow, Intake, Io, Protocol, Reading};
use bytes::Bytes;

use crate::Shared;
use crate::channel::{Binding, Channel, Pending};
use crate::guard::{self, Guard};
use crate::methods::{self, Method};
use crate::wire::{self, Framed, Table, Value};

/// Reply codes (AMQP 0-9-1, section 1.9).
pub(crate) mod code {
    pub(crate) const CONTENT_TOO_LARGE: u16 = 311;
    pub(crate) const NO_ROUTE: u16 = 312;
    pub(crate) const ACCESS_REFUSED: u16 = 403;
    pub(crate) const NOT_FOUND: u16 = 404;
    pub(crate) const RESOURCE_LOCKED: u16 = 405;
    pub(crate) const PRECONDITION_FAILED: u16 = 406;
    pub(crate) const FRAME_ERROR: u16 = 501;
    pub(crate) const SYNTAX_ERROR: u16 = 502;
    pub(crate) const COMMAND_INVALID: u16 = 503;
    pub(crate) const CHANNEL_ERROR: u16 = 504;
    pub(crate) const UNEXPECTED_FRAME: u16 = 505;
    pub(crate) const NOT_ALLOWED: u16 = 530;
    pub(crate) const NOT_IMPLEMENTED: u16 = 540;
}

/// Publishes waiting for their driver past which the connection stops
/// reading until some complete.
pub(crate) const MAX_PUBLISHING: usize = 4096;
/// Bytes read in one go.
const READ_CHUNK: usize = 64 * 1024;
/// How long a server-initiated close waits for `close-ok`.
const CLOSE_WAIT: Duration = Duration::from_secs(2);
/// The note tag that says publishes completed and reading may go on.
pub(crate) const RESUME: u64 = 0;
/// The note tag of a [`bindery::Failure`] saying a destination is full:
/// the publisher is paused (and told `connection.blocked`).
pub(crate) const FULL: u64 = u64::MAX;
/// How long a publisher is paused after a full destination, when the
/// driver gave no retry hint.
const FULL_PAUSE: Duration = Duration::from_millis(100);

/// Why a method was refused: a channel or a connection exception.
#[derive(Debug)]
pub(crate) struct Refusal {
    pub(crate) code: u16,
    pub(crate) text: String,
    pub(crate) connection: bool,
    /// Not a refusal: the auth instance was asked, and the frame is held
    /// until it answers ([`crate::guard`]).
    pub(crate) held: bool,
}

/// A channel exception.
pub(crate) fn soft(code: u16, text: impl Into<String>) -> Refusal {
    Refusal {
        code,
        text: text.into(),
        connection: false,
        held: false,
    }
}

/// A connection exception.
pub(crate) fn hard(code: u16, text: impl Into<String>) -> Refusal {
    Refusal {
        code,
        text: text.into(),
        connection: true,
        held: false,
    }
}

/// Where the connection is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    Header,
    StartOk,
    TuneOk,
    Open,
    Running,
}

/// Whether the connection is ending.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Closing {
    No,
    /// The server sent `connection.close`; waiting for `close-ok`.
    AwaitCloseOk(Instant),
    /// Done: close once the output is written.
    Done,
}

/// One connection's AMQP state.
pub(crate) struct Core {
    pub(crate) shared: Arc<Shared>,
    pub(crate) peer: String,
    pub(crate) id: u64,
    stage: Stage,
    pub(crate) frame_max: usize,
    channel_max: u16,
    heartbeat: Option<Duration>,
    handshake_by: Instant,
    last_seen: Instant,
    next_beat: Option<Instant>,
    closing: Closing,
    pub(crate) channels: HashMap<u16, Channel>,
    /// What each note tag this connection handed out stands for.
    pub(crate) pending: HashMap<u64, Pending>,
    next_tag: u64,
    /// Topic subscriptions feeding queues (`queue.bind`).
    pub(crate) bindings: Vec<Binding>,
    /// Publishes handed to the dispatcher and not completed.
    pub(crate) publishing: Arc<AtomicUsize>,
    /// The client takes `connection.blocked` and `unblocked`.
    blocked_capable: bool,
    /// Reading paused until then: a destination was full.
    blocked_until: Option<Instant>,
    /// Tags of `basic.get`s answered empty (see [`crate::consume`]).
    pub(crate) retired_gets: std::collections::VecDeque<u64>,
    /// Who the client is, and what it may do ([`crate::guard`]).
    pub(crate) guard: Guard,
    /// The frame being handled is held ([`Core::frame`]).
    held: bool,
    unused: usize,
}

impl Core {
    /// A core for a connection from `peer`, made at `now`.
    pub(crate) fn new(shared: Arc<Shared>, peer: String, now: Instant) -> Core {
        let handshake = Duration::from_secs(shared.config.handshake_timeout_secs.max(1));
        Core {
            id: shared.connection_id(),
            frame_max: shared.config.frame_max as usize,
            channel_max: shared.config.channel_max,
            shared,
            peer,
            stage: Stage::Header,
            heartbeat: None,
            handshake_by: now + handshake,
            last_seen: now,
            next_beat: None,
            closing: Closing::No,
            channels: HashMap::new(),
            pending: HashMap::new(),
            next_tag: 1,
            bindings: Vec::new(),
            publishing: Arc::new(AtomicUsize::new(0)),
            retired_gets: Default::default(),
            blocked_capable: false,
            blocked_until: None,
            guard: Guard::default(),
            held: false,
            unused: 0,
        }
    }

    /// A fresh note tag standing for `p`.
    pub(crate) fn tag(&mut self, p: Pending) -> u64 {
        let t = self.next_tag;
        self.next_tag += 1;
        self.pending.insert(t, p);
        t
    }

    /// Sends a method frame.
    pub(crate) fn send(&self, io: &mut Io<'_>, channel: u16, m: &Method) {
        wire::put_frame(io.out(), wire::METHOD, channel, |out| {
            methods::encode(out, m)
        });
    }

    /// Sends a method with content: header and body frames within
    /// `frame_max`.
    pub(crate) fn send_content(
        &self,
        io: &mut Io<'_>,
        channel: u16,
        m: &Method,
        header: &wire::ContentHeader,
        body: &[u8],
    ) {
        self.send(io, channel, m);
        wire::put_frame(io.out(), wire::HEADER, channel, |out| {
            wire::put_header(out, header)
        });
        let chunk = self.frame_max.saturating_sub(wire::FRAME_OVERHEAD).max(1);
        for part in body.chunks(chunk) {
            wire::put_frame(io.out(), wire::BODY, channel, |out| {
                out.extend_from_slice(part)
            });
        }
    }

    fn is_closing(&self) -> bool {
        self.closing != Closing::No
    }

    /// A connection exception: `connection.close` with `code` and `text`,
    /// then wait for `close-ok`. Every channel's resources are released now.
    pub(crate) fn fail(&mut self, io: &mut Io<'_>, code: u16, text: &str, on: (u16, u16)) {
        if self.is_closing() {
            return;
        }
        self.shared.stats.closed_for_errors.inc();
        tracing::debug!(instance = %self.shared.instance, peer = %self.peer, code, "closing the connection: {text}");
        self.send(
            io,
            0,
            &Method::ConnectionClose {
                code,
                text: text.to_owned(),
                class: on.0,
                method: on.1,
            },
        );
        self.release_all();
        self.closing = Closing::AwaitCloseOk(io.now() + CLOSE_WAIT);
    }

    /// Ends the connection at once (after the output is tried): nothing
    /// more can be said to this peer.
    fn drop_connection(&mut self, why: &str) {
        if self.closing != Closing::Done {
            tracing::debug!(instance = %self.shared.instance, peer = %self.peer, "dropping the connection: {why}");
            self.release_all();
            self.closing = Closing::Done;
        }
    }

    /// Releases every channel's consumers and unacknowledged messages,
    /// the bindings, and the exclusive queues.
    fn release_all(&mut self) {
        let channels: Vec<u16> = self.channels.keys().copied().collect();
        for ch in channels {
            self.teardown(ch);
        }
        self.bindings.clear();
        self.pending.clear();
        let mine: Vec<String> = {
            let mut queues = self.shared.queues.lock();
            let mine = queues
                .iter()
                .filter(|(_, d)| d.owner == Some(self.id))
                .map(|(q, _)| q.clone())
                .collect();
            queues.retain(|_, d| d.owner != Some(self.id));
            mine
        };
        for q in mine {
            self.shared.unroute(&q);
            // An exclusive queue goes with its connection.
            let path = self.shared.queue_path(&q);
            if let Ok(driver) = self.shared.dispatcher.driver(&path) {
                crate::manage::delete_quietly(&self.shared, &driver, &q, &path, Default::default());
            }
        }
    }

    /// A destination was full: pause reading this publisher for the
    /// driver's retry hint, telling a client that takes it
    /// `connection.blocked` (and `unblocked` when the pause ends).
    pub(crate) fn slow_down(&mut self, io: &mut Io<'_>, f: &bindery::Failure) {
        let pause = f
            .retry_after
            .unwrap_or(FULL_PAUSE)
            .clamp(Duration::from_millis(10), Duration::from_secs(5));
        if self.blocked_until.is_none() && self.blocked_capable {
            self.send(
                io,
                0,
                &Method::ConnectionBlocked {
                    reason: f.reason.to_string(),
                },
            );
        }
        let until = io.now() + pause;
        self.blocked_until = Some(self.blocked_until.map_or(until, |u| u.max(until)));
    }

    fn start(&self, io: &mut Io<'_>) {
        let capabilities: Table = [
            "publisher_confirms",
            "basic.nack",
            "consumer_cancel_notify",
            "per_consumer_qos",
            "authentication_failure_close",
            "connection.blocked",
        ]
        .iter()
        .map(|c| (c.to_string(), Value::Bool(true)))
        .collect();
        let text = |s: &str| Value::Str(Bytes::copy_from_slice(s.as_bytes()));
        self.send(
            io,
            0,
            &Method::ConnectionStart {
                server_properties: vec![
                    ("product".into(), text("Bindery")),
                    ("version".into(), text(env!("CARGO_PKG_VERSION"))),
                    ("platform".into(), text("Rust")),
                    ("capabilities".into(), Value::Table(capabilities)),
                ],
                mechanisms: Bytes::from_static(if self.shared.config.use_identity_as_username {
                    &b"EXTERNAL PLAIN AMQPLAIN"[..]
                } else {
                    &b"PLAIN AMQPLAIN"[..]
                }),
                locales: Bytes::from_static(b"en_US"),
            },
        );
    }

    /// A method on channel 0, or the handshake.
    fn connection_method(&mut self, io: &mut Io<'_>, m: Method) -> Result<(), Refusal> {
        match (self.stage, m) {
            (_, Method::ConnectionClose { .. }) => {
                self.send(io, 0, &Method::ConnectionCloseOk);
                self.release_all();
                self.closing = Closing::Done;
            }
            (_, Method::ConnectionCloseOk) => self.closing = Closing::Done,
            (
                Stage::StartOk,
                Method::ConnectionStartOk {
                    mechanism,
                    client_properties,
                    response,
                    ..
                },
            ) => {
                self.blocked_capable = client_properties.iter().any(|(k, v)| {
                    k == "capabilities"
                        && matches!(v, Value::Table(t) if t.iter().any(|(k, v)| k == "connection.blocked" && *v == Value::Bool(true)))
                });
                let external =
                    mechanism == "EXTERNAL" && self.shared.config.use_identity_as_username;
                if mechanism != "PLAIN" && mechanism != "AMQPLAIN" && !external {
                    return Err(hard(
                        code::ACCESS_REFUSED,
                        format!(
                            "ACCESS_REFUSED - mechanism {mechanism:?} is not supported (PLAIN, AMQPLAIN)"
                        ),
                    ));
                }
                self.login(io, &mechanism, &response)?;
                self.send(
                    io,
                    0,
                    &Method::ConnectionTune {
                        channel_max: self.shared.config.channel_max,
                        frame_max: self.shared.config.frame_max,
                        heartbeat: self.shared.config.heartbeat_secs,
                    },
                );
                self.stage = Stage::TuneOk;
            }
            (
                Stage::TuneOk,
                Method::ConnectionTuneOk {
                    channel_max,
                    frame_max,
                    heartbeat,
                },
            ) => {
                let config = &self.shared.config;
                if frame_max > config.frame_max || (frame_max != 0 && frame_max < 4096) {
                    return Err(hard(
                        code::NOT_ALLOWED,
                        format!(
                            "NOT_ALLOWED - tune-ok field frame_max {frame_max} is outside 4096..={}",
                            config.frame_max
                        ),
                    ));
                }
                if channel_max > config.channel_max {
                    return Err(hard(
                        code::NOT_ALLOWED,
                        format!(
                            "NOT_ALLOWED - tune-ok field channel_max {channel_max} is over {}",
                            config.channel_max
                        ),
                    ));
                }
                if frame_max != 0 {
                    self.frame_max = frame_max as usize;
                }
                if channel_max != 0 {
                    self.channel_max = channel_max;
                }
                if heartbeat > 0 {
                    let h = Duration::from_secs(u64::from(heartbeat));
                    self.heartbeat = Some(h);
                    self.next_beat = Some(io.now() + h / 2);
                }
                self.stage = Stage::Open;
            }
            (Stage::Open, Method::ConnectionOpen { vhost }) => {
                if vhost != "/" {
                    return Err(hard(
                        code::NOT_ALLOWED,
                        format!(
                            "NOT_ALLOWED - vhost {vhost:?} not found (this server has \"/\" only)"
                        ),
                    ));
                }
                self.send(io, 0, &Method::ConnectionOpenOk);
                self.stage = Stage::Running;
            }
            // The identity stays the one logged in: a new secret (a
            // refreshed token) is not checked again.
            (Stage::Running, Method::ConnectionUpdateSecret { .. }) => {
                self.send(io, 0, &Method::ConnectionUpdateSecretOk);
            }
            (Stage::Running, m) => {
                return Err(hard(
                    code::COMMAND_INVALID,
                    format!(
                        "COMMAND_INVALID - {} is not a method for channel 0",
                        m.name()
                    ),
                ));
            }
            (stage, m) => {
                return Err(hard(
                    code::COMMAND_INVALID,
                    format!(
                        "COMMAND_INVALID - {} during the handshake ({stage:?} expected)",
                        m.name()
                    ),
                ));
            }
        }
        Ok(())
    }

    /// One frame; `false` if it is held for the auth instance's answer
    /// (not used: it is offered again).
    fn frame(&mut self, io: &mut Io<'_>, f: wire::Frame<'_>) -> bool {
        self.held = false;
        self.frame_inner(io, f);
        !self.held
    }

    /// One frame, handled or held.
    fn frame_inner(&mut self, io: &mut Io<'_>, f: wire::Frame<'_>) {
        if f.kind == wire::HEARTBEAT {
            if f.channel != 0 {
                self.fail(
                    io,
                    code::FRAME_ERROR,
                    "FRAME_ERROR - a heartbeat frame on a channel other than 0",
                    (0, 0),
                );
            }
            return;
        }
        if self.closing != Closing::No {
            // After connection.close only close and close-ok count.
            if f.kind == wire::METHOD && f.channel == 0 {
                if let Ok(m @ (Method::ConnectionClose { .. } | Method::ConnectionCloseOk)) =
                    methods::decode(f.payload)
                {
                    if matches!(m, Method::ConnectionClose { .. }) {
                        self.send(io, 0, &Method::ConnectionCloseOk);
                    }
                    self.closing = Closing::Done;
                }
            }
            return;
        }
        if f.kind != wire::METHOD {
            if self.stage != Stage::Running || f.channel == 0 {
                return self.fail(
                    io,
                    code::UNEXPECTED_FRAME,
                    &format!(
                        "UNEXPECTED_FRAME - a content frame on channel {}",
                        f.channel
                    ),
                    (0, 0),
                );
            }
            return self.content(io, f);
        }
        let m = match methods::decode(f.payload) {
            Ok(m) => m,
            Err(e) => {
                let (c, me) = match f.payload {
                    [a, b, c, d, ..] => {
                        (u16::from_be_bytes([*a, *b]), u16::from_be_bytes([*c, *d]))
                    }
                    _ => (0, 0),
                };
                return self.fail(
                    io,
                    code::SYNTAX_ERROR,
                    &format!("SYNTAX_ERROR - {e}"),
                    (c, me),
                );
            }
        };
        let id = m.id();
        let result = if f.channel == 0 {
            self.connection_method(io, m)
        } else if self.stage != Stage::Running {
            Err(hard(
                code::CHANNEL_ERROR,
                format!("CHANNEL_ERROR - {} before connection.open", m.name()),
            ))
        } else if f.channel > self.channel_max {
            Err(hard(
                code::CHANNEL_ERROR,
                format!(
                    "CHANNEL_ERROR - channel {} is over channel_max {}",
                    f.channel, self.channel_max
                ),
            ))
        } else {
            self.channel_method(io, f.channel, m)
        };
        if let Err(r) = result {
            if r.held {
                self.held = true;
            } else if r.connection {
                self.fail(io, r.code, &r.text, id);
            } else {
                self.channel_fail(io, f.channel, r.code, &r.text, id);
            }
        }
    }
}

impl Protocol for Core {
    fn receive(&mut self, io: &mut Io<'_>, input: &[u8]) -> usize {
        if input.len() > self.unused {
            self.last_seen = io.now();
        }
        let mut used = 0;
        if self.stage == Stage::Header {
            let n = input.len().min(8);
            if input[..n] != wire::PROTOCOL_HEADER[..n] {
                // Not AMQP 0-9-1: say which protocol this is, then close.
                io.out().extend_from_slice(wire::PROTOCOL_HEADER);
                self.shared.stats.closed_for_errors.inc();
                self.drop_connection("not an AMQP 0-9-1 protocol header");
                return input.len();
            }
            if n < 8 {
                self.unused = input.len();
                return 0;
            }
            used = 8;
            self.stage = Stage::StartOk;
            self.start(io);
        }
        while self.closing != Closing::Done && !self.guard.waiting() {
            let max = if self.stage == Stage::Running {
                self.frame_max
            } else {
                self.shared.config.frame_max as usize
            };
            match wire::frame(&input[used..], max) {
                Ok(Framed::Frame(f, n)) => {
                    if !self.frame(io, f) {
                        // Held for the auth instance: offered again after
                        // its answer.
                        break;
                    }
                    self.guard.handled();
                    used += n;
                }
                Ok(Framed::Partial) => break,
                Err(e) => {
                    if self.is_closing() {
                        self.drop_connection(&e.0);
                    } else {
                        self.fail(
                            io,
                            code::FRAME_ERROR,
                            &format!("FRAME_ERROR - {}", e.0),
                            (0, 0),
                        );
                        // Nothing after a bad frame can be read.
                        self.closing = Closing::Done;
                    }
                }
            }
        }
        if self.closing == Closing::Done {
            used = input.len();
        }
        self.unused = input.len() - used;
        used
    }

    fn note(&mut self, io: &mut Io<'_>, note: Note) {
        if note.tag == RESUME || self.closing == Closing::Done {
            return;
        }
        if note.tag == guard::LOGIN || note.tag == guard::ACCESS {
            return self.answered(note);
        }
        if note.tag == FULL {
            if let Ok(f) = note.take::<bindery::Failure>() {
                self.slow_down(io, &f);
            }
            return;
        }
        self.noted(io, note);
    }

    fn intake(&self, reading: &Reading) -> Intake {
        if self.closing == Closing::Done
            || self.guard.waiting()
            || self.publishing.load(Ordering::Relaxed) > MAX_PUBLISHING
        {
            return Intake::Wait;
        }
        if let Some(until) = self.blocked_until.filter(|u| *u > reading.now) {
            return Intake::PauseUntil(until);
        }
        Intake::Read(READ_CHUNK)
    }

    fn pump(&mut self, io: &mut Io<'_>) {
        if self.closing == Closing::No {
            self.credit_owed(io);
        }
    }

    fn deadline(&self) -> Option<Instant> {
        match self.closing {
            Closing::Done => None,
            Closing::AwaitCloseOk(by) => Some(by),
            Closing::No if self.stage != Stage::Running => Some(self.handshake_by),
            Closing::No => {
                let beat = self.heartbeat.map(|h| {
                    let dead = self.last_seen + h * 2;
                    self.next_beat.map_or(dead, |b| b.min(dead))
                });
                [beat, self.get_deadline(), self.blocked_until]
                    .into_iter()
                    .flatten()
                    .min()
            }
        }
    }

    fn expire(&mut self, io: &mut Io<'_>) {
        let now = io.now();
        match self.closing {
            Closing::AwaitCloseOk(by) if now >= by => self.closing = Closing::Done,
            Closing::No if self.stage != Stage::Running && now >= self.handshake_by => {
                self.shared.stats.closed_for_errors.inc();
                self.drop_connection("no connection.open in time");
            }
            Closing::No => {
                self.expire_gets(io);
                if self.blocked_until.is_some_and(|u| now >= u) {
                    self.blocked_until = None;
                    if self.blocked_capable {
                        self.send(io, 0, &Method::ConnectionUnblocked);
                    }
                }
                let Some(h) = self.heartbeat else { return };
                if now >= self.last_seen + h * 2 {
                    self.shared.stats.closed_for_errors.inc();
                    return self.drop_connection("missed heartbeats");
                }
                if self.next_beat.is_some_and(|b| now >= b) {
                    wire::put_heartbeat(io.out());
                    self.next_beat = Some(now + h / 2);
                }
            }
            _ => {}
        }
    }

    fn certified(&mut self, chain: &[bindery_classes::connection::CertificateDer<'static>]) {
        self.certified_by(chain);
    }

    fn peer_closed(&mut self, _: &mut Io<'_>) {
        self.drop_connection("the client closed the connection");
    }

    fn shutdown(&mut self, io: &mut Io<'_>) {
        if self.stage == Stage::Running {
            self.fail(
                io,
                320,
                "CONNECTION_FORCED - the server is stopping",
                (0, 0),
            );
        } else {
            self.drop_connection("the server is stopping");
        }
    }

    fn flow(&self) -> Flow {
        if self.closing == Closing::Done {
            Flow::CloseWhenFlushed
        } else {
            Flow::Open
        }
    }

    fn closed(&mut self, why: &Ended) {
        self.drop_connection(&why.to_string());
    }
}
