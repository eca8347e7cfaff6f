//! The server's metrics in the Prometheus text format: every terminal's
//! connections and protocol counters, and every driver's destinations.
//! Terminals serve it (`/metrics`); it reads only the binding tables.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use bindery::Runtime;

use crate::class;
use crate::driver::{DestinationStats, DriverHandle};
use crate::terminal::TerminalHandle;

/// A label value, escaped.
pub fn label(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Every bound instance of `class` whose handle is `H`, by instance name.
fn instances<H: Clone + 'static>(rt: &Runtime, class: &str) -> BTreeMap<String, H> {
    let mut out = BTreeMap::new();
    if let Some(table) = rt.table(class) {
        for b in table.index().bindings() {
            if let Some(h) = b.handle::<H>() {
                out.entry(b.instance().to_owned())
                    .or_insert_with(|| h.clone());
            }
        }
    }
    out
}

/// The whole exposition.
pub fn render(rt: &Runtime) -> String {
    let mut m = String::with_capacity(4096);
    let terminals = instances::<TerminalHandle>(rt, class::TERMINAL);
    let _ = writeln!(
        m,
        "# HELP bindery_connections_open Open connections per terminal.\n# TYPE bindery_connections_open gauge"
    );
    for (inst, t) in &terminals {
        let _ = writeln!(
            m,
            "bindery_connections_open{{instance=\"{}\"}} {}",
            label(inst),
            t.connections()
        );
    }
    // One HELP and TYPE per counter, however many terminals report it.
    type Values = Vec<(String, u64)>;
    let mut counters: BTreeMap<&str, (&str, Values)> = BTreeMap::new();
    for (inst, t) in &terminals {
        for (name, help, value) in t.counters() {
            counters
                .entry(name)
                .or_insert_with(|| (help, Vec::new()))
                .1
                .push((label(inst), value));
        }
    }
    for (name, (help, values)) in counters {
        let _ = writeln!(m, "# HELP {name} {help}\n# TYPE {name} counter");
        for (inst, value) in values {
            let _ = writeln!(m, "{name}{{instance=\"{inst}\"}} {value}");
        }
    }
    let drivers = instances::<DriverHandle>(rt, class::DRIVER);
    type Field = fn(&DestinationStats) -> u64;
    let series: [(&str, &str, &str, Field); 10] = [
        (
            "bindery_messages_in_total",
            "counter",
            "Messages accepted by a destination.",
            |d| d.published,
        ),
        (
            "bindery_messages_out_total",
            "counter",
            "Messages delivered by a destination.",
            |d| d.delivered,
        ),
        (
            "bindery_messages_acked_total",
            "counter",
            "Messages acknowledged.",
            |d| d.acked,
        ),
        (
            "bindery_messages_dropped_total",
            "counter",
            "Messages dropped (slow or no subscribers).",
            |d| d.dropped,
        ),
        (
            "bindery_publishes_refused_total",
            "counter",
            "Publishes refused because a destination or its store was full.",
            |d| d.refused,
        ),
        (
            "bindery_destination_depth",
            "gauge",
            "Messages waiting or buffered.",
            |d| d.depth,
        ),
        (
            "bindery_destination_leased",
            "gauge",
            "Messages delivered, not yet acked.",
            |d| d.leased,
        ),
        (
            "bindery_destination_consumers",
            "gauge",
            "Live consumers or subscribers.",
            |d| d.consumers,
        ),
        (
            "bindery_destination_stalled_subscribers",
            "gauge",
            "Subscribers that take nothing while messages wait: they no longer slow publishers.",
            |d| d.stalled,
        ),
        (
            "bindery_destination_store_full",
            "gauge",
            "1 while the destination's store refuses publishes for lack of space.",
            |d| d.store_full,
        ),
    ];
    let stats: Vec<(String, Vec<DestinationStats>)> =
        drivers.iter().map(|(k, d)| (label(k), d.stats())).collect();
    for (name, kind, help, field) in series {
        let _ = writeln!(m, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (inst, dests) in &stats {
            for d in dests {
                let _ = writeln!(
                    m,
                    "{name}{{instance=\"{inst}\",destination=\"{}\"}} {}",
                    label(&d.destination),
                    field(d)
                );
            }
        }
    }
    m
}
