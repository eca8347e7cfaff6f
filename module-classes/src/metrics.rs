//! Metrics as a registry: modules register counters and gauges, and any
//! terminal (`/metrics`) or the management API renders them in the
//! Prometheus text format.
//!
//! A [`Counter`] or [`Gauge`] is an atomic the module updates where the
//! event happens; rendering reads the atomics and takes no module's lock,
//! so `/metrics` costs a queue nothing however often it is scraped. The
//! registry holds series weakly: when the module drops its handles (an
//! instance removed), its series leave the exposition. Registering a
//! series that is alive already (same name and labels) returns the same
//! atomic, so a restarted instance counts on.
//!
//! One registry per server: [`Metrics::of`] finds it through
//! [`bindery::Runtime::shared`]. A driver keeps one [`DestinationMeters`]
//! per destination (made from a [`Scope`]); a terminal registers its
//! counters at creation.
//!
//! ```
//! use bindery_classes::metrics::Metrics;
//! let metrics = Metrics::default();
//! let sent = metrics.counter("demo_sent_total", "Things sent.", &[("instance", "a")]);
//! sent.add(2);
//! assert!(metrics.render().contains("demo_sent_total{instance=\"a\"} 2"));
//! ```
//!
//! Longer than most files here: the registry, the per-destination meters
//! and their tests; the meters are the registry's main user.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use bindery::Runtime;
use parking_lot::Mutex;

use crate::driver::DestinationStats;

/// A label value, escaped.
pub fn label(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// A count that only goes up.
#[derive(Clone, Debug, Default)]
pub struct Counter(Arc<AtomicU64>);

impl Counter {
    /// Adds one.
    pub fn inc(&self) {
        self.add(1);
    }

    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// The count.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down.
#[derive(Clone, Debug, Default)]
pub struct Gauge(Arc<AtomicU64>);

impl Gauge {
    /// Sets the value.
    pub fn set(&self, v: u64) {
        self.0.store(v, Ordering::Relaxed);
    }

    /// Adds one.
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    /// Takes one away (not below zero).
    pub fn dec(&self) {
        let _ = self
            .0
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                Some(v.saturating_sub(1))
            });
    }

    /// The value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        }
    }
}

struct Family {
    help: &'static str,
    kind: Kind,
    /// Rendered labels (`instance="a",destination="/q"`) and the value.
    series: Vec<(String, Weak<AtomicU64>)>,
}

/// The registry of one server's metrics.
#[derive(Default)]
pub struct Metrics {
    families: Mutex<BTreeMap<&'static str, Family>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics")
            .field("families", &self.families.lock().len())
            .finish()
    }
}

impl Metrics {
    /// The registry of the server `rt` runs.
    pub fn of(rt: &Runtime) -> Arc<Metrics> {
        rt.shared::<Metrics>()
    }

    fn register(
        &self,
        name: &'static str,
        help: &'static str,
        kind: Kind,
        labels: &[(&str, &str)],
    ) -> Arc<AtomicU64> {
        let rendered = labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{}\"", label(v)))
            .collect::<Vec<_>>()
            .join(",");
        let mut families = self.families.lock();
        let family = families.entry(name).or_insert_with(|| Family {
            help,
            kind,
            series: Vec::new(),
        });
        family.series.retain(|(_, w)| w.strong_count() > 0);
        if let Some(live) = family
            .series
            .iter()
            .find(|(l, _)| *l == rendered)
            .and_then(|(_, w)| w.upgrade())
        {
            return live;
        }
        let value = Arc::new(AtomicU64::new(0));
        family.series.push((rendered, Arc::downgrade(&value)));
        family.series.sort_by(|a, b| a.0.cmp(&b.0));
        value
    }

    /// A counter named `name` with `labels`; every call for one name must
    /// give the same `help`.
    pub fn counter(
        &self,
        name: &'static str,
        help: &'static str,
        labels: &[(&str, &str)],
    ) -> Counter {
        Counter(self.register(name, help, Kind::Counter, labels))
    }

    /// A gauge named `name` with `labels`.
    pub fn gauge(&self, name: &'static str, help: &'static str, labels: &[(&str, &str)]) -> Gauge {
        Gauge(self.register(name, help, Kind::Gauge, labels))
    }

    /// The exposition: every live series, by name, one HELP and TYPE each.
    pub fn render(&self) -> String {
        let families = self.families.lock();
        let mut m = String::with_capacity(4096);
        for (name, family) in families.iter() {
            let live: Vec<(&str, u64)> = family
                .series
                .iter()
                .filter_map(|(l, w)| Some((l.as_str(), w.upgrade()?.load(Ordering::Relaxed))))
                .collect();
            if live.is_empty() {
                continue;
            }
            let kind = family.kind.as_str();
            let _ = writeln!(m, "# HELP {name} {}\n# TYPE {name} {kind}", family.help);
            for (labels, value) in live {
                let _ = writeln!(m, "{name}{{{labels}}} {value}");
            }
        }
        m
    }
}

/// Where a module instance registers: the registry and the instance name
/// every series is labelled with.
#[derive(Clone, Debug)]
pub struct Scope {
    metrics: Arc<Metrics>,
    instance: Arc<str>,
}

impl Scope {
    /// The scope of `instance` in `metrics`.
    pub fn new(metrics: Arc<Metrics>, instance: &str) -> Scope {
        Scope {
            metrics,
            instance: instance.into(),
        }
    }

    /// The scope of `instance` in the registry of the server `rt` runs.
    pub fn of(rt: &Runtime, instance: &str) -> Scope {
        Scope::new(Metrics::of(rt), instance)
    }

    /// A scope in a registry of its own, rendered by nobody (a module made
    /// outside a server: unit tests, tools).
    pub fn detached(instance: &str) -> Scope {
        Scope::new(Arc::default(), instance)
    }

    /// The instance's name.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// The registry.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// A counter labelled with the instance.
    pub fn counter(&self, name: &'static str, help: &'static str) -> Counter {
        self.metrics
            .counter(name, help, &[("instance", &self.instance)])
    }

    /// A gauge labelled with the instance.
    pub fn gauge(&self, name: &'static str, help: &'static str) -> Gauge {
        self.metrics
            .gauge(name, help, &[("instance", &self.instance)])
    }

    /// The meters of one destination of this (driver) instance.
    pub fn destination(&self, destination: &str) -> DestinationMeters {
        DestinationMeters::new(self, destination)
    }
}

/// What a driver counts for one destination: the series behind
/// [`DestinationStats`], updated where things happen.
#[derive(Clone, Debug)]
pub struct DestinationMeters {
    destination: Arc<str>,
    /// Messages accepted.
    pub published: Counter,
    /// Messages handed to consumers (redeliveries included).
    pub delivered: Counter,
    /// Messages acked.
    pub acked: Counter,
    /// Messages dropped (slow or no subscribers).
    pub dropped: Counter,
    /// Publishes refused (the destination or its store full).
    pub refused: Counter,
    /// Messages waiting or buffered.
    pub depth: Gauge,
    /// Messages delivered and not yet acked.
    pub leased: Gauge,
    /// Live consumers or subscribers.
    pub consumers: Gauge,
    /// Subscribers that take nothing while messages wait.
    pub stalled: Gauge,
    /// 1 while the store refuses publishes for lack of space.
    pub store_full: Gauge,
}

impl Default for DestinationMeters {
    /// Meters of no destination in a registry nobody renders: a placeholder
    /// until the real ones are made.
    fn default() -> Self {
        Scope::detached("").destination("")
    }
}

impl DestinationMeters {
    fn new(scope: &Scope, destination: &str) -> DestinationMeters {
        let labels = [("instance", &*scope.instance), ("destination", destination)];
        let m = &scope.metrics;
        DestinationMeters {
            destination: destination.into(),
            published: m.counter(
                "bindery_messages_in_total",
                "Messages accepted by a destination.",
                &labels,
            ),
            delivered: m.counter(
                "bindery_messages_out_total",
                "Messages delivered by a destination.",
                &labels,
            ),
            acked: m.counter("bindery_messages_acked_total", "Messages acknowledged.", &labels),
            dropped: m.counter(
                "bindery_messages_dropped_total",
                "Messages dropped (slow or no subscribers).",
                &labels,
            ),
            refused: m.counter(
                "bindery_publishes_refused_total",
                "Publishes refused because a destination or its store was full.",
                &labels,
            ),
            depth: m.gauge(
                "bindery_destination_depth",
                "Messages waiting or buffered.",
                &labels,
            ),
            leased: m.gauge(
                "bindery_destination_leased",
                "Messages delivered, not yet acked.",
                &labels,
            ),
            consumers: m.gauge(
                "bindery_destination_consumers",
                "Live consumers or subscribers.",
                &labels,
            ),
            stalled: m.gauge(
                "bindery_destination_stalled_subscribers",
                "Subscribers that take nothing while messages wait: they no longer slow publishers.",
                &labels,
            ),
            store_full: m.gauge(
                "bindery_destination_store_full",
                "1 while the destination's store refuses publishes for lack of space.",
                &labels,
            ),
        }
    }

    /// The destination.
    pub fn destination(&self) -> &str {
        &self.destination
    }

    /// The values now, as [`crate::Driver::stats`] reports them.
    pub fn snapshot(&self) -> DestinationStats {
        DestinationStats {
            destination: self.destination.to_string(),
            depth: self.depth.get(),
            leased: self.leased.get(),
            consumers: self.consumers.get(),
            published: self.published.get(),
            delivered: self.delivered.get(),
            acked: self.acked.get(),
            dropped: self.dropped.get(),
            refused: self.refused.get(),
            stalled: self.stalled.get(),
            store_full: self.store_full.get(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::{QueueLimits, Queues};
    use crate::{Consumer, Delivery, Message, SubscribeOptions};
    use std::time::Duration;

    #[test]
    fn rendering_takes_no_queue_lock() {
        let scope = Scope::detached("q");
        let limits = QueueLimits {
            max_depth: 10,
            max_queues: 10,
        };
        let queues = Arc::new(Queues::new(limits, scope.clone()));
        // A consumer that blocks while it is called, under the queue's lock.
        let (entered, inside) = std::sync::mpsc::channel();
        let (release, gate) = std::sync::mpsc::channel::<()>();
        let gate = Mutex::new(gate);
        let consumer = Consumer::new(move |d| {
            if let Delivery::Message(_) = d {
                let _ = entered.send(());
                let _ = gate.lock().recv();
            }
        });
        let _sub = queues
            .subscribe("/q/a", consumer, SubscribeOptions::default())
            .unwrap();
        let q = queues.clone();
        let publisher = std::thread::spawn(move || {
            q.reserve("/q/a")
                .unwrap()
                .fill(Message::new("/q/a", "", "x"));
        });
        inside.recv_timeout(Duration::from_secs(5)).unwrap();
        // The queue's lock is held now; the exposition comes all the same.
        let (done, rendered) = std::sync::mpsc::channel();
        let metrics = scope.metrics().clone();
        std::thread::spawn(move || done.send(metrics.render()));
        let text = rendered.recv_timeout(Duration::from_secs(5));
        release.send(()).unwrap();
        publisher.join().unwrap();
        let text = text.expect("render did not wait for the queue");
        assert!(
            text.contains("bindery_messages_out_total{instance=\"q\",destination=\"/q/a\"} 1"),
            "{text}"
        );
    }

    #[test]
    fn series_leave_with_their_handles_and_a_live_one_is_shared() {
        let m = Metrics::default();
        let a = m.counter("x_total", "X.", &[("instance", "a")]);
        let again = m.counter("x_total", "X.", &[("instance", "a")]);
        a.inc();
        again.inc();
        assert!(m.render().contains("x_total{instance=\"a\"} 2"));
        drop((a, again));
        assert!(!m.render().contains("x_total"));
    }
}
