//! The endpoints: what each request asks and what it gets.
//!
//! Longer than most files here: the whole management API's routing and
//! replies, so the OpenAPI document has one place to be checked against.

use std::sync::Arc;
use std::time::Duration;

use bindery::{Config, Error, Runtime};
use bindery_classes::http::request::{Request, query_secs};
use percent_encoding::percent_decode_str;
use serde::Serialize;
use serde_json::json;

use crate::Shared;

/// A response: status, extra headers, body.
pub(crate) struct Reply {
    pub(crate) status: u16,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) content_type: Option<&'static str>,
    pub(crate) body: Vec<u8>,
}

/// What a request gets: a reply now, or an operation to run off the
/// reactor that makes the reply.
pub(crate) enum Answer {
    Now(Reply),
    Later(Box<dyn FnOnce() -> Reply + Send>),
    /// Stream `instance`'s log: these lines first, then new ones as they
    /// come, until the client leaves.
    Follow {
        instance: String,
        lines: Vec<bindery::logs::LogLine>,
    },
}

/// The longest grace a stop may ask for.
const MAX_GRACE_SECS: f64 = 3600.0;

fn json_reply(status: u16, value: &impl Serialize) -> Reply {
    Reply {
        status,
        headers: Vec::new(),
        content_type: Some("application/json"),
        body: serde_json::to_vec_pretty(value).unwrap_or_default(),
    }
}

/// `{"error": message}` with `status`.
pub(crate) fn error(status: u16, message: &str) -> Reply {
    json_reply(status, &json!({ "error": message }))
}

/// 401, saying nothing about why.
pub(crate) fn unauthorized() -> Reply {
    let mut r = error(401, "unauthorized");
    r.headers.push(("WWW-Authenticate".into(), "Bearer".into()));
    r
}

/// Whether `header` is `Bearer <token>`; compared in constant time.
pub(crate) fn authorized(token: &[u8], header: Option<&str>) -> bool {
    let Some(given) = header.and_then(|h| h.strip_prefix("Bearer ")) else {
        return false;
    };
    let given = given.trim().as_bytes();
    // Every byte of the longer is looked at, whatever differs first.
    let mut diff = (given.len() ^ token.len()) as u8 | u8::from(given.len() != token.len());
    for i in 0..given.len().max(token.len()) {
        let a = given.get(i).copied().unwrap_or(0);
        let b = token.get(i).copied().unwrap_or(0);
        diff |= a ^ b;
    }
    diff == 0
}

/// The status an error from the runtime gets.
fn status_of(e: &Error, creating: bool) -> u16 {
    match e {
        Error::NoInstance { .. } => 404,
        Error::InstanceExists { .. } | Error::Binding { .. } => 409,
        Error::Stale { .. } => 412,
        Error::Protected { .. } => 409,
        Error::Stopping => 503,
        Error::NotLinked { .. } | Error::Config(_) => 400,
        Error::Instance { .. } if creating => 400,
        Error::Instance { .. } => 409,
        _ => 500,
    }
}

fn failed(e: &Error, creating: bool) -> Reply {
    error(status_of(e, creating), &e.report())
}

fn decoded(segment: &str) -> Result<String, Reply> {
    percent_decode_str(segment)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| error(400, &format!("{segment:?} is not UTF-8 once decoded")))
}

/// The `grace_secs` query parameter, or the default.
fn grace(req: &Request) -> Result<Duration, Reply> {
    match query_secs(&req.query, "grace_secs") {
        Ok(Some(s)) if s <= MAX_GRACE_SECS => Ok(Duration::from_secs_f64(s)),
        Ok(Some(s)) => Err(error(
            400,
            &format!("grace_secs: {s} is more than {MAX_GRACE_SECS}"),
        )),
        Ok(None) => Ok(bindery::DEFAULT_GRACE),
        Err(e) => Err(error(400, &e)),
    }
}

/// A query parameter, decoded.
fn query(req: &Request, name: &str) -> Result<Option<String>, Reply> {
    for pair in req.query.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if k == name {
            let v = v.replace('+', " ");
            return decoded(&v).map(Some);
        }
    }
    Ok(None)
}

/// System information.
#[derive(Serialize)]
struct System {
    version: &'static str,
    commit: Option<&'static str>,
    target: String,
    os: &'static str,
    cores: usize,
    memory_bytes: Option<u64>,
    pid: u32,
    uptime_secs: u64,
    registration: &'static str,
    instances: usize,
}

fn memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

fn system(rt: &Runtime) -> System {
    System {
        version: env!("CARGO_PKG_VERSION"),
        commit: option_env!("BINDERY_COMMIT"),
        target: format!("{}-{}", std::env::consts::ARCH, std::env::consts::OS),
        os: std::env::consts::OS,
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        memory_bytes: memory(),
        pid: std::process::id(),
        uptime_secs: crate::STARTED
            .get()
            .and_then(|t| t.elapsed().ok())
            .map_or(0, |d| d.as_secs()),
        registration: bindery::REGISTRATION,
        instances: rt.instances().len(),
    }
}

/// The endpoints a path has, for 405's `Allow`.
fn allowed(segments: &[&str]) -> Option<&'static str> {
    match segments {
        [
            "v1",
            "system" | "modules" | "bindings" | "metrics" | "openapi.json",
        ] => Some("GET"),
        ["v1", "instances"] => Some("GET, POST"),
        ["v1", "config"] => Some("GET, PUT"),
        ["v1", "instances", _] => Some("GET, DELETE"),
        ["v1", "instances", _, "start" | "stop" | "restart"] => Some("POST"),
        ["v1", "instances", _, "bindings"] => Some("POST, DELETE"),
        ["v1", "instances", _, "logs"] => Some("GET"),
        _ => None,
    }
}

/// Runs `op` off the reactor and replies with its outcome.
fn later(op: impl FnOnce() -> Reply + Send + 'static) -> Answer {
    Answer::Later(Box::new(op))
}

/// The reply to `req`.
pub(crate) fn answer(shared: &Arc<Shared>, req: &Request) -> Answer {
    match route(shared, req) {
        Ok(a) => a,
        Err(r) => Answer::Now(r),
    }
}

fn route(shared: &Arc<Shared>, req: &Request) -> Result<Answer, Reply> {
    let rt = shared.runtime.clone();
    let segments: Vec<&str> = req.path.trim_matches('/').split('/').collect();
    let method = req.method.as_str();
    let now = |r: Reply| Ok(Answer::Now(r));
    match (method, segments.as_slice()) {
        ("GET", ["v1", "system"]) => now(json_reply(200, &system(&rt))),
        ("GET", ["v1", "modules"]) => now(json_reply(200, &rt.introspect().modules)),
        ("GET", ["v1", "bindings"]) => now(json_reply(200, &rt.introspect().bindings)),
        ("GET", ["v1", "metrics"]) => now(Reply {
            status: 200,
            headers: Vec::new(),
            content_type: Some("text/plain; version=0.0.4"),
            body: bindery_classes::metrics::Metrics::of(&rt)
                .render()
                .into_bytes(),
        }),
        ("GET", ["v1", "openapi.json"]) => now(Reply {
            status: 200,
            headers: Vec::new(),
            content_type: Some("application/json"),
            body: crate::OPENAPI.as_bytes().to_vec(),
        }),
        ("GET", ["v1", "instances"]) => now(json_reply(200, &rt.instances())),
        ("GET", ["v1", "config"]) => now(Reply {
            status: 200,
            headers: vec![("ETag".into(), format!("\"{}\"", rt.config_version()))],
            content_type: Some("application/toml"),
            body: rt.effective_config().into_bytes(),
        }),
        ("PUT", ["v1", "config"]) => {
            let text = std::str::from_utf8(&req.body)
                .map_err(|e| error(400, &format!("the body is not UTF-8: {e}")))?;
            let config =
                Config::parse("request body", text).map_err(|e| error(400, &e.to_string()))?;
            let if_match = req
                .if_match
                .as_deref()
                .map(|v| v.trim().trim_matches('"').to_owned())
                .filter(|v| v != "*");
            let me = shared.instance.clone();
            Ok(later(move || {
                match rt.reload_if(&config, if_match.as_deref(), &[me.as_str()]) {
                    Ok(report) => {
                        let mut r = json_reply(200, &report);
                        r.headers
                            .push(("ETag".into(), format!("\"{}\"", rt.config_version())));
                        r
                    }
                    Err(e) => failed(&e, true),
                }
            }))
        }
        ("POST", ["v1", "instances"]) => {
            let text = std::str::from_utf8(&req.body)
                .map_err(|e| error(400, &format!("the body is not UTF-8: {e}")))?;
            let config =
                Config::parse("request body", text).map_err(|e| error(400, &e.to_string()))?;
            let mut specs = config.instances;
            if specs.len() != 1 {
                return Err(error(
                    400,
                    &format!(
                        "the body must hold one enabled [instances.NAME] table, not {}",
                        specs.len()
                    ),
                ));
            }
            let spec = specs.remove(0);
            Ok(later(move || match rt.create(spec) {
                Ok(info) => json_reply(201, &info),
                Err(e) => failed(&e, true),
            }))
        }
        ("GET", ["v1", "instances", name]) => {
            let name = decoded(name)?;
            match rt.instance(&name) {
                Some(info) => now(json_reply(200, &info)),
                None => now(failed(&Error::NoInstance { instance: name }, false)),
            }
        }
        ("DELETE", ["v1", "instances", name]) => {
            let name = own(shared, decoded(name)?, "remove")?;
            let grace = grace(req)?;
            Ok(later(move || match rt.remove(&name, grace) {
                Ok(()) => Reply {
                    status: 204,
                    headers: Vec::new(),
                    content_type: None,
                    body: Vec::new(),
                },
                Err(e) => failed(&e, false),
            }))
        }
        ("POST", ["v1", "instances", name, op @ ("start" | "stop" | "restart")]) => {
            let op: &'static str = match *op {
                "start" => "start",
                "stop" => "stop",
                _ => "restart",
            };
            let name = decoded(name)?;
            let name = if op == "start" {
                name
            } else {
                own(shared, name, op)?
            };
            let grace = grace(req)?;
            Ok(later(move || {
                let outcome = match op {
                    "start" => rt.start(&name),
                    "stop" => rt.stop(&name, grace),
                    _ => rt.restart(&name, grace),
                };
                match outcome {
                    Ok(info) => json_reply(200, &info),
                    Err(e) => failed(&e, false),
                }
            }))
        }
        ("GET", ["v1", "instances", name, "logs"]) => {
            let name = decoded(name)?;
            if rt.instance(&name).is_none() {
                return Err(failed(&Error::NoInstance { instance: name }, false));
            }
            let tail = match query(req, "tail")? {
                None => None,
                Some(t) => Some(t.parse::<usize>().map_err(|_| {
                    error(400, &format!("tail must be a number of lines, not {t:?}"))
                })?),
            };
            let since = query_secs(&req.query, "since")
                .map_err(|e| error(400, &e))?
                .map(|s| (s * 1000.0) as u64);
            let follow = match query(req, "follow")?.as_deref() {
                None | Some("false" | "0") => false,
                Some("true" | "1" | "") => true,
                Some(other) => {
                    return Err(error(
                        400,
                        &format!("follow must be true or false, not {other:?}"),
                    ));
                }
            };
            let lines = bindery::logs::logs().tail(&name, tail, since);
            if follow {
                return Ok(Answer::Follow {
                    instance: name,
                    lines,
                });
            }
            now(json_reply(200, &lines))
        }
        ("POST", ["v1", "instances", name, "bindings"]) => {
            let name = decoded(name)?;
            #[derive(serde::Deserialize)]
            #[serde(deny_unknown_fields)]
            struct Key {
                key: String,
            }
            let key: Key = serde_json::from_slice(&req.body)
                .map_err(|e| error(400, &format!("the body must be {{\"key\": \"...\"}}: {e}")))?;
            Ok(later(move || match rt.bind(&name, &key.key) {
                Ok(info) => json_reply(200, &info),
                Err(e) => failed(&e, false),
            }))
        }
        ("DELETE", ["v1", "instances", name, "bindings"]) => {
            let name = decoded(name)?;
            let key =
                query(req, "key")?.ok_or_else(|| error(400, "the key to unbind goes in ?key="))?;
            Ok(later(move || match rt.unbind(&name, &key) {
                Ok(info) => json_reply(200, &info),
                Err(e) => failed(&e, false),
            }))
        }
        (_, s) => match allowed(s) {
            Some(allow) => {
                let mut r = error(405, &format!("{method} {} is not served", req.path));
                r.headers.push(("Allow".into(), allow.into()));
                Err(r)
            }
            None => Err(error(404, &format!("no endpoint at {}", req.path))),
        },
    }
}

/// Refuses to stop, restart or remove the instance serving this request:
/// the reply could not be sent.
fn own(shared: &Shared, name: String, op: &str) -> Result<String, Reply> {
    if name == shared.instance {
        return Err(error(
            409,
            &format!(
                "instance {name:?} serves this request: it cannot {op} itself (stop the server, \
                 or use another management instance)"
            ),
        ));
    }
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_whole() {
        let t = b"abc123";
        assert!(authorized(t, Some("Bearer abc123")));
        assert!(authorized(t, Some("Bearer  abc123 ")));
        assert!(!authorized(t, Some("Bearer abc12")));
        assert!(!authorized(t, Some("Bearer abc1234")));
        assert!(!authorized(t, Some("Bearer abd123")));
        assert!(!authorized(t, Some("Basic abc123")));
        assert!(!authorized(t, Some("Bearer ")));
        assert!(!authorized(t, None));
    }
}
