//! Secure Endpoint events: the wire shape, the filters of `GET /v1/events`, and a seeded
//! generator of realistic, messy events.

use rand::Rng;
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::catalog::event_type_name;
use crate::clock::amp_date;
use crate::random_hex;

/// One Secure Endpoint event. `id` is a u64 above 2^53 and serializes as an exact JSON
/// integer. Members the simulator does not model stay in `extra`, untouched.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub id: u64,
    pub timestamp: i64,
    #[serde(default)]
    pub timestamp_nanoseconds: u32,
    pub date: String,
    pub event_type: String,
    pub event_type_id: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detection: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detection_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connector_guid: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub group_guids: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub severity: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub computer: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<Value>,
    /// Every other member (`scan`, `isolation`, `error`, `tactics`, unknown ones...).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Event {
    /// A bare event of a known or unknown type at `timestamp` (unix seconds).
    pub fn new(id: u64, event_type_id: u64, timestamp: i64) -> Event {
        Event {
            id,
            timestamp,
            timestamp_nanoseconds: 0,
            date: amp_date(timestamp),
            event_type: event_type_name(event_type_id)
                .unwrap_or("Unknown Event")
                .to_string(),
            event_type_id,
            detection: None,
            detection_id: None,
            connector_guid: None,
            group_guids: Vec::new(),
            severity: None,
            computer: None,
            file: None,
            extra: Map::new(),
        }
    }

    fn file_sha256(&self) -> Option<&str> {
        self.file.as_ref()?.pointer("/identity/sha256")?.as_str()
    }

    fn parent_sha256(&self) -> Option<&str> {
        self.file
            .as_ref()?
            .pointer("/parent/identity/sha256")?
            .as_str()
    }

    /// `detection_sha256` filter: the detected file of a detection event.
    pub(crate) fn matches_detection_sha256(&self, sha: &str) -> bool {
        self.detection.is_some()
            && self
                .file_sha256()
                .is_some_and(|s| s.eq_ignore_ascii_case(sha))
    }

    /// `application_sha256` filter: the file or the process that handled it.
    pub(crate) fn matches_application_sha256(&self, sha: &str) -> bool {
        [self.file_sha256(), self.parent_sha256()]
            .into_iter()
            .flatten()
            .any(|s| s.eq_ignore_ascii_case(sha))
    }

    /// Sort key, newest first: later timestamps first, then later insertion.
    pub(crate) fn age_key(&self) -> (i64, u32) {
        (self.timestamp, self.timestamp_nanoseconds)
    }
}

/// A computer as events see it.
#[derive(Clone, Debug)]
pub(crate) struct Host {
    pub guid: String,
    pub hostname: String,
    pub group_guid: String,
    pub external_ip: String,
    pub internal_ip: String,
    pub mac: String,
    pub user: String,
}

const THREAT_DETECTED: u64 = 1_090_519_054;
const THREAT_QUARANTINED: u64 = 553_648_143;
const QUARANTINE_FAILURE: u64 = 2_164_260_880;

const BEHAVIOURAL: &[u64] = &[
    1_107_296_257,
    1_107_296_261,
    1_107_296_262,
    1_107_296_267,
    1_107_296_272,
    1_107_296_273,
    1_107_296_274,
    1_107_296_277,
    1_107_296_278,
    1_107_296_283,
    1_107_296_284,
    1_090_519_081,
    1_090_519_105,
    1_090_519_084,
    1_091_567_670,
    2_164_260_893,
    2_164_260_931,
];

const ROUTINE: &[u64] = &[
    553_648_130,
    553_648_135,
    553_648_136,
    553_648_170,
    553_648_171,
    553_648_196,
    1_107_296_279,
    570_425_396,
];

const CONSOLE_ONLY: &[u64] = &[1003, 1004, 1005];

const DETECTIONS: &[&str] = &[
    "W32.GenericKD:ZVETJ.18gs.1201",
    "W32.Auto:b630e7.in03.Talos",
    "Win.Ransomware.Ryuk::95.sbx.tg",
    "W32.Emotet:Trojan.22k2.1201",
    "Doc.Dropper.Agent::tpd",
    "JS.Downloader.Nemucod::in10.talos",
];

const FILE_NAMES: &[&str] = &[
    "wsymqyv90.exe",
    "invoice_0423.docm",
    "setup-helper.exe",
    "payload.dll",
    "update.js",
    "svch0st.exe",
];

const PARENTS: &[&str] = &[
    "iexplore.exe",
    "explorer.exe",
    "outlook.exe",
    "WINWORD.EXE",
    "chrome.exe",
];

/// Random casing, as MACs arrive from real connectors.
fn mixed_case(rng: &mut StdRng, s: &str) -> String {
    s.chars()
        .map(|c| {
            if rng.random_bool(0.5) {
                c.to_ascii_uppercase()
            } else {
                c
            }
        })
        .collect()
}

fn computer_json(rng: &mut StdRng, host: &Host, base_url: &str) -> Value {
    let hostname = match rng.random_range(0..8) {
        0 => format!("  {}  ", host.hostname),
        1 => format!("{} ", host.hostname),
        _ => host.hostname.clone(),
    };
    let ip = if rng.random_bool(0.15) {
        String::new()
    } else {
        host.internal_ip.clone()
    };
    json!({
        "connector_guid": host.guid,
        "hostname": hostname,
        "external_ip": host.external_ip,
        "user": host.user,
        "active": true,
        "network_addresses": [{"ip": ip, "mac": mixed_case(rng, &host.mac)}],
        "links": {
            "computer": format!("{base_url}/v1/computers/{}", host.guid),
            "trajectory": format!("{base_url}/v1/computers/{}/trajectory", host.guid),
            "group": format!("{base_url}/v1/groups/{}", host.group_guid),
        }
    })
}

fn file_json(rng: &mut StdRng, host: &Host, malicious: bool) -> Value {
    let name = FILE_NAMES.choose(rng).copied().unwrap_or("file.exe");
    let parent = PARENTS.choose(rng).copied().unwrap_or("explorer.exe");
    let mut file = json!({
        "disposition": if malicious { "Malicious" } else { "Unknown" },
        "file_name": name,
        "file_path": format!("\\\\?\\C:\\Users\\{}\\Downloads\\{name}", host.user),
        "identity": {
            "sha256": random_hex(rng, 32),
            "sha1": random_hex(rng, 20),
            "md5": random_hex(rng, 16),
        },
        "parent": {
            "process_id": rng.random_range(300..9000),
            "disposition": "Clean",
            "file_name": parent,
            "identity": {"sha256": random_hex(rng, 32)},
        }
    });
    if rng.random_bool(0.5)
        && let Some(obj) = file.as_object_mut()
    {
        obj.insert("file_type".into(), json!("Executable"));
    }
    file
}

/// Cloud IOC events carry `cloud_ioc` and `command_line` instead of `detection`; network
/// events (DFC, suspected botnet connection, connection to a suspicious domain) carry
/// `network_info`. Shapes from Elastic's recorded Secure Endpoint pages
/// (elastic/integrations @ 36eb0d25,
/// `packages/cisco_secure_endpoint/data_stream/event/_dev/test/pipeline/test-cisco-amp8.log`)
/// and its field list (`fields/fields.yml` @ 24ee77b8: `cloud_ioc.*`,
/// `command_line.arguments`, `network_info.*`), and the NFM event of Cisco's API
/// documentation (device trajectory). Derived from the event id, so the generator's
/// random sequence (and every seeded test) is unchanged.
fn add_type_members(e: &mut Event) {
    const CLOUD_IOC: u64 = 1_107_296_274;
    const NETWORK: &[u64] = &[1_090_519_084, 1_107_296_273, 1_107_296_277];
    let pick = usize::try_from(e.id % 3).unwrap_or(0);
    if e.event_type_id == CLOUD_IOC {
        let (name, description, args) = CLOUD_IOCS[pick];
        e.detection = None;
        e.extra.insert(
            "cloud_ioc".into(),
            json!({"short_description": name, "description": description}),
        );
        e.extra
            .insert("command_line".into(), json!({ "arguments": args }));
    } else if NETWORK.contains(&e.event_type_id) {
        let (url, ip, port) = REMOTES[pick];
        let local_port = 49_152 + e.id % 16_000;
        let local_ip = e
            .computer
            .as_ref()
            .and_then(|c| c.pointer("/network_addresses/0/ip"))
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .unwrap_or("192.168.1.3")
            .to_string();
        e.extra.insert(
            "network_info".into(),
            json!({
                "dirty_url": url, "remote_ip": ip, "remote_port": port,
                "local_ip": local_ip, "local_port": local_port,
                "nfm": {"direction": "Outgoing connection from", "protocol": "TCP"},
            }),
        );
    }
}

/// (short_description, description, command line) of real Cloud IOC events
/// (test-cisco-amp8.log above).
const CLOUD_IOCS: [(&str, &str, &str); 3] = [
    (
        "W32.ClearEventLogs.ioc",
        "An attempt was made to delete the system event logs. This can be an indication of an attacker trying to cover their tracks.",
        "C:\\Windows\\system32\\wevtutil.exe cl Application",
    ),
    (
        "W32.PingPredicatedDel.ioc",
        "Ping command set towards localhost with a count argument, followed by the deletion or overwriting of a file, was detected in a command-line execution.",
        "C:\\Windows\\system32\\cmd.exe /C ping -n 2 127.0.0.1 && del C:\\Users\\Public\\a.exe",
    ),
    (
        "W32.WScriptLaunchTemp.ioc",
        "The windows scripting host (wscript.exe) was observed launching a script file from a temporary directory.",
        "C:\\Windows\\System32\\WScript.exe C:\\temp\\invoice.wsf",
    ),
];

/// (dirty_url, remote_ip, remote_port) of network events (documentation addresses, and
/// the NFM example of Cisco's API documentation).
const REMOTES: [(&str, &str, u16); 3] = [
    (
        "http://www.sanjosemaristas.com/app/index.php?",
        "188.120.225.17",
        80,
    ),
    ("https://cdn.bad.example/gate.php", "203.0.113.50", 443),
    ("http://198.51.100.23:8080/beacon", "198.51.100.23", 8080),
];

/// Published event shapes the simulator can emit on a computer (see [`sample`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sample {
    /// Threat Detected with file, hashes, parent, user (upstream-apis.md; Elastic's
    /// `test-cisco-amp2.log`).
    ThreatDetected,
    /// Cloud IOC: `cloud_ioc`, `command_line`, no `detection` (`test-cisco-amp8.log`).
    CloudIoc,
    /// DFC Threat Detected with `network_info` (remote/local ends, `dirty_url`, NFM
    /// direction and protocol).
    Network,
    /// Threat Detected whose user is "Not Available" (`test-cisco-amp9.log`), whose
    /// external address is masked (`xxx.xxx.xxx.xxx`) and whose second interface has an
    /// empty address and a masked MAC.
    Placeholders,
}

/// One event of a published shape on `host` at `t`, id `id`. Not pushed.
pub(crate) fn sample(kind: Sample, id: u64, t: i64, host: &Host, base_url: &str) -> Event {
    let ty = match kind {
        Sample::ThreatDetected | Sample::Placeholders => THREAT_DETECTED,
        Sample::CloudIoc => 1_107_296_274,
        Sample::Network => 1_090_519_084,
    };
    let mut e = Event::new(id, ty, t);
    e.connector_guid = Some(host.guid.clone());
    e.group_guids = vec![host.group_guid.clone()];
    e.severity = Some("High".into());
    let mut computer = json!({
        "connector_guid": host.guid,
        "hostname": host.hostname,
        "external_ip": host.external_ip,
        "user": host.user,
        "active": true,
        "network_addresses": [{"ip": host.internal_ip, "mac": host.mac}],
        "links": {
            "computer": format!("{base_url}/v1/computers/{}", host.guid),
            "trajectory": format!("{base_url}/v1/computers/{}/trajectory", host.guid),
            "group": format!("{base_url}/v1/groups/{}", host.group_guid),
        }
    });
    match kind {
        Sample::ThreatDetected | Sample::Placeholders => {
            e.detection = Some("W32.GenericKD:ZVETJ.18gs.1201".into());
            e.detection_id = Some(id.wrapping_sub(1).to_string());
            e.file = Some(json!({
                "disposition": "Malicious", "file_name": "wsymqyv90.exe",
                "file_path": "\\\\?\\C:\\Users\\Administrator\\AppData\\Local\\Temp\\wsymqyv90.exe",
                "identity": {"sha256": "b630e72639cc7340620adb0cfc26332ec52fe8867b769695f2d25718d68b1b40",
                             "sha1": "70aef829bec17195e6c8ec0e6cba0ed39f97ba48",
                             "md5": "e2f5dcd966e26d54329e8d79c7201652"},
                "parent": {"process_id": 4040, "disposition": "Clean", "file_name": "iexplore.exe",
                           "identity": {"sha256": "b4e5c2775de098946b4e11aba138b89d42b88c1dbd4d5ec879ef6919bf018132"}}
            }));
            e.extra.insert("tactics".into(), json!(["TA0042"]));
            e.extra.insert("techniques".into(), json!(["T1204.003"]));
            if kind == Sample::Placeholders {
                computer["user"] = json!("Not Available");
                computer["external_ip"] = json!("xxx.xxx.xxx.xxx");
                computer["network_addresses"] = json!([
                    {"ip": host.internal_ip, "mac": host.mac},
                    {"ip": "", "mac": "XX:XX:XX:XX:XX:XX"},
                ]);
            }
        }
        Sample::CloudIoc => {
            e.file = Some(json!({
                "disposition": "Clean", "file_name": "wevtutil.exe",
                "file_path": "file:///C%3A/Windows/system32/wevtutil.exe",
                "identity": {"sha256": "b55e59f545cdb5866b538c46fc280e51b4955df6b3a76686a73e80333757f003"},
                "parent": {"disposition": "Unknown",
                           "identity": {"sha256": "c2dbf12866e445f3dc67287218596ce90fba4a925979e2cc472f520a6546d748"}}
            }));
            e.extra.insert("start_timestamp".into(), json!(t - 1));
            e.extra.insert("tactics".into(), json!(["TA0005"]));
            e.extra.insert("techniques".into(), json!(["T1070"]));
        }
        Sample::Network => {}
    }
    e.computer = Some(computer);
    if matches!(kind, Sample::CloudIoc | Sample::Network) {
        // Pick the first variant: the documented IOC and the documented NFM remote.
        let saved = e.id;
        e.id = 0;
        add_type_members(&mut e);
        e.id = saved;
    }
    e
}

/// Generates events; ids are taken from `next_id` (strictly increasing with time).
pub(crate) struct Generator<'a> {
    pub rng: &'a mut StdRng,
    pub hosts: &'a [Host],
    pub base_url: &'a str,
    pub next_id: &'a mut u64,
}

impl Generator<'_> {
    fn event(&mut self, type_id: u64, t: i64, host: Option<&Host>) -> Event {
        *self.next_id += self.rng.random_range(1..5000);
        let mut event = Event::new(*self.next_id, type_id, t);
        event.timestamp_nanoseconds = self.rng.random_range(0..1000) * 1_000_000;
        if let Some(host) = host {
            event.connector_guid = Some(host.guid.clone());
            event.group_guids = vec![host.group_guid.clone()];
            event.computer = Some(computer_json(self.rng, host, self.base_url));
        }
        event
    }

    fn mess_up(&mut self, event: &mut Event) {
        match self.rng.random_range(0..10) {
            0 => {
                event.extra.insert(
                    "sim_unknown_member".into(),
                    json!({"nested": [1, "two", null], "flag": true}),
                );
            }
            1 => {
                event
                    .extra
                    .insert("bp_data".into(), json!({"ppid": 4040, "policy": "audit"}));
            }
            2 if event.severity.is_none() => {
                event.extra.insert("severity".into(), Value::Null);
            }
            _ => {}
        }
    }

    /// `n` events over the last few minutes before `now`, oldest first.
    pub fn run(&mut self, n: usize, now: i64) -> Vec<Event> {
        let mut events = Vec::with_capacity(n + 2);
        let span = i64::try_from(n).unwrap_or(i64::MAX / 64).saturating_mul(12);
        let mut t = now - span - 60;
        while events.len() < n {
            t += self.rng.random_range(1..=20);
            let host = self.hosts.choose(self.rng).cloned();
            let roll = self.rng.random_range(0..100);
            let mut batch = match (&host, roll) {
                (Some(host), 0..=34) => self.threat_chain(host, t),
                (Some(host), 35..=49) => {
                    let ty = BEHAVIOURAL
                        .choose(self.rng)
                        .copied()
                        .unwrap_or(THREAT_DETECTED);
                    let mut e = self.event(ty, t, Some(host));
                    e.severity = Some(["High", "Critical"][self.rng.random_range(0..2)].into());
                    e.file = Some(file_json(self.rng, host, true));
                    e.extra.insert("tactics".into(), json!(["TA0002"]));
                    e.extra.insert("techniques".into(), json!(["T1204.002"]));
                    add_type_members(&mut e);
                    vec![e]
                }
                (Some(host), 50..=64) => self.scan(host, t),
                (Some(host), 65..=79) => {
                    let ty = ROUTINE.choose(self.rng).copied().unwrap_or(553_648_130);
                    vec![self.event(ty, t, Some(host))]
                }
                (Some(host), 80..=87) => {
                    // A detection whose computer object is missing (connector_guid kept).
                    let mut e = self.event(THREAT_DETECTED, t, Some(host));
                    e.computer = None;
                    e.severity = Some("Medium".into());
                    e.detection = DETECTIONS.choose(self.rng).map(|d| d.to_string());
                    e.detection_id = Some(self.next_id.wrapping_sub(7).to_string());
                    e.file = Some(file_json(self.rng, host, true));
                    vec![e]
                }
                (Some(host), 88..=92) => {
                    let mut e = self.event(553_648_202, t, Some(host));
                    e.extra.insert(
                        "isolation".into(),
                        json!({"duration": self.rng.random_range(30..900)}),
                    );
                    vec![e]
                }
                _ => {
                    let ty = CONSOLE_ONLY.choose(self.rng).copied().unwrap_or(1003);
                    vec![self.event(ty, t, None)]
                }
            };
            for event in &mut batch {
                self.mess_up(event);
            }
            t = batch.last().map_or(t, |e| e.timestamp);
            events.extend(batch);
        }
        events.truncate(n);
        for event in &mut events {
            if event.timestamp > now {
                event.timestamp = now;
                event.date = amp_date(now);
            }
        }
        events
    }

    /// Threat Detected, then Threat Quarantined or Quarantine Failure (or nothing), sharing
    /// `detection_id`, computer and file.
    fn threat_chain(&mut self, host: &Host, t: i64) -> Vec<Event> {
        let mut detected = self.event(THREAT_DETECTED, t, Some(host));
        detected.detection = DETECTIONS.choose(self.rng).map(|d| d.to_string());
        detected.detection_id = Some(
            detected
                .id
                .wrapping_sub(self.rng.random_range(100..900))
                .to_string(),
        );
        detected.severity =
            Some(["Medium", "High", "Critical", "Low"][self.rng.random_range(0..4)].into());
        detected.file = Some(file_json(self.rng, host, true));
        detected.extra.insert("tactics".into(), json!(["TA0042"]));
        detected
            .extra
            .insert("techniques".into(), json!(["T1204.003"]));
        let follow_up = match self.rng.random_range(0..100) {
            0..=59 => Some(THREAT_QUARANTINED),
            60..=84 => Some(QUARANTINE_FAILURE),
            _ => None,
        };
        let mut chain = vec![detected.clone()];
        if let Some(ty) = follow_up {
            let later = t + self.rng.random_range(1..4);
            let mut next = self.event(ty, later, Some(host));
            next.detection = detected.detection.clone();
            next.detection_id = detected.detection_id.clone();
            next.severity = detected.severity.clone();
            next.file = detected.file.clone();
            if ty == QUARANTINE_FAILURE {
                next.extra.insert(
                    "error".into(),
                    json!({"error_code": 2_164_260_880u64, "description": "Quarantine failed: file in use"}),
                );
            }
            chain.push(next);
        }
        chain
    }

    fn scan(&mut self, host: &Host, t: i64) -> Vec<Event> {
        let mut started = self.event(554_696_714, t, Some(host));
        started.extra.insert(
            "scan".into(),
            json!({"description": "Flash Scan", "clean": true}),
        );
        let later = t + self.rng.random_range(1..4);
        let mut done = self.event(554_696_715, later, Some(host));
        done.extra.insert(
            "scan".into(),
            json!({"description": "Flash Scan", "clean": true, "scanned_files": self.rng.random_range(100..9000), "scanned_processes": 40, "scanned_paths": 12, "malicious_detections": 0}),
        );
        vec![started, done]
    }
}
