//! The kernel: modules, instances, binding tables and reactors, put together
//! from a module list and a configuration, then started and stopped.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;

use parking_lot::{Condvar, Mutex};
use serde::Serialize;

use crate::bindings::{KeyKind, Table};
use crate::config::{Config, Section};
use crate::error::{BoxError, Error};
use crate::reactor::{Reactor, ReactorHandle};
use crate::registry::{ModuleDescriptor, ModuleList, Registry};

type StartHook = Box<dyn FnOnce(&Arc<Runtime>) -> Result<(), BoxError>>;
type StopHook = Box<dyn FnOnce()>;

/// What a module's factory gets to make one instance.
pub struct InstanceContext {
    name: String,
    module: &'static ModuleDescriptor,
    keys: Vec<String>,
    section: Section,
    runtime: Arc<Runtime>,
    span: tracing::Span,
    on_start: RefCell<Vec<StartHook>>,
    on_stop: RefCell<Vec<StopHook>>,
}

impl InstanceContext {
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

    /// The runtime the instance will live in. Its tables are complete only
    /// once every instance is made: look other classes up in a start hook.
    pub fn runtime(&self) -> &Arc<Runtime> {
        &self.runtime
    }

    /// A `tracing` span for this instance; enter it around its work.
    pub fn span(&self) -> &tracing::Span {
        &self.span
    }

    /// Runs `hook` when the kernel starts, after every instance is made and
    /// bound, in configuration order. A failing hook stops the start with an
    /// error naming this instance.
    pub fn on_start(&self, hook: impl FnOnce(&Arc<Runtime>) -> Result<(), BoxError> + 'static) {
        self.on_start.borrow_mut().push(Box::new(hook));
    }

    /// Runs `hook` when the kernel stops, in reverse configuration order,
    /// before the reactors are shut down.
    pub fn on_stop(&self, hook: impl FnOnce() + 'static) {
        self.on_stop.borrow_mut().push(Box::new(hook));
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

/// An instance as introspection shows it.
#[derive(Clone, Debug, Serialize)]
pub struct InstanceInfo {
    /// Instance name.
    pub name: String,
    /// `class.name` of its module.
    pub module: String,
    /// Keys it is bound to.
    pub bind: Vec<String>,
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

/// The shared state of a kernel: tables and reactors. Instances keep an
/// `Arc` of it.
pub struct Runtime {
    tables: HashMap<&'static str, Arc<Table>>,
    reactors: Vec<ReactorHandle>,
    next_reactor: AtomicUsize,
    modules: Vec<ModuleInfo>,
    instances: Mutex<Vec<InstanceInfo>>,
    stop: (Mutex<bool>, Condvar),
    started: AtomicBool,
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
            instances: self.instances.lock().clone(),
            bindings,
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
    registry: Registry,
    reactors: Vec<Reactor>,
    threads: Vec<JoinHandle<std::io::Result<()>>>,
    on_start: Vec<(String, String, StartHook)>,
    on_stop: Vec<StopHook>,
    stopped: bool,
}

impl std::fmt::Debug for Kernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kernel")
            .field("registry", &self.registry)
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
            tables,
            reactors: handles,
            next_reactor: AtomicUsize::new(0),
            modules,
            instances: Mutex::new(Vec::new()),
            stop: (Mutex::new(false), Condvar::new()),
            started: AtomicBool::new(false),
        });
        let mut on_start = Vec::new();
        let mut on_stop = Vec::new();
        for spec in &config.instances {
            let Some(registered) = registry.registered(&spec.module).transpose()? else {
                let mut known: Vec<String> = registry.descriptors().map(|d| d.id()).collect();
                known.sort();
                return Err(config
                    .instance_error(
                        &spec.name,
                        format!(
                            "module {:?} is not linked into this binary (linked: {})",
                            spec.module,
                            known.join(", ")
                        ),
                    )
                    .into());
            };
            let descriptor = registered.descriptor;
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
                runtime: runtime.clone(),
                span: span.clone(),
                on_start: RefCell::new(Vec::new()),
                on_stop: RefCell::new(Vec::new()),
            };
            let handle = span
                .in_scope(|| (registered.factory.build)(&cx))
                .map_err(|cause| Error::Instance {
                    instance: spec.name.clone(),
                    module: spec.module.clone(),
                    cause: Arc::new(cause),
                })?;
            let table = &runtime.tables[descriptor.class];
            for key in &keys {
                table.bind(key, &spec.name, &spec.module, handle.clone())?;
            }
            for hook in cx.on_start.into_inner() {
                on_start.push((spec.name.clone(), spec.module.clone(), hook));
            }
            on_stop.extend(cx.on_stop.into_inner());
            runtime.instances.lock().push(InstanceInfo {
                name: spec.name.clone(),
                module: spec.module.clone(),
                bind: keys,
            });
            tracing::debug!(instance = %spec.name, module = %spec.module, "instance made");
        }
        Ok(Kernel {
            runtime,
            registry,
            reactors,
            threads: Vec::new(),
            on_start,
            on_stop,
            stopped: false,
        })
    }

    /// The runtime: tables, reactors, introspection.
    pub fn runtime(&self) -> &Arc<Runtime> {
        &self.runtime
    }

    /// The loaded modules.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Starts the reactor threads, then runs every start hook. On a failing
    /// hook the kernel is shut down and the error names the instance.
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
        for (instance, module, hook) in std::mem::take(&mut self.on_start) {
            if let Err(cause) = hook(&self.runtime) {
                self.shutdown();
                return Err(Error::Instance {
                    instance,
                    module,
                    cause: Arc::new(cause),
                });
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

    /// Blocks until SIGINT or SIGTERM (or [`Runtime::request_stop`]), then
    /// shuts down gracefully.
    pub fn run_until_signal(mut self) -> Result<(), Error> {
        use signal_hook::consts::{SIGINT, SIGTERM};
        let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])
            .map_err(|e| Error::io("installing signal handlers", e))?;
        let signal_handle = signals.handle();
        let runtime = self.runtime.clone();
        let waiter = std::thread::Builder::new()
            .name("bindery-signals".into())
            .spawn(move || {
                if let Some(sig) = signals.forever().next() {
                    tracing::info!(signal = sig, "stopping");
                    runtime.request_stop();
                }
            })
            .map_err(|e| Error::io("spawning the signal thread", e))?;
        self.wait();
        signal_handle.close();
        let _ = waiter.join();
        self.shutdown();
        Ok(())
    }

    /// Runs stop hooks, shuts every reactor down (handlers drain, then
    /// close) and joins their threads. Idempotent.
    pub fn shutdown(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        self.runtime.request_stop();
        while let Some(hook) = self.on_stop.pop() {
            hook();
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
