//! The AMQP scenarios: 1 -> 1 over a queue with a prefetching consumer,
//! without and with publisher confirms, and ping-pong latency. Any AMQP
//! 0-9-1 broker (Bindery, RabbitMQ) on `--broker`.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::amqp::{Conn, tag};
use crate::{Cli, Outcome};

fn queue(tag: &str) -> String {
    format!(
        "bench-{}-{}-{tag}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    )
}

/// Reads deliveries until `count` arrived or `deadline`; acks every half
/// prefetch (multiple). Returns how many arrived.
fn consume(mut c: Conn, count: u64, prefetch: u16, deadline: Instant) -> anyhow::Result<u64> {
    let every = u64::from(prefetch / 2).max(1);
    let (mut got, mut last, mut acked, mut left) = (0u64, 0u64, 0u64, 0u64);
    while got < count && Instant::now() < deadline {
        let f = c.read().context("reading deliveries")?;
        let done = match f.kind {
            1 => {
                if let Some((t, _)) = tag(&f) {
                    last = t;
                }
                false
            }
            2 if f.payload.len() >= 12 => {
                left = u64::from_be_bytes(f.payload[4..12].try_into()?);
                left == 0
            }
            3 => {
                left = left.saturating_sub(f.payload.len() as u64);
                left == 0
            }
            _ => false,
        };
        if done {
            got += 1;
            if last - acked >= every || got == count {
                c.ack_upto(last)?;
                acked = last;
            }
        }
    }
    Ok(got)
}

/// One publisher, one consumer with `--prefetch`, over one queue; with
/// `confirm`, up to `--window` publishes unconfirmed.
pub(crate) fn flow(cli: &Cli, confirm: bool) -> anyhow::Result<Outcome> {
    use std::io::Write;
    let q = queue(if confirm { "confirm" } else { "flow" });
    let deadline = Instant::now() + Duration::from_secs(cli.timeout);
    let mut sub = Conn::open(cli.broker)?;
    sub.declare(&q)?;
    sub.consume(&q, cli.prefetch)?;
    let mut publisher = Conn::open(cli.broker)?;
    publisher.declare(&q)?;
    if confirm {
        publisher.confirm_select()?;
    }
    let (count, prefetch) = (cli.count, cli.prefetch);
    let start = Instant::now();
    let consumer = std::thread::spawn(move || consume(sub, count, prefetch, deadline));
    let payload = vec![b'a'; cli.size];
    let mut buf = Vec::with_capacity(64 * 1024);
    let mut outstanding = BTreeSet::new();
    let mut nacked = 0u64;
    let mut sent = 0u64;
    let mut settle = |c: &mut Conn, outstanding: &mut BTreeSet<u64>| -> anyhow::Result<()> {
        let f = c.read().context("waiting for confirms")?;
        if let Some((t, multiple)) = tag(&f) {
            if f.method() == Some((60, 120)) {
                nacked += 1;
            }
            if multiple {
                *outstanding = outstanding.split_off(&(t + 1));
            } else {
                outstanding.remove(&t);
            }
        }
        Ok(())
    };
    while sent < cli.count && Instant::now() < deadline {
        if confirm {
            while outstanding.len() as u64 >= cli.window.max(1) {
                publisher.writer.write_all(&buf)?;
                buf.clear();
                publisher.writer.flush()?;
                settle(&mut publisher, &mut outstanding)?;
            }
        }
        publisher.publish(&mut buf, &q, &payload);
        sent += 1;
        if confirm {
            outstanding.insert(sent);
        }
        if buf.len() >= 32 * 1024 {
            publisher.writer.write_all(&buf)?;
            buf.clear();
        }
    }
    publisher.writer.write_all(&buf)?;
    publisher.writer.flush()?;
    while confirm && !outstanding.is_empty() && Instant::now() < deadline {
        settle(&mut publisher, &mut outstanding)?;
    }
    let received = consumer
        .join()
        .map_err(|_| anyhow::anyhow!("the consumer thread panicked"))??;
    let seconds = start.elapsed().as_secs_f64().max(1e-9);
    Ok(Outcome {
        broker: cli.name.clone(),
        scenario: if confirm { "amqp-confirm" } else { "amqp" }.into(),
        qos: u8::from(confirm),
        size: cli.size,
        publishers: 1,
        subscribers: 1,
        published: sent,
        expected: sent,
        received,
        lost: sent.saturating_sub(received) + nacked,
        seconds,
        rate: received as f64 / seconds,
        ..Outcome::default()
    })
}

/// Ping-pong over one queue: publish, wait for the delivery, ack; the
/// round trips' percentiles.
pub(crate) fn latency(cli: &Cli) -> anyhow::Result<Outcome> {
    use std::io::Write;
    let q = queue("latency");
    let deadline = Instant::now() + Duration::from_secs(cli.timeout);
    let mut c = Conn::open(cli.broker)?;
    c.declare(&q)?;
    c.consume(&q, 1)?;
    let payload = vec![b'l'; cli.size.max(1)];
    let mut hist = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut buf = Vec::new();
    let (mut done, mut last) = (0u64, 0u64);
    let start = Instant::now();
    for i in 0..cli.rounds + 100 {
        if Instant::now() > deadline {
            break;
        }
        buf.clear();
        c.publish(&mut buf, &q, &payload);
        let at = Instant::now();
        c.writer.write_all(&buf)?;
        c.writer.flush()?;
        let mut left = u64::MAX;
        while left != 0 {
            let f = c.read().context("waiting for the delivery")?;
            match f.kind {
                1 => {
                    if let Some((t, _)) = tag(&f) {
                        last = t;
                    }
                }
                2 if f.payload.len() >= 12 => {
                    left = u64::from_be_bytes(f.payload[4..12].try_into()?)
                }
                3 => left = left.saturating_sub(f.payload.len() as u64),
                _ => {}
            }
        }
        if i >= 100 {
            hist.record(at.elapsed().as_micros().max(1) as u64)?;
        }
        done += 1;
        c.ack_upto(last)?;
    }
    let seconds = start.elapsed().as_secs_f64().max(1e-9);
    Ok(Outcome {
        broker: cli.name.clone(),
        scenario: "amqp-latency".into(),
        size: cli.size,
        publishers: 1,
        subscribers: 1,
        published: done,
        expected: done,
        received: done,
        seconds,
        rate: done as f64 / seconds,
        p50_us: Some(hist.value_at_quantile(0.5)),
        p90_us: Some(hist.value_at_quantile(0.9)),
        p99_us: Some(hist.value_at_quantile(0.99)),
        p999_us: Some(hist.value_at_quantile(0.999)),
        max_us: Some(hist.max()),
        ..Outcome::default()
    })
}
