//! The suites can fail: modules that each break one rule, and the case that
//! must catch each. Every mutant wraps a real module and changes one thing;
//! the unchanged module passes the same case, so the failure is the
//! mutation's.
//!
//! Longer than most files here: one mutant per rule, each a few lines, with
//! the case that must catch it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bindery::{Completion, Failure};
use bindery_classes::driver::{
    DestinationStats, DriverHandle, DriverInfo, Receipt, SubscribeOptions,
};
use bindery_classes::{
    Consumer, Delivery, Driver, Message, MessageId, ParseError, Parser, Subscription,
};
use bindery_conformance::{Case, driver, parser};
use parking_lot::Mutex;

fn memqueue() -> DriverHandle {
    Arc::new(driver_memqueue::MemQueue::new(driver_memqueue::Config {
        max_depth: 20_000,
        ..Default::default()
    }))
}

/// A publish, as a mutant does it.
type PublishFn = Box<dyn Fn(&DriverHandle, Message, Completion<Receipt>) + Send + Sync>;
/// A subscribe, as a mutant does it.
type SubscribeFn = Box<
    dyn Fn(&DriverHandle, &str, Consumer, SubscribeOptions) -> Result<Subscription, Failure>
        + Send
        + Sync,
>;

/// An ack, as a mutant does it.
type AckFn = Box<dyn Fn(&DriverHandle, &str, MessageId, Completion<()>) + Send + Sync>;

/// A driver that changes one thing about `inner`.
struct Mutant {
    inner: DriverHandle,
    publish: PublishFn,
    subscribe: SubscribeFn,
    ack: AckFn,
}

impl Mutant {
    fn new(inner: DriverHandle) -> Mutant {
        Mutant {
            inner,
            publish: Box::new(|d, m, done| d.publish(m, done)),
            subscribe: Box::new(|d, dest, c, o| d.subscribe(dest, c, o)),
            ack: Box::new(|d, dest, id, done| d.ack(dest, id, done)),
        }
    }
}

impl Driver for Mutant {
    fn info(&self) -> DriverInfo {
        self.inner.info()
    }
    fn publish(&self, message: Message, done: Completion<Receipt>) {
        (self.publish)(&self.inner, message, done)
    }
    fn subscribe(
        &self,
        dest: &str,
        c: Consumer,
        o: SubscribeOptions,
    ) -> Result<Subscription, Failure> {
        (self.subscribe)(&self.inner, dest, c, o)
    }
    fn ack(&self, dest: &str, id: MessageId, done: Completion<()>) {
        (self.ack)(&self.inner, dest, id, done)
    }
    fn release(&self, dest: &str, id: MessageId) -> Result<(), Failure> {
        self.inner.release(dest, id)
    }
    fn stats(&self) -> Vec<DestinationStats> {
        self.inner.stats()
    }
}

fn case<H: ?Sized>(cases: &'static [Case<H>], name: &str) -> &'static Case<H> {
    cases
        .iter()
        .find(|c| c.name == name)
        .expect("a case of that name")
}

fn topic() -> DriverHandle {
    Arc::new(driver_topic::TopicDriver::new(
        driver_topic::Config::default(),
    ))
}

/// `name` passes on the real module and fails on the mutant.
fn caught(name: &str, mutant: &driver::Harness) -> String {
    caught_in(driver::QUEUE, &memqueue, name, mutant)
}

/// `name` of `cases` passes on `real` and fails on the mutant.
fn caught_in(
    cases: &'static [Case<driver::Harness>],
    real: &driver::Harness,
    name: &str,
    mutant: &driver::Harness,
) -> String {
    let case = case(cases, name);
    if let Err(e) = (case.run)(real) {
        panic!("control: the unmutated driver fails {name}: {e}");
    }
    match (case.run)(mutant) {
        Ok(()) => panic!("{name} did not catch the mutant"),
        Err(reason) => reason,
    }
}

#[test]
fn a_driver_that_loses_one_message_in_a_thousand_is_caught() {
    let make = || -> DriverHandle {
        let n = Arc::new(AtomicU64::new(0));
        let mut m = Mutant::new(memqueue());
        m.publish = Box::new(move |d, msg, done| {
            if n.fetch_add(1, Ordering::Relaxed) % 1000 == 999 {
                // Confirms, keeps nothing.
                return done.succeed(Receipt {
                    id: msg.id,
                    delivered_to: 0,
                    backlog: 0,
                });
            }
            d.publish(msg, done)
        });
        Arc::new(m)
    };
    let reason = caught("competing_consumers_get_each_message_exactly_once", &make);
    assert!(reason.contains("lost"), "{reason}");
    let reason = caught(
        "concurrent_publishers_and_consumers_lose_and_duplicate_nothing",
        &make,
    );
    assert!(reason.contains("lost"), "{reason}");
}

#[test]
fn a_topic_that_lets_a_stalled_subscriber_hold_back_publishers_is_caught() {
    // Reports everything buffered as the backlog, stalled subscribers
    // included: slow and stalled treated alike.
    let make = || -> DriverHandle {
        let mut m = Mutant::new(topic());
        m.publish = Box::new(|d, msg, done| {
            let dest = msg.destination.clone();
            let (inner, outcome) = Completion::channel();
            d.publish(msg, inner);
            match outcome.recv() {
                Ok(Ok(mut r)) => {
                    let held = d
                        .stats()
                        .iter()
                        .filter(|s| *s.destination == *dest)
                        .map(|s| s.depth)
                        .sum::<u64>();
                    r.backlog = held as u32;
                    done.succeed(r)
                }
                Ok(Err(f)) => done.fail(f),
                Err(_) => done.fail(Failure::new(bindery::FailureKind::Internal, "no outcome")),
            }
        });
        Arc::new(m)
    };
    let reason = caught_in(
        driver::TOPIC,
        &topic,
        "a_stalled_subscriber_stops_holding_back_publishers",
        &make,
    );
    assert!(
        reason.contains("still sets the publishers' backlog"),
        "{reason}"
    );
}

#[test]
fn a_driver_that_redelivers_before_the_lease_ends_is_caught() {
    let make = || -> DriverHandle {
        let mut m = Mutant::new(memqueue());
        m.subscribe = Box::new(|d, dest, c, mut o| {
            o.lease /= 10;
            d.subscribe(dest, c, o)
        });
        Arc::new(m)
    };
    let reason = caught(
        "unacked_message_returns_after_its_lease_and_not_before",
        &make,
    );
    assert!(reason.contains("before the lease ended"), "{reason}");
}

#[test]
fn a_driver_that_reorders_is_caught() {
    let make = || -> DriverHandle {
        // Holds every other message back until the next one is stored.
        let held: Arc<Mutex<Option<Message>>> = Arc::new(Mutex::new(None));
        let mut m = Mutant::new(memqueue());
        m.publish = Box::new(move |d, msg, done| {
            let id = msg.id;
            let earlier = held.lock().take();
            match earlier {
                None => {
                    *held.lock() = Some(msg);
                    done.succeed(Receipt {
                        id,
                        delivered_to: 0,
                        backlog: 0,
                    });
                }
                Some(first) => {
                    d.publish(msg, done);
                    let (later, _) = Completion::channel();
                    d.publish(first, later);
                }
            }
        });
        Arc::new(m)
    };
    let reason = caught("fifo_order_for_one_consumer", &make);
    assert!(reason.contains("order broken"), "{reason}");
}

#[test]
fn a_driver_that_duplicates_under_concurrency_is_caught() {
    let make = || -> DriverHandle {
        let n = Arc::new(AtomicU64::new(0));
        let mut m = Mutant::new(memqueue());
        m.subscribe = Box::new(move |d, dest, c, o| {
            let n = n.clone();
            let twice = Consumer::new(move |delivery: Delivery| {
                if n.fetch_add(1, Ordering::Relaxed) % 100 == 50 {
                    c.deliver(delivery.clone());
                }
                c.deliver(delivery);
            });
            d.subscribe(dest, twice, o)
        });
        Arc::new(m)
    };
    let reason = caught("competing_consumers_get_each_message_exactly_once", &make);
    assert!(reason.contains("delivered twice"), "{reason}");
}

/// A data directory, removed when the last instance over it is gone.
struct Dir(std::path::PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Makes `driver.filequeue` instances over one small store of their own,
/// each passed through `mutate`.
fn filequeue(mutate: fn(DriverHandle) -> DriverHandle) -> impl Fn() -> DriverHandle {
    static N: AtomicU64 = AtomicU64::new(0);
    let dir = Arc::new(Dir(std::env::temp_dir().join(format!(
        "conformance-mutant-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ))));
    move || {
        let config = driver_filequeue::Config {
            dir: dir.0.clone(),
            fsync: driver_filequeue::Fsync::Never,
            segment_bytes: 1 << 20,
            min_free_bytes: 0,
            max_disk_bytes: Some(8 << 20),
            reserve_bytes: 0,
            ..Default::default()
        };
        mutate(Arc::new(
            driver_filequeue::FileQueue::open(config).expect("open the journal"),
        ))
    }
}

/// The durable case `name` passes on `driver.filequeue` and fails on the
/// mutant `mutate` makes of it.
fn durable_caught(name: &str, mutate: fn(DriverHandle) -> DriverHandle) -> String {
    let case = case(driver::DURABLE, name);
    if let Err(e) = (case.run)(&filequeue(|d| d)) {
        panic!("control: driver.filequeue fails {name}: {e}");
    }
    match (case.run)(&filequeue(mutate)) {
        Ok(()) => panic!("{name} did not catch the mutant"),
        Err(reason) => reason,
    }
}

#[test]
fn a_durable_driver_that_refuses_acks_when_its_store_is_full_is_caught() {
    let reason = durable_caught(
        "a_full_store_refuses_publishes_and_still_takes_acks",
        |inner| {
            let full = Arc::new(AtomicU64::new(0));
            let mut m = Mutant::new(inner);
            let seen = full.clone();
            m.publish = Box::new(move |d, msg, done| {
                let seen = seen.clone();
                d.publish(
                    msg,
                    Completion::new(move |outcome: Result<Receipt, Failure>| {
                        seen.store(u64::from(outcome.is_err()), Ordering::Relaxed);
                        done.complete(outcome)
                    }),
                )
            });
            // Acks need space too, says this one: none while full.
            m.ack = Box::new(move |d, dest, id, done| {
                if full.load(Ordering::Relaxed) == 1 {
                    return done.fail(Failure::new(
                        bindery::FailureKind::Full,
                        "mutant: no room for the ack",
                    ));
                }
                d.ack(dest, id, done)
            });
            Arc::new(m)
        },
    );
    assert!(reason.contains("acks must always have room"), "{reason}");
}

#[test]
fn a_durable_driver_that_confirms_a_publish_it_refused_is_caught() {
    let reason = durable_caught(
        "a_full_store_refuses_publishes_and_still_takes_acks",
        |inner| {
            let mut m = Mutant::new(inner);
            // Turns a refusal into a confirmation: nothing is kept.
            m.publish = Box::new(move |d, msg, done| {
                let id = msg.id;
                d.publish(
                    msg,
                    Completion::new(move |outcome: Result<Receipt, Failure>| match outcome {
                        Err(f) if f.kind == bindery::FailureKind::Full => done.succeed(Receipt {
                            id,
                            delivered_to: 0,
                            backlog: 0,
                        }),
                        other => done.complete(other),
                    }),
                )
            });
            Arc::new(m)
        },
    );
    assert!(reason.contains("none refused"), "{reason}");
}

/// A parser that changes one thing about `parser.json`.
struct MutantParser(fn(&str, &[u8]) -> Result<(), ParseError>);

impl Parser for MutantParser {
    fn validate(&self, ct: &str, body: &[u8]) -> Result<(), ParseError> {
        (self.0)(ct, body)
    }
    fn default_types(&self) -> &'static [&'static str] {
        parser_json::DEFAULT_TYPES
    }
}

fn parser_caught(name: &str, mutant: &MutantParser) -> String {
    let case = case(parser::PARSER, name);
    if let Err(e) = (case.run)(&parser_json::Json) {
        panic!("control: parser.json fails {name}: {e}");
    }
    match (case.run)(mutant) {
        Ok(()) => panic!("{name} did not catch the mutant"),
        Err(reason) => reason,
    }
}

#[test]
fn a_parser_that_panics_on_some_input_is_caught() {
    let mutant = MutantParser(|ct, body| {
        if body.len() > 2 && body[1] == b'}' {
            panic!("mutant: index out of bounds");
        }
        parser_json::Json.validate(ct, body)
    });
    let reason = parser_caught("never_panics_on_arbitrary_bytes", &mutant);
    assert!(reason.contains("panicked"), "{reason}");
}

#[test]
fn a_parser_that_accepts_invalid_bodies_is_caught() {
    let mutant = MutantParser(|_, _| Ok(()));
    let reason = parser_caught("rejects_invalid_bodies_with_a_reason_and_offset", &mutant);
    assert!(reason.contains("accepted invalid"), "{reason}");
}

#[test]
fn a_parser_that_misplaces_the_fault_is_caught() {
    let mutant = MutantParser(|ct, body| {
        parser_json::Json
            .validate(ct, body)
            .map_err(|e| ParseError::new(e.reason))
    });
    let reason = parser_caught("rejects_invalid_bodies_with_a_reason_and_offset", &mutant);
    assert!(reason.contains("offset None"), "{reason}");
}

#[test]
fn the_runner_reports_each_case_and_turns_panics_into_failures() {
    let mutant = MutantParser(|_, body| {
        if body.is_empty() {
            panic!("mutant: empty body");
        }
        Ok(())
    });
    let verdicts = bindery_conformance::run_all(parser::PARSER, &mutant as &parser::Harness);
    assert_eq!(verdicts.len(), parser::PARSER.len());
    let failed: Vec<&str> = verdicts
        .iter()
        .filter(|v| v.failure.is_some())
        .map(|v| v.case)
        .collect();
    assert!(
        failed.contains(&"never_panics_on_arbitrary_bytes"),
        "{verdicts:?}"
    );
    assert!(
        failed.contains(&"rejects_invalid_bodies_with_a_reason_and_offset"),
        "{verdicts:?}"
    );
    assert!(
        !failed.contains(&"declares_valid_default_mime_types"),
        "{verdicts:?}"
    );
    let _ = Duration::ZERO;
}
