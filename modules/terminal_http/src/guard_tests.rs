//! The guard without sockets: an auth instance that answers later, from
//! another thread, and pipelined requests that keep their order.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bindery::Completion;
use bindery_classes::Message;
use bindery_classes::auth::{Action, Auth, Credentials, Identity, Login};
use bindery_classes::connection::testing::{Pipe, Routes};
use bindery_classes::driver::DriverHandle;
use bindery_classes::metrics::{Metrics, Scope};

use crate::core::Core;
use crate::{Config, Shared, Stats};

/// alice (password `a`) may publish on /queues/a and subscribe to
/// /topics/t; answers come from another thread, later. The generation is
/// moved by hand.
#[derive(Default)]
struct Later(AtomicU64);

impl Auth for Later {
    fn authenticate(&self, c: Credentials, done: Completion<Login>) {
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(5));
            done.succeed(match (c.username.as_deref(), c.password) {
                (None, None) => Login::NotAuthorized,
                (Some("alice"), Some(p)) if p.0 == b"a" => Login::Accepted(Identity::user("alice")),
                _ => Login::BadCredentials,
            });
        });
    }

    fn authorize(&self, who: &Identity, action: Action, path: &str, done: Completion<bool>) {
        let ok = who.user.as_deref() == Some("alice")
            && matches!(
                (action, path),
                (Action::Publish, "/queues/a") | (Action::Subscribe, "/topics/t")
            );
        std::thread::spawn(move || done.succeed(ok));
    }

    fn generation(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    fn realm(&self) -> &str {
        "test \"realm\""
    }
}

fn pipe() -> (Pipe<Core>, Arc<Shared>, Arc<Later>) {
    let queues: DriverHandle = Arc::new(driver_memqueue::MemQueue::new(Default::default()));
    let topics: DriverHandle = Arc::new(driver_topic::TopicDriver::new(Default::default()));
    let auth = Arc::new(Later::default());
    let metrics = Arc::new(Metrics::default());
    let shared = Arc::new(Shared {
        instance: "http".into(),
        config: Config::default(),
        dispatcher: Arc::new(Routes(vec![
            ("/queues/".into(), queues),
            ("/topics/".into(), topics),
        ])),
        stats: Arc::new(Stats::new(&Scope::new(metrics.clone(), "http"))),
        auth: Some(bindery_classes::auth::Bound::fixed(auth.clone())),
        routes: None,
        runtime: std::sync::Weak::new(),
        metrics,
    });
    let s = shared.clone();
    (
        Pipe::new(|_| Core::new(s, "test".into(), std::time::Instant::now())),
        shared,
        auth,
    )
}

fn settled(p: &mut Pipe<Core>) {
    for _ in 0..20 {
        p.settle(Duration::from_secs(2));
        if p.pending() == 0 && !p.core.authorizing() {
            break;
        }
    }
}

#[test]
fn pipelined_requests_keep_their_order_while_auth_answers_later() {
    let (mut p, shared, _) = pipe();
    // alice:a, alice:b, and none, in base64.
    p.send(
        b"POST /queues/a HTTP/1.1\r\nAuthorization: Basic YWxpY2U6YQ==\r\nContent-Length: 1\r\n\r\nx\
          GET /healthz HTTP/1.1\r\n\r\n\
          POST /queues/b HTTP/1.1\r\nAuthorization: Basic YWxpY2U6YQ==\r\nContent-Length: 1\r\n\r\nx\
          POST /queues/a HTTP/1.1\r\nContent-Length: 1\r\n\r\nx\
          POST /queues/a HTTP/1.1\r\nAuthorization: Basic YWxpY2U6Yg==\r\nContent-Length: 1\r\n\r\nx\
          POST /queues/a HTTP/1.1\r\nAuthorization: Basic !!\r\nContent-Length: 1\r\n\r\nx\
          POST /queues/a HTTP/1.1\r\nAuthorization: Basic YWxpY2U6YQ==\r\nContent-Length: 1\r\n\r\nx",
    );
    assert_eq!(p.output(), b"", "nothing before the auth instance answers");
    settled(&mut p);
    let out = String::from_utf8_lossy(&p.output()).into_owned();
    let statuses: Vec<&str> = out
        .match_indices("HTTP/1.1 ")
        .map(|(i, _)| &out[i + 9..i + 12])
        .collect();
    assert_eq!(
        statuses,
        ["201", "200", "403", "401", "401", "401", "201"],
        "{out}"
    );
    assert!(
        out.contains("WWW-Authenticate: Basic realm=\"test realm\""),
        "{out}"
    );
    assert_eq!(shared.stats.auth_failures.get(), 1);
}

#[test]
fn an_event_stream_ends_when_the_rules_change() {
    let (mut p, shared, auth) = pipe();
    p.send(
        b"GET /topics/t HTTP/1.1\r\nAccept: text/event-stream\r\n\
          Authorization: Basic YWxpY2U6YQ==\r\n\r\n",
    );
    settled(&mut p);
    let out = String::from_utf8_lossy(&p.output()).into_owned();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    let publish = |body: &'static str| {
        let m = Message::new("/topics/t", "text/plain", body.as_bytes().to_vec());
        shared.dispatcher.publish(m, Completion::new(|_| {}));
    };
    publish("before");
    settled(&mut p);
    let out = String::from_utf8_lossy(&p.output()).into_owned();
    assert!(out.contains("data: before"), "{out}");
    auth.0.store(1, Ordering::Relaxed);
    publish("after");
    settled(&mut p);
    let out = String::from_utf8_lossy(&p.output()).into_owned();
    assert!(!out.contains("after\n"), "{out}");
    assert!(out.contains("event: closed"), "{out}");
    assert_eq!(p.flow(), bindery_classes::connection::Flow::Close);
}
