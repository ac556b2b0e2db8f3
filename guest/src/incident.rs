//! The incident record: one per detection group, persisted at every state, with its
//! audit trail. Pure data and transitions; the upstream calls live in `lifecycle`.

use mssp_contract::civil;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::event::Event;
use crate::severity::Severity;

pub use mssp_contract::incident::State;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub time: String,
    pub step: String,
    pub outcome: String,
    /// How many times in a row this same step had this same outcome.
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub repeated: u32,
}

fn one() -> u32 {
    1
}

fn is_one(n: &u32) -> bool {
    *n == 1
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct XdrRef {
    /// The full entity id URL returned by CTIA.
    pub id: String,
    /// Its last path segment (`incident-<uuid>`), used in later calls.
    pub short_id: String,
}

impl XdrRef {
    pub fn from_entity_id(id: &str) -> XdrRef {
        let short = id.trim_end_matches('/').rsplit('/').next().unwrap_or(id);
        XdrRef {
            id: id.to_string(),
            short_id: short.to_string(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnowRef {
    pub sys_id: String,
    #[serde(default)]
    pub number: String,
}

/// Containment of the host, step by step, so that a resume repeats nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainmentRecord {
    /// `move` or `isolate`.
    pub policy: String,
    pub connector_guid: String,
    /// The host's group before the bridge touched it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original_group_guid: Option<String>,
    /// Generated and stored before the isolation request is sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unlock_code: Option<String>,
    /// The move/isolate request may have been sent (look before sending again).
    #[serde(default)]
    pub action_sent: bool,
    /// The bridge moved the host into the triage group.
    #[serde(default)]
    pub moved: bool,
    /// The bridge isolated the host (so it must stop the isolation on close).
    #[serde(default)]
    pub isolated: bool,
    /// The triage group the bridge moved the host into: on close the host is moved back
    /// only while it is still there (absent in records written before this field).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub triage_group_guid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
}

/// The close-back, step by step.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CloseRecord {
    /// `callback` or `reconcile`.
    pub source: String,
    pub snow_state: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub close_code: Option<String>,
    pub requested_at: String,
    #[serde(default)]
    pub isolation_stopped: bool,
    #[serde(default)]
    pub moved_back: bool,
    #[serde(default)]
    pub xdr_closed: bool,
    /// The closing work note was answered by ServiceNow (or skipped: ticket deleted,
    /// note refused). Set after the answer: a crash in between repeats the note once
    /// (a duplicate journal line, never a lost one).
    #[serde(default)]
    pub note_written: bool,
}

/// What the bridge has sent to the XDR incident's fields that an analyst may also edit,
/// so that a later update replaces a field only while it still holds the bridge's own
/// value, and never re-adds a tactic or technique an analyst removed (see
/// `payload::xdr_update`).
///
/// A value is noted *before* it is sent ([`XdrWritten::note`], persisted with the
/// record), so a write whose answer was lost — an import that answered `exists` on its
/// resend, a PATCH that took effect but timed out — still counts as the bridge's own.
/// A write confirmed by its answer narrows the description and severity back to that one
/// value ([`XdrWritten::confirm`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct XdrWritten {
    /// Lower-case hex SHA-256 of each `description` sent since the last confirmed one
    /// (that one included), oldest first; at most [`MAX_XDR_WRITTEN`].
    #[serde(default)]
    pub descriptions: Vec<String>,
    /// Each `severity` (`Low`, `Medium`, …) sent since the last confirmed one, likewise.
    #[serde(default)]
    pub severities: Vec<String>,
    /// Every tactic the bridge has sent.
    #[serde(default)]
    pub tactics: Vec<String>,
    /// Every technique the bridge has sent.
    #[serde(default)]
    pub techniques: Vec<String>,
}

/// Unconfirmed descriptions / severities remembered at most (the newest).
pub const MAX_XDR_WRITTEN: usize = 8;

/// Lower-case hex SHA-256 of a text.
pub fn sha256_hex(text: &str) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl XdrWritten {
    /// Notes the analyst-editable fields of an incident body about to be sent (create
    /// or PATCH): `description`, `severity`, `tactics`, `techniques`, where present.
    pub fn note(&mut self, body: &Value) {
        fn push(list: &mut Vec<String>, v: String) {
            if !list.contains(&v) {
                list.push(v);
            }
            let excess = list.len().saturating_sub(MAX_XDR_WRITTEN);
            list.drain(..excess);
        }
        if let Some(d) = body.get("description").and_then(Value::as_str) {
            push(&mut self.descriptions, sha256_hex(d));
        }
        if let Some(s) = body.get("severity").and_then(Value::as_str) {
            push(&mut self.severities, s.to_string());
        }
        for (field, list) in [
            ("tactics", &mut self.tactics),
            ("techniques", &mut self.techniques),
        ] {
            for t in body
                .get(field)
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
            {
                if !list.iter().any(|x| x == t) {
                    list.push(t.to_string());
                }
            }
        }
    }

    /// The body's answer confirmed it stored: its description and severity are now the
    /// only ones the bridge owns.
    pub fn confirm(&mut self, body: &Value) {
        if let Some(d) = body.get("description").and_then(Value::as_str) {
            self.descriptions = vec![sha256_hex(d)];
        }
        if let Some(s) = body.get("severity").and_then(Value::as_str) {
            self.severities = vec![s.to_string()];
        }
    }

    /// Whether a stored description is one the bridge sent.
    pub fn owns_description(&self, stored: &str) -> bool {
        self.descriptions.contains(&sha256_hex(stored))
    }

    /// Whether a stored severity is one the bridge sent.
    pub fn owns_severity(&self, stored: &str) -> bool {
        self.severities.iter().any(|s| s == stored)
    }
}

/// Events kept in full per incident; further ones are kept by id only.
pub const MAX_EVENTS_KEPT: usize = 25;
/// Audit entries kept per incident; the oldest are dropped beyond it.
pub const MAX_AUDIT: usize = 200;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IncidentRecord {
    pub key: String,
    pub state: State,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detection_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub severity: Option<Severity>,
    /// Unix milliseconds.
    pub created_at: i64,
    pub updated_at: i64,
    /// The first events of the group, oldest first.
    pub events: Vec<Event>,
    /// Every event id of the group.
    pub event_ids: Vec<u64>,
    /// Events added after the ServiceNow incident was created, not yet noted there.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pending_snow_notes: Vec<u64>,
    /// Events added after the XDR incident was created, not yet in its description.
    #[serde(default)]
    pub pending_xdr_update: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub xdr: Option<XdrRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snow: Option<SnowRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub containment: Option<ContainmentRecord>,
    /// Why the host was not contained although the policy asks for containment (e.g.
    /// "the host could not be identified"), for the ServiceNow work note.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub containment_skipped: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub close: Option<CloseRecord>,
    /// What the bridge last wrote to the XDR incident (absent in records made before
    /// it was kept: those fields are then left alone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub xdr_written: Option<XdrWritten>,
    /// Consecutive failed attempts at the current step (reset on progress).
    #[serde(default)]
    pub attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    #[serde(default)]
    pub audit: Vec<AuditEntry>,
    /// ServiceNow states seen on the ticket that are neither open (1, 2, 3) nor in
    /// `close_states`, each warned about once.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub snow_unknown_states: Vec<String>,
    /// ServiceNow shows the ticket open again after the bridge closed the loop.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub snow_reopened: bool,
    /// The work note telling the analyst what a re-open does is still to be written.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub reopen_note_pending: bool,
}

impl IncidentRecord {
    pub fn new(key: &str, now_ms: i64) -> IncidentRecord {
        IncidentRecord {
            key: key.to_string(),
            state: State::New,
            detection_id: None,
            severity: None,
            created_at: now_ms,
            updated_at: now_ms,
            events: Vec::new(),
            event_ids: Vec::new(),
            pending_snow_notes: Vec::new(),
            pending_xdr_update: false,
            xdr: None,
            snow: None,
            containment: None,
            containment_skipped: None,
            close: None,
            xdr_written: None,
            attempts: 0,
            last_error: None,
            audit: Vec::new(),
            snow_unknown_states: Vec::new(),
            snow_reopened: false,
            reopen_note_pending: false,
        }
    }

    pub fn first_event(&self) -> Option<&Event> {
        self.events.first()
    }

    /// Adds the events not already part of the incident; returns how many were new.
    /// Events reaching an incident that already exists upstream are queued as follow-ups;
    /// events after the close are recorded but reopen nothing.
    pub fn add_events(&mut self, events: &[Event], now_ms: i64) -> usize {
        let mut added = 0;
        for e in events {
            if self.event_ids.contains(&e.id) {
                continue;
            }
            added += 1;
            self.event_ids.push(e.id);
            if self.detection_id.is_none() {
                self.detection_id = e.detection_id.clone();
            }
            self.severity = self.severity.max(e.severity);
            if self.events.len() < MAX_EVENTS_KEPT {
                self.events.push(e.clone());
                // Oldest first by time to the nanosecond, whatever order they came in.
                crate::event::chronological(&mut self.events);
            }
            let note = format!("event {} ({}) added", e.id, e.event_type);
            if self.state >= State::Closing {
                self.audit(
                    now_ms,
                    "event",
                    &format!("{note} after close; not reopened"),
                );
                continue;
            }
            if self.state >= State::XdrCreating {
                self.pending_xdr_update = true;
            }
            if self.state >= State::SnowCreating {
                self.pending_snow_notes.push(e.id);
            }
            if self.state > State::New {
                self.audit(now_ms, "event", &note);
            }
        }
        added
    }

    /// Appends to the audit trail; a repeat of the last entry only bumps its counter.
    pub fn audit(&mut self, now_ms: i64, step: &str, outcome: &str) {
        let time = civil::iso_millis(now_ms);
        if let Some(last) = self.audit.last_mut()
            && last.step == step
            && last.outcome == outcome
        {
            last.repeated += 1;
            last.time = time;
            return;
        }
        self.audit.push(AuditEntry {
            time,
            step: step.to_string(),
            outcome: outcome.to_string(),
            repeated: 1,
        });
        if self.audit.len() > MAX_AUDIT {
            let excess = self.audit.len() - MAX_AUDIT;
            self.audit.drain(..excess);
        }
    }

    /// Moves to a new state, with an audit entry; resets the failure counter.
    pub fn advance(&mut self, to: State, now_ms: i64, outcome: &str) {
        self.state = to;
        self.attempts = 0;
        self.last_error = None;
        self.audit(now_ms, to.as_str(), outcome);
    }

    /// Records a failed attempt at the current step.
    pub fn failed(&mut self, now_ms: i64, step: &str, error: &str) {
        self.attempts += 1;
        self.last_error = Some(error.to_string());
        self.audit(now_ms, step, &format!("failed: {error}"));
    }

    /// Starts the close-back, once. Returns false when already closing or closed.
    pub fn begin_close(
        &mut self,
        source: &str,
        snow_state: &str,
        close_code: Option<&str>,
        now_ms: i64,
    ) -> bool {
        if self.state >= State::Closing {
            return false;
        }
        self.close = Some(CloseRecord {
            source: source.to_string(),
            snow_state: snow_state.to_string(),
            close_code: close_code.map(String::from),
            requested_at: civil::iso_millis(now_ms),
            ..CloseRecord::default()
        });
        self.advance(
            State::Closing,
            now_ms,
            &format!("ServiceNow state {snow_state} reported by {source}"),
        );
        true
    }

    /// Whether the tick has something to do for this incident.
    pub fn needs_work(&self) -> bool {
        match self.state {
            State::Open => !self.pending_snow_notes.is_empty() || self.pending_xdr_update,
            State::Closed => false,
            _ => true,
        }
    }

    /// The record as shown by the status routes: the isolation unlock code is replaced
    /// by a flag.
    pub fn public_view(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).unwrap_or_default();
        if let Some(c) = v.get_mut("containment").and_then(|c| c.as_object_mut())
            && c.remove("unlock_code").is_some()
        {
            c.insert("unlock_code_recorded".into(), serde_json::Value::Bool(true));
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detection::tests::event;

    #[test]
    fn states_are_ordered_and_named() {
        let names: Vec<_> = State::ALL.iter().map(|s| s.as_str()).collect();
        assert_eq!(
            names,
            [
                "new",
                "xdr_creating",
                "xdr_created",
                "containing",
                "contained",
                "snow_creating",
                "open",
                "closing",
                "closed"
            ]
        );
        assert!(State::ALL.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(
            serde_json::to_string(&State::SnowCreating).unwrap(),
            "\"snow_creating\""
        );
    }

    #[test]
    fn events_join_once_and_queue_follow_ups_by_state() {
        let mut r = IncidentRecord::new("k", 0);
        assert_eq!(
            r.add_events(&[event(1, 1, 1, Some("d")), event(1, 1, 1, Some("d"))], 0),
            1
        );
        assert!(!r.pending_xdr_update && r.pending_snow_notes.is_empty());
        r.state = State::Contained;
        r.add_events(&[event(2, 2, 1, Some("d"))], 0);
        assert!(r.pending_xdr_update && r.pending_snow_notes.is_empty());
        r.state = State::Open;
        r.add_events(&[event(3, 3, 1, Some("d"))], 0);
        assert_eq!(r.pending_snow_notes, vec![3]);
        r.state = State::Closed;
        r.pending_snow_notes.clear();
        assert_eq!(r.add_events(&[event(4, 4, 1, Some("d"))], 0), 1);
        assert!(r.pending_snow_notes.is_empty());
        assert!(r.audit.last().unwrap().outcome.contains("not reopened"));
        assert_eq!(r.event_ids, vec![1, 2, 3, 4]);
        assert_eq!(r.detection_id.as_deref(), Some("d"));
    }

    #[test]
    fn audit_folds_repeats_and_is_bounded() {
        let mut r = IncidentRecord::new("k", 0);
        r.failed(1, "xdr_create", "HTTP 503");
        r.failed(2, "xdr_create", "HTTP 503");
        assert_eq!(r.audit.len(), 1);
        assert_eq!(r.audit[0].repeated, 2);
        assert_eq!(r.attempts, 2);
        for i in 0..(MAX_AUDIT as i64 + 10) {
            r.audit(i, "step", &format!("outcome {i}"));
        }
        assert_eq!(r.audit.len(), MAX_AUDIT);
    }

    #[test]
    fn close_begins_once_and_hides_the_unlock_code() {
        let mut r = IncidentRecord::new("k", 0);
        r.state = State::Open;
        r.containment = Some(ContainmentRecord {
            unlock_code: Some("UNLOCK123".into()),
            ..Default::default()
        });
        assert!(r.begin_close("callback", "6", Some("Solved"), 5));
        assert!(!r.begin_close("reconcile", "7", None, 6));
        assert_eq!(r.close.as_ref().unwrap().source, "callback");
        let shown = r.public_view().to_string();
        assert!(!shown.contains("UNLOCK123") && shown.contains("unlock_code_recorded"));
        assert_eq!(
            XdrRef::from_entity_id("https://x:443/ctia/incident/incident-1").short_id,
            "incident-1"
        );
    }
}
