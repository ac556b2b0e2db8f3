//! Benchmarks of issue 7 (and the memory/overhead figures of issue 5): the real
//! host running the real bridge component against the in-process simulators.
//!
//! `cargo xtask build && cargo bench -p mssp-e2e --bench bridge [-- <filter>]`
//!
//! Every section prints its rows as it finishes; the whole markdown table is
//! printed at the end (copy it into BENCHMARKS.md). A filter keeps the sections
//! whose name contains it: rss, instantiate, idle, limits, inflight, calls, latewindow,
//! wasm, throughput, sweep, flood, enumeration, kv, throughput-redis, sweep-redis,
//! edit-check, replicas
//! (the `-redis` ones: the same with the key-value store on a real `redis-server`).
//! CPU times are process-wide (`getrusage(RUSAGE_SELF)`)
//! and so include the simulators serving the guest's requests; RSS is the whole
//! process (simulators included unless the row says otherwise).

mod accounts;
mod logic;
mod replicas;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mssp_e2e::{Customer, CustomerSpec, TestHost, World, get, workspace_root};
use mssp_runtime::LimitSettings;
use mssp_runtime::SecretString;
use mssp_runtime::kv::{KvBackend, Namespace};
use mssp_runtime::outbound::Allowlist;
use mssp_runtime::stats::ConnectionUse;
use mssp_runtime::{Runtime, Tenant, TenantSpec};
use mssp_sim::{Fault, FaultKind, Service, SimConfig};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

/// Ticks running at once in sweeps: the scheduler's default `max_concurrent_ticks`.
const WIDTH: usize = 32;

// ---------------------------------------------------------------------------
// Measuring

#[repr(C)]
#[derive(Default)]
struct Timeval {
    sec: i64,
    usec: i64,
}

#[repr(C)]
#[derive(Default)]
struct Rusage {
    utime: Timeval,
    stime: Timeval,
    rest: [i64; 14],
}

unsafe extern "C" {
    fn getrusage(who: i32, usage: *mut Rusage) -> i32;
}

/// CPU time (user + system) of the whole process so far.
fn cpu() -> Duration {
    let mut r = Rusage::default();
    // SAFETY: `Rusage` has the layout of Linux's `struct rusage` on 64-bit
    // targets; RUSAGE_SELF = 0.
    let rc = unsafe { getrusage(0, &mut r) };
    if rc != 0 {
        return Duration::ZERO;
    }
    let us = |t: &Timeval| t.sec as u64 * 1_000_000 + t.usec as u64;
    Duration::from_micros(us(&r.utime) + us(&r.stime))
}

/// CPU time of the calling thread so far (RUSAGE_THREAD = 1).
fn thread_cpu() -> Duration {
    let mut r = Rusage::default();
    // SAFETY: as in `cpu`.
    let rc = unsafe { getrusage(1, &mut r) };
    if rc != 0 {
        return Duration::ZERO;
    }
    let us = |t: &Timeval| t.sec as u64 * 1_000_000 + t.usec as u64;
    Duration::from_micros(us(&r.utime) + us(&r.stime))
}

/// A `/proc/self/status` field in KiB (VmRSS, VmHWM).
fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            let rest = l.strip_prefix(field)?.strip_prefix(':')?;
            rest.trim().trim_end_matches("kB").trim().parse().ok()
        })
        .unwrap_or(0)
}

fn rss_mib() -> f64 {
    status_kib("VmRSS") as f64 / 1024.0
}

/// Resets the peak RSS (VmHWM) to the current RSS.
fn reset_peak() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn peak_mib() -> f64 {
    status_kib("VmHWM") as f64 / 1024.0
}

/// Median and 99th percentile.
fn quantiles(mut v: Vec<f64>) -> (f64, f64) {
    if v.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    (at(0.5), at(0.99))
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// One line of the table.
struct Row {
    id: &'static str,
    figure: String,
    median: String,
    p99: String,
    goal: String,
    result: String,
}

#[derive(Default)]
struct Table {
    rows: Vec<Row>,
}

impl Table {
    #[allow(clippy::too_many_arguments)]
    fn add(
        &mut self,
        id: &'static str,
        figure: impl Into<String>,
        median: impl Into<String>,
        p99: impl Into<String>,
        goal: impl Into<String>,
        met: Option<bool>,
    ) {
        let row = Row {
            id,
            figure: figure.into(),
            median: median.into(),
            p99: p99.into(),
            goal: goal.into(),
            result: match met {
                Some(true) => "meets".into(),
                Some(false) => "**misses**".into(),
                None => "—".into(),
            },
        };
        println!(
            "  [{}] {}: median {} p99 {} (goal {}) {}",
            row.id, row.figure, row.median, row.p99, row.goal, row.result
        );
        self.rows.push(row);
    }

    fn markdown_rows(&self) -> Vec<String> {
        self.rows
            .iter()
            .map(|r| {
                format!(
                    "| {} | {} | {} | {} | {} | {} |",
                    r.id, r.figure, r.median, r.p99, r.goal, r.result
                )
            })
            .collect()
    }
}

/// Two rows of the wasm-vs-native section: the component's time (median,
/// p99, µs) for the work, and its ratio to the native run's (goal ≤ 1.3×).
fn work_and_ratio(
    table: &mut Table,
    work: String,
    ratio: String,
    (m, p): (f64, f64),
    (nm, np): (f64, f64),
    same_output: bool,
) {
    let same = if same_output {
        "same output"
    } else {
        "OUTPUT DIFFERS"
    };
    table.add(
        "5w",
        format!("{work}; {same}"),
        fmt_us(m),
        fmt_us(p),
        "",
        None,
    );
    table.add(
        "5w",
        ratio,
        format!("{:.2}×", m / nm),
        format!("{:.2}×", p / np),
        "≤ 1.3×",
        Some(m / nm <= 1.3),
    );
}

fn fmt_us(v: f64) -> String {
    if v >= 10_000.0 {
        format!("{:.1} ms", v / 1000.0)
    } else if v >= 1000.0 {
        format!("{:.2} ms", v / 1000.0)
    } else {
        format!("{v:.0} µs")
    }
}

// ---------------------------------------------------------------------------
// Set-up helpers

/// Config of a bridge tenant whose upstreams are never called (memory figures).
fn idle_config(i: usize) -> Vec<(String, String)> {
    [
        ("customer_name", format!("Customer {i}")),
        ("amp_base_url", "https://api.amp.cisco.com".into()),
        ("amp_client_id", format!("amp-client-{i}")),
        ("amp_api_key", format!("amp-key-{i}-secret")),
        ("xdr_auth_url", "https://visibility.amp.cisco.com".into()),
        ("xdr_api_url", "https://private.intel.amp.cisco.com".into()),
        ("xdr_client_id", format!("xdr-client-{i}")),
        ("xdr_client_secret", format!("xdr-secret-{i}")),
        ("snow_base_url", format!("https://c{i}.service-now.com")),
        ("snow_user", "bridge".into()),
        ("snow_password", format!("snow-pass-{i}")),
        ("callback_key", "Y2FsbGJhY2sta2V5LW9mLWFjbWU=".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

fn pairs(config: &[(String, String)]) -> Vec<(&str, &str)> {
    config
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect()
}

/// Ticks every tenant once, `width` at once; returns how many failed.
async fn sweep(rt: &Arc<Runtime>, tenants: &[Arc<Tenant>], width: usize) -> usize {
    let gate = Arc::new(Semaphore::new(width));
    let mut set = JoinSet::new();
    for t in tenants {
        let permit = gate.clone().acquire_owned().await.expect("semaphore open");
        let (rt, t) = (rt.clone(), t.clone());
        set.spawn(async move {
            let _permit = permit;
            rt.tick(&t, now_secs()).await.is_ok()
        });
    }
    let mut failed = 0;
    while let Some(r) = set.join_next().await {
        if !matches!(r, Ok(true)) {
            failed += 1;
        }
    }
    failed
}

fn tenants_of(w: &World, customers: &[Customer]) -> Vec<Arc<Tenant>> {
    customers
        .iter()
        .map(|c| w.host.runtime.tenant(&c.id).expect("registered"))
        .collect()
}

/// Detection groups among the events that pass the default filter.
fn expected_groups(events: &[mssp_sim::Event]) -> BTreeSet<String> {
    events
        .iter()
        .filter(|e| mssp_sim::HIGH_PRIORITY_EVENT_TYPES.contains(&e.event_type_id))
        .map(|e| match &e.detection_id {
            Some(d) => format!("d{d}"),
            None => format!("e{}", e.id),
        })
        .collect()
}

/// Incidents of a customer in `state`, as the component lists them.
async fn incidents_in(w: &World, c: &Customer, state: &str) -> u64 {
    let url = w.host.url(&format!("/tenants/{}/v1/incidents", c.id));
    let list = get(&url).await.map(|r| r.json()).unwrap_or_default();
    list["incidents"]
        .as_array()
        .map(|l| l.iter().filter(|i| i["state"] == state).count() as u64)
        .unwrap_or(0)
}

fn sim_config() -> SimConfig {
    SimConfig {
        isolation_delay: Duration::from_millis(20),
        ..SimConfig::default()
    }
}

// ---------------------------------------------------------------------------
// Sections

/// Issue 5: the host's memory with 100 and 1,000 idle tenants registered.
async fn rss(table: &mut Table) {
    let before = rss_mib();
    let host = TestHost::start("mssp_guest", LimitSettings::default())
        .await
        .expect("host");
    let started = rss_mib();
    let mut at = Vec::new();
    for i in 0..1000 {
        let config = idle_config(i);
        host.tenant(&format!("idle-{i:04}"), &pairs(&config));
        if i + 1 == 100 || i + 1 == 1000 {
            at.push((i + 1, rss_mib()));
        }
    }
    table.add(
        "5a",
        format!("host RSS, runtime started, no tenant (process before: {before:.0} MiB)"),
        format!("{started:.1} MiB"),
        "",
        "",
        None,
    );
    for (n, mib) in at {
        table.add(
            "5a",
            format!("host RSS with {n} idle tenants registered"),
            format!("{mib:.1} MiB"),
            "",
            "",
            None,
        );
    }
}

/// Issue 7 fig. 2: instantiation alone (`Runtime::instantiate_only`: a
/// tenant's store with every context and limit, and the component
/// instantiated from its `InstancePre`, nothing called), for the real bridge
/// component and the probe.
async fn instantiation_alone(table: &mut Table) {
    for component in ["mssp_guest", "mssp_probe"] {
        let host = TestHost::start(component, LimitSettings::default())
            .await
            .expect("host");
        let t = host.tenant("inst", &[("customer_name", "Instantiation")]);
        let mut wall = Vec::new();
        let mut c0 = cpu();
        for i in 0..2020 {
            if i == 20 {
                c0 = cpu();
            }
            let w0 = Instant::now();
            host.runtime
                .instantiate_only(&t)
                .await
                .expect("instantiate");
            if i >= 20 {
                wall.push(us(w0.elapsed()));
            }
        }
        // getrusage is too coarse for one instantiation: the mean over all.
        let cpu_mean = us(cpu() - c0) / wall.len() as f64;
        let (m, p) = quantiles(wall);
        table.add(
            "2b",
            format!(
                "instantiation alone ({component}.wasm, store + instance, pooling allocator): wall"
            ),
            fmt_us(m),
            fmt_us(p),
            "instantiation ≤ 50 µs",
            Some(m <= 50.0),
        );
        table.add(
            "2b",
            format!("instantiation alone ({component}.wasm): CPU, mean of 2000"),
            fmt_us(cpu_mean),
            "",
            "",
            None,
        );
    }
}

/// Issue 7 fig. 2 (host part): invocation cost without network I/O, with the
/// probe component (instantiation from InstancePre + call).
async fn instantiate(table: &mut Table) {
    instantiation_alone(table).await;
    let host = TestHost::start("mssp_probe", LimitSettings::default())
        .await
        .expect("host");
    for (mode, what) in [
        (
            "trap",
            "probe tick that traps at once (instantiate + call + trap)",
        ),
        ("", "probe tick (instantiate + call + 6 KV ops on SQLite)"),
    ] {
        let t = host.tenant(
            &format!("probe-{}", if mode.is_empty() { "kv" } else { mode }),
            &[("customer_name", "Probe"), ("probe_mode", mode)],
        );
        let mut wall = Vec::new();
        let mut cpu_us = Vec::new();
        for i in 0..520 {
            let (w0, c0) = (Instant::now(), cpu());
            let _ = host.runtime.tick(&t, now_secs()).await;
            let (w, c) = (w0.elapsed(), cpu() - c0);
            if i >= 20 {
                wall.push(us(w));
                cpu_us.push(us(c));
            }
        }
        let (m, p) = quantiles(wall);
        table.add(
            "2b",
            format!("{what}: wall"),
            fmt_us(m),
            fmt_us(p),
            "",
            None,
        );
        let (m, p) = quantiles(cpu_us);
        table.add("2b", format!("{what}: CPU"), fmt_us(m), fmt_us(p), "", None);
    }
}

/// Issue 7 fig. 2: an idle tick of the real bridge (one tenant, no new events).
async fn idle(table: &mut Table, label: &str, limits: LimitSettings, id: &'static str) {
    let w = World::start_limited(sim_config(), limits)
        .await
        .expect("world");
    let c = w.customer("quiet", CustomerSpec::default());
    w.tick(&c).await.expect("first tick");
    w.tick(&c).await.expect("second tick");
    w.sim.inspect().reset_request_counts();
    let n = 300;
    let mut wall = Vec::new();
    let mut cpu_us = Vec::new();
    for _ in 0..n {
        let (w0, c0) = (Instant::now(), cpu());
        w.tick(&c).await.expect("idle tick");
        wall.push(us(w0.elapsed()));
        cpu_us.push(us(cpu() - c0));
    }
    let counts = w.sim.inspect().request_counts();
    let per_tick = counts.total() as f64 / n as f64;
    let (m, p) = quantiles(wall);
    table.add(
        id,
        format!("idle tick, real bridge, {label}: wall"),
        fmt_us(m),
        fmt_us(p),
        "",
        None,
    );
    let (m, p) = quantiles(cpu_us);
    table.add(
        id,
        format!("idle tick, real bridge, {label}: CPU (host + guest + simulator)"),
        fmt_us(m),
        fmt_us(p),
        "≤ 1 ms CPU",
        Some(m <= 1000.0),
    );
    if id == "2a" {
        table.add(
            "1d",
            "upstream calls per idle tick (all services)",
            format!("{per_tick:.2}"),
            "",
            "Secure Endpoint ≤ 1",
            Some(counts.service(Service::Amp) as f64 / n as f64 <= 1.0),
        );
    }
}

/// Issue 14, finding 4: what the late-arrival window costs per idle tick. The same
/// bridge with `late_window_seconds` = 900 (the old fixed overlap: queries from
/// `since − 900 s`) and 3600 (the new default), for a quiet tenant (no events) and a
/// tenant with a steady trickle (one event every 30 s over the last two hours, one
/// detection, plus one new event before every measured tick), so the window holds
/// events that are re-read and de-duplicated every tick. Items read per tick are the
/// tick report's `events_fetched`; bytes are those items times the mean JSON size of
/// the trickle's events.
async fn late_window(table: &mut Table) {
    const THREAT_DETECTED: u64 = 1_090_519_054;
    let n = 100;
    for (tenant, trickle) in [("quiet", false), ("trickle", true)] {
        for window in ["900", "3600"] {
            let w = World::start_limited(sim_config(), LimitSettings::default())
                .await
                .expect("world");
            let c = w.customer(
                "late",
                CustomerSpec::default()
                    .with("late_window_seconds", window)
                    .with("lookback_seconds", "7200"),
            );
            let template = w
                .detection(&c, &c.computers[0], &[THREAT_DETECTED])
                .remove(0);
            let amp = w.sim.amp();
            let event_at = |ts: i64| {
                let mut e = template.clone();
                e.id = amp.next_event_id();
                e.timestamp = ts;
                e.date = mssp_sim::Event::new(e.id, THREAT_DETECTED, ts).date;
                e
            };
            let now = mssp_e2e::unix_now();
            let mut bytes_per_item = 0.0;
            if trickle {
                let past: Vec<mssp_sim::Event> =
                    (0..240).map(|i| event_at(now - 7_200 + i * 30)).collect();
                bytes_per_item = past
                    .iter()
                    .map(|e| serde_json::to_vec(e).map_or(0, |v| v.len()))
                    .sum::<usize>() as f64
                    / past.len() as f64;
                amp.push_events(&c.amp_client_id, past).expect("push");
            }
            for _ in 0..3 {
                w.tick(&c).await.expect("settling tick");
            }
            let mut cpu_us = Vec::new();
            let mut items = 0u64;
            for _ in 0..n {
                if trickle {
                    amp.push_events(&c.amp_client_id, vec![event_at(mssp_e2e::unix_now())])
                        .expect("push");
                }
                let c0 = cpu();
                w.tick(&c).await.expect("idle tick");
                cpu_us.push(us(cpu() - c0));
                let status = get(&w.host.url(&format!("/tenants/{}/v1/status", c.id)))
                    .await
                    .expect("status")
                    .json();
                items += status["last_tick"]["events_fetched"].as_u64().unwrap_or(0);
            }
            let per_tick = items as f64 / n as f64;
            let (m, p) = quantiles(cpu_us);
            table.add(
                "14-4",
                format!(
                    "idle tick, {tenant} tenant, window {window} s: CPU (host + guest + simulator); events read per tick"
                ),
                format!("{}; {per_tick:.0} items", fmt_us(m)),
                format!("{}; {:.0} KiB", fmt_us(p), per_tick * bytes_per_item / 1024.0),
                "",
                None,
            );
        }
    }
}

/// Issue 5: per-invocation overhead with the default sandbox limits and with
/// very loose ones (probe tick; the real bridge's idle tick).
async fn limits(table: &mut Table) {
    for (label, limits) in [
        ("default limits", LimitSettings::default()),
        ("loose limits", loose()),
    ] {
        let host = TestHost::start("mssp_probe", limits).await.expect("host");
        let t = host.tenant("probe", &[("customer_name", "Probe")]);
        let mut wall = Vec::new();
        for i in 0..520 {
            let w0 = Instant::now();
            let _ = host.runtime.tick(&t, now_secs()).await;
            if i >= 20 {
                wall.push(us(w0.elapsed()));
            }
        }
        let (m, p) = quantiles(wall);
        table.add(
            "5b",
            format!("probe tick, {label}: wall"),
            fmt_us(m),
            fmt_us(p),
            "",
            None,
        );
    }
    idle(table, "loose limits", loose(), "5b").await;
}

/// "Off" is not a host option: every limit as loose as it goes. Epoch
/// interruption, the store limiter, the outbound policy and the pooling
/// allocator stay on.
fn loose() -> LimitSettings {
    LimitSettings {
        memory_mib: 4096,
        tick_deadline_secs: 86_400,
        request_deadline_secs: 86_400,
        max_concurrent_per_tenant: 1024,
        queue_wait_ms: 86_400_000,
        max_concurrent_requests: 1 << 20,
        max_inbound_body: u64::MAX / 2,
        max_response_body: u64::MAX / 2,
        max_outbound_request_body: u64::MAX / 2,
        max_outbound_response_body: usize::MAX / 2,
        connect_timeout_ms: 86_400_000,
        first_byte_timeout_ms: 86_400_000,
        between_bytes_timeout_ms: 86_400_000,
        log_bytes_per_invocation: 1 << 30,
    }
}

/// Issue 7 fig. 6: RSS per in-flight invocation (probe sleeping in its tick;
/// the real bridge waiting on a slow events request).
async fn inflight(table: &mut Table) {
    let host = TestHost::start("mssp_probe", LimitSettings::default())
        .await
        .expect("host");
    for n in [1usize, 16, 60] {
        let tenants: Vec<_> = (0..n)
            .map(|i| {
                host.tenant(
                    &format!("sleeper-{n}-{i}"),
                    &[("customer_name", "Probe"), ("probe_tick_sleep_ms", "1500")],
                )
            })
            .collect();
        let base = rss_mib();
        let rt = host.runtime.clone();
        let run = tokio::spawn(async move { sweep(&rt, &tenants, n).await });
        tokio::time::sleep(Duration::from_millis(800)).await;
        let during = rss_mib();
        let failed = run.await.unwrap_or(n);
        table.add(
            "6",
            format!("RSS per in-flight probe invocation, {n} at once ({failed} failed)"),
            format!("{:.0} KiB", (during - base) * 1024.0 / n as f64),
            "",
            "",
            None,
        );
    }

    let w = World::start_with(sim_config()).await.expect("world");
    let n = 32;
    let customers: Vec<_> = (0..n)
        .map(|i| {
            w.customer(
                &format!("slow{i:02}"),
                CustomerSpec::default().without_callback(),
            )
        })
        .collect();
    let tenants = tenants_of(&w, &customers);
    sweep(&w.host.runtime, &tenants, WIDTH).await;
    let fault = w.sim.faults().add(
        Fault::always(Service::Amp, "/v1/events", FaultKind::Latency { ms: 1500 })
            .for_method("GET"),
    );
    let base = rss_mib();
    let rt = w.host.runtime.clone();
    let run = tokio::spawn(async move { sweep(&rt, &tenants, n).await });
    tokio::time::sleep(Duration::from_millis(800)).await;
    let during = rss_mib();
    let failed = run.await.unwrap_or(n);
    w.sim.faults().remove(fault);
    table.add(
        "6",
        format!("RSS per in-flight bridge tick waiting on Secure Endpoint, {n} at once ({failed} failed)"),
        format!("{:.0} KiB", (during - base) * 1024.0 / n as f64),
        "",
        "",
        None,
    );
}

/// Upstream calls of one customer, per service.
fn calls_of(w: &World, c: &Customer) -> [u64; 3] {
    let counts = w.sim.inspect().request_counts();
    [
        counts.tenant(Service::Amp, &c.amp_client_id),
        counts.tenant(Service::XdrAuth, &c.xdr_client_id)
            + counts.tenant(Service::XdrApi, &c.xdr_client_id),
        counts.tenant(Service::Snow, &c.snow_user),
    ]
}

/// Issue 7 fig. 1: upstream calls over the whole life of ~100 incidents.
async fn calls(table: &mut Table) {
    let w = World::start_with(sim_config()).await.expect("world");
    for by_callback in [true, false] {
        let name = if by_callback { "callback" } else { "reconcile" };
        let mut spec = CustomerSpec {
            computers: 40,
            ..CustomerSpec::default()
        }
        .with("containment", "isolate");
        if !by_callback {
            spec = spec.without_callback();
        }
        let c = w.customer(name, spec);
        // Published before the first tick (its look-back takes them all in).
        let mut events = Vec::new();
        let mut seed = 100;
        while expected_groups(&events).len() < 100 {
            events.extend(w.publish(&c, seed, 25));
            seed += 1;
        }
        let n = expected_groups(&events).len() as u64;
        let nf = n as f64;
        let mut ticks = 0u64;
        let counts0 = w.sim.inspect().request_counts();
        let events_route = |counts: &mssp_sim::RequestCounts| {
            counts.get(Service::Amp, "GET /v1/events", &c.amp_client_id)
        };
        let reconcile_route = |counts: &mssp_sim::RequestCounts| {
            counts.get(Service::Snow, "GET /api/now/table/incident", &c.snow_user)
        };
        let ev0 = events_route(&counts0);
        let rc0 = reconcile_route(&counts0);
        let before = calls_of(&w, &c);
        while incidents_in(&w, &c, "open").await < n && ticks < 50 {
            w.tick(&c).await.expect("tick");
            ticks += 1;
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        let opened_after = ticks;
        let at_open = calls_of(&w, &c);
        if !by_callback {
            // Idle ticks while every incident is open: one events request and
            // one reconcile query for all of them.
            let mut wall = Vec::new();
            let mut cpu_us = Vec::new();
            let rc_before = reconcile_route(&w.sim.inspect().request_counts());
            for _ in 0..40 {
                let (w0, c0) = (Instant::now(), cpu());
                w.tick(&c).await.expect("tick");
                wall.push(us(w0.elapsed()));
                cpu_us.push(us(cpu() - c0));
                ticks += 1;
            }
            let rc = reconcile_route(&w.sim.inspect().request_counts()) - rc_before;
            table.add(
                "1",
                format!("ServiceNow reconcile queries per idle tick with {n} open incidents"),
                format!(
                    "{:.2} ({:.3} per open incident)",
                    rc as f64 / 40.0,
                    rc as f64 / 40.0 / nf
                ),
                "",
                "amortised over open incidents",
                None,
            );
            let (m, p) = quantiles(wall);
            table.add(
                "2c",
                format!("idle tick with {n} open incidents (reconcile query): wall"),
                fmt_us(m),
                fmt_us(p),
                "",
                None,
            );
            let (m, p) = quantiles(cpu_us);
            table.add(
                "2c",
                format!("idle tick with {n} open incidents: CPU (host + guest + simulator)"),
                fmt_us(m),
                fmt_us(p),
                "≤ 1 ms CPU",
                Some(m <= 1000.0),
            );
        }
        for s in w.snow_incidents_of(&c) {
            let _ = w
                .sim
                .snow()
                .analyst_close(s.field("sys_id"), 6, "Solved (Permanently)", "benchmark")
                .await;
        }
        while incidents_in(&w, &c, "closed").await < n && ticks < 100 {
            w.tick(&c).await.expect("tick");
            ticks += 1;
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        // Releases (isolation stopped) may finish a tick later.
        w.tick(&c).await.expect("tick");
        ticks += 1;
        let closed = incidents_in(&w, &c, "closed").await;
        let after = calls_of(&w, &c);
        let counts = w.sim.inspect().request_counts();
        let events_calls = events_route(&counts) - ev0;
        let reconcile = reconcile_route(&counts) - rc0;
        let [amp, xdr, snow] = [0, 1, 2].map(|i| after[i] - before[i]);
        for e in &counts.entries {
            let mine = [&c.amp_client_id, &c.xdr_client_id, &c.snow_user];
            if e.tenant.as_ref().is_some_and(|t| mine.contains(&t)) {
                println!("    {name}: {:?} {} × {}", e.service, e.route, e.count);
            }
        }
        let label = format!(
            "{n} incidents, isolate, closed by {name} ({closed} closed; open after {opened_after} ticks, {ticks} ticks in all)"
        );
        let xdr_open = (at_open[1] - before[1]) as f64 / nf;
        table.add(
            "1",
            format!("XDR calls per incident until open (token, one bundle import), {label}"),
            format!("{xdr_open:.2}"),
            "",
            "≤ 2.1",
            Some(xdr_open <= 2.1),
        );
        table.add(
            "1",
            format!("XDR calls per incident over its whole life (create: one bundle import; close: one GET /ctia/bulk per tick for every incident closing in it, then one PATCH merged with what XDR holds), {label}"),
            format!("{:.2}", xdr as f64 / nf),
            "",
            "≤ 2.1",
            Some(xdr as f64 / nf <= 2.1),
        );
        let snow_writes = snow - reconcile;
        table.add(
            "1",
            format!("ServiceNow calls per incident without reconcile queries (the create; since issue 14 also the close's work note), {label}"),
            format!("{:.2}", snow_writes as f64 / nf),
            "",
            "≤ 1.1",
            Some(snow_writes as f64 / nf <= 1.1),
        );
        table.add(
            "1",
            format!("ServiceNow reconcile queries, {label}"),
            format!(
                "{reconcile} in {ticks} ticks ({:.3}/incident)",
                reconcile as f64 / nf
            ),
            "",
            "amortised over open incidents",
            None,
        );
        table.add(
            "1",
            format!("Secure Endpoint calls per incident (containment), {label}"),
            format!("{:.2}", (amp - events_calls) as f64 / nf),
            "",
            "",
            None,
        );
        table.add(
            "1",
            format!("Secure Endpoint events requests per tick, {label}"),
            format!("{:.2}", events_calls as f64 / ticks as f64),
            "",
            "",
            None,
        );
        let t = w.host.runtime.tenant(&c.id).expect("tenant");
        let [opened, reused] = [ConnectionUse::Opened, ConnectionUse::Reused].map(|u| {
            ["amp", "xdr", "snow"]
                .map(|s| t.stats.connections(s, u))
                .iter()
                .sum::<u64>()
        });
        table.add(
            "1",
            format!("upstream connections opened (TCP/TLS handshakes) per request, all services, {label}"),
            format!(
                "{opened} for {} requests ({:.3}; {:.2} per tick)",
                opened + reused,
                opened as f64 / (opened + reused) as f64,
                opened as f64 / ticks as f64
            ),
            "",
            "",
            None,
        );
    }
}

/// Builds the benchmark-only warm-instance component (quick when up to date).
fn logic_component() -> Result<PathBuf, String> {
    let root = workspace_root();
    let target = root.join("target").join("bench-logic");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = std::process::Command::new(cargo)
        .args(["build", "--quiet", "--release", "--target", "wasm32-wasip2"])
        .arg("--manifest-path")
        .arg(root.join("tests/benches/logic-guest/Cargo.toml"))
        .env("CARGO_TARGET_DIR", &target)
        .status()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if !status.success() {
        return Err(format!(
            "building tests/benches/logic-guest failed: {status}"
        ));
    }
    Ok(target.join("wasm32-wasip2/release/mssp_bench_logic.wasm"))
}

/// What the warm-instance rounds measured.
struct Warm {
    /// Per page, µs: the guest's own monotonic-clock timings.
    inside: Vec<f64>,
    /// Per page, µs: the native runs interleaved with the ticks.
    native: Vec<f64>,
    /// Process CPU of the ticks (each: store, instantiation, page built in
    /// the guest, 1 + `PAGES` pages, two KV writes).
    inside_cpu: Duration,
    /// Thread CPU of the native runs (1 + `PAGES` pages per round).
    native_cpu: Duration,
    groups: u64,
}

/// Pages timed per warm tick (after one warm-up page).
const PAGES: usize = 30;

/// Four rounds of: one tick of the logic component (1 + `PAGES` pages in one
/// warm instance), then as many pages natively; so both see the same load.
async fn warm_rounds(path: &Path, limits: LimitSettings, native_run: &dyn Fn() -> f64) -> Warm {
    let host = TestHost::start("mssp_guest", limits).await.expect("host");
    let pages = PAGES.to_string();
    let config: BTreeMap<String, SecretString> = [("bench_iterations", pages.as_str())]
        .iter()
        .chain(logic::CONFIG.iter())
        .map(|(k, v)| (k.to_string(), SecretString::new(*v)))
        .collect();
    let allowlist = Allowlist::from_config(&config, &[]).expect("valid config");
    let t = host
        .runtime
        .upsert_tenant(TenantSpec {
            id: "warm".into(),
            config,
            allowlist,
            component: Some(path.to_path_buf()),
            interval: None,
            accounts: Vec::new(),
        })
        .expect("tenant registers");
    let ns = Namespace::new("warm", "default");
    let read = |key: &str| {
        host.kv
            .get(&ns, key)
            .ok()
            .flatten()
            .map(|(v, _)| String::from_utf8_lossy(&v).into_owned())
            .unwrap_or_default()
    };
    let mut warm = Warm {
        inside: Vec::new(),
        native: Vec::new(),
        inside_cpu: Duration::ZERO,
        native_cpu: Duration::ZERO,
        groups: 0,
    };
    for _ in 0..4 {
        let c0 = cpu();
        host.runtime.tick(&t, now_secs()).await.expect("warm tick");
        warm.inside_cpu += cpu() - c0;
        warm.inside.extend(
            read("bench/ns")
                .split(',')
                .filter_map(|v| v.parse::<f64>().ok())
                .map(|ns| ns / 1000.0),
        );
        warm.groups = read("bench/groups").parse().unwrap_or(0);
        let c0 = thread_cpu();
        for i in 0..=PAGES {
            let t = native_run();
            if i > 0 {
                warm.native.push(t);
            }
        }
        warm.native_cpu += thread_cpu() - c0;
    }
    warm
}

/// Issue 7 fig. 5: the guest's pure per-page work (`bench::process_page`: parse
/// a 500-event page, filter, group, build both payloads) natively and inside the
/// component (`POST /v1/bench/pipeline`, timed by the guest's monotonic clock).
async fn wasm(table: &mut Table) {
    let cfg = mssp_guest::config::Config::from_getter(&|k: &str| {
        logic::CONFIG
            .iter()
            .find(|(key, _)| *key == k)
            .map(|(_, v)| v.to_string())
    })
    .expect("config");
    let body = logic::page_body();
    let summary = mssp_guest::bench::process_page(&body, &cfg).expect("page");
    // Native runs are interleaved with the component's, so both see the same
    // load on the shared machine; each ratio uses the native runs of its phase.
    let native_run = || {
        let t0 = Instant::now();
        let s = mssp_guest::bench::process_page(std::hint::black_box(&body), &cfg);
        std::hint::black_box(s).ok();
        us(t0.elapsed())
    };
    let (nm, np) = quantiles((0..60).map(|_| native_run()).collect());
    let warm = logic_component();
    table.add(
        "5w",
        format!(
            "guest per-page work, native ({} KiB page, {} events, {} groups)",
            body.len() / 1024,
            summary.events,
            summary.groups
        ),
        fmt_us(nm),
        fmt_us(np),
        "",
        None,
    );
    for (label, limits) in [
        (
            "default limits (64 MiB cap, 4 GiB reservation)",
            LimitSettings::default(),
        ),
        (
            "memory_mib = 4096 (4 GiB cap, 4 GiB reservation)",
            LimitSettings {
                memory_mib: 4096,
                ..LimitSettings::default()
            },
        ),
    ] {
        let limits_again = limits.clone();
        let host = TestHost::start("mssp_guest", limits).await.expect("host");
        host.tenant("pipe", &logic::CONFIG);
        let url = host.url("/tenants/pipe/v1/bench/pipeline");
        let auth = format!("Bearer {}", logic::TICK_TOKEN);
        let mut inside = Vec::new();
        let mut native = Vec::new();
        let mut same = true;
        for i in 0..65 {
            native.push(native_run());
            let r = mssp_e2e::send("POST", &url, &[("authorization", &auth)], body.clone())
                .await
                .expect("bench request");
            let v = r.json();
            same &= r.status == 200
                && v["groups"].as_u64() == Some(summary.groups as u64)
                && v["xdr_bytes"].as_u64() == Some(summary.xdr_bytes as u64);
            if i >= 5 {
                inside.push(v["elapsed_ns"].as_f64().unwrap_or(f64::NAN) / 1000.0);
            }
        }
        work_and_ratio(
            table,
            format!("same work inside the component, {label}"),
            format!("wasm / native ratio, one fresh instance per page, {label}"),
            quantiles(inside),
            (nm, np),
            same,
        );
        if let Ok(path) = &warm {
            let r = warm_rounds(path, limits_again, &native_run).await;
            work_and_ratio(
                table,
                format!("same work, {PAGES} pages per warm instance × 4, {label}"),
                format!("wasm / native ratio, warm instance, {label}"),
                quantiles(r.inside),
                quantiles(r.native),
                r.groups == summary.groups as u64,
            );
            // CPU rather than wall time, less sensitive to a loaded machine;
            // the ticks also build the page, instantiate and write the KV, so
            // this ratio errs high by a few percent.
            let ratio = r.inside_cpu.as_secs_f64() / r.native_cpu.as_secs_f64();
            table.add(
                "5w",
                format!(
                    "wasm / native CPU ratio, warm instance, {label} (4 × {} pages: {:.0} ms vs {:.0} ms native)",
                    PAGES + 1,
                    r.inside_cpu.as_secs_f64() * 1e3,
                    r.native_cpu.as_secs_f64() * 1e3
                ),
                format!("{ratio:.2}×"),
                "",
                "≤ 1.3×",
                Some(ratio <= 1.3),
            );
        }
        if let Err(e) = &warm {
            table.add("5w", format!("warm instance: {e}"), "", "", "", None);
        }
    }
}

/// Which key-value backend a section's host runs on.
#[derive(Clone, Copy)]
enum Store {
    Sqlite,
    Redis,
}

impl Store {
    async fn world(self) -> World {
        match self {
            Store::Sqlite => World::start_with(sim_config()).await,
            Store::Redis => World::start_on_redis_with(sim_config()).await,
        }
        .expect("world")
    }

    /// How a row names the store.
    fn label(self) -> &'static str {
        match self {
            Store::Sqlite => "SQLite",
            Store::Redis => "Redis",
        }
    }
}

/// Issue 7 fig. 4: 100 tenants × 20 new events, until every incident exists in
/// both simulators.
async fn throughput(table: &mut Table, store: Store) {
    let w = store.world().await;
    let customers: Vec<_> = (0..100)
        .map(|i| {
            w.customer(
                &format!("tp{i:03}"),
                CustomerSpec::default().without_callback(),
            )
        })
        .collect();
    let tenants = tenants_of(&w, &customers);
    sweep(&w.host.runtime, &tenants, WIDTH).await;
    let mut expected = Vec::new();
    for (i, c) in customers.iter().enumerate() {
        let events = w.publish(c, 1000 + i as u64, 20);
        expected.push(expected_groups(&events).len());
    }
    let total: usize = expected.iter().sum();
    let (w0, c0) = (Instant::now(), cpu());
    let mut rounds = 0;
    loop {
        sweep(&w.host.runtime, &tenants, WIDTH).await;
        rounds += 1;
        let done = customers
            .iter()
            .zip(&expected)
            .all(|(c, n)| w.xdr_incidents_of(c).len() >= *n && w.snow_incidents_of(c).len() >= *n);
        if done || rounds >= 20 {
            break;
        }
    }
    let (wall, cpu_used) = (w0.elapsed(), cpu() - c0);
    table.add(
        "4",
        format!("incident throughput, 100 tenants × 20 events = {total} incidents ({rounds} sweep(s) of {WIDTH} at once), key-value on {}", store.label()),
        format!("{:.0} incidents/s", total as f64 / wall.as_secs_f64()),
        "",
        "",
        None,
    );
    table.add(
        "4",
        "CPU per incident (host + guest + simulators)",
        fmt_us(us(cpu_used) / total as f64),
        "",
        "",
        None,
    );
}

/// Issue 7 fig. 3: 1,000 tenants, one idle tick each.
async fn sweep_1000(table: &mut Table, store: Store) {
    let w = store.world().await;
    let on = store.label();
    let customers: Vec<_> = (0..1000)
        .map(|i| {
            w.customer(
                &format!("sw{i:04}"),
                CustomerSpec {
                    computers: 1,
                    ..CustomerSpec::default()
                }
                .without_callback(),
            )
        })
        .collect();
    let tenants = tenants_of(&w, &customers);
    let registered = rss_mib();
    reset_peak();
    let (w0, c0) = (Instant::now(), cpu());
    let failed = sweep(&w.host.runtime, &tenants, WIDTH).await;
    let (first_wall, first_cpu) = (w0.elapsed(), cpu() - c0);
    let first_peak = peak_mib();
    reset_peak();
    let (w0, c0) = (Instant::now(), cpu());
    let failed2 = sweep(&w.host.runtime, &tenants, WIDTH).await;
    let (wall, cpu_used) = (w0.elapsed(), cpu() - c0);
    let peak = peak_mib();
    table.add(
        "3",
        format!("first sweep of 1,000 tenants (cursor set up, event types fetched; {failed} failed), key-value on {on}: wall / CPU"),
        format!("{:.2} s / {:.2} s", first_wall.as_secs_f64(), first_cpu.as_secs_f64()),
        "",
        "",
        None,
    );
    table.add(
        "3",
        format!("sweep of 1,000 idle tenants, {WIDTH} at once ({failed2} failed), key-value on {on}: wall"),
        format!("{:.2} s", wall.as_secs_f64()),
        "",
        "≤ 1 s",
        Some(wall.as_secs_f64() <= 1.0),
    );
    table.add(
        "3",
        "same sweep: CPU (host + guest + simulators)",
        format!("{:.2} s", cpu_used.as_secs_f64()),
        "",
        "",
        None,
    );
    table.add(
        "3",
        format!("same sweep: peak RSS, simulators included (before: {registered:.0} MiB; first sweep peak {first_peak:.0} MiB)"),
        format!("{peak:.0} MiB"),
        "",
        "≤ 256 MiB",
        Some(peak <= 256.0),
    );
}

/// Issue 18: one key-value operation as a host function makes it (from a task
/// on the tokio runtime), per backend: SQLite (WAL file on this disk) and Redis
/// (`redis-server` on loopback, append-only file, `appendfsync everysec`). 2,000 of
/// each, one at a time, on a namespace holding 1,000 keys of 1 KiB.
async fn kv_latency(table: &mut Table) {
    use mssp_runtime::kv::{LIST_PAGE, RedisKv, RedisOptions, SqliteKv};
    const N: usize = 2000;
    let dir = tempfile::tempdir().expect("temp dir");
    let server = mssp_e2e::RedisServer::start();
    let backends: [(&str, Arc<dyn KvBackend>); 2] = [
        (
            "SQLite",
            Arc::new(SqliteKv::open(&dir.path().join("kv.db")).expect("sqlite")),
        ),
        (
            "Redis",
            Arc::new(RedisKv::connect(&RedisOptions::url(server.url())).expect("redis")),
        ),
    ];
    let ns = Namespace::new("bench", "default");
    let value = vec![7u8; 1024];
    for (name, kv) in backends {
        for i in 0..1000 {
            kv.set(&ns, &format!("incident:amp-{i:04}"), &value)
                .expect("set");
        }
        let mut time = |op: &str, f: &mut dyn FnMut(usize)| {
            let samples: Vec<f64> = (0..N)
                .map(|i| {
                    let t = Instant::now();
                    f(i);
                    us(t.elapsed())
                })
                .collect();
            let (m, p) = quantiles(samples);
            table.add(
                "18",
                format!("key-value {op}, {name}"),
                fmt_us(m),
                fmt_us(p),
                "",
                None,
            );
        };
        let key = |i: usize| format!("incident:amp-{:04}", i % 1000);
        time("get (1 KiB)", &mut |i| {
            kv.get(&ns, &key(i)).expect("get");
        });
        time("set (1 KiB)", &mut |i| {
            kv.set(&ns, &key(i), &value).expect("set")
        });
        time("swap (get, then compare-and-swap)", &mut |i| {
            let seen = kv.get(&ns, &key(i)).expect("get").map(|(_, v)| v);
            assert!(kv.swap(&ns, &key(i), seen, &value).expect("swap"));
        });
        time("increment", &mut |_| {
            kv.increment(&ns, "events_seen", 1).expect("increment");
        });
        time(
            &format!("list-keys (page of {LIST_PAGE} of 1,000)"),
            &mut |_| {
                kv.list_keys(&ns, None, LIST_PAGE).expect("list");
            },
        );
    }
}

/// The sections, in the order they run; each runs in a process of its own so
/// that memory figures and CPU times are not disturbed by earlier sections.
/// `rss` runs after `instantiate` and `idle` have cached both compiled
/// components, so it measures a host that loads them rather than compiles them.
const SECTIONS: [&str; 18] = [
    "instantiate",
    "idle",
    "rss",
    "limits",
    "inflight",
    "calls",
    "wasm",
    "throughput",
    "sweep",
    "latewindow",
    "flood",
    "enumeration",
    "kv",
    "throughput-redis",
    "sweep-redis",
    "edit-check",
    "replicas",
    "accounts",
];

async fn run_section(name: &str, table: &mut Table) {
    println!("== {name}");
    match name {
        "rss" => rss(table).await,
        "instantiate" => instantiate(table).await,
        "idle" => idle(table, "default limits", LimitSettings::default(), "2a").await,
        "limits" => limits(table).await,
        "inflight" => inflight(table).await,
        "calls" => calls(table).await,
        "wasm" => wasm(table).await,
        "throughput" => throughput(table, Store::Sqlite).await,
        "sweep" => sweep_1000(table, Store::Sqlite).await,
        "kv" => kv_latency(table).await,
        "throughput-redis" => throughput(table, Store::Redis).await,
        "sweep-redis" => sweep_1000(table, Store::Redis).await,
        "latewindow" => late_window(table).await,
        "flood" => flood(table).await,
        "enumeration" => enumeration(table).await,
        "edit-check" => edit_check(table).await,
        "replicas" => replicas::replicas(table).await,
        "accounts" => accounts::accounts(table).await,
        _ => println!("unknown section {name}"),
    }
}

/// Issue 16: forged callbacks (bad MAC) to one tenant through the public listener, 16
/// clients (a new connection each, as `mssp_e2e::send` makes them) for the time of 20
/// ticks 100 ms apart: refusals per second of wall time and per CPU-second of the whole
/// process (clients, server and component together: an upper bound of what the bridge
/// spends), and the tenant's idle tick during the flood.
async fn flood(table: &mut Table) {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let w = World::start().await.expect("world");
    let acme = w.customer("acme", CustomerSpec::default().without_callback());
    w.tick(&acme).await.expect("first tick");
    let public = w.public_listener().await;
    let url = format!("http://{public}/tenants/acme/v1/servicenow/events");
    let stop = Arc::new(AtomicBool::new(false));
    let (refused, other) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let (c0, t0) = (cpu(), Instant::now());
    let mut clients = JoinSet::new();
    for _ in 0..16 {
        let (url, stop, refused, other) =
            (url.clone(), stop.clone(), refused.clone(), other.clone());
        clients.spawn(async move {
            let body = mssp_e2e::callback_body("0123456789abcdef", "INC0000001", "6", "amp-x");
            let forged = "Zm9yZ2VkLWtleS1vZi1ub2JvZHktYXQtYWxs";
            while !stop.load(Ordering::Relaxed) {
                let r = mssp_e2e::signed_callback(&url, forged, mssp_e2e::unix_now(), &body).await;
                let counter = if r.status == 401 { &refused } else { &other };
                counter.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    let mut ticks = Vec::new();
    for _ in 0..20 {
        let t = Instant::now();
        w.tick(&acme).await.expect("a tick during the flood");
        ticks.push(us(t.elapsed()));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::Relaxed);
    while clients.join_next().await.is_some() {}
    let (wall, spent) = (t0.elapsed().as_secs_f64(), (cpu() - c0).as_secs_f64());
    let n = refused.load(Ordering::Relaxed) as f64;
    let (m, p) = quantiles(ticks);
    table.add(
        "16a",
        format!(
            "forged callbacks refused through the public listener, 16 clients ({} not 401): per second of wall time",
            other.load(Ordering::Relaxed)
        ),
        format!("{:.0}/s", n / wall),
        "",
        "",
        None,
    );
    table.add(
        "16a",
        "forged callbacks refused per CPU-second of the whole process (clients included)",
        format!("{:.0}", n / spent),
        "",
        "",
        None,
    );
    table.add(
        "16a",
        "idle tick of the flooded tenant during the flood: wall",
        fmt_us(m),
        fmt_us(p),
        "",
        None,
    );
}

/// Issue 16: can a caller without credentials tell a real tenant from an unknown one by
/// the time of the answer? 400 alternating requests each, sequential, on the public
/// listener (forged callback) and on the private listener with an admin token
/// (anonymous status read): wall time per answer, known vs unknown tenant.
async fn enumeration(table: &mut Table) {
    let w = World::start().await.expect("world");
    let acme = w.customer(
        "acme",
        CustomerSpec::default()
            .with("open_reads", "")
            .without_callback(),
    );
    w.tick(&acme).await.expect("first tick");
    let public = w.public_listener().await;
    let private = w.private_listener("admin-token-bench").await;
    let body = mssp_e2e::callback_body("0123456789abcdef", "INC0000001", "6", "amp-x");
    let forged = "Zm9yZ2VkLWtleS1vZi1ub2JvZHktYXQtYWxs";
    for (listener, what) in [
        (public, "public: forged callback"),
        (private, "private: anonymous status read"),
    ] {
        let (mut known, mut unknown) = (Vec::new(), Vec::new());
        for i in 0..820 {
            let tenant = if i % 2 == 0 { "acme" } else { "nobody" };
            let t = Instant::now();
            let status = if what.starts_with("public") {
                let url = format!("http://{listener}/tenants/{tenant}/v1/servicenow/events");
                mssp_e2e::signed_callback(&url, forged, mssp_e2e::unix_now(), &body)
                    .await
                    .status
            } else {
                let url = format!("http://{listener}/tenants/{tenant}/v1/status");
                get(&url).await.expect("answer").status
            };
            assert_eq!(status, 401, "{what} {tenant}");
            if i >= 20 {
                let v = if tenant == "acme" {
                    &mut known
                } else {
                    &mut unknown
                };
                v.push(us(t.elapsed()));
            }
        }
        for (who, v) in [("real tenant", known), ("unknown tenant", unknown)] {
            let (m, p) = quantiles(v);
            table.add(
                "16b",
                format!("{what}, {who}: wall per answer (401 either way)"),
                fmt_us(m),
                fmt_us(p),
                "",
                None,
            );
        }
    }
}

/// Issue 17: what the component's configuration check costs an operator's edit. The
/// runtime an edit command builds (engine, component from the compile cache, in-memory
/// key-value store); `tenant set` of one key (open, resolve with its accounts, the
/// component's verdict, seal, save); `account set` of one key with 1, 10 and 100
/// tenants using the account (its probe and one verdict per tenant, then the save).
/// In-process, as `mssp_bridge::edit` runs it; a SQLite file in a temporary folder.
async fn edit_check(table: &mut Table) {
    use mssp_bridge::accounts::{Account, AccountSettings};
    use mssp_bridge::edit::{ComponentCheck, Edit, Editor};
    use mssp_bridge::secrets::MasterKey;
    use mssp_bridge::tenants::{TenantSettings, TenantStore};

    let cache = workspace_root().join("target").join("mssp-test-cache");
    let runtime = || {
        let kv = mssp_runtime::kv::SqliteKv::in_memory().expect("kv");
        Runtime::new(mssp_runtime::RuntimeParts {
            component: &mssp_e2e::component("mssp_guest"),
            cache_dir: &cache,
            kv: Arc::new(kv),
            limits: LimitSettings::default(),
            max_instances: 96,
            budgets: Default::default(),
        })
        .expect("runtime")
    };
    drop(runtime()); // the compile cache filled
    let mut builds = Vec::new();
    for _ in 0..20 {
        let t = Instant::now();
        drop(runtime());
        builds.push(us(t.elapsed()));
    }
    let (m, p) = quantiles(builds);
    table.add(
        "17a",
        "edit command: its runtime (Runtime::new, cached component)",
        fmt_us(m),
        fmt_us(p),
        "",
        None,
    );

    let dir = tempfile::tempdir().expect("dir");
    let store = TenantStore::open(&dir.path().join("bridge.db")).expect("store");
    let key = MasterKey::parse(&MasterKey::generate(), "bench").expect("key");
    let check = ComponentCheck::new(Ok(Arc::new(runtime())));
    let editor = Editor::new(&store, &key, &check);
    let secret = |k: &str, v: &str| (k.to_string(), SecretString::new(v));
    // Secrets given with the settings are sealed all the same (`put_account`).
    let accounts = [
        (
            Account::Xdr,
            "mssp-xdr",
            &[
                ("xdr_auth_url", "https://visibility.amp.cisco.com"),
                ("xdr_api_url", "https://private.intel.amp.cisco.com"),
                ("xdr_client_id", "mssp"),
                ("xdr_client_secret", "xdr-secret-bench"),
            ][..],
        ),
        (
            Account::Snow,
            "mssp-snow",
            &[
                ("snow_base_url", "https://mssp.service-now.com"),
                ("snow_user", "bridge"),
                ("snow_password", "snow-pass-bench"),
            ],
        ),
    ];
    for (kind, name, keys) in accounts {
        let mut settings = AccountSettings::default();
        for (k, v) in keys {
            settings.set(kind, k, v).expect("an account key");
        }
        store
            .put_account(&key, name, kind, settings, BTreeMap::new(), false)
            .expect("account");
    }
    let mut used = 0;
    let mut sink = std::io::sink();
    for n in [1, 10, 100] {
        while used < n {
            let mut settings = TenantSettings::default();
            for (k, v) in idle_config(used) {
                if !k.starts_with("xdr_")
                    && !k.starts_with("snow_")
                    && !mssp_contract::is_secret(&k)
                {
                    settings.config.insert(k, v);
                }
            }
            settings.accounts.insert(Account::Xdr, "mssp-xdr".into());
            settings.accounts.insert(Account::Snow, "mssp-snow".into());
            let secrets = BTreeMap::from([
                secret("amp_api_key", "amp-key-bench"),
                secret("callback_key", "Y2FsbGJhY2sta2V5LWJlbmNo"),
            ]);
            store
                .put(
                    &key,
                    &format!("customer-{used:03}"),
                    settings,
                    secrets,
                    false,
                )
                .expect("tenant");
            used += 1;
        }
        if n == 1 {
            let mut samples = Vec::new();
            for i in 0..120 {
                let edit = Edit {
                    set: vec![("lookback_seconds".into(), format!("{}", 3600 + i))],
                    ..Edit::default()
                };
                let t = Instant::now();
                editor
                    .tenant_edit("customer-000", edit, None, &mut sink)
                    .await
                    .expect("tenant set");
                if i >= 20 {
                    samples.push(us(t.elapsed()));
                }
            }
            let (m, p) = quantiles(samples);
            table.add(
                "17b",
                "tenant set KEY=VALUE (check + save)",
                fmt_us(m),
                fmt_us(p),
                "",
                None,
            );
        }
        let mut samples = Vec::new();
        let rounds = if n == 100 { 12 } else { 42 };
        for i in 0..rounds {
            let edit = Edit {
                set: vec![("xdr_client_id".into(), format!("mssp-{i}"))],
                ..Edit::default()
            };
            let t = Instant::now();
            editor
                .account_edit("mssp-xdr", edit, &mut sink)
                .await
                .expect("account set");
            if i >= 2 {
                samples.push(us(t.elapsed()));
            }
        }
        let (m, p) = quantiles(samples);
        table.add(
            "17c",
            format!("account set KEY=VALUE, {n} tenant(s) using it (checks + save)"),
            fmt_us(m),
            fmt_us(p),
            "",
            None,
        );
    }
}

/// Runs one section in a child process; returns its table rows.
fn run_child(name: &str) -> Vec<String> {
    use std::io::BufRead as _;
    let exe = std::env::current_exe().expect("own path");
    let mut child = std::process::Command::new(exe)
        .args([name, "--section"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("child process");
    let mut rows = Vec::new();
    if let Some(out) = child.stdout.take() {
        for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            if let Some(row) = line.strip_prefix(ROW_MARK) {
                rows.push(row.to_string());
            } else {
                println!("{line}");
            }
        }
    }
    match child.wait() {
        Ok(s) if s.success() => {}
        other => rows.push(format!(
            "| {name} | section failed: {other:?} | | | | **failed** |"
        )),
    }
    rows
}

/// Prefix of the table rows a child process hands to its parent.
const ROW_MARK: &str = "@row ";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let filter = args
        .iter()
        .find(|a| !a.starts_with('-'))
        .cloned()
        .unwrap_or_default();
    if args.iter().any(|a| a == "--section") {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        let mut table = Table::default();
        rt.block_on(run_section(&filter, &mut table));
        for row in table.markdown_rows() {
            println!("{ROW_MARK}{row}");
        }
        return;
    }
    if !args.iter().any(|a| a == "--bench") {
        // `cargo test --all-targets` runs bench targets without `--bench`:
        // the benchmarks are a separate, documented command.
        println!("benchmarks run with `cargo bench -p mssp-e2e --bench bridge` (BENCHMARKS.md)");
        return;
    }
    let uptime = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("load average before: {}", uptime.trim());
    let mut rows = Vec::new();
    for name in SECTIONS.iter().filter(|s| s.contains(filter.as_str())) {
        rows.extend(run_child(name));
    }
    let uptime = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("load average after: {}", uptime.trim());
    println!("\n| # | figure | median | p99 | goal | result |");
    println!("|---|---|---|---|---|---|");
    for row in rows {
        println!("{row}");
    }
}
