//! What the driver's methods, its writer connections and its reader share:
//! the destinations this node serves, their local subscribers with their
//! credit, and the leases this node holds.
//!
//! Redis keeps the queue itself (entries, the consumer group's pending
//! list, delivery counts); a node keeps only what is its own: which of its
//! consumers holds which entry until when. A lease that runs out here is
//! released in Redis at once; a node that dies stops renewing its entries,
//! and any other node claims them after `orphan_after_ms`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use bindery::{Failure, FailureKind};
use bindery_classes::driver::DestinationStats;
use bindery_classes::metrics::{DestinationMeters, Scope};
use bindery_classes::{Consumer, Delivery, Message, MessageId, SubscriptionControl};
use parking_lot::{Condvar, Mutex};

/// Settings every part reads.
#[derive(Debug)]
pub(crate) struct Settings {
    /// Key prefix.
    pub(crate) prefix: String,
    /// The consumer group's name (one per queue, the same on every node).
    pub(crate) group: String,
    /// This instance's consumer name in every group.
    pub(crate) consumer: String,
    /// Entries per queue.
    pub(crate) max_depth: u64,
    /// Body bytes per queue.
    pub(crate) max_queue_bytes: u64,
    /// Replicas a publish must reach (WAIT) before it is confirmed.
    pub(crate) min_replicas: u32,
    /// How long WAIT may take.
    pub(crate) replica_timeout: Duration,
    /// Entries idle this long (their node stopped renewing) are claimed.
    pub(crate) orphan_after: Duration,
    /// Where Redis is, without credentials, for messages.
    pub(crate) display_url: String,
}

impl Settings {
    /// The stream of `dest`.
    pub(crate) fn stream(&self, dest: &str) -> String {
        format!("{}q:{dest}", self.prefix)
    }

    /// The body-byte counter of `dest`.
    pub(crate) fn bytes_key(&self, dest: &str) -> String {
        format!("{}b:{dest}", self.prefix)
    }
}

/// One local subscriber.
pub(crate) struct Sub {
    pub(crate) id: u64,
    pub(crate) consumer: Consumer,
    pub(crate) credit: u32,
    pub(crate) lease: Duration,
}

/// A lease this node holds.
pub(crate) struct Lease {
    pub(crate) until: Instant,
    /// The body's size, so an ack through this node needs no script.
    pub(crate) size: u64,
    /// Its idle time in Redis is set so that it reaches `orphan_after`
    /// when the lease ends (done once the lease has less than
    /// `orphan_after` left): if this node dies, another claims the entry
    /// then, not `orphan_after` later.
    pub(crate) tuned: bool,
}

/// A destination as this node sees it.
#[derive(Default)]
pub(crate) struct Dest {
    pub(crate) subs: Vec<Sub>,
    pub(crate) turn: usize,
    pub(crate) leases: HashMap<MessageId, Lease>,
    /// Entries to release in Redis: (id, whether to uncount the delivery).
    pub(crate) to_release: Vec<(MessageId, bool)>,
    /// The consumer group is known to exist.
    pub(crate) grouped: bool,
    /// Where the next XAUTOCLAIM scan starts.
    pub(crate) cursor: String,
    /// A subscriber came since the last claim: claim at once.
    pub(crate) fresh: bool,
    /// Entries in the stream when Redis last said (after a publish batch).
    pub(crate) seen_depth: u64,
    /// Body bytes in the stream when Redis last said.
    pub(crate) seen_bytes: u64,
    /// Its counters and gauges, in the server's metrics registry.
    pub(crate) meters: DestinationMeters,
}

impl Dest {
    /// Brings the gauges this node keeps up to date (under the lock).
    fn gauges(&self) {
        self.meters.consumers.set(self.subs.len() as u64);
        self.meters.leased.set(self.leases.len() as u64);
    }
}

/// The state shared by methods, writers and the reader.
pub(crate) struct Shared {
    pub(crate) settings: Settings,
    /// Where destinations' meters register.
    pub(crate) scope: Scope,
    pub(crate) dests: Mutex<HashMap<Arc<str>, Dest>>,
    /// Signalled when a subscription, credit or release wants the reader.
    pub(crate) wake: Condvar,
    /// Set with `wake`, cleared by the reader when it plans a round.
    pub(crate) dirty: AtomicBool,
    /// The reader is (about to be) blocked in XREADGROUP.
    pub(crate) blocking: AtomicBool,
    /// The reader's CLIENT ID, for CLIENT UNBLOCK.
    pub(crate) reader_id: AtomicU64,
    /// The reader's connection is up.
    pub(crate) reader_up: AtomicBool,
    pub(crate) stopped: AtomicBool,
    next_sub: AtomicU64,
    /// Called to unblock the reader (sends CLIENT UNBLOCK on a writer).
    pub(crate) unblock: Mutex<Option<Box<dyn Fn() + Send>>>,
}

impl Shared {
    pub(crate) fn new(settings: Settings, scope: Scope) -> Shared {
        Shared {
            settings,
            scope,
            dests: Mutex::new(HashMap::new()),
            wake: Condvar::new(),
            dirty: AtomicBool::new(true),
            blocking: AtomicBool::new(false),
            reader_id: AtomicU64::new(0),
            reader_up: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
            next_sub: AtomicU64::new(1),
            unblock: Mutex::new(None),
        }
    }

    /// Tells the reader there is work: wakes it from its wait, or from its
    /// blocking read.
    pub(crate) fn poke(&self) {
        self.dirty.store(true, Ordering::SeqCst);
        self.wake.notify_all();
        if self.blocking.load(Ordering::SeqCst) {
            if let Some(f) = &*self.unblock.lock() {
                f();
            }
        }
    }

    /// Adds a local subscriber to `dest`.
    pub(crate) fn subscribe(
        self: &Arc<Self>,
        dest: &str,
        consumer: Consumer,
        credit: u32,
        lease: Duration,
    ) -> Result<Arc<SubControl>, Failure> {
        if dest.contains(['+', '#', '*']) {
            return Err(Failure::new(
                FailureKind::Unsupported,
                format!("{dest}: a queue cannot be subscribed to with wildcards"),
            ));
        }
        let id = self.next_sub.fetch_add(1, Ordering::Relaxed);
        let dest: Arc<str> = dest.into();
        {
            let mut dests = self.dests.lock();
            if self.stopped.load(Ordering::Acquire) {
                return Err(Failure::new(
                    FailureKind::Unavailable,
                    format!("{dest}: the driver instance is stopping"),
                )
                .retry_after(Duration::from_secs(1)));
            }
            let d = self.entry(&mut dests, &dest);
            d.fresh = true;
            d.subs.push(Sub {
                id,
                consumer,
                credit,
                lease,
            });
            d.gauges();
        }
        self.poke();
        Ok(Arc::new(SubControl {
            shared: Arc::downgrade(self),
            dest,
            id,
        }))
    }

    /// Hands decoded entries of `dest` to local subscribers with credit, in
    /// turn, leasing each; what none can take is released (uncounted).
    /// Delivers outside the lock.
    pub(crate) fn deliver(&self, dest: &Arc<str>, messages: Vec<Message>) {
        if messages.is_empty() {
            return;
        }
        let now = Instant::now();
        let mut out = Vec::with_capacity(messages.len());
        {
            let mut dests = self.dests.lock();
            let d = self.entry(&mut dests, dest);
            for m in messages {
                let n = d.subs.len();
                let pick = (0..n)
                    .map(|i| (d.turn + i) % n.max(1))
                    .find(|&k| d.subs[k].credit > 0);
                match pick {
                    Some(k) if !self.stopped.load(Ordering::Acquire) => {
                        d.turn = k + 1;
                        let sub = &mut d.subs[k];
                        sub.credit -= 1;
                        d.leases.insert(
                            m.id,
                            Lease {
                                until: now + sub.lease,
                                size: m.body.len() as u64,
                                tuned: false,
                            },
                        );
                        d.meters.delivered.inc();
                        out.push((sub.consumer.clone(), m));
                    }
                    _ => d.to_release.push((m.id, true)),
                }
            }
        }
        for (c, m) in out {
            c.deliver(Delivery::Message(m));
        }
    }

    /// Ends every local subscription with `Closed`.
    pub(crate) fn close_all(&self, reason: &str) {
        let subs: Vec<Sub> = {
            let mut dests = self.dests.lock();
            dests.values_mut().flat_map(|d| d.subs.drain(..)).collect()
        };
        for s in subs {
            s.consumer.deliver(Delivery::Closed(reason.into()));
        }
        self.wake.notify_all();
    }

    /// Counters per destination; every one says `store_full` while Redis
    /// cannot be reached.
    pub(crate) fn stats(&self, up: bool) -> Vec<DestinationStats> {
        let dests = self.dests.lock();
        dests
            .values()
            .map(|d| {
                let mut s = d.meters.snapshot();
                s.consumers = d.subs.len() as u64;
                s.leased = d.leases.len() as u64;
                s.store_full = u64::from(!up);
                s
            })
            .collect()
    }

    /// Runs `f` on the local state of `dest` if this node has any (a
    /// lookup that a request for any path cannot grow).
    pub(crate) fn peek<R>(&self, dest: &str, f: impl FnOnce(&mut Dest) -> R) -> Option<R> {
        self.dests.lock().get_mut(dest).map(f)
    }

    /// Runs `f` on the local state of `dest`, made if missing.
    pub(crate) fn with<R>(&self, dest: &str, f: impl FnOnce(&mut Dest) -> R) -> R {
        let mut dests = self.dests.lock();
        let d = self.entry(&mut dests, dest);
        let r = f(d);
        d.gauges();
        r
    }

    /// The local state of `dest`, made (with its meters) if missing.
    fn entry<'a>(&self, dests: &'a mut HashMap<Arc<str>, Dest>, dest: &str) -> &'a mut Dest {
        if !dests.contains_key(dest) {
            let d = Dest {
                meters: self.scope.destination(dest),
                ..Dest::default()
            };
            dests.insert(dest.into(), d);
        }
        dests.get_mut(dest).expect("inserted above")
    }
}

/// The driver's side of one subscription.
pub(crate) struct SubControl {
    shared: Weak<Shared>,
    dest: Arc<str>,
    id: u64,
}

impl SubscriptionControl for SubControl {
    fn credit(&self, n: u32) {
        let Some(shared) = self.shared.upgrade() else {
            return;
        };
        let found = shared.with(&self.dest, |d| {
            d.subs
                .iter_mut()
                .find(|s| s.id == self.id)
                .map(|s| s.credit = s.credit.saturating_add(n))
                .is_some()
        });
        if found {
            shared.poke();
        }
    }

    fn cancel(&self) {
        if let Some(shared) = self.shared.upgrade() {
            shared.with(&self.dest, |d| d.subs.retain(|s| s.id != self.id));
        }
    }
}
