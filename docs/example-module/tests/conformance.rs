//! 5. Certification: one line runs the parser class's whole suite.

bindery_conformance::parser_suite!(parser_csv::Csv::default());
