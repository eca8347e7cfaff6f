//! Publishing: `basic.publish` and its content frames, to the dispatcher;
//! confirms and `basic.return` from the driver's outcome; AMQP properties
//! to message headers and back. Part of the protocol core ([`crate::core`]).

use std::sync::atomic::Ordering;
use std::time::SystemTime;

use bindery::{Completion, Failure, FailureKind};
use bindery_classes::auth::Action;
use bindery_classes::connection::Io;
use bindery_classes::driver::Receipt;
use bindery_classes::{Message, MessageId};
use bytes::Bytes;

use crate::core::{Core, Refusal, code, hard, soft};
use crate::methods::Method;
use crate::wire::{self, Frame, Properties};

use crate::Kind;
use crate::channel::{Incoming, Pending, Published, queue_name};
use parking_lot::Mutex;
use std::sync::Arc;

/// Whether a routing key names a topic (no wildcard, no `/`, no empty word).
fn topic_key(key: &str) -> bool {
    !key.is_empty()
        && !key.contains('/')
        && key
            .split('.')
            .all(|w| !w.is_empty() && !w.contains('+') && !w.contains('#'))
}

impl Core {
    pub(crate) fn publish(
        &mut self,
        io: &mut Io<'_>,
        ch: u16,
        exchange: String,
        routing_key: String,
        mandatory: bool,
        immediate: bool,
    ) -> Result<(), Refusal> {
        if immediate {
            return Err(hard(
                code::NOT_IMPLEMENTED,
                "NOT_IMPLEMENTED - immediate=true",
            ));
        }
        let kind = if exchange.is_empty() {
            None
        } else {
            Some(self.shared.exchange(&exchange).ok_or_else(|| {
                soft(
                    code::NOT_FOUND,
                    format!("NOT_FOUND - no exchange {exchange:?} in vhost \"/\""),
                )
            })?)
        };
        let paths: Vec<String> = match kind {
            None => queue_name(&routing_key)
                .then(|| self.shared.queue_path(&routing_key))
                .into_iter()
                .collect(),
            Some(Kind::Topic) => topic_key(&routing_key)
                .then(|| {
                    format!(
                        "{}{}",
                        self.shared.config.topic_root,
                        routing_key.replace('.', "/")
                    )
                })
                .into_iter()
                .collect(),
            Some(k) => self
                .shared
                .routed(&exchange, k, &routing_key)
                .iter()
                .map(|q| self.shared.queue_path(q))
                .collect(),
        };
        for path in &paths {
            self.allow(io, Action::Publish, path)?;
        }
        let topic = kind == Some(Kind::Topic);
        let via = matches!(kind, Some(Kind::Direct | Kind::Fanout));
        self.channel(ch)?.incoming = Some(Incoming {
            exchange,
            routing_key,
            mandatory,
            paths,
            via,
            topic,
            header: None,
            body: Vec::new(),
        });
        Ok(())
    }

    /// A content header or body frame.
    pub(crate) fn content(&mut self, io: &mut Io<'_>, f: Frame<'_>) {
        let max = self.shared.config.max_message_bytes;
        let Some(c) = self.channels.get_mut(&f.channel) else {
            return self.fail(
                io,
                code::CHANNEL_ERROR,
                &format!(
                    "CHANNEL_ERROR - a content frame on channel {}, which is not open",
                    f.channel
                ),
                (60, 40),
            );
        };
        if c.closing {
            return;
        }
        let Some(inc) = c.incoming.as_mut() else {
            return self.fail(
                io,
                code::UNEXPECTED_FRAME,
                &format!(
                    "UNEXPECTED_FRAME - a content frame on channel {} without basic.publish",
                    f.channel
                ),
                (60, 40),
            );
        };
        match (f.kind, &inc.header) {
            (wire::HEADER, None) => match wire::header(f.payload) {
                Ok(h) if h.class != 60 => self.fail(
                    io,
                    code::FRAME_ERROR,
                    &format!(
                        "FRAME_ERROR - content header of class {}, not basic (60)",
                        h.class
                    ),
                    (60, 40),
                ),
                Ok(h) if h.body_size > max => {
                    let size = h.body_size;
                    self.channel_fail(io, f.channel, code::CONTENT_TOO_LARGE, &format!("CONTENT_TOO_LARGE - a body of {size} bytes is over max_message_bytes {max}"), (60, 40));
                }
                Ok(h) => {
                    inc.body.reserve(h.body_size as usize);
                    let done = h.body_size == 0;
                    inc.header = Some(h);
                    if done {
                        self.publish_complete(io, f.channel);
                    }
                }
                Err(e) => self.fail(
                    io,
                    code::SYNTAX_ERROR,
                    &format!("SYNTAX_ERROR - {e}"),
                    (60, 40),
                ),
            },
            (wire::BODY, Some(h)) => {
                let size = h.body_size;
                if inc.body.len() as u64 + f.payload.len() as u64 > size {
                    return self.fail(io, code::FRAME_ERROR, &format!("FRAME_ERROR - body frames on channel {} exceed the header's body size {size}", f.channel), (60, 40));
                }
                inc.body.extend_from_slice(f.payload);
                if inc.body.len() as u64 == size {
                    self.publish_complete(io, f.channel);
                }
            }
            _ => self.fail(
                io,
                code::UNEXPECTED_FRAME,
                &format!(
                    "UNEXPECTED_FRAME - frame type {} on channel {} out of order",
                    f.kind, f.channel
                ),
                (60, 40),
            ),
        }
    }

    /// A publish's content is whole: to the dispatcher.
    fn publish_complete(&mut self, io: &mut Io<'_>, ch: u16) {
        let Some(c) = self.channels.get_mut(&ch) else {
            return;
        };
        let Some(inc) = c.incoming.take() else { return };
        let header = inc.header.unwrap_or_default();
        let confirm = c.confirm.then(|| {
            c.published += 1;
            c.published
        });
        let body = Bytes::from(inc.body);
        let published = Published {
            channel: ch,
            confirm,
            mandatory: inc.mandatory,
            topic: inc.topic,
            exchange: inc.exchange,
            routing_key: inc.routing_key,
            header,
            body: body.clone(),
        };
        if inc.paths.is_empty() {
            let nowhere = Failure::new(FailureKind::NotFound, "no route");
            return self.published(io, published, Err(nowhere));
        }
        let mut headers = properties_to_headers(&published.header.properties);
        if inc.via {
            headers.push((
                format!("{PROPERTY}exchange").into(),
                published.exchange.as_str().into(),
            ));
            headers.push((
                format!("{PROPERTY}routing-key").into(),
                published.routing_key.as_str().into(),
            ));
        }
        let message = Message {
            id: MessageId::next(),
            destination: inc.paths[0].as_str().into(),
            content_type: published
                .header
                .properties
                .content_type
                .as_deref()
                .unwrap_or("application/octet-stream")
                .into(),
            headers: headers.into(),
            body,
            timestamp: SystemTime::now(),
            delivery_count: 0,
        };
        self.publishing.fetch_add(1, Ordering::Relaxed);
        let done = if confirm.is_some() || published.mandatory {
            let tag = self.tag(Pending::Publish(Box::new(published)));
            let wake = io.wake().clone();
            let publishing = self.publishing.clone();
            Completion::new(move |r: Result<Receipt, Failure>| {
                publishing.fetch_sub(1, Ordering::Relaxed);
                wake.note(bindery::Note::new(tag, r));
            })
        } else {
            let wake = io.wake().clone();
            let publishing = self.publishing.clone();
            Completion::new(move |r: Result<Receipt, Failure>| {
                let was = publishing.fetch_sub(1, Ordering::Relaxed);
                match r {
                    Err(f) if f.kind == FailureKind::Full => {
                        wake.note(bindery::Note::new(crate::core::FULL, f))
                    }
                    _ if was == crate::core::MAX_PUBLISHING + 1 => {
                        wake.note(bindery::Note::new(crate::core::RESUME, ()))
                    }
                    _ => {}
                }
            })
        };
        if inc.paths.len() == 1 {
            return self.shared.dispatcher.publish(message, done);
        }
        // One message per bound queue, confirmed once all are kept.
        let dones = fan_in(inc.paths.len(), done);
        for (path, done) in inc.paths.iter().zip(dones) {
            let copy = Message {
                id: MessageId::next(),
                destination: path.as_str().into(),
                ..message.clone()
            };
            self.shared.dispatcher.publish(copy, done);
        }
    }

    /// A publish's outcome: `basic.return` when mandatory and unrouted,
    /// then the confirm.
    pub(crate) fn published(
        &mut self,
        io: &mut Io<'_>,
        p: Published,
        outcome: Result<Receipt, Failure>,
    ) {
        if self.channels.get(&p.channel).is_none_or(|c| c.closing) {
            return;
        }
        let unrouted = match &outcome {
            Ok(r) => p.topic && r.delivered_to == 0,
            Err(f) => f.kind == FailureKind::NotFound,
        };
        if p.mandatory && unrouted {
            let m = Method::BasicReturn {
                code: code::NO_ROUTE,
                text: "NO_ROUTE".into(),
                exchange: p.exchange,
                routing_key: p.routing_key,
            };
            self.send_content(io, p.channel, &m, &p.header, &p.body);
        }
        if let Err(f) = &outcome {
            if f.kind == FailureKind::Full {
                self.slow_down(io, f);
            }
        }
        let Some(seq) = p.confirm else { return };
        let m = match outcome {
            Err(f) if f.kind != FailureKind::NotFound => {
                tracing::debug!(instance = %self.shared.instance, "publish {seq} refused: {f}");
                Method::BasicNack {
                    delivery_tag: seq,
                    multiple: false,
                    requeue: false,
                }
            }
            _ => Method::BasicAck {
                delivery_tag: seq,
                multiple: false,
            },
        };
        self.send(io, p.channel, &m);
    }
}

/// `n` completions that complete `done` once all have: with the first
/// failure, or the last receipt.
fn fan_in(n: usize, done: Completion<Receipt>) -> Vec<Completion<Receipt>> {
    /// Completions still to come, the first failure, the last receipt,
    /// and what to complete.
    type Joined = (
        usize,
        Option<Failure>,
        Option<Receipt>,
        Option<Completion<Receipt>>,
    );
    let joined: Arc<Mutex<Joined>> = Arc::new(Mutex::new((n, None, None, Some(done))));
    (0..n)
        .map(|_| {
            let joined = joined.clone();
            Completion::new(move |r: Result<Receipt, Failure>| {
                let mut j = joined.lock();
                j.0 -= 1;
                match r {
                    Err(f) if j.1.is_none() => j.1 = Some(f),
                    Err(_) => {}
                    Ok(receipt) => j.2 = Some(receipt),
                }
                if j.0 > 0 {
                    return;
                }
                let (failure, receipt, done) = (j.1.take(), j.2.take(), j.3.take());
                drop(j);
                match (done, failure, receipt) {
                    (Some(done), Some(f), _) => done.fail(f),
                    (Some(done), None, Some(r)) => done.succeed(r),
                    _ => {}
                }
            })
        })
        .collect()
}

/// The prefix of the headers that carry AMQP properties.
pub(crate) const PROPERTY: &str = "amqp-";

/// A message's headers from AMQP properties: each property as
/// `amqp-<name>`, then the `headers` table's values as text.
pub(crate) fn properties_to_headers(p: &Properties) -> Vec<bindery_classes::message::Header> {
    let mut h: Vec<bindery_classes::message::Header> = Vec::new();
    let mut put = |k: &str, v: Option<String>| {
        if let Some(v) = v {
            h.push((format!("{PROPERTY}{k}").into(), v.into()));
        }
    };
    put("content-encoding", p.content_encoding.clone());
    put("delivery-mode", p.delivery_mode.map(|v| v.to_string()));
    put("priority", p.priority.map(|v| v.to_string()));
    put("correlation-id", p.correlation_id.clone());
    put("reply-to", p.reply_to.clone());
    put("expiration", p.expiration.clone());
    put("message-id", p.message_id.clone());
    put("timestamp", p.timestamp.map(|v| v.to_string()));
    put("type", p.kind.clone());
    put("user-id", p.user_id.clone());
    put("app-id", p.app_id.clone());
    put("cluster-id", p.cluster_id.clone());
    for (k, v) in p.headers.iter().flatten() {
        if let Some(text) = v.text() {
            h.push((k.as_str().into(), text.into()));
        }
    }
    h
}

/// AMQP properties from a message: its content type, the `amqp-*`
/// headers, the others as the `headers` table; the message id when the
/// publisher gave none.
pub(crate) fn message_properties(m: &Message) -> Properties {
    let mut p = Properties {
        content_type: (!m.content_type.is_empty()).then(|| m.content_type.to_string()),
        ..Properties::default()
    };
    let mut table = Vec::new();
    for (k, v) in m.headers.iter() {
        let v = v.to_string();
        match k.strip_prefix(PROPERTY) {
            Some("content-encoding") => p.content_encoding = Some(v),
            Some("delivery-mode") => p.delivery_mode = v.parse().ok(),
            Some("priority") => p.priority = v.parse().ok(),
            Some("correlation-id") => p.correlation_id = Some(v),
            Some("reply-to") => p.reply_to = Some(v),
            Some("expiration") => p.expiration = Some(v),
            Some("message-id") => p.message_id = Some(v),
            Some("timestamp") => p.timestamp = v.parse().ok(),
            Some("type") => p.kind = Some(v),
            Some("user-id") => p.user_id = Some(v),
            Some("app-id") => p.app_id = Some(v),
            Some("cluster-id") => p.cluster_id = Some(v),
            Some("routing-key" | "exchange") => {}
            _ => table.push((k.to_string(), wire::Value::Str(Bytes::from(v)))),
        }
    }
    if p.message_id.is_none() {
        p.message_id = Some(m.id.to_string());
    }
    if !table.is_empty() {
        p.headers = Some(table);
    }
    p
}
