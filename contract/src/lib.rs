//! The contract between the bridge component (`guest/`) and every host that runs it
//! (`host/`, Spin through `spin.toml`, any other embedding): the configuration keys the
//! component reads through `wasi:config`, what each one is, and how a host must treat
//! it. This is the one list: the host derives which keys it seals (secrets) and which
//! open a tenant's outbound allowlist (upstream URLs) from it, and the tests check the
//! component's own reader, both Spin manifests and the README's configuration table
//! against it (`tests/tests/spin_manifest.rs`).
//!
//! Adding a key: one entry here, then its use in the component; the tests name every
//! other place that must follow (manifests, README).
//!
//! Also here: who may call which route of the component ([`access`]: the route table
//! and the one admission rule, which a host can apply before it runs the component); what the component shows of its incidents ([`incident`]: state names,
//! the incident list's items, deep links); what the component reports about its work, as data in its key-value
//! bucket ([`report`]: the tick report and the cumulative counters), and how both sides put a value into a URL path segment or query value
//! ([`percent_encode`]), so the component's upstream calls and the host's calls of the
//! component's routes encode alike.

pub mod access;
pub mod civil;
pub mod incident;
pub mod report;

/// The config key a host sets (never an operator) to a random secret of its own run,
/// so that its own reads of a tenant's routes (status pages, CLI) pass whatever the
/// tenant's `read_token`: `mssp-runtime` sets it for every tenant; on Spin it stays
/// unset.
pub const HOST_READ_TOKEN: &str = "host_read_token";

/// The header of an answer a host made itself instead of sending the request upstream,
/// because the shared upstream account's budget was used up (`budget`) or the account is
/// cooling down after a 429 (`cooldown`). Such an answer is a `429` with `Retry-After` in
/// whole seconds. The component spends no retry on it and leaves the service alone for
/// the rest of the invocation; a host that keeps no budgets (Spin) never sends it.
pub const DEFERRED_HEADER: &str = "x-mssp-deferred";

/// Whether the component needs a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Presence {
    /// The configuration is refused without it.
    Required,
    /// Optional; the text is the default the component applies, empty when an unset
    /// key means "none" (or, for the ServiceNow credentials, one of two forms is
    /// required: `snow_user` + `snow_password`, or `snow_token`).
    Optional(&'static str),
}

/// What a key is, for the hosts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A plain setting, shown in clear (`tenant show`).
    Setting,
    /// A credential: sealed at rest, never printed, never logged.
    Secret,
    /// The base URL of an upstream service the tenant calls: its origin (scheme, host,
    /// port) joins the tenant's outbound allowlist.
    UpstreamUrl,
    /// A URL the component only puts into links: grants no network access.
    LinkUrl,
}

/// An upstream account an MSSP may keep once and share between every tenant: its
/// one XDR organisation and its one ServiceNow instance (the original workflows kept
/// exactly one SecureX and one ServiceNow account). Secure Endpoint is always the
/// customer's own. The component does not know about accounts: a host resolves a
/// tenant's account into the same plain keys ([`Sharing`]).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Account {
    /// A Cisco XDR organisation: `xdr_auth_url`, `xdr_api_url`, `xdr_client_id`,
    /// `xdr_client_secret`.
    Xdr,
    /// A ServiceNow instance: `snow_base_url`, its credentials, and the defaults of
    /// new incidents (`snow_caller_id`, `snow_assignment_group`, `snow_tag`).
    Snow,
}

impl Account {
    /// Every kind of account.
    pub const ALL: [Account; 2] = [Account::Xdr, Account::Snow];

    /// Its short name, the prefix of its keys (`xdr_…`, `snow_…`) and the service
    /// label of the metrics (`xdr`, `snow`).
    pub const fn name(self) -> &'static str {
        match self {
            Account::Xdr => "xdr",
            Account::Snow => "snow",
        }
    }

    /// The kind by its short name (`xdr`, `snow`).
    pub fn parse(name: &str) -> Option<Account> {
        Account::ALL.into_iter().find(|a| a.name() == name)
    }

    /// The service's name for people (`XDR`, `ServiceNow`).
    pub const fn title(self) -> &'static str {
        match self {
            Account::Xdr => "XDR",
            Account::Snow => "ServiceNow",
        }
    }

    /// Every key of this account, in [`CONFIG_KEYS`] order.
    pub fn keys(self) -> impl Iterator<Item = &'static ConfigKey> {
        CONFIG_KEYS
            .iter()
            .filter(move |k| k.sharing.account() == Some(self))
    }
}

/// Where a key's value comes from when a tenant uses a shared [`Account`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sharing {
    /// Always the tenant's own (Secure Endpoint, callbacks, tokens, tuning).
    Tenant,
    /// The account's, for every tenant that uses it (its URLs and credentials): a
    /// tenant that uses the account cannot also set it.
    Account(Account),
    /// The account's unless the tenant sets its own (defaults of new records).
    AccountDefault(Account),
}

impl Sharing {
    /// The account the key belongs to, if any.
    pub const fn account(self) -> Option<Account> {
        match self {
            Sharing::Tenant => None,
            Sharing::Account(a) | Sharing::AccountDefault(a) => Some(a),
        }
    }
}

/// One configuration key of the component.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConfigKey {
    /// The `wasi:config` name (lower_snake_case), also the Spin variable name.
    pub name: &'static str,
    pub presence: Presence,
    pub role: Role,
    /// A valid value (used by the tests to build a working configuration).
    pub example: &'static str,
    /// Whether a shared account supplies it (a host's concern; the component reads
    /// the key the same either way).
    pub sharing: Sharing,
}

const fn key(
    name: &'static str,
    presence: Presence,
    role: Role,
    example: &'static str,
) -> ConfigKey {
    ConfigKey {
        name,
        presence,
        role,
        example,
        sharing: Sharing::Tenant,
    }
}

impl ConfigKey {
    /// The same key, supplied by the account `a` when a tenant uses one.
    const fn of(self, a: Account) -> ConfigKey {
        ConfigKey {
            sharing: Sharing::Account(a),
            ..self
        }
    }

    /// The same key, defaulted by the account `a` when a tenant uses one.
    const fn default_of(self, a: Account) -> ConfigKey {
        ConfigKey {
            sharing: Sharing::AccountDefault(a),
            ..self
        }
    }
}

use Account::{Snow, Xdr};
use Presence::{Optional, Required};
use Role::{LinkUrl, Secret, Setting, UpstreamUrl};

/// Every configuration key the component reads (besides the crash suites' test hook
/// `debug_crash_after`, which the component that ships ignores).
pub const CONFIG_KEYS: &[ConfigKey] = &[
    key("customer_name", Required, Setting, "Acme Corp"),
    key(
        "amp_base_url",
        Required,
        UpstreamUrl,
        "https://api.amp.cisco.com",
    ),
    key(
        "amp_console_url",
        Optional("https://console.amp.cisco.com"),
        LinkUrl,
        "https://console.eu.amp.cisco.com",
    ),
    key("amp_client_id", Required, Setting, "0123456789abcdef0123"),
    key(
        "amp_api_key",
        Required,
        Secret,
        "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee",
    ),
    key(
        "xdr_auth_url",
        Required,
        UpstreamUrl,
        "https://visibility.amp.cisco.com",
    )
    .of(Xdr),
    key(
        "xdr_api_url",
        Required,
        UpstreamUrl,
        "https://private.intel.amp.cisco.com",
    )
    .of(Xdr),
    key("xdr_client_id", Required, Setting, "client-0123456789").of(Xdr),
    key("xdr_client_secret", Required, Secret, "xdr-client-password").of(Xdr),
    key(
        "snow_base_url",
        Required,
        UpstreamUrl,
        "https://acme.service-now.com",
    )
    .of(Snow),
    key("snow_user", Optional(""), Setting, "bridge").of(Snow),
    key("snow_password", Optional(""), Secret, "snow-password").of(Snow),
    key("snow_token", Optional(""), Secret, "snow-bearer-token").of(Snow),
    key(
        "snow_caller_id",
        Optional(""),
        Setting,
        "6816f79cc0a8016401c5a33be04be441",
    )
    .default_of(Snow),
    key(
        "snow_assignment_group",
        Optional(""),
        Setting,
        "287ebd7da9fe198100f92cc8d1d2154e",
    )
    .default_of(Snow),
    key("snow_tag", Optional("[XDR]"), Setting, "[MSSP]").default_of(Snow),
    key("callback_key", Required, Secret, "c2VjcmV0LWtleS0xMjM0NQ=="),
    key(
        "previous_callback_key",
        Optional(""),
        Secret,
        "b2xkLXNlY3JldC1rZXktOTg3Ng==",
    ),
    key(
        "previous_callback_key_until",
        Optional(""),
        Setting,
        "2026-12-31T00:00:00Z",
    ),
    key("tick_token", Optional(""), Secret, "tick-token-0123456789"),
    key("read_token", Optional(""), Secret, "read-token-0123456789"),
    key("open_reads", Optional("false"), Setting, "false"),
    key(
        HOST_READ_TOKEN,
        Optional(""),
        Secret,
        "host-read-token-0123456789",
    ),
    key("event_types", Optional(""), Setting, "1090519054,553648143"),
    key("severities", Optional(""), Setting, "High,Critical"),
    key("lookback_seconds", Optional("3600"), Setting, "7200"),
    key("containment", Optional("none"), Setting, "move"),
    key(
        "triage_group_guid",
        Optional(""),
        Setting,
        "b077d6bc-bbdf-42f7-8838-a06053fbd98a",
    ),
    key(
        "containment_event_types",
        Optional(""),
        Setting,
        "1090519054",
    ),
    key("containment_severities", Optional(""), Setting, "Critical"),
    key("close_states", Optional("6,7,8"), Setting, "6,7"),
    key("tick_budget_ms", Optional("20000"), Setting, "15000"),
    key("http_timeout_ms", Optional("10000"), Setting, "5000"),
    key("retention_days", Optional("30"), Setting, "90"),
    key("rate_limit_cooldown_seconds", Optional("30"), Setting, "60"),
    key("late_window_seconds", Optional("3600"), Setting, "7200"),
    key("reconcile_interval_secs", Optional("3600"), Setting, "1800"),
];

/// The keys that name one upstream **account** per service (its label as in the
/// allowlist and the metrics: `amp`, `xdr`, `snow`): the origin of the first key (an
/// upstream URL) and the values of the others (who the account is). Tenants whose values
/// agree use the same account upstream — the same Secure Endpoint API client, XDR
/// organisation client, ServiceNow integration user — and so share its rate limit; a host
/// that keeps one budget per account derives the account from these (hashed, never in
/// clear: `snow_token` is a secret).
pub const ACCOUNT_KEYS: &[(&str, &[&str])] = &[
    ("amp", &["amp_base_url", "amp_client_id"]),
    ("xdr", &["xdr_auth_url", "xdr_client_id"]),
    ("snow", &["snow_base_url", "snow_user", "snow_token"]),
];

/// Keys only test builds of the component read (the crash suites' `debug_crash_after`,
/// read by `mssp_guest_crash_hooks.wasm`; the component that ships ignores it).
pub const TEST_HOOK_KEYS: &[&str] = &["debug_crash_after"];

/// Whether a host may store this key for a tenant: a key of [`CONFIG_KEYS`] or a
/// [`TEST_HOOK_KEYS`] hook. Anything else would be ignored by the component (a
/// misspelling silently running on the default).
pub fn is_known(name: &str) -> bool {
    config_key(name).is_some() || TEST_HOOK_KEYS.contains(&name)
}

/// Everything but RFC 3986's unreserved characters (`A–Z a–z 0–9 - . _ ~`).
const NOT_UNRESERVED: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Percent-encodes a value for one URL path segment or query value: every byte but the
/// RFC 3986 unreserved characters, as `%XX` (upper-case hex) of its UTF-8 bytes.
pub fn percent_encode(value: &str) -> String {
    percent_encoding::utf8_percent_encode(value, NOT_UNRESERVED).to_string()
}

/// The key of that name, if the component reads it.
pub fn config_key(name: &str) -> Option<&'static ConfigKey> {
    CONFIG_KEYS.iter().find(|k| k.name == name)
}

/// Names of the keys of one role, in [`CONFIG_KEYS`] order.
pub fn keys_with_role(role: Role) -> impl Iterator<Item = &'static str> {
    CONFIG_KEYS
        .iter()
        .filter(move |k| k.role == role)
        .map(|k| k.name)
}

/// Whether a key holds a credential (sealed at rest, never printed).
pub fn is_secret(name: &str) -> bool {
    config_key(name).is_some_and(|k| k.role == Role::Secret)
}

/// Whether a key names an upstream service the tenant calls (its origin joins the
/// outbound allowlist).
pub fn is_upstream_url(name: &str) -> bool {
    config_key(name).is_some_and(|k| k.role == Role::UpstreamUrl)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_lower_snake_case_and_urls_are_named_so() {
        let mut seen = std::collections::BTreeSet::new();
        for k in CONFIG_KEYS {
            assert!(seen.insert(k.name), "{} twice", k.name);
            assert!(
                k.name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
                "{}",
                k.name
            );
            let url_role = matches!(k.role, Role::UpstreamUrl | Role::LinkUrl);
            assert_eq!(url_role, k.name.ends_with("_url"), "{}", k.name);
        }
        assert_eq!(
            keys_with_role(Role::UpstreamUrl).collect::<Vec<_>>(),
            [
                "amp_base_url",
                "xdr_auth_url",
                "xdr_api_url",
                "snow_base_url"
            ]
        );
        assert!(is_secret("callback_key") && !is_secret("customer_name") && !is_secret("nope"));
        assert!(is_upstream_url("snow_base_url") && !is_upstream_url("amp_console_url"));
    }

    #[test]
    fn an_accounts_keys_are_exactly_those_named_after_it() {
        for k in CONFIG_KEYS {
            let by_prefix = Account::ALL
                .into_iter()
                .find(|a| k.name.starts_with(&format!("{}_", a.name())));
            assert_eq!(k.sharing.account(), by_prefix, "{}", k.name);
        }
        let names = |a: Account| a.keys().map(|k| k.name).collect::<Vec<_>>();
        assert_eq!(
            names(Xdr),
            [
                "xdr_auth_url",
                "xdr_api_url",
                "xdr_client_id",
                "xdr_client_secret"
            ]
        );
        assert_eq!(Account::parse("snow"), Some(Snow));
        assert_eq!(Account::parse("amp"), None);
        assert!(
            Snow.keys()
                .filter(|k| matches!(k.sharing, Sharing::AccountDefault(_)))
                .all(|k| matches!(k.presence, Presence::Optional(_)) && k.role == Setting)
        );
    }

    #[test]
    fn percent_encoding_keeps_only_unreserved_characters() {
        assert_eq!(percent_encode("amp-1a2b_d42.x~"), "amp-1a2b_d42.x~");
        assert_eq!(percent_encode("a/b?c d"), "a%2Fb%3Fc%20d");
        assert_eq!(
            percent_encode("2020-02-20T18:20:38+00:00"),
            "2020-02-20T18%3A20%3A38%2B00%3A00"
        );
        assert_eq!(percent_encode("é^"), "%C3%A9%5E");
    }
}
