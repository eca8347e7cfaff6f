//! The registration backends: how a [`ModuleDescriptor`] declared in a
//! module crate reaches the kernel's module table.
//!
//! Two backends, one chosen when the kernel is built, by cargo feature:
//!
//! - **`linkme`** (the default): every descriptor is an element of one
//!   distributed slice, [`BINDERY_MODULES`](crate::BINDERY_MODULES), which
//!   the linker assembles. Nothing runs before `main`.
//! - **`inventory`**: every descriptor gets a constructor (`.init_array` on
//!   ELF, `.CRT$XCU` on Windows, `__mod_init_func` on Apple, `__wasm_call_ctors`
//!   on WebAssembly) that links it into a list before `main`. For targets
//!   where linkme's slices do not work.
//!
//! With both features on, `inventory` wins and `linkme` is never named, so
//! it is not linked: module crates keep asking for the kernel's default
//! features and change nothing; a binary turns `inventory` on.
//!
//! The module table is read through [`table`]; descriptors are placed in it
//! by [`__register!`](crate::__register), which [`module!`](crate::module)
//! and generated tables (the start-up benchmark) use. Either way the
//! descriptor is a `static` that the main file's list can name: that
//! reference is what keeps a crate, and with it its slice element or its
//! constructor, in the binary. Under `inventory` the constructor is emitted
//! beside the descriptor, in the same Rust module and so in the same
//! codegen unit and object file: the object the list pulls in carries the
//! constructor with it (`server-main/tests/linking.rs` checks this in
//! debug and release, with rust-lld and GNU ld).

use crate::registry::ModuleDescriptor;

/// The registration backend this kernel was built with: `"linkme"` or
/// `"inventory"` (the kernel's cargo features; see the crate's
/// `Cargo.toml`). `bindery --list-modules --json` and the management API's
/// `/v1/system` report it.
#[cfg(not(feature = "inventory"))]
pub const REGISTRATION: &str = "linkme";

/// The registration backend this kernel was built with: `"linkme"` or
/// `"inventory"` (the kernel's cargo features; see the crate's
/// `Cargo.toml`). `bindery --list-modules --json` and the management API's
/// `/v1/system` report it.
#[cfg(feature = "inventory")]
pub const REGISTRATION: &str = "inventory";

#[cfg(not(any(feature = "linkme", feature = "inventory")))]
compile_error!(
    "bindery needs a registration backend: the `linkme` feature (the default) or `inventory`"
);

/// The module table: every module descriptor linked into this binary.
///
/// Use [`module!`](crate::module) to add to it; read it through
/// [`Registry`](crate::Registry). Only with the `linkme` backend (the
/// default).
#[cfg(all(feature = "linkme", not(feature = "inventory")))]
#[linkme::distributed_slice]
pub static BINDERY_MODULES: [ModuleDescriptor];

/// Every module descriptor linked into this binary, in link order.
#[cfg(all(feature = "linkme", not(feature = "inventory")))]
pub(crate) fn table() -> std::slice::Iter<'static, ModuleDescriptor> {
    BINDERY_MODULES.iter()
}

#[cfg(all(feature = "linkme", not(feature = "inventory")))]
#[doc(hidden)]
pub use linkme as __linkme;

/// Places a `static` [`ModuleDescriptor`] in the module table, whichever
/// backend the kernel was built with. [`module!`](crate::module) is the
/// way for a module crate; this is for generated tables and tests.
///
/// ```text
/// bindery::__register! {
///     /// Docs.
///     pub static MODULE = bindery::ModuleDescriptor { ... };
/// }
/// ```
#[cfg(all(feature = "linkme", not(feature = "inventory")))]
#[doc(hidden)]
#[macro_export]
macro_rules! __register {
    ($(#[$attr:meta])* $vis:vis static $name:ident = $value:expr;) => {
        $(#[$attr])*
        #[$crate::__linkme::distributed_slice($crate::BINDERY_MODULES)]
        #[linkme(crate = $crate::__linkme)]
        $vis static $name: $crate::ModuleDescriptor = $value;
    };
}

/// A module table entry under `inventory`: the descriptor's address, so
/// that the table and the main file's list hold the same pointer.
#[cfg(feature = "inventory")]
#[doc(hidden)]
pub struct __Entry(pub &'static ModuleDescriptor);

#[cfg(feature = "inventory")]
inventory::collect!(__Entry);

#[cfg(feature = "inventory")]
#[doc(hidden)]
pub use inventory as __inventory;

/// Every module descriptor linked into this binary (in reverse order of
/// the constructors that ran).
#[cfg(feature = "inventory")]
pub(crate) fn table() -> impl Iterator<Item = &'static ModuleDescriptor> + Clone {
    inventory::iter::<__Entry>.into_iter().map(|e| e.0)
}

/// Places a `static` [`ModuleDescriptor`] in the module table, whichever
/// backend the kernel was built with. [`module!`](crate::module) is the
/// way for a module crate; this is for generated tables and tests.
#[cfg(feature = "inventory")]
#[doc(hidden)]
#[macro_export]
macro_rules! __register {
    ($(#[$attr:meta])* $vis:vis static $name:ident = $value:expr;) => {
        $(#[$attr])*
        $vis static $name: $crate::ModuleDescriptor = $value;
        $crate::__inventory::submit! { $crate::__Entry(&$name) }
    };
}
