//! One management connection: HTTP/1.1, one request at a time.

use std::io::{self, Read, Write};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bindery::reactor::TimerId;

use bindery::{Cx, Handler, Note};
use bindery_classes::http::request::{self, Limits, Parsed};
use bindery_classes::http::response;
use bindery_classes::listener::{self, OpenConnection};
use mio::Interest;
use mio::event::Event;

use crate::Shared;
use crate::api::{self, Answer, Reply};

/// The note tag of a finished operation.
const DONE: u64 = 1;
/// The note tag of a new line of a followed log.
const LOG: u64 = 2;
/// The head of a request, at most.
const MAX_HEAD: usize = 16 * 1024;

pub(crate) struct Conn<S> {
    stream: S,
    shared: Arc<Shared>,
    rbuf: Vec<u8>,
    wbuf: Vec<u8>,
    wpos: usize,
    /// An operation is running on its own thread; its reply comes as a note.
    busy: bool,
    /// Streaming an instance's log (chunked NDJSON) for the rest of the
    /// connection's life.
    following: Option<bindery::logs::Follow>,
    close_after: bool,
    read_eof: bool,
    /// When the request head now in `rbuf` began to arrive.
    head_since: Option<Instant>,
    last_active: Instant,
    timer: TimerId,
    _open: OpenConnection,
}

/// How often a connection looks at its timeouts.
const TICK: Duration = Duration::from_secs(1);

impl<S: Read + Write + mio::event::Source + Send + 'static> Conn<S> {
    pub(crate) fn start(
        cx: &mut Cx<'_>,
        stream: S,
        shared: Arc<Shared>,
        open: OpenConnection,
    ) -> io::Result<Box<dyn Handler>> {
        let mut conn = Conn {
            stream,
            shared,
            rbuf: Vec::new(),
            wbuf: Vec::new(),
            wpos: 0,
            busy: false,
            following: None,
            close_after: false,
            read_eof: false,
            head_since: None,
            last_active: Instant::now(),
            timer: cx.set_timer(TICK),
            _open: open,
        };
        cx.registry().register(
            &mut conn.stream,
            cx.token(),
            Interest::READABLE | Interest::WRITABLE,
        )?;
        Ok(Box::new(conn))
    }

    fn read(&mut self) -> io::Result<()> {
        let mut chunk = [0u8; 16 * 1024];
        let cap = MAX_HEAD + 2 * self.shared.config.max_body_bytes;
        while self.rbuf.len() <= cap {
            match self.stream.read(&mut chunk) {
                Ok(0) => {
                    self.read_eof = true;
                    return Ok(());
                }
                Ok(n) => {
                    if self.rbuf.is_empty() {
                        self.head_since = Some(Instant::now());
                    }
                    self.last_active = Instant::now();
                    self.rbuf.extend_from_slice(&chunk[..n]);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn reply(&mut self, r: Reply) {
        let headers: Vec<(&str, &str)> = r
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        response::write(
            &mut self.wbuf,
            r.status,
            &headers,
            r.content_type,
            &r.body,
            self.close_after,
        );
    }

    /// Answers whole requests until one has to wait for an operation.
    fn serve(&mut self, cx: &mut Cx<'_>) {
        let limits = Limits {
            max_header_bytes: MAX_HEAD,
            max_body_bytes: self.shared.config.max_body_bytes,
        };
        if self.following.is_some() {
            // Nothing more is read as requests while a log streams.
            self.rbuf.clear();
            return;
        }
        while !self.busy && !self.close_after && !self.rbuf.is_empty() {
            match request::parse(&self.rbuf, limits) {
                Parsed::Partial {
                    expect_continue, ..
                } => {
                    if expect_continue {
                        self.wbuf
                            .extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
                    }
                    return;
                }
                Parsed::Fail(status, reason) => {
                    self.close_after = true;
                    self.rbuf.clear();
                    self.reply(api::error(status, &reason));
                }
                Parsed::Done(req, used) => {
                    self.rbuf.drain(..used);
                    self.head_since = (!self.rbuf.is_empty()).then(Instant::now);
                    self.last_active = Instant::now();
                    self.shared.stats.requests.fetch_add(1, Ordering::Relaxed);
                    if !req.keep_alive {
                        self.close_after = true;
                    }
                    if !api::authorized(&self.shared.token, req.authorization.as_deref()) {
                        self.shared
                            .stats
                            .unauthorized
                            .fetch_add(1, Ordering::Relaxed);
                        self.reply(api::unauthorized());
                        continue;
                    }
                    match api::answer(&self.shared, &req) {
                        Answer::Now(r) => self.reply(r),
                        Answer::Follow { instance, lines } => {
                            // The stream lasts until the client leaves.
                            self.close_after = false;
                            self.wbuf.extend_from_slice(
                                b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\n\
                                  Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n",
                            );
                            for line in &lines {
                                self.log_chunk(line);
                            }
                            let (handle, at) = (cx.handle(), cx.address());
                            self.following =
                                Some(bindery::logs::logs().follow(&instance, move |line| {
                                    handle.notify(at, Note::new(LOG, line.clone()))
                                }));
                            self.rbuf.clear();
                            return;
                        }
                        Answer::Later(job) => {
                            self.busy = true;
                            let done = cx.completion::<Reply>(DONE);
                            let spawned = std::thread::Builder::new()
                                .name("bindery-manage-op".into())
                                .spawn(move || done.succeed(job()));
                            if let Err(e) = spawned {
                                self.busy = false;
                                self.reply(api::error(
                                    500,
                                    &format!("cannot start the operation: {e}"),
                                ));
                            }
                        }
                    }
                }
            }
        }
    }

    /// One log line as one chunk of NDJSON.
    fn log_chunk(&mut self, line: &bindery::logs::LogLine) {
        let mut json = serde_json::to_vec(line).unwrap_or_default();
        json.push(b'\n');
        self.wbuf
            .extend_from_slice(format!("{:x}\r\n", json.len()).as_bytes());
        self.wbuf.extend_from_slice(&json);
        self.wbuf.extend_from_slice(b"\r\n");
    }

    fn drive(&mut self, cx: &mut Cx<'_>) {
        self.serve(cx);
        if let Err(e) = listener::write_out(&mut self.stream, &mut self.wbuf, &mut self.wpos) {
            tracing::debug!(instance = %self.shared.instance, "write failed: {e}");
            return cx.close();
        }
        let flushed = self.wbuf.is_empty();
        if !self.busy && flushed && (self.close_after || self.read_eof) {
            cx.close();
        }
    }
}

impl<S: Read + Write + mio::event::Source + Send + 'static> Handler for Conn<S> {
    fn ready(&mut self, cx: &mut Cx<'_>, event: &Event) {
        if event.is_readable() || event.is_read_closed() {
            if let Err(e) = self.read() {
                tracing::debug!(instance = %self.shared.instance, "read failed: {e}");
                return cx.close();
            }
        }
        self.drive(cx);
    }

    fn notify(&mut self, cx: &mut Cx<'_>, note: Note) {
        if note.tag == LOG {
            if let Ok(line) = note.take::<bindery::logs::LogLine>() {
                // A client that does not read is not buffered for without
                // bound: past 1 MiB unsent, lines are skipped.
                if self.wbuf.len() < 1 << 20 {
                    self.log_chunk(&line);
                }
            }
            return self.drive(cx);
        }
        if note.tag == DONE {
            if let Ok(outcome) = note.take::<Result<Reply, bindery::Failure>>() {
                self.busy = false;
                let reply = outcome.unwrap_or_else(|f| api::error(500, &f.to_string()));
                self.reply(reply);
            }
        }
        self.drive(cx);
    }

    fn timeout(&mut self, cx: &mut Cx<'_>, timer: TimerId) {
        if timer != self.timer {
            return;
        }
        let config = &self.shared.config;
        let waiting = self.busy || self.following.is_some();
        let head_late = self
            .head_since
            .is_some_and(|t| t.elapsed() >= Duration::from_secs(config.header_timeout_secs));
        if !waiting && head_late {
            tracing::debug!(instance = %self.shared.instance, "request head timed out");
            self.close_after = true;
            self.rbuf.clear();
            self.reply(api::error(408, "the request head did not arrive in time"));
            return self.drive(cx);
        }
        let idle = Duration::from_secs(config.idle_timeout_secs);
        if !waiting && self.rbuf.is_empty() && self.last_active.elapsed() >= idle {
            return cx.close();
        }
        self.timer = cx.set_timer(TICK);
    }

    fn shutdown(&mut self, cx: &mut Cx<'_>) {
        // Finish the operation in flight (or end a log stream), then close.
        if self.following.take().is_some() {
            self.wbuf.extend_from_slice(b"0\r\n\r\n");
        }
        self.close_after = true;
        self.rbuf.clear();
        self.drive(cx);
    }
}
