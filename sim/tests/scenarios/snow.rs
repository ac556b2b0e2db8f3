//! ServiceNow Table API scenarios, including the signed business-rule callback.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use mssp_sim::{CallbackOutcome, CallbackSpec, Sim, SimConfig};
use serde_json::{Value, json};
use sha2::Sha256;

use crate::common::{Http, basic, bearer, eventually, receiver, sim, sim_with};

const USER: &str = "bridge-acme";
const PASSWORD: &str = "pw";
const KEY_B64: &str = "c2VjcmV0LWNhbGxiYWNrLWtleS1mb3ItdGVzdHM=";

fn auth() -> String {
    basic(USER, PASSWORD)
}

async fn snow() -> Sim {
    let sim = sim().await;
    sim.snow().add_basic_user(USER, PASSWORD);
    sim
}

fn table(sim: &Sim) -> String {
    format!("{}/api/now/table/incident", sim.snow_url())
}

async fn create(http: &Http, sim: &Sim, body: Value) -> Value {
    let r = http
        .send("POST", &table(sim), Some(&auth()), Some(&body))
        .await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    r.json()["result"].clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn auth_basic_and_bearer_with_documented_401() {
    let sim = snow().await;
    sim.snow().add_bearer_token("tok-1", "bridge-globex");
    let http = Http::default();
    for bad in [Some(basic(USER, "x")), Some(bearer("nope")), None] {
        let r = http.send("GET", &table(&sim), bad.as_deref(), None).await;
        assert_eq!(r.status, 401);
        assert_eq!(r.json()["status"], "failure");
        assert_eq!(r.json()["error"]["message"], "User Not Authenticated");
    }
    assert_eq!(http.get(&table(&sim), &auth()).await.status, 200);
    let by_token = http
        .send(
            "POST",
            &table(&sim),
            Some(&bearer("tok-1")),
            Some(&json!({"short_description": "t"})),
        )
        .await;
    assert_eq!(by_token.status, 201);
    let inc = &sim.snow().incidents()[0];
    assert_eq!(inc.owner, "bridge-globex");
}

#[tokio::test(flavor = "multi_thread")]
async fn create_and_read_back_a_record() {
    let sim = snow().await;
    let http = Http::default();
    let r = http
        .send(
            "POST",
            &table(&sim),
            Some(&auth()),
            Some(&json!({
                "short_description": "Threat Detected on WS-1 [XDR]",
                "description": "details",
                "impact": 1, "urgency": "1",
                "caller_id": "5137153cc611227c000bbd1bd8cd2005",
                "assignment_group": "",
                "correlation_id": "acme:det:42",
                "work_notes": "first note",
                "not_a_field": "ignored like ServiceNow does",
                "number": "INC9999999",
            })),
        )
        .await;
    assert_eq!(r.status, 201);
    let rec = r.json()["result"].clone();
    let sys_id = rec["sys_id"].as_str().unwrap();
    assert_eq!(sys_id.len(), 32);
    assert!(sys_id.chars().all(|c| c.is_ascii_hexdigit()));
    assert_eq!(rec["number"], "INC0010001", "server numbering wins");
    assert_eq!(
        r.header("location"),
        Some(format!("{}/{sys_id}", table(&sim)).as_str())
    );
    assert_eq!(rec["state"], "1");
    assert_eq!(rec["priority"], "1");
    assert_eq!(rec["impact"], "1");
    assert_eq!(
        rec["work_notes"], "",
        "journal hidden without display values"
    );
    assert!(rec.get("not_a_field").is_none());
    assert_eq!(
        rec["caller_id"],
        json!({"link": format!("{}/api/now/table/sys_user/5137153cc611227c000bbd1bd8cd2005", sim.snow_url()), "value": "5137153cc611227c000bbd1bd8cd2005"})
    );
    assert_eq!(rec["assignment_group"], "");
    let plain = http
        .get(
            &format!(
                "{}/{sys_id}?sysparm_exclude_reference_link=true",
                table(&sim)
            ),
            &auth(),
        )
        .await
        .json();
    assert_eq!(
        plain["result"]["caller_id"],
        "5137153cc611227c000bbd1bd8cd2005"
    );
    assert!(rec["sys_created_on"].as_str().unwrap().len() == 19);
    assert!(rec["sys_updated_on"].is_string());

    let second = create(&http, &sim, json!({"short_description": "b"})).await;
    assert_eq!(second["number"], "INC0010002");

    let got = http
        .get(&format!("{}/{sys_id}", table(&sim)), &auth())
        .await;
    assert_eq!(got.status, 200);
    assert_eq!(got.json()["result"]["correlation_id"], "acme:det:42");
    let shown = http
        .get(
            &format!(
                "{}/{sys_id}?sysparm_display_value=true&sysparm_fields=work_notes,number",
                table(&sim)
            ),
            &auth(),
        )
        .await
        .json();
    assert!(
        shown["result"]["work_notes"]
            .as_str()
            .unwrap()
            .contains("first note")
    );
    assert_eq!(shown["result"].as_object().unwrap().len(), 2);

    let missing = http
        .get(
            &format!("{}/0123456789abcdef0123456789abcdef", table(&sim)),
            &auth(),
        )
        .await;
    assert_eq!(missing.status, 404);
    assert_eq!(
        missing.json(),
        json!({"error":{"message":"No Record found","detail":"Record doesn't exist or ACL restricts the record retrieval"},"status":"failure"})
    );
    let patch_missing = http
        .send(
            "PATCH",
            &format!("{}/0123456789abcdef0123456789abcdef", table(&sim)),
            Some(&auth()),
            Some(&json!({"state": "2"})),
        )
        .await;
    assert_eq!(patch_missing.status, 404);
    assert_eq!(patch_missing.json()["error"]["message"], "No Record found");
    let bad_json = http
        .raw(
            http::Request::post(table(&sim))
                .header("Authorization", auth())
                .header("Content-Type", "application/json")
                .body(http_body_util::Full::new(bytes::Bytes::from_static(
                    b"{not json",
                )))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(bad_json.status, 400);
    assert_eq!(bad_json.json()["status"], "failure");
}

#[tokio::test(flavor = "multi_thread")]
async fn query_subset_fields_paging_and_headers() {
    let sim = snow().await;
    let http = Http::default();
    let mut ids = Vec::new();
    for (i, (state, corr)) in [
        ("1", "k1"),
        ("2", "k2"),
        ("1", "k3"),
        ("3", "k4"),
        ("2", "k5"),
    ]
    .iter()
    .enumerate()
    {
        let rec = create(
            &http,
            &sim,
            json!({"short_description": format!("n{i}"), "correlation_id": corr}),
        )
        .await;
        let sys_id = rec["sys_id"].as_str().unwrap().to_string();
        http.send(
            "PATCH",
            &format!("{}/{sys_id}", table(&sim)),
            Some(&auth()),
            Some(&json!({"state": state})),
        )
        .await;
        ids.push(sys_id);
    }
    let q = |query: &str| {
        let url = format!("{}?{query}", table(&sim));
        let http = http.clone();
        async move {
            let r = http.get(&url, &auth()).await;
            let corr: Vec<String> = r.json()["result"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x["correlation_id"].as_str().unwrap_or("-").to_string())
                .collect();
            (corr, r)
        }
    };
    assert_eq!(q("sysparm_query=correlation_id%3Dk3").await.0, vec!["k3"]);
    assert_eq!(
        q("sysparm_query=state%3D1%5Ecorrelation_id%3Dk3").await.0,
        vec!["k3"]
    );
    assert_eq!(
        q("sysparm_query=state%3D3%5EORcorrelation_id%3Dk1").await.0,
        vec!["k1", "k4"]
    );
    assert_eq!(
        q("sysparm_query=correlation_idINk2,k5,zz").await.0,
        vec!["k2", "k5"]
    );
    assert_eq!(
        q("sysparm_query=state!%3D1%5EORDERBYDESCcorrelation_id")
            .await
            .0,
        vec!["k5", "k4", "k2"]
    );
    assert_eq!(
        q("sysparm_query=ORDERBYcorrelation_id&sysparm_limit=2&sysparm_offset=1")
            .await
            .0,
        vec!["k2", "k3"]
    );
    let sys_in = format!("sysparm_query=sys_idIN{},{}", ids[0], ids[4]);
    assert_eq!(q(&sys_in).await.0, vec!["k1", "k5"]);

    let (_, r) = q(
        "sysparm_query=ORDERBYcorrelation_id&sysparm_limit=2&sysparm_fields=number,correlation_id",
    )
    .await;
    assert_eq!(r.header("x-total-count"), Some("5"));
    let link = r.header("link").unwrap();
    assert!(
        link.contains("rel=\"next\"") && link.contains("sysparm_offset=2"),
        "{link}"
    );
    assert!(link.contains("rel=\"last\"") && link.contains("sysparm_offset=4"));
    let first = &r.json()["result"][0];
    assert_eq!(first.as_object().unwrap().len(), 2, "sysparm_fields");
    let (_, last) = q("sysparm_query=ORDERBYcorrelation_id&sysparm_limit=2&sysparm_offset=4").await;
    assert!(!last.header("link").unwrap().contains("rel=\"next\""));
    // A typo in a field name is dropped like ServiceNow does: everything matches.
    assert_eq!(q("sysparm_query=corelation_id%3Dk3").await.0.len(), 5);
}

#[tokio::test(flavor = "multi_thread")]
async fn resolving_needs_close_code_and_notes_and_work_notes_append() {
    let sim = snow().await;
    let http = Http::default();
    let rec = create(
        &http,
        &sim,
        json!({"short_description": "x", "work_notes": "created"}),
    )
    .await;
    let url = format!("{}/{}", table(&sim), rec["sys_id"].as_str().unwrap());
    let refused = http
        .send("PATCH", &url, Some(&auth()), Some(&json!({"state": "6"})))
        .await;
    assert_eq!(refused.status, 400);
    let detail = refused.json()["error"]["detail"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        detail.contains("Resolution code is mandatory")
            && detail.contains("Resolution notes are mandatory"),
        "{detail}"
    );
    let half = http
        .send(
            "PATCH",
            &url,
            Some(&auth()),
            Some(&json!({"state": 7, "close_code": "Solved (Permanently)"})),
        )
        .await;
    assert_eq!(half.status, 400);
    assert_eq!(
        http.send("PATCH", &url, Some(&auth()), Some(&json!({"state": "42"})))
            .await
            .status,
        400
    );
    assert_eq!(
        sim.snow().incidents()[0].state(),
        "1",
        "rejected updates change nothing"
    );

    for note in ["second", "third"] {
        let r = http
            .send(
                "PATCH",
                &url,
                Some(&auth()),
                Some(&json!({"work_notes": note})),
            )
            .await;
        assert_eq!(r.status, 200);
        assert_eq!(r.json()["result"]["work_notes"], "");
    }
    let ok = http
        .send(
            "PATCH",
            &url,
            Some(&auth()),
            Some(
                &json!({"state": "6", "close_code": "Solved (Permanently)", "close_notes": "done"}),
            ),
        )
        .await;
    assert_eq!(ok.status, 200);
    let result = ok.json()["result"].clone();
    assert_eq!(result["state"], "6");
    assert!(!result["resolved_at"].as_str().unwrap().is_empty());
    assert_eq!(result["closed_at"], "");
    let inc = sim.inspect().snow_incidents()[0].clone();
    let notes: Vec<&str> = inc.work_notes.iter().map(|n| n.text.as_str()).collect();
    assert_eq!(notes, vec!["created", "second", "third"]);
    assert_eq!(inc.work_notes[1].created_by, USER);
    // Cancel needs nothing.
    let other = create(&http, &sim, json!({"short_description": "y"})).await;
    let cancel = http
        .send(
            "PATCH",
            &format!("{}/{}", table(&sim), other["sys_id"].as_str().unwrap()),
            Some(&auth()),
            Some(&json!({"state": "8"})),
        )
        .await;
    assert_eq!(cancel.status, 200);
    assert_eq!(cancel.json()["result"]["active"], "false");
}

#[tokio::test(flavor = "multi_thread")]
async fn rate_limit_with_retry_after_and_epoch_reset_or_no_headers() {
    let sim = sim_with(SimConfig {
        rate_window: Duration::from_secs(60),
        snow_rate_limit_per_hour: 2,
        ..SimConfig::default()
    })
    .await;
    sim.snow().add_basic_user(USER, PASSWORD);
    let http = Http::default();
    http.get(&table(&sim), &auth()).await;
    http.get(&table(&sim), &auth()).await;
    let limited = http.get(&table(&sim), &auth()).await;
    assert_eq!(limited.status, 429);
    let retry: i64 = limited.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry));
    let reset: i64 = limited
        .header("x-ratelimit-reset")
        .unwrap()
        .parse()
        .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!(
        (reset - now - retry).abs() <= 2,
        "epoch: {reset} vs now {now} + {retry}"
    );
    assert_eq!(limited.json()["status"], "failure");

    sim.snow().set_rate_limit_headers(false);
    let bare = http.get(&table(&sim), &auth()).await;
    assert_eq!(bare.status, 429);
    assert!(bare.header("retry-after").is_none());
    assert!(bare.header("x-ratelimit-reset").is_none());
    // Limits are per user.
    sim.snow().add_basic_user("other", "pw");
    assert_eq!(
        http.get(&table(&sim), &basic("other", "pw")).await.status,
        200
    );
}

fn verify(key_b64: &str, timestamp: &str, body: &[u8], signature: &str) -> bool {
    let key = STANDARD.decode(key_b64).unwrap();
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    let expected = format!("v1={}", STANDARD.encode(mac.finalize().into_bytes()));
    expected == signature
}

#[tokio::test(flavor = "multi_thread")]
async fn analyst_close_fires_a_signed_callback_once() {
    let sim = snow().await;
    let bridge = receiver(200).await;
    let url = format!("{}/tenants/acme/v1/servicenow/events", bridge.url);
    sim.snow().set_callback(
        USER,
        CallbackSpec::new(&url, KEY_B64).with_header("X-Tenant", "acme"),
    );
    let http = Http::default();
    let rec = create(
        &http,
        &sim,
        json!({"short_description": "x", "correlation_id": "acme:det:7"}),
    )
    .await;
    let sys_id = rec["sys_id"].as_str().unwrap().to_string();

    let outcome = sim
        .snow()
        .analyst_close(&sys_id, 7, "Solved (Permanently)", "Reimaged")
        .await
        .unwrap();
    assert_eq!(outcome, CallbackOutcome::Delivered { status: 200 });
    assert_eq!(outcome.status(), Some(200));
    let got = bridge.received.lock().unwrap().clone();
    assert_eq!(got.len(), 1);
    let call = &got[0];
    assert_eq!(call.path, "/tenants/acme/v1/servicenow/events");
    assert_eq!(call.headers["content-type"], "application/json");
    assert_eq!(call.headers["x-tenant"], "acme");
    let ts = call.headers["x-bridge-timestamp"].to_str().unwrap();
    let sig = call.headers["x-bridge-signature"].to_str().unwrap();
    assert!(verify(KEY_B64, ts, &call.body, sig), "signature verifies");
    assert!(!verify("b3RoZXIta2V5", ts, &call.body, sig));
    let body: Value = serde_json::from_slice(&call.body).unwrap();
    assert_eq!(
        body,
        json!({"sys_id": sys_id, "number": "INC0010001", "state": "7", "correlation_id": "acme:det:7", "close_code": "Solved (Permanently)"})
    );
    let inc = sim.snow().incident(&sys_id).unwrap();
    assert_eq!(inc.state(), "7");
    assert_eq!(inc.field("close_notes"), "Reimaged");
    assert!(!inc.field("closed_at").is_empty() && !inc.field("resolved_at").is_empty());

    // Closing again is no state change: the rule does not fire.
    let again = sim
        .snow()
        .analyst_close(&sys_id, 7, "Solved (Permanently)", "Reimaged")
        .await
        .unwrap();
    assert!(matches!(again, CallbackOutcome::NotFired { .. }));
    assert_eq!(bridge.received.lock().unwrap().len(), 1);
    let records = sim.inspect().snow_callbacks();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].trigger, "analyst");
    assert_eq!(
        records[0].outcome,
        CallbackOutcome::Delivered { status: 200 }
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn callback_has_no_retry_and_records_failures() {
    let sim = snow().await;
    let http = Http::default();
    // The bridge answers 500: recorded, not retried.
    let failing = receiver(500).await;
    sim.snow().set_callback(
        USER,
        CallbackSpec::new(format!("{}/cb", failing.url), KEY_B64),
    );
    let rec = create(&http, &sim, json!({"short_description": "x"})).await;
    let outcome = sim
        .snow()
        .analyst_close(rec["sys_id"].as_str().unwrap(), 6, "Workaround", "n")
        .await
        .unwrap();
    assert_eq!(outcome.status(), Some(500));
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(failing.received.lock().unwrap().len(), 1);

    // Nobody listening.
    let dead = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead_url = format!("http://{}/cb", dead.local_addr().unwrap());
    drop(dead);
    sim.snow()
        .set_callback(USER, CallbackSpec::new(dead_url, KEY_B64));
    let rec = create(&http, &sim, json!({"short_description": "y"})).await;
    let outcome = sim
        .snow()
        .analyst_close(rec["sys_id"].as_str().unwrap(), 8, "", "")
        .await
        .unwrap();
    assert!(
        matches!(outcome, CallbackOutcome::Failed { .. }),
        "{outcome:?}"
    );

    // No callback configured for this user.
    sim.snow().clear_callback(USER);
    let rec = create(&http, &sim, json!({"short_description": "z"})).await;
    let outcome = sim
        .snow()
        .analyst_close(rec["sys_id"].as_str().unwrap(), 8, "", "")
        .await
        .unwrap();
    assert!(matches!(outcome, CallbackOutcome::NotFired { .. }));
    assert!(
        sim.snow()
            .analyst_close(rec["sys_id"].as_str().unwrap(), 2, "", "")
            .await
            .is_err()
    );
    assert!(
        sim.snow()
            .analyst_close("missing", 7, "a", "b")
            .await
            .is_err()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_api_update_that_closes_fires_the_rule_asynchronously() {
    let sim = snow().await;
    let bridge = receiver(204).await;
    sim.snow().set_callback(
        USER,
        CallbackSpec::new(format!("{}/cb", bridge.url), KEY_B64),
    );
    let http = Http::default();
    let rec = create(&http, &sim, json!({"short_description": "x"})).await;
    let url = format!("{}/{}", table(&sim), rec["sys_id"].as_str().unwrap());
    http.send(
        "PATCH",
        &url,
        Some(&auth()),
        Some(&json!({"state": "6", "close_code": "c", "close_notes": "n"})),
    )
    .await;
    let received = bridge.received.clone();
    eventually("the callback", || received.lock().unwrap().len() == 1).await;
    let records = sim.snow().clone();
    eventually("the record", || records.callbacks().len() == 1).await;
    assert_eq!(sim.snow().callbacks()[0].trigger, "api");
    assert_eq!(sim.snow().callbacks()[0].outcome.status(), Some(204));
}
