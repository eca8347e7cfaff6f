//! Several `bindery` processes on one real `redis-server` (started here on
//! a free loopback port, append-only with `appendfsync always`, and
//! stopped at the end): `driver.redisqueue` at `/shared/` and
//! `driver.redistopic` at `/topics/` make them one cluster. Driven with a
//! real HTTP client (ureq) and raw MQTT.

mod common;

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bindery_conformance::redis::RedisServer;
use common::{Server, agent, config, outcome};

/// A node's configuration: the stock one, with a shared queue at
/// `/shared/` and the topics at `/topics/` (MQTT's too) on `redis`.
fn node_config(redis: &RedisServer) -> String {
    let url = redis.url();
    config(&format!(
        "[instances.shared]\nmodule = \"driver.redisqueue\"\nbind = [\"/shared/\"]\n\
         config = {{ url = \"{url}\", prefix = \"cluster:\", orphan_after_ms = 1500, \
         command_timeout_ms = 1000 }}\n"
    ))
    .replace(
        "module = \"driver.topic\"\nbind = [\"/topics/\"]",
        &format!(
            "module = \"driver.redistopic\"\nbind = [\"/topics/\"]\n\
             config = {{ url = \"{url}\", prefix = \"cluster:\" }}"
        ),
    )
}

fn nodes(redis: &RedisServer, n: usize) -> Vec<Server> {
    (0..n).map(|_| Server::start(&node_config(redis))).collect()
}

/// Status, Message-Id (or Retry-After for an error).
fn publish(s: &Server, path: &str, body: &str) -> (u16, Option<String>) {
    match agent()
        .post(&s.url(path))
        .set("Content-Type", "text/plain")
        .send_string(body)
    {
        Ok(r) => (r.status(), r.header("Message-Id").map(str::to_owned)),
        Err(ureq::Error::Status(code, r)) => (code, r.header("Retry-After").map(str::to_owned)),
        Err(e) => panic!("{e}"),
    }
}

/// A message taken with GET: id, body, Delivery-Count.
struct Taken {
    id: String,
    body: String,
    count: u32,
}

/// GET with `query`; `None` on 204.
fn take(s: &Server, path: &str, query: &str) -> Option<Taken> {
    let r = agent()
        .get(&format!("{}{query}", s.url(path)))
        .call()
        .unwrap();
    if r.status() == 204 {
        return None;
    }
    assert_eq!(r.status(), 200);
    let id = r.header("Message-Id").unwrap().to_owned();
    let count = r.header("Delivery-Count").unwrap().parse().unwrap();
    Some(Taken {
        id,
        count,
        body: r.into_string().unwrap(),
    })
}

fn ack(s: &Server, queue: &str, id: &str) -> u16 {
    outcome(
        agent()
            .delete(&s.url(&format!("{queue}/messages/{id}")))
            .call(),
    )
    .0
}

/// Acks as a client does that honours 503 + Retry-After: retries; a retry
/// may find the ack already kept (404).
fn ack_retrying(s: &Server, queue: &str, id: &str) {
    for attempt in 0..50 {
        match ack(s, queue, id) {
            204 => return,
            404 if attempt > 0 => return,
            503 => std::thread::sleep(Duration::from_millis(100)),
            status => panic!("ack of {id}: {status}"),
        }
    }
    panic!("ack of {id}: 503 for 5 s");
}

fn sse(s: &Server, path: &str) -> BufReader<Box<dyn std::io::Read + Send + Sync>> {
    let r = agent()
        .get(&s.url(path))
        .set("Accept", "text/event-stream")
        .call()
        .unwrap();
    assert_eq!(r.status(), 200);
    BufReader::new(r.into_reader())
}

fn read_event(lines: &mut impl BufRead) -> String {
    let mut data = Vec::new();
    loop {
        let mut line = String::new();
        assert!(lines.read_line(&mut line).unwrap() > 0, "stream ended");
        let line = line.trim_end_matches('\n');
        if line.is_empty() && !data.is_empty() {
            return data.join("\n");
        }
        if let Some(v) = line.strip_prefix("data: ") {
            data.push(v.to_owned());
        }
    }
}

#[test]
fn three_nodes_serve_one_queue_and_one_set_of_topics() {
    let redis = RedisServer::start().unwrap();
    let n = nodes(&redis, 3);
    // Queue: publish on A, take on B, ack on C.
    let (status, id) = publish(&n[0], "/shared/orders", "order 1");
    assert_eq!(status, 201);
    let got = take(&n[1], "/shared/orders", "?wait=5&lease=60").expect("a message");
    assert_eq!(
        (Some(got.id.clone()), got.body.as_str(), got.count),
        (id, "order 1", 1)
    );
    assert_eq!(ack(&n[2], "/shared/orders", &got.id), 204);
    assert_eq!(ack(&n[0], "/shared/orders", &got.id), 404);
    // Topics: SSE subscribers on B and C, an MQTT subscriber on C; a
    // publish on A reaches them all.
    let mut on_b = sse(&n[1], "/topics/news");
    let mut on_c = sse(&n[2], "/topics/news");
    let mut mqtt = common::mqtt::raw(n[2].mqtt.unwrap());
    common::mqtt::subscribe_on(&mut mqtt, "cluster-sub", "news", 0);
    assert_eq!(publish(&n[0], "/topics/news", "hello everyone").0, 201);
    assert_eq!(read_event(&mut on_b), "hello everyone");
    assert_eq!(read_event(&mut on_c), "hello everyone");
    let mut r = BufReader::new(mqtt);
    let (head, body) = common::mqtt::read_packet(&mut r).unwrap();
    assert_eq!(head >> 4, 3, "a PUBLISH");
    assert!(body.ends_with(b"hello everyone"), "{body:?}");
}

#[test]
fn competing_consumers_on_every_node_get_each_message_exactly_once() {
    const N: usize = 300;
    let redis = RedisServer::start().unwrap();
    let n = Arc::new(nodes(&redis, 3));
    for i in 0..N {
        assert_eq!(publish(&n[i % 3], "/shared/work", &format!("w{i}")).0, 201);
    }
    let got = Arc::new(Mutex::new(Vec::new()));
    let count = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = (0..6)
        .map(|t| {
            let (n, got, count) = (n.clone(), got.clone(), count.clone());
            std::thread::spawn(move || {
                let node = &n[t % 3];
                while count.load(Ordering::SeqCst) < N {
                    let Some(m) = take(node, "/shared/work", "?wait=1&lease=60") else {
                        continue;
                    };
                    assert_eq!(m.count, 1, "{} delivered before", m.body);
                    assert_eq!(ack(node, "/shared/work", &m.id), 204);
                    got.lock().unwrap().push(m.body);
                    count.fetch_add(1, Ordering::SeqCst);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let got = got.lock().unwrap();
    let unique: HashSet<&String> = got.iter().collect();
    assert_eq!(got.len(), N, "a message came twice");
    assert_eq!(unique.len(), N);
    for i in 0..N {
        assert!(unique.contains(&format!("w{i}")), "w{i} lost");
    }
}

#[test]
fn a_killed_node_leases_come_back_on_another_with_their_count() {
    let redis = RedisServer::start().unwrap();
    let mut n = nodes(&redis, 2);
    let mut ids = HashMap::new();
    for i in 0..5 {
        let (status, id) = publish(&n[0], "/shared/jobs", &format!("j{i}"));
        assert_eq!(status, 201);
        ids.insert(id.unwrap(), format!("j{i}"));
    }
    // B takes all five with a long lease, and dies holding them.
    for _ in 0..5 {
        let m = take(&n[1], "/shared/jobs", "?wait=5&lease=600").expect("a message");
        assert_eq!(m.count, 1);
    }
    n.pop().unwrap().kill9();
    // A gets them once B has stopped renewing them (orphan_after_ms).
    let mut back = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while back.len() < 5 && Instant::now() < deadline {
        if let Some(m) = take(&n[0], "/shared/jobs", "?wait=5&lease=60") {
            assert_eq!(m.count, 2, "{}: redelivery counted {}", m.body, m.count);
            assert_eq!(ack(&n[0], "/shared/jobs", &m.id), 204);
            back.insert(m.id, m.body);
        }
    }
    assert_eq!(back, ids, "every leased message came back, once");
}

/// A short lease held by a node that dies comes back when the lease ends,
/// not `orphan_after_ms` later: the holder set the entries' idle time in
/// Redis to reach `orphan_after_ms` at the lease's end. (Ten minutes of
/// `orphan_after_ms` here: only the lease can bring them back in time.)
#[test]
fn a_killed_node_short_leases_come_back_when_the_lease_ends() {
    let redis = RedisServer::start().unwrap();
    let text = node_config(&redis).replace("orphan_after_ms = 1500", "orphan_after_ms = 600000");
    let mut n: Vec<Server> = (0..2).map(|_| Server::start(&text)).collect();
    let mut ids = HashMap::new();
    for i in 0..3 {
        let (status, id) = publish(&n[0], "/shared/short", &format!("s{i}"));
        assert_eq!(status, 201);
        ids.insert(id.unwrap(), format!("s{i}"));
    }
    for _ in 0..3 {
        let m = take(&n[1], "/shared/short", "?wait=5&lease=2").expect("a message");
        assert_eq!(m.count, 1);
    }
    // The holder sets the idle times a moment after it delivers (its next
    // round with Redis); a node killed before that loses its short leases
    // to orphan_after_ms like a long one. Wait (bounded) until Redis shows
    // all three set: idle near orphan_after_ms minus what is left.
    let tuned = || {
        let reply = redis
            .command(&[
                "XPENDING",
                "cluster:q:/shared/short",
                "bindery",
                "-",
                "+",
                "10",
            ])
            .unwrap_or_default();
        reply
            .lines()
            .filter_map(|l| l.trim().parse::<u64>().ok())
            .filter(|&idle| idle > 300_000)
            .count()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while tuned() < 3 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    n.pop().unwrap().kill9();
    let mut back = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while back.len() < 3 && Instant::now() < deadline {
        if let Some(m) = take(&n[0], "/shared/short", "?wait=5&lease=60") {
            assert_eq!(m.count, 2, "{}: redelivery counted {}", m.body, m.count);
            assert_eq!(ack(&n[0], "/shared/short", &m.id), 204);
            back.insert(m.id, m.body);
        }
    }
    assert_eq!(back, ids, "every leased message came back, once");
}

#[test]
fn a_redis_restart_under_load_loses_no_confirmed_message() {
    let mut redis = RedisServer::start().unwrap();
    let n = Arc::new(nodes(&redis, 2));
    let stop = Arc::new(AtomicBool::new(false));
    let confirmed = Arc::new(Mutex::new(Vec::new()));
    let refused = Arc::new(Mutex::new(Vec::new()));
    let publisher = {
        let (n, stop, confirmed, refused) =
            (n.clone(), stop.clone(), confirmed.clone(), refused.clone());
        std::thread::spawn(move || {
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) {
                let body = format!("m{i}");
                match publish(&n[0], "/shared/load", &body) {
                    (201, _) => confirmed.lock().unwrap().push(body),
                    (503, retry) => {
                        assert!(retry.is_some(), "a 503 without Retry-After");
                        refused.lock().unwrap().push(body);
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    (status, _) => panic!("publish {i}: status {status}"),
                }
                i += 1;
            }
        })
    };
    let wait_for = |what: &str, f: &dyn Fn() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !f() {
            assert!(Instant::now() < deadline, "{what} within 60 s");
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    wait_for("100 confirmed publishes", &|| {
        confirmed.lock().unwrap().len() >= 100
    });
    redis.kill();
    wait_for("publishes refused while redis is down", &|| {
        refused.lock().unwrap().len() >= 5
    });
    let before = confirmed.lock().unwrap().len();
    redis.restart().unwrap();
    wait_for("100 more confirmed publishes after the restart", &|| {
        confirmed.lock().unwrap().len() >= before + 100
    });
    stop.store(true, Ordering::SeqCst);
    publisher.join().unwrap();
    // Every confirmed message is there, once, on the other node. A refused
    // publish may have been stored (its answer lost): it may come, counted
    // as such, but nothing else may.
    let confirmed: HashSet<String> = confirmed.lock().unwrap().drain(..).collect();
    let refused: HashSet<String> = refused.lock().unwrap().drain(..).collect();
    let mut seen = HashSet::new();
    while let Some(m) = take(&n[1], "/shared/load", "?wait=2&lease=60") {
        assert!(
            confirmed.contains(&m.body) || refused.contains(&m.body),
            "{} was never published",
            m.body
        );
        assert!(seen.insert(m.body.clone()), "{} came twice", m.body);
        ack_retrying(&n[1], "/shared/load", &m.id);
    }
    let lost: Vec<&String> = confirmed.difference(&seen).collect();
    assert!(
        lost.is_empty(),
        "{} confirmed messages lost: {lost:?}",
        lost.len()
    );
}

#[test]
fn while_redis_is_down_an_mqtt_qos1_publish_is_not_acknowledged() {
    use std::io::{Read, Write};
    let mut redis = RedisServer::start().unwrap();
    let n = nodes(&redis, 1);
    let mqtt = n[0].mqtt.unwrap();
    let publish_qos1 = |id: &str| {
        let mut s = common::mqtt::raw(mqtt);
        s.write_all(&common::mqtt::connect_packet(id, true, 0, None))
            .unwrap();
        assert_eq!(common::mqtt::connack(&mut s), [0x20, 2, 0, 0]);
        let mut out = Vec::new();
        common::mqtt::publish_packet(&mut out, "news/outage", 1, 7, b"hello");
        s.write_all(&out).unwrap();
        s
    };
    // Redis up: PUBACK.
    let mut s = publish_qos1("up");
    let mut puback = [0u8; 4];
    s.read_exact(&mut puback).unwrap();
    assert_eq!(puback, [0x40, 2, 0, 7]);
    // Redis down: no PUBACK; the connection is closed, so the client
    // publishes again once it reconnects.
    redis.kill();
    let mut s = publish_qos1("down");
    let mut got = [0u8; 4];
    match s.read(&mut got) {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Ok(k) => panic!("got {:?} instead of a close: acknowledged?", &got[..k]),
        Err(e) => panic!("neither answered nor closed: {e}"),
    }
    // The server still serves others.
    assert!(n[0].healthy());
}

#[test]
fn readyz_and_the_management_api_say_when_redis_is_down_and_when_it_is_back() {
    let mut redis = RedisServer::start().unwrap();
    let node = Server::start(&node_config(&redis));
    let ready = || {
        let (status, body, _) = outcome(agent().get(&node.url("/readyz")).call());
        (status, body)
    };
    let until = |what: &str, f: &dyn Fn() -> bool| {
        let end = std::time::Instant::now() + Duration::from_secs(20);
        while !f() {
            assert!(std::time::Instant::now() < end, "{what} within 20 s");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    until(&format!("ready with redis up ({:?})", ready()), &|| {
        ready().0 == 200
    });
    redis.kill();
    until("both redis instances not ready with redis down", &|| {
        let (status, body) = ready();
        status == 503 && body.contains("shared:") && body.contains("topics:")
    });
    let (_, body) = ready();
    assert!(
        body.contains("shared: redis at") && body.contains("unreachable"),
        "{body}"
    );
    assert!(body.contains("topics: redis at"), "{body}");
    assert!(
        !body.contains("cluster:"),
        "no password or prefix noise: {body}"
    );
    // The management API says it per instance; the node stays alive.
    let token = std::fs::read_to_string(&node.token_file).unwrap();
    let shared: serde_json::Value = serde_json::from_str(
        &agent()
            .get(&format!(
                "http://{}/v1/instances/shared",
                node.manage.unwrap()
            ))
            .set("Authorization", &format!("Bearer {}", token.trim()))
            .call()
            .unwrap()
            .into_string()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(shared["state"], "running");
    assert!(
        shared["degraded"]
            .as_str()
            .unwrap_or("")
            .contains("unreachable"),
        "{shared}"
    );
    assert!(node.healthy(), "/healthz stays a liveness check");
    redis.restart().unwrap();
    until("ready again once redis is back", &|| ready().0 == 200);
}

#[test]
fn a_node_reaches_redis_over_tls_and_refuses_a_redis_it_does_not_trust() {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let dir = common::TempDir::new();
    let write = |name: &str, text: String| {
        let path = dir.0.join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    };
    let ca = |name: &str| {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(rcgen::DnType::CommonName, name);
        (p.self_signed(&key).unwrap(), key)
    };
    let (ca_cert, ca_key) = ca("redis test CA");
    let (other_ca, _) = ca("someone else");
    let server_key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    p.subject_alt_names
        .push(rcgen::SanType::IpAddress("127.0.0.1".parse().unwrap()));
    let server_cert = p.signed_by(&server_key, &ca_cert, &ca_key).unwrap();
    let ca_path = write("ca.pem", ca_cert.pem());
    let other_path = write("other.pem", other_ca.pem());
    let cert_path = write("redis.pem", server_cert.pem());
    let key_path = write("redis.key", server_key.serialize_pem());
    let tls_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
        .to_string();
    let redis = RedisServer::start_with(&[
        "--tls-port",
        &tls_port,
        "--tls-cert-file",
        &cert_path,
        "--tls-key-file",
        &key_path,
        "--tls-ca-cert-file",
        &ca_path,
        "--tls-auth-clients",
        "no",
    ])
    .unwrap();
    let node = |ca: &str| {
        Server::start(&config(&format!(
            "[instances.shared]\nmodule = \"driver.redisqueue\"\nbind = [\"/shared/\"]\n\
             config = {{ url = \"rediss://127.0.0.1:{tls_port}/\", tls_ca = \"{ca}\", \
             prefix = \"tls:\", command_timeout_ms = 1000 }}\n"
        )))
    };
    let trusted = node(&ca_path);
    assert_eq!(publish(&trusted, "/shared/q", "over tls").0, 201);
    let taken = take(&trusted, "/shared/q", "?wait=5").expect("a message over TLS");
    assert_eq!(taken.body, "over tls");
    // The same Redis through the plain port has it: it is one store.
    assert!(redis.command(&["KEYS", "tls:*"]).unwrap().contains("tls:"));
    drop(trusted);
    let wary = node(&other_path);
    let (status, _) = publish(&wary, "/shared/q", "refused");
    assert_eq!(
        status, 503,
        "a Redis whose certificate the node does not trust"
    );
}

/// MQTT retained messages live in Redis with the topics: set on node A,
/// a subscriber on node B gets it (retain flag set); cleared on B, a
/// subscriber on A finds nothing; kept while every node restarts.
#[test]
fn mqtt_retained_messages_are_shared_by_the_nodes() {
    use common::conn::Conn;
    let redis = RedisServer::start().unwrap();
    let n = nodes(&redis, 2);
    let (a, b) = (n[0].mqtt.unwrap(), n[1].mqtt.unwrap());
    let (mut p, _) = Conn::open(a, "", true);
    assert!(p.publish("shared/state", 1, true, 1, "on"));
    assert!(p.publish("shared/other", 1, true, 2, "also"));
    let (mut s, _) = Conn::open(b, "", true);
    s.subscribe("shared/state", 1);
    let got = s.next_publish();
    assert_eq!((got.payload.as_str(), got.retain), ("on", true));
    let (mut w, _) = Conn::open(b, "", true);
    w.subscribe("shared/+", 1);
    let mut both = vec![w.next_publish().payload, w.next_publish().payload];
    both.sort();
    assert_eq!(both, ["also", "on"]);
    // Cleared through B.
    let (mut q, _) = Conn::open(b, "", true);
    assert!(q.publish("shared/state", 1, true, 3, ""));
    let (mut late, _) = Conn::open(a, "", true);
    late.subscribe("shared/state", 1);
    let rest = late.until_marker(a, "shared/state");
    assert!(rest.is_empty(), "cleared: {rest:?}");
    // Every node restarted: Redis keeps it.
    drop(n);
    let n = nodes(&redis, 1);
    let (mut again, _) = Conn::open(n[0].mqtt.unwrap(), "", true);
    again.subscribe("shared/other", 1);
    assert_eq!(again.next_publish().payload, "also");
}

/// A persistent session on node B receives the QoS 1 messages an MQTT
/// client on node A publishes while it is away (the nodes' MQTT
/// instances share a name, not an identity).
#[test]
fn a_persistent_session_on_one_node_keeps_what_another_node_publishes() {
    use common::conn::Conn;
    let redis = RedisServer::start().unwrap();
    let n = nodes(&redis, 2);
    let (a, b) = (n[0].mqtt.unwrap(), n[1].mqtt.unwrap());
    let (mut away, _) = Conn::open(b, "cross-node", false);
    away.subscribe("cross/t", 1);
    away.disconnect();
    let (mut p, _) = Conn::open(a, "", true);
    assert!(p.publish("cross/t", 1, false, 1, "while away"));
    let (mut back, present) = Conn::open(b, "cross-node", false);
    assert!(present);
    let got = back.until_marker(b, "cross/t");
    let payloads: Vec<&str> = got.iter().map(|g| g.payload.as_str()).collect();
    assert_eq!(payloads, ["while away"]);
}
