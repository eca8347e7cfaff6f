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

use bindery::reactor::TimerId;
use bindery::{Address, Completion, Cx, Handler, Note, ReactorHandle};
use mio::Interest;
use mio::event::Event;
use mio::net::{TcpStream, UnixStream};

use crate::Consumer;
use crate::listener::{Accept, OpenConnection};

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
    /// Bytes read in this turn (since the connection last yielded).
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
/// socket becomes a [`Connection`] around a new core.
pub struct Cores<M>(pub M);

impl<M: MakeCore, S: Stream> Accept<S> for Cores<M> {
    fn start(
        &self,
        cx: &mut Cx<'_>,
        stream: S,
        open: OpenConnection,
    ) -> io::Result<Box<dyn Handler>> {
        let wake = Wake::reactor(cx.handle(), cx.address());
        let core = self.0.core(stream.peer(), wake.clone());
        Connection::start(cx, stream, core, wake, open)
    }
}

/// The note tag the driver keeps for itself (continue reading after a
/// yield); cores never see it.
const CONTINUE: u64 = u64::MAX;
/// Output past which the driver stops offering input to the core.
const MAX_UNSENT: usize = 4 << 20;

/// One connection: a reactor handler driving a [`Protocol`] core over a
/// [`Stream`].
pub struct Connection<S: Stream, P: Protocol> {
    stream: S,
    core: P,
    wake: Wake,
    rbuf: Vec<u8>,
    wbuf: Vec<u8>,
    wpos: usize,
    /// Readable since the last `WouldBlock`.
    readable: bool,
    eof: bool,
    this_turn: usize,
    yielded: bool,
    paused_until: Option<Instant>,
    /// The earliest timer armed and not yet fired.
    armed: Option<Instant>,
    ended: bool,
    _open: OpenConnection,
}

impl<S: Stream, P: Protocol> Connection<S, P> {
    /// Registers `stream` on the calling reactor and returns the handler.
    pub fn start(
        cx: &mut Cx<'_>,
        mut stream: S,
        core: P,
        wake: Wake,
        open: OpenConnection,
    ) -> io::Result<Box<dyn Handler>> {
        cx.registry().register(
            &mut stream,
            cx.token(),
            Interest::READABLE | Interest::WRITABLE,
        )?;
        let mut conn = Connection {
            stream,
            core,
            wake,
            rbuf: Vec::new(),
            wbuf: Vec::new(),
            wpos: 0,
            readable: true,
            eof: false,
            this_turn: 0,
            yielded: false,
            paused_until: None,
            armed: None,
            ended: false,
            _open: open,
        };
        conn.arm(cx, Instant::now());
        Ok(Box::new(conn))
    }

    fn io(&mut self, now: Instant) -> (Io<'_>, &mut P) {
        (
            Io::new(&mut self.wbuf, self.wpos, &self.wake, now),
            &mut self.core,
        )
    }

    /// Reads once into `rbuf`: `Ok(true)` if something happened (bytes or
    /// end of input).
    fn read_once(&mut self, max: usize, now: Instant) -> io::Result<bool> {
        let len = self.rbuf.len();
        self.rbuf.resize(len + max.clamp(1, 64 * 1024), 0);
        let got = self.stream.read(&mut self.rbuf[len..]);
        let n = *got.as_ref().unwrap_or(&0);
        self.rbuf.truncate(len + n);
        match got {
            Ok(0) => {
                self.eof = true;
                let (mut io, core) = self.io(now);
                core.peer_closed(&mut io);
                Ok(true)
            }
            Ok(n) => {
                self.this_turn += n;
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                self.readable = false;
                Ok(false)
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(true),
            Err(e) => Err(e),
        }
    }

    /// Offers input, reads, pumps and writes until nothing moves; closes
    /// when the core or the socket says so.
    fn drive(&mut self, cx: &mut Cx<'_>) {
        let now = Instant::now();
        loop {
            let mut moved = false;
            if !self.rbuf.is_empty() && self.wbuf.len() - self.wpos < MAX_UNSENT {
                let mut io = Io::new(&mut self.wbuf, self.wpos, &self.wake, now);
                let used = self.core.receive(&mut io, &self.rbuf).min(self.rbuf.len());
                if used > 0 {
                    self.rbuf.drain(..used);
                    moved = true;
                }
            }
            if self.core.flow() == Flow::Open
                && self.readable
                && !self.eof
                && self.paused_until.is_none()
            {
                if self.this_turn >= P::TURN {
                    if !self.yielded {
                        // Let the others on this reactor run (deliveries
                        // to subscribers), then read on.
                        self.yielded = true;
                        self.wake.note(Note::new(CONTINUE, ()));
                    }
                } else {
                    let reading = Reading {
                        pending: self.rbuf.len(),
                        unsent: self.wbuf.len() - self.wpos,
                        this_turn: self.this_turn,
                        now,
                    };
                    match self.core.intake(&reading) {
                        Intake::Read(max) => match self.read_once(max, now) {
                            Ok(m) => moved |= m,
                            Err(e) => return self.end(cx, Ended::Failed(e)),
                        },
                        Intake::PauseUntil(t) => {
                            self.paused_until = Some(t);
                            self.arm_at(cx, t, now);
                        }
                        Intake::Wait => {}
                    }
                }
            }
            {
                let (mut io, core) = self.io(now);
                core.pump(&mut io);
            }
            if let Err(e) = self.flush() {
                return self.end(cx, Ended::Failed(e));
            }
            if self.wbuf.is_empty() {
                let before = self.wbuf.len();
                let (mut io, core) = self.io(now);
                core.drained(&mut io);
                moved |= self.wbuf.len() != before;
            }
            match self.core.flow() {
                Flow::Open => {}
                Flow::CloseWhenFlushed if !self.wbuf.is_empty() => {}
                _ => return self.end(cx, Ended::ByCore),
            }
            if !moved {
                break;
            }
        }
        self.arm(cx, now);
    }

    fn flush(&mut self) -> io::Result<()> {
        crate::listener::write_out(&mut self.stream, &mut self.wbuf, &mut self.wpos)
    }

    fn arm(&mut self, cx: &mut Cx<'_>, now: Instant) {
        if let Some(at) = self.core.deadline() {
            self.arm_at(cx, at, now);
        }
    }

    fn arm_at(&mut self, cx: &mut Cx<'_>, at: Instant, now: Instant) {
        if self.armed.is_none_or(|armed| at < armed) {
            self.armed = Some(at);
            let _: TimerId = cx.set_timer(at.saturating_duration_since(now));
        }
    }

    fn end(&mut self, cx: &mut Cx<'_>, why: Ended) {
        if !self.ended {
            self.ended = true;
            let _ = self.flush();
            self.core.closed(&why);
        }
        cx.close();
    }
}

impl<S: Stream, P: Protocol> Drop for Connection<S, P> {
    fn drop(&mut self) {
        if !self.ended {
            self.ended = true;
            self.core.closed(&Ended::Dropped);
        }
    }
}

impl<S: Stream, P: Protocol> Handler for Connection<S, P> {
    fn ready(&mut self, cx: &mut Cx<'_>, event: &Event) {
        if event.is_readable() || event.is_read_closed() || event.is_error() {
            self.readable = true;
        }
        self.drive(cx);
    }

    fn notify(&mut self, cx: &mut Cx<'_>, note: Note) {
        if note.tag == CONTINUE {
            self.yielded = false;
            self.this_turn = 0;
        } else {
            let (mut io, core) = self.io(Instant::now());
            core.note(&mut io, note);
        }
        self.drive(cx);
    }

    fn timeout(&mut self, cx: &mut Cx<'_>, _: TimerId) {
        let now = Instant::now();
        if self.armed.is_some_and(|a| a <= now) {
            self.armed = None;
        }
        if self.paused_until.is_some_and(|t| t <= now) {
            self.paused_until = None;
            self.this_turn = 0;
        }
        if self.core.deadline().is_some_and(|d| d <= now) {
            let (mut io, core) = self.io(now);
            core.expire(&mut io);
        }
        self.drive(cx);
    }

    fn shutdown(&mut self, cx: &mut Cx<'_>) {
        let (mut io, core) = self.io(Instant::now());
        core.shutdown(&mut io);
        self.drive(cx);
    }
}

pub mod testing {
    //! Driving a protocol core without sockets: [`Pipe`].

    use super::*;
    use std::time::Duration;

    /// A protocol core with its input, output, notes and clock in hand:
    /// what a unit test or a fuzz target drives instead of a socket.
    pub struct Pipe<P> {
        /// The core.
        pub core: P,
        wake: Wake,
        notes: mpsc::Receiver<Note>,
        input: Vec<u8>,
        out: Vec<u8>,
        now: Instant,
        closed: bool,
    }

    impl<P: Protocol> Pipe<P> {
        /// A pipe around the core `make` returns, given the pipe's wake.
        pub fn new(make: impl FnOnce(Wake) -> P) -> Pipe<P> {
            let (wake, notes) = Wake::channel();
            Pipe {
                core: make(wake.clone()),
                wake,
                notes,
                input: Vec::new(),
                out: Vec::new(),
                now: Instant::now(),
                closed: false,
            }
        }

        fn io(&mut self) -> (Io<'_>, &mut P) {
            (
                Io::new(&mut self.out, 0, &self.wake, self.now),
                &mut self.core,
            )
        }

        /// The peer sends `bytes`; the core takes what it will.
        pub fn send(&mut self, bytes: &[u8]) -> &mut Self {
            self.input.extend_from_slice(bytes);
            self.offer();
            self
        }

        fn offer(&mut self) {
            let input = std::mem::take(&mut self.input);
            let (mut io, core) = self.io();
            let used = core.receive(&mut io, &input).min(input.len());
            self.input = input[used..].to_vec();
            let (mut io, core) = self.io();
            core.pump(&mut io);
        }

        /// Delivers every note queued (completions, deliveries), waiting up
        /// to `within` for the first, until none arrives for 20 ms.
        pub fn settle(&mut self, within: Duration) -> &mut Self {
            let mut wait = within;
            while let Ok(note) = self.notes.recv_timeout(wait) {
                let (mut io, core) = self.io();
                core.note(&mut io, note);
                let (mut io, core) = self.io();
                core.pump(&mut io);
                self.offer();
                wait = Duration::from_millis(20);
            }
            self
        }

        /// Moves the clock on by `by` and expires the core if its deadline
        /// passed.
        pub fn advance(&mut self, by: Duration) -> &mut Self {
            self.now += by;
            if self.core.deadline().is_some_and(|d| d <= self.now) {
                let (mut io, core) = self.io();
                core.expire(&mut io);
            }
            self
        }

        /// The peer closes its side.
        pub fn peer_closes(&mut self) -> &mut Self {
            let (mut io, core) = self.io();
            core.peer_closed(&mut io);
            self
        }

        /// The server stops.
        pub fn shutdown(&mut self) -> &mut Self {
            let (mut io, core) = self.io();
            core.shutdown(&mut io);
            self
        }

        /// What the core wrote since the last call; all of it counts as
        /// sent (the core is told its output drained).
        pub fn output(&mut self) -> Vec<u8> {
            let (mut io, core) = self.io();
            core.drained(&mut io);
            std::mem::take(&mut self.out)
        }

        /// Input the core has not used yet.
        pub fn pending(&self) -> usize {
            self.input.len()
        }

        /// The core's flow; a closing core is told it closed (once).
        pub fn flow(&mut self) -> Flow {
            let flow = self.core.flow();
            if flow != Flow::Open && !self.closed {
                self.closed = true;
                self.core.closed(&Ended::ByCore);
            }
            flow
        }

        /// The time the pipe's clock shows.
        pub fn now(&self) -> Instant {
            self.now
        }
    }
}
