//! Retained messages, by topic, with their count and bytes kept so that
//! `max_retained` and `max_retained_bytes` are checked in O(1).
//!
//! A retained publish that would take the instance past either cap is
//! delivered to the subscribers of the moment but not retained, and the
//! topic's earlier retained message (if any) is dropped with it, so a
//! later subscriber never receives a value older than one published since.
//! The refusal is counted (`bindery_mqtt_retained_refused_total`) and
//! logged (the 1st, 2nd, 4th, 8th... so a flood of them cannot flood the
//! log). MQTT 3.1.1 has no way to tell the publisher (MQTT 5's "retain not
//! supported" reason code does not exist in 3.1.1), and closing its
//! connection would lose the delivery to the subscribers of the moment.

use std::collections::HashMap;

use bindery_classes::Message;
use bindery_classes::metrics::Gauge;

/// The retained messages of one instance.
#[derive(Default)]
pub(crate) struct Retained {
    map: HashMap<String, Message>,
    bytes: usize,
    /// Mirrors of `map.len()` and `bytes` in /metrics.
    count_gauge: Gauge,
    bytes_gauge: Gauge,
}

/// What a retained message costs: its topic and its payload.
fn size(topic: &str, m: &Message) -> usize {
    topic.len() + m.body.len()
}

/// The caps (0: none).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Caps {
    pub(crate) count: usize,
    pub(crate) bytes: usize,
}

impl Retained {
    /// None yet; the gauges follow the count and the bytes.
    pub(crate) fn counted(count_gauge: Gauge, bytes_gauge: Gauge) -> Retained {
        Retained {
            count_gauge,
            bytes_gauge,
            ..Default::default()
        }
    }

    /// Keeps `m` as `topic`'s retained message if the caps allow; if not,
    /// `topic`'s earlier one is dropped and the error says whether there
    /// was one.
    pub(crate) fn put(&mut self, topic: &str, m: Message, caps: Caps) -> Result<(), bool> {
        let old = self.map.get(topic).map_or(0, |o| size(topic, o));
        let count = self.map.len() + usize::from(!self.map.contains_key(topic));
        let bytes = self.bytes - old + size(topic, &m);
        if (caps.count > 0 && count > caps.count) || (caps.bytes > 0 && bytes > caps.bytes) {
            let had = self.map.contains_key(topic);
            self.remove(topic);
            return Err(had);
        }
        self.insert(topic.to_owned(), m);
        Ok(())
    }

    /// Keeps `m` as `topic`'s retained message, whatever the caps (read
    /// back from the store: it was admitted when it was published).
    pub(crate) fn insert(&mut self, topic: String, m: Message) {
        let add = size(&topic, &m);
        if let Some(old) = self.map.insert(topic.clone(), m) {
            self.bytes -= size(&topic, &old);
        }
        self.bytes += add;
        self.publish_gauges();
    }

    /// Drops `topic`'s retained message.
    pub(crate) fn remove(&mut self, topic: &str) {
        if let Some(old) = self.map.remove(topic) {
            self.bytes -= size(topic, &old);
            self.publish_gauges();
        }
    }

    /// How many topics have a retained message.
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    /// Every retained message, with its topic.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&String, &Message)> {
        self.map.iter()
    }

    fn publish_gauges(&self) {
        self.count_gauge.set(self.map.len() as u64);
        self.bytes_gauge.set(self.bytes as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(body: &str) -> Message {
        Message::new("/topics/x", "", bytes::Bytes::from(body.to_owned()))
    }

    #[test]
    fn caps_on_count_and_bytes_refuse_and_drop_the_stale_value() {
        let caps = Caps {
            count: 2,
            bytes: 20,
        };
        let mut r = Retained::default();
        assert!(r.put("a", m("1234"), caps).is_ok());
        assert!(r.put("b", m("1234"), caps).is_ok());
        assert_eq!(r.put("c", m("1"), caps), Err(false), "past the count");
        assert!(
            r.put("a", m("12345678"), caps).is_ok(),
            "replacing keeps the count"
        );
        assert_eq!((r.len(), r.bytes), (2, 9 + 5));
        assert_eq!(
            r.put("b", m("12345678901"), caps),
            Err(true),
            "past the bytes"
        );
        assert_eq!(r.len(), 1, "b's older value is dropped with the refusal");
        assert_eq!(r.bytes, 9);
        assert_eq!(r.count_gauge.get(), 1);
        assert!(r.put("c", m("1"), caps).is_ok(), "room again");
        let none = Caps { count: 0, bytes: 0 };
        for i in 0..100 {
            assert!(r.put(&i.to_string(), m("x"), none).is_ok());
        }
    }
}
