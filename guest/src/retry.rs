//! Rate-limit arithmetic of each service and the one retry policy of the bridge.

use crate::ports::Response;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Service {
    /// Cisco Secure Endpoint.
    Amp,
    /// Cisco XDR (token host and CTIA).
    Xdr,
    /// ServiceNow.
    Snow,
}

impl Service {
    pub fn name(self) -> &'static str {
        match self {
            Service::Amp => "Secure Endpoint",
            Service::Xdr => "XDR",
            Service::Snow => "ServiceNow",
        }
    }
}

/// Longest wait believed from a server (a day); anything longer is a broken header.
pub const MAX_SERVER_WAIT_MS: u64 = 24 * 3600 * 1000;

/// A rate-limit header of Secure Endpoint, either spelling (`X-RateLimit-*`,
/// `X-Rate-Limit-*`), matched case-insensitively.
fn amp_header(resp: &Response, suffix: &str) -> Option<u64> {
    resp.header(&format!("x-ratelimit-{suffix}"))
        .or_else(|| resp.header(&format!("x-rate-limit-{suffix}")))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|v| v.is_finite() && *v >= 0.0)
        .map(|v| v.ceil() as u64)
}

/// How long Secure Endpoint asks us to wait, in milliseconds: on a 429, or when a
/// successful answer says the window is used up. `Reset` counts **seconds until the
/// window resets**, never an epoch; there is no `Retry-After`.
pub fn amp_wait_ms(resp: &Response) -> Option<u64> {
    let reset_ms =
        amp_header(resp, "reset").map(|s| s.saturating_mul(1000).min(MAX_SERVER_WAIT_MS));
    if resp.status == 429 {
        return reset_ms;
    }
    if amp_header(resp, "remaining") == Some(0) {
        return reset_ms;
    }
    None
}

/// How long XDR or ServiceNow asks us to wait on a 429, in milliseconds: `Retry-After`
/// seconds, else `X-RateLimit-Reset` as an epoch (seconds, or milliseconds when it is
/// that large); `None` when neither is usable (the caller backs off exponentially).
pub fn retry_after_ms(resp: &Response, now_ms: i64) -> Option<u64> {
    if let Some(secs) = resp
        .header("retry-after")
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|v| v.is_finite() && *v >= 0.0)
    {
        return Some(((secs * 1000.0).ceil() as u64).min(MAX_SERVER_WAIT_MS));
    }
    let reset = resp
        .header("x-ratelimit-reset")
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|v| v.is_finite() && *v > 0.0)?;
    let reset_ms = if reset > 1e12 { reset } else { reset * 1000.0 } as i64;
    Some(
        u64::try_from(reset_ms.saturating_sub(now_ms))
            .unwrap_or(0)
            .min(MAX_SERVER_WAIT_MS),
    )
}

/// The wait a 429 names, in milliseconds, per service (`amp_wait_ms` for Secure
/// Endpoint, `retry_after_ms` for XDR and ServiceNow), or `None` when it names no
/// usable one: header absent, unparseable, negative, an epoch in the past, or zero.
/// A `None` here starts a cooldown ([`cooldown_ms`]) instead of an inline retry.
pub fn usable_429_wait_ms(svc: Service, resp: &Response, now_ms: i64) -> Option<u64> {
    let wait = match svc {
        Service::Amp => amp_wait_ms(resp),
        Service::Xdr | Service::Snow => retry_after_ms(resp, now_ms),
    };
    wait.filter(|w| *w > 0)
}

/// Cooldowns grow up to this many times the first one.
pub const COOLDOWN_MAX_FACTOR: u64 = 32;
/// And never beyond an hour (ServiceNow's rate-limit rules count per hour).
pub const COOLDOWN_MAX_MS: u64 = 3600 * 1000;

/// How long to leave a service alone after its `strikes`-th header-less 429 in a row
/// (`strikes` ≥ 1), in milliseconds: `base_ms` doubled per further strike
/// (30 s, 60 s, 120 s … with the default base), capped at [`COOLDOWN_MAX_FACTOR`] × base
/// and [`COOLDOWN_MAX_MS`], plus up to a fifth of it as jitter so that tenants sharing
/// an account do not come back at the same moment. Never shorter than the step.
pub fn cooldown_ms(base_ms: u64, strikes: u32, random: u64) -> u64 {
    let base = base_ms.max(1);
    let cap = base
        .saturating_mul(COOLDOWN_MAX_FACTOR)
        .min(COOLDOWN_MAX_MS)
        .max(base);
    let step = base
        .saturating_mul(1u64 << strikes.saturating_sub(1).min(20))
        .min(cap);
    step + random % (step / 5 + 1)
}

/// The single retry policy: bounded attempts, capped exponential backoff with jitter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts per call, the first included.
    pub max_attempts: u32,
    pub base_ms: u64,
    pub cap_ms: u64,
    /// Longest server-requested wait honoured inside one tick; longer waits throttle
    /// the service until the time the server named.
    pub max_inline_wait_ms: u64,
}

impl RetryPolicy {
    pub const STANDARD: RetryPolicy = RetryPolicy {
        max_attempts: 4,
        base_ms: 250,
        cap_ms: 8_000,
        max_inline_wait_ms: 30_000,
    };

    /// "Equal jitter": half the exponential step, plus a random part of the other half.
    /// `attempt` counts from 0 (the wait after the first failure).
    pub fn backoff_ms(&self, attempt: u32, random: u64) -> u64 {
        let step = self
            .base_ms
            .saturating_mul(1u64 << attempt.min(20))
            .min(self.cap_ms);
        let half = step / 2;
        half + random % (step - half + 1)
    }

    /// A server-requested wait, with a little jitter so that replicas do not stampede.
    pub fn server_wait_ms(&self, requested: u64, random: u64) -> u64 {
        requested + random % (self.base_ms + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resp(status: u16, headers: &[(&str, &str)]) -> Response {
        crate::testkit::resp_with(status, headers, "")
    }

    #[test]
    fn amp_reset_is_seconds_in_either_spelling() {
        assert_eq!(
            amp_wait_ms(&resp(429, &[("X-RateLimit-Reset", "42")])),
            Some(42_000)
        );
        assert_eq!(
            amp_wait_ms(&resp(429, &[("x-rate-limit-reset", " 7 ")])),
            Some(7_000)
        );
        assert_eq!(
            amp_wait_ms(&resp(429, &[("X-Rate-Limit-RESET", "1.2")])),
            Some(2_000)
        );
        // No Retry-After on Secure Endpoint: it is not consulted.
        assert_eq!(amp_wait_ms(&resp(429, &[("Retry-After", "5")])), None);
        assert_eq!(amp_wait_ms(&resp(429, &[])), None);
    }

    #[test]
    fn amp_exhausted_window_waits_before_the_next_call() {
        let r = resp(
            200,
            &[("X-RateLimit-Remaining", "0"), ("X-RateLimit-Reset", "30")],
        );
        assert_eq!(amp_wait_ms(&r), Some(30_000));
        let r = resp(
            200,
            &[
                ("X-Rate-Limit-Remaining", "12"),
                ("X-Rate-Limit-Reset", "30"),
            ],
        );
        assert_eq!(amp_wait_ms(&r), None);
    }

    #[test]
    fn retry_after_then_epoch_reset_then_nothing() {
        let now = 1_700_000_000_000;
        assert_eq!(
            retry_after_ms(&resp(429, &[("Retry-After", "3")]), now),
            Some(3_000)
        );
        assert_eq!(
            retry_after_ms(&resp(429, &[("X-RateLimit-Reset", "1700000012")]), now),
            Some(12_000)
        );
        assert_eq!(
            retry_after_ms(&resp(429, &[("X-RateLimit-Reset", "1700000000500")]), now),
            Some(500)
        );
        assert_eq!(
            retry_after_ms(&resp(429, &[("X-RateLimit-Reset", "1600000000")]), now),
            Some(0)
        );
        assert_eq!(
            retry_after_ms(&resp(429, &[("Retry-After", "soon")]), now),
            None
        );
        assert_eq!(retry_after_ms(&resp(429, &[]), now), None);
        assert_eq!(
            retry_after_ms(&resp(429, &[("Retry-After", "1e300")]), now),
            Some(MAX_SERVER_WAIT_MS)
        );
        assert_eq!(
            amp_wait_ms(&resp(429, &[("X-RateLimit-Reset", "99999999999999")])),
            Some(MAX_SERVER_WAIT_MS)
        );
    }

    #[test]
    fn a_429_without_a_usable_wait_is_recognised_for_every_service() {
        let now = 1_700_000_000_000;
        for svc in [Service::Amp, Service::Xdr, Service::Snow] {
            assert_eq!(usable_429_wait_ms(svc, &resp(429, &[]), now), None);
        }
        let zero = resp(429, &[("Retry-After", "0")]);
        assert_eq!(usable_429_wait_ms(Service::Snow, &zero, now), None);
        let past = resp(429, &[("X-RateLimit-Reset", "1600000000")]);
        assert_eq!(usable_429_wait_ms(Service::Xdr, &past, now), None);
        let negative = resp(429, &[("Retry-After", "-5")]);
        assert_eq!(usable_429_wait_ms(Service::Snow, &negative, now), None);
        let junk = resp(429, &[("Retry-After", "Wed, 21 Oct")]);
        assert_eq!(usable_429_wait_ms(Service::Xdr, &junk, now), None);
        let amp_zero = resp(429, &[("X-RateLimit-Reset", "0")]);
        assert_eq!(usable_429_wait_ms(Service::Amp, &amp_zero, now), None);
        let amp_ok = resp(429, &[("X-RateLimit-Reset", "5")]);
        assert_eq!(usable_429_wait_ms(Service::Amp, &amp_ok, now), Some(5_000));
        let snow_ok = resp(429, &[("Retry-After", "2")]);
        assert_eq!(
            usable_429_wait_ms(Service::Snow, &snow_ok, now),
            Some(2_000)
        );
    }

    #[test]
    fn cooldowns_double_per_strike_are_capped_and_only_jittered_upwards() {
        assert_eq!(cooldown_ms(30_000, 1, 0), 30_000);
        assert_eq!(cooldown_ms(30_000, 2, 0), 60_000);
        assert_eq!(cooldown_ms(30_000, 3, 0), 120_000);
        assert_eq!(cooldown_ms(30_000, 6, 0), 960_000);
        assert_eq!(cooldown_ms(30_000, 7, 0), 960_000);
        assert_eq!(cooldown_ms(30_000, u32::MAX, 0), 960_000);
        assert_eq!(cooldown_ms(3_600_000, 3, 0), COOLDOWN_MAX_MS);
        for strikes in 1..40 {
            for r in [0, 1, 12_345, u64::MAX] {
                let c = cooldown_ms(30_000, strikes, r);
                let step = cooldown_ms(30_000, strikes, 0);
                assert!(c >= step && c <= step + step / 5, "{strikes}: {c}");
            }
        }
        // Each strike waits longer than the previous one at its longest.
        assert!(cooldown_ms(2_000, 2, 0) > cooldown_ms(2_000, 1, u64::MAX));
        assert_eq!(cooldown_ms(0, 1, 0), 1);
    }

    #[test]
    fn backoff_grows_is_capped_and_jittered() {
        let p = RetryPolicy::STANDARD;
        assert_eq!(p.backoff_ms(0, 0), 125);
        assert_eq!(p.backoff_ms(0, u64::MAX), 125 + u64::MAX % 126);
        assert!((250..=500).contains(&p.backoff_ms(1, 12345)));
        for attempt in 0..64 {
            for r in [0, 1, 999, u64::MAX] {
                let d = p.backoff_ms(attempt, r);
                assert!(d <= p.cap_ms, "attempt {attempt}: {d}");
            }
        }
        assert_eq!(p.backoff_ms(30, 0), p.cap_ms / 2);
        assert!(
            p.server_wait_ms(1_000, 7) >= 1_000 && p.server_wait_ms(1_000, 7) <= 1_000 + p.base_ms
        );
    }
}
