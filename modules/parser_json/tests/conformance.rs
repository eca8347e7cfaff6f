//! `parser.json` against the parser contract.

bindery_conformance::parser_suite!(parser_json::Json);
