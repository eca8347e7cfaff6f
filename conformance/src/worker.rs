//! The worker contract.
//!
//! The harness is the worker module's descriptor. Each case starts a
//! kernel with one instance of it (its `certify_config`) working the queue
//! `/conformance/work`, beside an in-memory queue driver and a direct
//! dispatcher, and feeds it messages. The module's certification
//! configuration must make its work **succeed for a body of `ok` and fail
//! for any other** (`worker.exec` runs `grep -qx ok`).

use std::time::{Duration, Instant};

use bindery::{Completion, Config, Kernel, ModuleDescriptor, Registry};
use bindery_classes::Message;
use bindery_classes::driver::{DestinationStats, DriverHandle};

use crate::doubles::{DIRECT_DISPATCHER, QUEUE_DRIVER};
use crate::{Case, ensure};

/// What a worker case gets: the module under test.
pub type Harness = &'static ModuleDescriptor;

/// The rules of a worker.
pub const WORKER: &[Case<Harness>] = &[
    Case {
        name: "acks_work_that_succeeds",
        run: acks_work_that_succeeds,
    },
    Case {
        name: "leaves_work_that_fails_unacked",
        run: leaves_work_that_fails_unacked,
    },
    Case {
        name: "takes_nothing_more_once_stopped",
        run: takes_nothing_more_once_stopped,
    },
];

/// Runs the worker suite as `#[test]`s, one per case:
///
/// ```text
/// bindery_conformance::worker_suite!(&my_worker::MODULE);
/// ```
#[macro_export]
macro_rules! worker_suite {
    ($module:expr) => {
        mod conformance_worker {
            #[allow(unused_imports)]
            use super::*;
            $crate::__suite!(
                $crate::worker::WORKER,
                $module,
                [
                    acks_work_that_succeeds,
                    leaves_work_that_fails_unacked,
                    takes_nothing_more_once_stopped,
                ]
            );
        }
    };
}

const QUEUE: &str = "/conformance/work";

struct Running {
    kernel: Kernel,
    queues: DriverHandle,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.kernel.shutdown();
    }
}

fn start(module: &Harness) -> Result<Running, String> {
    let module: &'static ModuleDescriptor = module;
    let registry =
        Registry::of(&[module, &DIRECT_DISPATCHER, &QUEUE_DRIVER]).map_err(|e| e.to_string())?;
    let scratch = std::env::temp_dir().join(format!("bindery-worker-case-{}", std::process::id()));
    let section = module
        .certify_config
        .replace("{scratch}", &scratch.display().to_string());
    let text = format!(
        "[instances.d]\nmodule = \"dispatcher.conformance-direct\"\n\
         [instances.q]\nmodule = \"driver.conformance-queue\"\nbind = [\"/conformance/\"]\n\
         [instances.under-test]\nmodule = \"{}\"\nbind = [\"{QUEUE}\"]\n\
         [instances.under-test.config]\n{section}\n",
        module.id()
    );
    let config = Config::parse("conformance", &text).map_err(|e| e.to_string())?;
    let mut kernel = Kernel::build_with(registry, &config, Some(2)).map_err(|e| e.to_string())?;
    kernel.start().map_err(|e| format!("start: {e}"))?;
    let queues = bindery_classes::driver::lookup(kernel.runtime(), QUEUE)
        .ok_or("the queue double is not bound")?;
    Ok(Running { kernel, queues })
}

impl Running {
    fn publish(&self, body: &'static str) -> Result<(), String> {
        let (done, outcome) = Completion::channel();
        self.queues
            .publish(Message::new(QUEUE, "text/plain", body), done);
        match outcome.recv_timeout(Duration::from_secs(5)) {
            Ok(Ok(_)) => Ok(()),
            other => Err(format!("the queue double refused a publish: {other:?}")),
        }
    }

    fn stats(&self) -> DestinationStats {
        self.queues
            .stats()
            .into_iter()
            .find(|s| s.destination == QUEUE)
            .unwrap_or_default()
    }

    /// Waits up to 20 s for `f` on the queue's counters.
    fn until(&self, what: &str, f: impl Fn(&DestinationStats) -> bool) -> Result<(), String> {
        let end = Instant::now() + Duration::from_secs(20);
        while Instant::now() < end {
            if f(&self.stats()) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(format!("{what} within 20 s (queue: {:?})", self.stats()))
    }
}

fn acks_work_that_succeeds(m: &Harness) -> Result<(), String> {
    let run = start(m)?;
    for _ in 0..5 {
        run.publish("ok")?;
    }
    run.until("five successful messages acked", |s| {
        s.acked == 5 && s.depth == 0 && s.leased == 0
    })
}

fn leaves_work_that_fails_unacked(m: &Harness) -> Result<(), String> {
    let run = start(m)?;
    run.publish("fail")?;
    run.until("the failing message taken", |s| s.delivered >= 1)?;
    std::thread::sleep(Duration::from_millis(500));
    let s = run.stats();
    ensure!(s.acked == 0, "a message whose work failed was acked: {s:?}");
    ensure!(
        s.depth + s.leased == 1,
        "the failing message is gone: {s:?}"
    );
    // Work that succeeds beside it is still done.
    run.publish("ok")?;
    run.until("the good message acked beside the failing one", |s| {
        s.acked == 1
    })
}

fn takes_nothing_more_once_stopped(m: &Harness) -> Result<(), String> {
    let run = start(m)?;
    run.publish("ok")?;
    run.until("the first message acked", |s| s.acked == 1)?;
    run.kernel
        .runtime()
        .stop("under-test", Duration::from_secs(5))
        .map_err(|e| format!("stop: {e}"))?;
    run.publish("ok")?;
    std::thread::sleep(Duration::from_millis(500));
    let s = run.stats();
    ensure!(
        s.acked == 1 && s.depth == 1 && s.leased == 0,
        "a stopped worker took work: {s:?}"
    );
    Ok(())
}
