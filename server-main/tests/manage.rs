//! The management API end to end: the `bindery` binary, its token, and
//! instances created, stopped, started, restarted, removed and rebound
//! while clients use them.
//!
//! Longer than most files here: the management API over real sockets, one
//! test per promise.

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::{Server, agent, config, outcome};
use serde_json::Value;

/// The management API of a server, with its token.
struct Api {
    base: String,
    token: String,
}

impl Api {
    fn of(s: &Server) -> Api {
        let addr = s
            .manage
            .expect("the default configuration serves the management API");
        let token = std::fs::read_to_string(&s.token_file)
            .expect("the token file is made at first start")
            .trim()
            .to_owned();
        Api {
            base: format!("http://{addr}"),
            token,
        }
    }

    fn call(&self, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
        let req = agent()
            .request(method, &format!("{}{path}", self.base))
            .set("Authorization", &format!("Bearer {}", self.token));
        let r = match body {
            Some(b) => req.send_string(b),
            None => req.call(),
        };
        match r {
            Ok(resp) => (resp.status(), resp.into_string().unwrap_or_default()),
            Err(ureq::Error::Status(code, resp)) => (code, resp.into_string().unwrap_or_default()),
            Err(e) => panic!("{method} {path}: {e}"),
        }
    }

    /// A call that must answer `want`; returns the body as JSON (or null).
    fn expect(&self, want: u16, method: &str, path: &str, body: Option<&str>) -> Value {
        let (status, text) = self.call(method, path, body);
        assert_eq!(status, want, "{method} {path}: {text}");
        serde_json::from_str(&text).unwrap_or(Value::Null)
    }
}

fn publish(s: &Server, path: &str, body: &str) -> (u16, Option<String>, Option<String>) {
    match agent()
        .post(&s.url(path))
        .set("Content-Type", "text/plain")
        .send_string(body)
    {
        Ok(r) => (201, r.header("Message-Id").map(str::to_owned), None),
        Err(ureq::Error::Status(code, r)) => {
            (code, None, r.header("Retry-After").map(str::to_owned))
        }
        Err(e) => panic!("publish to {path}: {e}"),
    }
}

#[test]
fn every_request_needs_the_token() {
    let s = Server::start(&config(""));
    let api = Api::of(&s);
    let mode = std::fs::metadata(&s.token_file).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            mode.permissions().mode() & 0o777,
            0o600,
            "the token file is private"
        );
    }
    assert!(api.token.len() >= 32);
    for auth in [None, Some("Bearer wrong"), Some("Basic Zm9vOmJhcg==")] {
        let mut req = agent().get(&format!("{}/v1/instances", api.base));
        if let Some(a) = auth {
            req = req.set("Authorization", a);
        }
        let (status, body, _) = outcome(req.call());
        assert_eq!(status, 401, "{auth:?}");
        assert!(!body.contains(&api.token));
        assert!(
            !body.contains("instances"),
            "a 401 says nothing more: {body}"
        );
    }
    // Not even the document is public.
    let (status, _, _) = outcome(agent().get(&format!("{}/v1/openapi.json", api.base)).call());
    assert_eq!(status, 401);
    // The server serves on.
    assert!(s.healthy());
    api.expect(200, "GET", "/v1/openapi.json", None);
}

#[test]
fn the_api_describes_the_server() {
    let s = Server::start(&config(""));
    let api = Api::of(&s);
    let system = api.expect(200, "GET", "/v1/system", None);
    assert_eq!(system["registration"], bindery::REGISTRATION);
    assert!(system["cores"].as_u64().unwrap() >= 1);
    assert_eq!(system["pid"].as_u64().unwrap(), u64::from(s.pid()));
    let modules = api.expect(200, "GET", "/v1/modules", None);
    let ids: Vec<String> = modules
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
    assert!(ids.contains(&"terminal.manage".to_owned()), "{ids:?}");
    assert!(ids.contains(&"driver.filequeue".to_owned()), "{ids:?}");
    let instances = api.expect(200, "GET", "/v1/instances", None);
    let queues = instances
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == "queues")
        .unwrap();
    assert_eq!(queues["state"], "running");
    assert_eq!(queues["module"], "driver.memqueue");
    assert_eq!(
        api.expect(200, "GET", "/v1/instances/queues", None)["bind"][0],
        "/queues/"
    );
    let bindings = api.expect(200, "GET", "/v1/bindings", None).to_string();
    assert!(
        bindings.contains("\"/durable/\"") && bindings.contains("\"text/*\""),
        "{bindings}"
    );
    let metrics = api.call("GET", "/v1/metrics", None).1;
    assert!(
        metrics.contains("bindery_manage_requests_total"),
        "{metrics}"
    );
    let doc = api.expect(200, "GET", "/v1/openapi.json", None);
    assert_eq!(doc["openapi"], "3.0.3");
}

#[test]
fn a_stopped_durable_driver_refuses_and_a_restarted_one_has_every_confirmed_message() {
    let s = Arc::new(Server::start(&config("")));
    let api = Api::of(&s);
    // Publishers run throughout; each records what was confirmed.
    let running = Arc::new(AtomicBool::new(true));
    let publishers: Vec<_> = (0..3)
        .map(|p| {
            let (s, running) = (s.clone(), running.clone());
            std::thread::spawn(move || {
                let mut confirmed = HashSet::new();
                let mut refused = 0;
                for i in 0..2000 {
                    if !running.load(Ordering::Relaxed) {
                        break;
                    }
                    match publish(&s, "/durable/jobs", &format!("p{p}-{i}")) {
                        (201, Some(_), _) => {
                            confirmed.insert(format!("p{p}-{i}"));
                        }
                        (503, _, retry) => {
                            assert!(retry.is_some(), "503 without Retry-After");
                            refused += 1;
                            std::thread::sleep(Duration::from_millis(5));
                        }
                        other => panic!("publish answered {other:?}"),
                    }
                }
                (confirmed, refused)
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let info = api.expect(200, "POST", "/v1/instances/durable/stop?grace_secs=2", None);
    assert_eq!(info["state"], "stopped");
    // Stopped: still bound, so 503 with Retry-After, not 404.
    let (status, _, retry) = publish(&s, "/durable/jobs", "while stopped");
    assert_eq!((status, retry.is_some()), (503, true));
    std::thread::sleep(Duration::from_millis(200));
    let info = api.expect(200, "POST", "/v1/instances/durable/start", None);
    assert_eq!(
        (info["state"].as_str(), info["restarts"].as_u64()),
        (Some("running"), Some(1))
    );
    std::thread::sleep(Duration::from_millis(200));
    let info = api.expect(
        200,
        "POST",
        "/v1/instances/durable/restart?grace_secs=1",
        None,
    );
    assert_eq!(info["restarts"], 2);
    std::thread::sleep(Duration::from_millis(200));
    running.store(false, Ordering::Relaxed);
    let mut confirmed = HashSet::new();
    let mut refused = 0;
    for p in publishers {
        let (c, r) = p.join().unwrap();
        confirmed.extend(c);
        refused += r;
    }
    assert!(refused > 0, "no publish met the stopped instance");
    // Every confirmed message is there once, and nothing else.
    let mut taken = HashSet::new();
    loop {
        let r = agent()
            .get(&s.url("/durable/jobs?wait=1&lease=60"))
            .call()
            .unwrap();
        if r.status() == 204 {
            break;
        }
        let id = r.header("Message-Id").unwrap().to_owned();
        let body = r.into_string().unwrap();
        assert!(taken.insert(body.clone()), "{body} came twice");
        agent()
            .delete(&s.url(&format!("/durable/jobs/messages/{id}")))
            .call()
            .unwrap();
        assert!(
            taken.len() <= confirmed.len() + 1,
            "more messages than confirmed"
        );
    }
    let missing: Vec<_> = confirmed.difference(&taken).collect();
    assert!(
        missing.is_empty(),
        "{} confirmed messages lost: {missing:?}",
        missing.len()
    );
    let unconfirmed: Vec<_> = taken.difference(&confirmed).collect();
    assert!(
        unconfirmed.is_empty(),
        "unconfirmed messages delivered: {unconfirmed:?}"
    );
}

#[test]
fn instances_are_created_rebound_and_removed_at_run_time() {
    let s = Server::start(&config(""));
    let api = Api::of(&s);
    assert_eq!(publish(&s, "/orders/eu", "before").0, 404);
    let made = api.expect(
        201,
        "POST",
        "/v1/instances",
        Some("[instances.orders]\nmodule = \"driver.memqueue\"\nbind = [\"/orders/\"]\nconfig = { max_depth = 10 }\n"),
    );
    assert_eq!(made["state"], "running");
    // Serves at once, through the dispatcher's cached handles.
    assert_eq!(publish(&s, "/orders/eu", "one").0, 201);

    // Rebinding is followed too.
    api.expect(
        200,
        "POST",
        "/v1/instances/orders/bindings",
        Some(r#"{"key": "/sales/"}"#),
    );
    assert_eq!(publish(&s, "/sales/x", "two").0, 201);
    let conflict = api.expect(
        409,
        "POST",
        "/v1/instances/orders/bindings",
        Some(r#"{"key": "/queues/"}"#),
    );
    assert!(
        conflict["error"].as_str().unwrap().contains("\"queues\""),
        "{conflict}"
    );
    api.expect(
        200,
        "DELETE",
        "/v1/instances/orders/bindings?key=%2Fsales%2F",
        None,
    );
    assert_eq!(publish(&s, "/sales/x", "three").0, 404);
    api.expect(
        409,
        "DELETE",
        "/v1/instances/orders/bindings?key=%2Fqueues%2F",
        None,
    );

    api.expect(204, "DELETE", "/v1/instances/orders?grace_secs=1", None);
    assert_eq!(publish(&s, "/orders/eu", "after").0, 404);
    api.expect(404, "GET", "/v1/instances/orders", None);
    assert!(s.healthy());
}

#[test]
fn bad_requests_get_errors_that_say_what_is_wrong() {
    let s = Server::start(&config(""));
    let api = Api::of(&s);
    let e = api.expect(
        400,
        "POST",
        "/v1/instances",
        Some("[instances.x]\nmodule = \"driver.memqueue\"\nbind = [\"/x/\"\n"),
    );
    assert!(
        e["error"].as_str().unwrap().contains("request body:4:1"),
        "{e}"
    );
    let e = api.expect(
        400,
        "POST",
        "/v1/instances",
        Some("[instances.x]\nmodule = \"driver.memqueu\"\n"),
    );
    assert!(
        e["error"].as_str().unwrap().contains("driver.memqueu"),
        "{e}"
    );
    let e = api.expect(
        400,
        "POST",
        "/v1/instances",
        Some("[instances.x]\nmodule = \"driver.memqueue\"\nbind = [\"/x/\"]\nconfig = { max_dept = 1 }\n"),
    );
    assert!(e["error"].as_str().unwrap().contains("max_dept"), "{e}");
    let two = "[instances.a]\nmodule = \"driver.memqueue\"\n[instances.b]\nmodule = \"driver.memqueue\"\n";
    api.expect(400, "POST", "/v1/instances", Some(two));
    let e = api.expect(
        409,
        "POST",
        "/v1/instances",
        Some("[instances.queues]\nmodule = \"driver.memqueue\"\n"),
    );
    assert!(e["error"].as_str().unwrap().contains("exists"), "{e}");
    let e = api.expect(
        409,
        "POST",
        "/v1/instances",
        Some("[instances.y]\nmodule = \"driver.memqueue\"\nbind = [\"/queues/\"]\n"),
    );
    assert!(e["error"].as_str().unwrap().contains("\"queues\""), "{e}");
    api.expect(404, "POST", "/v1/instances/nobody/stop", None);
    api.expect(404, "GET", "/v1/instances/nobody", None);
    api.expect(
        400,
        "POST",
        "/v1/instances/queues/stop?grace_secs=soon",
        None,
    );
    api.expect(409, "POST", "/v1/instances/manage/stop", None);
    api.expect(
        400,
        "POST",
        "/v1/instances/queues/bindings",
        Some("not json"),
    );
    api.expect(404, "GET", "/v1/nothing", None);
    let (status, _) = api.call("PUT", "/v1/instances", Some(""));
    assert_eq!(status, 405);
    // Nothing changed, and everything still serves.
    assert_eq!(
        api.expect(200, "GET", "/v1/instances", None)
            .as_array()
            .unwrap()
            .len(),
        11
    );
    assert!(s.healthy());
}

#[test]
fn an_instances_log_can_be_read_and_followed() {
    let s = Server::start_with(&config(""), &["--threads", "2"]);
    let api = Api::of(&s);
    // Stopping and starting logs lines in the instance's span.
    api.expect(
        200,
        "POST",
        "/v1/instances/queues/restart?grace_secs=1",
        None,
    );
    let lines = api.expect(200, "GET", "/v1/instances/queues/logs", None);
    let text = lines.to_string();
    assert!(
        text.contains("stopping") && text.contains("running"),
        "{text}"
    );
    let all = lines.as_array().unwrap().len();
    assert!(all >= 3, "{text}");
    let last = api.expect(200, "GET", "/v1/instances/queues/logs?tail=1", None);
    assert_eq!(last.as_array().unwrap().len(), 1);
    let future = api.expect(
        200,
        "GET",
        "/v1/instances/queues/logs?since=99999999999",
        None,
    );
    assert!(future.as_array().unwrap().is_empty());
    api.expect(404, "GET", "/v1/instances/nobody/logs", None);
    api.expect(400, "GET", "/v1/instances/queues/logs?tail=many", None);

    // Follow: the stream stays open and brings new lines.
    use std::io::{BufRead, BufReader, Write};
    let mut follow = std::net::TcpStream::connect(s.manage.unwrap()).unwrap();
    follow
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    write!(
        follow,
        "GET /v1/instances/durable/logs?follow=true&tail=0 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\r\n",
        api.token
    )
    .unwrap();
    let mut r = BufReader::new(follow);
    let mut head = String::new();
    r.read_line(&mut head).unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    // The stop runs on its own thread; its lines arrive on the stream.
    let stopper = {
        let base = api.base.clone();
        let token = api.token.clone();
        std::thread::spawn(move || {
            agent()
                .post(&format!("{base}/v1/instances/durable/stop?grace_secs=1"))
                .set("Authorization", &format!("Bearer {token}"))
                .call()
                .unwrap()
                .status()
        })
    };
    let mut got = String::new();
    for _ in 0..200 {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap() == 0 {
            break;
        }
        got.push_str(&line);
        if got.contains("\"stopped\"")
            || got.contains("stopped\"}")
            || got.contains("message\":\"stopped")
        {
            break;
        }
    }
    assert_eq!(stopper.join().unwrap(), 200);
    assert!(got.contains("stopping"), "{got}");
}

/// The server's configuration and its version.
fn effective(api: &Api) -> (String, String) {
    let r = agent()
        .get(&format!("{}/v1/config", api.base))
        .set("Authorization", &format!("Bearer {}", api.token))
        .call()
        .unwrap();
    let etag = r.header("ETag").unwrap().to_owned();
    (r.into_string().unwrap(), etag)
}

fn put_config(api: &Api, text: &str, if_match: Option<&str>) -> (u16, String) {
    let mut req = agent()
        .put(&format!("{}/v1/config", api.base))
        .set("Authorization", &format!("Bearer {}", api.token));
    if let Some(m) = if_match {
        req = req.set("If-Match", m);
    }
    match req.send_string(text) {
        Ok(r) => (r.status(), r.into_string().unwrap()),
        Err(ureq::Error::Status(c, r)) => (c, r.into_string().unwrap()),
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn the_configuration_is_read_and_replaced_as_a_difference() {
    let s = Server::start(&config(""));
    let api = Api::of(&s);
    let (text, etag) = effective(&api);
    assert!(
        text.contains("[instances.durable]") && text.contains("driver.filequeue"),
        "{text}"
    );

    // Saved to a file, it makes the same server.
    let dir = common::TempDir::new();
    let saved = dir.0.join("saved.toml");
    std::fs::write(&saved, &text).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_bindery"))
        .args(["--check-config", "--config"])
        .arg(&saved)
        .env("RUST_LOG", "error")
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("configuration OK (11 instances)"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // An event stream on the topics, which the reload leaves alone.
    use std::io::{BufRead, BufReader, Write};
    let mut sse = std::net::TcpStream::connect(s.addr).unwrap();
    sse.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        sse,
        "GET /topics/r HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n"
    )
    .unwrap();
    let mut sse = BufReader::new(sse);
    let mut line = String::new();
    while line != ": subscribed\n" {
        line.clear();
        assert!(sse.read_line(&mut line).unwrap() > 0);
    }

    // Change the memory queue's depth, drop the durable queue, add one.
    let next = text.replace(
        "[instances.queues]\n",
        "[instances.queues]\nconfig = { max_depth = 7 }\n",
    ) + "\n[instances.extra]\nmodule = \"driver.memqueue\"\nbind = [\"/extra/\"]\n";
    let next = drop_instance(&next, "durable");
    // A stale version is refused, and changes nothing.
    let (status, body) = put_config(&api, &next, Some("\"0000000000000000\""));
    assert_eq!(status, 412, "{body}");
    assert_eq!(effective(&api).1, etag);
    // A bad section is refused, and changes nothing.
    let bad = next.replace("max_depth = 7", "max_dept = 7");
    let (status, body) = put_config(&api, &bad, Some(&etag));
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("max_dept"), "{body}");
    assert_eq!(effective(&api).1, etag);
    assert_eq!(publish(&s, "/durable/still", "x").0, 201);

    let (status, body) = put_config(&api, &next, Some(&etag));
    assert_eq!(status, 200, "{body}");
    let report: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(report["changed"], serde_json::json!(["queues"]));
    assert_eq!(report["removed"], serde_json::json!(["durable"]));
    assert_eq!(report["added"], serde_json::json!(["extra"]));
    assert!(
        report["unchanged"].to_string().contains("topics"),
        "{report}"
    );
    assert_ne!(effective(&api).1, etag);
    assert_eq!(publish(&s, "/durable/x", "x").0, 404);
    assert_eq!(publish(&s, "/extra/x", "x").0, 201);
    for i in 0..7 {
        assert_eq!(publish(&s, "/queues/d", &i.to_string()).0, 201);
    }
    assert_eq!(
        publish(&s, "/queues/d", "8th").0,
        503,
        "the new depth holds"
    );

    // The untouched topics instance kept its subscriber.
    assert_eq!(publish(&s, "/topics/r", "after the reload").0, 201);
    let mut got = String::new();
    for _ in 0..10 {
        line.clear();
        sse.read_line(&mut line).unwrap();
        got.push_str(&line);
        if got.contains("after the reload") {
            break;
        }
    }
    assert!(got.contains("data: after the reload"), "{got}");
}

/// `text` without the `[instances.NAME]` table and its sub-tables.
fn drop_instance(text: &str, name: &str) -> String {
    let mut out = String::new();
    let mut skipping = false;
    for line in text.lines() {
        if line.starts_with('[') {
            skipping = line.starts_with(&format!("[instances.{name}]"))
                || line.starts_with(&format!("[instances.{name}."));
        }
        if !skipping {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

#[test]
fn sighup_reloads_the_configuration_file() {
    let s = Server::start(&config(""));
    let api = Api::of(&s);
    let mut text = std::fs::read_to_string(&s.config_path).unwrap();
    text.push_str("\n[instances.hup]\nmodule = \"driver.memqueue\"\nbind = [\"/hup/\"]\n");
    std::fs::write(&s.config_path, &text).unwrap();
    s.signal("HUP");
    let mut found = false;
    for _ in 0..100 {
        if api.call("GET", "/v1/instances/hup", None).0 == 200 {
            found = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(found, "SIGHUP did not add the instance");
    assert_eq!(publish(&s, "/hup/x", "x").0, 201);
    // A broken file changes nothing; the server serves on.
    std::fs::write(&s.config_path, "[instances.broken\n").unwrap();
    s.signal("HUP");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(publish(&s, "/hup/x", "x").0, 201);
    assert!(s.healthy());
}

#[test]
fn a_reload_may_not_remove_the_api_that_serves_it() {
    let s = Server::start(&config(""));
    let api = Api::of(&s);
    let (text, etag) = effective(&api);
    let (status, body) = put_config(&api, "", Some(&etag));
    assert_eq!(status, 409, "{body}");
    assert!(
        body.contains("manage") && body.contains("serves this request"),
        "{body}"
    );
    assert_eq!(effective(&api), (text, etag), "nothing changed");
    assert!(s.healthy());
}

#[test]
fn a_half_sent_or_idle_connection_is_closed() {
    let s = Server::start(&config("").replace(
        "config = { token_file = \"manage.token\" }",
        "config = { token_file = \"manage.token\", header_timeout_secs = 1, idle_timeout_secs = 2 }",
    ));
    let api = Api::of(&s);
    use std::io::{Read, Write};
    let addr = s.manage.unwrap();
    let mut half = std::net::TcpStream::connect(addr).unwrap();
    half.set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    half.write_all(b"GET /v1/system HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let mut idle = std::net::TcpStream::connect(addr).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let mut answer = String::new();
    let _ = half.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
    let mut rest = Vec::new();
    assert_eq!(
        idle.read_to_end(&mut rest).unwrap(),
        0,
        "the idle connection was closed"
    );
    // Others are served throughout.
    api.expect(200, "GET", "/v1/system", None);
}
