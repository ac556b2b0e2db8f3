//! Cisco XDR: OAuth2 client-credentials token and CTIA incidents.

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{CallError, ErrorKind, Reply, Upstream, encode};
use crate::incident::XdrRef;
use crate::ports::{Method, Request};
use crate::retry::Service;
use crate::store;

/// Refresh the token this long before it expires.
const TOKEN_EARLY_MS: i64 = 60_000;

/// The cached access token (a short-lived derived credential, never a config secret).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct CachedToken {
    access_token: String,
    expires_at_ms: i64,
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

    /// A CTIA call with the bearer token; on a 401 the token is renewed once and the
    /// call repeated. `once` = no retry policy (creates).
    fn xdr(
        &mut self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        once: bool,
    ) -> Result<Reply, CallError> {
        let mut fresh = false;
        loop {
            let token = self.xdr_token(fresh)?;
            let mut req = Request::new(method, format!("{}{path}", self.cfg.xdr_api_url))
                .header("authorization", format!("Bearer {token}"));
            if let Some(b) = body {
                req = req.json(b);
            }
            let result = if once {
                self.send_once(Service::Xdr, &req, method != Method::Delete)
            } else {
                self.send(Service::Xdr, &req, method != Method::Delete)
            };
            match result {
                Err(e) if e.status() == Some(401) && !fresh => {
                    self.xdr_token = None;
                    fresh = true;
                }
                other => return other,
            }
        }
    }

    fn entity_id(&self, v: &Value, what: &str) -> Result<XdrRef, CallError> {
        v.get("id")
            .and_then(Value::as_str)
            .filter(|id| !id.is_empty())
            .map(XdrRef::from_entity_id)
            .ok_or_else(|| CallError {
                service: Service::Xdr,
                what: what.into(),
                kind: ErrorKind::Invalid,
                detail: "answer carries no entity id".into(),
                maybe_sent: true,
                wait_ms: None,
            })
    }

    /// `POST /ctia/incident` (one attempt).
    pub fn xdr_create_incident(&mut self, body: &Value) -> Result<XdrRef, CallError> {
        let reply = self.xdr(Method::Post, "/ctia/incident", Some(body), true)?;
        self.entity_id(&reply.json, "POST /ctia/incident")
    }

    /// `GET /ctia/incident/external_id/{key}`: the incident already carrying our key.
    pub fn xdr_find_incident(&mut self, key: &str) -> Result<Option<XdrRef>, CallError> {
        let path = format!("/ctia/incident/external_id/{}", encode(key));
        let reply = self.xdr(Method::Get, &path, None, false)?;
        match &reply.json {
            Value::Array(items) => Ok(items.iter().find_map(|i| {
                i.get("id")
                    .and_then(Value::as_str)
                    .map(XdrRef::from_entity_id)
            })),
            _ => Err(CallError {
                service: Service::Xdr,
                what: format!("GET {path}"),
                kind: ErrorKind::Invalid,
                detail: "external id lookup did not answer a list".into(),
                maybe_sent: false,
                wait_ms: None,
            }),
        }
    }

    /// `POST /ctia/bundle/import`.
    /// CTIA answers 200 even when entities of the bundle were refused: those are
    /// reported per entity in `results`, and turned into an error here.
    pub fn xdr_import_bundle(&mut self, bundle: &Value) -> Result<(), CallError> {
        let reply = self.xdr(Method::Post, "/ctia/bundle/import", Some(bundle), false)?;
        let refused: Vec<String> = reply
            .json
            .get("results")
            .and_then(Value::as_array)
            .map(|results| {
                results
                    .iter()
                    .filter(|r| r.get("result").and_then(Value::as_str) == Some("error"))
                    .map(|r| {
                        let kind = r.get("type").and_then(Value::as_str).unwrap_or("entity");
                        let why = r.get("error").map(Value::to_string).unwrap_or_default();
                        format!("{kind} refused: {why}")
                    })
                    .collect()
            })
            .unwrap_or_default();
        if refused.is_empty() {
            return Ok(());
        }
        let mut detail = refused.join("; ");
        detail.truncate(300);
        Err(CallError {
            service: Service::Xdr,
            what: "POST /ctia/bundle/import".into(),
            kind: ErrorKind::Status(reply.status),
            detail: self.cfg.redact(&detail),
            maybe_sent: true,
            wait_ms: None,
        })
    }

    /// `PATCH /ctia/incident/{id}`.
    pub fn xdr_patch_incident(&mut self, id: &XdrRef, body: &Value) -> Result<(), CallError> {
        let path = format!("/ctia/incident/{}", encode(&id.short_id));
        self.xdr(Method::Patch, &path, Some(body), false)
            .map(|_| ())
    }

    /// `POST /ctia/incident/{id}/status` `{"status":"Closed"}`.
    pub fn xdr_close_incident(&mut self, id: &XdrRef) -> Result<(), CallError> {
        let path = format!("/ctia/incident/{}/status", encode(&id.short_id));
        self.xdr(
            Method::Post,
            &path,
            Some(&json!({"status": "Closed"})),
            false,
        )
        .map(|_| ())
    }
}
