//! The proxies: a [`Driver`] and a [`Parser`] that forward every call to
//! the instance in its host.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bindery::{BoxError, Completion, Failure, FailureKind, InstanceContext};

use super::conn::{CALL_TIMEOUT, Conn, Guard};
use super::frame::{Dec, Kind};
use super::start;
use crate::consumer::{Consumer, Subscription, SubscriptionControl};
use crate::driver::{DestinationStats, Driver, DriverInfo, Receipt, SubscribeOptions};
use crate::message::{Message, MessageId};
use crate::parser::{ParseError, Parser};

/// How long stopping a host may take when its instance stops.
const STOP_GRACE: Duration = Duration::from_secs(5);

fn protocol(conn: &Conn, e: std::io::Error) -> Failure {
    Failure::new(
        FailureKind::Internal,
        format!("{}: a bad reply from its host: {e}", conn.what),
    )
}

/// A `Done` reply, or the `Failed` one as a failure.
fn unit(conn: &Conn, f: Result<super::frame::Frame, Failure>) -> Result<(), Failure> {
    let f = f?;
    match f.kind {
        Kind::Done => Ok(()),
        _ => Err(Dec::new(&f).failure().map_err(|e| protocol(conn, e))?),
    }
}

/// A driver instance in a host.
pub struct DriverProxy {
    guard: Guard,
    info: DriverInfo,
}

impl DriverProxy {
    /// Starts a host for `cx`'s instance and makes it there.
    pub fn start(cx: &InstanceContext) -> Result<DriverProxy, BoxError> {
        let (conn, created) = start::start(cx, "driver")?;
        let mut d = Dec::new(&created);
        let _ok = d.u8()?;
        let queue = d.u8()? != 0;
        let durable = d.u8()? != 0;
        let stopping = conn.clone();
        cx.on_stop(move |deadline| stopping.stop(deadline));
        Ok(DriverProxy {
            guard: Guard(conn),
            info: DriverInfo { queue, durable },
        })
    }

    fn conn(&self) -> &Arc<Conn> {
        &self.guard.0
    }
}

struct ProxySubscription {
    conn: Arc<Conn>,
    id: u64,
}

impl SubscriptionControl for ProxySubscription {
    fn credit(&self, n: u32) {
        self.conn.writer.send(Kind::Credit, self.id, |e| {
            e.u32(n);
        });
    }

    fn cancel(&self) {
        self.conn.subs.lock().remove(&self.id);
        self.conn.writer.send(Kind::Cancel, self.id, |_| {});
    }
}

impl Driver for DriverProxy {
    fn info(&self) -> DriverInfo {
        self.info
    }

    fn publish(&self, message: Message, done: Completion<Receipt>) {
        self.conn().publish(&message, done)
    }

    fn subscribe(
        &self,
        destination: &str,
        consumer: Consumer,
        options: SubscribeOptions,
    ) -> Result<Subscription, Failure> {
        let conn = self.conn();
        let sub = conn.id();
        // Known before the host can deliver to it.
        conn.subs.lock().insert(sub, consumer);
        let lease = options.lease.as_millis() as u64;
        let reply = conn.call(Kind::Subscribe, CALL_TIMEOUT, |e| {
            e.u64(sub).str(destination).u32(options.credit).u64(lease);
        });
        if let Err(f) = unit(conn, reply) {
            conn.subs.lock().remove(&sub);
            return Err(f);
        }
        Ok(Subscription::new(Arc::new(ProxySubscription {
            conn: conn.clone(),
            id: sub,
        })))
    }

    fn ack(&self, destination: &str, id: MessageId, done: Completion<()>) {
        self.conn().call_unit(done, Kind::Ack, |e| {
            e.str(destination).u64(id.0);
        })
    }

    fn release(&self, destination: &str, id: MessageId) -> Result<(), Failure> {
        let conn = self.conn();
        unit(
            conn,
            conn.call(Kind::Release, CALL_TIMEOUT, |e| {
                e.str(destination).u64(id.0);
            }),
        )
    }
    fn retry(&self, destination: &str, id: MessageId) -> Result<(), Failure> {
        let conn = self.conn();
        unit(
            conn,
            conn.call(Kind::Retry, CALL_TIMEOUT, |e| {
                e.str(destination).u64(id.0);
            }),
        )
    }

    fn stats(&self) -> Vec<DestinationStats> {
        let conn = self.conn();
        match conn.call(Kind::Stats, CALL_TIMEOUT, |_| {}) {
            Ok(f) if f.kind == Kind::StatsReply => Dec::new(&f).stats().unwrap_or_default(),
            _ => Vec::new(),
        }
    }

    fn stop(&self) {
        self.conn().stop(Instant::now() + STOP_GRACE)
    }
}

/// A parser instance in a host. Validation is synchronous in the parser
/// contract, so each call waits for its round trip.
pub struct ParserProxy {
    guard: Guard,
    types: &'static [&'static str],
}

impl ParserProxy {
    /// Starts a host for `cx`'s instance and makes it there.
    pub fn start(cx: &InstanceContext) -> Result<ParserProxy, BoxError> {
        let (conn, created) = start::start(cx, "parser")?;
        let mut d = Dec::new(&created);
        let _ok = d.u8()?;
        let n = d.u32()? as usize;
        let mut types = Vec::with_capacity(n.min(64));
        for _ in 0..n {
            types.push(intern(&d.string()?));
        }
        let stopping = conn.clone();
        cx.on_stop(move |deadline| stopping.stop(deadline));
        Ok(ParserProxy {
            guard: Guard(conn),
            types: Box::leak(types.into_boxed_slice()),
        })
    }
}

/// One `'static` copy of each MIME type name a host reports.
fn intern(s: &str) -> &'static str {
    static ALL: parking_lot::Mutex<Vec<&'static str>> = parking_lot::Mutex::new(Vec::new());
    let mut all = ALL.lock();
    if let Some(found) = all.iter().find(|t| **t == s) {
        return found;
    }
    let leaked: &'static str = Box::leak(s.to_owned().into_boxed_str());
    all.push(leaked);
    leaked
}

impl Parser for ParserProxy {
    fn validate(&self, content_type: &str, body: &[u8]) -> Result<(), ParseError> {
        let conn = &self.guard.0;
        let reply = conn.call(Kind::Validate, CALL_TIMEOUT, |e| {
            e.str(content_type).bytes(body);
        });
        match reply {
            Ok(f) if f.kind == Kind::Done => Ok(()),
            Ok(f) if f.kind == Kind::Invalid => Err(Dec::new(&f)
                .parse_error()
                .unwrap_or_else(|e| ParseError::unavailable(protocol(conn, e).to_string()))),
            Ok(f) => Err(ParseError::unavailable(match Dec::new(&f).failure() {
                Ok(fail) => fail.to_string(),
                Err(e) => protocol(conn, e).to_string(),
            })),
            // The host is gone or did not answer: nothing was judged.
            Err(f) => Err(ParseError::unavailable(f.to_string())),
        }
    }

    fn default_types(&self) -> &'static [&'static str] {
        self.types
    }
}
