//! MQTT 3.1.1 packets: all fourteen, decoded from and encoded to bytes.
//!
//! Decoding never panics: whatever the bytes, it yields a packet, a request
//! for more bytes, or the reason the bytes are not MQTT.
//!
//! Longer than most files here: all fourteen packet types both ways, with
//! their tests: the wire format in one place.

use bytes::Bytes;

/// A protocol fault: the connection is closed with this reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Malformed(pub(crate) String);

fn bad<T>(why: impl Into<String>) -> Result<T, Malformed> {
    Err(Malformed(why.into()))
}

/// Quality of service.
pub(crate) type QoS = u8;

/// The will of a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Will {
    pub(crate) topic: String,
    pub(crate) payload: Bytes,
    pub(crate) qos: QoS,
    pub(crate) retain: bool,
}

/// CONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Connect {
    pub(crate) level: u8,
    pub(crate) clean_session: bool,
    pub(crate) keep_alive: u16,
    pub(crate) client_id: String,
    pub(crate) will: Option<Will>,
    pub(crate) username: Option<String>,
    pub(crate) password: Option<Bytes>,
}

/// PUBLISH.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Publish {
    pub(crate) dup: bool,
    pub(crate) qos: QoS,
    pub(crate) retain: bool,
    pub(crate) topic: String,
    pub(crate) packet_id: u16,
    pub(crate) payload: Bytes,
}

/// Every MQTT 3.1.1 control packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Packet {
    Connect(Box<Connect>),
    ConnAck {
        session_present: bool,
        code: u8,
    },
    Publish(Publish),
    PubAck(u16),
    PubRec(u16),
    PubRel(u16),
    PubComp(u16),
    Subscribe {
        packet_id: u16,
        filters: Vec<(String, QoS)>,
    },
    SubAck {
        packet_id: u16,
        codes: Vec<u8>,
    },
    Unsubscribe {
        packet_id: u16,
        filters: Vec<String>,
    },
    UnsubAck(u16),
    PingReq,
    PingResp,
    Disconnect,
}

/// What the front of a buffer holds.
#[derive(Debug)]
pub(crate) enum Decoded {
    /// A packet and the bytes it took.
    Packet(Packet, usize),
    /// Not a whole packet yet.
    Partial,
}

/// Decodes the packet at the start of `buf`; `max` bounds its size.
pub(crate) fn decode(buf: &[u8], max: usize) -> Result<Decoded, Malformed> {
    let Some((first, body, n)) = frame(buf, max)? else {
        return Ok(Decoded::Partial);
    };
    let packet = parse(first >> 4, first & 0x0f, body)?;
    Ok(Decoded::Packet(packet, n))
}

/// A PUBLISH as it lies in the input: nothing copied yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PublishIn<'a> {
    pub(crate) dup: bool,
    pub(crate) qos: QoS,
    pub(crate) retain: bool,
    pub(crate) topic: &'a str,
    pub(crate) packet_id: u16,
    pub(crate) payload: &'a [u8],
}

impl PublishIn<'_> {
    /// The packet, owned (held for an auth answer).
    pub(crate) fn to_owned(self) -> Publish {
        Publish {
            dup: self.dup,
            qos: self.qos,
            retain: self.retain,
            topic: self.topic.to_owned(),
            packet_id: self.packet_id,
            payload: Bytes::copy_from_slice(self.payload),
        }
    }
}

impl Publish {
    /// The packet as if it lay in the input.
    pub(crate) fn as_in(&self) -> PublishIn<'_> {
        PublishIn {
            dup: self.dup,
            qos: self.qos,
            retain: self.retain,
            topic: &self.topic,
            packet_id: self.packet_id,
            payload: &self.payload,
        }
    }
}

/// The PUBLISH at the start of `buf`, borrowed, when a whole one is there:
/// the path every message takes, with no allocation. `None` when the
/// packet is not a PUBLISH or not whole yet ([`decode`] says which).
/// `known` is a topic seen before: the same bytes again are not checked
/// again.
pub(crate) fn decode_publish<'a>(
    buf: &'a [u8],
    max: usize,
    known: Option<&str>,
) -> Result<Option<(PublishIn<'a>, usize)>, Malformed> {
    if buf.first().is_none_or(|&b| b >> 4 != 3) {
        return Ok(None);
    }
    let Some((first, body, n)) = frame(buf, max)? else {
        return Ok(None);
    };
    Ok(Some((parse_publish(first & 0x0f, body, known)?, n)))
}

/// A whole packet in the input: its first byte, its body and its length.
type Frame<'a> = (u8, &'a [u8], usize);

/// The packet at the start of `buf`, once it is all there.
fn frame(buf: &[u8], max: usize) -> Result<Option<Frame<'_>>, Malformed> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    let mut len: usize = 0;
    let mut i = 1;
    loop {
        let Some(&b) = buf.get(i) else {
            return Ok(None);
        };
        len |= ((b & 0x7f) as usize) << (7 * (i - 1));
        i += 1;
        if b & 0x80 == 0 {
            break;
        }
        if i > 4 {
            return bad("malformed remaining length (more than four bytes)");
        }
    }
    if len + i > max {
        return bad(format!(
            "a packet of {} bytes exceeds the limit of {max}",
            len + i
        ));
    }
    Ok(buf.get(i..i + len).map(|body| (first, body, i + len)))
}

fn parse_publish<'a>(
    fl: u8,
    body: &'a [u8],
    known: Option<&str>,
) -> Result<PublishIn<'a>, Malformed> {
    let mut r = Reader(body);
    let qos = (fl >> 1) & 3;
    if qos == 3 {
        return bad("PUBLISH with QoS 3");
    }
    let same = |k: &str| {
        let n = k.len();
        r.0.len() >= 2 + n
            && usize::from(u16::from_be_bytes([r.0[0], r.0[1]])) == n
            && &r.0[2..2 + n] == k.as_bytes()
    };
    let topic = match known {
        Some(k) if same(k) => {
            let raw = r.binary()?;
            // SAFETY: `raw` holds the same bytes as `k`, a `&str`: valid
            // UTF-8 (and already checked for U+0000 when first seen).
            unsafe { std::str::from_utf8_unchecked(raw) }
        }
        _ => r.str()?,
    };
    let packet_id = if qos > 0 { r.u16()? } else { 0 };
    if qos > 0 && packet_id == 0 {
        return bad("PUBLISH with packet identifier 0");
    }
    Ok(PublishIn {
        dup: fl & 0x08 != 0,
        qos,
        retain: fl & 1 != 0,
        topic,
        packet_id,
        payload: r.0,
    })
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Malformed> {
        if self.0.len() < n {
            return bad("a packet shorter than its fields");
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, Malformed> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, Malformed> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn binary(&mut self) -> Result<&'a [u8], Malformed> {
        let n = self.u16()? as usize;
        self.take(n)
    }
    fn str(&mut self) -> Result<&'a str, Malformed> {
        let b = self.binary()?;
        let s =
            std::str::from_utf8(b).map_err(|_| Malformed("a string that is not UTF-8".into()))?;
        if s.contains('\0') {
            return bad("a string containing U+0000");
        }
        Ok(s)
    }
    fn string(&mut self) -> Result<String, Malformed> {
        self.str().map(str::to_owned)
    }
    fn end(&self) -> Result<(), Malformed> {
        if self.0.is_empty() {
            Ok(())
        } else {
            bad(format!("{} bytes after the last field", self.0.len()))
        }
    }
}

fn flags(kind: &str, got: u8, want: u8) -> Result<(), Malformed> {
    if got == want {
        Ok(())
    } else {
        bad(format!("{kind} with reserved flags {got:#06b}"))
    }
}

fn parse(kind: u8, fl: u8, body: &[u8]) -> Result<Packet, Malformed> {
    let mut r = Reader(body);
    let packet = match kind {
        1 => {
            flags("CONNECT", fl, 0)?;
            let name = r.string()?;
            let level = r.u8()?;
            if name != "MQTT" && name != "MQIsdp" {
                return bad(format!("protocol name {name:?}"));
            }
            let cf = r.u8()?;
            if cf & 1 != 0 {
                return bad("CONNECT with the reserved flag set");
            }
            let keep_alive = r.u16()?;
            let client_id = r.string()?;
            let will_flag = cf & 0x04 != 0;
            let will_qos = (cf >> 3) & 3;
            let will_retain = cf & 0x20 != 0;
            if !will_flag && (will_qos != 0 || will_retain) {
                return bad("will QoS or retain without a will");
            }
            if will_qos > 2 {
                return bad("will QoS 3");
            }
            let will = if will_flag {
                let topic = r.string()?;
                let payload = Bytes::copy_from_slice(r.binary()?);
                Some(Will {
                    topic,
                    payload,
                    qos: will_qos,
                    retain: will_retain,
                })
            } else {
                None
            };
            let username = if cf & 0x80 != 0 {
                Some(r.string()?)
            } else {
                None
            };
            let password = if cf & 0x40 != 0 {
                if username.is_none() {
                    return bad("a password without a user name");
                }
                Some(Bytes::copy_from_slice(r.binary()?))
            } else {
                None
            };
            Packet::Connect(Box::new(Connect {
                level,
                clean_session: cf & 0x02 != 0,
                keep_alive,
                client_id,
                will,
                username,
                password,
            }))
        }
        2 => {
            flags("CONNACK", fl, 0)?;
            let ack = r.u8()?;
            Packet::ConnAck {
                session_present: ack & 1 != 0,
                code: r.u8()?,
            }
        }
        3 => {
            let p = parse_publish(fl, body, None)?;
            r.0 = &[];
            Packet::Publish(p.to_owned())
        }
        4 => {
            flags("PUBACK", fl, 0)?;
            Packet::PubAck(r.u16()?)
        }
        5 => {
            flags("PUBREC", fl, 0)?;
            Packet::PubRec(r.u16()?)
        }
        6 => {
            flags("PUBREL", fl, 2)?;
            Packet::PubRel(r.u16()?)
        }
        7 => {
            flags("PUBCOMP", fl, 0)?;
            Packet::PubComp(r.u16()?)
        }
        8 => {
            flags("SUBSCRIBE", fl, 2)?;
            let packet_id = r.u16()?;
            let mut filters = Vec::new();
            while !r.0.is_empty() {
                let f = r.string()?;
                let q = r.u8()?;
                if q & 0xfc != 0 {
                    return bad(format!("SUBSCRIBE with requested QoS byte {q:#x}"));
                }
                filters.push((f, q));
            }
            if filters.is_empty() {
                return bad("SUBSCRIBE with no topic filter");
            }
            Packet::Subscribe { packet_id, filters }
        }
        9 => {
            flags("SUBACK", fl, 0)?;
            let packet_id = r.u16()?;
            let codes = r.0.to_vec();
            r.0 = &[];
            Packet::SubAck { packet_id, codes }
        }
        10 => {
            flags("UNSUBSCRIBE", fl, 2)?;
            let packet_id = r.u16()?;
            let mut filters = Vec::new();
            while !r.0.is_empty() {
                filters.push(r.string()?);
            }
            if filters.is_empty() {
                return bad("UNSUBSCRIBE with no topic filter");
            }
            Packet::Unsubscribe { packet_id, filters }
        }
        11 => {
            flags("UNSUBACK", fl, 0)?;
            Packet::UnsubAck(r.u16()?)
        }
        12 => {
            flags("PINGREQ", fl, 0)?;
            Packet::PingReq
        }
        13 => {
            flags("PINGRESP", fl, 0)?;
            Packet::PingResp
        }
        14 => {
            flags("DISCONNECT", fl, 0)?;
            Packet::Disconnect
        }
        _ => return bad(format!("packet type {kind}")),
    };
    r.end()?;
    Ok(packet)
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

/// Appends a PUBLISH to `out` without building the packet first (the
/// delivery path's encoder).
pub(crate) fn encode_publish(
    out: &mut Vec<u8>,
    topic: &str,
    qos: QoS,
    retain: bool,
    packet_id: u16,
    payload: &[u8],
) {
    let len = 2 + topic.len() + if qos > 0 { 2 } else { 0 } + payload.len();
    out.reserve(len + 5);
    out.push(0x30 | (qos << 1) | u8::from(retain));
    put_len(out, len);
    put_str(out, topic.as_bytes());
    if qos > 0 {
        out.extend_from_slice(&packet_id.to_be_bytes());
    }
    out.extend_from_slice(payload);
}

/// Appends `p` to `out`.
pub(crate) fn encode(out: &mut Vec<u8>, p: &Packet) {
    let mut body = Vec::new();
    let first: u8 = match p {
        Packet::Connect(c) => {
            put_str(&mut body, b"MQTT");
            body.push(c.level);
            let mut cf = 0u8;
            if c.clean_session {
                cf |= 0x02;
            }
            if let Some(w) = &c.will {
                cf |= 0x04 | (w.qos << 3) | if w.retain { 0x20 } else { 0 };
            }
            if c.password.is_some() {
                cf |= 0x40;
            }
            if c.username.is_some() {
                cf |= 0x80;
            }
            body.push(cf);
            body.extend_from_slice(&c.keep_alive.to_be_bytes());
            put_str(&mut body, c.client_id.as_bytes());
            if let Some(w) = &c.will {
                put_str(&mut body, w.topic.as_bytes());
                put_str(&mut body, &w.payload);
            }
            if let Some(u) = &c.username {
                put_str(&mut body, u.as_bytes());
            }
            if let Some(pw) = &c.password {
                put_str(&mut body, pw);
            }
            0x10
        }
        Packet::ConnAck {
            session_present,
            code,
        } => {
            body.push(u8::from(*session_present));
            body.push(*code);
            0x20
        }
        Packet::Publish(p) => {
            put_str(&mut body, p.topic.as_bytes());
            if p.qos > 0 {
                body.extend_from_slice(&p.packet_id.to_be_bytes());
            }
            body.extend_from_slice(&p.payload);
            0x30 | if p.dup { 0x08 } else { 0 } | (p.qos << 1) | u8::from(p.retain)
        }
        Packet::PubAck(id) => {
            body.extend_from_slice(&id.to_be_bytes());
            0x40
        }
        Packet::PubRec(id) => {
            body.extend_from_slice(&id.to_be_bytes());
            0x50
        }
        Packet::PubRel(id) => {
            body.extend_from_slice(&id.to_be_bytes());
            0x62
        }
        Packet::PubComp(id) => {
            body.extend_from_slice(&id.to_be_bytes());
            0x70
        }
        Packet::Subscribe { packet_id, filters } => {
            body.extend_from_slice(&packet_id.to_be_bytes());
            for (f, q) in filters {
                put_str(&mut body, f.as_bytes());
                body.push(*q);
            }
            0x82
        }
        Packet::SubAck { packet_id, codes } => {
            body.extend_from_slice(&packet_id.to_be_bytes());
            body.extend_from_slice(codes);
            0x90
        }
        Packet::Unsubscribe { packet_id, filters } => {
            body.extend_from_slice(&packet_id.to_be_bytes());
            for f in filters {
                put_str(&mut body, f.as_bytes());
            }
            0xa2
        }
        Packet::UnsubAck(id) => {
            body.extend_from_slice(&id.to_be_bytes());
            0xb0
        }
        Packet::PingReq => 0xc0,
        Packet::PingResp => 0xd0,
        Packet::Disconnect => 0xe0,
    };
    out.push(first);
    put_len(out, body.len());
    out.extend_from_slice(&body);
}

/// Whether `t` is a valid topic name to publish to.
pub(crate) fn valid_topic(t: &str) -> bool {
    // No early exit: a loop the compiler turns into wide compares.
    !t.is_empty() && !t.bytes().fold(false, |w, b| w | (b == b'+') | (b == b'#'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn round_trip(p: Packet) {
        let mut buf = Vec::new();
        encode(&mut buf, &p);
        match decode(&buf, 1 << 20).unwrap() {
            Decoded::Packet(q, n) => {
                assert_eq!(q, p);
                assert_eq!(n, buf.len());
            }
            Decoded::Partial => panic!("partial"),
        }
        for cut in 0..buf.len() {
            assert!(
                matches!(decode(&buf[..cut], 1 << 20), Ok(Decoded::Partial)),
                "{p:?} cut at {cut}"
            );
        }
    }

    #[test]
    fn all_fourteen_packets_round_trip() {
        round_trip(Packet::Connect(Box::new(Connect {
            level: 4,
            clean_session: false,
            keep_alive: 30,
            client_id: "c1".into(),
            will: Some(Will {
                topic: "w/t".into(),
                payload: Bytes::from_static(b"bye"),
                qos: 1,
                retain: true,
            }),
            username: Some("u".into()),
            password: Some(Bytes::from_static(b"p")),
        })));
        round_trip(Packet::ConnAck {
            session_present: true,
            code: 0,
        });
        round_trip(Packet::Publish(Publish {
            dup: true,
            qos: 2,
            retain: true,
            topic: "a/b".into(),
            packet_id: 7,
            payload: Bytes::from(vec![1u8; 300]),
        }));
        for p in [
            Packet::PubAck(1),
            Packet::PubRec(2),
            Packet::PubRel(3),
            Packet::PubComp(4),
            Packet::UnsubAck(5),
        ] {
            round_trip(p);
        }
        round_trip(Packet::Subscribe {
            packet_id: 9,
            filters: vec![("a/+".into(), 1), ("#".into(), 2)],
        });
        round_trip(Packet::SubAck {
            packet_id: 9,
            codes: vec![1, 0x80],
        });
        round_trip(Packet::Unsubscribe {
            packet_id: 10,
            filters: vec!["a/+".into()],
        });
        round_trip(Packet::PingReq);
        round_trip(Packet::PingResp);
        round_trip(Packet::Disconnect);
    }

    #[test]
    fn the_fast_publish_encoder_matches_the_general_one() {
        for (qos, retain) in [(0, false), (1, true), (2, false)] {
            let p = Publish {
                dup: false,
                qos,
                retain,
                topic: "a/b".into(),
                packet_id: if qos > 0 { 9 } else { 0 },
                payload: Bytes::from(vec![7u8; 200]),
            };
            let (mut a, mut b) = (Vec::new(), Vec::new());
            encode(&mut a, &Packet::Publish(p.clone()));
            encode_publish(&mut b, &p.topic, p.qos, p.retain, p.packet_id, &p.payload);
            assert_eq!(a, b);
        }
    }

    #[test]
    fn malformed_input_is_refused() {
        assert!(decode(&[0x30, 0xff, 0xff, 0xff, 0xff, 0x01], 1 << 30).is_err());
        assert!(decode(&[0x30, 0x7f], 10).is_err());
        assert!(
            decode(&[0x62 & 0xf0, 2, 0, 1], 100).is_err(),
            "PUBREL without its flags"
        );
        assert!(
            decode(&[0x32, 5, 0, 1, b'a', 0, 0], 100).is_err(),
            "packet id 0"
        );
        assert!(
            decode(&[0x30, 4, 0, 2, 0xc3, 0x28], 100).is_err(),
            "invalid UTF-8 topic"
        );
        assert!(decode(&[0xf0, 0], 100).is_err());
        assert!(decode(&[0x00, 0], 100).is_err());
        assert!(!valid_topic("a/+") && valid_topic("a/b"));
    }

    /// A PUBLISH of `topic` (raw bytes) at QoS 0.
    fn raw_publish(topic: &[u8], payload: &[u8]) -> Vec<u8> {
        let mut b = vec![0x30, (2 + topic.len() + payload.len()) as u8];
        b.extend_from_slice(&(topic.len() as u16).to_be_bytes());
        b.extend_from_slice(topic);
        b.extend_from_slice(payload);
        b
    }

    #[test]
    fn a_known_topic_is_recognised_and_anything_else_still_checked() {
        let p = raw_publish(b"a/b", b"xy");
        let (got, n) = decode_publish(&p, 100, Some("a/b")).unwrap().unwrap();
        assert_eq!((got.topic, got.payload, n), ("a/b", &b"xy"[..], p.len()));
        // Same length, other bytes; longer; shorter: decoded as usual.
        for (topic, known) in [("a/c", "a/b"), ("a/bc", "a/b"), ("a", "a/b")] {
            let p = raw_publish(topic.as_bytes(), b"xy");
            let (got, _) = decode_publish(&p, 100, Some(known)).unwrap().unwrap();
            assert_eq!((got.topic, got.payload), (topic, &b"xy"[..]));
        }
        // Bytes that are not UTF-8 are refused whatever topic is known.
        let p = raw_publish(&[0xc3, 0x28, 0x2f], b"");
        assert!(decode_publish(&p, 100, Some("a/b")).is_err());
        assert!(decode_publish(&raw_publish(b"a\0b", b""), 100, Some("a/b")).is_err());
        // A topic longer than the packet is refused, not read past.
        let mut p = raw_publish(b"a/b", b"");
        p[3] = 9;
        assert!(decode_publish(&p, 100, Some("a/b")).is_err());
    }

    proptest! {
        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = decode(&bytes, 1024);
            let _ = decode_publish(&bytes, 1024, Some("a/b"));
        }
    }
}
