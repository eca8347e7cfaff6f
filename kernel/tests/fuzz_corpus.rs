//! The committed fuzz corpus of the configuration loader
//! (`fuzz/corpus/config`, where each input that once crashed the target
//! is kept) replayed in the normal test suite: each is a configuration or
//! an error, never a panic.

#[test]
fn config_corpus() {
    let dir = format!("{}/../fuzz/corpus/config", env!("CARGO_MANIFEST_DIR"));
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{dir}: {e}")) {
        let data = std::fs::read(entry.unwrap().path()).unwrap();
        if let Ok(text) = std::str::from_utf8(&data) {
            let _ = bindery::Config::parse("corpus", text);
        }
        n += 1;
    }
    assert!(n > 0, "{dir} is empty");
}
