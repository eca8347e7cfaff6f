//! The refusals through the real module table (see `table_duplicate.rs`):
//! a failing module main halts the load naming the module and its cause;
//! `linked_modules` (`--list-modules`) runs no module main and lists it.

use bindery::{ABI_VERSION, BoxError, Error, ModuleDescriptor, ModuleList, Registrar};

fn failing_main(_: &mut Registrar<'_>) -> Result<(), BoxError> {
    Err("no licence key".into())
}

bindery::__register! {
    static BROKEN = ModuleDescriptor {
        class: "widget",
        name: "broken",
        version: "1.0.0",
        abi: ABI_VERSION,
        description: "test module",
        krate: "crate_broken",
        main: failing_main,
        certify_config: "",
    };
}

#[test]
fn a_failing_module_main_in_the_table_is_refused_naming_the_module() {
    static LIST: &[&ModuleDescriptor] = &[&BROKEN];
    let e = bindery::Registry::load(ModuleList::new(LIST)).unwrap_err();
    assert!(matches!(e, Error::ModuleMain { .. }), "{e}");
    let msg = e.report();
    assert!(
        msg.contains("widget.broken") && msg.contains("no licence key"),
        "{msg}"
    );
    let listed = bindery::linked_modules(ModuleList::new(LIST)).unwrap();
    assert_eq!(listed.len(), 1);
    assert!(std::ptr::eq(listed[0], &BROKEN));
}
