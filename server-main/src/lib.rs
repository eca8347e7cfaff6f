//! The glue between a main file's module list and a running server: the
//! command line, configuration loading, start-up and shutdown.
//!
//! A Bindery server binary is a main file that lists its modules and calls
//! [`run`]:
//!
//! ```no_run
//! fn main() -> std::process::ExitCode {
//!     let linked = bindery::modules![terminal_http, dispatcher_fast, driver_memqueue, parser_octets];
//!     bindery_server::run(linked, bindery_server::DEFAULT_CONFIG)
//! }
//! ```
//!
//! This crate holds no module logic; it only names modules (in `main.rs`)
//! and drives the kernel.

pub mod certify;
pub mod ctl;
pub mod passwd;

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use bindery::{Config, Kernel, ModuleList};
use clap::Parser;
use clap::Subcommand;

/// The stock server's embedded default configuration.
pub const DEFAULT_CONFIG: &str = include_str!("default.toml");

/// The command line.
#[derive(Parser, Debug)]
#[command(
    name = "bindery",
    version,
    about = "Bindery: a message server whose every layer is a module"
)]
pub struct Cli {
    /// Configuration file (TOML); without it the embedded default is used.
    #[arg(long, short, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Check the configuration (build every instance), then exit.
    #[arg(long)]
    pub check_config: bool,
    /// List the modules this binary links, without starting.
    #[arg(long)]
    pub list_modules: bool,
    /// With --list-modules: print JSON (`registration`: the backend,
    /// `modules`: the list).
    #[arg(long = "json", requires = "list_modules")]
    pub list_json: bool,
    /// Reactor threads (0: one per core). Overrides `threads` in `[server]`.
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
    /// Listen address of the HTTP terminal. Overrides its `bind`.
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
    /// Where durable data lives; modules' relative paths resolve under it.
    /// Overrides `data_dir` in `[server]` (default: bindery-data).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Print the embedded default configuration and exit.
    #[arg(long)]
    pub print_default_config: bool,
    /// Something other than serving.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run each linked module's class conformance suite; exit non-zero on
    /// any failure.
    Certify {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Run each driver and parser instance under test in a host process
        /// (`process`), through the proxy, or in this process (`none`).
        #[arg(long, value_name = "MODE", default_value = "none")]
        isolation: certify::IsolationArg,
    },
    /// Serve an isolated instance for a server: started by the server
    /// itself, or, with --listen, by you for servers that connect with
    /// activation "none" (see docs/isolation.md).
    Host {
        /// Listen on this TCP address for servers (activation "none"); the
        /// data directory is this machine's (--data-dir).
        #[arg(long, value_name = "ADDR", requires = "secret_file")]
        listen: Option<String>,
        /// The shared secret a server must send before anything is served.
        #[arg(long, value_name = "FILE")]
        secret_file: Option<PathBuf>,
        /// The server's pid: a host whose parent is another exits at once.
        #[arg(long)]
        parent_pid: Option<u32>,
        /// The instance's name (for `ps` and log lines).
        #[arg(long)]
        instance: Option<String>,
    },
    /// Talk to a running server's management API (see `bindery ctl --help`).
    Ctl(ctl::Ctl),
    /// Add, change or delete a user in an `auth.file` password file.
    Passwd(passwd::Passwd),
}

/// Parses the command line and runs the server built from `linked`.
pub fn run(linked: ModuleList, default_config: &str) -> ExitCode {
    let cli = Cli::parse();
    // Certification starts and stops dozens of kernels: their start-up
    // lines would bury the table, so it logs only warnings unless asked.
    // A host's own start and stop lines repeat the server's: it says only
    // warnings unless RUST_LOG asks.
    let quiet = matches!(
        cli.command,
        Some(Command::Certify { .. } | Command::Host { .. })
    );
    init_logging(if quiet { "warn" } else { "info" });
    if let Some(Command::Passwd(p)) = &cli.command {
        return match passwd::run(p) {
            Ok(done) => {
                eprintln!("bindery passwd: {done}");
                ExitCode::SUCCESS
            }
            Err(why) => {
                eprintln!("bindery passwd: {why}");
                ExitCode::from(1)
            }
        };
    }
    if let Some(Command::Ctl(c)) = &cli.command {
        return match ctl::run(c) {
            Ok(out) => {
                print!("{out}");
                ExitCode::SUCCESS
            }
            Err(ctl::Failed::Refused(why)) => {
                eprintln!("bindery ctl: {why}");
                ExitCode::from(1)
            }
            Err(ctl::Failed::Unasked(why)) => {
                eprintln!("bindery ctl: {why}");
                ExitCode::from(2)
            }
        };
    }
    if let Some(Command::Host {
        listen,
        secret_file,
        parent_pid,
        instance,
    }) = &cli.command
    {
        let span = tracing::info_span!("host", instance = instance.as_deref().unwrap_or("?"));
        let _in = span.enter();
        let served = match (listen, secret_file) {
            (Some(addr), Some(file)) => std::fs::read_to_string(file)
                .map_err(|e| format!("--secret-file {}: {e}", file.display()))
                .and_then(|secret| {
                    let data = cli.data_dir.as_deref().unwrap_or("bindery-data".as_ref());
                    bindery_classes::isolation::host::listen(
                        linked,
                        addr,
                        secret.trim(),
                        &data.display().to_string(),
                    )
                }),
            _ => bindery_classes::isolation::host::serve(linked, *parent_pid),
        };
        return match served {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("bindery host: {e}");
                ExitCode::from(2)
            }
        };
    }
    if let Some(Command::Certify { json, isolation }) = cli.command {
        return match certify::certify_with(linked, json, isolation) {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => ExitCode::from(1),
            Err(e) => {
                eprintln!("bindery: error: {e:#}");
                ExitCode::from(2)
            }
        };
    }
    match run_cli(&cli, linked, default_config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bindery: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Log lines to stderr (colours only when stderr is a terminal), filtered
/// by `RUST_LOG` (default `info`); and into each instance's buffer for the
/// management API, from `info` up whatever `RUST_LOG` says.
fn init_logging(default_level: &str) {
    use std::io::IsTerminal as _;
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let stderr = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_filter(filter);
    let buffers = bindery::logs::layer().with_filter(tracing::level_filters::LevelFilter::INFO);
    let _ = tracing_subscriber::registry()
        .with(stderr)
        .with(buffers)
        .try_init();
}

/// Loads the configuration the command line asks for, with its overrides.
pub fn load_config(cli: &Cli, default_config: &str) -> anyhow::Result<Config> {
    let mut config = match &cli.config {
        Some(path) => Config::load(path)?,
        None => Config::parse("<embedded default>", default_config)?,
    };
    if let Some(dir) = &cli.data_dir {
        config.server.data_dir = Some(dir.clone());
    }
    if let Some(addr) = &cli.listen {
        let http: Vec<String> = config
            .instances
            .iter()
            .filter(|i| i.module == "terminal.http")
            .map(|i| i.name.clone())
            .collect();
        match http.as_slice() {
            [one] => {
                if let Some(i) = config.instance_mut(one) {
                    i.bind = vec![addr.clone()];
                }
            }
            [] => bail!("--listen: the configuration has no terminal.http instance"),
            _ => bail!(
                "--listen: the configuration has several terminal.http instances ({}); set their bind instead",
                http.join(", ")
            ),
        }
    }
    Ok(config)
}

/// `dir` as an absolute path, for saying where data lives.
fn shown(dir: &std::path::Path) -> String {
    std::path::absolute(dir)
        .unwrap_or_else(|_| dir.to_owned())
        .display()
        .to_string()
}

fn run_cli(cli: &Cli, linked: ModuleList, default_config: &str) -> anyhow::Result<()> {
    if cli.print_default_config {
        print!("{default_config}");
        return Ok(());
    }
    if cli.list_modules {
        let modules = bindery::linked_modules(linked)?;
        let mut out = std::io::stdout().lock();
        if cli.list_json {
            let list: Vec<_> = modules
                .iter()
                .map(|d| {
                    serde_json::json!({
                        "class": d.class, "name": d.name, "version": d.version,
                        "crate": d.krate, "description": d.description, "abi": d.abi,
                    })
                })
                .collect();
            let all = serde_json::json!({
                "registration": bindery::REGISTRATION, "modules": list,
            });
            writeln!(out, "{}", serde_json::to_string_pretty(&all)?)?;
        } else {
            for d in modules {
                writeln!(
                    out,
                    "{:<24} {:<8} {:<18} {}",
                    d.id(),
                    d.version,
                    d.krate,
                    d.description
                )?;
            }
            writeln!(out, "registration: {}", bindery::REGISTRATION)?;
        }
        return Ok(());
    }
    let config = load_config(cli, default_config)?;
    let mut kernel = match Kernel::build(linked, &config, cli.threads) {
        Ok(k) => k,
        // It names the file already: say it once.
        Err(e @ bindery::Error::Config(_)) => return Err(e.into()),
        Err(e) => {
            return Err(e)
                .with_context(|| format!("cannot build the server from {}", config.name()));
        }
    };
    if cli.check_config {
        println!(
            "{}: configuration OK ({} instances)",
            config.name(),
            config.instances.len()
        );
        return Ok(());
    }
    if let Some(path) = cli.config.clone() {
        let listen = cli.listen.clone();
        let data_dir = cli.data_dir.clone();
        kernel.on_reload(move || {
            let again = Cli {
                config: Some(path.clone()),
                listen: listen.clone(),
                data_dir: data_dir.clone(),
                ..Cli::parse_from(["bindery"])
            };
            load_config(&again, "").map_err(|e| format!("{e:#}"))
        });
    }
    raise_open_files();
    kernel.start()?;
    let mut listening = format!("bindery: data directory {}\n", shown(config.data_dir()));
    for (key, t) in bindery_classes::terminal::all(kernel.runtime()) {
        for addr in t.local_addrs() {
            listening += &format!(
                "bindery: {} listening on {addr} (bound as {key})\n",
                t.protocol()
            );
        }
        for addr in t.websocket_addrs() {
            listening += &format!(
                "bindery: {}-ws listening on {addr} (websocket of {key})\n",
                t.protocol()
            );
        }
    }
    // "ready" once signals are handled: a SIGHUP right after it reloads.
    kernel.run_until_signal(move || {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{listening}bindery: ready");
        let _ = out.flush();
    })?;
    tracing::info!("stopped");
    Ok(())
}

/// Raises the soft limit on open files to the hard one, so the server can
/// hold as many connections as the system lets it (a soft limit of 1024
/// is common and far below what one process may have); says so.
fn raise_open_files() {
    let mut l = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit fill and read a plain struct.
    let (got, soft, hard) = unsafe {
        let got = libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) == 0;
        (got, l.rlim_cur, l.rlim_max)
    };
    if !got || soft >= hard {
        return;
    }
    l.rlim_cur = hard;
    // SAFETY: as above.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &l) } == 0 {
        tracing::info!("open files: soft limit raised from {soft} to the hard limit {hard}");
    } else {
        tracing::warn!(
            "open files: the soft limit {soft} could not be raised to {hard}: {}",
            std::io::Error::last_os_error()
        );
    }
}
