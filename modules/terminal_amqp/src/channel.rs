//! Channels: open and close, exchanges, queues, bindings, and publishing.
//! Part of the protocol core ([`crate::core`]); consuming is in
//! [`crate::consume`].

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::SystemTime;

use bindery::{Completion, Failure, FailureKind};
use bindery_classes::connection::Io;
use bindery_classes::driver::{DriverHandle, Receipt, SubscribeOptions};
use bindery_classes::{Message, MessageId, Subscription};
use bytes::Bytes;

use crate::Declared;
use crate::core::{Core, Refusal, code, hard, soft};
use crate::methods::Method;
use crate::wire::{self, ContentHeader, Frame, Properties};

/// A message taken from a queue and not yet settled.
pub(crate) struct Unacked {
    /// The consumer it went to (`None`: `basic.get`).
    pub(crate) consumer: Option<Arc<str>>,
    pub(crate) driver: DriverHandle,
    pub(crate) path: Arc<str>,
    pub(crate) id: MessageId,
}

/// A consumer on a channel.
pub(crate) struct Consuming {
    pub(crate) sub: Subscription,
    pub(crate) no_ack: bool,
    /// Credit earned (messages written, for `no_ack`) and not yet given.
    pub(crate) owed: u32,
}

/// A `basic.get` waiting for its message.
pub(crate) struct Getting {
    pub(crate) tag: u64,
    pub(crate) sub: Option<Subscription>,
    pub(crate) until: std::time::Instant,
    pub(crate) no_ack: bool,
}

/// A `basic.publish` whose content is arriving.
struct Incoming {
    exchange: String,
    routing_key: String,
    mandatory: bool,
    /// The destination; `None`: nothing can route this key.
    path: Option<String>,
    topic: bool,
    header: Option<ContentHeader>,
    body: Vec<u8>,
}

/// One channel's state.
#[derive(Default)]
pub(crate) struct Channel {
    /// The server sent `channel.close` and waits for `close-ok`.
    closing: bool,
    incoming: Option<Incoming>,
    confirm: bool,
    published: u64,
    pub(crate) prefetch: u16,
    pub(crate) next_delivery: u64,
    pub(crate) unacked: BTreeMap<u64, Unacked>,
    pub(crate) consumers: HashMap<Arc<str>, Consuming>,
    pub(crate) get: Option<Getting>,
    pub(crate) next_consumer: u32,
}

/// What a note tag stands for.
pub(crate) enum Pending {
    /// A publish's outcome, for a confirm or a `basic.return`.
    Publish(Box<Published>),
    /// Deliveries to a consumer.
    Consumer {
        channel: u16,
        tag: Arc<str>,
        driver: DriverHandle,
    },
    /// The delivery of a `basic.get`.
    Get { channel: u16, driver: DriverHandle },
    /// Topic messages for a queue (`queue.bind`).
    Bridge { queue: Arc<str> },
}

/// A publish waiting for its driver.
pub(crate) struct Published {
    channel: u16,
    confirm: Option<u64>,
    mandatory: bool,
    topic: bool,
    exchange: String,
    routing_key: String,
    header: ContentHeader,
    body: Bytes,
}

/// A topic subscription feeding a queue.
pub(crate) struct Binding {
    pub(crate) queue: String,
    pub(crate) exchange: String,
    pub(crate) key: String,
    _sub: Subscription,
}

/// The topic filter of an AMQP binding key (`a.*.#` → `a/+/#`); `None`
/// if it has `#` before its last word.
pub(crate) fn filter(key: &str) -> Option<String> {
    let words: Vec<&str> = key.split('.').collect();
    if words
        .iter()
        .enumerate()
        .any(|(i, w)| *w == "#" && i + 1 != words.len())
    {
        return None;
    }
    Some(
        words
            .iter()
            .map(|w| if *w == "*" { "+" } else { w })
            .collect::<Vec<_>>()
            .join("/"),
    )
}

/// Whether a routing key names a topic (no wildcard, no `/`, no empty word).
fn topic_key(key: &str) -> bool {
    !key.is_empty()
        && !key.contains('/')
        && key
            .split('.')
            .all(|w| !w.is_empty() && !w.contains('+') && !w.contains('#'))
}

/// Whether `name` can be a queue: a path segment of its own.
fn queue_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 255 && !name.contains('/') && name != "." && name != ".."
}

impl Core {
    /// A channel exception: `channel.close`, the channel's resources
    /// released; frames other than close and close-ok are ignored until
    /// the client's `close-ok`.
    pub(crate) fn channel_fail(
        &mut self,
        io: &mut Io<'_>,
        ch: u16,
        code: u16,
        text: &str,
        on: (u16, u16),
    ) {
        self.shared.stats.channel_errors.inc();
        tracing::debug!(instance = %self.shared.instance, peer = %self.peer, channel = ch, code, "closing the channel: {text}");
        self.send(
            io,
            ch,
            &Method::ChannelClose {
                code,
                text: text.to_owned(),
                class: on.0,
                method: on.1,
            },
        );
        self.teardown(ch);
        self.channels.insert(
            ch,
            Channel {
                closing: true,
                ..Channel::default()
            },
        );
    }

    /// Releases what a channel holds: consumers cancelled, unacked
    /// messages back to their queues.
    pub(crate) fn teardown(&mut self, ch: u16) {
        let Some(mut c) = self.channels.remove(&ch) else {
            return;
        };
        // Cancel first, so the released messages do not come back here.
        c.consumers.clear();
        c.get = None;
        for (_, u) in std::mem::take(&mut c.unacked) {
            self.shared.mark_requeued(u.id);
            let _ = u.driver.release(&u.path, u.id);
        }
    }

    pub(crate) fn channel(&mut self, ch: u16) -> Result<&mut Channel, Refusal> {
        self.channels.get_mut(&ch).ok_or_else(|| {
            hard(
                code::CHANNEL_ERROR,
                format!("CHANNEL_ERROR - channel {ch} is not open"),
            )
        })
    }

    /// A method on channel `ch`.
    pub(crate) fn channel_method(
        &mut self,
        io: &mut Io<'_>,
        ch: u16,
        m: Method,
    ) -> Result<(), Refusal> {
        match self.channels.get(&ch) {
            None => {
                return match m {
                    Method::ChannelOpen => {
                        self.channels.insert(ch, Channel::default());
                        self.send(io, ch, &Method::ChannelOpenOk);
                        Ok(())
                    }
                    // A close-ok for a channel torn down already.
                    Method::ChannelCloseOk => Ok(()),
                    m => Err(hard(
                        code::CHANNEL_ERROR,
                        format!(
                            "CHANNEL_ERROR - {} on channel {ch}, which is not open",
                            m.name()
                        ),
                    )),
                };
            }
            Some(c) if c.closing => {
                match m {
                    Method::ChannelCloseOk => {
                        self.channels.remove(&ch);
                    }
                    Method::ChannelClose { .. } => {
                        self.send(io, ch, &Method::ChannelCloseOk);
                        self.channels.remove(&ch);
                    }
                    _ => {}
                }
                return Ok(());
            }
            Some(c) if c.incoming.is_some() => {
                return Err(hard(
                    code::UNEXPECTED_FRAME,
                    format!(
                        "UNEXPECTED_FRAME - {} on channel {ch} while content was expected",
                        m.name()
                    ),
                ));
            }
            Some(_) => {}
        }
        match m {
            Method::ChannelOpen => Err(hard(
                code::CHANNEL_ERROR,
                format!("CHANNEL_ERROR - channel {ch} is open already"),
            )),
            Method::ChannelClose { .. } => {
                self.teardown(ch);
                self.send(io, ch, &Method::ChannelCloseOk);
                Ok(())
            }
            Method::ChannelCloseOk => Ok(()),
            Method::ChannelFlow { active } => {
                self.send(io, ch, &Method::ChannelFlowOk { active });
                Ok(())
            }
            Method::ExchangeDeclare {
                exchange,
                kind,
                passive,
                no_wait,
                ..
            } => self.exchange_declare(io, ch, exchange, kind, passive, no_wait),
            Method::ExchangeDelete {
                exchange, no_wait, ..
            } => {
                if exchange.starts_with("amq.") || exchange.is_empty() {
                    return Err(soft(
                        code::ACCESS_REFUSED,
                        format!("ACCESS_REFUSED - exchange {exchange:?} cannot be deleted"),
                    ));
                }
                self.shared.exchanges.lock().remove(&exchange);
                if !no_wait {
                    self.send(io, ch, &Method::ExchangeDeleteOk);
                }
                Ok(())
            }
            Method::QueueDeclare {
                queue,
                passive,
                exclusive,
                no_wait,
                ..
            } => self.queue_declare(io, ch, queue, passive, exclusive, no_wait),
            Method::QueueBind {
                queue,
                exchange,
                routing_key,
                no_wait,
                ..
            } => {
                self.queue_bind(io, ch, queue, exchange, routing_key)?;
                if !no_wait {
                    self.send(io, ch, &Method::QueueBindOk);
                }
                Ok(())
            }
            Method::QueueUnbind {
                queue,
                exchange,
                routing_key,
                ..
            } => {
                self.bindings.retain(|b| {
                    !(b.queue == queue && b.exchange == exchange && b.key == routing_key)
                });
                self.send(io, ch, &Method::QueueUnbindOk);
                Ok(())
            }
            Method::QueuePurge { queue, .. } => Err(soft(
                code::NOT_IMPLEMENTED,
                format!(
                    "NOT_IMPLEMENTED - queue.purge of {queue:?}: the queue driver has no purge"
                ),
            )),
            Method::QueueDelete { queue, no_wait, .. } => {
                let (driver, path) = self.queue(&queue, false)?;
                let depth = stats(&driver, &path).0;
                self.shared.queues.lock().remove(&queue);
                self.bindings.retain(|b| b.queue != queue);
                if !no_wait {
                    self.send(
                        io,
                        ch,
                        &Method::QueueDeleteOk {
                            message_count: depth,
                        },
                    );
                }
                Ok(())
            }
            Method::BasicPublish {
                exchange,
                routing_key,
                mandatory,
                immediate,
            } => self.publish(ch, exchange, routing_key, mandatory, immediate),
            Method::ConfirmSelect { no_wait } => {
                self.channel(ch)?.confirm = true;
                if !no_wait {
                    self.send(io, ch, &Method::ConfirmSelectOk);
                }
                Ok(())
            }
            m @ (Method::BasicQos { .. }
            | Method::BasicConsume { .. }
            | Method::BasicCancel { .. }
            | Method::BasicGet { .. }
            | Method::BasicAck { .. }
            | Method::BasicNack { .. }
            | Method::BasicReject { .. }
            | Method::BasicRecover { .. }
            | Method::BasicRecoverAsync { .. }) => self.consume_method(io, ch, m),
            Method::Other { class: 90, .. } => Err(hard(
                code::NOT_IMPLEMENTED,
                "NOT_IMPLEMENTED - transactions (tx) are not supported; use publisher confirms",
            )),
            m @ Method::Other { .. } => Err(hard(
                code::NOT_IMPLEMENTED,
                format!("NOT_IMPLEMENTED - {} is not supported", m.name()),
            )),
            m => Err(hard(
                code::COMMAND_INVALID,
                format!("COMMAND_INVALID - a client may not send {}", m.name()),
            )),
        }
    }

    fn exchange_declare(
        &mut self,
        io: &mut Io<'_>,
        ch: u16,
        exchange: String,
        kind: String,
        passive: bool,
        no_wait: bool,
    ) -> Result<(), Refusal> {
        let exists = self.shared.is_topic_exchange(&exchange);
        if passive {
            if !exists {
                return Err(soft(
                    code::NOT_FOUND,
                    format!("NOT_FOUND - no exchange {exchange:?} in vhost \"/\""),
                ));
            }
        } else if kind != "topic" {
            return Err(hard(
                code::NOT_IMPLEMENTED,
                format!(
                    "NOT_IMPLEMENTED - exchange {exchange:?}: type {kind:?} is not supported (topic only)"
                ),
            ));
        } else if exchange.starts_with("amq.") && !exists {
            return Err(soft(
                code::ACCESS_REFUSED,
                format!("ACCESS_REFUSED - exchange name {exchange:?} is reserved"),
            ));
        } else if exchange.is_empty() {
            return Err(soft(
                code::ACCESS_REFUSED,
                "ACCESS_REFUSED - the default exchange cannot be declared",
            ));
        } else {
            self.shared.exchanges.lock().insert(exchange);
        }
        if !no_wait {
            self.send(io, ch, &Method::ExchangeDeclareOk);
        }
        Ok(())
    }

    /// The driver and path of queue `name`, checked for exclusivity.
    pub(crate) fn queue(
        &self,
        name: &str,
        declaring: bool,
    ) -> Result<(DriverHandle, Arc<str>), Refusal> {
        if !queue_name(name) {
            return Err(soft(
                code::PRECONDITION_FAILED,
                format!("PRECONDITION_FAILED - {name:?} is not a queue name (empty, or with '/')"),
            ));
        }
        if let Some(d) = self.shared.queues.lock().get(name) {
            if d.owner.is_some_and(|o| o != self.id) {
                return Err(soft(
                    code::RESOURCE_LOCKED,
                    format!(
                        "RESOURCE_LOCKED - cannot obtain exclusive access to locked queue {name:?} in vhost \"/\""
                    ),
                ));
            }
        }
        let path: Arc<str> = self.shared.queue_path(name).into();
        let driver = self.shared.dispatcher.driver(&path).map_err(|f| {
            soft(
                code::NOT_FOUND,
                format!("NOT_FOUND - no queue {name:?} in vhost \"/\" ({f})"),
            )
        })?;
        if declaring && !driver.info().queue {
            return Err(soft(
                code::PRECONDITION_FAILED,
                format!("PRECONDITION_FAILED - {path} is served by a driver that is not a queue"),
            ));
        }
        Ok((driver, path))
    }

    fn queue_declare(
        &mut self,
        io: &mut Io<'_>,
        ch: u16,
        mut queue: String,
        passive: bool,
        exclusive: bool,
        no_wait: bool,
    ) -> Result<(), Refusal> {
        if queue.is_empty() && !passive {
            queue = format!("amq.gen-{}-{}", self.id, MessageId::next());
        } else if queue.starts_with("amq.")
            && !passive
            && !self.shared.queues.lock().contains_key(&queue)
        {
            return Err(soft(
                code::ACCESS_REFUSED,
                format!("ACCESS_REFUSED - queue name {queue:?} contains reserved prefix amq.*"),
            ));
        }
        let (driver, path) = self.queue(&queue, true)?;
        let (messages, consumers) = stats(&driver, &path);
        if passive {
            let known = self.shared.queues.lock().contains_key(&queue);
            let seen = driver.stats().iter().any(|s| *s.destination == *path);
            if !known && !seen {
                return Err(soft(
                    code::NOT_FOUND,
                    format!("NOT_FOUND - no queue {queue:?} in vhost \"/\""),
                ));
            }
        } else {
            let mut queues = self.shared.queues.lock();
            let d = queues
                .entry(queue.clone())
                .or_insert(Declared { owner: None });
            if exclusive {
                d.owner = Some(self.id);
            }
        }
        if !no_wait {
            self.send(
                io,
                ch,
                &Method::QueueDeclareOk {
                    queue,
                    message_count: messages,
                    consumer_count: consumers,
                },
            );
        }
        Ok(())
    }

    fn queue_bind(
        &mut self,
        io: &mut Io<'_>,
        _ch: u16,
        queue: String,
        exchange: String,
        key: String,
    ) -> Result<(), Refusal> {
        if exchange.is_empty() {
            return Err(soft(
                code::ACCESS_REFUSED,
                format!(
                    "ACCESS_REFUSED - queue {queue:?}: operation not permitted on the default exchange"
                ),
            ));
        }
        if !self.shared.is_topic_exchange(&exchange) {
            return Err(soft(
                code::NOT_FOUND,
                format!(
                    "NOT_FOUND - no exchange {exchange:?} in vhost \"/\" (topic exchanges only)"
                ),
            ));
        }
        let (_, path) = self.queue(&queue, true)?;
        let Some(filter) = filter(&key) else {
            return Err(soft(
                code::NOT_IMPLEMENTED,
                format!(
                    "NOT_IMPLEMENTED - binding key {key:?}: '#' is supported as the last word only"
                ),
            ));
        };
        if self
            .bindings
            .iter()
            .any(|b| b.queue == queue && b.exchange == exchange && b.key == key)
        {
            return Ok(());
        }
        let topic = format!("{}{filter}", self.shared.config.topic_root);
        let driver = self.shared.dispatcher.driver(&topic).map_err(|f| {
            soft(
                code::NOT_FOUND,
                format!("NOT_FOUND - binding key {key:?}: {f}"),
            )
        })?;
        let tag = self.tag(Pending::Bridge { queue: path });
        let consumer = io.wake().consumer(tag).named(format!(
            "{}: amqp binding of queue {queue:?} to {exchange:?} {key:?}",
            self.shared.instance
        ));
        let options = SubscribeOptions {
            credit: self.shared.config.max_unacked.max(1),
            ..Default::default()
        };
        let sub = driver.subscribe(&topic, consumer, options).map_err(|f| {
            soft(
                code::PRECONDITION_FAILED,
                format!("PRECONDITION_FAILED - binding key {key:?}: {f}"),
            )
        })?;
        // The bridge credits as it forwards: see `Core::noted`.
        self.bindings.push(Binding {
            queue,
            exchange,
            key,
            _sub: sub,
        });
        Ok(())
    }

    /// The credit of binding `queue`'s subscriptions after forwarding.
    pub(crate) fn bridge_credit(&self, queue_path: &str) {
        let root = &self.shared.config.queue_root;
        if let Some(name) = queue_path.strip_prefix(root.as_str()) {
            for b in self.bindings.iter().filter(|b| b.queue == name) {
                b._sub.credit(1);
            }
        }
    }

    fn publish(
        &mut self,
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
        let (path, topic) = if exchange.is_empty() {
            (
                queue_name(&routing_key).then(|| self.shared.queue_path(&routing_key)),
                false,
            )
        } else if self.shared.is_topic_exchange(&exchange) {
            let path = topic_key(&routing_key).then(|| {
                format!(
                    "{}{}",
                    self.shared.config.topic_root,
                    routing_key.replace('.', "/")
                )
            });
            (path, true)
        } else {
            return Err(soft(
                code::NOT_FOUND,
                format!("NOT_FOUND - no exchange {exchange:?} in vhost \"/\""),
            ));
        };
        self.channel(ch)?.incoming = Some(Incoming {
            exchange,
            routing_key,
            mandatory,
            path,
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
        let Some(path) = inc.path else {
            let nowhere = Failure::new(FailureKind::NotFound, "no route");
            return self.published(io, published, Err(nowhere));
        };
        let message = Message {
            id: MessageId::next(),
            destination: path.into(),
            content_type: published
                .header
                .properties
                .content_type
                .as_deref()
                .unwrap_or("application/octet-stream")
                .into(),
            headers: properties_to_headers(&published.header.properties).into(),
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
            Completion::new(move |_: Result<Receipt, Failure>| {
                if publishing.fetch_sub(1, Ordering::Relaxed) == crate::core::MAX_PUBLISHING + 1 {
                    wake.note(bindery::Note::new(crate::core::RESUME, ()));
                }
            })
        };
        self.shared.dispatcher.publish(message, done);
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

/// A queue's depth and consumers from its driver's stats.
fn stats(driver: &DriverHandle, path: &str) -> (u32, u32) {
    driver
        .stats()
        .iter()
        .find(|s| *s.destination == *path)
        .map_or((0, 0), |s| {
            (
                s.depth.min(u32::MAX as u64) as u32,
                s.consumers.min(u32::MAX as u64) as u32,
            )
        })
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
            Some("routing-key") => {}
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
