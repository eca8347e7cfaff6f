//! Completions: how the outcome of queued work reaches its caller.
//!
//! Module methods return at once. Work that has to wait (a disk write, a
//! consumer, a remote engine) takes a [`Completion`] from its caller and
//! completes it later, from any thread, with success or with a [`Failure`].
//! The caller chooses where the outcome goes: usually back to its own
//! reactor as a [`Note`] for the connection that asked (see
//! [`Cx::completion`](crate::reactor::Cx::completion)); in tests and
//! embedding, a channel ([`Completion::channel`]).
//!
//! A completion that is dropped without being completed reports
//! [`FailureKind::Dropped`], so a caller always hears back.

use std::any::Any;
use std::borrow::Cow;
use std::fmt;
use std::sync::{Arc, mpsc};
use std::time::Duration;

/// Why queued work failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum FailureKind {
    /// Nothing is bound, or the thing asked for does not exist.
    NotFound,
    /// The input was refused as invalid.
    Rejected,
    /// The input is of a kind the callee does not handle (no parser for a
    /// content type, say).
    Unsupported,
    /// A limit was reached; try again later.
    Full,
    /// The callee cannot serve now (stopping, broken storage, ...).
    Unavailable,
    /// A cap on what clients create was reached (the queues a driver
    /// makes on first use, say): unlike [`FailureKind::Full`], waiting
    /// does not lift it; the reason names the cap and its configuration
    /// field.
    Capacity,
    /// The completion was dropped without an answer.
    Dropped,
    /// A bug or an unexpected condition.
    Internal,
}

/// The failure side of a completion: a kind and a reason for people.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// What kind of failure.
    pub kind: FailureKind,
    /// Why, naming the thing at fault.
    pub reason: Cow<'static, str>,
    /// For [`FailureKind::Full`]: when a retry may succeed.
    pub retry_after: Option<Duration>,
}

impl Failure {
    /// A failure of `kind` because of `reason`.
    pub fn new(kind: FailureKind, reason: impl Into<Cow<'static, str>>) -> Self {
        Failure {
            kind,
            reason: reason.into(),
            retry_after: None,
        }
    }

    /// Adds a retry hint.
    pub fn retry_after(mut self, after: Duration) -> Self {
        self.retry_after = Some(after);
        self
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}: {}", self.kind, self.reason)
    }
}

impl std::error::Error for Failure {}

/// Where an outcome goes: a closure of its own, or one shared by many
/// completions (no allocation per completion).
enum Sink<T> {
    Once(Box<dyn FnOnce(Result<T, Failure>) + Send>),
    Shared(Arc<dyn Fn(Result<T, Failure>) + Send + Sync>),
}

impl<T> Sink<T> {
    fn call(self, outcome: Result<T, Failure>) {
        match self {
            Sink::Once(f) => f(outcome),
            Sink::Shared(f) => f(outcome),
        }
    }
}

/// The promise to report the outcome of queued work exactly once.
#[must_use = "a dropped completion reports FailureKind::Dropped"]
pub struct Completion<T: Send + 'static> {
    sink: Option<Sink<T>>,
}

impl<T: Send + 'static> fmt::Debug for Completion<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Completion")
    }
}

impl<T: Send + 'static> Completion<T> {
    /// A completion that hands the outcome to `sink`, on whatever thread
    /// completes it.
    pub fn new(sink: impl FnOnce(Result<T, Failure>) + Send + 'static) -> Self {
        Completion {
            sink: Some(Sink::Once(Box::new(sink))),
        }
    }

    /// A completion that hands the outcome to a function shared with
    /// other completions: for many small requests with one answer path
    /// (a QoS 0 publish's receipt), where a closure each would cost an
    /// allocation each.
    pub fn shared(sink: &Arc<dyn Fn(Result<T, Failure>) + Send + Sync>) -> Self {
        Completion {
            sink: Some(Sink::Shared(sink.clone())),
        }
    }

    /// A completion whose outcome arrives on a channel.
    pub fn channel() -> (Self, mpsc::Receiver<Result<T, Failure>>) {
        let (tx, rx) = mpsc::sync_channel(1);
        (
            Completion::new(move |r| {
                let _ = tx.send(r);
            }),
            rx,
        )
    }

    /// Reports the outcome.
    pub fn complete(mut self, outcome: Result<T, Failure>) {
        if let Some(sink) = self.sink.take() {
            sink.call(outcome);
        }
    }

    /// Reports success.
    pub fn succeed(self, value: T) {
        self.complete(Ok(value));
    }

    /// Reports failure.
    pub fn fail(self, failure: Failure) {
        self.complete(Err(failure));
    }
}

impl<T: Send + 'static> Drop for Completion<T> {
    fn drop(&mut self) {
        if let Some(sink) = self.sink.take() {
            sink.call(Err(Failure::new(
                FailureKind::Dropped,
                "the callee dropped the request without answering",
            )));
        }
    }
}

/// A message for a reactor handler: a caller-chosen tag and a payload.
pub struct Note {
    /// What the handler asked for this note to be called.
    pub tag: u64,
    payload: Box<dyn Any + Send>,
}

impl fmt::Debug for Note {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Note").field("tag", &self.tag).finish()
    }
}

impl Note {
    /// A note carrying `payload`.
    pub fn new<P: Any + Send>(tag: u64, payload: P) -> Note {
        Note {
            tag,
            payload: Box::new(payload),
        }
    }

    /// The payload, if it is a `P`; the note back otherwise.
    pub fn take<P: Any + Send>(self) -> Result<P, Note> {
        match self.payload.downcast::<P>() {
            Ok(p) => Ok(*p),
            Err(payload) => Err(Note {
                tag: self.tag,
                payload,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completes_once_and_reports_drops() {
        let (c, rx) = Completion::<u32>::channel();
        c.succeed(7);
        assert_eq!(rx.recv().unwrap(), Ok(7));
        let (c, rx) = Completion::<u32>::channel();
        drop(c);
        assert_eq!(rx.recv().unwrap().unwrap_err().kind, FailureKind::Dropped);
    }

    #[test]
    fn shared_completions_each_report_once_including_drops() {
        let seen = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let log = seen.clone();
        let sink: Arc<dyn Fn(Result<u32, Failure>) + Send + Sync> =
            Arc::new(move |r: Result<u32, Failure>| log.lock().push(r.map_err(|f| f.kind)));
        Completion::shared(&sink).succeed(1);
        Completion::shared(&sink).succeed(2);
        drop(Completion::shared(&sink));
        assert_eq!(*seen.lock(), [Ok(1), Ok(2), Err(FailureKind::Dropped)],);
    }

    #[test]
    fn notes_downcast() {
        let n = Note::new(3, "x".to_string());
        let n = n.take::<u32>().unwrap_err();
        assert_eq!(n.tag, 3);
        assert_eq!(n.take::<String>().unwrap(), "x");
    }
}
