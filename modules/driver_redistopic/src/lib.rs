//! `driver.redistopic`: topics that span every Bindery node on the same
//! Redis and prefix.
//!
//! A publish goes to Redis (PUBLISH on `{prefix}t:{path}`). Every node
//! listens on `{prefix}t:*` (one PSUBSCRIBE connection) and fans out what
//! it hears, its own publishes included: so the subscribers of every node
//! see the messages of all publishers in one order, Redis's. A publish is
//! confirmed when it comes back to its node and has been fanned out there
//! (the receipt counts that node's subscribers); if it cannot come back
//! (the listening connection dropped), it fails with `Unavailable`. Fan-out on a node
//! is [`bindery_classes::topics::LocalTopics`], as in `driver.topic`: the
//! same wildcard rules (`+`, a last `#`), the same per-subscriber buffer,
//! slow-subscriber policy and stall rule.
//!
//! Like `driver.topic`, a message reaches the subscribers live when it
//! arrives, and nothing is stored but retained messages: a node whose
//! listening connection is down misses what is published meanwhile.
//!
//! Retained messages (MQTT's retain flag, header
//! [`bindery_classes::driver::RETAIN`]) are kept in one Redis hash,
//! `{prefix}retained`, by path, written in the same pipeline just before
//! the PUBLISH, so a subscriber on any node that asks
//! ([`Driver::retained`]) finds the latest; an empty body clears it.
//! `max_retained` caps how many are kept (past it, a retained publish to
//! a new topic is delivered, not retained, and logged). The receipt's `delivered_to`
//! and `backlog` count this node's subscribers.
//!
//! Redis down: publishes fail with `Unavailable` and a retry hint (HTTP
//! 503 + Retry-After), never confirmed; both connections reconnect with
//! backoff (50 ms to 2 s); `/metrics` shows `store_full` 1 meanwhile. The
//! listener hears a heartbeat from its own node every second and
//! reconnects when it has heard nothing for a few seconds.
//!
//! ```toml
//! [instances.news.config]
//! url = "redis://127.0.0.1:6379/"
//! prefix = "bindery:"
//! buffer = 1000
//! slow_subscriber = "drop-oldest"
//! stall_ms = 250
//! max_topics = 10000
//! max_retained = 10000
//! connect_timeout_ms = 2000
//! command_timeout_ms = 5000
//! ```

mod link;
mod wire;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bindery::{Completion, Failure, FailureKind};
use bindery_classes::driver::{self, DestinationStats, DriverInfo, Receipt, SubscribeOptions};
use bindery_classes::fanout::{Limits, SlowPolicy};
use bindery_classes::metrics::Scope;
use bindery_classes::topics::LocalTopics;
use bindery_classes::{Consumer, Driver, Message, MessageId, Subscription};
use parking_lot::Mutex;
use serde::Deserialize;

use crate::link::{Link, Op};

bindery::module! {
    class: bindery_classes::class::Driver,
    name: "redistopic",
    description: "topics across nodes on Redis pub/sub, fanned out on each node",
    main: module_main,
    certify_config: "url = \"{redis}\"\nprefix = \"{scratch}:\"",
}

/// The instance configuration.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// `redis://[:password@]host[:port][/db]`, or `rediss://...` for TLS.
    pub url: String,
    /// With `rediss://`: the CA certificate(s) to trust, PEM (relative:
    /// under the data directory); without it, the system's roots.
    pub tls_ca: Option<std::path::PathBuf>,
    /// With `rediss://`: a client certificate, PEM, for a Redis that
    /// asks for one (`tls-auth-clients`).
    pub tls_cert: Option<std::path::PathBuf>,
    /// The client certificate's key, PEM.
    pub tls_key: Option<std::path::PathBuf>,
    /// Prefix of the channels; nodes that share topics share it.
    pub prefix: String,
    /// Messages buffered per subscriber beyond its credit.
    pub buffer: usize,
    /// What to do when that buffer is full.
    pub slow_subscriber: SlowPolicy,
    /// Milliseconds a subscriber may take nothing while messages wait
    /// before it is stalled and stops slowing publishers.
    pub stall_ms: u64,
    /// Topics per instance.
    pub max_topics: usize,
    /// Retained messages kept in Redis for all nodes (0: no cap); past
    /// it, a retained publish to a new topic is delivered, not retained.
    pub max_retained: usize,
    /// How long connecting may take.
    pub connect_timeout_ms: u64,
    /// How long a command may take before the connection is called broken.
    pub command_timeout_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        let l = Limits::default();
        Config {
            url: "redis://127.0.0.1:6379/".into(),
            tls_ca: None,
            tls_cert: None,
            tls_key: None,
            prefix: "bindery:".into(),
            buffer: l.buffer,
            slow_subscriber: l.policy,
            stall_ms: l.stall.as_millis() as u64,
            max_topics: 10_000,
            max_retained: 10_000,
            connect_timeout_ms: 2000,
            command_timeout_ms: 5000,
        }
    }
}

fn module_main(
    reg: &mut bindery::Registrar<'_, bindery_classes::class::Driver>,
) -> Result<(), bindery::BoxError> {
    driver::register(reg, |cx| {
        let mut config: Config = cx.config().parse()?;
        for path in [
            &mut config.tls_ca,
            &mut config.tls_cert,
            &mut config.tls_key,
        ]
        .into_iter()
        .flatten()
        {
            *path = cx.resolve(path);
        }
        let topic = RedisTopic::open_with_metrics(config, Scope::of(cx.runtime(), cx.name()))
            .map_err(|e| format!("instance {:?}: {e}", cx.name()))?;
        let inner = topic.inner.clone();
        driver::report_health(cx, move || {
            let up = inner.up.load(Ordering::Acquire) && inner.listening.load(Ordering::Acquire);
            (!up).then(|| format!("redis at {} is unreachable: publishes fail with 503 and subscribers miss messages until it is back", inner.url))
        });
        Ok(topic)
    });
    Ok(())
}

/// What the driver and its threads share.
pub(crate) struct Inner {
    pub(crate) topics: LocalTopics,
    /// This instance's id on the channels (its own messages come back).
    pub(crate) node: u64,
    pub(crate) prefix: String,
    pub(crate) url: String,
    /// The writer's connection is up.
    pub(crate) up: AtomicBool,
    /// The listener's connection is up.
    pub(crate) listening: AtomicBool,
    /// This node's publishes sent to Redis and not yet heard back: the
    /// listener fans each out when it comes back, so every node's
    /// subscribers see Redis's order, and completes it then.
    pub(crate) pending: Mutex<HashMap<MessageId, Completion<Receipt>>>,
    pub(crate) stopped: AtomicBool,
    /// [`Config::max_retained`].
    pub(crate) max_retained: usize,
    /// Retained publishes the cap refused.
    pub(crate) retained_refused: std::sync::atomic::AtomicU64,
}

impl Inner {
    /// The hash of retained messages, by path.
    pub(crate) fn retained_key(&self) -> String {
        format!("{}retained", self.prefix)
    }

    /// Fails every publish still waiting to be heard back.
    pub(crate) fn fail_pending(&self, why: &str) {
        let pending: Vec<_> = self.pending.lock().drain().collect();
        for (_, done) in pending {
            done.fail(unavailable("a publish", &self.url, why));
        }
    }

    /// The channel of `dest`.
    pub(crate) fn channel(&self, dest: &str) -> String {
        format!("{}t:{dest}", self.prefix)
    }

    /// This node's heartbeat channel.
    pub(crate) fn beat_channel(&self) -> String {
        format!("{}beat:{:016x}", self.prefix, self.node)
    }
}

/// An instance: this node's subscribers, and its two connections.
pub struct RedisTopic {
    inner: Arc<Inner>,
    link: Link,
}

impl RedisTopic {
    /// Checks `config`, connects (a Redis that is down is not an error:
    /// publishes fail until it is up) and starts the threads.
    pub fn open(config: Config) -> Result<RedisTopic, String> {
        Self::open_with_metrics(config, Scope::detached("redistopic"))
    }

    /// Like [`RedisTopic::open`]; the topics' meters register in `scope`.
    pub fn open_with_metrics(config: Config, scope: Scope) -> Result<RedisTopic, String> {
        if config.buffer == 0 {
            return Err("config field buffer: must be at least 1".into());
        }
        if config.command_timeout_ms == 0 || config.connect_timeout_ms == 0 {
            return Err("config field command_timeout_ms: timeouts must be above 0".into());
        }
        let client = open_client(&config)?;
        let seed = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let node = seed ^ (u64::from(std::process::id()) << 40);
        let inner = Arc::new(Inner {
            topics: LocalTopics::new(
                Limits {
                    buffer: config.buffer,
                    policy: config.slow_subscriber,
                    stall: Duration::from_millis(config.stall_ms),
                },
                config.max_topics,
                scope,
            ),
            node,
            prefix: config.prefix.clone(),
            url: link::display_url(&config.url),
            up: AtomicBool::new(false),
            listening: AtomicBool::new(false),
            pending: Mutex::new(HashMap::new()),
            stopped: AtomicBool::new(false),
            max_retained: config.max_retained,
            retained_refused: Default::default(),
        });
        let link = Link::start(
            inner.clone(),
            client,
            Duration::from_millis(config.connect_timeout_ms),
            Duration::from_millis(config.command_timeout_ms),
        );
        Ok(RedisTopic { inner, link })
    }

    /// Whether both connections to Redis are up.
    pub fn is_up(&self) -> bool {
        self.inner.up.load(Ordering::Acquire) && self.inner.listening.load(Ordering::Acquire)
    }
}

fn unavailable(dest: &str, url: &str, why: &str) -> Failure {
    Failure::new(
        FailureKind::Unavailable,
        format!("{dest}: redis at {url} is unavailable ({why})"),
    )
    .retry_after(Duration::from_secs(1))
}

impl Driver for RedisTopic {
    fn info(&self) -> DriverInfo {
        DriverInfo {
            queue: false,
            durable: false,
        }
    }

    fn publish(&self, mut message: Message, done: Completion<Receipt>) {
        if let Err(f) = self.inner.topics.check_publish(&message.destination) {
            return done.fail(f);
        }
        if !self.inner.up.load(Ordering::Acquire) || !self.inner.listening.load(Ordering::Acquire) {
            return done.fail(unavailable(
                &message.destination,
                &self.inner.url,
                "not connected",
            ));
        }
        message.delivery_count = 1;
        if let Err(Op::Publish(p)) = self.link.send(Op::Publish(Box::new((message, done)))) {
            let (m, done) = *p;
            done.fail(unavailable(
                &m.destination,
                &self.inner.url,
                "the instance is stopping",
            ));
        }
    }

    fn subscribe(
        &self,
        destination: &str,
        consumer: Consumer,
        options: SubscribeOptions,
    ) -> Result<Subscription, Failure> {
        self.inner.topics.subscribe(destination, consumer, options)
    }

    fn retains(&self) -> bool {
        true
    }

    fn retained(&self, filter: &str, done: Completion<Vec<Message>>) {
        if !self.is_up() {
            return done.fail(unavailable(filter, &self.inner.url, "not connected"));
        }
        if let Err(Op::Retained(r)) = self
            .link
            .send(Op::Retained(Box::new((filter.into(), done))))
        {
            let (filter, done) = *r;
            done.fail(unavailable(
                &filter,
                &self.inner.url,
                "the instance is stopping",
            ));
        }
    }

    fn stats(&self) -> Vec<DestinationStats> {
        let full = u64::from(!self.is_up());
        let mut out = self.inner.topics.stats();
        for s in &mut out {
            s.store_full = full;
        }
        out
    }

    fn stop(&self) {
        if self.inner.stopped.swap(true, Ordering::AcqRel) {
            return;
        }
        self.link.stop();
        self.inner.topics.stop();
    }
}

impl Drop for RedisTopic {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A client for `url`; with `rediss://`, TLS trusting `tls_ca` (PEM; the
/// system's roots without it), and presenting `tls_cert` + `tls_key` when
/// given (Redis's `tls-auth-clients`). Errors name the field.
fn open_client(config: &Config) -> Result<redis::Client, String> {
    let tls = config.tls_ca.is_some() || config.tls_cert.is_some() || config.tls_key.is_some();
    if !tls {
        return redis::Client::open(config.url.as_str())
            .map_err(|e| format!("config field url: {e}"));
    }
    if !config.url.starts_with("rediss://") {
        return Err("config field url: tls_ca, tls_cert and tls_key need a rediss:// url".into());
    }
    let read = |field: &str, path: &std::path::Path| {
        std::fs::read(path).map_err(|e| format!("config field {field}: {}: {e}", path.display()))
    };
    let client_tls = match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => Some(redis::ClientTlsConfig {
            client_cert: read("tls_cert", cert)?,
            client_key: read("tls_key", key)?,
        }),
        (None, None) => None,
        _ => return Err("config field tls_cert: tls_cert and tls_key go together".into()),
    };
    let root_cert = config
        .tls_ca
        .as_ref()
        .map(|p| read("tls_ca", p))
        .transpose()?;
    redis::Client::build_with_tls(
        config.url.as_str(),
        redis::TlsCertificates {
            client_tls,
            root_cert,
        },
    )
    .map_err(|e| format!("config field url: {e}"))
}
