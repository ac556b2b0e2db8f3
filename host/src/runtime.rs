//! The engine: compiles the component once (cached on disk by hash),
//! pre-instantiates it, and runs every invocation — one tick or one HTTP
//! request of one tenant — in a fresh store with that tenant's sandbox.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow};
use sha2::{Digest, Sha256};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{
    Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, UpdateDeadline,
};
use wasmtime_wasi::WasiCtx;
use wasmtime_wasi_http::WasiHttpCtx;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;

use crate::bindings::{self, BridgePre};
use crate::connections::ConnectionPool;
use crate::guest_log::GuestLog;
use crate::kv::{KvBackend, TenantKv};
use crate::outbound::{Allowlist, OutboundPolicy};
use crate::secrets::SecretString;
use crate::settings::LimitSettings;
use crate::state::{HostState, MemoryCap};
use crate::stats::{Metrics, StopKind, TenantStats, TickOutcome};
use crate::tenants::ResolvedTenant;
use crate::wasi_config::ConfigMap;

/// How often the epoch advances; CPU deadlines are checked at this grain.
const EPOCH_TICK: Duration = Duration::from_millis(10);

/// One tenant as the runtime sees it.
pub struct Tenant {
    pub id: Arc<str>,
    pub config: ConfigMap,
    pub allow: Arc<Allowlist>,
    pub stats: Arc<TenantStats>,
    /// Upstream connections kept alive between this tenant's requests.
    pub connections: Arc<ConnectionPool>,
    pub interval: Option<Duration>,
    /// Held for the whole of a tick: never two ticks of one tenant at once.
    pub tick_lock: tokio::sync::Mutex<()>,
    /// Invocations of this tenant running at once.
    inflight: Arc<Semaphore>,
    /// The component this tenant runs.
    pre: BridgePre<HostState>,
}

impl Tenant {
    fn new(
        resolved: ResolvedTenant,
        max_concurrent: usize,
        metrics: Arc<Metrics>,
        pre: BridgePre<HostState>,
    ) -> Self {
        Self {
            pre,
            stats: Arc::new(TenantStats::new(&resolved.id, metrics)),
            connections: Arc::default(),
            id: resolved.id.into(),
            interval: resolved.settings.interval_secs.map(Duration::from_secs),
            config: Arc::new(resolved.config),
            allow: Arc::new(resolved.allowlist),
            tick_lock: tokio::sync::Mutex::new(()),
            inflight: Arc::new(Semaphore::new(max_concurrent.max(1))),
        }
    }

    /// The value of a config key, for host-side features (never a secret).
    pub fn config_value(&self, key: &str) -> Option<&str> {
        self.config.get(key).map(SecretString::expose)
    }
}

/// Why an invocation failed.
#[derive(Debug, thiserror::Error)]
pub enum InvokeError {
    #[error("tenant {tenant} stopped: {kind:?}: {detail}")]
    Stopped {
        tenant: String,
        kind: StopKind,
        detail: String,
    },
    #[error("tenant {tenant}: the tick reported an error: {0}", .message)]
    Guest { tenant: String, message: String },
    #[error("tenant {tenant} already runs {limit} invocations")]
    Busy { tenant: String, limit: usize },
    #[error(transparent)]
    Host(#[from] anyhow::Error),
}

impl InvokeError {
    pub fn stop_kind(&self) -> Option<StopKind> {
        match self {
            InvokeError::Stopped { kind, .. } => Some(*kind),
            InvokeError::Busy { .. } => Some(StopKind::Busy),
            _ => None,
        }
    }
}

/// Builds the engine used for every tenant.
pub fn engine(limits: &LimitSettings, max_instances: u32) -> anyhow::Result<Engine> {
    let mut cfg = wasmtime::Config::new();
    cfg.epoch_interruption(true);
    let memory = limits.memory_bytes().max(1 << 20);
    let mut pool = PoolingAllocationConfig::default();
    pool.total_component_instances(max_instances)
        .total_core_instances(max_instances * 8)
        .total_memories(max_instances * 2)
        .total_tables(max_instances * 4)
        .total_stacks(max_instances)
        .max_core_instances_per_component(16)
        .max_memories_per_component(2)
        .max_tables_per_component(8)
        .max_memory_size(memory)
        // Reuse the first pages of a slot without returning them to the
        // kernel, so a fresh instance does not fault them in again.
        .linear_memory_keep_resident(1 << 20);
    cfg.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    // Reserve the whole 32-bit range (address space only, not RSS) so that
    // compiled code needs no bounds checks; the tenant's memory cap is
    // enforced by `max_memory_size` and the store's limiter.
    cfg.memory_reservation(1 << 32);
    cfg.memory_reservation_for_growth(0);
    Ok(Engine::new(&cfg)?)
}

/// Compiles `wasm_path`, or loads the compiled artifact cached under `cache_dir`.
pub fn load_component(
    engine: &Engine,
    wasm_path: &Path,
    cache_dir: &Path,
) -> anyhow::Result<Component> {
    let wasm = std::fs::read(wasm_path).with_context(|| {
        format!(
            "reading component {}; build it with `cargo xtask build`",
            wasm_path.display()
        )
    })?;
    let mut h = Sha256::new();
    h.update(&wasm);
    let mut compat = std::collections::hash_map::DefaultHasher::new();
    std::hash::Hash::hash(&engine.precompile_compatibility_hash(), &mut compat);
    let key = format!(
        "{}-{:016x}.cwasm",
        hex::encode(h.finalize()),
        std::hash::Hasher::finish(&compat)
    );
    let cached = cache_dir.join(key);
    if cached.exists() {
        // SAFETY: the file was produced by `Component::serialize` of this very
        // engine configuration (its name carries the compatibility hash), in a
        // cache directory only this host writes.
        match unsafe { Component::deserialize_file(engine, &cached) } {
            Ok(c) => return Ok(c),
            Err(e) => {
                tracing::warn!(path = %cached.display(), "ignoring unusable cached component: {e}")
            }
        }
    }
    let component = Component::new(engine, &wasm)
        .map_err(anyhow::Error::from)
        .with_context(|| format!("compiling component {}", wasm_path.display()))?;
    if let Err(e) = write_cache(&component, cache_dir, &cached) {
        tracing::warn!(dir = %cache_dir.display(), "cannot cache the compiled component: {e}");
    }
    Ok(component)
}

fn write_cache(component: &Component, dir: &Path, path: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, component.serialize()?)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// Registers every interface of the bridge world on `linker`.
pub fn linker(engine: &Engine) -> anyhow::Result<Linker<HostState>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
    type Me = wasmtime::component::HasSelf<HostState>;
    bindings::wasi::keyvalue::store::add_to_linker::<HostState, Me>(&mut linker, |s| s)?;
    bindings::wasi::keyvalue::atomics::add_to_linker::<HostState, Me>(&mut linker, |s| s)?;
    bindings::wasi::config::store::add_to_linker::<HostState, Me>(&mut linker, |s| s)?;
    Ok(linker)
}

fn prepare(
    linker: &Linker<HostState>,
    component: &Component,
    path: &Path,
) -> anyhow::Result<BridgePre<HostState>> {
    let instance_pre = linker
        .instantiate_pre(component)
        .map_err(anyhow::Error::from)
        .with_context(|| format!("component {} does not fit the bridge world", path.display()))?;
    Ok(BridgePre::new(instance_pre)?)
}

/// Advances the engine's epoch until dropped.
struct EpochTicker {
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl EpochTicker {
    fn start(engine: Engine) -> Self {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        std::thread::Builder::new()
            .name("epoch".into())
            .spawn(move || {
                while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    engine.increment_epoch();
                }
            })
            .ok();
        Self { stop }
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Runs invocations of the bridge component for any tenant.
pub struct Runtime {
    engine: Engine,
    linker: Linker<HostState>,
    cache_dir: std::path::PathBuf,
    pre: BridgePre<HostState>,
    /// Components named by tenants, by path, compiled once.
    overrides: std::sync::Mutex<HashMap<std::path::PathBuf, BridgePre<HostState>>>,
    kv: Arc<dyn KvBackend>,
    limits: LimitSettings,
    tenants: RwLock<HashMap<String, Arc<Tenant>>>,
    metrics: Arc<Metrics>,
    _epoch: EpochTicker,
}

/// The pieces a [`Runtime`] is built from.
pub struct RuntimeParts<'a> {
    pub component: &'a Path,
    pub cache_dir: &'a Path,
    pub kv: Arc<dyn KvBackend>,
    pub limits: LimitSettings,
    /// Instances that may exist at once (pool size).
    pub max_instances: u32,
}

impl Runtime {
    pub fn new(parts: RuntimeParts<'_>) -> anyhow::Result<Self> {
        let engine = engine(&parts.limits, parts.max_instances)?;
        let component = load_component(&engine, parts.component, parts.cache_dir)?;
        let linker = linker(&engine)?;
        let pre = prepare(&linker, &component, parts.component)?;
        Ok(Self {
            _epoch: EpochTicker::start(engine.clone()),
            engine,
            linker,
            cache_dir: parts.cache_dir.to_path_buf(),
            pre,
            overrides: std::sync::Mutex::new(HashMap::new()),
            kv: parts.kv,
            limits: parts.limits,
            tenants: RwLock::new(HashMap::new()),
            metrics: Arc::new(Metrics::default()),
        })
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    pub fn kv(&self) -> &Arc<dyn KvBackend> {
        &self.kv
    }

    pub fn limits(&self) -> &LimitSettings {
        &self.limits
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The pre-instantiated component a tenant runs: the host's default, or
    /// the one its settings name (compiled once per path).
    fn component_for(&self, resolved: &ResolvedTenant) -> anyhow::Result<BridgePre<HostState>> {
        let Some(path) = &resolved.settings.component else {
            return Ok(self.pre.clone());
        };
        let mut overrides = self
            .overrides
            .lock()
            .map_err(|_| anyhow!("component table poisoned"))?;
        if let Some(pre) = overrides.get(path) {
            return Ok(pre.clone());
        }
        let component = load_component(&self.engine, path, &self.cache_dir)?;
        let pre = prepare(&self.linker, &component, path)?;
        overrides.insert(path.clone(), pre.clone());
        Ok(pre)
    }

    /// Adds or replaces a tenant; its counters restart. Fails only when the
    /// tenant names a component that cannot be loaded.
    pub fn upsert_tenant(&self, resolved: ResolvedTenant) -> anyhow::Result<Arc<Tenant>> {
        let pre = self
            .component_for(&resolved)
            .with_context(|| format!("tenant {}", resolved.id))?;
        let tenant = Arc::new(Tenant::new(
            resolved,
            self.limits.max_concurrent_per_tenant,
            self.metrics.clone(),
            pre,
        ));
        if let Ok(mut map) = self.tenants.write() {
            map.insert(tenant.id.to_string(), tenant.clone());
        }
        Ok(tenant)
    }

    pub fn remove_tenant(&self, id: &str) -> Option<Arc<Tenant>> {
        let removed = self.tenants.write().ok().and_then(|mut m| m.remove(id));
        if let Some(t) = &removed {
            t.stats.forget();
        }
        removed
    }

    pub fn tenant(&self, id: &str) -> Option<Arc<Tenant>> {
        self.tenants.read().ok().and_then(|m| m.get(id).cloned())
    }

    pub fn tenants(&self) -> Vec<Arc<Tenant>> {
        let mut v: Vec<_> = self
            .tenants
            .read()
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }

    fn permit(&self, tenant: &Tenant) -> Result<OwnedSemaphorePermit, InvokeError> {
        tenant.inflight.clone().try_acquire_owned().map_err(|_| {
            tenant.stats.stop(StopKind::Busy);
            InvokeError::Busy {
                tenant: tenant.id.to_string(),
                limit: self.limits.max_concurrent_per_tenant,
            }
        })
    }

    fn new_store(&self, tenant: &Tenant, deadline: Duration) -> Store<HostState> {
        let log_cap = self.limits.log_bytes_per_invocation;
        let mut wasi = WasiCtx::builder();
        wasi.stdout(GuestLog::new(
            tenant.id.clone(),
            "stdout",
            log_cap,
            tenant.stats.clone(),
        ))
        .stderr(GuestLog::new(
            tenant.id.clone(),
            "stderr",
            log_cap,
            tenant.stats.clone(),
        ))
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false);
        let state = HostState {
            table: ResourceTable::new(),
            wasi: wasi.build(),
            http: WasiHttpCtx::new(),
            hooks: OutboundPolicy {
                tenant: tenant.id.clone(),
                allow: tenant.allow.clone(),
                limits: self.limits.outbound(),
                stats: tenant.stats.clone(),
                pool: tenant.connections.clone(),
            },
            kv: TenantKv {
                backend: self.kv.clone(),
                tenant: tenant.id.clone(),
                buckets: Arc::from(vec!["default".to_string()]),
            },
            config: tenant.config.clone(),
            memory: MemoryCap {
                max_bytes: self.limits.memory_bytes(),
                hit: false,
            },
            tenant: tenant.id.clone(),
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.memory);
        let started = Instant::now();
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(move |_| {
            if started.elapsed() > deadline {
                Ok(UpdateDeadline::Interrupt)
            } else {
                Ok(UpdateDeadline::Yield(1))
            }
        });
        store
    }

    /// Why a failed call failed, recorded on the tenant's counters.
    fn classify(&self, tenant: &Tenant, memory_hit: bool, err: wasmtime::Error) -> InvokeError {
        let kind = if memory_hit {
            StopKind::Memory
        } else if matches!(
            err.downcast_ref::<wasmtime::Trap>(),
            Some(wasmtime::Trap::Interrupt)
        ) {
            StopKind::Timeout
        } else {
            StopKind::Trap
        };
        tenant.stats.stop(kind);
        let detail = format!("{err:#}");
        tracing::warn!(tenant = %tenant.id, kind = kind.as_str(), "invocation stopped: {detail}");
        InvokeError::Stopped {
            tenant: tenant.id.to_string(),
            kind,
            detail,
        }
    }

    fn timed_out(&self, tenant: &Tenant, deadline: Duration) -> InvokeError {
        tenant.stats.stop(StopKind::Timeout);
        tracing::warn!(tenant = %tenant.id, ?deadline, "invocation stopped: deadline passed");
        InvokeError::Stopped {
            tenant: tenant.id.to_string(),
            kind: StopKind::Timeout,
            detail: format!("deadline of {deadline:?} passed"),
        }
    }

    /// Builds `tenant`'s sandbox for one invocation (store with its WASI, HTTP,
    /// key-value and config contexts, limits, deadline) and instantiates the
    /// component in it, then drops both without calling anything: the
    /// per-invocation cost of isolation, for the benchmarks.
    pub async fn instantiate_only(&self, tenant: &Tenant) -> Result<(), InvokeError> {
        let deadline = Duration::from_secs(self.limits.tick_deadline_secs);
        let mut store = self.new_store(tenant, deadline);
        match tenant.pre.instantiate_async(&mut store).await {
            Ok(_) => Ok(()),
            Err(e) => {
                let hit = store.data().memory.hit;
                Err(self.classify(tenant, hit, e))
            }
        }
    }

    /// Runs one tick of `tenant` (`handle-cron-event`).
    ///
    /// Ticks of one tenant never overlap: a tick that finds the previous one
    /// still running waits for it.
    pub async fn tick(&self, tenant: &Tenant, timestamp: u64) -> Result<(), InvokeError> {
        let _tick = tenant.tick_lock.lock().await;
        let _permit = self.permit(tenant)?;
        let deadline = Duration::from_secs(self.limits.tick_deadline_secs);
        let started = Instant::now();
        let mut store = self.new_store(tenant, deadline);
        let run = async {
            let bridge = tenant.pre.instantiate_async(&mut store).await?;
            bridge
                .call_handle_cron_event(&mut store, bindings::Metadata { timestamp })
                .await
        };
        let outcome = tokio::time::timeout(deadline, run).await;
        let result = match outcome {
            Err(_) => Err(self.timed_out(tenant, deadline)),
            Ok(Err(e)) => {
                let hit = store.data().memory.hit;
                Err(self.classify(tenant, hit, e))
            }
            Ok(Ok(Err(bindings::Error::Other(message)))) => {
                tracing::warn!(tenant = %tenant.id, "tick failed: {message}");
                Err(InvokeError::Guest {
                    tenant: tenant.id.to_string(),
                    message,
                })
            }
            Ok(Ok(Ok(()))) => Ok(()),
        };
        let (outcome, error) = match &result {
            Ok(()) => (TickOutcome::Ok, None),
            Err(e) => (TickOutcome::Failed, Some(e.to_string())),
        };
        tenant.stats.tick_done(outcome, started.elapsed(), error);
        result
    }

    /// Hands one HTTP request to `tenant`'s `wasi:http/incoming-handler`.
    /// `req` carries the path the guest should see (prefix already stripped).
    pub async fn handle_http<B>(
        self: &Arc<Self>,
        tenant: Arc<Tenant>,
        req: hyper::Request<B>,
    ) -> Result<hyper::Response<HyperOutgoingBody>, InvokeError>
    where
        B: hyper::body::Body<Data = bytes::Bytes> + Send + 'static,
        B::Error: Into<wasmtime_wasi_http::Error>,
    {
        let permit = self.permit(&tenant)?;
        tenant.stats.request();
        let deadline = Duration::from_secs(self.limits.request_deadline_secs);
        let mut store = self.new_store(&tenant, deadline);
        let (tx, rx) = tokio::sync::oneshot::channel();
        let (req_res, out) = {
            use wasmtime_wasi_http::WasiHttpView as _;
            let mut view = store.data_mut().http();
            let req_res = view
                .new_incoming_request(Scheme::Http, req)
                .map_err(|e| InvokeError::Host(anyhow!("{e}")))?;
            let out = view
                .new_response_outparam(tx)
                .map_err(|e| InvokeError::Host(anyhow!("{e}")))?;
            (req_res, out)
        };
        let rt = self.clone();
        let t = tenant.clone();
        // The guest may keep streaming the body after it set the response, so
        // the call runs in its own task.
        let task = tokio::spawn(async move {
            let _permit = permit;
            let run = async {
                let bridge = t.pre.instantiate_async(&mut store).await?;
                bridge
                    .wasi_http_incoming_handler()
                    .call_handle(&mut store, req_res, out)
                    .await
            };
            match tokio::time::timeout(deadline, run).await {
                Err(_) => Err(rt.timed_out(&t, deadline)),
                Ok(Err(e)) => {
                    let hit = store.data().memory.hit;
                    Err(rt.classify(&t, hit, e))
                }
                Ok(Ok(())) => Ok(()),
            }
        });
        match rx.await {
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(code)) => Err(InvokeError::Guest {
                tenant: tenant.id.to_string(),
                message: format!("guest answered with an error: {code:?}"),
            }),
            Err(_) => match task.await {
                Ok(Err(e)) => Err(e),
                Ok(Ok(())) => Err(InvokeError::Guest {
                    tenant: tenant.id.to_string(),
                    message: "the guest returned without setting a response".into(),
                }),
                Err(e) => Err(InvokeError::Host(anyhow!("request task failed: {e}"))),
            },
        }
    }
}
