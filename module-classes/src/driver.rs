//! The driver class: a destination that stores and delivers messages.
//!
//! A driver instance is bound to path prefixes and serves every destination
//! under them: with a queue bound at `/queues/`, `/queues/orders` and
//! `/queues/billing` are two queues, made on first use.
//!
//! # Implementing
//!
//! - [`Driver::publish`] stores a message and completes with a [`Receipt`]
//!   once it is stored as the driver promises (on disk, for a durable
//!   driver). When full, it fails with [`FailureKind::Full`] and a retry
//!   hint, never growing without bound.
//! - [`Driver::subscribe`] attaches a [`Consumer`] with credit. Queues give
//!   each message to one consumer, leased; an unacked message comes back
//!   after its lease with a higher delivery count. Topics give each message
//!   to every live subscriber; a fan-out driver keeps each subscriber in a
//!   [`crate::fanout::Outbox`], so slow and stalled subscribers are told
//!   apart by one rule, and reports the backlog of those that make
//!   progress in its [`Receipt`].
//! - [`Driver::ack`] settles a leased message and completes once the ack
//!   is kept; an unknown id is an error, not a panic.
//! - [`Driver::purge`] and [`Driver::delete`] are a queue's management
//!   (AMQP `queue.purge` and `queue.delete`); a driver that cannot do them
//!   keeps the defaults, which fail with [`FailureKind::Unsupported`].
//! - [`Driver::stop`] ends the instance's life (it is stopped, restarted
//!   or removed, or the server stops): end every subscription with
//!   [`Delivery::Closed`](crate::Delivery::Closed), complete what was
//!   confirmed, flush and close storage. A new incarnation is made from the
//!   configuration when the instance starts again, so a durable driver must
//!   leave its storage ready to be opened. Before `stop` is called,
//!   [`register`] makes the instance refuse new publishes, subscriptions
//!   and acks with [`FailureKind::Unavailable`] and a retry hint (HTTP: 503
//!   with `Retry-After`), so a driver need not check for itself.
//!
//! Longer than most files here: the contract's types, the trait with the
//! defaults of its optional methods, and the lifecycle wrapper that
//! forwards each of them.
//!
//! # Threading
//!
//! Methods are called from any reactor thread at once and must not block:
//! take a lock for a short, bounded time, or queue the work to a thread of
//! the driver's own and complete later.
//!
//! # Example
//!
//! ```
//! use bindery::{Completion, Failure, FailureKind};
//! use bindery_classes::*;
//!
//! /// A driver that stores nothing and refuses every subscription.
//! struct Void;
//!
//! impl Driver for Void {
//!     fn info(&self) -> DriverInfo {
//!         DriverInfo { queue: false, durable: false }
//!     }
//!     fn publish(&self, message: Message, done: Completion<Receipt>) {
//!         done.succeed(Receipt { id: message.id, delivered_to: 0, backlog: 0 });
//!     }
//!     fn subscribe(&self, dest: &str, _: Consumer, _: SubscribeOptions) -> Result<Subscription, Failure> {
//!         Err(Failure::new(FailureKind::Unsupported, format!("{dest}: nothing to read")))
//!     }
//! }
//!
//! let (done, outcome) = Completion::channel();
//! Void.publish(Message::new("/void/x", "text/plain", "hi"), done);
//! assert!(outcome.recv().unwrap().is_ok());
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bindery::{
    BoxError, Completion, Failure, FailureKind, InstanceContext, Isolation, Registrar, Runtime,
};
use serde::Serialize;

use crate::consumer::{Consumer, Subscription};
use crate::message::{Message, MessageId};

/// What a publish confirms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Receipt {
    /// The message's id.
    pub id: MessageId,
    /// For topics, how many subscribers it went to; for queues, 0.
    pub delivered_to: u32,
    /// How far behind the slowest consumer it reached is: messages it has
    /// buffered (topics). A publisher that sees this grow should slow down
    /// before the driver's slow-consumer policy has to drop. Only
    /// consumers that make progress count: a stalled one (see
    /// [`crate::fanout`]) adds nothing, so it cannot hold publishers back.
    pub backlog: u32,
}

/// The header that makes a publish a destination's *retained* message
/// (value `1`), on a driver that [`Driver::retains`]: it is delivered as
/// usual and kept as the one message a later subscriber may ask for
/// ([`Driver::retained`]); an empty body clears it. MQTT's retain flag,
/// kept by the driver so every node sees it.
pub const RETAIN: &str = "retain";

/// What kind of destination a driver keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct DriverInfo {
    /// Queue semantics (each message to one consumer, leased, acked) rather
    /// than topic semantics (each message to every live subscriber).
    pub queue: bool,
    /// Messages and acks survive a restart.
    pub durable: bool,
}

/// How a consumer subscribes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SubscribeOptions {
    /// How many messages may be delivered before the consumer adds credit.
    pub credit: u32,
    /// How long a queue message stays leased before it is delivered again.
    pub lease: Duration,
}

impl Default for SubscribeOptions {
    fn default() -> Self {
        SubscribeOptions {
            credit: 1,
            lease: Duration::from_secs(30),
        }
    }
}

/// Counters for one destination, for `/metrics`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct DestinationStats {
    /// The destination's path.
    pub destination: String,
    /// Messages waiting (queues) or buffered for subscribers (topics).
    pub depth: u64,
    /// Messages delivered and not yet acked (queues).
    pub leased: u64,
    /// Live consumers or subscribers.
    pub consumers: u64,
    /// Messages accepted.
    pub published: u64,
    /// Messages handed to consumers (redeliveries included).
    pub delivered: u64,
    /// Messages acked.
    pub acked: u64,
    /// Messages dropped (slow subscribers, no subscriber).
    pub dropped: u64,
    /// Subscribers stalled now: they make no progress and no longer slow
    /// publishers (topics).
    pub stalled: u64,
    /// 1 while the destination's store refuses publishes for lack of space
    /// (a durable driver's disk threshold or budget), else 0.
    pub store_full: u64,
    /// Publishes refused because the destination was full.
    pub refused: u64,
}

/// When [`Driver::delete`] refuses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeleteOptions {
    /// Refuse (`Rejected`) while the queue has consumers.
    pub if_unused: bool,
    /// Refuse (`Rejected`) while the queue holds messages, waiting or
    /// leased.
    pub if_empty: bool,
}

/// A destination: stores messages and delivers them to consumers.
pub trait Driver: Send + Sync + 'static {
    /// What kind of destination this is. Constant for the instance's life.
    fn info(&self) -> DriverInfo;

    /// Stores `message` at `message.destination`.
    ///
    /// - Called from any thread, often a reactor's: return at once. Take
    ///   only your own locks, briefly; queue slow work (disk, network) to
    ///   a thread of your own.
    /// - `done` must complete exactly once (dropping it reports
    ///   `Dropped`): with a [`Receipt`] only once the message is kept as
    ///   [`DriverInfo`] promises — never a confirm for what a crash could
    ///   lose — or with a [`Failure`] (`Full` with a retry hint at the
    ///   limit, `Unavailable` while the store cannot take it).
    /// - `done` may be completed before `publish` returns, and on any
    ///   thread; it must not be completed under a lock a consumer's
    ///   callback could need.
    fn publish(&self, message: Message, done: Completion<Receipt>);

    /// Attaches `consumer` to `destination` with `options.credit`.
    ///
    /// - Returns at once; deliveries may begin before it returns, on this
    ///   thread or another.
    /// - The driver calls [`Consumer::deliver`] **while holding its own
    ///   lock** (that is what keeps order), one message per unit of credit;
    ///   the consumer must therefore not call back into the driver from
    ///   `deliver` (publish, subscribe, credit, ack): it queues and returns.
    /// - Ends with the returned [`Subscription`] (dropped or cancelled), or
    ///   by the driver with one [`Delivery::Closed`](crate::Delivery::Closed)
    ///   (a slow consumer under `disconnect`, the instance stopping), after
    ///   which nothing more is delivered.
    fn subscribe(
        &self,
        destination: &str,
        consumer: Consumer,
        options: SubscribeOptions,
    ) -> Result<Subscription, Failure>;

    /// Settles a leased message; completes once the ack is kept as the
    /// driver promises (on disk, for a durable driver), so an acked message
    /// never comes back. An unknown id fails with `NotFound`. Topics have
    /// nothing to ack.
    fn ack(&self, destination: &str, id: MessageId, done: Completion<()>) {
        let _ = id;
        done.fail(Failure::new(
            FailureKind::Unsupported,
            format!("{destination}: this destination has no acknowledgements"),
        ))
    }

    /// Gives a leased message back at once, as if its lease had ended,
    /// without counting a delivery (a consumer that could not use it).
    fn release(&self, destination: &str, id: MessageId) -> Result<(), Failure> {
        let _ = id;
        Err(Failure::new(
            FailureKind::Unsupported,
            format!("{destination}: this destination has nothing to release"),
        ))
    }

    /// Gives a leased message back at once, counting the delivery (a
    /// consumer that tried it and failed: a job whose command failed, an
    /// AMQP nack with requeue), so a limit on deliveries sees it. Drivers
    /// that cannot say `Unsupported`; the message then comes back when its
    /// lease ends.
    fn retry(&self, destination: &str, id: MessageId) -> Result<(), Failure> {
        let _ = id;
        Err(Failure::new(
            FailureKind::Unsupported,
            format!("{destination}: this destination cannot give a message back early"),
        ))
    }

    /// Removes every message waiting at queue `destination`; those leased
    /// stay with their consumers (settled by their ack, back if given
    /// back). Completes with how many were removed, once their removal is
    /// kept as [`DriverInfo`] promises (a durable driver: on disk, so they
    /// do not come back after a restart). A destination the driver does
    /// not hold: `NotFound`. Drivers that cannot say `Unsupported`.
    fn purge(&self, destination: &str, done: Completion<u64>) {
        done.fail(Failure::new(
            FailureKind::Unsupported,
            format!("{destination}: this destination cannot be purged"),
        ))
    }

    /// Deletes queue `destination`: every message, waiting and leased, is
    /// dropped and every subscription ended with
    /// [`Delivery::Closed`](crate::Delivery::Closed); a later publish
    /// makes the queue anew. Completes with how many messages were
    /// dropped, once kept as [`DriverInfo`] promises. Refused with
    /// `Rejected` (nothing changed) as `options` say; a destination the
    /// driver does not hold: `NotFound`. Drivers that cannot say
    /// `Unsupported`.
    fn delete(&self, destination: &str, options: DeleteOptions, done: Completion<u64>) {
        let _ = options;
        done.fail(Failure::new(
            FailureKind::Unsupported,
            format!("{destination}: this destination cannot be deleted"),
        ))
    }

    /// Counters per destination, for introspection and tests. Called from
    /// management threads, never on the hot path; may take the driver's
    /// locks. `/metrics` does not call it: it reads the meters the driver
    /// registered ([`crate::metrics::DestinationMeters`]).
    fn stats(&self) -> Vec<DestinationStats> {
        Vec::new()
    }

    /// The instance stops (see the module docs): end subscriptions, finish
    /// and flush what was confirmed, close storage. Called once, on a
    /// management thread (it may block until storage is closed); no new
    /// work arrives after it.
    fn stop(&self) {}

    /// True once the instance is stopping. A consumer told
    /// [`Delivery::Closed`](crate::Delivery::Closed) asks this to tell an
    /// instance going away (restarted, or a reload moved its binding:
    /// subscribe again to whatever is bound at the path next) from a
    /// subscription ended for the consumer's own sake (a slow consumer).
    /// Every handle the binding table holds answers it (the class wires
    /// it); a bare implementation need not.
    fn stopped(&self) -> bool {
        false
    }

    /// Whether this driver keeps retained messages ([`RETAIN`]) itself,
    /// where every node that shares its destinations sees them. A terminal
    /// keeps its own otherwise.
    fn retains(&self) -> bool {
        false
    }

    /// The retained messages of the destinations `filter` matches (a
    /// topic path, `+` and a last `#` as wildcards), completed on any
    /// thread, at once or after a round trip to the store.
    fn retained(&self, filter: &str, done: Completion<Vec<Message>>) {
        done.fail(Failure::new(
            FailureKind::Unsupported,
            format!("{filter}: this driver keeps no retained messages"),
        ))
    }
}

/// A driver instance as the binding table holds it.
pub type DriverHandle = Arc<dyn Driver>;

/// Registers a driver module's factory (call from its module main).
///
/// Each instance is wrapped so that, once the instance is stopping, it
/// refuses new work with `Unavailable` and its [`Driver::stop`] runs.
pub fn register<D, F>(reg: &mut Registrar<'_, crate::class::Driver>, make: F)
where
    D: Driver,
    F: Fn(&InstanceContext) -> Result<D, BoxError> + Send + Sync + 'static,
{
    reg.register(move |cx| {
        if cx.isolation().mode == Isolation::Process {
            return Ok(wrap(cx, crate::isolation::DriverProxy::start(cx)?));
        }
        Ok(wrap(cx, make(cx)?))
    });
    reg.isolatable();
}

/// `inner` with its lifecycle duties wired.
fn wrap<D: Driver>(cx: &InstanceContext, inner: D) -> DriverHandle {
    let driver = Arc::new(Lifecycle {
        inner,
        stopped: AtomicBool::new(false),
        instance: cx.name().into(),
    });
    let stopping = driver.clone();
    cx.on_stop(move |_deadline| {
        stopping.stopped.store(true, Ordering::Release);
        stopping.inner.stop();
    });
    driver as DriverHandle
}

/// A driver instance and whether it is stopped.
struct Lifecycle<D> {
    inner: D,
    stopped: AtomicBool,
    instance: Box<str>,
}

impl<D> Lifecycle<D> {
    /// `Unavailable` once the instance is stopping.
    fn refuse(&self, what: &str) -> Result<(), Failure> {
        if self.stopped.load(Ordering::Acquire) {
            return Err(Failure::new(
                FailureKind::Unavailable,
                format!("{what}: driver instance {:?} is stopped", self.instance),
            )
            .retry_after(Duration::from_secs(1)));
        }
        Ok(())
    }
}

impl<D: Driver> Driver for Lifecycle<D> {
    fn info(&self) -> DriverInfo {
        self.inner.info()
    }

    #[inline]
    fn publish(&self, message: Message, done: Completion<Receipt>) {
        match self.refuse(&message.destination) {
            Ok(()) => self.inner.publish(message, done),
            Err(f) => done.fail(f),
        }
    }

    fn subscribe(
        &self,
        destination: &str,
        consumer: Consumer,
        options: SubscribeOptions,
    ) -> Result<Subscription, Failure> {
        self.refuse(destination)?;
        self.inner.subscribe(destination, consumer, options)
    }

    fn ack(&self, destination: &str, id: MessageId, done: Completion<()>) {
        match self.refuse(destination) {
            Ok(()) => self.inner.ack(destination, id, done),
            Err(f) => done.fail(f),
        }
    }

    fn release(&self, destination: &str, id: MessageId) -> Result<(), Failure> {
        self.refuse(destination)?;
        self.inner.release(destination, id)
    }
    fn retry(&self, destination: &str, id: MessageId) -> Result<(), Failure> {
        self.refuse(destination)?;
        self.inner.retry(destination, id)
    }

    fn purge(&self, destination: &str, done: Completion<u64>) {
        match self.refuse(destination) {
            Ok(()) => self.inner.purge(destination, done),
            Err(f) => done.fail(f),
        }
    }

    fn delete(&self, destination: &str, options: DeleteOptions, done: Completion<u64>) {
        match self.refuse(destination) {
            Ok(()) => self.inner.delete(destination, options, done),
            Err(f) => done.fail(f),
        }
    }

    fn stats(&self) -> Vec<DestinationStats> {
        self.inner.stats()
    }

    fn stop(&self) {
        self.stopped.store(true, Ordering::Release);
        self.inner.stop()
    }

    fn stopped(&self) -> bool {
        self.stopped.load(Ordering::Acquire)
    }

    fn retains(&self) -> bool {
        self.inner.retains()
    }

    fn retained(&self, filter: &str, done: Completion<Vec<Message>>) {
        match self.refuse(filter) {
            Ok(()) => self.inner.retained(filter, done),
            Err(f) => done.fail(f),
        }
    }
}

/// Tells the runtime whether the instance can serve, as `check` says: it
/// is called every 200 ms while the instance runs, from a thread of its
/// own, and returns why it cannot (`Some`) or `None`. Changes go to the
/// instance's [`Monitor::degraded`](bindery::Monitor::degraded), so the
/// management API, `bindery ctl list` and `/readyz` show them. For a
/// driver whose store lives elsewhere (Redis).
pub fn report_health(
    cx: &InstanceContext,
    check: impl Fn() -> Option<String> + Send + Sync + 'static,
) {
    let monitor = cx.monitor();
    let stop = Arc::new(AtomicBool::new(false));
    let stopping = stop.clone();
    let name = cx.name().to_owned();
    cx.on_start(move |_| {
        std::thread::Builder::new()
            .name(format!("bindery-health-{name}"))
            .spawn(move || {
                while !stop.load(Ordering::Acquire) {
                    monitor.degraded(check());
                    std::thread::sleep(Duration::from_millis(200));
                }
            })?;
        Ok(())
    });
    cx.on_stop(move |_| stopping.store(true, Ordering::Release));
}

/// The driver serving `path`.
pub fn lookup(rt: &Runtime, path: &str) -> Option<DriverHandle> {
    rt.lookup::<DriverHandle>(crate::class::DRIVER, path)
}
