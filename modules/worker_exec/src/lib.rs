//! `worker.exec`: a job runner. Works the queues it is bound to by running
//! a command per message — the body on stdin — and acks a message only
//! when its command exits 0.
//!
//! ```toml
//! [instances.builder]
//! module = "worker.exec"
//! bind = ["/durable/builds"]          # the queues it works
//! [instances.builder.config]
//! command = ["./build.sh"]
//! concurrency = 2                      # commands at once, per queue
//! timeout = "10m"
//! max_deliveries = 5                   # then to the dead-letter path
//! dead_letter = "/durable/builds-dead"
//! reply_to = "/queues/build-results"   # optional: stdout published there
//! ```
//!
//! - Exit 0 → ack (after stdout is published to `reply_to`, if set, as a
//!   message with headers `Original-Id` and `Original-Destination`).
//!   Non-zero, a crash or a timeout → not acked: the queue delivers it
//!   again when its lease ends. The lease is `lease` (default: `timeout` +
//!   `kill_grace` + 5 s, and never shorter than that, so a message is not
//!   redelivered while its command still runs). `retry_delay = "2s"`
//!   releases a failed message for another try after that long instead.
//! - A message delivered more than `max_deliveries` times is published to
//!   `dead_letter` (body, type and headers kept, plus `Original-Id`,
//!   `Original-Destination`, `Deliveries` and `Last-Error`) and then
//!   acked. Without `max_deliveries`, a failing message is tried for as
//!   long as it fails.
//! - It consumes through the dispatcher's driver lookup, like a terminal,
//!   so any queue driver works (memory, file, Redis).
//! - The command's environment: `PATH`, the configured `env`, and
//!   `BINDERY_INSTANCE`, `BINDERY_DESTINATION`, `BINDERY_MESSAGE_ID`,
//!   `BINDERY_CONTENT_TYPE`, `BINDERY_DELIVERY_COUNT`. stderr goes to the
//!   instance's log; a failure's log line carries its tail.
//! - Stopping takes nothing more, lets running commands finish until the
//!   deadline and stops the rest (their messages stay unacked).
//!
//! The child's life — pipes, process group, parent-death signal, reaping —
//! is [`bindery_classes::exec`]'s.

mod queue;
#[cfg(test)]
mod conformance {
    bindery_conformance::worker_suite!(&crate::MODULE);
}

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bindery_classes::dispatcher;
use bindery_classes::exec;
use bindery_classes::metrics::{Counter, Gauge, Scope};
use bindery_classes::worker::{self, Worker};
use parking_lot::{Condvar, Mutex};
use serde::Deserialize;

bindery::module! {
    class: bindery_classes::class::Worker,
    name: "exec",
    description: "runs a command per queued message; acks on exit 0",
    main: module_main,
    certify_config: "command = [\"grep\", \"-qx\", \"ok\"]\nconcurrency = 4\ntimeout = \"10s\"",
}

/// The instance configuration (see the crate docs).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The program and its arguments (no placeholders: the message is on
    /// stdin and in the environment).
    pub command: Vec<String>,
    /// The dispatcher whose drivers serve the queues, by name.
    #[serde(default = "default_dispatcher")]
    pub dispatcher: String,
    /// Commands at once, per queue.
    #[serde(default = "default_concurrency")]
    pub concurrency: u32,
    /// From start to `SIGTERM`.
    #[serde(
        default = "default_timeout",
        deserialize_with = "exec::duration::deserialize"
    )]
    pub timeout: Duration,
    /// From `SIGTERM` to `SIGKILL`.
    #[serde(
        default = "default_grace",
        deserialize_with = "exec::duration::deserialize"
    )]
    pub kill_grace: Duration,
    /// How long a taken message stays leased (at least `timeout` +
    /// `kill_grace` + 5 s).
    #[serde(default, deserialize_with = "optional_duration")]
    pub lease: Option<Duration>,
    /// After a failure, release the message for another try after this
    /// long, instead of waiting for its lease to end.
    #[serde(default, deserialize_with = "optional_duration")]
    pub retry_delay: Option<Duration>,
    /// Deliveries before a message goes to `dead_letter`.
    #[serde(default)]
    pub max_deliveries: Option<u32>,
    /// Where messages go after `max_deliveries`.
    #[serde(default)]
    pub dead_letter: Option<String>,
    /// Where a successful command's stdout is published.
    #[serde(default)]
    pub reply_to: Option<String>,
    /// The content type of replies.
    #[serde(default = "default_reply_type")]
    pub reply_content_type: String,
    /// Stdout bytes kept for a reply at most (the rest is cut, logged).
    #[serde(default = "default_max_output")]
    pub max_output_bytes: u64,
    /// Environment variables for the command.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// The working directory (relative: under the data directory).
    #[serde(default)]
    pub dir: Option<PathBuf>,
}

fn default_dispatcher() -> String {
    "default".into()
}
fn default_concurrency() -> u32 {
    1
}
fn default_timeout() -> Duration {
    Duration::from_secs(300)
}
fn default_grace() -> Duration {
    Duration::from_secs(5)
}
fn default_reply_type() -> String {
    "application/octet-stream".into()
}
fn default_max_output() -> u64 {
    16 << 20
}

fn optional_duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    exec::duration::deserialize(d).map(Some)
}

/// What each queue's handler needs, shared.
pub(crate) struct Settings {
    pub(crate) instance: Arc<str>,
    pub(crate) config: Config,
    pub(crate) lease: Duration,
    pub(crate) limits: exec::Limits,
    pub(crate) dir: Option<PathBuf>,
    pub(crate) stats: Stats,
}

pub(crate) struct Stats {
    pub(crate) running: Gauge,
    pub(crate) succeeded: Counter,
    pub(crate) failed: Counter,
    pub(crate) dead_lettered: Counter,
}

fn module_main(
    reg: &mut bindery::Registrar<'_, bindery_classes::class::Worker>,
) -> Result<(), bindery::BoxError> {
    worker::register(reg, |cx| {
        let config: Config = cx.config().parse()?;
        if config.command.is_empty() {
            return Err("command: must name a program".into());
        }
        if config.concurrency == 0 {
            return Err("concurrency: must be at least 1".into());
        }
        if config.max_deliveries.is_some() && config.dead_letter.is_none() {
            return Err("max_deliveries needs dead_letter: where such messages go".into());
        }
        let floor = config.timeout + config.kill_grace + Duration::from_secs(5);
        let lease = match config.lease {
            Some(l) if l < floor => {
                return Err(format!(
                    "lease: {l:?} is shorter than timeout + kill_grace + 5s ({floor:?}): a message would be delivered again while its command runs"
                )
                .into());
            }
            Some(l) => l,
            None => floor,
        };
        for key in cx.keys() {
            if !key.starts_with('/') {
                return Err(format!("bind: {key:?} is not a queue path").into());
            }
        }
        let scope = Scope::of(cx.runtime(), cx.name());
        let settings = Arc::new(Settings {
            instance: cx.name().into(),
            lease,
            limits: exec::Limits {
                timeout: config.timeout,
                kill_grace: config.kill_grace,
                exit_delay: Duration::from_millis(200),
                max_output: config.max_output_bytes,
                stderr_tail: 4096,
            },
            dir: config.dir.as_ref().map(|d| cx.resolve(d)),
            config,
            stats: Stats {
                running: scope.gauge("bindery_jobs_running", "Commands running now."),
                succeeded: scope.counter(
                    "bindery_jobs_succeeded_total",
                    "Messages whose command exited 0 (acked).",
                ),
                failed: scope.counter(
                    "bindery_jobs_failed_total",
                    "Commands that failed or timed out (message left unacked).",
                ),
                dead_lettered: scope.counter(
                    "bindery_jobs_dead_lettered_total",
                    "Messages moved to the dead-letter path.",
                ),
            },
        });
        let worker = Arc::new(ExecWorker {
            settings: settings.clone(),
            queues: Mutex::new(Vec::new()),
            live: Arc::new((Mutex::new(0), Condvar::new())),
        });
        let (me, keys) = (worker.clone(), cx.keys().to_vec());
        cx.on_start(move |rt| {
            let dispatcher = dispatcher::require(rt, &me.settings.config.dispatcher)?;
            for path in keys {
                let driver = dispatcher
                    .driver(&path)
                    .map_err(|f| format!("no queue driver serves {path:?}: {}", f.reason))?;
                let reactor = rt.next_reactor().clone();
                let at = queue::start(
                    &reactor,
                    me.settings.clone(),
                    dispatcher.clone(),
                    driver,
                    path,
                    me.live.clone(),
                );
                me.queues.lock().push((reactor, at));
            }
            Ok(())
        });
        Ok(worker)
    });
    Ok(())
}

/// A `worker.exec` instance.
pub struct ExecWorker {
    settings: Arc<Settings>,
    /// Each worked queue's handler.
    queues: Mutex<Vec<(bindery::ReactorHandle, queue::Place)>>,
    /// Queue handlers still open, and a signal when one closes.
    live: Arc<(Mutex<usize>, Condvar)>,
}

impl Worker for ExecWorker {
    fn running(&self) -> u64 {
        self.settings.stats.running.get()
    }

    fn stop(&self, deadline: Instant) {
        for (reactor, place) in self.queues.lock().drain(..) {
            queue::stop(&reactor, &place, deadline);
        }
        let (count, closed) = &*self.live;
        let mut open = count.lock();
        // The handlers stop their commands at the deadline; allow them the
        // kill grace to end.
        let last = deadline + self.settings.config.kill_grace + Duration::from_secs(1);
        while *open > 0 {
            if closed.wait_until(&mut open, last).timed_out() {
                tracing::warn!(instance = %self.settings.instance, "{} queue handlers still open after the deadline", *open);
                break;
            }
        }
    }
}
