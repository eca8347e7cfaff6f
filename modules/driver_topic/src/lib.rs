//! `driver.topic`: fan-out to live subscribers.
//!
//! Every destination under the instance's path prefixes is a topic, made on
//! first use. A message goes to every subscriber live at the moment it is
//! published, and to nobody else; there is nothing to ack. A subscriber that
//! has no credit left gets its messages buffered, up to `buffer` of them;
//! past that the `slow_subscriber` policy decides: `drop-oldest` (default),
//! `drop-newest`, or `disconnect` (the terminal drops the client as a slow
//! consumer). Every dropped message is counted.
//!
//! Publishers learn the backlog of the slowest subscriber in each receipt
//! and may slow down so it catches up. A subscriber that takes nothing for
//! `stall_ms` while messages wait (or keeps a full buffer that long) is
//! stalled and no longer counts: one stuck client never slows a publisher
//! or anyone else ([`bindery_classes::fanout`] has the rule).
//!
//! ```toml
//! [instances.topics.config]
//! buffer = 1000
//! slow_subscriber = "drop-oldest"
//! stall_ms = 250
//! max_topics = 10000
//! ```

use std::time::Duration;

use bindery::{Completion, Failure};
use bindery_classes::driver::{self, DestinationStats, DriverInfo, Receipt, SubscribeOptions};
use bindery_classes::fanout::Limits;
use bindery_classes::metrics::Scope;
use bindery_classes::topics::LocalTopics;
use bindery_classes::{Consumer, Driver, Message, Subscription};
use serde::Deserialize;

pub use bindery_classes::fanout::SlowPolicy;

bindery::module! {
    class: bindery_classes::class::Driver,
    name: "topic",
    description: "fan-out topics to live subscribers with bounded per-subscriber buffers",
    main: module_main,
}

/// The instance configuration.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Messages buffered per subscriber beyond its credit.
    pub buffer: usize,
    /// What to do when that buffer is full.
    pub slow_subscriber: SlowPolicy,
    /// Milliseconds a subscriber may take nothing while messages wait (or
    /// keep a full buffer) before it is stalled and stops slowing
    /// publishers.
    pub stall_ms: u64,
    /// Topics per instance.
    pub max_topics: usize,
}

impl Default for Config {
    fn default() -> Self {
        let l = Limits::default();
        Config {
            buffer: l.buffer,
            slow_subscriber: l.policy,
            stall_ms: l.stall.as_millis() as u64,
            max_topics: 10_000,
        }
    }
}

impl Config {
    /// The per-subscriber limits this configuration sets.
    pub fn limits(&self) -> Limits {
        Limits {
            buffer: self.buffer,
            policy: self.slow_subscriber,
            stall: Duration::from_millis(self.stall_ms),
        }
    }
}

fn module_main(
    reg: &mut bindery::Registrar<'_, bindery_classes::class::Driver>,
) -> Result<(), bindery::BoxError> {
    driver::register(reg, |cx| {
        let config: Config = cx.config().parse()?;
        if config.buffer == 0 {
            return Err(format!("instance {:?}: buffer must be at least 1", cx.name()).into());
        }
        Ok(TopicDriver::with_metrics(
            config,
            Scope::of(cx.runtime(), cx.name()),
        ))
    });
    Ok(())
}

/// An instance: a set of topics on this node.
pub struct TopicDriver {
    topics: LocalTopics,
}

impl TopicDriver {
    /// A new instance, its meters in a registry of their own.
    pub fn new(config: Config) -> TopicDriver {
        TopicDriver::with_metrics(config, Scope::detached("topic"))
    }

    /// A new instance whose meters register in `scope`.
    pub fn with_metrics(config: Config, scope: Scope) -> TopicDriver {
        TopicDriver {
            topics: LocalTopics::new(config.limits(), config.max_topics, scope),
        }
    }
}

impl Driver for TopicDriver {
    fn info(&self) -> DriverInfo {
        DriverInfo {
            queue: false,
            durable: false,
        }
    }

    fn publish(&self, message: Message, done: Completion<Receipt>) {
        done.complete(self.topics.publish(message));
    }

    fn subscribe(
        &self,
        destination: &str,
        consumer: Consumer,
        options: SubscribeOptions,
    ) -> Result<Subscription, Failure> {
        self.topics.subscribe(destination, consumer, options)
    }

    fn stop(&self) {
        self.topics.stop();
    }

    fn stats(&self) -> Vec<DestinationStats> {
        self.topics.stats()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bindery_classes::Delivery;

    fn publish(d: &TopicDriver, dest: &str, body: &str) -> Receipt {
        let (done, rx) = Completion::channel();
        d.publish(Message::new(dest, "text/plain", body.to_owned()), done);
        rx.recv().unwrap().unwrap()
    }

    fn texts(rx: &std::sync::mpsc::Receiver<Delivery>) -> Vec<String> {
        rx.try_iter()
            .map(|d| match d {
                Delivery::Message(m) => String::from_utf8(m.body.to_vec()).unwrap(),
                Delivery::Closed(r) => format!("closed: {r}"),
            })
            .collect()
    }

    #[test]
    fn fans_out_to_every_live_subscriber() {
        let d = TopicDriver::new(Config::default());
        assert_eq!(publish(&d, "/t/a", "before").delivered_to, 0);
        let (c1, r1) = Consumer::channel();
        let (c2, r2) = Consumer::channel();
        let o = SubscribeOptions {
            credit: 10,
            ..Default::default()
        };
        let _s1 = d.subscribe("/t/a", c1, o).unwrap();
        let s2 = d.subscribe("/t/a", c2, o).unwrap();
        assert_eq!(publish(&d, "/t/a", "x").delivered_to, 2);
        drop(s2);
        assert_eq!(publish(&d, "/t/a", "y").delivered_to, 1);
        assert_eq!(texts(&r1), ["x", "y"]);
        assert_eq!(texts(&r2), ["x"]);
        assert_eq!(d.stats()[0].dropped, 1);
    }

    #[test]
    fn two_instances_on_one_thread_keep_their_topics_and_patterns_come_and_go() {
        // One thread remembers the topic it published to last: a second
        // instance's topic of the same path is its own.
        let (a, b) = (
            TopicDriver::new(Config::default()),
            TopicDriver::new(Config::default()),
        );
        let o = SubscribeOptions {
            credit: 10,
            ..Default::default()
        };
        let (ca, ra) = Consumer::channel();
        let (cb, rb) = Consumer::channel();
        let _sa = a.subscribe("/t/x", ca, o).unwrap();
        let _sb = b.subscribe("/t/x", cb, o).unwrap();
        for (d, body) in [(&a, "a1"), (&b, "b1"), (&a, "a2"), (&a, "a3"), (&b, "b2")] {
            assert_eq!(publish(d, "/t/x", body).delivered_to, 1);
        }
        assert_eq!(texts(&ra), ["a1", "a2", "a3"]);
        assert_eq!(texts(&rb), ["b1", "b2"]);
        // A pattern subscribed between two publishes to the remembered
        // topic gets the second; once cancelled, nothing more.
        let (cp, rp) = Consumer::channel();
        let sp = a.subscribe("/t/+", cp, o).unwrap();
        assert_eq!(publish(&a, "/t/x", "a4").delivered_to, 2);
        drop(sp);
        assert_eq!(publish(&a, "/t/x", "a5").delivered_to, 1);
        assert_eq!(texts(&rp), ["a4"]);
        assert_eq!(texts(&ra), ["a4", "a5"]);
    }

    #[test]
    fn wildcard_subscriptions_match_segments() {
        let d = TopicDriver::new(Config::default());
        let (c, r) = Consumer::channel();
        let o = SubscribeOptions {
            credit: 10,
            ..Default::default()
        };
        let _s = d.subscribe("/t/sensors/+/temp", c, o).unwrap();
        publish(&d, "/t/sensors/k1/temp", "1");
        publish(&d, "/t/sensors/k1/hum", "2");
        publish(&d, "/t/sensors/k2/temp", "3");
        assert_eq!(texts(&r), ["1", "3"]);
        assert!(d.subscribe("/t/#/x", Consumer::channel().0, o).is_err());
        let pattern = d
            .stats()
            .into_iter()
            .find(|s| s.destination == "/t/sensors/+/temp");
        assert_eq!(
            pattern.map(|p| p.consumers),
            Some(1),
            "patterns are in the stats"
        );
    }

    #[test]
    fn slow_subscribers_are_bounded_by_policy() {
        for (policy, want) in [
            (SlowPolicy::DropOldest, vec!["0", "3", "4"]),
            (SlowPolicy::DropNewest, vec!["0", "1", "2"]),
        ] {
            let d = TopicDriver::new(Config {
                buffer: 2,
                slow_subscriber: policy,
                ..Config::default()
            });
            let (c, r) = Consumer::channel();
            let s = d
                .subscribe(
                    "/t/s",
                    c,
                    SubscribeOptions {
                        credit: 1,
                        ..Default::default()
                    },
                )
                .unwrap();
            for i in 0..5 {
                publish(&d, "/t/s", &i.to_string());
            }
            s.credit(10);
            assert_eq!(texts(&r), want, "{policy:?}");
            assert_eq!(d.stats()[0].dropped, 2);
        }
        let d = TopicDriver::new(Config {
            buffer: 1,
            slow_subscriber: SlowPolicy::Disconnect,
            ..Config::default()
        });
        let (c, r) = Consumer::channel();
        let _s = d
            .subscribe(
                "/t/s",
                c,
                SubscribeOptions {
                    credit: 0,
                    ..Default::default()
                },
            )
            .unwrap();
        publish(&d, "/t/s", "a");
        assert_eq!(publish(&d, "/t/s", "b").delivered_to, 0);
        let got = texts(&r);
        assert!(
            got.len() == 1 && got[0].starts_with("closed: /t/s: slow"),
            "{got:?}"
        );
        assert_eq!(d.stats()[0].consumers, 0);
    }
}
