//! Generates 10,000 module descriptors for the `registered` binaries, and
//! links the `_nopie` binaries as executables that are not
//! position-independent (only those two: every other build stays as it is).

use std::fmt::Write as _;

const COUNT: usize = 10_000;

fn main() {
    let mut out = String::with_capacity(COUNT * 400);
    for i in 0..COUNT {
        let _ = writeln!(
            out,
            "bindery::__register! {{ static M{i} = bindery::ModuleDescriptor {{ \
             class: \"generated\", name: \"m{i}\", version: \"0.0.0\", abi: bindery::ABI_VERSION, \
             description: \"generated\", krate: \"generated\", main: generated_main, certify_config: \"\" }}; }}"
        );
    }
    let dir = std::env::var("OUT_DIR").expect("OUT_DIR");
    std::fs::write(format!("{dir}/registrations.rs"), out).expect("write registrations");
    // x86_64 Linux with a cc driver (what Cargo uses there): `-no-pie` comes
    // after rustc's own `-pie`, and the last one wins.
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux") {
        for bin in ["registered_nopie", "empty_nopie"] {
            println!("cargo::rustc-link-arg-bin={bin}=-no-pie");
        }
    }
    println!("cargo::rerun-if-changed=build.rs");
}
