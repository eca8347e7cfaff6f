//! AMQP test helpers around lapin: a bounded runtime and a login.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use lapin::{Connection, ConnectionProperties};

/// Runs `f` on a runtime of its own, bounded so a hang fails the test.
pub fn run<F: Future<Output = ()>>(f: F) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(60), f)
            .await
            .expect("the test finished in time")
    });
}

/// Logs in to the AMQP terminal at `addr` as `user` (PLAIN).
pub async fn connect(addr: SocketAddr, user: &str, password: &str) -> lapin::Result<Connection> {
    Connection::connect(
        &format!("amqp://{user}:{password}@{addr}/%2f"),
        ConnectionProperties::default(),
    )
    .await
}
