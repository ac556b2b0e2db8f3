//! What the component shows of its incidents, for every host that reads its routes:
//! the [`State`] names, one list item ([`IncidentSummary`], the items of
//! `GET /v1/incidents`, in [`IncidentList`]) and the deep links into the three
//! consoles ([`links`]).

use serde::{Deserialize, Serialize};

/// Persisted states, in order. `*_creating` states are written *before* the upstream
/// create is sent: resuming in one of them means "look up before creating again".
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Events taken in; nothing sent upstream yet.
    New,
    XdrCreating,
    XdrCreated,
    /// Containment in progress (sub-steps in `ContainmentRecord`).
    Containing,
    Contained,
    SnowCreating,
    /// XDR and ServiceNow incidents exist and are linked; waiting for ServiceNow to close.
    Open,
    /// ServiceNow closed it; reverting containment and closing XDR (sub-steps in `CloseRecord`).
    Closing,
    Closed,
}

impl State {
    /// Every state, in order.
    pub const ALL: [State; 9] = [
        State::New,
        State::XdrCreating,
        State::XdrCreated,
        State::Containing,
        State::Contained,
        State::SnowCreating,
        State::Open,
        State::Closing,
        State::Closed,
    ];

    /// The state's name, as serialized (`snake_case`).
    pub fn as_str(self) -> &'static str {
        match self {
            State::New => "new",
            State::XdrCreating => "xdr_creating",
            State::XdrCreated => "xdr_created",
            State::Containing => "containing",
            State::Contained => "contained",
            State::SnowCreating => "snow_creating",
            State::Open => "open",
            State::Closing => "closing",
            State::Closed => "closed",
        }
    }
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One incident in `GET /v1/incidents` (newest first). Times are ISO 8601 UTC with
/// milliseconds; `None` fields are `null` in JSON (not yet known or not created).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IncidentSummary {
    /// The incident key (`amp-…`), also the XDR external id.
    pub key: String,
    pub state: State,
    /// The Secure Endpoint detection id of the group's first event, when it has one.
    pub detection_id: Option<String>,
    /// The host name of the first event that names one.
    pub host: Option<String>,
    /// Events grouped into the incident.
    pub events: usize,
    /// The XDR incident's short id.
    pub xdr_id: Option<String>,
    /// The XDR incident's full id, a URL.
    pub xdr_url: Option<String>,
    pub snow_sys_id: Option<String>,
    pub snow_number: Option<String>,
    pub created_at: String,
    pub updated_at: String,
    pub last_error: Option<String>,
}

/// The body of `GET /v1/incidents[?state=…][&limit=N]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IncidentList {
    /// Items in this answer (at most `limit`, 500 by default).
    pub count: usize,
    /// Incidents that match, in all.
    pub total: usize,
    pub incidents: Vec<IncidentSummary>,
    /// Records that could not be read (their error), left out of the list.
    #[serde(default)]
    pub unreadable: Vec<String>,
}

/// Deep links into the consoles, built alike by the component (in the incidents it
/// writes) and by hosts (status page, CLI). Every value put into a path is
/// percent-encoded.
/// The customer tag in every incident key of a tenant (`amp-<tag>-d<detection>`, also
/// the XDR external id and the ServiceNow `correlation_id`): the first 4 bytes of the
/// sha-256 of its Secure Endpoint API client id, as 8 lower-case hex digits. Two
/// customers never share keys in the MSSP's one XDR and ServiceNow; ServiceNow's business
/// rule finds the tenant of an incident by it (`x_mssp.bridge_tenant_tags`).
pub fn customer_tag(amp_client_id: &str) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(amp_client_id.as_bytes())[..4]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

pub mod links {
    use crate::percent_encode;

    /// The console `amp_console_url` defaults to.
    pub fn default_amp_console() -> &'static str {
        match crate::config_key("amp_console_url").map(|k| k.presence) {
            Some(crate::Presence::Optional(default)) if !default.is_empty() => default,
            _ => "https://console.amp.cisco.com",
        }
    }

    /// `<console>/computers/<guid>`: the computer in the Secure Endpoint console.
    pub fn amp_computer(console: &str, connector_guid: &str) -> String {
        format!(
            "{}/computers/{}",
            console.trim_end_matches('/'),
            percent_encode(connector_guid)
        )
    }

    /// `<console>/computers/<guid>/trajectory2`: the computer's device trajectory.
    pub fn amp_trajectory(console: &str, connector_guid: &str) -> String {
        format!("{}/trajectory2", amp_computer(console, connector_guid))
    }

    /// The ServiceNow ticket in the instance's UI
    /// (`<instance>/nav_to.do?uri=incident.do?sys_id=<sys_id>`).
    pub fn snow_ticket(instance: &str, sys_id: &str) -> String {
        format!(
            "{}/nav_to.do?uri=incident.do?sys_id={}",
            instance.trim_end_matches('/'),
            percent_encode(sys_id)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_encode_what_they_put_in_a_path() {
        assert_eq!(
            links::amp_trajectory("https://console.amp.cisco.com/", "c-1"),
            "https://console.amp.cisco.com/computers/c-1/trajectory2"
        );
        assert_eq!(
            links::snow_ticket("https://x.service-now.com", "a/b"),
            "https://x.service-now.com/nav_to.do?uri=incident.do?sys_id=a%2Fb"
        );
        assert_eq!(
            links::default_amp_console(),
            "https://console.amp.cisco.com"
        );
    }

    #[test]
    fn a_summary_reads_back_as_written() {
        let s = IncidentSummary {
            key: "amp-1-d2".into(),
            state: State::SnowCreating,
            detection_id: Some("d2".into()),
            host: None,
            events: 2,
            xdr_id: None,
            xdr_url: None,
            snow_sys_id: None,
            snow_number: None,
            created_at: "2026-11-30T00:00:00.000Z".into(),
            updated_at: "2026-11-30T00:00:01.000Z".into(),
            last_error: None,
        };
        let json = serde_json::to_value(&s).expect("serializes");
        assert_eq!(json["state"], "snow_creating");
        assert!(json["host"].is_null());
        assert_eq!(
            serde_json::from_value::<IncidentSummary>(json).ok(),
            Some(s)
        );
    }
}
