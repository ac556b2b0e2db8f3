//! `wasi:keyvalue@0.2.0-draft2` (store + atomics), namespaced per tenant.
//!
//! Every operation is addressed by a [`Namespace`] fixed by the host when the
//! store is created: the guest names a bucket, the host pairs it with the
//! tenant it runs for. Each backend keeps tenant and bucket apart so that no key
//! or bucket string can reach another tenant's data: separate primary-key
//! columns in [`SqliteKv`], length-prefixed Redis key names in [`RedisKv`].

use std::sync::Arc;

mod redis;
mod sqlite;
mod wasi;

pub use redis::{RedisKv, RedisOptions, redact_url};
pub use sqlite::SqliteKv;
pub use wasi::{BucketHandle, CasHandle, HasKv, KvView, TenantKv};

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
