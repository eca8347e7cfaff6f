//! Starting a host (activation `fork`) or connecting to one (`none`), and
//! the hello that makes the instance in it.

use std::io::Write as _;
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bindery::{Activation, BoxError, InstanceContext};

use super::conn::Conn;
use super::frame::{self, Dec, Frame, Kind};
use super::spawn;
use super::stream::Stream;

/// Starts a host for `cx`'s instance (or connects to one: activation
/// `none`) and makes the instance in it; the `Created` frame is returned
/// for the class to read.
pub(crate) fn start(cx: &InstanceContext, class: &str) -> Result<(Arc<Conn>, Frame), BoxError> {
    let what = format!("{class} instance {:?}", cx.name());
    let host = cx.isolation().host();
    let patience = Duration::from_millis(host.start_timeout_ms.unwrap_or(10_000));
    let (stream, mut child, who) = match host.activation.unwrap_or_default() {
        Activation::Fork => {
            let program = match &host.program {
                Some(p) => p.clone(),
                None => {
                    std::env::current_exe().map_err(|e| format!("{what}: no host program: {e}"))?
                }
            };
            let (ours, theirs) = UnixStream::pair()?;
            let child = spawn::spawn(spawn::Spawn {
                program: program.clone(),
                args: vec![
                    "host".into(),
                    "--parent-pid".into(),
                    std::process::id().to_string(),
                    "--instance".into(),
                    cx.name().into(),
                ],
                socket: theirs,
                memory_bytes: host.memory_bytes,
                open_files: host.open_files,
            })
            .map_err(|e| format!("{what}: cannot start host {}: {e}", program.display()))?;
            let mut child = child;
            spawn::forward_stderr(&mut child, cx.name());
            let who = format!("its host (pid {})", child.id());
            (Stream::Unix(ours), Some(child), who)
        }
        Activation::None => {
            let addr = host.connect.clone().unwrap_or_default();
            let file = cx.resolve(host.secret_file.as_deref().unwrap_or(Path::new("")));
            let secret = std::fs::read_to_string(&file)
                .map_err(|e| format!("{what}: [host] secret_file {}: {e}", file.display()))?;
            let s = connect(&addr, patience).map_err(|e| format!("{what}: host at {addr}: {e}"))?;
            let _ = s.set_nodelay(true);
            let mut out = Vec::new();
            frame::encode(&mut out, Kind::Auth, 0, |e| {
                e.str(secret.trim());
            });
            (&s).write_all(&out)
                .map_err(|e| format!("{what}: host at {addr}: {e}"))?;
            (Stream::Tcp(s), None, format!("its host at {addr}"))
        }
    };
    let created = match handshake(cx, &stream, patience) {
        Ok(c) => c,
        Err(why) => {
            let status = match child.as_mut() {
                Some(c) => {
                    let _ = c.kill();
                    let status = c.wait().map_or(String::new(), |s| spawn::describe(s).0);
                    format!(" ({who} {status})")
                }
                None => format!(" ({who}; a wrong secret is answered by closing)"),
            };
            return Err(format!("{what}: {why}{status}").into());
        }
    };
    let pid = child.as_ref().map(|c| c.id());
    tracing::info!("{what}: {who} serves it");
    let conn = Conn::open(cx, what, who, stream, child)?;
    cx.monitor().set_pid(pid);
    Ok((conn, created))
}

fn connect(addr: &str, patience: Duration) -> std::io::Result<TcpStream> {
    use std::net::ToSocketAddrs as _;
    let mut last = std::io::Error::other("the address resolves to nothing");
    for a in addr.to_socket_addrs()? {
        match TcpStream::connect_timeout(&a, patience) {
            Ok(s) => return Ok(s),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// Hello, Create, Created.
fn handshake(cx: &InstanceContext, stream: &Stream, patience: Duration) -> Result<Frame, String> {
    stream
        .set_read_timeout(Some(patience))
        .map_err(|e| e.to_string())?;
    let mut s = stream.try_clone().map_err(|e| e.to_string())?;
    let first = expect(&mut s, Kind::Hello, patience)?;
    let mut d = Dec::new(&first);
    let magic = d.bytes().map_err(|e| e.to_string())?;
    let version = d.u16().map_err(|e| e.to_string())?;
    if &magic[..] != frame::MAGIC || version != frame::VERSION {
        return Err(format!(
            "it speaks protocol version {version}, this server {} (or is no Bindery host)",
            frame::VERSION
        ));
    }
    let section = cx
        .config()
        .value()
        .map(|v| toml::to_string(&v).unwrap_or_default())
        .unwrap_or_default();
    let mut out = Vec::new();
    frame::encode(&mut out, Kind::Create, 0, |e| {
        e.u16(frame::VERSION)
            .str(&cx.module().id())
            .str(cx.name())
            .u32(cx.keys().len() as u32);
        for k in cx.keys() {
            e.str(k);
        }
        e.str(&section).str(&cx.data_dir().display().to_string());
    });
    s.write_all(&out).map_err(|e| e.to_string())?;
    let created = expect(&mut s, Kind::Created, patience)?;
    let mut d = Dec::new(&created);
    if d.u8().map_err(|e| e.to_string())? == 0 {
        return Err(d.string().map_err(|e| e.to_string())?);
    }
    Ok(created)
}

/// Reads the frame of `kind` the start-up expects.
fn expect(r: &mut impl std::io::Read, kind: Kind, patience: Duration) -> Result<Frame, String> {
    match frame::read(r) {
        Ok(Some(f)) if f.kind == kind => Ok(f),
        Ok(Some(f)) => Err(format!("the host sent {:?} where {kind:?} was due", f.kind)),
        Ok(None) => Err(format!("the host closed its socket before {kind:?}")),
        Err(e)
            if e.kind() == std::io::ErrorKind::WouldBlock
                || e.kind() == std::io::ErrorKind::TimedOut =>
        {
            Err(format!(
                "no {kind:?} from the host within {} ms (start_timeout_ms)",
                patience.as_millis()
            ))
        }
        Err(e) => Err(format!("reading {kind:?} from the host: {e}")),
    }
}
