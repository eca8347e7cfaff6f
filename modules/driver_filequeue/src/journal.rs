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
}

impl Liveness {
    pub(crate) fn new(
        dir: PathBuf,
        segments: impl IntoIterator<Item = u64>,
        active: u64,
    ) -> Liveness {
        let mut counts: BTreeMap<u64, u64> = segments.into_iter().map(|s| (s, 0)).collect();
        counts.entry(active).or_insert(0);
        Liveness {
            dir,
            counts,
            of: FxHashMap::default(),
            active,
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

    /// Deletes the oldest segments while they hold nothing live.
    pub(crate) fn reclaim(&mut self) {
        while let Some((&seg, &live)) = self.counts.first_key_value() {
            if live > 0 || seg >= self.active {
                return;
            }
            let path = segment_path(&self.dir, seg);
            match std::fs::remove_file(&path) {
                Ok(()) => tracing::debug!(segment = %path.display(), "segment reclaimed"),
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

struct Queue {
    buf: Vec<u8>,
    waiters: Vec<Waiter>,
    stop: bool,
}

struct Shared {
    queue: Mutex<Queue>,
    wake: Condvar,
}

/// The journal of one instance.
pub(crate) struct Journal {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

/// What the writer needs to know.
pub(crate) struct WriterConfig {
    pub(crate) dir: PathBuf,
    pub(crate) fsync: Fsync,
    pub(crate) interval: Duration,
    pub(crate) segment_bytes: u64,
}

impl Journal {
    /// Opens segment `active` for appending and starts the writer.
    pub(crate) fn start(
        config: WriterConfig,
        active: u64,
        liveness: Arc<Mutex<Liveness>>,
    ) -> std::io::Result<Journal> {
        let path = segment_path(&config.dir, active);
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        let size = file.metadata()?.len();
        sync_dir(&config.dir);
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue {
                buf: Vec::with_capacity(1 << 16),
                waiters: Vec::new(),
                stop: false,
            }),
            wake: Condvar::new(),
        });
        let writer = Writer {
            config,
            file,
            size,
            segment: active,
            liveness,
            dirty: false,
            last_sync: Instant::now(),
            failed: None,
        };
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("filequeue-journal".into())
            .spawn(move || writer.run(&s))?;
        Ok(Journal {
            shared,
            thread: Some(thread),
        })
    }

    /// Queues a record (encoded by `encode` straight into the batch) and
    /// calls `waiter` once it is written and synced as the policy says.
    pub(crate) fn append(
        &self,
        encode: impl FnOnce(&mut Vec<u8>) -> Result<(), String>,
        waiter: Waiter,
    ) {
        let mut q = self.shared.queue.lock();
        if q.stop {
            drop(q);
            return waiter(Err(Failure::new(
                FailureKind::Unavailable,
                "the journal is stopping",
            )));
        }
        if let Err(e) = encode(&mut q.buf) {
            drop(q);
            return waiter(Err(Failure::new(FailureKind::Rejected, e)));
        }
        q.waiters.push(waiter);
        if q.waiters.len() == 1 {
            self.shared.wake.notify_one();
        }
    }
}

impl Drop for Journal {
    fn drop(&mut self) {
        self.shared.queue.lock().stop = true;
        self.shared.wake.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Writer {
    config: WriterConfig,
    file: File,
    size: u64,
    segment: u64,
    liveness: Arc<Mutex<Liveness>>,
    dirty: bool,
    last_sync: Instant,
    failed: Option<String>,
}

impl Writer {
    fn run(mut self, shared: &Shared) {
        let mut batch = Vec::with_capacity(1 << 16);
        let mut waiters = Vec::new();
        loop {
            {
                let mut q = shared.queue.lock();
                while q.waiters.is_empty() && !q.stop {
                    if self.dirty {
                        let left = self
                            .config
                            .interval
                            .saturating_sub(self.last_sync.elapsed());
                        if shared.wake.wait_for(&mut q, left).timed_out() {
                            break;
                        }
                    } else {
                        shared.wake.wait(&mut q);
                    }
                }
                if q.waiters.is_empty() && q.stop {
                    drop(q);
                    if self.dirty {
                        self.sync();
                    }
                    return;
                }
                std::mem::swap(&mut batch, &mut q.buf);
                std::mem::swap(&mut waiters, &mut q.waiters);
            }
            let outcome = self.write(&batch);
            batch.clear();
            for w in waiters.drain(..) {
                w(outcome.clone());
            }
            if self.dirty && self.last_sync.elapsed() >= self.config.interval {
                self.sync();
            }
        }
    }

    fn write(&mut self, batch: &[u8]) -> Result<u64, Failure> {
        if let Some(e) = &self.failed {
            return Err(Failure::new(FailureKind::Unavailable, e.clone()));
        }
        if batch.is_empty() {
            return Ok(self.segment);
        }
        let result = (|| -> std::io::Result<()> {
            if self.size > 0 && self.size + batch.len() as u64 > self.config.segment_bytes {
                self.roll()?;
            }
            self.file.write_all(batch)?;
            self.size += batch.len() as u64;
            match self.config.fsync {
                Fsync::Always => {
                    self.file.sync_data()?;
                    self.last_sync = Instant::now();
                }
                Fsync::Interval => self.dirty = true,
                Fsync::Never => {}
            }
            Ok(())
        })();
        match result {
            Ok(()) => Ok(self.segment),
            Err(e) => {
                let reason = format!(
                    "journal write to {} failed: {e}",
                    segment_path(&self.config.dir, self.segment).display()
                );
                tracing::error!("{reason}; the instance refuses writes from now on");
                self.failed = Some(reason.clone());
                Err(Failure::new(FailureKind::Unavailable, reason))
            }
        }
    }

    fn sync(&mut self) {
        if let Err(e) = self.file.sync_data() {
            tracing::error!("journal sync failed: {e}");
        }
        self.dirty = false;
        self.last_sync = Instant::now();
    }

    /// Seals the active segment and opens the next.
    fn roll(&mut self) -> std::io::Result<()> {
        if self.config.fsync != Fsync::Never {
            self.file.sync_data()?;
        }
        let next = self.segment + 1;
        self.file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(segment_path(&self.config.dir, next))?;
        sync_dir(&self.config.dir);
        self.segment = next;
        self.size = 0;
        self.liveness.lock().rolled(next);
        Ok(())
    }
}

/// Makes a directory's entries (new segment files) durable.
fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}
