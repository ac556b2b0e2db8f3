//! `wasi:keyvalue@0.2.0-draft2` (store + atomics), namespaced per tenant.
//!
//! Every operation is addressed by a [`Namespace`] fixed by the host when the
//! store is created: the guest names a bucket, the host pairs it with the
//! tenant it runs for. Tenant and bucket are separate columns of the primary
//! key, so no key or bucket string can reach another tenant's rows.

use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use rusqlite::{Connection, OptionalExtension, params};
use wasmtime::component::Resource;

use crate::bindings::wasi::keyvalue::{atomics, store};
use crate::state::HostState;

/// Longest key a guest may use, in bytes.
pub const MAX_KEY_BYTES: usize = 1024;
/// Largest value a guest may store, in bytes.
pub const MAX_VALUE_BYTES: usize = 4 * 1024 * 1024;
/// Keys returned by one `list-keys` call; the cursor continues from there.
pub const LIST_PAGE: usize = 1000;

/// Whose data an operation touches: decided by the host, never by the guest.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Namespace {
    pub tenant: Arc<str>,
    pub bucket: Arc<str>,
}

/// Errors of the storage backend, mapped onto `wasi:keyvalue/store.error`.
#[derive(Debug, thiserror::Error)]
pub enum KvError {
    #[error("key-value storage failed: {0}")]
    Backend(String),
    #[error("{0}")]
    Invalid(String),
}

impl From<rusqlite::Error> for KvError {
    fn from(e: rusqlite::Error) -> Self {
        KvError::Backend(e.to_string())
    }
}

/// A durable key-value store shared by all tenants, partitioned by [`Namespace`].
///
/// Values carry a version that changes on every write, so compare-and-swap
/// detects any intervening write (no ABA).
pub trait KvBackend: Send + Sync + 'static {
    fn get(&self, ns: &Namespace, key: &str) -> Result<Option<(Vec<u8>, u64)>, KvError>;
    fn set(&self, ns: &Namespace, key: &str, value: &[u8]) -> Result<(), KvError>;
    fn delete(&self, ns: &Namespace, key: &str) -> Result<(), KvError>;
    /// Keys in byte order strictly after `after`, at most `limit` of them.
    fn list_keys(
        &self,
        ns: &Namespace,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>, KvError>;
    /// Adds `delta` to the little-endian i64 stored at `key` (0 when absent).
    fn increment(&self, ns: &Namespace, key: &str, delta: i64) -> Result<i64, KvError>;
    /// Writes `value` only if the key's version is still `expected`
    /// (`None`: the key must still be absent). Returns whether it wrote.
    fn swap(
        &self,
        ns: &Namespace,
        key: &str,
        expected: Option<u64>,
        value: &[u8],
    ) -> Result<bool, KvError>;
    /// Every key of one tenant, across its buckets (operator tooling, tests).
    fn tenant_keys(&self, tenant: &str) -> Result<Vec<(String, String)>, KvError>;
    /// Removes every key of one tenant.
    fn drop_tenant(&self, tenant: &str) -> Result<(), KvError>;
}

/// The default backend: one SQLite file in WAL mode.
pub struct SqliteKv {
    conn: Mutex<Connection>,
}

impl SqliteKv {
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        let conn = Connection::open(path)
            .with_context(|| format!("opening key-value database {}", path.display()))?;
        Self::init(conn)
    }

    pub fn in_memory() -> anyhow::Result<Self> {
        Self::init(Connection::open_in_memory()?)
    }

    fn init(conn: Connection) -> anyhow::Result<Self> {
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS kv (
                tenant  TEXT NOT NULL,
                bucket  TEXT NOT NULL,
                key     TEXT NOT NULL,
                value   BLOB NOT NULL,
                version INTEGER NOT NULL,
                PRIMARY KEY (tenant, bucket, key)
            ) WITHOUT ROWID;",
        )?;
        Ok(Self {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> Result<std::sync::MutexGuard<'_, Connection>, KvError> {
        self.conn
            .lock()
            .map_err(|_| KvError::Backend("key-value connection poisoned".into()))
    }
}

/// Stores `value` at `version` inside a transaction that read the old version.
fn write_versioned(
    tx: &rusqlite::Transaction<'_>,
    ns: &Namespace,
    key: &str,
    value: &[u8],
    version: u64,
) -> Result<(), KvError> {
    tx.execute(
        "INSERT INTO kv (tenant, bucket, key, value, version) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (tenant, bucket, key)
         DO UPDATE SET value = excluded.value, version = excluded.version",
        params![&*ns.tenant, &*ns.bucket, key, value, version as i64],
    )?;
    Ok(())
}

fn next_version(current: Option<u64>) -> u64 {
    current.map_or(1, |v| v.wrapping_add(1))
}

impl KvBackend for SqliteKv {
    fn get(&self, ns: &Namespace, key: &str) -> Result<Option<(Vec<u8>, u64)>, KvError> {
        let conn = self.conn()?;
        Ok(conn
            .query_row(
                "SELECT value, version FROM kv WHERE tenant=?1 AND bucket=?2 AND key=?3",
                params![&*ns.tenant, &*ns.bucket, key],
                |r| Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, i64>(1)? as u64)),
            )
            .optional()?)
    }

    fn set(&self, ns: &Namespace, key: &str, value: &[u8]) -> Result<(), KvError> {
        let conn = self.conn()?;
        conn.execute(
            "INSERT INTO kv (tenant, bucket, key, value, version) VALUES (?1, ?2, ?3, ?4, 1)
             ON CONFLICT (tenant, bucket, key)
             DO UPDATE SET value = excluded.value, version = kv.version + 1",
            params![&*ns.tenant, &*ns.bucket, key, value],
        )?;
        Ok(())
    }

    fn delete(&self, ns: &Namespace, key: &str) -> Result<(), KvError> {
        let conn = self.conn()?;
        conn.execute(
            "DELETE FROM kv WHERE tenant=?1 AND bucket=?2 AND key=?3",
            params![&*ns.tenant, &*ns.bucket, key],
        )?;
        Ok(())
    }

    fn list_keys(
        &self,
        ns: &Namespace,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>, KvError> {
        let conn = self.conn()?;
        let mut stmt = conn.prepare_cached(
            "SELECT key FROM kv WHERE tenant=?1 AND bucket=?2 AND key > ?3
             ORDER BY key LIMIT ?4",
        )?;
        let rows = stmt.query_map(
            params![&*ns.tenant, &*ns.bucket, after.unwrap_or(""), limit as i64],
            |r| r.get::<_, String>(0),
        )?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn increment(&self, ns: &Namespace, key: &str, delta: i64) -> Result<i64, KvError> {
        let mut conn = self.conn()?;
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let current: Option<(Vec<u8>, i64)> = tx
            .query_row(
                "SELECT value, version FROM kv WHERE tenant=?1 AND bucket=?2 AND key=?3",
                params![&*ns.tenant, &*ns.bucket, key],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let (old, version) = match current {
            None => (0i64, None),
            Some((bytes, version)) => {
                let arr: [u8; 8] = bytes.as_slice().try_into().map_err(|_| {
                    KvError::Invalid(format!(
                        "increment: the value at {key:?} is not a 64-bit integer"
                    ))
                })?;
                (i64::from_le_bytes(arr), Some(version as u64))
            }
        };
        let new = old
            .checked_add(delta)
            .ok_or_else(|| KvError::Invalid(format!("increment: {key:?} would overflow")))?;
        write_versioned(&tx, ns, key, &new.to_le_bytes(), next_version(version))?;
        tx.commit()?;
        Ok(new)
    }

    fn swap(
        &self,
        ns: &Namespace,
        key: &str,
        expected: Option<u64>,
        value: &[u8],
    ) -> Result<bool, KvError> {
        let mut conn = self.conn()?;
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let version: Option<i64> = tx
            .query_row(
                "SELECT version FROM kv WHERE tenant=?1 AND bucket=?2 AND key=?3",
                params![&*ns.tenant, &*ns.bucket, key],
                |r| r.get(0),
            )
            .optional()?;
        if version.map(|v| v as u64) != expected {
            return Ok(false);
        }
        write_versioned(&tx, ns, key, value, next_version(expected))?;
        tx.commit()?;
        Ok(true)
    }

    fn tenant_keys(&self, tenant: &str) -> Result<Vec<(String, String)>, KvError> {
        let conn = self.conn()?;
        let mut stmt =
            conn.prepare("SELECT bucket, key FROM kv WHERE tenant=?1 ORDER BY bucket, key")?;
        let rows = stmt.query_map(params![tenant], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn drop_tenant(&self, tenant: &str) -> Result<(), KvError> {
        let conn = self.conn()?;
        conn.execute("DELETE FROM kv WHERE tenant=?1", params![tenant])?;
        Ok(())
    }
}

/// What a guest's `bucket` resource holds: only the namespace the host chose.
pub struct BucketHandle {
    ns: Namespace,
}

/// What a guest's `cas` resource holds: the version it observed.
pub struct CasHandle {
    ns: Namespace,
    key: String,
    observed: Option<(Vec<u8>, u64)>,
}

/// The per-invocation key-value view of one tenant.
pub struct TenantKv {
    pub backend: Arc<dyn KvBackend>,
    pub tenant: Arc<str>,
    /// Bucket names this tenant may open (Spin's `key_value_stores`).
    pub buckets: Arc<[String]>,
}

fn check_key(key: &str) -> Result<(), store::Error> {
    if key.len() > MAX_KEY_BYTES {
        return Err(store::Error::Other(format!(
            "key is {} bytes; the limit is {MAX_KEY_BYTES}",
            key.len()
        )));
    }
    Ok(())
}

fn backend_err(e: KvError) -> store::Error {
    store::Error::Other(e.to_string())
}

fn check_value(value: &[u8]) -> Result<(), KvError> {
    if value.len() > MAX_VALUE_BYTES {
        return Err(KvError::Invalid(format!(
            "value is {} bytes; the limit is {MAX_VALUE_BYTES}",
            value.len()
        )));
    }
    Ok(())
}

impl HostState {
    fn bucket_ns(&self, bucket: &Resource<BucketHandle>) -> wasmtime::Result<Namespace> {
        Ok(self.table.get(bucket)?.ns.clone())
    }

    /// Runs `op` on the bucket's namespace once the key passed its checks.
    fn on_key<T>(
        &self,
        bucket: &Resource<BucketHandle>,
        key: &str,
        op: impl FnOnce(&dyn KvBackend, &Namespace) -> Result<T, KvError>,
    ) -> wasmtime::Result<Result<T, store::Error>> {
        let ns = self.bucket_ns(bucket)?;
        if let Err(e) = check_key(key) {
            return Ok(Err(e));
        }
        Ok(op(&*self.kv.backend, &ns).map_err(backend_err))
    }
}

impl store::Host for HostState {
    async fn open(
        &mut self,
        identifier: String,
    ) -> wasmtime::Result<Result<Resource<BucketHandle>, store::Error>> {
        if !self.kv.buckets.contains(&identifier) {
            return Ok(Err(store::Error::NoSuchStore));
        }
        let ns = Namespace {
            tenant: self.kv.tenant.clone(),
            bucket: identifier.into(),
        };
        Ok(Ok(self.table.push(BucketHandle { ns })?))
    }
}

impl store::HostBucket for HostState {
    async fn get(
        &mut self,
        bucket: Resource<BucketHandle>,
        key: String,
    ) -> wasmtime::Result<Result<Option<Vec<u8>>, store::Error>> {
        self.on_key(&bucket, &key, |b, ns| {
            b.get(ns, &key).map(|v| v.map(|(value, _)| value))
        })
    }

    async fn set(
        &mut self,
        bucket: Resource<BucketHandle>,
        key: String,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), store::Error>> {
        self.on_key(&bucket, &key, |b, ns| {
            check_value(&value)?;
            b.set(ns, &key, &value)
        })
    }

    async fn delete(
        &mut self,
        bucket: Resource<BucketHandle>,
        key: String,
    ) -> wasmtime::Result<Result<(), store::Error>> {
        self.on_key(&bucket, &key, |b, ns| b.delete(ns, &key))
    }

    async fn exists(
        &mut self,
        bucket: Resource<BucketHandle>,
        key: String,
    ) -> wasmtime::Result<Result<bool, store::Error>> {
        self.on_key(&bucket, &key, |b, ns| b.get(ns, &key).map(|v| v.is_some()))
    }

    async fn list_keys(
        &mut self,
        bucket: Resource<BucketHandle>,
        cursor: Option<String>,
    ) -> wasmtime::Result<Result<store::KeyResponse, store::Error>> {
        let ns = self.bucket_ns(&bucket)?;
        let keys = match self.kv.backend.list_keys(&ns, cursor.as_deref(), LIST_PAGE) {
            Ok(keys) => keys,
            Err(e) => return Ok(Err(backend_err(e))),
        };
        let cursor = if keys.len() == LIST_PAGE {
            keys.last().cloned()
        } else {
            None
        };
        Ok(Ok(store::KeyResponse { keys, cursor }))
    }

    async fn drop(&mut self, bucket: Resource<BucketHandle>) -> wasmtime::Result<()> {
        self.table.delete(bucket)?;
        Ok(())
    }
}

impl atomics::Host for HostState {
    async fn increment(
        &mut self,
        bucket: Resource<BucketHandle>,
        key: String,
        delta: i64,
    ) -> wasmtime::Result<Result<i64, store::Error>> {
        self.on_key(&bucket, &key, |b, ns| b.increment(ns, &key, delta))
    }

    async fn swap(
        &mut self,
        cas: Resource<CasHandle>,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), atomics::CasError>> {
        // `swap` takes ownership of the handle.
        let handle = self.table.delete(cas)?;
        if let Err(e) = check_value(&value) {
            return Ok(Err(atomics::CasError::StoreError(backend_err(e))));
        }
        let expected = handle.observed.as_ref().map(|(_, v)| *v);
        match self
            .kv
            .backend
            .swap(&handle.ns, &handle.key, expected, &value)
        {
            Ok(true) => Ok(Ok(())),
            Ok(false) => {
                // Hand back a fresh handle observing the value that won.
                let observed = match self.kv.backend.get(&handle.ns, &handle.key) {
                    Ok(v) => v,
                    Err(e) => return Ok(Err(atomics::CasError::StoreError(backend_err(e)))),
                };
                let fresh = self.table.push(CasHandle {
                    ns: handle.ns,
                    key: handle.key,
                    observed,
                })?;
                Ok(Err(atomics::CasError::CasFailed(fresh)))
            }
            Err(e) => Ok(Err(atomics::CasError::StoreError(backend_err(e)))),
        }
    }
}

impl atomics::HostCas for HostState {
    async fn new(
        &mut self,
        bucket: Resource<BucketHandle>,
        key: String,
    ) -> wasmtime::Result<Result<Resource<CasHandle>, store::Error>> {
        let seen = self.on_key(&bucket, &key, |b, ns| Ok((ns.clone(), b.get(ns, &key)?)))?;
        Ok(match seen {
            Ok((ns, observed)) => Ok(self.table.push(CasHandle { ns, key, observed })?),
            Err(e) => Err(e),
        })
    }

    async fn current(
        &mut self,
        cas: Resource<CasHandle>,
    ) -> wasmtime::Result<Result<Option<Vec<u8>>, store::Error>> {
        Ok(Ok(self
            .table
            .get(&cas)?
            .observed
            .as_ref()
            .map(|(v, _)| v.clone())))
    }

    async fn drop(&mut self, cas: Resource<CasHandle>) -> wasmtime::Result<()> {
        self.table.delete(cas)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ns(tenant: &str, bucket: &str) -> Namespace {
        Namespace {
            tenant: tenant.into(),
            bucket: bucket.into(),
        }
    }

    #[test]
    fn tenants_never_see_each_others_keys() {
        let kv = SqliteKv::in_memory().unwrap();
        kv.set(&ns("acme", "default"), "cursor", b"a").unwrap();
        kv.set(&ns("globex", "default"), "cursor", b"g").unwrap();
        assert_eq!(
            kv.get(&ns("acme", "default"), "cursor").unwrap().unwrap().0,
            b"a"
        );
        assert_eq!(
            kv.list_keys(&ns("globex", "default"), None, 10).unwrap(),
            vec!["cursor"]
        );
        assert!(kv.get(&ns("acme", "globex"), "cursor").unwrap().is_none());
    }

    #[test]
    fn swap_detects_an_intervening_write() {
        let kv = SqliteKv::in_memory().unwrap();
        let n = ns("acme", "default");
        kv.set(&n, "k", b"1").unwrap();
        let (_, seen) = kv.get(&n, "k").unwrap().unwrap();
        kv.set(&n, "k", b"1").unwrap(); // same bytes, new version
        assert!(!kv.swap(&n, "k", Some(seen), b"2").unwrap());
        let (_, now) = kv.get(&n, "k").unwrap().unwrap();
        assert!(kv.swap(&n, "k", Some(now), b"2").unwrap());
        assert!(!kv.swap(&n, "absent", Some(1), b"x").unwrap());
        assert!(kv.swap(&n, "absent", None, b"x").unwrap());
        assert!(!kv.swap(&n, "absent", None, b"y").unwrap());
    }

    #[test]
    fn increment_is_atomic_across_threads() {
        let kv = Arc::new(SqliteKv::in_memory().unwrap());
        let n = ns("acme", "default");
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let kv = kv.clone();
                let n = n.clone();
                std::thread::spawn(move || {
                    for _ in 0..50 {
                        kv.increment(&n, "c", 1).unwrap();
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        assert_eq!(kv.increment(&n, "c", 0).unwrap(), 400);
    }

    #[test]
    fn list_keys_pages_with_a_cursor() {
        let kv = SqliteKv::in_memory().unwrap();
        let n = ns("acme", "default");
        for i in 0..25 {
            kv.set(&n, &format!("k{i:03}"), b"v").unwrap();
        }
        let mut all = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = kv.list_keys(&n, after.as_deref(), 10).unwrap();
            let done = page.len() < 10;
            after = page.last().cloned();
            all.extend(page);
            if done {
                break;
            }
        }
        assert_eq!(all.len(), 25);
        assert_eq!(all[24], "k024");
    }
}
