//! `/metrics` after a day in the life of two customers: the upstream request
//! counters per service match what the simulators received, and the event
//! and incident counters match what the bridge recorded.

use mssp_e2e::{Customer, CustomerSpec, World, get, send};
use mssp_sim::{Fault, FaultKind, Service};

/// Sum of every sample of `metric` whose labels include all of `labels`.
fn sample(metrics: &str, metric: &str, labels: &[(&str, &str)]) -> u64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(&format!("{metric}{{")))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .map(|l| {
            l.rsplit(' ')
                .next()
                .and_then(|n| n.parse::<f64>().ok())
                .unwrap() as u64
        })
        .sum()
}

async fn incidents(w: &World, c: &Customer) -> Vec<serde_json::Value> {
    let r = get(&w.host.url(&format!("/tenants/{}/v1/incidents", c.id)))
        .await
        .unwrap()
        .json();
    r["incidents"].as_array().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_match_what_the_upstreams_saw() {
    let w = World::start().await.unwrap();
    let acme = w.customer(
        "acme",
        CustomerSpec::default().with("containment", "isolate"),
    );
    let globex = w.customer("globex", CustomerSpec::default().without_callback());
    // ServiceNow throttles acme's first incident create once.
    w.sim.faults().add(
        Fault::times(
            Service::Snow,
            "/api/now/table/incident",
            1,
            FaultKind::TooManyRequests {
                retry_after_secs: 1,
                bare: false,
            },
        )
        .for_method("POST")
        .for_tenant(&acme.snow_user),
    );
    w.publish(&acme, 31, 10);
    w.publish(&globex, 32, 7);
    for _ in 0..2 {
        w.tick(&acme).await.unwrap();
        w.tick(&globex).await.unwrap();
    }
    // Analysts resolve every ticket; the bridge closes by callback or reconcile.
    for s in w.sim.inspect().snow_incidents() {
        w.sim
            .snow()
            .analyst_close(s.field("sys_id"), 6, "Solved (Permanently)", "done")
            .await
            .unwrap();
    }
    // Ticks until every incident is closed (isolation stops take the
    // simulator's isolation delay to complete).
    let mut ticks = 2;
    for _ in 0..40 {
        w.tick(&acme).await.unwrap();
        w.tick(&globex).await.unwrap();
        ticks += 1;
        let mut open = 0;
        for c in [&acme, &globex] {
            open += incidents(&w, c)
                .await
                .iter()
                .filter(|i| i["state"] != "closed")
                .count();
        }
        if open == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }

    let metrics = get(&w.host.url("/metrics")).await.unwrap().text();
    let counts = w.sim.inspect().request_counts();
    for c in [&acme, &globex] {
        let t = c.id.as_str();
        let host_side = |service| {
            sample(
                &metrics,
                "mssp_upstream_requests_total",
                &[("tenant", t), ("service", service)],
            )
        };
        assert!(counts.tenant(Service::Amp, &c.amp_client_id) > 0);
        assert_eq!(
            host_side("amp"),
            counts.tenant(Service::Amp, &c.amp_client_id),
            "{t}: Secure Endpoint requests"
        );
        assert_eq!(
            host_side("xdr"),
            counts.tenant(Service::XdrAuth, &c.xdr_client_id)
                + counts.tenant(Service::XdrApi, &c.xdr_client_id),
            "{t}: XDR requests (token host + CTIA)"
        );
        assert_eq!(
            host_side("snow"),
            counts.tenant(Service::Snow, &c.snow_user),
            "{t}: ServiceNow requests"
        );
        assert_eq!(
            sample(
                &metrics,
                "mssp_upstream_requests_total",
                &[
                    ("tenant", t),
                    ("service", "snow"),
                    ("outcome", "RateLimited")
                ]
            ),
            u64::from(c.id == "acme"),
            "{t}: the one 429 is counted as rate limited"
        );
        assert_eq!(
            sample(
                &metrics,
                "mssp_upstream_failed_calls_total",
                &[("tenant", t), ("service", "snow")]
            ),
            u64::from(c.id == "acme"),
            "{t}: the guest reports the one 429 as a failed ServiceNow call"
        );

        let recorded = incidents(&w, c).await;
        let opened = w.snow_incidents_of(c).len() as u64;
        assert!(opened > 0);
        assert_eq!(
            sample(&metrics, "mssp_incidents_opened_total", &[("tenant", t)]),
            opened,
            "{t}: one ServiceNow incident per incident opened"
        );
        assert_eq!(w.xdr_incidents_of(c).len() as u64, opened);
        let closed = recorded.iter().filter(|i| i["state"] == "closed").count() as u64;
        assert_eq!(closed, opened, "{t}: every incident closed");
        // globex's tickets are closed by the reconcile poll inside ticks,
        // acme's by the signed callback: both are counted.
        assert_eq!(
            sample(&metrics, "mssp_incidents_closed_total", &[("tenant", t)]),
            closed
        );
        let events: u64 = recorded.iter().map(|i| i["events"].as_u64().unwrap()).sum();
        assert_eq!(
            sample(&metrics, "mssp_events_seen_total", &[("tenant", t)]),
            events,
            "{t}: every event taken in belongs to one incident"
        );
        assert_eq!(
            sample(
                &metrics,
                "mssp_ticks_total",
                &[("tenant", t), ("outcome", "Ok")]
            ),
            ticks
        );
        assert_eq!(
            sample(
                &metrics,
                "mssp_tick_duration_seconds_count",
                &[("tenant", t)]
            ),
            ticks
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incidents_closed_by_signed_callback_are_counted() {
    let w = World::start().await.unwrap();
    let acme = w.customer("acme", CustomerSpec::default());
    w.publish(&acme, 41, 6);
    w.tick(&acme).await.unwrap();
    w.tick(&acme).await.unwrap();
    for s in w.snow_incidents_of(&acme) {
        w.sim
            .snow()
            .analyst_close(s.field("sys_id"), 6, "Solved (Permanently)", "done")
            .await
            .unwrap();
    }
    w.tick(&acme).await.unwrap();
    let closed = incidents(&w, &acme)
        .await
        .iter()
        .filter(|i| i["state"] == "closed")
        .count() as u64;
    assert!(closed > 0);
    let metrics = get(&w.host.url("/metrics")).await.unwrap().text();
    assert_eq!(
        sample(
            &metrics,
            "mssp_incidents_closed_total",
            &[("tenant", "acme")]
        ),
        closed
    );
}

/// The host counts what the component counts, because it reads the component's own
/// counters as data: events a backfill replays are events seen on `/metrics` exactly
/// as in the component's status counters (before the contract the host counted only
/// the live poll's new events from a log line).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backfilled_events_count_on_metrics_as_in_the_components_counters() {
    let w = World::start().await.unwrap();
    let acme = w.customer("acme", CustomerSpec::default());
    w.publish(&acme, 41, 6);
    w.tick(&acme).await.unwrap();
    let since = (mssp_e2e::unix_now() - 86_400).to_string();
    let asked = send(
        "POST",
        &w.host.url("/tenants/acme/v1/backfill"),
        &[("authorization", &format!("Bearer {}", acme.tick_token))],
        format!(r#"{{"since": {since}}}"#),
    )
    .await
    .unwrap();
    assert_eq!(asked.status, 202, "{}", asked.text());
    for _ in 0..3 {
        w.tick(&acme).await.unwrap();
    }
    let status = get(&w.host.url("/tenants/acme/v1/status"))
        .await
        .unwrap()
        .json();
    let counted = status["counters"]["events_seen"].as_u64().unwrap();
    let backfilled = status["backfill"]["events_seen"].as_u64().unwrap();
    assert!(
        status["backfill"]["done"] == true && backfilled > 0,
        "the backfill read events: {status}"
    );
    let metrics = get(&w.host.url("/metrics")).await.unwrap().text();
    assert_eq!(
        sample(&metrics, "mssp_events_seen_total", &[("tenant", "acme")]),
        counted,
        "{metrics}"
    );
}
