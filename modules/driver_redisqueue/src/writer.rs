//! A writer: one connection and one thread that takes publishes and acks
//! from a channel and sends whatever has queued up as one pipeline (one
//! round trip for many commands), then completes each from its reply.
//!
//! A publish is confirmed only from Redis's reply to its XADD (and, with
//! `min_replicas`, from WAIT's count). When the connection fails, what was
//! in flight fails with `Unavailable` (it may or may not be stored: never
//! a false confirm), and so does everything until a reconnection, tried
//! with backoff.

use std::collections::HashMap;
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

use crate::codec;
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
    /// Settle a pending entry.
    Ack {
        dest: Arc<str>,
        id: MessageId,
        done: Completion<()>,
    },
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
        loop {
            let first = match rx.recv_timeout(Duration::from_millis(500)) {
                Ok(op) => op,
                Err(RecvTimeoutError::Timeout) => {
                    // Idle: a PING finds a Redis that went away before a
                    // publish or an ack has to.
                    self.ping();
                    self.ensure_connected();
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => return,
            };
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(op) => batch.push(op),
                    Err(_) => break,
                }
            }
            self.ensure_connected();
            self.send(batch);
        }
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

    fn send(&mut self, batch: Vec<Op>) {
        let Some(shared) = self.shared.upgrade() else {
            return;
        };
        let s = &shared.settings;
        let Some((conn, scripts)) = self.conn.as_mut() else {
            let why = self.last_error.clone();
            for op in batch {
                fail(op, &self.url, &why);
            }
            return;
        };
        // Admission: what Redis said of each queue after the last batch,
        // plus what this batch adds.
        let mut room: HashMap<Arc<str>, (u64, u64)> = HashMap::new();
        {
            let dests = shared.dests.lock();
            for op in &batch {
                if let Op::Publish { dest, .. } = op {
                    let seen = dests
                        .get(dest)
                        .map_or((0, 0), |d| (d.seen_depth, d.seen_bytes));
                    room.entry(dest.clone()).or_insert(seen);
                }
            }
        }
        let mut refused: Vec<Option<Failure>> = Vec::with_capacity(batch.len());
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        let mut publishes = 0;
        for op in &batch {
            let mut verdict = None;
            match op {
                Op::Publish {
                    dest,
                    content_type,
                    headers,
                    body,
                    ..
                } => {
                    let (depth, bytes) = room.get_mut(dest).expect("every destination has room");
                    let size = body.len() as u64;
                    if *depth >= s.max_depth {
                        verdict = Some(full(
                            dest,
                            format!(
                                "the queue holds {depth} messages (max_depth = {})",
                                s.max_depth
                            ),
                        ));
                    } else if *depth > 0 && *bytes + size > s.max_queue_bytes {
                        verdict = Some(full(
                            dest,
                            format!(
                                "the queue holds {bytes} bytes of bodies (max_queue_bytes = {})",
                                s.max_queue_bytes
                            ),
                        ));
                    } else {
                        *depth += 1;
                        *bytes += size;
                        publishes += 1;
                        pipe.cmd("XADD")
                            .arg(s.stream(dest))
                            .arg("*")
                            .arg("t")
                            .arg(&**content_type)
                            .arg("h")
                            .arg(&headers[..])
                            .arg("b")
                            .arg(&body[..]);
                        pipe.cmd("INCRBY").arg(s.bytes_key(dest)).arg(size);
                    }
                }
                Op::Ack { dest, id, .. } => {
                    pipe.cmd("EVALSHA")
                        .arg(&scripts.ack)
                        .arg(2)
                        .arg(s.stream(dest))
                        .arg(s.bytes_key(dest))
                        .arg(&s.group)
                        .arg(codec::entry_of(*id));
                }
                Op::Unblock(client) => {
                    pipe.cmd("CLIENT").arg("UNBLOCK").arg(*client);
                }
            }
            refused.push(verdict);
        }
        // What each queue holds after the batch, for the next admission
        // (refusals ask too, so a queue drained elsewhere takes publishes
        // again).
        let refresh: Vec<Arc<str>> = room.into_keys().collect();
        for d in &refresh {
            pipe.cmd("XLEN").arg(s.stream(d));
            pipe.cmd("GET").arg(s.bytes_key(d));
        }
        let wait = s.min_replicas > 0 && publishes > 0;
        if wait {
            pipe.cmd("WAIT")
                .arg(s.min_replicas)
                .arg(s.replica_timeout.as_millis() as u64);
        }
        let replies: Vec<Value> = match pipe.query(conn) {
            Ok(r) => r,
            Err(e) => {
                let why = e.to_string();
                self.down(&why);
                for op in batch {
                    fail(op, &self.url, &why);
                }
                return;
            }
        };
        let replicas = if wait {
            replies.last().and_then(codec::int).unwrap_or(0)
        } else {
            i64::MAX
        };
        let mut replies = replies.into_iter();
        let mut reload = false;
        let mut done_ops = Vec::with_capacity(batch.len());
        for (op, verdict) in batch.into_iter().zip(refused) {
            match op {
                Op::Publish { dest, done, .. } => {
                    if let Some(f) = verdict {
                        shared.with(&dest, |d| d.stats.refused += 1);
                        done_ops.push(Done::Publish(done, Err(f)));
                        continue;
                    }
                    let id = replies.next().unwrap_or_default();
                    let _bytes = replies.next();
                    let outcome = match published(&shared, &dest, &id, &mut reload) {
                        Ok(_) if replicas < i64::from(s.min_replicas) => Err(unavailable(
                            &dest,
                            &self.url,
                            &format!(
                                "the message reached {replicas} of min_replicas = {} replicas \
                                 within {:?}; it may be stored",
                                s.min_replicas, s.replica_timeout
                            ),
                        )),
                        o => o,
                    };
                    done_ops.push(Done::Publish(done, outcome));
                }
                Op::Ack { dest, id, done } => {
                    let reply = replies.next().unwrap_or_default();
                    done_ops.push(Done::Ack(
                        done,
                        acked(&shared, &dest, id, &reply, &mut reload),
                    ));
                }
                Op::Unblock(_) => {
                    replies.next();
                }
            }
        }
        {
            let mut dests = shared.dests.lock();
            for d in &refresh {
                let depth = replies.next().as_ref().and_then(codec::int).unwrap_or(0);
                let bytes = replies.next().as_ref().and_then(codec::int).unwrap_or(0);
                if let Some(x) = dests.get_mut(d) {
                    x.seen_depth = depth.max(0) as u64;
                    x.seen_bytes = bytes.max(0) as u64;
                    x.stats.depth = x.seen_depth;
                }
            }
        }
        // Completions run outside the lock, once the limits are current.
        for d in done_ops {
            match d {
                Done::Publish(done, outcome) => done.complete(outcome),
                Done::Ack(done, outcome) => done.complete(outcome),
            }
        }
        if reload {
            // The scripts are gone (SCRIPT FLUSH, a failover): reconnect.
            self.down("redis lost the driver's scripts");
            self.retry_at = Instant::now();
        }
    }
}

/// A completion and its outcome, completed once the batch is processed.
enum Done {
    Publish(Completion<Receipt>, Result<Receipt, Failure>),
    Ack(Completion<()>, Result<(), Failure>),
}

/// `Full` with a retry hint.
fn full(dest: &str, why: String) -> Failure {
    Failure::new(FailureKind::Full, format!("{dest}: {why}")).retry_after(Duration::from_secs(1))
}

/// Fails `op` as `Unavailable`.
fn fail(op: Op, url: &str, why: &str) {
    match op {
        Op::Publish { dest, done, .. } => done.fail(unavailable(&dest, url, why)),
        Op::Ack { dest, done, .. } => done.fail(unavailable(&dest, url, why)),
        Op::Unblock(_) => {}
    }
}

/// A server error: `Full` for OOM, else `Unavailable` (NOSCRIPT asks for a
/// reconnection) or `Internal`.
fn server_error(dest: &str, e: &redis::ServerError, reload: &mut bool) -> Failure {
    let text = e.to_string();
    if e.code() == "OOM" || text.contains("OOM") {
        return Failure::new(
            FailureKind::Full,
            format!("{dest}: redis is out of memory (maxmemory): {text}"),
        )
        .retry_after(Duration::from_secs(1));
    }
    if e.code() == "NOSCRIPT" {
        *reload = true;
        return Failure::new(FailureKind::Unavailable, format!("{dest}: {text}"))
            .retry_after(Duration::from_secs(1));
    }
    Failure::new(FailureKind::Internal, format!("{dest}: redis: {text}"))
}

/// The receipt of an XADD reply.
fn published(
    shared: &Shared,
    dest: &Arc<str>,
    reply: &Value,
    reload: &mut bool,
) -> Result<Receipt, Failure> {
    if let Value::ServerError(e) = reply {
        return Err(server_error(dest, e, reload));
    }
    let id = codec::text(reply).and_then(codec::id_of).ok_or_else(|| {
        Failure::new(
            FailureKind::Internal,
            format!("{dest}: unexpected reply to XADD: {reply:?}"),
        )
    })?;
    shared.with(dest, |d| d.stats.published += 1);
    Ok(Receipt {
        id,
        delivered_to: 0,
        backlog: 0,
    })
}

fn acked(
    shared: &Shared,
    dest: &Arc<str>,
    id: MessageId,
    reply: &Value,
    reload: &mut bool,
) -> Result<(), Failure> {
    let not_found = || {
        Failure::new(
            FailureKind::NotFound,
            format!("{dest}: message {id} is not leased"),
        )
    };
    match reply {
        Value::ServerError(e) if e.to_string().contains("NOGROUP") => Err(not_found()),
        Value::ServerError(e) => Err(server_error(dest, e, reload)),
        v if codec::int(v) == Some(1) => {
            shared.with(dest, |d| {
                d.leases.remove(&id);
                d.stats.acked += 1;
                d.stats.depth = d.stats.depth.saturating_sub(1);
                d.seen_depth = d.seen_depth.saturating_sub(1);
            });
            Ok(())
        }
        _ => Err(not_found()),
    }
}
