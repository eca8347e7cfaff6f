//! `terminal.manage` against the terminal contract.

bindery_conformance::terminal_suite!(&terminal_manage::MODULE);
