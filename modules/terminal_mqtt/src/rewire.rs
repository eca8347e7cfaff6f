//! Subscriptions made again when a driver instance goes away under the
//! terminal while the server runs on: `bindery ctl restart topics`, or a
//! reload that moves a binding. A driver ends its subscriptions when its
//! instance stops ([`Delivery::Closed`](bindery_classes::Delivery::Closed));
//! if the handle says [`Driver::stopped`], the subscription was not ended
//! for the client's sake (that is a slow consumer: the client is
//! disconnected and its session not kept), so it is queued here and made
//! again on whatever is bound at its path next, and the client keeps its
//! connection and its session.
//!
//! One thread per instance, started when the first job comes and gone
//! when none is left, retries every job with a growing pause (10 ms to
//! 1 s) until it is made or has no reason left (the session ended or
//! dropped the subscription, the instance or the server stops). What
//! is published while no driver is bound is not delivered (topics keep
//! nothing); a persistent session's durable queue is read again from the
//! new incarnation, so its messages are not lost, though one in flight
//! at the moment may be sent again (at least once, as after a crash).
//!
//! [`Driver::stopped`]: bindery_classes::Driver::stopped

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use bindery_classes::Driver;
use parking_lot::Mutex;

use crate::Shared;
use crate::session::Session;

/// What to make again.
pub(crate) enum Job {
    /// A session's subscription to `filter`, the one numbered `serial`
    /// (if the session has since replaced or dropped it, nothing is done).
    Sub {
        session: Weak<Session>,
        filter: Arc<str>,
        serial: u64,
    },
    /// A persistent session's subscription to its durable queue.
    Queue { session: Weak<Session>, serial: u64 },
    /// The store's subscriptions that hold its records leased.
    Records,
}

/// The jobs of one instance and the thread that works them.
#[derive(Default)]
pub(crate) struct Rewire {
    shared: OnceLock<Weak<Shared>>,
    /// Jobs waiting, and whether a thread works them.
    jobs: Mutex<(Vec<Job>, bool)>,
}

/// A number for a subscription made, so a job can tell whether the one it
/// was queued for is still the session's.
pub(crate) fn serial() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Whether the subscription just closed on `driver` was closed because
/// its instance stops (a job for [`Rewire`]) rather than for the
/// consumer's sake.
pub(crate) fn instance_gone(driver: &Weak<dyn Driver>) -> bool {
    driver.upgrade().is_some_and(|d| d.stopped())
}

impl Rewire {
    /// Names the instance the jobs are for (once it is shared).
    pub(crate) fn attach(&self, shared: &Arc<Shared>) {
        let _ = self.shared.set(Arc::downgrade(shared));
    }

    /// Queues `job`; starts the thread if none runs. Called from a
    /// driver's delivery (under its lock): queues and returns.
    pub(crate) fn later(&self, job: Job) {
        let Some(shared) = self.shared.get().cloned() else {
            return; // not started yet: start fails or reads again
        };
        let mut jobs = self.jobs.lock();
        jobs.0.push(job);
        if jobs.1 {
            return;
        }
        jobs.1 = true;
        drop(jobs);
        let spawned = std::thread::Builder::new()
            .name("bindery-mqtt-rewire".into())
            .spawn(move || work(&shared));
        if let Err(e) = spawned {
            tracing::error!("cannot start the thread that subscribes again: {e}");
            self.jobs.lock().1 = false;
        }
    }
}

/// The thread: retries the jobs until none is left.
fn work(weak: &Weak<Shared>) {
    let mut pause = Duration::from_millis(10);
    loop {
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_secs(1));
        let Some(shared) = weak.upgrade() else { return };
        let rewire = &shared.rewire;
        let jobs = std::mem::take(&mut rewire.jobs.lock().0);
        let over = shared.stopping.load(Ordering::Acquire)
            || shared.runtime.as_ref().is_some_and(|r| r.is_stopping());
        let left: Vec<Job> = if over {
            Vec::new()
        } else {
            jobs.into_iter().filter(|j| !shared.redo(j)).collect()
        };
        let mut guard = rewire.jobs.lock();
        guard.0.extend(left);
        if guard.0.is_empty() {
            guard.1 = false;
            return;
        }
    }
}

impl Shared {
    /// Tries `job`: true once it is done or has nothing left to do.
    fn redo(&self, job: &Job) -> bool {
        match job {
            Job::Sub {
                session,
                filter,
                serial,
            } => {
                let Some(session) = session.upgrade() else {
                    return true;
                };
                let qos = {
                    let st = session.state.lock();
                    match st.subs.get(filter) {
                        Some(s) if s.serial == *serial && st.ended.is_none() => s.qos,
                        _ => return true,
                    }
                };
                let path = self.path(filter);
                match self.dispatcher.driver(&path) {
                    Ok(d) if !d.stopped() => {}
                    _ => return false,
                }
                let made = self.replace_sub(&session, filter, qos, *serial);
                if made {
                    tracing::info!(
                        instance = %self.instance,
                        client = %session.client_id,
                        %filter,
                        "subscribed again after its driver instance was replaced"
                    );
                }
                made
            }
            Job::Queue { session, serial } => {
                let Some(session) = session.upgrade() else {
                    return true;
                };
                if session.state.lock().store_serial != *serial {
                    return true;
                }
                let Some(store) = &self.store else {
                    return true;
                };
                if store.current().is_none() {
                    return false;
                }
                self.reopen_queue(&session, *serial)
            }
            Job::Records => match &self.store {
                Some(store) => store.hold_records(),
                None => true,
            },
        }
    }
}
