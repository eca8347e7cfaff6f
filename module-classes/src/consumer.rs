//! The consumer side: how a driver hands messages to a consumer that lives
//! on a terminal's reactor, with credit-based flow control.
//!
//! A consumer subscribes to a destination with some credit; the driver
//! delivers at most that many messages and then waits; the consumer adds
//! credit as it finishes with them (written to its socket, say). So a slow
//! consumer costs a bounded amount of memory: what the driver keeps for it
//! is limited by its queue depth (queues) or by its per-subscriber buffer
//! and slow-subscriber policy (topics).

use std::fmt;
use std::sync::Arc;
use std::sync::mpsc;

use bindery::Cx;

use crate::message::Message;

/// One delivery to a consumer.
#[derive(Clone, Debug)]
pub enum Delivery {
    /// A message. From a queue it is leased: ack it before the lease ends or
    /// it is delivered again.
    Message(Message),
    /// The subscription ended on the driver's side, with the reason (a slow
    /// subscriber disconnected by policy, the driver stopping).
    Closed(String),
}

/// Where a driver sends deliveries. Cheap to clone; safe to call from any
/// thread.
#[derive(Clone)]
pub struct Consumer {
    deliver: Arc<dyn Fn(Delivery) + Send + Sync>,
    name: Option<Arc<str>>,
}

impl fmt::Debug for Consumer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Consumer({})", self.name())
    }
}

impl Consumer {
    /// A consumer that calls `f` for each delivery.
    ///
    /// `f` runs on the driver's thread **under the driver's lock**: it must
    /// not block and must not call back into the driver (no publish,
    /// subscribe, credit or ack from inside it) — queue the delivery, wake
    /// whoever handles it, and return. [`crate::connection::Wake::consumer`]
    /// is such a consumer for a terminal's connection.
    pub fn new(f: impl Fn(Delivery) + Send + Sync + 'static) -> Consumer {
        Consumer {
            deliver: Arc::new(f),
            name: None,
        }
    }

    /// The same consumer, named for log lines (`mqtt client "sensor-7"
    /// 127.0.0.1:50312`).
    pub fn named(mut self, name: impl Into<Arc<str>>) -> Consumer {
        self.name = Some(name.into());
        self
    }

    /// Its name, or `an unnamed consumer`.
    pub fn name(&self) -> &str {
        self.name.as_deref().unwrap_or("an unnamed consumer")
    }

    /// A consumer whose deliveries arrive at the calling reactor handler as
    /// [`Note`](bindery::Note)s with `tag`, each carrying a [`Delivery`].
    pub fn to_handler(cx: &Cx<'_>, tag: u64) -> Consumer {
        crate::connection::Wake::reactor(cx.handle(), cx.address()).consumer(tag)
    }

    /// A consumer whose deliveries arrive on a channel (embedding, tests).
    pub fn channel() -> (Consumer, mpsc::Receiver<Delivery>) {
        let (tx, rx) = mpsc::channel();
        let tx = parking_lot::Mutex::new(tx);
        (
            Consumer::new(move |d| {
                let _ = tx.lock().send(d);
            }),
            rx,
        )
    }

    /// Delivers (drivers call this, under their own lock; see
    /// [`Consumer::new`]).
    pub fn deliver(&self, delivery: Delivery) {
        (self.deliver)(delivery)
    }
}

/// The driver's side of a subscription.
pub trait SubscriptionControl: Send + Sync {
    /// The consumer can take `n` more messages. Called from any thread,
    /// never from inside a delivery; may deliver at once (under the
    /// driver's lock, as every delivery is).
    fn credit(&self, n: u32);
    /// The consumer is gone; deliver nothing more. Leased messages stay
    /// leased until acked or expired. Called from any thread (often when a
    /// connection drops its subscriptions), never from inside a delivery.
    fn cancel(&self);
}

/// A live subscription. Dropping it cancels it.
pub struct Subscription(Option<Arc<dyn SubscriptionControl>>);

impl fmt::Debug for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Subscription")
    }
}

impl Subscription {
    /// Wraps a driver's control.
    pub fn new(control: Arc<dyn SubscriptionControl>) -> Subscription {
        Subscription(Some(control))
    }

    /// Grants `n` more messages. Never call it from inside the consumer's
    /// own delivery callback (the driver's lock is held there); a terminal
    /// grants credit as deliveries leave its output.
    pub fn credit(&self, n: u32) {
        if let Some(c) = &self.0 {
            c.credit(n);
        }
    }

    /// Cancels now (dropping does the same).
    pub fn cancel(mut self) {
        if let Some(c) = self.0.take() {
            c.cancel();
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if let Some(c) = self.0.take() {
            c.cancel();
        }
    }
}
