//! Bodies sent to XDR and ServiceNow, built from an incident record alone.

use std::collections::BTreeMap;

use mssp_contract::civil;
use mssp_contract::incident::links;
use serde_json::{Value, json};

use crate::config::Config;
use crate::event::{self, Event, ObservableKind};
use crate::incident::{IncidentRecord, XdrWritten};
use crate::severity::rating;

/// Event type names of this customer's Secure Endpoint (`GET /v1/event_types`).
pub type EventTypeNames = BTreeMap<u64, String>;

pub const SOURCE: &str = "mssp-bridge";

/// The customer's name for an event type: the cached catalogue, else the name on the
/// event, else the id.
pub fn type_name(names: &EventTypeNames, e: &Event) -> String {
    names
        .get(&e.event_type_id)
        .cloned()
        .or_else(|| (!e.event_type.is_empty()).then(|| e.event_type.clone()))
        .unwrap_or_else(|| format!("event type {}", e.event_type_id))
}

/// The facts an analyst needs, gathered over all events of the incident.
struct Facts {
    event_type: String,
    hostname: String,
    opened: String,
    connector_guid: Option<String>,
    users: Vec<String>,
    ips: Vec<String>,
    files: Vec<String>,
    sha256: Vec<String>,
    dispositions: Vec<String>,
    detections: Vec<String>,
    tactics: Vec<String>,
    techniques: Vec<String>,
    /// Cloud IOC names (`cloud_ioc.short_description`).
    iocs: Vec<String>,
    /// `name: description` of each Cloud IOC.
    ioc_descriptions: Vec<String>,
    command_lines: Vec<String>,
    /// One summary per network event (`TCP, Outgoing connection from a:p to b:q`).
    connections: Vec<String>,
    urls: Vec<String>,
}

fn push_unique(list: &mut Vec<String>, v: Option<&str>) {
    if let Some(v) = v
        && !list.iter().any(|x| x == v)
    {
        list.push(v.to_string());
    }
}

/// When the incident opened: its first event, else when the bridge first saw it.
fn opened(rec: &IncidentRecord) -> String {
    civil::iso_seconds(
        rec.first_event()
            .map_or(rec.created_at / 1000, |e| e.timestamp),
    )
}

fn facts(rec: &IncidentRecord, names: &EventTypeNames) -> Facts {
    let first = rec.first_event();
    let mut f = Facts {
        event_type: first.map_or_else(|| "event".into(), |e| type_name(names, e)),
        hostname: rec
            .events
            .iter()
            .find_map(|e| e.hostname())
            .unwrap_or("unknown host")
            .to_string(),
        opened: opened(rec),
        connector_guid: rec.events.iter().find_map(|e| e.connector_guid.clone()),
        users: Vec::new(),
        ips: Vec::new(),
        files: Vec::new(),
        sha256: Vec::new(),
        dispositions: Vec::new(),
        detections: Vec::new(),
        tactics: Vec::new(),
        techniques: Vec::new(),
        iocs: Vec::new(),
        ioc_descriptions: Vec::new(),
        command_lines: Vec::new(),
        connections: Vec::new(),
        urls: Vec::new(),
    };
    for e in &rec.events {
        if let Some(ioc) = &e.cloud_ioc {
            push_unique(&mut f.iocs, ioc.name.as_deref());
            let described = match (&ioc.name, &ioc.description) {
                (Some(n), Some(d)) => Some(format!("{n}: {d}")),
                (None, Some(d)) => Some(d.clone()),
                _ => None,
            };
            push_unique(&mut f.ioc_descriptions, described.as_deref());
        }
        push_unique(&mut f.command_lines, e.command_line.as_deref());
        if let Some(n) = &e.network {
            let summary = n.summary();
            push_unique(
                &mut f.connections,
                (!summary.is_empty()).then_some(&*summary),
            );
            push_unique(&mut f.urls, n.dirty_url.as_deref());
        }
        if let Some(c) = &e.computer {
            push_unique(&mut f.users, c.user.as_deref());
            for ip in &c.ips {
                push_unique(&mut f.ips, Some(ip));
            }
        }
        if let Some(file) = &e.file {
            let shown = match (&file.name, &file.path) {
                (Some(n), Some(p)) => Some(format!("{n} ({p})")),
                (Some(n), None) => Some(n.clone()),
                (None, Some(p)) => Some(p.clone()),
                (None, None) => None,
            };
            push_unique(&mut f.files, shown.as_deref());
            push_unique(&mut f.sha256, file.sha256.as_deref());
            push_unique(&mut f.dispositions, file.disposition.as_deref());
        }
        push_unique(&mut f.detections, e.detection.as_deref());
        for t in &e.tactics {
            push_unique(&mut f.tactics, Some(t));
        }
        for t in &e.techniques {
            push_unique(&mut f.techniques, Some(t));
        }
    }
    f
}

fn or_none(list: &[String]) -> String {
    if list.is_empty() {
        "none reported".into()
    } else {
        list.join(", ")
    }
}

/// `[customer] <event type> on <hostname> @ <ISO time>`.
pub fn title(cfg: &Config, rec: &IncidentRecord, names: &EventTypeNames) -> String {
    let f = facts(rec, names);
    format!(
        "[{}] {} on {} @ {}",
        cfg.customer_name, f.event_type, f.hostname, f.opened
    )
}

/// One line per event: `2020-02-20T18:20:38Z Threat Detected (event 123)`.
fn event_lines(events: &[&Event], names: &EventTypeNames, bullet: &str) -> String {
    events
        .iter()
        .map(|e| {
            format!(
                "{bullet}{} {} (event {})",
                civil::iso_seconds(e.timestamp),
                type_name(names, e),
                e.id
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The facts block, as markdown (XDR) or plain text (ServiceNow).
fn describe(cfg: &Config, rec: &IncidentRecord, names: &EventTypeNames, markdown: bool) -> String {
    let f = facts(rec, names);
    let (b, code) = if markdown { ("**", "`") } else { ("", "") };
    let mut lines = vec![
        format!("{b}Customer:{b} {}", cfg.customer_name),
        format!(
            "{b}Host:{b} {}{}",
            f.hostname,
            f.connector_guid
                .as_ref()
                .map(|g| format!(" (connector {code}{g}{code})"))
                .unwrap_or_default()
        ),
        format!("{b}User:{b} {}", or_none(&f.users)),
        format!("{b}IP addresses:{b} {}", or_none(&f.ips)),
        format!(
            "{b}Detection:{b} {}",
            or_none(&[f.detections.clone(), f.iocs.clone()].concat())
        ),
        format!("{b}File:{b} {}", or_none(&f.files)),
        format!(
            "{b}SHA-256:{b} {}",
            if f.sha256.is_empty() {
                "none reported".into()
            } else {
                f.sha256
                    .iter()
                    .map(|s| format!("{code}{s}{code}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        ),
        format!("{b}Disposition:{b} {}", or_none(&f.dispositions)),
        format!(
            "{b}Command line:{b} {}",
            if f.command_lines.is_empty() {
                "none reported".into()
            } else {
                f.command_lines
                    .iter()
                    .map(|c| format!("{code}{c}{code}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        ),
        format!("{b}Network:{b} {}", or_none(&f.connections)),
        format!("{b}URL:{b} {}", or_none(&f.urls)),
        format!(
            "{b}Severity:{b} {}",
            rec.severity.map_or("not reported", |s| s.as_str())
        ),
        format!(
            "{b}MITRE ATT&CK:{b} tactics {}; techniques {}",
            or_none(&f.tactics),
            or_none(&f.techniques)
        ),
        format!("{b}Incident key:{b} {}", rec.key),
    ];
    for d in &f.ioc_descriptions {
        lines.push(format!("{b}IOC:{b} {d}"));
    }
    if let Some(g) = &f.connector_guid {
        let (traj, comp) = (cfg.trajectory_url(g), cfg.computer_url(g));
        lines.push(if markdown {
            format!("{b}Links:{b} [Device trajectory]({traj}) · [Computer in console]({comp})")
        } else {
            format!("Device trajectory: {traj}\nComputer in console: {comp}")
        });
    }
    let events: Vec<&Event> = rec.events.iter().collect();
    let more = rec.event_ids.len().saturating_sub(rec.events.len());
    lines.push(format!("{b}Events ({}):{b}", rec.event_ids.len()));
    lines.push(event_lines(&events, names, "- "));
    if more > 0 {
        lines.push(format!("- … and {more} more"));
    }
    lines.join(if markdown { "  \n" } else { "\n" })
}

/// The XDR incident as created (inside [`xdr_create_bundle`]).
pub fn xdr_incident(cfg: &Config, rec: &IncidentRecord, names: &EventTypeNames) -> Value {
    let f = facts(rec, names);
    let t = title(cfg, rec, names);
    json!({
        "title": t,
        "short_description": t,
        "description": describe(cfg, rec, names, true),
        "confidence": "High",
        "severity": rating(rec.severity).xdr,
        "tlp": "amber",
        "status": "New",
        "incident_time": {"opened": f.opened},
        "external_ids": [rec.key],
        "source": SOURCE,
        "source_uri": f.connector_guid.as_ref().map_or_else(|| cfg.amp_console_url.clone(), |g| cfg.trajectory_url(g)),
        "promotion_method": "Automated",
        "tactics": f.tactics,
        "techniques": f.techniques,
    })
}

/// One XDR write the bridge decided on after reading the stored incident: the
/// `PATCH /ctia/incident/{id}` body (`None`: nothing to write), the audit text, and what
/// the bridge's own fields hold afterwards (for [`IncidentRecord::xdr_written`]).
#[derive(Debug, Clone, PartialEq)]
pub struct XdrWrite {
    pub body: Option<Value>,
    pub outcome: String,
    pub written: Option<XdrWritten>,
}

/// `stored` ∪ `ours`, stored order first (for `tactics`/`techniques`).
fn union(stored: &Value, ours: &[String]) -> Vec<Value> {
    let mut out: Vec<Value> = stored.as_array().cloned().unwrap_or_default();
    for v in ours {
        if !out.iter().any(|x| x.as_str() == Some(v)) {
            out.push(json!(v));
        }
    }
    out
}

/// `PATCH /ctia/incident/{id}` after later events of the group arrived, decided against
/// the stored incident (`stored`, as read in this tick). CTIA's PATCH replaces every
/// top-level list or value it names (`ctia.flows.crud/patch-entity` with
/// `replace-colls`), so each field is decided on its own:
/// - `tactics`/`techniques`: what is stored (an analyst's additions and removals) plus
///   what the events say that the bridge never sent before (a value it sent and an
///   analyst removed stays removed); sent only when that adds something;
/// - `description` and `severity`: replaced only while the stored value is one the
///   bridge sent (`rec.xdr_written`); an analyst's edit, or a record from before the
///   bridge kept that, leaves them alone (and the audit says so).
///
/// `body: None` when nothing is to be written; `written` = `rec.xdr_written` with the
/// body noted (to be persisted before the PATCH is sent).
pub fn xdr_update(
    cfg: &Config,
    rec: &IncidentRecord,
    names: &EventTypeNames,
    stored: &Value,
) -> XdrWrite {
    let f = facts(rec, names);
    let description = describe(cfg, rec, names, true);
    let severity = rating(rec.severity).xdr.to_string();
    let last = rec.xdr_written.clone();
    let mut written = last.clone().unwrap_or_default();
    let mut body = serde_json::Map::new();
    let mut done = Vec::new();
    let mut left = Vec::new();
    let stored_desc = stored["description"].as_str().unwrap_or("");
    let stored_sev = stored["severity"].as_str().unwrap_or("");
    if stored_desc != description {
        if written.owns_description(stored_desc) {
            body.insert("description".into(), json!(description));
            done.push("description");
        } else {
            left.push("description");
        }
    }
    if stored_sev != severity {
        if written.owns_severity(stored_sev) {
            body.insert("severity".into(), json!(severity));
            done.push("severity");
        } else {
            left.push("severity");
        }
    }
    for (field, ours, sent) in [
        ("tactics", &f.tactics, &written.tactics),
        ("techniques", &f.techniques, &written.techniques),
    ] {
        let new: Vec<String> = ours.iter().filter(|t| !sent.contains(t)).cloned().collect();
        let merged = union(&stored[field], &new);
        if merged.len() > stored[field].as_array().map_or(0, Vec::len) {
            body.insert(field.into(), Value::Array(merged));
            done.push(field);
        }
    }
    let mut outcome = if done.is_empty() {
        "XDR incident already up to date with later events; nothing written".to_string()
    } else if done.contains(&"description") {
        format!(
            "XDR incident description updated with later events ({})",
            done.join(", ")
        )
    } else {
        format!(
            "XDR incident updated with later events ({})",
            done.join(", ")
        )
    };
    if !left.is_empty() {
        outcome.push_str(&format!(
            "; {} left as is: changed in XDR since the bridge wrote it{}",
            left.join(" and "),
            if last.is_none() {
                " (or written before the bridge kept track)"
            } else {
                ""
            }
        ));
    }
    let body = (!body.is_empty()).then_some(Value::Object(body));
    if let Some(b) = &body {
        written.note(b);
    }
    XdrWrite {
        body,
        outcome,
        written: Some(written),
    }
}

/// `POST /ctia/bundle/import`: the incident, one sighting carrying the
/// observables, and the sighting's `member-of` relationship to the incident —
/// the whole XDR side of a detection in one request. Every entity carries an
/// external id derived from the incident key — the key itself, `<key>-sighting`,
/// `<key>-relationship`, all starting with `amp-` (the incident key's form, unchanged
/// since the first version, so incidents stored earlier are found too) — and the import
/// is sent with `external-key-prefixes=amp-` (`upstream::xdr::EXTERNAL_KEY_PREFIXES`):
/// CTIA deduplicates only by external ids starting with a named prefix, so it answers
/// `exists` (with the stored id) instead of creating it again when the same bundle is
/// sent twice (a retry, or a resume after a crash).
pub fn xdr_create_bundle(cfg: &Config, rec: &IncidentRecord, names: &EventTypeNames) -> Value {
    let incident_ref = format!("transient:incident-{}", rec.key);
    let mut incident = xdr_incident(cfg, rec, names);
    incident["id"] = json!(incident_ref);
    incident["type"] = json!("incident");
    let mut bundle = json!({"type": "bundle", "source": SOURCE, "incidents": [incident]});
    let f = facts(rec, names);
    let (observables, _) = observables(rec);
    if observables.is_empty() {
        return bundle;
    }
    let sighting_ref = format!("transient:sighting-{}", rec.key);
    let last = rec
        .events
        .last()
        .map_or(f.opened.clone(), |e| civil::iso_seconds(e.timestamp));
    bundle["sightings"] = json!([{
        "id": sighting_ref,
        "type": "sighting",
        "source": SOURCE,
        "external_ids": [format!("{}-sighting", rec.key)],
        "title": title(cfg, rec, names),
        "description": describe(cfg, rec, names, true),
        "confidence": "High",
        "severity": rating(rec.severity).xdr,
        "tlp": "amber",
        "count": rec.event_ids.len(),
        "observed_time": {"start_time": f.opened, "end_time": last},
        "timestamp": last,
        "observables": observables,
    }]);
    bundle["relationships"] = json!([{
        "id": format!("transient:relationship-{}", rec.key),
        "type": "relationship",
        "source": SOURCE,
        "external_ids": [format!("{}-relationship", rec.key)],
        "relationship_type": "member-of",
        "source_ref": sighting_ref,
        "target_ref": incident_ref,
    }]);
    bundle
}

/// The incident's observables for XDR, each with the CTIA type its value really is (see
/// [`event::observable`]): host name, connector GUID, user, the host's addresses
/// (`ip`/`ipv6`) and MACs, file hashes, paths and names, the remote and local
/// addresses of network events, and each `dirty_url` as a `url` plus its host as a
/// `domain` (or an address). Returns them (deduplicated, in that order) and one note per
/// value dropped because it is not what its member says it is.
pub fn observables(rec: &IncidentRecord) -> (Vec<Value>, Vec<String>) {
    let mut out: Vec<Value> = Vec::new();
    let mut dropped: Vec<String> = Vec::new();
    let mut add = |kind: ObservableKind, raw: &str, from: &str| match event::observable(kind, raw) {
        Ok((ty, value)) => {
            let o = json!({"type": ty, "value": value});
            if !out.contains(&o) {
                out.push(o);
            }
        }
        Err(why) => {
            let note = format!("{from}: {why}");
            if !dropped.contains(&note) {
                dropped.push(note);
            }
        }
    };
    for e in &rec.events {
        if let Some(h) = e.hostname() {
            add(ObservableKind::Hostname, h, "computer.hostname");
        }
        if let Some(g) = &e.connector_guid {
            add(ObservableKind::AmpComputerGuid, g, "connector_guid");
        }
        if let Some(c) = &e.computer {
            if let Some(u) = &c.user {
                add(ObservableKind::User, u, "computer.user");
            }
            for ip in &c.ips {
                add(ObservableKind::Ip, ip, "computer address");
            }
            for mac in &c.macs {
                add(
                    ObservableKind::MacAddress,
                    mac,
                    "computer.network_addresses.mac",
                );
            }
        }
        if let Some(file) = &e.file {
            for (kind, v, from) in [
                (ObservableKind::Sha256, &file.sha256, "file.identity.sha256"),
                (ObservableKind::Sha1, &file.sha1, "file.identity.sha1"),
                (ObservableKind::Md5, &file.md5, "file.identity.md5"),
                (ObservableKind::FilePath, &file.path, "file.file_path"),
                (ObservableKind::FileName, &file.name, "file.file_name"),
            ] {
                if let Some(v) = v {
                    add(kind, v, from);
                }
            }
        }
        if let Some(n) = &e.network {
            if let Some(ip) = &n.remote_ip {
                add(ObservableKind::Ip, ip, "network_info.remote_ip");
            }
            if let Some(ip) = &n.local_ip {
                add(ObservableKind::Ip, ip, "network_info.local_ip");
            }
            if let Some(url) = &n.dirty_url {
                add(ObservableKind::Url, url, "network_info.dirty_url");
                if let Some(host) = event::url_host(url) {
                    let kind = if host.parse::<std::net::IpAddr>().is_ok() {
                        ObservableKind::Ip
                    } else {
                        ObservableKind::Domain
                    };
                    add(kind, &host, "network_info.dirty_url host");
                }
            }
        }
    }
    (out, dropped)
}

/// The audit note for observables left out (empty when none were): `; dropped (not
/// what they claim to be): computer address: "10.0.0.300" is not an IP address`.
pub fn dropped_observables_note(rec: &IncidentRecord) -> String {
    let (_, dropped) = observables(rec);
    if dropped.is_empty() {
        String::new()
    } else {
        format!(
            "; {} value(s) dropped, not sent: {}",
            dropped.len(),
            dropped.join("; ")
        )
    }
}

/// The reference to the ServiceNow ticket the bridge adds to the XDR incident on close.
pub fn snow_reference(cfg: &Config, rec: &IncidentRecord) -> Value {
    let (sys_id, number) = rec
        .snow
        .as_ref()
        .map_or(("", ""), |s| (s.sys_id.as_str(), s.number.as_str()));
    let (state, code) = rec.close.as_ref().map_or(("", None), |c| {
        (c.snow_state.as_str(), c.close_code.as_deref())
    });
    json!({
        "source_name": "ServiceNow",
        "external_id": number,
        "url": links::snow_ticket(&cfg.snow_base_url, sys_id),
        "description": format!(
            "Closed in ServiceNow {number} (state {state}{})",
            code.map(|c| format!(", close code {c}")).unwrap_or_default()
        ),
    })
}

/// CTIA's closed statuses: `Closed` and `Closed: <qualifier>` (`closed-status?` in
/// threatgrid/ctia src/ctia/entity/incident.clj).
pub fn is_closed_status(status: &str) -> bool {
    status == "Closed"
        || status
            .strip_prefix("Closed: ")
            .is_some_and(|q| !q.is_empty())
}

/// Statuses that end an incident: the closed ones and `Rejected` (CTIA stamps
/// `incident_time.rejected` for it, `make-status-update` in src/ctia/entity/incident.clj).
/// The bridge never sets either except `Closed` on close, so a stored one is left alone.
pub fn is_final_status(status: &str) -> bool {
    is_closed_status(status) || status == "Rejected"
}

/// The close of the XDR incident, decided against the stored incident (`stored`, as read
/// in this tick; `id` names it in the audit):
/// - already `Closed*` or `Rejected` ([`is_final_status`]: an analyst ended it, e.g.
///   `Closed: Merged`, or an earlier close of the bridge got through): status and `incident_time` are left alone; only the
///   ServiceNow reference is added if it is not there yet — `external_references` is
///   replaced whole by a PATCH, so the body is the stored list plus ours; nothing is
///   written when it is there;
/// - otherwise one PATCH: `status: Closed`, `incident_time` = the stored one plus
///   `closed` (CTIA stamps `closed` itself on a non-closed → closed change:
///   `apply-status-update-logic`), `external_references` = stored + ours.
///
/// A ServiceNow reference counts as ours when it names the same ticket number.
pub fn xdr_close(
    cfg: &Config,
    rec: &IncidentRecord,
    stored: &Value,
    id: &str,
    now_ms: i64,
) -> XdrWrite {
    let ours = snow_reference(cfg, rec);
    let mut refs = stored["external_references"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let present = refs
        .iter()
        .any(|r| r["source_name"] == "ServiceNow" && r["external_id"] == ours["external_id"]);
    if !present {
        refs.push(ours);
    }
    let status = stored["status"].as_str().unwrap_or("");
    if is_final_status(status) {
        let (body, what) = if present {
            (
                None,
                "ServiceNow reference already present; nothing written",
            )
        } else {
            (
                Some(json!({"external_references": refs})),
                "ServiceNow reference added",
            )
        };
        let who = if status == "Closed" && present {
            "already closed (an earlier close got through)".to_string()
        } else {
            let verb = if is_closed_status(status) {
                "closed"
            } else {
                "ended"
            };
            format!("already {verb} by an analyst ({status})")
        };
        return XdrWrite {
            body,
            outcome: format!("XDR incident {id} {who}; status and close time left as is; {what}"),
            written: None,
        };
    }
    let mut time = match &stored["incident_time"] {
        Value::Object(m) => m.clone(),
        _ => serde_json::Map::new(),
    };
    if !time.contains_key("opened") {
        time.insert("opened".into(), json!(opened(rec)));
    }
    time.insert("closed".into(), json!(civil::iso_seconds(now_ms / 1000)));
    XdrWrite {
        body: Some(json!({
            "status": "Closed",
            "incident_time": time,
            "external_references": refs,
        })),
        outcome: format!("XDR incident {id} closed, with the ServiceNow reference"),
        written: None,
    }
}

/// `POST /api/now/table/incident`: the whole incident in one request, its first work
/// note included.
pub fn snow_incident(
    cfg: &Config,
    rec: &IncidentRecord,
    names: &EventTypeNames,
    first_note: &str,
) -> Value {
    let r = rating(rec.severity);
    let xdr = rec
        .xdr
        .as_ref()
        .map_or_else(|| "not created".into(), |x| x.id.clone());
    let mut body = json!({
        "short_description": format!("{} {}", title(cfg, rec, names), cfg.snow_tag),
        "description": format!("{}\nCisco XDR incident: {xdr}", describe(cfg, rec, names, false)),
        "impact": r.snow_impact,
        "urgency": r.snow_urgency,
        "correlation_id": rec.key,
        "correlation_display": SOURCE,
        "work_notes": first_note,
    });
    if let Some(c) = &cfg.snow_caller_id {
        body["caller_id"] = json!(c);
    }
    if let Some(g) = &cfg.snow_assignment_group {
        body["assignment_group"] = json!(g);
    }
    body
}

/// The first work note: what the bridge did, containment outcome included.
pub fn first_work_note(rec: &IncidentRecord) -> String {
    let mut note = format!(
        "Opened by mssp-bridge from {} Secure Endpoint event(s).",
        rec.event_ids.len()
    );
    if let Some(x) = &rec.xdr {
        note.push_str(&format!("\nCisco XDR incident: {}", x.id));
    }
    match (
        rec.containment.as_ref().and_then(|c| c.outcome.as_deref()),
        &rec.containment_skipped,
    ) {
        (Some(outcome), _) => note.push_str(&format!("\nContainment: {outcome}")),
        (None, Some(why)) => note.push_str(&format!("\nContainment: not done: {why}")),
        (None, None) => note.push_str("\nContainment: none (policy)"),
    }
    note
}

/// A follow-up work note for events that joined the incident later.
pub fn follow_up_note(rec: &IncidentRecord, names: &EventTypeNames, ids: &[u64]) -> String {
    let events: Vec<&Event> = rec.events.iter().filter(|e| ids.contains(&e.id)).collect();
    let mut note = format!(
        "{} further Secure Endpoint event(s) of this detection:",
        ids.len()
    );
    if !events.is_empty() {
        note.push('\n');
        note.push_str(&event_lines(&events, names, "- "));
    }
    if events.len() < ids.len() {
        note.push_str(&format!("\n- … and {} more", ids.len() - events.len()));
    }
    note
}

/// The closing work note: what the bridge did in XDR and to the host when ServiceNow
/// closed the ticket, built from the close steps' audit lines (every `close` entry
/// since the incident entered `closing`) and the containment record. Plain text, one
/// line per outcome.
pub fn close_note(rec: &IncidentRecord) -> String {
    let start = rec
        .audit
        .iter()
        .rposition(|a| a.step == "closing")
        .map_or(0, |i| i + 1);
    let outcomes: Vec<&str> = rec.audit[start..]
        .iter()
        .filter(|a| a.step == "close")
        .map(|a| a.outcome.as_str())
        // Failures and retry notes are for the audit trail, not the analyst's ticket.
        .filter(|o| !o.starts_with("failed") && !o.starts_with("done after"))
        .collect();
    let (xdr, host): (Vec<&str>, Vec<&str>) = outcomes.into_iter().partition(|o| o.contains("XDR"));
    let close = rec.close.clone().unwrap_or_default();
    let mut note = format!(
        "mssp-bridge: this ticket reached state {} ({}); the bridge closed the loop.",
        close.snow_state,
        if close.source.is_empty() {
            "reconcile"
        } else {
            &close.source
        }
    );
    note.push_str("\n- XDR: ");
    note.push_str(&match (&rec.xdr, xdr.is_empty()) {
        (None, _) => "no XDR incident was recorded for this ticket; nothing closed".to_string(),
        (Some(x), true) => format!("incident {}: no close recorded", x.short_id),
        (Some(_), false) => xdr.join("; "),
    });
    note.push_str("\n- Host: ");
    note.push_str(&match (&rec.containment, host.is_empty()) {
        (_, false) => host.join("; "),
        (None, true) => "left alone (the bridge did not contain it)".to_string(),
        (Some(c), true) => format!(
            "left alone: {}",
            c.outcome
                .as_deref()
                .unwrap_or("nothing the bridge did needed undoing")
        ),
    });
    note
}

/// The work note written once when a ticket is found open again (`state`) after the
/// bridge closed the loop: what a re-open does and does not do.
pub fn reopened_note(rec: &IncidentRecord, state: &str) -> String {
    let xdr = rec
        .xdr
        .as_ref()
        .map_or("-".to_string(), |x| x.short_id.clone());
    format!(
        "mssp-bridge: this ticket is open again (state {state}) after the bridge closed the \
         loop. Re-opening it here does not reopen XDR incident {xdr} and does not contain the \
         host again: the bridge takes no further action for this ticket. If the threat is still \
         active, reopen the XDR incident and contain the host in Secure Endpoint by hand; new \
         detections open new tickets as usual."
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detection::tests::event;
    use crate::incident::{ContainmentRecord, SnowRef, XdrRef};
    use crate::severity::Severity;
    use crate::testkit::{base_map, config_from};

    fn record() -> IncidentRecord {
        let mut r = IncidentRecord::new("amp-1234abcd-d42", 0);
        let mut e1 = event(
            6_533_241_145_273_614_339,
            1_582_222_838,
            1_090_519_054,
            Some("42"),
        );
        e1.severity = Some(Severity::Medium);
        let mut e2 = event(7, 1_582_222_900, 2_164_260_880, Some("42"));
        e2.severity = Some(Severity::Critical);
        e2.computer.as_mut().unwrap().ips.push("192.168.1.9".into());
        r.add_events(&[e1, e2], 0);
        r
    }

    #[test]
    fn xdr_incident_has_every_required_field() {
        let cfg = config_from(&base_map()).unwrap();
        let mut names = EventTypeNames::new();
        names.insert(1_090_519_054, "Threat Detected (catalogue)".into());
        let v = xdr_incident(&cfg, &record(), &names);
        assert_eq!(
            v["title"],
            "[Acme] Threat Detected (catalogue) on host-1 @ 2020-02-20T18:20:38Z"
        );
        assert_eq!(v["confidence"], "High");
        assert_eq!(v["severity"], "Critical");
        assert_eq!(v["tlp"], "amber");
        assert_eq!(v["status"], "New");
        assert_eq!(v["incident_time"]["opened"], "2020-02-20T18:20:38Z");
        assert_eq!(v["external_ids"], json!(["amp-1234abcd-d42"]));
        assert_eq!(v["source"], "mssp-bridge");
        assert_eq!(v["promotion_method"], "Automated");
        assert_eq!(v["tactics"], json!(["TA0002"]));
        assert_eq!(v["techniques"], json!(["T1204"]));
        assert!(v.get("schema_version").is_none());
        let d = v["description"].as_str().unwrap();
        for needle in [
            "host-1",
            "alice@ACME",
            "10.0.0.5, 192.168.1.9",
            "evil.exe",
            &"ab".repeat(32),
            "Malicious",
            "W32.Test.Detection",
            "TA0002",
            "T1204",
            "/trajectory2",
            "6533241145273614339",
            "Quarantine Failure",
        ] {
            assert!(d.contains(needle), "missing {needle} in {d}");
        }
    }

    #[test]
    fn one_bundle_carries_the_incident_and_links_its_observables() {
        let cfg = config_from(&base_map()).unwrap();
        let b = xdr_create_bundle(&cfg, &record(), &EventTypeNames::new());
        let incident = &b["incidents"][0];
        assert_eq!(incident["id"], "transient:incident-amp-1234abcd-d42");
        assert_eq!(incident["external_ids"], json!(["amp-1234abcd-d42"]));
        assert_eq!(incident["status"], "New");
        let obs = &b["sightings"][0]["observables"];
        let types: Vec<&str> = obs
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o["type"].as_str().unwrap())
            .collect();
        assert_eq!(
            types,
            [
                "hostname",
                "amp_computer_guid",
                "user",
                "ip",
                "sha256",
                "file_path",
                "file_name",
                "ip"
            ]
        );
        assert_eq!(b["relationships"][0]["relationship_type"], "member-of");
        assert_eq!(b["relationships"][0]["source_ref"], b["sightings"][0]["id"]);
        assert_eq!(b["relationships"][0]["target_ref"], incident["id"]);
        // Every entity is recognisable when the bundle is sent again.
        for kind in ["incidents", "sightings", "relationships"] {
            assert!(b[kind][0]["external_ids"][0].is_string(), "{kind}");
        }
        let mut bare = IncidentRecord::new("k", 0);
        let mut e = event(1, 1, 1, None);
        e.computer = None;
        e.file = None;
        e.connector_guid = None;
        bare.add_events(&[e], 0);
        let b = xdr_create_bundle(&cfg, &bare, &EventTypeNames::new());
        assert_eq!(b["incidents"].as_array().map(Vec::len), Some(1));
        assert!(b.get("sightings").is_none() && b.get("relationships").is_none());
    }

    #[test]
    fn snow_incident_is_complete_in_one_post() {
        let mut map = base_map();
        map.insert("snow_caller_id".into(), "caller-sys-id".into());
        map.insert("snow_assignment_group".into(), "group-sys-id".into());
        let cfg = config_from(&map).unwrap();
        let mut r = record();
        r.xdr = Some(XdrRef::from_entity_id("https://x/ctia/incident/incident-9"));
        r.containment = Some(ContainmentRecord {
            outcome: Some("moved to triage group".into()),
            ..Default::default()
        });
        let v = snow_incident(&cfg, &r, &EventTypeNames::new(), &first_work_note(&r));
        assert!(v["short_description"].as_str().unwrap().ends_with(" [XDR]"));
        assert_eq!(v["impact"], "1");
        assert_eq!(v["urgency"], "1");
        assert_eq!(v["correlation_id"], "amp-1234abcd-d42");
        assert_eq!(v["correlation_display"], "mssp-bridge");
        assert_eq!(v["caller_id"], "caller-sys-id");
        assert_eq!(v["assignment_group"], "group-sys-id");
        assert!(
            v["description"]
                .as_str()
                .unwrap()
                .contains("https://x/ctia/incident/incident-9")
        );
        assert!(
            v["work_notes"]
                .as_str()
                .unwrap()
                .contains("moved to triage group")
        );
        let plain = snow_incident(
            &config_from(&base_map()).unwrap(),
            &r,
            &EventTypeNames::new(),
            "n",
        );
        assert!(plain.get("caller_id").is_none() && plain.get("assignment_group").is_none());
    }

    #[test]
    fn close_in_one_patch_and_follow_up_note() {
        let cfg = config_from(&base_map()).unwrap();
        let mut r = record();
        r.snow = Some(SnowRef {
            sys_id: "a".repeat(32),
            number: "INC0010001".into(),
        });
        r.state = crate::incident::State::Open;
        r.begin_close("callback", "7", Some("Solved (Permanently)"), 0);
        let stored = xdr_incident(&cfg, &r, &EventTypeNames::new());
        let v = xdr_close(&cfg, &r, &stored, "incident-1", 1_700_000_000_000)
            .body
            .unwrap();
        assert_eq!(v["status"], "Closed");
        assert_eq!(v["incident_time"]["closed"], "2023-11-14T22:13:20Z");
        assert_eq!(
            v["incident_time"]["opened"],
            xdr_incident(&cfg, &r, &EventTypeNames::new())["incident_time"]["opened"]
        );
        assert_eq!(v["external_references"][0]["source_name"], "ServiceNow");
        assert_eq!(v["external_references"][0]["external_id"], "INC0010001");
        assert!(
            v["external_references"][0]["url"]
                .as_str()
                .unwrap()
                .contains(&"a".repeat(32))
        );
        let note = follow_up_note(&r, &EventTypeNames::new(), &[7, 99]);
        assert!(
            note.starts_with("2 further")
                && note.contains("Quarantine Failure")
                && note.contains("1 more"),
            "{note}"
        );
    }

    fn record_of(samples: &[&str]) -> IncidentRecord {
        let mut r = IncidentRecord::new("amp-1234abcd-e1", 0);
        let events: Vec<Event> = samples
            .iter()
            .map(|j| crate::event::parse_event(&serde_json::from_str(j).unwrap()).unwrap())
            .collect();
        r.add_events(&events, 0);
        r
    }

    fn obs(r: &IncidentRecord) -> Vec<(String, String)> {
        observables(r)
            .0
            .iter()
            .map(|o| {
                (
                    o["type"].as_str().unwrap().to_string(),
                    o["value"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    }

    #[test]
    fn cloud_ioc_events_keep_their_ioc_and_command_line() {
        use crate::event::tests::CLOUD_IOC_EVENT;
        let cfg = config_from(&base_map()).unwrap();
        let r = record_of(&[CLOUD_IOC_EVENT]);
        for markdown in [true, false] {
            let d = describe(&cfg, &r, &EventTypeNames::new(), markdown);
            assert!(d.contains("W32.ClearEventLogs.ioc"), "{d}");
            assert!(
                !d.contains("Detection:** none") && !d.contains("Detection: none"),
                "{d}"
            );
            assert!(
                d.contains("An attempt was made to delete the system event logs"),
                "{d}"
            );
            assert!(d.contains("wevtutil.exe cl Application"), "{d}");
        }
        let o = obs(&r);
        assert!(
            o.contains(&("file_name".into(), "wevtutil.exe".into())),
            "{o:?}"
        );
    }

    #[test]
    fn network_events_reach_the_ticket_and_typed_observables() {
        use crate::event::tests::NFM_EVENT;
        let cfg = config_from(&base_map()).unwrap();
        let r = record_of(&[NFM_EVENT]);
        let d = describe(&cfg, &r, &EventTypeNames::new(), false);
        assert!(d.contains("188.120.225.17:80"), "{d}");
        assert!(d.contains("192.168.1.3:54233"), "{d}");
        assert!(d.contains("TCP"), "{d}");
        assert!(
            d.contains("http://www.sanjosemaristas.com/app/index.php?"),
            "{d}"
        );
        let o = obs(&r);
        for want in [
            ("ip", "188.120.225.17"),
            ("url", "http://www.sanjosemaristas.com/app/index.php?"),
            ("domain", "www.sanjosemaristas.com"),
            ("mac_address", "09:de:6b:a8:74:10"),
        ] {
            assert!(
                o.contains(&(want.0.to_string(), want.1.to_string())),
                "{want:?} in {o:?}"
            );
        }
    }

    #[test]
    fn placeholders_and_masked_values_are_not_data() {
        use crate::event::tests::PLACEHOLDER_EVENT;
        let cfg = config_from(&base_map()).unwrap();
        let r = record_of(&[PLACEHOLDER_EVENT]);
        let d = describe(&cfg, &r, &EventTypeNames::new(), false);
        assert!(!d.contains("Not Available"), "{d}");
        assert!(!d.contains("xxx.xxx.xxx.xxx"), "{d}");
        assert!(d.contains("User: none reported"), "{d}");
        let (o, dropped) = observables(&r);
        let text = serde_json::to_string(&o).unwrap();
        assert!(
            !text.contains("xxx") && !text.contains("Not Available"),
            "{text}"
        );
        // A value that is there but is not what its member says is dropped with a note.
        assert!(
            dropped
                .iter()
                .any(|n| n.contains("10.0.0.300") && n.contains("not an IP")),
            "{dropped:?}"
        );
        assert!(dropped_observables_note(&r).contains("dropped, not sent"));
        assert!(!text.contains("10.0.0.300"));
    }

    #[test]
    fn the_ticket_says_why_the_host_was_not_contained() {
        let mut r = record();
        assert!(first_work_note(&r).contains("Containment: none (policy)"));
        r.containment_skipped = Some("the host could not be identified".into());
        assert!(
            first_work_note(&r).contains("Containment: not done: the host could not be identified")
        );
    }

    fn closing_record() -> (Config, IncidentRecord) {
        let cfg = config_from(&base_map()).unwrap();
        let mut r = record();
        r.snow = Some(SnowRef {
            sys_id: "b".repeat(32),
            number: "INC0010002".into(),
        });
        r.state = crate::incident::State::Open;
        r.begin_close("reconcile", "6", None, 0);
        (cfg, r)
    }

    #[test]
    fn an_analysts_close_keeps_status_and_time_and_gets_the_reference_once() {
        let (cfg, r) = closing_record();
        let stored = json!({
            "status": "Closed: Merged",
            "incident_time": {"opened": "2023-01-01T00:00:00Z", "closed": "2023-02-02T00:00:00Z"},
            "external_references": [{"source_name": "Casebook", "url": "https://x"}],
        });
        let w = xdr_close(&cfg, &r, &stored, "incident-1", 1_700_000_000_000);
        let body = w.body.clone().unwrap();
        assert_eq!(body.as_object().unwrap().len(), 1, "{body}");
        let refs = body["external_references"].as_array().unwrap();
        assert_eq!(refs.len(), 2);
        assert_eq!(refs[0]["source_name"], "Casebook");
        assert_eq!(refs[1]["external_id"], "INC0010002");
        assert!(
            w.outcome
                .contains("already closed by an analyst (Closed: Merged)"),
            "{}",
            w.outcome
        );
        assert!(w.outcome.contains("ServiceNow reference added"));
        // Reference there already: nothing to write.
        let mut again = stored.clone();
        again["external_references"] = body["external_references"].clone();
        let w = xdr_close(&cfg, &r, &again, "incident-1", 1_700_000_000_000);
        assert!(w.body.is_none(), "{:?}", w.body);
        // Not closed: one PATCH keeping the stored times and references.
        let mut open = stored.clone();
        open["status"] = json!("Open: Investigating");
        let body = xdr_close(&cfg, &r, &open, "incident-1", 1_700_000_000_000)
            .body
            .unwrap();
        assert_eq!(body["status"], "Closed");
        assert_eq!(body["incident_time"]["opened"], "2023-01-01T00:00:00Z");
        assert_eq!(body["incident_time"]["closed"], "2023-11-14T22:13:20Z");
        assert_eq!(body["external_references"].as_array().unwrap().len(), 2);
        assert!(is_closed_status("Closed: False Positive") && !is_closed_status("Closedish"));
        // Rejected by an analyst: left as is, only the reference added.
        let mut rejected = open.clone();
        rejected["status"] = json!("Rejected");
        let w = xdr_close(&cfg, &r, &rejected, "incident-1", 1_700_000_000_000);
        let body = w.body.unwrap();
        assert!(body.get("status").is_none() && body.get("incident_time").is_none());
        assert!(
            w.outcome.contains("already ended by an analyst (Rejected)"),
            "{}",
            w.outcome
        );
    }

    #[test]
    fn a_later_update_replaces_only_what_the_bridge_still_owns() {
        let cfg = config_from(&base_map()).unwrap();
        let names = EventTypeNames::new();
        let mut r = record();
        let created = xdr_incident(&cfg, &r, &names);
        let mut written = XdrWritten::default();
        written.note(&created);
        r.xdr_written = Some(written);
        let mut later = r.events[0].clone();
        later.id = 77;
        later.tactics = vec!["TA0099".into()];
        r.add_events(&[later], 0);
        // Untouched in XDR: description replaced, tactics merged.
        let w = xdr_update(&cfg, &r, &names, &created);
        let body = w.body.clone().unwrap();
        assert!(body["description"].as_str().unwrap().contains("event 77"));
        assert!(
            body["tactics"]
                .as_array()
                .unwrap()
                .contains(&json!("TA0099"))
        );
        assert!(
            w.outcome.contains("XDR incident description updated"),
            "{}",
            w.outcome
        );
        assert_ne!(w.written, r.xdr_written);
        // Edited by an analyst: description and severity left, their tactic kept.
        let mut edited = created.clone();
        edited["description"] = json!("analyst text");
        edited["severity"] = json!("Low");
        edited["tactics"] = json!(["TA0001"]);
        let w = xdr_update(&cfg, &r, &names, &edited);
        let body = w.body.clone().unwrap();
        assert!(
            body.get("description").is_none() && body.get("severity").is_none(),
            "{body}"
        );
        let tactics = body["tactics"].as_array().unwrap();
        assert_eq!(tactics[0], "TA0001");
        assert!(
            w.outcome
                .contains("changed in XDR since the bridge wrote it"),
            "{}",
            w.outcome
        );
        let (now, before) = (w.written.clone().unwrap(), r.xdr_written.clone().unwrap());
        assert_eq!(
            (now.descriptions, now.severities),
            (before.descriptions, before.severities),
            "the description and severity the bridge owns are unchanged"
        );
        // A tactic the bridge sent and an analyst removed is not sent again.
        r.xdr_written = w.written.clone();
        let mut removed = edited.clone();
        removed["tactics"] = json!(["TA0001"]);
        r.xdr_written
            .as_mut()
            .unwrap()
            .tactics
            .push("TA0099".into());
        let w = xdr_update(&cfg, &r, &names, &removed);
        assert!(
            w.body
                .as_ref()
                .is_none_or(|b| !b["tactics"].to_string().contains("TA0099")),
            "{:?}",
            w.body
        );
        // A record from before the bridge kept track: left alone too.
        r.xdr_written = None;
        let w = xdr_update(&cfg, &r, &names, &created);
        assert!(w.body.unwrap().get("description").is_none());
    }

    #[test]
    fn every_external_id_of_the_bundle_starts_with_the_prefix_sent() {
        let cfg = config_from(&base_map()).unwrap();
        let b = xdr_create_bundle(&cfg, &record(), &EventTypeNames::new());
        let mut ids = Vec::new();
        for kind in ["incidents", "sightings", "relationships"] {
            for e in b[kind].as_array().into_iter().flatten() {
                ids.extend(e["external_ids"].as_array().unwrap().iter().cloned());
            }
        }
        assert_eq!(ids.len(), 3);
        for id in ids {
            assert!(
                id.as_str()
                    .unwrap()
                    .starts_with(crate::upstream::EXTERNAL_KEY_PREFIXES),
                "{id}"
            );
        }
    }
}
