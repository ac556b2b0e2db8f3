//! Ticks: every tenant on its own interval (with jitter), a bounded number
//! across all tenants at once, never two of one tenant at once.

use std::sync::Arc;
use std::time::Duration;

use rand::Rng as _;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

use crate::settings::SchedulerSettings;
use mssp_runtime::{Runtime, Tenant};

pub struct Scheduler {
    runtime: Arc<Runtime>,
    settings: SchedulerSettings,
    global: Arc<Semaphore>,
}

impl Scheduler {
    pub fn new(runtime: Arc<Runtime>, settings: SchedulerSettings) -> Arc<Self> {
        let global = Arc::new(Semaphore::new(settings.max_concurrent_ticks.max(1)));
        Arc::new(Self {
            runtime,
            settings,
            global,
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
                    tracing::info!(tenant = %tenant.id, "tenant removed; its ticks stop");
                    return;
                }
                match me.global.clone().acquire_owned().await {
                    Ok(_permit) => {
                        let ts = crate::unix_ms() / 1000;
                        if let Err(e) = me.runtime.tick(&tenant, ts).await {
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
