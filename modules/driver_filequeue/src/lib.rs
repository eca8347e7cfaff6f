//! `driver.filequeue`: durable queues.
//!
//! The same queue semantics as `driver.memqueue` — FIFO, competing
//! consumers, leases, acks, redelivery, a maximum depth with backpressure —
//! kept in an append-only, segmented journal with a CRC-32 on every record.
//! A publish is confirmed, and an ack answered, only once its record is
//! written and synced as the instance's `fsync` policy says; with
//! `"always"`, concurrent writers share one sync (group commit). At start
//! the journal is replayed; a torn or corrupted record stops the replay at
//! the last good one, logged with segment and offset. Segments whose
//! messages are all acked are deleted, oldest first.
//!
//! ```toml
//! [instances.durable]
//! module = "driver.filequeue"
//! bind = ["/durable/"]
//! [instances.durable.config]
//! dir = "durable"                # under the server's data_dir; created if missing; one instance per directory
//! fsync = "always"               # "always", "interval" or "never"
//! fsync_interval_ms = 100        # for "interval"
//! segment_bytes = 67108864       # a new segment past this size
//! max_depth = 100000             # messages per queue
//! max_queues = 10000             # queues made on first use; past it: HTTP 507 naming max_queues
//! min_free_bytes = 67108864      # publishes refused while less would be free on the disk
//! max_disk_bytes = 1073741824    # optional: publishes refused past this journal size
//! reserve_bytes = 4194304        # set aside for acks on a disk full anyway
//! ```
//!
//! Leases are not journaled: after a restart every unacked message is
//! waiting again (at-least-once). A message that stays unacked keeps its
//! segment, and every later one, on disk.
//!
//! # A full disk
//!
//! Publishes are refused with [`FailureKind::Full`](bindery::FailureKind)
//! and a retry hint (HTTP: 503 with `Retry-After`) *before* the disk is
//! full: while the journal's filesystem would keep less than
//! `min_free_bytes` free, or the journal would pass `max_disk_bytes`.
//! Acks are never refused for space, so consumers drain a queue that
//! refuses publishes; the segments they empty are deleted, and publishes
//! resume by themselves once space is back (a margin past the limit), with
//! a log line each way. Refused publishes count in the destination's
//! `refused` counter (`bindery_publishes_refused_total`).
//!
//! If the disk fills anyway (another process, or a restart on a full
//! disk), a write that fails with `ENOSPC` is not fatal: the partial
//! record is cut off, its publishes fail with `Full`, and acks go into the
//! room the ack reserve (`reserve_bytes`, a file of zeros set aside at
//! start) gives back. The reserve holds the acks of roughly
//! `reserve_bytes / (20 + destination length)` messages; the instance
//! recovers and drains on a full disk as long as acks within it empty a
//! segment. On copy-on-write filesystems (btrfs, ZFS) deleting a file may
//! itself need space, so keep `min_free_bytes` generous there.
//!
//! A failed `fsync` is fatal, unlike a full disk: the kernel may have
//! dropped the pages whose write-back failed (PostgreSQL's "fsyncgate"),
//! so the journal's content is unknown. The instance then refuses every
//! publish and ack (`Unavailable`, with the reason), logs an error, and
//! takes writes again only once restarted, after recovery has replayed
//! what the disk really holds: restart the instance through the
//! management API (`bindery ctl restart NAME`) or restart the server.
//!
//! Longer than most files here: the configuration, the instance and its
//! driver methods, each journaling what it changes, belong together.

#[cfg(any(fuzzing, test))]
#[doc(hidden)]
pub mod fuzzing;
mod journal;
mod record;
mod recover;
mod space;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bindery::{Completion, Failure};
use bindery_classes::driver::{
    self, DeleteOptions, DestinationStats, DriverInfo, Receipt, SubscribeOptions,
};
use bindery_classes::metrics::Scope;
use bindery_classes::queue::{QueueLimits, Queues};
use bindery_classes::{Consumer, Driver, Message, MessageId, Subscription};
use parking_lot::Mutex;
use serde::Deserialize;

pub use journal::Fsync;
use journal::{Journal, Kind, Liveness, WriterConfig};
use space::{Limits, Space};

bindery::module! {
    class: bindery_classes::class::Driver,
    name: "filequeue",
    description: "durable queues in a segmented, checksummed journal with group commit",
    main: module_main,
    certify_config: "dir = \"{scratch}\"\nfsync = \"interval\"\nmax_depth = 20000\nsegment_bytes = 1048576\nmin_free_bytes = 0\nmax_disk_bytes = 16777216\nreserve_bytes = 65536",
}

/// The instance configuration.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The journal's directory (created if missing), relative to the
    /// server's data directory (`[server] data_dir`) unless absolute. One
    /// instance per directory.
    pub dir: PathBuf,
    /// When writes are made durable.
    pub fsync: Fsync,
    /// For `fsync = "interval"`: the most time between a confirmation and
    /// its sync.
    pub fsync_interval_ms: u64,
    /// A segment past this size is sealed and a new one begun.
    pub segment_bytes: u64,
    /// Messages per queue: being stored, waiting and leased.
    pub max_depth: usize,
    /// Queues per instance: a publish that would make one more is refused
    /// with [`FailureKind::Capacity`](bindery::FailureKind) (HTTP 507),
    /// its reason naming this field.
    pub max_queues: usize,
    /// Publishes are refused while the journal's filesystem would keep
    /// less than this free (acks are not: they give space back).
    pub min_free_bytes: u64,
    /// If set, publishes are refused while the journal would grow past
    /// this many bytes (the ack reserve comes on top).
    pub max_disk_bytes: Option<u64>,
    /// Bytes set aside in the data directory (`ack-reserve`) and given
    /// back for acks when the disk is full anyway; 0 for none.
    pub reserve_bytes: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            dir: PathBuf::from("filequeue"),
            fsync: Fsync::Always,
            fsync_interval_ms: 100,
            segment_bytes: 64 * 1024 * 1024,
            max_depth: 100_000,
            max_queues: 10_000,
            min_free_bytes: 64 * 1024 * 1024,
            max_disk_bytes: None,
            reserve_bytes: 4 * 1024 * 1024,
        }
    }
}

fn module_main(
    reg: &mut bindery::Registrar<'_, bindery_classes::class::Driver>,
) -> Result<(), bindery::BoxError> {
    driver::register(reg, |cx| {
        let mut config: Config = cx.config().parse()?;
        config.dir = cx.resolve(&config.dir);
        if config.max_depth == 0 || config.segment_bytes < 4096 {
            return Err(format!(
                "instance {:?}: max_depth must be at least 1 and segment_bytes at least 4096",
                cx.name()
            )
            .into());
        }
        if config
            .max_disk_bytes
            .is_some_and(|m| m < 2 * config.segment_bytes)
        {
            return Err(format!(
                "instance {:?}: max_disk_bytes must be at least twice segment_bytes ({}), \
                 or no segment could ever be reclaimed within it",
                cx.name(),
                config.segment_bytes
            )
            .into());
        }
        let scope = Scope::of(cx.runtime(), cx.name());
        FileQueue::open_with_metrics(config, scope)
            .map_err(|e| format!("instance {:?}: {e}", cx.name()).into())
    });
    Ok(())
}

/// An instance: queues in memory, kept in a journal on disk.
pub struct FileQueue {
    queues: Arc<Queues>,
    liveness: Arc<Mutex<Liveness>>,
    space: Arc<Space>,
    // Dropped first: the writer drains and syncs before the rest goes.
    journal: Journal,
}

impl FileQueue {
    /// Opens (recovering) the journal in `config.dir`.
    pub fn open(config: Config) -> Result<FileQueue, String> {
        Self::open_with_metrics(config, Scope::detached("filequeue"))
    }

    /// Opens the journal like [`FileQueue::open`]; the queues' meters
    /// register in `scope`.
    pub fn open_with_metrics(config: Config, scope: Scope) -> Result<FileQueue, String> {
        Self::open_with(
            config,
            scope,
            #[cfg(test)]
            None,
        )
    }

    fn open_with(
        config: Config,
        scope: Scope,
        #[cfg(test)] faults: Option<Arc<journal::Faults>>,
    ) -> Result<FileQueue, String> {
        let dir = &config.dir;
        let recovered = recover::recover(dir)
            .map_err(|e| format!("cannot recover the journal in {}: {e}", dir.display()))?;
        if let Some((segment, offset, why)) = &recovered.fault {
            tracing::warn!(
                segment = %segment.display(),
                offset,
                "recovered up to {why}; later records were set aside"
            );
        }
        tracing::info!(
            dir = %dir.display(),
            records = recovered.records,
            unacked = recovered.live.len(),
            segments = recovered.segments.len(),
            "journal recovered"
        );
        let limits = QueueLimits {
            max_depth: config.max_depth,
            max_queues: config.max_queues,
        };
        let queues = Arc::new(Queues::new(limits, scope));
        let used = recovered
            .segments
            .iter()
            .map(|&s| std::fs::metadata(journal::segment_path(dir, s)).map_or(0, |m| m.len()))
            .sum();
        let space = Arc::new(Space::new(
            dir.clone(),
            Limits {
                min_free_bytes: config.min_free_bytes,
                max_disk_bytes: config.max_disk_bytes,
                reserve_bytes: config.reserve_bytes,
            },
            used,
            {
                let queues = queues.clone();
                Box::new(move |full| queues.set_store_full(full))
            },
        ));
        let mut liveness = Liveness::new(
            dir.clone(),
            recovered.segments.iter().copied(),
            recovered.active,
            space.clone(),
        );
        for (m, seg) in recovered.live {
            liveness.published(m.id, seg);
            queues.restore(m).map_err(|f| format!("recovery: {f}"))?;
        }
        liveness.reclaim();
        let liveness = Arc::new(Mutex::new(liveness));
        let journal = Journal::start(
            WriterConfig {
                dir: dir.clone(),
                fsync: config.fsync,
                interval: Duration::from_millis(config.fsync_interval_ms.max(1)),
                segment_bytes: config.segment_bytes,
                #[cfg(test)]
                faults,
            },
            recovered.active,
            liveness.clone(),
            space.clone(),
        )
        .map_err(|e| format!("cannot open the journal in {}: {e}", dir.display()))?;
        Ok(FileQueue {
            queues,
            liveness,
            space,
            journal,
        })
    }

    /// Why publishes are refused now (a full disk, the budget, or a failed
    /// sync), or `None` while they are taken.
    pub fn refusal(&self) -> Option<Failure> {
        self.space.refusal()
    }

    /// Journal bytes on disk (and queued for it): what `max_disk_bytes`
    /// counts.
    pub fn journal_bytes(&self) -> u64 {
        self.space.used()
    }

    /// Journals an ack for each of `ids` (removed from `destination` by a
    /// purge or a delete), so recovery does not bring them back; completes
    /// `done` with their number once every record is written.
    fn forget(&self, destination: &str, ids: Vec<MessageId>, done: Completion<u64>) {
        let n = ids.len() as u64;
        if ids.is_empty() {
            return done.succeed(0);
        }
        // (records still to write, the first failure, what to complete)
        type Joined = (usize, Option<Failure>, Option<Completion<u64>>);
        let joined: Arc<Mutex<Joined>> = Arc::new(Mutex::new((ids.len(), None, Some(done))));
        for id in ids {
            let liveness = self.liveness.clone();
            let joined = joined.clone();
            self.journal.append(
                Kind::Ack,
                |buf| record::encode_ack(buf, id, destination),
                Box::new(move |written| {
                    let mut j = joined.lock();
                    match written {
                        Ok(_) => liveness.lock().acked(id),
                        Err(f) => {
                            j.1.get_or_insert(f);
                        }
                    }
                    j.0 -= 1;
                    if j.0 == 0 {
                        let (failure, done) = (j.1.take(), j.2.take());
                        drop(j);
                        if let Some(done) = done {
                            match failure {
                                Some(f) => done.fail(f),
                                None => done.succeed(n),
                            }
                        }
                    }
                }),
            );
        }
    }

    /// Segment files the journal keeps now.
    pub fn segments(&self) -> usize {
        self.liveness.lock().segments()
    }
}

impl Driver for FileQueue {
    fn info(&self) -> DriverInfo {
        DriverInfo {
            queue: true,
            durable: true,
        }
    }

    fn publish(&self, message: Message, done: Completion<Receipt>) {
        let room = match self.queues.reserve(&message.destination) {
            Ok(r) => r,
            Err(f) => return done.fail(f),
        };
        let liveness = self.liveness.clone();
        let queues = self.queues.clone();
        let id = message.id;
        // The clone shares the body and strings: no payload is copied.
        let kept = message.clone();
        self.journal.append(
            Kind::Publish,
            |buf| record::encode_publish(buf, &message),
            Box::new(move |written| match written {
                Ok(segment) => {
                    liveness.lock().published(id, segment);
                    room.fill(kept);
                    done.succeed(Receipt {
                        id,
                        delivered_to: 0,
                        backlog: 0,
                    });
                }
                Err(f) => {
                    drop(room);
                    if f.kind == bindery::FailureKind::Full {
                        queues.refused(&kept.destination);
                    }
                    done.fail(f)
                }
            }),
        );
    }

    fn subscribe(
        &self,
        destination: &str,
        consumer: Consumer,
        options: SubscribeOptions,
    ) -> Result<Subscription, Failure> {
        self.queues.subscribe(destination, consumer, options)
    }

    fn ack(&self, destination: &str, id: MessageId, done: Completion<()>) {
        if let Err(f) = self.queues.ack(destination, id) {
            return done.fail(f);
        }
        let liveness = self.liveness.clone();
        self.journal.append(
            Kind::Ack,
            |buf| record::encode_ack(buf, id, destination),
            Box::new(move |written| {
                if written.is_ok() {
                    liveness.lock().acked(id);
                }
                done.complete(written.map(|_| ()));
            }),
        );
    }

    fn release(&self, destination: &str, id: MessageId) -> Result<(), Failure> {
        self.queues.release(destination, id)
    }

    fn retry(&self, destination: &str, id: MessageId) -> Result<(), Failure> {
        self.queues.retry(destination, id)
    }

    fn purge(&self, destination: &str, done: Completion<u64>) {
        match self.queues.purge(destination) {
            Ok(ids) => self.forget(destination, ids, done),
            Err(f) => done.fail(f),
        }
    }

    fn delete(&self, destination: &str, options: DeleteOptions, done: Completion<u64>) {
        match self.queues.delete(destination, options) {
            Ok(ids) => self.forget(destination, ids, done),
            Err(f) => done.fail(f),
        }
    }

    fn stats(&self) -> Vec<DestinationStats> {
        self.queues.stats()
    }

    fn stop(&self) {
        self.queues.close("the driver instance is stopping");
        // Everything confirmed is on disk; the next incarnation recovers it.
        self.journal.close();
    }
}

#[cfg(test)]
mod tests;
