//! `parser.text`: validates that bodies are UTF-8 text.
//!
//! Binds `text/*` by default. A body that is not valid UTF-8 is refused
//! with the byte offset of the first bad sequence.
//!
//! Configuration: none.

use bindery_classes::{ParseError, Parser, parser};
use serde::Deserialize;

bindery::module! {
    class: bindery_classes::class::Parser,
    name: "text",
    description: "validates UTF-8 text bodies",
    main: module_main,
}

/// The types an instance binds when configured with none.
pub const DEFAULT_TYPES: &[&str] = &["text/*"];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {}

fn module_main(
    reg: &mut bindery::Registrar<'_, bindery_classes::class::Parser>,
) -> Result<(), bindery::BoxError> {
    parser::register(reg, DEFAULT_TYPES, |cx| {
        let _: Config = cx.config().parse()?;
        Ok(Text)
    });
    Ok(())
}

/// The UTF-8 text parser.
#[derive(Debug, Default, Clone, Copy)]
pub struct Text;

impl Parser for Text {
    fn validate(&self, _content_type: &str, body: &[u8]) -> Result<(), ParseError> {
        std::str::from_utf8(body)
            .map(|_| ())
            .map_err(|e| ParseError::at(e.valid_up_to(), "invalid UTF-8"))
    }

    fn default_types(&self) -> &'static [&'static str] {
        DEFAULT_TYPES
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_offset_of_bad_utf8() {
        assert!(Text.validate("text/plain", "héllo".as_bytes()).is_ok());
        assert!(Text.validate("text/plain", b"").is_ok());
        let e = Text.validate("text/plain", b"ab\xc3(").unwrap_err();
        assert_eq!(e.offset, Some(2));
    }
}
