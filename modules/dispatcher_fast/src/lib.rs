//! `dispatcher.fast`: the stock dispatcher.
//!
//! For each publish it finds the driver bound to the destination path and
//! the parser bound to the content type, validates the body, and hands the
//! message to the driver. Handles it finds are cached per path and per
//! content type; a cache is dropped whole when its binding table's
//! generation changes, so rebinding at run time takes effect at once.
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
    drivers: Cache<DriverHandle>,
    parsers: Cache<ParserHandle>,
}

impl Fast {
    /// A dispatcher over `runtime`'s driver and parser tables.
    pub fn new(runtime: Arc<Runtime>, config: Config) -> Fast {
        Fast {
            drivers: Cache::new(runtime.table(class::DRIVER).cloned(), config.cache_entries),
            parsers: Cache::new(runtime.table(class::PARSER).cloned(), config.cache_entries),
        }
    }
}

impl Dispatcher for Fast {
    fn publish(&self, message: Message, done: Completion<Receipt>) {
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

    fn driver(&self, path: &str) -> Result<DriverHandle, Failure> {
        self.drivers.get(path).ok_or_else(|| {
            Failure::new(
                FailureKind::NotFound,
                format!("no driver is bound for {path}"),
            )
        })
    }
}
