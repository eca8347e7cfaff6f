//! Test support, not a product: the stock modules plus `parser.lax` (a
//! mutant that accepts invalid bodies) and `driver.crashy`, a test-only
//! driver that aborts its process when a published body is `abort`: what
//! isolation is for.
//! Its own main file, so it also shows that a custom server gets
//! `isolation = "process"` for free (its hosts are this binary).
//!
//! ```sh
//! cargo run -p bindery-server --bin bindery-crashy -- --config crashy.toml
//! ```
//!
//! With `isolation = "process"` on the crashy instance, `abort` costs that
//! one request (503) and a restart of its host; in process, it takes the
//! whole server down (see `server-main/tests/isolation.rs`).

use bindery::{
    BoxError, Completion, Failure, FailureKind, ModuleDescriptor, ModuleList, Registrar,
};
use bindery_classes::driver::{DriverInfo, Receipt, SubscribeOptions};
use bindery_classes::{Consumer, Driver, Message, Subscription};

/// Confirms every publish, except that it aborts the process on `abort`,
/// panics on `panic` and never returns on `hang`.
struct Crashy;

impl Driver for Crashy {
    fn info(&self) -> DriverInfo {
        DriverInfo {
            queue: false,
            durable: false,
        }
    }

    fn publish(&self, message: Message, done: Completion<Receipt>) {
        match &message.body[..] {
            b"abort" => std::process::abort(),
            b"panic" => panic!("driver.crashy was asked to panic"),
            b"hang" => loop {
                std::thread::sleep(std::time::Duration::from_secs(3600));
            },
            _ => {}
        }
        done.succeed(Receipt {
            id: message.id,
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
            format!("{dest}: driver.crashy keeps nothing to read"),
        ))
    }
}

mod lax {
    //! `parser.lax`, a mutant: claims `application/json` and accepts every
    //! body, even the ones its suite says a JSON parser must refuse.
    use bindery::{BoxError, Registrar};
    use bindery_classes::{ParseError, Parser};

    struct Lax;

    impl Parser for Lax {
        fn validate(&self, _: &str, _: &[u8]) -> Result<(), ParseError> {
            Ok(())
        }
        fn default_types(&self) -> &'static [&'static str] {
            &["application/json"]
        }
    }

    fn lax_main(reg: &mut Registrar<'_, bindery_classes::class::Parser>) -> Result<(), BoxError> {
        bindery_classes::parser::register(reg, &["application/json"], |_| Ok(Lax));
        Ok(())
    }

    bindery::module! {
        class: bindery_classes::class::Parser,
        name: "lax",
        description: "test only: accepts invalid bodies (a mutant certification must catch)",
        main: lax_main,
    }
}

fn crashy_main(reg: &mut Registrar<'_, bindery_classes::class::Driver>) -> Result<(), BoxError> {
    bindery_classes::driver::register(reg, |_| Ok(Crashy));
    Ok(())
}

bindery::module! {
    class: bindery_classes::class::Driver,
    name: "crashy",
    description: "test only: aborts the process on a published body `abort`, panics on `panic`",
    main: crashy_main,
}

fn main() -> std::process::ExitCode {
    static LISTED: &[&ModuleDescriptor] = &[
        &terminal_http::MODULE,
        &terminal_mqtt::MODULE,
        &terminal_amqp::MODULE,
        &terminal_manage::MODULE,
        &dispatcher_fast::MODULE,
        &driver_memqueue::MODULE,
        &driver_filequeue::MODULE,
        &driver_topic::MODULE,
        &parser_json::MODULE,
        &parser_text::MODULE,
        &parser_octets::MODULE,
        &MODULE,
        &lax::MODULE,
    ];
    bindery_server::run(ModuleList::new(LISTED), bindery_server::DEFAULT_CONFIG)
}
