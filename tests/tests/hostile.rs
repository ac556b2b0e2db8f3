//! Hostile and failing tenants: each misbehaviour is stopped with the right
//! cause, counted, and the host and the other tenants carry on.

use mssp_e2e::{TestHost, get, send};
use mssp_runtime::InvokeError;
use mssp_runtime::LimitSettings;
use mssp_runtime::stats::StopKind;

fn tight_limits() -> LimitSettings {
    LimitSettings {
        memory_mib: 16,
        tick_deadline_secs: 1,
        request_deadline_secs: 2,
        max_inbound_body: 64 * 1024,
        max_response_body: 256 * 1024,
        max_outbound_response_body: 128 * 1024,
        log_bytes_per_invocation: 16 * 1024,
        ..LimitSettings::default()
    }
}

async fn host() -> TestHost {
    TestHost::start("mssp_probe", tight_limits())
        .await
        .expect("host starts")
}

async fn healthy_tenant_still_ticks(h: &TestHost) {
    let ok = h.tenant("healthy", &[("customer_name", "Healthy Co")]);
    h.runtime.tick(&ok, 42).await.expect("healthy tick");
    assert_eq!(get(&h.url("/healthz")).await.unwrap().status, 200);
}

async fn stopped(h: &TestHost, mode: &str) -> (StopKind, u64) {
    let t = h.tenant(mode, &[("probe_mode", mode)]);
    let err = h.runtime.tick(&t, 1).await.expect_err("hostile tick fails");
    let kind = err
        .stop_kind()
        .unwrap_or_else(|| panic!("{mode}: not a sandbox stop: {err}"));
    assert!(matches!(err, InvokeError::Stopped { .. }), "{err}");
    (kind, t.stats.stops(kind))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_loop_is_interrupted_at_the_deadline() {
    let h = host().await;
    assert_eq!(stopped(&h, "loop").await, (StopKind::Timeout, 1));
    healthy_tenant_still_ticks(&h).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unbounded_allocation_hits_the_memory_cap() {
    let h = host().await;
    assert_eq!(stopped(&h, "alloc").await, (StopKind::Memory, 1));
    healthy_tenant_still_ticks(&h).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trapping_tenant_is_counted_and_runs_again_next_time() {
    let h = host().await;
    assert_eq!(stopped(&h, "trap").await, (StopKind::Trap, 1));
    let t = h.runtime.tenant("trap").unwrap();
    assert!(h.runtime.tick(&t, 2).await.is_err());
    assert_eq!(t.stats.stops(StopKind::Trap), 2);
    // An HTTP request to it fails cleanly with a 500, not a dropped connection.
    let r = get(&h.url("/tenants/trap/status")).await.unwrap();
    assert_eq!(r.status, 500);
    healthy_tenant_still_ticks(&h).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_floods_are_capped_not_fatal() {
    let h = host().await;
    let t = h.tenant("flood", &[("probe_mode", "flood")]);
    // The flood itself is not an error: output past the cap is dropped.
    let _ = h.runtime.tick(&t, 1).await;
    assert!(t.stats.stops(StopKind::LogDropped) >= 1);
    healthy_tenant_still_ticks(&h).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_caps_hold_in_both_directions() {
    let h = host().await;
    let own = format!("http://127.0.0.1:{}", h.addr.port());
    h.tenant("big", &[]);
    h.tenant("fetcher", &[("amp_base_url", own.as_str())]);

    // Inbound: over max_inbound_body is refused before the guest runs.
    let r = send(
        "POST",
        &h.url("/tenants/big/echo-size"),
        &[],
        vec![0u8; 100 * 1024],
    )
    .await
    .unwrap();
    assert_eq!(r.status, 413);
    let r = send(
        "POST",
        &h.url("/tenants/big/echo-size"),
        &[],
        vec![0u8; 1000],
    )
    .await
    .unwrap();
    assert_eq!(r.text(), "1000");

    // Guest → client: a body over max_response_body is cut off.
    let r = send("GET", &h.url("/tenants/big/big?bytes=2000000"), &[], "").await;
    assert!(
        r.is_err() || r.as_ref().is_ok_and(|r| r.body.len() < 2_000_000),
        "a 2 MB body went through"
    );
    let big = h.runtime.tenant("big").unwrap();
    assert!(big.stats.stops(StopKind::BodyTooLarge) >= 2);

    // Upstream → guest: a response over max_outbound_response_body errors in the guest.
    let r = get(&h.url(&format!(
        "/tenants/fetcher/fetch?url={own}/tenants/big/big%3Fbytes%3D200000"
    )))
    .await
    .unwrap();
    assert!(r.text().starts_with("error=body"), "{}", r.text());
    let r = get(&h.url(&format!(
        "/tenants/fetcher/fetch?url={own}/tenants/big/big%3Fbytes%3D1000"
    )))
    .await
    .unwrap();
    assert_eq!(r.text(), "status=200 bytes=1000");
    healthy_tenant_still_ticks(&h).await;
}
