//! Messages arriving for the embedding program: from a queue (with credit,
//! acked or given back) or from a topic, as a blocking `recv` and as a
//! `Stream`.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use futures_core::Stream;
use parking_lot::{Condvar, Mutex};

use crate::driver::DriverHandle;
use crate::{Consumer, Delivery, Message, Subscription};

use super::{ClientError, Pending};

#[derive(Default)]
struct Held {
    queue: VecDeque<Delivery>,
    waker: Option<Waker>,
}

/// Where a consumer's deliveries wait for the program.
#[derive(Default)]
pub(crate) struct Inbox {
    held: Mutex<Held>,
    arrived: Condvar,
}

impl Inbox {
    /// A consumer that files deliveries here (never blocks: the driver's
    /// lock is held while it runs).
    pub(crate) fn consumer(self: &Arc<Self>, name: String) -> Consumer {
        let inbox = self.clone();
        Consumer::new(move |d| {
            let waker = {
                let mut held = inbox.held.lock();
                held.queue.push_back(d);
                held.waker.take()
            };
            inbox.arrived.notify_one();
            if let Some(w) = waker {
                w.wake();
            }
        })
        .named(name)
    }
}

/// A live consumption: a queue's messages (each to be acked, or given
/// back) or a topic's. Dropping it cancels the subscription; a queue's
/// unacked messages return when their leases end.
pub struct Consumption {
    pub(crate) inbox: Arc<Inbox>,
    pub(crate) sub: Subscription,
    pub(crate) driver: DriverHandle,
    pub(crate) path: String,
    /// Queue: credit returns on ack or nack; topic: on receipt.
    pub(crate) queue: bool,
}

impl std::fmt::Debug for Consumption {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumption")
            .field("path", &self.path)
            .finish()
    }
}

impl Consumption {
    fn take(&self, d: Delivery) -> Result<Message, ClientError> {
        match d {
            Delivery::Message(m) => {
                if !self.queue {
                    self.sub.credit(1);
                }
                Ok(m)
            }
            Delivery::Closed(why) => Err(ClientError::Closed(why)),
        }
    }

    /// The next message; blocks until one comes or the subscription ends.
    pub fn recv(&mut self) -> Result<Message, ClientError> {
        let mut held = self.inbox.held.lock();
        loop {
            if let Some(d) = held.queue.pop_front() {
                drop(held);
                return self.take(d);
            }
            self.inbox.arrived.wait(&mut held);
        }
    }

    /// The next message, if one comes within `limit`.
    pub fn recv_timeout(&mut self, limit: Duration) -> Result<Option<Message>, ClientError> {
        let until = Instant::now() + limit;
        let mut held = self.inbox.held.lock();
        loop {
            if let Some(d) = held.queue.pop_front() {
                drop(held);
                return self.take(d).map(Some);
            }
            if self.inbox.arrived.wait_until(&mut held, until).timed_out() {
                return Ok(None);
            }
        }
    }

    /// Acks a queue message: it is settled and never comes back.
    pub fn ack(&self, message: &Message) -> Result<(), ClientError> {
        self.ack_async(message).wait()
    }

    /// [`Consumption::ack`], as a future.
    pub fn ack_async(&self, message: &Message) -> Pending<()> {
        let (pending, done) = Pending::new();
        self.driver.ack(&self.path, message.id, done);
        self.sub.credit(1);
        pending
    }

    /// Gives a queue message back for another try, its delivery counted
    /// (a consumer that tried and failed); with drivers that cannot, it
    /// returns when its lease ends.
    pub fn nack(&self, message: &Message) -> Result<(), ClientError> {
        let outcome = self.driver.retry(&self.path, message.id);
        self.sub.credit(1);
        match outcome {
            Err(f) if f.kind == bindery::FailureKind::Unsupported => Ok(()),
            other => other.map_err(ClientError::from),
        }
    }
}

impl Stream for Consumption {
    type Item = Result<Message, ClientError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let next = {
            let mut held = self.inbox.held.lock();
            match held.queue.pop_front() {
                Some(d) => d,
                None => {
                    held.waker = Some(cx.waker().clone());
                    return Poll::Pending;
                }
            }
        };
        match self.take(next) {
            Err(ClientError::Closed(_)) => Poll::Ready(None),
            other => Poll::Ready(Some(other)),
        }
    }
}
