//! End to end over real sockets: the `bindery` binary, driven with a real
//! HTTP client (ureq) and, for bad input, raw TCP.
//!
//! Longer than most files here: the HTTP terminal's behaviour over real
//! sockets, one test per promise.

mod common;

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::{Server, agent, config, outcome};

fn publish(s: &Server, path: &str, ct: &str, body: &str) -> (u16, String, Option<String>) {
    let r = agent()
        .post(&s.url(path))
        .set("Content-Type", ct)
        .send_string(body);
    match r {
        Ok(resp) => {
            let id = resp.header("Message-Id").map(str::to_owned);
            (resp.status(), resp.into_string().unwrap(), id)
        }
        Err(ureq::Error::Status(code, resp)) => {
            let retry = resp.header("Retry-After").map(str::to_owned);
            (code, resp.into_string().unwrap(), retry)
        }
        Err(e) => panic!("{e}"),
    }
}

struct Got {
    status: u16,
    body: String,
    id: Option<String>,
    count: Option<u32>,
    content_type: Option<String>,
}

fn take(s: &Server, path: &str, query: &str) -> Got {
    let r = agent().get(&format!("{}{query}", s.url(path))).call();
    let resp = match r {
        Ok(resp) => resp,
        Err(ureq::Error::Status(code, resp)) => {
            return Got {
                status: code,
                body: resp.into_string().unwrap(),
                id: None,
                count: None,
                content_type: None,
            };
        }
        Err(e) => panic!("{e}"),
    };
    Got {
        status: resp.status(),
        id: resp.header("Message-Id").map(str::to_owned),
        count: resp.header("Delivery-Count").map(|c| c.parse().unwrap()),
        content_type: resp.header("Content-Type").map(str::to_owned),
        body: resp.into_string().unwrap(),
    }
}

fn ack(s: &Server, queue: &str, id: &str) -> u16 {
    outcome(
        agent()
            .delete(&s.url(&format!("{queue}/messages/{id}")))
            .call(),
    )
    .0
}

#[test]
fn publish_consume_ack_and_redeliver() {
    let s = Server::start(&config(""));
    let (status, _, id) = publish(&s, "/queues/orders", "application/json", r#"{"n":1}"#);
    assert_eq!(status, 201);
    let id = id.expect("Message-Id");

    let got = take(&s, "/queues/orders", "?wait=5&lease=0.3");
    assert_eq!(got.status, 200);
    assert_eq!(got.body, r#"{"n":1}"#);
    assert_eq!(got.id.as_deref(), Some(id.as_str()));
    assert_eq!(got.count, Some(1));
    assert_eq!(got.content_type.as_deref(), Some("application/json"));

    // Not acked: after the lease it comes back with a higher count.
    let again = take(&s, "/queues/orders", "?wait=5&lease=30");
    assert_eq!(again.status, 200);
    assert_eq!(again.id.as_deref(), Some(id.as_str()));
    assert_eq!(again.count, Some(2));
    assert_eq!(ack(&s, "/queues/orders", &id), 204);
    // Acked: gone; a second ack is an error, not a crash.
    assert_eq!(ack(&s, "/queues/orders", &id), 404);
    assert_eq!(ack(&s, "/queues/orders", "zz"), 400);
    let none = take(&s, "/queues/orders", "?wait=0.2");
    assert_eq!(none.status, 204);
    assert!(s.healthy());
    assert!(s.terminate().success(), "SIGTERM must exit 0");
}

#[test]
fn long_poll_waits_then_times_out_or_gets_a_later_message() {
    let s = Server::start(&config(""));
    assert_eq!(take(&s, "/queues/empty", "?wait=0.5").status, 204);
    // A message published while a consumer waits goes to it.
    let url = s.url("/queues/later");
    let waiter = std::thread::spawn(move || {
        let resp = agent().get(&format!("{url}?wait=10")).call().unwrap();
        (resp.status(), resp.into_string().unwrap())
    });
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(publish(&s, "/queues/later", "text/plain", "hi").0, 201);
    assert_eq!(waiter.join().unwrap(), (200, "hi".to_owned()));
}

#[test]
fn competing_consumers_get_each_message_once() {
    let s = Server::start(&config(""));
    let mut sent = HashSet::new();
    for i in 0..200 {
        let (status, _, id) = publish(&s, "/queues/work", "text/plain", &format!("job {i}"));
        assert_eq!(status, 201);
        sent.insert(id.unwrap());
    }
    let url = s.url("/queues/work");
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || {
                let a = agent();
                let mut got = Vec::new();
                loop {
                    let r = a.get(&format!("{url}?wait=0.3&lease=60")).call().unwrap();
                    if r.status() == 204 {
                        return got;
                    }
                    let id = r.header("Message-Id").unwrap().to_owned();
                    assert_eq!(r.header("Delivery-Count"), Some("1"));
                    let d = a.delete(&format!("{url}/messages/{id}")).call().unwrap();
                    assert_eq!(d.status(), 204);
                    got.push(id);
                }
            })
        })
        .collect();
    let mut received = Vec::new();
    let mut per_worker = Vec::new();
    for w in workers {
        let got = w.join().unwrap();
        per_worker.push(got.len());
        received.extend(got);
    }
    let unique: HashSet<_> = received.iter().cloned().collect();
    assert_eq!(received.len(), 200, "duplicates or losses: {per_worker:?}");
    assert_eq!(unique, sent);
}

fn read_event(lines: &mut impl BufRead) -> (String, String) {
    let (mut event, mut data) = (String::new(), Vec::new());
    loop {
        let mut line = String::new();
        assert!(lines.read_line(&mut line).unwrap() > 0, "stream ended");
        let line = line.trim_end_matches('\n');
        if line.is_empty() {
            if !event.is_empty() {
                return (event, data.join("\n"));
            }
            continue;
        }
        if let Some(v) = line.strip_prefix("event: ") {
            event = v.to_owned();
        } else if let Some(v) = line.strip_prefix("data: ") {
            data.push(v.to_owned());
        }
    }
}

#[test]
fn server_sent_events_fan_out_to_every_subscriber() {
    let s = Server::start(&config(""));
    let subscribers: Vec<_> = (0..3)
        .map(|_| {
            let resp = agent()
                .get(&s.url("/topics/news"))
                .set("Accept", "text/event-stream")
                .call()
                .unwrap();
            assert_eq!(resp.status(), 200);
            assert_eq!(resp.header("Content-Type"), Some("text/event-stream"));
            BufReader::new(resp.into_reader())
        })
        .collect();
    // Subscriptions are live once the response head is out.
    let (status, _, _) = publish(&s, "/topics/news", "text/plain", "line one\nline two");
    assert_eq!(status, 201);
    assert_eq!(
        publish(&s, "/topics/news", "application/json", "[1]").0,
        201
    );
    for mut sub in subscribers {
        assert_eq!(
            read_event(&mut sub),
            ("message".into(), "line one\nline two".into())
        );
        assert_eq!(read_event(&mut sub), ("message".into(), "[1]".into()));
    }
}

#[test]
fn publish_failures_have_distinct_statuses() {
    let s = Server::start(&config(
        "[instances.small]\nmodule = \"driver.memqueue\"\nbind = [\"/small/\"]\nconfig = { max_depth = 2 }\n",
    ));
    let (status, body, _) = publish(&s, "/queues/j", "application/json", "{\"a\": [1, 2,, 3]}");
    assert_eq!(status, 400);
    assert!(body.contains("at byte 12"), "{body}");
    let (status, body, _) = publish(&s, "/nowhere/x", "text/plain", "x");
    assert_eq!(status, 404);
    assert!(body.contains("/nowhere/x"), "{body}");
    let (status, body, _) = publish(&s, "/queues/t", "text/plain", "ok");
    assert_eq!((status, body.len()), (201, 17));
    assert_eq!(publish(&s, "/small/q", "text/plain", "1").0, 201);
    assert_eq!(publish(&s, "/small/q", "text/plain", "2").0, 201);
    let (status, body, retry) = publish(&s, "/small/q", "text/plain", "3");
    assert_eq!(status, 503, "{body}");
    assert_eq!(retry.as_deref(), Some("1"));
    assert!(body.contains("full"), "{body}");
    assert!(s.healthy());
}

#[test]
fn unsupported_content_type_is_415_without_a_catch_all_parser() {
    let text = config("").replace(
        "module = \"parser.octets\"",
        "module = \"parser.octets\"\nenabled = false",
    );
    let s = Server::start(&text);
    let (status, body, _) = publish(&s, "/queues/x", "image/png", "png");
    assert_eq!(status, 415, "{body}");
    assert_eq!(publish(&s, "/queues/x", "text/plain", "fine").0, 201);
}

#[test]
fn bad_bytes_get_an_error_and_the_server_serves_on() {
    let s = Server::start(&config(
        "[instances.http.config]\nmax_header_bytes = 1024\nmax_body_bytes = 4096\n",
    ));
    let quick = Duration::from_secs(5);
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "malformed request line",
            b"GARBAGE\x01 / HTTP/1.1\r\n\r\n".to_vec(),
            "HTTP/1.1 400",
        ),
        (
            "not http at all",
            b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03".to_vec(),
            "HTTP/1.1 400",
        ),
        (
            "oversized headers",
            [
                b"GET /healthz HTTP/1.1\r\nX-Big: ".as_slice(),
                &[b'a'; 2000],
                b"\r\n\r\n",
            ]
            .concat(),
            "HTTP/1.1 431",
        ),
        (
            "oversized body",
            b"POST /queues/a HTTP/1.1\r\nContent-Length: 100000\r\n\r\nabc".to_vec(),
            "HTTP/1.1 413",
        ),
        (
            "oversized chunked body",
            [
                b"POST /queues/a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2000\r\n".as_slice(),
                &[b'a'; 100],
            ]
            .concat(),
            "HTTP/1.1 413",
        ),
        (
            "bad content length",
            b"POST /queues/a HTTP/1.1\r\nContent-Length: -5\r\n\r\n".to_vec(),
            "HTTP/1.1 400",
        ),
    ];
    for (what, bytes, want) in cases {
        let got = s.raw(&bytes, quick);
        assert!(got.starts_with(want), "{what}: {got:?}");
        assert!(got.contains("Connection: close"), "{what}: {got:?}");
        assert!(s.healthy(), "{what}: server stopped serving");
    }
}

#[test]
fn a_half_sent_request_does_not_hold_up_others() {
    let s = Server::start(&config(""));
    let mut stalled = TcpStream::connect(s.addr).unwrap();
    stalled
        .write_all(b"POST /queues/slow HTTP/1.1\r\nContent-Length: 10\r\nContent-Type: text/plain\r\n\r\nabc")
        .unwrap();
    let mut half_head = TcpStream::connect(s.addr).unwrap();
    half_head
        .write_all(b"GET /queues/x HTTP/1.1\r\nHost: a")
        .unwrap();
    for i in 0..20 {
        assert_eq!(
            publish(&s, "/queues/fast", "text/plain", &i.to_string()).0,
            201
        );
    }
    assert!(s.healthy());
    // The stalled request completes when the rest of its body arrives.
    stalled.write_all(b"defghij").unwrap();
    stalled
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut buf = [0u8; 256];
    let n = stalled.read(&mut buf).unwrap();
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 201"),
        "{:?}",
        String::from_utf8_lossy(&buf[..n])
    );
    let got = take(&s, "/queues/slow", "?wait=1");
    assert_eq!(got.body, "abcdefghij");
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let s = Server::start(&config(""));
    let mut c = TcpStream::connect(s.addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut reqs = Vec::new();
    for i in 0..5 {
        let body = format!("m{i}");
        reqs.extend_from_slice(
            format!("POST /queues/p HTTP/1.1\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}", body.len())
                .as_bytes(),
        );
    }
    reqs.extend_from_slice(
        b"GET /queues/p?wait=1 HTTP/1.1\r\n\r\nGET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n",
    );
    c.write_all(&reqs).unwrap();
    let mut out = String::new();
    c.read_to_string(&mut out).unwrap();
    let statuses: Vec<&str> = out
        .match_indices("HTTP/1.1 ")
        .map(|(i, _)| &out[i + 9..i + 12])
        .collect();
    assert_eq!(
        statuses,
        ["201", "201", "201", "201", "201", "200", "200"],
        "{out}"
    );
    assert!(out.contains("\r\n\r\nm0HTTP/1.1 200 OK"), "{out}");
}

#[test]
fn chunked_and_expect_continue_bodies_are_read() {
    let s = Server::start(&config(""));
    let got = s.raw(
        b"POST /queues/c HTTP/1.1\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
        Duration::from_secs(5),
    );
    assert!(got.starts_with("HTTP/1.1 201"), "{got}");
    assert_eq!(take(&s, "/queues/c", "?wait=1").body, "hello world");
    // A large body through ureq (which sends it whole) and curl-style Expect.
    let mut c = TcpStream::connect(s.addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c.write_all(b"POST /queues/c HTTP/1.1\r\nContent-Length: 4\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n").unwrap();
    let mut buf = [0u8; 25];
    c.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"HTTP/1.1 100 Continue\r\n\r\n");
    c.write_all(b"body").unwrap();
    let mut rest = String::new();
    c.read_to_string(&mut rest).unwrap();
    assert!(rest.starts_with("HTTP/1.1 201"), "{rest}");
}

#[test]
fn public_endpoints_tell_health_and_metrics_but_list_nothing() {
    let s = Server::start(&config(""));
    assert_eq!(publish(&s, "/queues/m", "text/plain", "x").0, 201);
    // Listing and changing the server is the management API's, behind its
    // token: here those paths are just paths no driver serves.
    for path in ["/admin/modules", "/admin/bindings"] {
        let (status, _, _) = outcome(agent().get(&s.url(path)).call());
        assert_eq!(status, 404, "{path}");
    }
    let metrics = agent()
        .get(&s.url("/metrics"))
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    assert!(
        metrics
            .contains("bindery_messages_in_total{instance=\"queues\",destination=\"/queues/m\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics
            .contains("bindery_destination_depth{instance=\"queues\",destination=\"/queues/m\"} 1")
    );
    assert!(metrics.contains("bindery_connections_open{instance=\"http\"}"));
}
