//! Exchanges, queues and bindings: `exchange.declare`/`delete`,
//! `queue.declare` (passive, server-named, exclusive), `queue.bind` of a
//! queue to a topic exchange (a topic subscription feeding the queue).
//! Part of the protocol core ([`crate::core`]).

use std::sync::Arc;

use bindery_classes::MessageId;
use bindery_classes::connection::Io;
use bindery_classes::driver::{DriverHandle, SubscribeOptions};

use crate::core::{Core, Refusal, code, hard, soft};
use crate::guard::held;
use crate::methods::Method;
use crate::{Declared, Kind};
use bindery_classes::auth::Action;

use crate::channel::{Binding, Pending, queue_name};

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

/// `queue.declare`'s flags.
pub(crate) struct Declare {
    pub(crate) passive: bool,
    pub(crate) exclusive: bool,
    pub(crate) auto_delete: bool,
    pub(crate) no_wait: bool,
}

/// A queue's depth and consumers from its driver's stats.
pub(crate) fn stats(driver: &DriverHandle, path: &str) -> (u32, u32) {
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

impl Core {
    pub(crate) fn exchange_declare(
        &mut self,
        io: &mut Io<'_>,
        ch: u16,
        exchange: String,
        kind: String,
        passive: bool,
        no_wait: bool,
    ) -> Result<(), Refusal> {
        let exists = self.shared.exchange(&exchange);
        if passive {
            if exists.is_none() {
                return Err(soft(
                    code::NOT_FOUND,
                    format!("NOT_FOUND - no exchange {exchange:?} in vhost \"/\""),
                ));
            }
        } else {
            let Some(want) = Kind::parse(&kind) else {
                // `headers` is a type this server does not implement; any
                // other is no type at all (406, as RabbitMQ answers).
                return Err(if kind == "headers" {
                    hard(
                        code::NOT_IMPLEMENTED,
                        format!(
                            "NOT_IMPLEMENTED - exchange {exchange:?}: headers exchanges are not supported"
                        ),
                    )
                } else {
                    soft(
                        code::PRECONDITION_FAILED,
                        format!(
                            "PRECONDITION_FAILED - exchange {exchange:?}: invalid type {kind:?} (topic, direct, fanout)"
                        ),
                    )
                });
            };
            match exists {
                Some(k) if k != want => {
                    return Err(soft(
                        code::PRECONDITION_FAILED,
                        format!(
                            "PRECONDITION_FAILED - inequivalent arg 'type' for exchange {exchange:?} in vhost \"/\": received {kind:?}"
                        ),
                    ));
                }
                Some(_) => {}
                None if exchange.starts_with("amq.") => {
                    return Err(soft(
                        code::ACCESS_REFUSED,
                        format!("ACCESS_REFUSED - exchange name {exchange:?} is reserved"),
                    ));
                }
                None if exchange.is_empty() => {
                    return Err(soft(
                        code::ACCESS_REFUSED,
                        "ACCESS_REFUSED - the default exchange cannot be declared",
                    ));
                }
                None => {
                    self.shared.exchanges.lock().insert(exchange, want);
                }
            }
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

    /// Refuses with 404 a queue neither declared nor known to its driver
    /// (`basic.consume` and `basic.get`, as RabbitMQ does; a publish to the
    /// default exchange makes the queue).
    pub(crate) fn require_known(
        &self,
        name: &str,
        driver: &DriverHandle,
        path: &str,
    ) -> Result<(), Refusal> {
        if self.shared.queues.lock().contains_key(name)
            || driver.stats().iter().any(|s| *s.destination == *path)
        {
            return Ok(());
        }
        Err(soft(
            code::NOT_FOUND,
            format!("NOT_FOUND - no queue {name:?} in vhost \"/\""),
        ))
    }

    pub(crate) fn queue_declare(
        &mut self,
        io: &mut Io<'_>,
        ch: u16,
        mut queue: String,
        how: Declare,
    ) -> Result<(), Refusal> {
        let Declare {
            passive,
            exclusive,
            auto_delete,
            no_wait,
        } = how;
        let server_named = queue.is_empty() && !passive;
        if server_named {
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
            let known = self.shared.queues.lock().contains_key(&queue)
                || driver.stats().iter().any(|s| *s.destination == *path);
            if !known && !server_named {
                // Making a queue: for one who may consume from it or
                // publish to it.
                match self.permit(io, Action::Consume, &path) {
                    Some(true) => {}
                    None => return Err(held()),
                    Some(false) => match self.permit(io, Action::Publish, &path) {
                        Some(true) => {}
                        None => return Err(held()),
                        Some(false) => return Err(self.denied(Action::Consume, &path)),
                    },
                }
            }
            if server_named && self.shared.auth.is_some() {
                self.guard.made.insert(queue.clone());
            }
            let mut queues = self.shared.queues.lock();
            let d = queues.entry(queue.clone()).or_insert(Declared {
                owner: None,
                auto_delete: false,
            });
            if exclusive {
                d.owner = Some(self.id);
            }
            d.auto_delete |= auto_delete;
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

    pub(crate) fn queue_bind(
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
        let kind = self.shared.exchange(&exchange).ok_or_else(|| {
            soft(
                code::NOT_FOUND,
                format!("NOT_FOUND - no exchange {exchange:?} in vhost \"/\""),
            )
        })?;
        let (_, path) = self.queue(&queue, true)?;
        if kind == Kind::Topic {
            // What the binding feeds the queue is as if published to it.
            if let Some(f) = filter(&key) {
                let topic = format!("{}{f}", self.shared.config.topic_root);
                self.allow(io, Action::Subscribe, &topic)?;
                self.allow_queue(io, Action::Publish, &queue, &path)?;
            }
        }
        if kind != Kind::Topic {
            let mut routes = self.shared.routes.lock();
            let bound = routes.entry(exchange).or_default();
            if !bound.iter().any(|(k, q)| *k == key && *q == queue) {
                bound.push((key, queue));
            }
            return Ok(());
        }
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
            sub,
        });
        Ok(())
    }

    /// The credit of binding `queue`'s subscriptions after forwarding.
    pub(crate) fn bridge_credit(&self, queue_path: &str) {
        let root = &self.shared.config.queue_root;
        if let Some(name) = queue_path.strip_prefix(root.as_str()) {
            for b in self.bindings.iter().filter(|b| b.queue == name) {
                b.sub.credit(1);
            }
        }
    }
}
