//! Secure Endpoint events and list pages, parsed leniently: unknown members are ignored,
//! optional parts may be absent or null, strings are trimmed, and 64-bit ids stay exact.

use mssp_contract::civil;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::severity::Severity;

/// The `computer` member of an event. Placeholder values ("Not Available", "N/A",
/// masked addresses such as `xxx.xxx.xxx.xxx`, see [`is_placeholder`]) are absent here.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Computer {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// `external_ip`, `network_addresses[].ip`, `internal_ips[]`, in that order, as sent
    /// (validated only when they become observables).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<String>,
    /// `network_addresses[].mac`, as sent.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub macs: Vec<String>,
}

/// The `file` member of an event.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileInfo {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Lower-case hex, 64 digits (anything else is dropped at parse time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Lower-case hex, 40 digits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha1: Option<String>,
    /// Lower-case hex, 32 digits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub md5: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disposition: Option<String>,
}

/// The `cloud_ioc` member of Cloud IOC events (type 1107296274 and the other IOC types),
/// which carry it instead of `detection`: `{"short_description": "W32.Bitsadmin.ioc",
/// "description": "Bitsadmin is a command-line tool …"}`. Source: Elastic's
/// `cisco_secure_endpoint` integration, field list
/// `packages/cisco_secure_endpoint/data_stream/event/fields/fields.yml` (elastic/integrations
/// @ 24ee77b8) and its recorded API pages `_dev/test/pipeline/test-cisco-amp1.log`,
/// `test-cisco-amp8.log`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CloudIoc {
    /// `short_description`: the IOC's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// The `network_info` member of network events (NFM, DFC, suspected botnet connection,
/// connection to a suspicious domain): `{"dirty_url": "http://…", "remote_ip": "…",
/// "remote_port": 80, "local_ip": "…", "local_port": 54233, "nfm": {"direction":
/// "Outgoing connection from", "protocol": "TCP"}, "parent": {…}}`. Source: Cisco's
/// Secure Endpoint API documentation (device trajectory example, NFM event) and Elastic's
/// field list (`network_info.nfm.direction`, `network_info.parent.*`, fields.yml above).
/// Ports are numbers or digit strings; `protocol` may sit in `nfm` or at the top.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkInfo {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_ip: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_ip: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direction: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dirty_url: Option<String>,
}

impl NetworkInfo {
    fn is_empty(&self) -> bool {
        *self == NetworkInfo::default()
    }

    /// `TCP, Outgoing connection from 192.168.1.3:54233 to 188.120.225.17:80`, with the
    /// parts that are known.
    pub fn summary(&self) -> String {
        fn end(ip: &Option<String>, port: Option<u16>) -> Option<String> {
            match (ip, port) {
                (Some(ip), Some(p)) if ip.contains(':') => Some(format!("[{ip}]:{p}")),
                (Some(ip), Some(p)) => Some(format!("{ip}:{p}")),
                (Some(ip), None) => Some(ip.clone()),
                (None, Some(p)) => Some(format!("port {p}")),
                (None, None) => None,
            }
        }
        let mut parts: Vec<String> = Vec::new();
        if let Some(p) = &self.protocol {
            parts.push(p.clone());
        }
        let local = end(&self.local_ip, self.local_port);
        let remote = end(&self.remote_ip, self.remote_port);
        let flow = match (local, remote) {
            (Some(l), Some(r)) => Some(format!("{l} to {r}")),
            (None, Some(r)) => Some(format!("remote {r}")),
            (Some(l), None) => Some(format!("local {l}")),
            (None, None) => None,
        };
        if let Some(flow) = flow {
            parts.push(match &self.direction {
                Some(d) => format!("{d} {flow}"),
                None => flow,
            });
        }
        parts.join(", ")
    }
}

/// The facts of one event the bridge uses; everything else is dropped at parse time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub id: u64,
    /// Unix seconds.
    pub timestamp: i64,
    /// `timestamp_nanoseconds`: the fraction of the second, 0..1e9 (0 when absent).
    /// Events of one second are ordered by it (see [`chronological`]).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub timestamp_nanos: u32,
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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cloud_ioc: Option<CloudIoc>,
    /// `command_line.arguments` (Cloud IOC and behavioural events).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command_line: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<NetworkInfo>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl Event {
    pub fn hostname(&self) -> Option<&str> {
        self.computer.as_ref()?.hostname.as_deref()
    }

    /// When it happened, as `(seconds, nanoseconds, id)`: the order of [`chronological`].
    pub fn order_key(&self) -> (i64, u32, u64) {
        (self.timestamp, self.timestamp_nanos, self.id)
    }
}

/// Sorts events oldest first by `timestamp` then `timestamp_nanoseconds`; the id only
/// breaks exact ties. Event ids are not chronological (Secure Endpoint's ids of one
/// second come in any order; see the recorded pages of Elastic's integration,
/// `test-cisco-amp4.log`), so the id must never decide before the nanoseconds do.
pub fn chronological(events: &mut [Event]) {
    events.sort_by_key(Event::order_key);
}

/// Whether a string value is a placeholder rather than data: empty, "Not Available",
/// "N/A", "NA", "Unknown", "None", "null", "(null)", "undefined", "-", "--", "?", or a
/// masked value made only of `x`/`X`/`*`/`#` and separators (`xxx.xxx.xxx.xxx`,
/// `****`, `XX:XX:XX:XX:XX:XX`). Secure Endpoint sends "Not Available" as the user of
/// hosts with nobody logged on (Elastic's recorded page `test-cisco-amp9.log`), and
/// exports and proxies mask addresses; neither is a user or an address.
pub fn is_placeholder(s: &str) -> bool {
    let t = s.trim();
    let lower = t.to_ascii_lowercase();
    if matches!(
        lower.as_str(),
        "" | "not available"
            | "notavailable"
            | "n/a"
            | "na"
            | "unknown"
            | "none"
            | "null"
            | "(null)"
            | "nil"
            | "undefined"
            | "-"
            | "--"
            | "?"
    ) {
        return true;
    }
    let mut masked = 0;
    for c in t.chars() {
        match c {
            'x' | 'X' | '*' | '#' => masked += 1,
            '.' | ':' | '-' | '_' | ' ' | '@' | '\\' | '/' => {}
            _ => return false,
        }
    }
    masked > 0
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

/// A [`text`] member that is data, not a placeholder (see [`is_placeholder`]).
fn fact(v: &Value, key: &str) -> Option<String> {
    text(v, key).filter(|s| !is_placeholder(s))
}

/// A port: a JSON integer or a string of digits, 0..=65535.
fn port(v: &Value, key: &str) -> Option<u16> {
    v.get(key)
        .and_then(exact_u64)
        .and_then(|p| u16::try_from(p).ok())
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
    let mut macs: Vec<String> = Vec::new();
    let push = |list: &mut Vec<String>, item: Option<String>| {
        if let Some(item) = item
            && !list.contains(&item)
        {
            list.push(item);
        }
    };
    push(&mut ips, fact(v, "external_ip"));
    if let Some(Value::Array(addrs)) = v.get("network_addresses") {
        for a in addrs {
            push(&mut ips, fact(a, "ip"));
            push(&mut macs, fact(a, "mac"));
        }
    }
    if let Some(Value::Array(internal)) = v.get("internal_ips") {
        for ip in internal {
            push(
                &mut ips,
                ip.as_str()
                    .map(str::trim)
                    .filter(|s| !is_placeholder(s))
                    .map(String::from),
            );
        }
    }
    Some(Computer {
        hostname: fact(v, "hostname"),
        user: fact(v, "user"),
        ips,
        macs,
    })
}

fn parse_file(v: &Value) -> Option<FileInfo> {
    if !v.is_object() {
        return None;
    }
    let hash = |key: &str, len: usize| {
        v.get("identity")
            .and_then(|i| text(i, key))
            .map(|s| s.to_ascii_lowercase())
            .filter(|s| s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit()))
    };
    Some(FileInfo {
        name: fact(v, "file_name"),
        path: fact(v, "file_path"),
        sha256: hash("sha256", 64),
        sha1: hash("sha1", 40),
        md5: hash("md5", 32),
        // "Unknown" is one of Secure Endpoint's verdicts (Clean / Malicious / Unknown),
        // not a placeholder: kept as sent.
        disposition: text(v, "disposition"),
    })
}

fn parse_cloud_ioc(v: &Value) -> Option<CloudIoc> {
    let ioc = CloudIoc {
        name: fact(v, "short_description").or_else(|| fact(v, "name")),
        description: fact(v, "description"),
    };
    (ioc != CloudIoc::default()).then_some(ioc)
}

/// `command_line.arguments`, a string (or, in some exports, a list of strings).
fn parse_command_line(v: &Value) -> Option<String> {
    match v.get("arguments")? {
        Value::Array(parts) => {
            let joined = parts
                .iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(" ");
            let t = joined.trim();
            (!t.is_empty()).then(|| t.to_string())
        }
        _ => fact(v, "arguments"),
    }
}

fn parse_network(v: &Value) -> Option<NetworkInfo> {
    if !v.is_object() {
        return None;
    }
    let nfm = v.get("nfm").unwrap_or(&Value::Null);
    let n = NetworkInfo {
        remote_ip: fact(v, "remote_ip"),
        remote_port: port(v, "remote_port"),
        local_ip: fact(v, "local_ip"),
        local_port: port(v, "local_port"),
        protocol: fact(nfm, "protocol").or_else(|| fact(v, "protocol")),
        direction: fact(nfm, "direction").or_else(|| fact(v, "direction")),
        dirty_url: fact(v, "dirty_url"),
    };
    (!n.is_empty()).then_some(n)
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
        .or_else(|| v.get("date").and_then(Value::as_str).and_then(civil::parse))
        .ok_or_else(|| format!("event {id} has neither timestamp nor a parsable date"))?;
    let event_type_id = v
        .get("event_type_id")
        .and_then(exact_u64)
        .ok_or_else(|| format!("event {id} has no event_type_id"))?;
    let computer = v.get("computer").and_then(parse_computer);
    let connector_guid = text(v, "connector_guid")
        .or_else(|| v.get("computer").and_then(|c| text(c, "connector_guid")));
    let timestamp_nanos = v
        .get("timestamp_nanoseconds")
        .and_then(exact_u64)
        .and_then(|n| u32::try_from(n).ok())
        .filter(|n| *n < 1_000_000_000)
        .unwrap_or(0);
    Ok(Event {
        id,
        timestamp,
        timestamp_nanos,
        event_type_id,
        event_type: text(v, "event_type").unwrap_or_default(),
        detection: fact(v, "detection"),
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
        cloud_ioc: v.get("cloud_ioc").and_then(parse_cloud_ioc),
        command_line: v.get("command_line").and_then(parse_command_line),
        network: v.get("network_info").and_then(parse_network),
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

/// CTIA observable types the bridge sends, with the validation each value must pass.
/// The names are CTIM's observable type vocabulary (`observable-type-identifier` in
/// `src/ctim/schemas/vocabularies.cljc`, threatgrid/ctim @ cf3db3e7: `ip`, `ipv6`,
/// `mac_address`, `url`, `domain`, `sha256`, `sha1`, `md5`, `file_path`, `file_name`,
/// `hostname`, `user`, `amp_computer_guid`, …). A value of the wrong form is never sent
/// under a type it is not: it is dropped, and the caller notes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObservableKind {
    /// An address of either family: typed `ip` (IPv4) or `ipv6` by what it parses as.
    Ip,
    MacAddress,
    Url,
    Domain,
    Sha256,
    Sha1,
    Md5,
    FilePath,
    FileName,
    Hostname,
    User,
    AmpComputerGuid,
}

impl ObservableKind {
    /// What the value should have been, for the drop note.
    fn what(self) -> &'static str {
        match self {
            ObservableKind::Ip => "an IP address",
            ObservableKind::MacAddress => "a MAC address",
            ObservableKind::Url => "a URL",
            ObservableKind::Domain => "a domain name",
            ObservableKind::Sha256 => "a SHA-256",
            ObservableKind::Sha1 => "a SHA-1",
            ObservableKind::Md5 => "an MD5",
            ObservableKind::FilePath => "a file path",
            ObservableKind::FileName => "a file name",
            ObservableKind::Hostname => "a host name",
            ObservableKind::User => "a user name",
            ObservableKind::AmpComputerGuid => "a connector GUID",
        }
    }
}

fn hex_of_len(s: &str, len: usize) -> Option<String> {
    (s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit())).then(|| s.to_ascii_lowercase())
}

/// A DNS name: 1..=253 characters, labels of 1..=63 letters, digits, `-` (and `_`, seen
/// in real internal names), not starting or ending with `-`, at least one letter.
fn is_dns_name(s: &str) -> bool {
    let s = s.strip_suffix('.').unwrap_or(s);
    !s.is_empty()
        && s.len() <= 253
        && s.bytes().any(|b| b.is_ascii_alphabetic())
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// The host of an absolute `scheme://[user@]host[:port][/…]` URL, lower-cased, IPv6
/// brackets removed.
pub fn url_host(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    if scheme.is_empty()
        || !scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
    {
        return None;
    }
    let authority = rest.split(['/', '?', '#']).next()?;
    let host_port = authority.rsplit('@').next()?;
    let host = if let Some(v6) = host_port.strip_prefix('[') {
        v6.split(']').next()?
    } else {
        host_port.split(':').next()?
    };
    (!host.is_empty()).then(|| host.to_ascii_lowercase())
}

/// Checks and normalises one value for an observable of `kind`. Returns the CTIA type
/// name and the value to send, or why it is not one.
pub fn observable(kind: ObservableKind, raw: &str) -> Result<(&'static str, String), String> {
    let v = raw.trim();
    let refuse = || Err(format!("{v:?} is not {}", kind.what()));
    if is_placeholder(v) || v.chars().any(char::is_control) {
        return refuse();
    }
    match kind {
        ObservableKind::Ip => match v.parse::<std::net::IpAddr>() {
            Ok(std::net::IpAddr::V4(a)) => Ok(("ip", a.to_string())),
            Ok(std::net::IpAddr::V6(a)) => Ok(("ipv6", a.to_string())),
            Err(_) => refuse(),
        },
        ObservableKind::MacAddress => {
            let parts: Vec<&str> = v.split([':', '-']).collect();
            if parts.len() == 6
                && parts
                    .iter()
                    .all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()))
            {
                Ok(("mac_address", parts.join(":").to_ascii_lowercase()))
            } else {
                refuse()
            }
        }
        ObservableKind::Url => match url_host(v) {
            Some(_) if !v.contains(char::is_whitespace) => Ok(("url", v.to_string())),
            _ => refuse(),
        },
        ObservableKind::Domain => {
            let d = v.strip_suffix('.').unwrap_or(v).to_ascii_lowercase();
            if d.parse::<std::net::IpAddr>().is_err() && is_dns_name(&d) && d.contains('.') {
                Ok(("domain", d))
            } else {
                refuse()
            }
        }
        ObservableKind::Sha256 => match hex_of_len(v, 64) {
            Some(h) => Ok(("sha256", h)),
            None => refuse(),
        },
        ObservableKind::Sha1 => match hex_of_len(v, 40) {
            Some(h) => Ok(("sha1", h)),
            None => refuse(),
        },
        ObservableKind::Md5 => match hex_of_len(v, 32) {
            Some(h) => Ok(("md5", h)),
            None => refuse(),
        },
        ObservableKind::FilePath if v.len() <= 4096 => Ok(("file_path", v.to_string())),
        ObservableKind::FileName if v.len() <= 1024 && !v.contains('/') && !v.contains('\\') => {
            Ok(("file_name", v.to_string()))
        }
        ObservableKind::Hostname if is_dns_name(v) => Ok(("hostname", v.to_string())),
        ObservableKind::User if v.len() <= 256 => Ok(("user", v.to_string())),
        ObservableKind::AmpComputerGuid
            if v.len() <= 64 && v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') =>
        {
            Ok(("amp_computer_guid", v.to_string()))
        }
        _ => refuse(),
    }
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

    /// A Cloud IOC event as Secure Endpoint sends it: no `detection`, the IOC in
    /// `cloud_ioc`, the command line in `command_line.arguments`. Recorded API page of
    /// Elastic's integration (elastic/integrations @ 36eb0d25,
    /// `packages/cisco_secure_endpoint/data_stream/event/_dev/test/pipeline/test-cisco-amp8.log`,
    /// second record; id made exact).
    pub const CLOUD_IOC_EVENT: &str = r#"{"id":1484854607882482201,"timestamp":1649204557,"timestamp_nanoseconds":527000000,
 "date":"2022-04-06T00:22:37+00:00","event_type":"Cloud IOC","event_type_id":1107296274,
 "connector_guid":"a62cbf74-ab22-4820-ad00-eb2b69a914ed","group_guids":["5ca61ec2-a614-4323-aa61-34bb8f3a24aa"],"severity":"Medium",
 "start_timestamp":1649204556,"start_date":"2022-04-06T00:22:36+00:00",
 "computer":{"connector_guid":"a62cbf74-ab22-4820-ad00-eb2b69a914ed","hostname":"svrp-xanme03.example.com","external_ip":"81.2.69.144","active":true,
   "network_addresses":[{"ip":"10.10.10.10","mac":"53:74:31:cb:37:50"}]},
 "cloud_ioc":{"description":"An attempt was made to delete the system event logs. This can be an indication of an attacker trying to cover their tracks.","short_description":"W32.ClearEventLogs.ioc"},
 "file":{"disposition":"Clean","file_name":"wevtutil.exe","file_path":"file:///C%3A/Windows/system32/wevtutil.exe",
   "identity":{"sha256":"b55e59f545cdb5866b538c46fc280e51b4955df6b3a76686a73e80333757f003"},
   "parent":{"disposition":"Unknown","identity":{"sha256":"c2dbf12866e445f3dc67287218596ce90fba4a925979e2cc472f520a6546d748"}}},
 "command_line":{"arguments":"C:\\Windows\\system32\\wevtutil.exe cl Application"},"tactics":["TA0005"],"techniques":["T1070"]}"#;

    /// A network (NFM) event: `network_info` with the remote and local ends and the
    /// `dirty_url`. Shape of the NFM event of Cisco's API documentation (device
    /// trajectory example), as the XSOAR Cisco AMP integration's tests record it; the
    /// DFC and botnet-connection event types carry the same member.
    pub const NFM_EVENT: &str = r#"{"id":6455442249407791101,"timestamp":1502989429,"timestamp_nanoseconds":659151942,
 "date":"2017-08-17T17:03:49+00:00","event_type":"DFC Threat Detected","event_type_id":1090519084,"severity":"High",
 "connector_guid":"ad29d359-dac9-4940-9c7e-c50e6d32ee6f","group_guids":["b077d6bc-bbdf-42f7-8838-a06053fbd98a"],
 "computer":{"connector_guid":"ad29d359-dac9-4940-9c7e-c50e6d32ee6f","hostname":"Demo_CozyDuke","external_ip":"93.111.140.204","active":true,
   "network_addresses":[{"mac":"09:de:6b:a8:74:10","ip":"87.27.44.37"}]},
 "network_info":{"dirty_url":"http://www.sanjosemaristas.com/app/index.php?","remote_ip":"188.120.225.17",
   "remote_port":80,"local_ip":"192.168.1.3","local_port":54233,
   "nfm":{"direction":"Outgoing connection from","protocol":"TCP"},
   "parent":{"disposition":"Clean","identity":{"sha256":"5ad3c37e6f2b9db3ee8b5aeedc474645de90c66e3d95f8620c48102f1eba4124"}}}}"#;

    /// Placeholders and masked values: the user "Not Available" (Elastic's recorded page
    /// `test-cisco-amp9.log`, elastic/integrations @ a1fdfb6f), a masked external
    /// address, an empty IP, a malformed MAC and an address that is no address.
    pub const PLACEHOLDER_EVENT: &str = r#"{"id":6419204901661835278,"timestamp":1610629577,"timestamp_nanoseconds":443000000,
 "date":"2021-01-14T13:06:17+00:00","event_type":"Threat Detected","event_type_id":1090519054,
 "detection":"W32.File.MalParent","detection_id":"6419204901661835278","connector_guid":"c0ffee00-0000-4000-8000-000000000009",
 "severity":"Medium",
 "computer":{"connector_guid":"c0ffee00-0000-4000-8000-000000000009","hostname":"Demo_WannaCry_Ransomware","external_ip":"xxx.xxx.xxx.xxx",
   "user":"Not Available","active":true,
   "network_addresses":[{"ip":"","mac":"XX:XX:XX:XX:XX:XX"},{"ip":"10.0.0.300","mac":"53:74:31:cb:37"}]},
 "file":{"disposition":"Malicious","file_name":"tasksche.exe","file_path":"\\\\?\\C:\\ProgramData\\qzkbplcgew884\\tasksche.exe",
   "identity":{"sha256":"ed01ebfbc9eb5bbea545af4d01bf5f1071661840480439c6e5babe8e080e41aa","md5":"N/A"}}}"#;

    #[test]
    fn parses_cloud_ioc_network_and_placeholder_shapes() {
        let ioc = parse_event(&serde_json::from_str(CLOUD_IOC_EVENT).unwrap()).unwrap();
        assert_eq!(ioc.detection, None);
        let c = ioc.cloud_ioc.as_ref().unwrap();
        assert_eq!(c.name.as_deref(), Some("W32.ClearEventLogs.ioc"));
        assert!(c.description.as_deref().unwrap().starts_with("An attempt"));
        assert_eq!(
            ioc.command_line.as_deref(),
            Some("C:\\Windows\\system32\\wevtutil.exe cl Application")
        );
        assert_eq!(ioc.timestamp_nanos, 527_000_000);

        let nfm = parse_event(&serde_json::from_str(NFM_EVENT).unwrap()).unwrap();
        let n = nfm.network.as_ref().unwrap();
        assert_eq!(n.remote_ip.as_deref(), Some("188.120.225.17"));
        assert_eq!(n.remote_port, Some(80));
        assert_eq!(n.protocol.as_deref(), Some("TCP"));
        assert_eq!(
            n.summary(),
            "TCP, Outgoing connection from 192.168.1.3:54233 to 188.120.225.17:80"
        );

        let p = parse_event(&serde_json::from_str(PLACEHOLDER_EVENT).unwrap()).unwrap();
        let c = p.computer.as_ref().unwrap();
        assert_eq!(c.user, None);
        assert_eq!(c.ips, vec!["10.0.0.300"]);
        assert_eq!(c.macs, vec!["53:74:31:cb:37"]);
        assert_eq!(p.file.as_ref().unwrap().md5, None);
    }

    #[test]
    fn placeholders_are_recognised_and_data_is_not() {
        for p in [
            "Not Available",
            " n/a ",
            "Unknown",
            "-",
            "",
            "null",
            "xxx.xxx.xxx.xxx",
            "****",
            "XX:XX:XX:XX:XX:XX",
            "x@x",
        ] {
            assert!(is_placeholder(p), "{p}");
        }
        for d in [
            "alice@ACME",
            "10.0.0.1",
            "Demo_Upatre",
            "xavier",
            "0x1f",
            "a-b",
        ] {
            assert!(!is_placeholder(d), "{d}");
        }
    }

    #[test]
    fn observables_get_the_type_their_value_is() {
        use ObservableKind as K;
        let ok = |k, v| observable(k, v).unwrap();
        assert_eq!(ok(K::Ip, "10.0.0.1"), ("ip", "10.0.0.1".into()));
        assert_eq!(ok(K::Ip, "2001:DB8::1"), ("ipv6", "2001:db8::1".into()));
        assert_eq!(
            ok(K::MacAddress, "AA-bb-CC-dd-EE-ff"),
            ("mac_address", "aa:bb:cc:dd:ee:ff".into())
        );
        assert_eq!(
            ok(K::Domain, "Evil.Example."),
            ("domain", "evil.example".into())
        );
        assert_eq!(ok(K::Sha1, &"AB".repeat(20)), ("sha1", "ab".repeat(20)));
        assert_eq!(
            url_host("https://user@[2001:db8::1]:8443/x").as_deref(),
            Some("2001:db8::1")
        );
        for (k, v) in [
            (K::Ip, "xxx.xxx.xxx.xxx"),
            (K::Ip, "10.0.0.300"),
            (K::Ip, ""),
            (K::MacAddress, "AA:BB"),
            (K::Url, "not a url"),
            (K::Domain, "10.0.0.1"),
            (K::Md5, "N/A"),
            (K::Sha256, "short"),
            (K::Hostname, "two words"),
            (K::User, "Not Available"),
            (K::AmpComputerGuid, "a guid?"),
        ] {
            assert!(observable(k, v).is_err(), "{k:?} {v:?}");
        }
    }

    #[test]
    fn events_of_one_second_are_ordered_by_nanoseconds_not_id() {
        let mk = |id: u64, nanos: u32| {
            let mut e = parse_event(&serde_json::from_str(REAL_EVENT).unwrap()).unwrap();
            e.id = id;
            e.timestamp_nanos = nanos;
            e
        };
        let mut events = vec![mk(1, 900_000_000), mk(2, 100_000_000), mk(3, 100_000_000)];
        chronological(&mut events);
        assert_eq!(events.iter().map(|e| e.id).collect::<Vec<_>>(), [2, 3, 1]);
    }

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
