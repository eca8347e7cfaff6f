//! The journal: segment files, one writer thread, group commit.
//!
//! Publishers and ackers hand encoded records to [`Journal::append`] with a
//! callback; the writer thread takes everything queued, writes it with one
//! `write`, and (with `fsync = "always"`) one `fdatasync`, then runs the
//! callbacks: concurrent publishers share one sync. With `"interval"` the
//! callbacks run after the write and a sync follows within the interval;
//! with `"never"` the operating system decides.
//!
//! Segments are `NNNNNNNNNNNNNNNNNNNN.journal` files. A segment is deleted
//! once every message published in it, and in every older segment, is
//! acked: deleting in order keeps an ack from outliving the message it
//! settles, so nothing acked can come back.
//!
//! # A full disk
//!
//! Publishes are refused before the disk is full ([`crate::space`]). A
//! write that fails with `ENOSPC` anyway (something else filled the disk)
//! is not fatal: the partial record is cut off (the segment is truncated
//! back to its last whole record), the publishes of the batch fail with
//! `Full`, publishes are refused from then on, and the batch's acks are
//! written again on their own, after deleting the ack reserve
//! (`ack-reserve`, `reserve_bytes` of zeros set aside at start) if even
//! they find no room. Once acks have emptied the journal, the active
//! segment is rolled so that it too can be deleted. When space is back
//! the reserve is set aside again and publishes resume.
//!
//! A failed write for any other reason, and a failed `fsync` above all, is
//! fatal: the instance refuses every write until it is restarted.
//!
//! Longer than most files here: the writer thread's state machine (group
//! commit, segments, space, the fsync latch) is one unit.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bindery::{Failure, FailureKind};
use bindery_classes::MessageId;
use parking_lot::{Condvar, Mutex};
use rustc_hash::FxHashMap;
use serde::Deserialize;

use crate::space::{RETRY_AFTER, Space, free_bytes, is_no_space};

/// When a write is made durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Fsync {
    /// Before the publish or ack is confirmed (group commit).
    Always,
    /// Within `fsync_interval_ms` after it is confirmed.
    Interval,
    /// When the operating system writes it back.
    Never,
}

/// What a record is: a publish may be refused for space, an ack never is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A message stored.
    Publish,
    /// A message settled.
    Ack,
}

/// The file of the ack reserve, in the data directory.
pub(crate) const RESERVE: &str = "ack-reserve";

/// Called once a record is written (and synced, as the policy says), with
/// the segment it went to.
pub(crate) type Waiter = Box<dyn FnOnce(Result<u64, Failure>) + Send>;

/// The path of segment `n` in `dir`.
pub(crate) fn segment_path(dir: &Path, n: u64) -> PathBuf {
    dir.join(format!("{n:020}.journal"))
}

/// Which segments hold live (unacked) messages; deletes the rest in order.
pub(crate) struct Liveness {
    dir: PathBuf,
    counts: BTreeMap<u64, u64>,
    of: FxHashMap<MessageId, u64>,
    active: u64,
    space: Arc<Space>,
}

impl Liveness {
    pub(crate) fn new(
        dir: PathBuf,
        segments: impl IntoIterator<Item = u64>,
        active: u64,
        space: Arc<Space>,
    ) -> Liveness {
        let mut counts: BTreeMap<u64, u64> = segments.into_iter().map(|s| (s, 0)).collect();
        counts.entry(active).or_insert(0);
        Liveness {
            dir,
            counts,
            of: FxHashMap::default(),
            active,
            space,
        }
    }

    pub(crate) fn published(&mut self, id: MessageId, segment: u64) {
        *self.counts.entry(segment).or_insert(0) += 1;
        self.of.insert(id, segment);
    }

    pub(crate) fn acked(&mut self, id: MessageId) {
        if let Some(seg) = self.of.remove(&id) {
            if let Some(c) = self.counts.get_mut(&seg) {
                *c = c.saturating_sub(1);
            }
        }
        self.reclaim();
    }

    fn rolled(&mut self, active: u64) {
        self.active = active;
        self.counts.entry(active).or_insert(0);
        self.reclaim();
    }

    /// Whether the only segment left is the active one and nothing in it
    /// is live: rolling would then give all of it back.
    fn only_a_dead_active(&self) -> bool {
        self.counts.len() == 1 && self.counts.get(&self.active) == Some(&0)
    }

    /// Deletes the oldest segments while they hold nothing live.
    pub(crate) fn reclaim(&mut self) {
        while let Some((&seg, &live)) = self.counts.first_key_value() {
            if live > 0 || seg >= self.active {
                return;
            }
            let path = segment_path(&self.dir, seg);
            let len = std::fs::metadata(&path).map_or(0, |m| m.len());
            match std::fs::remove_file(&path) {
                Ok(()) => {
                    self.space.deleted(len);
                    tracing::debug!(segment = %path.display(), "segment reclaimed");
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(segment = %path.display(), "cannot delete a reclaimed segment: {e}");
                    return;
                }
            }
            self.counts.pop_first();
        }
    }

    /// Segment files on disk, for tests and metrics.
    pub(crate) fn segments(&self) -> usize {
        self.counts.len()
    }
}

/// A queued record: who waits for it, what it is, how long it is.
struct Entry {
    waiter: Waiter,
    kind: Kind,
    len: usize,
}

struct Queue {
    buf: Vec<u8>,
    entries: Vec<Entry>,
    stop: bool,
}

struct Shared {
    queue: Mutex<Queue>,
    wake: Condvar,
}

/// The journal of one instance.
pub(crate) struct Journal {
    shared: Arc<Shared>,
    space: Arc<Space>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

/// What the writer needs to know.
pub(crate) struct WriterConfig {
    pub(crate) dir: PathBuf,
    pub(crate) fsync: Fsync,
    pub(crate) interval: Duration,
    pub(crate) segment_bytes: u64,
    /// Faults to inject, in tests.
    #[cfg(test)]
    pub(crate) faults: Option<Arc<Faults>>,
}

/// Faults a test can inject into the writer.
#[cfg(test)]
#[derive(Debug)]
pub(crate) struct Faults {
    /// Bytes that can still be written before a write fails with ENOSPC.
    pub(crate) room: std::sync::atomic::AtomicU64,
    /// Whether the next sync fails with EIO.
    pub(crate) sync_fails: std::sync::atomic::AtomicBool,
}

/// The most time between two measurements of free space.
const MEASURE_EVERY: Duration = Duration::from_millis(10);
/// While refusing publishes, the writer looks for space back this often
/// even when nothing is written (an operator may have freed some).
const RECHECK_IDLE: Duration = Duration::from_millis(50);

impl Journal {
    /// Opens segment `active` for appending, sets the ack reserve aside
    /// and starts the writer.
    pub(crate) fn start(
        config: WriterConfig,
        active: u64,
        liveness: Arc<Mutex<Liveness>>,
        space: Arc<Space>,
    ) -> std::io::Result<Journal> {
        let path = segment_path(&config.dir, active);
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        let size = file.metadata()?.len();
        sync_dir(&config.dir);
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue {
                buf: Vec::with_capacity(1 << 16),
                entries: Vec::new(),
                stop: false,
            }),
            wake: Condvar::new(),
        });
        let mut writer = Writer {
            config,
            file,
            size,
            segment: active,
            liveness,
            space: space.clone(),
            dirty: false,
            last_sync: Instant::now(),
            written: 0,
            last_measure: Instant::now(),
            reserve_held: false,
        };
        writer.hold_reserve();
        writer.measure();
        if !writer.space.room_to_resume(0) {
            // Started on a full disk (or at the budget): acks only, until
            // they give space back.
            writer.space.refuse(writer.space.shortage());
        }
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("filequeue-journal".into())
            .spawn(move || writer.run(&s))?;
        Ok(Journal {
            shared,
            space,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Queues a record (encoded by `encode` straight into the batch) and
    /// calls `waiter` once it is written and synced as the policy says. A
    /// publish is refused (the waiter called at once with `Full`) when it
    /// would leave too little space; an ack never is.
    pub(crate) fn append(
        &self,
        kind: Kind,
        encode: impl FnOnce(&mut Vec<u8>) -> Result<(), String>,
        waiter: Waiter,
    ) {
        if let Some(f) = self.space.fatal() {
            return waiter(Err(f));
        }
        if kind == Kind::Publish {
            // Refused without encoding or locking while the state says so.
            if let Some(f) = self.space.refusal() {
                return waiter(Err(f));
            }
        }
        let mut q = self.shared.queue.lock();
        if q.stop {
            drop(q);
            return waiter(Err(Failure::new(
                FailureKind::Unavailable,
                "the journal is stopping",
            )
            .retry_after(std::time::Duration::from_secs(1))));
        }
        let start = q.buf.len();
        if let Err(e) = encode(&mut q.buf) {
            q.buf.truncate(start);
            drop(q);
            return waiter(Err(Failure::new(FailureKind::Rejected, e)));
        }
        let len = q.buf.len() - start;
        if kind == Kind::Publish {
            if let Err(f) = self.space.admit(len as u64) {
                q.buf.truncate(start);
                drop(q);
                return waiter(Err(f));
            }
        }
        self.space.appended(len as u64);
        q.entries.push(Entry { waiter, kind, len });
        if q.entries.len() == 1 {
            self.shared.wake.notify_one();
        }
    }
}

impl Journal {
    /// Writes and syncs what is queued, then closes the segment: records
    /// appended after are refused with `Unavailable`. Returns once the
    /// writer has ended, so the directory can be opened again.
    pub(crate) fn close(&self) {
        self.shared.queue.lock().stop = true;
        self.shared.wake.notify_all();
        let thread = self.thread.lock().take();
        if let Some(t) = thread {
            let _ = t.join();
        }
    }
}

impl Drop for Journal {
    fn drop(&mut self) {
        self.close();
    }
}

/// Why a write did not happen.
enum WriteError {
    /// The disk (or quota) is full: the partial record was cut off.
    NoSpace(std::io::Error),
    /// Anything else, a failed sync above all: the journal cannot be
    /// trusted any more.
    Fatal(String),
}

struct Writer {
    config: WriterConfig,
    file: File,
    size: u64,
    segment: u64,
    liveness: Arc<Mutex<Liveness>>,
    space: Arc<Space>,
    dirty: bool,
    last_sync: Instant,
    /// Bytes written since start (what `Space::appended` counts).
    written: u64,
    last_measure: Instant,
    /// Whether the ack reserve file is on disk at its full size.
    reserve_held: bool,
}

impl Writer {
    fn run(mut self, shared: &Shared) {
        let mut batch = Vec::with_capacity(1 << 16);
        let mut entries = Vec::new();
        loop {
            {
                let mut q = shared.queue.lock();
                while q.entries.is_empty() && !q.stop {
                    let mut wait = None;
                    if self.dirty {
                        wait = Some(
                            self.config
                                .interval
                                .saturating_sub(self.last_sync.elapsed()),
                        );
                    }
                    if self.space.refusing_for_space() {
                        wait = Some(wait.map_or(RECHECK_IDLE, |w| w.min(RECHECK_IDLE)));
                    }
                    match wait {
                        Some(w) => {
                            if shared.wake.wait_for(&mut q, w).timed_out() {
                                break;
                            }
                        }
                        None => shared.wake.wait(&mut q),
                    }
                }
                if q.entries.is_empty() && q.stop {
                    drop(q);
                    if self.dirty {
                        self.sync();
                    }
                    return;
                }
                std::mem::swap(&mut batch, &mut q.buf);
                std::mem::swap(&mut entries, &mut q.entries);
            }
            if !entries.is_empty() {
                self.write(&batch, &mut entries);
            }
            batch.clear();
            if self.dirty && self.last_sync.elapsed() >= self.config.interval {
                self.sync();
            }
            if self.last_measure.elapsed() >= MEASURE_EVERY {
                self.measure();
            }
            if self.space.refusing_for_space() {
                self.look_for_space();
            }
        }
    }

    /// Writes a batch and answers its waiters. On a full disk the publishes
    /// fail (`Full`, and publishes are refused from now on) and the acks
    /// are written again on their own, into the ack reserve if need be.
    fn write(&mut self, batch: &[u8], entries: &mut Vec<Entry>) {
        if let Some(f) = self.space.fatal() {
            self.space.unwritten(batch.len() as u64);
            for e in entries.drain(..) {
                (e.waiter)(Err(f.clone()));
            }
            return;
        }
        let e = match self.try_write(batch) {
            Ok(()) => {
                let segment = self.segment;
                for e in entries.drain(..) {
                    (e.waiter)(Ok(segment));
                }
                return;
            }
            Err(WriteError::Fatal(why)) => {
                self.fail(why);
                let f = self.space.fatal();
                for e in entries.drain(..) {
                    (e.waiter)(Err(f
                        .clone()
                        .unwrap_or_else(|| unavailable("the journal failed"))));
                }
                return;
            }
            Err(WriteError::NoSpace(e)) => e,
        };
        // The disk is full: no publish in this batch was written.
        let full = self.space.refuse(format!(
            "journal write to {} failed: {e}",
            segment_path(&self.config.dir, self.segment).display()
        ));
        let mut acks = Vec::new();
        let mut ack_entries = Vec::new();
        let mut at = 0;
        for entry in entries.drain(..) {
            let record = &batch[at..at + entry.len];
            at += entry.len;
            match entry.kind {
                Kind::Publish => (entry.waiter)(Err(full.clone())),
                Kind::Ack => {
                    acks.extend_from_slice(record);
                    ack_entries.push(entry);
                }
            }
        }
        if ack_entries.is_empty() {
            return;
        }
        // The acks go again, alone, with the reserve given back if the
        // disk has no room even for them.
        let mut outcome = self.try_write(&acks);
        if matches!(outcome, Err(WriteError::NoSpace(_))) && self.release_reserve() {
            outcome = self.try_write(&acks);
        }
        let result = match outcome {
            Ok(()) => Ok(self.segment),
            Err(WriteError::NoSpace(e)) => Err(Failure::new(
                FailureKind::Full,
                format!(
                    "no room for an ack in the journal in {}: {e}",
                    self.config.dir.display()
                ),
            )
            .retry_after(RETRY_AFTER)),
            Err(WriteError::Fatal(why)) => {
                self.fail(why.clone());
                Err(unavailable(why))
            }
        };
        for e in ack_entries {
            (e.waiter)(result.clone());
        }
    }

    /// Writes `bytes` at the end of the active segment (rolling first if
    /// it is full) and syncs as the policy says. On a full disk whatever
    /// part of `bytes` was written is cut off again, and the bytes are
    /// uncounted.
    fn try_write(&mut self, bytes: &[u8]) -> Result<(), WriteError> {
        if bytes.is_empty() {
            return Ok(());
        }
        let len = bytes.len() as u64;
        if self.size > 0 && self.size + len > self.config.segment_bytes {
            if let Err(e) = self.roll() {
                self.space.unwritten(len);
                return Err(e);
            }
        }
        if let Err(e) = self.write_bytes(bytes) {
            if !is_no_space(&e) {
                self.space.unwritten(len);
                return Err(WriteError::Fatal(format!(
                    "journal write to {} failed: {e}",
                    self.path()
                )));
            }
            // Cut the partial record off, so the segment ends with a whole one.
            if let Err(cut) = self.file.set_len(self.size) {
                self.space.unwritten(len);
                return Err(WriteError::Fatal(format!(
                    "cannot cut a partial record off {} after \"{e}\": {cut}",
                    self.path()
                )));
            }
            self.space.unwritten(len);
            self.measure();
            return Err(WriteError::NoSpace(e));
        }
        self.size += len;
        self.written += len;
        match self.config.fsync {
            Fsync::Always => {
                if let Err(e) = self.sync_data() {
                    return Err(WriteError::Fatal(format!(
                        "journal fsync of {} failed: {e}",
                        self.path()
                    )));
                }
                self.last_sync = Instant::now();
            }
            Fsync::Interval => self.dirty = true,
            Fsync::Never => {}
        }
        Ok(())
    }

    /// The active segment's path, for messages.
    fn path(&self) -> String {
        segment_path(&self.config.dir, self.segment)
            .display()
            .to_string()
    }

    fn write_bytes(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        #[cfg(test)]
        if let Some(f) = &self.config.faults {
            use std::sync::atomic::Ordering;
            let room = f.room.load(Ordering::Relaxed);
            if bytes.len() as u64 > room {
                f.room.store(0, Ordering::Relaxed);
                // A partial write, as a full disk makes one.
                self.file.write_all(&bytes[..room as usize])?;
                return Err(std::io::Error::from_raw_os_error(libc::ENOSPC));
            }
            f.room.fetch_sub(bytes.len() as u64, Ordering::Relaxed);
        }
        self.file.write_all(bytes)
    }

    fn sync_data(&mut self) -> std::io::Result<()> {
        #[cfg(test)]
        if let Some(f) = &self.config.faults {
            if f.sync_fails.load(std::sync::atomic::Ordering::Relaxed) {
                return Err(std::io::Error::from_raw_os_error(libc::EIO));
            }
        }
        self.file.sync_data()
    }

    fn sync(&mut self) {
        if let Err(e) = self.sync_data() {
            self.fail(format!(
                "journal fsync of {} failed: {e} (what was confirmed since the last \
                 good sync may be lost)",
                segment_path(&self.config.dir, self.segment).display()
            ));
        }
        self.dirty = false;
        self.last_sync = Instant::now();
    }

    /// Refuses every write from now on.
    fn fail(&mut self, why: String) {
        self.space.fail(why);
    }

    /// Measures the free space of the journal's filesystem.
    fn measure(&mut self) {
        self.last_measure = Instant::now();
        match free_bytes(&self.config.dir) {
            Ok(free) => {
                // A test's full disk is full for statvfs too.
                #[cfg(test)]
                let free = self.config.faults.as_ref().map_or(free, |f| {
                    free.min(f.room.load(std::sync::atomic::Ordering::Relaxed))
                });
                self.space.measured(free, self.written)
            }
            Err(e) => {
                tracing::warn!(dir = %self.config.dir.display(), "cannot measure free space: {e}")
            }
        }
    }

    /// While publishes are refused for space: gives back an active segment
    /// that holds nothing live, takes the ack reserve again, and resumes
    /// publishes once there is room.
    fn look_for_space(&mut self) {
        let dead = self.liveness.lock().only_a_dead_active();
        if dead && self.size > 0 {
            match self.roll() {
                Ok(()) => self.measure(),
                Err(WriteError::NoSpace(e)) => {
                    tracing::warn!(dir = %self.config.dir.display(), "cannot begin a new segment: {e}");
                }
                Err(WriteError::Fatal(why)) => return self.fail(why),
            }
        }
        if self.last_measure.elapsed() >= MEASURE_EVERY {
            self.measure();
        }
        let reserve = self.space.limits.reserve_bytes;
        if !self.reserve_held && self.space.room_to_resume(reserve) {
            self.hold_reserve();
            self.measure();
        }
        if self.reserve_held && self.space.room_to_resume(0) {
            self.space.resume();
        }
    }

    /// Sets the ack reserve aside: a file of `reserve_bytes` zeros, given
    /// back when acks find the disk full.
    fn hold_reserve(&mut self) {
        let want = self.space.limits.reserve_bytes;
        let path = self.config.dir.join(RESERVE);
        if want == 0 {
            let _ = std::fs::remove_file(&path);
            self.reserve_held = true;
            return;
        }
        let result = (|| -> std::io::Result<()> {
            let mut f = OpenOptions::new().create(true).append(true).open(&path)?;
            let mut have = f.metadata()?.len();
            if have > want {
                f.set_len(want)?;
                have = want;
            }
            let zeros = vec![0u8; 64 * 1024];
            while have < want {
                let n = (want - have).min(zeros.len() as u64) as usize;
                f.write_all(&zeros[..n])?;
                have += n as u64;
            }
            if self.config.fsync != Fsync::Never {
                f.sync_data()?;
            }
            Ok(())
        })();
        match result {
            Ok(()) => self.reserve_held = true,
            Err(e) => {
                let _ = std::fs::remove_file(&path);
                tracing::warn!(
                    reserve = %path.display(),
                    "cannot set {want} bytes aside for acks on a full disk: {e}"
                );
            }
        }
    }

    /// Gives the ack reserve back to the filesystem; false if it was not held.
    fn release_reserve(&mut self) -> bool {
        if !self.reserve_held || self.space.limits.reserve_bytes == 0 {
            return false;
        }
        let path = self.config.dir.join(RESERVE);
        self.reserve_held = false;
        match std::fs::remove_file(&path) {
            Ok(()) => {
                #[cfg(test)]
                if let Some(f) = &self.config.faults {
                    f.room.fetch_add(
                        self.space.limits.reserve_bytes,
                        std::sync::atomic::Ordering::Relaxed,
                    );
                }
                tracing::warn!(
                    reserve = %path.display(),
                    "the disk is full: the ack reserve of {} bytes is given back for acks",
                    self.space.limits.reserve_bytes
                );
                true
            }
            Err(e) => {
                tracing::warn!(reserve = %path.display(), "cannot give the ack reserve back: {e}");
                false
            }
        }
    }

    /// Seals the active segment and opens the next.
    fn roll(&mut self) -> Result<(), WriteError> {
        let path = segment_path(&self.config.dir, self.segment);
        if self.config.fsync != Fsync::Never {
            if let Err(e) = self.sync_data() {
                return Err(WriteError::Fatal(format!(
                    "journal fsync of {} failed: {e}",
                    path.display()
                )));
            }
        }
        let next = self.segment + 1;
        self.file = match OpenOptions::new()
            .create(true)
            .append(true)
            .open(segment_path(&self.config.dir, next))
        {
            Ok(f) => f,
            Err(e) if is_no_space(&e) => return Err(WriteError::NoSpace(e)),
            Err(e) => {
                return Err(WriteError::Fatal(format!(
                    "cannot begin journal segment {}: {e}",
                    segment_path(&self.config.dir, next).display()
                )));
            }
        };
        sync_dir(&self.config.dir);
        self.segment = next;
        self.size = 0;
        self.dirty = false;
        self.liveness.lock().rolled(next);
        Ok(())
    }
}

fn unavailable(why: impl Into<std::borrow::Cow<'static, str>>) -> Failure {
    Failure::new(FailureKind::Unavailable, why)
}

/// Makes a directory's entries (new segment files) durable.
fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}
