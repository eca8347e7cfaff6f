//! `driver.redisqueue`: queues kept in Redis Streams, shared by every
//! Bindery node that uses the same Redis and prefix.
//!
//! Each destination is a stream (`{prefix}q:{path}`) with one consumer
//! group (`bindery`); each driver instance is one consumer in it. So
//! several nodes behind a load balancer serve the same queues: a message
//! published on one is consumed on any, once.
//!
//! - **publish**: XADD (and INCRBY of the queue's byte count), pipelined.
//!   The message is confirmed only from Redis's answer (and, with
//!   `min_replicas = N`, once WAIT says N replicas have it). The message id
//!   is made from the entry id, so every node knows it. A queue that holds
//!   `max_depth` entries or `max_queue_bytes` of bodies refuses (`Full`,
//!   HTTP 503 + Retry-After); the limits are checked against what Redis
//!   said after the writer's last batch, so each node may pass them by at
//!   most one batch (1,024 messages).
//! - **consume**: XREADGROUP with the subscribers' credit; a delivery is
//!   leased for the subscriber's lease, and the Delivery-Count is the one
//!   Redis keeps (right across nodes).
//! - **ack**: XACK and XDEL in one script, so an acked message leaves
//!   Redis's memory (XACK alone keeps the entry in the stream). An ack
//!   through any node works.
//! - **leases**: a lease that runs out here is released in Redis and
//!   claimed again (XAUTOCLAIM) by whichever node has credit, its count
//!   raised. A node renews the entries it holds; the entries of a node that
//!   died are claimed by the others once idle for `orphan_after_ms`. A
//!   lease with less than `orphan_after_ms` left has its idle time set in
//!   Redis (once, in the reader's next round after the delivery) to
//!   reach `orphan_after_ms` when it ends, so a dead node's short leases
//!   come back when they end (a node that dies within that moment loses
//!   them to `orphan_after_ms`, as a long one). A longer lease comes
//!   back `orphan_after_ms` after its node stopped renewing it, sooner
//!   than its end: a dead node holds nothing longer than that (its
//!   consumers' connections died with it; a pull consumer's ack through
//!   another node after that may find the message taken again).
//! - **Redis down**: publishes and acks fail with `Unavailable` and a retry
//!   hint (HTTP 503 + Retry-After; never a false confirm); consumers wait;
//!   each connection reconnects with backoff (50 ms to 2 s) and reloads
//!   the scripts; `/metrics` shows `store_full` 1 for every destination
//!   meanwhile. With Redis's `appendfsync always`, nothing confirmed is
//!   lost by a Redis restart.
//!
//! Threads: `pool_size` writers (publishes and acks, pipelined; a
//! destination always uses the same one, so its order holds) and one
//! reader; no thread per message or subscriber, and every method returns
//! at once. Standalone Redis or a Sentinel-managed primary (give its
//! address); TLS (`rediss://`) is not built in.
//!
//! ```toml
//! [instances.shared.config]
//! url = "redis://:password@127.0.0.1:6379/0"
//! prefix = "bindery:"
//! max_depth = 100000
//! max_queue_bytes = 1073741824
//! min_replicas = 0
//! replica_timeout_ms = 1000
//! pool_size = 1
//! connect_timeout_ms = 2000
//! command_timeout_ms = 5000
//! orphan_after_ms = 10000
//! ```

mod batch;
mod codec;
mod conn;
mod reader;
mod scripts;
mod shared;
mod writer;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bindery::{Completion, Failure};
use bindery_classes::driver::{self, DestinationStats, DriverInfo, Receipt, SubscribeOptions};
use bindery_classes::metrics::Scope;
use bindery_classes::{Consumer, Driver, Message, MessageId, Subscription};
use parking_lot::Mutex;
use serde::Deserialize;

use crate::conn::Timeouts;
use crate::shared::{Settings, Shared};
use crate::writer::{Op, Writer, unavailable};

bindery::module! {
    class: bindery_classes::class::Driver,
    name: "redisqueue",
    description: "queues on Redis Streams and consumer groups, shared by every node on the same Redis",
    main: module_main,
    certify_config: "url = \"{redis}\"\nprefix = \"{scratch}:\"\nmax_depth = 20000\nmax_queue_bytes = 4194304",
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
    /// Prefix of every key the instance uses. Nodes that share queues
    /// share the prefix.
    pub prefix: String,
    /// Messages per queue, waiting plus leased.
    pub max_depth: u64,
    /// Body bytes per queue, waiting plus leased (a lone message may pass
    /// it).
    pub max_queue_bytes: u64,
    /// Replicas that must have a publish (WAIT) before it is confirmed.
    pub min_replicas: u32,
    /// How long a publish waits for `min_replicas`.
    pub replica_timeout_ms: u64,
    /// Writer connections (each its own thread).
    pub pool_size: usize,
    /// How long connecting may take.
    pub connect_timeout_ms: u64,
    /// How long a command may take before the connection is called broken.
    pub command_timeout_ms: u64,
    /// Entries a node stopped renewing (it died) are claimed by others
    /// after this long.
    pub orphan_after_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            url: "redis://127.0.0.1:6379/".into(),
            tls_ca: None,
            tls_cert: None,
            tls_key: None,
            prefix: "bindery:".into(),
            max_depth: 100_000,
            max_queue_bytes: 1 << 30,
            min_replicas: 0,
            replica_timeout_ms: 1000,
            pool_size: 1,
            connect_timeout_ms: 2000,
            command_timeout_ms: 5000,
            orphan_after_ms: 10_000,
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
        let queue = RedisQueue::open_with_metrics(config, Scope::of(cx.runtime(), cx.name()))
            .map_err(|e| format!("instance {:?}: {e}", cx.name()))?;
        let up = queue.up_probe();
        let url = queue.shared.settings.display_url.clone();
        driver::report_health(cx, move || {
            (!up()).then(|| format!("redis at {url} is unreachable: publishes and acks fail with 503 until it is back"))
        });
        Ok(queue)
    });
    Ok(())
}

/// An instance: a consumer in every queue's group, with its connections.
pub struct RedisQueue {
    shared: Arc<Shared>,
    writers: Vec<Writer>,
    reader: Mutex<Option<JoinHandle<()>>>,
}

impl RedisQueue {
    /// Checks `config`, connects (a Redis that is down is not an error:
    /// publishes fail with `Unavailable` until it is up) and starts the
    /// threads.
    pub fn open(config: Config) -> Result<RedisQueue, String> {
        Self::open_with_metrics(config, Scope::detached("redisqueue"))
    }

    /// Like [`RedisQueue::open`]; the queues' meters register in `scope`.
    pub fn open_with_metrics(config: Config, scope: Scope) -> Result<RedisQueue, String> {
        let field = |name: &str, why: &str| Err(format!("config field {name}: {why}"));
        if config.max_depth == 0 {
            return field("max_depth", "must be at least 1");
        }
        if config.pool_size == 0 || config.pool_size > 64 {
            return field("pool_size", "must be from 1 to 64");
        }
        if config.orphan_after_ms < 300 {
            return field("orphan_after_ms", "must be at least 300");
        }
        if config.command_timeout_ms == 0 || config.connect_timeout_ms == 0 {
            return field("command_timeout_ms", "timeouts must be above 0");
        }
        let client = open_client(&config)?;
        let display_url = conn::display_url(&config.url);
        let timeouts = Timeouts {
            connect: Duration::from_millis(config.connect_timeout_ms),
            command: Duration::from_millis(config.command_timeout_ms),
        };
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let stamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        let shared = Arc::new(Shared::new(
            Settings {
                prefix: config.prefix.clone(),
                group: "bindery".into(),
                consumer: format!(
                    "{}-{}-{stamp:x}-{}",
                    hostname(),
                    std::process::id(),
                    N.fetch_add(1, Ordering::Relaxed)
                ),
                max_depth: config.max_depth,
                max_queue_bytes: config.max_queue_bytes,
                min_replicas: config.min_replicas,
                replica_timeout: Duration::from_millis(config.replica_timeout_ms),
                orphan_after: Duration::from_millis(config.orphan_after_ms),
                display_url: display_url.clone(),
            },
            scope,
        ));
        let writers: Vec<Writer> = (0..config.pool_size)
            .map(|_| {
                let first = conn::connect(&client, timeouts, Duration::ZERO)
                    .map_err(|e| {
                        tracing::warn!(url = %display_url, error = %e,
                            "redisqueue: redis is unreachable; publishes fail with Unavailable until it is up");
                    })
                    .ok();
                Writer::start(&shared, client.clone(), timeouts, first)
            })
            .collect();
        let reader = reader::start(shared.clone(), client, timeouts);
        let queue = RedisQueue {
            shared,
            writers,
            reader: Mutex::new(reader),
        };
        let unblocker = queue.writers[0].sender();
        let reader_id = queue.shared.clone();
        *queue.shared.unblock.lock() = Some(Box::new(move || {
            let id = reader_id.reader_id.load(Ordering::Acquire);
            if let Some(tx) = &unblocker {
                let _ = tx.send(Op::Unblock(id));
            }
        }));
        Ok(queue)
    }

    /// Whether every connection to Redis is up.
    pub fn is_up(&self) -> bool {
        self.up_probe()()
    }

    /// [`RedisQueue::is_up`], as a function that outlives a borrow.
    pub fn up_probe(&self) -> impl Fn() -> bool + Send + Sync + 'static {
        let writers: Vec<_> = self.writers.iter().map(Writer::up_flag).collect();
        let shared = self.shared.clone();
        move || {
            writers.iter().all(|w| w.load(Ordering::Acquire))
                && shared.reader_up.load(Ordering::Acquire)
        }
    }

    fn writer(&self, dest: &str) -> &Writer {
        let h = dest.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        });
        &self.writers[(h % self.writers.len() as u64) as usize]
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "node".into())
}

impl Driver for RedisQueue {
    fn info(&self) -> DriverInfo {
        DriverInfo {
            queue: true,
            durable: true,
        }
    }

    fn publish(&self, message: Message, done: Completion<Receipt>) {
        let w = self.writer(&message.destination);
        if !w.is_up() {
            return done.fail(unavailable(
                &message.destination,
                &self.shared.settings.display_url,
                "not connected",
            ));
        }
        let op = Op::Publish {
            headers: codec::headers(&message),
            dest: message.destination,
            content_type: message.content_type,
            body: message.body,
            done,
        };
        if let Err(Op::Publish { dest, done, .. }) = w.send(op) {
            done.fail(unavailable(
                &dest,
                &self.shared.settings.display_url,
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
        let control =
            self.shared
                .subscribe(destination, consumer, options.credit, options.lease)?;
        Ok(Subscription::new(control))
    }

    fn ack(&self, destination: &str, id: MessageId, done: Completion<()>) {
        let w = self.writer(destination);
        if !w.is_up() {
            return done.fail(unavailable(
                destination,
                &self.shared.settings.display_url,
                "not connected",
            ));
        }
        let size = self
            .shared
            .peek(destination, |d| d.leases.get(&id).map(|l| l.size))
            .flatten();
        if let Err(Op::Ack { done, .. }) = w.send(Op::Ack {
            dest: destination.into(),
            id,
            size,
            done,
        }) {
            done.fail(unavailable(
                destination,
                &self.shared.settings.display_url,
                "the instance is stopping",
            ));
        }
    }

    fn release(&self, destination: &str, id: MessageId) -> Result<(), Failure> {
        self.give_back(destination, id, true)
    }

    fn retry(&self, destination: &str, id: MessageId) -> Result<(), Failure> {
        self.give_back(destination, id, false)
    }

    fn stats(&self) -> Vec<DestinationStats> {
        self.shared.stats(self.is_up())
    }

    fn stop(&self) {
        if self.shared.stopped.swap(true, Ordering::AcqRel) {
            return;
        }
        // Confirm or fail what is queued, then end the subscriptions.
        self.shared.unblock.lock().take();
        for w in &self.writers {
            w.stop();
        }
        self.shared.close_all("the driver instance is stopping");
        if let Some(t) = self.reader.lock().take() {
            let _ = t.join();
        }
    }
}

impl Drop for RedisQueue {
    fn drop(&mut self) {
        self.stop();
    }
}

impl RedisQueue {
    /// Gives a leased message back; `uncount`: as if never delivered.
    fn give_back(&self, destination: &str, id: MessageId, uncount: bool) -> Result<(), Failure> {
        let held = self.shared.peek(destination, |d| {
            let held = d.leases.remove(&id).is_some();
            if held {
                d.to_release.push((id, uncount));
            }
            held
        });
        if held != Some(true) {
            return Err(Failure::new(
                bindery::FailureKind::NotFound,
                format!("{destination}: message {id} is not leased here"),
            ));
        }
        self.shared.poke();
        Ok(())
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
