//! The host: the server binary re-executed as `bindery host`, making the
//! one instance the server describes and serving its calls until told to
//! stop or until its socket ends.

use std::collections::HashMap;
use std::io::{BufReader, Write as _};
use std::os::fd::FromRawFd as _;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use bindery::{Completion, Config, Failure, FailureKind, Kernel, ModuleList, Registry};

use super::frame::{self, Dec, Frame, Kind};
use super::spawn::HOST_FD;
use super::stream::Stream;
use super::writer::{self, Writer};
use crate::consumer::{Consumer, Delivery, Subscription};
use crate::driver::{DriverHandle, SubscribeOptions};
use crate::message::MessageId;
use crate::parser::ParserHandle;

/// The instance a host serves.
enum Served {
    Driver(DriverHandle),
    Parser(ParserHandle),
}

/// Serves the instance the server asks for on the socket at fd 3, with the
/// modules `linked`; returns when the server says stop or the socket ends.
/// `parent`: the server's pid, checked first (a host whose server is
/// already gone exits at once).
pub fn serve(linked: ModuleList, parent: Option<u32>) -> Result<(), String> {
    if let Some(p) = parent {
        // SAFETY: getppid has no preconditions.
        if unsafe { libc::getppid() } as u32 != p {
            return Err(format!("the server (pid {p}) is gone"));
        }
    }
    // SAFETY: the server passes the host's end of a socket pair as fd 3
    // (see spawn.rs); nothing else in this process owns it.
    let stream = unsafe { UnixStream::from_raw_fd(HOST_FD) };
    serve_on(linked, Stream::Unix(stream), None)
}

/// Activation `none`: listens on `addr` (printing `bindery host: listening
/// on ADDR`) and serves one server at a time, each connection a fresh
/// instance, once it has sent `secret` (compared in constant time; a wrong
/// or missing one is answered by closing). The instance's data lives under
/// `data_dir`, this machine's, whatever the server's is. Returns only on
/// an error listening.
pub fn listen(linked: ModuleList, addr: &str, secret: &str, data_dir: &str) -> Result<(), String> {
    let listener =
        std::net::TcpListener::bind(addr).map_err(|e| format!("listening on {addr}: {e}"))?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "bindery host: listening on {local}");
        let _ = out.flush();
    }
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        let peer = conn.peer_addr().map_or("?".into(), |a| a.to_string());
        let _ = conn.set_nodelay(true);
        let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
        let mut r = &conn;
        let proven = match frame::read(&mut r) {
            Ok(Some(f)) if f.kind == Kind::Auth => Dec::new(&f)
                .string()
                .is_ok_and(|s| same(s.as_bytes(), secret.as_bytes())),
            _ => false,
        };
        if !proven {
            tracing::warn!("host: {peer} did not prove the shared secret; closed");
            continue;
        }
        let _ = conn.set_read_timeout(None);
        tracing::info!("host: serving {peer}");
        if let Err(e) = serve_on(linked, Stream::Tcp(conn), Some(data_dir)) {
            tracing::error!("host: {peer}: {e}");
        }
    }
    Ok(())
}

/// Equal, in time that does not depend on where they differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

/// Hello, Create, then calls, on `stream`.
fn serve_on(linked: ModuleList, mut stream: Stream, data_dir: Option<&str>) -> Result<(), String> {
    keep_panic_messages();
    let mut hello = Vec::new();
    frame::encode(&mut hello, Kind::Hello, 0, |e| {
        e.bytes(frame::MAGIC)
            .u16(frame::VERSION)
            .u32(std::process::id());
    });
    stream
        .write_all(&hello)
        .map_err(|e| format!("the socket to the server: {e}"))?;
    let mut reader =
        BufReader::with_capacity(64 << 10, stream.try_clone().map_err(|e| e.to_string())?);
    let create = match frame::read(&mut reader) {
        Ok(Some(f)) if f.kind == Kind::Create => f,
        Ok(Some(f)) => return Err(format!("expected Create, got {:?}", f.kind)),
        Ok(None) => return Ok(()),
        Err(e) => return Err(format!("reading Create: {e}")),
    };
    let (kernel, served) = match make(linked, &create, data_dir) {
        Ok(made) => made,
        Err(why) => {
            let mut out = Vec::new();
            frame::encode(&mut out, Kind::Created, 0, |e| {
                e.u8(0).str(&why);
            });
            let _ = stream.write_all(&out);
            return Err(why);
        }
    };
    let mut out = Vec::new();
    frame::encode(&mut out, Kind::Created, 0, |e| {
        e.u8(1);
        match &served {
            Served::Driver(d) => {
                let info = d.info();
                e.u8(info.queue as u8).u8(info.durable as u8);
            }
            Served::Parser(p) => {
                let types = p.default_types();
                e.u32(types.len() as u32);
                for t in types {
                    e.str(t);
                }
            }
        }
    });
    stream.write_all(&out).map_err(|e| e.to_string())?;
    let writer = Writer::start(stream, "bindery-host-w".into()).map_err(|e| e.to_string())?;
    let mut subs = HashMap::new();
    let stop_id = calls(&mut reader, &writer, &served, &mut subs);
    drop(served);
    // Stop hooks run: a driver ends its subscriptions (their consumers
    // hear why) and flushes.
    drop(kernel);
    drop(subs);
    if let Some(id) = stop_id {
        writer.send(Kind::Done, id, |_| {});
    }
    writer.close(Duration::from_secs(5));
    Ok(())
}

/// Builds a kernel holding the one instance `create` describes.
fn make(
    linked: ModuleList,
    create: &Frame,
    own_data_dir: Option<&str>,
) -> Result<(Kernel, Served), String> {
    let mut d = Dec::new(create);
    let bad = |e: std::io::Error| format!("a bad Create frame: {e}");
    let version = d.u16().map_err(bad)?;
    if version != frame::VERSION {
        return Err(format!(
            "the server speaks protocol version {version}, this host {}",
            frame::VERSION
        ));
    }
    let module = d.string().map_err(bad)?;
    let name = d.string().map_err(bad)?;
    let n = d.u32().map_err(bad)? as usize;
    let mut keys = Vec::with_capacity(n.min(1024));
    for _ in 0..n {
        keys.push(toml::Value::String(d.string().map_err(bad)?));
    }
    let section = d.string().map_err(bad)?;
    let data_dir = d.string().map_err(bad)?;
    let data_dir = own_data_dir.map_or(data_dir, str::to_owned);
    let config: toml::Table = section
        .parse()
        .map_err(|e| format!("the instance's config section: {e}"))?;
    let mut instance = toml::Table::new();
    instance.insert("module".into(), module.clone().into());
    instance.insert("bind".into(), toml::Value::Array(keys));
    if !config.is_empty() {
        instance.insert("config".into(), toml::Value::Table(config));
    }
    let mut server = toml::Table::new();
    server.insert("threads".into(), 1.into());
    server.insert("data_dir".into(), data_dir.into());
    let mut instances = toml::Table::new();
    instances.insert(name.clone(), toml::Value::Table(instance));
    let mut doc = toml::Table::new();
    doc.insert("server".into(), toml::Value::Table(server));
    doc.insert("instances".into(), toml::Value::Table(instances));
    let text = toml::to_string(&doc).map_err(|e| e.to_string())?;
    let config = Config::parse(&format!("<host of {name:?}>"), &text).map_err(|e| e.to_string())?;
    let registry = Registry::load(linked).map_err(|e| e.to_string())?;
    let mut kernel = Kernel::build_with(registry, &config, Some(1)).map_err(|e| e.to_string())?;
    kernel.start().map_err(|e| e.to_string())?;
    let class = module.split('.').next().unwrap_or_default();
    let table = kernel
        .runtime()
        .table(class)
        .ok_or_else(|| format!("no table for class {class:?}"))?;
    let index = table.index();
    let binding = index
        .bindings()
        .iter()
        .find(|b| b.instance() == name)
        .cloned()
        .ok_or_else(|| {
            format!("instance {name:?} is bound to no key; an isolated instance needs one")
        })?;
    let served = match class {
        "driver" => binding
            .handle::<DriverHandle>()
            .cloned()
            .map(Served::Driver),
        "parser" => binding
            .handle::<ParserHandle>()
            .cloned()
            .map(Served::Parser),
        _ => None,
    }
    .ok_or_else(|| format!("module {module} is of class {class:?}, which a host cannot serve"))?;
    Ok((kernel, served))
}

fn failed(w: &Writer, id: u64, f: &Failure) {
    // A completion dropped while its thread unwinds is the instance
    // panicking: the host is going down, so the caller should retry, as
    // with any other end of a host (503), and hear why.
    if f.kind == FailureKind::Dropped && std::thread::panicking() {
        let why = PANIC.lock().clone().unwrap_or_default();
        let f = Failure::new(
            FailureKind::Unavailable,
            format!("the instance panicked in its host: {why}"),
        )
        .retry_after(Duration::from_secs(1));
        w.send(Kind::Failed, id, |e| {
            e.failure(&f);
        });
        return;
    }
    w.send(Kind::Failed, id, |e| {
        e.failure(f);
    });
}

/// The last panic's message, for the calls it ends.
static PANIC: parking_lot::Mutex<Option<String>> = parking_lot::Mutex::new(None);

/// Keeps each panic's message (then says it, as the default hook does).
fn keep_panic_messages() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(keep_panic_messages_now);
}

fn keep_panic_messages_now() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "(no message)".into());
        *PANIC.lock() = Some(match info.location() {
            Some(at) => format!("{msg} (at {at})"),
            None => msg,
        });
        default(info)
    }));
}

/// Serves calls until `Stop` (its request id is returned) or the end of
/// the socket.
fn calls(
    r: &mut BufReader<Stream>,
    w: &Writer,
    served: &Served,
    subs: &mut HashMap<u64, Subscription>,
) -> Option<u64> {
    loop {
        let f = match frame::read(r) {
            Ok(Some(f)) => f,
            Ok(None) => return None,
            Err(e) => {
                tracing::error!("host: reading from the server: {e}");
                return None;
            }
        };
        if f.kind == Kind::Stop {
            writer::more_coming(false);
            return Some(f.id);
        }
        // Replies to a batch of requests go out together.
        writer::more_coming(!r.buffer().is_empty());
        if f.kind == Kind::Ping {
            // Answered from the thread that serves calls: a host stuck in
            // one does not answer.
            w.send(Kind::Done, f.id, |_| {});
            continue;
        }
        if let Err(e) = call(&f, w, served, subs) {
            failed(
                w,
                f.id,
                &Failure::new(
                    FailureKind::Internal,
                    format!("host: a bad {:?} frame: {e}", f.kind),
                ),
            );
        }
    }
}

fn call(
    f: &Frame,
    w: &Writer,
    served: &Served,
    subs: &mut HashMap<u64, Subscription>,
) -> std::io::Result<()> {
    let mut d = Dec::new(f);
    let id = f.id;
    let unsupported = || {
        Failure::new(
            FailureKind::Unsupported,
            format!("{:?} is not a call this instance takes", f.kind),
        )
    };
    match (f.kind, served) {
        (Kind::Publish, Served::Driver(drv)) => {
            let m = d.message()?;
            let w = w.clone();
            drv.publish(
                m,
                Completion::new(move |r| match r {
                    Ok(rc) => {
                        w.send(Kind::Receipt, id, |e| {
                            e.receipt(&rc);
                        });
                    }
                    Err(fl) => failed(&w, id, &fl),
                }),
            );
        }
        (Kind::Subscribe, Served::Driver(drv)) => {
            let sub = d.u64()?;
            let dest = d.string()?;
            let credit = d.u32()?;
            let lease = Duration::from_millis(d.u64()?);
            let to = w.clone();
            let consumer = Consumer::new(move |dl| match dl {
                Delivery::Message(m) => {
                    to.send(Kind::Deliver, sub, |e| {
                        e.message(&m);
                    });
                }
                Delivery::Closed(why) => {
                    to.send(Kind::Closed, sub, |e| {
                        e.str(&why);
                    });
                }
            })
            .named(format!("proxy subscription {sub}"));
            match drv.subscribe(&dest, consumer, SubscribeOptions { credit, lease }) {
                Ok(s) => {
                    subs.insert(sub, s);
                    w.send(Kind::Done, id, |_| {});
                }
                Err(fl) => failed(w, id, &fl),
            }
        }
        (Kind::Credit, Served::Driver(_)) => {
            let n = d.u32()?;
            if let Some(s) = subs.get(&id) {
                s.credit(n);
            }
        }
        (Kind::Cancel, Served::Driver(_)) => {
            subs.remove(&id);
        }
        (Kind::Ack, Served::Driver(drv)) => {
            let dest = d.string()?;
            let msg = MessageId(d.u64()?);
            let w = w.clone();
            drv.ack(
                &dest,
                msg,
                Completion::new(move |r| match r {
                    Ok(()) => {
                        w.send(Kind::Done, id, |_| {});
                    }
                    Err(fl) => failed(&w, id, &fl),
                }),
            );
        }
        (kind @ (Kind::Release | Kind::Retry), Served::Driver(drv)) => {
            let dest = d.string()?;
            let message = MessageId(d.u64()?);
            let outcome = if kind == Kind::Retry {
                drv.retry(&dest, message)
            } else {
                drv.release(&dest, message)
            };
            match outcome {
                Ok(()) => {
                    w.send(Kind::Done, id, |_| {});
                }
                Err(fl) => failed(w, id, &fl),
            }
        }
        (Kind::Stats, Served::Driver(drv)) => {
            let all = drv.stats();
            w.send(Kind::StatsReply, id, |e| {
                e.stats(&all);
            });
        }
        (Kind::Validate, Served::Parser(p)) => {
            let ct = d.string()?;
            let body = d.bytes()?;
            match p.validate(&ct, &body) {
                Ok(()) => {
                    w.send(Kind::Done, id, |_| {});
                }
                Err(pe) => {
                    w.send(Kind::Invalid, id, |e| {
                        e.parse_error(&pe);
                    });
                }
            }
        }
        _ => failed(w, id, &unsupported()),
    }
    Ok(())
}
