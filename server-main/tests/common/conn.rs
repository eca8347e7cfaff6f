//! One raw MQTT 3.1.1 connection for tests that choose every
//! acknowledgement themselves (persistence, restarts).

use std::collections::VecDeque;
use std::io::{BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use super::mqtt::{connect_packet, read_packet, subscribe_packet};

/// A received PUBLISH.
#[derive(Debug)]
pub struct Got {
    pub topic: String,
    pub qos: u8,
    pub retain: bool,
    /// The DUP flag.
    pub dup: bool,
    pub id: u16,
    pub payload: String,
}

/// A PUBLISH packet's content.
pub fn parse(head: u8, body: &[u8]) -> Got {
    let qos = (head >> 1) & 3;
    let n = usize::from(u16::from_be_bytes([body[0], body[1]]));
    let topic = String::from_utf8_lossy(&body[2..2 + n]).into_owned();
    let (id, rest) = if qos > 0 {
        (u16::from_be_bytes([body[2 + n], body[3 + n]]), 4 + n)
    } else {
        (0, 2 + n)
    };
    Got {
        topic,
        qos,
        retain: head & 1 == 1,
        dup: head & 0x08 != 0,
        id,
        payload: String::from_utf8_lossy(&body[rest..]).into_owned(),
    }
}

/// One raw MQTT connection.
pub struct Conn {
    pub w: TcpStream,
    pub r: BufReader<TcpStream>,
    /// Publishes read while another packet was awaited.
    pub early: VecDeque<Got>,
    /// Other packets read while a publish was awaited: first byte and body.
    pub others: Vec<(u8, Vec<u8>)>,
}

impl Conn {
    /// Connects as `id`; returns the connection and `session_present`.
    pub fn open(addr: SocketAddr, id: &str, clean: bool) -> (Conn, bool) {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut c = Conn {
            w: s.try_clone().unwrap(),
            r: BufReader::new(s),
            early: VecDeque::new(),
            others: Vec::new(),
        };
        c.w.write_all(&connect_packet(id, clean, 0, None)).unwrap();
        let (head, body) = read_packet(&mut c.r).unwrap();
        assert_eq!((head, body[1]), (0x20, 0), "{id}: CONNACK accepted");
        (c, body[0] == 1)
    }

    pub fn subscribe(&mut self, filter: &str, qos: u8) {
        self.w.write_all(&subscribe_packet(7, filter, qos)).unwrap();
        let (head, body) = self.next_not_publish();
        assert_eq!((head, body.last().copied()), (0x90, Some(qos)), "SUBACK");
    }

    /// The next packet that is not a PUBLISH (publishes read meanwhile
    /// are kept for [`Conn::next_publish`]).
    pub fn next_not_publish(&mut self) -> (u8, Vec<u8>) {
        loop {
            let (head, body) = read_packet(&mut self.r).expect("a packet");
            if head >> 4 != 3 {
                return (head, body);
            }
            let g = parse(head, &body);
            self.early.push_back(g);
        }
    }

    /// Publishes and completes the QoS handshake: true once acknowledged
    /// (PUBACK, or PUBCOMP at QoS 2), false if the connection broke.
    pub fn publish(&mut self, topic: &str, qos: u8, retain: bool, id: u16, payload: &str) -> bool {
        let mut out = Vec::new();
        super::mqtt::publish_packet(&mut out, topic, qos, id, payload.as_bytes());
        if retain {
            out[0] |= 1;
        }
        if self.w.write_all(&out).is_err() {
            return false;
        }
        if qos == 0 {
            return true;
        }
        let Ok((head, _)) = read_packet(&mut self.r) else {
            return false;
        };
        if qos == 1 {
            return head == 0x40;
        }
        assert_eq!(head, 0x50, "PUBREC");
        let [a, b] = id.to_be_bytes();
        if self.w.write_all(&[0x62, 2, a, b]).is_err() {
            return false;
        }
        matches!(read_packet(&mut self.r), Ok((0x70, _)))
    }

    /// The next PUBLISH (other packets are skipped).
    pub fn next_publish(&mut self) -> Got {
        if let Some(g) = self.early.pop_front() {
            return g;
        }
        loop {
            let (head, body) = read_packet(&mut self.r).expect("a PUBLISH");
            if head >> 4 == 3 {
                return parse(head, &body);
            }
            self.others.push((head, body));
        }
    }

    /// Acknowledges `g` fully (PUBACK; or PUBREC, PUBREL awaited, PUBCOMP).
    pub fn ack(&mut self, g: &Got) {
        let [a, b] = g.id.to_be_bytes();
        match g.qos {
            1 => self.w.write_all(&[0x40, 2, a, b]).unwrap(),
            2 => {
                self.w.write_all(&[0x50, 2, a, b]).unwrap();
                let (head, _) = self.next_not_publish();
                assert_eq!(head, 0x62, "PUBREL");
                self.w.write_all(&[0x70, 2, a, b]).unwrap();
            }
            _ => {}
        }
    }

    /// Publishes until `marker` comes back on `topic`, acking everything;
    /// returns what came before it.
    pub fn until_marker(&mut self, addr: SocketAddr, topic: &str) -> Vec<Got> {
        let (mut p, _) = Conn::open(addr, "", true);
        assert!(p.publish(topic, 1, false, 1, "marker"), "marker PUBACK");
        let mut got = Vec::new();
        loop {
            let g = self.next_publish();
            self.ack(&g);
            if g.payload == "marker" {
                return got;
            }
            got.push(g);
        }
    }

    pub fn disconnect(mut self) {
        let _ = self.w.write_all(&[0xe0, 0]);
    }
}
