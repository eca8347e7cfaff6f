//! The refusals through the real module table, whichever backend the
//! kernel is built with (`scripts/test` runs these on linkme and with
//! `--features inventory`): two descriptors with one class and name are
//! refused naming both crates, by `Registry::load` and by
//! `linked_modules` (`--list-modules`). One test binary per refusal: the
//! table is the binary's. `table_abi.rs` and `table_main.rs` hold the
//! others; `refusals.rs` checks a listed module missing from it.

use bindery::{ABI_VERSION, BoxError, Error, KeyKind, ModuleDescriptor, ModuleList, Registrar};

fn ok_main(reg: &mut Registrar<'_>) -> Result<(), BoxError> {
    reg.factory::<u32, _>(KeyKind::Exact, |_| Ok(1));
    Ok(())
}

const fn descriptor(name: &'static str, krate: &'static str) -> ModuleDescriptor {
    ModuleDescriptor {
        class: "widget",
        name,
        version: "1.0.0",
        abi: ABI_VERSION,
        description: "test module",
        krate,
        main: ok_main,
        certify_config: "",
    }
}

bindery::__register! { static FIRST = descriptor("twin", "crate_one"); }
bindery::__register! { static SECOND = descriptor("twin", "crate_two"); }
bindery::__register! { static OTHER = descriptor("other", "crate_other"); }

#[test]
fn two_modules_with_one_class_and_name_in_the_table_are_refused_naming_both_crates() {
    static LIST: &[&ModuleDescriptor] = &[&FIRST, &SECOND, &OTHER];
    let e = bindery::Registry::load(ModuleList::new(LIST)).unwrap_err();
    assert!(matches!(e, Error::DuplicateModule { .. }), "{e}");
    let msg = e.report();
    assert!(
        msg.contains("widget.twin") && msg.contains("crate_one") && msg.contains("crate_two"),
        "{} backend: {msg}",
        bindery::REGISTRATION
    );
    let e = bindery::linked_modules(ModuleList::new(LIST)).unwrap_err();
    assert!(matches!(e, Error::DuplicateModule { .. }), "{e}");
}
