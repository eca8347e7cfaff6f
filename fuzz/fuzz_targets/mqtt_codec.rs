//! The MQTT 3.1.1 codec: packets decoded off the bytes as a connection
//! would; each one found must re-encode to bytes that decode to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| terminal_mqtt::fuzzing::decode(data));
