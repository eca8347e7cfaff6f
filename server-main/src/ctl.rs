//! `bindery ctl`: the management API from the command line.
//!
//! Reads the token file itself, prints human tables (or the API's JSON with
//! `--json`), and exits 0 when the server did what was asked, 1 when it
//! refused (the error is printed), 2 when it could not be asked at all.
//!
//! Longer than most files here: every `bindery ctl` subcommand over one
//! small HTTP client; each is a few lines.

use std::fmt::Write as _;
use std::io::{BufRead, Read, Write as _};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};
use serde_json::Value;

/// Where the management API is and how to talk to it.
#[derive(Args, Debug)]
pub struct Ctl {
    /// The management API's base URL.
    #[arg(
        long,
        default_value = "http://127.0.0.1:8081",
        env = "BINDERY_MANAGE_URL"
    )]
    pub url: String,
    /// The file holding the bearer token (default: manage.token in the
    /// data directory).
    #[arg(long, env = "BINDERY_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// The server's data directory, where the token file is by default.
    #[arg(long, default_value = "bindery-data", env = "BINDERY_DATA_DIR")]
    pub data_dir: PathBuf,
    /// Talk over this Unix socket instead of `--url`.
    #[arg(long, env = "BINDERY_MANAGE_SOCKET")]
    pub unix_socket: Option<PathBuf>,
    /// Print the API's JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// What to do.
    #[command(subcommand)]
    pub op: Op,
}

/// What `bindery ctl` can do.
#[derive(Subcommand, Debug)]
pub enum Op {
    /// The server: version, target, cores, memory, uptime.
    Info,
    /// Every instance with its state.
    List,
    /// The linked modules.
    Modules,
    /// Every binding.
    Bindings,
    /// Start a stopped or failed instance.
    Start {
        /// The instance.
        name: String,
    },
    /// Stop an instance (it stays bound: its keys answer 503).
    Stop {
        /// The instance.
        name: String,
        /// Seconds it has to finish and close.
        #[arg(long, default_value_t = 5.0)]
        grace: f64,
    },
    /// Stop and start an instance.
    Restart {
        /// The instance.
        name: String,
        /// Seconds it has to finish and close.
        #[arg(long, default_value_t = 5.0)]
        grace: f64,
    },
    /// Stop an instance and forget it (its keys answer 404).
    Remove {
        /// The instance.
        name: String,
        /// Seconds it has to finish and close.
        #[arg(long, default_value_t = 5.0)]
        grace: f64,
    },
    /// Make, bind and start an instance.
    Create {
        /// The instance's name.
        name: String,
        /// Its module, `class.name`.
        #[arg(long)]
        module: String,
        /// A key to bind (repeat for more; none: the module's defaults).
        #[arg(long = "bind")]
        bind: Vec<String>,
        /// A TOML file with the instance's `config` table (its fields at
        /// the top level).
        #[arg(long)]
        config: Option<PathBuf>,
        /// `process`: run it in a host process of its own (drivers and
        /// parsers; see docs/isolation.md).
        #[arg(long, value_name = "none|process")]
        isolation: Option<String>,
        /// With `--isolation process`: `never`, `on-failure` or `always`.
        #[arg(long, value_name = "POLICY")]
        restart: Option<String>,
    },
    /// Bind one more key to an instance.
    Bind {
        /// The instance.
        name: String,
        /// The key.
        key: String,
    },
    /// Unbind one of an instance's keys.
    Unbind {
        /// The instance.
        name: String,
        /// The key.
        key: String,
    },
    /// The configuration in effect, as TOML.
    Config,
    /// Replace the whole configuration with FILE, applied as a difference;
    /// refused if the configuration changed since it was read.
    Reload {
        /// The new configuration.
        file: PathBuf,
    },
    /// An instance's recent log lines.
    Logs {
        /// The instance.
        name: String,
        /// Only the last N lines.
        #[arg(long)]
        tail: Option<usize>,
        /// Keep printing new lines until interrupted.
        #[arg(long, short)]
        follow: bool,
    },
}

/// Why `ctl` did not succeed: the server refused (exit 1), or it could not
/// be asked (exit 2).
#[derive(Debug)]
pub enum Failed {
    /// The server answered with an error status.
    Refused(String),
    /// No answer: no server, no token, a bad argument.
    Unasked(String),
}

fn enc(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// The body `create` sends: one `[instances.NAME]` table.
fn fragment(
    name: &str,
    module: &str,
    bind: &[String],
    config: Option<&PathBuf>,
    extra: &[(&str, &str)],
) -> Result<String, Failed> {
    let mut instance = toml::Table::new();
    instance.insert("module".into(), module.into());
    for (key, value) in extra {
        instance.insert((*key).into(), (*value).into());
    }
    if !bind.is_empty() {
        instance.insert(
            "bind".into(),
            toml::Value::Array(bind.iter().map(|k| k.as_str().into()).collect()),
        );
    }
    if let Some(path) = config {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Failed::Unasked(format!("{}: {e}", path.display())))?;
        let table: toml::Table = text
            .parse()
            .map_err(|e| Failed::Unasked(format!("{}: {e}", path.display())))?;
        instance.insert("config".into(), toml::Value::Table(table));
    }
    let mut instances = toml::Table::new();
    instances.insert(name.into(), toml::Value::Table(instance));
    let mut doc = toml::Table::new();
    doc.insert("instances".into(), toml::Value::Table(instances));
    toml::to_string(&doc).map_err(|e| Failed::Unasked(e.to_string()))
}

/// A response: status, version, and the body to read.
struct Answer {
    status: u16,
    etag: Option<String>,
    body: Box<dyn BufRead>,
}

impl Answer {
    fn text(mut self) -> String {
        let mut t = String::new();
        let _ = self.body.read_to_string(&mut t);
        t
    }

    /// The body, or what the server refused and why.
    fn ok(self) -> Result<Answer, Failed> {
        if self.status < 400 {
            return Ok(self);
        }
        let code = self.status;
        let text = self.text();
        let why = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_owned))
            .unwrap_or(text);
        Err(Failed::Refused(format!("{code}: {why}")))
    }
}

/// How `ctl` reaches the API.
struct Client<'a> {
    ctl: &'a Ctl,
    auth: String,
    agent: ureq::Agent,
}

impl Client<'_> {
    fn request(
        &self,
        method: &str,
        path: &str,
        if_match: Option<&str>,
        body: Option<&str>,
    ) -> Result<Answer, Failed> {
        if let Some(socket) = &self.ctl.unix_socket {
            return self.over_unix(socket, method, path, if_match, body);
        }
        let url = format!("{}{path}", self.ctl.url.trim_end_matches('/'));
        let mut req = self
            .agent
            .request(method, &url)
            .set("Authorization", &self.auth);
        if let Some(m) = if_match {
            req = req.set("If-Match", m);
        }
        let r = match body {
            Some(b) => req.send_string(b),
            None => req.call(),
        };
        let r = match r {
            Ok(r) | Err(ureq::Error::Status(_, r)) => r,
            Err(e) => return Err(Failed::Unasked(format!("{method} {url}: {e}"))),
        };
        Ok(Answer {
            status: r.status(),
            etag: r.header("ETag").map(str::to_owned),
            body: Box::new(std::io::BufReader::new(r.into_reader())),
        })
    }

    /// HTTP/1.1 over a Unix socket, one request per connection.
    fn over_unix(
        &self,
        socket: &std::path::Path,
        method: &str,
        path: &str,
        if_match: Option<&str>,
        body: Option<&str>,
    ) -> Result<Answer, Failed> {
        let unasked = |e: std::io::Error| {
            Failed::Unasked(format!("{method} {path} over {}: {e}", socket.display()))
        };
        let mut s = std::os::unix::net::UnixStream::connect(socket).map_err(unasked)?;
        let body = body.unwrap_or("");
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: {}\r\n\
             Content-Length: {}\r\nConnection: close\r\n",
            self.auth,
            body.len()
        );
        if let Some(m) = if_match {
            let _ = write!(head, "If-Match: {m}\r\n");
        }
        head.push_str("\r\n");
        s.write_all(head.as_bytes()).map_err(unasked)?;
        s.write_all(body.as_bytes()).map_err(unasked)?;
        let mut r = std::io::BufReader::new(s);
        let mut line = String::new();
        r.read_line(&mut line).map_err(unasked)?;
        let status = line
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| Failed::Unasked(format!("not an HTTP answer: {line:?}")))?;
        let (mut etag, mut chunked) = (None, false);
        loop {
            line.clear();
            if r.read_line(&mut line).map_err(unasked)? == 0 || line == "\r\n" {
                break;
            }
            let (k, v) = line.split_once(':').unwrap_or((&line, ""));
            if k.eq_ignore_ascii_case("etag") {
                etag = Some(v.trim().to_owned());
            } else if k.eq_ignore_ascii_case("transfer-encoding") {
                chunked = v.trim().eq_ignore_ascii_case("chunked");
            }
        }
        let body: Box<dyn BufRead> = if chunked {
            Box::new(std::io::BufReader::new(Dechunk {
                inner: r,
                left: 0,
                done: false,
            }))
        } else {
            Box::new(r)
        };
        Ok(Answer { status, etag, body })
    }
}

/// Reads a chunked body as it comes.
struct Dechunk<R> {
    inner: R,
    left: usize,
    done: bool,
}

impl<R: BufRead> Read for Dechunk<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.done {
            return Ok(0);
        }
        if self.left == 0 {
            let mut size = String::new();
            self.inner.read_line(&mut size)?;
            let hex = size.trim().split(';').next().unwrap_or("");
            self.left = usize::from_str_radix(hex, 16).unwrap_or(0);
            if self.left == 0 {
                self.done = true;
                return Ok(0);
            }
        }
        let want = buf.len().min(self.left);
        let n = self.inner.read(&mut buf[..want])?;
        self.left -= n;
        if self.left == 0 {
            let mut crlf = [0u8; 2];
            self.inner.read_exact(&mut crlf)?;
        }
        if n == 0 {
            self.done = true;
        }
        Ok(n)
    }
}

/// Runs one `ctl` command; what to print on success.
pub fn run(ctl: &Ctl) -> Result<String, Failed> {
    let token_file = ctl
        .token_file
        .clone()
        .unwrap_or_else(|| ctl.data_dir.join("manage.token"));
    let token = std::fs::read_to_string(&token_file).map_err(|e| {
        Failed::Unasked(format!(
            "cannot read the token file {}: {e} (--token-file, --data-dir or BINDERY_TOKEN_FILE)",
            token_file.display()
        ))
    })?;
    let client = Client {
        ctl,
        auth: format!("Bearer {}", token.trim()),
        agent: ureq::AgentBuilder::new()
            .timeout(Duration::from_secs(3700))
            .build(),
    };
    let mut if_match = None;
    if let Op::Reload { .. } = &ctl.op {
        // The version now: the server refuses the change if it moves.
        if_match = client.request("GET", "/v1/config", None, None)?.ok()?.etag;
    }
    let (method, path, body): (&str, String, Option<String>) = match &ctl.op {
        Op::Info => ("GET", "/v1/system".into(), None),
        Op::List => ("GET", "/v1/instances".into(), None),
        Op::Modules => ("GET", "/v1/modules".into(), None),
        Op::Bindings => ("GET", "/v1/bindings".into(), None),
        Op::Start { name } => ("POST", format!("/v1/instances/{}/start", enc(name)), None),
        Op::Stop { name, grace } => (
            "POST",
            format!("/v1/instances/{}/stop?grace_secs={grace}", enc(name)),
            None,
        ),
        Op::Restart { name, grace } => (
            "POST",
            format!("/v1/instances/{}/restart?grace_secs={grace}", enc(name)),
            None,
        ),
        Op::Remove { name, grace } => (
            "DELETE",
            format!("/v1/instances/{}?grace_secs={grace}", enc(name)),
            None,
        ),
        Op::Create {
            name,
            module,
            bind,
            config,
            isolation,
            restart,
        } => {
            let mut extra = Vec::new();
            if let Some(i) = isolation {
                extra.push(("isolation", i.as_str()));
            }
            if let Some(r) = restart {
                extra.push(("restart", r.as_str()));
            }
            (
                "POST",
                "/v1/instances".into(),
                Some(fragment(name, module, bind, config.as_ref(), &extra)?),
            )
        }
        Op::Bind { name, key } => (
            "POST",
            format!("/v1/instances/{}/bindings", enc(name)),
            Some(serde_json::json!({ "key": key }).to_string()),
        ),
        Op::Unbind { name, key } => (
            "DELETE",
            format!("/v1/instances/{}/bindings?key={}", enc(name), enc(key)),
            None,
        ),
        Op::Config => ("GET", "/v1/config".into(), None),
        Op::Reload { file } => (
            "PUT",
            "/v1/config".into(),
            Some(
                std::fs::read_to_string(file)
                    .map_err(|e| Failed::Unasked(format!("{}: {e}", file.display())))?,
            ),
        ),
        Op::Logs { name, tail, follow } => {
            let mut q = format!("/v1/instances/{}/logs?follow={follow}", enc(name));
            if let Some(n) = tail {
                let _ = write!(q, "&tail={n}");
            }
            ("GET", q, None)
        }
    };
    let answer = client
        .request(method, &path, if_match.as_deref(), body.as_deref())?
        .ok()?;
    if let Op::Logs { follow: true, .. } = ctl.op {
        // One line per log line, as they come, until interrupted.
        for line in answer.body.lines() {
            let Ok(line) = line else { break };
            if ctl.json {
                println!("{line}");
            } else {
                let v: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
                print!("{}", log_lines(std::slice::from_ref(&v)));
            }
        }
        return Ok(String::new());
    }
    let text = answer.text();
    if let Op::Config = ctl.op {
        // TOML, as the server has it.
        return Ok(text);
    }
    let value: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    if ctl.json {
        return Ok(if value.is_null() {
            String::new()
        } else {
            serde_json::to_string_pretty(&value).unwrap_or(text)
        });
    }
    Ok(human(&ctl.op, &value))
}

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        Value::Array(a) => a.iter().map(s).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    }
}

/// Rows under a header, columns padded.
fn table(header: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.len());
        }
    }
    let mut out = String::new();
    let line = |out: &mut String, cells: &[String]| {
        let row: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        let _ = writeln!(out, "{}", row.join("  ").trim_end());
    };
    line(
        &mut out,
        &header.iter().map(|h| h.to_string()).collect::<Vec<_>>(),
    );
    for r in &rows {
        line(&mut out, r);
    }
    out
}

fn instance_rows(list: &[Value]) -> String {
    table(
        &[
            "NAME",
            "MODULE",
            "STATE",
            "RESTARTS",
            "HOST",
            "BIND",
            "LAST ERROR / DEGRADED",
        ],
        list.iter()
            .map(|i| {
                // Where it runs: `-` in the server, `pid N` in a host.
                let host = match (i["isolation"].as_str(), i["pid"].as_u64()) {
                    (Some("process"), Some(pid)) => format!("pid {pid}"),
                    (Some("process"), None) => "none".into(),
                    _ => "-".into(),
                };
                // A running instance that says it cannot serve.
                let state = match i["degraded"].as_str() {
                    Some(_) => format!("{} (degraded)", s(&i["state"])),
                    None => s(&i["state"]),
                };
                let error = match i["degraded"].as_str() {
                    Some(why) => why.to_owned(),
                    None => s(&i["last_error"]),
                };
                vec![
                    s(&i["name"]),
                    s(&i["module"]),
                    state,
                    s(&i["restarts"]),
                    host,
                    s(&i["bind"]),
                    error,
                ]
            })
            .collect(),
    )
}

/// `time level target: message` per line.
fn log_lines(lines: &[Value]) -> String {
    let mut out = String::new();
    for l in lines {
        let ms = l["time_ms"].as_u64().unwrap_or(0);
        let _ = writeln!(
            out,
            "{}.{:03} {:<5} {}: {}",
            ms / 1000,
            ms % 1000,
            s(&l["level"]),
            s(&l["target"]),
            s(&l["message"])
        );
    }
    out
}

fn human(op: &Op, v: &Value) -> String {
    match op {
        Op::Info => {
            let mut out = String::new();
            if let Some(map) = v.as_object() {
                for (k, val) in map {
                    let _ = writeln!(out, "{k:<14} {}", s(val));
                }
            }
            out
        }
        Op::List => instance_rows(v.as_array().map_or(&[][..], Vec::as_slice)),
        Op::Modules => table(
            &["MODULE", "VERSION", "CRATE", "DESCRIPTION"],
            v.as_array()
                .map_or(&[][..], Vec::as_slice)
                .iter()
                .map(|m| {
                    vec![
                        format!("{}.{}", s(&m["class"]), s(&m["name"])),
                        s(&m["version"]),
                        s(&m["crate"]),
                        s(&m["description"]),
                    ]
                })
                .collect(),
        ),
        Op::Bindings => table(
            &["CLASS", "KEY", "INSTANCE", "MODULE"],
            v.as_array()
                .map_or(&[][..], Vec::as_slice)
                .iter()
                .map(|b| {
                    vec![
                        s(&b["class"]),
                        s(&b["key"]),
                        s(&b["instance"]),
                        s(&b["module"]),
                    ]
                })
                .collect(),
        ),
        Op::Remove { name, .. } => format!("removed {name}\n"),
        Op::Reload { .. } => {
            let mut out = String::new();
            for what in ["added", "changed", "removed", "unchanged"] {
                let _ = writeln!(out, "{what:<10} {}", s(&v[what]));
            }
            out
        }
        Op::Logs { .. } => log_lines(v.as_array().map_or(&[][..], Vec::as_slice)),
        _ => instance_rows(std::slice::from_ref(v)),
    }
}
