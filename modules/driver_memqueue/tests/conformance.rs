//! `driver.memqueue` against the queue contract.

use std::sync::Arc;

use bindery_classes::driver::DriverHandle;
use driver_memqueue::{Config, MemQueue};

fn make() -> DriverHandle {
    Arc::new(MemQueue::new(Config {
        max_depth: 20_000,
        ..Config::default()
    }))
}

bindery_conformance::driver_suite!(queue, make);
