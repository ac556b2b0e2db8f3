//! Issue 17: 1,000 tenants sharing one XDR organisation (8,000/h) and one ServiceNow
//! instance (2,000/h for its integration user), the accounts' limits on in the
//! simulators, an hour run [`SPEED`] times faster: the simulators' rate windows, the
//! host's budget window and burst, the tick interval and `reconcile_interval_secs` are all
//! divided by it (the request counts per window are the real ones).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use mssp_e2e::{Customer, CustomerSpec, THREAT_DETECTED, World, group_of_event};
use mssp_runtime::stats::CallOutcome;
use mssp_runtime::{BudgetSettings, LimitSettings};
use mssp_sim::{Service, SimConfig};

use super::{Table, WIDTH, expected_groups, sweep, tenants_of};

/// How much faster than real time the hour runs.
const SPEED: f64 = 60.0;
/// The simulated limits (per simulated hour).
const XDR_LIMIT: u32 = 8000;
const SNOW_LIMIT: u32 = 2000;
/// The host's budgets: 95 % of each limit.
const XDR_BUDGET: u32 = 7600;
const SNOW_BUDGET: u32 = 1900;
const TENANTS: usize = 1000;
const BURST_TENANTS: usize = 200;
/// Generated events per burst tenant (≈ 25 detections each).
const EVENTS_PER_BURST_TENANT: usize = 56;

fn hour() -> Duration {
    Duration::from_secs_f64(3600.0 / SPEED)
}

/// Simulated seconds of a wall-clock duration.
fn simulated(d: Duration) -> f64 {
    d.as_secs_f64() * SPEED
}

fn reached(w: &World, services: &[Service]) -> u64 {
    let counts = w.sim.inspect().request_counts();
    services.iter().map(|s| counts.service(*s)).sum()
}

fn rate_limited(w: &World, customers: &[Customer], service: &str) -> u64 {
    customers
        .iter()
        .filter_map(|c| w.host.runtime.tenant(&c.id))
        .map(|t| t.stats.upstream_count(service, CallOutcome::RateLimited))
        .sum()
}

fn cooldowns(w: &World, service: &str) -> u64 {
    w.host
        .runtime
        .accounts()
        .iter()
        .filter(|a| a.service == service)
        .map(|a| a.status().totals.cooldowns)
        .sum()
}

/// Incidents upstream in XDR and ServiceNow, every tenant together.
fn incidents_upstream(w: &World) -> (usize, usize) {
    let inspect = w.sim.inspect();
    (
        inspect.xdr_incidents().len(),
        inspect.snow_incidents().len(),
    )
}

pub(super) async fn accounts(table: &mut Table) {
    let sim = SimConfig {
        rate_window: hour(),
        xdr_rate_limit_per_hour: XDR_LIMIT,
        snow_rate_limit_per_hour: SNOW_LIMIT,
        isolation_delay: Duration::from_millis(20),
        ..SimConfig::default()
    };
    let budgets = BudgetSettings {
        xdr_per_hour: Some(XDR_BUDGET),
        snow_per_hour: Some(SNOW_BUDGET),
        window_secs: 3600.0 / SPEED,
        burst_secs: 60.0 / SPEED,
        no_header_cooldown_secs: 60.0 / SPEED,
        ..BudgetSettings::default()
    };
    let w = World::start_budgeted("mssp_guest", sim, LimitSettings::default(), budgets)
        .await
        .expect("world");
    let mut shared = w.shared_xdr_client("mssp-xdr-org");
    shared.extend(w.shared_snow_user("mssp-snow"));
    let reconcile = format!("{}", (3600.0 / SPEED).round() as u64);
    // The burst tenants are spread through the sweep order (every fifth), as the
    // scheduler's jittered per-tenant loops spread their ticks.
    let bursty = |i: usize| i.is_multiple_of(TENANTS / BURST_TENANTS);
    let customers: Vec<Customer> = (0..TENANTS)
        .map(|i| {
            let spec = CustomerSpec {
                computers: if bursty(i) { 8 } else { 1 },
                ..CustomerSpec::default()
            }
            .with_all(&shared)
            .with("reconcile_interval_secs", &reconcile)
            .with("rate_limit_cooldown_seconds", "1")
            .without_callback();
            w.customer(&format!("t{i:04}"), spec)
        })
        .collect();
    let tenants = tenants_of(&w, &customers);
    // Every tenant's first tick (cursor set up) before the burst.
    sweep(&w.host.runtime, &tenants, WIDTH).await;

    // (a) the burst: detections across 200 tenants.
    let burst: Vec<&Customer> = (0..TENANTS)
        .filter(|i| bursty(*i))
        .map(|i| &customers[i])
        .collect();
    let mut expected: Vec<BTreeSet<String>> = Vec::new();
    for (i, c) in burst.iter().enumerate() {
        let events = w.publish(c, 1700 + i as u64, EVENTS_PER_BURST_TENANT);
        expected.push(expected_groups(&events));
    }
    let detections: usize = expected.iter().map(BTreeSet::len).sum();
    let quiet = &customers[TENANTS - 1];
    let quiet_detection = w.detection(quiet, &quiet.computers[0], &[THREAT_DETECTED]);
    let quiet_group: BTreeSet<String> = quiet_detection.iter().map(group_of_event).collect();

    let (snow0, xdr0) = (
        reached(&w, &[Service::Snow]),
        reached(&w, &[Service::XdrAuth, Service::XdrApi]),
    );
    let start = Instant::now();
    let mut sweeps = 0u32;
    let mut sweep_walls = Vec::new();
    let mut quiet_at: Option<(Instant, u32)> = None;
    let mut quiet_done: Option<(Duration, u32)> = None;
    let drain = loop {
        let s0 = Instant::now();
        sweep(&w.host.runtime, &tenants, WIDTH).await;
        sweep_walls.push(s0.elapsed());
        sweeps += 1;
        if sweeps == 5 {
            // (b) in the middle of the burst, one quiet tenant's first detection.
            w.sim
                .amp()
                .push_events(&quiet.amp_client_id, quiet_detection.clone())
                .expect("push");
            quiet_at = Some((Instant::now(), sweeps));
        }
        if let (Some((at, n)), None) = (quiet_at, quiet_done) {
            let (x, s) = w.groups_upstream(quiet);
            if x == quiet_group && s == quiet_group {
                quiet_done = Some((at.elapsed(), sweeps - n));
            }
        }
        let (x, s) = incidents_upstream(&w);
        let want = detections + usize::from(quiet_at.is_some());
        if x >= want && s >= want && quiet_done.is_some() {
            break start.elapsed();
        }
        if start.elapsed() > Duration::from_secs(900) {
            println!("drain not finished after 900 s: XDR {x}, ServiceNow {s} of {want}");
            break start.elapsed();
        }
    };
    let snow_used = reached(&w, &[Service::Snow]) - snow0;
    let xdr_used = reached(&w, &[Service::XdrAuth, Service::XdrApi]) - xdr0;
    let hours = drain.as_secs_f64() / hour().as_secs_f64();
    let mut once = true;
    for (c, want) in burst.iter().zip(&expected) {
        let (x, s) = w.groups_upstream(c);
        once &= &x == want && &s == want;
    }
    let snow_429 = rate_limited(&w, &customers, "snow");
    let xdr_429 = rate_limited(&w, &customers, "xdr");
    let episodes = cooldowns(&w, "snow") + cooldowns(&w, "xdr");
    let mut walls: Vec<f64> = sweep_walls.iter().map(Duration::as_secs_f64).collect();
    walls.sort_by(f64::total_cmp);
    let median_sweep = walls.get(walls.len() / 2).copied().unwrap_or(0.0);
    table.add(
        "17a",
        format!(
            "burst of {detections} detections across {BURST_TENANTS} of {TENANTS} tenants: every incident created exactly once in XDR and ServiceNow"
        ),
        if once { "yes" } else { "no" },
        "",
        "exactly once",
        Some(once),
    );
    table.add(
        "17a",
        format!(
            "same burst: upstream 429s (ServiceNow {snow_429}, XDR {xdr_429}) per cooldown episode ({episodes} episodes)"
        ),
        format!("{}", snow_429 + xdr_429),
        "",
        "≤ 1 per episode",
        Some(snow_429 + xdr_429 <= episodes.max(1)),
    );
    let snow_share = snow_used as f64 / (hours * f64::from(SNOW_LIMIT));
    table.add(
        "17a",
        format!(
            "same burst: ServiceNow budget used during the drain ({snow_used} requests in {:.2} simulated h; XDR {xdr_used} requests = {:.0} % of its limit)",
            hours,
            100.0 * xdr_used as f64 / (hours * f64::from(XDR_LIMIT))
        ),
        format!("{:.0} % of {SNOW_LIMIT}/h", 100.0 * snow_share),
        "",
        "≥ 90 %",
        Some(snow_share >= 0.9),
    );
    table.add(
        "17a",
        format!(
            "same burst: drain time, simulated ({:.0} s wall at {SPEED}×; {sweeps} sweeps of all {TENANTS} tenants, median sweep {:.2} s wall = {:.0} s simulated, against a 60 s tick interval)",
            drain.as_secs_f64(),
            median_sweep,
            median_sweep * SPEED
        ),
        format!("{:.0} min", simulated(drain) / 60.0),
        "",
        "",
        None,
    );
    // A tenant ticks once per sweep: its tick interval here is the sweep's length.
    let (quiet_wall, quiet_ticks) = quiet_done.unwrap_or((Duration::ZERO, u32::MAX));
    table.add(
        "17b",
        format!(
            "during the burst, a quiet tenant's first detection: time until both incidents exist, in its own ticks ({:.2} s wall = {:.0} s simulated; a tick interval here is one sweep of all tenants, median {:.0} s simulated)",
            quiet_wall.as_secs_f64(),
            simulated(quiet_wall),
            median_sweep * SPEED
        ),
        format!("{quiet_ticks} tick(s)"),
        "",
        "≤ 2 tick intervals",
        Some(quiet_done.is_some() && quiet_ticks <= 2),
    );

    // (c) steady state: 5,000 open incidents, no new detections, no callbacks.
    let open = incidents_upstream(&w).1;
    let snow_before = reached(&w, &[Service::Snow]);
    let measured = Instant::now();
    let mut steady_sweeps = 0;
    while measured.elapsed() < hour() * 2 {
        let s0 = Instant::now();
        sweep(&w.host.runtime, &tenants, WIDTH).await;
        steady_sweeps += 1;
        // Ticks 60 s (simulated) apart at the least.
        let tick = Duration::from_secs_f64(60.0 / SPEED);
        if let Some(rest) = tick.checked_sub(s0.elapsed()) {
            tokio::time::sleep(rest).await;
        }
    }
    let per_hour = (reached(&w, &[Service::Snow]) - snow_before) as f64
        / (measured.elapsed().as_secs_f64() / hour().as_secs_f64());
    table.add(
        "17c",
        format!(
            "steady state, {open} open incidents on {} tenants, reconcile_interval_secs 3600 (scaled), {steady_sweeps} sweeps over 2 simulated hours: ServiceNow requests per hour",
            BURST_TENANTS + 1
        ),
        format!("{per_hour:.0} = {:.1} % of {SNOW_LIMIT}/h", 100.0 * per_hour / f64::from(SNOW_LIMIT)),
        "",
        "≤ 10 %",
        Some(per_hour <= 0.1 * f64::from(SNOW_LIMIT)),
    );
}
