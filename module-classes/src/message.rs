//! The message.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;

/// A message id, unique within a process and, since its high bits come from
/// the clock at start-up, across restarts.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct MessageId(pub u64);

static SEED: OnceLock<u64> = OnceLock::new();
static COUNTER: AtomicU64 = AtomicU64::new(0);

impl MessageId {
    /// A fresh id.
    pub fn next() -> MessageId {
        // Microseconds since the epoch at the first call, shifted: a later
        // start begins above any id an earlier one could have reached.
        let seed = *SEED.get_or_init(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(1, |d| d.as_micros() as u64)
                << 12
        });
        MessageId(seed.wrapping_add(COUNTER.fetch_add(1, Ordering::Relaxed)))
    }

    /// Parses the 16-hex-digit form [`fmt::Display`] writes.
    pub fn parse(s: &str) -> Option<MessageId> {
        if s.is_empty() || s.len() > 16 {
            return None;
        }
        u64::from_str_radix(s, 16).ok().map(MessageId)
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// One header: name and value.
pub type Header = (Box<str>, Box<str>);

/// A message. Cloning is cheap: the body is shared ([`Bytes`]), the strings
/// are `Arc`s, so fan-out copies no payload.
#[derive(Clone, Debug)]
pub struct Message {
    /// Unique id.
    pub id: MessageId,
    /// The destination path (`/queues/orders`).
    pub destination: Arc<str>,
    /// The MIME type of the body.
    pub content_type: Arc<str>,
    /// Application headers.
    pub headers: Arc<[Header]>,
    /// The body.
    pub body: Bytes,
    /// When the message was accepted.
    pub timestamp: SystemTime,
    /// How many times it has been delivered, this delivery included (0
    /// before the first).
    pub delivery_count: u32,
}

impl Message {
    /// A new message with a fresh id and the current time.
    pub fn new(destination: &str, content_type: &str, body: impl Into<Bytes>) -> Message {
        Message {
            id: MessageId::next(),
            destination: destination.into(),
            content_type: content_type.into(),
            headers: Arc::new([]),
            body: body.into(),
            timestamp: SystemTime::now(),
            delivery_count: 0,
        }
    }

    /// The same message with `headers`.
    pub fn with_headers(mut self, headers: Vec<Header>) -> Message {
        self.headers = headers.into();
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_and_round_trip() {
        let a = MessageId::next();
        let b = MessageId::next();
        assert!(b > a);
        assert_eq!(MessageId::parse(&a.to_string()), Some(a));
        assert_eq!(MessageId::parse("xyz"), None);
        assert_eq!(MessageId::parse(""), None);
        assert_eq!(MessageId::parse("00000000000000001"), None);
    }
}
