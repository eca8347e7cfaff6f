//! Confirmed publish throughput: the durable queue with `fsync = "always"`
//! (group commit) beside the memory queue, measured in the same run.
//!
//! Four publisher threads keep 256 publishes each in flight (1,024
//! concurrent publishers, as a server with that many waiting clients
//! would); a publish counts once its completion confirms it. Each sample
//! opens a fresh journal in a temporary directory.
//!
//! Run: `cargo bench -p bindery-driver-filequeue --bench publish`.

// criterion's macros make undocumented items.
#![allow(missing_docs)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bindery::Completion;
use bindery_classes::Message;
use bindery_classes::driver::DriverHandle;
use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use parking_lot::{Condvar, Mutex};

const THREADS: usize = 4;
const IN_FLIGHT: usize = 256;

/// Publishes `n` messages of `body` with `THREADS * IN_FLIGHT` in flight;
/// returns the time until the last is confirmed.
fn run(driver: &DriverHandle, n: usize, body: &Bytes) -> Duration {
    let start = Instant::now();
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let driver = driver.clone();
            let body = body.clone();
            s.spawn(move || {
                let window = Arc::new((Mutex::new(0usize), Condvar::new()));
                let dest = format!("/bench/q{t}");
                for _ in 0..n / THREADS {
                    {
                        let mut open = window.0.lock();
                        while *open >= IN_FLIGHT {
                            window.1.wait(&mut open);
                        }
                        *open += 1;
                    }
                    let w = window.clone();
                    let done = Completion::new(move |r: Result<_, _>| {
                        assert!(r.is_ok(), "publish failed: {r:?}");
                        *w.0.lock() -= 1;
                        w.1.notify_one();
                    });
                    driver.publish(
                        Message::new(&dest, "application/octet-stream", body.clone()),
                        done,
                    );
                }
                let mut open = window.0.lock();
                while *open > 0 {
                    window.1.wait(&mut open);
                }
            });
        }
    });
    start.elapsed()
}

fn scratch(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("filequeue-bench-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn filequeue(dir: &Path) -> DriverHandle {
    Arc::new(
        driver_filequeue::FileQueue::open(driver_filequeue::Config {
            dir: dir.to_owned(),
            fsync: driver_filequeue::Fsync::Always,
            max_depth: 10_000_000,
            ..Default::default()
        })
        .unwrap(),
    )
}

fn publish(c: &mut Criterion) {
    const N: usize = 40_000;
    for (label, size) in [("64B", 64usize), ("4KiB", 4096)] {
        let body = Bytes::from(vec![b'x'; size]);
        let mut g = c.benchmark_group(format!("publish_{label}"));
        g.throughput(Throughput::Elements(N as u64));
        g.sample_size(10);
        g.measurement_time(Duration::from_secs(8));
        g.bench_function("memqueue", |b| {
            b.iter_custom(|iters| {
                (0..iters)
                    .map(|_| {
                        let d: DriverHandle =
                            Arc::new(driver_memqueue::MemQueue::new(driver_memqueue::Config {
                                max_depth: 10_000_000,
                                ..Default::default()
                            }));
                        run(&d, N, &body)
                    })
                    .sum()
            })
        });
        g.bench_function("filequeue_fsync_always", |b| {
            b.iter_custom(|iters| {
                (0..iters)
                    .map(|_| {
                        let dir = scratch(label);
                        let d = filequeue(&dir);
                        let t = run(&d, N, &body);
                        drop(d);
                        let _ = std::fs::remove_dir_all(&dir);
                        t
                    })
                    .sum()
            })
        });
        g.finish();
    }
}

criterion_group!(benches, publish);
criterion_main!(benches);
