//! The two connections of an instance: a writer that sends publishes as
//! pipelines (and a heartbeat each second on the node's own channel), and
//! a listener that fans out what other nodes publish.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bindery::Completion;
use bindery_classes::Message;
use bindery_classes::driver::Receipt;
use parking_lot::Mutex;
use redis::{Client, Connection, Value};

use crate::{Inner, unavailable, wire};

/// Publishes per pipeline at most.
const MAX_BATCH: usize = 1024;
/// How often the writer beats on the node's own channel.
const BEAT: Duration = Duration::from_secs(1);

/// What the writer does.
pub(crate) enum Op {
    /// Send a message to every node.
    Publish(Box<(Message, Completion<Receipt>)>),
    /// Beat on this node's own channel (it keeps the listener sure its
    /// connection lives, and wakes it when stopping).
    Beat,
    /// The retained messages a filter matches.
    Retained(Box<(String, Completion<Vec<Message>>)>),
}

/// Keeps or clears a retained message, within the cap. KEYS[1]: the hash;
/// ARGV: path, payload ('' clears), cap (0: none). Returns 1, or 0 when
/// the cap refused a new topic.
const RETAIN: &str = r#"
if ARGV[2] == '' then redis.call('HDEL', KEYS[1], ARGV[1]) return 1 end
local cap = tonumber(ARGV[3])
if cap > 0 and redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 and redis.call('HLEN', KEYS[1]) >= cap then
  return 0
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
"#;

/// What one pipelined command answers for.
enum Sent {
    /// A publish, heard back by the listener.
    Publish(Message),
    /// The retained write before it.
    Retain(Arc<str>),
    Beat,
    Retained(String, Completion<Vec<Message>>),
}

/// The writer's channel and threads.
pub(crate) struct Link {
    tx: Mutex<Option<Sender<Op>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
}

/// A Redis URL without its password, for messages.
pub(crate) fn display_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://{}", &url[..s], &url[at + 1..]),
        _ => url.to_owned(),
    }
}

/// Doubling waits from 50 ms to 2 s.
struct Backoff(Duration);

impl Backoff {
    fn new() -> Backoff {
        Backoff(Duration::from_millis(50))
    }

    fn step(&mut self) -> Duration {
        let now = self.0;
        self.0 = (self.0 * 2).min(Duration::from_secs(2));
        now
    }
}

fn connect(
    client: &Client,
    connect: Duration,
    read: Duration,
    write: Duration,
) -> redis::RedisResult<Connection> {
    let c = client.get_connection_with_timeout(connect)?;
    c.set_read_timeout(Some(read))?;
    c.set_write_timeout(Some(write))?;
    Ok(c)
}

impl Link {
    /// Connects the writer (if Redis is there) and starts both threads.
    pub(crate) fn start(
        inner: Arc<Inner>,
        client: Client,
        connect_to: Duration,
        command: Duration,
    ) -> Link {
        let first = connect(&client, connect_to, command, command)
            .map_err(|e| {
                tracing::warn!(url = %inner.url, error = %e,
                    "redistopic: redis is unreachable; publishes fail with Unavailable until it is up");
            })
            .ok();
        inner.up.store(first.is_some(), Ordering::Release);
        let (tx, rx) = channel();
        let w = (inner.clone(), client.clone());
        let writer = std::thread::Builder::new()
            .name("redistopic-writer".into())
            .spawn(move || write_loop(&w.0, &w.1, connect_to, command, first, rx))
            .ok();
        let listener_inner = inner.clone();
        let _ = std::thread::Builder::new()
            .name("redistopic-listener".into())
            .spawn(move || listen_loop(&listener_inner, &client, connect_to, command));
        // The listener is up before the first publish can be missed by it.
        let deadline = Instant::now() + connect_to;
        while inner.up.load(Ordering::Acquire)
            && !inner.listening.load(Ordering::Acquire)
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(2));
        }
        Link {
            tx: Mutex::new(Some(tx)),
            writer: Mutex::new(writer),
        }
    }

    /// Queues `op`, or gives it back when the writer is gone.
    pub(crate) fn send(&self, op: Op) -> Result<(), Op> {
        match &*self.tx.lock() {
            Some(tx) => tx.send(op).map_err(|e| e.0),
            None => Err(op),
        }
    }

    /// Sends what is queued, a last beat (which ends the listener), and
    /// waits for the writer.
    pub(crate) fn stop(&self) {
        let _ = self.send(Op::Beat);
        self.tx.lock().take();
        if let Some(t) = self.writer.lock().take() {
            let _ = t.join();
        }
    }
}

fn write_loop(
    inner: &Inner,
    client: &Client,
    connect_to: Duration,
    command: Duration,
    mut conn: Option<Connection>,
    rx: Receiver<Op>,
) {
    let mut backoff = Backoff::new();
    let mut retry_at = Instant::now();
    let mut last_beat = Instant::now();
    let mut why = String::from("not connected");
    loop {
        let first = match rx.recv_timeout(BEAT.saturating_sub(last_beat.elapsed())) {
            Ok(op) => op,
            Err(RecvTimeoutError::Timeout) => Op::Beat,
            Err(RecvTimeoutError::Disconnected) => return,
        };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        if last_beat.elapsed() >= BEAT && !batch.iter().any(|o| matches!(o, Op::Beat)) {
            batch.push(Op::Beat);
        }
        if batch.iter().any(|o| matches!(o, Op::Beat)) {
            last_beat = Instant::now();
        }
        if conn.is_none() && Instant::now() >= retry_at {
            match connect(client, connect_to, command, command) {
                Ok(c) => {
                    tracing::info!(url = %inner.url, "redistopic: connected to redis");
                    conn = Some(c);
                    backoff = Backoff::new();
                    inner.up.store(true, Ordering::Release);
                }
                Err(e) => {
                    why = e.to_string();
                    retry_at = Instant::now() + backoff.step();
                }
            }
        }
        let Some(c) = conn.as_mut() else {
            fail_all(inner, batch, &why);
            continue;
        };
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        // The listener completes a publish when it hears it back; register
        // each before it can.
        let mut sent = Vec::with_capacity(batch.len());
        for op in batch {
            match op {
                Op::Publish(p) => {
                    let (m, done) = *p;
                    let payload = wire::encode(inner.node, &m);
                    if retains(&m) {
                        let keep: &[u8] = if m.body.is_empty() { b"" } else { &payload };
                        pipe.cmd("EVAL")
                            .arg(RETAIN)
                            .arg(1)
                            .arg(inner.retained_key())
                            .arg(&*m.destination)
                            .arg(keep)
                            .arg(inner.max_retained);
                        sent.push(Sent::Retain(m.destination.clone()));
                    }
                    pipe.cmd("PUBLISH")
                        .arg(inner.channel(&m.destination))
                        .arg(payload);
                    inner.pending.lock().insert(m.id, done);
                    sent.push(Sent::Publish(m));
                }
                Op::Beat => {
                    pipe.cmd("PUBLISH").arg(inner.beat_channel()).arg("");
                    sent.push(Sent::Beat);
                }
                Op::Retained(r) => {
                    let (filter, done) = *r;
                    if filter.contains(['+', '#']) {
                        pipe.cmd("HGETALL").arg(inner.retained_key());
                    } else {
                        pipe.cmd("HGET").arg(inner.retained_key()).arg(&filter);
                    }
                    sent.push(Sent::Retained(filter, done));
                }
            }
        }
        match pipe.query::<Vec<Value>>(c) {
            Ok(replies) => {
                for (s, reply) in sent.into_iter().zip(replies) {
                    match s {
                        Sent::Publish(m) => {
                            // Not published, or not even to this node's
                            // listener: it will not come back.
                            let why = match &reply {
                                Value::ServerError(e) => e.to_string(),
                                Value::Int(0) => "no listener heard it".into(),
                                _ => continue,
                            };
                            if let Some(done) = inner.pending.lock().remove(&m.id) {
                                done.fail(unavailable(&m.destination, &inner.url, &why));
                            }
                        }
                        Sent::Retain(dest) => match reply {
                            Value::Int(0) => {
                                let n = inner.retained_refused.fetch_add(1, Ordering::Relaxed) + 1;
                                if n.is_power_of_two() {
                                    tracing::warn!(destination = %dest, refused = n, cap = inner.max_retained,
                                        "redistopic: retained publish delivered, not retained: max_retained reached");
                                }
                            }
                            Value::ServerError(e) => {
                                tracing::warn!(destination = %dest, error = %e,
                                "redistopic: retained message not kept")
                            }
                            _ => {}
                        },
                        Sent::Beat => {}
                        Sent::Retained(filter, done) => done.complete(found(&filter, &reply)),
                    }
                }
            }
            Err(e) => {
                why = e.to_string();
                if inner.up.swap(false, Ordering::AcqRel) {
                    tracing::warn!(url = %inner.url, error = %why,
                        "redistopic: redis is unreachable; publishes fail with Unavailable until it is back");
                }
                conn = None;
                retry_at = Instant::now() + backoff.step();
                for s in sent {
                    match s {
                        Sent::Publish(m) => {
                            if let Some(done) = inner.pending.lock().remove(&m.id) {
                                done.fail(unavailable(&m.destination, &inner.url, &why));
                            }
                        }
                        Sent::Retained(filter, done) => {
                            done.fail(unavailable(&filter, &inner.url, &why))
                        }
                        Sent::Retain(_) | Sent::Beat => {}
                    }
                }
            }
        }
    }
}

fn fail_all(inner: &Inner, batch: Vec<Op>, why: &str) {
    for op in batch {
        match op {
            Op::Publish(p) => {
                let (m, done) = *p;
                done.fail(unavailable(&m.destination, &inner.url, why));
            }
            Op::Retained(r) => {
                let (filter, done) = *r;
                done.fail(unavailable(&filter, &inner.url, why));
            }
            Op::Beat => {}
        }
    }
}

/// Whether `m` asks to be retained.
fn retains(m: &Message) -> bool {
    m.headers
        .iter()
        .any(|(k, v)| &**k == bindery_classes::driver::RETAIN && &**v == "1")
}

/// The retained messages `filter` matches, from an HGET or HGETALL reply
/// (an entry that does not decode is logged and skipped).
fn found(filter: &str, reply: &Value) -> Result<Vec<Message>, bindery::Failure> {
    if let Value::ServerError(e) = reply {
        return Err(bindery::Failure::new(
            bindery::FailureKind::Unavailable,
            format!("{filter}: retained messages not read: {e}"),
        ));
    }
    let pairs: Vec<(&str, &[u8])> = match reply {
        Value::BulkString(b) => vec![(filter, b.as_slice())],
        Value::Array(items) => items
            .chunks(2)
            .filter_map(|kv| match kv {
                [Value::BulkString(k), Value::BulkString(v)] => {
                    Some((std::str::from_utf8(k).ok()?, v.as_slice()))
                }
                _ => None,
            })
            .filter(|(path, _)| bindery_classes::topic::matches(filter, path))
            .collect(),
        Value::Map(items) => items
            .iter()
            .filter_map(|kv| match kv {
                (Value::BulkString(k), Value::BulkString(v)) => {
                    Some((std::str::from_utf8(k).ok()?, v.as_slice()))
                }
                _ => None,
            })
            .filter(|(path, _)| bindery_classes::topic::matches(filter, path))
            .collect(),
        _ => Vec::new(),
    };
    Ok(pairs
        .into_iter()
        .filter_map(|(path, payload)| match wire::decode(path, payload) {
            Ok((_, m)) => Some(m),
            Err(e) => {
                tracing::warn!(destination = %path, error = %e, "redistopic: skipped a retained entry");
                None
            }
        })
        .collect())
}

fn listen_loop(inner: &Inner, client: &Client, connect_to: Duration, command: Duration) {
    let mut backoff = Backoff::new();
    let pattern = inner.channel("*");
    let strip = inner.channel("");
    while !inner.stopped.load(Ordering::Acquire) {
        // Heard nothing, not even our own beat, for this long: the
        // connection is dead.
        let quiet = BEAT * 3 + command;
        let mut conn = match connect(client, connect_to, quiet, command) {
            Ok(c) => c,
            Err(_) => {
                std::thread::sleep(backoff.step());
                continue;
            }
        };
        let mut ps = conn.as_pubsub();
        if ps
            .psubscribe(&pattern)
            .and_then(|()| ps.subscribe(inner.beat_channel()))
            .is_err()
        {
            std::thread::sleep(backoff.step());
            continue;
        }
        backoff = Backoff::new();
        // What was sent before this subscription cannot come back on it.
        inner.fail_pending("the listening connection was re-made");
        inner.listening.store(true, Ordering::Release);
        loop {
            let msg = match ps.get_message() {
                Ok(m) => m,
                Err(e) => {
                    if !inner.stopped.load(Ordering::Acquire) {
                        tracing::warn!(url = %inner.url, error = %e,
                            "redistopic: the listener lost redis; reconnecting");
                    }
                    break;
                }
            };
            if inner.stopped.load(Ordering::Acquire) {
                break;
            }
            let Some(dest) = msg.get_channel_name().strip_prefix(strip.as_str()) else {
                continue;
            };
            match wire::decode(dest, msg.get_payload_bytes()) {
                Ok((node, m)) => {
                    let outcome = inner.topics.publish(m.clone());
                    if node == inner.node {
                        if let Some(done) = inner.pending.lock().remove(&m.id) {
                            done.complete(outcome);
                        }
                    }
                }
                Err(e) => tracing::warn!(channel = %msg.get_channel_name(), error = %e,
                    "redistopic: skipped a payload that is not a message"),
            }
        }
        inner.listening.store(false, Ordering::Release);
        inner.fail_pending("the listening connection dropped");
    }
    inner.fail_pending("the driver instance is stopping");
}
