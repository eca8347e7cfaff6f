//! Writing responses.

use std::fmt::Write as _;

/// The reason phrase for a status.
pub fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        412 => "Precondition Failed",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        507 => "Insufficient Storage",
        _ => "Unknown",
    }
}

/// Whether a message header may be sent as a response header: a token
/// name that is not one the response frames itself with, and a value with
/// no control characters.
pub fn safe_header(name: &str, value: &str) -> bool {
    const FRAMING: [&str; 6] = [
        "content-length",
        "content-type",
        "transfer-encoding",
        "connection",
        "message-id",
        "delivery-count",
    ];
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
        && !FRAMING.iter().any(|f| name.eq_ignore_ascii_case(f))
        && !value.chars().any(|c| c.is_control() && c != '\t')
}

/// A whole response with a body, appended to `out`.
pub fn write(
    out: &mut Vec<u8>,
    status: u16,
    headers: &[(&str, &str)],
    content_type: Option<&str>,
    body: &[u8],
    close: bool,
) {
    let mut head = String::with_capacity(128);
    let _ = write!(head, "HTTP/1.1 {status} {}\r\n", reason(status));
    for (k, v) in headers {
        let _ = write!(head, "{k}: {v}\r\n");
    }
    if let Some(ct) = content_type {
        let _ = write!(head, "Content-Type: {ct}\r\n");
    }
    if status != 204 {
        let _ = write!(head, "Content-Length: {}\r\n", body.len());
    }
    if close {
        head.push_str("Connection: close\r\n");
    }
    head.push_str("\r\n");
    out.extend_from_slice(head.as_bytes());
    if status != 204 {
        out.extend_from_slice(body);
    }
}

/// A plain-text response: `message` and a newline.
pub fn text(out: &mut Vec<u8>, status: u16, headers: &[(&str, &str)], message: &str, close: bool) {
    let mut body = String::with_capacity(message.len() + 1);
    body.push_str(message);
    body.push('\n');
    write(
        out,
        status,
        headers,
        Some("text/plain; charset=utf-8"),
        body.as_bytes(),
        close,
    );
}

/// One server-sent event carrying a message.
pub fn event(out: &mut Vec<u8>, id: &str, kind: &str, data: &[u8]) {
    out.extend_from_slice(b"id: ");
    out.extend_from_slice(id.as_bytes());
    out.extend_from_slice(b"\nevent: ");
    out.extend_from_slice(kind.as_bytes());
    out.push(b'\n');
    // Each line of the body is one data field; CR, LF and CRLF all end a line.
    let text = String::from_utf8_lossy(data);
    for line in text.split('\n') {
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(line.trim_end_matches('\r').as_bytes());
        out.push(b'\n');
    }
    out.push(b'\n');
}
