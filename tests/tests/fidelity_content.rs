//! Issue 14, findings 5 and 7 and the Secure Endpoint part of finding 2, end to end:
//! simulators ← real HTTP → host → the real bridge component. Events of the shapes the
//! vendor and its partners publish (Cloud IOC, network events, placeholders; see
//! `mssp_sim::Sample`) must reach the analyst in the ServiceNow ticket and as typed XDR
//! observables; and the bridge's writes to a host leave alone what an analyst changed.

use mssp_e2e::{
    Customer, CustomerSpec, QUARANTINE_FAILURE, World, audit_has, group_of_key, unix_now,
};
use mssp_sim::{IsolationStatus, Sample};

/// Pushes events to the customer's Secure Endpoint and runs one tick.
async fn publish_and_tick(w: &World, c: &Customer, events: Vec<mssp_sim::Event>) {
    w.sim
        .amp()
        .push_events(&c.amp_client_id, events)
        .expect("push");
    w.tick(c).await.expect("tick");
}

fn sample(w: &World, c: &Customer, guid: &str, kind: Sample) -> mssp_sim::Event {
    w.sim
        .amp()
        .sample_event(&c.amp_client_id, guid, kind, unix_now() - 60)
        .expect("sample")
}

/// The only incident of a customer, as the bridge shows it.
async fn only_incident(w: &World, c: &Customer) -> serde_json::Value {
    let list = w.bridge_incidents(c).await;
    assert_eq!(list.len(), 1, "{list:?}");
    let key = list[0]["key"].as_str().unwrap().to_string();
    w.bridge_incident(c, &key).await
}

/// The one ServiceNow ticket of the customer: (description, first work note).
fn the_ticket(w: &World, c: &Customer) -> (String, String) {
    let snow = w.snow_incidents_of(c);
    assert_eq!(snow.len(), 1, "one ServiceNow incident");
    let note = snow[0]
        .work_notes
        .first()
        .map(|n| n.text.clone())
        .unwrap_or_default();
    (snow[0].field("description").to_string(), note)
}

/// The one XDR incident of the customer.
fn the_xdr_incident(w: &World, c: &Customer) -> serde_json::Value {
    let xdr = w.xdr_incidents_of(c);
    assert_eq!(xdr.len(), 1, "one XDR incident");
    xdr[0].clone()
}

/// `(type, value)` of every observable XDR holds for the customer's sightings.
fn observables(w: &World, c: &Customer) -> Vec<(String, String)> {
    let name = format!("[{} Corp]", c.id.to_uppercase());
    w.sim
        .xdr()
        .sightings()
        .iter()
        .filter(|s| s["title"].as_str().is_some_and(|t| t.contains(&name)))
        .flat_map(|s| s["observables"].as_array().cloned().unwrap_or_default())
        .map(|o| {
            (
                o["type"].as_str().unwrap_or_default().to_string(),
                o["value"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_a_cloud_ioc_event_the_ticket_and_xdr_carry_the_ioc_and_its_command_line() {
    let w = World::start().await.unwrap();
    let c = w.customer("iocs", CustomerSpec::default());
    let guid = c.computers[0].clone();
    let event = sample(&w, &c, &guid, Sample::CloudIoc);
    publish_and_tick(&w, &c, vec![event]).await;

    let (ticket, _) = the_ticket(&w, &c);
    let xdr = the_xdr_incident(&w, &c);
    let xdr_text = xdr["description"].as_str().unwrap_or_default();
    for text in [ticket.as_str(), xdr_text] {
        assert!(text.contains("W32.ClearEventLogs.ioc"), "IOC name: {text}");
        assert!(
            text.contains("An attempt was made to delete the system event logs"),
            "IOC description: {text}"
        );
        assert!(
            text.contains("wevtutil.exe cl Application"),
            "command line: {text}"
        );
        assert!(!text.contains("Detection: none reported"), "{text}");
        assert!(!text.contains("Detection:** none reported"), "{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_a_network_event_the_ticket_shows_the_remote_end_and_xdr_gets_typed_observables() {
    let w = World::start().await.unwrap();
    let c = w.customer("netev", CustomerSpec::default());
    let guid = c.computers[0].clone();
    let event = sample(&w, &c, &guid, Sample::Network);
    publish_and_tick(&w, &c, vec![event]).await;

    let (ticket, _) = the_ticket(&w, &c);
    assert!(
        ticket.contains("188.120.225.17:80"),
        "remote ip:port: {ticket}"
    );
    assert!(
        ticket.contains("http://www.sanjosemaristas.com/app/index.php?"),
        "URL: {ticket}"
    );
    assert!(ticket.contains("TCP"), "protocol: {ticket}");
    let obs = observables(&w, &c);
    for (ty, value) in [
        ("ip", "188.120.225.17"),
        ("url", "http://www.sanjosemaristas.com/app/index.php?"),
        ("domain", "www.sanjosemaristas.com"),
        ("amp_computer_guid", guid.as_str()),
    ] {
        assert!(
            obs.contains(&(ty.to_string(), value.to_string())),
            "{ty} {value} in {obs:?}"
        );
    }
    assert!(
        obs.iter().any(|(t, _)| t == "mac_address"),
        "the host's MAC as mac_address: {obs:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_placeholder_and_masked_values_they_are_not_written_as_data() {
    let w = World::start().await.unwrap();
    let c = w.customer("masked", CustomerSpec::default());
    let guid = c.computers[0].clone();
    let event = sample(&w, &c, &guid, Sample::Placeholders);
    publish_and_tick(&w, &c, vec![event]).await;

    let (ticket, _) = the_ticket(&w, &c);
    assert!(
        !ticket.contains("Not Available"),
        "user placeholder: {ticket}"
    );
    assert!(
        !ticket.contains("xxx.xxx.xxx.xxx"),
        "masked address: {ticket}"
    );
    assert!(ticket.contains("User: none reported"), "{ticket}");
    let obs = observables(&w, &c);
    assert!(
        !obs.iter()
            .any(|(_, v)| v.contains("xxx") || v.contains("XX:XX") || v == "Not Available"),
        "no placeholder observable: {obs:?}"
    );
    assert!(
        obs.iter()
            .all(|(t, v)| t != "ip" || v.parse::<std::net::IpAddr>().is_ok()),
        "every ip observable is an address: {obs:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_two_events_in_one_second_the_title_comes_from_the_earlier_by_nanoseconds() {
    let w = World::start().await.unwrap();
    let c = w.customer("nanos", CustomerSpec::default());
    let guid = c.computers[0].clone();
    let ts = unix_now() - 60;
    // The lower id is the later event: ids do not order events of one second.
    let mut failure = sample(&w, &c, &guid, Sample::ThreatDetected);
    let mut detected = sample(&w, &c, &guid, Sample::ThreatDetected);
    assert!(failure.id < detected.id);
    let type_name = mssp_sim::Event::new(0, QUARANTINE_FAILURE, ts).event_type;
    failure.event_type_id = QUARANTINE_FAILURE;
    failure.event_type = type_name;
    failure.detection_id = detected.detection_id.clone();
    for (e, nanos) in [(&mut failure, 900_000_000), (&mut detected, 100_000_000)] {
        e.timestamp = ts;
        e.timestamp_nanoseconds = nanos;
    }
    publish_and_tick(&w, &c, vec![failure, detected]).await;

    let xdr = the_xdr_incident(&w, &c);
    let title = xdr["title"].as_str().unwrap_or_default();
    assert!(
        title.starts_with("[NANOS Corp] Threat Detected on "),
        "title from the earlier event: {title}"
    );
    let record = only_incident(&w, &c).await;
    assert!(group_of_key(record["key"].as_str().unwrap()).starts_with('d'));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_isolate_policy_and_no_connector_guid_the_ticket_says_the_host_could_not_be_identified()
 {
    let w = World::start().await.unwrap();
    let c = w.customer(
        "noguid",
        CustomerSpec::default().with("containment", "isolate"),
    );
    let guid = c.computers[0].clone();
    let mut event = sample(&w, &c, &guid, Sample::ThreatDetected);
    event.connector_guid = None;
    if let Some(computer) = event.computer.as_mut().and_then(|v| v.as_object_mut()) {
        computer.remove("connector_guid");
    }
    publish_and_tick(&w, &c, vec![event]).await;

    let (_, note) = the_ticket(&w, &c);
    assert!(note.contains("could not be identified"), "{note}");
    assert!(!note.contains("none (policy)"), "{note}");
    assert_eq!(w.computer(&c, &guid).isolation_requests, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_a_host_an_analyst_isolated_the_bridge_says_so_and_does_not_stop_it_on_close() {
    let w = World::start().await.unwrap();
    let c = w.customer(
        "preiso",
        CustomerSpec::default().with("containment", "isolate"),
    );
    let guid = c.computers[1].clone();
    w.sim
        .amp()
        .analyst_isolate(&c.amp_client_id, &guid, "ANALYST42")
        .unwrap();
    let event = sample(&w, &c, &guid, Sample::ThreatDetected);
    publish_and_tick(&w, &c, vec![event]).await;

    let (_, note) = the_ticket(&w, &c);
    assert!(
        note.contains("already isolated, not by the bridge"),
        "the first work note tells the analyst: {note}"
    );
    assert!(!note.contains("not available"), "{note}");
    let record = only_incident(&w, &c).await;
    assert_eq!(record["containment"]["isolated"], false);

    let sys_id = w.snow_incidents_of(&c)[0].sys_id().to_string();
    let outcome = w
        .sim
        .snow()
        .analyst_close(&sys_id, 7, "Solved (Permanently)", "done")
        .await
        .unwrap();
    assert_eq!(outcome.status(), Some(200), "{outcome:?}");
    let host = w.computer(&c, &guid);
    assert_eq!(host.isolation, IsolationStatus::Isolated, "still isolated");
    assert_eq!(host.unlock_code.as_deref(), Some("ANALYST42"));
    assert_eq!(
        host.isolation_requests, 0,
        "the bridge sent no PUT nor DELETE"
    );
    // The callback leaves the XDR close to the next tick.
    w.tick(&c).await.expect("tick after the callback");
    let key = record["key"].as_str().unwrap();
    assert_eq!(w.bridge_incident(&c, key).await["state"], "closed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_an_analyst_moved_the_host_out_of_triage_it_is_not_moved_back_on_close() {
    let w = World::start().await.unwrap();
    let c = w.customer("moved", CustomerSpec::default().with("containment", "move"));
    let guid = c.computers[0].clone();
    let forensics = format!("grp-{}-forensics", c.id);
    w.sim
        .amp()
        .add_group(&c.amp_client_id, &forensics, "Forensics")
        .unwrap();
    let event = sample(&w, &c, &guid, Sample::ThreatDetected);
    publish_and_tick(&w, &c, vec![event]).await;
    assert_eq!(w.computer(&c, &guid).group_guid, c.triage_group);

    w.sim
        .amp()
        .analyst_move(&c.amp_client_id, &guid, &forensics)
        .unwrap();
    let sys_id = w.snow_incidents_of(&c)[0].sys_id().to_string();
    let outcome = w
        .sim
        .snow()
        .analyst_close(&sys_id, 6, "Solved (Permanently)", "imaged")
        .await
        .unwrap();
    assert_eq!(outcome.status(), Some(200), "{outcome:?}");

    // The callback leaves the XDR close to the next tick.
    w.tick(&c).await.expect("tick after the callback");
    let host = w.computer(&c, &guid);
    assert_eq!(host.group_guid, forensics, "left where the analyst put it");
    let record = only_incident(&w, &c).await;
    assert_eq!(record["state"], "closed");
    assert!(
        audit_has(&record, "close", "by someone else"),
        "{}",
        record["audit"]
    );
}
