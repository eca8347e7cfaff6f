//! Instances have a life of their own: made, started, stopped (still
//! bound), started again as a new incarnation, restarted, removed (then
//! unbound); created, bound and unbound while the server runs; and every
//! failure between leaves the instance in a state that says why.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bindery::{
    ABI_VERSION, BoxError, Config, Error, Kernel, KeyKind, ModuleDescriptor, Registrar, Registry,
    State,
};

/// What happened to each instance, in order: `make 1`, `start 1`,
/// `stop 1` (with the incarnation number).
static EVENTS: Mutex<Vec<(String, String)>> = Mutex::new(Vec::new());
/// Incarnations made per instance name.
static MADE: Mutex<Option<HashMap<String, u32>>> = Mutex::new(None);
/// Deadlines stop hooks were given, per instance.
static DEADLINES: Mutex<Vec<(String, Instant)>> = Mutex::new(Vec::new());

fn events(instance: &str) -> Vec<String> {
    EVENTS
        .lock()
        .unwrap()
        .iter()
        .filter(|(i, _)| i == instance)
        .map(|(_, e)| e.clone())
        .collect()
}

fn log(instance: &str, event: String) {
    EVENTS.lock().unwrap().push((instance.to_owned(), event));
}

/// The handle: which incarnation of which instance.
#[derive(Debug, PartialEq)]
struct Widget {
    instance: String,
    incarnation: u32,
    /// The keys its factory was given.
    keys: Vec<String>,
}

fn widget_main(reg: &mut Registrar<'_>) -> Result<(), BoxError> {
    reg.factory::<Arc<Widget>, _>(KeyKind::Exact, |cx| {
        #[derive(serde::Deserialize, Default)]
        #[serde(deny_unknown_fields, default)]
        struct C {
            /// The incarnation whose start hook fails.
            fail_start: Option<u32>,
            /// The incarnation whose factory fails.
            fail_make: Option<u32>,
        }
        let c: C = cx.config().parse()?;
        let name = cx.name().to_owned();
        let n = {
            let mut made = MADE.lock().unwrap();
            let n = made
                .get_or_insert_with(HashMap::new)
                .entry(name.clone())
                .or_default();
            *n += 1;
            *n
        };
        if c.fail_make == Some(n) {
            return Err(format!("incarnation {n} cannot be made").into());
        }
        log(&name, format!("make {n}"));
        let (a, b) = (name.clone(), name.clone());
        cx.on_start(move |_| {
            if c.fail_start == Some(n) {
                return Err(format!("incarnation {n} cannot start").into());
            }
            log(&a, format!("start {n}"));
            Ok(())
        });
        cx.on_stop(move |deadline| {
            DEADLINES.lock().unwrap().push((b.clone(), deadline));
            log(&b, format!("stop {n}"));
        });
        let r = name.clone();
        cx.on_reload(move || log(&r, format!("reload {n}")));
        Ok(Arc::new(Widget {
            instance: name,
            incarnation: n,
            keys: cx.keys().to_vec(),
        }))
    });
    Ok(())
}

static MODULES: [ModuleDescriptor; 1] = [ModuleDescriptor {
    class: "widget",
    name: "w",
    version: "1.0.0",
    abi: ABI_VERSION,
    description: "a widget that logs its life",
    krate: "lifecycle_test",
    main: widget_main,
    certify_config: "",
}];

fn kernel(config: &str) -> Kernel {
    let registry = Registry::load_from(&[], &MODULES).unwrap();
    let config = Config::parse("t.toml", config).unwrap();
    Kernel::build_with(registry, &config, Some(1)).unwrap()
}

fn spec(text: &str) -> bindery::InstanceSpec {
    Config::parse("request", text).unwrap().instances.remove(0)
}

fn incarnation(k: &Kernel, key: &str) -> Option<u32> {
    k.runtime()
        .lookup::<Arc<Widget>>("widget", key)
        .map(|w| w.incarnation)
}

#[test]
fn an_instance_goes_through_its_states() {
    let mut k = kernel("[instances.life]\nmodule = \"widget.w\"\nbind = [\"life-key\"]\n");
    let rt = k.runtime().clone();
    let info = rt.instance("life").unwrap();
    assert_eq!(
        (info.state, info.restarts, info.started_at),
        (State::Created, 0, None)
    );
    k.start().unwrap();
    let info = rt.instance("life").unwrap();
    assert_eq!(info.state, State::Running);
    assert!(info.started_at.is_some());
    assert_eq!(incarnation(&k, "life-key"), Some(1));

    // Stopped: still bound to the stopped incarnation; stopping again is a
    // no-op.
    let generation = rt.table("widget").unwrap().generation();
    assert_eq!(
        rt.stop("life", Duration::from_secs(3)).unwrap().state,
        State::Stopped
    );
    rt.stop("life", Duration::from_secs(3)).unwrap();
    assert_eq!(incarnation(&k, "life-key"), Some(1));

    // Started again: a new incarnation, rebound, and the table's
    // generation moved so cached handles are dropped.
    let info = rt.start("life").unwrap();
    assert_eq!((info.state, info.restarts), (State::Running, 1));
    assert_eq!(incarnation(&k, "life-key"), Some(2));
    assert!(rt.table("widget").unwrap().generation() > generation);
    rt.start("life").unwrap();
    assert_eq!(
        incarnation(&k, "life-key"),
        Some(2),
        "starting a running instance is a no-op"
    );

    let info = rt.restart("life", Duration::from_secs(1)).unwrap();
    assert_eq!((info.state, info.restarts), (State::Running, 2));
    assert_eq!(incarnation(&k, "life-key"), Some(3));

    rt.remove("life", Duration::from_secs(1)).unwrap();
    assert_eq!(incarnation(&k, "life-key"), None, "removed: unbound");
    assert!(rt.instance("life").is_none());
    assert!(matches!(rt.start("life"), Err(Error::NoInstance { .. })));
    assert_eq!(
        events("life"),
        [
            "make 1", "start 1", "stop 1", "make 2", "start 2", "stop 2", "make 3", "start 3",
            "stop 3"
        ]
    );
    k.shutdown();
    assert_eq!(
        events("life").len(),
        9,
        "a removed instance is not stopped twice"
    );
}

#[test]
fn stop_hooks_get_the_deadline() {
    let mut k = kernel("[instances.dl]\nmodule = \"widget.w\"\nbind = [\"dl-key\"]\n");
    k.start().unwrap();
    let before = Instant::now();
    k.runtime().stop("dl", Duration::from_secs(7)).unwrap();
    let deadline = DEADLINES
        .lock()
        .unwrap()
        .iter()
        .find(|(i, _)| i == "dl")
        .map(|(_, d)| *d)
        .unwrap();
    assert!(deadline >= before + Duration::from_secs(7));
    assert!(deadline <= Instant::now() + Duration::from_secs(7));
}

#[test]
fn instances_are_created_bound_and_unbound_while_the_server_runs() {
    let mut k = kernel("[instances.base]\nmodule = \"widget.w\"\nbind = [\"base-key\"]\n");
    k.start().unwrap();
    let rt = k.runtime().clone();
    let info = rt
        .create(spec(
            "[instances.fresh]\nmodule = \"widget.w\"\nbind = [\"fresh-key\"]\n",
        ))
        .unwrap();
    assert_eq!(
        info.state,
        State::Running,
        "created at run time: serves at once"
    );
    assert_eq!(events("fresh"), ["make 1", "start 1"]);
    assert_eq!(incarnation(&k, "fresh-key"), Some(1));

    let e = rt
        .create(spec("[instances.fresh]\nmodule = \"widget.w\"\n"))
        .unwrap_err();
    assert!(matches!(e, Error::InstanceExists { .. }), "{e}");
    let e = rt
        .create(spec("[instances.typo]\nmodule = \"widget.x\"\n"))
        .unwrap_err();
    assert!(e.to_string().contains("\"widget.x\" is not linked"), "{e}");

    // A key held by another instance is refused, naming the holder; the
    // new instance leaves nothing behind.
    let e = rt
        .create(spec(
            "[instances.greedy]\nmodule = \"widget.w\"\nbind = [\"g1\", \"base-key\"]\n",
        ))
        .unwrap_err();
    assert!(e.to_string().contains("\"base\""), "{e}");
    assert!(rt.instance("greedy").is_none());
    assert_eq!(incarnation(&k, "g1"), None);
    assert_eq!(events("greedy"), ["make 1", "stop 1"]);

    let info = rt.bind("fresh", "second-key").unwrap();
    assert_eq!(info.bind, ["fresh-key", "second-key"]);
    assert_eq!(incarnation(&k, "second-key"), Some(1));
    let e = rt.bind("fresh", "base-key").unwrap_err();
    assert!(e.to_string().contains("\"base\""), "{e}");
    rt.unbind("fresh", "fresh-key").unwrap();
    assert_eq!(incarnation(&k, "fresh-key"), None);
    assert!(rt.unbind("fresh", "base-key").is_err(), "only its own keys");
    // A restart keeps the keys as they are now.
    rt.restart("fresh", Duration::from_secs(1)).unwrap();
    assert_eq!(incarnation(&k, "second-key"), Some(2));
    let made = k
        .runtime()
        .lookup::<Arc<Widget>>("widget", "second-key")
        .unwrap();
    assert_eq!(
        made.keys,
        ["second-key"],
        "the new incarnation is made with the keys of now"
    );
    assert_eq!(incarnation(&k, "fresh-key"), None);

    // A created instance whose start fails is not kept.
    let e = rt
        .create(spec(
            "[instances.dud]\nmodule = \"widget.w\"\nbind = [\"dud-key\"]\nconfig = { fail_start = 1 }\n",
        ))
        .unwrap_err();
    assert!(e.report().contains("cannot start"), "{e}");
    assert!(
        std::error::Error::source(&e).is_some(),
        "the cause comes from source()"
    );
    assert!(rt.instance("dud").is_none());
    assert_eq!(incarnation(&k, "dud-key"), None);
}

#[test]
fn a_failed_start_says_why_and_keeps_the_binding() {
    let mut k = kernel(
        "[instances.flaky]\nmodule = \"widget.w\"\nbind = [\"flaky-key\"]\n\
         config = { fail_start = 2, fail_make = 3 }\n",
    );
    k.start().unwrap();
    let rt = k.runtime().clone();
    let e = rt.restart("flaky", Duration::from_secs(1)).unwrap_err();
    assert!(e.report().contains("incarnation 2 cannot start"), "{e}");
    let info = rt.instance("flaky").unwrap();
    assert_eq!(info.state, State::Failed);
    assert!(info.last_error.unwrap().contains("cannot start"));
    // The failed incarnation's stop hooks ran to undo its start.
    assert_eq!(
        events("flaky"),
        ["make 1", "start 1", "stop 1", "make 2", "stop 2"]
    );
    assert!(
        incarnation(&k, "flaky-key").is_some(),
        "still bound: 503, not 404"
    );

    // Its factory fails next: still failed, with that reason.
    let e = rt.start("flaky").unwrap_err();
    assert!(e.report().contains("incarnation 3 cannot be made"), "{e}");
    assert_eq!(rt.instance("flaky").unwrap().state, State::Failed);

    // Then it starts.
    let info = rt.start("flaky").unwrap();
    assert_eq!(info.state, State::Running);
    assert_eq!(info.last_error, None);
    assert_eq!(incarnation(&k, "flaky-key"), Some(4));
}

#[test]
fn a_reload_applies_the_difference_or_nothing() {
    let mut k = kernel(
        "[instances.r-same]\nmodule = \"widget.w\"\nbind = [\"r-same\"]\n\
         [instances.r-change]\nmodule = \"widget.w\"\nbind = [\"r-change\"]\n\
         [instances.r-gone]\nmodule = \"widget.w\"\nbind = [\"r-gone\"]\n",
    );
    k.start().unwrap();
    let rt = k.runtime().clone();
    let version = rt.config_version();
    // The effective configuration starts the same server.
    let text = rt.effective_config();
    let again = Config::parse("effective", &text).unwrap();
    assert_eq!(again.instances.len(), 3, "{text}");

    let next = Config::parse(
        "next.toml",
        "[instances.r-same]\nmodule = \"widget.w\"\nbind = [\"r-same\"]\n\
         [instances.r-change]\nmodule = \"widget.w\"\nbind = [\"r-change\"]\nconfig = { fail_start = 99 }\n\
         [instances.r-new]\nmodule = \"widget.w\"\nbind = [\"r-new\"]\n",
    )
    .unwrap();
    let report = rt.reload(&next).unwrap();
    assert_eq!(report.unchanged, ["r-same"]);
    assert_eq!(report.changed, ["r-change"]);
    assert_eq!(report.removed, ["r-gone"]);
    assert_eq!(report.added, ["r-new"]);
    assert_eq!(incarnation(&k, "r-same"), Some(1), "unchanged: untouched");
    assert_eq!(incarnation(&k, "r-change"), Some(2), "changed: made anew");
    assert_eq!(incarnation(&k, "r-gone"), None);
    assert_eq!(incarnation(&k, "r-new"), Some(1));
    // Only the instance kept untouched is told to re-read its files.
    assert_eq!(events("r-same"), ["make 1", "start 1", "reload 1"]);
    assert!(!events("r-change").iter().any(|e| e.starts_with("reload")));
    assert!(!events("r-new").iter().any(|e| e.starts_with("reload")));
    assert_ne!(rt.config_version(), version);

    // A reload that fails half-way changes nothing: the new instance
    // cannot be made, so what was removed and changed comes back.
    let version = rt.config_version();
    let before = rt.effective_config();
    let bad = Config::parse(
        "bad.toml",
        "[instances.r-same]\nmodule = \"widget.w\"\nbind = [\"r-same\"]\n\
         [instances.r-new]\nmodule = \"widget.w\"\nbind = [\"r-new2\"]\n\
         [instances.r-dud]\nmodule = \"widget.w\"\nbind = [\"r-dud\"]\nconfig = { fail_make = 1 }\n",
    )
    .unwrap();
    let e = rt.reload(&bad).unwrap_err();
    assert!(e.report().contains("cannot be made"), "{e}");
    assert_eq!(rt.effective_config(), before);
    assert_eq!(rt.config_version(), version);
    assert_eq!(incarnation(&k, "r-same"), Some(1));
    assert!(incarnation(&k, "r-change").is_some() && incarnation(&k, "r-new").is_some());
    assert_eq!(incarnation(&k, "r-dud"), None);
    assert_eq!(rt.instance("r-change").unwrap().state, State::Running);
    // A reload that failed re-read nothing.
    assert_eq!(events("r-same"), ["make 1", "start 1", "reload 1"]);

    // A key bound twice, or a module not linked, is refused before
    // anything is touched.
    let twice = Config::parse(
        "twice.toml",
        "[instances.a2]\nmodule = \"widget.w\"\nbind = [\"k\"]\n[instances.b2]\nmodule = \"widget.w\"\nbind = [\"k\"]\n",
    )
    .unwrap();
    let e = rt.reload(&twice).unwrap_err();
    assert!(e.to_string().contains("both bind it"), "{e}");
    let unknown = Config::parse("u.toml", "[instances.u]\nmodule = \"widget.nope\"\n").unwrap();
    assert!(matches!(rt.reload(&unknown), Err(Error::NotLinked { .. })));
    assert_eq!(rt.effective_config(), before);
    assert_eq!(incarnation(&k, "r-same"), Some(1));
}

#[test]
fn a_reload_can_swap_keys_between_instances() {
    let mut k = kernel(
        "[instances.swap-a]\nmodule = \"widget.w\"\nbind = [\"swap-1\"]\n\
         [instances.swap-b]\nmodule = \"widget.w\"\nbind = [\"swap-2\"]\n",
    );
    k.start().unwrap();
    let rt = k.runtime().clone();
    let swapped = Config::parse(
        "swapped.toml",
        "[instances.swap-a]\nmodule = \"widget.w\"\nbind = [\"swap-2\"]\n\
         [instances.swap-b]\nmodule = \"widget.w\"\nbind = [\"swap-1\"]\n",
    )
    .unwrap();
    let report = rt.reload(&swapped).unwrap();
    assert_eq!(report.changed, ["swap-a", "swap-b"]);
    let who = |key: &str| {
        rt.lookup::<Arc<Widget>>("widget", key)
            .map(|w| w.instance.clone())
    };
    assert_eq!(who("swap-1").as_deref(), Some("swap-b"));
    assert_eq!(who("swap-2").as_deref(), Some("swap-a"));
}
