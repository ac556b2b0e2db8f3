//! Shared upstream accounts: one request budget and one cooldown per **account**, for
//! every tenant that uses it, enforced in the outbound hook ([`crate::outbound`]) before a
//! request leaves the host.
//!
//! An MSSP runs one XDR organisation and one ServiceNow instance for all its customers;
//! their rate limits are the ceiling of the whole system. An account is an upstream
//! service (`amp`, `xdr`, `snow`, the allowlist's labels) plus a name. A tenant names its
//! accounts in [`crate::TenantSpec::accounts`]; for a service it names none, the account
//! is derived from its configuration ([`derived_name`]: the service's origin and a
//! sha-256 of the credential keys the contract names in
//! [`mssp_contract::ACCOUNT_KEYS`]), so tenants configured with the same upstream
//! credential share one budget without any configuration.
//!
//! Per account:
//! - a **budget** (optional): at most `per_hour` requests per window (default one hour,
//!   [`BudgetSettings::window_secs`]) as a token bucket that never lets more than
//!   `per_hour` through in any window, whatever the upstream's window is (fixed or
//!   sliding): it holds `burst` tokens and refills at `(per_hour − burst) / window`;
//! - a **cooldown**: any 429 of the account holds every tenant using it until the time
//!   the answer named (`Retry-After` in seconds or as an HTTP-date, an epoch
//!   `X-RateLimit-Reset`, Secure Endpoint's seconds-until-reset), or — with no usable
//!   header — for [`BudgetSettings::no_header_cooldown_secs`], doubled for each such
//!   429 in a row (at most 32×, at most an hour);
//! - **fair share**: half of the bucket's depth is a reserve that a *backlogged* tenant
//!   (one the budget deferred after letting it through in the same invocation, until an
//!   invocation of it gets through without a deferral) cannot spend, and the reserve
//!   refills first, so one customer's backlog never takes the tokens another customer's
//!   first detection needs. A tenant held back before it was let through anything (a
//!   quiet customer arriving while the bucket is empty) is not backlogged: the next
//!   reserve token is its.
//!
//! A request held back is answered by the host itself, without any request leaving it:
//! `429` with `Retry-After: N` (whole seconds) and [`DEFERRED_HEADER`]` : budget|cooldown`.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::outbound::Origin;
use crate::secret::SecretString;
use crate::stats::Metrics;

/// The header of an answer the host made itself because the account's budget or
/// cooldown held the request back; its value is the [`DeferReason`] (`budget`,
/// `cooldown`). Such an answer is a `429` with `Retry-After` in whole seconds.
pub use mssp_contract::DEFERRED_HEADER;

/// Longest wait believed from an upstream header (a day); longer is a broken header.
const MAX_SERVER_WAIT: Duration = Duration::from_secs(24 * 3600);
/// Header-less cooldowns grow to at most this many times the first one …
const COOLDOWN_MAX_FACTOR: u32 = 32;
/// … and never beyond an hour.
const COOLDOWN_MAX: Duration = Duration::from_secs(3600);
/// Slots of the "used in the last window" count.
const USE_SLOTS: u32 = 60;

/// Which account one tenant's requests to one service count against.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccountRef {
    /// The service label: `amp`, `xdr` or `snow`.
    pub service: String,
    /// The account's name, shared by every tenant using the account (shown in metrics
    /// and on the status page: never a credential).
    pub name: String,
    /// Requests per budget window (an hour unless [`BudgetSettings::window_secs`] says
    /// otherwise); `None`: the host's default for the service
    /// ([`BudgetSettings::per_hour`]), which may be no budget at all.
    pub per_hour: Option<u32>,
}

/// The host's budget settings (`[budgets]` in the application's settings file).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct BudgetSettings {
    /// Default budget of a Secure Endpoint account, requests per window (none: unlimited
    /// by the host; 429s still start cooldowns).
    pub amp_per_hour: Option<u32>,
    /// Default budget of an XDR account (organisation client): Cisco documents about
    /// 8,000 requests per hour per organisation.
    pub xdr_per_hour: Option<u32>,
    /// Default budget of a ServiceNow account (instance + integration user).
    pub snow_per_hour: Option<u32>,
    /// Length of the budget window in seconds (3600: "per hour"). Shorter only to run an
    /// hour faster in tests and benchmarks, with every other duration scaled alike.
    pub window_secs: f64,
    /// Depth of the bucket, as seconds of budget (60: a minute's share may be spent at
    /// once); half of it is the reserve no backlogged tenant may spend.
    pub burst_secs: f64,
    /// First cooldown after a 429 that names no usable wait, in seconds; doubles for each
    /// further one in a row.
    pub no_header_cooldown_secs: f64,
}

impl Default for BudgetSettings {
    fn default() -> Self {
        Self {
            amp_per_hour: None,
            xdr_per_hour: None,
            snow_per_hour: None,
            window_secs: 3600.0,
            burst_secs: 60.0,
            no_header_cooldown_secs: 60.0,
        }
    }
}

impl BudgetSettings {
    /// The default budget of a service (by label).
    pub fn per_hour(&self, service: &str) -> Option<u32> {
        match service {
            "amp" => self.amp_per_hour,
            "xdr" => self.xdr_per_hour,
            "snow" => self.snow_per_hour,
            _ => None,
        }
    }

    /// Errors: a window, burst or cooldown that is not a positive number of seconds, a
    /// burst longer than the window, a budget of 0 (the message names the setting).
    pub fn validate(&self) -> Result<(), String> {
        for (name, v) in [
            ("window_secs", self.window_secs),
            ("burst_secs", self.burst_secs),
            ("no_header_cooldown_secs", self.no_header_cooldown_secs),
        ] {
            if !(v.is_finite() && v > 0.0) {
                return Err(format!(
                    "budgets.{name} = {v}: must be a positive number of seconds"
                ));
            }
        }
        if self.burst_secs > self.window_secs {
            return Err(format!(
                "budgets.burst_secs = {} is longer than budgets.window_secs = {}",
                self.burst_secs, self.window_secs
            ));
        }
        for service in ["amp", "xdr", "snow"] {
            check_per_hour(
                &format!("budgets.{service}_per_hour"),
                self.per_hour(service),
            )?;
        }
        Ok(())
    }

    fn window(&self) -> Duration {
        Duration::from_secs_f64(self.window_secs)
    }
}

fn check_per_hour(what: &str, per_hour: Option<u32>) -> Result<(), String> {
    if per_hour == Some(0) {
        return Err(format!(
            "{what} = 0: a budget allows at least one request (leave it unset for none)"
        ));
    }
    Ok(())
}

/// Why the host answered a request itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DeferReason {
    /// The account's budget (or this tenant's fair share of it) is used up for now.
    Budget,
    /// The account is cooling down after an upstream 429.
    Cooldown,
}

impl DeferReason {
    /// The [`DEFERRED_HEADER`] value and metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            DeferReason::Budget => "budget",
            DeferReason::Cooldown => "cooldown",
        }
    }
}

/// What started a cooldown: which part of the upstream's 429 named the wait.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CooldownCause {
    /// `Retry-After: <delta-seconds>` (RFC 9110 §10.2.3).
    RetryAfterSeconds,
    /// `Retry-After: <HTTP-date>` (RFC 9110 §10.2.3, §5.6.7).
    RetryAfterDate,
    /// `X-RateLimit-Reset: <unix time>` (ServiceNow's rate-limit rules, seconds; or ms).
    EpochReset,
    /// Secure Endpoint's `X-RateLimit-Reset` / `X-Rate-Limit-Reset`: seconds until the
    /// window resets.
    ResetSeconds,
    /// No usable header: the configured cooldown, doubled per such 429 in a row.
    NoHeader,
}

impl CooldownCause {
    /// The metric label and status-page text.
    pub fn as_str(self) -> &'static str {
        match self {
            CooldownCause::RetryAfterSeconds => "retry_after_seconds",
            CooldownCause::RetryAfterDate => "retry_after_date",
            CooldownCause::EpochReset => "epoch_reset",
            CooldownCause::ResetSeconds => "reset_seconds",
            CooldownCause::NoHeader => "no_header",
        }
    }
}

/// The wait a 429 of `service` names and which header named it, or `None` when it names
/// no usable one (absent, unparseable, zero, in the past). Every usable header counts and
/// the longest wait wins (the pessimistic reading of two headers that disagree).
///
/// - `Retry-After`: delta-seconds or an HTTP-date, any service (RFC 9110 §10.2.3);
/// - Secure Endpoint: `X-RateLimit-Reset` / `X-Rate-Limit-Reset` count **seconds until
///   the window resets** ("API rate limits", Secure Endpoint API docs; see
///   `sim/src/amp`);
/// - XDR and ServiceNow: `X-RateLimit-Reset` is a Unix time, seconds (milliseconds when
///   that large) — ServiceNow "Inbound REST API rate limiting" (see `sim/src/snow`).
///
/// Waits are capped at a day.
pub fn named_wait(
    service: &str,
    headers: &http::HeaderMap,
    now: SystemTime,
) -> Option<(Duration, CooldownCause)> {
    let text = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    let number = |name: &str| {
        text(name)
            .and_then(|v| v.parse::<f64>().ok())
            .filter(|v| v.is_finite() && *v > 0.0)
    };
    let mut found: Vec<(Duration, CooldownCause)> = Vec::new();
    if let Some(v) = text("retry-after") {
        if let Some(secs) = v.parse::<f64>().ok().filter(|s| s.is_finite() && *s > 0.0) {
            found.push((secs_capped(secs), CooldownCause::RetryAfterSeconds));
        } else if let Ok(at) = httpdate::parse_http_date(v)
            && let Ok(wait) = at.duration_since(now)
        {
            found.push((wait.min(MAX_SERVER_WAIT), CooldownCause::RetryAfterDate));
        }
    }
    if service == "amp" {
        if let Some(secs) = number("x-ratelimit-reset").or_else(|| number("x-rate-limit-reset")) {
            found.push((secs_capped(secs), CooldownCause::ResetSeconds));
        }
    } else if let Some(reset) = number("x-ratelimit-reset") {
        let at_ms = if reset > 1e12 { reset } else { reset * 1000.0 };
        let now_ms = now
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64() * 1000.0)
            .unwrap_or(0.0);
        if at_ms > now_ms {
            found.push((
                secs_capped((at_ms - now_ms) / 1000.0),
                CooldownCause::EpochReset,
            ));
        }
    }
    found
        .into_iter()
        .filter(|(w, _)| !w.is_zero())
        .max_by_key(|(w, _)| *w)
}

fn secs_capped(secs: f64) -> Duration {
    Duration::from_secs_f64(secs.min(MAX_SERVER_WAIT.as_secs_f64()))
}

/// The name of the account a tenant's configuration implies for `service`:
/// `{service}:{origin}/{sha-256 prefix}` over the values of the credential keys the
/// contract names ([`mssp_contract::ACCOUNT_KEYS`]); the clear values never appear.
/// `None` when the service's URL is unset or not a URL.
pub fn derived_name(service: &str, config: &BTreeMap<String, SecretString>) -> Option<String> {
    let (_, keys) = mssp_contract::ACCOUNT_KEYS
        .iter()
        .find(|(s, _)| *s == service)?;
    let (url_key, credential_keys) = keys.split_first()?;
    let origin = Origin::parse(config.get(*url_key)?.expose()).ok()?;
    let mut hash = Sha256::new();
    for key in credential_keys {
        let value = config.get(*key).map(SecretString::expose).unwrap_or("");
        hash.update(key.as_bytes());
        hash.update([0]);
        hash.update(value.as_bytes());
        hash.update([0]);
    }
    let digest = hex::encode(hash.finalize());
    Some(format!("{service}:{origin}/{}", &digest[..16]))
}

/// A token bucket that never admits more than `limit` requests in any window.
#[derive(Debug)]
struct Bucket {
    limit: u32,
    capacity: f64,
    /// Tokens per second.
    rate: f64,
    level: f64,
    at: Instant,
    /// Tokens a backlogged tenant may not take.
    reserve: f64,
}

impl Bucket {
    /// `limit` ≥ 1 requests per `window`, a depth of `burst` worth of it. In any window
    /// at most `capacity + rate × window` = `limit` tokens are handed out.
    fn new(limit: u32, window: Duration, burst: Duration, now: Instant) -> Self {
        let per = f64::from(limit);
        let share = per * burst.as_secs_f64() / window.as_secs_f64();
        let capacity = share.floor().clamp(1.0, per);
        let rate = if per > capacity {
            (per - capacity) / window.as_secs_f64()
        } else {
            // One token, refilled once per window / limit: spaced, so still ≤ limit.
            per / window.as_secs_f64()
        };
        Self {
            limit,
            capacity,
            rate,
            level: capacity,
            at: now,
            reserve: (capacity / 2.0).floor(),
        }
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.level = (self.level + dt * self.rate).min(self.capacity);
        self.at = now;
    }

    /// Takes a token above `floor`, or says how long until one is there.
    fn take(&mut self, floor: f64, now: Instant) -> Result<(), Duration> {
        self.refill(now);
        if self.level - floor >= 1.0 {
            self.level -= 1.0;
            return Ok(());
        }
        let missing = floor + 1.0 - self.level;
        Err(Duration::from_secs_f64(missing / self.rate))
    }
}

/// Requests granted per slot of the last window (for "budget used").
#[derive(Debug)]
struct UseCount {
    origin: Instant,
    slot: Duration,
    slots: VecDeque<(u64, u64)>,
}

impl UseCount {
    fn new(window: Duration, now: Instant) -> Self {
        Self {
            origin: now,
            slot: window / USE_SLOTS,
            slots: VecDeque::new(),
        }
    }

    fn index(&self, now: Instant) -> u64 {
        let nanos = self.slot.as_nanos().max(1);
        (now.saturating_duration_since(self.origin).as_nanos() / nanos) as u64
    }

    fn expire(&mut self, now: Instant) {
        let current = self.index(now);
        while self
            .slots
            .front()
            .is_some_and(|(i, _)| current - i >= u64::from(USE_SLOTS))
        {
            self.slots.pop_front();
        }
    }

    fn add(&mut self, now: Instant) {
        self.expire(now);
        let i = self.index(now);
        match self.slots.back_mut() {
            Some((last, n)) if *last == i => *n += 1,
            _ => self.slots.push_back((i, 1)),
        }
    }

    fn total(&mut self, now: Instant) -> u64 {
        self.expire(now);
        self.slots.iter().map(|(_, n)| n).sum()
    }
}

#[derive(Debug)]
struct State {
    bucket: Option<Bucket>,
    cooldown_until: Option<Instant>,
    cooldown_cause: Option<CooldownCause>,
    /// Header-less 429s in a row.
    strikes: u32,
    /// Tenants the budget deferred after letting them through in the same invocation,
    /// until an invocation of theirs gets through without.
    backlogged: HashSet<Arc<str>>,
    /// Tenants let through at least once in their current invocation.
    granted_now: HashSet<Arc<str>>,
    tenants: HashSet<Arc<str>>,
    used: UseCount,
    totals: AccountTotals,
}

/// Cumulative counts of one account since the host started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AccountTotals {
    /// Requests let through to the upstream.
    pub granted: u64,
    /// Requests answered by the host because the budget was used up.
    pub deferred_budget: u64,
    /// Requests answered by the host because the account was cooling down.
    pub deferred_cooldown: u64,
    /// 429s the upstream answered.
    pub upstream_429: u64,
    /// Cooldowns started (429s that found no cooldown running).
    pub cooldowns: u64,
}

/// One account as the status page shows it.
#[derive(Clone, Debug, PartialEq)]
pub struct AccountStatus {
    pub service: String,
    pub name: String,
    /// Requests per window; `None`: no host budget.
    pub per_hour: Option<u32>,
    /// Requests let through during the last window.
    pub used_last_window: u64,
    /// Tokens in the bucket now (what may be sent at once).
    pub left_now: Option<u32>,
    /// Seconds of cooldown left and what started it.
    pub cooldown: Option<(u64, CooldownCause)>,
    /// Tenants using the account.
    pub tenants: usize,
    /// Of those, tenants currently backlogged (deferred by the budget).
    pub backlogged: usize,
    pub totals: AccountTotals,
}

/// The host's answer to one request of a tenant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Send it.
    Go,
    /// Answer it here: `429`, `Retry-After: retry_after_secs`, [`DEFERRED_HEADER`].
    Defer {
        reason: DeferReason,
        retry_after_secs: u64,
    },
}

/// One shared upstream account.
pub struct Account {
    pub service: String,
    pub name: String,
    settings: BudgetSettings,
    metrics: Arc<Metrics>,
    state: Mutex<State>,
}

impl Account {
    fn new(
        service: &str,
        name: &str,
        per_hour: Option<u32>,
        settings: &BudgetSettings,
        metrics: Arc<Metrics>,
    ) -> Self {
        let now = Instant::now();
        let account = Self {
            service: service.to_string(),
            name: name.to_string(),
            settings: settings.clone(),
            metrics,
            state: Mutex::new(State {
                bucket: None,
                cooldown_until: None,
                cooldown_cause: None,
                strikes: 0,
                backlogged: HashSet::new(),
                granted_now: HashSet::new(),
                tenants: HashSet::new(),
                used: UseCount::new(settings.window(), now),
                totals: AccountTotals::default(),
            }),
        };
        account.set_budget(per_hour);
        account
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sets (or removes) the budget; an unchanged budget keeps its bucket.
    fn set_budget(&self, per_hour: Option<u32>) {
        let mut st = self.lock();
        if st.bucket.as_ref().map(|b| b.limit) == per_hour {
            return;
        }
        st.bucket = per_hour.map(|limit| {
            Bucket::new(
                limit,
                self.settings.window(),
                Duration::from_secs_f64(self.settings.burst_secs),
                Instant::now(),
            )
        });
        self.metrics
            .account_budget(&self.service, &self.name, per_hour);
    }

    /// Whether `tenant` may send one request now; a `Go` is counted against the budget.
    pub fn admit(&self, tenant: &Arc<str>, now: Instant) -> Admission {
        let mut st = self.lock();
        if let Some(until) = st.cooldown_until {
            if until > now {
                st.totals.deferred_cooldown += 1;
                drop(st);
                self.metrics
                    .account_deferred(&self.service, &self.name, DeferReason::Cooldown);
                return Admission::Defer {
                    reason: DeferReason::Cooldown,
                    retry_after_secs: whole_secs(until - now),
                };
            }
            st.cooldown_until = None;
        }
        let backlogged = st.backlogged.contains(tenant);
        let verdict = match st.bucket.as_mut() {
            None => Ok(()),
            Some(b) => {
                let floor = if backlogged { b.reserve } else { 0.0 };
                b.take(floor, now)
            }
        };
        match verdict {
            Ok(()) => {
                st.totals.granted += 1;
                st.granted_now.insert(tenant.clone());
                st.used.add(now);
                let used = st.used.total(now);
                let left = st.bucket.as_ref().map(|b| b.level.floor() as u64);
                drop(st);
                self.metrics
                    .account_granted(&self.service, &self.name, used, left);
                Admission::Go
            }
            Err(wait) => {
                st.totals.deferred_budget += 1;
                if st.granted_now.contains(tenant) {
                    st.backlogged.insert(tenant.clone());
                }
                drop(st);
                self.metrics
                    .account_deferred(&self.service, &self.name, DeferReason::Budget);
                Admission::Defer {
                    reason: DeferReason::Budget,
                    retry_after_secs: whole_secs(wait),
                }
            }
        }
    }

    /// Records the upstream's answer to a request let through: a 429 puts the whole
    /// account into cooldown (see [`named_wait`]); any other answer ends a series of
    /// header-less 429s. Returns the cause of a cooldown started or extended.
    pub fn on_answer(
        &self,
        status: u16,
        headers: &http::HeaderMap,
        now: Instant,
        wall: SystemTime,
    ) -> Option<CooldownCause> {
        let mut st = self.lock();
        if status != 429 {
            st.strikes = 0;
            return None;
        }
        st.totals.upstream_429 += 1;
        let (wait, cause) = match named_wait(&self.service, headers, wall) {
            Some(named) => named,
            None => {
                st.strikes = st.strikes.saturating_add(1);
                (self.no_header_cooldown(st.strikes), CooldownCause::NoHeader)
            }
        };
        let until = now + wait;
        let running = st.cooldown_until.is_some_and(|u| u > now);
        if !running {
            st.totals.cooldowns += 1;
        }
        if st.cooldown_until.is_none_or(|u| u < until) {
            st.cooldown_until = Some(until);
            st.cooldown_cause = Some(cause);
        }
        drop(st);
        if !running {
            self.metrics
                .account_cooldown(&self.service, &self.name, cause);
        }
        tracing::warn!(
            account = %self.name,
            cause = cause.as_str(),
            secs = wait.as_secs_f64(),
            "upstream 429: the account cools down for every tenant using it"
        );
        Some(cause)
    }

    fn no_header_cooldown(&self, strikes: u32) -> Duration {
        let base = Duration::from_secs_f64(self.settings.no_header_cooldown_secs);
        let cap = (base * COOLDOWN_MAX_FACTOR).min(COOLDOWN_MAX).max(base);
        base.saturating_mul(1u32 << strikes.saturating_sub(1).min(20))
            .min(cap)
    }

    /// One invocation of `tenant` ended: with a request let through and none deferred by
    /// the budget, the tenant is no longer backlogged (it may spend the reserve again).
    pub fn invocation_done(&self, tenant: &str, granted: bool, deferred: bool) {
        let mut st = self.lock();
        st.granted_now.remove(tenant);
        if granted && !deferred {
            st.backlogged.remove(tenant);
        }
    }

    /// A snapshot for the status page.
    pub fn status(&self) -> AccountStatus {
        let now = Instant::now();
        let mut st = self.lock();
        if let Some(b) = st.bucket.as_mut() {
            b.refill(now);
        }
        let cooldown = match (st.cooldown_until, st.cooldown_cause) {
            (Some(until), Some(cause)) if until > now => Some((whole_secs(until - now), cause)),
            _ => None,
        };
        AccountStatus {
            service: self.service.clone(),
            name: self.name.clone(),
            per_hour: st.bucket.as_ref().map(|b| b.limit),
            used_last_window: st.used.total(now),
            left_now: st.bucket.as_ref().map(|b| b.level.floor() as u32),
            cooldown,
            tenants: st.tenants.len(),
            backlogged: st.backlogged.len(),
            totals: st.totals,
        }
    }
}

/// Whole seconds, rounded up, at least 1.
fn whole_secs(d: Duration) -> u64 {
    let s = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    s.max(1)
}

/// A tenant's accounts, by service label.
#[derive(Clone, Default)]
pub struct TenantAccounts(HashMap<String, Arc<Account>>);

impl TenantAccounts {
    /// The account the tenant's requests to `service` count against.
    pub fn of(&self, service: &str) -> Option<&Arc<Account>> {
        self.0.get(service)
    }
}

/// Every account of a runtime, shared by the tenants that use it.
pub struct Accounts {
    settings: BudgetSettings,
    metrics: Arc<Metrics>,
    map: Mutex<BTreeMap<(String, String), Arc<Account>>>,
}

impl Accounts {
    /// Errors: settings that [`BudgetSettings::validate`] refuses.
    pub fn new(settings: BudgetSettings, metrics: Arc<Metrics>) -> Result<Self, String> {
        settings.validate()?;
        Ok(Self {
            settings,
            metrics,
            map: Mutex::new(BTreeMap::new()),
        })
    }

    /// The accounts of one tenant: the ones it names, the derived ones for the services
    /// it names none for; an account already known is shared (its budget follows the
    /// latest tenant that names one). Replaces the tenant's earlier accounts.
    ///
    /// Errors: an unknown service label, an empty name, a budget of 0.
    pub fn attach(
        &self,
        tenant: &str,
        refs: &[AccountRef],
        config: &BTreeMap<String, SecretString>,
    ) -> Result<TenantAccounts, String> {
        for r in refs {
            if !["amp", "xdr", "snow"].contains(&r.service.as_str()) {
                return Err(format!(
                    "account {:?}: service {:?} is not one of amp, xdr, snow",
                    r.name, r.service
                ));
            }
            if r.name.trim().is_empty() {
                return Err(format!("{} account: the name is empty", r.service));
            }
            check_per_hour(&format!("account {:?} per_hour", r.name), r.per_hour)?;
        }
        self.detach(tenant);
        let id: Arc<str> = tenant.into();
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        let mut mine = HashMap::new();
        for service in ["amp", "xdr", "snow"] {
            let named = refs.iter().find(|r| r.service == service);
            let Some(name) = named
                .map(|r| r.name.clone())
                .or_else(|| derived_name(service, config))
            else {
                continue;
            };
            let per_hour = named
                .and_then(|r| r.per_hour)
                .or(self.settings.per_hour(service));
            let account = map
                .entry((service.to_string(), name.clone()))
                .or_insert_with(|| {
                    Arc::new(Account::new(
                        service,
                        &name,
                        per_hour,
                        &self.settings,
                        self.metrics.clone(),
                    ))
                })
                .clone();
            account.set_budget(per_hour);
            account.lock().tenants.insert(id.clone());
            mine.insert(service.to_string(), account);
        }
        Ok(TenantAccounts(mine))
    }

    /// Removes a tenant from its accounts; an account no tenant uses is forgotten.
    pub fn detach(&self, tenant: &str) {
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        map.retain(|_, a| {
            let mut st = a.lock();
            st.tenants.remove(tenant);
            st.backlogged.remove(tenant);
            st.granted_now.remove(tenant);
            !st.tenants.is_empty()
        });
    }

    /// Every account, by service and name.
    pub fn list(&self) -> Vec<Arc<Account>> {
        let map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        map.values().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        for (k, v) in pairs {
            h.insert(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    fn settings() -> BudgetSettings {
        BudgetSettings::default()
    }

    fn account(per_hour: Option<u32>) -> Account {
        Account::new(
            "snow",
            "snow:test",
            per_hour,
            &settings(),
            Arc::new(Metrics::default()),
        )
    }

    #[test]
    fn every_header_kind_names_its_wait() {
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let w = |svc: &str, h: &[(&str, &str)]| named_wait(svc, &headers(h), now);
        assert_eq!(
            w("snow", &[("Retry-After", "120")]),
            Some((Duration::from_secs(120), CooldownCause::RetryAfterSeconds))
        );
        let date = httpdate::fmt_http_date(now + Duration::from_secs(90));
        assert_eq!(
            w("xdr", &[("Retry-After", &date)]),
            Some((Duration::from_secs(90), CooldownCause::RetryAfterDate))
        );
        assert_eq!(
            w("snow", &[("X-RateLimit-Reset", "1700000045")]),
            Some((Duration::from_secs(45), CooldownCause::EpochReset))
        );
        assert_eq!(
            w("xdr", &[("X-RateLimit-Reset", "1700000002500")]),
            Some((Duration::from_millis(2500), CooldownCause::EpochReset))
        );
        assert_eq!(
            w("amp", &[("X-Rate-Limit-Reset", "30")]),
            Some((Duration::from_secs(30), CooldownCause::ResetSeconds))
        );
        // The longest of two usable headers wins.
        assert_eq!(
            w(
                "snow",
                &[("Retry-After", "10"), ("X-RateLimit-Reset", "1700000100")]
            ),
            Some((Duration::from_secs(100), CooldownCause::EpochReset))
        );
        for none in [
            &[][..],
            &[("Retry-After", "soon")],
            &[("Retry-After", "0")],
            &[("Retry-After", "-4")],
            &[("X-RateLimit-Reset", "1600000000")],
            &[("Retry-After", "Wed, 21 Oct 2015 07:28:00 GMT")],
        ] {
            assert_eq!(w("snow", none), None, "{none:?}");
        }
        assert_eq!(
            w("snow", &[("Retry-After", "1e300")]),
            Some((MAX_SERVER_WAIT, CooldownCause::RetryAfterSeconds))
        );
    }

    #[test]
    fn a_budget_never_admits_more_than_its_limit_in_any_window() {
        let t0 = Instant::now();
        let window = Duration::from_secs(3600);
        for limit in [1u32, 7, 60, 2000, 8000] {
            let mut b = Bucket::new(limit, window, Duration::from_secs(60), t0);
            let mut granted = Vec::new();
            // Ask every half second for three hours.
            for step in 0..(3 * 7_200u64) {
                let now = t0 + Duration::from_millis(step * 500);
                if b.take(0.0, now).is_ok() {
                    granted.push(now);
                }
            }
            let mut end = 0;
            for (i, at) in granted.iter().enumerate() {
                while end < granted.len() && granted[end].duration_since(*at) < window {
                    end += 1;
                }
                let within = end - i;
                assert!(within <= limit as usize, "{limit}: {within} in one window");
            }
            // And it uses the budget: over 90 % of it in each hour after the first (a
            // budget under a minute's worth keeps one request of it back).
            let last_hour = granted
                .iter()
                .filter(|t| t.duration_since(t0) >= 2 * window)
                .count() as u32;
            let floor = if limit >= 60 {
                limit * 9 / 10
            } else {
                limit.max(2) - 1
            };
            assert!(last_hour >= floor, "{limit}: {last_hour} in an hour");
        }
    }

    #[test]
    fn a_backlogged_tenant_leaves_the_reserve_to_a_quiet_one() {
        let a = account(Some(600)); // burst 10, reserve 5
        let heavy: Arc<str> = "heavy".into();
        let quiet: Arc<str> = "quiet".into();
        let now = Instant::now();
        let mut sent = 0;
        while a.admit(&heavy, now) == Admission::Go {
            sent += 1;
        }
        assert_eq!(sent, 10, "a first burst may take the whole bucket");
        // Later, the heavy tenant is backlogged: refills go to the reserve first.
        let later = now + Duration::from_secs(70);
        let mut heavy_sent = 0;
        while a.admit(&heavy, later) == Admission::Go {
            heavy_sent += 1;
        }
        assert_eq!(heavy_sent, 5, "only what is above the reserve");
        for _ in 0..5 {
            assert_eq!(a.admit(&quiet, later), Admission::Go);
        }
        let Admission::Defer {
            reason,
            retry_after_secs,
        } = a.admit(&quiet, later)
        else {
            panic!("the bucket is empty");
        };
        assert_eq!(reason, DeferReason::Budget);
        assert!(retry_after_secs >= 1);
        // An invocation of the heavy tenant that gets through without a deferral ends
        // its backlog.
        a.invocation_done("heavy", true, false);
        a.invocation_done("quiet", true, true);
        {
            let st = a.lock();
            assert!(!st.backlogged.contains("heavy") && st.backlogged.contains("quiet"));
        }
        // A newcomer held back before it was let through anything (the bucket empty)
        // is not backlogged: the reserve's next token is its.
        let newcomer: Arc<str> = "newcomer".into();
        assert!(matches!(a.admit(&newcomer, later), Admission::Defer { .. }));
        assert!(!a.lock().backlogged.contains("newcomer"));
    }

    #[test]
    fn a_429_cools_the_whole_account_down_and_header_less_ones_grow() {
        let a = account(None);
        let t: Arc<str> = "a".into();
        let now = Instant::now();
        let wall = SystemTime::now();
        assert_eq!(a.admit(&t, now), Admission::Go);
        assert_eq!(
            a.on_answer(429, &headers(&[("Retry-After", "120")]), now, wall),
            Some(CooldownCause::RetryAfterSeconds)
        );
        let other: Arc<str> = "b".into();
        assert_eq!(
            a.admit(&other, now + Duration::from_millis(300)),
            Admission::Defer {
                reason: DeferReason::Cooldown,
                retry_after_secs: 120
            }
        );
        assert_eq!(
            a.admit(&other, now + Duration::from_secs(120)),
            Admission::Go
        );
        // Without a header: 60 s, then 120 s; a success ends the series.
        let t1 = now + Duration::from_secs(200);
        a.on_answer(429, &headers(&[]), t1, wall);
        assert_eq!(
            a.status().cooldown.map(|c| c.1),
            Some(CooldownCause::NoHeader)
        );
        let t2 = t1 + Duration::from_secs(60);
        a.on_answer(429, &headers(&[]), t2, wall);
        assert!(matches!(
            a.admit(&t, t2 + Duration::from_secs(119)),
            Admission::Defer { .. }
        ));
        assert_eq!(a.admit(&t, t2 + Duration::from_secs(120)), Admission::Go);
        a.on_answer(200, &headers(&[]), t2, wall);
        assert_eq!(a.lock().strikes, 0);
        let totals = a.status().totals;
        assert_eq!((totals.upstream_429, totals.cooldowns), (3, 3));
    }

    #[test]
    fn tenants_with_one_credential_share_one_account_and_names_hide_it() {
        let metrics = Arc::new(Metrics::default());
        let accounts = Accounts::new(
            BudgetSettings {
                snow_per_hour: Some(2000),
                ..settings()
            },
            metrics,
        )
        .unwrap();
        let cfg = |user: &str| -> BTreeMap<String, SecretString> {
            [
                ("snow_base_url", "https://mssp.service-now.com"),
                ("snow_user", user),
                ("xdr_auth_url", "https://visibility.amp.cisco.com"),
                ("xdr_client_id", "client-1"),
            ]
            .iter()
            .map(|(k, v)| (k.to_string(), SecretString::new(*v)))
            .collect()
        };
        let a = accounts.attach("a", &[], &cfg("bridge")).unwrap();
        let b = accounts.attach("b", &[], &cfg("bridge")).unwrap();
        let c = accounts.attach("c", &[], &cfg("other")).unwrap();
        assert!(Arc::ptr_eq(a.of("snow").unwrap(), b.of("snow").unwrap()));
        assert!(!Arc::ptr_eq(a.of("snow").unwrap(), c.of("snow").unwrap()));
        assert!(a.of("amp").is_none(), "no amp_base_url configured");
        let name = &a.of("snow").unwrap().name;
        assert!(name.starts_with("snow:https://mssp.service-now.com:443/"));
        assert!(!name.contains("bridge"), "{name}");
        assert_eq!(a.of("snow").unwrap().status().per_hour, Some(2000));
        let named = accounts
            .attach(
                "d",
                &[AccountRef {
                    service: "snow".into(),
                    name: "mssp-snow".into(),
                    per_hour: Some(500),
                }],
                &cfg("bridge"),
            )
            .unwrap();
        assert_eq!(named.of("snow").unwrap().status().per_hour, Some(500));
        let bad = AccountRef {
            service: "jira".into(),
            name: "x".into(),
            per_hour: None,
        };
        assert!(accounts.attach("e", &[bad], &cfg("x")).is_err());
        accounts.detach("c");
        assert_eq!(
            accounts
                .list()
                .iter()
                .filter(|a| a.service == "snow")
                .count(),
            2
        );
    }

    #[test]
    fn bad_settings_are_refused_with_their_name() {
        let e = BudgetSettings {
            window_secs: 0.0,
            ..settings()
        }
        .validate()
        .unwrap_err();
        assert!(e.contains("window_secs"), "{e}");
        let e = BudgetSettings {
            snow_per_hour: Some(0),
            ..settings()
        }
        .validate()
        .unwrap_err();
        assert!(e.contains("snow_per_hour"), "{e}");
    }
}
