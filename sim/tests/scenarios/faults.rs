//! Fault injection and request counting.

use std::time::{Duration, Instant};

use mssp_sim::{Fault, FaultKind, OrgSpec, Service, Sim};
use serde_json::json;

use crate::common::{Http, basic, sim};

const ORG: &str = "acme";
const KEY: &str = "k";

async fn amp_sim() -> Sim {
    let sim = sim().await;
    sim.amp().add_org(OrgSpec::new(ORG, KEY));
    sim.amp().add_org(OrgSpec::new("globex", KEY));
    sim.snow().add_basic_user("u", "p");
    sim.xdr().add_client("x", "s");
    sim
}

fn version(sim: &Sim) -> String {
    format!("{}/v1/version", sim.amp_url())
}

fn status(code: u16) -> Option<FaultKind> {
    Some(FaultKind::Status { code })
}

#[tokio::test(flavor = "multi_thread")]
async fn scripted_sequence_then_pass() {
    let sim = amp_sim().await;
    sim.faults().add(Fault::sequence(
        Service::Amp,
        "/v1",
        vec![status(503), status(502), None, status(500)],
    ));
    let http = Http::default();
    let mut codes = Vec::new();
    for _ in 0..6 {
        codes.push(http.get(&version(&sim), &basic(ORG, KEY)).await.status);
    }
    assert_eq!(codes, vec![503, 502, 200, 500, 200, 200]);
    let gateway = {
        sim.faults().add(Fault::times(
            Service::Amp,
            "/",
            1,
            FaultKind::Status { code: 502 },
        ));
        http.get(&version(&sim), &basic(ORG, KEY)).await
    };
    assert!(
        String::from_utf8_lossy(&gateway.body).contains("502 Bad Gateway"),
        "an HTML gateway page"
    );
    assert!(sim.faults().list().iter().all(|f| f.exhausted));
}

#[tokio::test(flavor = "multi_thread")]
async fn faults_target_a_tenant_a_method_and_a_route_pattern() {
    let sim = amp_sim().await;
    sim.amp().add_group(ORG, "g", "G").unwrap();
    sim.amp()
        .add_computer(ORG, mssp_sim::ComputerSpec::new("c1", "h", "g"))
        .unwrap();
    sim.faults().add(
        Fault::always(
            Service::Amp,
            "/v1/computers/*/isolation",
            FaultKind::Status { code: 503 },
        )
        .for_tenant(ORG)
        .for_method("PUT"),
    );
    let http = Http::default();
    let iso = format!("{}/v1/computers/c1/isolation", sim.amp_url());
    assert_eq!(
        http.send("PUT", &iso, Some(&basic(ORG, KEY)), None)
            .await
            .status,
        503
    );
    assert_eq!(
        http.get(&iso, &basic(ORG, KEY)).await.status,
        200,
        "GET unaffected"
    );
    assert_eq!(
        http.send("PUT", &iso, Some(&basic("globex", KEY)), None)
            .await
            .status,
        404,
        "other tenant unaffected"
    );
    assert_eq!(
        http.get(
            &format!("{}/v1/computers/c1", sim.amp_url()),
            &basic(ORG, KEY)
        )
        .await
        .status,
        200
    );
    sim.faults().clear();
    assert_eq!(
        http.send("PUT", &iso, Some(&basic(ORG, KEY)), None)
            .await
            .status,
        200
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn probabilities_are_seeded_and_latency_delays() {
    let sim = amp_sim().await;
    sim.faults().add(Fault::probability(
        Service::Amp,
        "/",
        0.5,
        FaultKind::Status { code: 500 },
    ));
    let http = Http::default();
    let mut failures = 0;
    for _ in 0..40 {
        if http.get(&version(&sim), &basic(ORG, KEY)).await.status == 500 {
            failures += 1;
        }
    }
    assert!((8..=32).contains(&failures), "{failures}");
    sim.faults().clear();
    sim.faults().add(Fault::always(
        Service::Snow,
        "/",
        FaultKind::Latency { ms: 250 },
    ));
    let started = Instant::now();
    let r = http
        .get(
            &format!("{}/api/now/table/incident", sim.snow_url()),
            &basic("u", "p"),
        )
        .await;
    assert_eq!(r.status, 200);
    assert!(started.elapsed() >= Duration::from_millis(250));
}

#[tokio::test(flavor = "multi_thread")]
async fn broken_bodies_drop_truncate_malform_and_oversize() {
    let sim = amp_sim().await;
    let http = Http::default();
    let auth = basic(ORG, KEY);

    sim.faults().add(Fault::times(
        Service::Amp,
        "/",
        1,
        FaultKind::DropConnection,
    ));
    let dropped = http
        .try_send("GET", &version(&sim), Some(&auth), None)
        .await;
    assert!(dropped.is_err(), "no response at all");

    sim.faults()
        .add(Fault::times(Service::Amp, "/", 1, FaultKind::DropMidBody));
    let mid = http
        .try_send("GET", &version(&sim), Some(&auth), None)
        .await;
    let err = mid.err().expect("the body breaks");
    assert!(
        err.starts_with("body"),
        "headers arrived, the body did not: {err}"
    );

    sim.faults()
        .add(Fault::times(Service::Amp, "/", 1, FaultKind::TruncatedJson));
    let cut = http.get(&version(&sim), &auth).await;
    assert_eq!(cut.status, 200);
    assert!(serde_json::from_slice::<serde_json::Value>(&cut.body).is_err());
    assert!(cut.body.starts_with(b"{\""));

    sim.faults()
        .add(Fault::times(Service::Amp, "/", 1, FaultKind::MalformedJson));
    let garbage = http.get(&version(&sim), &auth).await;
    assert_eq!(garbage.status, 200);
    assert!(serde_json::from_slice::<serde_json::Value>(&garbage.body).is_err());

    sim.faults().add(Fault::times(
        Service::Amp,
        "/",
        1,
        FaultKind::Oversize {
            bytes: 3 * 1024 * 1024,
        },
    ));
    let big = http.get(&version(&sim), &auth).await;
    assert_eq!(big.body.len(), 3 * 1024 * 1024);
    assert_eq!(
        big.json()["version"],
        "v1.2.0",
        "still valid JSON, just huge"
    );

    assert_eq!(
        http.get(&version(&sim), &auth).await.status,
        200,
        "all one-shot faults used up"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn damage_faults_happen_after_the_write() {
    let sim = amp_sim().await;
    sim.faults().add(
        Fault::times(
            Service::Snow,
            "/api/now/table/incident",
            1,
            FaultKind::DropMidBody,
        )
        .for_method("POST"),
    );
    let http = Http::default();
    let r = http
        .try_send(
            "POST",
            &format!("{}/api/now/table/incident", sim.snow_url()),
            Some(&basic("u", "p")),
            Some(&json!({"short_description": "x"})),
        )
        .await;
    assert!(r.is_err());
    assert_eq!(
        sim.snow().incidents().len(),
        1,
        "the record exists although the answer was lost"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn storms_use_each_services_own_429() {
    let sim = amp_sim().await;
    let http = Http::default();
    let storm = FaultKind::TooManyRequests {
        retry_after_secs: 7,
        bare: false,
    };
    for (service, n) in [(Service::Amp, 1), (Service::XdrAuth, 1), (Service::Snow, 2)] {
        sim.faults()
            .add(Fault::times(service, "/", n, storm.clone()));
    }
    let amp = http.get(&version(&sim), &basic(ORG, KEY)).await;
    assert_eq!(amp.status, 429);
    assert_eq!(amp.header("retry-after"), None);
    assert_eq!(amp.header("x-ratelimit-reset"), Some("7"));
    assert_eq!(amp.json()["errors"][0]["error_code"], 429);

    let xdr = http
        .post_form(
            &format!("{}/iroh/oauth2/token", sim.xdr_auth_url()),
            &basic("x", "s"),
            "grant_type=client_credentials",
        )
        .await;
    assert_eq!(xdr.status, 429);
    assert_eq!(xdr.header("retry-after"), Some("7"));

    let snow = http
        .get(
            &format!("{}/api/now/table/incident", sim.snow_url()),
            &basic("u", "p"),
        )
        .await;
    assert_eq!(snow.status, 429);
    assert_eq!(snow.header("retry-after"), Some("7"));
    let reset: i64 = snow.header("x-ratelimit-reset").unwrap().parse().unwrap();
    assert!(reset > 1_700_000_000, "an epoch");
    sim.snow().set_rate_limit_headers(false);
    let bare = http
        .get(
            &format!("{}/api/now/table/incident", sim.snow_url()),
            &basic("u", "p"),
        )
        .await;
    assert_eq!(bare.status, 429);
    assert!(bare.header("retry-after").is_none() && bare.header("x-ratelimit-reset").is_none());

    sim.faults().add(Fault::times(
        Service::Amp,
        "/",
        1,
        FaultKind::TooManyRequests {
            retry_after_secs: 7,
            bare: true,
        },
    ));
    let bare_amp = http.get(&version(&sim), &basic(ORG, KEY)).await;
    assert_eq!(bare_amp.status, 429);
    assert!(bare_amp.header("x-ratelimit-reset").is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn redirects_point_to_another_host_that_records_leaks() {
    let sim = amp_sim().await;
    sim.faults().add(Fault::times(
        Service::Amp,
        "/",
        1,
        FaultKind::Redirect {
            status: 302,
            location: None,
        },
    ));
    let http = Http::default();
    let r = http
        .get(
            &format!("{}/v1/events?limit=5", sim.amp_url()),
            &basic(ORG, KEY),
        )
        .await;
    assert_eq!(r.status, 302);
    let location = r.header("location").unwrap().to_string();
    assert!(location.starts_with(sim.control_url()), "{location}");
    assert!(location.ends_with("/v1/events?limit=5"));
    // A naive client follows it with its credentials.
    http.get(&location, &basic(ORG, KEY)).await;
    let hits = sim.inspect().decoy_hits();
    assert_eq!(hits.len(), 1);
    assert_eq!(
        hits[0].authorization.as_deref(),
        Some(basic(ORG, KEY).as_str())
    );

    sim.faults().add(Fault::times(
        Service::Snow,
        "/",
        1,
        FaultKind::Redirect {
            status: 307,
            location: Some("http://elsewhere.invalid".into()),
        },
    ));
    let r = http
        .get(
            &format!("{}/api/now/table/incident", sim.snow_url()),
            &basic("u", "p"),
        )
        .await;
    assert_eq!(r.status, 307);
    assert_eq!(
        r.header("location"),
        Some("http://elsewhere.invalid/api/now/table/incident")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn faults_over_the_control_route() {
    let sim = amp_sim().await;
    let http = Http::default();
    let faults = format!("{}/_sim/faults", sim.control_url());
    let added = http
        .send(
            "POST",
            &faults,
            None,
            Some(&json!({"service": "amp", "route": "/v1/version", "tenant": ORG,
                         "schedule": {"sequence": [{"status": {"code": 503}}, null, {"too_many_requests": {"retry_after_secs": 3, "bare": false}}]}})),
        )
        .await;
    assert_eq!(added.status, 201);
    let id = added.json()["id"].as_u64().unwrap();
    let codes: Vec<u16> = {
        let mut v = Vec::new();
        for _ in 0..4 {
            v.push(http.get(&version(&sim), &basic(ORG, KEY)).await.status);
        }
        v
    };
    assert_eq!(codes, vec![503, 200, 429, 200]);
    let listed = http.send("GET", &faults, None, None).await.json();
    assert_eq!(listed[0]["id"], id);
    assert_eq!(listed[0]["fired"], 2);
    assert_eq!(listed[0]["exhausted"], true);
    http.send(
        "POST",
        &faults,
        None,
        Some(&json!({"service": "amp", "route": "/", "schedule": {"always": "drop_connection"}})),
    )
    .await;
    assert!(
        http.try_send("GET", &version(&sim), Some(&basic(ORG, KEY)), None)
            .await
            .is_err()
    );
    assert_eq!(http.send("DELETE", &faults, None, None).await.status, 204);
    assert_eq!(http.get(&version(&sim), &basic(ORG, KEY)).await.status, 200);
    assert_eq!(
        http.send("DELETE", &format!("{faults}/999"), None, None)
            .await
            .status,
        404
    );
    let bad = http
        .send("POST", &faults, None, Some(&json!({"service": "nope"})))
        .await;
    assert_eq!(bad.status, 400);
}

#[tokio::test(flavor = "multi_thread")]
async fn every_request_is_counted_per_service_route_and_tenant() {
    let sim = amp_sim().await;
    let http = Http::default();
    sim.faults().add(Fault::times(
        Service::Amp,
        "/",
        1,
        FaultKind::Status { code: 503 },
    ));
    for _ in 0..3 {
        http.get(&version(&sim), &basic(ORG, KEY)).await;
    }
    http.get(
        &format!("{}/v1/events", sim.amp_url()),
        &basic("globex", KEY),
    )
    .await;
    http.get(&version(&sim), &basic("stranger", "x")).await;
    http.get(
        &format!("{}/api/now/table/incident", sim.snow_url()),
        &basic("u", "p"),
    )
    .await;
    http.send(
        "GET",
        &format!("{}/ctia/incident/incident-x", sim.xdr_api_url()),
        None,
        None,
    )
    .await;

    let counts = sim.inspect().request_counts();
    assert_eq!(
        counts.get(Service::Amp, "GET /v1/version", ORG),
        3,
        "the faulted one included"
    );
    assert_eq!(counts.tenant(Service::Amp, "globex"), 1);
    assert_eq!(
        counts.tenant(Service::Amp, "stranger"),
        1,
        "rejected credentials still count"
    );
    assert_eq!(counts.route(Service::Amp, "GET /v1/events"), 1);
    assert_eq!(counts.service(Service::Amp), 5);
    assert_eq!(
        counts.get(Service::Snow, "GET /api/now/table/incident", "u"),
        1
    );
    assert_eq!(counts.route(Service::XdrApi, "GET /ctia/incident/{id}"), 1);
    assert_eq!(counts.total(), 7);

    let over_http = http
        .send(
            "GET",
            &format!("{}/_sim/requests", sim.control_url()),
            None,
            None,
        )
        .await
        .json();
    assert_eq!(
        over_http["entries"].as_array().unwrap().len(),
        counts.entries.len()
    );
    assert_eq!(
        http.send(
            "DELETE",
            &format!("{}/_sim/requests", sim.control_url()),
            None,
            None
        )
        .await
        .status,
        204
    );
    assert_eq!(sim.inspect().request_counts().total(), 0);
    sim.inspect().reset_request_counts();
}
