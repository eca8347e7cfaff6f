//! Channels: open, close (both ways), and the dispatch of a channel's
//! methods. Part of the protocol core ([`crate::core`]); exchanges, queues
//! and bindings are in [`crate::queues`], publishing in [`crate::publish`],
//! consuming in [`crate::consume`].

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use bindery_classes::connection::Io;
use bindery_classes::driver::DriverHandle;
use bindery_classes::{MessageId, Subscription};
use bytes::Bytes;

use crate::core::{Core, Refusal, code, hard, soft};
use crate::manage::Managing;
use crate::methods::Method;
use crate::wire::ContentHeader;
use bindery_classes::driver::DeleteOptions;

/// A message taken from a queue and not yet settled.
pub(crate) struct Unacked {
    /// The consumer it went to (`None`: `basic.get`).
    pub(crate) consumer: Option<Arc<str>>,
    pub(crate) driver: DriverHandle,
    pub(crate) path: Arc<str>,
    pub(crate) id: MessageId,
}

impl Unacked {
    /// Gives it back to the front of its queue, its delivery counted (so
    /// the next delivery is `redelivered` on any node); a driver that
    /// cannot count hands it back uncounted and this terminal remembers.
    pub(crate) fn give_back(&self, shared: &crate::Shared) {
        if self.driver.retry(&self.path, self.id).is_err() {
            shared.mark_requeued(self.id);
            let _ = self.driver.release(&self.path, self.id);
        }
    }
}

/// A consumer on a channel.
pub(crate) struct Consuming {
    /// The queue's path.
    pub(crate) path: Arc<str>,
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
pub(crate) struct Incoming {
    pub(crate) exchange: String,
    pub(crate) routing_key: String,
    pub(crate) mandatory: bool,
    /// The destinations; none: nothing routes this key.
    pub(crate) paths: Vec<String>,
    /// Whether the exchange and routing key go with the message as
    /// headers (an exchange other than the default one).
    pub(crate) via: bool,
    pub(crate) topic: bool,
    pub(crate) header: Option<ContentHeader>,
    pub(crate) body: Vec<u8>,
}

/// One channel's state.
#[derive(Default)]
pub(crate) struct Channel {
    /// The server sent `channel.close` and waits for `close-ok`.
    pub(crate) closing: bool,
    pub(crate) incoming: Option<Incoming>,
    pub(crate) confirm: bool,
    pub(crate) published: u64,
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
    /// A `queue.purge` or `queue.delete` waiting for its driver.
    Manage {
        channel: u16,
        queue: String,
        what: Managing,
        no_wait: bool,
    },
}

/// A publish waiting for its driver.
pub(crate) struct Published {
    pub(crate) channel: u16,
    pub(crate) confirm: Option<u64>,
    pub(crate) mandatory: bool,
    pub(crate) topic: bool,
    pub(crate) exchange: String,
    pub(crate) routing_key: String,
    pub(crate) header: ContentHeader,
    pub(crate) body: Bytes,
}

/// A topic subscription feeding a queue.
pub(crate) struct Binding {
    pub(crate) queue: String,
    pub(crate) exchange: String,
    pub(crate) key: String,
    pub(crate) sub: Subscription,
}

/// Whether `name` can be a queue: a path segment of its own.
pub(crate) fn queue_name(name: &str) -> bool {
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
        let paths: Vec<Arc<str>> = c.consumers.values().map(|c| c.path.clone()).collect();
        c.consumers.clear();
        self.auto_delete(paths);
        c.get = None;
        // Deliveries already on their way find no tag and go back to their
        // queues (see `Core::noted`).
        self.pending.retain(|_, p| {
            !matches!(p, Pending::Consumer { channel, .. } | Pending::Get { channel, .. }
                if *channel == ch)
        });
        // Last first: each goes back to the front of its queue.
        for (_, u) in std::mem::take(&mut c.unacked).into_iter().rev() {
            u.give_back(&self.shared);
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
                self.shared.routes.lock().remove(&exchange);
                if !no_wait {
                    self.send(io, ch, &Method::ExchangeDeleteOk);
                }
                Ok(())
            }
            Method::QueueDeclare {
                queue,
                passive,
                exclusive,
                auto_delete,
                no_wait,
                ..
            } => self.queue_declare(
                io,
                ch,
                queue,
                crate::queues::Declare {
                    passive,
                    exclusive,
                    auto_delete,
                    no_wait,
                },
            ),
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
                if let Some(bound) = self.shared.routes.lock().get_mut(&exchange) {
                    bound.retain(|(k, q)| !(*q == queue && *k == routing_key));
                }
                self.send(io, ch, &Method::QueueUnbindOk);
                Ok(())
            }
            Method::QueuePurge { queue, no_wait } => self.queue_manage(
                io,
                ch,
                queue,
                Managing::Purge,
                DeleteOptions::default(),
                no_wait,
            ),
            Method::QueueDelete {
                queue,
                if_unused,
                if_empty,
                no_wait,
            } => self.queue_manage(
                io,
                ch,
                queue,
                Managing::Delete,
                DeleteOptions {
                    if_unused,
                    if_empty,
                },
                no_wait,
            ),
            Method::BasicPublish {
                exchange,
                routing_key,
                mandatory,
                immediate,
            } => self.publish(io, ch, exchange, routing_key, mandatory, immediate),
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
}
