//! `parser.octets`: accepts any body.
//!
//! Binds `*/*` by default: the catch-all that lets a server take any
//! content type that no stricter parser claims. Leave it out of a server
//! (or bind it to nothing) to refuse unknown types with 415.
//!
//! Configuration: none.

use bindery_classes::{ParseError, Parser, parser};
use serde::Deserialize;

bindery::module! {
    class: bindery_classes::class::Parser,
    name: "octets",
    description: "accepts any body (the catch-all for */*)",
    main: module_main,
}

/// The types an instance binds when configured with none.
pub const DEFAULT_TYPES: &[&str] = &["*/*"];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {}

fn module_main(
    reg: &mut bindery::Registrar<'_, bindery_classes::class::Parser>,
) -> Result<(), bindery::BoxError> {
    parser::register(reg, DEFAULT_TYPES, |cx| {
        let _: Config = cx.config().parse()?;
        Ok(Octets)
    });
    Ok(())
}

/// The accept-anything parser.
#[derive(Debug, Default, Clone, Copy)]
pub struct Octets;

impl Parser for Octets {
    fn validate(&self, _content_type: &str, _body: &[u8]) -> Result<(), ParseError> {
        Ok(())
    }

    fn default_types(&self) -> &'static [&'static str] {
        DEFAULT_TYPES
    }
}
