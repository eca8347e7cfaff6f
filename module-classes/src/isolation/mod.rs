//! Isolation: a driver or parser instance in a host process of its own,
//! behind a proxy that implements its class's contract (seed 001).
//!
//! ```text
//!  server process                                host process (`bindery host`)
//!  ──────────────                                ────────────────────────────
//!  dispatcher ─▶ DriverProxy ──frames, ids──▶ Unix socket ──▶ the instance
//!                (Driver)    ◀──replies, deliveries────────── (the same module code)
//! ```
//!
//! - The host is the server's own binary re-executed with the hidden
//!   `host` subcommand, so it links the same modules (a custom main gets
//!   isolation for free: [`host::serve`] is called by `bindery_server::run`).
//!   It makes the one instance the server sends ([`frame::Kind::Create`]:
//!   module, name, keys, config section, data directory) in a kernel of
//!   its own, then serves calls.
//! - [`proxy::DriverProxy`] sends each call as a frame with a request id;
//!   many are in flight at once and replies complete them in any order;
//!   deliveries stream back per subscription under the consumer's credit
//!   (the host's driver keeps to the credit the proxy forwards).
//! - When the host dies, every call in flight fails with `Unavailable`
//!   (HTTP 503), every subscription is closed, and the runtime is told
//!   ([`bindery::Monitor::failed`]): the instance is `failed` and restarts
//!   as its `restart` policy says.
//! - Hosts never outlive the server: see `spawn.rs`
//!   (parent-death signal from a thread that lives as long as the server,
//!   `getppid()` checked after arming it, exit at the end of the socket).
//!
//! The class helpers ([`crate::driver::register`],
//! [`crate::parser::register`]) make the proxy when an instance says
//! `isolation = "process"`; a module does nothing. `docs/isolation.md` is
//! the user's guide and the protocol's description.

pub mod frame;
pub mod host;
pub mod proxy;

mod conn;
mod spawn;
mod start;
mod stream;
mod writer;

pub use proxy::{DriverProxy, ParserProxy};
