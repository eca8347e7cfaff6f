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

use crate::core::Core;
use crate::methods::Method;
use crate::tests::{In, declare, frames, method, publish};
use crate::wire;
use crate::{Config, Shared, Stats};

/// alice (password `a`) may do anything under /queues/a-; nobody else
/// anything.
struct Later;

impl Auth for Later {
    fn authenticate(&self, c: Credentials, done: Completion<Login>) {
        std::thread::spawn(move || {
            if let Some(token) = c.token {
                let who = (token.0 == b"t0k").then(|| Identity::user("alice"));
                return done.succeed(who.map_or(Login::BadCredentials, Login::Accepted));
            }
            done.succeed(match (c.username.as_deref(), c.password) {
                (None, _) => Login::NotAuthorized,
                (Some("alice"), Some(p)) if p.0 == b"a" => Login::Accepted(Identity::user("alice")),
                _ => Login::BadCredentials,
            })
        });
    }

    fn authorize(&self, who: &Identity, _: Action, path: &str, done: Completion<bool>) {
        let ok = who.user.as_deref() == Some("alice") && path.starts_with("/queues/a-");
        std::thread::spawn(move || done.succeed(ok));
    }

    fn accepts_tokens(&self) -> bool {
        true
    }
}

fn pipe() -> Pipe<Core> {
    pipe_with(Config::default())
}

fn pipe_with(config: Config) -> Pipe<Core> {
    let queues: DriverHandle = Arc::new(driver_memqueue::MemQueue::new(Default::default()));
    let mut shared = Shared::new(
        "amqp",
        config,
        Arc::new(Routes(vec![("/queues/".into(), queues)])),
        Arc::new(Stats::new(&Scope::detached("amqp"))),
    );
    shared.auth = Some(bindery_classes::auth::Bound::fixed(Arc::new(Later)));
    let shared = Arc::new(shared);
    Pipe::new(|_| Core::new(shared, "test".into(), Instant::now()))
}

/// The handshake with a `PLAIN` `response`, sent whole.
fn handshake(response: &[u8]) -> Vec<u8> {
    handshake_with("PLAIN", response)
}

fn handshake_with(mechanism: &str, response: &[u8]) -> Vec<u8> {
    let mut input = wire::PROTOCOL_HEADER.to_vec();
    input.extend(method(
        0,
        &Method::ConnectionStartOk {
            client_properties: Vec::new(),
            mechanism: mechanism.into(),
            response: Bytes::copy_from_slice(response),
            locale: "en_US".into(),
        },
    ));
    input.extend(method(
        0,
        &Method::ConnectionTuneOk {
            channel_max: 16,
            frame_max: 4096,
            heartbeat: 0,
        },
    ));
    input.extend(method(0, &Method::ConnectionOpen { vhost: "/".into() }));
    input
}

fn exchange(p: &mut Pipe<Core>, input: &[u8]) -> Vec<In> {
    p.send(input);
    for _ in 0..50 {
        p.settle(Duration::from_secs(2));
        if p.pending() == 0 {
            break;
        }
    }
    frames(&p.output())
}

#[test]
fn frames_sent_ahead_of_the_answers_are_handled_in_order() {
    let mut p = pipe();
    let mut input = handshake(b"\0alice\0a");
    input.extend(method(1, &Method::ChannelOpen));
    input.extend(method(1, &declare("a-orders")));
    input.extend(method(1, &Method::ConfirmSelect { no_wait: false }));
    input.extend(publish(1, "", "a-orders", b"kept", false));
    input.extend(publish(1, "", "b-orders", b"refused", false));
    input.extend(method(2, &Method::ChannelOpen));
    input.extend(method(2, &declare("b-new")));
    let got = exchange(&mut p, &input);
    assert!(matches!(got[0], In::M(0, Method::ConnectionStart { .. })));
    assert!(matches!(got[1], In::M(0, Method::ConnectionTune { .. })));
    assert_eq!(
        got[2..4],
        [
            In::M(0, Method::ConnectionOpenOk),
            In::M(1, Method::ChannelOpenOk)
        ]
    );
    assert!(
        matches!(&got[4], In::M(1, Method::QueueDeclareOk { queue, .. }) if queue == "a-orders")
    );
    assert_eq!(got[5], In::M(1, Method::ConfirmSelectOk));
    let closes: Vec<(u16, u16, &str)> = got
        .iter()
        .filter_map(|f| match f {
            In::M(ch, Method::ChannelClose { code, text, .. }) => Some((*ch, *code, text.as_str())),
            _ => None,
        })
        .collect();
    assert_eq!(closes.len(), 2, "{got:?}");
    assert_eq!((closes[0].0, closes[0].1), (1, 403));
    assert!(
        closes[0].2.contains("/queues/b-orders") && closes[0].2.contains("alice"),
        "{got:?}"
    );
    assert_eq!((closes[1].0, closes[1].1), (2, 403));
    assert!(closes[1].2.contains("/queues/b-new"), "{got:?}");
    assert!(
        got.contains(&In::M(
            1,
            Method::BasicAck {
                delivery_tag: 1,
                multiple: false
            }
        )),
        "{got:?}"
    );
    assert!(got.contains(&In::M(2, Method::ChannelOpenOk)), "{got:?}");
}

#[test]
fn a_bad_password_closes_the_connection_with_403_naming_the_user() {
    for response in [
        &b"\0alice\0wrong-secret"[..],
        b"\0mallory\0wrong-secret",
        b"\0\0",
    ] {
        let mut p = pipe();
        let got = exchange(&mut p, &handshake(response));
        let Some(In::M(0, Method::ConnectionClose { code, text, .. })) = got.get(1) else {
            panic!("{got:?}");
        };
        assert_eq!(*code, 403, "{got:?}");
        assert!(!text.contains("wrong-secret"), "{text}");
        let user = String::from_utf8_lossy(&response[1..])
            .split('\0')
            .next()
            .unwrap()
            .to_owned();
        assert!(text.contains(&format!("{user:?}")), "{text}");
        // Nothing after start-ok was answered.
        assert_eq!(got.len(), 2, "{got:?}");
    }
}

/// A self-signed certificate whose subject CN is `cn` (none: no name).
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
fn external_takes_the_certificate_s_name_as_the_user() {
    use bindery_classes::connection::Protocol;
    let config = Config {
        use_identity_as_username: true,
        ..Config::default()
    };
    // alice's certificate: EXTERNAL, and PLAIN with someone else's name
    // and a wrong password (ignored), both log in as alice.
    for (mechanism, response) in [("EXTERNAL", &b""[..]), ("PLAIN", b"\0eve\0wrong")] {
        let mut p = pipe_with(config.clone());
        p.core.certified(&[certificate(Some("alice"))]);
        let mut input = handshake_with(mechanism, response);
        input.extend(method(1, &Method::ChannelOpen));
        input.extend(method(1, &declare("a-mine")));
        let got = exchange(&mut p, &input);
        let In::M(0, Method::ConnectionStart { mechanisms, .. }) = &got[0] else {
            panic!("{got:?}");
        };
        assert_eq!(&mechanisms[..], b"EXTERNAL PLAIN AMQPLAIN");
        assert!(
            matches!(&got[4], In::M(1, Method::QueueDeclareOk { queue, .. }) if queue == "a-mine"),
            "{got:?}"
        );
    }
    // A certificate naming nobody, or none at all: 403.
    for chain in [Some(certificate(None)), None] {
        let mut p = pipe_with(config.clone());
        if let Some(c) = chain {
            p.core.certified(&[c]);
        }
        let got = exchange(&mut p, &handshake_with("EXTERNAL", b""));
        assert!(
            matches!(&got[1], In::M(0, Method::ConnectionClose { code: 403, .. })),
            "{got:?}"
        );
    }
    // Without the option, EXTERNAL is neither offered nor taken.
    let mut p = pipe();
    let got = exchange(&mut p, &handshake_with("EXTERNAL", b""));
    assert!(
        matches!(&got[1], In::M(0, Method::ConnectionClose { code: 403, text, .. }) if text.contains("EXTERNAL")),
        "{got:?}"
    );
}

#[test]
fn amqplain_and_bearer_tokens_log_in_too() {
    // AMQPLAIN: a field table without its length, LOGIN and PASSWORD.
    let amqplain = |password: &str| {
        let mut t = Vec::new();
        wire::put_table(
            &mut t,
            &vec![
                (
                    "LOGIN".into(),
                    wire::Value::Str(Bytes::from_static(b"alice")),
                ),
                (
                    "PASSWORD".into(),
                    wire::Value::Str(Bytes::copy_from_slice(password.as_bytes())),
                ),
            ],
        );
        t[4..].to_vec()
    };
    let cases: [(&str, Vec<u8>, bool); 4] = [
        ("AMQPLAIN", amqplain("a"), true),
        ("AMQPLAIN", amqplain("nope"), false),
        // PLAIN with no user name: the password is a bearer token.
        ("PLAIN", b"\0\0t0k".to_vec(), true),
        ("PLAIN", b"\0\0stolen".to_vec(), false),
    ];
    for (mechanism, response, ok) in cases {
        let mut p = pipe();
        let mut input = handshake_with(mechanism, &response);
        input.extend(method(1, &Method::ChannelOpen));
        input.extend(method(1, &declare("a-tok")));
        let got = exchange(&mut p, &input);
        if ok {
            assert!(
                matches!(&got[4], In::M(1, Method::QueueDeclareOk { queue, .. }) if queue == "a-tok"),
                "{mechanism}: {got:?}"
            );
        } else {
            assert!(
                matches!(&got[1], In::M(0, Method::ConnectionClose { code: 403, text, .. }) if !text.contains("nope") && !text.contains("stolen")),
                "{mechanism}: {got:?}"
            );
        }
    }
}
