//! `driver.topic`: fan-out to live subscribers.
//!
//! Every destination under the instance's path prefixes is a topic, made on
//! first use. A message goes to every subscriber live at the moment it is
//! published, and to nobody else; there is nothing to ack. A subscriber that
//! has no credit left gets its messages buffered, up to `buffer` of them;
//! past that the `slow_subscriber` policy decides: `drop-oldest` (default),
//! `drop-newest`, or `disconnect` (the terminal drops the client as a slow
//! consumer). Every dropped message is counted.
//!
//! Publishers learn the backlog of the slowest subscriber in each receipt
//! and may slow down so it catches up. A subscriber that takes nothing for
//! `stall_ms` while messages wait (or keeps a full buffer that long) is
//! stalled and no longer counts: one stuck client never slows a publisher
//! or anyone else ([`bindery_classes::fanout`] has the rule).
//!
//! ```toml
//! [instances.topics.config]
//! buffer = 1000
//! slow_subscriber = "drop-oldest"
//! stall_ms = 250
//! max_topics = 10000
//! ```
//!
//! Longer than most files here: the driver and its unit tests; the
//! subscriber rule itself is in `bindery_classes::fanout`.

use std::sync::{Arc, Weak};
use std::time::Duration;

use bindery::{Completion, Failure, FailureKind};
use bindery_classes::driver::{self, DestinationStats, DriverInfo, Receipt, SubscribeOptions};
use bindery_classes::fanout::{Clock, Limits, Offer, Outbox};
use bindery_classes::metrics::{DestinationMeters, Scope};
use bindery_classes::{Consumer, Driver, Message, Subscription, SubscriptionControl, topic};
use dashmap::DashMap;
use parking_lot::Mutex;
use serde::Deserialize;

pub use bindery_classes::fanout::SlowPolicy;

bindery::module! {
    class: bindery_classes::class::Driver,
    name: "topic",
    description: "fan-out topics to live subscribers with bounded per-subscriber buffers",
    main: module_main,
}

/// The instance configuration.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Messages buffered per subscriber beyond its credit.
    pub buffer: usize,
    /// What to do when that buffer is full.
    pub slow_subscriber: SlowPolicy,
    /// Milliseconds a subscriber may take nothing while messages wait (or
    /// keep a full buffer) before it is stalled and stops slowing
    /// publishers.
    pub stall_ms: u64,
    /// Topics per instance.
    pub max_topics: usize,
}

impl Default for Config {
    fn default() -> Self {
        let l = Limits::default();
        Config {
            buffer: l.buffer,
            slow_subscriber: l.policy,
            stall_ms: l.stall.as_millis() as u64,
            max_topics: 10_000,
        }
    }
}

impl Config {
    fn limits(&self) -> Limits {
        Limits {
            buffer: self.buffer,
            policy: self.slow_subscriber,
            stall: Duration::from_millis(self.stall_ms),
        }
    }
}

fn module_main(
    reg: &mut bindery::Registrar<'_, bindery_classes::class::Driver>,
) -> Result<(), bindery::BoxError> {
    driver::register(reg, |cx| {
        let config: Config = cx.config().parse()?;
        if config.buffer == 0 {
            return Err(format!("instance {:?}: buffer must be at least 1", cx.name()).into());
        }
        Ok(TopicDriver::with_metrics(
            config,
            Scope::of(cx.runtime(), cx.name()),
        ))
    });
    Ok(())
}

/// An instance: a set of topics, and the wildcard subscriptions across them.
pub struct TopicDriver {
    /// Set by `stop`: no new subscription after it.
    stopped: std::sync::atomic::AtomicBool,
    limits: Limits,
    max_topics: usize,
    topics: DashMap<Box<str>, Arc<Mutex<Topic>>>,
    patterns: Arc<Mutex<Patterns>>,
    scope: Scope,
}

/// A subscriber: its id and its outbox.
struct Sub {
    id: u64,
    outbox: Outbox,
}

/// One publish's pass over the subscribers it reaches.
struct Round<'a> {
    message: &'a Message,
    limits: &'a Limits,
    clock: Clock,
    meters: &'a DestinationMeters,
    reached: u32,
    backlog: usize,
}

impl Round<'_> {
    /// Offers the message to `sub`, counting; false when the subscription
    /// ends.
    fn offer(&mut self, sub: &mut Sub) -> bool {
        let o = sub.outbox.offer(self.message, self.limits, &mut self.clock);
        match o {
            Offer::Delivered => self.meters.delivered.inc(),
            _ if o.dropped() => self.meters.dropped.inc(),
            _ => {}
        }
        if o.reached() {
            self.reached += 1;
        }
        let backlog = sub.outbox.backlog(self.limits, &mut self.clock);
        self.backlog = self.backlog.max(backlog);
        o.keeps()
    }
}

struct Topic {
    subs: Vec<Sub>,
    next_sub: u64,
    meters: DestinationMeters,
}

impl Topic {
    /// Brings the gauges up to date (under the topic's lock, after every
    /// change), so `/metrics` reads them without taking it.
    fn gauges(&mut self, limits: &Limits) {
        let mut clock = Clock::default();
        let (mut depth, mut stalled) = (0, 0);
        for s in &mut self.subs {
            depth += s.outbox.buffered() as u64;
            stalled += u64::from(s.outbox.is_stalled(limits, &mut clock));
        }
        self.meters.depth.set(depth);
        self.meters.stalled.set(stalled);
        self.meters.consumers.set(self.subs.len() as u64);
    }
}

/// Wildcard subscriptions: a path filter whose segments may be `+` (any
/// one segment) or, last, `#` (any rest, none included); see
/// [`bindery_classes::topic`].
struct Patterns {
    subs: Vec<(Box<str>, Sub)>,
    next_sub: u64,
    /// One destination's meters per pattern subscribed to (what its
    /// subscribers drop is counted on the topics).
    meters: std::collections::HashMap<Box<str>, DestinationMeters>,
}

impl Patterns {
    /// Brings every pattern's gauges up to date; a pattern nobody
    /// subscribes to any more leaves the metrics.
    fn gauges(&mut self, limits: &Limits) {
        let mut clock = Clock::default();
        let mut sums: std::collections::HashMap<&str, (u64, u64, u64)> = Default::default();
        for (p, s) in &mut self.subs {
            let e = sums.entry(p).or_default();
            e.0 += 1;
            e.1 += s.outbox.buffered() as u64;
            e.2 += u64::from(s.outbox.is_stalled(limits, &mut clock));
        }
        self.meters.retain(|p, m| {
            let (consumers, depth, stalled) = sums.get(&**p).copied().unwrap_or_default();
            m.consumers.set(consumers);
            m.depth.set(depth);
            m.stalled.set(stalled);
            consumers > 0
        });
    }
}

impl TopicDriver {
    /// A new instance, its meters in a registry of their own.
    pub fn new(config: Config) -> TopicDriver {
        TopicDriver::with_metrics(config, Scope::detached("topic"))
    }

    /// A new instance whose meters register in `scope`.
    pub fn with_metrics(config: Config, scope: Scope) -> TopicDriver {
        TopicDriver {
            stopped: std::sync::atomic::AtomicBool::new(false),
            limits: config.limits(),
            max_topics: config.max_topics,
            topics: DashMap::new(),
            patterns: Arc::new(Mutex::new(Patterns {
                subs: Vec::new(),
                next_sub: 0,
                meters: Default::default(),
            })),
            scope,
        }
    }

    /// `Unavailable` once stopped (checked under the lock `stop` drains).
    fn refuse_if_stopped(&self, destination: &str) -> Result<(), Failure> {
        if self.stopped.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(Failure::new(
                FailureKind::Unavailable,
                format!("{destination}: the driver instance is stopping"),
            )
            .retry_after(std::time::Duration::from_secs(1)));
        }
        Ok(())
    }

    fn topic(&self, destination: &str) -> Result<Arc<Mutex<Topic>>, Failure> {
        if let Some(t) = self.topics.get(destination) {
            return Ok(t.clone());
        }
        if self.topics.len() >= self.max_topics {
            return Err(Failure::new(
                FailureKind::Full,
                format!(
                    "{destination}: this instance holds its maximum of {} topics",
                    self.max_topics
                ),
            ));
        }
        Ok(self
            .topics
            .entry(destination.into())
            .or_insert_with(|| {
                Arc::new(Mutex::new(Topic {
                    subs: Vec::new(),
                    next_sub: 0,
                    meters: self.scope.destination(destination),
                }))
            })
            .clone())
    }
}

struct TopicSub {
    topic: Weak<Mutex<Topic>>,
    id: u64,
    limits: Limits,
}

impl SubscriptionControl for TopicSub {
    fn credit(&self, n: u32) {
        if let Some(t) = self.topic.upgrade() {
            let mut t = t.lock();
            let Topic { subs, meters, .. } = &mut *t;
            if let Some(s) = subs.iter_mut().find(|s| s.id == self.id) {
                let sent = s.outbox.credit(n, &self.limits, &mut Clock::default());
                meters.delivered.add(sent as u64);
            }
            t.gauges(&self.limits);
        }
    }

    fn cancel(&self) {
        if let Some(t) = self.topic.upgrade() {
            let mut t = t.lock();
            t.subs.retain(|s| s.id != self.id);
            t.gauges(&self.limits);
        }
    }
}

struct PatternSub {
    patterns: Weak<Mutex<Patterns>>,
    id: u64,
    limits: Limits,
}

impl SubscriptionControl for PatternSub {
    fn credit(&self, n: u32) {
        if let Some(p) = self.patterns.upgrade() {
            let mut p = p.lock();
            if let Some((_, s)) = p.subs.iter_mut().find(|(_, s)| s.id == self.id) {
                s.outbox.credit(n, &self.limits, &mut Clock::default());
            }
            p.gauges(&self.limits);
        }
    }

    fn cancel(&self) {
        if let Some(p) = self.patterns.upgrade() {
            let mut p = p.lock();
            p.subs.retain(|(_, s)| s.id != self.id);
            p.gauges(&self.limits);
        }
    }
}

impl Driver for TopicDriver {
    fn info(&self) -> DriverInfo {
        DriverInfo {
            queue: false,
            durable: false,
        }
    }

    fn publish(&self, mut message: Message, done: Completion<Receipt>) {
        if topic::is_filter(&message.destination) {
            return done.fail(Failure::new(
                FailureKind::Rejected,
                format!("{}: cannot publish to a wildcard", message.destination),
            ));
        }
        let t = match self.topic(&message.destination) {
            Ok(t) => t,
            Err(f) => return done.fail(f),
        };
        let id = message.id;
        message.delivery_count = 1;
        let (reached, backlog) = {
            let mut t = t.lock();
            let Topic { subs, meters, .. } = &mut *t;
            meters.published.inc();
            let mut round = Round {
                message: &message,
                limits: &self.limits,
                clock: Clock::default(),
                meters,
                reached: 0,
                backlog: 0,
            };
            let mut offered = subs.len();
            subs.retain_mut(|s| round.offer(s));
            // Topic, then patterns: the one lock order, so each subscriber
            // sees a topic's messages in publish order.
            let mut patterns = self.patterns.lock();
            patterns.subs.retain_mut(|(p, s)| {
                if !topic::matches(p, &message.destination) {
                    return true;
                }
                offered += 1;
                round.offer(s)
            });
            if offered == 0 {
                // Nobody listens: the message goes nowhere, counted.
                round.meters.dropped.inc();
            }
            let outcome = (round.reached, round.backlog);
            if offered > subs.len() {
                patterns.gauges(&self.limits);
            }
            drop(patterns);
            t.gauges(&self.limits);
            outcome
        };
        done.succeed(Receipt {
            id,
            delivered_to: reached,
            backlog: backlog as u32,
        });
    }

    fn subscribe(
        &self,
        destination: &str,
        consumer: Consumer,
        options: SubscribeOptions,
    ) -> Result<Subscription, Failure> {
        let limits = self.limits;
        if topic::is_filter(destination) {
            if !topic::valid_filter(destination) {
                return Err(Failure::new(
                    FailureKind::Rejected,
                    format!("{destination}: '#' may only be the last segment"),
                ));
            }
            let mut p = self.patterns.lock();
            self.refuse_if_stopped(destination)?;
            let id = p.next_sub;
            p.next_sub += 1;
            let outbox = Outbox::new(consumer, destination, options.credit);
            p.subs.push((destination.into(), Sub { id, outbox }));
            p.meters
                .entry(destination.into())
                .or_insert_with(|| self.scope.destination(destination));
            p.gauges(&limits);
            return Ok(Subscription::new(Arc::new(PatternSub {
                patterns: Arc::downgrade(&self.patterns),
                id,
                limits,
            })));
        }
        let t = self.topic(destination)?;
        let id = {
            let mut g = t.lock();
            self.refuse_if_stopped(destination)?;
            let id = g.next_sub;
            g.next_sub += 1;
            let outbox = Outbox::new(consumer, destination, options.credit);
            g.subs.push(Sub { id, outbox });
            g.gauges(&limits);
            id
        };
        Ok(Subscription::new(Arc::new(TopicSub {
            topic: Arc::downgrade(&t),
            id,
            limits,
        })))
    }

    fn stop(&self) {
        // Before the subscribers are drained: a subscription made meanwhile
        // is either drained below or refused (it checks under the lock).
        self.stopped
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let why = "the driver instance is stopping";
        let topics: Vec<_> = self.topics.iter().map(|e| e.value().clone()).collect();
        for t in topics {
            let subs = std::mem::take(&mut t.lock().subs);
            for s in subs {
                s.outbox.close(why);
            }
        }
        let patterns = std::mem::take(&mut self.patterns.lock().subs);
        for (_, s) in patterns {
            s.outbox.close(why);
        }
    }

    fn stats(&self) -> Vec<DestinationStats> {
        let topics = self
            .topics
            .iter()
            .map(|e| e.value().lock().meters.snapshot());
        let patterns: Vec<DestinationStats> = self
            .patterns
            .lock()
            .meters
            .values()
            .map(|m| m.snapshot())
            .collect();
        let mut out: Vec<DestinationStats> = topics.chain(patterns).collect();
        out.sort_by(|a, b| a.destination.cmp(&b.destination));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bindery_classes::Delivery;

    fn publish(d: &TopicDriver, dest: &str, body: &str) -> Receipt {
        let (done, rx) = Completion::channel();
        d.publish(Message::new(dest, "text/plain", body.to_owned()), done);
        rx.recv().unwrap().unwrap()
    }

    fn texts(rx: &std::sync::mpsc::Receiver<Delivery>) -> Vec<String> {
        rx.try_iter()
            .map(|d| match d {
                Delivery::Message(m) => String::from_utf8(m.body.to_vec()).unwrap(),
                Delivery::Closed(r) => format!("closed: {r}"),
            })
            .collect()
    }

    #[test]
    fn fans_out_to_every_live_subscriber() {
        let d = TopicDriver::new(Config::default());
        assert_eq!(publish(&d, "/t/a", "before").delivered_to, 0);
        let (c1, r1) = Consumer::channel();
        let (c2, r2) = Consumer::channel();
        let o = SubscribeOptions {
            credit: 10,
            ..Default::default()
        };
        let _s1 = d.subscribe("/t/a", c1, o).unwrap();
        let s2 = d.subscribe("/t/a", c2, o).unwrap();
        assert_eq!(publish(&d, "/t/a", "x").delivered_to, 2);
        drop(s2);
        assert_eq!(publish(&d, "/t/a", "y").delivered_to, 1);
        assert_eq!(texts(&r1), ["x", "y"]);
        assert_eq!(texts(&r2), ["x"]);
        assert_eq!(d.stats()[0].dropped, 1);
    }

    #[test]
    fn wildcard_subscriptions_match_segments() {
        let d = TopicDriver::new(Config::default());
        let (c, r) = Consumer::channel();
        let o = SubscribeOptions {
            credit: 10,
            ..Default::default()
        };
        let _s = d.subscribe("/t/sensors/+/temp", c, o).unwrap();
        publish(&d, "/t/sensors/k1/temp", "1");
        publish(&d, "/t/sensors/k1/hum", "2");
        publish(&d, "/t/sensors/k2/temp", "3");
        assert_eq!(texts(&r), ["1", "3"]);
        assert!(d.subscribe("/t/#/x", Consumer::channel().0, o).is_err());
        let pattern = d
            .stats()
            .into_iter()
            .find(|s| s.destination == "/t/sensors/+/temp");
        assert_eq!(
            pattern.map(|p| p.consumers),
            Some(1),
            "patterns are in the stats"
        );
    }

    #[test]
    fn slow_subscribers_are_bounded_by_policy() {
        for (policy, want) in [
            (SlowPolicy::DropOldest, vec!["0", "3", "4"]),
            (SlowPolicy::DropNewest, vec!["0", "1", "2"]),
        ] {
            let d = TopicDriver::new(Config {
                buffer: 2,
                slow_subscriber: policy,
                ..Config::default()
            });
            let (c, r) = Consumer::channel();
            let s = d
                .subscribe(
                    "/t/s",
                    c,
                    SubscribeOptions {
                        credit: 1,
                        ..Default::default()
                    },
                )
                .unwrap();
            for i in 0..5 {
                publish(&d, "/t/s", &i.to_string());
            }
            s.credit(10);
            assert_eq!(texts(&r), want, "{policy:?}");
            assert_eq!(d.stats()[0].dropped, 2);
        }
        let d = TopicDriver::new(Config {
            buffer: 1,
            slow_subscriber: SlowPolicy::Disconnect,
            ..Config::default()
        });
        let (c, r) = Consumer::channel();
        let _s = d
            .subscribe(
                "/t/s",
                c,
                SubscribeOptions {
                    credit: 0,
                    ..Default::default()
                },
            )
            .unwrap();
        publish(&d, "/t/s", "a");
        assert_eq!(publish(&d, "/t/s", "b").delivered_to, 0);
        let got = texts(&r);
        assert!(
            got.len() == 1 && got[0].starts_with("closed: /t/s: slow"),
            "{got:?}"
        );
        assert_eq!(d.stats()[0].consumers, 0);
    }
}
