//! Per-customer sandbox under attack: 100 healthy customers run alone, then
//! again beside hostile and failing tenants. The healthy customers' results
//! must be identical and their ticks must stay on schedule.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use mssp_bridge::scheduler::Scheduler;
use mssp_bridge::settings::{LimitSettings, SchedulerSettings};
use mssp_e2e::{Customer, CustomerSpec, World, get};
use mssp_runtime::stats::{StopKind, TickOutcome};
use mssp_sim::{Fault, FaultKind, Service, SimConfig};

const HEALTHY: usize = 100;
const INTERVAL_SECS: u64 = 2;

/// What a healthy customer ends up with, independent of timing.
#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    incidents: Vec<(String, String)>,
    xdr: usize,
    snow: usize,
    kv_keys: Vec<String>,
}

fn limits() -> LimitSettings {
    LimitSettings {
        tick_deadline_secs: 5,
        memory_mib: 32,
        ..LimitSettings::default()
    }
}

async fn outcome(w: &World, c: &Customer) -> Outcome {
    let r = get(&w.host.url(&format!("/tenants/{}/v1/incidents", c.id)))
        .await
        .unwrap();
    let mut incidents: Vec<(String, String)> = r.json()["incidents"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|i| {
            (
                i["key"].as_str().unwrap_or_default().to_string(),
                i["state"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    incidents.sort();
    let kv_keys = w
        .host
        .kv
        .tenant_keys(&c.id)
        .unwrap()
        .into_iter()
        // The worker lease is transient (a tick stopped with the scheduler
        // may leave it until it expires); ServiceNow sys_ids are random per
        // simulator run. The rest is stable.
        .filter(|(_, key)| key != "lease")
        .map(|(bucket, key)| match key.strip_prefix("snow/") {
            Some(_) => format!("{bucket}/snow/<sys_id>"),
            None => format!("{bucket}/{key}"),
        })
        .collect();
    Outcome {
        incidents,
        xdr: w.xdr_incidents_of(c).len(),
        snow: w.snow_incidents_of(c).len(),
        kv_keys,
    }
}

fn ticks_ok(w: &World, ids: &[String]) -> Vec<u64> {
    ids.iter()
        .map(|id| {
            w.host
                .runtime
                .tenant(id)
                .map_or(0, |t| t.stats.ticks(TickOutcome::Ok))
        })
        .collect()
}

/// Waits until every tenant in `ids` has at least `n` good ticks.
async fn wait_for_ticks(w: &World, ids: &[String], n: u64, limit: Duration) {
    let start = Instant::now();
    while ticks_ok(w, ids).iter().any(|t| *t < n) {
        assert!(
            start.elapsed() < limit,
            "healthy tenants fell behind: {:?}",
            ticks_ok(w, ids)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Adds the hostile and failing tenants; returns (id, expected stop).
fn add_hostile(w: &World) -> Vec<(String, Option<StopKind>)> {
    let mut hostile = Vec::new();
    let own = w.host.url("");
    let targets = format!(
        "{},{own}/tenants/c000/v1/incidents,http://localhost:{}/,http://169.254.169.254/latest/meta-data/,https://example.com/",
        w.sim.amp_url(),
        w.host.addr.port()
    );
    for (mode, stop) in [
        ("loop", Some(StopKind::Timeout)),
        ("alloc", Some(StopKind::Memory)),
        ("trap", Some(StopKind::Trap)),
        ("flood", Some(StopKind::LogDropped)),
        ("keys", None),
        ("egress", Some(StopKind::DeniedRequest)),
    ] {
        let id = format!("hostile-{mode}");
        w.host.tenant_running(
            &id,
            &[("probe_mode", mode), ("probe_targets", targets.as_str())],
            Some("mssp_probe"),
        );
        hostile.push((id, stop));
    }
    // A real customer whose Secure Endpoint answers in 10 s per request.
    let slow = w.customer("slowpoke", CustomerSpec::default());
    w.sim.faults().add(
        Fault::always(Service::Amp, "/v1/*", FaultKind::Latency { ms: 10_000 })
            .for_tenant(&slow.amp_client_id),
    );
    hostile.push(("slowpoke".into(), None));
    hostile
}

async fn run(with_hostile: bool) -> BTreeMap<String, Outcome> {
    let w = World::start_limited(
        SimConfig {
            isolation_delay: Duration::from_millis(100),
            ..SimConfig::default()
        },
        limits(),
    )
    .await
    .unwrap();
    let customers: Vec<Customer> = (0..HEALTHY)
        .map(|i| {
            let c = w.customer(
                &format!("c{i:03}"),
                CustomerSpec {
                    computers: 2,
                    ..CustomerSpec::default()
                },
            );
            w.publish(&c, 1000 + i as u64, 6);
            c
        })
        .collect();
    let ids: Vec<String> = customers.iter().map(|c| c.id.clone()).collect();
    let hostile = if with_hostile {
        add_hostile(&w)
    } else {
        Vec::new()
    };

    let scheduler = Scheduler::new(
        w.host.runtime.clone(),
        SchedulerSettings {
            interval_secs: INTERVAL_SECS,
            jitter_secs: 0,
            max_concurrent_ticks: 8,
        },
    );
    let handles = scheduler.start_all();
    // First round: every healthy customer opens its incidents.
    wait_for_ticks(&w, &ids, 1, Duration::from_secs(120)).await;
    // On schedule: over the next window every healthy customer ticks at the
    // interval, delayed by at most one interval.
    let before = ticks_ok(&w, &ids);
    let window = Duration::from_secs(4 * INTERVAL_SECS);
    tokio::time::sleep(window).await;
    let after = ticks_ok(&w, &ids);
    for ((id, b), a) in ids.iter().zip(&before).zip(&after) {
        assert!(
            a - b >= 2,
            "{id} ticked {} times in {window:?} (interval {INTERVAL_SECS} s){}",
            a - b,
            if with_hostile {
                " beside hostile tenants"
            } else {
                ""
            }
        );
    }
    for h in handles {
        h.abort();
    }

    for (id, stop) in &hostile {
        let t = w.host.runtime.tenant(id).unwrap();
        if let Some(kind) = stop {
            assert!(
                t.stats.stops(*kind) >= 1,
                "{id} was not stopped by {kind:?}"
            );
        }
    }
    if with_hostile {
        // The key tricks stayed inside the hostile tenant's own rows.
        let planted: Vec<String> = w
            .host
            .kv
            .tenant_keys("hostile-keys")
            .unwrap()
            .into_iter()
            .map(|(b, _)| b)
            .collect();
        assert!(planted.iter().all(|b| b == "default"), "{planted:?}");
        assert_eq!(get(&w.host.url("/healthz")).await.unwrap().status, 200);
    }

    let mut out = BTreeMap::new();
    for c in &customers {
        out.insert(c.id.clone(), outcome(&w, c).await);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthy_customers_get_identical_results_and_stay_on_schedule_beside_hostile_tenants() {
    let alone = run(false).await;
    assert!(
        alone.values().any(|o| !o.incidents.is_empty()),
        "the healthy customers had detections to handle"
    );
    let together = run(true).await;
    for (id, a) in &alone {
        assert_eq!(
            Some(a),
            together.get(id),
            "{id} differs beside hostile tenants"
        );
        assert_eq!(a.xdr, a.incidents.len(), "{id}: one XDR incident each");
        assert_eq!(
            a.snow,
            a.incidents.len(),
            "{id}: one ServiceNow incident each"
        );
    }
}
