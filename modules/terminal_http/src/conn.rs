//! One HTTP connection: a reactor handler.
//!
//! Requests are read and answered in order (pipelining): each request takes
//! a slot in `slots`; a slot is answered at once (`Ready`) or waits for a
//! note — a publish's completion, a long poll's delivery or timer. Answers
//! leave in request order: the front slot must be ready before any behind
//! it is written. An event-stream request turns the connection into a
//! stream for the rest of its life.
//!
//! Two timeouts close a connection that holds resources for nothing (one
//! timer checks both): `idle_timeout_secs` — no bytes from the client and
//! nothing in flight (no request being answered, no event stream) for that
//! long: a keep-alive connection nobody uses, or a request stalled
//! mid-body; and `header_timeout_secs` — a request head begun and not
//! complete that long after its first byte, however slowly it trickles in
//! (slowloris). A long poll or an event stream is in flight: neither
//! timeout cuts it.

use std::collections::VecDeque;
use std::io::{self, Read};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bindery::reactor::TimerId;
use bindery::{Cx, Failure, FailureKind, Handler, Note};
use bindery_classes::driver::{DriverHandle, Receipt, SubscribeOptions};
use bindery_classes::listener::{self, OpenConnection};
use bindery_classes::{Consumer, Delivery, Message, MessageId, Subscription};
use mio::Interest;
use mio::event::Event;
use mio::net::TcpStream;

use crate::Shared;
use bindery_classes::http::request::{self, Limits, Parsed, Request};
use bindery_classes::http::response;

/// Requests in flight on one connection before it stops reading.
const MAX_PIPELINE: usize = 32;
/// Unsent output on one connection before it stops reading.
const MAX_OUTPUT: usize = 1 << 20;
/// Bytes read in one go before parsing what came.
const READ_BATCH: usize = 64 * 1024;

enum Slot {
    Ready(Vec<u8>),
    Publish {
        tag: u64,
        close: bool,
    },
    Ack {
        tag: u64,
        close: bool,
    },
    Poll {
        tag: u64,
        timer: TimerId,
        driver: DriverHandle,
        destination: String,
        sub: Option<Subscription>,
        close: bool,
    },
    Stream {
        sub: Subscription,
    },
}

impl Slot {
    fn tag(&self) -> Option<u64> {
        match self {
            Slot::Publish { tag, .. } | Slot::Ack { tag, .. } | Slot::Poll { tag, .. } => {
                Some(*tag)
            }
            _ => None,
        }
    }
}

struct Streaming {
    sub: Subscription,
    owed: u32,
}

pub(crate) struct Conn {
    stream: TcpStream,
    shared: Arc<Shared>,
    rbuf: Vec<u8>,
    wbuf: Vec<u8>,
    wpos: usize,
    slots: VecDeque<Slot>,
    /// Long polls that ended before their delivery arrived: a late message
    /// is released back to its queue.
    ended: VecDeque<(u64, DriverHandle, String)>,
    streaming: Option<Streaming>,
    next_tag: u64,
    want_read: bool,
    read_eof: bool,
    close_after: bool,
    /// A driver ended the event stream: close once the output is tried.
    stream_ended: bool,
    continued: bool,
    last_active: Instant,
    /// When the request head now in `rbuf` began, while it is incomplete.
    head_since: Option<Instant>,
    idle_timer: TimerId,
    _open: OpenConnection,
}

impl Conn {
    pub(crate) fn start(
        cx: &mut Cx<'_>,
        stream: TcpStream,
        shared: Arc<Shared>,
        open: OpenConnection,
    ) -> io::Result<Box<dyn Handler>> {
        let first_check = shared.config.idle().min(shared.config.header_timeout());
        let mut conn = Conn {
            stream,
            shared,
            rbuf: Vec::new(),
            wbuf: Vec::new(),
            wpos: 0,
            slots: VecDeque::new(),
            ended: VecDeque::new(),
            streaming: None,
            next_tag: 0,
            want_read: true,
            read_eof: false,
            close_after: false,
            stream_ended: false,
            continued: false,
            last_active: Instant::now(),
            head_since: None,
            idle_timer: cx.set_timer(first_check),
            _open: open,
        };
        cx.registry().register(
            &mut conn.stream,
            cx.token(),
            Interest::READABLE | Interest::WRITABLE,
        )?;
        Ok(Box::new(conn))
    }

    fn limits(&self) -> Limits {
        Limits {
            max_header_bytes: self.shared.config.max_header_bytes,
            max_body_bytes: self.shared.config.max_body_bytes,
        }
    }

    fn can_read(&self) -> bool {
        !self.read_eof
            && (self.streaming.is_some()
                || (!self.close_after
                    && self.slots.len() < MAX_PIPELINE
                    && self.wbuf.len() < MAX_OUTPUT))
    }

    /// Reads what is there (up to a batch). Errors end the connection.
    fn read_some(&mut self) -> io::Result<()> {
        let start = self.rbuf.len();
        let cap =
            self.shared.config.max_header_bytes + 2 * self.shared.config.max_body_bytes + 4096;
        loop {
            if self.rbuf.len() - start >= READ_BATCH {
                return Ok(());
            }
            if self.rbuf.len() > cap {
                // More than any acceptable request could need: parse will
                // refuse it; stop reading.
                self.want_read = false;
                return Ok(());
            }
            let len = self.rbuf.len();
            self.rbuf.resize(len + 16 * 1024, 0);
            match self.stream.read(&mut self.rbuf[len..]) {
                Ok(0) => {
                    self.rbuf.truncate(len);
                    self.read_eof = true;
                    self.want_read = false;
                    return Ok(());
                }
                Ok(n) => {
                    self.rbuf.truncate(len + n);
                    self.last_active = Instant::now();
                    if self.streaming.is_some() {
                        self.rbuf.clear();
                    }
                }
                Err(e) => {
                    self.rbuf.truncate(len);
                    match e.kind() {
                        io::ErrorKind::WouldBlock => {
                            self.want_read = false;
                            return Ok(());
                        }
                        io::ErrorKind::Interrupted => {}
                        _ => return Err(e),
                    }
                }
            }
        }
    }

    fn parse_requests(&mut self, cx: &mut Cx<'_>) {
        // Timed only while a head is seen incomplete (below).
        let head_since = self.head_since.take();
        while !self.close_after && self.streaming.is_none() && self.slots.len() < MAX_PIPELINE {
            if self.rbuf.is_empty() {
                return;
            }
            match request::parse(&self.rbuf, self.limits()) {
                Parsed::Partial {
                    expect_continue,
                    head_complete,
                } => {
                    if !head_complete {
                        self.head_since = Some(head_since.unwrap_or_else(Instant::now));
                    }
                    if expect_continue && !self.continued && self.slots.is_empty() {
                        self.continued = true;
                        self.wbuf
                            .extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
                    }
                    return;
                }
                Parsed::Done(req, used) => {
                    self.rbuf.drain(..used);
                    self.continued = false;
                    self.shared.stats.requests.fetch_add(1, Ordering::Relaxed);
                    self.handle(cx, req);
                }
                Parsed::Fail(status, reason) => {
                    self.shared
                        .stats
                        .bad_requests
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(instance = %self.shared.instance, status, %reason, "bad request");
                    let mut out = Vec::new();
                    response::text(&mut out, status, &[], &reason, true);
                    self.slots.push_back(Slot::Ready(out));
                    self.close_after = true;
                    self.rbuf.clear();
                    return;
                }
            }
        }
    }

    fn ready(&mut self, status: u16, headers: &[(&str, &str)], message: &str, close: bool) {
        let mut out = Vec::new();
        response::text(&mut out, status, headers, message, close);
        self.slots.push_back(Slot::Ready(out));
    }

    fn handle(&mut self, cx: &mut Cx<'_>, req: Request) {
        let close = !req.keep_alive;
        if close {
            self.close_after = true;
        }
        let method = req.method.as_str();
        if let Some(builtin) = crate::admin::route(&req.path) {
            if method != "GET" && method != "HEAD" {
                return self.ready(405, &[("Allow", "GET")], "this endpoint takes GET", close);
            }
            let mut out = Vec::new();
            crate::admin::answer(builtin, &self.shared, &mut out, close);
            return self.slots.push_back(Slot::Ready(out));
        }
        match method {
            "POST" | "PUT" => self.publish(cx, req, close),
            "GET" => self.get(cx, req, close),
            "DELETE" => self.delete(cx, &req.path, close),
            _ => self.ready(
                405,
                &[("Allow", "GET, POST, DELETE")],
                &format!("method {method} is not supported"),
                close,
            ),
        }
    }

    fn tag(&mut self) -> u64 {
        self.next_tag += 1;
        self.next_tag
    }

    fn publish(&mut self, cx: &mut Cx<'_>, req: Request, close: bool) {
        let content_type = req
            .content_type
            .as_deref()
            .unwrap_or("application/octet-stream");
        let message = Message::new(&req.path, content_type, req.body);
        let tag = self.tag();
        self.slots.push_back(Slot::Publish { tag, close });
        self.shared
            .dispatcher
            .publish(message, cx.completion::<Receipt>(tag));
    }

    fn get(&mut self, cx: &mut Cx<'_>, req: Request, close: bool) {
        let driver = match self.shared.dispatcher.driver(&req.path) {
            Ok(d) => d,
            Err(f) => return self.failed(&f, close),
        };
        let tag = self.tag();
        let shared = self.shared.clone();
        let config = &shared.config;
        let peer = self
            .stream
            .peer_addr()
            .map_or_else(|_| "?".to_owned(), |a| a.to_string());
        let consumer =
            Consumer::to_handler(cx, tag).named(format!("{}: http client {peer}", shared.instance));
        if req.event_stream {
            let options = SubscribeOptions {
                credit: config.stream_credit.max(1),
                lease: Duration::from_secs(config.default_lease_secs),
            };
            return match driver.subscribe(&req.path, consumer, options) {
                Ok(sub) => self.slots.push_back(Slot::Stream { sub }),
                Err(f) => self.failed(&f, close),
            };
        }
        let wait = request::query_secs(&req.query, "wait");
        let lease = request::query_secs(&req.query, "lease");
        let (wait, lease) = match (wait, lease) {
            (Ok(w), Ok(l)) => (
                w.unwrap_or(0.0).min(config.max_wait_secs as f64),
                l.unwrap_or(config.default_lease_secs as f64).max(0.001),
            ),
            (Err(e), _) | (_, Err(e)) => return self.ready(400, &[], &e, close),
        };
        let options = SubscribeOptions {
            credit: 1,
            lease: Duration::from_secs_f64(lease.min(86_400.0)),
        };
        match driver.subscribe(&req.path, consumer, options) {
            Ok(sub) => {
                // A delivery made now reaches us before this timer fires:
                // the reactor runs queued notes before timers.
                let timer = cx.set_timer(Duration::from_secs_f64(wait));
                self.slots.push_back(Slot::Poll {
                    tag,
                    timer,
                    driver,
                    destination: req.path,
                    sub: Some(sub),
                    close,
                });
            }
            Err(f) => self.failed(&f, close),
        }
    }

    fn delete(&mut self, cx: &mut Cx<'_>, path: &str, close: bool) {
        let Some((queue, id)) = path.rsplit_once("/messages/") else {
            return self.ready(
                405,
                &[("Allow", "GET, POST")],
                "DELETE takes <queue>/messages/<id>",
                close,
            );
        };
        let Some(id) = MessageId::parse(id) else {
            return self.ready(400, &[], &format!("{id:?} is not a message id"), close);
        };
        match self.shared.dispatcher.driver(queue) {
            Ok(driver) => {
                let tag = self.tag();
                self.slots.push_back(Slot::Ack { tag, close });
                driver.ack(queue, id, cx.completion::<()>(tag));
            }
            Err(f) => self.failed(&f, close),
        }
    }

    fn failed(&mut self, f: &Failure, close: bool) {
        self.slots
            .push_back(Slot::Ready(failure_response(f, close)));
    }

    /// Moves answered slots at the front into the output; starts a stream
    /// that reached the front.
    fn advance(&mut self) {
        while let Some(front) = self.slots.front() {
            match front {
                Slot::Ready(_) => {
                    if let Some(Slot::Ready(bytes)) = self.slots.pop_front() {
                        self.wbuf.extend_from_slice(&bytes);
                    }
                }
                Slot::Stream { .. } => {
                    if let Some(Slot::Stream { sub }) = self.slots.pop_front() {
                        self.wbuf.extend_from_slice(
                            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\
                              Cache-Control: no-cache\r\nConnection: keep-alive\r\n\r\n: subscribed\n\n",
                        );
                        self.streaming = Some(Streaming { sub, owed: 0 });
                        self.rbuf.clear();
                    }
                    return;
                }
                _ => return,
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        listener::write_out(&mut self.stream, &mut self.wbuf, &mut self.wpos)?;
        if self.wbuf.is_empty() {
            if let Some(s) = &mut self.streaming {
                if s.owed > 0 {
                    s.sub.credit(std::mem::take(&mut s.owed));
                }
            }
        }
        Ok(())
    }

    /// Reads, parses, answers and writes until nothing moves; closes when
    /// the connection is done.
    fn drive(&mut self, cx: &mut Cx<'_>) {
        loop {
            if self.want_read && self.can_read() {
                if let Err(e) = self.read_some() {
                    tracing::debug!(instance = %self.shared.instance, "read failed: {e}");
                    return cx.close();
                }
            }
            self.parse_requests(cx);
            self.advance();
            if let Err(e) = self.flush() {
                tracing::debug!(instance = %self.shared.instance, "write failed: {e}");
                return cx.close();
            }
            if !(self.want_read && self.can_read()) {
                break;
            }
        }
        let flushed = self.wbuf.is_empty();
        let finished = self.slots.is_empty() && flushed;
        if self.streaming.is_some() {
            if self.read_eof || self.stream_ended || (self.close_after && flushed) {
                cx.close();
            }
        } else if finished && (self.close_after || self.read_eof) {
            cx.close();
        }
    }

    fn answer_slot(&mut self, tag: u64, make: impl FnOnce(&mut Slot) -> Option<Vec<u8>>) -> bool {
        let Some(slot) = self.slots.iter_mut().find(|s| s.tag() == Some(tag)) else {
            return false;
        };
        if let Some(bytes) = make(slot) {
            *slot = Slot::Ready(bytes);
        }
        true
    }

    fn published(&mut self, tag: u64, outcome: Result<Receipt, Failure>) {
        let mut out = Vec::new();
        let close = matches!(
            self.slots.iter().find(|s| s.tag() == Some(tag)),
            Some(Slot::Publish { close: true, .. })
        );
        match outcome {
            Ok(receipt) => {
                self.shared.stats.published.fetch_add(1, Ordering::Relaxed);
                let id = receipt.id.to_string();
                response::write(
                    &mut out,
                    201,
                    &[("Message-Id", &id)],
                    Some("text/plain; charset=utf-8"),
                    format!("{id}\n").as_bytes(),
                    close,
                );
            }
            Err(f) => out = failure_response(&f, close),
        }
        self.answer_slot(tag, |_| Some(out));
    }

    fn acked(&mut self, tag: u64, outcome: Result<(), Failure>) {
        let close = matches!(
            self.slots.iter().find(|s| s.tag() == Some(tag)),
            Some(Slot::Ack { close: true, .. })
        );
        let out = match outcome {
            Ok(()) => {
                let mut out = Vec::new();
                response::write(&mut out, 204, &[], None, b"", close);
                out
            }
            Err(f) => failure_response(&f, close),
        };
        self.answer_slot(tag, |_| Some(out));
    }

    fn delivered(&mut self, tag: u64, delivery: Delivery) {
        if let Some(s) = &mut self.streaming {
            match delivery {
                Delivery::Message(m) => {
                    self.shared.stats.delivered.fetch_add(1, Ordering::Relaxed);
                    response::event(&mut self.wbuf, &m.id.to_string(), "message", &m.body);
                    s.owed += 1;
                }
                Delivery::Closed(reason) => {
                    // The driver ended the stream (a slow consumer): say
                    // why if the socket takes it, and close at once, since
                    // the client may not be reading.
                    tracing::warn!(
                        instance = %self.shared.instance,
                        peer = ?self.stream.peer_addr().ok(),
                        "closing an event stream: {reason}"
                    );
                    self.shared
                        .stats
                        .streams_ended
                        .fetch_add(1, Ordering::Relaxed);
                    response::event(&mut self.wbuf, "-", "closed", reason.as_bytes());
                    self.close_after = true;
                    self.stream_ended = true;
                }
            }
            return;
        }
        let mut late = None;
        let found = self.answer_slot(tag, |slot| {
            let Slot::Poll { sub, close, .. } = slot else {
                return None;
            };
            let close = *close;
            drop(sub.take());
            let mut out = Vec::new();
            match &delivery {
                Delivery::Message(m) => {
                    let id = m.id.to_string();
                    let count = m.delivery_count.to_string();
                    response::write(
                        &mut out,
                        200,
                        &[("Message-Id", &id), ("Delivery-Count", &count)],
                        Some(&m.content_type),
                        &m.body,
                        close,
                    );
                }
                Delivery::Closed(reason) => response::text(&mut out, 503, &[], reason, close),
            }
            Some(out)
        });
        if found {
            if matches!(delivery, Delivery::Message(_)) {
                self.shared.stats.delivered.fetch_add(1, Ordering::Relaxed);
            }
        } else if let Delivery::Message(m) = delivery {
            late = self
                .ended
                .iter()
                .find(|e| e.0 == tag)
                .cloned()
                .map(|e| (e, m));
        }
        if let Some(((_, driver, destination), m)) = late {
            let _ = driver.release(&destination, m.id);
        }
    }

    fn poll_expired(&mut self, timer: TimerId) {
        let Some(i) = self
            .slots
            .iter()
            .position(|s| matches!(s, Slot::Poll { timer: t, .. } if *t == timer))
        else {
            return;
        };
        if let Slot::Poll {
            tag,
            driver,
            destination,
            close,
            ..
        } = std::mem::replace(&mut self.slots[i], Slot::Ready(Vec::new()))
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
}

/// The response for a failure: its kind decides the status.
fn failure_response(f: &Failure, close: bool) -> Vec<u8> {
    let status = match f.kind {
        FailureKind::NotFound => 404,
        FailureKind::Unsupported => 415,
        FailureKind::Rejected => 400,
        FailureKind::Full | FailureKind::Unavailable => 503,
        _ => 500,
    };
    // A 503 always says when to come back: the driver's hint, or 1 s.
    let retry = match (f.retry_after, status) {
        (Some(d), _) => Some(d.as_secs().max(1).to_string()),
        (None, 503) => Some("1".to_owned()),
        _ => None,
    };
    let headers: Vec<(&str, &str)> = retry.iter().map(|r| ("Retry-After", r.as_str())).collect();
    let mut out = Vec::new();
    response::text(&mut out, status, &headers, &f.reason, close);
    out
}

impl Handler for Conn {
    fn ready(&mut self, cx: &mut Cx<'_>, event: &Event) {
        if event.is_readable() || event.is_read_closed() {
            self.want_read = true;
        }
        self.drive(cx);
    }

    fn notify(&mut self, cx: &mut Cx<'_>, note: Note) {
        let tag = note.tag;
        let note = match note.take::<Result<Receipt, Failure>>() {
            Ok(outcome) => {
                self.published(tag, outcome);
                return self.drive(cx);
            }
            Err(note) => note,
        };
        let note = match note.take::<Result<(), Failure>>() {
            Ok(outcome) => {
                self.acked(tag, outcome);
                return self.drive(cx);
            }
            Err(note) => note,
        };
        if let Ok(delivery) = note.take::<Delivery>() {
            self.delivered(tag, delivery);
            self.drive(cx);
        }
    }

    fn timeout(&mut self, cx: &mut Cx<'_>, timer: TimerId) {
        if timer != self.idle_timer {
            self.poll_expired(timer);
            return self.drive(cx);
        }
        let config = &self.shared.config;
        let (idle, header) = (config.idle(), config.header_timeout());
        // A request head begun and not finished in time, however slowly
        // it is still arriving.
        let head_age = self.head_since.map(|t| t.elapsed());
        if head_age.is_some_and(|age| age >= header) {
            self.shared
                .stats
                .header_timeouts
                .fetch_add(1, Ordering::Relaxed);
            tracing::debug!(instance = %self.shared.instance, "closing a connection whose request head did not complete");
            // Best effort: say why if the socket takes it, unless answers
            // to earlier requests are still owed (they would come first).
            if self.slots.is_empty() {
                response::text(
                    &mut self.wbuf,
                    408,
                    &[],
                    "the request head did not complete in time",
                    true,
                );
                let _ = self.flush();
            }
            return cx.close();
        }
        // Nothing from the client and nothing in flight for it.
        let quiet = self.last_active.elapsed();
        let waiting = self.streaming.is_some() || !self.slots.is_empty();
        if quiet >= idle && !waiting {
            self.shared
                .stats
                .idle_timeouts
                .fetch_add(1, Ordering::Relaxed);
            tracing::debug!(instance = %self.shared.instance, "closing idle connection");
            return cx.close();
        }
        let mut next = idle.saturating_sub(quiet);
        if let Some(age) = head_age {
            next = next.min(header.saturating_sub(age));
        }
        self.idle_timer = cx.set_timer(next.max(Duration::from_millis(100)));
    }

    fn shutdown(&mut self, cx: &mut Cx<'_>) {
        self.close_after = true;
        if self.streaming.is_some() {
            return cx.close();
        }
        // Long polls end now, empty-handed; publishes in flight finish.
        let timers: Vec<TimerId> = self
            .slots
            .iter()
            .filter_map(|s| match s {
                Slot::Poll { timer, .. } => Some(*timer),
                _ => None,
            })
            .collect();
        for t in timers {
            self.poll_expired(t);
        }
        self.drive(cx);
        if self.slots.is_empty() && self.wbuf.is_empty() {
            cx.close();
        }
    }
}
