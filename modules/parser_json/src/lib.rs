//! `parser.json`: validates JSON bodies.
//!
//! Binds `application/json` by default, which through the MIME table's
//! suffix fallback also serves `application/*+json`. A body that is not one
//! well-formed JSON value is refused with the byte offset of the fault.
//! Nothing is allocated for the document: it is only checked.
//!
//! Configuration: none (`[instances.NAME.config]` must be empty).

use bindery_classes::{ParseError, Parser, parser};
use serde::Deserialize;

bindery::module! {
    class: bindery_classes::class::Parser,
    name: "json",
    description: "validates JSON bodies, naming the byte offset of a fault",
    main: module_main,
}

/// The types an instance binds when configured with none.
pub const DEFAULT_TYPES: &[&str] = &["application/json"];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {}

fn module_main(
    reg: &mut bindery::Registrar<'_, bindery_classes::class::Parser>,
) -> Result<(), bindery::BoxError> {
    parser::register(reg, DEFAULT_TYPES, |cx| {
        let _: Config = cx.config().parse()?;
        Ok(Json)
    });
    Ok(())
}

/// The JSON parser.
#[derive(Debug, Default, Clone, Copy)]
pub struct Json;

impl Parser for Json {
    fn validate(&self, _content_type: &str, body: &[u8]) -> Result<(), ParseError> {
        // JSON is UTF-8 (RFC 8259); serde_json does not check the text of
        // strings it skips, so check it first.
        let text = std::str::from_utf8(body)
            .map_err(|e| ParseError::at(e.valid_up_to(), "invalid UTF-8 in JSON text"))?;
        match serde_json::from_str::<serde::de::IgnoredAny>(text) {
            Ok(_) => Ok(()),
            // A document that ends too soon is at fault where it ends.
            Err(e) if e.is_eof() => Err(ParseError::at(body.len(), e.to_string())),
            Err(e) => Err(ParseError::at(
                offset(body, e.line(), e.column()),
                e.to_string(),
            )),
        }
    }

    fn default_types(&self) -> &'static [&'static str] {
        DEFAULT_TYPES
    }
}

/// Turns serde_json's 1-based line and column (in bytes) into an offset.
fn offset(body: &[u8], line: usize, column: usize) -> usize {
    let mut start = 0;
    for _ in 1..line {
        match body[start..].iter().position(|&b| b == b'\n') {
            Some(p) => start += p + 1,
            None => break,
        }
    }
    (start + column.saturating_sub(1)).min(body.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_json_and_names_the_offset_of_a_fault() {
        assert!(
            Json.validate("application/json", br#"{"a":[1,2,{"b":null}]}"#)
                .is_ok()
        );
        assert!(Json.validate("application/json", b"  42 ").is_ok());
        let e = Json
            .validate("application/json", br#"{"a": tru}"#)
            .unwrap_err();
        assert_eq!(e.offset, Some(9), "{e}");
        let e = Json
            .validate("application/json", b"{\n  \"a\": 1,\n  oops\n}")
            .unwrap_err();
        assert_eq!(e.offset, Some(14), "{e}");
        assert!(Json.validate("application/json", b"").is_err());
        let e = Json
            .validate("application/json", b"[\"a\xff\"]")
            .unwrap_err();
        assert_eq!(e.offset, Some(3), "{e}");
        assert!(Json.validate("application/json", b"{} {}").is_err());
    }
}
