//! What the component reports about its own work, as data a host reads from the
//! tenant's key-value bucket `default` (and the component's own `GET /v1/status`
//! returns):
//! - [`LAST_TICK_KEY`]: the [`TickReport`] of the last tick, written at the end of
//!   every tick;
//! - [`COUNTERS_KEY`]: the cumulative [`Counters`] over every invocation (ticks and
//!   closing callbacks), written once by each invocation that did something (read,
//!   added to, written back).
//!
//! A host that serves `wasi:keyvalue` sees both writes: `mssp-runtime` turns them into
//! the tenant's metrics and log fields (the counters' growth within one invocation is
//! that invocation's share). Both are JSON (serde, field names as below); new fields
//! are added with `#[serde(default)]` so older records still read.

use serde::{Deserialize, Serialize};

/// The bucket the component keeps its state in (Spin's `default` store).
pub const BUCKET: &str = "default";
/// Key of the last tick's [`TickReport`].
pub const LAST_TICK_KEY: &str = "status/last_tick";
/// Key of the cumulative [`Counters`].
pub const COUNTERS_KEY: &str = "status/counters";

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

/// Upstream calls made, per service.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Calls {
    pub amp: u64,
    pub xdr: u64,
    pub snow: u64,
}

impl Calls {
    /// The services counted, by their field name (also the hosts' metric label).
    pub const SERVICES: [&'static str; 3] = ["amp", "xdr", "snow"];

    /// Each service's count, in the order of [`Calls::SERVICES`].
    pub fn by_service(&self) -> [(&'static str, u64); 3] {
        let [amp, xdr, snow] = Self::SERVICES;
        [(amp, self.amp), (xdr, self.xdr), (snow, self.snow)]
    }

    /// Adds `other`, service by service.
    pub fn add(&mut self, other: Calls) {
        self.amp += other.amp;
        self.xdr += other.xdr;
        self.snow += other.snow;
    }

    /// What was added since `before` (saturating: a smaller value counts as 0).
    pub fn since(&self, before: &Calls) -> Calls {
        Calls {
            amp: self.amp.saturating_sub(before.amp),
            xdr: self.xdr.saturating_sub(before.xdr),
            snow: self.snow.saturating_sub(before.snow),
        }
    }
}

/// Cumulative counts over every invocation (`status/counters`), for the host's
/// `/metrics` and the status page. Written once per invocation that did something.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    #[serde(default)]
    pub events_seen: u64,
    #[serde(default)]
    pub events_kept: u64,
    /// Events taken in late (see `TickReport::events_late`).
    #[serde(default)]
    pub events_late: u64,
    #[serde(default)]
    pub incidents_opened: u64,
    #[serde(default)]
    pub incidents_closed: u64,
    #[serde(default)]
    pub calls: Calls,
    #[serde(default)]
    pub rate_limited: Calls,
    #[serde(default)]
    pub failed: Calls,
    /// Cooldowns started by a 429 without a usable wait, per service.
    #[serde(default)]
    pub cooldowns_started: Calls,
    /// ServiceNow states seen that are neither open (1, 2, 3) nor in `close_states`
    /// (once per incident and state).
    #[serde(default)]
    pub snow_unknown_states: u64,
    /// ServiceNow tickets found re-opened after the bridge closed the loop.
    #[serde(default)]
    pub snow_reopened: u64,
}

impl Counters {
    /// Adds one invocation's report; false when it changed nothing.
    pub fn add(&mut self, r: &TickReport) -> bool {
        let before = *self;
        self.events_seen += (r.events_new + r.backfill_events) as u64;
        self.events_kept += r.events_kept as u64;
        self.events_late += r.events_late as u64;
        self.incidents_opened += r.incidents_opened as u64;
        self.incidents_closed += r.incidents_closed as u64;
        self.calls.add(r.calls);
        self.rate_limited.add(r.rate_limited);
        self.failed.add(r.failed);
        self.cooldowns_started.add(r.cooldowns_started);
        self.snow_unknown_states += r.snow_unknown_states as u64;
        self.snow_reopened += r.snow_reopened as u64;
        *self != before
    }

    /// What was added since `before`: one invocation's share when `before` is the
    /// value it read and `self` the value it wrote (saturating).
    pub fn since(&self, before: &Counters) -> Counters {
        Counters {
            events_seen: self.events_seen.saturating_sub(before.events_seen),
            events_kept: self.events_kept.saturating_sub(before.events_kept),
            events_late: self.events_late.saturating_sub(before.events_late),
            incidents_opened: self
                .incidents_opened
                .saturating_sub(before.incidents_opened),
            incidents_closed: self
                .incidents_closed
                .saturating_sub(before.incidents_closed),
            calls: self.calls.since(&before.calls),
            rate_limited: self.rate_limited.since(&before.rate_limited),
            failed: self.failed.since(&before.failed),
            cooldowns_started: self.cooldowns_started.since(&before.cooldowns_started),
            snow_unknown_states: self
                .snow_unknown_states
                .saturating_sub(before.snow_unknown_states),
            snow_reopened: self.snow_reopened.saturating_sub(before.snow_reopened),
        }
    }
}
