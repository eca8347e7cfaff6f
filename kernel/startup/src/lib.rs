//! Support for the start-up benchmark: what the `registered` and `empty`
//! binaries both run, so that the only difference between them is the
//! 10,000 descriptors the first one links.

use bindery::{ModuleList, Registry};

/// Loads the module table (running every module main) and returns how many
/// modules it holds.
pub fn load() -> usize {
    match Registry::load(ModuleList::new(&[])) {
        Ok(r) => r.len(),
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    }
}
