//! `/healthz`, `/readyz` and `/metrics`: what anyone who reaches the port
//! may know. `/healthz` says the server answers (liveness); `/readyz` says
//! whether every instance can serve: `503` naming each instance that
//! failed or says it is degraded (a Redis it needs is down), else `200`.
//! Everything that lists or changes the server is in the management API
//! (`terminal.manage`), behind its token.

use bindery_classes::http::response;

use crate::Shared;

/// A built-in endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Builtin {
    Health,
    Ready,
    Metrics,
}

/// The built-in endpoint at `path`, if it is one.
pub(crate) fn route(path: &str) -> Option<Builtin> {
    match path {
        "/healthz" => Some(Builtin::Health),
        "/readyz" => Some(Builtin::Ready),
        "/metrics" => Some(Builtin::Metrics),
        _ => None,
    }
}

pub(crate) fn answer(builtin: Builtin, shared: &Shared, out: &mut Vec<u8>, close: bool) {
    match builtin {
        Builtin::Health => response::text(out, 200, &[], "ok", close),
        Builtin::Ready => {
            let mut not = String::new();
            let instances = shared.runtime.upgrade().map(|rt| rt.instances());
            if instances.is_none() {
                not.push_str("the server is stopping");
            }
            for i in instances.unwrap_or_default() {
                let why = match (&i.degraded, i.state) {
                    (Some(why), _) => why.clone(),
                    (None, bindery::State::Failed) => {
                        i.last_error.clone().unwrap_or_else(|| "failed".into())
                    }
                    _ => continue,
                };
                not.push_str(&format!("{}: {why}\n", i.name));
            }
            if not.is_empty() {
                response::text(out, 200, &[], "ready", close);
            } else {
                response::text(out, 503, &[], not.trim_end(), close);
            }
        }
        Builtin::Metrics => {
            let body = shared.metrics.render();
            response::write(
                out,
                200,
                &[],
                Some("text/plain; version=0.0.4"),
                body.as_bytes(),
                close,
            );
        }
    }
}
