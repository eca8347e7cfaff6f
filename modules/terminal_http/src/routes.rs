//! Requests served by route modules (`bindery_classes::route`): found
//! before the messaging paths, answered by streaming what the route's
//! responder sends, in request order like every other answer. Part of the
//! protocol core ([`crate::core`]).
//!
//! A route's body goes out chunked unless its head names a
//! `Content-Length`. Body bytes count against the route's window until
//! they are written to the socket; the window's producer is woken as it
//! drains, and told the client is gone when the slot or the connection
//! ends. A failure after the head cuts the connection without the last
//! chunk, so the client sees an incomplete response, not a short one.

use std::sync::Arc;

use bindery::routes::Captures;
use bindery_classes::connection::Io;
use bindery_classes::http::{request, response};
use bindery_classes::route::{Part, Responder, RouteHandle, RouteRequest, Window};

use crate::core::{Core, Slot};

/// A route's answer on its way out.
pub(crate) struct RouteSlot {
    pub(crate) tag: u64,
    close: bool,
    window: Arc<Window>,
    /// Formatted bytes not yet moved to the output.
    buf: Vec<u8>,
    /// Body bytes in `buf`, for the window.
    body_in_buf: usize,
    headed: bool,
    chunked: bool,
    /// Its first bytes went out (with the request's CORS lines).
    opened: bool,
    pub(crate) done: Done,
}

/// How far a route's answer got.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Done {
    Streaming,
    /// Complete: leaves once its bytes are out.
    Ended,
    /// Failed after its head: the connection is cut after its bytes.
    Cut,
}

impl Drop for RouteSlot {
    fn drop(&mut self) {
        self.window.close();
    }
}

impl RouteSlot {
    /// Takes one part from the route.
    fn apply(&mut self, part: Part) {
        if self.done != Done::Streaming {
            return;
        }
        match part {
            Part::Head { status, headers } if !self.headed => {
                self.headed = true;
                self.head(status, &headers);
            }
            Part::Head { .. } => {}
            Part::Body(chunk) if self.headed && !chunk.is_empty() => {
                self.body_in_buf += chunk.len();
                if self.chunked {
                    self.buf
                        .extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
                    self.buf.extend_from_slice(&chunk);
                    self.buf.extend_from_slice(b"\r\n");
                } else {
                    self.buf.extend_from_slice(&chunk);
                }
            }
            Part::Body(_) => {}
            Part::End => {
                if self.chunked {
                    self.buf.extend_from_slice(b"0\r\n\r\n");
                }
                self.done = Done::Ended;
            }
            Part::Fail { status, message } => {
                if self.headed {
                    tracing::debug!("route response cut after its head: {message}");
                    self.done = Done::Cut;
                } else {
                    let retry = [("Retry-After", "1")];
                    let headers: &[(&str, &str)] = if status == 503 { &retry } else { &[] };
                    response::text(&mut self.buf, status, headers, &message, self.close);
                    self.done = Done::Ended;
                }
            }
        }
    }

    fn head(&mut self, status: u16, headers: &[(String, String)]) {
        use std::fmt::Write as _;
        let mut head = String::with_capacity(128);
        let _ = write!(head, "HTTP/1.1 {status} {}\r\n", response::reason(status));
        let mut length = false;
        for (k, v) in headers {
            // The connection's framing is the terminal's to say.
            if k.eq_ignore_ascii_case("transfer-encoding") || k.eq_ignore_ascii_case("connection") {
                continue;
            }
            if v.contains(['\r', '\n']) || k.contains(['\r', '\n', ':']) {
                continue;
            }
            length |= k.eq_ignore_ascii_case("content-length");
            let _ = write!(head, "{k}: {v}\r\n");
        }
        let bodiless = status == 204 || status == 304 || status < 200;
        self.chunked = !length && !bodiless;
        if self.chunked {
            head.push_str("Transfer-Encoding: chunked\r\n");
        }
        if self.close {
            head.push_str("Connection: close\r\n");
        }
        head.push_str("\r\n");
        self.buf.extend_from_slice(head.as_bytes());
    }
}

impl Core {
    /// The route serving this request, if one does.
    pub(crate) fn find_route(&self, method: &str, path: &str) -> Option<(RouteHandle, Captures)> {
        let index = self.shared.routes.as_ref()?.index();
        if index.is_empty() {
            return None;
        }
        let (binding, captures) = index.route(method, path)?;
        Some((binding.handle::<RouteHandle>()?.clone(), captures))
    }

    /// Hands a request to its route; its answer streams into a slot.
    pub(crate) fn start_route(
        &mut self,
        io: &mut Io<'_>,
        route: RouteHandle,
        captures: Captures,
        req: request::Request,
        close: bool,
    ) {
        self.shared.stats.routed.inc();
        let tag = self.tag();
        let window = Window::new(self.shared.config.route_window_bytes);
        self.slots.push_back(Slot::Route(RouteSlot {
            tag,
            close,
            window: window.clone(),
            buf: Vec::new(),
            body_in_buf: 0,
            headed: false,
            chunked: false,
            opened: false,
            done: Done::Streaming,
        }));
        let request = RouteRequest {
            method: req.method,
            path: req.path,
            captures,
            query: req.query,
            headers: req.headers,
            body: req.body,
            peer: self.peer.clone(),
        };
        route.handle(request, Responder::new(io.wake().clone(), tag, window));
    }

    /// A part of a route's answer arrived.
    pub(crate) fn route_part(&mut self, tag: u64, part: Part) {
        for slot in &mut self.slots {
            if let Slot::Route(r) = slot {
                if r.tag == tag {
                    return r.apply(part);
                }
            }
        }
    }

    /// The front slot is a route's: moves what it has to the output.
    /// Returns whether the slot is finished (and was removed).
    pub(crate) fn pump_route(&mut self, io: &mut Io<'_>) -> bool {
        let Some(Slot::Route(r)) = self.slots.front_mut() else {
            return false;
        };
        if !r.buf.is_empty() {
            if r.opened {
                io.out().extend_from_slice(&r.buf);
            } else {
                r.opened = true;
                let cors = self.origins.pop_front().flatten();
                crate::cors::with_headers(io.out(), &r.buf, cors.as_deref());
            }
            r.buf.clear();
            let moved = std::mem::take(&mut r.body_in_buf);
            match &mut self.route_owed {
                Some((w, n)) if Arc::ptr_eq(w, &r.window) => *n += moved,
                owed => *owed = Some((r.window.clone(), moved)),
            }
        }
        match r.done {
            Done::Streaming => false,
            Done::Ended => {
                self.slots.pop_front();
                true
            }
            Done::Cut => {
                // Nothing more can be answered on this connection.
                self.slots.clear();
                self.close_after = true;
                true
            }
        }
    }

    /// The output drained: the route's bytes reached the client.
    pub(crate) fn route_drained(&mut self) {
        if let Some((window, n)) = self.route_owed.take() {
            window.written(n);
        }
    }
}
