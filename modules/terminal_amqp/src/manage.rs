//! A queue's management: `queue.purge` and `queue.delete` through the
//! queue driver ([`bindery_classes::Driver::purge`] and
//! [`delete`](bindery_classes::Driver::delete)), exclusive queues deleted
//! with their connection, `auto_delete` queues with their last consumer.
//! Part of the protocol core ([`crate::core`]).

use std::sync::Arc;

use bindery::{Completion, Failure, FailureKind, Note};
use bindery_classes::auth::Action;
use bindery_classes::connection::Io;
use bindery_classes::driver::{DeleteOptions, DriverHandle};

use crate::Shared;
use crate::channel::Pending;
use crate::core::{Core, Refusal, code};
use crate::methods::Method;

/// What a [`Pending::Manage`] waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Managing {
    Purge,
    Delete,
}

impl Core {
    /// `queue.purge` or `queue.delete` (with `options`): asked of the
    /// queue's driver, answered when it completes.
    pub(crate) fn queue_manage(
        &mut self,
        io: &mut Io<'_>,
        ch: u16,
        queue: String,
        what: Managing,
        options: DeleteOptions,
        no_wait: bool,
    ) -> Result<(), Refusal> {
        let (driver, path) = self.queue(&queue, true)?;
        if what == Managing::Purge {
            self.require_known(&queue, &driver, &path)?;
        }
        self.allow_queue(io, Action::Consume, &queue, &path)?;
        let tag = self.tag(Pending::Manage {
            channel: ch,
            queue,
            what,
            no_wait,
        });
        let done = io.wake().completion::<u64>(tag);
        match what {
            Managing::Purge => driver.purge(&path, done),
            Managing::Delete => driver.delete(&path, options, done),
        }
        Ok(())
    }

    /// The driver's answer to a purge or a delete.
    pub(crate) fn managed(&mut self, io: &mut Io<'_>, note: Note) {
        let Some(Pending::Manage {
            channel: ch,
            queue,
            what,
            no_wait,
        }) = self.pending.remove(&note.tag)
        else {
            return;
        };
        if self.channels.get(&ch).is_none_or(|c| c.closing) {
            return;
        }
        let outcome = note
            .take::<Result<u64, Failure>>()
            .unwrap_or_else(|_| Err(Failure::new(FailureKind::Internal, "no answer")));
        let method = match what {
            Managing::Purge => (50, 30),
            Managing::Delete => (50, 40),
        };
        let name = match what {
            Managing::Purge => "queue.purge",
            Managing::Delete => "queue.delete",
        };
        let count = match outcome {
            Ok(n) => n,
            // Declared, but the driver never held it: nothing in it.
            Err(f) if f.kind == FailureKind::NotFound => 0,
            Err(f) => {
                let (code, text) = match f.kind {
                    FailureKind::Unsupported => (
                        code::NOT_IMPLEMENTED,
                        format!("NOT_IMPLEMENTED - {name} of queue {queue:?}: {f}"),
                    ),
                    FailureKind::Rejected => (
                        code::PRECONDITION_FAILED,
                        format!("PRECONDITION_FAILED - {name} of queue {queue:?}: {f}"),
                    ),
                    _ => (
                        code::PRECONDITION_FAILED,
                        format!("PRECONDITION_FAILED - {name} of queue {queue:?} failed: {f}"),
                    ),
                };
                // A channel exception names the method it answers.
                return self.channel_fail(io, ch, code, &text, method);
            }
        };
        let message_count = count.min(u64::from(u32::MAX)) as u32;
        if what == Managing::Delete {
            self.forget_queue(io, &queue);
        }
        if !no_wait {
            let m = match what {
                Managing::Purge => Method::QueuePurgeOk { message_count },
                Managing::Delete => Method::QueueDeleteOk { message_count },
            };
            self.send(io, ch, &m);
        }
    }

    /// A deleted queue: its declaration and bindings forgotten, this
    /// connection's consumers of it cancelled and told so (those the
    /// driver ended are told as their end arrives).
    fn forget_queue(&mut self, io: &mut Io<'_>, queue: &str) {
        let path = self.shared.queue_path(queue);
        self.shared.queues.lock().remove(queue);
        self.shared.unroute(queue);
        self.bindings.retain(|b| b.queue != queue);
        let mut cancelled = Vec::new();
        for (c, chan) in self.channels.iter_mut() {
            let gone: Vec<Arc<str>> = chan
                .consumers
                .iter()
                .filter(|(_, c)| *c.path == *path)
                .map(|(t, _)| t.clone())
                .collect();
            for tag in gone {
                chan.consumers.remove(&tag);
                cancelled.push((*c, tag));
            }
        }
        for (ch, tag) in cancelled {
            self.send(
                io,
                ch,
                &Method::BasicCancel {
                    consumer_tag: tag.to_string(),
                    no_wait: true,
                },
            );
        }
    }

    /// Deletes the `auto_delete` queues among `paths` (whose consumers on
    /// this connection just ended) unless another consumer uses them.
    pub(crate) fn auto_delete(&self, paths: Vec<Arc<str>>) {
        for path in paths {
            let Some(name) = path.strip_prefix(self.shared.config.queue_root.as_str()) else {
                continue;
            };
            let auto = self
                .shared
                .queues
                .lock()
                .get(name)
                .is_some_and(|d| d.auto_delete);
            if !auto {
                continue;
            }
            if let Ok(driver) = self.shared.dispatcher.driver(&path) {
                let options = DeleteOptions {
                    if_unused: true,
                    if_empty: false,
                };
                delete_quietly(&self.shared, &driver, name, &path, options);
            }
        }
    }
}

/// Deletes queue `name` at `path` and, once the driver has, forgets its
/// declaration and bindings (an exclusive queue whose connection ended,
/// an `auto_delete` queue whose last consumer went). Nobody waits for the
/// answer; a driver that cannot delete keeps the queue.
pub(crate) fn delete_quietly(
    shared: &Arc<Shared>,
    driver: &DriverHandle,
    name: &str,
    path: &str,
    options: DeleteOptions,
) {
    let shared = shared.clone();
    let queue = name.to_owned();
    driver.delete(
        path,
        options,
        Completion::new(move |r: Result<u64, Failure>| {
            if r.is_ok() {
                shared.queues.lock().remove(&queue);
                shared.unroute(&queue);
            }
        }),
    );
}
