//! The operator's status page, server-rendered HTML without JavaScript:
//! `/` (every tenant: last tick, lag, errors, open incidents),
//! `/ui/tenants/{t}` (all its incidents) and
//! `/ui/tenants/{t}/incidents/{key}` (one incident: facts, links, timeline).
//! Host numbers come from [`TenantStats`](mssp_runtime::stats::TenantStats); the
//! tenant's own numbers from its guest routes. Every value is HTML-escaped.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use serde_json::Value;

use crate::guest_api::{self, dash, field, field_text, path_segment};
use mssp_contract::incident::{IncidentSummary, State};
use mssp_runtime::budget::AccountStatus;
use mssp_runtime::stats::{StopKind, TickOutcome};
use mssp_runtime::{Runtime, Tenant};

/// Escapes text for HTML element content and quoted attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A link when `url` is http(s), else the text alone (no `javascript:`).
fn link(url: &str, label: &str) -> String {
    if url.starts_with("https://") || url.starts_with("http://") {
        format!(
            "<a href=\"{}\" rel=\"noreferrer\">{}</a>",
            esc(url),
            esc(label)
        )
    } else {
        esc(label)
    }
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:1.5rem auto;max-width:1200px;padding:0 1rem;color:#1c2430}\
h1{font-size:1.4rem}h2{font-size:1.15rem;margin-top:2rem}table{border-collapse:collapse;width:100%;font-size:.9rem}\
th,td{text-align:left;padding:.3rem .5rem;border-bottom:1px solid #dde3ea;vertical-align:top}th{background:#f1f4f8}\
.t{white-space:nowrap}.bad{color:#b3261e;font-weight:600}.ok{color:#1e7b34}.muted{color:#6b7685}code{font-size:.85rem}";

fn page(title: &str, body: &str) -> String {
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
<title>{}</title><style>{STYLE}</style></head><body>\n{body}\n\
<p class=\"muted\">mssp-bridge · <a href=\"/\">all tenants</a> · <a href=\"/metrics\">metrics</a></p></body></html>\n",
        esc(title)
    )
}

fn now_secs() -> i64 {
    (crate::unix_ms() / 1000) as i64
}

/// Unix seconds of an ISO-8601 date-time such as `2026-11-21T00:00:00Z`
/// (the grammar of [`mssp_contract::civil::parse_nanos`]).
pub fn parse_iso(s: &str) -> Option<i64> {
    mssp_contract::civil::parse(s)
}

/// `YYYY-MM-DDTHH:MM:SSZ` of Unix seconds.
pub fn iso(secs: i64) -> String {
    mssp_contract::civil::iso_seconds(secs)
}

/// `42 s`, `7 min`, `3 h`, `2 d`.
pub fn span(secs: i64) -> String {
    let s = secs.max(0);
    match s {
        0..=119 => format!("{s} s"),
        120..=7199 => format!("{} min", s / 60),
        7200..=172_799 => format!("{} h", s / 3600),
        _ => format!("{} d", s / 86_400),
    }
}

fn tenant_href(t: &str) -> String {
    format!("/ui/tenants/{}", path_segment(t))
}

fn incident_href(t: &str, key: &str) -> String {
    format!(
        "/ui/tenants/{}/incidents/{}",
        path_segment(t),
        path_segment(key)
    )
}

/// What the guest and the host know of one tenant.
struct TenantView {
    status: Result<Value, String>,
    /// The newest incidents (up to the guest's page size).
    incidents: Result<Vec<IncidentSummary>, String>,
    /// Every incident the guest holds.
    total: u64,
}

async fn view(runtime: &Arc<Runtime>, t: &Arc<Tenant>) -> TenantView {
    let status = match guest_api::get(runtime, t.clone(), "/v1/status").await {
        Ok(r) if r.status == 200 => Ok(r.json),
        Ok(r) => Err(r.error_text()),
        Err(e) => Err(e.to_string()),
    };
    let (incidents, total) = match guest_api::incidents(runtime, t.clone()).await {
        Ok(list) => (Ok(list.incidents), list.total as u64),
        Err(e) => (Err(e.to_string()), 0),
    };
    TenantView {
        status,
        incidents,
        total,
    }
}

fn incident_rows(t: &Tenant, incidents: &[&IncidentSummary], out: &mut String) {
    out.push_str("<table><tr><th>incident</th><th>state</th><th>host</th><th>events</th><th>XDR</th><th>ServiceNow</th><th>updated</th><th>last error</th></tr>\n");
    for i in incidents {
        let links = guest_api::summary_links(t, i);
        let _ = writeln!(
            out,
            "<tr><td><a href=\"{}\"><code>{}</code></a></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"t\">{}</td><td class=\"bad\">{}</td></tr>",
            esc(&incident_href(&t.id, &i.key)),
            esc(&i.key),
            esc(i.state.as_str()),
            esc(dash(i.host.as_deref())),
            i.events,
            links
                .xdr
                .as_deref()
                .map_or_else(|| "-".into(), |u| link(u, dash(i.xdr_id.as_deref()))),
            links
                .snow
                .as_deref()
                .map_or_else(|| "-".into(), |u| link(u, dash(i.snow_number.as_deref()))),
            esc(&i.updated_at),
            esc(i.last_error.as_deref().unwrap_or("")),
        );
    }
    out.push_str("</table>\n");
}

fn tenant_summary(t: &Tenant, v: &TenantView, out: &mut String) {
    let stats = &t.stats;
    let last_ms = stats.last_tick_unix_ms.load(Ordering::Relaxed);
    let last_tick = if last_ms == 0 {
        "no tick since the host started".to_string()
    } else {
        format!(
            "{} ago, took {} ms",
            span(now_secs() - (last_ms / 1000) as i64),
            stats.last_tick_duration_us.load(Ordering::Relaxed) / 1000
        )
    };
    let (customer, config, lag, outcome, guest_errors) = match &v.status {
        Ok(s) => (
            field(s, "customer").to_string(),
            field(s, "config").to_string(),
            s.pointer("/cursor/since")
                .and_then(Value::as_str)
                .and_then(parse_iso)
                .map_or_else(
                    || "-".into(),
                    |since| {
                        format!(
                            "{} (cursor at {})",
                            span(now_secs() - since),
                            field(&s["cursor"], "since")
                        )
                    },
                ),
            s.pointer("/last_tick/outcome")
                .and_then(Value::as_str)
                .unwrap_or("-")
                .to_string(),
            s.pointer("/last_tick/errors")
                .and_then(Value::as_array)
                .map(|e| {
                    e.iter()
                        .filter_map(Value::as_str)
                        .collect::<Vec<_>>()
                        .join("; ")
                })
                .unwrap_or_default(),
        ),
        Err(e) => (
            t.config_value("customer_name").unwrap_or("").to_string(),
            format!("status unavailable: {e}"),
            "-".into(),
            "-".into(),
            String::new(),
        ),
    };
    let failed = stats.ticks(TickOutcome::Failed);
    let stops: u64 = [
        StopKind::Trap,
        StopKind::Timeout,
        StopKind::Memory,
        StopKind::DeniedRequest,
        StopKind::BodyTooLarge,
    ]
    .into_iter()
    .map(|k| stats.stops(k))
    .sum();
    let mut errors = Vec::new();
    if let Some(e) = stats.last_error() {
        errors.push(format!("last tick failed: {e}"));
    }
    if !guest_errors.is_empty() {
        errors.push(guest_errors);
    }
    if let Err(e) = &v.incidents {
        errors.push(format!("incidents unavailable: {e}"));
    }
    // Open = every incident not closed, as the guest's active index counts them.
    let open = v.status.as_ref().map_or(0, guest_api::open_count);
    let total = v.total;
    let (events, opened, closed) = stats.guest_totals();
    let config_class = if config == "ok" { "ok" } else { "bad" };
    let (reads_class, reads) = read_access(t);
    let _ = writeln!(
        out,
        "<tr><td><a href=\"{}\">{}</a></td><td>{}</td><td class=\"{config_class}\">{}</td><td class=\"{reads_class}\">{reads}</td><td>{}</td><td>{}</td><td>{}</td><td>{} ok / {} failed</td><td>{stops}</td><td>{open} open / {total}</td><td>{events} events · {opened} opened · {closed} closed</td><td class=\"bad\">{}</td></tr>",
        esc(&tenant_href(&t.id)),
        esc(&t.id),
        esc(&customer),
        esc(&config),
        esc(&last_tick),
        esc(&outcome),
        esc(&lag),
        stats.ticks(TickOutcome::Ok),
        failed,
        esc(&errors.join(" · ")),
    );
}

/// Who may read the tenant's routes, and the class to show it in: an operator's
/// opt-in to open reads is shown in red.
fn read_access(t: &Tenant) -> (&'static str, &'static str) {
    match guest_api::readers(|k| t.config_value(k)) {
        guest_api::Readers::ReadToken => ("ok", "read_token"),
        guest_api::Readers::Anyone => ("bad", "open to anyone (open_reads)"),
        guest_api::Readers::HostOnly => ("ok", "admin token only"),
    }
}

const SUMMARY_HEAD: &str = "<table><tr><th>tenant</th><th>customer</th><th>config</th><th>reads</th><th>last tick</th><th>outcome</th><th>lag</th><th>ticks</th><th>sandbox stops</th><th>incidents</th><th>since host start</th><th>errors</th></tr>\n";

const ACCOUNTS_HEAD: &str = "<table><tr><th>service</th><th>account</th><th>tenants</th><th>budget per hour</th><th>used (last hour)</th><th>left now</th><th>cooldown</th><th>deferred (budget / cooldown)</th><th>upstream 429s</th><th>backlogged tenants</th></tr>\n";

/// The shared upstream accounts: budget used and left, cooldown and its cause, requests
/// the host held back (one row per account; nothing when there is none).
fn accounts_section(accounts: &[AccountStatus], out: &mut String) {
    if accounts.is_empty() {
        return;
    }
    out.push_str("<h2>Upstream accounts</h2>\n");
    out.push_str(ACCOUNTS_HEAD);
    for a in accounts {
        let budget = a.per_hour.map_or("none".to_string(), |n| n.to_string());
        let left = a.left_now.map_or("-".to_string(), |n| n.to_string());
        let cooldown = match a.cooldown {
            Some((secs, cause)) => format!(
                "<span class=\"bad\">{} more ({})</span>",
                span(i64::try_from(secs).unwrap_or(i64::MAX)),
                cause.as_str()
            ),
            None => "-".to_string(),
        };
        let _ = writeln!(
            out,
            "<tr><td>{}</td><td><code>{}</code></td><td>{}</td><td>{budget}</td><td>{}</td><td>{left}</td><td>{cooldown}</td><td>{} / {}</td><td>{} in {} cooldown(s)</td><td>{}</td></tr>",
            esc(&a.service),
            esc(&a.name),
            a.tenants,
            a.used_last_window,
            a.totals.deferred_budget,
            a.totals.deferred_cooldown,
            a.totals.upstream_429,
            a.totals.cooldowns,
            a.backlogged,
        );
    }
    out.push_str("</table>\n");
}

/// `/`: every tenant, the shared upstream accounts, then the open incidents of each
/// tenant.
pub async fn overview(runtime: &Arc<Runtime>) -> String {
    let tenants = runtime.tenants();
    let mut views = Vec::with_capacity(tenants.len());
    for t in &tenants {
        views.push(view(runtime, t).await);
    }
    let mut body = format!(
        "<h1>mssp-bridge — {} tenant{}</h1>\n",
        tenants.len(),
        if tenants.len() == 1 { "" } else { "s" }
    );
    if tenants.is_empty() {
        body.push_str("<p>No tenants. Add one with <code>mssp-bridge tenant add</code>.</p>\n");
    } else {
        body.push_str(SUMMARY_HEAD);
        for (t, v) in tenants.iter().zip(&views) {
            tenant_summary(t, v, &mut body);
        }
        body.push_str("</table>\n");
    }
    let accounts: Vec<AccountStatus> = runtime.accounts().iter().map(|a| a.status()).collect();
    accounts_section(&accounts, &mut body);
    for (t, v) in tenants.iter().zip(&views) {
        let Ok(list) = &v.incidents else { continue };
        let open: Vec<&IncidentSummary> =
            list.iter().filter(|i| i.state != State::Closed).collect();
        let _ = writeln!(
            body,
            "<h2>{} — {} open incident{}</h2>",
            esc(&t.id),
            open.len(),
            if open.len() == 1 { "" } else { "s" }
        );
        if !open.is_empty() {
            incident_rows(t, &open, &mut body);
        }
    }
    page("mssp-bridge status", &body)
}

/// `/ui/tenants/{t}`: one tenant and all its incidents; `None` when unknown.
pub async fn tenant_page(runtime: &Arc<Runtime>, id: &str) -> Option<String> {
    let t = runtime.tenant(id)?;
    let v = view(runtime, &t).await;
    let mut body = format!("<h1>Tenant {}</h1>\n{SUMMARY_HEAD}", esc(&t.id));
    tenant_summary(&t, &v, &mut body);
    body.push_str("</table>\n");
    match &v.incidents {
        Ok(list) => {
            let _ = writeln!(body, "<h2>{} incidents</h2>", list.len());
            let all: Vec<&IncidentSummary> = list.iter().collect();
            incident_rows(&t, &all, &mut body);
        }
        Err(e) => {
            let _ = writeln!(
                body,
                "<p class=\"bad\">incidents unavailable: {}</p>",
                esc(e)
            );
        }
    }
    Some(page(&format!("mssp-bridge — {}", t.id), &body))
}

/// `/ui/tenants/{t}/incidents/{key}`; `None` when the tenant or the
/// incident is unknown.
pub async fn incident_page(
    runtime: &Arc<Runtime>,
    id: &str,
    key: &str,
) -> Result<Option<String>, String> {
    let Some(t) = runtime.tenant(id) else {
        return Ok(None);
    };
    let Some(rec) = guest_api::incident(runtime, t.clone(), key)
        .await
        .map_err(|e| e.to_string())?
    else {
        return Ok(None);
    };
    let links = guest_api::links(&t, &rec);
    let host = rec
        .get("events")
        .and_then(Value::as_array)
        .and_then(|evs| {
            evs.iter()
                .find_map(|e| e.pointer("/computer/hostname").and_then(Value::as_str))
        })
        .unwrap_or("-");
    let mut body = format!(
        "<h1>Incident <code>{}</code></h1>\n<p>Tenant <a href=\"{}\">{}</a> ({})</p>\n<table>\n",
        esc(field(&rec, "key")),
        esc(&tenant_href(&t.id)),
        esc(&t.id),
        esc(t.config_value("customer_name").unwrap_or(""))
    );
    let row =
        |label: &str, html: String| format!("<tr><th>{}</th><td>{html}</td></tr>\n", esc(label));
    body.push_str(&row("state", esc(field(&rec, "state"))));
    body.push_str(&row("detection", esc(field(&rec, "detection_id"))));
    body.push_str(&row("severity", esc(field(&rec, "severity"))));
    body.push_str(&row("host", esc(host)));
    body.push_str(&row("events", esc(&field_text(&rec, "event_ids"))));
    if let Some(c) = rec.get("containment") {
        body.push_str(&row(
            "containment",
            esc(&format!(
                "{} of {}",
                field(c, "policy"),
                field(c, "connector_guid")
            )),
        ));
    }
    let snow_label = rec
        .pointer("/snow/number")
        .and_then(Value::as_str)
        .unwrap_or("ServiceNow record");
    body.push_str(&row(
        "XDR",
        links
            .xdr
            .as_deref()
            .map_or_else(|| "-".into(), |u| link(u, u)),
    ));
    body.push_str(&row(
        "ServiceNow",
        links
            .snow
            .as_deref()
            .map_or_else(|| "-".into(), |u| link(u, snow_label)),
    ));
    body.push_str(&row(
        "Secure Endpoint",
        links
            .console
            .as_deref()
            .map_or_else(|| "-".into(), |u| link(u, "device trajectory")),
    ));
    if let Some(e) = rec.get("last_error").and_then(Value::as_str) {
        body.push_str(&row(
            "last error",
            format!("<span class=\"bad\">{}</span>", esc(e)),
        ));
    }
    body.push_str(
        "</table>\n<h2>Timeline</h2>\n<table><tr><th>time</th><th>step</th><th>outcome</th></tr>\n",
    );
    for a in crate::guest_api::timeline(&rec) {
        let _ = writeln!(
            body,
            "<tr><td class=\"t\">{}</td><td>{}</td><td>{}{}</td></tr>",
            esc(a.time),
            esc(a.step),
            esc(a.outcome),
            esc(&a.repeated)
        );
    }
    body.push_str("</table>\n");
    Ok(Some(page(&format!("{key} — mssp-bridge"), &body)))
}

/// Splits `/ui/tenants/{t}[/incidents/{key}]` (percent-decoded).
pub fn parse_ui_path(path: &str) -> Option<(String, Option<String>)> {
    let rest = path.strip_prefix("/ui/tenants/")?;
    let mut parts = rest.split('/');
    let tenant = decode(parts.next().filter(|s| !s.is_empty())?)?;
    match (parts.next(), parts.next(), parts.next()) {
        (None, _, _) | (Some(""), None, _) => Some((tenant, None)),
        (Some("incidents"), Some(key), None) if !key.is_empty() => {
            Some((tenant, Some(decode(key)?)))
        }
        _ => None,
    }
}

fn decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markup_and_script_urls_are_neutralised() {
        assert_eq!(
            esc("<script>alert('x')</script> & \"q\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;q&quot;"
        );
        assert_eq!(link("javascript:alert(1)", "x"), "x");
        assert!(
            link("https://a.example/?a=1&b=\"", "l")
                .contains("href=\"https://a.example/?a=1&amp;b=&quot;\"")
        );
    }

    #[test]
    fn ui_paths_name_tenant_and_incident() {
        assert_eq!(
            parse_ui_path("/ui/tenants/acme"),
            Some(("acme".into(), None))
        );
        assert_eq!(
            parse_ui_path("/ui/tenants/acme/incidents/amp-1-d2"),
            Some(("acme".into(), Some("amp-1-d2".into())))
        );
        assert_eq!(
            parse_ui_path("/ui/tenants/acme/incidents/a%2Fb"),
            Some(("acme".into(), Some("a/b".into())))
        );
        assert_eq!(parse_ui_path("/ui/tenants/acme/other/x"), None);
        assert_eq!(parse_ui_path("/ui/tenants/"), None);
    }

    #[test]
    fn accounts_show_budget_cooldown_and_deferrals_escaped() {
        use mssp_runtime::budget::{AccountTotals, CooldownCause};
        let a = AccountStatus {
            service: "snow".into(),
            name: "snow:https://<mssp>.service-now.com:443/ab12".into(),
            per_hour: Some(2000),
            used_last_window: 1800,
            left_now: Some(3),
            cooldown: Some((120, CooldownCause::RetryAfterSeconds)),
            tenants: 1000,
            backlogged: 200,
            totals: AccountTotals {
                granted: 1800,
                deferred_budget: 51,
                deferred_cooldown: 7,
                upstream_429: 1,
                cooldowns: 1,
            },
        };
        let mut out = String::new();
        accounts_section(&[a], &mut out);
        for want in [
            "&lt;mssp&gt;",
            "<td>2000</td><td>1800</td><td>3</td>",
            "2 min more (retry_after_seconds)",
            "51 / 7",
            "1 in 1 cooldown(s)",
        ] {
            assert!(out.contains(want), "{want}: {out}");
        }
        let mut none = String::new();
        accounts_section(&[], &mut none);
        assert!(none.is_empty());
    }

    #[test]
    fn iso_times_and_spans() {
        assert_eq!(parse_iso("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_iso("2020-02-20T18:20:38.123Z"), Some(1_582_222_838));
        assert_eq!(parse_iso("garbage"), None);
        assert_eq!(iso(1_582_222_838), "2020-02-20T18:20:38Z");
        assert_eq!(iso(0), "1970-01-01T00:00:00Z");
        for t in [951_782_400, 1_795_219_200, 4_102_444_800] {
            assert_eq!(parse_iso(&iso(t)), Some(t));
        }
        assert_eq!(span(42), "42 s");
        assert_eq!(span(600), "10 min");
        assert_eq!(span(3 * 86_400), "3 d");
    }
}
