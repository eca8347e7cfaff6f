//! `dispatcher.fast`: the stock dispatcher.
//!
//! For each publish it finds the driver bound to the destination path and
//! the parser bound to the content type, validates the body, and hands the
//! message to the driver. Handles it finds are cached per path and per
//! content type; a cache is dropped whole when its binding table's
//! generation changes, so rebinding at run time takes effect at once.
//! Each thread also keeps the route it took last (path, content type,
//! handles), checked by pointer and generation: a publisher that keeps to
//! one topic takes no lock and hashes nothing. That memo holds its handles
//! until the thread's next publish elsewhere.
//!
//! Failures are distinct: no driver is `NotFound`, no parser is
//! `Unsupported`, an invalid body is `Rejected` with the parser's reason,
//! and a parser that could not judge the body (an isolated parser whose
//! host is gone) is `Unavailable` with a retry hint.
//!
//! ```toml
//! [instances.dispatcher.config]
//! cache_entries = 4096     # per cache; a full cache starts again empty
//! ```

use std::sync::Arc;

use bindery::{Completion, Failure, FailureKind, Runtime, Table};
use bindery_classes::dispatcher::{self, Dispatcher};
use bindery_classes::driver::{DriverHandle, Receipt};
use bindery_classes::parser::ParserHandle;
use bindery_classes::{Message, class};
use parking_lot::RwLock;
use rustc_hash::FxHashMap;
use serde::Deserialize;

bindery::module! {
    class: bindery_classes::class::Dispatcher,
    name: "fast",
    description: "routes by path and validates by content type, with cached handles",
    main: module_main,
}

/// The instance configuration.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Entries per cache before it starts again empty.
    pub cache_entries: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            cache_entries: 4096,
        }
    }
}

fn module_main(
    reg: &mut bindery::Registrar<'_, bindery_classes::class::Dispatcher>,
) -> Result<(), bindery::BoxError> {
    dispatcher::register(reg, |cx| {
        let config: Config = cx.config().parse()?;
        Ok(Fast::new(cx.runtime().clone(), config))
    });
    Ok(())
}

/// Found handles (or their absence) by key, for one table generation.
type Entries<H> = (u64, FxHashMap<Box<str>, Option<H>>);

/// A cache of lookups in one table, emptied when the table changes.
struct Cache<H> {
    table: Option<Arc<Table>>,
    limit: usize,
    entries: RwLock<Entries<H>>,
}

impl<H: Clone + Send + Sync + 'static> Cache<H> {
    fn new(table: Option<Arc<Table>>, limit: usize) -> Self {
        Cache {
            table,
            limit: limit.max(1),
            entries: RwLock::new((u64::MAX, FxHashMap::default())),
        }
    }

    fn get(&self, key: &str) -> Option<H> {
        let table = self.table.as_ref()?;
        let generation = table.generation();
        {
            let e = self.entries.read();
            if e.0 == generation {
                if let Some(h) = e.1.get(key) {
                    return h.clone();
                }
            }
        }
        let found = table.lookup::<H>(key);
        let mut e = self.entries.write();
        if e.0 != generation || e.1.len() >= self.limit {
            e.1.clear();
            e.0 = generation;
        }
        e.1.insert(key.into(), found.clone());
        found
    }
}

/// The dispatcher.
pub struct Fast {
    /// Tells this instance's memo from another's on the same thread.
    id: u64,
    drivers: Cache<DriverHandle>,
    parsers: Cache<ParserHandle>,
}

/// The route a reactor thread took last: a publisher that keeps to one
/// path and content type (most do) skips both caches' locks and hashing.
struct Memo {
    dispatcher: u64,
    generations: (u64, u64),
    path: Arc<str>,
    driver: DriverHandle,
    content_type: Arc<str>,
    parser: ParserHandle,
}

thread_local! {
    /// Taken out while in use, so a driver that publishes through the
    /// dispatcher again (on the same thread) finds none, never a borrow.
    static LAST: std::cell::Cell<Option<Box<Memo>>> = const { std::cell::Cell::new(None) };
}

static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

impl Fast {
    /// A dispatcher over `runtime`'s driver and parser tables.
    pub fn new(runtime: Arc<Runtime>, config: Config) -> Fast {
        Fast {
            id: NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            drivers: Cache::new(runtime.table(class::DRIVER).cloned(), config.cache_entries),
            parsers: Cache::new(runtime.table(class::PARSER).cloned(), config.cache_entries),
        }
    }

    fn generations(&self) -> (u64, u64) {
        let g = |t: &Option<Arc<Table>>| t.as_ref().map_or(0, |t| t.generation());
        (g(&self.drivers.table), g(&self.parsers.table))
    }

    /// The memo: `Ok` when it is this instance's, current, and for this
    /// message's path and content type; else what is left of it, to be
    /// filled anew without an allocation.
    fn memo(&self, message: &Message) -> Result<Box<Memo>, Option<Box<Memo>>> {
        let memo = LAST.with(|m| m.take()).ok_or(None)?;
        let same = |a: &Arc<str>, b: &Arc<str>| Arc::ptr_eq(a, b) || a == b;
        if memo.dispatcher == self.id
            && same(&memo.path, &message.destination)
            && same(&memo.content_type, &message.content_type)
            && memo.generations == self.generations()
        {
            Ok(memo)
        } else {
            Err(Some(memo))
        }
    }

    /// Validates and hands over, through the driver and parser found.
    fn deliver(
        driver: &DriverHandle,
        parser: &ParserHandle,
        message: Message,
        done: Completion<Receipt>,
    ) {
        if let Err(e) = parser.validate(&message.content_type, &message.body) {
            if e.unavailable {
                return done.fail(
                    Failure::new(
                        FailureKind::Unavailable,
                        format!("the {} parser is unavailable: {e}", message.content_type),
                    )
                    .retry_after(std::time::Duration::from_secs(1)),
                );
            }
            return done.fail(Failure::new(
                FailureKind::Rejected,
                format!("invalid {} body {e}", message.content_type),
            ));
        }
        driver.publish(message, done);
    }
}

impl Dispatcher for Fast {
    fn publish(&self, message: Message, done: Completion<Receipt>) {
        let stale = match self.memo(&message) {
            Ok(memo) => {
                Fast::deliver(&memo.driver, &memo.parser, message, done);
                LAST.with(|m| m.set(Some(memo)));
                return;
            }
            Err(stale) => stale,
        };
        let generations = self.generations();
        let driver = match self.driver(&message.destination) {
            Ok(d) => d,
            Err(f) => return done.fail(f),
        };
        let Some(parser) = self.parsers.get(&message.content_type) else {
            return done.fail(Failure::new(
                FailureKind::Unsupported,
                format!(
                    "no parser is bound for content type {:?}",
                    message.content_type
                ),
            ));
        };
        let fresh = Memo {
            dispatcher: self.id,
            generations,
            path: message.destination.clone(),
            driver,
            content_type: message.content_type.clone(),
            parser,
        };
        let memo = match stale {
            Some(mut memo) => {
                *memo = fresh;
                memo
            }
            None => Box::new(fresh),
        };
        Fast::deliver(&memo.driver, &memo.parser, message, done);
        LAST.with(|m| m.set(Some(memo)));
    }

    fn driver(&self, path: &str) -> Result<DriverHandle, Failure> {
        self.drivers.get(path).ok_or_else(|| {
            Failure::new(
                FailureKind::NotFound,
                format!("no driver is bound for {path}"),
            )
        })
    }
}
