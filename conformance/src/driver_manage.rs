//! A queue's management: [`Driver::purge`](bindery_classes::Driver::purge)
//! and [`Driver::delete`](bindery_classes::Driver::delete). Both are
//! optional: a driver that answers `Unsupported` passes these cases (it
//! keeps the trait's defaults); one that answers anything else must do
//! what it says.

use std::time::Duration;

use bindery::{Completion, Failure, FailureKind};
use bindery_classes::driver::{DeleteOptions, DriverHandle};
use bindery_classes::{Consumer, Delivery};

use super::{Harness, PATIENCE, ack, destination, next, nothing_within, options, publish_ok, text};
use crate::ensure;

fn purge(d: &DriverHandle, dest: &str) -> Result<u64, Failure> {
    let (done, outcome) = Completion::channel();
    d.purge(dest, done);
    outcome.recv_timeout(PATIENCE).unwrap_or_else(|_| {
        Err(Failure::new(
            FailureKind::Internal,
            "no answer to a purge within 10 s",
        ))
    })
}

fn delete(d: &DriverHandle, dest: &str, options: DeleteOptions) -> Result<u64, Failure> {
    let (done, outcome) = Completion::channel();
    d.delete(dest, options, done);
    outcome.recv_timeout(PATIENCE).unwrap_or_else(|_| {
        Err(Failure::new(
            FailureKind::Internal,
            "no answer to a delete within 10 s",
        ))
    })
}

fn unsupported(r: &Result<u64, Failure>) -> bool {
    matches!(r, Err(f) if f.kind == FailureKind::Unsupported)
}

/// Five published, two leased: a purge removes the three waiting, says 3,
/// and none of them is delivered again; the leased two are still acked.
pub(crate) fn purge_removes_the_waiting_messages_not_the_leased(
    make: &Harness,
) -> Result<(), String> {
    let d = make();
    let dest = destination("purge");
    for i in 0..5 {
        publish_ok(&d, &dest, format!("p{i}"))?;
    }
    let (c, rx) = Consumer::channel();
    let sub = d
        .subscribe(&dest, c, options(2, Duration::from_secs(60)))
        .map_err(|f| format!("subscribe: {f}"))?;
    let leased = [next(&rx, "first delivery")?, next(&rx, "second delivery")?];
    let purged = purge(&d, &dest);
    if unsupported(&purged) {
        return Ok(());
    }
    let purged = purged.map_err(|f| format!("purge of {dest}: {f}"))?;
    ensure!(
        purged == 3,
        "purge of 5 messages, 2 of them leased, said {purged}, want 3"
    );
    for m in &leased {
        ack(&d, &dest, m.id)
            .map_err(|f| format!("ack of a message leased before the purge: {f}"))?;
    }
    publish_ok(&d, &dest, "after")?;
    sub.credit(2);
    let m = next(&rx, "the message published after the purge")?;
    ensure!(
        text(&m) == "after",
        "after the purge got {:?}, a purged message",
        text(&m)
    );
    ack(&d, &dest, m.id).map_err(|f| format!("ack after the purge: {f}"))?;
    nothing_within(&rx, Duration::from_millis(300), "a purged message")
}

/// `if_unused` and `if_empty` refuse and change nothing; a delete then
/// drops every message (waiting and leased), ends the subscription, and
/// the queue made anew by a publish holds only what came after.
pub(crate) fn delete_honours_its_conditions_and_ends_consumers(
    make: &Harness,
) -> Result<(), String> {
    let d = make();
    let dest = destination("delete");
    for i in 0..3 {
        publish_ok(&d, &dest, format!("d{i}"))?;
    }
    let (c, rx) = Consumer::channel();
    let sub = d
        .subscribe(&dest, c, options(1, Duration::from_secs(60)))
        .map_err(|f| format!("subscribe: {f}"))?;
    let first = next(&rx, "the first delivery")?;
    let unused = DeleteOptions {
        if_unused: true,
        if_empty: false,
    };
    let r = delete(&d, &dest, unused);
    if unsupported(&r) {
        return Ok(());
    }
    ensure!(
        matches!(&r, Err(f) if f.kind == FailureKind::Rejected),
        "delete if-unused of a queue with a consumer answered {r:?}, want Rejected"
    );
    let empty = DeleteOptions {
        if_unused: false,
        if_empty: true,
    };
    let r = delete(&d, &dest, empty);
    ensure!(
        matches!(&r, Err(f) if f.kind == FailureKind::Rejected),
        "delete if-empty of a queue with 3 messages answered {r:?}, want Rejected"
    );
    // Refused deletes changed nothing: the consumer still works.
    ack(&d, &dest, first.id).map_err(|f| format!("ack after a refused delete: {f}"))?;
    sub.credit(1);
    let second = next(&rx, "a delivery after a refused delete")?;
    let dropped = delete(&d, &dest, DeleteOptions::default())
        .map_err(|f| format!("delete of {dest}: {f}"))?;
    ensure!(
        dropped == 2,
        "delete of a queue with 1 waiting and 1 leased message said {dropped}, want 2"
    );
    match rx.recv_timeout(PATIENCE) {
        Ok(Delivery::Closed(_)) => {}
        Ok(Delivery::Message(m)) => {
            return Err(format!(
                "after the delete the consumer got {:?}, want its subscription closed",
                text(&m)
            ));
        }
        Err(_) => return Err("the consumer's subscription did not end with the delete".into()),
    }
    ensure!(
        ack(&d, &dest, second.id).is_err(),
        "an ack of a message dropped with its queue succeeded"
    );
    publish_ok(&d, &dest, "anew")?;
    let (c, rx) = Consumer::channel();
    let _sub = d
        .subscribe(&dest, c, options(10, Duration::from_secs(60)))
        .map_err(|f| format!("subscribe after the delete: {f}"))?;
    let m = next(&rx, "the message published after the delete")?;
    ensure!(
        text(&m) == "anew",
        "after the delete got {:?}, a deleted message",
        text(&m)
    );
    ack(&d, &dest, m.id).map_err(|f| format!("ack after the delete: {f}"))?;
    nothing_within(&rx, Duration::from_millis(300), "a deleted message")
}

/// A durable queue's purge and delete are kept: the next instance over
/// the same store brings back none of what they removed.
pub(crate) fn purged_and_deleted_messages_stay_gone_after_a_restart(
    make: &Harness,
) -> Result<(), String> {
    let purged = destination("purge-restart");
    let deleted = destination("delete-restart");
    let mut removed = Vec::new();
    {
        let d = make();
        for i in 0..3 {
            publish_ok(&d, &purged, format!("p{i}"))?;
            publish_ok(&d, &deleted, format!("d{i}"))?;
        }
        let r = purge(&d, &purged);
        if !unsupported(&r) {
            ensure!(r == Ok(3), "purge of 3 messages answered {r:?}");
            removed.push(&purged);
        }
        let r = delete(&d, &deleted, DeleteOptions::default());
        if !unsupported(&r) {
            ensure!(r == Ok(3), "delete of a queue of 3 messages answered {r:?}");
            removed.push(&deleted);
        }
    }
    let d = make();
    for dest in removed {
        let (c, rx) = Consumer::channel();
        let _sub = d
            .subscribe(dest, c, options(10, Duration::from_secs(60)))
            .map_err(|f| format!("subscribe after the restart: {f}"))?;
        nothing_within(
            &rx,
            Duration::from_millis(300),
            &format!("after the restart, a message removed from {dest}"),
        )?;
    }
    Ok(())
}
