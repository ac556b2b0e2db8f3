//! Fault injection: which requests misbehave, and how.
//!
//! A [`Fault`] selects requests by service, path pattern, optional method and optional tenant
//! (the credential the request carries), and has a [`Schedule`] of [`FaultKind`]s. Every
//! matching fault advances its schedule on every matching request; latencies add up, and the
//! first other kind wins.
//!
//! Kinds that replace the response (`status`, `too_many_requests`, `redirect`,
//! `malformed_json`, `drop_connection`) short-circuit before the service runs, so nothing
//! changes upstream. Kinds that damage the response (`drop_mid_body`, `truncated_json`,
//! `oversize`, `status_after_effect`) let the service run first: the write happened, only the
//! answer is lost — the case an idempotent client must survive. `status_after_effect` is the
//! plainest member of that class: a create that took effect and answered an error status (a
//! gateway timing out on a slow backend), so the client sends it again.

use std::collections::BTreeMap;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

/// One simulated service (XDR has two hosts, each its own service here).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Service {
    /// Cisco Secure Endpoint API v1.
    Amp,
    /// Cisco XDR token host (`/iroh/oauth2/token`).
    XdrAuth,
    /// Cisco XDR private intel host (CTIA).
    XdrApi,
    /// ServiceNow Table API.
    Snow,
}

/// What a faulted request gets.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    /// Answer with this status and a gateway-style HTML body (500, 502, 503, 504, ...).
    Status { code: u16 },
    /// Wait this long, then carry on (other faults may still apply).
    Latency { ms: u64 },
    /// Close the connection without sending anything.
    DropConnection,
    /// Run the request, send the headers (with the full Content-Length) and half the body,
    /// then close the connection.
    DropMidBody,
    /// Run the request, answer 200 with the body cut in half (consistent Content-Length).
    TruncatedJson,
    /// Answer 200 with a body that is not JSON at all.
    MalformedJson,
    /// Run the request and pad the JSON answer with whitespace up to `bytes`.
    Oversize { bytes: usize },
    /// Run the request (its effect happens), then answer this status with a gateway-style
    /// HTML body instead of the service's answer: a create whose answer is lost.
    StatusAfterEffect { code: u16 },
    /// The service's own 429 flavour; `bare` drops every rate-limit header.
    TooManyRequests { retry_after_secs: u64, bare: bool },
    /// A 429 naming its wait in exactly one form (see [`WaitForm`]), from any service: what
    /// a gateway in front of it, or another rule of it, may send.
    TooManyRequestsNamed { wait_secs: u64, form: WaitForm },
    /// Redirect to `location` + the original path and query (default: the decoy route on the
    /// control listener, which records what followed the redirect).
    Redirect {
        status: u16,
        location: Option<String>,
    },
}

/// How a 429 names its wait. RFC 9110 §10.2.3: `Retry-After` is "either an HTTP-date or
/// a number of seconds", and a client must take both; ServiceNow's rate-limit rules add
/// `X-RateLimit-Reset`, a Unix time in seconds ("Inbound REST API rate limiting",
/// https://www.servicenow.com/docs/bundle/australia-api-reference/page/integrate/inbound-rest/concept/inbound-REST-API-rate-limiting.html);
/// a proxy that strips `Retry-After` leaves the reset alone — the pessimistic reading.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WaitForm {
    /// `Retry-After: <delta-seconds>`.
    RetryAfterSeconds,
    /// `Retry-After: <HTTP-date>` (IMF-fixdate, RFC 9110 §5.6.7).
    RetryAfterDate,
    /// `X-RateLimit-Reset: <unix seconds>` and nothing else.
    EpochReset,
}

/// When a fault fires.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Schedule {
    /// Every matching request.
    Always(FaultKind),
    /// One step per matching request; `None` lets that request pass. When the steps run out
    /// the fault is exhausted and every request passes.
    Sequence(Vec<Option<FaultKind>>),
    /// Each matching request with probability `p` (seeded, so runs repeat).
    Probability { p: f64, kind: FaultKind },
}

/// A fault rule.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Fault {
    pub service: Service,
    /// Path pattern matched segment by segment as a prefix; `*` matches any one segment
    /// (`/v1/computers/*/isolation`). `/` matches everything.
    pub route: String,
    /// Only this method (case-insensitive), if set.
    #[serde(default)]
    pub method: Option<String>,
    /// Only requests of this tenant (AMP client id, XDR client id, ServiceNow user), if set.
    #[serde(default)]
    pub tenant: Option<String>,
    pub schedule: Schedule,
}

impl Fault {
    pub fn new(service: Service, route: impl Into<String>, schedule: Schedule) -> Fault {
        Fault {
            service,
            route: route.into(),
            method: None,
            tenant: None,
            schedule,
        }
    }

    /// Every matching request gets `kind`.
    pub fn always(service: Service, route: impl Into<String>, kind: FaultKind) -> Fault {
        Fault::new(service, route, Schedule::Always(kind))
    }

    /// The next `n` matching requests get `kind`, then the fault is exhausted.
    pub fn times(service: Service, route: impl Into<String>, n: usize, kind: FaultKind) -> Fault {
        Fault::new(service, route, Schedule::Sequence(vec![Some(kind); n]))
    }

    /// Scripted steps, e.g. `[Some(503), Some(503), None]`.
    pub fn sequence(
        service: Service,
        route: impl Into<String>,
        steps: Vec<Option<FaultKind>>,
    ) -> Fault {
        Fault::new(service, route, Schedule::Sequence(steps))
    }

    pub fn probability(
        service: Service,
        route: impl Into<String>,
        p: f64,
        kind: FaultKind,
    ) -> Fault {
        Fault::new(service, route, Schedule::Probability { p, kind })
    }

    pub fn for_tenant(mut self, tenant: impl Into<String>) -> Fault {
        self.tenant = Some(tenant.into());
        self
    }

    pub fn for_method(mut self, method: impl Into<String>) -> Fault {
        self.method = Some(method.into());
        self
    }

    fn matches(&self, service: Service, method: &str, path: &str, tenant: Option<&str>) -> bool {
        self.service == service
            && self
                .method
                .as_deref()
                .is_none_or(|m| m.eq_ignore_ascii_case(method))
            && self.tenant.as_deref().is_none_or(|t| Some(t) == tenant)
            && route_matches(&self.route, path)
    }
}

/// Segment-wise prefix match with `*` wildcards.
pub(crate) fn route_matches(pattern: &str, path: &str) -> bool {
    let mut path_segments = path.split('/').filter(|s| !s.is_empty());
    pattern.split('/').filter(|s| !s.is_empty()).all(|want| {
        path_segments
            .next()
            .is_some_and(|got| want == "*" || want == got)
    })
}

/// A registered fault and how often it fired.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FaultStatus {
    pub id: u64,
    pub fault: Fault,
    /// Requests this fault altered (latency included).
    pub fired: u64,
    /// A sequence whose steps all ran.
    pub exhausted: bool,
}

struct Entry {
    fault: Fault,
    cursor: usize,
    fired: u64,
}

/// What to do with one request.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Plan {
    pub delay: Duration,
    pub action: Option<FaultKind>,
    /// The fault that gave `action`.
    pub action_from: Option<u64>,
}

pub(crate) struct FaultBook {
    next_id: u64,
    entries: BTreeMap<u64, Entry>,
    rng: StdRng,
}

impl FaultBook {
    pub fn new(seed: u64) -> FaultBook {
        FaultBook {
            next_id: 1,
            entries: BTreeMap::new(),
            rng: StdRng::seed_from_u64(seed),
        }
    }

    pub fn add(&mut self, fault: Fault) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.entries.insert(
            id,
            Entry {
                fault,
                cursor: 0,
                fired: 0,
            },
        );
        id
    }

    pub fn remove(&mut self, id: u64) -> bool {
        self.entries.remove(&id).is_some()
    }

    pub fn clear(&mut self) {
        self.entries.clear();
    }

    pub fn list(&self) -> Vec<FaultStatus> {
        self.entries
            .iter()
            .map(|(&id, e)| FaultStatus {
                id,
                fault: e.fault.clone(),
                fired: e.fired,
                exhausted: matches!(&e.fault.schedule, Schedule::Sequence(s) if e.cursor >= s.len()),
            })
            .collect()
    }

    /// Takes back one firing of fault `id` whose action could not alter the answer
    /// (a body fault on an answer that has no body): it stays due for the next request.
    pub fn unfire(&mut self, id: u64) {
        if let Some(entry) = self.entries.get_mut(&id) {
            entry.fired = entry.fired.saturating_sub(1);
            if matches!(entry.fault.schedule, Schedule::Sequence(_)) {
                entry.cursor = entry.cursor.saturating_sub(1);
            }
        }
    }

    pub fn plan(
        &mut self,
        service: Service,
        method: &str,
        path: &str,
        tenant: Option<&str>,
    ) -> Plan {
        let mut plan = Plan::default();
        for (&id, entry) in &mut self.entries {
            if !entry.fault.matches(service, method, path, tenant) {
                continue;
            }
            let step = match &entry.fault.schedule {
                Schedule::Always(kind) => Some(kind.clone()),
                Schedule::Sequence(steps) => {
                    let step = steps.get(entry.cursor).cloned().flatten();
                    entry.cursor = (entry.cursor + 1).min(steps.len());
                    step
                }
                Schedule::Probability { p, kind } => {
                    (self.rng.random::<f64>() < *p).then(|| kind.clone())
                }
            };
            let Some(kind) = step else { continue };
            entry.fired += 1;
            match kind {
                FaultKind::Latency { ms } => plan.delay += Duration::from_millis(ms),
                other if plan.action.is_none() => {
                    plan.action = Some(other);
                    plan.action_from = Some(id);
                }
                _ => {}
            }
        }
        plan
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_patterns_match_by_segment_prefix() {
        assert!(route_matches("/", "/v1/events"));
        assert!(route_matches("/v1/events", "/v1/events"));
        assert!(route_matches("/v1", "/v1/events"));
        assert!(!route_matches("/v1/event", "/v1/events"));
        assert!(route_matches(
            "/v1/computers/*/isolation",
            "/v1/computers/abc/isolation"
        ));
        assert!(!route_matches(
            "/v1/computers/*/isolation",
            "/v1/computers/abc"
        ));
    }

    #[test]
    fn sequence_runs_once_then_passes() {
        let mut book = FaultBook::new(1);
        book.add(Fault::sequence(
            Service::Amp,
            "/v1/events",
            vec![
                Some(FaultKind::Status { code: 503 }),
                None,
                Some(FaultKind::Status { code: 502 }),
            ],
        ));
        let codes: Vec<Option<FaultKind>> = (0..4)
            .map(|_| book.plan(Service::Amp, "GET", "/v1/events", None).action)
            .collect();
        assert_eq!(
            codes,
            vec![
                Some(FaultKind::Status { code: 503 }),
                None,
                Some(FaultKind::Status { code: 502 }),
                None
            ]
        );
        assert!(book.list()[0].exhausted);
        assert_eq!(book.list()[0].fired, 2);
    }

    #[test]
    fn a_firing_taken_back_stays_due_for_the_next_request() {
        let mut book = FaultBook::new(1);
        let id = book.add(Fault::times(
            Service::Amp,
            "/v1/computers",
            1,
            FaultKind::TruncatedJson,
        ));
        let first = book.plan(Service::Amp, "OPTIONS", "/v1/computers/g/isolation", None);
        assert_eq!(first.action_from, Some(id));
        book.unfire(id);
        assert_eq!(book.list()[0].fired, 0);
        let second = book.plan(Service::Amp, "GET", "/v1/computers/g", None);
        assert_eq!(second.action, Some(FaultKind::TruncatedJson));
        assert_eq!(book.list()[0].fired, 1);
        assert!(book.list()[0].exhausted);
    }

    #[test]
    fn latency_adds_up_and_tenant_filters() {
        let mut book = FaultBook::new(1);
        book.add(Fault::always(
            Service::Snow,
            "/",
            FaultKind::Latency { ms: 10 },
        ));
        book.add(Fault::always(Service::Snow, "/", FaultKind::Latency { ms: 5 }).for_tenant("a"));
        book.add(Fault::always(Service::Snow, "/api", FaultKind::MalformedJson).for_method("post"));
        let a = book.plan(Service::Snow, "POST", "/api/now/table/incident", Some("a"));
        assert_eq!(a.delay, Duration::from_millis(15));
        assert_eq!(a.action, Some(FaultKind::MalformedJson));
        let b = book.plan(Service::Snow, "GET", "/api/now/table/incident", Some("b"));
        assert_eq!(b.delay, Duration::from_millis(10));
        assert_eq!(b.action, None);
        assert_eq!(book.plan(Service::Amp, "GET", "/", None), Plan::default());
    }

    #[test]
    fn probability_is_seeded() {
        let run = || {
            let mut book = FaultBook::new(42);
            book.add(Fault::probability(
                Service::Amp,
                "/",
                0.5,
                FaultKind::Status { code: 500 },
            ));
            (0..64)
                .map(|_| {
                    book.plan(Service::Amp, "GET", "/v1/version", None)
                        .action
                        .is_some()
                })
                .collect::<Vec<_>>()
        };
        let first = run();
        assert_eq!(first, run());
        let hits = first.iter().filter(|h| **h).count();
        assert!((16..=48).contains(&hits), "{hits}");
    }
}
