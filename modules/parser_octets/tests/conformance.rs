//! `parser.octets` against the parser contract.

bindery_conformance::parser_suite!(parser_octets::Octets);
