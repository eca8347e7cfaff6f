//! Registration at link time: every module crate a main file lists is in
//! the module table, in whatever profile, with whatever linker and with
//! whichever registration backend CI builds this test (`scripts/test` runs
//! it in debug and release, with rust-lld and GNU ld, on linkme and with
//! `--features inventory`: inventory has its own history of silently
//! dropped entries).

/// The backend this build of the server should report.
const BACKEND: &str = if cfg!(feature = "inventory") {
    "inventory"
} else {
    "linkme"
};

use std::process::Command;

use bindery::{Registry, linked_modules};

#[test]
fn every_listed_module_crate_is_registered() {
    let linked = bindery::modules![
        terminal_http,
        terminal_mqtt,
        terminal_amqp,
        terminal_manage,
        dispatcher_fast,
        driver_memqueue,
        driver_filequeue,
        driver_topic,
        driver_redisqueue,
        driver_redistopic,
        parser_json,
        parser_text,
        parser_octets,
        auth_allow,
        auth_file,
        route_exec,
        worker_exec,
    ];
    let registry = Registry::load(linked).expect("all listed modules are linked");
    let want = [
        ("auth.allow", "auth_allow"),
        ("auth.file", "auth_file"),
        ("dispatcher.fast", "dispatcher_fast"),
        ("driver.filequeue", "driver_filequeue"),
        ("driver.memqueue", "driver_memqueue"),
        ("driver.redisqueue", "driver_redisqueue"),
        ("driver.redistopic", "driver_redistopic"),
        ("driver.topic", "driver_topic"),
        ("parser.json", "parser_json"),
        ("parser.octets", "parser_octets"),
        ("parser.text", "parser_text"),
        ("route.exec", "route_exec"),
        ("terminal.amqp", "terminal_amqp"),
        ("terminal.http", "terminal_http"),
        ("terminal.manage", "terminal_manage"),
        ("terminal.mqtt", "terminal_mqtt"),
        ("worker.exec", "worker_exec"),
    ];
    for (id, krate) in want {
        let d = registry
            .get(id)
            .unwrap_or_else(|| panic!("{id} is not registered"));
        assert_eq!(d.krate, krate);
        assert_eq!(d.abi, bindery::ABI_VERSION);
        assert!(!d.description.is_empty());
    }
    assert_eq!(linked_modules(linked).unwrap().len(), want.len());
    assert_eq!(bindery::REGISTRATION, BACKEND);
}

#[test]
fn the_server_binary_lists_its_modules_without_starting() {
    let out = Command::new(env!("CARGO_BIN_EXE_bindery"))
        .args(["--list-modules", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let all: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(all["registration"], BACKEND);
    let ids: Vec<String> = all["modules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            format!(
                "{}.{}",
                m["class"].as_str().unwrap(),
                m["name"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        ids,
        [
            "auth.allow",
            "auth.file",
            "dispatcher.fast",
            "driver.filequeue",
            "driver.memqueue",
            "driver.redisqueue",
            "driver.redistopic",
            "driver.topic",
            "parser.json",
            "parser.octets",
            "parser.text",
            "route.exec",
            "terminal.amqp",
            "terminal.http",
            "terminal.manage",
            "terminal.mqtt",
            "worker.exec"
        ]
    );
    let text = Command::new(env!("CARGO_BIN_EXE_bindery"))
        .arg("--list-modules")
        .output()
        .unwrap();
    let text = String::from_utf8(text.stdout).unwrap();
    assert!(
        text.contains("terminal.http") && text.contains("terminal_http"),
        "{text}"
    );
    assert!(text.contains(&format!("registration: {BACKEND}")), "{text}");
}

/// The inventory build links no linkme at all: no slice section, no
/// `__start_`/`__stop_` bounds of one (read with binutils' `readelf`).
#[cfg(all(feature = "inventory", target_os = "linux"))]
#[test]
fn the_inventory_build_links_no_linkme_slice() {
    for (args, always) in [("-SW", ".init_array"), ("-sW", "main")] {
        let out = Command::new("readelf")
            .args([args, env!("CARGO_BIN_EXE_bindery")])
            .output()
            .expect("readelf (binutils) runs");
        assert!(out.status.success());
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains(always), "readelf {args}: no {always}?");
        assert!(!text.contains("linkme"), "{args:?}: linkme is linked");
    }
}
