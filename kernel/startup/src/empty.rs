// Starts with no module registrations and loads the (empty) table
// (included by the `empty` binaries).

fn main() {
    let n = bindery_startup_bench::load();
    if n != 0 {
        eprintln!("expected no modules, found {n}");
        std::process::exit(1);
    }
}
