//! Issue 18: several replicas of the real `mssp-bridge serve` on one real Redis.
//!
//! Three replicas (one settings file each, differing only in the listen port) share
//! a Redis started on a loopback port with its append-only file synced on every
//! write, and 60 customers whose detections keep arriving while analysts close
//! tickets (ServiceNow calls back to whichever replica the customer's callback names,
//! spread over all three). During the run: one replica is killed with SIGKILL at a
//! random moment, later a second one, Redis itself is killed and restarted on its
//! append-only file, then both replicas are started again. After each replica kill,
//! every customer it held must tick again (a tick report newer than the kill, written
//! by another replica) within `lease TTL × 4/3 + interval` plus a margin for a loaded
//! machine; the measured worst case is printed. At the end, with every ticket closed:
//! the crash suite's checks — per customer exactly one XDR and one ServiceNow incident
//! per detection group (0 duplicates, 0 losses), every high-priority event in exactly
//! one incident, every host back home.
//!
//! `cargo test -p mssp-bridge --test replicas -- --nocapture` prints the figures.

mod common;
use common::redis_server::RedisServer;
use common::serve::{
    Bridge, Customer, Spec, expected, http_get_status, records, setup_customers, tally,
};

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use mssp_contract::report::TickReport;
use mssp_runtime::kv::{KvBackend, LeaseBackend, Namespace, RedisKv, RedisOptions};
use mssp_sim::{CallbackSpec, IsolationStatus, Sim, SimConfig};
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};

const CUSTOMERS: usize = 60;
const REPLICAS: usize = 3;
const LEASE_TTL_SECS: f64 = 3.0;
const INTERVAL_SECS: u64 = 1;

/// One replica: its settings file, port and running process.
struct Replica {
    config: PathBuf,
    port: u16,
    log: PathBuf,
    child: Option<Child>,
}

impl Replica {
    fn start(&mut self, bridge: &Bridge) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = bridge
            .command()
            .env("MSSP_CONFIG", &self.config)
            .arg("serve")
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    async fn wait_healthy(&mut self) {
        let start = Instant::now();
        let url = format!("http://127.0.0.1:{}/healthz", self.port);
        while http_get_status(&url).await != Some(200) {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().unwrap()) {
                let log = std::fs::read_to_string(&self.log).unwrap_or_default();
                panic!("replica exited with {status}:\n{log}");
            }
            assert!(
                start.elapsed() < Duration::from_secs(120),
                "replica did not come up"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGKILL: no lease handed back, no flush.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.kill();
    }
}

/// When the customer's last tick started (ms since the epoch), from its report.
fn last_tick_ms(kv: &dyn KvBackend, tenant: &str) -> Option<i64> {
    let ns = Namespace::new(tenant, mssp_contract::report::BUCKET);
    let (bytes, _) = kv.get(&ns, mssp_contract::report::LAST_TICK_KEY).ok()??;
    let report: TickReport = serde_json::from_slice(&bytes).ok()?;
    let (secs, nanos) = mssp_contract::civil::parse_nanos(&report.started_at)?;
    Some(secs * 1000 + i64::from(nanos / 1_000_000))
}

fn now_ms() -> i64 {
    i64::try_from(mssp_bridge::unix_ms()).unwrap_or(i64::MAX)
}

/// Waits until every customer in `orphans` has ticked after `killed_at_ms`; returns
/// the slowest delay.
async fn ticked_again(
    kv: &dyn KvBackend,
    orphans: &[String],
    killed_at_ms: i64,
    limit: Duration,
) -> Duration {
    let start = Instant::now();
    let mut slowest = Duration::ZERO;
    let mut waiting: BTreeSet<&String> = orphans.iter().collect();
    while !waiting.is_empty() {
        waiting.retain(|t| match last_tick_ms(kv, t) {
            Some(at) if at > killed_at_ms => {
                slowest = slowest.max(Duration::from_millis((at - killed_at_ms) as u64));
                false
            }
            _ => true,
        });
        assert!(
            start.elapsed() < limit,
            "customers not ticked again within {limit:?} after the kill: {waiting:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    slowest
}

/// The customers whose lease `replica` (by name in the store) holds.
fn held_by(kv: &RedisKv, customers: &[Customer], replica_of: &dyn Fn(&str) -> bool) -> Vec<String> {
    customers
        .iter()
        .filter(|c| {
            kv.holder(&c.id)
                .ok()
                .flatten()
                .is_some_and(|f| replica_of(&f.holder))
        })
        .map(|c| c.id.clone())
        .collect()
}

/// Detections arriving and analysts closing tickets.
struct Traffic<'a> {
    sim: &'a Sim,
    customers: &'a [Customer],
    published: &'a mut BTreeMap<String, Vec<mssp_sim::Event>>,
    round: u64,
}

impl Traffic<'_> {
    /// New events for a few random customers.
    fn publish(&mut self, rng: &mut StdRng) {
        self.round += 1;
        for _ in 0..rng.random_range(3..8) {
            let c = &self.customers[rng.random_range(0..self.customers.len())];
            let seed = (self.round << 16) ^ rng.random::<u64>();
            let events = self
                .sim
                .amp()
                .generate_events(&c.amp_client, seed, rng.random_range(1..4))
                .unwrap();
            self.sim
                .amp()
                .push_events(&c.amp_client, events.clone())
                .unwrap();
            self.published
                .entry(c.id.clone())
                .or_default()
                .extend(events);
        }
    }

    /// For `secs`: events every half second, and analysts closing some open tickets.
    async fn run(&mut self, secs: u64, rng: &mut StdRng) {
        let until = Instant::now() + Duration::from_secs(secs);
        while Instant::now() < until {
            self.publish(rng);
            for s in self.sim.inspect().snow_incidents() {
                if !["6", "7", "8"].contains(&s.state()) && rng.random_bool(0.15) {
                    let _ = self
                        .sim
                        .snow()
                        .analyst_close(s.sys_id(), 6, "Solved (Permanently)", "fixed")
                        .await;
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

/// How many customers each replica holds (by the process id in its replica name).
fn shares(replicas: &[Replica], kv: &RedisKv, customers: &[Customer]) -> Vec<usize> {
    replicas
        .iter()
        .map(|r| {
            let tag = format!("-{}-", replica_pid(r).unwrap_or(0));
            held_by(kv, customers, &|h: &str| h.contains(&tag)).len()
        })
        .collect()
}

/// The replica name (`host-pid-suffix`) of a running child.
fn replica_pid(r: &Replica) -> Option<u32> {
    r.child.as_ref().map(Child::id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_survive_two_sigkills_and_a_redis_restart_with_nothing_lost_or_doubled() {
    let seed: u64 = std::env::var("MSSP_REPLICA_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x18);
    let mut rng = StdRng::seed_from_u64(seed);
    let mut redis = RedisServer::start_durable();
    let sim = Sim::start(SimConfig {
        isolation_delay: Duration::from_millis(300),
        callback_timeout: Duration::from_secs(2),
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let store = format!(
        "[store]\nkind = \"redis\"\nurl = \"{}\"\n[replicas]\nlease_ttl_secs = {LEASE_TTL_SECS}\n[scheduler]\ninterval_secs = {INTERVAL_SECS}\njitter_secs = 0\n",
        redis.url()
    );
    let bridge = Bridge::with_settings("info", &common::component(), &store);
    let specs: Vec<Spec> = (0..CUSTOMERS)
        .map(|i| Spec {
            id: format!("cust{i:02}"),
            containment: ["isolate", "move", "none"][i % 3],
            callback: i % 4 != 0,
            wrong: &[],
        })
        .collect();
    let mut customers = setup_customers(&sim, &bridge, &specs);

    // One settings file per replica: the same store and registry, its own port.
    let base = std::fs::read_to_string(bridge.dir.path().join("mssp-bridge.toml")).unwrap();
    let mut replicas: Vec<Replica> = (0..REPLICAS)
        .map(|i| {
            let port = common::serve::free_port();
            let config = bridge.dir.path().join(format!("replica-{i}.toml"));
            std::fs::write(
                &config,
                base.replace(
                    &format!("127.0.0.1:{}", bridge.port),
                    &format!("127.0.0.1:{port}"),
                ),
            )
            .unwrap();
            Replica {
                config,
                port,
                log: bridge.dir.path().join(format!("replica-{i}.log")),
                child: None,
            }
        })
        .collect();
    // ServiceNow calls back to the replicas in turn: callbacks reach replicas that do
    // not hold the customer.
    for (i, (c, spec)) in customers.iter().zip(&specs).enumerate() {
        if spec.callback {
            let key = &c
                .upstream
                .iter()
                .find(|(k, _)| *k == "callback_key")
                .unwrap()
                .1;
            let url =
                replicas[i % REPLICAS].url(&format!("/tenants/{}/v1/servicenow/events", c.id));
            sim.snow()
                .set_callback(&c.snow_user, CallbackSpec::new(url, key));
        }
    }
    for r in &mut replicas {
        r.start(&bridge);
    }
    for r in &mut replicas {
        r.wait_healthy().await;
    }
    let kv = RedisKv::connect(&RedisOptions::url(redis.url())).unwrap();
    // A customer added while the replicas run: they pick it up from the registry in
    // Redis without a restart.
    let late = Spec {
        id: "late01".into(),
        containment: "isolate",
        callback: true,
        wrong: &[],
    };
    let late = setup_customers(&sim, &bridge, &[late]);
    for c in &late {
        let key = &c
            .upstream
            .iter()
            .find(|(k, _)| *k == "callback_key")
            .unwrap()
            .1;
        let url = replicas[1].url(&format!("/tenants/{}/v1/servicenow/events", c.id));
        sim.snow()
            .set_callback(&c.snow_user, CallbackSpec::new(url, key));
    }
    customers.extend(late);
    let customers = customers;

    let mut published: BTreeMap<String, Vec<mssp_sim::Event>> = BTreeMap::new();
    // Let every replica settle on its share, with events arriving.
    let limit = Duration::from_secs_f64(LEASE_TTL_SECS * 2.0 + INTERVAL_SECS as f64 + 10.0);
    let mut world = Traffic {
        sim: &sim,
        customers: &customers,
        published: &mut published,
        round: 0,
    };
    world.run(4, &mut rng).await;
    // Every customer held by one replica, the late one included (picked up from the
    // registry within a few seconds).
    let waited = Instant::now();
    let mut share = shares(&replicas, &kv, &customers);
    while share.iter().sum::<usize>() < customers.len()
        && waited.elapsed() < Duration::from_secs(20)
    {
        world.run(1, &mut rng).await;
        share = shares(&replicas, &kv, &customers);
    }
    eprintln!(
        "replicas: shares of {} customers at the start: {share:?}",
        customers.len()
    );
    assert_eq!(
        share.iter().sum::<usize>(),
        customers.len(),
        "every customer held once"
    );
    assert!(
        share.iter().all(|n| *n > 0),
        "every replica holds a share: {share:?}"
    );

    // Kill one replica at a random moment, then a second one.
    let mut takeovers = Vec::new();
    for (victim, wait_ms) in [
        (rng.random_range(0..REPLICAS), rng.random_range(0..2000)),
        (usize::MAX, rng.random_range(0..2000)),
    ] {
        let victim = if victim == usize::MAX {
            (0..REPLICAS)
                .find(|i| replicas[*i].child.is_some())
                .unwrap()
        } else {
            victim
        };
        tokio::time::sleep(Duration::from_millis(wait_ms)).await;
        let tag = format!("-{}-", replica_pid(&replicas[victim]).unwrap_or(0));
        let orphans = held_by(&kv, &customers, &|h: &str| h.contains(&tag));
        let killed_at = now_ms();
        replicas[victim].kill();
        world.publish(&mut rng);
        let slowest = ticked_again(&kv, &orphans, killed_at, limit).await;
        eprintln!(
            "replicas: replica {victim} killed holding {} customers; all ticked again by another replica within {slowest:?}",
            orphans.len()
        );
        takeovers.push((orphans.len(), slowest));
        world.run(2, &mut rng).await;
    }

    // Redis dies (SIGKILL) and comes back on its append-only file.
    let before: BTreeMap<String, usize> = customers
        .iter()
        .map(|c| (c.id.clone(), records(&kv, &c.id).len()))
        .collect();
    redis.crash_and_restart();
    let after: BTreeMap<String, usize> = customers
        .iter()
        .map(|c| (c.id.clone(), records(&kv, &c.id).len()))
        .collect();
    for (id, n) in &before {
        assert!(
            after[id] >= *n,
            "{id}: {n} incident records before the Redis restart, {} after",
            after[id]
        );
    }
    eprintln!(
        "replicas: Redis killed and restarted; {} incident records before, {} after",
        before.values().sum::<usize>(),
        after.values().sum::<usize>()
    );

    // The two dead replicas come back and take their shares again.
    for r in replicas.iter_mut().filter(|r| r.child.is_none()) {
        r.start(&bridge);
    }
    for r in &mut replicas {
        r.wait_healthy().await;
    }
    world.run(3, &mut rng).await;

    // Drain: no more events; every incident reaches ServiceNow, every ticket is
    // closed, every incident closes.
    let groups: BTreeMap<&str, usize> = customers
        .iter()
        .map(|c| {
            (
                c.id.as_str(),
                published.get(&c.id).map_or(0, |e| expected(e).0.len()),
            )
        })
        .collect();
    let all_in = |state_ok: &dyn Fn(&str) -> bool| {
        customers.iter().all(|c| {
            let rs = records(&kv, &c.id);
            rs.len() == groups[c.id.as_str()]
                && rs.iter().all(|r| r["state"].as_str().is_some_and(state_ok))
        })
    };
    let drain_limit = Duration::from_secs(180);
    let start = Instant::now();
    while !all_in(&|s| matches!(s, "open" | "closing" | "closed")) {
        assert!(
            start.elapsed() < drain_limit,
            "not every incident open within {drain_limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    for s in sim.inspect().snow_incidents() {
        if !["6", "7", "8"].contains(&s.state()) {
            let _ = sim
                .snow()
                .analyst_close(s.sys_id(), 6, "Solved (Permanently)", "end of run")
                .await;
        }
    }
    let start = Instant::now();
    while !all_in(&|s| s == "closed") {
        assert!(
            start.elapsed() < drain_limit,
            "not every incident closed within {drain_limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    tokio::time::sleep(Duration::from_millis(600)).await;
    let shares = shares(&replicas, &kv, &customers);
    for r in &mut replicas {
        r.kill();
    }

    // The crash suite's checks.
    let (mut duplicates, mut losses, mut incidents) = (0, 0, 0);
    for c in &customers {
        let events = published.get(&c.id).cloned().unwrap_or_default();
        let t = tally(&sim, &kv, c, &events);
        (incidents, duplicates, losses) = (
            incidents + t.incidents,
            duplicates + t.duplicates,
            losses + t.losses,
        );
        for comp in sim.amp().computers(&c.amp_client).unwrap() {
            assert_eq!(comp.group_guid, c.home_group, "{}: {comp:?}", c.id);
            assert_eq!(comp.isolation, IsolationStatus::NotIsolated, "{comp:?}");
        }
    }
    eprintln!(
        "replicas: {} customers, {incidents} incidents, takeovers (customers, slowest re-tick) {takeovers:?}, shares after the restarts {shares:?}, duplicates {duplicates}, losses {losses}",
        customers.len()
    );
    assert_eq!(duplicates, 0, "no duplicate incident upstream");
    assert_eq!(losses, 0, "no lost incident upstream");
    assert!(incidents > 0);
    assert_eq!(
        shares.iter().sum::<usize>(),
        customers.len(),
        "every customer held once at the end: {shares:?}"
    );
    assert!(
        shares.iter().all(|n| *n > 0),
        "the restarted replicas took shares back: {shares:?}"
    );
    sim.shutdown().await;
}
