//! AMQP 0-9-1 end to end: the `bindery` binary with an unmodified client
//! library (lapin), HTTP and MQTT on the same queues and topics, and raw
//! TCP for bad input. Longer than most files here: one test per promise
//! of the issue (confirms, prefetch, redelivery, topics, purge and delete,
//! bad frames, durability), sharing the client helpers.

mod common;

use std::io::{BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use common::amqp::run;
use common::mqtt::{publish_packet, raw, read_packet, subscribe_on};
use common::{Server, agent, config};
use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicGetOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
    QueuePurgeOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection};

/// A guest login.
async fn connect(addr: SocketAddr) -> Connection {
    common::amqp::connect(addr, "guest", "guest").await.unwrap()
}

fn start() -> (Server, SocketAddr) {
    let s = Server::start(&config(""));
    let amqp = s.bound("127.0.0.7:0");
    (s, amqp)
}

async fn declare(ch: &Channel, name: &str, passive: bool) -> (String, u32) {
    let options = QueueDeclareOptions {
        passive,
        exclusive: name.is_empty(),
        ..Default::default()
    };
    let q = ch
        .queue_declare(name.into(), options, FieldTable::default())
        .await
        .unwrap();
    (q.name().to_string(), q.message_count())
}

async fn publish(ch: &Channel, exchange: &str, key: &str, body: &[u8]) {
    let confirm = ch
        .basic_publish(
            exchange.into(),
            key.into(),
            BasicPublishOptions::default(),
            body,
            BasicProperties::default(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(confirm.is_ack(), "{confirm:?}");
}

#[test]
fn confirms_properties_and_crossing_http_queues() {
    let (server, addr) = start();
    run(async {
        let conn = connect(addr).await;
        let ch = conn.create_channel().await.unwrap();
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        declare(&ch, "lapin-orders", false).await;
        let props = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_message_id("order-1".into());
        let confirm = ch
            .basic_publish(
                "".into(),
                "lapin-orders".into(),
                BasicPublishOptions::default(),
                br#"{"n":1}"#,
                props,
            )
            .await
            .unwrap()
            .await
            .unwrap();
        assert!(confirm.is_ack());
        // The JSON parser refuses what is not JSON: a nack, not an ack.
        let refused = ch
            .basic_publish(
                "".into(),
                "lapin-orders".into(),
                BasicPublishOptions::default(),
                b"{not json",
                BasicProperties::default().with_content_type("application/json".into()),
            )
            .await
            .unwrap()
            .await
            .unwrap();
        assert!(refused.is_nack(), "{refused:?}");
        assert_eq!(declare(&ch, "lapin-orders", true).await.1, 1);
        let got = ch
            .basic_get("lapin-orders".into(), BasicGetOptions::default())
            .await
            .unwrap()
            .expect("a message");
        assert_eq!(got.delivery.data, br#"{"n":1}"#);
        let p = &got.delivery.properties;
        assert_eq!(
            p.content_type().as_ref().map(|s| s.as_str()),
            Some("application/json")
        );
        assert_eq!(p.message_id().as_ref().map(|s| s.as_str()), Some("order-1"));
        got.delivery.ack(BasicAckOptions::default()).await.unwrap();

        // AMQP to HTTP and back, on one queue path.
        publish(&ch, "", "lapin-cross", b"to http").await;
        let resp = agent()
            .get(&server.url("/queues/lapin-cross"))
            .call()
            .unwrap();
        assert_eq!(resp.into_string().unwrap(), "to http");
        agent()
            .post(&server.url("/queues/lapin-back"))
            .set("Content-Type", "text/plain")
            .send_string("from http")
            .unwrap();
        let got = ch
            .basic_get("lapin-back".into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
            .expect("the HTTP message");
        assert_eq!(got.delivery.data, b"from http");
        assert_eq!(got.delivery.routing_key.as_str(), "lapin-back");
        conn.close(200, "bye".into()).await.unwrap();
    });
}

#[test]
fn prefetch_is_consumer_credit() {
    let (_server, addr) = start();
    run(async {
        let conn = connect(addr).await;
        let ch = conn.create_channel().await.unwrap();
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        for i in 0..10 {
            publish(&ch, "", "lapin-prefetch", format!("m{i}").as_bytes()).await;
        }
        let consumer_ch = conn.create_channel().await.unwrap();
        consumer_ch
            .basic_qos(3, BasicQosOptions::default())
            .await
            .unwrap();
        let mut consumer = consumer_ch
            .basic_consume(
                "lapin-prefetch".into(),
                "c".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        let mut held = Vec::new();
        for i in 0..3 {
            let d = consumer.next().await.unwrap().unwrap();
            assert_eq!(d.data, format!("m{i}").as_bytes());
            held.push(d);
        }
        // Three delivered and unacknowledged: the driver holds the rest.
        assert_eq!(declare(&ch, "lapin-prefetch", true).await.1, 7);
        held.remove(0)
            .ack(BasicAckOptions::default())
            .await
            .unwrap();
        let d = consumer.next().await.unwrap().unwrap();
        assert_eq!(d.data, b"m3");
        assert_eq!(declare(&ch, "lapin-prefetch", true).await.1, 6);
        assert!(!d.redelivered);
    });
}

#[test]
fn a_dropped_channel_gives_its_messages_back_redelivered() {
    let (_server, addr) = start();
    run(async {
        let conn = connect(addr).await;
        let a = conn.create_channel().await.unwrap();
        a.confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        publish(&a, "", "lapin-drop", b"keep me").await;
        let got = a
            .basic_get("lapin-drop".into(), BasicGetOptions::default())
            .await
            .unwrap()
            .expect("a message");
        assert!(!got.delivery.redelivered);
        a.close(200, "bye".into()).await.unwrap();
        // A new connection, as a crashed consumer's replacement would.
        let other = connect(addr).await;
        let b = other.create_channel().await.unwrap();
        let got = b
            .basic_get("lapin-drop".into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
            .expect("the message back");
        assert_eq!(got.delivery.data, b"keep me");
        assert!(got.delivery.redelivered);
    });
}

#[test]
fn a_topic_exchange_meets_mqtt_and_http_on_one_topic() {
    let (server, addr) = start();
    let mqtt = server.mqtt.expect("MQTT");
    // An MQTT subscriber to what AMQP publishes.
    let mut sub = raw(mqtt);
    assert_eq!(subscribe_on(&mut sub, "watcher", "meet/out", 0), 0);
    run(async {
        let conn = connect(addr).await;
        let ch = conn.create_channel().await.unwrap();
        let (queue, _) = declare(&ch, "", false).await;
        ch.queue_bind(
            queue.as_str().into(),
            "amq.topic".into(),
            "meet.*.in".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
        let mut consumer = ch
            .basic_consume(
                queue.as_str().into(),
                "".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        // MQTT and HTTP publish; the bound queue gets both.
        let mut p = raw(mqtt);
        p.write_all(&common::mqtt::connect_packet("pub", true, 0, None))
            .unwrap();
        assert_eq!(common::mqtt::connack(&mut p), [0x20, 2, 0, 0]);
        let mut packet = Vec::new();
        publish_packet(&mut packet, "meet/mqtt/in", 0, 0, b"from mqtt");
        p.write_all(&packet).unwrap();
        agent()
            .post(&server.url("/topics/meet/http/in"))
            .send_string("from http")
            .unwrap();
        let mut got = Vec::new();
        for _ in 0..2 {
            let d = consumer.next().await.unwrap().unwrap();
            assert_eq!(d.exchange.as_str(), "amq.topic");
            got.push((d.routing_key.to_string(), d.data.clone()));
        }
        got.sort();
        assert_eq!(
            got,
            [
                ("meet.http.in".to_owned(), b"from http".to_vec()),
                ("meet.mqtt.in".to_owned(), b"from mqtt".to_vec()),
            ]
        );
        // And an AMQP publish reaches the MQTT subscriber.
        ch.basic_publish(
            "amq.topic".into(),
            "meet.out".into(),
            BasicPublishOptions::default(),
            b"from amqp",
            BasicProperties::default(),
        )
        .await
        .unwrap();
    });
    let mut r = BufReader::new(sub);
    loop {
        let (head, body) = read_packet(&mut r).unwrap();
        if head >> 4 == 3 {
            assert_eq!(body, b"\x00\x08meet/outfrom amqp");
            break;
        }
    }
}

#[test]
fn purge_and_delete_remove_messages_and_honour_their_conditions() {
    let (server, addr) = start();
    run(async {
        let conn = connect(addr).await;
        let ch = conn.create_channel().await.unwrap();
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        declare(&ch, "lapin-purge", false).await;
        for body in [&b"1"[..], b"2", b"3"] {
            publish(&ch, "", "lapin-purge", body).await;
        }
        let purged = ch
            .queue_purge("lapin-purge".into(), QueuePurgeOptions::default())
            .await
            .unwrap();
        assert_eq!(purged, 3);
        assert_eq!(declare(&ch, "lapin-purge", true).await.1, 0);
        publish(&ch, "", "lapin-purge", b"after").await;
        let got = ch
            .basic_get("lapin-purge".into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
            .expect("the message after the purge");
        assert_eq!(got.delivery.data, b"after");

        for body in [&b"a"[..], b"b"] {
            publish(&ch, "", "lapin-delete", body).await;
        }
        let refused = ch
            .queue_delete(
                "lapin-delete".into(),
                QueueDeleteOptions {
                    if_empty: true,
                    ..Default::default()
                },
            )
            .await
            .expect_err("if-empty refuses a queue with messages");
        assert!(
            refused.to_string().contains("PRECONDITION_FAILED"),
            "{refused}"
        );
        // The channel closed; the connection serves on.
        let ch = conn.create_channel().await.unwrap();
        let deleted = ch
            .queue_delete("lapin-delete".into(), QueueDeleteOptions::default())
            .await
            .unwrap();
        assert_eq!(deleted, 2);
        let gone = ch
            .queue_declare(
                "lapin-delete".into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .expect_err("a deleted queue is gone");
        assert!(gone.to_string().contains("NOT_FOUND"), "{gone}");
    });
    // HTTP finds nothing in the deleted queue either.
    let (status, _, _) = common::outcome(
        agent()
            .get(&server.url("/queues/lapin-delete?wait=0"))
            .call(),
    );
    assert_ne!(status, 200);
}

#[test]
fn malformed_frames_close_that_connection_only() {
    let (_server, addr) = start();
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"AMQP\x00\x00\x09\x01").unwrap();
    // Frame type 9 does not exist.
    s.write_all(&[9, 0, 1, 0, 0, 0, 1, 0, 0xce]).unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    let text = String::from_utf8_lossy(&out);
    assert!(
        text.contains("FRAME_ERROR - unknown frame type 9"),
        "{text}"
    );
    // A client with a protocol of its own gets AMQP's header and a close.
    let mut other = TcpStream::connect(addr).unwrap();
    other
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    other.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
    let mut out = Vec::new();
    other.read_to_end(&mut out).unwrap();
    assert_eq!(out, b"AMQP\x00\x00\x09\x01");
    // Others are served.
    run(async {
        let conn = connect(addr).await;
        let ch = conn.create_channel().await.unwrap();
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        publish(&ch, "", "lapin-after", b"fine").await;
    });
}

#[test]
fn a_durable_queue_root_keeps_confirmed_messages_across_a_crash() {
    let dir = common::TempDir::new();
    // A second AMQP instance whose queues are the file queue's.
    let text = config(
        "[instances.amqp_durable]\nmodule = \"terminal.amqp\"\nbind = [\"127.0.0.8:0\"]\n\
         config = { queue_root = \"/durable/\" }\n",
    );
    let server = Server::start_at(&dir.0, &text, &["--threads", "2"]);
    let addr = server.bound("127.0.0.8:0");
    run(async {
        let conn = connect(addr).await;
        let ch = conn.create_channel().await.unwrap();
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        for i in 0..5 {
            publish(&ch, "", "kept", format!("k{i}").as_bytes()).await;
        }
    });
    // Confirmed means on disk: a crash loses none of them.
    server.kill9();
    let server = Server::start_at(&dir.0, &text, &["--threads", "2"]);
    let addr = server.bound("127.0.0.8:0");
    run(async {
        let conn = connect(addr).await;
        let ch = conn.create_channel().await.unwrap();
        for i in 0..5 {
            let got = ch
                .basic_get("kept".into(), BasicGetOptions { no_ack: true })
                .await
                .unwrap()
                .expect("a kept message");
            assert_eq!(got.delivery.data, format!("k{i}").as_bytes());
        }
    });
}
