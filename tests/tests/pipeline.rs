//! The whole loop, end to end: simulators ← real HTTP → host → the real
//! bridge component. Scenarios read as an analyst would describe them.

use std::collections::{BTreeMap, BTreeSet};

use mssp_e2e::{CustomerSpec, World, get};

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_detections_upstream_one_tick_opens_one_linked_incident_pair_each() {
    one_tick_opens_one_linked_incident_pair_each(World::start().await.unwrap()).await;
}

/// The same scenario with the host's key-value store on a real Redis server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_redis_given_detections_upstream_one_tick_opens_one_linked_incident_pair_each() {
    let w = World::start_on_redis().await.unwrap();
    one_tick_opens_one_linked_incident_pair_each(w).await;
}

/// Given detections upstream, one tick opens one XDR and one ServiceNow
/// incident per detection group, linked; a second tick creates nothing.
async fn one_tick_opens_one_linked_incident_pair_each(w: World) {
    let acme = w.customer("acme", CustomerSpec::default());
    let events = w.publish(&acme, 7, 40);
    let groups = expected_groups(&events);
    assert!(
        !groups.is_empty(),
        "the generator made high-priority events"
    );

    w.tick(&acme).await.expect("tick");

    let xdr = w.xdr_incidents_of(&acme);
    let snow = w.snow_incidents_of(&acme);
    assert_eq!(
        xdr.len(),
        groups.len(),
        "one XDR incident per detection group"
    );
    assert_eq!(
        snow.len(),
        groups.len(),
        "one ServiceNow incident per detection group"
    );

    // Linked: every ServiceNow incident carries the key of exactly one XDR
    // incident (external id) and links to it.
    let xdr_by_key: BTreeMap<String, &serde_json::Value> = xdr
        .iter()
        .map(|i| {
            let key = i["external_ids"][0]
                .as_str()
                .unwrap_or_default()
                .to_string();
            (key, i)
        })
        .collect();
    assert_eq!(xdr_by_key.len(), xdr.len(), "external ids are unique");
    for s in &snow {
        let key = s.field("correlation_id");
        let x = xdr_by_key
            .get(key)
            .unwrap_or_else(|| panic!("no XDR incident for {key}"));
        let xdr_id = x["id"].as_str().unwrap();
        let short = xdr_id.rsplit('/').next().unwrap();
        assert!(
            s.field("description").contains(short),
            "ServiceNow description links the XDR incident"
        );
        assert!(s.field("short_description").ends_with("[XDR]"));
    }

    // The component's own view agrees.
    let r = get(&w.host.url("/tenants/acme/v1/incidents"))
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["count"].as_u64(), Some(groups.len() as u64));

    // A second tick with nothing new creates nothing.
    w.tick(&acme).await.expect("second tick");
    assert_eq!(w.xdr_incidents_of(&acme).len(), groups.len());
    assert_eq!(w.snow_incidents_of(&acme).len(), groups.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_customer_costs_one_events_request_per_tick() {
    let w = World::start().await.unwrap();
    let quiet = w.customer("quiet", CustomerSpec::default());
    w.tick(&quiet).await.expect("first tick");
    w.sim.inspect().reset_request_counts();
    w.tick(&quiet).await.expect("idle tick");
    let counts = w.sim.inspect().request_counts();
    assert_eq!(counts.service(mssp_sim::Service::Amp), 1, "{counts:?}");
    assert_eq!(counts.total(), 1, "{counts:?}");
    assert!(w.xdr_incidents_of(&quiet).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_read_token_the_status_routes_refuse_anyone_without_it() {
    let w = World::start().await.unwrap();
    let acme = w.customer(
        "acme",
        CustomerSpec::default().with("read_token", "read-token-of-acme-58c1"),
    );
    w.publish(&acme, 3, 10);
    w.tick(&acme).await.expect("tick");
    for path in ["/v1/status", "/v1/incidents"] {
        let url = w.host.url(&format!("/tenants/acme{path}"));
        assert_eq!(
            get(&url).await.unwrap().status,
            401,
            "{path} without a token"
        );
        let wrong = mssp_e2e::send("GET", &url, &[("authorization", "Bearer nope")], "")
            .await
            .unwrap();
        assert_eq!(wrong.status, 401, "{path} with a wrong token");
        let ok = mssp_e2e::send(
            "GET",
            &url,
            &[("authorization", "Bearer read-token-of-acme-58c1")],
            "",
        )
        .await
        .unwrap();
        assert_eq!(ok.status, 200, "{path}: {}", ok.text());
        assert!(
            !ok.text().contains("read-token-of-acme"),
            "the token is not echoed"
        );
    }
}
