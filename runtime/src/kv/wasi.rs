//! `wasi:keyvalue@0.2.0-draft2` (store + atomics) served from a [`KvBackend`] for one
//! tenant: the guest names a bucket, the host pairs it with the tenant it runs for.
//!
//! The interfaces are implemented on [`KvView`] — the tenant's [`TenantKv`] plus the
//! store's resource table — not on the store's whole state, so this module knows
//! nothing of the other capabilities (the pattern of wasmtime-wasi-http's
//! `WasiHttpCtxView`).

use std::sync::Arc;

use wasmtime::component::{HasData, Resource, ResourceTable};

use super::{KvBackend, KvError, LIST_PAGE, MAX_KEY_BYTES, MAX_VALUE_BYTES, Namespace};
use crate::bindings::wasi::keyvalue::{atomics, store};
use crate::report::{ReportKey, ReportWrites};

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
    /// The component's reports written during this invocation ([`crate::report`]).
    pub reports: ReportWrites,
    /// The tenant lease this invocation writes under (a replica's tick), if any.
    pub fence: Option<super::Fence>,
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

/// The key-value capability's view of one store: what [`store::Host`] and
/// [`atomics::Host`] are implemented on.
pub struct KvView<'a> {
    pub kv: &'a mut TenantKv,
    pub table: &'a mut ResourceTable,
}

/// Marks [`KvView`] as the data the key-value interfaces are linked with
/// (`add_to_linker::<T, HasKv>(linker, |state| state.kv_view())`).
pub struct HasKv;

impl HasData for HasKv {
    type Data<'a> = KvView<'a>;
}

impl KvView<'_> {
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
        Ok(self.in_ns(&ns, key, op))
    }

    /// As [`KvView::on_key`], for a namespace already looked up.
    fn in_ns<T>(
        &self,
        ns: &Namespace,
        key: &str,
        op: impl FnOnce(&dyn KvBackend, &Namespace) -> Result<T, KvError>,
    ) -> Result<T, store::Error> {
        check_key(key)?;
        op(&*self.kv.backend, ns).map_err(backend_err)
    }
}

impl store::Host for KvView<'_> {
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
            fence: self.kv.fence.clone(),
        };
        Ok(Ok(self.table.push(BucketHandle { ns })?))
    }
}

impl store::HostBucket for KvView<'_> {
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
        let ns = self.bucket_ns(&bucket)?;
        let report = ReportKey::of(&ns.bucket, &key);
        let before = match report {
            Some(r) if self.kv.reports.wants_before(r) => self
                .kv
                .backend
                .get(&ns, &key)
                .ok()
                .flatten()
                .map(|(v, _)| v),
            _ => None,
        };
        let written = self.in_ns(&ns, &key, |b, ns| {
            check_value(&value)?;
            b.set(ns, &key, &value)
        });
        if let (Some(r), Ok(())) = (report, &written) {
            self.kv.reports.record(r, before, &value);
        }
        Ok(written)
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

impl atomics::Host for KvView<'_> {
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

impl atomics::HostCas for KvView<'_> {
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
