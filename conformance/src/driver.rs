//! The driver contract.
//!
//! The harness is a function that makes an instance of the driver under
//! test, `Fn() -> DriverHandle`. A durable driver's harness must make each
//! new instance over the same storage as the last (that is how a restart is
//! simulated), so cases use destinations of their own and never assume an
//! empty instance.
//!
//! A durable driver's store must also be small, a few MiB (for
//! `driver.filequeue`, a `max_disk_bytes` budget), and each case's own:
//! [`DURABLE`]'s `a_full_store_refuses_publishes_and_still_takes_acks` fills
//! it, and what other cases left unacked could keep it full. The crate
//! macro calls the harness expression once per case; `bindery certify`
//! gives every case a scratch directory of its own.
//!
//! - queues: [`QUEUE`], and for durable queues also [`DURABLE`]; purge
//!   and delete (optional: `Unsupported` passes) in `driver_manage.rs`;
//! - topics: [`TOPIC`].
//!
//! Longer than most files here: the driver suites (queue, durable, topic)
//! share their harness; each case is a short function.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bindery::{Completion, Failure, FailureKind};
use bindery_classes::driver::{DriverHandle, Receipt, SubscribeOptions};
use bindery_classes::{Consumer, Delivery, Message, MessageId};
use bytes::Bytes;

use crate::{Case, ensure};

#[path = "driver_manage.rs"]
mod manage;

/// What a driver case gets: a way to make an instance.
pub type Harness = dyn Fn() -> DriverHandle;

/// How long a case waits for anything before it calls it lost.
const PATIENCE: Duration = Duration::from_secs(10);

/// The rules of a queue.
pub const QUEUE: &[Case<Harness>] = &[
    Case {
        name: "fifo_order_for_one_consumer",
        run: fifo_order_for_one_consumer,
    },
    Case {
        name: "competing_consumers_get_each_message_exactly_once",
        run: competing_consumers_get_each_message_exactly_once,
    },
    Case {
        name: "unacked_message_returns_after_its_lease_and_not_before",
        run: unacked_message_returns_after_its_lease_and_not_before,
    },
    Case {
        name: "acking_an_unknown_id_is_an_error",
        run: acking_an_unknown_id_is_an_error,
    },
    Case {
        name: "a_full_queue_refuses_with_backpressure",
        run: a_full_queue_refuses_with_backpressure,
    },
    Case {
        name: "empty_and_large_bodies_arrive_intact",
        run: empty_and_large_bodies_arrive_intact,
    },
    Case {
        name: "concurrent_publishers_and_consumers_lose_and_duplicate_nothing",
        run: concurrent_publishers_and_consumers_lose_and_duplicate_nothing,
    },
    Case {
        name: "reports_itself_as_a_queue",
        run: reports_itself_as_a_queue,
    },
    Case {
        name: "stop_ends_every_subscription",
        run: stop_ends_every_subscription,
    },
    Case {
        name: "purge_removes_the_waiting_messages_not_the_leased",
        run: manage::purge_removes_the_waiting_messages_not_the_leased,
    },
    Case {
        name: "delete_honours_its_conditions_and_ends_consumers",
        run: manage::delete_honours_its_conditions_and_ends_consumers,
    },
];

/// The rules a durable queue keeps beyond [`QUEUE`].
pub const DURABLE: &[Case<Harness>] = &[
    Case {
        name: "messages_and_acks_survive_a_restart",
        run: messages_and_acks_survive_a_restart,
    },
    Case {
        name: "a_full_store_refuses_publishes_and_still_takes_acks",
        run: a_full_store_refuses_publishes_and_still_takes_acks,
    },
    Case {
        name: "a_stopped_instance_hands_its_store_to_the_next",
        run: a_stopped_instance_hands_its_store_to_the_next,
    },
    Case {
        name: "purged_and_deleted_messages_stay_gone_after_a_restart",
        run: manage::purged_and_deleted_messages_stay_gone_after_a_restart,
    },
];

/// The rules of a topic.
pub const TOPIC: &[Case<Harness>] = &[
    Case {
        name: "every_live_subscriber_gets_every_message_in_order",
        run: every_live_subscriber_gets_every_message_in_order,
    },
    Case {
        name: "a_late_subscriber_gets_only_later_messages",
        run: a_late_subscriber_gets_only_later_messages,
    },
    Case {
        name: "a_cancelled_subscription_gets_nothing_more",
        run: a_cancelled_subscription_gets_nothing_more,
    },
    Case {
        name: "a_slow_subscriber_costs_bounded_memory",
        run: a_slow_subscriber_costs_bounded_memory,
    },
    Case {
        name: "empty_and_large_bodies_fan_out_intact",
        run: empty_and_large_bodies_fan_out_intact,
    },
    Case {
        name: "a_stalled_subscriber_stops_holding_back_publishers",
        run: a_stalled_subscriber_stops_holding_back_publishers,
    },
    Case {
        name: "stop_ends_every_subscription",
        run: stop_ends_every_subscription,
    },
    Case {
        name: "retained_messages_are_kept_as_the_driver_says",
        run: retained_messages_are_kept_as_the_driver_says,
    },
];

/// How long a topic driver may take to call a subscriber that takes
/// nothing stalled: its own stall time must be at most this.
pub const STALL_PATIENCE: Duration = Duration::from_secs(5);

/// Runs the queue suite (and the durable cases for `durable_queue`) or the
/// topic suite as `#[test]`s, one per case:
///
/// ```text
/// bindery_conformance::driver_suite!(queue, || make_my_driver());
/// ```
#[macro_export]
macro_rules! driver_suite {
    (queue, $make:expr) => {
        mod conformance_driver_queue {
            #[allow(unused_imports)]
            use super::*;
            $crate::__suite!(
                $crate::driver::QUEUE,
                $make,
                [
                    fifo_order_for_one_consumer,
                    competing_consumers_get_each_message_exactly_once,
                    unacked_message_returns_after_its_lease_and_not_before,
                    acking_an_unknown_id_is_an_error,
                    a_full_queue_refuses_with_backpressure,
                    empty_and_large_bodies_arrive_intact,
                    concurrent_publishers_and_consumers_lose_and_duplicate_nothing,
                    reports_itself_as_a_queue,
                    stop_ends_every_subscription,
                    purge_removes_the_waiting_messages_not_the_leased,
                    delete_honours_its_conditions_and_ends_consumers,
                ]
            );
        }
    };
    (durable_queue, $make:expr) => {
        $crate::driver_suite!(queue, $make);
        mod conformance_driver_durable {
            #[allow(unused_imports)]
            use super::*;
            $crate::__suite!(
                $crate::driver::DURABLE,
                $make,
                [
                    messages_and_acks_survive_a_restart,
                    a_full_store_refuses_publishes_and_still_takes_acks,
                    a_stopped_instance_hands_its_store_to_the_next,
                    purged_and_deleted_messages_stay_gone_after_a_restart,
                ]
            );
        }
    };
    (topic, $make:expr) => {
        mod conformance_driver_topic {
            #[allow(unused_imports)]
            use super::*;
            $crate::__suite!(
                $crate::driver::TOPIC,
                $make,
                [
                    every_live_subscriber_gets_every_message_in_order,
                    a_late_subscriber_gets_only_later_messages,
                    a_cancelled_subscription_gets_nothing_more,
                    a_slow_subscriber_costs_bounded_memory,
                    empty_and_large_bodies_fan_out_intact,
                    a_stalled_subscriber_stops_holding_back_publishers,
                    stop_ends_every_subscription,
                    retained_messages_are_kept_as_the_driver_says,
                ]
            );
        }
    };
}

/// A destination no other case (or run) uses.
fn destination(case: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "/conformance/{case}/{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

fn publish(d: &DriverHandle, dest: &str, body: impl Into<Bytes>) -> Result<Receipt, Failure> {
    let (done, outcome) = Completion::channel();
    d.publish(Message::new(dest, "application/octet-stream", body), done);
    outcome.recv_timeout(PATIENCE).unwrap_or_else(|_| {
        Err(Failure::new(
            FailureKind::Internal,
            "no answer to a publish within 10 s",
        ))
    })
}

fn publish_ok(d: &DriverHandle, dest: &str, body: impl Into<Bytes>) -> Result<Receipt, String> {
    publish(d, dest, body).map_err(|f| format!("publish to {dest} failed: {f}"))
}

fn ack(d: &DriverHandle, dest: &str, id: MessageId) -> Result<(), Failure> {
    let (done, outcome) = Completion::channel();
    d.ack(dest, id, done);
    outcome.recv_timeout(PATIENCE).unwrap_or_else(|_| {
        Err(Failure::new(
            FailureKind::Internal,
            "no answer to an ack within 10 s",
        ))
    })
}

fn next(rx: &Receiver<Delivery>, what: &str) -> Result<Message, String> {
    match rx.recv_timeout(PATIENCE) {
        Ok(Delivery::Message(m)) => Ok(m),
        Ok(Delivery::Closed(r)) => Err(format!("{what}: subscription closed: {r}")),
        Err(_) => Err(format!("{what}: nothing delivered within 10 s")),
    }
}

fn nothing_within(rx: &Receiver<Delivery>, wait: Duration, what: &str) -> Result<(), String> {
    match rx.recv_timeout(wait) {
        Err(RecvTimeoutError::Timeout) => Ok(()),
        Err(RecvTimeoutError::Disconnected) => Ok(()),
        Ok(Delivery::Message(m)) => Err(format!(
            "{what}: got message {} (delivery {}) within {wait:?}",
            m.id, m.delivery_count
        )),
        Ok(Delivery::Closed(r)) => Err(format!("{what}: subscription closed: {r}")),
    }
}

fn text(m: &Message) -> String {
    String::from_utf8_lossy(&m.body).into_owned()
}

fn options(credit: u32, lease: Duration) -> SubscribeOptions {
    SubscribeOptions { credit, lease }
}

fn fifo_order_for_one_consumer(make: &Harness) -> Result<(), String> {
    let d = make();
    let dest = destination("fifo");
    for i in 0..200 {
        publish_ok(&d, &dest, i.to_string())?;
    }
    let (c, rx) = Consumer::channel();
    let _sub = d
        .subscribe(&dest, c, options(1000, Duration::from_secs(60)))
        .map_err(|f| format!("subscribe: {f}"))?;
    for i in 0..200 {
        let m = next(&rx, "fifo")?;
        ensure!(
            text(&m) == i.to_string(),
            "message {i} was {:?}: order broken",
            text(&m)
        );
        ensure!(
            m.delivery_count == 1,
            "first delivery of {i} counted {}",
            m.delivery_count
        );
        ack(&d, &dest, m.id).map_err(|f| format!("ack of {i}: {f}"))?;
    }
    Ok(())
}

/// What consumers took: (id, body, delivery count) in arrival order, and
/// the acks the driver refused.
struct Taken {
    got: Vec<(MessageId, String, u32)>,
    refused_acks: Vec<String>,
}

/// Consumers on threads: each records what it gets, acks it and asks for
/// one more. They stop once `want` messages came, or after 3 s without any.
fn consume_all(
    d: &DriverHandle,
    dest: &str,
    consumers: usize,
    want: usize,
) -> Result<Taken, String> {
    let taken = Arc::new(Mutex::new(Taken {
        got: Vec::with_capacity(want),
        refused_acks: Vec::new(),
    }));
    let last = Arc::new(Mutex::new(Instant::now()));
    let mut threads = Vec::new();
    let mut subs = Vec::new();
    for _ in 0..consumers {
        let (c, rx) = Consumer::channel();
        let sub = Arc::new(
            d.subscribe(dest, c, options(1, Duration::from_secs(60)))
                .map_err(|f| format!("subscribe: {f}"))?,
        );
        subs.push(sub.clone());
        let (d, dest, taken, last) = (d.clone(), dest.to_owned(), taken.clone(), last.clone());
        threads.push(std::thread::spawn(move || -> Result<(), String> {
            let deadline = Instant::now() + PATIENCE * 6;
            loop {
                let quiet = last.lock().map_or(Duration::ZERO, |t| t.elapsed());
                let done = taken.lock().map_or(true, |t| t.got.len() >= want);
                if done || quiet > Duration::from_secs(3) || Instant::now() > deadline {
                    return Ok(());
                }
                match rx.recv_timeout(Duration::from_millis(50)) {
                    Ok(Delivery::Message(m)) => {
                        if let Ok(mut t) = last.lock() {
                            *t = Instant::now();
                        }
                        let refused = ack(&d, &dest, m.id).err();
                        if let Ok(mut t) = taken.lock() {
                            t.got.push((m.id, text(&m), m.delivery_count));
                            if let Some(f) = refused {
                                t.refused_acks.push(format!("ack of {}: {f}", m.id));
                            }
                        }
                        sub.credit(1);
                    }
                    Ok(Delivery::Closed(r)) => return Err(format!("closed: {r}")),
                    Err(_) => {}
                }
            }
        }));
    }
    for t in threads {
        t.join()
            .map_err(|_| "a consumer thread panicked".to_string())??;
    }
    drop(subs);
    let mut t = taken.lock().map_err(|_| "poisoned")?;
    Ok(Taken {
        got: std::mem::take(&mut t.got),
        refused_acks: std::mem::take(&mut t.refused_acks),
    })
}

fn exactly_once(sent: &HashSet<MessageId>, taken: &Taken) -> Result<(), String> {
    let mut seen = HashSet::new();
    for (id, body, count) in &taken.got {
        ensure!(
            seen.insert(*id),
            "message {id} ({body}) delivered twice (count {count})"
        );
        ensure!(
            sent.contains(id),
            "message {id} ({body}) was never published"
        );
    }
    let lost = sent.len() - seen.len();
    ensure!(lost == 0, "{lost} of {} messages lost", sent.len());
    if let Some(first) = taken.refused_acks.first() {
        return Err(format!(
            "{} acks refused, the first: {first}",
            taken.refused_acks.len()
        ));
    }
    Ok(())
}

fn competing_consumers_get_each_message_exactly_once(make: &Harness) -> Result<(), String> {
    let d = make();
    let dest = destination("compete");
    let mut sent = HashSet::new();
    for i in 0..2000 {
        sent.insert(publish_ok(&d, &dest, format!("m{i}"))?.id);
    }
    let got = consume_all(&d, &dest, 4, sent.len())?;
    exactly_once(&sent, &got)
}

fn unacked_message_returns_after_its_lease_and_not_before(make: &Harness) -> Result<(), String> {
    let d = make();
    let dest = destination("lease");
    let id = publish_ok(&d, &dest, "leased")?.id;
    let (c, rx) = Consumer::channel();
    let lease = Duration::from_millis(1500);
    let _sub = d
        .subscribe(&dest, c, options(10, lease))
        .map_err(|f| format!("subscribe: {f}"))?;
    let first = next(&rx, "first delivery")?;
    ensure!(
        first.id == id && first.delivery_count == 1,
        "first delivery: id {} count {}",
        first.id,
        first.delivery_count
    );
    // Not before the lease ends (half of it, with room for a slow machine).
    nothing_within(&rx, lease / 2, "redelivery before the lease ended")?;
    let again = next(&rx, "redelivery after the lease")?;
    ensure!(again.id == id, "redelivered {} instead of {id}", again.id);
    ensure!(
        again.delivery_count == 2,
        "redelivery counted {}, want 2",
        again.delivery_count
    );
    ack(&d, &dest, id).map_err(|f| format!("ack after redelivery: {f}"))?;
    nothing_within(&rx, lease + lease / 2, "delivery after the ack")
}

fn acking_an_unknown_id_is_an_error(make: &Harness) -> Result<(), String> {
    let d = make();
    let dest = destination("ack");
    let unknown = MessageId(0x0bad_0bad_0bad_0bad);
    ensure!(
        ack(&d, &dest, unknown).is_err(),
        "ack of an unknown id on an unused queue succeeded"
    );
    let id = publish_ok(&d, &dest, "x")?.id;
    ensure!(
        ack(&d, &dest, unknown).is_err(),
        "ack of an unknown id succeeded"
    );
    ensure!(
        ack(&d, &dest, id).is_err(),
        "ack of a message never delivered succeeded"
    );
    let (c, rx) = Consumer::channel();
    let _sub = d
        .subscribe(&dest, c, options(1, Duration::from_secs(60)))
        .map_err(|f| format!("subscribe: {f}"))?;
    let m = next(&rx, "delivery")?;
    ack(&d, &dest, m.id).map_err(|f| format!("ack: {f}"))?;
    ensure!(
        ack(&d, &dest, m.id).is_err(),
        "a second ack of the same message succeeded"
    );
    Ok(())
}

fn a_full_queue_refuses_with_backpressure(make: &Harness) -> Result<(), String> {
    const CAP: usize = 2_000_000;
    let d = make();
    let dest = destination("full");
    let mut accepted = 0;
    let refusal = loop {
        match publish(&d, &dest, Bytes::from_static(b"x")) {
            Ok(_) => accepted += 1,
            Err(f) => break f,
        }
        ensure!(
            accepted < CAP,
            "accepted {CAP} messages without refusing: memory is unbounded"
        );
    };
    ensure!(
        refusal.kind == FailureKind::Full,
        "refused after {accepted} with {:?}, want Full: {}",
        refusal.kind,
        refusal.reason
    );
    ensure!(
        refusal.retry_after.is_some(),
        "a Full refusal carries no retry hint"
    );
    ensure!(accepted > 0, "refused the very first message");
    // Taking one out makes room again.
    let (c, rx) = Consumer::channel();
    let sub = d
        .subscribe(&dest, c, options(1, Duration::from_secs(60)))
        .map_err(|f| format!("subscribe: {f}"))?;
    let m = next(&rx, "delivery from a full queue")?;
    ack(&d, &dest, m.id).map_err(|f| format!("ack: {f}"))?;
    drop(sub);
    publish_ok(&d, &dest, "room again")?;
    Ok(())
}

fn empty_and_large_bodies_arrive_intact(make: &Harness) -> Result<(), String> {
    let d = make();
    let dest = destination("bodies");
    let large: Vec<u8> = (0..4 * 1024 * 1024u32)
        .map(|i| (i * 7 % 251) as u8)
        .collect();
    publish_ok(&d, &dest, Bytes::new())?;
    publish_ok(&d, &dest, large.clone())?;
    let (c, rx) = Consumer::channel();
    let _sub = d
        .subscribe(&dest, c, options(2, Duration::from_secs(60)))
        .map_err(|f| format!("subscribe: {f}"))?;
    let empty = next(&rx, "empty body")?;
    ensure!(
        empty.body.is_empty(),
        "empty body came back as {} bytes",
        empty.body.len()
    );
    let big = next(&rx, "4 MiB body")?;
    ensure!(
        big.body.len() == large.len(),
        "4 MiB body came back as {} bytes",
        big.body.len()
    );
    ensure!(big.body[..] == large[..], "4 MiB body came back changed");
    ack(&d, &dest, empty.id).map_err(|f| format!("ack: {f}"))?;
    ack(&d, &dest, big.id).map_err(|f| format!("ack: {f}"))?;
    Ok(())
}

fn concurrent_publishers_and_consumers_lose_and_duplicate_nothing(
    make: &Harness,
) -> Result<(), String> {
    const PUBLISHERS: usize = 4;
    const EACH: usize = 1000;
    let d = make();
    let dest = destination("concurrent");
    let publishers: Vec<_> = (0..PUBLISHERS)
        .map(|p| {
            let (d, dest) = (d.clone(), dest.clone());
            std::thread::spawn(move || -> Result<Vec<MessageId>, String> {
                (0..EACH)
                    .map(|i| publish_ok(&d, &dest, format!("p{p}-{i}")).map(|r| r.id))
                    .collect()
            })
        })
        .collect();
    let consumer = {
        let (d, dest) = (d.clone(), dest.clone());
        std::thread::spawn(move || consume_all(&d, &dest, 4, PUBLISHERS * EACH))
    };
    let mut sent = HashSet::new();
    for p in publishers {
        let ids = p.join().map_err(|_| "a publisher panicked".to_string())??;
        sent.extend(ids);
    }
    ensure!(sent.len() == PUBLISHERS * EACH, "receipts repeated an id");
    let got = consumer
        .join()
        .map_err(|_| "the consumers panicked".to_string())??;
    exactly_once(&sent, &got)
}

fn reports_itself_as_a_queue(make: &Harness) -> Result<(), String> {
    ensure!(
        make().info().queue,
        "a queue driver's info() says it is not a queue"
    );
    Ok(())
}

fn messages_and_acks_survive_a_restart(make: &Harness) -> Result<(), String> {
    let dest = destination("restart");
    let mut ids = Vec::new();
    {
        let d = make();
        ensure!(
            d.info().durable,
            "a durable driver's info() says it is not durable"
        );
        for i in 0..10 {
            ids.push(publish_ok(&d, &dest, format!("r{i}"))?.id);
        }
        let (c, rx) = Consumer::channel();
        let sub = d
            .subscribe(&dest, c, options(5, Duration::from_secs(60)))
            .map_err(|f| format!("subscribe: {f}"))?;
        for want in &ids[..5] {
            let m = next(&rx, "before the restart")?;
            ensure!(
                m.id == *want,
                "before the restart got {} instead of {want}",
                m.id
            );
            ack(&d, &dest, m.id).map_err(|f| format!("ack: {f}"))?;
        }
        drop(sub);
    }
    let d = make();
    let (c, rx) = Consumer::channel();
    let _sub = d
        .subscribe(&dest, c, options(100, Duration::from_secs(60)))
        .map_err(|f| format!("subscribe after the restart: {f}"))?;
    for want in &ids[5..] {
        let m = next(&rx, "after the restart")?;
        ensure!(
            m.id == *want,
            "after the restart got {} ({}) instead of {want}",
            m.id,
            text(&m)
        );
        ack(&d, &dest, m.id).map_err(|f| format!("ack after the restart: {f}"))?;
    }
    nothing_within(
        &rx,
        Duration::from_millis(300),
        "an acked message after the restart",
    )
}

/// The body size the full-store case fills with.
const FILL_BODY: usize = 64 * 1024;
/// Publishes of [`FILL_BODY`] before the case calls a store unbounded
/// (256 MiB).
const FILL_CAP: usize = 4096;

/// What filling a store came to: confirmed messages by id, the bodies of
/// refused ones, and the first refusal.
struct Filled {
    confirmed: HashMap<MessageId, String>,
    refused: HashSet<String>,
    refusal: Failure,
}

/// Publishes bodies of [`FILL_BODY`] to `dest` until one is refused, then
/// tries three more (which may be confirmed or refused).
fn fill(d: &DriverHandle, dest: &str, tag: &str) -> Result<Filled, String> {
    let mut confirmed = HashMap::new();
    let mut refused = HashSet::new();
    let body = |i: usize| {
        let mut b = format!("{tag}-{i}-").into_bytes();
        b.resize(FILL_BODY, b'.');
        b
    };
    let mut refusal = None;
    for i in 0..FILL_CAP {
        match publish(d, dest, body(i)) {
            Ok(r) => {
                confirmed.insert(r.id, format!("{tag}-{i}-"));
            }
            Err(f) => {
                refused.insert(format!("{tag}-{i}-"));
                refusal = Some(f);
                break;
            }
        }
    }
    let Some(refusal) = refusal else {
        return Err(format!(
            "{FILL_CAP} publishes of {FILL_BODY} bytes and none refused: the store never \
             filled (a durable harness must give its driver a store of a few MiB)"
        ));
    };
    ensure!(
        matches!(refusal.kind, FailureKind::Full | FailureKind::Unavailable),
        "a full store refused with {:?}, want Full or Unavailable: {}",
        refusal.kind,
        refusal.reason
    );
    ensure!(
        refusal.retry_after.is_some(),
        "a full store's refusal carries no retry hint: {}",
        refusal.reason
    );
    ensure!(
        !confirmed.is_empty(),
        "refused the very first publish: {refusal}"
    );
    for i in FILL_CAP..FILL_CAP + 3 {
        match publish(d, dest, body(i)) {
            Ok(r) => {
                confirmed.insert(r.id, format!("{tag}-{i}-"));
            }
            Err(_) => {
                refused.insert(format!("{tag}-{i}-"));
            }
        }
    }
    Ok(Filled {
        confirmed,
        refused,
        refusal,
    })
}

/// Takes every message of `dest` and acks it: each confirmed message comes
/// once, none refused comes, and no ack is refused.
fn drain_filled(d: &DriverHandle, dest: &str, filled: &Filled, when: &str) -> Result<(), String> {
    let (c, rx) = Consumer::channel();
    let sub = d
        .subscribe(dest, c, options(16, Duration::from_secs(600)))
        .map_err(|f| format!("subscribe {when}: {f}"))?;
    let mut seen = HashSet::new();
    while seen.len() < filled.confirmed.len() {
        let m = next(&rx, &format!("draining a full store {when}"))
            .map_err(|e| format!("{e} ({} of {} taken)", seen.len(), filled.confirmed.len()))?;
        let head: String = text(&m).split_inclusive('-').take(2).collect();
        ensure!(
            !filled.refused.contains(&head),
            "{when}: got {head}, whose publish was refused"
        );
        ensure!(
            filled.confirmed.get(&m.id) == Some(&head),
            "{when}: got message {} ({head}) that was never confirmed as such",
            m.id
        );
        ensure!(
            seen.insert(m.id),
            "{when}: message {} ({head}) came twice",
            m.id
        );
        ack(d, dest, m.id).map_err(|f| {
            format!(
                "{when}: the ack of {} was refused while the store was full \
                 (acks must always have room): {f}",
                m.id
            )
        })?;
        sub.credit(1);
    }
    nothing_within(&rx, Duration::from_millis(200), when)
}

/// Publishes once space is back: retried within [`PATIENCE`] as the
/// refusals' hints say; then takes and acks it.
fn publishes_resume(d: &DriverHandle, dest: &str, when: &str) -> Result<(), String> {
    let deadline = Instant::now() + PATIENCE;
    let id = loop {
        match publish(d, dest, format!("resumed {when}")) {
            Ok(r) => break r.id,
            Err(f) if Instant::now() < deadline => {
                let wait = f.retry_after.unwrap_or(Duration::from_millis(100));
                std::thread::sleep(wait.min(Duration::from_millis(100)));
            }
            Err(f) => {
                return Err(format!(
                    "{when}: the store was drained but publishes still fail after 10 s: {f}"
                ));
            }
        }
    };
    let (c, rx) = Consumer::channel();
    let _sub = d
        .subscribe(dest, c, options(1, Duration::from_secs(600)))
        .map_err(|f| format!("subscribe: {f}"))?;
    let m = next(&rx, &format!("the publish after space came back {when}"))?;
    ensure!(m.id == id, "{when}: got {} instead of {id}", m.id);
    ack(d, dest, id).map_err(|f| format!("{when}: ack: {f}"))
}

fn a_full_store_refuses_publishes_and_still_takes_acks(make: &Harness) -> Result<(), String> {
    let dest = destination("full-store");
    {
        let d = make();
        // Filled, drained with acks, and taking publishes again.
        let filled = fill(&d, &dest, "a")?;
        drain_filled(&d, &dest, &filled, "while refusing publishes")?;
        publishes_resume(&d, &dest, "after a drain")?;
        // Filled again, and restarted full.
        let filled = fill(&d, &dest, "b")?;
        drop(d);
        let d = make();
        drain_filled(&d, &dest, &filled, "after a restart on a full store")
            .map_err(|e| format!("{e} (first refusal: {})", filled.refusal))?;
        publishes_resume(&d, &dest, "after a restart on a full store")?;
    }
    Ok(())
}

fn subscribe_topic(
    d: &DriverHandle,
    dest: &str,
    credit: u32,
) -> Result<(bindery_classes::Subscription, Receiver<Delivery>), String> {
    let (c, rx) = Consumer::channel();
    let sub = d
        .subscribe(dest, c, options(credit, Duration::from_secs(60)))
        .map_err(|f| format!("subscribe: {f}"))?;
    Ok((sub, rx))
}

fn every_live_subscriber_gets_every_message_in_order(make: &Harness) -> Result<(), String> {
    let d = make();
    ensure!(
        !d.info().queue,
        "a topic driver's info() says it is a queue"
    );
    let dest = destination("fanout");
    let subs: Vec<_> = (0..3)
        .map(|_| subscribe_topic(&d, &dest, 1000))
        .collect::<Result<_, _>>()?;
    for i in 0..100 {
        publish_ok(&d, &dest, i.to_string())?;
    }
    for (n, (_, rx)) in subs.iter().enumerate() {
        for i in 0..100 {
            let m = next(rx, "fan-out")?;
            ensure!(
                text(&m) == i.to_string(),
                "subscriber {n} got {:?} as message {i}",
                text(&m)
            );
        }
    }
    Ok(())
}

fn a_late_subscriber_gets_only_later_messages(make: &Harness) -> Result<(), String> {
    let d = make();
    let dest = destination("late");
    publish_ok(&d, &dest, "before")?;
    let (_sub, rx) = subscribe_topic(&d, &dest, 10)?;
    publish_ok(&d, &dest, "after")?;
    let m = next(&rx, "late subscriber")?;
    ensure!(text(&m) == "after", "a late subscriber got {:?}", text(&m));
    nothing_within(&rx, Duration::from_millis(200), "late subscriber")
}

fn a_cancelled_subscription_gets_nothing_more(make: &Harness) -> Result<(), String> {
    let d = make();
    let dest = destination("cancel");
    let (sub, rx) = subscribe_topic(&d, &dest, 10)?;
    publish_ok(&d, &dest, "one")?;
    next(&rx, "before cancel")?;
    sub.cancel();
    publish_ok(&d, &dest, "two")?;
    nothing_within(&rx, Duration::from_millis(200), "after cancel")
}

fn a_slow_subscriber_costs_bounded_memory(make: &Harness) -> Result<(), String> {
    const N: u64 = 100_000;
    let d = make();
    let dest = destination("slow");
    let (_sub, _rx) = subscribe_topic(&d, &dest, 0)?;
    for i in 0..N {
        if let Err(f) = publish(&d, &dest, Bytes::from_static(b"x")) {
            ensure!(f.kind == FailureKind::Full, "publish {i} failed with {f}");
        }
    }
    let held: u64 = d
        .stats()
        .iter()
        .filter(|s| s.destination == dest)
        .map(|s| s.depth)
        .sum();
    ensure!(
        held < N,
        "holds all {held} messages for a subscriber that takes none"
    );
    Ok(())
}

fn empty_and_large_bodies_fan_out_intact(make: &Harness) -> Result<(), String> {
    let d = make();
    let dest = destination("topic-bodies");
    let (_s1, r1) = subscribe_topic(&d, &dest, 10)?;
    let (_s2, r2) = subscribe_topic(&d, &dest, 10)?;
    let large: Vec<u8> = (0..4 * 1024 * 1024u32).map(|i| (i % 253) as u8).collect();
    publish_ok(&d, &dest, Bytes::new())?;
    publish_ok(&d, &dest, large.clone())?;
    for rx in [&r1, &r2] {
        ensure!(
            next(rx, "empty body")?.body.is_empty(),
            "empty body changed"
        );
        ensure!(
            next(rx, "4 MiB body")?.body[..] == large[..],
            "4 MiB body changed"
        );
    }
    Ok(())
}

/// The backlog a publisher sees counts subscribers that drain, and stops
/// counting one that takes nothing within [`STALL_PATIENCE`], which is
/// then reported in the stats (see `bindery_classes::fanout`).
fn a_stalled_subscriber_stops_holding_back_publishers(make: &Harness) -> Result<(), String> {
    let d = make();
    let dest = destination("stalled");
    let (_stalled, _ignored) = subscribe_topic(&d, &dest, 0)?;
    let (_healthy, healthy) = subscribe_topic(&d, &dest, 100_000)?;
    let mut sent = 0;
    let mut last = publish_ok(&d, &dest, "0")?;
    while sent < 9 {
        sent += 1;
        last = publish_ok(&d, &dest, sent.to_string())?;
    }
    ensure!(
        last.backlog > 0,
        "receipts report no backlog while 10 messages wait for a subscriber"
    );
    let start = Instant::now();
    while last.backlog > 0 {
        ensure!(
            start.elapsed() < STALL_PATIENCE,
            "a subscriber that took nothing for {STALL_PATIENCE:?} still sets the publishers' \
             backlog ({} messages)",
            last.backlog
        );
        std::thread::sleep(Duration::from_millis(50));
        sent += 1;
        last = publish_ok(&d, &dest, sent.to_string())?;
    }
    ensure!(
        last.delivered_to == 2,
        "the stalled subscriber was dropped instead of buffered by policy \
         (reached {} subscribers)",
        last.delivered_to
    );
    let stalled: u64 = d
        .stats()
        .iter()
        .filter(|s| s.destination == dest)
        .map(|s| s.stalled)
        .sum();
    ensure!(
        stalled == 1,
        "stats report {stalled} stalled subscribers, not 1"
    );
    for i in 0..=sent {
        let m = next(&healthy, "the healthy subscriber")?;
        ensure!(
            text(&m) == i.to_string(),
            "the healthy subscriber got {:?} as message {i}",
            text(&m)
        );
    }
    Ok(())
}

/// `Driver::stop` tells every consumer its subscription is over, so a
/// terminal can tell its client rather than wait forever.
fn stop_ends_every_subscription(make: &Harness) -> Result<(), String> {
    let d = make();
    let a = destination("stop-a");
    let b = destination("stop-b");
    let (_s1, r1) = subscribe_topic(&d, &a, 10)?;
    let (_s2, r2) = subscribe_topic(&d, &a, 10)?;
    let (_s3, r3) = subscribe_topic(&d, &b, 10)?;
    d.stop();
    for (n, rx) in [r1, r2, r3].iter().enumerate() {
        match rx.recv_timeout(PATIENCE) {
            Ok(Delivery::Closed(_)) => {}
            Ok(Delivery::Message(m)) => {
                return Err(format!(
                    "subscriber {n} got {:?} instead of Closed",
                    text(&m)
                ));
            }
            Err(_) => return Err(format!("subscriber {n} was not told of the stop")),
        }
    }
    Ok(())
}

/// A restart at run time: the old incarnation is stopped but still alive
/// (handles to it linger) when the next one opens the same store. Every
/// confirmed, unacked message is in the next one, which takes new work;
/// dropping the old one after changes nothing.
fn a_stopped_instance_hands_its_store_to_the_next(make: &Harness) -> Result<(), String> {
    let dest = destination("handover");
    let old = make();
    let mut ids = Vec::new();
    for i in 0..20 {
        ids.push(publish_ok(&old, &dest, format!("h{i}"))?.id);
    }
    old.stop();
    ensure!(
        publish(&old, &dest, "too late").is_err(),
        "a stopped instance still stores messages: its store is not closed"
    );
    let new = make();
    ids.push(publish_ok(&new, &dest, "after the handover")?.id);
    drop(old);
    let (c, rx) = Consumer::channel();
    let _sub = new
        .subscribe(&dest, c, options(100, Duration::from_secs(60)))
        .map_err(|f| format!("subscribe after the handover: {f}"))?;
    for want in &ids {
        let m = next(&rx, "after the handover")?;
        ensure!(
            m.id == *want,
            "after the handover got {} ({}) instead of {want}",
            m.id,
            text(&m)
        );
        ack(&new, &dest, m.id).map_err(|f| format!("ack after the handover: {f}"))?;
    }
    nothing_within(&rx, Duration::from_millis(200), "a message after the last")
}

/// A driver that says it [`retains`](bindery_classes::Driver::retains)
/// keeps the latest [`RETAIN`](bindery_classes::driver::RETAIN) publish
/// per destination (found exactly and by wildcard; an empty body clears;
/// a plain publish changes nothing); one that does not refuses to be asked.
fn retained_messages_are_kept_as_the_driver_says(make: &Harness) -> Result<(), String> {
    let d = make();
    let base = destination("retained");
    let dest = format!("{base}/x");
    let asked = |filter: &str| -> Result<Vec<String>, Failure> {
        let (done, outcome) = Completion::channel();
        d.retained(filter, done);
        outcome
            .recv_timeout(PATIENCE)
            .map_err(|_| Failure::new(FailureKind::Internal, "no answer within 10 s"))?
            .map(|ms| ms.iter().map(text).collect())
    };
    if !d.retains() {
        ensure!(
            asked(&dest).is_err(),
            "a driver that keeps no retained messages answered for some"
        );
        return Ok(());
    }
    let retain = |body: &str| -> Result<(), String> {
        let mut m = Message::new(&dest, "text/plain", body.to_owned());
        m.headers = vec![(bindery_classes::driver::RETAIN.into(), "1".into())].into();
        let (done, outcome) = Completion::channel();
        d.publish(m, done);
        match outcome.recv_timeout(PATIENCE) {
            Ok(Ok(_)) => Ok(()),
            other => Err(format!("retained publish {body:?}: {other:?}")),
        }
    };
    retain("first")?;
    retain("latest")?;
    publish_ok(&d, &dest, "not retained")?;
    let got = asked(&dest).map_err(|f| format!("asking for {dest}: {f}"))?;
    ensure!(
        got == ["latest"],
        "{dest} retains {got:?}, want [\"latest\"]"
    );
    let wild = format!("{base}/+");
    let got = asked(&wild).map_err(|f| format!("asking for {wild}: {f}"))?;
    ensure!(got == ["latest"], "{wild} finds {got:?}, want [\"latest\"]");
    retain("")?;
    let got = asked(&dest).map_err(|f| format!("asking for {dest}: {f}"))?;
    ensure!(got.is_empty(), "an empty retained publish left {got:?}");
    Ok(())
}
