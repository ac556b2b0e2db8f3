//! Issue 18: three replicas of the runtime on one Redis, in one process (one machine's
//! two cores; the figures show the cost of coordination, not scaling).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mssp_bridge::replicas::{Leases, ReplicaSettings};
use mssp_e2e::{Customer, CustomerSpec, TestHost, World};
use mssp_runtime::kv::KvBackend;
use mssp_runtime::{LimitSettings, Runtime, Tenant};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::{Table, WIDTH, cpu, expected_groups, now_secs, sim_config};

/// One replica: its runtime and its leases.
struct Replica {
    runtime: Arc<Runtime>,
    leases: Arc<Leases>,
}

impl Replica {
    fn held(&self) -> Vec<Arc<Tenant>> {
        self.leases
            .held()
            .iter()
            .filter_map(|id| self.runtime.tenant(id))
            .collect()
    }
}

/// Ticks the tenants this replica holds, `WIDTH` at once, each under its fence.
async fn sweep_held(r: &Replica) -> usize {
    let gate = Arc::new(Semaphore::new(WIDTH));
    let mut set = JoinSet::new();
    for t in r.held() {
        let permit = gate.clone().acquire_owned().await.expect("semaphore open");
        let rt = r.runtime.clone();
        let fence = r.leases.fence(&t.id);
        set.spawn(async move {
            let _permit = permit;
            rt.tick_fenced(&t, now_secs(), fence).await.is_ok()
        });
    }
    let mut failed = 0;
    while let Some(done) = set.join_next().await {
        if !matches!(done, Ok(true)) {
            failed += 1;
        }
    }
    failed
}

/// The three sweep their own tenants at once; answers the wall time and the failures.
async fn sweep_all(r: &[Replica; 3]) -> (Duration, usize) {
    let started = Instant::now();
    let (a, b, c) = tokio::join!(sweep_held(&r[0]), sweep_held(&r[1]), sweep_held(&r[2]));
    (started.elapsed(), a + b + c)
}

/// Lease rounds until every replica holds its own share: the first round of the first
/// replica sees only itself; the next ones hand over what another now ranks first.
fn settle(replicas: &[Replica; 3], ids: &[String]) {
    for _ in 0..3 {
        for r in replicas {
            r.leases.round(ids, &|_: &str| false).expect("lease round");
        }
    }
}

/// The idle sweep and the throughput on three replicas, and the hand-over time after
/// one replica dies.
pub async fn replicas(table: &mut Table) {
    let w = World::start_on_redis_with(sim_config())
        .await
        .expect("world");
    let kv: Arc<dyn KvBackend> = w.host.kv.clone();
    let mut hosts = vec![];
    for _ in 0..2 {
        hosts.push(
            TestHost::start_on(
                "mssp_guest",
                LimitSettings::default(),
                kv.clone(),
                tempfile::tempdir().expect("temp dir"),
            )
            .await
            .expect("replica"),
        );
    }
    let register = |id: &str, spec: CustomerSpec| -> Customer {
        let (c, config) = w.customer_accounts(id, spec);
        let pairs: Vec<(&str, &str)> = config
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        w.host.tenant(id, &pairs);
        for h in &hosts {
            h.tenant(id, &pairs);
        }
        c
    };
    let idle: Vec<Customer> = (0..1000)
        .map(|i| {
            register(
                &format!("sw{i:04}"),
                CustomerSpec {
                    computers: 1,
                    ..CustomerSpec::default()
                }
                .without_callback(),
            )
        })
        .collect();
    let settings = ReplicaSettings {
        lease_ttl_secs: 15.0,
    };
    let replica = |runtime: &Arc<Runtime>| Replica {
        runtime: runtime.clone(),
        leases: Leases::for_store(kv.clone(), &settings).expect("Redis has leases"),
    };
    let replicas = [
        replica(&w.host.runtime),
        replica(&hosts[0].runtime),
        replica(&hosts[1].runtime),
    ];
    let ids: Vec<String> = idle.iter().map(|c| c.id.clone()).collect();
    settle(&replicas, &ids);
    let shares: Vec<usize> = replicas.iter().map(|r| r.leases.held().len()).collect();

    let (first, failed_first) = sweep_all(&replicas).await;
    let (w0, c0) = (Instant::now(), cpu());
    let (wall, failed) = sweep_all(&replicas).await;
    let (_, cpu_used) = (w0.elapsed(), cpu() - c0);
    table.add(
        "18a",
        format!("sweep of 1,000 idle tenants on 3 replicas (shares {shares:?}; first sweep {:.2} s, {failed_first} failed; {failed} failed), Redis: wall", first.as_secs_f64()),
        format!("{:.2} s", wall.as_secs_f64()),
        "",
        "≤ 1 s",
        Some(wall.as_secs_f64() <= 1.0),
    );
    table.add(
        "18a",
        "same sweep: CPU (3 replicas + guests + simulators, one process)",
        format!("{:.2} s", cpu_used.as_secs_f64()),
        "",
        "",
        None,
    );

    // Throughput: 100 tenants × 20 events, each replica ticking what it holds.
    let busy: Vec<Customer> = (0..100)
        .map(|i| {
            register(
                &format!("tp{i:03}"),
                CustomerSpec::default().without_callback(),
            )
        })
        .collect();
    let all_ids: Vec<String> = ids
        .iter()
        .chain(busy.iter().map(|c| &c.id))
        .cloned()
        .collect();
    settle(&replicas, &all_ids);
    let mut expected = Vec::new();
    for (i, c) in busy.iter().enumerate() {
        let events = w.publish(c, 1000 + i as u64, 20);
        expected.push(expected_groups(&events).len());
    }
    let total: usize = expected.iter().sum();
    let (w0, c0) = (Instant::now(), cpu());
    for _ in 0..20 {
        sweep_all(&replicas).await;
        let done = busy
            .iter()
            .zip(&expected)
            .all(|(c, n)| w.xdr_incidents_of(c).len() >= *n && w.snow_incidents_of(c).len() >= *n);
        if done {
            break;
        }
    }
    let (wall, cpu_used) = (w0.elapsed(), cpu() - c0);
    let duplicates: usize = busy
        .iter()
        .zip(&expected)
        .map(|(c, n)| {
            w.xdr_incidents_of(c).len().saturating_sub(*n)
                + w.snow_incidents_of(c).len().saturating_sub(*n)
        })
        .sum();
    table.add(
        "18b",
        format!("incident throughput on 3 replicas, 100 tenants × 20 events = {total} incidents ({duplicates} duplicates), Redis"),
        format!("{:.0} incidents/s", total as f64 / wall.as_secs_f64()),
        "",
        "",
        None,
    );
    table.add(
        "18b",
        "CPU per incident (3 replicas + guests + simulators)",
        format!("{:.2} ms", cpu_used.as_secs_f64() * 1000.0 / total as f64),
        "",
        "",
        None,
    );

    // Hand-over: the third replica stops (no release, as after SIGKILL); the others
    // run their rounds every third of the 15 s lease until they hold its tenants.
    let dead: Vec<String> = replicas[2].leases.held();
    let started = Instant::now();
    let mut taken: BTreeMap<&str, Duration> = BTreeMap::new();
    while taken.len() < dead.len() && started.elapsed() < Duration::from_secs(90) {
        tokio::time::sleep(settings.ttl() / 3).await;
        for r in &replicas[..2] {
            r.leases
                .round(&all_ids, &|_: &str| false)
                .expect("lease round");
            for t in r.leases.held() {
                if let Some(id) = dead.iter().find(|d| **d == t) {
                    taken
                        .entry(id.as_str())
                        .or_insert_with(|| started.elapsed());
                }
            }
        }
    }
    let slowest = taken.values().max().copied().unwrap_or_default();
    table.add(
        "18c",
        format!(
            "lease hand-over after a replica dies without releasing (lease 15 s, rounds every 5 s): all {} of its tenants held by the others ({} taken)",
            dead.len(),
            taken.len()
        ),
        format!("{:.1} s", slowest.as_secs_f64()),
        "",
        "",
        None,
    );
}
