//! Consuming: `basic.qos`, `consume`, `cancel`, `get`, the
//! acknowledgements, and what comes back through the connection's wake
//! (deliveries, publish outcomes, topic messages for bound queues). Part of
//! the protocol core ([`crate::core`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bindery::{Completion, Failure, Note};
use bindery_classes::auth::Action;
use bindery_classes::connection::Io;
use bindery_classes::driver::{DriverHandle, Receipt, SubscribeOptions};
use bindery_classes::{Delivery, Message, MessageId};

use crate::channel::{Consuming, Getting, Pending, Unacked};
use crate::core::{Core, Refusal, code, hard, soft};
use crate::methods::Method;
use crate::publish::{PROPERTY, message_properties};
use crate::wire::ContentHeader;

/// Unsent output past which consumers without acknowledgements get no
/// more credit until it drains.
const MAX_OUTPUT: usize = 1 << 20;
/// How long a `basic.get` waits for a delivery the driver is making.
const GET_GRACE: Duration = Duration::from_millis(20);
/// `basic.get`s that answered `get-empty` whose tags are kept, so that a
/// delivery made just after goes back to its queue.
const RETIRED_GETS: usize = 64;

/// How a settled message ends.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Settle {
    Ack,
    Requeue,
    Discard,
}

impl Core {
    /// A basic method about consuming.
    pub(crate) fn consume_method(
        &mut self,
        io: &mut Io<'_>,
        ch: u16,
        m: Method,
    ) -> Result<(), Refusal> {
        match m {
            Method::BasicQos {
                prefetch_size,
                prefetch_count,
                ..
            } => {
                if prefetch_size != 0 {
                    return Err(hard(
                        code::NOT_IMPLEMENTED,
                        format!(
                            "NOT_IMPLEMENTED - basic.qos field prefetch_size {prefetch_size}: only 0 is supported"
                        ),
                    ));
                }
                self.channel(ch)?.prefetch = prefetch_count;
                self.send(io, ch, &Method::BasicQosOk);
            }
            Method::BasicConsume {
                queue,
                consumer_tag,
                no_ack,
                no_wait,
                ..
            } => {
                let (driver, path) = self.queue(&queue, true)?;
                self.require_known(&queue, &driver, &path)?;
                self.allow_queue(io, Action::Consume, &queue, &path)?;
                let id = self.id;
                let c = self.channel(ch)?;
                let tag: Arc<str> = if consumer_tag.is_empty() {
                    c.next_consumer += 1;
                    format!("amq.ctag-{id}-{ch}-{}", c.next_consumer).into()
                } else {
                    consumer_tag.into()
                };
                if c.consumers.contains_key(&tag) {
                    return Err(hard(
                        code::NOT_ALLOWED,
                        format!("NOT_ALLOWED - attempt to reuse consumer tag {tag:?}"),
                    ));
                }
                let credit = match c.prefetch {
                    0 => self.shared.config.max_unacked,
                    n => u32::from(n),
                };
                let note = self.tag(Pending::Consumer {
                    channel: ch,
                    tag: tag.clone(),
                    driver: driver.clone(),
                });
                let consumer = io.wake().consumer(note).named(format!(
                    "{}: amqp consumer {tag:?} of {}",
                    self.shared.instance, self.peer
                ));
                let options = SubscribeOptions {
                    credit: credit.max(1),
                    lease: Duration::from_secs(self.shared.config.lease_secs.max(1)),
                };
                // consume-ok goes out before any delivery: deliveries come
                // back as notes, after this method.
                if !no_wait {
                    self.send(
                        io,
                        ch,
                        &Method::BasicConsumeOk {
                            consumer_tag: tag.to_string(),
                        },
                    );
                }
                let sub = driver.subscribe(&path, consumer, options).map_err(|f| {
                    soft(
                        code::PRECONDITION_FAILED,
                        format!("PRECONDITION_FAILED - consume from queue {queue:?}: {f}"),
                    )
                })?;
                self.channel(ch)?.consumers.insert(
                    tag,
                    Consuming {
                        path,
                        sub,
                        no_ack,
                        owed: 0,
                    },
                );
            }
            Method::BasicCancel {
                consumer_tag,
                no_wait,
            } => {
                let gone = self.channel(ch)?.consumers.remove(consumer_tag.as_str());
                let path = gone.as_ref().map(|c| c.path.clone());
                drop(gone);
                self.auto_delete(path.into_iter().collect());
                // A delivery already on its way finds no tag and goes back
                // to its queue (see `noted`).
                self.pending.retain(|_, p| {
                    !matches!(p, Pending::Consumer { channel, tag, .. }
                        if *channel == ch && **tag == *consumer_tag)
                });
                if !no_wait {
                    self.send(io, ch, &Method::BasicCancelOk { consumer_tag });
                }
            }
            Method::BasicGet { queue, no_ack } => {
                let (driver, path) = self.queue(&queue, true)?;
                self.require_known(&queue, &driver, &path)?;
                self.allow_queue(io, Action::Consume, &queue, &path)?;
                let tag = self.tag(Pending::Get {
                    channel: ch,
                    driver: driver.clone(),
                });
                let consumer = io.wake().consumer(tag).named(format!(
                    "{}: amqp basic.get of {}",
                    self.shared.instance, self.peer
                ));
                let options = SubscribeOptions {
                    credit: 1,
                    lease: Duration::from_secs(self.shared.config.lease_secs.max(1)),
                };
                let sub = driver.subscribe(&path, consumer, options).map_err(|f| {
                    soft(
                        code::PRECONDITION_FAILED,
                        format!("PRECONDITION_FAILED - basic.get from queue {queue:?}: {f}"),
                    )
                })?;
                let until = io.now() + GET_GRACE;
                self.channel(ch)?.get = Some(Getting {
                    tag,
                    sub: Some(sub),
                    until,
                    no_ack,
                });
            }
            Method::BasicAck {
                delivery_tag,
                multiple,
            } => self.settle(ch, delivery_tag, multiple, Settle::Ack)?,
            Method::BasicNack {
                delivery_tag,
                multiple,
                requeue,
            } => self.settle(
                ch,
                delivery_tag,
                multiple,
                if requeue {
                    Settle::Requeue
                } else {
                    Settle::Discard
                },
            )?,
            Method::BasicReject {
                delivery_tag,
                requeue,
            } => self.settle(
                ch,
                delivery_tag,
                false,
                if requeue {
                    Settle::Requeue
                } else {
                    Settle::Discard
                },
            )?,
            Method::BasicRecover { .. } | Method::BasicRecoverAsync { .. } => {
                self.settle(ch, 0, true, Settle::Requeue)?;
                if matches!(m, Method::BasicRecover { .. }) {
                    self.send(io, ch, &Method::BasicRecoverOk);
                }
            }
            m => {
                return Err(hard(
                    code::COMMAND_INVALID,
                    format!("COMMAND_INVALID - {}", m.name()),
                ));
            }
        }
        Ok(())
    }

    /// Settles delivery `tag` (and those before it, with `multiple`; all
    /// with tag 0 and `multiple`), crediting their consumers.
    fn settle(&mut self, ch: u16, tag: u64, multiple: bool, how: Settle) -> Result<(), Refusal> {
        let c = self.channel(ch)?;
        let settled: Vec<Unacked> = if multiple {
            let keys: Vec<u64> = c
                .unacked
                .range(..=if tag == 0 { u64::MAX } else { tag })
                .map(|(k, _)| *k)
                .collect();
            keys.iter().filter_map(|k| c.unacked.remove(k)).collect()
        } else {
            match c.unacked.remove(&tag) {
                Some(u) => vec![u],
                None => Vec::new(),
            }
        };
        if settled.is_empty() && (tag != 0 || !multiple) {
            return Err(soft(
                code::PRECONDITION_FAILED,
                format!("PRECONDITION_FAILED - unknown delivery tag {tag}"),
            ));
        }
        let mut credit: Vec<Arc<str>> = Vec::new();
        // Each requeued message goes back to the front of its queue. With
        // no consumer of that queue here they wait: last first keeps their
        // order. With one (that may have credit) each is delivered at once:
        // first first.
        let consumed = |u: &Unacked| c.consumers.values().any(|k| k.path == u.path);
        let settled: Vec<Unacked> =
            if how == Settle::Requeue && !settled.first().is_some_and(consumed) {
                settled.into_iter().rev().collect()
            } else {
                settled
            };
        for u in settled {
            match how {
                Settle::Requeue => {
                    u.give_back(&self.shared);
                }
                Settle::Ack | Settle::Discard => {
                    u.driver.ack(&u.path, u.id, Completion::new(|_| {}))
                }
            }
            credit.extend(u.consumer);
        }
        // Credit after the release, so a requeued message goes first.
        if let Some(c) = self.channels.get(&ch) {
            for t in credit {
                if let Some(consumer) = c.consumers.get(&t) {
                    consumer.sub.credit(1);
                }
            }
        }
        Ok(())
    }

    /// Credit earned by consumers without acknowledgements, given while
    /// the output has room.
    pub(crate) fn credit_owed(&mut self, io: &mut Io<'_>) {
        if io.unsent() >= MAX_OUTPUT {
            return;
        }
        for c in self.channels.values_mut() {
            for consumer in c.consumers.values_mut().filter(|c| c.owed > 0) {
                consumer.sub.credit(std::mem::take(&mut consumer.owed));
            }
        }
    }

    /// The earliest `basic.get` deadline.
    pub(crate) fn get_deadline(&self) -> Option<Instant> {
        self.channels
            .values()
            .filter_map(|c| c.get.as_ref().map(|g| g.until))
            .min()
    }

    /// `basic.get`s whose grace ran out: `get-empty`.
    pub(crate) fn expire_gets(&mut self, io: &mut Io<'_>) {
        let now = io.now();
        let due: Vec<u16> = self
            .channels
            .iter()
            .filter(|(_, c)| c.get.as_ref().is_some_and(|g| g.until <= now))
            .map(|(ch, _)| *ch)
            .collect();
        for ch in due {
            if let Some(g) = self.channels.get_mut(&ch).and_then(|c| c.get.take()) {
                drop(g.sub);
                self.retired_gets.push_back(g.tag);
                if self.retired_gets.len() > RETIRED_GETS {
                    if let Some(old) = self.retired_gets.pop_front() {
                        self.pending.remove(&old);
                    }
                }
                self.send(io, ch, &Method::BasicGetEmpty);
            }
        }
    }

    /// A note: a publish's outcome, a delivery, a topic message for a
    /// bound queue.
    pub(crate) fn noted(&mut self, io: &mut Io<'_>, note: Note) {
        let tag = note.tag;
        match self.pending.get(&tag) {
            Some(Pending::Publish(_)) => {
                let Some(Pending::Publish(p)) = self.pending.remove(&tag) else {
                    return;
                };
                if let Ok(outcome) = note.take::<Result<Receipt, Failure>>() {
                    self.published(io, *p, outcome);
                }
            }
            Some(Pending::Consumer {
                channel,
                tag: ctag,
                driver,
            }) => {
                let (ch, ctag, driver) = (*channel, ctag.clone(), driver.clone());
                match note.take::<Delivery>() {
                    Ok(Delivery::Message(m)) => self.deliver(io, ch, Some(ctag), driver, m, false),
                    Ok(Delivery::Closed(why)) => {
                        self.pending.remove(&tag);
                        let had = self
                            .channels
                            .get_mut(&ch)
                            .and_then(|c| c.consumers.remove(&ctag));
                        if let Some(gone) = had {
                            drop(gone);
                            tracing::info!(instance = %self.shared.instance, consumer = %ctag, "consumer cancelled by the driver: {why}");
                            self.send(
                                io,
                                ch,
                                &Method::BasicCancel {
                                    consumer_tag: ctag.to_string(),
                                    no_wait: true,
                                },
                            );
                        }
                    }
                    Err(_) => {}
                }
            }
            Some(Pending::Get { channel, driver }) => {
                let (ch, driver) = (*channel, driver.clone());
                self.pending.remove(&tag);
                let get = self
                    .channels
                    .get_mut(&ch)
                    .and_then(|c| c.get.take_if(|g| g.tag == tag));
                match (note.take::<Delivery>(), get) {
                    (Ok(Delivery::Message(m)), Some(g)) => {
                        drop(g.sub);
                        self.deliver(io, ch, None, driver, m, g.no_ack);
                    }
                    (Ok(Delivery::Message(m)), None) => {
                        let _ = driver.release(&m.destination, m.id);
                    }
                    (_, Some(_)) => self.send(io, ch, &Method::BasicGetEmpty),
                    _ => {}
                }
            }
            Some(Pending::Manage { .. }) => self.managed(io, note),
            Some(Pending::Bridge { queue }) => {
                let queue = queue.clone();
                if let Ok(Delivery::Message(m)) = note.take::<Delivery>() {
                    self.forward(&queue, m);
                    self.bridge_credit(&queue);
                }
            }
            None => {
                // A delivery for something gone: give it back.
                if let Ok(Delivery::Message(m)) = note.take::<Delivery>() {
                    if let Ok(d) = self.shared.dispatcher.driver(&m.destination) {
                        let _ = d.release(&m.destination, m.id);
                    }
                }
            }
        }
    }

    /// A topic message for a bound queue: published to the queue, with
    /// the exchange and routing key it came by.
    fn forward(&self, queue: &Arc<str>, m: Message) {
        let topic = m
            .destination
            .strip_prefix(self.shared.config.topic_root.as_str())
            .unwrap_or(&m.destination);
        let mut headers: Vec<_> = m
            .headers
            .iter()
            .filter(|(k, _)| !k.starts_with("amqp-exchange") && !k.starts_with("amqp-routing-key"))
            .cloned()
            .collect();
        headers.push((format!("{PROPERTY}exchange").into(), "amq.topic".into()));
        headers.push((
            format!("{PROPERTY}routing-key").into(),
            topic.replace('/', ".").into(),
        ));
        let message = Message {
            id: MessageId::next(),
            destination: queue.clone(),
            headers: headers.into(),
            delivery_count: 0,
            ..m
        };
        self.shared
            .dispatcher
            .publish(message, Completion::new(|_| {}));
    }

    /// The exchange and routing key a message is delivered with.
    fn origin(&self, m: &Message) -> (String, String) {
        let header = |name: &str| {
            m.headers
                .iter()
                .find(|(k, _)| k.strip_prefix(PROPERTY) == Some(name))
                .map(|(_, v)| v.to_string())
        };
        if let (Some(e), Some(k)) = (header("exchange"), header("routing-key")) {
            return (e, k);
        }
        let c = &self.shared.config;
        if let Some(q) = m.destination.strip_prefix(c.queue_root.as_str()) {
            (String::new(), q.to_owned())
        } else if let Some(t) = m.destination.strip_prefix(c.topic_root.as_str()) {
            ("amq.topic".into(), t.replace('/', "."))
        } else {
            (String::new(), m.destination.to_string())
        }
    }

    /// Sends a message to a consumer (`ctag`) or as a `get-ok`.
    fn deliver(
        &mut self,
        io: &mut Io<'_>,
        ch: u16,
        ctag: Option<Arc<str>>,
        driver: DriverHandle,
        m: Message,
        get_no_ack: bool,
    ) {
        let live = self.channels.get(&ch).filter(|c| match &ctag {
            Some(t) => c.consumers.contains_key(t),
            None => true,
        });
        if live.is_none() {
            let _ = driver.release(&m.destination, m.id);
            return;
        }
        let redelivered = m.delivery_count > 1 || self.shared.was_requeued(m.id);
        let (exchange, routing_key) = self.origin(&m);
        let header = ContentHeader {
            class: 60,
            body_size: m.body.len() as u64,
            properties: message_properties(&m),
        };
        let Some(c) = self.channels.get_mut(&ch) else {
            return;
        };
        let no_ack = match &ctag {
            Some(t) => c.consumers.get(t).is_some_and(|c| c.no_ack),
            None => get_no_ack,
        };
        let path: Arc<str> = m.destination.clone();
        let delivery_tag = if no_ack {
            if let Some(consumer) = ctag.as_ref().and_then(|t| c.consumers.get_mut(t)) {
                consumer.owed += 1;
            }
            driver.ack(&path, m.id, Completion::new(|_| {}));
            c.next_delivery += 1;
            c.next_delivery
        } else {
            c.next_delivery += 1;
            c.unacked.insert(
                c.next_delivery,
                Unacked {
                    consumer: ctag.clone(),
                    driver,
                    path,
                    id: m.id,
                },
            );
            c.next_delivery
        };
        let method = match ctag {
            Some(t) => Method::BasicDeliver {
                consumer_tag: t.to_string(),
                delivery_tag,
                redelivered,
                exchange,
                routing_key,
            },
            None => Method::BasicGetOk {
                delivery_tag,
                redelivered,
                exchange,
                routing_key,
                message_count: 0,
            },
        };
        self.send_content(io, ch, &method, &header, &m.body);
    }
}
