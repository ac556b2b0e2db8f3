//! Soak: many tenants on the host's own scheduler, a steady stream of
//! detections, analysts closing tickets (signed callbacks), for minutes.
//! Reports resident memory over time, tick lag (the longest gap between two
//! ticks of one tenant), tick durations, errors, and checks that nothing was
//! lost or duplicated and that memory levels off.
//!
//! ```text
//! MSSP_SOAK_TENANTS=200 MSSP_SOAK_SECS=600 nice -n 10 \
//!   cargo test -p mssp-e2e --test reliability_soak -- --ignored --nocapture
//! ```
//! (defaults: 200 tenants, 600 s). The figures of the last run are in RELIABILITY.md.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use mssp_bridge::scheduler::Scheduler;
use mssp_bridge::settings::{LimitSettings, SchedulerSettings};
use mssp_bridge::stats::{CallOutcome, TickOutcome};
use mssp_e2e::{Customer, CustomerSpec, World};

/// Resident memory of this process (host, guests and simulators), in KiB.
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// A small seeded generator (xorshift64*), so that runs repeat.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn groups_of(events: &[mssp_sim::Event]) -> BTreeSet<String> {
    events
        .iter()
        .filter(|e| mssp_sim::HIGH_PRIORITY_EVENT_TYPES.contains(&e.event_type_id))
        .map(|e| match &e.detection_id {
            Some(d) => format!("-d{d}"),
            None => format!("-e{}", e.id),
        })
        .collect()
}

/// `amp-<customer tag>-d<detection id>` → `-d<detection id>`.
fn group_of(key: &str) -> String {
    key.splitn(3, '-')
        .nth(2)
        .map(|rest| format!("-{rest}"))
        .unwrap_or_default()
}

fn ticks(w: &World, c: &Customer) -> u64 {
    let t = w.host.runtime.tenant(&c.id).unwrap();
    t.stats.ticks(TickOutcome::Ok) + t.stats.ticks(TickOutcome::Failed)
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "soak: minutes long; run by hand (see RELIABILITY.md)"]
async fn two_hundred_tenants_for_ten_minutes_keep_up_and_level_off() {
    let tenants = env_or("MSSP_SOAK_TENANTS", 200) as usize;
    let secs = env_or("MSSP_SOAK_SECS", 600);
    let interval = env_or("MSSP_SOAK_INTERVAL_SECS", 10);
    let w = World::start_limited(
        mssp_sim::SimConfig {
            isolation_delay: Duration::from_millis(500),
            ..mssp_sim::SimConfig::default()
        },
        LimitSettings::default(),
    )
    .await
    .unwrap();
    let rss_empty = rss_kib();
    let customers: Vec<Customer> = (0..tenants)
        .map(|i| {
            let containment = ["isolate", "move", "none"][i % 3];
            w.customer(
                &format!("t{i:03}"),
                CustomerSpec::default().with("containment", containment),
            )
        })
        .collect();
    let scheduler = Scheduler::new(
        w.host.runtime.clone(),
        SchedulerSettings {
            interval_secs: interval,
            jitter_secs: 2,
            max_concurrent_ticks: 16,
        },
    );
    let loops = scheduler.start_all();
    let rss_start = rss_kib();
    println!(
        "soak: {tenants} tenants, {secs} s, interval {interval} s; RSS {} MiB empty, {} MiB with tenants",
        rss_empty / 1024,
        rss_start / 1024
    );

    let mut rng = Rng(0x50a6);
    let mut groups: BTreeMap<usize, BTreeSet<String>> = BTreeMap::new();
    let mut last_tick_count: Vec<u64> = vec![0; tenants];
    let mut last_change: Vec<Instant> = vec![Instant::now(); tenants];
    let mut max_gap = Duration::ZERO;
    let mut rss_samples = Vec::new();
    let mut published = 0usize;
    let mut closed = 0usize;
    let started = Instant::now();
    let mut seed = 1u64;
    while started.elapsed() < Duration::from_secs(secs) {
        // A steady stream: a few customers get detections every second.
        for _ in 0..2 {
            let i = rng.below(tenants);
            seed += 1;
            let events = w.publish(&customers[i], seed, 3);
            published += events.len();
            groups.entry(i).or_default().extend(groups_of(&events));
        }
        // Now and then an analyst resolves a ticket (signed callback).
        if rng.below(10) < 3 {
            let i = rng.below(tenants);
            if let Some(s) = w
                .snow_incidents_of(&customers[i])
                .into_iter()
                .find(|s| !["6", "7", "8"].contains(&s.state()))
            {
                let _ = w
                    .sim
                    .snow()
                    .analyst_close(s.sys_id(), 6, "Solved (Permanently)", "soak")
                    .await;
                closed += 1;
            }
        }
        // Tick lag: the longest time one tenant went without a finished tick.
        let now = Instant::now();
        for (i, c) in customers.iter().enumerate() {
            let n = ticks(&w, c);
            if n != last_tick_count[i] {
                last_tick_count[i] = n;
                max_gap = max_gap.max(now - last_change[i]);
                last_change[i] = now;
            }
        }
        let elapsed = started.elapsed().as_secs();
        if rss_samples.last().is_none_or(|(t, _)| elapsed >= t + 60) {
            let rss = rss_kib();
            println!(
                "soak: t={elapsed:>4} s RSS {} MiB, max tick gap so far {max_gap:?}",
                rss / 1024
            );
            rss_samples.push((elapsed, rss));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    // Drain: no new events; a few more intervals for the last detections.
    let stream_end = Instant::now();
    tokio::time::sleep(Duration::from_secs(interval * 3 + 5)).await;
    for l in &loops {
        l.abort();
    }
    let rss_end = rss_kib();
    for changed in &last_change {
        // A tenant still waiting counts with its current gap.
        max_gap = max_gap.max(stream_end.saturating_duration_since(*changed));
    }

    let mut lost = 0;
    let mut duplicates = 0;
    let mut incidents = 0;
    for (i, want) in &groups {
        let c = &customers[*i];
        incidents += want.len();
        let xdr: Vec<String> = w
            .xdr_incidents_of(c)
            .iter()
            .map(|x| group_of(x["external_ids"][0].as_str().unwrap_or("")))
            .collect();
        let snow: Vec<String> = w
            .snow_incidents_of(c)
            .iter()
            .map(|s| group_of(s.field("correlation_id")))
            .collect();
        for got in [&xdr, &snow] {
            let set: BTreeSet<&String> = got.iter().collect();
            duplicates += got.len() - set.len();
            lost += want.iter().filter(|g| !set.contains(g)).count();
        }
    }
    let mut tick_ok = 0;
    let mut tick_failed = 0;
    let mut upstream_bad = 0;
    let mut upstream_ok = 0;
    for c in &customers {
        let t = w.host.runtime.tenant(&c.id).unwrap();
        tick_ok += t.stats.ticks(TickOutcome::Ok);
        tick_failed += t.stats.ticks(TickOutcome::Failed);
        for svc in ["amp", "xdr", "snow"] {
            upstream_ok += t.stats.upstream_count(svc, CallOutcome::Ok);
            for o in [
                CallOutcome::RateLimited,
                CallOutcome::ClientError,
                CallOutcome::ServerError,
                CallOutcome::Failed,
            ] {
                upstream_bad += t.stats.upstream_count(svc, o);
            }
        }
    }
    // Average tick duration from the host's own histogram.
    let metrics = w.host.runtime.metrics().render();
    let sum_of = |suffix: &str| -> f64 {
        metrics
            .lines()
            .filter(|l| l.starts_with(&format!("mssp_tick_duration_seconds_{suffix}")))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let (tick_sum, tick_count) = (sum_of("sum"), sum_of("count"));
    let rss_warm = rss_samples
        .iter()
        .find(|(t, _)| *t >= 60)
        .map_or(rss_start, |(_, r)| *r);
    println!(
        "soak: {published} events published, {incidents} detection groups, {closed} tickets closed by analysts"
    );
    println!(
        "soak: ticks ok {tick_ok}, failed {tick_failed}; mean tick {:.3} s over {tick_count} ticks; max gap between two ticks of one tenant {max_gap:?} (interval {interval} s + jitter ≤ 2 s)",
        if tick_count > 0.0 {
            tick_sum / tick_count
        } else {
            0.0
        }
    );
    println!(
        "soak: upstream calls ok {upstream_ok}, not ok {upstream_bad}; lost {lost}, duplicates {duplicates}"
    );
    println!(
        "soak: RSS start {} MiB, after 1 min {} MiB, end {} MiB; samples (s, MiB): {:?}",
        rss_start / 1024,
        rss_warm / 1024,
        rss_end / 1024,
        rss_samples
            .iter()
            .map(|(t, r)| (*t, r / 1024))
            .collect::<Vec<_>>()
    );
    assert_eq!(lost, 0, "nothing lost");
    assert_eq!(duplicates, 0, "nothing duplicated");
    assert_eq!(tick_failed, 0, "no tick failed");
    assert!(
        rss_end < rss_warm + rss_warm / 2,
        "memory levels off: {} MiB after 1 min, {} MiB at the end",
        rss_warm / 1024,
        rss_end / 1024
    );
}
