//! The embedding API (`bindery_classes::embed`): each call in its blocking
//! and async form, its typed errors, and messages crossing between the
//! embedding program and HTTP and MQTT clients of the same server.

use std::future::poll_fn;
use std::io::{BufRead, BufReader};
use std::pin::Pin;
use std::process::{Command, Stdio};
use std::time::Duration;

use bindery::FailureKind;
use bindery_classes::embed::{ClientError, Consumption, Server};
use bindery_classes::{Message, terminal};
use futures_core::Stream;

const BASIC: &str = r#"
[instances.d]
module = "dispatcher.fast"
[instances.q]
module = "driver.memqueue"
bind = ["/jobs/"]
[instances.t]
module = "driver.topic"
bind = ["/topics/"]
[instances.json]
module = "parser.json"
[instances.any]
module = "parser.octets"
"#;

fn server(extra: &str) -> Server {
    let linked = bindery::modules![
        dispatcher_fast,
        driver_memqueue,
        driver_topic,
        parser_json,
        parser_octets,
        terminal_http,
        terminal_mqtt,
        terminal_amqp
    ];
    Server::builder(linked)
        .config_str(format!("{BASIC}\n{extra}"))
        .threads(2)
        .start()
        .unwrap()
}

fn recv(c: &mut Consumption) -> Message {
    c.recv_timeout(Duration::from_secs(10))
        .unwrap()
        .expect("a message within 10 s")
}

#[test]
fn publish_consume_ack_and_nack_block_and_return_values() {
    let s = server("");
    let client = s.client();
    let receipt = client
        .publish("/jobs/build", "application/json", r#"{"target":"kernel"}"#)
        .unwrap();
    let mut jobs = client.consume("/jobs/build", 4).unwrap();
    let job = recv(&mut jobs);
    assert_eq!(job.id, receipt.id);
    assert_eq!(job.delivery_count, 1);
    jobs.nack(&job).unwrap();
    let again = recv(&mut jobs);
    assert_eq!(
        (again.id, again.delivery_count),
        (job.id, 2),
        "given back, counted"
    );
    jobs.ack(&again).unwrap();
    assert!(
        jobs.recv_timeout(Duration::from_millis(200))
            .unwrap()
            .is_none()
    );
    let stats = s.kernel().runtime().introspect();
    assert!(stats.instances.iter().any(|i| i.name == "q"));
    assert!(client.effective_config().contains("driver.memqueue"));
    // The client is Send + Sync + Clone: publish from other threads.
    let handles: Vec<_> = (0..4)
        .map(|i| {
            let c = client.clone();
            std::thread::spawn(move || c.publish("/jobs/many", "text/plain", format!("{i}")))
        })
        .collect();
    for h in handles {
        h.join().unwrap().unwrap();
    }
    let mut many = client.consume("/jobs/many", 8).unwrap();
    for _ in 0..4 {
        let m = recv(&mut many);
        many.ack(&m).unwrap();
    }
}

#[test]
fn failures_are_one_typed_error_with_kind_and_reason() {
    let s = server("");
    let client = s.client();
    let failed = |e: ClientError| match e {
        ClientError::Failed { kind, reason } => (kind, reason),
        other => panic!("{other:?}"),
    };
    let (kind, reason) = failed(client.publish("/nowhere/x", "text/plain", "x").unwrap_err());
    assert_eq!(kind, FailureKind::NotFound, "{reason}");
    let (kind, reason) = failed(
        client
            .publish("/jobs/a", "application/json", "{not json")
            .unwrap_err(),
    );
    assert_eq!(kind, FailureKind::Rejected, "{reason}");
    let (kind, reason) = failed(client.consume("/topics/a", 1).unwrap_err());
    assert_eq!(kind, FailureKind::Unsupported);
    assert!(reason.contains("subscribe"), "{reason}");
    let (kind, _) = failed(client.subscribe("/jobs/a").unwrap_err());
    assert_eq!(kind, FailureKind::Unsupported);

    let linked = bindery::modules![dispatcher_fast, driver_memqueue];
    let e = Server::builder(linked)
        .config_str("[instances.q]\nmodule = \"driver.nothing\"\n")
        .start()
        .unwrap_err();
    assert!(
        matches!(&e, ClientError::Start(why) if why.contains("driver.nothing")),
        "{e}"
    );
    let e = Server::builder(linked)
        .config_str("[instances.q]\nmodule = \"driver.memqueue\"\nbind = [\"/q/\"]\n")
        .start()
        .unwrap_err();
    assert!(
        matches!(&e, ClientError::Start(why) if why.contains("dispatcher")),
        "{e}"
    );
}

#[test]
fn topic_subscriptions_take_mqtt_wildcards() {
    let s = server("");
    let client = s.client();
    let mut temps = client.subscribe("/topics/sensors/+/temp").unwrap();
    let mut all = client.subscribe("/topics/sensors/#").unwrap();
    client
        .publish("/topics/sensors/kitchen/temp", "text/plain", "21")
        .unwrap();
    client
        .publish("/topics/sensors/kitchen/humidity", "text/plain", "40")
        .unwrap();
    assert_eq!(&recv(&mut temps).body[..], b"21");
    assert!(
        temps
            .recv_timeout(Duration::from_millis(200))
            .unwrap()
            .is_none()
    );
    assert_eq!(&recv(&mut all).body[..], b"21");
    assert_eq!(&recv(&mut all).body[..], b"40");
}

async fn next(c: &mut Consumption) -> Option<Result<Message, ClientError>> {
    poll_fn(|cx| Pin::new(&mut *c).poll_next(cx)).await
}

#[test]
fn async_forms_work_inside_a_tokio_runtime() {
    let s = server("");
    let client = s.client();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut jobs = client.consume("/jobs/async", 2).unwrap();
        let receipt = client
            .publish_async("/jobs/async", "text/plain", "hello")
            .await
            .unwrap();
        let m = next(&mut jobs).await.unwrap().unwrap();
        assert_eq!(m.id, receipt.id);
        jobs.ack_async(&m).await.unwrap();
        let e = client
            .publish_async("/nowhere", "text/plain", "x")
            .await
            .unwrap_err();
        assert!(matches!(
            e,
            ClientError::Failed {
                kind: FailureKind::NotFound,
                ..
            }
        ));
    });
}

#[test]
fn messages_cross_between_the_program_and_http_and_mqtt_clients() {
    let s = server(
        "[instances.http]\nmodule = \"terminal.http\"\nbind = [\"127.0.0.1:0\"]\n\
         [instances.mqtt]\nmodule = \"terminal.mqtt\"\nbind = [\"127.0.0.2:0\"]\n",
    );
    let client = s.client();
    let addr = |key: &str| {
        terminal::all(s.kernel().runtime())
            .into_iter()
            .find(|(k, _)| k == key)
            .and_then(|(_, t)| t.local_addrs().first().copied())
            .unwrap()
    };
    let (http, mqtt) = (addr("127.0.0.1:0"), addr("127.0.0.2:0"));

    // Program → HTTP client.
    client.publish("/jobs/x", "text/plain", "to curl").unwrap();
    let out = Command::new("curl")
        .args(["-s", &format!("http://{http}/jobs/x?wait=5")])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "to curl");
    // HTTP client → program.
    let mut back = client.consume("/jobs/back", 1).unwrap();
    let out = Command::new("curl")
        .args([
            "-s",
            "-X",
            "POST",
            "-H",
            "Content-Type: text/plain",
            "--data",
            "from curl",
        ])
        .arg(format!("http://{http}/jobs/back"))
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(&recv(&mut back).body[..], b"from curl");

    // MQTT client → program.
    let mut temps = client.subscribe("/topics/home/+/temp").unwrap();
    let port = mqtt.port().to_string();
    let host = mqtt.ip().to_string();
    let status = Command::new("mosquitto_pub")
        .args([
            "-h",
            &host,
            "-p",
            &port,
            "-t",
            "home/attic/temp",
            "-m",
            "17.5",
        ])
        .status()
        .unwrap();
    assert!(status.success());
    let m = recv(&mut temps);
    assert_eq!(
        (&*m.destination, &m.body[..]),
        ("/topics/home/attic/temp", &b"17.5"[..])
    );

    // Program → MQTT client.
    let mut sub = Command::new("mosquitto_sub")
        .args([
            "-h", &host, "-p", &port, "-t", "home/#", "-C", "1", "-W", "10", "-v",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // Publish until the subscriber, once connected, takes one.
    let mut line = String::new();
    let reader = std::thread::spawn({
        let out = sub.stdout.take().unwrap();
        move || {
            let mut l = String::new();
            BufReader::new(out).read_line(&mut l).unwrap();
            l
        }
    });
    for _ in 0..100 {
        client
            .publish("/topics/home/cellar/temp", "text/plain", "12")
            .unwrap();
        if reader.is_finished() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    line.push_str(&reader.join().unwrap());
    let _ = sub.wait();
    assert_eq!(line.trim(), "home/cellar/temp 12");
}

#[test]
fn messages_cross_between_the_program_and_an_amqp_client() {
    use lapin::options::{BasicGetOptions, BasicPublishOptions, QueueDeclareOptions};
    use lapin::types::FieldTable;
    use lapin::{BasicProperties, Connection, ConnectionProperties};
    let s = server(
        "[instances.amqp]\nmodule = \"terminal.amqp\"\nbind = [\"127.0.0.3:0\"]\n\
         config = { queue_root = \"/jobs/\" }\n",
    );
    let client = s.client();
    let amqp = terminal::all(s.kernel().runtime())
        .into_iter()
        .find(|(k, _)| k == "127.0.0.3:0")
        .and_then(|(_, t)| t.local_addrs().first().copied())
        .unwrap();
    // Program → AMQP client, and back, on the queue /jobs/crossing.
    client
        .publish("/jobs/crossing", "text/plain", "to lapin")
        .unwrap();
    let mut back = client.consume("/jobs/crossing-back", 1).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(30), async {
            let conn = Connection::connect(
                &format!("amqp://guest:guest@{amqp}/%2f"),
                ConnectionProperties::default(),
            )
            .await
            .unwrap();
            let ch = conn.create_channel().await.unwrap();
            for q in ["crossing", "crossing-back"] {
                ch.queue_declare(
                    q.into(),
                    QueueDeclareOptions::default(),
                    FieldTable::default(),
                )
                .await
                .unwrap();
            }
            let got = ch
                .basic_get("crossing".into(), BasicGetOptions { no_ack: true })
                .await
                .unwrap()
                .expect("the program's message");
            assert_eq!(got.delivery.data, b"to lapin");
            ch.basic_publish(
                "".into(),
                "crossing-back".into(),
                BasicPublishOptions::default(),
                b"from lapin",
                BasicProperties::default().with_content_type("text/plain".into()),
            )
            .await
            .unwrap();
            conn.close(200, "bye".into()).await.unwrap();
        })
        .await
        .expect("the AMQP exchange finished in time")
    });
    assert_eq!(&recv(&mut back).body[..], b"from lapin");
}
