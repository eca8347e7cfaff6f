//! A set of topics on one node: fan-out of each message to the live
//! subscribers of its topic and of the patterns that match it, each
//! subscriber behind an [`Outbox`] (so the slow-subscriber policy and the
//! stall rule of [`crate::fanout`] hold), with the counters a topic
//! driver reports.
//!
//! `driver.topic` is this and nothing else; a topic driver that carries
//! messages between nodes (`driver.redistopic`) hands each message that
//! arrives to the set of the node it arrives on.

use std::borrow::Cow;
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};

use bindery::{Failure, FailureKind};
use dashmap::DashMap;
use parking_lot::Mutex;

use crate::consumer::{Consumer, Subscription, SubscriptionControl};
use crate::driver::{DestinationStats, Receipt, SubscribeOptions};
use crate::fanout::{Clock, Limits, Offer, Outbox};
use crate::message::Message;
use crate::metrics::{DestinationMeters, Scope};
use crate::topic;

/// A set of topics on this node, and the wildcard subscriptions across
/// them.
pub struct LocalTopics {
    /// Set by `stop`: no new subscription after it.
    stopped: std::sync::atomic::AtomicBool,
    limits: Limits,
    max_topics: usize,
    topics: DashMap<Box<str>, Arc<Mutex<Topic>>, foldhash::fast::RandomState>,
    patterns: Arc<Mutex<Patterns>>,
    /// How many pattern subscriptions there are (kept under `patterns`).
    live_patterns: Arc<AtomicUsize>,
    /// Tells this set's memo ([`LAST_TOPIC`]) from another's.
    id: u64,
    scope: Scope,
}

/// A subscriber: its id and its outbox.
struct Sub {
    id: u64,
    outbox: Outbox,
}

/// One publish's pass over the subscribers it reaches.
struct Round<'a> {
    limits: &'a Limits,
    clock: Clock,
    meters: &'a DestinationMeters,
    reached: u32,
    backlog: usize,
}

impl Round<'_> {
    /// Offers the message to `sub` (a copy, or the message itself to the
    /// last subscriber), counting; false when the subscription ends.
    fn offer(&mut self, sub: &mut Sub, message: Cow<'_, Message>) -> bool {
        let o = match message {
            Cow::Borrowed(m) => sub.outbox.offer(m, self.limits, &mut self.clock),
            Cow::Owned(m) => sub.outbox.offer_owned(m, self.limits, &mut self.clock),
        };
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
    /// `subs.len()`, read without the lock: a publish with no pattern
    /// subscribed takes no pattern lock.
    live: Arc<AtomicUsize>,
    next_sub: u64,
    /// One destination's meters per pattern subscribed to (what its
    /// subscribers drop is counted on the topics).
    meters: std::collections::HashMap<Box<str>, DestinationMeters>,
}

impl Patterns {
    /// Brings every pattern's gauges (and the live count) up to date; a
    /// pattern nobody subscribes to any more leaves the metrics.
    fn gauges(&mut self, limits: &Limits) {
        self.live.store(self.subs.len(), Ordering::Release);
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

impl LocalTopics {
    /// An empty set with these limits per subscriber, holding at most
    /// `max_topics` topics, its meters registered in `scope`.
    pub fn new(limits: Limits, max_topics: usize, scope: Scope) -> LocalTopics {
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        let live = Arc::new(AtomicUsize::new(0));
        LocalTopics {
            stopped: std::sync::atomic::AtomicBool::new(false),
            limits,
            max_topics,
            topics: DashMap::with_hasher(Default::default()),
            patterns: Arc::new(Mutex::new(Patterns {
                subs: Vec::new(),
                live: live.clone(),
                next_sub: 0,
                meters: Default::default(),
            })),
            live_patterns: live,
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
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

/// The topic a thread published to last, and in which set: most
/// publishers keep to one topic, which then costs no map lookup (topics
/// are never taken out of the map, so the one remembered stays the one).
struct TopicMemo {
    set: u64,
    path: Arc<str>,
    topic: Arc<Mutex<Topic>>,
}

thread_local! {
    /// Taken out while in use (a subscriber's delivery may publish again
    /// on this thread, which then finds none).
    static LAST_TOPIC: Cell<Option<Box<TopicMemo>>> = const { Cell::new(None) };
}

impl LocalTopics {
    /// `destination`'s topic through the thread's memo, which is renewed
    /// (in the same allocation) when it is for another topic or set.
    fn memo(&self, destination: &Arc<str>) -> Result<Box<TopicMemo>, Failure> {
        let memo = LAST_TOPIC.with(|m| m.take());
        match memo {
            Some(m)
                if m.set == self.id
                    && (Arc::ptr_eq(&m.path, destination) || m.path == *destination) =>
            {
                Ok(m)
            }
            stale => {
                let fresh = TopicMemo {
                    set: self.id,
                    path: destination.clone(),
                    topic: self.topic(destination)?,
                };
                Ok(match stale {
                    Some(mut m) => {
                        *m = fresh;
                        m
                    }
                    None => Box::new(fresh),
                })
            }
        }
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

impl LocalTopics {
    /// Refuses a publish to a wildcard.
    pub fn check_publish(&self, destination: &str) -> Result<(), Failure> {
        if topic::is_filter(destination) {
            return Err(Failure::new(
                FailureKind::Rejected,
                format!("{destination}: cannot publish to a wildcard"),
            ));
        }
        Ok(())
    }

    /// Offers `message` to every live subscriber of its topic and of the
    /// patterns that match it. The last subscriber of the topic gets the
    /// message itself when no pattern is subscribed (1 -> 1 copies
    /// nothing).
    pub fn publish(&self, mut message: Message) -> Result<Receipt, Failure> {
        self.check_publish(&message.destination)?;
        let memo = self.memo(&message.destination)?;
        let id = message.id;
        message.delivery_count = 1;
        let (reached, backlog) = {
            let mut t = memo.topic.lock();
            let Topic { subs, meters, .. } = &mut *t;
            meters.published.inc();
            // Topic, then patterns: the one lock order, so each subscriber
            // sees a topic's messages in publish order. None subscribed
            // (read without the lock): no pattern lock either.
            let mut patterns =
                (self.live_patterns.load(Ordering::Acquire) > 0).then(|| self.patterns.lock());
            let mut round = Round {
                limits: &self.limits,
                clock: Clock::default(),
                meters,
                reached: 0,
                backlog: 0,
            };
            let last = subs
                .len()
                .checked_sub(1)
                .filter(|_| patterns.as_ref().is_none_or(|p| p.subs.is_empty()));
            let mut offered = subs.len();
            let mut owned = Some(message);
            let mut i = 0;
            subs.retain_mut(|s| {
                let at = i;
                i += 1;
                match &owned {
                    Some(m) if Some(at) != last => round.offer(s, Cow::Borrowed(m)),
                    _ => match owned.take() {
                        Some(m) => round.offer(s, Cow::Owned(m)),
                        None => true,
                    },
                }
            });
            if let (Some(message), Some(patterns)) = (&owned, patterns.as_mut()) {
                patterns.subs.retain_mut(|(p, s)| {
                    if !topic::matches(p, &message.destination) {
                        return true;
                    }
                    offered += 1;
                    round.offer(s, Cow::Borrowed(message))
                });
            }
            if offered == 0 {
                // Nobody listens: the message goes nowhere, counted.
                round.meters.dropped.inc();
            }
            let outcome = (round.reached, round.backlog);
            if let Some(p) = patterns.as_mut().filter(|_| offered > subs.len()) {
                p.gauges(&self.limits);
            }
            drop(patterns);
            t.gauges(&self.limits);
            outcome
        };
        LAST_TOPIC.with(|m| m.set(Some(memo)));
        Ok(Receipt {
            id,
            delivered_to: reached,
            backlog: backlog as u32,
        })
    }

    /// Attaches `consumer` to a topic, or to every topic a pattern
    /// (`+`, `#`) matches.
    pub fn subscribe(
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

    /// Ends every subscription; no new one is taken.
    pub fn stop(&self) {
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
        let patterns = {
            let mut p = self.patterns.lock();
            p.live.store(0, Ordering::Release);
            std::mem::take(&mut p.subs)
        };
        for (_, s) in patterns {
            s.outbox.close(why);
        }
    }

    /// Counters per topic, and per pattern (introspection: `/metrics`
    /// reads the meters).
    pub fn stats(&self) -> Vec<DestinationStats> {
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
