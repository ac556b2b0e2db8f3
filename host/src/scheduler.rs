//! Ticks: every tenant on its own interval (with jitter), a bounded number
//! across all tenants at once, never two of one tenant at once — and, with several
//! replicas on a shared store, only by the replica holding the tenant's lease, under
//! its fence ([`crate::replicas`]).

use std::sync::Arc;
use std::time::Duration;

use rand::Rng as _;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

use crate::replicas::Leases;
use crate::settings::SchedulerSettings;
use mssp_runtime::{Runtime, Tenant};

/// How often a tenant whose lease another replica holds looks again.
const UNLEASED_POLL: Duration = Duration::from_millis(500);

pub struct Scheduler {
    runtime: Arc<Runtime>,
    settings: SchedulerSettings,
    global: Arc<Semaphore>,
    /// This replica's leases; `None`: a single host ticks every tenant.
    leases: Option<Arc<Leases>>,
}

impl Scheduler {
    pub fn new(runtime: Arc<Runtime>, settings: SchedulerSettings) -> Arc<Self> {
        Self::with_leases(runtime, settings, None)
    }

    /// A scheduler that ticks a tenant only while `leases` holds its lease.
    pub fn with_leases(
        runtime: Arc<Runtime>,
        settings: SchedulerSettings,
        leases: Option<Arc<Leases>>,
    ) -> Arc<Self> {
        let global = Arc::new(Semaphore::new(settings.max_concurrent_ticks.max(1)));
        Arc::new(Self {
            runtime,
            settings,
            global,
            leases,
        })
    }

    fn jitter(&self) -> Duration {
        if self.settings.jitter_secs == 0 {
            return Duration::ZERO;
        }
        Duration::from_millis(rand::rng().random_range(0..self.settings.jitter_secs * 1000))
    }

    /// Starts the tick loop of every tenant the runtime knows.
    pub fn start_all(self: &Arc<Self>) -> Vec<JoinHandle<()>> {
        self.runtime
            .tenants()
            .into_iter()
            .map(|t| self.start(t))
            .collect()
    }

    /// Starts one tenant's tick loop; it ends when the tenant is removed or
    /// replaced in the runtime.
    pub fn start(self: &Arc<Self>, tenant: Arc<Tenant>) -> JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            let interval = tenant
                .interval
                .unwrap_or(Duration::from_secs(me.settings.interval_secs));
            // Spread the first ticks so that many tenants do not start at once.
            tokio::time::sleep(me.jitter()).await;
            loop {
                let current = me.runtime.tenant(&tenant.id);
                if !current.is_some_and(|c| Arc::ptr_eq(&c, &tenant)) {
                    tracing::info!(tenant = %tenant.id, "tenant removed or replaced by an edit; this tick loop stops");
                    return;
                }
                let fence = match &me.leases {
                    None => None,
                    Some(leases) => match leases.fence(&tenant.id) {
                        Some(fence) => Some(fence),
                        None => {
                            // Another replica's (or nobody's yet): look again soon.
                            tokio::time::sleep(UNLEASED_POLL.min(interval)).await;
                            continue;
                        }
                    },
                };
                match me.global.clone().acquire_owned().await {
                    Ok(_permit) => {
                        let ts = crate::unix_ms() / 1000;
                        if let Err(e) = me.runtime.tick_fenced(&tenant, ts, fence).await {
                            tracing::warn!(tenant = %tenant.id, "tick failed: {e}");
                        }
                    }
                    Err(_) => return,
                }
                tokio::time::sleep(interval + me.jitter()).await;
            }
        })
    }
}
