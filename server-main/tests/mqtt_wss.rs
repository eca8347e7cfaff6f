//! MQTT over WebSocket over TLS (`wss://`): an MQTT instance with `tls`
//! and `websocket` serves the same cores behind both layers. A rustls
//! client under tungstenite crosses to plain HTTP and native MQTT.

mod common;

use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

use common::mqtt::{publish_packet, raw, subscribe_on};
use common::{Server, TempDir, agent, config};
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, SanType};

#[test]
fn wss_crosses_to_plain_http_and_native_mqtt() {
    let dir = TempDir::new();
    let ca_key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = p.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    p.subject_alt_names
        .push(SanType::IpAddress("127.0.0.10".parse().unwrap()));
    let cert = p.signed_by(&key, &ca, &ca_key).unwrap();
    std::fs::write(dir.0.join("server.pem"), cert.pem()).unwrap();
    std::fs::write(dir.0.join("server.key"), key.serialize_pem()).unwrap();
    let s = Server::start(&config(&format!(
        r#"
[instances.mqtts]
module = "terminal.mqtt"
bind = ["127.0.0.9:0"]
[instances.mqtts.config.tls]
cert = "{}"
key = "{}"
[instances.mqtts.config.websocket]
bind = ["127.0.0.10:0"]
"#,
        dir.0.join("server.pem").display(),
        dir.0.join("server.key").display()
    )));
    let wss = s
        .listening
        .iter()
        .map(|(_, a)| *a)
        .find(|a| a.ip().to_string() == "127.0.0.10")
        .expect("the wss listener");

    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.der().clone()).unwrap();
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.10").unwrap();
    let conn = rustls::ClientConnection::new(Arc::new(tls), name).unwrap();
    let tcp = TcpStream::connect(wss).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let stream = rustls::StreamOwned::new(conn, tcp);
    let mut c = common::ws::connect_over(&format!("wss://{wss}/mqtt"), stream);
    c.mqtt_connect("over-wss");
    c.subscribe("wss/#", 1);

    // Plain HTTP -> wss (the default topics driver serves both instances).
    let r = agent()
        .post(&format!("http://{}/topics/wss/in", s.addr))
        .send_string("to wss")
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(c.publish_in(), ("wss/in".into(), b"to wss".to_vec()));

    // wss -> a native MQTT subscriber on the plain listener.
    let mut native = raw(s.mqtt.unwrap());
    subscribe_on(&mut native, "native", "wss/out", 0);
    let mut p = Vec::new();
    publish_packet(&mut p, "wss/out", 0, 0, b"from wss");
    c.send(&p);
    let mut r = std::io::BufReader::new(&mut native);
    let (head, body) = common::mqtt::read_packet(&mut r).unwrap();
    assert_eq!(head & 0xf0, 0x30);
    assert!(body.ends_with(b"from wss"));
}
