//! The server's side of one host: the calls in flight, the subscriptions
//! it streams to, and what happens when it dies (starting it: `start.rs`).

use std::collections::HashMap;
use std::io::BufReader;
use std::process::Child;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bindery::{Completion, Failure, FailureKind, InstanceContext, Monitor};
use parking_lot::{Condvar, Mutex};

use super::frame::{self, Dec, Enc, Frame, Kind};
use super::spawn;
use super::stream::Stream;
use super::writer::Writer;
use crate::consumer::{Consumer, Delivery};
use crate::driver::Receipt;

/// How long a call that the contract makes synchronous (subscribe,
/// release, stats, validate) waits for its reply.
pub(crate) const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Queued bytes past which a publish is refused with `Full`.
const MAX_BACKLOG: usize = 64 << 20;

/// A call waiting for its reply.
enum Pending {
    Receipt(Completion<Receipt>),
    Unit(Completion<()>),
    Reply(mpsc::Sender<Frame>),
}

struct Calls {
    pending: HashMap<u64, Pending>,
    /// Why the host is gone, once it is.
    dead: Option<String>,
}

/// One host and the calls to it.
pub(crate) struct Conn {
    /// `driver instance "risky"`, for every reason given.
    pub(crate) what: String,
    /// `its host (pid 7)`, `its host at 10.0.0.7:7400`.
    who: String,
    pub(crate) writer: Writer,
    stream: Stream,
    next: AtomicU64,
    calls: Mutex<Calls>,
    pub(crate) subs: Mutex<HashMap<u64, Consumer>>,
    stopping: AtomicBool,
    /// The host, when the server started it.
    child: Mutex<Option<Child>>,
    exited: (Mutex<bool>, Condvar),
    monitor: Monitor,
    /// Why the watchdog cut the host off, if it did.
    hung: Mutex<Option<String>>,
}

impl Conn {
    /// A connection over `stream` to a host that has made the instance;
    /// its reader thread starts reading.
    pub(super) fn open(
        cx: &InstanceContext,
        what: String,
        who: String,
        stream: Stream,
        child: Option<Child>,
    ) -> std::io::Result<Arc<Conn>> {
        stream.set_read_timeout(None)?;
        let writer = Writer::start(
            stream.try_clone()?,
            format!("bindery-proxy-w-{}", cx.name()),
        )?;
        let conn = Arc::new(Conn {
            what,
            who,
            writer,
            stream: stream.try_clone()?,
            next: AtomicU64::new(1),
            calls: Mutex::new(Calls {
                pending: HashMap::new(),
                dead: None,
            }),
            subs: Mutex::new(HashMap::new()),
            stopping: AtomicBool::new(false),
            child: Mutex::new(child),
            exited: (Mutex::new(false), Condvar::new()),
            monitor: cx.monitor(),
            hung: Mutex::new(None),
        });
        let reading = conn.clone();
        std::thread::Builder::new()
            .name(format!("bindery-proxy-r-{}", cx.name()))
            .spawn(move || reading.read_loop(stream))?;
        let patience = cx.isolation().host().hang_timeout_ms.unwrap_or(10_000);
        if patience > 0 {
            let watching = Arc::downgrade(&conn);
            std::thread::Builder::new()
                .name(format!("bindery-proxy-ping-{}", cx.name()))
                .spawn(move || watch(watching, Duration::from_millis(patience)))?;
        }
        Ok(conn)
    }

    /// A fresh request or subscription id.
    pub(crate) fn id(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed)
    }

    fn unavailable(&self, why: &str) -> Failure {
        Failure::new(FailureKind::Unavailable, format!("{}: {why}", self.what))
            .retry_after(Duration::from_secs(1))
    }

    /// Sends a call whose reply completes `done` (a receipt or a unit).
    fn send_async(&self, pending: Pending, kind: Kind, payload: impl FnOnce(&mut Enc<'_>)) {
        let id = self.id();
        let alone;
        {
            let mut c = self.calls.lock();
            if let Some(why) = &c.dead {
                let f = self.unavailable(why);
                match pending {
                    Pending::Receipt(d) => d.fail(f),
                    Pending::Unit(d) => d.fail(f),
                    Pending::Reply(_) => {}
                }
                return;
            }
            alone = c.pending.is_empty();
            c.pending.insert(id, pending);
        }
        // Alone in flight, it goes at once; behind others, it joins the
        // writer thread's next batch. A closed writer means the host is
        // going: the reader fails the call.
        self.writer.send_with(alone, kind, id, payload);
    }

    /// A publish (refused with `Full` while too much waits to be written).
    pub(crate) fn publish(&self, m: &crate::Message, done: Completion<Receipt>) {
        if self.writer.backlog() > MAX_BACKLOG {
            return done.fail(
                Failure::new(
                    FailureKind::Full,
                    format!(
                        "{}: its host is behind by more than {MAX_BACKLOG} bytes",
                        self.what
                    ),
                )
                .retry_after(Duration::from_millis(100)),
            );
        }
        self.send_async(Pending::Receipt(done), Kind::Publish, |e| {
            e.message(m);
        })
    }

    /// A call completing `done` with `Done` or `Failed`.
    pub(crate) fn call_unit(
        &self,
        done: Completion<()>,
        kind: Kind,
        payload: impl FnOnce(&mut Enc<'_>),
    ) {
        self.send_async(Pending::Unit(done), kind, payload)
    }

    /// A call whose reply the caller waits for (up to `patience`).
    pub(crate) fn call(
        &self,
        kind: Kind,
        patience: Duration,
        payload: impl FnOnce(&mut Enc<'_>),
    ) -> Result<Frame, Failure> {
        let (tx, rx) = mpsc::channel();
        let id = self.id();
        {
            let mut c = self.calls.lock();
            if let Some(why) = &c.dead {
                return Err(self.unavailable(why));
            }
            c.pending.insert(id, Pending::Reply(tx));
        }
        self.writer.send(kind, id, payload);
        match rx.recv_timeout(patience) {
            Ok(f) => Ok(f),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                self.calls.lock().pending.remove(&id);
                Err(self.unavailable(&format!(
                    "its host did not answer within {} ms",
                    patience.as_millis()
                )))
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let why = self
                    .calls
                    .lock()
                    .dead
                    .clone()
                    .unwrap_or_else(|| "its host is gone".into());
                Err(self.unavailable(&why))
            }
        }
    }

    fn read_loop(self: Arc<Self>, stream: Stream) {
        let mut r = BufReader::with_capacity(64 << 10, stream);
        let why = loop {
            match frame::read(&mut r) {
                Ok(Some(f)) => {
                    if let Err(e) = self.handle(f) {
                        break format!("protocol error from its host: {e}");
                    }
                }
                Ok(None) => break String::new(),
                Err(e) => break format!("reading from its host: {e}"),
            }
        };
        self.died(why);
    }

    fn handle(&self, f: Frame) -> std::io::Result<()> {
        match f.kind {
            Kind::Deliver => {
                let m = Dec::new(&f).message()?;
                let consumer = self.subs.lock().get(&f.id).cloned();
                if let Some(c) = consumer {
                    c.deliver(Delivery::Message(m));
                }
            }
            Kind::Closed => {
                let why = Dec::new(&f).string()?;
                if let Some(c) = self.subs.lock().remove(&f.id) {
                    c.deliver(Delivery::Closed(why));
                }
            }
            Kind::Receipt | Kind::Done | Kind::Failed | Kind::StatsReply | Kind::Invalid => {
                let Some(p) = self.calls.lock().pending.remove(&f.id) else {
                    return Ok(()); // a call that timed out
                };
                match p {
                    Pending::Reply(tx) => {
                        let _ = tx.send(f);
                    }
                    Pending::Receipt(done) => match f.kind {
                        Kind::Receipt => done.succeed(Dec::new(&f).receipt()?),
                        _ => done.fail(Dec::new(&f).failure()?),
                    },
                    Pending::Unit(done) => match f.kind {
                        Kind::Done => done.succeed(()),
                        _ => done.fail(Dec::new(&f).failure()?),
                    },
                }
            }
            other => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("unexpected frame {other:?} from a host"),
                ));
            }
        }
        Ok(())
    }

    /// The host is gone: reap it, answer every call in flight, end every
    /// subscription, and tell the runtime (unless it was asked to stop).
    fn died(&self, why: String) {
        self.stream.shutdown();
        self.writer.close(Duration::ZERO);
        let status = self.reap(Duration::from_secs(2));
        let why = match self.hung.lock().take() {
            Some(hung) => hung,
            None => why,
        };
        let why = match why.is_empty() {
            true => format!("{} {}", self.who, status.0),
            false => format!("{why}; {} {}", self.who, status.0),
        };
        let stopping = self.stopping.load(Ordering::Acquire);
        let pending = {
            let mut c = self.calls.lock();
            c.dead = Some(if stopping {
                "stopped".into()
            } else {
                why.clone()
            });
            std::mem::take(&mut c.pending)
        };
        let f = self.unavailable(if stopping { "stopped" } else { &why });
        for (_, p) in pending {
            match p {
                Pending::Receipt(d) => d.fail(f.clone()),
                Pending::Unit(d) => d.fail(f.clone()),
                Pending::Reply(_) => {} // its caller sees the channel close
            }
        }
        let subs = std::mem::take(&mut *self.subs.lock());
        for (_, c) in subs {
            c.deliver(Delivery::Closed(f.reason.to_string()));
        }
        *self.exited.0.lock() = true;
        self.exited.1.notify_all();
        if !stopping {
            tracing::error!("{}: {why}", self.what);
            self.monitor.set_pid(None);
            self.monitor
                .failed(format!("{}: {why}", self.what), status.1);
        }
    }

    /// Waits for the host to exit (killing it after `patience`); how it
    /// ended, and whether cleanly.
    fn reap(&self, patience: Duration) -> (String, bool) {
        let Some(mut child) = self.child.lock().take() else {
            return ("closed the connection".into(), false);
        };
        let until = Instant::now() + patience;
        loop {
            match child.try_wait() {
                Ok(Some(status)) => return spawn::describe(status),
                Ok(None) if Instant::now() < until => std::thread::sleep(Duration::from_millis(5)),
                _ => {
                    let _ = child.kill();
                    return child
                        .wait()
                        .map_or(("ended".into(), false), spawn::describe);
                }
            }
        }
    }

    /// Stops the host: asks it to stop its instance (flushing what it
    /// confirmed), closes the socket, and waits for it to exit by
    /// `deadline`, then kills it.
    pub(crate) fn stop(&self, deadline: Instant) {
        self.stopping.store(true, Ordering::Release);
        let patience = deadline.saturating_duration_since(Instant::now());
        if self.calls.lock().dead.is_none() {
            let _ = self.call(Kind::Stop, patience, |_| {});
        }
        self.close();
        let mut exited = self.exited.0.lock();
        while !*exited {
            if self
                .exited
                .1
                .wait_until(
                    &mut exited,
                    deadline.max(Instant::now() + Duration::from_millis(100)),
                )
                .timed_out()
            {
                if let Some(c) = self.child.lock().as_mut() {
                    let _ = c.kill();
                }
                self.exited.1.wait_for(&mut exited, Duration::from_secs(3));
                break;
            }
        }
        self.monitor.set_pid(None);
    }

    /// Ends the connection without reporting a failure (the last handle
    /// is gone): the host sees the end of its socket and exits.
    pub(crate) fn close(&self) {
        self.stopping.store(true, Ordering::Release);
        self.writer.close(Duration::from_secs(1));
        self.stream.shutdown();
    }
}

/// Pings the host every second (from a thread of its own); one that does
/// not answer within `patience` is hung: killed, or cut off when the
/// server did not start it, so the reader sees its end and it is handled
/// as a crash. Ends with the connection.
fn watch(conn: std::sync::Weak<Conn>, patience: Duration) {
    let every = Duration::from_secs(1).min(patience);
    loop {
        let Some(c) = conn.upgrade() else { return };
        {
            let mut exited = c.exited.0.lock();
            if !*exited {
                c.exited.1.wait_for(&mut exited, every);
            }
            if *exited || c.stopping.load(Ordering::Acquire) {
                return;
            }
        }
        let answered = c.call(Kind::Ping, patience, |_| {});
        if answered.is_err() && c.calls.lock().dead.is_none() && !c.stopping.load(Ordering::Acquire)
        {
            *c.hung.lock() = Some(format!(
                "its host answered no ping within {} ms (hang_timeout_ms): cut off",
                patience.as_millis()
            ));
            tracing::error!("{}: {} is hung; cutting it off", c.what, c.who);
            if let Some(child) = c.child.lock().as_mut() {
                let _ = child.kill();
            }
            c.stream.shutdown();
            return;
        }
    }
}

/// Closes the connection when the proxy holding it goes.
pub(crate) struct Guard(pub(crate) Arc<Conn>);

impl Drop for Guard {
    fn drop(&mut self) {
        self.0.close();
    }
}
