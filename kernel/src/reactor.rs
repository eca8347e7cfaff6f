//! The event loop: reactor threads built on `mio`.
//!
//! A reactor owns a [`mio::Poll`] and the [`Handler`]s registered with it
//! (a listener, a connection). Each handler lives on one reactor for its
//! whole life and is called from that reactor's thread only, so handlers
//! need not be `Send` and hold no locks. Other threads reach a reactor
//! through its [`ReactorHandle`]: [`ReactorHandle::execute`] queues a task
//! and wakes the reactor through its [`mio::Waker`];
//! [`ReactorHandle::notify`] delivers a [`Note`] to one handler, which is how
//! completions and deliveries from drivers come home.
//!
//! Handlers are addressed by [`Address`] (reactor, slot, generation): a note
//! for a handler that has closed, even if its slot was reused, is dropped.
//!
//! Longer than most files here: the event loop and the handler API it
//! drives, with their tests.

use std::any::Any;
use std::cell::Cell;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fmt;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use mio::event::Event;
use mio::{Events, Poll, Token, Waker};
use parking_lot::Mutex;
use slab::Slab;

use crate::completion::{Completion, Note};

const WAKE: Token = Token(usize::MAX);
static NEXT_REACTOR: AtomicU32 = AtomicU32::new(1);

thread_local! {
    static CURRENT: Cell<u32> = const { Cell::new(0) };
}

/// A task run on a reactor's thread.
pub type Task = Box<dyn FnOnce(&mut Reactor) + Send>;

/// Where a handler lives: its reactor, its slot and the slot's generation.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct Address {
    reactor: u32,
    slot: u32,
    generation: u32,
}

impl Address {
    /// The `mio` token the handler registers its sources with.
    pub fn token(self) -> Token {
        Token(self.slot as usize)
    }
}

/// An identifier for one timer of a handler.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
pub struct TimerId(u64);

/// Something a reactor drives: a listener, a connection.
///
/// # Implementing
///
/// - `ready` is called for readiness events of the sources the handler
///   registered with [`Cx::token`]. mio is edge-triggered: read and write
///   until `WouldBlock`. Spurious events happen; tolerate them.
/// - `notify` receives [`Note`]s: completions and deliveries sent to the
///   handler's [`Address`].
/// - `timeout` is called for timers set with [`Cx::set_timer`]. A timer
///   cannot be cancelled; ignore ids you no longer care about.
/// - `shutdown` is called once when the server stops: finish what is in
///   flight and [`Cx::close`] (the default closes at once).
/// - `settle` is called once after a batch of notes (and tasks) for a
///   handler that asked with [`Cx::settle`] during them: a connection
///   takes many completions one note at a time and writes once.
///
/// # Threading
///
/// All methods are called on the handler's reactor thread (handlers are
/// `Send` only so a reactor can be built on one thread and run on another).
/// Never block in
/// them: queue work and take a [`Completion`].
pub trait Handler: Send + 'static {
    /// Readiness of a registered source.
    fn ready(&mut self, cx: &mut Cx<'_>, event: &Event);

    /// A note sent to this handler's address.
    fn notify(&mut self, cx: &mut Cx<'_>, note: Note) {
        let _ = (cx, note);
    }

    /// A timer set by this handler expired.
    fn timeout(&mut self, cx: &mut Cx<'_>, timer: TimerId) {
        let _ = (cx, timer);
    }

    /// The server is stopping: drain, then close.
    fn shutdown(&mut self, cx: &mut Cx<'_>) {
        cx.close();
    }

    /// The batch of notes during which this handler called
    /// [`Cx::settle`] is over: do the work deferred (write once).
    fn settle(&mut self, cx: &mut Cx<'_>) {
        let _ = cx;
    }
}

/// What another thread asks of a reactor: a note (the common case, kept
/// unboxed: every completion is one) or any other task.
enum Queued {
    Note(Address, Note),
    Task(Task),
}

struct Shared {
    id: u32,
    waker: Waker,
    registry: mio::Registry,
    queue: Mutex<Vec<Queued>>,
    stopping: AtomicBool,
}

/// A cheap, cloneable, thread-safe reference to a reactor.
#[derive(Clone)]
pub struct ReactorHandle(Arc<Shared>);

impl fmt::Debug for ReactorHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ReactorHandle({})", self.0.id)
    }
}

impl ReactorHandle {
    /// Queues `task` to run on the reactor's thread.
    pub fn execute(&self, task: impl FnOnce(&mut Reactor) + Send + 'static) {
        self.queue(Queued::Task(Box::new(task)));
    }

    /// Queues `item` and wakes the reactor if it is the first of a batch.
    fn queue(&self, item: Queued) {
        let was_empty = {
            let mut q = self.0.queue.lock();
            let was_empty = q.is_empty();
            q.push(item);
            was_empty
        };
        // On its own thread the reactor drains its queue before it polls
        // again; elsewhere, the first task of a batch wakes it.
        if was_empty && !self.is_current() {
            let _ = self.0.waker.wake();
        }
    }

    /// Delivers `note` to the handler at `to` (dropped if it has closed).
    pub fn notify(&self, to: Address, note: Note) {
        self.queue(Queued::Note(to, note));
    }

    /// Asks the handler at `to` to finish what is in flight and close
    /// ([`Handler::shutdown`]), as when the server stops; gone handlers
    /// are skipped.
    pub fn shutdown_handler(&self, to: Address) {
        self.execute(move |r| r.shutdown_one(to));
    }

    /// Drops the handler at `to` now: its sockets close.
    pub fn close_handler(&self, to: Address) {
        self.execute(move |r| r.close_one(to));
    }

    /// Creates a handler on this reactor; `make` registers its sources with
    /// the context's token. Errors are logged and the handler is not kept.
    pub fn spawn<F>(&self, make: F)
    where
        F: FnOnce(&mut Cx<'_>) -> io::Result<Box<dyn Handler>> + Send + 'static,
    {
        self.execute(move |r| {
            if let Err(e) = r.insert(make) {
                tracing::warn!("reactor {}: handler not started: {e}", r.shared.id);
            }
        });
    }

    /// Whether the calling thread is this reactor's.
    pub fn is_current(&self) -> bool {
        CURRENT.with(|c| c.get()) == self.0.id
    }

    /// Asks the reactor to stop: every handler gets [`Handler::shutdown`],
    /// and the thread ends once all have closed or the grace period is over.
    pub fn shutdown(&self) {
        self.0.stopping.store(true, Ordering::Release);
        let _ = self.0.waker.wake();
    }

    /// The reactor's `mio` registry, for registering sources from elsewhere.
    pub fn registry(&self) -> &mio::Registry {
        &self.0.registry
    }
}

struct Slot {
    generation: u32,
    handler: Option<Box<dyn Handler>>,
    /// Listed in `Reactor::settling`.
    settling: bool,
}

/// One event loop. Made by [`Reactor::new`], run by [`Reactor::run`] on its
/// own thread.
pub struct Reactor {
    shared: Arc<Shared>,
    poll: Poll,
    slots: Slab<Slot>,
    generation: u32,
    timers: BinaryHeap<Reverse<(Instant, u64, u32, u32)>>,
    next_timer: u64,
    grace: Duration,
    /// Handlers that asked to [`Handler::settle`] after this batch.
    settling: Vec<Address>,
}

impl Reactor {
    /// A new reactor and its handle.
    pub fn new() -> io::Result<(Reactor, ReactorHandle)> {
        let poll = Poll::new()?;
        let waker = Waker::new(poll.registry(), WAKE)?;
        let shared = Arc::new(Shared {
            id: NEXT_REACTOR.fetch_add(1, Ordering::Relaxed),
            waker,
            registry: poll.registry().try_clone()?,
            queue: Mutex::new(Vec::new()),
            stopping: AtomicBool::new(false),
        });
        let handle = ReactorHandle(shared.clone());
        Ok((
            Reactor {
                shared,
                poll,
                slots: Slab::new(),
                generation: 0,
                timers: BinaryHeap::new(),
                next_timer: 0,
                grace: Duration::from_secs(5),
                settling: Vec::new(),
            },
            handle,
        ))
    }

    /// How long handlers may take to close after shutdown (default 5 s).
    pub fn set_grace(&mut self, grace: Duration) {
        self.grace = grace;
    }

    /// This reactor's handle.
    pub fn handle(&self) -> ReactorHandle {
        ReactorHandle(self.shared.clone())
    }

    /// Adds a handler; `make` gets the context (and so the token) the
    /// handler will have.
    pub fn insert<F>(&mut self, make: F) -> io::Result<Address>
    where
        F: FnOnce(&mut Cx<'_>) -> io::Result<Box<dyn Handler>>,
    {
        self.generation = self.generation.wrapping_add(1);
        let generation = self.generation;
        let slot = self.slots.insert(Slot {
            generation,
            handler: None,
            settling: false,
        });
        let address = Address {
            reactor: self.shared.id,
            slot: slot as u32,
            generation,
        };
        let mut cx = Cx {
            reactor: self,
            address,
            close: false,
        };
        match make(&mut cx) {
            Ok(h) if !cx.close => {
                self.slots[slot].handler = Some(h);
                Ok(address)
            }
            Ok(_) => {
                self.slots.remove(slot);
                Ok(address)
            }
            Err(e) => {
                self.slots.remove(slot);
                Err(e)
            }
        }
    }

    /// How many handlers are live.
    pub fn handlers(&self) -> usize {
        self.slots.len()
    }

    fn with_handler(
        &mut self,
        slot: usize,
        generation: Option<u32>,
        f: impl FnOnce(&mut dyn Handler, &mut Cx<'_>),
    ) {
        let Some(s) = self.slots.get_mut(slot) else {
            return;
        };
        if generation.is_some_and(|g| g != s.generation) {
            return;
        }
        let Some(mut handler) = s.handler.take() else {
            return;
        };
        let address = Address {
            reactor: self.shared.id,
            slot: slot as u32,
            generation: s.generation,
        };
        let mut cx = Cx {
            reactor: self,
            address,
            close: false,
        };
        f(&mut *handler, &mut cx);
        if cx.close {
            self.slots.remove(slot);
        } else if let Some(s) = self.slots.get_mut(slot) {
            s.handler = Some(handler);
        }
    }

    fn deliver(&mut self, to: Address, note: Note) {
        if to.reactor != self.shared.id {
            tracing::error!(
                "note for reactor {} arrived at {}",
                to.reactor,
                self.shared.id
            );
            return;
        }
        self.with_handler(to.slot as usize, Some(to.generation), |h, cx| {
            h.notify(cx, note)
        });
    }

    fn shutdown_one(&mut self, to: Address) {
        if to.reactor == self.shared.id {
            self.with_handler(to.slot as usize, Some(to.generation), |h, cx| {
                h.shutdown(cx)
            });
        }
    }

    fn close_one(&mut self, to: Address) {
        if to.reactor != self.shared.id {
            return;
        }
        let slot = to.slot as usize;
        if self
            .slots
            .get(slot)
            .is_some_and(|s| s.generation == to.generation && s.handler.is_some())
        {
            self.slots.remove(slot);
        }
    }

    fn run_tasks(&mut self) {
        // Bounded: tasks that queue tasks run on the next turn, after I/O.
        for _ in 0..8 {
            let tasks = std::mem::take(&mut *self.shared.queue.lock());
            if tasks.is_empty() {
                return;
            }
            for item in tasks {
                match item {
                    Queued::Note(to, note) => self.deliver(to, note),
                    Queued::Task(task) => task(self),
                }
            }
            self.settle_all();
        }
    }

    /// Calls [`Handler::settle`] on every handler that asked during the
    /// batch just run.
    fn settle_all(&mut self) {
        let mut settling = std::mem::take(&mut self.settling);
        for to in settling.drain(..) {
            let slot = to.slot as usize;
            match self.slots.get_mut(slot) {
                Some(s) if s.generation == to.generation => s.settling = false,
                _ => continue,
            }
            self.with_handler(slot, Some(to.generation), |h, cx| h.settle(cx));
        }
        // Keep the allocation unless settling asked for more.
        if self.settling.is_empty() {
            self.settling = settling;
        }
    }

    fn fire_timers(&mut self, now: Instant) {
        while let Some(Reverse((at, id, slot, generation))) = self.timers.peek().copied() {
            if at > now {
                break;
            }
            self.timers.pop();
            self.with_handler(slot as usize, Some(generation), |h, cx| {
                h.timeout(cx, TimerId(id))
            });
        }
    }

    fn begin_shutdown(&mut self) {
        let slots: Vec<usize> = self.slots.iter().map(|(k, _)| k).collect();
        for slot in slots {
            self.with_handler(slot, None, |h, cx| h.shutdown(cx));
        }
    }

    /// Runs the loop on the calling thread until shutdown completes.
    pub fn run(mut self) -> io::Result<()> {
        CURRENT.with(|c| c.set(self.shared.id));
        let mut events = Events::with_capacity(1024);
        let mut deadline: Option<Instant> = None;
        loop {
            self.run_tasks();
            let now = Instant::now();
            self.fire_timers(now);
            if deadline.is_none() && self.shared.stopping.load(Ordering::Acquire) {
                self.begin_shutdown();
                deadline = Some(now + self.grace);
            }
            if let Some(d) = deadline {
                if self.slots.is_empty() || now >= d {
                    break;
                }
            }
            let mut timeout = self
                .timers
                .peek()
                .map(|Reverse((at, ..))| at.saturating_duration_since(now));
            if let Some(d) = deadline {
                let left = d
                    .saturating_duration_since(now)
                    .min(Duration::from_millis(50));
                timeout = Some(timeout.map_or(left, |t| t.min(left)));
            }
            if !self.shared.queue.lock().is_empty() || !self.settling.is_empty() {
                timeout = Some(Duration::ZERO);
            }
            match self.poll.poll(&mut events, timeout) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    CURRENT.with(|c| c.set(0));
                    return Err(e);
                }
            }
            for event in events.iter() {
                if event.token() != WAKE {
                    self.with_handler(event.token().0, None, |h, cx| h.ready(cx, event));
                }
            }
            self.settle_all();
        }
        // Whatever is left is dropped here: sockets close, completions held
        // by handlers report Dropped.
        self.slots.clear();
        CURRENT.with(|c| c.set(0));
        Ok(())
    }
}

/// A handler's view of its reactor during a call.
pub struct Cx<'r> {
    reactor: &'r mut Reactor,
    address: Address,
    close: bool,
}

impl Cx<'_> {
    /// This handler's address, for notes.
    pub fn address(&self) -> Address {
        self.address
    }

    /// The token to register this handler's sources with.
    pub fn token(&self) -> Token {
        self.address.token()
    }

    /// The reactor's registry.
    pub fn registry(&self) -> &mio::Registry {
        self.reactor.poll.registry()
    }

    /// The reactor's handle.
    pub fn handle(&self) -> ReactorHandle {
        self.reactor.handle()
    }

    /// Sets a timer that calls [`Handler::timeout`] after `after`.
    pub fn set_timer(&mut self, after: Duration) -> TimerId {
        let id = self.reactor.next_timer;
        self.reactor.next_timer += 1;
        self.reactor.timers.push(Reverse((
            Instant::now() + after,
            id,
            self.address.slot,
            self.address.generation,
        )));
        TimerId(id)
    }

    /// Asks for one [`Handler::settle`] call once the current batch of
    /// notes and tasks (or readiness events) is over; asking again before
    /// then changes nothing.
    pub fn settle(&mut self) {
        if let Some(s) = self.reactor.slots.get_mut(self.address.slot as usize) {
            if s.generation == self.address.generation && !s.settling {
                s.settling = true;
                self.reactor.settling.push(self.address);
            }
        }
    }

    /// Removes this handler when the current call returns (the handler is
    /// dropped, which closes its sockets).
    pub fn close(&mut self) {
        self.close = true;
    }

    /// Adds another handler to this reactor (a listener adding a
    /// connection).
    pub fn insert<F>(&mut self, make: F) -> io::Result<Address>
    where
        F: FnOnce(&mut Cx<'_>) -> io::Result<Box<dyn Handler>>,
    {
        self.reactor.insert(make)
    }

    /// Whether the reactor is stopping.
    pub fn is_stopping(&self) -> bool {
        self.reactor.shared.stopping.load(Ordering::Acquire)
    }

    /// A completion whose outcome comes back to this handler as a [`Note`]
    /// with `tag`, carrying `Result<T, Failure>`.
    pub fn completion<T: Any + Send>(&self, tag: u64) -> Completion<T> {
        let handle = self.handle();
        let to = self.address;
        Completion::new(move |outcome| handle.notify(to, Note::new(tag, outcome)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::completion::Failure;
    use std::sync::mpsc;

    struct Probe {
        seen: mpsc::Sender<String>,
    }

    impl Handler for Probe {
        fn ready(&mut self, _: &mut Cx<'_>, _: &Event) {}
        fn notify(&mut self, cx: &mut Cx<'_>, note: Note) {
            let tag = note.tag;
            let r = note.take::<Result<u32, Failure>>().unwrap();
            self.seen.send(format!("note {tag} {r:?}")).unwrap();
            if tag == 2 {
                cx.set_timer(Duration::from_millis(10));
            }
        }
        fn timeout(&mut self, _: &mut Cx<'_>, _: TimerId) {
            self.seen.send("timer".into()).unwrap();
        }
        fn shutdown(&mut self, cx: &mut Cx<'_>) {
            self.seen.send("shutdown".into()).unwrap();
            cx.close();
        }
    }

    #[test]
    fn completions_from_other_threads_reach_the_handler_then_timers_and_shutdown() {
        let (reactor, handle) = Reactor::new().unwrap();
        let (tx, rx) = mpsc::channel();
        let (ctx, crx) = mpsc::channel();
        handle.spawn(move |cx| {
            ctx.send((cx.completion::<u32>(1), cx.completion::<u32>(2)))
                .unwrap();
            Ok(Box::new(Probe { seen: tx }))
        });
        let t = std::thread::spawn(move || reactor.run());
        let (c1, c2) = crx.recv().unwrap();
        std::thread::spawn(move || c1.succeed(5)).join().unwrap();
        assert_eq!(rx.recv().unwrap(), "note 1 Ok(5)");
        drop(c2);
        assert!(
            rx.recv()
                .unwrap()
                .starts_with("note 2 Err(Failure { kind: Dropped")
        );
        assert_eq!(rx.recv().unwrap(), "timer");
        handle.shutdown();
        assert_eq!(rx.recv().unwrap(), "shutdown");
        t.join().unwrap().unwrap();
    }

    #[test]
    fn notes_for_closed_handlers_are_dropped() {
        let (mut reactor, handle) = Reactor::new().unwrap();
        let (tx, rx) = mpsc::channel();
        let a = reactor
            .insert(|_| Ok(Box::new(Probe { seen: tx.clone() })))
            .unwrap();
        reactor.slots.remove(a.slot as usize);
        let b = reactor
            .insert(|_| Ok(Box::new(Probe { seen: tx })))
            .unwrap();
        assert_eq!(a.slot, b.slot);
        handle.notify(a, Note::new(1, Ok::<u32, Failure>(1)));
        handle.notify(b, Note::new(3, Ok::<u32, Failure>(3)));
        handle.shutdown();
        reactor.run().unwrap();
        let seen: Vec<String> = rx.try_iter().collect();
        assert_eq!(seen, ["note 3 Ok(3)", "shutdown"]);
    }

    /// Counts notes, settles once per batch.
    struct Batcher {
        notes: u32,
        seen: mpsc::Sender<String>,
    }

    impl Handler for Batcher {
        fn ready(&mut self, _: &mut Cx<'_>, _: &Event) {}
        fn notify(&mut self, cx: &mut Cx<'_>, _: Note) {
            self.notes += 1;
            cx.settle();
        }
        fn settle(&mut self, _: &mut Cx<'_>) {
            self.seen
                .send(format!("settle after {}", self.notes))
                .unwrap();
        }
    }

    #[test]
    fn a_batch_of_notes_settles_once_and_a_closed_handler_not_at_all() {
        let (mut reactor, handle) = Reactor::new().unwrap();
        let (tx, rx) = mpsc::channel();
        let a = reactor
            .insert(|_| {
                Ok(Box::new(Batcher {
                    notes: 0,
                    seen: tx.clone(),
                }))
            })
            .unwrap();
        let b = reactor
            .insert(|_| Ok(Box::new(Batcher { notes: 0, seen: tx })))
            .unwrap();
        for i in 0..100 {
            handle.notify(a, Note::new(i, ()));
        }
        handle.notify(b, Note::new(0, ()));
        // Closed within the batch, after its note asked to settle.
        handle.close_handler(b);
        handle.shutdown();
        reactor.run().unwrap();
        let seen: Vec<String> = rx.try_iter().collect();
        assert_eq!(seen, ["settle after 100"]);
    }
}
