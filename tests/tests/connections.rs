//! Kept-alive upstream connections: within a tick, the calls to one service
//! share a connection instead of a TCP (and, against the real APIs, TLS)
//! handshake each; no connection is shared between customers; answers that
//! break a connection never put it back in use.

use mssp_e2e::{CustomerSpec, World, wanted_groups};
use mssp_runtime::stats::ConnectionUse;
use mssp_sim::{Fault, FaultKind, Service};

const SERVICES: [(Service, &str); 4] = [
    (Service::Amp, "amp"),
    (Service::XdrAuth, "xdr"),
    (Service::XdrApi, "xdr"),
    (Service::Snow, "snow"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_new_detections_one_tick_reuses_a_connection_per_service_for_all_its_calls() {
    let w = World::start().await.unwrap();
    let c = w.customer(
        "keepalive",
        CustomerSpec::default().with("containment", "isolate"),
    );
    let events = w.publish(&c, 31, 20);
    let groups = wanted_groups(&events);
    assert!(groups.len() >= 2, "{groups:?}");
    w.sim.inspect().reset_request_counts();

    w.tick(&c).await.expect("tick");

    let (xdr, snow) = w.groups_upstream(&c);
    assert_eq!(
        xdr.len(),
        groups.len(),
        "every detection has its XDR incident"
    );
    assert_eq!(snow.len(), groups.len(), "and its ServiceNow incident");
    let counts = w.sim.inspect().request_counts();
    for (service, _) in SERVICES {
        let requests = counts.service(service);
        let connections = w.sim.inspect().connections(service);
        assert!(requests >= 1, "{service:?}: {counts:?}");
        assert_eq!(
            connections, 1,
            "{service:?}: {requests} requests over one connection"
        );
    }
    // The host's counters agree: one opened connection per origin, the
    // rest reused.
    let t = w.host.runtime.tenant(&c.id).unwrap();
    for (name, origins) in [("amp", 1), ("xdr", 2), ("snow", 1)] {
        assert_eq!(
            t.stats.connections(name, ConnectionUse::Opened),
            origins,
            "{name}"
        );
        assert!(
            t.stats.connections(name, ConnectionUse::Reused) > 0,
            "{name}"
        );
    }

    // The next tick (well within the idle timeout) reuses them again.
    w.tick(&c).await.expect("second tick");
    assert_eq!(w.sim.inspect().connections(Service::Amp), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_customers_never_share_a_connection() {
    let w = World::start().await.unwrap();
    let a = w.customer("tenant-a", CustomerSpec::default());
    let b = w.customer("tenant-b", CustomerSpec::default());
    w.sim.inspect().reset_request_counts();
    for _ in 0..3 {
        w.tick(&a).await.expect("tick a");
        w.tick(&b).await.expect("tick b");
    }
    // Six event polls, two customers: one connection each.
    assert_eq!(w.sim.inspect().request_counts().service(Service::Amp), 6);
    assert_eq!(w.sim.inspect().connections(Service::Amp), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_broken_mid_answer_is_not_used_again_and_nothing_is_lost() {
    let w = World::start().await.unwrap();
    let c = w.customer("broken", CustomerSpec::default());
    w.sim.inspect().reset_request_counts();
    w.tick(&c).await.expect("quiet tick");
    assert_eq!(w.sim.inspect().connections(Service::Amp), 1);

    // The next events answer breaks off mid-body: that connection is gone,
    // the retry opens a new one, and the detections still arrive.
    let events = w.publish(&c, 32, 10);
    w.sim.faults().add(
        Fault::times(Service::Amp, "/v1/events", 1, FaultKind::DropMidBody)
            .for_tenant(&c.amp_client_id),
    );
    w.tick(&c).await.expect("tick");
    assert_eq!(w.sim.inspect().connections(Service::Amp), 2);
    let (xdr, snow) = w.groups_upstream(&c);
    let groups: std::collections::BTreeSet<String> = wanted_groups(&events).into_keys().collect();
    assert_eq!(xdr, groups);
    assert_eq!(snow, groups);
}
