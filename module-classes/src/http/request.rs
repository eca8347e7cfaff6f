//! Reading requests out of a connection's buffer.

use bytes::Bytes;

/// Limits a request must keep.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// The request line and headers, at most (431 beyond).
    pub max_header_bytes: usize,
    /// The body, at most (413 beyond).
    pub max_body_bytes: usize,
}

/// One parsed request.
#[derive(Debug)]
pub struct Request {
    /// `GET`, `POST`, ...
    pub method: String,
    /// The target's path, not decoded.
    pub path: String,
    /// The target's query string, without `?`, not decoded.
    pub query: String,
    /// `Content-Type`.
    pub content_type: Option<String>,
    /// `Accept` names `text/event-stream`.
    pub event_stream: bool,
    /// The connection stays open after the response.
    pub keep_alive: bool,
    /// `Authorization`.
    pub authorization: Option<String>,
    /// `If-Match`.
    pub if_match: Option<String>,
    /// `Origin` (a browser's request from a page).
    pub origin: Option<String>,
    /// `Access-Control-Request-Method` and `-Headers`: a CORS preflight
    /// when the method is `OPTIONS`.
    pub preflight: Option<(String, Option<String>)>,
    /// Every header, as [`headers`] reads them: empty unless a terminal
    /// fills it for a request that needs them all (a route's); parsing
    /// copies only the headers above.
    pub headers: Vec<(String, String)>,
    /// The body, de-chunked.
    pub body: Bytes,
}

/// What the buffer holds.
///
/// `Done` carries the request by value: it is matched at once, once per
/// request, and boxing it would cost an allocation per request.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
pub enum Parsed {
    /// Not a whole request yet. `expect_continue`: the head is complete and
    /// the client waits for `100 Continue` before it sends the body.
    Partial {
        /// The client waits for `100 Continue`.
        expect_continue: bool,
        /// The head is complete; only the body is missing. A terminal
        /// times a head that does not complete (`header_timeout_secs`).
        head_complete: bool,
    },
    /// A request, and how many bytes of the buffer it took.
    Done(Request, usize),
    /// A request the server will not serve; the connection closes after
    /// the error response.
    Fail(u16, String),
}

const MAX_HEADERS: usize = 64;

/// Parses the first request in `buf`.
pub fn parse(buf: &[u8], limits: Limits) -> Parsed {
    // Uninitialised: httparse writes only the headers it finds, so a
    // request does not pay for zeroing all 64.
    let mut headers =
        [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let head_len = match req.parse_with_uninit_headers(buf, &mut headers) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            if buf.len() > limits.max_header_bytes {
                return Parsed::Fail(
                    431,
                    format!("request head exceeds {} bytes", limits.max_header_bytes),
                );
            }
            return Parsed::Partial {
                expect_continue: false,
                head_complete: false,
            };
        }
        Err(httparse::Error::TooManyHeaders) => {
            return Parsed::Fail(431, format!("more than {MAX_HEADERS} headers"));
        }
        Err(e) => return Parsed::Fail(400, format!("malformed request: {e}")),
    };
    if head_len > limits.max_header_bytes {
        return Parsed::Fail(
            431,
            format!("request head exceeds {} bytes", limits.max_header_bytes),
        );
    }
    let version = req.version.unwrap_or(1);
    let mut content_length: Option<usize> = None;
    let mut chunked = false;
    let mut content_type = None;
    let mut event_stream = false;
    let mut keep_alive = version == 1;
    let mut expect_continue = false;
    let mut authorization = None;
    let mut if_match = None;
    let mut origin = None;
    let mut preflight_method = None;
    let mut preflight_headers = None;
    for h in req.headers.iter() {
        let value = || std::str::from_utf8(h.value).map(str::trim);
        let name = h.name;
        if name.eq_ignore_ascii_case("content-length") {
            let parsed = value().ok().and_then(|v| v.parse::<usize>().ok());
            match (parsed, content_length) {
                (Some(n), None) => content_length = Some(n),
                (Some(n), Some(m)) if n == m => {}
                _ => return Parsed::Fail(400, "invalid Content-Length".into()),
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            match value() {
                Ok(v) if v.eq_ignore_ascii_case("chunked") => chunked = true,
                Ok(v) if v.eq_ignore_ascii_case("identity") => {}
                _ => return Parsed::Fail(501, "unsupported Transfer-Encoding".into()),
            }
        } else if name.eq_ignore_ascii_case("content-type") {
            match value() {
                Ok(v) => content_type = Some(v.to_owned()),
                Err(_) => return Parsed::Fail(400, "Content-Type is not UTF-8".into()),
            }
        } else if name.eq_ignore_ascii_case("accept") {
            event_stream = value().is_ok_and(|v| v.contains("text/event-stream"));
        } else if name.eq_ignore_ascii_case("connection") {
            if let Ok(v) = value() {
                for token in v.split(',').map(str::trim) {
                    if token.eq_ignore_ascii_case("close") {
                        keep_alive = false;
                    } else if token.eq_ignore_ascii_case("keep-alive") {
                        keep_alive = true;
                    }
                }
            }
        } else if name.eq_ignore_ascii_case("authorization") {
            authorization = value().ok().map(str::to_owned);
        } else if name.eq_ignore_ascii_case("origin") {
            origin = value().ok().map(str::to_owned);
        } else if name.eq_ignore_ascii_case("access-control-request-method") {
            preflight_method = value().ok().map(str::to_owned);
        } else if name.eq_ignore_ascii_case("access-control-request-headers") {
            preflight_headers = value().ok().map(str::to_owned);
        } else if name.eq_ignore_ascii_case("if-match") {
            if_match = value().ok().map(str::to_owned);
        } else if name.eq_ignore_ascii_case("expect") {
            expect_continue = value().is_ok_and(|v| v.eq_ignore_ascii_case("100-continue"));
        }
    }
    if chunked && content_length.is_some() {
        return Parsed::Fail(400, "both Content-Length and chunked".into());
    }
    let (body, consumed) = if chunked {
        match dechunk(&buf[head_len..], limits.max_body_bytes) {
            Chunks::Done(body, used) => (Bytes::from(body), head_len + used),
            Chunks::Partial => {
                return Parsed::Partial {
                    expect_continue,
                    head_complete: true,
                };
            }
            Chunks::Fail(status, reason) => return Parsed::Fail(status, reason),
        }
    } else {
        let len = content_length.unwrap_or(0);
        if len > limits.max_body_bytes {
            return Parsed::Fail(
                413,
                format!("body of {len} bytes exceeds {}", limits.max_body_bytes),
            );
        }
        if buf.len() < head_len + len {
            return Parsed::Partial {
                expect_continue,
                head_complete: true,
            };
        }
        (
            Bytes::copy_from_slice(&buf[head_len..head_len + len]),
            head_len + len,
        )
    };
    let target = req.path.unwrap_or("/");
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    Parsed::Done(
        Request {
            method: req.method.unwrap_or("").to_owned(),
            path: path.to_owned(),
            query: query.to_owned(),
            content_type,
            event_stream,
            keep_alive,
            authorization,
            if_match,
            origin,
            preflight: preflight_method.map(|m| (m, preflight_headers)),
            headers: Vec::new(),
            body,
        },
        consumed,
    )
}

/// Every header of the request head at the start of `raw`, names and
/// values as written (values trimmed; those not UTF-8 are left out).
pub fn headers(raw: &[u8]) -> Vec<(String, String)> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    if req.parse(raw).is_err() {
        return Vec::new();
    }
    req.headers
        .iter()
        .filter(|h| !h.name.is_empty())
        .filter_map(|h| {
            let value = std::str::from_utf8(h.value).ok()?.trim();
            Some((h.name.to_owned(), value.to_owned()))
        })
        .collect()
}

enum Chunks {
    Done(Vec<u8>, usize),
    Partial,
    Fail(u16, String),
}

/// Decodes a chunked body at the start of `buf`.
fn dechunk(buf: &[u8], max: usize) -> Chunks {
    let mut body = Vec::new();
    let mut pos = 0;
    loop {
        let (used, size) = match httparse::parse_chunk_size(&buf[pos..]) {
            Ok(httparse::Status::Complete(x)) => x,
            Ok(httparse::Status::Partial) => return Chunks::Partial,
            Err(_) => return Chunks::Fail(400, format!("bad chunk size at body byte {pos}")),
        };
        pos += used;
        if size == 0 {
            // Trailers, if any, end with an empty line.
            loop {
                let Some(eol) = buf[pos..].windows(2).position(|w| w == b"\r\n") else {
                    return Chunks::Partial;
                };
                pos += eol + 2;
                if eol == 0 {
                    return Chunks::Done(body, pos);
                }
            }
        }
        let size = match usize::try_from(size) {
            Ok(s) if body.len().saturating_add(s) <= max => s,
            _ => return Chunks::Fail(413, format!("chunked body exceeds {max} bytes")),
        };
        if buf.len() < pos + size + 2 {
            return Chunks::Partial;
        }
        body.extend_from_slice(&buf[pos..pos + size]);
        pos += size;
        if &buf[pos..pos + 2] != b"\r\n" {
            return Chunks::Fail(400, format!("chunk not ended by CRLF at body byte {pos}"));
        }
        pos += 2;
    }
}

/// A number of seconds from the query string (`wait=2.5`).
pub fn query_secs(query: &str, name: &str) -> Result<Option<f64>, String> {
    for pair in query.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if k == name {
            return match v.parse::<f64>() {
                Ok(x) if x.is_finite() && x >= 0.0 => Ok(Some(x)),
                _ => Err(format!("{name} must be a number of seconds, not {v:?}")),
            };
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    const L: Limits = Limits {
        max_header_bytes: 256,
        max_body_bytes: 16,
    };

    fn done(buf: &[u8]) -> (Request, usize) {
        match parse(buf, L) {
            Parsed::Done(r, n) => (r, n),
            other => panic!("{other:?}"),
        }
    }

    fn fail(buf: &[u8]) -> u16 {
        match parse(buf, L) {
            Parsed::Fail(s, _) => s,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bodies_by_length_and_by_chunks() {
        let buf = b"POST /q/a?wait=1 HTTP/1.1\r\nContent-Length: 3\r\nContent-Type: text/plain\r\n\r\nabcNEXT";
        let (r, n) = done(buf);
        assert_eq!(
            (r.path.as_str(), r.query.as_str(), &r.body[..]),
            ("/q/a", "wait=1", &b"abc"[..])
        );
        assert_eq!(n, buf.len() - 4);
        let (r, _) = done(b"POST /q HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n");
        assert_eq!(&r.body[..], b"abcde");
        assert!(matches!(
            parse(
                b"POST /q HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nab",
                L
            ),
            Parsed::Partial { .. }
        ));
        assert!(matches!(
            parse(
                b"POST /q HTTP/1.1\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n",
                L
            ),
            Parsed::Partial {
                expect_continue: true,
                head_complete: true
            }
        ));
        assert!(matches!(
            parse(b"GET /q HTTP/1.1\r\nHost: x\r\n", L),
            Parsed::Partial {
                head_complete: false,
                ..
            }
        ));
    }

    #[test]
    fn limits_and_malformed_heads() {
        assert_eq!(fail(b"POST /q HTTP/1.1\r\nContent-Length: 17\r\n\r\n"), 413);
        assert_eq!(
            fail(b"POST /q HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n11\r\n"),
            413
        );
        assert_eq!(fail(&[b'a'; 300]), 431);
        assert_eq!(fail(b"GET /x HTTP/9.9\r\n\r\n"), 400);
        let mut long = b"GET /x HTTP/1.1\r\nX: ".to_vec();
        long.extend([b'a'; 300]);
        assert_eq!(fail(&long), 431);
        assert_eq!(fail(b"GET /x HTTP/1.1\r\nContent-Length: x\r\n\r\n"), 400);
        assert_eq!(fail(b"GET\x00 / HTTP/1.1\r\n\r\n"), 400);
        assert_eq!(
            fail(b"POST /q HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"),
            400
        );
    }

    #[test]
    fn query_seconds() {
        assert_eq!(query_secs("wait=2.5&lease=3", "wait"), Ok(Some(2.5)));
        assert_eq!(query_secs("lease=3", "wait"), Ok(None));
        assert!(query_secs("wait=-1", "wait").is_err());
        assert!(query_secs("wait=abc", "wait").is_err());
    }
}
