//! The REST messaging API: what each request does, and how outcomes become
//! responses. Part of the protocol core ([`crate::core`]).

use std::time::Duration;

use bindery::{Failure, FailureKind};
use bindery_classes::connection::Io;
use bindery_classes::driver::{Receipt, SubscribeOptions};
use bindery_classes::http::request::{self, Request};
use bindery_classes::http::response;
use bindery_classes::{Delivery, Message, MessageId};

use crate::core::{Core, Slot};

impl Core {
    /// An answer made now, queued in order.
    fn ready(&mut self, status: u16, headers: &[(&str, &str)], message: &str, close: bool) {
        let mut out = Vec::new();
        response::text(&mut out, status, headers, message, close);
        self.slots.push_back(Slot::Ready(out));
    }

    fn failed(&mut self, f: &Failure, close: bool) {
        self.slots
            .push_back(Slot::Ready(failure_response(f, close)));
    }

    /// One whole request.
    pub(crate) fn handle(&mut self, io: &mut Io<'_>, req: Request, raw: &[u8]) {
        let close = !req.keep_alive;
        if close {
            self.close_after = true;
        }
        if let Some(builtin) = crate::admin::route(&req.path) {
            if req.method != "GET" && req.method != "HEAD" {
                return self.ready(405, &[("Allow", "GET")], "this endpoint takes GET", close);
            }
            let mut out = Vec::new();
            crate::admin::answer(builtin, &self.shared, &mut out, close);
            return self.slots.push_back(Slot::Ready(out));
        }
        if let (Some(cors), Some((_, headers))) = (&self.shared.config.cors, &req.preflight) {
            if req.method == "OPTIONS" {
                let mut out = Vec::new();
                cors.preflight(&mut out, req.origin.as_deref(), headers.as_deref(), close);
                return self.slots.push_back(Slot::Ready(out));
            }
        }
        let mut req = req;
        if self.find_route(&req.method, &req.path).is_some() {
            // A route sees every header; parsing copies only a few.
            req.headers = request::headers(raw);
        }
        if let Some(req) = self.guard(io, req, close) {
            self.route(io, req, close);
        }
    }

    /// A request let through by the guard: a route's, or the messaging
    /// API's.
    pub(crate) fn route(&mut self, io: &mut Io<'_>, req: Request, close: bool) {
        if let Some((route, captures)) = self.find_route(&req.method, &req.path) {
            return self.start_route(io, route, captures, req, close);
        }
        let method = req.method.as_str();
        match method {
            "POST" | "PUT" => self.publish(io, req, close),
            "GET" => self.get(io, req, close),
            "DELETE" => self.delete(io, &req.path, close),
            _ => self.ready(
                405,
                &[("Allow", "GET, POST, DELETE")],
                &format!("method {method} is not supported"),
                close,
            ),
        }
    }

    fn publish(&mut self, io: &mut Io<'_>, req: Request, close: bool) {
        let content_type = req
            .content_type
            .as_deref()
            .unwrap_or("application/octet-stream");
        let message = Message::new(&req.path, content_type, req.body);
        let tag = self.tag();
        self.slots.push_back(Slot::Publish { tag, close });
        self.shared
            .dispatcher
            .publish(message, io.wake().completion::<Receipt>(tag));
    }

    fn get(&mut self, io: &mut Io<'_>, req: Request, close: bool) {
        let driver = match self.shared.dispatcher.driver(&req.path) {
            Ok(d) => d,
            Err(f) => return self.failed(&f, close),
        };
        let tag = self.tag();
        let config = &self.shared.config;
        let consumer = io.wake().consumer(tag).named(format!(
            "{}: http client {}",
            self.shared.instance, self.peer
        ));
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
            // A delivery made now arrives as a note before the deadline is
            // looked at: the connection expires only on a timer, and the
            // reactor runs queued notes before timers.
            Ok(sub) => self.slots.push_back(Slot::Poll {
                tag,
                until: io.now() + Duration::from_secs_f64(wait),
                driver,
                destination: req.path,
                sub: Some(sub),
                close,
            }),
            Err(f) => self.failed(&f, close),
        }
    }

    fn delete(&mut self, io: &mut Io<'_>, path: &str, close: bool) {
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
                driver.ack(queue, id, io.wake().completion::<()>(tag));
            }
            Err(f) => self.failed(&f, close),
        }
    }

    /// A publish's outcome: `201` with the id, or the failure's status.
    pub(crate) fn published(&mut self, tag: u64, outcome: Result<Receipt, Failure>) {
        let close = self.closes(tag);
        let out = match outcome {
            Ok(receipt) => {
                self.shared.stats.published.inc();
                // The id and a newline, no formatting: every publish's answer.
                let mut body = [b'\n'; 17];
                body[..16].copy_from_slice(&receipt.id.hex());
                let id = std::str::from_utf8(&body[..16]).unwrap_or_default();
                let mut out = Vec::with_capacity(160);
                response::write(
                    &mut out,
                    201,
                    &[("Message-Id", id)],
                    Some("text/plain; charset=utf-8"),
                    &body,
                    close,
                );
                out
            }
            Err(f) => failure_response(&f, close),
        };
        self.answer(tag, |_| Some(out));
    }

    /// An ack's outcome: `204`, or the failure's status.
    pub(crate) fn acked(&mut self, tag: u64, outcome: Result<(), Failure>) {
        let close = self.closes(tag);
        let out = match outcome {
            Ok(()) => {
                let mut out = Vec::new();
                response::write(&mut out, 204, &[], None, b"", close);
                out
            }
            Err(f) => failure_response(&f, close),
        };
        self.answer(tag, |_| Some(out));
    }

    /// A delivery: an event on a stream, or a long poll's answer (a late
    /// one goes back to its queue).
    pub(crate) fn delivered(&mut self, io: &mut Io<'_>, tag: u64, delivery: Delivery) {
        if self.streaming.is_some() && self.stream_revoked(io) {
            return;
        }
        if let Some(s) = &mut self.streaming {
            match delivery {
                Delivery::Message(m) => {
                    self.shared.stats.delivered.inc();
                    response::event(io.out(), &m.id.to_string(), "message", &m.body);
                    s.owed += 1;
                }
                Delivery::Closed(reason) => self.end_stream(io, &reason),
            }
            return;
        }
        let found = self.answer(tag, |slot| {
            let Slot::Poll { sub, close, .. } = slot else {
                return None;
            };
            drop(sub.take());
            let mut out = Vec::new();
            match &delivery {
                Delivery::Message(m) => {
                    let id = m.id.to_string();
                    let count = m.delivery_count.to_string();
                    let mut headers = vec![("Message-Id", id.as_str()), ("Delivery-Count", &count)];
                    headers.extend(
                        m.headers
                            .iter()
                            .filter(|(k, v)| response::safe_header(k, v))
                            .map(|(k, v)| (&**k, &**v)),
                    );
                    response::write(
                        &mut out,
                        200,
                        &headers,
                        Some(&m.content_type),
                        &m.body,
                        *close,
                    );
                }
                Delivery::Closed(reason) => response::text(&mut out, 503, &[], reason, *close),
            }
            Some(out)
        });
        match delivery {
            Delivery::Message(_) if found => {
                self.shared.stats.delivered.inc();
            }
            Delivery::Message(m) => {
                if let Some((_, driver, destination)) = self.ended.iter().find(|e| e.0 == tag) {
                    let _ = driver.release(destination, m.id);
                }
            }
            Delivery::Closed(_) => {}
        }
    }
}

/// The response for a failure: its kind decides the status.
pub(crate) fn failure_response(f: &Failure, close: bool) -> Vec<u8> {
    let status = match f.kind {
        FailureKind::NotFound => 404,
        FailureKind::Unsupported => 415,
        FailureKind::Rejected => 400,
        FailureKind::Full | FailureKind::Unavailable => 503,
        // A cap on queues made on first use: no Retry-After, waiting
        // does not lift it (the body names the cap).
        FailureKind::Capacity => 507,
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
