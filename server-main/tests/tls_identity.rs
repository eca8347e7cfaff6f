//! The TLS client certificate as the MQTT user
//! (`use_identity_as_username`), with unmodified clients: mosquitto_pub
//! and mosquitto_sub with `--cafile --cert --key` against an `auth.file`
//! ACL that uses `%u`. Certificates are made here (rcgen): alice's and
//! bob's by common name, carol's by an e-mail alternative name only, and
//! one that names nobody.

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::children::{Reaped, subscribed, text};
use common::{Server, TempDir};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, SanType,
};

/// Where the listeners are bound.
const MQTTS: &str = "127.0.0.11:0";
const WSS: &str = "127.0.0.12:0";

/// The address a listener bound as `bind` got.
fn at(s: &Server, bind: &str) -> std::net::SocketAddr {
    let ip = &bind[..bind.len() - 2];
    s.listening
        .iter()
        .map(|(_, a)| *a)
        .find(|a| a.ip().to_string() == ip)
        .unwrap_or_else(|| panic!("nothing listens on {ip}"))
}

const ACL: &str = "
allow  *  all  /topics/users/%u/#
";

/// A CA, a server certificate for 127.0.0.11 and .12, and client certificates
/// from the CA for alice, bob, carol (`carol@example.org`, no CN) and
/// nobody (no name at all), as PEM files under `dir`.
fn make_certificates(dir: &Path) {
    let ca_key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name
        .push(DnType::CommonName, "Bindery test CA");
    let ca = p.self_signed(&ca_key).unwrap();
    let write = |name: &str, text: String| std::fs::write(dir.join(name), text).unwrap();
    write("ca.pem", ca.pem());

    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.subject_alt_names = ["127.0.0.11", "127.0.0.12"]
        .map(|ip| SanType::IpAddress(ip.parse().unwrap()))
        .to_vec();
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    write("server.pem", p.signed_by(&key, &ca, &ca_key).unwrap().pem());
    write("server.key", key.serialize_pem());

    for (name, cn, email) in [
        ("alice", Some("alice"), None),
        ("bob", Some("bob"), None),
        ("carol", None, Some("carol@example.org")),
        ("nobody", None, None),
    ] {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name = DistinguishedName::new();
        if let Some(cn) = cn {
            p.distinguished_name.push(DnType::CommonName, cn);
        }
        if let Some(email) = email {
            p.subject_alt_names = vec![SanType::Rfc822Name(email.try_into().unwrap())];
        }
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        write(
            &format!("{name}.pem"),
            p.signed_by(&key, &ca, &ca_key).unwrap().pem(),
        );
        write(&format!("{name}.key"), key.serialize_pem());
    }
}

/// A server with an `auth.file` instance (no passwords: certificates
/// only) and an MQTT terminal taking the certificate's name as the user.
fn server(dir: &Path) -> Server {
    make_certificates(dir);
    std::fs::write(dir.join("passwd"), "").unwrap();
    std::fs::write(dir.join("acl"), ACL).unwrap();
    let f = |name: &str| dir.join(name).display().to_string();
    let config = common::config(&format!(
        r#"
[instances.users]
module = "auth.file"
[instances.users.config]
password_file = "{passwd}"
acl_file = "{acl}"

[instances.mqtts]
module = "terminal.mqtt"
bind = ["{MQTTS}"]
[instances.mqtts.config]
auth = "default"
use_identity_as_username = true
[instances.mqtts.config.tls]
cert = "{cert}"
key = "{key}"
client_ca = "{ca}"
[instances.mqtts.config.websocket]
bind = ["{WSS}"]
"#,
        passwd = f("passwd"),
        acl = f("acl"),
        cert = f("server.pem"),
        key = f("server.key"),
        ca = f("ca.pem"),
    ));
    Server::start_at(dir, &config, &[])
}

/// mosquitto_pub or mosquitto_sub to the listener, as `who` (a
/// certificate's file name; none: no certificate).
fn mosquitto(tool: &str, s: &Server, dir: &Path, who: Option<&str>, args: &[&str]) -> Command {
    let at = at(s, MQTTS);
    let mut c = Command::new(tool);
    c.args(["-h", &at.ip().to_string(), "-p", &at.port().to_string()])
        .arg("--cafile")
        .arg(dir.join("ca.pem"));
    if let Some(who) = who {
        c.arg("--cert")
            .arg(dir.join(format!("{who}.pem")))
            .arg("--key")
            .arg(dir.join(format!("{who}.key")));
    }
    c.args(args).stdin(Stdio::null());
    c
}

fn run(mut c: Command) -> Output {
    c.output().expect("the client runs")
}

#[test]
fn the_certificate_is_the_user_for_the_acl_and_nothing_else_gets_in() {
    let dir = TempDir::new();
    let s = server(&dir.0);
    let d = &dir.0;

    // alice subscribes to her space, claiming to be bob with a password:
    // CONNECT's username is ignored, the certificate says alice.
    let sub = mosquitto(
        "mosquitto_sub",
        &s,
        d,
        Some("alice"),
        &["-u", "bob", "-P", "x", "-t", "users/alice/#", "-C", "1"],
    )
    .args(["-W", "20", "-v"])
    .stdout(Stdio::piped())
    .spawn()
    .unwrap();
    let sub = Reaped(Some(sub));
    subscribed(&s, "/topics/users/alice/#");
    let o = run(mosquitto(
        "mosquitto_pub",
        &s,
        d,
        Some("alice"),
        &["-t", "users/alice/note", "-m", "mine", "-q", "1"],
    ));
    assert!(o.status.success(), "{}", text(&o));
    let o = sub.output();
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "users/alice/note mine\n",
        "{}",
        text(&o)
    );

    // Elsewhere she is refused: SUBACK 0x80 (mosquitto_sub says denied),
    // and a QoS 1 publish closes her connection.
    let o = run(mosquitto(
        "mosquitto_sub",
        &s,
        d,
        Some("alice"),
        &["-t", "users/bob/#", "-C", "1", "-W", "10"],
    ));
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(said.contains("denied"), "{}", text(&o));
    let o = run(mosquitto(
        "mosquitto_pub",
        &s,
        d,
        Some("alice"),
        &["-t", "users/bob/x", "-m", "not hers", "-q", "1"],
    ));
    assert!(!o.status.success(), "refused QoS 1 publish: {}", text(&o));

    // carol is named by her e-mail alternative name.
    let o = run(mosquitto(
        "mosquitto_pub",
        &s,
        d,
        Some("carol"),
        &["-t", "users/carol@example.org/x", "-m", "hi", "-q", "1"],
    ));
    assert!(o.status.success(), "{}", text(&o));

    // A certificate naming nobody: CONNACK 4; no certificate: the
    // handshake fails.
    let o = run(mosquitto(
        "mosquitto_pub",
        &s,
        d,
        Some("nobody"),
        &["-t", "users/x/y", "-m", "x", "-q", "1"],
    ));
    assert!(!o.status.success(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("bad user name or password"),
        "{}",
        text(&o)
    );
    let o = run(mosquitto(
        "mosquitto_pub",
        &s,
        d,
        None,
        &["-u", "alice", "-t", "users/alice/x", "-m", "x", "-q", "1"],
    ));
    assert!(!o.status.success(), "no certificate: {}", text(&o));

    // Meanwhile bob is served as before.
    let o = run(mosquitto(
        "mosquitto_pub",
        &s,
        d,
        Some("bob"),
        &["-t", "users/bob/x", "-m", "still here", "-q", "1"],
    ));
    assert!(o.status.success(), "{}", text(&o));
    let failed = common::metric(&s, "bindery_mqtt_auth_failures_total", "\"mqtts\"").unwrap();
    assert!(failed >= 1, "{failed} failed logins counted");
    assert!(s.healthy());
}

#[test]
fn over_wss_the_certificate_is_the_user_too() {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    use std::sync::Arc;

    let dir = TempDir::new();
    let s = server(&dir.0);
    let wss = at(&s, WSS);
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(dir.0.join("ca.pem")).unwrap())
        .unwrap();
    let cert = CertificateDer::from_pem_file(dir.0.join("alice.pem")).unwrap();
    let key = PrivateKeyDer::from_pem_file(dir.0.join("alice.key")).unwrap();
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_client_auth_cert(vec![cert], key)
    .unwrap();
    let name = ServerName::try_from("127.0.0.12").unwrap();
    let conn = rustls::ClientConnection::new(Arc::new(tls), name).unwrap();
    let tcp = std::net::TcpStream::connect(wss).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let stream = rustls::StreamOwned::new(conn, tcp);
    let mut c = common::ws::connect_over(&format!("wss://{wss}/mqtt"), stream);
    // No username, and still in (CONNACK 0): the certificate says alice.
    c.mqtt_connect("over-wss");
    c.subscribe("users/alice/#", 1);
    c.send(&common::mqtt::subscribe_packet(2, "users/bob/#", 1));
    assert_eq!(c.packet(), (0x90, vec![0, 2, 0x80]), "SUBACK");
    assert!(s.healthy());
}

#[test]
fn use_identity_as_username_without_a_client_ca_stops_the_server_naming_the_field() {
    let dir = TempDir::new();
    make_certificates(&dir.0);
    let f = |name: &str| dir.0.join(name).display().to_string();
    let config = common::config(&format!(
        "[instances.mqtts]\nmodule = \"terminal.mqtt\"\nbind = [\"{MQTTS}\"]\n\
         [instances.mqtts.config]\nuse_identity_as_username = true\n\
         [instances.mqtts.config.tls]\ncert = \"{}\"\nkey = \"{}\"\n",
        f("server.pem"),
        f("server.key"),
    ));
    let path = dir.0.join("bindery.toml");
    std::fs::write(
        &path,
        config.replace("bindery-data", &dir.0.join("data").display().to_string()),
    )
    .unwrap();
    let o = run({
        let mut c = Command::new(env!("CARGO_BIN_EXE_bindery"));
        c.arg("--config").arg(&path).arg("--check-config");
        c
    });
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(
        err.contains("\"mqtts\"")
            && err.contains("use_identity_as_username")
            && err.contains("tls.client_ca"),
        "{err}"
    );
}
