//! A driver instance restarted under a running MQTT terminal
//! (`bindery ctl restart topics`, `... restart durable`): the terminal
//! subscribes again to the new incarnation, so connected clients keep
//! their connections and subscriptions, and persistent sessions keep
//! their stored messages and records (issue 22). Raw MQTT packets, so
//! every acknowledgement is the test's choice.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::conn::Conn;
use common::{Server, TempDir, config};

fn start(dir: &TempDir) -> (Server, SocketAddr) {
    let s = Server::start_at(&dir.0, &config(""), &["--threads", "2"]);
    let m = s.mqtt.expect("the default configuration serves MQTT");
    (s, m)
}

/// `bindery ctl restart NAME`, which returns once the new incarnation runs.
fn restart(s: &Server, name: &str) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_bindery"))
        .args(["ctl", "--url", &format!("http://{}", s.manage.unwrap())])
        .arg("--token-file")
        .arg(&s.token_file)
        .args(["restart", name, "--grace", "1"])
        .output()
        .unwrap();
    assert!(out.status.success(), "restart {name}: {out:?}");
}

/// Publishes numbered QoS 0 messages to `topic` until `sub` receives one
/// (the terminal subscribes again a moment after the restart; what is
/// published before that reaches nobody, as topics keep nothing). Bounded:
/// 400 tries, 25 ms apart.
fn until_one_arrives(addr: SocketAddr, sub: &mut Conn, topic: &str) -> String {
    use std::io::Read;
    let (mut p, _) = Conn::open(addr, "", true);
    let socket = sub.r.get_ref().try_clone().unwrap();
    for i in 0..400 {
        assert!(p.publish(topic, 0, false, 0, &format!("m{i}")));
        socket
            .set_read_timeout(Some(Duration::from_millis(25)))
            .unwrap();
        let mut head = [0u8; 1];
        match sub.r.read(&mut head) {
            Ok(0) => panic!("the subscriber's connection was closed"),
            Ok(_) => {
                socket
                    .set_read_timeout(Some(Duration::from_secs(10)))
                    .unwrap();
                let (mut len, mut shift) = (0usize, 0);
                loop {
                    let mut b = [0u8; 1];
                    sub.r.read_exact(&mut b).unwrap();
                    len |= usize::from(b[0] & 0x7f) << shift;
                    shift += 7;
                    if b[0] & 0x80 == 0 {
                        break;
                    }
                }
                let mut body = vec![0; len];
                sub.r.read_exact(&mut body).unwrap();
                assert_eq!(head[0] >> 4, 3, "a PUBLISH");
                return common::conn::parse(head[0], &body).payload;
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => panic!("the subscriber's connection broke: {e}"),
        }
    }
    panic!("nothing reached {topic} within 400 publishes after the restart");
}

/// The topic driver restarted: a connected client, clean or persistent,
/// stays connected and receives what is published after the restart.
#[test]
fn connected_clients_keep_their_subscriptions_when_the_topic_driver_restarts() {
    let dir = TempDir::new();
    let (s, m) = start(&dir);
    let (mut clean, _) = Conn::open(m, "clean-one", true);
    clean.subscribe("tr/clean", 0);
    let (mut kept, _) = Conn::open(m, "kept-one", false);
    kept.subscribe("tr/kept", 1);
    restart(&s, "topics");
    let first = until_one_arrives(m, &mut clean, "tr/clean");
    assert!(first.starts_with('m'), "{first}");
    let first = until_one_arrives(m, &mut kept, "tr/kept");
    assert!(first.starts_with('m'), "{first}");
    // Not ended: no `subscriptions ended` counted for either.
    assert_eq!(
        common::metric(&s, "bindery_mqtt_subscriptions_ended_total", ""),
        Some(0)
    );
    assert!(s.terminate().success());
}

/// The durable driver under `persistence` restarted: a persistent
/// session's stored messages, from before and after the restart, are
/// delivered whether the client was away or connected, its record is
/// written to the new incarnation (a new subscription is acknowledged and
/// survives a `kill -9`), and acked messages stay acked.
#[test]
fn persistent_sessions_keep_their_store_when_the_durable_driver_restarts() {
    let dir = TempDir::new();
    let (s, m) = start(&dir);
    let (mut away, _) = Conn::open(m, "away", false);
    away.subscribe("dr/away", 1);
    away.disconnect();
    let (mut live, _) = Conn::open(m, "live", false);
    live.subscribe("dr/live", 1);
    let (mut p, _) = Conn::open(m, "", true);
    assert!(p.publish("dr/away", 1, false, 1, "before"));
    assert!(p.publish("dr/r", 1, true, 2, "retained before"));

    restart(&s, "durable");

    // The publisher's PUBACK waits for the copy in the session's queue on
    // the new incarnation.
    let (mut p, _) = Conn::open(m, "", true);
    assert!(p.publish("dr/away", 1, false, 1, "after"), "PUBACK");
    assert!(p.publish("dr/live", 1, false, 2, "live after"), "PUBACK");
    let g = live.next_publish();
    assert_eq!(
        (g.topic.as_str(), g.payload.as_str()),
        ("dr/live", "live after")
    );
    live.ack(&g);
    // A new subscription's SUBACK waits for its record on the new one.
    live.subscribe("dr/later", 1);
    live.disconnect();

    let (mut away, present) = Conn::open(m, "away", false);
    assert!(present, "the session is kept");
    let got = away.until_marker(m, "dr/away");
    let payloads: Vec<&str> = got.iter().map(|g| g.payload.as_str()).collect();
    assert_eq!(payloads, ["before", "after"]);
    // Its SUBACK waits for a record written after the acks (one journal,
    // in order; one connection's packets are handled in order): what was
    // acked is on disk before the crash below.
    away.subscribe("dr/sync", 1);
    away.disconnect();
    // The records are held leased on the new incarnation, so each record
    // superseded since was acked: one live record per session is left.
    let records = "destination=\"/durable/mqtt/sessions\"";
    assert_eq!(
        (
            common::metric(&s, "bindery_destination_leased", records),
            common::metric(&s, "bindery_destination_depth", records)
        ),
        (Some(2), Some(0))
    );

    // Across a crash: the records written to the new incarnation hold,
    // and what was acked does not come back.
    s.kill9();
    let (s, m) = start(&dir);
    let (mut live, present) = Conn::open(m, "live", false);
    assert!(present, "the session record survived");
    let (mut p, _) = Conn::open(m, "", true);
    assert!(p.publish("dr/later", 1, false, 3, "to the later subscription"));
    let g = live.next_publish();
    assert_eq!(g.payload, "to the later subscription");
    live.ack(&g);
    let (mut away, present) = Conn::open(m, "away", false);
    assert!(present);
    let again = away.until_marker(m, "dr/away");
    assert!(again.is_empty(), "acked, gone: {again:?}");
    let (mut r, _) = Conn::open(m, "", true);
    r.subscribe("dr/r", 1);
    assert_eq!(r.next_publish().payload, "retained before");
    assert!(s.terminate().success());
}
