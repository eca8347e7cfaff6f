//! The dispatcher class: decides where a message goes.
//!
//! A terminal hands every publish to a dispatcher (looked up once, by name;
//! the stock configuration names it `default`). The dispatcher finds the
//! parser for the message's content type and the driver for its
//! destination, through the binding tables, and keeps the handles it found.
//!
//! # Implementing
//!
//! - [`Dispatcher::publish`] fails with distinct kinds: no driver bound
//!   ([`FailureKind::NotFound`]), no parser for the type
//!   ([`FailureKind::Unsupported`]), a body the parser refused
//!   ([`FailureKind::Rejected`], with the parser's reason); otherwise it
//!   passes the driver's outcome through.
//! - [`Dispatcher::driver`] resolves a path for consumers and acks.
//!
//! # Threading
//!
//! Called from every reactor at once; must not block.
//!
//! [`FailureKind::NotFound`]: bindery::FailureKind::NotFound
//! [`FailureKind::Unsupported`]: bindery::FailureKind::Unsupported
//! [`FailureKind::Rejected`]: bindery::FailureKind::Rejected

use std::sync::Arc;

use bindery::{BoxError, Completion, Failure, InstanceContext, Registrar, Runtime};

use crate::driver::{DriverHandle, Receipt};
use crate::message::Message;

/// Routes messages to drivers, validating them with parsers.
pub trait Dispatcher: Send + Sync + 'static {
    /// Validates and routes `message`; completes with the driver's outcome.
    fn publish(&self, message: Message, done: Completion<Receipt>);

    /// The driver serving `path`.
    fn driver(&self, path: &str) -> Result<DriverHandle, Failure>;
}

/// A dispatcher instance as the binding table holds it.
pub type DispatcherHandle = Arc<dyn Dispatcher>;

/// Registers a dispatcher module's factory. Instances bind by name; with no
/// `bind` they are `default`.
pub fn register<D, F>(reg: &mut Registrar<'_, crate::class::Dispatcher>, make: F)
where
    D: Dispatcher,
    F: Fn(&InstanceContext) -> Result<D, BoxError> + Send + Sync + 'static,
{
    reg.register(move |cx| make(cx).map(|d| Arc::new(d) as DispatcherHandle));
    reg.default_keys(&["default"]);
}

/// The dispatcher named `name`, or an error saying none is bound (for a
/// terminal's start hook).
pub fn require(rt: &Runtime, name: &str) -> Result<DispatcherHandle, BoxError> {
    lookup(rt, name).ok_or_else(|| {
        format!("no dispatcher is bound to {name:?} (set `dispatcher` in the instance's config)")
            .into()
    })
}

/// The dispatcher named `name`.
pub fn lookup(rt: &Runtime, name: &str) -> Option<DispatcherHandle> {
    rt.lookup::<DispatcherHandle>(crate::class::DISPATCHER, name)
}
