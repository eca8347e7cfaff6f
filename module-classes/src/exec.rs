//! Running a command for a module — per request, per queued message — on
//! a reactor: the command line is the interface, so the work can be done
//! in any language.
//!
//! [`run`] starts the child from a reactor thread and drives it there as a
//! handler; no thread waits for it. What every such runner needs, once:
//!
//! - **argv only**, never a shell; the environment is cleared, then
//!   `PATH` and what the caller lists are set.
//! - **No pipe deadlock**: stdin is written while stdout and stderr are
//!   read, all non-blocking on the reactor, so a child that writes a lot to
//!   both while reading a lot never waits on a full pipe.
//! - **Backpressure**: stdout is read only while the [`Sink`] has room; the
//!   child blocks on a full pipe meanwhile, which is what a slow client
//!   should cost.
//! - **Process groups**: each child leads a group of its own and every kill
//!   goes to the group. A grandchild that inherited the pipes does not hold
//!   the answer open: reading ends `exit_delay` after the child exits (what
//!   Go's `Cmd.WaitDelay` is for), and then the group is killed, so nothing
//!   the command left behind keeps running.
//! - **No zombie, no orphan**: the child is reaped once its group is
//!   killed (not before, so its pid cannot be reused under the kill); it
//!   gets `SIGKILL` if the server dies (`PR_SET_PDEATHSIG`, armed from the
//!   reactor thread that lives as long as the server).
//! - **Limits**: a timeout and a client that leaves both send `SIGTERM` to
//!   the group, then `SIGKILL` after `kill_grace`; stdout past
//!   `max_output` is cut and the group killed.
//! - **stderr** is logged line by line as the instance's (so it reaches
//!   the instance's log), and its last `stderr_tail` bytes are kept for the
//!   caller's error message.
//!
//! Longer than most files here: the child's whole life on the reactor
//! (pipes, exit, timers, kills) is one state machine, read best in one
//! place.

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bindery::reactor::TimerId;
use bindery::{Cx, Handler, Note, ReactorHandle};
use bytes::Bytes;
use mio::unix::SourceFd;
use mio::unix::pipe::{Receiver, Sender};
use mio::{Interest, event::Event};

/// What to run.
#[derive(Clone, Debug, Default)]
pub struct Command {
    /// The program and its arguments (`argv[0]` is looked up in `PATH`).
    pub argv: Vec<String>,
    /// Environment variables, set after the environment is cleared
    /// (`PATH` is kept unless listed).
    pub env: Vec<(String, String)>,
    /// The working directory; none: the server's.
    pub dir: Option<PathBuf>,
    /// What the child reads on stdin (then end of file).
    pub stdin: Bytes,
}

/// How long and how much.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// From start to `SIGTERM`.
    pub timeout: Duration,
    /// From `SIGTERM` to `SIGKILL`.
    pub kill_grace: Duration,
    /// After the child exits, how long its pipes are still read (a
    /// grandchild may hold them open).
    pub exit_delay: Duration,
    /// Stdout bytes at most; past it the output is cut and the group
    /// killed.
    pub max_output: u64,
    /// Stderr bytes kept for the caller.
    pub stderr_tail: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            timeout: Duration::from_secs(30),
            kill_grace: Duration::from_secs(2),
            exit_delay: Duration::from_millis(200),
            max_output: 64 << 20,
            stderr_tail: 4096,
        }
    }
}

/// How a run ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The child exited (or was killed by a signal nobody here sent).
    Exited {
        /// Its exit code, if it exited.
        code: Option<i32>,
        /// The signal that ended it, if one did.
        signal: Option<i32>,
    },
    /// The timeout passed; the group was killed.
    TimedOut,
    /// The sink said its client is gone; the group was killed.
    Abandoned,
    /// Stdout passed `max_output`; the group was killed.
    OutputCut,
    /// It could not be started, and why.
    NotStarted(String),
}

/// What a sink learns at the end.
#[derive(Clone, Debug)]
pub struct Finished {
    /// How it ended.
    pub outcome: Outcome,
    /// The last `stderr_tail` bytes of stderr, lossily UTF-8.
    pub stderr_tail: String,
    /// Stdout bytes passed to the sink.
    pub stdout_bytes: u64,
    /// How long it ran.
    pub elapsed: Duration,
}

impl Finished {
    /// Whether the child exited with status 0.
    pub fn success(&self) -> bool {
        self.outcome
            == Outcome::Exited {
                code: Some(0),
                signal: None,
            }
    }

    /// How it ended, for people (`exited with status 3`, `timed out`).
    pub fn describe(&self) -> String {
        match &self.outcome {
            Outcome::Exited { code: Some(c), .. } => format!("exited with status {c}"),
            Outcome::Exited {
                signal: Some(s), ..
            } => format!("killed by signal {s}"),
            Outcome::Exited { .. } => "ended".into(),
            Outcome::TimedOut => "timed out".into(),
            Outcome::Abandoned => "stopped: its client left".into(),
            Outcome::OutputCut => "stopped: output over the limit".into(),
            Outcome::NotStarted(why) => format!("could not start: {why}"),
        }
    }
}

/// Where a child's stdout goes, and who hears how it ended.
pub trait Sink: Send + 'static {
    /// The child started as `pid`. `wake` makes the runner look at
    /// [`Sink::room`] and [`Sink::gone`] again: call it (from any thread)
    /// when either changes.
    fn started(&mut self, pid: u32, wake: Arc<dyn Fn() + Send + Sync>) {
        let _ = (pid, wake);
    }
    /// Bytes from stdout; returns whether there is room for more.
    fn stdout(&mut self, chunk: &[u8]) -> bool;
    /// Whether there is room for more stdout now.
    fn room(&self) -> bool {
        true
    }
    /// Whether whoever waits for the output is gone (kill the child).
    fn gone(&self) -> bool {
        false
    }
    /// The end; called once, also when the child could not start.
    fn finished(&mut self, finished: Finished);
}

/// The tag of a wake-up note to a runner.
const WAKE: u64 = 1;

/// Starts `command` on `reactor`; `sink` hears the rest. Returns at once.
pub fn run(
    reactor: &ReactorHandle,
    instance: Arc<str>,
    command: Command,
    limits: Limits,
    sink: impl Sink,
) {
    let handle = reactor.clone();
    reactor.spawn(move |cx| {
        let mut sink = sink;
        match Runner::start(cx, &handle, instance.clone(), command, limits, &mut sink) {
            Ok(mut runner) => {
                runner.sink = Some(sink);
                Ok(Box::new(runner) as Box<dyn Handler>)
            }
            Err(e) => {
                tracing::warn!(instance = %instance, "command not started: {e}");
                sink.finished(Finished {
                    outcome: Outcome::NotStarted(e.to_string()),
                    stderr_tail: String::new(),
                    stdout_bytes: 0,
                    elapsed: Duration::ZERO,
                });
                Err(e)
            }
        }
    });
}

/// Arms what a child of the server must have, between `fork` and `exec`:
/// `SIGKILL` when the thread that forked it ends, a check that the server
/// did not die before that was armed, and a process group of its own.
///
/// # Safety
///
/// Call only in a `pre_exec` hook: it makes async-signal-safe calls only.
pub unsafe fn harden_child(server_pid: libc::pid_t) -> io::Result<()> {
    // SAFETY: prctl, getppid, setpgid and _exit are async-signal-safe.
    unsafe {
        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
            return Err(io::Error::last_os_error());
        }
        if libc::getppid() != server_pid {
            libc::_exit(1);
        }
        if libc::setpgid(0, 0) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Sends `signal` to the process group `pgid` (gone already: fine).
fn kill_group(pgid: i32, signal: i32) {
    // SAFETY: kill takes plain integers; a negative pid names a group.
    unsafe {
        libc::kill(-pgid, signal);
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kill {
    None,
    /// SIGTERM sent; SIGKILL at this time.
    Termed(Instant),
    Killed,
}

struct Runner<S: Sink> {
    instance: Arc<str>,
    limits: Limits,
    child: Child,
    pid: i32,
    pidfd: Option<OwnedFd>,
    stdin: Option<(Sender, Bytes)>,
    stdout: Option<Receiver>,
    stderr: Option<Receiver>,
    sink: Option<S>,
    started: Instant,
    /// The child has exited (not reaped yet): reading ends at this time.
    exited_until: Option<Instant>,
    kill: Kill,
    /// Why the runner killed the group, if it did.
    reason: Option<Outcome>,
    stdout_bytes: u64,
    tail: Vec<u8>,
    line: Vec<u8>,
}

impl<S: Sink> Runner<S> {
    fn start(
        cx: &mut Cx<'_>,
        handle: &ReactorHandle,
        instance: Arc<str>,
        command: Command,
        limits: Limits,
        sink: &mut S,
    ) -> io::Result<Runner<S>> {
        let Some((program, args)) = command.argv.split_first() else {
            return Err(io::Error::other("an empty command"));
        };
        let server = std::process::id() as libc::pid_t;
        let mut cmd = std::process::Command::new(program);
        cmd.args(args)
            .env_clear()
            .env(
                "PATH",
                std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into()),
            )
            .envs(command.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(dir) = &command.dir {
            cmd.current_dir(dir);
        }
        // SAFETY: harden_child makes async-signal-safe calls only.
        unsafe {
            cmd.pre_exec(move || harden_child(server));
        }
        let mut child = cmd.spawn()?;
        let pid = child.id() as i32;
        let pipes = (
            child.stdin.take().map(Sender::from),
            child.stdout.take().map(Receiver::from),
            child.stderr.take().map(Receiver::from),
        );
        let registered = match pipes {
            (Some(i), Some(o), Some(e)) => register(cx, i, o, e, pid),
            _ => Err(io::Error::other("the child's pipes are missing")),
        };
        let (stdin, stdout, stderr, pidfd) = match registered {
            Ok(r) => r,
            Err(e) => {
                kill_group(pid, libc::SIGKILL);
                let _ = child.wait();
                return Err(e);
            }
        };
        let token = cx.address();
        let reactor = handle.clone();
        sink.started(
            pid as u32,
            Arc::new(move || reactor.notify(token, Note::new(WAKE, ()))),
        );
        cx.set_timer(limits.timeout);
        if pidfd.is_none() {
            cx.set_timer(POLL_EXIT);
        }
        Ok(Runner {
            instance,
            limits,
            child,
            pid,
            pidfd,
            stdin: Some((stdin, command.stdin)),
            stdout: Some(stdout),
            stderr: Some(stderr),
            sink: None,
            started: Instant::now(),
            exited_until: None,
            kill: Kill::None,
            reason: None,
            stdout_bytes: 0,
            tail: Vec::new(),
            line: Vec::new(),
        })
    }

    /// Moves everything that can move; finishes when the child is done.
    fn pump(&mut self, cx: &mut Cx<'_>) {
        let now = Instant::now();
        self.write_stdin();
        self.read_stdout();
        self.read_stderr();
        if self.exited_until.is_none() && self.has_exited() {
            self.exited_until = Some(now + self.limits.exit_delay);
            cx.set_timer(self.limits.exit_delay);
        }
        let gone = self.sink.as_ref().is_some_and(|s| s.gone());
        if gone && self.reason.is_none() && self.exited_until.is_none() {
            self.terminate(cx, Outcome::Abandoned);
        }
        if now - self.started >= self.limits.timeout
            && self.reason.is_none()
            && self.exited_until.is_none()
        {
            self.terminate(cx, Outcome::TimedOut);
        }
        if let Kill::Termed(at) = self.kill {
            if now >= at {
                kill_group(self.pid, libc::SIGKILL);
                self.kill = Kill::Killed;
            }
        }
        if let Some(until) = self.exited_until {
            let drained = self.stdout.is_none() && self.stderr.is_none();
            if drained || now >= until {
                self.finish(cx);
            }
        }
    }

    fn terminate(&mut self, cx: &mut Cx<'_>, why: Outcome) {
        tracing::debug!(instance = %self.instance, pid = self.pid, "stopping a command: {why:?}");
        self.reason = Some(why);
        kill_group(self.pid, libc::SIGTERM);
        self.kill = Kill::Termed(Instant::now() + self.limits.kill_grace);
        cx.set_timer(self.limits.kill_grace);
        // What it writes from now on is not wanted.
        self.stdout = None;
    }

    /// Whether the child exited; it stays a zombie (its pid reserved)
    /// until [`Runner::finish`] has killed its group.
    fn has_exited(&self) -> bool {
        // SAFETY: a zeroed siginfo_t is valid; waitid writes into it.
        unsafe {
            let mut info: libc::siginfo_t = std::mem::zeroed();
            let r = libc::waitid(
                libc::P_PID,
                self.pid as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
            );
            r == 0 && info.si_pid() != 0
        }
    }

    fn write_stdin(&mut self) {
        let Some((pipe, data)) = &mut self.stdin else {
            return;
        };
        while !data.is_empty() {
            match pipe.write(data) {
                Ok(n) => {
                    let _ = data.split_to(n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // The child closed stdin or exited: it wants no more.
                Err(_) => break,
            }
        }
        self.stdin = None; // end of file for the child
    }

    fn read_stdout(&mut self) {
        let mut buf = [0u8; 64 * 1024];
        while let Some(pipe) = &mut self.stdout {
            let Some(sink) = &mut self.sink else { return };
            if !sink.room() {
                return;
            }
            match pipe.read(&mut buf) {
                Ok(0) => self.stdout = None,
                Ok(n) => {
                    let left = self.limits.max_output.saturating_sub(self.stdout_bytes);
                    let take = (n as u64).min(left) as usize;
                    self.stdout_bytes += take as u64;
                    if take > 0 {
                        sink.stdout(&buf[..take]);
                    }
                    if take < n && self.reason.is_none() {
                        self.reason = Some(Outcome::OutputCut);
                        kill_group(self.pid, libc::SIGKILL);
                        self.kill = Kill::Killed;
                        self.stdout = None;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => self.stdout = None,
            }
        }
    }

    fn read_stderr(&mut self) {
        let mut buf = [0u8; 16 * 1024];
        while let Some(pipe) = &mut self.stderr {
            match pipe.read(&mut buf) {
                Ok(0) => {
                    self.stderr = None;
                    self.log_line(true);
                }
                Ok(n) => self.take_stderr(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => self.stderr = None,
            }
        }
    }

    fn take_stderr(&mut self, bytes: &[u8]) {
        self.tail.extend_from_slice(bytes);
        let keep = self.limits.stderr_tail;
        if self.tail.len() > 2 * keep.max(1) {
            self.tail.drain(..self.tail.len() - keep);
        }
        for &b in bytes {
            if b == b'\n' {
                self.log_line(false);
            } else if self.line.len() < 4096 {
                self.line.push(b);
            }
        }
    }

    fn log_line(&mut self, last: bool) {
        if self.line.is_empty() && last {
            return;
        }
        let line = String::from_utf8_lossy(&self.line);
        tracing::info!(instance = %self.instance, pid = self.pid, "stderr: {}", line.trim_end());
        self.line.clear();
    }

    fn finish(&mut self, cx: &mut Cx<'_>) {
        // The group goes first, then the zombie: its pid cannot be reused
        // for the kill.
        kill_group(self.pid, libc::SIGKILL);
        let status = self.child.wait();
        self.stdout = None;
        self.stderr = None;
        self.stdin = None;
        let outcome = match (self.reason.take(), status) {
            (Some(why), _) => why,
            (None, Ok(status)) => {
                use std::os::unix::process::ExitStatusExt as _;
                Outcome::Exited {
                    code: status.code(),
                    signal: status.signal(),
                }
            }
            (None, Err(e)) => Outcome::NotStarted(format!("cannot reap the child: {e}")),
        };
        let keep = self.limits.stderr_tail;
        let from = self.tail.len().saturating_sub(keep);
        let finished = Finished {
            outcome,
            stderr_tail: String::from_utf8_lossy(&self.tail[from..]).into_owned(),
            stdout_bytes: self.stdout_bytes,
            elapsed: self.started.elapsed(),
        };
        if let Some(mut sink) = self.sink.take() {
            sink.finished(finished);
        }
        cx.close();
    }
}

/// How often a child's exit is polled where `pidfd_open` is missing.
const POLL_EXIT: Duration = Duration::from_millis(20);

type Registered = (Sender, Receiver, Receiver, Option<OwnedFd>);

fn register(
    cx: &mut Cx<'_>,
    mut stdin: Sender,
    mut stdout: Receiver,
    mut stderr: Receiver,
    pid: i32,
) -> io::Result<Registered> {
    stdin.set_nonblocking(true)?;
    stdout.set_nonblocking(true)?;
    stderr.set_nonblocking(true)?;
    let token = cx.token();
    let registry = cx.registry();
    registry.register(&mut stdin, token, Interest::WRITABLE)?;
    registry.register(&mut stdout, token, Interest::READABLE)?;
    registry.register(&mut stderr, token, Interest::READABLE)?;
    // SAFETY: pidfd_open takes a pid and flags; a negative result is an
    // error (older kernels: the exit is polled instead).
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    let pidfd = if fd >= 0 {
        // SAFETY: the fd was just opened and is owned by nobody else.
        let pidfd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        registry.register(&mut SourceFd(&pidfd.as_raw_fd()), token, Interest::READABLE)?;
        Some(pidfd)
    } else {
        None
    };
    Ok((stdin, stdout, stderr, pidfd))
}

impl<S: Sink> Handler for Runner<S> {
    fn ready(&mut self, cx: &mut Cx<'_>, _: &Event) {
        self.pump(cx);
    }

    fn notify(&mut self, cx: &mut Cx<'_>, _: Note) {
        self.pump(cx);
    }

    fn timeout(&mut self, cx: &mut Cx<'_>, _: TimerId) {
        if self.pidfd.is_none() && self.exited_until.is_none() {
            cx.set_timer(POLL_EXIT);
        }
        self.pump(cx);
    }

    fn shutdown(&mut self, cx: &mut Cx<'_>) {
        if self.reason.is_none() && self.exited_until.is_none() {
            self.reason = Some(Outcome::Abandoned);
        }
        self.finish(cx);
    }
}

impl<S: Sink> Drop for Runner<S> {
    fn drop(&mut self) {
        if let Some(mut sink) = self.sink.take() {
            kill_group(self.pid, libc::SIGKILL);
            let _ = self.child.wait();
            sink.finished(Finished {
                outcome: Outcome::Abandoned,
                stderr_tail: String::new(),
                stdout_bytes: self.stdout_bytes,
                elapsed: self.started.elapsed(),
            });
        }
    }
}

/// Durations in configuration: `"30s"`, `"250ms"`, `"2m"`, `"1h"`, or a
/// number of seconds. For `#[serde(with = "bindery_classes::exec::duration")]`.
pub mod duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    /// Parses `"30s"`, `"250ms"`, `"2m"`, `"1h"` or `"1.5"` (seconds).
    pub fn parse(text: &str) -> Result<Duration, String> {
        let text = text.trim();
        let split = text
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(text.len());
        let (number, unit) = text.split_at(split);
        let n: f64 = number
            .parse()
            .map_err(|_| format!("{text:?} is not a duration (30s, 250ms, 2m, 1h)"))?;
        let seconds = match unit.trim() {
            "" | "s" => n,
            "ms" => n / 1000.0,
            "m" => n * 60.0,
            "h" => n * 3600.0,
            other => return Err(format!("unknown unit {other:?} in {text:?} (ms, s, m, h)")),
        };
        Duration::try_from_secs_f64(seconds).map_err(|e| format!("{text:?}: {e}"))
    }

    /// Deserializes a duration (see [`parse`]).
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Written {
            Seconds(u64),
            Text(String),
        }
        match Written::deserialize(d)? {
            Written::Seconds(s) => Ok(Duration::from_secs(s)),
            Written::Text(t) => parse(&t).map_err(serde::de::Error::custom),
        }
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn units() {
            use std::time::Duration;
            assert_eq!(super::parse("30s"), Ok(Duration::from_secs(30)));
            assert_eq!(super::parse("250ms"), Ok(Duration::from_millis(250)));
            assert_eq!(super::parse("2m"), Ok(Duration::from_secs(120)));
            assert_eq!(super::parse("1.5"), Ok(Duration::from_millis(1500)));
            assert!(super::parse("soon").is_err());
            assert!(super::parse("5 days").is_err());
        }
    }
}
