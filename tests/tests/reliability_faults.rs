//! Fault matrix: every fault the simulators inject × every step of the
//! pipeline, each cell a customer of its own in one World (cells run in
//! parallel; a fault only hits its own customer's credentials).
//!
//! In each cell the fault hits the step five times (more than the guest's
//! four attempts of one call), then the step works again.
//! Expected in every cell: the bridge retries with bounded attempts, loses
//! nothing and duplicates nothing (one XDR and one ServiceNow incident per
//! detection group), contains and releases the host, closes from ServiceNow,
//! never sends a credential to a redirect target, and shows the failure —
//! in the incident's audit trail (or the tick report, for the steps outside
//! an incident: events read, reconcile query), and in the tenant's counters:
//! every hit among the failed calls the guest reports, every error status,
//! redirect or lost connection among the host's non-ok upstream requests,
//! every oversize answer among the sandbox's body-too-large stops.
//!
//! `cargo test -p mssp-e2e --test reliability_faults -- --nocapture` prints
//! the table recorded in RELIABILITY.md.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use mssp_e2e::{Customer, CustomerSpec, World, get, group_of_key, wanted_groups};
use mssp_runtime::LimitSettings;
use mssp_runtime::stats::{CallOutcome, StopKind};
use mssp_sim::{Fault, FaultKind, IsolationStatus, Service};
use serde_json::Value;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Phase {
    /// From the detection to the open ServiceNow incident.
    Open,
    /// From the analyst's close to the closed incident and released host.
    Close,
}

/// A pipeline step: where its requests go.
struct Step {
    name: &'static str,
    service: Service,
    route: &'static str,
    method: Option<&'static str>,
    phase: Phase,
}

const STEPS: &[Step] = &[
    Step {
        name: "events read",
        service: Service::Amp,
        route: "/v1/events",
        method: Some("GET"),
        phase: Phase::Open,
    },
    Step {
        name: "XDR token",
        service: Service::XdrAuth,
        route: "/iroh/oauth2/token",
        method: Some("POST"),
        phase: Phase::Open,
    },
    Step {
        name: "XDR create (bundle import)",
        service: Service::XdrApi,
        route: "/ctia/bundle/import",
        method: Some("POST"),
        phase: Phase::Open,
    },
    Step {
        name: "containment",
        service: Service::Amp,
        route: "/v1/computers",
        method: None,
        phase: Phase::Open,
    },
    Step {
        name: "ServiceNow create",
        service: Service::Snow,
        route: "/api/now/table/incident",
        method: Some("POST"),
        phase: Phase::Open,
    },
    Step {
        name: "reconcile query",
        service: Service::Snow,
        route: "/api/now/table/incident",
        method: Some("GET"),
        phase: Phase::Close,
    },
    Step {
        name: "close XDR",
        service: Service::XdrApi,
        route: "/ctia/incident/*",
        method: Some("PATCH"),
        phase: Phase::Close,
    },
    Step {
        name: "release host",
        service: Service::Amp,
        route: "/v1/computers/*/isolation",
        method: Some("DELETE"),
        phase: Phase::Close,
    },
];

/// Requests of the step that fail before it works again: one more than the
/// guest's attempts per call, so the first call gives up and a later tick
/// finishes the work.
const HITS: usize = 5;
/// Ticks (1.2 s apart) a phase may take at most: the "429 bare" column waits out
/// growing cooldowns (1 + 2 + 4 + 8 s before its fifth 429, then 16 s after it, about
/// 31 s); the others need a few, and a phase ends as soon as every cell is done.
const ROUNDS: usize = 40;
/// Upstream response bodies above this are refused by the host (the
/// "oversize" column pads answers to twice this).
const MAX_BODY: usize = 256 * 1024;
/// The customers' per-request timeout (the "timeout" column waits longer).
const HTTP_TIMEOUT_MS: u64 = 400;

fn faults() -> Vec<(&'static str, FaultKind)> {
    vec![
        (
            "429",
            FaultKind::TooManyRequests {
                retry_after_secs: 1,
                bare: false,
            },
        ),
        (
            "429 bare",
            FaultKind::TooManyRequests {
                retry_after_secs: 1,
                bare: true,
            },
        ),
        ("500", FaultKind::Status { code: 500 }),
        ("502", FaultKind::Status { code: 502 }),
        ("503", FaultKind::Status { code: 503 }),
        (
            "timeout",
            FaultKind::Latency {
                ms: HTTP_TIMEOUT_MS * 3,
            },
        ),
        ("drop", FaultKind::DropConnection),
        ("drop mid-body", FaultKind::DropMidBody),
        ("malformed", FaultKind::MalformedJson),
        ("truncated", FaultKind::TruncatedJson),
        (
            "oversize",
            FaultKind::Oversize {
                bytes: MAX_BODY * 2,
            },
        ),
        (
            "redirect",
            FaultKind::Redirect {
                status: 302,
                location: None,
            },
        ),
    ]
}

struct Cell {
    step: usize,
    fault: &'static str,
    kind: FaultKind,
    customer: Customer,
    groups: BTreeSet<String>,
    fault_id: Option<u64>,
    open_rounds: Option<usize>,
    close_rounds: Option<usize>,
    /// Hosts with an open incident that were not isolated after the open phase.
    not_contained: Vec<String>,
    /// Errors of every tick report of this cell (`GET /v1/status` after each tick).
    tick_errors: std::sync::Mutex<Vec<String>>,
}

fn identity(c: &Customer, service: Service) -> &str {
    match service {
        Service::Amp => &c.amp_client_id,
        Service::XdrAuth | Service::XdrApi => &c.xdr_client_id,
        Service::Snow => &c.snow_user,
    }
}

fn add_fault(w: &World, cell: &mut Cell) {
    let step = &STEPS[cell.step];
    let mut f = Fault::times(step.service, step.route, HITS, cell.kind.clone())
        .for_tenant(identity(&cell.customer, step.service));
    if let Some(m) = step.method {
        f = f.for_method(m);
    }
    cell.fault_id = Some(w.sim.faults().add(f));
}

fn groups_of(events: &[mssp_sim::Event]) -> BTreeSet<String> {
    wanted_groups(events).into_keys().collect()
}

fn group_of(key: &str) -> String {
    group_of_key(key).to_string()
}

async fn incidents(w: &World, c: &Customer) -> Vec<Value> {
    let r = get(&w.host.url(&format!("/tenants/{}/v1/incidents", c.id)))
        .await
        .unwrap();
    r.json()["incidents"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

async fn all_in(w: &World, c: &Customer, n: usize, states: &[&str]) -> bool {
    let list = incidents(w, c).await;
    list.len() == n
        && list
            .iter()
            .all(|i| states.contains(&i["state"].as_str().unwrap_or("")))
}

/// Ticks every listed cell at once (as the scheduler would, bounded).
async fn tick_all(w: &World, cells: &[&Cell]) {
    let mut set = tokio::task::JoinSet::new();
    let gate = Arc::new(tokio::sync::Semaphore::new(24));
    for cell in cells {
        let rt = w.host.runtime.clone();
        let t = rt.tenant(&cell.customer.id).unwrap();
        let gate = gate.clone();
        set.spawn(async move {
            let _p = gate.acquire_owned().await.unwrap();
            let now = mssp_bridge::unix_ms() / 1000;
            // A failed tick is an outcome of the cell, checked by its end state.
            let _ = rt.tick(&t, now).await;
        });
    }
    while set.join_next().await.is_some() {}
}

/// Ticks the cells not yet done, up to `max` rounds (1.2 s apart, so that a
/// one-second Retry-After has passed); returns after how many rounds each
/// cell was done.
async fn drive(
    w: &World,
    cells: &[Cell],
    max: usize,
    states: &[&str],
) -> BTreeMap<usize, Option<usize>> {
    let mut done: BTreeMap<usize, Option<usize>> = (0..cells.len()).map(|i| (i, None)).collect();
    for round in 1..=max {
        let pending: Vec<usize> = done
            .iter()
            .filter(|(_, d)| d.is_none())
            .map(|(i, _)| *i)
            .collect();
        if pending.is_empty() {
            break;
        }
        let batch: Vec<&Cell> = pending.iter().map(|i| &cells[*i]).collect();
        tick_all(w, &batch).await;
        for i in pending {
            let c = &cells[i];
            let status = get(&w.host.url(&format!("/tenants/{}/v1/status", c.customer.id)))
                .await
                .unwrap()
                .json();
            if let Some(errors) = status["last_tick"]["errors"].as_array() {
                c.tick_errors
                    .lock()
                    .unwrap()
                    .extend(errors.iter().map(|e| e.as_str().unwrap_or("").to_string()));
            }
            if all_in(w, &c.customer, c.groups.len(), states).await {
                done.insert(i, Some(round));
            }
        }
        tokio::time::sleep(Duration::from_millis(1200)).await;
    }
    done
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fault_at_every_step_is_retried_bounded_and_changes_nothing_else() {
    let w = World::start_limited(
        mssp_sim::SimConfig {
            isolation_delay: Duration::from_millis(100),
            ..mssp_sim::SimConfig::default()
        },
        LimitSettings {
            max_outbound_response_body: MAX_BODY,
            ..LimitSettings::default()
        },
    )
    .await
    .unwrap();

    let mut cells = Vec::new();
    for (s, _) in STEPS.iter().enumerate() {
        for (f, (name, kind)) in faults().into_iter().enumerate() {
            let customer = w.customer(
                &format!("c{s}x{f}"),
                CustomerSpec {
                    computers: 2,
                    ..CustomerSpec::default()
                }
                .without_callback()
                .with("containment", "isolate")
                .with("http_timeout_ms", &HTTP_TIMEOUT_MS.to_string())
                .with("tick_budget_ms", "10000")
                // A header-less 429 starts a cooldown that doubles on each repeat
                // (1, 2, 4, 8 s here): the "429 bare" column needs more rounds.
                .with("rate_limit_cooldown_seconds", "1"),
            );
            // A few detections: at least one group.
            let mut seed = 100 + (s * 20 + f) as u64;
            let groups = loop {
                let g = groups_of(&w.publish(&customer, seed, 4));
                if !g.is_empty() {
                    break g;
                }
                seed += 1000;
            };
            cells.push(Cell {
                step: s,
                fault: name,
                kind,
                customer,
                groups,
                fault_id: None,
                open_rounds: None,
                close_rounds: None,
                not_contained: Vec::new(),
                tick_errors: std::sync::Mutex::new(Vec::new()),
            });
        }
    }
    for cell in cells.iter_mut() {
        if STEPS[cell.step].phase == Phase::Open {
            add_fault(&w, cell);
        }
    }
    for (i, r) in drive(&w, &cells, ROUNDS, &["open"]).await {
        cells[i].open_rounds = r;
    }
    // Every host with an open incident is isolated (or on its way).
    for cell in cells.iter_mut() {
        let hosts: BTreeSet<String> = incidents(&w, &cell.customer)
            .await
            .iter()
            .filter_map(|i| i["host"].as_str().map(String::from))
            .collect();
        for comp in w.sim.amp().computers(&cell.customer.amp_client_id).unwrap() {
            if hosts.contains(&comp.hostname)
                && !matches!(
                    comp.isolation,
                    IsolationStatus::Isolated | IsolationStatus::PendingStart
                )
            {
                cell.not_contained.push(comp.hostname);
            }
        }
    }
    // Analysts resolve every ticket; the bridge's reconcile poll closes.
    for cell in &cells {
        for s in w.snow_incidents_of(&cell.customer) {
            w.sim
                .snow()
                .analyst_close(s.sys_id(), 6, "Solved (Permanently)", "reimaged")
                .await
                .unwrap();
        }
    }
    for cell in cells.iter_mut() {
        if STEPS[cell.step].phase == Phase::Close {
            add_fault(&w, cell);
        }
    }
    for (i, r) in drive(&w, &cells, ROUNDS, &["closed"]).await {
        cells[i].close_rounds = r;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    let fired: BTreeMap<u64, u64> = w
        .sim
        .faults()
        .list()
        .into_iter()
        .map(|f| (f.id, f.fired))
        .collect();
    let counts = w.sim.inspect().request_counts();
    let decoy_with_credentials: Vec<_> = w
        .sim
        .inspect()
        .decoy_hits()
        .into_iter()
        .filter(|h| h.authorization.is_some())
        .collect();

    let mut table: BTreeMap<(usize, &str), String> = BTreeMap::new();
    let mut failures = Vec::new();
    for cell in &cells {
        let c = &cell.customer;
        let step = &STEPS[cell.step];
        let mut problems = Vec::new();
        let hits = cell
            .fault_id
            .and_then(|id| fired.get(&id))
            .copied()
            .unwrap_or(0);
        if hits == 0 {
            problems.push("fault never fired".to_string());
        }
        let xdr: Vec<String> = w
            .xdr_incidents_of(c)
            .iter()
            .map(|i| group_of(i["external_ids"][0].as_str().unwrap_or("")))
            .collect();
        let snow: Vec<String> = w
            .snow_incidents_of(c)
            .iter()
            .map(|s| group_of(s.field("correlation_id")))
            .collect();
        for (what, got) in [("XDR", &xdr), ("ServiceNow", &snow)] {
            let set: BTreeSet<String> = got.iter().cloned().collect();
            if got.len() > set.len() {
                problems.push(format!("{} duplicate {what}", got.len() - set.len()));
            }
            let lost = cell.groups.difference(&set).count();
            if lost > 0 {
                problems.push(format!("{lost} lost {what}"));
            }
            if set.difference(&cell.groups).count() > 0 {
                problems.push(format!("unexpected {what}"));
            }
        }
        if cell.close_rounds.is_none() {
            let states: Vec<String> = incidents(&w, c)
                .await
                .iter()
                .map(|i| format!("{}", i["state"]))
                .collect();
            problems.push(format!("not closed: {states:?}"));
        }
        for comp in w.sim.amp().computers(&c.amp_client_id).unwrap() {
            if comp.isolation != IsolationStatus::NotIsolated || comp.group_guid != c.default_group
            {
                problems.push(format!("{} not released", comp.hostname));
            }
        }
        // The failure is visible: audit trail (or tick report) and counters.
        let mut audit = String::new();
        for i in incidents(&w, c).await {
            let key = i["key"].as_str().unwrap_or("");
            let r = get(&w.host.url(&format!("/tenants/{}/v1/incidents/{key}", c.id)))
                .await
                .unwrap();
            audit.push_str(&r.json()["audit"].to_string());
        }
        let in_audit = audit.contains("fail");
        let abandoned = audit.contains("containment abandoned");
        if !cell.not_contained.is_empty() && !abandoned {
            problems.push(format!("{:?} never isolated", cell.not_contained));
        }

        let in_report = !cell.tick_errors.lock().unwrap().is_empty();
        if std::env::var_os("MSSP_FAULT_DETAIL").is_some() {
            println!(
                "{} × {}: audit {audit}\n  tick errors {:?}",
                step.name,
                cell.fault,
                cell.tick_errors.lock().unwrap()
            );
        }
        let t = w.host.runtime.tenant(&c.id).unwrap();
        let svc = match step.service {
            Service::Amp => "amp",
            Service::XdrAuth | Service::XdrApi => "xdr",
            Service::Snow => "snow",
        };
        let bad_calls = [
            CallOutcome::Redirected,
            CallOutcome::RateLimited,
            CallOutcome::ServerError,
            CallOutcome::ClientError,
            CallOutcome::Failed,
        ]
        .iter()
        .map(|o| t.stats.upstream_count(svc, *o))
        .sum::<u64>();
        let guest_failed = t.stats.upstream_failed(svc);
        let too_large = t.stats.stops(StopKind::BodyTooLarge);
        if guest_failed < hits {
            problems.push(format!(
                "{guest_failed} failed calls reported for {hits} hits"
            ));
        }
        let host_sees_it = matches!(
            cell.kind,
            FaultKind::TooManyRequests { .. }
                | FaultKind::Status { .. }
                | FaultKind::Redirect { .. }
                | FaultKind::Latency { .. }
                | FaultKind::DropConnection
        );
        if host_sees_it && bad_calls < hits {
            problems.push(format!(
                "{bad_calls} non-ok requests counted for {hits} hits"
            ));
        }
        if matches!(cell.kind, FaultKind::Oversize { .. }) && too_large < hits {
            problems.push(format!("{too_large} body-too-large stops for {hits} hits"));
        }
        let route_calls = counts.tenant(step.service, identity(c, step.service));
        if route_calls > 60 {
            problems.push(format!("{route_calls} calls: unbounded retries"));
        }
        let shown = match (in_audit, in_report) {
            (true, true) => "audit+report",
            (true, false) => "audit",
            (false, true) => "report",
            (false, false) => {
                problems.push("neither in an audit trail nor in a tick report".into());
                "-"
            }
        };
        let outcome = if problems.is_empty() {
            format!(
                "ok {}+{} ticks, {hits} hit, {route_calls} calls, {shown}, \
                 {guest_failed} failed (guest), {bad_calls} non-ok (host){}",
                cell.open_rounds.unwrap_or(0),
                cell.close_rounds.unwrap_or(0),
                if abandoned && !cell.not_contained.is_empty() {
                    ", containment abandoned after 3 attempts (by design)"
                } else {
                    ""
                }
            )
        } else {
            failures.push(format!(
                "{} × {}: {}",
                step.name,
                cell.fault,
                problems.join(", ")
            ));
            format!("FAIL {}", problems.join(", "))
        };
        table.insert((cell.step, cell.fault), outcome);
    }

    println!(
        "\nfault matrix (cell: outcome, open+close ticks, fault hits, calls to the faulted service, where the failure shows, failed calls reported by the guest, non-ok requests counted by the host)"
    );
    for (s, step) in STEPS.iter().enumerate() {
        println!("{}:", step.name);
        for (name, _) in faults() {
            println!("  {name:<14} {}", table[&(s, name)]);
        }
    }
    assert!(
        decoy_with_credentials.is_empty(),
        "credentials followed a redirect: {decoy_with_credentials:?}"
    );
    assert!(
        failures.is_empty(),
        "{} cells failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

async fn tick_until(w: &World, c: &Customer, n: usize, state: &str, max: usize) -> Option<usize> {
    for round in 1..=max {
        w.tick(c).await.unwrap();
        if all_in(w, c, n, &[state]).await {
            return Some(round);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    None
}

fn one_customer(w: &World, id: &str) -> Customer {
    w.customer(
        id,
        CustomerSpec {
            computers: 2,
            ..CustomerSpec::default()
        }
        .without_callback()
        .with("containment", "isolate")
        .with("http_timeout_ms", &HTTP_TIMEOUT_MS.to_string()),
    )
}

fn publish_groups(w: &World, c: &Customer, seed: u64) -> BTreeSet<String> {
    let mut seed = seed;
    loop {
        let g = groups_of(&w.publish(c, seed, 4));
        if !g.is_empty() {
            return g;
        }
        seed += 1000;
    }
}

async fn close_all_in_snow(w: &World, c: &Customer) {
    for s in w.snow_incidents_of(c) {
        if !["6", "7", "8"].contains(&s.state()) {
            w.sim
                .snow()
                .analyst_close(s.sys_id(), 6, "Solved (Permanently)", "reimaged")
                .await
                .unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_xdr_token_that_expires_early_is_renewed_at_create_and_at_close() {
    let w = World::start().await.unwrap();
    let c = one_customer(&w, "tokens");
    let mut groups = publish_groups(&w, &c, 1);
    assert!(tick_until(&w, &c, groups.len(), "open", 3).await.is_some());
    let token_requests = |w: &World| {
        w.sim
            .inspect()
            .request_counts()
            .tenant(Service::XdrAuth, &c.xdr_client_id)
    };
    let before = token_requests(&w);

    // XDR revokes every token; new detections arrive.
    w.sim.xdr().expire_tokens();
    groups.extend(publish_groups(&w, &c, 2));
    assert!(tick_until(&w, &c, groups.len(), "open", 3).await.is_some());
    let renewed_at_create = token_requests(&w) - before;

    close_all_in_snow(&w, &c).await;
    w.sim.xdr().expire_tokens();
    let before = token_requests(&w);
    assert!(
        tick_until(&w, &c, groups.len(), "closed", 3)
            .await
            .is_some()
    );
    let renewed_at_close = token_requests(&w) - before;

    let xdr = w.xdr_incidents_of(&c);
    assert_eq!(xdr.len(), groups.len(), "one XDR incident per group");
    assert!(xdr.iter().all(|i| i["status"] == "Closed"));
    assert_eq!(w.snow_incidents_of(&c).len(), groups.len());
    println!(
        "expired token: renewed {renewed_at_create}× at create, {renewed_at_close}× at close; nothing lost or duplicated"
    );
    assert!(renewed_at_create >= 1 && renewed_at_close >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_xdr_incident_deleted_upstream_does_not_block_the_close() {
    let w = World::start().await.unwrap();
    let c = one_customer(&w, "deleted");
    let groups = publish_groups(&w, &c, 3);
    assert!(tick_until(&w, &c, groups.len(), "open", 3).await.is_some());

    // An XDR analyst deletes one incident (with the customer's own API client).
    let token = w.xdr_analyst_token(&c).await;
    let victim = w.xdr_incidents_of(&c)[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let short = victim.rsplit('/').next().unwrap();
    let r = mssp_e2e::send(
        "DELETE",
        &format!("{}/ctia/incident/{short}", w.sim.xdr_api_url()),
        &[("Authorization", &format!("Bearer {token}"))],
        "",
    )
    .await
    .unwrap();
    assert!(r.status < 300, "deleted: {} {}", r.status, r.text());

    close_all_in_snow(&w, &c).await;
    let before = w
        .sim
        .inspect()
        .request_counts()
        .tenant(Service::XdrApi, &c.xdr_client_id);
    let rounds = tick_until(&w, &c, groups.len(), "closed", 4).await;
    let xdr_calls = w
        .sim
        .inspect()
        .request_counts()
        .tenant(Service::XdrApi, &c.xdr_client_id)
        - before;
    let audit = get(&w.host.url(&format!(
        "/tenants/{}/v1/incidents/{}",
        c.id,
        incidents(&w, &c)
            .await
            .iter()
            .find(|i| i["xdr_id"].as_str() == Some(short))
            .and_then(|i| i["key"].as_str())
            .unwrap()
    )))
    .await
    .unwrap()
    .json()["audit"]
        .to_string();
    let noted = audit.contains("no longer exists") || audit.contains("404");
    println!(
        "XDR incident deleted upstream: closed after {rounds:?} ticks, {xdr_calls} XDR calls; the audit notes it: {noted}"
    );
    assert!(rounds.is_some(), "the incident closes: {audit}");
    assert!(xdr_calls < 20, "bounded: {xdr_calls} XDR calls");
    assert!(noted, "the missing incident is in the audit trail: {audit}");
    assert_eq!(
        w.xdr_incidents_of(&c).len(),
        groups.len() - 1,
        "not re-created"
    );
    // The isolation stop settles after the simulator's delay.
    tokio::time::sleep(Duration::from_millis(400)).await;
    for comp in w.sim.amp().computers(&c.amp_client_id).unwrap() {
        assert_eq!(comp.isolation, IsolationStatus::NotIsolated, "{comp:?}");
    }
}

/// Secure Endpoint answers the customer's next `method` request on a host's
/// isolation with a `200` whose body is not JSON.
fn garble_isolation_once(w: &World, c: &Customer, method: &str) {
    w.sim.faults().add(
        Fault::times(
            Service::Amp,
            "/v1/computers/*/isolation",
            1,
            FaultKind::MalformedJson,
        )
        .for_method(method)
        .for_tenant(&c.amp_client_id),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_garbled_answer_to_the_isolation_probe_is_retried_not_taken_as_unsupported() {
    let w = World::start().await.unwrap();
    let c = one_customer(&w, "probe");
    let groups = publish_groups(&w, &c, 4);
    garble_isolation_once(&w, &c, "OPTIONS");
    assert!(tick_until(&w, &c, groups.len(), "open", 4).await.is_some());
    let hosts: BTreeSet<String> = incidents(&w, &c)
        .await
        .iter()
        .filter_map(|i| i["host"].as_str().map(String::from))
        .collect();
    for comp in w.sim.amp().computers(&c.amp_client_id).unwrap() {
        if hosts.contains(&comp.hostname) {
            assert!(
                matches!(
                    comp.isolation,
                    IsolationStatus::Isolated | IsolationStatus::PendingStart
                ),
                "{comp:?}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_garbled_answer_to_the_isolation_stop_does_not_count_as_released() {
    let w = World::start().await.unwrap();
    let c = one_customer(&w, "release");
    let groups = publish_groups(&w, &c, 5);
    assert!(tick_until(&w, &c, groups.len(), "open", 4).await.is_some());
    close_all_in_snow(&w, &c).await;
    garble_isolation_once(&w, &c, "DELETE");
    let _ = tick_until(&w, &c, groups.len(), "closed", 4).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    for comp in w.sim.amp().computers(&c.amp_client_id).unwrap() {
        assert_eq!(comp.isolation, IsolationStatus::NotIsolated, "{comp:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_servicenow_ticket_deleted_upstream_is_noted_and_not_retried_forever() {
    use base64::Engine as _;
    let w = World::start().await.unwrap();
    let c = one_customer(&w, "snowgone");
    let events = loop {
        let e = w.publish(&c, 6, 6);
        if e.iter().any(|e| {
            mssp_sim::HIGH_PRIORITY_EVENT_TYPES.contains(&e.event_type_id)
                && e.detection_id.is_some()
        }) {
            break e;
        }
    };
    let groups = groups_of(&events);
    assert!(tick_until(&w, &c, groups.len(), "open", 3).await.is_some());

    // A ServiceNow admin deletes one ticket.
    let first = events
        .iter()
        .find(|e| {
            mssp_sim::HIGH_PRIORITY_EVENT_TYPES.contains(&e.event_type_id)
                && e.detection_id.is_some()
        })
        .unwrap();
    let group = mssp_e2e::group_of_event(first);
    let ticket = w
        .snow_incidents_of(&c)
        .into_iter()
        .find(|s| group_of(s.field("correlation_id")) == group)
        .unwrap();
    let basic = base64::engine::general_purpose::STANDARD
        .encode(format!("{}:{}", c.snow_user, c.secrets[2]));
    let r = mssp_e2e::send(
        "DELETE",
        &format!(
            "{}/api/now/table/incident/{}",
            w.sim.snow_url(),
            ticket.sys_id()
        ),
        &[("Authorization", &format!("Basic {basic}"))],
        "",
    )
    .await
    .unwrap();
    assert!(r.status < 300, "deleted: {} {}", r.status, r.text());

    // A later event of the same detection: the bridge wants to add a work note.
    let mut later = mssp_sim::Event::new(
        w.sim.amp().next_event_id(),
        first.event_type_id,
        first.timestamp + 30,
    );
    later.detection = first.detection.clone();
    later.detection_id = first.detection_id.clone();
    later.connector_guid = first.connector_guid.clone();
    later.computer = first.computer.clone();
    later.severity = first.severity.clone();
    later.file = first.file.clone();
    w.sim
        .amp()
        .push_events(&c.amp_client_id, vec![later])
        .unwrap();

    let snow_calls = |w: &World| {
        w.sim
            .inspect()
            .request_counts()
            .tenant(Service::Snow, &c.snow_user)
    };
    let before = snow_calls(&w);
    for _ in 0..5 {
        w.tick(&c).await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let calls = snow_calls(&w) - before;
    let key = incidents(&w, &c)
        .await
        .iter()
        .find(|i| group_of(i["key"].as_str().unwrap_or("")) == group)
        .and_then(|i| i["key"].as_str().map(String::from))
        .unwrap();
    let rec = get(&w.host.url(&format!("/tenants/{}/v1/incidents/{key}", c.id)))
        .await
        .unwrap()
        .json();
    let audit = rec["audit"].to_string();
    let xdr_updated = audit.contains("XDR incident description updated");
    let recreated = w
        .snow_incidents_of(&c)
        .iter()
        .filter(|s| group_of(s.field("correlation_id")) == group)
        .count();
    println!(
        "ServiceNow ticket deleted upstream: {calls} ServiceNow calls in 5 ticks, state {}, last_error {}, XDR update done: {xdr_updated}, tickets re-created: {recreated}",
        rec["state"], rec["last_error"]
    );
    // One failed note, then only the reconcile query of each tick.
    assert!(
        calls <= 6,
        "not retried: {calls} ServiceNow calls in 5 ticks"
    );
    assert!(
        audit.contains("no longer exists") && audit.contains("dropped"),
        "the deletion is in the audit trail: {audit}"
    );
    assert!(xdr_updated, "the XDR update behind the note still happens");
    assert_eq!(recreated, 0, "no ticket is re-created");
}
