//! The dispatcher contract.
//!
//! The harness is the dispatcher module's descriptor. Each case builds a
//! kernel of the module under test beside test doubles ([`crate::doubles`]):
//! recording drivers and a parser that refuses bodies starting with `bad`.

use std::sync::Arc;

use bindery::{Completion, Config, FailureKind, Kernel, ModuleDescriptor, Registry};
use bindery_classes::Message;
use bindery_classes::dispatcher::{self, DispatcherHandle};
use bindery_classes::driver::Receipt;

use crate::doubles::{PICKY_PARSER, RECORDING_DRIVER, recorded};
use crate::{Case, ensure};

/// What a dispatcher case gets: the module under test.
pub type Harness = &'static ModuleDescriptor;

/// The rules of a dispatcher.
pub const DISPATCHER: &[Case<Harness>] = &[
    Case {
        name: "routes_to_the_driver_bound_to_the_path",
        run: routes_to_the_driver_bound_to_the_path,
    },
    Case {
        name: "reports_an_unbound_path_as_not_found",
        run: reports_an_unbound_path_as_not_found,
    },
    Case {
        name: "reports_a_refused_body_as_rejected_with_the_reason",
        run: reports_a_refused_body_as_rejected_with_the_reason,
    },
    Case {
        name: "reports_a_type_no_parser_takes_as_unsupported",
        run: reports_a_type_no_parser_takes_as_unsupported,
    },
    Case {
        name: "keeps_its_handles_instead_of_looking_up_per_message",
        run: keeps_its_handles_instead_of_looking_up_per_message,
    },
    Case {
        name: "follows_a_binding_change_at_run_time",
        run: follows_a_binding_change_at_run_time,
    },
];

/// Runs the dispatcher suite as `#[test]`s, one per case:
///
/// ```text
/// bindery_conformance::dispatcher_suite!(&my_dispatcher::MODULE);
/// ```
#[macro_export]
macro_rules! dispatcher_suite {
    ($module:expr) => {
        mod conformance_dispatcher {
            #[allow(unused_imports)]
            use super::*;
            $crate::__suite!(
                $crate::dispatcher::DISPATCHER,
                $module,
                [
                    routes_to_the_driver_bound_to_the_path,
                    reports_an_unbound_path_as_not_found,
                    reports_a_refused_body_as_rejected_with_the_reason,
                    reports_a_type_no_parser_takes_as_unsupported,
                    keeps_its_handles_instead_of_looking_up_per_message,
                    follows_a_binding_change_at_run_time,
                ]
            );
        }
    };
}

struct Setup {
    kernel: Kernel,
    dispatcher: DispatcherHandle,
}

fn setup(module: &Harness, parser_keys: &str) -> Result<Setup, String> {
    let module: &'static ModuleDescriptor = module;
    let registry =
        Registry::of(&[module, &RECORDING_DRIVER, &PICKY_PARSER]).map_err(|e| e.to_string())?;
    let text = format!(
        "[instances.under-test]\nmodule = \"{}\"\nbind = [\"default\"]\n\
         [instances.a]\nmodule = \"driver.conformance-recorder\"\nbind = [\"/a/\"]\n\
         [instances.b]\nmodule = \"driver.conformance-recorder\"\nbind = [\"/b/\", \"/fallback/\"]\n\
         [instances.p]\nmodule = \"parser.conformance-picky\"\nbind = [{parser_keys}]\n",
        module.id()
    );
    let config = Config::parse("conformance", &text).map_err(|e| e.to_string())?;
    let mut kernel = Kernel::build_with(registry, &config, Some(1)).map_err(|e| e.to_string())?;
    kernel.start().map_err(|e| e.to_string())?;
    let dispatcher = dispatcher::lookup(kernel.runtime(), "default")
        .ok_or("the dispatcher under test is not bound to \"default\"")?;
    Ok(Setup { kernel, dispatcher })
}

fn publish(
    d: &DispatcherHandle,
    dest: &str,
    ct: &str,
    body: &str,
) -> Result<Receipt, bindery::Failure> {
    let (done, outcome) = Completion::channel();
    d.publish(Message::new(dest, ct, body.to_owned()), done);
    outcome
        .recv_timeout(std::time::Duration::from_secs(10))
        .unwrap_or_else(|_| {
            Err(bindery::Failure::new(
                FailureKind::Internal,
                "no answer within 10 s",
            ))
        })
}

fn kept(s: &Setup, path: &str) -> Result<Vec<String>, String> {
    let d = bindery_classes::driver::lookup(s.kernel.runtime(), path).ok_or("no driver")?;
    Ok(recorded(&d))
}

fn routes_to_the_driver_bound_to_the_path(module: &Harness) -> Result<(), String> {
    let s = setup(module, "\"*/*\"")?;
    for dest in ["/a/1", "/b/2", "/a/deeper/3"] {
        publish(&s.dispatcher, dest, "text/plain", "ok")
            .map_err(|f| format!("publish to {dest}: {f}"))?;
    }
    ensure!(
        kept(&s, "/a/")? == ["/a/1", "/a/deeper/3"],
        "driver a kept {:?}",
        kept(&s, "/a/")?
    );
    ensure!(
        kept(&s, "/b/")? == ["/b/2"],
        "driver b kept {:?}",
        kept(&s, "/b/")?
    );
    let d = s.dispatcher.driver("/b/x").map_err(|f| f.to_string())?;
    let b = bindery_classes::driver::lookup(s.kernel.runtime(), "/b/").ok_or("no driver b")?;
    ensure!(
        Arc::ptr_eq(&d, &b),
        "driver(\"/b/x\") is not the instance bound to /b/"
    );
    Ok(())
}

fn reports_an_unbound_path_as_not_found(module: &Harness) -> Result<(), String> {
    let s = setup(module, "\"*/*\"")?;
    let f = publish(&s.dispatcher, "/nowhere/x", "text/plain", "ok")
        .err()
        .ok_or("published to an unbound path")?;
    ensure!(
        f.kind == FailureKind::NotFound,
        "unbound path reported as {:?}: {}",
        f.kind,
        f.reason
    );
    let f = s
        .dispatcher
        .driver("/nowhere/x")
        .err()
        .ok_or("found a driver for an unbound path")?;
    ensure!(
        f.kind == FailureKind::NotFound,
        "driver() of an unbound path reported as {:?}",
        f.kind
    );
    Ok(())
}

fn reports_a_refused_body_as_rejected_with_the_reason(module: &Harness) -> Result<(), String> {
    let s = setup(module, "\"*/*\"")?;
    let f = publish(&s.dispatcher, "/a/x", "text/plain", "bad body")
        .err()
        .ok_or("a refused body was published")?;
    ensure!(
        f.kind == FailureKind::Rejected,
        "refused body reported as {:?}: {}",
        f.kind,
        f.reason
    );
    ensure!(
        f.reason.contains("refuses bodies starting with 'bad'"),
        "the parser's reason is lost: {}",
        f.reason
    );
    ensure!(
        kept(&s, "/a/")?.is_empty(),
        "the refused body reached the driver"
    );
    Ok(())
}

fn reports_a_type_no_parser_takes_as_unsupported(module: &Harness) -> Result<(), String> {
    let s = setup(module, "\"text/*\"")?;
    publish(&s.dispatcher, "/a/x", "text/plain", "ok").map_err(|f| format!("text/plain: {f}"))?;
    let f = publish(&s.dispatcher, "/a/x", "image/png", "png")
        .err()
        .ok_or("published a type no parser takes")?;
    ensure!(
        f.kind == FailureKind::Unsupported,
        "unparsed type reported as {:?}: {}",
        f.kind,
        f.reason
    );
    Ok(())
}

fn keeps_its_handles_instead_of_looking_up_per_message(module: &Harness) -> Result<(), String> {
    let s = setup(module, "\"*/*\"")?;
    publish(&s.dispatcher, "/a/warm", "text/plain", "ok").map_err(|f| f.to_string())?;
    let before = bindery::bindings::thread_lookups();
    for _ in 0..1000 {
        publish(&s.dispatcher, "/a/warm", "text/plain", "ok").map_err(|f| f.to_string())?;
    }
    let lookups = bindery::bindings::thread_lookups() - before;
    ensure!(
        lookups < 100,
        "{lookups} table lookups for 1000 publishes to one path"
    );
    Ok(())
}

fn follows_a_binding_change_at_run_time(module: &Harness) -> Result<(), String> {
    let s = setup(module, "\"*/*\"")?;
    publish(&s.dispatcher, "/fallback/x", "text/plain", "1").map_err(|f| f.to_string())?;
    let table = s
        .kernel
        .runtime()
        .table("driver")
        .ok_or("no driver table")?;
    ensure!(table.unbind("/fallback/"), "could not unbind /fallback/");
    let f = publish(&s.dispatcher, "/fallback/x", "text/plain", "2")
        .err()
        .ok_or("still routed to an unbound path")?;
    ensure!(
        f.kind == FailureKind::NotFound,
        "after unbinding: {:?}",
        f.kind
    );
    ensure!(
        kept(&s, "/b/")? == ["/fallback/x"],
        "driver b kept {:?}",
        kept(&s, "/b/")?
    );
    Ok(())
}
