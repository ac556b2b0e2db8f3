//! Invocations: every tick and every HTTP request of one tenant runs in a fresh
//! store holding that tenant's sandbox (its key-value namespace, configuration,
//! outbound policy and limits), instantiated from the pre-instantiated component.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use wasmtime::component::{Linker, ResourceTable};
use wasmtime::{Engine, Store, UpdateDeadline};
use wasmtime_wasi::WasiCtx;
use wasmtime_wasi_http::WasiHttpCtx;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;

use crate::bindings::{self, BridgePre};
use crate::budget::{AccountRef, Accounts, BudgetSettings, TenantAccounts};
use crate::config::{ConfigMap, TenantConfig};
use crate::connections::ConnectionPool;
use crate::engine::{EpochTicker, engine, linker, load_component, prepare};
use crate::guest_log::GuestLog;
use crate::kv::{Fence, KvBackend, TenantKv};
use crate::limits::{LimitSettings, MemoryCap};
use crate::outbound::{Allowlist, OutboundPolicy};
use crate::report::ReportWrites;
use crate::secret::SecretString;
use crate::stats::{Metrics, StopKind, TenantStats, TickOutcome};
use crate::store::HostState;

/// What the runtime needs to know of one tenant.
pub struct TenantSpec {
    /// Tenant id: names its key-value namespace, its metrics and its logs.
    pub id: String,
    /// Its `wasi:config` values (plain settings and opened secrets).
    pub config: BTreeMap<String, SecretString>,
    /// The origins its outbound requests may reach.
    pub allowlist: Allowlist,
    /// Another component than the runtime's default, by path (compiled once).
    pub component: Option<PathBuf>,
    /// How often the embedder's scheduler ticks it (`None`: the embedder's default);
    /// the runtime itself never ticks on its own.
    pub interval: Option<Duration>,
    /// The shared upstream accounts its requests count against, at most one per
    /// service (`amp`, `xdr`, `snow`). A service named here uses that account (and its
    /// budget, or the runtime's default for the service); a service not named uses the
    /// account derived from the configuration ([`crate::budget::derived_name`]), so
    /// tenants with the same upstream credential share one budget. Empty: all derived.
    pub accounts: Vec<AccountRef>,
}

impl TenantSpec {
    /// A tenant running the default component whose outbound allowlist is the origins
    /// of its upstream URLs (no extra origins). Errors: an upstream URL that does not
    /// parse (the message names the key).
    pub fn new(id: &str, config: BTreeMap<String, SecretString>) -> Result<Self, String> {
        Ok(Self {
            id: id.to_string(),
            allowlist: Allowlist::from_config(&config, &[])?,
            config,
            component: None,
            interval: None,
            accounts: Vec::new(),
        })
    }
}

/// One tenant as the runtime sees it.
pub struct Tenant {
    pub id: Arc<str>,
    pub config: ConfigMap,
    pub allow: Arc<Allowlist>,
    pub stats: Arc<TenantStats>,
    /// Upstream connections kept alive between this tenant's requests.
    pub connections: Arc<ConnectionPool>,
    /// The shared upstream accounts its requests count against.
    pub accounts: Arc<TenantAccounts>,
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
        spec: TenantSpec,
        accounts: TenantAccounts,
        max_concurrent: usize,
        connect_timeout: Duration,
        metrics: Arc<Metrics>,
        pre: BridgePre<HostState>,
    ) -> Self {
        Self {
            pre,
            stats: Arc::new(TenantStats::new(&spec.id, metrics)),
            connections: Arc::new(ConnectionPool::new(connect_timeout)),
            accounts: Arc::new(accounts),
            id: spec.id.into(),
            interval: spec.interval,
            config: Arc::new(spec.config),
            allow: Arc::new(spec.allowlist),
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
    /// The shared upstream accounts of every tenant.
    accounts: Accounts,
    /// This run's own read credential, given to every tenant.
    host_read_token: SecretString,
    _epoch: EpochTicker,
}

/// The pieces a [`Runtime`] is built from.
pub struct RuntimeParts<'a> {
    pub component: &'a std::path::Path,
    pub cache_dir: &'a std::path::Path,
    pub kv: Arc<dyn KvBackend>,
    pub limits: LimitSettings,
    /// Instances that may exist at once (pool size).
    pub max_instances: u32,
    /// Budgets and cooldowns of the shared upstream accounts.
    pub budgets: BudgetSettings,
}

impl Runtime {
    /// Errors: the component does not load, the engine cannot be built, or the budget
    /// settings are refused ([`BudgetSettings::validate`]).
    pub fn new(parts: RuntimeParts<'_>) -> anyhow::Result<Self> {
        let metrics = Arc::new(Metrics::default());
        let accounts = Accounts::new(parts.budgets, metrics.clone()).map_err(|e| anyhow!(e))?;
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
            metrics,
            accounts,
            host_read_token: SecretString::new(random_token()),
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

    /// Every shared upstream account, by service and name.
    pub fn accounts(&self) -> Vec<Arc<crate::budget::Account>> {
        self.accounts.list()
    }

    /// This run's own read credential: random per [`Runtime`], never stored, given to
    /// every tenant as [`mssp_contract::HOST_READ_TOKEN`]. The component accepts it as
    /// a bearer on its read routes whatever the tenant's `read_token`, so the
    /// embedder's own reads (status pages, CLI) need no tenant secret. Never print it.
    pub fn host_read_token(&self) -> &SecretString {
        &self.host_read_token
    }

    /// The pre-instantiated component a tenant runs: the host's default, or
    /// the one its settings name (compiled once per path).
    fn component_for(&self, spec: &TenantSpec) -> anyhow::Result<BridgePre<HostState>> {
        let Some(path) = &spec.component else {
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

    /// Adds or replaces a tenant; its counters restart. Fails when the tenant names a
    /// component that cannot be loaded or an account [`Accounts::attach`] refuses.
    pub fn upsert_tenant(&self, spec: impl Into<TenantSpec>) -> anyhow::Result<Arc<Tenant>> {
        let mut spec = spec.into();
        let pre = self
            .component_for(&spec)
            .with_context(|| format!("tenant {}", spec.id))?;
        let accounts = self
            .accounts
            .attach(&spec.id, &spec.accounts, &spec.config)
            .map_err(|e| anyhow!("tenant {}: {e}", spec.id))?;
        spec.config.insert(
            mssp_contract::HOST_READ_TOKEN.to_string(),
            self.host_read_token.clone(),
        );
        let tenant = Arc::new(Tenant::new(
            spec,
            accounts,
            self.limits.max_concurrent_per_tenant,
            self.limits.outbound().connect_timeout,
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
            self.accounts.detach(id);
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

    fn new_store(
        &self,
        tenant: &Tenant,
        deadline: Duration,
        fence: Option<Fence>,
    ) -> Store<HostState> {
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
                accounts: tenant.accounts.clone(),
                used: HashMap::new(),
            },
            kv: TenantKv {
                backend: self.kv.clone(),
                tenant: tenant.id.clone(),
                buckets: Arc::from(vec![mssp_contract::report::BUCKET.to_string()]),
                reports: ReportWrites::default(),
                fence,
            },
            config: TenantConfig(tenant.config.clone()),
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
        let mut store = self.new_store(tenant, deadline, None);
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
    /// still running waits for it. A tick takes none of the tenant's request slots
    /// (`max_concurrent_per_tenant` bounds its HTTP requests; the tick lock bounds its
    /// ticks to one), so a flood of requests — valid or forged callbacks, reads —
    /// never keeps a tenant from ticking.
    pub async fn tick(&self, tenant: &Tenant, timestamp: u64) -> Result<(), InvokeError> {
        self.tick_fenced(tenant, timestamp, None).await
    }

    /// As [`Runtime::tick`], writing under `fence`, the tenant lease this replica holds:
    /// once the lease is lost, every further write of the tick is refused by the store
    /// ([`crate::kv::KvError::Fenced`], an error in the component) and the tick fails.
    pub async fn tick_fenced(
        &self,
        tenant: &Tenant,
        timestamp: u64,
        fence: Option<Fence>,
    ) -> Result<(), InvokeError> {
        let _tick = tenant.tick_lock.lock().await;
        let deadline = Duration::from_secs(self.limits.tick_deadline_secs);
        let started = Instant::now();
        let mut store = self.new_store(tenant, deadline, fence);
        let run = async {
            let bridge = tenant.pre.instantiate_async(&mut store).await?;
            bridge
                .call_handle_cron_event(&mut store, bindings::Metadata { timestamp })
                .await
        };
        let outcome = tokio::time::timeout(deadline, run).await;
        take_reports(tenant, &mut store);
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
        self: Arc<Self>,
        tenant: Arc<Tenant>,
        req: hyper::Request<B>,
    ) -> Result<hyper::Response<HyperOutgoingBody>, InvokeError>
    where
        B: hyper::body::Body<Data = bytes::Bytes> + Send + 'static,
        B::Error: Into<wasmtime_wasi_http::Error>,
    {
        let (wait_ms, limit) = (
            self.limits.queue_wait_ms,
            self.limits.max_concurrent_per_tenant,
        );
        let permit = slot(&tenant, wait_ms, limit).await?;
        tenant.stats.request();
        let deadline = Duration::from_secs(self.limits.request_deadline_secs);
        let mut store = self.new_store(&tenant, deadline, None);
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
            let outcome = tokio::time::timeout(deadline, run).await;
            take_reports(&t, &mut store);
            match outcome {
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

/// Hands what the component reported during the invocation (as data, from its
/// key-value writes) to the tenant's counters and log.
fn take_reports(tenant: &Tenant, store: &mut Store<HostState>) {
    let writes = std::mem::take(&mut store.data_mut().kv.reports);
    tenant.stats.guest_report(&writes.parse(&tenant.id));
}

/// 32 random bytes as hex.
fn random_token() -> String {
    use rand::RngCore as _;
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// One of the tenant's invocation slots (`limit` in all), waiting for one up to `wait_ms`
/// (a short burst queues instead of being refused); `Busy` after that.
async fn slot(
    tenant: &Tenant,
    wait_ms: u64,
    limit: usize,
) -> Result<OwnedSemaphorePermit, InvokeError> {
    let busy = || {
        tenant.stats.stop(StopKind::Busy);
        InvokeError::Busy {
            tenant: tenant.id.to_string(),
            limit,
        }
    };
    if let Ok(p) = tenant.inflight.clone().try_acquire_owned() {
        return Ok(p);
    }
    let wait = Duration::from_millis(wait_ms);
    match tokio::time::timeout(wait, tenant.inflight.clone().acquire_owned()).await {
        Ok(Ok(p)) => Ok(p),
        _ => Err(busy()),
    }
}
