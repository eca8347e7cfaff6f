//! An instance that fails on its own (its host died: `Monitor::failed`) is
//! `failed`, says why, and is started again as its `restart` policy says,
//! with backoff, until its crash-loop limit; reports from an incarnation
//! that is gone are ignored; isolation is refused for factories that do
//! not support it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bindery::{
    ABI_VERSION, BoxError, Config, InstanceInfo, Kernel, KeyKind, ModuleDescriptor, Monitor,
    Registrar, Registry, State,
};

/// The monitor of each instance's latest incarnation.
static MONITORS: Mutex<Option<HashMap<String, Monitor>>> = Mutex::new(None);

fn monitor(name: &str) -> Monitor {
    MONITORS.lock().unwrap().as_ref().unwrap()[name].clone()
}

fn crasher_main(reg: &mut Registrar<'_>) -> Result<(), BoxError> {
    reg.factory::<Arc<String>, _>(KeyKind::Exact, |cx| {
        MONITORS
            .lock()
            .unwrap()
            .get_or_insert_with(HashMap::new)
            .insert(cx.name().to_owned(), cx.monitor());
        cx.monitor().set_pid(Some(4242));
        Ok(Arc::new(cx.name().to_owned()))
    });
    reg.isolatable();
    Ok(())
}

fn plain_main(reg: &mut Registrar<'_>) -> Result<(), BoxError> {
    reg.factory::<Arc<String>, _>(KeyKind::Exact, |cx| Ok(Arc::new(cx.name().to_owned())));
    Ok(())
}

static MODULES: [ModuleDescriptor; 2] = [
    ModuleDescriptor {
        class: "thing",
        name: "crasher",
        version: "1.0.0",
        abi: ABI_VERSION,
        description: "an instance whose failures the test reports",
        krate: "supervision_test",
        main: crasher_main,
        certify_config: "",
    },
    ModuleDescriptor {
        class: "plain",
        name: "p",
        version: "1.0.0",
        abi: ABI_VERSION,
        description: "a module with no proxy",
        krate: "supervision_test",
        main: plain_main,
        certify_config: "",
    },
];

fn kernel(config: &str) -> Result<Kernel, bindery::Error> {
    let registry = Registry::load_from(&[], &MODULES).unwrap();
    let config = Config::parse("t.toml", config).unwrap();
    Kernel::build_with(registry, &config, Some(1))
}

fn until(k: &Kernel, name: &str, what: &str, f: impl Fn(&InstanceInfo) -> bool) -> InstanceInfo {
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        let i = k.runtime().instance(name).unwrap();
        if f(&i) {
            return i;
        }
        assert!(Instant::now() < end, "{name} never {what}: {i:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn instance(name: &str, extra: &str) -> String {
    format!(
        "[instances.{name}]\nmodule = \"thing.crasher\"\nbind = [\"{name}\"]\nisolation = \"process\"\n{extra}\n"
    )
}

#[test]
fn a_failed_instance_restarts_with_backoff_until_its_crash_loop_limit() {
    let mut k = kernel(&instance(
        "loop",
        "backoff_base_ms = 1\nbackoff_cap_ms = 60000\ncrash_loop_limit = 2",
    ))
    .unwrap();
    k.start().unwrap();
    assert_eq!(k.runtime().instance("loop").unwrap().pid, Some(4242));
    for n in 1..=2u32 {
        let stale = monitor("loop");
        stale.failed(format!("crash {n}"), false);
        let i = until(&k, "loop", "restarted", |i| i.restarts == n);
        assert_eq!((i.state, i.crashes), (State::Running, n));
        // The incarnation that crashed is gone: its reports change nothing.
        stale.failed("late".into(), false);
        assert_eq!(k.runtime().instance("loop").unwrap().state, State::Running);
    }
    monitor("loop").failed("crash 3".into(), false);
    let i = until(&k, "loop", "gave up", |i| i.state == State::Failed);
    let why = i.last_error.unwrap();
    assert!(
        why.starts_with("crash 3; not restarting: crash loop: 3 crashes in a row"),
        "{why}"
    );
    assert!(why.contains("crash_loop_limit = 2"), "{why}");
    assert_eq!((i.restarts, i.pid, i.restart_at), (2, None, None));
    // By hand: it starts, and the count starts over.
    let i = k.runtime().start("loop").unwrap();
    assert_eq!((i.state, i.crashes, i.restarts), (State::Running, 0, 3));
}

#[test]
fn the_policy_decides_whether_an_end_is_restarted() {
    let text = [
        instance("never", "restart = \"never\""),
        instance("clean", "restart = \"on-failure\""),
        instance("always", "restart = \"always\"\nbackoff_base_ms = 1"),
        instance("later", "backoff_base_ms = 600000\nbackoff_cap_ms = 600000"),
    ]
    .concat();
    let mut k = kernel(&text).unwrap();
    k.start().unwrap();
    monitor("never").failed("killed".into(), false);
    let i = until(&k, "never", "failed", |i| i.state == State::Failed);
    assert_eq!(
        i.last_error.as_deref(),
        Some("killed; not restarting: restart = \"never\"")
    );
    monitor("clean").failed("exited with status 0".into(), true);
    let i = until(&k, "clean", "failed", |i| i.state == State::Failed);
    assert!(i.last_error.unwrap().contains("exited cleanly"));
    monitor("always").failed("exited with status 0".into(), true);
    until(&k, "always", "restarted", |i| {
        i.restarts == 1 && i.state == State::Running
    });
    // A restart far off is due later, and stopping cancels it.
    monitor("later").failed("killed".into(), false);
    let i = until(&k, "later", "failed", |i| i.state == State::Failed);
    assert!(i.restart_at.is_some(), "{i:?}");
    assert!(i.last_error.unwrap().ends_with("restarting in 600000 ms"));
    let i = k.runtime().stop("later", Duration::from_secs(1)).unwrap();
    assert_eq!((i.state, i.restart_at), (State::Stopped, None));
}

#[test]
fn isolation_is_refused_for_a_module_without_a_proxy() {
    let e =
        kernel("[instances.x]\nmodule = \"plain.p\"\nbind = [\"x\"]\nisolation = \"process\"\n")
            .unwrap_err()
            .report();
    assert!(
        e.contains("isolation = \"process\" is not supported by modules of class \"plain\""),
        "{e}"
    );
    // Restart settings need isolation; activation "none" needs its address.
    let e = Config::parse(
        "t.toml",
        "[instances.x]\nmodule = \"plain.p\"\nrestart = \"always\"\n",
    )
    .unwrap_err();
    assert_eq!(e.instance.as_deref(), Some("x"));
    assert_eq!(e.position.map(|p| p.0), Some(1));
    let e = Config::parse(
        "t.toml",
        "[instances.x]\nmodule = \"thing.crasher\"\nisolation = \"process\"\nhost = { activation = \"none\" }\n",
    )
    .unwrap_err();
    assert!(e.message.contains("needs `connect`"), "{e}");
    let e = Config::parse(
        "t.toml",
        "[instances.x]\nmodule = \"thing.crasher\"\nisolation = \"process\"\nhost = { memory = 1 }\n",
    )
    .unwrap_err();
    assert!(e.message.contains("unknown field `memory`"), "{e}");
}

#[test]
fn isolation_settings_show_in_the_effective_configuration() {
    let k = kernel(&instance(
        "shown",
        "restart = \"always\"\nhost = { open_files = 64 }",
    ))
    .unwrap();
    let text = k.runtime().effective_config();
    let again = Config::parse("again", &text).unwrap();
    let spec = &again.instances[0].isolation;
    assert_eq!(spec.mode, bindery::Isolation::Process);
    assert_eq!(spec.restart, Some(bindery::Restart::Always));
    assert_eq!(spec.host().open_files, Some(64));
    assert_eq!(spec.backoff(1), Duration::from_millis(100));
    assert_eq!(spec.backoff(3), Duration::from_millis(400));
    assert_eq!(spec.backoff(40), Duration::from_secs(30));
}
