//! Listening sockets for terminals: bind, accept, spread connections over
//! the reactors, and count them against a limit.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bindery::{Cx, Handler, Runtime};
use mio::Interest;
use mio::event::Event;
use mio::net::{TcpListener, TcpStream};

/// Writes `buf[*pos..]` to a non-blocking socket until it would block;
/// clears `buf` once all is written (and compacts a long written prefix).
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
    Ok(())
}

/// Connection counters a terminal keeps.
#[derive(Debug, Default)]
pub struct ConnectionStats {
    /// Connections open now.
    pub open: AtomicU64,
    /// Connections accepted since start.
    pub accepted: AtomicU64,
    /// Connections refused at the limit.
    pub refused: AtomicU64,
}

/// Guards one open connection in [`ConnectionStats::open`]; keep it in the
/// connection's handler so dropping the handler counts it closed.
#[derive(Debug)]
pub struct OpenConnection(Arc<ConnectionStats>);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Makes a terminal's connection handler for an accepted socket.
pub trait Accept: Send + Sync + 'static {
    /// Starts a connection on the calling reactor: register `stream` with
    /// `cx.token()` and return the handler, which keeps `open`.
    fn start(
        &self,
        cx: &mut Cx<'_>,
        stream: TcpStream,
        open: OpenConnection,
    ) -> io::Result<Box<dyn Handler>>;
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
    let mut listener = TcpListener::from_std(std_listener);
    let runtime = rt.clone();
    rt.next_reactor().spawn(move |cx| {
        cx.registry()
            .register(&mut listener, cx.token(), Interest::READABLE)?;
        Ok(Box::new(Listener {
            listener,
            runtime,
            max_connections,
            stats,
            accept,
        }) as Box<dyn Handler>)
    });
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

struct Listener {
    listener: TcpListener,
    runtime: Arc<Runtime>,
    max_connections: u64,
    stats: Arc<ConnectionStats>,
    accept: Arc<dyn Accept>,
}

impl Handler for Listener {
    fn ready(&mut self, cx: &mut Cx<'_>, _: &Event) {
        loop {
            match self.listener.accept() {
                Ok((stream, _peer)) => {
                    if self.stats.open.load(Ordering::Relaxed) >= self.max_connections {
                        self.stats.refused.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    self.stats.open.fetch_add(1, Ordering::Relaxed);
                    self.stats.accepted.fetch_add(1, Ordering::Relaxed);
                    let _ = stream.set_nodelay(true);
                    let open = OpenConnection(self.stats.clone());
                    let accept = self.accept.clone();
                    let target = self.runtime.next_reactor().clone();
                    if target.is_current() {
                        if let Err(e) = cx.insert(move |cx| accept.start(cx, stream, open)) {
                            tracing::warn!("connection not started: {e}");
                        }
                    } else {
                        target.spawn(move |cx| accept.start(cx, stream, open));
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
