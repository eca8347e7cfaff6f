//! Embedding Bindery in a program: a server made in a few lines, and a
//! client handle whose calls return values — blocking, or as futures and
//! streams any executor can poll (no async runtime is pulled in).
//!
//! ```no_run
//! use bindery_classes::embed::Server;
//!
//! # fn main() -> Result<(), bindery_classes::embed::ClientError> {
//! # let linked = bindery::ModuleList::new(&[]);
//! // linked = bindery::modules![dispatcher_fast, driver_memqueue, parser_octets]
//! let server = Server::builder(linked)
//!     .config_str(r#"
//!         [instances.d]
//!         module = "dispatcher.fast"
//!         [instances.q]
//!         module = "driver.memqueue"
//!         bind = ["/jobs/"]
//!         [instances.any]
//!         module = "parser.octets"
//!     "#)
//!     .start()?;
//! let client = server.client();
//! client.publish("/jobs/build", "text/plain", "compile the kernel")?;
//! let mut jobs = client.consume("/jobs/build", 8)?;
//! let job = jobs.recv()?;
//! jobs.ack(&job)?;
//! # Ok(())
//! # }
//! ```
//!
//! With an executor, the same calls have `_async` forms (futures), and a
//! [`Consumption`] is a `futures_core::Stream` of messages.
//!
//! The level below — the kernel, the dispatcher found by name, completions
//! and consumers made by hand — is still there (`server-main/examples/
//! embed.rs`); this module is written on it.

mod consume;
mod pending;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bindery::{Config, FailureKind, Introspection, Kernel, ModuleList, Runtime};

pub use consume::Consumption;
pub use pending::Pending;

use crate::driver::{Receipt, SubscribeOptions};
use crate::{Message, dispatcher};

/// What went wrong, for an embedding program.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientError {
    /// The server could not be made or started: the configuration, a
    /// module, a port in use (the reason says which).
    Start(String),
    /// A call failed: its kind (`NotFound`, `Rejected`, `Full`, ...) and
    /// the reason the module gave.
    Failed {
        /// The kind of failure.
        kind: FailureKind,
        /// Why, as the module said.
        reason: String,
    },
    /// The subscription ended on the driver's side, and why.
    Closed(String),
    /// Nothing came within the time allowed.
    TimedOut,
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientError::Start(why) => write!(f, "the embedded server did not start: {why}"),
            ClientError::Failed { kind, reason } => write!(f, "{kind:?}: {reason}"),
            ClientError::Closed(why) => write!(f, "the subscription ended: {why}"),
            ClientError::TimedOut => f.write_str("timed out"),
        }
    }
}

impl std::error::Error for ClientError {}

impl From<bindery::Failure> for ClientError {
    fn from(f: bindery::Failure) -> ClientError {
        ClientError::Failed {
            kind: f.kind,
            reason: f.reason.into_owned(),
        }
    }
}

enum Source {
    Text(String),
    File(PathBuf),
    Made(Config),
}

/// Makes a running server: [`Server::builder`].
pub struct Builder {
    modules: ModuleList,
    source: Source,
    threads: Option<usize>,
    dispatcher: String,
}

impl std::fmt::Debug for Builder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Builder")
            .field("threads", &self.threads)
            .finish()
    }
}

impl Builder {
    /// The configuration, as TOML text (a server with terminals listens on
    /// their keys; one without listens on nothing).
    pub fn config_str(mut self, text: impl Into<String>) -> Builder {
        self.source = Source::Text(text.into());
        self
    }

    /// The configuration, from a TOML file.
    pub fn config_file(mut self, path: impl Into<PathBuf>) -> Builder {
        self.source = Source::File(path.into());
        self
    }

    /// The configuration, built in code.
    pub fn config(mut self, config: Config) -> Builder {
        self.source = Source::Made(config);
        self
    }

    /// Reactor threads (default: 1).
    pub fn threads(mut self, n: usize) -> Builder {
        self.threads = Some(n);
        self
    }

    /// The dispatcher the client publishes through (default `default`).
    pub fn dispatcher(mut self, name: impl Into<String>) -> Builder {
        self.dispatcher = name.into();
        self
    }

    /// Builds and starts the server.
    pub fn start(self) -> Result<Server, ClientError> {
        let start = |e: String| ClientError::Start(e);
        let config = match self.source {
            Source::Text(t) => Config::parse("embedded", &t).map_err(|e| start(e.to_string()))?,
            Source::File(p) => Config::load(&p).map_err(|e| start(e.to_string()))?,
            Source::Made(c) => c,
        };
        let mut kernel = Kernel::build(self.modules, &config, Some(self.threads.unwrap_or(1)))
            .map_err(|e| start(e.report()))?;
        kernel.start().map_err(|e| start(e.report()))?;
        if dispatcher::lookup(kernel.runtime(), &self.dispatcher).is_none() {
            kernel.shutdown();
            return Err(start(format!(
                "no dispatcher is bound to {:?}: add one (module = \"dispatcher.fast\")",
                self.dispatcher
            )));
        }
        let client = Client {
            runtime: kernel.runtime().clone(),
            dispatcher: self.dispatcher.into(),
        };
        Ok(Server {
            kernel: Some(kernel),
            client,
        })
    }
}

/// A running embedded server; shuts down when dropped (or at
/// [`Server::shutdown`]).
pub struct Server {
    kernel: Option<Kernel>,
    client: Client,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Server")
    }
}

impl Server {
    /// A builder for a server of the modules in `modules`
    /// (`bindery::modules![...]`).
    pub fn builder(modules: ModuleList) -> Builder {
        Builder {
            modules,
            source: Source::Text(String::new()),
            threads: None,
            dispatcher: "default".into(),
        }
    }

    /// A client of this server: cheap to clone, usable from any thread.
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// The kernel underneath (the level below this API).
    pub fn kernel(&self) -> &Kernel {
        self.kernel.as_ref().expect("present until dropped")
    }

    /// Stops every instance and the reactors.
    pub fn shutdown(mut self) {
        if let Some(mut k) = self.kernel.take() {
            k.shutdown();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut k) = self.kernel.take() {
            k.shutdown();
        }
    }
}

/// Publishes, consumes and looks at one embedded server. `Clone`, `Send`
/// and `Sync`; every call returns at once or blocks only its caller (the
/// `_async` forms return futures).
#[derive(Clone)]
pub struct Client {
    runtime: Arc<Runtime>,
    dispatcher: Arc<str>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("dispatcher", &self.dispatcher)
            .finish()
    }
}

impl Client {
    fn dispatcher(&self) -> Result<dispatcher::DispatcherHandle, ClientError> {
        dispatcher::lookup(&self.runtime, &self.dispatcher).ok_or_else(|| ClientError::Failed {
            kind: FailureKind::NotFound,
            reason: format!("no dispatcher is bound to {:?}", self.dispatcher),
        })
    }

    /// Publishes `body` to `path` as `content_type`; returns the driver's
    /// receipt once it has the message (validated by the parser bound to
    /// the type).
    pub fn publish(
        &self,
        path: &str,
        content_type: &str,
        body: impl Into<bytes::Bytes>,
    ) -> Result<Receipt, ClientError> {
        self.publish_async(path, content_type, body).wait()
    }

    /// [`Client::publish`], as a future.
    pub fn publish_async(
        &self,
        path: &str,
        content_type: &str,
        body: impl Into<bytes::Bytes>,
    ) -> Pending<Receipt> {
        self.send_async(Message::new(path, content_type, body))
    }

    /// Publishes a message made by the caller (headers, say).
    pub fn send_async(&self, message: Message) -> Pending<Receipt> {
        let (pending, done) = Pending::new();
        match self.dispatcher() {
            Ok(d) => d.publish(message, done),
            Err(ClientError::Failed { kind, reason }) => {
                done.fail(bindery::Failure::new(kind, reason))
            }
            Err(_) => done.fail(bindery::Failure::new(
                FailureKind::NotFound,
                "no dispatcher",
            )),
        }
        pending
    }

    /// Takes messages from the queue at `path`, at most `credit` unacked
    /// at once, each leased for 30 s (see [`Client::consume_with`]).
    pub fn consume(&self, path: &str, credit: u32) -> Result<Consumption, ClientError> {
        self.consume_with(
            path,
            SubscribeOptions {
                credit: credit.max(1),
                lease: Duration::from_secs(30),
            },
        )
    }

    /// [`Client::consume`] with a lease of one's own.
    pub fn consume_with(
        &self,
        path: &str,
        options: SubscribeOptions,
    ) -> Result<Consumption, ClientError> {
        self.attach(path, options, true)
    }

    /// Receives what is published to the topic `filter` from now on
    /// (`/topics/sensors/+/temp`, `/topics/sensors/#`: MQTT's wildcards).
    pub fn subscribe(&self, filter: &str) -> Result<Consumption, ClientError> {
        let options = SubscribeOptions {
            credit: 256,
            lease: Duration::from_secs(30),
        };
        self.attach(filter, options, false)
    }

    fn attach(
        &self,
        path: &str,
        options: SubscribeOptions,
        queue: bool,
    ) -> Result<Consumption, ClientError> {
        let driver = self.dispatcher()?.driver(path)?;
        let is_queue = driver.info().queue;
        if queue != is_queue {
            let (want, got) = if queue {
                ("a queue", "a topic")
            } else {
                ("a topic", "a queue")
            };
            return Err(ClientError::Failed {
                kind: FailureKind::Unsupported,
                reason: format!(
                    "{path} is {got}, not {want}: use {}",
                    if is_queue { "consume" } else { "subscribe" }
                ),
            });
        }
        let inbox = Arc::new(consume::Inbox::default());
        let consumer = inbox.consumer(format!("embedded client on {path}"));
        let sub = driver.subscribe(path, consumer, options)?;
        Ok(Consumption {
            inbox,
            sub,
            driver,
            path: path.to_owned(),
            queue,
        })
    }

    /// Modules, instances and bindings, as data.
    pub fn introspect(&self) -> Introspection {
        self.runtime.introspect()
    }

    /// The configuration the server runs now, as TOML.
    pub fn effective_config(&self) -> String {
        self.runtime.effective_config()
    }

    /// The runtime underneath (the level below this API).
    pub fn runtime(&self) -> &Arc<Runtime> {
        &self.runtime
    }
}
