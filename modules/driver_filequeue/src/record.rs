//! Journal records: framing, checksums, encoding and decoding.
//!
//! ```text
//! record  = len:u32le crc:u32le kind:u8 payload      len = 1 + payload length
//!                                                     crc = CRC-32 of kind and payload
//! publish = id:u64 micros:u64 dest:str16 type:str16 headers:u16 (name:str16 value:str32)* body:bytes32
//! ack     = id:u64 dest:str16
//! ```
//!
//! Decoding never panics and never returns a record whose checksum does not
//! match: whatever the bytes, it yields a record, the end, or the offset and
//! reason of the first fault.

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use bindery_classes::message::Header;
use bindery_classes::{Message, MessageId};
use bytes::Bytes;

/// Bytes before a record's kind: length and checksum.
pub(crate) const FRAME: usize = 8;
/// The largest record accepted when reading (a body of 256 MiB and change).
pub(crate) const MAX_RECORD: usize = 256 * 1024 * 1024 + 64 * 1024;

const PUBLISH: u8 = 1;
const ACK: u8 = 2;

/// A decoded record.
#[derive(Debug, Clone)]
pub(crate) enum Record {
    Publish(Message),
    /// The destination is journaled for people reading the file; replay
    /// needs only the id.
    Ack {
        id: MessageId,
    },
}

/// Appends a publish record for `m` to `out`.
pub(crate) fn encode_publish(out: &mut Vec<u8>, m: &Message) -> Result<(), String> {
    let start = begin(out, PUBLISH);
    out.extend_from_slice(&m.id.0.to_le_bytes());
    let micros = m
        .timestamp
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64);
    out.extend_from_slice(&micros.to_le_bytes());
    str16(out, &m.destination)?;
    str16(out, &m.content_type)?;
    let n = u16::try_from(m.headers.len()).map_err(|_| "more than 65535 headers")?;
    out.extend_from_slice(&n.to_le_bytes());
    for (k, v) in m.headers.iter() {
        str16(out, k)?;
        bytes32(out, v.as_bytes())?;
    }
    bytes32(out, &m.body)?;
    finish(out, start)
}

/// Appends an ack record to `out`.
pub(crate) fn encode_ack(
    out: &mut Vec<u8>,
    id: MessageId,
    destination: &str,
) -> Result<(), String> {
    let start = begin(out, ACK);
    out.extend_from_slice(&id.0.to_le_bytes());
    str16(out, destination)?;
    finish(out, start)
}

fn begin(out: &mut Vec<u8>, kind: u8) -> usize {
    let start = out.len();
    out.extend_from_slice(&[0; FRAME]);
    out.push(kind);
    start
}

fn finish(out: &mut Vec<u8>, start: usize) -> Result<(), String> {
    let len = out.len() - start - FRAME;
    if len > MAX_RECORD {
        out.truncate(start);
        return Err(format!(
            "a record of {len} bytes exceeds the journal's {MAX_RECORD}"
        ));
    }
    let crc = crc32fast::hash(&out[start + FRAME..]);
    out[start..start + 4].copy_from_slice(&(len as u32).to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    Ok(())
}

fn str16(out: &mut Vec<u8>, s: &str) -> Result<(), String> {
    let n =
        u16::try_from(s.len()).map_err(|_| format!("a string of {} bytes is too long", s.len()))?;
    out.extend_from_slice(&n.to_le_bytes());
    out.extend_from_slice(s.as_bytes());
    Ok(())
}

fn bytes32(out: &mut Vec<u8>, b: &[u8]) -> Result<(), String> {
    let n = u32::try_from(b.len()).map_err(|_| format!("{} bytes is too long", b.len()))?;
    out.extend_from_slice(&n.to_le_bytes());
    out.extend_from_slice(b);
    Ok(())
}

/// What the next bytes of a segment hold.
#[derive(Debug)]
pub(crate) enum Next {
    /// A record, and the bytes it took.
    Record(Record, usize),
    /// Nothing more: the segment ends here (or is zero-filled from here).
    End,
    /// A torn or corrupted record.
    Fault(String),
}

/// Decodes the record at the start of `buf`.
pub(crate) fn decode(buf: &[u8]) -> Next {
    if buf.is_empty() {
        return Next::End;
    }
    if buf.len() < FRAME + 1 {
        if buf.iter().all(|&b| b == 0) {
            return Next::End;
        }
        return Next::Fault(format!("a torn record frame ({} bytes)", buf.len()));
    }
    let len = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    let crc = u32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]]);
    if len == 0 {
        if buf.iter().take(4096).all(|&b| b == 0) {
            return Next::End;
        }
        return Next::Fault("a record of length 0".into());
    }
    if len > MAX_RECORD {
        return Next::Fault(format!("a record length of {len} bytes"));
    }
    let Some(body) = buf.get(FRAME..FRAME + len) else {
        return Next::Fault(format!(
            "a torn record: {len} bytes announced, {} present",
            buf.len() - FRAME
        ));
    };
    if crc32fast::hash(body) != crc {
        return Next::Fault("a checksum mismatch".into());
    }
    match parse(body) {
        Some(r) => Next::Record(r, FRAME + len),
        None => Next::Fault("a record whose fields do not fit it".into()),
    }
}

/// Reads fields off a checksummed record body.
struct Fields<'a>(&'a [u8]);

impl<'a> Fields<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Option<u64> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Some(u64::from_le_bytes(a))
    }
    fn str16(&mut self) -> Option<&'a str> {
        let n = self.u16()? as usize;
        std::str::from_utf8(self.take(n)?).ok()
    }
    fn bytes32(&mut self) -> Option<&'a [u8]> {
        let n = self.u32()? as usize;
        self.take(n)
    }
}

fn parse(body: &[u8]) -> Option<Record> {
    let (&kind, rest) = body.split_first()?;
    let mut f = Fields(rest);
    let record = match kind {
        PUBLISH => {
            let id = MessageId(f.u64()?);
            let micros = f.u64()?;
            let destination: Arc<str> = f.str16()?.into();
            let content_type: Arc<str> = f.str16()?.into();
            let n = f.u16()? as usize;
            let mut headers: Vec<Header> = Vec::with_capacity(n.min(64));
            for _ in 0..n {
                let k = f.str16()?;
                let v = std::str::from_utf8(f.bytes32()?).ok()?;
                headers.push((k.into(), v.into()));
            }
            let body = Bytes::copy_from_slice(f.bytes32()?);
            Record::Publish(Message {
                id,
                destination,
                content_type,
                headers: headers.into(),
                body,
                timestamp: UNIX_EPOCH + Duration::from_micros(micros),
                delivery_count: 0,
            })
        }
        ACK => {
            let id = MessageId(f.u64()?);
            f.str16()?;
            Record::Ack { id }
        }
        _ => return None,
    };
    // Every byte accounted for.
    f.0.is_empty().then_some(record)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_detects_damage() {
        let m = Message::new("/d/q", "text/plain", "hello")
            .with_headers(vec![("x-a".into(), "1".into())]);
        let mut buf = Vec::new();
        encode_publish(&mut buf, &m).unwrap();
        encode_ack(&mut buf, m.id, "/d/q").unwrap();
        let Next::Record(Record::Publish(back), n) = decode(&buf) else {
            panic!("no publish")
        };
        assert_eq!(
            (back.id, &back.body[..], &*back.destination),
            (m.id, &b"hello"[..], "/d/q")
        );
        assert_eq!(back.headers.len(), 1);
        let Next::Record(Record::Ack { id }, k) = decode(&buf[n..]) else {
            panic!("no ack")
        };
        assert_eq!(id, m.id);
        assert!(matches!(decode(&buf[n + k..]), Next::End));
        let mut bad = buf.clone();
        bad[20] ^= 1;
        assert!(matches!(decode(&bad), Next::Fault(_)));
        assert!(matches!(decode(&buf[..n - 1]), Next::Fault(_)));
        assert!(matches!(decode(&[0u8; 100]), Next::End));
    }
}
