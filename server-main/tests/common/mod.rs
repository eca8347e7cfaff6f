//! Starting and stopping a real `bindery` process for tests.

#![allow(dead_code, unreachable_pub)]

pub mod amqp;
pub mod children;
pub mod conn;
pub mod mqtt;
pub mod ws;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// The default configuration's MQTT `config` line (persistence on), with
/// its WebSocket listener moved as [`config`] moves it.
pub const MQTT_PERSISTENCE: &str =
    "config = { persistence = \"/durable/mqtt/\", websocket = { bind = [\"127.0.0.8:0\"] } }";

/// The default configuration on port 0, with `extra` TOML appended.
pub fn config(extra: &str) -> String {
    let base = bindery_server::DEFAULT_CONFIG
        .replace("127.0.0.1:8080", "127.0.0.1:0")
        // Another loopback address: two terminals on "127.0.0.1:0" would be
        // one key in the terminal table.
        .replace("127.0.0.1:1883", "127.0.0.2:0")
        .replace("127.0.0.1:8081", "127.0.0.3:0")
        .replace("127.0.0.1:5672", "127.0.0.7:0")
        .replace("127.0.0.1:8083", "127.0.0.8:0");
    // A test that configures the MQTT terminal itself says everything
    // (TOML takes one `config` per instance): without persistence unless
    // it asks.
    let base = if extra.contains("[instances.mqtt.config]") {
        base.replace(MQTT_PERSISTENCE, "")
    } else {
        base
    };
    format!("{base}\n{extra}")
}

/// A running server; killed when dropped.
pub struct Server {
    child: Option<Child>,
    pub addr: SocketAddr,
    /// The MQTT terminal's address, when the configuration has one.
    pub mqtt: Option<SocketAddr>,
    /// The management API's address, when the configuration has one.
    pub manage: Option<SocketAddr>,
    /// The MQTT terminal's WebSocket listener, when it has one.
    pub mqtt_ws: Option<SocketAddr>,
    /// The management token file (under the data directory).
    pub token_file: std::path::PathBuf,
    /// The configuration file the server was started with.
    pub config_path: std::path::PathBuf,
    /// Where the server said its data lives (`bindery: data directory ...`).
    pub data_dir: Option<std::path::PathBuf>,
    /// Every terminal's address, with the key it is bound as.
    pub listening: Vec<(String, SocketAddr)>,
    _dir: Option<TempDir>,
}

pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    pub fn new() -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "bindery-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Server {
    /// Starts `bindery --config <file with text>` and waits for it to be ready.
    pub fn start(config_text: &str) -> Server {
        Self::start_with(config_text, &["--threads", "2"])
    }

    pub fn start_with(config_text: &str, args: &[&str]) -> Server {
        let dir = TempDir::new();
        let mut s = Self::start_at(&dir.0, config_text, args);
        s._dir = Some(dir);
        s
    }

    /// Starts with `dir` holding the configuration and the data; the
    /// directory outlives the server (for restarts).
    pub fn start_at(dir: &std::path::Path, config_text: &str, args: &[&str]) -> Server {
        Self::start_program(env!("CARGO_BIN_EXE_bindery"), dir, config_text, args)
    }

    /// [`Server::start_at`] with another server binary (an example's).
    pub fn start_program(
        program: impl AsRef<std::ffi::OsStr>,
        dir: &std::path::Path,
        config_text: &str,
        args: &[&str],
    ) -> Server {
        let path = dir.join("bindery.toml");
        // Durable drivers keep their data in this test's own directory.
        let data = dir.join("data");
        std::fs::write(
            &path,
            config_text.replace("bindery-data", &data.display().to_string()),
        )
        .unwrap();
        let mut child = Command::new(program)
            .arg("--config")
            .arg(&path)
            .args(args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start bindery");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut addr = None;
        let mut mqtt = None;
        let mut manage = None;
        let mut mqtt_ws = None;
        let mut data_dir = None;
        let mut listening = Vec::new();
        for line in lines.by_ref() {
            let line = line.unwrap();
            if let Some((_, rest)) = line.split_once(" listening on ") {
                let mut words = rest.split_whitespace();
                let at = words.next().and_then(|a| a.parse().ok());
                let key = words.last().map(|k| k.trim_end_matches(')').to_owned());
                if let (Some(at), Some(key)) = (at, key) {
                    listening.push((key, at));
                }
            }
            if let Some(rest) = line.strip_prefix("bindery: data directory ") {
                data_dir = Some(std::path::PathBuf::from(rest));
            }
            if let Some(rest) = line.strip_prefix("bindery: http listening on ") {
                addr = rest.split_whitespace().next().map(|a| a.parse().unwrap());
            }
            if let Some(rest) = line.strip_prefix("bindery: mqtt listening on ") {
                mqtt = rest.split_whitespace().next().map(|a| a.parse().unwrap());
            }
            if let Some(rest) = line.strip_prefix("bindery: mqtt-ws listening on ") {
                mqtt_ws = rest.split_whitespace().next().map(|a| a.parse().unwrap());
            }
            if let Some(rest) = line.strip_prefix("bindery: manage listening on ") {
                manage = rest.split_whitespace().next().map(|a| a.parse().unwrap());
            }
            if line == "bindery: ready" {
                break;
            }
        }
        // The default configuration's terminals, when other instances of
        // the same protocols listen too (TLS tests).
        let keyed = |key: &str| listening.iter().find(|(k, _)| k == key).map(|(_, a)| *a);
        addr = keyed("127.0.0.1:0").or(addr);
        mqtt = keyed("127.0.0.2:0").or(mqtt);
        manage = keyed("127.0.0.3:0").or(manage);
        // Keep draining stdout so the server never blocks on it.
        std::thread::spawn(move || for _ in lines {});
        let addr = addr.expect("server printed no http address");
        Server {
            child: Some(child),
            addr,
            mqtt,
            manage,
            mqtt_ws,
            token_file: data.join("manage.token"),
            config_path: path.clone(),
            data_dir,
            listening,
            _dir: None,
        }
    }

    /// The address of the terminal bound as `key`.
    pub fn bound(&self, key: &str) -> SocketAddr {
        self.listening
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, a)| *a)
            .unwrap_or_else(|| panic!("nothing listens as {key}: {:?}", self.listening))
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, |c| c.id())
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Sends `signal` (`HUP`, ...) to the server.
    pub fn signal(&self, signal: &str) {
        let pid = self.pid().to_string();
        let ok = Command::new("kill")
            .args([&format!("-{signal}"), &pid])
            .status()
            .unwrap();
        assert!(ok.success());
    }

    /// Sends SIGTERM and returns the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().unwrap();
        let ok = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
        for _ in 0..200 {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        panic!("server did not stop within 10 s of SIGTERM");
    }

    /// Kills the server with SIGKILL: no shutdown, no flush.
    pub fn kill9(mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Whether the server still answers `/healthz`.
    pub fn healthy(&self) -> bool {
        ureq::get(&self.url("/healthz"))
            .timeout(Duration::from_secs(5))
            .call()
            .map(|r| r.status() == 200)
            .unwrap_or(false)
    }

    /// Sends raw bytes on a new connection and returns everything read back
    /// until the server closes it or `wait` passes.
    pub fn raw(&self, bytes: &[u8], wait: Duration) -> String {
        let mut s = TcpStream::connect(self.addr).unwrap();
        s.set_read_timeout(Some(wait)).unwrap();
        s.write_all(bytes).unwrap();
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        String::from_utf8_lossy(&out).into_owned()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// An HTTP agent with short timeouts.
pub fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(20))
        .build()
}

/// Status and body of a response, error statuses included.
pub fn outcome(r: Result<ureq::Response, ureq::Error>) -> (u16, String, Option<ureq::Response>) {
    match r {
        Ok(resp) => (resp.status(), String::new(), Some(resp)),
        Err(ureq::Error::Status(code, resp)) => {
            (code, resp.into_string().unwrap_or_default(), None)
        }
        Err(e) => panic!("transport error: {e}"),
    }
}

/// A connection whose receive buffer is small and that is never read: a
/// stalled client (a crashed app, a half-open connection).
pub fn stalled_socket(addr: SocketAddr) -> TcpStream {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, None).unwrap();
    // Before connecting, so the window the server sees stays small.
    s.set_recv_buffer_size(4096).unwrap();
    s.connect(&addr.into()).unwrap();
    let s: TcpStream = s.into();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// The value of the `/metrics` series `name` whose labels contain
/// `labels` (e.g. `destination="/topics/a"`), if it is there.
pub fn metric(server: &Server, name: &str, labels: &str) -> Option<u64> {
    let text = agent()
        .get(&server.url("/metrics"))
        .call()
        .ok()?
        .into_string()
        .ok()?;
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .find(|l| l.contains(labels))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}
