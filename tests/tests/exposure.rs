//! Issue 16, safe exposure: what the public listener (the one ServiceNow must reach)
//! serves, and how a flood of requests is refused — explicitly, counted, and never at
//! a callback's expense.
use mssp_e2e::{CustomerSpec, World, callback_body, get, send, signed_callback, unix_now};
use mssp_runtime::LimitSettings;

/// Given a customer with an open incident, ServiceNow's signed closing callback works
/// through the public listener; nothing else does, and nothing there tells which
/// tenants exist: every other route answers the same 404, and a callback for an
/// unknown tenant the same 401 as a forged or stale one for a real tenant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_public_listener_serves_the_signed_callback_and_nothing_else() {
    let w = World::start().await.unwrap();
    let acme = w.customer("acme", CustomerSpec::default().without_callback());
    w.publish(&acme, 41, 6);
    w.tick(&acme).await.unwrap();
    let public = w.public_listener().await;
    let at = |p: &str| format!("http://{public}{p}");

    let bearer = format!("Bearer {}", acme.tick_token);
    let mut not_served = Vec::new();
    for (method, path, auth) in [
        ("GET", "/tenants/acme/v1/status", None),
        ("GET", "/tenants/acme/v1/incidents", None),
        ("GET", "/tenants/nobody/v1/incidents", None),
        ("POST", "/tenants/acme/v1/tick", Some(bearer.as_str())),
        ("POST", "/tenants/nobody/v1/tick", Some(bearer.as_str())),
        ("GET", "/tenants/acme/v1/servicenow/events", None),
        ("GET", "/metrics", None),
        ("GET", "/", None),
        ("GET", "/ui/tenants/acme", None),
    ] {
        let headers: Vec<(&str, &str)> = auth.map(|a| ("authorization", a)).into_iter().collect();
        let r = send(method, &at(path), &headers, "").await.unwrap();
        not_served.push((r.status, r.text()));
        assert_eq!(r.status, 404, "{method} {path}: {}", r.text());
    }
    assert!(
        not_served.windows(2).all(|p| p[0] == p[1]),
        "one answer for everything not served: {not_served:?}"
    );
    assert!(
        w.bridge_incidents(&acme)
            .await
            .iter()
            .all(|i| i["state"] == "open"),
        "nothing ran"
    );

    let ticket = w.snow_incidents_of(&acme)[0].clone();
    let key = ticket.field("correlation_id").to_string();
    let body = callback_body(ticket.sys_id(), ticket.field("number"), "6", &key);
    let now = unix_now();
    let forged = "Zm9yZ2VkLWtleS1vZi1ub2JvZHktYXQtYWxs";
    let refusals = [
        ("unknown tenant", "nobody", acme.callback_key.as_str(), now),
        ("forged", "acme", forged, now),
        ("stale", "acme", acme.callback_key.as_str(), now - 900),
    ];
    let mut answers = Vec::new();
    for (what, tenant, key_b64, ts) in refusals {
        let url = at(&format!("/tenants/{tenant}/v1/servicenow/events"));
        let r = signed_callback(&url, key_b64, ts, &body).await;
        assert_eq!(r.status, 401, "{what}: {}", r.text());
        answers.push(r.text());
    }
    assert!(
        answers.windows(2).all(|p| p[0] == p[1]),
        "an unknown tenant cannot be told from a refused callback: {answers:?}"
    );

    let url = at("/tenants/acme/v1/servicenow/events");
    let accepted = signed_callback(&url, &acme.callback_key, now, &body).await;
    assert!(
        (200..300).contains(&accepted.status),
        "the signed callback works through the public listener: {} {}",
        accepted.status,
        accepted.text()
    );
    let closing = w.bridge_incident(&acme, &key).await;
    assert_ne!(
        closing["state"], "open",
        "the callback was acted on: {closing}"
    );
    assert_eq!(get(&at("/healthz")).await.unwrap().status, 200);
}

/// Given a listener bounded to one request in flight and a burst of 24 reads of one
/// tenant's status, every read either succeeds or is refused with 503 and
/// `Retry-After`, each refusal is counted on `/metrics`, and a signed callback sent
/// during the burst through the public listener is accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_reads_is_refused_explicitly_and_never_a_callback() {
    let limits = LimitSettings {
        max_concurrent_requests: 1,
        ..LimitSettings::default()
    };
    let w = World::start_limited(mssp_sim::SimConfig::default(), limits)
        .await
        .unwrap();
    let acme = w.customer("acme", CustomerSpec::default().without_callback());
    w.publish(&acme, 41, 6);
    w.tick(&acme).await.unwrap();
    let public = w.public_listener().await;
    let ticket = w.snow_incidents_of(&acme)[0].clone();
    let key = ticket.field("correlation_id").to_string();
    let body = callback_body(ticket.sys_id(), ticket.field("number"), "6", &key);

    let (mut ok, mut refused) = (0u64, 0u64);
    let mut callback = None;
    for round in 0..20 {
        let reads: Vec<_> = (0..24)
            .map(|_| {
                let url = w.host.url("/tenants/acme/v1/status");
                tokio::spawn(async move { send("GET", &url, &[], "").await })
            })
            .collect();
        if round == 0 {
            let url = format!("http://{public}/tenants/acme/v1/servicenow/events");
            callback = Some(signed_callback(&url, &acme.callback_key, unix_now(), &body).await);
        }
        for r in reads {
            let r = r.await.unwrap().unwrap();
            match r.status {
                200 => ok += 1,
                503 => {
                    refused += 1;
                    assert_eq!(
                        r.headers.get("retry-after").and_then(|v| v.to_str().ok()),
                        Some("1"),
                        "a refusal says when to come back"
                    );
                }
                other => panic!(
                    "neither served nor explicitly refused: {other} {}",
                    r.text()
                ),
            }
        }
        if refused > 0 {
            break;
        }
    }
    println!("flood: {ok} served, {refused} refused with 503 + Retry-After");
    assert!(
        refused > 0,
        "a burst of 24 on a bound of 1 was refused at least once"
    );
    let callback = callback.expect("sent");
    assert!(
        (200..300).contains(&callback.status),
        "the callback during the flood: {} {}",
        callback.status,
        callback.text()
    );
    let metrics = get(&w.host.url("/metrics")).await.unwrap().text();
    let line =
        format!(r#"mssp_http_refused_total{{listener="private",reason="in_flight"}} {refused}"#);
    assert!(metrics.contains(&line), "{line} in {metrics}");
}

/// Given 8 attackers flooding one customer's callback route on the public listener with
/// forged callbacks (bad MAC), that customer's ticks keep running and keep doing their
/// work: every forged callback is refused, and the detections published during the
/// flood become incidents, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_forged_callbacks_never_keeps_a_customer_from_ticking() {
    let w = World::start().await.unwrap();
    let acme = w.customer("acme", CustomerSpec::default().without_callback());
    let public = w.public_listener().await;
    let url = format!("http://{public}/tenants/acme/v1/servicenow/events");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let attackers: Vec<_> = (0..8)
        .map(|i| {
            let (url, stop) = (url.clone(), stop.clone());
            tokio::spawn(async move {
                let forged = "Zm9yZ2VkLWtleS1vZi1ub2JvZHktYXQtYWxs";
                let body = callback_body("0123456789abcdef", "INC0000001", "6", "amp-x");
                let (mut refused, mut other) = (0u64, Vec::new());
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let r = signed_callback(&url, forged, unix_now() + i, &body).await;
                    if r.status == 401 {
                        refused += 1;
                    } else {
                        other.push(r.status);
                    }
                }
                (refused, other)
            })
        })
        .collect();
    let mut published = Vec::new();
    for seed in [71, 72, 73] {
        published.extend(w.publish(&acme, seed, 5));
        w.tick(&acme)
            .await
            .expect("a tick during the flood runs, never refused as busy");
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut refused = 0;
    for a in attackers {
        let (n, other) = a.await.unwrap();
        assert!(
            other.is_empty(),
            "every forged callback is refused: {other:?}"
        );
        refused += n;
    }
    println!("{refused} forged callbacks refused during 3 ticks");
    assert!(refused > 0);
    let wanted = mssp_e2e::wanted_groups(&published);
    assert_eq!(
        w.xdr_incidents_of(&acme).len(),
        wanted.len(),
        "one incident per detection published during the flood"
    );
    assert_eq!(w.snow_incidents_of(&acme).len(), wanted.len());
}

/// Given the operator's private listener with an admin token, a caller without the
/// token cannot tell which tenants exist: an unknown tenant and a known tenant that
/// refuses the caller (reads without a credential, a tick without its token, a forged
/// or stale callback, a route or method that does not exist) answer the same 401,
/// route by route — and the refusal is decided before the component runs, so it
/// takes as long for either (the tenant's request counter does not move). The
/// operator, with the token, is told what does not exist.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_admin_token_unknown_and_refusing_tenants_answer_alike() {
    let w = World::start().await.unwrap();
    let acme = w.customer(
        "acme",
        CustomerSpec::default()
            .with("open_reads", "")
            .without_callback(),
    );
    w.publish(&acme, 41, 6);
    w.tick(&acme).await.unwrap();
    let admin = "admin-token-9e1f";
    let private = w.private_listener(admin).await;
    let at = |t: &str, r: &str| format!("http://{private}/tenants/{t}/v1/{r}");
    let forged = "Zm9yZ2VkLWtleS1vZi1ub2JvZHktYXQtYWxs";
    let body = callback_body("0123456789abcdef", "INC0000001", "6", "amp-x");
    let metrics = format!("http://{private}/metrics");
    let invocations = || async {
        let auth = format!("Bearer {admin}");
        let text = send("GET", &metrics, &[("authorization", &auth)], "")
            .await
            .unwrap()
            .text();
        text.lines()
            .find_map(|l| l.strip_prefix(r#"mssp_http_requests_total{tenant="acme"} "#))
            .map_or(0, |n| n.trim().parse::<u64>().unwrap())
    };
    let before = invocations().await;
    for (method, route) in [
        ("GET", "status"),
        ("GET", "incidents"),
        ("GET", "incidents/amp-x"),
        ("POST", "tick"),
        ("POST", "backfill"),
        ("GET", "tick"),
        ("GET", "nope"),
        ("DELETE", "incidents/amp-x"),
    ] {
        let known = send(method, &at("acme", route), &[], "").await.unwrap();
        let unknown = send(method, &at("nobody", route), &[], "").await.unwrap();
        assert_eq!(
            (known.status, known.text()),
            (unknown.status, unknown.text()),
            "{method} {route}"
        );
        assert_eq!(known.status, 401, "{method} {route}: {}", known.text());
    }
    for (key, ts) in [
        (forged, unix_now()),
        (acme.callback_key.as_str(), unix_now() - 900),
    ] {
        let known = signed_callback(&at("acme", "servicenow/events"), key, ts, &body).await;
        let unknown = signed_callback(&at("nobody", "servicenow/events"), key, ts, &body).await;
        assert_eq!(
            (known.status, known.text()),
            (unknown.status, unknown.text())
        );
        assert_eq!(known.status, 401, "{}", known.text());
    }
    assert_eq!(
        invocations().await,
        before,
        "a refused stranger's request ran the component"
    );
    // The operator is told.
    let bearer = format!("Bearer {admin}");
    let r = send(
        "GET",
        &at("nobody", "status"),
        &[("authorization", &bearer)],
        "",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 404, "{}", r.text());
    let r = send(
        "GET",
        &at("acme", "status"),
        &[("authorization", &bearer)],
        "",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
}
