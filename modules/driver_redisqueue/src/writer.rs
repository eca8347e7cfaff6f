//! A writer: one connection and one thread that takes publishes and acks
//! from a channel and sends whatever has queued up as one pipeline (see
//! [`crate::batch`]), then completes each from its reply. Two batches may
//! be in flight: the next is sent before the replies to the last are read,
//! so Redis always has work when it comes back from an fsync, and each of
//! its fsyncs covers all that queued up meanwhile.
//!
//! A publish is confirmed only from Redis's reply to its XADD (and, with
//! `min_replicas`, from WAIT's count). When the connection fails, what was
//! in flight fails with `Unavailable` (it may or may not be stored: never
//! a false confirm), and so does everything until a reconnection, tried
//! with backoff.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bindery::{Completion, Failure, FailureKind};
use bindery_classes::MessageId;
use bindery_classes::driver::Receipt;
use bytes::Bytes;
use parking_lot::Mutex;
use redis::{Client, Connection, Value};

use crate::batch::{self, Batch, InFlight};
use crate::conn::{self, Backoff, Scripts, Timeouts};
use crate::shared::Shared;

/// Commands per pipeline at most.
const MAX_BATCH: usize = 1024;

/// What a writer does.
pub(crate) enum Op {
    /// Store a message.
    Publish {
        dest: Arc<str>,
        content_type: Arc<str>,
        headers: Vec<u8>,
        body: Bytes,
        done: Completion<Receipt>,
    },
    /// Settle a pending entry: with its body's size when this node
    /// leased it (XACK, XDEL and DECRBY, no script), else by the ack
    /// script (which reads the size).
    Ack {
        dest: Arc<str>,
        id: MessageId,
        size: Option<u64>,
        done: Completion<()>,
    },
    /// Give back bytes taken off a queue's count by an ack that found the
    /// entry settled already.
    Fix { dest: Arc<str>, size: u64 },
    /// Wake the reader from a blocking read.
    Unblock(u64),
}

/// A writer's handle.
pub(crate) struct Writer {
    tx: Mutex<Option<Sender<Op>>>,
    up: Arc<AtomicBool>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

/// `Unavailable` for `what`, with a retry hint.
pub(crate) fn unavailable(what: &str, url: &str, why: &str) -> Failure {
    Failure::new(
        FailureKind::Unavailable,
        format!("{what}: redis at {url} is unavailable ({why})"),
    )
    .retry_after(Duration::from_secs(1))
}

impl Writer {
    /// Starts a writer on `first` (a connection made already) or, if
    /// none, connecting on its own.
    pub(crate) fn start(
        shared: &Arc<Shared>,
        client: Client,
        timeouts: Timeouts,
        first: Option<(Connection, Scripts)>,
    ) -> Writer {
        let (tx, rx) = channel();
        let up = Arc::new(AtomicBool::new(first.is_some()));
        let worker = Worker {
            shared: Arc::downgrade(shared),
            url: shared.settings.display_url.clone(),
            client,
            timeouts,
            conn: first,
            up: up.clone(),
            backoff: Backoff::default(),
            retry_at: Instant::now(),
            last_error: String::new(),
        };
        let thread = std::thread::Builder::new()
            .name("redisqueue-writer".into())
            .spawn(move || worker.run(rx))
            .ok();
        Writer {
            tx: Mutex::new(Some(tx)),
            up,
            thread: Mutex::new(thread),
        }
    }

    /// Whether its connection is up.
    pub(crate) fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// Whether its connection is up, as a flag to read later.
    pub(crate) fn up_flag(&self) -> Arc<AtomicBool> {
        self.up.clone()
    }

    /// Queues `op`; gives it back if the writer is gone.
    pub(crate) fn send(&self, op: Op) -> Result<(), Op> {
        match &*self.tx.lock() {
            Some(tx) => tx.send(op).map_err(|e| e.0),
            None => Err(op),
        }
    }

    /// A sender of its own (for the reader's unblocking).
    pub(crate) fn sender(&self) -> Option<Sender<Op>> {
        self.tx.lock().clone()
    }

    /// Lets the thread finish what is queued, and waits for it.
    pub(crate) fn stop(&self) {
        self.tx.lock().take();
        if let Some(t) = self.thread.lock().take() {
            let _ = t.join();
        }
    }
}

struct Worker {
    shared: Weak<Shared>,
    url: String,
    client: Client,
    timeouts: Timeouts,
    conn: Option<(Connection, Scripts)>,
    up: Arc<AtomicBool>,
    backoff: Backoff,
    retry_at: Instant,
    last_error: String,
}

impl Worker {
    fn run(mut self, rx: Receiver<Op>) {
        let mut flying: VecDeque<Batch> = VecDeque::new();
        let mut in_flight = InFlight::new();
        let mut fixes: Vec<Op> = Vec::new();
        loop {
            let first = if !fixes.is_empty() {
                fixes.pop()
            } else if flying.is_empty() {
                match rx.recv_timeout(Duration::from_millis(500)) {
                    Ok(op) => Some(op),
                    Err(RecvTimeoutError::Timeout) => {
                        // Idle: a PING finds a Redis that went away before
                        // a publish or an ack has to.
                        self.ping();
                        self.ensure_connected();
                        continue;
                    }
                    Err(RecvTimeoutError::Disconnected) => return,
                }
            } else {
                rx.try_recv().ok()
            };
            if let Some(first) = first {
                let mut ops = vec![first];
                ops.append(&mut fixes);
                while ops.len() < MAX_BATCH {
                    match rx.try_recv() {
                        Ok(op) => ops.push(op),
                        Err(_) => break,
                    }
                }
                if flying.is_empty() {
                    self.ensure_connected();
                }
                self.send(ops, &mut flying, &mut in_flight);
            }
            if let Some(batch) = flying.pop_front() {
                self.receive(batch, &mut flying, &mut in_flight, &mut fixes);
            }
        }
    }

    /// Sends `ops` as one batch, or fails them if the connection is down.
    fn send(&mut self, ops: Vec<Op>, flying: &mut VecDeque<Batch>, in_flight: &mut InFlight) {
        let Some(shared) = self.shared.upgrade() else {
            return;
        };
        let Some((conn, scripts)) = self.conn.as_mut() else {
            let why = self.last_error.clone();
            for op in ops {
                batch::fail(op, &self.url, &why);
            }
            return;
        };
        let (batch, packed) = Batch::build(ops, &shared, scripts, in_flight);
        match conn.send_packed_command(&packed) {
            Ok(()) => flying.push_back(batch),
            Err(e) => {
                let why = e.to_string();
                batch.fail(&self.url, &why, in_flight);
                self.broken(&why, flying, in_flight);
            }
        }
    }

    /// Reads the replies to `batch` and completes it.
    fn receive(
        &mut self,
        batch: Batch,
        flying: &mut VecDeque<Batch>,
        in_flight: &mut InFlight,
        fixes: &mut Vec<Op>,
    ) {
        let Some(shared) = self.shared.upgrade() else {
            return;
        };
        let Some((conn, _)) = self.conn.as_mut() else {
            batch.fail(&self.url, &self.last_error.clone(), in_flight);
            return;
        };
        let mut replies = Vec::with_capacity(batch.replies);
        for _ in 0..batch.replies {
            match conn.recv_response() {
                // A server error for one command (Value::ServerError) is
                // its reply; an error here is the connection's.
                Ok(v) => replies.push(v),
                Err(e) => {
                    let why = e.to_string();
                    batch.fail(&self.url, &why, in_flight);
                    self.broken(&why, flying, in_flight);
                    return;
                }
            }
        }
        if batch.finish(replies, &shared, &self.url, in_flight, fixes) {
            // The scripts are gone (SCRIPT FLUSH, a failover): reconnect.
            let why = "redis lost the driver's scripts";
            self.broken(why, flying, in_flight);
            self.retry_at = Instant::now();
        }
    }

    /// The connection broke: what is in flight fails, and it is dropped.
    fn broken(&mut self, why: &str, flying: &mut VecDeque<Batch>, in_flight: &mut InFlight) {
        for b in flying.drain(..) {
            b.fail(&self.url, why, in_flight);
        }
        self.down(why);
    }

    fn ping(&mut self) {
        if let Some((c, _)) = self.conn.as_mut() {
            if let Err(e) = redis::cmd("PING").query::<Value>(c) {
                self.down(&e.to_string());
            }
        }
    }

    /// Connects if down and the backoff allows.
    fn ensure_connected(&mut self) {
        if self.conn.is_some() || Instant::now() < self.retry_at {
            return;
        }
        match conn::connect(&self.client, self.timeouts, Duration::ZERO) {
            Ok(c) => {
                tracing::info!(url = %self.url, "redisqueue: connected to redis");
                self.conn = Some(c);
                self.backoff.reset();
                self.up.store(true, Ordering::Release);
            }
            Err(e) => self.down(&e.to_string()),
        }
    }

    fn down(&mut self, why: &str) {
        if self.up.swap(false, Ordering::AcqRel) || self.last_error != why {
            tracing::warn!(url = %self.url, error = %why,
                "redisqueue: redis is unreachable; publishes fail with Unavailable until it is back");
        }
        self.conn = None;
        self.last_error = why.to_owned();
        self.retry_at = Instant::now() + self.backoff.step();
    }
}
