//! Issue 18, tenant leases on a real Redis (`redis-server` on a loopback port, one per
//! test): one replica at a time holds a tenant, a lease expires unless renewed, and a
//! replica that lost its lease cannot finish writing as the tenant's owner — every kind
//! of write it attempts under the old lease is refused by the store and changes nothing.

use std::sync::Arc;
use std::time::Duration;

use mssp_bridge::replicas::{Leases, ReplicaSettings};
use mssp_e2e::RedisServer;
use mssp_runtime::kv::{Fence, KvBackend, KvError, LeaseBackend, Namespace, RedisKv, RedisOptions};

fn redis() -> (RedisServer, Arc<RedisKv>) {
    let server = RedisServer::start();
    let kv = RedisKv::connect(&RedisOptions::url(server.url())).unwrap();
    (server, Arc::new(kv))
}

fn fenced(tenant: &str, fence: &Fence) -> Namespace {
    Namespace {
        fence: Some(fence.clone()),
        ..Namespace::new(tenant, "default")
    }
}

/// Given replica A holding acme's lease, B cannot take it; once A stops renewing it
/// expires, B takes it with a greater token, and from then on every kind of write A
/// makes under its old lease — set, delete, swap, increment — is refused with
/// `Fenced` and changes nothing, while B's writes and unfenced ones go through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_lost_its_lease_cannot_write_as_the_tenants_owner() {
    let (_server, kv) = redis();
    let ttl = Duration::from_millis(400);
    let a = kv
        .acquire("acme", "replica-a", ttl)
        .unwrap()
        .expect("free lease");
    assert_eq!(kv.acquire("acme", "replica-b", ttl).unwrap(), None);
    assert_eq!(
        kv.acquire("acme", "replica-a", ttl).unwrap(),
        None,
        "held already"
    );
    assert_eq!(kv.holder("acme").unwrap(), Some(a.clone()));
    let under_a = fenced("acme", &a);
    kv.set(&under_a, "cursor", b"1000").unwrap();
    assert!(
        kv.swap(&under_a, "incident:amp-1", None, b"xdr_creating")
            .unwrap()
    );
    kv.increment(&under_a, "events_seen", 5).unwrap();
    assert!(kv.renew("acme", &a, ttl).unwrap());

    // A stalls (a pause, a cut link) past its lease; B takes over.
    tokio::time::sleep(ttl + Duration::from_millis(200)).await;
    assert!(
        !kv.renew("acme", &a, ttl).unwrap(),
        "an expired lease is not renewed"
    );
    let b = kv
        .acquire("acme", "replica-b", ttl)
        .unwrap()
        .expect("expired lease");
    assert!(b.token > a.token, "tokens only grow: {a:?} then {b:?}");

    let plain = Namespace::new("acme", "default");
    let (_, swap_version) = kv.get(&plain, "incident:amp-1").unwrap().unwrap();
    let refused: Vec<(&str, Result<(), KvError>)> = vec![
        ("set", kv.set(&under_a, "cursor", b"2000")),
        ("delete", kv.delete(&under_a, "cursor")),
        (
            "swap",
            kv.swap(&under_a, "incident:amp-1", Some(swap_version), b"open")
                .map(drop),
        ),
        (
            "swap absent",
            kv.swap(&under_a, "incident:amp-2", None, b"new").map(drop),
        ),
        (
            "increment",
            kv.increment(&under_a, "events_seen", 1).map(drop),
        ),
    ];
    for (what, result) in refused {
        assert!(matches!(result, Err(KvError::Fenced)), "{what}: {result:?}");
    }
    assert_eq!(kv.get(&plain, "cursor").unwrap().unwrap().0, b"1000");
    assert_eq!(
        kv.get(&plain, "incident:amp-1").unwrap().unwrap().0,
        b"xdr_creating"
    );
    assert_eq!(kv.get(&plain, "incident:amp-2").unwrap(), None);
    assert_eq!(kv.increment(&plain, "events_seen", 0).unwrap(), 5);
    // Reads are not fenced; the new owner and unfenced writers (callbacks) write.
    assert!(kv.get(&under_a, "cursor").unwrap().is_some());
    kv.set(&fenced("acme", &b), "cursor", b"3000").unwrap();
    kv.set(&plain, "callback-note", b"seen").unwrap();
    // A lease of another tenant fences nothing here.
    let other = kv
        .acquire("globex", "replica-a", ttl)
        .unwrap()
        .expect("free");
    assert!(matches!(
        kv.set(&fenced("acme", &other), "cursor", b"x"),
        Err(KvError::Fenced)
    ));
    assert!(!kv.release("acme", &a).unwrap(), "not A's any more");
    assert!(kv.release("acme", &b).unwrap());
    assert_eq!(kv.holder("acme").unwrap(), None);
}

/// The live replicas are those that announced themselves within their time to live, by
/// the store's clock; one that leaves is gone at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_replicas_are_those_whose_heartbeat_has_not_expired() {
    let (_server, kv) = redis();
    let long = Duration::from_secs(30);
    kv.heartbeat("replica-a", long).unwrap();
    kv.heartbeat("replica-b", Duration::from_millis(300))
        .unwrap();
    assert_eq!(
        kv.heartbeat("replica-c", long).unwrap(),
        ["replica-a", "replica-b", "replica-c"]
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        kv.heartbeat("replica-c", long).unwrap(),
        ["replica-a", "replica-c"]
    );
    kv.leave("replica-a").unwrap();
    assert_eq!(kv.heartbeat("replica-c", long).unwrap(), ["replica-c"]);
}

/// Given 30 customers and three replicas running lease rounds on one Redis, every
/// customer is held by exactly one replica, spread evenly; when one replica stops (its
/// leases expire), the other two take its customers and only those; when it comes
/// back, it gets its share again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_split_the_customers_and_take_over_a_dead_ones() {
    let (_server, kv) = redis();
    let settings = ReplicaSettings {
        lease_ttl_secs: 1.0,
    };
    let replica = || {
        Leases::for_store(kv.clone() as Arc<dyn KvBackend>, &settings).expect("Redis has leases")
    };
    let tenants: Vec<String> = (0..30).map(|i| format!("customer-{i:02}")).collect();
    let idle = |_: &str| false;
    let (a, b, c) = (replica(), replica(), replica());
    // Two rounds each: the first announces every replica, the second settles.
    for _ in 0..2 {
        for r in [&a, &b, &c] {
            r.round(&tenants, &idle).unwrap();
        }
    }
    let held = |rs: &[&Arc<Leases>]| rs.iter().map(|r| r.held()).collect::<Vec<_>>();
    let before = held(&[&a, &b, &c]);
    let mut all: Vec<String> = before.concat();
    all.sort();
    assert_eq!(all, tenants, "each customer held once: {before:?}");
    // Rendezvous hashing spreads 30 customers about evenly (random replica names: the
    // exact split varies); each replica holds a share.
    assert!(before.iter().all(|h| !h.is_empty()), "{before:?}");
    for t in &tenants {
        let holder = kv.holder(t).unwrap().expect("held");
        let expected = [&a, &b, &c]
            .into_iter()
            .find(|r| r.held().contains(t))
            .map(|r| r.replica().to_string());
        assert_eq!(Some(holder.holder.to_string()), expected, "{t}");
        assert_eq!(
            [&a, &b, &c].iter().filter(|r| r.fence(t).is_some()).count(),
            1
        );
    }

    // b dies: no more rounds. After its leases and heartbeat expire, a and c take its
    // customers and keep their own.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    for _ in 0..2 {
        for r in [&a, &c] {
            r.round(&tenants, &idle).unwrap();
        }
    }
    let after = held(&[&a, &c]);
    let mut all: Vec<String> = after.concat();
    all.sort();
    assert_eq!(all, tenants, "b's customers were taken over: {after:?}");
    assert!(
        after[0]
            .iter()
            .all(|t| before[0].contains(t) || before[1].contains(t))
    );
    assert!(
        before[0].iter().all(|t| after[0].contains(t)),
        "a kept its own"
    );
    assert!(
        before[2].iter().all(|t| after[1].contains(t)),
        "c kept its own"
    );

    // A new replica joins: it takes back a share, handed over between ticks.
    let d = replica();
    for _ in 0..3 {
        for r in [&a, &c, &d] {
            r.round(&tenants, &idle).unwrap();
        }
    }
    let joined = held(&[&a, &c, &d]);
    let mut all: Vec<String> = joined.concat();
    all.sort();
    assert_eq!(all, tenants, "{joined:?}");
    assert!(
        !joined[2].is_empty(),
        "the new replica holds a share: {joined:?}"
    );
    // A replica mid-tick keeps its tenant until the tick is over.
    let e = replica();
    let busy = |_: &str| true;
    let a_before = a.held();
    a.round(&tenants, &busy).unwrap();
    e.round(&tenants, &idle).unwrap();
    a.round(&tenants, &busy).unwrap();
    assert_eq!(a.held(), a_before, "nothing handed back mid-tick");
}

/// The registry image is written only over the version it was read at: of two
/// operators (or replicas) editing at once, the second write is refused, nothing of it
/// stored, and it can be redone on the new image.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_edit_is_stored_only_over_the_version_it_was_made_on() {
    use mssp_runtime::kv::RegistryBackend;
    let (_server, kv) = redis();
    assert_eq!(kv.load().unwrap(), None);
    assert_eq!(kv.version().unwrap(), 0);
    let v1 = kv
        .store(b"image with acme", 0)
        .unwrap()
        .expect("first write");
    // A second editor that also read "nothing" loses.
    assert_eq!(kv.store(b"image with globex", 0).unwrap(), None);
    assert_eq!(kv.load().unwrap(), Some((b"image with acme".to_vec(), v1)));
    let v2 = kv
        .store(b"image with acme and globex", v1)
        .unwrap()
        .expect("redone");
    assert!(v2 > v1);
    assert_eq!(kv.store(b"stale", v1).unwrap(), None);
    assert_eq!(kv.version().unwrap(), v2);
    assert_eq!(
        kv.load().unwrap().map(|(i, _)| i),
        Some(b"image with acme and globex".to_vec())
    );
}

/// The tenant registry on Redis: what one operator adds, every replica and every other
/// operator's command reads; of two operators editing at once, the second edit is
/// refused whole (nothing of it stored) instead of silently undoing the first; secrets
/// stay sealed in the stored image.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_registry_on_redis_takes_whole_edits_over_the_version_they_read() {
    use mssp_bridge::registry::Registry;
    use mssp_bridge::secrets::{MasterKey, SecretString};
    use mssp_bridge::tenants::TenantSettings;
    let (_server, kv) = redis();
    let kv: Arc<dyn KvBackend> = kv;
    let key = MasterKey::parse(&MasterKey::generate(), "test").unwrap();
    let put = |r: &Registry, id: &str| {
        let settings = TenantSettings {
            config: [
                ("customer_name", id),
                ("amp_base_url", "https://api.amp.cisco.com"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
            ..TenantSettings::default()
        };
        let secrets = [(
            "amp_api_key".to_string(),
            SecretString::new(format!("amp-key-of-{id}-0123456789")),
        )]
        .into_iter()
        .collect();
        r.put(&key, id, settings, secrets, false).unwrap();
    };
    let mut first = Registry::shared(&kv)
        .unwrap()
        .expect("Redis keeps a registry");
    put(&first, "acme");
    first.publish().unwrap();

    let mut second = Registry::shared(&kv).unwrap().unwrap();
    let mut late = Registry::shared(&kv).unwrap().unwrap();
    assert_eq!(
        second.list().unwrap().len(),
        1,
        "acme is seen by the next command"
    );
    put(&second, "globex");
    second.publish().unwrap();
    put(&late, "initech");
    let refused = late.publish().unwrap_err().to_string();
    assert!(refused.contains("run it again"), "{refused}");

    let now = Registry::shared(&kv).unwrap().unwrap();
    let ids: Vec<String> = now.list().unwrap().into_iter().map(|(id, _)| id).collect();
    assert_eq!(ids, ["acme", "globex"]);
    let resolved = now.resolve(&key, "globex").unwrap();
    assert_eq!(
        resolved.config["amp_api_key"].expose(),
        "amp-key-of-globex-0123456789"
    );
    let (image, _) = kv.registry().unwrap().load().unwrap().unwrap();
    assert!(
        !image.windows(12).any(|w| w == b"amp-key-of-g"),
        "a secret in clear in the stored registry"
    );
}
