//! Kernel micro-benchmarks, reported as ratios against baselines measured in
//! the same run:
//!
//! - a call through a cached module handle (`Arc<dyn Trait>`, as a binding
//!   table hands out) against a direct call of the same function;
//! - path and MIME lookups in tables of 1,000 bindings (exact hits and
//!   wildcard fallbacks), against a plain `HashMap` get of the same key.
//!
//! Run: `cargo bench -p bindery --bench kernel`.

// criterion's macros make undocumented items.
#![allow(missing_docs)]

use std::hint::black_box;
use std::sync::Arc;

use bindery::{Config, Kernel, KeyKind, ModuleDescriptor, Registrar, Registry, Table};
use criterion::{Criterion, criterion_group, criterion_main};

trait Work: Send + Sync {
    fn work(&self, x: u64) -> u64;
}

struct Adder(u64);

#[inline(never)]
fn direct(a: &Adder, x: u64) -> u64 {
    x.wrapping_mul(31).wrapping_add(a.0)
}

impl Work for Adder {
    #[inline(never)]
    fn work(&self, x: u64) -> u64 {
        x.wrapping_mul(31).wrapping_add(self.0)
    }
}

type Handle = Arc<dyn Work>;

fn main_path(reg: &mut Registrar<'_>) -> Result<(), bindery::BoxError> {
    reg.factory::<Handle, _>(KeyKind::Path, |_| Ok(Arc::new(Adder(7)) as Handle));
    Ok(())
}

fn main_mime(reg: &mut Registrar<'_>) -> Result<(), bindery::BoxError> {
    reg.factory::<Handle, _>(KeyKind::Mime, |_| Ok(Arc::new(Adder(7)) as Handle));
    Ok(())
}

static MODULES: [ModuleDescriptor; 2] = [
    ModuleDescriptor {
        class: "driver",
        name: "bench",
        version: "0.0.0",
        abi: bindery::ABI_VERSION,
        description: "bench",
        krate: "bench",
        main: main_path,
        certify_config: "",
    },
    ModuleDescriptor {
        class: "parser",
        name: "bench",
        version: "0.0.0",
        abi: bindery::ABI_VERSION,
        description: "bench",
        krate: "bench",
        main: main_mime,
        certify_config: "",
    },
];

/// A kernel whose driver table has 1,000 path bindings and whose parser
/// table has 1,000 MIME bindings (plus `text/*` and `*/*`).
fn kernel() -> Kernel {
    let mut text = String::new();
    for i in 0..1000 {
        text.push_str(&format!(
            "[instances.d{i}]\nmodule = \"driver.bench\"\nbind = [\"/area{}/svc{i}/\"]\n",
            i % 10
        ));
        text.push_str(&format!(
            "[instances.p{i}]\nmodule = \"parser.bench\"\nbind = [\"application/x-type{i}\"]\n"
        ));
    }
    text.push_str("[instances.pt]\nmodule = \"parser.bench\"\nbind = [\"text/*\"]\n");
    text.push_str("[instances.pa]\nmodule = \"parser.bench\"\nbind = [\"*/*\"]\n");
    let config = Config::parse("bench", &text).unwrap();
    let registry = Registry::load_from(&[], &MODULES).unwrap();
    Kernel::build_with(registry, &config, Some(1)).unwrap()
}

fn calls(c: &mut Criterion) {
    let kernel = kernel();
    let handle: Handle = kernel
        .runtime()
        .lookup("driver", "/area3/svc503/x")
        .unwrap();
    let adder = Adder(7);
    let mut g = c.benchmark_group("call");
    g.bench_function("direct", |b| {
        b.iter(|| direct(black_box(&adder), black_box(5)))
    });
    g.bench_function("cached_handle", |b| {
        b.iter(|| black_box(&handle).work(black_box(5)))
    });
    g.finish();
}

fn lookups(c: &mut Criterion) {
    let kernel = kernel();
    let rt = kernel.runtime();
    let drivers: Arc<Table> = rt.table("driver").unwrap().clone();
    let parsers: Arc<Table> = rt.table("parser").unwrap().clone();
    let baseline: std::collections::HashMap<String, u32> = (0..1000)
        .map(|i| (format!("/area{}/svc{i}", i % 10), i))
        .collect();

    let mut g = c.benchmark_group("lookup");
    g.bench_function("hashmap_get_baseline", |b| {
        b.iter(|| baseline.get(black_box("/area3/svc503")))
    });
    let index = drivers.index();
    g.bench_function("path_index", |b| {
        b.iter(|| index.find(black_box("/area3/svc503/orders")))
    });
    g.bench_function("path_table_lookup_handle", |b| {
        b.iter(|| drivers.lookup::<Handle>(black_box("/area3/svc503/orders")))
    });
    let index = parsers.index();
    g.bench_function("mime_exact", |b| {
        b.iter(|| index.find(black_box("application/x-type503")))
    });
    g.bench_function("mime_params_and_wildcard", |b| {
        b.iter(|| index.find(black_box("text/plain; charset=utf-8")))
    });
    g.bench_function("mime_fallback_to_any", |b| {
        b.iter(|| index.find(black_box("image/png")))
    });
    g.finish();
}

criterion_group!(benches, calls, lookups);
criterion_main!(benches);
