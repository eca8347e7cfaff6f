//! The kernel: modules, instances, binding tables and reactors, put together
//! from a module list and a configuration, then started and stopped — the
//! whole server, or one instance at a time while it runs.

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use parking_lot::{Condvar, Mutex};
use serde::Serialize;

use crate::bindings::{Handle, KeyKind, Table};
use crate::config::{Config, InstanceSpec, Isolation, IsolationSpec, Restart, Section};
use crate::error::{BoxError, Error};
use crate::reactor::{Reactor, ReactorHandle};
use crate::registry::{ModuleDescriptor, ModuleList, Registry};

type StartHook = Box<dyn FnOnce(&Arc<Runtime>) -> Result<(), BoxError> + Send>;
type StopHook = Box<dyn FnOnce(Instant) + Send>;

/// How long an instance stopped without a deadline of its own may take.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(5);

/// What a module's factory gets to make one instance.
pub struct InstanceContext {
    name: String,
    module: &'static ModuleDescriptor,
    keys: Vec<String>,
    section: Section,
    runtime: Arc<Runtime>,
    data_dir: PathBuf,
    span: tracing::Span,
    on_start: RefCell<Vec<StartHook>>,
    on_stop: RefCell<Vec<StopHook>>,
    isolation: IsolationSpec,
    monitor: Monitor,
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
}

/// What an incarnation tells the runtime about itself: the process that
/// serves it, and that it failed without being asked to stop. Reports from
/// an incarnation that is no longer current are ignored.
#[derive(Clone, Debug)]
pub struct Monitor {
    runtime: std::sync::Weak<Runtime>,
    name: String,
    incarnation: u64,
    /// This incarnation's process id; 0 for none.
    pid: Arc<AtomicU32>,
}

impl Monitor {
    /// The process serving the instance (its host), or `None`.
    pub fn set_pid(&self, pid: Option<u32>) {
        self.pid.store(pid.unwrap_or(0), Ordering::Release);
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
struct Instance {
    spec: InstanceSpec,
    class: &'static str,
    keys: Vec<String>,
    handle: Handle,
    start: Vec<StartHook>,
    stop: Vec<StopHook>,
    state: State,
    restarts: u32,
    /// Started at least once (a later start is a restart).
    started_once: bool,
    started_at: Option<SystemTime>,
    last_error: Option<String>,
    /// The current incarnation's number (unique in the runtime).
    incarnation: u64,
    /// The current incarnation's process (0: none), set through its monitor.
    pid: Arc<AtomicU32>,
    crashes: u32,
    restart_at: Option<SystemTime>,
}

/// Whether `i`'s current run lasted longer than `long` by `now`.
fn incarnation_ran(i: &Instance, now: SystemTime, long: Duration) -> bool {
    i.started_at
        .and_then(|t| now.duration_since(t).ok())
        .is_some_and(|ran| ran > long)
}

fn epoch_secs(t: Option<SystemTime>) -> Option<u64> {
    t.and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
        .map(|d| d.as_secs())
}

impl Instance {
    fn info(&self) -> InstanceInfo {
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
        }
    }
}

/// A new incarnation of an instance: its handle and hooks.
struct Made {
    incarnation: u64,
    pid: Arc<AtomicU32>,
    class: &'static str,
    keys: Vec<String>,
    handle: Handle,
    start: Vec<StartHook>,
    stop: Vec<StopHook>,
}

/// Runs stop hooks, last registered first.
fn run_stop(hooks: Vec<StopHook>, deadline: Instant) {
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

/// The shared state of a kernel: modules, instances, tables and reactors.
/// Instances keep an `Arc` of it.
///
/// Its lifecycle operations ([`Runtime::create`], [`Runtime::start`],
/// [`Runtime::stop`], [`Runtime::restart`], [`Runtime::remove`],
/// [`Runtime::bind`], [`Runtime::unbind`]) run one at a time, from any
/// thread, and block until done.
pub struct Runtime {
    registry: Registry,
    tables: HashMap<&'static str, Arc<Table>>,
    reactors: Vec<ReactorHandle>,
    next_reactor: AtomicUsize,
    modules: Vec<ModuleInfo>,
    instances: Mutex<Vec<Instance>>,
    /// Held for the whole of one lifecycle operation.
    ops: Mutex<()>,
    /// The `[server]` table the kernel was built with.
    server: crate::config::ServerSection,
    stop: (Mutex<bool>, Condvar),
    started: AtomicBool,
    data_dir: PathBuf,
    /// State the modules of this server share, one value per type.
    shared: Mutex<HashMap<std::any::TypeId, Arc<dyn std::any::Any + Send + Sync>>>,
    incarnations: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("tables", &self.tables.keys())
            .field("reactors", &self.reactors.len())
            .finish()
    }
}

impl Runtime {
    /// The value of type `T` that the modules of this server share, made
    /// with `T::default()` on first use. A class crate keeps server-wide
    /// state here (the metrics registry is one) instead of in a global, so
    /// two servers in one process stay apart.
    pub fn shared<T: Default + Send + Sync + 'static>(&self) -> Arc<T> {
        let mut map = self.shared.lock();
        let any = map
            .entry(std::any::TypeId::of::<T>())
            .or_insert_with(|| Arc::new(T::default()))
            .clone();
        drop(map);
        // The entry for `TypeId::of::<T>()` holds a `T`: made just above.
        any.downcast::<T>()
            .unwrap_or_else(|_| Arc::new(T::default()))
    }

    /// The binding table of `class`, if any linked module is of that class.
    pub fn table(&self, class: &str) -> Option<&Arc<Table>> {
        self.tables.get(class)
    }

    /// Looks `key` up in `class`'s table; see [`Table::lookup`].
    pub fn lookup<H: std::any::Any + Clone>(&self, class: &str, key: &str) -> Option<H> {
        self.tables.get(class)?.lookup(key)
    }

    /// The reactors.
    pub fn reactors(&self) -> &[ReactorHandle] {
        &self.reactors
    }

    /// The next reactor in turn, for spreading connections.
    pub fn next_reactor(&self) -> &ReactorHandle {
        let i = self.next_reactor.fetch_add(1, Ordering::Relaxed);
        &self.reactors[i % self.reactors.len()]
    }

    /// Modules, instances and bindings, as data.
    pub fn introspect(&self) -> Introspection {
        let mut bindings = Vec::new();
        let mut classes: Vec<_> = self.tables.iter().collect();
        classes.sort_by_key(|(c, _)| **c);
        for (class, table) in classes {
            for b in table.index().bindings() {
                bindings.push(BindingInfo {
                    class: class.to_string(),
                    key: b.key().to_owned(),
                    instance: b.instance().to_owned(),
                    module: b.module().to_owned(),
                });
            }
        }
        Introspection {
            modules: self.modules.clone(),
            instances: self.instances(),
            bindings,
        }
    }

    /// Every instance, in the order made.
    pub fn instances(&self) -> Vec<InstanceInfo> {
        self.instances.lock().iter().map(Instance::info).collect()
    }

    /// The instance called `name`.
    pub fn instance(&self, name: &str) -> Option<InstanceInfo> {
        self.instances
            .lock()
            .iter()
            .find(|i| i.spec.name == name)
            .map(Instance::info)
    }

    /// The loaded modules.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The data directory instances resolve their relative paths under
    /// (see [`InstanceContext::resolve`]).
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Lifecycle operations end when the server stops.
    fn not_stopping(&self) -> Result<(), Error> {
        if self.is_stopping() {
            return Err(Error::Stopping);
        }
        Ok(())
    }

    /// `spec` names a module this binary does not link.
    fn not_linked(&self, spec: &InstanceSpec) -> Error {
        let mut linked: Vec<String> = self.registry.descriptors().map(|d| d.id()).collect();
        linked.sort();
        Error::NotLinked {
            instance: spec.name.clone(),
            module: spec.module.clone(),
            linked,
        }
    }

    /// Makes a new incarnation of `spec`: runs its module's factory.
    fn make(self: &Arc<Self>, spec: &InstanceSpec) -> Result<Made, Error> {
        let Some(registered) = self.registry.registered(&spec.module).transpose()? else {
            return Err(self.not_linked(spec));
        };
        let descriptor = registered.descriptor;
        if spec.isolation.mode == Isolation::Process && !registered.factory.isolatable {
            return Err(Error::Instance {
                instance: spec.name.clone(),
                module: spec.module.clone(),
                cause: Arc::new(
                    format!(
                        "isolation = \"process\" is not supported by modules of class {:?}: \
                         only classes with a proxy (driver, parser) run in a host; \
                         see docs/isolation.md",
                        descriptor.class
                    )
                    .into(),
                ),
            });
        }
        let incarnation = self.incarnations.fetch_add(1, Ordering::Relaxed) + 1;
        let pid = Arc::new(AtomicU32::new(0));
        let keys: Vec<String> = if spec.bind.is_empty() {
            registered
                .factory
                .default_keys
                .iter()
                .map(|k| k.to_string())
                .collect()
        } else {
            spec.bind.clone()
        };
        let span = tracing::info_span!("instance", name = %spec.name, module = %spec.module);
        let cx = InstanceContext {
            name: spec.name.clone(),
            module: descriptor,
            keys: keys.clone(),
            section: spec.section.clone(),
            runtime: self.clone(),
            data_dir: self.data_dir.clone(),
            span: span.clone(),
            on_start: RefCell::new(Vec::new()),
            on_stop: RefCell::new(Vec::new()),
            isolation: spec.isolation.clone(),
            monitor: Monitor {
                runtime: Arc::downgrade(self),
                name: spec.name.clone(),
                incarnation,
                pid: pid.clone(),
            },
        };
        let handle = span
            .in_scope(|| (registered.factory.build)(&cx))
            .map_err(|cause| Error::Instance {
                instance: spec.name.clone(),
                module: spec.module.clone(),
                cause: Arc::new(cause),
            })?;
        Ok(Made {
            incarnation,
            pid,
            class: descriptor.class,
            keys,
            handle,
            start: cx.on_start.into_inner(),
            stop: cx.on_stop.into_inner(),
        })
    }

    /// Binds every key of a new instance, or none (the error names the
    /// key and the instance holding it).
    fn bind_all(&self, spec: &InstanceSpec, made: &Made) -> Result<(), Error> {
        let table = &self.tables[made.class];
        for (i, key) in made.keys.iter().enumerate() {
            if let Err(e) = table.bind(key, &spec.name, &spec.module, made.handle.clone()) {
                for done in &made.keys[..i] {
                    table.unbind(done);
                }
                return Err(e);
            }
        }
        Ok(())
    }

    fn no_instance(name: &str) -> Error {
        Error::NoInstance {
            instance: name.to_owned(),
        }
    }

    /// Runs `f` on the record of `name`.
    fn with<T>(&self, name: &str, f: impl FnOnce(&mut Instance) -> T) -> Result<T, Error> {
        let mut all = self.instances.lock();
        let i = all
            .iter_mut()
            .find(|i| i.spec.name == name)
            .ok_or_else(|| Self::no_instance(name))?;
        Ok(f(i))
    }

    /// Runs the start hooks of `name`'s current incarnation; it is running
    /// after, or failed (its stop hooks run to undo what started).
    fn run_start(self: &Arc<Self>, name: &str) -> Result<(), Error> {
        let (hooks, module) = self.with(name, |i| {
            (std::mem::take(&mut i.start), i.spec.module.clone())
        })?;
        for hook in hooks {
            if let Err(cause) = hook(self) {
                let reason = crate::error::report(&*cause);
                let stop = self.with(name, |i| {
                    i.state = State::Failed;
                    i.last_error = Some(reason.clone());
                    std::mem::take(&mut i.stop)
                })?;
                run_stop(stop, Instant::now() + DEFAULT_GRACE);
                tracing::warn!(instance = name, "start failed: {reason}");
                return Err(Error::Instance {
                    instance: name.to_owned(),
                    module,
                    cause: Arc::new(cause),
                });
            }
        }
        self.with(name, |i| {
            if i.started_once {
                i.restarts += 1;
            }
            i.started_once = true;
            i.state = State::Running;
            i.started_at = Some(SystemTime::now());
        })?;
        tracing::info!(instance = name, "running");
        Ok(())
    }

    /// Makes, binds and (once the server runs) starts a new instance. On
    /// any failure nothing stays behind: no binding, no record.
    pub fn create(self: &Arc<Self>, spec: InstanceSpec) -> Result<InstanceInfo, Error> {
        let _op = self.ops.lock();
        self.not_stopping()?;
        self.create_now(spec)
    }

    fn create_now(self: &Arc<Self>, spec: InstanceSpec) -> Result<InstanceInfo, Error> {
        if self
            .instances
            .lock()
            .iter()
            .any(|i| i.spec.name == spec.name)
        {
            return Err(Error::InstanceExists {
                instance: spec.name,
            });
        }
        let made = self.make(&spec)?;
        if let Err(e) = self.bind_all(&spec, &made) {
            run_stop(made.stop, Instant::now() + DEFAULT_GRACE);
            return Err(e);
        }
        let name = spec.name.clone();
        self.instances.lock().push(Instance {
            spec,
            class: made.class,
            keys: made.keys,
            handle: made.handle,
            start: made.start,
            stop: made.stop,
            state: State::Created,
            restarts: 0,
            started_once: false,
            started_at: None,
            last_error: None,
            incarnation: made.incarnation,
            pid: made.pid,
            crashes: 0,
            restart_at: None,
        });
        tracing::debug!(instance = %name, "instance made");
        if self.started.load(Ordering::Acquire) {
            if let Err(e) = self.run_start(&name) {
                self.drop_instance(&name);
                return Err(e);
            }
        }
        self.instance(&name).ok_or_else(|| Self::no_instance(&name))
    }

    /// The configuration in effect, as TOML that, saved to a file, starts
    /// the same server: `[server]`, then every instance with its module,
    /// the keys it is bound to now and its `config` table.
    pub fn effective_config(&self) -> String {
        let mut instances = toml::Table::new();
        for i in self.instances.lock().iter() {
            let mut t = toml::Table::new();
            t.insert("module".into(), i.spec.module.clone().into());
            t.insert(
                "bind".into(),
                toml::Value::Array(i.keys.iter().map(|k| k.clone().into()).collect()),
            );
            if let Some(c) = i.spec.section.value() {
                t.insert("config".into(), c);
            }
            if let Ok(toml::Value::Table(iso)) = toml::Value::try_from(&i.spec.isolation) {
                for (k, v) in iso {
                    if k != "isolation" || i.spec.isolation.mode != Isolation::None {
                        t.insert(k, v);
                    }
                }
            }
            instances.insert(i.spec.name.clone(), toml::Value::Table(t));
        }
        let mut doc = toml::Table::new();
        if let Ok(toml::Value::Table(server)) = toml::Value::try_from(&self.server) {
            if !server.is_empty() {
                doc.insert("server".into(), toml::Value::Table(server));
            }
        }
        doc.insert("instances".into(), toml::Value::Table(instances));
        toml::to_string(&doc).unwrap_or_default()
    }

    /// A version of the configuration in effect: it changes whenever the
    /// configuration does (an instance made, removed, rebound, reloaded),
    /// not when an instance merely stops or starts.
    pub fn config_version(&self) -> String {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.effective_config().hash(&mut h);
        format!("{:016x}", h.finish())
    }

    /// The keys `spec` binds: its own, or its module's defaults, as the
    /// table shows them.
    fn keys_of(&self, spec: &InstanceSpec) -> Option<(&'static str, Vec<String>)> {
        let registered = self.registry.registered(&spec.module)?.ok()?;
        let class = registered.descriptor.class;
        let table = self.tables.get(class)?;
        let keys: Vec<String> = if spec.bind.is_empty() {
            registered
                .factory
                .default_keys
                .iter()
                .map(|k| table.display(k))
                .collect()
        } else {
            spec.bind.iter().map(|k| table.display(k)).collect()
        };
        Some((class, keys))
    }

    /// Replaces the whole configuration: checked first (every module
    /// linked, no key bound twice), then applied as a difference —
    /// instances whose module, keys and `config` are the same keep running
    /// untouched, changed ones are made anew from their new section and
    /// started, removed ones stop and go, new ones are made and started. If
    /// any step fails, what was done is undone (removed and changed
    /// instances come back with their old configuration) and the error is
    /// returned: the configuration in effect is the old one.
    pub fn reload(self: &Arc<Self>, config: &Config) -> Result<Reload, Error> {
        self.reload_if(config, None, &[])
    }

    /// [`Runtime::reload`], only if the configuration in effect is still
    /// at `version` ([`Runtime::config_version`]); otherwise
    /// [`Error::Stale`]. Checked and applied as one operation, so two
    /// changes made from one version cannot both pass. A reload that would
    /// remove or change one of the `protected` instances (the management
    /// API serving the request, say) is refused with [`Error::Protected`].
    pub fn reload_if(
        self: &Arc<Self>,
        config: &Config,
        version: Option<&str>,
        protected: &[&str],
    ) -> Result<Reload, Error> {
        let _op = self.ops.lock();
        self.not_stopping()?;
        if let Some(want) = version {
            let now = self.config_version();
            if want != now {
                return Err(Error::Stale {
                    expected: want.to_owned(),
                    current: now,
                });
            }
        }
        // Checked before anything changes.
        let mut claimed: HashMap<(&str, String), String> = HashMap::new();
        for spec in &config.instances {
            let Some((class, keys)) = self.keys_of(spec) else {
                if let Some(Err(e)) = self.registry.registered(&spec.module) {
                    return Err(e);
                }
                return Err(self.not_linked(spec));
            };
            for key in keys {
                let table = &self.tables[class];
                let normalized = table.display(&key);
                if let Some(other) = claimed.insert((class, normalized.clone()), spec.name.clone())
                {
                    return Err(Error::Binding {
                        class: class.to_owned(),
                        key: normalized,
                        reason: format!(
                            "instances {other:?} and {:?} both bind it in the new configuration",
                            spec.name
                        ),
                    });
                }
            }
        }
        let old: Vec<(InstanceSpec, Vec<String>)> = self
            .instances
            .lock()
            .iter()
            .map(|i| (i.spec.clone(), i.keys.clone()))
            .collect();
        let same = |new: &InstanceSpec, (old, keys): &(InstanceSpec, Vec<String>)| {
            new.module == old.module
                && self.keys_of(new).map(|(_, k)| k).as_ref() == Some(keys)
                && new.section.value() == old.section.value()
                && new.isolation == old.isolation
        };
        let mut report = Reload::default();
        let mut removed = Vec::new();
        let mut changed = Vec::new();
        for o in &old {
            match config.instances.iter().find(|n| n.name == o.0.name) {
                None => removed.push(o.clone()),
                Some(n) if same(n, o) => report.unchanged.push(n.name.clone()),
                Some(n) => changed.push((o.clone(), n.clone())),
            }
        }
        let touched = removed
            .iter()
            .map(|o| &o.0.name)
            .chain(changed.iter().map(|(o, _)| &o.0.name));
        if let Some(name) = touched
            .into_iter()
            .find(|n| protected.contains(&n.as_str()))
        {
            return Err(Error::Protected {
                instance: name.clone(),
            });
        }
        let added: Vec<InstanceSpec> = config
            .instances
            .iter()
            .filter(|n| old.iter().all(|o| o.0.name != n.name))
            .cloned()
            .collect();
        // What to do to go back, last first.
        enum Undo {
            Remove(String),
            Recreate(InstanceSpec),
        }
        let mut undo: Vec<Undo> = Vec::new();
        let was = |(spec, keys): &(InstanceSpec, Vec<String>)| InstanceSpec {
            bind: keys.clone(),
            ..spec.clone()
        };
        let mut step = || -> Result<(), Error> {
            for o in &removed {
                self.stop_now(&o.0.name, DEFAULT_GRACE)?;
                self.drop_instance(&o.0.name);
                undo.push(Undo::Recreate(was(o)));
                report.removed.push(o.0.name.clone());
            }
            // Every old incarnation goes before any new one is made, so keys
            // can move between changed instances (two swapping addresses).
            for (o, _) in &changed {
                self.stop_now(&o.0.name, DEFAULT_GRACE)?;
                self.drop_instance(&o.0.name);
                undo.push(Undo::Recreate(was(o)));
            }
            for (_, n) in &changed {
                self.create_now(n.clone())?;
                undo.push(Undo::Remove(n.name.clone()));
                report.changed.push(n.name.clone());
            }
            for n in &added {
                self.create_now(n.clone())?;
                undo.push(Undo::Remove(n.name.clone()));
                report.added.push(n.name.clone());
            }
            Ok(())
        };
        if let Err(e) = step() {
            tracing::warn!("reload failed, going back: {}", e.report());
            while let Some(u) = undo.pop() {
                match u {
                    Undo::Remove(name) => {
                        let _ = self.stop_now(&name, DEFAULT_GRACE);
                        self.drop_instance(&name);
                    }
                    Undo::Recreate(spec) => {
                        let name = spec.name.clone();
                        if let Err(e) = self.create_now(spec) {
                            let why = e.report();
                            tracing::error!(instance = %name, "could not bring back: {why}");
                        }
                    }
                }
            }
            return Err(e);
        }
        tracing::info!(
            added = report.added.len(),
            changed = report.changed.len(),
            removed = report.removed.len(),
            unchanged = report.unchanged.len(),
            "configuration reloaded"
        );
        Ok(report)
    }

    /// Unbinds and forgets `name` (its stop hooks have run).
    fn drop_instance(&self, name: &str) {
        let gone = {
            let mut all = self.instances.lock();
            let Some(at) = all.iter().position(|i| i.spec.name == name) else {
                return;
            };
            all.remove(at)
        };
        let table = &self.tables[gone.class];
        for key in &gone.keys {
            table.unbind(key);
        }
    }

    /// Stops `name`, giving it until `grace` from now to close. A stopped
    /// instance stays bound: its driver refuses work with `Unavailable`
    /// (HTTP: 503 with Retry-After) rather than vanish (404). Stopping a
    /// stopped instance does nothing.
    pub fn stop(self: &Arc<Self>, name: &str, grace: Duration) -> Result<InstanceInfo, Error> {
        let _op = self.ops.lock();
        self.not_stopping()?;
        self.stop_now(name, grace)?;
        self.instance(name).ok_or_else(|| Self::no_instance(name))
    }

    fn stop_now(&self, name: &str, grace: Duration) -> Result<(), Error> {
        let hooks = self.with(name, |i| match i.state {
            State::Running | State::Created => {
                i.state = State::Stopping;
                Some(std::mem::take(&mut i.stop))
            }
            // Stopping a failed instance cancels its automatic restart.
            State::Failed if i.restart_at.is_some() => {
                i.state = State::Stopped;
                i.restart_at = None;
                None
            }
            _ => None,
        })?;
        let Some(hooks) = hooks else { return Ok(()) };
        tracing::info!(
            instance = name,
            grace_ms = grace.as_millis() as u64,
            "stopping"
        );
        run_stop(hooks, Instant::now() + grace);
        self.with(name, |i| {
            i.state = State::Stopped;
            i.start.clear();
            i.pid.store(0, Ordering::Release);
        })?;
        tracing::info!(instance = name, "stopped");
        Ok(())
    }

    /// Starts `name`: a stopped or failed instance gets a new incarnation
    /// from its configuration (the factory runs again, and its keys are
    /// rebound to it at once, so the dispatcher's cached handles follow).
    /// Starting a running instance does nothing.
    pub fn start(self: &Arc<Self>, name: &str) -> Result<InstanceInfo, Error> {
        let _op = self.ops.lock();
        self.not_stopping()?;
        self.with(name, |i| i.crashes = 0)?;
        self.start_now(name)?;
        self.instance(name).ok_or_else(|| Self::no_instance(name))
    }

    fn start_now(self: &Arc<Self>, name: &str) -> Result<(), Error> {
        // The keys it has now (bound and unbound at run time included).
        let (state, spec) = self.with(name, |i| {
            (
                i.state,
                InstanceSpec {
                    bind: i.keys.clone(),
                    ..i.spec.clone()
                },
            )
        })?;
        match state {
            State::Running | State::Stopping => return Ok(()),
            State::Created if self.started.load(Ordering::Acquire) => {
                return self.run_start(name);
            }
            State::Created => return Ok(()),
            State::Stopped | State::Failed => {}
        }
        let made = match self.make(&spec) {
            Ok(m) => m,
            Err(e) => {
                self.with(name, |i| {
                    i.state = State::Failed;
                    i.last_error = Some(e.report());
                })?;
                return Err(e);
            }
        };
        let (class, keys) = self.with(name, |i| (i.class, i.keys.clone()))?;
        let table = &self.tables[class];
        for key in &keys {
            table.rebind(key, name, made.handle.clone());
        }
        self.with(name, |i| {
            i.handle = made.handle;
            i.start = made.start;
            i.stop = made.stop;
            i.state = State::Created;
            i.last_error = None;
            i.incarnation = made.incarnation;
            i.pid = made.pid;
            i.restart_at = None;
        })?;
        self.run_start(name)
    }

    /// Stops `name` (within `grace`) and starts it again.
    pub fn restart(self: &Arc<Self>, name: &str, grace: Duration) -> Result<InstanceInfo, Error> {
        let _op = self.ops.lock();
        self.not_stopping()?;
        self.stop_now(name, grace)?;
        self.start_now(name)?;
        self.instance(name).ok_or_else(|| Self::no_instance(name))
    }

    /// Stops `name` (within `grace`), then unbinds and forgets it: its keys
    /// find nothing after (404).
    pub fn remove(self: &Arc<Self>, name: &str, grace: Duration) -> Result<(), Error> {
        let _op = self.ops.lock();
        self.not_stopping()?;
        self.stop_now(name, grace)?;
        self.drop_instance(name);
        tracing::info!(instance = name, "removed");
        Ok(())
    }

    /// Binds `key` to `name` as well. A key bound to another instance is
    /// refused, naming it.
    pub fn bind(self: &Arc<Self>, name: &str, key: &str) -> Result<InstanceInfo, Error> {
        let _op = self.ops.lock();
        self.not_stopping()?;
        let (class, module, handle) =
            self.with(name, |i| (i.class, i.spec.module.clone(), i.handle.clone()))?;
        let table = &self.tables[class];
        table.bind(key, name, &module, handle)?;
        let shown = table.display(key);
        self.with(name, |i| i.keys.push(shown))?;
        self.instance(name).ok_or_else(|| Self::no_instance(name))
    }

    /// Unbinds `key` from `name`; an error if `name` does not hold it.
    pub fn unbind(self: &Arc<Self>, name: &str, key: &str) -> Result<InstanceInfo, Error> {
        let _op = self.ops.lock();
        self.not_stopping()?;
        let class = self.with(name, |i| i.class)?;
        let table = &self.tables[class];
        let held = self.with(name, |i| i.keys.iter().position(|k| table.same_key(k, key)))?;
        let Some(at) = held else {
            return Err(Error::Binding {
                class: class.to_owned(),
                key: key.to_owned(),
                reason: format!("instance {name:?} is not bound to it"),
            });
        };
        let stored = self.with(name, |i| i.keys.remove(at))?;
        table.unbind(&stored);
        self.instance(name).ok_or_else(|| Self::no_instance(name))
    }

    /// Incarnation `incarnation` of `name` ended on its own (see
    /// [`Monitor::failed`]): it is `failed`, its stop hooks run, and a
    /// restart is scheduled as its policy says. Never takes the operation
    /// lock (a stop in progress may be waiting on the caller).
    fn incarnation_failed(
        self: &Arc<Self>,
        name: &str,
        incarnation: u64,
        why: String,
        clean: bool,
    ) {
        self.failed_now(name, Some(incarnation), why, clean)
    }

    /// [`Runtime::incarnation_failed`]; with no incarnation, an automatic
    /// restart that failed to start (one more crash, never a healthy run).
    fn failed_now(
        self: &Arc<Self>,
        name: &str,
        incarnation: Option<u64>,
        why: String,
        clean: bool,
    ) {
        let now = SystemTime::now();
        let decided = self.with(name, |i| {
            let current = match incarnation {
                Some(n) => i.incarnation == n && matches!(i.state, State::Running | State::Created),
                None => i.state == State::Failed,
            };
            if !current {
                return None;
            }
            let incarnation = i.incarnation;
            let policy = &i.spec.isolation;
            // A run that outlasted the longest backoff ends the crash loop.
            let healthy = incarnation_ran(i, now, policy.backoff_cap());
            i.crashes = if healthy { 1 } else { i.crashes + 1 };
            i.state = State::Failed;
            i.pid.store(0, Ordering::Release);
            let restart = match policy.restart() {
                Restart::Never => Err("restart = \"never\"".to_owned()),
                Restart::OnFailure if clean => {
                    Err("it exited cleanly and restart = \"on-failure\"".to_owned())
                }
                _ if i.crashes > policy.crash_loop_limit() => Err(format!(
                    "crash loop: {} crashes in a row, each within {} ms of its start \
                     (crash_loop_limit = {}); start it by hand",
                    i.crashes,
                    policy.backoff_cap().as_millis(),
                    policy.crash_loop_limit()
                )),
                _ => Ok(policy.backoff(i.crashes)),
            };
            i.last_error = Some(match &restart {
                Ok(after) => format!("{why}; restarting in {} ms", after.as_millis()),
                Err(not) => format!("{why}; not restarting: {not}"),
            });
            i.restart_at = restart.as_ref().ok().map(|after| now + *after);
            Some((std::mem::take(&mut i.stop), restart.ok(), incarnation))
        });
        let Ok(Some((hooks, restart, incarnation))) = decided else {
            return;
        };
        tracing::error!(instance = name, "failed: {why}");
        let rt = self.clone();
        let name = name.to_owned();
        let spawned = std::thread::Builder::new()
            .name(format!("bindery-restart-{name}"))
            .spawn(move || {
                run_stop(hooks, Instant::now() + DEFAULT_GRACE);
                let Some(after) = restart else { return };
                {
                    let mut stopping = rt.stop.0.lock();
                    if !*stopping {
                        rt.stop.1.wait_for(&mut stopping, after);
                    }
                    if *stopping {
                        return;
                    }
                }
                let _op = rt.ops.lock();
                let due = rt.with(&name, |i| {
                    i.state == State::Failed
                        && i.incarnation == incarnation
                        && i.restart_at.is_some()
                });
                if matches!(due, Ok(true)) && !rt.is_stopping() {
                    let _ = rt.with(&name, |i| i.restart_at = None);
                    match rt.start_now(&name) {
                        Ok(()) => tracing::info!(instance = %name, "restarted after a failure"),
                        Err(e) => {
                            // Failing to start again is one more crash.
                            tracing::warn!(instance = %name, "restart failed: {e}");
                            drop(_op);
                            let _ = rt.with(&name, |i| i.started_at = None);
                            rt.failed_now(&name, None, e.to_string(), false);
                        }
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::error!("cannot spawn a restart thread: {e}");
        }
    }

    /// Asks the kernel to stop; [`Kernel::wait`] returns.
    pub fn request_stop(&self) {
        *self.stop.0.lock() = true;
        self.stop.1.notify_all();
    }

    /// Whether a stop was requested.
    pub fn is_stopping(&self) -> bool {
        *self.stop.0.lock()
    }
}

/// Describes the linked modules without running any module main (for
/// `--list-modules`).
pub fn linked_modules(list: ModuleList) -> Result<Vec<&'static ModuleDescriptor>, Error> {
    crate::registry::check(list.descriptors(), &crate::BINDERY_MODULES)?;
    let mut all: Vec<_> = crate::BINDERY_MODULES.iter().collect();
    all.sort_by_key(|d| (d.class, d.name));
    Ok(all)
}

/// A built kernel. [`Kernel::start`] it, then [`Kernel::wait`] or
/// [`Kernel::shutdown`].
pub struct Kernel {
    runtime: Arc<Runtime>,
    reactors: Vec<Reactor>,
    threads: Vec<JoinHandle<std::io::Result<()>>>,
    stopped: bool,
    reload: Option<ReloadSource>,
}

/// Where SIGHUP reads the configuration to reload.
type ReloadSource = Box<dyn Fn() -> Result<Config, String> + Send>;

impl std::fmt::Debug for Kernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kernel")
            .field("registry", &self.runtime.registry)
            .field("runtime", &self.runtime)
            .finish()
    }
}

impl Kernel {
    /// Builds a kernel: loads the listed modules, makes every configured
    /// instance and binds it. `threads` overrides the configuration's
    /// reactor count (0: one per core).
    pub fn build(
        list: ModuleList,
        config: &Config,
        threads: Option<usize>,
    ) -> Result<Kernel, Error> {
        let registry = Registry::load(list)?;
        Self::build_with(registry, config, threads)
    }

    /// Like [`Kernel::build`] with a registry already loaded.
    pub fn build_with(
        registry: Registry,
        config: &Config,
        threads: Option<usize>,
    ) -> Result<Kernel, Error> {
        crate::logs::logs().set_capacity(
            config
                .server
                .log_lines
                .unwrap_or(crate::logs::DEFAULT_LINES),
        );
        let threads = match threads.or(config.server.threads) {
            Some(n) if n > 0 => n,
            _ => std::thread::available_parallelism().map_or(1, |n| n.get()),
        };
        let mut reactors = Vec::with_capacity(threads);
        let mut handles = Vec::with_capacity(threads);
        for _ in 0..threads {
            let (r, h) = Reactor::new().map_err(|e| Error::io("creating a reactor", e))?;
            reactors.push(r);
            handles.push(h);
        }
        let mut tables = HashMap::new();
        let mut modules = Vec::new();
        for d in registry.descriptors() {
            let Some(kind) = registry.key_kind(d.class) else {
                continue;
            };
            tables
                .entry(d.class)
                .or_insert_with(|| Arc::new(Table::new(d.class, kind)));
            modules.push(ModuleInfo {
                class: d.class,
                name: d.name,
                version: d.version,
                krate: d.krate,
                description: d.description,
                keys: kind,
            });
        }
        let runtime = Arc::new(Runtime {
            registry,
            tables,
            reactors: handles,
            next_reactor: AtomicUsize::new(0),
            modules,
            instances: Mutex::new(Vec::new()),
            ops: Mutex::new(()),
            server: config.server.clone(),
            stop: (Mutex::new(false), Condvar::new()),
            started: AtomicBool::new(false),
            data_dir: config.data_dir().to_owned(),
            shared: Mutex::new(HashMap::new()),
            incarnations: std::sync::atomic::AtomicU64::new(0),
        });
        let kernel = Kernel {
            runtime,
            reactors,
            threads: Vec::new(),
            stopped: false,
            reload: None,
        };
        for spec in &config.instances {
            kernel.runtime.create(spec.clone()).map_err(|e| match e {
                // Placed in the file, at the instance's header.
                Error::NotLinked {
                    instance,
                    module,
                    linked,
                } => config
                    .instance_error(&instance, Error::not_linked(&module, &linked))
                    .into(),
                e => e,
            })?;
        }
        Ok(kernel)
    }

    /// The runtime: tables, reactors, instances, introspection.
    pub fn runtime(&self) -> &Arc<Runtime> {
        &self.runtime
    }

    /// The loaded modules.
    pub fn registry(&self) -> &Registry {
        &self.runtime.registry
    }

    /// Starts the reactor threads, then every instance in configuration
    /// order. On a failing start hook the kernel is shut down and the error
    /// names the instance.
    pub fn start(&mut self) -> Result<(), Error> {
        if self.runtime.started.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        for (i, reactor) in self.reactors.drain(..).enumerate() {
            let t = std::thread::Builder::new()
                .name(format!("bindery-reactor-{i}"))
                .spawn(move || reactor.run())
                .map_err(|e| Error::io("spawning a reactor thread", e))?;
            self.threads.push(t);
        }
        let names: Vec<String> = self
            .runtime
            .instances
            .lock()
            .iter()
            .map(|i| i.spec.name.clone())
            .collect();
        for name in names {
            let started = {
                let _op = self.runtime.ops.lock();
                self.runtime.start_now(&name)
            };
            if let Err(e) = started {
                self.shutdown();
                return Err(e);
            }
        }
        Ok(())
    }

    /// Blocks until [`Runtime::request_stop`] is called.
    pub fn wait(&self) {
        let mut stopped = self.runtime.stop.0.lock();
        while !*stopped {
            self.runtime.stop.1.wait(&mut stopped);
        }
    }

    /// On SIGHUP, reload the configuration `source` reads (see
    /// [`Runtime::reload`]); without a source, SIGHUP is logged and ignored.
    pub fn on_reload(&mut self, source: impl Fn() -> Result<Config, String> + Send + 'static) {
        self.reload = Some(Box::new(source));
    }

    /// Blocks until SIGINT or SIGTERM (or [`Runtime::request_stop`]), then
    /// shuts down gracefully. SIGHUP reloads the configuration (see
    /// [`Kernel::on_reload`]). `ready` runs once the signals are handled.
    pub fn run_until_signal(mut self, ready: impl FnOnce()) -> Result<(), Error> {
        use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
        let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP])
            .map_err(|e| Error::io("installing signal handlers", e))?;
        let signal_handle = signals.handle();
        let runtime = self.runtime.clone();
        let reload = self.reload.take();
        let waiter = std::thread::Builder::new()
            .name("bindery-signals".into())
            .spawn(move || {
                for sig in signals.forever() {
                    if sig == SIGHUP {
                        match &reload {
                            None => tracing::warn!("SIGHUP: no configuration file to reload"),
                            Some(source) => match source() {
                                Ok(config) => match runtime.reload(&config) {
                                    Ok(r) => tracing::info!(
                                        added = ?r.added,
                                        changed = ?r.changed,
                                        removed = ?r.removed,
                                        "SIGHUP: configuration reloaded"
                                    ),
                                    Err(e) => tracing::error!(
                                        "SIGHUP: reload refused, nothing changed: {}",
                                        e.report()
                                    ),
                                },
                                Err(e) => tracing::error!("SIGHUP: {e}; nothing changed"),
                            },
                        }
                        continue;
                    }
                    tracing::info!(signal = sig, "stopping");
                    runtime.request_stop();
                    break;
                }
            })
            .map_err(|e| Error::io("spawning the signal thread", e))?;
        ready();
        self.wait();
        signal_handle.close();
        let _ = waiter.join();
        self.shutdown();
        Ok(())
    }

    /// Stops every running instance (last made first), shuts every reactor down
    /// (handlers drain, then close) and joins their threads. Idempotent.
    pub fn shutdown(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        self.runtime.request_stop();
        {
            let _op = self.runtime.ops.lock();
            // Started ones only: one never started (a kernel built to check
            // a configuration, say) goes with its last handle.
            let names: Vec<String> = self
                .runtime
                .instances
                .lock()
                .iter()
                .rev()
                .filter(|i| i.state == State::Running)
                .map(|i| i.spec.name.clone())
                .collect();
            for name in names {
                let _ = self.runtime.stop_now(&name, DEFAULT_GRACE);
            }
        }
        for r in &self.runtime.reactors {
            r.shutdown();
        }
        for t in self.threads.drain(..) {
            match t.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::error!("reactor failed: {e}"),
                Err(_) => tracing::error!("reactor thread panicked"),
            }
        }
    }
}

impl Drop for Kernel {
    fn drop(&mut self) {
        self.shutdown();
    }
}
