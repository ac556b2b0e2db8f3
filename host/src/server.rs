//! Inbound HTTP, on two listeners ([`Listener`]):
//! - the **public** one serves only what outsiders must reach: `/healthz` and the
//!   signed ServiceNow callback `POST /tenants/{tenant}/v1/servicenow/events`. Any
//!   other path, an unknown tenant and a refused callback all get the same answers,
//!   so it tells nobody which tenants exist;
//! - the **private** one is the operator's: status pages, `/metrics`, and every
//!   tenant route (`/tenants/{tenant}/…` reaches that tenant's instance with the path
//!   the guest would see on Spin).
//!
//! Each listener bounds its own requests in flight, so a flood on one never refuses
//! the other's; a refused request is answered 503 (the listener's bound) or 429 (the
//! tenant's own bound) with `Retry-After`, and counted (`mssp_http_refused_total`).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::secrets::SecretString;
use mssp_contract::access::{Access, Credential, Route, Shown};
use mssp_runtime::stats::StopKind;
use mssp_runtime::{InvokeError, Runtime, Tenant};

type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type Body = UnsyncBoxBody<Bytes, BoxError>;
/// A request body on its way to a component: streamed within the size cap, or
/// already read (a callback whose signature the gate checked).
type InBody = UnsyncBoxBody<Bytes, wasmtime_wasi_http::Error>;

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(
        Full::new(body.into())
            .map_err(|e| match e {})
            .boxed_unsync(),
    );
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn html(status: StatusCode, body: String) -> Response<Body> {
    let mut r = text(status, body);
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/html; charset=utf-8"),
    );
    r
}

fn json_error(status: StatusCode, message: &str) -> Response<Body> {
    let body = serde_json::json!({ "error": message }).to_string();
    let mut r = text(status, body);
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

/// A request's head and body as the gate shows them to `mssp_contract::access`.
struct ShownParts<'a> {
    headers: &'a http::HeaderMap,
    body: &'a [u8],
}

impl Shown for ShownParts<'_> {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    fn body(&self) -> &[u8] {
        self.body
    }
}

/// A configuration shaped like a tenant's whose credentials nobody holds (random per
/// server): what the gate checks a request for an unknown tenant against.
fn decoy_config() -> std::collections::BTreeMap<String, String> {
    use base64::Engine as _;
    use rand::RngCore as _;
    let mut key = [0u8; 32];
    rand::rng().fill_bytes(&mut key);
    let token: String = key.iter().map(|b| format!("{b:02x}")).collect();
    [
        ("read_token", token.clone()),
        ("tick_token", token),
        (
            "callback_key",
            base64::engine::general_purpose::STANDARD.encode(key),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// A body streamed within `max` bytes (a longer one fails the component's read).
fn limited(body: Incoming, max: u64) -> InBody {
    Limited::new(body, max as usize)
        .map_err(move |_| wasmtime_wasi_http::Error::HttpRequestBodySize(Some(max)))
        .boxed_unsync()
}

/// Splits `/tenants/{id}/rest?q` into `id` and `/rest?q`.
pub fn split_tenant_path(path_and_query: &str) -> Option<(&str, String)> {
    let rest = path_and_query.strip_prefix("/tenants/")?;
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (id, tail) = rest.split_at(end);
    if id.is_empty() {
        return None;
    }
    let tail = if tail.starts_with('/') {
        tail.to_string()
    } else {
        format!("/{tail}")
    };
    Some((id, tail))
}

/// Which of the host's two listeners a [`Server`] answers on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Listener {
    /// Reachable by ServiceNow: `/healthz` and the signed callback only.
    Public,
    /// The operator's: status pages, `/metrics`, every tenant route.
    Private,
}

impl Listener {
    /// The `listener` label of the metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Listener::Public => "public",
            Listener::Private => "private",
        }
    }
}

/// Seconds a refused client is asked to wait (`Retry-After`).
const RETRY_AFTER_SECS: &str = "1";

/// The one answer of the public listener to anything it does not serve.
const NOT_SERVED: &str = "no such route";
/// The one answer of the private listener, when it has an admin token, to a caller
/// without it whom a tenant refuses or who names an unknown tenant.
const CREDENTIAL_REFUSED: &str = "missing or wrong credential";

/// The one answer of the public listener to a callback it does not accept (unknown
/// tenant, bad or stale signature, missing headers): the reason is logged, not told.
const CALLBACK_REFUSED: &str = "callback refused";

pub struct Server {
    runtime: Arc<Runtime>,
    listener: Listener,
    requests: Arc<Semaphore>,
    /// Guards the operator's routes (`/`, `/ui/…`, `/metrics`) when set; it also
    /// reads every tenant's routes.
    admin_token: Option<SecretString>,
    /// What the gate checks a request for an unknown tenant against ([`decoy_config`]).
    decoy: std::collections::BTreeMap<String, String>,
}

/// Environment variable holding the admin token of the operator's routes.
pub const ADMIN_TOKEN_ENV: &str = "MSSP_ADMIN_TOKEN";

impl Server {
    pub fn new(runtime: Arc<Runtime>) -> Arc<Self> {
        Self::with_admin_token(runtime, None)
    }

    /// A server whose operator routes require `admin_token`, as a bearer
    /// token or as the password of HTTP Basic auth (for browsers).
    pub fn with_admin_token(runtime: Arc<Runtime>, admin_token: Option<SecretString>) -> Arc<Self> {
        Self::on(Listener::Private, runtime, admin_token)
    }

    /// The public listener's server (callbacks and `/healthz` only).
    pub fn public(runtime: Arc<Runtime>) -> Arc<Self> {
        Self::on(Listener::Public, runtime, None)
    }

    fn on(
        listener: Listener,
        runtime: Arc<Runtime>,
        admin_token: Option<SecretString>,
    ) -> Arc<Self> {
        let n = runtime.limits().max_concurrent_requests.max(1);
        Arc::new(Self {
            runtime,
            listener,
            requests: Arc::new(Semaphore::new(n)),
            admin_token,
            decoy: decoy_config(),
        })
    }

    /// An explicit refusal: `status` (503 or 429) with `Retry-After`, counted.
    fn refused(&self, status: StatusCode, reason: &str, message: &str) -> Response<Body> {
        self.runtime
            .metrics()
            .inbound_refused(self.listener.as_str(), reason);
        let mut r = json_error(status, message);
        r.headers_mut().insert(
            http::header::RETRY_AFTER,
            http::HeaderValue::from_static(RETRY_AFTER_SECS),
        );
        r
    }

    fn busy(&self) -> Response<Body> {
        self.refused(
            StatusCode::SERVICE_UNAVAILABLE,
            "in_flight",
            "too many requests in flight; retry after the Retry-After seconds",
        )
    }

    /// Whether the request may see the operator's routes.
    fn admitted(&self, req: &Request<Incoming>) -> bool {
        let Some(token) = &self.admin_token else {
            return true;
        };
        let Some(auth) = req
            .headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
        else {
            return false;
        };
        let given = if let Some(b) = auth.strip_prefix("Bearer ") {
            b.trim().as_bytes().to_vec()
        } else if let Some(basic) = auth.strip_prefix("Basic ") {
            use base64::Engine as _;
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(basic.trim())
                .unwrap_or_default();
            match decoded.iter().position(|b| *b == b':') {
                Some(i) => decoded[i + 1..].to_vec(),
                None => return false,
            }
        } else {
            return false;
        };
        mssp_contract::access::constant_time_eq(&given, token.expose().as_bytes())
    }

    /// Serves until the listener fails.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) -> anyhow::Result<()> {
        loop {
            let (stream, peer) = listener.accept().await?;
            let me = self.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let me = me.clone();
                    async move { Ok::<_, Infallible>(me.route(req).await) }
                });
                if let Err(e) = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await
                {
                    tracing::debug!(%peer, "connection ended: {e}");
                }
            });
        }
    }

    /// Binds `addr` and serves in the background; returns the bound address.
    pub async fn spawn(self: Arc<Self>, addr: SocketAddr) -> anyhow::Result<SocketAddr> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| anyhow::anyhow!("binding {addr}: {e}"))?;
        let bound = listener.local_addr()?;
        tokio::spawn(async move {
            if let Err(e) = self.serve(listener).await {
                tracing::error!("HTTP server stopped: {e}");
            }
        });
        Ok(bound)
    }

    pub async fn route(&self, req: Request<Incoming>) -> Response<Body> {
        let pq = req
            .uri()
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_else(|| "/".into());
        if pq == "/healthz" {
            return text(StatusCode::OK, "ok\n");
        }
        if self.listener == Listener::Public {
            return self.public_route(req, pq).await;
        }
        let operator_route =
            pq == "/metrics" || req.uri().path() == "/" || req.uri().path().starts_with("/ui/");
        if operator_route && !self.admitted(&req) {
            let mut r = json_error(StatusCode::UNAUTHORIZED, "admin token required");
            r.headers_mut().insert(
                http::header::WWW_AUTHENTICATE,
                http::HeaderValue::from_static("Basic realm=\"mssp-bridge\""),
            );
            return r;
        }
        if pq == "/metrics" {
            let mut r = text(StatusCode::OK, self.runtime.metrics().render());
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            return r;
        }
        let path = req.uri().path();
        if req.method() == http::Method::GET && (path == "/" || path.starts_with("/ui/")) {
            // The pages run the tenants' guests: they count as requests in flight.
            let Ok(_permit) = self.requests.clone().try_acquire_owned() else {
                return self.busy();
            };
            if path == "/" {
                return html(
                    StatusCode::OK,
                    crate::status_page::overview(&self.runtime).await,
                );
            }
            return self.ui(path).await;
        }
        let Some((id, tail)) = split_tenant_path(&pq) else {
            return json_error(StatusCode::NOT_FOUND, "no such route");
        };
        let tenant = self.runtime.tenant(id);
        // With an admin token, the listener may be reachable by others: a caller without
        // it passes the gate first, so an unknown tenant, an unknown route and a refused
        // credential answer alike and take as long. Without one, the listener is the
        // operator's alone (loopback: `serve` refuses anything else) and answers plainly.
        let operator = self.admin_token.is_some() && self.admitted(&req);
        if self.admin_token.is_some() && !operator {
            let Ok(_permit) = self.requests.clone().try_acquire_owned() else {
                return self.busy();
            };
            return match self.gate(req, tenant, &tail).await {
                Ok((parts, body, tenant)) => {
                    let answer = self.invoke(parts, body, tenant.clone(), tail, false).await;
                    if matches!(
                        answer.status(),
                        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN
                    ) {
                        tracing::info!(tenant = %tenant.id, status = %answer.status(), "request refused by the tenant's component");
                        return json_error(StatusCode::UNAUTHORIZED, CREDENTIAL_REFUSED);
                    }
                    answer
                }
                Err(why) => {
                    tracing::info!(tenant = %id, "request refused before the component: {why}");
                    json_error(StatusCode::UNAUTHORIZED, CREDENTIAL_REFUSED)
                }
            };
        }
        let Some(tenant) = tenant else {
            return json_error(StatusCode::NOT_FOUND, "no such tenant");
        };
        self.forward(req, tenant, tail, operator).await
    }

    /// The component's own admission rule (`mssp_contract::access`), applied before it
    /// runs to a caller who showed no admin token: against the tenant's configuration,
    /// or for an unknown tenant against [`decoy_config`], the same work either way.
    /// A callback's body is read (within the size cap and the request deadline) to check
    /// its signature. `Ok`: the request to hand on; `Err`: why not (for the log only).
    async fn gate(
        &self,
        req: Request<Incoming>,
        tenant: Option<Arc<Tenant>>,
        tail: &str,
    ) -> Result<(http::request::Parts, InBody, Arc<Tenant>), String> {
        let access = match &tenant {
            Some(t) => Access::from_config(&|k| t.config_value(k).map(str::to_string)),
            None => Access::from_config(&|k| self.decoy.get(k).cloned()),
        };
        let route = Route::parse(req.method().as_str(), tail)
            .map_err(|e| format!("no such route ({e:?})"))?;
        let (parts, body) = req.into_parts();
        let max = self.runtime.limits().max_inbound_body;
        let read = if route.credential() == Credential::Signature {
            let deadline =
                std::time::Duration::from_secs(self.runtime.limits().request_deadline_secs);
            let collected =
                tokio::time::timeout(deadline, Limited::new(body, max as usize).collect())
                    .await
                    .map_err(|_| "the body did not arrive within the request deadline".to_string())?
                    .map_err(|e| format!("unreadable body: {e}"))?;
            Ok(collected.to_bytes())
        } else {
            Err(body)
        };
        let now_secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let shown = ShownParts {
            headers: &parts.headers,
            body: read.as_ref().map_or(&[][..], |b| b.as_ref()),
        };
        access
            .admit(route, &shown, now_secs)
            .map_err(|r| format!("{} {}", r.status, r.reason))?;
        let tenant = tenant.ok_or("unknown tenant")?;
        let body = match read {
            Ok(bytes) => Full::new(bytes).map_err(|e| match e {}).boxed_unsync(),
            Err(body) => limited(body, max),
        };
        Ok((parts, body, tenant))
    }

    /// The public listener: the signed callback of a known tenant, else the same
    /// answers whatever the path or tenant.
    async fn public_route(&self, req: Request<Incoming>, pq: String) -> Response<Body> {
        let is_post = req.method() == http::Method::POST;
        let callback: Option<(String, String)> = split_tenant_path(&pq)
            .filter(|(_, tail)| is_post && tail == "/v1/servicenow/events")
            .map(|(id, tail)| (id.to_string(), tail));
        let Some((id, tail)) = callback else {
            return json_error(StatusCode::NOT_FOUND, NOT_SERVED);
        };
        let Ok(_permit) = self.requests.clone().try_acquire_owned() else {
            return self.busy();
        };
        let tenant = self.runtime.tenant(&id);
        let (parts, body, tenant) = match self.gate(req, tenant, &tail).await {
            Ok(admitted) => admitted,
            Err(why) => {
                tracing::warn!(tenant = %id, "callback refused before the component: {why}");
                return json_error(StatusCode::UNAUTHORIZED, CALLBACK_REFUSED);
            }
        };
        let answer = self.invoke(parts, body, tenant.clone(), tail, false).await;
        if answer.status() != StatusCode::UNAUTHORIZED {
            return answer;
        }
        // The component's reason stays in its answer to the private listener and in
        // the log; the caller gets the one answer an unknown tenant gets too.
        tracing::warn!(tenant = %tenant.id, "callback refused by the tenant's component");
        json_error(StatusCode::UNAUTHORIZED, CALLBACK_REFUSED)
    }

    /// Hands `req` to `tenant` with the path `tail`, within this listener's bound;
    /// `operator`: the caller showed the admin token (its reads are made with the
    /// runtime's own read credential).
    async fn forward(
        &self,
        req: Request<Incoming>,
        tenant: Arc<Tenant>,
        tail: String,
        operator: bool,
    ) -> Response<Body> {
        let Ok(_permit) = self.requests.clone().try_acquire_owned() else {
            return self.busy();
        };
        let (parts, body) = req.into_parts();
        let body = limited(body, self.runtime.limits().max_inbound_body);
        self.invoke(parts, body, tenant, tail, operator).await
    }

    /// Runs `tenant`'s component on the request (the caller holds a slot of this
    /// listener's bound).
    async fn invoke(
        &self,
        mut parts: http::request::Parts,
        body: InBody,
        tenant: Arc<Tenant>,
        tail: String,
        operator: bool,
    ) -> Response<Body> {
        let max = self.runtime.limits().max_inbound_body;
        let declared = parts
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > max) {
            tenant.stats.stop(StopKind::BodyTooLarge);
            return json_error(StatusCode::PAYLOAD_TOO_LARGE, "request body too large");
        }
        // The operator's admin token reads every tenant: it is exchanged for the
        // runtime's own read credential, which the component accepts.
        if operator && parts.method == http::Method::GET {
            let bearer = format!("Bearer {}", self.runtime.host_read_token().expose());
            match http::HeaderValue::from_str(&bearer) {
                Ok(v) => {
                    parts.headers.insert(http::header::AUTHORIZATION, v);
                }
                Err(_) => return json_error(StatusCode::INTERNAL_SERVER_ERROR, "bad host token"),
            }
        }
        parts.uri = match tail.parse() {
            Ok(u) => u,
            Err(_) => return json_error(StatusCode::BAD_REQUEST, "bad request path"),
        };
        if !parts.headers.contains_key(http::header::HOST) {
            parts.headers.insert(
                http::header::HOST,
                http::HeaderValue::from_static("localhost"),
            );
        }
        let req = Request::from_parts(parts, body);
        let cap = self.runtime.limits().max_response_body;
        let stats = tenant.stats.clone();
        let runtime = self.runtime.clone();
        match runtime.handle_http(tenant.clone(), req).await {
            Ok(resp) => resp.map(|b| {
                Limited::new(b, cap as usize)
                    .map_err(move |e| {
                        if e.is::<http_body_util::LengthLimitError>() {
                            tracing::warn!(tenant = %stats.tenant(), "response body over the cap; connection cut");
                            stats.stop(StopKind::BodyTooLarge);
                        }
                        e
                    })
                    .boxed_unsync()
            }),
            Err(InvokeError::Busy { .. }) => self.refused(
                StatusCode::TOO_MANY_REQUESTS,
                "tenant_busy",
                "the tenant is busy; retry after the Retry-After seconds",
            ),
            Err(e) => {
                tracing::warn!(tenant = %tenant.id, "request failed: {e}");
                json_error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "the tenant's handler failed",
                )
            }
        }
    }
}

impl Server {
    /// The status page's tenant and incident pages.
    async fn ui(&self, path: &str) -> Response<Body> {
        use crate::status_page::{esc, incident_page, parse_ui_path, tenant_page};
        let not_found = |what: &str| {
            html(
                StatusCode::NOT_FOUND,
                format!(
                    "<!DOCTYPE html><html><body><h1>Not found</h1><p>{}</p><p><a href=\"/\">all tenants</a></p></body></html>",
                    esc(what)
                ),
            )
        };
        match parse_ui_path(path) {
            Some((tenant, None)) => match tenant_page(&self.runtime, &tenant).await {
                Some(page) => html(StatusCode::OK, page),
                None => not_found(&format!("no tenant {tenant}")),
            },
            Some((tenant, Some(key))) => match incident_page(&self.runtime, &tenant, &key).await {
                Ok(Some(page)) => html(StatusCode::OK, page),
                Ok(None) => not_found(&format!("no incident {key} in tenant {tenant}")),
                Err(e) => {
                    tracing::warn!(tenant = %tenant, incident = %key, "incident page failed: {e}");
                    html(
                        StatusCode::BAD_GATEWAY,
                        format!(
                            "<!DOCTYPE html><html><body><h1>Incident unavailable</h1><p>{}</p></body></html>",
                            esc(&e)
                        ),
                    )
                }
            },
            None => not_found(path),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::split_tenant_path;

    #[test]
    fn tenant_prefix_is_stripped_like_spin_would() {
        assert_eq!(
            split_tenant_path("/tenants/acme/v1/status"),
            Some(("acme", "/v1/status".into()))
        );
        assert_eq!(
            split_tenant_path("/tenants/acme?x=1"),
            Some(("acme", "/?x=1".into()))
        );
        assert_eq!(
            split_tenant_path("/tenants/acme"),
            Some(("acme", "/".into()))
        );
        assert_eq!(split_tenant_path("/tenants//x"), None);
        assert_eq!(split_tenant_path("/other"), None);
    }
}
