//! `driver.redisqueue` against the queue contract, durability included,
//! on a real `redis-server` (see `scripts/install-redis`). Each test starts
//! its own Redis (append-only, fsync always) and stops it; every instance
//! the harness makes within a test uses the same Redis and key prefix,
//! which is how a restart is made. The queues are small (4 MiB of bodies)
//! so that the full-store case fills them in a few dozen publishes.

use std::sync::Arc;

use bindery_classes::driver::DriverHandle;
use bindery_conformance::redis::RedisServer;
use driver_redisqueue::{Config, RedisQueue};

fn harness() -> impl Fn() -> DriverHandle {
    let redis = Arc::new(RedisServer::start().expect("start redis-server"));
    move || -> DriverHandle {
        let config = Config {
            url: redis.url(),
            prefix: "conformance:".into(),
            max_depth: 20_000,
            max_queue_bytes: 4 << 20,
            ..Config::default()
        };
        Arc::new(RedisQueue::open(config).expect("open the driver"))
    }
}

bindery_conformance::driver_suite!(durable_queue, harness());
