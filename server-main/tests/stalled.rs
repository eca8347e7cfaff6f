//! One stalled subscriber must not slow anyone else. Each test runs a
//! publisher, a healthy subscriber and one that never reads (a small
//! receive buffer, never read) or never acknowledges, and checks that the
//! healthy one gets every message, that the stalled one is reported as
//! such, and that its messages followed the policy: dropped and counted,
//! or the client disconnected as a slow consumer. How fast the healthy one
//! is, next to a run without the stalled one, is measured by
//! `bindery-bench stalled` (docs/performance.md), not here.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::mqtt::{closed, count_publishes, publish_many, raw, subscribe_on};
use common::{Server, agent, config, metric, stalled_socket};

/// Messages per run: far more than a stalled client's socket buffers,
/// output buffer and session queue hold.
const N: u64 = 20_000;
/// Bytes per message.
const SIZE: usize = 1024;

/// The default server with topics that call a subscriber stalled after
/// 200 ms, under `policy`.
fn server(policy: &str) -> Server {
    Server::start(&config(&format!(
        "[instances.topics.config]\nslow_subscriber = \"{policy}\"\nstall_ms = 200\n"
    )))
}

fn dest(topic: &str) -> String {
    format!("destination=\"/topics/{topic}\"")
}

#[test]
fn a_stalled_mqtt_subscriber_slows_nobody_and_loses_only_its_own_messages() {
    for policy in ["drop-oldest", "drop-newest", "disconnect"] {
        let s = server(policy);
        let m = s.mqtt.unwrap();
        let topic = "load/stalled";
        let mut stalled = stalled_socket(m);
        subscribe_on(&mut stalled, "stalled", topic, 0);
        let mut healthy = raw(m);
        subscribe_on(&mut healthy, "healthy", topic, 0);
        let reader = std::thread::spawn(move || count_publishes(healthy, N, false));
        publish_many(m, topic, 0, N, SIZE);
        assert_eq!(
            reader.join().unwrap(),
            N,
            "{policy}: the healthy subscriber got all"
        );
        stalled_client_followed_the_policy(
            &s,
            policy,
            topic,
            "bindery_mqtt_subscriptions_ended_total",
            &mut stalled,
        );
    }
}

/// After a run: the stalled client's messages were dropped and counted,
/// and it is reported as stalled or, under `disconnect`, was closed and
/// counted in `ended_metric`; the server serves on.
fn stalled_client_followed_the_policy(
    s: &Server,
    policy: &str,
    topic: &str,
    ended_metric: &str,
    stalled: &mut TcpStream,
) {
    let dropped = metric(s, "bindery_messages_dropped_total", &dest(topic)).unwrap();
    assert!(
        dropped > 0,
        "{policy}: the stalled client's drops are counted"
    );
    if policy == "disconnect" {
        assert_eq!(
            metric(s, ended_metric, "").unwrap(),
            1,
            "{policy}: one slow consumer disconnected"
        );
        assert!(closed(stalled), "{policy}: the stalled client was closed");
    } else {
        assert_eq!(
            metric(s, "bindery_destination_stalled_subscribers", &dest(topic)),
            Some(1),
            "{policy}: the stalled client is reported"
        );
    }
    assert!(s.healthy());
}

#[test]
fn a_qos1_subscriber_that_never_acknowledges_slows_nobody() {
    let s = server("drop-oldest");
    let m = s.mqtt.unwrap();
    let topic = "load/unacked";
    // Reads everything, acknowledges nothing: its in-flight window fills.
    let mut silent = raw(m);
    assert_eq!(subscribe_on(&mut silent, "silent", topic, 1), 1);
    let sink = std::thread::spawn(move || closed(&mut silent));
    let mut healthy = raw(m);
    subscribe_on(&mut healthy, "healthy", topic, 1);
    let reader = std::thread::spawn(move || count_publishes(healthy, N, true));
    publish_many(m, topic, 1, N, SIZE);
    assert_eq!(reader.join().unwrap(), N, "the healthy subscriber got all");
    assert_eq!(
        metric(&s, "bindery_destination_stalled_subscribers", &dest(topic)),
        Some(1)
    );
    assert!(metric(&s, "bindery_messages_dropped_total", &dest(topic)).unwrap() > 0);
    drop(s);
    assert!(
        sink.join().unwrap(),
        "the silent client saw the server stop"
    );
}

/// Opens an event stream on `path` over `stream` and reads the response
/// head unless `stalled`.
fn event_stream(s: &Server, mut stream: TcpStream, path: &str) -> TcpStream {
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\n\r\n",
        s.addr
    )
    .unwrap();
    stream
}

/// Reads an event stream's head, then counts `message` events until
/// `want` arrived or nothing came for the read timeout.
fn count_events(stream: TcpStream, want: u64) -> u64 {
    let mut r = BufReader::with_capacity(64 * 1024, stream);
    let mut line = String::new();
    let mut got = 0;
    while got < want {
        line.clear();
        match r.read_line(&mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) if line == "event: message\n" => got += 1,
            Ok(_) => {}
        }
    }
    got
}

/// Waits until `path` has `n` subscribers (an event stream's subscription
/// is made when its request is read, which the client cannot see).
fn subscribers(s: &Server, topic: &str, n: u64) {
    for _ in 0..200 {
        if metric(s, "bindery_destination_consumers", &dest(topic)) == Some(n) {
            return;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!("{topic} never had {n} subscribers");
}

#[test]
fn a_stalled_event_stream_slows_nobody() {
    for policy in ["drop-oldest", "disconnect"] {
        let s = server(policy);
        let m = s.mqtt.unwrap();
        let topic = "load/sse";
        let path = format!("/topics/{topic}");
        let mut stalled = event_stream(&s, stalled_socket(s.addr), &path);
        let healthy = event_stream(&s, raw(s.addr), &path);
        subscribers(&s, topic, 2);
        let reader = std::thread::spawn(move || count_events(healthy, N));
        // An MQTT publisher: the one whose pace the backlog sets.
        publish_many(m, topic, 0, N, SIZE);
        assert_eq!(
            reader.join().unwrap(),
            N,
            "{policy}: the healthy stream got all"
        );
        stalled_client_followed_the_policy(
            &s,
            policy,
            topic,
            "bindery_http_streams_ended_total",
            &mut stalled,
        );
    }
}

#[test]
fn a_stalled_queue_consumer_holds_back_only_its_leases() {
    // Leases of one second: what the stalled consumer took comes back soon.
    let s = Server::start(&config(
        "[instances.http.config]\ndefault_lease_secs = 1\nstream_credit = 4\n",
    ));
    let path = "/queues/work";
    let _stalled = event_stream(&s, stalled_socket(s.addr), path);
    let a = agent();
    // Large enough that the stalled consumer's socket buffers fill.
    let body = vec![b'q'; 64 * 1024];
    let n = 300;
    let mut sent = std::collections::HashSet::new();
    for _ in 0..n {
        let r = a
            .post(&s.url(path))
            .set("Content-Type", "application/octet-stream")
            .send_bytes(&body)
            .unwrap();
        sent.insert(r.header("Message-Id").unwrap().to_owned());
    }
    let mut taken = std::collections::HashSet::new();
    for _ in 0..(n * 3) {
        if taken.len() == n {
            break;
        }
        let r = a
            .get(&s.url(&format!("{path}?wait=5&lease=60")))
            .call()
            .unwrap();
        if r.status() == 204 {
            continue;
        }
        let id = r.header("Message-Id").unwrap().to_owned();
        let _ = r.into_reader().read_to_end(&mut Vec::new());
        a.delete(&s.url(&format!("{path}/messages/{id}")))
            .call()
            .unwrap();
        taken.insert(id);
    }
    assert_eq!(taken, sent, "the healthy consumer got every message");
}
