//! The HTTP core without sockets: requests in, responses out, time moved
//! by hand ([`bindery_classes::connection::testing::Pipe`]).

use std::sync::Arc;
use std::time::Duration;

use bindery_classes::connection::Flow;
use bindery_classes::connection::testing::{Pipe, Routes};
use bindery_classes::driver::DriverHandle;
use bindery_classes::metrics::{Metrics, Scope};
use proptest::prelude::*;

use crate::core::Core;
use crate::{Config, Shared, Stats};

const SETTLE: Duration = Duration::from_secs(2);

fn shared(config: Config) -> Arc<Shared> {
    let queues: DriverHandle = Arc::new(driver_memqueue::MemQueue::new(Default::default()));
    let topics: DriverHandle = Arc::new(driver_topic::TopicDriver::new(Default::default()));
    let metrics = Arc::new(Metrics::default());
    Arc::new(Shared {
        instance: "http".into(),
        config,
        dispatcher: Arc::new(Routes(vec![
            ("/queues/".into(), queues),
            ("/topics/".into(), topics),
        ])),
        routes: Some(routes()),
        runtime: std::sync::Weak::new(),
        stats: Arc::new(Stats::new(&Scope::new(metrics.clone(), "http"))),
        auth: None,
        metrics,
    })
}

fn pipe(config: Config) -> Pipe<Core> {
    let shared = shared(config);
    Pipe::new(|_| Core::new(shared, "test".into(), std::time::Instant::now()))
}

fn text(bytes: Vec<u8>) -> String {
    String::from_utf8_lossy(&bytes).into_owned()
}

fn statuses(out: &str) -> Vec<&str> {
    out.match_indices("HTTP/1.1 ")
        .map(|(i, _)| &out[i + 9..i + 12])
        .collect()
}

#[test]
fn a_publish_is_answered_only_when_the_driver_confirms() {
    let mut p = pipe(Config::default());
    p.send(b"POST /queues/a HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi");
    assert_eq!(p.output(), b"", "no answer before the receipt");
    p.settle(SETTLE);
    let out = text(p.output());
    assert!(out.starts_with("HTTP/1.1 201"), "{out}");
    assert!(out.contains("Message-Id: "), "{out}");
    assert_eq!(p.flow(), Flow::Open);
}

#[test]
fn pipelined_answers_keep_request_order_across_waits() {
    let mut p = pipe(Config::default());
    p.send(
        b"POST /queues/a HTTP/1.1\r\nContent-Length: 1\r\n\r\nx\
          GET /healthz HTTP/1.1\r\n\r\n\
          GET /queues/a?wait=0 HTTP/1.1\r\n\r\n\
          GET /nowhere HTTP/1.1\r\n\r\n",
    );
    // The health answer is ready at once but waits behind the publish.
    assert_eq!(p.output(), b"");
    p.settle(SETTLE);
    let out = text(p.output());
    assert_eq!(statuses(&out), ["201", "200", "200", "404"], "{out}");
}

#[test]
fn a_long_poll_ends_empty_at_its_deadline_and_a_late_message_goes_back() {
    let mut p = pipe(Config::default());
    p.send(b"GET /queues/b?wait=5 HTTP/1.1\r\n\r\n");
    p.settle(Duration::from_millis(50));
    assert_eq!(p.output(), b"");
    p.advance(Duration::from_secs(4));
    assert_eq!(p.output(), b"", "not before its deadline");
    p.advance(Duration::from_secs(1));
    assert_eq!(statuses(&text(p.output())), ["204"]);
    // The queue still hands the next message to the next poll.
    p.send(b"POST /queues/b HTTP/1.1\r\nContent-Length: 1\r\n\r\nm");
    p.send(b"GET /queues/b?wait=1 HTTP/1.1\r\n\r\n");
    p.settle(SETTLE);
    let out = text(p.output());
    assert_eq!(statuses(&out), ["201", "200"], "{out}");
    assert!(out.ends_with('m'), "{out}");
}

#[test]
fn idle_and_slow_head_connections_close_at_their_deadlines() {
    let config = Config {
        idle_timeout_secs: 30,
        header_timeout_secs: 5,
        ..Config::default()
    };
    let mut p = pipe(config.clone());
    p.advance(Duration::from_secs(29));
    assert_eq!(p.flow(), Flow::Open);
    p.advance(Duration::from_secs(1));
    assert_eq!(p.flow(), Flow::Close);

    let mut p = pipe(config);
    p.send(b"GET /healthz HTTP/1.1\r\nHost:");
    p.advance(Duration::from_secs(3));
    p.send(b" x");
    p.advance(Duration::from_secs(2));
    assert_eq!(statuses(&text(p.output())), ["408"]);
    assert_eq!(p.flow(), Flow::Close);
}

#[test]
fn an_event_stream_gets_messages_and_credit_comes_back_as_output_drains() {
    let mut p = pipe(Config {
        stream_credit: 1,
        ..Config::default()
    });
    p.send(b"GET /topics/t HTTP/1.1\r\nAccept: text/event-stream\r\n\r\n");
    let head = text(p.output());
    assert!(head.contains("text/event-stream"), "{head}");
    // Published through the same drivers: this core's own dispatcher.
    let dispatcher = p.core.shared.dispatcher.clone();
    for body in ["one", "two"] {
        let (done, rx) = bindery::Completion::channel();
        dispatcher.publish(
            bindery_classes::Message::new("/topics/t", "text/plain", body),
            done,
        );
        rx.recv_timeout(SETTLE)
            .expect("receipt")
            .expect("published");
        p.settle(Duration::from_millis(100));
        let out = text(p.output());
        assert!(out.contains(&format!("data: {body}")), "{out}");
    }
}

#[test]
fn bad_bytes_get_400_and_the_connection_closes_after_it() {
    let mut p = pipe(Config::default());
    p.send(b"\x16\x03\x01 not http\r\n\r\n");
    assert_eq!(statuses(&text(p.output())), ["400"]);
    assert_eq!(p.flow(), Flow::CloseWhenFlushed);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// However the bytes are cut into reads, the answers are the same.
    #[test]
    fn answers_do_not_depend_on_how_input_is_split(cuts in proptest::collection::vec(1usize..40, 1..12)) {
        let input: &[u8] = b"GET /healthz HTTP/1.1\r\n\r\nPOST /nowhere HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc\
                             GET /metrics HTTP/1.1\r\nConnection: close\r\n\r\n";
        let mut p = pipe(Config::default());
        p.send_in_pieces(input, &cuts);
        p.settle(SETTLE);
        let out = text(p.output());
        prop_assert_eq!(statuses(&out), ["200", "404", "200"]);
        prop_assert_eq!(p.flow(), Flow::CloseWhenFlushed);
    }

    /// Whatever arrives, the core answers HTTP or nothing, and never panics.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let mut p = pipe(Config::default());
        p.send(&bytes);
        let out = p.output();
        prop_assert!(out.is_empty() || out.starts_with(b"HTTP/1.1 "));
    }
}

/// A route that keeps its responders for the test to answer.
#[derive(Default)]
struct Held(parking_lot::Mutex<Vec<bindery_classes::route::Responder>>);

struct HeldRoute(Arc<Held>);

impl bindery_classes::route::Route for HeldRoute {
    fn handle(
        &self,
        _: bindery_classes::route::RouteRequest,
        responder: bindery_classes::route::Responder,
    ) {
        self.0.0.lock().push(responder);
    }
}

thread_local! {
    static HELD: Arc<Held> = Arc::default();
}

fn routes() -> Arc<bindery::Table> {
    let table = bindery::Table::new("route", bindery::KeyKind::Route);
    let route: bindery_classes::route::RouteHandle = Arc::new(HeldRoute(HELD.with(Arc::clone)));
    table
        .bind("GET /held/", "held", "route.test", Arc::new(route))
        .unwrap();
    Arc::new(table)
}

fn held() -> bindery_classes::route::Responder {
    HELD.with(|h| h.0.lock().remove(0))
}

#[test]
fn a_route_streams_in_request_order_and_its_window_opens_as_output_drains() {
    let mut p = pipe(Config {
        route_window_bytes: 10,
        ..Config::default()
    });
    p.send(b"GET /held/a HTTP/1.1\r\n\r\nGET /healthz HTTP/1.1\r\n\r\n");
    assert_eq!(p.output(), b"", "the health answer waits behind the route");
    let mut r = held();
    let woken = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let w = woken.clone();
    r.set_waker(move || w.store(true, std::sync::atomic::Ordering::SeqCst));
    r.head(200, vec![("Content-Type".into(), "text/plain".into())]);
    assert!(
        !r.body(bytes::Bytes::from_static(b"twelve bytes")),
        "over the window"
    );
    assert!(!r.room());
    p.settle(SETTLE);
    let out = text(p.output());
    assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
    assert!(out.contains("Transfer-Encoding: chunked\r\n"), "{out}");
    assert!(out.ends_with("\r\n\r\nc\r\ntwelve bytes\r\n"), "{out}");
    assert!(r.room(), "written out: room again");
    assert!(woken.load(std::sync::atomic::Ordering::SeqCst));
    r.end();
    p.settle(SETTLE);
    let out = text(p.output());
    assert!(out.starts_with("0\r\n\r\nHTTP/1.1 200"), "{out}");
}

#[test]
fn a_route_failing_before_its_head_answers_and_after_it_cuts_the_connection() {
    let mut p = pipe(Config::default());
    p.send(
        b"GET /held/a HTTP/1.1\r\n\r\nGET /held/b HTTP/1.1\r\n\r\nGET /healthz HTTP/1.1\r\n\r\n",
    );
    held().fail(503, "busy");
    let mut second = held();
    second.body(bytes::Bytes::from_static(b"partial"));
    second.fail(500, "broke");
    p.settle(SETTLE);
    let out = text(p.output());
    assert!(out.starts_with("HTTP/1.1 503"), "{out}");
    assert!(
        out.contains("Retry-After: 1\r\n") && out.contains("busy\n"),
        "{out}"
    );
    assert!(
        out.ends_with("7\r\npartial\r\n"),
        "no last chunk, no health answer: {out}"
    );
    assert_ne!(p.flow(), Flow::Open);
}

#[test]
fn a_client_leaving_mid_route_tells_the_route() {
    let mut p = pipe(Config::default());
    p.send(b"GET /held/a HTTP/1.1\r\n\r\n");
    let r = held();
    assert!(!r.is_gone());
    p.peer_closes();
    assert_eq!(p.flow(), Flow::Close);
    drop(p);
    assert!(r.is_gone());
}

fn cors_config() -> Config {
    Config {
        cors: Some(crate::cors::Cors {
            allow_origins: vec!["https://app.example".into()],
            ..Default::default()
        }),
        ..Config::default()
    }
}

#[test]
fn cors_preflights_are_answered_and_answers_carry_the_origin_in_order() {
    let mut p = pipe(cors_config());
    p.send(
        b"OPTIONS /queues/a HTTP/1.1\r\nOrigin: https://app.example\r\n\
          Access-Control-Request-Method: POST\r\nAccess-Control-Request-Headers: content-type\r\n\r\n\
          POST /queues/a HTTP/1.1\r\nOrigin: https://app.example\r\nContent-Length: 1\r\n\r\nx\
          GET /healthz HTTP/1.1\r\n\r\n\
          GET /queues/a?wait=0 HTTP/1.1\r\nOrigin: https://evil.example\r\n\r\n\
          OPTIONS /queues/a HTTP/1.1\r\nOrigin: https://evil.example\r\nAccess-Control-Request-Method: GET\r\n\r\n",
    );
    p.settle(SETTLE);
    let out = text(p.output());
    let answers: Vec<&str> = out.split("HTTP/1.1 ").skip(1).collect();
    assert_eq!(answers.len(), 5, "{out}");
    assert!(answers[0].starts_with("204"), "{}", answers[0]);
    assert!(answers[0].contains("Access-Control-Allow-Methods: GET, POST, PUT, DELETE\r\n"));
    assert!(answers[0].contains("Access-Control-Allow-Headers: content-type\r\n"));
    assert!(answers[1].starts_with("201"), "{}", answers[1]);
    assert!(answers[1].contains("Access-Control-Allow-Origin: https://app.example\r\n"));
    assert!(answers[1].contains("Access-Control-Expose-Headers: Message-Id"));
    assert!(
        !answers[2].contains("Access-Control"),
        "no Origin, no CORS: {}",
        answers[2]
    );
    assert!(answers[3].starts_with("200"), "{}", answers[3]);
    assert!(
        !answers[3].contains("Access-Control"),
        "another origin: {}",
        answers[3]
    );
    assert!(answers[4].starts_with("403") && !answers[4].contains("Access-Control"));
}

#[test]
fn an_event_stream_and_a_route_carry_the_origin_too() {
    let mut p = pipe(cors_config());
    p.send(b"GET /held/a HTTP/1.1\r\nOrigin: https://app.example\r\n\r\n");
    held().answer(200, vec![], bytes::Bytes::from_static(b"ok"));
    p.settle(SETTLE);
    let out = text(p.output());
    assert!(
        out.contains("Access-Control-Allow-Origin: https://app.example\r\n"),
        "{out}"
    );
    let mut p = pipe(cors_config());
    p.send(b"GET /topics/t HTTP/1.1\r\nAccept: text/event-stream\r\nOrigin: https://app.example\r\n\r\n");
    p.settle(SETTLE);
    let out = text(p.output());
    assert!(
        out.starts_with("HTTP/1.1 200 OK\r\nAccess-Control-Allow-Origin"),
        "{out}"
    );
    assert!(out.contains("text/event-stream"), "{out}");
}

#[test]
fn without_cors_a_preflight_is_refused_as_before() {
    let mut p = pipe(Config::default());
    p.send(b"OPTIONS /queues/a HTTP/1.1\r\nOrigin: https://app.example\r\nAccess-Control-Request-Method: POST\r\n\r\n");
    p.settle(SETTLE);
    let out = text(p.output());
    assert!(
        out.starts_with("HTTP/1.1 405") && !out.contains("Access-Control"),
        "{out}"
    );
}
