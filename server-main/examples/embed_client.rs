//! Bindery embedded in ten lines: a server from a module list and a
//! configuration, a client that publishes, consumes and acks.
//!
//! ```sh
//! cargo run -p bindery-server --example embed_client
//! ```

use bindery_classes::embed::Server;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let linked = bindery::modules![dispatcher_fast, driver_memqueue, parser_octets];
    let config = r#"
        [instances.d]
        module = "dispatcher.fast"
        [instances.q]
        module = "driver.memqueue"
        bind = ["/jobs/"]
        [instances.any]
        module = "parser.octets"
    "#;
    let server = Server::builder(linked).config_str(config).start()?;
    let client = server.client();
    let receipt = client.publish("/jobs/build", "text/plain", "compile the kernel")?;
    let mut jobs = client.consume("/jobs/build", 8)?;
    let job = jobs.recv()?;
    jobs.ack(&job)?;
    println!(
        "published {}, consumed and acked {:?}",
        receipt.id, job.body
    );
    Ok(())
}
