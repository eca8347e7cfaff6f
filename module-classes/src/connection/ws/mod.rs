//! WebSocket (RFC 6455) as a transport under any protocol core: a
//! [`WsStream`] is a [`Stream`] like a socket or a [`super::TlsStream`],
//! so the connection driver and the cores do not change. MQTT over
//! WebSocket is the MQTT core on a `WsStream`.
//!
//! The stream does the opening handshake (a `400` and a closed connection
//! for a bad one), then turns the payloads of binary frames into one byte
//! stream: a protocol unit split across frames, several in one frame and
//! fragmented messages (continuation frames) all read the same. Pings are
//! answered with pongs, a close frame with a close frame and the end of
//! input. A client frame that breaks the protocol (unmasked, reserved bits,
//! a bad opcode or continuation) closes with 1002, a data frame larger
//! than `max_frame_bytes` with 1009, a text frame with 1003; the read
//! error names the byte offset. What the core writes goes out as binary
//! frames of at most 64 KiB.
//!
//! Frame headers are parsed and the accept key derived by tungstenite
//! (`FrameHeader::parse`, `derive_accept_key`); its `WebSocket` type is not
//! used because it assembles whole messages in buffers it keeps per
//! connection, where here payload bytes go straight to the core and an
//! idle connection holds no buffer (the handshake's, pending control
//! frames' and unsent output are freed once used).
//!
//! A terminal's configuration takes a `websocket` section
//! ([`WebSocketSettings`]):
//!
//! ```toml
//! [instances.mqtt.config.websocket]
//! bind = ["127.0.0.1:8083"]      # listeners speaking WebSocket
//! max_frame_bytes = 1048576      # larger data frames close with 1009
//! ```

mod decode;
mod handshake;

use std::io::{self, IoSlice, Read, Write};
use std::sync::Arc;

use serde::Deserialize;
use tungstenite::protocol::frame::coding::Control;

use decode::frame_head;

use super::Stream;

/// Largest frame written: output is cut into frames of at most this.
const MAX_OUT_FRAME: usize = 64 * 1024;

/// A terminal instance's `websocket` section.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct WebSocketSettings {
    /// Addresses to listen on for WebSocket connections.
    pub bind: Vec<String>,
    /// Largest data frame accepted; none: the terminal's default.
    #[serde(default)]
    pub max_frame_bytes: Option<usize>,
}

/// What a terminal's WebSocket listeners speak
/// ([`crate::terminal::Serving::websocket`]).
#[derive(Clone, Debug)]
pub struct WebSocket {
    /// Addresses to listen on.
    pub bind: Vec<String>,
    /// Subprotocols accepted (`Sec-WebSocket-Protocol`), the preferred
    /// first; a client offering none of them gets `400`.
    pub subprotocols: &'static [&'static str],
    /// Largest data frame accepted; a larger one closes with 1009.
    pub max_frame_bytes: usize,
}

/// Where the stream is.
enum Phase {
    /// Reading the request head (kept here until complete).
    Handshake(Vec<u8>),
    /// Frames flow.
    Open,
    /// No more input: the peer sent close, or the stream failed.
    Ended,
}

/// The frame being read.
struct Frame {
    remaining: u64,
    mask: [u8; 4],
    /// Payload bytes read so far (for the mask's phase).
    done: u64,
    /// A control frame (its payload is collected), or data.
    control: Option<Control>,
}

/// A WebSocket connection over `S`, reading and writing the payload of
/// binary frames (see the module docs).
pub struct WsStream<S: Stream> {
    sock: S,
    ws: Arc<WebSocket>,
    phase: Phase,
    /// Bytes received after the request head that are not read yet.
    stash: Vec<u8>,
    /// A frame header that came in parts (at most 14 bytes).
    head: [u8; 14],
    head_len: usize,
    frame: Option<Frame>,
    /// A data message whose final frame has not come yet.
    in_message: bool,
    /// The payload of the control frame being read.
    control: Vec<u8>,
    /// Frame bytes received since the handshake (for error offsets).
    offset: u64,
    /// Bytes for the peer not written yet: the handshake response, pongs,
    /// close, the rest of a frame.
    out: Vec<u8>,
    close_sent: bool,
    /// Why the stream failed; every read after says it again.
    error: Option<String>,
}

impl<S: Stream> WsStream<S> {
    /// The server side of a WebSocket connection over `sock`, awaiting the
    /// client's handshake.
    pub fn new(sock: S, ws: Arc<WebSocket>) -> WsStream<S> {
        WsStream {
            sock,
            ws,
            phase: Phase::Handshake(Vec::new()),
            stash: Vec::new(),
            head: [0; 14],
            head_len: 0,
            frame: None,
            in_message: false,
            control: Vec::new(),
            offset: 0,
            out: Vec::new(),
            close_sent: false,
            error: None,
        }
    }

    /// Writes `out` until the socket would block (`WouldBlock` while some
    /// is left); frees it once empty.
    fn send_pending(&mut self) -> io::Result<()> {
        let mut at = 0;
        let result = loop {
            if at == self.out.len() {
                break Ok(());
            }
            match self.sock.write(&self.out[at..]) {
                Ok(0) => break Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => at += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break Err(e),
            }
        };
        if at == self.out.len() {
            self.out = Vec::new();
        } else {
            self.out.drain(..at);
        }
        result
    }

    /// Queues a frame from the server (unmasked).
    fn queue(&mut self, opcode: u8, payload: &[u8]) {
        frame_head(&mut self.out, opcode, payload.len());
        self.out.extend_from_slice(payload);
    }

    /// Closes with `code`, failing every read after with `why`.
    fn fail(&mut self, code: u16, reason: &str, why: String) {
        if !self.close_sent {
            let mut payload = code.to_be_bytes().to_vec();
            payload.extend_from_slice(reason.as_bytes());
            self.queue(0x8, &payload);
            self.close_sent = true;
        }
        let _ = self.send_pending();
        self.error = Some(why);
        self.phase = Phase::Ended;
    }

    /// Reads the request head and answers it. `Ok` once open.
    fn handshake(&mut self, scratch: &mut [u8]) -> io::Result<()> {
        loop {
            let Phase::Handshake(head) = &mut self.phase else {
                return Ok(());
            };
            let room = handshake::MAX_REQUEST - head.len();
            let want = room.min(scratch.len()).max(1);
            let n = match self.sock.read(&mut scratch[..want]) {
                Ok(0) => {
                    self.phase = Phase::Ended;
                    return Ok(());
                }
                Ok(n) => n,
                Err(e) => return Err(e),
            };
            head.extend_from_slice(&scratch[..n]);
            match handshake::answer(head, &self.ws) {
                handshake::Outcome::Partial => {}
                handshake::Outcome::Accept { response, used } => {
                    self.stash = head.split_off(used);
                    self.phase = Phase::Open;
                    self.out = response;
                    return Ok(());
                }
                handshake::Outcome::Refuse { response, reason } => {
                    self.out = response;
                    self.close_sent = true;
                    let _ = self.send_pending();
                    self.phase = Phase::Ended;
                    self.error = Some(reason);
                    return Ok(());
                }
            }
        }
    }
}

impl<S: Stream> Read for WsStream<S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.send_pending() {
                Err(e) if e.kind() != io::ErrorKind::WouldBlock => return Err(e),
                _ => {}
            }
            if let Some(why) = &self.error {
                return Err(io::Error::new(io::ErrorKind::InvalidData, why.clone()));
            }
            match self.phase {
                Phase::Handshake(_) => {
                    self.handshake(buf)?;
                    continue;
                }
                Phase::Ended => return Ok(0),
                Phase::Open => {}
            }
            let n = if self.stash.is_empty() {
                match self.sock.read(buf)? {
                    0 => {
                        self.phase = Phase::Ended;
                        return Ok(0);
                    }
                    n => n,
                }
            } else {
                let n = self.stash.len().min(buf.len());
                buf[..n].copy_from_slice(&self.stash[..n]);
                self.stash.drain(..n);
                if self.stash.is_empty() {
                    self.stash = Vec::new();
                }
                n
            };
            let got = self.decode(&mut buf[..n]);
            if got > 0 {
                // Pongs and a close reply go out on the next call.
                return Ok(got);
            }
        }
    }
}

impl<S: Stream> Write for WsStream<S> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.close_sent {
            return Err(io::ErrorKind::BrokenPipe.into());
        }
        if !matches!(self.phase, Phase::Open) {
            // Nothing goes out before the handshake's answer.
            return Err(io::ErrorKind::WouldBlock.into());
        }
        self.send_pending()?;
        let n = buf.len().min(MAX_OUT_FRAME);
        let mut head = Vec::with_capacity(10);
        frame_head(&mut head, 0x2, n);
        let wrote = self
            .sock
            .write_vectored(&[IoSlice::new(&head), IoSlice::new(&buf[..n])])?;
        if wrote < head.len() + n {
            // The rest of this frame waits here (at most one frame).
            self.out.extend_from_slice(&head[wrote.min(head.len())..]);
            self.out
                .extend_from_slice(&buf[wrote.saturating_sub(head.len())..n]);
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send_pending()?;
        self.sock.flush()
    }
}

impl<S: Stream> mio::event::Source for WsStream<S> {
    fn register(
        &mut self,
        registry: &mio::Registry,
        token: mio::Token,
        interests: mio::Interest,
    ) -> io::Result<()> {
        self.sock.register(registry, token, interests)
    }

    fn reregister(
        &mut self,
        registry: &mio::Registry,
        token: mio::Token,
        interests: mio::Interest,
    ) -> io::Result<()> {
        self.sock.reregister(registry, token, interests)
    }

    fn deregister(&mut self, registry: &mio::Registry) -> io::Result<()> {
        self.sock.deregister(registry)
    }
}

impl<S: Stream> Stream for WsStream<S> {
    fn peer(&self) -> String {
        format!("{} (websocket)", self.sock.peer())
    }

    fn peer_certificates(&self) -> Option<&[rustls::pki_types::CertificateDer<'static>]> {
        self.sock.peer_certificates()
    }
}

impl<S: Stream> Drop for WsStream<S> {
    fn drop(&mut self) {
        // Best effort: a clean close if the core ended the connection.
        if matches!(self.phase, Phase::Open) && !self.close_sent {
            self.queue(0x8, &1000u16.to_be_bytes());
            self.close_sent = true;
        }
        let _ = self.send_pending();
        let _ = self.sock.flush();
    }
}
