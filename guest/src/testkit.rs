//! Scripted fakes of the outside world for native tests and benchmarks (feature
//! `testkit`): an in-memory store, a manual
//! clock, and one fake HTTP upstream that behaves like the three services (as described
//! in upstream-apis.md), records every request, and injects scripted faults.

use std::collections::{BTreeMap, HashMap};

use serde_json::{Value, json};

use crate::config::{Config, ConfigError};
use crate::ports::{Clock, Http, HttpError, Kv, KvError, Method, Ports, Request, Response};

#[derive(Default)]
pub struct FakeKv {
    pub map: BTreeMap<String, Vec<u8>>,
    /// Every key written (`set` and successful compare-and-swap), in order.
    pub writes: Vec<String>,
}

impl FakeKv {
    pub fn json(&self, key: &str) -> Option<Value> {
        self.map
            .get(key)
            .map(|b| serde_json::from_slice(b).unwrap())
    }
}

impl Kv for FakeKv {
    fn get(&mut self, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        Ok(self.map.get(key).cloned())
    }
    fn set(&mut self, key: &str, value: &[u8]) -> Result<(), KvError> {
        self.writes.push(key.into());
        self.map.insert(key.into(), value.to_vec());
        Ok(())
    }
    fn delete(&mut self, key: &str) -> Result<(), KvError> {
        self.map.remove(key);
        Ok(())
    }
    fn list_keys(&mut self, prefix: &str) -> Result<Vec<String>, KvError> {
        Ok(self
            .map
            .keys()
            .filter(|k| k.starts_with(prefix))
            .cloned()
            .collect())
    }
    fn compare_and_swap(
        &mut self,
        key: &str,
        expected: Option<&[u8]>,
        new: &[u8],
    ) -> Result<bool, KvError> {
        if self.map.get(key).map(Vec::as_slice) != expected {
            return Ok(false);
        }
        self.map.insert(key.into(), new.to_vec());
        Ok(true)
    }
}

pub struct FakeClock {
    pub now_ms: i64,
    pub mono_ms: u64,
    pub slept_ms: Vec<u64>,
    seed: u64,
}

impl FakeClock {
    pub fn at(now_secs: i64) -> Self {
        FakeClock {
            now_ms: now_secs * 1000,
            mono_ms: 1_000,
            slept_ms: Vec::new(),
            seed: 42,
        }
    }
    pub fn advance(&mut self, ms: u64) {
        self.now_ms += ms as i64;
        self.mono_ms += ms;
    }
}

impl Clock for FakeClock {
    fn now_ms(&self) -> i64 {
        self.now_ms
    }
    fn monotonic_ms(&self) -> u64 {
        self.mono_ms
    }
    fn sleep_ms(&mut self, ms: u64) {
        self.slept_ms.push(ms);
        self.advance(ms);
    }
    fn random_u64(&mut self) -> u64 {
        self.seed = self
            .seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.seed >> 11
    }
}

/// A scripted fault: the next `times` requests matching `method` and `path_contains`
/// get `answer` instead of the simulated service.
pub struct Fault {
    pub method: Method,
    pub path_contains: String,
    pub times: usize,
    pub answer: Result<Response, HttpError>,
    /// Let the request reach the service first (its effect happens), then answer.
    pub after_effect: bool,
}

#[derive(Debug, Clone)]
pub struct Logged {
    pub method: Method,
    pub url: String,
    pub body: String,
    pub auth: String,
}

impl Logged {
    pub fn path(&self) -> &str {
        let rest = self.url.split_once("://").map_or(&*self.url, |(_, r)| r);
        rest.find('/').map_or("/", |i| &rest[i..])
    }
    pub fn is(&self, method: Method, path_prefix: &str) -> bool {
        self.method == method && self.path().starts_with(path_prefix)
    }
}

#[derive(Clone)]
pub struct Computer {
    pub group_guid: String,
    pub isolation: String,
    pub unlock_code: Option<String>,
}

impl Default for Computer {
    fn default() -> Self {
        Computer {
            group_guid: "group-original".into(),
            isolation: "not_isolated".into(),
            unlock_code: None,
        }
    }
}

#[derive(Default)]
pub struct FakeUpstream {
    pub log: Vec<Logged>,
    pub faults: Vec<Fault>,
    /// Secure Endpoint events, any order (served newest first).
    pub events: Vec<Value>,
    /// Largest page served (the `limit` asked for applies when smaller).
    pub page_size: usize,
    /// Events that reach the service right after its n-th `GET /v1/events` (counted
    /// from 1), as they do while a client pages.
    pub arrivals: Vec<(usize, Vec<Value>)>,
    pub events_requests: usize,
    /// The last listing: `(start, types, events.len())` → positions in `events` (sorted
    /// newest first), so paging a large fake backlog stays cheap.
    listing: Option<(i64, Vec<u64>, usize, Vec<usize>)>,
    pub computers: HashMap<String, Computer>,
    pub isolation_allowed: bool,
    /// PUT isolation leaves the host in pending_start, and DELETE is refused there.
    pub isolation_stays_pending: bool,
    pub xdr_incidents: Vec<Value>,
    pub xdr_bundles: Vec<Value>,
    pub tokens_issued: usize,
    pub snow_incidents: Vec<Value>,
    pub snow_notes: HashMap<String, Vec<String>>,
}

pub fn resp(status: u16, body: Value) -> Response {
    Response {
        status,
        headers: vec![("content-type".into(), "application/json".into())],
        body: if body.is_null() {
            Vec::new()
        } else {
            body.to_string().into_bytes()
        },
    }
}

pub fn resp_with(status: u16, headers: &[(&str, &str)], body: &str) -> Response {
    Response {
        status,
        headers: headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        body: body.as_bytes().to_vec(),
    }
}

fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16)
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(if b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    String::from_utf8(out).unwrap()
}

fn query(url: &str) -> Vec<(String, String)> {
    url.split_once('?')
        .map(|(_, q)| {
            q.split('&')
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (decode(k), decode(v)))
                .collect()
        })
        .unwrap_or_default()
}

impl FakeUpstream {
    pub fn new() -> Self {
        FakeUpstream {
            page_size: 500,
            isolation_allowed: true,
            ..Default::default()
        }
    }

    pub fn fault(
        &mut self,
        method: Method,
        path: &str,
        times: usize,
        answer: Result<Response, HttpError>,
    ) {
        self.faults.push(Fault {
            method,
            path_contains: path.into(),
            times,
            answer,
            after_effect: false,
        });
    }

    pub fn fault_after_effect(
        &mut self,
        method: Method,
        path: &str,
        answer: Result<Response, HttpError>,
    ) {
        self.faults.push(Fault {
            method,
            path_contains: path.into(),
            times: 1,
            answer,
            after_effect: true,
        });
    }

    pub fn calls(&self, method: Method, path_prefix: &str) -> usize {
        self.log
            .iter()
            .filter(|l| l.is(method, path_prefix))
            .count()
    }

    pub fn host_calls(&self, host: &str) -> usize {
        self.log.iter().filter(|l| l.url.contains(host)).count()
    }

    fn route(&mut self, req: &Request) -> Response {
        let url = req.url.clone();
        let rest = url.split_once("://").map_or(&*url, |(_, r)| r);
        let (host, path_q) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let path = path_q.split('?').next().unwrap_or("");
        let body: Value = serde_json::from_slice(&req.body).unwrap_or(Value::Null);
        match host {
            "amp.test" => self.amp(req.method, path, &url, &body),
            "xdr.test" => self.xdr(req, path, &body),
            "snow.test" => self.snow(req.method, path, &url, &body),
            _ => resp(404, json!({"error": "unknown host"})),
        }
    }

    fn amp(&mut self, method: Method, path: &str, url: &str, body: &Value) -> Response {
        let q = query(url);
        let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
        match (method, segs.as_slice()) {
            (Method::Get, ["v1", "events"]) => {
                let start = q
                    .iter()
                    .find(|(k, _)| k == "start_date")
                    .and_then(|(_, v)| mssp_contract::civil::parse(v))
                    .unwrap_or(0);
                let types: Vec<u64> = q
                    .iter()
                    .filter(|(k, _)| k == "event_type[]")
                    .filter_map(|(_, v)| v.parse().ok())
                    .collect();
                let offset: usize = q
                    .iter()
                    .find(|(k, _)| k == "offset")
                    .and_then(|(_, v)| v.parse().ok())
                    .unwrap_or(0);
                let limit: usize = q
                    .iter()
                    .find(|(k, _)| k == "limit")
                    .and_then(|(_, v)| v.parse().ok())
                    .unwrap_or(500)
                    .min(self.page_size);
                let fresh_listing = self.listing.as_ref().is_some_and(|(s, t, n, _)| {
                    *s == start && *t == types && *n == self.events.len()
                });
                if !fresh_listing {
                    // Newest first; a stable sort keeps arrival order among equal times.
                    let ts = |e: &Value| e["timestamp"].as_i64().unwrap_or(i64::MAX);
                    self.events.sort_by_key(|e| std::cmp::Reverse(ts(e)));
                    let positions = (0..self.events.len())
                        .filter(|&i| {
                            let e = &self.events[i];
                            // `start_date` is inclusive, as the simulator has it
                            // (sim/src/amp/mod.rs, `EventFilter::accepts`).
                            ts(e) >= start
                                && (types.is_empty()
                                    || e["event_type_id"]
                                        .as_u64()
                                        .is_some_and(|t| types.contains(&t)))
                        })
                        .collect();
                    self.listing = Some((start, types, self.events.len(), positions));
                }
                let matching: &[usize] = self.listing.as_ref().map_or(&[], |l| &l.3);
                let page: Vec<Value> = matching
                    .iter()
                    .skip(offset)
                    .take(limit)
                    .map(|&i| self.events[i].clone())
                    .collect();
                let mut links = json!({"self": url});
                if offset + limit < matching.len() {
                    let base = url.split("&offset=").next().unwrap_or(url);
                    links["next"] = json!(format!("{base}&offset={}", offset + limit));
                }
                let total = matching.len();
                self.events_requests += 1;
                let n = self.events_requests;
                for (_, batch) in self.arrivals.iter_mut().filter(|(at, _)| *at == n) {
                    self.events.append(batch);
                }
                resp_headers(resp(
                    200,
                    json!({"version": "v1.2.0", "metadata": {"links": links, "results": {"total": total}}, "data": page}),
                ))
            }
            (Method::Get, ["v1", "event_types"]) => resp(
                200,
                json!({"data": [
                    {"id": 1_090_519_054u64, "name": "Threat Detected", "description": "d"},
                    {"id": 2_164_260_880u64, "name": "Quarantine Failure", "description": "d"},
                ]}),
            ),
            (Method::Get, ["v1", "computers", guid]) => {
                let c = self.computers.entry(guid.to_string()).or_default();
                resp(
                    200,
                    json!({"data": {"connector_guid": guid, "hostname": "host-1", "group_guid": c.group_guid, "isolation": {"available": true, "status": c.isolation}}}),
                )
            }
            (Method::Patch, ["v1", "computers", guid]) => {
                let c = self.computers.entry(guid.to_string()).or_default();
                c.group_guid = body["group_guid"].as_str().unwrap_or("").into();
                resp(
                    202,
                    json!({"data": {"connector_guid": guid, "group_guid": c.group_guid}}),
                )
            }
            (m, ["v1", "computers", guid, "isolation"]) => {
                let allowed = self.isolation_allowed;
                let pending = self.isolation_stays_pending;
                let c = self.computers.entry(guid.to_string()).or_default();
                match m {
                    // The methods possible now, as the simulator answers them
                    // (sim/src/amp/mod.rs `isolation`): isolated → stop only.
                    Method::Options if allowed => {
                        let allow = match c.isolation.as_str() {
                            "not_isolated" => "OPTIONS, GET, PUT",
                            "isolated" => "OPTIONS, GET, DELETE",
                            _ => "OPTIONS, GET",
                        };
                        resp_with(204, &[("Allow", allow)], "")
                    }
                    Method::Options => resp(
                        405,
                        json!({"errors": [{"details": ["isolation not allowed by policy"]}]}),
                    ),
                    Method::Get => resp(
                        200,
                        json!({"data": {"available": true, "status": c.isolation, "unlock_code": c.unlock_code}}),
                    ),
                    Method::Put if c.isolation == "not_isolated" => {
                        c.isolation = if pending { "pending_start" } else { "isolated" }.into();
                        c.unlock_code = body["unlock_code"].as_str().map(String::from);
                        resp(200, json!({"data": {"status": c.isolation}}))
                    }
                    Method::Put => {
                        resp(409, json!({"errors": [{"details": ["already isolated"]}]}))
                    }
                    Method::Delete
                        if c.isolation == "isolated"
                            || (c.isolation == "pending_start" && !pending) =>
                    {
                        c.isolation = "not_isolated".into();
                        resp(200, json!({"data": {"status": "pending_stop"}}))
                    }
                    Method::Delete => resp(
                        409,
                        json!({"errors": [{"details": [format!("cannot stop in state {}", c.isolation)]}]}),
                    ),
                    _ => resp(405, Value::Null),
                }
            }
            _ => resp(404, json!({"errors": [{"details": ["no such route"]}]})),
        }
    }

    fn xdr(&mut self, req: &Request, path: &str, body: &Value) -> Response {
        if path == "/iroh/oauth2/token" {
            self.tokens_issued += 1;
            return resp(
                200,
                json!({"access_token": format!("tok-{}", self.tokens_issued), "token_type": "bearer", "expires_in": 600}),
            );
        }
        let auth = req
            .headers
            .iter()
            .find(|(k, _)| k == "authorization")
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        if auth != format!("Bearer tok-{}", self.tokens_issued) {
            return resp(401, json!({"error": "invalid_token"}));
        }
        let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
        match (req.method, segs.as_slice()) {
            (Method::Post, ["ctia", "bundle", "import"]) => {
                self.xdr_bundles.push(body.clone());
                // As `sim/src/xdr.rs` `bundle_import` (CTIA `filter-external-ids`): only
                // external ids starting with a prefix of `external-key-prefixes` are
                // looked up; absent, the pessimistic default `ctia-`.
                let prefixes: Vec<String> = query(&req.url)
                    .into_iter()
                    .find(|(k, _)| k == "external-key-prefixes")
                    .map_or_else(
                        || vec!["ctia-".to_string()],
                        |(_, v)| v.split(',').map(|p| p.trim().to_string()).collect(),
                    );
                let usable: Vec<&str> = incident_ext_ids(body)
                    .into_iter()
                    .filter(|e| prefixes.iter().any(|p| e.starts_with(p.as_str())))
                    .collect();
                let mut results = Vec::new();
                for incident in body["incidents"].as_array().into_iter().flatten() {
                    let existing = self.xdr_incidents.iter().find(|i| {
                        i["external_ids"].as_array().is_some_and(|ids| {
                            ids.iter().any(|x| {
                                x.as_str().is_some_and(|x| usable.contains(&x))
                                    && incident["external_ids"]
                                        .as_array()
                                        .is_some_and(|a| a.contains(x))
                            })
                        })
                    });
                    let (id, result) = match existing {
                        Some(i) => (i["id"].clone(), "exists"),
                        None => {
                            let id = json!(format!(
                                "http://xdr.test:443/ctia/incident/incident-{}",
                                self.xdr_incidents.len() + 1
                            ));
                            let mut stored = incident.clone();
                            stored["id"] = id.clone();
                            stored["type"] = json!("incident");
                            self.xdr_incidents.push(stored);
                            (id, "created")
                        }
                    };
                    results.push(json!({"type": "incident", "result": result, "id": id, "original_id": incident["id"]}));
                }
                for sighting in body["sightings"].as_array().into_iter().flatten() {
                    results.push(if sighting["count"].as_u64().is_none() {
                        json!({"type": "sighting", "result": "error", "error": {"count": "missing"}})
                    } else {
                        json!({"type": "sighting", "result": "created"})
                    });
                }
                resp(200, json!({"results": results}))
            }
            (Method::Patch, ["ctia", "incident", id]) => {
                let Some(inc) = self.xdr_incident_mut(id) else {
                    return resp(404, json!({"error": "not found"}));
                };
                xdr_patch(inc, body.clone(), "2030-01-01T00:00:00.000Z");
                resp(200, inc.clone())
            }
            (Method::Get, ["ctia", "incident", id]) => match self.xdr_incident_mut(id) {
                Some(inc) => resp(200, inc.clone()),
                None => resp(404, json!({"error": "not found"})),
            },
            // As `sim/src/xdr.rs` `bulk_read` (CTIA `fetch-bulk`): found entities only,
            // in store order (not the request's), unknown ids absent.
            (Method::Get, ["ctia", "bulk"]) => {
                let wanted: Vec<String> = query(&req.url)
                    .into_iter()
                    .filter(|(k, _)| k == "incidents")
                    .map(|(_, v)| v.rsplit('/').next().unwrap_or("").to_string())
                    .collect();
                if wanted.len() > 2000 {
                    return resp(400, json!("Bulk max number of entities: 2000"));
                }
                let found: Vec<Value> = self
                    .xdr_incidents
                    .iter()
                    .rev()
                    .filter(|i| {
                        i["id"]
                            .as_str()
                            .is_some_and(|x| wanted.iter().any(|w| x.rsplit('/').next() == Some(w)))
                    })
                    .cloned()
                    .collect();
                resp(200, json!({"incidents": found}))
            }
            _ => resp(404, json!({"error": "no such route"})),
        }
    }

    fn xdr_incident_mut(&mut self, short_id: &str) -> Option<&mut Value> {
        self.xdr_incidents.iter_mut().find(|i| {
            i["id"]
                .as_str()
                .is_some_and(|x| x.rsplit('/').next() == Some(short_id))
        })
    }

    /// An analyst edits an XDR incident (PATCH semantics, status logic included; `now`
    /// is the time CTIA would stamp). Panics when the incident does not exist.
    pub fn xdr_analyst_patch(&mut self, short_id: &str, fields: Value, now: &str) {
        let inc = self.xdr_incident_mut(short_id).expect("XDR incident");
        xdr_patch(inc, fields, now);
    }

    fn snow(&mut self, method: Method, path: &str, url: &str, body: &Value) -> Response {
        let q = query(url);
        let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
        match (method, segs.as_slice()) {
            (Method::Post, ["api", "now", "table", "incident"]) => {
                let n = self.snow_incidents.len() + 1;
                let mut rec = body.clone();
                rec["sys_id"] = json!(format!("{n:032x}"));
                rec["number"] = json!(format!("INC{:07}", 10_000 + n));
                rec["state"] = json!("1");
                if let Some(note) = body["work_notes"].as_str() {
                    self.snow_notes
                        .entry(format!("{n:032x}"))
                        .or_default()
                        .push(note.into());
                }
                rec["work_notes"] = json!("");
                self.snow_incidents.push(rec.clone());
                resp(201, json!({"result": rec}))
            }
            (Method::Get, ["api", "now", "table", "incident"]) => {
                let query = q
                    .iter()
                    .find(|(k, _)| k == "sysparm_query")
                    .map(|(_, v)| v.clone())
                    .unwrap_or_default();
                let found: Vec<Value> = self
                    .snow_incidents
                    .iter()
                    .filter(|r| {
                        query.split('^').all(|cond| {
                            if let Some(v) = cond.strip_prefix("correlation_id=") {
                                r["correlation_id"] == json!(v)
                            } else if let Some(list) = cond.strip_prefix("sys_idIN") {
                                list.split(',').any(|s| r["sys_id"] == json!(s.trim()))
                            } else if let Some(list) = cond.strip_prefix("stateIN") {
                                list.split(',').any(|s| r["state"] == json!(s.trim()))
                            } else {
                                true
                            }
                        })
                    })
                    .cloned()
                    .collect();
                resp(200, json!({"result": found}))
            }
            (Method::Patch, ["api", "now", "table", "incident", sys_id]) => {
                let Some(rec) = self
                    .snow_incidents
                    .iter_mut()
                    .find(|r| r["sys_id"] == json!(sys_id))
                else {
                    return resp(
                        404,
                        json!({"error": {"message": "No Record found", "detail": "x"}, "status": "failure"}),
                    );
                };
                if let Some(note) = body["work_notes"].as_str() {
                    self.snow_notes
                        .entry(sys_id.to_string())
                        .or_default()
                        .push(note.into());
                }
                resp(200, json!({"result": rec}))
            }
            _ => resp(404, json!({"error": {"message": "no such route"}})),
        }
    }

    /// ServiceNow side: an analyst resolves or closes the incident.
    pub fn snow_set_state(&mut self, sys_id: &str, state: &str) {
        let rec = self
            .snow_incidents
            .iter_mut()
            .find(|r| r["sys_id"] == json!(sys_id))
            .unwrap();
        rec["state"] = json!(state);
        rec["close_code"] = json!("Solved (Permanently)");
    }
}

/// External ids of a bundle's incidents.
fn incident_ext_ids(bundle: &Value) -> Vec<&str> {
    bundle["incidents"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|i| i["external_ids"].as_array().into_iter().flatten())
        .filter_map(Value::as_str)
        .collect()
}

/// CTIA's PATCH as `sim/src/xdr.rs` does it: maps merged, lists and values replaced;
/// a status change into `Closed*` from a non-closed status stamps `closed` = `now`,
/// closed → closed keeps the stored `closed` (`apply-status-update-logic`).
fn xdr_patch(inc: &mut Value, patch: Value, now: &str) {
    let closed = |v: &Value| {
        v.as_str()
            .is_some_and(|s| s == "Closed" || s.starts_with("Closed: "))
    };
    let old_status = inc["status"].clone();
    let old_closed = inc["incident_time"]["closed"].clone();
    for (k, v) in patch.as_object().cloned().unwrap_or_default() {
        match (inc.get_mut(&k), v) {
            (Some(Value::Object(cur)), Value::Object(new)) => {
                for (k2, v2) in new {
                    cur.insert(k2, v2);
                }
            }
            (_, v) => inc[k] = v,
        }
    }
    let new_status = inc["status"].clone();
    if new_status != old_status && closed(&new_status) {
        let t = if closed(&old_status) && !old_closed.is_null() {
            old_closed
        } else {
            json!(now)
        };
        if !inc["incident_time"].is_object() {
            inc["incident_time"] = json!({});
        }
        inc["incident_time"]["closed"] = t;
    }
}

fn resp_headers(mut r: Response) -> Response {
    r.headers.push(("X-RateLimit-Limit".into(), "3000".into()));
    r.headers
        .push(("X-RateLimit-Remaining".into(), "2999".into()));
    r.headers.push(("X-RateLimit-Reset".into(), "3600".into()));
    r
}

impl Http for FakeUpstream {
    fn send(&mut self, req: &Request) -> Result<Response, HttpError> {
        let auth = req
            .headers
            .iter()
            .find(|(k, _)| k == "authorization")
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        self.log.push(Logged {
            method: req.method,
            url: req.url.clone(),
            body: String::from_utf8_lossy(&req.body).into(),
            auth,
        });
        let logged = self.log.last().cloned().unwrap();
        if let Some(i) = self.faults.iter().position(|f| {
            f.times > 0 && f.method == req.method && logged.path().contains(&f.path_contains)
        }) {
            self.faults[i].times -= 1;
            let answer = self.faults[i].answer.clone();
            if self.faults[i].after_effect {
                self.route(req);
            }
            return answer;
        }
        Ok(self.route(req))
    }
}

pub fn base_map() -> HashMap<String, String> {
    [
        ("customer_name", "Acme"),
        ("amp_base_url", "http://127.0.0.1:9001/"),
        ("amp_client_id", "amp-client"),
        ("amp_api_key", "amp-key-secret"),
        ("xdr_auth_url", "http://127.0.0.1:9002"),
        ("xdr_api_url", "http://127.0.0.1:9002"),
        ("xdr_client_id", "xdr-client"),
        ("xdr_client_secret", "xdr-secret-value"),
        ("snow_base_url", "http://127.0.0.1:9003"),
        ("snow_user", "bridge"),
        ("snow_password", "snow-pass-secret"),
        ("callback_key", "c2VjcmV0LWtleS0xMjM0NQ=="),
        ("tick_token", "tick-token-secret"),
        // Scenarios read the routes as an analyst's browser would; reads without a
        // credential are refused unless a tenant opts in (see the scenario
        // `by_default_the_read_routes_refuse_anonymous_reads`).
        ("open_reads", "true"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

pub fn config_from(map: &HashMap<String, String>) -> Result<Config, ConfigError> {
    Config::from_getter(&|k| map.get(k).cloned())
}

impl Default for World {
    fn default() -> Self {
        let mut config = base_map();
        config.insert("amp_base_url".into(), "https://amp.test".into());
        config.insert("xdr_auth_url".into(), "https://xdr.test".into());
        config.insert("xdr_api_url".into(), "https://xdr.test".into());
        config.insert("snow_base_url".into(), "https://snow.test".into());
        // The scenarios written before `reconcile_interval_secs` reconcile every tick;
        // the cadence has its own scenarios (`scenarios_budget`).
        config.insert("reconcile_interval_secs".into(), "0".into());
        World {
            config,
            kv: FakeKv::default(),
            clock: FakeClock::at(NOW),
            up: FakeUpstream::new(),
        }
    }
}

/// A whole fake world: config, store, clock, upstream.
pub struct World {
    pub config: HashMap<String, String>,
    pub kv: FakeKv,
    pub clock: FakeClock,
    pub up: FakeUpstream,
}

pub const NOW: i64 = 1_700_000_000;

impl World {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn set(&mut self, key: &str, value: &str) {
        self.config.insert(key.into(), value.into());
    }

    pub fn cfg(&self) -> Config {
        config_from(&self.config).unwrap()
    }

    pub fn ports(&mut self) -> Ports<'_> {
        Ports {
            http: &mut self.up,
            kv: &mut self.kv,
            clock: &mut self.clock,
        }
    }

    pub fn tick(&mut self) -> crate::report::TickReport {
        let cfg = self.cfg();
        crate::pipeline::run_tick(&mut self.ports(), &cfg)
    }

    /// A tick that may trap (debug_crash_after): returns the panic message, if any.
    pub fn tick_may_crash(&mut self) -> Option<String> {
        let cfg = self.cfg();
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            crate::pipeline::run_tick(&mut self.ports(), &cfg)
        }));
        match result {
            Ok(_) => None,
            Err(p) => Some(p.downcast_ref::<String>().cloned().unwrap_or_default()),
        }
    }

    pub fn incidents(&self) -> Vec<crate::incident::IncidentRecord> {
        self.kv
            .map
            .iter()
            .filter(|(k, _)| k.starts_with(crate::store::INCIDENT_PREFIX))
            .map(|(_, v)| serde_json::from_slice(v).unwrap())
            .collect()
    }

    pub fn api(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> crate::api::ApiResponse {
        let cfg = config_from(&self.config);
        let req = crate::api::ApiRequest {
            method: method.into(),
            path: path.into(),
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            body: body.to_vec(),
        };
        let access = mssp_contract::access::Access::from_config(&|k| self.config.get(k).cloned());
        crate::api::handle(&req, &mut self.ports(), &cfg, &access)
    }
}

/// A Secure Endpoint event as the API sends it.
pub fn amp_event(id: u64, ts: i64, type_id: u64, detection: Option<&str>, host: &str) -> Value {
    let type_name = match type_id {
        1_090_519_054 => "Threat Detected",
        2_164_260_880 => "Quarantine Failure",
        553_648_143 => "Threat Quarantined",
        _ => "Something",
    };
    let mut e = json!({
        "id": id, "timestamp": ts, "timestamp_nanoseconds": 0,
        "date": mssp_contract::civil::iso_offset(ts), "event_type": type_name, "event_type_id": type_id,
        "detection": "W32.Test", "connector_guid": format!("guid-{host}"), "severity": "High",
        "computer": {"connector_guid": format!("guid-{host}"), "hostname": host, "external_ip": "203.0.113.7",
                     "user": "alice@ACME", "network_addresses": [{"ip": "10.0.0.7", "mac": "AA:bb:cc:dd:ee:ff"}]},
        "file": {"disposition": "Malicious", "file_name": "evil.exe", "file_path": "C:\\evil.exe",
                 "identity": {"sha256": "ab".repeat(32)}},
        "tactics": ["TA0002"], "techniques": ["T1204"],
    });
    if let Some(d) = detection {
        e["detection_id"] = json!(d);
    }
    e
}
