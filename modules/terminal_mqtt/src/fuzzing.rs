//! Entry points for the fuzz targets (`fuzz/`), compiled only with
//! `--cfg fuzzing` (which `scripts/fuzz` sets) and in tests, which replay
//! the committed corpus through them: the codec is private, and
//! this is its one door for them.

use crate::codec::{self, Decoded};

/// Decodes packets off `data` as a connection would (at most 64 KiB a
/// packet), and re-encodes each one found: the encoding must decode again
/// to the same packet.
/// Each PUBLISH also goes through the borrowed decoder the connection
/// uses, told the previous PUBLISH's topic as known: it must agree.
pub fn decode(data: &[u8]) {
    let mut at = 0;
    let mut known: Option<String> = None;
    while at < data.len() {
        let fast = codec::decode_publish(&data[at..], 64 * 1024, known.as_deref())
            .map(|p| p.map(|(p, n)| (p.to_owned(), n)));
        match codec::decode(&data[at..], 64 * 1024) {
            Ok(Decoded::Packet(p, n)) => {
                assert!(n > 0 && n <= data.len() - at, "took {n} bytes");
                if let codec::Packet::Publish(full) = &p {
                    assert_eq!(
                        fast,
                        Ok(Some((full.clone(), n))),
                        "borrowed decoding differs"
                    );
                    known = Some(full.topic.clone());
                }
                at += n;
                let mut out = Vec::new();
                codec::encode(&mut out, &p);
                match codec::decode(&out, usize::MAX) {
                    Ok(Decoded::Packet(again, m)) => {
                        assert_eq!(m, out.len());
                        assert_eq!(again, p, "re-encoded: {out:02x?}");
                    }
                    other => panic!("{p:?} encoded as {out:02x?} decodes to {other:?}"),
                }
            }
            Ok(Decoded::Partial) | Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    /// Every input of the committed corpus (`fuzz/corpus/mqtt_codec`, where each
    /// input that once crashed a target is kept) goes through the entry
    /// point in the normal test suite too.
    #[test]
    fn the_committed_fuzz_corpus_runs_clean() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fuzz/corpus/mqtt_codec");
        let mut n = 0;
        for entry in std::fs::read_dir(dir).expect("the committed corpus") {
            let path = entry.unwrap().path();
            super::decode(&std::fs::read(&path).unwrap());
            n += 1;
        }
        assert!(n > 0, "{dir} is empty");
    }
}
