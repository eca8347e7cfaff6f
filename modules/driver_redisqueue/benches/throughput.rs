//! Throughput of `driver.redisqueue` against `redis-benchmark` XADD on the
//! same Redis, and against `driver.filequeue`, in one run.
//!
//! One `redis-server` (started here, append-only, `appendfsync always`, as
//! the tests run it). Each line moves 64-byte messages with 1,024 in flight
//! (4 publishers keeping 256 each, one queue each):
//!
//! - `redis-benchmark XADD`: `-c 4 -P 256`, the same pipelining, no
//!   Bindery: the baseline;
//! - `redisqueue publish`: publishes until each is confirmed;
//! - `redisqueue consume+ack`: 4 subscribers with credit 256 take and ack
//!   what was published;
//! - `redisqueue publish, 2 instances`: two instances (two nodes' drivers)
//!   publishing at once;
//! - `filequeue publish`: `driver.filequeue` with `fsync = "always"`.
//!
//! Run: `cargo bench -p bindery-driver-redisqueue --bench throughput` (prints a
//! table; `BENCH_N` sets the messages per line, 200,000 by default;
//! `BENCH_POOL` the driver's `pool_size`, 4 by default).

#![allow(missing_docs)]

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bindery::Completion;
use bindery_classes::driver::{DriverHandle, SubscribeOptions};
use bindery_classes::{Consumer, Delivery, Message};
use bindery_conformance::redis::RedisServer;
use bytes::Bytes;
use parking_lot::{Condvar, Mutex};

const PUBLISHERS: usize = 4;
const IN_FLIGHT: usize = 256;

/// Publishes `n` messages to `/bench/{tag}{t}` through `drivers` (thread
/// `t` uses `drivers[t % len]`), `IN_FLIGHT` per thread; msg/s.
fn publish(drivers: &[DriverHandle], tag: &str, n: usize, threads: usize) -> f64 {
    let body = Bytes::from(vec![b'x'; 64]);
    let start = Instant::now();
    std::thread::scope(|s| {
        for t in 0..threads {
            let driver = drivers[t % drivers.len()].clone();
            let body = body.clone();
            let dest = format!("/bench/{tag}{t}");
            s.spawn(move || {
                let window = Arc::new((Mutex::new(0usize), Condvar::new()));
                for _ in 0..n / threads {
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
    n as f64 / start.elapsed().as_secs_f64()
}

/// Takes and acks `n` messages from `/bench/{tag}0..PUBLISHERS`; msg/s.
fn consume(driver: &DriverHandle, tag: &str, n: usize) -> f64 {
    let left = Arc::new(AtomicUsize::new(n));
    let finished = Arc::new((Mutex::new(false), Condvar::new()));
    let start = Instant::now();
    let mut subs = Vec::new();
    for t in 0..PUBLISHERS {
        let dest = format!("/bench/{tag}{t}");
        let sub: Arc<Mutex<Option<bindery_classes::Subscription>>> = Arc::new(Mutex::new(None));
        let (d, s, left, finished) = (driver.clone(), sub.clone(), left.clone(), finished.clone());
        let dest2 = dest.clone();
        let consumer = Consumer::new(move |delivery| {
            let Delivery::Message(m) = delivery else {
                return;
            };
            let (s, left, finished) = (s.clone(), left.clone(), finished.clone());
            d.ack(
                &dest2,
                m.id,
                Completion::new(move |r: Result<(), _>| {
                    assert!(r.is_ok(), "ack failed: {r:?}");
                    if let Some(sub) = &*s.lock() {
                        sub.credit(1);
                    }
                    if left.fetch_sub(1, Ordering::AcqRel) == 1 {
                        *finished.0.lock() = true;
                        finished.1.notify_all();
                    }
                }),
            );
        });
        let options = SubscribeOptions {
            credit: IN_FLIGHT as u32,
            lease: Duration::from_secs(600),
        };
        *sub.lock() = Some(
            driver
                .subscribe(&dest, consumer, options)
                .expect("subscribe"),
        );
        subs.push(sub);
    }
    let mut done = finished.0.lock();
    while !*done {
        finished.1.wait(&mut done);
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    drop(done);
    for s in subs {
        s.lock().take();
    }
    rate
}

fn redis_benchmark(redis: &RedisServer, n: usize) -> f64 {
    let body = "x".repeat(64);
    let out = Command::new("redis-benchmark")
        .args(["-h", "127.0.0.1", "-p", &redis.port().to_string()])
        .args(["-n", &n.to_string(), "-c", "4", "-P", "256", "-q"])
        .args(["XADD", "bench:rb", "*", "f", &body])
        .output()
        .expect("redis-benchmark (scripts/install-redis)");
    let text = String::from_utf8_lossy(&out.stdout);
    // "XADD ...: 123456.79 requests per second, p50=..." (after \r updates)
    text.rsplit('\r')
        .find_map(|l| l.split(": ").nth(1))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("cannot read redis-benchmark's output: {text:?}"))
}

/// Redis's own time per command since the last call (INFO commandstats),
/// printed with `line`, then reset.
fn redis_time(redis: &RedisServer, line: &str) {
    let stats = redis.command(&["INFO", "commandstats"]).unwrap_or_default();
    let mut rows: Vec<(u64, String)> = stats
        .lines()
        .filter_map(|l| {
            let (name, rest) = l.strip_prefix("cmdstat_")?.split_once(':')?;
            let field = |k: &str| -> Option<u64> {
                rest.split(',')
                    .find_map(|f| f.strip_prefix(k)?.parse::<f64>().ok().map(|v| v as u64))
            };
            let (calls, usec) = (field("calls=")?, field("usec=")?);
            Some((usec, format!("{name} {calls} calls {usec} us")))
        })
        .collect();
    rows.sort_by_key(|r| std::cmp::Reverse(r.0));
    let total: u64 = rows.iter().map(|r| r.0).sum();
    let top: Vec<String> = rows.into_iter().take(5).map(|r| r.1).collect();
    eprintln!("redis time during {line}: {total} us: {}", top.join("; "));
    let _ = redis.command(&["CONFIG", "RESETSTAT"]);
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let n: usize = std::env::var("BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let pool_size: usize = std::env::var("BENCH_POOL")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4);
    let redis = RedisServer::start().expect("redis-server (scripts/install-redis)");
    let open = |prefix: &str| -> DriverHandle {
        Arc::new(
            driver_redisqueue::RedisQueue::open(driver_redisqueue::Config {
                url: redis.url(),
                prefix: prefix.into(),
                max_depth: 10_000_000,
                max_queue_bytes: 1 << 40,
                pool_size,
                ..Default::default()
            })
            .expect("open"),
        )
    };
    let _ = redis.command(&["CONFIG", "RESETSTAT"]);
    let baseline = redis_benchmark(&redis, n);
    redis_time(&redis, "redis-benchmark");
    let one = open("b1:");
    let published = publish(std::slice::from_ref(&one), "q", n, PUBLISHERS);
    redis_time(&redis, "publish");
    let consumed = consume(&one, "q", n);
    redis_time(&redis, "consume+ack");
    let two = [open("b2:"), open("b2:")];
    let both = publish(&two, "q", n, PUBLISHERS);
    redis_time(&redis, "publish, 2 instances");
    drop((one, two));
    let dir = std::env::temp_dir().join(format!("redisqueue-bench-{}", std::process::id()));
    let file: DriverHandle = Arc::new(
        driver_filequeue::FileQueue::open(driver_filequeue::Config {
            dir: dir.clone(),
            max_depth: 10_000_000,
            min_free_bytes: 0,
            ..Default::default()
        })
        .expect("open the file queue"),
    );
    let filequeue = publish(std::slice::from_ref(&file), "f", n, PUBLISHERS);
    drop(file);
    let _ = std::fs::remove_dir_all(&dir);
    println!(
        "{n} messages of 64 B per line, 1,024 in flight, redis appendfsync always, \
         pool_size = {pool_size}"
    );
    println!("| line | msg/s | ratio to redis-benchmark XADD |");
    println!("|---|---|---|");
    for (name, rate) in [
        ("redis-benchmark XADD -c 4 -P 256", baseline),
        ("redisqueue publish (confirmed)", published),
        ("redisqueue consume+ack", consumed),
        ("redisqueue publish, 2 instances", both),
        ("filequeue publish, fsync always", filequeue),
    ] {
        println!("| {name} | {rate:.0} | {:.2}x |", rate / baseline);
    }
}
