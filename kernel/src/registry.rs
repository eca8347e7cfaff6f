//! Link-time registration: module descriptors, the main file's list, and
//! the registrar a module main fills in.
//!
//! A module crate declares itself once with [`module!`](crate::module), which
//! places a `const` [`ModuleDescriptor`] in the module table (a `linkme`
//! distributed slice, [`BINDERY_MODULES`](crate::BINDERY_MODULES), or with
//! the `inventory` feature a list built by constructors; see
//! [`REGISTRATION`](crate::REGISTRATION)). A server's main file names the
//! crates it links with [`modules!`](crate::modules); that list takes the
//! address of every descriptor, so a listed crate cannot be dropped by rustc
//! or the linker, and [`Registry::load`] refuses to go on if a listed module
//! is missing from the table, if two modules share a class and name, or if a
//! module was built for another ABI. Both backends share every check here.
//!
//! Longer than most files here: the descriptor, the two macros, the typed
//! registrar and the load-time checks, which must agree with each other.

use std::hash::BuildHasher;

use rustc_hash::{FxBuildHasher, FxHashMap, FxHashSet};
use std::any::{Any, TypeId};
use std::fmt;
use std::sync::Arc;

use crate::bindings::KeyKind;
use crate::error::{BoxError, Error};
use crate::kernel::InstanceContext;

/// The kernel ABI version. A module built against another version is refused.
///
/// Raised whenever [`ModuleDescriptor`], [`Registrar`] or the factory
/// signature change shape.
pub const ABI_VERSION: u32 = 1;

/// A module's "module main": registers the module's instance factory.
pub type ModuleMain = fn(&mut Registrar<'_>) -> Result<(), BoxError>;

/// What a module says of itself, placed in the module table at link time.
#[derive(Debug)]
pub struct ModuleDescriptor {
    /// The module class: `terminal`, `dispatcher`, `parser`, `driver`, ...
    pub class: &'static str,
    /// The module's name, unique within its class.
    pub name: &'static str,
    /// The module's semver version (its crate's version).
    pub version: &'static str,
    /// The kernel ABI the module was built against.
    pub abi: u32,
    /// One line saying what the module does.
    pub description: &'static str,
    /// The crate that declares the module.
    pub krate: &'static str,
    /// The module main.
    pub main: ModuleMain,
    /// The configuration section (TOML) an instance gets when the module
    /// is certified (`bindery certify`): small limits, and `{scratch}`
    /// where a data directory goes (replaced by a temporary one). Empty:
    /// the defaults.
    pub certify_config: &'static str,
}

impl ModuleDescriptor {
    /// `class.name`, the module's full name.
    pub fn id(&self) -> String {
        format!("{}.{}", self.class, self.name)
    }
}

/// Declares this crate's module: a `pub static MODULE` descriptor placed in
/// the kernel's module table.
///
/// ```text
/// bindery::module! {
///     class: bindery_classes::class::Parser,
///     name: "json",
///     description: "validates JSON bodies",
///     main: module_main,   // fn(&mut Registrar<'_, class::Parser>) -> Result<(), BoxError>
/// }
/// ```
///
/// `class` is a type implementing [`Class`]: the descriptor takes its
/// name, and the module main gets a registrar typed by it, so the class a
/// module declares and the factory it registers cannot disagree.
/// The version and crate name come from Cargo; the ABI from the kernel. An
/// optional `certify_config: "..."` gives the TOML section an instance gets
/// when certified (see [`ModuleDescriptor::certify_config`]).
#[macro_export]
macro_rules! module {
    (
        class: $class:ty,
        name: $name:expr,
        description: $description:expr,
        main: $main:path
        $(, certify_config: $certify:expr)? $(,)?
    ) => {
        $crate::__register! {
        /// This crate's module descriptor, in the kernel's module table.
        pub static MODULE = $crate::ModuleDescriptor {
            class: <$class as $crate::Class>::NAME,
            name: $name,
            version: env!("CARGO_PKG_VERSION"),
            abi: $crate::ABI_VERSION,
            description: $description,
            krate: env!("CARGO_CRATE_NAME"),
            main: {
                fn typed_main(
                    reg: &mut $crate::Registrar<'_>,
                ) -> ::std::result::Result<(), $crate::BoxError> {
                    $main(&mut reg.typed::<$class>()?)
                }
                typed_main
            },
            certify_config: $crate::__or_empty!($($certify)?),
        };
        }
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __or_empty {
    () => {
        ""
    };
    ($e:expr) => {
        $e
    };
}

/// The list of module crates a binary links, as written in its main file.
///
/// ```text
/// let linked = bindery::modules![terminal_http, driver_memqueue, parser_json];
/// ```
///
/// Each name is a crate that used [`module!`](crate::module); the list takes
/// the address of its `MODULE`, which keeps the crate in the binary.
#[macro_export]
macro_rules! modules {
    ($($krate:ident),* $(,)?) => {{
        static LISTED: &[&$crate::ModuleDescriptor] = &[$(&$krate::MODULE),*];
        $crate::ModuleList::new(LISTED)
    }};
}

/// The modules a main file lists; see [`modules!`](crate::modules).
#[derive(Clone, Copy, Debug)]
pub struct ModuleList(&'static [&'static ModuleDescriptor]);

impl ModuleList {
    /// Wraps a list of descriptors. Use [`modules!`](crate::modules).
    pub const fn new(list: &'static [&'static ModuleDescriptor]) -> Self {
        ModuleList(list)
    }

    /// The listed descriptors.
    pub fn descriptors(&self) -> &'static [&'static ModuleDescriptor] {
        self.0
    }
}

/// A factory's output, type-erased: the handle a class's binding table holds.
pub(crate) type Handle = Arc<dyn Any + Send + Sync>;

type BuildFn = dyn Fn(&InstanceContext) -> Result<Handle, BoxError> + Send + Sync;

/// A module's instance factory, as registered by its module main.
pub(crate) struct Factory {
    pub(crate) key_kind: KeyKind,
    pub(crate) handle_type: TypeId,
    pub(crate) handle_type_name: &'static str,
    pub(crate) build: Box<BuildFn>,
    pub(crate) default_keys: &'static [&'static str],
    pub(crate) isolatable: bool,
}

/// A module class: its name, the kind of key its instances bind to, and
/// the handle its binding table holds. A class crate defines one type per
/// class (`bindery_classes::class::Driver`, ...); a module names it in
/// [`module!`](crate::module), and its module main gets a
/// [`Registrar`] typed by it, so the class a module declares and the
/// factory it registers cannot disagree: a driver module that registered a
/// terminal's factory would not compile.
///
/// ```
/// enum Gadget {}
/// impl bindery::Class for Gadget {
///     const NAME: &'static str = "gadget";
///     const KEYS: bindery::KeyKind = bindery::KeyKind::Exact;
///     type Handle = u32;
/// }
/// fn gadget_main(reg: &mut bindery::Registrar<'_, Gadget>) -> Result<(), bindery::BoxError> {
///     reg.register(|_| Ok(7));
///     Ok(())
/// }
/// bindery::module! { class: Gadget, name: "g", description: "a gadget", main: gadget_main }
/// # fn main() { assert_eq!(MODULE.class, "gadget"); }
/// ```
///
/// The same main under another class does not compile:
///
/// ```compile_fail
/// # enum Gadget {}
/// # impl bindery::Class for Gadget {
/// #     const NAME: &'static str = "gadget";
/// #     const KEYS: bindery::KeyKind = bindery::KeyKind::Exact;
/// #     type Handle = u32;
/// # }
/// enum Widget {}
/// impl bindery::Class for Widget {
///     const NAME: &'static str = "widget";
///     const KEYS: bindery::KeyKind = bindery::KeyKind::Path;
///     type Handle = String;
/// }
/// fn gadget_main(reg: &mut bindery::Registrar<'_, Gadget>) -> Result<(), bindery::BoxError> {
///     reg.register(|_| Ok(7));
///     Ok(())
/// }
/// bindery::module! { class: Widget, name: "g", description: "mislabelled", main: gadget_main }
/// # fn main() {}
/// ```
pub trait Class: 'static {
    /// The class name, as tables and `class.name` module ids spell it.
    const NAME: &'static str;
    /// The kind of key instances bind to.
    const KEYS: KeyKind;
    /// What the class's binding table holds for an instance.
    type Handle: Send + Sync + 'static;
}

/// The registrar of a module whose class is not known to the type system:
/// descriptors written by hand (tests, generated tables). [`module!`]
/// always gives a typed one.
///
/// [`module!`]: crate::module
#[derive(Debug)]
pub enum Untyped {}

/// What a module main fills in: the module's instance factory.
///
/// [`module!`](crate::module) hands the module main a `Registrar<'_, C>`
/// for the module's class `C`; the class crate wraps it with typed helpers
/// (for example `bindery_classes::driver::register`).
pub struct Registrar<'a, C = Untyped> {
    module: &'static ModuleDescriptor,
    factory: &'a mut Option<Factory>,
    class: std::marker::PhantomData<fn() -> C>,
}

impl<C: Class> Registrar<'_, C> {
    /// Registers the module's instance factory: every instance is made by
    /// calling `build` with its context; the handle it returns is what the
    /// class's binding table hands out for the instance's keys.
    pub fn register<F>(&mut self, build: F)
    where
        F: Fn(&InstanceContext) -> Result<C::Handle, BoxError> + Send + Sync + 'static,
    {
        let mut untyped = self.untyped();
        untyped.factory::<C::Handle, F>(C::KEYS, build);
    }

    fn untyped(&mut self) -> Registrar<'_, Untyped> {
        Registrar {
            module: self.module,
            factory: &mut *self.factory,
            class: std::marker::PhantomData,
        }
    }
}

impl<'a> Registrar<'a, Untyped> {
    /// The same registrar, typed by the module's class `C` (what
    /// [`module!`](crate::module)'s generated main does). Refused when the
    /// descriptor names another class.
    pub fn typed<C: Class>(&mut self) -> Result<Registrar<'_, C>, BoxError> {
        if self.module.class != C::NAME {
            return Err(format!(
                "module {} declares class {:?} but registers through class {:?}",
                self.module.id(),
                self.module.class,
                C::NAME
            )
            .into());
        }
        Ok(Registrar {
            module: self.module,
            factory: &mut *self.factory,
            class: std::marker::PhantomData,
        })
    }

    /// Registers the module's instance factory, untyped.
    ///
    /// Every instance of the module is made by calling `build` with the
    /// instance's context (its name, its configuration section); the handle it
    /// returns is what the class's binding table hands out for the instance's
    /// keys, whose kind is `keys`. All modules of one class must use the same
    /// key kind and handle type `H`.
    pub fn factory<H, F>(&mut self, keys: KeyKind, build: F)
    where
        H: Send + Sync + 'static,
        F: Fn(&InstanceContext) -> Result<H, BoxError> + Send + Sync + 'static,
    {
        *self.factory = Some(Factory {
            key_kind: keys,
            handle_type: TypeId::of::<H>(),
            handle_type_name: std::any::type_name::<H>(),
            build: Box::new(move |cx| build(cx).map(|h| Arc::new(h) as Handle)),
            default_keys: &[],
            isolatable: false,
        });
    }
}

impl<C> Registrar<'_, C> {
    /// The descriptor of the module being registered.
    pub fn module(&self) -> &'static ModuleDescriptor {
        self.module
    }

    /// The factory honours `isolation = "process"` (it reads
    /// [`InstanceContext::isolation`] and makes a proxy to a host); without
    /// this, the kernel refuses such an instance, naming its class. Call
    /// after [`Registrar::factory`].
    pub fn isolatable(&mut self) {
        if let Some(f) = self.factory.as_mut() {
            f.isolatable = true;
        }
    }

    /// The keys an instance is bound to when its configuration names none
    /// (a parser's MIME types, say). Call after registering the factory.
    pub fn default_keys(&mut self, keys: &'static [&'static str]) {
        if let Some(f) = self.factory.as_mut() {
            f.default_keys = keys;
        }
    }
}

/// A registered module: its descriptor and its factory.
pub(crate) struct Registered {
    pub(crate) descriptor: &'static ModuleDescriptor,
    pub(crate) factory: Factory,
}

/// What every module of one class must agree on.
struct ClassInfo {
    kind: KeyKind,
    handle_type: TypeId,
    handle_type_name: &'static str,
    first: &'static ModuleDescriptor,
}

/// The modules of this binary, checked and registered.
///
/// Every module main runs once at load, to check it; a factory is kept
/// only while an instance is being made (the module main runs again), so a
/// binary with thousands of modules pays for the few it instantiates.
pub struct Registry {
    pub(crate) modules: Vec<&'static ModuleDescriptor>,
    classes: FxHashMap<&'static str, ClassInfo>,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.modules.iter().map(|m| m.id()))
            .finish()
    }
}

/// Checks the table against a list and for duplicates and ABI, without
/// running any module main.
pub(crate) fn check<I>(listed: &[&'static ModuleDescriptor], table: I) -> Result<(), Error>
where
    I: Iterator<Item = &'static ModuleDescriptor> + Clone,
{
    check_listed(listed, table.clone())?;
    let mut seen: FxHashMap<(&str, &str), &ModuleDescriptor> = FxHashMap::default();
    seen.reserve(table.size_hint().0);
    for d in table {
        check_one(d, seen.insert((d.class, d.name), d))?;
    }
    Ok(())
}

/// Every listed descriptor must be in the table.
fn check_listed<I>(listed: &[&'static ModuleDescriptor], table: I) -> Result<(), Error>
where
    I: Iterator<Item = &'static ModuleDescriptor> + Clone,
{
    let present: Box<dyn Fn(&ModuleDescriptor) -> bool> = if listed.len() < 16 {
        Box::new(move |want| table.clone().any(|have| std::ptr::eq(have, want)))
    } else {
        let set: FxHashSet<*const ModuleDescriptor> = table.map(|d| d as *const _).collect();
        Box::new(move |want| set.contains(&(want as *const _)))
    };
    match listed.iter().find(|want| !present(want)) {
        Some(want) => Err(Error::ModuleMissing {
            module: want.id(),
            krate: want.krate,
        }),
        None => Ok(()),
    }
}

/// Runs a module main and returns the factory it registered.
fn run_main(descriptor: &'static ModuleDescriptor) -> Result<Factory, Error> {
    let mut factory = None;
    let mut registrar = Registrar {
        module: descriptor,
        factory: &mut factory,
        class: std::marker::PhantomData,
    };
    (descriptor.main)(&mut registrar).map_err(|cause| Error::ModuleMain {
        module: descriptor.id(),
        cause: Arc::new(cause),
    })?;
    factory.ok_or_else(|| Error::ModuleMain {
        module: descriptor.id(),
        cause: Arc::new("the module main registered no factory".into()),
    })
}

/// Checks one descriptor's ABI, and that no other claimed its class and name.
fn check_one(d: &ModuleDescriptor, earlier: Option<&ModuleDescriptor>) -> Result<(), Error> {
    if let Some(first) = earlier {
        return Err(Error::DuplicateModule {
            module: d.id(),
            first: first.krate,
            second: d.krate,
        });
    }
    if d.abi != ABI_VERSION {
        return Err(Error::AbiMismatch {
            module: d.id(),
            krate: d.krate,
            found: d.abi,
            expected: ABI_VERSION,
        });
    }
    Ok(())
}

impl Registry {
    /// Loads every linked module: checks the main file's list against the
    /// module table, then runs each module main.
    pub fn load(list: ModuleList) -> Result<Registry, Error> {
        let table = crate::backend::table();
        check_listed(list.descriptors(), table.clone())?;
        Self::register(table)
    }

    /// Like [`Registry::load`] over an explicit slice (tests use this to check
    /// the refusals).
    pub fn load_from(
        listed: &[&'static ModuleDescriptor],
        slice: &'static [ModuleDescriptor],
    ) -> Result<Registry, Error> {
        check_listed(listed, slice.iter())?;
        Self::register(slice.iter())
    }

    /// Loads exactly `modules`, whether or not they are in the link-time
    /// table: a conformance suite uses this to put a module under test
    /// beside test doubles.
    pub fn of(modules: &[&'static ModuleDescriptor]) -> Result<Registry, Error> {
        Self::register(modules.iter().copied())
    }

    fn register(slice: impl Iterator<Item = &'static ModuleDescriptor>) -> Result<Registry, Error> {
        let mut modules: Vec<&'static ModuleDescriptor> = Vec::with_capacity(slice.size_hint().0);
        // Hashes of class and name; a repeated hash is checked exactly.
        let mut seen: FxHashSet<u64> = FxHashSet::default();
        seen.reserve(slice.size_hint().0);
        let mut classes: FxHashMap<&'static str, ClassInfo> = FxHashMap::default();
        for descriptor in slice {
            let earlier =
                if seen.insert(FxBuildHasher.hash_one((descriptor.class, descriptor.name))) {
                    None
                } else {
                    modules
                        .iter()
                        .copied()
                        .find(|m| m.class == descriptor.class && m.name == descriptor.name)
                };
            check_one(descriptor, earlier)?;
            let factory = run_main(descriptor)?;
            let class = classes.entry(descriptor.class).or_insert(ClassInfo {
                kind: factory.key_kind,
                handle_type: factory.handle_type,
                handle_type_name: factory.handle_type_name,
                first: descriptor,
            });
            if class.kind != factory.key_kind || class.handle_type != factory.handle_type {
                return Err(Error::ModuleMain {
                    module: descriptor.id(),
                    cause: Arc::new(
                        format!(
                            "its factory makes {} keyed by {:?}, but {} of the same class makes {} keyed by {:?}",
                            factory.handle_type_name,
                            factory.key_kind,
                            class.first.id(),
                            class.handle_type_name,
                            class.kind
                        )
                        .into(),
                    ),
                });
            }
            modules.push(descriptor);
        }
        Ok(Registry { modules, classes })
    }

    /// Every registered module's descriptor, sorted by class and name.
    pub fn descriptors(&self) -> impl Iterator<Item = &'static ModuleDescriptor> + '_ {
        let mut all: Vec<_> = self.modules.clone();
        all.sort_unstable_by_key(|d| (d.class, d.name));
        all.into_iter()
    }

    /// How many modules are registered.
    pub fn len(&self) -> usize {
        self.modules.len()
    }

    /// Whether no module is registered.
    pub fn is_empty(&self) -> bool {
        self.modules.is_empty()
    }

    /// The descriptor of `class.name`, if linked.
    pub fn get(&self, id: &str) -> Option<&'static ModuleDescriptor> {
        let (class, name) = id.split_once('.')?;
        self.modules
            .iter()
            .copied()
            .find(|m| m.class == class && m.name == name)
    }

    /// How `class`'s table matches keys, if any module is of that class.
    pub(crate) fn key_kind(&self, class: &str) -> Option<KeyKind> {
        self.classes.get(class).map(|c| c.kind)
    }

    /// The module `id` and a fresh factory from its main.
    pub(crate) fn registered(&self, id: &str) -> Option<Result<Registered, Error>> {
        let descriptor = self.get(id)?;
        Some(run_main(descriptor).map(|factory| Registered {
            descriptor,
            factory,
        }))
    }
}
