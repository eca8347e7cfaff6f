//! The purge and delete cases can fail: queue drivers that break what
//! `Driver::purge` and `Driver::delete` promise, each a real module with
//! one thing changed, and the case that catches it. The unchanged module
//! passes the same case, so the failure is the mutation's.

use std::sync::Arc;
use std::time::Duration;

use bindery::Completion;
use bindery_classes::driver::{
    DeleteOptions, DestinationStats, DriverHandle, DriverInfo, Receipt, SubscribeOptions,
};
use bindery_classes::{Consumer, Delivery, Driver, Message, MessageId, Subscription};
use bindery_conformance::{Case, driver};

/// A purge or a delete, as a mutant does it.
type ManageFn = Box<dyn Fn(&DriverHandle, &str, DeleteOptions, Completion<u64>) + Send + Sync>;

/// `inner` with its purge and delete replaced.
struct Mutant {
    inner: DriverHandle,
    purge: ManageFn,
    delete: ManageFn,
}

impl Mutant {
    fn new(inner: DriverHandle) -> Mutant {
        Mutant {
            inner,
            purge: Box::new(|d, dest, _, done| d.purge(dest, done)),
            delete: Box::new(|d, dest, o, done| d.delete(dest, o, done)),
        }
    }
}

impl Driver for Mutant {
    fn info(&self) -> DriverInfo {
        self.inner.info()
    }
    fn publish(&self, message: Message, done: Completion<Receipt>) {
        self.inner.publish(message, done)
    }
    fn subscribe(
        &self,
        dest: &str,
        c: Consumer,
        o: SubscribeOptions,
    ) -> Result<Subscription, bindery::Failure> {
        self.inner.subscribe(dest, c, o)
    }
    fn ack(&self, dest: &str, id: MessageId, done: Completion<()>) {
        self.inner.ack(dest, id, done)
    }
    fn release(&self, dest: &str, id: MessageId) -> Result<(), bindery::Failure> {
        self.inner.release(dest, id)
    }
    fn purge(&self, dest: &str, done: Completion<u64>) {
        (self.purge)(&self.inner, dest, DeleteOptions::default(), done)
    }
    fn delete(&self, dest: &str, options: DeleteOptions, done: Completion<u64>) {
        (self.delete)(&self.inner, dest, options, done)
    }
    fn stats(&self) -> Vec<DestinationStats> {
        self.inner.stats()
    }
    fn stop(&self) {
        self.inner.stop()
    }
}

fn memqueue() -> DriverHandle {
    Arc::new(driver_memqueue::MemQueue::new(Default::default()))
}

/// A directory removed when the last harness holding it goes.
struct Dir(std::path::PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A file queue in a directory of its own, the same for every instance
/// the harness makes (a restart), `mutate`d.
fn filequeue(mutate: fn(DriverHandle) -> DriverHandle) -> impl Fn() -> DriverHandle {
    let dir = Arc::new(Dir(std::env::temp_dir().join(format!(
        "conformance-manage-mutant-{}-{}",
        std::process::id(),
        MessageId::next()
    ))));
    move || {
        let config = driver_filequeue::Config {
            dir: dir.0.clone(),
            fsync: driver_filequeue::Fsync::Never,
            segment_bytes: 1 << 20,
            min_free_bytes: 0,
            max_disk_bytes: Some(8 << 20),
            reserve_bytes: 0,
            ..Default::default()
        };
        mutate(Arc::new(
            driver_filequeue::FileQueue::open(config).expect("open the journal"),
        ))
    }
}

/// The depth `d` reports for `dest`.
fn depth(d: &DriverHandle, dest: &str) -> u64 {
    d.stats()
        .iter()
        .find(|s| s.destination == dest)
        .map_or(0, |s| s.depth)
}

/// `name` of `cases` passes on `real` and fails on `mutant`.
fn caught(
    cases: &'static [Case<driver::Harness>],
    name: &str,
    real: &driver::Harness,
    mutant: &driver::Harness,
) -> String {
    let case = cases.iter().find(|c| c.name == name).expect("a case");
    if let Err(e) = (case.run)(real) {
        panic!("control: the unmutated driver fails {name}: {e}");
    }
    match (case.run)(mutant) {
        Ok(()) => panic!("{name} did not catch the mutant"),
        Err(reason) => reason,
    }
}

#[test]
fn a_driver_that_ignores_purge_is_caught() {
    let mutant = || -> DriverHandle {
        let mut m = Mutant::new(memqueue());
        // Says how many wait, removes nothing.
        m.purge = Box::new(|d, dest, _, done| done.succeed(depth(d, dest)));
        Arc::new(m)
    };
    let reason = caught(
        driver::QUEUE,
        "purge_removes_the_waiting_messages_not_the_leased",
        &memqueue,
        &mutant,
    );
    assert!(reason.contains("purged message"), "{reason}");
}

#[test]
fn a_driver_whose_delete_ignores_if_unused_is_caught() {
    let mutant = || -> DriverHandle {
        let mut m = Mutant::new(memqueue());
        m.delete = Box::new(|d, dest, _, done| d.delete(dest, DeleteOptions::default(), done));
        Arc::new(m)
    };
    let reason = caught(
        driver::QUEUE,
        "delete_honours_its_conditions_and_ends_consumers",
        &memqueue,
        &mutant,
    );
    assert!(reason.contains("if-unused"), "{reason}");
}

#[test]
fn a_durable_driver_that_purges_in_memory_only_is_caught() {
    fn mutate(inner: DriverHandle) -> DriverHandle {
        let mut m = Mutant::new(inner);
        // Takes the waiting messages out of reach (leased for an hour,
        // never acked): gone here, back after a restart.
        m.purge = Box::new(|d, dest, _, done| {
            let n = depth(d, dest);
            let (c, rx) = Consumer::channel();
            let options = SubscribeOptions {
                credit: n as u32,
                lease: Duration::from_secs(3600),
            };
            let Ok(sub) = d.subscribe(dest, c, options) else {
                return done.succeed(0);
            };
            let mut taken = 0;
            while taken < n {
                match rx.recv_timeout(Duration::from_secs(10)) {
                    Ok(Delivery::Message(_)) => taken += 1,
                    _ => break,
                }
            }
            std::mem::forget(sub);
            done.succeed(taken)
        });
        Arc::new(m)
    }
    let reason = caught(
        driver::DURABLE,
        "purged_and_deleted_messages_stay_gone_after_a_restart",
        &filequeue(|d| d),
        &filequeue(mutate),
    );
    assert!(reason.contains("after the restart"), "{reason}");
}
