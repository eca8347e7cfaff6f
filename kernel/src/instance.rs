//! Instances as the kernel keeps them: what a module's factory gets
//! ([`InstanceContext`]), the states an instance goes through, how a
//! supervised instance reports ([`Monitor`]), and what introspection shows
//! of modules, instances and bindings.

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;

use crate::bindings::{Handle, KeyKind};
use crate::config::{InstanceSpec, Isolation, IsolationSpec, Section};
use crate::error::BoxError;
use crate::registry::ModuleDescriptor;

use crate::runtime::Runtime;

pub(crate) type StartHook = Box<dyn FnOnce(&Arc<Runtime>) -> Result<(), BoxError> + Send>;
pub(crate) type StopHook = Box<dyn FnOnce(Instant) + Send>;
pub(crate) type ReloadHook = Arc<dyn Fn() + Send + Sync>;

/// How long an instance stopped without a deadline of its own may take.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(5);

/// What a module's factory gets to make one instance.
pub struct InstanceContext {
    pub(crate) name: String,
    pub(crate) module: &'static ModuleDescriptor,
    pub(crate) keys: Vec<String>,
    pub(crate) section: Section,
    pub(crate) runtime: Arc<Runtime>,
    pub(crate) data_dir: PathBuf,
    pub(crate) span: tracing::Span,
    pub(crate) on_start: RefCell<Vec<StartHook>>,
    pub(crate) on_stop: RefCell<Vec<StopHook>>,
    pub(crate) on_reload: RefCell<Vec<ReloadHook>>,
    pub(crate) isolation: IsolationSpec,
    pub(crate) monitor: Monitor,
}

impl InstanceContext {
    /// Where the instance runs and how it is restarted (`isolation`,
    /// `restart`, ... in its configuration). A class's `register` helper
    /// that supports isolation reads this and makes a proxy.
    pub fn isolation(&self) -> &IsolationSpec {
        &self.isolation
    }

    /// How this incarnation tells the runtime that it failed on its own
    /// (its host died), or what process serves it.
    pub fn monitor(&self) -> Monitor {
        self.monitor.clone()
    }

    /// The instance's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The keys the instance is bound to (a terminal's listen addresses).
    pub fn keys(&self) -> &[String] {
        &self.keys
    }

    /// The module being instantiated.
    pub fn module(&self) -> &'static ModuleDescriptor {
        self.module
    }

    /// The instance's configuration section; parse it with
    /// [`Section::parse`].
    pub fn config(&self) -> &Section {
        &self.section
    }

    /// The server's data directory (`[server] data_dir`, `--data-dir`;
    /// `bindery-data` by default, relative to the working directory).
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Resolves one of the module's path settings: an absolute path is
    /// kept, a relative one is put under the [data
    /// directory](Self::data_dir). A module calls this on every path field
    /// of its configuration, so one setting moves all of a server's data.
    pub fn resolve(&self, path: &Path) -> PathBuf {
        self.data_dir.join(path)
    }

    /// The runtime the instance will live in. Its tables are complete only
    /// once every instance is made: look other classes up in a start hook.
    pub fn runtime(&self) -> &Arc<Runtime> {
        &self.runtime
    }

    /// A `tracing` span for this instance; enter it around its work.
    pub fn span(&self) -> &tracing::Span {
        &self.span
    }

    /// Runs `hook` when the instance starts: at server start, after every
    /// instance is made and bound (in configuration order), or when the
    /// instance is started at run time. A failing hook fails the start with
    /// an error naming this instance.
    pub fn on_start(
        &self,
        hook: impl FnOnce(&Arc<Runtime>) -> Result<(), BoxError> + Send + 'static,
    ) {
        self.on_start.borrow_mut().push(Box::new(hook));
    }

    /// Runs `hook` when the instance stops — stopped, restarted or removed
    /// at run time, or the server stopping (in reverse configuration
    /// order, before the reactors shut down) — with the deadline by which
    /// it should be closed. Hooks run in reverse order of registration.
    pub fn on_stop(&self, hook: impl FnOnce(Instant) + Send + 'static) {
        self.on_stop.borrow_mut().push(Box::new(hook));
    }

    /// Runs `hook` when a reload ([`Runtime::reload`], SIGHUP, the
    /// management API) keeps this instance running untouched because its
    /// configuration did not change: the moment to re-read files the
    /// configuration names (a password file, say). A changed instance is
    /// made anew instead, so it reads them anyway. Runs on the reloading
    /// thread, never a reactor's; a hook reports its own errors.
    pub fn on_reload(&self, hook: impl Fn() + Send + Sync + 'static) {
        self.on_reload.borrow_mut().push(Arc::new(hook));
    }
}

/// What an incarnation tells the runtime about itself: the process that
/// serves it, and that it failed without being asked to stop. Reports from
/// an incarnation that is no longer current are ignored.
#[derive(Clone, Debug)]
pub struct Monitor {
    pub(crate) runtime: std::sync::Weak<Runtime>,
    pub(crate) name: String,
    pub(crate) incarnation: u64,
    /// This incarnation's process id; 0 for none.
    pub(crate) pid: Arc<AtomicU32>,
    /// Why this incarnation cannot serve now, if it says so.
    pub(crate) degraded: Degraded,
}

/// What an incarnation said about its health ([`Monitor::degraded`]).
pub(crate) type Degraded = Arc<parking_lot::Mutex<Health>>;

/// An incarnation's health as it says it.
#[derive(Debug, Default)]
pub(crate) struct Health {
    /// Why it cannot serve now.
    pub(crate) reason: Option<String>,
    /// It has served at some point.
    pub(crate) served: bool,
}

impl Monitor {
    /// The process serving the instance (its host), or `None`.
    pub fn set_pid(&self, pid: Option<u32>) {
        self.pid.store(pid.unwrap_or(0), Ordering::Release);
    }

    /// The instance runs but cannot serve, and why (a store it needs is
    /// unreachable: `redis at redis://10.0.0.5:6379/: connection
    /// refused`); `None` when it serves again. Shown by introspection, the
    /// management API and `/readyz`; the instance stays `running` and is
    /// not restarted for it. Cheap to call on every change.
    pub fn degraded(&self, reason: Option<String>) {
        let mut now = self.degraded.lock();
        if now.reason != reason {
            match (&reason, now.served) {
                (Some(why), true) => tracing::warn!(instance = %self.name, "cannot serve: {why}"),
                // Not serving yet at start (connecting): said once, quietly.
                (Some(why), false) => {
                    tracing::info!(instance = %self.name, "not serving yet: {why}")
                }
                (None, true) => tracing::info!(instance = %self.name, "serving again"),
                (None, false) => {}
            }
            now.reason = reason;
        }
        now.served |= now.reason.is_none();
    }

    /// The incarnation ended without being asked to: `reason` says how;
    /// `clean` when it ended by its own choice rather than a crash (a
    /// host that exited 0). The instance becomes `failed`, its stop hooks
    /// run, and it is started again as its `restart` policy says.
    pub fn failed(&self, reason: String, clean: bool) {
        if let Some(rt) = self.runtime.upgrade() {
            rt.incarnation_failed(&self.name, self.incarnation, reason, clean);
        }
    }
}

/// A module as introspection shows it.
#[derive(Clone, Debug, Serialize)]
pub struct ModuleInfo {
    /// Module class.
    pub class: &'static str,
    /// Module name.
    pub name: &'static str,
    /// Module version.
    pub version: &'static str,
    /// Crate that declares it.
    #[serde(rename = "crate")]
    pub krate: &'static str,
    /// What it does.
    pub description: &'static str,
    /// How its class's table matches keys.
    pub keys: KeyKind,
}

/// Where an instance is in its life.
///
/// ```text
/// created --start--> running --stop--> stopping --> stopped --start--> running
///    |                  ^                                |
///    +--start fails--> failed --start-------------------+
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Made and bound; not started yet (the server has not started).
    Created,
    /// Started: serving.
    Running,
    /// Its stop hooks are running.
    Stopping,
    /// Stopped: still bound (a driver refuses work with `Unavailable`),
    /// until started again or removed.
    Stopped,
    /// Its factory or a start hook failed; `last_error` says why.
    Failed,
}

/// An instance as introspection shows it.
#[derive(Clone, Debug, Serialize)]
pub struct InstanceInfo {
    /// Instance name.
    pub name: String,
    /// `class.name` of its module.
    pub module: String,
    /// Keys it is bound to.
    pub bind: Vec<String>,
    /// Where it is in its life.
    pub state: State,
    /// How many times it was started again after its first start.
    pub restarts: u32,
    /// When it last started, in seconds since the Unix epoch.
    pub started_at: Option<u64>,
    /// Why it last failed (a factory, a start hook, its host), and, when
    /// it is not restarted automatically any more, why not.
    pub last_error: Option<String>,
    /// Where it runs (`none`: in the server's process).
    pub isolation: Isolation,
    /// The process of its host, while one serves it.
    pub pid: Option<u32>,
    /// Crashes in a row (an isolated instance); the crash-loop limit
    /// applies to this count.
    pub crashes: u32,
    /// When an automatic restart is due, in seconds since the Unix epoch.
    pub restart_at: Option<u64>,
    /// Why the instance, though running, cannot serve now (a store it
    /// needs is down), as it said through its monitor.
    pub degraded: Option<String>,
}

/// What a [`Runtime::reload`] did, by instance name.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct Reload {
    /// Made and started.
    pub added: Vec<String>,
    /// Made anew from a changed section, and started.
    pub changed: Vec<String>,
    /// Stopped and gone.
    pub removed: Vec<String>,
    /// Running untouched.
    pub unchanged: Vec<String>,
}

/// One instance: its configuration, its current incarnation and its state.
pub(crate) struct Instance {
    pub(crate) spec: InstanceSpec,
    pub(crate) class: &'static str,
    pub(crate) keys: Vec<String>,
    pub(crate) handle: Handle,
    pub(crate) start: Vec<StartHook>,
    pub(crate) stop: Vec<StopHook>,
    pub(crate) reload: Vec<ReloadHook>,
    pub(crate) state: State,
    pub(crate) restarts: u32,
    /// Started at least once (a later start is a restart).
    pub(crate) started_once: bool,
    pub(crate) started_at: Option<SystemTime>,
    pub(crate) last_error: Option<String>,
    /// The current incarnation's number (unique in the runtime).
    pub(crate) incarnation: u64,
    /// The current incarnation's process (0: none), set through its monitor.
    pub(crate) pid: Arc<AtomicU32>,
    /// What the current incarnation says of its health.
    pub(crate) degraded: Degraded,
    pub(crate) crashes: u32,
    pub(crate) restart_at: Option<SystemTime>,
}

/// Whether `i`'s current run lasted longer than `long` by `now`.
pub(crate) fn incarnation_ran(i: &Instance, now: SystemTime, long: Duration) -> bool {
    i.started_at
        .and_then(|t| now.duration_since(t).ok())
        .is_some_and(|ran| ran > long)
}

pub(crate) fn epoch_secs(t: Option<SystemTime>) -> Option<u64> {
    t.and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
        .map(|d| d.as_secs())
}

impl Instance {
    pub(crate) fn info(&self) -> InstanceInfo {
        InstanceInfo {
            name: self.spec.name.clone(),
            module: self.spec.module.clone(),
            bind: self.keys.clone(),
            state: self.state,
            restarts: self.restarts,
            started_at: epoch_secs(self.started_at),
            last_error: self.last_error.clone(),
            isolation: self.spec.isolation.mode,
            pid: match self.pid.load(Ordering::Acquire) {
                0 => None,
                pid => Some(pid),
            },
            crashes: self.crashes,
            restart_at: epoch_secs(self.restart_at),
            degraded: match self.state {
                State::Running => self.degraded.lock().reason.clone(),
                _ => None,
            },
        }
    }
}

/// A new incarnation of an instance: its handle and hooks.
pub(crate) struct Made {
    pub(crate) incarnation: u64,
    pub(crate) pid: Arc<AtomicU32>,
    pub(crate) degraded: Degraded,
    pub(crate) class: &'static str,
    pub(crate) keys: Vec<String>,
    pub(crate) handle: Handle,
    pub(crate) start: Vec<StartHook>,
    pub(crate) stop: Vec<StopHook>,
    pub(crate) reload: Vec<ReloadHook>,
}

/// Runs stop hooks, last registered first.
pub(crate) fn run_stop(hooks: Vec<StopHook>, deadline: Instant) {
    for hook in hooks.into_iter().rev() {
        hook(deadline);
    }
}

/// A binding as introspection shows it.
#[derive(Clone, Debug, Serialize)]
pub struct BindingInfo {
    /// Class of the table.
    pub class: String,
    /// The key (paths end in `/`).
    pub key: String,
    /// The bound instance.
    pub instance: String,
    /// `class.name` of the instance's module.
    pub module: String,
}

/// What a running kernel can be asked about itself.
#[derive(Clone, Debug, Serialize)]
pub struct Introspection {
    /// Linked modules.
    pub modules: Vec<ModuleInfo>,
    /// Configured instances.
    pub instances: Vec<InstanceInfo>,
    /// Current bindings, by class then key.
    pub bindings: Vec<BindingInfo>,
}
