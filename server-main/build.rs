//! Build configuration of the `bindery` binary: with `BINDERY_NO_PIE=1` set
//! at build time (Linux), it is linked with `-no-pie`, so the loader has no
//! descriptor pointers to relocate at start (docs/performance.md: 10,000
//! registrations add about 0.5 ms instead of 1.2 ms). Off by default: a
//! position-independent executable is what lets the kernel randomize where
//! the server's own code and data lie (ASLR). Only that binary changes;
//! the library, the tests and other binaries are built as always.

fn main() {
    println!("cargo::rerun-if-env-changed=BINDERY_NO_PIE");
    let linux = std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux");
    if linux && std::env::var_os("BINDERY_NO_PIE").is_some_and(|v| v == "1") {
        println!("cargo::rustc-link-arg-bin=bindery=-no-pie");
    }
}
