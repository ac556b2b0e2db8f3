//! The HTTP routes the guest serves (contracts.md), as a plain function of a buffered
//! request. Every answer is JSON; no answer ever carries a secret.

use mssp_contract::civil;
use mssp_contract::incident::{IncidentList, IncidentSummary};
use serde_json::{Value, json};

use crate::backfill;
use crate::callback;
use mssp_contract::access::{Access, Route, RouteError, Shown};

use crate::config::{Config, ConfigError};
use crate::cursor::Cursor;
use crate::incident::{IncidentRecord, State};
use crate::lifecycle::Worker;
use crate::pipeline;
use crate::ports::Ports;
use crate::report::TickReport;
use crate::store::{self, Index};
use crate::upstream::Upstream;

/// Largest request body accepted (callbacks are tiny).
pub const MAX_BODY: usize = 64 * 1024;
/// Largest body of `POST /v1/bench/pipeline` (one events page), for a caller that
/// presents the tick token.
pub const MAX_BENCH_BODY: usize = 8 * 1024 * 1024;

/// The body size accepted for a request, decided from its path and headers before the
/// body is read: only an authenticated bench request may be large.
pub fn body_limit(path: &str, headers: &[(String, String)], access: &Access) -> usize {
    let req = ApiRequest {
        method: "POST".into(),
        path: path.into(),
        headers: headers.to_vec(),
        body: Vec::new(),
    };
    let bench = Route::parse("POST", path) == Ok(Route::BenchPipeline);
    if bench && access.admit(Route::BenchPipeline, &req, 0).is_ok() {
        MAX_BENCH_BODY
    } else {
        MAX_BODY
    }
}

#[derive(Debug, Clone)]
pub struct ApiRequest {
    pub method: String,
    /// Path and query, as the guest sees it.
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl ApiRequest {
    fn header(&self, name: &str) -> Option<&str> {
        crate::ports::find_header(&self.headers, name)
    }
}

impl Shown for ApiRequest {
    fn header(&self, name: &str) -> Option<&str> {
        ApiRequest::header(self, name)
    }
    fn body(&self) -> &[u8] {
        &self.body
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ApiResponse {
    pub status: u16,
    pub body: Value,
    /// The work this request did upstream (a tick, a closing callback), for
    /// the host's log line and counters, as a cron tick reports it.
    pub report: Option<Box<TickReport>>,
}

fn reply(status: u16, body: Value) -> ApiResponse {
    ApiResponse {
        status,
        body,
        report: None,
    }
}

pub fn error(status: u16, message: impl Into<String>) -> ApiResponse {
    reply(status, json!({ "error": message.into() }))
}

/// Answers one request of the component's HTTP API. `access` says who may call which
/// route (`mssp_contract::access`, taken from the raw configuration, so it holds when
/// `cfg` is refused); it is checked before anything else is read.
pub fn handle(
    req: &ApiRequest,
    ports: &mut Ports<'_>,
    cfg: &Result<Config, ConfigError>,
    access: &Access,
) -> ApiResponse {
    let path = Route::path_of(&req.path);
    let route = match Route::parse(&req.method, &req.path) {
        Ok(r) => r,
        Err(RouteError::NotFound) => {
            return error(
                404,
                format!("no route {} {path}", req.method.to_ascii_uppercase()),
            );
        }
        Err(RouteError::Method { allowed }) => {
            return error(
                405,
                format!(
                    "{path} answers {allowed} only, not {}",
                    req.method.to_ascii_uppercase()
                ),
            );
        }
    };
    let now_secs = ports.clock.now_ms().div_euclid(1000);
    if let Err(refused) = access.admit(route, req, now_secs) {
        return error(refused.status, refused.reason);
    }
    let cfg = match cfg {
        Ok(c) => c,
        // The status shows why the configuration is refused.
        Err(e) if route == Route::Status => return status(ports, Err(e)),
        Err(e) => return error(503, e.to_string()),
    };
    match route {
        Route::Incident => incident(ports, Route::incident_key(&req.path).unwrap_or_default()),
        Route::Incidents => incidents(ports, &req.path),
        Route::ServiceNowEvents => servicenow_event(req, ports, cfg),
        Route::Backfill => backfill_request(req, ports),
        Route::BenchPipeline => bench_pipeline(req, ports, cfg),
        Route::Tick => tick(ports, cfg),
        Route::Status => status(ports, Ok(cfg)),
    }
}

fn status(ports: &mut Ports<'_>, cfg: Result<&Config, &ConfigError>) -> ApiResponse {
    let mut body = json!({ "service": "mssp-bridge" });
    match cfg {
        Ok(c) => {
            body["customer"] = json!(c.customer_name);
            body["config"] = json!("ok");
            body["containment"] = json!(c.containment.name());
        }
        Err(e) => body["config"] = json!(e.to_string()),
    }
    let kv = &mut *ports.kv;
    match store::get_json::<Cursor>(kv, store::CURSOR) {
        Ok(Some(c)) => {
            body["cursor"] =
                json!({"since": civil::iso_seconds(c.since), "remembered_ids": c.recent.len()})
        }
        Ok(None) => body["cursor"] = Value::Null,
        Err(e) => body["cursor"] = json!({"error": e.to_string()}),
    }
    match Index::load(kv) {
        Ok(index) => {
            let mut counts = serde_json::Map::new();
            for s in State::ALL {
                let n = index.entries.iter().filter(|e| e.state == s).count();
                if n > 0 {
                    counts.insert(s.as_str().into(), json!(n));
                }
            }
            body["active_incidents"] = Value::Object(counts);
        }
        Err(e) => body["active_incidents"] = json!({"error": e.to_string()}),
    }
    body["last_tick"] = store::get_json::<TickReport>(kv, store::LAST_TICK)
        .ok()
        .flatten()
        .map_or(Value::Null, |r| json!(r));
    body["backfill"] = backfill::status(kv);
    body["counters"] = match store::get_json::<crate::upstream::Counters>(kv, store::COUNTERS) {
        Ok(c) => json!(c.unwrap_or_default()),
        Err(e) => json!({"error": e.to_string()}),
    };
    body["rate_limited_until"] = store::get_json::<crate::upstream::Throttle>(kv, store::THROTTLE)
        .ok()
        .flatten()
        .map_or(Value::Null, |t| json!(t));
    reply(200, body)
}

fn summary(rec: &IncidentRecord) -> IncidentSummary {
    IncidentSummary {
        key: rec.key.clone(),
        state: rec.state,
        detection_id: rec.detection_id.clone(),
        host: rec
            .events
            .iter()
            .find_map(|e| e.hostname())
            .map(str::to_string),
        events: rec.event_ids.len(),
        xdr_id: rec.xdr.as_ref().map(|x| x.short_id.clone()),
        xdr_url: rec.xdr.as_ref().map(|x| x.id.clone()),
        snow_sys_id: rec.snow.as_ref().map(|s| s.sys_id.clone()),
        snow_number: rec.snow.as_ref().map(|s| s.number.clone()),
        created_at: civil::iso_millis(rec.created_at),
        updated_at: civil::iso_millis(rec.updated_at),
        last_error: rec.last_error.clone(),
    }
}

/// A query parameter of `path?a=b&c=d` (values are plain tokens here: no decoding).
fn query_param<'p>(path: &'p str, name: &str) -> Option<&'p str> {
    path.split_once('?')?
        .1
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// `GET /v1/incidents[?state=open][&limit=N]`, newest first (limit 500 by default).
fn incidents(ports: &mut Ports<'_>, path: &str) -> ApiResponse {
    let state = query_param(path, "state");
    if let Some(s) = state
        && !State::ALL.iter().any(|x| x.as_str() == s)
    {
        return error(400, format!("unknown state \"{s}\""));
    }
    let limit = match query_param(path, "limit").map(str::parse::<usize>) {
        None => 500,
        Some(Ok(n)) if n > 0 => n,
        Some(_) => return error(400, "limit must be a positive whole number"),
    };
    let keys = match ports.kv.list_keys(store::INCIDENT_PREFIX) {
        Ok(k) => k,
        Err(e) => return error(500, format!("listing incidents: {e}")),
    };
    let mut list = Vec::new();
    let mut unreadable = Vec::new();
    for k in keys {
        match store::get_json::<IncidentRecord>(ports.kv, &k) {
            Ok(Some(rec)) if state.is_none_or(|s| rec.state.as_str() == s) => list.push(rec),
            Ok(_) => {}
            Err(e) => unreadable.push(e.to_string()),
        }
    }
    list.sort_by(|a, b| {
        b.created_at
            .cmp(&a.created_at)
            .then_with(|| a.key.cmp(&b.key))
    });
    let incidents: Vec<IncidentSummary> = list.iter().take(limit).map(summary).collect();
    let body = IncidentList {
        count: incidents.len(),
        total: list.len(),
        incidents,
        unreadable,
    };
    reply(200, serde_json::to_value(body).unwrap_or_default())
}

fn incident(ports: &mut Ports<'_>, key: &str) -> ApiResponse {
    match store::load_incident(ports.kv, key) {
        Ok(Some(rec)) => reply(200, rec.public_view()),
        Ok(None) => error(404, format!("no incident with key \"{key}\"")),
        Err(e) => error(500, e.to_string()),
    }
}

fn tick(ports: &mut Ports<'_>, cfg: &Config) -> ApiResponse {
    let report = pipeline::run_tick(ports, cfg);
    let status = if report.outcome == "failed" { 500 } else { 200 };
    ApiResponse {
        report: Some(Box::new(report.clone())),
        ..reply(status, json!(report))
    }
}

/// `POST /v1/bench/pipeline`, body = one events page: runs `bench::process_page` (the
/// same function the native benchmark runs) and times it with the monotonic clock.
fn bench_pipeline(req: &ApiRequest, ports: &mut Ports<'_>, cfg: &Config) -> ApiResponse {
    let started = ports.clock.monotonic_ns();
    let result = crate::bench::process_page(&req.body, cfg);
    let elapsed_ns = ports.clock.monotonic_ns().saturating_sub(started);
    match result {
        Ok(s) => reply(
            200,
            json!({"events": s.events, "groups": s.groups, "xdr_bytes": s.xdr_bytes,
                   "snow_bytes": s.snow_bytes, "elapsed_ns": elapsed_ns}),
        ),
        Err(why) => error(400, format!("not an events page: {why}")),
    }
}

/// `POST /v1/backfill {"since": <unix seconds>[, "restart": true]}`: recorded here, run
/// by the following ticks (see `backfill`).
fn backfill_request(req: &ApiRequest, ports: &mut Ports<'_>) -> ApiResponse {
    let now = ports.clock.now_ms().div_euclid(1000);
    let request = match backfill::parse_request(&req.body, now) {
        Ok(r) => r,
        Err(why) => return error(400, format!("malformed backfill request: {why}")),
    };
    match backfill::running(ports.kv) {
        Ok(true) if !request.restart => {
            return error(
                409,
                "a backfill is already running; send \"restart\": true to replace it",
            );
        }
        Ok(_) => {}
        Err(e) => return error(500, e.to_string()),
    }
    if let Err(e) = store::put_json(ports.kv, backfill::REQUEST, &request) {
        return error(500, e.to_string());
    }
    reply(202, json!({"accepted": true, "since": request.since}))
}

/// `POST /v1/servicenow/events`: 401 bad or stale signature, 400 malformed, 404 unknown
/// incident; otherwise idempotent. Nothing is written before all checks pass.
fn servicenow_event(req: &ApiRequest, ports: &mut Ports<'_>, cfg: &Config) -> ApiResponse {
    let ev = match callback::parse(&req.body) {
        Ok(ev) => ev,
        Err(why) => return error(400, format!("malformed callback: {why}")),
    };
    let rec = match find_incident(ports, &ev) {
        Ok(Some(rec)) => rec,
        Ok(None) => {
            return error(
                404,
                format!(
                    "no incident for sys_id {} / correlation_id {}",
                    ev.sys_id,
                    ev.correlation_id.as_deref().unwrap_or("-")
                ),
            );
        }
        Err(e) => return error(500, e),
    };
    if !cfg.close_states.contains(&ev.state) {
        return reply(
            200,
            json!({"key": rec.key, "state": rec.state, "result": format!("state {} is not a closing state; nothing to do", ev.state)}),
        );
    }
    if rec.state >= State::Closing {
        return reply(
            200,
            json!({"key": rec.key, "state": rec.state, "result": "already closing or closed; nothing changed"}),
        );
    }
    if rec.state < State::Open {
        return reply(
            202,
            json!({"key": rec.key, "state": rec.state, "result": "incident is not open in the bridge yet; the reconcile poll will close it"}),
        );
    }
    let owner = pipeline::lease_owner(ports);
    let now = ports.clock.now_ms();
    match store::acquire_lease(ports.kv, &owner, now, pipeline::lease_ttl_ms(cfg)) {
        Ok(true) => {}
        Ok(false) => {
            return reply(
                202,
                json!({"key": rec.key, "state": rec.state, "result": "a tick is running; the next reconcile poll closes it"}),
            );
        }
        Err(e) => return error(500, format!("taking the worker lease: {e}")),
    }
    let index = match Index::load(ports.kv) {
        Ok(i) => i,
        Err(e) => {
            let _ = store::release_lease(ports.kv, &owner);
            return error(500, format!("reading the incident index: {e}"));
        }
    };
    let report = TickReport {
        started_at: civil::iso_millis(now),
        outcome: "callback".into(),
        ..TickReport::default()
    };
    let up = Upstream::new(ports, cfg, cfg.tick_budget_ms);
    let mut w = Worker::new(up, index, report, owner.clone());
    let result = close_now(&mut w, &rec.key, &ev);
    let flushed = w.flush();
    w.up.finish();
    let mut report = w.report;
    w.up.account(&mut report);
    crate::upstream::record_counters(&mut *w.up.ports.kv, &report);
    let _ = store::release_lease(&mut *w.up.ports.kv, &owner);
    let answer = match result.and_then(|rec| flushed.map(|()| rec).map_err(|e| e.to_string())) {
        Ok(rec) => reply(
            200,
            json!({"key": rec.key, "state": rec.state, "result": "close performed", "last_error": rec.last_error}),
        ),
        Err(e) => error(500, e),
    };
    ApiResponse {
        report: Some(Box::new(report)),
        ..answer
    }
}

fn close_now(
    w: &mut Worker<'_, '_>,
    key: &str,
    ev: &callback::SnowEvent,
) -> Result<IncidentRecord, String> {
    // Re-read under the lease: a tick may have moved it since.
    let mut rec = store::load_incident(w.up.ports.kv, key)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("incident {key} vanished"))?;
    let now = w.up.now_ms();
    if rec.begin_close("callback", &ev.state, ev.close_code.as_deref(), now) {
        w.checkpoint(&mut rec, "closing")
            .map_err(|e| e.to_string())?;
        w.drive(&mut rec).map_err(|e| e.to_string())?;
    }
    Ok(rec)
}

/// By correlation_id (the incident key) when given, else (or when that finds nothing)
/// by sys_id; a record whose ServiceNow sys_id differs from the callback's is no match.
fn find_incident(
    ports: &mut Ports<'_>,
    ev: &callback::SnowEvent,
) -> Result<Option<IncidentRecord>, String> {
    let by_sys_id = ports
        .kv
        .get(&store::snow_key(&ev.sys_id))
        .map_err(|e| e.to_string())?
        .map(|b| String::from_utf8_lossy(&b).into_owned());
    for key in ev.correlation_id.iter().chain(by_sys_id.iter()) {
        let rec = store::load_incident(ports.kv, key).map_err(|e| e.to_string())?;
        if let Some(rec) = rec.filter(|r| r.snow.as_ref().is_none_or(|s| s.sys_id == ev.sys_id)) {
            return Ok(Some(rec));
        }
    }
    Ok(None)
}
