//! Issue 4 scenarios, end to end: simulators ← real HTTP → host → the real
//! bridge component. Each test reads "given … after one tick … then …" and
//! checks what an analyst would check: the XDR and ServiceNow incidents, the
//! work-note journal, the computers' group and isolation, the requests the
//! upstream systems received, and the bridge's own incident routes.
//!
//! Crash recovery and rate limits live in scenario_crash.rs and
//! scenario_ratelimit.rs.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use mssp_e2e::{
    Customer, CustomerSpec, QUARANTINE_FAILURE, THREAT_DETECTED, THREAT_QUARANTINED, World,
    audit_has, callback_body, group_of_event, group_of_key, unix_now, wanted_groups,
};
use mssp_sim::{ComputerSpec, IsolationStatus, Service};

/// The default event types plus Threat Quarantined, so that all three
/// events of a detection's life reach the bridge.
fn event_types_with_quarantine() -> String {
    mssp_sim::HIGH_PRIORITY_EVENT_TYPES
        .iter()
        .chain([THREAT_QUARANTINED].iter())
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// XDR incidents of a customer by incident key (their external id).
fn xdr_by_key(w: &World, c: &Customer) -> BTreeMap<String, serde_json::Value> {
    let mut out = BTreeMap::new();
    for i in w.xdr_incidents_of(c) {
        let key = i["external_ids"][0]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert!(
            out.insert(key.clone(), i).is_none(),
            "two XDR incidents carry {key}"
        );
    }
    out
}

/// The bridge's incidents: key → number of events taken in.
async fn bridge_event_counts(w: &World, c: &Customer) -> BTreeMap<String, u64> {
    w.bridge_incidents(c)
        .await
        .iter()
        .map(|i| {
            (
                group_of_key(i["key"].as_str().unwrap_or_default()).to_string(),
                i["events"].as_u64().unwrap_or_default(),
            )
        })
        .collect()
}

/// Waits (bounded) until the simulator finished a pending isolation change.
async fn settled_isolation(w: &World, c: &Customer, guid: &str) -> IsolationStatus {
    for _ in 0..50 {
        let status = w.computer(c, guid).isolation;
        if !matches!(
            status,
            IsolationStatus::PendingStart | IsolationStatus::PendingStop
        ) {
            return status;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    w.computer(c, guid).isolation
}

/// The only incident of a customer, as the bridge shows it.
async fn only_incident(w: &World, c: &Customer) -> serde_json::Value {
    let list = w.bridge_incidents(c).await;
    assert_eq!(list.len(), 1, "{list:?}");
    let key = list[0]["key"].as_str().unwrap().to_string();
    w.bridge_incident(c, &key).await
}

// ---------------------------------------------------------------------------
// Events: paging, duplicates, one detection's life

/// `n` high-priority events of the customer, picked from `pool` generated
/// ones (seeded), not yet published.
fn high_priority_events(
    w: &World,
    c: &Customer,
    seed: u64,
    pool: usize,
    n: usize,
) -> Vec<mssp_sim::Event> {
    let events: Vec<mssp_sim::Event> = w
        .sim
        .amp()
        .generate_events(&c.amp_client_id, seed, pool)
        .unwrap()
        .into_iter()
        .filter(|e| mssp_sim::HIGH_PRIORITY_EVENT_TYPES.contains(&e.event_type_id))
        .take(n)
        .collect();
    assert_eq!(events.len(), n, "the generator made enough detections");
    events
}

/// A customer with ten computers that looks back a day, with a backlog
/// upstream: 1,000 high-priority events of 90 detections (and some lone
/// ones) spread over several hours — two full pages and more of
/// `GET /v1/events`.
fn customer_with_backlog(w: &World, name: &str) -> (Customer, Vec<mssp_sim::Event>) {
    let c = w.customer(
        name,
        CustomerSpec {
            computers: 10,
            ..CustomerSpec::default()
        }
        .with("lookback_seconds", "86400"),
    );
    let mut events = high_priority_events(w, &c, 1234, 2600, 1000);
    for (i, e) in events.iter_mut().enumerate() {
        // Every tenth event stays a lone event; the others join one of 90
        // detections, so each detection has events on every page.
        if i % 10 != 0 {
            e.detection_id = Some(format!("61803521152447{:05}", i % 100));
        } else {
            e.detection_id = None;
        }
    }
    w.sim
        .amp()
        .push_events(&c.amp_client_id, events.clone())
        .unwrap();
    (c, events)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_1000_events_across_pages_and_new_ones_arriving_mid_paging_every_detection_becomes_one_incident_pair()
 {
    let w = World::start().await.unwrap();
    let (c, backlog) = customer_with_backlog(&w, "paging");
    // While the bridge pages, 40 new events arrive (newest first: they push
    // every offset down): some join known detections, some are new ones.
    let mut arriving = high_priority_events(&w, &c, 99, 120, 40);
    for e in arriving.iter_mut().step_by(2) {
        e.detection_id = Some("6180352115244700007".into());
    }
    w.sim
        .amp()
        .inject_after_events_requests(&c.amp_client_id, 1, arriving.clone())
        .unwrap();

    w.tick(&c).await.expect("tick");

    let expected = wanted_groups(&backlog);
    assert_eq!(expected.len(), 190, "90 detections and 100 lone events");
    let pages = w
        .sim
        .inspect()
        .request_counts()
        .route(Service::Amp, "GET /v1/events");
    assert!(pages >= 3, "1,000 events take more than two pages: {pages}");
    let (xdr, snow) = w.groups_upstream(&c);
    let all: BTreeMap<String, usize> = wanted_groups(
        &backlog
            .iter()
            .chain(arriving.iter())
            .cloned()
            .collect::<Vec<_>>(),
    );
    for g in expected.keys() {
        assert!(xdr.contains(g), "XDR incident missing for {g}");
        assert!(snow.contains(g), "ServiceNow incident missing for {g}");
    }
    for g in xdr.iter().chain(snow.iter()) {
        assert!(all.contains_key(g), "incident for an unknown group {g}");
    }

    // The next tick takes in whatever arrived meanwhile; then every group of
    // every event is there once, with every one of its events.
    w.tick(&c).await.expect("second tick");
    let (xdr, snow) = w.groups_upstream(&c);
    let groups: BTreeSet<String> = all.keys().cloned().collect();
    assert_eq!(xdr, groups, "one XDR incident per detection group");
    assert_eq!(snow, groups, "one ServiceNow incident per detection group");
    let counts = bridge_event_counts(&w, &c).await;
    let expected_counts: BTreeMap<String, u64> =
        all.iter().map(|(g, n)| (g.clone(), *n as u64)).collect();
    assert_eq!(
        counts, expected_counts,
        "every event taken in once, into its detection's incident"
    );

    // The cursor is past everything: a further tick reads one page and
    // creates nothing.
    w.sim.inspect().reset_request_counts();
    w.tick(&c).await.expect("third tick");
    let requests = w.sim.inspect().request_counts();
    assert_eq!(
        requests.route(Service::Amp, "GET /v1/events"),
        1,
        "{requests:?}"
    );
    assert_eq!(
        requests.route(Service::XdrApi, "POST /ctia/bundle/import"),
        0
    );
    assert_eq!(
        requests.route(Service::Snow, "POST /api/now/table/incident"),
        0
    );
    assert_eq!(w.xdr_incidents_of(&c).len(), groups.len());
    assert_eq!(w.snow_incidents_of(&c).len(), groups.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_a_backlog_and_events_arriving_between_every_page_request_the_backlog_is_still_read()
{
    let w = World::start().await.unwrap();
    let (c, backlog) = customer_with_backlog(&w, "busyorg");
    // A busy organisation: two new events land between any two requests,
    // far fewer than a page's overlap margin.
    let arriving = high_priority_events(&w, &c, 98, 200, 60);
    for (n, pair) in arriving.chunks(2).enumerate() {
        w.sim
            .amp()
            .inject_after_events_requests(&c.amp_client_id, n as u64 + 1, pair.to_vec())
            .unwrap();
    }

    for _ in 0..3 {
        w.tick(&c).await.expect("tick");
    }

    let (xdr, snow) = w.groups_upstream(&c);
    for g in wanted_groups(&backlog).keys() {
        assert!(xdr.contains(g), "XDR incident missing for {g}");
        assert!(snow.contains(g), "ServiceNow incident missing for {g}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_the_same_events_delivered_twice_nothing_is_created_or_noted_twice() {
    let w = World::start().await.unwrap();
    let c = w.customer("dupes", CustomerSpec::default());
    let events = w.publish(&c, 7, 40);
    let groups = wanted_groups(&events);
    w.tick(&c).await.expect("tick");
    let journal_sizes = |w: &World| -> Vec<usize> {
        w.snow_incidents_of(&c)
            .iter()
            .map(|i| i.work_notes.len())
            .collect()
    };
    let notes_before = journal_sizes(&w);
    let xdr_before = w.xdr_incidents_of(&c);

    // Secure Endpoint lists every event a second time (a re-delivery), and the
    // next query window overlaps the previous one.
    w.sim
        .amp()
        .push_events(&c.amp_client_id, events.clone())
        .unwrap();
    w.sim.inspect().reset_request_counts();
    w.tick(&c).await.expect("tick over duplicates");
    w.tick(&c).await.expect("tick over the overlap");

    let (xdr, snow) = w.groups_upstream(&c);
    let expected: BTreeSet<String> = groups.keys().cloned().collect();
    assert_eq!(xdr, expected);
    assert_eq!(snow, expected);
    assert_eq!(
        journal_sizes(&w),
        notes_before,
        "no work note for a re-delivered event"
    );
    assert_eq!(
        w.xdr_incidents_of(&c),
        xdr_before,
        "no XDR update for a re-delivered event"
    );
    let requests = w.sim.inspect().request_counts();
    assert_eq!(requests.service(Service::XdrApi), 0, "{requests:?}");
    assert_eq!(
        requests.route(Service::Snow, "POST /api/now/table/incident")
            + requests.route(Service::Snow, "PATCH /api/now/table/incident/{sys_id}"),
        0,
        "{requests:?}"
    );
    let counts = bridge_event_counts(&w, &c).await;
    for (g, n) in &groups {
        assert_eq!(
            counts.get(g),
            Some(&(*n as u64)),
            "events of {g} counted once"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_detected_quarantined_and_failed_events_of_one_detection_one_tick_opens_one_incident_pair()
 {
    let w = World::start().await.unwrap();
    let c = w.customer(
        "chain",
        CustomerSpec::default().with("event_types", &event_types_with_quarantine()),
    );
    let guid = c.computers[0].clone();
    let chain = w.detection(
        &c,
        &guid,
        &[THREAT_DETECTED, THREAT_QUARANTINED, QUARANTINE_FAILURE],
    );
    w.sim
        .amp()
        .push_events(&c.amp_client_id, chain.clone())
        .unwrap();

    w.tick(&c).await.expect("tick");

    let xdr = w.xdr_incidents_of(&c);
    let snow = w.snow_incidents_of(&c);
    assert_eq!(xdr.len(), 1, "one XDR incident for the detection");
    assert_eq!(snow.len(), 1, "one ServiceNow incident for the detection");
    let description = xdr[0]["description"].as_str().unwrap_or_default();
    for e in &chain {
        assert!(
            description.contains(&format!("event {}", e.id)),
            "the XDR incident lists event {}",
            e.id
        );
    }
    assert_eq!(snow[0].work_notes.len(), 1, "only the opening work note");
    let record = only_incident(&w, &c).await;
    assert_eq!(record["state"], "open");
    assert_eq!(record["event_ids"].as_array().map(Vec::len), Some(3));
    assert_eq!(
        group_of_key(record["key"].as_str().unwrap()),
        group_of_event(&chain[0])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_an_open_incident_a_later_event_of_its_detection_becomes_a_work_note_and_an_xdr_update_and_after_the_close_reopens_nothing()
 {
    let w = World::start().await.unwrap();
    let c = w.customer(
        "later",
        CustomerSpec::default().with("event_types", &event_types_with_quarantine()),
    );
    let guid = c.computers[1].clone();
    let mut chain = w.detection(
        &c,
        &guid,
        &[
            THREAT_DETECTED,
            THREAT_QUARANTINED,
            QUARANTINE_FAILURE,
            QUARANTINE_FAILURE,
        ],
    );
    let after_close = chain.pop().unwrap();
    let third = chain.pop().unwrap();
    w.sim
        .amp()
        .push_events(&c.amp_client_id, chain.clone())
        .unwrap();
    w.tick(&c).await.expect("first tick");
    let snow = w.snow_incidents_of(&c);
    assert_eq!(snow.len(), 1);
    let notes_before = snow[0].work_notes.len();

    // The quarantine fails a little later.
    w.sim
        .amp()
        .push_events(&c.amp_client_id, vec![third.clone()])
        .unwrap();
    w.tick(&c).await.expect("tick with the third event");

    let xdr = w.xdr_incidents_of(&c);
    let snow = w.snow_incidents_of(&c);
    assert_eq!(xdr.len(), 1, "no second XDR incident");
    assert_eq!(snow.len(), 1, "no second ServiceNow incident");
    assert_eq!(
        snow[0].work_notes.len(),
        notes_before + 1,
        "one work note for the later event"
    );
    let note = &snow[0].work_notes.last().unwrap().text;
    assert!(note.contains(&third.id.to_string()), "{note}");
    assert!(
        xdr[0]["description"]
            .as_str()
            .unwrap_or_default()
            .contains(&format!("event {}", third.id)),
        "the XDR description was updated"
    );
    assert_eq!(
        snow[0].state(),
        "1",
        "ServiceNow incident stays new, not re-opened"
    );
    let record = only_incident(&w, &c).await;
    assert_eq!(record["state"], "open");
    assert!(audit_has(
        &record,
        "follow_up",
        "work note added for 1 later event"
    ));
    assert!(audit_has(
        &record,
        "follow_up",
        "XDR incident description updated"
    ));

    // Closed in ServiceNow; then one more event of the same detection.
    let outcome = w
        .sim
        .snow()
        .analyst_close(snow[0].sys_id(), 7, "Solved (Permanently)", "done")
        .await
        .unwrap();
    assert_eq!(outcome.status(), Some(200), "{outcome:?}");
    w.sim
        .amp()
        .push_events(&c.amp_client_id, vec![after_close.clone()])
        .unwrap();
    let notes_closed = w.snow_incidents_of(&c)[0].work_notes.len();
    w.tick(&c).await.expect("tick after the close");

    assert_eq!(w.xdr_incidents_of(&c).len(), 1);
    assert_eq!(w.snow_incidents_of(&c).len(), 1);
    // The close adds one work note (what it did in XDR and to the host); the event
    // that came after the close adds none.
    let notes = &w.snow_incidents_of(&c)[0].work_notes;
    assert_eq!(notes.len(), notes_closed + 1);
    assert!(
        notes
            .iter()
            .any(|n| n.text.contains("the bridge closed the loop")),
        "{notes:?}"
    );
    assert_eq!(w.xdr_incidents_of(&c)[0]["status"], "Closed");
    let record = only_incident(&w, &c).await;
    assert_eq!(record["state"], "closed");
    assert!(audit_has(
        &record,
        "event",
        &format!(
            "event {} (Quarantine Failure) added after close; not reopened",
            after_close.id
        )
    ));
}

// ---------------------------------------------------------------------------
// Containment policies

/// Publishes one detection on `guid` and runs one tick.
async fn one_detection_on(w: &World, c: &Customer, guid: &str) -> Vec<mssp_sim::Event> {
    let events = w.detection(c, guid, &[THREAT_DETECTED]);
    w.sim
        .amp()
        .push_events(&c.amp_client_id, events.clone())
        .unwrap();
    w.tick(c).await.expect("tick");
    events
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_containment_none_the_host_is_left_untouched() {
    let w = World::start().await.unwrap();
    let c = w.customer("nocontain", CustomerSpec::default());
    let guid = c.computers[0].clone();
    one_detection_on(&w, &c, &guid).await;

    let host = w.computer(&c, &guid);
    assert_eq!(host.group_history, vec![c.default_group.clone()]);
    assert_eq!(host.isolation, IsolationStatus::NotIsolated);
    assert_eq!(host.isolation_requests, 0);
    let requests = w.sim.inspect().request_counts();
    assert_eq!(
        requests.route(Service::Amp, "PATCH /v1/computers/{guid}"),
        0
    );
    assert_eq!(
        requests.route(Service::Amp, "PUT /v1/computers/{guid}/isolation"),
        0
    );
    let record = only_incident(&w, &c).await;
    assert_eq!(record["state"], "open");
    assert!(audit_has(
        &record,
        "contained",
        "containment policy is none"
    ));
    assert_eq!(w.snow_incidents_of(&c).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_containment_move_the_host_goes_to_triage_and_back_on_close() {
    let w = World::start().await.unwrap();
    let c = w.customer("mover", CustomerSpec::default().with("containment", "move"));
    let guid = c.computers[0].clone();
    one_detection_on(&w, &c, &guid).await;

    let host = w.computer(&c, &guid);
    assert_eq!(host.group_guid, c.triage_group, "host moved to triage");
    assert_eq!(host.isolation, IsolationStatus::NotIsolated);
    let record = only_incident(&w, &c).await;
    assert_eq!(record["containment"]["policy"], "move");
    assert_eq!(
        record["containment"]["original_group_guid"].as_str(),
        Some(c.default_group.as_str()),
        "original group recorded"
    );
    assert_eq!(record["containment"]["moved"], true);
    let snow = w.snow_incidents_of(&c);
    assert!(
        snow[0].work_notes[0].text.contains("moved to triage group"),
        "the first work note tells the analyst: {}",
        snow[0].work_notes[0].text
    );

    let outcome = w
        .sim
        .snow()
        .analyst_close(snow[0].sys_id(), 6, "Solved (Permanently)", "cleaned")
        .await
        .unwrap();
    assert_eq!(outcome.status(), Some(200), "{outcome:?}");

    let host = w.computer(&c, &guid);
    assert_eq!(
        host.group_history,
        vec![
            c.default_group.clone(),
            c.triage_group.clone(),
            c.default_group.clone()
        ],
        "moved back to its original group"
    );
    // The callback does the host steps; the XDR close comes with the next tick
    // (one batched read of every XDR incident closing in it).
    w.tick(&c).await.expect("tick after the callback");
    let key = record["key"].as_str().unwrap();
    let record = w.bridge_incident(&c, key).await;
    assert_eq!(record["state"], "closed");
    assert!(audit_has(&record, "close", "host moved back to group"));
    assert_eq!(w.xdr_incidents_of(&c)[0]["status"], "Closed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_containment_isolate_the_host_is_isolated_with_a_recorded_unlock_code_and_released_on_close()
 {
    let w = World::start().await.unwrap();
    let c = w.customer(
        "isolator",
        CustomerSpec::default().with("containment", "isolate"),
    );
    let guid = c.computers[2].clone();
    one_detection_on(&w, &c, &guid).await;

    assert_eq!(
        settled_isolation(&w, &c, &guid).await,
        IsolationStatus::Isolated
    );
    let host = w.computer(&c, &guid);
    assert_eq!(host.isolation_requests, 1);
    let unlock = host.unlock_code.clone().expect("an unlock code was set");
    assert!(!unlock.is_empty() && unlock.len() <= 24 && !unlock.contains(' '));
    let record = only_incident(&w, &c).await;
    assert_eq!(record["containment"]["isolated"], true);
    assert_eq!(record["containment"]["unlock_code_recorded"], true);
    assert!(
        !record.to_string().contains(&unlock),
        "the route shows that the code is recorded, never the code"
    );

    let sys_id = w.snow_incidents_of(&c)[0].sys_id().to_string();
    let outcome = w
        .sim
        .snow()
        .analyst_close(&sys_id, 7, "Solved (Permanently)", "reimaged")
        .await
        .unwrap();
    assert_eq!(outcome.status(), Some(200), "{outcome:?}");

    assert_eq!(
        settled_isolation(&w, &c, &guid).await,
        IsolationStatus::NotIsolated,
        "isolation stopped on close"
    );
    assert_eq!(
        w.computer(&c, &guid).isolation_requests,
        2,
        "one start, one stop"
    );
    // The callback does the host steps; the XDR close comes with the next tick
    // (one batched read of every XDR incident closing in it).
    w.tick(&c).await.expect("tick after the callback");
    let key = record["key"].as_str().unwrap();
    let record = w.bridge_incident(&c, key).await;
    assert_eq!(record["state"], "closed");
    assert!(audit_has(&record, "close", "isolation stopped"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_a_host_whose_policy_forbids_isolation_the_incident_still_opens_with_a_clear_audit_entry()
 {
    let w = World::start().await.unwrap();
    let c = w.customer(
        "locked",
        CustomerSpec::default().with("containment", "isolate"),
    );
    let guid = "locked-guid-kiosk";
    let mut spec = ComputerSpec::new(guid, "LOCKED-KIOSK01", &c.default_group);
    spec.isolation_allowed = false;
    w.sim.amp().add_computer(&c.amp_client_id, spec).unwrap();
    one_detection_on(&w, &c, guid).await;

    let host = w.computer(&c, guid);
    assert_eq!(host.isolation, IsolationStatus::NotIsolated);
    assert_eq!(host.isolation_requests, 0);
    assert_eq!(w.xdr_incidents_of(&c).len(), 1, "XDR incident opened");
    let snow = w.snow_incidents_of(&c);
    assert_eq!(snow.len(), 1, "ServiceNow incident opened");
    assert!(
        snow[0].work_notes[0]
            .text
            .contains("isolation not available"),
        "{}",
        snow[0].work_notes[0].text
    );
    let record = only_incident(&w, &c).await;
    assert_eq!(record["state"], "open");
    assert!(audit_has(
        &record,
        "contained",
        "isolation not available for this host (policy or OS)"
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_containment_limited_to_some_event_types_and_severities_only_those_hosts_are_isolated()
 {
    let w = World::start().await.unwrap();
    let c = w.customer(
        "picky",
        CustomerSpec {
            computers: 4,
            ..CustomerSpec::default()
        }
        .with("containment", "isolate")
        .with("containment_event_types", &QUARANTINE_FAILURE.to_string())
        .with("containment_severities", "High,Critical"),
    );
    let cases = [
        // (computer, event types, severity, isolated?)
        (0, vec![THREAT_DETECTED], "Critical", false),
        (
            1,
            vec![THREAT_DETECTED, QUARANTINE_FAILURE],
            "Critical",
            true,
        ),
        (2, vec![THREAT_DETECTED, QUARANTINE_FAILURE], "Low", false),
        (3, vec![QUARANTINE_FAILURE], "High", true),
    ];
    for (i, types, severity, _) in &cases {
        let mut events = w.detection(&c, &c.computers[*i], types);
        for e in &mut events {
            e.severity = Some((*severity).to_string());
        }
        w.sim.amp().push_events(&c.amp_client_id, events).unwrap();
    }

    w.tick(&c).await.expect("tick");

    assert_eq!(
        w.xdr_incidents_of(&c).len(),
        4,
        "every detection opens an incident"
    );
    assert_eq!(w.snow_incidents_of(&c).len(), 4);
    for (i, types, severity, isolated) in &cases {
        let guid = &c.computers[*i];
        let host = w.computer(&c, guid);
        assert_eq!(
            host.isolation_requests,
            u32::from(*isolated),
            "{types:?} {severity} on {guid}"
        );
    }
    let mut reasons = Vec::new();
    for i in w.bridge_incidents(&c).await {
        let record = w.bridge_incident(&c, i["key"].as_str().unwrap()).await;
        assert_eq!(record["state"], "open");
        for e in record["audit"].as_array().unwrap() {
            if e["step"] == "contained" {
                reasons.push(e["outcome"].as_str().unwrap().to_string());
            }
        }
    }
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("event types outside containment_event_types")),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("severity outside containment_severities")),
        "{reasons:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_an_isolation_that_never_finished_starting_a_close_stops_it_once_possible() {
    let w = World::start().await.unwrap();
    let c = w.customer(
        "slowiso",
        CustomerSpec::default().with("containment", "isolate"),
    );
    let guid = c.computers[0].clone();
    // The connector is slow: isolation stays pending_start for a long time.
    w.sim.amp().set_isolation_delay(Duration::from_secs(3600));
    one_detection_on(&w, &c, &guid).await;
    assert_eq!(
        w.computer(&c, &guid).isolation,
        IsolationStatus::PendingStart
    );

    // The analyst closes it while the isolation is still starting.
    let sys_id = w.snow_incidents_of(&c)[0].sys_id().to_string();
    let outcome = w
        .sim
        .snow()
        .analyst_close(&sys_id, 7, "Solved (Permanently)", "false alarm")
        .await
        .unwrap();
    assert!(matches!(outcome.status(), Some(200 | 202)), "{outcome:?}");
    w.tick(&c)
        .await
        .expect("tick while isolation is still starting");
    let record = only_incident(&w, &c).await;
    assert_eq!(
        record["state"], "closing",
        "not closed while the host may still isolate"
    );
    assert!(audit_has(&record, "close", "pending_start"));

    // The connector catches up; the next tick stops the isolation.
    w.sim.amp().set_isolation_delay(Duration::from_millis(100));
    assert_eq!(
        settled_isolation(&w, &c, &guid).await,
        IsolationStatus::Isolated
    );
    w.tick(&c).await.expect("tick once isolation completed");

    assert_eq!(
        settled_isolation(&w, &c, &guid).await,
        IsolationStatus::NotIsolated,
        "the host ends not isolated"
    );
    let record = only_incident(&w, &c).await;
    assert_eq!(record["state"], "closed", "no stuck state");
    assert!(audit_has(&record, "close", "isolation stopped"));
    assert_eq!(w.xdr_incidents_of(&c)[0]["status"], "Closed");
}

// ---------------------------------------------------------------------------
// Close-back: the signed callback, and the reconcile poll

/// Customer `a` with open incidents (and customer `b` beside it).
async fn two_customers_with_open_incidents(w: &World) -> (Customer, Customer) {
    let a = w.customer("alpha", CustomerSpec::default());
    let b = w.customer("bravo", CustomerSpec::default());
    w.publish(&a, 11, 20);
    w.publish(&b, 12, 20);
    w.tick(&a).await.expect("tick a");
    w.tick(&b).await.expect("tick b");
    assert!(!w.snow_incidents_of(&a).is_empty());
    (a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_bad_callbacks_the_bridge_refuses_each_and_changes_nothing_upstream() {
    let w = World::start().await.unwrap();
    let (a, b) = two_customers_with_open_incidents(&w).await;
    let target = w.snow_incidents_of(&a)[0].clone();
    let key = target.field("correlation_id").to_string();
    let body = callback_body(target.sys_id(), target.field("number"), "7", &key);
    let now = unix_now();
    let forged_key = "Zm9yZ2VkLWtleS1vZi1ub2JvZHktYXQtYWxs"; // valid base64, wrong key
    let before = w.upstream_state();
    let records_before = w.bridge_incidents(&a).await;

    let forged = w.send_callback("alpha", forged_key, now, &body).await;
    assert_eq!(forged.status, 401, "forged: {}", forged.text());

    let other_customer = w.send_callback("alpha", &b.callback_key, now, &body).await;
    assert_eq!(
        other_customer.status,
        401,
        "B's key on A's route: {}",
        other_customer.text()
    );

    let stale = w
        .send_callback("alpha", &a.callback_key, now - 900, &body)
        .await;
    assert_eq!(stale.status, 401, "stale: {}", stale.text());

    let unknown_body = callback_body(
        "0123456789abcdef0123456789abcdef",
        "INC0099999",
        "7",
        "amp-00000000-d42",
    );
    let unknown = w
        .send_callback("alpha", &a.callback_key, now, &unknown_body)
        .await;
    assert_eq!(unknown.status, 404, "unknown incident: {}", unknown.text());

    let b_incident = w.snow_incidents_of(&b)[0].clone();
    let b_body = callback_body(
        b_incident.sys_id(),
        b_incident.field("number"),
        "7",
        b_incident.field("correlation_id"),
    );
    let cross = w
        .send_callback("alpha", &a.callback_key, now, &b_body)
        .await;
    assert_eq!(
        cross.status,
        404,
        "B's incident on A's route: {}",
        cross.text()
    );

    let not_closing = callback_body(target.sys_id(), target.field("number"), "2", &key);
    let in_progress = w
        .send_callback("alpha", &a.callback_key, now, &not_closing)
        .await;
    assert_eq!(
        in_progress.status,
        200,
        "not a closing state: {}",
        in_progress.text()
    );

    let malformed = w
        .send_callback(
            "alpha",
            &a.callback_key,
            now,
            "{\"sys_id\": \"abc\", \"state\": ",
        )
        .await;
    assert_eq!(malformed.status, 400, "malformed: {}", malformed.text());
    let no_sys_id = w
        .send_callback("alpha", &a.callback_key, now, "{\"state\":\"7\"}")
        .await;
    assert_eq!(no_sys_id.status, 400, "no sys_id: {}", no_sys_id.text());

    let unsigned = mssp_e2e::send(
        "POST",
        &w.host.url("/tenants/alpha/v1/servicenow/events"),
        &[("content-type", "application/json")],
        body.clone(),
    )
    .await
    .unwrap();
    assert_eq!(unsigned.status, 401, "unsigned: {}", unsigned.text());

    assert_eq!(
        w.upstream_state(),
        before,
        "no upstream system saw anything"
    );
    assert_eq!(
        w.bridge_incidents(&a).await,
        records_before,
        "no incident changed"
    );
    assert_eq!(
        w.bridge_incident(&a, &key).await["state"],
        "open",
        "the targeted incident is still open"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_a_valid_callback_replayed_the_second_changes_nothing() {
    let w = World::start().await.unwrap();
    let (a, _b) = two_customers_with_open_incidents(&w).await;
    let target = w.snow_incidents_of(&a)[0].clone();
    let outcome = w
        .sim
        .snow()
        .analyst_close(target.sys_id(), 7, "Solved (Permanently)", "done")
        .await
        .unwrap();
    assert_eq!(outcome.status(), Some(200), "{outcome:?}");
    let key = target.field("correlation_id").to_string();
    // The callback does the host steps; the XDR close comes with the next tick
    // (one batched read of every XDR incident closing in it).
    w.tick(&a).await.expect("tick after the callback");
    assert_eq!(w.bridge_incident(&a, &key).await["state"], "closed");
    let xdr_key = xdr_by_key(&w, &a);
    assert_eq!(xdr_key[&key]["status"], "Closed");

    // The very same request (headers and body) arrives again.
    let sent = w.sim.snow().callbacks().last().cloned().unwrap();
    let headers: Vec<(&str, &str)> = sent
        .headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let before = w.upstream_state();
    let record_before = w.bridge_incident(&a, &key).await;
    let replay = mssp_e2e::send("POST", &sent.url, &headers, sent.body.clone())
        .await
        .unwrap();

    assert_eq!(replay.status, 200, "idempotent: {}", replay.text());
    assert_eq!(w.upstream_state(), before, "no extra upstream write");
    assert_eq!(w.bridge_incident(&a, &key).await, record_before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_a_stale_callback_it_is_refused_and_the_reconcile_poll_closes_the_incident_anyway() {
    let w = World::start().await.unwrap();
    let c = w.customer("skewed", CustomerSpec::default());
    // ServiceNow's clock runs ten minutes behind.
    w.sim.snow().set_callback(
        &c.snow_user,
        mssp_sim::CallbackSpec {
            timestamp_skew_secs: -600,
            ..mssp_sim::CallbackSpec::new(
                w.host.url("/tenants/skewed/v1/servicenow/events"),
                &c.callback_key,
            )
        },
    );
    one_detection_on(&w, &c, &c.computers[0]).await;
    let sys_id = w.snow_incidents_of(&c)[0].sys_id().to_string();
    let xdr_before = w.xdr_incidents_of(&c);
    let requests_before = w.sim.inspect().request_counts();

    let outcome = w
        .sim
        .snow()
        .analyst_close(&sys_id, 7, "Solved (Permanently)", "done")
        .await
        .unwrap();

    assert_eq!(outcome.status(), Some(401), "{outcome:?}");
    assert_eq!(w.xdr_incidents_of(&c), xdr_before);
    assert_eq!(w.sim.inspect().request_counts(), requests_before);
    assert_eq!(only_incident(&w, &c).await["state"], "open");

    w.tick(&c).await.expect("tick");
    let record = only_incident(&w, &c).await;
    assert_eq!(record["state"], "closed");
    assert_eq!(record["close"]["source"], "reconcile");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_no_callback_the_reconcile_poll_closes_xdr_with_a_servicenow_reference_and_releases_the_host()
 {
    let w = World::start().await.unwrap();
    let c = w.customer(
        "quietsnow",
        CustomerSpec::default()
            .without_callback()
            .with("containment", "move"),
    );
    let guid = c.computers[1].clone();
    one_detection_on(&w, &c, &guid).await;
    assert_eq!(w.computer(&c, &guid).group_guid, c.triage_group);
    let snow = w.snow_incidents_of(&c);
    let outcome = w
        .sim
        .snow()
        .analyst_close(
            snow[0].sys_id(),
            6,
            "Solved (Workaround)",
            "resolved by desk",
        )
        .await
        .unwrap();
    assert!(outcome.status().is_none(), "no business rule: {outcome:?}");
    assert_eq!(only_incident(&w, &c).await["state"], "open");

    w.tick(&c).await.expect("tick");

    let xdr = w.xdr_incidents_of(&c);
    assert_eq!(xdr[0]["status"], "Closed");
    let refs = xdr[0]["external_references"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        refs.iter().any(|r| r["source_name"] == "ServiceNow"
            && r["external_id"].as_str() == Some(snow[0].field("number"))),
        "{refs:?}"
    );
    assert_eq!(
        w.computer(&c, &guid).group_guid,
        c.default_group,
        "host released"
    );
    let record = only_incident(&w, &c).await;
    assert_eq!(record["state"], "closed");
    assert_eq!(record["close"]["source"], "reconcile");
    assert!(audit_has(
        &record,
        "closed",
        "reconcile from ServiceNow state 6"
    ));
    assert!(w.sim.snow().callbacks().is_empty(), "nothing called back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_two_incidents_on_one_moved_host_it_goes_back_only_when_the_last_one_closes() {
    let w = World::start().await.unwrap();
    let c = w.customer("twice", CustomerSpec::default().with("containment", "move"));
    let guid = c.computers[0].clone();
    let first = w.detection(&c, &guid, &[THREAT_DETECTED]);
    let second = w.detection(&c, &guid, &[QUARANTINE_FAILURE]);
    w.sim
        .amp()
        .push_events(&c.amp_client_id, [first, second].concat())
        .unwrap();
    w.tick(&c).await.expect("tick");
    let snow = w.snow_incidents_of(&c);
    assert_eq!(snow.len(), 2, "two detections, two incidents");
    assert_eq!(w.computer(&c, &guid).group_guid, c.triage_group);

    let outcome = w
        .sim
        .snow()
        .analyst_close(snow[0].sys_id(), 7, "Solved (Permanently)", "one done")
        .await
        .unwrap();
    assert_eq!(outcome.status(), Some(200), "{outcome:?}");
    assert_eq!(
        w.computer(&c, &guid).group_guid,
        c.triage_group,
        "still contained: the other incident is open"
    );
    // The callback does the host steps; the XDR close comes with the next tick
    // (one batched read of every XDR incident closing in it).
    w.tick(&c).await.expect("tick after the callback");
    let closed = w.bridge_incident(&c, snow[0].field("correlation_id")).await;
    assert_eq!(closed["state"], "closed");
    assert!(audit_has(&closed, "close", "host stays contained"));

    let outcome = w
        .sim
        .snow()
        .analyst_close(snow[1].sys_id(), 7, "Solved (Permanently)", "both done")
        .await
        .unwrap();
    assert_eq!(outcome.status(), Some(200), "{outcome:?}");
    let host = w.computer(&c, &guid);
    assert_eq!(
        host.group_guid, c.default_group,
        "released with the last incident"
    );
    assert_eq!(
        host.group_history,
        vec![
            c.default_group.clone(),
            c.triage_group.clone(),
            c.default_group.clone()
        ],
        "moved once, back once"
    );
}
