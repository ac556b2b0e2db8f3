//! Secure Endpoint events and list pages, parsed leniently: unknown members are ignored,
//! optional parts may be absent or null, strings are trimmed, and 64-bit ids stay exact.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::severity::Severity;
use crate::time;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Computer {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileInfo {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disposition: Option<String>,
}

/// The facts of one event the bridge uses; everything else is dropped at parse time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub id: u64,
    /// Unix seconds.
    pub timestamp: i64,
    pub event_type_id: u64,
    #[serde(default)]
    pub event_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detection: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detection_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connector_guid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub severity: Option<Severity>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub computer: Option<Computer>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<FileInfo>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tactics: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub techniques: Vec<String>,
}

impl Event {
    pub fn hostname(&self) -> Option<&str> {
        self.computer.as_ref()?.hostname.as_deref()
    }
}

/// One page of `GET /v1/events`.
#[derive(Debug, Clone, PartialEq)]
pub struct EventPage {
    pub events: Vec<Event>,
    /// Items that could not be used (no usable id or time), with the reason.
    pub rejected: Vec<String>,
    /// `metadata.links.next`, when there is a further page.
    pub next: Option<String>,
    /// `metadata.results.total`: items of the whole query, all pages.
    pub total: Option<u64>,
    /// The id of every item of `data`, in the order served (`None` when unusable).
    pub item_ids: Vec<Option<u64>>,
}

/// A trimmed, non-empty string member (numbers are accepted and printed).
fn text(v: &Value, key: &str) -> Option<String> {
    match v.get(key)? {
        Value::String(s) => {
            let t = s.trim();
            (!t.is_empty()).then(|| t.to_string())
        }
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// An exact unsigned integer: a JSON integer or a string of digits. Floats are refused:
/// a float has already lost the low digits of a 64-bit id.
fn exact_u64(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn exact_i64(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// MITRE ids given as plain strings or as objects with an id member.
fn mitre(v: &Value, key: &str) -> Vec<String> {
    let Some(Value::Array(items)) = v.get(key) else {
        return Vec::new();
    };
    let mut out: Vec<String> = Vec::new();
    for item in items {
        let id = match item {
            Value::String(s) => Some(s.trim().to_string()),
            Value::Object(_) => ["external_id", "id", "name"]
                .iter()
                .find_map(|k| text(item, k)),
            _ => None,
        };
        if let Some(id) = id.filter(|s| !s.is_empty())
            && !out.contains(&id)
        {
            out.push(id);
        }
    }
    out
}

fn parse_computer(v: &Value) -> Option<Computer> {
    if !v.is_object() {
        return None;
    }
    let mut ips: Vec<String> = Vec::new();
    let mut push = |ip: Option<String>| {
        if let Some(ip) = ip
            && !ips.contains(&ip)
        {
            ips.push(ip);
        }
    };
    push(text(v, "external_ip"));
    if let Some(Value::Array(addrs)) = v.get("network_addresses") {
        for a in addrs {
            push(text(a, "ip"));
        }
    }
    if let Some(Value::Array(internal)) = v.get("internal_ips") {
        for ip in internal {
            push(
                ip.as_str()
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(String::from),
            );
        }
    }
    Some(Computer {
        hostname: text(v, "hostname"),
        user: text(v, "user"),
        ips,
    })
}

fn parse_file(v: &Value) -> Option<FileInfo> {
    if !v.is_object() {
        return None;
    }
    let sha256 = v
        .get("identity")
        .and_then(|i| text(i, "sha256"))
        .map(|s| s.to_ascii_lowercase())
        .filter(|s| s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()));
    Some(FileInfo {
        name: text(v, "file_name"),
        path: text(v, "file_path"),
        sha256,
        disposition: text(v, "disposition"),
    })
}

/// One event object of the `data` array.
pub fn parse_event(v: &Value) -> Result<Event, String> {
    if !v.is_object() {
        return Err("event is not a JSON object".into());
    }
    let id = v
        .get("id")
        .and_then(exact_u64)
        .ok_or("event has no exact integer id")?;
    let timestamp = v
        .get("timestamp")
        .and_then(exact_i64)
        .or_else(|| {
            v.get("date")
                .and_then(Value::as_str)
                .and_then(time::parse_iso)
        })
        .ok_or_else(|| format!("event {id} has neither timestamp nor a parsable date"))?;
    let event_type_id = v
        .get("event_type_id")
        .and_then(exact_u64)
        .ok_or_else(|| format!("event {id} has no event_type_id"))?;
    let computer = v.get("computer").and_then(parse_computer);
    let connector_guid = text(v, "connector_guid")
        .or_else(|| v.get("computer").and_then(|c| text(c, "connector_guid")));
    Ok(Event {
        id,
        timestamp,
        event_type_id,
        event_type: text(v, "event_type").unwrap_or_default(),
        detection: text(v, "detection"),
        detection_id: text(v, "detection_id"),
        connector_guid,
        severity: v
            .get("severity")
            .and_then(Value::as_str)
            .and_then(Severity::parse),
        computer,
        file: v.get("file").and_then(parse_file),
        tactics: mitre(v, "tactics"),
        techniques: mitre(v, "techniques"),
    })
}

/// A whole list page. Fails only when the envelope itself is unusable; bad items are
/// reported in `rejected` and skipped.
pub fn page_from_value(v: &Value) -> Result<EventPage, String> {
    let Some(Value::Array(items)) = v.get("data") else {
        return Err("events page has no \"data\" array".into());
    };
    let mut events = Vec::with_capacity(items.len());
    let mut rejected = Vec::new();
    let item_ids = items
        .iter()
        .map(|item| item.get("id").and_then(exact_u64))
        .collect();
    for item in items {
        match parse_event(item) {
            Ok(e) => events.push(e),
            Err(why) => rejected.push(why),
        }
    }
    let next = v
        .pointer("/metadata/links/next")
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from);
    let total = v.pointer("/metadata/results/total").and_then(exact_u64);
    Ok(EventPage {
        events,
        rejected,
        next,
        total,
        item_ids,
    })
}

/// `id → name` from `GET /v1/event_types`.
pub fn event_types_from_value(v: &Value) -> Result<Vec<(u64, String)>, String> {
    let Some(Value::Array(items)) = v.get("data") else {
        return Err("event types have no \"data\" array".into());
    };
    Ok(items
        .iter()
        .filter_map(|t| Some((t.get("id").and_then(exact_u64)?, text(t, "name")?)))
        .collect())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn parse_page(body: &[u8]) -> Result<EventPage, String> {
        let v: Value = serde_json::from_slice(body).map_err(|e| e.to_string())?;
        page_from_value(&v)
    }

    /// The Threat Detected event of upstream-apis.md, with a real 64-bit id.
    pub const REAL_EVENT: &str = r#"{"id":6533241145273614339,"timestamp":1582222838,"timestamp_nanoseconds":279000000,
 "date":"2020-02-20T18:20:38+00:00","event_type":"Threat Detected","event_type_id":1090519054,
 "detection":"W32.GenericKD:ZVETJ.18gs.1201","detection_id":"6180352115244793858",
 "connector_guid":"20a0ce9f-0000-4000-8000-000000000001","group_guids":["6c3c2005-0000"],"severity":"Medium",
 "computer":{"connector_guid":"20a0ce9f-0000-4000-8000-000000000001","hostname":"Demo_Upatre","external_ip":"69.226.122.127",
   "user":"A@TEMPLATE-W7X86","active":true,
   "network_addresses":[{"ip":"230.122.135.241","mac":"3f:1e:b2:28:25:24"},{"ip":"","mac":"AA:BB"}],
   "links":{"computer":"https://api.amp.cisco.com/v1/computers/x","trajectory":"t","group":"g"}},
 "file":{"disposition":"Malicious","file_name":"wsymqyv90.exe","file_path":"\\\\?\\C:\\Users\\a\\wsymqyv90.exe",
   "identity":{"sha256":"B630E7A1B2C3D4E5F60718293A4B5C6D7E8F90A1B2C3D4E5F60718293A4B5C6D","sha1":"70aef8","md5":"e2f5dc"},
   "parent":{"process_id":4040,"disposition":"Clean","file_name":"iexplore.exe","identity":{"sha256":"x"}}},
 "tactics":["TA0042"],"techniques":["T1204.003"],"brand_new_member":{"x":1}}"#;

    #[test]
    fn parses_the_documented_event_exactly() {
        let e = parse_event(&serde_json::from_str(REAL_EVENT).unwrap()).unwrap();
        assert_eq!(e.id, 6_533_241_145_273_614_339);
        assert_eq!(e.timestamp, 1_582_222_838);
        assert_eq!(e.event_type_id, 1_090_519_054);
        assert_eq!(e.detection_id.as_deref(), Some("6180352115244793858"));
        assert_eq!(e.severity, Some(Severity::Medium));
        let c = e.computer.as_ref().unwrap();
        assert_eq!(c.hostname.as_deref(), Some("Demo_Upatre"));
        assert_eq!(c.ips, vec!["69.226.122.127", "230.122.135.241"]);
        let f = e.file.as_ref().unwrap();
        assert_eq!(
            f.sha256.as_deref(),
            Some("b630e7a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d")
        );
        assert_eq!(f.name.as_deref(), Some("wsymqyv90.exe"));
        assert_eq!(e.tactics, vec!["TA0042"]);
        // The stored form round-trips the 64-bit id exactly.
        let stored = serde_json::to_string(&e).unwrap();
        assert!(stored.contains("6533241145273614339"));
        assert_eq!(serde_json::from_str::<Event>(&stored).unwrap(), e);
    }

    #[test]
    fn tolerates_messy_and_missing_parts() {
        let v = serde_json::json!({
            "id": "18446744073709551615", "date": "2021-01-01T00:00:00Z",
            "event_type_id": 2164260880u64, "event_type": "  Quarantine Failure ",
            "severity": null, "computer": null, "file": {"identity": {"sha256": "short"}},
            "detection_id": 42, "tactics": [{"external_id": "TA0002"}, "TA0002", 7],
        });
        let e = parse_event(&v).unwrap();
        assert_eq!(e.id, u64::MAX);
        assert_eq!(e.timestamp, 1_609_459_200);
        assert_eq!(e.event_type, "Quarantine Failure");
        assert_eq!(e.severity, None);
        assert_eq!(e.computer, None);
        assert_eq!(e.file.unwrap().sha256, None);
        assert_eq!(e.detection_id.as_deref(), Some("42"));
        assert_eq!(e.tactics, vec!["TA0002"]);
    }

    #[test]
    fn refuses_ids_that_lost_precision() {
        let v = serde_json::json!({"id": 6.533241145273614e18, "timestamp": 1, "event_type_id": 1});
        assert!(parse_event(&v).is_err());
        let v = serde_json::json!({"id": 5, "event_type_id": 1});
        assert!(parse_event(&v).unwrap_err().contains("timestamp"));
    }

    #[test]
    fn parses_pages_and_next_links() {
        let body = format!(
            r#"{{"version":"v1.2.0","metadata":{{"links":{{"self":"s","next":"https://x/v1/events?offset=500"}},
            "results":{{"total":2}}}},"data":[{REAL_EVENT}, {{"id":null}}, "junk"]}}"#
        );
        let page = parse_page(body.as_bytes()).unwrap();
        assert_eq!(page.events.len(), 1);
        assert_eq!(page.rejected.len(), 2);
        assert_eq!(page.next.as_deref(), Some("https://x/v1/events?offset=500"));
        let last = parse_page(br#"{"metadata":{"links":{"next":""}},"data":[]}"#).unwrap();
        assert_eq!(last.next, None);
        assert!(parse_page(br#"{"data":[{"id":1"#).is_err());
        assert!(parse_page(br#"{"errors":[]}"#).is_err());
    }

    #[test]
    fn parses_event_types() {
        let v = serde_json::json!({"data":[{"id":1090519054u64,"name":"Threat Detected","description":"d"},{"id":"x"}]});
        let names = event_types_from_value(&v).unwrap();
        assert_eq!(names, vec![(1_090_519_054, "Threat Detected".to_string())]);
    }
}
