//! `driver.memqueue`: in-memory FIFO queues.
//!
//! Every destination under the instance's path prefixes is a queue, made on
//! first use. Each message goes to one consumer (competing consumers take
//! turns), leased: an ack settles it; a lease that runs out puts it back at
//! the head of the queue with its delivery count raised. A queue holds at
//! most `max_depth` messages (waiting plus leased); a publish beyond that
//! fails with `Full` and a retry hint, so memory stays bounded.
//!
//! Not durable: a restart loses everything. Use `driver.filequeue` for that.
//!
//! ```toml
//! [instances.memory.config]
//! max_depth = 100000        # messages per queue, waiting + leased
//! max_queues = 10000        # destinations per instance; a new one past it: FailureKind::Capacity (HTTP 507)
//! ```

use bindery::{Completion, Failure};
use bindery_classes::driver::{
    self, DeleteOptions, DestinationStats, DriverInfo, Receipt, SubscribeOptions,
};
use bindery_classes::metrics::Scope;
use bindery_classes::queue::{QueueLimits, Queues};
use bindery_classes::{Consumer, Driver, Message, MessageId, Subscription};
use serde::Deserialize;

bindery::module! {
    class: bindery_classes::class::Driver,
    name: "memqueue",
    description: "in-memory FIFO queues with leases, acks, redelivery and bounded depth",
    main: module_main,
    certify_config: "max_depth = 20000",
}

/// The instance configuration.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Messages per queue, waiting plus leased.
    pub max_depth: usize,
    /// Queues per instance: a publish that would make one more is refused
    /// with [`FailureKind::Capacity`](bindery::FailureKind) (HTTP 507),
    /// its reason naming this field.
    pub max_queues: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_depth: 100_000,
            max_queues: 10_000,
        }
    }
}

fn module_main(
    reg: &mut bindery::Registrar<'_, bindery_classes::class::Driver>,
) -> Result<(), bindery::BoxError> {
    driver::register(reg, |cx| {
        let config: Config = cx.config().parse()?;
        if config.max_depth == 0 {
            return Err(format!("instance {:?}: max_depth must be at least 1", cx.name()).into());
        }
        Ok(MemQueue::with_metrics(
            config,
            Scope::of(cx.runtime(), cx.name()),
        ))
    });
    Ok(())
}

/// An instance: a set of queues in memory.
pub struct MemQueue {
    queues: Queues,
}

impl MemQueue {
    /// A new instance, its meters in a registry of their own.
    pub fn new(config: Config) -> MemQueue {
        MemQueue::with_metrics(config, Scope::detached("memqueue"))
    }

    /// A new instance whose meters register in `scope`.
    pub fn with_metrics(config: Config, scope: Scope) -> MemQueue {
        let limits = QueueLimits {
            max_depth: config.max_depth,
            max_queues: config.max_queues,
        };
        MemQueue {
            queues: Queues::new(limits, scope),
        }
    }
}

impl Driver for MemQueue {
    fn info(&self) -> DriverInfo {
        DriverInfo {
            queue: true,
            durable: false,
        }
    }

    fn publish(&self, message: Message, done: Completion<Receipt>) {
        let id = message.id;
        match self.queues.reserve(&message.destination) {
            Ok(room) => {
                room.fill(message);
                done.succeed(Receipt {
                    id,
                    delivered_to: 0,
                    backlog: 0,
                });
            }
            Err(f) => done.fail(f),
        }
    }

    fn subscribe(
        &self,
        destination: &str,
        consumer: Consumer,
        options: SubscribeOptions,
    ) -> Result<Subscription, Failure> {
        self.queues.subscribe(destination, consumer, options)
    }

    fn ack(&self, destination: &str, id: MessageId, done: Completion<()>) {
        done.complete(self.queues.ack(destination, id));
    }

    fn release(&self, destination: &str, id: MessageId) -> Result<(), Failure> {
        self.queues.release(destination, id)
    }

    fn retry(&self, destination: &str, id: MessageId) -> Result<(), Failure> {
        self.queues.retry(destination, id)
    }

    fn purge(&self, destination: &str, done: Completion<u64>) {
        done.complete(self.queues.purge(destination).map(|ids| ids.len() as u64));
    }

    fn delete(&self, destination: &str, options: DeleteOptions, done: Completion<u64>) {
        done.complete(
            self.queues
                .delete(destination, options)
                .map(|ids| ids.len() as u64),
        );
    }

    fn stop(&self) {
        self.queues.close("the driver instance is stopping");
    }

    fn stats(&self) -> Vec<DestinationStats> {
        self.queues.stats()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bindery::FailureKind;
    use bindery_classes::Delivery;
    use std::time::Duration;

    fn ack(q: &MemQueue, dest: &str, id: MessageId) -> Result<(), Failure> {
        let (done, rx) = Completion::channel();
        q.ack(dest, id, done);
        rx.recv().unwrap()
    }

    fn publish(q: &MemQueue, dest: &str, body: &str) -> Result<Receipt, Failure> {
        let (done, rx) = Completion::channel();
        q.publish(Message::new(dest, "text/plain", body.to_owned()), done);
        rx.recv().unwrap()
    }

    fn body(d: Delivery) -> (String, u32, MessageId) {
        match d {
            Delivery::Message(m) => (
                String::from_utf8(m.body.to_vec()).unwrap(),
                m.delivery_count,
                m.id,
            ),
            Delivery::Closed(r) => panic!("closed: {r}"),
        }
    }

    #[test]
    fn fifo_lease_ack_and_redelivery() {
        let q = MemQueue::new(Config::default());
        publish(&q, "/q/a", "1").unwrap();
        publish(&q, "/q/a", "2").unwrap();
        let (c, rx) = Consumer::channel();
        let lease = Duration::from_millis(50);
        let sub = q
            .subscribe("/q/a", c, SubscribeOptions { credit: 1, lease })
            .unwrap();
        let (b, n, id) = body(rx.recv().unwrap());
        assert_eq!((b.as_str(), n), ("1", 1));
        assert!(rx.try_recv().is_err(), "credit was 1");
        sub.credit(1);
        let (b, n, id2) = body(rx.recv().unwrap());
        assert_eq!((b.as_str(), n), ("2", 1));
        ack(&q, "/q/a", id2).unwrap();
        // "1" was not acked: it comes back after its lease, counted.
        sub.credit(1);
        let (b, n, again) = body(rx.recv_timeout(Duration::from_secs(5)).unwrap());
        assert_eq!((b.as_str(), n, again), ("1", 2, id));
        ack(&q, "/q/a", id).unwrap();
        assert_eq!(ack(&q, "/q/a", id).unwrap_err().kind, FailureKind::NotFound);
        let st = &q.stats()[0];
        assert_eq!((st.depth, st.leased, st.acked, st.delivered), (0, 0, 2, 3));
    }

    #[test]
    fn wildcard_subscriptions_are_refused() {
        let q = MemQueue::new(Config::default());
        let (c, _rx) = Consumer::channel();
        let e = q
            .subscribe("/q/+", c, SubscribeOptions::default())
            .unwrap_err();
        assert_eq!(e.kind, FailureKind::Unsupported);
    }

    #[test]
    fn bounded_depth_refuses_with_full() {
        let q = MemQueue::new(Config {
            max_depth: 2,
            ..Config::default()
        });
        publish(&q, "/q/x", "a").unwrap();
        publish(&q, "/q/x", "b").unwrap();
        let f = publish(&q, "/q/x", "c").unwrap_err();
        assert_eq!(f.kind, FailureKind::Full);
        assert!(f.retry_after.is_some());
        assert_eq!(q.stats()[0].refused, 1);
    }

    #[test]
    fn competing_consumers_take_turns() {
        let q = MemQueue::new(Config::default());
        let (c1, r1) = Consumer::channel();
        let (c2, r2) = Consumer::channel();
        let opts = SubscribeOptions {
            credit: 100,
            lease: Duration::from_secs(60),
        };
        let _s1 = q.subscribe("/q/c", c1, opts).unwrap();
        let _s2 = q.subscribe("/q/c", c2, opts).unwrap();
        for i in 0..10 {
            publish(&q, "/q/c", &i.to_string()).unwrap();
        }
        assert_eq!(r1.try_iter().count(), 5);
        assert_eq!(r2.try_iter().count(), 5);
    }
}
