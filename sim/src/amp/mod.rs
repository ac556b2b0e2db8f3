//! Cisco Secure Endpoint (AMP for Endpoints) API v1.

mod catalog;
mod event;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::SeedableRng;
use rand::rngs::StdRng;
use serde::Serialize;
use serde_json::{Value, json};

pub use catalog::{HIGH_PRIORITY_EVENT_TYPES, event_type_name};
pub use event::{Event, Sample};

use crate::clock::{amp_date, now_secs};
use crate::ratelimit::{Decision, FixedWindow};
use crate::server::{Reply, Req};
use crate::{Shared, SimError, lock, random_hex};
use event::{Generator, Host};

const VERSION: &str = "v1.2.0";
const MAX_LIMIT: usize = 500;
/// Ids of generated events start above 2^53, like real ones.
pub(crate) const FIRST_EVENT_ID: u64 = 6_533_241_145_273_614_339;

/// Spelling of the rate-limit headers (both exist in the wild).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub enum RateLimitHeaders {
    /// `X-RateLimit-Limit/Remaining/Reset` plus `X-RateLimit-ResetDate`.
    #[default]
    Compact,
    /// `X-Rate-Limit-Limit/Remaining/Reset`.
    Dashed,
}

/// One Secure Endpoint organisation (one MSSP customer) and its API credentials.
#[derive(Clone, Debug)]
pub struct OrgSpec {
    pub client_id: String,
    pub api_key: String,
    pub name: String,
    /// Requests per rate window (default 3000; the window is `SimConfig::rate_window`).
    pub rate_limit_per_hour: u32,
    /// Status of a successful move to group: 200 (default) or 202.
    pub move_status: u16,
    pub rate_limit_headers: RateLimitHeaders,
}

impl OrgSpec {
    pub fn new(client_id: impl Into<String>, api_key: impl Into<String>) -> OrgSpec {
        let client_id = client_id.into();
        OrgSpec {
            name: format!("Org {client_id}"),
            client_id,
            api_key: api_key.into(),
            rate_limit_per_hour: 3000,
            move_status: 200,
            rate_limit_headers: RateLimitHeaders::Compact,
        }
    }
}

/// A computer (connector) of an organisation.
#[derive(Clone, Debug)]
pub struct ComputerSpec {
    pub connector_guid: String,
    pub hostname: String,
    pub group_guid: String,
    /// Policy allows isolation (otherwise OPTIONS/PUT/DELETE on isolation answer 405).
    pub isolation_allowed: bool,
    pub operating_system: String,
    pub internal_ip: String,
    pub external_ip: String,
    pub mac: String,
    pub user: String,
}

impl ComputerSpec {
    pub fn new(
        connector_guid: impl Into<String>,
        hostname: impl Into<String>,
        group_guid: impl Into<String>,
    ) -> ComputerSpec {
        let connector_guid = connector_guid.into();
        let n = connector_guid
            .bytes()
            .fold(7u8, |acc, b| acc.wrapping_mul(31).wrapping_add(b));
        ComputerSpec {
            hostname: hostname.into(),
            group_guid: group_guid.into(),
            isolation_allowed: true,
            operating_system: "Windows 10 Enterprise".into(),
            internal_ip: format!("10.0.{}.{}", n % 200, n / 2 + 1),
            external_ip: format!("198.51.100.{}", n % 250 + 1),
            mac: format!("3f:1e:b2:28:{:02x}:{:02x}", n, n.wrapping_add(17)),
            user: "jdoe@CORP".into(),
            connector_guid,
        }
    }
}

/// Isolation state as the API reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum IsolationStatus {
    NotIsolated,
    PendingStart,
    Isolated,
    PendingStop,
}

impl IsolationStatus {
    fn as_str(self) -> &'static str {
        match self {
            IsolationStatus::NotIsolated => "not_isolated",
            IsolationStatus::PendingStart => "pending_start",
            IsolationStatus::Isolated => "isolated",
            IsolationStatus::PendingStop => "pending_stop",
        }
    }
}

/// Inspection view of a computer.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ComputerView {
    pub connector_guid: String,
    pub hostname: String,
    pub group_guid: String,
    /// Every group the computer was in, oldest first (the current one last).
    pub group_history: Vec<String>,
    pub isolation: IsolationStatus,
    pub unlock_code: Option<String>,
    pub isolation_comment: Option<String>,
    /// Isolation PUT/DELETE requests that succeeded.
    pub isolation_requests: u32,
}

#[derive(Debug)]
struct Computer {
    spec: ComputerSpec,
    group_history: Vec<String>,
    status: IsolationStatus,
    since: Instant,
    unlock_code: Option<String>,
    comment: Option<String>,
    isolated_by: Option<String>,
    isolation_requests: u32,
}

impl Computer {
    /// Completes a pending transition once the configured delay has passed.
    fn settle(&mut self, now: Instant, delay: Duration) {
        if now.duration_since(self.since) < delay {
            return;
        }
        match self.status {
            IsolationStatus::PendingStart => self.status = IsolationStatus::Isolated,
            IsolationStatus::PendingStop => {
                self.status = IsolationStatus::NotIsolated;
                self.unlock_code = None;
                self.isolated_by = None;
            }
            _ => {}
        }
    }

    fn view(&self) -> ComputerView {
        ComputerView {
            connector_guid: self.spec.connector_guid.clone(),
            hostname: self.spec.hostname.clone(),
            group_guid: self.spec.group_guid.clone(),
            group_history: self.group_history.clone(),
            isolation: self.status,
            unlock_code: self.unlock_code.clone(),
            isolation_comment: self.comment.clone(),
            isolation_requests: self.isolation_requests,
        }
    }

    fn host(&self) -> Host {
        Host {
            guid: self.spec.connector_guid.clone(),
            hostname: self.spec.hostname.clone(),
            group_guid: self.spec.group_guid.clone(),
            external_ip: self.spec.external_ip.clone(),
            internal_ip: self.spec.internal_ip.clone(),
            mac: self.spec.mac.clone(),
            user: self.spec.user.clone(),
        }
    }
}

#[derive(Clone, Debug)]
struct Group {
    guid: String,
    name: String,
}

struct Org {
    spec: OrgSpec,
    groups: Vec<Group>,
    computers: BTreeMap<String, Computer>,
    /// Newest first, as the API lists them.
    events: Vec<Event>,
    limiter: FixedWindow,
    events_requests: u64,
    /// (events request count after which to inject, events).
    injections: Vec<(u64, Vec<Event>)>,
}

impl Org {
    /// Keeps the list newest first by event time (`timestamp`, then nanoseconds), as the
    /// API lists them (upstream-apis.md "Results come newest first"; the partner
    /// collector cited at `EventFilter::accepts` reads the oldest page at
    /// `offset = total − 500`); among equal timestamps the later insertion lists first
    /// (the sources are silent; this order moves a known event down a position when a
    /// tie arrives, the pessimistic reading for a pager). A late event (old timestamp)
    /// is inserted where its time puts it, shifting the offsets of every older item.
    fn insert_events(&mut self, events: Vec<Event>) {
        let mut merged: Vec<Event> = events.into_iter().rev().collect();
        merged.append(&mut self.events);
        // A stable sort keeps that insertion order among ties.
        merged.sort_by_key(|e| std::cmp::Reverse(e.age_key()));
        self.events = merged;
    }
}

pub(crate) struct AmpState {
    orgs: BTreeMap<String, Org>,
    base_url: String,
    window: Duration,
    pub(crate) isolation_delay: Duration,
    next_event_id: u64,
}

impl AmpState {
    pub(crate) fn new(base_url: String, window: Duration, isolation_delay: Duration) -> AmpState {
        AmpState {
            orgs: BTreeMap::new(),
            base_url,
            window,
            isolation_delay,
            next_event_id: FIRST_EVENT_ID,
        }
    }

    fn org(&mut self, client_id: &str) -> Result<&mut Org, SimError> {
        self.orgs
            .get_mut(client_id)
            .ok_or_else(|| SimError::NotFound(format!("AMP organisation {client_id:?}")))
    }

    fn computer(&mut self, client_id: &str, guid: &str) -> Result<&mut Computer, SimError> {
        self.org(client_id)?
            .computers
            .get_mut(guid)
            .ok_or_else(|| SimError::NotFound(format!("computer {guid:?} of {client_id:?}")))
    }
}

/// Control handle of the Secure Endpoint simulator.
#[derive(Clone)]
pub struct AmpSim {
    pub(crate) shared: Arc<Shared>,
}

impl AmpSim {
    /// Adds (or replaces) an organisation.
    pub fn add_org(&self, spec: OrgSpec) {
        let mut st = lock(&self.shared.amp);
        let limiter = FixedWindow::new(spec.rate_limit_per_hour, st.window);
        st.orgs.insert(
            spec.client_id.clone(),
            Org {
                spec,
                groups: Vec::new(),
                computers: BTreeMap::new(),
                events: Vec::new(),
                limiter,
                events_requests: 0,
                injections: Vec::new(),
            },
        );
    }

    pub fn add_group(&self, client_id: &str, guid: &str, name: &str) -> Result<(), SimError> {
        let mut st = lock(&self.shared.amp);
        let org = st.org(client_id)?;
        org.groups.retain(|g| g.guid != guid);
        org.groups.push(Group {
            guid: guid.into(),
            name: name.into(),
        });
        Ok(())
    }

    /// Adds a computer; its group must exist in the organisation.
    pub fn add_computer(&self, client_id: &str, spec: ComputerSpec) -> Result<(), SimError> {
        let mut st = lock(&self.shared.amp);
        let org = st.org(client_id)?;
        if !org.groups.iter().any(|g| g.guid == spec.group_guid) {
            return Err(SimError::NotFound(format!(
                "group {:?} in AMP organisation {client_id:?}",
                spec.group_guid
            )));
        }
        org.computers.insert(
            spec.connector_guid.clone(),
            Computer {
                group_history: vec![spec.group_guid.clone()],
                spec,
                status: IsolationStatus::NotIsolated,
                since: Instant::now(),
                unlock_code: None,
                comment: None,
                isolated_by: None,
                isolation_requests: 0,
            },
        );
        Ok(())
    }

    /// Makes events available at once (they appear wherever their timestamps put them).
    ///
    /// This is also how an event *arrives late*: give it a timestamp in the past (an
    /// endpoint that was offline and reconnects) and it is listed among the events of
    /// that time, below newer ones already served, never at offset 0 — `GET /v1/events`
    /// filters by the event's own time (`start_date`) and lists newest first by it
    /// (Cisco API reference, `GET /v1/events`,
    /// https://api-docs.amp.cisco.com/api_actions/details?api_action=GET+%2Fv1%2Fevents&api_host=api.apjc.amp.cisco.com&api_resource=Event&api_version=v1;
    /// upstream-apis.md "GET /v1/events"). Nothing in the API tells when an event arrived.
    pub fn push_events(&self, client_id: &str, events: Vec<Event>) -> Result<(), SimError> {
        lock(&self.shared.amp).org(client_id)?.insert_events(events);
        Ok(())
    }

    /// Injects `events` right after the org serves its `n`-th `GET /v1/events` counted from
    /// now (`n` = 1: after the next one), so a pager's next offset shifts deterministically.
    pub fn inject_after_events_requests(
        &self,
        client_id: &str,
        n: u64,
        events: Vec<Event>,
    ) -> Result<(), SimError> {
        let mut st = lock(&self.shared.amp);
        let org = st.org(client_id)?;
        let at = org.events_requests + n.max(1);
        org.injections.push((at, events));
        Ok(())
    }

    /// Generates `n` realistic events for the org's computers (not pushed), oldest first,
    /// timestamps in the last minutes. The same seed on the same population gives the same
    /// mix; ids keep increasing across calls so they never collide.
    pub fn generate_events(
        &self,
        client_id: &str,
        seed: u64,
        n: usize,
    ) -> Result<Vec<Event>, SimError> {
        let mut st = lock(&self.shared.amp);
        let base_url = st.base_url.clone();
        let mut next_id = st.next_event_id;
        let hosts: Vec<Host> = st
            .org(client_id)?
            .computers
            .values()
            .map(Computer::host)
            .collect();
        let mut rng = StdRng::seed_from_u64(seed);
        let events = Generator {
            rng: &mut rng,
            hosts: &hosts,
            base_url: &base_url,
            next_id: &mut next_id,
        }
        .run(n, now_secs());
        st.next_event_id = next_id;
        Ok(events)
    }

    /// A fresh event id above 2^53 that no generated event uses.
    pub fn next_event_id(&self) -> u64 {
        let mut st = lock(&self.shared.amp);
        st.next_event_id += 1;
        st.next_event_id
    }

    /// Current events of the org, newest first.
    pub fn events(&self, client_id: &str) -> Result<Vec<Event>, SimError> {
        Ok(lock(&self.shared.amp).org(client_id)?.events.clone())
    }

    pub fn computer(&self, client_id: &str, guid: &str) -> Result<ComputerView, SimError> {
        let mut st = lock(&self.shared.amp);
        let delay = st.isolation_delay;
        let computer = st.computer(client_id, guid)?;
        computer.settle(Instant::now(), delay);
        Ok(computer.view())
    }

    pub fn computers(&self, client_id: &str) -> Result<Vec<ComputerView>, SimError> {
        let mut st = lock(&self.shared.amp);
        let delay = st.isolation_delay;
        let now = Instant::now();
        Ok(st
            .org(client_id)?
            .computers
            .values_mut()
            .map(|c| {
                c.settle(now, delay);
                c.view()
            })
            .collect())
    }

    /// An event of a published shape (see [`Sample`]) on one of the org's computers at
    /// `timestamp` (Unix seconds) with a fresh id above 2^53. Not pushed.
    pub fn sample_event(
        &self,
        client_id: &str,
        guid: &str,
        kind: Sample,
        timestamp: i64,
    ) -> Result<Event, SimError> {
        let mut st = lock(&self.shared.amp);
        st.next_event_id += 1;
        let id = st.next_event_id;
        let base_url = st.base_url.clone();
        let host = st
            .org(client_id)?
            .computers
            .get(guid)
            .map(Computer::host)
            .ok_or_else(|| SimError::NotFound(format!("computer {guid:?} of {client_id:?}")))?;
        Ok(event::sample(kind, id, timestamp, &host, &base_url))
    }

    /// An analyst isolates the computer in the console, under their own unlock code
    /// (isolated at once; `isolated_by` names the analyst).
    pub fn analyst_isolate(
        &self,
        client_id: &str,
        guid: &str,
        unlock_code: &str,
    ) -> Result<(), SimError> {
        let mut st = lock(&self.shared.amp);
        let c = st.computer(client_id, guid)?;
        c.status = IsolationStatus::Isolated;
        c.since = Instant::now();
        c.unlock_code = Some(unlock_code.to_string());
        c.comment = Some("isolated by an analyst in the console".into());
        c.isolated_by = Some("analyst@console".into());
        Ok(())
    }

    /// An analyst stops the computer's isolation in the console (released at once).
    pub fn analyst_stop_isolation(&self, client_id: &str, guid: &str) -> Result<(), SimError> {
        let mut st = lock(&self.shared.amp);
        let c = st.computer(client_id, guid)?;
        c.status = IsolationStatus::NotIsolated;
        c.since = Instant::now();
        c.unlock_code = None;
        c.isolated_by = None;
        Ok(())
    }

    /// An analyst moves the computer to another group in the console.
    pub fn analyst_move(&self, client_id: &str, guid: &str, group: &str) -> Result<(), SimError> {
        let mut st = lock(&self.shared.amp);
        let org = st.org(client_id)?;
        if !org.groups.iter().any(|g| g.guid == group) {
            return Err(SimError::NotFound(format!(
                "group {group:?} in AMP organisation {client_id:?}"
            )));
        }
        let c = org
            .computers
            .get_mut(guid)
            .ok_or_else(|| SimError::NotFound(format!("computer {guid:?} of {client_id:?}")))?;
        if c.spec.group_guid != group {
            c.spec.group_guid = group.to_string();
            c.group_history.push(group.to_string());
        }
        Ok(())
    }

    /// Changes how long pending isolation transitions take.
    pub fn set_isolation_delay(&self, delay: Duration) {
        lock(&self.shared.amp).isolation_delay = delay;
    }

    /// Client ids of all organisations.
    pub fn org_ids(&self) -> Vec<String> {
        lock(&self.shared.amp).orgs.keys().cloned().collect()
    }
}

// ---------------------------------------------------------------------------------------
// HTTP side

enum Route<'a> {
    Version,
    Events,
    EventTypes,
    Computer(&'a str),
    Isolation(&'a str),
    Groups,
    Group(&'a str),
    Unknown,
}

fn route(path: &str) -> Route<'_> {
    let segments: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
    match segments.as_slice() {
        ["v1", "version"] => Route::Version,
        ["v1", "events"] => Route::Events,
        ["v1", "event_types"] => Route::EventTypes,
        ["v1", "computers", guid] => Route::Computer(guid),
        ["v1", "computers", guid, "isolation"] => Route::Isolation(guid),
        ["v1", "groups"] => Route::Groups,
        ["v1", "groups", guid] => Route::Group(guid),
        _ => Route::Unknown,
    }
}

/// Route template used for request counting.
pub(crate) fn route_name(req: &Req) -> String {
    let template = match route(&req.path) {
        Route::Version => "/v1/version",
        Route::Events => "/v1/events",
        Route::EventTypes => "/v1/event_types",
        Route::Computer(_) => "/v1/computers/{guid}",
        Route::Isolation(_) => "/v1/computers/{guid}/isolation",
        Route::Groups => "/v1/groups",
        Route::Group(_) => "/v1/groups/{guid}",
        Route::Unknown => "(unknown)",
    };
    format!("{} {template}", req.method)
}

/// The tenant of a request: the Basic user, i.e. the API client id.
pub(crate) fn tenant(req: &Req) -> Option<String> {
    req.basic_auth().map(|(user, _)| user)
}

fn error(status: u16, description: &str, detail: &str) -> Reply {
    Reply::json(
        status,
        &json!({
            "version": VERSION,
            "data": {},
            "errors": [{"error_code": status, "description": description, "details": [detail]}]
        }),
    )
}

fn unauthorized() -> Reply {
    error(401, "Unauthorized", "Unknown API key or Client ID")
}

fn not_found(detail: &str) -> Reply {
    error(404, "Not Found", detail)
}

fn bad_request(detail: &str) -> Reply {
    error(400, "Bad Request", detail)
}

fn rate_headers(reply: Reply, style: RateLimitHeaders, d: &Decision) -> Reply {
    let reset = d.reset_secs();
    match style {
        RateLimitHeaders::Compact => reply
            .with_header("X-RateLimit-Limit", d.limit)
            .with_header("X-RateLimit-Remaining", d.remaining)
            .with_header("X-RateLimit-Reset", reset)
            .with_header(
                "X-RateLimit-ResetDate",
                amp_date(now_secs() + i64::try_from(reset).unwrap_or(0)),
            ),
        RateLimitHeaders::Dashed => reply
            .with_header("X-Rate-Limit-Limit", d.limit)
            .with_header("X-Rate-Limit-Remaining", d.remaining)
            .with_header("X-Rate-Limit-Reset", reset),
    }
}

fn too_many() -> Reply {
    error(429, "Too Many Requests", "API rate limit exceeded")
}

/// The Secure Endpoint 429: rate-limit headers with `Reset` in seconds, never `Retry-After`.
pub(crate) fn fault_429(
    shared: &Shared,
    tenant: Option<&str>,
    retry_after: u64,
    bare: bool,
) -> Reply {
    if bare {
        return too_many();
    }
    let st = lock(&shared.amp);
    let (limit, style) = tenant
        .and_then(|t| st.orgs.get(t))
        .map_or((3000, RateLimitHeaders::Compact), |o| {
            (o.spec.rate_limit_per_hour, o.spec.rate_limit_headers)
        });
    let decision = Decision {
        allowed: false,
        limit,
        remaining: 0,
        reset_in: Duration::from_secs(retry_after),
    };
    rate_headers(too_many(), style, &decision)
}

pub(crate) fn handle(shared: &Shared, req: &Req) -> Reply {
    let Some((client_id, api_key)) = req.basic_auth() else {
        return unauthorized();
    };
    let mut guard = lock(&shared.amp);
    let st = &mut *guard;
    let Some(org) = st.orgs.get_mut(&client_id) else {
        return unauthorized();
    };
    if org.spec.api_key != api_key {
        return unauthorized();
    }
    let decision = org.limiter.hit(Instant::now());
    let reply = if decision.allowed {
        let ctx = Ctx {
            base_url: &st.base_url,
            delay: st.isolation_delay,
            client_id: &client_id,
        };
        serve(org, req, &ctx)
    } else {
        too_many()
    };
    rate_headers(reply, org.spec.rate_limit_headers, &decision)
}

struct Ctx<'a> {
    base_url: &'a str,
    delay: Duration,
    client_id: &'a str,
}

fn serve(org: &mut Org, req: &Req, ctx: &Ctx<'_>) -> Reply {
    let method = req.method.as_str();
    match (method, route(&req.path)) {
        ("GET", Route::Version) => Reply::json(
            200,
            &json!({"version": VERSION, "metadata": {"links": {"self": format!("{}/v1/version", ctx.base_url)}}, "data": {}}),
        ),
        ("GET", Route::Events) => {
            let reply = list_events(org, req, ctx.base_url);
            org.events_requests += 1;
            let due = org.events_requests;
            let (ready, later): (Vec<_>, Vec<_>) = std::mem::take(&mut org.injections)
                .into_iter()
                .partition(|(at, _)| *at <= due);
            org.injections = later;
            for (_, events) in ready {
                org.insert_events(events);
            }
            reply
        }
        ("GET", Route::EventTypes) => event_types(ctx.base_url),
        ("GET", Route::Computer(guid)) => match org.computers.get_mut(guid) {
            Some(c) => {
                c.settle(Instant::now(), ctx.delay);
                Reply::json(
                    200,
                    &json!({"version": VERSION, "metadata": {}, "data": computer_json(c, org_policy(&org.spec), ctx.base_url)}),
                )
            }
            None => not_found("Computer not found"),
        },
        ("PATCH", Route::Computer(guid)) => move_computer(org, guid, req, ctx),
        ("GET", Route::Groups) => groups(org, req, ctx.base_url),
        ("GET", Route::Group(guid)) => match org.groups.iter().find(|g| g.guid == guid) {
            Some(g) => Reply::json(
                200,
                &json!({"version": VERSION, "metadata": {}, "data": group_json(g, ctx.base_url)}),
            ),
            None => not_found("Group not found"),
        },
        (_, Route::Isolation(guid)) => isolation(org, guid, req, ctx),
        (_, Route::Unknown) => not_found("Resource not found"),
        _ => error(
            405,
            "Method Not Allowed",
            "Method not allowed for this resource",
        ),
    }
}

fn org_policy(spec: &OrgSpec) -> Value {
    json!({"guid": format!("policy-{}", spec.client_id), "name": format!("{} Protect", spec.name)})
}

fn group_json(g: &Group, base_url: &str) -> Value {
    json!({
        "guid": g.guid,
        "name": g.name,
        "description": format!("{} computers", g.name),
        "source": "Created manually",
        "links": {"group": format!("{base_url}/v1/groups/{}", g.guid)},
    })
}

fn computer_json(c: &Computer, policy: Value, base_url: &str) -> Value {
    let s = &c.spec;
    json!({
        "connector_guid": s.connector_guid,
        "hostname": s.hostname,
        "active": true,
        "connector_version": "8.4.2.30317",
        "operating_system": s.operating_system,
        "os_version": "10.0.19045",
        "internal_ips": [s.internal_ip],
        "external_ip": s.external_ip,
        "group_guid": s.group_guid,
        "install_date": "2023-11-02T09:14:05Z",
        "is_compromised": false,
        "network_addresses": [{"mac": s.mac, "ip": s.internal_ip}],
        "policy": policy,
        "last_seen": amp_date(now_secs() - 42),
        "faults": [],
        "isolation": {"available": s.isolation_allowed, "status": c.status.as_str()},
        "links": {
            "computer": format!("{base_url}/v1/computers/{}", s.connector_guid),
            "trajectory": format!("{base_url}/v1/computers/{}/trajectory", s.connector_guid),
            "group": format!("{base_url}/v1/groups/{}", s.group_guid),
        }
    })
}

fn list_envelope(
    data: Vec<Value>,
    total: usize,
    offset: usize,
    limit: usize,
    links: Value,
) -> Value {
    json!({
        "version": VERSION,
        "metadata": {
            "links": links,
            "results": {
                "total": total,
                "current_item_count": data.len(),
                "index": offset,
                "items_per_page": limit,
            }
        },
        "data": data,
    })
}

fn paging(req: &Req) -> Result<(usize, usize), Reply> {
    let mut limit = MAX_LIMIT;
    let mut offset = 0;
    for (k, v) in req.query_pairs() {
        match k.as_str() {
            "limit" => match v.parse::<usize>() {
                Ok(n) if n > 0 => limit = n.min(MAX_LIMIT),
                _ => return Err(bad_request("limit must be a positive integer")),
            },
            "offset" => match v.parse::<usize>() {
                Ok(n) => offset = n,
                Err(_) => return Err(bad_request("offset must be a non-negative integer")),
            },
            _ => {}
        }
    }
    Ok((limit, offset))
}

fn page_links(
    base: &str,
    filters: &[(String, String)],
    total: usize,
    count: usize,
    limit: usize,
    offset: usize,
) -> Value {
    let url = |offset: usize| {
        let mut ser = form_urlencoded::Serializer::new(String::new());
        for (k, v) in filters {
            ser.append_pair(k, v);
        }
        ser.append_pair("limit", &limit.to_string());
        ser.append_pair("offset", &offset.to_string());
        format!("{base}?{}", ser.finish())
    };
    let mut links = serde_json::Map::new();
    links.insert("self".into(), json!(url(offset)));
    if offset + count < total {
        links.insert("next".into(), json!(url(offset + count.max(1))));
    }
    if offset > 0 {
        links.insert("prev".into(), json!(url(offset.saturating_sub(limit))));
    }
    Value::Object(links)
}

#[derive(Default)]
struct EventFilter {
    since: Option<(i64, u32)>,
    types: Vec<u64>,
    connectors: Vec<String>,
    groups: Vec<String>,
    detection_sha256: Option<String>,
    application_sha256: Option<String>,
}

impl EventFilter {
    /// Filter kinds are ANDed; values of one kind ORed (Cisco API reference, `GET
    /// /v1/events`, "Each criteria type is logically ANDed with the other criteria; each
    /// selection of a criteria is logically ORed"). `start_date` compares with the
    /// event's own `timestamp` (and `timestamp_nanoseconds`), not its arrival, and is
    /// inclusive: "Inclusive (The list will include events that match start_date)" (same
    /// page, https://api-docs.amp.cisco.com/api_actions/details?api_action=GET+%2Fv1%2Fevents&api_host=api.apjc.amp.cisco.com&api_resource=Event&api_version=v1).
    /// A partner collector relies on the same: it keeps the ids of the last second and
    /// re-queries from it (demisto/content
    /// Packs/AMP/Integrations/CiscoAMPEventCollector/CiscoAMPEventCollector.py @
    /// 1abbc1d2131293bcfd735f0567bef1bd31f4df27, `iterate_events`).
    fn accepts(&self, e: &Event) -> bool {
        self.since.is_none_or(|since| e.age_key() >= since)
            && (self.types.is_empty() || self.types.contains(&e.event_type_id))
            && (self.connectors.is_empty()
                || e.connector_guid
                    .as_ref()
                    .is_some_and(|g| self.connectors.contains(g)))
            && (self.groups.is_empty() || e.group_guids.iter().any(|g| self.groups.contains(g)))
            && self
                .detection_sha256
                .as_deref()
                .is_none_or(|sha| e.matches_detection_sha256(sha))
            && self
                .application_sha256
                .as_deref()
                .is_none_or(|sha| e.matches_application_sha256(sha))
    }
}

/// Parses the query of `GET /v1/events`; unexpected parameters are a 400, as upstream.
fn event_filter(req: &Req) -> Result<(EventFilter, Vec<(String, String)>), Reply> {
    let mut filter = EventFilter::default();
    let mut kept = Vec::new();
    for (k, v) in req.query_pairs() {
        match k.as_str() {
            "limit" | "offset" => continue,
            "start_date" => {
                let Some(at) = mssp_contract::civil::parse_nanos(&v) else {
                    return Err(bad_request(&format!(
                        "start_date {v:?} is not a valid ISO-8601 date-time"
                    )));
                };
                filter.since = Some(at);
            }
            "event_type[]" | "event_type" => match v.trim().parse::<u64>() {
                Ok(id) => filter.types.push(id),
                Err(_) => return Err(bad_request(&format!("event_type {v:?} is not an integer"))),
            },
            "connector_guid[]" | "connector_guid" => filter.connectors.push(v.clone()),
            "group_guid[]" | "group_guid" => filter.groups.push(v.clone()),
            "detection_sha256" => filter.detection_sha256 = Some(v.clone()),
            "application_sha256" => filter.application_sha256 = Some(v.clone()),
            other => return Err(bad_request(&format!("Unexpected parameter: {other}"))),
        }
        kept.push((k, v));
    }
    Ok((filter, kept))
}

fn list_events(org: &Org, req: &Req, base_url: &str) -> Reply {
    let (filter, kept) = match event_filter(req) {
        Ok(f) => f,
        Err(reply) => return reply,
    };
    let (limit, offset) = match paging(req) {
        Ok(p) => p,
        Err(reply) => return reply,
    };
    let matching: Vec<&Event> = org.events.iter().filter(|e| filter.accepts(e)).collect();
    let total = matching.len();
    let data: Vec<Value> = matching
        .iter()
        .skip(offset)
        .take(limit)
        .map(|e| serde_json::to_value(e).unwrap_or(Value::Null))
        .collect();
    let links = page_links(
        &format!("{base_url}/v1/events"),
        &kept,
        total,
        data.len(),
        limit,
        offset,
    );
    Reply::json(200, &list_envelope(data, total, offset, limit, links))
}

fn event_types(base_url: &str) -> Reply {
    let data: Vec<Value> = catalog::EVENT_TYPES
        .iter()
        .map(
            |(id, name)| json!({"id": id, "name": name, "description": catalog::description(name)}),
        )
        .collect();
    let total = data.len();
    let links = json!({"self": format!("{base_url}/v1/event_types")});
    Reply::json(200, &list_envelope(data, total, 0, total, links))
}

fn groups(org: &Org, req: &Req, base_url: &str) -> Reply {
    let (limit, offset) = match paging(req) {
        Ok(p) => p,
        Err(reply) => return reply,
    };
    let total = org.groups.len();
    let data: Vec<Value> = org
        .groups
        .iter()
        .skip(offset)
        .take(limit)
        .map(|g| group_json(g, base_url))
        .collect();
    let links = page_links(
        &format!("{base_url}/v1/groups"),
        &[],
        total,
        data.len(),
        limit,
        offset,
    );
    Reply::json(200, &list_envelope(data, total, offset, limit, links))
}

fn object_body(req: &Req) -> Result<serde_json::Map<String, Value>, Reply> {
    match req.json() {
        Ok(Some(Value::Object(map))) => Ok(map),
        Ok(None) => Ok(serde_json::Map::new()),
        Ok(Some(_)) | Err(_) => Err(bad_request("Request body is not a valid JSON object")),
    }
}

fn move_computer(org: &mut Org, guid: &str, req: &Req, ctx: &Ctx<'_>) -> Reply {
    let body = match object_body(req) {
        Ok(b) => b,
        Err(reply) => return reply,
    };
    if let Some(key) = body.keys().find(|k| k.as_str() != "group_guid") {
        return bad_request(&format!("Unexpected parameter: {key}"));
    }
    let Some(group) = body.get("group_guid").and_then(Value::as_str) else {
        return bad_request("group_guid is required");
    };
    if !org.groups.iter().any(|g| g.guid == group) {
        return bad_request(&format!("Invalid group_guid: {group}"));
    }
    let policy = org_policy(&org.spec);
    let status = org.spec.move_status;
    let Some(c) = org.computers.get_mut(guid) else {
        return not_found("Computer not found");
    };
    if c.spec.group_guid != group {
        c.spec.group_guid = group.to_string();
        c.group_history.push(group.to_string());
    }
    c.settle(Instant::now(), ctx.delay);
    Reply::json(
        status,
        &json!({"version": VERSION, "metadata": {}, "data": computer_json(c, policy, ctx.base_url)}),
    )
}

fn isolation_json(c: &Computer) -> Value {
    json!({
        "version": VERSION,
        "metadata": {},
        "data": {
            "available": c.spec.isolation_allowed,
            "status": c.status.as_str(),
            "unlock_code": c.unlock_code,
            "comment": c.comment,
            "isolated_by": c.isolated_by,
        }
    })
}

fn isolation(org: &mut Org, guid: &str, req: &Req, ctx: &Ctx<'_>) -> Reply {
    let Some(c) = org.computers.get_mut(guid) else {
        return not_found("Computer not found");
    };
    c.settle(Instant::now(), ctx.delay);
    let forbidden = || {
        error(
            405,
            "Method Not Allowed",
            "Isolation is not allowed by the policy of this computer",
        )
    };
    let transitional = || {
        error(
            409,
            "Conflict",
            "Computer isolation is in a transitional state",
        )
    };
    match req.method.as_str() {
        // OPTIONS lists the methods possible *now*: PUT only on a host that is not
        // isolated, DELETE only on an isolated one, neither while a transition is
        // pending; 405 when the policy forbids isolation. Source: Cisco Secure Endpoint
        // API v1 reference, "OPTIONS /v1/computers/{connector_guid}/isolation"
        // (upstream-apis.md §1: "PUT listed: can isolate; DELETE listed: can stop"),
        // read pessimistically: an isolated host offers no PUT, so a client that takes
        // "no PUT" for "policy forbids" mistakes an analyst's isolation for
        // unavailability (issue 14, finding 7).
        "OPTIONS" if !c.spec.isolation_allowed => forbidden(),
        "OPTIONS" => {
            let allow = match c.status {
                IsolationStatus::NotIsolated => "OPTIONS, GET, PUT",
                IsolationStatus::Isolated => "OPTIONS, GET, DELETE",
                _ => "OPTIONS, GET",
            };
            Reply::empty(204).with_header("Allow", allow)
        }
        "GET" => Reply::json(200, &isolation_json(c)),
        "PUT" | "DELETE" if !c.spec.isolation_allowed => forbidden(),
        "PUT" => {
            let body = match object_body(req) {
                Ok(b) => b,
                Err(reply) => return reply,
            };
            if let Some(key) = body
                .keys()
                .find(|k| !matches!(k.as_str(), "comment" | "unlock_code"))
            {
                return bad_request(&format!("Unexpected parameter: {key}"));
            }
            let unlock_code = match body.get("unlock_code") {
                None | Some(Value::Null) => None,
                Some(Value::String(code))
                    if !code.is_empty()
                        && code.chars().count() <= 24
                        && !code.chars().any(char::is_whitespace) =>
                {
                    Some(code.clone())
                }
                Some(_) => {
                    return bad_request("unlock_code must be 1 to 24 characters without spaces");
                }
            };
            let comment = match body.get("comment") {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) => Some(s.clone()),
                Some(_) => return bad_request("comment must be a string"),
            };
            match c.status {
                IsolationStatus::NotIsolated => {
                    c.status = IsolationStatus::PendingStart;
                    c.since = Instant::now();
                    c.unlock_code =
                        Some(unlock_code.unwrap_or_else(|| random_hex(&mut rand::rng(), 4)));
                    c.comment = comment;
                    c.isolated_by = Some(format!("API client {}", ctx.client_id));
                    c.isolation_requests += 1;
                    c.settle(Instant::now(), ctx.delay);
                    Reply::json(200, &isolation_json(c))
                }
                IsolationStatus::Isolated => error(409, "Conflict", "Computer is already isolated"),
                _ => transitional(),
            }
        }
        "DELETE" => {
            let body = match object_body(req) {
                Ok(b) => b,
                Err(reply) => return reply,
            };
            if let Some(key) = body.keys().find(|k| k.as_str() != "comment") {
                return bad_request(&format!("Unexpected parameter: {key}"));
            }
            match c.status {
                IsolationStatus::Isolated => {
                    c.status = IsolationStatus::PendingStop;
                    c.since = Instant::now();
                    if let Some(Value::String(comment)) = body.get("comment") {
                        c.comment = Some(comment.clone());
                    }
                    c.isolation_requests += 1;
                    c.settle(Instant::now(), ctx.delay);
                    Reply::json(200, &isolation_json(c))
                }
                IsolationStatus::NotIsolated => error(409, "Conflict", "Computer is not isolated"),
                _ => transitional(),
            }
        }
        _ => error(
            405,
            "Method Not Allowed",
            "Method not allowed for this resource",
        ),
    }
}
