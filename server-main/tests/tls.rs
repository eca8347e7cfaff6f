//! TLS on the terminals, with unmodified clients: curl `--cacert` against
//! the HTTP terminal, mosquitto_pub/sub `--cafile` against the MQTT
//! terminal, and a client certificate for mutual TLS. Certificates are made
//! here (rcgen). A handshake that fails costs only its own connection.

mod common;

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::children::{Reaped, subscribed, text};
use common::{Server, TempDir};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, SanType,
};

/// Where each TLS listener is bound.
const HTTPS: &str = "127.0.0.4:0";
const MQTTS: &str = "127.0.0.5:0";
const MQTTS_MUTUAL: &str = "127.0.0.6:0";

/// A CA, a server certificate for the loopback addresses, a client
/// certificate from the same CA, and one from a CA the server does not
/// trust; written as PEM files under `dir`.
fn make_certificates(dir: &Path) {
    let ca = |name: &str| {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(DnType::CommonName, name);
        let cert = p.self_signed(&key).unwrap();
        (cert, key)
    };
    let (ca_cert, ca_key) = ca("Bindery test CA");
    let (rogue_cert, rogue_key) = ca("Somebody else's CA");
    let write = |name: &str, text: String| std::fs::write(dir.join(name), text).unwrap();
    write("ca.pem", ca_cert.pem());

    let server_key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    for ip in ["127.0.0.4", "127.0.0.5", "127.0.0.6"] {
        p.subject_alt_names
            .push(SanType::IpAddress(ip.parse().unwrap()));
    }
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let server = p.signed_by(&server_key, &ca_cert, &ca_key).unwrap();
    write("server.pem", server.pem());
    write("server.key", server_key.serialize_pem());

    for (name, issuer, issuer_key) in [
        ("client", &ca_cert, &ca_key),
        ("rogue", &rogue_cert, &rogue_key),
    ] {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::CommonName, name);
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let cert = p.signed_by(&key, issuer, issuer_key).unwrap();
        write(&format!("{name}.pem"), cert.pem());
        write(&format!("{name}.key"), key.serialize_pem());
    }
}

fn tls_config(certs: &Path) -> String {
    let c = |f: &str| certs.join(f).display().to_string();
    common::config(&format!(
        r#"
[instances.https]
module = "terminal.http"
bind = ["{HTTPS}"]
[instances.https.config.tls]
cert = "{server}"
key = "{key}"

[instances.mqtts]
module = "terminal.mqtt"
bind = ["{MQTTS}"]
[instances.mqtts.config.tls]
cert = "{server}"
key = "{key}"

[instances.mqtts-mutual]
module = "terminal.mqtt"
bind = ["{MQTTS_MUTUAL}"]
[instances.mqtts-mutual.config.tls]
cert = "{server}"
key = "{key}"
client_ca = "{ca}"
"#,
        server = c("server.pem"),
        key = c("server.key"),
        ca = c("ca.pem"),
    ))
}

fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null()).output().expect("the client runs")
}

fn curl(certs: &Path, args: &[&str]) -> Output {
    let ca = certs.join("ca.pem");
    run(Command::new("curl")
        .args(["-sS", "--max-time", "10", "--cacert"])
        .arg(&ca)
        .args(args))
}

#[test]
fn https_with_curl_and_plaintext_on_the_tls_port_costs_one_connection() {
    let certs = TempDir::new();
    make_certificates(&certs.0);
    let s = Server::start(&tls_config(&certs.0));
    let https = s.bound(HTTPS);
    let url = |p: &str| format!("https://{https}{p}");

    let o = curl(
        &certs.0,
        &[
            "-X",
            "POST",
            "--data-binary",
            "over tls",
            "-H",
            "Content-Type: text/plain",
            "-w",
            "%{http_code}",
            &url("/queues/secure"),
        ],
    );
    assert!(
        o.status.success() && o.stdout.ends_with(b"201"),
        "{}",
        text(&o)
    );
    let o = curl(&certs.0, &["-i", &url("/queues/secure?wait=5")]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.starts_with("HTTP/1.1 200") && out.ends_with("over tls"),
        "{}",
        text(&o)
    );

    // Plaintext HTTP on the TLS port: that connection ends, nothing else.
    let mut raw = std::net::TcpStream::connect(https).unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    raw.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut answer = Vec::new();
    let _ = raw.read_to_end(&mut answer);
    assert!(
        !answer.starts_with(b"HTTP/1.1 200"),
        "plaintext answered on a TLS port: {:?}",
        String::from_utf8_lossy(&answer)
    );
    // A client that does not trust the certificate is refused by itself.
    let o = run(Command::new("curl").args(["-sS", "--max-time", "10", &url("/healthz")]));
    assert!(!o.status.success(), "{}", text(&o));
    // The TLS port and the plaintext one both still serve.
    let o = curl(
        &certs.0,
        &["-w", "%{http_code}", "-o", "/dev/null", &url("/healthz")],
    );
    assert_eq!(String::from_utf8_lossy(&o.stdout), "200", "{}", text(&o));
    assert!(s.healthy());
}

fn mosquitto(tool: &str, certs: &Path, at: std::net::SocketAddr, extra: &[&str]) -> Command {
    let mut c = Command::new(tool);
    c.args([
        "-h",
        &at.ip().to_string(),
        "-p",
        &at.port().to_string(),
        "--cafile",
    ])
    .arg(certs.join("ca.pem"))
    .args(extra);
    c
}

#[test]
fn mqtt_over_tls_with_mosquitto_clients_crosses_to_plain_mqtt_and_https() {
    let certs = TempDir::new();
    make_certificates(&certs.0);
    let s = Server::start(&tls_config(&certs.0));
    let mqtts = s.bound(MQTTS);
    let plain = s.mqtt.expect("plain mqtt");

    // A subscriber over TLS; messages come from plain MQTT and from HTTPS.
    let sub = mosquitto(
        "mosquitto_sub",
        &certs.0,
        mqtts,
        &["-t", "secure/#", "-C", "2", "-W", "20", "-v"],
    )
    .stdout(Stdio::piped())
    .spawn()
    .map(Reaped::new)
    .unwrap();
    subscribed(&s, "/topics/secure/#");
    let o = run(Command::new("mosquitto_pub").args([
        "-h",
        &plain.ip().to_string(),
        "-p",
        &plain.port().to_string(),
        "-t",
        "secure/a",
        "-m",
        "from plain",
        "-q",
        "1",
    ]));
    assert!(o.status.success(), "{}", text(&o));
    let https = s.bound(HTTPS);
    let o = curl(
        &certs.0,
        &[
            "-X",
            "POST",
            "--data-binary",
            "from https",
            &format!("https://{https}/topics/secure/b"),
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    let out = sub.output();
    let got = String::from_utf8_lossy(&out.stdout);
    assert!(
        got.contains("secure/a from plain") && got.contains("secure/b from https"),
        "{got}"
    );

    // And the other way: published over TLS, read by a plain subscriber.
    let plain_sub = Command::new("mosquitto_sub")
        .args([
            "-h",
            &plain.ip().to_string(),
            "-p",
            &plain.port().to_string(),
            "-t",
            "back",
            "-C",
            "1",
            "-W",
            "20",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .map(Reaped::new)
        .unwrap();
    subscribed(&s, "/topics/back");
    let o = run(&mut mosquitto(
        "mosquitto_pub",
        &certs.0,
        mqtts,
        &["-t", "back", "-m", "over tls", "-q", "1"],
    ));
    assert!(o.status.success(), "{}", text(&o));
    let out = plain_sub.output();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "over tls");
}

#[test]
fn mutual_tls_takes_only_clients_with_a_certificate_from_the_ca() {
    let certs = TempDir::new();
    make_certificates(&certs.0);
    let s = Server::start(&tls_config(&certs.0));
    let at = s.bound(MQTTS_MUTUAL);
    let c = |f: &str| certs.0.join(f).display().to_string();

    let with = |cert: &str, key: &str| {
        run(&mut mosquitto(
            "mosquitto_pub",
            &certs.0,
            at,
            &[
                "--cert", cert, "--key", key, "-t", "m", "-m", "x", "-q", "1",
            ],
        ))
    };
    let o = with(&c("client.pem"), &c("client.key"));
    assert!(
        o.status.success(),
        "a client certificate from the CA: {}",
        text(&o)
    );
    let o = run(&mut mosquitto(
        "mosquitto_pub",
        &certs.0,
        at,
        &["-t", "m", "-m", "x", "-q", "1"],
    ));
    assert!(!o.status.success(), "no client certificate: {}", text(&o));
    let o = with(&c("rogue.pem"), &c("rogue.key"));
    assert!(
        !o.status.success(),
        "a certificate from another CA: {}",
        text(&o)
    );
    // Refused handshakes cost nothing else.
    let o = with(&c("client.pem"), &c("client.key"));
    assert!(o.status.success(), "{}", text(&o));
    assert!(s.healthy());
}

#[test]
fn a_tls_section_naming_a_missing_file_stops_the_server_naming_instance_and_file() {
    let dir = TempDir::new();
    let config = common::config(&format!(
        "[instances.https]\nmodule = \"terminal.http\"\nbind = [\"{HTTPS}\"]\n\
         [instances.https.config.tls]\ncert = \"nowhere/server.pem\"\nkey = \"nowhere/server.key\"\n"
    ));
    let path = dir.0.join("bindery.toml");
    std::fs::write(
        &path,
        config.replace("bindery-data", &dir.0.join("data").display().to_string()),
    )
    .unwrap();
    let o = run(Command::new(env!("CARGO_BIN_EXE_bindery"))
        .arg("--config")
        .arg(&path)
        .arg("--check-config"));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(
        err.contains("\"https\"") && err.contains("tls.cert") && err.contains("nowhere/server.pem"),
        "{err}"
    );
}
