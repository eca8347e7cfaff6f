//! A client that opens too many connections: past
//! `max_connections_per_address` its connections are closed at accept and
//! counted, while other addresses, and its own connections already open,
//! are served.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use common::Server;

/// A connection to `to` from the loopback address `from`.
fn connect_from(from: &str, to: SocketAddr) -> TcpStream {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    let local: SocketAddr = format!("{from}:0").parse().unwrap();
    s.bind(&local.into()).unwrap();
    s.connect(&to.into()).unwrap();
    let s: TcpStream = s.into();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// Whether `s` is answered `200` for `/healthz`, or was closed.
fn served(s: &mut TcpStream) -> bool {
    if s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut buf = [0u8; 256];
    match s.read(&mut buf) {
        Ok(n) => buf[..n].starts_with(b"HTTP/1.1 200"),
        Err(_) => false,
    }
}

#[test]
fn past_its_limit_an_address_is_refused_and_others_are_served() {
    let server = Server::start(&common::config(
        "[instances.http.config]\nmax_connections_per_address = 3\n",
    ));
    let mut mine: Vec<TcpStream> = (0..3)
        .map(|_| connect_from("127.0.0.1", server.addr))
        .collect();
    for s in &mut mine {
        assert!(served(s), "the first three are served");
    }
    let mut fourth = connect_from("127.0.0.1", server.addr);
    assert!(
        !served(&mut fourth),
        "the fourth from the same address is closed"
    );
    let mut other = connect_from("127.0.0.5", server.addr);
    assert!(served(&mut other), "another address is served meanwhile");
    assert!(served(&mut mine[0]), "and so are the first three, still");
    // (Read from another address: this one is at its limit.)
    let mut m = connect_from("127.0.0.5", server.addr);
    m.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    m.read_to_string(&mut text).unwrap();
    let line = text
        .lines()
        .find(|l| {
            l.starts_with("bindery_connections_refused_per_address_total") && l.contains("\"http\"")
        })
        .unwrap_or_else(|| panic!("{text}"));
    assert!(line.ends_with(" 1"), "{line}");
    // One closes: the address may open another.
    drop(mine.pop());
    let mut again = None;
    for _ in 0..50 {
        let mut s = connect_from("127.0.0.1", server.addr);
        if served(&mut s) {
            again = Some(s);
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(again.is_some(), "a freed place is given again");
}
