//! A message as it travels on a Redis channel: the sending node, then the
//! message, each field length-prefixed. Decoding never panics: a payload
//! that is not one (another program on the channel) is an error naming the
//! byte offset.

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use bindery_classes::{Message, MessageId};
use bytes::Bytes;

const VERSION: u8 = 1;

/// The payload of `m` sent by `node`.
pub(crate) fn encode(node: u64, m: &Message) -> Vec<u8> {
    let headers: Vec<(&str, &str)> = m.headers.iter().map(|(k, v)| (&**k, &**v)).collect();
    let headers = serde_json::to_vec(&headers).unwrap_or_else(|_| b"[]".to_vec());
    let ms = m
        .timestamp
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let mut out = Vec::with_capacity(64 + m.body.len() + headers.len());
    out.push(VERSION);
    out.extend_from_slice(&node.to_be_bytes());
    out.extend_from_slice(&m.id.0.to_be_bytes());
    out.extend_from_slice(&ms.to_be_bytes());
    for field in [m.content_type.as_bytes(), &headers, &m.body] {
        out.extend_from_slice(&(field.len() as u32).to_be_bytes());
        out.extend_from_slice(field);
    }
    out
}

struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], String> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.buf.len());
        let Some(end) = end else {
            return Err(format!(
                "payload ends at byte {} inside the {what}",
                self.buf.len()
            ));
        };
        let s = &self.buf[self.at..end];
        self.at = end;
        Ok(s)
    }

    fn u64(&mut self, what: &str) -> Result<u64, String> {
        let b = self.take(8, what)?;
        Ok(u64::from_be_bytes(
            b.try_into().map_err(|_| what.to_string())?,
        ))
    }

    fn field(&mut self, what: &str) -> Result<&'a [u8], String> {
        let b = self.take(4, what)?;
        let n = u32::from_be_bytes(b.try_into().map_err(|_| what.to_string())?);
        self.take(n as usize, what)
    }
}

/// The sending node and the message of a payload received on the channel
/// of `destination`.
pub(crate) fn decode(destination: &str, payload: &[u8]) -> Result<(u64, Message), String> {
    let mut r = Reader {
        buf: payload,
        at: 0,
    };
    let v = r.take(1, "version")?;
    if v != [VERSION] {
        return Err(format!("byte 0: version {} is not {VERSION}", v[0]));
    }
    let node = r.u64("node")?;
    let id = MessageId(r.u64("message id")?);
    let ms = r.u64("timestamp")?;
    let at = r.at;
    let ct = std::str::from_utf8(r.field("content type")?)
        .map_err(|e| format!("byte {at}: content type: {e}"))?;
    let at = r.at;
    let headers: Vec<(String, String)> = serde_json::from_slice(r.field("headers")?)
        .map_err(|e| format!("byte {at}: headers: {e}"))?;
    let body = Bytes::copy_from_slice(r.field("body")?);
    if r.at != payload.len() {
        return Err(format!("byte {}: bytes after the body", r.at));
    }
    Ok((
        node,
        Message {
            id,
            destination: Arc::from(destination),
            content_type: ct.into(),
            headers: headers
                .into_iter()
                .map(|(k, v)| (k.into_boxed_str(), v.into_boxed_str()))
                .collect::<Vec<_>>()
                .into(),
            body,
            timestamp: UNIX_EPOCH + Duration::from_millis(ms),
            delivery_count: 0,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_garbage_without_panicking() {
        let m = Message::new("/t/a", "text/plain", "hello")
            .with_headers(vec![("k".into(), "v\nw".into())]);
        let p = encode(7, &m);
        let (node, back) = decode("/t/a", &p).unwrap();
        assert_eq!((node, back.id, &back.body[..]), (7, m.id, &b"hello"[..]));
        assert_eq!(&*back.headers, &*m.headers);
        for cut in 0..p.len() {
            assert!(decode("/t/a", &p[..cut]).is_err());
        }
        assert!(decode("/t/a", b"\x02").unwrap_err().contains("byte 0"));
    }
}
