//! Just enough of an MQTT 3.1.1 client for load: CONNECT, SUBSCRIBE,
//! PUBLISH (QoS 0 and 1) and reading what comes back, over blocking
//! sockets. The same connection speaks NATS when asked (see `nats`).

use std::io::{self, BufReader, BufWriter, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::{Context, bail};

/// A packet read from the broker.
pub(crate) enum Incoming {
    /// A message: its payload, packet id and QoS.
    Publish {
        payload: Vec<u8>,
        packet_id: u16,
        qos: u8,
    },
    /// A PUBACK.
    PubAck,
    /// Anything else, by type.
    Other(u8),
}

/// The protocol a connection speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Wire {
    /// MQTT 3.1.1.
    Mqtt,
    /// The NATS client protocol (QoS 0 only).
    Nats,
}

impl Wire {
    /// Appends one publish of `payload` to `topic` (an MQTT topic; NATS
    /// gets it with `.` for `/`).
    pub(crate) fn publish(
        self,
        out: &mut Vec<u8>,
        topic: &str,
        payload: &[u8],
        qos: u8,
        packet_id: u16,
    ) {
        match self {
            Wire::Mqtt => publish(out, topic, payload, qos, packet_id),
            Wire::Nats => crate::nats::publish(out, topic, payload),
        }
    }

    /// `topic` as this protocol names it.
    pub(crate) fn topic(self, topic: &str) -> String {
        match self {
            Wire::Mqtt => topic.to_string(),
            Wire::Nats => topic.replace('/', "."),
        }
    }
}

/// One connection to the broker.
pub(crate) struct Conn {
    pub(crate) reader: BufReader<TcpStream>,
    pub(crate) writer: BufWriter<TcpStream>,
    /// The protocol it speaks.
    pub(crate) wire: Wire,
}

fn put_len(out: &mut Vec<u8>, mut n: usize) {
    loop {
        let mut b = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            b |= 0x80;
        }
        out.push(b);
        if n == 0 {
            return;
        }
    }
}

fn put_str(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s);
}

/// Appends a PUBLISH packet to `out`.
pub(crate) fn publish(out: &mut Vec<u8>, topic: &str, payload: &[u8], qos: u8, packet_id: u16) {
    let len = 2 + topic.len() + if qos > 0 { 2 } else { 0 } + payload.len();
    out.push(0x30 | (qos << 1));
    put_len(out, len);
    put_str(out, topic.as_bytes());
    if qos > 0 {
        out.extend_from_slice(&packet_id.to_be_bytes());
    }
    out.extend_from_slice(payload);
}

impl Conn {
    /// Connects and completes the CONNECT handshake.
    pub(crate) fn open(addr: SocketAddr, client_id: &str, wire: Wire) -> anyhow::Result<Conn> {
        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .with_context(|| format!("connecting to {addr}"))?;
        Conn::handshake(addr, s, client_id, wire)
    }

    /// Connects with a small receive buffer: a client that will stall
    /// (subscribe, then never read).
    pub(crate) fn open_small(
        addr: SocketAddr,
        client_id: &str,
        wire: Wire,
    ) -> anyhow::Result<Conn> {
        use socket2::{Domain, Socket, Type};
        let s = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
        s.set_recv_buffer_size(4096)?;
        s.connect_timeout(&addr.into(), Duration::from_secs(5))
            .with_context(|| format!("connecting to {addr}"))?;
        Conn::handshake(addr, s.into(), client_id, wire)
    }

    fn handshake(
        addr: SocketAddr,
        s: TcpStream,
        client_id: &str,
        wire: Wire,
    ) -> anyhow::Result<Conn> {
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        let mut c = Conn {
            reader: BufReader::with_capacity(1 << 16, s.try_clone()?),
            writer: BufWriter::with_capacity(1 << 16, s),
            wire,
        };
        if wire == Wire::Nats {
            crate::nats::handshake(&mut c).with_context(|| format!("{addr}"))?;
            return Ok(c);
        }
        let mut body = Vec::new();
        put_str(&mut body, b"MQTT");
        body.extend_from_slice(&[4, 0x02, 0, 60]);
        put_str(&mut body, client_id.as_bytes());
        let mut p = vec![0x10];
        put_len(&mut p, body.len());
        p.extend(body);
        c.writer.write_all(&p)?;
        c.writer.flush()?;
        match c.read()? {
            Incoming::Other(2) => Ok(c),
            _ => bail!("{addr}: no CONNACK"),
        }
    }

    /// Subscribes to `filter` at `qos` and waits for the SUBACK.
    pub(crate) fn subscribe(&mut self, filter: &str, qos: u8) -> anyhow::Result<()> {
        if self.wire == Wire::Nats {
            return crate::nats::subscribe(self, &Wire::Nats.topic(filter));
        }
        let mut body = vec![0, 1];
        put_str(&mut body, filter.as_bytes());
        body.push(qos);
        let mut p = vec![0x82];
        put_len(&mut p, body.len());
        p.extend(body);
        self.writer.write_all(&p)?;
        self.writer.flush()?;
        loop {
            if let Incoming::Other(9) = self.read()? {
                return Ok(());
            }
        }
    }

    /// Reads the next packet.
    pub(crate) fn read(&mut self) -> io::Result<Incoming> {
        if self.wire == Wire::Nats {
            return crate::nats::read(self);
        }
        let mut first = [0u8; 1];
        self.reader.read_exact(&mut first)?;
        let mut len = 0usize;
        for i in 0..4 {
            let mut b = [0u8; 1];
            self.reader.read_exact(&mut b)?;
            len |= ((b[0] & 0x7f) as usize) << (7 * i);
            if b[0] & 0x80 == 0 {
                break;
            }
        }
        let mut body = vec![0u8; len];
        self.reader.read_exact(&mut body)?;
        let kind = first[0] >> 4;
        match kind {
            3 if body.len() >= 2 => {
                let qos = (first[0] >> 1) & 3;
                let tl = u16::from_be_bytes([body[0], body[1]]) as usize;
                let mut at = 2 + tl;
                let mut packet_id = 0;
                if qos > 0 && body.len() >= at + 2 {
                    packet_id = u16::from_be_bytes([body[at], body[at + 1]]);
                    at += 2;
                }
                let payload = body.get(at..).unwrap_or_default().to_vec();
                Ok(Incoming::Publish {
                    payload,
                    packet_id,
                    qos,
                })
            }
            4 => Ok(Incoming::PubAck),
            k => Ok(Incoming::Other(k)),
        }
    }

    /// Acknowledges a QoS 1 message.
    pub(crate) fn puback(&mut self, id: u16) -> io::Result<()> {
        let b = id.to_be_bytes();
        self.writer.write_all(&[0x40, 2, b[0], b[1]])
    }
}
