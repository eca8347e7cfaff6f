//! Reloading the configuration while the server runs: the difference is
//! applied, or nothing is.

use std::collections::HashMap;
use std::sync::Arc;

use crate::config::{Config, InstanceSpec};
use crate::error::Error;

use crate::instance::*;

use crate::runtime::Runtime;

impl Runtime {
    /// Replaces the whole configuration: checked first (every module
    /// linked, no key bound twice), then applied as a difference —
    /// instances whose module, keys and `config` are the same keep running
    /// untouched (their [reload hooks](crate::InstanceContext::on_reload)
    /// run, to re-read files their configuration names), changed ones are made anew from their new section and
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
        // Instances kept untouched re-read what their configuration names.
        let hooks: Vec<_> = self
            .instances
            .lock()
            .iter()
            .filter(|i| report.unchanged.contains(&i.spec.name))
            .flat_map(|i| i.reload.iter().cloned())
            .collect();
        for hook in hooks {
            hook();
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
}
