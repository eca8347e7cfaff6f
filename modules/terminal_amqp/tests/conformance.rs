//! `terminal.amqp` against the terminal contract.

bindery_conformance::terminal_suite!(&terminal_amqp::MODULE);
