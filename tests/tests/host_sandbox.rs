//! The host's sandbox, checked from inside a real component (the test-only
//! `mssp-probe`): each tenant sees only its own data and reaches only its
//! own upstreams.

use mssp_e2e::{TestHost, get, send};
use mssp_runtime::LimitSettings;

async fn host() -> TestHost {
    TestHost::start("mssp_probe", LimitSettings::default())
        .await
        .expect("host starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tick_runs_and_the_status_route_answers_through_the_tenant_prefix() {
    let h = host().await;
    let t = h.tenant("acme", &[("customer_name", "Acme Corp")]);
    h.runtime.tick(&t, 1_700_000_000).await.expect("tick runs");
    let r = get(&h.url("/tenants/acme/status")).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), "customer=Acme Corp last_run=1700000000");
    assert_eq!(get(&h.url("/healthz")).await.unwrap().status, 200);
    assert_eq!(
        get(&h.url("/tenants/nobody/status")).await.unwrap().status,
        404
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_cannot_read_or_list_another_tenants_keys_whatever_bucket_it_opens() {
    let h = host().await;
    h.tenant("acme", &[("customer_name", "Acme")]);
    h.tenant("globex", &[("customer_name", "Globex")]);
    let put = send(
        "PUT",
        &h.url("/tenants/acme/kv/set?key=cursor"),
        &[],
        "acme-secret-cursor",
    )
    .await
    .unwrap();
    assert_eq!(put.status, 204, "{}", put.text());

    // Globex sees nothing under the same key, in the same bucket name.
    let r = get(&h.url("/tenants/globex/kv/get?key=cursor"))
        .await
        .unwrap();
    assert_eq!(r.status, 404);
    let r = get(&h.url("/tenants/globex/kv/list")).await.unwrap();
    assert_eq!(r.text(), "");
    // Other bucket names, including the other tenant's id, do not open.
    for bucket in [
        "acme",
        "acme/default",
        "..",
        "",
        "default/../acme",
        "globex",
    ] {
        let r = get(&h.url(&format!(
            "/tenants/globex/kv/get?bucket={bucket}&key=cursor"
        )))
        .await
        .unwrap();
        assert_eq!(r.status, 403, "bucket {bucket:?}: {}", r.text());
        assert_eq!(r.text(), "no-such-store");
    }
    // Acme still reads its own value.
    let r = get(&h.url("/tenants/acme/kv/get?key=cursor"))
        .await
        .unwrap();
    assert_eq!(r.text(), "acme-secret-cursor");
    let keys = h.kv.tenant_keys("globex").unwrap();
    assert!(keys.is_empty(), "globex wrote nothing: {keys:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compare_and_swap_detects_a_concurrent_write() {
    let h = host().await;
    h.tenant("acme", &[]);
    let r = send(
        "POST",
        &h.url("/tenants/acme/kv/cas-race?key=state"),
        &[],
        "",
    )
    .await
    .unwrap();
    assert_eq!(
        r.text(),
        "cas-failed then swapped after seeing concurrent",
        "status {}",
        r.status
    );
    let r = get(&h.url("/tenants/acme/kv/get?key=state")).await.unwrap();
    assert_eq!(r.text(), "mine");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_requests_reach_only_the_tenants_allowlist() {
    let h = host().await;
    let own = format!("http://127.0.0.1:{}", h.addr.port());
    h.tenant("acme", &[("amp_base_url", own.as_str())]);
    let fetch = |url: String| {
        let h = &h;
        async move {
            get(&h.url(&format!("/tenants/acme/fetch?url={url}")))
                .await
                .unwrap()
                .text()
        }
    };
    assert_eq!(fetch(format!("{own}/healthz")).await, "status=200 bytes=3");
    let port = h.addr.port();
    for denied in [
        format!("http://localhost:{port}/healthz"),
        format!("http://127.0.0.2:{port}/healthz"),
        format!("http://127.0.0.1:{}/healthz", port.wrapping_add(1)),
        format!("https://127.0.0.1:{port}/healthz"),
        "http://example.com/".to_string(),
    ] {
        assert_eq!(
            fetch(denied.clone()).await,
            "error=ErrorCode::HttpRequestDenied",
            "{denied}"
        );
    }
    let t = h.runtime.tenant("acme").unwrap();
    assert_eq!(
        t.stats.stops(mssp_runtime::stats::StopKind::DeniedRequest),
        5
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_ticks_of_one_tenant_never_overlap() {
    let h = host().await;
    let t = h.tenant("acme", &[("probe_tick_sleep_ms", "300")]);
    let (a, b) = tokio::join!(h.runtime.tick(&t, 1), h.runtime.tick(&t, 2));
    a.unwrap();
    b.unwrap();
    let r = get(&h.url("/tenants/acme/kv/get?key=overlap_seen"))
        .await
        .unwrap();
    assert_eq!(r.status, 404, "an overlap was recorded");
    let ns = mssp_runtime::kv::Namespace::new("acme", "default");
    let (ticks, _) = h.kv.get(&ns, "ticks").unwrap().unwrap();
    assert_eq!(i64::from_le_bytes(ticks.try_into().unwrap()), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_an_admin_token_the_operator_routes_refuse_anyone_without_it() {
    use mssp_bridge::server::Server;
    use mssp_runtime::SecretString;
    let h = host().await;
    h.tenant("acme", &[("customer_name", "Acme")]);
    let addr = Server::with_admin_token(
        h.runtime.clone(),
        Some(SecretString::new("admin-token-3f9a")),
    )
    .spawn(std::net::SocketAddr::from(([127, 0, 0, 1], 0)))
    .await
    .unwrap();
    let url = |p: &str| format!("http://{addr}{p}");
    for path in ["/metrics", "/", "/ui/tenants/acme"] {
        let r = get(&url(path)).await.unwrap();
        assert_eq!(r.status, 401, "{path} without a token");
        assert!(r.headers.contains_key("www-authenticate"));
        let r = send("GET", &url(path), &[("authorization", "Bearer wrong")], "")
            .await
            .unwrap();
        assert_eq!(r.status, 401, "{path} with a wrong token");
        let r = send(
            "GET",
            &url(path),
            &[("authorization", "Bearer admin-token-3f9a")],
            "",
        )
        .await
        .unwrap();
        assert_eq!(r.status, 200, "{path} with the token");
    }
    // Browsers send Basic auth: any user, the token as password.
    let r = send(
        "GET",
        &url("/metrics"),
        &[("authorization", "Basic b3BzOmFkbWluLXRva2VuLTNmOWE=")],
        "",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    // Liveness stays open for load balancers.
    assert_eq!(get(&url("/healthz")).await.unwrap().status, 200);
}
