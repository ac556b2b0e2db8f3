//! Outbound HTTP policy: a per-tenant allowlist and size/time limits,
//! enforced in wasmtime-wasi-http's `send_request` hook.
//!
//! The allowlist is decided once, when the tenant is configured, from the
//! upstream base URLs in its configuration (the keys the contract names
//! [`mssp_contract::Role::UpstreamUrl`]): scheme, host and
//! port must all match. Nothing else is reachable, and a denied request
//! fails in the guest with the WASI HTTP `HTTP-request-denied` error.
//!
//! An allowed request then counts against its upstream account ([`crate::budget`]):
//! when the account's budget or cooldown holds it back, the hook answers it itself —
//! `429`, `Retry-After`, [`DEFERRED_HEADER`] — and nothing leaves the host; every
//! answer that comes back is shown to the account (a 429 cools it down for every tenant).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::Uri;
use http_body_util::{BodyExt, Full, Limited};
use wasmtime_wasi_http::{Error as HttpError, RequestOptions, WasiBody, WasiHttpHooks};

use crate::budget::{Admission, DEFERRED_HEADER, DeferReason, TenantAccounts};
use crate::connections::{ConnectionPool, Timeouts};
use crate::secret::SecretString;
use crate::stats::{CallOutcome, StopKind, TenantStats};

/// One allowed origin: scheme, lower-case host and explicit port.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Origin {
    pub scheme: String,
    pub host: String,
    pub port: u16,
}

impl Origin {
    /// Parses `scheme://host[:port][/...]`; only http and https are accepted.
    pub fn parse(url: &str) -> Result<Self, String> {
        let uri: Uri = url
            .parse()
            .map_err(|e| format!("{url:?} is not a URL: {e}"))?;
        Self::of(&uri)
            .ok_or_else(|| format!("{url:?} needs an http:// or https:// scheme and a host"))
    }

    fn of(uri: &Uri) -> Option<Self> {
        let scheme = uri.scheme_str()?.to_ascii_lowercase();
        let default_port = match scheme.as_str() {
            "http" => 80,
            "https" => 443,
            _ => return None,
        };
        let host = uri.host()?.to_ascii_lowercase();
        if host.is_empty() {
            return None;
        }
        Some(Self {
            port: uri.port_u16().unwrap_or(default_port),
            scheme,
            host,
        })
    }
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}://{}:{}", self.scheme, self.host, self.port)
    }
}

/// The origins one tenant may call, each with the upstream service it
/// belongs to (the config key's prefix: `amp`, `xdr`, `snow`), for metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Allowlist(Vec<(Origin, String)>);

impl Allowlist {
    /// The upstream URLs of the configuration, plus explicit extra origins.
    /// Every `*_url` value must still be a valid URL.
    pub fn from_config(
        config: &BTreeMap<String, SecretString>,
        extra: &[String],
    ) -> Result<Self, String> {
        let mut origins = Vec::new();
        for (key, value) in config {
            if !key.ends_with("_url") || value.expose().is_empty() {
                continue;
            }
            let origin = Origin::parse(value.expose()).map_err(|e| format!("{key}: {e}"))?;
            // Only the upstream services a tenant calls: other `*_url` keys (e.g.
            // `amp_console_url`, used only in links) grant no access — the same least
            // privilege as `allowed_outbound_hosts` in `spin.toml`.
            if mssp_contract::is_upstream_url(key) {
                let service = key.split('_').next().unwrap_or(key).to_string();
                origins.push((origin, service));
            }
        }
        for url in extra {
            origins.push((Origin::parse(url)?, "other".to_string()));
        }
        origins.sort();
        origins.dedup_by(|a, b| a.0 == b.0);
        Ok(Self(origins))
    }

    /// The service an allowed URI belongs to; `None` when it is not allowed.
    pub fn service_of(&self, uri: &Uri) -> Option<&str> {
        let o = Origin::of(uri)?;
        self.0
            .iter()
            .find(|(origin, _)| *origin == o)
            .map(|(_, s)| s.as_str())
    }

    pub fn allows(&self, uri: &Uri) -> bool {
        self.service_of(uri).is_some()
    }

    pub fn origins(&self) -> impl Iterator<Item = &Origin> {
        self.0.iter().map(|(o, _)| o)
    }
}

/// Limits on one tenant's outbound calls.
#[derive(Clone, Copy, Debug)]
pub struct OutboundLimits {
    pub connect_timeout: Duration,
    pub first_byte_timeout: Duration,
    pub between_bytes_timeout: Duration,
    pub max_request_body: u64,
    pub max_response_body: usize,
}

/// The `send_request` hook of one tenant's store.
pub struct OutboundPolicy {
    pub tenant: Arc<str>,
    pub allow: Arc<Allowlist>,
    pub limits: OutboundLimits,
    pub stats: Arc<TenantStats>,
    /// The tenant's kept-alive upstream connections.
    pub pool: Arc<ConnectionPool>,
    /// The upstream accounts its requests count against, by service.
    pub accounts: Arc<TenantAccounts>,
    /// Per service, in this invocation: (a request let through, one deferred by the budget).
    pub used: HashMap<String, (bool, bool)>,
}

impl Drop for OutboundPolicy {
    /// The invocation ended: tells each account whether the tenant got through.
    fn drop(&mut self) {
        for (service, (granted, deferred)) in &self.used {
            if let Some(account) = self.accounts.of(service) {
                account.invocation_done(&self.tenant, *granted, *deferred);
            }
        }
    }
}

/// The host's own answer to a request its account held back: `429`, `Retry-After` in
/// whole seconds, [`DEFERRED_HEADER`] with the reason, and a JSON body saying so.
fn deferred_response(
    reason: DeferReason,
    retry_after_secs: u64,
    account: &str,
) -> http::Response<WasiBody> {
    let body = serde_json::json!({
        "error": "deferred by the host",
        "reason": reason.as_str(),
        "account": account,
        "retry_after": retry_after_secs,
    })
    .to_string();
    let mut res = http::Response::new(
        Full::new(Bytes::from(body))
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *res.status_mut() = http::StatusCode::TOO_MANY_REQUESTS;
    let h = res.headers_mut();
    h.insert(http::header::RETRY_AFTER, retry_after_secs.into());
    h.insert(
        DEFERRED_HEADER,
        http::HeaderValue::from_static(reason.as_str()),
    );
    h.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    res
}

impl OutboundPolicy {
    fn timeouts(&self, guest: Option<RequestOptions>) -> Timeouts {
        // The guest may ask for shorter timeouts, never longer ones.
        let pick = |asked: Option<Duration>, cap: Duration| asked.map_or(cap, |a| a.min(cap));
        let g = guest.unwrap_or_default();
        Timeouts {
            connect: pick(g.connect_timeout, self.limits.connect_timeout),
            first_byte: pick(g.first_byte_timeout, self.limits.first_byte_timeout),
            between_bytes: pick(g.between_bytes_timeout, self.limits.between_bytes_timeout),
        }
    }
}

type SendFuture = Box<
    dyn Future<
            Output = wasmtime_wasi_http::Result<(
                http::Response<WasiBody>,
                Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
            )>,
        > + Send,
>;

/// The error of a size-limited body: the inner body's own error, or — when the
/// limit was hit — `over_limit`, counted as a sandbox stop of the tenant.
fn limited_body_error(
    e: Box<dyn std::error::Error + Send + Sync>,
    stats: &TenantStats,
    over_limit: HttpError,
) -> HttpError {
    match e.downcast::<HttpError>() {
        Ok(inner) => *inner,
        Err(_) => {
            tracing::warn!(tenant = %stats.tenant(), "{over_limit}: body over the size cap");
            stats.stop(StopKind::BodyTooLarge);
            over_limit
        }
    }
}

impl WasiHttpHooks for OutboundPolicy {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        fut: Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
    ) -> SendFuture {
        drop(fut);
        let uri = request.uri().clone();
        let Some(service) = self.allow.service_of(&uri).map(str::to_string) else {
            tracing::warn!(
                tenant = %self.tenant,
                host = uri.host().unwrap_or(""),
                port = uri.port_u16(),
                scheme = uri.scheme_str().unwrap_or(""),
                "outbound request denied: origin not in the tenant's allowlist"
            );
            self.stats.stop(StopKind::DeniedRequest);
            return Box::new(async { Err(HttpError::HttpRequestDenied) });
        };
        let declared = request
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let max_req = self.limits.max_request_body;
        if declared.is_some_and(|n| n > max_req) {
            tracing::warn!(tenant = %self.tenant, size = declared, "outbound request body too large");
            self.stats.stop(StopKind::BodyTooLarge);
            return Box::new(async move { Err(HttpError::HttpRequestBodySize(declared)) });
        }
        let stats = self.stats.clone();
        let request = request.map(move |b| {
            Limited::new(b, max_req as usize)
                .map_err(move |e| {
                    limited_body_error(e, &stats, HttpError::HttpRequestBodySize(Some(max_req)))
                })
                .boxed_unsync()
        });
        let account = self.accounts.of(&service).cloned();
        if let Some(account) = &account {
            let used = self.used.entry(service.clone()).or_default();
            match account.admit(&self.tenant, Instant::now()) {
                Admission::Go => used.0 = true,
                Admission::Defer {
                    reason,
                    retry_after_secs,
                } => {
                    used.1 |= reason == DeferReason::Budget;
                    self.stats.deferred(&service, reason);
                    let res = deferred_response(reason, retry_after_secs, &account.name);
                    return Box::new(async move {
                        // The guest may still be writing the body: take it in (within
                        // the body cap) so that its writes succeed and it reads this
                        // answer, not a broken stream.
                        let _ = request.into_body().collect().await;
                        let io = async { Ok(()) };
                        Ok((res, Box::new(io) as Box<dyn Future<Output = _> + Send>))
                    });
                }
            }
        }
        let timeouts = self.timeouts(options);
        let max_res = self.limits.max_response_body;
        let stats = self.stats.clone();
        let pool = self.pool.clone();
        Box::new(async move {
            let (res, opened) = match pool.send(request, timeouts).await {
                Ok(ok) => ok,
                Err(e) => {
                    stats.upstream(&service, CallOutcome::Failed);
                    return Err(e);
                }
            };
            if let Some(account) = &account {
                account.on_answer(
                    res.status().as_u16(),
                    res.headers(),
                    Instant::now(),
                    SystemTime::now(),
                );
            }
            stats.connection(&service, opened);
            stats.upstream(&service, CallOutcome::of_status(res.status().as_u16()));
            let res = res.map(move |b| {
                Limited::new(b, max_res)
                    .map_err(move |e| {
                        let over = HttpError::HttpResponseBodySize(Some(max_res as u64));
                        limited_body_error(e, &stats, over)
                    })
                    .boxed_unsync()
            });
            // The connection is driven by its own task (hyper-util's client).
            let io = async { Ok(()) };
            Ok((res, Box::new(io) as Box<dyn Future<Output = _> + Send>))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(pairs: &[(&str, &str)]) -> BTreeMap<String, SecretString> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), SecretString::new(*v)))
            .collect()
    }

    #[test]
    fn allowlist_matches_scheme_host_and_port() {
        let allow = Allowlist::from_config(
            &cfg(&[
                ("amp_base_url", "https://api.eu.amp.cisco.com"),
                ("snow_base_url", "http://127.0.0.1:8081/"),
                ("amp_console_url", "https://console.eu.amp.cisco.com"),
                ("customer_name", "Acme"),
            ]),
            &[],
        )
        .unwrap();
        let ok = |u: &str| allow.allows(&u.parse().unwrap());
        assert!(ok("https://api.eu.amp.cisco.com/v1/events?limit=500"));
        assert!(ok("https://API.EU.AMP.CISCO.COM:443/v1/version"));
        assert!(ok("http://127.0.0.1:8081/api/now/table/incident"));
        assert!(!ok("http://api.eu.amp.cisco.com/v1/events"));
        assert!(!ok("https://api.amp.cisco.com/v1/events"));
        assert!(!ok("http://127.0.0.1:8082/"));
        assert!(!ok("http://localhost:8081/"));
        assert!(!ok("https://api.eu.amp.cisco.com.evil.example/"));
        assert!(
            !ok("https://console.eu.amp.cisco.com/"),
            "links grant no access"
        );
    }

    #[test]
    fn a_bad_url_in_config_is_a_clear_error() {
        let e = Allowlist::from_config(&cfg(&[("amp_base_url", "ftp://x")]), &[]).unwrap_err();
        assert!(e.starts_with("amp_base_url:"), "{e}");
    }
}
