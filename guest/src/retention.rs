//! Retention: closed incident records older than `retention_days` are deleted (record
//! and `snow/<sys_id>` mapping), a bounded number per tick.
//!
//! Closed incidents are listed in `index/closed` as they close (written with the active
//! index). Records closed before that list existed, or whose line was lost to a crash
//! between the record write and the index write, are found by a full scan of the
//! records, run when the list is new and then weekly.

use serde::{Deserialize, Serialize};

use crate::incident::{IncidentRecord, State};
use crate::ports::Kv;
use crate::store::{self, StoreError};

pub const CLOSED_INDEX: &str = "index/closed";
/// Records deleted at most per tick.
pub const MAX_PRUNED_PER_TICK: usize = 25;
const RESCAN_MS: i64 = 7 * 86_400_000;
const DAY_MS: i64 = 86_400_000;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClosedEntry {
    pub key: String,
    pub closed_at_ms: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sys_id: Option<String>,
}

impl ClosedEntry {
    pub fn of(rec: &IncidentRecord) -> ClosedEntry {
        ClosedEntry {
            key: rec.key.clone(),
            closed_at_ms: rec.updated_at,
            sys_id: rec.snow.as_ref().map(|s| s.sys_id.clone()),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClosedIndex {
    pub entries: Vec<ClosedEntry>,
    /// When every record was last scanned for closed ones (0 = never).
    #[serde(default)]
    pub scanned_at_ms: i64,
}

impl ClosedIndex {
    fn add(&mut self, e: ClosedEntry) {
        if !self.entries.iter().any(|x| x.key == e.key) {
            self.entries.push(e);
        }
    }
}

/// Appends newly closed incidents (called by `Index::flush`).
pub fn note_closed(kv: &mut dyn Kv, closed: Vec<ClosedEntry>) -> Result<(), StoreError> {
    let mut index: ClosedIndex = store::get_json(kv, CLOSED_INDEX)?.unwrap_or_default();
    for e in closed {
        index.add(e);
    }
    store::put_json(kv, CLOSED_INDEX, &index)
}

/// One tick's pruning. Returns how many incidents were deleted.
pub fn prune(kv: &mut dyn Kv, now_ms: i64, retention_days: u64) -> Result<usize, StoreError> {
    let mut index: ClosedIndex = store::get_json(kv, CLOSED_INDEX)?.unwrap_or_default();
    let mut changed = false;
    if now_ms - index.scanned_at_ms >= RESCAN_MS {
        for key in kv.list_keys(store::INCIDENT_PREFIX)? {
            if let Ok(Some(rec)) = store::get_json::<IncidentRecord>(kv, &key)
                && rec.state == State::Closed
            {
                index.add(ClosedEntry::of(&rec));
            }
        }
        index.scanned_at_ms = now_ms;
        changed = true;
    }
    let cutoff =
        now_ms.saturating_sub(i64::try_from(retention_days).unwrap_or(i64::MAX / DAY_MS) * DAY_MS);
    index.entries.sort_by_key(|e| e.closed_at_ms);
    let due = index
        .entries
        .iter()
        .take_while(|e| e.closed_at_ms < cutoff)
        .take(MAX_PRUNED_PER_TICK)
        .count();
    let mut pruned = 0;
    for e in index.entries.drain(..due) {
        changed = true;
        // The record is the truth: only a record that is (still) closed goes.
        match store::load_incident(kv, &e.key) {
            Ok(Some(rec)) if rec.state != State::Closed => continue,
            Ok(None) => continue,
            _ => {}
        }
        kv.delete(&store::incident_key(&e.key))?;
        if let Some(sys_id) = &e.sys_id {
            kv.delete(&store::snow_key(sys_id))?;
        }
        pruned += 1;
    }
    if changed {
        store::put_json(kv, CLOSED_INDEX, &index)?;
    }
    Ok(pruned)
}
