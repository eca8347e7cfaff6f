//! AMQP 0-9-1 framing and the field types: frames, short and long
//! strings, field tables, and the basic class's content header
//! (properties). Methods are in [`crate::methods`].
//!
//! Longer than most files: the spec's field types, each one's reader and
//! writer together.
//!
//! Decoding never panics: every read is bounds-checked and an error names
//! the field and the byte offset in the frame payload.

use bytes::Bytes;

/// A method frame.
pub(crate) const METHOD: u8 = 1;
/// A content header frame.
pub(crate) const HEADER: u8 = 2;
/// A content body frame.
pub(crate) const BODY: u8 = 3;
/// A heartbeat frame.
pub(crate) const HEARTBEAT: u8 = 8;
/// The octet every frame ends with.
pub(crate) const FRAME_END: u8 = 0xce;
/// The protocol header a client opens with.
pub(crate) const PROTOCOL_HEADER: &[u8; 8] = b"AMQP\x00\x00\x09\x01";
/// Frame header (7) plus frame end (1).
pub(crate) const FRAME_OVERHEAD: usize = 8;

/// A frame: type, channel, payload.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Frame<'a> {
    pub(crate) kind: u8,
    pub(crate) channel: u16,
    pub(crate) payload: &'a [u8],
}

/// What a frame decode found at the start of the input.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Framed<'a> {
    /// A whole frame, and the bytes it took.
    Frame(Frame<'a>, usize),
    /// Not all of it yet.
    Partial,
}

/// A frame that cannot be: closes the connection with `501 FRAME_ERROR`.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct FrameError(pub(crate) String);

/// Decodes the frame at the start of `input`; frames larger than
/// `frame_max` (the whole frame, as the spec counts) are errors.
pub(crate) fn frame(input: &[u8], frame_max: usize) -> std::result::Result<Framed<'_>, FrameError> {
    if input.len() < 7 {
        return Ok(Framed::Partial);
    }
    let kind = input[0];
    let channel = u16::from_be_bytes([input[1], input[2]]);
    let size = u32::from_be_bytes([input[3], input[4], input[5], input[6]]) as usize;
    if !matches!(kind, METHOD | HEADER | BODY | HEARTBEAT) {
        return Err(FrameError(format!("unknown frame type {kind} at offset 0")));
    }
    if size.saturating_add(FRAME_OVERHEAD) > frame_max {
        return Err(FrameError(format!(
            "frame of {} bytes on channel {channel} is over frame_max {frame_max}",
            size + FRAME_OVERHEAD
        )));
    }
    let total = size + FRAME_OVERHEAD;
    if input.len() < total {
        return Ok(Framed::Partial);
    }
    if input[total - 1] != FRAME_END {
        return Err(FrameError(format!(
            "frame on channel {channel} ends with 0x{:02x}, not 0xce (offset {})",
            input[total - 1],
            total - 1
        )));
    }
    Ok(Framed::Frame(
        Frame {
            kind,
            channel,
            payload: &input[7..total - 1],
        },
        total,
    ))
}

/// Appends a frame whose payload `fill` writes.
pub(crate) fn put_frame(
    out: &mut Vec<u8>,
    kind: u8,
    channel: u16,
    fill: impl FnOnce(&mut Vec<u8>),
) {
    out.push(kind);
    out.extend_from_slice(&channel.to_be_bytes());
    let at = out.len();
    out.extend_from_slice(&[0; 4]);
    fill(out);
    let size = (out.len() - at - 4) as u32;
    out[at..at + 4].copy_from_slice(&size.to_be_bytes());
    out.push(FRAME_END);
}

/// A heartbeat frame.
pub(crate) fn put_heartbeat(out: &mut Vec<u8>) {
    out.extend_from_slice(&[HEARTBEAT, 0, 0, 0, 0, 0, 0, FRAME_END]);
}

/// A field value of a field table (the type letters RabbitMQ and its
/// clients use).
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Value {
    Bool(bool),
    I8(i8),
    U8(u8),
    I16(i16),
    U16(u16),
    I32(i32),
    U32(u32),
    I64(i64),
    F32(f32),
    F64(f64),
    Decimal(u8, u32),
    Str(Bytes),
    Bytes(Bytes),
    Array(Vec<Value>),
    Timestamp(u64),
    Table(Table),
    Void,
}

/// A field table, in wire order.
pub(crate) type Table = Vec<(String, Value)>;

impl Value {
    /// The value as a header value: strings as they are, numbers in
    /// decimal; tables and arrays have none.
    pub(crate) fn text(&self) -> Option<String> {
        Some(match self {
            Value::Bool(b) => b.to_string(),
            Value::I8(v) => v.to_string(),
            Value::U8(v) => v.to_string(),
            Value::I16(v) => v.to_string(),
            Value::U16(v) => v.to_string(),
            Value::I32(v) => v.to_string(),
            Value::U32(v) => v.to_string(),
            Value::I64(v) => v.to_string(),
            Value::F32(v) => v.to_string(),
            Value::F64(v) => v.to_string(),
            Value::Timestamp(v) => v.to_string(),
            Value::Str(s) | Value::Bytes(s) => String::from_utf8_lossy(s).into_owned(),
            Value::Decimal(..) | Value::Array(_) | Value::Table(_) | Value::Void => return None,
        })
    }
}

/// A bounds-checked reader over a frame payload.
pub(crate) struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

/// A decode error: what was being read and where.
pub(crate) type Result<T> = std::result::Result<T, String>;

impl<'a> Reader<'a> {
    pub(crate) fn new(b: &'a [u8]) -> Reader<'a> {
        Reader { b, at: 0 }
    }

    /// Whether everything was read.
    pub(crate) fn done(&self) -> bool {
        self.at == self.b.len()
    }

    pub(crate) fn at(&self) -> usize {
        self.at
    }

    pub(crate) fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        if self.b.len() - self.at < n {
            return Err(format!(
                "{what}: {n} bytes needed at offset {}, {} left",
                self.at,
                self.b.len() - self.at
            ));
        }
        let s = &self.b[self.at..self.at + n];
        self.at += n;
        Ok(s)
    }

    /// The rest of the payload.
    pub(crate) fn rest(&mut self) -> &'a [u8] {
        let s = &self.b[self.at..];
        self.at = self.b.len();
        s
    }

    pub(crate) fn u8(&mut self, what: &str) -> Result<u8> {
        Ok(self.take(1, what)?[0])
    }
    pub(crate) fn u16(&mut self, what: &str) -> Result<u16> {
        let s = self.take(2, what)?;
        Ok(u16::from_be_bytes([s[0], s[1]]))
    }
    pub(crate) fn u32(&mut self, what: &str) -> Result<u32> {
        let s = self.take(4, what)?;
        Ok(u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
    }
    pub(crate) fn u64(&mut self, what: &str) -> Result<u64> {
        let s = self.take(8, what)?;
        let mut a = [0; 8];
        a.copy_from_slice(s);
        Ok(u64::from_be_bytes(a))
    }
    /// Packed bits: the octet, bit 0 first.
    pub(crate) fn bits<const N: usize>(&mut self, what: &str) -> Result<[bool; N]> {
        let b = self.u8(what)?;
        Ok(std::array::from_fn(|i| b & (1 << i) != 0))
    }
    pub(crate) fn shortstr(&mut self, what: &str) -> Result<String> {
        let at = self.at;
        let n = self.u8(what)? as usize;
        let s = self.take(n, what)?;
        String::from_utf8(s.to_vec()).map_err(|_| format!("{what}: not UTF-8 at offset {at}"))
    }
    pub(crate) fn longstr(&mut self, what: &str) -> Result<Bytes> {
        let n = self.u32(what)? as usize;
        Ok(Bytes::copy_from_slice(self.take(n, what)?))
    }

    pub(crate) fn table(&mut self, what: &str) -> Result<Table> {
        let n = self.u32(what)? as usize;
        let mut inner = Reader::new(self.take(n, what)?);
        let base = self.at - n;
        let mut t = Vec::new();
        while !inner.done() {
            let key = inner
                .shortstr(what)
                .map_err(|e| format!("{e} (table at offset {base})"))?;
            let v = inner
                .value(&key)
                .map_err(|e| format!("{what}: {e} (table at offset {base})"))?;
            t.push((key, v));
        }
        Ok(t)
    }

    fn value(&mut self, what: &str) -> Result<Value> {
        let at = self.at;
        Ok(match self.u8(what)? {
            b't' => Value::Bool(self.u8(what)? != 0),
            b'b' => Value::I8(self.u8(what)? as i8),
            b'B' => Value::U8(self.u8(what)?),
            b's' => Value::I16(self.u16(what)? as i16),
            b'u' => Value::U16(self.u16(what)?),
            b'I' => Value::I32(self.u32(what)? as i32),
            b'i' => Value::U32(self.u32(what)?),
            b'l' => Value::I64(self.u64(what)? as i64),
            b'f' => Value::F32(f32::from_bits(self.u32(what)?)),
            b'd' => Value::F64(f64::from_bits(self.u64(what)?)),
            b'D' => Value::Decimal(self.u8(what)?, self.u32(what)?),
            b'S' => Value::Str(self.longstr(what)?),
            b'x' => Value::Bytes(self.longstr(what)?),
            b'T' => Value::Timestamp(self.u64(what)?),
            b'F' => Value::Table(self.table(what)?),
            b'V' => Value::Void,
            b'A' => {
                let n = self.u32(what)? as usize;
                let mut inner = Reader::new(self.take(n, what)?);
                let mut a = Vec::new();
                while !inner.done() {
                    a.push(inner.value(what)?);
                }
                Value::Array(a)
            }
            t => {
                return Err(format!(
                    "field {what:?}: unknown value type 0x{t:02x} at offset {at}"
                ));
            }
        })
    }
}

pub(crate) fn put_u16(out: &mut Vec<u8>, v: u16) {
    out.extend_from_slice(&v.to_be_bytes());
}
pub(crate) fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_be_bytes());
}
pub(crate) fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_be_bytes());
}
/// Packed bits, bit 0 first.
pub(crate) fn put_bits(out: &mut Vec<u8>, bits: &[bool]) {
    out.push(
        bits.iter()
            .enumerate()
            .fold(0, |b, (i, &on)| b | (u8::from(on) << i)),
    );
}
/// A short string; longer than 255 bytes is cut at a character boundary
/// (what the server writes is its own and short).
pub(crate) fn put_shortstr(out: &mut Vec<u8>, s: &str) {
    let mut n = s.len().min(255);
    while !s.is_char_boundary(n) {
        n -= 1;
    }
    out.push(n as u8);
    out.extend_from_slice(&s.as_bytes()[..n]);
}
pub(crate) fn put_longstr(out: &mut Vec<u8>, s: &[u8]) {
    put_u32(out, s.len() as u32);
    out.extend_from_slice(s);
}

pub(crate) fn put_table(out: &mut Vec<u8>, t: &Table) {
    let at = out.len();
    out.extend_from_slice(&[0; 4]);
    for (k, v) in t {
        put_shortstr(out, k);
        put_value(out, v);
    }
    let n = (out.len() - at - 4) as u32;
    out[at..at + 4].copy_from_slice(&n.to_be_bytes());
}

fn put_value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::Bool(b) => out.extend_from_slice(&[b't', u8::from(*b)]),
        Value::I8(v) => out.extend_from_slice(&[b'b', *v as u8]),
        Value::U8(v) => out.extend_from_slice(&[b'B', *v]),
        Value::I16(v) => {
            out.push(b's');
            put_u16(out, *v as u16)
        }
        Value::U16(v) => {
            out.push(b'u');
            put_u16(out, *v)
        }
        Value::I32(v) => {
            out.push(b'I');
            put_u32(out, *v as u32)
        }
        Value::U32(v) => {
            out.push(b'i');
            put_u32(out, *v)
        }
        Value::I64(v) => {
            out.push(b'l');
            put_u64(out, *v as u64)
        }
        Value::F32(v) => {
            out.push(b'f');
            put_u32(out, v.to_bits())
        }
        Value::F64(v) => {
            out.push(b'd');
            put_u64(out, v.to_bits())
        }
        Value::Decimal(s, v) => {
            out.extend_from_slice(&[b'D', *s]);
            put_u32(out, *v)
        }
        Value::Str(s) => {
            out.push(b'S');
            put_longstr(out, s)
        }
        Value::Bytes(s) => {
            out.push(b'x');
            put_longstr(out, s)
        }
        Value::Timestamp(v) => {
            out.push(b'T');
            put_u64(out, *v)
        }
        Value::Table(t) => {
            out.push(b'F');
            put_table(out, t)
        }
        Value::Void => out.push(b'V'),
        Value::Array(a) => {
            out.push(b'A');
            let at = out.len();
            out.extend_from_slice(&[0; 4]);
            for v in a {
                put_value(out, v);
            }
            let n = (out.len() - at - 4) as u32;
            out[at..at + 4].copy_from_slice(&n.to_be_bytes());
        }
    }
}

/// The basic class's content properties.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Properties {
    pub(crate) content_type: Option<String>,
    pub(crate) content_encoding: Option<String>,
    pub(crate) headers: Option<Table>,
    pub(crate) delivery_mode: Option<u8>,
    pub(crate) priority: Option<u8>,
    pub(crate) correlation_id: Option<String>,
    pub(crate) reply_to: Option<String>,
    pub(crate) expiration: Option<String>,
    pub(crate) message_id: Option<String>,
    pub(crate) timestamp: Option<u64>,
    pub(crate) kind: Option<String>,
    pub(crate) user_id: Option<String>,
    pub(crate) app_id: Option<String>,
    pub(crate) cluster_id: Option<String>,
}

/// A content header frame's payload.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct ContentHeader {
    pub(crate) class: u16,
    pub(crate) body_size: u64,
    pub(crate) properties: Properties,
}

/// Whether property flag `bit` (15: content-type, down to 2: cluster-id)
/// is set.
macro_rules! flag {
    ($flags:expr, $bit:expr) => {
        $flags & (1 << $bit) != 0
    };
}

/// Decodes a content header frame's payload.
pub(crate) fn header(payload: &[u8]) -> Result<ContentHeader> {
    let mut r = Reader::new(payload);
    let class = r.u16("content header class")?;
    let _weight = r.u16("content header weight")?;
    let body_size = r.u64("content header body size")?;
    let flags = r.u16("property flags")?;
    let mut more = flags & 1 != 0;
    while more {
        // Continuation words name no property this server knows.
        more = r.u16("property flags")? & 1 != 0;
    }
    let mut p = Properties::default();
    let s = |r: &mut Reader<'_>, bit: u16, what: &str| -> Result<Option<String>> {
        if flag!(flags, bit) {
            r.shortstr(what).map(Some)
        } else {
            Ok(None)
        }
    };
    p.content_type = s(&mut r, 15, "content-type")?;
    p.content_encoding = s(&mut r, 14, "content-encoding")?;
    if flag!(flags, 13) {
        p.headers = Some(r.table("headers")?);
    }
    if flag!(flags, 12) {
        p.delivery_mode = Some(r.u8("delivery-mode")?);
    }
    if flag!(flags, 11) {
        p.priority = Some(r.u8("priority")?);
    }
    p.correlation_id = s(&mut r, 10, "correlation-id")?;
    p.reply_to = s(&mut r, 9, "reply-to")?;
    p.expiration = s(&mut r, 8, "expiration")?;
    p.message_id = s(&mut r, 7, "message-id")?;
    if flag!(flags, 6) {
        p.timestamp = Some(r.u64("timestamp")?);
    }
    p.kind = s(&mut r, 5, "type")?;
    p.user_id = s(&mut r, 4, "user-id")?;
    p.app_id = s(&mut r, 3, "app-id")?;
    p.cluster_id = s(&mut r, 2, "cluster-id")?;
    if !r.done() {
        return Err(format!(
            "content header: {} bytes left over at offset {}",
            payload.len() - r.at(),
            r.at()
        ));
    }
    Ok(ContentHeader {
        class,
        body_size,
        properties: p,
    })
}

/// Appends a content header frame's payload.
pub(crate) fn put_header(out: &mut Vec<u8>, h: &ContentHeader) {
    let p = &h.properties;
    put_u16(out, h.class);
    put_u16(out, 0);
    put_u64(out, h.body_size);
    let present = [
        p.content_type.is_some(),
        p.content_encoding.is_some(),
        p.headers.is_some(),
        p.delivery_mode.is_some(),
        p.priority.is_some(),
        p.correlation_id.is_some(),
        p.reply_to.is_some(),
        p.expiration.is_some(),
        p.message_id.is_some(),
        p.timestamp.is_some(),
        p.kind.is_some(),
        p.user_id.is_some(),
        p.app_id.is_some(),
        p.cluster_id.is_some(),
    ];
    let flags = present
        .iter()
        .enumerate()
        .fold(0u16, |f, (i, &on)| f | (u16::from(on) << (15 - i)));
    put_u16(out, flags);
    let s = |out: &mut Vec<u8>, v: &Option<String>| {
        if let Some(v) = v {
            put_shortstr(out, v)
        }
    };
    s(out, &p.content_type);
    s(out, &p.content_encoding);
    if let Some(t) = &p.headers {
        put_table(out, t);
    }
    if let Some(v) = p.delivery_mode {
        out.push(v);
    }
    if let Some(v) = p.priority {
        out.push(v);
    }
    s(out, &p.correlation_id);
    s(out, &p.reply_to);
    s(out, &p.expiration);
    s(out, &p.message_id);
    if let Some(v) = p.timestamp {
        put_u64(out, v);
    }
    s(out, &p.kind);
    s(out, &p.user_id);
    s(out, &p.app_id);
    s(out, &p.cluster_id);
}
