//! The wire between a proxy and its host: one frame codec, versioned in
//! the hello.
//!
//! ```text
//! frame   = length:u32 kind:u8 id:u64 payload      (little-endian; length
//!                                                   counts kind, id, payload)
//! string  = len:u32 utf-8 bytes
//! bytes   = len:u32 bytes
//! message = id:u64 destination:string content_type:string
//!           headers:(count:u32 (name:string value:string)*)
//!           body:bytes timestamp_us:u64 delivery_count:u32
//! failure = kind:u8 reason:string retry_after_ms:u64 (0: none)
//! ```
//!
//! `id` is the request id of a call and of its reply (the proxy numbers
//! its calls; many are in flight, replies come in any order), or the
//! subscription id of a delivery, credit or cancel. See
//! `docs/isolation.md` for the conversation.

use std::io::{self, Read};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use bindery::{Failure, FailureKind};
use bytes::Bytes;

use crate::driver::{DestinationStats, Receipt};
use crate::message::{Message, MessageId};
use crate::parser::ParseError;

/// The protocol version, sent in [`Kind::Hello`] and [`Kind::Create`]; a
/// peer speaking another refuses to go on, saying both.
pub const VERSION: u16 = 1;

/// What a host says first: these bytes, then the version and its pid.
pub const MAGIC: &[u8; 8] = b"BINDERY\x01";

/// The largest frame either side accepts (a message body and its head).
pub const MAX_FRAME: usize = 256 << 20;

/// Frame kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
#[allow(missing_docs)] // each is documented in docs/isolation.md
pub enum Kind {
    Hello = 0x01,
    Create = 0x02,
    Created = 0x03,
    Auth = 0x04,
    Publish = 0x10,
    Subscribe = 0x11,
    Ack = 0x12,
    Release = 0x13,
    Stats = 0x14,
    Validate = 0x15,
    Stop = 0x16,
    Ping = 0x17,
    Retry = 0x18,
    Credit = 0x20,
    Cancel = 0x21,
    Deliver = 0x30,
    Closed = 0x31,
    Done = 0x80,
    Receipt = 0x81,
    Failed = 0x82,
    StatsReply = 0x83,
    Invalid = 0x84,
}

impl Kind {
    fn from_u8(b: u8) -> Option<Kind> {
        use Kind::*;
        Some(match b {
            0x01 => Hello,
            0x02 => Create,
            0x03 => Created,
            0x04 => Auth,
            0x10 => Publish,
            0x11 => Subscribe,
            0x12 => Ack,
            0x13 => Release,
            0x14 => Stats,
            0x15 => Validate,
            0x16 => Stop,
            0x17 => Ping,
            0x18 => Retry,
            0x20 => Credit,
            0x21 => Cancel,
            0x30 => Deliver,
            0x31 => Closed,
            0x80 => Done,
            0x81 => Receipt,
            0x82 => Failed,
            0x83 => StatsReply,
            0x84 => Invalid,
            _ => return None,
        })
    }
}

/// Appends one frame to `out`; `payload` writes its payload.
pub fn encode(out: &mut Vec<u8>, kind: Kind, id: u64, payload: impl FnOnce(&mut Enc<'_>)) {
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    out.push(kind as u8);
    out.extend_from_slice(&id.to_le_bytes());
    payload(&mut Enc(out));
    let len = (out.len() - start - 4) as u32;
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
}

/// Writes payload fields.
pub struct Enc<'a>(&'a mut Vec<u8>);

impl Enc<'_> {
    /// A byte.
    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.0.push(v);
        self
    }
    /// A `u16`.
    pub fn u16(&mut self, v: u16) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    /// A `u32`.
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    /// A `u64`.
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    /// Length-prefixed bytes.
    pub fn bytes(&mut self, v: &[u8]) -> &mut Self {
        self.u32(v.len() as u32);
        self.0.extend_from_slice(v);
        self
    }
    /// A length-prefixed string.
    pub fn str(&mut self, v: &str) -> &mut Self {
        self.bytes(v.as_bytes())
    }
    /// A message.
    pub fn message(&mut self, m: &Message) -> &mut Self {
        self.u64(m.id.0).str(&m.destination).str(&m.content_type);
        self.u32(m.headers.len() as u32);
        for (k, v) in m.headers.iter() {
            self.str(k).str(v);
        }
        let ts = m
            .timestamp
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        self.bytes(&m.body).u64(ts).u32(m.delivery_count)
    }
    /// A failure.
    pub fn failure(&mut self, f: &Failure) -> &mut Self {
        let kind = match f.kind {
            FailureKind::NotFound => 1,
            FailureKind::Rejected => 2,
            FailureKind::Unsupported => 3,
            FailureKind::Full => 4,
            FailureKind::Unavailable => 5,
            FailureKind::Dropped => 6,
            FailureKind::Capacity => 8,
            _ => 7,
        };
        let retry = f.retry_after.map_or(0, |d| (d.as_millis() as u64).max(1));
        self.u8(kind).str(&f.reason).u64(retry)
    }
    /// A receipt.
    pub fn receipt(&mut self, r: &Receipt) -> &mut Self {
        self.u64(r.id.0).u32(r.delivered_to).u32(r.backlog)
    }
    /// Destination counters.
    pub fn stats(&mut self, all: &[DestinationStats]) -> &mut Self {
        self.u32(all.len() as u32);
        for s in all {
            self.str(&s.destination);
            for v in [
                s.depth,
                s.leased,
                s.consumers,
                s.published,
                s.delivered,
                s.acked,
                s.dropped,
                s.stalled,
                s.store_full,
                s.refused,
            ] {
                self.u64(v);
            }
        }
        self
    }
    /// A parser's refusal.
    pub fn parse_error(&mut self, e: &ParseError) -> &mut Self {
        self.u8(e.offset.is_some() as u8)
            .u64(e.offset.unwrap_or(0) as u64)
            .str(&e.reason)
    }
}

/// A frame as read.
#[derive(Debug)]
pub struct Frame {
    /// Its kind.
    pub kind: Kind,
    /// Request or subscription id.
    pub id: u64,
    /// The payload, read with [`Dec`].
    pub payload: Bytes,
}

/// Reads one frame; `Ok(None)` at a clean end of stream.
pub fn read(r: &mut impl Read) -> io::Result<Option<Frame>> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_le_bytes(len) as usize;
    if !(9..=MAX_FRAME).contains(&len) {
        return Err(bad(format!(
            "frame length {len} is outside 9..={MAX_FRAME}"
        )));
    }
    let mut buf = vec![0u8; len];
    r.read_exact(&mut buf)?;
    let kind =
        Kind::from_u8(buf[0]).ok_or_else(|| bad(format!("unknown frame kind {:#04x}", buf[0])))?;
    let id = u64::from_le_bytes(buf[1..9].try_into().expect("8 bytes"));
    let payload = Bytes::from(buf).slice(9..);
    Ok(Some(Frame { kind, id, payload }))
}

fn bad(why: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why)
}

/// Reads payload fields; every error names the byte offset in the payload.
pub struct Dec {
    buf: Bytes,
    at: usize,
}

impl Dec {
    /// Reads `frame`'s payload.
    pub fn new(frame: &Frame) -> Dec {
        Dec {
            buf: frame.payload.clone(),
            at: 0,
        }
    }

    fn take(&mut self, n: usize, what: &str) -> io::Result<Bytes> {
        if self.buf.len() - self.at < n {
            return Err(bad(format!(
                "payload ends at byte {} in the middle of {what} ({n} bytes wanted)",
                self.buf.len()
            )));
        }
        let b = self.buf.slice(self.at..self.at + n);
        self.at += n;
        Ok(b)
    }

    /// A byte.
    pub fn u8(&mut self) -> io::Result<u8> {
        Ok(self.take(1, "a u8")?[0])
    }
    /// A `u16`.
    pub fn u16(&mut self) -> io::Result<u16> {
        Ok(u16::from_le_bytes(
            self.take(2, "a u16")?[..].try_into().expect("2"),
        ))
    }
    /// A `u32`.
    pub fn u32(&mut self) -> io::Result<u32> {
        Ok(u32::from_le_bytes(
            self.take(4, "a u32")?[..].try_into().expect("4"),
        ))
    }
    /// A `u64`.
    pub fn u64(&mut self) -> io::Result<u64> {
        Ok(u64::from_le_bytes(
            self.take(8, "a u64")?[..].try_into().expect("8"),
        ))
    }
    /// Length-prefixed bytes (shared, not copied).
    pub fn bytes(&mut self) -> io::Result<Bytes> {
        let n = self.u32()? as usize;
        self.take(n, "a byte string")
    }
    /// A length-prefixed string.
    pub fn string(&mut self) -> io::Result<String> {
        let at = self.at;
        let b = self.bytes()?;
        String::from_utf8(b.to_vec())
            .map_err(|e| bad(format!("string at byte {at} is not UTF-8: {e}")))
    }
    /// A message.
    pub fn message(&mut self) -> io::Result<Message> {
        let id = MessageId(self.u64()?);
        let destination: Arc<str> = self.string()?.into();
        let content_type: Arc<str> = self.string()?.into();
        let n = self.u32()? as usize;
        let mut headers = Vec::with_capacity(n.min(1024));
        for _ in 0..n {
            headers.push((self.string()?.into(), self.string()?.into()));
        }
        let body = self.bytes()?;
        let timestamp = UNIX_EPOCH + Duration::from_micros(self.u64()?);
        let delivery_count = self.u32()?;
        Ok(Message {
            id,
            destination,
            content_type,
            headers: headers.into(),
            body,
            timestamp,
            delivery_count,
        })
    }
    /// A failure.
    pub fn failure(&mut self) -> io::Result<Failure> {
        let kind = match self.u8()? {
            1 => FailureKind::NotFound,
            2 => FailureKind::Rejected,
            3 => FailureKind::Unsupported,
            4 => FailureKind::Full,
            5 => FailureKind::Unavailable,
            6 => FailureKind::Dropped,
            8 => FailureKind::Capacity,
            _ => FailureKind::Internal,
        };
        let reason = self.string()?;
        let retry = self.u64()?;
        let f = Failure::new(kind, reason);
        Ok(if retry > 0 {
            f.retry_after(Duration::from_millis(retry))
        } else {
            f
        })
    }
    /// A receipt.
    pub fn receipt(&mut self) -> io::Result<Receipt> {
        Ok(Receipt {
            id: MessageId(self.u64()?),
            delivered_to: self.u32()?,
            backlog: self.u32()?,
        })
    }
    /// Destination counters.
    pub fn stats(&mut self) -> io::Result<Vec<DestinationStats>> {
        let n = self.u32()? as usize;
        let mut all = Vec::with_capacity(n.min(1024));
        for _ in 0..n {
            let destination = self.string()?;
            let mut v = [0u64; 10];
            for x in &mut v {
                *x = self.u64()?;
            }
            all.push(DestinationStats {
                destination,
                depth: v[0],
                leased: v[1],
                consumers: v[2],
                published: v[3],
                delivered: v[4],
                acked: v[5],
                dropped: v[6],
                stalled: v[7],
                store_full: v[8],
                refused: v[9],
            });
        }
        Ok(all)
    }
    /// A parser's refusal.
    pub fn parse_error(&mut self) -> io::Result<ParseError> {
        let has = self.u8()? != 0;
        let offset = self.u64()? as usize;
        let reason = self.string()?;
        Ok(ParseError {
            offset: has.then_some(offset),
            reason,
            unavailable: false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_round_trips() {
        let m = Message::new("/q/a", "text/plain", "hello")
            .with_headers(vec![("k".into(), "v".into())]);
        let mut out = Vec::new();
        encode(&mut out, Kind::Publish, 7, |e| {
            e.message(&m);
        });
        let f = read(&mut &out[..]).unwrap().unwrap();
        assert_eq!((f.kind, f.id), (Kind::Publish, 7));
        let back = Dec::new(&f).message().unwrap();
        assert_eq!(back.id, m.id);
        assert_eq!(&*back.destination, "/q/a");
        assert_eq!(&back.body[..], b"hello");
        assert_eq!(back.headers.len(), 1);
    }

    #[test]
    fn truncated_and_unknown_frames_are_errors_naming_the_fault() {
        let mut out = Vec::new();
        encode(&mut out, Kind::Publish, 1, |e| {
            e.str("abc");
        });
        out[4] = 0x7f;
        let e = read(&mut &out[..]).unwrap_err();
        assert!(e.to_string().contains("0x7f"), "{e}");
        let mut out = Vec::new();
        encode(&mut out, Kind::Publish, 1, |e| {
            e.u32(100);
        });
        let f = read(&mut &out[..]).unwrap().unwrap();
        let e = Dec::new(&f).bytes().unwrap_err();
        assert!(e.to_string().contains("byte 4"), "{e}");
        assert!(read(&mut &[][..]).unwrap().is_none());
        let e = read(&mut &[3, 0, 0, 0][..]).unwrap_err();
        assert!(e.to_string().contains("length 3"), "{e}");
    }
}
