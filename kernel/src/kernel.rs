//! The kernel: modules, instances, binding tables and reactors, put together
//! from a module list and a configuration, then started and stopped — the
//! whole server, or one instance at a time while it runs.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;

use parking_lot::{Condvar, Mutex};

use crate::bindings::Table;
use crate::config::Config;
use crate::error::Error;
use crate::reactor::Reactor;
use crate::registry::{ModuleDescriptor, ModuleList, Registry};

pub use crate::instance::*;
pub use crate::runtime::Runtime;

/// Describes the linked modules without running any module main (for
/// `--list-modules`).
pub fn linked_modules(list: ModuleList) -> Result<Vec<&'static ModuleDescriptor>, Error> {
    crate::registry::check(list.descriptors(), crate::backend::table())?;
    let mut all: Vec<_> = crate::backend::table().collect();
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
