//! One worked queue: a reactor handler that takes messages under credit,
//! runs the command for each (through [`bindery_classes::exec`]), and acks,
//! retries or dead-letters by how the command ended.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bindery::reactor::TimerId;
use bindery::{Address, Cx, Failure, Handler, Note, ReactorHandle};
use bindery_classes::connection::Wake;
use bindery_classes::dispatcher::DispatcherHandle;
use bindery_classes::driver::{DriverHandle, Receipt, SubscribeOptions};
use bindery_classes::exec::{self, Finished, Sink};
use bindery_classes::{Delivery, Message, MessageId, Subscription};
use mio::event::Event;
use parking_lot::{Condvar, Mutex};

use crate::Settings;

/// Where a queue's handler lives, once it has started.
pub(crate) type Place = Arc<Mutex<Option<Address>>>;

const DELIVERY: u64 = 1;
const STARTED: u64 = 2;
const DONE: u64 = 3;
const STOP: u64 = 4;
/// Tags below this are the handler's own; above, a message id's
/// completions (publish of a reply or dead letter, ack).
const OWN_TAGS: u64 = 16;

/// Starts working `path` on `reactor`.
pub(crate) fn start(
    reactor: &ReactorHandle,
    settings: Arc<Settings>,
    dispatcher: DispatcherHandle,
    driver: DriverHandle,
    path: String,
    live: Arc<(Mutex<usize>, Condvar)>,
) -> Place {
    let place: Place = Arc::default();
    let at = place.clone();
    let handle = reactor.clone();
    *live.0.lock() += 1;
    reactor.spawn(move |cx| {
        *at.lock() = Some(cx.address());
        let mut work = QueueWork {
            wake: Wake::reactor(handle.clone(), cx.address()),
            reactor: handle,
            retries: Vec::new(),
            settings,
            dispatcher,
            driver,
            path: path.into(),
            sub: None,
            jobs: HashMap::new(),
            after: HashMap::new(),
            last_error: HashMap::new(),
            stopping: None,
            live,
        };
        work.subscribe(cx);
        Ok(Box::new(work))
    });
    place
}

/// Asks the handler at `place` to stop by `deadline`.
pub(crate) fn stop(reactor: &ReactorHandle, place: &Place, deadline: Instant) {
    let (place, handle) = (place.clone(), reactor.clone());
    // Queued after the spawn: the address is known by then.
    reactor.execute(move |_| {
        if let Some(at) = *place.lock() {
            handle.notify(at, Note::new(STOP, deadline));
        }
    });
}

/// A command running for a message.
struct Job {
    wake: Option<Arc<dyn Fn() + Send + Sync>>,
    abandon: Arc<AtomicBool>,
}

/// What to do once a publish for a message is confirmed.
enum After {
    /// Ack the message (its reply or dead letter is stored).
    Ack,
}

/// A finished command.
struct Done {
    message: Message,
    finished: Finished,
    stdout: Vec<u8>,
}

struct QueueWork {
    settings: Arc<Settings>,
    dispatcher: DispatcherHandle,
    driver: DriverHandle,
    path: Arc<str>,
    wake: Wake,
    /// Where this handler and its commands run.
    reactor: ReactorHandle,
    /// Failed messages to release at a time (`retry_delay`).
    retries: Vec<(Instant, MessageId)>,
    sub: Option<Subscription>,
    jobs: HashMap<MessageId, Job>,
    after: HashMap<MessageId, (After, Message)>,
    /// Why each message last failed here, for its dead letter (bounded).
    last_error: HashMap<MessageId, String>,
    stopping: Option<Instant>,
    live: Arc<(Mutex<usize>, Condvar)>,
}

impl QueueWork {
    fn subscribe(&mut self, cx: &mut Cx<'_>) {
        let consumer = self.wake.consumer(DELIVERY).named(format!(
            "{}: worker on {}",
            self.settings.instance, self.path
        ));
        let options = SubscribeOptions {
            credit: self.settings.config.concurrency,
            lease: self.settings.lease,
        };
        match self.driver.subscribe(&self.path, consumer, options) {
            Ok(sub) => self.sub = Some(sub),
            Err(f) => {
                tracing::warn!(instance = %self.settings.instance, queue = %self.path, "cannot consume: {}; trying again in 1 s", f.reason);
                cx.set_timer(Duration::from_secs(1));
            }
        }
    }

    fn credit(&self) {
        if let Some(sub) = &self.sub {
            sub.credit(1);
        }
    }

    fn delivered(&mut self, message: Message) {
        let max = self.settings.config.max_deliveries;
        if max.is_some_and(|m| message.delivery_count > m) {
            return self.dead_letter(message);
        }
        let config = &self.settings.config;
        let abandon = Arc::new(AtomicBool::new(false));
        self.jobs.insert(
            message.id,
            Job {
                wake: None,
                abandon: abandon.clone(),
            },
        );
        self.settings.stats.running.inc();
        let env = vec![
            (
                "BINDERY_INSTANCE".into(),
                self.settings.instance.to_string(),
            ),
            (
                "BINDERY_DESTINATION".into(),
                message.destination.to_string(),
            ),
            ("BINDERY_MESSAGE_ID".into(), message.id.to_string()),
            (
                "BINDERY_CONTENT_TYPE".into(),
                message.content_type.to_string(),
            ),
            (
                "BINDERY_DELIVERY_COUNT".into(),
                message.delivery_count.to_string(),
            ),
        ];
        let command = exec::Command {
            argv: config.command.clone(),
            env: config
                .env
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .chain(env)
                .collect(),
            dir: self.settings.dir.clone(),
            stdin: message.body.clone(),
        };
        let mut limits = self.settings.limits;
        let keep = config.reply_to.is_some();
        if !keep {
            limits.max_output = u64::MAX;
        }
        let sink = JobSink {
            wake: self.wake.clone(),
            id: message.id,
            message: Some(message),
            stdout: Vec::new(),
            keep,
            abandon,
        };
        exec::run(
            &self.reactor,
            self.settings.instance.clone(),
            command,
            limits,
            sink,
        );
    }

    fn finished(&mut self, cx: &mut Cx<'_>, done: Done) {
        let Done {
            message,
            finished,
            stdout,
        } = done;
        self.jobs.remove(&message.id);
        self.settings.stats.running.dec();
        let stats = &self.settings.stats;
        if finished.success() {
            stats.succeeded.inc();
            self.last_error.remove(&message.id);
            match &self.settings.config.reply_to {
                Some(to) => {
                    let reply = Message::new(to, &self.settings.config.reply_content_type, stdout)
                        .with_headers(vec![
                            ("Original-Id".into(), message.id.to_string().into()),
                            (
                                "Original-Destination".into(),
                                message.destination.to_string().into(),
                            ),
                        ]);
                    self.publish_then_ack(reply, message);
                }
                None => {
                    self.ack(message.id);
                    self.credit();
                }
            }
            return;
        }
        stats.failed.inc();
        let why = finished.describe();
        let tail = finished.stderr_tail.trim_end();
        tracing::warn!(
            instance = %self.settings.instance,
            queue = %self.path,
            id = %message.id,
            delivery = message.delivery_count,
            "command {why}; the message stays unacked and is tried again {}{}{}",
            if self.settings.config.retry_delay.is_some() { "after retry_delay" } else { "when its lease ends" },
            if tail.is_empty() { "" } else { "; stderr: " },
            tail
        );
        if self.last_error.len() >= 1024 {
            self.last_error.clear();
        }
        self.last_error.insert(message.id, why);
        match self.settings.config.retry_delay {
            Some(delay) => {
                self.retries.push((Instant::now() + delay, message.id));
                cx.set_timer(delay);
            }
            None => self.credit(),
        }
    }

    /// Releases the failed messages whose `retry_delay` has passed.
    fn retry_due(&mut self) {
        let now = Instant::now();
        let (due, later): (Vec<_>, Vec<_>) = self.retries.drain(..).partition(|(t, _)| *t <= now);
        self.retries = later;
        for (_, id) in due {
            if let Err(f) = self.driver.retry(&self.path, id) {
                tracing::warn!(instance = %self.settings.instance, queue = %self.path, %id, "cannot retry at once: {}; delivered again after its lease", f.reason);
            }
            self.credit();
        }
    }

    fn dead_letter(&mut self, message: Message) {
        let Some(to) = self.settings.config.dead_letter.clone() else {
            return;
        };
        let why = self
            .last_error
            .remove(&message.id)
            .unwrap_or_else(|| "unknown (failed elsewhere or before a restart)".into());
        let mut headers: Vec<_> = message.headers.iter().cloned().collect();
        headers.extend([
            ("Original-Id".into(), message.id.to_string().into()),
            (
                "Original-Destination".into(),
                message.destination.to_string().into(),
            ),
            (
                "Deliveries".into(),
                message.delivery_count.saturating_sub(1).to_string().into(),
            ),
            ("Last-Error".into(), why.into()),
        ]);
        tracing::warn!(instance = %self.settings.instance, queue = %self.path, id = %message.id, "delivered {} times: moved to {to}", message.delivery_count.saturating_sub(1));
        let dead =
            Message::new(&to, &message.content_type, message.body.clone()).with_headers(headers);
        self.settings.stats.dead_lettered.inc();
        self.publish_then_ack(dead, message);
    }

    fn publish_then_ack(&mut self, out: Message, original: Message) {
        let tag = original.id.0.max(OWN_TAGS);
        self.after.insert(original.id, (After::Ack, original));
        self.dispatcher
            .publish(out, self.wake.completion::<Receipt>(tag));
    }

    fn ack(&self, id: MessageId) {
        self.driver.ack(
            &self.path,
            id,
            self.wake.completion::<()>(id.0.max(OWN_TAGS)),
        );
    }

    fn maybe_close(&mut self, cx: &mut Cx<'_>) {
        if self.stopping.is_some() && self.jobs.is_empty() && self.after.is_empty() {
            // Failed messages waiting for their retry go back now.
            for (_, id) in self.retries.drain(..) {
                let _ = self.driver.retry(&self.path, id);
            }
            cx.close();
        }
    }

    fn abandon_all(&mut self) {
        for job in self.jobs.values() {
            job.abandon.store(true, Ordering::Release);
            if let Some(w) = &job.wake {
                w();
            }
        }
    }
}

impl Handler for QueueWork {
    fn ready(&mut self, _: &mut Cx<'_>, _: &Event) {}

    fn notify(&mut self, cx: &mut Cx<'_>, note: Note) {
        let tag = note.tag;
        match tag {
            DELIVERY => match note.take::<Delivery>() {
                Ok(Delivery::Message(m)) if self.stopping.is_none() => self.delivered(m),
                Ok(Delivery::Message(m)) => {
                    let _ = self.driver.release(&self.path, m.id);
                }
                Ok(Delivery::Closed(why)) => {
                    tracing::warn!(instance = %self.settings.instance, queue = %self.path, "the queue ended the subscription: {why}; subscribing again in 1 s");
                    self.sub = None;
                    cx.set_timer(Duration::from_secs(1));
                }
                Err(_) => {}
            },
            STARTED => {
                if let Ok((id, wake)) = note.take::<(MessageId, Arc<dyn Fn() + Send + Sync>)>() {
                    if let Some(job) = self.jobs.get_mut(&id) {
                        job.wake = Some(wake);
                    }
                }
            }
            DONE => {
                if let Ok(done) = note.take::<Done>() {
                    self.finished(cx, done);
                }
            }
            STOP => {
                if let Ok(deadline) = note.take::<Instant>() {
                    self.stopping = Some(deadline);
                    drop(self.sub.take());
                    let now = Instant::now();
                    cx.set_timer(deadline.saturating_duration_since(now));
                }
            }
            _ => {
                let note = match note.take::<Result<Receipt, Failure>>() {
                    Ok(outcome) => {
                        let id = MessageId(tag);
                        if let Some((After::Ack, original)) = self.after.remove(&id) {
                            match outcome {
                                Ok(_) => self.ack(original.id),
                                Err(f) => {
                                    tracing::warn!(instance = %self.settings.instance, queue = %self.path, id = %original.id, "could not store its reply or dead letter: {}; it stays unacked", f.reason)
                                }
                            }
                            self.credit();
                        }
                        return self.maybe_close(cx);
                    }
                    Err(note) => note,
                };
                if let Ok(Err(f)) = note.take::<Result<(), Failure>>() {
                    tracing::warn!(instance = %self.settings.instance, queue = %self.path, "ack of {} failed: {}", MessageId(tag), f.reason);
                }
            }
        }
        self.maybe_close(cx);
    }

    fn timeout(&mut self, cx: &mut Cx<'_>, _: TimerId) {
        self.retry_due();
        match self.stopping {
            Some(deadline) if Instant::now() >= deadline => {
                self.abandon_all();
                self.maybe_close(cx);
            }
            Some(_) => {}
            None if self.sub.is_none() => self.subscribe(cx),
            None => {}
        }
    }

    fn shutdown(&mut self, cx: &mut Cx<'_>) {
        // The server stops: nothing more is taken; running commands are
        // stopped and their messages stay unacked.
        drop(self.sub.take());
        self.abandon_all();
        cx.close();
    }
}

impl Drop for QueueWork {
    fn drop(&mut self) {
        self.abandon_all();
        let (count, closed) = &*self.live;
        *count.lock() -= 1;
        closed.notify_all();
    }
}

/// Carries one command's end back to its queue's handler.
struct JobSink {
    wake: Wake,
    id: MessageId,
    message: Option<Message>,
    stdout: Vec<u8>,
    keep: bool,
    abandon: Arc<AtomicBool>,
}

impl Sink for JobSink {
    fn started(&mut self, _: u32, wake: Arc<dyn Fn() + Send + Sync>) {
        self.wake.note(Note::new(STARTED, (self.id, wake)));
    }

    fn stdout(&mut self, chunk: &[u8]) -> bool {
        if self.keep {
            self.stdout.extend_from_slice(chunk);
        }
        true
    }

    fn gone(&self) -> bool {
        self.abandon.load(Ordering::Acquire)
    }

    fn finished(&mut self, finished: Finished) {
        if let Some(message) = self.message.take() {
            self.wake.note(Note::new(
                DONE,
                Done {
                    message,
                    finished,
                    stdout: std::mem::take(&mut self.stdout),
                },
            ));
        }
    }
}
