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

    /// The 16 lowercase hex digits [`fmt::Display`] writes, without
    /// formatting (for response headers on the hot path).
    pub fn hex(&self) -> [u8; 16] {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut out = [0u8; 16];
        for (i, d) in out.iter_mut().enumerate() {
            *d = DIGITS[((self.0 >> (60 - 4 * i)) & 0xf) as usize];
        }
        out
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

thread_local! {
    /// The strings the last messages made on this thread named (their
    /// destinations and content types), newest first, and no headers:
    /// a run of publishes to one path shares them instead of allocating
    /// three times per message.
    static RECENT: std::cell::RefCell<Recent> =
        std::cell::RefCell::new((Default::default(), Arc::new([])));
}

/// Recent strings, newest first, and an empty header list to share.
type Recent = ([Option<Arc<str>>; 4], Arc<[Header]>);

/// `s` as an `Arc<str>`, shared with a recent message's if one named it.
fn recent(s: &str) -> Arc<str> {
    RECENT.with(|r| {
        let slots = &mut r.borrow_mut().0;
        if let Some(at) = slots.iter().position(|x| x.as_deref() == Some(s)) {
            slots[..=at].rotate_right(1);
            return slots[0].clone().unwrap_or_else(|| s.into());
        }
        let fresh: Arc<str> = s.into();
        slots.rotate_right(1);
        slots[0] = Some(fresh.clone());
        fresh
    })
}

impl Message {
    /// A new message with a fresh id and the current time.
    pub fn new(destination: &str, content_type: &str, body: impl Into<Bytes>) -> Message {
        Message {
            id: MessageId::next(),
            destination: recent(destination),
            content_type: recent(content_type),
            headers: RECENT.with(|r| r.borrow().1.clone()),
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
        for id in [
            a,
            MessageId(0),
            MessageId(u64::MAX),
            MessageId(0x0123_4567_89ab_cdef),
        ] {
            assert_eq!(&id.hex()[..], id.to_string().as_bytes());
        }
    }

    #[test]
    fn messages_share_recent_strings_and_keep_their_own() {
        let a = Message::new("/q/a", "text/plain", "1");
        let b = Message::new("/q/a", "text/plain", "2");
        assert!(Arc::ptr_eq(&a.destination, &b.destination));
        assert!(Arc::ptr_eq(&a.content_type, &b.content_type));
        // More names than the memo holds: each message still says its own.
        let many: Vec<Message> = (0..10)
            .map(|i| Message::new(&format!("/q/{i}"), "text/plain", ""))
            .collect();
        for (i, m) in many.iter().enumerate() {
            assert_eq!(&*m.destination, format!("/q/{i}"));
        }
        let c = Message::new("/q/3", "application/json", "");
        assert_eq!(
            (&*c.destination, &*c.content_type),
            ("/q/3", "application/json")
        );
        assert!(c.headers.is_empty());
    }
}
