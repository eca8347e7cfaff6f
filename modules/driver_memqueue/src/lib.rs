//! `driver.memqueue`: in-memory FIFO queues.
//!
//! Every destination under the instance's path prefixes is a queue, made on
//! first use. Each message goes to one consumer (competing consumers take
//! turns), leased: an ack settles it; a lease that runs out puts it back at
//! the head of the queue with its delivery count raised. A queue holds at
//! most `max_depth` messages (waiting plus leased); a publish beyond that
//! fails with `Full` and a retry hint, so memory stays bounded.
//!
//! Not durable: a restart loses everything. Use `driver.filequeue` for that.
//!
//! ```toml
//! [instances.memory.config]
//! max_depth = 100000        # messages per queue, waiting + leased
//! max_queues = 10000        # destinations per instance
//! ```

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use bindery::{Completion, Failure, FailureKind};
use bindery_classes::driver::{self, DestinationStats, DriverInfo, Receipt, SubscribeOptions};
use bindery_classes::{
    Consumer, Delivery, Driver, Message, MessageId, Subscription, SubscriptionControl,
};
use dashmap::DashMap;
use parking_lot::{Condvar, Mutex};
use serde::Deserialize;

bindery::module! {
    class: "driver",
    name: "memqueue",
    description: "in-memory FIFO queues with leases, acks, redelivery and bounded depth",
    main: module_main,
}

/// The instance configuration.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Messages per queue, waiting plus leased.
    pub max_depth: usize,
    /// Queues per instance.
    pub max_queues: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_depth: 100_000,
            max_queues: 10_000,
        }
    }
}

fn module_main(reg: &mut bindery::Registrar<'_>) -> Result<(), bindery::BoxError> {
    driver::register(reg, |cx| {
        let config: Config = cx.config().parse()?;
        if config.max_depth == 0 {
            return Err(format!("instance {:?}: max_depth must be at least 1", cx.name()).into());
        }
        Ok(MemQueue::new(config))
    });
    Ok(())
}

/// An instance: a set of queues, and the thread that returns expired
/// leases of idle queues (stopped when the instance is dropped).
pub struct MemQueue {
    shared: Arc<Shared>,
    reaper: Option<Reaper>,
}

struct Shared {
    config: Config,
    queues: DashMap<Box<str>, Arc<Mutex<Queue>>>,
}

struct Lease {
    message: Message,
    until: Instant,
}

struct Sub {
    id: u64,
    consumer: Consumer,
    credit: u32,
    lease: Duration,
}

#[derive(Default)]
struct Queue {
    ready: VecDeque<Message>,
    leased: HashMap<MessageId, Lease>,
    expiries: BinaryHeap<Reverse<(Instant, MessageId)>>,
    subs: Vec<Sub>,
    next_sub: u64,
    turn: usize,
    stats: DestinationStats,
}

impl Queue {
    fn depth(&self) -> usize {
        self.ready.len() + self.leased.len()
    }

    /// Puts expired leases back at the head, oldest first.
    fn expire(&mut self, now: Instant) {
        let mut back = Vec::new();
        while let Some(&Reverse((until, id))) = self.expiries.peek() {
            if until > now {
                break;
            }
            self.expiries.pop();
            if let Some(lease) = self.leased.get(&id) {
                if lease.until == until {
                    back.push(self.leased.remove(&id).map(|l| l.message));
                }
            }
        }
        for m in back.into_iter().flatten().rev() {
            self.ready.push_front(m);
        }
    }

    /// Hands waiting messages to consumers with credit, in turn.
    fn pump(&mut self, now: Instant) {
        self.expire(now);
        while !self.ready.is_empty() {
            let n = self.subs.len();
            let Some(k) = (0..n)
                .map(|i| (self.turn + i) % n)
                .find(|&k| self.subs[k].credit > 0)
            else {
                return;
            };
            self.turn = k + 1;
            let Some(mut message) = self.ready.pop_front() else {
                return;
            };
            message.delivery_count += 1;
            let sub = &mut self.subs[k];
            sub.credit -= 1;
            let until = now + sub.lease;
            self.expiries.push(Reverse((until, message.id)));
            self.leased.insert(
                message.id,
                Lease {
                    message: message.clone(),
                    until,
                },
            );
            self.stats.delivered += 1;
            sub.consumer.deliver(Delivery::Message(message));
        }
    }
}

impl MemQueue {
    /// A new instance.
    pub fn new(config: Config) -> MemQueue {
        let shared = Arc::new(Shared {
            config,
            queues: DashMap::new(),
        });
        let reaper = Reaper::start(&shared);
        MemQueue {
            shared,
            reaper: Some(reaper),
        }
    }

    fn queue(&self, destination: &str, create: bool) -> Result<Arc<Mutex<Queue>>, Failure> {
        if let Some(q) = self.shared.queues.get(destination) {
            return Ok(q.clone());
        }
        if !create {
            return Err(Failure::new(
                FailureKind::NotFound,
                format!("no queue {destination}"),
            ));
        }
        if self.shared.queues.len() >= self.shared.config.max_queues {
            return Err(Failure::new(
                FailureKind::Full,
                format!(
                    "{destination}: this instance holds its maximum of {} queues",
                    self.shared.config.max_queues
                ),
            ));
        }
        Ok(self
            .shared
            .queues
            .entry(destination.into())
            .or_insert_with(|| {
                Arc::new(Mutex::new(Queue {
                    stats: DestinationStats {
                        destination: destination.to_owned(),
                        ..Default::default()
                    },
                    ..Default::default()
                }))
            })
            .clone())
    }
}

impl Drop for MemQueue {
    fn drop(&mut self) {
        if let Some(r) = self.reaper.take() {
            r.stop();
        }
    }
}

/// The lease reaper's thread.
struct Reaper {
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Reaper {
    fn start(shared: &Arc<Shared>) -> Reaper {
        let weak = Arc::downgrade(shared);
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let s = stop.clone();
        let thread = std::thread::Builder::new()
            .name("memqueue-leases".into())
            .spawn(move || reap(weak, s))
            .ok();
        Reaper { stop, thread }
    }

    fn stop(self) {
        *self.stop.0.lock() = true;
        self.stop.1.notify_all();
        if let Some(t) = self.thread {
            let _ = t.join();
        }
    }
}

fn reap(shared: Weak<Shared>, stop: Arc<(Mutex<bool>, Condvar)>) {
    loop {
        {
            let mut stopped = stop.0.lock();
            if *stopped {
                return;
            }
            stop.1.wait_for(&mut stopped, Duration::from_millis(20));
            if *stopped {
                return;
            }
        }
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let now = Instant::now();
        let queues: Vec<_> = shared.queues.iter().map(|e| e.value().clone()).collect();
        for q in queues {
            let mut q = q.lock();
            if q.expiries.peek().is_some_and(|Reverse((t, _))| *t <= now) {
                q.pump(now);
            }
        }
    }
}

struct QueueSub {
    queue: Weak<Mutex<Queue>>,
    id: u64,
}

impl SubscriptionControl for QueueSub {
    fn credit(&self, n: u32) {
        if let Some(q) = self.queue.upgrade() {
            let mut q = q.lock();
            if let Some(s) = q.subs.iter_mut().find(|s| s.id == self.id) {
                s.credit = s.credit.saturating_add(n);
            }
            q.pump(Instant::now());
        }
    }

    fn cancel(&self) {
        if let Some(q) = self.queue.upgrade() {
            q.lock().subs.retain(|s| s.id != self.id);
        }
    }
}

impl Driver for MemQueue {
    fn info(&self) -> DriverInfo {
        DriverInfo {
            queue: true,
            durable: false,
        }
    }

    fn publish(&self, message: Message, done: Completion<Receipt>) {
        let q = match self.queue(&message.destination, true) {
            Ok(q) => q,
            Err(f) => return done.fail(f),
        };
        let id = message.id;
        {
            let mut q = q.lock();
            let now = Instant::now();
            q.expire(now);
            if q.depth() >= self.shared.config.max_depth {
                q.stats.refused += 1;
                drop(q);
                return done.fail(
                    Failure::new(
                        FailureKind::Full,
                        format!(
                            "{}: queue is full ({} messages)",
                            message.destination, self.shared.config.max_depth
                        ),
                    )
                    .retry_after(Duration::from_secs(1)),
                );
            }
            q.stats.published += 1;
            q.ready.push_back(message);
            q.pump(now);
        }
        done.succeed(Receipt {
            id,
            delivered_to: 0,
        });
    }

    fn subscribe(
        &self,
        destination: &str,
        consumer: Consumer,
        options: SubscribeOptions,
    ) -> Result<Subscription, Failure> {
        let q = self.queue(destination, true)?;
        let id = {
            let mut g = q.lock();
            let id = g.next_sub;
            g.next_sub += 1;
            g.subs.push(Sub {
                id,
                consumer,
                credit: options.credit,
                lease: options.lease,
            });
            g.pump(Instant::now());
            id
        };
        Ok(Subscription::new(Arc::new(QueueSub {
            queue: Arc::downgrade(&q),
            id,
        })))
    }

    fn ack(&self, destination: &str, id: MessageId) -> Result<(), Failure> {
        let q = self.queue(destination, false)?;
        let mut q = q.lock();
        match q.leased.remove(&id) {
            Some(_) => {
                q.stats.acked += 1;
                Ok(())
            }
            None => Err(Failure::new(
                FailureKind::NotFound,
                format!(
                    "{destination}: no leased message {id} (unknown, acked, or its lease ran out)"
                ),
            )),
        }
    }

    fn release(&self, destination: &str, id: MessageId) -> Result<(), Failure> {
        let q = self.queue(destination, false)?;
        let mut q = q.lock();
        match q.leased.remove(&id) {
            Some(lease) => {
                let mut m = lease.message;
                m.delivery_count = m.delivery_count.saturating_sub(1);
                q.ready.push_front(m);
                q.pump(Instant::now());
                Ok(())
            }
            None => Err(Failure::new(
                FailureKind::NotFound,
                format!("{destination}: no leased message {id}"),
            )),
        }
    }

    fn stats(&self) -> Vec<DestinationStats> {
        let mut out: Vec<DestinationStats> = self
            .shared
            .queues
            .iter()
            .map(|e| {
                let q = e.value().lock();
                DestinationStats {
                    depth: q.ready.len() as u64,
                    leased: q.leased.len() as u64,
                    consumers: q.subs.len() as u64,
                    ..q.stats.clone()
                }
            })
            .collect();
        out.sort_by(|a, b| a.destination.cmp(&b.destination));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn publish(q: &MemQueue, dest: &str, body: &str) -> Result<Receipt, Failure> {
        let (done, rx) = Completion::channel();
        q.publish(Message::new(dest, "text/plain", body.to_owned()), done);
        rx.recv().unwrap()
    }

    fn body(d: Delivery) -> (String, u32, MessageId) {
        match d {
            Delivery::Message(m) => (
                String::from_utf8(m.body.to_vec()).unwrap(),
                m.delivery_count,
                m.id,
            ),
            Delivery::Closed(r) => panic!("closed: {r}"),
        }
    }

    #[test]
    fn fifo_lease_ack_and_redelivery() {
        let q = MemQueue::new(Config::default());
        publish(&q, "/q/a", "1").unwrap();
        publish(&q, "/q/a", "2").unwrap();
        let (c, rx) = Consumer::channel();
        let lease = Duration::from_millis(50);
        let sub = q
            .subscribe("/q/a", c, SubscribeOptions { credit: 1, lease })
            .unwrap();
        let (b, n, id) = body(rx.recv().unwrap());
        assert_eq!((b.as_str(), n), ("1", 1));
        assert!(rx.try_recv().is_err(), "credit was 1");
        sub.credit(1);
        let (b, n, id2) = body(rx.recv().unwrap());
        assert_eq!((b.as_str(), n), ("2", 1));
        q.ack("/q/a", id2).unwrap();
        // "1" was not acked: it comes back after its lease, counted.
        sub.credit(1);
        let (b, n, again) = body(rx.recv_timeout(Duration::from_secs(5)).unwrap());
        assert_eq!((b.as_str(), n, again), ("1", 2, id));
        q.ack("/q/a", id).unwrap();
        assert_eq!(q.ack("/q/a", id).unwrap_err().kind, FailureKind::NotFound);
        let st = &q.stats()[0];
        assert_eq!((st.depth, st.leased, st.acked, st.delivered), (0, 0, 2, 3));
    }

    #[test]
    fn bounded_depth_refuses_with_full() {
        let q = MemQueue::new(Config {
            max_depth: 2,
            ..Config::default()
        });
        publish(&q, "/q/x", "a").unwrap();
        publish(&q, "/q/x", "b").unwrap();
        let f = publish(&q, "/q/x", "c").unwrap_err();
        assert_eq!(f.kind, FailureKind::Full);
        assert!(f.retry_after.is_some());
        assert_eq!(q.stats()[0].refused, 1);
    }

    #[test]
    fn competing_consumers_take_turns() {
        let q = MemQueue::new(Config::default());
        let (c1, r1) = Consumer::channel();
        let (c2, r2) = Consumer::channel();
        let opts = SubscribeOptions {
            credit: 100,
            lease: Duration::from_secs(60),
        };
        let _s1 = q.subscribe("/q/c", c1, opts).unwrap();
        let _s2 = q.subscribe("/q/c", c2, opts).unwrap();
        for i in 0..10 {
            publish(&q, "/q/c", &i.to_string()).unwrap();
        }
        assert_eq!(r1.try_iter().count(), 5);
        assert_eq!(r2.try_iter().count(), 5);
    }
}
