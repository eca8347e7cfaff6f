//! The parser contract.
//!
//! The harness is the parser under test, `dyn Parser`. Beyond the rules
//! every parser keeps (it declares valid MIME types; it never panics,
//! whatever the bytes; its verdicts are deterministic), a parser is held to
//! the format of each MIME type it binds by default, with the samples in
//! [`samples`]: JSON for `application/json`, UTF-8 for `text/*`, anything
//! for `*/*`. A parser binding a type with no samples here is held to the
//! general rules only.

use bindery::KeyKind;
use bindery_classes::Parser;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

use crate::{Case, ensure};

/// What a parser case gets.
pub type Harness = dyn Parser;

/// The rules of a parser.
pub const PARSER: &[Case<Harness>] = &[
    Case {
        name: "declares_valid_default_mime_types",
        run: declares_valid_default_mime_types,
    },
    Case {
        name: "accepts_valid_bodies_of_its_types",
        run: accepts_valid_bodies_of_its_types,
    },
    Case {
        name: "rejects_invalid_bodies_with_a_reason_and_offset",
        run: rejects_invalid_bodies_with_a_reason_and_offset,
    },
    Case {
        name: "never_panics_on_arbitrary_bytes",
        run: never_panics_on_arbitrary_bytes,
    },
    Case {
        name: "verdicts_are_deterministic",
        run: verdicts_are_deterministic,
    },
];

/// Runs the parser suite as `#[test]`s, one per case:
///
/// ```text
/// bindery_conformance::parser_suite!(MyParser);
/// ```
#[macro_export]
macro_rules! parser_suite {
    ($parser:expr) => {
        mod conformance_parser {
            #[allow(unused_imports)]
            use super::*;
            $crate::__suite!(
                $crate::parser::PARSER,
                $parser,
                [
                    declares_valid_default_mime_types,
                    accepts_valid_bodies_of_its_types,
                    rejects_invalid_bodies_with_a_reason_and_offset,
                    never_panics_on_arbitrary_bytes,
                    verdicts_are_deterministic,
                ]
            );
        }
    };
}

/// Known-valid and known-invalid bodies for the formats the suite knows.
pub mod samples {
    /// Samples for a MIME type: valid bodies, invalid bodies with the byte
    /// offset of their fault (where the format has offsets).
    pub struct Samples {
        /// Bodies that must be accepted.
        pub valid: &'static [&'static [u8]],
        /// Bodies that must be refused, and the offset a parser must name.
        pub invalid: &'static [(&'static [u8], Option<usize>)],
        /// The content type to present them as.
        pub content_type: &'static str,
    }

    /// The samples for a bound MIME key, if the suite knows its format.
    pub fn for_key(key: &str) -> Option<Samples> {
        match key {
            "application/json" => Some(Samples {
                content_type: "application/json",
                valid: &[
                    b"{}",
                    b"[]",
                    b"0",
                    b"-1.5e10",
                    b"\"text \\u00e9\"",
                    b"null",
                    b" {\"a\": [1, true, null, {\"b\": \"c\"}]} ",
                ],
                invalid: &[
                    (b"", Some(0)),
                    (b"{", Some(1)),
                    (b"{\"a\" 1}", Some(5)),
                    (b"[1, 2,]", Some(6)),
                    (b"tru", Some(3)),
                    (b"{} {}", Some(3)),
                    (b"\"\xff\"", Some(1)),
                ],
            }),
            "text/*" | "text/plain" => Some(Samples {
                content_type: "text/plain",
                valid: &[
                    b"",
                    b"hello",
                    b"h\xc3\xa9llo w\xc3\xb6rld \xf0\x9f\x98\x80",
                    b"line\r\nline\n",
                ],
                invalid: &[
                    (b"ab\xff", Some(2)),
                    (b"\xc3", Some(0)),
                    (b"ok\xed\xa0\x80", Some(2)),
                ],
            }),
            "*/*" => Some(Samples {
                content_type: "application/octet-stream",
                valid: &[b"", b"\x00\x01\xff", b"anything"],
                invalid: &[],
            }),
            _ => None,
        }
    }
}

fn declares_valid_default_mime_types(p: &Harness) -> Result<(), String> {
    let types = p.default_types();
    ensure!(!types.is_empty(), "declares no default MIME types");
    for t in types {
        KeyKind::Mime
            .normalize(t)
            .map_err(|e| format!("default type {t:?} is not a MIME key: {e}"))?;
    }
    Ok(())
}

fn accepts_valid_bodies_of_its_types(p: &Harness) -> Result<(), String> {
    for key in p.default_types() {
        let Some(s) = samples::for_key(key) else {
            continue;
        };
        for body in s.valid {
            p.validate(s.content_type, body).map_err(|e| {
                format!(
                    "refused valid {} body {:?}: {e}",
                    s.content_type,
                    String::from_utf8_lossy(body)
                )
            })?;
        }
    }
    Ok(())
}

fn rejects_invalid_bodies_with_a_reason_and_offset(p: &Harness) -> Result<(), String> {
    for key in p.default_types() {
        let Some(s) = samples::for_key(key) else {
            continue;
        };
        for (body, offset) in s.invalid {
            let shown = String::from_utf8_lossy(body);
            match p.validate(s.content_type, body) {
                Ok(()) => {
                    return Err(format!(
                        "accepted invalid {} body {shown:?}",
                        s.content_type
                    ));
                }
                Err(e) => {
                    ensure!(
                        !e.reason.trim().is_empty(),
                        "refused {shown:?} without a reason"
                    );
                    ensure!(
                        offset.is_none() || e.offset == *offset,
                        "refused {shown:?} at offset {:?}, the fault is at {offset:?}",
                        e.offset
                    );
                    ensure!(
                        e.offset.is_none_or(|o| o <= body.len()),
                        "offset {:?} is past the end of a {}-byte body",
                        e.offset,
                        body.len()
                    );
                }
            }
        }
    }
    Ok(())
}

fn never_panics_on_arbitrary_bytes(p: &Harness) -> Result<(), String> {
    let mut types: Vec<&str> = p.default_types().to_vec();
    types.extend(["application/json", "text/plain", "application/octet-stream"]);
    let mut runner = TestRunner::new(Config {
        cases: 2000,
        failure_persistence: None,
        ..Config::default()
    });
    // Arbitrary bytes, and bytes biased towards the punctuation of text formats.
    let bytes = prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..512),
        proptest::collection::vec(
            prop_oneof![
                Just(b'{'),
                Just(b'}'),
                Just(b'['),
                Just(b']'),
                Just(b'"'),
                Just(b'\\'),
                Just(b':'),
                Just(b','),
                Just(0xff),
                Just(0xc3),
                any::<u8>()
            ],
            0..256
        ),
    ];
    let result = runner.run(&(bytes, proptest::sample::select(types)), |(body, ct)| {
        let outcome =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| p.validate(ct, &body)));
        prop_assert!(outcome.is_ok(), "panicked on {} body {:?}", ct, body);
        if let Ok(Err(e)) = outcome {
            prop_assert!(
                e.offset.is_none_or(|o| o <= body.len()),
                "offset past the end"
            );
        }
        Ok(())
    });
    result.map_err(|e| format!("{e}"))
}

fn verdicts_are_deterministic(p: &Harness) -> Result<(), String> {
    let bodies: [&[u8]; 4] = [b"{\"a\":1}", b"{\"a\":", b"plain", b"\xff\xfe"];
    for ct in ["application/json", "text/plain", "application/octet-stream"] {
        for body in bodies {
            let a = p.validate(ct, body);
            let b = p.validate(ct, body);
            ensure!(
                a == b,
                "two verdicts on the same {ct} body differ: {a:?} then {b:?}"
            );
        }
    }
    Ok(())
}
