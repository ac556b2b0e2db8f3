//! Helpers for end-to-end tests: a real host (runtime + HTTP server) running
//! a real component, and a small HTTP client.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use mssp_bridge::server::Server;
use mssp_runtime::SecretString;
use mssp_runtime::kv::{KvBackend, RedisKv, RedisOptions, SqliteKv};
use mssp_runtime::outbound::Allowlist;
use mssp_runtime::{BudgetSettings, LimitSettings};
use mssp_runtime::{Runtime, RuntimeParts, Tenant, TenantSpec};

mod redis_server;
pub use redis_server::RedisServer;

/// The workspace's root folder.
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default()
}

/// Path of a component built by `cargo xtask build` (e.g. "mssp_guest").
///
/// Panics with the fix when the component has not been built: a test that
/// cannot find its component must fail, not pass vacuously.
pub fn component(name: &str) -> PathBuf {
    let dir = std::env::var_os("MSSP_WASM_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let target = std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| workspace_root().join("target"));
            target.join("wasm32-wasip2").join("release")
        });
    let path = dir.join(format!("{name}.wasm"));
    assert!(
        path.exists(),
        "component {} is missing: run `cargo xtask test` (it builds the components first)",
        path.display()
    );
    path
}

/// A running host: runtime, HTTP server on loopback, its database folder.
pub struct TestHost {
    pub runtime: Arc<Runtime>,
    pub addr: SocketAddr,
    pub kv: Arc<dyn KvBackend>,
    pub dir: tempfile::TempDir,
}

impl TestHost {
    /// A host on a fresh SQLite key-value file in its folder.
    pub async fn start(component_name: &str, limits: LimitSettings) -> anyhow::Result<Self> {
        Self::start_budgeted(component_name, limits, component_budgets()).await
    }

    /// As [`TestHost::start`], with budgets for the shared upstream accounts.
    pub async fn start_budgeted(
        component_name: &str,
        limits: LimitSettings,
        budgets: BudgetSettings,
    ) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let kv = Arc::new(SqliteKv::open(&dir.path().join("bridge.db"))?);
        Self::start_with(component_name, limits, budgets, kv, dir).await
    }

    /// A host on the given key-value backend (the test budgets).
    pub async fn start_on(
        component_name: &str,
        limits: LimitSettings,
        kv: Arc<dyn KvBackend>,
        dir: tempfile::TempDir,
    ) -> anyhow::Result<Self> {
        Self::start_with(component_name, limits, component_budgets(), kv, dir).await
    }

    async fn start_with(
        component_name: &str,
        limits: LimitSettings,
        budgets: BudgetSettings,
        kv: Arc<dyn KvBackend>,
        dir: tempfile::TempDir,
    ) -> anyhow::Result<Self> {
        let cache = workspace_root().join("target").join("mssp-test-cache");
        let runtime = Arc::new(Runtime::new(RuntimeParts {
            component: &component(component_name),
            cache_dir: &cache,
            kv: kv.clone(),
            limits,
            max_instances: 64,
            budgets,
        })?);
        let addr = Server::new(runtime.clone())
            .spawn(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await?;
        Ok(Self {
            runtime,
            addr,
            kv,
            dir,
        })
    }

    /// Registers a tenant with the given configuration (secrets included).
    pub fn tenant(&self, id: &str, config: &[(&str, &str)]) -> Arc<Tenant> {
        self.tenant_running(id, config, None)
    }

    /// Registers a tenant that runs `component` (e.g. "mssp_probe") instead
    /// of the host's default component.
    pub fn tenant_running(
        &self,
        id: &str,
        config: &[(&str, &str)],
        component_name: Option<&str>,
    ) -> Arc<Tenant> {
        let config: BTreeMap<String, SecretString> = config
            .iter()
            .map(|(k, v)| (k.to_string(), SecretString::new(*v)))
            .collect();
        let allowlist = Allowlist::from_config(&config, &[]).expect("valid test config");
        self.runtime
            .upsert_tenant(TenantSpec {
                id: id.to_string(),
                config,
                allowlist,
                component: component_name.map(component),
                interval: None,
                accounts: Vec::new(),
            })
            .expect("tenant registers")
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }
}

/// One HTTP exchange: status, headers and body.
pub struct Reply {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

/// Sends one request over real HTTP.
pub async fn send(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> anyhow::Result<Reply> {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut req = http::Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = client.request(req.body(Full::new(body.into()))?).await?;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok(Reply {
        status,
        headers,
        body,
    })
}

pub async fn get(url: &str) -> anyhow::Result<Reply> {
    send("GET", url, &[], Bytes::new()).await
}

/// A customer set up on both sides: simulated upstream accounts and a tenant.
#[derive(Clone, Debug)]
pub struct Customer {
    pub id: String,
    pub amp_client_id: String,
    pub xdr_client_id: String,
    pub snow_user: String,
    pub callback_key: String,
    pub tick_token: String,
    pub default_group: String,
    pub triage_group: String,
    pub computers: Vec<String>,
    /// Every secret configured for this customer (for leak checks).
    pub secrets: Vec<String>,
}

/// How a test customer is set up.
#[derive(Clone, Debug)]
pub struct CustomerSpec {
    pub computers: usize,
    /// Extra tenant config (e.g. `containment=isolate`).
    pub config: Vec<(String, String)>,
    /// Install the ServiceNow business rule that calls back.
    pub callback: bool,
}

impl Default for CustomerSpec {
    fn default() -> Self {
        Self {
            computers: 3,
            config: Vec::new(),
            callback: true,
        }
    }
}

impl CustomerSpec {
    pub fn with(mut self, key: &str, value: &str) -> Self {
        self.config.push((key.to_string(), value.to_string()));
        self
    }
    /// Adds every setting of `pairs` (e.g. [`World::shared_snow_user`]).
    pub fn with_all(mut self, pairs: &[(String, String)]) -> Self {
        self.config.extend(pairs.iter().cloned());
        self
    }
    pub fn without_callback(mut self) -> Self {
        self.callback = false;
        self
    }
}

/// The host's account settings for the suites that test the component's own handling of
/// 429s: no budget, and a header-less 429 holds its account for only 0.2 s (the default
/// is a minute), so that what those suites see is the component's own cooldown
/// (`rate_limit_cooldown_seconds`); `tests/tests/budgets.rs` tests the host's.
pub fn component_budgets() -> BudgetSettings {
    BudgetSettings {
        no_header_cooldown_secs: 0.2,
        ..BudgetSettings::default()
    }
}

/// The two settings of one upstream credential: who, and its secret.
fn credential(who_key: &str, who: &str, secret_key: &str, secret: String) -> Vec<(String, String)> {
    vec![
        (who_key.to_string(), who.to_string()),
        (secret_key.to_string(), secret),
    ]
}

/// Simulators whose isolations finish after 200 ms.
fn quick_isolation() -> mssp_sim::SimConfig {
    mssp_sim::SimConfig {
        isolation_delay: std::time::Duration::from_millis(200),
        ..mssp_sim::SimConfig::default()
    }
}

/// Simulators and a host running the real bridge component.
pub struct World {
    pub sim: mssp_sim::Sim,
    pub host: TestHost,
    /// The Redis server the host's key-value store is on, if not SQLite.
    pub redis: Option<RedisServer>,
}

impl World {
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(quick_isolation()).await
    }

    pub async fn start_with(config: mssp_sim::SimConfig) -> anyhow::Result<Self> {
        Self::start_limited(config, LimitSettings::default()).await
    }

    pub async fn start_limited(
        config: mssp_sim::SimConfig,
        limits: LimitSettings,
    ) -> anyhow::Result<Self> {
        Self::start_component("mssp_guest", config, limits).await
    }

    /// As [`World::start`], with the crash suites' build of the bridge (the
    /// one that reads the `debug_crash_after` hook).
    pub async fn start_with_crash_hooks() -> anyhow::Result<Self> {
        Self::start_component(
            "mssp_guest_crash_hooks",
            quick_isolation(),
            LimitSettings::default(),
        )
        .await
    }

    async fn start_component(
        component: &str,
        config: mssp_sim::SimConfig,
        limits: LimitSettings,
    ) -> anyhow::Result<Self> {
        Self::start_budgeted(component, config, limits, component_budgets()).await
    }

    /// Simulators and a host whose shared upstream accounts have these budgets.
    pub async fn start_budgeted(
        component: &str,
        config: mssp_sim::SimConfig,
        limits: LimitSettings,
        budgets: BudgetSettings,
    ) -> anyhow::Result<Self> {
        let sim = mssp_sim::Sim::start(config).await?;
        let host = TestHost::start_budgeted(component, limits, budgets).await?;
        Ok(Self {
            sim,
            host,
            redis: None,
        })
    }

    /// As [`World::start`], with the host's key-value store on a real
    /// `redis-server` of its own ([`RedisServer`]).
    pub async fn start_on_redis() -> anyhow::Result<Self> {
        Self::start_on_redis_with(quick_isolation()).await
    }

    /// As [`World::start_with`], on Redis as [`World::start_on_redis`].
    pub async fn start_on_redis_with(config: mssp_sim::SimConfig) -> anyhow::Result<Self> {
        let redis = RedisServer::start();
        let kv = Arc::new(RedisKv::connect(&RedisOptions::url(redis.url()))?);
        let sim = mssp_sim::Sim::start(config).await?;
        let host = TestHost::start_on(
            "mssp_guest",
            LimitSettings::default(),
            kv,
            tempfile::tempdir()?,
        )
        .await?;
        Ok(Self {
            sim,
            host,
            redis: Some(redis),
        })
    }

    /// Creates the customer's accounts in the simulators and its tenant.
    pub fn customer(&self, id: &str, spec: CustomerSpec) -> Customer {
        let (c, config) = self.customer_accounts(id, spec);
        let pairs: Vec<(&str, &str)> = config
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        self.host.tenant(id, &pairs);
        c
    }

    /// Creates the customer's accounts in the simulators and returns the tenant
    /// configuration that points at them (`wasi:config` key → value), without
    /// registering a tenant: for a test that runs the component in another host.
    pub fn customer_accounts(
        &self,
        id: &str,
        spec: CustomerSpec,
    ) -> (Customer, Vec<(String, String)>) {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD;
        let amp_key = format!("ampkey-{id}-9f2c41d7");
        let xdr_secret = format!("xdrsecret-{id}-77ab03e1");
        let snow_password = format!("snowpass-{id}-c4d8e2f0");
        let callback_key = b64.encode(format!("callback-key-of-{id}-5e6f7a8b"));
        let tick_token = format!("ticktoken-{id}-31c0");
        let c = Customer {
            id: id.to_string(),
            amp_client_id: format!("{id}-amp"),
            xdr_client_id: format!("{id}-xdr"),
            snow_user: format!("{id}-snow"),
            default_group: format!("grp-{id}-default"),
            triage_group: format!("grp-{id}-triage"),
            computers: (0..spec.computers)
                .map(|i| format!("{id}-guid-{i:04}"))
                .collect(),
            secrets: vec![
                amp_key.clone(),
                xdr_secret.clone(),
                snow_password.clone(),
                callback_key.clone(),
                tick_token.clone(),
            ],
            callback_key: callback_key.clone(),
            tick_token: tick_token.clone(),
        };
        let amp = self.sim.amp();
        amp.add_org(mssp_sim::OrgSpec::new(&c.amp_client_id, &amp_key));
        amp.add_group(&c.amp_client_id, &c.default_group, "Protect")
            .expect("group");
        amp.add_group(&c.amp_client_id, &c.triage_group, "Triage")
            .expect("group");
        for (i, guid) in c.computers.iter().enumerate() {
            let host = format!("{}-WS{i:03}", id.to_uppercase());
            amp.add_computer(
                &c.amp_client_id,
                mssp_sim::ComputerSpec::new(guid, host, &c.default_group),
            )
            .expect("computer");
        }
        self.sim.xdr().add_client(&c.xdr_client_id, &xdr_secret);
        self.sim.snow().add_basic_user(&c.snow_user, &snow_password);
        if spec.callback {
            self.sim.snow().set_callback(
                &c.snow_user,
                mssp_sim::CallbackSpec::new(
                    self.host
                        .url(&format!("/tenants/{id}/v1/servicenow/events")),
                    &callback_key,
                ),
            );
        }
        let name = format!("{} Corp", id.to_uppercase());
        let mut config: Vec<(String, String)> = vec![
            ("customer_name".into(), name),
            ("amp_base_url".into(), self.sim.amp_url().into()),
            ("amp_client_id".into(), c.amp_client_id.clone()),
            ("amp_api_key".into(), amp_key),
            ("xdr_auth_url".into(), self.sim.xdr_auth_url().into()),
            ("xdr_api_url".into(), self.sim.xdr_api_url().into()),
            ("xdr_client_id".into(), c.xdr_client_id.clone()),
            ("xdr_client_secret".into(), xdr_secret),
            ("snow_base_url".into(), self.sim.snow_url().into()),
            ("snow_user".into(), c.snow_user.clone()),
            ("snow_password".into(), snow_password),
            ("callback_key".into(), callback_key),
            ("tick_token".into(), tick_token),
            ("triage_group_guid".into(), c.triage_group.clone()),
            ("tick_budget_ms".into(), "15000".into()),
            // The tests read the routes as an analyst's browser would; the default
            // (reads refused without a credential) has its own tests.
            ("open_reads".into(), "true".into()),
            ("http_timeout_ms".into(), "3000".into()),
            // The suites written before the reconcile cadence expect a lost callback to
            // be caught by the next tick; `budgets.rs` runs the default.
            ("reconcile_interval_secs".into(), "0".into()),
        ];
        let mut c = c;
        for (k, v) in spec.config {
            if k == "snow_user" {
                // A ServiceNow integration user shared with other customers.
                c.snow_user = v.clone();
            }
            config.retain(|(ck, _)| *ck != k);
            config.push((k, v));
        }
        (c, config)
    }

    /// Runs one tick of a customer, as the scheduler would.
    pub async fn tick(&self, c: &Customer) -> Result<(), mssp_runtime::InvokeError> {
        let t = self
            .host
            .runtime
            .tenant(&c.id)
            .expect("customer registered");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        self.host.runtime.tick(&t, now).await
    }

    /// Generates `n` realistic events on the customer's computers and
    /// publishes them upstream.
    pub fn publish(&self, c: &Customer, seed: u64, n: usize) -> Vec<mssp_sim::Event> {
        let events = self
            .sim
            .amp()
            .generate_events(&c.amp_client_id, seed, n)
            .expect("generate");
        self.sim
            .amp()
            .push_events(&c.amp_client_id, events.clone())
            .expect("push");
        events
    }

    /// XDR incidents of one customer (by its ServiceNow correlation or title).
    pub fn xdr_incidents_of(&self, c: &Customer) -> Vec<serde_json::Value> {
        let name = format!("[{} Corp]", c.id.to_uppercase());
        self.sim
            .inspect()
            .xdr_incidents()
            .into_iter()
            .filter(|i| {
                i.get("title")
                    .and_then(|t| t.as_str())
                    .is_some_and(|t| t.contains(&name))
            })
            .collect()
    }

    /// ServiceNow incidents of one customer (opened by its API user, and — for a user
    /// shared by several customers — carrying its name).
    pub fn snow_incidents_of(&self, c: &Customer) -> Vec<mssp_sim::SnowIncident> {
        let name = format!("[{} Corp]", c.id.to_uppercase());
        self.sim
            .inspect()
            .snow_incidents()
            .into_iter()
            .filter(|i| i.owner == c.snow_user && i.field("short_description").contains(&name))
            .collect()
    }

    /// An XDR API client of the MSSP's one organisation, for several customers: the spec
    /// settings that point a customer at it.
    pub fn shared_xdr_client(&self, client_id: &str) -> Vec<(String, String)> {
        let secret = format!("xdrsecret-{client_id}-shared-0b7e");
        self.sim.xdr().add_client(client_id, &secret);
        credential("xdr_client_id", client_id, "xdr_client_secret", secret)
    }

    /// A ServiceNow integration user for several customers (one instance, one user, one
    /// rate limit): the spec settings that point a customer at it. Its customers need
    /// [`CustomerSpec::without_callback`] (a user has one business rule).
    pub fn shared_snow_user(&self, user: &str) -> Vec<(String, String)> {
        let password = format!("snowpass-{user}-shared-51d3");
        self.sim.snow().add_basic_user(user, &password);
        credential("snow_user", user, "snow_password", password)
    }

    /// The detection groups (see [`group_of_key`]) with an XDR incident and
    /// with a ServiceNow incident for the customer; panics when a group has
    /// two of either.
    pub fn groups_upstream(
        &self,
        c: &Customer,
    ) -> (
        std::collections::BTreeSet<String>,
        std::collections::BTreeSet<String>,
    ) {
        fn once(
            what: &str,
            keys: impl Iterator<Item = String>,
        ) -> std::collections::BTreeSet<String> {
            let mut groups = std::collections::BTreeSet::new();
            for key in keys {
                let group = group_of_key(&key).to_string();
                assert!(groups.insert(group), "two {what} incidents carry {key}");
            }
            groups
        }
        let xdr = self.xdr_incidents_of(c).into_iter().map(|i| {
            i["external_ids"][0]
                .as_str()
                .unwrap_or_default()
                .to_string()
        });
        let snow = self
            .snow_incidents_of(c)
            .into_iter()
            .map(|i| i.field("correlation_id").to_string());
        (once("XDR", xdr), once("ServiceNow", snow))
    }
}

// ---------------------------------------------------------------------------
// Scenario helpers (tests/tests/scenario*.rs, servicenow_kit.rs): what an
// analyst looks at — the bridge's own incident routes, the upstream systems'
// state — and how ServiceNow calls back.

/// The detection part of an incident key (`amp-<tag>-d<detection_id>` →
/// `d<detection_id>`, `amp-<tag>-e<event id>` → `e<event id>`).
pub fn group_of_key(key: &str) -> &str {
    key.splitn(3, '-').nth(2).unwrap_or(key)
}

/// The detection group an event belongs to, spelled as in [`group_of_key`].
pub fn group_of_event(e: &mssp_sim::Event) -> String {
    match &e.detection_id {
        Some(d) => format!("d{d}"),
        None => format!("e{}", e.id),
    }
}

/// Detection groups among the events the default filter keeps, with the
/// number of their events.
pub fn wanted_groups(events: &[mssp_sim::Event]) -> BTreeMap<String, usize> {
    let mut groups = BTreeMap::new();
    for e in events
        .iter()
        .filter(|e| mssp_sim::HIGH_PRIORITY_EVENT_TYPES.contains(&e.event_type_id))
    {
        *groups.entry(group_of_event(e)).or_insert(0) += 1;
    }
    groups
}

/// Secure Endpoint event types of one detection's life.
pub const THREAT_DETECTED: u64 = 1_090_519_054;
pub const THREAT_QUARANTINED: u64 = 553_648_143;
pub const QUARANTINE_FAILURE: u64 = 2_164_260_880;

/// The JSON body ServiceNow's business rule sends (contracts.md).
pub fn callback_body(sys_id: &str, number: &str, state: &str, correlation_id: &str) -> String {
    serde_json::json!({
        "sys_id": sys_id,
        "number": number,
        "state": state,
        "correlation_id": correlation_id,
        "close_code": "Solved (Permanently)",
    })
    .to_string()
}

/// Unix seconds now.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Everything the simulators hold that a callback or tick could change, to
/// prove that something changed nothing.
#[derive(Debug, PartialEq)]
pub struct UpstreamState {
    pub xdr_incidents: Vec<serde_json::Value>,
    pub snow_incidents: Vec<mssp_sim::SnowIncident>,
    pub computers: Vec<mssp_sim::ComputerView>,
    pub requests: mssp_sim::RequestCounts,
}

impl World {
    /// `GET /tenants/{t}/v1/incidents` → its `incidents` list (panics unless 200).
    pub async fn bridge_incidents(&self, c: &Customer) -> Vec<serde_json::Value> {
        let r = get(&self.host.url(&format!("/tenants/{}/v1/incidents", c.id)))
            .await
            .expect("incidents route answers");
        assert_eq!(r.status, 200, "GET incidents: {}", r.text());
        r.json()["incidents"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// `GET /tenants/{t}/v1/incidents/{key}` → the full record with its audit
    /// trail (panics unless 200).
    pub async fn bridge_incident(&self, c: &Customer, key: &str) -> serde_json::Value {
        let r = get(&self
            .host
            .url(&format!("/tenants/{}/v1/incidents/{key}", c.id)))
        .await
        .expect("incident route answers");
        assert_eq!(r.status, 200, "GET incident {key}: {}", r.text());
        r.json()
    }

    /// A Secure Endpoint computer as the simulator sees it.
    pub fn computer(&self, c: &Customer, guid: &str) -> mssp_sim::ComputerView {
        self.sim
            .inspect()
            .computer(&c.amp_client_id, guid)
            .expect("computer exists")
    }

    /// Every upstream system's state, plus the request counts so far.
    pub fn upstream_state(&self) -> UpstreamState {
        let inspect = self.sim.inspect();
        let mut computers = Vec::new();
        for org in self.sim.amp().org_ids() {
            computers.extend(self.sim.amp().computers(&org).unwrap_or_default());
        }
        UpstreamState {
            xdr_incidents: inspect.xdr_incidents(),
            snow_incidents: inspect.snow_incidents(),
            computers,
            requests: inspect.request_counts(),
        }
    }

    /// Events of one detection on one of the customer's computers, built from
    /// a generated Threat Detected event: one event per type in `types`, one
    /// second apart, sharing a fresh `detection_id`. Not pushed.
    pub fn detection(&self, c: &Customer, guid: &str, types: &[u64]) -> Vec<mssp_sim::Event> {
        let amp = self.sim.amp();
        let template = (0..64u64)
            .flat_map(|seed| {
                amp.generate_events(&c.amp_client_id, 1000 + seed, 30)
                    .expect("generate")
            })
            .find(|e| {
                e.event_type_id == THREAT_DETECTED
                    && e.computer.is_some()
                    && e.connector_guid.as_deref() == Some(guid)
            })
            .expect("the generator makes Threat Detected events on every computer");
        let detection_id = amp.next_event_id().to_string();
        let start = unix_now() - 120;
        types
            .iter()
            .enumerate()
            .map(|(i, ty)| {
                let mut e = template.clone();
                let ts = start + i as i64;
                e.id = amp.next_event_id();
                e.timestamp = ts;
                e.date = mssp_sim::Event::new(e.id, *ty, ts).date;
                e.event_type_id = *ty;
                e.event_type = mssp_sim::Event::new(e.id, *ty, ts).event_type;
                e.detection_id = Some(detection_id.clone());
                e
            })
            .collect()
    }

    /// A CTIA bearer token for the customer's own XDR API client, as an analyst's
    /// script would get one (`POST /iroh/oauth2/token`, client credentials).
    pub async fn xdr_analyst_token(&self, c: &Customer) -> String {
        use base64::Engine as _;
        let auth = base64::engine::general_purpose::STANDARD
            .encode(format!("{}:{}", c.xdr_client_id, c.secrets[1]));
        send(
            "POST",
            &format!("{}/iroh/oauth2/token", self.sim.xdr_auth_url()),
            &[
                ("Authorization", &format!("Basic {auth}")),
                ("Content-Type", "application/x-www-form-urlencoded"),
                ("Accept", "application/json"),
            ],
            "grant_type=client_credentials",
        )
        .await
        .expect("token request")
        .json()["access_token"]
            .as_str()
            .expect("an access token")
            .to_string()
    }

    /// The host's public listener (the signed callback and `/healthz` only) over this
    /// world's runtime, on a free loopback port.
    pub async fn public_listener(&self) -> SocketAddr {
        Server::public(self.host.runtime.clone())
            .spawn(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .expect("public listener")
    }

    /// A private (operator's) listener over this world's runtime that requires
    /// `admin_token`, on a free loopback port.
    pub async fn private_listener(&self, admin_token: &str) -> SocketAddr {
        Server::with_admin_token(
            self.host.runtime.clone(),
            Some(SecretString::new(admin_token)),
        )
        .spawn(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .expect("private listener")
    }

    /// Sends a ServiceNow callback to a tenant's route, signed with `key_b64`
    /// at `timestamp` (as contracts.md describes it).
    pub async fn send_callback(
        &self,
        tenant: &str,
        key_b64: &str,
        timestamp: i64,
        body: &str,
    ) -> Reply {
        let url = self
            .host
            .url(&format!("/tenants/{tenant}/v1/servicenow/events"));
        signed_callback(&url, key_b64, timestamp, body).await
    }
}

/// POSTs a ServiceNow callback to `url`, signed with `key_b64` at `timestamp`.
pub async fn signed_callback(url: &str, key_b64: &str, timestamp: i64, body: &str) -> Reply {
    let signature = mssp_sim::snow::sign(key_b64, timestamp, body.as_bytes()).expect("valid key");
    let ts = timestamp.to_string();
    send(
        "POST",
        url,
        &[
            ("content-type", "application/json"),
            ("x-bridge-timestamp", &ts),
            ("x-bridge-signature", &signature),
        ],
        body.to_string(),
    )
    .await
    .expect("callback route answers")
}

/// Whether an incident record's audit trail has an entry of `step` whose
/// outcome contains `needle`.
pub fn audit_has(record: &serde_json::Value, step: &str, needle: &str) -> bool {
    record["audit"].as_array().is_some_and(|a| {
        a.iter().any(|e| {
            e["step"].as_str() == Some(step)
                && e["outcome"].as_str().is_some_and(|o| o.contains(needle))
        })
    })
}
