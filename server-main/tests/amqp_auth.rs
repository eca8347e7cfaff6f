//! AMQP through the auth class, with an unmodified client (lapin): logins
//! refused with `connection.close` 403 while others are served, and
//! publishes, consumers, `basic.get`, declarations and topic bindings
//! refused with `channel.close` 403 by `auth.file`'s rules.

mod common;

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};

use common::amqp::{connect, run};
use common::{Server, TempDir, metric};
use lapin::options::{
    BasicConsumeOptions, BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions,
    QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection};

const ACL: &str = "
allow  alice  all                /queues/shared
allow  bob    consume            /queues/shared
allow  alice  publish,consume    /queues/alice-only
allow  alice  subscribe          /topics/sensors/#
";

/// A server whose AMQP terminal uses an `auth.file` instance with alice
/// (password `wonderland`) and bob (`builder`), and [`ACL`].
fn start(dir: &Path) -> (Server, SocketAddr) {
    let file = dir.join("passwd");
    for (user, password) in [("alice", "wonderland"), ("bob", "builder")] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_bindery"))
            .arg("passwd")
            .arg(&file)
            .args([user, "--stdin"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(format!("{password}\n").as_bytes()).unwrap();
        drop(stdin);
        assert!(child.wait().unwrap().success());
    }
    std::fs::write(dir.join("acl"), ACL).unwrap();
    let config = common::config(&format!(
        r#"
[instances.users]
module = "auth.file"
[instances.users.config]
password_file = "{passwd}"
acl_file = "{acl}"

[instances.amqp.config]
auth = "default"
"#,
        passwd = file.display(),
        acl = dir.join("acl").display(),
    ));
    let s = Server::start_at(dir, &config, &["--threads", "2"]);
    let amqp = s.bound("127.0.0.7:0");
    (s, amqp)
}

async fn channel(addr: SocketAddr, user: &str, password: &str) -> (Connection, Channel) {
    let conn = connect(addr, user, password).await.unwrap();
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    (conn, ch)
}

/// Publishes with confirms: the error (the channel closed) if refused.
async fn publish(ch: &Channel, key: &str, body: &[u8]) -> Result<(), String> {
    let confirm = ch
        .basic_publish(
            "".into(),
            key.into(),
            BasicPublishOptions::default(),
            body,
            BasicProperties::default(),
        )
        .await
        .map_err(|e| e.to_string())?
        .await
        .map_err(|e| e.to_string())?;
    if !confirm.is_ack() {
        return Err(format!("{confirm:?}"));
    }
    Ok(())
}

/// Waits until the channel's 403 has arrived: an operation on it then
/// fails, and the text is in the error lapin kept.
async fn refused_text(ch: &Channel, first: Option<String>) -> String {
    let mut text = first.unwrap_or_default();
    let again = ch
        .basic_get("shared".into(), BasicGetOptions::default())
        .await;
    if let Err(e) = again {
        text.push_str(&format!(" / {e} / {e:?}"));
    }
    text
}

#[test]
fn a_wrong_password_is_refused_with_403_and_others_are_served() {
    let dir = TempDir::new();
    let (server, addr) = start(&dir.0);
    run(async {
        for (user, password) in [("alice", "not-her-password"), ("mallory", "guess")] {
            let e = connect(addr, user, password)
                .await
                .expect_err("a refused login");
            let text = format!("{e} {e:?}");
            assert!(
                text.contains("403") || text.contains("ACCESS_REFUSED"),
                "{text}"
            );
            assert!(text.contains(user), "the text names the user: {text}");
            assert!(!text.contains(password), "never the password: {text}");
        }
        // Meanwhile a good user works end to end.
        let (_conn, ch) = channel(addr, "alice", "wonderland").await;
        ch.queue_declare(
            "shared".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
        publish(&ch, "shared", b"from alice").await.unwrap();
        let got = ch
            .basic_get("shared".into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
            .expect("a message");
        assert_eq!(got.delivery.data, b"from alice");
    });
    assert_eq!(
        metric(
            &server,
            "bindery_amqp_auth_failures_total",
            "instance=\"amqp\""
        ),
        Some(2)
    );
}

#[test]
fn publishing_consuming_declaring_and_binding_are_authorized() {
    let dir = TempDir::new();
    let (_server, addr) = start(&dir.0);
    run(async {
        let (_alice_conn, alice) = channel(addr, "alice", "wonderland").await;
        for q in ["shared", "alice-only"] {
            alice
                .queue_declare(
                    q.into(),
                    QueueDeclareOptions::default(),
                    FieldTable::default(),
                )
                .await
                .unwrap();
        }

        // bob may not publish to the shared queue: 403 on his channel.
        let (bob_conn, bob) = channel(addr, "bob", "builder").await;
        let first = publish(&bob, "shared", b"from bob").await.err();
        let text = refused_text(&bob, first).await;
        assert!(
            text.contains("ACCESS_REFUSED") && text.contains("/queues/shared"),
            "{text}"
        );
        // alice may, and bob may consume what she sent.
        publish(&alice, "shared", b"from alice").await.unwrap();
        let bob = bob_conn.create_channel().await.unwrap();
        let got = bob
            .basic_get("shared".into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
            .expect("alice's message");
        assert_eq!(got.delivery.data, b"from alice");

        // bob may not consume from alice's queue, nor get from it.
        publish(&alice, "alice-only", b"hers").await.unwrap();
        let e = bob
            .basic_consume(
                "alice-only".into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .err()
            .map(|e| e.to_string());
        let text = refused_text(&bob, e).await;
        assert!(
            text.contains("ACCESS_REFUSED") && text.contains("/queues/alice-only"),
            "{text}"
        );
        let bob = bob_conn.create_channel().await.unwrap();
        let e = bob
            .basic_get("alice-only".into(), BasicGetOptions::default())
            .await
            .expect_err("a refused basic.get");
        assert!(e.to_string().contains("ACCESS_REFUSED"), "{e}");

        // Nor make a queue he has no right to, nor bind to a topic he may
        // not subscribe to; a server-named queue is his own.
        let bob = bob_conn.create_channel().await.unwrap();
        let e = bob
            .queue_declare(
                "bobs-own".into(),
                QueueDeclareOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect_err("a refused declaration");
        assert!(e.to_string().contains("/queues/bobs-own"), "{e}");
        let bob = bob_conn.create_channel().await.unwrap();
        let mine = bob
            .queue_declare(
                "".into(),
                QueueDeclareOptions {
                    exclusive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        let e = bob
            .queue_bind(
                mine.name().as_str().into(),
                "amq.topic".into(),
                "sensors.#".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect_err("a refused binding");
        assert!(e.to_string().contains("/topics/sensors/#"), "{e}");

        // alice's own things still work after all that: her queue holds
        // her message, and she may bind a queue of hers to the sensors.
        let got = alice
            .basic_get("alice-only".into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
            .expect("her message");
        assert_eq!(got.delivery.data, b"hers");
        let hers = alice
            .queue_declare(
                "".into(),
                QueueDeclareOptions {
                    exclusive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        alice
            .queue_bind(
                hers.name().as_str().into(),
                "amq.topic".into(),
                "sensors.#".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
    });
}
