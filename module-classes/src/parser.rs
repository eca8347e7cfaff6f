//! The parser class: validates message bodies of the MIME types it is
//! bound to.
//!
//! # Implementing
//!
//! - [`Parser::validate`] accepts a valid body or says why not, with the
//!   byte offset where the format has one. It must never panic, whatever
//!   the bytes.
//! - [`Parser::default_types`] names the MIME types an instance binds when
//!   its configuration names none.
//!
//! # Threading
//!
//! Called on reactor threads, concurrently: keep it pure and quick.
//!
//! # Example
//!
//! ```
//! use bindery_classes::{ParseError, Parser};
//!
//! struct Ascii;
//! impl Parser for Ascii {
//!     fn validate(&self, _content_type: &str, body: &[u8]) -> Result<(), ParseError> {
//!         match body.iter().position(|b| !b.is_ascii()) {
//!             Some(at) => Err(ParseError::at(at, "not ASCII")),
//!             None => Ok(()),
//!         }
//!     }
//!     fn default_types(&self) -> &'static [&'static str] {
//!         &["text/x-ascii"]
//!     }
//! }
//! assert_eq!(Ascii.validate("text/x-ascii", b"a\xffb").unwrap_err().offset, Some(1));
//! ```

use std::fmt;
use std::sync::Arc;

use bindery::{BoxError, InstanceContext, Registrar, Runtime};

/// Why a body was refused, or why it could not be judged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseError {
    /// The byte offset of the fault, where the format has one.
    pub offset: Option<usize>,
    /// What is wrong.
    pub reason: String,
    /// The parser could not judge the body (an isolated parser whose host
    /// is gone): the publish fails `Unavailable` (HTTP 503, try again),
    /// not `Rejected` (400, do not send it again).
    pub unavailable: bool,
}

impl ParseError {
    /// An error at byte `offset`.
    pub fn at(offset: usize, reason: impl Into<String>) -> ParseError {
        ParseError {
            offset: Some(offset),
            reason: reason.into(),
            unavailable: false,
        }
    }

    /// An error with no position.
    pub fn new(reason: impl Into<String>) -> ParseError {
        ParseError {
            offset: None,
            reason: reason.into(),
            unavailable: false,
        }
    }

    /// The body could not be judged now (see [`ParseError::unavailable`]).
    pub fn unavailable(reason: impl Into<String>) -> ParseError {
        ParseError {
            offset: None,
            reason: reason.into(),
            unavailable: true,
        }
    }
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.offset {
            Some(o) => write!(f, "at byte {o}: {}", self.reason),
            None => f.write_str(&self.reason),
        }
    }
}

impl std::error::Error for ParseError {}

/// Validates bodies of the MIME types it is bound to.
pub trait Parser: Send + Sync + 'static {
    /// Accepts `body`, or says why not.
    fn validate(&self, content_type: &str, body: &[u8]) -> Result<(), ParseError>;

    /// The MIME types an instance binds when configured with none.
    fn default_types(&self) -> &'static [&'static str];
}

/// A parser instance as the binding table holds it.
pub type ParserHandle = Arc<dyn Parser>;

/// Registers a parser module's factory; `default_types` are the keys an
/// instance configured without `bind` gets.
pub fn register<P, F>(
    reg: &mut Registrar<'_, crate::class::Parser>,
    default_types: &'static [&'static str],
    make: F,
) where
    P: Parser,
    F: Fn(&InstanceContext) -> Result<P, BoxError> + Send + Sync + 'static,
{
    reg.register(move |cx| {
        if cx.isolation().mode == bindery::Isolation::Process {
            return Ok(Arc::new(crate::isolation::ParserProxy::start(cx)?) as ParserHandle);
        }
        make(cx).map(|p| Arc::new(p) as ParserHandle)
    });
    reg.default_keys(default_types);
    reg.isolatable();
}

/// The parser for `content_type`, with wildcard fallback.
pub fn lookup(rt: &Runtime, content_type: &str) -> Option<ParserHandle> {
    rt.lookup::<ParserHandle>(crate::class::PARSER, content_type)
}
