//! Crash test: confirmed publishes to a durable queue survive `kill -9`.
//!
//! Twenty cycles of: start the server, publish from several clients and
//! consume with acks, kill it with SIGKILL at a pseudo-random moment. Then
//! a last start drains the queue. Every confirmed message is delivered at
//! least once; no message appears that no client sent; no message whose
//! ack was answered comes back. `CRASH_CYCLES=N` runs more.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Server, TempDir, config};

#[derive(Default)]
struct Ledger {
    /// Every body a client tried to publish.
    attempted: HashSet<String>,
    /// Message id -> body, for publishes answered 201.
    confirmed: HashMap<String, String>,
    /// (message id, body, cycle) for every delivery.
    delivered: Vec<(String, String, usize)>,
    /// Message id -> the cycle whose DELETE was answered 204.
    acked: HashMap<String, usize>,
}

fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(3))
        .build()
}

/// Takes and acks one message; `false` when there was none or the server is gone.
fn take_one(a: &ureq::Agent, base: &str, ledger: &Mutex<Ledger>, cycle: usize, wait: &str) -> bool {
    let Ok(r) = a
        .get(&format!("{base}/durable/crash?wait={wait}&lease=60"))
        .call()
    else {
        return false;
    };
    if r.status() != 200 {
        return false;
    }
    let id = r.header("Message-Id").unwrap_or_default().to_owned();
    let Ok(body) = r.into_string() else {
        return false;
    };
    ledger
        .lock()
        .unwrap()
        .delivered
        .push((id.clone(), body, cycle));
    if let Ok(d) = a
        .delete(&format!("{base}/durable/crash/messages/{id}"))
        .call()
    {
        if d.status() == 204 {
            ledger.lock().unwrap().acked.insert(id, cycle);
        }
    }
    true
}

#[test]
fn confirmed_messages_survive_kill_9_and_acked_ones_stay_gone() {
    let cycles: usize = std::env::var("CRASH_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let dir = TempDir::new();
    let text = config("");
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    for cycle in 0..cycles {
        let server = Server::start_at(&dir.0, &text, &["--threads", "2"]);
        let base = format!("http://{}", server.addr);
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for p in 0..3 {
            let (base, stop, ledger) = (base.clone(), stop.clone(), ledger.clone());
            threads.push(std::thread::spawn(move || {
                let a = agent();
                for n in 0..100_000 {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    let body = format!("c{cycle}-p{p}-{n}");
                    ledger.lock().unwrap().attempted.insert(body.clone());
                    let r = a
                        .post(&format!("{base}/durable/crash"))
                        .set("Content-Type", "text/plain")
                        .send_string(&body);
                    match r {
                        Ok(r) if r.status() == 201 => {
                            let id = r.header("Message-Id").unwrap_or_default().to_owned();
                            ledger.lock().unwrap().confirmed.insert(id, body);
                        }
                        _ => return,
                    }
                }
            }));
        }
        {
            let (base, stop, ledger) = (base.clone(), stop.clone(), ledger.clone());
            threads.push(std::thread::spawn(move || {
                let a = agent();
                while !stop.load(Ordering::Relaxed) {
                    if !take_one(&a, &base, &ledger, cycle, "0.2")
                        && a.get(&format!("{base}/healthz")).call().is_err()
                    {
                        return;
                    }
                }
            }));
        }
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        std::thread::sleep(Duration::from_millis(100 + (seed >> 33) % 300));
        server.kill9();
        stop.store(true, Ordering::Relaxed);
        for t in threads {
            t.join().unwrap();
        }
    }
    // The last start drains what is left.
    let server = Server::start_at(&dir.0, &text, &["--threads", "2"]);
    let base = format!("http://{}", server.addr);
    let a = agent();
    while take_one(&a, &base, &ledger, cycles, "1") {}
    drop(server);

    let l = ledger.lock().unwrap();
    assert!(
        l.confirmed.len() > cycles * 10,
        "too few publishes to mean anything: {}",
        l.confirmed.len()
    );
    let delivered_ids: HashSet<&String> = l.delivered.iter().map(|(id, _, _)| id).collect();
    let lost: Vec<_> = l
        .confirmed
        .keys()
        .filter(|id| !delivered_ids.contains(id))
        .collect();
    assert!(
        lost.is_empty(),
        "{} confirmed messages never delivered, e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );
    for (id, body, cycle) in &l.delivered {
        assert!(
            l.attempted.contains(body),
            "delivered {id} with body {body:?} that no client sent"
        );
        if let Some(want) = l.confirmed.get(id) {
            assert_eq!(body, want, "message {id} changed");
        }
        if let Some(&acked_in) = l.acked.get(id) {
            assert!(
                *cycle <= acked_in,
                "message {id} was acked in cycle {acked_in} and came back in cycle {cycle}"
            );
        }
    }
    eprintln!(
        "crash test: {cycles} kills, {} attempted, {} confirmed, {} deliveries, {} acked",
        l.attempted.len(),
        l.confirmed.len(),
        l.delivered.len(),
        l.acked.len()
    );
}
