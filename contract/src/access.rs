//! Who may call which route of the component's HTTP API: the route table and the one
//! admission rule. The component applies it to every request (on Spin it is the only
//! check); a host may apply the same rule *before* it runs the component, so that a
//! refused request costs no instantiation and takes as long for a tenant that exists as
//! for one that does not (`mssp-bridge`'s server does).
//!
//! | route | method | credential |
//! |---|---|---|
//! | `/v1/status`, `/v1/incidents`, `/v1/incidents/{key}` | GET | [`Credential::Read`]: a bearer equal to `read_token` or to the host's [`crate::HOST_READ_TOKEN`]; anyone when `read_token` is unset and `open_reads=true` |
//! | `/v1/servicenow/events` | POST | [`Credential::Signature`]: `X-Bridge-Signature: v1=<base64 HMAC-SHA256(key, "<timestamp>.<body>")>` under `callback_key` (or `previous_callback_key` until `previous_callback_key_until`), `X-Bridge-Timestamp` within [`MAX_SKEW_SECONDS`] |
//! | `/v1/tick`, `/v1/backfill`, `/v1/bench/pipeline` | POST | [`Credential::TickToken`]: a bearer equal to `tick_token` (the route is disabled, 403, without it) |

use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Shortest callback key accepted, in bytes (decoded): a shorter one can be guessed by
/// sending forged callbacks (a 1-byte key falls in at most 256 tries).
pub const MIN_CALLBACK_KEY_BYTES: usize = 16;

/// Shortest bearer token (`read_token`, `tick_token`) accepted, in characters.
pub const MIN_TOKEN_CHARS: usize = 16;

/// Largest accepted clock difference between ServiceNow and the bridge, in seconds.
pub const MAX_SKEW_SECONDS: i64 = 300;

/// The benchmark route (`POST`, `tick_token`): runs one events page through the pipeline.
pub const BENCH_ROUTE: &str = "/v1/bench/pipeline";

/// One route of the component's API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// `GET /v1/status`
    Status,
    /// `GET /v1/incidents[?state=…&limit=…]`
    Incidents,
    /// `GET /v1/incidents/{key}`
    Incident,
    /// `POST /v1/servicenow/events` (the signed callback)
    ServiceNowEvents,
    /// `POST /v1/tick`
    Tick,
    /// `POST /v1/backfill`
    Backfill,
    /// `POST /v1/bench/pipeline`
    BenchPipeline,
}

/// Why a method and path name no route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteError {
    /// No route has this path (404).
    NotFound,
    /// The path exists for another method only (405); `allowed` is that method.
    Method { allowed: &'static str },
}

/// What a route asks of its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credential {
    /// The read rule ([`ReadRule`]).
    Read,
    /// The callback's HMAC signature ([`verify_signature`]).
    Signature,
    /// A bearer equal to `tick_token`.
    TickToken,
}

const FIXED: [(&str, Route); 6] = [
    ("/v1/status", Route::Status),
    ("/v1/incidents", Route::Incidents),
    ("/v1/servicenow/events", Route::ServiceNowEvents),
    ("/v1/tick", Route::Tick),
    ("/v1/backfill", Route::Backfill),
    (BENCH_ROUTE, Route::BenchPipeline),
];

impl Route {
    /// The route of `method` (any case) and `path` (a query and trailing `/` are
    /// ignored). Errors: [`RouteError::NotFound`], [`RouteError::Method`].
    pub fn parse(method: &str, path: &str) -> Result<Route, RouteError> {
        let path = Self::path_of(path);
        let route = FIXED
            .iter()
            .find(|(p, _)| *p == path)
            .map(|(_, r)| *r)
            .or_else(|| Self::incident_key(path).map(|_| Route::Incident))
            .ok_or(RouteError::NotFound)?;
        if method.eq_ignore_ascii_case(route.method()) {
            Ok(route)
        } else {
            Err(RouteError::Method {
                allowed: route.method(),
            })
        }
    }

    /// `path` without its query and trailing `/`.
    pub fn path_of(path: &str) -> &str {
        path.split('?')
            .next()
            .unwrap_or_default()
            .trim_end_matches('/')
    }

    /// The `{key}` of `/v1/incidents/{key}` (one non-empty segment).
    pub fn incident_key(path: &str) -> Option<&str> {
        Self::path_of(path)
            .strip_prefix("/v1/incidents/")
            .filter(|k| !k.is_empty() && !k.contains('/'))
    }

    /// The one method the route answers.
    pub fn method(self) -> &'static str {
        match self {
            Route::Status | Route::Incidents | Route::Incident => "GET",
            _ => "POST",
        }
    }

    /// What the route asks of its caller.
    pub fn credential(self) -> Credential {
        match self {
            Route::Status | Route::Incidents | Route::Incident => Credential::Read,
            Route::ServiceNowEvents => Credential::Signature,
            Route::Tick | Route::Backfill | Route::BenchPipeline => Credential::TickToken,
        }
    }
}

/// Compares in time that depends only on the lengths.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The token of an `Authorization: Bearer <token>` header value (`""` when absent or
/// of another scheme).
pub fn bearer(authorization: Option<&str>) -> &str {
    authorization
        .and_then(|h| h.trim().strip_prefix("Bearer "))
        .map(str::trim)
        .unwrap_or("")
}

/// A configuration value as the rules read it: trimmed, blank = unset.
fn set_value(get: &dyn Fn(&str) -> Option<String>, key: &str) -> Option<String> {
    get(key)
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

/// Who may read a tenant ([`Credential::Read`]), taken from the raw configuration so
/// that it holds even when the rest of the configuration is refused.
#[derive(Default)]
pub struct ReadRule {
    read_token: Option<String>,
    host_read_token: Option<String>,
    open_reads: bool,
}

/// Who may read a tenant, as the status page and `doctor` show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readers {
    /// Holders of its `read_token` (and the host's own credential).
    ReadToken,
    /// Anyone: the operator set `open_reads=true` (shown in red).
    Anyone,
    /// Only the host's own credential (neither is set): secure by default.
    HostOnly,
}

impl std::fmt::Debug for ReadRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ReadRule({:?})", self.readers())
    }
}

impl ReadRule {
    /// From a configuration lookup. `open_reads` counts only when exactly `true` (any
    /// case) and only while `read_token` is unset.
    pub fn from_config(get: &dyn Fn(&str) -> Option<String>) -> ReadRule {
        ReadRule {
            read_token: set_value(get, "read_token"),
            host_read_token: set_value(get, crate::HOST_READ_TOKEN),
            open_reads: set_value(get, "open_reads")
                .is_some_and(|v| v.eq_ignore_ascii_case("true")),
        }
    }

    /// Who may read.
    pub fn readers(&self) -> Readers {
        match (&self.read_token, self.open_reads) {
            (Some(_), _) => Readers::ReadToken,
            (None, true) => Readers::Anyone,
            (None, false) => Readers::HostOnly,
        }
    }

    /// Whether a caller with this `Authorization` header may read `path`; the refusal
    /// says what is missing (never a token).
    pub fn check(&self, authorization: Option<&str>, path: &str) -> Result<(), String> {
        let given = bearer(authorization).as_bytes();
        let matches = |t: &Option<String>| {
            t.as_ref()
                .is_some_and(|t| constant_time_eq(given, t.as_bytes()))
        };
        if matches(&self.host_read_token) {
            return Ok(());
        }
        match self.readers() {
            Readers::ReadToken if matches(&self.read_token) => Ok(()),
            Readers::ReadToken => Err(format!("missing or wrong bearer token for {path}")),
            Readers::Anyone => Ok(()),
            Readers::HostOnly => Err(format!(
                "{path} needs a credential: the operator sets read_token (sent as a bearer), or open_reads=true to serve reads to anyone"
            )),
        }
    }
}

/// The keys a callback may be signed with: `callback_key`, and during a rotation
/// `previous_callback_key` until `previous_callback_key_until` (both standard base64).
#[derive(Clone, PartialEq, Eq)]
pub struct CallbackKeys {
    current: Vec<u8>,
    previous: Option<(Vec<u8>, i64)>,
}

impl std::fmt::Debug for CallbackKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CallbackKeys(***)")
    }
}

impl CallbackKeys {
    /// From a configuration lookup. Errors: every problem, each naming its key and the
    /// fix (never a value but the end time).
    pub fn from_config(get: &dyn Fn(&str) -> Option<String>) -> Result<CallbackKeys, Vec<String>> {
        let decode = |b64: &str| {
            base64::engine::general_purpose::STANDARD
                .decode(b64.as_bytes())
                .ok()
                .filter(|k| !k.is_empty())
        };
        let mut problems = Vec::new();
        let long_enough = |name: &str, key: Option<Vec<u8>>, problems: &mut Vec<String>| {
            key.filter(|k| {
                let ok = k.len() >= MIN_CALLBACK_KEY_BYTES;
                if !ok {
                    problems.push(format!(
                        "config key \"{name}\" is {} bytes; use at least {MIN_CALLBACK_KEY_BYTES} random bytes (e.g. `head -c 32 /dev/urandom | base64`)",
                        k.len()
                    ));
                }
                ok
            })
        };
        let current = match set_value(get, "callback_key") {
            None => {
                problems.push("missing config key \"callback_key\"".to_string());
                None
            }
            Some(b64) => match decode(&b64) {
                Some(k) => long_enough("callback_key", Some(k), &mut problems),
                None => {
                    problems
                        .push("config key \"callback_key\" is not valid standard base64".into());
                    None
                }
            },
        };
        let previous = match (
            set_value(get, "previous_callback_key"),
            set_value(get, "previous_callback_key_until"),
        ) {
            (None, None) => None,
            (Some(b64), Some(until)) => match (decode(&b64), crate::civil::parse(&until)) {
                (Some(k), Some(t)) => {
                    long_enough("previous_callback_key", Some(k), &mut problems).map(|k| (k, t))
                }
                (None, _) => {
                    problems.push(
                        "config key \"previous_callback_key\" is not valid standard base64".into(),
                    );
                    None
                }
                (_, None) => {
                    problems.push(format!(
                        "config key \"previous_callback_key_until\" is not an ISO 8601 time: {until:?}"
                    ));
                    None
                }
            },
            (Some(_), None) => {
                problems.push(
                    "config key \"previous_callback_key\" needs \"previous_callback_key_until\" (when the old key stops being accepted, e.g. 2026-12-31T00:00:00Z)"
                        .into(),
                );
                None
            }
            (None, Some(_)) => {
                problems.push(
                    "config key \"previous_callback_key_until\" is set without \"previous_callback_key\""
                        .into(),
                );
                None
            }
        };
        match current {
            Some(current) if problems.is_empty() => Ok(CallbackKeys { current, previous }),
            _ => Err(problems),
        }
    }

    /// The keys accepted at `now_secs` (Unix seconds): the current one, and the
    /// previous one before its end.
    pub fn accepted_at(&self, now_secs: i64) -> Vec<&[u8]> {
        let mut keys = vec![self.current.as_slice()];
        if let Some((previous, until)) = &self.previous
            && now_secs < *until
        {
            keys.push(previous);
        }
        keys
    }

    /// The current key (for signing in tests and tools).
    pub fn current(&self) -> &[u8] {
        &self.current
    }
}

/// Checks `X-Bridge-Signature: v1=<base64 HMAC-SHA256(key, "<timestamp>.<body>")>`
/// under any of `keys`, and that `X-Bridge-Timestamp` (Unix seconds) is within
/// [`MAX_SKEW_SECONDS`] of `now_secs`. The MAC comparison is constant-time. Errors
/// say which check failed, never a key.
pub fn verify_signature(
    keys: &[&[u8]],
    timestamp: Option<&str>,
    signature: Option<&str>,
    body: &[u8],
    now_secs: i64,
) -> Result<(), String> {
    let ts_raw = timestamp.ok_or("missing X-Bridge-Timestamp header")?.trim();
    let ts: i64 = ts_raw
        .parse()
        .map_err(|_| "X-Bridge-Timestamp is not Unix seconds".to_string())?;
    // abs_diff: an extreme timestamp must not overflow past the window.
    if now_secs.abs_diff(ts) > MAX_SKEW_SECONDS.unsigned_abs() {
        return Err(format!(
            "X-Bridge-Timestamp is more than {MAX_SKEW_SECONDS} s away from the bridge's clock"
        ));
    }
    let sig = signature.ok_or("missing X-Bridge-Signature header")?.trim();
    let b64 = sig
        .strip_prefix("v1=")
        .ok_or("X-Bridge-Signature must start with v1=")?;
    let provided = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .map_err(|_| "X-Bridge-Signature is not base64".to_string())?;
    for key in keys {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(key).map_err(|_| "callback key unusable".to_string())?;
        mac.update(ts_raw.as_bytes());
        mac.update(b".");
        mac.update(body);
        if mac.verify_slice(&provided).is_ok() {
            return Ok(());
        }
    }
    Err("signature does not match".to_string())
}

/// `X-Bridge-Signature`'s value for `body` sent at `timestamp` under `key` (what
/// ServiceNow's business rule computes; for tests and tools).
pub fn sign(key: &[u8], timestamp: &str, body: &[u8]) -> String {
    // HMAC-SHA256 takes a key of any length, so this cannot fail.
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key) else {
        unreachable!("HMAC-SHA256 accepts a key of any length")
    };
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    format!(
        "v1={}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    )
}

/// A request's refusal: `status` 401 (credential missing or wrong), 403 (the route is
/// disabled by configuration) or 503 (the configuration the check needs is invalid).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub reason: String,
}

impl Refusal {
    fn new(status: u16, reason: impl Into<String>) -> Refusal {
        Refusal {
            status,
            reason: reason.into(),
        }
    }
}

/// What a request shows of itself to [`Access::admit`].
pub trait Shown {
    /// A header's value by case-insensitive name (the first one).
    fn header(&self, name: &str) -> Option<&str>;
    /// The request's body.
    fn body(&self) -> &[u8];
}

/// Every credential rule of one tenant, from its raw configuration.
#[derive(Debug)]
pub struct Access {
    reads: ReadRule,
    tick_token: Option<String>,
    callback: Result<CallbackKeys, Vec<String>>,
}

impl Access {
    /// From a configuration lookup (never fails: a key the rules need and cannot use
    /// refuses the routes that need it).
    pub fn from_config(get: &dyn Fn(&str) -> Option<String>) -> Access {
        Access {
            reads: ReadRule::from_config(get),
            tick_token: set_value(get, "tick_token"),
            callback: CallbackKeys::from_config(get),
        }
    }

    /// The read rule.
    pub fn reads(&self) -> &ReadRule {
        &self.reads
    }

    /// Whether `req` may call `route` at `now_secs` (Unix seconds). The refusal's
    /// reason names what is missing, never a value.
    pub fn admit(&self, route: Route, req: &dyn Shown, now_secs: i64) -> Result<(), Refusal> {
        let path = match route {
            Route::Status => "/v1/status",
            Route::Incidents | Route::Incident => "/v1/incidents",
            Route::ServiceNowEvents => "/v1/servicenow/events",
            Route::Tick => "/v1/tick",
            Route::Backfill => "/v1/backfill",
            Route::BenchPipeline => BENCH_ROUTE,
        };
        match route.credential() {
            Credential::Read => self
                .reads
                .check(req.header("authorization"), path)
                .map_err(|why| Refusal::new(401, why)),
            Credential::TickToken => match &self.tick_token {
                None => Err(Refusal::new(
                    403,
                    format!("{path} is disabled: config key \"tick_token\" is not set"),
                )),
                Some(t)
                    if constant_time_eq(
                        bearer(req.header("authorization")).as_bytes(),
                        t.as_bytes(),
                    ) =>
                {
                    Ok(())
                }
                Some(_) => Err(Refusal::new(
                    401,
                    format!("missing or wrong bearer token for {path}"),
                )),
            },
            Credential::Signature => match &self.callback {
                Err(problems) => Err(Refusal::new(503, problems.join("; "))),
                Ok(keys) => verify_signature(
                    &keys.accepted_at(now_secs),
                    req.header("x-bridge-timestamp"),
                    req.header("x-bridge-signature"),
                    req.body(),
                    now_secs,
                )
                .map_err(|why| Refusal::new(401, format!("callback refused: {why}"))),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    struct Req(Vec<(&'static str, String)>, Vec<u8>);
    impl Shown for Req {
        fn header(&self, name: &str) -> Option<&str> {
            self.0
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        }
        fn body(&self) -> &[u8] {
            &self.1
        }
    }

    fn access(pairs: &[(&str, &str)]) -> Access {
        let map: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Access::from_config(&|k| map.get(k).cloned())
    }

    fn bearer_req(token: &str) -> Req {
        Req(
            vec![("Authorization", format!("Bearer {token}"))],
            Vec::new(),
        )
    }

    #[test]
    fn the_route_table_names_every_route_once_with_its_method() {
        assert_eq!(Route::parse("get", "/v1/status/"), Ok(Route::Status));
        assert_eq!(
            Route::parse("GET", "/v1/incidents?state=open"),
            Ok(Route::Incidents)
        );
        assert_eq!(
            Route::parse("GET", "/v1/incidents/amp-1"),
            Ok(Route::Incident)
        );
        assert_eq!(
            Route::parse("GET", "/v1/incidents/a/b"),
            Err(RouteError::NotFound)
        );
        assert_eq!(
            Route::parse("GET", "/v1/tick"),
            Err(RouteError::Method { allowed: "POST" })
        );
        assert_eq!(Route::parse("POST", "/nope"), Err(RouteError::NotFound));
        assert_eq!(Route::incident_key("/v1/incidents/k1?x=1"), Some("k1"));
    }

    #[test]
    fn reads_need_a_credential_unless_open_reads_is_set_by_name() {
        let closed = access(&[]);
        assert_eq!(closed.reads().readers(), Readers::HostOnly);
        assert_eq!(
            closed
                .admit(Route::Status, &bearer_req(""), 0)
                .map_err(|r| r.status),
            Err(401)
        );
        let open = access(&[("open_reads", "TRUE")]);
        assert!(open.admit(Route::Incidents, &bearer_req(""), 0).is_ok());
        let token = access(&[("read_token", "rt"), ("open_reads", "true")]);
        assert_eq!(token.reads().readers(), Readers::ReadToken);
        assert!(token.admit(Route::Incident, &bearer_req("rt"), 0).is_ok());
        assert!(token.admit(Route::Incident, &bearer_req("rx"), 0).is_err());
        let host = access(&[(crate::HOST_READ_TOKEN, "ht")]);
        assert!(host.admit(Route::Status, &bearer_req("ht"), 0).is_ok());
    }

    #[test]
    fn operator_routes_are_disabled_without_tick_token_and_need_it_otherwise() {
        let none = access(&[]);
        assert_eq!(
            none.admit(Route::Tick, &bearer_req("x"), 0)
                .map_err(|r| r.status),
            Err(403)
        );
        let set = access(&[("tick_token", "tt")]);
        assert!(set.admit(Route::Backfill, &bearer_req("tt"), 0).is_ok());
        assert_eq!(
            set.admit(Route::BenchPipeline, &bearer_req("t"), 0)
                .map_err(|r| r.status),
            Err(401)
        );
    }

    #[test]
    fn callbacks_need_a_fresh_signature_under_an_accepted_key() {
        let b64 = base64::engine::general_purpose::STANDARD;
        let a = access(&[
            ("callback_key", &b64.encode("new-key-0123456789")),
            ("previous_callback_key", &b64.encode("old-key-0123456789")),
            ("previous_callback_key_until", "1970-01-01T00:16:40Z"),
        ]);
        let signed = |key: &[u8], ts: i64| {
            Req(
                vec![
                    ("X-Bridge-Timestamp", ts.to_string()),
                    ("X-Bridge-Signature", sign(key, &ts.to_string(), b"{}")),
                ],
                b"{}".to_vec(),
            )
        };
        assert!(
            a.admit(
                Route::ServiceNowEvents,
                &signed(b"new-key-0123456789", 900),
                900
            )
            .is_ok()
        );
        assert!(
            a.admit(
                Route::ServiceNowEvents,
                &signed(b"old-key-0123456789", 900),
                900
            )
            .is_ok()
        );
        // The overlap ends at 1000 s.
        assert!(
            a.admit(
                Route::ServiceNowEvents,
                &signed(b"old-key-0123456789", 1000),
                1000
            )
            .is_err()
        );
        assert!(
            a.admit(
                Route::ServiceNowEvents,
                &signed(b"new-key-0123456789", 1000),
                1000 + MAX_SKEW_SECONDS + 1
            )
            .is_err()
        );
        assert!(
            a.admit(Route::ServiceNowEvents, &signed(b"other", 900), 900)
                .is_err()
        );
    }

    const KEY: &[u8] = b"secret-key-12345";
    const BODY: &[u8] = br#"{"sys_id":"0123456789abcdef0123456789abcdef","number":"INC0010001","state":"6","correlation_id":"amp-1-d2","close_code":"Solved (Permanently)"}"#;

    fn verify(
        keys: &[&[u8]],
        ts: Option<&str>,
        sig: Option<&str>,
        body: &[u8],
        now: i64,
    ) -> Result<(), String> {
        verify_signature(keys, ts, sig, body, now)
    }

    #[test]
    fn a_signature_verifies_within_the_window_and_under_no_other_key() {
        let sig = sign(KEY, "1000", BODY);
        assert_eq!(verify(&[KEY], Some("1000"), Some(&sig), BODY, 1000), Ok(()));
        assert_eq!(verify(&[KEY], Some("1000"), Some(&sig), BODY, 1300), Ok(()));
        let old: &[u8] = b"previous-key-0987";
        let sig_old = sign(old, "1000", BODY);
        assert_eq!(
            verify(&[KEY, old], Some("1000"), Some(&sig_old), BODY, 1000),
            Ok(())
        );
        assert!(verify(&[KEY], Some("1000"), Some(&sig_old), BODY, 1000).is_err());
        let sig_other = sign(b"somebody-else", "1000", BODY);
        assert!(verify(&[KEY, old], Some("1000"), Some(&sig_other), BODY, 1000).is_err());
    }

    #[test]
    fn wrong_key_stale_tampered_and_missing_are_refused() {
        let sig = sign(KEY, "1000", BODY);
        assert!(verify(&[b"other-key"], Some("1000"), Some(&sig), BODY, 1000).is_err());
        let stale = verify(&[KEY], Some("1000"), Some(&sig), BODY, 1301);
        assert!(stale.is_err_and(|e| e.contains("300")));
        assert!(verify(&[KEY], Some("1000"), Some(&sig), BODY, 699).is_err());
        let mut tampered = BODY.to_vec();
        tampered[20] ^= 1;
        assert!(verify(&[KEY], Some("1000"), Some(&sig), &tampered, 1000).is_err());
        // The signature covers the timestamp: a fresh timestamp on an old signature fails.
        assert!(verify(&[KEY], Some("1200"), Some(&sig), BODY, 1200).is_err());
        assert!(verify(&[KEY], None, Some(&sig), BODY, 1000).is_err());
        assert!(verify(&[KEY], Some("1000"), None, BODY, 1000).is_err());
        assert!(verify(&[KEY], Some("1000"), Some(&sig[3..]), BODY, 1000).is_err());
        assert!(verify(&[KEY], Some("1000"), Some("v1=***"), BODY, 1000).is_err());
        assert!(verify(&[KEY], Some("soon"), Some(&sig), BODY, 1000).is_err());
    }

    #[test]
    fn extreme_timestamps_are_stale_not_an_overflow() {
        // Found by the `callback` fuzz target (fuzz/regressions/callback/ts-overflow).
        let now = 1_700_000_000;
        for ts in [i64::MIN, i64::MAX, now + i64::MIN] {
            let t = ts.to_string();
            let sig = sign(KEY, &t, BODY);
            let e = verify(&[KEY], Some(&t), Some(&sig), BODY, now);
            assert!(e.is_err_and(|e| e.contains("300")));
        }
    }

    #[test]
    fn a_callback_key_short_enough_to_guess_is_refused() {
        let b64 = base64::engine::general_purpose::STANDARD;
        for (short, len) in [("a", 1), ("fifteen-bytes!!", 15)] {
            let key = b64.encode(short);
            let problems =
                CallbackKeys::from_config(&|k| (k == "callback_key").then(|| key.clone()))
                    .map(|_| ())
                    .err()
                    .unwrap_or_default();
            assert_eq!(problems.len(), 1, "{problems:?}");
            assert!(
                problems[0].contains(&format!("is {len} bytes")),
                "{problems:?}"
            );
        }
        let ok = b64.encode("sixteen-bytes-ok");
        assert!(CallbackKeys::from_config(&|k| (k == "callback_key").then(|| ok.clone())).is_ok());
    }

    #[test]
    fn a_broken_callback_configuration_names_each_problem_and_no_value() {
        let problems = CallbackKeys::from_config(&|k| match k {
            "callback_key" => Some("%%%".into()),
            "previous_callback_key" => Some("c2VjcmV0".into()),
            _ => None,
        })
        .map(|_| ())
        .err()
        .unwrap_or_default();
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].contains("\"callback_key\""));
        assert!(problems[1].contains("previous_callback_key_until"));
        assert!(!problems.join(" ").contains("c2VjcmV0"));
    }
}
