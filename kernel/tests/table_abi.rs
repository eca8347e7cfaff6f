//! The refusals through the real module table (see `table_duplicate.rs`):
//! a module built for another ABI is refused naming its crate.

use bindery::{ABI_VERSION, BoxError, Error, KeyKind, ModuleDescriptor, ModuleList, Registrar};

fn ok_main(reg: &mut Registrar<'_>) -> Result<(), BoxError> {
    reg.factory::<u32, _>(KeyKind::Exact, |_| Ok(1));
    Ok(())
}

bindery::__register! {
    static OLD = ModuleDescriptor {
        class: "widget",
        name: "old",
        version: "1.0.0",
        abi: ABI_VERSION + 1,
        description: "test module",
        krate: "crate_old",
        main: ok_main,
        certify_config: "",
    };
}

#[test]
fn a_foreign_abi_in_the_table_is_refused_naming_the_crate() {
    static LIST: &[&ModuleDescriptor] = &[&OLD];
    for e in [
        bindery::Registry::load(ModuleList::new(LIST)).unwrap_err(),
        bindery::linked_modules(ModuleList::new(LIST)).unwrap_err(),
    ] {
        assert!(matches!(e, Error::AbiMismatch { .. }), "{e}");
        let msg = e.report();
        assert!(
            msg.contains("widget.old") && msg.contains("crate_old"),
            "{msg}"
        );
    }
}
