//! The embedded backend: one SQLite file (WAL mode) holding every tenant's keys.

use std::path::Path;
use std::sync::Mutex;

use anyhow::Context as _;
use rusqlite::{Connection, OptionalExtension, params};

use super::{KvBackend, KvError, Namespace};

impl From<rusqlite::Error> for KvError {
    fn from(e: rusqlite::Error) -> Self {
        KvError::Backend(e.to_string())
    }
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

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
