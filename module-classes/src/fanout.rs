//! What a fan-out driver keeps per subscriber: its credit, a bounded buffer,
//! the slow-subscriber policy, and the rule that tells a *slow* subscriber
//! from a *stalled* one.
//!
//! A topic hands each message to every subscriber. A subscriber with credit
//! gets it at once; one without credit gets it buffered, up to
//! [`Limits::buffer`] messages; past that the [`SlowPolicy`] decides. The
//! publisher learns how far behind the subscribers are from
//! [`Receipt::backlog`](crate::driver::Receipt::backlog) and may slow down
//! so that a subscriber that drains catches up instead of losing messages.
//!
//! # Slow and stalled
//!
//! Slowing publishers is right while every subscriber drains; it is wrong
//! for a subscriber that has stopped (a crashed app, a stuck consumer, a
//! half-open connection): it would hold every publisher, and through them
//! every healthy subscriber, to its pace of zero. So an [`Outbox`] is
//! **stalled** when messages wait for it and either
//!
//! - it has granted no credit for [`Limits::stall`] (consumers grant credit
//!   as deliveries leave: no credit means no bytes left its socket), or
//! - its buffer has stayed full for [`Limits::stall`], never draining to
//!   half (it takes messages, but too slowly for pacing to help).
//!
//! A stalled subscriber no longer counts toward the backlog a publisher
//! sees; its messages follow the policy (dropped and counted, or the
//! subscriber disconnected). It counts again once it has caught up: its
//! buffer drained to half (a client that reads a little now and then stays
//! stalled). Each change is logged with the consumer's
//! [name](crate::Consumer::name).
//!
//! The stall time is short by default (250 ms): a connection that drains
//! at any pace grants credit at least once per round trip, and what a
//! subscriber judged stalled too early risks is only what every client of
//! a broker that never slows publishers risks (mosquitto, nats-server):
//! drops by policy once its buffer is full.
//!
//! Every fan-out driver uses this one type, so the rule is the same for
//! every terminal and every driver.
//!
//! Longer than most files here: the one rule for slow and stalled
//! subscribers, with the tests that pin it.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::consumer::{Consumer, Delivery};
use crate::message::Message;

/// What happens to a new message when a subscriber's buffer is full.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SlowPolicy {
    /// Drop the oldest buffered message to make room (counted).
    DropOldest,
    /// Drop the new message (counted).
    DropNewest,
    /// End the subscription with [`Delivery::Closed`]: the terminal
    /// disconnects the client as a slow consumer.
    Disconnect,
}

/// Per-subscriber limits of a fan-out driver instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Messages buffered per subscriber beyond its credit.
    pub buffer: usize,
    /// What to do when that buffer is full.
    pub policy: SlowPolicy,
    /// How long a subscriber may make no progress (or keep a full buffer)
    /// before it is stalled and stops slowing publishers.
    pub stall: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            buffer: 1000,
            policy: SlowPolicy::DropOldest,
            stall: Duration::from_millis(250),
        }
    }
}

/// What became of one offered message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Offer {
    /// Handed to the consumer now.
    Delivered,
    /// Buffered until the consumer grants credit.
    Buffered,
    /// Buffered, and the oldest buffered message dropped to make room.
    DroppedOldest,
    /// Dropped: the buffer was full.
    DroppedNewest,
    /// Dropped, and the subscription ended (the consumer was told why).
    Disconnected,
}

impl Offer {
    /// The message reached the subscriber (now or in its buffer).
    pub fn reached(self) -> bool {
        matches!(
            self,
            Offer::Delivered | Offer::Buffered | Offer::DroppedOldest
        )
    }

    /// A message was dropped.
    pub fn dropped(self) -> bool {
        matches!(
            self,
            Offer::DroppedOldest | Offer::DroppedNewest | Offer::Disconnected
        )
    }

    /// The subscription goes on.
    pub fn keeps(self) -> bool {
        self != Offer::Disconnected
    }
}

/// The current time, read at most once however many subscribers ask.
#[derive(Default)]
pub struct Clock(Option<Instant>);

impl Clock {
    /// A clock that reads `at` (tests, or a caller that has the time).
    pub fn at(at: Instant) -> Clock {
        Clock(Some(at))
    }

    /// Now, as first read by this clock.
    pub fn now(&mut self) -> Instant {
        *self.0.get_or_insert_with(Instant::now)
    }
}

/// One subscriber of a fan-out destination: credit, buffer and progress.
pub struct Outbox {
    consumer: Consumer,
    /// What it subscribed to (a path or a pattern), for log lines.
    subscribed: Arc<str>,
    credit: u32,
    buffer: VecDeque<Message>,
    /// When it last granted credit or, if later, when a message last began
    /// to wait for it.
    progress: Instant,
    /// Since when the buffer has been full without draining to half.
    full_since: Option<Instant>,
    /// Stalled, as last judged (for the log line at each change).
    stalled: bool,
    dropped: u64,
}

impl Outbox {
    /// A subscriber of `subscribed` with `credit` to start with.
    pub fn new(consumer: Consumer, subscribed: &str, credit: u32) -> Outbox {
        Outbox {
            consumer,
            subscribed: subscribed.into(),
            credit,
            buffer: VecDeque::new(),
            progress: Instant::now(),
            full_since: None,
            stalled: false,
            dropped: 0,
        }
    }

    /// Messages buffered.
    pub fn buffered(&self) -> usize {
        self.buffer.len()
    }

    /// Messages dropped for this subscriber so far.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Offers `message`: delivered with credit, else buffered, else the
    /// policy decides.
    pub fn offer(&mut self, message: &Message, limits: &Limits, clock: &mut Clock) -> Offer {
        self.offer_cow(Cow::Borrowed(message), limits, clock)
    }

    /// [`Outbox::offer`] for the last subscriber a message reaches: the
    /// message moves instead of being copied.
    pub fn offer_owned(&mut self, message: Message, limits: &Limits, clock: &mut Clock) -> Offer {
        self.offer_cow(Cow::Owned(message), limits, clock)
    }

    fn offer_cow(
        &mut self,
        message: Cow<'_, Message>,
        limits: &Limits,
        clock: &mut Clock,
    ) -> Offer {
        if self.credit > 0 && self.buffer.is_empty() {
            self.credit -= 1;
            self.consumer
                .deliver(Delivery::Message(message.into_owned()));
            return Offer::Delivered;
        }
        if self.buffer.is_empty() {
            // It starts waiting now: progress is judged from here.
            self.progress = self.progress.max(clock.now());
        }
        if self.buffer.len() < limits.buffer {
            self.buffer.push_back(message.into_owned());
            if self.buffer.len() >= limits.buffer {
                self.full_since.get_or_insert_with(|| clock.now());
            }
            return Offer::Buffered;
        }
        self.full_since.get_or_insert_with(|| clock.now());
        self.dropped += 1;
        match limits.policy {
            SlowPolicy::DropOldest => {
                self.buffer.pop_front();
                self.buffer.push_back(message.into_owned());
                Offer::DroppedOldest
            }
            SlowPolicy::DropNewest => Offer::DroppedNewest,
            SlowPolicy::Disconnect => {
                tracing::warn!(
                    subscriber = %self.consumer.name(),
                    subscribed = %self.subscribed,
                    buffered = self.buffer.len(),
                    "disconnecting a slow consumer: its buffer is full"
                );
                self.consumer.deliver(Delivery::Closed(format!(
                    "{}: slow consumer: {} messages buffered and not taken",
                    message.destination,
                    self.buffer.len()
                )));
                Offer::Disconnected
            }
        }
    }

    /// Adds credit and delivers what is buffered; returns how many left the
    /// buffer.
    pub fn credit(&mut self, n: u32, limits: &Limits, clock: &mut Clock) -> usize {
        if n == 0 {
            return 0;
        }
        self.credit = self.credit.saturating_add(n);
        let before = self.buffer.len();
        while self.credit > 0 {
            let Some(m) = self.buffer.pop_front() else {
                break;
            };
            self.credit -= 1;
            self.consumer.deliver(Delivery::Message(m));
        }
        self.progress = clock.now();
        if self.buffer.len() <= limits.buffer / 2 {
            // Drained to half: it is catching up.
            self.full_since = None;
            self.resume();
        }
        before - self.buffer.len()
    }

    /// A stalled subscriber caught up.
    fn resume(&mut self) {
        if self.stalled {
            self.stalled = false;
            tracing::info!(
                subscriber = %self.consumer.name(),
                subscribed = %self.subscribed,
                dropped = self.dropped,
                "a stalled subscriber caught up: it slows publishers again"
            );
        }
    }

    /// Ends the subscription: the consumer gets [`Delivery::Closed`] with
    /// `reason` (the driver is stopping).
    pub fn close(self, reason: &str) {
        self.consumer
            .deliver(Delivery::Closed(format!("{}: {reason}", self.subscribed)));
    }

    /// Whether the subscriber is stalled now (see the module docs); logs
    /// when it becomes so.
    pub fn is_stalled(&mut self, limits: &Limits, clock: &mut Clock) -> bool {
        if self.buffer.is_empty() {
            self.resume();
            return false;
        }
        if self.stalled {
            return true;
        }
        let now = clock.now();
        let idle = now.saturating_duration_since(self.progress) >= limits.stall;
        let full = self
            .full_since
            .is_some_and(|t| now.saturating_duration_since(t) >= limits.stall);
        let stalled = idle || full;
        if stalled {
            tracing::info!(
                subscriber = %self.consumer.name(),
                subscribed = %self.subscribed,
                buffered = self.buffer.len(),
                dropped = self.dropped,
                reason = if idle { "took nothing" } else { "kept a full buffer" },
                stall_ms = limits.stall.as_millis() as u64,
                "a subscriber is stalled: it no longer slows publishers"
            );
        }
        self.stalled = stalled;
        stalled
    }

    /// The backlog this subscriber puts on publishers: what is buffered for
    /// it, or 0 when it is stalled.
    pub fn backlog(&mut self, limits: &Limits, clock: &mut Clock) -> usize {
        if self.buffer.is_empty() || self.is_stalled(limits, clock) {
            0
        } else {
            self.buffer.len()
        }
    }
}

impl Drop for Outbox {
    fn drop(&mut self) {
        if self.dropped > 0 {
            tracing::info!(
                subscriber = %self.consumer.name(),
                subscribed = %self.subscribed,
                dropped = self.dropped,
                "a subscription ended that had messages dropped"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(buffer: usize, policy: SlowPolicy) -> Limits {
        Limits {
            buffer,
            policy,
            stall: Duration::from_millis(50),
        }
    }

    fn m(i: u32) -> Message {
        Message::new("/t/x", "text/plain", i.to_string())
    }

    /// A clock `ms` milliseconds after `t0`.
    fn at(t0: Instant, ms: u64) -> Clock {
        Clock::at(t0 + Duration::from_millis(ms))
    }

    #[test]
    fn a_draining_subscriber_counts_and_a_stalled_one_stops_counting() {
        let l = limits(10, SlowPolicy::DropOldest);
        let (c, rx) = Consumer::channel();
        let mut o = Outbox::new(c, "/t/x", 1);
        let t0 = Instant::now();
        assert_eq!(o.offer(&m(0), &l, &mut at(t0, 0)), Offer::Delivered);
        for i in 1..5 {
            assert_eq!(o.offer(&m(i), &l, &mut at(t0, 1)), Offer::Buffered);
        }
        assert_eq!(o.backlog(&l, &mut at(t0, 40)), 4);
        // No credit for longer than `stall`: stalled, no backlog.
        assert_eq!(o.backlog(&l, &mut at(t0, 60)), 0);
        assert!(o.is_stalled(&l, &mut at(t0, 61)));
        // Credit: it counts again at once.
        assert_eq!(o.credit(2, &l, &mut at(t0, 70)), 2);
        assert!(!o.is_stalled(&l, &mut at(t0, 71)));
        assert_eq!(o.backlog(&l, &mut at(t0, 72)), 2);
        // And stalls again when it stops again.
        assert_eq!(o.backlog(&l, &mut at(t0, 130)), 0);
        assert_eq!(rx.try_iter().count(), 3);
    }

    #[test]
    fn a_full_buffer_past_the_stall_time_is_stalled_even_with_some_credit() {
        let l = limits(4, SlowPolicy::DropOldest);
        let (c, _rx) = Consumer::channel();
        let mut o = Outbox::new(c, "/t/x", 0);
        let t0 = Instant::now();
        for i in 0..6 {
            o.offer(&m(i), &l, &mut at(t0, 0));
        }
        assert_eq!(o.dropped(), 2);
        // A trickle of credit: progress, but the buffer never drains to
        // half, so it has been full since t0.
        for k in 1..8 {
            o.credit(1, &l, &mut at(t0, k * 10));
            o.offer(&m(9), &l, &mut at(t0, k * 10 + 1));
            let stalled = o.is_stalled(&l, &mut at(t0, k * 10 + 2));
            assert_eq!(stalled, k * 10 + 2 >= 50, "at {}", k * 10 + 2);
        }
        // Draining to half resets it.
        o.credit(2, &l, &mut at(t0, 100));
        assert!(!o.is_stalled(&l, &mut at(t0, 101)));
    }

    #[test]
    fn a_stalled_subscriber_counts_again_only_once_it_caught_up() {
        let l = limits(10, SlowPolicy::DropOldest);
        let (c, _rx) = Consumer::channel();
        let mut o = Outbox::new(c, "/t/x", 0);
        let t0 = Instant::now();
        for i in 0..10 {
            o.offer(&m(i), &l, &mut at(t0, 0));
        }
        assert!(o.is_stalled(&l, &mut at(t0, 60)));
        // A little now and then: still stalled.
        o.credit(1, &l, &mut at(t0, 70));
        o.offer(&m(10), &l, &mut at(t0, 71));
        assert!(o.is_stalled(&l, &mut at(t0, 72)));
        assert_eq!(o.backlog(&l, &mut at(t0, 73)), 0);
        // Drained to half: it counts again.
        o.credit(5, &l, &mut at(t0, 80));
        assert!(!o.is_stalled(&l, &mut at(t0, 81)));
        assert_eq!(o.backlog(&l, &mut at(t0, 82)), 5);
    }

    #[test]
    fn waiting_starts_when_the_first_message_waits_not_at_subscribe() {
        let l = limits(10, SlowPolicy::DropOldest);
        let (c, _rx) = Consumer::channel();
        let mut o = Outbox::new(c, "/t/x", 0);
        let t0 = Instant::now();
        // Idle (nothing to take) for longer than `stall`: not stalled.
        o.offer(&m(0), &l, &mut at(t0, 500));
        assert!(!o.is_stalled(&l, &mut at(t0, 510)));
        assert_eq!(o.backlog(&l, &mut at(t0, 520)), 1);
        assert_eq!(o.backlog(&l, &mut at(t0, 560)), 0);
    }

    #[test]
    fn policies_drop_and_count_or_disconnect() {
        for (policy, offers) in [
            (
                SlowPolicy::DropOldest,
                [Offer::Buffered, Offer::DroppedOldest],
            ),
            (
                SlowPolicy::DropNewest,
                [Offer::Buffered, Offer::DroppedNewest],
            ),
            (
                SlowPolicy::Disconnect,
                [Offer::Buffered, Offer::Disconnected],
            ),
        ] {
            let l = limits(1, policy);
            let (c, rx) = Consumer::channel();
            let mut o = Outbox::new(c.named("test client"), "/t/x", 0);
            let got = [
                o.offer(&m(0), &l, &mut Clock::default()),
                o.offer(&m(1), &l, &mut Clock::default()),
            ];
            assert_eq!(got, offers, "{policy:?}");
            assert_eq!(o.dropped(), 1);
            let closed = rx.try_iter().next();
            assert_eq!(
                matches!(&closed, Some(Delivery::Closed(r)) if r.contains("slow consumer")),
                policy == SlowPolicy::Disconnect,
                "{policy:?}: {closed:?}"
            );
        }
    }
}
