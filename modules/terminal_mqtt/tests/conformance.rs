//! `terminal.mqtt` against the terminal contract.

bindery_conformance::terminal_suite!(&terminal_mqtt::MODULE);
