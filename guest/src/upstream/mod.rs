//! Calls to the three services: one retry policy, each service's rate-limit semantics,
//! a time budget, call accounting, and error messages that never carry a secret.

mod amp;
mod snow;
mod xdr;

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use amp::{Isolation, IsolationSupport, PAGE_LIMIT};
pub use snow::{OPEN_STATES, SnowClosed};
pub use xdr::{
    BULK_CHUNK, EXTERNAL_KEY_PREFIXES, ImportAnswer, ImportProblem, XdrRead, read_import_answer,
};

use crate::config::Config;
use crate::ports::{Ports, Request};
use crate::retry::{RetryPolicy, Service, amp_wait_ms, cooldown_ms, usable_429_wait_ms};
use crate::store;

pub use mssp_contract::report::{Calls, Counters};

/// Counting one call on [`Calls`] by the guest's own [`Service`].
trait Bump {
    fn bump(&mut self, svc: Service);
}

impl Bump for Calls {
    fn bump(&mut self, svc: Service) {
        match svc {
            Service::Amp => self.amp += 1,
            Service::Xdr => self.xdr += 1,
            Service::Snow => self.snow += 1,
        }
    }
}

/// Adds one invocation to the stored counters (one read, at most one write). Losing
/// an update only under-counts; it never fails the invocation.
pub fn record_counters(kv: &mut dyn crate::ports::Kv, r: &crate::report::TickReport) {
    let mut c: Counters = store::get_json(kv, store::COUNTERS)
        .ok()
        .flatten()
        .unwrap_or_default();
    if c.add(r) {
        let _ = store::put_json(kv, store::COUNTERS, &c);
    }
}

/// Header-less 429s in a row, per service (0: no cooldown running).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Strikes {
    #[serde(default)]
    pub amp: u32,
    #[serde(default)]
    pub xdr: u32,
    #[serde(default)]
    pub snow: u32,
}

impl Strikes {
    fn is_zero(&self) -> bool {
        *self == Strikes::default()
    }
}

/// The rate-limit state of one tenant's upstream accounts (KV key `throttle`, shown by
/// `GET /v1/status` as `rate_limited_until`): until when (Unix ms) each service is left
/// alone, and how many 429s in a row named no usable wait.
///
/// Two kinds of hold, one record:
/// - a **server wait**: a 429 (or a used-up Secure Endpoint window) named how long;
///   a short one is slept inline, a long one waited out by later ticks;
/// - a **cooldown**: a 429 named no usable wait (no header, unparseable, negative,
///   zero, an epoch in the past). The service is not called again — no inline retry,
///   nothing more in this tick, nothing in later ticks — until the cooldown ends; it
///   grows with each such 429 in a row ([`crate::retry::cooldown_ms`]) and ends when
///   the service's last answer in an invocation was neither a 429 nor a 5xx
///   ([`Throttle::settle`]; a lookup answered just before a create refused again does
///   not reset the growth).
///
/// Pure data and arithmetic, no I/O: whoever owns the account (today the tenant's
/// guest; later the host, for shared accounts) loads it, asks [`Throttle::hold`] before
/// a call, reports each answer with [`Throttle::on_answer`] and, at the end of a run of
/// calls, [`Throttle::settle`]s each service whose last answer was a success.
/// Old records (before cooldowns) load with no strikes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Throttle {
    #[serde(default)]
    pub amp_until_ms: i64,
    #[serde(default)]
    pub xdr_until_ms: i64,
    #[serde(default)]
    pub snow_until_ms: i64,
    /// Header-less 429s in a row per service; non-zero while a cooldown runs.
    #[serde(default, skip_serializing_if = "Strikes::is_zero")]
    pub cooldown_strikes: Strikes,
}

/// What stands before a call to one service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hold {
    /// Nothing: call.
    Free,
    /// The server named a wait: this many ms are left (may be slept if short).
    ServerWait(u64),
    /// A cooldown after header-less 429s: this many ms left, after `strikes` in a row.
    /// Never slept inline: the service is left alone until it ends.
    Cooldown { left_ms: u64, strikes: u32 },
}

impl Throttle {
    fn slot(&mut self, svc: Service) -> &mut i64 {
        match svc {
            Service::Amp => &mut self.amp_until_ms,
            Service::Xdr => &mut self.xdr_until_ms,
            Service::Snow => &mut self.snow_until_ms,
        }
    }

    fn strikes_mut(&mut self, svc: Service) -> &mut u32 {
        match svc {
            Service::Amp => &mut self.cooldown_strikes.amp,
            Service::Xdr => &mut self.cooldown_strikes.xdr,
            Service::Snow => &mut self.cooldown_strikes.snow,
        }
    }

    /// Until when (Unix ms) the service is held back (0 or past: not held).
    pub fn until_ms(&self, svc: Service) -> i64 {
        match svc {
            Service::Amp => self.amp_until_ms,
            Service::Xdr => self.xdr_until_ms,
            Service::Snow => self.snow_until_ms,
        }
    }

    /// Header-less 429s in a row from the service.
    pub fn strikes(&self, svc: Service) -> u32 {
        match svc {
            Service::Amp => self.cooldown_strikes.amp,
            Service::Xdr => self.cooldown_strikes.xdr,
            Service::Snow => self.cooldown_strikes.snow,
        }
    }

    /// What stands before a call to `svc` at `now_ms`.
    pub fn hold(&self, svc: Service, now_ms: i64) -> Hold {
        let left = self.until_ms(svc).saturating_sub(now_ms);
        if left <= 0 {
            return Hold::Free;
        }
        match self.strikes(svc) {
            0 => Hold::ServerWait(left as u64),
            strikes => Hold::Cooldown {
                left_ms: left as u64,
                strikes,
            },
        }
    }

    /// Holds the service until `until_ms` (a server-named wait); never shortens a hold.
    /// Returns whether the record changed.
    pub fn hold_until(&mut self, svc: Service, until_ms: i64) -> bool {
        let slot = self.slot(svc);
        if until_ms > *slot {
            *slot = until_ms;
            return true;
        }
        false
    }

    /// Records one answer of `svc` at `now_ms`: `status`, and the wait it named when it
    /// is a 429 (`None`: no usable wait). A 429 without a wait starts the next, longer
    /// cooldown (`base_ms`, `random` for jitter; see [`cooldown_ms`]) and returns its
    /// length in ms. The second value says whether the record changed.
    pub fn on_answer(
        &mut self,
        svc: Service,
        status: u16,
        named_wait_ms: Option<u64>,
        now_ms: i64,
        base_ms: u64,
        random: u64,
    ) -> (Option<u64>, bool) {
        match (status, named_wait_ms) {
            (429, Some(w)) => (None, self.hold_until(svc, now_ms.saturating_add(w as i64))),
            (429, None) => {
                let strikes = self.strikes_mut(svc);
                *strikes = strikes.saturating_add(1);
                let n = *strikes;
                let cooldown = cooldown_ms(base_ms, n, random);
                let until = now_ms.saturating_add(i64::try_from(cooldown).unwrap_or(i64::MAX));
                self.hold_until(svc, until);
                (Some(cooldown), true)
            }
            _ => (None, false),
        }
    }

    /// Ends the series of header-less 429s of `svc` (its last answer was a success).
    /// Returns whether the record changed.
    pub fn settle(&mut self, svc: Service) -> bool {
        let strikes = self.strikes_mut(svc);
        std::mem::replace(strikes, 0) != 0
    }

    /// Whether an answer of this status ends a series of header-less 429s when it is
    /// the service's last one (not a 429, 408 or 5xx).
    pub fn is_success(status: u16) -> bool {
        status < 500 && status != 429 && status != 408
    }

    /// The cooldowns running at `now_ms`, for the tick report.
    pub fn cooldowns(&self, now_ms: i64) -> Vec<crate::report::Cooldown> {
        [Service::Amp, Service::Xdr, Service::Snow]
            .into_iter()
            .filter_map(|svc| match self.hold(svc, now_ms) {
                Hold::Cooldown { left_ms, strikes } => Some(crate::report::Cooldown {
                    service: svc.name().to_string(),
                    until: mssp_contract::civil::iso_millis(self.until_ms(svc)),
                    strikes,
                    reason: format!(
                        "{strikes} answer(s) 429 in a row without a usable rate-limit header; \
                         no calls to {} for another {} s",
                        svc.name(),
                        left_ms.div_ceil(1000)
                    ),
                }),
                _ => None,
            })
            .collect()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// A definite answer that retrying will not change (4xx other than 408/429).
    Status(u16),
    /// 5xx, timeouts, dropped connections, malformed bodies: retries exhausted.
    Transient,
    /// The service asked us to wait longer than this tick can.
    RateLimited,
    /// The tick's time budget ran out.
    OutOfBudget,
    /// The host's outbound policy refused the destination.
    Denied,
    /// A usable answer could not be made of the response.
    Invalid,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallError {
    pub service: Service,
    /// `POST /ctia/incident`.
    pub what: String,
    pub kind: ErrorKind,
    pub detail: String,
    /// The request may have reached the server (a create must look before repeating).
    pub maybe_sent: bool,
    /// A server-requested or computed wait before trying again.
    pub wait_ms: Option<u64>,
    /// The host held the request back (its shared account's budget or cooldown,
    /// [`mssp_contract::DEFERRED_HEADER`]): nothing reached the service, no retry was
    /// spent, and the service is not called again in this invocation. Always with
    /// [`ErrorKind::RateLimited`].
    pub held_by_host: bool,
}

impl CallError {
    pub fn status(&self) -> Option<u16> {
        match self.kind {
            ErrorKind::Status(s) => Some(s),
            _ => None,
        }
    }
}

impl fmt::Display for CallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.service.name(), self.what, self.detail)
    }
}

/// A successful response: status, headers and JSON body (`Null` when empty).
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub json: Value,
    /// The body was not empty but not JSON either (a damaged answer, when JSON was
    /// not required).
    pub garbled: bool,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        crate::ports::find_header(&self.headers, name)
    }
}

enum Failure {
    Retry {
        detail: String,
        status: Option<u16>,
        wait_ms: Option<u64>,
        sent: bool,
    },
    Fatal(CallError),
}

/// Longest excerpt of an upstream error body kept in messages.
const ERROR_EXCERPT: usize = 300;

/// The human message of an upstream error body, in each service's envelope.
fn error_message(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let from_json = serde_json::from_slice::<Value>(body).ok().and_then(|v| {
        let pick = |p: &str| v.pointer(p).and_then(Value::as_str).map(String::from);
        pick("/errors/0/details/0")
            .or_else(|| pick("/errors/0/description"))
            .or_else(|| {
                let m = pick("/error/message")?;
                Some(match pick("/error/detail") {
                    Some(d) if !d.is_empty() => format!("{m} ({d})"),
                    _ => m,
                })
            })
            .or_else(|| pick("/message"))
            .or_else(|| pick("/error_description"))
            .or_else(|| pick("/error"))
    });
    excerpt(&from_json.unwrap_or_else(|| text.trim().to_string()))
}

/// The first characters of an upstream message, marked when cut.
fn excerpt(msg: &str) -> String {
    let mut out: String = msg.chars().take(ERROR_EXCERPT).collect();
    if msg.chars().count() > ERROR_EXCERPT {
        out.push('…');
    }
    out
}

/// The upstream side of one invocation.
pub struct Upstream<'a, 'p> {
    pub ports: &'a mut Ports<'p>,
    pub cfg: &'a Config,
    policy: RetryPolicy,
    /// Monotonic ms after which no new call starts.
    deadline_ms: u64,
    pub throttle: Throttle,
    throttle_changed: bool,
    xdr_token: Option<String>,
    pub calls: Calls,
    /// Answers that were 429 (rate limited), per service.
    pub rate_limited: Calls,
    /// 429s without a usable wait, each of which started a cooldown, per service.
    pub cooldowns_started: Calls,
    /// Whether each service's last answer in this invocation was a success.
    last_answer_ok: std::collections::HashMap<Service, bool>,
    /// Services the host held back in this invocation ([`CallError::held_by_host`]), with
    /// until when (Unix ms) and why: not called again in it.
    held_by_host: std::collections::BTreeMap<Service, (i64, String)>,
    /// Calls that gave no usable answer, per service (see [`TickReport::failed`]).
    ///
    /// [`TickReport::failed`]: crate::report::TickReport::failed
    pub failed: Calls,
    /// Failed attempts that were tried again inside this invocation since the last
    /// [`Upstream::take_retried`], with the last one's message.
    retried: (u32, Option<String>),
}

impl<'a, 'p> Upstream<'a, 'p> {
    pub fn new(ports: &'a mut Ports<'p>, cfg: &'a Config, budget_ms: u64) -> Self {
        let deadline_ms = ports.clock.monotonic_ms().saturating_add(budget_ms);
        let throttle = store::get_json(ports.kv, store::THROTTLE)
            .ok()
            .flatten()
            .unwrap_or_default();
        Upstream {
            ports,
            cfg,
            policy: RetryPolicy::STANDARD,
            deadline_ms,
            throttle,
            throttle_changed: false,
            xdr_token: None,
            calls: Calls::default(),
            rate_limited: Calls::default(),
            cooldowns_started: Calls::default(),
            last_answer_ok: std::collections::HashMap::new(),
            held_by_host: std::collections::BTreeMap::new(),
            failed: Calls::default(),
            retried: (0, None),
        }
    }

    /// Puts this invocation's call accounting into its report.
    pub fn account(&self, report: &mut crate::report::TickReport) {
        report.calls = self.calls;
        report.rate_limited = self.rate_limited;
        report.failed = self.failed;
        report.cooldowns_started = self.cooldowns_started;
        report.cooldowns = self.throttle.cooldowns(self.now_ms());
        for (svc, (until, why)) in &self.held_by_host {
            report.cooldowns.push(crate::report::Cooldown {
                service: svc.name().to_string(),
                until: mssp_contract::civil::iso_millis(*until),
                strikes: 0,
                reason: why.clone(),
            });
        }
    }

    /// How many failed attempts were tried again (and the last one's message) since
    /// the previous call; resets the count. A step that succeeded after retries
    /// records this in the incident's audit trail.
    pub fn take_retried(&mut self) -> (u32, Option<String>) {
        std::mem::take(&mut self.retried)
    }

    /// Notes a failed attempt that is about to be tried again.
    fn retrying(&mut self, e: &CallError) {
        self.retried.0 += 1;
        self.retried.1 = Some(e.to_string());
    }

    pub fn now_ms(&self) -> i64 {
        self.ports.clock.now_ms()
    }

    pub fn remaining_ms(&self) -> u64 {
        self.deadline_ms
            .saturating_sub(self.ports.clock.monotonic_ms())
    }

    /// Persists rate-limit waits learnt in this invocation, for the next ones.
    pub fn finish(&mut self) {
        for (svc, ok) in std::mem::take(&mut self.last_answer_ok) {
            if ok {
                self.throttle_changed |= self.throttle.settle(svc);
            }
        }
        if self.throttle_changed {
            // Losing this only costs one early call that gets a 429 again.
            let _ = store::put_json(self.ports.kv, store::THROTTLE, &self.throttle);
            self.throttle_changed = false;
        }
    }

    fn throttle_until(&mut self, svc: Service, until_ms: i64) {
        self.throttle_changed |= self.throttle.hold_until(svc, until_ms);
    }

    fn error(&self, svc: Service, req: &Request, kind: ErrorKind, detail: String) -> CallError {
        CallError {
            service: svc,
            what: req.describe(),
            kind,
            detail: self.cfg.redact(&detail),
            maybe_sent: false,
            wait_ms: None,
            held_by_host: false,
        }
    }

    /// Before a call: respect a known rate-limit wait (sleeping if it is short) and the
    /// time budget.
    /// Fails when the host held `svc` back earlier in this invocation
    /// ([`CallError::held_by_host`]): a step that would write down "about to send" first
    /// asks this, so nothing is marked as maybe sent that cannot be sent.
    pub fn held(&self, svc: Service, what: &str) -> Result<(), CallError> {
        let Some((until, why)) = self.held_by_host.get(&svc) else {
            return Ok(());
        };
        Err(CallError {
            service: svc,
            what: what.to_string(),
            kind: ErrorKind::RateLimited,
            detail: format!("{why} (earlier in this invocation)"),
            maybe_sent: false,
            wait_ms: Some(until.saturating_sub(self.now_ms()).max(0) as u64),
            held_by_host: true,
        })
    }

    fn may_call(&mut self, svc: Service, req: &Request) -> Result<(), CallError> {
        self.held(svc, &req.describe())?;
        let hold = self.throttle.hold(svc, self.now_ms());
        if let Hold::Cooldown { left_ms, strikes } = hold {
            let mut e = self.error(
                svc,
                req,
                ErrorKind::RateLimited,
                format!(
                    "cooling down for another {} s after {strikes} answer(s) 429 in a row \
                     without a usable rate-limit header; not called until then",
                    left_ms.div_ceil(1000)
                ),
            );
            e.wait_ms = Some(left_ms);
            return Err(e);
        }
        if let Hold::ServerWait(wait) = hold {
            if wait > self.policy.max_inline_wait_ms || wait >= self.remaining_ms() {
                let mut e = self.error(
                    svc,
                    req,
                    ErrorKind::RateLimited,
                    format!("rate limited for another {} s", wait.div_ceil(1000)),
                );
                e.wait_ms = Some(wait);
                return Err(e);
            }
            self.ports.clock.sleep_ms(wait);
        }
        if self.remaining_ms() == 0 {
            return Err(self.error(
                svc,
                req,
                ErrorKind::OutOfBudget,
                "tick time budget used up; left for the next tick".into(),
            ));
        }
        Ok(())
    }

    fn attempt(
        &mut self,
        svc: Service,
        req: &Request,
        expect_json: bool,
    ) -> Result<Reply, Failure> {
        let result = self.attempt_inner(svc, req, expect_json);
        if matches!(&result, Err(Failure::Fatal(e)) if e.held_by_host) {
            // Answered by the host: no call reached the service.
            return result;
        }
        self.calls.bump(svc);
        if result.is_err() {
            self.failed.bump(svc);
        }
        result
    }

    /// The host's own answer when it held the request back (a 429 carrying
    /// [`mssp_contract::DEFERRED_HEADER`]): the service is left alone for the rest of
    /// this invocation, without a retry; `None` for any other answer.
    fn held_back(
        &mut self,
        svc: Service,
        req: &Request,
        resp: &crate::ports::Response,
    ) -> Option<CallError> {
        if resp.status != 429 {
            return None;
        }
        let reason = resp.header(mssp_contract::DEFERRED_HEADER)?.to_string();
        let secs = resp
            .header("retry-after")
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(1)
            .clamp(1, crate::retry::MAX_SERVER_WAIT_MS / 1000);
        let why = format!(
            "held back by the host ({reason} of the shared {} account); retry after {secs} s, \
             not called again in this invocation",
            svc.name()
        );
        let until = self.now_ms().saturating_add((secs * 1000) as i64);
        self.held_by_host.insert(svc, (until, why.clone()));
        let mut e = self.error(svc, req, ErrorKind::RateLimited, why);
        e.wait_ms = Some(secs * 1000);
        e.held_by_host = true;
        Some(e)
    }

    fn attempt_inner(
        &mut self,
        svc: Service,
        req: &Request,
        expect_json: bool,
    ) -> Result<Reply, Failure> {
        let resp = match self.ports.http.send(req) {
            Ok(r) => r,
            Err(e) if e.is_transient() => {
                return Err(Failure::Retry {
                    detail: e.to_string(),
                    status: None,
                    wait_ms: None,
                    sent: true,
                });
            }
            Err(crate::ports::HttpError::Denied(m)) => {
                let detail = format!("{m}: {} is not allowed for this tenant", origin(&req.url));
                return Err(Failure::Fatal(self.error(
                    svc,
                    req,
                    ErrorKind::Denied,
                    detail,
                )));
            }
            Err(e) => {
                return Err(Failure::Fatal(self.error(
                    svc,
                    req,
                    ErrorKind::Invalid,
                    e.to_string(),
                )));
            }
        };
        if let Some(e) = self.held_back(svc, req, &resp) {
            return Err(Failure::Fatal(e));
        }
        if resp.status == 429 {
            self.rate_limited.bump(svc);
        }
        let now = self.now_ms();
        let server_wait = match svc {
            _ if resp.status == 429 => usable_429_wait_ms(svc, &resp, now),
            Service::Amp => amp_wait_ms(&resp),
            _ => None,
        };
        if let Some(w) = server_wait {
            // On Secure Endpoint this also covers a used-up window on a 2xx answer.
            self.throttle_until(svc, now + w as i64);
        }
        let random = self.ports.clock.random_u64();
        let base_ms = self.cfg.rate_limit_cooldown_seconds.saturating_mul(1000);
        let (cooldown, changed) =
            self.throttle
                .on_answer(svc, resp.status, server_wait, now, base_ms, random);
        self.throttle_changed |= changed;
        self.last_answer_ok
            .insert(svc, Throttle::is_success(resp.status));
        if let Some(cooldown) = cooldown {
            self.cooldowns_started.bump(svc);
            return Err(Failure::Retry {
                detail: format!(
                    "HTTP 429 without a usable rate-limit header: {}; {} left alone for {} s \
                     ({} in a row)",
                    error_message(&resp.body),
                    svc.name(),
                    cooldown.div_ceil(1000),
                    self.throttle.strikes(svc)
                ),
                status: Some(429),
                wait_ms: Some(cooldown),
                sent: false,
            });
        }
        match resp.status {
            200..=299 => {
                let mut garbled = false;
                let json = if resp.body.iter().all(u8::is_ascii_whitespace) {
                    if expect_json {
                        return Err(Failure::Retry {
                            detail: format!("HTTP {} with an empty body", resp.status),
                            status: Some(resp.status),
                            wait_ms: None,
                            sent: true,
                        });
                    }
                    Value::Null
                } else {
                    match serde_json::from_slice(&resp.body) {
                        Ok(v) => v,
                        Err(e) if expect_json => {
                            return Err(Failure::Retry {
                                detail: format!("HTTP {} with malformed JSON: {e}", resp.status),
                                status: Some(resp.status),
                                wait_ms: None,
                                sent: true,
                            });
                        }
                        Err(_) => {
                            garbled = true;
                            Value::Null
                        }
                    }
                };
                Ok(Reply {
                    status: resp.status,
                    headers: resp.headers,
                    json,
                    garbled,
                })
            }
            408 | 429 | 500..=599 => Err(Failure::Retry {
                detail: format!("HTTP {}: {}", resp.status, error_message(&resp.body)),
                status: Some(resp.status),
                wait_ms: server_wait,
                sent: resp.status != 429,
            }),
            s => Err(Failure::Fatal(self.error(
                svc,
                req,
                ErrorKind::Status(s),
                format!("HTTP {s}: {}", error_message(&resp.body)),
            ))),
        }
    }

    /// The wait before attempt `attempt + 1`, or why there is none in this tick.
    fn plan_wait(&mut self, attempt: u32, err: &CallError) -> Result<u64, ()> {
        if err.held_by_host {
            // The host answered for the service: no retry is spent on it.
            return Err(());
        }
        if matches!(
            self.throttle.hold(err.service, self.now_ms()),
            Hold::Cooldown { .. }
        ) {
            // A cooldown is never waited out inline.
            return Err(());
        }
        let random = self.ports.clock.random_u64();
        let wait = match err.wait_ms {
            Some(w) => self.policy.server_wait_ms(w, random),
            None => self.policy.backoff_ms(attempt, random),
        };
        if attempt + 1 >= self.policy.max_attempts
            || wait > self.policy.max_inline_wait_ms
            || wait >= self.remaining_ms()
        {
            return Err(());
        }
        Ok(wait)
    }

    /// One attempt, no retry (for creates, whose retry must look up first).
    pub fn send_once(
        &mut self,
        svc: Service,
        req: &Request,
        expect_json: bool,
    ) -> Result<Reply, CallError> {
        self.may_call(svc, req)?;
        match self.attempt(svc, req, expect_json) {
            Ok(r) => Ok(r),
            Err(Failure::Fatal(e)) => Err(e),
            Err(Failure::Retry {
                detail,
                status,
                wait_ms,
                sent,
            }) => {
                let kind = if status == Some(429) {
                    ErrorKind::RateLimited
                } else {
                    ErrorKind::Transient
                };
                let mut e = self.error(svc, req, kind, detail);
                e.maybe_sent = sent;
                e.wait_ms = wait_ms;
                Err(e)
            }
        }
    }

    /// A call with the bridge's retry policy: safe for reads and idempotent writes.
    pub fn send(
        &mut self,
        svc: Service,
        req: &Request,
        expect_json: bool,
    ) -> Result<Reply, CallError> {
        self.send_checked(svc, req, expect_json, &|_| Ok(()))
    }

    /// As `send`, where a 2xx answer that `check` refuses counts as damaged in transit
    /// (retried like a 5xx; the request may have had its effect).
    pub fn send_checked(
        &mut self,
        svc: Service,
        req: &Request,
        expect_json: bool,
        check: &dyn Fn(&Reply) -> Result<(), String>,
    ) -> Result<Reply, CallError> {
        let mut attempt = 0;
        loop {
            let result =
                self.send_once(svc, req, expect_json)
                    .and_then(|reply| match check(&reply) {
                        Ok(()) => Ok(reply),
                        Err(why) => {
                            self.failed.bump(svc);
                            let mut e = self.error(
                                svc,
                                req,
                                ErrorKind::Transient,
                                format!("HTTP {} but {why}", reply.status),
                            );
                            e.maybe_sent = true;
                            Err(e)
                        }
                    });
            match result {
                Err(e) if matches!(e.kind, ErrorKind::Transient | ErrorKind::RateLimited) => {
                    let Ok(wait) = self.plan_wait(attempt, &e) else {
                        return Err(e);
                    };
                    self.retrying(&e);
                    self.ports.clock.sleep_ms(wait);
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    /// Creates something exactly once: when an earlier attempt may have reached the
    /// server (in this tick or before a crash), `lookup` runs before `create` is repeated.
    /// Returns the result and whether it was found rather than created.
    pub fn create_once<T>(
        &mut self,
        already_sent: bool,
        lookup: &mut dyn FnMut(&mut Self) -> Result<Option<T>, CallError>,
        create: &mut dyn FnMut(&mut Self) -> Result<T, CallError>,
    ) -> Result<(T, bool), CallError> {
        let mut maybe_sent = already_sent;
        let mut attempt = 0;
        loop {
            if maybe_sent && let Some(found) = lookup(self)? {
                return Ok((found, true));
            }
            match create(self) {
                Ok(t) => return Ok((t, false)),
                Err(e) if matches!(e.kind, ErrorKind::Transient | ErrorKind::RateLimited) => {
                    maybe_sent |= e.maybe_sent;
                    let Ok(wait) = self.plan_wait(attempt, &e) else {
                        return Err(e);
                    };
                    self.retrying(&e);
                    self.ports.clock.sleep_ms(wait);
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// `scheme://authority` of a base URL.
fn origin(base: &str) -> &str {
    match base.split_once("://") {
        Some((scheme, rest)) => {
            let end = rest.find('/').map_or(base.len(), |i| scheme.len() + 3 + i);
            &base[..end]
        }
        None => base,
    }
}

/// Percent-encodes a path segment or query value (everything but RFC 3986 unreserved
/// characters); the contract's one definition, shared with the host.
pub use mssp_contract::percent_encode as encode;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_messages_come_from_each_envelope() {
        let amp = br#"{"version":"v1.2.0","data":{},"errors":[{"error_code":401,"description":"Unauthorized","details":["Unknown API key or Client ID"]}]}"#;
        assert_eq!(error_message(amp), "Unknown API key or Client ID");
        let snow = br#"{"error":{"message":"No Record found","detail":"ACL"},"status":"failure"}"#;
        assert_eq!(error_message(snow), "No Record found (ACL)");
        let long = "x".repeat(1000);
        assert_eq!(
            error_message(long.as_bytes()).chars().count(),
            ERROR_EXCERPT + 1
        );
    }

    #[test]
    fn origins_and_encoding() {
        assert_eq!(
            origin("https://api.amp.cisco.com"),
            "https://api.amp.cisco.com"
        );
        assert_eq!(origin("http://127.0.0.1:9/amp"), "http://127.0.0.1:9");
        assert_eq!(
            encode("2020-02-20T18:20:38+00:00"),
            "2020-02-20T18%3A20%3A38%2B00%3A00"
        );
        assert_eq!(encode("correlation_id=a^b"), "correlation_id%3Da%5Eb");
    }
}
