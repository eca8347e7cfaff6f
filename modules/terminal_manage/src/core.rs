//! The protocol core of one management connection: HTTP/1.1, one request
//! at a time, no socket and no reactor (see [`bindery_classes::connection`]).
//!
//! A request that changes the server runs on a thread of its own (it may
//! wait for instances to stop); its reply comes back as a note. A followed
//! log streams chunked NDJSON for the rest of the connection's life.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bindery::Note;
use bindery_classes::connection::{Flow, Intake, Io, Protocol, Reading};
use bindery_classes::http::request::{self, Limits, Parsed};
use bindery_classes::http::response;

use crate::Shared;
use crate::api::{self, Answer, Reply};

/// The note tag of a finished operation.
const DONE: u64 = 1;
/// The note tag of a new line of a followed log.
const LOG: u64 = 2;
/// The head of a request, at most.
const MAX_HEAD: usize = 16 * 1024;
/// Unsent log output past which lines are skipped for a client that does
/// not read.
const MAX_LOG_BACKLOG: usize = 1 << 20;

pub(crate) struct Core {
    shared: Arc<Shared>,
    /// An operation is running on its own thread; its reply comes as a note.
    busy: bool,
    /// Streaming an instance's log for the rest of the connection's life.
    following: Option<bindery::logs::Follow>,
    close_after: bool,
    close_now: bool,
    read_eof: bool,
    /// Input from here on is thrown away (after a refusal or a timeout).
    discard: bool,
    /// `100 Continue` sent for the request now arriving.
    continued: bool,
    /// When the request now arriving began.
    head_since: Option<Instant>,
    last_active: Instant,
    /// Input bytes seen by the last `receive` and left unused.
    unused: usize,
}

impl Core {
    pub(crate) fn new(shared: Arc<Shared>, now: Instant) -> Core {
        Core {
            shared,
            busy: false,
            following: None,
            close_after: false,
            close_now: false,
            read_eof: false,
            discard: false,
            continued: false,
            head_since: None,
            last_active: now,
            unused: 0,
        }
    }

    fn reply(&mut self, io: &mut Io<'_>, r: Reply) {
        let headers: Vec<(&str, &str)> = r
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        response::write(
            io.out(),
            r.status,
            &headers,
            r.content_type,
            &r.body,
            self.close_after,
        );
    }

    /// One log line as one chunk of NDJSON.
    fn log_chunk(io: &mut Io<'_>, line: &bindery::logs::LogLine) {
        let mut json = serde_json::to_vec(line).unwrap_or_default();
        json.push(b'\n');
        let out = io.out();
        out.extend_from_slice(format!("{:x}\r\n", json.len()).as_bytes());
        out.extend_from_slice(&json);
        out.extend_from_slice(b"\r\n");
    }

    /// Answers one whole request, now or through a note.
    fn answer(&mut self, io: &mut Io<'_>, req: &request::Request) {
        self.shared.stats.requests.inc();
        if !req.keep_alive {
            self.close_after = true;
        }
        if !api::authorized(&self.shared.token, req.authorization.as_deref()) {
            self.shared.stats.unauthorized.inc();
            return self.reply(io, api::unauthorized());
        }
        match api::answer(&self.shared, req) {
            Answer::Now(r) => self.reply(io, r),
            Answer::Follow { instance, lines } => {
                // The stream lasts until the client leaves.
                self.close_after = false;
                self.discard = true;
                io.out().extend_from_slice(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\n\
                      Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n",
                );
                for line in &lines {
                    Self::log_chunk(io, line);
                }
                let wake = io.wake().clone();
                self.following = Some(bindery::logs::logs().follow(&instance, move |line| {
                    wake.note(Note::new(LOG, line.clone()))
                }));
            }
            Answer::Later(job) => {
                self.busy = true;
                let done = io.wake().completion::<Reply>(DONE);
                let spawned = std::thread::Builder::new()
                    .name("bindery-manage-op".into())
                    .spawn(move || done.succeed(job()));
                if let Err(e) = spawned {
                    self.busy = false;
                    let why = format!("cannot start the operation: {e}");
                    self.reply(io, api::error(500, &why));
                }
            }
        }
    }

    /// An operation runs or a log streams: no timeout applies.
    fn waiting(&self) -> bool {
        self.busy || self.following.is_some()
    }
}

impl Protocol for Core {
    fn receive(&mut self, io: &mut Io<'_>, input: &[u8]) -> usize {
        if input.len() > self.unused {
            self.last_active = io.now();
            if self.unused == 0 && self.head_since.is_none() {
                self.head_since = Some(io.now());
            }
        }
        if self.discard {
            self.unused = 0;
            return input.len();
        }
        let limits = Limits {
            max_header_bytes: MAX_HEAD,
            max_body_bytes: self.shared.config.max_body_bytes,
        };
        let mut used = 0;
        while !self.busy && !self.close_after && !self.discard && used < input.len() {
            match request::parse(&input[used..], limits) {
                Parsed::Partial {
                    expect_continue, ..
                } => {
                    if expect_continue && !self.continued {
                        self.continued = true;
                        io.out().extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
                    }
                    break;
                }
                Parsed::Fail(status, reason) => {
                    self.close_after = true;
                    self.discard = true;
                    self.reply(io, api::error(status, &reason));
                }
                Parsed::Done(req, n) => {
                    used += n;
                    self.continued = false;
                    self.head_since = (used < input.len()).then(|| io.now());
                    self.answer(io, &req);
                }
            }
        }
        if self.discard {
            used = input.len();
        }
        self.unused = input.len() - used;
        used
    }

    fn note(&mut self, io: &mut Io<'_>, note: Note) {
        match note.tag {
            LOG => {
                if let Ok(line) = note.take::<bindery::logs::LogLine>() {
                    if self.following.is_some() && io.unsent() < MAX_LOG_BACKLOG {
                        Self::log_chunk(io, &line);
                    }
                }
            }
            DONE => {
                if let Ok(outcome) = note.take::<Result<Reply, bindery::Failure>>() {
                    self.busy = false;
                    let reply = outcome.unwrap_or_else(|f| api::error(500, &f.to_string()));
                    self.reply(io, reply);
                }
            }
            _ => {}
        }
    }

    fn intake(&self, reading: &Reading) -> Intake {
        let cap = MAX_HEAD + 2 * self.shared.config.max_body_bytes;
        if self.read_eof || reading.pending > cap {
            Intake::Wait
        } else {
            Intake::Read(64 * 1024)
        }
    }

    fn deadline(&self) -> Option<Instant> {
        if self.waiting() {
            return None;
        }
        let config = &self.shared.config;
        let head = self
            .head_since
            .map(|t| t + Duration::from_secs(config.header_timeout_secs));
        let idle = (self.unused == 0)
            .then(|| self.last_active + Duration::from_secs(config.idle_timeout_secs));
        head.into_iter().chain(idle).min()
    }

    fn expire(&mut self, io: &mut Io<'_>) {
        if self.waiting() {
            return;
        }
        let config = &self.shared.config;
        let now = io.now();
        let head_late = self
            .head_since
            .is_some_and(|t| now >= t + Duration::from_secs(config.header_timeout_secs));
        if head_late {
            tracing::debug!(instance = %self.shared.instance, "request head timed out");
            self.close_after = true;
            self.discard = true;
            self.head_since = None;
            self.reply(
                io,
                api::error(408, "the request head did not arrive in time"),
            );
        } else if self.unused == 0
            && now >= self.last_active + Duration::from_secs(config.idle_timeout_secs)
        {
            self.close_now = true;
        }
    }

    fn peer_closed(&mut self, _: &mut Io<'_>) {
        self.read_eof = true;
    }

    fn shutdown(&mut self, io: &mut Io<'_>) {
        // Finish the operation in flight (or end a log stream), then close.
        if self.following.take().is_some() {
            io.out().extend_from_slice(b"0\r\n\r\n");
        }
        self.close_after = true;
        self.discard = true;
    }

    fn flow(&self) -> Flow {
        if self.close_now {
            Flow::Close
        } else if !self.busy && (self.close_after || (self.read_eof && self.following.is_none())) {
            Flow::CloseWhenFlushed
        } else if self.read_eof && self.following.is_some() {
            Flow::Close
        } else {
            Flow::Open
        }
    }
}
