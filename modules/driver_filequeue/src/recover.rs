//! Recovery: rebuilding the queues from the journal at start.
//!
//! Segments are replayed oldest first. A torn tail or a corrupted record
//! stops the replay at the last good record: the fault is logged with its
//! segment and byte offset, the segment is cut there, and any later
//! segments are set aside (renamed `*.journal.corrupt`), so new records
//! follow good ones and nothing after the fault is ever half-believed.

use std::path::{Path, PathBuf};

use bindery_classes::{Message, MessageId};
use rustc_hash::FxHashMap;

use crate::journal::segment_path;
use crate::record::{Next, Record, decode};

/// What the journal held.
pub(crate) struct Recovered {
    /// Unacked messages in publish order, with their segments.
    pub(crate) live: Vec<(Message, u64)>,
    /// Segments on disk after recovery.
    pub(crate) segments: Vec<u64>,
    /// Where new records go.
    pub(crate) active: u64,
    /// Records replayed.
    pub(crate) records: u64,
    /// The first fault, if the replay stopped at one: segment, offset, why.
    pub(crate) fault: Option<(PathBuf, u64, String)>,
}

/// The segment numbers in `dir`, oldest first.
fn list(dir: &Path) -> std::io::Result<Vec<u64>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(n) = name.strip_suffix(".journal").and_then(|n| n.parse().ok()) {
            out.push(n);
        }
    }
    out.sort_unstable();
    Ok(out)
}

/// Replays the segments of `dir` (creating it if need be).
pub(crate) fn recover(dir: &Path) -> std::io::Result<Recovered> {
    std::fs::create_dir_all(dir)?;
    let segments = list(dir)?;
    let mut order: Vec<MessageId> = Vec::new();
    let mut pending: FxHashMap<MessageId, (Message, u64)> = FxHashMap::default();
    let mut records = 0u64;
    let mut fault = None;
    let mut kept = Vec::new();
    for (i, &seg) in segments.iter().enumerate() {
        let path = segment_path(dir, seg);
        let bytes = std::fs::read(&path)?;
        let mut at = 0usize;
        let stop = loop {
            match decode(&bytes[at..]) {
                Next::Record(r, used) => {
                    match r {
                        Record::Publish(m) => {
                            order.push(m.id);
                            pending.insert(m.id, (m, seg));
                        }
                        Record::Ack { id } => {
                            pending.remove(&id);
                        }
                    }
                    at += used;
                    records += 1;
                    if records % 200_000 == 0 {
                        tracing::info!(
                            segment = %path.display(),
                            records,
                            "recovering the journal"
                        );
                    }
                }
                Next::End => break None,
                Next::Fault(why) => break Some(why),
            }
        };
        kept.push(seg);
        if let Some(why) = stop {
            tracing::warn!(
                segment = %path.display(),
                offset = at,
                "journal replay stopped at {why}; keeping the {records} records before it"
            );
            cut(&path, at as u64)?;
            for &later in &segments[i + 1..] {
                let p = segment_path(dir, later);
                let aside = p.with_extension("journal.corrupt");
                tracing::warn!(segment = %p.display(), "set aside after a fault in an earlier segment");
                std::fs::rename(&p, &aside)?;
            }
            fault = Some((path, at as u64, why));
            break;
        }
        if at < bytes.len() {
            // A zero-filled tail: cut it so appends follow the last record.
            cut(&path, at as u64)?;
        }
    }
    let live = order
        .into_iter()
        .filter_map(|id| pending.remove(&id))
        .collect();
    let active = kept.last().copied().unwrap_or(0);
    Ok(Recovered {
        live,
        segments: kept,
        active,
        records,
        fault,
    })
}

fn cut(path: &Path, len: u64) -> std::io::Result<()> {
    let f = std::fs::OpenOptions::new().write(true).open(path)?;
    f.set_len(len)?;
    f.sync_all()
}
