//! MQTT end to end: the `bindery` binary with a real client library
//! (rumqttc) and, for exact packets and bad input, raw TCP.
//!
//! Longer than most files here: the MQTT terminal's behaviour over real
//! sockets, one test per promise.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::mpsc;
use std::time::Duration;

use common::mqtt::{closed, connack, connect_packet, publish_packet, raw};
use common::{Server, agent, config};
use rumqttc::{Client, Event, MqttOptions, Packet, QoS};

fn start() -> (Server, SocketAddr) {
    let s = Server::start(&config(""));
    let m = s.mqtt.expect("the default configuration serves MQTT");
    (s, m)
}

/// A rumqttc client whose incoming publishes arrive on a channel.
/// A client, and the SUBACKs it has received.
struct Mqttc {
    client: Client,
    subacks: mpsc::Receiver<()>,
    pubacks: mpsc::Receiver<()>,
}

impl std::ops::Deref for Mqttc {
    type Target = Client;
    fn deref(&self) -> &Client {
        &self.client
    }
}

fn client(
    addr: SocketAddr,
    id: &str,
    clean: bool,
) -> (
    Mqttc,
    mpsc::Receiver<rumqttc::Publish>,
    mpsc::Receiver<bool>,
) {
    let mut o = MqttOptions::new(id, addr.ip().to_string(), addr.port());
    o.set_keep_alive(Duration::from_secs(30));
    o.set_clean_session(clean);
    let (c, mut conn) = Client::new(o, 100);
    let (tx, rx) = mpsc::channel();
    let (ctx, crx) = mpsc::channel();
    let (stx, srx) = mpsc::channel();
    let (ptx, prx) = mpsc::channel();
    std::thread::spawn(move || {
        for ev in conn.iter() {
            match ev {
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    if tx.send(p).is_err() {
                        return;
                    }
                }
                Ok(Event::Incoming(Packet::ConnAck(a))) => {
                    let _ = ctx.send(a.session_present);
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    let _ = stx.send(());
                }
                Ok(Event::Incoming(Packet::PubAck(_))) => {
                    let _ = ptx.send(());
                }
                Ok(_) => {}
                Err(_) => return,
            }
        }
    });
    (
        Mqttc {
            client: c,
            subacks: srx,
            pubacks: prx,
        },
        rx,
        crx,
    )
}

/// Subscribes and waits for the SUBACK: the subscription is live then.
fn subscribed(c: &Mqttc, filter: &str, qos: QoS) {
    c.subscribe(filter, qos).unwrap();
    c.subacks
        .recv_timeout(Duration::from_secs(10))
        .expect("a SUBACK within 10 s");
}

/// Publishes at QoS 1 and waits for the PUBACK: the server has it then.
fn published(c: &Mqttc, topic: &str, retain: bool, payload: &str) {
    c.publish(topic, QoS::AtLeastOnce, retain, payload.as_bytes().to_vec())
        .unwrap();
    c.pubacks
        .recv_timeout(Duration::from_secs(10))
        .expect("a PUBACK within 10 s");
}

fn next(rx: &mpsc::Receiver<rumqttc::Publish>) -> rumqttc::Publish {
    rx.recv_timeout(Duration::from_secs(10))
        .expect("a message within 10 s")
}

#[test]
fn publish_and_subscribe_at_every_qos_with_wildcards() {
    let (_s, m) = start();
    let (sub, rx, _) = client(m, "sub", true);
    subscribed(&sub, "sensors/+/temp", QoS::ExactlyOnce);
    let (publ, _prx, _) = client(m, "pub", true);
    for (i, qos) in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce]
        .into_iter()
        .enumerate()
    {
        publ.publish(format!("sensors/k{i}/temp"), qos, false, format!("t{i}"))
            .unwrap();
        let p = next(&rx);
        assert_eq!(p.topic, format!("sensors/k{i}/temp"));
        assert_eq!(&p.payload[..], format!("t{i}").as_bytes());
        assert_eq!(p.qos, qos, "delivered QoS = min(publish, granted)");
    }
    publ.publish("sensors/k9/humidity", QoS::AtLeastOnce, false, "no")
        .unwrap();
    publ.publish("sensors/k9/temp", QoS::AtLeastOnce, false, "yes")
        .unwrap();
    assert_eq!(&next(&rx).payload[..], b"yes");
}

#[test]
fn delivered_qos_is_the_lower_of_publish_and_grant() {
    let (_s, m) = start();
    let (sub, rx, _) = client(m, "low", true);
    subscribed(&sub, "q/#", QoS::AtMostOnce);
    let (publ, _, _) = client(m, "high", true);
    publ.publish("q/x", QoS::ExactlyOnce, false, "x").unwrap();
    assert_eq!(next(&rx).qos, QoS::AtMostOnce);
}

#[test]
fn messages_cross_between_http_and_mqtt() {
    let (s, m) = start();
    let (sub, rx, _) = client(m, "cross", true);
    subscribed(&sub, "orders/#", QoS::AtLeastOnce);
    let r = agent()
        .post(&s.url("/topics/orders/eu"))
        .set("Content-Type", "text/plain")
        .send_string("from http")
        .unwrap();
    assert_eq!(r.status(), 201);
    let p = next(&rx);
    assert_eq!(
        (p.topic.as_str(), &p.payload[..]),
        ("orders/eu", &b"from http"[..])
    );
    // And back: an MQTT publish reaches an HTTP long poll on the topic.
    let url = s.url("/topics/orders/us");
    let poll = std::thread::spawn(move || {
        agent()
            .get(&format!("{url}?wait=10"))
            .call()
            .unwrap()
            .into_string()
            .unwrap()
    });
    // The poll's subscription is not visible from here: publish until the
    // poll has its message (a publish before it subscribed reaches nobody).
    for _ in 0..50 {
        published(&sub, "orders/us", false, "from mqtt");
        if poll.is_finished() {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(poll.join().unwrap(), "from mqtt");
}

#[test]
fn retained_messages_reach_later_subscribers_and_an_empty_one_deletes() {
    let (_s, m) = start();
    let (publ, _, _) = client(m, "retainer", true);
    published(&publ, "state/door", true, "open");
    let (late, rx, _) = client(m, "late", true);
    subscribed(&late, "state/+", QoS::AtLeastOnce);
    let p = next(&rx);
    assert!(
        p.retain,
        "a retained message sent on subscribe has RETAIN set"
    );
    assert_eq!(&p.payload[..], b"open");
    published(&publ, "state/door", true, "");
    let live = next(&rx);
    assert!(!live.retain && live.payload.is_empty());
    let (later, rx2, _) = client(m, "later", true);
    subscribed(&later, "state/+", QoS::AtLeastOnce);
    assert!(
        rx2.recv_timeout(Duration::from_millis(500)).is_err(),
        "the deleted retained message came"
    );
}

#[test]
fn a_persistent_session_keeps_subscriptions_and_queued_messages() {
    let (_s, m) = start();
    {
        let (c, _rx, acks) = client(m, "durable-client", false);
        assert!(
            !acks.recv_timeout(Duration::from_secs(5)).unwrap(),
            "no session yet"
        );
        subscribed(&c, "news/#", QoS::AtLeastOnce);
        c.disconnect().unwrap();
        std::thread::sleep(Duration::from_millis(300));
    }
    let (publ, _, _) = client(m, "newsroom", true);
    for i in 0..3 {
        published(&publ, "news/today", false, &format!("n{i}"));
    }
    let (_c, rx, acks) = client(m, "durable-client", false);
    assert!(
        acks.recv_timeout(Duration::from_secs(5)).unwrap(),
        "session present"
    );
    for i in 0..3 {
        assert_eq!(next(&rx).payload[..], *format!("n{i}").as_bytes());
    }
}

fn still_serves(m: SocketAddr) {
    let mut s = raw(m);
    s.write_all(&connect_packet("", true, 0, None)).unwrap();
    assert_eq!(connack(&mut s), [0x20, 2, 0, 0]);
    s.write_all(&[0xc0, 0]).unwrap();
    let mut b = [0u8; 2];
    s.read_exact(&mut b).unwrap();
    assert_eq!(b, [0xd0, 0]);
}

#[test]
fn bad_input_closes_only_that_connection() {
    let (_s, m) = start();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "malformed remaining length",
            [
                connect_packet("a", true, 0, None),
                vec![0x30, 0xff, 0xff, 0xff, 0xff, 0x01],
            ]
            .concat(),
        ),
        ("a packet before CONNECT", vec![0xc0, 0]),
        (
            "a second CONNECT",
            [
                connect_packet("b", true, 0, None),
                connect_packet("b", true, 0, None),
            ]
            .concat(),
        ),
        (
            "invalid UTF-8 in a topic",
            [
                connect_packet("c", true, 0, None),
                vec![0x30, 5, 0, 2, 0xc3, 0x28, b'x'],
            ]
            .concat(),
        ),
        (
            "a wildcard in a PUBLISH topic",
            [
                connect_packet("d", true, 0, None),
                vec![0x30, 5, 0, 3, b'a', b'/', b'+'],
            ]
            .concat(),
        ),
        (
            "an oversized packet",
            [
                connect_packet("e", true, 0, None),
                vec![0x30, 0x80, 0x80, 0x80, 0x01],
            ]
            .concat(),
        ),
        ("not MQTT at all", b"GET / HTTP/1.1\r\n\r\n".to_vec()),
    ];
    for (what, bytes) in cases {
        let mut s = raw(m);
        s.write_all(&bytes).unwrap();
        assert!(closed(&mut s), "{what}: the connection stayed open");
        still_serves(m);
    }
}

#[test]
fn the_will_is_sent_on_abnormal_disconnect_only() {
    let (_s, m) = start();
    let (sub, rx, _) = client(m, "watcher", true);
    subscribed(&sub, "wills/#", QoS::AtLeastOnce);
    let mut polite = raw(m);
    polite
        .write_all(&connect_packet(
            "polite",
            true,
            0,
            Some(("wills/polite", "gone")),
        ))
        .unwrap();
    connack(&mut polite);
    polite.write_all(&[0xe0, 0]).unwrap();
    assert!(closed(&mut polite));
    let rude = {
        let mut s = raw(m);
        s.write_all(&connect_packet(
            "rude",
            true,
            0,
            Some(("wills/rude", "crashed")),
        ))
        .unwrap();
        connack(&mut s);
        s
    };
    drop(rude);
    let p = next(&rx);
    assert_eq!(
        (p.topic.as_str(), &p.payload[..]),
        ("wills/rude", &b"crashed"[..])
    );
    assert!(
        rx.recv_timeout(Duration::from_millis(500)).is_err(),
        "the polite client's will was sent"
    );
}

#[test]
fn keep_alive_is_enforced_and_takeover_closes_the_first_client() {
    let (_s, m) = start();
    let mut quiet = raw(m);
    quiet
        .write_all(&connect_packet("quiet", true, 1, None))
        .unwrap();
    assert_eq!(connack(&mut quiet), [0x20, 2, 0, 0]);
    assert!(
        closed(&mut quiet),
        "no packets for 1.5 x keep-alive: must be closed"
    );

    let mut first = raw(m);
    first
        .write_all(&connect_packet("twin", true, 0, None))
        .unwrap();
    connack(&mut first);
    let mut second = raw(m);
    second
        .write_all(&connect_packet("twin", true, 0, None))
        .unwrap();
    assert_eq!(connack(&mut second), [0x20, 2, 0, 0]);
    assert!(
        closed(&mut first),
        "the first connection of a client id is closed on takeover"
    );
}

#[test]
fn zero_length_client_ids_and_refused_filters() {
    let (_s, m) = start();
    let mut s = raw(m);
    s.write_all(&connect_packet("", false, 0, None)).unwrap();
    assert_eq!(connack(&mut s), [0x20, 2, 0, 2], "identifier rejected");
    assert!(closed(&mut s));
    let mut s = raw(m);
    s.write_all(&connect_packet("", true, 0, None)).unwrap();
    assert_eq!(connack(&mut s), [0x20, 2, 0, 0]);
    // SUBSCRIBE id 5: "a/#/b" QoS 1 (invalid), "ok/+" QoS 2.
    let mut sub = vec![0x82, 0, 0, 5];
    for (f, q) in [("a/#/b", 1u8), ("ok/+", 2)] {
        sub.extend_from_slice(&(f.len() as u16).to_be_bytes());
        sub.extend_from_slice(f.as_bytes());
        sub.push(q);
    }
    sub[1] = (sub.len() - 2) as u8;
    s.write_all(&sub).unwrap();
    let mut ack = [0u8; 6];
    s.read_exact(&mut ack).unwrap();
    assert_eq!(ack, [0x90, 4, 0, 5, 0x80, 2]);
}

#[test]
fn unacknowledged_messages_are_resent_with_dup_after_reconnect() {
    let (_s, m) = start();
    let subscribe = |s: &mut TcpStream| {
        let f = b"inbox/#";
        let mut p = vec![0x82, 0, 0, 1, 0, f.len() as u8];
        p.extend_from_slice(f);
        p.push(1);
        p[1] = (p.len() - 2) as u8;
        s.write_all(&p).unwrap();
        let mut ack = [0u8; 5];
        s.read_exact(&mut ack).unwrap();
        assert_eq!(ack, [0x90, 3, 0, 1, 1]);
    };
    let mut first = raw(m);
    first
        .write_all(&connect_packet("keeper", false, 0, None))
        .unwrap();
    connack(&mut first);
    subscribe(&mut first);
    let (publ, _, _) = client(m, "sender", true);
    publ.publish("inbox/a", QoS::AtLeastOnce, false, "keep me")
        .unwrap();
    // Read the PUBLISH (QoS 1), do not PUBACK, and drop the connection.
    let mut head = [0u8; 2];
    first.read_exact(&mut head).unwrap();
    assert_eq!(
        head[0] & 0xf6,
        0x32,
        "a QoS 1 PUBLISH without DUP: {head:02x?}"
    );
    let mut rest = vec![0u8; head[1] as usize];
    first.read_exact(&mut rest).unwrap();
    drop(first);
    std::thread::sleep(Duration::from_millis(300));
    let mut again = raw(m);
    again
        .write_all(&connect_packet("keeper", false, 0, None))
        .unwrap();
    assert_eq!(connack(&mut again), [0x20, 2, 1, 0], "session present");
    let mut head2 = [0u8; 2];
    again.read_exact(&mut head2).unwrap();
    assert_eq!(head2[0], 0x3a, "resent with DUP and QoS 1: {head2:02x?}");
    let mut rest2 = vec![0u8; head2[1] as usize];
    again.read_exact(&mut rest2).unwrap();
    assert_eq!(rest2, rest, "the same topic, packet id and payload");
}

#[test]
fn overlapping_subscriptions_deliver_once_at_the_highest_grant() {
    let (_s, m) = start();
    let (sub, rx, _) = client(m, "overlap", true);
    subscribed(&sub, "ov/#", QoS::AtMostOnce);
    subscribed(&sub, "ov/+", QoS::AtLeastOnce);
    let (publ, _, _) = client(m, "ov-pub", true);
    publ.publish("ov/a", QoS::AtLeastOnce, false, "once")
        .unwrap();
    let p = next(&rx);
    assert_eq!((&p.payload[..], p.qos), (&b"once"[..], QoS::AtLeastOnce));
    assert!(
        rx.recv_timeout(Duration::from_millis(500)).is_err(),
        "delivered twice"
    );
}

#[test]
fn mqtt_counters_are_in_the_metrics() {
    let (s, m) = start();
    let mut bad = raw(m);
    bad.write_all(&[0xc0, 0]).unwrap();
    assert!(closed(&mut bad));
    let metrics = agent()
        .get(&s.url("/metrics"))
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    assert!(
        metrics.contains("bindery_mqtt_closed_for_errors_total{instance=\"mqtt\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("bindery_mqtt_session_dropped_total{instance=\"mqtt\"} 0"));
    assert!(metrics.contains("bindery_connections_open{instance=\"mqtt\"}"));
}

#[test]
fn a_leading_wildcard_does_not_match_dollar_topics() {
    let (_s, m) = start();
    let (all, rx_all, _) = client(m, "everything", true);
    subscribed(&all, "#", QoS::AtLeastOnce);
    let (sys, rx_sys, _) = client(m, "system", true);
    subscribed(&sys, "$SYS/#", QoS::AtLeastOnce);
    let (publ, _, _) = client(m, "dollar-pub", true);
    publ.publish("$SYS/load", QoS::AtLeastOnce, false, "0.5")
        .unwrap();
    publ.publish("plain", QoS::AtLeastOnce, false, "x").unwrap();
    assert_eq!(next(&rx_sys).topic, "$SYS/load");
    assert_eq!(next(&rx_all).topic, "plain", "'#' must not match $SYS/load");
}

/// A QoS 2 PUBLISH of `len` bytes to `topic` with packet id `id`.
fn publish_qos2(topic: &str, id: u16, len: usize, dup: bool) -> Vec<u8> {
    let mut out = Vec::new();
    publish_packet(&mut out, topic, 2, id, &vec![b'p'; len]);
    if dup {
        out[0] |= 0x08;
    }
    out
}

#[test]
fn a_qos2_publish_refused_by_a_full_store_closes_and_is_refused_again_on_resend() {
    let s = Server::start(&config(
        "[instances.mqtt.config]\ntopic_root = \"/small/\"\n\n\
         [instances.small]\nmodule = \"driver.filequeue\"\nbind = [\"/small/\"]\n\
         config = { dir = \"bindery-data/small\", segment_bytes = 65536, \
         max_disk_bytes = 131072, min_free_bytes = 0, reserve_bytes = 0 }\n",
    ));
    let m = s.mqtt.expect("mqtt");
    let mut c = raw(m);
    c.write_all(&connect_packet("full-store", false, 0, None))
        .unwrap();
    assert_eq!(connack(&mut c)[3], 0);
    let mut refused = None;
    for id in 1..=100u16 {
        c.write_all(&publish_qos2("q", id, 8192, false)).unwrap();
        let mut b = [0u8; 4];
        match c.read_exact(&mut b) {
            Ok(()) => assert_eq!(b[..2], [0x50, 2], "not a PUBREC: {b:?}"),
            // Refused: MQTT 3.1.1 has no negative PUBREC, so it closes.
            Err(_) => {
                refused = Some(id);
                break;
            }
        }
    }
    let id = refused.expect("100 publishes of 8 KiB into a 128 KiB store, none refused");
    // The client resends on its persistent session: still refused, never
    // acknowledged as a duplicate of a message that was not kept.
    let mut c = raw(m);
    c.write_all(&connect_packet("full-store", false, 0, None))
        .unwrap();
    assert_eq!(connack(&mut c), [0x20, 2, 1, 0], "session present");
    c.write_all(&publish_qos2("q", id, 8192, true)).unwrap();
    assert!(
        closed(&mut c),
        "a refused QoS 2 publish was acknowledged when resent"
    );
}
