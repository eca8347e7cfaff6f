//! The route contract.
//!
//! The harness is the route module's descriptor. Each case starts a kernel
//! with one instance of it (its `certify_config`), bound to
//! `POST /conformance/`, and calls it as the HTTP terminal does: a
//! [`RouteRequest`], a [`Responder`] whose parts come back on a channel,
//! and a [`Window`] the case drains (or not) and closes (a client that
//! leaves). The module's certification configuration should make it echo
//! the request body (`route.exec` runs `cat`); the cases hold for any
//! answer, but only an echo shows the window at work.

use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bindery::routes::Captures;
use bindery::{Config, Kernel, ModuleDescriptor, Note, Registry};
use bindery_classes::connection::Wake;
use bindery_classes::route::{Part, Responder, RouteHandle, RouteRequest, Window};
use bytes::Bytes;

use crate::{Case, ensure};

/// What a route case gets: the module under test.
pub type Harness = &'static ModuleDescriptor;

/// The rules of a route.
pub const ROUTE: &[Case<Harness>] = &[
    Case {
        name: "answers_every_request_exactly_once",
        run: answers_every_request_exactly_once,
    },
    Case {
        name: "answers_many_requests_at_once",
        run: answers_many_requests_at_once,
    },
    Case {
        name: "answers_hostile_requests_without_panicking",
        run: answers_hostile_requests_without_panicking,
    },
    Case {
        name: "produces_no_more_than_the_window_allows",
        run: produces_no_more_than_the_window_allows,
    },
    Case {
        name: "lets_go_of_a_request_whose_client_left",
        run: lets_go_of_a_request_whose_client_left,
    },
];

/// Runs the route suite as `#[test]`s, one per case:
///
/// ```text
/// bindery_conformance::route_suite!(&my_route::MODULE);
/// ```
#[macro_export]
macro_rules! route_suite {
    ($module:expr) => {
        mod conformance_route {
            #[allow(unused_imports)]
            use super::*;
            $crate::__suite!(
                $crate::route::ROUTE,
                $module,
                [
                    answers_every_request_exactly_once,
                    answers_many_requests_at_once,
                    answers_hostile_requests_without_panicking,
                    produces_no_more_than_the_window_allows,
                    lets_go_of_a_request_whose_client_left,
                ]
            );
        }
    };
}

/// How long a route may take to answer a case's request.
const PATIENCE: Duration = Duration::from_secs(10);

struct Running {
    kernel: Kernel,
    route: RouteHandle,
    wake: Wake,
    parts: mpsc::Receiver<Note>,
    next: u64,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.kernel.shutdown();
    }
}

fn start(module: &Harness) -> Result<Running, String> {
    let module: &'static ModuleDescriptor = module;
    let registry = Registry::of(&[module]).map_err(|e| e.to_string())?;
    let scratch = std::env::temp_dir().join(format!("bindery-route-case-{}", std::process::id()));
    let section = module
        .certify_config
        .replace("{scratch}", &scratch.display().to_string());
    let text = format!(
        "[instances.under-test]\nmodule = \"{}\"\nbind = [\"POST /conformance/\"]\n\
         [instances.under-test.config]\n{section}\n",
        module.id()
    );
    let config = Config::parse("conformance", &text).map_err(|e| e.to_string())?;
    let mut kernel = Kernel::build_with(registry, &config, Some(2)).map_err(|e| e.to_string())?;
    kernel.start().map_err(|e| format!("start: {e}"))?;
    let route = kernel
        .runtime()
        .table(bindery_classes::class::ROUTE)
        .and_then(|t| {
            t.index()
                .route("POST", "/conformance/x")
                .map(|(b, _)| b.handle::<RouteHandle>().cloned())
        })
        .flatten()
        .ok_or("the instance is not in the route table at POST /conformance/")?;
    let (wake, parts) = Wake::channel();
    Ok(Running {
        kernel,
        route,
        wake,
        parts,
        next: 0,
    })
}

impl Running {
    /// Sends a request with `body`; returns its tag and window.
    fn send(&mut self, body: Bytes, window: usize) -> (u64, Arc<Window>) {
        self.send_request(
            RouteRequest {
                method: "POST".into(),
                path: "/conformance/x".into(),
                captures: Captures(vec![("rest".into(), "x".into())]),
                query: String::new(),
                headers: vec![("Content-Type".into(), "text/plain".into())],
                body,
                peer: "127.0.0.1:1".into(),
            },
            window,
        )
    }

    fn send_request(&mut self, request: RouteRequest, window: usize) -> (u64, Arc<Window>) {
        self.next += 1;
        let w = Window::new(window);
        self.route.handle(
            request,
            Responder::new(self.wake.clone(), self.next, w.clone()),
        );
        (self.next, w)
    }

    /// The next part of any request, by tag.
    fn part(&self, until: Instant) -> Result<(u64, Part), String> {
        let left = until.saturating_duration_since(Instant::now());
        let note = self
            .parts
            .recv_timeout(left)
            .map_err(|_| "no answer came in time".to_owned())?;
        let tag = note.tag;
        let part = note
            .take::<Part>()
            .map_err(|_| "a note that is not a response part".to_owned())?;
        Ok((tag, part))
    }
}

/// Collects the answers to requests `1..=n` (window drained as parts
/// arrive): per tag, head status (or failure status) and body bytes.
fn answers(run: &Running, windows: &[Arc<Window>]) -> Result<Vec<(u16, usize)>, String> {
    let until = Instant::now() + PATIENCE;
    let first = run.next + 1 - windows.len() as u64;
    let mut out = vec![(0u16, 0usize); windows.len()];
    let mut done = vec![false; windows.len()];
    while done.iter().any(|d| !d) {
        let (tag, part) = run.part(until)?;
        let i = tag
            .checked_sub(first)
            .map(|i| i as usize)
            .filter(|&i| i < windows.len())
            .ok_or_else(|| format!("a part for request {tag}, which was not sent"))?;
        ensure!(
            !done[i],
            "request {tag} got {part:?} after its answer ended"
        );
        match part {
            Part::Head { status, .. } => {
                ensure!(out[i].0 == 0, "request {tag} got a second head");
                out[i].0 = status;
            }
            Part::Body(b) => {
                ensure!(out[i].0 != 0, "request {tag} got body bytes before a head");
                out[i].1 += b.len();
                windows[i].written(b.len());
            }
            Part::End => done[i] = true,
            Part::Fail { status, .. } => {
                if out[i].0 == 0 {
                    out[i].0 = status;
                }
                done[i] = true;
            }
        }
    }
    Ok(out)
}

fn answers_every_request_exactly_once(m: &Harness) -> Result<(), String> {
    let mut run = start(m)?;
    let mut windows = Vec::new();
    for i in 0..10 {
        let body = Bytes::from(format!("request {i}\n").repeat(i * 100));
        windows.push(run.send(body, 1 << 20).1);
    }
    let got = answers(&run, &windows)?;
    for (i, (status, _)) in got.iter().enumerate() {
        ensure!(
            (100..600).contains(status),
            "request {i} answered with status {status}"
        );
    }
    // Nothing more arrives for any of them.
    match run.parts.recv_timeout(Duration::from_millis(300)) {
        Ok(note) => Err(format!(
            "an extra part after every answer ended (request {})",
            note.tag
        )),
        Err(_) => Ok(()),
    }
}

fn answers_many_requests_at_once(m: &Harness) -> Result<(), String> {
    let mut run = start(m)?;
    let windows: Vec<_> = (0..64)
        .map(|i| run.send(Bytes::from(format!("{i}\n")), 1 << 20).1)
        .collect();
    let got = answers(&run, &windows)?;
    ensure!(got.len() == 64, "answered {} of 64", got.len());
    Ok(())
}

fn answers_hostile_requests_without_panicking(m: &Harness) -> Result<(), String> {
    let mut run = start(m)?;
    let long = "x".repeat(64 * 1024);
    let hostile = [
        ("rest", "..%2F..%2Fetc%2Fpasswd"),
        ("rest", "a%00b"),
        ("rest", "%zz"),
        ("rest", "$(id);`id`"),
        ("rest", long.as_str()),
        ("rest", ""),
    ];
    let mut windows = Vec::new();
    for (name, value) in hostile {
        let request = RouteRequest {
            method: "POST".into(),
            path: format!("/conformance/{value}"),
            captures: Captures(vec![(name.into(), value.into())]),
            query: format!("q={value}&%ff=%00"),
            headers: vec![("X-Evil".into(), "\u{0}\u{7f}".into())],
            body: Bytes::from_static(b"\x00\xff\xfe"),
            peer: "127.0.0.1:1".into(),
        };
        windows.push(run.send_request(request, 1 << 20).1);
    }
    answers(&run, &windows).map(|_| ())
}

fn produces_no_more_than_the_window_allows(m: &Harness) -> Result<(), String> {
    const WINDOW: usize = 64 * 1024;
    const BODY: usize = 4 << 20;
    let mut run = start(m)?;
    let (_, window) = run.send(Bytes::from(vec![b'w'; BODY]), WINDOW);
    // Not drained: what arrives must stop near the window.
    let settle = Instant::now() + Duration::from_secs(2);
    let mut got = 0usize;
    let mut largest = 0usize;
    let mut ended = false;
    while let Ok((_, part)) = run.part(settle) {
        match part {
            Part::Body(b) => {
                got += b.len();
                largest = largest.max(b.len());
            }
            Part::End | Part::Fail { .. } => {
                ended = true;
                break;
            }
            Part::Head { .. } => {}
        }
    }
    if ended && got < WINDOW {
        return Ok(()); // a short answer: nothing to pace
    }
    ensure!(
        got <= WINDOW + largest.max(64 * 1024),
        "{got} body bytes arrived while the client read none (window {WINDOW})"
    );
    // Drained, the rest follows.
    window.written(got);
    let until = Instant::now() + PATIENCE;
    while !ended {
        match run.part(until)?.1 {
            Part::Body(b) => {
                got += b.len();
                window.written(b.len());
            }
            Part::End | Part::Fail { .. } => ended = true,
            Part::Head { .. } => {}
        }
    }
    ensure!(got >= WINDOW, "only {got} bytes after the window opened");
    Ok(())
}

fn lets_go_of_a_request_whose_client_left(m: &Harness) -> Result<(), String> {
    let mut run = start(m)?;
    let (tag, window) = run.send(Bytes::from(vec![b'g'; 4 << 20]), 16 * 1024);
    window.close();
    // The route must end (or drop) its responder: a last part comes.
    let until = Instant::now() + PATIENCE;
    loop {
        let (t, part) = run.part(until).map_err(|_| {
            "the route still holds the request 10 s after its client left".to_owned()
        })?;
        if t == tag && matches!(part, Part::End | Part::Fail { .. }) {
            return Ok(());
        }
    }
}
