//! `driver.redistopic` against the topic contract, on a real
//! `redis-server` (see `scripts/install-redis`) that each test starts and
//! stops.

use std::sync::Arc;

use bindery_classes::driver::DriverHandle;
use bindery_conformance::redis::RedisServer;
use driver_redistopic::{Config, RedisTopic};

fn harness() -> impl Fn() -> DriverHandle {
    let redis = Arc::new(RedisServer::start().expect("start redis-server"));
    move || -> DriverHandle {
        Arc::new(
            RedisTopic::open(Config {
                url: redis.url(),
                ..Config::default()
            })
            .expect("open the driver"),
        )
    }
}

bindery_conformance::driver_suite!(topic, harness());
