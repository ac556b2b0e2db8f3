//! Secure Endpoint API v1 scenarios.

use std::collections::HashSet;
use std::time::Duration;

use mssp_sim::{
    ComputerSpec, Event, HIGH_PRIORITY_EVENT_TYPES, IsolationStatus, OrgSpec, RateLimitHeaders,
    Sim, SimConfig,
};
use serde_json::{Value, json};

use crate::common::{Http, basic, sim, sim_with};

const ORG: &str = "acme-client";
const KEY: &str = "acme-key";
const WS: &str = "grp-workstations";
const TRIAGE: &str = "grp-triage";

fn auth() -> String {
    basic(ORG, KEY)
}

/// One org with two groups and three computers (the third may not be isolated).
fn populate(sim: &Sim, spec: OrgSpec) {
    let amp = sim.amp();
    amp.add_org(spec);
    amp.add_group(ORG, WS, "Workstations").unwrap();
    amp.add_group(ORG, TRIAGE, "Triage").unwrap();
    for n in 1..=3 {
        let mut c = ComputerSpec::new(format!("cguid-{n}"), format!("WS-{n}"), WS);
        c.isolation_allowed = n != 3;
        amp.add_computer(ORG, c).unwrap();
    }
}

async fn acme() -> Sim {
    let sim = sim().await;
    populate(&sim, OrgSpec::new(ORG, KEY));
    sim
}

fn event(sim: &Sim, type_id: u64, t: i64, computer: &str, group: &str) -> Event {
    let mut e = Event::new(sim.amp().next_event_id(), type_id, t);
    e.connector_guid = Some(computer.into());
    e.group_guids = vec![group.into()];
    e
}

fn ids(body: &Value) -> Vec<u64> {
    body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_u64().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_credentials_get_the_documented_envelope() {
    let sim = acme().await;
    let http = Http::default();
    for auth in [basic(ORG, "wrong"), basic("nobody", KEY)] {
        let r = http
            .get(&format!("{}/v1/version", sim.amp_url()), &auth)
            .await;
        assert_eq!(r.status, 401);
        assert_eq!(
            r.json(),
            json!({"version":"v1.2.0","data":{},"errors":[{"error_code":401,"description":"Unauthorized","details":["Unknown API key or Client ID"]}]})
        );
    }
    let r = http
        .send("GET", &format!("{}/v1/version", sim.amp_url()), None, None)
        .await;
    assert_eq!(r.status, 401);
    let ok = http
        .get(&format!("{}/v1/version", sim.amp_url()), &auth())
        .await;
    assert_eq!(ok.status, 200);
    assert_eq!(ok.json()["version"], "v1.2.0");
}

#[tokio::test(flavor = "multi_thread")]
async fn paging_follows_next_links_and_injected_events_shift_offsets() {
    let sim = acme().await;
    let now = 1_700_000_000;
    let first: Vec<Event> = (0..5)
        .map(|i| event(&sim, 1_090_519_054, now + i, "cguid-1", WS))
        .collect();
    sim.amp().push_events(ORG, first.clone()).unwrap();
    // After the first page is served, a newer event arrives.
    let newer = event(&sim, 1_090_519_054, now + 100, "cguid-2", WS);
    sim.amp()
        .inject_after_events_requests(ORG, 1, vec![newer.clone()])
        .unwrap();

    let http = Http::default();
    let mut url = format!("{}/v1/events?limit=2", sim.amp_url());
    let mut pages = Vec::new();
    loop {
        let body = http.get(&url, &auth()).await.json();
        pages.push(ids(&body));
        match body["metadata"]["links"]["next"].as_str() {
            Some(next) => {
                assert!(
                    next.starts_with(sim.amp_url()),
                    "next is absolute on the sim: {next}"
                );
                url = next.to_string();
            }
            None => break,
        }
    }
    // Page 1 was the two newest of the first batch; the shift re-serves one of them.
    assert_eq!(pages[0], vec![first[4].id, first[3].id]);
    assert_eq!(
        pages[1],
        vec![first[3].id, first[2].id],
        "offset 2 now starts one event earlier"
    );
    let seen: Vec<u64> = pages.concat();
    let unique: HashSet<u64> = seen.iter().copied().collect();
    assert!(seen.len() > unique.len(), "a duplicate across pages");
    for e in &first {
        assert!(unique.contains(&e.id));
    }
    // Newest first from the top now shows the injected events.
    let top = http
        .get(&format!("{}/v1/events?limit=2", sim.amp_url()), &auth())
        .await
        .json();
    assert_eq!(ids(&top), vec![newer.id, first[4].id]);
    assert_eq!(pages.len(), 3);
    assert_eq!(top["metadata"]["results"]["total"], 6);
    assert_eq!(top["metadata"]["results"]["current_item_count"], 2);
    assert_eq!(top["metadata"]["results"]["items_per_page"], 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn u64_ids_survive_the_round_trip_exactly() {
    let sim = acme().await;
    let mut e = Event::new(6_533_241_145_273_614_339, 1_090_519_054, 1_700_000_000);
    e.detection_id = Some("6533241145273614001".into());
    let mut max = Event::new(u64::MAX, 553_648_143, 1_700_000_001);
    max.extra.insert("note".into(), json!("max id"));
    sim.amp().push_events(ORG, vec![e, max]).unwrap();
    let r = Http::default()
        .get(&format!("{}/v1/events", sim.amp_url()), &auth())
        .await;
    let text = String::from_utf8(r.body.to_vec()).unwrap();
    assert!(text.contains("\"id\":6533241145273614339"), "{text}");
    assert!(text.contains("\"id\":18446744073709551615"));
    assert_eq!(ids(&r.json()), vec![u64::MAX, 6_533_241_145_273_614_339]);
    // And through the typed struct.
    let back: Vec<Event> = serde_json::from_value(r.json()["data"].clone()).unwrap();
    assert_eq!(back[1].id, 6_533_241_145_273_614_339);
    assert_eq!(back[0].extra["note"], "max id");
}

#[tokio::test(flavor = "multi_thread")]
async fn filters_are_anded_across_kinds_and_ored_within_one() {
    let sim = acme().await;
    let t = 1_700_000_000;
    let a = event(&sim, 1_090_519_054, t, "cguid-1", WS);
    let b = event(&sim, 553_648_143, t + 1, "cguid-2", WS);
    let c = event(&sim, 1_090_519_054, t + 2, "cguid-2", TRIAGE);
    let mut d = event(&sim, 1_107_296_284, t + 3, "cguid-3", WS);
    d.detection = Some("W32.Ransom".into());
    d.file =
        Some(json!({"identity": {"sha256": "AB12"}, "parent": {"identity": {"sha256": "cd34"}}}));
    sim.amp()
        .push_events(ORG, vec![a.clone(), b.clone(), c.clone(), d.clone()])
        .unwrap();
    let http = Http::default();
    let q = |query: &str| {
        let url = format!("{}/v1/events?{query}", sim.amp_url());
        let http = http.clone();
        async move { ids(&http.get(&url, &auth()).await.json()) }
    };
    assert_eq!(
        q("event_type[]=1090519054&event_type[]=553648143").await,
        vec![c.id, b.id, a.id]
    );
    assert_eq!(
        q("event_type[]=1090519054&connector_guid[]=cguid-2").await,
        vec![c.id]
    );
    assert_eq!(
        q("connector_guid[]=cguid-1&connector_guid[]=cguid-3").await,
        vec![d.id, a.id]
    );
    assert_eq!(q("group_guid[]=grp-triage").await, vec![c.id]);
    assert_eq!(q("detection_sha256=ab12").await, vec![d.id]);
    assert_eq!(q("application_sha256=CD34").await, vec![d.id]);
    // start_date is inclusive at second precision; `+` and `:` URL-encoded.
    assert_eq!(
        q("start_date=2023-11-14T22%3A13%3A22%2B00%3A00").await,
        vec![d.id, c.id]
    );
    assert_eq!(
        q("start_date=2023-11-14T23%3A13%3A22%2B01%3A00&event_type%5B%5D=1090519054").await,
        vec![c.id]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_queries_are_400s() {
    let sim = acme().await;
    let http = Http::default();
    for query in [
        "start_date=2023-11-14T22:13:22+00:00", // unencoded `+` arrives as a space
        "event_type[]=threat",
        "sort=asc",
        "limit=0",
        "offset=-1",
    ] {
        let r = http
            .get(&format!("{}/v1/events?{query}", sim.amp_url()), &auth())
            .await;
        assert_eq!(r.status, 400, "{query}");
        let body = r.json();
        assert_eq!(body["errors"][0]["error_code"], 400);
        assert!(body["errors"][0]["details"][0].is_string());
    }
    // Above the maximum, limit is capped at 500.
    let r = http
        .get(&format!("{}/v1/events?limit=900", sim.amp_url()), &auth())
        .await;
    assert_eq!(r.json()["metadata"]["results"]["items_per_page"], 500);
}

#[tokio::test(flavor = "multi_thread")]
async fn event_types_cover_the_high_priority_ids() {
    let sim = acme().await;
    let body = Http::default()
        .get(&format!("{}/v1/event_types", sim.amp_url()), &auth())
        .await
        .json();
    let data = body["data"].as_array().unwrap();
    assert!(data.len() >= 100);
    let ids: HashSet<u64> = data.iter().map(|t| t["id"].as_u64().unwrap()).collect();
    for id in HIGH_PRIORITY_EVENT_TYPES {
        assert!(ids.contains(id), "{id}");
    }
    assert!(
        data.iter()
            .all(|t| t["name"].is_string() && t["description"].is_string())
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn generated_events_are_realistic_and_reference_real_computers() {
    let sim = acme().await;
    let events = sim.amp().generate_events(ORG, 7, 300).unwrap();
    assert_eq!(events.len(), 300);
    let again = sim.amp().generate_events(ORG, 7, 300).unwrap();
    let types = |v: &[Event]| v.iter().map(|e| e.event_type_id).collect::<Vec<_>>();
    assert_eq!(types(&events), types(&again), "same seed, same mix");
    assert!(events.iter().all(|e| e.id > 1 << 53));
    assert!(
        again[0].id > events[299].id,
        "ids never collide across calls"
    );

    let by_detection = |ty: u64| {
        events
            .iter()
            .filter(move |e| e.event_type_id == ty)
            .filter_map(|e| e.detection_id.clone())
            .collect::<HashSet<_>>()
    };
    let detected = by_detection(1_090_519_054);
    assert!(
        by_detection(553_648_143)
            .iter()
            .any(|d| detected.contains(d)),
        "quarantine shares detection_id"
    );
    assert!(
        by_detection(2_164_260_880)
            .iter()
            .any(|d| detected.contains(d)),
        "failure shares detection_id"
    );
    assert!(events.iter().any(|e| e.computer.is_none()));
    assert!(events.iter().any(|e| e.file.is_none()));
    assert!(events.iter().any(|e| !e.extra.is_empty()));
    let all = serde_json::to_string(&events).unwrap();
    assert!(all.contains("\"ip\":\"\""), "empty ip strings");
    assert!(
        all.contains("\"hostname\":\"  WS-")
            || all.contains("\"hostname\":\"WS-1 \"")
            || all.contains("\"hostname\":\"WS-2 \"")
            || all.contains("\"hostname\":\"WS-3 \""),
        "padded hostnames"
    );

    sim.amp().push_events(ORG, events.clone()).unwrap();
    let http = Http::default();
    let guids: HashSet<String> = events
        .iter()
        .filter_map(|e| e.connector_guid.clone())
        .collect();
    for guid in guids {
        let r = http
            .get(&format!("{}/v1/computers/{guid}", sim.amp_url()), &auth())
            .await;
        assert_eq!(r.status, 200, "{guid}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn computers_groups_and_move_to_group() {
    let sim = acme().await;
    let http = Http::default();
    let url = format!("{}/v1/computers/cguid-1", sim.amp_url());
    let c = http.get(&url, &auth()).await.json();
    assert_eq!(c["data"]["group_guid"], WS);
    assert_eq!(c["data"]["isolation"]["status"], "not_isolated");
    assert_eq!(
        http.get(&format!("{}/v1/computers/nope", sim.amp_url()), &auth())
            .await
            .status,
        404
    );

    let r = http
        .send(
            "PATCH",
            &url,
            Some(&auth()),
            Some(&json!({"group_guid": TRIAGE})),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["data"]["group_guid"], TRIAGE);
    let bad = http
        .send(
            "PATCH",
            &url,
            Some(&auth()),
            Some(&json!({"group_guid": "missing"})),
        )
        .await;
    assert_eq!(bad.status, 400);
    let extra = http
        .send(
            "PATCH",
            &url,
            Some(&auth()),
            Some(&json!({"hostname": "x"})),
        )
        .await;
    assert_eq!(extra.status, 400);
    http.send(
        "PATCH",
        &url,
        Some(&auth()),
        Some(&json!({"group_guid": WS})),
    )
    .await;
    let view = sim.inspect().computer(ORG, "cguid-1").unwrap();
    assert_eq!(view.group_history, vec![WS, TRIAGE, WS]);

    let groups = http
        .get(&format!("{}/v1/groups", sim.amp_url()), &auth())
        .await
        .json();
    let names: Vec<&str> = groups["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["Workstations", "Triage"]);
    let g = http
        .get(&format!("{}/v1/groups/{TRIAGE}", sim.amp_url()), &auth())
        .await
        .json();
    assert_eq!(g["data"]["guid"], TRIAGE);

    // Some tenants answer 202.
    let sim202 = sim_with(SimConfig::default()).await;
    let mut spec = OrgSpec::new(ORG, KEY);
    spec.move_status = 202;
    populate(&sim202, spec);
    let r = http
        .send(
            "PATCH",
            &format!("{}/v1/computers/cguid-2", sim202.amp_url()),
            Some(&auth()),
            Some(&json!({"group_guid": TRIAGE})),
        )
        .await;
    assert_eq!(r.status, 202);
    assert_eq!(
        sim202
            .inspect()
            .computer(ORG, "cguid-2")
            .unwrap()
            .group_guid,
        TRIAGE
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn isolation_walks_its_state_machine() {
    let sim = acme().await;
    let http = Http::default();
    let url = format!("{}/v1/computers/cguid-1/isolation", sim.amp_url());
    let a = auth();

    let options = http.send("OPTIONS", &url, Some(&a), None).await;
    assert_eq!(options.status, 204);
    assert_eq!(options.header("allow"), Some("OPTIONS, GET, PUT"));
    assert_eq!(
        http.send("DELETE", &url, Some(&a), None).await.status,
        409,
        "not isolated yet"
    );

    let bad = http
        .send(
            "PUT",
            &url,
            Some(&a),
            Some(&json!({"unlock_code": "has space"})),
        )
        .await;
    assert_eq!(bad.status, 400);
    let long = http
        .send(
            "PUT",
            &url,
            Some(&a),
            Some(&json!({"unlock_code": "x".repeat(25)})),
        )
        .await;
    assert_eq!(long.status, 400);

    let put = http
        .send(
            "PUT",
            &url,
            Some(&a),
            Some(&json!({"comment": "INC0010001", "unlock_code": "unlock-me-24-chars-long1"})),
        )
        .await;
    assert_eq!(put.status, 200);
    assert_eq!(put.json()["data"]["status"], "pending_start");
    assert_eq!(
        http.send("PUT", &url, Some(&a), None).await.status,
        409,
        "transitional"
    );
    assert_eq!(
        http.send("OPTIONS", &url, Some(&a), None)
            .await
            .header("allow"),
        Some("OPTIONS, GET")
    );

    tokio::time::sleep(Duration::from_millis(200)).await;
    let get = http.get(&url, &a).await.json();
    assert_eq!(get["data"]["status"], "isolated");
    assert_eq!(get["data"]["unlock_code"], "unlock-me-24-chars-long1");
    assert_eq!(get["data"]["comment"], "INC0010001");
    let again = http.send("PUT", &url, Some(&a), None).await;
    assert_eq!(again.status, 409);
    assert_eq!(
        again.json()["errors"][0]["details"][0],
        "Computer is already isolated"
    );
    assert_eq!(
        http.send("OPTIONS", &url, Some(&a), None)
            .await
            .header("allow"),
        Some("OPTIONS, GET, DELETE")
    );

    let del = http
        .send(
            "DELETE",
            &url,
            Some(&a),
            Some(&json!({"comment": "resolved"})),
        )
        .await;
    assert_eq!(del.status, 200);
    assert_eq!(del.json()["data"]["status"], "pending_stop");
    assert_eq!(
        sim.inspect().computer(ORG, "cguid-1").unwrap().isolation,
        IsolationStatus::PendingStop
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        sim.inspect().computer(ORG, "cguid-1").unwrap().isolation,
        IsolationStatus::NotIsolated
    );
    assert_eq!(
        sim.inspect()
            .computer(ORG, "cguid-1")
            .unwrap()
            .isolation_requests,
        2
    );

    // Policy forbids isolating cguid-3.
    let forbidden = format!("{}/v1/computers/cguid-3/isolation", sim.amp_url());
    assert_eq!(
        http.send("OPTIONS", &forbidden, Some(&a), None)
            .await
            .status,
        405
    );
    assert_eq!(
        http.send("PUT", &forbidden, Some(&a), None).await.status,
        405
    );
    assert_eq!(
        http.get(&forbidden, &a).await.json()["data"]["available"],
        false
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn rate_limit_reports_seconds_and_never_retry_after() {
    let sim = sim_with(SimConfig {
        rate_window: Duration::from_secs(1),
        ..SimConfig::default()
    })
    .await;
    let mut spec = OrgSpec::new(ORG, KEY);
    spec.rate_limit_per_hour = 3;
    populate(&sim, spec);
    let http = Http::default();
    let url = format!("{}/v1/version", sim.amp_url());
    let first = http.get(&url, &auth()).await;
    assert_eq!(first.header("x-ratelimit-limit"), Some("3"));
    assert_eq!(first.header("x-ratelimit-remaining"), Some("2"));
    let reset: u64 = first.header("x-ratelimit-reset").unwrap().parse().unwrap();
    assert!(
        (1..=2).contains(&reset),
        "seconds until reset, not an epoch: {reset}"
    );
    assert!(first.header("x-ratelimit-resetdate").is_some());
    http.get(&url, &auth()).await;
    http.get(&url, &auth()).await;
    let limited = http.get(&url, &auth()).await;
    assert_eq!(limited.status, 429);
    assert_eq!(limited.header("retry-after"), None);
    assert_eq!(limited.header("x-ratelimit-remaining"), Some("0"));
    assert_eq!(limited.json()["errors"][0]["error_code"], 429);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(http.get(&url, &auth()).await.status, 200, "window reset");

    // The other spelling.
    let dashed = sim_with(SimConfig::default()).await;
    let mut spec = OrgSpec::new(ORG, KEY);
    spec.rate_limit_headers = RateLimitHeaders::Dashed;
    populate(&dashed, spec);
    let r = http
        .get(&format!("{}/v1/version", dashed.amp_url()), &auth())
        .await;
    assert_eq!(r.header("x-rate-limit-limit"), Some("3000"));
    assert_eq!(r.header("x-rate-limit-remaining"), Some("2999"));
    assert!(r.header("x-ratelimit-limit").is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn organisations_are_separate() {
    let sim = acme().await;
    sim.amp().add_org(OrgSpec::new("globex", "globex-key"));
    sim.amp().add_group("globex", "g-grp", "Globex").unwrap();
    let e = event(&sim, 1_090_519_054, 1_700_000_000, "cguid-1", WS);
    sim.amp().push_events(ORG, vec![e]).unwrap();
    let http = Http::default();
    let globex = basic("globex", "globex-key");
    let body = http
        .get(&format!("{}/v1/events", sim.amp_url()), &globex)
        .await
        .json();
    assert_eq!(body["data"], json!([]));
    assert_eq!(
        http.get(&format!("{}/v1/computers/cguid-1", sim.amp_url()), &globex)
            .await
            .status,
        404
    );
    assert_eq!(
        http.get(
            &format!("{}/v1/version", sim.amp_url()),
            &basic("globex", KEY)
        )
        .await
        .status,
        401
    );
}
