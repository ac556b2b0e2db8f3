//! The customer's configuration, read from a key → value getter (wasi:config on the
//! host, Spin variables on Spin) and validated once per invocation.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt;

use base64::Engine as _;

use crate::severity::Severity;

/// Event types an MSSP commonly treats as high priority (upstream-apis.md §1).
pub fn default_event_types() -> Vec<u64> {
    let mut ids = vec![
        1_090_519_054,
        2_164_260_880,
        2_164_260_893,
        1_090_524_040,
        1_090_524_041,
        1_090_519_084,
        1_107_296_257,
        1_107_296_258,
    ];
    ids.extend(1_107_296_261..=1_107_296_264);
    ids.extend(1_107_296_266..=1_107_296_284);
    ids.extend([
        1_091_567_670,
        2_164_260_931,
        1_090_519_081,
        1_090_519_105,
        1_090_519_102,
        553_648_215,
    ]);
    ids
}

/// A value that must never reach a log line, a response, an error or the store.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SnowAuth {
    Basic { user: String, password: Secret },
    Bearer(Secret),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContainmentPolicy {
    None,
    Move { triage_group_guid: String },
    Isolate,
}

impl ContainmentPolicy {
    pub fn name(&self) -> &'static str {
        match self {
            ContainmentPolicy::None => "none",
            ContainmentPolicy::Move { .. } => "move",
            ContainmentPolicy::Isolate => "isolate",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    pub customer_name: String,
    pub amp_base_url: String,
    pub amp_console_url: String,
    pub amp_client_id: String,
    pub amp_api_key: Secret,
    pub xdr_auth_url: String,
    pub xdr_api_url: String,
    pub xdr_client_id: String,
    pub xdr_client_secret: Secret,
    pub snow_base_url: String,
    pub snow_auth: SnowAuth,
    pub snow_caller_id: Option<String>,
    pub snow_assignment_group: Option<String>,
    pub snow_tag: String,
    pub tick_token: Option<Secret>,
    /// Bearer token of the read routes (status, incidents).
    pub read_token: Option<Secret>,
    /// The running host's own read credential ([`mssp_contract::HOST_READ_TOKEN`]).
    pub host_read_token: Option<Secret>,
    pub event_types: Vec<u64>,
    /// Empty = every severity (events without one included).
    pub severities: Vec<Severity>,
    pub lookback_seconds: u64,
    pub containment: ContainmentPolicy,
    pub containment_event_types: Vec<u64>,
    pub containment_severities: Vec<Severity>,
    pub close_states: Vec<String>,
    pub tick_budget_ms: u64,
    pub http_timeout_ms: u64,
    /// Closed incident records older than this are deleted.
    pub retention_days: u64,
    /// First cooldown, in seconds, after a 429 that names no usable wait (it doubles on
    /// each further one in a row; see `retry::cooldown_ms`). Key
    /// `rate_limit_cooldown_seconds`, default 30, 1–3600.
    pub rate_limit_cooldown_seconds: u64,
    /// Late-arrival window, seconds (`late_window_seconds`, default
    /// [`crate::cursor::DEFAULT_LATE_WINDOW_SECONDS`], from
    /// [`crate::cursor::MIN_LATE_WINDOW_SECONDS`] to
    /// [`crate::cursor::MAX_LATE_WINDOW_SECONDS`]): every event query starts this far
    /// before the watermark, so events reaching Secure Endpoint up to this long after
    /// their own timestamp are still taken in, once; later ones are missed.
    pub late_window_seconds: u64,
    /// Seconds between two reconcile polls of ServiceNow for the state of the open
    /// incidents (`reconcile_interval_secs`, default 3600, 0–86400; 0: every tick). The
    /// signed callback is the fast path; the poll is the safety net for a lost one, and
    /// on a shared instance every tenant with open incidents spends its budget on it.
    pub reconcile_interval_secs: u64,
    /// Test hook: trap right after persisting this incident state (see README).
    pub debug_crash_after: Option<String>,
}

/// Every problem found in the configuration, each naming its key. Never holds a value
/// of a secret key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub Vec<String>);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid bridge configuration: {}", self.0.join("; "))
    }
}

impl std::error::Error for ConfigError {}

/// A config source that can fail per key (wasi:config `get`): `Err` carries the
/// source's message, never a value.
pub type FallibleGetter<'a> = &'a dyn Fn(&str) -> Result<Option<String>, String>;

struct Reader<'a> {
    get: FallibleGetter<'a>,
    problems: Vec<String>,
    /// Keys whose read failed, with the source's message (first failure per key).
    unreadable: RefCell<BTreeMap<String, String>>,
}

impl Reader<'_> {
    fn optional(&self, key: &str) -> Option<String> {
        // Every key read is in the contract the hosts derive their key handling from
        // (secrets sealed, upstream URLs allowlisted): a key missing there would be
        // stored in clear or denied at run time.
        debug_assert!(
            mssp_contract::is_known(key),
            "config key {key:?} is not in mssp_contract::CONFIG_KEYS"
        );
        match (self.get)(key) {
            Ok(v) => v.map(|v| v.trim().to_string()).filter(|v| !v.is_empty()),
            Err(e) => {
                self.unreadable
                    .borrow_mut()
                    .entry(key.to_string())
                    .or_insert(e);
                None
            }
        }
    }

    /// The problems, where a key that could not be read is reported as such rather
    /// than as missing.
    fn into_problems(self) -> Vec<String> {
        let unreadable = self.unreadable.into_inner();
        let mut out: Vec<String> = unreadable
            .iter()
            .map(|(k, e)| format!("config key \"{k}\" could not be read: {e}"))
            .collect();
        out.extend(self.problems.into_iter().filter(|p| {
            !(p.starts_with("missing config key")
                && unreadable.keys().any(|k| p.contains(&format!("\"{k}\""))))
        }));
        out
    }

    fn required(&mut self, key: &str) -> String {
        self.optional(key).unwrap_or_else(|| {
            self.problems.push(format!("missing config key \"{key}\""));
            String::new()
        })
    }

    fn url(&mut self, key: &str, default: Option<&str>) -> String {
        let raw = match default {
            Some(d) => self.optional(key).unwrap_or_else(|| d.to_string()),
            None => self.required(key),
        };
        if !(raw.is_empty() || raw.starts_with("https://") || raw.starts_with("http://")) {
            self.problems.push(format!(
                "config key \"{key}\" must be an http:// or https:// URL, got \"{raw}\""
            ));
        }
        raw.trim_end_matches('/').to_string()
    }

    fn number(&mut self, key: &str, default: u64, min: u64, max: u64) -> u64 {
        match self.optional(key) {
            None => default,
            Some(v) => match v.parse::<u64>() {
                Ok(n) if (min..=max).contains(&n) => n,
                _ => {
                    self.problems.push(format!(
                        "config key \"{key}\" must be a whole number from {min} to {max}, got \"{v}\""
                    ));
                    default
                }
            },
        }
    }

    fn ids(&mut self, key: &str) -> Vec<u64> {
        let Some(v) = self.optional(key) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for part in v.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match part.parse::<u64>() {
                Ok(id) => out.push(id),
                Err(_) => self.problems.push(format!(
                    "config key \"{key}\" holds \"{part}\", which is not an event type id"
                )),
            }
        }
        out
    }

    fn severities(&mut self, key: &str) -> Vec<Severity> {
        let Some(v) = self.optional(key) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for part in v.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match Severity::parse(part) {
                Some(s) => out.push(s),
                None => self.problems.push(format!(
                    "config key \"{key}\" holds \"{part}\"; use Low, Medium, High or Critical"
                )),
            }
        }
        out
    }
}

impl Config {
    /// Reads and validates every key; the error lists all problems at once.
    pub fn from_getter(get: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        Config::from_fallible_getter(&|k| Ok(get(k)))
    }

    /// Every key at once when the source can (`all`), else key by key (`get`): the
    /// wasi:config pattern of `get-all` with a `get` fallback. A key whose `get` fails
    /// is an error naming that key and the source's message, never "missing".
    pub fn from_all_or_each(
        all: Result<Vec<(String, String)>, String>,
        get: FallibleGetter<'_>,
    ) -> Result<Config, ConfigError> {
        match all {
            Ok(pairs) => {
                let all: BTreeMap<String, String> = pairs.into_iter().collect();
                Config::from_getter(&|k| all.get(k).cloned())
            }
            Err(all_failed) => Config::from_fallible_getter(get).map_err(|mut e| {
                if e.0.iter().any(|p| p.contains("could not be read")) {
                    e.0.insert(0, format!("reading all config keys failed ({all_failed}), and so did reading keys one by one"));
                }
                e
            }),
        }
    }

    /// As `from_getter`, over a source that can fail per key.
    pub fn from_fallible_getter(get: FallibleGetter<'_>) -> Result<Config, ConfigError> {
        let mut r = Reader {
            get,
            problems: Vec::new(),
            unreadable: RefCell::new(BTreeMap::new()),
        };
        let customer_name = r.required("customer_name");
        let amp_base_url = r.url("amp_base_url", None);
        let amp_console_url = r.url(
            "amp_console_url",
            Some(mssp_contract::incident::links::default_amp_console()),
        );
        let amp_client_id = r.required("amp_client_id");
        let amp_api_key = Secret(r.required("amp_api_key"));
        let xdr_auth_url = r.url("xdr_auth_url", None);
        let xdr_api_url = r.url("xdr_api_url", None);
        let xdr_client_id = r.required("xdr_client_id");
        let xdr_client_secret = Secret(r.required("xdr_client_secret"));
        let snow_base_url = r.url("snow_base_url", None);
        let snow_auth = match r.optional("snow_token") {
            Some(token) => SnowAuth::Bearer(Secret(token)),
            None => {
                if r.optional("snow_user").is_none() || r.optional("snow_password").is_none() {
                    r.problems.push(
                        "missing config key \"snow_user\"/\"snow_password\" (or set \"snow_token\")"
                            .into(),
                    );
                }
                SnowAuth::Basic {
                    user: r.optional("snow_user").unwrap_or_default(),
                    password: Secret(r.optional("snow_password").unwrap_or_default()),
                }
            }
        };
        let snow_caller_id = r.optional("snow_caller_id");
        let snow_assignment_group = r.optional("snow_assignment_group");
        let snow_tag = r.optional("snow_tag").unwrap_or_else(|| "[XDR]".into());
        // Validated here (the callback route is refused without usable keys); applied
        // through `mssp_contract::access`, which reads the raw configuration.
        let callback_problems =
            mssp_contract::access::CallbackKeys::from_config(&|k| r.optional(k))
                .err()
                .unwrap_or_default();
        r.problems.extend(callback_problems);
        let tick_token = r.optional("tick_token").map(Secret);
        let read_token = r.optional("read_token").map(Secret);
        // A short bearer token can be guessed through the bridge's own routes.
        for (name, token) in [("tick_token", &tick_token), ("read_token", &read_token)] {
            let min = mssp_contract::access::MIN_TOKEN_CHARS;
            if let Some(t) = token
                && t.expose().chars().count() < min
            {
                r.problems.push(format!(
                    "config key \"{name}\" is {} characters; use at least {min} random ones (e.g. `head -c 24 /dev/urandom | base64`)",
                    t.expose().chars().count()
                ));
            }
        }
        // Validated here (a typo is refused at `tenant add`); applied through
        // `mssp_contract::access`, which also holds when the rest of the configuration is refused.
        match r
            .optional("open_reads")
            .map(|v| v.to_ascii_lowercase())
            .as_deref()
        {
            None | Some("false" | "true") => {}
            Some(other) => r.problems.push(format!(
                "config key \"open_reads\" must be true or false, not {other:?}"
            )),
        }
        let host_read_token = r.optional(mssp_contract::HOST_READ_TOKEN).map(Secret);
        let mut event_types = r.ids("event_types");
        if event_types.is_empty() {
            event_types = default_event_types();
        }
        let severities = r.severities("severities");
        let lookback_seconds = r.number("lookback_seconds", 3600, 1, 90 * 24 * 3600);
        let containment = match r
            .optional("containment")
            .as_deref()
            .map(str::to_ascii_lowercase)
        {
            None => ContainmentPolicy::None,
            Some(p) if p == "none" => ContainmentPolicy::None,
            Some(p) if p == "isolate" => ContainmentPolicy::Isolate,
            Some(p) if p == "move" => match r.optional("triage_group_guid") {
                Some(g) => ContainmentPolicy::Move {
                    triage_group_guid: g,
                },
                None => {
                    r.problems.push(
                        "missing config key \"triage_group_guid\" (required by containment=move)"
                            .into(),
                    );
                    ContainmentPolicy::None
                }
            },
            Some(p) => {
                r.problems.push(format!(
                    "config key \"containment\" must be none, move or isolate, got \"{p}\""
                ));
                ContainmentPolicy::None
            }
        };
        let containment_event_types = r.ids("containment_event_types");
        let containment_severities = r.severities("containment_severities");
        let close_states: Vec<String> = r
            .optional("close_states")
            .unwrap_or_else(|| "6,7,8".into())
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect();
        let tick_budget_ms = r.number("tick_budget_ms", 20_000, 100, 3_600_000);
        let http_timeout_ms = r.number("http_timeout_ms", 10_000, 10, 600_000);
        let retention_days = r.number("retention_days", 30, 1, 3650);
        let rate_limit_cooldown_seconds = r.number("rate_limit_cooldown_seconds", 30, 1, 3600);
        let reconcile_interval_secs = r.number("reconcile_interval_secs", 3600, 0, 86_400);
        let late_window_seconds = r.number(
            "late_window_seconds",
            crate::cursor::DEFAULT_LATE_WINDOW_SECONDS,
            crate::cursor::MIN_LATE_WINDOW_SECONDS,
            crate::cursor::MAX_LATE_WINDOW_SECONDS,
        );
        // A test hook: read only by the crash suites' build (feature
        // `crash-hooks`) and the guest's own tests.
        let debug_crash_after = if cfg!(any(test, feature = "crash-hooks")) {
            r.optional("debug_crash_after")
        } else {
            None
        };
        let problems = r.into_problems();
        if !problems.is_empty() {
            return Err(ConfigError(problems));
        }
        Ok(Config {
            customer_name,
            amp_base_url,
            amp_console_url,
            amp_client_id,
            amp_api_key,
            xdr_auth_url,
            xdr_api_url,
            xdr_client_id,
            xdr_client_secret,
            snow_base_url,
            snow_auth,
            snow_caller_id,
            snow_assignment_group,
            snow_tag,
            tick_token,
            read_token,
            host_read_token,
            event_types,
            severities,
            lookback_seconds,
            containment,
            containment_event_types,
            containment_severities,
            close_states,
            tick_budget_ms,
            http_timeout_ms,
            retention_days,
            rate_limit_cooldown_seconds,
            late_window_seconds,
            reconcile_interval_secs,
            debug_crash_after,
        })
    }

    /// Every secret value, in the forms that could leak (raw and inside Basic auth).
    fn secret_values(&self) -> Vec<String> {
        let b64 = |s: String| base64::engine::general_purpose::STANDARD.encode(s);
        let mut out = vec![
            self.amp_api_key.expose().to_string(),
            self.xdr_client_secret.expose().to_string(),
            b64(format!(
                "{}:{}",
                self.amp_client_id,
                self.amp_api_key.expose()
            )),
            b64(format!(
                "{}:{}",
                self.xdr_client_id,
                self.xdr_client_secret.expose()
            )),
        ];
        match &self.snow_auth {
            SnowAuth::Bearer(t) => out.push(t.expose().to_string()),
            SnowAuth::Basic { user, password } => {
                out.push(password.expose().to_string());
                out.push(b64(format!("{user}:{}", password.expose())));
            }
        }
        for t in [&self.tick_token, &self.read_token, &self.host_read_token]
            .into_iter()
            .flatten()
        {
            out.push(t.expose().to_string());
        }
        out.retain(|s| s.len() >= 4);
        out
    }

    /// Masks any secret that an upstream error body might echo back.
    pub fn redact(&self, text: &str) -> String {
        let mut out = text.to_string();
        for secret in self.secret_values() {
            if out.contains(&secret) {
                out = out.replace(&secret, "***");
            }
        }
        out
    }

    /// `<console>/computers/<guid>/trajectory2` ([`mssp_contract::incident::links`]).
    pub fn trajectory_url(&self, connector_guid: &str) -> String {
        mssp_contract::incident::links::amp_trajectory(&self.amp_console_url, connector_guid)
    }

    /// `<console>/computers/<guid>`.
    pub fn computer_url(&self, connector_guid: &str) -> String {
        mssp_contract::incident::links::amp_computer(&self.amp_console_url, connector_guid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::{base_map, config_from};

    #[test]
    fn defaults_apply() {
        let map = base_map();
        let cfg = config_from(&map).unwrap();
        assert_eq!(cfg.amp_base_url, "http://127.0.0.1:9001");
        assert_eq!(cfg.amp_console_url, "https://console.amp.cisco.com");
        assert_eq!(cfg.snow_tag, "[XDR]");
        assert_eq!(cfg.lookback_seconds, 3600);
        assert_eq!(cfg.tick_budget_ms, 20_000);
        assert_eq!(cfg.http_timeout_ms, 10_000);
        assert_eq!(cfg.retention_days, 30);
        assert_eq!(cfg.rate_limit_cooldown_seconds, 30);
        assert_eq!(cfg.late_window_seconds, 3_600);
        assert_eq!(cfg.reconcile_interval_secs, 3_600);
        assert_eq!(cfg.close_states, vec!["6", "7", "8"]);
        assert_eq!(cfg.containment, ContainmentPolicy::None);
        assert_eq!(cfg.event_types, default_event_types());
        assert_eq!(cfg.event_types.len(), 8 + 4 + 19 + 6);
        let keys = mssp_contract::access::CallbackKeys::from_config(&|k| map.get(k).cloned());
        assert_eq!(
            keys.map(|k| k.current().to_vec()),
            Ok(b"secret-key-12345".to_vec())
        );
        assert!(cfg.debug_crash_after.is_none());
    }

    #[test]
    fn a_bearer_token_short_enough_to_guess_is_refused() {
        for key in ["tick_token", "read_token"] {
            let mut map = base_map();
            map.insert(key.into(), "abc123".into());
            let err = config_from(&map).unwrap_err().to_string();
            assert!(err.contains(&format!("\"{key}\" is 6 characters")), "{err}");
            assert!(!err.contains("abc123"), "{err}");
        }
    }

    #[test]
    fn errors_name_every_missing_key_and_never_a_secret() {
        let mut map = base_map();
        map.remove("amp_api_key");
        map.remove("snow_password");
        map.insert("containment".into(), "move".into());
        map.insert("lookback_seconds".into(), "soon".into());
        map.insert("tick_budget_ms".into(), "99999999999999999999".into());
        map.insert("callback_key".into(), "%%%not-base64".into());
        let err = config_from(&map).unwrap_err().to_string();
        assert!(err.contains("\"amp_api_key\""), "{err}");
        assert!(err.contains("\"snow_password\""), "{err}");
        assert!(err.contains("\"triage_group_guid\""), "{err}");
        assert!(err.contains("\"lookback_seconds\""), "{err}");
        assert!(err.contains("\"tick_budget_ms\""), "{err}");
        assert!(err.contains("\"callback_key\""), "{err}");
        assert!(!err.contains("not-base64"), "{err}");
    }

    #[test]
    fn the_late_window_is_bounded() {
        for (value, ok) in [
            ("7200", Some(7_200)),
            ("900", Some(900)),
            ("86400", Some(86_400)),
            ("899", None),
            ("86401", None),
            ("an hour", None),
            ("-5", None),
        ] {
            let mut map = base_map();
            map.insert("late_window_seconds".into(), value.into());
            match (config_from(&map), ok) {
                (Ok(cfg), Some(n)) => assert_eq!(cfg.late_window_seconds, n),
                (Err(e), None) => assert!(
                    e.to_string().contains(
                        "config key \"late_window_seconds\" must be a whole number from 900 to 86400"
                    ),
                    "{e}"
                ),
                (got, want) => panic!("{value}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn parses_lists_and_policies() {
        let mut map = base_map();
        map.insert("event_types".into(), " 1090519054, 553648143 ,".into());
        map.insert("severities".into(), "high,Critical".into());
        map.insert("containment".into(), "Isolate".into());
        map.insert("snow_token".into(), "tok-secret".into());
        let cfg = config_from(&map).unwrap();
        assert_eq!(cfg.event_types, vec![1_090_519_054, 553_648_143]);
        assert_eq!(cfg.severities, vec![Severity::High, Severity::Critical]);
        assert_eq!(cfg.containment, ContainmentPolicy::Isolate);
        assert!(matches!(cfg.snow_auth, SnowAuth::Bearer(_)));
        assert!(!format!("{cfg:?}").contains("tok-secret"));
    }

    #[test]
    fn redacts_secrets_in_any_form() {
        let cfg = config_from(&base_map()).unwrap();
        let basic = base64::engine::general_purpose::STANDARD.encode("amp-client:amp-key-secret");
        let text = format!("echo: amp-key-secret and Basic {basic} and xdr-secret-value");
        let out = cfg.redact(&text);
        assert!(
            !out.contains("amp-key-secret") && !out.contains(&basic),
            "{out}"
        );
        assert!(!out.contains("xdr-secret-value"));
    }

    /// A host whose `get-all` fails, asked key by key, where some keys fail too.
    fn each_failing(
        keys: &'static [&'static str],
    ) -> impl Fn(&str) -> Result<Option<String>, String> {
        let map = base_map();
        move |k: &str| {
            if keys.contains(&k) {
                Err("config I/O: vault sealed".to_string())
            } else {
                Ok(map.get(k).cloned())
            }
        }
    }

    #[test]
    fn a_key_that_cannot_be_read_is_reported_as_unreadable_not_missing() {
        let get = each_failing(&["amp_api_key", "snow_password", "lookback_seconds"]);
        let err = Config::from_all_or_each(Err("get-all unsupported".into()), &get)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("config key \"amp_api_key\" could not be read: config I/O: vault sealed"),
            "{err}"
        );
        assert!(err.contains("\"snow_password\" could not be read"), "{err}");
        assert!(
            err.contains("\"lookback_seconds\" could not be read"),
            "{err}"
        );
        assert!(err.contains("get-all unsupported"), "{err}");
        assert!(!err.contains("missing config key"), "{err}");
        assert!(!err.contains("snow-pass-secret") && !err.contains("amp-key-secret"));
    }

    #[test]
    fn key_by_key_works_when_get_all_fails_and_every_get_succeeds() {
        let get = each_failing(&[]);
        let cfg = Config::from_all_or_each(Err("get-all unsupported".into()), &get).unwrap();
        assert_eq!(cfg.customer_name, "Acme");
        // get-all answering is used as is; a missing key is still "missing".
        let mut pairs: Vec<(String, String)> = base_map().into_iter().collect();
        pairs.retain(|(k, _)| k != "customer_name");
        let err = Config::from_all_or_each(Ok(pairs), &get)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("missing config key \"customer_name\""),
            "{err}"
        );
    }
}
