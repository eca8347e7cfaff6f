//! The reader: one connection and one thread per instance that feeds the
//! local subscribers.
//!
//! Each round, in one pipeline: creates the consumer groups of new
//! destinations; releases leases that ran out here (and entries no local
//! subscriber could take); renews the entries this node still holds, so
//! other nodes leave them alone; claims (XAUTOCLAIM) entries whose holder
//! released them or stopped renewing them, with the delivery counts Redis
//! keeps. Then, in a second pipeline, reads new entries (XREADGROUP `>`)
//! for every destination with credit. When nothing came, it blocks in one
//! XREADGROUP over all of them for at most [`POLL`]; a new subscription
//! or credit cuts that short (CLIENT UNBLOCK from a writer).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bindery_classes::{Message, MessageId};
use redis::{Client, Connection, Value};

use crate::codec;
use crate::conn::{self, Backoff, Scripts, Timeouts};
use crate::shared::Shared;

/// The longest a round waits: how late an entry released by another node
/// (or orphaned) can be noticed.
pub(crate) const POLL: Duration = Duration::from_millis(250);

/// Starts the reader thread.
pub(crate) fn start(
    shared: Arc<Shared>,
    client: Client,
    timeouts: Timeouts,
) -> Option<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("redisqueue-reader".into())
        .spawn(move || {
            Reader {
                shared,
                client,
                timeouts,
                conn: None,
                backoff: Backoff::default(),
                last_renew: Instant::now(),
                last_prune: Instant::now(),
                last_claim: Instant::now(),
            }
            .run()
        })
        .ok()
}

struct Reader {
    shared: Arc<Shared>,
    client: Client,
    timeouts: Timeouts,
    conn: Option<(Connection, Scripts)>,
    backoff: Backoff,
    last_renew: Instant,
    last_prune: Instant,
    last_claim: Instant,
}

/// An entry held, with the idle time in ms to give it in Redis.
type Held = (MessageId, u64);

/// One round's work, planned under the lock.
#[derive(Default)]
struct Plan {
    group: Vec<Arc<str>>,
    release: Vec<(Arc<str>, MessageId, bool)>,
    /// Entries still held, each with the idle time to give it in Redis
    /// (0: renewed; else the lease ends before `orphan_after`).
    renew: Vec<(Arc<str>, Vec<Held>)>,
    claim: Vec<(Arc<str>, u32, String)>,
    /// Destinations whose idle, empty consumers are deleted this round.
    prune: Vec<Arc<str>>,
    /// The earliest lease deadline.
    next: Option<Instant>,
    /// Some destination has credit: read.
    credit: bool,
}

impl Plan {
    /// Nothing for the first pipeline.
    fn light(&self) -> bool {
        self.group.is_empty()
            && self.release.is_empty()
            && self.renew.is_empty()
            && self.claim.is_empty()
            && self.prune.is_empty()
    }
}

impl Reader {
    fn run(mut self) {
        while !self.shared.stopped.load(Ordering::Acquire) {
            if self.conn.is_none() && !self.connect() {
                continue;
            }
            if let Err(e) = self.round() {
                self.shared.reader_up.store(false, Ordering::Release);
                tracing::warn!(url = %self.shared.settings.display_url, error = %e,
                    "redisqueue: the reader lost redis; consumers wait for it");
                self.conn = None;
            }
        }
    }

    fn connect(&mut self) -> bool {
        let attempt = conn::connect(&self.client, self.timeouts, POLL).and_then(|(mut c, s)| {
            let id: u64 = redis::cmd("CLIENT").arg("ID").query(&mut c)?;
            Ok((c, s, id))
        });
        match attempt {
            Ok((c, s, id)) => {
                self.shared.reader_id.store(id, Ordering::Release);
                self.shared.reader_up.store(true, Ordering::Release);
                self.conn = Some((c, s));
                self.backoff.reset();
                // Groups may be gone (a Redis that lost its data): check.
                for d in self.shared.dests.lock().values_mut() {
                    d.grouped = false;
                }
                true
            }
            Err(_) => {
                let wait = self.backoff.step();
                let mut dests = self.shared.dests.lock();
                if !self.shared.stopped.load(Ordering::Acquire) {
                    self.shared.wake.wait_for(&mut dests, wait);
                }
                false
            }
        }
    }

    fn plan(&mut self) -> Plan {
        let now = Instant::now();
        let renew_due = now >= self.last_renew + self.shared.settings.orphan_after / 3;
        if renew_due {
            self.last_renew = now;
        }
        let mut prune_due = now >= self.last_prune + self.shared.settings.orphan_after;
        let mut p = Plan::default();
        let mut credited = Vec::new();
        let mut fresh = false;
        let mut dests = self.shared.dests.lock();
        // A destination only ever subscribed to and left (a poll of a
        // path that holds nothing) is forgotten: requests for any path
        // cannot grow the map.
        dests.retain(|_, d| {
            !(d.subs.is_empty()
                && d.leases.is_empty()
                && d.to_release.is_empty()
                && d.meters.published.get() == 0
                && d.meters.delivered.get() == 0
                && d.meters.acked.get() == 0
                && d.meters.refused.get() == 0)
        });
        let orphan = self.shared.settings.orphan_after;
        for (name, d) in dests.iter_mut() {
            let mut held = Vec::new();
            d.leases.retain(|id, l| {
                if l.until <= now {
                    p.release.push((name.clone(), *id, false));
                    return false;
                }
                p.next = Some(p.next.map_or(l.until, |n| n.min(l.until)));
                let left = l.until - now;
                if left < orphan {
                    // Idle in Redis so that another node may claim it
                    // once the lease ends, should this one die: set once.
                    if !std::mem::replace(&mut l.tuned, true) {
                        held.push((*id, (orphan - left).as_millis() as u64));
                    }
                } else if renew_due {
                    held.push((*id, 0));
                }
                true
            });
            for (id, uncount) in d.to_release.drain(..) {
                p.release.push((name.clone(), id, uncount));
            }
            if !held.is_empty() {
                p.renew.push((name.clone(), held));
            }
            let credit: u32 = d.subs.iter().map(|s| s.credit).fold(0, u32::saturating_add);
            if credit > 0 {
                if !d.grouped {
                    p.group.push(name.clone());
                }
                if d.cursor.is_empty() {
                    d.cursor = "0-0".into();
                }
                fresh |= std::mem::take(&mut d.fresh);
                credited.push((name.clone(), credit.min(1000), d.cursor.clone(), d.grouped));
            }
        }
        // Claims (and the pruning that goes with them) every POLL, and at
        // once when this node released something or a subscriber came:
        // each is a round trip that waits for Redis's fsync.
        p.credit = !credited.is_empty();
        if fresh || !p.release.is_empty() || now >= self.last_claim + POLL {
            self.last_claim = now;
            if prune_due {
                self.last_prune = now;
            }
            for (name, n, cursor, grouped) in credited {
                if prune_due && grouped {
                    p.prune.push(name.clone());
                }
                p.claim.push((name, n, cursor));
            }
        } else {
            prune_due = false;
        }
        let _ = prune_due;
        if p.light() && !p.credit {
            // Nothing to do until a lease runs out, a renewal is due, or a
            // subscriber pokes.
            let renew_at = self.last_renew + self.shared.settings.orphan_after / 3;
            let until = p
                .next
                .map_or(renew_at, |n| n.min(renew_at))
                .min(now + Duration::from_secs(1));
            if !self.shared.dirty.swap(false, Ordering::SeqCst)
                && !self.shared.stopped.load(Ordering::Acquire)
            {
                self.shared.wake.wait_until(&mut dests, until);
            }
        }
        p
    }

    fn round(&mut self) -> redis::RedisResult<()> {
        self.shared.dirty.store(false, Ordering::SeqCst);
        let p = self.plan();
        if p.light() && !p.credit {
            return Ok(());
        }
        let mut got = if p.light() { 0 } else { self.first(&p)? };
        got += self.read(false)?;
        if got == 0 && !self.shared.dirty.load(Ordering::SeqCst) {
            let wait = p.next.map_or(POLL, |n| {
                n.saturating_duration_since(Instant::now()).min(POLL)
            });
            if wait >= Duration::from_millis(1) {
                self.shared.blocking.store(true, Ordering::SeqCst);
                if !self.shared.dirty.load(Ordering::SeqCst) {
                    let r = self.read(true).map(|_| ());
                    self.shared.blocking.store(false, Ordering::SeqCst);
                    r?;
                }
                self.shared.blocking.store(false, Ordering::SeqCst);
            }
        }
        Ok(())
    }

    /// The first pipeline: groups, releases, renewals, claims, pruning.
    /// Returns how many claimed entries it delivered.
    fn first(&mut self, p: &Plan) -> redis::RedisResult<usize> {
        let s = &self.shared.settings;
        let Some((conn, scripts)) = self.conn.as_mut() else {
            return Ok(0);
        };
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        for d in &p.group {
            pipe.cmd("XGROUP")
                .arg("CREATE")
                .arg(s.stream(d))
                .arg(&s.group)
                .arg("0")
                .arg("MKSTREAM");
        }
        for (d, id, uncount) in &p.release {
            pipe.cmd("EVALSHA")
                .arg(&scripts.release)
                .arg(2)
                .arg(s.stream(d))
                .arg(s.bytes_key(d))
                .arg(&s.group)
                .arg(&s.consumer)
                .arg(codec::entry_of(*id))
                .arg(if *uncount { "1" } else { "0" });
        }
        for (d, ids) in &p.renew {
            let c = pipe
                .cmd("EVALSHA")
                .arg(&scripts.renew)
                .arg(2)
                .arg(s.stream(d))
                .arg(s.bytes_key(d))
                .arg(&s.group)
                .arg(&s.consumer);
            for (id, idle) in ids {
                c.arg(codec::entry_of(*id)).arg(*idle);
            }
        }
        for (d, n, cursor) in &p.claim {
            pipe.cmd("EVALSHA")
                .arg(&scripts.claim)
                .arg(2)
                .arg(s.stream(d))
                .arg(s.bytes_key(d))
                .arg(&s.group)
                .arg(&s.consumer)
                .arg(s.orphan_after.as_millis() as u64)
                .arg(cursor)
                .arg(*n);
        }
        // Last: the claims' replies are read in order above them.
        for d in &p.prune {
            pipe.cmd("EVALSHA")
                .arg(&scripts.prune)
                .arg(1)
                .arg(s.stream(d))
                .arg(&s.group)
                .arg(s.orphan_after.as_millis() as u64);
        }
        let replies: Vec<Value> = pipe.query(conn)?;
        let mut replies = replies.into_iter();
        for d in &p.group {
            match replies.next() {
                Some(Value::ServerError(e)) if !e.to_string().contains("BUSYGROUP") => {
                    tracing::warn!(destination = %d, error = %e, "redisqueue: cannot create the consumer group");
                }
                _ => self.shared.with(d, |d| d.grouped = true),
            }
        }
        for _ in &p.release {
            replies.next();
        }
        for _ in &p.renew {
            replies.next();
        }
        let mut got = 0;
        for (d, _, _) in &p.claim {
            let Some(reply) = replies.next() else { break };
            if let Value::ServerError(e) = &reply {
                if e.to_string().contains("NOGROUP") {
                    self.shared.with(d, |d| d.grouped = false);
                }
                continue;
            }
            let [cursor, entries] = codec::items(&reply) else {
                continue;
            };
            let next = codec::text(cursor).unwrap_or("0-0").to_owned();
            self.shared.with(d, |x| x.cursor = next);
            let messages = decode(
                d,
                codec::items(entries).iter().map(|e| {
                    let it = codec::items(e);
                    let count = it.get(2).and_then(codec::int).unwrap_or(1);
                    (
                        it.first(),
                        it.get(1),
                        count.clamp(1, u32::MAX as i64) as u32,
                    )
                }),
            );
            got += messages.len();
            self.shared.deliver(d, messages);
        }
        Ok(got)
    }

    /// New entries for every destination with credit: each with its own
    /// COUNT at once, or (`block`) one XREADGROUP over all that waits.
    fn read(&mut self, block: bool) -> redis::RedisResult<usize> {
        let wanted: Vec<(Arc<str>, u32)> = {
            let dests = self.shared.dests.lock();
            dests
                .iter()
                .filter(|(_, d)| d.grouped)
                .map(|(n, d)| {
                    (
                        n.clone(),
                        d.subs.iter().map(|s| s.credit).fold(0, u32::saturating_add),
                    )
                })
                .filter(|(_, c)| *c > 0)
                .collect()
        };
        if wanted.is_empty() {
            return Ok(0);
        }
        let s = &self.shared.settings;
        let Some((conn, _)) = self.conn.as_mut() else {
            return Ok(0);
        };
        let replies: Vec<Value> = if block {
            let mut c = redis::cmd("XREADGROUP");
            c.arg("GROUP")
                .arg(&s.group)
                .arg(&s.consumer)
                .arg("COUNT")
                .arg(1)
                .arg("BLOCK")
                .arg(POLL.as_millis() as u64)
                .arg("STREAMS");
            for (d, _) in &wanted {
                c.arg(s.stream(d));
            }
            for _ in &wanted {
                c.arg(">");
            }
            match c.query::<Value>(conn) {
                Ok(v) => vec![v],
                Err(e) if e.code().is_some() => vec![Value::Nil],
                Err(e) => return Err(e),
            }
        } else {
            let mut pipe = redis::pipe();
            pipe.ignore_errors();
            for (d, n) in &wanted {
                pipe.cmd("XREADGROUP")
                    .arg("GROUP")
                    .arg(&s.group)
                    .arg(&s.consumer)
                    .arg("COUNT")
                    .arg(n.min(&1000))
                    .arg("STREAMS")
                    .arg(s.stream(d))
                    .arg(">");
            }
            pipe.query(conn)?
        };
        let mut got = 0;
        for (i, reply) in replies.iter().enumerate() {
            if let Value::ServerError(e) = reply {
                if e.to_string().contains("NOGROUP") {
                    if let Some((d, _)) = wanted.get(i) {
                        self.shared.with(d, |d| d.grouped = false);
                    }
                }
                continue;
            }
            // [[stream, [[id, fields], ...]], ...]
            for stream in codec::items(reply) {
                let [key, entries] = codec::items(stream) else {
                    continue;
                };
                let key = codec::text(key).unwrap_or_default();
                let Some((d, _)) = wanted.iter().find(|(d, _)| s.stream(d) == key) else {
                    continue;
                };
                let messages = decode(
                    d,
                    codec::items(entries).iter().map(|e| {
                        let it = codec::items(e);
                        (it.first(), it.get(1), 1)
                    }),
                );
                got += messages.len();
                self.shared.deliver(d, messages);
            }
        }
        Ok(got)
    }
}

/// Messages from (id, fields, delivery count) triples; an entry that is
/// not a message is logged and skipped.
fn decode<'a>(
    dest: &Arc<str>,
    entries: impl Iterator<Item = (Option<&'a Value>, Option<&'a Value>, u32)>,
) -> Vec<Message> {
    entries
        .filter_map(|(id, fields, count)| {
            let (id, fields) = (id?, fields?);
            codec::message(dest, id, fields, count)
                .map_err(|e| tracing::warn!(destination = %dest, error = %e, "redisqueue: skipped an entry"))
                .ok()
        })
        .collect()
}
