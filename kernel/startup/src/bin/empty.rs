//! Starts with no module registrations and loads the (empty) table.

fn main() {
    let n = bindery_startup_bench::load();
    if n != 0 {
        eprintln!("expected no modules, found {n}");
        std::process::exit(1);
    }
}
