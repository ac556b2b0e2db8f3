//! What one tick did, kept in the store for `GET /v1/status` and returned by `/v1/tick`.

use serde::{Deserialize, Serialize};

use crate::upstream::Calls;

/// Errors kept per report; further ones are only counted.
const MAX_ERRORS: usize = 20;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TickReport {
    pub started_at: String,
    #[serde(default)]
    pub finished_at: String,
    /// `ok`, `partial` (some work failed or was left for the next tick), `skipped`
    /// (another worker holds the lease) or `failed`.
    pub outcome: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    pub events_fetched: usize,
    pub events_new: usize,
    pub events_rejected: usize,
    /// Events that passed the filter (event types, severities), live and backfill.
    #[serde(default)]
    pub events_kept: usize,
    /// Events taken in although their timestamp lies behind the watermark the tenant
    /// already had: they reached Secure Endpoint after the cursor passed their time and
    /// were caught by the late-arrival window (`late_window_seconds`). Live poll only.
    #[serde(default)]
    pub events_late: usize,
    /// Events of the backfill window read in this tick.
    #[serde(default)]
    pub backfill_events: usize,
    pub incidents_new: usize,
    pub incidents_updated: usize,
    pub incidents_opened: usize,
    pub incidents_closed: usize,
    /// Closed incidents deleted by retention.
    #[serde(default)]
    pub incidents_pruned: usize,
    /// Incidents with work left for the next tick.
    pub deferred: usize,
    /// A backlog of events is left for the next tick (read up to `cursor`).
    #[serde(default)]
    pub backlog: bool,
    pub calls: Calls,
    /// Answers that were 429, per service.
    #[serde(default)]
    pub rate_limited: Calls,
    /// Calls that gave no usable answer, per service, retries included: an error
    /// status (429s too), a transport failure (refused, timed out, dropped), a
    /// body that was damaged, too large or not JSON, a redirect.
    #[serde(default)]
    pub failed: Calls,
    /// 429s without a usable wait in this tick, each starting a cooldown, per service.
    #[serde(default)]
    pub cooldowns_started: Calls,
    /// Services left alone at the end of this tick because of such 429s, and why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cooldowns: Vec<Cooldown>,
    /// Things an operator should act on that are not failures (an unknown ServiceNow
    /// state, a re-opened ticket); at most `MAX_ERRORS` kept.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// ServiceNow states seen that are neither open (1, 2, 3) nor in `close_states`.
    #[serde(default)]
    pub snow_unknown_states: usize,
    /// ServiceNow tickets found re-opened after the bridge closed the loop.
    #[serde(default)]
    pub snow_reopened: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
    pub errors: Vec<String>,
    #[serde(default)]
    pub errors_total: usize,
}

/// A service left alone after 429s that named no usable wait.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cooldown {
    /// `Secure Endpoint`, `XDR` or `ServiceNow`.
    pub service: String,
    /// ISO 8601 UTC, milliseconds.
    pub until: String,
    /// Such 429s in a row.
    pub strikes: u32,
    pub reason: String,
}

impl TickReport {
    /// Notes something an operator should act on (not a failure of the tick).
    pub fn warning(&mut self, message: String) {
        if self.warnings.len() < MAX_ERRORS {
            self.warnings.push(message);
        }
    }

    pub fn error(&mut self, message: String) {
        self.errors_total += 1;
        if self.errors.len() < MAX_ERRORS {
            self.errors.push(message);
        }
    }
}
