//! The key-value layout of one customer's bucket (see README.md), and typed access to it.

use std::fmt;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::incident::{IncidentRecord, State};
use crate::ports::{Kv, KvError};

pub const CURSOR: &str = "cursor";
pub const INDEX: &str = "index/active";
pub const LEASE: &str = "lease";
pub const XDR_TOKEN: &str = "xdr/token";
pub const EVENT_TYPES: &str = "amp/event_types";
pub const THROTTLE: &str = "throttle";
pub const LAST_TICK: &str = mssp_contract::report::LAST_TICK_KEY;
pub const COUNTERS: &str = mssp_contract::report::COUNTERS_KEY;
pub const INCIDENT_PREFIX: &str = "incident/";

pub fn incident_key(key: &str) -> String {
    format!("{INCIDENT_PREFIX}{key}")
}

/// ServiceNow sys_id → incident key, for callbacks that carry only the sys_id.
pub fn snow_key(sys_id: &str) -> String {
    format!("snow/{sys_id}")
}

pub fn crash_marker_key(point: &str, key: &str) -> String {
    format!("debug/crashed/{point}/{key}")
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreError {
    Kv(KvError),
    Corrupt { key: String, detail: String },
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Kv(e) => write!(f, "{e}"),
            StoreError::Corrupt { key, detail } => {
                write!(f, "stored value \"{key}\" is unreadable: {detail}")
            }
        }
    }
}

impl From<KvError> for StoreError {
    fn from(e: KvError) -> Self {
        StoreError::Kv(e)
    }
}

pub fn get_json<T: DeserializeOwned>(kv: &mut dyn Kv, key: &str) -> Result<Option<T>, StoreError> {
    match kv.get(key)? {
        None => Ok(None),
        Some(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| StoreError::Corrupt {
                key: key.to_string(),
                detail: e.to_string(),
            }),
    }
}

pub fn put_json<T: Serialize>(kv: &mut dyn Kv, key: &str, value: &T) -> Result<(), StoreError> {
    let bytes = serde_json::to_vec(value).map_err(|e| StoreError::Corrupt {
        key: key.to_string(),
        detail: e.to_string(),
    })?;
    Ok(kv.set(key, &bytes)?)
}

/// One line of the active-incident index: enough to decide what a tick must do
/// without reading every record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexEntry {
    pub key: String,
    pub state: State,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sys_id: Option<String>,
    #[serde(default)]
    pub needs_work: bool,
    /// The host this incident contains (or means to), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connector_guid: Option<String>,
}

impl IndexEntry {
    fn of(rec: &IncidentRecord) -> IndexEntry {
        IndexEntry {
            key: rec.key.clone(),
            state: rec.state,
            sys_id: rec.snow.as_ref().map(|s| s.sys_id.clone()),
            needs_work: rec.needs_work(),
            connector_guid: rec.containment.as_ref().map(|c| c.connector_guid.clone()),
        }
    }
}

/// Every incident that is not closed, oldest first.
///
/// Kept in memory during an invocation and written by `flush`: before the cursor moves
/// (so every record taken in is indexed before its events are left behind), at the end
/// of the invocation, and before a simulated crash. A line that lags behind its record
/// after a real crash is repaired when the record is next read (`reindex`); the record
/// is always the truth.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Index {
    pub entries: Vec<IndexEntry>,
    #[serde(skip)]
    dirty: bool,
    /// Incidents closed in this invocation, for `index/closed` (see `retention`).
    #[serde(skip)]
    closed: Vec<crate::retention::ClosedEntry>,
}

impl Index {
    pub fn load(kv: &mut dyn Kv) -> Result<Index, StoreError> {
        Ok(get_json(kv, INDEX)?.unwrap_or_default())
    }

    /// Brings the line of a record up to date, in memory.
    pub fn reindex(&mut self, rec: &IncidentRecord) {
        let line = IndexEntry::of(rec);
        let pos = self.entries.iter().position(|e| e.key == rec.key);
        match (pos, rec.state) {
            (Some(i), State::Closed) => {
                self.entries.remove(i);
                self.dirty = true;
                self.closed.push(crate::retention::ClosedEntry::of(rec));
            }
            (Some(i), _) if self.entries[i] != line => {
                self.entries[i] = line;
                self.dirty = true;
            }
            (None, s) if s != State::Closed => {
                self.entries.push(line);
                self.dirty = true;
            }
            _ => {}
        }
    }

    /// Writes the index if it changed since it was loaded or last written.
    pub fn flush(&mut self, kv: &mut dyn Kv) -> Result<(), StoreError> {
        if self.dirty {
            put_json(kv, INDEX, self)?;
            self.dirty = false;
        }
        if !self.closed.is_empty() {
            crate::retention::note_closed(kv, std::mem::take(&mut self.closed))?;
        }
        Ok(())
    }
}

pub fn load_incident(kv: &mut dyn Kv, key: &str) -> Result<Option<IncidentRecord>, StoreError> {
    get_json(kv, &incident_key(key))
}

/// Persists the record and updates its index line in memory.
pub fn save_incident(
    kv: &mut dyn Kv,
    index: &mut Index,
    rec: &IncidentRecord,
) -> Result<(), StoreError> {
    put_json(kv, &incident_key(&rec.key), rec)?;
    index.reindex(rec);
    Ok(())
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Lease {
    owner: String,
    until_ms: i64,
}

/// Takes the worker lease (all writes to incident records happen under it), unless
/// another live holder has it. Compare-and-swap makes two takers exclusive.
pub fn acquire_lease(
    kv: &mut dyn Kv,
    owner: &str,
    now_ms: i64,
    ttl_ms: i64,
) -> Result<bool, StoreError> {
    let current = kv.get(LEASE)?;
    if let Some(bytes) = &current
        && let Ok(lease) = serde_json::from_slice::<Lease>(bytes)
        && lease.owner != owner
        && lease.until_ms > now_ms
    {
        return Ok(false);
    }
    let new = serde_json::to_vec(&Lease {
        owner: owner.to_string(),
        until_ms: now_ms + ttl_ms,
    })
    .map_err(|e| StoreError::Corrupt {
        key: LEASE.into(),
        detail: e.to_string(),
    })?;
    Ok(kv.compare_and_swap(LEASE, current.as_deref(), &new)?)
}

pub fn release_lease(kv: &mut dyn Kv, owner: &str) -> Result<(), StoreError> {
    if let Some(bytes) = kv.get(LEASE)?
        && serde_json::from_slice::<Lease>(&bytes).is_ok_and(|l| l.owner == owner)
    {
        kv.delete(LEASE)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::FakeKv;

    #[test]
    fn the_lease_is_exclusive_until_it_expires() {
        let mut kv = FakeKv::default();
        assert!(acquire_lease(&mut kv, "a", 1_000, 500).unwrap());
        assert!(!acquire_lease(&mut kv, "b", 1_200, 500).unwrap());
        assert!(
            acquire_lease(&mut kv, "a", 1_200, 500).unwrap(),
            "the holder may renew"
        );
        assert!(acquire_lease(&mut kv, "b", 1_701, 500).unwrap(), "expired");
        release_lease(&mut kv, "a").unwrap();
        assert!(kv.map.contains_key(LEASE), "only the holder releases");
        release_lease(&mut kv, "b").unwrap();
        assert!(!kv.map.contains_key(LEASE));
    }

    #[test]
    fn the_index_follows_records_and_forgets_closed_ones() {
        let mut kv = FakeKv::default();
        let mut index = Index::default();
        let mut rec = IncidentRecord::new("k1", 0);
        save_incident(&mut kv, &mut index, &rec).unwrap();
        assert_eq!(index.entries.len(), 1);
        assert!(index.entries[0].needs_work);
        rec.state = State::Open;
        rec.snow = Some(crate::incident::SnowRef {
            sys_id: "s1".into(),
            number: "INC1".into(),
        });
        save_incident(&mut kv, &mut index, &rec).unwrap();
        assert!(
            Index::load(&mut kv).unwrap().entries.is_empty(),
            "not written before flush"
        );
        index.flush(&mut kv).unwrap();
        assert_eq!(Index::load(&mut kv).unwrap(), index);
        assert_eq!(index.entries[0].sys_id.as_deref(), Some("s1"));
        assert!(!index.entries[0].needs_work);
        rec.state = State::Closed;
        save_incident(&mut kv, &mut index, &rec).unwrap();
        index.flush(&mut kv).unwrap();
        assert!(Index::load(&mut kv).unwrap().entries.is_empty());
        assert_eq!(
            load_incident(&mut kv, "k1").unwrap().unwrap().state,
            State::Closed
        );
    }

    #[test]
    fn unreadable_values_name_their_key() {
        let mut kv = FakeKv::default();
        kv.map.insert("incident/k".into(), b"{not json".to_vec());
        let err = load_incident(&mut kv, "k").unwrap_err().to_string();
        assert!(err.contains("incident/k"), "{err}");
    }
}
