//! Entry points for the fuzz targets (`fuzz/`), compiled only with
//! `--cfg fuzzing` (which `scripts/fuzz` sets) and in tests, which replay
//! the committed corpus through them: the record reader is
//! private, and this is its one door for them.

use crate::record::{self, Next};

/// Reads records off `data` as recovery reads a segment, to the end or
/// the first fault.
pub fn segment(data: &[u8]) {
    let mut at = 0;
    while let Next::Record(_, n) = record::decode(&data[at..]) {
        assert!(n > 0 && n <= data.len() - at, "took {n} bytes");
        at += n;
    }
}

/// Frames `body` (a kind byte and its payload) with its true length and
/// checksum, so the fields past the checksum are what is fuzzed, and reads
/// it back.
pub fn record_body(body: &[u8]) {
    let mut framed = Vec::with_capacity(body.len() + record::FRAME);
    framed.extend_from_slice(&(body.len() as u32).to_le_bytes());
    framed.extend_from_slice(&crc32fast::hash(body).to_le_bytes());
    framed.extend_from_slice(body);
    segment(&framed);
}

#[cfg(test)]
mod tests {
    /// Every input of the committed corpus (`fuzz/corpus/journal_record`, where each
    /// input that once crashed a target is kept) goes through the entry
    /// point in the normal test suite too.
    #[test]
    fn the_committed_fuzz_corpus_runs_clean() {
        let dir = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../fuzz/corpus/journal_record"
        );
        let mut n = 0;
        for entry in std::fs::read_dir(dir).expect("the committed corpus") {
            let path = entry.unwrap().path();
            let data = std::fs::read(&path).unwrap();
            if let Some((&how, rest)) = data.split_first() {
                if how & 1 == 0 {
                    super::segment(rest);
                } else {
                    super::record_body(rest);
                }
            }
            n += 1;
        }
        assert!(n > 0, "{dir} is empty");
    }
}
