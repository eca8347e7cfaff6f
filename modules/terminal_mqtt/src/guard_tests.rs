//! The guard without sockets: an auth instance answering later, from
//! another thread, while the client sends ahead of its answers.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bindery::Completion;
use bindery_classes::auth::{Action, Auth, Credentials, Identity, Login};
use bindery_classes::connection::testing::{Pipe, Routes};
use bindery_classes::driver::DriverHandle;
use bindery_classes::metrics::Scope;
use bytes::Bytes;

use crate::codec::{self, Connect, Decoded, Packet, Publish};
use crate::core::Core;
use crate::{Config, Shared, Stats};

/// alice (password `a`) may publish and subscribe under /topics/a/.
struct Later;

impl Auth for Later {
    fn authenticate(&self, c: Credentials, done: Completion<Login>) {
        std::thread::spawn(move || {
            done.succeed(match (c.username.as_deref(), c.password) {
                (None, _) => Login::NotAuthorized,
                (Some("alice"), Some(p)) if p.0 == b"a" => Login::Accepted(Identity::user("alice")),
                _ => Login::BadCredentials,
            })
        });
    }

    fn authorize(&self, who: &Identity, action: Action, path: &str, done: Completion<bool>) {
        let ok = who.user.as_deref() == Some("alice")
            && action != Action::Consume
            && path.starts_with("/topics/a/")
            && !path.contains(['+', '#']) | path.ends_with("/a/#");
        std::thread::spawn(move || done.succeed(ok));
    }
}

fn pipe() -> Pipe<Core> {
    pipe_with(Config::default())
}

fn pipe_with(config: Config) -> Pipe<Core> {
    let topics: DriverHandle = Arc::new(driver_topic::TopicDriver::new(Default::default()));
    let mut shared = Shared::new(
        "mqtt",
        config,
        Arc::new(Routes(vec![("/topics/".into(), topics)])),
        Arc::new(Stats::new(&Scope::detached("mqtt"))),
    );
    shared.auth = Some(bindery_classes::auth::Bound::fixed(Arc::new(Later)));
    let shared = Arc::new(shared);
    Pipe::new(|_| Core::new(shared, Instant::now()))
}

fn connect(user: Option<&str>, password: &[u8]) -> Packet {
    Packet::Connect(Box::new(Connect {
        level: 4,
        clean_session: true,
        keep_alive: 0,
        client_id: "c".into(),
        will: None,
        username: user.map(Into::into),
        // A password needs a user name in MQTT 3.1.1.
        password: user.map(|_| Bytes::copy_from_slice(password)),
    }))
}

fn publish(topic: &str, qos: u8, id: u16, body: &'static [u8]) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos,
        retain: false,
        topic: topic.into(),
        packet_id: id,
        payload: Bytes::from_static(body),
    })
}

fn exchange(p: &mut Pipe<Core>, send: &[Packet]) -> Vec<Packet> {
    let mut input = Vec::new();
    for packet in send {
        codec::encode(&mut input, packet);
    }
    p.send(&input);
    for _ in 0..20 {
        p.settle(Duration::from_secs(2));
        if p.pending() == 0 {
            break;
        }
    }
    let out = p.output();
    let mut at = &out[..];
    let mut all = Vec::new();
    while let Ok(Decoded::Packet(packet, n)) = codec::decode(at, 1 << 20) {
        all.push(packet);
        at = &at[n..];
    }
    all
}

#[test]
fn packets_sent_ahead_of_the_answers_are_handled_in_order() {
    let mut p = pipe();
    let got = exchange(
        &mut p,
        &[
            connect(Some("alice"), b"a"),
            Packet::Subscribe {
                packet_id: 1,
                filters: vec![("a/#".into(), 1), ("#".into(), 1), ("b/x".into(), 0)],
            },
            publish("b/x", 0, 0, b"dropped"),
            publish("a/x", 1, 2, b"kept"),
        ],
    );
    let want = [
        Packet::ConnAck {
            session_present: false,
            code: 0,
        },
        Packet::SubAck {
            packet_id: 1,
            codes: vec![1, 0x80, 0x80],
        },
    ];
    assert_eq!(got[..2], want, "{got:?}");
    assert!(got.contains(&Packet::PubAck(2)), "{got:?}");
    let publishes: Vec<_> = got
        .iter()
        .filter_map(|p| match p {
            Packet::Publish(p) => Some(p.topic.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(publishes, ["a/x"], "{got:?}");
    // A refused QoS 1 publish closes the connection.
    exchange(&mut p, &[publish("b/x", 1, 3, b"refused")]);
    assert_eq!(p.flow(), bindery_classes::connection::Flow::Close);
}

#[test]
fn bad_and_missing_credentials_get_connack_4_and_5() {
    for (user, password, code) in [
        (Some("alice"), &b"b"[..], 4),
        (Some("eve"), b"a", 4),
        (None, b"", 5),
    ] {
        let mut p = pipe();
        let got = exchange(&mut p, &[connect(user, password), Packet::PingReq]);
        assert_eq!(
            got,
            [Packet::ConnAck {
                session_present: false,
                code
            }],
            "{user:?}"
        );
        assert_eq!(p.flow(), bindery_classes::connection::Flow::Close);
    }
}

/// A self-signed certificate's DER with this common name (none: no
/// subject at all).
fn certificate(cn: Option<&str>) -> bindery_classes::connection::CertificateDer<'static> {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name = rcgen::DistinguishedName::new();
    if let Some(cn) = cn {
        p.distinguished_name.push(rcgen::DnType::CommonName, cn);
    }
    p.self_signed(&key).unwrap().der().clone()
}

#[test]
fn the_certificate_names_the_user_and_connect_s_username_is_ignored() {
    use bindery_classes::connection::Protocol;
    let config = Config {
        use_identity_as_username: true,
        ..Config::default()
    };
    let mut p = pipe_with(config.clone());
    p.core.certified(&[certificate(Some("alice"))]);
    // eve with a wrong password: ignored; the certificate says alice.
    let got = exchange(
        &mut p,
        &[
            connect(Some("eve"), b"wrong"),
            Packet::Subscribe {
                packet_id: 1,
                filters: vec![("a/#".into(), 1), ("b/x".into(), 0)],
            },
        ],
    );
    assert_eq!(
        got,
        [
            Packet::ConnAck {
                session_present: false,
                code: 0
            },
            Packet::SubAck {
                packet_id: 1,
                codes: vec![1, 0x80]
            }
        ]
    );

    // No certificate: CONNACK 5; one that names nobody: CONNACK 4.
    for (chain, code) in [(vec![], 5), (vec![certificate(None)], 4)] {
        let mut p = pipe_with(config.clone());
        if !chain.is_empty() {
            p.core.certified(&chain);
        }
        let got = exchange(&mut p, &[connect(Some("alice"), b"a"), Packet::PingReq]);
        assert_eq!(
            got,
            [Packet::ConnAck {
                session_present: false,
                code
            }],
            "{code}"
        );
        assert_eq!(p.flow(), bindery_classes::connection::Flow::Close);
    }
}
