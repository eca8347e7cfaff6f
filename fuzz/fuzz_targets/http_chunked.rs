//! Chunked request bodies: the fuzzed bytes follow a fixed head that
//! announces `Transfer-Encoding: chunked`, so every input exercises the
//! de-chunker (sizes, extensions, trailers, limits).
#![no_main]

use bindery_classes::http::request::{Limits, Parsed, parse};
use libfuzzer_sys::fuzz_target;

const HEAD: &[u8] = b"POST /queues/q HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n";

fuzz_target!(|data: &[u8]| {
    let mut buf = HEAD.to_vec();
    buf.extend_from_slice(data);
    let limits = Limits {
        max_header_bytes: 4096,
        max_body_bytes: 4096,
    };
    if let Parsed::Done(r, n) = parse(&buf, limits) {
        assert!(n >= HEAD.len() && n <= buf.len(), "took {n} bytes");
        assert!(r.body.len() <= limits.max_body_bytes);
        assert!(r.body.len() <= data.len(), "a body longer than its chunks");
    }
});
