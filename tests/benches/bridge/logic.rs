//! The guest's pure logic on one page of Secure Endpoint events — parse, filter,
//! group, build the XDR and ServiceNow bodies, serialise the incident records —
//! shared word for word by the native benchmark (`bridge.rs`) and the
//! `mssp-bench-logic` component, so the two run the same code on the same input.
//! `crate::guest` is the `mssp-guest` crate natively, and the same source files
//! compiled into the component (see `logic-guest/lib.rs`).

use crate::guest::config::Config;
use crate::guest::detection::{group, is_wanted};
use crate::guest::event::{Event, page_from_value};
use crate::guest::incident::IncidentRecord;
use crate::guest::payload::{EventTypeNames, first_work_note, snow_incident, xdr_incident};
use serde_json::{Value, json};

/// Events per page (the Secure Endpoint page size the guest asks for).
pub const PAGE: usize = 500;
const NOW: i64 = 1_700_000_000;
/// Event types of the page: three high-priority ones and one the default filter drops.
const TYPES: [(u64, &str); 4] = [
    (1_090_519_054, "Threat Detected"),
    (2_164_260_880, "Quarantine Failure"),
    (553_648_143, "Threat Quarantined"),
    (1_107_296_272, "Scan Completed, No Detections"),
];

/// The configuration of a customer with the default filter.
pub fn config() -> Result<Config, String> {
    let get = |k: &str| -> Option<String> {
        let v = match k {
            "customer_name" => "Acme",
            "amp_base_url" => "https://api.amp.cisco.com",
            "amp_client_id" => "acme-amp-client",
            "amp_api_key" => "amp-key",
            "xdr_auth_url" => "https://visibility.amp.cisco.com",
            "xdr_api_url" => "https://private.intel.amp.cisco.com",
            "xdr_client_id" => "acme-xdr-client",
            "xdr_client_secret" => "xdr-secret",
            "snow_base_url" => "https://acme.service-now.com",
            "snow_user" => "bridge",
            "snow_password" => "snow-password",
            "callback_key" => "Y2FsbGJhY2sta2V5LW9mLWFjbWU=",
            _ => return None,
        };
        Some(v.to_string())
    };
    Config::from_getter(&get).map_err(|e| format!("{:?}", e.0))
}

pub fn type_names() -> EventTypeNames {
    TYPES.iter().map(|(id, n)| (*id, n.to_string())).collect()
}

/// One full page of `PAGE` events, newest first: 100 detections of 3–4 events on 40
/// hosts, a quarter of the events of a type the default filter drops.
pub fn page_body() -> Vec<u8> {
    let data: Vec<Value> = (0..PAGE)
        .map(|i| {
            let ts = NOW - i as i64;
            let (type_id, type_name) = TYPES[i % TYPES.len()];
            let host = format!("WS-{:03}", i % 40);
            let guid = format!("8f0c{:04}-5e1b-4c1d-9a2f-0123456789ab", i % 40);
            let severity = ["Low", "Medium", "High", "Critical"][i % 4];
            json!({
                "id": 6_533_241_145_273_614_339u64 + (PAGE - i) as u64,
                "timestamp": ts, "timestamp_nanoseconds": 0,
                "date": format!("2023-11-14T22:{:02}:{:02}+00:00", (i / 60) % 60, i % 60),
                "event_type": type_name, "event_type_id": type_id,
                "detection": "W32.GenericKD.64", "detection_id": format!("{}", 7_000_000 + i % 100),
                "connector_guid": guid, "severity": severity,
                "computer": {"connector_guid": guid, "hostname": host, "external_ip": "203.0.113.7",
                             "active": true, "user": "alice@ACME",
                             "network_addresses": [{"ip": format!("10.0.{}.{}", i % 40, i % 250), "mac": "aa:bb:cc:dd:ee:ff"}],
                             "links": {"computer": "https://api.amp.cisco.com/v1/computers/x",
                                       "trajectory": "https://api.amp.cisco.com/v1/computers/x/trajectory"}},
                "file": {"disposition": "Malicious", "file_name": format!("invoice-{i}.exe"),
                         "file_path": format!("C:\\Users\\alice\\Downloads\\invoice-{i}.exe"),
                         "identity": {"sha256": format!("{:064x}", i * 7919)},
                         "parent": {"process_id": 4312, "disposition": "Clean", "file_name": "explorer.exe",
                                    "identity": {"sha256": "ab".repeat(32)}}},
                "tactics": ["TA0002"], "techniques": ["T1204"],
            })
        })
        .collect();
    let page = json!({
        "version": "v1.2.0",
        "metadata": {"links": {"self": "https://api.amp.cisco.com/v1/events?limit=500"},
                     "results": {"total": PAGE, "current_item_count": PAGE, "index": 0, "items_per_page": PAGE}},
        "data": data,
    });
    serde_json::to_vec(&page).unwrap_or_default()
}

/// The work of one full page: returns the bytes of every body built, so nothing is
/// optimised away and both sides can check they did the same work.
pub fn run(cfg: &Config, names: &EventTypeNames, body: &[u8]) -> Result<usize, String> {
    let v: Value = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    let page = page_from_value(&v)?;
    let mut wanted: Vec<Event> = page
        .events
        .into_iter()
        .filter(|e| is_wanted(cfg, e))
        .collect();
    wanted.reverse();
    let now_ms = NOW * 1000;
    let mut bytes = 0;
    for g in group(cfg, wanted) {
        let mut rec = IncidentRecord::new(&g.key, now_ms);
        rec.add_events(&g.events, now_ms);
        let xdr = xdr_incident(cfg, &rec, names);
        let note = first_work_note(&rec);
        let snow = snow_incident(cfg, &rec, names, &note);
        bytes += serde_json::to_vec(&xdr).map_err(|e| e.to_string())?.len();
        bytes += serde_json::to_vec(&snow).map_err(|e| e.to_string())?.len();
        bytes += serde_json::to_vec(&rec).map_err(|e| e.to_string())?.len();
    }
    Ok(bytes)
}
