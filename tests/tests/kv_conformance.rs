//! One key-value conformance suite, run against every backend: the same test
//! bodies for [`SqliteKv`] (a file in a temp folder) and [`RedisKv`] (a real
//! `redis-server` on a loopback port, one per test). Each body is called from
//! inside a multi-threaded tokio runtime, as the runtime's host functions call
//! the backend.
//!
//! The whole bridge on Redis (one tick, incidents once) is in pipeline.rs;
//! Redis crashing mid-run is at the end of this file.

use std::sync::Arc;

use mssp_e2e::RedisServer;
use mssp_runtime::SecretString;
use mssp_runtime::kv::{
    KvBackend, KvError, LIST_PAGE, MAX_VALUE_BYTES, Namespace, RedisKv, RedisOptions, SqliteKv,
};

/// A backend under test and what keeps it alive.
struct Backend {
    kv: Arc<dyn KvBackend>,
    _server: Option<RedisServer>,
    _dir: tempfile::TempDir,
}

fn sqlite() -> Backend {
    let dir = tempfile::tempdir().unwrap();
    let kv = SqliteKv::open(&dir.path().join("kv.db")).unwrap();
    Backend {
        kv: Arc::new(kv),
        _server: None,
        _dir: dir,
    }
}

fn redis() -> Backend {
    let server = RedisServer::start();
    let kv = RedisKv::connect(&RedisOptions::url(server.url())).unwrap();
    Backend {
        kv: Arc::new(kv),
        _server: Some(server),
        _dir: tempfile::tempdir().unwrap(),
    }
}

fn ns(tenant: &str, bucket: &str) -> Namespace {
    Namespace::new(tenant, bucket)
}

fn value(kv: &dyn KvBackend, n: &Namespace, key: &str) -> Option<Vec<u8>> {
    kv.get(n, key).unwrap().map(|(v, _)| v)
}

fn version(kv: &dyn KvBackend, n: &Namespace, key: &str) -> u64 {
    kv.get(n, key).unwrap().expect("the key exists").1
}

/// Namespaces whose names, joined naively with `:` or `/`, `{`/`}` or a length,
/// would collide with one another.
fn adversarial_namespaces() -> Vec<Namespace> {
    vec![
        ns("acme", "default"),
        ns("acme:default", ""),
        ns("acme", "default:x"),
        ns("acme:", "default"),
        ns("acme", ":default"),
        ns("4:acme", "default"),
        ns("acme}", "default"),
        ns("acme", "7:default"),
        ns("acme}:7:default", ""),
        ns("acme/default", "x"),
        ns("acme", "default:values"),
        ns("acme:default:values", "k"),
        ns("ACME", "default"),
        ns("acmé", "default"),
        ns("", "default"),
    ]
}

/// Every (namespace, key) holds its own value; no read, listing, tenant listing
/// or drop of one reaches another, whatever separators the names hold.
fn isolation_between_tenants_and_buckets_with_adversarial_names(kv: &dyn KvBackend) {
    let spaces = adversarial_namespaces();
    let keys = [
        "cursor",
        "default:cursor",
        ":values",
        "k:versions",
        "{x}",
        "",
    ];
    for (i, n) in spaces.iter().enumerate() {
        for key in keys {
            kv.set(n, key, format!("{i}/{key}").as_bytes()).unwrap();
        }
    }
    for (i, n) in spaces.iter().enumerate() {
        for key in keys {
            assert_eq!(
                value(kv, n, key),
                Some(format!("{i}/{key}").into_bytes()),
                "{n:?} {key:?}"
            );
        }
        let mut listed = kv.list_keys(n, None, 100).unwrap();
        listed.sort();
        let mut expected: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
        expected.sort();
        assert_eq!(listed, expected, "{n:?} lists only its own keys");
    }
    for tenant in ["acme", "acme:", "acme}", "4:acme", ""] {
        let buckets: Vec<String> = spaces
            .iter()
            .filter(|n| &*n.tenant == tenant)
            .map(|n| n.bucket.to_string())
            .collect();
        let listed = kv.tenant_keys(tenant).unwrap();
        assert_eq!(listed.len(), buckets.len() * keys.len(), "{tenant:?}");
        assert!(
            listed.iter().all(|(b, _)| buckets.contains(b)),
            "{tenant:?}: {listed:?}"
        );
    }
    // Dropping "acme" leaves every look-alike tenant whole.
    kv.drop_tenant("acme").unwrap();
    for (i, n) in spaces.iter().enumerate() {
        let expected = (&*n.tenant != "acme").then(|| format!("{i}/cursor").into_bytes());
        assert_eq!(value(kv, n, "cursor"), expected, "{n:?}");
    }
}

/// Versions change on every write, even one of identical bytes, and never come
/// back: set A, set B, set A again, delete and re-create, drop the tenant and
/// re-create — a swap on any earlier version fails.
fn compare_and_swap_has_no_aba(kv: &dyn KvBackend) {
    let n = ns("acme", "default");
    kv.set(&n, "lease", b"A").unwrap();
    let first = version(kv, &n, "lease");
    kv.set(&n, "lease", b"B").unwrap();
    kv.set(&n, "lease", b"A").unwrap();
    assert!(!kv.swap(&n, "lease", Some(first), b"mine").unwrap());
    assert_eq!(value(kv, &n, "lease"), Some(b"A".to_vec()));

    let mut seen = vec![first, version(kv, &n, "lease")];
    kv.set(&n, "lease", b"A").unwrap(); // identical bytes, new version
    seen.push(version(kv, &n, "lease"));
    kv.delete(&n, "lease").unwrap();
    kv.set(&n, "lease", b"A").unwrap(); // re-created
    seen.push(version(kv, &n, "lease"));
    kv.drop_tenant("acme").unwrap();
    kv.set(&n, "lease", b"A").unwrap(); // the tenant re-created
    let now = version(kv, &n, "lease");
    for old in &seen {
        assert_ne!(*old, now, "a version came back: {seen:?} then {now}");
        assert!(!kv.swap(&n, "lease", Some(*old), b"stale").unwrap());
    }
    let mut distinct = seen.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(distinct.len(), seen.len(), "{seen:?}");

    assert!(kv.swap(&n, "lease", Some(now), b"mine").unwrap());
    assert_eq!(value(kv, &n, "lease"), Some(b"mine".to_vec()));
    assert!(
        !kv.swap(&n, "lease", Some(now), b"again").unwrap(),
        "a swap moves the version on"
    );
}

/// `swap` expecting "absent" writes only where there is nothing, exactly once.
fn swap_expecting_absent(kv: &dyn KvBackend) {
    let n = ns("acme", "default");
    assert!(!kv.swap(&n, "lock", Some(1), b"x").unwrap());
    assert_eq!(value(kv, &n, "lock"), None);
    assert!(kv.swap(&n, "lock", None, b"first").unwrap());
    assert!(!kv.swap(&n, "lock", None, b"second").unwrap());
    assert_eq!(value(kv, &n, "lock"), Some(b"first".to_vec()));
    // Absent in this bucket and tenant, whatever the others hold.
    assert!(kv.swap(&ns("acme", "other"), "lock", None, b"o").unwrap());
    assert!(
        kv.swap(&ns("globex", "default"), "lock", None, b"g")
            .unwrap()
    );
    kv.delete(&n, "lock").unwrap();
    assert!(kv.swap(&n, "lock", None, b"after delete").unwrap());
    assert_eq!(kv.list_keys(&n, None, 10).unwrap(), vec!["lock"]);
}

/// Increments from many tasks at once add up exactly.
async fn concurrent_increments_sum_exactly(kv: Arc<dyn KvBackend>) {
    let n = ns("acme", "default");
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let (kv, n) = (kv.clone(), n.clone());
            tokio::spawn(async move {
                for _ in 0..25 {
                    kv.increment(&n, "events_seen", 1).unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(kv.increment(&n, "events_seen", 0).unwrap(), 400);
    assert_eq!(
        value(&*kv, &n, "events_seen"),
        Some(400i64.to_le_bytes().to_vec())
    );
}

/// `increment` is exact little-endian i64 arithmetic over the whole range,
/// refuses what is not 8 bytes or would overflow, and then changes nothing.
fn increment_is_exact_i64(kv: &dyn KvBackend) {
    let n = ns("acme", "default");
    assert_eq!(kv.increment(&n, "fresh", -5).unwrap(), -5);
    assert_eq!(kv.increment(&n, "fresh", 5).unwrap(), 0);
    let cases: [(i64, i64); 8] = [
        (0xffff_ffff, 1),
        (1 << 32, -1),
        (-1, 1),
        (0, -1),
        (i64::MAX - 1, 1),
        (i64::MIN + 1, -1),
        ((1 << 53) + 1, (1 << 53) + 1),
        (-(1 << 40) - 7, i64::MAX - (1 << 41)),
    ];
    for (start, delta) in cases {
        kv.set(&n, "c", &start.to_le_bytes()).unwrap();
        let sum = start + delta;
        assert_eq!(
            kv.increment(&n, "c", delta).unwrap(),
            sum,
            "{start} + {delta}"
        );
        assert_eq!(value(kv, &n, "c"), Some(sum.to_le_bytes().to_vec()));
    }
    for (start, delta) in [(i64::MAX, 1), (i64::MIN, -1), (1, i64::MAX)] {
        kv.set(&n, "c", &start.to_le_bytes()).unwrap();
        let before = version(kv, &n, "c");
        let err = kv.increment(&n, "c", delta).unwrap_err();
        assert!(
            matches!(err, KvError::Invalid(ref m) if m.contains("overflow")),
            "{err}"
        );
        assert_eq!(value(kv, &n, "c"), Some(start.to_le_bytes().to_vec()));
        assert_eq!(
            version(kv, &n, "c"),
            before,
            "a refused increment writes nothing"
        );
    }
    for bytes in [b"1234".as_slice(), b"", b"123456789"] {
        kv.set(&n, "text", bytes).unwrap();
        let err = kv.increment(&n, "text", 1).unwrap_err();
        assert!(
            matches!(err, KvError::Invalid(ref m) if m.contains("64-bit")),
            "{err}"
        );
        assert_eq!(value(kv, &n, "text"), Some(bytes.to_vec()));
    }
}

/// Keys come in byte order (UTF-8 bytes, not characters or locale), strictly
/// after the cursor; paging by `LIST_PAGE` visits every key once.
fn list_keys_in_byte_order_paged_by_cursor(kv: &dyn KvBackend) {
    let n = ns("acme", "default");
    let mut expected: Vec<String> = [
        "",
        "a",
        "a ",
        "a\u{0}",
        "aa",
        "a~",
        "A",
        "Z",
        "z",
        "~",
        "é",
        "e\u{301}",
        "中",
        "\u{10FFFF}",
        "incident:amp-1",
        "incident:amp-1:audit",
        "incident;",
        "incident9",
    ]
    .iter()
    .map(|k| k.to_string())
    .collect();
    expected.extend((0..LIST_PAGE + 234).map(|i| format!("incident:amp-{i}")));
    for key in &expected {
        kv.set(&n, key, b"v").unwrap();
    }
    kv.set(&ns("acme", "defaulu"), "a", b"neighbour").unwrap();
    kv.set(&ns("acmf", "default"), "a", b"neighbour").unwrap();
    expected.sort();
    expected.dedup();

    let mut all = Vec::new();
    let mut after: Option<String> = None;
    let mut pages = 0;
    loop {
        let page = kv.list_keys(&n, after.as_deref(), LIST_PAGE).unwrap();
        pages += 1;
        let done = page.len() < LIST_PAGE;
        after = page.last().cloned();
        all.extend(page);
        if done {
            break;
        }
    }
    assert_eq!(pages, 2);
    assert_eq!(all.len(), expected.len());
    assert_eq!(all, expected, "every key once, in byte order");

    // A cursor that is itself no key, and one past the end.
    assert_eq!(
        kv.list_keys(&n, Some("a\u{0}"), 3).unwrap(),
        vec!["a ", "aa", "a~"]
    );
    // '0' (0x30) sorts before ':' (0x3a).
    assert_eq!(
        kv.list_keys(&n, Some("incident:amp-1"), 2).unwrap(),
        vec!["incident:amp-10", "incident:amp-100"]
    );
    assert_eq!(
        kv.list_keys(&n, Some("incident:amp-199"), 2).unwrap(),
        vec!["incident:amp-1:audit", "incident:amp-2"]
    );
    assert_eq!(
        kv.list_keys(&n, Some("\u{10FFFF}"), 10).unwrap(),
        Vec::<String>::new()
    );
    assert_eq!(kv.list_keys(&n, None, 2).unwrap(), vec!["", "A"]);
    assert_eq!(kv.list_keys(&n, Some(""), 1).unwrap(), vec!["A"]);
}

/// Deleting removes value, version and listing entry; deleting what is not
/// there is no error; other buckets and tenants keep theirs.
fn delete_semantics(kv: &dyn KvBackend) {
    let n = ns("acme", "default");
    kv.delete(&n, "never-there").unwrap();
    for key in ["a", "b", "c"] {
        kv.set(&n, key, b"v").unwrap();
        kv.set(&ns("acme", "other"), key, b"o").unwrap();
        kv.set(&ns("globex", "default"), key, b"g").unwrap();
    }
    kv.delete(&n, "b").unwrap();
    kv.delete(&n, "b").unwrap();
    assert_eq!(kv.get(&n, "b").unwrap(), None);
    assert_eq!(kv.list_keys(&n, None, 10).unwrap(), vec!["a", "c"]);
    assert_eq!(kv.list_keys(&n, Some("a"), 10).unwrap(), vec!["c"]);
    assert_eq!(value(kv, &ns("acme", "other"), "b"), Some(b"o".to_vec()));
    assert_eq!(
        value(kv, &ns("globex", "default"), "b"),
        Some(b"g".to_vec())
    );
    assert!(kv.swap(&n, "b", None, b"back").unwrap());
}

/// `drop_tenant` removes every key of every bucket of one tenant, nothing of
/// another; `tenant_keys` lists by bucket, then key.
fn drop_tenant_and_tenant_keys(kv: &dyn KvBackend) {
    for (tenant, bucket, key) in [
        ("acme", "default", "z"),
        ("acme", "default", "a"),
        ("acme", "archive", "m"),
        ("acme-2", "default", "a"),
        ("acm", "default", "a"),
    ] {
        kv.set(&ns(tenant, bucket), key, b"v").unwrap();
    }
    let pairs = |t: &str| {
        kv.tenant_keys(t)
            .unwrap()
            .into_iter()
            .map(|(b, k)| format!("{b}/{k}"))
            .collect::<Vec<_>>()
    };
    assert_eq!(pairs("acme"), vec!["archive/m", "default/a", "default/z"]);
    kv.drop_tenant("acme").unwrap();
    assert!(pairs("acme").is_empty());
    assert_eq!(
        kv.list_keys(&ns("acme", "default"), None, 10).unwrap(),
        Vec::<String>::new()
    );
    assert_eq!(pairs("acme-2"), vec!["default/a"]);
    assert_eq!(pairs("acm"), vec!["default/a"]);
    kv.drop_tenant("nobody").unwrap();
    // The tenant starts afresh.
    kv.set(&ns("acme", "default"), "a", b"new").unwrap();
    assert_eq!(pairs("acme"), vec!["default/a"]);
}

/// Values up to `MAX_VALUE_BYTES`, any bytes, round-trip unchanged through
/// `set` and `swap`.
fn large_and_binary_values_round_trip(kv: &dyn KvBackend) {
    let n = ns("acme", "default");
    let big: Vec<u8> = (0..MAX_VALUE_BYTES).map(|i| (i * 31 % 251) as u8).collect();
    kv.set(&n, "big", &big).unwrap();
    assert_eq!(value(kv, &n, "big").as_deref(), Some(big.as_slice()));
    let seen = version(kv, &n, "big");
    let mut bigger = big.clone();
    bigger.reverse();
    assert!(kv.swap(&n, "big", Some(seen), &bigger).unwrap());
    assert_eq!(value(kv, &n, "big").as_deref(), Some(bigger.as_slice()));
    let binary: Vec<u8> = (0..=255u8).collect();
    kv.set(&n, "bytes", &binary).unwrap();
    assert_eq!(value(kv, &n, "bytes"), Some(binary));
    kv.set(&n, "empty", b"").unwrap();
    assert_eq!(value(kv, &n, "empty"), Some(Vec::new()));
}

/// Instantiates every property once per backend: `sqlite::<name>` and
/// `redis::<name>`.
macro_rules! conformance {
    ($backend:ident: sync [$($sync:ident),*] async [$($async:ident),*]) => {
        mod $backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $sync() {
                    let b = super::$backend();
                    super::$sync(&*b.kv);
                }
            )*
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $async() {
                    let b = super::$backend();
                    super::$async(b.kv.clone()).await;
                }
            )*
        }
    };
}

macro_rules! for_each_backend {
    ($($backend:ident),*) => {$(
        conformance!($backend:
            sync [
                isolation_between_tenants_and_buckets_with_adversarial_names,
                compare_and_swap_has_no_aba,
                swap_expecting_absent,
                increment_is_exact_i64,
                list_keys_in_byte_order_paged_by_cursor,
                delete_semantics,
                drop_tenant_and_tenant_keys,
                large_and_binary_values_round_trip
            ]
            async [concurrent_increments_sum_exactly]
        );
    )*};
}

for_each_backend!(sqlite, redis);

/// Redis killed (SIGKILL) mid-run and started again on its append-only file
/// (`appendfsync always`): every write the backend acknowledged is there, and
/// the same backend, never rebuilt, works again by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_mid_run_loses_nothing_acknowledged_and_the_backend_reconnects() {
    let mut server = RedisServer::start_durable();
    let kv = RedisKv::connect(&RedisOptions::url(server.url())).unwrap();
    let n = ns("acme", "default");
    let mut written = Vec::new();
    for i in 0..200 {
        let key = format!("incident:amp-{i}");
        kv.set(&n, &key, format!("record {i}").as_bytes()).unwrap();
        written.push(key);
    }
    for _ in 0..50 {
        kv.increment(&n, "events_seen", 3).unwrap();
    }
    assert!(kv.swap(&n, "lease", None, b"replica-1").unwrap());
    let lease_version = version(&kv, &n, "lease");

    server.crash_and_restart();

    // Reads and idempotent writes go through on the first call after the crash.
    for (i, key) in written.iter().enumerate() {
        assert_eq!(
            value(&kv, &n, key),
            Some(format!("record {i}").into_bytes()),
            "{key}"
        );
    }
    assert_eq!(kv.increment(&n, "events_seen", 0).unwrap(), 150);
    assert_eq!(version(&kv, &n, "lease"), lease_version);
    assert!(
        kv.swap(&n, "lease", Some(lease_version), b"replica-1 renewed")
            .unwrap()
    );
    assert_eq!(kv.list_keys(&n, None, 1000).unwrap().len(), 202);
}

/// A password works in the URL and given apart (`[store] password_file`); none or
/// a wrong one is refused when connecting, with an error that never shows it.
/// Called from a plain thread: the backend needs no runtime of its caller.
#[test]
fn redis_with_a_password_takes_it_from_the_url_or_apart_and_refuses_a_wrong_one() {
    let server = RedisServer::start_with_password("s3cret-pw");
    let in_url = server.url().replace("redis://", "redis://:s3cret-pw@");
    let apart = RedisOptions {
        password: Some(SecretString::new("s3cret-pw")),
        ..RedisOptions::url(server.url())
    };
    for options in [RedisOptions::url(in_url), apart] {
        let kv = RedisKv::connect(&options).unwrap();
        let n = ns("acme", "default");
        kv.set(&n, "k", b"v").unwrap();
        assert_eq!(value(&kv, &n, "k"), Some(b"v".to_vec()));
    }
    let wrong_in_url = server.url().replace("redis://", "redis://:wrong-pw@");
    let wrong_apart = RedisOptions {
        password: Some(SecretString::new("wrong-pw")),
        ..RedisOptions::url(server.url())
    };
    for options in [
        RedisOptions::url(server.url()),
        RedisOptions::url(wrong_in_url),
        wrong_apart,
    ] {
        let Err(e) = RedisKv::connect(&options) else {
            panic!("{options:?} connected");
        };
        let e = format!("{e:#}");
        assert!(e.contains("does not answer"), "{e}");
        assert!(!e.contains("wrong-pw") && !e.contains("s3cret-pw"), "{e}");
        assert!(!format!("{options:?}").contains("wrong-pw"));
    }
}

/// `rediss://` to a TLS-only server: trusted through the configured CA
/// (`[store] ca_file`), refused with the system's roots.
#[test]
fn redis_over_tls_trusts_the_configured_ca_only() {
    let server = RedisServer::start_tls();
    let kv = RedisKv::connect(&RedisOptions {
        ca_pem: Some(server.ca_pem()),
        ..RedisOptions::url(server.url())
    })
    .unwrap();
    let n = ns("acme", "default");
    assert!(kv.swap(&n, "lease", None, b"replica-1").unwrap());
    assert_eq!(value(&kv, &n, "lease"), Some(b"replica-1".to_vec()));
    let Err(e) = RedisKv::connect(&RedisOptions::url(server.url())) else {
        panic!("a certificate of an unknown CA was accepted");
    };
    assert!(format!("{e:#}").contains("does not answer"), "{e:#}");
}
