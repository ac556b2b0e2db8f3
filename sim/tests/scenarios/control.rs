//! The control listener: inspection and analyst actions over HTTP.

use mssp_sim::{ComputerSpec, OrgSpec};
use serde_json::json;

use crate::common::{Http, basic, bearer, receiver, sim};

#[tokio::test(flavor = "multi_thread")]
async fn inspection_and_analyst_routes() {
    let sim = sim().await;
    let http = Http::default();
    let ctl = sim.control_url().to_string();
    let health = http
        .send("GET", &format!("{ctl}/_sim/health"), None, None)
        .await
        .json();
    assert_eq!(health["urls"]["amp"], sim.amp_url());

    // AMP: seed events over HTTP, then see computers.
    sim.amp().add_org(OrgSpec::new("o", "k"));
    sim.amp().add_group("o", "g", "G").unwrap();
    sim.amp()
        .add_computer("o", ComputerSpec::new("c1", "WS-1", "g"))
        .unwrap();
    let generated = http
        .send(
            "POST",
            &format!("{ctl}/_sim/amp/orgs/o/generate"),
            None,
            Some(&json!({"seed": 3, "count": 12})),
        )
        .await;
    assert_eq!(generated.status, 200);
    assert_eq!(generated.json().as_array().unwrap().len(), 12);
    let listed = http
        .get(&format!("{}/v1/events", sim.amp_url()), &basic("o", "k"))
        .await
        .json();
    assert_eq!(listed["metadata"]["results"]["total"], 12);
    let pushed = http
        .send("POST", &format!("{ctl}/_sim/amp/orgs/o/events"), None, Some(&json!([{"id": 9_007_199_254_740_993u64, "timestamp": 1, "date": "1970-01-01T00:00:01+00:00", "event_type": "Threat Detected", "event_type_id": 1_090_519_054u64}])))
        .await;
    assert_eq!(pushed.json()["pushed"], 1);
    assert_eq!(
        sim.amp().events("o").unwrap().last().unwrap().id,
        9_007_199_254_740_993
    );
    let computer = http
        .send(
            "GET",
            &format!("{ctl}/_sim/amp/orgs/o/computers/c1"),
            None,
            None,
        )
        .await
        .json();
    assert_eq!(computer["group_guid"], "g");
    assert_eq!(computer["isolation"], "not_isolated");
    assert_eq!(
        http.send(
            "GET",
            &format!("{ctl}/_sim/amp/orgs/zz/computers"),
            None,
            None
        )
        .await
        .status,
        404
    );

    // XDR incidents.
    sim.xdr().add_client("x", "s");
    let tok = http
        .post_form(
            &format!("{}/iroh/oauth2/token", sim.xdr_auth_url()),
            &basic("x", "s"),
            "grant_type=client_credentials",
        )
        .await
        .json()["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    http.send(
        "POST",
        &format!("{}/ctia/incident", sim.xdr_api_url()),
        Some(&bearer(&tok)),
        Some(&json!({"confidence": "High", "status": "New", "incident_time": {"opened": "2024-05-01T10:00:00Z"}})),
    )
    .await;
    let incidents = http
        .send("GET", &format!("{ctl}/_sim/xdr/incidents"), None, None)
        .await
        .json();
    assert_eq!(incidents.as_array().unwrap().len(), 1);
    assert_eq!(
        http.send("POST", &format!("{ctl}/_sim/xdr/expire_tokens"), None, None)
            .await
            .status,
        204
    );

    // ServiceNow: journal and analyst close with a callback configured over HTTP.
    sim.snow().add_basic_user("u", "p");
    let bridge = receiver(200).await;
    let set = http
        .send("PUT", &format!("{ctl}/_sim/snow/users/u/callback"), None, Some(&json!({"url": format!("{}/cb", bridge.url), "key_b64": "a2V5", "headers": [["X-Extra", "1"]]})))
        .await;
    assert_eq!(set.status, 204);
    let rec = http
        .send(
            "POST",
            &format!("{}/api/now/table/incident", sim.snow_url()),
            Some(&basic("u", "p")),
            Some(&json!({"short_description": "s", "work_notes": "n1"})),
        )
        .await
        .json()["result"]
        .clone();
    let sys_id = rec["sys_id"].as_str().unwrap();
    let update = http
        .send(
            "POST",
            &format!("{ctl}/_sim/snow/incidents/{sys_id}/update"),
            None,
            Some(&json!({"work_notes": "analyst note"})),
        )
        .await;
    assert_eq!(
        update.json()["not_fired"]["reason"],
        "the state did not change to 6, 7 or 8"
    );
    let shown = http
        .send(
            "GET",
            &format!("{ctl}/_sim/snow/incidents/{sys_id}"),
            None,
            None,
        )
        .await
        .json();
    assert_eq!(shown["work_notes"].as_array().unwrap().len(), 2);
    assert_eq!(shown["work_notes"][1]["created_by"], "analyst.sim");
    let closed = http
        .send(
            "POST",
            &format!("{ctl}/_sim/snow/incidents/{sys_id}/close"),
            None,
            Some(&json!({"state": 6, "close_code": "Solved (Permanently)", "close_notes": "ok"})),
        )
        .await;
    assert_eq!(closed.json(), json!({"delivered": {"status": 200}}));
    assert_eq!(bridge.received.lock().unwrap()[0].headers["x-extra"], "1");
    let callbacks = http
        .send("GET", &format!("{ctl}/_sim/snow/callbacks"), None, None)
        .await
        .json();
    assert_eq!(callbacks[0]["sys_id"], sys_id);
    let all = http
        .send("GET", &format!("{ctl}/_sim/snow/incidents"), None, None)
        .await
        .json();
    assert_eq!(all[0]["fields"]["state"], "6");
    let bad = http
        .send(
            "POST",
            &format!("{ctl}/_sim/snow/incidents/{sys_id}/close"),
            None,
            Some(&json!({"state": 1, "close_code": "", "close_notes": ""})),
        )
        .await;
    assert_eq!(bad.status, 400);
    assert_eq!(
        http.send("GET", &format!("{ctl}/_sim/nothing"), None, None)
            .await
            .status,
        404
    );
}
