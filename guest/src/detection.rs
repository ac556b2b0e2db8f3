//! Which events matter, and which of them belong to one incident.

use sha2::{Digest, Sha256};

use crate::config::Config;
use crate::event::Event;
use crate::severity::Severity;

/// Keeps the configured event types and severities. An empty severity list keeps
/// everything, events without a severity included; a non-empty list drops them.
pub fn is_wanted(cfg: &Config, e: &Event) -> bool {
    cfg.event_types.contains(&e.event_type_id)
        && (cfg.severities.is_empty() || e.severity.is_some_and(|s| cfg.severities.contains(&s)))
}

/// Keeps `[A-Za-z0-9_-]`; anything longer than 64 characters or emptied by the filter is
/// replaced by a hash, so the key stays usable in URLs and store keys.
fn key_part(raw: &str) -> String {
    let clean: String = raw
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .collect();
    if clean.is_empty() || clean.len() > 64 || clean.len() != raw.len() {
        let digest = Sha256::digest(raw.as_bytes());
        return digest[..12].iter().map(|b| format!("{b:02x}")).collect();
    }
    clean
}

/// The stable incident key: `amp-<customer tag>-d<detection_id>` for a detection,
/// `amp-<customer tag>-e<event id>` for a lone event. The customer tag is derived from
/// the Secure Endpoint API client id, so two customers never share a key in the MSSP's
/// one XDR and ServiceNow.
pub fn incident_key(cfg: &Config, e: &Event) -> String {
    let tag = mssp_contract::incident::customer_tag(&cfg.amp_client_id);
    match &e.detection_id {
        Some(d) => format!("amp-{tag}-d{}", key_part(d)),
        None => format!("amp-{tag}-e{}", e.id),
    }
}

/// Events of one detection (or one lone event), oldest first.
#[derive(Debug, Clone, PartialEq)]
pub struct DetectionGroup {
    pub key: String,
    pub events: Vec<Event>,
}

impl DetectionGroup {
    /// The highest severity of its events.
    pub fn severity(&self) -> Option<Severity> {
        self.events.iter().filter_map(|e| e.severity).max()
    }
}

/// Groups events (given oldest first) by incident key, in order of first appearance.
pub fn group(cfg: &Config, events: Vec<Event>) -> Vec<DetectionGroup> {
    let mut groups: Vec<DetectionGroup> = Vec::new();
    for e in events {
        let key = incident_key(cfg, &e);
        match groups.iter_mut().find(|g| g.key == key) {
            Some(g) => g.events.push(e),
            None => groups.push(DetectionGroup {
                key,
                events: vec![e],
            }),
        }
    }
    groups
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::event::{Computer, FileInfo};
    use crate::testkit::{base_map, config_from};

    pub fn event(id: u64, ts: i64, type_id: u64, detection: Option<&str>) -> Event {
        Event {
            id,
            timestamp: ts,
            timestamp_nanos: 0,
            event_type_id: type_id,
            event_type: match type_id {
                1_090_519_054 => "Threat Detected".into(),
                2_164_260_880 => "Quarantine Failure".into(),
                553_648_143 => "Threat Quarantined".into(),
                _ => "Other".into(),
            },
            detection: Some("W32.Test.Detection".into()),
            detection_id: detection.map(String::from),
            connector_guid: Some("aaaaaaaa-0000-4000-8000-000000000001".into()),
            severity: Some(Severity::High),
            computer: Some(Computer {
                hostname: Some("host-1".into()),
                user: Some("alice@ACME".into()),
                ips: vec!["10.0.0.5".into()],
                macs: Vec::new(),
            }),
            file: Some(FileInfo {
                name: Some("evil.exe".into()),
                path: Some("C:\\Users\\alice\\evil.exe".into()),
                sha256: Some("ab".repeat(32)),
                disposition: Some("Malicious".into()),
                ..FileInfo::default()
            }),
            tactics: vec!["TA0002".into()],
            techniques: vec!["T1204".into()],
            cloud_ioc: None,
            command_line: None,
            network: None,
        }
    }

    #[test]
    fn filters_types_and_severities() {
        let mut map = base_map();
        let cfg = config_from(&map).unwrap();
        assert!(is_wanted(&cfg, &event(1, 1, 1_090_519_054, None)));
        assert!(!is_wanted(&cfg, &event(1, 1, 553_648_143, None)));
        map.insert("severities".into(), "Critical".into());
        let cfg = config_from(&map).unwrap();
        let mut e = event(1, 1, 1_090_519_054, None);
        assert!(!is_wanted(&cfg, &e));
        e.severity = Some(Severity::Critical);
        assert!(is_wanted(&cfg, &e));
        e.severity = None;
        assert!(!is_wanted(&cfg, &e));
    }

    #[test]
    fn keys_are_stable_and_url_safe() {
        let cfg = config_from(&base_map()).unwrap();
        let a = incident_key(&cfg, &event(1, 1, 1, Some("6180352115244793858")));
        let b = incident_key(&cfg, &event(2, 9, 2, Some("6180352115244793858")));
        assert_eq!(a, b);
        assert!(
            a.starts_with("amp-") && a.ends_with("-d6180352115244793858"),
            "{a}"
        );
        let lone = incident_key(&cfg, &event(6_533_241_145_273_614_339, 1, 1, None));
        assert!(lone.ends_with("-e6533241145273614339"));
        let odd = incident_key(&cfg, &event(1, 1, 1, Some("a/b c?")));
        assert!(
            odd.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'),
            "{odd}"
        );
        let mut other = base_map();
        other.insert("amp_client_id".into(), "someone-else".into());
        let other = config_from(&other).unwrap();
        assert_ne!(
            incident_key(&other, &event(1, 1, 1, Some("6180352115244793858"))),
            a
        );
    }

    #[test]
    fn groups_by_detection_and_keeps_lone_events_apart() {
        let cfg = config_from(&base_map()).unwrap();
        let groups = group(
            &cfg,
            vec![
                event(1, 10, 1_090_519_054, Some("d1")),
                event(2, 11, 1_090_519_054, None),
                event(3, 12, 553_648_143, Some("d1")),
                event(4, 13, 1_090_519_054, None),
                event(5, 14, 2_164_260_880, Some("d1")),
            ],
        );
        assert_eq!(groups.len(), 3);
        assert_eq!(
            groups[0].events.iter().map(|e| e.id).collect::<Vec<_>>(),
            vec![1, 3, 5]
        );
        assert_eq!(groups[1].events[0].id, 2);
        assert_eq!(groups[2].events[0].id, 4);
    }
}
