//! The AMQP 0-9-1 codec: frames, methods (re-encoded, they must decode to
//! themselves) and content headers.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| terminal_amqp::fuzzing::frames(data));
