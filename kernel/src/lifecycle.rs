//! What the runtime does to instances while the server runs: create,
//! reload, stop, start, restart, remove, bind and unbind — one operation at
//! a time, never on a reactor thread.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::config::{Config, InstanceSpec};
use crate::error::Error;

use crate::instance::*;

use crate::runtime::Runtime;

impl Runtime {
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
    pub(crate) fn drop_instance(&self, name: &str) {
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

    pub(crate) fn stop_now(&self, name: &str, grace: Duration) -> Result<(), Error> {
        let hooks = self.with(name, |i| match i.state {
            State::Running | State::Created => {
                i.state = State::Stopping;
                Some(std::mem::take(&mut i.stop))
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
        self.start_now(name)?;
        self.instance(name).ok_or_else(|| Self::no_instance(name))
    }

    pub(crate) fn start_now(self: &Arc<Self>, name: &str) -> Result<(), Error> {
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

    /// Asks the kernel to stop; [`Kernel::wait`](crate::Kernel::wait) returns.
    pub fn request_stop(&self) {
        *self.stop.0.lock() = true;
        self.stop.1.notify_all();
    }

    /// Whether a stop was requested.
    pub fn is_stopping(&self) -> bool {
        *self.stop.0.lock()
    }
}
