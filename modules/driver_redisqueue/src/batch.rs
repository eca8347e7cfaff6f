//! One pipeline of a writer: built from the operations queued, sent, and
//! finished from Redis's replies (completions run then).
//!
//! Publishes are plain XADD + INCRBY (a script costs Redis about three
//! times an XADD). Their admission counts what Redis said of each queue
//! after the last finished batch plus what batches in flight add, so a
//! node passes `max_depth` or `max_queue_bytes` by at most what it has in
//! flight. Each batch ends with XLEN and GET of the queues it published
//! to (refusals too, so a queue drained elsewhere takes publishes again)
//! and, with `min_replicas`, one WAIT.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bindery::{Completion, Failure, FailureKind};
use bindery_classes::MessageId;
use bindery_classes::driver::Receipt;
use redis::Value;

use crate::codec;
use crate::conn::Scripts;
use crate::shared::Shared;
use crate::writer::{Op, unavailable};

/// Entries and body bytes per queue that batches in flight add.
pub(crate) type InFlight = HashMap<Arc<str>, (u64, u64)>;

/// A batch sent and waiting for its replies.
pub(crate) struct Batch {
    ops: Vec<Op>,
    refused: Vec<Option<Failure>>,
    /// Queues whose XLEN and GET end the batch, with what it added.
    refresh: Vec<(Arc<str>, u64, u64)>,
    wait: bool,
    /// Replies to read.
    pub(crate) replies: usize,
}

impl Batch {
    /// Builds the pipeline of `ops`; returns the batch and its bytes.
    pub(crate) fn build(
        ops: Vec<Op>,
        shared: &Shared,
        scripts: &Scripts,
        in_flight: &mut InFlight,
    ) -> (Batch, Vec<u8>) {
        let s = &shared.settings;
        let mut room: HashMap<Arc<str>, (u64, u64, u64, u64)> = HashMap::new();
        {
            let dests = shared.dests.lock();
            for op in &ops {
                if let Op::Publish { dest, .. } = op {
                    room.entry(dest.clone()).or_insert_with(|| {
                        let seen = dests
                            .get(dest)
                            .map_or((0, 0), |d| (d.seen_depth, d.seen_bytes));
                        let flying = in_flight.get(dest).copied().unwrap_or((0, 0));
                        (seen.0 + flying.0, seen.1 + flying.1, 0, 0)
                    });
                }
            }
        }
        let mut refused = Vec::with_capacity(ops.len());
        let mut pipe = redis::pipe();
        let mut commands = 0;
        let mut publishes = 0;
        for op in &ops {
            let mut verdict = None;
            match op {
                Op::Publish {
                    dest,
                    content_type,
                    headers,
                    body,
                    ..
                } => {
                    let Some((depth, bytes, added, added_bytes)) = room.get_mut(dest) else {
                        let why = format!("{dest}: no admission state (a bug)");
                        refused.push(Some(Failure::new(FailureKind::Internal, why)));
                        continue;
                    };
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
                        *added += 1;
                        *added_bytes += size;
                        publishes += 1;
                        commands += 2;
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
                Op::Ack {
                    dest,
                    id,
                    size: Some(size),
                    ..
                } => {
                    commands += 3;
                    let entry = codec::entry_of(*id);
                    pipe.cmd("XACK")
                        .arg(s.stream(dest))
                        .arg(&s.group)
                        .arg(&entry);
                    pipe.cmd("XDEL").arg(s.stream(dest)).arg(&entry);
                    pipe.cmd("DECRBY").arg(s.bytes_key(dest)).arg(*size);
                }
                Op::Fix { dest, size } => {
                    commands += 1;
                    pipe.cmd("INCRBY").arg(s.bytes_key(dest)).arg(*size);
                }
                Op::Ack { dest, id, .. } => {
                    commands += 1;
                    pipe.cmd("EVALSHA")
                        .arg(&scripts.ack)
                        .arg(2)
                        .arg(s.stream(dest))
                        .arg(s.bytes_key(dest))
                        .arg(&s.group)
                        .arg(codec::entry_of(*id));
                }
                Op::Unblock(client) => {
                    commands += 1;
                    pipe.cmd("CLIENT").arg("UNBLOCK").arg(*client);
                }
            }
            refused.push(verdict);
        }
        let mut refresh = Vec::with_capacity(room.len());
        for (d, (_, _, added, added_bytes)) in room {
            pipe.cmd("XLEN").arg(s.stream(&d));
            pipe.cmd("GET").arg(s.bytes_key(&d));
            commands += 2;
            let f = in_flight.entry(d.clone()).or_insert((0, 0));
            f.0 += added;
            f.1 += added_bytes;
            refresh.push((d, added, added_bytes));
        }
        let wait = s.min_replicas > 0 && publishes > 0;
        if wait {
            pipe.cmd("WAIT")
                .arg(s.min_replicas)
                .arg(s.replica_timeout.as_millis() as u64);
            commands += 1;
        }
        let packed = pipe.get_packed_pipeline();
        let batch = Batch {
            ops,
            refused,
            refresh,
            wait,
            replies: commands,
        };
        (batch, packed)
    }

    /// What the batch adds stops counting as in flight.
    fn land(&self, in_flight: &mut InFlight) {
        for (d, added, added_bytes) in &self.refresh {
            if let Some(f) = in_flight.get_mut(d) {
                f.0 = f.0.saturating_sub(*added);
                f.1 = f.1.saturating_sub(*added_bytes);
                if *f == (0, 0) {
                    in_flight.remove(d);
                }
            }
        }
    }

    /// Fails every operation (the connection broke): `Unavailable`.
    pub(crate) fn fail(self, url: &str, why: &str, in_flight: &mut InFlight) {
        self.land(in_flight);
        for op in self.ops {
            fail(op, url, why);
        }
    }

    /// Completes every operation from `replies`; returns whether Redis
    /// lost the scripts (reconnect).
    pub(crate) fn finish(
        self,
        replies: Vec<Value>,
        shared: &Shared,
        url: &str,
        in_flight: &mut InFlight,
        fixes: &mut Vec<Op>,
    ) -> bool {
        self.land(in_flight);
        let s = &shared.settings;
        let replicas = if self.wait {
            replies.last().and_then(codec::int).unwrap_or(0)
        } else {
            i64::MAX
        };
        let mut replies = replies.into_iter();
        let mut reload = false;
        let mut done_ops = Vec::with_capacity(self.ops.len());
        for (op, verdict) in self.ops.into_iter().zip(self.refused) {
            match op {
                Op::Publish { dest, done, .. } => {
                    if let Some(f) = verdict {
                        shared.with(&dest, |d| d.meters.refused.inc());
                        done_ops.push(Done::Publish(done, Err(f)));
                        continue;
                    }
                    let id = replies.next().unwrap_or_default();
                    let _bytes = replies.next();
                    let outcome = match published(shared, &dest, &id, &mut reload) {
                        Ok(_) if replicas < i64::from(s.min_replicas) => Err(unavailable(
                            &dest,
                            url,
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
                Op::Ack {
                    dest,
                    id,
                    size: Some(size),
                    done,
                } => {
                    let reply = replies.next().unwrap_or_default();
                    let (_, _) = (replies.next(), replies.next());
                    if codec::int(&reply) == Some(0) {
                        // Settled already (through another node, which
                        // took its bytes off): give ours back.
                        fixes.push(Op::Fix {
                            dest: dest.clone(),
                            size,
                        });
                    }
                    done_ops.push(Done::Ack(
                        done,
                        acked(shared, &dest, id, &reply, &mut reload),
                    ));
                }
                Op::Fix { .. } => {
                    replies.next();
                }
                Op::Ack { dest, id, done, .. } => {
                    let reply = replies.next().unwrap_or_default();
                    done_ops.push(Done::Ack(
                        done,
                        acked(shared, &dest, id, &reply, &mut reload),
                    ));
                }
                Op::Unblock(_) => {
                    replies.next();
                }
            }
        }
        {
            let mut dests = shared.dests.lock();
            for (d, _, _) in &self.refresh {
                let depth = replies.next().as_ref().and_then(codec::int).unwrap_or(0);
                let bytes = replies.next().as_ref().and_then(codec::int).unwrap_or(0);
                if let Some(x) = dests.get_mut(d) {
                    x.seen_depth = depth.max(0) as u64;
                    x.seen_bytes = bytes.max(0) as u64;
                    x.meters.depth.set(x.seen_depth);
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
        reload
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
pub(crate) fn fail(op: Op, url: &str, why: &str) {
    match op {
        Op::Publish { dest, done, .. } => done.fail(unavailable(&dest, url, why)),
        Op::Ack { dest, done, .. } => done.fail(unavailable(&dest, url, why)),
        Op::Fix { .. } | Op::Unblock(_) => {}
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
    shared.with(dest, |d| d.meters.published.inc());
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
                d.meters.acked.inc();
                d.meters.depth.set(d.meters.depth.get().saturating_sub(1));
                d.seen_depth = d.seen_depth.saturating_sub(1);
            });
            Ok(())
        }
        _ => Err(not_found()),
    }
}
