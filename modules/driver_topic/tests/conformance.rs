//! `driver.topic` against the topic contract.

use std::sync::Arc;

use bindery_classes::driver::DriverHandle;
use driver_topic::{Config, TopicDriver};

fn make() -> DriverHandle {
    Arc::new(TopicDriver::new(Config::default()))
}

bindery_conformance::driver_suite!(topic, make);
