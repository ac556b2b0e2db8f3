//! Whole-tick scenarios against the fake world, written the way an analyst reads them:
//! given these events upstream, after a tick, these incidents exist, linked, once.

use std::collections::BTreeSet;

use serde_json::{Value, json};

use crate::incident::State;
use crate::ports::{HttpError, Method};
use crate::testkit::{NOW, World, amp_event, resp, resp_with};
use mssp_contract::access::sign;

const TD: u64 = 1_090_519_054;
const QF: u64 = 2_164_260_880;
const TQ: u64 = 553_648_143;

fn world_with(events: Vec<Value>) -> World {
    let mut w = World::new();
    w.up.events = events;
    w
}

fn only_incident(w: &World) -> crate::incident::IncidentRecord {
    let all = w.incidents();
    assert_eq!(
        all.len(),
        1,
        "expected exactly one incident, got {:?}",
        all.iter().map(|r| &r.key).collect::<Vec<_>>()
    );
    all.into_iter().next().unwrap()
}

fn assert_once_each(w: &World) {
    assert_eq!(w.up.xdr_incidents.len(), 1, "XDR incidents");
    assert_eq!(w.up.snow_incidents.len(), 1, "ServiceNow incidents");
}

#[test]
fn one_threat_becomes_one_linked_incident_in_each_system() {
    let mut w = world_with(vec![amp_event(
        6_533_241_145_273_614_339,
        NOW - 60,
        TD,
        Some("6180352115244793858"),
        "Demo_Upatre",
    )]);
    let report = w.tick();
    assert_eq!(report.outcome, "ok", "{report:?}");
    assert_eq!(report.incidents_new, 1);
    assert_eq!(report.incidents_opened, 1);
    let rec = only_incident(&w);
    assert_eq!(rec.state, State::Open);
    assert_once_each(&w);
    let xdr = &w.up.xdr_incidents[0];
    assert_eq!(xdr["external_ids"], json!([rec.key]));
    assert!(
        xdr["title"]
            .as_str()
            .unwrap()
            .starts_with("[Acme] Threat Detected on Demo_Upatre @ ")
    );
    let snow = &w.up.snow_incidents[0];
    assert_eq!(snow["correlation_id"], json!(rec.key));
    assert!(
        snow["description"]
            .as_str()
            .unwrap()
            .contains(xdr["id"].as_str().unwrap()),
        "ServiceNow links to XDR"
    );
    assert_eq!(rec.snow.as_ref().unwrap().number, "INC0010001");
    assert_eq!(rec.xdr.as_ref().unwrap().short_id, "incident-1");
    // The incident and its observables went in one bundle, linked.
    assert_eq!(w.up.xdr_bundles.len(), 1);
    let bundle = &w.up.xdr_bundles[0];
    assert_eq!(
        bundle["relationships"][0]["target_ref"],
        bundle["incidents"][0]["id"]
    );
    // Call economy: XDR = token + one bundle; ServiceNow = one POST.
    assert_eq!(w.up.calls(Method::Post, "/iroh/oauth2/token"), 1);
    assert_eq!(w.up.calls(Method::Post, "/ctia/bundle/import"), 1);
    assert_eq!(w.up.host_calls("xdr.test"), 2);
    assert_eq!(w.up.host_calls("snow.test"), 1);
    assert_eq!(report.calls.snow, 1);
    // Each service gets its own credentials.
    let auth_of = |m: Method, p: &str| w.up.log.iter().find(|l| l.is(m, p)).unwrap().auth.clone();
    assert!(auth_of(Method::Get, "/v1/events").starts_with("Basic "));
    assert!(auth_of(Method::Post, "/iroh/oauth2/token").starts_with("Basic "));
    assert_eq!(auth_of(Method::Post, "/ctia/bundle/import"), "Bearer tok-1");
    assert!(auth_of(Method::Post, "/api/now/table/incident").starts_with("Basic "));
    // The audit trail tells the story.
    let steps: Vec<&str> = rec.audit.iter().map(|a| a.step.as_str()).collect();
    assert_eq!(
        steps,
        [
            "new",
            "xdr_creating",
            "xdr_created",
            "observables",
            "contained",
            "snow_creating",
            "open"
        ]
    );
}

#[test]
fn three_events_of_one_detection_make_one_incident() {
    let mut w = world_with(vec![
        amp_event(11, NOW - 300, TD, Some("777"), "host-a"),
        amp_event(12, NOW - 200, QF, Some("777"), "host-a"),
        amp_event(13, NOW - 100, TD, Some("777"), "host-a"),
    ]);
    w.tick();
    let rec = only_incident(&w);
    assert_eq!(rec.event_ids, vec![11, 12, 13]);
    assert_once_each(&w);
    assert!(
        w.up.snow_incidents[0]["description"]
            .as_str()
            .unwrap()
            .contains("Quarantine Failure")
    );
}

#[test]
fn lone_events_each_get_their_own_incident_and_filters_apply() {
    let mut low = amp_event(3, NOW - 50, TD, None, "host-c");
    low["severity"] = json!("Low");
    let mut w = world_with(vec![
        amp_event(1, NOW - 100, TD, None, "host-a"),
        amp_event(2, NOW - 90, TD, None, "host-b"),
        low,
        amp_event(4, NOW - 40, TQ, None, "host-d"),
    ]);
    w.set("severities", "High,Critical");
    w.tick();
    let keys: Vec<String> = w.incidents().into_iter().map(|r| r.key).collect();
    assert_eq!(keys.len(), 2, "{keys:?}");
    assert!(keys.iter().any(|k| k.ends_with("-e1")) && keys.iter().any(|k| k.ends_with("-e2")));
    assert_eq!(w.up.xdr_incidents.len(), 2);
}

#[test]
fn duplicate_deliveries_and_overlapping_ticks_create_nothing_twice() {
    let e = amp_event(21, NOW - 100, TD, Some("d21"), "host-a");
    let mut w = world_with(vec![e.clone(), e.clone()]);
    w.tick();
    w.clock.advance(300_000);
    // The same event comes again (overlap window), plus the same detection on a new event id.
    w.up.events.push(e);
    w.tick();
    w.clock.advance(300_000);
    w.tick();
    assert_once_each(&w);
    assert_eq!(only_incident(&w).event_ids, vec![21]);
}

#[test]
fn an_idle_tick_costs_one_secure_endpoint_call_and_nothing_else() {
    let mut w = world_with(vec![]);
    w.tick();
    let before = w.up.log.len();
    w.clock.advance(300_000);
    let report = w.tick();
    assert_eq!(w.up.log.len() - before, 1);
    assert_eq!(report.calls.amp, 1);
    assert_eq!(report.calls.xdr + report.calls.snow, 0);
    assert!(w.up.log.last().unwrap().is(Method::Get, "/v1/events"));
}

#[test]
fn a_multi_page_answer_is_read_from_the_oldest_end_and_every_event_is_taken() {
    let events = (0..7)
        .map(|i| {
            amp_event(
                100 + i,
                NOW - 1000 + i as i64 * 10,
                TD,
                None,
                &format!("h{i}"),
            )
        })
        .collect();
    let mut w = world_with(events);
    w.up.page_size = 3;
    let report = w.tick();
    // Offset 0 tells the total (7); then the oldest end (the page reaching one item
    // past it), then upwards, each page overlapping the last by one item.
    assert_eq!(event_offsets(&w), vec![0, 5, 3, 1, 0]);
    assert_eq!(report.events_new, 7);
    assert!(!report.backlog);
    assert_eq!(w.incidents().len(), 7);
    assert_eq!(w.up.xdr_incidents.len(), 7);
    // Incidents were opened in the order the events happened.
    let order: Vec<String> =
        w.up.xdr_incidents
            .iter()
            .map(|i| i["external_ids"][0].as_str().unwrap().to_string())
            .collect();
    let expected: Vec<String> = (100..107).map(|id| format!("-e{id}")).collect();
    assert!(
        order
            .iter()
            .zip(&expected)
            .all(|(k, e)| k.ends_with(e.as_str())),
        "{order:?}"
    );
    let first = &w.up.log[0];
    assert!(
        first.url.contains("start_date=")
            && first.url.contains("limit=500")
            && first.url.contains("event_type%5B%5D=1090519054")
    );
    // Caught up: the next tick is one request again.
    w.clock.advance(60_000);
    let before = w.up.calls(Method::Get, "/v1/events");
    let report = w.tick();
    assert_eq!(w.up.calls(Method::Get, "/v1/events") - before, 1);
    assert_eq!(report.events_new, 0);
}

/// The `offset` of every `GET /v1/events` so far (0 when absent).
fn event_offsets(w: &World) -> Vec<u64> {
    w.up.log
        .iter()
        .filter(|l| l.is(Method::Get, "/v1/events"))
        .map(|l| {
            l.url
                .split(['?', '&'])
                .find_map(|kv| kv.strip_prefix("offset="))
                .map_or(0, |v| v.parse().unwrap())
        })
        .collect()
}

/// A lean event as the API lists it (no detection, severity given).
fn lean_event(id: u64, ts: i64, severity: &str) -> Value {
    json!({"id": id, "timestamp": ts, "event_type_id": TD, "event_type": "Threat Detected",
           "severity": severity, "connector_guid": format!("guid-{id}")})
}

#[test]
fn a_customer_back_after_an_outage_works_through_a_huge_backlog_oldest_first() {
    // 120 000 events in the look-back hour; the 40 High ones must become incidents,
    // the Low ones are filtered out. One tick reads at most 200 pages.
    let n: u64 = 120_000;
    let mut events: Vec<Value> = (0..n)
        .map(|i| {
            lean_event(
                1_000_000 + i,
                NOW - 3_500 + (i as i64 * 3_400 / n as i64),
                "Low",
            )
        })
        .collect();
    let high: Vec<u64> = (0..40).map(|k| k * 3_000 + 7).collect();
    for &i in &high {
        events[i as usize]["severity"] = json!("High");
    }
    let mut w = world_with(events);
    w.set("severities", "High,Critical");
    let first = w.tick();
    assert!(
        first.backlog,
        "the first tick cannot read it all: {first:?}"
    );
    assert_ne!(first.outcome, "failed");
    assert!(first.errors.is_empty(), "{:?}", first.errors);
    let cursor_after_first = w.kv.json("cursor").unwrap();
    assert!(cursor_after_first["paging"].is_object());
    // The oldest page first: offset = total - 500 (+ a margin of 50), then decreasing
    // by 450 (pages overlap by 50).
    let offsets = event_offsets(&w);
    assert_eq!(&offsets[..3], &[0, n - 450, n - 900]);
    assert!(offsets[1..].windows(2).all(|p| p[0] > p[1]));
    let opened_first = w.incidents().len();
    assert!(
        opened_first > 0 && opened_first < high.len(),
        "{opened_first}"
    );
    let mut ticks = 1;
    loop {
        w.clock.advance(60_000);
        let r = w.tick();
        ticks += 1;
        assert!(r.errors.is_empty(), "{:?}", r.errors);
        if !r.backlog {
            break;
        }
        assert!(ticks < 5, "the backlog must drain");
    }
    assert_eq!(ticks, 2);
    let keys: BTreeSet<String> = w.incidents().into_iter().map(|r| r.key).collect();
    let expected: BTreeSet<String> = high
        .iter()
        .map(|i| format!("-e{}", 1_000_000 + i))
        .collect();
    assert_eq!(keys.len(), high.len());
    assert!(
        keys.iter()
            .all(|k| expected.iter().any(|e| k.ends_with(e.as_str())))
    );
    assert_eq!(w.up.xdr_incidents.len(), high.len());
    assert_eq!(w.up.snow_incidents.len(), high.len());
    assert!(w.kv.json("cursor").unwrap().get("paging").is_none());
    // Caught up: one request per tick again, nothing taken twice.
    let before = w.up.calls(Method::Get, "/v1/events");
    w.clock.advance(60_000);
    let r = w.tick();
    assert_eq!(w.up.calls(Method::Get, "/v1/events") - before, 1);
    assert_eq!(r.events_new, 0);
    assert_eq!(w.incidents().len(), high.len());
}

#[test]
fn events_arriving_while_a_backlog_is_paged_are_neither_missed_nor_doubled() {
    // 2 000 old events paged 100 at a time (20 pages), with bursts arriving after the
    // 1st, 3rd, 4th and 6th requests (some bursts larger than the overlap margin).
    // One detection, so a single incident collects every event taken in.
    let of_d1 = |id: u64, ts: i64| {
        let mut e = lean_event(id, ts, "High");
        e["detection_id"] = json!("d1");
        e
    };
    let events: Vec<Value> = (0..2_000u64)
        .map(|i| of_d1(10_000 + i, NOW - 3_000 + i as i64))
        .collect();
    let mut w = world_with(events);
    w.up.page_size = 100;
    let mut next_id = 50_000u64;
    for (at, count) in [(1usize, 5usize), (3, 30), (4, 1), (6, 250)] {
        let batch = (0..count)
            .map(|_| {
                next_id += 1;
                of_d1(next_id, NOW - 10)
            })
            .collect();
        w.up.arrivals.push((at, batch));
    }
    let mut taken = 0;
    for _ in 0..10 {
        let r = w.tick();
        taken += r.events_new;
        w.clock.advance(60_000);
        if !r.backlog
            && w.up
                .arrivals
                .iter()
                .all(|(at, _)| *at <= w.up.events_requests)
        {
            break;
        }
    }
    let r = w.tick();
    taken += r.events_new;
    assert_eq!(
        taken,
        2_000 + 5 + 30 + 1 + 250,
        "every event taken in exactly once"
    );
    let rec = only_incident(&w);
    let ids: BTreeSet<u64> = rec.event_ids.iter().copied().collect();
    assert_eq!(ids.len(), 2_286, "none missed");
    assert_once_each(&w);
    // The burst of 250 (more than the overlap) made one page miss its boundary: it was
    // asked again further down, where the new total put it.
    let offsets = event_offsets(&w);
    assert!(
        offsets.windows(2).any(|p| p[1] > p[0]),
        "a page was asked again: {offsets:?}"
    );
}

#[test]
fn a_late_tick_loses_nothing_and_the_cursor_moves_only_after_a_complete_read() {
    let mut w = world_with(vec![amp_event(1, NOW - 100, TD, None, "a")]);
    w.tick();
    // Hours pass without a tick; events arrive meanwhile.
    w.clock.advance(5 * 3600 * 1000);
    w.up.events.push(amp_event(2, NOW + 3600, TD, None, "b"));
    w.up.events.push(amp_event(3, NOW + 7200, TD, None, "c"));
    // Secure Endpoint is down on the first try of the next tick: nothing is lost.
    w.up.fault(
        Method::Get,
        "/v1/events",
        4,
        Ok(resp(503, json!({"errors": [{"details": ["maintenance"]}]}))),
    );
    let failed = w.tick();
    assert_eq!(failed.outcome, "partial");
    let cursor = w.kv.json("cursor").unwrap();
    assert_eq!(cursor["since"], json!(NOW - 100));
    w.tick();
    assert_eq!(w.incidents().len(), 3);
    // Everything up to the clock (less the skew margin) has been read; the
    // clock moved a little during the failed tick's retries.
    let since = w.kv.json("cursor").unwrap()["since"].as_i64().unwrap();
    let caught_up = NOW + 5 * 3600 - crate::cursor::CLOCK_MARGIN_SECONDS;
    assert!(
        (caught_up..caught_up + 60).contains(&since),
        "{since} vs {caught_up}"
    );
}

#[test]
fn a_tenant_quiet_after_a_burst_stops_rereading_it_but_still_catches_late_events() {
    let burst: Vec<Value> = (0..40)
        .map(|i| amp_event(400 + i, NOW - 60, TD, None, &format!("h{i}")))
        .collect();
    let mut w = world_with(burst);
    w.tick();
    assert_eq!(w.incidents().len(), 40);
    let fetched = |w: &mut World| {
        w.clock.advance(60_000);
        w.tick().events_fetched
    };
    // Minutes later the burst is still inside the late-arrival window and read again…
    assert_eq!(fetched(&mut w), 40);
    // …until the watermark has followed the clock far enough (an hour, the default).
    let mut ticks = 1;
    while fetched(&mut w) > 0 {
        ticks += 1;
        assert!(ticks < 90, "the burst is re-read for ever");
    }
    assert!(
        ticks > 55,
        "the burst stays in the hour-long window: {ticks}"
    );
    // An event that reaches Secure Endpoint 25 minutes late is still caught, and
    // counted as late.
    let late_ts = NOW + (ticks as i64 + 2) * 60 - 1_500;
    w.up.events.push(amp_event(999, late_ts, TD, None, "late"));
    w.clock.advance(60_000);
    let r = w.tick();
    assert_eq!((r.events_new, r.events_late), (1, 1), "{r:?}");
    assert_eq!(w.incidents().len(), 41, "the late event became an incident");
    // Once: the next ticks read it again and take nothing.
    w.clock.advance(60_000);
    let r = w.tick();
    assert_eq!((r.events_fetched, r.events_new, r.events_late), (1, 0, 0));
    assert_eq!(w.incidents().len(), 41);
}

#[test]
fn a_later_event_of_a_known_detection_is_noted_not_reopened() {
    let mut w = world_with(vec![amp_event(31, NOW - 100, TD, Some("d31"), "host-a")]);
    w.tick();
    w.clock.advance(60_000);
    w.up.events
        .push(amp_event(32, NOW + 30, TQ, Some("d31"), "host-a"));
    w.up.events
        .push(amp_event(33, NOW + 40, QF, Some("d31"), "host-a"));
    w.tick();
    assert_once_each(&w);
    let rec = only_incident(&w);
    assert_eq!(
        rec.event_ids,
        vec![31, 33],
        "Threat Quarantined is not in the default filter"
    );
    let sys_id = &rec.snow.as_ref().unwrap().sys_id;
    let notes = &w.up.snow_notes[sys_id];
    assert_eq!(notes.len(), 2, "first note in the POST, then one follow-up");
    assert!(notes[1].contains("Quarantine Failure"));
    assert_eq!(w.up.calls(Method::Patch, "/ctia/incident/"), 1);
    assert!(
        w.up.xdr_incidents[0]["description"]
            .as_str()
            .unwrap()
            .contains("(event 33)")
    );
    assert!(rec.pending_snow_notes.is_empty() && !rec.pending_xdr_update);
}

#[test]
fn a_ticket_deleted_in_servicenow_drops_its_note_once_and_the_xdr_update_still_happens() {
    let mut w = world_with(vec![amp_event(34, NOW - 100, TD, Some("d34"), "host-a")]);
    w.tick();
    // A ServiceNow admin deletes the ticket; a later event of the detection arrives.
    w.up.snow_incidents.clear();
    w.clock.advance(60_000);
    w.up.events
        .push(amp_event(35, NOW + 30, QF, Some("d34"), "host-a"));
    w.tick();
    let rec = only_incident(&w);
    assert_eq!(w.up.calls(Method::Patch, "/api/now/table/incident/"), 1);
    assert!(
        rec.audit
            .iter()
            .any(|a| a.outcome.contains("no longer exists") && a.outcome.contains("dropped")),
        "{:?}",
        rec.audit
    );
    assert!(rec.pending_snow_notes.is_empty() && !rec.pending_xdr_update);
    assert_eq!(
        w.up.calls(Method::Patch, "/ctia/incident/"),
        1,
        "XDR updated"
    );
    assert_eq!(rec.state, State::Open);
    // Later ticks do not try the note again.
    for _ in 0..3 {
        w.clock.advance(60_000);
        w.tick();
    }
    assert_eq!(w.up.calls(Method::Patch, "/api/now/table/incident/"), 1);
}

/// Resume after a trap at each persisted point: no duplicate create, no gap.
#[test]
fn a_crash_at_any_point_resumes_without_duplicates() {
    let points = [
        "new",
        "xdr_creating",
        "xdr_create_sent",
        "xdr_created",
        "containing",
        "contained",
        "snow_creating",
        "snow_create_sent",
        "open",
    ];
    for point in points {
        let mut w = world_with(vec![amp_event(41, NOW - 100, TD, Some("d41"), "host-a")]);
        w.set("containment", "isolate");
        w.set("debug_crash_after", point);
        let crash = w.tick_may_crash();
        assert!(
            crash.as_deref().is_some_and(|m| m.contains(point)),
            "{point}: {crash:?}"
        );
        w.clock.advance(60_000);
        assert_eq!(
            w.tick_may_crash(),
            None,
            "{point}: the marker makes the trap fire once"
        );
        let rec = only_incident(&w);
        assert_eq!(rec.state, State::Open, "{point}: {:?}", rec.audit);
        assert_once_each(&w);
        assert_eq!(
            w.up.calls(Method::Put, "/v1/computers/guid-host-a/isolation"),
            1,
            "{point}"
        );
        assert_eq!(w.up.computers["guid-host-a"].isolation, "isolated");
        // Then close it via ServiceNow, crashing during the close too.
        w.set("debug_crash_after", "closing");
        let sys_id = rec.snow.as_ref().unwrap().sys_id.clone();
        w.up.snow_set_state(&sys_id, "6");
        assert!(w.tick_may_crash().is_some_and(|m| m.contains("closing")));
        assert_eq!(w.tick_may_crash(), None);
        let rec = only_incident(&w);
        assert_eq!(rec.state, State::Closed, "{point}: {:?}", rec.audit);
        assert_eq!(w.up.computers["guid-host-a"].isolation, "not_isolated");
        assert_eq!(w.up.xdr_incidents[0]["status"], "Closed");
    }
}

#[test]
fn a_create_whose_answer_was_lost_is_found_not_repeated() {
    let mut w = world_with(vec![amp_event(51, NOW - 100, TD, Some("d51"), "host-a")]);
    // The POSTs reach the services, but the answers never come back.
    w.up.fault_after_effect(
        Method::Post,
        "/ctia/bundle/import",
        Err(HttpError::Timeout("first byte".into())),
    );
    w.up.fault_after_effect(
        Method::Post,
        "/api/now/table/incident",
        Ok(resp_with(200, &[], "{\"result\":{\"sys_")),
    );
    w.tick();
    assert_once_each(&w);
    let rec = only_incident(&w);
    assert_eq!(rec.state, State::Open);
    assert!(
        rec.audit
            .iter()
            .any(|a| a.outcome.contains("found by external id"))
    );
    assert!(
        rec.audit
            .iter()
            .any(|a| a.outcome.contains("found by correlation_id"))
    );
    // The import was sent again (it is idempotent by external id): no lookup.
    assert_eq!(w.up.calls(Method::Post, "/ctia/bundle/import"), 2);
    assert_eq!(w.up.calls(Method::Get, "/ctia/incident/external_id/"), 0);
}

#[test]
fn a_second_detection_on_a_host_the_bridge_isolated_skips_the_policy_check_not_the_state_check() {
    let mut w = world_with(vec![amp_event(81, NOW - 100, TD, Some("d81"), "host-a")]);
    w.set("containment", "isolate");
    w.tick();
    assert_eq!(w.up.computers["guid-host-a"].isolation, "isolated");
    let options = |w: &World| {
        w.up.calls(Method::Options, "/v1/computers/guid-host-a/isolation")
    };
    let puts = |w: &World| {
        w.up.calls(Method::Put, "/v1/computers/guid-host-a/isolation")
    };
    // A second detection on the same host: no policy check, no second isolation.
    w.clock.advance(60_000);
    w.up.events
        .push(amp_event(82, NOW + 30, TD, Some("d82"), "host-a"));
    w.tick();
    assert_eq!(w.incidents().len(), 2);
    assert_eq!((options(&w), puts(&w)), (1, 1));
    // An analyst releases the host in the console; a third detection isolates it
    // again (its state is still read), still without asking the policy.
    if let Some(host) = w.up.computers.get_mut("guid-host-a") {
        host.isolation = "not_isolated".into();
    }
    w.clock.advance(60_000);
    w.up.events
        .push(amp_event(83, NOW + 90, TD, Some("d83"), "host-a"));
    w.tick();
    assert_eq!(w.incidents().len(), 3);
    assert_eq!((options(&w), puts(&w)), (1, 2));
    assert_eq!(w.up.computers["guid-host-a"].isolation, "isolated");
}

#[test]
fn move_containment_records_the_group_and_moves_back_on_close() {
    let mut w = world_with(vec![amp_event(61, NOW - 100, TD, Some("d61"), "host-a")]);
    w.set("containment", "move");
    w.set("triage_group_guid", "group-triage");
    w.tick();
    let rec = only_incident(&w);
    let c = rec.containment.clone().unwrap();
    assert_eq!(c.original_group_guid.as_deref(), Some("group-original"));
    assert!(c.moved);
    assert_eq!(w.up.computers["guid-host-a"].group_guid, "group-triage");
    let note = &w.up.snow_notes[&rec.snow.as_ref().unwrap().sys_id][0];
    assert!(
        note.contains("moved to triage group group-triage"),
        "{note}"
    );
    w.up.snow_set_state(&rec.snow.unwrap().sys_id, "7");
    w.tick();
    assert_eq!(w.up.computers["guid-host-a"].group_guid, "group-original");
    assert_eq!(only_incident(&w).state, State::Closed);
}

#[test]
fn a_policy_change_mid_containment_abandons_it_cleanly() {
    let mut w = world_with(vec![amp_event(63, NOW - 100, TD, Some("d63"), "host-a")]);
    w.set("containment", "isolate");
    w.up.fault(Method::Options, "/isolation", 4, Ok(resp(503, Value::Null)));
    w.tick();
    assert_eq!(only_incident(&w).state, State::Containing);
    w.set("containment", "none");
    w.tick();
    let rec = only_incident(&w);
    assert_eq!(rec.state, State::Open);
    assert!(!rec.containment.unwrap().isolated);
    assert!(
        rec.audit
            .iter()
            .any(|a| a.outcome.contains("policy changed from isolate to none"))
    );
}

#[test]
fn containment_is_limited_by_event_types_and_severities() {
    let mut w = world_with(vec![amp_event(62, NOW - 100, TD, Some("d62"), "host-a")]);
    w.set("containment", "isolate");
    w.set("containment_severities", "Critical");
    w.tick();
    let rec = only_incident(&w);
    assert!(rec.containment.is_none());
    assert!(
        rec.audit
            .iter()
            .any(|a| a.outcome.contains("containment_severities"))
    );
    assert_eq!(w.up.calls(Method::Put, "/v1/computers"), 0);
}

#[test]
fn isolation_checks_first_records_the_unlock_code_before_acting_and_stops_on_close() {
    let mut w = world_with(vec![amp_event(71, NOW - 100, TD, Some("d71"), "host-a")]);
    w.set("containment", "isolate");
    // The first PUT fails transiently: the record must already hold the unlock code.
    w.up.fault(
        Method::Put,
        "/isolation",
        4,
        Err(HttpError::Connection("reset".into())),
    );
    w.tick();
    let rec = only_incident(&w);
    assert_eq!(rec.state, State::Containing);
    let c = rec.containment.clone().unwrap();
    let code = c.unlock_code.clone().unwrap();
    assert!(code.len() <= 24 && !code.contains(' '));
    assert_eq!(c.original_group_guid.as_deref(), Some("group-original"));
    let order: Vec<Method> =
        w.up.log
            .iter()
            .filter(|l| l.path().starts_with("/v1/computers"))
            .map(|l| l.method)
            .collect();
    // State before policy: the computer is read, then OPTIONS, then PUT.
    assert_eq!(&order[..3], &[Method::Get, Method::Options, Method::Put]);
    w.clock.advance(60_000);
    w.tick();
    let rec = only_incident(&w);
    assert_eq!(rec.state, State::Open);
    assert_eq!(
        w.up.computers["guid-host-a"].unlock_code.as_deref(),
        Some(code.as_str())
    );
    let put =
        w.up.log
            .iter()
            .rev()
            .find(|l| l.is(Method::Put, "/v1/computers"))
            .unwrap();
    assert!(put.body.contains(&code) && put.body.contains("comment"));
    assert!(
        !serde_json::to_string(
            &w.api("GET", &format!("/v1/incidents/{}", rec.key), &[], b"")
                .body
        )
        .unwrap()
        .contains(&code)
    );
    w.up.snow_set_state(&rec.snow.unwrap().sys_id, "6");
    w.tick();
    assert_eq!(w.up.computers["guid-host-a"].isolation, "not_isolated");
    assert_eq!(
        w.up.calls(Method::Delete, "/v1/computers/guid-host-a/isolation"),
        1
    );
}

#[test]
fn isolation_forbidden_by_policy_is_reported_not_retried() {
    let mut w = world_with(vec![amp_event(72, NOW - 100, TD, Some("d72"), "host-a")]);
    w.set("containment", "isolate");
    w.up.isolation_allowed = false;
    w.tick();
    let rec = only_incident(&w);
    assert_eq!(rec.state, State::Open);
    assert!(!rec.containment.as_ref().unwrap().isolated);
    let note = &w.up.snow_notes[&rec.snow.unwrap().sys_id][0];
    assert!(note.contains("isolation not available"), "{note}");
    assert_eq!(w.up.calls(Method::Put, "/v1/computers"), 0);
}

#[test]
fn closing_while_isolation_is_still_pending_waits_then_stops_it() {
    let mut w = world_with(vec![amp_event(73, NOW - 100, TD, Some("d73"), "host-a")]);
    w.set("containment", "isolate");
    w.up.isolation_stays_pending = true;
    w.tick();
    let sys_id = only_incident(&w).snow.unwrap().sys_id;
    w.up.snow_set_state(&sys_id, "6");
    let r = w.tick();
    assert_eq!(r.deferred, 1);
    let rec = only_incident(&w);
    assert_eq!(rec.state, State::Closing);
    assert!(
        rec.audit
            .iter()
            .any(|a| a.outcome.contains("pending_start"))
    );
    // The endpoint finishes isolating; the next tick stops it and completes the close.
    w.up.isolation_stays_pending = false;
    w.up.computers.get_mut("guid-host-a").unwrap().isolation = "isolated".into();
    w.clock.advance(60_000);
    w.tick();
    assert_eq!(only_incident(&w).state, State::Closed);
    assert_eq!(w.up.computers["guid-host-a"].isolation, "not_isolated");
}

fn signed(w: &World, body: &str, ts: i64) -> Vec<(String, String)> {
    let key = mssp_contract::access::CallbackKeys::from_config(&|k| w.config.get(k).cloned())
        .map(|k| k.current().to_vec())
        .unwrap_or_default();
    vec![
        ("Content-Type".into(), "application/json".into()),
        ("X-Bridge-Timestamp".into(), ts.to_string()),
        (
            "X-Bridge-Signature".into(),
            sign(&key, &ts.to_string(), body.as_bytes()),
        ),
    ]
}

fn post_signed(w: &mut World, body: &str, ts: i64) -> crate::api::ApiResponse {
    let headers = signed(w, body, ts);
    post_callback(w, &headers, body)
}

fn post_callback(
    w: &mut World,
    headers: &[(String, String)],
    body: &str,
) -> crate::api::ApiResponse {
    let h: Vec<(&str, &str)> = headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    w.api("POST", "/v1/servicenow/events", &h, body.as_bytes())
}

/// Key rotation without downtime: the bridge gets the new `callback_key` first, with
/// the old one as `previous_callback_key` until a time; ServiceNow's business rule
/// still signs with the old key, then with the new one. Both close the loop during the
/// overlap; after it, the old key is refused and nothing changes.
#[test]
fn during_a_key_rotation_both_keys_are_accepted_until_the_overlap_ends() {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let old_key = b"the-key-servicenow-still-uses".to_vec();
    let mut w = world_with(vec![
        amp_event(91, NOW - 100, TD, Some("d91"), "host-a"),
        amp_event(92, NOW - 90, TD, Some("d92"), "host-b"),
    ]);
    w.set("previous_callback_key", &b64.encode(&old_key));
    w.set(
        "previous_callback_key_until",
        &mssp_contract::civil::iso_seconds(NOW + 3600),
    );
    w.tick();
    let recs = w.incidents();
    assert_eq!(recs.len(), 2);
    let body_of = |rec: &crate::incident::IncidentRecord| {
        let snow = rec.snow.clone().unwrap();
        json!({"sys_id": snow.sys_id, "number": snow.number, "state": "6", "correlation_id": rec.key, "close_code": "Solved (Permanently)"}).to_string()
    };
    let with_key = |key: &[u8], body: &str, ts: i64| {
        vec![
            ("Content-Type".to_string(), "application/json".to_string()),
            ("X-Bridge-Timestamp".to_string(), ts.to_string()),
            (
                "X-Bridge-Signature".to_string(),
                sign(key, &ts.to_string(), body.as_bytes()),
            ),
        ]
    };
    // During the overlap: the old key (ServiceNow not yet updated) closes one…
    let first = body_of(&recs[0]);
    let r = post_callback(&mut w, &with_key(&old_key, &first, NOW), &first);
    assert_eq!(
        r.status, 200,
        "the previous key during the overlap: {:?}",
        r.body
    );
    // …the new key the other.
    let second = body_of(&recs[1]);
    let r = post_signed(&mut w, &second, NOW);
    assert_eq!(r.status, 200, "the current key: {:?}", r.body);
    // After the overlap the old key is refused, the current one still works.
    w.clock.advance(3_601_000);
    let later = crate::ports::Clock::now_ms(&w.clock) / 1000;
    let r = post_callback(&mut w, &with_key(&old_key, &first, later), &first);
    assert_eq!(
        r.status, 401,
        "the previous key after the overlap: {:?}",
        r.body
    );
    let r = post_signed(&mut w, &first, later);
    assert_eq!(r.status, 200, "{:?}", r.body);
    // A previous key without an end is a configuration error naming the fix.
    w.config.remove("previous_callback_key_until");
    let err = crate::testkit::config_from(&w.config).expect_err("refused");
    assert!(
        err.to_string().contains("previous_callback_key_until"),
        "{err}"
    );
}

#[test]
fn a_signed_callback_closes_the_loop_once() {
    let mut w = world_with(vec![amp_event(81, NOW - 100, TD, Some("d81"), "host-a")]);
    w.tick();
    let rec = only_incident(&w);
    let snow = rec.snow.clone().unwrap();
    let body = json!({"sys_id": snow.sys_id, "number": snow.number, "state": "7", "correlation_id": rec.key, "close_code": "Solved (Permanently)"}).to_string();
    let headers = signed(&w, &body, NOW);
    let r = post_callback(&mut w, &headers, &body);
    assert_eq!(r.status, 200, "{:?}", r.body);
    // The host steps are done now; the XDR close waits for the next tick's batched read.
    assert_eq!(r.body["state"], "closing");
    assert_eq!(w.up.xdr_incidents[0]["status"], "New");
    // A replay changes nothing and costs nothing upstream.
    let calls = w.up.log.len();
    let r = post_callback(&mut w, &headers, &body);
    assert_eq!(r.status, 200);
    assert_eq!(w.up.log.len(), calls);
    // The next tick closes XDR (one bulk read, one PATCH); no reconcile query: the
    // incident is no longer open.
    w.tick();
    assert_eq!(w.up.calls(Method::Get, "/ctia/bulk"), 1);
    let xdr = &w.up.xdr_incidents[0];
    assert_eq!(xdr["status"], "Closed");
    assert_eq!(
        xdr["external_references"][0]["external_id"],
        json!(snow.number)
    );
    assert_eq!(w.up.calls(Method::Get, "/api/now/table/incident"), 0);
    // Later reconciles only watch the closed ticket for a re-open (one query, at most
    // every ten minutes on a tenant with nothing open); nothing else happens.
    w.tick();
    assert_eq!(w.up.calls(Method::Get, "/api/now/table/incident"), 1);
    w.clock.advance(60_000);
    w.tick();
    assert_eq!(w.up.calls(Method::Get, "/api/now/table/incident"), 1);
    assert_eq!(only_incident(&w).state, State::Closed);
}

#[test]
fn a_callback_by_sys_id_only_finds_the_incident() {
    let mut w = world_with(vec![amp_event(82, NOW - 100, TD, Some("d82"), "host-a")]);
    w.tick();
    let sys_id = only_incident(&w).snow.unwrap().sys_id;
    let body = json!({"sys_id": sys_id, "state": "6"}).to_string();
    let headers = signed(&w, &body, NOW + 10);
    assert_eq!(post_callback(&mut w, &headers, &body).status, 200);
    assert_eq!(only_incident(&w).state, State::Closing);
    w.tick();
    assert_eq!(only_incident(&w).state, State::Closed);
}

#[test]
fn forged_stale_malformed_and_unknown_callbacks_change_nothing() {
    let mut w = world_with(vec![amp_event(83, NOW - 100, TD, Some("d83"), "host-a")]);
    w.tick();
    let rec = only_incident(&w);
    let sys_id = rec.snow.clone().unwrap().sys_id;
    let store_before = w.kv.map.clone();
    let calls_before = w.up.log.len();
    let body = json!({"sys_id": sys_id, "state": "7", "correlation_id": rec.key}).to_string();
    // Wrong key.
    let mut forged = signed(&w, &body, NOW);
    forged[2].1 = sign(b"not-the-key", &NOW.to_string(), body.as_bytes());
    assert_eq!(post_callback(&mut w, &forged, &body).status, 401);
    // Stale.
    let stale = signed(&w, &body, NOW - 301);
    assert_eq!(post_callback(&mut w, &stale, &body).status, 401);
    // Missing signature.
    assert_eq!(
        post_callback(
            &mut w,
            &[("X-Bridge-Timestamp".into(), NOW.to_string())],
            &body
        )
        .status,
        401
    );
    // Malformed (validly signed garbage).
    let junk = "{\"sys_id\":";
    assert_eq!(post_signed(&mut w, junk, NOW).status, 400);
    // Unknown incident.
    let unknown = json!({"sys_id": "f".repeat(32), "state": "7", "correlation_id": "amp-nope-d1"})
        .to_string();
    assert_eq!(post_signed(&mut w, &unknown, NOW).status, 404);
    let no_such_sys = json!({"sys_id": "e".repeat(32), "state": "7"}).to_string();
    assert_eq!(post_signed(&mut w, &no_such_sys, NOW).status, 404);
    // A non-closing state is accepted and ignored.
    let progress = json!({"sys_id": sys_id, "state": "2", "correlation_id": rec.key}).to_string();
    assert_eq!(post_signed(&mut w, &progress, NOW).status, 200);
    assert_eq!(w.kv.map, store_before);
    assert_eq!(w.up.log.len(), calls_before);
}

#[test]
fn the_reconcile_poll_closes_without_any_callback_in_one_query() {
    let events = (0..3)
        .map(|i| amp_event(90 + i, NOW - 100, TD, None, &format!("h{i}")))
        .collect();
    let mut w = world_with(events);
    w.tick();
    let before = w.up.calls(Method::Get, "/api/now/table/incident");
    assert_eq!(
        before, 0,
        "incidents opened in this tick are not reconciled in it"
    );
    let sys_ids: Vec<String> = w
        .incidents()
        .iter()
        .map(|r| r.snow.clone().unwrap().sys_id)
        .collect();
    w.up.snow_set_state(&sys_ids[1], "6");
    w.clock.advance(300_000);
    w.tick();
    assert_eq!(w.up.calls(Method::Get, "/api/now/table/incident"), 1);
    let q =
        w.up.log
            .iter()
            .rev()
            .find(|l| l.is(Method::Get, "/api/now/table/incident"))
            .unwrap();
    assert!(
        q.url.contains("sys_idIN") && !q.url.contains("stateIN"),
        "{}",
        q.url
    );
    let closed: Vec<_> = w
        .incidents()
        .into_iter()
        .filter(|r| r.state == State::Closed)
        .collect();
    assert_eq!(closed.len(), 1);
    assert_eq!(closed[0].close.as_ref().unwrap().source, "reconcile");
    assert_eq!(
        w.up.xdr_incidents
            .iter()
            .filter(|i| i["status"] == "Closed")
            .count(),
        1
    );
}

#[test]
fn secure_endpoint_429_waits_reset_seconds_then_retries() {
    let mut w = world_with(vec![amp_event(101, NOW - 100, TD, None, "a")]);
    w.up.fault(
        Method::Get,
        "/v1/events",
        1,
        Ok(resp_with(
            429,
            &[("X-Rate-Limit-Reset", "3"), ("Retry-After", "99")],
            "{}",
        )),
    );
    w.tick();
    assert!(
        w.clock
            .slept_ms
            .iter()
            .any(|&s| (3_000..3_300).contains(&s)),
        "{:?}",
        w.clock.slept_ms
    );
    assert_eq!(w.incidents().len(), 1);
}

#[test]
fn a_long_rate_limit_is_remembered_and_not_hammered() {
    let mut w = world_with(vec![amp_event(102, NOW - 100, TD, None, "a")]);
    w.up.fault(
        Method::Get,
        "/v1/events",
        1,
        Ok(resp_with(429, &[("x-ratelimit-reset", "600")], "{}")),
    );
    let r = w.tick();
    assert_eq!(r.outcome, "partial");
    assert_eq!(w.up.calls(Method::Get, "/v1/events"), 1);
    w.clock.advance(120_000);
    w.tick();
    assert_eq!(
        w.up.calls(Method::Get, "/v1/events"),
        1,
        "still inside the window: no call"
    );
    w.clock.advance(500_000);
    w.tick();
    assert_eq!(w.up.calls(Method::Get, "/v1/events"), 2);
    assert_eq!(w.incidents().len(), 1);
}

#[test]
fn xdr_and_servicenow_429_flavours_are_each_honoured() {
    let mut w = world_with(vec![amp_event(103, NOW - 100, TD, None, "a")]);
    // XDR with Retry-After. (A 429 without any usable header starts a cooldown
    // instead: see `retry::tests` and `upstream::snow::tests`.)
    w.up.fault(
        Method::Post,
        "/ctia/bundle/import",
        1,
        Ok(resp_with(429, &[("Retry-After", "2")], "")),
    );
    let reset = (NOW + 5).to_string();
    w.up.fault(
        Method::Post,
        "/api/now/table/incident",
        1,
        Ok(resp_with(429, &[("X-RateLimit-Reset", &reset)], "")),
    );
    w.tick();
    assert_once_each(&w);
    let slept = &w.clock.slept_ms;
    assert!(
        slept.iter().any(|&s| (2_000..2_300).contains(&s)),
        "Retry-After: {slept:?}"
    );
    // The reset epoch is NOW + 5 s; the clock has moved on by the XDR wait.
    assert_eq!(slept.len(), 2, "{slept:?}");
    assert!(
        (4_700..5_300).contains(&(slept[0] + slept[1])),
        "epoch reset: {slept:?}"
    );
    // None of the 429s counted as a possible create: no lookups were needed.
    assert_eq!(w.up.calls(Method::Get, "/api/now/table/incident?"), 0);
}

#[test]
fn transient_errors_are_retried_a_bounded_number_of_times() {
    let mut w = world_with(vec![amp_event(104, NOW - 100, TD, None, "a")]);
    w.up.fault(
        Method::Post,
        "/ctia/bundle/import",
        100,
        Ok(resp(503, json!({"message": "unavailable"}))),
    );
    let r = w.tick();
    assert_eq!(r.outcome, "partial");
    assert_eq!(
        w.up.calls(Method::Post, "/ctia/bundle/import"),
        4,
        "max attempts"
    );
    let rec = only_incident(&w);
    assert_eq!(rec.state, State::XdrCreating);
    assert!(rec.last_error.as_deref().unwrap().contains("503"));
    assert!(
        rec.audit
            .iter()
            .any(|a| a.step == "xdr_create" && a.outcome.contains("failed"))
    );
    assert!(w.clock.slept_ms.iter().all(|&s| s <= 8_000));
    // The service recovers: the next tick looks up (it may have been created) and creates once.
    w.up.faults.clear();
    w.clock.advance(300_000);
    w.tick();
    assert_eq!(only_incident(&w).state, State::Open);
    assert_once_each(&w);
}

#[test]
fn a_step_that_works_only_on_a_retry_says_so_in_the_audit_trail_and_the_counts() {
    let mut w = world_with(vec![amp_event(107, NOW - 100, TD, None, "a")]);
    // ServiceNow is briefly unavailable: the create works on the third try.
    w.up.fault(
        Method::Post,
        "/api/now/table/incident",
        2,
        Ok(resp(503, json!({"error": {"message": "unavailable"}}))),
    );
    let r = w.tick();
    assert_eq!(r.outcome, "ok", "{r:?}");
    assert_eq!(
        (r.failed.amp, r.failed.xdr, r.failed.snow),
        (0, 0, 2),
        "failed calls per service"
    );
    let rec = only_incident(&w);
    assert_eq!(rec.state, State::Open);
    let note: Vec<&str> = rec
        .audit
        .iter()
        .filter(|a| a.step == "snow_create")
        .map(|a| a.outcome.as_str())
        .collect();
    assert_eq!(
        note,
        [
            "done after 2 failed attempt(s), tried again; last: ServiceNow POST /api/now/table/incident: HTTP 503: unavailable"
        ]
    );
    // Nothing else in the trail speaks of a failure, and the stored counters add up.
    assert_eq!(
        rec.audit
            .iter()
            .filter(|a| a.outcome.contains("fail"))
            .count(),
        1
    );
    let counters = w.kv.json("status/counters").unwrap();
    assert_eq!(counters["failed"], json!({"amp": 0, "xdr": 0, "snow": 2}));
    assert_once_each(&w);
}

#[test]
fn truncated_json_pages_are_retried() {
    let mut w = world_with(vec![amp_event(105, NOW - 100, TD, None, "a")]);
    w.up.fault(
        Method::Get,
        "/v1/events",
        2,
        Ok(resp_with(200, &[], "{\"data\":[{\"id\":1")),
    );
    w.tick();
    assert_eq!(w.up.calls(Method::Get, "/v1/events"), 3);
    assert_eq!(w.incidents().len(), 1);
}

#[test]
fn an_expired_token_is_renewed_once() {
    let mut w = world_with(vec![amp_event(106, NOW - 100, TD, None, "a")]);
    w.tick();
    assert_eq!(w.up.tokens_issued, 1);
    // The token is reused from the store by the next invocation...
    w.up.events.push(amp_event(107, NOW - 50, TD, None, "b"));
    w.clock.advance(60_000);
    w.tick();
    assert_eq!(w.up.tokens_issued, 1);
    // ...until the service rejects it: then one renewal and a retry.
    w.up.tokens_issued += 1;
    w.up.events.push(amp_event(108, NOW - 40, TD, None, "c"));
    w.clock.advance(60_000);
    w.tick();
    assert_eq!(w.up.tokens_issued, 3);
    assert_eq!(w.up.xdr_incidents.len(), 3);
}

#[test]
fn the_time_budget_leaves_work_for_the_next_tick() {
    let events = (0..5)
        .map(|i| amp_event(110 + i, NOW - 100, TD, None, &format!("h{i}")))
        .collect();
    let mut w = world_with(events);
    w.set("tick_budget_ms", "1000");
    // Each XDR import fails twice first; the backoff sleeps eat the budget.
    w.up.fault(
        Method::Post,
        "/ctia/bundle/import",
        6,
        Ok(resp(502, Value::Null)),
    );
    let r = w.tick();
    assert_eq!(r.outcome, "partial");
    assert!(r.deferred > 0, "{r:?}");
    assert_eq!(w.incidents().len(), 5, "every event was taken in");
    for _ in 0..5 {
        w.clock.advance(300_000);
        w.tick();
    }
    assert!(w.incidents().iter().all(|r| r.state == State::Open));
    assert_eq!(w.up.xdr_incidents.len(), 5);
    assert_eq!(w.up.snow_incidents.len(), 5);
}

#[test]
fn no_secret_reaches_the_store_the_routes_or_the_audit_trail() {
    let mut w = world_with(vec![amp_event(120, NOW - 100, TD, None, "a")]);
    // An upstream that echoes the credentials back in its error.
    let basic = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        "bridge:snow-pass-secret",
    );
    w.up.fault(
        Method::Post,
        "/api/now/table/incident",
        1,
        Ok(resp(
            400,
            json!({"error": {"message": format!("bad auth Basic {basic} snow-pass-secret")}}),
        )),
    );
    w.tick();
    let mut everything: Vec<String> =
        w.kv.map
            .values()
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .collect();
    for path in ["/v1/status", "/v1/incidents"] {
        everything.push(w.api("GET", path, &[], b"").body.to_string());
    }
    let key = only_incident(&w).key;
    everything.push(
        w.api("GET", &format!("/v1/incidents/{key}"), &[], b"")
            .body
            .to_string(),
    );
    let joined = everything.join("\n");
    assert!(joined.contains("bad auth"), "the error itself is kept");
    for secret in [
        "amp-key-secret",
        "xdr-secret-value",
        "snow-pass-secret",
        "tick-token-secret",
        &basic,
        "c2VjcmV0LWtleS0xMjM0NQ==",
    ] {
        assert!(!joined.contains(secret), "{secret} leaked");
    }
}

#[test]
fn routes_answer_json_and_guard_the_tick() {
    let mut w = world_with(vec![amp_event(130, NOW - 100, TD, Some("d130"), "a")]);
    assert_eq!(w.api("POST", "/v1/tick", &[], b"").status, 401);
    assert_eq!(
        w.api(
            "POST",
            "/v1/tick",
            &[("Authorization", "Bearer wrong")],
            b""
        )
        .status,
        401
    );
    let r = w.api(
        "POST",
        "/v1/tick",
        &[("authorization", "Bearer tick-token-secret")],
        b"",
    );
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["incidents_opened"], 1);
    let list = w.api("GET", "/v1/incidents", &[], b"");
    assert_eq!(list.body["count"], 1);
    assert_eq!(
        w.api("GET", "/v1/incidents?state=closed", &[], b"").body["count"],
        0
    );
    assert_eq!(
        w.api("GET", "/v1/incidents?state=open&limit=5", &[], b"")
            .body["count"],
        1
    );
    assert_eq!(
        w.api("GET", "/v1/incidents?state=bogus", &[], b"").status,
        400
    );
    assert_eq!(w.api("GET", "/v1/incidents?limit=0", &[], b"").status, 400);
    let item = &list.body["incidents"][0];
    assert_eq!(item["state"], "open");
    assert_eq!(item["host"], "a");
    assert_eq!(item["snow_number"], "INC0010001");
    assert_eq!(item["xdr_id"], "incident-1");
    let key = item["key"].as_str().unwrap().to_string();
    let full = w.api("GET", &format!("/v1/incidents/{key}"), &[], b"");
    assert!(full.body["audit"].as_array().unwrap().len() >= 5);
    assert_eq!(w.api("GET", "/v1/incidents/amp-none", &[], b"").status, 404);
    let status = w.api("GET", "/v1/status", &[], b"");
    assert_eq!(status.body["customer"], "Acme");
    assert_eq!(status.body["active_incidents"]["open"], 1);
    assert_eq!(status.body["last_tick"]["outcome"], "ok");
    assert_eq!(w.api("GET", "/v1/tick", &[], b"").status, 405);
    assert_eq!(w.api("GET", "/nope", &[], b"").status, 404);
    w.config.remove("tick_token");
    assert_eq!(
        w.api(
            "POST",
            "/v1/tick",
            &[("authorization", "Bearer tick-token-secret")],
            b""
        )
        .status,
        403
    );
    w.config.remove("amp_api_key");
    let broken = w.api("GET", "/v1/incidents", &[], b"");
    assert_eq!(broken.status, 503);
    assert!(
        broken.body["error"]
            .as_str()
            .unwrap()
            .contains("amp_api_key")
    );
    assert!(
        w.api("GET", "/v1/status", &[], b"").body["config"]
            .as_str()
            .unwrap()
            .contains("amp_api_key")
    );
}

#[test]
fn a_held_lease_skips_the_tick_and_defers_the_callback() {
    let mut w = world_with(vec![amp_event(140, NOW - 100, TD, Some("d140"), "a")]);
    w.tick();
    let rec = only_incident(&w);
    let lease = json!({"owner": "someone-else", "until_ms": NOW * 1000 + 60_000}).to_string();
    w.kv.map.insert("lease".into(), lease.into_bytes());
    assert_eq!(w.tick().outcome, "skipped");
    let body = json!({"sys_id": rec.snow.unwrap().sys_id, "state": "6", "correlation_id": rec.key})
        .to_string();
    let headers = signed(&w, &body, NOW);
    assert_eq!(post_callback(&mut w, &headers, &body).status, 202);
    assert_eq!(only_incident(&w).state, State::Open);
    // Once the holder is gone (expired), work resumes.
    w.clock.advance(61_000);
    w.up.snow_set_state(&only_incident(&w).snow.unwrap().sys_id, "6");
    assert_eq!(w.tick().incidents_closed, 1);
}

#[test]
fn refused_observables_are_reported_and_do_not_block_the_incident() {
    let mut w = world_with(vec![amp_event(150, NOW - 100, TD, None, "a")]);
    w.up.fault(Method::Post, "/ctia/bundle/import", 1, Ok(resp(200, json!({"results": [
        {"type": "incident", "result": "created", "id": "http://xdr.test:443/ctia/incident/incident-7"},
        {"type": "sighting", "result": "error", "error": {"observables": "bad"}},
    ]}))));
    w.tick();
    let rec = only_incident(&w);
    assert_eq!(rec.state, State::Open);
    assert_eq!(
        rec.xdr.as_ref().map(|x| x.short_id.as_str()),
        Some("incident-7")
    );
    assert_eq!(
        w.up.calls(Method::Post, "/ctia/bundle/import"),
        1,
        "not retried"
    );
    assert!(
        rec.audit
            .iter()
            .any(|a| a.outcome.contains("observables not attached")
                && a.outcome.contains("sighting refused"))
    );
}

/// A store that fails every write after a number of them.
struct FailingKv {
    inner: crate::testkit::FakeKv,
    writes_left: usize,
}

impl crate::ports::Kv for FailingKv {
    fn get(&mut self, key: &str) -> Result<Option<Vec<u8>>, crate::ports::KvError> {
        self.inner.get(key)
    }
    fn set(&mut self, key: &str, value: &[u8]) -> Result<(), crate::ports::KvError> {
        if self.writes_left == 0 {
            return Err(crate::ports::KvError("disk full".into()));
        }
        self.writes_left -= 1;
        self.inner.set(key, value)
    }
    fn delete(&mut self, key: &str) -> Result<(), crate::ports::KvError> {
        self.inner.delete(key)
    }
    fn list_keys(&mut self, prefix: &str) -> Result<Vec<String>, crate::ports::KvError> {
        self.inner.list_keys(prefix)
    }
    fn compare_and_swap(
        &mut self,
        key: &str,
        expected: Option<&[u8]>,
        new: &[u8],
    ) -> Result<bool, crate::ports::KvError> {
        self.inner.compare_and_swap(key, expected, new)
    }
}

#[test]
fn a_failing_store_fails_the_tick_without_moving_the_cursor() {
    let mut w = world_with(vec![
        amp_event(160, NOW - 100, TD, None, "a"),
        amp_event(161, NOW - 90, TD, None, "b"),
    ]);
    let cfg = w.cfg();
    // One record gets written, then the store breaks.
    let mut kv = FailingKv {
        inner: std::mem::take(&mut w.kv),
        writes_left: 1,
    };
    let report = crate::pipeline::run_tick(
        &mut crate::ports::Ports {
            http: &mut w.up,
            kv: &mut kv,
            clock: &mut w.clock,
        },
        &cfg,
    );
    assert_eq!(report.outcome, "failed");
    assert!(report.detail.unwrap().contains("disk full"));
    assert!(!kv.inner.map.contains_key("cursor"));
    w.kv = kv.inner;
    w.tick();
    assert_eq!(w.incidents().len(), 2);
    assert_once_each_many(&w, 2);
}

fn assert_once_each_many(w: &World, n: usize) {
    assert_eq!(w.up.xdr_incidents.len(), n);
    assert_eq!(w.up.snow_incidents.len(), n);
}

#[test]
fn a_stale_index_line_is_repaired_and_the_incident_still_closes() {
    let mut w = world_with(vec![amp_event(170, NOW - 100, TD, None, "a")]);
    w.tick();
    // A crash between the record write and the index write left the old line.
    let key = only_incident(&w).key;
    let stale = json!({"entries": [{"key": key, "state": "snow_creating", "needs_work": true}]});
    w.kv.map
        .insert("index/active".into(), stale.to_string().into_bytes());
    w.clock.advance(60_000);
    w.tick();
    assert_eq!(
        w.kv.json("index/active").unwrap()["entries"][0]["state"],
        "open"
    );
    w.up.snow_set_state(&only_incident(&w).snow.unwrap().sys_id, "6");
    w.tick();
    assert_eq!(only_incident(&w).state, State::Closed);
    assert_once_each(&w);
}

#[test]
fn a_close_interrupted_before_its_index_line_was_written_is_finished_by_reconcile() {
    let mut w = world_with(vec![amp_event(180, NOW - 100, TD, None, "a")]);
    w.tick();
    let mut rec = only_incident(&w);
    // The record says closing; the index, written before the crash, still says open.
    rec.begin_close("callback", "6", None, NOW * 1000);
    let key = crate::store::incident_key(&rec.key);
    w.kv.map.insert(key, serde_json::to_vec(&rec).unwrap());
    w.up.snow_set_state(&rec.snow.unwrap().sys_id, "6");
    w.clock.advance(60_000);
    w.tick();
    let rec = only_incident(&w);
    assert_eq!(rec.state, State::Closed);
    assert_eq!(rec.close.unwrap().source, "callback");
    assert_eq!(w.up.xdr_incidents[0]["status"], "Closed");
}

#[test]
fn a_host_contained_by_two_incidents_is_released_when_the_last_one_closes() {
    let mut w = world_with(vec![
        amp_event(190, NOW - 100, TD, Some("first"), "host-a"),
        amp_event(191, NOW - 90, QF, Some("second"), "host-a"),
    ]);
    w.set("containment", "isolate");
    w.tick();
    let all = w.incidents();
    assert_eq!(all.len(), 2);
    assert_eq!(
        w.up.calls(Method::Put, "/v1/computers/guid-host-a/isolation"),
        1
    );
    let (first, second): (Vec<_>, Vec<_>) = all
        .into_iter()
        .partition(|r| r.containment.as_ref().unwrap().isolated);
    let (first, second) = (&first[0], &second[0]);
    let outcome = second
        .containment
        .as_ref()
        .unwrap()
        .outcome
        .clone()
        .unwrap();
    assert!(
        outcome.starts_with(&format!(
            "host already isolated by the bridge for incident {} (status ",
            first.key
        )),
        "{outcome}"
    );
    w.up.snow_set_state(&first.snow.as_ref().unwrap().sys_id, "7");
    w.clock.advance(60_000);
    w.tick();
    assert_eq!(
        w.up.computers["guid-host-a"].isolation, "isolated",
        "the second incident still needs it"
    );
    assert_eq!(
        w.up.calls(Method::Delete, "/v1/computers/guid-host-a/isolation"),
        0
    );
    let heir = w
        .incidents()
        .into_iter()
        .find(|r| r.key == second.key)
        .unwrap();
    assert!(heir.containment.unwrap().isolated);
    w.up.snow_set_state(&second.snow.as_ref().unwrap().sys_id, "6");
    w.clock.advance(60_000);
    w.tick();
    assert_eq!(w.up.computers["guid-host-a"].isolation, "not_isolated");
    assert!(w.incidents().iter().all(|r| r.state == State::Closed));
}

#[test]
fn a_host_moved_by_two_incidents_goes_back_to_its_original_group_at_the_end() {
    let mut w = world_with(vec![
        amp_event(192, NOW - 100, TD, Some("m1"), "host-a"),
        amp_event(193, NOW - 90, TD, Some("m2"), "host-a"),
    ]);
    w.set("containment", "move");
    w.set("triage_group_guid", "group-triage");
    w.tick();
    let all = w.incidents();
    let first = all
        .iter()
        .find(|r| r.containment.as_ref().unwrap().moved)
        .unwrap()
        .clone();
    let second = all.iter().find(|r| r.key != first.key).unwrap().clone();
    w.up.snow_set_state(&first.snow.unwrap().sys_id, "7");
    w.tick();
    assert_eq!(w.up.computers["guid-host-a"].group_guid, "group-triage");
    w.up.snow_set_state(&second.snow.unwrap().sys_id, "7");
    w.tick();
    assert_eq!(w.up.computers["guid-host-a"].group_guid, "group-original");
}

#[test]
fn upstream_call_economy_per_incident() {
    let n = 50;
    let events = (0..n)
        .map(|i| amp_event(1_000 + i, NOW - 500 + i as i64, TD, None, &format!("h{i}")))
        .collect();
    let mut w = world_with(events);
    w.tick();
    for _ in 0..4 {
        w.clock.advance(60_000);
        w.tick();
    }
    let per = |calls: usize| calls as f64 / n as f64;
    let xdr_open = w.up.host_calls("xdr.test");
    let snow_open = w.up.host_calls("snow.test");
    assert!(
        per(xdr_open) <= 2.1,
        "XDR per incident to open: {}",
        per(xdr_open)
    );
    assert!(
        per(snow_open) <= 1.1,
        "ServiceNow per incident incl. reconcile: {}",
        per(snow_open)
    );
    assert_eq!(
        w.up.calls(Method::Get, "/v1/events"),
        5,
        "one Secure Endpoint call per tick"
    );
    assert_eq!(
        w.up.calls(Method::Get, "/v1/event_types"),
        1,
        "event types cached"
    );
    // ServiceNow closes them all: one query finds them; XDR pays status + one patch each.
    for r in w.incidents() {
        w.up.snow_set_state(&r.snow.unwrap().sys_id, "7");
    }
    w.clock.advance(60_000);
    w.tick();
    assert!(w.incidents().iter().all(|r| r.state == State::Closed));
    let xdr_close = w.up.host_calls("xdr.test") - xdr_open;
    assert!(per(xdr_close) <= 2.0, "XDR per close: {}", per(xdr_close));
    // One reconcile query closes all; each close then writes its closing work note.
    assert_eq!(
        w.up.host_calls("snow.test") - snow_open,
        1 + n as usize,
        "one reconcile query closes all, one closing note each"
    );
}

#[test]
fn a_destination_denied_by_the_host_is_named_in_the_error() {
    let mut w = world_with(vec![amp_event(200, NOW - 100, TD, None, "a")]);
    w.up.fault(
        Method::Get,
        "/v1/events",
        1,
        Err(HttpError::Denied("HttpRequestDenied".into())),
    );
    let r = w.tick();
    assert_eq!(
        w.up.calls(Method::Get, "/v1/events"),
        1,
        "a denial is not retried"
    );
    assert!(
        r.errors[0].contains("https://amp.test is not allowed"),
        "{:?}",
        r.errors
    );
}

const DAY: i64 = 86_400;
const TOKEN: (&str, &str) = ("authorization", "Bearer tick-token-secret");

fn post_backfill(w: &mut World, body: &str) -> crate::api::ApiResponse {
    w.api("POST", "/v1/backfill", &[TOKEN], body.as_bytes())
}

#[test]
fn a_backfill_replays_last_week_oldest_first_and_adds_only_new_detections() {
    let mut w = world_with(vec![
        amp_event(501, NOW - 5 * DAY, TD, Some("dA"), "host-a"),
        amp_event(502, NOW - 2 * DAY, TD, Some("dB"), "host-b"),
        // An older sighting of the detection the live poll sees below.
        amp_event(503, NOW - 3 * DAY, QF, Some("dC"), "host-c"),
        amp_event(504, NOW - 1_800, TD, Some("dC"), "host-c"),
    ]);
    w.tick();
    assert_eq!(w.incidents().len(), 1, "the live look-back is one hour");
    let live_cursor = w.kv.json("cursor").unwrap()["since"].clone();
    assert!(w.api("GET", "/v1/status", &[], b"").body["backfill"].is_null());

    let since = NOW - 7 * DAY;
    let r = post_backfill(&mut w, &format!(r#"{{"since": {since}}}"#));
    assert_eq!(r.status, 202, "{:?}", r.body);
    assert_eq!(r.body, json!({"accepted": true, "since": since}));
    assert_eq!(
        post_backfill(&mut w, &format!(r#"{{"since": {since}}}"#)).status,
        409,
        "one backfill at a time"
    );
    let r = post_backfill(&mut w, &format!(r#"{{"since": {since}, "restart": true}}"#));
    assert_eq!(r.status, 202);
    let pending = w.api("GET", "/v1/status", &[], b"").body["backfill"].clone();
    assert_eq!(pending["done"], false);

    w.clock.advance(60_000);
    let report = w.tick();
    // The window ends at the live cursor, which followed the clock after the
    // live poll read everything: 504, taken in live, is seen again (and
    // recognised, below).
    assert_eq!(report.backfill_events, 4, "{report:?}");
    let status = w.api("GET", "/v1/status", &[], b"").body["backfill"].clone();
    assert_eq!(status["done"], true, "{status}");
    assert_eq!(status["events_seen"], 4);
    assert_eq!(status["incidents_opened"], 2);
    assert_eq!(status["since"], mssp_contract::civil::iso_seconds(since));
    // Oldest first: A (5 days ago) was opened before B (2 days ago).
    let titles: Vec<&str> =
        w.up.xdr_incidents
            .iter()
            .map(|i| i["title"].as_str().unwrap())
            .collect();
    assert!(
        titles[1].contains("host-a") && titles[2].contains("host-b"),
        "{titles:?}"
    );
    // The known detection gained nothing; the live cursor did not move back.
    let c = w
        .incidents()
        .into_iter()
        .find(|r| r.key.ends_with("-ddC"))
        .unwrap();
    assert_eq!(c.event_ids, vec![504]);
    assert_eq!(w.kv.json("cursor").unwrap()["since"], live_cursor);
    assert_eq!(w.up.xdr_incidents.len(), 3);
    assert_eq!(w.up.snow_incidents.len(), 3);

    // Done: nothing more is read for it, and a new backfill may start.
    w.clock.advance(60_000);
    let before = w.up.calls(Method::Get, "/v1/events");
    w.tick();
    assert_eq!(w.up.calls(Method::Get, "/v1/events") - before, 1);
    assert_eq!(
        post_backfill(&mut w, &format!(r#"{{"since": {since}}}"#)).status,
        202
    );
    w.tick();
    assert_eq!(w.up.xdr_incidents.len(), 3, "a second replay adds nothing");
}

#[test]
fn a_long_backfill_shares_ticks_with_the_live_poll() {
    // 300 old lone events, 3 per page: the replay needs more than one tick's share
    // (50 pages), while each tick still takes in what happens live.
    let old: Vec<Value> = (0..300u64)
        .map(|i| lean_event(7_000 + i, NOW - 3 * DAY + i as i64 * 60, "Low"))
        .collect();
    let mut w = world_with(old);
    w.set("severities", "High,Critical");
    w.up.page_size = 3;
    w.tick();
    assert_eq!(
        post_backfill(&mut w, &format!(r#"{{"since": {}}}"#, NOW - 4 * DAY)).status,
        202
    );
    let mut seen = 0;
    for k in 0..4u64 {
        w.clock.advance(60_000);
        let t = (w.clock.now_ms / 1000) - 5;
        w.up.events.push(lean_event(90_000 + k, t, "High"));
        let cursor_before = w.kv.json("cursor").unwrap()["since"].as_i64().unwrap();
        let r = w.tick();
        assert_eq!(
            r.events_new, 1,
            "the live event of tick {k} is taken at once"
        );
        assert!(w.kv.json("cursor").unwrap()["since"].as_i64().unwrap() >= cursor_before);
        seen += r.backfill_events;
    }
    assert_eq!(seen, 300, "every old event replayed once");
    let status = w.api("GET", "/v1/status", &[], b"").body["backfill"].clone();
    assert_eq!(status["done"], true);
    assert_eq!(status["events_seen"], 300);
    assert_eq!(status["incidents_opened"], 0, "all Low: filtered out");
    assert_eq!(w.incidents().len(), 4);
}

#[test]
fn backfill_requests_are_checked_like_the_tick() {
    let mut w = world_with(vec![]);
    let since = format!(r#"{{"since": {}}}"#, NOW - DAY);
    assert_eq!(
        w.api("POST", "/v1/backfill", &[], since.as_bytes()).status,
        401
    );
    assert_eq!(
        w.api(
            "POST",
            "/v1/backfill",
            &[("authorization", "Bearer nope")],
            since.as_bytes()
        )
        .status,
        401
    );
    assert_eq!(w.api("GET", "/v1/backfill", &[TOKEN], b"").status, 405);
    for bad in [
        "",
        "{",
        "{}",
        r#"{"since": "yesterday"}"#,
        r#"{"since": 1.5}"#,
        &format!(r#"{{"since": {}}}"#, NOW + 60),
        r#"{"since": 100, "restart": "yes"}"#,
    ] {
        let r = post_backfill(&mut w, bad);
        assert_eq!(r.status, 400, "{bad}: {:?}", r.body);
        assert!(r.body["error"].as_str().unwrap().contains("backfill"));
    }
    assert!(
        !w.kv.map.contains_key("backfill/request"),
        "nothing recorded"
    );
    w.config.remove("tick_token");
    assert_eq!(post_backfill(&mut w, &since).status, 403);
}

#[test]
fn by_default_the_read_routes_refuse_anonymous_reads() {
    let mut w = world_with(vec![amp_event(611, NOW - 100, TD, Some("d611"), "a")]);
    w.config.remove("open_reads");
    w.tick();
    let host = ("authorization", "Bearer host-run-secret-77");
    for path in ["/v1/status", "/v1/incidents", "/v1/incidents/amp-x"] {
        let refused = w.api("GET", path, &[], b"");
        assert_eq!(refused.status, 401, "{path}");
        assert!(
            refused.body["error"]
                .as_str()
                .is_some_and(|e| e.contains("read_token") && e.contains("open_reads")),
            "the refusal says how to allow reads: {}",
            refused.body
        );
        assert_eq!(w.api("GET", path, &[TOKEN], b"").status, 401, "{path}");
        assert_eq!(w.api("GET", path, &[host], b"").status, 401, "{path}");
    }
    // The running host's own credential reads (its status page, CLI), whatever the
    // operator configured; an explicit opt-in opens reads to anyone.
    w.set(mssp_contract::HOST_READ_TOKEN, "host-run-secret-77");
    assert_eq!(w.api("GET", "/v1/status", &[host], b"").status, 200);
    w.set("read_token", "read-token-0123456");
    assert_eq!(w.api("GET", "/v1/incidents", &[host], b"").status, 200);
    w.config.remove("read_token");
    w.set("open_reads", "TRUE");
    assert_eq!(w.api("GET", "/v1/status", &[], b"").status, 200);
    w.set("open_reads", "yes");
    let refused = w.api("GET", "/v1/status", &[], b"");
    assert_eq!(refused.status, 401, "only an exact true opens reads");
    let verdict = w.api("GET", "/v1/status", &[host], b"").body["config"].clone();
    assert!(
        verdict
            .as_str()
            .is_some_and(|v| v.contains("\"open_reads\" must be true or false, not \"yes\"")),
        "the configuration names the mistake: {verdict}"
    );
}

#[test]
fn with_a_read_token_the_read_routes_need_it() {
    let mut w = world_with(vec![amp_event(601, NOW - 100, TD, Some("d601"), "a")]);
    w.set("read_token", "read-token-0123456");
    w.tick();
    let reader = ("authorization", "Bearer read-token-0123456");
    for path in ["/v1/status", "/v1/incidents"] {
        assert_eq!(w.api("GET", path, &[], b"").status, 401, "{path}");
        assert_eq!(w.api("GET", path, &[TOKEN], b"").status, 401, "{path}");
        assert_eq!(w.api("GET", path, &[reader], b"").status, 200, "{path}");
    }
    assert_eq!(w.api("POST", "/v1/tick", &[reader], b"").status, 401);
    assert_eq!(w.api("POST", "/v1/tick", &[TOKEN], b"").status, 200);
}

#[test]
fn status_counts_events_incidents_calls_and_rate_limits_over_invocations() {
    let mut low = amp_event(702, NOW - 90, TD, None, "b");
    low["severity"] = json!("Low");
    let mut w = world_with(vec![amp_event(701, NOW - 100, TD, Some("d701"), "a"), low]);
    w.set("severities", "High,Critical");
    w.up.fault(
        Method::Post,
        "/ctia/bundle/import",
        1,
        Ok(resp_with(429, &[("Retry-After", "1")], "")),
    );
    let first = w.tick();
    let counters = |w: &mut World| w.api("GET", "/v1/status", &[], b"").body["counters"].clone();
    let c = counters(&mut w);
    assert_eq!(c["events_seen"], 2);
    assert_eq!(c["events_kept"], 1, "the Low one is filtered out");
    assert_eq!(c["incidents_opened"], 1);
    assert_eq!(c["incidents_closed"], 0);
    assert_eq!(c["rate_limited"], json!({"amp": 0, "xdr": 1, "snow": 0}));
    assert_eq!(c["calls"], json!(first.calls));
    assert_eq!(
        w.kv.writes
            .iter()
            .filter(|k| *k == "status/counters")
            .count(),
        1,
        "once per tick"
    );

    // The callback that closes it is counted too, with its calls.
    let rec = only_incident(&w);
    let snow = rec.snow.clone().unwrap();
    let body = json!({"sys_id": snow.sys_id, "number": snow.number, "state": "7", "correlation_id": rec.key}).to_string();
    let headers = signed(&w, &body, NOW);
    assert_eq!(post_callback(&mut w, &headers, &body).status, 200);
    let c = counters(&mut w);
    assert_eq!(c["incidents_closed"], 0, "the XDR close waits for the tick");
    assert_eq!(c["calls"]["xdr"], first.calls.xdr);
    w.clock.advance(60_000);
    w.tick();
    let c = counters(&mut w);
    assert_eq!(c["incidents_closed"], 1);
    assert_eq!(
        c["calls"]["xdr"],
        first.calls.xdr + 2,
        "one bulk read, one PATCH closes it with the reference"
    );
    // An idle tick adds its one Secure Endpoint call.
    w.clock.advance(60_000);
    w.tick();
    let c2 = counters(&mut w);
    assert_eq!(c2["calls"]["amp"], c["calls"]["amp"].as_u64().unwrap() + 1);
    assert_eq!(c2["events_seen"], 2);
    assert_eq!(
        w.kv.writes
            .iter()
            .filter(|k| *k == "status/counters")
            .count(),
        3,
        "the callback (no host steps, XDR left to the tick) changed no counter"
    );
}

#[test]
fn closed_incidents_are_forgotten_after_the_retention_period() {
    let mut w = world_with(vec![
        amp_event(801, NOW - 100, TD, Some("d801"), "a"),
        amp_event(802, NOW - 90, TD, Some("d802"), "b"),
    ]);
    w.set("retention_days", "10");
    w.tick();
    let closing = w
        .incidents()
        .into_iter()
        .find(|r| r.key.ends_with("d801"))
        .unwrap();
    let snow = closing.snow.clone().unwrap();
    let body = json!({"sys_id": snow.sys_id, "number": snow.number, "state": "7", "correlation_id": closing.key}).to_string();
    let headers = signed(&w, &body, NOW);
    assert_eq!(post_callback(&mut w, &headers, &body).status, 200);
    w.tick();
    let snow_map = format!("snow/{}", snow.sys_id);
    assert!(w.kv.map.contains_key(&snow_map));

    // Nine days later it is still there; after ten, it goes (record and mapping).
    w.clock.advance(9 * 86_400_000);
    assert_eq!(w.tick().incidents_pruned, 0);
    assert_eq!(w.incidents().len(), 2);
    w.clock.advance(86_400_000 + 1_000);
    let r = w.tick();
    assert_eq!(r.incidents_pruned, 1);
    let left = only_incident(&w);
    assert!(left.key.ends_with("d802"), "the open one stays");
    assert!(!w.kv.map.contains_key(&snow_map));
    assert_eq!(w.kv.json("index/closed").unwrap()["entries"], json!([]));
    // A callback for the forgotten incident is now unknown.
    let headers = signed(&w, &body, w.clock.now_ms / 1000);
    assert_eq!(post_callback(&mut w, &headers, &body).status, 404);
}

#[test]
fn old_closed_records_are_found_by_a_scan_and_pruned_a_few_per_tick() {
    let mut w = world_with(vec![]);
    // 30 records closed 40 days ago, written before `index/closed` existed.
    for i in 0..30 {
        let mut rec = crate::incident::IncidentRecord::new(&format!("legacy-{i}"), 0);
        rec.state = State::Closed;
        rec.updated_at = (NOW - 40 * 86_400) * 1000;
        w.kv.map.insert(
            format!("incident/legacy-{i}"),
            serde_json::to_vec(&rec).unwrap(),
        );
    }
    let mut recent = crate::incident::IncidentRecord::new("recent-close", 0);
    recent.state = State::Closed;
    recent.updated_at = (NOW - 86_400) * 1000;
    w.kv.map.insert(
        "incident/recent-close".into(),
        serde_json::to_vec(&recent).unwrap(),
    );
    assert_eq!(
        w.tick().incidents_pruned,
        crate::retention::MAX_PRUNED_PER_TICK
    );
    w.clock.advance(60_000);
    assert_eq!(w.tick().incidents_pruned, 5);
    w.clock.advance(60_000);
    assert_eq!(w.tick().incidents_pruned, 0);
    assert_eq!(only_incident(&w).key, "recent-close");
}

#[test]
fn the_bench_route_runs_the_page_pipeline_for_the_tick_token_only() {
    let mut w = world_with(vec![]);
    let data: Vec<Value> = (0..500u64)
        .map(|i| {
            amp_event(
                6_533_241_145_273_614_339 + i,
                NOW - 1_000 + i as i64,
                TD,
                Some(&format!("{}", 900 + i % 50)),
                &format!("host-{i}"),
            )
        })
        .collect();
    let page = json!({"version": "v1.2.0", "metadata": {"links": {}, "results": {"total": 500}}, "data": data}).to_string();
    let r = w.api("POST", "/v1/bench/pipeline", &[TOKEN], page.as_bytes());
    assert_eq!(r.status, 200, "{:?}", r.body);
    let expected = crate::bench::process_page(page.as_bytes(), &w.cfg()).unwrap();
    assert_eq!(r.body["events"], 500);
    assert_eq!(r.body["groups"], 50);
    assert_eq!(r.body["xdr_bytes"], expected.xdr_bytes);
    assert_eq!(r.body["snow_bytes"], expected.snow_bytes);
    assert!(r.body["elapsed_ns"].is_u64());
    assert!(
        w.up.log.is_empty() && w.incidents().is_empty(),
        "no upstream call, nothing stored"
    );
    assert_eq!(
        w.api("POST", "/v1/bench/pipeline", &[], page.as_bytes())
            .status,
        401
    );
    assert_eq!(
        w.api("POST", "/v1/bench/pipeline", &[TOKEN], b"[1,2]")
            .status,
        400
    );
    // Only the token holder may send a page larger than the ordinary body cap.
    let access = mssp_contract::access::Access::from_config(&|k| w.config.get(k).cloned());
    let h = |v: &str| vec![("authorization".to_string(), v.to_string())];
    let token = h("Bearer tick-token-secret");
    assert_eq!(
        crate::api::body_limit("/v1/bench/pipeline", &token, &access),
        crate::api::MAX_BENCH_BODY
    );
    assert_eq!(
        crate::api::body_limit("/v1/bench/pipeline", &h("Bearer x"), &access),
        crate::api::MAX_BODY
    );
    assert_eq!(
        crate::api::body_limit("/v1/tick", &token, &access),
        crate::api::MAX_BODY
    );
    assert!(page.len() > crate::api::MAX_BODY);
}

#[test]
fn a_crash_in_the_middle_of_a_backlog_resumes_where_it_stopped_without_duplicates() {
    let events: Vec<Value> = (0..30u64)
        .map(|i| lean_event(40_000 + i, NOW - 3_000 + i as i64 * 60, "High"))
        .collect();
    let mut w = world_with(events);
    w.up.page_size = 5;
    w.set("debug_crash_after", "new");
    let mut crashes = 0;
    for _ in 0..100 {
        match w.tick_may_crash() {
            Some(_) => crashes += 1,
            None => {
                if w.kv
                    .json("cursor")
                    .is_some_and(|c| c.get("paging").is_none())
                    && w.incidents().len() == 30
                {
                    break;
                }
            }
        }
        w.clock.advance(1_000);
    }
    assert_eq!(crashes, 30, "one simulated crash per new incident");
    assert_eq!(w.incidents().len(), 30);
    assert_eq!(w.up.xdr_incidents.len(), 30);
    assert_eq!(w.up.snow_incidents.len(), 30);
    // Pages already taken in were not read again after each crash: each resumed tick
    // reads offset 0 and the page where the walk stopped (re-reading from the oldest end
    // every time would take well over 100 requests).
    let reads = w.up.calls(Method::Get, "/v1/events");
    assert!(reads <= 31 * 2 + 8, "{reads}");
}

#[test]
fn a_busy_customer_with_arrivals_between_every_request_still_gets_its_backlog_read() {
    // 1 000 old events, 100 per page (margin 10), and 25 new ones after each of the
    // first 15 requests: more than the margin, so it has to widen.
    let events: Vec<Value> = (0..1_000u64)
        .map(|i| lean_event(20_000 + i, NOW - 3_000 + i as i64, "Low"))
        .collect();
    let mut w = world_with(events);
    w.set("severities", "High,Critical");
    w.up.page_size = 100;
    let mut next_id = 80_000u64;
    for at in 1..=15usize {
        let batch = (0..25)
            .map(|_| {
                next_id += 1;
                lean_event(next_id, NOW - 5, "Low")
            })
            .collect();
        w.up.arrivals.push((at, batch));
    }
    let r = w.tick();
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert!(!r.backlog, "read to the newest end in one tick");
    assert!(
        w.up.events_requests > 15,
        "every burst arrived while paging"
    );
    let mut taken = r.events_new;
    w.clock.advance(60_000);
    taken += w.tick().events_new;
    assert_eq!(taken, 1_000 + 15 * 25, "every event once");
    // Pages were asked again when a burst made them miss.
    let offsets = event_offsets(&w);
    assert!(offsets.windows(2).any(|p| p[1] > p[0]), "{offsets:?}");
}

#[test]
fn garbled_answers_to_the_isolation_probe_and_stop_are_retried_not_believed() {
    let mut w = world_with(vec![amp_event(901, NOW - 100, TD, Some("d901"), "host-a")]);
    w.set("containment", "isolate");
    // A 200 with a damaged body and no Allow header: not "isolation unavailable".
    w.up.fault(
        Method::Options,
        "/isolation",
        1,
        Ok(resp_with(200, &[], "{\"data\": [tru")),
    );
    w.tick();
    let rec = only_incident(&w);
    assert_eq!(rec.state, State::Open, "{:?}", rec.audit);
    assert!(rec.containment.as_ref().unwrap().isolated);
    assert_eq!(
        w.up.calls(Method::Options, "/v1/computers"),
        2,
        "probed again"
    );
    assert_eq!(w.up.computers["guid-host-a"].isolation, "isolated");

    // The analyst closes it; the first stop answer is damaged (the stop did not happen).
    let sys_id = rec.snow.clone().unwrap().sys_id;
    w.up.snow_set_state(&sys_id, "6");
    w.up.fault(
        Method::Delete,
        "/isolation",
        1,
        Ok(resp_with(200, &[], "<html>proxy error")),
    );
    w.clock.advance(60_000);
    w.tick();
    let rec = only_incident(&w);
    assert_eq!(rec.state, State::Closed, "{:?}", rec.audit);
    assert_eq!(
        w.up.calls(Method::Delete, "/v1/computers"),
        2,
        "stop sent again"
    );
    assert_eq!(w.up.computers["guid-host-a"].isolation, "not_isolated");
}
