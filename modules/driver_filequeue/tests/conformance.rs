//! `driver.filequeue` against the queue contract, durability included.
//! Each test gets a data directory of its own; within a test every instance
//! the harness makes opens the same one, which is how a restart is made.
//! The store is small (a 16 MiB budget) so that the full-store case fills
//! it in a few hundred publishes.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bindery_classes::driver::DriverHandle;
use driver_filequeue::{Config, FileQueue, Fsync};

struct Dir(PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn harness() -> impl Fn() -> DriverHandle {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = Arc::new(Dir(std::env::temp_dir().join(format!(
        "filequeue-conformance-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ))));
    move || -> DriverHandle {
        let config = Config {
            dir: dir.0.clone(),
            fsync: Fsync::Interval,
            max_depth: 20_000,
            segment_bytes: 1 << 20,
            min_free_bytes: 0,
            max_disk_bytes: Some(16 << 20),
            reserve_bytes: 64 << 10,
            ..Config::default()
        };
        Arc::new(FileQueue::open(config).expect("open the journal"))
    }
}

bindery_conformance::driver_suite!(durable_queue, harness());
