//! Messages in Redis stream entries, and message ids from entry ids.
//!
//! An entry id is `MS-SEQ`; the message id is `MS << 20 | SEQ`, so every
//! node derives the same id from the entry, and an ack through any node
//! finds it. (20 bits of sequence: a million entries in one millisecond
//! of one stream, which Redis cannot reach; 44 bits of milliseconds last
//! until the year 2527.)

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use bindery_classes::{Message, MessageId};
use bytes::Bytes;
use redis::Value;

const SEQ_BITS: u32 = 20;

/// The message id of entry `MS-SEQ`, or `None` if it is not one.
pub(crate) fn id_of(entry: &str) -> Option<MessageId> {
    let (ms, seq) = entry.split_once('-')?;
    let (ms, seq): (u64, u64) = (ms.parse().ok()?, seq.parse().ok()?);
    if seq >= 1 << SEQ_BITS || ms >= 1 << (64 - SEQ_BITS) {
        return None;
    }
    Some(MessageId(ms << SEQ_BITS | seq))
}

/// The entry id a message id stands for.
pub(crate) fn entry_of(id: MessageId) -> String {
    format!("{}-{}", id.0 >> SEQ_BITS, id.0 & ((1 << SEQ_BITS) - 1))
}

/// The headers as stored (a JSON array of pairs).
pub(crate) fn headers(m: &Message) -> Vec<u8> {
    let pairs: Vec<(&str, &str)> = m.headers.iter().map(|(k, v)| (&**k, &**v)).collect();
    serde_json::to_vec(&pairs).unwrap_or_else(|_| b"[]".to_vec())
}

/// Bytes of a bulk or simple string.
pub(crate) fn bytes(v: &Value) -> Option<&[u8]> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.as_bytes()),
        _ => None,
    }
}

/// Text of a bulk or simple string.
pub(crate) fn text(v: &Value) -> Option<&str> {
    bytes(v).and_then(|b| std::str::from_utf8(b).ok())
}

/// An integer reply.
pub(crate) fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(n) => Some(*n),
        _ => text(v).and_then(|s| s.parse().ok()),
    }
}

/// The items of an array reply (nil is empty).
pub(crate) fn items(v: &Value) -> &[Value] {
    match v {
        Value::Array(a) | Value::Set(a) => a,
        _ => &[],
    }
}

/// The message an entry holds: `id` and the flat field list `fields`.
pub(crate) fn message(
    destination: &Arc<str>,
    id: &Value,
    fields: &Value,
    delivery_count: u32,
) -> Result<Message, String> {
    let entry = text(id).ok_or("an entry id that is not text")?;
    let mid = id_of(entry).ok_or_else(|| format!("entry id {entry:?} is out of range"))?;
    let (mut ct, mut hdr, mut body) = (None, None, None);
    for pair in items(fields).chunks(2) {
        if let [k, v] = pair {
            match bytes(k) {
                Some(b"t") => ct = text(v),
                Some(b"h") => hdr = bytes(v),
                Some(b"b") => body = bytes(v),
                _ => {}
            }
        }
    }
    let headers: Vec<(String, String)> = match hdr {
        Some(h) => serde_json::from_slice(h)
            .map_err(|e| format!("entry {entry}: headers are not JSON pairs: {e}"))?,
        None => Vec::new(),
    };
    let ms = mid.0 >> SEQ_BITS;
    Ok(Message {
        id: mid,
        destination: destination.clone(),
        content_type: ct.unwrap_or("application/octet-stream").into(),
        headers: headers
            .into_iter()
            .map(|(k, v)| (k.into_boxed_str(), v.into_boxed_str()))
            .collect::<Vec<_>>()
            .into(),
        body: Bytes::copy_from_slice(body.ok_or_else(|| format!("entry {entry} has no body"))?),
        timestamp: UNIX_EPOCH + Duration::from_millis(ms),
        delivery_count,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip() {
        let id = id_of("1764662400123-7").unwrap();
        assert_eq!(entry_of(id), "1764662400123-7");
        assert!(id_of("1-1048576").is_none());
        assert!(id_of("x-1").is_none());
        assert!(id_of("17").is_none());
        assert!(id_of("1764662400123-8").unwrap() > id);
    }
}
