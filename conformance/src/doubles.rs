//! Test doubles: small modules the dispatcher and terminal suites put beside
//! the module under test. They are plain statics, not in the link-time
//! module table, so linking this crate adds no module to a server.

use std::sync::Arc;

use bindery::{
    ABI_VERSION, BoxError, Completion, Failure, FailureKind, ModuleDescriptor, Registrar,
};
use bindery_classes::dispatcher::{self, Dispatcher};
use bindery_classes::driver::{
    self, DestinationStats, DriverHandle, DriverInfo, Receipt, SubscribeOptions,
};
use bindery_classes::{Consumer, Driver, Message, ParseError, Parser, Subscription, class, parser};
use parking_lot::Mutex;

/// A driver that keeps what it is given. Its `stats()` lists one entry per
/// message kept, in order, so a suite can see where messages went through
/// the `Driver` trait alone.
pub struct RecordingDriver {
    kept: Mutex<Vec<Message>>,
}

impl Driver for RecordingDriver {
    fn info(&self) -> DriverInfo {
        DriverInfo {
            queue: false,
            durable: false,
        }
    }

    fn publish(&self, message: Message, done: Completion<Receipt>) {
        let id = message.id;
        self.kept.lock().push(message);
        done.succeed(Receipt {
            id,
            delivered_to: 0,
            backlog: 0,
        });
    }

    fn subscribe(
        &self,
        dest: &str,
        _: Consumer,
        _: SubscribeOptions,
    ) -> Result<Subscription, Failure> {
        Err(Failure::new(
            FailureKind::Unsupported,
            format!("{dest}: the recording driver delivers nothing"),
        ))
    }

    fn stats(&self) -> Vec<DestinationStats> {
        self.kept
            .lock()
            .iter()
            .map(|m| DestinationStats {
                destination: m.destination.to_string(),
                published: 1,
                ..Default::default()
            })
            .collect()
    }
}

/// The destinations a recording driver kept, in order.
pub fn recorded(handle: &DriverHandle) -> Vec<String> {
    handle.stats().into_iter().map(|s| s.destination).collect()
}

fn recording_main(reg: &mut Registrar<'_>) -> Result<(), BoxError> {
    driver::register(&mut reg.typed::<class::Driver>()?, |_| {
        Ok(RecordingDriver {
            kept: Mutex::new(Vec::new()),
        })
    });
    Ok(())
}

/// A parser that refuses bodies starting with `bad`, at offset 0.
pub struct PickyParser;

impl Parser for PickyParser {
    fn validate(&self, _: &str, body: &[u8]) -> Result<(), ParseError> {
        if body.starts_with(b"bad") {
            Err(ParseError::at(
                0,
                "the double refuses bodies starting with 'bad'",
            ))
        } else {
            Ok(())
        }
    }

    fn default_types(&self) -> &'static [&'static str] {
        &["*/*"]
    }
}

fn picky_main(reg: &mut Registrar<'_>) -> Result<(), BoxError> {
    parser::register(&mut reg.typed::<class::Parser>()?, &["*/*"], |_| {
        Ok(PickyParser)
    });
    Ok(())
}

/// A dispatcher that routes straight to the driver bound to the path,
/// validating nothing.
pub struct DirectDispatcher {
    runtime: Arc<bindery::Runtime>,
}

impl Dispatcher for DirectDispatcher {
    fn publish(&self, message: Message, done: Completion<Receipt>) {
        match self.driver(&message.destination) {
            Ok(d) => d.publish(message, done),
            Err(f) => done.fail(f),
        }
    }

    fn driver(&self, path: &str) -> Result<DriverHandle, Failure> {
        driver::lookup(&self.runtime, path)
            .ok_or_else(|| Failure::new(FailureKind::NotFound, format!("no driver for {path}")))
    }
}

fn direct_main(reg: &mut Registrar<'_>) -> Result<(), BoxError> {
    dispatcher::register(&mut reg.typed::<class::Dispatcher>()?, |cx| {
        Ok(DirectDispatcher {
            runtime: cx.runtime().clone(),
        })
    });
    Ok(())
}

const fn double(
    class: &'static str,
    name: &'static str,
    main: bindery::ModuleMain,
) -> ModuleDescriptor {
    ModuleDescriptor {
        class,
        name,
        version: "0.0.0",
        abi: ABI_VERSION,
        description: "a conformance test double",
        krate: "bindery_conformance",
        main,
        certify_config: "",
    }
}

/// A queue driver over the shared queue core ([`bindery_classes::queue`]):
/// what a worker suite works.
pub struct QueueDouble {
    queues: bindery_classes::queue::Queues,
}

impl Driver for QueueDouble {
    fn info(&self) -> DriverInfo {
        DriverInfo {
            queue: true,
            durable: false,
        }
    }

    fn publish(&self, message: Message, done: Completion<Receipt>) {
        let id = message.id;
        match self.queues.reserve(&message.destination) {
            Ok(room) => {
                room.fill(message);
                done.succeed(Receipt {
                    id,
                    delivered_to: 0,
                    backlog: 0,
                });
            }
            Err(f) => done.fail(f),
        }
    }

    fn subscribe(
        &self,
        dest: &str,
        consumer: Consumer,
        options: SubscribeOptions,
    ) -> Result<Subscription, Failure> {
        self.queues.subscribe(dest, consumer, options)
    }

    fn ack(&self, dest: &str, id: bindery_classes::MessageId, done: Completion<()>) {
        done.complete(self.queues.ack(dest, id));
    }

    fn release(&self, dest: &str, id: bindery_classes::MessageId) -> Result<(), Failure> {
        self.queues.release(dest, id)
    }

    fn retry(&self, dest: &str, id: bindery_classes::MessageId) -> Result<(), Failure> {
        self.queues.retry(dest, id)
    }

    fn stats(&self) -> Vec<DestinationStats> {
        self.queues.stats()
    }
}

fn queue_main(reg: &mut Registrar<'_>) -> Result<(), BoxError> {
    driver::register(&mut reg.typed::<class::Driver>()?, |cx| {
        let limits = bindery_classes::queue::QueueLimits {
            max_depth: 10_000,
            max_queues: 100,
        };
        Ok(QueueDouble {
            queues: bindery_classes::queue::Queues::new(
                limits,
                bindery_classes::metrics::Scope::detached(cx.name()),
            ),
        })
    });
    Ok(())
}

/// `driver.conformance-queue`: queues in memory.
pub static QUEUE_DRIVER: ModuleDescriptor = double(class::DRIVER, "conformance-queue", queue_main);

/// `driver.conformance-recorder`: keeps what it is given.
pub static RECORDING_DRIVER: ModuleDescriptor =
    double(class::DRIVER, "conformance-recorder", recording_main);
/// `parser.conformance-picky`: refuses bodies starting with `bad`.
pub static PICKY_PARSER: ModuleDescriptor = double(class::PARSER, "conformance-picky", picky_main);
/// `dispatcher.conformance-direct`: routes by path, validates nothing.
pub static DIRECT_DISPATCHER: ModuleDescriptor =
    double(class::DISPATCHER, "conformance-direct", direct_main);
