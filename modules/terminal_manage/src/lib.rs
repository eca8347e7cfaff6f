//! `terminal.manage`: the management API.
//!
//! A terminal of its own, on its own listener (loopback by default), that
//! lists and changes the running server: system information, the modules
//! linked, instances with their state, creating, starting, stopping,
//! restarting and removing instances, binding and unbinding keys, and the
//! metrics. Versioned under `/v1/`; the contract is the OpenAPI document
//! served at `/v1/openapi.json` (kept in `openapi.json` beside this crate; `docs/management-openapi.json` links to it).
//!
//! Every request needs `Authorization: Bearer <token>`. The token is read
//! from `token_file`; when that file does not exist, a random token is
//! made and written there (mode 0600) at first start. Its path is logged at
//! start; the token never is. A missing or wrong token gets 401 with no
//! detail; tokens are compared in constant time.
//!
//! Lifecycle operations block (a stop waits for connections to close), so
//! they run on a thread of their own and answer when done; the reactor
//! keeps serving meanwhile.
//!
//! ```toml
//! [instances.manage]
//! module = "terminal.manage"
//! bind = ["127.0.0.1:8081"]
//! [instances.manage.config]
//! token_file = "manage.token"     # under the server's data_dir unless absolute
//! max_body_bytes = 1048576
//! max_connections = 64
//! header_timeout_secs = 10        # a head still incomplete: 408, closed
//! idle_timeout_secs = 60          # nothing in progress: closed
//! unix_socket = "manage.sock"    # optional, under data_dir unless absolute; mode 0600
//! ```
//!
//! Over the Unix socket the same API is served, token and all (the file's
//! mode keeps other users out; the token keeps out processes of the same
//! user that should not manage the server).

mod api;
mod core;

use std::io::{self, Read as _, Write as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

use bindery::Runtime;
use bindery_classes::connection::{MakeCore, TlsSettings, Wake};
use bindery_classes::metrics::{Counter, Scope};
use bindery_classes::terminal::{self, Probe, Serving};
use serde::Deserialize;

bindery::module! {
    class: bindery_classes::class::Terminal,
    name: "manage",
    description: "the management API: instances, bindings, lifecycle, metrics; bearer token; OpenAPI",
    main: module_main,
    certify_config: "token_file = \"{scratch}/manage.token\"",
}

/// The OpenAPI document of the API this module serves.
pub const OPENAPI: &str = include_str!("../openapi.json");

/// The instance configuration.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The file holding the bearer token; made at first start if missing.
    /// Relative to the server's data directory (`[server] data_dir`)
    /// unless absolute.
    pub token_file: PathBuf,
    /// Largest request body (a configuration) accepted.
    pub max_body_bytes: usize,
    /// Open connections at most.
    pub max_connections: u64,
    /// Open connections one client address may have (0: no limit);
    /// more are refused at accept and counted
    /// (`bindery_connections_refused_per_address_total`).
    pub max_connections_per_address: u64,
    /// TLS on this instance's listeners (`cert`, `key`, optional
    /// `client_ca` for mutual TLS); none: plaintext.
    pub tls: Option<TlsSettings>,
    /// A request head not complete this long after its first byte closes
    /// the connection (408).
    pub header_timeout_secs: u64,
    /// A connection with nothing in progress for this long is closed.
    pub idle_timeout_secs: u64,
    /// Also listen on this Unix socket (mode 0600; removed when the
    /// instance stops). Off by default.
    pub unix_socket: Option<PathBuf>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            token_file: PathBuf::from("manage.token"),
            max_body_bytes: 1024 * 1024,
            max_connections: 64,
            max_connections_per_address: 0,
            tls: None,
            header_timeout_secs: 10,
            idle_timeout_secs: 60,
            unix_socket: None,
        }
    }
}

/// When this process first made a management instance: the server's
/// uptime is counted from it.
static STARTED: OnceLock<SystemTime> = OnceLock::new();

fn module_main(
    reg: &mut bindery::Registrar<'_, bindery_classes::class::Terminal>,
) -> Result<(), bindery::BoxError> {
    terminal::serve(reg, |cx| {
        let mut config: Config = cx.config().parse()?;
        config.token_file = cx.resolve(&config.token_file);
        config.unix_socket = config.unix_socket.map(|p| cx.resolve(&p));
        STARTED.get_or_init(SystemTime::now);
        let stats = Arc::new(Stats::new(&Scope::of(cx.runtime(), cx.name())));
        let instance = cx.name().to_owned();
        Ok(Serving {
            protocol: "manage",
            max_connections: config.max_connections,
            max_connections_per_address: config.max_connections_per_address,
            probe: Some(Arc::new(ManageProbe)),
            unix_socket: config.unix_socket.clone(),
            tls: config.tls.as_ref().map(|t| t.load(cx)).transpose()?,
            websocket: None,
            start: Box::new(move |rt| {
                let file = &config.token_file;
                let token =
                    token(file).map_err(|e| format!("token file {}: {e}", file.display()))?;
                tracing::info!(
                    instance,
                    token_file = %file.display(),
                    "the management API takes the bearer token in this file"
                );
                Ok(ManageCores(Arc::new(Shared {
                    instance,
                    config,
                    runtime: rt.clone(),
                    token: token.into_bytes().into_boxed_slice(),
                    stats,
                })))
            }),
        })
    });
    Ok(())
}

/// Counters.
#[derive(Debug)]
pub(crate) struct Stats {
    pub(crate) requests: Counter,
    pub(crate) unauthorized: Counter,
}

impl Stats {
    fn new(scope: &Scope) -> Stats {
        Stats {
            requests: scope.counter(
                "bindery_manage_requests_total",
                "Management API requests read.",
            ),
            unauthorized: scope.counter(
                "bindery_manage_unauthorized_total",
                "Management API requests refused for a missing or wrong token.",
            ),
        }
    }
}

/// What every connection of an instance shares.
pub(crate) struct Shared {
    pub(crate) instance: String,
    pub(crate) config: Config,
    pub(crate) runtime: Arc<Runtime>,
    pub(crate) token: Box<[u8]>,
    pub(crate) stats: Arc<Stats>,
}

/// Reads the token in `path`, or makes one there (mode 0600) if the file
/// does not exist.
fn token(path: &Path) -> io::Result<String> {
    match std::fs::read_to_string(path) {
        Ok(t) if t.trim().is_empty() => Err(io::Error::other("the file is empty")),
        Ok(t) => Ok(t.trim().to_owned()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)?;
            }
            let mut random = [0u8; 32];
            std::fs::File::open("/dev/urandom")?.read_exact(&mut random)?;
            let token: String = random.iter().map(|b| format!("{b:02x}")).collect();
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create_new(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt;
                options.mode(0o600);
            }
            let mut file = options.open(path)?;
            file.write_all(token.as_bytes())?;
            file.write_all(b"\n")?;
            file.sync_all()?;
            tracing::info!(token_file = %path.display(), "made a management token");
            Ok(token)
        }
        Err(e) => Err(e),
    }
}

/// Makes the protocol core of each connection (TCP or Unix socket).
struct ManageCores(Arc<Shared>);

impl MakeCore for ManageCores {
    type Core = core::Core;
    fn core(&self, _peer: String, _: Wake) -> core::Core {
        core::Core::new(self.0.clone(), std::time::Instant::now())
    }
}

/// Certification hooks: a request without the token (401 is a whole,
/// valid exchange), bytes that are not HTTP, a head never finished.
struct ManageProbe;

impl Probe for ManageProbe {
    fn exchange(&self, addr: SocketAddr) -> Result<(), String> {
        let request = b"GET /v1/system HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n";
        let out = terminal::talk(addr, request, None)?;
        if out.starts_with(b"HTTP/1.1 401 ") {
            Ok(())
        } else {
            Err(format!(
                "answered {:?}, want 401 without a token",
                String::from_utf8_lossy(&out[..out.len().min(64)])
            ))
        }
    }

    fn malformed(&self) -> Vec<u8> {
        b"\x16\x03\x01\x02\x00 this is not HTTP\r\n\r\n".to_vec()
    }

    fn partial(&self) -> Vec<u8> {
        b"GET /v1/system HTTP/1.1\r\nHost: probe\r\n".to_vec()
    }
}
