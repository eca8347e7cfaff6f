//! Listening sockets for terminals: bind, accept, spread connections over
//! the reactors, count them against a limit, and stop them all when the
//! terminal instance stops.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bindery::{Address, Cx, Handler, ReactorHandle, Runtime};
use mio::Interest;
use mio::event::Event;
use mio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use parking_lot::Mutex;

use crate::metrics::{Counter, Gauge, Scope};

/// Writes `buf[*pos..]` to a non-blocking socket until it would block;
/// clears `buf` once all is written (and compacts a long written prefix),
/// then flushes what a layer over the socket (TLS) still holds. Called
/// with an empty `buf` when the socket turns writable, so that layer's
/// rest goes out.
/// A connection's handler calls it whenever it has output or turns
/// writable.
pub fn write_out(w: &mut impl io::Write, buf: &mut Vec<u8>, pos: &mut usize) -> io::Result<()> {
    while *pos < buf.len() {
        match w.write(&buf[*pos..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => *pos += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    if *pos == buf.len() {
        buf.clear();
        *pos = 0;
    } else if *pos > 64 * 1024 {
        buf.drain(..*pos);
        *pos = 0;
    }
    // A layer that buffers (TLS) sends what it holds; a socket does nothing.
    match w.flush() {
        Err(e) if e.kind() != io::ErrorKind::WouldBlock => Err(e),
        _ => Ok(()),
    }
}

/// A terminal instance's connection meters, and its live listeners and
/// connections, so that it can be stopped ([`ConnectionStats::stop`]).
#[derive(Debug)]
pub struct ConnectionStats {
    /// Connections open now (`bindery_connections_open`).
    pub open: Gauge,
    /// Connections accepted since start
    /// (`bindery_connections_accepted_total`).
    pub accepted: Counter,
    /// Connections refused at the limit
    /// (`bindery_connections_refused_total`).
    pub refused: Counter,
    /// Connections refused because their address had
    /// `max_connections_per_address` open
    /// (`bindery_connections_refused_per_address_total`).
    pub refused_per_address: Counter,
    /// Open connections per client address, when they are limited.
    per_address: Mutex<HashMap<IpAddr, u64>>,
    /// Open connections one client address may have; 0: no limit.
    max_per_address: AtomicU64,
    /// Set once the instance stops: listeners accept nothing more.
    stopping: AtomicBool,
    /// Every live listener and connection handler.
    live: Mutex<HashMap<Address, ReactorHandle>>,
}

impl ConnectionStats {
    /// Meters registered in `scope` (the terminal instance's).
    pub fn new(scope: &Scope) -> ConnectionStats {
        ConnectionStats {
            open: scope.gauge("bindery_connections_open", "Open connections per terminal."),
            accepted: scope.counter(
                "bindery_connections_accepted_total",
                "Connections accepted per terminal.",
            ),
            refused: scope.counter(
                "bindery_connections_refused_total",
                "Connections refused at max_connections.",
            ),
            refused_per_address: scope.counter(
                "bindery_connections_refused_per_address_total",
                "Connections refused because their client address had max_connections_per_address open.",
            ),
            per_address: Mutex::new(HashMap::new()),
            max_per_address: AtomicU64::new(0),
            stopping: AtomicBool::new(false),
            live: Mutex::new(HashMap::new()),
        }
    }

    /// Open connections.
    pub fn open(&self) -> u64 {
        self.open.get()
    }

    /// Limits the open connections of one client address (TCP) to `n`;
    /// 0: no limit. More are closed at accept and counted.
    pub fn limit_per_address(&self, n: u64) {
        self.max_per_address.store(n, Ordering::Release);
    }

    /// Counts a connection from `ip`, unless it has its limit already.
    fn admit(&self, ip: IpAddr) -> bool {
        let max = self.max_per_address.load(Ordering::Acquire);
        if max == 0 {
            return true;
        }
        let mut open = self.per_address.lock();
        let n = open.entry(ip).or_insert(0);
        if *n >= max {
            return false;
        }
        *n += 1;
        true
    }

    fn release(&self, ip: IpAddr) {
        let mut open = self.per_address.lock();
        if let Some(n) = open.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                open.remove(&ip);
            }
        }
    }

    fn track(&self, cx: &Cx<'_>) {
        self.live.lock().insert(cx.address(), cx.handle());
    }

    fn untrack(&self, at: Address) {
        self.live.lock().remove(&at);
    }

    /// Listeners and connections alive.
    pub fn live(&self) -> usize {
        self.live.lock().len()
    }

    /// Stops the instance's network side: listeners close at once (their
    /// ports are free when this returns), every connection is asked to
    /// finish what is in flight and close ([`bindery::Handler::shutdown`]),
    /// and what is still open at `deadline` is closed. Blocks until done;
    /// never call it on a reactor thread.
    pub fn stop(&self, deadline: Instant) {
        self.stopping.store(true, Ordering::Release);
        let all: Vec<(Address, ReactorHandle)> = self
            .live
            .lock()
            .iter()
            .map(|(a, h)| (*a, h.clone()))
            .collect();
        for (at, reactor) in &all {
            reactor.shutdown_handler(*at);
        }
        let settle = |until: Instant| {
            while self.live() > 0 && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(5));
            }
        };
        settle(deadline);
        let left: Vec<(Address, ReactorHandle)> = self
            .live
            .lock()
            .iter()
            .map(|(a, h)| (*a, h.clone()))
            .collect();
        if !left.is_empty() {
            tracing::info!(
                connections = left.len(),
                "closing what did not finish in time"
            );
            for (at, reactor) in left {
                reactor.close_handler(at);
            }
            // The reactors drop them on their next turn.
            settle(Instant::now() + Duration::from_secs(2));
        }
    }
}

/// Guards one open connection in [`ConnectionStats::open`]; keep it in the
/// connection's handler so dropping the handler counts it closed.
#[derive(Debug)]
pub struct OpenConnection {
    stats: Arc<ConnectionStats>,
    at: Option<Address>,
    /// The client's address, when counted per address.
    ip: Option<IpAddr>,
}

impl OpenConnection {
    /// Counts a connection open; tracked once it has its handler's address.
    fn new(stats: Arc<ConnectionStats>, ip: Option<IpAddr>) -> OpenConnection {
        stats.open.inc();
        OpenConnection {
            stats,
            at: None,
            ip,
        }
    }

    fn track(&mut self, cx: &Cx<'_>) {
        self.stats.track(cx);
        self.at = Some(cx.address());
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.stats.open.dec();
        if let Some(ip) = self.ip {
            self.stats.release(ip);
        }
        if let Some(at) = self.at {
            self.stats.untrack(at);
        }
    }
}

/// Makes a terminal's connection handler for an accepted socket (TCP by
/// default; `Accept<UnixStream>` for [`listen_unix`]).
pub trait Accept<S = TcpStream>: Send + Sync + 'static {
    /// Starts a connection on the calling reactor: register `stream` with
    /// `cx.token()` and return the handler, which keeps `open`.
    fn start(
        &self,
        cx: &mut Cx<'_>,
        stream: S,
        open: OpenConnection,
    ) -> io::Result<Box<dyn Handler>>;
}

/// A listening socket of some kind.
trait Acceptor: mio::event::Source + Send + 'static {
    /// What it accepts.
    type Stream: Send + 'static;
    /// A connection, and its client's address if it has one (TCP).
    fn accept_one(&self) -> io::Result<(Self::Stream, Option<IpAddr>)>;
}

impl Acceptor for TcpListener {
    type Stream = TcpStream;
    fn accept_one(&self) -> io::Result<(TcpStream, Option<IpAddr>)> {
        let (stream, peer) = self.accept()?;
        let _ = stream.set_nodelay(true);
        Ok((stream, Some(peer.ip())))
    }
}

impl Acceptor for UnixListener {
    type Stream = UnixStream;
    fn accept_one(&self) -> io::Result<(UnixStream, Option<IpAddr>)> {
        self.accept().map(|(s, _)| (s, None))
    }
}

/// Registers `listener` on the next reactor, tracked in `stats`; returns
/// once it is tracked, so a stop right after start finds it.
fn spawn_listener<L: Acceptor>(
    rt: &Arc<Runtime>,
    mut listener: L,
    max_connections: u64,
    stats: Arc<ConnectionStats>,
    accept: Arc<dyn Accept<L::Stream>>,
    remove_on_close: Option<PathBuf>,
) {
    let runtime = rt.clone();
    let (placed, here) = std::sync::mpsc::channel();
    rt.next_reactor().spawn(move |cx| {
        cx.registry()
            .register(&mut listener, cx.token(), Interest::READABLE)?;
        stats.track(cx);
        let _ = placed.send(());
        Ok(Box::new(Listener {
            listener,
            runtime,
            max_connections,
            stats,
            accept,
            at: cx.address(),
            remove_on_close,
        }) as Box<dyn Handler>)
    });
    let _ = here.recv_timeout(Duration::from_secs(5));
}

/// Listens on a Unix socket at `path` (a stale socket file there is
/// replaced; the file is made private to the user, mode 0600, and removed
/// when the listener closes), spreading connections over the reactors.
pub fn listen_unix(
    rt: &Arc<Runtime>,
    path: &Path,
    max_connections: u64,
    stats: Arc<ConnectionStats>,
    accept: Arc<dyn Accept<UnixStream>>,
) -> io::Result<()> {
    use std::os::unix::fs::{FileTypeExt as _, PermissionsExt as _};
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} exists and is not a socket", path.display()),
            ));
        }
        std::fs::remove_file(path)?;
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    spawn_listener(
        rt,
        listener,
        max_connections,
        stats,
        accept,
        Some(path.to_owned()),
    );
    Ok(())
}

/// Binds `addr` now (so a port in use is an error at start) and accepts on
/// a reactor, spreading connections over all of them. Returns the address
/// bound.
pub fn listen(
    rt: &Arc<Runtime>,
    addr: &str,
    max_connections: u64,
    stats: Arc<ConnectionStats>,
    accept: Arc<dyn Accept>,
) -> io::Result<SocketAddr> {
    let std_listener = std::net::TcpListener::bind(addr)?;
    std_listener.set_nonblocking(true)?;
    let local = std_listener.local_addr()?;
    let listener = TcpListener::from_std(std_listener);
    spawn_listener(rt, listener, max_connections, stats, accept, None);
    Ok(local)
}

/// Listens on every key of a terminal instance (see [`listen`]); returns
/// the addresses bound, or an error naming the key that failed.
pub fn listen_all(
    rt: &Arc<Runtime>,
    instance: &str,
    protocol: &str,
    keys: &[String],
    max_connections: u64,
    stats: &Arc<ConnectionStats>,
    accept: Arc<dyn Accept>,
) -> Result<Vec<SocketAddr>, bindery::BoxError> {
    let mut bound = Vec::with_capacity(keys.len());
    for key in keys {
        let addr = listen(rt, key, max_connections, stats.clone(), accept.clone())
            .map_err(|e| format!("cannot listen on {key}: {e}"))?;
        tracing::info!(instance, %addr, "{protocol} listening");
        bound.push(addr);
    }
    Ok(bound)
}

struct Listener<L: Acceptor> {
    listener: L,
    runtime: Arc<Runtime>,
    max_connections: u64,
    stats: Arc<ConnectionStats>,
    accept: Arc<dyn Accept<L::Stream>>,
    at: Address,
    /// A Unix socket's file, removed with the listener.
    remove_on_close: Option<PathBuf>,
}

impl<L: Acceptor> Drop for Listener<L> {
    fn drop(&mut self) {
        // The file first: once untracked, a restart may bind the path anew.
        if let Some(path) = &self.remove_on_close {
            let _ = std::fs::remove_file(path);
        }
        self.stats.untrack(self.at);
    }
}

impl<L: Acceptor> Handler for Listener<L> {
    fn ready(&mut self, cx: &mut Cx<'_>, _: &Event) {
        loop {
            match self.listener.accept_one() {
                Ok((stream, ip)) => {
                    if self.stats.stopping.load(Ordering::Acquire) {
                        continue;
                    }
                    if self.stats.open.get() >= self.max_connections {
                        self.stats.refused.inc();
                        continue;
                    }
                    let ip = ip.filter(|_| self.stats.max_per_address.load(Ordering::Acquire) > 0);
                    if let Some(ip) = ip {
                        if !self.stats.admit(ip) {
                            self.stats.refused_per_address.inc();
                            tracing::debug!(%ip, "connection refused: max_connections_per_address");
                            continue;
                        }
                    }
                    self.stats.accepted.inc();
                    let mut open = OpenConnection::new(self.stats.clone(), ip);
                    let accept = self.accept.clone();
                    let start = move |cx: &mut Cx<'_>| {
                        open.track(cx);
                        accept.start(cx, stream, open)
                    };
                    let target = self.runtime.next_reactor().clone();
                    if target.is_current() {
                        if let Err(e) = cx.insert(start) {
                            tracing::warn!("connection not started: {e}");
                        }
                    } else {
                        target.spawn(start);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // Out of descriptors and the like: try again on the
                    // next event rather than spin.
                    tracing::warn!("accept failed: {e}");
                    return;
                }
            }
        }
    }
}
