//! The MQTT core without sockets: packets in, packets out, time moved by
//! hand ([`bindery_classes::connection::testing::Pipe`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bindery_classes::connection::Flow;
use bindery_classes::connection::testing::{Pipe, Routes};
use bindery_classes::driver::DriverHandle;
use bindery_classes::metrics::Scope;
use bytes::Bytes;
use proptest::prelude::*;

use crate::codec::{self, Connect, Decoded, Packet, Publish};
use crate::core::Core;
use crate::{Config, Shared, Stats};

const SETTLE: Duration = Duration::from_secs(2);

fn shared() -> Arc<Shared> {
    let topics: DriverHandle = Arc::new(driver_topic::TopicDriver::new(Default::default()));
    Arc::new(Shared::new(
        "mqtt",
        Config::default(),
        Arc::new(Routes(vec![("/topics/".into(), topics)])),
        Arc::new(Stats::new(&Scope::detached("mqtt"))),
    ))
}

fn pipe(shared: &Arc<Shared>) -> Pipe<Core> {
    let shared = shared.clone();
    Pipe::new(|_| Core::new(shared, Instant::now()))
}

fn bytes(packets: &[Packet]) -> Vec<u8> {
    let mut out = Vec::new();
    for p in packets {
        codec::encode(&mut out, p);
    }
    out
}

fn connect(id: &str, keep_alive: u16) -> Packet {
    Packet::Connect(Box::new(Connect {
        level: 4,
        clean_session: true,
        keep_alive,
        client_id: id.into(),
        will: None,
        username: None,
        password: None,
    }))
}

fn packets(mut out: &[u8]) -> Vec<Packet> {
    let mut all = Vec::new();
    while let Ok(Decoded::Packet(p, n)) = codec::decode(out, 1 << 20) {
        all.push(p);
        out = &out[n..];
    }
    assert!(out.is_empty(), "trailing bytes {out:?}");
    all
}

const ACCEPTED: Packet = Packet::ConnAck {
    session_present: false,
    code: 0,
};

#[test]
fn connect_and_ping_in_one_read() {
    let mut p = pipe(&shared());
    p.send(&bytes(&[connect("a", 30), Packet::PingReq]));
    assert_eq!(packets(&p.output()), [ACCEPTED, Packet::PingResp]);
    assert_eq!(p.flow(), Flow::Open);
}

#[test]
fn keep_alive_closes_at_one_and_a_half_intervals() {
    let mut p = pipe(&shared());
    p.send(&bytes(&[connect("a", 10)]));
    p.advance(Duration::from_secs(14));
    assert_eq!(p.flow(), Flow::Open);
    p.advance(Duration::from_secs(1));
    assert_eq!(p.flow(), Flow::Close);
}

#[test]
fn no_connect_in_time_closes() {
    let mut p = pipe(&shared());
    p.advance(Duration::from_secs(Config::default().connect_timeout_secs));
    assert_eq!(p.flow(), Flow::Close);
}

#[test]
fn qos1_is_acknowledged_once_the_driver_took_it_and_reaches_a_subscriber() {
    let shared = shared();
    let mut sub = pipe(&shared);
    sub.send(&bytes(&[
        connect("sub", 0),
        Packet::Subscribe {
            packet_id: 1,
            filters: vec![("s/+".into(), 1)],
        },
    ]));
    let out = packets(&sub.output());
    assert_eq!(
        out[1],
        Packet::SubAck {
            packet_id: 1,
            codes: vec![1]
        }
    );
    let mut publisher = pipe(&shared);
    publisher.send(&bytes(&[
        connect("pub", 0),
        Packet::Publish(Publish {
            dup: false,
            qos: 1,
            retain: false,
            topic: "s/1".into(),
            packet_id: 7,
            payload: Bytes::from_static(b"hello"),
        }),
    ]));
    assert_eq!(packets(&publisher.output()), [ACCEPTED], "no PUBACK yet");
    publisher.settle(SETTLE);
    assert_eq!(packets(&publisher.output()), [Packet::PubAck(7)]);
    sub.settle(SETTLE);
    match &packets(&sub.output())[..] {
        [Packet::Publish(p)] => {
            assert_eq!(
                (p.topic.as_str(), p.qos, &p.payload[..]),
                ("s/1", 1, &b"hello"[..])
            );
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_packet_before_connect_closes_at_once() {
    let mut p = pipe(&shared());
    p.send(&bytes(&[Packet::PingReq]));
    assert_eq!(p.flow(), Flow::Close);
    assert!(p.output().is_empty());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// However the bytes are cut into reads, the answers are the same.
    #[test]
    fn answers_do_not_depend_on_how_input_is_split(cuts in proptest::collection::vec(1usize..12, 1..10)) {
        let input = bytes(&[
            connect("split", 30),
            Packet::Subscribe { packet_id: 3, filters: vec![("a/#".into(), 0)] },
            Packet::PingReq,
            Packet::Unsubscribe { packet_id: 4, filters: vec!["a/#".into()] },
        ]);
        let mut p = pipe(&shared());
        p.send_in_pieces(&input, &cuts);
        prop_assert_eq!(
            packets(&p.output()),
            [
                ACCEPTED,
                Packet::SubAck { packet_id: 3, codes: vec![0] },
                Packet::PingResp,
                Packet::UnsubAck(4),
            ]
        );
    }

    /// After a CONNECT, whatever arrives is handled or refused by closing;
    /// never a panic.
    #[test]
    fn arbitrary_bytes_after_connect_never_panic(junk in proptest::collection::vec(any::<u8>(), 0..400)) {
        let mut p = pipe(&shared());
        p.send(&bytes(&[connect("fuzz", 0)]));
        p.send(&junk);
        let _ = p.output();
        let _ = p.flow();
    }
}

#[test]
fn session_records_round_trip_and_queue_paths_cannot_collide() {
    use crate::persist::{decode_subs, encode_subs, queue_path};
    let subs: Vec<(Arc<str>, u8)> = vec![("a/+/c".into(), 1), ("x y\n#".into(), 2), ("".into(), 0)];
    let back = decode_subs(&encode_subs(&subs));
    let want: Vec<(String, u8)> = subs.iter().map(|(f, q)| (f.to_string(), *q)).collect();
    assert_eq!(back, want);
    // A torn body yields what is whole.
    let body = encode_subs(&subs);
    assert_eq!(decode_subs(&body[..body.len() - 1]).len(), 2);
    assert!(decode_subs(&[9, 200, 0, b'x']).is_empty());
    assert_eq!(queue_path("/d/", "dev-1.a_b"), "/d/queue/dev-1.a_b");
    assert_eq!(queue_path("/d/", "a/+#%"), "/d/queue/a%2F%2B%23%25");
    assert_ne!(queue_path("/d/", "a/b"), queue_path("/d/", "a%2Fb"));
    let record = bindery_classes::Message::new("/d/sessions", "", "").with_headers(vec![(
        crate::persist::RELEASED.into(),
        "7:00000000000000ff,x:1,9:zz,65535:0000000000000001".into(),
    )]);
    assert_eq!(
        crate::persist::decode_released(&record),
        [
            (7, bindery_classes::MessageId(255)),
            (65535, bindery_classes::MessageId(1))
        ]
    );
}

#[test]
fn a_join_completes_once_with_the_main_receipt_or_the_first_failure() {
    use bindery::{Completion, Failure, FailureKind};
    use bindery_classes::MessageId;
    use bindery_classes::driver::Receipt;
    let receipt = |n| Receipt {
        id: MessageId(n),
        delivered_to: 0,
        backlog: 0,
    };
    let (done, rx) = Completion::channel();
    let join = crate::persist::Join::new(3, done);
    join.part(false, true)
        .fail(Failure::new(FailureKind::Full, "a session's queue is full"));
    join.part(true, false).succeed(receipt(7));
    assert!(rx.try_recv().is_err(), "not before every part");
    join.part(false, false).succeed(receipt(8));
    assert_eq!(rx.try_recv().unwrap().unwrap().id, MessageId(7));

    let (done, rx) = Completion::channel();
    let join = crate::persist::Join::new(2, done);
    join.part(true, false).succeed(receipt(1));
    join.part(false, false)
        .fail(Failure::new(FailureKind::Unavailable, "store down"));
    assert!(rx.try_recv().unwrap().is_err());
}
