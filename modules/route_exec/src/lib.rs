//! `route.exec`: an HTTP route that runs a command per request and streams
//! its stdout to the client — the command line as the interface, so the
//! handler can be written in any language (seed 003's HTTP endpoints that
//! run a subprocess; adnanh/webhook, but streaming and safe by default).
//!
//! ```toml
//! [instances.pkglist]
//! module = "route.exec"
//! bind = ["GET /pkg/{name}"]
//! [instances.pkglist.config]
//! command = ["pkgtool", "show", "--format=json", "{name}"]
//! placeholders = { name = "[a-z0-9][a-z0-9.+-]*" }
//! content_type = "application/json"
//! timeout = "30s"
//! max_concurrent = 4
//! ```
//!
//! - **argv only**, never a shell. Request values reach the command only
//!   through placeholders (`{capture}`, `{query.name}`) that must match
//!   their pattern whole; hostile values are refused with 400 before
//!   anything runs: empty, too long, a control character, a leading `-`,
//!   a `..` segment, or not matching the pattern whole (docs/exec.md).
//! - The body goes to stdin. The environment is cleared, then `PATH`, the
//!   configured `env`, and: `BINDERY_INSTANCE`, `BINDERY_METHOD`,
//!   `BINDERY_PATH`, `BINDERY_QUERY`, `BINDERY_CONTENT_TYPE`,
//!   `BINDERY_CONTENT_LENGTH`, `BINDERY_REMOTE_ADDR`, and
//!   `BINDERY_HEADER_<NAME>` for each header listed in `headers`.
//! - stdout streams to the client as it is written (chunked), at the
//!   client's pace. stderr goes to the instance's log, and its tail into
//!   the error body when the command fails (`stderr_in_errors = false` to
//!   keep it out).
//! - Exit 0 → 200 (`status = { "0" = 201, "3" = 404 }` maps codes);
//!   another code → 500 unless mapped; timeout → 504; over
//!   `max_concurrent` → 503 with `Retry-After`; the client leaving →
//!   `SIGTERM` to the process group, `SIGKILL` after `kill_grace`; output
//!   past `max_output_bytes` is cut with a marker line. Once the head is
//!   sent (the first stdout bytes) the status cannot change: a command that
//!   fails after writing cuts the response (the client sees it incomplete).
//!   `stream = false` buffers the output (up to `max_output_bytes`) and
//!   answers with the mapped status when the command ends.
//!
//! The child's life — pipes, process group, parent-death signal, reaping —
//! is [`bindery_classes::exec`]'s.

mod argv;
#[cfg(test)]
mod conformance {
    bindery_conformance::route_suite!(&crate::MODULE);
}

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bindery::ReactorHandle;
use bindery_classes::exec::{self, Finished, Outcome, Sink};
use bindery_classes::metrics::{Counter, Gauge, Scope};
use bindery_classes::route::{self, Responder, Route, RouteRequest};
use bytes::Bytes;
use serde::Deserialize;

bindery::module! {
    class: bindery_classes::class::Route,
    name: "exec",
    description: "runs a command per request; stdout streams to the client",
    main: module_main,
    certify_config: "command = [\"cat\"]\nmax_concurrent = 64",
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// The instance configuration (see the crate docs).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The program and its arguments, with placeholders.
    pub command: Vec<String>,
    /// A pattern per placeholder the command uses (`name`, `query.name`).
    #[serde(default)]
    pub placeholders: BTreeMap<String, String>,
    /// Decoded placeholder values longer than this are refused.
    #[serde(default = "default_max_value")]
    pub max_value_bytes: usize,
    /// From start to `SIGTERM` (and 504).
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
    /// How long the pipes are read after the command exits.
    #[serde(
        default = "default_exit_delay",
        deserialize_with = "exec::duration::deserialize"
    )]
    pub exit_delay: Duration,
    /// Commands running at once; more get 503.
    #[serde(default = "default_concurrency")]
    pub max_concurrent: usize,
    /// Stdout bytes at most; the rest is cut with a marker.
    #[serde(default = "default_max_output")]
    pub max_output_bytes: u64,
    /// Stream stdout as it comes (true) or answer when the command ends.
    #[serde(default = "yes")]
    pub stream: bool,
    /// The response's `Content-Type`.
    #[serde(default = "default_content_type")]
    pub content_type: String,
    /// Exit code → HTTP status.
    #[serde(default)]
    pub status: BTreeMap<String, u16>,
    /// Put the tail of stderr into error bodies.
    #[serde(default = "yes")]
    pub stderr_in_errors: bool,
    /// Bytes of stderr kept for error bodies.
    #[serde(default = "default_tail")]
    pub stderr_tail_bytes: usize,
    /// Environment variables for the command.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Request headers passed as `BINDERY_HEADER_<NAME>`.
    #[serde(default)]
    pub headers: Vec<String>,
    /// The working directory (relative: under the data directory).
    #[serde(default)]
    pub dir: Option<PathBuf>,
}

fn default_max_value() -> usize {
    256
}
fn default_timeout() -> Duration {
    secs(30)
}
fn default_grace() -> Duration {
    secs(2)
}
fn default_exit_delay() -> Duration {
    Duration::from_millis(200)
}
fn default_concurrency() -> usize {
    4
}
fn default_max_output() -> u64 {
    64 << 20
}
fn yes() -> bool {
    true
}
fn default_content_type() -> String {
    "application/octet-stream".into()
}
fn default_tail() -> usize {
    4096
}

fn module_main(
    reg: &mut bindery::Registrar<'_, bindery_classes::class::Route>,
) -> Result<(), bindery::BoxError> {
    route::register(reg, |cx| {
        let config: Config = cx.config().parse()?;
        let template = argv::Template::new(
            &config.command,
            &config.placeholders,
            config.max_value_bytes,
        )?;
        let mut status = BTreeMap::new();
        for (code, s) in &config.status {
            let code: i32 = code
                .parse()
                .map_err(|_| format!("status: {code:?} is not an exit code"))?;
            if !(100..=599).contains(s) {
                return Err(format!("status.{code}: {s} is not an HTTP status").into());
            }
            status.insert(code, *s);
        }
        let reactors: Arc<OnceLock<Vec<ReactorHandle>>> = Arc::default();
        let set = reactors.clone();
        cx.on_start(move |rt| {
            let _ = set.set(rt.reactors().to_vec());
            Ok(())
        });
        let scope = Scope::of(cx.runtime(), cx.name());
        Ok(ExecRoute {
            instance: cx.name().into(),
            template,
            limits: exec::Limits {
                timeout: config.timeout,
                kill_grace: config.kill_grace,
                exit_delay: config.exit_delay,
                max_output: config.max_output_bytes,
                stderr_tail: config.stderr_tail_bytes,
            },
            dir: config.dir.as_ref().map(|d| cx.resolve(d)),
            status,
            config,
            reactors,
            next: AtomicUsize::new(0),
            running: Arc::new(AtomicUsize::new(0)),
            stats: Arc::new(Stats {
                started: scope.counter("bindery_exec_started_total", "Commands started."),
                failed: scope.counter(
                    "bindery_exec_failed_total",
                    "Commands that failed, timed out or could not start.",
                ),
                refused: scope.counter(
                    "bindery_exec_refused_total",
                    "Requests refused before running anything (placeholders).",
                ),
                busy: scope.counter(
                    "bindery_exec_busy_total",
                    "Requests answered 503 because max_concurrent commands were running.",
                ),
                running: scope.gauge("bindery_exec_running", "Commands running now."),
            }),
        })
    });
    Ok(())
}

struct Stats {
    started: Counter,
    failed: Counter,
    refused: Counter,
    busy: Counter,
    running: Gauge,
}

/// A `route.exec` instance.
pub struct ExecRoute {
    instance: Arc<str>,
    template: argv::Template,
    limits: exec::Limits,
    dir: Option<PathBuf>,
    status: BTreeMap<i32, u16>,
    config: Config,
    reactors: Arc<OnceLock<Vec<ReactorHandle>>>,
    next: AtomicUsize,
    running: Arc<AtomicUsize>,
    stats: Arc<Stats>,
}

impl ExecRoute {
    fn environment(&self, request: &RouteRequest) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = self
            .config
            .env
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let mut meta = |k: &str, v: &str| {
            if !v.contains('\0') {
                env.push((k.to_owned(), v.to_owned()));
            }
        };
        meta("BINDERY_INSTANCE", &self.instance);
        meta("BINDERY_METHOD", &request.method);
        meta("BINDERY_PATH", &request.path);
        meta("BINDERY_QUERY", &request.query);
        meta(
            "BINDERY_CONTENT_TYPE",
            request.header("content-type").unwrap_or(""),
        );
        meta("BINDERY_CONTENT_LENGTH", &request.body.len().to_string());
        meta("BINDERY_REMOTE_ADDR", &request.peer);
        for name in &self.config.headers {
            if let Some(v) = request.header(name) {
                let var = format!(
                    "BINDERY_HEADER_{}",
                    name.to_ascii_uppercase().replace('-', "_")
                );
                meta(&var, v);
            }
        }
        env
    }

    fn status_of(&self, code: Option<i32>) -> u16 {
        match code {
            Some(c) => self
                .status
                .get(&c)
                .copied()
                .unwrap_or(if c == 0 { 200 } else { 500 }),
            None => 500,
        }
    }
}

impl Route for ExecRoute {
    fn handle(&self, request: RouteRequest, responder: Responder) {
        let argv = match self.template.argv(&request) {
            Ok(a) => a,
            Err(why) => {
                self.stats.refused.inc();
                return responder.fail(400, why);
            }
        };
        let Some(reactors) = self.reactors.get().filter(|r| !r.is_empty()) else {
            return responder.fail(503, "the route is not started");
        };
        if self.running.fetch_add(1, Ordering::AcqRel) >= self.config.max_concurrent {
            self.running.fetch_sub(1, Ordering::AcqRel);
            self.stats.busy.inc();
            let n = self.config.max_concurrent;
            return responder.fail(503, format!("busy: {n} commands are running"));
        }
        self.stats.started.inc();
        self.stats.running.inc();
        let reactor = &reactors[self.next.fetch_add(1, Ordering::Relaxed) % reactors.len()];
        let command = exec::Command {
            argv,
            env: self.environment(&request),
            dir: self.dir.clone(),
            stdin: request.body,
        };
        let answer = Answer {
            responder: Some(responder),
            stream: self.config.stream,
            buffered: Vec::new(),
            content_type: self.config.content_type.clone(),
            ok_status: self.status_of(Some(0)),
            status: self.status.clone(),
            stderr_in_errors: self.config.stderr_in_errors,
            max_output: self.limits.max_output,
            instance: self.instance.clone(),
            running: self.running.clone(),
            stats: self.stats.clone(),
        };
        exec::run(reactor, self.instance.clone(), command, self.limits, answer);
    }
}

/// Carries one command's output to its client.
struct Answer {
    responder: Option<Responder>,
    stream: bool,
    buffered: Vec<u8>,
    content_type: String,
    ok_status: u16,
    status: BTreeMap<i32, u16>,
    stderr_in_errors: bool,
    max_output: u64,
    instance: Arc<str>,
    running: Arc<AtomicUsize>,
    stats: Arc<Stats>,
}

impl Answer {
    fn head(&self) -> Vec<(String, String)> {
        vec![("Content-Type".into(), self.content_type.clone())]
    }

    fn error_body(&self, what: &str, finished: &Finished) -> String {
        let tail = finished.stderr_tail.trim_end();
        if self.stderr_in_errors && !tail.is_empty() {
            format!("command {what}\n--- stderr (last lines) ---\n{tail}")
        } else {
            format!("command {what}")
        }
    }
}

impl Sink for Answer {
    fn started(&mut self, _: u32, wake: Arc<dyn Fn() + Send + Sync>) {
        if let Some(r) = &self.responder {
            r.set_waker(move || wake());
        }
    }

    fn stdout(&mut self, chunk: &[u8]) -> bool {
        let Some(r) = &mut self.responder else {
            return false;
        };
        if !self.stream {
            self.buffered.extend_from_slice(chunk);
            return true;
        }
        if !r.is_headed() {
            let head = vec![("Content-Type".into(), self.content_type.clone())];
            r.head(self.ok_status, head);
        }
        r.body(Bytes::copy_from_slice(chunk))
    }

    fn room(&self) -> bool {
        self.responder.as_ref().is_some_and(Responder::room)
    }

    fn gone(&self) -> bool {
        self.responder.as_ref().is_none_or(Responder::is_gone)
    }

    fn finished(&mut self, finished: Finished) {
        self.running.fetch_sub(1, Ordering::AcqRel);
        self.stats.running.dec();
        let Some(mut r) = self.responder.take() else {
            return;
        };
        let what = finished.describe();
        match &finished.outcome {
            Outcome::Exited { code, .. } if finished.success() || r.is_headed() => {
                let status = code
                    .and_then(|c| self.status.get(&c).copied())
                    .unwrap_or(if finished.success() { 200 } else { 500 });
                if r.is_headed() {
                    if finished.success() {
                        r.end();
                    } else {
                        self.stats.failed.inc();
                        tracing::warn!(instance = %self.instance, "command {what} after its output began: response cut");
                        r.fail(500, format!("command {what}"));
                    }
                    return;
                }
                r.head(status, self.head());
                r.body(Bytes::from(std::mem::take(&mut self.buffered)));
                r.end();
            }
            Outcome::Exited { code, .. } => {
                let status = code
                    .and_then(|c| self.status.get(&c).copied())
                    .unwrap_or(500);
                if status < 400 {
                    r.head(status, self.head());
                    r.body(Bytes::from(std::mem::take(&mut self.buffered)));
                    return r.end();
                }
                self.stats.failed.inc();
                tracing::info!(instance = %self.instance, "command {what}: {status}");
                r.fail(status, self.error_body(&what, &finished));
            }
            Outcome::OutputCut => {
                if !r.is_headed() {
                    r.head(self.ok_status, self.head());
                    r.body(Bytes::from(std::mem::take(&mut self.buffered)));
                }
                let marker = format!(
                    "\n[bindery: output cut at {} bytes (max_output_bytes)]\n",
                    self.max_output
                );
                r.body(Bytes::from(marker));
                tracing::warn!(instance = %self.instance, "command output cut at {} bytes", self.max_output);
                r.end();
            }
            Outcome::TimedOut => {
                self.stats.failed.inc();
                tracing::warn!(instance = %self.instance, "command timed out: process group killed");
                r.fail(504, self.error_body(&what, &finished));
            }
            Outcome::Abandoned => {
                // The client left; nobody hears this answer.
                r.fail(499, "the client left");
            }
            Outcome::NotStarted(_) => {
                self.stats.failed.inc();
                r.fail(500, format!("command {what}"));
            }
        }
    }
}
