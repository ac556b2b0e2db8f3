//! Crash recovery, end to end: the bridge traps right after persisting each
//! of its states (`debug_crash_after`, guest/README.md), and the next tick
//! resumes. Whatever the point, every detection ends with exactly one XDR
//! and one ServiceNow incident, one isolation per host, and every host is
//! released once ServiceNow closes its incident.

use std::collections::BTreeSet;
use std::time::Duration;

use mssp_e2e::{Customer, CustomerSpec, THREAT_DETECTED, World};
use mssp_sim::IsolationStatus;

/// Detections, one per computer.
const DETECTIONS: usize = 3;
/// Ticks allowed to get past the crashes (one per incident) and finish.
const MAX_TICKS: usize = 3 * DETECTIONS + 3;

/// Runs ticks until one succeeds with every incident in `state`; returns how
/// many ticks trapped.
async fn tick_until(w: &World, c: &Customer, state: &str) -> usize {
    let mut traps = 0;
    for _ in 0..MAX_TICKS {
        match w.tick(c).await {
            Err(_) => traps += 1,
            Ok(()) => {
                let list = w.bridge_incidents(c).await;
                if list.len() == DETECTIONS && list.iter().all(|i| i["state"] == state) {
                    return traps;
                }
            }
        }
    }
    let list = w.bridge_incidents(c).await;
    panic!("incidents not all {state} after {MAX_TICKS} ticks: {list:#?}");
}

/// Waits (bounded) until no computer of the customer is mid-transition.
async fn isolation_settled(w: &World, c: &Customer) {
    for _ in 0..50 {
        let busy = c.computers.iter().any(|g| {
            matches!(
                w.computer(c, g).isolation,
                IsolationStatus::PendingStart | IsolationStatus::PendingStop
            )
        });
        if !busy {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Given detections on three isolating hosts and a crash after `point`:
/// ticks resume until all are open, ServiceNow closes them, ticks resume
/// until all are closed; then everything happened exactly once.
async fn crash_after(point: &str) {
    let w = World::start_with_crash_hooks().await.unwrap();
    let c = w.customer(
        &format!("crash-{}", point.replace('_', "-")),
        CustomerSpec {
            computers: DETECTIONS,
            ..CustomerSpec::default()
        }
        .with("containment", "isolate")
        .with("debug_crash_after", point),
    );
    let mut groups = BTreeSet::new();
    for guid in &c.computers {
        let events = w.detection(&c, guid, &[THREAT_DETECTED]);
        groups.insert(mssp_e2e::group_of_event(&events[0]));
        w.sim.amp().push_events(&c.amp_client_id, events).unwrap();
    }

    let mut traps = tick_until(&w, &c, "open").await;

    assert_eq!(groups.len(), DETECTIONS);
    assert_eq!(
        w.groups_upstream(&c),
        (groups.clone(), groups.clone()),
        "one XDR and one ServiceNow incident per detection"
    );
    assert_eq!(
        w.sim.xdr().sightings().len(),
        DETECTIONS,
        "observables attached once per incident"
    );
    isolation_settled(&w, &c).await;
    for guid in &c.computers {
        let host = w.computer(&c, guid);
        assert_eq!(host.isolation, IsolationStatus::Isolated, "{guid}");
        assert_eq!(host.isolation_requests, 1, "isolated once: {guid}");
    }

    // ServiceNow closes every incident (the callback may trap too); the
    // reconcile poll finishes whatever a trap left.
    for i in &w.snow_incidents_of(&c) {
        w.sim
            .snow()
            .analyst_close(i.sys_id(), 7, "Solved (Permanently)", "done")
            .await
            .unwrap();
    }
    traps += tick_until(&w, &c, "closed").await;
    let callbacks_trapped = w
        .sim
        .snow()
        .callbacks()
        .iter()
        .filter(|r| r.outcome.status() != Some(200))
        .count();
    assert!(
        traps + callbacks_trapped >= 1,
        "the crash after {point} never happened"
    );

    isolation_settled(&w, &c).await;
    for guid in &c.computers {
        let host = w.computer(&c, guid);
        assert_eq!(
            host.isolation,
            IsolationStatus::NotIsolated,
            "released: {guid}"
        );
        assert_eq!(host.isolation_requests, 2, "one start and one stop: {guid}");
    }
    for i in w.xdr_incidents_of(&c) {
        assert_eq!(i["status"], "Closed");
        let refs = i["external_references"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        assert_eq!(
            refs.iter()
                .filter(|r| r["source_name"] == "ServiceNow")
                .count(),
            1,
            "one ServiceNow reference: {refs:?}"
        );
    }
    assert_eq!(w.xdr_incidents_of(&c).len(), DETECTIONS);
    assert_eq!(w.snow_incidents_of(&c).len(), DETECTIONS);
}

macro_rules! crash_points {
    ($($name:ident => $point:literal,)*) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            crash_after($point).await;
        }
    )*};
}

crash_points! {
    a_crash_after_events_are_taken_in_loses_and_duplicates_nothing => "new",
    a_crash_after_xdr_creating_loses_and_duplicates_nothing => "xdr_creating",
    a_crash_after_the_xdr_create_was_answered_loses_and_duplicates_nothing => "xdr_create_sent",
    a_crash_after_xdr_created_loses_and_duplicates_nothing => "xdr_created",
    a_crash_after_containing_loses_and_duplicates_nothing => "containing",
    a_crash_after_contained_loses_and_duplicates_nothing => "contained",
    a_crash_after_snow_creating_loses_and_duplicates_nothing => "snow_creating",
    a_crash_after_the_snow_create_was_answered_loses_and_duplicates_nothing => "snow_create_sent",
    a_crash_after_open_loses_and_duplicates_nothing => "open",
    a_crash_after_closing_loses_and_duplicates_nothing => "closing",
    a_crash_after_closed_loses_and_duplicates_nothing => "closed",
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_servicenow_close_before_the_bridge_recorded_its_incident_open_is_finished_by_a_later_tick()
 {
    let w = World::start_with_crash_hooks().await.unwrap();
    let c = w.customer(
        "early-close",
        CustomerSpec::default().with("debug_crash_after", "snow_create_sent"),
    );
    let events = w.detection(&c, &c.computers[0], &[THREAT_DETECTED]);
    w.sim.amp().push_events(&c.amp_client_id, events).unwrap();
    assert!(w.tick(&c).await.is_err(), "the tick traps after the create");
    let snow = w.snow_incidents_of(&c);
    assert_eq!(snow.len(), 1, "the ServiceNow incident exists");
    let key = snow[0].field("correlation_id").to_string();
    assert_eq!(w.bridge_incident(&c, &key).await["state"], "snow_creating");

    // The analyst is quick: the incident is closed before the bridge knows it
    // created it.
    let outcome = w
        .sim
        .snow()
        .analyst_close(snow[0].sys_id(), 7, "Solved (Permanently)", "duplicate")
        .await
        .unwrap();
    assert_eq!(outcome.status(), Some(202), "{outcome:?}");

    for _ in 0..3 {
        w.tick(&c).await.expect("tick");
        if w.bridge_incident(&c, &key).await["state"] == "closed" {
            break;
        }
    }

    let record = w.bridge_incident(&c, &key).await;
    assert_eq!(record["state"], "closed", "{record:#}");
    assert_eq!(record["close"]["source"], "reconcile");
    assert_eq!(w.snow_incidents_of(&c).len(), 1, "found, not created again");
    let xdr = w.xdr_incidents_of(&c);
    assert_eq!(xdr.len(), 1);
    assert_eq!(xdr[0]["status"], "Closed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shipped_component_ignores_the_crash_hook() {
    // The component that ships is built without the `crash-hooks` feature:
    // a `debug_crash_after` left in a customer's configuration does nothing.
    let w = World::start().await.unwrap();
    let c = w.customer(
        "hook-ignored",
        CustomerSpec::default().with("debug_crash_after", "new"),
    );
    let events = w.detection(&c, &c.computers[0], &[THREAT_DETECTED]);
    w.sim.amp().push_events(&c.amp_client_id, events).unwrap();
    w.tick(&c).await.expect("the tick runs through");
    let list = w.bridge_incidents(&c).await;
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["state"], "open", "{list:#?}");
}
