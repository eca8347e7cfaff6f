//! Bindery's module classes: what a terminal, a dispatcher, a parser, a
//! driver, a route and an auth module promise, and the [`Message`] that
//! flows between them.
//!
//! ```text
//! client --wire--> terminal --> dispatcher --> parser   (bound to MIME types)
//!                                     |
//!                                     +------> driver   (bound to URL paths)
//!                                                 |
//!            terminal <-- Consumer <-- deliveries +
//! ```
//!
//! [`embed`] is the API a program that embeds a server uses.
//!
//! A route ([`route`]) adds an HTTP endpoint beside the messaging paths;
//! a worker ([`worker`]) works messages from queues; [`exec`] runs a child process on a reactor for modules that hand work
//! to commands (the command line as the interface).
//!
//! A terminal may also consult an [`auth`] instance: who a connection is,
//! and whether it may publish, subscribe or consume on a path.
//!
//! Each class is a trait; an instance of a module is an `Arc<dyn Trait>`
//! held in the class's binding table. Each class module also has a
//! `register` helper that a module main calls, and a `lookup` helper that
//! other layers use to find an instance by key.
//!
//! This crate builds on the kernel alone and contains no module; the
//! modules live in their own crates under `modules/`.

pub mod auth;
pub mod connection;
pub mod consumer;
pub mod dispatcher;
pub mod driver;
pub mod embed;
pub mod exec;
pub mod fanout;
pub mod http;
pub mod isolation;
pub mod listener;
pub mod message;
pub mod metrics;
pub mod parser;
pub mod queue;
pub mod route;
pub mod terminal;
pub mod topic;
pub mod topics;
pub mod worker;

pub use consumer::{Consumer, Delivery, Subscription, SubscriptionControl};
pub use dispatcher::Dispatcher;
pub use driver::{DeleteOptions, DestinationStats, Driver, DriverInfo, Receipt, SubscribeOptions};
pub use message::{Message, MessageId};
pub use parser::{ParseError, Parser};
pub use terminal::{Probe, Terminal};

/// The classes, as types: what a module names in `bindery::module!`
/// (`class: bindery_classes::class::Driver`), and what fixes its class
/// name, key kind and handle type (see [`bindery::Class`]).
pub mod class {
    use bindery::{Class, KeyKind};

    /// The terminal class: speaks a wire protocol; keyed by listen address.
    #[derive(Debug)]
    pub enum Terminal {}
    impl Class for Terminal {
        const NAME: &'static str = "terminal";
        const KEYS: KeyKind = KeyKind::Exact;
        type Handle = crate::terminal::TerminalHandle;
    }

    /// The dispatcher class: routes messages; keyed by name (`default`).
    #[derive(Debug)]
    pub enum Dispatcher {}
    impl Class for Dispatcher {
        const NAME: &'static str = "dispatcher";
        const KEYS: KeyKind = KeyKind::Exact;
        type Handle = crate::dispatcher::DispatcherHandle;
    }

    /// The parser class: validates bodies; keyed by MIME type.
    #[derive(Debug)]
    pub enum Parser {}
    impl Class for Parser {
        const NAME: &'static str = "parser";
        const KEYS: KeyKind = KeyKind::Mime;
        type Handle = crate::parser::ParserHandle;
    }

    /// The driver class: stores and delivers; keyed by URL path.
    #[derive(Debug)]
    pub enum Driver {}
    impl Class for Driver {
        const NAME: &'static str = "driver";
        const KEYS: KeyKind = KeyKind::Path;
        type Handle = crate::driver::DriverHandle;
    }

    /// The route class: adds HTTP endpoints; keyed by method and path
    /// pattern (`GET /pkg/{name}`, `POST /jobs/`).
    #[derive(Debug)]
    pub enum Route {}
    impl Class for Route {
        const NAME: &'static str = "route";
        const KEYS: KeyKind = KeyKind::Route;
        type Handle = crate::route::RouteHandle;
    }

    /// The worker class: works messages from queues (a job runner); keyed
    /// by the queue paths it works, exactly.
    #[derive(Debug)]
    pub enum Worker {}
    impl Class for Worker {
        const NAME: &'static str = "worker";
        const KEYS: KeyKind = KeyKind::Exact;
        type Handle = crate::worker::WorkerHandle;
    }

    /// The auth class: authenticates connections and authorizes what
    /// they do; keyed by name (`default`).
    #[derive(Debug)]
    pub enum Auth {}
    impl Class for Auth {
        const NAME: &'static str = "auth";
        const KEYS: KeyKind = KeyKind::Exact;
        type Handle = crate::auth::AuthHandle;
    }

    /// The terminal class's name.
    pub const TERMINAL: &str = Terminal::NAME;
    /// The dispatcher class's name.
    pub const DISPATCHER: &str = Dispatcher::NAME;
    /// The parser class's name.
    pub const PARSER: &str = Parser::NAME;
    /// The driver class's name.
    pub const DRIVER: &str = Driver::NAME;
    /// The route class's name.
    pub const ROUTE: &str = Route::NAME;
    /// The worker class's name.
    pub const WORKER: &str = Worker::NAME;
    /// The auth class's name.
    pub const AUTH: &str = Auth::NAME;
}
