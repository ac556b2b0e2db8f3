//! Forgery and replay: the signed ServiceNow callback and the tick route,
//! attacked from outside. Every refused request gets the status of the
//! contract and changes nothing upstream (simulator request counts and
//! records compared before and after) nor in the bridge (incident states).

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use mssp_bridge::settings::Settings;
use mssp_e2e::{Customer, CustomerSpec, World, get, send};
use serde_json::{Value, json};

/// SHA-256 (FIPS 180-4), written out so that the test signs callbacks
/// independently of the code under test.
fn sha256(data: &[u8]) -> [u8; 32] {
    const K: [u32; 64] = [
        0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4,
        0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe,
        0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f,
        0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7,
        0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc,
        0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b,
        0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116,
        0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
        0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
        0xc67178f2,
    ];
    let mut h: [u32; 8] = [
        0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab,
        0x5be0cd19,
    ];
    let mut msg = data.to_vec();
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&((data.len() as u64) * 8).to_be_bytes());
    for chunk in msg.chunks(64) {
        let mut w = [0u32; 64];
        for (i, word) in chunk.chunks(4).enumerate() {
            w[i] = u32::from_be_bytes([word[0], word[1], word[2], word[3]]);
        }
        for i in 16..64 {
            let s0 = w[i - 15].rotate_right(7) ^ w[i - 15].rotate_right(18) ^ (w[i - 15] >> 3);
            let s1 = w[i - 2].rotate_right(17) ^ w[i - 2].rotate_right(19) ^ (w[i - 2] >> 10);
            w[i] = w[i - 16]
                .wrapping_add(s0)
                .wrapping_add(w[i - 7])
                .wrapping_add(s1);
        }
        let mut v = h;
        for i in 0..64 {
            let s1 = v[4].rotate_right(6) ^ v[4].rotate_right(11) ^ v[4].rotate_right(25);
            let ch = (v[4] & v[5]) ^ (!v[4] & v[6]);
            let t1 = v[7]
                .wrapping_add(s1)
                .wrapping_add(ch)
                .wrapping_add(K[i])
                .wrapping_add(w[i]);
            let s0 = v[0].rotate_right(2) ^ v[0].rotate_right(13) ^ v[0].rotate_right(22);
            let maj = (v[0] & v[1]) ^ (v[0] & v[2]) ^ (v[1] & v[2]);
            let t2 = s0.wrapping_add(maj);
            v = [
                t1.wrapping_add(t2),
                v[0],
                v[1],
                v[2],
                v[3].wrapping_add(t1),
                v[4],
                v[5],
                v[6],
            ];
        }
        for (a, b) in h.iter_mut().zip(v) {
            *a = a.wrapping_add(b);
        }
    }
    let mut out = [0u8; 32];
    for (i, word) in h.iter().enumerate() {
        out[i * 4..i * 4 + 4].copy_from_slice(&word.to_be_bytes());
    }
    out
}

fn hmac_sha256(key: &[u8], msg: &[u8]) -> [u8; 32] {
    let mut k = [0u8; 64];
    if key.len() > 64 {
        k[..32].copy_from_slice(&sha256(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let inner: Vec<u8> = k
        .iter()
        .map(|b| b ^ 0x36)
        .chain(msg.iter().copied())
        .collect();
    let outer: Vec<u8> = k
        .iter()
        .map(|b| b ^ 0x5c)
        .chain(sha256(&inner).iter().copied())
        .collect();
    sha256(&outer)
}

/// `X-Bridge-Signature` of the contract, with `key_b64` the customer's `callback_key`.
fn signature(key_b64: &str, ts: i64, body: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD;
    let key = b64.decode(key_b64).unwrap();
    let msg = [format!("{ts}.").as_bytes(), body].concat();
    format!("v1={}", b64.encode(hmac_sha256(&key, &msg)))
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Everything the simulators hold or counted, and every incident state.
async fn snapshot(w: &World, customers: &[&Customer]) -> String {
    let mut states = Vec::new();
    for c in customers {
        let r = get(&w.host.url(&format!("/tenants/{}/v1/incidents", c.id)))
            .await
            .unwrap();
        for i in r.json()["incidents"].as_array().into_iter().flatten() {
            states.push(format!("{} {}", i["key"], i["state"]));
        }
    }
    // Isolation moves from pending_start to isolated on the simulator's own
    // clock; that transition is not a change made by a callback.
    let computers: Vec<String> = customers
        .iter()
        .flat_map(|c| w.sim.amp().computers(&c.amp_client_id).unwrap())
        .map(|mut c| {
            if c.isolation == mssp_sim::IsolationStatus::PendingStart {
                c.isolation = mssp_sim::IsolationStatus::Isolated;
            }
            format!("{c:?}")
        })
        .collect();
    format!(
        "{:?}\n{:?}\n{:?}\n{states:?}\n{computers:?}",
        w.sim.inspect().request_counts(),
        w.sim.inspect().xdr_incidents(),
        w.sim.inspect().snow_incidents()
    )
}

async fn callback(w: &World, c: &Customer, headers: &[(&str, &str)], body: &[u8]) -> (u16, String) {
    let mut h = vec![("Content-Type", "application/json")];
    h.extend_from_slice(headers);
    let r = send(
        "POST",
        &w.host
            .url(&format!("/tenants/{}/v1/servicenow/events", c.id)),
        &h,
        body.to_vec(),
    )
    .await
    .unwrap();
    (r.status, r.text())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_stale_replayed_and_malformed_callbacks_change_nothing_upstream() {
    let w = World::start().await.unwrap();
    let acme = w.customer(
        "acme",
        CustomerSpec::default()
            .without_callback()
            .with("containment", "isolate"),
    );
    let globex = w.customer("globex", CustomerSpec::default().without_callback());
    w.publish(&acme, 11, 30);
    w.tick(&acme).await.unwrap();
    let open = w.snow_incidents_of(&acme);
    assert!(!open.is_empty(), "the run opened incidents");
    let target = &open[0];
    let body = json!({
        "sys_id": target.sys_id(),
        "number": target.field("number"),
        "state": "6",
        "correlation_id": target.field("correlation_id"),
        "close_code": "Solved (Permanently)",
    })
    .to_string()
    .into_bytes();
    // The analyst closes it in ServiceNow (no business rule: the callbacks
    // below are the only ones the bridge gets).
    w.sim
        .snow()
        .analyst_close(target.sys_id(), 6, "Solved (Permanently)", "reimaged")
        .await
        .unwrap();

    let ts = now();
    let good = signature(&acme.callback_key, ts, &body);
    let ts_s = ts.to_string();
    let stale = ts - 301;
    let stale_s = stale.to_string();
    // Margin for the seconds that pass before the guest reads its clock.
    let future = ts + 310;
    let future_s = future.to_string();
    let mut tampered = good.clone().into_bytes();
    let last = tampered.len() - 2;
    tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    let globex_sig = signature(&globex.callback_key, ts, &body);
    let unknown_body = json!({
        "sys_id": "0123456789abcdef0123456789abcdef",
        "number": "INC9999999",
        "state": "6",
        "correlation_id": "amp-00000000-d1",
    })
    .to_string()
    .into_bytes();
    let unknown_sig = signature(&acme.callback_key, ts, &unknown_body);
    let malformed = b"{\"sys_id\": \"0123".to_vec();
    let malformed_sig = signature(&acme.callback_key, ts, &malformed);
    let mut oversize = body.clone();
    oversize.pop();
    oversize.extend(format!(",\"pad\":\"{}\"}}", "x".repeat(70 * 1024)).into_bytes());
    let oversize_sig = signature(&acme.callback_key, ts, &oversize);
    let stale_sig = signature(&acme.callback_key, stale, &body);
    let future_sig = signature(&acme.callback_key, future, &body);
    let v0 = good.replacen("v1=", "v0=", 1);

    let before = snapshot(&w, &[&acme, &globex]).await;
    // (what, headers, body, expected status)
    type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, &'a [u8], u16);
    let cases: Vec<Case> = vec![
        ("no signature headers", vec![], &body, 401),
        (
            "no timestamp",
            vec![("X-Bridge-Signature", &good)],
            &body,
            401,
        ),
        (
            "wrong signature",
            vec![
                ("X-Bridge-Timestamp", &ts_s),
                ("X-Bridge-Signature", &tampered),
            ],
            &body,
            401,
        ),
        (
            "unknown signature version",
            vec![("X-Bridge-Timestamp", &ts_s), ("X-Bridge-Signature", &v0)],
            &body,
            401,
        ),
        (
            "another customer's key",
            vec![
                ("X-Bridge-Timestamp", &ts_s),
                ("X-Bridge-Signature", &globex_sig),
            ],
            &body,
            401,
        ),
        (
            "stale timestamp (301 s old, correctly signed)",
            vec![
                ("X-Bridge-Timestamp", &stale_s),
                ("X-Bridge-Signature", &stale_sig),
            ],
            &body,
            401,
        ),
        (
            "timestamp 310 s ahead (correctly signed)",
            vec![
                ("X-Bridge-Timestamp", &future_s),
                ("X-Bridge-Signature", &future_sig),
            ],
            &body,
            401,
        ),
        (
            "signature of another timestamp",
            vec![
                ("X-Bridge-Timestamp", &stale_s),
                ("X-Bridge-Signature", &good),
            ],
            &body,
            401,
        ),
        (
            "unknown incident (correctly signed)",
            vec![
                ("X-Bridge-Timestamp", &ts_s),
                ("X-Bridge-Signature", &unknown_sig),
            ],
            &unknown_body,
            404,
        ),
        (
            "malformed JSON (correctly signed)",
            vec![
                ("X-Bridge-Timestamp", &ts_s),
                ("X-Bridge-Signature", &malformed_sig),
            ],
            &malformed,
            400,
        ),
        (
            "oversize body (> 64 KiB, correctly signed)",
            vec![
                ("X-Bridge-Timestamp", &ts_s),
                ("X-Bridge-Signature", &oversize_sig),
            ],
            &oversize,
            413,
        ),
    ];
    let mut wrong = Vec::new();
    for (name, headers, b, want) in &cases {
        let (status, text) = callback(&w, &acme, headers, b).await;
        println!("callback {name:<48} → {status}");
        if status != *want {
            wrong.push(format!("{name}: {status} (want {want}) {text}"));
        }
        // The other tenant's route does not accept acme's callback either.
        if *name == "wrong signature" {
            let (status, _) = callback(
                &w,
                &globex,
                &[("X-Bridge-Timestamp", &ts_s), ("X-Bridge-Signature", &good)],
                &body,
            )
            .await;
            println!(
                "callback {:<48} → {status}",
                "acme's callback sent to globex's route"
            );
            if status != 401 {
                wrong.push(format!("acme's callback on globex's route: {status}"));
            }
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
    assert_eq!(
        snapshot(&w, &[&acme, &globex]).await,
        before,
        "refused callbacks changed something"
    );

    // The genuine callback closes the incident; replaying it changes nothing more.
    let genuine = [
        ("X-Bridge-Timestamp", ts_s.as_str()),
        ("X-Bridge-Signature", good.as_str()),
    ];
    let (status, text) = callback(&w, &acme, &genuine, &body).await;
    assert!(status == 200 || status == 202, "{status} {text}");
    let incident = |w: &World| {
        let key = target.field("correlation_id").to_string();
        let url = w.host.url(&format!("/tenants/acme/v1/incidents/{key}"));
        async move { get(&url).await.unwrap().json() }
    };
    // Let the isolation stop settle in the simulator.
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    let state: Value = incident(&w).await["state"].clone();
    println!("callback {:<48} → {status}, incident {state}", "genuine");
    if status == 200 {
        // The host steps are done; the XDR close waits for the next tick's
        // batched read.
        assert_eq!(state, "closing", "the genuine callback closes the incident");
    }
    let after_genuine = snapshot(&w, &[&acme, &globex]).await;
    for _ in 0..3 {
        let (status, text) = callback(&w, &acme, &genuine, &body).await;
        println!(
            "callback {:<48} → {status}",
            "replay of the genuine callback"
        );
        assert_eq!(status, 200, "a replay answers 200: {text}");
    }
    assert_eq!(incident(&w).await["state"], state);
    assert_eq!(
        snapshot(&w, &[&acme, &globex]).await,
        after_genuine,
        "a replay changed something"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_without_credentials_are_refused_and_the_listener_is_loopback() {
    assert!(
        Settings::default().listen.ip().is_loopback(),
        "the HTTP listener binds to loopback unless configured"
    );
    assert!(Settings::parse("").unwrap().listen.ip().is_loopback());

    let w = World::start().await.unwrap();
    let acme = w.customer("acme", CustomerSpec::default());
    let globex = w.customer("globex", CustomerSpec::default());
    let quiet = w.customer("quiet", CustomerSpec::default().with("tick_token", ""));
    w.publish(&acme, 3, 20);
    let before = snapshot(&w, &[&acme, &globex, &quiet]).await;
    let route = |tenant: &str, r: &str| w.host.url(&format!("/tenants/{tenant}/v1/{r}"));
    let wrong_bearer = format!("Bearer {}x", acme.tick_token);
    let other_bearer = format!("Bearer {}", globex.tick_token);
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("x:{}", acme.tick_token))
    );
    // The operator routes (tick, backfill) take the tenant's tick_token only.
    for r in ["tick", "backfill"] {
        for (name, url, auth, want) in [
            ("no bearer", route("acme", r), None, 401),
            (
                "wrong bearer",
                route("acme", r),
                Some(wrong_bearer.as_str()),
                401,
            ),
            (
                "another tenant's token",
                route("acme", r),
                Some(other_bearer.as_str()),
                401,
            ),
            (
                "the token as basic auth",
                route("acme", r),
                Some(basic.as_str()),
                401,
            ),
            (
                "tenant without tick_token",
                route("quiet", r),
                Some(other_bearer.as_str()),
                403,
            ),
            ("unknown tenant", route("nobody", r), None, 404),
        ] {
            let headers: Vec<(&str, &str)> =
                auth.map(|a| ("Authorization", a)).into_iter().collect();
            let body = r#"{"since":"2026-01-01T00:00:00Z"}"#;
            let resp = send("POST", &url, &headers, body).await.unwrap();
            println!("POST /v1/{r:<8} {name:<28} → {}", resp.status);
            assert_eq!(resp.status, want, "{r} {name}: {}", resp.text());
        }
    }
    assert_eq!(
        snapshot(&w, &[&acme, &globex, &quiet]).await,
        before,
        "a refused operator request ran"
    );
    let bearer = format!("Bearer {}", acme.tick_token);
    let r = send(
        "POST",
        &route("acme", "tick"),
        &[("Authorization", &bearer)],
        "",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        !w.xdr_incidents_of(&acme).is_empty(),
        "the authorised tick ran"
    );
}

/// Issue 16: a customer's incidents are readable by nobody without a credential unless
/// the operator opts in by name. Through the host's server: every read route of a
/// tenant configured by default answers 401 (saying how to allow reads) and leaks
/// nothing; the tenant's `read_token` reads; the operator's admin token reads every
/// tenant; `open_reads=true` opens one tenant's reads and no other's; the host's own
/// status page still shows the default tenant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn by_default_nobody_reads_a_customers_incidents_without_a_credential() {
    let w = World::start().await.unwrap();
    let acme = w.customer("acme", CustomerSpec::default().with("open_reads", ""));
    let globex = w.customer(
        "globex",
        CustomerSpec::default()
            .with("open_reads", "")
            .with("read_token", "globex-reader-5d1e"),
    );
    let open = w.customer(
        "initech",
        CustomerSpec::default().with("open_reads", "true"),
    );
    for c in [&acme, &globex, &open] {
        w.publish(c, 41, 6);
        w.tick(c).await.unwrap();
    }
    let admin = "admin-token-77c2";
    let addr = w.private_listener(admin).await;
    let key = w.bridge_incidents(&open).await[0]["key"]
        .as_str()
        .unwrap()
        .to_string();
    let reads = |t: &str| {
        ["v1/status", "v1/incidents", &format!("v1/incidents/{key}")]
            .map(|r| format!("http://{addr}/tenants/{t}/{r}"))
    };
    for (tenant, bearer, want) in [
        ("acme", None, 401),
        ("acme", Some("globex-reader-5d1e"), 401),
        ("globex", None, 401),
        ("globex", Some("wrong"), 401),
        ("globex", Some("globex-reader-5d1e"), 200),
        ("acme", Some(admin), 200),
        ("globex", Some(admin), 200),
        ("initech", None, 200),
    ] {
        for url in reads(tenant) {
            let auth = bearer.map(|b| format!("Bearer {b}"));
            let headers: Vec<(&str, &str)> =
                auth.iter().map(|a| ("authorization", a.as_str())).collect();
            let r = send("GET", &url, &headers, "").await.unwrap();
            // One incident key of initech's does not exist elsewhere: a 404 is a read.
            let got = if r.status == 404 { 200 } else { r.status };
            assert_eq!(got, want, "{url} with {bearer:?}: {}", r.text());
            if want == 401 {
                let text = r.text();
                assert!(
                    text.contains("credential"),
                    "the refusal says what is missing: {text}"
                );
                for secret in acme.secrets.iter().chain(&globex.secrets) {
                    assert!(!text.contains(secret.as_str()), "{url} leaked a secret");
                }
                assert!(!text.contains("WS0"), "{url} leaked a host name: {text}");
            }
        }
    }
    // The operator's status page reads the default tenant with the host's own credential.
    let page = send(
        "GET",
        &format!("http://{addr}/ui/tenants/acme"),
        &[("authorization", &format!("Bearer {admin}"))],
        "",
    )
    .await
    .unwrap();
    assert_eq!(page.status, 200);
    assert!(page.text().contains("amp-"), "{}", page.text());
}
