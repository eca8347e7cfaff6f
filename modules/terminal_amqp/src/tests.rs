//! The AMQP core without sockets: frames in, frames out, time moved by
//! hand ([`bindery_classes::connection::testing::Pipe`]), over a real
//! memory queue and topic driver. Longer than most files: one test per
//! promise of the core.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bindery_classes::connection::Flow;
use bindery_classes::connection::testing::{Pipe, Routes};
use bindery_classes::driver::DriverHandle;
use bindery_classes::metrics::Scope;
use bytes::Bytes;
use proptest::prelude::*;

use crate::core::Core;
use crate::methods::{self, Method};
use crate::wire::{self, ContentHeader, Framed, Properties, Value};
use crate::{Config, Shared, Stats};

pub(crate) const SETTLE: Duration = Duration::from_secs(2);

fn shared() -> Arc<Shared> {
    shared_with(Default::default())
}

fn shared_with(queue: driver_memqueue::Config) -> Arc<Shared> {
    let queues: DriverHandle = Arc::new(driver_memqueue::MemQueue::new(queue));
    let topics: DriverHandle = Arc::new(driver_topic::TopicDriver::new(Default::default()));
    Arc::new(Shared::new(
        "amqp",
        Config::default(),
        Arc::new(Routes(vec![
            ("/queues/".into(), queues),
            ("/topics/".into(), topics),
        ])),
        Arc::new(Stats::new(&Scope::detached("amqp"))),
    ))
}

fn pipe(shared: &Arc<Shared>) -> Pipe<Core> {
    let shared = shared.clone();
    Pipe::new(|_| Core::new(shared, "test".into(), Instant::now()))
}

/// A frame the test reads back.
#[derive(Debug, PartialEq)]
pub(crate) enum In {
    M(u16, Method),
    H(u16, ContentHeader),
    B(u16, Vec<u8>),
    Beat,
}

pub(crate) fn frames(mut out: &[u8]) -> Vec<In> {
    let mut all = Vec::new();
    if out.starts_with(b"AMQP") {
        out = &out[8..];
    }
    while let Ok(Framed::Frame(f, n)) = wire::frame(out, 1 << 20) {
        all.push(match f.kind {
            wire::METHOD => In::M(f.channel, methods::decode(f.payload).unwrap()),
            wire::HEADER => In::H(f.channel, wire::header(f.payload).unwrap()),
            wire::BODY => In::B(f.channel, f.payload.to_vec()),
            _ => In::Beat,
        });
        out = &out[n..];
    }
    assert!(out.is_empty(), "trailing bytes {out:02x?}");
    all
}

pub(crate) fn method(ch: u16, m: &Method) -> Vec<u8> {
    let mut out = Vec::new();
    wire::put_frame(&mut out, wire::METHOD, ch, |o| methods::encode(o, m));
    out
}

pub(crate) fn publish(ch: u16, exchange: &str, key: &str, body: &[u8], mandatory: bool) -> Vec<u8> {
    let mut out = method(
        ch,
        &Method::BasicPublish {
            exchange: exchange.into(),
            routing_key: key.into(),
            mandatory,
            immediate: false,
        },
    );
    let h = ContentHeader {
        class: 60,
        body_size: body.len() as u64,
        properties: Properties {
            content_type: Some("text/plain".into()),
            ..Default::default()
        },
    };
    wire::put_frame(&mut out, wire::HEADER, ch, |o| wire::put_header(o, &h));
    wire::put_frame(&mut out, wire::BODY, ch, |o| o.extend_from_slice(body));
    out
}

/// A connection through open, with channel 1 open.
pub(crate) fn open(shared: &Arc<Shared>) -> Pipe<Core> {
    let mut p = pipe(shared);
    let mut input = wire::PROTOCOL_HEADER.to_vec();
    input.extend(method(
        0,
        &Method::ConnectionStartOk {
            client_properties: vec![(
                "capabilities".into(),
                Value::Table(vec![("connection.blocked".into(), Value::Bool(true))]),
            )],
            mechanism: "PLAIN".into(),
            response: Bytes::from_static(b"\0u\0p"),
            locale: "en_US".into(),
        },
    ));
    input.extend(method(
        0,
        &Method::ConnectionTuneOk {
            channel_max: 16,
            frame_max: 4096,
            heartbeat: 10,
        },
    ));
    input.extend(method(0, &Method::ConnectionOpen { vhost: "/".into() }));
    input.extend(method(1, &Method::ChannelOpen));
    p.send(&input);
    let out = frames(&p.output());
    assert!(
        matches!(out[0], In::M(0, Method::ConnectionStart { .. })),
        "{out:?}"
    );
    assert_eq!(
        out[1],
        In::M(
            0,
            Method::ConnectionTune {
                channel_max: 2047,
                frame_max: 128 * 1024,
                heartbeat: 60
            }
        )
    );
    assert_eq!(
        out[2..],
        [
            In::M(0, Method::ConnectionOpenOk),
            In::M(1, Method::ChannelOpenOk)
        ]
    );
    p
}

pub(crate) fn declare(q: &str) -> Method {
    Method::QueueDeclare {
        queue: q.into(),
        passive: false,
        durable: false,
        exclusive: false,
        auto_delete: false,
        no_wait: false,
        arguments: Vec::new(),
    }
}

#[test]
fn publish_with_confirm_then_get_and_ack() {
    let shared = shared();
    let mut p = open(&shared);
    p.send(&method(1, &declare("orders")));
    p.send(&method(1, &Method::ConfirmSelect { no_wait: false }));
    p.send(&publish(1, "", "orders", b"hello", false));
    p.settle(SETTLE);
    assert_eq!(
        frames(&p.output()),
        [
            In::M(
                1,
                Method::QueueDeclareOk {
                    queue: "orders".into(),
                    message_count: 0,
                    consumer_count: 0
                }
            ),
            In::M(1, Method::ConfirmSelectOk),
            In::M(
                1,
                Method::BasicAck {
                    delivery_tag: 1,
                    multiple: false
                }
            ),
        ]
    );
    p.send(&method(
        1,
        &Method::QueueDeclare {
            queue: "orders".into(),
            passive: true,
            durable: false,
            exclusive: false,
            auto_delete: false,
            no_wait: false,
            arguments: Vec::new(),
        },
    ));
    p.send(&method(
        1,
        &Method::BasicGet {
            queue: "orders".into(),
            no_ack: false,
        },
    ));
    p.settle(SETTLE);
    let out = frames(&p.output());
    assert_eq!(
        out[0],
        In::M(
            1,
            Method::QueueDeclareOk {
                queue: "orders".into(),
                message_count: 1,
                consumer_count: 0
            }
        )
    );
    assert_eq!(
        out[1],
        In::M(
            1,
            Method::BasicGetOk {
                delivery_tag: 1,
                redelivered: false,
                exchange: "".into(),
                routing_key: "orders".into(),
                message_count: 0
            }
        )
    );
    match &out[2] {
        In::H(1, h) => assert_eq!(
            (h.body_size, h.properties.content_type.as_deref()),
            (5, Some("text/plain"))
        ),
        other => panic!("{other:?}"),
    }
    assert_eq!(out[3], In::B(1, b"hello".to_vec()));
    p.send(&method(
        1,
        &Method::BasicAck {
            delivery_tag: 1,
            multiple: false,
        },
    ));
    p.send(&method(
        1,
        &Method::BasicGet {
            queue: "orders".into(),
            no_ack: false,
        },
    ));
    p.settle(Duration::from_millis(50))
        .advance(Duration::from_millis(50));
    assert_eq!(frames(&p.output()), [In::M(1, Method::BasicGetEmpty)]);
}

#[test]
fn prefetch_bounds_deliveries_and_nack_requeue_redelivers() {
    let shared = shared();
    let mut p = open(&shared);
    for i in 0..3 {
        p.send(&publish(1, "", "work", format!("m{i}").as_bytes(), false));
    }
    p.send(&method(
        1,
        &Method::BasicQos {
            prefetch_size: 0,
            prefetch_count: 2,
            global: false,
        },
    ));
    p.send(&method(
        1,
        &Method::BasicConsume {
            queue: "work".into(),
            consumer_tag: "c1".into(),
            no_local: false,
            no_ack: false,
            exclusive: false,
            no_wait: false,
            arguments: Vec::new(),
        },
    ));
    p.settle(SETTLE);
    let delivered = |out: &[In]| -> Vec<(u64, bool)> {
        out.iter()
            .filter_map(|f| match f {
                In::M(
                    1,
                    Method::BasicDeliver {
                        delivery_tag,
                        redelivered,
                        ..
                    },
                ) => Some((*delivery_tag, *redelivered)),
                _ => None,
            })
            .collect()
    };
    let out = frames(&p.output());
    assert_eq!(
        out[..2],
        [
            In::M(1, Method::BasicQosOk),
            In::M(
                1,
                Method::BasicConsumeOk {
                    consumer_tag: "c1".into()
                }
            )
        ]
    );
    assert_eq!(delivered(&out), [(1, false), (2, false)], "prefetch 2");
    // Nack 1 with requeue: it comes back, redelivered, after m2's turn.
    p.send(&method(
        1,
        &Method::BasicNack {
            delivery_tag: 1,
            multiple: false,
            requeue: true,
        },
    ));
    p.settle(SETTLE);
    assert_eq!(delivered(&frames(&p.output())), [(3, true)]);
    p.send(&method(
        1,
        &Method::BasicAck {
            delivery_tag: 3,
            multiple: true,
        },
    ));
    p.settle(SETTLE);
    assert_eq!(
        delivered(&frames(&p.output())),
        [(4, false)],
        "the third message"
    );
    // An unknown tag is a channel error naming it.
    p.send(&method(
        1,
        &Method::BasicAck {
            delivery_tag: 99,
            multiple: false,
        },
    ));
    match &frames(&p.output())[..] {
        [
            In::M(
                1,
                Method::ChannelClose {
                    code: 406,
                    text,
                    class: 60,
                    method: 80,
                },
            ),
        ] => assert!(text.contains("99"), "{text}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_closed_channel_gives_its_messages_back_redelivered() {
    let shared = shared();
    let mut a = open(&shared);
    a.send(&publish(1, "", "jobs", b"j", false));
    a.send(&method(
        1,
        &Method::BasicConsume {
            queue: "jobs".into(),
            consumer_tag: "".into(),
            no_local: false,
            no_ack: false,
            exclusive: false,
            no_wait: false,
            arguments: Vec::new(),
        },
    ));
    a.settle(SETTLE);
    assert!(
        frames(&a.output())
            .iter()
            .any(|f| matches!(f, In::M(1, Method::BasicDeliver { .. })))
    );
    a.send(&method(
        1,
        &Method::ChannelClose {
            code: 200,
            text: "bye".into(),
            class: 0,
            method: 0,
        },
    ));
    assert_eq!(frames(&a.output()), [In::M(1, Method::ChannelCloseOk)]);
    let mut b = open(&shared);
    b.send(&method(
        1,
        &Method::BasicGet {
            queue: "jobs".into(),
            no_ack: true,
        },
    ));
    b.settle(SETTLE);
    let out = frames(&b.output());
    assert!(
        matches!(
            out[0],
            In::M(
                1,
                Method::BasicGetOk {
                    redelivered: true,
                    ..
                }
            )
        ),
        "{out:?}"
    );
}

#[test]
fn passive_declare_of_a_missing_queue_closes_the_channel_naming_it() {
    let shared = shared();
    let mut p = open(&shared);
    p.send(&method(
        1,
        &Method::QueueDeclare {
            queue: "nope".into(),
            passive: true,
            durable: false,
            exclusive: false,
            auto_delete: false,
            no_wait: false,
            arguments: Vec::new(),
        },
    ));
    match &frames(&p.output())[..] {
        [
            In::M(
                1,
                Method::ChannelClose {
                    code: 404,
                    text,
                    class: 50,
                    method: 10,
                },
            ),
        ] => assert!(text.contains("\"nope\""), "{text}"),
        other => panic!("{other:?}"),
    }
    // Ignored until close-ok; then the channel can be opened again.
    p.send(&method(1, &declare("x")));
    p.send(&method(1, &Method::ChannelCloseOk));
    p.send(&method(1, &Method::ChannelOpen));
    assert_eq!(frames(&p.output()), [In::M(1, Method::ChannelOpenOk)]);
    assert_eq!(p.flow(), Flow::Open);
}

#[test]
fn topic_exchange_bound_queue_and_mandatory_return() {
    let shared = shared();
    let mut p = open(&shared);
    p.send(&method(1, &declare("")));
    let out = frames(&p.output());
    let In::M(1, Method::QueueDeclareOk { queue, .. }) = &out[0] else {
        panic!("{out:?}")
    };
    assert!(queue.starts_with("amq.gen-"));
    let queue = queue.clone();
    p.send(&method(
        1,
        &Method::QueueBind {
            queue: queue.clone(),
            exchange: "amq.topic".into(),
            routing_key: "sensors.*.temp".into(),
            no_wait: false,
            arguments: Vec::new(),
        },
    ));
    assert_eq!(frames(&p.output()), [In::M(1, Method::QueueBindOk)]);
    // No subscriber for this key: mandatory comes back.
    p.send(&publish(1, "amq.topic", "nobody.here", b"x", true));
    p.settle(SETTLE);
    let out = frames(&p.output());
    assert!(
        matches!(&out[0], In::M(1, Method::BasicReturn { code: 312, .. })),
        "{out:?}"
    );
    p.send(&publish(1, "amq.topic", "sensors.t1.temp", b"21", true));
    p.settle(SETTLE);
    assert!(frames(&p.output()).is_empty(), "routed: no return");
    p.send(&method(
        1,
        &Method::BasicGet {
            queue,
            no_ack: true,
        },
    ));
    p.settle(SETTLE);
    let out = frames(&p.output());
    assert_eq!(
        out[0],
        In::M(
            1,
            Method::BasicGetOk {
                delivery_tag: 1,
                redelivered: false,
                exchange: "amq.topic".into(),
                routing_key: "sensors.t1.temp".into(),
                message_count: 0
            }
        )
    );
    assert_eq!(out[2], In::B(1, b"21".to_vec()));
    // '#' before the last word is refused, naming the key.
    p.send(&method(
        1,
        &Method::QueueBind {
            queue: "q".into(),
            exchange: "amq.topic".into(),
            routing_key: "a.#.b".into(),
            no_wait: false,
            arguments: Vec::new(),
        },
    ));
    match &frames(&p.output())[..] {
        [
            In::M(
                1,
                Method::ChannelClose {
                    code: 540, text, ..
                },
            ),
        ] => assert!(text.contains("a.#.b"), "{text}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn large_bodies_go_out_in_frame_max_pieces() {
    let shared = shared();
    let mut p = open(&shared);
    let body = vec![7u8; 10_000];
    // Sent in pieces of the negotiated 4096 as well.
    let mut input = method(
        1,
        &Method::BasicPublish {
            exchange: "".into(),
            routing_key: "big".into(),
            mandatory: false,
            immediate: false,
        },
    );
    let h = ContentHeader {
        class: 60,
        body_size: body.len() as u64,
        properties: Properties::default(),
    };
    wire::put_frame(&mut input, wire::HEADER, 1, |o| wire::put_header(o, &h));
    for part in body.chunks(4088) {
        wire::put_frame(&mut input, wire::BODY, 1, |o| o.extend_from_slice(part));
    }
    p.send(&input);
    p.send(&method(
        1,
        &Method::BasicGet {
            queue: "big".into(),
            no_ack: true,
        },
    ));
    p.settle(SETTLE);
    let out = frames(&p.output());
    let bodies: Vec<usize> = out
        .iter()
        .filter_map(|f| match f {
            In::B(_, b) => Some(b.len()),
            _ => None,
        })
        .collect();
    assert_eq!(bodies, [4088, 4088, 1824]);
}

#[test]
fn a_frame_over_frame_max_closes_the_connection_with_501() {
    let shared = shared();
    let mut p = open(&shared);
    let mut big = Vec::new();
    wire::put_frame(&mut big, wire::BODY, 1, |o| o.extend_from_slice(&[0; 5000]));
    p.send(&big);
    match &frames(&p.output())[..] {
        [
            In::M(
                0,
                Method::ConnectionClose {
                    code: 501, text, ..
                },
            ),
        ] => assert!(text.contains("frame_max 4096"), "{text}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(p.flow(), Flow::CloseWhenFlushed);
}

#[test]
fn a_bad_protocol_header_gets_ours_and_a_close() {
    let mut p = pipe(&shared());
    p.send(b"AMQP\x01\x01\x00\x0a");
    assert_eq!(p.output(), wire::PROTOCOL_HEADER);
    assert_eq!(p.flow(), Flow::CloseWhenFlushed);
}

#[test]
fn heartbeats_are_sent_and_a_silent_peer_is_dropped() {
    let mut p = open(&shared());
    p.advance(Duration::from_secs(5));
    assert_eq!(frames(&p.output()), [In::Beat]);
    p.advance(Duration::from_secs(16));
    assert_eq!(p.flow(), Flow::CloseWhenFlushed);
}

#[test]
fn connection_close_handshake() {
    let mut p = open(&shared());
    p.send(&method(
        0,
        &Method::ConnectionClose {
            code: 200,
            text: "ok".into(),
            class: 0,
            method: 0,
        },
    ));
    assert_eq!(frames(&p.output()), [In::M(0, Method::ConnectionCloseOk)]);
    assert_eq!(p.flow(), Flow::CloseWhenFlushed);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// However the bytes are cut into reads, the answers are the same.
    #[test]
    fn answers_do_not_depend_on_how_input_is_split(cuts in proptest::collection::vec(1usize..40, 1..12)) {
        let mut input = wire::PROTOCOL_HEADER.to_vec();
        input.extend(method(0, &Method::ConnectionStartOk { client_properties: Vec::new(), mechanism: "PLAIN".into(), response: Bytes::new(), locale: "en_US".into() }));
        input.extend(method(0, &Method::ConnectionTuneOk { channel_max: 0, frame_max: 0, heartbeat: 0 }));
        input.extend(method(0, &Method::ConnectionOpen { vhost: "/".into() }));
        input.extend(method(3, &Method::ChannelOpen));
        input.extend(method(3, &declare("split")));
        let mut p = pipe(&shared());
        p.send_in_pieces(&input, &cuts);
        let out = frames(&p.output());
        prop_assert_eq!(out.len(), 5);
        prop_assert_eq!(&out[4], &In::M(3, Method::QueueDeclareOk { queue: "split".into(), message_count: 0, consumer_count: 0 }));
    }

    /// Any sequence of well-formed methods (and publishes) on any
    /// channels is answered or refused; never a panic.
    #[test]
    fn any_sequence_of_methods_never_panics(
        steps in proptest::collection::vec((0usize..2000, 0u16..4, any::<bool>()), 1..40)
    ) {
        let all = crate::codec_tests::every_method();
        let mut p = open(&shared());
        for (i, ch, content) in steps {
            let m = &all[i % all.len()];
            p.send(&method(ch, m));
            if content {
                p.send(&publish(ch, "", "fuzz", b"x", true));
            }
        }
        p.settle(Duration::from_millis(5));
        p.advance(Duration::from_secs(3));
        let _ = p.output();
        let _ = p.flow();
    }

    /// After the handshake, whatever arrives is handled or refused by
    /// closing; never a panic.
    #[test]
    fn arbitrary_bytes_after_open_never_panic(junk in proptest::collection::vec(any::<u8>(), 0..400)) {
        let mut p = open(&shared());
        p.send(&junk);
        let _ = p.output();
        let _ = p.flow();
    }
}

#[test]
fn an_exclusive_queue_is_locked_to_its_connection_and_freed_with_it() {
    let shared = shared();
    let mut owner = open(&shared);
    owner.send(&method(
        1,
        &Method::QueueDeclare {
            queue: "mine".into(),
            passive: false,
            durable: false,
            exclusive: true,
            auto_delete: false,
            no_wait: true,
            arguments: Vec::new(),
        },
    ));
    let mut other = open(&shared);
    other.send(&method(
        1,
        &Method::BasicGet {
            queue: "mine".into(),
            no_ack: true,
        },
    ));
    match &frames(&other.output())[..] {
        [
            In::M(
                1,
                Method::ChannelClose {
                    code: 405,
                    text,
                    class: 60,
                    method: 70,
                },
            ),
        ] => {
            assert!(text.contains("\"mine\""), "{text}")
        }
        other => panic!("{other:?}"),
    }
    owner.send(&method(
        0,
        &Method::ConnectionClose {
            code: 200,
            text: "".into(),
            class: 0,
            method: 0,
        },
    ));
    assert_eq!(owner.flow(), Flow::CloseWhenFlushed);
    other.send(&method(1, &Method::ChannelCloseOk));
    other.send(&method(1, &Method::ChannelOpen));
    other.send(&method(1, &declare("mine")));
    let out = frames(&other.output());
    assert!(
        matches!(&out[1], In::M(1, Method::QueueDeclareOk { .. })),
        "{out:?}"
    );
}

#[test]
fn unsupported_and_misplaced_methods_get_the_spec_codes() {
    let shared = shared();
    // tx: 540, a connection exception.
    let mut p = open(&shared);
    p.send(&method(
        1,
        &Method::Other {
            class: 90,
            method: 10,
        },
    ));
    match &frames(&p.output())[..] {
        [
            In::M(
                0,
                Method::ConnectionClose {
                    code: 540,
                    text,
                    class: 90,
                    method: 10,
                },
            ),
        ] => {
            assert!(text.contains("tx"), "{text}")
        }
        other => panic!("{other:?}"),
    }
    // After close, only close-ok counts; then the connection ends.
    p.send(&method(1, &declare("ignored")));
    assert!(p.output().is_empty());
    p.send(&method(0, &Method::ConnectionCloseOk));
    assert_eq!(p.flow(), Flow::CloseWhenFlushed);
    // A method on a channel that is not open: 504.
    let mut p = open(&shared);
    p.send(&method(9, &declare("q")));
    assert!(matches!(
        &frames(&p.output())[..],
        [In::M(0, Method::ConnectionClose { code: 504, .. })]
    ));
    // A channel over channel_max (16 here): 504 naming both.
    let mut p = open(&shared);
    p.send(&method(17, &Method::ChannelOpen));
    match &frames(&p.output())[..] {
        [
            In::M(
                0,
                Method::ConnectionClose {
                    code: 504, text, ..
                },
            ),
        ] => {
            assert!(text.contains("17") && text.contains("16"), "{text}")
        }
        other => panic!("{other:?}"),
    }
    // Publishing to an exchange that does not exist: 404, the channel only.
    let mut p = open(&shared);
    p.send(&publish(1, "nowhere", "k", b"x", false));
    match &frames(&p.output())[..] {
        [
            In::M(
                1,
                Method::ChannelClose {
                    code: 404, text, ..
                },
            ),
        ] => {
            assert!(text.contains("\"nowhere\""), "{text}")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(p.flow(), Flow::Open);
    // A server-initiated close not answered in time ends the connection.
    let mut p = open(&shared);
    p.send(&method(
        1,
        &Method::ConnectionTuneOk {
            channel_max: 0,
            frame_max: 0,
            heartbeat: 0,
        },
    ));
    assert!(matches!(
        &frames(&p.output())[..],
        [In::M(0, Method::ConnectionClose { code: 503, .. })]
    ));
    p.advance(Duration::from_secs(3));
    assert_eq!(p.flow(), Flow::CloseWhenFlushed);
}

#[test]
fn the_configuration_is_checked_naming_the_field() {
    let bad = Config {
        queue_root: "queues".into(),
        ..Config::default()
    };
    assert!(bad.checked("amqp").unwrap_err().contains("queue_root"));
    let bad = Config {
        frame_max: 100,
        ..Config::default()
    };
    assert!(bad.checked("amqp").unwrap_err().contains("frame_max"));
    let good = Config {
        topic_root: "/t".into(),
        ..Config::default()
    }
    .checked("amqp")
    .unwrap();
    assert_eq!(good.topic_root, "/t/");
}

#[test]
fn a_full_queue_blocks_the_publisher_for_a_while_and_nacks_confirms() {
    let shared = shared_with(driver_memqueue::Config {
        max_depth: 1,
        ..Default::default()
    });
    let mut p = open(&shared);
    p.send(&publish(1, "", "small", b"1", false));
    p.send(&publish(1, "", "small", b"2", false));
    p.settle(SETTLE);
    match &frames(&p.output())[..] {
        [In::M(0, Method::ConnectionBlocked { reason })] => {
            assert!(reason.contains("small"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    p.advance(Duration::from_secs(6));
    let out = frames(&p.output());
    assert!(
        out.contains(&In::M(0, Method::ConnectionUnblocked)),
        "{out:?}"
    );
    p.send(&method(1, &Method::ConfirmSelect { no_wait: true }));
    p.send(&publish(1, "", "small", b"3", false));
    p.settle(SETTLE);
    let out = frames(&p.output());
    assert_eq!(
        out[1],
        In::M(
            1,
            Method::BasicNack {
                delivery_tag: 1,
                multiple: false,
                requeue: false
            }
        ),
        "{out:?}"
    );
}

#[test]
fn direct_and_fanout_exchanges_route_through_their_bindings() {
    let shared = shared();
    let mut p = open(&shared);
    let bind = |q: &str, x: &str, k: &str| {
        method(
            1,
            &Method::QueueBind {
                queue: q.into(),
                exchange: x.into(),
                routing_key: k.into(),
                no_wait: true,
                arguments: Vec::new(),
            },
        )
    };
    p.send(&method(
        1,
        &Method::ExchangeDeclare {
            exchange: "fan".into(),
            kind: "fanout".into(),
            passive: false,
            durable: false,
            auto_delete: false,
            internal: false,
            no_wait: false,
            arguments: Vec::new(),
        },
    ));
    for q in ["d1", "d2", "f1", "f2"] {
        p.send(&method(1, &declare(q)));
    }
    p.send(&bind("d1", "amq.direct", "red"));
    p.send(&bind("d2", "amq.direct", "blue"));
    p.send(&bind("f1", "fan", "ignored"));
    p.send(&bind("f2", "fan", ""));
    p.send(&method(1, &Method::ConfirmSelect { no_wait: true }));
    p.send(&publish(1, "amq.direct", "red", b"r", true));
    p.send(&publish(1, "fan", "any", b"f", true));
    p.send(&publish(1, "amq.direct", "green", b"g", true));
    p.settle(SETTLE);
    let out = frames(&p.output());
    let acks = out
        .iter()
        .filter(|f| matches!(f, In::M(1, Method::BasicAck { .. })))
        .count();
    assert_eq!(acks, 3, "{out:?}");
    assert!(
        out.iter().any(|f| matches!(f, In::M(1, Method::BasicReturn { routing_key, .. }) if routing_key == "green")),
        "{out:?}"
    );
    for (q, body, exchange) in [
        ("d1", "r", "amq.direct"),
        ("f1", "f", "fan"),
        ("f2", "f", "fan"),
    ] {
        p.send(&method(
            1,
            &Method::BasicGet {
                queue: q.into(),
                no_ack: true,
            },
        ));
        p.settle(SETTLE);
        let out = frames(&p.output());
        match &out[..] {
            [
                In::M(1, Method::BasicGetOk { exchange: e, .. }),
                _,
                In::B(1, b),
            ] => {
                assert_eq!((e.as_str(), &b[..]), (exchange, body.as_bytes()), "{q}")
            }
            other => panic!("{q}: {other:?}"),
        }
    }
    p.send(&method(
        1,
        &Method::BasicGet {
            queue: "d2".into(),
            no_ack: true,
        },
    ));
    p.settle(Duration::from_millis(50))
        .advance(Duration::from_millis(50));
    assert_eq!(frames(&p.output()), [In::M(1, Method::BasicGetEmpty)]);
    // A queue nobody declared or published to: 404 naming it.
    p.send(&method(
        1,
        &Method::BasicGet {
            queue: "never".into(),
            no_ack: true,
        },
    ));
    match &frames(&p.output())[..] {
        [
            In::M(
                1,
                Method::ChannelClose {
                    code: 404, text, ..
                },
            ),
        ] => assert!(text.contains("\"never\""), "{text}"),
        other => panic!("{other:?}"),
    }
}
