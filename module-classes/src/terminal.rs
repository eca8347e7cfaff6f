//! The terminal class: speaks a wire protocol to clients.
//!
//! A terminal instance is bound to listen addresses (exact keys such as
//! `127.0.0.1:8080`). In a start hook it binds them, registers its listener
//! with a reactor, and looks up the dispatcher it hands publishes to. It
//! turns what clients send into [`Message`](crate::Message)s and writes back
//! what drivers deliver through a [`Consumer`](crate::Consumer).
//!
//! # Implementing
//!
//! - Write the protocol as a core ([`crate::connection::Protocol`]): bytes
//!   in, bytes out, notes in, deadlines out, no socket. The shared
//!   connection driver ([`crate::connection::Cores`] with
//!   [`crate::listener::listen_all`]) does the accepting, reading, writing,
//!   yielding, timers and closing, the same for every terminal; test the
//!   core with [`crate::connection::testing::Pipe`].
//! - Register counters in the server's metrics registry
//!   ([`crate::metrics::Scope::of`]) when the instance is made; `/metrics`
//!   renders them without asking the terminal.
//! - Bind in a start hook, so a port in use stops the server with an error
//!   naming the instance.
//! - A client that sends malformed bytes or stalls mid-request costs only
//!   its own connection: others are served.
//! - Reply to a publish only once the dispatcher's completion says so.
//! - [`Terminal::stop`]: stop accepting, let requests in flight finish,
//!   close every connection by the deadline; the ports are free when it
//!   returns (a restarted instance binds them again).
//!   [`ConnectionStats::stop`](crate::listener::ConnectionStats::stop) does
//!   all of it for a terminal built on [`crate::listener`].
//!
//! # Threading
//!
//! Connections are reactor handlers; see [`bindery::Handler`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;

use crate::connection::{Cores, MakeCore, WebSocket};
use crate::listener::{self, ConnectionStats};
use crate::metrics::Scope;

use bindery::{BoxError, InstanceContext, Registrar, Runtime};

/// A protocol endpoint.
pub trait Terminal: Send + Sync + 'static {
    /// The protocol's name (`http`, `mqtt`).
    fn protocol(&self) -> &'static str;

    /// The addresses actually listened on (a key with port 0 gets a real
    /// port once started).
    fn local_addrs(&self) -> Vec<SocketAddr>;

    /// The addresses its WebSocket listeners listen on (see
    /// [`Serving::websocket`]), apart from its keys.
    fn websocket_addrs(&self) -> Vec<SocketAddr> {
        Vec::new()
    }

    /// Open connections. Called from any thread; must not block.
    fn connections(&self) -> u64 {
        0
    }

    /// How to check from outside that the terminal serves: used by the
    /// conformance suite and `bindery certify`. A terminal without one can
    /// be certified only on the cases that need no protocol.
    fn probe(&self) -> Option<Arc<dyn Probe>> {
        None
    }

    /// The instance stops (see the module docs): close by `deadline`.
    /// Called once, never on a reactor thread.
    fn stop(&self, deadline: Instant) {
        let _ = deadline;
    }
}

/// The protocol-specific part of a terminal's certification.
pub trait Probe: Send + Sync {
    /// One complete, valid exchange over a new connection to `addr` (a
    /// health check, a ping); `Err` says what went wrong.
    fn exchange(&self, addr: SocketAddr) -> Result<(), String>;

    /// Bytes that are not this protocol: the terminal must refuse them
    /// without disturbing other connections.
    fn malformed(&self) -> Vec<u8>;

    /// The start of a valid request or frame, stopped short: the terminal
    /// must keep serving others while this one waits.
    fn partial(&self) -> Vec<u8>;
}

/// A terminal instance as the binding table holds it.
pub type TerminalHandle = Arc<dyn Terminal>;

/// Registers a terminal module's factory.
pub fn register<T, F>(reg: &mut Registrar<'_, crate::class::Terminal>, make: F)
where
    T: Terminal,
    F: Fn(&InstanceContext) -> Result<Arc<T>, BoxError> + Send + Sync + 'static,
{
    reg.register(move |cx| {
        let terminal = make(cx)?;
        let stopping = terminal.clone();
        cx.on_stop(move |deadline| stopping.stop(deadline));
        Ok(terminal as TerminalHandle)
    });
}

/// What a terminal module says about an instance for [`serve`]: the rest
/// of a terminal is its protocol core.
pub struct Serving<M> {
    /// The protocol's name (`http`, `mqtt`).
    pub protocol: &'static str,
    /// Open connections at most; more are refused at accept, counted.
    pub max_connections: u64,
    /// Open connections one client address may have (0: no limit); more
    /// are refused at accept, counted.
    pub max_connections_per_address: u64,
    /// How certification talks to it.
    pub probe: Option<Arc<dyn Probe>>,
    /// A Unix socket to listen on as well (mode 0600).
    pub unix_socket: Option<PathBuf>,
    /// TLS on every connection (see [`crate::connection::tls`]); none:
    /// plaintext.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Listeners speaking WebSocket (over TLS too, when `tls` is set) to
    /// the same cores, counted with the others (see
    /// [`crate::connection::ws`]); none: no such listener.
    pub websocket: Option<WebSocket>,
    /// Runs when the instance starts: look up what the cores need (the
    /// dispatcher) and return their factory.
    pub start: StartCores<M>,
}

/// What [`Serving::start`] holds: runs once when the instance starts.
pub type StartCores<M> = Box<dyn FnOnce(&Arc<Runtime>) -> Result<M, BoxError> + Send>;

/// Registers a terminal module whose connections are protocol cores on
/// the shared connection driver ([`crate::connection`]): the whole glue of
/// a terminal. `make` reads the instance's configuration and says how to
/// serve it; the instance listens on its keys (and Unix socket) when it
/// starts, counts its connections in the metrics registry, stops by its
/// deadline, and answers [`Terminal`]'s questions.
pub fn serve<M, F>(reg: &mut Registrar<'_, crate::class::Terminal>, make: F)
where
    M: MakeCore,
    F: Fn(&InstanceContext) -> Result<Serving<M>, BoxError> + Send + Sync + 'static,
{
    register(reg, move |cx| {
        let serving = make(cx)?;
        let connections = Arc::new(ConnectionStats::new(&Scope::of(cx.runtime(), cx.name())));
        connections.limit_per_address(serving.max_connections_per_address);
        let served = Arc::new(Served {
            protocol: serving.protocol,
            connections,
            addrs: Mutex::new(Vec::new()),
            ws_addrs: Mutex::new(Vec::new()),
            probe: serving.probe,
        });
        let (me, keys, span) = (served.clone(), cx.keys().to_vec(), cx.span().clone());
        let instance = cx.name().to_owned();
        let (max, unix, start) = (serving.max_connections, serving.unix_socket, serving.start);
        let (tls, websocket) = (serving.tls, serving.websocket);
        cx.on_start(move |rt| {
            span.in_scope(|| {
                let make = Arc::new(start(rt)?);
                let accept = Arc::new(Cores::shared(make.clone(), tls.clone(), None));
                let stats = &me.connections;
                let bound = listener::listen_all(
                    rt,
                    &instance,
                    me.protocol,
                    &keys,
                    max,
                    stats,
                    accept.clone(),
                )?;
                me.addrs.lock().extend(bound);
                if let Some(ws) = websocket {
                    let keys = ws.bind.clone();
                    let over_ws = Arc::new(Cores::shared(make, tls, Some(Arc::new(ws))));
                    let protocol = format!("{} over websocket", me.protocol);
                    let bound =
                        listener::listen_all(rt, &instance, &protocol, &keys, max, stats, over_ws)?;
                    me.ws_addrs.lock().extend(bound);
                }
                if let Some(path) = unix {
                    listener::listen_unix(rt, &path, max, stats.clone(), accept).map_err(|e| {
                        format!("cannot listen on the Unix socket {}: {e}", path.display())
                    })?;
                    tracing::info!(instance, socket = %path.display(), "{} listening", me.protocol);
                }
                Ok(())
            })
        });
        Ok(served)
    });
}

/// A terminal made by [`serve`].
struct Served {
    protocol: &'static str,
    connections: Arc<ConnectionStats>,
    addrs: Mutex<Vec<SocketAddr>>,
    ws_addrs: Mutex<Vec<SocketAddr>>,
    probe: Option<Arc<dyn Probe>>,
}

impl Terminal for Served {
    fn protocol(&self) -> &'static str {
        self.protocol
    }

    fn local_addrs(&self) -> Vec<SocketAddr> {
        self.addrs.lock().clone()
    }

    fn websocket_addrs(&self) -> Vec<SocketAddr> {
        self.ws_addrs.lock().clone()
    }

    fn connections(&self) -> u64 {
        self.connections.open()
    }

    fn probe(&self) -> Option<Arc<dyn Probe>> {
        self.probe.clone()
    }

    fn stop(&self, deadline: Instant) {
        self.connections.stop(deadline);
    }
}

/// For a [`Probe::exchange`]: connects to `addr`, sends `request`, and
/// reads the answer — `want` bytes, or to the end when `want` is `None` —
/// within ten seconds.
pub fn talk(addr: SocketAddr, request: &[u8], want: Option<usize>) -> Result<Vec<u8>, String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    s.write_all(request).map_err(|e| format!("write: {e}"))?;
    let mut out = Vec::new();
    match want {
        Some(n) => {
            out.resize(n, 0);
            s.read_exact(&mut out).map_err(|e| format!("read: {e}"))?;
        }
        None => {
            s.read_to_end(&mut out).map_err(|e| format!("read: {e}"))?;
        }
    }
    Ok(out)
}

/// Every terminal, with the key it is bound to.
pub fn all(rt: &Runtime) -> Vec<(String, TerminalHandle)> {
    let Some(table) = rt.table(crate::class::TERMINAL) else {
        return Vec::new();
    };
    table
        .index()
        .bindings()
        .iter()
        .filter_map(|b| Some((b.key().to_owned(), b.handle::<TerminalHandle>()?.clone())))
        .collect()
}
