//! Note tags: what a connection is told through its [`Wake`] (a session
//! with messages, a takeover, an outcome from a driver or the auth
//! instance), each made and read here.

use bindery::Note;
use bindery_classes::connection::Wake;

use crate::codec::QoS;

/// What a connection is told through its [`Wake`]; every note tag the
/// terminal uses is made and read here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Tag {
    /// Its session has messages.
    Wake,
    /// Another connection took its client id.
    TakenOver,
    /// A driver ended one of its subscriptions (a slow consumer under the
    /// `disconnect` policy).
    Ended,
    /// The driver's outcome of an inbound QoS 1 or 2 publish.
    Published { qos: QoS, packet_id: u16 },
    /// The auth instance's answer to CONNECT.
    Login,
    /// The auth instance's answer to a question of access.
    Authorized,
    /// A stored QoS 2 message the client PUBREC'd is acked in the store:
    /// PUBREL may go.
    Settled { packet_id: u16 },
    /// The session record saved as `seq` is stored: the SUBACK or
    /// UNSUBACK waiting for it may go.
    Recorded { seq: u32 },
}

/// Set in the tags of `Published`: the rest holds QoS and packet id.
const PUBLISHED: u64 = 1 << 40;
/// Set in the tags of `Settled`: the rest holds the packet id.
const SETTLED: u64 = 1 << 41;
/// Set in the tags of `Recorded`: the rest holds the sequence number.
const RECORDED: u64 = 1 << 42;

impl Tag {
    /// The note tag.
    pub(crate) fn to_u64(self) -> u64 {
        match self {
            Tag::Wake => 1,
            Tag::TakenOver => 2,
            Tag::Ended => 3,
            Tag::Login => 4,
            Tag::Authorized => 5,
            Tag::Settled { packet_id } => SETTLED | u64::from(packet_id),
            Tag::Recorded { seq } => RECORDED | u64::from(seq),
            Tag::Published { qos, packet_id } => {
                PUBLISHED | u64::from(qos) << 16 | u64::from(packet_id)
            }
        }
    }

    /// The tag a note carries, if it is one of ours.
    pub(crate) fn from_u64(tag: u64) -> Option<Tag> {
        match tag {
            1 => Some(Tag::Wake),
            2 => Some(Tag::TakenOver),
            3 => Some(Tag::Ended),
            4 => Some(Tag::Login),
            5 => Some(Tag::Authorized),
            t if t & RECORDED != 0 => Some(Tag::Recorded {
                seq: (t & 0xffff_ffff) as u32,
            }),
            t if t & SETTLED != 0 => Some(Tag::Settled {
                packet_id: (t & 0xffff) as u16,
            }),
            t if t & PUBLISHED != 0 => Some(Tag::Published {
                qos: ((t >> 16) & 3) as QoS,
                packet_id: (t & 0xffff) as u16,
            }),
            _ => None,
        }
    }

    /// Sends this tag, with no payload, through `wake`.
    pub(crate) fn send(self, wake: &Wake) {
        wake.note(Note::new(self.to_u64(), ()));
    }
}
