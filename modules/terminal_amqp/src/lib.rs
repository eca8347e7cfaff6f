//! `terminal.amqp`: AMQP 0-9-1 for unmodified clients (pika, amqp-tools,
//! lapin, RabbitMQ's client libraries), on the same queues and topics as
//! HTTP and MQTT.
//!
//! The protocol core (modules `core`, `channel`, `queues`, `publish`,
//! `consume`) runs on the shared connection driver
//! ([`bindery_classes::connection`]); publishes go through the dispatcher
//! like every other terminal's, consumers are driver subscriptions with
//! credit.
//!
//! # AMQP onto Bindery
//!
//! | AMQP | Bindery |
//! |---|---|
//! | default exchange `""`, routing key `K` | the queue path `<queue_root>K` (`/queues/K`) |
//! | `queue.declare Q` | checks a queue driver serves `/queues/Q`; counts from the driver's stats; `basic.consume`/`get` of a queue neither declared nor known to the driver is 404 |
//! | `queue.declare ""` | a server-named queue `amq.gen-…` under the queue root |
//! | `exclusive` | only the declaring connection may use it; deleted (through its driver) when it closes |
//! | `auto_delete` | deleted through its driver (`if_unused`: not while any consumer remains) when a consumer of it is cancelled or its channel or connection closes |
//! | `queue.purge` | the driver's purge: the waiting messages removed (not those delivered and unacked), their number answered |
//! | `queue.delete` (`if_unused`, `if_empty`) | the driver's delete: every message dropped, every consumer (any connection, any protocol) ended (AMQP ones get `basic.cancel`), the number dropped answered; the declaration and bindings forgotten; refused conditions are 406 |
//! | `amq.topic` and declared `topic` exchanges, key `a.b.c` | the topic path `<topic_root>a/b/c` (`/topics/a/b/c`): MQTT's `a/b/c` and HTTP SSE on `/topics/a/b/c` |
//! | binding key `a.*.c`, `a.#` | topic filter `a/+/c`, `a/#` |
//! | `queue.bind Q amq.topic K` | a subscription to the topic filter that feeds `/queues/Q`, as long as the binding connection lives |
//! | `amq.direct`, `amq.fanout` and declared `direct`/`fanout` exchanges | routed by this terminal through its own bindings table (`queue.bind`): one message per bound queue path, confirmed once every queue has it; the exchange and routing key travel as `amqp-exchange`/`amqp-routing-key` headers |
//! | `basic.publish` properties | `content-type` → the message's content type (the parser lookup); the others and the `headers` table → message headers (`amqp-message-id`, `amqp-delivery-mode`, `amqp-correlation-id`, `amqp-reply-to`, … ; table values as text) |
//! | `basic.consume` with `basic.qos` prefetch N | a subscription with credit N (credit back per ack); prefetch 0: `max_unacked` |
//! | `basic.get` | a subscription with credit 1, cancelled after one message or none |
//! | `basic.ack` / `nack`/`reject` without requeue | driver ack |
//! | `nack`/`reject` with requeue, channel or connection closed with unacked messages, `basic.recover` | driver retry: given back at once with its delivery counted, so it comes back `redelivered` on any node (release, remembered here, where a driver cannot count) |
//! | `redelivered` | the message's delivery count is over 1, or this terminal requeued it |
//! | `confirm.select` | `basic.ack` once the driver's completion says the message is kept; `basic.nack` when the driver or parser refuses it |
//! | `mandatory` | `basic.return 312 NO_ROUTE` when no driver serves the path or a topic had no subscriber |
//!
//! # Supported, and not
//!
//! Supported: protocol header and version check; `connection.start` with
//! SASL `PLAIN` and `AMQPLAIN` (any user without `auth`; checked by the
//! auth instance with it, see below); `tune` with `channel_max`, `frame_max` and `heartbeat` honoured both
//! ways; the virtual host `/`; many channels; `channel.flow` (answered,
//! deliveries go on: prefetch is the flow control);
//! connection and channel close handshakes both ways with the spec's reply
//! codes (`404 NOT_FOUND`, `403 ACCESS_REFUSED`, `405 RESOURCE_LOCKED`,
//! `406 PRECONDITION_FAILED`, `501 FRAME_ERROR`, `502 SYNTAX_ERROR`,
//! `503 COMMAND_INVALID`, `504 CHANNEL_ERROR`, `505 UNEXPECTED_FRAME`,
//! `530 NOT_ALLOWED`, `540 NOT_IMPLEMENTED`) and texts naming the queue,
//! exchange, field or byte offset; heartbeats both ways; the exchange,
//! queue, basic and confirm methods above. A publish a destination refuses
//! as full pauses that connection's reading for the driver's retry hint
//! (100 ms without one), with `connection.blocked` and `unblocked` to a
//! client that takes them; more than 4096 publishes waiting for their
//! driver pause reading until some complete.
//!
//! Not supported: `tx` (540); `headers` exchanges (540), `exchange.bind`;
//! `#` anywhere but as a binding key's last word (540); `immediate` (540,
//! as RabbitMQ); `queue.purge` and `queue.delete` of a queue whose driver
//! cannot (540 naming the queue: `driver.redisqueue` and queues behind
//! process isolation today; the memory and file queues can); topic bindings live as long as the
//! connection that made them, direct and fanout bindings until unbound, the
//! queue deleted or its exclusive owner gone; no binding or declared
//! exchange survives a restart (exchanges are never durable);
//! dead-lettering, TTLs, priorities and queue arguments (accepted,
//! ignored); `no_local`; `basic.get`'s `message-count` is 0; per-channel
//! (`global`) qos counts per consumer.
//! Header table values reach other protocols as text and come back as
//! long strings.
//!
//! # Authentication and access
//!
//! With `auth = "name"`, the auth instance (`bindery_classes::auth`, e.g.
//! `auth.file`) checks the `PLAIN` or `AMQPLAIN` credentials at
//! `connection.start-ok`; a `PLAIN` login with an empty user name passes
//! its password as a bearer token. A refused login gets `connection.close`
//! 403 `ACCESS_REFUSED` naming the user (never the password), is counted
//! in `bindery_amqp_auth_failures_total` and logged; an instance that
//! cannot judge gets 541 `INTERNAL_ERROR`. Then, per path, cached per
//! connection and rules generation:
//!
//! | method | asks |
//! |---|---|
//! | `basic.publish` | `publish` on each path it resolves to (the queue, the topic, each queue a direct or fanout exchange routes it to) |
//! | `basic.consume`, `basic.get`, `queue.purge`, `queue.delete` | `consume` on the queue's path |
//! | `queue.declare` that makes a queue | `consume` or `publish` on its path (not asked of a queue that exists, nor of a server-named one) |
//! | `queue.bind` to a topic exchange | `subscribe` on the topic filter's path and `publish` on the queue's (what the binding feeds it, as RabbitMQ asks read on the exchange and write on the queue) |
//!
//! A refusal is `channel.close` 403 naming the path and the user. A
//! server-named queue is its connection's own: using it asks nothing.
//! Exchanges are not guarded (they hold no messages; what flows through
//! them is judged on the paths it reaches). With `use_identity_as_username`
//! (and `tls.client_ca`), SASL `EXTERNAL` is offered and the verified
//! client certificate's name is the user whatever the mechanism (its
//! subject CN, else its first DNS or e-mail name, as MQTT takes it); the
//! auth instance then only authorizes; a certificate naming nobody gets
//! 403. `connection.update-secret` is answered but the new secret is not
//! checked (the identity stays the one logged in).
//! Without `auth`, any user name and password get in and everything is
//! allowed.
//!
//! ```toml
//! [instances.amqp]
//! module = "terminal.amqp"
//! bind = ["127.0.0.1:5672"]
//! [instances.amqp.config]
//! queue_root = "/queues/"
//! topic_root = "/topics/"
//! frame_max = 131072           # proposed in tune; larger frames close the connection
//! channel_max = 2047
//! heartbeat_secs = 60          # proposed; the client's answer wins (0: none)
//! max_unacked = 1000           # per consumer when prefetch is 0
//! max_message_bytes = 16777216 # larger bodies close the channel (311)
//! lease_secs = 1800            # an unacked message comes back after this
//! max_connections = 10000
//! handshake_timeout_secs = 10
//! dispatcher = "default"
//! auth = "default"             # an auth instance; leave out: any user, everything allowed
//! use_identity_as_username = false # true (with tls.client_ca): the client certificate's name is the user
//! ```
//!
//! The codec is written by hand for the methods above (modules `wire`,
//! `methods`): a generated one (`amq-protocol`) would bring a parser
//! combinator stack and more methods than the server answers, and its
//! packed-bit decoding had a bug that only servers hit; every method here is
//! round-trip tested, bits included.
//!
//! Longer than most files here: this overview is the crate's manual (the
//! mapping, what is supported, auth); the code is the configuration and
//! the state an instance's connections share.

mod channel;
#[cfg(test)]
mod codec_tests;
mod consume;
mod core;
#[cfg(any(fuzzing, test))]
#[doc(hidden)]
pub mod fuzzing;
mod guard;
#[cfg(test)]
mod guard_tests;
mod manage;
#[cfg(test)]
mod manage_tests;
mod methods;
mod publish;
mod queues;
#[cfg(test)]
mod tests;
mod wire;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bindery_classes::MessageId;
use bindery_classes::connection::{MakeCore, TlsSettings, Wake};
use bindery_classes::dispatcher::{self, DispatcherHandle};
use bindery_classes::metrics::{Counter, Scope};
use bindery_classes::terminal::{self, Probe, Serving};
use parking_lot::Mutex;
use serde::Deserialize;

bindery::module! {
    class: bindery_classes::class::Terminal,
    name: "amqp",
    description: "AMQP 0-9-1: queues, topic exchanges, confirms, prefetch, mapped onto queue and topic paths",
    main: module_main,
}

/// The instance configuration.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The dispatcher to hand publishes to, by name.
    pub dispatcher: String,
    /// The path queues live under (default exchange, routing key `K`).
    pub queue_root: String,
    /// The path topic exchanges' routing keys live under.
    pub topic_root: String,
    /// The largest frame, proposed in `connection.tune`.
    pub frame_max: u32,
    /// The most channels, proposed in `connection.tune`.
    pub channel_max: u16,
    /// The heartbeat proposed in `connection.tune`, in seconds.
    pub heartbeat_secs: u16,
    /// Unacknowledged messages per consumer when its prefetch is 0.
    pub max_unacked: u32,
    /// The largest message body.
    pub max_message_bytes: u64,
    /// How long a delivered, unacknowledged message stays leased.
    pub lease_secs: u64,
    /// Open connections at most.
    pub max_connections: u64,
    /// Open connections one client address may have (0: no limit);
    /// more are refused at accept and counted.
    pub max_connections_per_address: u64,
    /// Time allowed from connecting to `connection.open`.
    pub handshake_timeout_secs: u64,
    /// TLS on this instance's listeners; none: plaintext.
    pub tls: Option<TlsSettings>,
    /// The auth instance that authenticates clients (SASL `PLAIN`,
    /// `AMQPLAIN`) and authorizes what they do, by name; none: any user,
    /// everything allowed.
    pub auth: Option<String>,
    /// The verified client certificate's name is the user (SASL
    /// `EXTERNAL` offered; the credentials of `PLAIN` and `AMQPLAIN` are
    /// ignored), and `auth` only authorizes. Needs `tls.client_ca`.
    pub use_identity_as_username: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            dispatcher: "default".into(),
            queue_root: "/queues/".into(),
            topic_root: "/topics/".into(),
            frame_max: 128 * 1024,
            channel_max: 2047,
            heartbeat_secs: 60,
            max_unacked: 1000,
            max_message_bytes: 16 << 20,
            lease_secs: 1800,
            max_connections: 10_000,
            max_connections_per_address: 0,
            handshake_timeout_secs: 10,
            tls: None,
            auth: None,
            use_identity_as_username: false,
        }
    }
}

fn module_main(
    reg: &mut bindery::Registrar<'_, bindery_classes::class::Terminal>,
) -> Result<(), bindery::BoxError> {
    terminal::serve(reg, |cx| {
        let config = Config::checked(cx.config().parse()?, cx.name())?;
        let stats = Arc::new(Stats::new(&Scope::of(cx.runtime(), cx.name())));
        let instance = cx.name().to_owned();
        Ok(Serving {
            protocol: "amqp",
            max_connections: config.max_connections,
            max_connections_per_address: config.max_connections_per_address,
            probe: Some(Arc::new(AmqpProbe)),
            unix_socket: None,
            tls: config.tls.as_ref().map(|t| t.load(cx)).transpose()?,
            websocket: None,
            start: Box::new(move |rt| {
                let dispatcher = dispatcher::require(rt, &config.dispatcher)?;
                let auth = config
                    .auth
                    .as_deref()
                    .map(|name| bindery_classes::auth::Bound::require(rt, name))
                    .transpose()
                    .map_err(|e| format!("instance {instance:?}: auth: {e}"))?;
                let mut shared = Shared::new(&instance, config, dispatcher, stats);
                shared.auth = auth;
                Ok(AmqpCores(Arc::new(shared)))
            }),
        })
    });
    Ok(())
}

impl Config {
    /// Checks the roots and limits; each error names the field.
    pub fn checked(mut self, instance: &str) -> Result<Config, String> {
        for (field, root) in [
            ("queue_root", &mut self.queue_root),
            ("topic_root", &mut self.topic_root),
        ] {
            if !root.starts_with('/') {
                return Err(format!(
                    "instance {instance:?}: {field} must start with '/'"
                ));
            }
            if !root.ends_with('/') {
                root.push('/');
            }
        }
        if self.frame_max < 4096 {
            return Err(format!(
                "instance {instance:?}: frame_max must be at least 4096 (AMQP's minimum)"
            ));
        }
        if self.use_identity_as_username && self.tls.as_ref().is_none_or(|t| t.client_ca.is_none())
        {
            return Err(format!(
                "instance {instance:?}: use_identity_as_username needs tls.client_ca (clients must present a certificate)"
            ));
        }
        if self.channel_max == 0 {
            return Err(format!(
                "instance {instance:?}: channel_max must be at least 1"
            ));
        }
        Ok(self)
    }
}

/// Counters.
#[derive(Debug)]
pub struct Stats {
    pub(crate) closed_for_errors: Counter,
    pub(crate) channel_errors: Counter,
    pub(crate) auth_failures: Counter,
}

impl Stats {
    /// Registers the counters in `scope`.
    pub fn new(scope: &Scope) -> Stats {
        Stats {
            closed_for_errors: scope.counter(
                "bindery_amqp_closed_for_errors_total",
                "AMQP connections closed for protocol errors, limits or timeouts.",
            ),
            channel_errors: scope.counter(
                "bindery_amqp_channel_errors_total",
                "AMQP channels closed by the server (404, 403, 405, 406 ...).",
            ),
            auth_failures: scope.counter(
                "bindery_amqp_auth_failures_total",
                "AMQP logins refused for bad credentials (unknown user or wrong password).",
            ),
        }
    }
}

/// An exchange's type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Routing keys are topic paths.
    Topic,
    /// To the queues bound with the routing key.
    Direct,
    /// To every queue bound.
    Fanout,
}

impl Kind {
    /// The type named in `exchange.declare`.
    pub(crate) fn parse(s: &str) -> Option<Kind> {
        match s {
            "topic" => Some(Kind::Topic),
            "direct" => Some(Kind::Direct),
            "fanout" => Some(Kind::Fanout),
            _ => None,
        }
    }
}

/// A declared queue: who may use it.
#[derive(Clone, Debug)]
pub(crate) struct Declared {
    /// The connection an exclusive queue belongs to.
    pub(crate) owner: Option<u64>,
    /// Deleted when its last consumer goes.
    pub(crate) auto_delete: bool,
}

/// What every connection of an instance shares.
pub(crate) struct Shared {
    pub(crate) instance: String,
    pub(crate) config: Config,
    pub(crate) dispatcher: DispatcherHandle,
    /// The auth instance, if the configuration names one.
    pub(crate) auth: Option<bindery_classes::auth::Bound>,
    pub(crate) stats: Arc<Stats>,
    /// Queues declared, by name.
    pub(crate) queues: Mutex<HashMap<String, Declared>>,
    /// Exchanges by name: `amq.topic`, `amq.direct`, `amq.fanout` and
    /// those declared.
    pub(crate) exchanges: Mutex<HashMap<String, Kind>>,
    /// Direct and fanout bindings: exchange → (binding key, queue name).
    pub(crate) routes: Mutex<HashMap<String, Vec<(String, String)>>>,
    /// Messages this terminal gave back to their queue (nack, reject,
    /// recover, a channel closed): delivered again, they are `redelivered`
    /// (a release does not count a delivery). Bounded: cleared past 100,000.
    requeued: Mutex<HashSet<MessageId>>,
    next_connection: AtomicU64,
}

impl Shared {
    /// Shared state for an instance's connections.
    pub(crate) fn new(
        instance: &str,
        config: Config,
        dispatcher: DispatcherHandle,
        stats: Arc<Stats>,
    ) -> Shared {
        Shared {
            instance: instance.to_owned(),
            config,
            dispatcher,
            auth: None,
            stats,
            queues: Mutex::new(HashMap::new()),
            exchanges: Mutex::new(
                [
                    ("amq.topic", Kind::Topic),
                    ("amq.direct", Kind::Direct),
                    ("amq.fanout", Kind::Fanout),
                ]
                .into_iter()
                .map(|(n, k)| (n.to_owned(), k))
                .collect(),
            ),
            routes: Mutex::new(HashMap::new()),
            requeued: Mutex::new(HashSet::new()),
            next_connection: AtomicU64::new(1),
        }
    }

    pub(crate) fn connection_id(&self) -> u64 {
        self.next_connection.fetch_add(1, Ordering::Relaxed)
    }

    /// The path of queue `name`.
    pub(crate) fn queue_path(&self, name: &str) -> String {
        format!("{}{name}", self.config.queue_root)
    }

    /// Whether `exchange` is a topic exchange.
    /// The type of exchange `name`, if it exists.
    pub(crate) fn exchange(&self, name: &str) -> Option<Kind> {
        self.exchanges.lock().get(name).copied()
    }

    /// The queues a direct or fanout exchange routes `key` to.
    pub(crate) fn routed(&self, exchange: &str, kind: Kind, key: &str) -> Vec<String> {
        let routes = self.routes.lock();
        let mut queues: Vec<String> = routes
            .get(exchange)
            .into_iter()
            .flatten()
            .filter(|(k, _)| kind == Kind::Fanout || k == key)
            .map(|(_, q)| q.clone())
            .collect();
        queues.sort();
        queues.dedup();
        queues
    }

    /// Forgets the bindings of `queue` (deleted, or its exclusive owner
    /// gone).
    pub(crate) fn unroute(&self, queue: &str) {
        for bound in self.routes.lock().values_mut() {
            bound.retain(|(_, q)| q != queue);
        }
    }

    pub(crate) fn mark_requeued(&self, id: MessageId) {
        let mut r = self.requeued.lock();
        if r.len() >= 100_000 {
            r.clear();
        }
        r.insert(id);
    }

    pub(crate) fn was_requeued(&self, id: MessageId) -> bool {
        let r = self.requeued.lock();
        !r.is_empty() && r.contains(&id)
    }
}

/// Makes the protocol core of each connection.
struct AmqpCores(Arc<Shared>);

impl MakeCore for AmqpCores {
    type Core = core::Core;
    fn core(&self, peer: String, _: Wake) -> core::Core {
        core::Core::new(self.0.clone(), peer, std::time::Instant::now())
    }
}

/// Certification hooks: the protocol header answered with
/// `connection.start`, bytes that are not AMQP, a header cut short.
struct AmqpProbe;

impl Probe for AmqpProbe {
    fn exchange(&self, addr: SocketAddr) -> Result<(), String> {
        let got = terminal::talk(addr, wire::PROTOCOL_HEADER, Some(11))?;
        // A method frame on channel 0 that is connection.start (10, 10).
        if got[0] == wire::METHOD && got[1..3] == [0, 0] && got[7..11] == [0, 10, 0, 10] {
            Ok(())
        } else {
            Err(format!("answered {got:02x?}, want connection.start"))
        }
    }

    fn malformed(&self) -> Vec<u8> {
        b"GET / HTTP/1.1\r\n\r\n".to_vec()
    }

    fn partial(&self) -> Vec<u8> {
        b"AMQP\x00".to_vec()
    }
}
