//! Isolation end to end, with real processes: instances in host processes
//! (`isolation = "process"`), their hosts killed with SIGKILL, restarts
//! with backoff and a crash-loop limit, the server killed with SIGKILL,
//! and a module that aborts its process on a given body.

mod common;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Server, TempDir, agent, config};
use serde_json::Value;

/// The default configuration with `isolated` (an instance name) in a host
/// and `extra` lines added to its table.
fn isolated(instances: &[(&str, &str)], extra: &str) -> String {
    let mut text = config(extra);
    for (name, lines) in instances {
        let header = format!("[instances.{name}]\n");
        assert!(text.contains(&header), "no instance {name}");
        text = text.replace(
            &header,
            &format!("{header}isolation = \"process\"\n{lines}\n"),
        );
    }
    text
}

struct Api {
    base: String,
    token: String,
}

impl Api {
    fn of(s: &Server) -> Api {
        let token = std::fs::read_to_string(&s.token_file).unwrap();
        Api {
            base: format!("http://{}", s.manage.unwrap()),
            token: token.trim().to_owned(),
        }
    }

    fn call(&self, method: &str, path: &str) -> (u16, Value) {
        let r = agent()
            .request(method, &format!("{}{path}", self.base))
            .set("Authorization", &format!("Bearer {}", self.token))
            .call();
        let (status, text) = match r {
            Ok(r) => (r.status(), r.into_string().unwrap_or_default()),
            Err(ureq::Error::Status(c, r)) => (c, r.into_string().unwrap_or_default()),
            Err(e) => panic!("{method} {path}: {e}"),
        };
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    fn instance(&self, name: &str) -> Value {
        let (status, v) = self.call("GET", &format!("/v1/instances/{name}"));
        assert_eq!(status, 200, "{v}");
        v
    }

    /// Polls `name` until `cond` holds (a minute at most: no timing is
    /// asserted, only that it happens). A reload remakes a changed
    /// instance, so it may be missing (404) for a moment.
    fn until(&self, name: &str, what: &str, cond: impl Fn(&Value) -> bool) -> Value {
        let end = Instant::now() + Duration::from_secs(60);
        loop {
            let (status, v) = self.call("GET", &format!("/v1/instances/{name}"));
            assert!(status == 200 || status == 404, "{status} {v}");
            if status == 200 && cond(&v) {
                return v;
            }
            assert!(Instant::now() < end, "{name} never {what}: {v}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The pid of `name`'s host once it runs (other than `not`).
    fn running_pid(&self, name: &str, not: Option<u64>) -> u64 {
        let v = self.until(name, "ran a new host", |v| {
            v["state"] == "running" && v["pid"].as_u64().is_some() && v["pid"].as_u64() != not
        });
        v["pid"].as_u64().unwrap()
    }
}

/// Whether process `pid` runs (a zombie does not).
fn alive(pid: u64) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with(['Z', 'X'])),
        Err(_) => false,
    }
}

fn kill9(pid: u64) {
    let ok = std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
}

fn until_dead(pid: u64) {
    let end = Instant::now() + Duration::from_secs(30);
    while alive(pid) {
        assert!(Instant::now() < end, "process {pid} is still there");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Status, body and Message-Id of a POST.
fn post(s: &Server, path: &str, body: &str) -> (u16, String, Option<String>) {
    match agent()
        .post(&s.url(path))
        .set("Content-Type", "text/plain")
        .send_string(body)
    {
        Ok(r) => (
            r.status(),
            String::new(),
            r.header("Message-Id").map(str::to_owned),
        ),
        Err(ureq::Error::Status(c, r)) => (c, r.into_string().unwrap_or_default(), None),
        Err(e) => panic!("POST {path}: {e}"),
    }
}

/// Takes and acks everything in a queue; the bodies.
fn drain(s: &Server, path: &str) -> Vec<String> {
    let mut got = Vec::new();
    loop {
        let r = agent()
            .get(&s.url(&format!("{path}?wait=0&lease=60")))
            .call()
            .unwrap();
        if r.status() != 200 {
            return got;
        }
        let id = r.header("Message-Id").unwrap().to_owned();
        got.push(r.into_string().unwrap());
        let d = agent()
            .delete(&s.url(&format!("{path}/messages/{id}")))
            .call()
            .unwrap();
        assert_eq!(d.status(), 204);
    }
}

#[test]
fn an_isolated_driver_serves_and_its_host_starts_and_stops_with_the_instance() {
    let s = Server::start(&isolated(&[("queues", ""), ("json", "")], ""));
    let api = Api::of(&s);
    let pid = api.running_pid("queues", None);
    assert!(alive(pid));
    let v = api.instance("queues");
    assert_eq!(v["isolation"], "process", "{v}");
    assert_ne!(pid, s.pid() as u64);
    assert_eq!(post(&s, "/queues/a", "one").0, 201);
    assert_eq!(drain(&s, "/queues/a"), ["one"]);
    // The parser in a host too: a valid body passes, an invalid one is
    // refused with the offset the host's parser found.
    let r = agent()
        .post(&s.url("/queues/j"))
        .set("Content-Type", "application/json")
        .send_string("{\"a\": 1}")
        .unwrap();
    assert_eq!(r.status(), 201);
    match agent()
        .post(&s.url("/queues/j"))
        .set("Content-Type", "application/json")
        .send_string("{\"a\": }")
    {
        Err(ureq::Error::Status(code, r)) => {
            let body = r.into_string().unwrap();
            assert!((400..500).contains(&code), "{code} {body}");
            assert!(body.contains("byte"), "{body}");
        }
        other => panic!("an invalid body passed: {other:?}"),
    }
    // Stopped: the host goes; the instance refuses with 503.
    let (status, v) = api.call("POST", "/v1/instances/queues/stop");
    assert_eq!(status, 200, "{v}");
    until_dead(pid);
    assert_eq!(api.instance("queues")["pid"], Value::Null);
    assert_eq!(post(&s, "/queues/a", "two").0, 503);
    // Started: a new host.
    let (status, v) = api.call("POST", "/v1/instances/queues/start");
    assert_eq!(status, 200, "{v}");
    let again = api.running_pid("queues", Some(pid));
    assert!(alive(again));
    assert_eq!(post(&s, "/queues/a", "three").0, 201);
    assert_eq!(drain(&s, "/queues/a"), ["three"]);
    // The server stops gracefully: its hosts go with it.
    assert!(s.terminate().success());
    until_dead(again);
}

#[test]
fn kill_9_of_a_durable_host_under_load_loses_no_confirmed_message() {
    let dir = TempDir::new();
    let text = isolated(&[("durable", "backoff_base_ms = 50")], "");
    let s = Arc::new(Server::start_at(&dir.0, &text, &["--threads", "2"]));
    let api = Api::of(&s);
    let first = api.running_pid("durable", None);
    let confirmed = Arc::new(Mutex::new(HashSet::new()));
    let mut refused = 0;
    let publishers: Vec<_> = (0..4)
        .map(|t| {
            let s = s.clone();
            let confirmed = confirmed.clone();
            std::thread::spawn(move || {
                let mut refused = 0;
                for i in 0..150 {
                    let body = format!("p{t}-{i}");
                    // Every call is answered: 201, or 503 while the host is
                    // down (a transport error or a hang fails the test).
                    match post(&s, "/durable/load", &body).0 {
                        201 => {
                            confirmed.lock().unwrap().insert(body);
                        }
                        503 => refused += 1,
                        other => panic!("{body}: {other}"),
                    }
                }
                refused
            })
        })
        .collect();
    // Kill the host once some are confirmed and more are in flight.
    while confirmed.lock().unwrap().len() < 100 {
        std::thread::sleep(Duration::from_millis(5));
    }
    kill9(first);
    for p in publishers {
        refused += p.join().unwrap();
    }
    api.until("durable", "was restarted", |v| v["restarts"] == 1);
    api.running_pid("durable", Some(first));
    let delivered: HashSet<String> = drain(&s, "/durable/load").into_iter().collect();
    let confirmed = confirmed.lock().unwrap();
    let lost: Vec<_> = confirmed.difference(&delivered).collect();
    assert!(lost.is_empty(), "confirmed and lost: {lost:?}");
    assert!(confirmed.len() >= 100);
    eprintln!(
        "{} confirmed, {refused} refused with 503, {} delivered",
        confirmed.len(),
        delivered.len()
    );
}

#[test]
fn a_crashing_host_restarts_with_backoff_until_its_crash_loop_limit() {
    let extra = "restart = \"on-failure\"\nbackoff_base_ms = 50\nbackoff_cap_ms = 60000\ncrash_loop_limit = 2";
    let s = Server::start(&isolated(&[("queues", extra)], ""));
    let api = Api::of(&s);
    let mut pid = api.running_pid("queues", None);
    for restarts in 1..=2 {
        kill9(pid);
        let v = api.until("queues", "restarted", |v| v["restarts"] == restarts);
        assert_eq!(v["crashes"], restarts, "{v}");
        pid = api.running_pid("queues", Some(pid));
        assert_eq!(post(&s, "/queues/a", "x").0, 201);
    }
    // The third crash in a row is past the limit: it stays failed, and
    // says why.
    kill9(pid);
    let v = api.until("queues", "gave up", |v| v["state"] == "failed");
    let why = v["last_error"].as_str().unwrap_or_default();
    assert!(why.contains("signal 9"), "{why}");
    assert!(why.contains("crash_loop_limit = 2"), "{why}");
    assert_eq!((v["restarts"].as_u64(), v["pid"].as_u64()), (Some(2), None));
    assert_eq!(v["restart_at"], Value::Null, "{v}");
    assert_eq!(post(&s, "/queues/a", "x").0, 503);
    // Started by hand, it runs again, with its crash count reset.
    let (status, v) = api.call("POST", "/v1/instances/queues/start");
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["crashes"], 0, "{v}");
    api.running_pid("queues", Some(pid));
    assert_eq!(post(&s, "/queues/b", "y").0, 201);
    // restart = "never": one crash and it stays failed.
    let text = isolated(&[("queues", "restart = \"never\"")], "");
    let s = Server::start(&text);
    let api = Api::of(&s);
    kill9(api.running_pid("queues", None));
    let v = api.until("queues", "failed", |v| v["state"] == "failed");
    assert!(
        v["last_error"]
            .as_str()
            .unwrap()
            .contains("restart = \"never\""),
        "{v}"
    );
    assert_eq!(v["restarts"], 0);
}

#[test]
fn kill_9_of_the_server_leaves_no_host() {
    let s = Server::start(&isolated(
        &[("queues", ""), ("durable", ""), ("text", "")],
        "",
    ));
    let api = Api::of(&s);
    let pids: Vec<u64> = ["queues", "durable", "text"]
        .iter()
        .map(|n| api.running_pid(n, None))
        .collect();
    assert!(pids.iter().all(|p| alive(*p)));
    s.kill9();
    for pid in pids {
        until_dead(pid);
    }
}

/// The server that links `driver.crashy` (testbin/crashy_server.rs).
fn crashy_server() -> &'static str {
    env!("CARGO_BIN_EXE_bindery-crashy")
}

fn crashy(isolation: &str) -> String {
    config(&format!(
        "[instances.crashy]\nmodule = \"driver.crashy\"\nbind = [\"/crashy/\"]\n{isolation}"
    ))
}

#[test]
fn a_module_that_aborts_on_a_body_costs_one_request_when_isolated() {
    let dir = TempDir::new();
    let text = crashy("isolation = \"process\"\nbackoff_base_ms = 3000\n");
    let s = Server::start_program(crashy_server(), &dir.0, &text, &["--threads", "2"]);
    let api = Api::of(&s);
    let pid = api.running_pid("crashy", None);
    assert_eq!(post(&s, "/crashy/a", "fine").0, 201);
    let (status, body, _) = post(&s, "/crashy/a", "abort");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("crashy"), "{body}");
    // The server lives and serves every other path.
    assert!(s.healthy());
    assert_eq!(post(&s, "/queues/a", "still here").0, 201);
    let v = api.until("crashy", "failed or restarted", |v| {
        v["state"] == "failed" || v["restarts"] == 1
    });
    if v["state"] == "failed" {
        let why = v["last_error"].as_str().unwrap();
        assert!(why.contains("SIGABRT"), "{why}");
    }
    let pid = api.running_pid("crashy", Some(pid));
    assert_eq!(post(&s, "/crashy/a", "fine again").0, 201);
    // A panic likewise; what the host said on its way out is in the
    // instance's log.
    let (status, body, _) = post(&s, "/crashy/a", "panic");
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("panic") || body.contains("status 101"),
        "{body}"
    );
    let v = api.until("crashy", "restarted again", |v| v["restarts"] == 2);
    assert_ne!(v["pid"].as_u64(), Some(pid));
    let (status, logs) = api.call("GET", "/v1/instances/crashy/logs");
    assert_eq!(status, 200);
    let logs = logs.to_string();
    assert!(logs.contains("driver.crashy was asked to panic"), "{logs}");
    assert!(logs.contains("exited with status 101"), "{logs}");
    assert!(s.healthy());
}

#[test]
fn a_module_that_aborts_in_process_takes_the_server_down() {
    let dir = TempDir::new();
    let s = Server::start_program(crashy_server(), &dir.0, &crashy(""), &["--threads", "2"]);
    assert_eq!(post(&s, "/crashy/a", "fine").0, 201);
    let r = agent()
        .post(&s.url("/crashy/a"))
        .set("Content-Type", "text/plain")
        .send_string("abort");
    assert!(
        matches!(r, Err(ureq::Error::Transport(_))),
        "the server answered: {r:?}"
    );
    until_dead(s.pid() as u64);
}

#[test]
fn terminals_and_dispatchers_cannot_be_isolated_and_say_why() {
    for name in ["http", "dispatcher"] {
        let dir = TempDir::new();
        let path = dir.0.join("b.toml");
        std::fs::write(&path, isolated(&[(name, "")], "")).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_bindery"))
            .arg("--config")
            .arg(&path)
            .arg("--check-config")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(err.contains(&format!("instance {name:?}")), "{err}");
        assert!(
            err.contains("isolation = \"process\" is not supported"),
            "{err}"
        );
        assert!(err.contains("docs/isolation.md"), "{err}");
    }
    // Restart settings without isolation are refused, placed at the instance.
    let dir = TempDir::new();
    let path = dir.0.join("b.toml");
    let text = config("").replace(
        "[instances.queues]\n",
        "[instances.queues]\nrestart = \"always\"\n",
    );
    std::fs::write(&path, text).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_bindery"))
        .arg("--config")
        .arg(&path)
        .arg("--check-config")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("instance \"queues\""), "{err}");
    assert!(
        err.contains("apply only with isolation = \"process\""),
        "{err}"
    );
}

#[test]
fn every_driver_and_parser_certifies_through_the_proxy_and_mutants_are_caught() {
    // The stock modules plus two that break their contracts: each in a
    // host of its own, through the proxy.
    let out = std::process::Command::new(crashy_server())
        .args(["certify", "--isolation", "process", "--json"])
        .env("RUST_LOG", "error")
        .output()
        .unwrap();
    let reports: Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut isolated = 0;
    let mut failing = Vec::new();
    for r in reports.as_array().unwrap() {
        if r["suite"].as_str().unwrap().contains("isolated") {
            isolated += 1;
        }
        let module = r["module"].as_str().unwrap();
        let failed: Vec<&Value> = r["cases"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| !c["failure"].is_null())
            .collect();
        match module {
            "driver.crashy" | "parser.lax" => {
                assert!(!failed.is_empty(), "{module} passed through the proxy")
            }
            _ => assert!(failed.is_empty(), "{module} failed: {failed:?}"),
        }
        if !failed.is_empty() {
            failing.push(module.to_owned());
        }
    }
    assert_eq!(isolated, 8, "{reports}");
    assert_eq!(failing, ["driver.crashy", "parser.lax"]);
    assert_eq!(out.status.code(), Some(1));
}

/// `bindery host --listen` on a free port, with `secret` in a file; its
/// address.
fn listening_host(dir: &std::path::Path, secret: &str) -> (std::process::Child, String) {
    use std::io::BufRead as _;
    let file = dir.join("host.secret");
    std::fs::write(&file, secret).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_bindery"))
        .arg("--data-dir")
        .arg(dir.join("host-data"))
        .args(["host", "--listen", "127.0.0.1:0", "--secret-file"])
        .arg(&file)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("bindery host: listening on ")
        .unwrap_or_else(|| panic!("{line}"))
        .to_owned();
    (child, addr)
}

#[test]
fn activation_none_connects_to_a_host_over_tcp_only_with_the_secret() {
    let dir = TempDir::new();
    let (mut host, addr) = listening_host(&dir.0, "s3cret-for-tests\n");
    let secret = |text: &str| {
        let f = dir.0.join(format!("server-{}.secret", text.len()));
        std::fs::write(&f, text).unwrap();
        f.display().to_string()
    };
    let on = |secret_file: String| {
        isolated(
            &[(
                "queues",
                &format!(
                    "host = {{ activation = \"none\", connect = \"{addr}\", secret_file = \"{secret_file}\" }}"
                ),
            )],
            "",
        )
    };
    // A wrong secret: the host closes; the instance cannot be made.
    let path = dir.0.join("wrong.toml");
    std::fs::write(&path, on(secret("not-it"))).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_bindery"))
        .arg("--config")
        .arg(&path)
        .arg("--check-config")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains(&format!("its host at {addr}")), "{err}");
    assert!(err.contains("wrong secret"), "{err}");
    // The right one: served by the host the server did not start.
    let s = Server::start(&on(secret("s3cret-for-tests")));
    let api = Api::of(&s);
    let v = api.until("queues", "ran", |v| v["state"] == "running");
    assert_eq!(v["pid"], Value::Null, "{v}");
    assert_eq!(post(&s, "/queues/tcp", "over tcp").0, 201);
    assert_eq!(drain(&s, "/queues/tcp"), ["over tcp"]);
    // The host outlives a server that stops, and serves the next one.
    assert!(s.terminate().success());
    let s = Server::start(&on(secret("s3cret-for-tests")));
    assert_eq!(post(&s, "/queues/tcp", "again").0, 201);
    assert_eq!(drain(&s, "/queues/tcp"), ["again"]);
    drop(s);
    let _ = host.kill();
    let _ = host.wait();
}

#[test]
fn a_hosts_limits_are_set_before_it_runs() {
    let limits = "host = { open_files = 200, memory_bytes = 8589934592 }";
    let s = Server::start(&isolated(&[("queues", limits)], ""));
    let api = Api::of(&s);
    let pid = api.running_pid("queues", None);
    let text = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let limit = |name: &str| {
        let line = text.lines().find(|l| l.starts_with(name)).unwrap();
        line[name.len()..]
            .split_whitespace()
            .take(2)
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    assert_eq!(limit("Max open files"), ["200", "200"], "{text}");
    assert_eq!(
        limit("Max address space"),
        ["8589934592", "8589934592"],
        "{text}"
    );
    assert_eq!(post(&s, "/queues/a", "limited").0, 201);
    // The server's own limits are untouched.
    let own = std::fs::read_to_string(format!("/proc/{}/limits", s.pid())).unwrap();
    assert!(!own.contains("8589934592"), "{own}");
}

#[test]
fn a_reload_moves_an_instance_into_a_host_and_back() {
    let plain = config("");
    let s = Server::start(&plain);
    let api = Api::of(&s);
    assert_eq!(api.instance("queues")["isolation"], "none");
    let data = s.data_dir.clone().unwrap();
    let write = |text: &str| {
        let text = text.replace("bindery-data", &data.display().to_string());
        std::fs::write(&s.config_path, text).unwrap();
        s.signal("HUP");
    };
    write(&isolated(&[("queues", "")], ""));
    let pid = api.running_pid("queues", None);
    assert_eq!(api.instance("queues")["isolation"], "process");
    assert_eq!(post(&s, "/queues/moved", "in a host").0, 201);
    // The effective configuration says so.
    let effective = agent()
        .get(&format!("{}/v1/config", api.base))
        .set("Authorization", &format!("Bearer {}", api.token))
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    assert!(effective.contains("isolation = \"process\""), "{effective}");
    write(&plain);
    api.until("queues", "came back in process", |v| {
        v["isolation"] == "none" && v["state"] == "running"
    });
    until_dead(pid);
    assert_eq!(post(&s, "/queues/moved", "in process").0, 201);
}

#[test]
fn a_hung_host_is_cut_off_and_its_calls_answered() {
    let dir = TempDir::new();
    let text =
        crashy("isolation = \"process\"\nbackoff_base_ms = 50\nhost = { hang_timeout_ms = 300 }\n");
    let s = Server::start_program(crashy_server(), &dir.0, &text, &["--threads", "2"]);
    let api = Api::of(&s);
    let pid = api.running_pid("crashy", None);
    // The host's thread never comes back from this publish: it stops
    // answering pings, is killed, and the publish is answered.
    let (status, body, _) = post(&s, "/crashy/a", "hang");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("answered no ping within 300 ms"), "{body}");
    until_dead(pid);
    api.running_pid("crashy", Some(pid));
    assert_eq!(post(&s, "/crashy/a", "fine").0, 201);
    let (_, logs) = api.call("GET", "/v1/instances/crashy/logs");
    assert!(logs.to_string().contains("hang_timeout_ms"), "{logs}");
}

#[test]
fn an_mqtt_qos1_publish_in_flight_when_its_host_dies_is_not_acknowledged() {
    use std::io::{BufReader, Write as _};
    let dir = TempDir::new();
    let text = crashy("isolation = \"process\"\n").replace(
        common::MQTT_PERSISTENCE,
        "config = { topic_root = \"/crashy/\" }",
    );
    let s = Server::start_program(crashy_server(), &dir.0, &text, &["--threads", "2"]);
    let mut c = common::mqtt::raw(s.mqtt.unwrap());
    c.write_all(&common::mqtt::connect_packet("pub", true, 0, None))
        .unwrap();
    assert_eq!(common::mqtt::connack(&mut c), [0x20, 2, 0, 0]);
    let mut out = Vec::new();
    common::mqtt::publish_packet(&mut out, "a", 1, 1, b"fine");
    common::mqtt::publish_packet(&mut out, "a", 1, 2, b"abort");
    c.write_all(&out).unwrap();
    // PUBACK for the first; none for the one whose host died under it:
    // the connection ends instead, so the client publishes it again.
    let mut r = BufReader::new(c);
    let mut acked = Vec::new();
    while let Ok((head, body)) = common::mqtt::read_packet(&mut r) {
        if head == 0x40 {
            acked.push(u16::from_be_bytes([body[0], body[1]]));
        }
    }
    assert_eq!(acked, [1]);
    assert!(s.healthy());
}

#[test]
fn bindery_ctl_creates_an_isolated_instance_and_lists_its_host() {
    let s = Server::start(&config(""));
    let ctl = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_bindery"))
            .arg("ctl")
            .args(["--url", &format!("http://{}", s.manage.unwrap())])
            .arg("--token-file")
            .arg(&s.token_file)
            .args(args)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        (out.status.code(), text, err)
    };
    let (code, _, err) = ctl(&[
        "create",
        "iso",
        "--module",
        "driver.memqueue",
        "--bind",
        "/iso/",
        "--isolation",
        "process",
        "--restart",
        "never",
    ]);
    assert_eq!(code, Some(0), "{err}");
    let pid = Api::of(&s).running_pid("iso", None);
    let (code, list, err) = ctl(&["list"]);
    assert_eq!(code, Some(0), "{err}");
    let row = list.lines().find(|l| l.starts_with("iso ")).unwrap();
    assert!(row.contains(&format!("pid {pid}")), "{list}");
    let queues = list.lines().find(|l| l.starts_with("queues ")).unwrap();
    assert!(queues.contains(" - "), "{list}");
    assert_eq!(post(&s, "/iso/a", "via ctl").0, 201);
    // A terminal cannot be: the server says why, and ctl exits 1.
    let (code, _, err) = ctl(&[
        "create",
        "web2",
        "--module",
        "terminal.http",
        "--bind",
        "127.0.0.9:0",
        "--isolation",
        "process",
    ]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("not supported by modules of class"), "{err}");
    let (code, _, _) = ctl(&["remove", "iso"]);
    assert_eq!(code, Some(0));
    until_dead(pid);
}

#[test]
fn a_parser_whose_host_is_gone_makes_publishes_503_not_400() {
    let s = Server::start(&isolated(&[("json", "restart = \"never\"")], ""));
    let api = Api::of(&s);
    let pid = api.running_pid("json", None);
    let publish = || match agent()
        .post(&s.url("/queues/j"))
        .set("Content-Type", "application/json")
        .send_string("{\"a\": 1}")
    {
        Ok(r) => (r.status(), None),
        Err(ureq::Error::Status(c, r)) => (c, r.header("Retry-After").map(str::to_owned)),
        Err(e) => panic!("POST: {e}"),
    };
    assert_eq!(publish().0, 201);
    kill9(pid);
    until_dead(pid);
    api.until("json", "failed", |v| v["state"] == "failed");
    // Nothing judged the body: try again later, not "your body is wrong".
    let (status, retry) = publish();
    assert_eq!(status, 503);
    assert_eq!(retry.as_deref(), Some("1"));
    // Other content types and the server go on.
    assert_eq!(post(&s, "/queues/t", "plain").0, 201);
    assert!(s.healthy());
}
