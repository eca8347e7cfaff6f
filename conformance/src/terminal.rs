//! The terminal contract.
//!
//! The harness is the terminal module's descriptor. Each case builds a
//! kernel of the terminal under test, bound to `127.0.0.1:0`, beside a
//! dispatcher and a driver double; the protocol-specific part comes from
//! the terminal's own [`Probe`].

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use bindery::{Config, Kernel, ModuleDescriptor, Registry};
use bindery_classes::Probe;
use bindery_classes::terminal;

use crate::doubles::{DIRECT_DISPATCHER, PICKY_PARSER, RECORDING_DRIVER};
use crate::{Case, ensure};

/// What a terminal case gets: the module under test.
pub type Harness = &'static ModuleDescriptor;

/// The rules of a terminal.
pub const TERMINAL: &[Case<Harness>] = &[
    Case {
        name: "starts_and_stops_on_a_loopback_address",
        run: starts_and_stops_on_a_loopback_address,
    },
    Case {
        name: "keeps_serving_when_a_client_sends_malformed_bytes",
        run: keeps_serving_when_a_client_sends_malformed_bytes,
    },
    Case {
        name: "keeps_serving_while_a_client_stalls_mid_frame",
        run: keeps_serving_while_a_client_stalls_mid_frame,
    },
    Case {
        name: "serves_many_clients_at_once",
        run: serves_many_clients_at_once,
    },
    Case {
        name: "stopping_closes_everything_and_a_restart_serves_again",
        run: stopping_closes_everything_and_a_restart_serves_again,
    },
];

/// Runs the terminal suite as `#[test]`s, one per case:
///
/// ```text
/// bindery_conformance::terminal_suite!(&my_terminal::MODULE);
/// ```
#[macro_export]
macro_rules! terminal_suite {
    ($module:expr) => {
        mod conformance_terminal {
            #[allow(unused_imports)]
            use super::*;
            $crate::__suite!(
                $crate::terminal::TERMINAL,
                $module,
                [
                    starts_and_stops_on_a_loopback_address,
                    keeps_serving_when_a_client_sends_malformed_bytes,
                    keeps_serving_while_a_client_stalls_mid_frame,
                    serves_many_clients_at_once,
                    stopping_closes_everything_and_a_restart_serves_again,
                ]
            );
        }
    };
}

/// Where the terminal under test listens now.
fn listening(kernel: &Kernel) -> Result<SocketAddr, String> {
    let (_, t) = terminal::all(kernel.runtime())
        .into_iter()
        .next()
        .ok_or("the terminal is not in the terminal table")?;
    t.local_addrs()
        .first()
        .copied()
        .ok_or_else(|| "the terminal listens nowhere after start".into())
}

struct Running {
    // Dropped first: the kernel stops before its scratch directory goes.
    kernel: Kernel,
    addr: SocketAddr,
    probe: Arc<dyn Probe>,
    _scratch: Scratch,
}

/// A directory for a case's files (`{scratch}` in a module's
/// `certify_config`), removed after.
struct Scratch(std::path::PathBuf);

impl Scratch {
    fn new() -> Scratch {
        use std::sync::atomic::{AtomicU64, Ordering};
        static N: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "bindery-terminal-case-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn start(module: &Harness) -> Result<Running, String> {
    let module: &'static ModuleDescriptor = module;
    let registry = Registry::of(&[module, &DIRECT_DISPATCHER, &RECORDING_DRIVER, &PICKY_PARSER])
        .map_err(|e| e.to_string())?;
    let scratch = Scratch::new();
    let section = module
        .certify_config
        .replace("{scratch}", &scratch.0.display().to_string());
    let text = format!(
        "[instances.under-test]\nmodule = \"{}\"\nbind = [\"127.0.0.1:0\"]\n\
         [instances.under-test.config]\n{section}\n\
         [instances.d]\nmodule = \"dispatcher.conformance-direct\"\n\
         [instances.r]\nmodule = \"driver.conformance-recorder\"\nbind = [\"/\"]\n\
         [instances.p]\nmodule = \"parser.conformance-picky\"\n",
        module.id()
    );
    let config = Config::parse("conformance", &text).map_err(|e| e.to_string())?;
    let mut kernel = Kernel::build_with(registry, &config, Some(2)).map_err(|e| e.to_string())?;
    kernel.start().map_err(|e| format!("start: {e}"))?;
    let addr = listening(&kernel)?;
    let (_, t) = terminal::all(kernel.runtime())
        .into_iter()
        .next()
        .ok_or("the terminal is not in the terminal table")?;
    ensure!(
        addr.ip().is_loopback(),
        "bound to 127.0.0.1:0, listens on {addr}"
    );
    ensure!(addr.port() != 0, "listens on port 0");
    let probe = t
        .probe()
        .ok_or("the terminal offers no Probe: its protocol cannot be checked")?;
    Ok(Running {
        kernel,
        addr,
        probe,
        _scratch: scratch,
    })
}

fn starts_and_stops_on_a_loopback_address(module: &Harness) -> Result<(), String> {
    let mut r = start(module)?;
    r.probe
        .exchange(r.addr)
        .map_err(|e| format!("exchange after start: {e}"))?;
    r.kernel.shutdown();
    ensure!(
        TcpStream::connect_timeout(&r.addr, Duration::from_secs(2)).is_err(),
        "{} still accepts connections after shutdown",
        r.addr
    );
    Ok(())
}

fn keeps_serving_when_a_client_sends_malformed_bytes(module: &Harness) -> Result<(), String> {
    let r = start(module)?;
    let mut bad = TcpStream::connect(r.addr).map_err(|e| e.to_string())?;
    bad.write_all(&r.probe.malformed())
        .map_err(|e| e.to_string())?;
    r.probe
        .exchange(r.addr)
        .map_err(|e| format!("exchange beside a malformed client: {e}"))?;
    // The malformed client is refused: its connection ends.
    bad.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    let mut sink = Vec::new();
    match bad.read_to_end(&mut sink) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(e) => {
            return Err(format!(
                "the malformed client's connection stayed open: {e}"
            ));
        }
    }
    r.probe
        .exchange(r.addr)
        .map_err(|e| format!("exchange after a malformed client: {e}"))
}

fn keeps_serving_while_a_client_stalls_mid_frame(module: &Harness) -> Result<(), String> {
    let r = start(module)?;
    let mut stalled = Vec::new();
    for _ in 0..8 {
        let mut s = TcpStream::connect(r.addr).map_err(|e| e.to_string())?;
        s.write_all(&r.probe.partial()).map_err(|e| e.to_string())?;
        stalled.push(s);
    }
    for i in 0..10 {
        r.probe
            .exchange(r.addr)
            .map_err(|e| format!("exchange {i} while 8 clients stall: {e}"))?;
    }
    Ok(())
}

fn serves_many_clients_at_once(module: &Harness) -> Result<(), String> {
    let r = start(module)?;
    let threads: Vec<_> = (0..32)
        .map(|_| {
            let (probe, addr) = (r.probe.clone(), r.addr);
            std::thread::spawn(move || (0..5).try_for_each(|_| probe.exchange(addr)))
        })
        .collect();
    for t in threads {
        t.join()
            .map_err(|_| "a client thread panicked".to_string())??;
    }
    Ok(())
}

/// Stopping the instance (not the server) closes its listener and every
/// connection, idle or mid-frame, by the deadline; starting it again makes
/// a new incarnation that serves.
fn stopping_closes_everything_and_a_restart_serves_again(module: &Harness) -> Result<(), String> {
    let r = start(module)?;
    let rt = r.kernel.runtime().clone();
    let idle = TcpStream::connect(r.addr).map_err(|e| e.to_string())?;
    let mut partial = TcpStream::connect(r.addr).map_err(|e| e.to_string())?;
    partial
        .write_all(&r.probe.partial())
        .map_err(|e| e.to_string())?;
    r.probe.exchange(r.addr)?;
    rt.stop("under-test", Duration::from_secs(2))
        .map_err(|e| format!("stop: {e}"))?;
    for (what, mut s) in [("an idle", idle), ("a mid-frame", partial)] {
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(|e| e.to_string())?;
        let mut sink = Vec::new();
        match s.read_to_end(&mut sink) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            Err(e) => return Err(format!("{what} connection stayed open after stop: {e}")),
        }
    }
    ensure!(
        TcpStream::connect_timeout(&r.addr, Duration::from_secs(2)).is_err(),
        "{} still accepts connections after the instance stopped",
        r.addr
    );
    rt.start("under-test")
        .map_err(|e| format!("start again: {e}"))?;
    let addr = listening(&r.kernel)?;
    r.probe
        .exchange(addr)
        .map_err(|e| format!("exchange after a restart: {e}"))
}
