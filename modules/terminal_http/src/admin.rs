//! `/healthz`, `/metrics` and `/admin/*`: what the server says of itself.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::Ordering;

use bindery_classes::driver::DriverHandle;
use bindery_classes::{class, terminal};

use crate::Shared;
use crate::response;

/// An admin endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Admin {
    Health,
    Metrics,
    Modules,
    Bindings,
}

/// The admin endpoint at `path`, if it is one.
pub(crate) fn route(path: &str) -> Option<Admin> {
    match path {
        "/healthz" => Some(Admin::Health),
        "/metrics" => Some(Admin::Metrics),
        "/admin/modules" => Some(Admin::Modules),
        "/admin/bindings" => Some(Admin::Bindings),
        _ => None,
    }
}

pub(crate) fn answer(admin: Admin, shared: &Shared, out: &mut Vec<u8>, close: bool) {
    match admin {
        Admin::Health => response::text(out, 200, &[], "ok", close),
        Admin::Metrics => {
            let body = metrics(shared);
            response::write(
                out,
                200,
                &[],
                Some("text/plain; version=0.0.4"),
                body.as_bytes(),
                close,
            );
        }
        Admin::Modules | Admin::Bindings => {
            let intro = shared.runtime.introspect();
            let value = if admin == Admin::Modules {
                serde_json::json!({ "modules": intro.modules, "instances": intro.instances })
            } else {
                serde_json::json!({ "bindings": intro.bindings })
            };
            let body = serde_json::to_vec_pretty(&value).unwrap_or_default();
            response::write(out, 200, &[], Some("application/json"), &body, close);
        }
    }
}

fn label(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn metrics(shared: &Shared) -> String {
    let mut m = String::with_capacity(4096);
    let rt = &shared.runtime;
    let s = &shared.stats;
    let i = label(&shared.instance);
    let counters = [
        (
            "bindery_http_connections_accepted_total",
            "Connections accepted.",
            &s.connections.accepted,
        ),
        (
            "bindery_http_connections_refused_total",
            "Connections refused at the limit.",
            &s.connections.refused,
        ),
        ("bindery_http_requests_total", "Requests read.", &s.requests),
        (
            "bindery_http_bad_requests_total",
            "Requests refused as malformed or too large.",
            &s.bad_requests,
        ),
        (
            "bindery_http_published_total",
            "Publishes confirmed.",
            &s.published,
        ),
        (
            "bindery_http_delivered_total",
            "Messages delivered to clients.",
            &s.delivered,
        ),
        (
            "bindery_http_streams_ended_total",
            "Event streams closed because a driver ended the subscription (slow consumers).",
            &s.streams_ended,
        ),
    ];
    for (name, help, v) in counters {
        let _ = writeln!(m, "# HELP {name} {help}\n# TYPE {name} counter");
        let _ = writeln!(
            m,
            "{name}{{instance=\"{i}\"}} {}",
            v.load(Ordering::Relaxed)
        );
    }
    let _ = writeln!(
        m,
        "# HELP bindery_connections_open Open connections per terminal.\n# TYPE bindery_connections_open gauge"
    );
    let mut terminals = BTreeMap::new();
    if let Some(table) = rt.table(class::TERMINAL) {
        for b in table.index().bindings() {
            if let Some(t) = b.handle::<terminal::TerminalHandle>() {
                terminals.insert(b.instance().to_owned(), t.clone());
            }
        }
    }
    for (inst, t) in &terminals {
        let _ = writeln!(
            m,
            "bindery_connections_open{{instance=\"{}\"}} {}",
            label(inst),
            t.connections()
        );
    }
    for (inst, t) in &terminals {
        for (name, help, value) in t.counters() {
            let _ = writeln!(m, "# HELP {name} {help}\n# TYPE {name} counter");
            let _ = writeln!(m, "{name}{{instance=\"{}\"}} {value}", label(inst));
        }
    }
    let mut drivers: BTreeMap<String, DriverHandle> = BTreeMap::new();
    if let Some(table) = rt.table(class::DRIVER) {
        for b in table.index().bindings() {
            if let Some(d) = b.handle::<DriverHandle>() {
                drivers
                    .entry(b.instance().to_owned())
                    .or_insert_with(|| d.clone());
            }
        }
    }
    type Field = fn(&bindery_classes::DestinationStats) -> u64;
    let series: [(&str, &str, &str, Field); 9] = [
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
    ];
    let stats: Vec<(String, Vec<bindery_classes::DestinationStats>)> =
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
