//! The sending half of a connection: callers append frames to a buffer
//! under a short lock and return; one thread writes the buffer out, so
//! many frames go in one `write` (pipelining) and no caller ever blocks on
//! the socket. When nothing is queued and the thread is idle, a caller
//! sends its frame itself without blocking (`MSG_DONTWAIT`), sparing a
//! thread wake-up per call when calls are few; what the socket does not
//! take at once is left to the thread.

use std::cell::Cell;
use std::io::Write as _;
use std::os::fd::AsRawFd as _;
use std::sync::Arc;

use parking_lot::{Condvar, Mutex};

use super::frame::{self, Enc, Kind};
use super::stream::Stream;

thread_local! {
    static MORE: Cell<bool> = const { Cell::new(false) };
}

/// Whether more frames will follow from this thread soon (a host reading a
/// batch of requests): while true, [`Writer::send`] leaves frames to the
/// writer thread, which sends them together.
pub(crate) fn more_coming(more: bool) {
    MORE.with(|m| m.set(more));
}

struct Buf {
    out: Vec<u8>,
    closed: bool,
    /// Set when the writer thread has written everything it will.
    done: bool,
    /// The thread is writing what it took: callers must queue behind it.
    writing: bool,
}

struct Shared {
    buf: Mutex<Buf>,
    cv: Condvar,
    /// The socket, valid while `closed` is false (the thread drops the
    /// stream only after setting it).
    fd: std::os::fd::RawFd,
}

/// Frames to one peer. Cheap to clone; usable from any thread.
#[derive(Clone)]
pub(crate) struct Writer(Arc<Shared>);

impl Writer {
    /// Starts the writer thread over `stream`.
    pub(crate) fn start(stream: Stream, name: String) -> std::io::Result<Writer> {
        let shared = Arc::new(Shared {
            buf: Mutex::new(Buf {
                out: Vec::with_capacity(64 << 10),
                closed: false,
                done: false,
                writing: false,
            }),
            cv: Condvar::new(),
            fd: stream.as_raw_fd(),
        });
        let s = shared.clone();
        std::thread::Builder::new().name(name).spawn(move || {
            let mut stream = stream;
            let mut spare = Vec::with_capacity(64 << 10);
            loop {
                {
                    let mut b = s.buf.lock();
                    b.writing = false;
                    while b.out.is_empty() && !b.closed {
                        s.cv.wait(&mut b);
                    }
                    if b.out.is_empty() {
                        b.done = true;
                        s.cv.notify_all();
                        break;
                    }
                    std::mem::swap(&mut b.out, &mut spare);
                    b.writing = true;
                }
                if stream.write_all(&spare).is_err() {
                    let mut b = s.buf.lock();
                    b.closed = true;
                    b.done = true;
                    b.out = Vec::new();
                    s.cv.notify_all();
                    stream.shutdown();
                    break;
                }
                spare.clear();
                if spare.capacity() > 4 << 20 {
                    spare = Vec::with_capacity(64 << 10);
                }
            }
        })?;
        Ok(Writer(shared))
    }

    /// Sends one frame, itself if it can (see the module docs) unless
    /// this thread said [`more_coming`]; `false` once the connection is
    /// closed.
    pub(crate) fn send(&self, kind: Kind, id: u64, payload: impl FnOnce(&mut Enc<'_>)) -> bool {
        self.send_with(!MORE.with(Cell::get), kind, id, payload)
    }

    /// Sends one frame; `inline`: the caller may write it itself. A caller
    /// that knows more frames follow passes `false`, so they are written
    /// together by the thread.
    pub(crate) fn send_with(
        &self,
        inline: bool,
        kind: Kind,
        id: u64,
        payload: impl FnOnce(&mut Enc<'_>),
    ) -> bool {
        let mut b = self.0.buf.lock();
        if b.closed {
            return false;
        }
        let was_empty = b.out.is_empty();
        frame::encode(&mut b.out, kind, id, payload);
        if inline && was_empty && !b.writing {
            // SAFETY: the fd is open while `closed` is false (checked
            // above, under the lock the thread takes to set it).
            let n = unsafe {
                libc::send(
                    self.0.fd,
                    b.out.as_ptr().cast(),
                    b.out.len(),
                    libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                )
            };
            if n > 0 {
                b.out.drain(..n as usize);
            }
            if b.out.is_empty() {
                return true;
            }
        }
        if was_empty {
            self.0.cv.notify_one();
        }
        true
    }

    /// Bytes queued and not yet written.
    pub(crate) fn backlog(&self) -> usize {
        self.0.buf.lock().out.len()
    }

    /// Writes what is queued, then ends; waits up to `patience` for that.
    pub(crate) fn close(&self, patience: std::time::Duration) {
        let mut b = self.0.buf.lock();
        b.closed = true;
        self.0.cv.notify_all();
        let until = std::time::Instant::now() + patience;
        while !b.done {
            if self.0.cv.wait_until(&mut b, until).timed_out() {
                break;
            }
        }
    }
}
