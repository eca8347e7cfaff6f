//! Bindery's kernel: the part of a Bindery server that knows no module.
//!
//! Bindery is a message server whose every layer — terminal, dispatcher,
//! parser, driver — is a module, linked statically and bound by
//! configuration. This crate is what those modules plug into. It knows no
//! module class and no module; it provides:
//!
//! - **registration at link time** ([`module!`], [`modules!`],
//!   [`Registry`]): each module crate places a `const` [`ModuleDescriptor`]
//!   in the module table (a `linkme` slice by default, or `inventory`'s
//!   constructors with the `inventory` feature: [`REGISTRATION`] says
//!   which); a server's main file lists the crates it links,
//!   and the kernel refuses to start if a listed module is missing, two
//!   modules share a class and name, a module's ABI differs, or a module
//!   main fails. A module names its [`Class`] as a type, and its module main
//!   gets a [`Registrar`] typed by it, so class and factory agree;
//! - **configuration** ([`config`]): TOML, with each instance's section
//!   handed opaque to its module, errors that name file, line, instance
//!   and field (and suggest the closest known name), and one data
//!   directory that modules' relative paths resolve under
//!   ([`InstanceContext::resolve`]);
//! - **binding tables** ([`bindings`]): per class, keys (paths, MIME types,
//!   exact) to instance handles, found anonymously, read without locks, and
//!   changeable at run time;
//! - **the reactor** ([`reactor`]): `mio` event loops on a few threads,
//!   timers, cross-thread wake-ups, graceful shutdown;
//! - **completions** ([`completion`]): how queued work reports back;
//! - **instance lifecycle** ([`Runtime`], [`State`]): create, start, stop,
//!   restart, remove and rebind instances while the server runs, and
//!   per-server state modules share ([`Runtime::shared`]);
//! - **errors** ([`Error`]): typed refusals that name the module, instance,
//!   key or field; a cause comes from `source()` and is said once
//!   ([`Error::report`] tells the chain);
//! - **per-instance logs** ([`logs`]): the last lines each instance logged.
//!
//! It is not a message server by itself: the class contracts live in
//! `bindery-classes`, and the modules in their own crates.
//!
//! # The completion convention
//!
//! Module methods return at once. A method whose work has to wait takes a
//! [`Completion`] and completes it later, from any thread; the outcome comes
//! back to the caller's reactor as a [`Note`] on the handler that asked:
//!
//! ```
//! use bindery::{Completion, Failure, FailureKind};
//!
//! // A callee: queues the work and returns; completes on another thread.
//! fn store(body: Vec<u8>, done: Completion<u64>) {
//!     std::thread::spawn(move || {
//!         if body.is_empty() {
//!             done.fail(Failure::new(FailureKind::Rejected, "empty body"));
//!         } else {
//!             done.succeed(body.len() as u64);
//!         }
//!     });
//! }
//!
//! // A caller outside a reactor takes the outcome from a channel; a
//! // reactor handler would use `cx.completion(tag)` and get a `Note`.
//! let (done, outcome) = Completion::channel();
//! store(b"hello".to_vec(), done);
//! assert_eq!(outcome.recv().unwrap(), Ok(5));
//! ```
//!
//! A completion dropped unanswered reports [`FailureKind::Dropped`]: the
//! caller always hears back.

mod backend;
pub mod bindings;
pub mod completion;
pub mod config;
mod error;
mod instance;
mod kernel;
mod lifecycle;
pub mod logs;
pub mod reactor;
mod registry;
mod reload;
pub mod routes;
mod runtime;
mod suggest;

#[cfg(all(feature = "linkme", not(feature = "inventory")))]
#[doc(hidden)]
pub use backend::__linkme;
#[cfg(all(feature = "linkme", not(feature = "inventory")))]
pub use backend::BINDERY_MODULES;
pub use backend::REGISTRATION;
#[cfg(feature = "inventory")]
#[doc(hidden)]
pub use backend::{__Entry, __inventory};
pub use bindings::{KeyKind, Table};
pub use completion::{Completion, Failure, FailureKind, Note};
pub use config::{
    Activation, Config, ConfigError, HostSection, InstanceSpec, Isolation, IsolationSpec, Restart,
    Section,
};
pub use error::{BoxError, Error, report};
pub use kernel::{
    BindingInfo, DEFAULT_GRACE, InstanceContext, InstanceInfo, Introspection, Kernel, ModuleInfo,
    Monitor, Reload, Runtime, State, linked_modules,
};
pub use reactor::{Address, Cx, Handler, ReactorHandle};
pub use registry::{
    ABI_VERSION, Class, ModuleDescriptor, ModuleList, ModuleMain, Registrar, Registry, Untyped,
};
