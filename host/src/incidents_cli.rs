//! `mssp-bridge incidents list|show`: the tenants' incidents as their own
//! guest reports them, with deep links and the audit timeline.

use std::io::Write;
use std::sync::Arc;

use anyhow::anyhow;
use serde_json::Value;

use crate::guest_api::{self, dash, field, field_text};
use mssp_runtime::{Runtime, Tenant};

/// Prints every incident of each tenant, newest first.
pub async fn list(
    runtime: &Arc<Runtime>,
    tenants: &[Arc<Tenant>],
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    for t in tenants {
        let list = guest_api::incidents(runtime, t.clone()).await?;
        let (incidents, total) = (list.incidents, list.total as u64);
        let status = guest_api::get(runtime, t.clone(), "/v1/status").await?;
        let open = guest_api::open_count(&status.json);
        writeln!(
            out,
            "{} ({}) — {total} incidents, {open} not closed",
            t.id,
            t.config_value("customer_name").unwrap_or(""),
        )?;
        if (incidents.len() as u64) < total {
            writeln!(
                out,
                "  (the newest {} of {total} incidents)",
                incidents.len()
            )?;
        }
        if incidents.is_empty() {
            continue;
        }
        writeln!(
            out,
            "  {:<34} {:<13} {:<14} {:>6}  {:<12} {:<46} UPDATED",
            "KEY", "STATE", "HOST", "EVENTS", "SERVICENOW", "XDR"
        )?;
        for i in &incidents {
            writeln!(
                out,
                "  {:<34} {:<13} {:<14} {:>6}  {:<12} {:<46} {}",
                i.key,
                i.state.as_str(),
                dash(i.host.as_deref()),
                i.events,
                dash(i.snow_number.as_deref()),
                dash(i.xdr_id.as_deref()),
                i.updated_at,
            )?;
        }
    }
    Ok(())
}

/// Prints one incident: state, facts, links and audit timeline. Looks in
/// each of `tenants` (keys are unique per customer).
pub async fn show(
    runtime: &Arc<Runtime>,
    tenants: &[Arc<Tenant>],
    key: &str,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    for t in tenants {
        let Some(rec) = guest_api::incident(runtime, t.clone(), key).await? else {
            continue;
        };
        print_record(t, &rec, out)?;
        return Ok(());
    }
    let names: Vec<&str> = tenants.iter().map(|t| &*t.id).collect();
    Err(anyhow!(
        "no incident {key:?} in tenant(s) {}; `mssp-bridge incidents list` shows the keys",
        names.join(", ")
    ))
}

fn print_record(t: &Tenant, rec: &Value, out: &mut dyn Write) -> anyhow::Result<()> {
    let links = guest_api::links(t, rec);
    let host = rec
        .get("events")
        .and_then(Value::as_array)
        .and_then(|evs| {
            evs.iter()
                .find_map(|e| e.pointer("/computer/hostname").and_then(Value::as_str))
        })
        .unwrap_or("-");
    let none = || "-".to_string();
    writeln!(out, "incident {}", field(rec, "key"))?;
    for (label, value) in [
        (
            "tenant",
            format!(
                "{} ({})",
                t.id,
                t.config_value("customer_name").unwrap_or("")
            ),
        ),
        ("state", field(rec, "state").to_string()),
        ("detection", field(rec, "detection_id").to_string()),
        ("severity", field(rec, "severity").to_string()),
        ("host", host.to_string()),
        ("events", field_text(rec, "event_ids")),
        (
            "containment",
            rec.get("containment").map_or_else(none, |c| {
                format!("{} of {}", field(c, "policy"), field(c, "connector_guid"))
            }),
        ),
        ("last error", field(rec, "last_error").to_string()),
        ("XDR", links.xdr.unwrap_or_else(none)),
        (
            "ServiceNow",
            match (
                rec.pointer("/snow/number").and_then(Value::as_str),
                links.snow,
            ) {
                (Some(n), Some(url)) => format!("{n}  {url}"),
                (_, Some(url)) => url,
                _ => none(),
            },
        ),
        ("console", links.console.unwrap_or_else(none)),
    ] {
        writeln!(out, "  {label:<12} {value}")?;
    }
    writeln!(out, "timeline")?;
    for a in crate::guest_api::timeline(rec) {
        writeln!(
            out,
            "  {:<24} {:<20} {}{}",
            a.time, a.step, a.outcome, a.repeated
        )?;
    }
    Ok(())
}
