//! Driving a protocol core without sockets: [`Pipe`], and [`Routes`],
//! a dispatcher over real drivers without a server around them.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use bindery::{Completion, Failure, FailureKind, Note};

use super::{Ended, Flow, Io, Protocol, Wake};

use crate::dispatcher::Dispatcher;
use crate::driver::{DriverHandle, Receipt};
use crate::message::Message;

/// A dispatcher that sends each message to the driver of the longest
/// matching path prefix, without parsing: what a core under test hands
/// its publishes to.
pub struct Routes(pub Vec<(String, DriverHandle)>);

impl Dispatcher for Routes {
    fn publish(&self, message: Message, done: Completion<Receipt>) {
        match self.driver(&message.destination) {
            Ok(d) => d.publish(message, done),
            Err(f) => done.fail(f),
        }
    }

    fn driver(&self, path: &str) -> Result<DriverHandle, Failure> {
        self.0
            .iter()
            .filter(|(prefix, _)| path.starts_with(prefix.as_str()))
            .max_by_key(|(prefix, _)| prefix.len())
            .map(|(_, d)| d.clone())
            .ok_or_else(|| Failure::new(FailureKind::NotFound, format!("no driver for {path}")))
    }
}

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

    /// The peer sends `input` in reads of the sizes in `cuts` (the rest in
    /// one last read): what a property test varies to show the answers do
    /// not depend on how bytes arrive.
    pub fn send_in_pieces(&mut self, input: &[u8], cuts: &[usize]) -> &mut Self {
        let mut at = 0;
        for &c in cuts {
            let end = (at + c).min(input.len());
            self.send(&input[at..end]);
            at = end;
        }
        self.send(&input[at..])
    }

    fn offer(&mut self) {
        let input = std::mem::take(&mut self.input);
        let (mut io, core) = self.io();
        let used = core.receive(&mut io, &input).min(input.len());
        self.input = input[used..].to_vec();
        self.pump();
    }

    /// Delivers every note queued (completions, deliveries), waiting up
    /// to `within` for the first, until none arrives for 20 ms.
    pub fn settle(&mut self, within: Duration) -> &mut Self {
        let mut wait = within;
        while let Ok(note) = self.notes.recv_timeout(wait) {
            let (mut io, core) = self.io();
            core.note(&mut io, note);
            self.pump();
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
            self.pump();
        }
        self
    }

    /// The peer closes its side.
    pub fn peer_closes(&mut self) -> &mut Self {
        let (mut io, core) = self.io();
        core.peer_closed(&mut io);
        self.pump();
        self
    }

    /// The server stops.
    pub fn shutdown(&mut self) -> &mut Self {
        let (mut io, core) = self.io();
        core.shutdown(&mut io);
        self.pump();
        self
    }

    /// What the connection does after every event.
    fn pump(&mut self) {
        let (mut io, core) = self.io();
        core.pump(&mut io);
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
