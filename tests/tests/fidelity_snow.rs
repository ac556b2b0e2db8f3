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
    assert_eq!(
        requests(&w, Service::XdrApi, IMPORT),
        1,
        "one import in the tick"
    );
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
}

// ---------------------------------------------------------------------------------------
// Finding 6: ServiceNow states the bridge does not understand are said out loud.

/// Ticks once; the tick report from `/v1/status`.
async fn tick_report(w: &World, c: &Customer) -> Value {
    w.tick(c).await.expect("tick");
    status(w, c).await["last_tick"].clone()
}

fn warnings_naming(report: &Value, needle: &str) -> usize {
    report["warnings"].as_array().map_or(0, |a| {
        a.iter()
            .filter(|x| x.as_str().is_some_and(|t| t.contains(needle)))
            .count()
    })
}

/// The customer's incident keys and ServiceNow sys_ids after a tick, one per detection
/// published on `computers` (each its own detection), all open.
async fn open_incidents(w: &World, c: &Customer, computers: &[usize]) -> Vec<(String, String)> {
    for &i in computers {
        let events = w.detection(c, &c.computers[i], &[THREAT_DETECTED]);
        w.sim
            .amp()
            .push_events(&c.amp_client_id, events)
            .expect("push");
    }
    w.tick(c).await.expect("tick");
    let incidents = w.bridge_incidents(c).await;
    assert_eq!(incidents.len(), computers.len(), "{incidents:?}");
    incidents
        .iter()
        .map(|i| {
            assert_eq!(i["state"], "open", "{i}");
            (
                i["key"].as_str().unwrap_or_default().to_string(),
                i["snow_sys_id"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_a_custom_servicenow_state_9_the_bridge_warns_once_and_keeps_the_incident_open_until_close_states_names_it()
 {
    let w = World::start().await.unwrap();
    w.sim.snow().add_state_choice("9");
    let plain = w.customer("snowcustom", CustomerSpec::default());
    let nine = w.customer(
        "snownine",
        CustomerSpec::default().with("close_states", "6,7,8,9"),
    );
    let (key, sys_id) = open_incidents(&w, &plain, &[0]).await.remove(0);
    let (nine_key, nine_sys_id) = open_incidents(&w, &nine, &[0]).await.remove(0);
    w.sim
        .snow()
        .analyst_set_state(&sys_id, "9")
        .await
        .expect("state 9");
    w.sim
        .snow()
        .analyst_set_state(&nine_sys_id, "9")
        .await
        .expect("state 9");

    let report = tick_report(&w, &plain).await;
    assert_eq!(
        warnings_naming(&report, "state 9"),
        1,
        "one warning naming the state: {report}"
    );
    assert_eq!(warnings_naming(&report, "close_states"), 1, "{report}");
    assert_eq!(report["snow_unknown_states"], 1);
    let report = tick_report(&w, &plain).await;
    assert_eq!(warnings_naming(&report, "state 9"), 0, "not on every tick");
    let rec = w.bridge_incident(&plain, &key).await;
    assert_eq!(rec["state"], "open");
    let audits = rec["audit"].as_array().map_or(0, |a| {
        a.iter()
            .filter(|e| e["outcome"].as_str().is_some_and(|o| o.contains("state 9")))
            .count()
    });
    assert_eq!(audits, 1, "one audit entry: {rec}");
    assert_eq!(
        status(&w, &plain).await["counters"]["snow_unknown_states"],
        1
    );

    // Where close_states names 9, the same state closes the loop.
    w.tick(&nine).await.expect("tick");
    let rec = w.bridge_incident(&nine, &nine_key).await;
    assert_eq!(rec["state"], "closed", "{rec}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_a_ticket_closed_by_the_analyst_the_close_leaves_a_work_note_and_a_later_reopen_is_noticed_once()
 {
    let w = World::start().await.unwrap();
    let c = w.customer(
        "snowreopen",
        CustomerSpec::default().with("containment", "move"),
    );
    let incidents = open_incidents(&w, &c, &[0, 1]).await;
    let (key, sys_id) = incidents[0].clone();
    let notes_before = w.sim.snow().work_notes(&sys_id).len();

    // The analyst closes the first ticket; the business rule calls back.
    w.sim
        .snow()
        .analyst_close(&sys_id, 7, "Solved (Permanently)", "cleaned")
        .await
        .expect("close");
    w.tick(&c).await.expect("tick");
    let rec = w.bridge_incident(&c, &key).await;
    assert_eq!(rec["state"], "closed", "{rec}");
    let notes = w.sim.snow().work_notes(&sys_id);
    assert_eq!(notes.len(), notes_before + 1, "one closing note: {notes:?}");
    let close = &notes[notes.len() - 1].text;
    assert!(close.contains("XDR: XDR incident"), "XDR outcome: {close}");
    assert!(close.contains("closed"), "{close}");
    assert!(
        close.contains("Host: host moved back to group"),
        "host outcome: {close}"
    );
    assert!(
        audit_has(&rec, "close", "closing work note written"),
        "{rec}"
    );

    // Re-opened by the analyst: noticed at the next tick (riding along with the
    // other, still open ticket's query), once, with a work note.
    let queries_before = requests(&w, Service::Snow, "GET /api/now/table/incident");
    w.sim.snow().analyst_reopen(&sys_id).await.expect("reopen");
    let report = tick_report(&w, &c).await;
    assert_eq!(report["snow_reopened"], 1, "{report}");
    assert_eq!(warnings_naming(&report, "re-opened"), 1, "{report}");
    assert_eq!(
        requests(&w, Service::Snow, "GET /api/now/table/incident") - queries_before,
        1,
        "no extra request: one reconcile query for open and recently closed"
    );
    let notes = w.sim.snow().work_notes(&sys_id);
    let last = &notes[notes.len() - 1].text;
    assert!(last.contains("does not reopen XDR"), "{last}");
    let report = tick_report(&w, &c).await;
    assert_eq!(report["snow_reopened"], 0, "noticed once");
    assert_eq!(w.sim.snow().work_notes(&sys_id).len(), notes.len());
    let rec = w.bridge_incident(&c, &key).await;
    assert!(audit_has(&rec, "reconcile", "re-opened"), "{rec}");
    assert_eq!(
        rec["state"], "closed",
        "the bridge reopens nothing by itself"
    );
    assert_eq!(status(&w, &c).await["counters"]["snow_reopened"], 1);
    let _ = unix_now();
}
