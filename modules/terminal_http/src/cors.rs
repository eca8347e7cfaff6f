//! CORS: which other origins' pages may call this terminal from a
//! browser. Off unless the instance names origins.
//!
//! ```toml
//! [instances.http.config.cors]
//! allow_origins = ["https://dashboard.example"]   # or ["*"]
//! allow_credentials = false                        # cookies / Authorization from scripts
//! max_age_secs = 600                               # how long a browser may cache a preflight
//! ```
//!
//! A preflight (`OPTIONS` with `Access-Control-Request-Method`) from an
//! allowed origin is answered `204` with the methods and the headers it
//! asked for; from another origin `403`, with no CORS headers, so the
//! browser refuses the call. Every answer to an allowed origin — event
//! streams and routes included — carries `Access-Control-Allow-Origin`,
//! `Vary: Origin` and `Access-Control-Expose-Headers` (`Message-Id`,
//! `Delivery-Count`, `Retry-After`, so scripts can read them).

use std::fmt::Write as _;
use std::sync::Arc;

use bindery_classes::http::response;
use serde::Deserialize;

/// The `cors` section of the instance configuration.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Cors {
    /// Origins whose pages may call (`https://app.example`), or `*`.
    pub allow_origins: Vec<String>,
    /// Let scripts send credentials (then `*` echoes the caller's origin,
    /// as browsers require).
    pub allow_credentials: bool,
    /// How long a browser may cache a preflight's answer.
    pub max_age_secs: u64,
}

impl Default for Cors {
    fn default() -> Self {
        Cors {
            allow_origins: Vec::new(),
            allow_credentials: false,
            max_age_secs: 600,
        }
    }
}

impl Cors {
    fn allows(&self, origin: &str) -> bool {
        self.allow_origins
            .iter()
            .any(|o| o == "*" || o.eq_ignore_ascii_case(origin))
    }

    /// The `Access-Control-Allow-Origin` value for `origin`, if allowed.
    fn allowed(&self, origin: &str) -> Option<String> {
        if !self.allows(origin) || origin.contains(['\r', '\n']) {
            return None;
        }
        let any = self.allow_origins.iter().any(|o| o == "*");
        Some(if any && !self.allow_credentials {
            "*".to_owned()
        } else {
            origin.to_owned()
        })
    }

    /// The header lines every answer to a request from `origin` carries;
    /// `None` when there is no origin or it is not allowed.
    pub(crate) fn answer_headers(&self, origin: Option<&str>) -> Option<Arc<str>> {
        let allowed = self.allowed(origin?)?;
        let mut lines = format!(
            "Access-Control-Allow-Origin: {allowed}\r\nVary: Origin\r\n\
             Access-Control-Expose-Headers: Message-Id, Delivery-Count, Retry-After\r\n"
        );
        if self.allow_credentials {
            lines.push_str("Access-Control-Allow-Credentials: true\r\n");
        }
        Some(lines.into())
    }

    /// The answer to a preflight from `origin` asking for `method` and
    /// `headers`.
    pub(crate) fn preflight(
        &self,
        out: &mut Vec<u8>,
        origin: Option<&str>,
        headers: Option<&str>,
        close: bool,
    ) {
        let Some(allowed) = origin.and_then(|o| self.allowed(o)) else {
            let why = "this origin may not call this server (cors.allow_origins)";
            return response::text(out, 403, &[], why, close);
        };
        let mut head = format!(
            "HTTP/1.1 204 No Content\r\nAccess-Control-Allow-Origin: {allowed}\r\nVary: Origin\r\n\
             Access-Control-Allow-Methods: GET, POST, PUT, DELETE\r\nAccess-Control-Max-Age: {}\r\n",
            self.max_age_secs
        );
        if let Some(h) = headers.filter(|h| !h.contains(['\r', '\n'])) {
            let _ = write!(head, "Access-Control-Allow-Headers: {h}\r\n");
        }
        if self.allow_credentials {
            head.push_str("Access-Control-Allow-Credentials: true\r\n");
        }
        if close {
            head.push_str("Connection: close\r\n");
        }
        head.push_str("\r\n");
        out.extend_from_slice(head.as_bytes());
    }
}

/// Appends `response` to `out` with `lines` after its status line.
pub(crate) fn with_headers(out: &mut Vec<u8>, response: &[u8], lines: Option<&str>) {
    let end = lines.and_then(|l| Some((l, response.windows(2).position(|w| w == b"\r\n")?)));
    match end {
        Some((lines, end)) => {
            out.extend_from_slice(&response[..end + 2]);
            out.extend_from_slice(lines.as_bytes());
            out.extend_from_slice(&response[end + 2..]);
        }
        None => out.extend_from_slice(response),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_headers_and_preflights() {
        let cors = Cors {
            allow_origins: vec!["https://app.example".into()],
            ..Cors::default()
        };
        assert!(cors.answer_headers(None).is_none());
        assert!(cors.answer_headers(Some("https://evil.example")).is_none());
        let h = cors.answer_headers(Some("https://app.example")).unwrap();
        assert!(h.starts_with("Access-Control-Allow-Origin: https://app.example\r\n"));
        let mut out = Vec::new();
        with_headers(&mut out, b"HTTP/1.1 200 OK\r\nX: y\r\n\r\nbody", Some(&h));
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.1 200 OK\r\nAccess-Control-Allow-Origin"));
        assert!(text.ends_with("X: y\r\n\r\nbody"));
        let mut out = Vec::new();
        cors.preflight(
            &mut out,
            Some("https://app.example"),
            Some("content-type"),
            false,
        );
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.1 204"), "{text}");
        assert!(text.contains("Access-Control-Allow-Headers: content-type\r\n"));
        let mut out = Vec::new();
        cors.preflight(&mut out, Some("https://evil.example"), None, false);
        assert!(out.starts_with(b"HTTP/1.1 403"));
        let any = Cors {
            allow_origins: vec!["*".into()],
            ..Cors::default()
        };
        assert!(
            any.answer_headers(Some("https://x"))
                .unwrap()
                .contains("Origin: *\r\n")
        );
        let creds = Cors {
            allow_credentials: true,
            ..any
        };
        let h = creds.answer_headers(Some("https://x")).unwrap();
        assert!(h.contains("Origin: https://x\r\n") && h.contains("Credentials: true"));
    }
}
