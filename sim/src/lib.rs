//! Simulators of Cisco Secure Endpoint (AMP) API v1, Cisco XDR (token + CTIA incidents) and
//! the ServiceNow Table API, served over real HTTP on loopback, with fault injection and an
//! inspection API. See `sim/README.md` for the routes and the behaviour reproduced.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use mssp_sim::{Sim, SimConfig, OrgSpec};
//! let sim = Sim::start(SimConfig::default()).await?;
//! sim.amp().add_org(OrgSpec::new("client-1", "key-1"));
//! println!("AMP at {}", sim.amp_url());
//! # Ok(()) }
//! ```

pub mod amp;
mod clock;
mod control;
pub mod faults;
mod ratelimit;
mod server;
pub mod snow;
pub mod xdr;

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rand::Rng;
use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use amp::{
    AmpSim, ComputerSpec, ComputerView, Event, HIGH_PRIORITY_EVENT_TYPES, IsolationStatus, OrgSpec,
    RateLimitHeaders, Sample,
};
pub use faults::{Fault, FaultKind, FaultStatus, Schedule, Service, WaitForm};
pub use snow::{
    CallbackOutcome, CallbackRecord, CallbackSpec, JournalEntry, SnowIncident, SnowSim,
};
pub use xdr::XdrSim;

use faults::FaultBook;
use server::{Delivery, Outcome, Reply, Req};

/// Errors of the control API.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SimError {
    /// The named org, computer, group or incident does not exist.
    NotFound(String),
    /// The request makes no sense (bad state, bad key...).
    Invalid(String),
}

impl fmt::Display for SimError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SimError::NotFound(what) => write!(f, "not found: {what}"),
            SimError::Invalid(why) => write!(f, "invalid: {why}"),
        }
    }
}

impl std::error::Error for SimError {}

/// Fixed ports (0 = any free port).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SimPorts {
    pub amp: u16,
    pub xdr_auth: u16,
    pub xdr_api: u16,
    pub snow: u16,
    pub control: u16,
}

/// Start-up settings; every duration is short-able for fast tests.
#[derive(Clone, Debug)]
pub struct SimConfig {
    pub bind: IpAddr,
    pub ports: SimPorts,
    /// Seeds fault probabilities.
    pub seed: u64,
    /// Length of every rate-limit window ("per hour" limits are per window).
    pub rate_window: Duration,
    /// How long `pending_start` / `pending_stop` last.
    pub isolation_delay: Duration,
    /// XDR token lifetime (`expires_in`).
    pub xdr_token_ttl: Duration,
    /// Default per-client XDR limit per rolling window.
    pub xdr_rate_limit_per_hour: u32,
    /// Default per-user ServiceNow limit per window.
    pub snow_rate_limit_per_hour: u32,
    /// ServiceNow 429s carry `Retry-After` + `X-RateLimit-*` (true) or nothing (false).
    pub snow_rate_limit_headers: bool,
    /// How long the ServiceNow business rule waits for the bridge.
    pub callback_timeout: Duration,
    /// CTIA's configured `external-key-prefixes`, used by `POST /ctia/bundle/import` when
    /// the request names none (default `["ctia-"]`, the pessimistic reading: see
    /// `xdr::bundle_import`). An empty list means "every external id", as CTIA's code has
    /// done since 2020.
    pub xdr_external_key_prefixes: Vec<String>,
}

impl Default for SimConfig {
    fn default() -> SimConfig {
        SimConfig {
            bind: IpAddr::V4(Ipv4Addr::LOCALHOST),
            ports: SimPorts::default(),
            seed: 0x5eed,
            rate_window: Duration::from_secs(3600),
            isolation_delay: Duration::from_secs(2),
            xdr_token_ttl: Duration::from_secs(600),
            xdr_rate_limit_per_hour: 8000,
            snow_rate_limit_per_hour: 5000,
            snow_rate_limit_headers: true,
            callback_timeout: Duration::from_secs(10),
            xdr_external_key_prefixes: vec!["ctia-".to_string()],
        }
    }
}

/// Base URLs of the listeners (no trailing slash).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SimUrls {
    pub amp: String,
    pub xdr_auth: String,
    pub xdr_api: String,
    pub snow: String,
    pub control: String,
}

/// One request counter: service, route template (`GET /v1/events`), tenant.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RequestCount {
    pub service: Service,
    pub route: String,
    pub tenant: Option<String>,
    pub count: u64,
}

/// Every request that reached a service listener (429s and faulted ones included).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RequestCounts {
    pub entries: Vec<RequestCount>,
}

impl RequestCounts {
    fn sum(&self, keep: impl Fn(&RequestCount) -> bool) -> u64 {
        self.entries
            .iter()
            .filter(|e| keep(e))
            .map(|e| e.count)
            .sum()
    }

    pub fn total(&self) -> u64 {
        self.sum(|_| true)
    }

    pub fn service(&self, service: Service) -> u64 {
        self.sum(|e| e.service == service)
    }

    /// Requests of one route template, e.g. `route(Service::Amp, "GET /v1/events")`.
    pub fn route(&self, service: Service, route: &str) -> u64 {
        self.sum(|e| e.service == service && e.route == route)
    }

    pub fn tenant(&self, service: Service, tenant: &str) -> u64 {
        self.sum(|e| e.service == service && e.tenant.as_deref() == Some(tenant))
    }

    pub fn get(&self, service: Service, route: &str, tenant: &str) -> u64 {
        self.sum(|e| {
            e.service == service && e.route == route && e.tenant.as_deref() == Some(tenant)
        })
    }
}

/// A request that followed a redirect fault to the decoy host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DecoyHit {
    pub method: String,
    pub path: String,
    /// The Authorization header it carried, if any (a leaked credential).
    pub authorization: Option<String>,
}

type CountKey = (Service, String, Option<String>);

pub(crate) struct Shared {
    config: SimConfig,
    urls: SimUrls,
    amp: Mutex<amp::AmpState>,
    xdr: Mutex<xdr::XdrState>,
    snow: Mutex<snow::SnowState>,
    faults: Mutex<FaultBook>,
    counts: Mutex<BTreeMap<CountKey, u64>>,
    /// Connections accepted, per service.
    connections: Mutex<BTreeMap<Service, u64>>,
    decoy: Mutex<Vec<DecoyHit>>,
    client: snow::HttpClient,
}

/// Locks a mutex; a panic elsewhere must not take the simulator down with it.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

pub(crate) fn random_hex<R: Rng + ?Sized>(rng: &mut R, bytes: usize) -> String {
    let raw: Vec<u8> = (0..bytes).map(|_| rng.random()).collect();
    hex::encode(raw)
}

/// Runs all simulators until dropped.
pub struct Sim {
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Sim {
    /// Binds every listener and starts serving. Must run inside a tokio runtime.
    pub async fn start(config: SimConfig) -> io::Result<Sim> {
        let ip = config.bind;
        let p = config.ports;
        let (amp_l, amp_a) = server::bind(ip, p.amp).await?;
        let (auth_l, auth_a) = server::bind(ip, p.xdr_auth).await?;
        let (api_l, api_a) = server::bind(ip, p.xdr_api).await?;
        let (snow_l, snow_a) = server::bind(ip, p.snow).await?;
        let (ctl_l, ctl_a) = server::bind(ip, p.control).await?;
        let urls = SimUrls {
            amp: format!("http://{amp_a}"),
            xdr_auth: format!("http://{auth_a}"),
            xdr_api: format!("http://{api_a}"),
            snow: format!("http://{snow_a}"),
            control: format!("http://{ctl_a}"),
        };
        let window = config.rate_window;
        let shared = Arc::new(Shared {
            amp: Mutex::new(amp::AmpState::new(
                urls.amp.clone(),
                window,
                config.isolation_delay,
            )),
            xdr: Mutex::new(xdr::XdrState::new(
                urls.xdr_api.clone(),
                config.xdr_token_ttl,
                window,
                config.xdr_rate_limit_per_hour,
                config.xdr_external_key_prefixes.clone(),
            )),
            snow: Mutex::new(snow::SnowState::new(
                urls.snow.clone(),
                window,
                config.snow_rate_limit_per_hour,
                config.snow_rate_limit_headers,
            )),
            faults: Mutex::new(FaultBook::new(config.seed)),
            counts: Mutex::new(BTreeMap::new()),
            connections: Mutex::new(BTreeMap::new()),
            decoy: Mutex::new(Vec::new()),
            client: Client::builder(TokioExecutor::new()).build_http(),
            urls,
            config,
        });
        let (stop, stopped) = watch::channel(false);
        let mut tasks = Vec::new();
        for (listener, service) in [
            (amp_l, Service::Amp),
            (auth_l, Service::XdrAuth),
            (api_l, Service::XdrApi),
            (snow_l, Service::Snow),
        ] {
            let shared = Arc::clone(&shared);
            let counted = Arc::clone(&shared);
            tasks.push(tokio::spawn(server::serve(
                listener,
                stopped.clone(),
                move || *lock(&counted.connections).entry(service).or_insert(0) += 1,
                move |req| gateway(Arc::clone(&shared), service, req),
            )));
        }
        let ctl_shared = Arc::clone(&shared);
        tasks.push(tokio::spawn(server::serve(
            ctl_l,
            stopped,
            || {},
            move |req| control::handle(Arc::clone(&ctl_shared), req),
        )));
        Ok(Sim {
            shared,
            stop,
            tasks,
        })
    }

    pub fn urls(&self) -> &SimUrls {
        &self.shared.urls
    }

    /// Secure Endpoint base, e.g. `http://127.0.0.1:41234` (→ `{base}/v1/events`).
    pub fn amp_url(&self) -> &str {
        &self.shared.urls.amp
    }

    /// XDR token host base (→ `{base}/iroh/oauth2/token`).
    pub fn xdr_auth_url(&self) -> &str {
        &self.shared.urls.xdr_auth
    }

    /// XDR CTIA base (→ `{base}/ctia/incident`).
    pub fn xdr_api_url(&self) -> &str {
        &self.shared.urls.xdr_api
    }

    /// ServiceNow instance base (→ `{base}/api/now/table/incident`).
    pub fn snow_url(&self) -> &str {
        &self.shared.urls.snow
    }

    /// Control listener base (→ `{base}/_sim/...`).
    pub fn control_url(&self) -> &str {
        &self.shared.urls.control
    }

    pub fn config(&self) -> &SimConfig {
        &self.shared.config
    }

    pub fn amp(&self) -> AmpSim {
        AmpSim {
            shared: Arc::clone(&self.shared),
        }
    }

    pub fn xdr(&self) -> XdrSim {
        XdrSim {
            shared: Arc::clone(&self.shared),
        }
    }

    pub fn snow(&self) -> SnowSim {
        SnowSim {
            shared: Arc::clone(&self.shared),
        }
    }

    pub fn faults(&self) -> Faults {
        Faults {
            shared: Arc::clone(&self.shared),
        }
    }

    pub fn inspect(&self) -> Inspect {
        Inspect {
            shared: Arc::clone(&self.shared),
        }
    }

    /// Stops accepting, lets open connections finish their current request, and waits.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        for task in self.tasks.drain(..) {
            let _ = task.await;
        }
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Fault registry handle.
#[derive(Clone)]
pub struct Faults {
    shared: Arc<Shared>,
}

impl Faults {
    /// Registers a fault; returns its id.
    pub fn add(&self, fault: Fault) -> u64 {
        lock(&self.shared.faults).add(fault)
    }

    pub fn remove(&self, id: u64) -> bool {
        lock(&self.shared.faults).remove(id)
    }

    pub fn clear(&self) {
        lock(&self.shared.faults).clear();
    }

    pub fn list(&self) -> Vec<FaultStatus> {
        lock(&self.shared.faults).list()
    }
}

/// Read-only views across services.
#[derive(Clone)]
pub struct Inspect {
    pub(crate) shared: Arc<Shared>,
}

impl Inspect {
    pub fn xdr_incidents(&self) -> Vec<Value> {
        XdrSim {
            shared: Arc::clone(&self.shared),
        }
        .incidents()
    }

    pub fn snow_incidents(&self) -> Vec<SnowIncident> {
        SnowSim {
            shared: Arc::clone(&self.shared),
        }
        .incidents()
    }

    pub fn snow_callbacks(&self) -> Vec<CallbackRecord> {
        SnowSim {
            shared: Arc::clone(&self.shared),
        }
        .callbacks()
    }

    pub fn computer(&self, client_id: &str, guid: &str) -> Result<ComputerView, SimError> {
        AmpSim {
            shared: Arc::clone(&self.shared),
        }
        .computer(client_id, guid)
    }

    pub fn request_counts(&self) -> RequestCounts {
        let counts = lock(&self.shared.counts);
        RequestCounts {
            entries: counts
                .iter()
                .map(|((service, route, tenant), count)| RequestCount {
                    service: *service,
                    route: route.clone(),
                    tenant: tenant.clone(),
                    count: *count,
                })
                .collect(),
        }
    }

    /// Resets the request counts and the connection counts.
    pub fn reset_request_counts(&self) {
        lock(&self.shared.counts).clear();
        lock(&self.shared.connections).clear();
    }

    /// TCP connections the service accepted (since the start or the last reset).
    pub fn connections(&self, service: Service) -> u64 {
        lock(&self.shared.connections)
            .get(&service)
            .copied()
            .unwrap_or(0)
    }

    pub fn decoy_hits(&self) -> Vec<DecoyHit> {
        lock(&self.shared.decoy).clone()
    }
}

// ---------------------------------------------------------------------------------------
// The path every service request takes: count, fault, serve, damage.

async fn gateway(shared: Arc<Shared>, service: Service, req: Req) -> Outcome {
    let (route, tenant) = match service {
        Service::Amp => (amp::route_name(&req), amp::tenant(&req)),
        Service::XdrAuth => (xdr::auth_route_name(&req), xdr::auth_tenant(&req)),
        Service::XdrApi => (xdr::api_route_name(&req), xdr::api_tenant(&shared, &req)),
        Service::Snow => (snow::route_name(&req), snow::tenant(&shared, &req)),
    };
    *lock(&shared.counts)
        .entry((service, route, tenant.clone()))
        .or_insert(0) += 1;
    let plan =
        lock(&shared.faults).plan(service, req.method.as_str(), &req.path, tenant.as_deref());
    if !plan.delay.is_zero() {
        tokio::time::sleep(plan.delay).await;
    }
    if let Some(outcome) = plan
        .action
        .as_ref()
        .and_then(|kind| replacement(&shared, service, &req, tenant.as_deref(), kind))
    {
        return outcome;
    }
    let reply = match service {
        Service::Amp => amp::handle(&shared, &req),
        Service::XdrAuth => xdr::handle_auth(&shared, &req),
        Service::XdrApi => xdr::handle_api(&shared, &req),
        Service::Snow => snow::handle(&shared, &req),
    };
    let body_fault = matches!(
        plan.action,
        Some(FaultKind::DropMidBody | FaultKind::TruncatedJson | FaultKind::Oversize { .. })
    );
    if body_fault && (matches!(reply.status, 204 | 304) || req.method == http::Method::HEAD) {
        // Nothing to damage in an answer without a body: the fault waits for the next one.
        if let Some(id) = plan.action_from {
            lock(&shared.faults).unfire(id);
        }
        return damage(reply, None);
    }
    damage(reply, plan.action)
}

fn gateway_page(code: u16) -> Reply {
    let reason = http::StatusCode::from_u16(code)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Error");
    Reply::text(
        code,
        "text/html",
        format!(
            "<html>\r\n<head><title>{code} {reason}</title></head>\r\n<body>\r\n<center><h1>{code} {reason}</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
        ),
    )
}

/// The answer a fault gives instead of the service's, or `None` when the service must run
/// (its answer is damaged afterwards, or only delayed).
fn replacement(
    shared: &Shared,
    service: Service,
    req: &Req,
    tenant: Option<&str>,
    kind: &FaultKind,
) -> Option<Outcome> {
    let reply = match kind {
        FaultKind::DropConnection => return Some(Outcome::Hangup),
        FaultKind::Status { code } => gateway_page(*code),
        FaultKind::MalformedJson => Reply::text(
            200,
            "application/json",
            "{\"result\": [{\"sys_id\": 'oops', \"data\": [1, 2,, ]} <!-- upstream proxy error -->",
        ),
        FaultKind::TooManyRequests {
            retry_after_secs,
            bare,
        } => match service {
            Service::Amp => amp::fault_429(shared, tenant, *retry_after_secs, *bare),
            Service::XdrAuth | Service::XdrApi => xdr::fault_429(*retry_after_secs, *bare),
            Service::Snow => snow::fault_429(shared, *retry_after_secs, *bare),
        },
        FaultKind::TooManyRequestsNamed { wait_secs, form } => {
            let reply = Reply::json(
                429,
                &json!({"error": "too_many_requests", "message": "Rate limit exceeded"}),
            );
            let at = std::time::SystemTime::now() + Duration::from_secs(*wait_secs);
            match form {
                WaitForm::RetryAfterSeconds => reply.with_header("Retry-After", wait_secs),
                WaitForm::RetryAfterDate => {
                    // An HTTP-date has whole seconds: round up so the wait is never shorter.
                    let at = at + Duration::from_millis(999);
                    reply.with_header("Retry-After", httpdate::fmt_http_date(at))
                }
                WaitForm::EpochReset => {
                    let reset = clock::now_secs() + i64::try_from(*wait_secs).unwrap_or(0) + 1;
                    reply.with_header("X-RateLimit-Reset", reset)
                }
            }
        }
        FaultKind::Redirect { status, location } => {
            let base = location
                .clone()
                .unwrap_or_else(|| format!("{}/_sim/decoy", shared.urls.control));
            Reply::json(*status, &json!({"redirect": true})).with_header(
                "Location",
                format!("{}{}", base.trim_end_matches('/'), req.path_and_query()),
            )
        }
        FaultKind::Latency { .. }
        | FaultKind::DropMidBody
        | FaultKind::TruncatedJson
        | FaultKind::Oversize { .. }
        | FaultKind::StatusAfterEffect { .. } => return None,
    };
    Some(Outcome::Respond(reply, Delivery::Complete))
}

/// Damages a reply the service produced (its side effects already happened).
fn damage(mut reply: Reply, action: Option<FaultKind>) -> Outcome {
    match action {
        Some(FaultKind::DropMidBody) => return Outcome::Respond(reply, Delivery::BreakMidBody),
        Some(FaultKind::TruncatedJson) => {
            let half = reply.body.len() / 2;
            reply.body = reply.body.slice(..half);
        }
        Some(FaultKind::StatusAfterEffect { code }) => {
            return Outcome::Respond(gateway_page(code), Delivery::Complete);
        }
        Some(FaultKind::Oversize { bytes }) => {
            let mut padded = Vec::with_capacity(bytes.max(reply.body.len()));
            padded.extend_from_slice(&reply.body);
            padded.resize(bytes.max(reply.body.len()), b' ');
            reply.body = Bytes::from(padded);
        }
        _ => {}
    }
    Outcome::Respond(reply, Delivery::Complete)
}
