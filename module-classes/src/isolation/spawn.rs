//! Starting a host process so that it never outlives the server.
//!
//! - Every host is spawned by one thread, `bindery-spawner`, that lives as
//!   long as the process: Linux's parent-death signal fires when the
//!   *thread* that forked the child exits, not the process, so a host
//!   spawned from a short-lived thread (a management request's) would be
//!   killed when that thread ends.
//! - In the child, before `exec`: `PR_SET_PDEATHSIG(SIGKILL)`, then
//!   `getppid()` is checked against the server's pid, closing the race
//!   where the server died between `fork` and `prctl`; then the
//!   configured `setrlimit` limits, and a process group of its own.
//! - The host also exits at the end of its socket (see `host.rs`).
//! - Its stderr is a pipe the server reads: each line is logged again in
//!   the server, with the instance's name, so it reaches the server's
//!   stderr and the instance's log buffer (`bindery ctl logs NAME`), a
//!   panic message included.

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::mpsc;

use parking_lot::Mutex;

/// The file descriptor the host finds its socket on.
pub(crate) const HOST_FD: i32 = 3;

/// What to start.
pub(crate) struct Spawn {
    /// The executable (this binary by default).
    pub(crate) program: PathBuf,
    /// Its arguments.
    pub(crate) args: Vec<String>,
    /// The host's end of the socket pair, passed as fd [`HOST_FD`].
    pub(crate) socket: UnixStream,
    /// `RLIMIT_AS`, bytes.
    pub(crate) memory_bytes: Option<u64>,
    /// `RLIMIT_NOFILE`.
    pub(crate) open_files: Option<u64>,
}

type Request = (Spawn, mpsc::Sender<std::io::Result<Child>>);

/// Starts `spawn` from the spawner thread.
pub(crate) fn spawn(spawn: Spawn) -> std::io::Result<Child> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<Request>>> = OnceLock::new();
    let tx = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Request>();
        // Never joined: it lives as long as the process (see above). Its
        // channel is never closed, since the sender is in a static.
        let started = std::thread::Builder::new()
            .name("bindery-spawner".into())
            .spawn(move || {
                for (what, reply) in rx {
                    let _ = reply.send(spawn_here(what));
                }
            });
        if let Err(e) = started {
            tracing::error!("cannot start the host spawner thread: {e}");
        }
        Mutex::new(tx)
    });
    let (reply, answer) = mpsc::channel();
    tx.lock()
        .send((spawn, reply))
        .map_err(|_| std::io::Error::other("the host spawner thread is gone"))?;
    answer
        .recv()
        .map_err(|_| std::io::Error::other("the host spawner thread is gone"))?
}

fn spawn_here(spawn: Spawn) -> std::io::Result<Child> {
    let parent = std::process::id() as libc::pid_t;
    let socket: OwnedFd = spawn.socket.into();
    let fd = socket.as_raw_fd();
    let memory = spawn.memory_bytes;
    let files = spawn.open_files;
    let mut cmd = Command::new(&spawn.program);
    cmd.args(&spawn.args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    // SAFETY: only async-signal-safe calls (harden_child's, dup2,
    // fcntl, setrlimit, _exit) between fork and exec; nothing allocates.
    unsafe {
        cmd.pre_exec(move || {
            // The parent-death signal, a check that the server did not die
            // before it was armed, and a group of its own: a Ctrl-C at the
            // server's terminal stops the server gracefully, which stops
            // its hosts, rather than killing the hosts under it.
            crate::exec::harden_child(parent)?;
            if fd == HOST_FD {
                // dup2 onto itself keeps close-on-exec: clear it.
                let flags = libc::fcntl(fd, libc::F_GETFD);
                if flags < 0 || libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            } else if libc::dup2(fd, HOST_FD) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            for (resource, limit) in [(libc::RLIMIT_AS, memory), (libc::RLIMIT_NOFILE, files)] {
                if let Some(n) = limit {
                    let l = libc::rlimit {
                        rlim_cur: n as libc::rlim_t,
                        rlim_max: n as libc::rlim_t,
                    };
                    if libc::setrlimit(resource, &l) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
            }
            Ok(())
        });
    }
    let child = cmd.spawn();
    drop(socket);
    child
}

/// Logs each line `child` writes to stderr as the instance's, from a
/// thread of its own that ends with the child's stderr.
pub(crate) fn forward_stderr(child: &mut Child, instance: &str) {
    use std::io::BufRead as _;
    let Some(err) = child.stderr.take() else {
        return;
    };
    let (name, pid) = (instance.to_owned(), child.id());
    let started = std::thread::Builder::new()
        .name(format!("bindery-host-log-{instance}"))
        .spawn(move || {
            for line in std::io::BufReader::new(err).lines() {
                let Ok(line) = line else { break };
                let line = line.trim_end();
                if line.contains(" ERROR ") || line.contains("panicked") {
                    tracing::error!(instance = %name, "host pid {pid}: {line}");
                } else if line.contains(" WARN ") {
                    tracing::warn!(instance = %name, "host pid {pid}: {line}");
                } else {
                    tracing::info!(instance = %name, "host pid {pid}: {line}");
                }
            }
        });
    if let Err(e) = started {
        tracing::warn!("cannot read the stderr of host pid {}: {e}", child.id());
    }
}

/// How a child ended, for people (`killed by signal 9 (SIGKILL)`).
pub(crate) fn describe(status: std::process::ExitStatus) -> (String, bool) {
    use std::os::unix::process::ExitStatusExt as _;
    if let Some(sig) = status.signal() {
        let name = match sig {
            libc::SIGKILL => " (SIGKILL)",
            libc::SIGABRT => " (SIGABRT: aborted)",
            libc::SIGSEGV => " (SIGSEGV)",
            libc::SIGTERM => " (SIGTERM)",
            _ => "",
        };
        return (format!("killed by signal {sig}{name}"), false);
    }
    match status.code() {
        Some(0) => ("exited with status 0".into(), true),
        Some(c) => (format!("exited with status {c}"), false),
        None => ("ended".into(), false),
    }
}
