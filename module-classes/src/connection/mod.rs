//! The connection driver every terminal shares, and the contract of the
//! protocol core it drives.
//!
//! A terminal is two parts. Its **protocol core** ([`Protocol`]) knows no
//! socket and no reactor: bytes come in ([`Protocol::receive`]), notes come
//! in (completions and deliveries, [`Protocol::note`]), and what it has to
//! say goes into an output buffer ([`Io::out`]); time is explicit — the core
//! names its next [`deadline`](Protocol::deadline) and reads the time from
//! [`Io::now`]. The **connection driver** ([`Connection`]) is the rest, the
//! same for every protocol: it registers the socket, reads while the core
//! takes input ([`Intake`]), yields to other connections after a budget,
//! writes with backpressure, arms timers for the core's deadlines, and
//! closes when the core says so ([`Flow`]) or the socket fails — telling
//! the core once ([`Protocol::closed`]).
//!
//! The split is rustls's (`read_tls` / `process_new_packets` / `write_tls`)
//! and quinn-proto's: a core can be driven by a test without sockets
//! ([`testing::Pipe`]), fuzzed, and put behind another transport (TLS)
//! without a second copy of the socket code.
//!
//! A transport that proves who the peer is (TLS with a client CA) says so
//! through [`Stream::peer_certificates`]; the driver tells the core once,
//! before its first input, through [`Protocol::certified`]
//! ([`certificate::user_name`] reads a name from it). Nothing changes per
//! message.
//!
//! ```text
//!   socket ──read──▶ Connection ──receive(bytes)──▶ core ──out──▶ Connection ──write──▶ socket
//!   driver/dispatcher ──Wake (note)──▶ Connection ──note──▶ core
//!   timer ──▶ Connection ──expire──▶ core            core.flow() ──▶ close
//! ```

use std::any::Any;
use std::io::{self, Read, Write};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::Instant;

use bindery::{Address, Completion, Cx, Handler, Note, ReactorHandle};
use mio::net::{TcpStream, UnixStream};
/// A DER certificate, as rustls gives a peer's ([`Protocol::certified`]).
pub use rustls::pki_types::CertificateDer;

use crate::Consumer;
use crate::listener::{Accept, OpenConnection};

pub mod certificate;
mod driver;
pub mod testing;
pub mod tls;
pub mod ws;

pub use driver::Connection;
pub use tls::{TlsSettings, TlsStream};
pub use ws::{WebSocket, WebSocketSettings, WsStream};

/// How a core asks to be called back: each [`Note`] sent through a `Wake`
/// reaches [`Protocol::note`] on the connection's own thread. Cheap to
/// clone, safe to use from any thread (drivers deliver through it).
#[derive(Clone)]
pub struct Wake(Arc<dyn Fn(Note) + Send + Sync>);

impl std::fmt::Debug for Wake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Wake")
    }
}

impl Wake {
    /// A wake that calls `f` with each note.
    pub fn new(f: impl Fn(Note) + Send + Sync + 'static) -> Wake {
        Wake(Arc::new(f))
    }

    /// A wake that sends notes to the handler at `to` on `reactor`.
    pub fn reactor(reactor: ReactorHandle, to: Address) -> Wake {
        Wake::new(move |note| reactor.notify(to, note))
    }

    /// A wake whose notes queue on a channel (tests, [`testing::Pipe`]).
    pub fn channel() -> (Wake, mpsc::Receiver<Note>) {
        let (tx, rx) = mpsc::channel();
        let tx = parking_lot::Mutex::new(tx);
        (
            Wake::new(move |note| {
                let _ = tx.lock().send(note);
            }),
            rx,
        )
    }

    /// Sends `note`.
    pub fn note(&self, note: Note) {
        (self.0)(note)
    }

    /// A completion whose outcome comes back as a note with `tag`, carrying
    /// `Result<T, Failure>`.
    pub fn completion<T: Any + Send>(&self, tag: u64) -> Completion<T> {
        let wake = self.clone();
        Completion::new(move |outcome| wake.note(Note::new(tag, outcome)))
    }

    /// A consumer whose deliveries come back as notes with `tag`, each
    /// carrying a [`crate::Delivery`].
    pub fn consumer(&self, tag: u64) -> Consumer {
        let wake = self.clone();
        Consumer::new(move |d| wake.note(Note::new(tag, d)))
    }
}

/// What a core gets while it handles one event: the output buffer, the
/// time, and its [`Wake`].
pub struct Io<'a> {
    out: &'a mut Vec<u8>,
    sent: usize,
    wake: &'a Wake,
    now: Instant,
}

impl<'a> Io<'a> {
    /// An `Io` over `out`, of which the first `sent` bytes are written
    /// already (drivers and test harnesses make these).
    pub fn new(out: &'a mut Vec<u8>, sent: usize, wake: &'a Wake, now: Instant) -> Io<'a> {
        Io {
            out,
            sent,
            wake,
            now,
        }
    }

    /// The output: append what the peer is to receive.
    pub fn out(&mut self) -> &mut Vec<u8> {
        self.out
    }

    /// Output bytes not written to the peer yet (what a core checks before
    /// producing more: backpressure).
    pub fn unsent(&self) -> usize {
        self.out.len() - self.sent
    }

    /// How to reach this connection from elsewhere.
    pub fn wake(&self) -> &Wake {
        self.wake
    }

    /// The time of this event (use it, not the clock, so tests can move
    /// time).
    pub fn now(&self) -> Instant {
        self.now
    }
}

/// What the connection knows about reading when it asks the core for its
/// [`Intake`].
#[derive(Clone, Copy, Debug)]
pub struct Reading {
    /// Bytes received and not yet used by the core.
    pub pending: usize,
    /// Output bytes not yet written to the peer.
    pub unsent: usize,
    /// Bytes read in this turn: since the last readiness event, the end
    /// of a pause, or a yield (notes do not start a turn).
    pub this_turn: usize,
    /// Now.
    pub now: Instant,
}

/// Whether the connection should read from the peer now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Intake {
    /// Read, at most this many bytes in one call.
    Read(usize),
    /// Read nothing before this time (a publisher slowed while its
    /// subscribers catch up).
    PauseUntil(Instant),
    /// Read nothing until something changes (a note, output drained): the
    /// core has enough in hand.
    Wait,
}

/// Whether the connection goes on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flow {
    /// Open.
    Open,
    /// Close once the output is written (or cannot be).
    CloseWhenFlushed,
    /// Close now; output not yet written is tried once, without waiting.
    Close,
}

/// Why a connection ended, as the driver tells [`Protocol::closed`].
#[derive(Debug)]
pub enum Ended {
    /// The core asked ([`Flow`]).
    ByCore,
    /// Reading or writing failed (reset, broken pipe).
    Failed(io::Error),
    /// The server closed it without waiting (a stop's deadline passed).
    Dropped,
}

impl std::fmt::Display for Ended {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ended::ByCore => f.write_str("closed by the protocol"),
            Ended::Failed(e) => write!(f, "socket failed: {e}"),
            Ended::Dropped => f.write_str("closed by the server"),
        }
    }
}

/// A protocol core: one connection's protocol state, without socket or
/// reactor.
///
/// # Duties
///
/// Every method is called on the connection's reactor thread, one at a
/// time, and must return at once: never block, never wait for a driver.
/// Work that finishes later comes back as a note ([`Wake::completion`],
/// [`Wake::consumer`]). A core may call drivers and dispatchers (they
/// return at once) but must hold none of its own locks that a driver's
/// delivery callback takes while it does: drivers call consumers under
/// their own locks.
///
/// After each event (input, note, expiry, drain) the driver calls
/// [`pump`](Protocol::pump), writes the output, and asks
/// [`flow`](Protocol::flow); then it arms a timer for
/// [`deadline`](Protocol::deadline).
pub trait Protocol: Send + 'static {
    /// Bytes read in one turn before the connection yields to the others
    /// on its reactor (and reads on after them).
    const TURN: usize = 64 * 1024;

    /// Bytes from the peer: handle every whole unit at the start of
    /// `input` and return how many bytes were used. What is left is offered
    /// again, with more, next time. Called only while
    /// [`intake`](Protocol::intake) says `Read` or input is pending.
    fn receive(&mut self, io: &mut Io<'_>, input: &[u8]) -> usize;

    /// A note sent through this connection's [`Wake`].
    fn note(&mut self, io: &mut Io<'_>, note: Note);

    /// Whether to read now. The default reads 64 KiB at a time.
    fn intake(&self, reading: &Reading) -> Intake {
        let _ = reading;
        Intake::Read(64 * 1024)
    }

    /// After every event: produce output that waits on room in the output
    /// (check [`Io::unsent`]).
    fn pump(&mut self, io: &mut Io<'_>) {
        let _ = io;
    }

    /// Everything written so far has reached the socket.
    fn drained(&mut self, io: &mut Io<'_>) {
        let _ = io;
    }

    /// The earliest time [`expire`](Protocol::expire) should be called.
    fn deadline(&self) -> Option<Instant> {
        None
    }

    /// The deadline passed (called at or after it; check `io.now()`).
    fn expire(&mut self, io: &mut Io<'_>) {
        let _ = io;
    }

    /// The peer closed its side: nothing more will be received.
    fn peer_closed(&mut self, io: &mut Io<'_>);

    /// The server is stopping: finish what is in flight, then let
    /// [`flow`](Protocol::flow) say close.
    fn shutdown(&mut self, io: &mut Io<'_>);

    /// Whether the connection goes on.
    fn flow(&self) -> Flow;

    /// The transport verified a client certificate (mutual TLS): `chain`
    /// is the peer's, leaf first. Called at most once, before the first
    /// [`receive`](Protocol::receive), and not at all on a connection
    /// without one. The default ignores it.
    fn certified(&mut self, chain: &[CertificateDer<'static>]) {
        let _ = chain;
    }

    /// The connection is gone (called once, last). Release what the
    /// connection held; nothing more can be sent.
    fn closed(&mut self, why: &Ended) {
        let _ = why;
    }
}

/// A socket a connection can run on.
pub trait Stream: Read + Write + mio::event::Source + Send + 'static {
    /// The peer, for log lines and consumer names.
    fn peer(&self) -> String;

    /// The client certificate chain the transport verified (leaf first),
    /// once its handshake is done; `None` for a transport without one (a
    /// plain socket, TLS without a client CA).
    fn peer_certificates(&self) -> Option<&[CertificateDer<'static>]> {
        None
    }
}

impl Stream for TcpStream {
    fn peer(&self) -> String {
        self.peer_addr()
            .map_or_else(|_| "?".to_owned(), |a| a.to_string())
    }
}

impl Stream for UnixStream {
    fn peer(&self) -> String {
        "unix socket".to_owned()
    }
}

/// Makes a protocol core for each accepted connection; a terminal's whole
/// glue to the listener ([`Cores`]).
pub trait MakeCore: Send + Sync + 'static {
    /// The core.
    type Core: Protocol;
    /// A core for a connection from `peer`, reachable through `wake`.
    fn core(&self, peer: String, wake: Wake) -> Self::Core;
}

/// Turns a [`MakeCore`] into what a listener accepts with: each accepted
/// socket becomes a [`Connection`] around a new core, with TLS and then
/// WebSocket between them when configured.
pub struct Cores<M> {
    make: Arc<M>,
    tls: Option<Arc<rustls::ServerConfig>>,
    ws: Option<Arc<WebSocket>>,
}

impl<M> Cores<M> {
    /// Cores over TLS with `config` (see [`TlsSettings::load`]), or plain
    /// sockets without one.
    pub fn new(make: M, tls: Option<Arc<rustls::ServerConfig>>) -> Cores<M> {
        Cores::shared(Arc::new(make), tls, None)
    }

    /// Cores from a factory shared with other listeners, with WebSocket
    /// over the socket (or over TLS) when `ws` is given.
    pub fn shared(
        make: Arc<M>,
        tls: Option<Arc<rustls::ServerConfig>>,
        ws: Option<Arc<WebSocket>>,
    ) -> Cores<M> {
        Cores { make, tls, ws }
    }
}

impl<M: MakeCore, S: Stream> Accept<S> for Cores<M> {
    fn start(
        &self,
        cx: &mut Cx<'_>,
        stream: S,
        open: OpenConnection,
    ) -> io::Result<Box<dyn Handler>> {
        let wake = Wake::reactor(cx.handle(), cx.address());
        let peer = stream.peer();
        let core = match &self.ws {
            None => self.make.core(peer, wake.clone()),
            Some(_) => self.make.core(format!("{peer} (websocket)"), wake.clone()),
        };
        match (&self.tls, &self.ws) {
            (None, None) => Connection::start(cx, stream, core, wake, open),
            (Some(config), None) => {
                let stream = TlsStream::new(stream, config.clone())?;
                Connection::start(cx, stream, core, wake, open)
            }
            (None, Some(ws)) => {
                Connection::start(cx, WsStream::new(stream, ws.clone()), core, wake, open)
            }
            (Some(config), Some(ws)) => {
                let stream = WsStream::new(TlsStream::new(stream, config.clone())?, ws.clone());
                Connection::start(cx, stream, core, wake, open)
            }
        }
    }
}
