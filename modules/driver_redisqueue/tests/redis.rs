//! `driver.redisqueue` beyond the queue contract, on a real `redis-server`:
//! memory stays flat under publish and ack, Redis going away fails
//! publishes with `Unavailable` (never a confirm) and the driver carries on
//! when it is back, and the entries of an instance that stopped renewing
//! them go to another instance with their delivery count.

use std::sync::Arc;
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use bindery::{Completion, Failure, FailureKind};
use bindery_classes::driver::{DriverHandle, Receipt, SubscribeOptions};
use bindery_classes::{Consumer, Delivery, Message, MessageId};
use bindery_conformance::redis::RedisServer;
use driver_redisqueue::{Config, RedisQueue};

fn open(redis: &RedisServer, tweak: impl FnOnce(&mut Config)) -> Arc<RedisQueue> {
    let mut config = Config {
        url: redis.url(),
        prefix: "t:".into(),
        ..Config::default()
    };
    tweak(&mut config);
    Arc::new(RedisQueue::open(config).unwrap())
}

fn publish(d: &DriverHandle, dest: &str, body: &[u8]) -> Result<Receipt, Failure> {
    let (done, rx) = Completion::channel();
    d.publish(Message::new(dest, "text/plain", body.to_vec()), done);
    rx.recv_timeout(Duration::from_secs(30))
        .expect("every publish is answered")
}

fn ack(d: &DriverHandle, dest: &str, id: MessageId) -> Result<(), Failure> {
    let (done, rx) = Completion::channel();
    d.ack(dest, id, done);
    rx.recv_timeout(Duration::from_secs(30))
        .expect("every ack is answered")
}

fn next(rx: &Receiver<Delivery>) -> Message {
    match rx.recv_timeout(Duration::from_secs(20)) {
        Ok(Delivery::Message(m)) => m,
        other => panic!("expected a message, got {other:?}"),
    }
}

fn used_memory(redis: &RedisServer) -> u64 {
    let info = redis.command(&["INFO", "memory"]).unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("INFO memory has used_memory")
}

#[test]
fn acked_messages_leave_redis_memory() {
    let redis = RedisServer::start().unwrap();
    let q = open(&redis, |_| {});
    let d: DriverHandle = q.clone();
    let dest = "/queues/flat";
    let (c, rx) = Consumer::channel();
    let sub = d
        .subscribe(
            dest,
            c,
            SubscribeOptions {
                credit: 100,
                lease: Duration::from_secs(60),
            },
        )
        .unwrap();
    let body = vec![b'x'; 1024];
    let mut samples = Vec::new();
    for _round in 0..6 {
        // 5 MiB of bodies per round, published and acked 100 at a time.
        for _ in 0..50 {
            // Many in flight: one pipeline carries them.
            let confirms: Vec<_> = (0..100)
                .map(|_| {
                    let (done, rx) = Completion::channel();
                    d.publish(Message::new(dest, "text/plain", body.clone()), done);
                    rx
                })
                .collect();
            for c in confirms {
                c.recv_timeout(Duration::from_secs(30)).unwrap().unwrap();
            }
            let acks: Vec<_> = (0..100)
                .map(|_| {
                    let (done, acked) = Completion::channel();
                    d.ack(dest, next(&rx).id, done);
                    acked
                })
                .collect();
            for a in acks {
                a.recv_timeout(Duration::from_secs(30)).unwrap().unwrap();
            }
            sub.credit(100);
        }
        samples.push(used_memory(&redis));
    }
    let stream = format!("t:q:{dest}");
    assert_eq!(redis.command(&["XLEN", &stream]).unwrap(), "0");
    assert_eq!(
        redis.command(&["GET", &format!("t:b:{dest}")]).unwrap(),
        "0",
        "the byte count went back to 0"
    );
    // 30 MiB went through; what Redis holds after the first round does
    // not grow with it.
    let (first, last) = (samples[0], *samples.last().unwrap());
    eprintln!("used_memory after each 5 MiB round: {samples:?}");
    assert!(
        last < first + (1 << 20),
        "used_memory grew from {first} to {last} over 25 MiB of acked messages: {samples:?}"
    );
}

#[test]
fn redis_down_fails_publishes_and_the_driver_carries_on_after() {
    let mut redis = RedisServer::start().unwrap();
    let q = open(&redis, |c| c.command_timeout_ms = 1000);
    let d: DriverHandle = q.clone();
    let dest = "/queues/outage";
    let before = publish(&d, dest, b"before").unwrap().id;
    redis.kill();
    // Every publish while Redis is away fails, as Unavailable with a hint.
    for i in 0..20 {
        let f = publish(&d, dest, format!("during {i}").as_bytes())
            .expect_err("a publish while redis is down was confirmed");
        assert_eq!(f.kind, FailureKind::Unavailable, "{f}");
        assert!(f.retry_after.is_some(), "no retry hint: {f}");
    }
    assert!(!q.is_up());
    assert!(d.stats().iter().all(|s| s.store_full == 1));
    redis.restart().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let after = loop {
        match publish(&d, dest, b"after") {
            Ok(r) => break r.id,
            Err(f) if Instant::now() < deadline => {
                assert_eq!(f.kind, FailureKind::Unavailable, "{f}");
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(f) => panic!("still failing 20 s after redis came back: {f}"),
        }
    };
    let (c, rx) = Consumer::channel();
    let _sub = d
        .subscribe(
            dest,
            c,
            SubscribeOptions {
                credit: 10,
                lease: Duration::from_secs(60),
            },
        )
        .unwrap();
    let got: Vec<(MessageId, String)> = (0..2)
        .map(|_| {
            let m = next(&rx);
            (m.id, String::from_utf8_lossy(&m.body).into_owned())
        })
        .collect();
    assert_eq!(
        got,
        vec![(before, "before".into()), (after, "after".into())],
        "the confirmed messages, and none of the refused"
    );
    assert!(rx.recv_timeout(Duration::from_millis(300)).is_err());
}

#[test]
fn a_stopped_instance_leases_go_to_another_with_their_count() {
    let redis = RedisServer::start().unwrap();
    let a = open(&redis, |c| c.orphan_after_ms = 1000);
    let b = open(&redis, |c| c.orphan_after_ms = 1000);
    let (da, db): (DriverHandle, DriverHandle) = (a.clone(), b.clone());
    let dest = "/queues/orphans";
    let id = publish(&db, dest, b"held by a").unwrap().id;
    let (c, rx) = Consumer::channel();
    let sub = da
        .subscribe(
            dest,
            c,
            SubscribeOptions {
                credit: 1,
                lease: Duration::from_secs(600),
            },
        )
        .unwrap();
    let m = next(&rx);
    assert_eq!((m.id, m.delivery_count), (id, 1));
    // A stops holding a 10-minute lease: it no longer renews it in Redis.
    drop(sub);
    da.stop();
    let (c, rx) = Consumer::channel();
    let _sub = db
        .subscribe(
            dest,
            c,
            SubscribeOptions {
                credit: 1,
                lease: Duration::from_secs(600),
            },
        )
        .unwrap();
    let m = next(&rx);
    assert_eq!((m.id, m.delivery_count), (id, 2), "claimed, counted");
    // An ack through either instance settles it; the other one's fails.
    ack(&db, dest, id).unwrap();
    assert_eq!(ack(&db, dest, id).unwrap_err().kind, FailureKind::NotFound);
}

#[test]
fn a_message_published_on_one_instance_is_consumed_and_acked_on_another() {
    let redis = RedisServer::start().unwrap();
    let (a, b, c) = (
        open(&redis, |_| {}),
        open(&redis, |_| {}),
        open(&redis, |_| {}),
    );
    let (da, db, dc): (DriverHandle, DriverHandle, DriverHandle) = (a, b, c);
    let dest = "/queues/across";
    let id = publish(&da, dest, b"hello").unwrap().id;
    let (consumer, rx) = Consumer::channel();
    let _sub = db
        .subscribe(dest, consumer, SubscribeOptions::default())
        .unwrap();
    let m = next(&rx);
    assert_eq!(
        (m.id, &m.body[..], m.delivery_count),
        (id, &b"hello"[..], 1)
    );
    ack(&dc, dest, id).unwrap();
    // B, which leased it, acks too: refused, and the queue's byte count
    // (taken off by both) comes back right.
    assert_eq!(ack(&db, dest, id).unwrap_err().kind, FailureKind::NotFound);
    let bytes = format!("t:b:{dest}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while redis.command(&["GET", &bytes]).unwrap() != "0" {
        assert!(Instant::now() < deadline, "the byte count stayed off");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        redis.command(&["XLEN", &format!("t:q:{dest}")]).unwrap(),
        "0"
    );
}

#[test]
fn unknown_config_fields_and_bad_values_are_refused() {
    let e = serde_json::from_str::<Config>(r#"{"url": "redis://127.0.0.1/", "prefx": "x"}"#)
        .unwrap_err();
    assert!(e.to_string().contains("prefx"), "{e}");
    let e = RedisQueue::open(Config {
        url: "nonsense://".into(),
        ..Config::default()
    })
    .err()
    .unwrap();
    assert!(e.contains("url"), "{e}");
    let e = RedisQueue::open(Config {
        pool_size: 0,
        ..Config::default()
    })
    .err()
    .unwrap();
    assert!(e.contains("pool_size"), "{e}");
}

#[test]
fn min_replicas_holds_confirms_until_a_replica_has_the_message() {
    let primary = RedisServer::start().unwrap();
    let q = open(&primary, |c| {
        c.min_replicas = 1;
        c.replica_timeout_ms = 200;
    });
    let d: DriverHandle = q.clone();
    let f = publish(&d, "/queues/replicated", b"alone").unwrap_err();
    assert_eq!(f.kind, FailureKind::Unavailable, "{f}");
    assert!(f.reason.contains("min_replicas"), "{f}");
    let port = primary.port().to_string();
    let _replica = RedisServer::start_with(&["--replicaof", "127.0.0.1", &port]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match publish(&d, "/queues/replicated", b"replicated") {
            Ok(_) => break,
            Err(f) if Instant::now() < deadline => {
                assert_eq!(f.kind, FailureKind::Unavailable, "{f}");
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(f) => panic!("no confirm 30 s after a replica started: {f}"),
        }
    }
}

#[test]
fn consumers_of_stopped_instances_are_deleted_once_they_hold_nothing() {
    let redis = RedisServer::start().unwrap();
    let dest = "/queues/restarts";
    let group = |redis: &RedisServer| {
        redis
            .command(&["XINFO", "CONSUMERS", &format!("t:q:{dest}"), "bindery"])
            .unwrap()
            .lines()
            .filter(|l| *l == "name")
            .count()
    };
    // Three instances come, take and ack a message each, and go.
    for i in 0..3 {
        let q = open(&redis, |c| c.orphan_after_ms = 500);
        let d: DriverHandle = q.clone();
        publish(&d, dest, format!("m{i}").as_bytes()).unwrap();
        let (c, rx) = Consumer::channel();
        let sub = d.subscribe(dest, c, SubscribeOptions::default()).unwrap();
        let m = next(&rx);
        ack(&d, dest, m.id).unwrap();
        drop(sub);
        d.stop();
    }
    assert_eq!(group(&redis), 3);
    // A live instance deletes them; it keeps its own (made again by its
    // next read if deleted).
    let q = open(&redis, |c| c.orphan_after_ms = 500);
    let d: DriverHandle = q.clone();
    let (c, rx) = Consumer::channel();
    let _sub = d.subscribe(dest, c, SubscribeOptions::default()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while group(&redis) > 1 {
        assert!(
            Instant::now() < deadline,
            "{} consumers left",
            group(&redis)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    publish(&d, dest, b"still served").unwrap();
    assert_eq!(&next(&rx).body[..], b"still served");
}
