//! The route and worker suites can fail: a small correct route and worker,
//! each passing its suite, and mutants that each break one rule and are
//! caught by the case for it.

use std::sync::Arc;
use std::time::Duration;

use bindery::{ABI_VERSION, BoxError, ModuleDescriptor, Registrar};
use bindery_classes::route::{self, Responder, Route, RouteRequest};
use bindery_classes::worker::{self, Worker};
use bindery_classes::{Delivery, class, dispatcher};
use bindery_conformance::{Case, route as route_suite, run_all, worker as worker_suite};
use bytes::Bytes;
use parking_lot::{Condvar, Mutex};

/// How a test route misbehaves.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Flaw {
    None,
    NeverAnswers,
    IgnoresTheWindow,
    IgnoresTheClientLeaving,
}

/// Echoes the body in 16 KiB chunks from a thread of its own, waiting
/// for room, giving up when the client leaves — unless flawed.
struct Echo(Flaw);

/// Requests a never-answering route holds on to.
static HELD: Mutex<Vec<Responder>> = Mutex::new(Vec::new());

impl Route for Echo {
    fn handle(&self, request: RouteRequest, mut r: Responder) {
        let flaw = self.0;
        if flaw == Flaw::NeverAnswers {
            return HELD.lock().push(r);
        }
        std::thread::spawn(move || {
            let signal = Arc::new((Mutex::new(false), Condvar::new()));
            let s = signal.clone();
            r.set_waker(move || {
                *s.0.lock() = true;
                s.1.notify_all();
            });
            r.head(200, vec![]);
            for chunk in request.body.chunks(16 * 1024) {
                loop {
                    if r.is_gone() && flaw != Flaw::IgnoresTheClientLeaving {
                        return; // dropping the responder lets go
                    }
                    if r.room() || flaw == Flaw::IgnoresTheWindow {
                        break;
                    }
                    let mut woken = signal.0.lock();
                    signal.1.wait_for(&mut woken, Duration::from_millis(50));
                    *woken = false;
                }
                r.body(Bytes::copy_from_slice(chunk));
            }
            r.end();
        });
    }
}

macro_rules! route_module {
    ($name:ident, $id:literal, $flaw:expr) => {
        static $name: ModuleDescriptor = descriptor(class::ROUTE, $id, {
            fn main(reg: &mut Registrar<'_>) -> Result<(), BoxError> {
                route::register(&mut reg.typed::<class::Route>()?, |_| Ok(Echo($flaw)));
                Ok(())
            }
            main
        });
    };
}

route_module!(ECHO, "echo", Flaw::None);
route_module!(NEVER, "never", Flaw::NeverAnswers);
route_module!(GREEDY, "greedy", Flaw::IgnoresTheWindow);
route_module!(CLINGY, "clingy", Flaw::IgnoresTheClientLeaving);

const fn descriptor(
    class: &'static str,
    name: &'static str,
    main: bindery::ModuleMain,
) -> ModuleDescriptor {
    ModuleDescriptor {
        class,
        name,
        version: "0.0.0",
        abi: ABI_VERSION,
        description: "a conformance mutant",
        krate: "route_worker_mutants",
        main,
        certify_config: "",
    }
}

fn failed<H>(cases: &'static [Case<H>], h: &H) -> Vec<&'static str> {
    run_all(cases, h)
        .into_iter()
        .filter(|v| v.failure.is_some())
        .map(|v| v.case)
        .collect()
}

/// The verdict of the case `name` alone.
fn only<H>(cases: &'static [Case<H>], name: &str, h: &H) -> Option<String> {
    let case = cases
        .iter()
        .find(|c| c.name == name)
        .expect("a case of the suite");
    run_all(std::slice::from_ref(case), h).remove(0).failure
}

#[test]
fn a_correct_route_passes_and_each_flawed_one_is_caught_by_its_case() {
    let h: &'static ModuleDescriptor = &ECHO;
    assert_eq!(failed(route_suite::ROUTE, &h), Vec::<&str>::new());
    for (mutant, case) in [
        (&NEVER, "answers_every_request_exactly_once"),
        (&GREEDY, "produces_no_more_than_the_window_allows"),
        (&CLINGY, "lets_go_of_a_request_whose_client_left"),
    ] {
        let h: &'static ModuleDescriptor = mutant;
        assert!(
            only(route_suite::ROUTE, case, &h).is_some(),
            "route.{} passed {case}",
            mutant.name
        );
    }
}

/// How a test worker misbehaves.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Sloppy {
    No,
    AcksFailures,
    IgnoresStop,
}

/// Acks `ok` bodies and leaves others leased, from the driver's delivery
/// callback through a thread (a real one would use a reactor).
struct Acker {
    sloppy: Sloppy,
    sub: Mutex<Option<bindery_classes::Subscription>>,
}

impl Worker for Acker {
    fn running(&self) -> u64 {
        0
    }

    fn stop(&self, _: std::time::Instant) {
        if self.sloppy != Sloppy::IgnoresStop {
            drop(self.sub.lock().take());
        }
    }
}

fn acker(reg: &mut Registrar<'_>, sloppy: Sloppy) -> Result<(), BoxError> {
    worker::register(&mut reg.typed::<class::Worker>()?, move |cx| {
        let me = Arc::new(Acker {
            sloppy,
            sub: Mutex::new(None),
        });
        let (it, keys) = (me.clone(), cx.keys().to_vec());
        cx.on_start(move |rt| {
            let d = dispatcher::require(rt, "default")?;
            for path in keys {
                let driver = d.driver(&path).map_err(|f| f.reason)?;
                let (consumer, deliveries) = bindery_classes::Consumer::channel();
                let options = bindery_classes::SubscribeOptions {
                    credit: 4,
                    lease: Duration::from_secs(30),
                };
                let sub = driver
                    .subscribe(&path, consumer, options)
                    .map_err(|f| f.reason)?;
                *it.sub.lock() = Some(sub);
                let it = it.clone();
                std::thread::spawn(move || {
                    for d in deliveries {
                        let Delivery::Message(m) = d else { break };
                        if &m.body[..] == b"ok" || sloppy == Sloppy::AcksFailures {
                            let (done, _) = bindery::Completion::channel();
                            driver.ack(&path, m.id, done);
                        }
                        if let Some(s) = &*it.sub.lock() {
                            s.credit(1);
                        }
                    }
                });
            }
            Ok(())
        });
        Ok(me)
    });
    Ok(())
}

static ACKER: ModuleDescriptor = descriptor(class::WORKER, "acker", |reg| acker(reg, Sloppy::No));
static ACKS_ALL: ModuleDescriptor = descriptor(class::WORKER, "acks-all", |reg| {
    acker(reg, Sloppy::AcksFailures)
});
static DEAF: ModuleDescriptor =
    descriptor(class::WORKER, "deaf", |reg| acker(reg, Sloppy::IgnoresStop));

#[test]
fn a_correct_worker_passes_and_each_flawed_one_is_caught_by_its_case() {
    let h: &'static ModuleDescriptor = &ACKER;
    assert_eq!(failed(worker_suite::WORKER, &h), Vec::<&str>::new());
    let h: &'static ModuleDescriptor = &ACKS_ALL;
    assert_eq!(
        failed(worker_suite::WORKER, &h),
        ["leaves_work_that_fails_unacked"]
    );
    let h: &'static ModuleDescriptor = &DEAF;
    assert_eq!(
        failed(worker_suite::WORKER, &h),
        ["takes_nothing_more_once_stopped"]
    );
}
