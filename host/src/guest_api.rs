//! The host's own reads of a tenant's state go through the guest's HTTP
//! routes (`GET /v1/status`, `/v1/incidents[/{key}]`, `POST /v1/backfill`),
//! exactly as an operator's client would, so host and guest never disagree.
//! Also the deep links of an incident into XDR, ServiceNow and the Secure
//! Endpoint console.

use mssp_contract::access::ReadRule;
pub use mssp_contract::access::Readers;
use std::sync::Arc;

use anyhow::anyhow;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde_json::Value;

use mssp_contract::incident::{IncidentList, IncidentSummary, links};
use mssp_runtime::{Runtime, Tenant};

/// One answer of a guest route: status and JSON body (`Null` when not JSON).
pub struct GuestReply {
    pub status: u16,
    pub json: Value,
}

impl GuestReply {
    /// The guest's `{"error": …}` text, or the status.
    pub fn error_text(&self) -> String {
        self.json
            .get("error")
            .and_then(Value::as_str)
            .map_or_else(|| format!("HTTP {}", self.status), str::to_string)
    }
}

/// Sends one request to `tenant`'s guest and reads its JSON answer.
pub async fn call(
    runtime: &Arc<Runtime>,
    tenant: Arc<Tenant>,
    method: http::Method,
    path: &str,
    bearer: Option<&str>,
    body: Option<Value>,
) -> anyhow::Result<GuestReply> {
    let id = tenant.id.clone();
    let mut req = http::Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::HOST, "localhost");
    if let Some(token) = bearer {
        req = req.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let bytes = match body {
        Some(v) => {
            req = req.header(http::header::CONTENT_TYPE, "application/json");
            Bytes::from(v.to_string())
        }
        None => Bytes::new(),
    };
    let req =
        req.body(Full::new(bytes).map_err(|e| -> wasmtime_wasi_http::Error { match e {} }))?;
    let resp = runtime
        .clone()
        .handle_http(tenant, req)
        .await
        .map_err(|e| anyhow!("{e}"))?;
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| anyhow!("reading {path} of tenant {id}: {e:?}"))?
        .to_bytes();
    Ok(GuestReply {
        status,
        json: serde_json::from_slice(&body).unwrap_or(Value::Null),
    })
}

/// `GET path` of the tenant's guest, with the runtime's own read credential as the
/// bearer ([`Runtime::host_read_token`]: the component accepts it whatever the
/// tenant's `read_token`).
pub async fn get(
    runtime: &Arc<Runtime>,
    tenant: Arc<Tenant>,
    path: &str,
) -> anyhow::Result<GuestReply> {
    let token = runtime.host_read_token().expose().to_string();
    call(runtime, tenant, http::Method::GET, path, Some(&token), None).await
}

/// The tenant's newest incidents (`GET /v1/incidents`, one page: `incidents`) and how
/// many it holds in all (`total`), typed by the contract. Errors: the guest's error
/// answer, or an answer that is not the contract's [`IncidentList`].
pub async fn incidents(
    runtime: &Arc<Runtime>,
    tenant: Arc<Tenant>,
) -> anyhow::Result<IncidentList> {
    let id = tenant.id.clone();
    let r = get(runtime, tenant, "/v1/incidents").await?;
    if r.status != 200 {
        anyhow::bail!("incidents of tenant {id}: {}", r.error_text());
    }
    serde_json::from_value(r.json)
        .map_err(|e| anyhow!("incidents of tenant {id}: not the contract's incident list: {e}"))
}

/// Incidents not closed, as the guest's active index counts them
/// (`active_incidents` of `GET /v1/status`, by state).
pub fn open_count(status: &Value) -> u64 {
    status
        .get("active_incidents")
        .and_then(Value::as_object)
        .map_or(0, |m| m.values().filter_map(Value::as_u64).sum())
}

/// One incident's full record (`GET /v1/incidents/{key}`); `None` on 404.
pub async fn incident(
    runtime: &Arc<Runtime>,
    tenant: Arc<Tenant>,
    key: &str,
) -> anyhow::Result<Option<Value>> {
    let id = tenant.id.clone();
    let r = get(
        runtime,
        tenant,
        &format!("/v1/incidents/{}", path_segment(key)),
    )
    .await?;
    match r.status {
        200 => Ok(Some(r.json)),
        404 => Ok(None),
        _ => anyhow::bail!("incident {key} of tenant {id}: {}", r.error_text()),
    }
}

/// Percent-encodes one path segment (everything but unreserved characters): the
/// contract's definition, the same as the component's own.
pub use mssp_contract::percent_encode as path_segment;

/// Where an incident lives upstream.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Links {
    pub xdr: Option<String>,
    pub snow: Option<String>,
    pub console: Option<String>,
}

fn text<'a>(v: &'a Value, pointer: &str) -> Option<&'a str> {
    v.pointer(pointer)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

/// The host's connector guid of an incident: its containment, else its events.
pub fn connector_guid(incident: &Value) -> Option<&str> {
    text(incident, "/containment/connector_guid").or_else(|| {
        incident
            .get("events")
            .and_then(Value::as_array)?
            .iter()
            .find_map(|e| {
                text(e, "/connector_guid").or_else(|| text(e, "/computer/connector_guid"))
            })
    })
}

/// Deep links of an incident: its XDR incident (the entity id is a URL), its
/// ServiceNow ticket, its host's trajectory in the Secure Endpoint console (built by
/// [`mssp_contract::incident::links`], as the component builds them).
fn links_of(
    tenant: &Tenant,
    xdr_url: Option<&str>,
    snow_sys_id: Option<&str>,
    connector_guid: Option<&str>,
) -> Links {
    let snow = tenant
        .config_value("snow_base_url")
        .zip(snow_sys_id)
        .map(|(base, sys_id)| links::snow_ticket(base, sys_id));
    let console = connector_guid.map(|guid| {
        let base = tenant
            .config_value("amp_console_url")
            .filter(|s| !s.trim().is_empty())
            .unwrap_or(links::default_amp_console());
        links::amp_trajectory(base, guid)
    });
    Links {
        xdr: xdr_url.filter(|u| !u.is_empty()).map(str::to_string),
        snow,
        console,
    }
}

/// Deep links of one item of the incident list.
pub fn summary_links(tenant: &Tenant, incident: &IncidentSummary) -> Links {
    links_of(
        tenant,
        incident.xdr_url.as_deref(),
        incident.snow_sys_id.as_deref(),
        None,
    )
}

/// Deep links of a full incident record (`GET /v1/incidents/{key}`).
pub fn links(tenant: &Tenant, incident: &Value) -> Links {
    links_of(
        tenant,
        text(incident, "/xdr/id"),
        text(incident, "/snow/sys_id"),
        connector_guid(incident),
    )
}

/// Who may read a tenant's routes, by its configuration: the component's own rule
/// (`mssp_contract::access`), for the operator's views (status page, `doctor`).
pub fn readers<'a>(get: impl Fn(&str) -> Option<&'a str>) -> Readers {
    ReadRule::from_config(&|k| get(k).map(str::to_string)).readers()
}

/// `value` as text, `-` when absent or empty.
pub fn dash(value: Option<&str>) -> &str {
    value.filter(|s| !s.is_empty()).unwrap_or("-")
}

/// `key` of `v` as text, `-` when absent.
pub fn field<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .unwrap_or("-")
}

/// Number or text of `key`, as text.
pub fn field_text(v: &Value, key: &str) -> String {
    match v.get(key) {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        Some(Value::Array(a)) => a.len().to_string(),
        _ => "-".into(),
    }
}

/// One entry of an incident's audit trail, ready to print.
pub struct TimelineEntry<'a> {
    pub time: &'a str,
    pub step: &'a str,
    pub outcome: &'a str,
    /// ` (×N)` when the guest folded N repeats of the entry, else empty.
    pub repeated: String,
}

/// The audit trail of an incident as the guest reports it (`audit`).
pub fn timeline(incident: &Value) -> Vec<TimelineEntry<'_>> {
    incident
        .get("audit")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|a| TimelineEntry {
            time: field(a, "time"),
            step: field(a, "step"),
            outcome: field(a, "outcome"),
            repeated: a
                .get("repeated")
                .and_then(Value::as_u64)
                .filter(|n| *n > 1)
                .map(|n| format!(" (×{n})"))
                .unwrap_or_default(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_one_path_segment() {
        assert_eq!(path_segment("amp-1a2b-d42"), "amp-1a2b-d42");
        assert_eq!(path_segment("a/b?c d"), "a%2Fb%3Fc%20d");
    }

    #[test]
    fn connector_comes_from_containment_then_events() {
        let v = serde_json::json!({"events": [{"computer": {"connector_guid": "c-1"}}]});
        assert_eq!(connector_guid(&v), Some("c-1"));
        let v = serde_json::json!({"containment": {"connector_guid": "c-2"}, "events": []});
        assert_eq!(connector_guid(&v), Some("c-2"));
    }
}
