//! Soak of the real `mssp-bridge serve`: many customers on its own scheduler,
//! a steady stream of detections, analysts closing tickets (signed callbacks
//! for two customers in three, the reconcile poll for the rest), for minutes.
//!
//! The bridge runs as its own process; the simulators run in this one and
//! keep every event and record they ever saw, so the resident memory sampled
//! is the bridge's alone (`/proc/<pid>/status`). Reports resident memory over
//! time, tick lag (the longest time one customer went without a finished
//! tick, from `/metrics`), tick durations, failures, upstream errors, and
//! checks that nothing was lost or duplicated and that memory levels off.
//!
//! ```text
//! MSSP_SOAK_TENANTS=200 MSSP_SOAK_SECS=600 \
//!   cargo test --release -p mssp-bridge --test soak -- --ignored --nocapture
//! ```
//! (defaults: 200 tenants, 600 s, ticks every 10 s). The figures of the last
//! run are in RELIABILITY.md.

mod common;
use common::serve::{
    Bridge, Customer, Spec, expected, group_of, kill, setup_customers, wait_healthy,
};

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use mssp_sim::{Sim, SimConfig};
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Resident and peak resident memory of a process, in KiB.
fn memory_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// The bridge's `/metrics`, as text (empty when the scrape fails).
async fn scrape(bridge: &Bridge) -> String {
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let Ok(uri) = bridge.url("/metrics").parse::<http::Uri>() else {
        return String::new();
    };
    let Ok(Ok(resp)) = tokio::time::timeout(Duration::from_secs(5), client.get(uri)).await else {
        return String::new();
    };
    match resp.into_body().collect().await {
        Ok(body) => String::from_utf8_lossy(&body.to_bytes()).into_owned(),
        Err(_) => String::new(),
    }
}

/// The value of every sample of `family` whose labels contain `needle`,
/// summed per tenant.
fn per_tenant(metrics: &str, family: &str, needle: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for line in metrics.lines() {
        let Some(rest) = line.strip_prefix(family) else {
            continue;
        };
        let Some(labels) = rest.strip_prefix('{') else {
            continue;
        };
        if !labels.contains(needle) {
            continue;
        }
        let tenant = labels
            .split("tenant=\"")
            .nth(1)
            .and_then(|t| t.split('"').next())
            .unwrap_or_default();
        let value: f64 = line
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        *out.entry(tenant.to_string()).or_default() += value;
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "soak: minutes long; run by hand (see RELIABILITY.md)"]
async fn two_hundred_customers_for_ten_minutes_keep_up_and_level_off() {
    let tenants = env_or("MSSP_SOAK_TENANTS", 200) as usize;
    let secs = env_or("MSSP_SOAK_SECS", 600);
    let interval = env_or("MSSP_SOAK_INTERVAL_SECS", 10);
    let sim = Sim::start(SimConfig {
        isolation_delay: Duration::from_millis(500),
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let bridge = Bridge::with_scheduler(
        "info",
        &format!("interval_secs = {interval}\njitter_secs = 2\nmax_concurrent_ticks = 16\n"),
    );
    let specs: Vec<Spec> = (0..tenants)
        .map(|i| Spec {
            id: format!("t{i:03}"),
            containment: ["isolate", "move", "none"][i % 3],
            callback: i % 3 != 1,
            wrong: &[],
        })
        .collect();
    let customers: Vec<Customer> = setup_customers(&sim, &bridge, &specs);

    let mut child = bridge.serve();
    wait_healthy(&bridge, &mut child).await;
    let pid = child.id();
    let (rss_idle, _) = memory_kib(pid);
    let (sims_start, _) = memory_kib(std::process::id());
    println!(
        "soak: {tenants} tenants, {secs} s, interval {interval} s; bridge RSS {} MiB after start",
        rss_idle / 1024
    );

    let mut rng = StdRng::seed_from_u64(0x50a6);
    let mut published: BTreeMap<usize, Vec<mssp_sim::Event>> = BTreeMap::new();
    let mut last_ticks: BTreeMap<String, f64> = BTreeMap::new();
    let mut last_change: BTreeMap<String, Instant> = customers
        .iter()
        .map(|c| (c.id.clone(), Instant::now()))
        .collect();
    let mut max_gap = Duration::ZERO;
    let mut samples: Vec<(u64, u64)> = Vec::new();
    let mut closed = 0usize;
    let mut seed = 1u64;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(secs) {
        // A steady stream: a few customers get detections every second.
        for _ in 0..2 {
            let i = rng.random_range(0..tenants);
            seed += 1;
            let c = &customers[i];
            let events = sim.amp().generate_events(&c.amp_client, seed, 3).unwrap();
            sim.amp()
                .push_events(&c.amp_client, events.clone())
                .unwrap();
            published.entry(i).or_default().extend(events);
        }
        // Now and then an analyst resolves a ticket.
        if rng.random_bool(0.3) {
            let c = &customers[rng.random_range(0..tenants)];
            if let Some(s) = sim
                .inspect()
                .snow_incidents()
                .into_iter()
                .find(|s| s.owner == c.snow_user && !["6", "7", "8"].contains(&s.state()))
            {
                let _ = sim
                    .snow()
                    .analyst_close(s.sys_id(), 6, "Solved (Permanently)", "soak")
                    .await
                    .unwrap();
                closed += 1;
            }
        }
        // Tick lag: the longest time one tenant went without a finished tick.
        let now = Instant::now();
        for (tenant, n) in per_tenant(&scrape(&bridge).await, "mssp_ticks_total", "tenant=") {
            if last_ticks.get(&tenant) != Some(&n) {
                if let Some(prev) = last_change.insert(tenant.clone(), now) {
                    max_gap = max_gap.max(now - prev);
                }
                last_ticks.insert(tenant, n);
            }
        }
        let elapsed = started.elapsed().as_secs();
        if samples.last().is_none_or(|(t, _)| elapsed >= t + 30) {
            let (rss, _) = memory_kib(pid);
            let db = std::fs::metadata(bridge.db()).map_or(0, |m| m.len())
                + std::fs::metadata(bridge.db().with_extension("db-wal")).map_or(0, |m| m.len());
            println!(
                "soak: t={elapsed:>4} s bridge RSS {:.1} MiB, database {:.1} MiB, max tick gap so far {max_gap:?}",
                rss as f64 / 1024.0,
                db as f64 / 1048576.0
            );
            samples.push((elapsed, rss));
        }
        tokio::time::sleep(Duration::from_secs(1).saturating_sub(now.elapsed())).await;
    }
    // Drain: no new events; a few more intervals for the last detections.
    let stream_end = Instant::now();
    tokio::time::sleep(Duration::from_secs(interval * 3 + 5)).await;
    let metrics = scrape(&bridge).await;
    let (rss_end, rss_peak) = memory_kib(pid);
    let (sims_end, _) = memory_kib(std::process::id());
    kill(&mut child);
    for changed in last_change.values() {
        // A tenant still waiting counts with its current gap.
        max_gap = max_gap.max(stream_end.saturating_duration_since(*changed));
    }

    let xdr = sim.inspect().xdr_incidents();
    let snow = sim.inspect().snow_incidents();
    let (mut lost, mut duplicates, mut incidents, mut events) = (0, 0, 0, 0);
    for (i, evs) in &published {
        let c = &customers[*i];
        events += evs.len();
        let (want, _) = expected(evs);
        incidents += want.len();
        let title = format!("[{} Corp]", c.id.to_uppercase());
        let xdr_groups: Vec<String> = xdr
            .iter()
            .filter(|x| x["title"].as_str().is_some_and(|t| t.contains(&title)))
            .map(|x| group_of(x["external_ids"][0].as_str().unwrap_or("")))
            .collect();
        let snow_groups: Vec<String> = snow
            .iter()
            .filter(|s| s.owner == c.snow_user)
            .map(|s| group_of(s.field("correlation_id")))
            .collect();
        for got in [&xdr_groups, &snow_groups] {
            let set: BTreeSet<&String> = got.iter().collect();
            duplicates += got.len() - set.len();
            lost += want.iter().filter(|g| !set.contains(g)).count();
        }
    }
    let sum = |family: &str, needle: &str| -> f64 {
        per_tenant(&metrics, family, needle)
            .values()
            .fold(0.0, |a, b| a + b)
    };
    let tick_ok = sum("mssp_ticks_total", "outcome=\"Ok\"");
    let tick_failed = sum("mssp_ticks_total", "outcome=\"Failed\"");
    let (tick_sum, tick_count) = (
        sum("mssp_tick_duration_seconds_sum", "tenant="),
        sum("mssp_tick_duration_seconds_count", "tenant="),
    );
    let upstream_ok = sum("mssp_upstream_requests_total", "outcome=\"Ok\"");
    let upstream_all = sum("mssp_upstream_requests_total", "tenant=");
    let stops = sum("mssp_sandbox_stops_total", "tenant=");
    let closed_by_bridge = sum("mssp_incidents_closed_total", "tenant=");
    let warm = samples
        .iter()
        .find(|(t, _)| *t >= 120)
        .map_or(rss_idle, |(_, r)| *r);
    println!(
        "soak: {events} events published, {incidents} detection groups, {closed} tickets closed by analysts, {closed_by_bridge} incidents closed by the bridge"
    );
    println!(
        "soak: ticks ok {tick_ok}, failed {tick_failed}, sandbox stops {stops}; mean tick {:.3} s over {tick_count} ticks; longest gap between two finished ticks of one tenant {max_gap:?} (interval {interval} s + jitter ≤ 2 s)",
        if tick_count > 0.0 {
            tick_sum / tick_count
        } else {
            0.0
        }
    );
    println!(
        "soak: upstream calls ok {upstream_ok}, not ok {}; lost {lost}, duplicates {duplicates}",
        upstream_all - upstream_ok
    );
    println!(
        "soak: bridge RSS after start {:.1} MiB, after 2 min {:.1} MiB, end {:.1} MiB, peak {:.1} MiB; samples (s, MiB): {:?}",
        rss_idle as f64 / 1024.0,
        warm as f64 / 1024.0,
        rss_end as f64 / 1024.0,
        rss_peak as f64 / 1024.0,
        samples
            .iter()
            .map(|(t, r)| (*t, r / 1024))
            .collect::<Vec<_>>()
    );
    println!(
        "soak: this test process (the simulators, which keep everything) RSS {:.1} MiB at the start, {:.1} MiB at the end",
        sims_start as f64 / 1024.0,
        sims_end as f64 / 1024.0
    );
    assert!(incidents > 0, "the run produced incidents");
    assert_eq!(lost, 0, "nothing lost");
    assert_eq!(duplicates, 0, "nothing duplicated");
    assert_eq!(tick_failed, 0.0, "no tick failed");
    assert_eq!(stops, 0.0, "no sandbox stop");
    assert!(
        rss_end < warm + warm / 4,
        "memory levels off: {} MiB after 2 min, {} MiB at the end",
        warm / 1024,
        rss_end / 1024
    );
    sim.shutdown().await;
}
