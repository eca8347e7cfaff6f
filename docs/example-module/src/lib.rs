//! `parser.csv`: the example module of `docs/module-authors.md`.
//!
//! Validates `text/csv` bodies: every record has the same number of fields,
//! quoted fields are closed. A refusal names the byte offset of the fault.
//!
//! ```toml
//! [instances.csv]
//! module = "parser.csv"          # binds text/csv unless told otherwise
//! config = { delimiter = ";", max_fields = 100 }
//! ```

use bindery_classes::{ParseError, Parser, parser};
use serde::Deserialize;

// 1. Declare the module: class, name, what it does, its module main.
bindery::module! {
    class: bindery_classes::class::Parser,
    name: "csv",
    description: "validates CSV bodies (example module)",
    main: module_main,
}

/// The types an instance binds when its configuration names none.
pub const DEFAULT_TYPES: &[&str] = &["text/csv"];

/// 2. The instance configuration: unknown fields are errors.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The field separator, one ASCII character.
    pub delimiter: char,
    /// The most fields a record may have.
    pub max_fields: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            delimiter: ',',
            max_fields: 1000,
        }
    }
}

/// 3. The module main: registers a factory that makes an instance from its
///    configuration section.
fn module_main(
    reg: &mut bindery::Registrar<'_, bindery_classes::class::Parser>,
) -> Result<(), bindery::BoxError> {
    parser::register(reg, DEFAULT_TYPES, |cx| {
        let config: Config = cx.config().parse()?;
        if !config.delimiter.is_ascii() || config.delimiter == '"' {
            return Err(format!(
                "instance {:?}: delimiter must be an ASCII character other than '\"'",
                cx.name()
            )
            .into());
        }
        Ok(Csv {
            delimiter: config.delimiter as u8,
            max_fields: config.max_fields,
        })
    });
    Ok(())
}

/// 4. The class contract, implemented.
#[derive(Debug, Clone)]
pub struct Csv {
    delimiter: u8,
    max_fields: usize,
}

impl Default for Csv {
    fn default() -> Self {
        Csv {
            delimiter: b',',
            max_fields: 1000,
        }
    }
}

impl Parser for Csv {
    fn validate(&self, _content_type: &str, body: &[u8]) -> Result<(), ParseError> {
        std::str::from_utf8(body).map_err(|e| ParseError::at(e.valid_up_to(), "invalid UTF-8"))?;
        let mut expected = None;
        let (mut fields, mut in_quotes, mut record_start) = (1usize, false, 0usize);
        let mut i = 0;
        while i < body.len() {
            let b = body[i];
            if in_quotes {
                if b == b'"' {
                    if body.get(i + 1) == Some(&b'"') {
                        i += 1;
                    } else {
                        in_quotes = false;
                    }
                }
            } else if b == b'"' {
                in_quotes = true;
            } else if b == self.delimiter {
                fields += 1;
                if fields > self.max_fields {
                    return Err(ParseError::at(
                        i,
                        format!("more than {} fields", self.max_fields),
                    ));
                }
            } else if b == b'\n' {
                check_record(&mut expected, fields, record_start)?;
                fields = 1;
                record_start = i + 1;
            }
            i += 1;
        }
        if in_quotes {
            return Err(ParseError::at(body.len(), "a quoted field is not closed"));
        }
        if record_start < body.len() {
            check_record(&mut expected, fields, record_start)?;
        }
        Ok(())
    }

    fn default_types(&self) -> &'static [&'static str] {
        DEFAULT_TYPES
    }
}

fn check_record(expected: &mut Option<usize>, fields: usize, at: usize) -> Result<(), ParseError> {
    match *expected {
        None => *expected = Some(fields),
        Some(n) if n != fields => {
            return Err(ParseError::at(
                at,
                format!("record has {fields} fields, the first had {n}"),
            ));
        }
        Some(_) => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_must_agree() {
        let csv = Csv::default();
        assert!(csv.validate("text/csv", b"a,b\n1,2\n\"x,y\",3\n").is_ok());
        assert_eq!(
            csv.validate("text/csv", b"a,b\n1,2,3\n")
                .unwrap_err()
                .offset,
            Some(4)
        );
        assert_eq!(
            csv.validate("text/csv", b"a,\"b\n").unwrap_err().offset,
            Some(5)
        );
    }
}
