//! `parser.text` against the parser contract.

bindery_conformance::parser_suite!(parser_text::Text);
