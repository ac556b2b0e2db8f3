//! Several host replicas on one shared store (Redis): each tenant is ticked by
//! exactly one replica at a time, under a lease.
//!
//! Every round (a third of the lease's time to live) a replica
//! 1. announces itself alive for one time to live and reads who else is
//!    ([`LeaseBackend::heartbeat`], by the store's clock);
//! 2. gives each tenant to one live replica by rendezvous hashing (highest
//!    sha-256 of tenant and replica: Thaler & Ravishankar, "Using name-based
//!    mappings to increase hit rates", 1998) — an even spread that moves only
//!    the tenants of a replica that joins or leaves;
//! 3. renews the leases it holds and should keep; hands back those another live
//!    replica should now hold (only between two of the tenant's ticks);
//! 4. takes the free leases of the tenants that are its own.
//!
//! A replica that dies stops renewing: its leases expire after one time to live and
//! the replicas that now rank first take them at their next round, so a dead
//! replica's tenants tick again within about `lease_ttl × 4/3 + interval`. A replica
//! that is only slow (paused, cut off) may still believe it holds a lease: every
//! write of its tick carries the lease's fencing token ([`Fence`]) and the store
//! refuses it once the lease is another's. Callbacks are served by whichever replica
//! receives them, without a lease: the component serialises them with its own
//! compare-and-swap lease in the shared store.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde::Deserialize;
use sha2::{Digest, Sha256};

use mssp_runtime::Runtime;
use mssp_runtime::kv::{Fence, KvBackend, KvError, LeaseBackend};

/// `[replicas]` in the settings file (used when `[store]` is shared: Redis).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ReplicaSettings {
    /// Seconds a tenant lease (and a replica's liveness) lasts unless renewed; rounds
    /// run every third of it. Longer: fewer store round trips; shorter: a dead
    /// replica's tenants resume sooner.
    pub lease_ttl_secs: f64,
}

impl Default for ReplicaSettings {
    fn default() -> Self {
        Self {
            lease_ttl_secs: 15.0,
        }
    }
}

impl ReplicaSettings {
    /// Errors: a time to live outside 1 s ..= 1 h (longer: a dead replica's tenants
    /// would wait that long, and its heartbeat would outlive it).
    pub fn validate(&self) -> Result<(), String> {
        if !(self.lease_ttl_secs.is_finite() && (1.0..=3600.0).contains(&self.lease_ttl_secs)) {
            return Err(format!(
                "replicas.lease_ttl_secs = {}: must be between 1 and 3600 seconds",
                self.lease_ttl_secs
            ));
        }
        Ok(())
    }

    /// The lease's time to live.
    pub fn ttl(&self) -> Duration {
        Duration::from_secs_f64(self.lease_ttl_secs)
    }
}

/// A lease this replica holds and when the store last confirmed it.
struct Held {
    fence: Fence,
    confirmed: Instant,
}

/// What one round changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Round {
    /// Live replicas, this one included.
    pub live: usize,
    /// Tenants whose lease this replica took.
    pub acquired: Vec<String>,
    /// Tenants whose lease this replica handed back to the replica that now ranks first.
    pub released: Vec<String>,
    /// Tenants whose lease was found lost (expired or taken) at renewal.
    pub lost: Vec<String>,
}

/// This replica's tenant leases.
pub struct Leases {
    kv: Arc<dyn KvBackend>,
    /// This replica's name: host name, process id and a random suffix (unique per run).
    replica: String,
    ttl: Duration,
    held: Mutex<BTreeMap<String, Held>>,
}

/// `tenant`'s rank for `replica` (higher wins).
fn rank(tenant: &str, replica: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(tenant.as_bytes());
    h.update([0]);
    h.update(replica.as_bytes());
    h.finalize().into()
}

/// The live replica that should hold `tenant` (rendezvous hashing).
pub fn owner<'a>(tenant: &str, live: &'a [String]) -> Option<&'a str> {
    live.iter()
        .max_by_key(|r| rank(tenant, r))
        .map(String::as_str)
}

impl Leases {
    /// Leases for this replica, when `kv` is shared by replicas (`None` otherwise: a
    /// single host ticks every tenant).
    pub fn for_store(kv: Arc<dyn KvBackend>, settings: &ReplicaSettings) -> Option<Arc<Self>> {
        kv.leases()?;
        let host = std::env::var("HOSTNAME")
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "host".into());
        let suffix: u32 = rand::random();
        Some(Arc::new(Self {
            kv,
            replica: format!("{host}-{}-{suffix:08x}", std::process::id()),
            ttl: settings.ttl(),
            held: Mutex::new(BTreeMap::new()),
        }))
    }

    fn backend(&self) -> Result<&dyn LeaseBackend, KvError> {
        self.kv
            .leases()
            .ok_or_else(|| KvError::Invalid("the store has no leases".into()))
    }

    /// This replica's name.
    pub fn replica(&self) -> &str {
        &self.replica
    }

    /// The fence to tick `tenant` under, if this replica holds its lease and the store
    /// confirmed it less than half a time to live ago (a margin for clock drift and a
    /// slow round; the store's check is what guarantees it).
    pub fn fence(&self, tenant: &str) -> Option<Fence> {
        let held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        held.get(tenant)
            .filter(|h| h.confirmed.elapsed() < self.ttl / 2)
            .map(|h| h.fence.clone())
    }

    /// The tenants whose lease this replica holds, sorted.
    pub fn held(&self) -> Vec<String> {
        let held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        held.keys().cloned().collect()
    }

    /// One round over `tenants` (every tenant the registry knows). `busy(t)`: a tick of
    /// `t` is running here, so its lease is not handed back this round.
    pub fn round(&self, tenants: &[String], busy: &dyn Fn(&str) -> bool) -> Result<Round, KvError> {
        let backend = self.backend()?;
        let live = backend.heartbeat(&self.replica, self.ttl)?;
        let mut round = Round {
            live: live.len(),
            ..Round::default()
        };
        let mine = |t: &str| owner(t, &live) == Some(self.replica.as_str());
        let held: Vec<(String, Fence)> = {
            let held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
            held.iter()
                .map(|(t, h)| (t.clone(), h.fence.clone()))
                .collect()
        };
        for (tenant, fence) in held {
            let known = tenants.contains(&tenant);
            if (!known || !mine(&tenant)) && !busy(&tenant) {
                backend.release(&tenant, &fence)?;
                self.forget(&tenant);
                round.released.push(tenant);
            } else if backend.renew(&tenant, &fence, self.ttl)? {
                self.confirm(&tenant, fence);
            } else {
                self.forget(&tenant);
                round.lost.push(tenant);
            }
        }
        for tenant in tenants.iter().filter(|t| mine(t)) {
            if self.fence(tenant).is_some() {
                continue;
            }
            if let Some(fence) = backend.acquire(tenant, &self.replica, self.ttl)? {
                self.confirm(tenant, fence);
                round.acquired.push(tenant.clone());
            }
        }
        Ok(round)
    }

    fn confirm(&self, tenant: &str, fence: Fence) {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        held.insert(
            tenant.to_string(),
            Held {
                fence,
                confirmed: Instant::now(),
            },
        );
    }

    fn forget(&self, tenant: &str) {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        held.remove(tenant);
    }

    /// Runs rounds every third of the time to live until the process ends; logs each
    /// change of what this replica holds and counts it on `/metrics`.
    pub async fn run(self: Arc<Self>, runtime: Arc<Runtime>) {
        let every = self.ttl / 3;
        loop {
            let tenants: Vec<String> = runtime.tenants().iter().map(|t| t.id.to_string()).collect();
            let busy = |t: &str| {
                runtime
                    .tenant(t)
                    .is_some_and(|t| t.tick_lock.try_lock().is_err())
            };
            let me = self.clone();
            // The store's client blocks for its round trips: off the async workers.
            let outcome = tokio::task::block_in_place(|| me.round(&tenants, &busy));
            match outcome {
                Ok(round) => {
                    let leases = runtime.metrics();
                    leases.leases(
                        self.held().len(),
                        round.acquired.len(),
                        round.released.len(),
                        round.lost.len(),
                    );
                    if !(round.acquired.is_empty()
                        && round.released.is_empty()
                        && round.lost.is_empty())
                    {
                        tracing::info!(
                            replica = %self.replica,
                            live_replicas = round.live,
                            acquired = ?round.acquired,
                            released = ?round.released,
                            lost = ?round.lost,
                            holding = ?self.held(),
                            "tenant leases changed"
                        );
                    }
                }
                Err(e) => tracing::warn!(replica = %self.replica, "lease round failed: {e}"),
            }
            tokio::time::sleep(every).await;
        }
    }

    /// Hands every lease back and leaves the live replicas (a clean shutdown), so the
    /// others take over at their next round instead of after a time to live.
    pub fn leave(&self) {
        let Ok(backend) = self.backend() else {
            return;
        };
        let held: Vec<(String, Fence)> = {
            let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
            std::mem::take(&mut *held)
                .into_iter()
                .map(|(t, h)| (t, h.fence))
                .collect()
        };
        for (tenant, fence) in held {
            if let Err(e) = backend.release(&tenant, &fence) {
                tracing::warn!(tenant = %tenant, "lease not handed back: {e}");
            }
        }
        if let Err(e) = backend.leave(&self.replica) {
            tracing::warn!(replica = %self.replica, "leaving the live replicas failed: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::owner;

    #[test]
    fn rendezvous_spreads_evenly_and_moves_only_the_leavers_tenants() {
        let three: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        let tenants: Vec<String> = (0..600).map(|i| format!("customer-{i}")).collect();
        let mut count = std::collections::BTreeMap::new();
        for t in &tenants {
            *count.entry(owner(t, &three).unwrap_or("")).or_insert(0) += 1;
        }
        assert!(count.values().all(|n| (150..=250).contains(n)), "{count:?}");
        let two: Vec<String> = ["a", "c"].map(String::from).to_vec();
        for t in &tenants {
            let before = owner(t, &three);
            if before != Some("b") {
                assert_eq!(
                    owner(t, &two),
                    before,
                    "{t} moved though its replica stayed"
                );
            }
        }
        assert_eq!(owner("x", &[]), None);
    }
}
