//! An outcome still to come, as a blocking wait and as a `Future`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bindery::{Completion, Failure};
use parking_lot::{Condvar, Mutex};

use super::ClientError;

struct Slot<T> {
    outcome: Option<Result<T, Failure>>,
    waker: Option<Waker>,
}

struct Shared<T> {
    slot: Mutex<Slot<T>>,
    ready: Condvar,
}

/// The outcome of a call that completes later (a publish, an ack): wait
/// for it ([`Pending::wait`]) or `.await` it — it is a `Future` any
/// executor can poll, and needs no runtime of its own.
pub struct Pending<T>(Arc<Shared<T>>);

impl<T> std::fmt::Debug for Pending<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pending")
    }
}

impl<T: Send + 'static> Pending<T> {
    /// A pending outcome and the completion that settles it.
    pub(crate) fn new() -> (Pending<T>, Completion<T>) {
        let shared = Arc::new(Shared {
            slot: Mutex::new(Slot {
                outcome: None,
                waker: None,
            }),
            ready: Condvar::new(),
        });
        let settle = shared.clone();
        let done = Completion::new(move |outcome| {
            let waker = {
                let mut slot = settle.slot.lock();
                slot.outcome = Some(outcome);
                slot.waker.take()
            };
            settle.ready.notify_all();
            if let Some(w) = waker {
                w.wake();
            }
        });
        (Pending(shared), done)
    }

    /// Blocks until the outcome is known.
    pub fn wait(self) -> Result<T, ClientError> {
        let mut slot = self.0.slot.lock();
        loop {
            if let Some(outcome) = slot.outcome.take() {
                return outcome.map_err(ClientError::from);
            }
            self.0.ready.wait(&mut slot);
        }
    }

    /// Blocks until the outcome is known or `limit` passes.
    pub fn wait_for(self, limit: Duration) -> Result<T, ClientError> {
        let mut slot = self.0.slot.lock();
        if slot.outcome.is_none() {
            self.0.ready.wait_for(&mut slot, limit);
        }
        match slot.outcome.take() {
            Some(outcome) => outcome.map_err(ClientError::from),
            None => Err(ClientError::TimedOut),
        }
    }
}

impl<T> Future for Pending<T> {
    type Output = Result<T, ClientError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut slot = self.0.slot.lock();
        match slot.outcome.take() {
            Some(outcome) => Poll::Ready(outcome.map_err(ClientError::from)),
            None => {
                slot.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}
