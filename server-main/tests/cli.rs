//! The command line: checking configuration, and the errors it gives.

use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

fn bindery(args: &[&str], config: Option<&str>) -> (i32, String, String) {
    static N: AtomicUsize = AtomicUsize::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("bindery-cli-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("c.toml");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_bindery"));
    if let Some(text) = config {
        std::fs::write(&path, text).unwrap();
        cmd.arg("--config").arg(&path);
    }
    let out = cmd
        .args(args)
        .current_dir(&dir)
        .env("RUST_LOG", "error")
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_embedded_default_configuration_checks() {
    let (code, out, err) = bindery(&["--check-config"], None);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("<embedded default>: configuration OK (11 instances)"),
        "{out}"
    );
}

#[test]
fn an_unknown_field_is_named_with_file_line_and_instance() {
    let text = "[instances.q]\nmodule = \"driver.memqueue\"\nbind = [\"/q/\"]\n\n[instances.q.config]\nmax_depth = 5\nmax_dept = 6\n";
    let (code, _, err) = bindery(&["--check-config"], Some(text));
    assert_eq!(code, 2);
    assert!(err.contains("c.toml:7:1"), "{err}");
    assert!(
        err.contains("instance \"q\"") && err.contains("max_dept"),
        "{err}"
    );
}

#[test]
fn configuration_mistakes_are_refused_with_a_reason() {
    let cases = [
        (
            "[instances.x]\nmodule = \"driver.nosuch\"\n",
            "driver.nosuch",
        ),
        (
            "[instances.x]\nmodule = \"driver.memqueue\"\nbind = [\"queues\"]\n",
            "must start with '/'",
        ),
        (
            "[instances.a]\nmodule = \"driver.memqueue\"\nbind = [\"/q/\"]\n[instances.b]\nmodule = \"driver.topic\"\nbind = [\"/q\"]\n",
            "\"a\" is bound to /q/ already",
        ),
        (
            "[instances.x]\nmodule = \"driver.memqueue\"\nconfig = { max_depth = 0 }\n",
            "max_depth",
        ),
        ("[server]\nthreads = \"many\"\n", "c.toml:2"),
        (
            "[instances.x]\nmodule = \"parser.json\"\nbind = [\"json\"]\n",
            "type/subtype",
        ),
    ];
    for (text, needle) in cases {
        let (code, _, err) = bindery(&["--check-config"], Some(text));
        assert_eq!(code, 2, "{text}");
        assert!(err.contains(needle), "{text}: {err}");
    }
}

#[test]
fn a_port_in_use_stops_start_up_naming_the_instance() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let (code, _, err) = bindery(&["--listen", &addr, "--threads", "1"], None);
    assert_eq!(code, 2);
    assert!(err.contains("\"http\"") && err.contains(&addr), "{err}");
}

#[test]
fn log_lines_to_a_file_carry_no_colour_codes() {
    let dir = std::env::temp_dir().join(format!("bindery-cli-ansi-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_bindery"))
        .arg("--check-config")
        .current_dir(&dir)
        .env("RUST_LOG", "debug")
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("journal recovered"), "{err}");
    assert!(
        !err.contains('\x1b'),
        "escape codes in redirected logs: {err:?}"
    );
}

const LINKED: &str = "auth.allow, auth.file, dispatcher.fast, driver.filequeue, driver.memqueue, driver.redisqueue, \
                      driver.redistopic, driver.topic, parser.json, parser.octets, parser.text, route.exec, \
                      terminal.amqp, terminal.http, terminal.manage, terminal.mqtt, worker.exec";

#[test]
fn mistakes_are_said_once_with_the_closest_name_suggested() {
    let cases = [
        (
            "[instances.q]\nmodule = \"driver.memque\"\n",
            format!(
                "c.toml:1:1: instance \"q\": module \"driver.memque\" is not linked into this \
                 binary (linked: {LINKED}); did you mean driver.memqueue?"
            ),
        ),
        (
            "[instances.news]\nmodule = \"drivr.topic\"\nbind = [\"/news/\"]\n",
            format!(
                "c.toml:1:1: instance \"news\": module \"drivr.topic\" is not linked into this \
                 binary (linked: {LINKED}); did you mean driver.topic?"
            ),
        ),
        (
            "[server]\nthread = 2\n",
            "c.toml:2:1: unknown field `thread`, expected one of `threads`, `log_lines`, `data_dir`; \
             did you mean `threads`?"
                .to_owned(),
        ),
        (
            // Nothing close: no suggestion.
            "[instances.q]\nmodule = \"driver.redis\"\n",
            format!(
                "c.toml:1:1: instance \"q\": module \"driver.redis\" is not linked into this \
                 binary (linked: {LINKED})"
            ),
        ),
    ];
    for (text, said) in cases {
        let (code, _, err) = bindery(&["--check-config"], Some(text));
        assert_eq!(code, 2, "{text}");
        // The file is named by the path it was given: drop its directory.
        let at = err.find("c.toml").unwrap_or(0);
        let err = format!("{}{}", &err[..16.min(at)], &err[at..]);
        assert_eq!(err, format!("bindery: error: {said}\n"), "{text}");
    }
}

#[test]
fn the_default_configuration_shows_the_data_directory() {
    let (code, out, _) = bindery(&["--print-default-config"], None);
    assert_eq!(code, 0);
    assert!(out.contains("\ndata_dir = \"bindery-data\""), "{out}");
    assert!(out.contains("token_file = \"manage.token\""), "{out}");
    assert!(out.contains("dir = \"durable\""), "{out}");
}
