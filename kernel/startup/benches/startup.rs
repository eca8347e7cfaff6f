//! Process start: a binary linking 10,000 generated registrations (and
//! loading them: checks, module mains) against the same binary with none.
//! The difference of the two is what registrations cost at start.
//!
//! Run: `cargo bench -p bindery-startup-bench [--features inventory]`;
//! `scripts/bench-startup` compares both backends, PIE and not, in one run.

// criterion's macros make undocumented items.
#![allow(missing_docs)]

use std::process::Command;

use criterion::{Criterion, criterion_group, criterion_main};

fn run(path: &str) {
    let status = Command::new(path).status().expect("spawn");
    assert!(status.success());
}

fn startup(c: &mut Criterion) {
    let mut g = c.benchmark_group("startup");
    g.bench_function("empty_main", |b| {
        b.iter(|| run(env!("CARGO_BIN_EXE_empty")))
    });
    g.bench_function("registered_10000", |b| {
        b.iter(|| run(env!("CARGO_BIN_EXE_registered")))
    });
    g.bench_function("empty_main_nopie", |b| {
        b.iter(|| run(env!("CARGO_BIN_EXE_empty_nopie")))
    });
    g.bench_function("registered_10000_nopie", |b| {
        b.iter(|| run(env!("CARGO_BIN_EXE_registered_nopie")))
    });
    g.finish();
}

criterion_group!(benches, startup);
criterion_main!(benches);
