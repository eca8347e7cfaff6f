//! HTTP connections that hold resources for nothing are closed: one that
//! says nothing (`idle_timeout_secs`), one whose request head never
//! completes however slowly it trickles (`header_timeout_secs`); a quiet
//! long poll or event stream is not cut. Outcomes only: whether the server
//! closed the connection, never how fast.

mod common;

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::{Server, agent, config, metric};

/// A server whose HTTP terminal times out after `idle` and `header` seconds.
fn server(idle: u64, header: u64) -> Server {
    Server::start(&config(&format!(
        "[instances.http.config]\nidle_timeout_secs = {idle}\nheader_timeout_secs = {header}\n"
    )))
}

/// Reads until the server closes the connection; returns what came, or
/// panics if it is still open after `wait`.
fn read_until_closed(s: &mut TcpStream, wait: Duration) -> String {
    s.set_read_timeout(Some(wait)).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            // The server closed while we still had bytes going its way.
            Err(e) if e.kind() == ErrorKind::ConnectionReset => break,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => panic!(
                "the connection was still open after {wait:?}; read so far: {:?}",
                String::from_utf8_lossy(&out)
            ),
            Err(e) => panic!("read: {e}"),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn a_silent_connection_and_an_unused_keep_alive_one_are_closed_and_counted() {
    let s = server(1, 30);
    let before = metric(&s, "bindery_http_idle_timeouts_total", "").unwrap();

    // Says nothing at all.
    let mut silent = TcpStream::connect(s.addr).unwrap();
    assert_eq!(read_until_closed(&mut silent, Duration::from_secs(30)), "");

    // One request answered, then nothing.
    let mut kept = TcpStream::connect(s.addr).unwrap();
    kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let got = read_until_closed(&mut kept, Duration::from_secs(30));
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");

    let after = metric(&s, "bindery_http_idle_timeouts_total", "").unwrap();
    assert!(
        after >= before + 2,
        "idle closes counted: {before} -> {after}"
    );
    assert!(s.healthy());
}

#[test]
fn a_request_head_that_never_completes_is_closed_though_bytes_keep_coming() {
    let s = server(30, 2);
    let mut c = TcpStream::connect(s.addr).unwrap();
    c.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n")
        .unwrap();
    // A header byte now and then, for longer than the wait below: only
    // the server can end this (slowloris).
    let mut w = c.try_clone().unwrap();
    let trickle = std::thread::spawn(move || {
        for _ in 0..200 {
            std::thread::sleep(Duration::from_millis(250));
            if w.write_all(b"X-Slow: 1\r\n").is_err() {
                return true;
            }
        }
        false
    });
    let got = read_until_closed(&mut c, Duration::from_secs(40));
    assert!(got.is_empty() || got.starts_with("HTTP/1.1 408"), "{got}");
    drop(c);
    let _ = trickle.join();
    assert!(
        metric(&s, "bindery_http_header_timeouts_total", "").unwrap() >= 1,
        "header timeouts are counted"
    );
    assert_eq!(
        metric(&s, "bindery_http_idle_timeouts_total", "").unwrap(),
        0,
        "closed for its head, not for idleness"
    );
    assert!(s.healthy());
}

/// One response on a keep-alive connection: the status line and the body
/// (by Content-Length).
fn response(r: &mut BufReader<TcpStream>) -> (String, String) {
    let mut status = String::new();
    r.read_line(&mut status).unwrap();
    let mut len = 0;
    loop {
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        if line == "\r\n" || line.is_empty() {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            len = v.trim().parse().unwrap();
        }
    }
    let mut body = vec![0; len];
    r.read_exact(&mut body).unwrap();
    (
        status.trim_end().to_owned(),
        String::from_utf8(body).unwrap(),
    )
}

#[test]
fn a_quiet_long_poll_and_a_slow_event_stream_are_not_cut() {
    let s = server(1, 1);
    let url = s.url("/queues/slow");

    // A long poll four times the idle timeout: answered 204, and the
    // connection still serves the next request.
    let c = TcpStream::connect(s.addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut w = c.try_clone().unwrap();
    let mut r = BufReader::new(c);
    w.write_all(b"GET /queues/slow?wait=4 HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    assert_eq!(response(&mut r).0, "HTTP/1.1 204 No Content");

    // A long poll that a message ends after three idle timeouts.
    w.write_all(b"GET /queues/slow?wait=30 HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let posted = agent()
        .post(&url)
        .set("Content-Type", "text/plain")
        .send_string("late")
        .unwrap();
    assert_eq!(posted.status(), 201);
    let (status, body) = response(&mut r);
    assert_eq!(
        (status.as_str(), body.as_str()),
        ("HTTP/1.1 200 OK", "late")
    );

    // An event stream that gets a message every 1.5 s.
    let c = TcpStream::connect(s.addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut w = c.try_clone().unwrap();
    let mut r = BufReader::new(c);
    w.write_all(b"GET /topics/slow HTTP/1.1\r\nHost: t\r\nAccept: text/event-stream\r\n\r\n")
        .unwrap();
    let mut line = String::new();
    while line.trim_end() != ": subscribed" {
        line.clear();
        assert!(r.read_line(&mut line).unwrap() > 0, "stream closed early");
    }
    for i in 0..3 {
        std::thread::sleep(Duration::from_millis(1500));
        let posted = agent()
            .post(&s.url("/topics/slow"))
            .set("Content-Type", "text/plain")
            .send_string(&format!("tick {i}"))
            .unwrap();
        assert_eq!(posted.status(), 201);
        let want = format!("data: tick {i}");
        loop {
            line.clear();
            assert!(
                r.read_line(&mut line).unwrap() > 0,
                "the stream was cut before {want}"
            );
            if line.trim_end() == want {
                break;
            }
        }
    }
    assert_eq!(
        metric(&s, "bindery_http_header_timeouts_total", "").unwrap(),
        0
    );
}
