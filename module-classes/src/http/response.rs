//! Writing responses.

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

/// A whole response with a body, appended to `out` (bytes appended, no
/// formatting machinery: this is every HTTP answer's path).
pub fn write(
    out: &mut Vec<u8>,
    status: u16,
    headers: &[(&str, &str)],
    content_type: Option<&str>,
    body: &[u8],
    close: bool,
) {
    out.reserve(128 + body.len());
    out.extend_from_slice(b"HTTP/1.1 ");
    push_decimal(out, usize::from(status));
    out.push(b' ');
    out.extend_from_slice(reason(status).as_bytes());
    out.extend_from_slice(b"\r\n");
    for (k, v) in headers {
        out.extend_from_slice(k.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(v.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if let Some(ct) = content_type {
        out.extend_from_slice(b"Content-Type: ");
        out.extend_from_slice(ct.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if status != 204 {
        out.extend_from_slice(b"Content-Length: ");
        push_decimal(out, body.len());
        out.extend_from_slice(b"\r\n");
    }
    if close {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if status != 204 {
        out.extend_from_slice(body);
    }
}

/// Appends `n` in decimal.
pub fn push_decimal(out: &mut Vec<u8>, mut n: usize) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_response_is_framed_as_http_says() {
        let mut out = Vec::new();
        write(
            &mut out,
            201,
            &[("Message-Id", "00ff")],
            Some("text/plain"),
            b"hi\n",
            false,
        );
        assert_eq!(
            out,
            b"HTTP/1.1 201 Created\r\nMessage-Id: 00ff\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n\r\nhi\n"
        );
        out.clear();
        write(&mut out, 204, &[], None, b"ignored", true);
        assert_eq!(out, b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n");
        for n in [0usize, 7, 10, 99, 1234567890, usize::MAX] {
            let mut d = Vec::new();
            push_decimal(&mut d, n);
            assert_eq!(d, n.to_string().as_bytes());
        }
    }
}
