//! Bindery's certification suites: the contract of each module class,
//! written as cases that any implementation must pass.
//!
//! - [`driver`]: FIFO, competing consumers, leases and redelivery, acks,
//!   backpressure, bodies, concurrency, durability (queues); fan-out, live
//!   subscribers only, bounded slow subscribers (topics).
//! - [`parser`]: accepts what its format allows, rejects the rest with a
//!   reason (and an offset where the format has one), never panics on
//!   arbitrary bytes, declares the MIME types it binds.
//! - [`dispatcher`]: routes by path, tells an unbound path from a refused
//!   body, follows rebinding.
//! - [`terminal`]: starts and stops on loopback, keeps serving when a
//!   client sends malformed bytes or stalls mid-frame.
//! - [`route`]: answers every request exactly once, many at once, hostile
//!   ones too; produces no more than the client's window; lets go of a
//!   request whose client left.
//! - [`worker`]: acks work that succeeds, leaves work that fails unacked,
//!   takes nothing more once stopped.
//! - [`auth`]: answers every question; the right password lets in, an
//!   unknown user and a wrong password are refused alike; rules are
//!   followed; a subscription that could reach a forbidden topic is
//!   refused; a change takes effect on reload.
//!
//! A module crate runs the suite of its class with one macro line in its
//! tests ([`driver_suite!`], [`parser_suite!`], [`dispatcher_suite!`],
//! [`terminal_suite!`], [`route_suite!`], [`worker_suite!`],
//! [`auth_suite!`] and [`auth_access_suite!`]); each case becomes its own `#[test]`, named after
//! the rule it checks. `bindery certify` runs the same cases over every
//! module a server binary links.
//!
//! [`redis::RedisServer`] starts a real `redis-server` for the suites of
//! drivers that keep their state in Redis (their crate tests and
//! `bindery certify`).
//!
//! Every case returns `Err` with a reason rather than panicking, so a runner
//! can tabulate; the macros turn an `Err` into a test failure.

pub mod auth;
pub mod dispatcher;
pub mod doubles;
pub mod driver;
pub mod parser;
pub mod redis;
pub mod route;
pub mod terminal;
pub mod worker;

/// One rule of a class's contract.
pub struct Case<H: ?Sized> {
    /// The case's name, as its `#[test]` is called.
    pub name: &'static str,
    /// Checks the rule against the implementation that `H` makes.
    pub run: fn(&H) -> Result<(), String>,
}

impl<H: ?Sized> std::fmt::Debug for Case<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name)
    }
}

/// What one case came to.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Verdict {
    /// The case.
    pub case: &'static str,
    /// `None` when it passed; the reason when it failed.
    pub failure: Option<String>,
}

/// Runs `cases` against `h`, catching panics as failures.
pub fn run_all<H: ?Sized>(cases: &[Case<H>], h: &H) -> Vec<Verdict> {
    cases
        .iter()
        .map(|c| {
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (c.run)(h)));
            Verdict {
                case: c.name,
                failure: match outcome {
                    Ok(Ok(())) => None,
                    Ok(Err(e)) => Some(e),
                    Err(p) => Some(format!("panicked: {}", panic_text(&p))),
                },
            }
        })
        .collect()
}

/// The text of a panic payload.
pub fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into())
}

/// Returns `Err(format!(...))` from a case when `cond` is false.
#[macro_export]
#[doc(hidden)]
macro_rules! ensure {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err(format!($($fmt)+));
        }
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __suite {
    ($list:path, $harness:expr, [$($case:ident),+ $(,)?]) => {
        $(
            #[test]
            fn $case() {
                let harness = $harness;
                let case = $list
                    .iter()
                    .find(|c| c.name == stringify!($case))
                    .expect("the suite lists this case");
                if let Err(reason) = (case.run)(&harness) {
                    panic!("conformance case {} failed: {reason}", stringify!($case));
                }
            }
        )+

        #[test]
        fn suite_runs_every_case_of_its_class() {
            let ours = [$(stringify!($case)),+];
            let all: Vec<&str> = $list.iter().map(|c| c.name).collect();
            assert_eq!(ours.to_vec(), all, "the macro and the case list disagree");
        }
    };
}
