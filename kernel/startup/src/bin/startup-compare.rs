//! Times start-up binaries against their baselines in one run, for
//! `scripts/bench-startup`: every round starts each binary once (spawn to
//! exit, in an order rotated each round, so that a busy spell of the
//! machine falls on all of them), then prints, per pair, the minimum and
//! median of each and what the registrations add (difference of minima,
//! and of medians) as a Markdown table.
//!
//! ```text
//! startup-compare ROUNDS LABEL=REGISTERED:EMPTY [LABEL=REGISTERED:EMPTY ...]
//! ```

use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

struct Pair {
    label: String,
    registered: String,
    empty: String,
    times: [Vec<Duration>; 2],
}

fn start(path: &str) -> Result<Duration, String> {
    let t = Instant::now();
    let status = Command::new(path)
        .status()
        .map_err(|e| format!("{path}: {e}"))?;
    let took = t.elapsed();
    if !status.success() {
        return Err(format!("{path}: {status}"));
    }
    Ok(took)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort_unstable();
    v[v.len() / 2]
}

fn run() -> Result<(), String> {
    let usage = "usage: startup-compare ROUNDS LABEL=REGISTERED:EMPTY ...";
    let mut args = std::env::args().skip(1);
    let rounds: usize = args
        .next()
        .and_then(|r| r.parse().ok())
        .filter(|&r| r > 0)
        .ok_or(usage)?;
    let mut pairs = Vec::new();
    for a in args {
        let (label, paths) = a.split_once('=').ok_or(usage)?;
        let (registered, empty) = paths.split_once(':').ok_or(usage)?;
        pairs.push(Pair {
            label: label.to_owned(),
            registered: registered.to_owned(),
            empty: empty.to_owned(),
            times: [Vec::with_capacity(rounds), Vec::with_capacity(rounds)],
        });
    }
    if pairs.is_empty() {
        return Err(usage.into());
    }
    let slots = pairs.len() * 2;
    for round in 0..rounds {
        for k in 0..slots {
            let slot = (k + round) % slots;
            let p = &mut pairs[slot / 2];
            let path = if slot % 2 == 0 {
                &p.registered
            } else {
                &p.empty
            };
            let took = start(path)?;
            p.times[slot % 2].push(took);
        }
    }
    println!(
        "| backend, link | empty: min / median | registered: min / median | added (minima) | added (medians) |"
    );
    println!("|---|---|---|---|---|");
    for p in &mut pairs {
        let [r, e] = &mut p.times;
        let (rmin, emin) = (r.iter().min().copied(), e.iter().min().copied());
        let (rmin, emin) = (rmin.unwrap_or_default(), emin.unwrap_or_default());
        let (rmed, emed) = (median(r), median(e));
        println!(
            "| {} | {:.2} / {:.2} ms | {:.2} / {:.2} ms | {:+.2} ms | {:+.2} ms |",
            p.label,
            ms(emin),
            ms(emed),
            ms(rmin),
            ms(rmed),
            ms(rmin) - ms(emin),
            ms(rmed) - ms(emed)
        );
    }
    println!("({rounds} rounds)");
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}
