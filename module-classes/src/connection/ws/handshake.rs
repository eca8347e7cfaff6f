//! The opening handshake of RFC 6455 (section 4.2): an HTTP/1.1 `GET` with
//! `Upgrade: websocket`, answered `101 Switching Protocols` with the
//! accept key (tungstenite's `derive_accept_key`) and the subprotocol, or
//! `400 Bad Request` saying what is wrong.

use super::WebSocket;

/// Largest request head accepted.
pub(super) const MAX_REQUEST: usize = 8 * 1024;

/// What a complete request head comes to.
pub(super) enum Outcome {
    /// More bytes are needed.
    Partial,
    /// Accepted: the response to send, and how many bytes the head took
    /// (what follows is WebSocket frames).
    Accept { response: Vec<u8>, used: usize },
    /// Refused: the response to send, and the reason for the log.
    Refuse { response: Vec<u8>, reason: String },
}

/// A `400 Bad Request` saying `reason`.
pub(super) fn refuse(reason: String) -> Outcome {
    let body = format!("{reason}\n");
    let response = format!(
        "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\n\
         Sec-WebSocket-Version: 13\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes();
    Outcome::Refuse { response, reason }
}

/// Whether the comma-separated header `value` holds `token`
/// (case-insensitively).
fn has_token(value: &[u8], token: &str) -> bool {
    String::from_utf8_lossy(value)
        .split(',')
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Parses the request head in `head` and decides.
pub(super) fn answer(head: &[u8], ws: &WebSocket) -> Outcome {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    let used = match req.parse(head) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if head.len() >= MAX_REQUEST => {
            return refuse(format!(
                "websocket handshake: request head larger than {MAX_REQUEST} bytes"
            ));
        }
        Ok(httparse::Status::Partial) => return Outcome::Partial,
        Err(e) => return refuse(format!("websocket handshake: not an HTTP request: {e}")),
    };
    if req.method != Some("GET") || req.version != Some(1) {
        return refuse(format!(
            "websocket handshake: want GET over HTTP/1.1, got {} over HTTP/1.{}",
            req.method.unwrap_or("?"),
            req.version.unwrap_or(0)
        ));
    }
    let header = |name: &str| {
        req.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    };
    if !header("Upgrade").is_some_and(|v| has_token(v, "websocket")) {
        return refuse("websocket handshake: no `Upgrade: websocket` header".into());
    }
    if !header("Connection").is_some_and(|v| has_token(v, "upgrade")) {
        return refuse("websocket handshake: no `Connection: Upgrade` header".into());
    }
    if header("Sec-WebSocket-Version") != Some(b"13") {
        return refuse("websocket handshake: Sec-WebSocket-Version must be 13".into());
    }
    let Some(key) = header("Sec-WebSocket-Key").filter(|k| k.len() == 24) else {
        return refuse(
            "websocket handshake: Sec-WebSocket-Key missing or not 16 bytes in base64".into(),
        );
    };
    let offered: Vec<String> = req
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("Sec-WebSocket-Protocol"))
        .flat_map(|h| {
            String::from_utf8_lossy(h.value)
                .split(',')
                .map(|p| p.trim().to_owned())
                .collect::<Vec<_>>()
        })
        .collect();
    let Some(chosen) = ws
        .subprotocols
        .iter()
        .find(|ours| offered.iter().any(|p| p == *ours))
    else {
        return refuse(format!(
            "websocket handshake: subprotocol {:?} offered, this listener speaks {:?} \
             (Sec-WebSocket-Protocol)",
            offered, ws.subprotocols
        ));
    };
    let accept = tungstenite::handshake::derive_accept_key(key);
    let response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {accept}\r\nSec-WebSocket-Protocol: {chosen}\r\n\r\n"
    )
    .into_bytes();
    Outcome::Accept { response, used }
}
