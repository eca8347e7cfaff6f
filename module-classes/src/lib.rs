//! Bindery's module classes: what a terminal, a dispatcher, a parser and a
//! driver promise, and the [`Message`] that flows between them.
//!
//! ```text
//! client --wire--> terminal --> dispatcher --> parser   (bound to MIME types)
//!                                     |
//!                                     +------> driver   (bound to URL paths)
//!                                                 |
//!            terminal <-- Consumer <-- deliveries +
//! ```
//!
//! Each class is a trait; an instance of a module is an `Arc<dyn Trait>`
//! held in the class's binding table. Each class module also has a
//! `register` helper that a module main calls, and a `lookup` helper that
//! other layers use to find an instance by key.
//!
//! This crate builds on the kernel alone and contains no module; the
//! modules live in their own crates under `modules/`.

pub mod consumer;
pub mod dispatcher;
pub mod driver;
pub mod fanout;
pub mod http;
pub mod listener;
pub mod message;
pub mod metrics;
pub mod parser;
pub mod queue;
pub mod terminal;
pub mod topic;
pub mod topics;

pub use consumer::{Consumer, Delivery, Subscription, SubscriptionControl};
pub use dispatcher::Dispatcher;
pub use driver::{DestinationStats, Driver, DriverInfo, Receipt, SubscribeOptions};
pub use message::{Message, MessageId};
pub use parser::{ParseError, Parser};
pub use terminal::{Probe, Terminal};

/// Class names, as modules declare them and tables are named.
pub mod class {
    /// The terminal class: speaks a wire protocol; keyed by listen address.
    pub const TERMINAL: &str = "terminal";
    /// The dispatcher class: routes messages; keyed by name (`default`).
    pub const DISPATCHER: &str = "dispatcher";
    /// The parser class: validates bodies; keyed by MIME type.
    pub const PARSER: &str = "parser";
    /// The driver class: stores and delivers; keyed by URL path.
    pub const DRIVER: &str = "driver";
}
