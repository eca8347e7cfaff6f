//! `terminal.http`: HTTP/1.1 and a REST messaging API.
//!
//! Bound to listen addresses (`127.0.0.1:8080`). Keep-alive, pipelining,
//! chunked request bodies and `Expect: 100-continue` are supported; header
//! and body sizes are limited (431, 413). The API, in the spirit of RestMS:
//!
//! | request | what it does |
//! |---|---|
//! | `POST <path>` | publishes the body, typed by `Content-Type`; `201` with `Message-Id` once the driver confirms; `404` no driver, `415` no parser, `400` invalid body, `503` + `Retry-After` when full |
//! | `GET <queue>?wait=S&lease=S` | takes the next message: `200` with body, `Content-Type`, `Message-Id`, `Delivery-Count` and the message's own headers (a job runner's `Original-Id`, say); `204` when `wait` runs out |
//! | `DELETE <queue>/messages/<id>` | acks; `204`, or `404` if not leased |
//! | `GET <topic>` + `Accept: text/event-stream` | subscribes (server-sent events); on a queue, each event is leased like a long poll's message: ack it with `DELETE <queue>/messages/<event id>` |
//! | `GET /healthz`, `/readyz`, `/metrics` | alive; every instance can serve (`503` naming those that cannot); Prometheus text |
//! | a route's key (`GET /pkg/{name}`) | what the route module answers (`bindery_classes::route`), streamed |
//!
//! Routes are looked up after `/healthz` and `/metrics` and before the
//! messaging paths; a route never shadows a driver's path (the binding is
//! refused).
//!
//! What lists or changes the server (modules, instances, bindings) is the
//! management API's (`terminal.manage`), behind its token.
//!
//! Long polls and event streams hold no thread: they are reactor handlers
//! waiting for notes from drivers.
//!
//! Connections that hold resources for nothing are closed: one with
//! nothing from the client and nothing in flight for `idle_timeout_secs`
//! (an unused keep-alive connection, a request stalled mid-body), and one
//! whose request head is not complete `header_timeout_secs` after its first
//! byte, however slowly it trickles (answered `408` if the socket takes
//! it). A long poll or an event stream is in flight, so neither cuts it,
//! however quiet. The defaults sit between nginx's (`keepalive_timeout`
//! 75 s, `client_header_timeout` 60 s) and Apache's (`KeepAliveTimeout`
//! 5 s, `RequestReadTimeout header=20-40`). Both closes are counted in
//! `/metrics` (`bindery_http_idle_timeouts_total`,
//! `bindery_http_header_timeouts_total`).
//!
//! ```toml
//! [instances.http.config]
//! dispatcher = "default"
//! auth = "users"             # an auth instance: 401/403 for clients it refuses; none: all allowed
//! max_header_bytes = 8192
//! max_body_bytes = 1048576
//! max_connections = 10000
//! max_connections_per_address = 0   # per client IP; 0: no limit
//! idle_timeout_secs = 30     # nothing from the client, nothing in flight: closed
//! header_timeout_secs = 20   # a request head not complete this long after its first byte: closed
//! max_wait_secs = 60
//! default_lease_secs = 30
//! stream_credit = 64
//! route_window_bytes = 262144   # a route's unsent body bytes before it waits
//! ```

mod admin;
mod core;
mod cors;
mod guard;
#[cfg(test)]
mod guard_tests;
mod rest;
mod routes;
#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::sync::Arc;

use bindery::Table;
use bindery_classes::auth;
use bindery_classes::class;
use bindery_classes::connection::{MakeCore, TlsSettings, Wake};
use bindery_classes::dispatcher::{self, DispatcherHandle};
use bindery_classes::metrics::{Counter, Metrics, Scope};
use bindery_classes::terminal::{self, Probe, Serving};
use serde::Deserialize;

bindery::module! {
    class: bindery_classes::class::Terminal,
    name: "http",
    description: "HTTP/1.1 with a REST messaging API, server-sent events, admin and metrics",
    main: module_main,
}

/// The instance configuration.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The dispatcher to hand publishes to, by name.
    pub dispatcher: String,
    /// The auth instance that authenticates clients and authorizes their
    /// requests, by name; none: everything is allowed.
    pub auth: Option<String>,
    /// Largest request head (request line and headers): beyond it, 431.
    pub max_header_bytes: usize,
    /// Largest request body: beyond it, 413.
    pub max_body_bytes: usize,
    /// Open connections at most; more are refused at accept.
    pub max_connections: u64,
    /// Open connections one client address may have (0: no limit);
    /// more are refused at accept and counted
    /// (`bindery_connections_refused_per_address_total`).
    pub max_connections_per_address: u64,
    /// Which other origins' pages may call from a browser (CORS); none:
    /// off.
    pub cors: Option<cors::Cors>,
    /// TLS on this instance's listeners (`cert`, `key`, optional
    /// `client_ca` for mutual TLS); none: plaintext.
    pub tls: Option<TlsSettings>,
    /// A connection with nothing from the client and nothing in flight
    /// (no request being answered, no event stream) this long is closed:
    /// an unused keep-alive connection, or a request stalled mid-body.
    /// At least 1.
    pub idle_timeout_secs: u64,
    /// A connection whose request head is not complete this long after
    /// its first byte is closed, however slowly the head trickles in.
    /// At least 1.
    pub header_timeout_secs: u64,
    /// The longest `wait` a long poll may ask for.
    pub max_wait_secs: u64,
    /// The lease a `GET` gets when it names none.
    pub default_lease_secs: u64,
    /// Messages in flight to an event-stream client before the driver
    /// waits for the socket to drain.
    pub stream_credit: u32,
    /// A route's answer: body bytes not yet written to the client before
    /// the route is asked to wait.
    pub route_window_bytes: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            dispatcher: "default".into(),
            auth: None,
            max_header_bytes: 8 * 1024,
            max_body_bytes: 1024 * 1024,
            max_connections: 10_000,
            max_connections_per_address: 0,
            tls: None,
            cors: None,
            idle_timeout_secs: 30,
            header_timeout_secs: 20,
            max_wait_secs: 60,
            default_lease_secs: 30,
            stream_credit: 64,
            route_window_bytes: 256 * 1024,
        }
    }
}

impl Config {
    /// `idle_timeout_secs`, at least a second.
    pub(crate) fn idle(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.idle_timeout_secs.max(1))
    }

    /// `header_timeout_secs`, at least a second.
    pub(crate) fn header_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.header_timeout_secs.max(1))
    }
}

fn module_main(
    reg: &mut bindery::Registrar<'_, bindery_classes::class::Terminal>,
) -> Result<(), bindery::BoxError> {
    terminal::serve(reg, |cx| {
        let config: Config = cx.config().parse()?;
        let stats = Arc::new(Stats::new(&Scope::of(cx.runtime(), cx.name())));
        let instance = cx.name().to_owned();
        Ok(Serving {
            protocol: "http",
            max_connections: config.max_connections,
            max_connections_per_address: config.max_connections_per_address,
            probe: Some(Arc::new(HttpProbe)),
            unix_socket: None,
            tls: config.tls.as_ref().map(|t| t.load(cx)).transpose()?,
            websocket: None,
            start: Box::new(move |rt| {
                let dispatcher = dispatcher::require(rt, &config.dispatcher)?;
                let auth = config
                    .auth
                    .as_deref()
                    .map(|name| auth::Bound::require(rt, name))
                    .transpose()?;
                Ok(HttpCores(Arc::new(Shared {
                    instance,
                    config,
                    dispatcher,
                    routes: rt.table(class::ROUTE).cloned(),
                    runtime: Arc::downgrade(rt),
                    auth,
                    metrics: Metrics::of(rt),
                    stats,
                })))
            }),
        })
    });
    Ok(())
}

/// Counters for `/metrics`.
#[derive(Debug)]
pub(crate) struct Stats {
    pub(crate) requests: Counter,
    pub(crate) routed: Counter,
    pub(crate) published: Counter,
    pub(crate) delivered: Counter,
    pub(crate) bad_requests: Counter,
    pub(crate) streams_ended: Counter,
    pub(crate) idle_timeouts: Counter,
    pub(crate) header_timeouts: Counter,
    pub(crate) auth_failures: Counter,
}

impl Stats {
    pub(crate) fn new(scope: &Scope) -> Stats {
        Stats {
            requests: scope.counter("bindery_http_requests_total", "Requests read."),
            routed: scope.counter(
                "bindery_http_routed_total",
                "Requests handed to route modules.",
            ),
            published: scope.counter("bindery_http_published_total", "Publishes confirmed."),
            delivered: scope.counter(
                "bindery_http_delivered_total",
                "Messages delivered to clients.",
            ),
            bad_requests: scope.counter(
                "bindery_http_bad_requests_total",
                "Requests refused as malformed or too large.",
            ),
            streams_ended: scope.counter(
                "bindery_http_streams_ended_total",
                "Event streams closed because a driver ended the subscription (slow consumers).",
            ),
            idle_timeouts: scope.counter(
                "bindery_http_idle_timeouts_total",
                "Connections closed after idle_timeout_secs with nothing from the client and nothing in flight.",
            ),
            header_timeouts: scope.counter(
                "bindery_http_header_timeouts_total",
                "Connections closed because a request head did not complete within header_timeout_secs.",
            ),
            auth_failures: scope.counter(
                "bindery_http_auth_failures_total",
                "Requests refused for bad credentials (unknown user or wrong password).",
            ),
        }
    }
}

/// What every connection of an instance shares.
pub(crate) struct Shared {
    pub(crate) instance: String,
    pub(crate) config: Config,
    pub(crate) dispatcher: DispatcherHandle,
    /// The runtime, for `/readyz` (weak: connections must not keep a
    /// stopped server alive).
    pub(crate) runtime: std::sync::Weak<bindery::Runtime>,
    /// The route table, if any route module is linked.
    pub(crate) routes: Option<Arc<Table>>,
    /// The auth instance, if the configuration names one.
    pub(crate) auth: Option<auth::Bound>,
    /// The server's metrics, for `/metrics`.
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) stats: Arc<Stats>,
}

/// Certification hooks: `GET /healthz`, bytes that are not HTTP, a request
/// whose body never finishes.
struct HttpProbe;

impl Probe for HttpProbe {
    fn exchange(&self, addr: SocketAddr) -> Result<(), String> {
        let request = b"GET /healthz HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n";
        let out = terminal::talk(addr, request, None)?;
        if out.starts_with(b"HTTP/1.1 200") {
            Ok(())
        } else {
            Err(format!("answered {:?}", String::from_utf8_lossy(&out)))
        }
    }

    fn malformed(&self) -> Vec<u8> {
        b"\x16\x03\x01\x02\x00 not http\r\n\r\n".to_vec()
    }

    fn partial(&self) -> Vec<u8> {
        b"POST /queues/x HTTP/1.1\r\nContent-Length: 100\r\n\r\nabc".to_vec()
    }
}

/// Makes the protocol core of each connection.
struct HttpCores(Arc<Shared>);

impl MakeCore for HttpCores {
    type Core = core::Core;
    fn core(&self, peer: String, _: Wake) -> core::Core {
        core::Core::new(self.0.clone(), peer, std::time::Instant::now())
    }
}
