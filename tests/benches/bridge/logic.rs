//! The input of the wasm-overhead figure: one full page of Secure Endpoint events
//! and the configuration of the customer it belongs to. The work itself is the
//! guest's `bench::process_page`, run natively and inside the component
//! (`POST /v1/bench/pipeline`).

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

/// The configuration of the customer (default filter), as tenant config pairs.
pub const CONFIG: [(&str, &str); 13] = [
    ("customer_name", "Acme"),
    ("amp_base_url", "https://api.amp.cisco.com"),
    ("amp_client_id", "acme-amp-client"),
    ("amp_api_key", "amp-key"),
    ("xdr_auth_url", "https://visibility.amp.cisco.com"),
    ("xdr_api_url", "https://private.intel.amp.cisco.com"),
    ("xdr_client_id", "acme-xdr-client"),
    ("xdr_client_secret", "xdr-secret"),
    ("snow_base_url", "https://acme.service-now.com"),
    ("snow_user", "bridge"),
    ("snow_password", "snow-password"),
    ("callback_key", "Y2FsbGJhY2sta2V5LW9mLWFjbWU="),
    ("tick_token", TICK_TOKEN),
];

pub const TICK_TOKEN: &str = "bench-tick-token";

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
