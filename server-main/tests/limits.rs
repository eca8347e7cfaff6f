//! State that clients create is bounded (issue 14): each cap is filled
//! with real clients (curl, mosquitto_pub/sub, raw MQTT where the test
//! needs exact packets), the refusal past it is checked as a client sees
//! it, the count through /metrics (not timing), and the server is shown
//! serving others meanwhile.

mod common;

use std::io::{BufReader, Write};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::children::{Reaped, subscribed, text};
use common::mqtt::{connack, connect_packet, publish_packet, raw, read_packet, subscribe_packet};
use common::{Server, config, metric};

/// curl: the status and the body.
fn curl(args: &[&str]) -> (u16, String) {
    let o = Command::new("curl")
        .args(["-s", "-w", "\n%{http_code}"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    let (body, code) = out.rsplit_once('\n').unwrap_or(("", &out));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}

fn mosquitto(tool: &str, at: SocketAddr, args: &[&str]) -> Command {
    let mut c = Command::new(tool);
    c.args(["-h", &at.ip().to_string(), "-p", &at.port().to_string()])
        .args(args)
        .stdin(Stdio::null());
    c
}

/// How many memory queues /metrics lists.
fn queues(s: &Server) -> usize {
    let text = common::agent()
        .get(&s.url("/metrics"))
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    text.lines()
        .filter(|l| {
            l.starts_with("bindery_destination_depth{") && l.contains("instance=\"queues\"")
        })
        .count()
}

#[test]
fn queues_made_on_first_use_stop_at_max_queues_with_507() {
    let s = Server::start(&config("[instances.queues.config]\nmax_queues = 3\n"));
    for i in 0..3 {
        let (code, body) = curl(&["-d", "m", &s.url(&format!("/queues/q{i}"))]);
        assert!(code < 300, "q{i}: {code} {body}");
    }
    let (code, body) = curl(&["-i", "-d", "m", &s.url("/queues/q3")]);
    assert_eq!(code, 507, "{body}");
    assert!(
        body.contains("max_queues") && body.contains("maximum of 3"),
        "{body}"
    );
    assert!(
        !body.contains("Retry-After"),
        "waiting does not lift a cap: {body}"
    );
    assert_eq!(queues(&s), 3, "no fourth queue was made");
    // Again: still refused, still three.
    assert_eq!(curl(&["-d", "m", &s.url("/queues/q4")]).0, 507);
    assert_eq!(queues(&s), 3);
    // The queues made are served: publish and take.
    let (code, _) = curl(&["-d", "second", &s.url("/queues/q0")]);
    assert!(code < 300, "{code}");
    let (code, body) = curl(&[&s.url("/queues/q0")]);
    assert_eq!((code, body.as_str()), (200, "m"));
    // Another driver's destinations are not counted against it.
    let (code, body) = curl(&["-d", "m", &s.url("/durable/d0")]);
    assert!(code < 300, "{code} {body}");
}

const RETAINED: &str = "[instances.mqtt.config]\nmax_retained = 3\nmax_retained_bytes = 1000\n";

fn publish_retained(mqtt: SocketAddr, topic: &str, payload: &str) {
    let o = mosquitto(
        "mosquitto_pub",
        mqtt,
        &["-t", topic, "-m", payload, "-r", "-q", "1"],
    )
    .output()
    .unwrap();
    assert!(o.status.success(), "{}", text(&o));
}

/// What a new subscriber to `filter` receives before the marker
/// published after it subscribed (`-v` lines), when `want` retained
/// messages are expected: it stops after `want + 1` messages, so one more
/// retained message would leave the marker out and fail.
fn retained_seen(
    s: &Server,
    mqtt: SocketAddr,
    filter: &str,
    marker: &str,
    want: usize,
) -> Vec<String> {
    let sub = mosquitto("mosquitto_sub", mqtt, &["-t", filter, "-v", "-W", "20"])
        .args(["-C", &(want + 1).to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let sub = Reaped(Some(sub));
    subscribed(s, &format!("/topics/{filter}"));
    let o = mosquitto(
        "mosquitto_pub",
        mqtt,
        &["-t", marker, "-m", "end", "-q", "1"],
    )
    .output()
    .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let o = sub.output();
    let lines: Vec<String> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(
        lines.last().map(String::as_str),
        Some(format!("{marker} end").as_str()),
        "the marker ends what came: {}",
        text(&o)
    );
    lines[..lines.len() - 1].to_vec()
}

#[test]
fn retained_messages_past_their_caps_are_delivered_not_retained() {
    let s = Server::start(&config(RETAINED));
    let mqtt = s.mqtt.unwrap();
    for i in 0..3 {
        publish_retained(mqtt, &format!("r/{i}"), &format!("v{i}"));
    }
    // A subscriber of the moment receives the fourth; it is not retained.
    let live = mosquitto(
        "mosquitto_sub",
        mqtt,
        &["-t", "r/3", "-v", "-C", "1", "-W", "20"],
    )
    .stdout(Stdio::piped())
    .spawn()
    .unwrap();
    let live = Reaped(Some(live));
    subscribed(&s, "/topics/r/3");
    publish_retained(mqtt, "r/3", "v3");
    let o = live.output();
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "r/3 v3\n",
        "{}",
        text(&o)
    );
    let mut seen = retained_seen(&s, mqtt, "r/#", "r/end", 3);
    seen.sort();
    assert_eq!(seen, ["r/0 v0", "r/1 v1", "r/2 v2"]);
    assert_eq!(metric(&s, "bindery_mqtt_retained_messages", "").unwrap(), 3);
    assert_eq!(
        metric(&s, "bindery_mqtt_retained_refused_total", "").unwrap(),
        1
    );

    // Replacing a retained topic keeps the count; clearing one makes room.
    publish_retained(mqtt, "r/0", "new");
    let o = mosquitto("mosquitto_pub", mqtt, &["-t", "r/1", "-n", "-r", "-q", "1"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    publish_retained(mqtt, "r/3", "v3");
    let mut seen = retained_seen(&s, mqtt, "r/#", "r/end", 3);
    seen.sort();
    assert_eq!(seen, ["r/0 new", "r/2 v2", "r/3 v3"]);

    // Past the bytes: the value is not kept, and the topic's older one
    // is dropped with it (no stale value for later subscribers).
    let big = "x".repeat(990);
    publish_retained(mqtt, "r/2", &big);
    let mut seen = retained_seen(&s, mqtt, "r/#", "r/end", 2);
    seen.sort();
    assert_eq!(seen, ["r/0 new", "r/3 v3"]);
    assert_eq!(
        metric(&s, "bindery_mqtt_retained_refused_total", "").unwrap(),
        2
    );
    let bytes = metric(&s, "bindery_mqtt_retained_bytes", "").unwrap();
    assert!(bytes <= 1000, "{bytes}");
    assert!(s.healthy());
}

/// Connects `id` with a persistent session; returns the CONNACK.
fn persistent(mqtt: SocketAddr, id: &str) -> ([u8; 4], std::net::TcpStream) {
    let mut c = raw(mqtt);
    c.write_all(&connect_packet(id, false, 0, None)).unwrap();
    (connack(&mut c), c)
}

#[test]
fn persistent_sessions_past_max_sessions_get_connack_3() {
    let s = Server::start(&config("[instances.mqtt.config]\nmax_sessions = 2\n"));
    let mqtt = s.mqtt.unwrap();
    for id in ["p1", "p2"] {
        let (ack, mut c) = persistent(mqtt, id);
        assert_eq!(ack, [0x20, 2, 0, 0], "{id}");
        c.write_all(&[0xe0, 0]).unwrap();
    }
    assert_eq!(
        metric(&s, "bindery_mqtt_persistent_sessions", "").unwrap(),
        2
    );
    let (ack, mut third) = persistent(mqtt, "p3");
    assert_eq!(ack, [0x20, 2, 0, 3], "server unavailable");
    assert!(common::mqtt::closed(&mut third));
    // mosquitto_sub sees the refusal too.
    let o = mosquitto(
        "mosquitto_sub",
        mqtt,
        &["-i", "p4", "-c", "-t", "x", "-C", "1", "-W", "10"],
    )
    .output()
    .unwrap();
    assert!(!o.status.success(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("unavailable"),
        "{}",
        text(&o)
    );
    assert_eq!(
        metric(&s, "bindery_mqtt_sessions_refused_total", "").unwrap(),
        2
    );
    assert_eq!(
        metric(&s, "bindery_mqtt_persistent_sessions", "").unwrap(),
        2
    );
    // The sessions kept are resumed; clean sessions are served.
    let (ack, _p1) = persistent(mqtt, "p1");
    assert_eq!(ack, [0x20, 2, 1, 0], "p1 resumes its session");
    let o = mosquitto(
        "mosquitto_pub",
        mqtt,
        &["-t", "x", "-m", "clean", "-q", "1"],
    )
    .output()
    .unwrap();
    assert!(o.status.success(), "{}", text(&o));
}

#[test]
fn idle_persistent_sessions_expire_and_make_room() {
    let s = Server::start(&config(
        "[instances.mqtt.config]\nmax_sessions = 1\nsession_expiry_secs = 1\n",
    ));
    let mqtt = s.mqtt.unwrap();
    let (ack, mut c) = persistent(mqtt, "old");
    assert_eq!(ack, [0x20, 2, 0, 0]);
    c.write_all(&[0xe0, 0]).unwrap();
    assert!(common::mqtt::closed(&mut c));
    // Refused while "old" is kept, admitted once it has expired (expiry is
    // checked at each CONNECT): no clock is asserted, only the outcome.
    let mut admitted = None;
    for _ in 0..100 {
        let (ack, c) = persistent(mqtt, "new");
        if ack == [0x20, 2, 0, 0] {
            // Kept connected: an attached session does not expire.
            admitted = Some(c);
            break;
        }
        assert_eq!(ack, [0x20, 2, 0, 3]);
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(admitted.is_some(), "the idle session expired");
    assert_eq!(
        metric(&s, "bindery_mqtt_persistent_sessions", "").unwrap(),
        1
    );
    let (ack, _) = persistent(mqtt, "old");
    assert_eq!(ack, [0x20, 2, 0, 3], "old is gone; new holds the one place");
}

#[test]
fn an_offline_session_holds_at_most_max_queued_bytes() {
    let s = Server::start(&config(
        "[instances.mqtt.config]\nmax_queued_bytes = 1000\n",
    ));
    let mqtt = s.mqtt.unwrap();
    let (ack, mut c) = persistent(mqtt, "away");
    assert_eq!(ack, [0x20, 2, 0, 0]);
    c.write_all(&subscribe_packet(1, "b/#", 1)).unwrap();
    let mut r = BufReader::new(c.try_clone().unwrap());
    assert_eq!(read_packet(&mut r).unwrap().0, 0x90, "SUBACK");
    c.write_all(&[0xe0, 0]).unwrap();
    assert!(common::mqtt::closed(&mut c));
    // Ten of 300 bytes (and the 11 of "/topics/b/x" each): three fit.
    let payload = "y".repeat(300);
    for _ in 0..10 {
        let o = mosquitto(
            "mosquitto_pub",
            mqtt,
            &["-t", "b/x", "-m", &payload, "-q", "1"],
        )
        .output()
        .unwrap();
        assert!(o.status.success(), "{}", text(&o));
    }
    assert_eq!(
        metric(&s, "bindery_mqtt_session_dropped_total", "").unwrap(),
        7
    );
    let (ack, mut c) = persistent(mqtt, "away");
    assert_eq!(ack, [0x20, 2, 1, 0]);
    let mut out = Vec::new();
    publish_packet(&mut out, "b/end", 1, 9, b"end");
    c.write_all(&out).unwrap();
    let mut r = BufReader::new(c.try_clone().unwrap());
    let mut got = 0;
    loop {
        let (head, body) = read_packet(&mut r).unwrap();
        if head >> 4 != 3 {
            continue;
        }
        let tl = usize::from(u16::from_be_bytes([body[0], body[1]]));
        let id = u16::from_be_bytes([body[2 + tl], body[3 + tl]]);
        c.write_all(&[0x40, 2, (id >> 8) as u8, id as u8]).unwrap();
        if body.ends_with(b"end") {
            break;
        }
        got += 1;
    }
    assert_eq!(got, 3, "what fitted in max_queued_bytes");
}

#[test]
fn with_persistence_a_refused_retained_message_is_not_stored_either() {
    let dir = common::TempDir::new();
    let cfg = config(
        "[instances.mqtt.config]\npersistence = \"/durable/mqtt/\"\nmax_retained = 2\nmax_retained_bytes = 100\n",
    );
    let s = Server::start_at(&dir.0, &cfg, &[]);
    let mqtt = s.mqtt.unwrap();
    publish_retained(mqtt, "p/0", "kept");
    publish_retained(mqtt, "p/1", "stale");
    publish_retained(mqtt, "p/2", "refused: a third topic");
    publish_retained(mqtt, "p/1", &"z".repeat(200));
    assert_eq!(
        metric(&s, "bindery_mqtt_retained_refused_total", "").unwrap(),
        2
    );
    assert!(s.terminate().success());
    let s = Server::start_at(&dir.0, &cfg, &[]);
    let mqtt = s.mqtt.unwrap();
    assert_eq!(metric(&s, "bindery_mqtt_retained_messages", "").unwrap(), 1);
    let seen = retained_seen(&s, mqtt, "p/#", "p/end", 1);
    assert_eq!(
        seen,
        ["p/0 kept"],
        "after a restart: neither refusal, nor p/1's stale value"
    );
}
