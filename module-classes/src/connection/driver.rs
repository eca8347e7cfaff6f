//! The connection driver: one reactor handler per connection, the same
//! for every protocol core.

use std::io;
use std::time::Instant;

use bindery::reactor::TimerId;
use bindery::{Cx, Handler, Note};
use mio::Interest;
use mio::event::Event;

use super::{Ended, Flow, Intake, Io, Protocol, Reading, Stream, Wake};
use crate::listener::OpenConnection;

/// The note tag the driver keeps for itself (continue reading after a
/// yield); cores never see it.
const CONTINUE: u64 = u64::MAX;
thread_local! {
    /// Where every connection of a reactor thread reads into: one buffer
    /// per thread, not per connection.
    static SCRATCH: std::cell::RefCell<Box<[u8]>> =
        std::cell::RefCell::new(vec![0; 64 * 1024].into_boxed_slice());
}

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
    /// The core was told what the transport verified about the peer
    /// ([`Protocol::certified`]).
    introduced: bool,
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
            introduced: false,
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

    /// Reads once, at most `max` bytes, into the reactor thread's scratch
    /// buffer, and offers what came straight to the core when nothing
    /// waits before it (no copy, no zeroing per read); what the core leaves
    /// is kept in `rbuf`. `Ok(true)` if something happened (bytes or end of
    /// input).
    fn read_once(&mut self, max: usize, now: Instant) -> io::Result<bool> {
        SCRATCH.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            let want = max.clamp(1, scratch.len());
            match self.stream.read(&mut scratch[..want]) {
                Ok(0) => {
                    self.eof = true;
                    let (mut io, core) = self.io(now);
                    core.peer_closed(&mut io);
                    Ok(true)
                }
                Ok(n) => {
                    if !self.introduced {
                        self.introduce();
                    }
                    self.this_turn += n;
                    let got = &scratch[..n];
                    if self.rbuf.is_empty() && self.wbuf.len() - self.wpos < MAX_UNSENT {
                        let mut io = Io::new(&mut self.wbuf, self.wpos, &self.wake, now);
                        let used = self.core.receive(&mut io, got).min(n);
                        self.rbuf.extend_from_slice(&got[used..]);
                    } else {
                        self.rbuf.extend_from_slice(got);
                    }
                    Ok(true)
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.readable = false;
                    Ok(false)
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(true),
                Err(e) => Err(e),
            }
        })
    }

    /// Before the first input: the handshake is done, so tell the core the
    /// certificate the transport verified, if any.
    #[cold]
    fn introduce(&mut self) {
        self.introduced = true;
        if let Some(chain) = self.stream.peer_certificates() {
            if !chain.is_empty() {
                self.core.certified(chain);
            }
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
        self.this_turn = 0;
        if event.is_readable() || event.is_read_closed() || event.is_error() {
            self.readable = true;
        }
        self.drive(cx);
    }

    fn notify(&mut self, cx: &mut Cx<'_>, note: Note) {
        // A note brings no input: the turn goes on (a publisher paced by
        // its backlog is not read faster because acknowledgements come),
        // except after a yield, which starts a new one.
        if note.tag == CONTINUE {
            self.yielded = false;
            self.this_turn = 0;
        } else {
            let (mut io, core) = self.io(Instant::now());
            core.note(&mut io, note);
        }
        // Driven once the batch of notes is over: a thousand
        // acknowledgements leave in one write, not a thousand.
        cx.settle();
    }

    fn settle(&mut self, cx: &mut Cx<'_>) {
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
