//! `driver.redistopic` across instances (nodes) on one real
//! `redis-server`: a message published on one reaches the subscribers of
//! every other, wildcards included, and Redis going away fails publishes
//! with `Unavailable`, never a confirm.

use std::sync::Arc;
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use bindery::{Completion, Failure, FailureKind};
use bindery_classes::driver::{DriverHandle, Receipt, SubscribeOptions};
use bindery_classes::{Consumer, Delivery, Message};
use bindery_conformance::redis::RedisServer;
use driver_redistopic::{Config, RedisTopic};

fn open(redis: &RedisServer) -> DriverHandle {
    Arc::new(
        RedisTopic::open(Config {
            url: redis.url(),
            command_timeout_ms: 1000,
            ..Config::default()
        })
        .unwrap(),
    )
}

fn publish(d: &DriverHandle, dest: &str, body: &str) -> Result<Receipt, Failure> {
    let (done, rx) = Completion::channel();
    d.publish(Message::new(dest, "text/plain", body.to_owned()), done);
    rx.recv_timeout(Duration::from_secs(30)).unwrap()
}

fn text(rx: &Receiver<Delivery>) -> String {
    match rx.recv_timeout(Duration::from_secs(10)) {
        Ok(Delivery::Message(m)) => String::from_utf8_lossy(&m.body).into_owned(),
        other => panic!("expected a message, got {other:?}"),
    }
}

fn sub(d: &DriverHandle, dest: &str) -> (bindery_classes::Subscription, Receiver<Delivery>) {
    let (c, rx) = Consumer::channel();
    let o = SubscribeOptions {
        credit: 1000,
        ..Default::default()
    };
    (d.subscribe(dest, c, o).unwrap(), rx)
}

#[test]
fn a_publish_on_one_node_reaches_subscribers_on_every_node() {
    let redis = RedisServer::start().unwrap();
    let (a, b, c) = (open(&redis), open(&redis), open(&redis));
    let (_sa, ra) = sub(&a, "/news/sport");
    let (_sb, rb) = sub(&b, "/news/+");
    let (_sc, rc) = sub(&c, "/news/#");
    for i in 0..50 {
        publish(&a, "/news/sport", &format!("a{i}")).unwrap();
    }
    publish(&b, "/news/weather", "b0").unwrap();
    for i in 0..50 {
        assert_eq!(text(&ra), format!("a{i}"));
        assert_eq!(text(&rb), format!("a{i}"));
        assert_eq!(text(&rc), format!("a{i}"));
    }
    assert_eq!(text(&rb), "b0");
    assert_eq!(text(&rc), "b0");
    assert!(
        ra.recv_timeout(Duration::from_millis(300)).is_err(),
        "/news/sport only"
    );
}

#[test]
fn redis_down_fails_publishes_and_topics_carry_on_after() {
    let mut redis = RedisServer::start().unwrap();
    let (a, b) = (open(&redis), open(&redis));
    let (_sb, rb) = sub(&b, "/t/x");
    publish(&a, "/t/x", "before").unwrap();
    assert_eq!(text(&rb), "before");
    redis.kill();
    for i in 0..10 {
        let f = publish(&a, "/t/x", &format!("during {i}")).unwrap_err();
        assert_eq!(f.kind, FailureKind::Unavailable, "{f}");
        assert!(f.retry_after.is_some());
    }
    assert!(a.stats().iter().all(|s| s.store_full == 1));
    redis.restart().unwrap();
    // Once both nodes are back, messages flow again.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        assert!(
            Instant::now() < deadline,
            "no message crossed 30 s after redis came back"
        );
        if publish(&a, "/t/x", "after").is_ok() {
            if let Ok(Delivery::Message(m)) = rb.recv_timeout(Duration::from_millis(200)) {
                assert_eq!(&m.body[..], b"after");
                break;
            }
        } else {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
