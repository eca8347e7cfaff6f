//! `bindery ctl` against a running server: tables, JSON, and exit codes a
//! script can trust (0 done, 1 refused by the server, 2 not asked).

mod common;

use std::process::Command;

use common::{Server, agent, config};

/// Runs `bindery ctl ARGS` against `s`; returns exit code, stdout, stderr.
fn ctl(s: &Server, args: &[&str]) -> (i32, String, String) {
    let url = format!("http://{}", s.manage.unwrap());
    let out = Command::new(env!("CARGO_BIN_EXE_bindery"))
        .arg("ctl")
        .args(["--url", &url])
        .arg("--token-file")
        .arg(&s.token_file)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn ctl_lists_creates_stops_and_removes() {
    let s = Server::start(&config(""));
    let (code, out, err) = ctl(&s, &["list"]);
    assert_eq!(code, 0, "{err}");
    let header = out.lines().next().unwrap();
    assert!(
        header.starts_with("NAME") && header.contains("STATE"),
        "{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.starts_with("queues ") && l.contains("running")),
        "{out}"
    );

    let (code, out, _) = ctl(&s, &["info"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("registration") && out.contains(bindery::REGISTRATION),
        "{out}"
    );

    let dir = common::TempDir::new();
    let cfg = dir.0.join("orders.toml");
    std::fs::write(&cfg, "max_depth = 5\n").unwrap();
    let (code, out, err) = ctl(
        &s,
        &[
            "create",
            "orders",
            "--module",
            "driver.memqueue",
            "--bind",
            "/orders/",
            "--config",
            cfg.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("orders") && out.contains("running"), "{out}");
    let post = || {
        common::outcome(
            agent()
                .post(&s.url("/orders/a"))
                .set("Content-Type", "text/plain")
                .send_string("x"),
        )
        .0
    };
    assert_eq!(post(), 201);

    let (code, out, _) = ctl(&s, &["--json", "stop", "orders", "--grace", "1"]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["state"], "stopped");
    assert_eq!(post(), 503);

    let (code, _, err) = ctl(&s, &["bind", "orders", "/queues/"]);
    assert_eq!(code, 1, "refused by the server: exit 1");
    assert!(err.contains("409") && err.contains("\"queues\""), "{err}");

    let (code, out, _) = ctl(&s, &["remove", "orders"]);
    assert_eq!((code, out.trim()), (0, "removed orders"));
    assert_eq!(post(), 404);

    let (code, _, err) = ctl(&s, &["start", "orders"]);
    assert_eq!(code, 1);
    assert!(err.contains("404"), "{err}");

    // The configuration, edited and reloaded.
    let (code, text, _) = ctl(&s, &["config"]);
    assert_eq!(code, 0);
    assert!(text.contains("[instances.queues]"), "{text}");
    let file = dir.0.join("next.toml");
    std::fs::write(
        &file,
        format!("{text}\n[instances.late]\nmodule = \"driver.memqueue\"\nbind = [\"/late/\"]\n"),
    )
    .unwrap();
    let (code, out, err) = ctl(&s, &["reload", file.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("added") && l.contains("late")),
        "{out}"
    );
    let broken = dir.0.join("broken.toml");
    std::fs::write(&broken, "[instances.x]\nmodule = \"driver.nothing\"\n").unwrap();
    let (code, _, err) = ctl(&s, &["reload", broken.to_str().unwrap()]);
    assert_eq!(code, 1, "refused: {err}");
    assert!(err.contains("driver.nothing"), "{err}");

    // An instance's recent log.
    ctl(&s, &["restart", "queues", "--grace", "1"]);
    let (code, out, err) = ctl(&s, &["logs", "queues", "--tail", "2"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().count(), 2, "{out}");
    assert!(out.contains("INFO"), "{out}");
}

#[test]
fn ctl_says_when_it_cannot_ask() {
    let s = Server::start(&config(""));
    let out = Command::new(env!("CARGO_BIN_EXE_bindery"))
        .args(["ctl", "--token-file", "/nonexistent/token", "list"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/token"));
    // A wrong token is the server refusing: 1, and no detail.
    let dir = common::TempDir::new();
    let wrong = dir.0.join("wrong");
    std::fs::write(&wrong, "not-the-token").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_bindery"))
        .args(["ctl", "--url", &format!("http://{}", s.manage.unwrap())])
        .arg("--token-file")
        .arg(&wrong)
        .arg("list")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("401"));
    // Nobody listening: 2.
    let out = Command::new(env!("CARGO_BIN_EXE_bindery"))
        .args(["ctl", "--url", "http://127.0.0.1:1"])
        .arg("--token-file")
        .arg(&s.token_file)
        .arg("list")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn the_api_is_served_on_a_unix_socket_too() {
    use std::io::{Read, Write};
    use std::os::unix::fs::PermissionsExt;
    let s = Server::start(&config("").replace(
        "config = { token_file = \"manage.token\" }",
        "config = { token_file = \"manage.token\", unix_socket = \"manage.sock\" }",
    ));
    let socket = s.token_file.with_file_name("manage.sock");
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "the socket is private");
    // No token over the socket either.
    let mut raw = std::os::unix::net::UnixStream::connect(&socket).unwrap();
    raw.write_all(b"GET /v1/instances HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    raw.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 401"), "{out}");
    // ctl over the socket.
    let out = Command::new(env!("CARGO_BIN_EXE_bindery"))
        .args(["ctl", "--unix-socket"])
        .arg(&socket)
        .arg("--token-file")
        .arg(&s.token_file)
        .args(["--json", "list"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 11);
    let out = Command::new(env!("CARGO_BIN_EXE_bindery"))
        .args(["ctl", "--unix-socket"])
        .arg(&socket)
        .arg("--token-file")
        .arg(&s.token_file)
        .args(["stop", "nobody"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("404"));
    // The socket goes with the server.
    s.terminate();
    assert!(!socket.exists(), "the socket file is removed at stop");
}

#[test]
fn ctl_finds_the_token_in_the_data_directory() {
    let s = Server::start(&config(""));
    let out = Command::new(env!("CARGO_BIN_EXE_bindery"))
        .args(["ctl", "--url", &format!("http://{}", s.manage.unwrap())])
        .arg("--data-dir")
        .arg(s.token_file.parent().unwrap())
        .arg("info")
        .env_remove("BINDERY_TOKEN_FILE")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
