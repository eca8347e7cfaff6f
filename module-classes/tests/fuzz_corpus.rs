//! The committed fuzz corpora of the HTTP request parser
//! (`fuzz/corpus/http_request`, `fuzz/corpus/http_chunked`, where each
//! input that once crashed a target is kept) replayed in the normal test
//! suite, with the fuzz targets' checks.

use bindery_classes::http::request::{Limits, Parsed, parse};

fn inputs(target: &str) -> Vec<Vec<u8>> {
    let dir = format!("{}/../fuzz/corpus/{target}", env!("CARGO_MANIFEST_DIR"));
    let all: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{dir}: {e}"))
        .map(|e| std::fs::read(e.unwrap().path()).unwrap())
        .collect();
    assert!(!all.is_empty(), "{dir} is empty");
    all
}

#[test]
fn http_request_corpus() {
    let limits = Limits {
        max_header_bytes: 4096,
        max_body_bytes: 8192,
    };
    for data in inputs("http_request") {
        let mut at = 0;
        while at < data.len() {
            match parse(&data[at..], limits) {
                Parsed::Done(r, n) => {
                    assert!(n > 0 && n <= data.len() - at);
                    assert!(r.body.len() <= limits.max_body_bytes);
                    at += n;
                }
                _ => break,
            }
        }
    }
}

#[test]
fn http_chunked_corpus() {
    const HEAD: &[u8] = b"POST /queues/q HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n";
    let limits = Limits {
        max_header_bytes: 4096,
        max_body_bytes: 4096,
    };
    for data in inputs("http_chunked") {
        let mut buf = HEAD.to_vec();
        buf.extend_from_slice(&data);
        if let Parsed::Done(r, n) = parse(&buf, limits) {
            assert!(n >= HEAD.len() && n <= buf.len());
            assert!(r.body.len() <= limits.max_body_bytes.min(data.len()));
        }
    }
}
