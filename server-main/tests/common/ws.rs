//! A WebSocket client for the MQTT-over-WebSocket tests: tungstenite for
//! the handshake and frames, MQTT packets read from the byte stream the
//! binary frames carry; and raw frames for what a good client never sends.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use tungstenite::client::IntoClientRequest;
use tungstenite::protocol::WebSocket;
use tungstenite::{Bytes, Message};

/// A WebSocket connection speaking MQTT, and the bytes received not yet
/// read as packets.
pub struct WsMqtt<S: Read + Write = TcpStream> {
    pub ws: WebSocket<S>,
    pending: Vec<u8>,
}

/// Connects to `addr` offering subprotocol `mqtt`, checks it was chosen.
pub fn connect(addr: SocketAddr) -> WsMqtt {
    let stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    connect_over(&format!("ws://{addr}/mqtt"), stream)
}

/// The handshake for `url` over `stream` (TLS for `wss:`), offering
/// subprotocol `mqtt`; checks it was chosen.
pub fn connect_over<S: Read + Write>(url: &str, stream: S) -> WsMqtt<S> {
    let mut req = url.into_client_request().unwrap();
    req.headers_mut()
        .insert("Sec-WebSocket-Protocol", "mqtt".parse().unwrap());
    let (ws, resp) = tungstenite::client(req, stream).expect("websocket handshake");
    assert_eq!(resp.status(), 101);
    assert_eq!(resp.headers()["Sec-WebSocket-Protocol"], "mqtt");
    WsMqtt {
        ws,
        pending: Vec::new(),
    }
}

impl<S: Read + Write> WsMqtt<S> {
    /// Sends `bytes` as one binary message.
    pub fn send(&mut self, bytes: &[u8]) {
        self.ws
            .send(Message::Binary(Bytes::copy_from_slice(bytes)))
            .unwrap();
    }

    /// Writes raw bytes to the socket (hand-made frames).
    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.ws.get_mut().write_all(bytes).unwrap();
    }

    /// The next message that is not binary data (pong, close), keeping
    /// binary payloads for [`WsMqtt::packet`].
    pub fn next_other(&mut self) -> Message {
        loop {
            match self.ws.read().expect("a message within 10 s") {
                Message::Binary(b) => self.pending.extend_from_slice(&b),
                other => return other,
            }
        }
    }

    /// Keeps `bytes` as received data (for a test reading frames itself).
    pub fn pending_push(&mut self, bytes: &[u8]) {
        self.pending.extend_from_slice(bytes);
    }

    /// A whole MQTT packet received already, if there is one.
    pub fn try_packet(&mut self) -> Option<(u8, Vec<u8>)> {
        let (p, used) = parse(&self.pending)?;
        self.pending.drain(..used);
        Some(p)
    }

    /// The next MQTT packet: its first byte and body.
    pub fn packet(&mut self) -> (u8, Vec<u8>) {
        loop {
            if let Some(p) = self.try_packet() {
                return p;
            }
            match self.ws.read().expect("a message within 10 s") {
                Message::Binary(b) => self.pending.extend_from_slice(&b),
                Message::Ping(_) | Message::Pong(_) => {}
                other => panic!("want binary data, got {other:?}"),
            }
        }
    }

    /// CONNECT as `id` and check the CONNACK.
    pub fn mqtt_connect(&mut self, id: &str) {
        self.send(&super::mqtt::connect_packet(id, true, 30, None));
        assert_eq!(self.packet(), (0x20, vec![0, 0]), "{id}: CONNACK");
    }

    /// SUBSCRIBE to `filter` and check the SUBACK grants `qos`.
    pub fn subscribe(&mut self, filter: &str, qos: u8) {
        self.send(&super::mqtt::subscribe_packet(1, filter, qos));
        assert_eq!(self.packet(), (0x90, vec![0, 1, qos]), "SUBACK");
    }

    /// The next PUBLISH: topic and payload (QoS 1 ones are acknowledged).
    pub fn publish_in(&mut self) -> (String, Vec<u8>) {
        let (head, body) = self.packet();
        assert_eq!(head & 0xf0, 0x30, "want PUBLISH, got {head:#x}");
        let n = usize::from(u16::from_be_bytes([body[0], body[1]]));
        let topic = String::from_utf8(body[2..2 + n].to_vec()).unwrap();
        let mut at = 2 + n;
        if head & 0x06 != 0 {
            let id = [body[at], body[at + 1]];
            at += 2;
            self.send(&[0x40, 2, id[0], id[1]]);
        }
        (topic, body[at..].to_vec())
    }
}

/// One MQTT packet at the start of `b`, and its length.
fn parse(b: &[u8]) -> Option<((u8, Vec<u8>), usize)> {
    let (mut len, mut shift, mut at) = (0usize, 0, 1);
    loop {
        let byte = *b.get(at)?;
        len |= usize::from(byte & 0x7f) << shift;
        at += 1;
        if byte & 0x80 == 0 {
            break;
        }
        shift += 7;
    }
    let body = b.get(at..at + len)?;
    Some(((b[0], body.to_vec()), at + len))
}

/// A client frame, masked unless `unmasked`.
pub fn frame(first: u8, payload: &[u8], unmasked: bool) -> Vec<u8> {
    let mut out = vec![first];
    let bit = if unmasked { 0 } else { 0x80 };
    match payload.len() {
        n @ 0..=125 => out.push(bit | n as u8),
        n @ 126..=65535 => {
            out.push(bit | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(bit | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    let mask = [0x12, 0x34, 0x56, 0x78];
    if !unmasked {
        out.extend_from_slice(&mask);
    }
    out.extend(
        payload
            .iter()
            .enumerate()
            .map(|(i, b)| if unmasked { *b } else { b ^ mask[i % 4] }),
    );
    out
}

/// Sends a raw handshake `request` and returns the response as the server
/// sent it before closing (only the head of a `101`).
pub fn raw_handshake(addr: SocketAddr, request: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    // To the end, or the head of a 101 (that connection stays open).
    while !(got.starts_with(b"HTTP/1.1 101 ") && got.ends_with(b"\r\n\r\n")) {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

/// A handshake request offering `protocol` (none: no header).
pub fn request(protocol: Option<&str>) -> String {
    let offer = protocol.map_or(String::new(), |p| {
        format!("Sec-WebSocket-Protocol: {p}\r\n")
    });
    format!(
        "GET /mqtt HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{offer}\r\n"
    )
}
