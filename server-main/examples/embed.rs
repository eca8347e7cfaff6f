//! Bindery embedded in a program: a kernel from Rust code, messages
//! published and consumed in-process, no socket.
//!
//! ```sh
//! cargo run -p bindery-server --example embed
//! ```

use bindery::{Completion, Config, Kernel};
use bindery_classes::driver::SubscribeOptions;
use bindery_classes::{Consumer, Delivery, Message, dispatcher};

fn main() -> anyhow::Result<()> {
    let config = Config::parse(
        "embedded",
        "[instances.d]\nmodule = \"dispatcher.fast\"\n\
         [instances.q]\nmodule = \"driver.memqueue\"\nbind = [\"/jobs/\"]\n\
         [instances.any]\nmodule = \"parser.octets\"\n",
    )?;
    let linked = bindery::modules![dispatcher_fast, driver_memqueue, parser_octets];
    let mut kernel = Kernel::build(linked, &config, Some(1))?;
    kernel.start()?;
    let d = dispatcher::lookup(kernel.runtime(), "default").expect("dispatcher");

    let (done, outcome) = Completion::channel();
    d.publish(
        Message::new("/jobs/build", "text/plain", "compile the kernel"),
        done,
    );
    println!(
        "published {}",
        outcome.recv()?.map_err(|f| anyhow::anyhow!("{f}"))?.id
    );

    let driver = d
        .driver("/jobs/build")
        .map_err(|f| anyhow::anyhow!("{f}"))?;
    let (consumer, deliveries) = Consumer::channel();
    let _sub = driver.subscribe("/jobs/build", consumer, SubscribeOptions::default());
    if let Delivery::Message(m) = deliveries.recv()? {
        println!("consumed {}: {}", m.id, String::from_utf8_lossy(&m.body));
        let (done, acked) = Completion::channel();
        driver.ack("/jobs/build", m.id, done);
        acked.recv()?.map_err(|f| anyhow::anyhow!("{f}"))?;
    }
    kernel.shutdown();
    Ok(())
}
