//! `terminal.http` against the terminal contract.

bindery_conformance::terminal_suite!(&terminal_http::MODULE);
