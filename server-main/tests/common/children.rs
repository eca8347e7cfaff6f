//! Children that tests run: scripts written on the fly, and whether the
//! processes they start are still there.

use std::path::{Path, PathBuf};
use std::process::{Child, Output};
use std::time::{Duration, Instant};

use super::Server;

/// A client process that is killed if the test ends before it does.
pub struct Reaped(pub Option<Child>);

impl Reaped {
    /// Keeps `c` until it is waited for or the test ends.
    pub fn new(c: Child) -> Reaped {
        Reaped(Some(c))
    }

    /// Waits for it to finish and takes what it printed.
    pub fn output(mut self) -> Output {
        self.0.take().unwrap().wait_with_output().unwrap()
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A finished client's exit status and output, for assertion messages.
pub fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Waits (up to ten seconds) until `destination` has a subscriber.
pub fn subscribed(s: &Server, destination: &str) {
    let labels = format!("destination=\"{destination}\"");
    for _ in 0..200 {
        if super::metric(s, "bindery_destination_consumers", &labels).is_some_and(|n| n > 0) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("nobody subscribed to {destination}");
}

/// Writes an executable shell script `name` into `dir`.
pub fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt as _;
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// Whether process `pid` exists (a zombie counts as gone).
pub fn alive(pid: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{}/stat", pid.trim()))
        .map(|s| !s.contains(") Z "))
        .unwrap_or(false)
}

/// Waits up to 20 s for `f`; says whether it came true.
pub fn eventually(mut f: impl FnMut() -> bool) -> bool {
    let until = Instant::now() + Duration::from_secs(20);
    while Instant::now() < until {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}
