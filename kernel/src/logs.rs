//! Per-instance logs: what each instance said lately, kept in memory.
//!
//! Every `tracing` event inside an instance's span (the kernel makes one
//! per instance, named `instance`, for its factory and hooks) or carrying
//! an `instance` field (what a connection handler writes) also goes into a
//! bounded ring buffer of that instance: the last `[server] log_lines`
//! lines (1000 by default). The management API reads them: the tail, the
//! lines since a time, or new lines as they come.
//!
//! Install [`layer`] beside the log output in the binary's subscriber;
//! without it the buffers stay empty.

use std::collections::{HashMap, VecDeque};
use std::fmt::{self, Write as _};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

use parking_lot::Mutex;
use serde::Serialize;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::registry::LookupSpan;

/// Lines kept per instance unless `[server] log_lines` says otherwise.
pub const DEFAULT_LINES: usize = 1000;

/// One log line.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct LogLine {
    /// When, in milliseconds since the Unix epoch.
    pub time_ms: u64,
    /// `ERROR`, `WARN`, `INFO`, `DEBUG` or `TRACE`.
    pub level: &'static str,
    /// The module path that logged it.
    pub target: String,
    /// The message, then its other fields as `name=value`.
    pub message: String,
}

type Follower = Arc<dyn Fn(&LogLine) + Send + Sync>;

#[derive(Default)]
struct Ring {
    lines: VecDeque<LogLine>,
    followers: Vec<(u64, Follower)>,
}

/// Every instance's ring buffer.
pub struct Logs {
    capacity: AtomicUsize,
    rings: Mutex<HashMap<String, Ring>>,
    next_follower: AtomicU64,
}

/// The process's logs.
pub fn logs() -> &'static Logs {
    static LOGS: OnceLock<Logs> = OnceLock::new();
    LOGS.get_or_init(|| Logs {
        capacity: AtomicUsize::new(DEFAULT_LINES),
        rings: Mutex::new(HashMap::new()),
        next_follower: AtomicU64::new(1),
    })
}

/// Following an instance's log; dropping it stops.
pub struct Follow {
    instance: String,
    id: u64,
}

impl Drop for Follow {
    fn drop(&mut self) {
        if let Some(r) = logs().rings.lock().get_mut(&self.instance) {
            r.followers.retain(|(id, _)| *id != self.id);
        }
    }
}

impl Logs {
    /// Lines kept per instance from now on (at least 1).
    pub fn set_capacity(&self, lines: usize) {
        self.capacity.store(lines.max(1), Ordering::Relaxed);
    }

    /// The last `tail` lines of `instance` (all kept, without `tail`) at
    /// or after `since_ms`, oldest first.
    pub fn tail(&self, instance: &str, tail: Option<usize>, since_ms: Option<u64>) -> Vec<LogLine> {
        let rings = self.rings.lock();
        let Some(r) = rings.get(instance) else {
            return Vec::new();
        };
        let after: Vec<&LogLine> = r
            .lines
            .iter()
            .filter(|l| since_ms.is_none_or(|s| l.time_ms >= s))
            .collect();
        let skip = tail.map_or(0, |n| after.len().saturating_sub(n));
        after.into_iter().skip(skip).cloned().collect()
    }

    /// Calls `f` with every new line of `instance` until the returned guard
    /// is dropped. `f` runs on the logging thread, outside any lock of
    /// this module: it must not block.
    pub fn follow(&self, instance: &str, f: impl Fn(&LogLine) + Send + Sync + 'static) -> Follow {
        let id = self.next_follower.fetch_add(1, Ordering::Relaxed);
        self.rings
            .lock()
            .entry(instance.to_owned())
            .or_default()
            .followers
            .push((id, Arc::new(f)));
        Follow {
            instance: instance.to_owned(),
            id,
        }
    }

    fn push(&self, instance: &str, line: LogLine) {
        let capacity = self.capacity.load(Ordering::Relaxed);
        let followers: Vec<Follower> = {
            let mut rings = self.rings.lock();
            let ring = rings.entry(instance.to_owned()).or_default();
            while ring.lines.len() >= capacity {
                ring.lines.pop_front();
            }
            ring.lines.push_back(line.clone());
            ring.followers.iter().map(|(_, f)| f.clone()).collect()
        };
        // Outside the lock: a follower may log, or stop following.
        for f in followers {
            f(&line);
        }
    }
}

/// The `tracing` layer that fills the buffers.
pub fn layer() -> LogLayer {
    LogLayer
}

/// See [`layer`].
#[derive(Debug, Clone, Copy)]
pub struct LogLayer;

/// The instance an `instance` span belongs to, kept in its extensions.
struct InstanceName(String);

/// Collects an event's message and fields, and its `instance` field.
#[derive(Default)]
struct Collect {
    message: String,
    fields: String,
    instance: Option<String>,
    name: Option<String>,
}

impl Visit for Collect {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        match field.name() {
            "message" => {
                let _ = write!(self.message, "{value:?}");
            }
            "instance" => self.instance = Some(format!("{value:?}").trim_matches('"').to_owned()),
            "name" => self.name = Some(format!("{value:?}").trim_matches('"').to_owned()),
            other => {
                let _ = write!(self.fields, " {other}={value:?}");
            }
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "message" => self.message.push_str(value),
            "instance" => self.instance = Some(value.to_owned()),
            "name" => self.name = Some(value.to_owned()),
            other => {
                let _ = write!(self.fields, " {other}={value:?}");
            }
        }
    }
}

impl<S> Layer<S> for LogLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        if attrs.metadata().name() != "instance" {
            return;
        }
        let mut c = Collect::default();
        attrs.record(&mut c);
        if let (Some(name), Some(span)) = (c.name, ctx.span(id)) {
            span.extensions_mut().insert(InstanceName(name));
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let mut c = Collect::default();
        event.record(&mut c);
        let instance = c.instance.or_else(|| {
            ctx.event_scope(event)?
                .find_map(|s| s.extensions().get::<InstanceName>().map(|n| n.0.clone()))
        });
        let Some(instance) = instance else { return };
        let meta = event.metadata();
        let time_ms = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        logs().push(
            &instance,
            LogLine {
                time_ms,
                level: meta.level().as_str(),
                target: meta.target().to_owned(),
                message: c.message + &c.fields,
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::layer::SubscriberExt;

    #[test]
    fn events_of_an_instance_land_in_its_ring_and_followers_see_them() {
        let subscriber = tracing_subscriber::registry().with(layer());
        let seen = std::sync::Arc::new(Mutex::new(Vec::new()));
        let s2 = seen.clone();
        let follow = logs().follow("logs-test-a", move |l| s2.lock().push(l.message.clone()));
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("instance", name = "logs-test-a", module = "x.y");
            span.in_scope(|| tracing::info!(key = 7, "inside the span"));
            tracing::warn!(instance = "logs-test-b", "by field");
            tracing::info!("nobody's");
            for i in 0..3 {
                tracing::info!(instance = "logs-test-a", "line {i}");
            }
        });
        let a = logs().tail("logs-test-a", None, None);
        assert_eq!(a[0].message, "inside the span key=7");
        assert_eq!(a[0].level, "INFO");
        assert_eq!(a.len(), 4);
        let b = logs().tail("logs-test-b", None, None);
        assert_eq!((b.len(), b[0].level), (1, "WARN"));
        let last: Vec<_> = logs()
            .tail("logs-test-a", Some(2), None)
            .into_iter()
            .map(|l| l.message)
            .collect();
        assert_eq!(last, ["line 1", "line 2"]);
        assert!(logs().tail("logs-test-a", None, Some(u64::MAX)).is_empty());
        assert_eq!(seen.lock().len(), 4);
        drop(follow);
    }
}
