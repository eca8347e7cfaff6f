//! The codec's round trips: every method this server reads or writes,
//! with every combination of its packed bit fields, the content header's
//! properties, field tables, and errors that name field and offset.

use bytes::Bytes;

use crate::methods::{self, Method};
use crate::wire::{self, ContentHeader, Properties, Value};

pub(crate) fn every_method() -> Vec<Method> {
    use Method::*;
    let s = |v: &str| v.to_owned();
    let table = vec![
        (s("a"), Value::Str(Bytes::from_static(b"x"))),
        (s("n"), Value::I64(-3)),
        (s("t"), Value::Table(vec![(s("b"), Value::Bool(true))])),
        (
            s("arr"),
            Value::Array(vec![Value::U8(1), Value::Void, Value::F64(1.5)]),
        ),
    ];
    let mut all = vec![
        ConnectionStart {
            server_properties: table.clone(),
            mechanisms: Bytes::from_static(b"PLAIN"),
            locales: Bytes::from_static(b"en_US"),
        },
        ConnectionStartOk {
            client_properties: table.clone(),
            mechanism: s("PLAIN"),
            response: Bytes::from_static(b"\0guest\0guest"),
            locale: s("en_US"),
        },
        ConnectionTune {
            channel_max: 7,
            frame_max: 4096,
            heartbeat: 3,
        },
        ConnectionTuneOk {
            channel_max: 8,
            frame_max: 8192,
            heartbeat: 0,
        },
        ConnectionOpen { vhost: s("/") },
        ConnectionOpenOk,
        ConnectionClose {
            code: 320,
            text: s("bye"),
            class: 60,
            method: 40,
        },
        ConnectionCloseOk,
        ConnectionBlocked {
            reason: s("low memory"),
        },
        ConnectionUnblocked,
        ConnectionUpdateSecret {
            new_secret: Bytes::from_static(b"token"),
            reason: s("rotation"),
        },
        ConnectionUpdateSecretOk,
        ChannelOpen,
        ChannelOpenOk,
        ChannelCloseOk,
        ChannelClose {
            code: 404,
            text: s("NOT_FOUND"),
            class: 50,
            method: 10,
        },
        ExchangeDeclareOk,
        ExchangeDeleteOk,
        QueueDeclareOk {
            queue: s("q"),
            message_count: 4,
            consumer_count: 2,
        },
        QueueBindOk,
        QueueUnbind {
            queue: s("q"),
            exchange: s("amq.topic"),
            routing_key: s("a.*"),
            arguments: table.clone(),
        },
        QueueUnbindOk,
        QueuePurgeOk { message_count: 9 },
        QueueDeleteOk { message_count: 1 },
        BasicQosOk,
        BasicConsumeOk {
            consumer_tag: s("c"),
        },
        BasicCancelOk {
            consumer_tag: s("c"),
        },
        BasicReturn {
            code: 312,
            text: s("NO_ROUTE"),
            exchange: s(""),
            routing_key: s("k"),
        },
        BasicGetEmpty,
        BasicRecoverOk,
        ConfirmSelectOk,
        Other {
            class: 90,
            method: 10,
        },
    ];
    // Every combination of every bit field.
    for b in 0..32u8 {
        let bit = |i: u8| b & (1 << i) != 0;
        all.extend([
            ChannelFlow { active: bit(0) },
            ChannelFlowOk { active: bit(1) },
            ExchangeDeclare {
                exchange: s("x"),
                kind: s("topic"),
                passive: bit(0),
                durable: bit(1),
                auto_delete: bit(2),
                internal: bit(3),
                no_wait: bit(4),
                arguments: table.clone(),
            },
            ExchangeDelete {
                exchange: s("x"),
                if_unused: bit(0),
                no_wait: bit(1),
            },
            QueueDeclare {
                queue: s("q"),
                passive: bit(0),
                durable: bit(1),
                exclusive: bit(2),
                auto_delete: bit(3),
                no_wait: bit(4),
                arguments: Vec::new(),
            },
            QueueBind {
                queue: s("q"),
                exchange: s("amq.topic"),
                routing_key: s("a.#"),
                no_wait: bit(0),
                arguments: Vec::new(),
            },
            QueuePurge {
                queue: s("q"),
                no_wait: bit(2),
            },
            QueueDelete {
                queue: s("q"),
                if_unused: bit(0),
                if_empty: bit(1),
                no_wait: bit(2),
            },
            BasicQos {
                prefetch_size: 0,
                prefetch_count: 10,
                global: bit(3),
            },
            BasicConsume {
                queue: s("q"),
                consumer_tag: s("t"),
                no_local: bit(0),
                no_ack: bit(1),
                exclusive: bit(2),
                no_wait: bit(3),
                arguments: Vec::new(),
            },
            BasicCancel {
                consumer_tag: s("t"),
                no_wait: bit(4),
            },
            BasicPublish {
                exchange: s(""),
                routing_key: s("q"),
                mandatory: bit(0),
                immediate: bit(1),
            },
            BasicDeliver {
                consumer_tag: s("t"),
                delivery_tag: u64::MAX - u64::from(b),
                redelivered: bit(0),
                exchange: s("e"),
                routing_key: s("k"),
            },
            BasicGet {
                queue: s("q"),
                no_ack: bit(1),
            },
            BasicGetOk {
                delivery_tag: 7,
                redelivered: bit(2),
                exchange: s(""),
                routing_key: s("q"),
                message_count: 3,
            },
            BasicAck {
                delivery_tag: 5,
                multiple: bit(0),
            },
            BasicReject {
                delivery_tag: 5,
                requeue: bit(1),
            },
            BasicRecoverAsync { requeue: bit(2) },
            BasicRecover { requeue: bit(3) },
            BasicNack {
                delivery_tag: 6,
                multiple: bit(0),
                requeue: bit(1),
            },
            ConfirmSelect { no_wait: bit(4) },
        ]);
    }
    all
}

#[test]
fn every_method_round_trips_with_every_bit_combination() {
    for m in every_method() {
        let mut out = Vec::new();
        methods::encode(&mut out, &m);
        assert_eq!(
            methods::decode(&out).as_ref(),
            Ok(&m),
            "{m:?} as {out:02x?}"
        );
        assert!(!m.name().is_empty());
    }
}

#[test]
fn packed_bits_are_low_bit_first() {
    let mut out = Vec::new();
    methods::encode(
        &mut out,
        &Method::QueueDeclare {
            queue: "q".into(),
            passive: false,
            durable: true,
            exclusive: false,
            auto_delete: true,
            no_wait: false,
            arguments: Vec::new(),
        },
    );
    // class, method, ticket, "q", bits: durable (bit 1) and auto-delete (bit 3).
    assert_eq!(out[..9], [0, 50, 0, 10, 0, 0, 1, b'q', 0b1010]);
}

#[test]
fn properties_round_trip_all_and_none() {
    let full = Properties {
        content_type: Some("text/plain".into()),
        content_encoding: Some("gzip".into()),
        headers: Some(vec![("h".into(), Value::Str(Bytes::from_static(b"v")))]),
        delivery_mode: Some(2),
        priority: Some(5),
        correlation_id: Some("c".into()),
        reply_to: Some("r".into()),
        expiration: Some("60000".into()),
        message_id: Some("m".into()),
        timestamp: Some(1_700_000_000),
        kind: Some("t".into()),
        user_id: Some("guest".into()),
        app_id: Some("a".into()),
        cluster_id: Some("x".into()),
    };
    for p in [full, Properties::default()] {
        let h = ContentHeader {
            class: 60,
            body_size: 12,
            properties: p,
        };
        let mut out = Vec::new();
        wire::put_header(&mut out, &h);
        assert_eq!(wire::header(&out), Ok(h));
    }
}

#[test]
fn truncated_methods_name_the_field_and_offset() {
    let mut out = Vec::new();
    methods::encode(
        &mut out,
        &Method::QueueDeclare {
            queue: "orders".into(),
            passive: false,
            durable: false,
            exclusive: false,
            auto_delete: false,
            no_wait: false,
            arguments: Vec::new(),
        },
    );
    let err = methods::decode(&out[..8]).unwrap_err();
    assert!(err.contains("queue") && err.contains("offset 7"), "{err}");
}
