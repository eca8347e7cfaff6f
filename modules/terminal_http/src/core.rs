//! The HTTP protocol core of one connection: no socket, no reactor (see
//! [`bindery_classes::connection`]).
//!
//! Requests are read and answered in order (pipelining): each request takes
//! a slot in `slots`; a slot is answered at once (`Ready`) or waits for a
//! note — a publish's completion, a long poll's delivery or its deadline.
//! Answers leave in request order: the front slot must be ready before any
//! behind it is written. An event-stream request turns the connection into
//! a stream for the rest of its life. What each request does is in
//! [`crate::rest`].
//!
//! Two timeouts close a connection that holds resources for nothing:
//! `idle_timeout_secs` — no bytes from the client and nothing in flight (no
//! request being answered, no event stream) for that long since the last
//! request or answer; and `header_timeout_secs` — a request head begun and
//! not complete that long after its first byte, however slowly it trickles
//! in (slowloris). A long poll or an event stream is in flight: neither
//! timeout cuts it.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use bindery::{Failure, Note};
use bindery_classes::auth::Login;
use bindery_classes::connection::{Ended, Flow, Intake, Io, Protocol, Reading};
use bindery_classes::driver::{DriverHandle, Receipt};
use bindery_classes::http::request::{self, Limits, Parsed};
use bindery_classes::http::response;
use bindery_classes::route::{Part, Window};
use bindery_classes::{Delivery, Subscription};

use crate::Shared;
use crate::routes::RouteSlot;

/// Requests in flight on one connection before it stops reading.
const MAX_PIPELINE: usize = 32;
/// Unsent output on one connection before it stops reading.
const MAX_OUTPUT: usize = 1 << 20;

/// One request's place in the answer order.
pub(crate) enum Slot {
    /// Answered: the bytes to send.
    Ready(Vec<u8>),
    /// A publish waiting for the driver's receipt.
    Publish { tag: u64, close: bool },
    /// An ack waiting for the driver.
    Ack { tag: u64, close: bool },
    /// A long poll waiting for a delivery or its deadline.
    Poll {
        tag: u64,
        until: Instant,
        driver: DriverHandle,
        destination: String,
        sub: Option<Subscription>,
        close: bool,
    },
    /// An event stream, started when it reaches the front.
    Stream { sub: Subscription },
    /// A route's answer, streamed as the route sends it.
    Route(RouteSlot),
    /// A request waiting for the auth instance ([`crate::guard`]).
    Auth {
        tag: u64,
        waiting: Box<crate::guard::Waiting>,
    },
}

impl Slot {
    fn tag(&self) -> Option<u64> {
        match self {
            Slot::Publish { tag, .. }
            | Slot::Ack { tag, .. }
            | Slot::Poll { tag, .. }
            | Slot::Auth { tag, .. } => Some(*tag),
            Slot::Route(r) => Some(r.tag),
            _ => None,
        }
    }
}

/// A live event stream: its subscription, and the messages written and
/// not yet credited (credit goes back as the output drains).
pub(crate) struct Streaming {
    pub(crate) sub: Subscription,
    pub(crate) owed: u32,
}

/// One connection's HTTP state.
pub(crate) struct Core {
    pub(crate) shared: Arc<Shared>,
    /// The peer, for log lines and consumer names.
    pub(crate) peer: String,
    pub(crate) slots: VecDeque<Slot>,
    /// Long polls that ended before their delivery arrived: a late message
    /// is released back to its queue.
    pub(crate) ended: VecDeque<(u64, DriverHandle, String)>,
    pub(crate) streaming: Option<Streaming>,
    /// Who the client is, and what it may do ([`crate::guard`]).
    pub(crate) guard: crate::guard::Guard,
    next_tag: u64,
    read_eof: bool,
    pub(crate) close_after: bool,
    /// Close without waiting (a timeout, a driver ended the stream).
    pub(crate) close_now: bool,
    /// `100 Continue` sent for the request now arriving.
    continued: bool,
    last_active: Instant,
    /// When the request head now arriving began, while it is incomplete.
    head_since: Option<Instant>,
    /// Input bytes seen by the last `receive` and left unused.
    unused: usize,
    /// Each request's CORS header lines, in answer order (`None`: none);
    /// taken as its answer is first written. Kept only when the instance
    /// has CORS: otherwise it stays empty and every take finds nothing.
    pub(crate) origins: VecDeque<Option<Arc<str>>>,
    /// Route body bytes moved to the output and not yet known written.
    pub(crate) route_owed: Option<(Arc<Window>, usize)>,
}

impl Core {
    pub(crate) fn new(shared: Arc<Shared>, peer: String, now: Instant) -> Core {
        Core {
            shared,
            peer,
            slots: VecDeque::new(),
            ended: VecDeque::new(),
            streaming: None,
            guard: Default::default(),
            next_tag: 0,
            read_eof: false,
            close_after: false,
            close_now: false,
            continued: false,
            last_active: now,
            head_since: None,
            unused: 0,
            route_owed: None,
            origins: VecDeque::new(),
        }
    }

    pub(crate) fn tag(&mut self) -> u64 {
        self.next_tag += 1;
        self.next_tag
    }

    fn limits(&self) -> Limits {
        Limits {
            max_header_bytes: self.shared.config.max_header_bytes,
            max_body_bytes: self.shared.config.max_body_bytes,
        }
    }

    /// Answers the slot waiting on `tag` with what `make` returns; false
    /// if no slot waits on it.
    pub(crate) fn answer(
        &mut self,
        tag: u64,
        make: impl FnOnce(&mut Slot) -> Option<Vec<u8>>,
    ) -> bool {
        let Some(slot) = self.slots.iter_mut().find(|s| s.tag() == Some(tag)) else {
            return false;
        };
        if let Some(bytes) = make(slot) {
            *slot = Slot::Ready(bytes);
        }
        true
    }

    /// Whether the slot waiting on `tag` closes the connection after it.
    pub(crate) fn closes(&self, tag: u64) -> bool {
        matches!(
            self.slots.iter().find(|s| s.tag() == Some(tag)),
            Some(Slot::Publish { close: true, .. } | Slot::Ack { close: true, .. })
        )
    }

    /// Ends the driver's event stream: say why if the socket takes it and
    /// close at once, since the client may not be reading.
    pub(crate) fn end_stream(&mut self, io: &mut Io<'_>, reason: &str) {
        tracing::warn!(
            instance = %self.shared.instance,
            peer = %self.peer,
            "closing an event stream: {reason}"
        );
        self.shared.stats.streams_ended.inc();
        response::event(io.out(), "-", "closed", reason.as_bytes());
        self.close_now = true;
    }

    /// A long poll's deadline passed (or the server stops): `204`, and a
    /// delivery that comes late goes back to its queue.
    fn poll_expired(&mut self, i: usize) {
        let slot = std::mem::replace(&mut self.slots[i], Slot::Ready(Vec::new()));
        if let Slot::Poll {
            tag,
            driver,
            destination,
            close,
            ..
        } = slot
        {
            let mut out = Vec::new();
            response::write(&mut out, 204, &[], None, b"", close);
            self.slots[i] = Slot::Ready(out);
            if self.ended.len() >= 16 {
                self.ended.pop_front();
            }
            self.ended.push_back((tag, driver, destination));
        }
    }

    /// Whether something is in flight for the client (no idle timeout).
    fn waiting(&self) -> bool {
        self.streaming.is_some() || !self.slots.is_empty()
    }
}

impl Protocol for Core {
    fn receive(&mut self, io: &mut Io<'_>, input: &[u8]) -> usize {
        if input.len() > self.unused {
            self.last_active = io.now();
        }
        if self.streaming.is_some() {
            // Nothing more is read as requests on an event stream.
            self.unused = 0;
            return input.len();
        }
        // Timed only while a head is seen incomplete (below).
        let head_since = self.head_since.take();
        let mut used = 0;
        while !self.close_after
            && self.streaming.is_none()
            && self.slots.len() < MAX_PIPELINE
            && !self.authorizing()
        {
            let rest = &input[used..];
            if rest.is_empty() {
                break;
            }
            match request::parse(rest, self.limits()) {
                Parsed::Partial {
                    expect_continue,
                    head_complete,
                } => {
                    if !head_complete {
                        self.head_since = Some(head_since.unwrap_or(io.now()));
                    }
                    if expect_continue && !self.continued && self.slots.is_empty() {
                        self.continued = true;
                        io.out().extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
                    }
                    break;
                }
                Parsed::Done(req, n) => {
                    used += n;
                    self.continued = false;
                    self.shared.stats.requests.inc();
                    if let Some(c) = &self.shared.config.cors {
                        // A preflight's answer says it all itself.
                        let preflight = req.preflight.is_some() && req.method == "OPTIONS";
                        let lines = if preflight {
                            None
                        } else {
                            c.answer_headers(req.origin.as_deref())
                        };
                        self.origins.push_back(lines);
                    }
                    self.handle(io, req, &rest[..n]);
                }
                Parsed::Fail(status, reason) => {
                    self.shared.stats.bad_requests.inc();
                    tracing::debug!(instance = %self.shared.instance, status, %reason, "bad request");
                    let mut out = Vec::new();
                    response::text(&mut out, status, &[], &reason, true);
                    if self.shared.config.cors.is_some() {
                        self.origins.push_back(None);
                    }
                    self.slots.push_back(Slot::Ready(out));
                    self.close_after = true;
                    used = input.len();
                    break;
                }
            }
        }
        self.unused = input.len() - used;
        used
    }

    fn note(&mut self, io: &mut Io<'_>, note: Note) {
        let tag = note.tag;
        let note = match note.take::<Result<Receipt, Failure>>() {
            Ok(outcome) => return self.published(tag, outcome),
            Err(note) => note,
        };
        let note = match note.take::<Result<(), Failure>>() {
            Ok(outcome) => return self.acked(tag, outcome),
            Err(note) => note,
        };
        let note = match note.take::<Result<Login, Failure>>() {
            Ok(outcome) => return self.logged_in(io, tag, outcome),
            Err(note) => note,
        };
        let note = match note.take::<Result<bool, Failure>>() {
            Ok(outcome) => return self.authorized(io, tag, outcome),
            Err(note) => note,
        };
        let note = match note.take::<Delivery>() {
            Ok(delivery) => return self.delivered(io, tag, delivery),
            Err(note) => note,
        };
        if let Ok(part) = note.take::<Part>() {
            self.route_part(tag, part);
        }
    }

    fn intake(&self, reading: &Reading) -> Intake {
        // More than any acceptable request could need: parsing refuses it.
        let cap =
            self.shared.config.max_header_bytes + 2 * self.shared.config.max_body_bytes + 4096;
        let room = self.streaming.is_some()
            || (!self.close_after
                && self.slots.len() < MAX_PIPELINE
                && !self.authorizing()
                && reading.unsent < MAX_OUTPUT
                && reading.pending <= cap);
        if self.read_eof || !room {
            Intake::Wait
        } else {
            Intake::Read(64 * 1024)
        }
    }

    fn pump(&mut self, io: &mut Io<'_>) {
        while let Some(front) = self.slots.front() {
            match front {
                Slot::Ready(_) => {
                    if let Some(Slot::Ready(bytes)) = self.slots.pop_front() {
                        let cors = self.origins.pop_front().flatten();
                        crate::cors::with_headers(io.out(), &bytes, cors.as_deref());
                        self.last_active = io.now();
                    }
                }
                Slot::Stream { .. } => {
                    if let Some(Slot::Stream { sub }) = self.slots.pop_front() {
                        let cors = self.origins.pop_front().flatten();
                        crate::cors::with_headers(
                            io.out(),
                            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\
                              Cache-Control: no-cache\r\nConnection: keep-alive\r\n\r\n: subscribed\n\n",
                            cors.as_deref(),
                        );
                        self.streaming = Some(Streaming { sub, owed: 0 });
                    }
                    return;
                }
                Slot::Route(_) => {
                    if !self.pump_route(io) {
                        return;
                    }
                }
                _ => return,
            }
        }
    }

    fn drained(&mut self, _: &mut Io<'_>) {
        self.route_drained();
        if let Some(s) = &mut self.streaming {
            if s.owed > 0 {
                s.sub.credit(std::mem::take(&mut s.owed));
            }
        }
    }

    fn deadline(&self) -> Option<Instant> {
        let config = &self.shared.config;
        let head = self.head_since.map(|t| t + config.header_timeout());
        let idle = (!self.waiting()).then(|| self.last_active + config.idle());
        let polls = self.slots.iter().filter_map(|s| match s {
            Slot::Poll { until, .. } => Some(*until),
            _ => None,
        });
        head.into_iter().chain(idle).chain(polls).min()
    }

    fn expire(&mut self, io: &mut Io<'_>) {
        let now = io.now();
        let config = &self.shared.config;
        if self
            .head_since
            .is_some_and(|t| now >= t + config.header_timeout())
        {
            self.shared.stats.header_timeouts.inc();
            tracing::debug!(instance = %self.shared.instance, "closing a connection whose request head did not complete");
            // Best effort: say why, unless answers to earlier requests are
            // still owed (they would come first).
            if self.slots.is_empty() {
                let why = "the request head did not complete in time";
                response::text(io.out(), 408, &[], why, true);
            }
            self.close_now = true;
            return;
        }
        if !self.waiting() && now >= self.last_active + config.idle() {
            self.shared.stats.idle_timeouts.inc();
            tracing::debug!(instance = %self.shared.instance, "closing idle connection");
            self.close_now = true;
            return;
        }
        for i in 0..self.slots.len() {
            if matches!(self.slots[i], Slot::Poll { until, .. } if until <= now) {
                self.poll_expired(i);
            }
        }
    }

    fn peer_closed(&mut self, _: &mut Io<'_>) {
        self.read_eof = true;
        // A client that leaves while a route works for it has given up
        // (nginx's view of a proxied request): the route is told at once,
        // not when its next bytes fail to send.
        if self.slots.iter().any(|s| matches!(s, Slot::Route(_))) {
            self.close_now = true;
        }
    }

    fn shutdown(&mut self, _: &mut Io<'_>) {
        self.close_after = true;
        if self.streaming.is_some() {
            self.close_now = true;
            return;
        }
        // Long polls end now, empty-handed; publishes in flight finish.
        for i in 0..self.slots.len() {
            if matches!(self.slots[i], Slot::Poll { .. }) {
                self.poll_expired(i);
            }
        }
    }

    fn flow(&self) -> Flow {
        if self.close_now || (self.streaming.is_some() && self.read_eof) {
            Flow::Close
        } else if self.streaming.is_some() {
            if self.close_after {
                Flow::CloseWhenFlushed
            } else {
                Flow::Open
            }
        } else if self.slots.is_empty() && (self.close_after || self.read_eof) {
            Flow::CloseWhenFlushed
        } else {
            Flow::Open
        }
    }

    fn closed(&mut self, why: &Ended) {
        if !matches!(why, Ended::ByCore) {
            tracing::debug!(instance = %self.shared.instance, peer = %self.peer, "{why}");
        }
    }
}
