//! The route class: modules that add HTTP endpoints.
//!
//! A route instance binds to keys such as `GET /pkg/list.json`,
//! `GET /pkg/{name}` or `POST /jobs/` (a segment prefix); see
//! [`bindery::routes`] for the patterns and which route wins. The HTTP
//! terminal looks routes up before its messaging paths, so one listener
//! serves both; a route that would shadow a driver's path is refused at
//! bind time, naming both.
//!
//! # Implementing
//!
//! - [`Route::handle`] gets the whole request and a [`Responder`], and
//!   returns at once: no thread blocks per request.
//! - The responder streams: [`Responder::head`] (status and headers), then
//!   [`Responder::body`] chunks, then [`Responder::end`]; or
//!   [`Responder::fail`] before the head (an error response) or after it
//!   (the stream is cut, so the client sees an incomplete response rather
//!   than a short one that looks whole). A responder dropped unanswered
//!   fails with 500: the client always hears back, as with a
//!   [`Completion`](bindery::Completion).
//! - **Backpressure**: [`Responder::body`] says whether there is room for
//!   more. When it says no, produce nothing more until the waker set with
//!   [`Responder::set_waker`] runs and [`Responder::room`] is true: bytes
//!   not yet written to the client are bounded by the window (a slow client
//!   slows the producer; nothing buffers without bound).
//! - **A client that leaves**: the waker runs too, and
//!   [`Responder::is_gone`] is true; stop the work (kill the child, cancel
//!   the query) and drop the responder.
//!
//! # Threading
//!
//! `handle` is called on a terminal's reactor thread: never block in it. A
//! responder may be used from any thread.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use bindery::routes::Captures;
use bindery::{BoxError, InstanceContext, Note, Registrar};
use bytes::Bytes;
use parking_lot::Mutex;

use crate::connection::Wake;

/// An HTTP endpoint.
pub trait Route: Send + Sync + 'static {
    /// Answers `request` through `responder` (see the module docs);
    /// returns at once.
    fn handle(&self, request: RouteRequest, responder: Responder);
}

/// A route instance as the binding table holds it.
pub type RouteHandle = Arc<dyn Route>;

/// A request, as a route sees it.
#[derive(Clone, Debug, Default)]
pub struct RouteRequest {
    /// `GET`, `POST`, ...
    pub method: String,
    /// The path, as the client wrote it (not decoded).
    pub path: String,
    /// What the route's pattern captured (not decoded; see [`decode`]).
    pub captures: Captures,
    /// The query string without `?` (not decoded).
    pub query: String,
    /// Every header, in order, names as the client wrote them.
    pub headers: Vec<(String, String)>,
    /// The body, de-chunked.
    pub body: Bytes,
    /// The client's address, for logs.
    pub peer: String,
}

impl RouteRequest {
    /// The first header called `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The first query parameter called `name`, percent-decoded (`+` is a
    /// space); `Err` says why it cannot be decoded.
    pub fn query_param(&self, name: &str) -> Option<Result<String, String>> {
        self.query.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (k == name).then(|| decode(&v.replace('+', " ")))
        })
    }
}

/// Percent-decodes `raw` into UTF-8, or says where it is broken.
pub fn decode(raw: &str) -> Result<String, String> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok());
            match hex {
                Some(b) => out.push(b),
                None => return Err(format!("bad percent-escape at byte {i}")),
            }
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out)
        .map_err(|e| format!("not UTF-8 at byte {}", e.utf8_error().valid_up_to()))
}

/// What a responder sends its connection, as notes with the request's tag.
#[derive(Debug)]
pub enum Part {
    /// The status and headers. Without a `Content-Length` among them the
    /// body is sent chunked.
    Head {
        /// The status.
        status: u16,
        /// The headers.
        headers: Vec<(String, String)>,
    },
    /// A piece of the body.
    Body(Bytes),
    /// The body is complete.
    End,
    /// It failed: before the head, an error response with this status and
    /// message; after it, the stream is cut.
    Fail {
        /// The status, if the head is not sent yet.
        status: u16,
        /// Why, for the client and the log.
        message: String,
    },
}

/// The window between a responder and its connection (see the module
/// docs): bytes handed over and not yet written to the client.
#[derive(Default)]
pub struct Window {
    unsent: AtomicUsize,
    limit: usize,
    gone: AtomicBool,
    waker: Mutex<Option<Arc<dyn Fn() + Send + Sync>>>,
}

impl std::fmt::Debug for Window {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Window")
            .field("unsent", &self.unsent)
            .field("limit", &self.limit)
            .field("gone", &self.gone)
            .finish()
    }
}

impl Window {
    /// A window of `limit` bytes.
    pub fn new(limit: usize) -> Arc<Window> {
        Arc::new(Window {
            limit: limit.max(1),
            ..Window::default()
        })
    }

    /// `n` bytes reached the client: room opens (the producer is woken when
    /// it falls to half the window).
    pub fn written(&self, n: usize) {
        if n == 0 {
            return;
        }
        let before = self.unsent.fetch_sub(n, Ordering::AcqRel);
        let after = before.saturating_sub(n);
        if before >= self.limit / 2 && after < self.limit / 2 {
            self.wake();
        }
    }

    /// The client is gone (the connection closed, or the response is over).
    pub fn close(&self) {
        if !self.gone.swap(true, Ordering::AcqRel) {
            self.wake();
        }
    }

    /// Bytes handed over and not yet written.
    pub fn unsent(&self) -> usize {
        self.unsent.load(Ordering::Acquire)
    }

    fn wake(&self) {
        let waker = self.waker.lock().clone();
        if let Some(w) = waker {
            w();
        }
    }
}

/// How a route answers one request: see the module docs.
pub struct Responder {
    wake: Wake,
    tag: u64,
    window: Arc<Window>,
    headed: bool,
    finished: bool,
}

impl std::fmt::Debug for Responder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Responder")
            .field("tag", &self.tag)
            .field("window", &self.window)
            .finish()
    }
}

impl Responder {
    /// A responder whose parts reach `wake` as notes with `tag`, paced by
    /// `window` (terminals and harnesses make these).
    pub fn new(wake: Wake, tag: u64, window: Arc<Window>) -> Responder {
        Responder {
            wake,
            tag,
            window,
            headed: false,
            finished: false,
        }
    }

    fn send(&self, part: Part) {
        self.wake.note(Note::new(self.tag, part));
    }

    /// Sends the status and headers (once; later calls are ignored).
    pub fn head(&mut self, status: u16, headers: Vec<(String, String)>) {
        if self.headed || self.finished {
            return;
        }
        self.headed = true;
        self.send(Part::Head { status, headers });
    }

    /// Sends a piece of the body (a `200` head first, if none was sent);
    /// returns whether there is room for more.
    pub fn body(&mut self, chunk: Bytes) -> bool {
        if self.finished {
            return false;
        }
        if !self.headed {
            self.head(200, Vec::new());
        }
        if !chunk.is_empty() {
            self.window.unsent.fetch_add(chunk.len(), Ordering::AcqRel);
            self.send(Part::Body(chunk));
        }
        self.room()
    }

    /// Ends the response (a `200` head first, if none was sent).
    pub fn end(mut self) {
        if !self.headed {
            self.head(200, Vec::new());
        }
        self.finished = true;
        self.send(Part::End);
    }

    /// A whole response at once.
    pub fn answer(mut self, status: u16, headers: Vec<(String, String)>, body: Bytes) {
        self.head(status, headers);
        self.body(body);
        self.end();
    }

    /// Fails: an error response with `status` and `message` if the head is
    /// not sent yet, else the stream is cut.
    pub fn fail(mut self, status: u16, message: impl Into<String>) {
        self.finished = true;
        self.send(Part::Fail {
            status,
            message: message.into(),
        });
    }

    /// Whether the head was sent.
    pub fn is_headed(&self) -> bool {
        self.headed
    }

    /// Whether the unsent bytes are under the window.
    pub fn room(&self) -> bool {
        self.window.unsent() < self.window.limit
    }

    /// Whether the client is gone: stop working for it.
    pub fn is_gone(&self) -> bool {
        self.window.gone.load(Ordering::Acquire)
    }

    /// Runs `waker` (from any thread) whenever room opens or the client
    /// goes; check [`Responder::room`] and [`Responder::is_gone`] then.
    /// If the client is gone already, it runs at once.
    pub fn set_waker(&self, waker: impl Fn() + Send + Sync + 'static) {
        *self.window.waker.lock() = Some(Arc::new(waker));
        if self.is_gone() {
            self.window.wake();
        }
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        if !self.finished {
            self.send(Part::Fail {
                status: 500,
                message: "the route dropped the request unanswered".into(),
            });
        }
        // The waker may hold what holds this responder.
        self.window.waker.lock().take();
    }
}

/// Registers a route module's factory.
pub fn register<R, F>(reg: &mut Registrar<'_, crate::class::Route>, make: F)
where
    R: Route,
    F: Fn(&InstanceContext) -> Result<R, BoxError> + Send + Sync + 'static,
{
    reg.register(move |cx| make(cx).map(|r| Arc::new(r) as RouteHandle));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decoding() {
        assert_eq!(decode("a%20b%2F..").unwrap(), "a b/..");
        assert!(decode("%zz").is_err());
        assert!(decode("%ff").is_err());
        assert!(decode("%4").is_err());
        let r = RouteRequest {
            query: "name=a+b&x=%3B".into(),
            ..RouteRequest::default()
        };
        assert_eq!(r.query_param("name"), Some(Ok("a b".into())));
        assert_eq!(r.query_param("x"), Some(Ok(";".into())));
        assert_eq!(r.query_param("y"), None);
    }

    #[test]
    fn a_dropped_responder_fails_and_the_window_paces() {
        let (wake, notes) = Wake::channel();
        let window = Window::new(10);
        let mut r = Responder::new(wake, 7, window.clone());
        let woken = Arc::new(AtomicUsize::new(0));
        let w = woken.clone();
        r.set_waker(move || {
            w.fetch_add(1, Ordering::SeqCst);
        });
        assert!(r.body(Bytes::from_static(b"12345")));
        assert!(!r.body(Bytes::from_static(b"678901")));
        window.written(7);
        assert_eq!(woken.load(Ordering::SeqCst), 1);
        assert!(r.room());
        drop(r);
        let parts: Vec<Part> = notes
            .try_iter()
            .map(|n| n.take::<Part>().unwrap())
            .collect();
        assert!(matches!(parts[0], Part::Head { status: 200, .. }));
        assert!(matches!(parts.last(), Some(Part::Fail { status: 500, .. })));
        window.close();
        assert_eq!(
            woken.load(Ordering::SeqCst),
            1,
            "the waker went with the responder"
        );
    }
}
