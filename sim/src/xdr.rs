//! Cisco XDR: the OAuth2 token host and the CTIA incident API on the private intel host.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};

use crate::clock::{ctia_time, now_unix};
use crate::ratelimit::SlidingWindow;
use crate::server::{Reply, Req};
use crate::{Shared, SimError, lock, random_hex};

const SCHEMA_VERSION: &str = "1.3.9";
const SCOPE: &str = "casebook enrich:read global-intel:read inspect:read integration notification orbital private-intel profile registry/user/ribbon response telemetry:write users:read";

const CONFIDENCE: &[&str] = &["Info", "Low", "Medium", "High", "None", "Unknown"];
const SEVERITY: &[&str] = &[
    "Info", "Low", "Medium", "High", "Critical", "None", "Unknown",
];
const TLP: &[&str] = &["red", "amber", "green", "white"];
const STATUS: &[&str] = &[
    "New",
    "Open",
    "Stalled",
    "Hold",
    "Containment Achieved",
    "Restoration Achieved",
    "Incident Reported",
    "Closed",
    "Rejected",
    "New: Presented",
    "New: Processing",
    "Open: Investigating",
    "Open: Communication",
    "Open: Report",
    "Open: Contained",
    "Open: Recovered",
    "Closed: False Positive",
    "Closed: Near-Miss",
    "Closed: Other",
    "Closed: Confirmed Threat",
    "Closed: Merged",
    "Closed: Suspected",
];
/// Members the server fills; accepted in bodies (clients echo them back) but never taken.
const SERVER_MANAGED: &[&str] = &[
    "id",
    "type",
    "schema_version",
    "owner",
    "groups",
    "timestamp",
];
const INCIDENT_FIELDS: &[&str] = &[
    "confidence",
    "status",
    "incident_time",
    "title",
    "description",
    "short_description",
    "source",
    "source_uri",
    "external_ids",
    "external_references",
    "severity",
    "tlp",
    "promotion_method",
    "tactics",
    "techniques",
    "revision",
    "language",
    "categories",
    "discovery_method",
    "intended_effect",
    "assignees",
    "scores",
    "meta",
];

struct Client {
    secret: String,
    limiter: SlidingWindow,
}

struct Token {
    client_id: String,
    expires: Instant,
}

/// Entities of one kind in creation order, keyed by short id (`incident-<uuid>`).
#[derive(Default)]
struct Store {
    order: Vec<String>,
    by_id: HashMap<String, Value>,
}

impl Store {
    fn insert(&mut self, short_id: String, entity: Value) {
        if !self.by_id.contains_key(&short_id) {
            self.order.push(short_id.clone());
        }
        self.by_id.insert(short_id, entity);
    }

    fn remove(&mut self, short_id: &str) {
        self.by_id.remove(short_id);
        self.order.retain(|id| id != short_id);
    }

    fn iter(&self) -> impl Iterator<Item = &Value> {
        self.order.iter().filter_map(|id| self.by_id.get(id))
    }

    fn all(&self) -> Vec<Value> {
        self.iter().cloned().collect()
    }

    /// First entity of `org` carrying external id `ext`.
    fn find_external(&self, org: &str, ext: &str) -> Option<&Value> {
        self.iter()
            .find(|e| owned_by(e, org) && has_external_id(e, ext))
    }
}

pub(crate) struct XdrState {
    clients: BTreeMap<String, Client>,
    tokens: HashMap<String, Token>,
    token_ttl: Duration,
    window: Duration,
    default_limit: u32,
    api_base: String,
    incidents: Store,
    sightings: Store,
    relationships: Store,
    /// CTIA's configured `external-key-prefixes` (see [`bundle_import`]).
    external_key_prefixes: Vec<String>,
}

impl XdrState {
    pub(crate) fn new(
        api_base: String,
        token_ttl: Duration,
        window: Duration,
        default_limit: u32,
        external_key_prefixes: Vec<String>,
    ) -> XdrState {
        XdrState {
            clients: BTreeMap::new(),
            tokens: HashMap::new(),
            token_ttl,
            window,
            default_limit,
            api_base,
            incidents: Store::default(),
            sightings: Store::default(),
            relationships: Store::default(),
            external_key_prefixes,
        }
    }

    fn store(&mut self, kind: Kind) -> &mut Store {
        match kind {
            Kind::Incident => &mut self.incidents,
            Kind::Sighting => &mut self.sightings,
            Kind::Relationship => &mut self.relationships,
        }
    }
}

/// Control handle of the XDR simulator.
#[derive(Clone)]
pub struct XdrSim {
    pub(crate) shared: Arc<Shared>,
}

impl XdrSim {
    /// Adds (or replaces) an API client; each client is its own organisation.
    pub fn add_client(&self, client_id: &str, secret: &str) {
        let mut st = lock(&self.shared.xdr);
        let limiter = SlidingWindow::new(st.default_limit, st.window);
        st.clients.insert(
            client_id.into(),
            Client {
                secret: secret.into(),
                limiter,
            },
        );
    }

    /// Requests per rolling rate window for one client (default 8000).
    pub fn set_rate_limit(&self, client_id: &str, per_window: u32) -> Result<(), SimError> {
        let mut st = lock(&self.shared.xdr);
        let window = st.window;
        let client = st
            .clients
            .get_mut(client_id)
            .ok_or_else(|| SimError::NotFound(format!("XDR client {client_id:?}")))?;
        client.limiter = SlidingWindow::new(per_window, window);
        Ok(())
    }

    /// Lifetime of tokens issued from now on (`expires_in` follows it).
    pub fn set_token_ttl(&self, ttl: Duration) {
        lock(&self.shared.xdr).token_ttl = ttl;
    }

    /// Makes every issued token invalid at once (the next API call gets 401).
    pub fn expire_tokens(&self) {
        lock(&self.shared.xdr).tokens.clear();
    }

    /// CTIA's configured `external-key-prefixes`: what `POST /ctia/bundle/import`
    /// deduplicates by when the request names no prefixes (empty: every external id).
    pub fn set_external_key_prefixes(&self, prefixes: &[&str]) {
        lock(&self.shared.xdr).external_key_prefixes =
            prefixes.iter().map(|p| p.to_string()).collect();
    }

    /// An analyst changes an incident's status in XDR (the console's status menu, which
    /// uses `POST /ctia/incident/{id}/status`): CTIA's `apply-status-update-logic` stamps
    /// the times (see [`apply_status_update_logic`]). `id` is the short or the URL id.
    /// Returns the stored incident.
    pub fn analyst_set_status(&self, id: &str, status: &str) -> Result<Value, SimError> {
        let mut map = Map::new();
        map.insert("status".into(), json!(status));
        self.analyst_patch(id, map)
    }

    /// An analyst edits an incident in XDR (`PATCH /ctia/incident/{id}` semantics: see
    /// [`patch_incident`]), e.g. `{"description": "…", "severity": "Low"}`.
    pub fn analyst_edit(&self, id: &str, fields: Value) -> Result<Value, SimError> {
        let Value::Object(map) = fields else {
            return Err(SimError::Invalid("fields must be a JSON object".into()));
        };
        self.analyst_patch(id, map)
    }

    fn analyst_patch(&self, id: &str, map: Map<String, Value>) -> Result<Value, SimError> {
        let mut st = lock(&self.shared.xdr);
        let short = short_id(id).to_string();
        let owner = st
            .incidents
            .by_id
            .get(&short)
            .and_then(|e| e.get("owner"))
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| SimError::NotFound(format!("XDR incident {id:?}")))?;
        patch_incident(&mut st, &short, &owner, map, true)
            .map_err(|r| SimError::Invalid(String::from_utf8_lossy(&r.body).into_owned()))
    }

    /// All incidents, in creation order.
    pub fn incidents(&self) -> Vec<Value> {
        lock(&self.shared.xdr).incidents.all()
    }

    /// One incident by short id (`incident-<uuid>`) or full URL id.
    pub fn incident(&self, id: &str) -> Option<Value> {
        lock(&self.shared.xdr)
            .incidents
            .by_id
            .get(short_id(id))
            .cloned()
    }

    pub fn sightings(&self) -> Vec<Value> {
        lock(&self.shared.xdr).sightings.all()
    }

    pub fn relationships(&self) -> Vec<Value> {
        lock(&self.shared.xdr).relationships.all()
    }
}

/// Last path segment of a CTIA id URL (or the id itself).
fn short_id(id: &str) -> &str {
    id.rsplit('/').next().unwrap_or(id)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Incident,
    Sighting,
    Relationship,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Incident => "incident",
            Kind::Sighting => "sighting",
            Kind::Relationship => "relationship",
        }
    }
}

// ---------------------------------------------------------------------------------------
// Token host

pub(crate) fn auth_route_name(req: &Req) -> String {
    let template = if req.path == "/iroh/oauth2/token" {
        "/iroh/oauth2/token"
    } else {
        "(unknown)"
    };
    format!("{} {template}", req.method)
}

pub(crate) fn auth_tenant(req: &Req) -> Option<String> {
    req.basic_auth().map(|(user, _)| user)
}

fn oauth_error(status: u16, error: &str, description: &str) -> Reply {
    Reply::json(
        status,
        &json!({"error": error, "error_description": description}),
    )
}

fn too_many(retry_after: Option<u64>) -> Reply {
    let reply = Reply::json(
        429,
        &json!({"error": "too_many_requests", "error_description": "Rate limit exceeded, retry later"}),
    );
    match retry_after {
        Some(secs) => reply.with_header("Retry-After", secs),
        None => reply,
    }
}

/// The XDR 429 flavour: `Retry-After` seconds.
pub(crate) fn fault_429(retry_after: u64, bare: bool) -> Reply {
    too_many((!bare).then_some(retry_after))
}

pub(crate) fn handle_auth(shared: &Shared, req: &Req) -> Reply {
    if req.path != "/iroh/oauth2/token" {
        return Reply::json(404, &json!({"error": "not_found", "message": "Not Found"}));
    }
    if req.method != http::Method::POST {
        return Reply::json(405, &json!({"error": "method_not_allowed"}));
    }
    let Some((client_id, secret)) = req.basic_auth() else {
        return oauth_error(401, "invalid_client", "Client authentication failed");
    };
    let mut st = lock(&shared.xdr);
    let ttl = st.token_ttl;
    let Some(client) = st.clients.get_mut(&client_id) else {
        return oauth_error(401, "invalid_client", "Client authentication failed");
    };
    if client.secret != secret {
        return oauth_error(401, "invalid_client", "Client authentication failed");
    }
    let decision = client.limiter.hit(Instant::now());
    if !decision.allowed {
        return too_many(Some(decision.reset_secs()));
    }
    let form_ok = req.header("content-type").is_some_and(|ct| {
        ct.to_ascii_lowercase()
            .starts_with("application/x-www-form-urlencoded")
    });
    if !form_ok {
        return oauth_error(
            400,
            "invalid_request",
            "Content-Type must be application/x-www-form-urlencoded",
        );
    }
    let grant = form_urlencoded::parse(&req.body)
        .find(|(k, _)| k == "grant_type")
        .map(|(_, v)| v.into_owned());
    if grant.as_deref() != Some("client_credentials") {
        return oauth_error(
            400,
            "unsupported_grant_type",
            "grant_type must be client_credentials",
        );
    }
    let token = format!("sim-xdr.{}", random_hex(&mut rand::rng(), 24));
    // Forget long-dead tokens (kept a while so late callers still get "expired").
    let now = Instant::now();
    st.tokens
        .retain(|_, t| t.expires + ttl.max(Duration::from_secs(60)) > now);
    st.tokens.insert(
        token.clone(),
        Token {
            client_id,
            expires: now + ttl,
        },
    );
    Reply::json(
        200,
        &json!({"access_token": token, "token_type": "bearer", "expires_in": ttl.as_secs(), "scope": SCOPE}),
    )
}

// ---------------------------------------------------------------------------------------
// CTIA host

enum Route {
    Create(Kind),
    Entity(Kind, String),
    ByExternalId(String),
    Status(String),
    BundleImport,
    Bulk,
    Unknown,
}

fn decode_segment(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

fn route(path: &str) -> Route {
    let segments: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
    let kind = |s: &str| match s {
        "incident" => Some(Kind::Incident),
        "sighting" => Some(Kind::Sighting),
        "relationship" => Some(Kind::Relationship),
        _ => None,
    };
    match segments.as_slice() {
        ["ctia", "bundle", "import"] => Route::BundleImport,
        ["ctia", "bulk"] => Route::Bulk,
        ["ctia", "incident", "external_id", ext] => Route::ByExternalId(decode_segment(ext)),
        ["ctia", "incident", id, "status"] => Route::Status(decode_segment(id)),
        ["ctia", k] => kind(k).map_or(Route::Unknown, Route::Create),
        ["ctia", k, id] => kind(k).map_or(Route::Unknown, |k| Route::Entity(k, decode_segment(id))),
        _ => Route::Unknown,
    }
}

pub(crate) fn api_route_name(req: &Req) -> String {
    let template = match route(&req.path) {
        Route::Create(k) => format!("/ctia/{}", k.name()),
        Route::Entity(k, _) => format!("/ctia/{}/{{id}}", k.name()),
        Route::ByExternalId(_) => "/ctia/incident/external_id/{external_id}".into(),
        Route::Status(_) => "/ctia/incident/{id}/status".into(),
        Route::BundleImport => "/ctia/bundle/import".into(),
        Route::Bulk => "/ctia/bulk".into(),
        Route::Unknown => "(unknown)".into(),
    };
    format!("{} {template}", req.method)
}

/// The tenant of a CTIA request: the client id that owns its bearer token (expired or not).
pub(crate) fn api_tenant(shared: &Shared, req: &Req) -> Option<String> {
    let token = req.bearer()?;
    lock(&shared.xdr)
        .tokens
        .get(&token)
        .map(|t| t.client_id.clone())
}

fn not_found() -> Reply {
    Reply::json(
        404,
        &json!({"error": "not_found", "message": "The entity could not be found"}),
    )
}

fn invalid(what: &str, errors: BTreeMap<String, String>) -> Reply {
    let summary: Vec<String> = errors.iter().map(|(k, v)| format!("{k}: {v}")).collect();
    Reply::json(
        400,
        &json!({
            "errors": errors,
            "message": format!("Invalid {what}: {}", summary.join("; ")),
        }),
    )
}

fn bad_body() -> Reply {
    Reply::json(
        400,
        &json!({"errors": {"body": "must be a JSON object"}, "message": "Malformed request body"}),
    )
}

pub(crate) fn handle_api(shared: &Shared, req: &Req) -> Reply {
    let mut st = lock(&shared.xdr);
    let now = Instant::now();
    let token = req.bearer();
    let client_id = match token.as_ref().and_then(|t| st.tokens.get(t)) {
        Some(t) if t.expires > now => t.client_id.clone(),
        Some(_) => return bearer_401("The access token expired"),
        None => return bearer_401("Unknown or missing access token"),
    };
    let Some(client) = st.clients.get_mut(&client_id) else {
        return bearer_401("The client of this token no longer exists");
    };
    let decision = client.limiter.hit(now);
    if !decision.allowed {
        return too_many(Some(decision.reset_secs()));
    }
    let org = client_id;
    let body = || match req.json() {
        Ok(Some(Value::Object(map))) => Ok(map),
        _ => Err(bad_body()),
    };
    let method = req.method.as_str();
    match (method, route(&req.path)) {
        ("POST", Route::Create(kind)) => match body() {
            Ok(map) => create(&mut st, kind, map, &org).map_or_else(
                |errors| invalid(kind.name(), errors),
                |entity| Reply::json(201, &entity),
            ),
            Err(reply) => reply,
        },
        ("GET", Route::Entity(kind, id)) => match visible(&mut st, kind, &id, &org) {
            Some(entity) => Reply::json(200, &entity),
            None => not_found(),
        },
        ("DELETE", Route::Entity(kind, id)) => {
            if visible(&mut st, kind, &id, &org).is_none() {
                return not_found();
            }
            st.store(kind).remove(&id);
            Reply::empty(204)
        }
        ("PUT" | "PATCH", Route::Entity(Kind::Incident, id)) => {
            if visible(&mut st, Kind::Incident, &id, &org).is_none() {
                return not_found();
            }
            let map = match body() {
                Ok(m) => m,
                Err(reply) => return reply,
            };
            let short = short_id(&id).to_string();
            match patch_incident(&mut st, &short, &org, map, method == "PATCH") {
                Ok(entity) => Reply::json(200, &entity),
                Err(reply) => reply,
            }
        }
        ("GET", Route::ByExternalId(ext)) => {
            let found: Vec<Value> = st
                .incidents
                .iter()
                .filter(|i| owned_by(i, &org) && has_external_id(i, &ext))
                .cloned()
                .collect();
            Reply::json(200, &Value::Array(found))
        }
        ("POST", Route::Status(id)) => {
            // CTIA `POST /ctia/incident/:id/status` (src/ctia/entity/incident.clj,
            // `incident-additional-routes`, at 44810147): a patch-flow of `{:status s}`
            // with `:patch-operation :replace`, realized by `realize-incident`, i.e. the
            // same path as a PATCH naming only `status`; the times come from
            // `apply-status-update-logic` alone.
            if visible(&mut st, Kind::Incident, &id, &org).is_none() {
                return not_found();
            }
            let status = match body() {
                Ok(map) => map.get("status").cloned(),
                Err(reply) => return reply,
            };
            let Some(status) = status.filter(|s| s.as_str().is_some_and(|s| STATUS.contains(&s)))
            else {
                let mut errors = BTreeMap::new();
                errors.insert("status".to_string(), format!("must be one of {STATUS:?}"));
                return invalid("status update", errors);
            };
            let mut map = Map::new();
            map.insert("status".into(), status);
            let short = short_id(&id).to_string();
            match patch_incident(&mut st, &short, &org, map, true) {
                Ok(entity) => Reply::json(200, &entity),
                Err(reply) => reply,
            }
        }
        ("GET", Route::Bulk) => bulk_read(&mut st, req, &org),
        ("POST", Route::BundleImport) => match body() {
            Ok(map) => {
                let prefixes = req.query_param("external-key-prefixes");
                Reply::json(200, &bundle_import(&mut st, map, &org, prefixes.as_deref()))
            }
            Err(reply) => reply,
        },
        (_, Route::Unknown) => not_found(),
        _ => Reply::json(405, &json!({"error": "method_not_allowed"})),
    }
}

fn bearer_401(description: &str) -> Reply {
    oauth_error(401, "invalid_token", description)
        .with_header("WWW-Authenticate", "Bearer error=\"invalid_token\"")
}

fn owned_by(entity: &Value, org: &str) -> bool {
    entity.get("owner").and_then(Value::as_str) == Some(org)
}

fn has_external_id(entity: &Value, ext: &str) -> bool {
    entity
        .get("external_ids")
        .and_then(Value::as_array)
        .is_some_and(|ids| ids.iter().any(|i| i.as_str() == Some(ext)))
}

/// The entity if it exists and belongs to the caller's organisation (others get 404).
fn visible(st: &mut XdrState, kind: Kind, id: &str, org: &str) -> Option<Value> {
    st.store(kind)
        .by_id
        .get(short_id(id))
        .filter(|e| owned_by(e, org))
        .cloned()
}

fn strip_managed(mut map: Map<String, Value>) -> Map<String, Value> {
    for key in SERVER_MANAGED {
        map.remove(*key);
    }
    map
}

fn new_uuid() -> String {
    let h = random_hex(&mut rand::rng(), 16);
    format!(
        "{}-{}-4{}-a{}-{}",
        &h[0..8],
        &h[8..12],
        &h[13..16],
        &h[17..20],
        &h[20..32]
    )
}

/// Adds the server-managed members, keeping id, owner and groups of `previous`.
fn finish_entity(
    api_base: &str,
    kind: Kind,
    short: &str,
    mut map: Map<String, Value>,
    previous: &Value,
) -> Value {
    let (secs, nanos) = now_unix();
    map.insert(
        "id".into(),
        json!(format!("{api_base}/ctia/{}/{short}", kind.name())),
    );
    map.insert("type".into(), json!(kind.name()));
    map.insert("schema_version".into(), json!(SCHEMA_VERSION));
    for key in ["owner", "groups"] {
        if let Some(v) = previous.get(key) {
            map.insert(key.into(), v.clone());
        }
    }
    map.insert("timestamp".into(), json!(ctia_time(secs, nanos)));
    if kind != Kind::Relationship && !map.contains_key("tlp") {
        map.insert("tlp".into(), json!("green"));
    }
    Value::Object(map)
}

fn create(
    st: &mut XdrState,
    kind: Kind,
    map: Map<String, Value>,
    org: &str,
) -> Result<Value, BTreeMap<String, String>> {
    let map = strip_managed(map);
    match kind {
        Kind::Incident => validate_incident(&map)?,
        Kind::Sighting => validate_sighting(&map)?,
        Kind::Relationship => validate_relationship(&map)?,
    }
    let short = format!("{}-{}", kind.name(), new_uuid());
    let owner = json!({"owner": org, "groups": [org]});
    let entity = finish_entity(&st.api_base, kind, &short, map, &owner);
    st.store(kind).insert(short, entity.clone());
    Ok(entity)
}

fn check_enum(
    errors: &mut BTreeMap<String, String>,
    map: &Map<String, Value>,
    key: &str,
    allowed: &[&str],
    required: bool,
) {
    match map.get(key) {
        None if required => {
            errors.insert(key.into(), "missing-required-key".into());
        }
        None => {}
        Some(Value::String(s)) if allowed.contains(&s.as_str()) => {}
        Some(other) => {
            errors.insert(
                key.into(),
                format!("(not (#{{{}}} {other}))", allowed.join(" ")),
            );
        }
    }
}

fn check_time(
    errors: &mut BTreeMap<String, String>,
    parent: &Map<String, Value>,
    path: &str,
    key: &str,
    required: bool,
) {
    match parent.get(key) {
        None if required => {
            errors.insert(path.into(), "missing-required-key".into());
        }
        None => {}
        Some(Value::String(s)) if mssp_contract::civil::parse_nanos(s).is_some() => {}
        Some(other) => {
            errors.insert(
                path.into(),
                format!("(not (instance? java.util.Date {other}))"),
            );
        }
    }
}

fn check_strings(errors: &mut BTreeMap<String, String>, map: &Map<String, Value>, keys: &[&str]) {
    for key in keys {
        if let Some(v) = map.get(*key)
            && !v.is_string()
        {
            errors.insert(
                (*key).into(),
                format!("(not (instance? java.lang.String {v}))"),
            );
        }
    }
}

fn check_string_lists(
    errors: &mut BTreeMap<String, String>,
    map: &Map<String, Value>,
    keys: &[&str],
) {
    for key in keys {
        if let Some(v) = map.get(*key)
            && !v.as_array().is_some_and(|a| a.iter().all(Value::is_string))
        {
            errors.insert((*key).into(), "must be a list of strings".into());
        }
    }
}

fn check_external_references(errors: &mut BTreeMap<String, String>, map: &Map<String, Value>) {
    let Some(refs) = map.get("external_references") else {
        return;
    };
    let Some(refs) = refs.as_array() else {
        errors.insert("external_references".into(), "must be a list".into());
        return;
    };
    for (i, r) in refs.iter().enumerate() {
        let ok = r
            .get("source_name")
            .and_then(Value::as_str)
            .is_some_and(|s| !s.is_empty());
        if !ok {
            errors.insert(
                format!("external_references[{i}].source_name"),
                "missing-required-key".into(),
            );
        }
    }
}

/// CTIA's incident schema, closed like the real one: unknown members are rejected.
fn validate_incident(map: &Map<String, Value>) -> Result<(), BTreeMap<String, String>> {
    let mut errors = BTreeMap::new();
    for key in map.keys() {
        if !INCIDENT_FIELDS.contains(&key.as_str()) && !SERVER_MANAGED.contains(&key.as_str()) {
            errors.insert(key.clone(), "disallowed-key".into());
        }
    }
    check_enum(&mut errors, map, "confidence", CONFIDENCE, true);
    check_enum(&mut errors, map, "status", STATUS, true);
    check_enum(&mut errors, map, "severity", SEVERITY, false);
    check_enum(&mut errors, map, "tlp", TLP, false);
    check_enum(
        &mut errors,
        map,
        "promotion_method",
        &["Manual", "Automated"],
        false,
    );
    match map.get("incident_time") {
        Some(Value::Object(time)) => {
            check_time(&mut errors, time, "incident_time.opened", "opened", true);
            for key in ["closed", "discovered", "reported", "remediated", "rejected"] {
                check_time(
                    &mut errors,
                    time,
                    &format!("incident_time.{key}"),
                    key,
                    false,
                );
            }
        }
        Some(_) => {
            errors.insert("incident_time".into(), "must be a map".into());
        }
        None => {
            errors.insert("incident_time".into(), "missing-required-key".into());
        }
    }
    check_strings(
        &mut errors,
        map,
        &[
            "title",
            "description",
            "short_description",
            "source",
            "source_uri",
            "language",
        ],
    );
    check_string_lists(
        &mut errors,
        map,
        &["external_ids", "tactics", "techniques", "categories"],
    );
    check_external_references(&mut errors, map);
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

fn validate_sighting(map: &Map<String, Value>) -> Result<(), BTreeMap<String, String>> {
    let mut errors = BTreeMap::new();
    check_enum(&mut errors, map, "confidence", CONFIDENCE, true);
    check_enum(&mut errors, map, "severity", SEVERITY, false);
    check_enum(&mut errors, map, "tlp", TLP, false);
    if !map.get("count").is_some_and(Value::is_u64) {
        errors.insert(
            "count".into(),
            "missing-required-key or not an integer".into(),
        );
    }
    match map.get("observed_time") {
        Some(Value::Object(t)) => check_time(
            &mut errors,
            t,
            "observed_time.start_time",
            "start_time",
            true,
        ),
        _ => {
            errors.insert("observed_time".into(), "missing-required-key".into());
        }
    }
    check_strings(
        &mut errors,
        map,
        &["title", "description", "source", "source_uri"],
    );
    check_string_lists(&mut errors, map, &["external_ids"]);
    check_external_references(&mut errors, map);
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

fn validate_relationship(map: &Map<String, Value>) -> Result<(), BTreeMap<String, String>> {
    let mut errors = BTreeMap::new();
    for key in ["relationship_type", "source_ref", "target_ref"] {
        if map
            .get(key)
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
        {
            errors.insert(key.into(), "missing-required-key".into());
        }
    }
    check_external_references(&mut errors, map);
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

/// `POST /ctia/bundle/import[?external-key-prefixes=a-,b-]`: creates incidents, sightings
/// and relationships, resolves `transient:` ids, and answers `exists` (with the stored
/// entity's id, creating nothing) for an entity that carries an already-stored external
/// id **that starts with one of the prefixes** — only those ids are looked up.
///
/// Sources (CTIA, threatgrid/ctia at 44810147): `ctia.bundle.core/entity->import-data`
/// and `filter-external-ids` (src/ctia/bundle/core.clj lines 40-78: ids are kept only if
/// they start with a parsed prefix; an entity with none left is created again, with a
/// warning in the log) and `with-existing-entity` (`result "exists"`, the old entity's
/// id); the prefixes come from the route's `external-key-prefixes` query parameter
/// (src/ctia/bundle/routes.clj line 125, comma-separated, trimmed). When the parameter is
/// absent, the sources disagree: CTIA's README (lines ~305-310) says the prefixes
/// "configured with the `ctia.store.external-key-prefixes` property" apply (`ctia-`,
/// `cisco-` by default before commit b4493005, 2020), while the code since that commit
/// uses every external id. The simulator implements the pessimistic reading: absent →
/// the configured default (`SimConfig::xdr_external_key_prefixes`, default `ctia-`; an
/// empty list gives the code's "every id").
fn bundle_import(
    st: &mut XdrState,
    bundle: Map<String, Value>,
    org: &str,
    key_prefixes: Option<&str>,
) -> Value {
    let prefixes: Vec<String> = match key_prefixes {
        // `parse-key-prefixes`: split on ",", trim each.
        Some(p) => p.split(',').map(|x| x.trim().to_string()).collect(),
        None => st.external_key_prefixes.clone(),
    };
    let usable =
        |ext: &str| prefixes.is_empty() || prefixes.iter().any(|p| ext.starts_with(p.as_str()));
    let mut results = Vec::new();
    let mut transient: HashMap<String, String> = HashMap::new();
    for (key, kind) in [
        ("incidents", Kind::Incident),
        ("sightings", Kind::Sighting),
        ("relationships", Kind::Relationship),
    ] {
        let entities = bundle
            .get(key)
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        for entity in entities {
            let Value::Object(mut map) = entity else {
                results.push(json!({"type": kind.name(), "result": "error", "error": "entity must be a map"}));
                continue;
            };
            let original_id = map.get("id").cloned().unwrap_or(Value::Null);
            let external_ids = map
                .get("external_ids")
                .cloned()
                .unwrap_or_else(|| json!([]));
            if kind == Kind::Relationship {
                for side in ["source_ref", "target_ref"] {
                    if let Some(real) = map
                        .get(side)
                        .and_then(Value::as_str)
                        .and_then(|r| transient.get(r))
                    {
                        let real = real.clone();
                        map.insert(side.into(), json!(real));
                    }
                }
            }
            let existing = external_ids.as_array().and_then(|ids| {
                ids.iter()
                    .filter_map(Value::as_str)
                    .filter(|ext| usable(ext))
                    .find_map(|ext| st.store(kind).find_external(org, ext).cloned())
            });
            let outcome = match existing {
                Some(e) => Ok((e, "exists")),
                None => create(st, kind, map, org).map(|e| (e, "created")),
            };
            match outcome {
                Ok((entity, result)) => {
                    let id = entity.get("id").cloned().unwrap_or(Value::Null);
                    if let (Some(orig), Some(real)) = (original_id.as_str(), id.as_str()) {
                        transient.insert(orig.to_string(), real.to_string());
                    }
                    results.push(json!({"id": id, "original_id": original_id, "result": result, "type": kind.name(), "external_ids": external_ids}));
                }
                Err(errors) => results.push(json!({"original_id": original_id, "result": "error", "type": kind.name(), "error": errors, "external_ids": external_ids})),
            }
        }
    }
    json!({"results": results})
}

// ---------------------------------------------------------------------------------------
// Updates: PATCH, PUT and the status route (CTIA's incident update flow)

/// Deep-merges `patch` into `prev` the way CTIA's PATCH does: maps are merged key by key,
/// recursively; anything else (strings, numbers, lists) is replaced whole by the patch's
/// value. Source: `ctia.flows.crud/patch-entity` (`deep-merge-with patch-fn prev partial`,
/// src/ctia/flows/crud.clj) with `patch-fn` = `ctia.lib.collection/replace-colls` for
/// `:patch-operation :replace` (the incident routes' PATCH, src/ctia/http/routes/crud.clj),
/// at 44810147. So a PATCH of `external_references` or `tactics` overwrites the stored
/// list (an analyst's entries are lost unless sent back), while `incident_time` is merged
/// field by field.
fn deep_merge(prev: &mut Value, patch: Value) {
    match (prev, patch) {
        (Value::Object(p), Value::Object(q)) => {
            for (k, v) in q {
                match p.get_mut(&k) {
                    Some(pv) if pv.is_object() && v.is_object() => deep_merge(pv, v),
                    _ => {
                        p.insert(k, v);
                    }
                }
            }
        }
        (p, q) => *p = q,
    }
}

/// `New(: .+)?`, `Open(: .+)?`, `Closed(: .+)?` (`new-status?`, `open-status?`,
/// `closed-status?` in src/ctia/entity/incident.clj).
fn status_is(category: &str, status: Option<&str>) -> bool {
    status.is_some_and(|s| {
        s == category
            || s.strip_prefix(category)
                .and_then(|r| r.strip_prefix(": "))
                .is_some_and(|r| !r.is_empty())
    })
}

/// CTIA's `apply-status-update-logic` (src/ctia/entity/incident.clj, lines 136-200 at
/// 44810147), run on every incident update (PATCH, PUT, the status route) through
/// `realize-incident`. Only when the status changes:
/// - the new status stamps its times with now (`make-status-update`: `Open*` → `opened`,
///   `Closed*` → `closed`, `Open: Contained` → `opened` + `contained`, `Rejected` →
///   `rejected`, `Incident Reported` → `reported`, `Containment|Restoration Achieved` →
///   `remediated`), then the client's `incident_time` values override those;
/// - closed → closed keeps the previous `closed` (an analyst's `Closed: Merged` at T
///   stays closed at T when something later sets `Closed`); open → open keeps `opened`;
/// - non-closed → closed sets `closed` = now, whatever the client sent; New → Open sets
///   `opened` = now; New/Open → `Open: Contained` sets `contained` = now.
fn apply_status_update_logic(next: &mut Map<String, Value>, prev: &Value, now: &str) {
    let new = next
        .get("status")
        .and_then(Value::as_str)
        .map(str::to_string);
    let old = prev.get("status").and_then(Value::as_str);
    let Some(new) = new else { return };
    if Some(new.as_str()) == old {
        return;
    }
    let verbs: &[&str] = match new.as_str() {
        "New" | "Stalled" | "Hold" => &[],
        "Containment Achieved" | "Restoration Achieved" => &["remediated"],
        "Rejected" => &["rejected"],
        "Incident Reported" => &["reported"],
        "Open: Contained" => &["opened", "contained"],
        s if status_is("Open", Some(s)) => &["opened"],
        s if status_is("Closed", Some(s)) => &["closed"],
        _ => &[],
    };
    let mut merged: Map<String, Value> =
        verbs.iter().map(|v| (v.to_string(), json!(now))).collect();
    if let Some(Value::Object(client)) = next.get("incident_time") {
        for (k, v) in client {
            merged.insert(k.clone(), v.clone());
        }
    }
    let new = Some(new.as_str());
    let prev_time = |k: &str| prev.get("incident_time").and_then(|t| t.get(k)).cloned();
    if status_is("Closed", old)
        && status_is("Closed", new)
        && let Some(t) = prev_time("closed")
    {
        merged.insert("closed".into(), t);
    }
    if status_is("Open", old)
        && status_is("Open", new)
        && let Some(t) = prev_time("opened")
    {
        merged.insert("opened".into(), t);
    }
    if status_is("Closed", new) && !status_is("Closed", old) {
        merged.insert("closed".into(), json!(now));
    }
    if status_is("New", old) && status_is("Open", new) {
        merged.insert("opened".into(), json!(now));
    }
    if (status_is("New", old) || status_is("Open", old)) && new == Some("Open: Contained") {
        merged.insert("contained".into(), json!(now));
    }
    if !merged.is_empty() {
        next.insert("incident_time".into(), Value::Object(merged));
    }
}

/// Updates a stored incident of `org`: PATCH (`patch`: [`deep_merge`] into the stored
/// entity) or PUT (the body replaces the entity), then [`apply_status_update_logic`],
/// then validation. Returns the stored entity, or the error reply.
fn patch_incident(
    st: &mut XdrState,
    short: &str,
    org: &str,
    map: Map<String, Value>,
    patch: bool,
) -> Result<Value, Reply> {
    let Some(current) = visible(st, Kind::Incident, short, org) else {
        return Err(not_found());
    };
    let mut next = if patch {
        let mut merged = Value::Object(strip_managed(
            current.as_object().cloned().unwrap_or_default(),
        ));
        deep_merge(&mut merged, Value::Object(strip_managed(map)));
        match merged {
            Value::Object(m) => m,
            _ => Map::new(),
        }
    } else {
        strip_managed(map)
    };
    let (secs, nanos) = now_unix();
    apply_status_update_logic(&mut next, &current, &ctia_time(secs, nanos));
    if let Err(errors) = validate_incident(&next) {
        return Err(invalid("incident", errors));
    }
    let entity = finish_entity(&st.api_base, Kind::Incident, short, next, &current);
    st.incidents.insert(short.to_string(), entity.clone());
    Ok(entity)
}

// ---------------------------------------------------------------------------------------
// Bulk read

/// CTIA's `ctia.http.bulk.max-size` default (resources/ctia-default.properties line 65 at
/// 44810147): more entities in one bulk request → 400 (`validate-bulk-size!`,
/// src/ctia/bulk/core.clj).
const BULK_MAX_SIZE: usize = 2000;

/// Longest request target served. CTIA's properties set no request header size, so its
/// Jetty's default (8 KiB for the request line and headers) applies; sources are silent on
/// the exact answer, so the pessimistic reading: a longer `GET /ctia/bulk?…` is refused
/// with 414 rather than served.
const MAX_REQUEST_TARGET: usize = 8 * 1024;

/// The query keys of `GET /ctia/bulk` (src/ctia/bulk/routes.clj, `:query-params`).
const BULK_KEYS: &[&str] = &[
    "actors",
    "asset_mappings",
    "assets",
    "asset_properties",
    "attack_patterns",
    "campaigns",
    "casebooks",
    "coas",
    "data_tables",
    "feedbacks",
    "identity_assertions",
    "incidents",
    "indicators",
    "investigations",
    "judgements",
    "malwares",
    "notes",
    "relationships",
    "sightings",
    "target_records",
    "tools",
    "vulnerabilities",
    "weaknesses",
];

/// `GET /ctia/bulk?incidents=<id>&incidents=<id>…` → `{"incidents": [entity|null, …]}`,
/// as CTIA does it (src/ctia/bulk/routes.clj `GET "/"` → `core/fetch-bulk` →
/// `read-entities` → the store's `read-records` = `handle-read-many` in
/// src/ctia/stores/es/crud.clj, at 44810147):
/// - ids may be long (URL) or short: only the last path segment is used
///   (`ensure-document-id`);
/// - the answer is what an Elasticsearch `ids` query finds: ids that do not exist are
///   simply **absent** (not `null`), and the order is the store's, **not** the request's
///   (here: by short id, so a client that matches answers by position breaks);
/// - an entity of another organisation fails the access check, which is logged and
///   suppressed (`:suppress-access-control-error? true`): it comes back as `null`;
/// - a kind with no ids is left out of the answer (`gen-bulk-from-fn` removes empty keys);
/// - more than [`BULK_MAX_SIZE`] ids over all kinds → 400 "Bulk max number of entities".
fn bulk_read(st: &mut XdrState, req: &Req, org: &str) -> Reply {
    let pairs = req.query_pairs();
    let wanted = pairs
        .iter()
        .filter(|(k, _)| BULK_KEYS.contains(&k.as_str()))
        .count();
    if wanted > BULK_MAX_SIZE {
        return Reply::text(
            400,
            "text/plain",
            format!("Bulk max number of entities: {BULK_MAX_SIZE}"),
        );
    }
    if req.path_and_query().len() > MAX_REQUEST_TARGET {
        return Reply::text(
            414,
            "text/html",
            "<h1>Bad Message 414</h1><pre>reason: URI Too Long</pre>",
        );
    }
    let mut out = Map::new();
    for key in BULK_KEYS {
        let ids: std::collections::BTreeSet<String> = pairs
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| short_id(v).to_string())
            .collect();
        if ids.is_empty() {
            continue;
        }
        let kind = match *key {
            "incidents" => Some(Kind::Incident),
            "sightings" => Some(Kind::Sighting),
            "relationships" => Some(Kind::Relationship),
            _ => None,
        };
        let found: Vec<Value> = match kind {
            None => Vec::new(),
            Some(kind) => {
                let store = st.store(kind);
                ids.iter()
                    .filter_map(|id| store.by_id.get(id))
                    .map(|e| {
                        if owned_by(e, org) {
                            e.clone()
                        } else {
                            Value::Null
                        }
                    })
                    .collect()
            }
        };
        out.insert((*key).to_string(), Value::Array(found));
    }
    Reply::json(200, &Value::Object(out))
}
