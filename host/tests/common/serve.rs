//! The real `mssp-bridge serve` against the in-process simulators: a folder
//! with a master key and settings, customers registered with `tenant add`,
//! the persisted records read back from the database. Shared by the crash,
//! secrets and soak suites.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use mssp_runtime::kv::{KvBackend, Namespace};
use mssp_sim::{CallbackSpec, ComputerSpec, OrgSpec, Sim};
use serde_json::Value;

use super::{component, wasm};

pub struct Customer {
    pub id: String,
    pub containment: &'static str,
    pub amp_client: String,
    pub xdr_client: String,
    pub snow_user: String,
    pub home_group: String,
    pub config: Vec<(&'static str, String)>,
    /// The secrets configured in the bridge.
    pub secrets: Vec<(&'static str, String)>,
    /// The credentials the simulators accept (differ for `Spec::wrong` keys).
    pub upstream: Vec<(&'static str, String)>,
}

/// How a customer is set up.
#[derive(Clone)]
pub struct Spec {
    pub id: String,
    pub containment: &'static str,
    /// ServiceNow calls back (else only the reconcile poll sees closes).
    pub callback: bool,
    /// Secrets configured with a value the upstream does not accept.
    pub wrong: &'static [&'static str],
}

/// The three customers of the crash and secrets suites: isolate with a
/// signed callback, move with the reconcile poll only, no containment with a
/// signed callback.
pub fn standard_customers() -> Vec<Spec> {
    [
        ("acme", "isolate", true),
        ("globex", "move", false),
        ("initech", "none", true),
    ]
    .into_iter()
    .map(|(id, containment, callback)| Spec {
        id: id.to_string(),
        containment,
        callback,
        wrong: &[],
    })
    .collect()
}

/// `mssp-bridge tenant add [--replace]`, the customer's configuration plus
/// `extra` settings.
pub fn register(bridge: &Bridge, c: &Customer, extra: &[(&str, &str)], replace: bool) {
    let mut add = bridge.command();
    add.args(["tenant", "add", &c.id]);
    if replace {
        add.arg("--replace");
    }
    for (k, v) in &c.config {
        add.args(["--set", &format!("{k}={v}")]);
    }
    for (k, v) in extra {
        add.args(["--set", &format!("{k}={v}")]);
    }
    for (k, v) in &c.secrets {
        let var = format!("SECRET_{}", k.to_uppercase());
        add.env(&var, v)
            .args(["--secret-env", &format!("{k}={var}")]);
    }
    let out = add.output().unwrap();
    assert!(
        out.status.success(),
        "tenant add {}: {}",
        c.id,
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn cache_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(|p| p.join("target").join("mssp-test-cache"))
        .unwrap_or_else(|| PathBuf::from("mssp-test-cache"))
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The most verbose logging of the bridge, its host and wasmtime's runtime.
/// Only the compiler's internals stay at `info`: at `trace` Cranelift logs
/// every pass of every function, which turns the first (uncached) compile of
/// the component into minutes and says nothing about the bridge.
pub const TRACE: &str = "trace,cranelift_codegen=info,cranelift_frontend=info,cranelift_entity=info,regalloc2=info,wasmtime_cranelift=info";

/// The `[scheduler]` of the crash and secrets suites: a tick every second.
const EVERY_SECOND: &str = "interval_secs = 1\njitter_secs = 0\n";

pub struct Bridge {
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub master_key: String,
    /// `RUST_LOG` of every command.
    pub log: &'static str,
}

impl Bridge {
    /// A fresh folder with a master key and a settings file: loopback on a
    /// free port, the built component, ticks every second without jitter.
    pub fn new(log: &'static str) -> Bridge {
        Bridge::with_scheduler(log, EVERY_SECOND)
    }

    /// As [`Bridge::new`], with `scheduler` as the `[scheduler]` section.
    pub fn with_scheduler(log: &'static str, scheduler: &str) -> Bridge {
        Bridge::running_a_copy(log, &component(), scheduler)
    }

    /// As [`Bridge::new`], running the crash suites' build of the bridge (the
    /// one that reads the `debug_crash_after` hook).
    pub fn with_crash_hooks(log: &'static str) -> Bridge {
        Bridge::running_a_copy(log, &wasm("mssp_guest_crash_hooks"), EVERY_SECOND)
    }

    /// A bridge running its own copy of `component` (one build for the whole
    /// run, even if it is rebuilt meanwhile).
    fn running_a_copy(log: &'static str, component: &Path, scheduler: &str) -> Bridge {
        let bridge = Bridge::with_settings(log, component, "");
        let copy = bridge.dir.path().join("mssp_guest.wasm");
        std::fs::copy(component, &copy).unwrap();
        bridge.write_settings(&copy, &format!("[scheduler]\n{scheduler}"));
        bridge
    }

    /// As [`Bridge::new`], with `store` (a `[store]` section) in its settings.
    pub fn on_store(log: &'static str, store: &str) -> Bridge {
        let bridge = Bridge::new(log);
        let copy = bridge.dir.path().join("mssp_guest.wasm");
        bridge.write_settings(&copy, &format!("[scheduler]\n{EVERY_SECOND}{store}"));
        bridge
    }

    /// A fresh folder with a master key and a settings file naming
    /// `component`, plus `settings` (TOML appended after the top-level keys).
    pub fn with_settings(log: &'static str, component: &Path, settings: &str) -> Bridge {
        let keygen = Command::new(env!("CARGO_BIN_EXE_mssp-bridge"))
            .arg("keygen")
            .output()
            .unwrap();
        assert!(keygen.status.success());
        let bridge = Bridge {
            master_key: String::from_utf8(keygen.stdout).unwrap().trim().to_string(),
            port: free_port(),
            dir: tempfile::tempdir().unwrap(),
            log,
        };
        bridge.write_settings(component, settings);
        bridge
    }

    /// (Re)writes the settings file: loopback on the bridge's port, its
    /// database, `component`, the shared compile cache, then `settings`.
    pub fn write_settings(&self, component: &Path, settings: &str) {
        std::fs::write(
            self.dir.path().join("mssp-bridge.toml"),
            format!(
                "listen = \"127.0.0.1:{}\"\npublic_listen = \"127.0.0.1:0\"\ndatabase = {:?}\ncomponent = {:?}\ncache_dir = {:?}\n{settings}",
                self.port,
                self.db(),
                component,
                cache_dir(),
            ),
        )
        .unwrap();
    }

    pub fn command(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_mssp-bridge"));
        c.current_dir(self.dir.path())
            .env("MSSP_CONFIG", self.dir.path().join("mssp-bridge.toml"))
            .env("MSSP_MASTER_KEY", &self.master_key)
            .env("RUST_LOG", self.log);
        c
    }

    pub fn db(&self) -> PathBuf {
        self.dir.path().join("bridge.db")
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Starts `serve`, appending its output to `serve.log`.
    pub fn serve(&self) -> Child {
        self.serve_with_env(&[])
    }

    /// As [`Bridge::serve`], with extra environment variables (e.g. the admin token).
    pub fn serve_with_env(&self, env: &[(&str, &str)]) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("serve.log"))
            .unwrap();
        self.command()
            .arg("serve")
            .envs(env.iter().copied())
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap()
    }
}

/// The status of a GET whose whole body arrived within 5 s.
pub async fn http_get_status(url: &str) -> Option<u16> {
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let uri: http::Uri = url.parse().ok()?;
    let resp = tokio::time::timeout(Duration::from_secs(5), client.get(uri))
        .await
        .ok()?
        .ok()?;
    let status = resp.status().as_u16();
    resp.into_body().collect().await.ok()?;
    Some(status)
}

pub async fn wait_healthy(b: &Bridge, child: &mut Child) {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let log = std::fs::read_to_string(b.dir.path().join("serve.log")).unwrap_or_default();
            panic!("serve exited with {status}:\n{log}");
        }
        let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
        if let Ok(Ok(r)) = tokio::time::timeout(
            Duration::from_secs(1),
            client.get(b.url("/healthz").parse().unwrap()),
        )
        .await
            && r.status() == 200
        {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "serve did not come up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn kill(child: &mut Child) {
    // `Child::kill` sends SIGKILL on unix: no destructor, no flush, no lease release.
    child.kill().unwrap();
    child.wait().unwrap();
}

/// Every incident record of a tenant, as persisted.
pub fn records(kv: &dyn KvBackend, tenant: &str) -> Vec<Value> {
    let ns = Namespace::new(tenant, "default");
    let mut out = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let keys = kv.list_keys(&ns, after.as_deref(), 1000).unwrap();
        let Some(last) = keys.last().cloned() else {
            break;
        };
        for k in keys.iter().filter(|k| k.starts_with("incident/")) {
            if let Some((bytes, _)) = kv.get(&ns, k).unwrap() {
                out.push(serde_json::from_slice(&bytes).unwrap());
            }
        }
        after = Some(last);
    }
    out
}

pub fn setup_customers(sim: &Sim, bridge: &Bridge, specs: &[Spec]) -> Vec<Customer> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut out = Vec::new();
    for spec in specs {
        let (id, containment, callback) = (spec.id.as_str(), spec.containment, spec.callback);
        let amp_client = format!("{id}-amp");
        let xdr_client = format!("{id}-xdr");
        let snow_user = format!("{id}-snow");
        let home_group = format!("grp-{id}-home");
        let triage = format!("grp-{id}-triage");
        let upstream = vec![
            ("amp_api_key", format!("ampkey-{id}-5c2e91d0")),
            ("xdr_client_secret", format!("xdrsecret-{id}-a0b1c2d3")),
            ("snow_password", format!("snowpass-{id}-e4f5a6b7")),
            (
                "callback_key",
                b64.encode(format!("callback-key-{id}-8899aabb")),
            ),
            ("tick_token", format!("ticktoken-{id}-77e1c0aa")),
        ];
        let secrets: Vec<(&'static str, String)> = upstream
            .iter()
            .map(|(k, v)| {
                if spec.wrong.contains(k) {
                    (*k, format!("wrong-{v}-0f1e2d3c"))
                } else {
                    (*k, v.clone())
                }
            })
            .collect();
        sim.amp()
            .add_org(OrgSpec::new(&amp_client, upstream[0].1.clone()));
        sim.amp()
            .add_group(&amp_client, &home_group, "Protect")
            .unwrap();
        sim.amp().add_group(&amp_client, &triage, "Triage").unwrap();
        for i in 0..3 {
            sim.amp()
                .add_computer(
                    &amp_client,
                    ComputerSpec::new(
                        format!("{id}-guid-{i}"),
                        format!("{}-WS{i}", id.to_uppercase()),
                        &home_group,
                    ),
                )
                .unwrap();
        }
        sim.xdr().add_client(&xdr_client, &upstream[1].1);
        sim.snow().add_basic_user(&snow_user, &upstream[2].1);
        if callback {
            sim.snow().set_callback(
                &snow_user,
                CallbackSpec::new(
                    bridge.url(&format!("/tenants/{id}/v1/servicenow/events")),
                    &upstream[3].1,
                ),
            );
        }
        let config = vec![
            ("customer_name", format!("{} Corp", id.to_uppercase())),
            ("amp_base_url", sim.amp_url().to_string()),
            ("amp_client_id", amp_client.clone()),
            ("xdr_auth_url", sim.xdr_auth_url().to_string()),
            ("xdr_api_url", sim.xdr_api_url().to_string()),
            ("xdr_client_id", xdr_client.clone()),
            ("snow_base_url", sim.snow_url().to_string()),
            ("snow_user", snow_user.clone()),
            ("containment", containment.to_string()),
            ("triage_group_guid", triage),
            ("tick_budget_ms", "2000".to_string()),
            ("http_timeout_ms", "800".to_string()),
            // Customers without a callback are closed by the reconcile poll: every tick.
            ("reconcile_interval_secs", "0".to_string()),
        ];
        out.push(Customer {
            id: id.to_string(),
            containment,
            amp_client,
            xdr_client,
            snow_user,
            home_group,
            config,
            secrets,
            upstream,
        });
        if let Some(c) = out.last() {
            register(bridge, c, &[], false);
        }
    }
    out
}

/// Detection groups (incident key suffixes) of the high-priority events, and
/// the ids of those events.
pub fn expected(events: &[mssp_sim::Event]) -> (BTreeSet<String>, BTreeSet<u64>) {
    let hp: Vec<&mssp_sim::Event> = events
        .iter()
        .filter(|e| mssp_sim::HIGH_PRIORITY_EVENT_TYPES.contains(&e.event_type_id))
        .collect();
    let groups = hp
        .iter()
        .map(|e| match &e.detection_id {
            Some(d) => format!("-d{d}"),
            None => format!("-e{}", e.id),
        })
        .collect();
    (groups, hp.iter().map(|e| e.id).collect())
}

/// `amp-<customer tag>-d<detection id>` → `-d<detection id>`.
pub fn group_of(key: &str) -> String {
    key.splitn(3, '-')
        .nth(2)
        .map(|rest| format!("-{rest}"))
        .unwrap_or_default()
}

/// One customer's incidents upstream against the events published for it (the crash
/// suites' check): counts the detection groups, and the groups missing or doubled in
/// XDR or ServiceNow (each printed); asserts every XDR incident and ServiceNow ticket is
/// closed and every high-priority event is in exactly one incident record.
pub struct Tally {
    pub incidents: usize,
    pub duplicates: usize,
    pub losses: usize,
}

pub fn tally(sim: &Sim, kv: &dyn KvBackend, c: &Customer, events: &[mssp_sim::Event]) -> Tally {
    let (groups, hp_ids) = expected(events);
    let title = format!("[{} Corp]", c.id.to_uppercase());
    let mut xdr_per_group: std::collections::BTreeMap<String, usize> = Default::default();
    for i in sim
        .inspect()
        .xdr_incidents()
        .iter()
        .filter(|i| i["title"].as_str().is_some_and(|t| t.contains(&title)))
    {
        assert_eq!(i["status"], "Closed", "{}: XDR incident closed: {i}", c.id);
        *xdr_per_group
            .entry(group_of(i["external_ids"][0].as_str().unwrap_or("")))
            .or_default() += 1;
    }
    let mut snow_per_group: std::collections::BTreeMap<String, usize> = Default::default();
    for s in sim
        .inspect()
        .snow_incidents()
        .iter()
        .filter(|s| s.owner == c.snow_user)
    {
        assert!(
            ["6", "7", "8"].contains(&s.state()),
            "{}: ticket closed",
            c.id
        );
        *snow_per_group
            .entry(group_of(s.field("correlation_id")))
            .or_default() += 1;
    }
    let mut t = Tally {
        incidents: groups.len(),
        duplicates: 0,
        losses: 0,
    };
    for (what, per) in [("XDR", &xdr_per_group), ("ServiceNow", &snow_per_group)] {
        for g in &groups {
            match per.get(g).copied().unwrap_or(0) {
                0 => {
                    t.losses += 1;
                    eprintln!("LOST: {} {what} incident of group {g}", c.id);
                }
                1 => {}
                n => {
                    t.duplicates += n - 1;
                    eprintln!("DUPLICATE: {} {n} {what} incidents of group {g}", c.id);
                }
            }
        }
        for g in per.keys().filter(|g| !groups.contains(*g)) {
            t.duplicates += 1;
            eprintln!("UNEXPECTED: {} {what} incident of group {g}", c.id);
        }
    }
    let mut seen: std::collections::BTreeMap<u64, usize> = Default::default();
    for r in records(kv, &c.id) {
        for id in r["event_ids"].as_array().into_iter().flatten() {
            if let Some(id) = id.as_u64() {
                *seen.entry(id).or_default() += 1;
            }
        }
    }
    for id in &hp_ids {
        assert_eq!(
            seen.get(id),
            Some(&1),
            "{}: event {id} in one incident",
            c.id
        );
    }
    t
}
