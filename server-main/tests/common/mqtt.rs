//! Raw MQTT 3.1.1 packets for tests that need exact bytes or volume.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// A CONNECT packet.
pub fn connect_packet(
    id: &str,
    clean: bool,
    keep_alive: u16,
    will: Option<(&str, &str)>,
) -> Vec<u8> {
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 4];
    let mut flags = if clean { 0x02 } else { 0 };
    if will.is_some() {
        flags |= 0x04 | 0x08; // will, QoS 1
    }
    body.push(flags);
    body.extend_from_slice(&keep_alive.to_be_bytes());
    body.extend_from_slice(&(id.len() as u16).to_be_bytes());
    body.extend_from_slice(id.as_bytes());
    if let Some((t, p)) = will {
        body.extend_from_slice(&(t.len() as u16).to_be_bytes());
        body.extend_from_slice(t.as_bytes());
        body.extend_from_slice(&(p.len() as u16).to_be_bytes());
        body.extend_from_slice(p.as_bytes());
    }
    let mut out = vec![0x10, body.len() as u8];
    out.extend(body);
    out
}

fn put_len(out: &mut Vec<u8>, mut n: usize) {
    loop {
        let b = (n % 128) as u8;
        n /= 128;
        out.push(if n > 0 { b | 0x80 } else { b });
        if n == 0 {
            return;
        }
    }
}

/// A SUBSCRIBE packet for one filter.
pub fn subscribe_packet(packet_id: u16, filter: &str, qos: u8) -> Vec<u8> {
    let mut out = vec![0x82];
    put_len(&mut out, 2 + 2 + filter.len() + 1);
    out.extend_from_slice(&packet_id.to_be_bytes());
    out.extend_from_slice(&(filter.len() as u16).to_be_bytes());
    out.extend_from_slice(filter.as_bytes());
    out.push(qos);
    out
}

/// Appends a PUBLISH packet.
pub fn publish_packet(out: &mut Vec<u8>, topic: &str, qos: u8, packet_id: u16, payload: &[u8]) {
    out.push(0x30 | (qos << 1));
    put_len(
        out,
        2 + topic.len() + if qos > 0 { 2 } else { 0 } + payload.len(),
    );
    out.extend_from_slice(&(topic.len() as u16).to_be_bytes());
    out.extend_from_slice(topic.as_bytes());
    if qos > 0 {
        out.extend_from_slice(&packet_id.to_be_bytes());
    }
    out.extend_from_slice(payload);
}

/// A connection with a 10 s read timeout.
pub fn raw(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// Reads a CONNACK.
pub fn connack(s: &mut TcpStream) -> [u8; 4] {
    let mut b = [0u8; 4];
    s.read_exact(&mut b).unwrap();
    b
}

/// Whether the server closes `s` within its read timeout (what it sent
/// before is read and dropped).
pub fn closed(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 64 * 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

/// Connects `s` as `id` (clean session) and subscribes it to `filter`,
/// waiting for the CONNACK and SUBACK; returns the granted QoS.
pub fn subscribe_on(s: &mut TcpStream, id: &str, filter: &str, qos: u8) -> u8 {
    s.write_all(&connect_packet(id, true, 0, None)).unwrap();
    assert_eq!(connack(s), [0x20, 2, 0, 0], "{id}: CONNACK");
    s.write_all(&subscribe_packet(1, filter, qos)).unwrap();
    let mut suback = [0u8; 5];
    s.read_exact(&mut suback).unwrap();
    assert_eq!(suback[..4], [0x90, 3, 0, 1], "{id}: SUBACK");
    suback[4]
}

/// Reads one packet: its first byte and its body.
pub fn read_packet(r: &mut impl BufRead) -> io::Result<(u8, Vec<u8>)> {
    let mut head = [0u8; 1];
    r.read_exact(&mut head)?;
    let (mut len, mut shift) = (0usize, 0);
    loop {
        let mut b = [0u8; 1];
        r.read_exact(&mut b)?;
        len |= usize::from(b[0] & 0x7f) << shift;
        if b[0] & 0x80 == 0 {
            break;
        }
        shift += 7;
        if shift > 21 {
            return Err(io::Error::other("remaining length too long"));
        }
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)?;
    Ok((head[0], body))
}

/// Reads PUBLISH packets from `s` until `want` arrived, or nothing came
/// for the read timeout; with `ack`, answers QoS 1 ones with PUBACK.
/// Returns how many arrived.
pub fn count_publishes(s: TcpStream, want: u64, ack: bool) -> u64 {
    let mut w = s.try_clone().unwrap();
    let mut r = BufReader::with_capacity(64 * 1024, s);
    let mut got = 0;
    let mut acks = Vec::new();
    while got < want {
        let Ok((head, body)) = read_packet(&mut r) else {
            break;
        };
        if head >> 4 != 3 {
            continue;
        }
        got += 1;
        let qos = (head >> 1) & 3;
        if ack && qos > 0 {
            let topic_len = u16::from_be_bytes([body[0], body[1]]) as usize;
            let id = &body[2 + topic_len..4 + topic_len];
            acks.extend_from_slice(&[0x40, 2, id[0], id[1]]);
        }
        if !acks.is_empty() && r.buffer().is_empty() {
            if w.write_all(&acks).is_err() {
                break;
            }
            acks.clear();
        }
    }
    got
}

/// Publishes `n` messages of `size` bytes to `topic` at `qos` over a new
/// connection, as fast as the server reads them (PUBACKs are read only at
/// the end).
pub fn publish_many(addr: SocketAddr, topic: &str, qos: u8, n: u64, size: usize) {
    let mut s = raw(addr);
    s.set_write_timeout(Some(Duration::from_secs(60))).unwrap();
    s.write_all(&connect_packet("", true, 0, None)).unwrap();
    assert_eq!(connack(&mut s), [0x20, 2, 0, 0]);
    let payload = vec![b'x'; size];
    let mut buf = Vec::with_capacity(64 * 1024);
    for i in 0..n {
        publish_packet(&mut buf, topic, qos, (i % 65_535 + 1) as u16, &payload);
        if buf.len() >= 32 * 1024 {
            s.write_all(&buf).unwrap();
            buf.clear();
        }
    }
    s.write_all(&buf).unwrap();
    // DISCONNECT: the server has read everything before it closes.
    s.write_all(&[0xe0, 0]).unwrap();
    assert!(closed(&mut s), "the server closes after DISCONNECT");
}
