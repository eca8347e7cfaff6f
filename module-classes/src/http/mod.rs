//! HTTP/1.1 for terminals that speak it: reading requests out of a
//! connection's buffer (heads by `httparse`, bodies by length or chunks,
//! with limits) and writing responses. No sockets: a terminal's connection
//! moves the bytes.

pub mod request;
pub mod response;

pub use request::{Limits, Parsed, Request, parse, query_secs};
