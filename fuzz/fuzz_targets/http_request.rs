//! HTTP/1.1 request heads and bodies (by length or chunked), as the HTTP
//! terminal and the management API parse them, with small limits so the
//! fuzzer reaches them.
#![no_main]

use bindery_classes::http::request::{Limits, Parsed, parse};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let limits = Limits {
        max_header_bytes: 4096,
        max_body_bytes: 8192,
    };
    // Requests one after another, as on a keep-alive connection.
    let mut at = 0;
    while at < data.len() {
        match parse(&data[at..], limits) {
            Parsed::Done(r, n) => {
                assert!(n > 0 && n <= data.len() - at, "took {n} bytes");
                assert!(r.body.len() <= limits.max_body_bytes);
                at += n;
            }
            _ => return,
        }
    }
});
