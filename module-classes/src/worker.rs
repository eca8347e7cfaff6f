//! The worker class: modules that take messages from queues and do work
//! with them (run a command, call a service), acking each only once its
//! work succeeded.
//!
//! A worker instance binds to the queue paths it works (exact keys such as
//! `/jobs/build`). In a start hook it finds the dispatcher and subscribes
//! to each path through it, like a terminal's consumer does, so it works
//! with any queue driver.
//!
//! # Implementing
//!
//! - Take at most as many messages as it can work at once (the
//!   subscription's credit); grant credit as work finishes.
//! - Ack a message only after its work succeeded; a failure leaves it
//!   unacked, so the queue delivers it again when its lease ends (the
//!   lease must outlast the work). After the configured number of
//!   deliveries, move it to a dead-letter path (publish there, then ack).
//! - [`Worker::stop`]: take nothing more; let work in flight finish, and
//!   abandon (unacked) what is still running at the deadline.
//!
//! # Threading
//!
//! Deliveries arrive on the driver's thread: queue them to a reactor
//! handler and return (see [`crate::Consumer::new`]).

use std::sync::Arc;
use std::time::Instant;

use bindery::{BoxError, InstanceContext, Registrar};

/// Something that works messages from queues.
pub trait Worker: Send + Sync + 'static {
    /// Messages being worked now.
    fn running(&self) -> u64;

    /// Take nothing more; finish or abandon (unacked) what runs by
    /// `deadline`. Called once, never on a reactor thread; returns when
    /// nothing runs.
    fn stop(&self, deadline: Instant);
}

/// A worker instance as the binding table holds it.
pub type WorkerHandle = Arc<dyn Worker>;

/// Registers a worker module's factory; the instance's stop hook calls
/// [`Worker::stop`].
pub fn register<W, F>(reg: &mut Registrar<'_, crate::class::Worker>, make: F)
where
    W: Worker,
    F: Fn(&InstanceContext) -> Result<Arc<W>, BoxError> + Send + Sync + 'static,
{
    reg.register(move |cx| {
        let worker = make(cx)?;
        let stopping = worker.clone();
        cx.on_stop(move |deadline| stopping.stop(deadline));
        Ok(worker as WorkerHandle)
    });
}
