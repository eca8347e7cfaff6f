//! Embedding: a kernel built from Rust code, used in-process with no socket.

use std::time::Duration;

use bindery::{Completion, Config, FailureKind, Kernel};
use bindery_classes::driver::SubscribeOptions;
use bindery_classes::{Consumer, Delivery, Message, dispatcher};

#[test]
fn publish_and_consume_in_process() {
    let config = Config::parse(
        "embedded",
        r#"
[instances.d]
module = "dispatcher.fast"
[instances.q]
module = "driver.memqueue"
bind = ["/jobs/"]
[instances.json]
module = "parser.json"
"#,
    )
    .unwrap();
    let linked = bindery::modules![dispatcher_fast, driver_memqueue, parser_json];
    let mut kernel = Kernel::build(linked, &config, Some(1)).unwrap();
    kernel.start().unwrap();
    let rt = kernel.runtime();
    let d = dispatcher::lookup(rt, "default").expect("a dispatcher bound to default");

    let (done, outcome) = Completion::channel();
    d.publish(
        Message::new("/jobs/a", "application/json", r#"{"x":1}"#),
        done,
    );
    let receipt = outcome.recv().unwrap().unwrap();

    let (done, outcome) = Completion::channel();
    d.publish(Message::new("/jobs/a", "application/json", "{x"), done);
    assert_eq!(
        outcome.recv().unwrap().unwrap_err().kind,
        FailureKind::Rejected
    );
    let (done, outcome) = Completion::channel();
    d.publish(Message::new("/jobs/a", "text/plain", "x"), done);
    assert_eq!(
        outcome.recv().unwrap().unwrap_err().kind,
        FailureKind::Unsupported
    );

    let driver = d.driver("/jobs/a").unwrap();
    let (consumer, deliveries) = Consumer::channel();
    let _sub = driver
        .subscribe("/jobs/a", consumer, SubscribeOptions::default())
        .unwrap();
    let Delivery::Message(m) = deliveries.recv_timeout(Duration::from_secs(5)).unwrap() else {
        panic!("closed");
    };
    assert_eq!((m.id, &m.body[..]), (receipt.id, &br#"{"x":1}"#[..]));
    let (done, acked) = Completion::channel();
    driver.ack("/jobs/a", m.id, done);
    acked.recv().unwrap().unwrap();
    kernel.shutdown();
}
