//! Just enough of the NATS client protocol for load: CONNECT, SUB, PUB and
//! reading MSG, over the same blocking connection as the MQTT client, so
//! `scripts/bench-mqtt` can set nats-server's own (fastest) protocol beside
//! Bindery's MQTT in one run. Core NATS has no acknowledgement, so only the
//! QoS 0 scenarios apply.

use std::io::{self, BufRead, Read, Write};

use anyhow::{Context, bail};

use crate::mqtt::{Conn, Incoming};

/// Appends a PUB to `out`.
pub(crate) fn publish(out: &mut Vec<u8>, subject: &str, payload: &[u8]) {
    out.extend_from_slice(b"PUB ");
    out.extend_from_slice(subject.as_bytes());
    out.push(b' ');
    out.extend_from_slice(payload.len().to_string().as_bytes());
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(payload);
    out.extend_from_slice(b"\r\n");
}

/// Reads the server's INFO, sends CONNECT (no echo of +OK) and waits for
/// the PONG that answers a PING, so the connection is in use.
pub(crate) fn handshake(c: &mut Conn) -> anyhow::Result<()> {
    let mut line = String::new();
    c.reader.read_line(&mut line).context("reading INFO")?;
    if !line.starts_with("INFO ") {
        bail!("not a NATS server: {:?}", line.trim_end());
    }
    c.writer
        .write_all(b"CONNECT {\"verbose\":false,\"pedantic\":false,\"echo\":true}\r\n")?;
    ping(c)
}

/// Sends PING and reads until its PONG.
fn ping(c: &mut Conn) -> anyhow::Result<()> {
    c.writer.write_all(b"PING\r\n")?;
    c.writer.flush()?;
    loop {
        if let Incoming::Other(b'P') = read(c)? {
            return Ok(());
        }
    }
}

/// Subscribes to `subject` and waits until the server has it (a PING's
/// PONG comes after the SUB is processed).
pub(crate) fn subscribe(c: &mut Conn, subject: &str) -> anyhow::Result<()> {
    write!(c.writer, "SUB {subject} 1\r\n")?;
    ping(c)
}

/// Reads the next operation: a MSG as `Publish`, a PONG as `Other(b'P')`,
/// anything else (`+OK`, INFO) as `Other(0)`. A PING is answered here.
pub(crate) fn read(c: &mut Conn) -> io::Result<Incoming> {
    let mut line = Vec::with_capacity(64);
    loop {
        line.clear();
        if c.reader.read_until(b'\n', &mut line)? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let text = line.strip_suffix(b"\r\n").unwrap_or(&line);
        if let Some(rest) = text.strip_prefix(b"MSG ") {
            // MSG <subject> <sid> [reply-to] <#bytes>
            let len = rest
                .rsplit(|&b| b == b' ')
                .next()
                .and_then(|n| std::str::from_utf8(n).ok()?.parse::<usize>().ok())
                .ok_or_else(|| io::Error::other("a MSG line without a length"))?;
            let mut payload = vec![0u8; len + 2];
            c.reader.read_exact(&mut payload)?;
            payload.truncate(len);
            return Ok(Incoming::Publish {
                payload,
                packet_id: 0,
                qos: 0,
            });
        }
        if text == b"PING" {
            c.writer.write_all(b"PONG\r\n")?;
            c.writer.flush()?;
            continue;
        }
        if text == b"PONG" {
            return Ok(Incoming::Other(b'P'));
        }
        if let Some(err) = text.strip_prefix(b"-ERR") {
            return Err(io::Error::other(format!(
                "nats-server: {}",
                String::from_utf8_lossy(err).trim()
            )));
        }
        return Ok(Incoming::Other(0));
    }
}
