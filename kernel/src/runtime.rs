//! The running server as modules see it: binding tables, reactors,
//! introspection, per-server shared state, and making instances. Changing
//! instances while the server runs is in `lifecycle.rs` and `reload.rs`.
//!
//! Longer than most files here: the runtime's state and the one path that
//! makes an instance (parse, isolate, build, bind, start hooks) belong
//! together.

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::time::{Instant, SystemTime};

use parking_lot::{Condvar, Mutex};

use crate::bindings::{KeyKind, Table};
use crate::config::{InstanceSpec, Isolation};
use crate::error::Error;
use crate::reactor::ReactorHandle;
use crate::registry::Registry;

use crate::instance::*;

/// The shared state of a kernel: modules, instances, tables and reactors.
/// Instances keep an `Arc` of it.
///
/// Its lifecycle operations ([`Runtime::create`], [`Runtime::start`],
/// [`Runtime::stop`], [`Runtime::restart`], [`Runtime::remove`],
/// [`Runtime::bind`], [`Runtime::unbind`]) run one at a time, from any
/// thread, and block until done.
pub struct Runtime {
    pub(crate) registry: Registry,
    pub(crate) tables: HashMap<&'static str, Arc<Table>>,
    pub(crate) reactors: Vec<ReactorHandle>,
    pub(crate) next_reactor: AtomicUsize,
    pub(crate) modules: Vec<ModuleInfo>,
    pub(crate) instances: Mutex<Vec<Instance>>,
    /// Held for the whole of one lifecycle operation.
    pub(crate) ops: Mutex<()>,
    /// The `[server]` table the kernel was built with.
    pub(crate) server: crate::config::ServerSection,
    pub(crate) stop: (Mutex<bool>, Condvar),
    pub(crate) started: AtomicBool,
    pub(crate) data_dir: PathBuf,
    /// State the modules of this server share, one value per type.
    pub(crate) shared: Mutex<HashMap<std::any::TypeId, Arc<dyn std::any::Any + Send + Sync>>>,
    pub(crate) incarnations: std::sync::atomic::AtomicU64,
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
    pub(crate) fn not_stopping(&self) -> Result<(), Error> {
        if self.is_stopping() {
            return Err(Error::Stopping);
        }
        Ok(())
    }

    /// `spec` names a module this binary does not link.
    pub(crate) fn not_linked(&self, spec: &InstanceSpec) -> Error {
        let mut linked: Vec<String> = self.registry.descriptors().map(|d| d.id()).collect();
        linked.sort();
        Error::NotLinked {
            instance: spec.name.clone(),
            module: spec.module.clone(),
            linked,
        }
    }

    /// Makes a new incarnation of `spec`: runs its module's factory.
    pub(crate) fn make(self: &Arc<Self>, spec: &InstanceSpec) -> Result<Made, Error> {
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
        let degraded = Degraded::default();
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
            on_reload: RefCell::new(Vec::new()),
            isolation: spec.isolation.clone(),
            monitor: Monitor {
                runtime: Arc::downgrade(self),
                name: spec.name.clone(),
                incarnation,
                pid: pid.clone(),
                degraded: degraded.clone(),
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
            degraded,
            class: descriptor.class,
            keys,
            handle,
            start: cx.on_start.into_inner(),
            stop: cx.on_stop.into_inner(),
            reload: cx.on_reload.into_inner(),
        })
    }

    /// Binds every key of a new instance, or none (the error names the
    /// key and the instance holding it).
    pub(crate) fn bind_all(&self, spec: &InstanceSpec, made: &Made) -> Result<(), Error> {
        let table = &self.tables[made.class];
        for (i, key) in made.keys.iter().enumerate() {
            let bound = self
                .refuse_shadowing(table, key, &spec.name)
                .and_then(|()| table.bind(key, &spec.name, &spec.module, made.handle.clone()));
            if let Err(e) = bound {
                for done in &made.keys[..i] {
                    table.unbind(done);
                }
                return Err(e);
            }
        }
        Ok(())
    }

    /// Refuses `key` in `table` for `instance` when it would overlap a
    /// binding of another kind: a route over a driver's path, or a path
    /// under a route (see [`crate::routes::overlaps`]); names both.
    pub(crate) fn refuse_shadowing(
        &self,
        table: &Table,
        key: &str,
        instance: &str,
    ) -> Result<(), Error> {
        let other_kind = match table.kind() {
            KeyKind::Route => KeyKind::Path,
            KeyKind::Path => KeyKind::Route,
            _ => return Ok(()),
        };
        let Ok(mine) = table.kind().normalize(key) else {
            return Ok(()); // the table's own bind says what is wrong
        };
        for other in self.tables.values().filter(|t| t.kind() == other_kind) {
            for b in other.index().bindings() {
                let Ok(theirs) = other_kind.normalize(b.key()) else {
                    continue;
                };
                let (route, path) = if other_kind == KeyKind::Path {
                    (&mine, &theirs)
                } else {
                    (&theirs, &mine)
                };
                if crate::routes::overlaps(route, path) {
                    return Err(Error::Binding {
                        class: table.class().to_owned(),
                        key: key.to_owned(),
                        reason: format!(
                            "instance {instance:?} would overlap {} {} of instance {:?} ({}): a route must not shadow a driver's path",
                            other.class(),
                            b.key(),
                            b.instance(),
                            b.module()
                        ),
                    });
                }
            }
        }
        Ok(())
    }

    pub(crate) fn no_instance(name: &str) -> Error {
        Error::NoInstance {
            instance: name.to_owned(),
        }
    }

    /// Runs `f` on the record of `name`.
    pub(crate) fn with<T>(
        &self,
        name: &str,
        f: impl FnOnce(&mut Instance) -> T,
    ) -> Result<T, Error> {
        let mut all = self.instances.lock();
        let i = all
            .iter_mut()
            .find(|i| i.spec.name == name)
            .ok_or_else(|| Self::no_instance(name))?;
        Ok(f(i))
    }

    /// Runs the start hooks of `name`'s current incarnation; it is running
    /// after, or failed (its stop hooks run to undo what started).
    pub(crate) fn run_start(self: &Arc<Self>, name: &str) -> Result<(), Error> {
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

    pub(crate) fn create_now(self: &Arc<Self>, spec: InstanceSpec) -> Result<InstanceInfo, Error> {
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
            reload: made.reload,
            state: State::Created,
            restarts: 0,
            started_once: false,
            started_at: None,
            last_error: None,
            incarnation: made.incarnation,
            pid: made.pid,
            degraded: made.degraded,
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
    pub(crate) fn keys_of(&self, spec: &InstanceSpec) -> Option<(&'static str, Vec<String>)> {
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
}
