//! Retained messages kept in Redis by `driver.redistopic`: set on one
//! instance (node), found by another, exact and wildcard, replaced,
//! cleared by an empty body, capped by `max_retained`. A real
//! `redis-server` that each test starts and stops.

use std::sync::Arc;
use std::time::Duration;

use bindery::Completion;
use bindery_classes::Message;
use bindery_classes::driver::{DriverHandle, RETAIN};
use bindery_conformance::redis::RedisServer;
use driver_redistopic::{Config, RedisTopic};

fn open(redis: &RedisServer, max_retained: usize) -> DriverHandle {
    Arc::new(
        RedisTopic::open(Config {
            url: redis.url(),
            prefix: "ret:".into(),
            max_retained,
            ..Config::default()
        })
        .unwrap(),
    )
}

fn retain(d: &DriverHandle, dest: &str, body: &str) {
    let mut m = Message::new(dest, "text/plain", body.to_owned());
    m.headers = vec![(RETAIN.into(), "1".into())].into();
    let (done, rx) = Completion::channel();
    d.publish(m, done);
    rx.recv_timeout(Duration::from_secs(30))
        .unwrap()
        .expect("published");
}

/// The retained messages `filter` matches: (path, body), sorted.
fn kept(d: &DriverHandle, filter: &str) -> Vec<(String, String)> {
    let (done, rx) = Completion::channel();
    d.retained(filter, done);
    let mut out: Vec<(String, String)> = rx
        .recv_timeout(Duration::from_secs(30))
        .unwrap()
        .expect("read")
        .into_iter()
        .map(|m| {
            (
                m.destination.to_string(),
                String::from_utf8_lossy(&m.body).into_owned(),
            )
        })
        .collect();
    out.sort();
    out
}

fn pair(p: &str, b: &str) -> (String, String) {
    (p.to_owned(), b.to_owned())
}

#[test]
fn a_retained_message_set_on_one_node_is_found_on_another() {
    let redis = RedisServer::start().unwrap();
    let (a, b) = (open(&redis, 0), open(&redis, 0));
    assert!(a.retains() && b.retains());
    retain(&a, "/t/s/1", "one");
    retain(&a, "/t/s/2", "two");
    retain(&b, "/t/s/2", "two, later");
    // A plain publish is not retained.
    let (done, rx) = Completion::channel();
    a.publish(Message::new("/t/s/3", "text/plain", "live only"), done);
    rx.recv_timeout(Duration::from_secs(30)).unwrap().unwrap();
    assert_eq!(kept(&b, "/t/s/1"), [pair("/t/s/1", "one")]);
    assert_eq!(
        kept(&b, "/t/s/+"),
        [pair("/t/s/1", "one"), pair("/t/s/2", "two, later")]
    );
    assert_eq!(kept(&a, "/t/#").len(), 2);
    assert!(kept(&a, "/t/s/3").is_empty());
    // Cleared by an empty body.
    retain(&b, "/t/s/1", "");
    assert_eq!(kept(&a, "/t/s/+"), [pair("/t/s/2", "two, later")]);
}

#[test]
fn max_retained_keeps_new_topics_out_but_lets_kept_ones_change() {
    let redis = RedisServer::start().unwrap();
    let d = open(&redis, 2);
    retain(&d, "/c/1", "a");
    retain(&d, "/c/2", "b");
    retain(&d, "/c/3", "c"); // delivered, not retained
    retain(&d, "/c/2", "b2"); // a kept topic changes
    assert_eq!(kept(&d, "/c/+"), [pair("/c/1", "a"), pair("/c/2", "b2")]);
}

#[test]
fn with_redis_gone_asking_fails_with_unavailable() {
    let redis = RedisServer::start().unwrap();
    let d = open(&redis, 0);
    drop(redis);
    let (done, rx) = Completion::channel();
    d.retained("/t/x", done);
    let got = rx.recv_timeout(Duration::from_secs(30)).unwrap();
    assert_eq!(
        got.err().map(|f| f.kind),
        Some(bindery::FailureKind::Unavailable)
    );
}
