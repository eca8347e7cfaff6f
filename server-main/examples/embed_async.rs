//! The embedding API inside a tokio application: publishes are futures,
//! a consumption is a `Stream`. Bindery runs its own reactor threads; the
//! futures need no particular executor.
//!
//! ```sh
//! cargo run -p bindery-server --example embed_async
//! ```

use std::future::poll_fn;
use std::pin::Pin;

use bindery_classes::embed::{Consumption, Server};
use futures_core::Stream;

/// The next item of a stream (what `StreamExt::next` does).
async fn next(
    c: &mut Consumption,
) -> Option<Result<bindery_classes::Message, bindery_classes::embed::ClientError>> {
    poll_fn(|cx| Pin::new(&mut *c).poll_next(cx)).await
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let linked = bindery::modules![dispatcher_fast, driver_topic, parser_octets];
    let server = Server::builder(linked)
        .config_str(
            "[instances.d]\nmodule = \"dispatcher.fast\"\n\
             [instances.t]\nmodule = \"driver.topic\"\nbind = [\"/topics/\"]\n\
             [instances.any]\nmodule = \"parser.octets\"\n",
        )
        .start()?;
    let client = server.client();
    let mut temps = client.subscribe("/topics/sensors/+/temp")?;
    for (room, t) in [("kitchen", "21.5"), ("attic", "17.0")] {
        let path = format!("/topics/sensors/{room}/temp");
        client
            .publish_async(&path, "text/plain", t.to_owned())
            .await?;
    }
    for _ in 0..2 {
        if let Some(m) = next(&mut temps).await {
            let m = m?;
            println!("{} = {}", m.destination, String::from_utf8_lossy(&m.body));
        }
    }
    Ok(())
}
