//! Cisco XDR: OAuth2 client-credentials token and CTIA incidents.

use std::collections::BTreeMap;

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{CallError, ErrorKind, Reply, Upstream, encode, excerpt};
use crate::incident::XdrRef;
use crate::ports::{Method, Request};
use crate::retry::Service;
use crate::store;

/// The `external-key-prefixes` sent with every `POST /ctia/bundle/import`.
///
/// CTIA looks an imported entity up only by those of its external ids that start with one
/// of the prefixes named in this query parameter (threatgrid/ctia
/// src/ctia/bundle/core.clj `filter-external-ids`, src/ctia/bundle/routes.clj); without
/// the parameter its README says the server's configured prefixes apply (`ctia-` in its
/// old default), while its code since commit b4493005 (2020) uses every id. The bridge
/// therefore names its prefix explicitly: every external id it sends — the incident key
/// `amp-<8 hex>-d<detection>` / `-e<event>`, `<key>-sighting`, `<key>-relationship` —
/// starts with `amp-`. The key form is the one the bridge always used, so incidents
/// created before the parameter was sent are found as well.
pub const EXTERNAL_KEY_PREFIXES: &str = "amp-";

/// Ids per `GET /ctia/bulk`: CTIA refuses more than `ctia.http.bulk.max-size` (2000 by
/// default, resources/ctia-default.properties) and its HTTP server limits the request
/// line (Jetty: 8 KiB by default); 100 short ids (~56 bytes each with `incidents=`) keep
/// well inside both.
pub const BULK_CHUNK: usize = 100;

/// Refresh the token this long before it expires.
const TOKEN_EARLY_MS: i64 = 60_000;

/// The cached access token (a short-lived derived credential, never a config secret).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct CachedToken {
    access_token: String,
    expires_at_ms: i64,
}

/// What a bundle import made of the incident it carried.
#[derive(Debug)]
pub struct ImportedIncident {
    pub xdr: XdrRef,
    /// CTIA already had it (an earlier send got through).
    pub existed: bool,
    /// The entities of the bundle CTIA refused besides the incident.
    pub refused: Option<String>,
}

/// What CTIA's answer to a bundle import says of the incident in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportAnswer {
    /// The stored incident's entity id (its URL, or a short id).
    pub incident_id: String,
    /// CTIA already had it.
    pub existed: bool,
    /// The other entities CTIA refused, each as "<type> refused: <error>".
    pub refused: Vec<String>,
}

/// Why no incident can be taken from an import answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImportProblem {
    /// CTIA refused the incident itself: "<type> refused: <error>".
    Refused(String),
    /// The answer names no incident, or no id for it (damaged in transit).
    Unusable(&'static str),
}

/// What a read before writing found of one XDR incident.
#[derive(Debug, Clone)]
pub enum XdrRead {
    /// The stored entity, as CTIA answered it.
    Found(Value),
    /// CTIA no longer has it (404).
    Gone,
    /// It could not be read: a definite refusal (e.g. 403 for an incident an analyst
    /// restricted) or a failure that outlived its retries.
    Unreadable(CallError),
}

/// Reads a `POST /ctia/bundle/import` answer: `{"results": [{"type",
/// "result": "created" | "exists" | "error", "id", "error"}, …]}`. Pure and
/// total: any JSON gives an answer or a reason (fuzzed: `fuzz/`, target
/// `xdr_import`).
pub fn read_import_answer(json: &Value) -> Result<ImportAnswer, ImportProblem> {
    let kind_of = |r: &Value| {
        r.get("type")
            .and_then(Value::as_str)
            .unwrap_or("entity")
            .to_string()
    };
    let refusal = |r: &Value| {
        let why = r.get("error").map(Value::to_string).unwrap_or_default();
        format!("{} refused: {why}", kind_of(r))
    };
    let mut incident = None;
    let mut refused = Vec::new();
    for r in json
        .get("results")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let result = r.get("result").and_then(Value::as_str).unwrap_or("");
        if kind_of(r) == "incident" {
            incident = Some((r, result));
        } else if result == "error" {
            refused.push(refusal(r));
        }
    }
    let (entry, result) = incident.ok_or(ImportProblem::Unusable(
        "the import answer names no incident",
    ))?;
    if !matches!(result, "created" | "exists") {
        return Err(ImportProblem::Refused(refusal(entry)));
    }
    let incident_id = entry
        .get("id")
        .and_then(Value::as_str)
        .filter(|id| !id.is_empty())
        .ok_or(ImportProblem::Unusable("answer carries no entity id"))?
        .to_string();
    Ok(ImportAnswer {
        incident_id,
        existed: result == "exists",
        refused,
    })
}

impl Upstream<'_, '_> {
    /// A valid bearer token: memory, then the store, then `POST /iroh/oauth2/token`.
    fn xdr_token(&mut self, fresh: bool) -> Result<String, CallError> {
        if !fresh {
            if let Some(t) = &self.xdr_token {
                return Ok(t.clone());
            }
            let now = self.now_ms();
            if let Ok(Some(cached)) =
                store::get_json::<CachedToken>(self.ports.kv, store::XDR_TOKEN)
                && cached.expires_at_ms - TOKEN_EARLY_MS > now
            {
                self.xdr_token = Some(cached.access_token.clone());
                return Ok(cached.access_token);
            }
        }
        let basic = base64::engine::general_purpose::STANDARD.encode(format!(
            "{}:{}",
            self.cfg.xdr_client_id,
            self.cfg.xdr_client_secret.expose()
        ));
        let req = Request::new(
            Method::Post,
            format!("{}/iroh/oauth2/token", self.cfg.xdr_auth_url),
        )
        .header("authorization", format!("Basic {basic}"))
        .form("grant_type=client_credentials");
        let reply = self.send(Service::Xdr, &req, true)?;
        let token = reply
            .json
            .get("access_token")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                self.error(
                    Service::Xdr,
                    &req,
                    ErrorKind::Invalid,
                    "token answer has no access_token".into(),
                )
            })?
            .to_string();
        let expires_in = reply
            .json
            .get("expires_in")
            .and_then(Value::as_i64)
            .unwrap_or(600);
        let cached = CachedToken {
            access_token: token.clone(),
            expires_at_ms: self.now_ms() + expires_in * 1000,
        };
        // A failed cache write costs one extra token request later, nothing else.
        let _ = store::put_json(self.ports.kv, store::XDR_TOKEN, &cached);
        self.xdr_token = Some(token.clone());
        Ok(token)
    }

    /// A CTIA call with the bearer token and the retry policy; on a 401 the
    /// token is renewed once and the call repeated.
    fn xdr(
        &mut self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Reply, CallError> {
        let mut fresh = false;
        loop {
            let token = self.xdr_token(fresh)?;
            let mut req = Request::new(method, format!("{}{path}", self.cfg.xdr_api_url))
                .header("authorization", format!("Bearer {token}"));
            if let Some(b) = body {
                req = req.json(b);
            }
            match self.send(Service::Xdr, &req, method != Method::Delete) {
                Err(e) if e.status() == Some(401) && !fresh => {
                    self.xdr_token = None;
                    fresh = true;
                }
                other => return other,
            }
        }
    }

    /// `POST /ctia/bundle/import` of a bundle holding one incident (and
    /// possibly its sighting and relationship): the stored incident, whether
    /// it already existed (CTIA recognised its external id: an earlier send
    /// got through), and what CTIA refused of the rest of the bundle, if
    /// anything. The import is idempotent by external ids, so it is retried
    /// like a read. A refused incident is an error.
    pub fn xdr_import_incident(&mut self, bundle: &Value) -> Result<ImportedIncident, CallError> {
        let path = format!(
            "/ctia/bundle/import?external-key-prefixes={}",
            encode(EXTERNAL_KEY_PREFIXES)
        );
        let reply = self.xdr(Method::Post, &path, Some(bundle))?;
        let invalid = |kind: ErrorKind, detail: String| CallError {
            service: Service::Xdr,
            what: "POST /ctia/bundle/import".into(),
            kind,
            detail,
            maybe_sent: true,
            wait_ms: None,
            held_by_host: false,
        };
        match read_import_answer(&reply.json) {
            Ok(answer) => Ok(ImportedIncident {
                xdr: XdrRef::from_entity_id(&answer.incident_id),
                existed: answer.existed,
                refused: (!answer.refused.is_empty())
                    .then(|| excerpt(&self.cfg.redact(&answer.refused.join("; ")))),
            }),
            // CTIA answers 200 with the refusal inside: a definite answer, as a 400 would be.
            Err(ImportProblem::Refused(why)) => Err(invalid(
                ErrorKind::Status(400),
                excerpt(&self.cfg.redact(&why)),
            )),
            Err(ImportProblem::Unusable(why)) => Err(invalid(ErrorKind::Invalid, why.into())),
        }
    }

    /// The stored incidents, read in one `GET /ctia/bulk?incidents=<short id>&…` per
    /// [`BULK_CHUNK`] ids: short id → what XDR holds ([`XdrRead`]), one outcome per id,
    /// so an incident the bridge may not read fails only its own step.
    ///
    /// CTIA answers `{"incidents": [entity | null, …]}` with what its store finds, in the
    /// store's order, not the request's (src/ctia/bulk/core.clj `read-entities` →
    /// src/ctia/stores/es/crud.clj `handle-read-many`): answers are matched by their
    /// `id`, never by position; `null` (an entity the caller may not read) and ids
    /// missing from the answer are each confirmed with one `GET /ctia/incident/{id}`
    /// (the bulk read is a search, which may lag a fresh write) — 404 means gone, any
    /// other failure is that id's [`XdrRead::Unreadable`]. A bulk request refused with a
    /// definite status is read id by id the same way; one that failed otherwise
    /// (5xx, timeout, rate limit, budget, an answer without the `incidents` list)
    /// makes every id of its chunk unreadable with that error.
    pub fn xdr_read_incidents(&mut self, ids: &[XdrRef]) -> BTreeMap<String, XdrRead> {
        let mut out = BTreeMap::new();
        for chunk in ids.chunks(BULK_CHUNK) {
            let query: Vec<String> = chunk
                .iter()
                .map(|x| format!("incidents={}", encode(&x.short_id)))
                .collect();
            let path = format!("/ctia/bulk?{}", query.join("&"));
            let listed = self.xdr(Method::Get, &path, None).and_then(|reply| {
                match reply.json.get("incidents").and_then(Value::as_array) {
                    Some(list) => Ok(list.clone()),
                    None => Err(CallError {
                        service: Service::Xdr,
                        what: "GET /ctia/bulk".into(),
                        kind: ErrorKind::Invalid,
                        detail: "the bulk answer has no incidents list".into(),
                        maybe_sent: false,
                        wait_ms: None,
                        held_by_host: false,
                    }),
                }
            });
            match listed {
                Ok(list) => {
                    for entity in list.iter().filter(|e| e.is_object()) {
                        if let Some(id) = entity.get("id").and_then(Value::as_str) {
                            let short = XdrRef::from_entity_id(id).short_id;
                            if chunk.iter().any(|x| x.short_id == short) {
                                out.insert(short, XdrRead::Found(entity.clone()));
                            }
                        }
                    }
                }
                Err(e) if e.status().is_none() => {
                    for x in chunk {
                        out.insert(x.short_id.clone(), XdrRead::Unreadable(e.clone()));
                    }
                    continue;
                }
                // Refused as a whole (e.g. one id CTIA will not take): id by id below.
                Err(_) => {}
            }
            for x in chunk {
                if out.contains_key(&x.short_id) {
                    continue;
                }
                let path = format!("/ctia/incident/{}", encode(&x.short_id));
                let read = match self.xdr(Method::Get, &path, None) {
                    Ok(r) => XdrRead::Found(r.json),
                    Err(e) if e.status() == Some(404) => XdrRead::Gone,
                    Err(e) => XdrRead::Unreadable(e),
                };
                out.insert(x.short_id.clone(), read);
            }
        }
        out
    }

    /// `PATCH /ctia/incident/{id}`.
    pub fn xdr_patch_incident(&mut self, id: &XdrRef, body: &Value) -> Result<(), CallError> {
        let path = format!("/ctia/incident/{}", encode(&id.short_id));
        self.xdr(Method::Patch, &path, Some(body)).map(|_| ())
    }
}
