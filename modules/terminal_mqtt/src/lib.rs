//! `terminal.mqtt`: MQTT 3.1.1 for unmodified clients.
//!
//! Topics map onto kernel paths under a root (`sensors/t1` is
//! `/topics/sensors/t1` with the default root), so a message published over
//! HTTP reaches MQTT subscribers and the reverse, through the same drivers.
//! Subscriptions with `+` and `#` become wildcard subscriptions of the
//! driver bound at the root.
//!
//! Supported: all fourteen packet types; QoS 0, 1 and 2 in both directions
//! (a QoS 1 or 2 publish is acknowledged only once the driver confirms);
//! retained messages (an empty retained payload deletes); the will, sent
//! only when a connection ends without DISCONNECT; keep-alive enforced at
//! 1.5 times the interval; persistent sessions (`clean_session = false`:
//! subscriptions, queued and in-flight messages, resent with DUP on
//! reconnect); client-id takeover; zero-length client ids; SUBACK 0x80 for
//! a refused filter; delivered QoS = min(publish QoS, granted QoS). A
//! message published over HTTP counts as QoS 1.
//!
//! Flow: a subscription is credited as its messages go into the
//! connection's output (at most 1 MiB unsent) and, at QoS 1 and 2, within
//! `max_inflight`; a publisher whose subscribers fall behind is read in
//! small batches with pauses. A client that stops reading or acknowledging
//! (or a persistent session whose client is away) stops taking credit, so
//! the driver calls it stalled and it slows nobody
//! ([`bindery_classes::fanout`]). When a driver ends a subscription (a slow
//! consumer under `slow_subscriber = "disconnect"`), the client is
//! disconnected with a warning naming it, counted in
//! `bindery_mqtt_subscriptions_ended_total`, and its session is not kept:
//! it reconnects with `session_present = 0` and subscribes again. When a
//! driver's *instance* stops while the server runs on (a restart of it
//! alone, a reload), the terminal subscribes again to what is bound next
//! instead (`rewire.rs`): clients and sessions stay.
//!
//! With `persistence` (a path prefix served by a durable queue driver,
//! `"/durable/mqtt/"` in the default server), retained messages,
//! persistent sessions (owner, subscriptions) and their QoS 1 and 2
//! messages survive a restart and a `kill -9`: they are kept as messages in
//! durable queues under the prefix (`persist.rs` says what is stored where,
//! `restore.rs` when; docs/mqtt.md the whole story and its limits), and
//! read back before the terminal listens. A QoS 1 or 2 publish is then
//! acknowledged only once it is also stored for every persistent session
//! it is for (and as retained, if it is). `session_expiry_secs` ends a
//! persistent session no client has had for that long, stored or not.
//!
//! What clients make is bounded (docs/security.md): `max_retained` and
//! `max_retained_bytes` cap the retained messages (past them a retained
//! publish is delivered but not retained: `retained.rs`), `max_sessions`
//! caps the persistent sessions kept (a new one past it gets CONNACK 3,
//! server unavailable) and `max_queued_bytes` what one session holds in
//! memory besides `max_queued`.
//!
//! A QoS 1 or 2 publish the driver refuses (a full queue, a durable store
//! out of space) closes the connection, with the reason in the log: MQTT
//! 3.1.1 has no negative PUBACK, and acknowledging would be a false
//! confirm. The client reconnects and resends; a QoS 0 publish is dropped.
//!
//! ```toml
//! [instances.mqtt]
//! module = "terminal.mqtt"
//! bind = ["127.0.0.1:1883"]
//! [instances.mqtt.config]
//! topic_root = "/topics/"
//! max_packet_bytes = 1048576     # larger packets close the connection
//! max_inflight = 32              # unacknowledged QoS 1/2 messages per client
//! max_queued = 1000              # messages waiting per session; more are dropped, counted
//! max_connections = 10000
//! connect_timeout_secs = 10      # for the CONNECT packet
//! dispatcher = "default"
//! auth = "users"                 # an auth instance (see below); none: everything allowed
//! use_identity_as_username = false # true (with tls.client_ca): the client certificate's name is the user
//! persistence = "/durable/mqtt/" # keep state in the durable queues there; none: in memory
//! session_expiry_secs = 604800   # a persistent session unused this long ends (0: never)
//! [instances.mqtt.config.websocket]  # MQTT over WebSocket (subprotocol `mqtt`); none: no listener
//! bind = ["127.0.0.1:8083"]
//! max_frame_bytes = 1048581      # larger WebSocket frames close with 1009 (default: max_packet_bytes + 5)
//! max_sessions = 1000            # persistent sessions kept; a new one past it: CONNACK 3 (0: no cap)
//! max_queued_bytes = 8388608     # bytes waiting per session in memory; more are dropped, counted
//! max_retained = 10000           # retained messages; past it: delivered, not retained (0: no cap)
//! max_retained_bytes = 67108864  # their topics and payloads, in bytes (0: no cap)
//! ```
//!
//! MQTT over WebSocket is a transport, not a second MQTT: the same cores,
//! sessions and retained messages, reached through
//! [`bindery_classes::connection::ws`] (with TLS too when `tls` is set).
//!
//! With `auth`, CONNECT's username and password are checked (CONNACK 4
//! for bad credentials, 5 for none where some are needed) — or, with
//! `use_identity_as_username` and `tls.client_ca`, the verified client
//! certificate's name is the user and CONNECT's username and password
//! are ignored — each publish
//! topic and subscription filter is authorized (SUBACK 0x80 for a refused
//! filter; a refused QoS 0 publish is dropped, a refused QoS 1 or 2
//! publish closes the connection), and a persistent session is resumed
//! only by the user who made it. See `guard.rs` and docs/security.md.

mod codec;
mod core;
#[cfg(any(fuzzing, test))]
#[doc(hidden)]
pub mod fuzzing;
mod guard;
#[cfg(test)]
mod guard_tests;
mod join;
mod persist;
mod restore;
mod retained;
mod rewire;
mod session;
mod tag;
#[cfg(test)]
mod tests;
mod traffic;

use std::net::SocketAddr;
use std::sync::Arc;

use bindery_classes::Message;
use bindery_classes::connection::{MakeCore, TlsSettings, Wake, WebSocket, WebSocketSettings};
use bindery_classes::dispatcher::{self, DispatcherHandle};
use bindery_classes::metrics::{Counter, Gauge, Scope};
use bindery_classes::terminal::{self, Probe, Serving};
use parking_lot::Mutex;
use serde::Deserialize;

bindery::module! {
    class: bindery_classes::class::Terminal,
    name: "mqtt",
    description: "MQTT 3.1.1: QoS 0-2, retained, will, sessions, wildcards, mapped onto topic paths",
    main: module_main,
}

/// The instance configuration.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The dispatcher to hand publishes to, by name.
    pub dispatcher: String,
    /// The auth instance that authenticates clients and authorizes their
    /// publishes and subscriptions, by name; none: everything is allowed.
    pub auth: Option<String>,
    /// The path MQTT topics live under.
    pub topic_root: String,
    /// Largest packet: beyond it the connection is closed.
    pub max_packet_bytes: usize,
    /// Unacknowledged QoS 1 and 2 messages in flight to one client.
    pub max_inflight: usize,
    /// Messages waiting in one session; more are dropped and counted.
    pub max_queued: usize,
    /// Open connections at most.
    pub max_connections: u64,
    /// Open connections one client address may have (0: no limit);
    /// more are refused at accept and counted
    /// (`bindery_connections_refused_per_address_total`).
    pub max_connections_per_address: u64,
    /// TLS on this instance's listeners (`cert`, `key`, optional
    /// `client_ca` for mutual TLS); none: plaintext.
    pub tls: Option<TlsSettings>,
    /// The verified client certificate's name (subject CN, else its first
    /// DNS or e-mail alternative name) is the client's user name, as
    /// mosquitto's option of the same name: CONNECT's username and
    /// password are ignored, and `auth` only authorizes. Needs
    /// `tls.client_ca`.
    pub use_identity_as_username: bool,
    /// Time allowed between connecting and sending CONNECT.
    pub connect_timeout_secs: u64,
    /// Where the terminal keeps its state (retained messages, persistent
    /// sessions, their queued QoS 1 and 2 messages): a path prefix served
    /// by a durable queue driver (`"/durable/mqtt/"`); none: in memory.
    pub persistence: Option<String>,
    /// A persistent session no client has had for this long ends, with
    /// its subscriptions and queued messages (0: never).
    pub session_expiry_secs: u64,
    /// Listeners for MQTT over WebSocket (subprotocol `mqtt`), to the same
    /// cores; none: no such listener.
    pub websocket: Option<WebSocketSettings>,
    /// Persistent sessions (`clean_session = false`) kept at most,
    /// connected or not; a CONNECT that would make one more is refused
    /// with CONNACK 3 (server unavailable), counted in
    /// `bindery_mqtt_sessions_refused_total` (0: no cap).
    pub max_sessions: usize,
    /// Bytes (payload and topic) waiting in one session's memory queue;
    /// a message past it is dropped and counted, as past `max_queued`
    /// (0: no cap).
    pub max_queued_bytes: usize,
    /// Topics with a retained message at most; a retained publish for a
    /// new topic past it is delivered but not retained, counted in
    /// `bindery_mqtt_retained_refused_total` (0: no cap).
    pub max_retained: usize,
    /// Bytes (topics and payloads) of retained messages at most; past it
    /// likewise (0: no cap).
    pub max_retained_bytes: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            dispatcher: "default".into(),
            auth: None,
            topic_root: "/topics/".into(),
            max_packet_bytes: 1024 * 1024,
            max_inflight: 32,
            max_queued: 1000,
            max_connections: 10_000,
            max_connections_per_address: 0,
            tls: None,
            use_identity_as_username: false,
            connect_timeout_secs: 10,
            persistence: None,
            session_expiry_secs: 7 * 86_400,
            websocket: None,
            max_sessions: 1000,
            max_queued_bytes: 8 * 1024 * 1024,
            max_retained: 10_000,
            max_retained_bytes: 64 * 1024 * 1024,
        }
    }
}

fn module_main(
    reg: &mut bindery::Registrar<'_, bindery_classes::class::Terminal>,
) -> Result<(), bindery::BoxError> {
    terminal::serve(reg, |cx| {
        let mut config: Config = cx.config().parse()?;
        if !config.topic_root.starts_with('/') {
            return Err(format!("instance {:?}: topic_root must start with '/'", cx.name()).into());
        }
        if !config.topic_root.ends_with('/') {
            config.topic_root.push('/');
        }
        if let Some(p) = &mut config.persistence {
            if !p.starts_with('/') {
                return Err(format!(
                    "instance {:?}: persistence must be a path prefix starting with '/'",
                    cx.name()
                )
                .into());
            }
            if !p.ends_with('/') {
                p.push('/');
            }
        }
        if config.use_identity_as_username
            && config.tls.as_ref().is_none_or(|t| t.client_ca.is_none())
        {
            return Err(format!(
                "instance {:?}: use_identity_as_username needs tls.client_ca (clients must present a certificate)",
                cx.name()
            )
            .into());
        }
        let stats = Arc::new(Stats::new(&Scope::of(cx.runtime(), cx.name())));
        let instance = cx.name().to_owned();
        // When the instance stops, what it holds leased in the store is
        // given back for the next incarnation (held here till then: the
        // connections may all be gone by that time).
        let started: Arc<Mutex<Option<Arc<Shared>>>> = Arc::default();
        let stopping = started.clone();
        cx.on_stop(move |_| {
            if let Some(shared) = stopping.lock().take() {
                shared.release_all();
            }
        });
        Ok(Serving {
            protocol: "mqtt",
            max_connections: config.max_connections,
            max_connections_per_address: config.max_connections_per_address,
            probe: Some(Arc::new(MqttProbe)),
            unix_socket: None,
            tls: config.tls.as_ref().map(|t| t.load(cx)).transpose()?,
            websocket: config.websocket.as_ref().map(|w| WebSocket {
                bind: w.bind.clone(),
                // `mqttv3.1`: what older Paho JavaScript clients ask for.
                subprotocols: &["mqtt", "mqttv3.1"],
                // A whole packet in one frame: the largest packet and its
                // fixed header.
                max_frame_bytes: w.max_frame_bytes.unwrap_or(config.max_packet_bytes + 5),
            }),
            start: Box::new(move |rt| {
                let dispatcher = dispatcher::require(rt, &config.dispatcher)?;
                let auth = config
                    .auth
                    .as_deref()
                    .map(|name| bindery_classes::auth::Bound::require(rt, name))
                    .transpose()?;
                let mut shared = Shared::new(&instance, config, dispatcher, stats);
                if let Some(prefix) = &shared.config.persistence {
                    let store = persist::Store::new(rt.clone(), prefix, shared.rewire.clone())
                        .map_err(|e| format!("instance {instance:?}: {e}"))?;
                    shared.store = Some(Arc::new(store));
                }
                shared.auth = auth;
                shared.runtime = Some(rt.clone());
                let shared = Arc::new(shared);
                shared.rewire.attach(&shared);
                shared
                    .load()
                    .map_err(|e| format!("instance {instance:?}: {e}"))?;
                if shared.store.is_some() {
                    *started.lock() = Some(shared.clone());
                }
                Ok(MqttCores(shared))
            }),
        })
    });
    Ok(())
}

/// Counters.
#[derive(Debug)]
pub(crate) struct Stats {
    pub(crate) closed_for_errors: Counter,
    pub(crate) dropped: Counter,
    pub(crate) subscriptions_ended: Counter,
    pub(crate) auth_failures: Counter,
    pub(crate) retained_refused: Counter,
    pub(crate) sessions_refused: Counter,
    pub(crate) retained: Gauge,
    pub(crate) retained_bytes: Gauge,
    pub(crate) sessions: Gauge,
}

impl Stats {
    pub(crate) fn new(scope: &Scope) -> Stats {
        Stats {
            closed_for_errors: scope.counter(
                "bindery_mqtt_closed_for_errors_total",
                "MQTT connections closed for protocol errors, limits or timeouts.",
            ),
            dropped: scope.counter(
                "bindery_mqtt_session_dropped_total",
                "Messages dropped because a session held max_queued already.",
            ),
            subscriptions_ended: scope.counter(
                "bindery_mqtt_subscriptions_ended_total",
                "MQTT clients disconnected because a driver ended a subscription (slow consumers).",
            ),
            auth_failures: scope.counter(
                "bindery_mqtt_auth_failures_total",
                "CONNECTs refused for bad credentials (unknown user or wrong password).",
            ),
            retained_refused: scope.counter(
                "bindery_mqtt_retained_refused_total",
                "Retained publishes delivered but not retained: past max_retained or max_retained_bytes.",
            ),
            sessions_refused: scope.counter(
                "bindery_mqtt_sessions_refused_total",
                "CONNECTs refused (CONNACK 3) because max_sessions persistent sessions were kept.",
            ),
            retained: scope.gauge(
                "bindery_mqtt_retained_messages",
                "Topics with a retained message.",
            ),
            retained_bytes: scope.gauge(
                "bindery_mqtt_retained_bytes",
                "Bytes of retained messages (topics and payloads).",
            ),
            sessions: scope.gauge(
                "bindery_mqtt_persistent_sessions",
                "Persistent sessions kept, connected or not.",
            ),
        }
    }
}

/// What every connection of an instance shares.
pub(crate) struct Shared {
    pub(crate) instance: String,
    pub(crate) config: Config,
    pub(crate) dispatcher: DispatcherHandle,
    /// The auth instance, if the configuration names one.
    pub(crate) auth: Option<bindery_classes::auth::Bound>,
    pub(crate) stats: Arc<Stats>,
    pub(crate) sessions: session::Sessions,
    /// Retained messages by topic.
    pub(crate) retained: Mutex<retained::Retained>,
    /// The headers of a message published at QoS 0, 1, 2 (shared, so a
    /// publish allocates none).
    pub(crate) qos_headers: [Arc<[bindery_classes::message::Header]>; 3],
    /// The same with [`bindery_classes::driver::RETAIN`], for a retained
    /// publish a driver keeps.
    pub(crate) retain_headers: [Arc<[bindery_classes::message::Header]>; 3],
    /// `application/octet-stream`, shared likewise.
    pub(crate) octets: Arc<str>,
    /// The topic root, shared.
    pub(crate) root: Arc<str>,
    /// What this instance's publishes carry in [`persist::VIA`].
    pub(crate) via: Arc<str>,
    /// The durable store, with persistence.
    pub(crate) store: Option<Arc<persist::Store>>,
    /// Set once the server stops: sessions ending then are not forgotten
    /// in the store.
    pub(crate) stopping: std::sync::atomic::AtomicBool,
    /// The runtime, to tell a server stopping (drivers stop before the
    /// terminal, ending subscriptions) from a session really ending.
    pub(crate) runtime: Option<Arc<bindery::Runtime>>,
    /// Subscriptions to make again once a driver instance is replaced.
    pub(crate) rewire: Arc<rewire::Rewire>,
}

impl Shared {
    pub(crate) fn new(
        instance: &str,
        config: Config,
        dispatcher: DispatcherHandle,
        stats: Arc<Stats>,
    ) -> Shared {
        let via = config.persistence.is_some();
        // Unique to this incarnation on this node: another node's
        // instance of the same name is another publisher.
        let via_id: Arc<str> = format!(
            "{instance}/{}/{}",
            std::process::id(),
            bindery_classes::MessageId::next()
        )
        .into();
        Shared {
            instance: instance.to_owned(),
            root: config.topic_root.as_str().into(),
            store: None,
            stopping: Default::default(),
            runtime: None,
            rewire: Arc::default(),
            config,
            dispatcher,
            auth: None,
            sessions: session::Sessions::counted(stats.sessions.clone()),
            retained: Mutex::new(retained::Retained::counted(
                stats.retained.clone(),
                stats.retained_bytes.clone(),
            )),
            stats,
            qos_headers: [0, 1, 2].map(|q: u8| -> Arc<[bindery_classes::message::Header]> {
                let mut h: Vec<bindery_classes::message::Header> =
                    vec![(traffic::QOS_HEADER.into(), q.to_string().into())];
                if via {
                    h.push((persist::VIA.into(), (*via_id).into()));
                }
                h.into()
            }),
            retain_headers: [0, 1, 2].map(|q: u8| -> Arc<[bindery_classes::message::Header]> {
                let mut h: Vec<bindery_classes::message::Header> =
                    vec![(traffic::QOS_HEADER.into(), q.to_string().into())];
                if via {
                    h.push((persist::VIA.into(), (*via_id).into()));
                }
                h.push((bindery_classes::driver::RETAIN.into(), "1".into()));
                h.into()
            }),
            octets: "application/octet-stream".into(),
            via: via_id,
        }
    }

    /// The driver serving `path` if it keeps retained messages itself
    /// (across nodes: `driver.redistopic`).
    pub(crate) fn retained_by_driver(
        &self,
        path: &str,
    ) -> Option<bindery_classes::driver::DriverHandle> {
        self.dispatcher.driver(path).ok().filter(|d| d.retains())
    }

    /// The kernel path of an MQTT topic.
    pub(crate) fn path(&self, topic: &str) -> String {
        format!("{}{topic}", self.config.topic_root)
    }

    /// A message for `topic` published at `qos`.
    pub(crate) fn message(&self, topic: &str, qos: u8, payload: bytes::Bytes) -> Message {
        let mut m = Message::new(&self.path(topic), "", payload);
        m.content_type = self.octets.clone();
        m.headers = self.qos_headers[usize::from(qos.min(2))].clone();
        m
    }

    /// Keeps `message` as `topic`'s retained message (an empty body
    /// deletes it). False if the caps refused it (`retained.rs`): it is
    /// then not stored either.
    pub(crate) fn retain(&self, topic: &str, message: &Message) -> bool {
        let caps = retained::Caps {
            count: self.config.max_retained,
            bytes: self.config.max_retained_bytes,
        };
        let kept = {
            let mut retained = self.retained.lock();
            if message.body.is_empty() {
                retained.remove(topic);
                return true;
            }
            retained.put(topic, message.clone(), caps)
        };
        if let Err(had) = kept {
            if let Some(store) = self.store.as_ref().filter(|_| had) {
                // The stored value is stale now: cleared there too.
                let clear = self.message(topic, 0, bytes::Bytes::new());
                store.retain(topic, &clear, bindery::Completion::new(|_| {}));
            }
            self.stats.retained_refused.inc();
            let n = self.stats.retained_refused.get();
            if n.is_power_of_two() {
                tracing::warn!(
                    instance = %self.instance,
                    topic,
                    refused = n,
                    max_retained = caps.count,
                    max_retained_bytes = caps.bytes,
                    "retained publish delivered but not retained: the instance holds its max_retained or max_retained_bytes"
                );
            }
        }
        kept.is_ok()
    }

    /// The retained messages whose topics `filter` matches.
    pub(crate) fn retained_matching(&self, filter: &str) -> Vec<Message> {
        self.retained
            .lock()
            .iter()
            .filter(|(t, _)| bindery_classes::topic::matches(filter, t))
            .map(|(_, m)| m.clone())
            .collect()
    }

    /// The QoS `m` was published with: by pointer when it carries this
    /// instance's shared headers (no string compared), else by its header.
    pub(crate) fn qos_of(&self, m: &Message) -> codec::QoS {
        match self
            .qos_headers
            .iter()
            .position(|h| Arc::ptr_eq(h, &m.headers))
        {
            Some(q) => q as codec::QoS,
            None => traffic::message_qos(m),
        }
    }

    /// The MQTT topic of a kernel path, if it is under the root.
    pub(crate) fn topic<'a>(&self, path: &'a str) -> Option<&'a str> {
        path.strip_prefix(self.config.topic_root.as_str())
    }
}

/// Makes the protocol core of each connection.
struct MqttCores(Arc<Shared>);

impl MakeCore for MqttCores {
    type Core = core::Core;
    fn core(&self, peer: String, _: Wake) -> core::Core {
        let mut core = core::Core::new(self.0.clone(), std::time::Instant::now());
        core.peer = peer;
        core
    }
}

/// Certification hooks: CONNECT then PINGREQ, bytes that are not MQTT, a
/// CONNECT cut short.
struct MqttProbe;

impl Probe for MqttProbe {
    fn exchange(&self, addr: SocketAddr) -> Result<(), String> {
        let mut request = Vec::new();
        codec::encode(
            &mut request,
            &codec::Packet::Connect(Box::new(codec::Connect {
                level: 4,
                clean_session: true,
                keep_alive: 30,
                client_id: String::new(),
                will: None,
                username: None,
                password: None,
            })),
        );
        codec::encode(&mut request, &codec::Packet::PingReq);
        let got = terminal::talk(addr, &request, Some(6))?;
        if got == [0x20, 2, 0, 0, 0xd0, 0] {
            Ok(())
        } else {
            Err(format!(
                "answered {got:02x?}, want CONNACK accepted and PINGRESP"
            ))
        }
    }

    fn malformed(&self) -> Vec<u8> {
        b"GET / HTTP/1.1\r\n\r\n".to_vec()
    }

    fn partial(&self) -> Vec<u8> {
        vec![0x10, 40, 0, 4, b'M', b'Q']
    }
}
