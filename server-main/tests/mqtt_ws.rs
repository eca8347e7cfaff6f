//! MQTT over WebSocket end to end: the `bindery` binary's WebSocket
//! listener (the default configuration's, on another loopback address)
//! with tungstenite as the client, crossing to rumqttc over native MQTT and
//! to HTTP; the framing cases a browser or a library produces; and bad
//! input, after which the server still serves another client.

mod common;

use std::net::SocketAddr;
use std::sync::mpsc;
use std::time::Duration;

use common::mqtt::{connect_packet, publish_packet, subscribe_packet};
use common::ws::{self, frame, raw_handshake, request};
use common::{Server, agent, config};
use rumqttc::{Client, Event, MqttOptions, Packet, QoS};
use tungstenite::protocol::CloseFrame;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::{Bytes, Message};

fn start() -> (Server, SocketAddr) {
    let s = Server::start(&config(""));
    let w = s
        .mqtt_ws
        .expect("the default configuration serves MQTT over WebSocket");
    (s, w)
}

/// A rumqttc client subscribed to `filter` (SUBACK seen), and its
/// incoming publishes.
fn native(addr: SocketAddr, id: &str, filter: &str) -> (Client, mpsc::Receiver<rumqttc::Publish>) {
    let mut o = MqttOptions::new(id, addr.ip().to_string(), addr.port());
    o.set_keep_alive(Duration::from_secs(30));
    o.set_max_packet_size(1 << 20, 1 << 20);
    let (c, mut conn) = Client::new(o, 100);
    let (tx, rx) = mpsc::channel();
    let (stx, srx) = mpsc::channel();
    std::thread::spawn(move || {
        for ev in conn.iter() {
            match ev {
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    if tx.send(p).is_err() {
                        return;
                    }
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    let _ = stx.send(());
                }
                Ok(_) => {}
                Err(_) => return,
            }
        }
    });
    c.subscribe(filter, QoS::AtLeastOnce).unwrap();
    srx.recv_timeout(Duration::from_secs(10))
        .expect("a SUBACK within 10 s");
    (c, rx)
}

/// Another client is served: handshake, CONNECT, CONNACK.
fn still_serves(w: SocketAddr) {
    ws::connect(w).mqtt_connect("another");
}

#[test]
fn messages_cross_between_websocket_native_mqtt_and_http() {
    let (s, w) = start();
    let m = s.mqtt.unwrap();
    let mut browser = ws::connect(w);
    browser.mqtt_connect("browser");
    browser.subscribe("to-ws/#", 1);
    let (native, from_ws) = native(m, "native", "from-ws/#");

    // WebSocket -> native MQTT, at QoS 1 (PUBACK once the driver has it).
    let mut p = Vec::new();
    publish_packet(&mut p, "from-ws/a", 1, 7, b"hello native");
    browser.send(&p);
    assert_eq!(browser.packet(), (0x40, vec![0, 7]), "PUBACK");
    let got = from_ws.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(
        (got.topic.as_str(), &got.payload[..]),
        ("from-ws/a", &b"hello native"[..])
    );

    // Native MQTT -> WebSocket.
    native
        .publish("to-ws/b", QoS::AtLeastOnce, false, "hello browser")
        .unwrap();
    assert_eq!(
        browser.publish_in(),
        ("to-ws/b".into(), b"hello browser".to_vec())
    );

    // HTTP -> WebSocket.
    let r = agent()
        .post(&format!("http://{}/topics/to-ws/c", s.addr))
        .send_string("from http")
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(
        browser.publish_in(),
        ("to-ws/c".into(), b"from http".to_vec())
    );

    // Retained messages are the same instance's: kept from native MQTT,
    // read over WebSocket.
    native
        .publish("to-ws/kept", QoS::AtLeastOnce, true, "retained")
        .unwrap();
    assert_eq!(
        browser.publish_in(),
        ("to-ws/kept".into(), b"retained".to_vec())
    );
    let mut late = ws::connect(w);
    late.mqtt_connect("late");
    late.subscribe("to-ws/kept", 1);
    assert_eq!(
        late.publish_in(),
        ("to-ws/kept".into(), b"retained".to_vec())
    );
}

#[test]
fn large_messages_cross_both_ways_in_many_frames() {
    let (s, w) = start();
    let (native, from_ws) = native(s.mqtt.unwrap(), "native-big", "big/from-ws");
    let mut c = ws::connect(w);
    c.mqtt_connect("big");
    c.subscribe("big/to-ws", 0);
    // 300 KiB out of the server: frames of at most 64 KiB, one packet.
    let payload: Vec<u8> = (0..300 * 1024).map(|i| (i % 251) as u8).collect();
    native
        .publish("big/to-ws", QoS::AtMostOnce, false, payload.clone())
        .unwrap();
    let mut frames = 0;
    let got = loop {
        match c.ws.read().expect("a message within 10 s") {
            Message::Binary(b) => {
                assert!(b.len() <= 64 * 1024, "a frame of {} bytes", b.len());
                frames += 1;
                c.pending_push(&b);
                if let Some(p) = c.try_packet() {
                    break p;
                }
            }
            other => panic!("{other:?}"),
        }
    };
    assert!(frames >= 5, "{frames} frames");
    assert!(got.1.ends_with(&payload));
    // 300 KiB into the server in one frame (under max_frame_bytes).
    let mut p = Vec::new();
    publish_packet(&mut p, "big/from-ws", 0, 0, &payload);
    c.send(&p);
    let m = from_ws.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(&m.payload[..], &payload[..]);
}

#[test]
fn a_packet_split_across_frames_and_several_packets_in_one_frame_read_alike() {
    let (_s, w) = start();
    let mut c = ws::connect(w);
    // CONNECT in three messages of a few bytes each.
    let connect = connect_packet("split", true, 30, None);
    for piece in connect.chunks(5) {
        c.send(piece);
    }
    assert_eq!(c.packet(), (0x20, vec![0, 0]));
    // SUBSCRIBE, PUBLISH to itself and PINGREQ in one message.
    let mut many = subscribe_packet(1, "self/#", 0);
    publish_packet(&mut many, "self/x", 0, 0, b"to myself");
    many.extend_from_slice(&[0xc0, 0]);
    c.send(&many);
    assert_eq!(c.packet(), (0x90, vec![0, 1, 0]), "SUBACK");
    let mut rest = vec![c.packet(), c.packet()];
    rest.sort();
    assert_eq!(rest[0].0 & 0xf0, 0x30, "a PUBLISH: {rest:?}");
    assert!(rest[0].1.ends_with(b"to myself"));
    assert_eq!(rest[1], (0xd0, vec![]), "PINGRESP");
}

#[test]
fn a_fragmented_message_continuation_frames_carries_one_packet() {
    let (_s, w) = start();
    let mut c = ws::connect(w);
    let connect = connect_packet("fragments", true, 30, None);
    let (a, rest) = connect.split_at(3);
    let (b, d) = rest.split_at(4);
    // Binary without FIN, continuation, final continuation.
    let mut raw = frame(0x02, a, false);
    raw.extend(frame(0x00, b, false));
    // A ping between fragments is allowed and answered.
    raw.extend(frame(0x89, b"mid", false));
    raw.extend(frame(0x80, d, false));
    c.send_raw(&raw);
    assert_eq!(c.next_other(), Message::Pong(Bytes::from_static(b"mid")));
    assert_eq!(c.packet(), (0x20, vec![0, 0]));
}

#[test]
fn ping_is_answered_with_pong_and_close_with_close() {
    let (_s, w) = start();
    let mut c = ws::connect(w);
    c.mqtt_connect("pinger");
    c.ws.send(Message::Ping(Bytes::from_static(b"are you there")))
        .unwrap();
    assert_eq!(
        c.next_other(),
        Message::Pong(Bytes::from_static(b"are you there"))
    );
    c.ws.close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "bye".into(),
    }))
    .unwrap();
    match c.next_other() {
        Message::Close(Some(f)) => assert_eq!(f.code, CloseCode::Normal),
        other => panic!("want the close echoed, got {other:?}"),
    }
    // Then the server ends the TCP connection.
    assert!(matches!(
        c.ws.read(),
        Err(tungstenite::Error::ConnectionClosed)
    ));
}

#[test]
fn mqtt_disconnect_closes_the_websocket_cleanly() {
    let (_s, w) = start();
    let mut c = ws::connect(w);
    c.mqtt_connect("leaving");
    c.send(&[0xe0, 0]);
    match c.next_other() {
        Message::Close(Some(f)) => assert_eq!(f.code, CloseCode::Normal),
        other => panic!("want a close frame, got {other:?}"),
    }
}

#[test]
fn a_bad_handshake_gets_400_and_others_are_served() {
    let (_s, w) = start();
    for (request, why) in [
        ("GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_owned(), "Upgrade"),
        (
            "\x10\x0c\x00\x04MQTT\x04\x02\x00\x1e\x00\x00".to_owned(),
            "not an HTTP request",
        ),
        (request(None), "subprotocol"),
        (request(Some("chat, superchat")), "subprotocol"),
        (
            request(Some("mqtt")).replace("Version: 13", "Version: 8"),
            "Version",
        ),
        (
            request(Some("mqtt")).replace("dGhlIHNhbXBsZSBub25jZQ==", "short"),
            "Key",
        ),
    ] {
        let got = raw_handshake(w, &request);
        assert!(got.starts_with("HTTP/1.1 400 "), "{request:?}: {got}");
        assert!(got.contains(why), "{request:?}: {got}");
        still_serves(w);
    }
    // A request head larger than 8 KiB.
    let huge = request(Some("mqtt")).replace("Host: x", &format!("Host: {}", "x".repeat(9000)));
    assert!(raw_handshake(w, &huge).starts_with("HTTP/1.1 400 "));
    still_serves(w);
    // `mqttv3.1` (older Paho) is accepted too.
    let got = raw_handshake(w, &request(Some("mqttv3.1")));
    assert!(got.starts_with("HTTP/1.1 101 "), "{got}");
    assert!(
        got.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
        "{got}"
    );
}

/// Sends `raw` after a good CONNECT and expects a close frame with `code`,
/// then checks another client is served.
fn closes_with(w: SocketAddr, raw: &[u8], code: CloseCode) {
    let mut c = ws::connect(w);
    c.mqtt_connect("bad");
    c.send_raw(raw);
    match c.next_other() {
        Message::Close(Some(f)) => assert_eq!(f.code, code, "{raw:02x?}"),
        other => panic!("{raw:02x?}: want a close frame, got {other:?}"),
    }
    still_serves(w);
}

#[test]
fn bad_frames_close_with_the_right_code_and_others_are_served() {
    let (_s, w) = start();
    // Unmasked client frame: protocol error.
    closes_with(w, &frame(0x82, &[0xc0, 0], true), CloseCode::Protocol);
    // Reserved bits without an extension.
    closes_with(w, &frame(0xc2, &[0xc0, 0], false), CloseCode::Protocol);
    // A continuation with no message begun.
    closes_with(w, &frame(0x80, &[0xc0, 0], false), CloseCode::Protocol);
    // A reserved opcode.
    closes_with(w, &frame(0x83, &[0xc0, 0], false), CloseCode::Protocol);
    // A ping over 125 bytes.
    closes_with(w, &frame(0x89, &[0; 126], false), CloseCode::Protocol);
    // Text frames: MQTT over WebSocket is binary.
    closes_with(w, &frame(0x81, b"hello", false), CloseCode::Unsupported);
    // A frame announcing 2 MiB (more than max_frame_bytes): its header
    // and a few bytes are enough.
    let mut big = frame(0x82, &[], false);
    big[1] = 0x80 | 127;
    big.splice(2..2, (2u64 << 20).to_be_bytes());
    big.extend_from_slice(&[0; 10]);
    closes_with(w, &big, CloseCode::Size);
}
