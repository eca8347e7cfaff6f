//! Entry points for the fuzz targets (`fuzz/`), compiled only with
//! `--cfg fuzzing` (which `scripts/fuzz` sets) and in tests, which replay
//! the committed corpus through them: the codec is private, and
//! this is its one door for them.

use crate::{methods, wire};

/// Reads frames off `data` as a connection would (after the protocol
/// header; frame_max 128 KiB), and decodes each method and content
/// header; a method decoded is encoded again and must decode to itself.
pub fn frames(data: &[u8]) {
    let mut at = 0;
    while at < data.len() {
        match wire::frame(&data[at..], 128 * 1024) {
            Ok(wire::Framed::Frame(f, n)) => {
                assert!(n > 0 && n <= data.len() - at, "took {n} bytes");
                at += n;
                match f.kind {
                    wire::METHOD => {
                        if let Ok(m) = methods::decode(f.payload) {
                            let mut out = Vec::new();
                            methods::encode(&mut out, &m);
                            let again = methods::decode(&out);
                            assert_eq!(again.as_ref().ok(), Some(&m), "re-encoded: {out:02x?}");
                        }
                    }
                    wire::HEADER => {
                        if let Ok(h) = wire::header(f.payload) {
                            let mut out = Vec::new();
                            wire::put_header(&mut out, &h);
                            assert!(wire::header(&out).is_ok(), "re-encoded: {out:02x?}");
                        }
                    }
                    _ => {}
                }
            }
            Ok(wire::Framed::Partial) | Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    /// Every input of the committed corpus (`fuzz/corpus/amqp_codec`, where each
    /// input that once crashed a target is kept) goes through the entry
    /// point in the normal test suite too.
    #[test]
    fn the_committed_fuzz_corpus_runs_clean() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fuzz/corpus/amqp_codec");
        let mut n = 0;
        for entry in std::fs::read_dir(dir).expect("the committed corpus") {
            let path = entry.unwrap().path();
            super::frames(&std::fs::read(&path).unwrap());
            n += 1;
        }
        assert!(n > 0, "{dir} is empty");
    }
}
