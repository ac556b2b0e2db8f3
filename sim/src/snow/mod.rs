//! ServiceNow Table API, `incident` table, with a business-rule callback on close.

mod callback;
mod query;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{Map, Value, json};

pub(crate) use callback::HttpClient;
pub use callback::{CallbackOutcome, CallbackRecord, CallbackSpec, sign};

use crate::clock::{glide_time, now_secs};
use crate::ratelimit::FixedWindow;
use crate::server::{Reply, Req};
use crate::{Shared, SimError, lock, random_hex};
use callback::PendingCallback;
use query::Query;

/// Every field of the simulated incident table, in output order.
const FIELDS: &[&str] = &[
    "sys_id",
    "number",
    "state",
    "incident_state",
    "active",
    "short_description",
    "description",
    "impact",
    "urgency",
    "priority",
    "category",
    "subcategory",
    "contact_type",
    "caller_id",
    "assignment_group",
    "assigned_to",
    "company",
    "cmdb_ci",
    "opened_at",
    "opened_by",
    "hold_reason",
    "close_code",
    "close_notes",
    "resolved_at",
    "resolved_by",
    "closed_at",
    "closed_by",
    "work_notes",
    "correlation_id",
    "correlation_display",
    "sys_created_on",
    "sys_created_by",
    "sys_updated_on",
    "sys_updated_by",
    "sys_mod_count",
    "reopen_count",
];

/// Fields a client may write (others are silently ignored, as ServiceNow does).
const WRITABLE: &[&str] = &[
    "state",
    "short_description",
    "description",
    "impact",
    "urgency",
    "category",
    "subcategory",
    "contact_type",
    "caller_id",
    "assignment_group",
    "assigned_to",
    "company",
    "cmdb_ci",
    "hold_reason",
    "close_code",
    "close_notes",
    "correlation_id",
    "correlation_display",
];

/// Reference fields and the table they point to.
const REFERENCES: &[(&str, &str)] = &[
    ("caller_id", "sys_user"),
    ("assignment_group", "sys_user_group"),
    ("assigned_to", "sys_user"),
    ("company", "core_company"),
    ("cmdb_ci", "cmdb_ci"),
    ("opened_by", "sys_user"),
    ("resolved_by", "sys_user"),
    ("closed_by", "sys_user"),
];

/// The base system's incident states: 1 New, 2 In Progress, 3 On Hold, 6 Resolved,
/// 7 Closed, 8 Canceled (ServiceNow KB0564465 "Incident Management State Model",
/// https://support.servicenow.com/kb?id=kb_article_view&sysparm_article=KB0564465, and
/// the state model page of the ITSM docs). Instances add their own choices to the
/// `state` field (sys_choice); the simulator takes them with
/// [`SnowSim::add_state_choice`]. Other values are refused, as a data policy would.
const STATES: &[&str] = &["1", "2", "3", "6", "7", "8"];
const CLOSE_STATES: &[&str] = &["6", "7", "8"];
/// States that mean open in the base model; moving from a close state into one of these
/// is a re-open (`reopen_count` + 1, resolution and close stamps cleared, as the
/// "Reopen Incident" UI action does).
const OPEN_STATES: &[&str] = &["1", "2", "3"];

/// One work-note journal entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct JournalEntry {
    pub created_on: String,
    pub created_by: String,
    pub text: String,
}

/// Inspection view of an incident: raw field values and the full work-note journal.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SnowIncident {
    pub fields: BTreeMap<String, String>,
    /// Oldest first.
    pub work_notes: Vec<JournalEntry>,
    /// The user whose credentials created it (its callback is the one that fires).
    pub owner: String,
}

impl SnowIncident {
    /// A field's raw value ("" when empty).
    pub fn field(&self, name: &str) -> &str {
        self.fields.get(name).map_or("", String::as_str)
    }

    pub fn sys_id(&self) -> &str {
        self.field("sys_id")
    }

    pub fn state(&self) -> &str {
        self.field("state")
    }
}

struct User {
    password: Option<String>,
    limiter: FixedWindow,
    callback: Option<CallbackSpec>,
}

pub(crate) struct SnowState {
    users: BTreeMap<String, User>,
    tokens: HashMap<String, String>,
    incidents: Vec<SnowIncident>,
    index: HashMap<String, usize>,
    next_number: u32,
    base_url: String,
    window: Duration,
    default_limit: u32,
    headers_on_429: bool,
    callbacks: Vec<CallbackRecord>,
    /// Instance-specific `state` choices beyond the base model (e.g. "9").
    custom_states: Vec<String>,
}

impl SnowState {
    pub(crate) fn new(
        base_url: String,
        window: Duration,
        default_limit: u32,
        headers_on_429: bool,
    ) -> SnowState {
        SnowState {
            users: BTreeMap::new(),
            tokens: HashMap::new(),
            incidents: Vec::new(),
            index: HashMap::new(),
            next_number: 10_001,
            base_url,
            window,
            default_limit,
            headers_on_429,
            callbacks: Vec::new(),
            custom_states: Vec::new(),
        }
    }

    fn user_entry(&mut self, name: &str) -> &mut User {
        let (limit, window) = (self.default_limit, self.window);
        self.users.entry(name.to_string()).or_insert_with(|| User {
            password: None,
            limiter: FixedWindow::new(limit, window),
            callback: None,
        })
    }

    fn incident_mut(&mut self, sys_id: &str) -> Option<&mut SnowIncident> {
        let i = *self.index.get(sys_id)?;
        self.incidents.get_mut(i)
    }
}

/// Control handle of the ServiceNow simulator.
#[derive(Clone)]
pub struct SnowSim {
    pub(crate) shared: Arc<Shared>,
}

impl SnowSim {
    pub fn add_basic_user(&self, user: &str, password: &str) {
        lock(&self.shared.snow).user_entry(user).password = Some(password.into());
    }

    /// A bearer token that authenticates as `user` (the tenant for faults, counts, callbacks).
    pub fn add_bearer_token(&self, token: &str, user: &str) {
        let mut st = lock(&self.shared.snow);
        st.user_entry(user);
        st.tokens.insert(token.into(), user.into());
    }

    /// The business rule's outbound call for incidents created by `user`.
    pub fn set_callback(&self, user: &str, spec: CallbackSpec) {
        lock(&self.shared.snow).user_entry(user).callback = Some(spec);
    }

    pub fn clear_callback(&self, user: &str) {
        lock(&self.shared.snow).user_entry(user).callback = None;
    }

    /// Requests per rate window for `user` (hourly rules; default from `SimConfig`).
    pub fn set_rate_limit(&self, user: &str, per_window: u32) {
        let mut st = lock(&self.shared.snow);
        let window = st.window;
        st.user_entry(user).limiter = FixedWindow::new(per_window, window);
    }

    /// `false`: 429s carry no `Retry-After` / `X-RateLimit-*` header at all.
    pub fn set_rate_limit_headers(&self, on: bool) {
        lock(&self.shared.snow).headers_on_429 = on;
    }

    /// Adds an instance-specific choice to the incident `state` field (a customer's
    /// own state, e.g. `"9"` for "Closed - Duplicate"): accepted on writes from then on.
    /// It never fires the close business rule (its condition names 6, 7, 8).
    pub fn add_state_choice(&self, value: &str) {
        let mut st = lock(&self.shared.snow);
        if !st.custom_states.iter().any(|s| s == value) {
            st.custom_states.push(value.to_string());
        }
    }

    /// An analyst sets the incident's state in the UI to any state choice (base or
    /// added). Closing states need `close_code`/`close_notes` (use [`Self::analyst_close`]).
    pub async fn analyst_set_state(
        &self,
        sys_id: &str,
        state: &str,
    ) -> Result<CallbackOutcome, SimError> {
        self.analyst_update(sys_id, json!({ "state": state })).await
    }

    /// An analyst re-opens a resolved or closed incident (the "Reopen Incident" UI
    /// action): state 2 In Progress, `reopen_count` + 1, resolution/close stamps cleared.
    /// Closed (7) incidents are read-only for most roles in the base system; the
    /// simulator lets the analyst do it anyway (an admin can), the pessimistic reading.
    pub async fn analyst_reopen(&self, sys_id: &str) -> Result<CallbackOutcome, SimError> {
        self.analyst_set_state(sys_id, "2").await
    }

    /// The work-note journal of an incident, oldest first (empty when unknown).
    pub fn work_notes(&self, sys_id: &str) -> Vec<JournalEntry> {
        self.incident(sys_id)
            .map(|i| i.work_notes)
            .unwrap_or_default()
    }

    pub fn incidents(&self) -> Vec<SnowIncident> {
        lock(&self.shared.snow).incidents.clone()
    }

    pub fn incident(&self, sys_id: &str) -> Option<SnowIncident> {
        let st = lock(&self.shared.snow);
        st.index
            .get(sys_id)
            .and_then(|&i| st.incidents.get(i))
            .cloned()
    }

    /// Every callback attempt so far, oldest first.
    pub fn callbacks(&self) -> Vec<CallbackRecord> {
        lock(&self.shared.snow).callbacks.clone()
    }

    /// An analyst resolves (6), closes (7) or cancels (8) the incident in the UI. The business
    /// rule fires if the state changed and the owner has a callback; the returned outcome is
    /// the callback's (awaited, so tests can assert on it).
    pub async fn analyst_close(
        &self,
        sys_id: &str,
        state: u8,
        close_code: &str,
        close_notes: &str,
    ) -> Result<CallbackOutcome, SimError> {
        if !CLOSE_STATES.contains(&state.to_string().as_str()) {
            return Err(SimError::Invalid(format!(
                "analyst_close state must be 6, 7 or 8, got {state}"
            )));
        }
        self.analyst_update(
            sys_id,
            json!({"state": state.to_string(), "close_code": close_code, "close_notes": close_notes}),
        )
        .await
    }

    /// An analyst edits the incident in the UI (any writable fields, `work_notes` appends).
    pub async fn analyst_update(
        &self,
        sys_id: &str,
        changes: Value,
    ) -> Result<CallbackOutcome, SimError> {
        let Value::Object(changes) = changes else {
            return Err(SimError::Invalid(
                "analyst changes must be a JSON object".into(),
            ));
        };
        let pending = {
            let mut st = lock(&self.shared.snow);
            let custom = st.custom_states.clone();
            let inc = st
                .incident_mut(sys_id)
                .ok_or_else(|| SimError::NotFound(format!("ServiceNow incident {sys_id:?}")))?;
            let transition =
                apply_update(inc, &changes, "analyst.sim", &custom).map_err(SimError::Invalid)?;
            match transition {
                Some(inc) => pending_callback(&mut st, &inc, "analyst"),
                None => Err("the state did not change to 6, 7 or 8".to_string()),
            }
        };
        match pending {
            Ok(pending) => {
                let record = callback::deliver(
                    &self.shared.client,
                    pending,
                    self.shared.config.callback_timeout,
                )
                .await;
                let outcome = record.outcome.clone();
                lock(&self.shared.snow).callbacks.push(record);
                Ok(outcome)
            }
            Err(reason) => Ok(CallbackOutcome::NotFired { reason }),
        }
    }
}

fn pending_callback(
    st: &mut SnowState,
    inc: &SnowIncident,
    trigger: &'static str,
) -> Result<PendingCallback, String> {
    let spec = st
        .users
        .get(&inc.owner)
        .and_then(|u| u.callback.clone())
        .ok_or_else(|| format!("no callback configured for user {:?}", inc.owner))?;
    Ok(PendingCallback {
        spec,
        sys_id: inc.sys_id().into(),
        number: inc.field("number").into(),
        state: inc.state().into(),
        correlation_id: inc.field("correlation_id").into(),
        close_code: inc.field("close_code").into(),
        trigger,
    })
}

/// Stringifies a written value the way the Table API stores it.
fn field_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::Object(o) => o
            .get("value")
            .map(field_text)
            .unwrap_or_else(|| v.to_string()),
        Value::Array(_) => v.to_string(),
    }
}

fn priority(impact: &str, urgency: &str) -> String {
    let level = |s: &str| {
        s.parse::<u8>()
            .ok()
            .filter(|n| (1..=3).contains(n))
            .unwrap_or(3)
    };
    (level(impact) + level(urgency) - 1).to_string()
}

/// Applies an update in place. Returns a snapshot when the state moved into 6/7/8 (the
/// business rule's condition), or an error detail when a rule rejects it (nothing applied).
fn apply_update(
    inc: &mut SnowIncident,
    body: &Map<String, Value>,
    actor: &str,
    custom_states: &[String],
) -> Result<Option<SnowIncident>, String> {
    let old_state = inc.state().to_string();
    let mut next = inc.fields.clone();
    for (key, value) in body {
        if WRITABLE.contains(&key.as_str()) {
            next.insert(key.clone(), field_text(value));
        }
    }
    let new_state = next.get("state").cloned().unwrap_or_default();
    if !STATES.contains(&new_state.as_str()) && !custom_states.contains(&new_state) {
        return Err(format!(
            "Invalid state {new_state:?}: must be one of 1, 2, 3, 6, 7, 8{}",
            custom_states
                .iter()
                .map(|s| format!(", {s}"))
                .collect::<String>()
        ));
    }
    if new_state != old_state && matches!(new_state.as_str(), "6" | "7") {
        let mut missing = Vec::new();
        if next.get("close_code").is_none_or(|v| v.trim().is_empty()) {
            missing.push("Resolution code is mandatory");
        }
        if next.get("close_notes").is_none_or(|v| v.trim().is_empty()) {
            missing.push("Resolution notes are mandatory");
        }
        if !missing.is_empty() {
            return Err(format!(
                "Data Policy Exception: \n  {}",
                missing.join("\n  ")
            ));
        }
    }
    let now = glide_time(now_secs());
    if new_state != old_state {
        match new_state.as_str() {
            "6" => {
                next.insert("resolved_at".into(), now.clone());
                next.insert("resolved_by".into(), actor.into());
            }
            "7" => {
                if next.get("resolved_at").is_none_or(String::is_empty) {
                    next.insert("resolved_at".into(), now.clone());
                    next.insert("resolved_by".into(), actor.into());
                }
                next.insert("closed_at".into(), now.clone());
                next.insert("closed_by".into(), actor.into());
            }
            s if OPEN_STATES.contains(&s) && CLOSE_STATES.contains(&old_state.as_str()) => {
                // Re-opened: the Reopen Incident UI action's effect.
                let reopened = next
                    .get("reopen_count")
                    .and_then(|c| c.parse::<u64>().ok())
                    .unwrap_or(0)
                    + 1;
                next.insert("reopen_count".into(), reopened.to_string());
                for stamp in ["resolved_at", "resolved_by", "closed_at", "closed_by"] {
                    next.insert(stamp.into(), String::new());
                }
            }
            _ => {}
        }
    }
    let active = !matches!(new_state.as_str(), "7" | "8");
    next.insert("incident_state".into(), new_state.clone());
    next.insert("active".into(), active.to_string());
    let p = priority(
        next.get("impact").map_or("", String::as_str),
        next.get("urgency").map_or("", String::as_str),
    );
    next.insert("priority".into(), p);
    let mods = next
        .get("sys_mod_count")
        .and_then(|c| c.parse::<u64>().ok())
        .unwrap_or(0);
    next.insert("sys_mod_count".into(), (mods + 1).to_string());
    next.insert("sys_updated_on".into(), now.clone());
    next.insert("sys_updated_by".into(), actor.into());
    inc.fields = next;
    if let Some(note) = body
        .get("work_notes")
        .map(field_text)
        .filter(|n| !n.trim().is_empty())
    {
        inc.work_notes.push(JournalEntry {
            created_on: now,
            created_by: actor.into(),
            text: note,
        });
    }
    let closed_now = new_state != old_state && CLOSE_STATES.contains(&new_state.as_str());
    Ok(closed_now.then(|| inc.clone()))
}

// ---------------------------------------------------------------------------------------
// HTTP side

enum Route<'a> {
    Table(&'a str),
    Record(&'a str, &'a str),
    Unknown,
}

fn route(path: &str) -> Route<'_> {
    let segments: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
    match segments.as_slice() {
        ["api", "now", "table", table] | ["api", "now", "v2", "table", table] => {
            Route::Table(table)
        }
        ["api", "now", "table", table, id] | ["api", "now", "v2", "table", table, id] => {
            Route::Record(table, id)
        }
        _ => Route::Unknown,
    }
}

pub(crate) fn route_name(req: &Req) -> String {
    let template = match route(&req.path) {
        Route::Table(t) => format!("/api/now/table/{t}"),
        Route::Record(t, _) => format!("/api/now/table/{t}/{{sys_id}}"),
        Route::Unknown => "(unknown)".into(),
    };
    format!("{} {template}", req.method)
}

/// The tenant of a request: the Basic user, or the user a bearer token belongs to.
pub(crate) fn tenant(shared: &Shared, req: &Req) -> Option<String> {
    if let Some((user, _)) = req.basic_auth() {
        return Some(user);
    }
    let token = req.bearer()?;
    lock(&shared.snow).tokens.get(&token).cloned()
}

fn error(status: u16, message: &str, detail: Value) -> Reply {
    Reply::json(
        status,
        &json!({"error": {"message": message, "detail": detail}, "status": "failure"}),
    )
}

fn not_found() -> Reply {
    error(
        404,
        "No Record found",
        json!("Record doesn't exist or ACL restricts the record retrieval"),
    )
}

/// ServiceNow's 429. A request over a rate-limit rule gets `429 Too Many Requests`, an
/// error body, `Retry-After` (seconds to wait) and the rule headers `X-RateLimit-Limit`
/// (requests per hour), `X-RateLimit-Reset` (a UNIX timestamp, seconds) and
/// `X-RateLimit-Rule` (the rule's sys_id): "Inbound REST API rate limiting",
/// https://www.servicenow.com/docs/bundle/australia-api-reference/page/integrate/inbound-rest/concept/inbound-REST-API-rate-limiting.html
/// (same text from the Washington DC release on).
///
/// `headers == false` is the other 429 an instance sends: when the node's API_INT
/// semaphores and their queue are exhausted it answers "429 Too Many Requests" with no
/// rate-limit header at all (ServiceNow KB0635398, KB0623705; /work/shared/docs/
/// upstream-apis.md §3 "some 429s carry neither header"). Nothing says when to come back:
/// the pessimistic reading a client must survive.
fn too_many(retry_after: u64, headers: bool, limit: u32) -> Reply {
    let reply = error(
        429,
        "Rate limit exceeded",
        json!("The request was rejected by a rate limit rule for this user"),
    );
    if !headers {
        return reply;
    }
    let reset = now_secs() + i64::try_from(retry_after).unwrap_or(0);
    reply
        .with_header("Retry-After", retry_after)
        .with_header("X-RateLimit-Limit", limit)
        .with_header("X-RateLimit-Reset", reset)
        .with_header("X-RateLimit-Rule", "sim_hourly_rule")
}

/// The ServiceNow 429 flavour: `Retry-After` seconds and `X-RateLimit-Reset` as an epoch,
/// or nothing at all in header-less mode (or when `bare`).
pub(crate) fn fault_429(shared: &Shared, retry_after: u64, bare: bool) -> Reply {
    let headers = lock(&shared.snow).headers_on_429 && !bare;
    too_many(retry_after, headers, 0)
}

fn authenticate(st: &SnowState, req: &Req) -> Option<String> {
    if let Some((user, password)) = req.basic_auth() {
        let known = st.users.get(&user)?;
        return (known.password.as_deref() == Some(password.as_str())).then_some(user);
    }
    let token = req.bearer()?;
    st.tokens.get(&token).cloned()
}

pub(crate) fn handle(shared: &Arc<Shared>, req: &Req) -> Reply {
    let mut guard = lock(&shared.snow);
    let st = &mut *guard;
    let Some(user) = authenticate(st, req) else {
        return error(
            401,
            "User Not Authenticated",
            json!("Required to provide Auth information"),
        )
        .with_header("WWW-Authenticate", "BASIC realm=\"Service-now\"");
    };
    let headers_on_429 = st.headers_on_429;
    let decision = st.user_entry(&user).limiter.hit(Instant::now());
    if !decision.allowed {
        return too_many(decision.reset_secs(), headers_on_429, decision.limit);
    }
    let (table, id) = match route(&req.path) {
        Route::Table(t) => (t, None),
        Route::Record(t, id) => (t, Some(id)),
        Route::Unknown => {
            return error(
                400,
                "Requested URI does not represent any resource",
                Value::Null,
            );
        }
    };
    if table != "incident" {
        return error(400, &format!("Invalid table {table}"), Value::Null);
    }
    let view = View::from_query(req);
    match (req.method.as_str(), id) {
        ("POST", None) => create(st, req, &user, &view),
        ("GET", None) => list(st, req, &view),
        ("GET", Some(id)) => match st.index.get(id).and_then(|&i| st.incidents.get(i)) {
            Some(inc) => Reply::json(200, &json!({"result": view.render(inc, &st.base_url)})),
            None => not_found(),
        },
        ("PATCH" | "PUT", Some(id)) => {
            let body = match object_body(req) {
                Ok(b) => b,
                Err(reply) => return reply,
            };
            let base = st.base_url.clone();
            let custom = st.custom_states.clone();
            let Some(inc) = st.incident_mut(id) else {
                return not_found();
            };
            match apply_update(inc, &body, &user, &custom) {
                Ok(transition) => {
                    let reply = Reply::json(200, &json!({"result": view.render(inc, &base)}));
                    if let Some(snapshot) = transition
                        && let Ok(pending) = pending_callback(st, &snapshot, "api")
                    {
                        spawn_callback(shared, pending);
                    }
                    reply
                }
                Err(detail) => error(400, "Operation Failed", json!(detail)),
            }
        }
        ("DELETE", Some(id)) => match st.index.remove(id) {
            Some(i) => {
                st.incidents.remove(i);
                st.index = st
                    .incidents
                    .iter()
                    .enumerate()
                    .map(|(i, inc)| (inc.sys_id().to_string(), i))
                    .collect();
                Reply::empty(204)
            }
            None => not_found(),
        },
        _ => error(
            405,
            "Method not Supported",
            json!("Method not supported for this resource"),
        ),
    }
}

/// A business rule fired by an API update runs asynchronously; its outcome is recorded.
fn spawn_callback(shared: &Arc<Shared>, pending: PendingCallback) {
    let shared = Arc::clone(shared);
    tokio::spawn(async move {
        let record =
            callback::deliver(&shared.client, pending, shared.config.callback_timeout).await;
        lock(&shared.snow).callbacks.push(record);
    });
}

fn object_body(req: &Req) -> Result<Map<String, Value>, Reply> {
    match req.json() {
        Ok(Some(Value::Object(map))) => Ok(map),
        Ok(None) => Ok(Map::new()),
        _ => Err(error(
            400,
            "Exception while reading request",
            json!("The payload is not valid JSON."),
        )),
    }
}

/// `sysparm_fields`, `sysparm_display_value` and `sysparm_exclude_reference_link`.
struct View {
    fields: Option<Vec<String>>,
    display: bool,
    plain_references: bool,
}

impl View {
    fn from_query(req: &Req) -> View {
        let fields = req.query_param("sysparm_fields").map(|f| {
            f.split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect()
        });
        let display = req
            .query_param("sysparm_display_value")
            .is_some_and(|v| v == "true" || v == "all");
        let plain_references = req
            .query_param("sysparm_exclude_reference_link")
            .is_some_and(|v| v == "true");
        View {
            fields,
            display,
            plain_references,
        }
    }

    fn render(&self, inc: &SnowIncident, base: &str) -> Value {
        let mut out = Map::new();
        let wanted: Vec<&str> = match &self.fields {
            Some(f) => f
                .iter()
                .map(String::as_str)
                .filter(|f| FIELDS.contains(f))
                .collect(),
            None => FIELDS.to_vec(),
        };
        for field in wanted {
            let raw = inc.field(field);
            let value = if field == "work_notes" {
                if self.display {
                    json!(journal_text(&inc.work_notes))
                } else {
                    json!("")
                }
            } else if let Some((_, table)) = REFERENCES.iter().find(|(f, _)| *f == field) {
                if raw.is_empty() || self.plain_references {
                    json!(raw)
                } else {
                    json!({"link": format!("{base}/api/now/table/{table}/{raw}"), "value": raw})
                }
            } else {
                json!(raw)
            };
            out.insert(field.to_string(), value);
        }
        Value::Object(out)
    }
}

/// How the UI (and display values) show a journal: newest entry first.
fn journal_text(entries: &[JournalEntry]) -> String {
    entries
        .iter()
        .rev()
        .map(|e| {
            format!(
                "{} - {} (Work notes)\n{}\n\n",
                e.created_on, e.created_by, e.text
            )
        })
        .collect()
}

fn create(st: &mut SnowState, req: &Req, user: &str, view: &View) -> Reply {
    let body = match object_body(req) {
        Ok(b) => b,
        Err(reply) => return reply,
    };
    let now = glide_time(now_secs());
    let sys_id = random_hex(&mut rand::rng(), 16);
    let number = format!("INC{:07}", st.next_number);
    let mut fields = BTreeMap::new();
    for field in FIELDS {
        fields.insert((*field).to_string(), String::new());
    }
    for (k, v) in [
        ("sys_id", sys_id.as_str()),
        ("number", number.as_str()),
        ("state", "1"),
        ("impact", "3"),
        ("urgency", "3"),
        ("opened_at", now.as_str()),
        ("opened_by", user),
        ("sys_created_on", now.as_str()),
        ("sys_created_by", user),
        ("sys_mod_count", "0"),
        ("reopen_count", "0"),
    ] {
        fields.insert(k.to_string(), v.to_string());
    }
    let mut inc = SnowIncident {
        fields,
        work_notes: Vec::new(),
        owner: user.to_string(),
    };
    // A create runs the same rules as an update; the counter then starts at 0.
    let base = st.base_url.clone();
    if let Err(detail) = apply_update(&mut inc, &body, user, &st.custom_states) {
        return error(400, "Operation Failed", json!(detail));
    }
    inc.fields.insert("sys_mod_count".into(), "0".into());
    st.next_number += 1;
    st.index.insert(sys_id.clone(), st.incidents.len());
    let reply = Reply::json(201, &json!({"result": view.render(&inc, &base)})).with_header(
        "Location",
        format!("{base}/api/now/table/incident/{sys_id}"),
    );
    st.incidents.push(inc);
    reply
}

fn list(st: &SnowState, req: &Req, view: &View) -> Reply {
    let known = |f: &str| FIELDS.contains(&f);
    let query_text = req.query_param("sysparm_query").unwrap_or_default();
    let query = Query::parse(&query_text, &known);
    let limit = req
        .query_param("sysparm_limit")
        .and_then(|l| l.parse::<usize>().ok())
        .unwrap_or(10_000);
    let offset = req
        .query_param("sysparm_offset")
        .and_then(|o| o.parse::<usize>().ok())
        .unwrap_or(0);
    let mut matching: Vec<&SnowIncident> = st
        .incidents
        .iter()
        .filter(|inc| query.matches(&|f| inc.field(f).to_string()))
        .collect();
    matching
        .sort_by(|a, b| query.compare(&|f| a.field(f).to_string(), &|f| b.field(f).to_string()));
    let total = matching.len();
    let result: Vec<Value> = matching
        .iter()
        .skip(offset)
        .take(limit)
        .map(|inc| view.render(inc, &st.base_url))
        .collect();
    let shown = result.len();
    let mut reply =
        Reply::json(200, &json!({"result": result})).with_header("X-Total-Count", total);
    if let Some(pages_before_last) = total.saturating_sub(1).checked_div(limit) {
        let link = |offset: usize| {
            let mut ser = form_urlencoded::Serializer::new(String::new());
            for (k, v) in req.query_pairs() {
                if k != "sysparm_offset" && k != "sysparm_limit" {
                    ser.append_pair(&k, &v);
                }
            }
            ser.append_pair("sysparm_limit", &limit.to_string());
            ser.append_pair("sysparm_offset", &offset.to_string());
            format!("{}/api/now/table/incident?{}", st.base_url, ser.finish())
        };
        let last = pages_before_last * limit;
        let mut links = vec![format!("<{}>;rel=\"first\"", link(0))];
        if offset > 0 {
            links.push(format!(
                "<{}>;rel=\"prev\"",
                link(offset.saturating_sub(limit))
            ));
        }
        if offset + shown < total {
            links.push(format!("<{}>;rel=\"next\"", link(offset + limit)));
        }
        links.push(format!("<{}>;rel=\"last\"", link(last)));
        reply = reply.with_header("Link", links.join(","));
    }
    reply
}
