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
            ) WITHOUT ROWID;
            -- The last version handed out, for every key of every tenant: a key
            -- deleted and written again never gets a version it had (no ABA).
            CREATE TABLE IF NOT EXISTS kv_version (
                id   INTEGER PRIMARY KEY CHECK (id = 0),
                last INTEGER NOT NULL
            );
            INSERT OR IGNORE INTO kv_version (id, last)
                SELECT 0, COALESCE(MAX(version), 0) FROM kv;",
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

/// Stores `value` under the next version of the database, inside a write
/// transaction (the caller's, which may have read the old version first).
fn write_versioned(
    tx: &rusqlite::Transaction<'_>,
    ns: &Namespace,
    key: &str,
    value: &[u8],
) -> Result<(), KvError> {
    let version: i64 = tx.query_row(
        "UPDATE kv_version SET last = last + 1 WHERE id = 0 RETURNING last",
        [],
        |r| r.get(0),
    )?;
    tx.execute(
        "INSERT INTO kv (tenant, bucket, key, value, version) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (tenant, bucket, key)
         DO UPDATE SET value = excluded.value, version = excluded.version",
        params![&*ns.tenant, &*ns.bucket, key, value, version],
    )?;
    Ok(())
}

impl SqliteKv {
    /// Runs `op` in an immediate (write-locking) transaction and commits it.
    fn write<T>(
        &self,
        op: impl FnOnce(&rusqlite::Transaction<'_>) -> Result<T, KvError>,
    ) -> Result<T, KvError> {
        let mut conn = self.conn()?;
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let out = op(&tx)?;
        tx.commit()?;
        Ok(out)
    }
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
        self.write(|tx| write_versioned(tx, ns, key, value))
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
            "SELECT key FROM kv WHERE tenant=?1 AND bucket=?2 AND (?3 IS NULL OR key > ?3)
             ORDER BY key LIMIT ?4",
        )?;
        let rows = stmt.query_map(
            params![&*ns.tenant, &*ns.bucket, after, limit as i64],
            |r| r.get::<_, String>(0),
        )?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn increment(&self, ns: &Namespace, key: &str, delta: i64) -> Result<i64, KvError> {
        self.write(|tx| {
            let current: Option<Vec<u8>> = tx
                .query_row(
                    "SELECT value FROM kv WHERE tenant=?1 AND bucket=?2 AND key=?3",
                    params![&*ns.tenant, &*ns.bucket, key],
                    |r| r.get(0),
                )
                .optional()?;
            let old = match current {
                None => 0i64,
                Some(bytes) => {
                    let arr: [u8; 8] = bytes.as_slice().try_into().map_err(|_| {
                        KvError::Invalid(format!(
                            "increment: the value at {key:?} is not a 64-bit integer"
                        ))
                    })?;
                    i64::from_le_bytes(arr)
                }
            };
            let new = old
                .checked_add(delta)
                .ok_or_else(|| KvError::Invalid(format!("increment: {key:?} would overflow")))?;
            write_versioned(tx, ns, key, &new.to_le_bytes())?;
            Ok(new)
        })
    }

    fn swap(
        &self,
        ns: &Namespace,
        key: &str,
        expected: Option<u64>,
        value: &[u8],
    ) -> Result<bool, KvError> {
        self.write(|tx| {
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
            write_versioned(tx, ns, key, value)?;
            Ok(true)
        })
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
