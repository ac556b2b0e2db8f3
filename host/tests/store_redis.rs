//! `mssp-bridge serve` with `[store] kind = "redis"`, against the in-process
//! simulators and a real `redis-server`: every tenant's key-value data and the
//! tenant registry are in Redis (nothing in an SQLite file), and a host killed and
//! started again on the same Redis resumes without a duplicate.

mod common;
// The end-to-end suites' harness, the same file (this crate cannot depend on theirs).
#[allow(dead_code)]
use std::time::{Duration, Instant};

use common::redis_server::RedisServer;
use common::serve::{Bridge, kill, records, setup_customers, standard_customers, wait_healthy};
use mssp_runtime::kv::{KvBackend as _, RedisKv, RedisOptions, SqliteKv};
use mssp_sim::{Sim, SimConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_on_redis_keeps_the_records_there_and_a_restarted_host_duplicates_nothing() {
    let sim = Sim::start(SimConfig {
        isolation_delay: Duration::from_millis(200),
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let redis = RedisServer::start();
    let bridge = Bridge::on_store(
        "warn",
        &format!("[store]\nkind = \"redis\"\nurl = \"{}\"\n", redis.url()),
    );
    let customers = setup_customers(&sim, &bridge, &standard_customers()[..1]);
    let acme = &customers[0];
    let events = sim.amp().generate_events(&acme.amp_client, 11, 12).unwrap();
    sim.amp().push_events(&acme.amp_client, events).unwrap();

    let kv = RedisKv::connect(&RedisOptions::url(redis.url())).unwrap();
    let mut child = bridge.serve();
    wait_healthy(&bridge, &mut child).await;
    let start = Instant::now();
    let opened = loop {
        let rs = records(&kv, &acme.id);
        if !rs.is_empty() && rs.iter().all(|r| r["state"] == "open") {
            break rs.len();
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no open incidents in Redis after 30 s: {rs:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let xdr = sim.inspect().xdr_incidents().len();
    let snow = sim.inspect().snow_incidents().len();
    assert_eq!(xdr, opened, "one XDR incident per record");
    assert_eq!(snow, opened, "one ServiceNow incident per record");
    let sqlite = SqliteKv::open(&bridge.db()).unwrap();
    assert_eq!(
        sqlite.tenant_keys(&acme.id).unwrap(),
        Vec::<(String, String)>::new(),
        "nothing of the tenant in the SQLite file"
    );
    assert!(
        kv.registry()
            .is_some_and(|r| r.load().is_ok_and(|image| image.is_some())),
        "the registry is kept in Redis"
    );

    // An operator's edit is stored in the registry in Redis: the next command, another
    // process, reads it back.
    let set = bridge
        .command()
        .args(["tenant", "set", &acme.id, "snow_tag=[SOC-7]"])
        .output()
        .unwrap();
    assert!(
        set.status.success(),
        "{}",
        String::from_utf8_lossy(&set.stderr)
    );
    let shown = bridge
        .command()
        .args(["tenant", "show", &acme.id])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&shown.stdout).contains("[SOC-7]"),
        "{}",
        String::from_utf8_lossy(&shown.stdout)
    );

    // A host killed mid-run and started again finds everything in Redis.
    kill(&mut child);
    let mut child = bridge.serve();
    wait_healthy(&bridge, &mut child).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    kill(&mut child);
    assert_eq!(records(&kv, &acme.id).len(), opened);
    assert_eq!(sim.inspect().xdr_incidents().len(), xdr, "no XDR duplicate");
    assert_eq!(
        sim.inspect().snow_incidents().len(),
        snow,
        "no ServiceNow duplicate"
    );
}
