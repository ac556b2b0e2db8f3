//! Cisco XDR scenarios: token host and CTIA incidents.

use std::time::Duration;

use mssp_sim::{Sim, SimConfig};
use serde_json::{Value, json};

use crate::common::{Http, basic, bearer, sim, sim_with};

const CLIENT: &str = "xdr-acme";
const SECRET: &str = "xdr-acme-secret";

async fn token(http: &Http, sim: &Sim, client: &str, secret: &str) -> String {
    let r = http
        .post_form(
            &format!("{}/iroh/oauth2/token", sim.xdr_auth_url()),
            &basic(client, secret),
            "grant_type=client_credentials",
        )
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    r.json()["access_token"].as_str().unwrap().to_string()
}

fn minimal(external_id: &str) -> Value {
    json!({
        "confidence": "High",
        "status": "New",
        "incident_time": {"opened": "2024-05-01T10:00:00.000Z"},
        "title": "[acme] New AMP Threat Detected event for WS-1",
        "external_ids": [external_id],
        "external_references": [{"source_name": "Secure Endpoint", "url": "https://console.amp.cisco.com/x"}],
        "tlp": "amber",
        "severity": "High",
    })
}

async fn create(http: &Http, sim: &Sim, tok: &str, body: &Value) -> Value {
    let r = http
        .send(
            "POST",
            &format!("{}/ctia/incident", sim.xdr_api_url()),
            Some(&bearer(tok)),
            Some(body),
        )
        .await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    r.json()
}

fn short(id: &Value) -> String {
    id.as_str().unwrap().rsplit('/').next().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn token_endpoint_follows_client_credentials() {
    let sim = sim().await;
    sim.xdr().add_client(CLIENT, SECRET);
    let http = Http::default();
    let url = format!("{}/iroh/oauth2/token", sim.xdr_auth_url());
    let ok = http
        .post_form(
            &url,
            &basic(CLIENT, SECRET),
            "grant_type=client_credentials",
        )
        .await;
    assert_eq!(ok.status, 200);
    let body = ok.json();
    assert_eq!(body["token_type"], "bearer");
    assert_eq!(body["expires_in"], 600);
    assert!(body["scope"].as_str().unwrap().contains("private-intel"));

    let bad = http
        .post_form(
            &url,
            &basic(CLIENT, "nope"),
            "grant_type=client_credentials",
        )
        .await;
    assert_eq!(bad.status, 401);
    assert_eq!(bad.json()["error"], "invalid_client");
    let grant = http
        .post_form(&url, &basic(CLIENT, SECRET), "grant_type=password")
        .await;
    assert_eq!(grant.status, 400);
    let json_body = http
        .send(
            "POST",
            &url,
            Some(&basic(CLIENT, SECRET)),
            Some(&json!({"grant_type": "client_credentials"})),
        )
        .await;
    assert_eq!(json_body.status, 400, "form body required");
    // The CTIA host is another base URL and does not serve tokens.
    assert_ne!(sim.xdr_auth_url(), sim.xdr_api_url());
    let wrong_host = http
        .post_form(
            &format!("{}/iroh/oauth2/token", sim.xdr_api_url()),
            &basic(CLIENT, SECRET),
            "grant_type=client_credentials",
        )
        .await;
    assert_ne!(wrong_host.status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn expired_and_unknown_tokens_get_401() {
    let sim = sim_with(SimConfig {
        xdr_token_ttl: Duration::from_millis(300),
        ..SimConfig::default()
    })
    .await;
    sim.xdr().add_client(CLIENT, SECRET);
    let http = Http::default();
    let tok = token(&http, &sim, CLIENT, SECRET).await;
    let url = format!("{}/ctia/incident/external_id/x", sim.xdr_api_url());
    assert_eq!(http.get(&url, &bearer(&tok)).await.status, 200);
    assert_eq!(http.get(&url, &bearer("made-up")).await.status, 401);
    tokio::time::sleep(Duration::from_millis(400)).await;
    let expired = http.get(&url, &bearer(&tok)).await;
    assert_eq!(expired.status, 401);
    assert_eq!(expired.json()["error"], "invalid_token");
    // Revoking everything from the control side.
    let fresh = token(&http, &sim, CLIENT, SECRET).await;
    sim.xdr().expire_tokens();
    assert_eq!(http.get(&url, &bearer(&fresh)).await.status, 401);
}

#[tokio::test(flavor = "multi_thread")]
async fn incident_lifecycle_create_lookup_patch_close() {
    let sim = sim().await;
    sim.xdr().add_client(CLIENT, SECRET);
    let http = Http::default();
    let tok = token(&http, &sim, CLIENT, SECRET).await;
    let created = create(&http, &sim, &tok, &minimal("amp-det-42")).await;
    let id = created["id"].as_str().unwrap();
    assert!(
        id.starts_with(&format!("{}/ctia/incident/incident-", sim.xdr_api_url())),
        "{id}"
    );
    assert_eq!(created["type"], "incident");
    assert_eq!(created["tlp"], "amber");
    assert!(created["schema_version"].is_string());
    let sid = short(&created["id"]);
    assert_eq!(sid.len(), "incident-".len() + 36);

    // Defaults: tlp green when absent.
    let mut bare = minimal("amp-det-43");
    bare.as_object_mut().unwrap().remove("tlp");
    assert_eq!(create(&http, &sim, &tok, &bare).await["tlp"], "green");

    let found = http
        .get(
            &format!("{}/ctia/incident/external_id/amp-det-42", sim.xdr_api_url()),
            &bearer(&tok),
        )
        .await
        .json();
    assert_eq!(found.as_array().unwrap().len(), 1);
    assert_eq!(found[0]["id"], created["id"]);
    let none = http
        .get(
            &format!("{}/ctia/incident/external_id/unknown", sim.xdr_api_url()),
            &bearer(&tok),
        )
        .await
        .json();
    assert_eq!(none, json!([]));

    let url = format!("{}/ctia/incident/{sid}", sim.xdr_api_url());
    let patched = http
        .send(
            "PATCH",
            &url,
            Some(&bearer(&tok)),
            Some(&json!({"status": "Open: Investigating"})),
        )
        .await;
    assert_eq!(patched.status, 200);
    assert_eq!(patched.json()["status"], "Open: Investigating");
    // New → Open stamps `opened` with now (CTIA's apply-status-update-logic).
    let opened = patched.json()["incident_time"]["opened"].clone();
    assert_ne!(opened, "2024-05-01T10:00:00.000Z");
    assert_eq!(
        patched.json()["title"],
        created["title"],
        "PATCH keeps other members"
    );

    let closed = http
        .send(
            "POST",
            &format!("{url}/status"),
            Some(&bearer(&tok)),
            Some(&json!({"status": "Closed"})),
        )
        .await;
    assert_eq!(closed.status, 200);
    let body = closed.json();
    assert_eq!(body["status"], "Closed");
    assert!(
        body["incident_time"]["closed"].is_string(),
        "closed stamped: {body}"
    );
    assert_eq!(
        body["incident_time"]["opened"], opened,
        "open → closed keeps opened"
    );
    assert_eq!(sim.inspect().xdr_incidents()[0]["status"], "Closed");
    assert_eq!(
        http.get(&url, &bearer(&tok)).await.json()["status"],
        "Closed"
    );

    assert_eq!(
        http.get(
            &format!("{}/ctia/incident/incident-missing", sim.xdr_api_url()),
            &bearer(&tok)
        )
        .await
        .status,
        404
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn validation_errors_are_clear_400s() {
    let sim = sim().await;
    sim.xdr().add_client(CLIENT, SECRET);
    let http = Http::default();
    let tok = token(&http, &sim, CLIENT, SECRET).await;
    let url = format!("{}/ctia/incident", sim.xdr_api_url());
    let cases: Vec<(Value, &str)> = vec![
        (
            json!({"status": "New", "incident_time": {"opened": "2024-05-01T10:00:00Z"}}),
            "confidence",
        ),
        (
            json!({"confidence": "High", "incident_time": {"opened": "2024-05-01T10:00:00Z"}}),
            "status",
        ),
        (
            json!({"confidence": "High", "status": "New"}),
            "incident_time",
        ),
        (
            json!({"confidence": "High", "status": "New", "incident_time": {}}),
            "incident_time.opened",
        ),
        (
            json!({"confidence": "High", "status": "New", "incident_time": {"opened": "yesterday"}}),
            "incident_time.opened",
        ),
        (
            json!({"confidence": "Very", "status": "New", "incident_time": {"opened": "2024-05-01T10:00:00Z"}}),
            "confidence",
        ),
        (
            json!({"confidence": "High", "status": "Done", "incident_time": {"opened": "2024-05-01T10:00:00Z"}}),
            "status",
        ),
        (
            json!({"confidence": "High", "status": "New", "severity": "Huge", "incident_time": {"opened": "2024-05-01T10:00:00Z"}}),
            "severity",
        ),
        (
            json!({"confidence": "High", "status": "New", "tlp": "purple", "incident_time": {"opened": "2024-05-01T10:00:00Z"}}),
            "tlp",
        ),
        (
            json!({"confidence": "High", "status": "New", "external_references": [{"url": "x"}], "incident_time": {"opened": "2024-05-01T10:00:00Z"}}),
            "external_references[0].source_name",
        ),
        (
            json!({"confidence": "High", "status": "New", "colour": "red", "incident_time": {"opened": "2024-05-01T10:00:00Z"}}),
            "colour",
        ),
    ];
    for (body, field) in cases {
        let r = http
            .send("POST", &url, Some(&bearer(&tok)), Some(&body))
            .await;
        assert_eq!(r.status, 400, "{body}");
        let err = r.json();
        assert!(err["errors"][field].is_string(), "{field} named in {err}");
        assert!(err["message"].as_str().unwrap().contains(field));
    }
    // Critical severity and qualified statuses are fine.
    let mut ok = minimal("x");
    ok["severity"] = json!("Critical");
    ok["status"] = json!("Closed: False Positive");
    create(&http, &sim, &tok, &ok).await;
    assert_eq!(sim.inspect().xdr_incidents().len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn organisations_cannot_see_each_other() {
    let sim = sim().await;
    sim.xdr().add_client(CLIENT, SECRET);
    sim.xdr().add_client("xdr-globex", "g");
    let http = Http::default();
    let acme = token(&http, &sim, CLIENT, SECRET).await;
    let globex = token(&http, &sim, "xdr-globex", "g").await;
    let created = create(&http, &sim, &acme, &minimal("shared-key")).await;
    let url = format!(
        "{}/ctia/incident/{}",
        sim.xdr_api_url(),
        short(&created["id"])
    );
    assert_eq!(http.get(&url, &bearer(&globex)).await.status, 404);
    let lookup = http
        .get(
            &format!("{}/ctia/incident/external_id/shared-key", sim.xdr_api_url()),
            &bearer(&globex),
        )
        .await;
    assert_eq!(lookup.json(), json!([]));
}

#[tokio::test(flavor = "multi_thread")]
async fn sightings_relationships_and_bundles() {
    let sim = sim().await;
    sim.xdr().add_client(CLIENT, SECRET);
    let http = Http::default();
    let tok = token(&http, &sim, CLIENT, SECRET).await;
    let incident = create(&http, &sim, &tok, &minimal("ext-1")).await;
    let sighting = http
        .send(
            "POST",
            &format!("{}/ctia/sighting", sim.xdr_api_url()),
            Some(&bearer(&tok)),
            Some(&json!({"count": 1, "confidence": "High", "observed_time": {"start_time": "2024-05-01T10:00:00Z"},
                         "observables": [{"type": "sha256", "value": "ab"}]})),
        )
        .await;
    assert_eq!(sighting.status, 201);
    let bad_sighting = http
        .send(
            "POST",
            &format!("{}/ctia/sighting", sim.xdr_api_url()),
            Some(&bearer(&tok)),
            Some(&json!({"count": 1})),
        )
        .await;
    assert_eq!(bad_sighting.status, 400);
    let rel = http
        .send(
            "POST",
            &format!("{}/ctia/relationship", sim.xdr_api_url()),
            Some(&bearer(&tok)),
            Some(&json!({"relationship_type": "member-of", "source_ref": sighting.json()["id"], "target_ref": incident["id"]})),
        )
        .await;
    assert_eq!(rel.status, 201);
    assert_eq!(sim.xdr().relationships().len(), 1);

    let bundle = json!({
        "type": "bundle",
        "source": "mssp-bridge",
        "incidents": [
            {"id": "transient:inc-1", "confidence": "High", "status": "New",
             "incident_time": {"opened": "2024-05-01T10:00:00Z"}, "external_ids": ["ext-2"]},
            {"id": "transient:inc-dup", "confidence": "High", "status": "New",
             "incident_time": {"opened": "2024-05-01T10:00:00Z"}, "external_ids": ["ext-1"]}
        ],
        "sightings": [{"id": "transient:s-1", "count": 2, "confidence": "Medium",
                        "observed_time": {"start_time": "2024-05-01T10:00:00Z"}}],
        "relationships": [{"relationship_type": "member-of", "source_ref": "transient:s-1", "target_ref": "transient:inc-1"}]
    });
    let r = http
        .send(
            "POST",
            &format!(
                "{}/ctia/bundle/import?external-key-prefixes=ext-",
                sim.xdr_api_url()
            ),
            Some(&bearer(&tok)),
            Some(&bundle),
        )
        .await;
    assert_eq!(r.status, 200);
    let results = r.json()["results"].as_array().unwrap().clone();
    let result_of = |orig: &str| {
        results
            .iter()
            .find(|x| x["original_id"] == orig)
            .unwrap()
            .clone()
    };
    assert_eq!(result_of("transient:inc-1")["result"], "created");
    assert_eq!(result_of("transient:inc-dup")["result"], "exists");
    assert_eq!(result_of("transient:inc-dup")["id"], incident["id"]);
    let rels = sim.xdr().relationships();
    let last = rels.last().unwrap();
    assert_eq!(last["source_ref"], result_of("transient:s-1")["id"]);
    assert_eq!(last["target_ref"], result_of("transient:inc-1")["id"]);
    assert_eq!(sim.inspect().xdr_incidents().len(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn rate_limit_answers_429_with_retry_after() {
    let sim = sim_with(SimConfig {
        rate_window: Duration::from_secs(30),
        ..SimConfig::default()
    })
    .await;
    sim.xdr().add_client(CLIENT, SECRET);
    sim.xdr().set_rate_limit(CLIENT, 3).unwrap();
    let http = Http::default();
    let tok = token(&http, &sim, CLIENT, SECRET).await; // 1
    let url = format!("{}/ctia/incident/external_id/k", sim.xdr_api_url());
    assert_eq!(http.get(&url, &bearer(&tok)).await.status, 200); // 2
    assert_eq!(http.get(&url, &bearer(&tok)).await.status, 200); // 3
    let limited = http.get(&url, &bearer(&tok)).await;
    assert_eq!(limited.status, 429);
    let retry: u64 = limited.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=30).contains(&retry));
}

async fn import(http: &Http, sim: &Sim, tok: &str, query: &str, external_id: &str) -> Value {
    let mut incident = minimal(external_id);
    incident["id"] = json!("transient:i");
    let bundle = json!({"type": "bundle", "source": "t", "incidents": [incident]});
    let r = http
        .send(
            "POST",
            &format!("{}/ctia/bundle/import{query}", sim.xdr_api_url()),
            Some(&bearer(tok)),
            Some(&bundle),
        )
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    r.json()["results"][0].clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn bundle_import_deduplicates_only_by_prefixed_external_ids() {
    let sim = sim().await;
    sim.xdr().add_client(CLIENT, SECRET);
    let http = Http::default();
    let tok = token(&http, &sim, CLIENT, SECRET).await;
    // No parameter: the configured default (`ctia-`) applies; `amp-…` is not looked up.
    let a = import(&http, &sim, &tok, "", "amp-1-d1").await;
    let b = import(&http, &sim, &tok, "", "amp-1-d1").await;
    assert_eq!(
        (a["result"].as_str(), b["result"].as_str()),
        (Some("created"), Some("created"))
    );
    assert_eq!(sim.xdr().incidents().len(), 2, "a careless client gets two");
    // Named prefix: found, answered with the stored (first) id.
    let c = import(
        &http,
        &sim,
        &tok,
        "?external-key-prefixes=foo-,%20amp-",
        "amp-1-d1",
    )
    .await;
    assert_eq!(c["result"], "exists");
    assert_eq!(c["id"], a["id"]);
    // Default prefix matches without a parameter.
    let d = import(&http, &sim, &tok, "", "ctia-x").await;
    let e = import(&http, &sim, &tok, "", "ctia-x").await;
    assert_eq!(e["result"], "exists");
    assert_eq!(e["id"], d["id"]);
    // An empty configured list: every external id (CTIA's code since b4493005).
    sim.xdr().set_external_key_prefixes(&[]);
    assert_eq!(
        import(&http, &sim, &tok, "", "amp-1-d1").await["result"],
        "exists"
    );
    assert_eq!(sim.xdr().incidents().len(), 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn bulk_read_finds_by_id_in_store_order_with_nulls_for_other_orgs() {
    let sim = sim().await;
    sim.xdr().add_client(CLIENT, SECRET);
    sim.xdr().add_client("xdr-globex", "globex-secret");
    let http = Http::default();
    let tok = token(&http, &sim, CLIENT, SECRET).await;
    let other = token(&http, &sim, "xdr-globex", "globex-secret").await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(create(&http, &sim, &tok, &minimal(&format!("k-{i}"))).await["id"].clone());
    }
    let foreign = create(&http, &sim, &other, &minimal("g-1")).await["id"].clone();
    let mut q: Vec<String> = ids
        .iter()
        .rev()
        .map(|i| format!("incidents={}", short(i)))
        .collect();
    q.push(format!(
        "incidents={}",
        urlencode(foreign.as_str().unwrap())
    ));
    q.push("incidents=incident-missing".into());
    let url = format!("{}/ctia/bulk?{}", sim.xdr_api_url(), q.join("&"));
    let r = http.get(&url, &bearer(&tok)).await;
    assert_eq!(r.status, 200);
    let got = r.json()["incidents"].as_array().unwrap().clone();
    assert_eq!(
        got.len(),
        6,
        "unknown ids are absent, the foreign one is null: {got:?}"
    );
    assert_eq!(got.iter().filter(|v| v.is_null()).count(), 1);
    let mut found: Vec<Value> = got
        .iter()
        .filter(|v| !v.is_null())
        .map(|v| v["id"].clone())
        .collect();
    found.sort_by_key(|v| v.to_string());
    let mut want = ids.clone();
    want.sort_by_key(|v| v.to_string());
    assert_eq!(found, want);
    // Over CTIA's max size (2000): 400.
    let over: Vec<String> = (0..2001).map(|i| format!("incidents={i}")).collect();
    let r = http
        .get(
            &format!("{}/ctia/bulk?{}", sim.xdr_api_url(), over.join("&")),
            &bearer(&tok),
        )
        .await;
    assert_eq!(r.status, 400);
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn patch_replaces_lists_merges_maps_and_keeps_an_analysts_close_time() {
    let sim = sim().await;
    sim.xdr().add_client(CLIENT, SECRET);
    let http = Http::default();
    let tok = token(&http, &sim, CLIENT, SECRET).await;
    let created = create(&http, &sim, &tok, &minimal("k-1")).await;
    let sid = short(&created["id"]);
    let url = format!("{}/ctia/incident/{sid}", sim.xdr_api_url());
    // The analyst closes it as merged: closed stamped now (T).
    let merged = sim
        .xdr()
        .analyst_set_status(&sid, "Closed: Merged")
        .unwrap();
    let t = merged["incident_time"]["closed"].clone();
    assert!(t.is_string(), "{merged}");
    std::thread::sleep(Duration::from_millis(20));
    // A careless client PATCHes status Closed with a closed time of its own.
    let r = http
        .send(
            "PATCH",
            &url,
            Some(&bearer(&tok)),
            Some(&json!({
                "status": "Closed",
                "incident_time": {"closed": "2030-01-01T00:00:00.000Z"},
                "external_references": [{"source_name": "ServiceNow", "external_id": "INC1"}],
            })),
        )
        .await;
    assert_eq!(r.status, 200);
    let after = r.json();
    assert_eq!(after["status"], "Closed", "PATCH does overwrite the status");
    assert_eq!(
        after["incident_time"]["closed"], t,
        "closed → closed keeps the close time"
    );
    assert_eq!(
        after["incident_time"]["opened"], created["incident_time"]["opened"],
        "maps merge"
    );
    assert_eq!(
        after["external_references"].as_array().unwrap().len(),
        1,
        "lists are replaced whole: the analyst's reference is gone"
    );
    // Same status again: no status logic, the client's time wins.
    let again = sim
        .xdr()
        .analyst_edit(
            &sid,
            json!({"incident_time": {"closed": "2031-01-01T00:00:00.000Z"}}),
        )
        .unwrap();
    assert_eq!(again["incident_time"]["closed"], "2031-01-01T00:00:00.000Z");
    // Non-closed → closed stamps now, whatever the client sent.
    sim.xdr().analyst_set_status(&sid, "Open").unwrap();
    let closed = http
        .send(
            "PATCH",
            &url,
            Some(&bearer(&tok)),
            Some(&json!({"status": "Closed", "incident_time": {"closed": "2001-01-01T00:00:00.000Z"}})),
        )
        .await
        .json();
    assert_ne!(
        closed["incident_time"]["closed"],
        "2001-01-01T00:00:00.000Z"
    );
}
