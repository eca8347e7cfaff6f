//! Unit and property tests: reclamation, recovery from torn and corrupted
//! journals.
//!
//! Longer than most files here: the durable queue's unit and property
//! tests, including injected faults.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bindery::{Completion, Failure, FailureKind};
use bindery_classes::driver::SubscribeOptions;
use bindery_classes::{Consumer, Delivery, Driver, Message, MessageId};
use proptest::prelude::*;

use super::*;

pub(crate) struct TempDir(pub(crate) PathBuf);

impl TempDir {
    pub(crate) fn new(tag: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "filequeue-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn config(dir: &Path) -> Config {
    Config {
        dir: dir.to_owned(),
        fsync: Fsync::Never,
        segment_bytes: 4096,
        reserve_bytes: 64 * 1024,
        ..Config::default()
    }
}

fn publish(q: &FileQueue, dest: &str, body: Vec<u8>) -> Result<MessageId, Failure> {
    let (done, rx) = Completion::channel();
    q.publish(Message::new(dest, "application/octet-stream", body), done);
    rx.recv().unwrap().map(|r| r.id)
}

fn ack(q: &FileQueue, dest: &str, id: MessageId) -> Result<(), Failure> {
    let (done, rx) = Completion::channel();
    q.ack(dest, id, done);
    rx.recv().unwrap()
}

/// Takes every waiting message of `dest`, acking when `ack_it` says so.
fn drain(q: &FileQueue, dest: &str, ack_it: impl Fn(usize) -> bool) -> Vec<Message> {
    let (c, rx) = Consumer::channel();
    let _sub = q
        .subscribe(
            dest,
            c,
            SubscribeOptions {
                credit: u32::MAX,
                lease: Duration::from_secs(600),
            },
        )
        .unwrap();
    let mut out = Vec::new();
    while let Ok(Delivery::Message(m)) = rx.recv_timeout(Duration::from_millis(200)) {
        if ack_it(out.len()) {
            ack(q, dest, m.id).unwrap();
        }
        out.push(m);
    }
    out
}

fn segment_files(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "journal")
        })
        .count()
}

#[test]
fn disk_use_stays_bounded_under_steady_publish_and_ack() {
    let dir = TempDir::new("bounded");
    let q = FileQueue::open(config(&dir.0)).unwrap();
    let (c, rx) = Consumer::channel();
    let sub = q
        .subscribe(
            "/d/steady",
            c,
            SubscribeOptions {
                credit: 10,
                lease: Duration::from_secs(60),
            },
        )
        .unwrap();
    let mut most = 0;
    for i in 0..5000u32 {
        publish(&q, "/d/steady", vec![b'x'; 100 + (i % 50) as usize]).unwrap();
        if let Ok(Delivery::Message(m)) = rx.recv_timeout(Duration::from_secs(5)) {
            ack(&q, "/d/steady", m.id).unwrap();
            sub.credit(1);
        }
        most = most.max(segment_files(&dir.0));
    }
    // 5000 records of ~130 bytes is ~160 segments of 4 KiB; at most a few
    // are ever on disk.
    assert!(most <= 4, "{most} segments on disk at once");
    assert!(q.segments() <= 3, "{} segments tracked", q.segments());
}

#[test]
fn messages_and_acks_survive_reopening() {
    let dir = TempDir::new("reopen");
    let mut sent = Vec::new();
    {
        let q = FileQueue::open(config(&dir.0)).unwrap();
        for i in 0..100u32 {
            sent.push(publish(&q, "/d/r", i.to_le_bytes().to_vec()).unwrap());
        }
        let got = drain(&q, "/d/r", |n| n % 2 == 0);
        assert_eq!(got.len(), 100);
    }
    let q = FileQueue::open(config(&dir.0)).unwrap();
    let back = drain(&q, "/d/r", |_| true);
    let want: Vec<MessageId> = sent.iter().copied().skip(1).step_by(2).collect();
    assert_eq!(back.iter().map(|m| m.id).collect::<Vec<_>>(), want);
    assert_eq!(back[0].body[..], 1u32.to_le_bytes());
    drop(q);
    let q = FileQueue::open(config(&dir.0)).unwrap();
    assert!(
        drain(&q, "/d/r", |_| true).is_empty(),
        "acked messages came back"
    );
}

/// Segment files by name, and every message published by id.
type Sample = (Vec<(String, Vec<u8>)>, HashMap<MessageId, Vec<u8>>);

/// A journal made by a real instance: 60 messages of varied sizes, some
/// acked; returns its segment bytes and every message by id.
fn sample_journal() -> Sample {
    let dir = TempDir::new("sample");
    let mut all = HashMap::new();
    {
        let q = FileQueue::open(Config {
            segment_bytes: 8192,
            ..config(&dir.0)
        })
        .unwrap();
        for i in 0..60u32 {
            let body: Vec<u8> = (0..(i * 37 % 700)).map(|k| (k * 13 + i) as u8).collect();
            let id = publish(&q, "/d/s", body.clone()).unwrap();
            all.insert(id, body);
        }
        drain(&q, "/d/s", |n| n % 3 == 0);
    }
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir.0)
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect();
    files.sort();
    (files, all)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, failure_persistence: None, ..ProptestConfig::default() })]

    /// Truncated at any offset and with bits flipped anywhere, a journal
    /// recovers without panicking and yields only intact messages.
    #[test]
    fn torn_and_corrupted_journals_recover_only_intact_messages(
        cut_at in any::<prop::sample::Index>(),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), 0u8..8), 0..4),
        which in any::<prop::sample::Index>(),
    ) {
        let (files, all) = sample_journal_cached();
        let dir = TempDir::new("damaged");
        std::fs::create_dir_all(&dir.0).unwrap();
        let victim = which.index(files.len());
        for (i, (name, bytes)) in files.iter().enumerate() {
            let mut bytes = bytes.clone();
            if i == victim && !bytes.is_empty() {
                bytes.truncate(cut_at.index(bytes.len() + 1));
                for (at, bit) in &flips {
                    if !bytes.is_empty() {
                        let k = at.index(bytes.len());
                        bytes[k] ^= 1 << bit;
                    }
                }
            }
            std::fs::write(dir.0.join(name), bytes).unwrap();
        }
        let recovered = recover::recover(&dir.0).unwrap();
        for (m, _) in &recovered.live {
            let original = all.get(&m.id);
            prop_assert!(original.is_some(), "recovered a message never published: {}", m.id);
            prop_assert_eq!(&m.body[..], &original.unwrap()[..], "message {} changed", m.id);
        }
        // And the instance opens on it and takes new messages.
        let q = FileQueue::open(config(&dir.0)).unwrap();
        prop_assert!(publish(&q, "/d/s", b"after".to_vec()).is_ok());
    }
}

fn sample_journal_cached() -> &'static Sample {
    static SAMPLE: std::sync::OnceLock<Sample> = std::sync::OnceLock::new();
    SAMPLE.get_or_init(sample_journal)
}

#[test]
fn an_undamaged_journal_recovers_exactly_the_unacked_messages() {
    let (files, all) = sample_journal_cached();
    let dir = TempDir::new("intact");
    std::fs::create_dir_all(&dir.0).unwrap();
    for (name, bytes) in files {
        std::fs::write(dir.0.join(name), bytes).unwrap();
    }
    let r = recover::recover(&dir.0).unwrap();
    assert!(r.fault.is_none());
    assert_eq!(r.live.len(), 40, "60 published, 20 acked");
    assert!(r.live.iter().all(|(m, _)| all[&m.id] == m.body[..]));
}

/// A configuration whose only space limit is a journal budget of `budget`.
fn budgeted(dir: &Path, budget: u64) -> Config {
    Config {
        segment_bytes: 8192,
        min_free_bytes: 0,
        max_disk_bytes: Some(budget),
        reserve_bytes: 0,
        ..config(dir)
    }
}

/// Publishes 1 KiB messages until one is refused (at most `cap`); returns
/// what was confirmed and the refusal.
fn fill(q: &FileQueue, dest: &str, cap: usize) -> (Vec<MessageId>, Failure) {
    let mut confirmed = Vec::new();
    for i in 0..cap {
        match publish(q, dest, vec![i as u8; 1024]) {
            Ok(id) => confirmed.push(id),
            Err(f) => return (confirmed, f),
        }
    }
    panic!("{cap} publishes of 1 KiB and none refused");
}

/// Waits (bounded) for publishes to be taken again.
fn resumed(q: &FileQueue) -> bool {
    for _ in 0..500 {
        if q.refusal().is_none() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

fn refused(q: &FileQueue, dest: &str) -> u64 {
    q.stats()
        .iter()
        .filter(|s| s.destination == dest)
        .map(|s| s.refused)
        .sum()
}

#[test]
fn past_its_budget_it_refuses_publishes_takes_acks_and_resumes() {
    let dir = TempDir::new("budget");
    let q = FileQueue::open(budgeted(&dir.0, 64 * 1024)).unwrap();
    let (confirmed, refusal) = fill(&q, "/d/b", 1000);
    assert_eq!(refusal.kind, FailureKind::Full, "{refusal}");
    assert!(refusal.retry_after.is_some(), "no retry hint: {refusal}");
    assert!(refusal.reason.contains("max_disk_bytes"), "{refusal}");
    assert!(
        confirmed.len() > 40,
        "only {} fit in 64 KiB",
        confirmed.len()
    );
    assert!(
        q.journal_bytes() <= 64 * 1024,
        "{} bytes",
        q.journal_bytes()
    );
    // Refused from now on, and counted.
    assert!(publish(&q, "/d/b", b"small".to_vec()).is_err());
    assert!(refused(&q, "/d/b") >= 2);
    // Acks have room: everything confirmed comes back, once.
    let got = drain(&q, "/d/b", |_| true);
    assert_eq!(
        got.iter().map(|m| m.id).collect::<Vec<_>>(),
        confirmed,
        "the drain differs from what was confirmed"
    );
    assert!(resumed(&q), "publishes never resumed: {:?}", q.refusal());
    assert!(q.journal_bytes() < 16 * 1024, "{} bytes", q.journal_bytes());
    let id = publish(&q, "/d/b", b"after".to_vec()).unwrap();
    let back = drain(&q, "/d/b", |_| true);
    assert_eq!(back.iter().map(|m| m.id).collect::<Vec<_>>(), vec![id]);
}

#[test]
fn restarted_past_its_budget_it_drains_and_resumes() {
    let dir = TempDir::new("budget-restart");
    let (confirmed, _) = {
        let q = FileQueue::open(budgeted(&dir.0, 64 * 1024)).unwrap();
        fill(&q, "/d/r", 1000)
    };
    let q = FileQueue::open(budgeted(&dir.0, 64 * 1024)).unwrap();
    assert!(
        q.refusal().is_some(),
        "a full journal took publishes at start"
    );
    assert!(publish(&q, "/d/r", vec![0; 1024]).is_err());
    let got = drain(&q, "/d/r", |_| true);
    assert_eq!(got.iter().map(|m| m.id).collect::<Vec<_>>(), confirmed);
    assert!(resumed(&q), "publishes never resumed: {:?}", q.refusal());
    publish(&q, "/d/r", b"after".to_vec()).unwrap();
    drop(q);
    let q = FileQueue::open(budgeted(&dir.0, 64 * 1024)).unwrap();
    let back = drain(&q, "/d/r", |_| true);
    assert_eq!(back.len(), 1, "acked messages came back");
}

#[test]
fn a_full_disk_cuts_the_partial_record_and_acks_go_into_the_reserve() {
    use std::sync::atomic::{AtomicBool, AtomicU64};
    let dir = TempDir::new("enospc");
    let faults = Arc::new(journal::Faults {
        room: AtomicU64::new(u64::MAX),
        sync_fails: AtomicBool::new(false),
    });
    let config = Config {
        segment_bytes: 1 << 20,
        min_free_bytes: 0,
        reserve_bytes: 8192,
        ..config(&dir.0)
    };
    let q =
        FileQueue::open_with(config.clone(), Scope::detached("q"), Some(faults.clone())).unwrap();
    assert!(dir.0.join(journal::RESERVE).exists(), "no ack reserve");
    let confirmed: Vec<MessageId> = (0..10)
        .map(|i| publish(&q, "/d/f", vec![i; 1024]).unwrap())
        .collect();
    // The disk fills mid-record: the publish fails, not fatally.
    faults.room.store(100, Ordering::Relaxed);
    let f = publish(&q, "/d/f", vec![9; 1024]).unwrap_err();
    assert_eq!(f.kind, FailureKind::Full, "{f}");
    assert!(f.retry_after.is_some());
    assert!(
        publish(&q, "/d/f", b"x".to_vec()).is_err(),
        "took a publish on a full disk"
    );
    // The acks find no room, take the reserve's, and are written.
    let got = drain(&q, "/d/f", |_| true);
    assert_eq!(got.iter().map(|m| m.id).collect::<Vec<_>>(), confirmed);
    assert!(
        !dir.0.join(journal::RESERVE).exists(),
        "the reserve was not given back"
    );
    // Space comes back: the reserve is set aside again, publishes resume.
    faults.room.store(u64::MAX, Ordering::Relaxed);
    assert!(resumed(&q), "publishes never resumed: {:?}", q.refusal());
    assert!(
        dir.0.join(journal::RESERVE).exists(),
        "the reserve was not set aside again"
    );
    let after = publish(&q, "/d/f", b"after".to_vec()).unwrap();
    drop(q);
    // The journal ends in whole records: no fault, nothing acked came back.
    let r = recover::recover(&dir.0).unwrap();
    assert!(
        r.fault.is_none(),
        "a partial record was left: {:?}",
        r.fault
    );
    let live: Vec<MessageId> = r.live.iter().map(|(m, _)| m.id).collect();
    assert_eq!(live, vec![after]);
}

#[test]
fn a_failed_fsync_refuses_every_write_until_a_restart() {
    use std::sync::atomic::{AtomicBool, AtomicU64};
    let dir = TempDir::new("fsyncgate");
    let faults = Arc::new(journal::Faults {
        room: AtomicU64::new(u64::MAX),
        sync_fails: AtomicBool::new(false),
    });
    let config = Config {
        fsync: Fsync::Always,
        min_free_bytes: 0,
        reserve_bytes: 0,
        ..config(&dir.0)
    };
    let q =
        FileQueue::open_with(config.clone(), Scope::detached("q"), Some(faults.clone())).unwrap();
    let kept = publish(&q, "/d/s", b"kept".to_vec()).unwrap();
    let (c, rx) = Consumer::channel();
    let _sub = q
        .subscribe(
            "/d/s",
            c,
            SubscribeOptions {
                credit: 10,
                lease: Duration::from_secs(600),
            },
        )
        .unwrap();
    let Ok(Delivery::Message(m)) = rx.recv_timeout(Duration::from_secs(10)) else {
        panic!("no delivery")
    };
    faults.sync_fails.store(true, Ordering::Relaxed);
    let f = publish(&q, "/d/s", b"lost".to_vec()).unwrap_err();
    assert_eq!(f.kind, FailureKind::Unavailable, "{f}");
    assert!(f.reason.contains("fsync"), "{f}");
    // The sync works again, but the journal cannot be trusted: still refused.
    faults.sync_fails.store(false, Ordering::Relaxed);
    let f = publish(&q, "/d/s", b"later".to_vec()).unwrap_err();
    assert!(f.reason.contains("restarted"), "{f}");
    assert!(
        ack(&q, "/d/s", m.id).is_err(),
        "an ack was taken after a failed fsync"
    );
    assert!(q.refusal().is_some());
    drop(_sub);
    drop(q);
    // A restart recovers and takes writes again.
    let q = FileQueue::open(config).unwrap();
    let back = drain(&q, "/d/s", |_| true);
    assert_eq!(back[0].id, kept);
    publish(&q, "/d/s", b"again".to_vec()).unwrap();
}
