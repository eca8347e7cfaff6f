//! `bindery-bench`: load for MQTT 3.1.1 and AMQP 0-9-1 brokers — Bindery
//! or any other.
//!
//! Scenarios, each bounded in messages and in time:
//! - `throughput`: one publisher, one subscriber (1 -> 1);
//! - `fanout`: one publisher, N subscribers (1 -> N);
//! - `fanin`: N publishers, one subscriber (N -> 1);
//! - `stalled`: one publisher, N subscribers that read, and one more that
//!   subscribes and then never reads (a small receive buffer): the rate is
//!   what the N healthy ones get, to set beside `fanout`;
//! - `pairs`: `--clients` publisher/subscriber pairs at once, each on its
//!   own topic, each moving `--count` (what a server does with more than
//!   one core: run it with `--threads 1` and `--threads 2`);
//! - `latency`: ping-pong round trips, with percentiles (hdrhistogram);
//! - `confirm`: publish and confirm (QoS 1 PUBACK), no subscriber: the
//!   rate with up to `--window` in flight, then the PUBACK latency of one
//!   publish at a time (`--rounds`), with percentiles. Against a topic root
//!   mapped to a queue, this is a driver's publish+confirm path (see
//!   `scripts/bench-isolation`). Not part of `all`.
//! - `amqp`: AMQP 0-9-1 over one queue (`--broker` is then the AMQP
//!   address): 1 -> 1 with a consumer prefetching `--prefetch`, without and
//!   with publisher confirms (`--window` unconfirmed), then ping-pong
//!   latency (`--rounds`). Not part of `all`.
//!
//! ```sh
//! bindery-bench --broker 127.0.0.1:1883 all --json out.json --svg out.svg
//! ```
//!
//! Results print as a table and, with `--json`, as JSON; `--svg` draws the
//! rates as a bar chart. Lost messages (QoS 1 or not) are counted, never
//! hidden.
//!
//! Longer than most files here: every load scenario over the same clients
//! and timing; each scenario is a short function.

mod amqp;
mod amqp_load;
mod mqtt;
mod nats;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, Subcommand};
use serde::Serialize;

use mqtt::{Conn, Incoming, Wire};

#[derive(Parser, Debug)]
#[command(
    name = "bindery-bench",
    version,
    about = "MQTT load: throughput, fan-out, fan-in, latency"
)]
pub(crate) struct Cli {
    /// The broker's MQTT address (or NATS / AMQP address, see `--wire`
    /// and `amqp`).
    #[arg(long, global = true, default_value = "127.0.0.1:1883")]
    broker: SocketAddr,
    /// The protocol of the MQTT scenarios: `nats` runs them over the NATS
    /// client protocol instead (QoS 0 only), to measure nats-server's own
    /// fastest path beside the others.
    #[arg(long, global = true, value_enum, default_value_t = Wire::Mqtt)]
    wire: Wire,
    /// A name for the broker in the results.
    #[arg(long, global = true, default_value = "broker")]
    name: String,
    /// Messages per run (per publisher set; latency: round trips).
    #[arg(long, global = true, default_value_t = 100_000)]
    count: u64,
    /// Payload bytes.
    #[arg(long, global = true, default_value_t = 64)]
    size: usize,
    /// QoS of publishes and subscriptions (0 or 1).
    #[arg(long, global = true, default_value_t = 0)]
    qos: u8,
    /// Round trips for the latency scenario.
    #[arg(long, global = true, default_value_t = 10_000)]
    rounds: u64,
    /// Subscribers (fan-out) or publishers (fan-in).
    #[arg(long, global = true, default_value_t = 8)]
    clients: usize,
    /// Publishes in flight at once (confirm).
    #[arg(long, global = true, default_value_t = 1000)]
    window: u64,
    /// Unacknowledged deliveries per AMQP consumer (`basic.qos`).
    #[arg(long, global = true, default_value_t = 100)]
    prefetch: u16,
    /// Seconds a run may take at most.
    #[arg(long, global = true, default_value_t = 60)]
    timeout: u64,
    /// Write results as JSON here.
    #[arg(long, global = true)]
    json: Option<PathBuf>,
    /// Draw the rates as an SVG bar chart here.
    #[arg(long, global = true)]
    svg: Option<PathBuf>,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand, Debug, Clone, Copy)]
enum Scenario {
    /// 1 -> 1 throughput.
    Throughput,
    /// 1 -> N throughput.
    Fanout,
    /// N -> 1 throughput.
    Fanin,
    /// 1 -> N throughput with one more subscriber that never reads.
    Stalled,
    /// N independent 1 -> 1 pairs at once, each on its own topic.
    Pairs,
    /// Ping-pong latency.
    Latency,
    /// Publish+confirm (QoS 1) rate and PUBACK latency, no subscriber.
    Confirm,
    /// AMQP 0-9-1: 1 -> 1 over a queue without and with confirms, then
    /// latency.
    Amqp,
    /// All five MQTT scenarios.
    All,
}

#[derive(Serialize, Debug, Default)]
pub(crate) struct Outcome {
    broker: String,
    scenario: String,
    qos: u8,
    size: usize,
    publishers: usize,
    subscribers: usize,
    /// Subscribers that never read (not counted in `subscribers`).
    stalled: usize,
    /// Messages published.
    published: u64,
    /// Deliveries expected (published x subscribers).
    expected: u64,
    /// Deliveries received.
    received: u64,
    /// Deliveries missing when the run ended.
    lost: u64,
    seconds: f64,
    /// Deliveries per second.
    rate: f64,
    /// Round-trip percentiles in microseconds (latency only).
    p50_us: Option<u64>,
    p90_us: Option<u64>,
    p99_us: Option<u64>,
    p999_us: Option<u64>,
    max_us: Option<u64>,
}

/// Runs of this process so far: topics and client ids of runs at once
/// (`pairs`) stay apart.
static RUN: AtomicU64 = AtomicU64::new(0);

fn topic(tag: &str) -> String {
    format!(
        "bench/{}-{}/{tag}",
        std::process::id(),
        RUN.fetch_add(1, Ordering::Relaxed)
    )
}

fn progress(total: u64) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::with_draw_target(
        Some(total),
        indicatif::ProgressDrawTarget::stderr(),
    );
    if total < 200_000 {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    bar
}

/// `publishers` send `count` messages in all to one topic that `subscribers`
/// each receive; returns what arrived and how fast.
fn flow(
    cli: &Cli,
    scenario: &str,
    publishers: usize,
    subscribers: usize,
    stalled: usize,
) -> anyhow::Result<Outcome> {
    let t = topic(scenario);
    // "pid-run", for client ids that other runs at once do not share.
    let tag = t.split('/').nth(1).unwrap_or_default().to_owned();
    // Subscribed, never read: kept open until the run ends.
    let _stalled = (0..stalled)
        .map(|i| {
            let mut c =
                Conn::open_small(cli.broker, &format!("bench-stalled-{i}-{tag}"), cli.wire)?;
            c.subscribe(&t, cli.qos)?;
            Ok(c)
        })
        .collect::<anyhow::Result<Vec<Conn>>>()?;
    let deadline = Instant::now() + Duration::from_secs(cli.timeout);
    let expected = cli.count * subscribers as u64;
    let received = Arc::new(AtomicU64::new(0));
    let bar = progress(expected);
    let mut subs = Vec::new();
    for i in 0..subscribers {
        let mut c = Conn::open(cli.broker, &format!("bench-sub-{i}-{tag}"), cli.wire)?;
        c.subscribe(&t, cli.qos)?;
        c.reader
            .get_ref()
            .set_read_timeout(Some(Duration::from_millis(200)))?;
        let (received, bar, want) = (received.clone(), bar.clone(), cli.count);
        subs.push(std::thread::spawn(move || -> (u64, Instant) {
            let mut got = 0;
            let mut last = Instant::now();
            while got < want && Instant::now() < deadline {
                match c.read() {
                    Ok(Incoming::Publish { packet_id, qos, .. }) => {
                        got += 1;
                        last = Instant::now();
                        received.fetch_add(1, Ordering::Relaxed);
                        if got % 1024 == 0 {
                            bar.set_position(received.load(Ordering::Relaxed));
                        }
                        if qos > 0 && c.puback(packet_id).is_err() {
                            break;
                        }
                        // Acks leave once the input read so far is handled.
                        if qos > 0 && c.reader.buffer().is_empty() {
                            use std::io::Write;
                            if c.writer.flush().is_err() {
                                break;
                            }
                        }
                    }
                    Ok(_) => {}
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) =>
                    {
                        use std::io::Write;
                        let _ = c.writer.flush();
                    }
                    Err(_) => break,
                }
            }
            (got, last)
        }));
    }
    std::thread::sleep(Duration::from_millis(200));
    let start = Instant::now();
    let per = cli.count / publishers as u64;
    let mut pubs = Vec::new();
    for p in 0..publishers {
        let mut c = Conn::open(cli.broker, &format!("bench-pub-{p}-{tag}"), cli.wire)?;
        let (t, size, qos, wire) = (cli.wire.topic(&t), cli.size, cli.qos, cli.wire);
        let n = if p == 0 {
            cli.count - per * (publishers as u64 - 1)
        } else {
            per
        };
        pubs.push(std::thread::spawn(move || -> anyhow::Result<u64> {
            use std::io::Write;
            let mut payload = vec![b'x'; size.max(8)];
            payload.truncate(size.max(8));
            let mut buf = Vec::with_capacity(64 * 1024);
            let mut inflight = 0u64;
            let mut sent = 0u64;
            for i in 0..n {
                payload[..8].copy_from_slice(&i.to_be_bytes());
                let id = (i % 65_535 + 1) as u16;
                wire.publish(&mut buf, &t, &payload, qos, id);
                sent += 1;
                if qos > 0 {
                    inflight += 1;
                }
                if buf.len() >= 32 * 1024 {
                    c.writer.write_all(&buf)?;
                    buf.clear();
                }
                while qos > 0 && inflight >= 1000 {
                    c.writer.write_all(&buf)?;
                    buf.clear();
                    c.writer.flush()?;
                    if let Incoming::PubAck = c.read()? {
                        inflight -= 1;
                    }
                }
                if Instant::now() > deadline {
                    break;
                }
            }
            c.writer.write_all(&buf)?;
            c.writer.flush()?;
            while qos > 0 && inflight > 0 && Instant::now() < deadline {
                if let Incoming::PubAck = c.read()? {
                    inflight -= 1;
                }
            }
            Ok(sent)
        }));
    }
    let mut published = 0;
    for p in pubs {
        published += p
            .join()
            .map_err(|_| anyhow::anyhow!("a publisher panicked"))??;
    }
    let mut got = 0;
    let mut last = start;
    for s in subs {
        let (g, l) = s
            .join()
            .map_err(|_| anyhow::anyhow!("a subscriber panicked"))?;
        got += g;
        last = last.max(l);
    }
    bar.finish_and_clear();
    let seconds = last.duration_since(start).as_secs_f64().max(1e-9);
    Ok(Outcome {
        broker: cli.name.clone(),
        scenario: scenario.into(),
        qos: cli.qos,
        size: cli.size,
        publishers,
        subscribers,
        stalled,
        published,
        expected: published * subscribers as u64,
        received: got,
        lost: (published * subscribers as u64).saturating_sub(got),
        seconds,
        rate: got as f64 / seconds,
        ..Default::default()
    })
}

/// `--clients` 1 -> 1 flows at once, each on its own topic: deliveries of
/// all of them over the time the slowest took.
fn pairs(cli: &Cli) -> anyhow::Result<Outcome> {
    let runs: Vec<Outcome> = std::thread::scope(|s| {
        let flows: Vec<_> = (0..cli.clients)
            .map(|_| s.spawn(|| flow(cli, "pairs", 1, 1, 0)))
            .collect();
        flows
            .into_iter()
            .map(|f| f.join().map_err(|_| anyhow::anyhow!("a pair panicked"))?)
            .collect::<anyhow::Result<Vec<Outcome>>>()
    })?;
    let seconds = runs.iter().map(|r| r.seconds).fold(1e-9, f64::max);
    let sum = |f: fn(&Outcome) -> u64| runs.iter().map(f).sum::<u64>();
    let received = sum(|r| r.received);
    Ok(Outcome {
        broker: cli.name.clone(),
        scenario: "pairs".into(),
        qos: cli.qos,
        size: cli.size,
        publishers: runs.len(),
        subscribers: runs.len(),
        stalled: 0,
        published: sum(|r| r.published),
        expected: sum(|r| r.expected),
        received,
        lost: sum(|r| r.lost),
        seconds,
        rate: received as f64 / seconds,
        ..Default::default()
    })
}

fn latency(cli: &Cli) -> anyhow::Result<Outcome> {
    let ping = topic("ping");
    let pong = topic("pong");
    let mut echo = Conn::open(
        cli.broker,
        &format!("bench-echo-{}", std::process::id()),
        cli.wire,
    )?;
    echo.subscribe(&ping, cli.qos)?;
    let mut me = Conn::open(
        cli.broker,
        &format!("bench-ping-{}", std::process::id()),
        cli.wire,
    )?;
    me.subscribe(&pong, cli.qos)?;
    let rounds = cli.rounds;
    let deadline = Instant::now() + Duration::from_secs(cli.timeout);
    let (qos, pong2, wire) = (cli.qos, cli.wire.topic(&pong), cli.wire);
    let echoer = std::thread::spawn(move || -> anyhow::Result<()> {
        use std::io::Write;
        let mut buf = Vec::new();
        loop {
            match echo.read() {
                Ok(Incoming::Publish {
                    payload,
                    packet_id,
                    qos: q,
                    ..
                }) => {
                    if q > 0 {
                        echo.puback(packet_id)?;
                    }
                    buf.clear();
                    wire.publish(&mut buf, &pong2, &payload, qos, packet_id.max(1));
                    echo.writer.write_all(&buf)?;
                    echo.writer.flush()?;
                }
                Ok(_) => {}
                Err(_) => return Ok(()),
            }
        }
    });
    let mut hist = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let payload = vec![b'p'; cli.size.max(8)];
    let mut buf = Vec::new();
    let mut done = 0u64;
    let start = Instant::now();
    let warmup = 100;
    for i in 0..rounds + warmup {
        if Instant::now() > deadline {
            break;
        }
        use std::io::Write;
        buf.clear();
        cli.wire.publish(
            &mut buf,
            &cli.wire.topic(&ping),
            &payload,
            cli.qos,
            (i % 65_535 + 1) as u16,
        );
        let sent = Instant::now();
        me.writer.write_all(&buf)?;
        me.writer.flush()?;
        loop {
            match me.read().context("waiting for the pong")? {
                Incoming::Publish { packet_id, qos, .. } => {
                    if qos > 0 {
                        me.puback(packet_id)?;
                    }
                    break;
                }
                _ => continue,
            }
        }
        if i >= warmup {
            hist.record(sent.elapsed().as_micros().max(1) as u64)?;
            done += 1;
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    drop(me);
    let _ = echoer.join();
    Ok(Outcome {
        broker: cli.name.clone(),
        scenario: "latency".into(),
        qos: cli.qos,
        size: cli.size,
        publishers: 1,
        subscribers: 1,
        stalled: 0,
        published: done,
        expected: rounds,
        received: done,
        lost: rounds.saturating_sub(done),
        seconds,
        rate: done as f64 / seconds,
        p50_us: Some(hist.value_at_quantile(0.5)),
        p90_us: Some(hist.value_at_quantile(0.9)),
        p99_us: Some(hist.value_at_quantile(0.99)),
        p999_us: Some(hist.value_at_quantile(0.999)),
        max_us: Some(hist.max()),
    })
}

/// Publish+confirm: the PUBACK rate with `--window` in flight, then the
/// latency of one publish at a time.
fn confirm(cli: &Cli) -> anyhow::Result<Outcome> {
    use std::io::Write;
    let t = topic("confirm");
    let mut c = Conn::open(
        cli.broker,
        &format!("bench-confirm-{}", std::process::id()),
        cli.wire,
    )?;
    let deadline = Instant::now() + Duration::from_secs(cli.timeout);
    let payload = vec![b'c'; cli.size];
    let mut buf = Vec::with_capacity(64 * 1024);
    let (mut sent, mut acked, mut inflight) = (0u64, 0u64, 0u64);
    let start = Instant::now();
    while acked < cli.count && Instant::now() < deadline {
        while sent < cli.count && inflight < cli.window.max(1) {
            mqtt::publish(&mut buf, &t, &payload, 1, (sent % 65_535 + 1) as u16);
            sent += 1;
            inflight += 1;
            if buf.len() >= 32 * 1024 {
                c.writer.write_all(&buf)?;
                buf.clear();
            }
        }
        c.writer.write_all(&buf)?;
        buf.clear();
        c.writer.flush()?;
        if let Incoming::PubAck = c.read().context("waiting for a PUBACK")? {
            inflight -= 1;
            acked += 1;
        }
    }
    let seconds = start.elapsed().as_secs_f64().max(1e-9);
    let mut hist = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    for i in 0..cli.rounds + 100 {
        if Instant::now() > deadline {
            break;
        }
        buf.clear();
        mqtt::publish(&mut buf, &t, &payload, 1, (i % 65_535 + 1) as u16);
        let at = Instant::now();
        c.writer.write_all(&buf)?;
        c.writer.flush()?;
        while !matches!(c.read().context("waiting for a PUBACK")?, Incoming::PubAck) {}
        if i >= 100 {
            hist.record(at.elapsed().as_micros().max(1) as u64)?;
        }
    }
    Ok(Outcome {
        broker: cli.name.clone(),
        scenario: "confirm".into(),
        qos: 1,
        size: cli.size,
        publishers: 1,
        subscribers: 0,
        stalled: 0,
        published: sent,
        expected: sent,
        received: acked,
        lost: sent.saturating_sub(acked),
        seconds,
        rate: acked as f64 / seconds,
        p50_us: Some(hist.value_at_quantile(0.5)),
        p90_us: Some(hist.value_at_quantile(0.9)),
        p99_us: Some(hist.value_at_quantile(0.99)),
        p999_us: Some(hist.value_at_quantile(0.999)),
        max_us: Some(hist.max()),
    })
}

fn chart(path: &PathBuf, results: &[Outcome]) -> anyhow::Result<()> {
    use plotters::prelude::*;
    let root = SVGBackend::new(path, (800, 480)).into_drawing_area();
    root.fill(&WHITE)?;
    let top = results.iter().map(|r| r.rate).fold(1.0, f64::max) * 1.15;
    let labels: Vec<String> = results
        .iter()
        .map(|r| format!("{} {}", r.broker, r.scenario))
        .collect();
    let mut c = ChartBuilder::on(&root)
        .caption("deliveries per second", ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(60)
        .y_label_area_size(80)
        .build_cartesian_2d((0..results.len()).into_segmented(), 0.0..top)?;
    c.configure_mesh()
        .x_label_formatter(&|x| match x {
            SegmentValue::CenterOf(i) => labels.get(*i).cloned().unwrap_or_default(),
            _ => String::new(),
        })
        .draw()?;
    c.draw_series(results.iter().enumerate().map(|(i, r)| {
        let mut bar = Rectangle::new(
            [
                (SegmentValue::Exact(i), 0.0),
                (SegmentValue::Exact(i + 1), r.rate),
            ],
            BLUE.mix(0.6).filled(),
        );
        bar.set_margin(0, 0, 6, 6);
        bar
    }))?;
    root.present()?;
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    anyhow::ensure!(cli.qos <= 1, "--qos takes 0 or 1");
    anyhow::ensure!(
        cli.wire == Wire::Mqtt || cli.qos == 0,
        "--wire nats has no acknowledgements: --qos 0 only"
    );
    anyhow::ensure!(
        cli.wire == Wire::Mqtt || !matches!(cli.scenario, Scenario::Confirm),
        "--wire nats has no acknowledgements: no confirm scenario"
    );
    anyhow::ensure!(
        cli.clients >= 1 && cli.count >= 1,
        "--clients and --count must be at least 1"
    );
    let scenarios: Vec<Scenario> = match cli.scenario {
        Scenario::All => vec![
            Scenario::Throughput,
            Scenario::Fanout,
            Scenario::Fanin,
            Scenario::Stalled,
            Scenario::Latency,
        ],
        s => vec![s],
    };
    let mut results = Vec::new();
    let mut outcomes = Vec::new();
    for s in scenarios {
        if let Scenario::Amqp = s {
            outcomes.push(amqp_load::flow(&cli, false)?);
            outcomes.push(amqp_load::flow(&cli, true)?);
            outcomes.push(amqp_load::latency(&cli)?);
            continue;
        }
        outcomes.push(match s {
            Scenario::Throughput => flow(&cli, "throughput", 1, 1, 0)?,
            Scenario::Fanout => flow(&cli, "fanout", 1, cli.clients, 0)?,
            Scenario::Fanin => flow(&cli, "fanin", cli.clients, 1, 0)?,
            Scenario::Stalled => flow(&cli, "stalled", 1, cli.clients, 1)?,
            Scenario::Pairs => pairs(&cli)?,
            Scenario::Latency => latency(&cli)?,
            Scenario::Confirm => confirm(&cli)?,
            Scenario::Amqp | Scenario::All => unreachable!("expanded above"),
        });
    }
    for r in outcomes {
        match (r.p50_us, r.p99_us) {
            (Some(p50), Some(p99)) if r.scenario == "confirm" => println!(
                "{:<10} {:<10} qos 1 {:>6} B  {:>10.0} confirms/s  ({} of {} in {:.2} s)  one at a time: p50 {p50} us  p99 {p99} us",
                r.broker, r.scenario, r.size, r.rate, r.received, r.published, r.seconds
            ),
            (Some(p50), Some(p99)) if r.scenario == "amqp-latency" => println!(
                "{:<10} {:<12} {:>6} B  {:>10.0} round trips/s  p50 {p50} us  p99 {p99} us  max {} us",
                r.broker,
                r.scenario,
                r.size,
                r.rate,
                r.max_us.unwrap_or(0)
            ),
            (Some(p50), Some(p99)) => println!(
                "{:<10} {:<10} qos {} {:>6} B  {:>10.0} round trips/s  p50 {p50} us  p99 {p99} us  max {} us  lost {}",
                r.broker,
                r.scenario,
                r.qos,
                r.size,
                r.rate,
                r.max_us.unwrap_or(0),
                r.lost
            ),
            _ => println!(
                "{:<10} {:<10} qos {} {:>6} B  {:>10.0} deliveries/s  ({} of {} in {:.2} s)  lost {}",
                r.broker,
                r.scenario,
                r.qos,
                r.size,
                r.rate,
                r.received,
                r.expected,
                r.seconds,
                r.lost
            ),
        }
        results.push(r);
    }
    if let Some(path) = &cli.json {
        std::fs::write(path, serde_json::to_vec_pretty(&results)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &cli.svg {
        chart(path, &results)?;
    }
    Ok(())
}
