//! Scenarios of the XDR writes and the close (found by review of issue 14): one unreadable
//! XDR incident fails only its own close, a lost import answer does not disown the
//! bridge's own text, and earlier failed steps do not use up the close note's attempts.

use serde_json::json;

use crate::incident::State;
use crate::ports::{HttpError, Method};
use crate::testkit::{NOW, World, amp_event, resp};

const TD: u64 = 1_090_519_054;

fn closed_in_snow(w: &mut World, key_part: &str) {
    let rec = w
        .incidents()
        .into_iter()
        .find(|r| r.key.contains(key_part))
        .unwrap();
    let sys_id = rec.snow.unwrap().sys_id;
    w.up.snow_set_state(&sys_id, "7");
}

/// Finding A: one incident whose XDR entity the bridge may not read (CTIA: `null` in the
/// bulk answer, 403 on the single GET — e.g. an analyst set TLP red) blocks every other
/// incident's XDR close for ever.
#[test]
fn one_unreadable_xdr_incident_does_not_block_the_others_closes() {
    let mut w = World::new();
    w.up.events = vec![
        amp_event(11, NOW - 100, TD, Some("d11"), "host-a"),
        amp_event(12, NOW - 90, TD, Some("d12"), "host-b"),
    ];
    w.tick();
    assert_eq!(w.incidents().len(), 2);
    assert!(w.incidents().iter().all(|r| r.state == State::Open));
    closed_in_snow(&mut w, "d11");
    closed_in_snow(&mut w, "d12");
    let d11 = w
        .incidents()
        .into_iter()
        .find(|r| r.key.contains("d11"))
        .unwrap();
    let short = d11.xdr.unwrap().short_id;
    // CTIA hides the entity in the bulk answer and refuses the single read.
    for _ in 0..5 {
        w.up.fault(
            Method::Get,
            &format!("/ctia/incident/{short}"),
            1,
            Ok(resp(
                403,
                json!({"error": "Access Control validation Error"}),
            )),
        );
    }
    w.up.fault(
        Method::Get,
        "/ctia/bulk",
        5,
        Ok(resp(200, json!({"incidents": [null]}))),
    );
    let mut errors = Vec::new();
    for _ in 0..3 {
        w.clock.advance(60_000);
        errors.extend(w.tick().errors);
    }
    let d12 = w
        .incidents()
        .into_iter()
        .find(|r| r.key.contains("d12"))
        .unwrap();
    assert_eq!(d12.state, State::Closed, "{errors:#?}");
}

/// Finding B: an import that took effect but whose answer was lost, then a later event
/// of the same detection before the retry: the retry answers `exists`, the bridge records
/// the *new* bundle's description/severity as what it wrote, so its own (older) text in
/// XDR counts as an analyst's edit and is never updated again.
#[test]
fn after_an_exists_import_the_bridge_still_updates_its_own_description_and_severity() {
    let mut w = World::new();
    let mut e1 = amp_event(21, NOW - 100, TD, Some("d21"), "host-a");
    e1["severity"] = json!("Low");
    w.up.events = vec![e1];
    // The import reaches CTIA, then every answer of this tick is lost.
    w.up.fault_after_effect(
        Method::Post,
        "/ctia/bundle/import",
        Err(HttpError::Timeout("first byte".into())),
    );
    w.up.fault(
        Method::Post,
        "/ctia/bundle/import",
        3,
        Err(HttpError::Timeout("first byte".into())),
    );
    w.tick();
    assert_eq!(w.up.xdr_incidents.len(), 1);
    assert_eq!(w.incidents()[0].state, State::XdrCreating);
    // The Quarantine Failure / second event of the same detection, more severe.
    let mut e2 = amp_event(22, NOW - 50, TD, Some("d21"), "host-a");
    e2["severity"] = json!("Critical");
    w.up.events.push(e2);
    for _ in 0..3 {
        w.clock.advance(60_000);
        w.tick();
    }
    assert_eq!(w.up.xdr_incidents.len(), 1, "no duplicate");
    let rec = &w.incidents()[0];
    let xdr = &w.up.xdr_incidents[0];
    assert!(
        xdr["description"].as_str().unwrap().contains("event 22")
            || !rec
                .audit
                .iter()
                .any(|a| a.outcome.contains("changed in XDR since")),
        "XDR description lacks the second event; audit: {:#?}",
        rec.audit
    );
    assert_eq!(xdr["severity"], "Critical", "audit: {:#?}", rec.audit);
}

/// Finding C: `rec.attempts` is not reset when the XDR close step succeeds, so failures
/// of that step count against the closing work note: one transient ServiceNow failure
/// after two failed XDR ticks gives the note up for good.
#[test]
fn xdr_close_failures_do_not_use_up_the_close_notes_attempts() {
    let mut w = World::new();
    w.up.events = vec![amp_event(31, NOW - 100, TD, Some("d31"), "host-a")];
    w.tick();
    closed_in_snow(&mut w, "d31");
    let sys_id = w.incidents()[0].snow.clone().unwrap().sys_id;
    // Two ticks in which XDR's PATCH fails (every retry).
    w.up.fault(
        Method::Patch,
        "/ctia/incident/",
        8,
        Ok(resp(503, json!({"error": "x"}))),
    );
    for _ in 0..2 {
        w.clock.advance(60_000);
        w.tick();
    }
    assert_eq!(w.incidents()[0].state, State::Closing);
    // Third tick: XDR works; ServiceNow has one bad moment (all retries of one call).
    w.up.fault(
        Method::Patch,
        "/api/now/table/incident/",
        4,
        Ok(resp(503, json!({"error": {"message": "x"}}))),
    );
    w.clock.advance(60_000);
    w.tick();
    w.clock.advance(60_000);
    w.tick();
    let rec = &w.incidents()[0];
    let notes = w.up.snow_notes.get(&sys_id).cloned().unwrap_or_default();
    assert!(
        notes.iter().any(|n| n.contains("closed the loop")),
        "closing note never written; audit: {:#?}",
        rec.audit
    );
}
