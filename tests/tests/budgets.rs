//! Shared upstream accounts, end to end: one ServiceNow instance (one integration user)
//! or one XDR organisation for several customers. The host keeps one budget and one
//! cooldown per account and answers a held-back request itself, so a 429 seen by one
//! customer stops every customer on that account, a configured budget is never
//! exceeded upstream, and one customer's backlog does not starve another's first
//! detection — with every incident still created exactly once.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mssp_e2e::{Customer, CustomerSpec, THREAT_DETECTED, World, group_of_event, wanted_groups};
use mssp_runtime::budget::{AccountStatus, CooldownCause, DeferReason};
use mssp_runtime::{BudgetSettings, LimitSettings};
use mssp_sim::{Fault, FaultKind, Service, SimConfig, WaitForm};

async fn world(budgets: BudgetSettings) -> World {
    World::start_budgeted(
        "mssp_guest",
        SimConfig::default(),
        LimitSettings::default(),
        budgets,
    )
    .await
    .expect("world starts")
}

/// Requests that reached the simulated service(s).
fn reached(w: &World, services: &[Service]) -> u64 {
    let counts = w.sim.inspect().request_counts();
    services.iter().map(|s| counts.service(*s)).sum()
}

const SNOW: &[Service] = &[Service::Snow];
const XDR: &[Service] = &[Service::XdrAuth, Service::XdrApi];

/// The host's view of the one account of `service` the customers share.
fn account(w: &World, service: &str) -> AccountStatus {
    let found: Vec<_> = w
        .host
        .runtime
        .accounts()
        .into_iter()
        .filter(|a| a.service == service)
        .map(|a| a.status())
        .collect();
    assert_eq!(found.len(), 1, "one shared {service} account: {found:?}");
    found.into_iter().next().expect("one")
}

fn deferred(w: &World, c: &Customer, service: &str, reason: DeferReason) -> u64 {
    w.host
        .runtime
        .tenant(&c.id)
        .expect("tenant")
        .stats
        .deferred_count(service, reason)
}

/// Publishes `n` generated events; returns the detection groups they make (some).
fn detections(w: &World, c: &Customer, seed: u64, n: usize) -> BTreeSet<String> {
    let groups: BTreeSet<String> = wanted_groups(&w.publish(c, seed, n)).into_keys().collect();
    assert!(
        !groups.is_empty(),
        "seed {seed}: no detection in {n} events"
    );
    groups
}

/// Whether every expected group has its XDR and ServiceNow incident (each at most once:
/// `groups_upstream` panics on a second one).
fn all_open(w: &World, c: &Customer, expected: &BTreeSet<String>) -> bool {
    let (xdr, snow) = w.groups_upstream(c);
    assert!(xdr.is_subset(expected) && snow.is_subset(expected));
    &xdr == expected && &snow == expected
}

async fn wait_cooldown_over(w: &World, service: &str) {
    let start = Instant::now();
    while account(w, service).cooldown.is_some() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "cooldown never ends"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_with_retry_after_120_seen_by_one_customer_stops_the_other_on_that_instance() {
    let w = world(BudgetSettings::default()).await;
    let shared = w.shared_snow_user("mssp-snow");
    let spec = || CustomerSpec::default().with_all(&shared).without_callback();
    let a = w.customer("alpha", spec());
    let b = w.customer("bravo", spec());
    w.sim.faults().add(
        Fault::times(
            Service::Snow,
            "/api/now/table/incident",
            1,
            FaultKind::TooManyRequests {
                retry_after_secs: 120,
                bare: false,
            },
        )
        .for_method("POST"),
    );
    detections(&w, &a, 11, 12);
    let b_groups = detections(&w, &b, 12, 12);

    w.tick(&a).await.expect("tick");
    let after_a = reached(&w, SNOW);
    assert_eq!(w.sim.faults().list()[0].fired, 1, "A met the 429");
    let acc = account(&w, "snow");
    let (secs, cause) = acc.cooldown.expect("the whole account cools down");
    assert!(secs >= 110, "{secs}");
    assert_eq!(cause, CooldownCause::RetryAfterSeconds);
    assert_eq!((acc.totals.upstream_429, acc.totals.cooldowns), (1, 1));

    // Tenant B, 0.3 s later in the measurement: now it sends nothing there.
    w.tick(&b).await.expect("tick");
    w.tick(&a).await.expect("tick");
    assert_eq!(reached(&w, SNOW), after_a, "nothing reached the instance");
    assert!(deferred(&w, &b, "snow", DeferReason::Cooldown) >= 1);
    assert!(w.snow_incidents_of(&b).is_empty());
    // B's own XDR organisation is not held: its XDR incidents exist, once each.
    let (xdr, _) = w.groups_upstream(&b);
    assert_eq!(xdr, b_groups);
    let metrics = w.host.runtime.metrics().render();
    assert!(
        metrics.contains("reason=\"retry_after_seconds\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains(
        "mssp_upstream_deferred_total{tenant=\"bravo\",service=\"snow\",reason=\"cooldown\"}"
    ));
}

/// One kind of 429: which service answers it, how it names its wait, what the host
/// must make of it.
struct Kind {
    service: Service,
    label: &'static str,
    route: &'static str,
    fault: FaultKind,
    cause: CooldownCause,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_form_of_429_cools_the_account_down_for_the_time_it_names() {
    let named = |form| FaultKind::TooManyRequestsNamed { wait_secs: 4, form };
    let kinds = [
        Kind {
            service: Service::Snow,
            label: "snow",
            route: "/api/now/table/incident",
            fault: named(WaitForm::RetryAfterSeconds),
            cause: CooldownCause::RetryAfterSeconds,
        },
        Kind {
            service: Service::XdrApi,
            label: "xdr",
            route: "/ctia/bundle/import",
            fault: named(WaitForm::RetryAfterDate),
            cause: CooldownCause::RetryAfterDate,
        },
        Kind {
            service: Service::Snow,
            label: "snow",
            route: "/api/now/table/incident",
            fault: named(WaitForm::EpochReset),
            cause: CooldownCause::EpochReset,
        },
        Kind {
            service: Service::Snow,
            label: "snow",
            route: "/api/now/table/incident",
            fault: FaultKind::TooManyRequests {
                retry_after_secs: 0,
                bare: true,
            },
            cause: CooldownCause::NoHeader,
        },
    ];
    // At once: each waits out a real cooldown of about four seconds.
    tokio::join!(
        one_kind(0, &kinds[0]),
        one_kind(1, &kinds[1]),
        one_kind(2, &kinds[2]),
        one_kind(3, &kinds[3]),
    );
}

async fn one_kind(i: usize, k: &Kind) {
    let w = Arc::new(
        world(BudgetSettings {
            no_header_cooldown_secs: 4.0,
            ..BudgetSettings::default()
        })
        .await,
    );
    let shared = if k.label == "snow" {
        w.shared_snow_user(&format!("mssp-snow-{i}"))
    } else {
        w.shared_xdr_client(&format!("mssp-xdr-{i}"))
    };
    let spec = || CustomerSpec::default().with_all(&shared).without_callback();
    let a = w.customer("alpha", spec());
    let b = w.customer("bravo", spec());
    w.sim
        .faults()
        .add(Fault::times(k.service, k.route, 1, k.fault.clone()).for_method("POST"));
    detections(&w, &a, 21, 10);
    let b_groups = detections(&w, &b, 22, 10);
    let services = if k.label == "snow" { SNOW } else { XDR };
    let what = k.cause.as_str();

    // A meets the 429 (and may wait a short one out inside its tick).
    let ticking = {
        let (w, a) = (w.clone(), a.clone());
        tokio::spawn(async move { w.tick(&a).await.expect("tick") })
    };
    let start = Instant::now();
    let (secs, cause) = loop {
        if let Some(c) = account(&w, k.label).cooldown {
            break c;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{what}: no cooldown"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(cause, k.cause, "{what}");
    assert!((3..=5).contains(&secs), "{what}: {secs} s");
    // B, during the cooldown: nothing of its reaches the account.
    let before = reached(&w, services);
    w.tick(&b).await.expect("tick");
    assert_eq!(reached(&w, services), before, "{what}: B sent nothing");
    assert!(
        deferred(&w, &b, k.label, DeferReason::Cooldown) >= 1,
        "{what}"
    );
    ticking.await.expect("A's tick");
    wait_cooldown_over(&w, k.label).await;
    w.tick(&b).await.expect("tick");
    assert!(
        all_open(&w, &b, &b_groups),
        "{what}: after the cooldown B's incidents exist"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configured_budget_holds_requests_back_without_sending_them_and_loses_nothing() {
    // 120 requests per 36 s window (an hour run 100× faster): two at once, then one
    // every 0.3 s.
    let w = world(BudgetSettings {
        snow_per_hour: Some(120),
        window_secs: 36.0,
        burst_secs: 0.6,
        ..BudgetSettings::default()
    })
    .await;
    let c = w.customer(
        "acme",
        CustomerSpec {
            computers: 8,
            ..CustomerSpec::default()
        }
        .without_callback(),
    );
    let expected = detections(&w, &c, 31, 24);
    assert!(expected.len() >= 4, "{expected:?}");

    w.tick(&c).await.expect("tick");
    assert_eq!(
        reached(&w, SNOW),
        2,
        "the bucket's two: every other request was answered by the host (and not retried)"
    );
    assert!(deferred(&w, &c, "snow", DeferReason::Budget) >= 1);
    let report = mssp_e2e::get(&w.host.url("/tenants/acme/v1/status"))
        .await
        .expect("status")
        .json();
    let cooldowns = report["last_tick"]["cooldowns"].to_string();
    assert!(
        cooldowns.contains("budget of the shared ServiceNow account"),
        "{cooldowns}"
    );
    let status = account(&w, "snow");
    assert_eq!(status.per_hour, Some(120));
    assert_eq!(status.left_now, Some(0));

    let start = Instant::now();
    let mut ticks = 1;
    while !all_open(&w, &c, &expected) {
        assert!(start.elapsed() < Duration::from_secs(30), "not drained");
        tokio::time::sleep(Duration::from_millis(400)).await;
        w.tick(&c).await.expect("tick");
        ticks += 1;
    }
    let requests = reached(&w, SNOW);
    // One create per incident, plus at most one look-up per tick (the create that was
    // held back at the moment it was sent is looked up before it is sent again).
    assert!(
        requests <= expected.len() as u64 + ticks,
        "{requests} requests for {} incidents in {ticks} ticks",
        expected.len()
    );
    let limited = w
        .host
        .runtime
        .tenant("acme")
        .expect("tenant")
        .stats
        .upstream_count("snow", mssp_runtime::stats::CallOutcome::RateLimited);
    assert_eq!(limited, 0, "the instance never had to refuse");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlogged_customer_cannot_starve_a_quiet_customers_first_detection() {
    // 240 requests per 36 s: four at once, half of them a reserve for customers that
    // are not backlogged; 6.6 per second after that.
    let w = Arc::new(
        world(BudgetSettings {
            snow_per_hour: Some(240),
            window_secs: 36.0,
            burst_secs: 0.6,
            ..BudgetSettings::default()
        })
        .await,
    );
    let shared = w.shared_snow_user("mssp-snow");
    // The reconcile poll at its default cadence (the harness's customers reconcile every
    // tick): ticks back to back must not spend the instance's budget on polls.
    let big = || {
        CustomerSpec {
            computers: 8,
            ..CustomerSpec::default()
        }
        .with_all(&shared)
        .with("reconcile_interval_secs", "3600")
        .without_callback()
    };
    let heavy: Vec<Customer> = (0..3)
        .map(|i| w.customer(&format!("heavy{i}"), big()))
        .collect();
    let quiet = w.customer(
        "quiet",
        CustomerSpec::default()
            .with_all(&shared)
            .with("reconcile_interval_secs", "3600")
            .without_callback(),
    );
    let mut backlog = Vec::new();
    for (i, c) in heavy.iter().enumerate() {
        backlog.push(detections(&w, c, 40 + i as u64, 15));
        w.tick(c).await.expect("tick");
    }
    assert!(account(&w, "snow").backlogged >= 1);

    // The backlogged customers tick back to back; the quiet one's first detection
    // arrives and it ticks once a second.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut drains = Vec::new();
    for c in heavy.clone() {
        let (w, stop) = (w.clone(), stop.clone());
        drains.push(tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                w.tick(&c).await.expect("tick");
            }
        }));
    }
    let detection = w.detection(&quiet, &quiet.computers[0], &[THREAT_DETECTED]);
    let first: BTreeSet<String> = detection.iter().map(group_of_event).collect();
    w.sim
        .amp()
        .push_events(&quiet.amp_client_id, detection)
        .expect("push");
    let mut quiet_ticks = 0;
    while !all_open(&w, &quiet, &first) {
        quiet_ticks += 1;
        assert!(
            quiet_ticks <= 2,
            "the quiet customer's detection waited more than two of its ticks: {:?} {:#}",
            account(&w, "snow"),
            mssp_e2e::get(&w.host.url("/tenants/quiet/v1/status"))
                .await
                .expect("status")
                .json()["last_tick"]
        );
        w.tick(&quiet).await.expect("tick");
        if all_open(&w, &quiet, &first) {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    // The backlog drains too, every incident once.
    let start = Instant::now();
    while !heavy.iter().zip(&backlog).all(|(c, g)| all_open(&w, c, g)) {
        assert!(
            start.elapsed() < Duration::from_secs(40),
            "backlog not drained: {:?}; open per heavy customer: {:?}",
            account(&w, "snow"),
            heavy
                .iter()
                .zip(&backlog)
                .map(|(c, g)| (w.snow_incidents_of(c).len(), g.len()))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for d in drains {
        d.await.expect("drain task");
    }
    assert!(all_open(&w, &quiet, &first));
}
