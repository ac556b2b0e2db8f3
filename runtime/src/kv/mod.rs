//! `wasi:keyvalue@0.2.0-draft2` (store + atomics), namespaced per tenant.
//!
//! Every operation is addressed by a [`Namespace`] fixed by the host when the
//! store is created: the guest names a bucket, the host pairs it with the
//! tenant it runs for. Each backend keeps tenant and bucket apart so that no key
//! or bucket string can reach another tenant's data: separate primary-key
//! columns in [`SqliteKv`], length-prefixed Redis key names in [`RedisKv`].

use std::sync::Arc;
use std::time::Duration;

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
    /// The lease the writer holds on the tenant, when it writes as the tenant's owner
    /// (a replica's tick): a shared store refuses the write once the lease is no
    /// longer exactly this one ([`KvError::Fenced`]). `None`: an unfenced write (a
    /// single host; a callback, which any replica may serve and the component itself
    /// serialises with its compare-and-swap lease).
    pub fence: Option<Fence>,
}

impl Namespace {
    /// An unfenced namespace.
    pub fn new(tenant: &str, bucket: &str) -> Self {
        Self {
            tenant: tenant.into(),
            bucket: bucket.into(),
            fence: None,
        }
    }
}

/// A tenant lease as the store knows it: the token the store issued when it was taken
/// (never issued twice for a tenant) and the replica holding it. The store checks
/// writes made under it (a fencing token: Kleppmann, "How to do distributed locking",
/// 2016; the pattern of ZooKeeper's zxid-checked writes).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Fence {
    pub token: u64,
    pub holder: Arc<str>,
}

impl Fence {
    /// `<token>:<holder>`, the lease's value in the store.
    pub fn value(&self) -> String {
        format!("{}:{}", self.token, self.holder)
    }

    /// The inverse of [`Fence::value`]; `None` for anything else.
    pub fn parse(value: &str) -> Option<Fence> {
        let (token, holder) = value.split_once(':')?;
        Some(Fence {
            token: token.parse().ok()?,
            holder: holder.into(),
        })
    }
}

/// Errors of the storage backend, mapped onto `wasi:keyvalue/store.error`.
#[derive(Debug, thiserror::Error)]
pub enum KvError {
    #[error("key-value storage failed: {0}")]
    Backend(String),
    #[error("{0}")]
    Invalid(String),
    /// The write was made under a lease that is no longer held (expired, or taken
    /// over by another replica): nothing was written.
    #[error("the tenant's lease is no longer held by this replica: write refused")]
    Fenced,
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
    /// Tenant leases, when the store is shared by several host replicas (Redis);
    /// `None` for a store only one host uses (SQLite), which ignores fences.
    fn leases(&self) -> Option<&dyn LeaseBackend> {
        None
    }
    /// Where the application keeps its registry (tenants, accounts, sealed secrets)
    /// when the store is shared by several host replicas; `None`: the application
    /// keeps it itself (SQLite beside the store).
    fn registry(&self) -> Option<&dyn RegistryBackend> {
        None
    }
}

/// Tenant leases between host replicas on a shared store: which replica ticks which
/// tenant. A lease has a time to live, is renewed while held and carries a [`Fence`]
/// the store checks on every write made under it.
pub trait LeaseBackend: Send + Sync + 'static {
    /// Takes `tenant`'s lease for `holder` for `ttl` when nobody holds it; `None` when
    /// somebody (`holder` included) does. The token is new: never issued before for
    /// this tenant.
    fn acquire(&self, tenant: &str, holder: &str, ttl: Duration) -> Result<Option<Fence>, KvError>;
    /// Extends the lease by `ttl` if it is still exactly `fence`; `false`: it was lost.
    fn renew(&self, tenant: &str, fence: &Fence, ttl: Duration) -> Result<bool, KvError>;
    /// Gives the lease up if it is still exactly `fence`; `false`: it was already lost.
    fn release(&self, tenant: &str, fence: &Fence) -> Result<bool, KvError>;
    /// Who holds `tenant`'s lease now.
    fn holder(&self, tenant: &str) -> Result<Option<Fence>, KvError>;
    /// Announces `replica` alive for `ttl` (by the store's clock) and answers every
    /// replica alive now, sorted.
    fn heartbeat(&self, replica: &str, ttl: Duration) -> Result<Vec<String>, KvError>;
    /// Removes `replica` from the live ones (a clean shutdown).
    fn leave(&self, replica: &str) -> Result<(), KvError>;
}

/// The application's registry as one versioned image in a shared store: every edit
/// reads the image, changes it and writes it back only if nobody wrote since
/// ([`RegistryBackend::store`] is a compare-and-swap on the version), so an edit is
/// atomic across replicas and operators whatever it checks. The image is opaque here
/// (`mssp-bridge` keeps an SQLite database image, its secrets sealed).
pub trait RegistryBackend: Send + Sync + 'static {
    /// The image and its version; `None` before the first edit.
    fn load(&self) -> Result<Option<(Vec<u8>, u64)>, KvError>;
    /// The version alone (cheap: whether a reload is needed).
    fn version(&self) -> Result<u64, KvError>;
    /// Writes `image` if the version is still `expected` (0: nothing stored yet);
    /// answers the new version, or `None` when somebody wrote meanwhile.
    fn store(&self, image: &[u8], expected: u64) -> Result<Option<u64>, KvError>;
}
