//! Connecting to Redis: timeouts, and the scripts loaded on every new
//! connection (a restarted Redis has none).

use std::time::Duration;

use redis::{Client, Connection, RedisResult};

use crate::scripts;

/// The loaded scripts' SHA1s.
#[derive(Clone, Debug, Default)]
pub(crate) struct Scripts {
    pub(crate) ack: String,
    pub(crate) claim: String,
    pub(crate) renew: String,
    pub(crate) release: String,
    pub(crate) prune: String,
}

/// How long connecting and commands may take.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Timeouts {
    pub(crate) connect: Duration,
    pub(crate) command: Duration,
}

/// A connection with the scripts loaded; `extra_read` is added to the
/// read timeout (a blocking read waits that long on purpose).
pub(crate) fn connect(
    client: &Client,
    t: Timeouts,
    extra_read: Duration,
) -> RedisResult<(Connection, Scripts)> {
    let mut c = client.get_connection_with_timeout(t.connect)?;
    c.set_read_timeout(Some(t.command + extra_read))?;
    c.set_write_timeout(Some(t.command))?;
    let mut load = |text: &str| -> RedisResult<String> {
        redis::cmd("SCRIPT").arg("LOAD").arg(text).query(&mut c)
    };
    let s = Scripts {
        ack: load(scripts::ACK)?,
        claim: load(scripts::CLAIM)?,
        renew: load(scripts::RENEW)?,
        release: load(scripts::RELEASE)?,
        prune: load(scripts::PRUNE)?,
    };
    Ok((c, s))
}

/// A Redis URL without its password, for messages.
pub(crate) fn display_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://{}", &url[..s], &url[at + 1..]),
        _ => url.to_owned(),
    }
}

/// Doubling waits between reconnection attempts, from 50 ms to 2 s.
#[derive(Debug)]
pub(crate) struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            next: Duration::from_millis(50),
        }
    }
}

impl Backoff {
    /// The wait before the next attempt, doubling the one after.
    pub(crate) fn step(&mut self) -> Duration {
        let now = self.next;
        self.next = (self.next * 2).min(Duration::from_secs(2));
        now
    }

    /// Connected: the next failure starts from the shortest wait.
    pub(crate) fn reset(&mut self) {
        *self = Backoff::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_stay_out_of_messages() {
        assert_eq!(
            display_url("redis://:secret@127.0.0.1:6379/2"),
            "redis://127.0.0.1:6379/2"
        );
        assert_eq!(display_url("redis://127.0.0.1/"), "redis://127.0.0.1/");
    }
}
