//! The auth class over real sockets with unmodified clients: curl with and
//! without `-u` against the HTTP terminal (401 with `WWW-Authenticate`,
//! 403, the `%u` rule), mosquitto_pub/sub with `-u`/`-P` (CONNACK 4 and 5
//! as the clients print them), SUBACK 0x80 and a refused subscription that
//! receives nothing, refused publishes at QoS 0 and 1, `bindery passwd`,
//! and a changed ACL taking effect on SIGHUP.
//!
//! Longer than most files here: one test per kind of client (curl,
//! mosquitto, rumqttc) and one for the files' life (`bindery passwd`,
//! SIGHUP and `bindery ctl reload`), sharing one server setup.

mod common;

use std::io::{BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::children::{Reaped, subscribed, text};
use common::mqtt::{connack, publish_packet, raw, read_packet};
use common::{Server, TempDir};

const ACL: &str = "
# who   actions            pattern
allow  alice  publish,consume    /queues/alice-only
allow  *      all                /queues/users/%u/#
allow  *      all                /topics/users/%u/#
allow  alice  subscribe          /topics/sensors/#
allow  bob    publish            /topics/sensors/#
";

/// `bindery passwd FILE USER --stdin` with `password`.
fn passwd(file: &Path, user: &str, password: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_bindery"))
        .arg("passwd")
        .arg(file)
        .args([user, "--stdin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A refused name ends it before it reads: the pipe may be closed.
    let _ = child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{password}\n").as_bytes());
    child.wait_with_output().unwrap()
}

/// A server whose HTTP and MQTT terminals use an `auth.file` instance with
/// alice and bob, and the rules in `acl`.
fn server(dir: &Path, acl: &str) -> Server {
    let file = dir.join("passwd");
    for (user, password) in [("alice", "wonderland"), ("bob", "builder")] {
        let o = passwd(&file, user, password);
        assert!(o.status.success(), "{}", text(&o));
    }
    std::fs::write(dir.join("acl"), acl).unwrap();
    let config = common::config(&format!(
        r#"
[instances.users]
module = "auth.file"
[instances.users.config]
password_file = "{passwd}"
acl_file = "{acl}"

[instances.http.config]
auth = "default"

[instances.mqtt.config]
auth = "default"
"#,
        passwd = file.display(),
        acl = dir.join("acl").display(),
    ));
    Server::start_at(dir, &config, &["--threads", "2"])
}

/// curl: the status code and the response head.
fn curl(args: &[&str]) -> (String, String) {
    let o = Command::new("curl")
        .args(["-sS", "--max-time", "10", "-D", "-", "-o", "/dev/null"])
        .args(["-w", "%{http_code}"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    let code = out[out.len().saturating_sub(3)..].to_owned();
    (code, out)
}

fn post(s: &Server, user: Option<&str>, path: &str) -> (String, String) {
    let url = s.url(path);
    let mut args = vec![
        "-X",
        "POST",
        "--data-binary",
        "hello",
        "-H",
        "Content-Type: text/plain",
    ];
    if let Some(u) = user {
        args.extend(["-u", u]);
    }
    args.push(&url);
    curl(&args)
}

/// The head without the lines that differ between any two answers.
fn head_only(h: &str) -> String {
    h.lines()
        .filter(|l| !l.to_ascii_lowercase().starts_with("date:"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn curl_gets_401_with_a_challenge_403_when_not_allowed_and_in_with_the_right_password() {
    let dir = TempDir::new();
    let s = server(&dir.0, ACL);

    let (code, head) = post(&s, None, "/queues/alice-only");
    assert_eq!(code, "401", "{head}");
    assert!(
        head.contains("WWW-Authenticate: Basic realm=\"bindery\""),
        "{head}"
    );
    // A wrong password and an unknown user get the very same answer.
    let (code, wrong) = post(&s, Some("alice:not-it"), "/queues/alice-only");
    assert_eq!(code, "401", "{wrong}");
    let (code, unknown) = post(&s, Some("mallory:wonderland"), "/queues/alice-only");
    assert_eq!(code, "401", "{unknown}");
    assert_eq!(head_only(&wrong), head_only(&unknown));

    let (code, head) = post(&s, Some("alice:wonderland"), "/queues/alice-only");
    assert_eq!(code, "201", "{head}");
    let (code, head) = curl(&[
        "-u",
        "alice:wonderland",
        &s.url("/queues/alice-only?wait=5"),
    ]);
    assert_eq!(code, "200", "{head}");
    // Authenticated, not allowed.
    let (code, head) = post(&s, Some("bob:builder"), "/queues/alice-only");
    assert_eq!(code, "403", "{head}");
    let (code, head) = curl(&["-u", "bob:builder", &s.url("/queues/alice-only")]);
    assert_eq!(code, "403", "{head}");
    // %u: each user's own space, and only their own.
    let (code, head) = post(&s, Some("bob:builder"), "/queues/users/bob/inbox");
    assert_eq!(code, "201", "{head}");
    let (code, head) = post(&s, Some("bob:builder"), "/queues/users/alice/inbox");
    assert_eq!(code, "403", "{head}");
    // A bearer token is not a user of auth.file: 401.
    let (code, head) = curl(&[
        "-H",
        "Authorization: Bearer abc",
        &s.url("/queues/users/bob/inbox"),
    ]);
    assert_eq!(code, "401", "{head}");
    // Several requests on one connection: decisions come from its cache.
    let url = s.url("/queues/users/bob/inbox");
    let o = Command::new("curl")
        .args(["-sS", "--max-time", "10", "-w", "%{http_code} "])
        .args(["-o", "/dev/null", "-o", "/dev/null", "-o", "/dev/null"])
        .args(["-u", "bob:builder", "-X", "POST", "--data-binary", "x"])
        .args([&url, &url, &url])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "201 201 201 ",
        "{}",
        text(&o)
    );

    // Health and metrics stay open; failed logins are counted.
    assert!(s.healthy());
    let failed = common::metric(&s, "bindery_http_auth_failures_total", "").unwrap();
    assert!(failed >= 2, "{failed} failed logins counted");
}

fn mosquitto(tool: &str, at: SocketAddr, args: &[&str]) -> Command {
    let mut c = Command::new(tool);
    c.args(["-h", &at.ip().to_string(), "-p", &at.port().to_string()])
        .args(args)
        .stdin(Stdio::null());
    c
}

/// A CONNECT packet with a user name and password.
fn connect_as(id: &str, user: &str, password: &str) -> Vec<u8> {
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 4, 0x02 | 0x80 | 0x40, 0, 0];
    for field in [id, user, password] {
        body.extend_from_slice(&(field.len() as u16).to_be_bytes());
        body.extend_from_slice(field.as_bytes());
    }
    let mut out = vec![0x10, body.len() as u8];
    out.extend(body);
    out
}

fn login(at: SocketAddr, id: &str, user: &str, password: &str) -> TcpStream {
    let mut s = raw(at);
    s.write_all(&connect_as(id, user, password)).unwrap();
    assert_eq!(connack(&mut s), [0x20, 2, 0, 0], "{user}: CONNACK");
    s
}

#[test]
fn mosquitto_clients_get_connack_4_and_5_and_refused_filters_receive_nothing() {
    let dir = TempDir::new();
    let s = server(&dir.0, ACL);
    let mqtt = s.mqtt.expect("mqtt");

    // Bad credentials (CONNACK 4): a wrong password and an unknown user
    // print the same; none at all is "not authorised" (CONNACK 5).
    let refused = |args: &[&str]| {
        let o = mosquitto("mosquitto_sub", mqtt, args)
            .args(["-t", "users/alice/x", "-C", "1", "-W", "10"])
            .output()
            .unwrap();
        assert!(!o.status.success(), "{}", text(&o));
        String::from_utf8_lossy(&o.stderr).to_string()
    };
    let wrong = refused(&["-u", "alice", "-P", "not-it"]);
    assert!(wrong.contains("bad user name or password"), "{wrong}");
    let unknown = refused(&["-u", "mallory", "-P", "wonderland"]);
    assert_eq!(wrong, unknown);
    let none = refused(&[]);
    assert!(none.contains("not authorised"), "{none}");
    for code in [4, 5] {
        let mut c = raw(mqtt);
        let packet = if code == 4 {
            connect_as("x", "alice", "nope")
        } else {
            common::mqtt::connect_packet("x", true, 0, None)
        };
        c.write_all(&packet).unwrap();
        assert_eq!(connack(&mut c), [0x20, 2, 0, code]);
        assert!(common::mqtt::closed(&mut c));
    }
    let failed = common::metric(&s, "bindery_mqtt_auth_failures_total", "").unwrap();
    assert!(failed >= 3, "{failed} failed logins counted");

    // mosquitto_sub with every filter refused says so.
    let o = mosquitto("mosquitto_sub", mqtt, &["-u", "bob", "-P", "builder"])
        .args(["-t", "sensors/#", "-C", "1", "-W", "10"])
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(said.contains("denied"), "{}", text(&o));

    // bob: one filter refused (0x80), one granted, in one SUBSCRIBE.
    let mut bob = login(mqtt, "bob", "bob", "builder");
    let mut sub = vec![0x82, 0];
    let mut body = vec![0, 7];
    for f in ["sensors/#", "users/bob/#"] {
        body.extend_from_slice(&(f.len() as u16).to_be_bytes());
        body.extend_from_slice(f.as_bytes());
        body.push(1);
    }
    sub[1] = body.len() as u8;
    sub.extend(body);
    bob.write_all(&sub).unwrap();
    let mut r = BufReader::new(bob.try_clone().unwrap());
    let (head, body) = read_packet(&mut r).unwrap();
    assert_eq!((head, body), (0x90, vec![0, 7, 0x80, 1]), "SUBACK");
    // bob publishes to sensors (allowed), then to his own space: only the
    // second comes back, the refused filter receives nothing.
    let mut out = Vec::new();
    publish_packet(&mut out, "sensors/t1", 1, 1, b"not for bob's eyes");
    bob.write_all(&out).unwrap();
    let (head, _) = read_packet(&mut r).unwrap();
    assert_eq!(head, 0x40, "PUBACK for the allowed publish");
    let mut out = Vec::new();
    publish_packet(&mut out, "users/bob/note", 1, 2, b"mine");
    bob.write_all(&out).unwrap();
    let mut got = Vec::new();
    while got.len() < 2 {
        let (head, body) = read_packet(&mut r).unwrap();
        got.push((head >> 4, body));
    }
    let publishes: Vec<&Vec<u8>> = got
        .iter()
        .filter(|(t, _)| *t == 3)
        .map(|(_, b)| b)
        .collect();
    assert_eq!(publishes.len(), 1, "{got:?}");
    assert!(publishes[0].ends_with(b"mine"), "{got:?}");

    // alice subscribes to sensors with mosquitto_sub; her QoS 0 publish
    // there (not allowed) is dropped, bob's arrives.
    let watcher = mosquitto("mosquitto_sub", mqtt, &["-u", "alice", "-P", "wonderland"])
        .args(["-t", "sensors/#", "-C", "1", "-W", "20", "-v"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let watcher = Reaped(Some(watcher));
    subscribed(&s, "/topics/sensors/#");
    let o = mosquitto("mosquitto_pub", mqtt, &["-u", "alice", "-P", "wonderland"])
        .args(["-t", "sensors/t1", "-m", "dropped", "-q", "0"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let o = mosquitto("mosquitto_pub", mqtt, &["-u", "bob", "-P", "builder"])
        .args(["-t", "sensors/t1", "-m", "from bob", "-q", "1"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let o = watcher.output();
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "sensors/t1 from bob\n",
        "{}",
        text(&o)
    );

    // A refused QoS 1 publish closes the connection; others go on.
    let mut alice = login(mqtt, "alice", "alice", "wonderland");
    let mut out = Vec::new();
    publish_packet(&mut out, "sensors/t1", 1, 9, b"refused");
    alice.write_all(&out).unwrap();
    assert!(
        common::mqtt::closed(&mut alice),
        "still open after a refused QoS 1 publish"
    );
    let mut out = Vec::new();
    publish_packet(&mut out, "users/bob/again", 1, 3, b"still here");
    bob.write_all(&out).unwrap();
    let (head, _) = read_packet(&mut r).unwrap();
    assert!(head == 0x40 || head >> 4 == 3, "bob is still served");
    assert!(s.healthy());
}

#[test]
fn bindery_passwd_round_trip_and_sighup_applies_a_changed_acl() {
    let dir = TempDir::new();
    let file = dir.0.join("passwd");
    // Refusals: a bad name, an empty password.
    let o = passwd(&file, "a/b", "x");
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let o = passwd(&file, "carol", "");
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let o = passwd(&file, "carol", "sesame");
    assert!(o.status.success(), "{}", text(&o));
    let written = std::fs::read_to_string(&file).unwrap();
    assert!(written.starts_with("carol:$argon2id$"), "{written}");
    assert!(!written.contains("sesame"));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    let s = server(&dir.0, "allow carol publish /queues/a\n");
    assert_eq!(post(&s, Some("carol:sesame"), "/queues/a").0, "201");
    assert_eq!(post(&s, Some("carol:sesame"), "/queues/b").0, "403");

    // Change the rules and the password, then SIGHUP.
    std::fs::write(dir.0.join("acl"), "allow carol publish /queues/b\n").unwrap();
    let o = passwd(&file, "carol", "open");
    assert!(o.status.success(), "{}", text(&o));
    s.signal("HUP");
    let mut applied = false;
    for _ in 0..100 {
        if post(&s, Some("carol:open"), "/queues/b").0 == "201" {
            applied = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(applied, "the reload did not apply the new password and ACL");
    assert_eq!(post(&s, Some("carol:open"), "/queues/a").0, "403");
    assert_eq!(post(&s, Some("carol:sesame"), "/queues/b").0, "401");

    // Deleted, and reloaded through the management API (`bindery ctl
    // reload`, which answers once applied): gone at once.
    let o = Command::new(env!("CARGO_BIN_EXE_bindery"))
        .arg("passwd")
        .arg(&file)
        .args(["carol", "--delete"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    ctl_reload(&s);
    assert_eq!(post(&s, Some("carol:open"), "/queues/b").0, "401");
    // A subscription the new rules no longer allow is cancelled: alice
    // holds news/# and own/#, loses news/#, and then receives only own/.
    let rules = "allow alice publish /queues/c\nallow alice all /topics/own/#\nallow alice publish /topics/news/#\n";
    std::fs::write(
        dir.0.join("acl"),
        format!("{rules}allow alice subscribe /topics/news/#\n"),
    )
    .unwrap();
    ctl_reload(&s);
    let mqtt = s.mqtt.expect("mqtt");
    let mut alice = login(mqtt, "alice", "alice", "wonderland");
    for (id, filter) in [(1, "news/#"), (2, "own/#")] {
        alice
            .write_all(&common::mqtt::subscribe_packet(id, filter, 1))
            .unwrap();
    }
    let mut r = BufReader::new(alice.try_clone().unwrap());
    for id in [1u8, 2] {
        assert_eq!(
            read_packet(&mut r).unwrap(),
            (0x90, vec![0, id, 1]),
            "SUBACK"
        );
    }
    std::fs::write(dir.0.join("acl"), rules).unwrap();
    ctl_reload(&s);
    let mut out = Vec::new();
    publish_packet(&mut out, "news/x", 1, 7, b"revoked");
    publish_packet(&mut out, "own/x", 1, 8, b"kept");
    alice.write_all(&out).unwrap();
    let mut got = Vec::new();
    loop {
        let (head, body) = read_packet(&mut r).unwrap();
        if head >> 4 == 3 {
            got.push(String::from_utf8_lossy(&body).to_string());
            if body.ends_with(b"kept") {
                break;
            }
        }
    }
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(post(&s, Some("alice:wonderland"), "/queues/c").0 == "201");
    // A reload with an ACL that no longer parses keeps the rules in effect.
    std::fs::write(dir.0.join("acl"), "allow alice publish\n").unwrap();
    ctl_reload(&s);
    assert_eq!(post(&s, Some("alice:wonderland"), "/queues/c").0, "201");

    // The auth instance's own configuration changes: it is made anew, and
    // the terminals follow it (anonymous clients get in now).
    std::fs::write(
        dir.0.join("acl"),
        "allow alice publish /queues/c\nallow @anonymous publish /queues/open\n",
    )
    .unwrap();
    assert_eq!(post(&s, None, "/queues/open").0, "401");
    let config = std::fs::read_to_string(&s.config_path).unwrap();
    let config = config.replace("acl_file =", "anonymous = true\nacl_file =");
    std::fs::write(&s.config_path, config).unwrap();
    ctl_reload(&s);
    assert_eq!(post(&s, None, "/queues/open").0, "201");
    assert_eq!(post(&s, None, "/queues/c").0, "403");
    assert_eq!(post(&s, Some("alice:wonderland"), "/queues/c").0, "201");
    let mut c = raw(s.mqtt.expect("mqtt"));
    c.write_all(&common::mqtt::connect_packet("anon", true, 0, None))
        .unwrap();
    assert_eq!(connack(&mut c), [0x20, 2, 0, 0], "anonymous MQTT client");
    assert!(s.healthy());
}

/// `bindery ctl reload` with the server's own configuration file.
fn ctl_reload(s: &Server) {
    let o = Command::new(env!("CARGO_BIN_EXE_bindery"))
        .arg("ctl")
        .args(["--url", &format!("http://{}", s.manage.unwrap())])
        .arg("--token-file")
        .arg(&s.token_file)
        .arg("reload")
        .arg(&s.config_path)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
}

/// A rumqttc client with credentials: its events on a channel.
fn rumqttc_client(
    at: SocketAddr,
    id: &str,
    user: &str,
    password: &str,
) -> (
    rumqttc::Client,
    std::sync::mpsc::Receiver<Result<rumqttc::Packet, Box<rumqttc::ConnectionError>>>,
) {
    let mut o = rumqttc::MqttOptions::new(id, at.ip().to_string(), at.port());
    o.set_credentials(user, password);
    let (client, mut conn) = rumqttc::Client::new(o, 10);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for ev in conn.iter() {
            let stop = ev.is_err();
            let sent = match ev {
                Ok(rumqttc::Event::Incoming(p)) => tx.send(Ok(p)),
                Ok(_) => Ok(()),
                Err(e) => tx.send(Err(Box::new(e))),
            };
            if stop || sent.is_err() {
                return;
            }
        }
    });
    (client, rx)
}

#[test]
fn rumqttc_gets_connack_4_its_grants_and_its_refusals() {
    use rumqttc::{ConnectReturnCode, ConnectionError, Packet, QoS, SubscribeFilter};
    let dir = TempDir::new();
    let s = server(&dir.0, ACL);
    let mqtt = s.mqtt.expect("mqtt");
    let next =
        |rx: &std::sync::mpsc::Receiver<_>| rx.recv_timeout(Duration::from_secs(10)).unwrap();

    let (_c, rx) = rumqttc_client(mqtt, "intruder", "alice", "nope");
    match next(&rx).map_err(|e| *e) {
        Err(ConnectionError::ConnectionRefused(code)) => {
            assert_eq!(code, ConnectReturnCode::BadUserNamePassword)
        }
        other => panic!("{other:?}"),
    }

    let (alice, rx) = rumqttc_client(mqtt, "alice-r", "alice", "wonderland");
    assert!(matches!(next(&rx), Ok(Packet::ConnAck(_))));
    alice
        .subscribe_many([
            SubscribeFilter::new("sensors/#".into(), QoS::AtLeastOnce),
            SubscribeFilter::new("users/bob/#".into(), QoS::AtLeastOnce),
        ])
        .unwrap();
    match next(&rx) {
        Ok(Packet::SubAck(ack)) => assert_eq!(
            ack.return_codes,
            [
                rumqttc::SubscribeReasonCode::Success(QoS::AtLeastOnce),
                rumqttc::SubscribeReasonCode::Failure
            ]
        ),
        other => panic!("{other:?}"),
    }
    let (bob, brx) = rumqttc_client(mqtt, "bob-r", "bob", "builder");
    assert!(matches!(next(&brx), Ok(Packet::ConnAck(_))));
    bob.publish(
        "users/bob/private",
        QoS::AtLeastOnce,
        false,
        "not for alice",
    )
    .unwrap();
    bob.publish("sensors/t2", QoS::AtLeastOnce, false, "for alice")
        .unwrap();
    loop {
        match next(&rx) {
            Ok(Packet::Publish(p)) => {
                assert_eq!(p.topic, "sensors/t2", "{p:?}");
                break;
            }
            Ok(_) => {}
            Err(e) => panic!("{e}"),
        }
    }
}

#[test]
fn a_route_is_guarded_like_the_messaging_paths() {
    let dir = TempDir::new();
    let acl = "allow alice consume /reports/#\n";
    let file = dir.0.join("passwd");
    for (user, password) in [("alice", "wonderland"), ("bob", "builder")] {
        assert!(passwd(&file, user, password).status.success());
    }
    std::fs::write(dir.0.join("acl"), acl).unwrap();
    let config = common::config(&format!(
        r#"
[instances.users]
module = "auth.file"
[instances.users.config]
password_file = "{passwd}"
acl_file = "{acl}"

[instances.http.config]
auth = "default"

[instances.report]
module = "route.exec"
bind = ["GET /reports/{{name}}"]
[instances.report.config]
command = ["echo", "report {{name}}"]
placeholders = {{ name = "[a-z]+" }}
"#,
        passwd = file.display(),
        acl = dir.0.join("acl").display(),
    ));
    let s = Server::start_at(&dir.0, &config, &["--threads", "2"]);
    let url = s.url("/reports/daily");
    let status = |user: Option<&str>| {
        let mut args = vec![];
        if let Some(u) = user {
            args.extend(["-u", u]);
        }
        args.push(&url);
        curl(&args).0
    };
    assert_eq!(status(None), "401", "no credentials");
    assert_eq!(status(Some("alice:nope")), "401", "a wrong password");
    assert_eq!(
        status(Some("bob:builder")),
        "403",
        "not allowed by the rules"
    );
    assert_eq!(status(Some("alice:wonderland")), "200");
    let o = Command::new("curl")
        .args(["-sS", "--max-time", "10", "-u", "alice:wonderland", &url])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&o.stdout), "report daily\n");
}
