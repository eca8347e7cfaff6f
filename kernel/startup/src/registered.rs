// Starts with 10,000 generated module registrations and loads them
// (included by the `registered` binaries).

fn generated_main(reg: &mut bindery::Registrar<'_>) -> Result<(), bindery::BoxError> {
    reg.factory::<u32, _>(bindery::KeyKind::Exact, |_| Ok(0));
    Ok(())
}

include!(concat!(env!("OUT_DIR"), "/registrations.rs"));

fn main() {
    let n = bindery_startup_bench::load();
    if n != 10_000 {
        eprintln!("expected 10000 modules, found {n}");
        std::process::exit(1);
    }
}
