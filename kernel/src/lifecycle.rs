//! What the runtime does to one instance while the server runs: stop,
//! start, restart, remove, bind and unbind — one operation at a time, never
//! on a reactor thread — and restarting a supervised instance that failed.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use crate::config::{InstanceSpec, Restart};
use crate::error::Error;

use crate::instance::*;

use crate::runtime::Runtime;

impl Runtime {
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
            i.reload = made.reload;
            i.state = State::Created;
            i.last_error = None;
            i.incarnation = made.incarnation;
            i.pid = made.pid;
            i.degraded = made.degraded;
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
        self.refuse_shadowing(table, key, name)?;
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
    pub(crate) fn incarnation_failed(
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
    pub(crate) fn failed_now(
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
