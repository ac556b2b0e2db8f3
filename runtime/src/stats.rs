//! Per-tenant counters, kept by the host and exported on `/metrics` in the
//! Prometheus text format.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::budget::{CooldownCause, DeferReason};
use crate::report::GuestReport;

/// Why the sandbox stopped or refused something a guest did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, EncodeLabelValue)]
pub enum StopKind {
    /// The guest trapped (panic, unreachable, bad resource use).
    Trap,
    /// The invocation ran past its deadline.
    Timeout,
    /// The guest tried to grow memory past its cap.
    Memory,
    /// An outbound request to an origin outside the allowlist.
    DeniedRequest,
    /// A request or response body over the size cap.
    BodyTooLarge,
    /// Guest log output dropped over the log cap.
    LogDropped,
    /// The tenant already had its maximum of concurrent invocations.
    Busy,
}

impl StopKind {
    pub const ALL: [StopKind; 7] = [
        StopKind::Trap,
        StopKind::Timeout,
        StopKind::Memory,
        StopKind::DeniedRequest,
        StopKind::BodyTooLarge,
        StopKind::LogDropped,
        StopKind::Busy,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            StopKind::Trap => "trap",
            StopKind::Timeout => "timeout",
            StopKind::Memory => "memory",
            StopKind::DeniedRequest => "denied_request",
            StopKind::BodyTooLarge => "body_too_large",
            StopKind::LogDropped => "log_dropped",
            StopKind::Busy => "busy",
        }
    }
}

/// How one upstream call ended, as seen by the host.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, EncodeLabelValue)]
pub enum CallOutcome {
    Ok,
    /// A 3xx: the bridge never follows redirects.
    Redirected,
    RateLimited,
    ClientError,
    ServerError,
    Failed,
}

impl CallOutcome {
    pub const ALL: [CallOutcome; 6] = [
        CallOutcome::Ok,
        CallOutcome::Redirected,
        CallOutcome::RateLimited,
        CallOutcome::ClientError,
        CallOutcome::ServerError,
        CallOutcome::Failed,
    ];

    pub fn of_status(status: u16) -> Self {
        match status {
            300..=399 => CallOutcome::Redirected,
            429 => CallOutcome::RateLimited,
            400..=499 => CallOutcome::ClientError,
            500..=599 => CallOutcome::ServerError,
            _ => CallOutcome::Ok,
        }
    }
}

/// Whether an upstream request needed a new connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, EncodeLabelValue)]
pub enum ConnectionUse {
    Opened,
    Reused,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, EncodeLabelValue)]
pub enum TickOutcome {
    Ok,
    Failed,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct TenantLabels {
    tenant: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct TickLabels {
    tenant: String,
    outcome: TickOutcome,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct StopLabels {
    tenant: String,
    kind: StopKind,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct UpstreamLabels {
    tenant: String,
    service: String,
    outcome: CallOutcome,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ConnectionLabels {
    tenant: String,
    service: String,
    connection: ConnectionUse,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ServiceLabels {
    tenant: String,
    service: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct AccountLabels {
    service: String,
    account: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct AccountReasonLabels {
    service: String,
    account: String,
    reason: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct DeferredLabels {
    tenant: String,
    service: String,
    reason: String,
}

/// The services of the component's per-service counts, by their label.
const REPORT_SERVICES: [&str; 3] = mssp_contract::report::Calls::SERVICES;
/// Every `service` label of upstream requests: the report's, and `other` for
/// explicitly allowed extra origins (see `outbound::Allowlist`).
const UPSTREAM_SERVICES: [&str; 4] = ["amp", "xdr", "snow", "other"];

#[derive(Clone)]
struct TickBuckets;

impl MetricConstructor<Histogram> for TickBuckets {
    fn new_metric(&self) -> Histogram {
        // 1 ms … ~65 s
        Histogram::new(exponential_buckets(0.001, 2.0, 17))
    }
}

/// Every metric family of the host, registered once.
pub struct Metrics {
    registry: Registry,
    ticks: Family<TickLabels, Counter>,
    tick_seconds: Family<TenantLabels, Histogram, TickBuckets>,
    stops: Family<StopLabels, Counter>,
    upstream: Family<UpstreamLabels, Counter>,
    upstream_failed: Family<ServiceLabels, Counter>,
    upstream_cooldowns: Family<ServiceLabels, Counter>,
    connections: Family<ConnectionLabels, Counter>,
    requests: Family<TenantLabels, Counter>,
    events_seen: Family<TenantLabels, Counter>,
    events_late: Family<TenantLabels, Counter>,
    incidents_opened: Family<TenantLabels, Counter>,
    incidents_closed: Family<TenantLabels, Counter>,
    snow_unknown_states: Family<TenantLabels, Counter>,
    snow_reopened: Family<TenantLabels, Counter>,
    inbound_refused: Family<RefusedLabels, Counter>,
    upstream_deferred: Family<DeferredLabels, Counter>,
    account_budget: Family<AccountLabels, Gauge>,
    account_used: Family<AccountLabels, Gauge>,
    account_left: Family<AccountLabels, Gauge>,
    account_requests: Family<AccountLabels, Counter>,
    account_deferred: Family<AccountReasonLabels, Counter>,
    account_cooldowns: Family<AccountReasonLabels, Counter>,
    leases_held: Gauge,
    lease_changes: Family<LeaseChangeLabels, Counter>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct LeaseChangeLabels {
    change: &'static str,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RefusedLabels {
    listener: String,
    reason: String,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("mssp");
        let ticks = Family::default();
        let tick_seconds = Family::new_with_constructor(TickBuckets);
        let stops = Family::default();
        let upstream = Family::default();
        let upstream_failed = Family::default();
        let upstream_cooldowns = Family::default();
        let connections = Family::default();
        let requests = Family::default();
        let events_seen = Family::default();
        let events_late = Family::default();
        let incidents_opened = Family::default();
        let incidents_closed = Family::default();
        let snow_unknown_states = Family::default();
        let snow_reopened = Family::default();
        let inbound_refused = Family::default();
        let leases_held = Gauge::default();
        let lease_changes = Family::default();
        registry.register(
            "leases_held",
            "Tenant leases this replica holds (several replicas on a shared store)",
            leases_held.clone(),
        );
        registry.register(
            "lease_changes",
            "Tenant lease changes of this replica: acquired (a hand-over to it, or a \
             first start), released (handed to the replica that now ranks first), lost \
             (found expired or taken at renewal)",
            lease_changes.clone(),
        );
        let upstream_deferred = Family::default();
        let account_budget = Family::default();
        let account_used = Family::default();
        let account_left = Family::default();
        let account_requests = Family::default();
        let account_deferred = Family::default();
        let account_cooldowns = Family::default();
        registry.register("ticks", "Ticks run, by outcome", ticks.clone());
        registry.register(
            "tick_duration_seconds",
            "Wall time of one tick",
            tick_seconds.clone(),
        );
        registry.register(
            "sandbox_stops",
            "Invocations stopped or requests refused by the sandbox, by cause",
            stops.clone(),
        );
        registry.register(
            "upstream_requests",
            "Outbound requests by upstream service and outcome (429s as RateLimited)",
            upstream.clone(),
        );
        registry.register(
            "upstream_failed_calls",
            "Upstream calls the guest could not use (error status, transport failure, \
             damaged, oversize or redirected answer), retries included, by service; \
             from the component's counters",
            upstream_failed.clone(),
        );
        registry.register(
            "upstream_cooldowns",
            "Cooldowns started by a 429 that named no usable wait (no inline retry; the \
             service is left alone across ticks for a growing time), by service; from the \
             component's counters",
            upstream_cooldowns.clone(),
        );
        registry.register(
            "upstream_connections",
            "Upstream requests by whether they opened a connection or reused a kept-alive one",
            connections.clone(),
        );
        registry.register(
            "http_requests",
            "Inbound HTTP requests handed to the tenant",
            requests.clone(),
        );
        registry.register(
            "events_seen",
            "Secure Endpoint events taken in (live poll and backfill), as the component counts them",
            events_seen.clone(),
        );
        registry.register(
            "events_late",
            "Events taken in although their timestamp lay behind the tenant's watermark \
             (they reached Secure Endpoint late, inside the late-arrival window), from \
             the component's counters",
            events_late.clone(),
        );
        registry.register(
            "incidents_opened",
            "Incidents opened (XDR and ServiceNow), from the component's counters",
            incidents_opened.clone(),
        );
        registry.register(
            "incidents_closed",
            "Incidents closed, from the component's counters",
            incidents_closed.clone(),
        );
        registry.register(
            "servicenow_unknown_states",
            "ServiceNow tickets found in a state that is neither open (1, 2, 3) nor in \
             close_states (each incident and state counted once), from the component's counters",
            snow_unknown_states.clone(),
        );
        registry.register(
            "servicenow_reopened",
            "ServiceNow tickets re-opened after the bridge closed their incident, from the \
             component's counters",
            snow_reopened.clone(),
        );
        registry.register(
            "http_refused",
            "Inbound requests refused before a tenant ran, each answered 503 or 429 with \
             Retry-After, by listener and reason (in_flight: the listener's bound; \
             tenant_busy: the tenant's own bound)",
            inbound_refused.clone(),
        );
        registry.register(
            "upstream_deferred",
            "Requests of a tenant the host answered itself (429 + Retry-After, nothing sent \
             upstream) because its upstream account's budget was used up or the account was \
             cooling down, by service and reason (budget, cooldown)",
            upstream_deferred.clone(),
        );
        registry.register(
            "account_budget_requests",
            "Budget of a shared upstream account: requests per window (an hour); 0 when the \
             host keeps no budget for it",
            account_budget.clone(),
        );
        registry.register(
            "account_budget_used",
            "Requests a shared upstream account let through during the last window",
            account_used.clone(),
        );
        registry.register(
            "account_budget_left",
            "Requests a shared upstream account may send at once now (tokens in its bucket)",
            account_left.clone(),
        );
        registry.register(
            "account_requests",
            "Requests a shared upstream account let through, every tenant using it together",
            account_requests.clone(),
        );
        registry.register(
            "account_deferred",
            "Requests of a shared upstream account answered by the host, by reason (budget, \
             cooldown)",
            account_deferred.clone(),
        );
        registry.register(
            "account_cooldowns",
            "Cooldowns of a shared upstream account started by an upstream 429, by what named \
             the wait (retry_after_seconds, retry_after_date, epoch_reset, reset_seconds, \
             no_header)",
            account_cooldowns.clone(),
        );
        Self {
            registry,
            ticks,
            tick_seconds,
            stops,
            upstream,
            upstream_failed,
            upstream_cooldowns,
            connections,
            requests,
            events_seen,
            events_late,
            incidents_opened,
            incidents_closed,
            snow_unknown_states,
            snow_reopened,
            inbound_refused,
            leases_held,
            lease_changes,
            upstream_deferred,
            account_budget,
            account_used,
            account_left,
            account_requests,
            account_deferred,
            account_cooldowns,
        }
    }
}

impl Metrics {
    /// Counts one inbound request refused by an embedder's server before any tenant
    /// ran (`listener`: which listener; `reason`: e.g. `in_flight`, `tenant_busy`).
    pub fn inbound_refused(&self, listener: &str, reason: &str) {
        self.inbound_refused
            .get_or_create(&RefusedLabels {
                listener: listener.to_string(),
                reason: reason.to_string(),
            })
            .inc();
    }

    /// One lease round of this replica: how many leases it holds now, and what changed.
    pub fn leases(&self, held: usize, acquired: usize, released: usize, lost: usize) {
        self.leases_held
            .set(i64::try_from(held).unwrap_or(i64::MAX));
        for (change, n) in [
            ("acquired", acquired),
            ("released", released),
            ("lost", lost),
        ] {
            self.lease_changes
                .get_or_create(&LeaseChangeLabels { change })
                .inc_by(n as u64);
        }
    }

    fn account_labels(service: &str, account: &str) -> AccountLabels {
        AccountLabels {
            service: service.to_string(),
            account: account.to_string(),
        }
    }

    /// A shared account's budget was set: requests per window (`None`: no budget).
    pub fn account_budget(&self, service: &str, account: &str, per_hour: Option<u32>) {
        self.account_budget
            .get_or_create(&Self::account_labels(service, account))
            .set(per_hour.map_or(0, i64::from));
    }

    /// A shared account let one request through; `used` in the last window, `left` in
    /// its bucket (`None`: no budget).
    pub fn account_granted(&self, service: &str, account: &str, used: u64, left: Option<u64>) {
        let labels = Self::account_labels(service, account);
        self.account_requests.get_or_create(&labels).inc();
        let gauge = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        self.account_used.get_or_create(&labels).set(gauge(used));
        if let Some(left) = left {
            self.account_left.get_or_create(&labels).set(gauge(left));
        }
    }

    /// A shared account held one request back.
    pub fn account_deferred(&self, service: &str, account: &str, reason: DeferReason) {
        self.account_deferred
            .get_or_create(&AccountReasonLabels {
                service: service.to_string(),
                account: account.to_string(),
                reason: reason.as_str().to_string(),
            })
            .inc();
        if reason == DeferReason::Budget {
            self.account_left
                .get_or_create(&Self::account_labels(service, account))
                .set(0);
        }
    }

    /// A cooldown of a shared account started.
    pub fn account_cooldown(&self, service: &str, account: &str, cause: CooldownCause) {
        self.account_cooldowns
            .get_or_create(&AccountReasonLabels {
                service: service.to_string(),
                account: account.to_string(),
                reason: cause.as_str().to_string(),
            })
            .inc();
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }

    fn forget(&self, tenant: &str) {
        let t = tenant.to_string();
        self.tick_seconds
            .remove(&TenantLabels { tenant: t.clone() });
        self.requests.remove(&TenantLabels { tenant: t.clone() });
        for family in [
            &self.events_seen,
            &self.events_late,
            &self.incidents_opened,
            &self.incidents_closed,
            &self.snow_unknown_states,
            &self.snow_reopened,
        ] {
            family.remove(&TenantLabels { tenant: t.clone() });
        }
        for service in REPORT_SERVICES {
            for family in [&self.upstream_failed, &self.upstream_cooldowns] {
                family.remove(&ServiceLabels {
                    tenant: t.clone(),
                    service: service.to_string(),
                });
            }
        }
        for service in UPSTREAM_SERVICES {
            for outcome in CallOutcome::ALL {
                self.upstream.remove(&UpstreamLabels {
                    tenant: t.clone(),
                    service: service.to_string(),
                    outcome,
                });
            }
            for connection in [ConnectionUse::Opened, ConnectionUse::Reused] {
                self.connections.remove(&ConnectionLabels {
                    tenant: t.clone(),
                    service: service.to_string(),
                    connection,
                });
            }
        }
        for service in UPSTREAM_SERVICES {
            for reason in [DeferReason::Budget, DeferReason::Cooldown] {
                self.upstream_deferred.remove(&DeferredLabels {
                    tenant: t.clone(),
                    service: service.to_string(),
                    reason: reason.as_str().to_string(),
                });
            }
        }
        for kind in StopKind::ALL {
            self.stops.remove(&StopLabels {
                tenant: t.clone(),
                kind,
            });
        }
        for outcome in [TickOutcome::Ok, TickOutcome::Failed] {
            self.ticks.remove(&TickLabels {
                tenant: t.clone(),
                outcome,
            });
        }
    }
}

/// What happened to one tenant since the host started.
pub struct TenantStats {
    tenant: String,
    metrics: Arc<Metrics>,
    pub last_tick_unix_ms: AtomicU64,
    pub last_tick_duration_us: AtomicU64,
    last_error: Mutex<Option<String>>,
}

impl TenantStats {
    pub fn new(tenant: &str, metrics: Arc<Metrics>) -> Self {
        Self {
            tenant: tenant.to_string(),
            metrics,
            last_tick_unix_ms: AtomicU64::new(0),
            last_tick_duration_us: AtomicU64::new(0),
            last_error: Mutex::new(None),
        }
    }

    pub fn tenant(&self) -> &str {
        &self.tenant
    }

    fn stop_counter(&self, kind: StopKind) -> Counter {
        self.metrics
            .stops
            .get_or_create(&StopLabels {
                tenant: self.tenant.clone(),
                kind,
            })
            .clone()
    }

    pub fn stop(&self, kind: StopKind) {
        self.stop_counter(kind).inc();
    }

    pub fn stops(&self, kind: StopKind) -> u64 {
        self.stop_counter(kind).get()
    }

    fn tick_counter(&self, outcome: TickOutcome) -> Counter {
        self.metrics
            .ticks
            .get_or_create(&TickLabels {
                tenant: self.tenant.clone(),
                outcome,
            })
            .clone()
    }

    pub fn ticks(&self, outcome: TickOutcome) -> u64 {
        self.tick_counter(outcome).get()
    }

    pub fn tick_done(&self, outcome: TickOutcome, took: Duration, error: Option<String>) {
        self.tick_counter(outcome).inc();
        self.metrics
            .tick_seconds
            .get_or_create(&TenantLabels {
                tenant: self.tenant.clone(),
            })
            .observe(took.as_secs_f64());
        self.last_tick_duration_us
            .store(took.as_micros() as u64, Ordering::Relaxed);
        self.last_tick_unix_ms
            .store(crate::unix_ms(), Ordering::Relaxed);
        if let Ok(mut e) = self.last_error.lock() {
            *e = error;
        }
    }

    pub fn request(&self) {
        self.metrics
            .requests
            .get_or_create(&TenantLabels {
                tenant: self.tenant.clone(),
            })
            .inc();
    }

    fn upstream_counter(&self, service: &str, outcome: CallOutcome) -> Counter {
        self.metrics
            .upstream
            .get_or_create(&UpstreamLabels {
                tenant: self.tenant.clone(),
                service: service.to_string(),
                outcome,
            })
            .clone()
    }

    pub fn upstream(&self, service: &str, outcome: CallOutcome) {
        self.upstream_counter(service, outcome).inc();
    }

    /// The host answered one request of this tenant itself (its account's budget or
    /// cooldown held it back).
    pub fn deferred(&self, service: &str, reason: DeferReason) {
        self.deferred_counter(service, reason).inc();
    }

    /// Requests of this tenant the host answered itself, by service and reason.
    pub fn deferred_count(&self, service: &str, reason: DeferReason) -> u64 {
        self.deferred_counter(service, reason).get()
    }

    fn deferred_counter(&self, service: &str, reason: DeferReason) -> Counter {
        self.metrics
            .upstream_deferred
            .get_or_create(&DeferredLabels {
                tenant: self.tenant.clone(),
                service: service.to_string(),
                reason: reason.as_str().to_string(),
            })
            .clone()
    }

    pub fn upstream_count(&self, service: &str, outcome: CallOutcome) -> u64 {
        self.upstream_counter(service, outcome).get()
    }

    fn connection_counter(&self, service: &str, connection: ConnectionUse) -> Counter {
        self.metrics
            .connections
            .get_or_create(&ConnectionLabels {
                tenant: self.tenant.clone(),
                service: service.to_string(),
                connection,
            })
            .clone()
    }

    /// One upstream request that opened a new connection or reused one.
    pub fn connection(&self, service: &str, opened: bool) {
        let kind = if opened {
            ConnectionUse::Opened
        } else {
            ConnectionUse::Reused
        };
        self.connection_counter(service, kind).inc();
    }

    pub fn connections(&self, service: &str, connection: ConnectionUse) -> u64 {
        self.connection_counter(service, connection).get()
    }

    /// Adds what one invocation reported (as data: [`crate::report`]) to the
    /// tenant's counters — the invocation's share of the component's own cumulative
    /// counters, so the host counts what the component counts (events seen include
    /// backfill events) — and logs a tick's report as one line whose numbers are fields
    /// (target `tick`).
    pub fn guest_report(&self, report: &GuestReport) {
        if let Some(r) = &report.tick {
            tracing::info!(
                target: "tick",
                tenant = %self.tenant,
                outcome = %r.outcome,
                events_new = r.events_new,
                incidents_new = r.incidents_new,
                incidents_opened = r.incidents_opened,
                incidents_closed = r.incidents_closed,
                errors_total = r.errors_total,
                "tick report"
            );
        }
        let Some(c) = &report.added else {
            return;
        };
        let labels = TenantLabels {
            tenant: self.tenant.clone(),
        };
        for (family, n) in [
            (&self.metrics.events_seen, c.events_seen),
            (&self.metrics.events_late, c.events_late),
            (&self.metrics.incidents_opened, c.incidents_opened),
            (&self.metrics.incidents_closed, c.incidents_closed),
            (&self.metrics.snow_unknown_states, c.snow_unknown_states),
            (&self.metrics.snow_reopened, c.snow_reopened),
        ] {
            family.get_or_create(&labels).inc_by(n);
        }
        for ((service, failed), (_, cooldowns)) in c
            .failed
            .by_service()
            .into_iter()
            .zip(c.cooldowns_started.by_service())
        {
            for (family, n) in [
                (&self.metrics.upstream_failed, failed),
                (&self.metrics.upstream_cooldowns, cooldowns),
            ] {
                if n > 0 {
                    family
                        .get_or_create(&ServiceLabels {
                            tenant: self.tenant.clone(),
                            service: service.to_string(),
                        })
                        .inc_by(n);
                }
            }
        }
    }

    fn failed_counter(&self, service: &str) -> Counter {
        self.metrics
            .upstream_failed
            .get_or_create(&ServiceLabels {
                tenant: self.tenant.clone(),
                service: service.to_string(),
            })
            .clone()
    }

    /// Upstream calls of one service (`amp`, `xdr`, `snow`) the guest reported as
    /// failed, since the host started.
    pub fn upstream_failed(&self, service: &str) -> u64 {
        self.failed_counter(service).get()
    }

    /// Events taken in, incidents opened and closed, since the host started.
    pub fn guest_totals(&self) -> (u64, u64, u64) {
        let labels = TenantLabels {
            tenant: self.tenant.clone(),
        };
        (
            self.metrics.events_seen.get_or_create(&labels).get(),
            self.metrics.incidents_opened.get_or_create(&labels).get(),
            self.metrics.incidents_closed.get_or_create(&labels).get(),
        )
    }

    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().ok().and_then(|e| e.clone())
    }

    /// Drops this tenant's series (tenant removed).
    pub fn forget(&self) {
        self.metrics.forget(&self.tenant);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tick_report_adds_to_the_tenant_counters_and_shows_on_metrics() {
        use mssp_contract::report::{Calls, Counters};
        let metrics = Arc::new(Metrics::default());
        let acme = TenantStats::new("acme", metrics.clone());
        let report = GuestReport {
            tick: None,
            added: Some(Counters {
                events_seen: 3,
                events_late: 1,
                incidents_opened: 1,
                failed: Calls {
                    amp: 0,
                    xdr: 2,
                    snow: 1,
                },
                cooldowns_started: Calls {
                    amp: 0,
                    xdr: 0,
                    snow: 1,
                },
                snow_unknown_states: 1,
                ..Counters::default()
            }),
        };
        acme.guest_report(&report);
        acme.guest_report(&report);
        assert_eq!(acme.guest_totals(), (6, 2, 0));
        assert_eq!(
            (
                acme.upstream_failed("amp"),
                acme.upstream_failed("xdr"),
                acme.upstream_failed("snow")
            ),
            (0, 4, 2)
        );
        let text = metrics.render();
        assert!(
            text.contains(r#"mssp_upstream_failed_calls_total{tenant="acme",service="xdr"} 4"#),
            "{text}"
        );
        assert!(
            text.contains(r#"mssp_events_late_total{tenant="acme"} 2"#),
            "{text}"
        );
        for line in [
            r#"mssp_upstream_cooldowns_total{tenant="acme",service="snow"} 2"#,
            r#"mssp_servicenow_unknown_states_total{tenant="acme"} 2"#,
            r#"mssp_servicenow_reopened_total{tenant="acme"} 0"#,
        ] {
            assert!(text.contains(line), "{line} in {text}");
        }
        // Nothing reported: nothing counted, nothing lost.
        acme.guest_report(&GuestReport::default());
        assert_eq!(acme.upstream_failed("xdr"), 4);
        acme.upstream("snow", CallOutcome::Redirected);
        acme.stop(StopKind::Busy);
        acme.tick_done(TickOutcome::Ok, Duration::from_millis(3), None);
        assert!(metrics.render().contains(r#"tenant="acme""#));
        // A removed tenant leaves no series behind.
        acme.forget();
        let text = metrics.render();
        assert!(!text.contains(r#"tenant="acme""#), "{text}");
    }

    #[test]
    fn a_redirect_is_not_an_ok_answer() {
        assert_eq!(CallOutcome::of_status(302), CallOutcome::Redirected);
        assert_eq!(CallOutcome::of_status(204), CallOutcome::Ok);
        assert_eq!(CallOutcome::of_status(429), CallOutcome::RateLimited);
        assert_eq!(CallOutcome::of_status(503), CallOutcome::ServerError);
    }
}
