//! `queue.purge`, `queue.delete` and `auto_delete` without sockets, over a
//! real memory queue.

use std::sync::Arc;

use bindery_classes::connection::testing::{Pipe, Routes};
use bindery_classes::driver::DriverHandle;
use bindery_classes::metrics::Scope;

use crate::core::Core;
use crate::methods::Method;
use crate::tests::{In, SETTLE, declare, frames, method, open, publish};
use crate::{Config, Shared, Stats};

/// An instance over a memory queue the test can look into.
fn shared() -> (Arc<Shared>, DriverHandle) {
    let queues: DriverHandle = Arc::new(driver_memqueue::MemQueue::new(Default::default()));
    let shared = Arc::new(Shared::new(
        "amqp",
        Config::default(),
        Arc::new(Routes(vec![("/queues/".into(), queues.clone())])),
        Arc::new(Stats::new(&Scope::detached("amqp"))),
    ));
    (shared, queues)
}

fn depth(d: &DriverHandle, path: &str) -> Option<u64> {
    d.stats()
        .into_iter()
        .find(|s| s.destination == path)
        .map(|s| s.depth)
}

fn filled(p: &mut Pipe<Core>, q: &str, n: usize) {
    p.send(&method(1, &declare(q)));
    for i in 0..n {
        p.send(&publish(1, "", q, format!("m{i}").as_bytes(), false));
    }
    p.settle(SETTLE);
    p.output();
}

#[test]
fn purge_empties_a_queue_and_says_how_many() {
    let (shared, queues) = shared();
    let mut p = open(&shared);
    filled(&mut p, "purged", 3);
    assert_eq!(depth(&queues, "/queues/purged"), Some(3));
    p.send(&method(
        1,
        &Method::QueuePurge {
            queue: "purged".into(),
            no_wait: false,
        },
    ));
    p.settle(SETTLE);
    assert_eq!(
        frames(&p.output()),
        [In::M(1, Method::QueuePurgeOk { message_count: 3 })]
    );
    assert_eq!(depth(&queues, "/queues/purged"), Some(0));
    // A queue declared but never used: nothing to purge.
    p.send(&method(1, &declare("unused")));
    p.send(&method(
        1,
        &Method::QueuePurge {
            queue: "unused".into(),
            no_wait: false,
        },
    ));
    p.settle(SETTLE);
    let got = frames(&p.output());
    assert_eq!(got[1], In::M(1, Method::QueuePurgeOk { message_count: 0 }));
    // One neither declared nor known: 404 naming it.
    p.send(&method(
        1,
        &Method::QueuePurge {
            queue: "nowhere".into(),
            no_wait: false,
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
        ] => {
            assert!(text.contains("\"nowhere\""), "{text}")
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn delete_honours_if_empty_and_if_unused_and_returns_the_count() {
    let (shared, queues) = shared();
    let mut p = open(&shared);
    filled(&mut p, "doomed", 2);
    let delete = |if_unused, if_empty| {
        method(
            1,
            &Method::QueueDelete {
                queue: "doomed".into(),
                if_unused,
                if_empty,
                no_wait: false,
            },
        )
    };
    p.send(&delete(false, true));
    p.settle(SETTLE);
    match &frames(&p.output())[..] {
        [
            In::M(
                1,
                Method::ChannelClose {
                    code: 406,
                    text,
                    class: 50,
                    method: 40,
                },
            ),
        ] => {
            assert!(
                text.contains("\"doomed\"") && text.contains("if-empty"),
                "{text}"
            )
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(depth(&queues, "/queues/doomed"), Some(2), "refused: kept");
    p.send(&method(1, &Method::ChannelCloseOk));
    p.send(&method(1, &Method::ChannelOpen));
    // A consumer on channel 2 makes it used.
    p.send(&method(2, &Method::ChannelOpen));
    p.send(&method(
        2,
        &Method::BasicConsume {
            queue: "doomed".into(),
            consumer_tag: "c".into(),
            no_local: false,
            no_ack: false,
            exclusive: false,
            no_wait: false,
            arguments: Vec::new(),
        },
    ));
    p.send(&delete(true, false));
    p.settle(SETTLE);
    let got = frames(&p.output());
    assert!(
        got.iter().any(|f| matches!(f, In::M(1, Method::ChannelClose { code: 406, text, .. }) if text.contains("if-unused"))),
        "{got:?}"
    );
    p.send(&method(1, &Method::ChannelCloseOk));
    p.send(&method(1, &Method::ChannelOpen));
    p.send(&delete(false, false));
    p.settle(SETTLE);
    let got = frames(&p.output());
    // The consumer is told, then the delete answered with both messages
    // (one waiting, one delivered to the consumer and unacked).
    let cancel = got.iter().position(
        |f| matches!(f, In::M(2, Method::BasicCancel { consumer_tag, .. }) if consumer_tag == "c"),
    );
    let ok = got
        .iter()
        .position(|f| *f == In::M(1, Method::QueueDeleteOk { message_count: 2 }));
    assert!(cancel.is_some() && ok.is_some() && cancel < ok, "{got:?}");
    assert_eq!(
        depth(&queues, "/queues/doomed"),
        None,
        "gone from its driver"
    );
    // Deleting it again is no error.
    p.send(&delete(false, false));
    p.settle(SETTLE);
    assert_eq!(
        frames(&p.output()),
        [In::M(1, Method::QueueDeleteOk { message_count: 0 })]
    );
}

#[test]
fn an_auto_delete_queue_goes_with_its_last_consumer_and_an_exclusive_one_with_its_connection() {
    let (shared, queues) = shared();
    let mut p = open(&shared);
    let declare_with = |q: &str, exclusive, auto_delete| {
        method(
            1,
            &Method::QueueDeclare {
                queue: q.into(),
                passive: false,
                durable: false,
                exclusive,
                auto_delete,
                no_wait: true,
                arguments: Vec::new(),
            },
        )
    };
    p.send(&declare_with("auto", false, true));
    p.send(&declare_with("mine", true, false));
    p.send(&publish(1, "", "auto", b"a", false));
    p.send(&publish(1, "", "mine", b"m", false));
    let consume = |tag: &str| {
        method(
            1,
            &Method::BasicConsume {
                queue: "auto".into(),
                consumer_tag: tag.into(),
                no_local: false,
                no_ack: true,
                exclusive: false,
                no_wait: true,
                arguments: Vec::new(),
            },
        )
    };
    p.send(&consume("one"));
    p.send(&consume("two"));
    p.settle(SETTLE);
    let cancel = |tag: &str| {
        method(
            1,
            &Method::BasicCancel {
                consumer_tag: tag.into(),
                no_wait: true,
            },
        )
    };
    p.send(&cancel("one"));
    p.settle(SETTLE);
    assert!(
        depth(&queues, "/queues/auto").is_some(),
        "one consumer left"
    );
    p.send(&cancel("two"));
    p.settle(SETTLE);
    assert_eq!(
        depth(&queues, "/queues/auto"),
        None,
        "the last consumer went"
    );
    assert!(!shared.queues.lock().contains_key("auto"));
    assert_eq!(depth(&queues, "/queues/mine"), Some(1));
    p.send(&method(
        0,
        &Method::ConnectionClose {
            code: 200,
            text: "".into(),
            class: 0,
            method: 0,
        },
    ));
    p.settle(SETTLE);
    assert_eq!(
        depth(&queues, "/queues/mine"),
        None,
        "gone with its connection"
    );
}
