//! Shared upstream accounts, as the component sees them: the host may answer a request
//! itself (`429`, `Retry-After`, `x-mssp-deferred`), and the reconcile poll of ServiceNow
//! has its own cadence (`reconcile_interval_secs`).

use crate::incident::State;
use crate::ports::Method;
use crate::testkit::{NOW, World, amp_event, resp_with};

const TD: u64 = 1_090_519_054;

/// The host's own answer when the shared account is out of budget or cooling down.
fn held_back(reason: &str, secs: &str) -> crate::ports::Response {
    resp_with(
        429,
        &[
            ("Retry-After", secs),
            (mssp_contract::DEFERRED_HEADER, reason),
        ],
        r#"{"error":"deferred by the host"}"#,
    )
}

fn two_detections() -> World {
    let mut w = World::new();
    w.up.events = vec![
        amp_event(201, NOW - 100, TD, None, "host-a"),
        amp_event(202, NOW - 90, TD, None, "host-b"),
    ];
    w
}

#[test]
fn a_servicenow_deferral_spends_no_retry_and_the_service_is_left_alone_for_the_tick() {
    for reason in ["budget", "cooldown"] {
        let mut w = two_detections();
        w.up.fault(
            Method::Post,
            "/api/now/table/incident",
            1,
            Ok(held_back(reason, "5")),
        );
        let r = w.tick();
        // One answer from the host, no retry, and the second incident did not ask.
        assert_eq!(w.up.calls(Method::Post, "/api/now/table/incident"), 1);
        assert!(w.clock.slept_ms.is_empty(), "{:?}", w.clock.slept_ms);
        assert_eq!(r.calls.snow, 0, "no call reached ServiceNow");
        assert_eq!(r.rate_limited.snow, 0);
        assert_eq!(r.failed.snow, 0);
        assert_eq!(r.outcome, "partial");
        let held = r
            .cooldowns
            .iter()
            .find(|c| c.service == "ServiceNow")
            .expect("the report names the held-back service");
        assert!(held.reason.contains(reason), "{}", held.reason);
        assert!(held.reason.contains("retry after 5 s"), "{}", held.reason);
        // XDR went on; no incident carries a failure, none is left marked "maybe sent"
        // (the held-back one's mark is taken back, the other was never marked).
        assert_eq!(w.up.xdr_incidents.len(), 2);
        let states: Vec<State> = w.incidents().iter().map(|i| i.state).collect();
        assert_eq!(states, [State::Contained, State::Contained]);
        assert!(w.incidents().iter().all(|i| i.last_error.is_none()));
        assert!(w.incidents().iter().any(|i| {
            i.audit.iter().any(|a| {
                a.outcome
                    .contains("held back by the host before it was sent")
            })
        }));
        // The budget is back: both open, each once, without a look-up.
        w.clock.advance(60_000);
        w.tick();
        assert!(w.incidents().iter().all(|i| i.state == State::Open));
        assert_eq!(w.up.snow_incidents.len(), 2);
        assert_eq!(w.up.calls(Method::Get, "/api/now/table/incident?"), 0);
    }
}

#[test]
fn a_plain_429_is_still_retried_inline_but_a_deferral_of_the_same_wait_is_not() {
    let mut plain = two_detections();
    plain.up.fault(
        Method::Post,
        "/ctia/bundle/import",
        1,
        Ok(resp_with(429, &[("Retry-After", "2")], "")),
    );
    plain.tick();
    assert_eq!(plain.up.calls(Method::Post, "/ctia/bundle/import"), 3);
    assert!(plain.clock.slept_ms.iter().any(|&s| s >= 2_000));

    let mut held = two_detections();
    held.up.fault(
        Method::Post,
        "/ctia/bundle/import",
        1,
        Ok(held_back("budget", "2")),
    );
    let r = held.tick();
    assert_eq!(held.up.calls(Method::Post, "/ctia/bundle/import"), 1);
    assert!(held.clock.slept_ms.is_empty(), "{:?}", held.clock.slept_ms);
    assert_eq!(
        r.calls.xdr, 1,
        "the token only; the import never left the host"
    );
    assert!(
        held.up.snow_incidents.is_empty(),
        "nothing ran ahead of XDR"
    );
    // The record of the service's own 429s is untouched: the host keeps the account's.
    assert_eq!(held.kv.json("throttle"), None);
}

#[test]
fn the_reconcile_poll_runs_once_per_interval_and_a_held_back_one_is_tried_next_tick() {
    let mut w = World::new();
    w.set("reconcile_interval_secs", "900");
    w.up.events = vec![amp_event(301, NOW - 100, TD, None, "host-a")];
    w.tick();
    assert_eq!(w.incidents()[0].state, State::Open);
    let polls = |w: &World| {
        w.up.calls(
            Method::Get,
            "/api/now/table/incident?sysparm_query=sys_idIN",
        )
    };
    // The first tick after opening polls (none ran before); the next ones within 900 s do not.
    w.clock.advance(60_000);
    w.tick();
    assert_eq!(polls(&w), 1);
    for _ in 0..14 {
        w.clock.advance(60_000);
        w.tick();
    }
    assert_eq!(polls(&w), 1, "840 s after the poll: not yet");
    // The ticket is closed in ServiceNow and no callback comes; at 900 s the poll is due
    // but the host holds ServiceNow back: nothing is noted, the next tick polls.
    let sys_id = w.incidents()[0].snow.as_ref().unwrap().sys_id.clone();
    w.up.snow_set_state(&sys_id, "6");
    w.clock.advance(60_000);
    w.up.fault(
        Method::Get,
        "/api/now/table/incident?sysparm_query=sys_idIN",
        1,
        Ok(held_back("cooldown", "30")),
    );
    w.tick();
    assert_eq!(w.incidents()[0].state, State::Open);
    w.clock.advance(60_000);
    w.tick();
    assert_eq!(polls(&w), 3, "one answered by the host, then the real one");
    assert_eq!(w.incidents()[0].state, State::Closed);
}

#[test]
fn an_xdr_token_request_held_back_by_the_host_is_not_retried() {
    let mut w = two_detections();
    w.up.fault(
        Method::Post,
        "/iroh/oauth2/token",
        100,
        Ok(held_back("cooldown", "4")),
    );
    let r = w.tick();
    assert_eq!(w.up.calls(Method::Post, "/iroh/oauth2/token"), 1);
    assert!(w.clock.slept_ms.is_empty(), "{:?}", w.clock.slept_ms);
    assert_eq!(r.calls.xdr, 0);
    assert!(w.up.xdr_incidents.is_empty());
}
