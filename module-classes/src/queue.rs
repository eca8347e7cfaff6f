//! A set of in-memory queues with leases, acks, redelivery and bounded
//! depth: the state machine a queue driver keeps, whatever its storage.
//!
//! `driver.memqueue` is this and nothing else; `driver.filequeue` journals
//! each publish and ack, then applies it here. Every destination is a queue,
//! made on first use. A message goes to one consumer (competing consumers
//! take turns), leased; an ack settles it; a lease that runs out puts it
//! back at the head of its queue with its delivery count raised. A queue
//! holds at most `max_depth` messages, counting those being stored
//! ([`Reservation`]), those waiting and those leased.
//!
//! Longer than most files here: the queue state machine, its lock guard
//! that keeps the gauges current, and the lease reaper: one lock
//! discipline.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use bindery::{Failure, FailureKind};
use parking_lot::{Condvar, Mutex, MutexGuard};

use crate::consumer::{Consumer, Delivery, Subscription, SubscriptionControl};
use crate::driver::{DeleteOptions, DestinationStats, SubscribeOptions};
use crate::message::{Message, MessageId};
use crate::metrics::{DestinationMeters, Scope};

/// How big queues may grow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueLimits {
    /// Messages per queue: being stored, waiting and leased.
    pub max_depth: usize,
    /// Queues per set.
    pub max_queues: usize,
}

/// A set of queues, and the thread that returns expired leases of idle
/// queues (stopped when the set is dropped).
pub struct Queues {
    shared: Arc<Shared>,
    reaper: Option<Reaper>,
}

struct Shared {
    limits: QueueLimits,
    scope: Scope,
    /// By path (foldhash with a random seed per map: paths come from
    /// clients, and SipHash cost a fifth of a memory-queue publish).
    queues:
        parking_lot::RwLock<HashMap<Box<str>, Arc<Mutex<Queue>>, foldhash::quality::RandomState>>,
    /// Set by [`Queues::close`]: no new subscription after it.
    closed: std::sync::atomic::AtomicBool,
    /// Whether the store refuses publishes for space, and every queue's
    /// gauge of it ([`Queues::set_store_full`]).
    store_full: Mutex<(bool, Vec<crate::metrics::Gauge>)>,
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

struct Queue {
    ready: VecDeque<Message>,
    leased: HashMap<MessageId, Lease, foldhash::fast::RandomState>,
    expiries: BinaryHeap<Reverse<(Instant, MessageId)>>,
    subs: Vec<Sub>,
    next_sub: u64,
    turn: usize,
    pending: usize,
    meters: DestinationMeters,
}

/// A queue, locked; its gauges are brought up to date when the lock goes,
/// so `/metrics` reads them without taking it.
struct Locked<'a>(MutexGuard<'a, Queue>);

fn lock(q: &Mutex<Queue>) -> Locked<'_> {
    Locked(q.lock())
}

impl std::ops::Deref for Locked<'_> {
    type Target = Queue;
    fn deref(&self) -> &Queue {
        &self.0
    }
}

impl std::ops::DerefMut for Locked<'_> {
    fn deref_mut(&mut self) -> &mut Queue {
        &mut self.0
    }
}

impl Drop for Locked<'_> {
    fn drop(&mut self) {
        let q = &self.0;
        q.meters.depth.set((q.ready.len() + q.pending) as u64);
        q.meters.leased.set(q.leased.len() as u64);
        q.meters.consumers.set(q.subs.len() as u64);
    }
}

impl Queue {
    fn depth(&self) -> usize {
        self.ready.len() + self.leased.len() + self.pending
    }

    /// Puts expired leases back at the head, oldest first.
    fn expire(&mut self, now: Instant) {
        let mut back = Vec::new();
        while let Some(&Reverse((until, id))) = self.expiries.peek() {
            if until > now {
                break;
            }
            self.expiries.pop();
            if self.leased.get(&id).is_some_and(|l| l.until == until) {
                back.extend(self.leased.remove(&id).map(|l| l.message));
            }
        }
        for m in back.into_iter().rev() {
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
            self.meters.delivered.inc();
            sub.consumer.deliver(Delivery::Message(message));
        }
    }
}

/// Room held for one message while it is being stored; [`Reservation::fill`]
/// makes the message deliverable, dropping gives the room back.
pub struct Reservation {
    queue: Arc<Mutex<Queue>>,
    filled: bool,
}

impl Reservation {
    /// Appends `message` to its queue and delivers it if a consumer waits.
    pub fn fill(mut self, message: Message) {
        self.filled = true;
        let mut q = lock(&self.queue);
        q.pending -= 1;
        q.meters.published.inc();
        q.ready.push_back(message);
        q.pump(Instant::now());
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if !self.filled {
            lock(&self.queue).pending -= 1;
        }
    }
}

impl Queues {
    /// An empty set, whose queues' meters register in `scope`.
    pub fn new(limits: QueueLimits, scope: Scope) -> Queues {
        let shared = Arc::new(Shared {
            limits,
            scope,
            queues: parking_lot::RwLock::new(HashMap::default()),
            closed: std::sync::atomic::AtomicBool::new(false),
            store_full: Mutex::new((false, Vec::new())),
        });
        let reaper = Reaper::start(&shared);
        Queues {
            shared,
            reaper: Some(reaper),
        }
    }

    fn queue(&self, destination: &str, create: bool) -> Result<Arc<Mutex<Queue>>, Failure> {
        if let Some(q) = self.shared.queues.read().get(destination) {
            return Ok(q.clone());
        }
        if !create {
            return Err(Failure::new(
                FailureKind::NotFound,
                format!("no queue {destination}"),
            ));
        }
        let mut all = self.shared.queues.write();
        if let Some(q) = all.get(destination) {
            return Ok(q.clone());
        }
        if all.len() >= self.shared.limits.max_queues {
            // Waiting would not help: queues stay once made.
            return Err(Failure::new(
                FailureKind::Capacity,
                format!(
                    "{destination}: instance {:?} holds its maximum of {} queues made on first use \
                     (max_queues); use an existing queue or raise max_queues",
                    self.shared.scope.instance(),
                    self.shared.limits.max_queues
                ),
            ));
        }
        let q = Arc::new(Mutex::new(Queue {
            ready: VecDeque::new(),
            leased: HashMap::default(),
            expiries: BinaryHeap::new(),
            subs: Vec::new(),
            next_sub: 0,
            turn: 0,
            pending: 0,
            meters: self.shared.scope.destination(destination),
        }));
        {
            let mut full = self.shared.store_full.lock();
            let gauge = q.lock().meters.store_full.clone();
            gauge.set(u64::from(full.0));
            full.1.push(gauge);
        }
        all.insert(destination.into(), q.clone());
        Ok(q)
    }

    /// Ends every subscription with [`Delivery::Closed`] and `reason` (the
    /// instance is stopping). Messages stay where they are.
    pub fn close(&self, reason: &str) {
        // Before the queues are drained: a subscription made meanwhile is
        // either drained below or refused (it checks under the queue lock).
        self.shared
            .closed
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let queues: Vec<_> = self.shared.queues.read().values().cloned().collect();
        for q in queues {
            let (destination, subs) = {
                let mut g = lock(&q);
                (
                    g.meters.destination().to_owned(),
                    std::mem::take(&mut g.subs),
                )
            };
            for s in subs {
                s.consumer
                    .deliver(Delivery::Closed(format!("{destination}: {reason}")));
            }
        }
    }

    /// Holds room for one message at `destination`, or fails with `Full`
    /// (and a retry hint) when the queue is at its depth.
    pub fn reserve(&self, destination: &str) -> Result<Reservation, Failure> {
        let queue = self.queue(destination, true)?;
        {
            let mut q = lock(&queue);
            q.expire(Instant::now());
            if q.depth() >= self.shared.limits.max_depth {
                q.meters.refused.inc();
                return Err(Failure::new(
                    FailureKind::Full,
                    format!(
                        "{destination}: queue is full ({} messages)",
                        self.shared.limits.max_depth
                    ),
                )
                .retry_after(Duration::from_secs(1)));
            }
            q.pending += 1;
        }
        Ok(Reservation {
            queue,
            filled: false,
        })
    }

    /// Says whether the store behind these queues refuses publishes for
    /// lack of space (`bindery_destination_store_full` on every queue).
    /// Takes no queue's lock: callable from under one.
    pub fn set_store_full(&self, full: bool) {
        let mut s = self.shared.store_full.lock();
        s.0 = full;
        for g in &s.1 {
            g.set(u64::from(full));
        }
    }

    /// Counts a publish to `destination` refused for a reason of the
    /// driver's own (its store is full), as `refused` counts those refused
    /// at the depth. A destination not yet made is not made for it.
    pub fn refused(&self, destination: &str) {
        if let Some(q) = self.shared.queues.read().get(destination) {
            q.lock().meters.refused.inc();
        }
    }

    /// Puts a recovered message back, whatever the depth (recovery must not
    /// lose what was confirmed).
    pub fn restore(&self, message: Message) -> Result<(), Failure> {
        let queue = self.queue(&message.destination, true)?;
        let mut q = lock(&queue);
        q.meters.published.inc();
        q.ready.push_back(message);
        Ok(())
    }

    /// Attaches a consumer to `destination`.
    pub fn subscribe(
        &self,
        destination: &str,
        consumer: Consumer,
        options: SubscribeOptions,
    ) -> Result<Subscription, Failure> {
        if crate::topic::is_filter(destination) {
            return Err(Failure::new(
                FailureKind::Unsupported,
                format!("{destination}: a queue has no wildcard subscriptions"),
            ));
        }
        let q = self.queue(destination, true)?;
        let id = {
            let mut g = lock(&q);
            if self.shared.closed.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(Failure::new(
                    FailureKind::Unavailable,
                    format!("{destination}: the driver instance is stopping"),
                )
                .retry_after(Duration::from_secs(1)));
            }
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

    /// Settles a leased message.
    pub fn ack(&self, destination: &str, id: MessageId) -> Result<(), Failure> {
        let q = self.queue(destination, false)?;
        let mut q = lock(&q);
        match q.leased.remove(&id) {
            Some(_) => {
                q.meters.acked.inc();
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

    /// Gives a leased message back at once, uncounted.
    pub fn release(&self, destination: &str, id: MessageId) -> Result<(), Failure> {
        self.give_back(destination, id, false)
    }

    /// Gives a leased message back at once, its delivery counted (see
    /// [`crate::Driver::retry`]).
    pub fn retry(&self, destination: &str, id: MessageId) -> Result<(), Failure> {
        self.give_back(destination, id, true)
    }

    fn give_back(&self, destination: &str, id: MessageId, counted: bool) -> Result<(), Failure> {
        let q = self.queue(destination, false)?;
        let mut q = lock(&q);
        match q.leased.remove(&id) {
            Some(lease) => {
                let mut m = lease.message;
                if !counted {
                    m.delivery_count = m.delivery_count.saturating_sub(1);
                }
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

    /// Removes the messages waiting at `destination` (not those leased);
    /// returns their ids, for a journal to record.
    pub fn purge(&self, destination: &str) -> Result<Vec<MessageId>, Failure> {
        let q = self.queue(destination, false)?;
        let mut q = lock(&q);
        Ok(q.ready.drain(..).map(|m| m.id).collect())
    }

    /// Deletes queue `destination` as [`crate::Driver::delete`] says;
    /// returns the ids of the messages dropped (waiting and leased), for a
    /// journal to record. A publish being stored meanwhile goes into the
    /// deleted queue and is lost with it.
    pub fn delete(
        &self,
        destination: &str,
        options: DeleteOptions,
    ) -> Result<Vec<MessageId>, Failure> {
        let (dropped, subs) = {
            let mut all = self.shared.queues.write();
            let Some(queue) = all.get(destination).cloned() else {
                return Err(Failure::new(
                    FailureKind::NotFound,
                    format!("no queue {destination}"),
                ));
            };
            let mut q = lock(&queue);
            if options.if_unused && !q.subs.is_empty() {
                return Err(Failure::new(
                    FailureKind::Rejected,
                    format!(
                        "{destination}: the queue has {} consumers (if-unused)",
                        q.subs.len()
                    ),
                ));
            }
            if options.if_empty && q.depth() > 0 {
                return Err(Failure::new(
                    FailureKind::Rejected,
                    format!(
                        "{destination}: the queue holds {} messages (if-empty)",
                        q.depth()
                    ),
                ));
            }
            all.remove(destination);
            let mut dropped: Vec<MessageId> = q.ready.drain(..).map(|m| m.id).collect();
            dropped.extend(q.leased.drain().map(|(id, _)| id));
            q.expiries.clear();
            (dropped, std::mem::take(&mut q.subs))
        };
        for s in subs {
            s.consumer.deliver(Delivery::Closed(format!(
                "{destination}: the queue was deleted"
            )));
        }
        Ok(dropped)
    }

    /// Counters per queue, sorted by destination.
    pub fn stats(&self) -> Vec<DestinationStats> {
        let mut out: Vec<DestinationStats> = self
            .shared
            .queues
            .read()
            .values()
            .map(|q| {
                let q = q.lock();
                DestinationStats {
                    depth: (q.ready.len() + q.pending) as u64,
                    leased: q.leased.len() as u64,
                    consumers: q.subs.len() as u64,
                    ..q.meters.snapshot()
                }
            })
            .collect();
        out.sort_by(|a, b| a.destination.cmp(&b.destination));
        out
    }
}

impl Drop for Queues {
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
            .name("bindery-leases".into())
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
            if !*stopped {
                stop.1.wait_for(&mut stopped, Duration::from_millis(20));
            }
            if *stopped {
                return;
            }
        }
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let now = Instant::now();
        let queues: Vec<_> = shared.queues.read().values().cloned().collect();
        for q in queues {
            let mut q = lock(&q);
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
            let mut q = lock(&q);
            if let Some(s) = q.subs.iter_mut().find(|s| s.id == self.id) {
                s.credit = s.credit.saturating_add(n);
            }
            q.pump(Instant::now());
        }
    }

    fn cancel(&self) {
        if let Some(q) = self.queue.upgrade() {
            lock(&q).subs.retain(|s| s.id != self.id);
        }
    }
}
