//! The kernel refuses to start on a broken module table: a listed module
//! missing, two modules with one class and name, a foreign ABI, a failing
//! module main; and on configuration that names what is not there.

use bindery::{
    ABI_VERSION, BoxError, Config, Error, Kernel, KeyKind, ModuleDescriptor, ModuleList, Registrar,
    Registry,
};

fn ok_main(reg: &mut Registrar<'_>) -> Result<(), BoxError> {
    reg.factory::<u32, _>(KeyKind::Exact, |cx| {
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct C {
            #[serde(default)]
            n: u32,
        }
        Ok(cx.config().parse::<C>()?.n)
    });
    Ok(())
}

fn failing_main(_: &mut Registrar<'_>) -> Result<(), BoxError> {
    Err("no licence key".into())
}

fn silent_main(_: &mut Registrar<'_>) -> Result<(), BoxError> {
    Ok(())
}

fn other_kind_main(reg: &mut Registrar<'_>) -> Result<(), BoxError> {
    reg.factory::<u32, _>(KeyKind::Path, |_| Ok(0));
    Ok(())
}

const fn descriptor(
    class: &'static str,
    name: &'static str,
    krate: &'static str,
) -> ModuleDescriptor {
    ModuleDescriptor {
        class,
        name,
        version: "1.0.0",
        abi: ABI_VERSION,
        description: "test module",
        krate,
        main: ok_main,
        certify_config: "",
    }
}

static GOOD: [ModuleDescriptor; 2] = [
    descriptor("widget", "a", "crate_a"),
    descriptor("widget", "b", "crate_b"),
];

#[test]
fn a_good_table_loads_and_builds_instances() {
    let registry = Registry::load_from(&[&GOOD[0]], &GOOD).unwrap();
    let ids: Vec<String> = registry.descriptors().map(|d| d.id()).collect();
    assert_eq!(ids, ["widget.a", "widget.b"]);
    let config = Config::parse(
        "t.toml",
        "[instances.one]\nmodule = \"widget.a\"\nbind = [\"k1\"]\nconfig = { n = 7 }\n\
         [instances.two]\nmodule = \"widget.b\"\nbind = [\"k2\", \"k3\"]\n",
    )
    .unwrap();
    let kernel = Kernel::build_with(registry, &config, Some(1)).unwrap();
    let rt = kernel.runtime();
    assert_eq!(rt.lookup::<u32>("widget", "k1"), Some(7));
    assert_eq!(rt.lookup::<u32>("widget", "k3"), Some(0));
    assert_eq!(rt.lookup::<u32>("widget", "k4"), None);
    let intro = rt.introspect();
    assert_eq!(intro.modules.len(), 2);
    assert_eq!(intro.instances.len(), 2);
    assert_eq!(intro.bindings.len(), 3);
    let json = serde_json::to_string(&intro).unwrap();
    assert!(json.contains("\"crate\":\"crate_a\""), "{json}");
}

#[test]
fn a_listed_module_missing_from_the_table_is_refused() {
    static ELSEWHERE: ModuleDescriptor = descriptor("widget", "c", "crate_c");
    let e = Registry::load_from(&[&ELSEWHERE], &GOOD).unwrap_err();
    assert!(matches!(e, Error::ModuleMissing { .. }), "{e}");
    let msg = e.report();
    assert!(msg.contains("widget.c") && msg.contains("crate_c"), "{msg}");
    // And through the real link-time table, which does not hold it either.
    static LIST: &[&ModuleDescriptor] = &[&ELSEWHERE];
    let e = Registry::load(ModuleList::new(LIST)).unwrap_err();
    assert!(matches!(e, Error::ModuleMissing { .. }), "{e}");
}

#[test]
fn two_modules_with_one_class_and_name_are_refused_naming_both_crates() {
    static DUP: [ModuleDescriptor; 2] = [
        descriptor("widget", "a", "crate_one"),
        descriptor("widget", "a", "crate_two"),
    ];
    let msg = Registry::load_from(&[], &DUP).unwrap_err().report();
    assert!(
        msg.contains("widget.a") && msg.contains("crate_one") && msg.contains("crate_two"),
        "{msg}"
    );
}

#[test]
fn a_foreign_abi_is_refused() {
    static OLD: [ModuleDescriptor; 1] = [ModuleDescriptor {
        abi: ABI_VERSION + 1,
        ..descriptor("widget", "old", "crate_old")
    }];
    let e = Registry::load_from(&[], &OLD).unwrap_err();
    assert!(matches!(e, Error::AbiMismatch { .. }), "{e}");
    assert!(e.report().contains("crate_old"));
}

#[test]
fn a_failing_module_main_is_refused_naming_the_module_and_cause() {
    static BAD: [ModuleDescriptor; 2] = [
        descriptor("widget", "a", "crate_a"),
        ModuleDescriptor {
            main: failing_main,
            ..descriptor("widget", "broken", "crate_broken")
        },
    ];
    let msg = Registry::load_from(&[], &BAD).unwrap_err().report();
    assert!(
        msg.contains("widget.broken") && msg.contains("no licence key"),
        "{msg}"
    );

    static SILENT: [ModuleDescriptor; 1] = [ModuleDescriptor {
        main: silent_main,
        ..descriptor("widget", "silent", "crate_s")
    }];
    let msg = Registry::load_from(&[], &SILENT).unwrap_err().report();
    assert!(
        msg.contains("widget.silent") && msg.contains("no factory"),
        "{msg}"
    );

    static MIXED: [ModuleDescriptor; 2] = [
        descriptor("widget", "a", "crate_a"),
        ModuleDescriptor {
            main: other_kind_main,
            ..descriptor("widget", "z", "crate_z")
        },
    ];
    let msg = Registry::load_from(&[], &MIXED).unwrap_err().report();
    assert!(
        msg.contains("widget.z") && msg.contains("widget.a"),
        "{msg}"
    );
}

/// A class, as a class crate defines one.
enum Gadget {}
impl bindery::Class for Gadget {
    const NAME: &'static str = "gadget";
    const KEYS: KeyKind = KeyKind::Exact;
    type Handle = u32;
}

fn gadget_main(reg: &mut Registrar<'_>) -> Result<(), BoxError> {
    reg.typed::<Gadget>()?.register(|_| Ok(1));
    Ok(())
}

#[test]
fn a_module_registering_through_another_class_is_refused() {
    // What `module!` makes impossible to compile, a hand-written
    // descriptor can still say: refused at load, naming both classes.
    static WRONG: [ModuleDescriptor; 1] = [ModuleDescriptor {
        main: gadget_main,
        ..descriptor("widget", "mislabelled", "crate_m")
    }];
    let msg = Registry::load_from(&[], &WRONG).unwrap_err().report();
    assert!(
        msg.contains("widget.mislabelled") && msg.contains("\"gadget\""),
        "{msg}"
    );
    static RIGHT: [ModuleDescriptor; 1] = [ModuleDescriptor {
        main: gadget_main,
        ..descriptor("gadget", "fine", "crate_g")
    }];
    Registry::load_from(&[], &RIGHT).unwrap();
}

#[test]
fn configuration_errors_name_the_instance_and_field() {
    let cases = [
        ("[instances.x]\nmodule = \"widget.nope\"\n", "widget.nope"),
        (
            "[instances.x]\nmodule = \"widget.a\"\nconfig = { m = 1 }\n",
            "`m`",
        ),
        (
            "[instances.x]\nmodule = \"widget.a\"\nbind = [\"k\"]\n[instances.y]\nmodule = \"widget.b\"\nbind = [\"k\"]\n",
            "\"x\"",
        ),
    ];
    for (text, needle) in cases {
        let registry = Registry::load_from(&[], &GOOD).unwrap();
        let config = Config::parse("t.toml", text).unwrap();
        let msg = Kernel::build_with(registry, &config, Some(1))
            .unwrap_err()
            .report();
        assert!(msg.contains(needle), "{text}: {msg}");
    }
}

#[test]
fn a_failing_start_hook_names_the_instance() {
    fn hooked_main(reg: &mut Registrar<'_>) -> Result<(), BoxError> {
        reg.factory::<u32, _>(KeyKind::Exact, |cx| {
            cx.on_start(|_| Err("port in use".into()));
            Ok(1)
        });
        Ok(())
    }
    static HOOKED: [ModuleDescriptor; 1] = [ModuleDescriptor {
        main: hooked_main,
        ..descriptor("widget", "h", "crate_h")
    }];
    let registry = Registry::load_from(&[], &HOOKED).unwrap();
    let config = Config::parse("t.toml", "[instances.hx]\nmodule = \"widget.h\"\n").unwrap();
    let mut kernel = Kernel::build_with(registry, &config, Some(2)).unwrap();
    let msg = kernel.start().unwrap_err().report();
    assert!(
        msg.contains("\"hx\"") && msg.contains("port in use"),
        "{msg}"
    );
}

fn path_main(reg: &mut Registrar<'_>) -> Result<(), BoxError> {
    reg.factory::<u32, _>(KeyKind::Path, |_| Ok(1));
    Ok(())
}

fn route_main(reg: &mut Registrar<'_>) -> Result<(), BoxError> {
    reg.factory::<u32, _>(KeyKind::Route, |_| Ok(2));
    Ok(())
}

static STORE: ModuleDescriptor = ModuleDescriptor {
    main: path_main,
    ..descriptor("store", "s", "crate_s")
};
static ENDPOINT: ModuleDescriptor = ModuleDescriptor {
    main: route_main,
    ..descriptor("endpoint", "e", "crate_e")
};

#[test]
fn a_route_over_a_path_is_refused_either_way_round_naming_both() {
    let registry = || Registry::of(&[&STORE, &ENDPOINT]).unwrap();
    // At start: the route comes after the path it would shadow.
    let text = "[instances.box]\nmodule = \"store.s\"\nbind = [\"/queues/\"]\n\
                [instances.api]\nmodule = \"endpoint.e\"\nbind = [\"GET /queues/{name}\"]\n";
    let e = match Kernel::build_with(registry(), &Config::parse("t", text).unwrap(), Some(1)) {
        Ok(_) => panic!("a route over a driver's path was bound"),
        Err(e) => e.report(),
    };
    assert!(
        e.contains("GET /queues/{name}") && e.contains("/queues/") && e.contains("\"box\""),
        "{e}"
    );
    // At run time, both ways round; unrelated keys bind.
    let text = "[instances.box]\nmodule = \"store.s\"\nbind = [\"/queues/\"]\n\
                [instances.api]\nmodule = \"endpoint.e\"\nbind = [\"GET /pkg/\"]\n";
    let kernel =
        Kernel::build_with(registry(), &Config::parse("t", text).unwrap(), Some(1)).unwrap();
    let rt = kernel.runtime();
    let e = rt.bind("api", "POST /queues/x").unwrap_err().report();
    assert!(e.contains("\"box\"") && e.contains("/queues/"), "{e}");
    let e = rt.bind("box", "/pkg/list").unwrap_err().report();
    assert!(e.contains("\"api\"") && e.contains("GET /pkg/"), "{e}");
    rt.bind("api", "GET /status").unwrap();
    rt.bind("box", "/topics/").unwrap();
    assert_eq!(
        rt.table("endpoint").unwrap().lookup::<u32>("GET /pkg/a/b"),
        Some(2)
    );
}
