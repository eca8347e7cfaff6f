//! Just enough AMQP 0-9-1 for load: the handshake (PLAIN guest/guest, vhost
//! `/`), a queue, publishes with and without confirms, a consumer with
//! prefetch and multiple acks. Written against the spec, not against
//! Bindery, so it loads RabbitMQ the same way.

use std::io::{BufReader, BufWriter, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::{Context, bail};

/// One frame: type, channel, payload.
pub(crate) struct Frame {
    pub(crate) kind: u8,
    pub(crate) payload: Vec<u8>,
}

impl Frame {
    /// Class and method of a method frame.
    pub(crate) fn method(&self) -> Option<(u16, u16)> {
        (self.kind == 1 && self.payload.len() >= 4).then(|| {
            (
                u16::from_be_bytes([self.payload[0], self.payload[1]]),
                u16::from_be_bytes([self.payload[2], self.payload[3]]),
            )
        })
    }
}

/// A connection with channel 1 open.
pub(crate) struct Conn {
    pub(crate) reader: BufReader<TcpStream>,
    pub(crate) writer: BufWriter<TcpStream>,
    frame_max: usize,
}

fn shortstr(out: &mut Vec<u8>, s: &str) {
    out.push(s.len() as u8);
    out.extend_from_slice(s.as_bytes());
}

fn longstr(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u32).to_be_bytes());
    out.extend_from_slice(s);
}

/// Appends a frame.
fn frame(out: &mut Vec<u8>, kind: u8, channel: u16, payload: &[u8]) {
    out.push(kind);
    out.extend_from_slice(&channel.to_be_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    out.push(0xce);
}

/// Appends a method frame on channel `ch`.
fn method(out: &mut Vec<u8>, ch: u16, class: u16, id: u16, args: &[u8]) {
    let mut p = Vec::with_capacity(4 + args.len());
    p.extend_from_slice(&class.to_be_bytes());
    p.extend_from_slice(&id.to_be_bytes());
    p.extend_from_slice(args);
    frame(out, 1, ch, &p);
}

impl Conn {
    /// Connects, negotiates (heartbeats off), opens channel 1.
    pub(crate) fn open(addr: SocketAddr) -> anyhow::Result<Conn> {
        let s = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        let mut c = Conn {
            reader: BufReader::with_capacity(256 * 1024, s.try_clone()?),
            writer: BufWriter::with_capacity(64 * 1024, s),
            frame_max: 131_072,
        };
        c.writer.write_all(b"AMQP\x00\x00\x09\x01")?;
        c.writer.flush()?;
        c.expect((10, 10), "connection.start")?;
        let mut args = Vec::new();
        args.extend_from_slice(&0u32.to_be_bytes()); // no client properties
        shortstr(&mut args, "PLAIN");
        longstr(&mut args, b"\0guest\0guest");
        shortstr(&mut args, "en_US");
        c.send(0, 10, 11, &args)?;
        let tune = c.expect((10, 30), "connection.tune")?;
        let p = &tune.payload;
        anyhow::ensure!(p.len() >= 12, "a short connection.tune");
        let channel_max = u16::from_be_bytes([p[4], p[5]]);
        let frame_max = u32::from_be_bytes([p[6], p[7], p[8], p[9]]);
        c.frame_max = if frame_max == 0 {
            131_072
        } else {
            frame_max as usize
        };
        let mut args = Vec::new();
        args.extend_from_slice(&channel_max.to_be_bytes());
        args.extend_from_slice(&(c.frame_max as u32).to_be_bytes());
        args.extend_from_slice(&0u16.to_be_bytes());
        c.send(0, 10, 31, &args)?;
        let mut args = Vec::new();
        shortstr(&mut args, "/");
        shortstr(&mut args, "");
        args.push(0);
        c.send(0, 10, 40, &args)?;
        c.expect((10, 41), "connection.open-ok")?;
        c.send(1, 20, 10, &[0])?;
        c.expect((20, 11), "channel.open-ok")?;
        Ok(c)
    }

    /// Sends one method and flushes.
    pub(crate) fn send(&mut self, ch: u16, class: u16, id: u16, args: &[u8]) -> anyhow::Result<()> {
        let mut out = Vec::new();
        method(&mut out, ch, class, id, args);
        self.writer.write_all(&out)?;
        self.writer.flush()?;
        Ok(())
    }

    /// The next frame.
    pub(crate) fn read(&mut self) -> anyhow::Result<Frame> {
        let mut head = [0u8; 7];
        self.reader.read_exact(&mut head)?;
        let size = u32::from_be_bytes([head[3], head[4], head[5], head[6]]) as usize;
        let mut payload = vec![0u8; size + 1];
        self.reader.read_exact(&mut payload)?;
        anyhow::ensure!(payload.pop() == Some(0xce), "a frame without its end octet");
        let f = Frame {
            kind: head[0],
            payload,
        };
        if let Some((10, 50) | (20, 40)) = f.method() {
            bail!(
                "the broker closed: {}",
                String::from_utf8_lossy(&f.payload[4..])
            );
        }
        Ok(f)
    }

    /// Reads until method `want` (skipping heartbeats and others).
    pub(crate) fn expect(&mut self, want: (u16, u16), what: &str) -> anyhow::Result<Frame> {
        loop {
            let f = self.read().with_context(|| format!("waiting for {what}"))?;
            if f.method() == Some(want) {
                return Ok(f);
            }
        }
    }

    /// Declares queue `q` (not durable, not exclusive).
    pub(crate) fn declare(&mut self, q: &str) -> anyhow::Result<()> {
        let mut args = vec![0, 0];
        shortstr(&mut args, q);
        args.push(0);
        args.extend_from_slice(&0u32.to_be_bytes());
        self.send(1, 50, 10, &args)?;
        self.expect((50, 11), "queue.declare-ok")?;
        Ok(())
    }

    /// Publisher confirms on channel 1.
    pub(crate) fn confirm_select(&mut self) -> anyhow::Result<()> {
        self.send(1, 85, 10, &[0])?;
        self.expect((85, 11), "confirm.select-ok")?;
        Ok(())
    }

    /// Consumes `q` with `prefetch` unacknowledged at most.
    pub(crate) fn consume(&mut self, q: &str, prefetch: u16) -> anyhow::Result<()> {
        let mut args = Vec::new();
        args.extend_from_slice(&0u32.to_be_bytes());
        args.extend_from_slice(&prefetch.to_be_bytes());
        args.push(0);
        self.send(1, 60, 10, &args)?;
        self.expect((60, 11), "basic.qos-ok")?;
        let mut args = vec![0, 0];
        shortstr(&mut args, q);
        shortstr(&mut args, "bench");
        args.push(0);
        args.extend_from_slice(&0u32.to_be_bytes());
        self.send(1, 60, 20, &args)?;
        self.expect((60, 21), "basic.consume-ok")?;
        Ok(())
    }

    /// Appends a publish of `body` to queue `q` (default exchange) to
    /// `out`.
    pub(crate) fn publish(&self, out: &mut Vec<u8>, q: &str, body: &[u8]) {
        let mut args = vec![0, 0];
        shortstr(&mut args, "");
        shortstr(&mut args, q);
        args.push(0);
        method(out, 1, 60, 40, &args);
        let mut h = Vec::with_capacity(14);
        h.extend_from_slice(&60u16.to_be_bytes());
        h.extend_from_slice(&0u16.to_be_bytes());
        h.extend_from_slice(&(body.len() as u64).to_be_bytes());
        h.extend_from_slice(&0u16.to_be_bytes());
        frame(out, 2, 1, &h);
        for part in body.chunks(self.frame_max - 8) {
            frame(out, 3, 1, part);
        }
    }

    /// Acknowledges every delivery up to `tag`.
    pub(crate) fn ack_upto(&mut self, tag: u64) -> anyhow::Result<()> {
        let mut args = tag.to_be_bytes().to_vec();
        args.push(1);
        self.send(1, 60, 80, &args)
    }
}

/// The delivery tag of a `basic.deliver`, or of a confirm's `basic.ack`
/// with its `multiple` bit.
pub(crate) fn tag(f: &Frame) -> Option<(u64, bool)> {
    match f.method()? {
        (60, 60) => {
            let p = &f.payload[4..];
            let n = *p.first()? as usize;
            let t = p.get(1 + n..9 + n)?;
            Some((u64::from_be_bytes(t.try_into().ok()?), false))
        }
        (60, 80) | (60, 120) => {
            let p = f.payload.get(4..13)?;
            Some((u64::from_be_bytes(p[..8].try_into().ok()?), p[8] & 1 != 0))
        }
        _ => None,
    }
}
