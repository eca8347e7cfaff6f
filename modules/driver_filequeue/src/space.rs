//! Disk space: when publishes are refused, and when they resume.
//!
//! A publish is admitted only while, after its record, the journal's
//! filesystem keeps `min_free_bytes` free and the journal stays within
//! `max_disk_bytes` (if set). Acks are never refused for space: they are
//! what gives space back, so they write into the room the threshold leaves
//! and, on a disk that is full anyway (something else filled it, or the
//! instance restarted on it), into the ack reserve the writer releases
//! (see [`crate::journal`]).
//!
//! Admission is decided under the journal's queue lock from counters, not
//! a system call per record: the budget counts journal bytes on disk and
//! queued for it exactly; free space is the writer's last `statvfs`
//! (taken at most every few milliseconds) less the bytes written and
//! queued since. The first refusal sets the instance refusing (one warning
//! in the log); every publish is then refused at once until the writer,
//! measuring again, finds space back with a margin (one info line).
//!
//! A failed `fsync` is different: the kernel may have dropped the pages
//! whose write-back failed (PostgreSQL's "fsyncgate"), so what the journal
//! holds is unknown. The instance then refuses every write, publishes and
//! acks, with the reason, until it is restarted and its journal recovered.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bindery::{Failure, FailureKind};
use parking_lot::Mutex;

/// How long a refused publisher is told to wait.
pub(crate) const RETRY_AFTER: Duration = Duration::from_secs(1);

/// Limits on one instance's disk use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Limits {
    /// Publishes are refused while the filesystem would have less free.
    pub(crate) min_free_bytes: u64,
    /// Publishes are refused once the journal would pass this size.
    pub(crate) max_disk_bytes: Option<u64>,
    /// Bytes kept in a file of their own for acks on a full disk.
    pub(crate) reserve_bytes: u64,
}

/// The slack past a limit that space must come back by before publishes
/// resume, so that one publish does not flip the state back and forth.
pub(crate) fn margin(limit: u64) -> u64 {
    (limit / 8).min(4 << 20)
}

#[derive(Default)]
struct State {
    /// Why publishes are refused, while they are.
    refusal: Option<Failure>,
    /// Why every write is refused, once the journal cannot be trusted.
    fatal: Option<String>,
}

/// What the journal of one instance uses, and whether it takes publishes.
pub(crate) struct Space {
    dir: PathBuf,
    pub(crate) limits: Limits,
    /// Journal bytes on disk or queued for it: what the budget counts.
    used: AtomicU64,
    /// Bytes accepted for writing, ever (less those whose write failed).
    appended: AtomicU64,
    /// Free bytes on the filesystem at the writer's last measurement.
    free_seen: AtomicU64,
    /// `appended` as far as it was written at that measurement.
    written_at_seen: AtomicU64,
    refusing: AtomicBool,
    state: Mutex<State>,
    /// Told when publishes start or stop being refused for space.
    on_full: Box<dyn Fn(bool) + Send + Sync>,
}

impl Space {
    /// Space for a journal in `dir` that holds `used` bytes now.
    /// `on_full` is told when publishes start (true) or stop (false) being
    /// refused for space; it must take no lock a caller of
    /// [`Space::admit`] holds.
    pub(crate) fn new(
        dir: PathBuf,
        limits: Limits,
        used: u64,
        on_full: Box<dyn Fn(bool) + Send + Sync>,
    ) -> Space {
        Space {
            dir,
            limits,
            used: AtomicU64::new(used),
            appended: AtomicU64::new(0),
            free_seen: AtomicU64::new(u64::MAX),
            written_at_seen: AtomicU64::new(0),
            refusing: AtomicBool::new(false),
            state: Mutex::new(State::default()),
            on_full,
        }
    }

    /// Journal bytes on disk or queued for it.
    pub(crate) fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// Free bytes on the filesystem, as far as the journal knows.
    pub(crate) fn free(&self) -> u64 {
        let since = self
            .appended
            .load(Ordering::Relaxed)
            .saturating_sub(self.written_at_seen.load(Ordering::Relaxed));
        self.free_seen.load(Ordering::Relaxed).saturating_sub(since)
    }

    /// Whether publishes are refused now, and why.
    pub(crate) fn refusal(&self) -> Option<Failure> {
        if !self.refusing.load(Ordering::Acquire) {
            return None;
        }
        let s = self.state.lock();
        if let Some(why) = &s.fatal {
            return Some(Failure::new(FailureKind::Unavailable, why.clone()));
        }
        s.refusal.clone()
    }

    /// Why every write is refused, if the journal cannot be trusted.
    pub(crate) fn fatal(&self) -> Option<Failure> {
        if !self.refusing.load(Ordering::Acquire) {
            return None;
        }
        let s = self.state.lock();
        s.fatal
            .as_ref()
            .map(|why| Failure::new(FailureKind::Unavailable, why.clone()))
    }

    /// Admits a publish record of `len` bytes, or refuses it (and from
    /// now on every publish, until space comes back). Called under the
    /// journal's queue lock, so admissions are counted one at a time.
    pub(crate) fn admit(&self, len: u64) -> Result<(), Failure> {
        if let Some(f) = self.refusal() {
            return Err(f);
        }
        let used = self.used();
        if let Some(max) = self.limits.max_disk_bytes {
            if used.saturating_add(len) > max {
                return Err(self.refuse(format!(
                    "the journal in {} holds {used} bytes and max_disk_bytes is {max}",
                    self.dir.display()
                )));
            }
        }
        let free = self.free();
        if free < self.limits.min_free_bytes.saturating_add(len) {
            return Err(self.refuse(format!(
                "{free} bytes free on the filesystem of {}, min_free_bytes is {}",
                self.dir.display(),
                self.limits.min_free_bytes
            )));
        }
        Ok(())
    }

    /// Counts a record of `len` bytes queued for writing.
    pub(crate) fn appended(&self, len: u64) {
        self.used.fetch_add(len, Ordering::Relaxed);
        self.appended.fetch_add(len, Ordering::Relaxed);
    }

    /// Uncounts `len` queued bytes whose write failed and was cut off.
    pub(crate) fn unwritten(&self, len: u64) {
        sub(&self.used, len);
        sub(&self.appended, len);
    }

    /// Uncounts a deleted segment of `len` bytes.
    pub(crate) fn deleted(&self, len: u64) {
        sub(&self.used, len);
    }

    /// Records a measurement: `free` bytes free with `written` bytes
    /// written so far (by the writer, the only one that writes).
    pub(crate) fn measured(&self, free: u64, written: u64) {
        self.free_seen.store(free, Ordering::Relaxed);
        self.written_at_seen.store(written, Ordering::Relaxed);
    }

    /// Starts refusing publishes (logged once) and returns the refusal.
    pub(crate) fn refuse(&self, why: String) -> Failure {
        let mut s = self.state.lock();
        if let Some(f) = s.refusal.clone() {
            return f;
        }
        tracing::warn!(
            dir = %self.dir.display(),
            used = self.used(),
            free = self.free(),
            "publishes refused until space comes back: {why}"
        );
        let f =
            Failure::new(FailureKind::Full, format!("store full: {why}")).retry_after(RETRY_AFTER);
        s.refusal = Some(f.clone());
        self.refusing.store(true, Ordering::Release);
        if s.fatal.is_none() {
            (self.on_full)(true);
        }
        f
    }

    /// Whether publishes are refused for space (not for a fatal fault).
    pub(crate) fn refusing_for_space(&self) -> bool {
        self.refusing.load(Ordering::Acquire) && self.state.lock().fatal.is_none()
    }

    /// Resumes publishes (logged) if they were refused for space.
    pub(crate) fn resume(&self) {
        let mut s = self.state.lock();
        if s.fatal.is_some() || s.refusal.take().is_none() {
            return;
        }
        self.refusing.store(false, Ordering::Release);
        (self.on_full)(false);
        tracing::info!(
            dir = %self.dir.display(),
            used = self.used(),
            free = self.free(),
            "space is back: publishes resumed"
        );
    }

    /// Whether there is room enough, with margins, to resume publishes;
    /// `extra` is what must be free beyond the threshold (the ack reserve
    /// while it is released).
    pub(crate) fn room_to_resume(&self, extra: u64) -> bool {
        let l = &self.limits;
        let budget = l
            .max_disk_bytes
            .is_none_or(|max| self.used().saturating_add(margin(max)) <= max);
        let want = l
            .min_free_bytes
            .saturating_add(margin(l.min_free_bytes))
            .saturating_add(extra);
        budget && self.free() >= want
    }

    /// What the journal uses and the disk has, against the limits, for a
    /// refusal at start.
    pub(crate) fn shortage(&self) -> String {
        format!(
            "at start the journal in {} holds {} bytes (max_disk_bytes {}) and {} bytes are free (min_free_bytes {})",
            self.dir.display(),
            self.used(),
            self.limits
                .max_disk_bytes
                .map_or("none".to_string(), |m| m.to_string()),
            self.free(),
            self.limits.min_free_bytes
        )
    }

    /// Refuses every write from now on, for `why` (logged as an error).
    pub(crate) fn fail(&self, why: String) {
        let mut s = self.state.lock();
        if s.fatal.is_some() {
            return;
        }
        tracing::error!(
            dir = %self.dir.display(),
            "{why}; the instance refuses every write until it is restarted (its journal is then recovered)"
        );
        let was_full = s.refusal.is_some();
        s.fatal = Some(format!(
            "{why}; the instance refuses writes until it is restarted"
        ));
        self.refusing.store(true, Ordering::Release);
        if was_full {
            // Refused now for a fault, not for space.
            (self.on_full)(false);
        }
    }
}

fn sub(a: &AtomicU64, n: u64) {
    let _ = a.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
        Some(v.saturating_sub(n))
    });
}

/// Bytes available to unprivileged writers on the filesystem of `dir`.
#[cfg(unix)]
pub(crate) fn free_bytes(dir: &Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).map_err(|_| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{} holds a NUL byte", dir.display()),
        )
    })?;
    // SAFETY: statvfs only writes the struct it is given, which is plain
    // old data, and reads the NUL-terminated path.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above; both pointers are valid for the call.
    if unsafe { libc::statvfs(path.as_ptr(), &mut s) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    #[allow(clippy::unnecessary_cast)]
    Ok((s.f_bavail as u64).saturating_mul(s.f_frsize as u64))
}

/// Elsewhere free space is not measured: only the budget applies.
#[cfg(not(unix))]
pub(crate) fn free_bytes(_dir: &Path) -> std::io::Result<u64> {
    Ok(u64::MAX)
}

/// Whether `e` says the disk (or the quota) is full.
pub(crate) fn is_no_space(e: &std::io::Error) -> bool {
    #[cfg(unix)]
    if matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT)) {
        return true;
    }
    e.kind() == std::io::ErrorKind::StorageFull
}
