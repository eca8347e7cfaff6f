//! A full disk must not wedge the durable queue (issue #21), over HTTP
//! with the real server.
//!
//! With a per-instance disk budget (everywhere) and on a small tmpfs
//! (where this process may mount one): publishes of 4 KB until refused
//! (503 with `Retry-After`), a drain with acks that are all taken,
//! publishing resuming by itself; then a restart on a full store (on the
//! tmpfs: a disk filled to the last byte by something else) that drains
//! too. No confirmed message is lost, none refused is delivered.

mod common;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{Server, TempDir, agent, config};

const BODY: usize = 4096;

/// The default configuration plus a file queue `small` at `/small/` with
/// `limits` (inline TOML fields) in `dir`.
fn small(dir: &str, limits: &str) -> String {
    config(&format!(
        "[instances.small]\nmodule = \"driver.filequeue\"\nbind = [\"/small/\"]\n\
         config = {{ dir = \"{dir}\", fsync = \"always\", {limits} }}\n"
    ))
}

struct Publish {
    status: u16,
    id: Option<String>,
    retry_after: Option<String>,
    reason: String,
}

fn publish(s: &Server, path: &str, body: &str) -> Publish {
    match agent()
        .post(&s.url(path))
        .set("Content-Type", "text/plain")
        .send_string(body)
    {
        Ok(r) => Publish {
            status: r.status(),
            id: r.header("Message-Id").map(str::to_owned),
            retry_after: None,
            reason: String::new(),
        },
        Err(ureq::Error::Status(status, r)) => Publish {
            status,
            id: None,
            retry_after: r.header("Retry-After").map(str::to_owned),
            reason: r.into_string().unwrap_or_default(),
        },
        Err(e) => panic!("transport error: {e}"),
    }
}

fn body(tag: &str, i: usize) -> String {
    let mut b = format!("{tag}-{i}-");
    b.extend(std::iter::repeat_n('.', BODY - b.len()));
    b
}

/// What filling a queue came to.
struct Filled {
    confirmed: HashMap<String, String>,
    refused: HashSet<String>,
    first_refusal: Publish,
}

/// Publishes 4 KB bodies until one is refused (at most `cap`), then two
/// more, which must be refused too.
fn fill(s: &Server, path: &str, tag: &str, cap: usize) -> Filled {
    let mut confirmed = HashMap::new();
    let mut refused = HashSet::new();
    let mut first_refusal = None;
    for i in 0..cap {
        let b = body(tag, i);
        let p = publish(s, path, &b);
        if p.status == 201 {
            confirmed.insert(p.id.clone().expect("a 201 without Message-Id"), b);
        } else {
            refused.insert(b);
            first_refusal = Some(p);
            break;
        }
    }
    let first_refusal =
        first_refusal.unwrap_or_else(|| panic!("{cap} publishes of {BODY} bytes, none refused"));
    assert_eq!(
        first_refusal.status, 503,
        "refused with {}: {}",
        first_refusal.status, first_refusal.reason
    );
    assert!(
        first_refusal.retry_after.is_some(),
        "a 503 without Retry-After: {}",
        first_refusal.reason
    );
    assert!(!confirmed.is_empty(), "the first publish was refused");
    for i in cap..cap + 2 {
        let b = body(tag, i);
        let p = publish(s, path, &b);
        assert_eq!(
            p.status, 503,
            "a publish after the first refusal: {}",
            p.status
        );
        refused.insert(b);
    }
    Filled {
        confirmed,
        refused,
        first_refusal,
    }
}

/// Takes and acks up to `most` messages; every ack must be answered 204.
fn drain(s: &Server, path: &str, most: usize) -> Vec<(String, String)> {
    let a = agent();
    let mut got = Vec::new();
    while got.len() < most {
        let r = a
            .get(&format!("{}?wait=1&lease=600", s.url(path)))
            .call()
            .expect("take");
        if r.status() == 204 {
            break;
        }
        let id = r.header("Message-Id").expect("Message-Id").to_owned();
        let b = r.into_string().unwrap();
        let acked = match a.delete(&s.url(&format!("{path}/messages/{id}"))).call() {
            Ok(r) => r.status(),
            Err(ureq::Error::Status(code, r)) => {
                panic!(
                    "the ack of {id} was refused ({code}): {}",
                    r.into_string().unwrap_or_default()
                )
            }
            Err(e) => panic!("transport error: {e}"),
        };
        assert_eq!(acked, 204, "the ack of {id}");
        got.push((id, b));
    }
    got
}

/// Every message taken was confirmed with that body, once; none refused.
fn check(filled: &Filled, got: &[(String, String)], seen: &mut HashSet<String>) {
    for (id, b) in got {
        assert!(!filled.refused.contains(b), "delivered a refused publish");
        assert_eq!(
            filled.confirmed.get(id),
            Some(b),
            "message {id} was not confirmed with this body"
        );
        assert!(seen.insert(id.clone()), "message {id} came twice");
    }
}

/// Publishes until one is taken again (bounded), then takes and acks it.
fn resumes(s: &Server, path: &str) {
    let mut last = None;
    for _ in 0..200 {
        let p = publish(s, path, "resumed");
        if p.status == 201 {
            let got = drain(s, path, 10);
            assert_eq!(got.len(), 1, "{got:?}");
            assert_eq!(got[0].1, "resumed");
            return;
        }
        assert_eq!(p.status, 503, "{}", p.reason);
        last = Some(p.reason);
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("publishes never resumed after the drain: {last:?}");
}

/// The `bindery_publishes_refused_total` of `/small/q`.
fn refused_metric(s: &Server) -> u64 {
    metric(s, "bindery_publishes_refused_total")
}

/// The series `name` of `/small/q` in `/metrics` (0 when absent).
fn metric(s: &Server, name: &str) -> u64 {
    let m = agent()
        .get(&s.url("/metrics"))
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    m.lines()
        .find(|l| l.starts_with(&format!("{name}{{")) && l.contains("destination=\"/small/q\""))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Bytes in journal segments under `dir`.
fn journal_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.path().extension().is_some_and(|x| x == "journal"))
        .map(|e| e.metadata().map_or(0, |m| m.len()))
        .sum()
}

#[test]
fn a_durable_queue_at_its_disk_budget_refuses_drains_resumes_and_restarts() {
    let dir = TempDir::new();
    let text = small(
        "bindery-data/small",
        "segment_bytes = 65536, min_free_bytes = 0, max_disk_bytes = 524288, reserve_bytes = 65536",
    );
    let data = dir.0.join("data").join("small");
    let s = Server::start_at(&dir.0, &text, &["--threads", "2"]);
    let a = fill(&s, "/small/q", "a", 1000);
    assert!(
        a.first_refusal.reason.contains("max_disk_bytes"),
        "{}",
        a.first_refusal.reason
    );
    assert!(refused_metric(&s) >= 3, "refusals not counted in /metrics");
    assert_eq!(
        metric(&s, "bindery_destination_store_full"),
        1,
        "full: the gauge says so"
    );
    let got = drain(&s, "/small/q", usize::MAX);
    let mut seen = HashSet::new();
    check(&a, &got, &mut seen);
    assert_eq!(seen.len(), a.confirmed.len(), "confirmed messages lost");
    resumes(&s, "/small/q");
    assert_eq!(
        metric(&s, "bindery_destination_store_full"),
        0,
        "resumed: the gauge says so"
    );
    assert!(
        journal_bytes(&data) < 200_000,
        "the drained journal kept its space"
    );

    // Full again, and restarted full.
    let b = fill(&s, "/small/q", "b", 1000);
    assert!(s.terminate().success());
    let s = Server::start_at(&dir.0, &text, &["--threads", "2"]);
    let p = publish(&s, "/small/q", "at start");
    assert_eq!(p.status, 503, "a full store took a publish at start");
    let got = drain(&s, "/small/q", usize::MAX);
    let mut seen = HashSet::new();
    check(&b, &got, &mut seen);
    assert_eq!(seen.len(), b.confirmed.len(), "confirmed messages lost");
    resumes(&s, "/small/q");
    assert!(s.terminate().success());
}

/// A tmpfs of `bytes` mounted at a new directory; unmounted when dropped.
struct Tmpfs {
    at: PathBuf,
    _dir: TempDir,
}

impl Tmpfs {
    fn mount(bytes: u64) -> Result<Tmpfs, String> {
        let dir = TempDir::new();
        let at = dir.0.join("tmpfs");
        std::fs::create_dir_all(&at).map_err(|e| e.to_string())?;
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={bytes},mode=0700"),
                "tmpfs",
            ])
            .arg(&at)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mount -t tmpfs failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(Tmpfs { at, _dir: dir })
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.at).status();
    }
}

/// Writes a file in `dir` until the disk refuses (at most `most` bytes).
fn fill_the_disk(dir: &Path, most: usize) -> usize {
    use std::io::Write;
    let mut f = std::fs::File::create(dir.join("ballast")).unwrap();
    let chunk = [0xa5u8; 4096];
    let mut n = 0;
    while n < most {
        match f.write(&chunk) {
            Ok(0) | Err(_) => break,
            Ok(k) => n += k,
        }
    }
    let _ = f.sync_all();
    n
}

#[test]
fn a_durable_queue_on_a_full_tmpfs_refuses_drains_restarts_and_resumes() {
    let fs = match Tmpfs::mount(4 << 20) {
        Ok(fs) => fs,
        Err(why) => {
            eprintln!("skipped the tmpfs variant (the budget variant runs everywhere): {why}");
            return;
        }
    };
    let dir = TempDir::new();
    let data = fs.at.join("small");
    let text = small(
        &data.display().to_string(),
        // Segments of 1 MiB: hundreds of acks before one is reclaimed, more
        // than the last page's slack holds, so they need the reserve.
        "segment_bytes = 1048576, min_free_bytes = 1048576, reserve_bytes = 262144",
    );
    let s = Server::start_at(&dir.0, &text, &["--threads", "2"]);
    assert!(data.join("ack-reserve").exists(), "no ack reserve");
    let a = fill(&s, "/small/q", "a", 2000);
    assert!(
        a.first_refusal.reason.contains("min_free_bytes"),
        "{}",
        a.first_refusal.reason
    );
    // Acks work while publishes are refused.
    let half = a.confirmed.len() / 2;
    let mut seen = HashSet::new();
    check(&a, &drain(&s, "/small/q", half), &mut seen);
    // Something else takes the rest of the disk, to the last byte.
    let ballast = fill_the_disk(&fs.at, 8 << 20);
    assert!(ballast > 0, "the ballast found no room at all");
    assert!(s.terminate().success());

    // Restarted on the full disk: acks still have room, the queue drains.
    let s = Server::start_at(&dir.0, &text, &["--threads", "2"]);
    assert_eq!(publish(&s, "/small/q", "at start").status, 503);
    let got = drain(&s, "/small/q", usize::MAX);
    check(&a, &got, &mut seen);
    let unseen: Vec<_> = a
        .confirmed
        .keys()
        .filter(|id| !seen.contains(*id))
        .collect();
    assert!(
        unseen.is_empty(),
        "{} confirmed messages lost",
        unseen.len()
    );
    assert!(
        journal_bytes(&data) < 200_000,
        "the drained journal kept its space"
    );
    // The acks gave the space back: publishes resume.
    resumes(&s, "/small/q");
    assert!(s.terminate().success());
}
