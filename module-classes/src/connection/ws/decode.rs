//! Reading frames: headers checked as they come (tungstenite's
//! `FrameHeader::parse`), data payloads unmasked in place and handed on,
//! control frames answered; and the header of a frame the server sends.

use std::io;

use tungstenite::protocol::frame::FrameHeader;
use tungstenite::protocol::frame::coding::{Control, Data, OpCode};

use super::{Frame, Phase, Stream, WsStream};

impl<S: Stream> WsStream<S> {
    /// A frame header was read: check it and start the frame.
    fn begin(&mut self, h: &FrameHeader, len: u64, at: u64) {
        let bad = |what: &str| format!("websocket: frame at byte {at}: {what}");
        if h.rsv1 || h.rsv2 || h.rsv3 {
            return self.fail(1002, "reserved bits", bad("reserved bits set"));
        }
        let Some(mask) = h.mask else {
            return self.fail(
                1002,
                "unmasked frame",
                bad("not masked (a client must mask its frames)"),
            );
        };
        let control = match h.opcode {
            OpCode::Data(Data::Text) => {
                return self.fail(
                    1003,
                    "binary frames only",
                    bad("a text frame (binary frames only)"),
                );
            }
            OpCode::Data(Data::Continue) if !self.in_message => {
                return self.fail(
                    1002,
                    "continuation",
                    bad("a continuation frame with no message begun"),
                );
            }
            OpCode::Data(Data::Binary) if self.in_message => {
                return self.fail(
                    1002,
                    "message unfinished",
                    bad("a new message before the last one's final frame"),
                );
            }
            OpCode::Data(_) => None,
            OpCode::Control(c) => {
                if !h.is_final || len > 125 {
                    return self.fail(
                        1002,
                        "bad control frame",
                        bad("a control frame fragmented or over 125 bytes"),
                    );
                }
                Some(c)
            }
        };
        if control.is_none() {
            if len > self.ws.max_frame_bytes as u64 {
                return self.fail(
                    1009,
                    "frame too big",
                    bad(&format!(
                        "{len} bytes, more than max_frame_bytes ({})",
                        self.ws.max_frame_bytes
                    )),
                );
            }
            self.in_message = !h.is_final;
        }
        self.frame = Some(Frame {
            remaining: len,
            mask,
            done: 0,
            control,
        });
    }

    /// A control frame is complete.
    fn control_done(&mut self, kind: Control) {
        let payload = std::mem::take(&mut self.control);
        match kind {
            Control::Ping if !self.close_sent => self.queue(0xA, &payload),
            Control::Close => {
                if payload.len() == 1 {
                    return self.fail(
                        1002,
                        "bad close",
                        "websocket: a close frame with a one-byte body".into(),
                    );
                }
                if !self.close_sent {
                    // Echo the status code, as RFC 6455 5.5.1 suggests.
                    let code = payload.get(..2).unwrap_or(&[]).to_vec();
                    self.queue(0x8, &code);
                    self.close_sent = true;
                }
                self.phase = Phase::Ended;
            }
            _ => {}
        }
    }

    /// Decodes `buf` (frames as received) in place: the payload of data
    /// frames is moved to the front, unmasked; returns its length.
    pub(super) fn decode(&mut self, buf: &mut [u8]) -> usize {
        let (mut i, mut out) = (0, 0);
        while i < buf.len() && matches!(self.phase, Phase::Open) {
            let Some(f) = &mut self.frame else {
                let take = (self.head.len() - self.head_len).min(buf.len() - i);
                self.head[self.head_len..self.head_len + take].copy_from_slice(&buf[i..i + take]);
                let mut cursor = io::Cursor::new(&self.head[..self.head_len + take]);
                let at = self.offset + i as u64 - self.head_len as u64;
                match FrameHeader::parse(&mut cursor) {
                    Ok(None) => {
                        self.head_len += take;
                        i += take;
                    }
                    Ok(Some((h, len))) => {
                        i += cursor.position() as usize - self.head_len;
                        self.head_len = 0;
                        self.begin(&h, len, at);
                    }
                    Err(e) => self.fail(
                        1002,
                        "bad frame",
                        format!("websocket: frame at byte {at}: {e}"),
                    ),
                }
                continue;
            };
            let m = (buf.len() - i).min(usize::try_from(f.remaining).unwrap_or(usize::MAX));
            let (mask, phase) = (f.mask, f.done);
            f.remaining -= m as u64;
            f.done += m as u64;
            let piece = match f.control {
                Some(_) => &mut buf[i..i + m],
                None => {
                    buf.copy_within(i..i + m, out);
                    out += m;
                    &mut buf[out - m..out]
                }
            };
            for (k, b) in piece.iter_mut().enumerate() {
                *b ^= mask[(phase as usize + k) % 4];
            }
            if f.control.is_some() {
                self.control.extend_from_slice(&buf[i..i + m]);
            }
            i += m;
            if let Some(f) = self.frame.take_if(|f| f.remaining == 0) {
                if let Some(kind) = f.control {
                    self.control_done(kind);
                }
            }
        }
        self.offset += i as u64;
        out
    }
}

/// Appends a final frame's header with `opcode` for a `len`-byte payload.
pub(super) fn frame_head(out: &mut Vec<u8>, opcode: u8, len: usize) {
    out.push(0x80 | opcode);
    match len {
        0..=125 => out.push(len as u8),
        126..=65535 => {
            out.push(126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        _ => {
            out.push(127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
}
