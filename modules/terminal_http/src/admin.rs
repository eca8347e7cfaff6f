//! `/healthz` and `/metrics`: what anyone who reaches the port may know.
//! Everything that lists or changes the server is in the management API
//! (`terminal.manage`), behind its token.

use bindery_classes::http::response;

use crate::Shared;

/// A built-in endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Builtin {
    Health,
    Metrics,
}

/// The built-in endpoint at `path`, if it is one.
pub(crate) fn route(path: &str) -> Option<Builtin> {
    match path {
        "/healthz" => Some(Builtin::Health),
        "/metrics" => Some(Builtin::Metrics),
        _ => None,
    }
}

pub(crate) fn answer(builtin: Builtin, shared: &Shared, out: &mut Vec<u8>, close: bool) {
    match builtin {
        Builtin::Health => response::text(out, 200, &[], "ok", close),
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
