//! `spin.toml` and `spin-cron.toml` against the component they run.
//!
//! The component's config keys are listed once, in the contract crate
//! (`mssp_contract::CONFIG_KEYS`; [`KEYS`] is that list as declared on Spin). The test
//! runs the guest's own config reader (`mssp_guest::config::Config::from_getter`) with a
//! recording getter, so a key the guest starts or stops reading fails here until the
//! contract, both manifests and the README's configuration table follow.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use mssp_guest::config::Config;
use toml::{Table, Value};

/// The component's id in both manifests.
const COMPONENT_ID: &str = "mssp-bridge";
/// What `cargo xtask build` produces and the host loads.
const ARTIFACT: &str = "target/wasm32-wasip2/release/mssp_guest.wasm";
/// `spin build`'s command for it (the same cargo invocation as the xtask's).
const BUILD_COMMAND: &str = "cargo build -p mssp-guest --target wasm32-wasip2 --release";
/// The store label the component opens (`wasi:keyvalue/store.open("default")`).
const STORE: &str = "default";

/// How a key is declared in the manifests' `[variables]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Decl {
    /// `{ required = true }`: Spin refuses to start without a value.
    Required,
    /// `{ default = "..." }`; an empty default means unset to the component.
    Optional(&'static str),
}
use Decl::{Optional, Required};

struct Key {
    name: &'static str,
    decl: Decl,
    secret: bool,
    /// A valid value, used to build a working configuration.
    example: &'static str,
}

/// Keys declared differently on Spin than the component needs them: the tick route is
/// how ticks happen there, so its token is required (optional to the component).
const SPIN_REQUIRED: &[&str] = &["tick_token"];

/// Every config key of the contract (`mssp_contract::CONFIG_KEYS`, the one list), as
/// declared on Spin.
static KEYS: std::sync::LazyLock<Vec<Key>> = std::sync::LazyLock::new(|| {
    mssp_contract::CONFIG_KEYS
        .iter()
        .map(|k| Key {
            name: k.name,
            decl: match k.presence {
                _ if SPIN_REQUIRED.contains(&k.name) => Required,
                mssp_contract::Presence::Required => Required,
                mssp_contract::Presence::Optional(d) => Optional(d),
            },
            secret: k.role == mssp_contract::Role::Secret,
            example: k.example,
        })
        .collect()
});

/// `*_url` keys the component only puts into links: no network access.
static LINK_ONLY_URLS: std::sync::LazyLock<Vec<&'static str>> = std::sync::LazyLock::new(|| {
    mssp_contract::keys_with_role(mssp_contract::Role::LinkUrl).collect()
});

fn root() -> PathBuf {
    mssp_e2e::workspace_root()
}

fn manifest(name: &str) -> Table {
    let path = root().join(name);
    let text = std::fs::read_to_string(&path).unwrap();
    text.parse::<Table>()
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn table<'a>(t: &'a Table, path: &[&str]) -> &'a Table {
    let mut cur = t;
    for (i, k) in path.iter().enumerate() {
        cur = cur
            .get(*k)
            .and_then(Value::as_table)
            .unwrap_or_else(|| panic!("missing table [{}]", path[..=i].join(".")));
    }
    cur
}

fn str_list(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|x| x.as_str().expect("a list of strings").to_string())
                .collect()
        })
        .unwrap_or_default()
}

fn key_names() -> BTreeSet<&'static str> {
    KEYS.iter().map(|k| k.name).collect()
}

fn url_keys() -> BTreeSet<&'static str> {
    KEYS.iter()
        .map(|k| k.name)
        .filter(|n| n.ends_with("_url"))
        .collect()
}

/// Spin's `LowerSnakeId` (variable and component-variable names).
fn is_lower_snake_id(s: &str) -> bool {
    s.starts_with(|c: char| c.is_ascii_lowercase())
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && !s.contains("__")
        && !s.ends_with('_')
}

/// The one template a component variable or outbound host may be: `{{ name }}`.
fn template_var(s: &str) -> Option<&str> {
    let inner = s.trim().strip_prefix("{{")?.strip_suffix("}}")?.trim();
    is_lower_snake_id(inner).then_some(inner)
}

/// Spin's rule for an `allowed_outbound_hosts` entry once its template is resolved
/// (`AllowedHostConfig::parse` of spin-outbound-networking): `scheme://host[:port]`,
/// a trailing `/` tolerated, no path, a port or a scheme with a well-known one.
fn spin_accepts_outbound_host(url: &str) -> Result<(), String> {
    let url = url.trim();
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| format!("{url:?} has no scheme"))?;
    if !(scheme == "http" || scheme == "https") {
        return Err(format!("{url:?}: the component speaks http(s) only"));
    }
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (rest, None),
    };
    let host = host.trim_end_matches('/');
    if host.is_empty() || host.contains('/') || host.contains('*') {
        return Err(format!("{url:?}: host must be a plain host name, no path"));
    }
    if let Some(p) = port {
        let (p, path) = p.split_once('/').unwrap_or((p, ""));
        if !path.is_empty() {
            return Err(format!("{url:?} has a path but is not allowed to"));
        }
        p.parse::<u16>()
            .map_err(|_| format!("{url:?}: port {p:?} is not a number"))?;
    }
    Ok(())
}

/// The paths at which two TOML values differ.
fn diff(a: &Value, b: &Value, path: &str, out: &mut Vec<String>) {
    match (a, b) {
        (Value::Table(x), Value::Table(y)) => {
            let keys: BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            for k in keys {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                match (x.get(k), y.get(k)) {
                    (Some(v), Some(w)) => diff(v, w, &p, out),
                    _ => out.push(p),
                }
            }
        }
        _ if a == b => {}
        _ => out.push(path.to_string()),
    }
}

/// Runs the guest's config reader on `values`, recording every key it asks for.
fn keys_read(values: &BTreeMap<&str, &str>) -> (BTreeSet<String>, Result<String, String>) {
    let seen = RefCell::new(BTreeSet::new());
    let result = Config::from_getter(&|k| {
        seen.borrow_mut().insert(k.to_string());
        values.get(k).map(|v| v.to_string())
    });
    (
        seen.into_inner(),
        result.map(|c| format!("{c:?}")).map_err(|e| e.to_string()),
    )
}

fn examples() -> BTreeMap<&'static str, &'static str> {
    KEYS.iter().map(|k| (k.name, k.example)).collect()
}

#[test]
fn the_guest_reads_exactly_the_keys_declared_here() {
    // Basic auth and containment=move: snow_user/snow_password/triage_group_guid read.
    let mut basic = examples();
    basic.remove("snow_token");
    let (mut read, result) = keys_read(&basic);
    assert!(
        result.is_ok(),
        "the examples are a valid config: {result:?}"
    );
    // Bearer auth.
    let (bearer, result) = keys_read(&examples());
    assert!(result.is_ok(), "{result:?}");
    read.extend(bearer);
    // Nothing set: every key read unconditionally.
    read.extend(keys_read(&BTreeMap::new()).0);

    // The test hook `debug_crash_after` is read only by the crash suites'
    // build (feature `crash-hooks`), never by what ships: not declared here.
    let declared: BTreeSet<String> = key_names().iter().map(|k| k.to_string()).collect();
    assert_eq!(
        read.difference(&declared).collect::<Vec<_>>(),
        Vec::<&String>::new(),
        "the guest reads keys missing from the contract (mssp_contract::CONFIG_KEYS), spin.toml and spin-cron.toml"
    );
    assert_eq!(
        declared.difference(&read).collect::<Vec<_>>(),
        Vec::<&String>::new(),
        "keys declared for Spin that the guest never reads"
    );
}

#[test]
fn spin_defaults_are_the_guests_own_defaults() {
    // The keys a working config must set (basic auth: user and password).
    let base: BTreeMap<&str, &str> = KEYS
        .iter()
        .filter(|k| k.decl == Required || ["snow_user", "snow_password"].contains(&k.name))
        .map(|k| (k.name, k.example))
        .collect();
    let mut with_spin_defaults = base.clone();
    for k in KEYS.iter() {
        if let Optional(d) = k.decl {
            with_spin_defaults.entry(k.name).or_insert(d);
        }
    }
    let (_, plain) = keys_read(&base);
    let (_, on_spin) = keys_read(&with_spin_defaults);
    assert!(plain.is_ok(), "{plain:?}");
    assert_eq!(
        plain, on_spin,
        "a default in the manifests changes what the guest would do without it"
    );
}

#[test]
fn both_manifests_declare_every_key_with_its_flags() {
    for file in ["spin.toml", "spin-cron.toml"] {
        let m = manifest(file);
        assert_eq!(
            m.get("spin_manifest_version").and_then(Value::as_integer),
            Some(2),
            "{file}"
        );
        let vars = table(&m, &["variables"]);
        let names: BTreeSet<&str> = vars.keys().map(String::as_str).collect();
        assert_eq!(names, key_names(), "{file}: [variables] vs the config keys");
        for k in KEYS.iter() {
            let v = vars[k.name]
                .as_table()
                .unwrap_or_else(|| panic!("{file}: {} must be a table", k.name));
            for field in v.keys() {
                assert!(
                    ["required", "default", "secret"].contains(&field.as_str()),
                    "{file}: {}.{field} is not a field every Spin 3.x/4.x accepts",
                    k.name
                );
            }
            assert!(is_lower_snake_id(k.name), "{}", k.name);
            let required = v.get("required").and_then(Value::as_bool).unwrap_or(false);
            let default = v
                .get("default")
                .map(|d| d.as_str().expect("a string default"));
            let secret = v.get("secret").and_then(Value::as_bool).unwrap_or(false);
            // Spin: a variable is required or has a default, never both.
            assert!(
                required != default.is_some(),
                "{file}: {} needs exactly one of required/default",
                k.name
            );
            match k.decl {
                Required => assert!(required, "{file}: {} must be required", k.name),
                Optional(d) => assert_eq!(default, Some(d), "{file}: default of {}", k.name),
            }
            assert_eq!(secret, k.secret, "{file}: secret flag of {}", k.name);
            let looks_secret = ["_key", "_secret", "_password", "_token"]
                .iter()
                .any(|s| k.name.ends_with(s));
            assert_eq!(
                k.secret, looks_secret,
                "{}: secret flag vs its name; fix mssp_contract::CONFIG_KEYS",
                k.name
            );
        }
    }
}

#[test]
fn component_variables_map_each_key_to_its_variable() {
    for file in ["spin.toml", "spin-cron.toml"] {
        let m = manifest(file);
        let vars = table(&m, &["component", COMPONENT_ID, "variables"]);
        let names: BTreeSet<&str> = vars.keys().map(String::as_str).collect();
        assert_eq!(names, key_names(), "{file}: component variables");
        for (name, value) in vars {
            let value = value.as_str().expect("a string");
            assert_eq!(
                template_var(value),
                Some(name.as_str()),
                "{file}: {name} = {value:?} must be \"{{{{ {name} }}}}\""
            );
        }
    }
}

#[test]
fn the_source_is_the_artifact_the_host_loads() {
    let m = manifest("spin.toml");
    let components = table(&m, &["component"]);
    assert_eq!(
        components.keys().collect::<Vec<_>>(),
        [COMPONENT_ID],
        "one component"
    );
    let c = table(&m, &["component", COMPONENT_ID]);
    assert_eq!(c.get("source").and_then(Value::as_str), Some(ARTIFACT));
    // The very file the host's tests load; `component` panics when it is missing.
    let built = mssp_e2e::component("mssp_guest");
    let source = std::fs::canonicalize(root().join(ARTIFACT)).unwrap_or_else(|e| {
        panic!(
            "spin.toml's source {ARTIFACT} does not exist ({e}): build with `cargo xtask build` \
             into the workspace's own target/ (Spin resolves the path from the manifest)"
        )
    });
    assert_eq!(source, std::fs::canonicalize(built).unwrap());
    let build = table(&m, &["component", COMPONENT_ID, "build"]);
    assert_eq!(
        build.get("command").and_then(Value::as_str),
        Some(BUILD_COMMAND)
    );
    assert!(
        build.get("workdir").is_none(),
        "the build runs at the workspace root, next to the manifest"
    );
    assert_eq!(
        str_list(c.get("key_value_stores")),
        [STORE],
        "the component opens the store labelled {STORE:?} and no other"
    );
    for field in c.keys() {
        assert!(
            [
                "source",
                "description",
                "variables",
                "allowed_outbound_hosts",
                "key_value_stores",
                "build"
            ]
            .contains(&field.as_str()),
            "unexpected component field {field}: the bridge needs no files, \
             environment, SQLite or other Spin capability"
        );
    }
}

#[test]
fn outbound_hosts_are_exactly_the_upstreams() {
    let m = manifest("spin.toml");
    let hosts = str_list(table(&m, &["component", COMPONENT_ID]).get("allowed_outbound_hosts"));
    let mut templated = BTreeSet::new();
    for h in &hosts {
        let var = template_var(h).unwrap_or_else(|| {
            panic!("{h:?}: every outbound host comes from one URL variable, as \"{{{{ name }}}}\"")
        });
        assert!(
            url_keys().contains(var),
            "{h:?} is not one of the *_url variables"
        );
        assert!(templated.insert(var), "{h:?} twice");
    }
    let upstreams: BTreeSet<&str> = url_keys()
        .into_iter()
        .filter(|k| !LINK_ONLY_URLS.contains(k))
        .collect();
    assert_eq!(
        templated, upstreams,
        "allowed_outbound_hosts must grant every upstream URL and nothing else"
    );
    for link in LINK_ONLY_URLS.iter() {
        assert!(url_keys().contains(link), "{link} is not a *_url key");
    }
    // Every URL value Spin may resolve those templates to must be a valid host entry.
    for k in KEYS.iter().filter(|k| k.name.ends_with("_url")) {
        spin_accepts_outbound_host(k.example).unwrap();
        if let Optional(d) = k.decl {
            spin_accepts_outbound_host(d).unwrap();
        }
    }
    // The rule itself.
    for ok in [
        "https://api.eu.amp.cisco.com",
        "https://acme.service-now.com/",
        "http://127.0.0.1:9001",
        "http://127.0.0.1:9001/",
    ] {
        assert!(spin_accepts_outbound_host(ok).is_ok(), "{ok}");
    }
    for bad in [
        "api.amp.cisco.com",
        "https://acme.service-now.com/api",
        "http://127.0.0.1:9001/x",
        "https://*.service-now.com",
        "https://host:port",
    ] {
        assert!(spin_accepts_outbound_host(bad).is_err(), "{bad}");
    }
}

#[test]
fn spin_toml_names_no_trigger_but_http() {
    let m = manifest("spin.toml");
    let triggers = table(&m, &["trigger"]);
    assert_eq!(
        triggers.keys().collect::<Vec<_>>(),
        ["http"],
        "plain Spin refuses a manifest naming any plugin trigger"
    );
    let http = triggers["http"].as_array().expect("[[trigger.http]]");
    assert_eq!(http.len(), 1);
    let t = http[0].as_table().unwrap();
    assert_eq!(t.get("route").and_then(Value::as_str), Some("/..."));
    assert_eq!(
        t.get("component").and_then(Value::as_str),
        Some(COMPONENT_ID)
    );
    assert!(t.keys().all(|k| k == "route" || k == "component"), "{t:?}");
}

#[test]
fn spin_cron_toml_is_spin_toml_plus_the_cron_trigger() {
    let plain = manifest("spin.toml");
    let mut cron = manifest("spin-cron.toml");
    let triggers = cron
        .get_mut("trigger")
        .and_then(Value::as_table_mut)
        .expect("[trigger]");
    let cron_triggers = triggers.remove("cron").expect("[[trigger.cron]]");
    // Everything else — application, variables, component, HTTP trigger — is identical.
    let mut differences = Vec::new();
    diff(
        &Value::Table(plain),
        &Value::Table(cron),
        "",
        &mut differences,
    );
    assert!(
        differences.is_empty(),
        "spin-cron.toml must be spin.toml plus [[trigger.cron]]; they differ at: {}",
        differences.join(", ")
    );

    let cron_triggers = cron_triggers.as_array().expect("[[trigger.cron]]");
    assert_eq!(cron_triggers.len(), 1);
    let t = cron_triggers[0].as_table().unwrap();
    // The plugin's trigger config denies unknown fields.
    assert_eq!(
        t.keys().map(String::as_str).collect::<BTreeSet<_>>(),
        BTreeSet::from(["component", "cron_expression"])
    );
    assert_eq!(
        t.get("component").and_then(Value::as_str),
        Some(COMPONENT_ID)
    );
    let expr = t.get("cron_expression").and_then(Value::as_str).unwrap();
    let fields: Vec<&str> = expr.split_whitespace().collect();
    assert_eq!(
        fields.len(),
        6,
        "{expr:?}: the plugin's scheduler wants sec min hour day-of-month month day-of-week"
    );
    assert!(
        fields
            .iter()
            .all(|f| f.chars().all(|c| c.is_ascii_digit() || "*/,-".contains(c))),
        "{expr:?}"
    );
}

#[test]
fn the_runtime_config_example_is_valid_for_spin() {
    let path = root().join("spin").join("runtime-config.toml");
    let rc: Table = std::fs::read_to_string(&path).unwrap().parse().unwrap();
    // Spin rejects unknown top-level keys (validate_all_keys_used), and reads
    // `variables_provider` in preference to `config_provider`: only one may appear.
    for k in rc.keys() {
        assert!(
            [
                "key_value_store",
                "config_provider",
                "variables_provider",
                "sqlite_database",
                "state_dir",
                "log_dir"
            ]
            .contains(&k.as_str()),
            "unknown runtime-config key {k}"
        );
    }
    assert!(!(rc.contains_key("config_provider") && rc.contains_key("variables_provider")));

    let stores = table(&rc, &["key_value_store"]);
    assert_eq!(
        stores.keys().collect::<Vec<_>>(),
        [STORE],
        "configure exactly the store the manifests grant"
    );
    let store = table(&rc, &["key_value_store", STORE]);
    assert_eq!(store.get("type").and_then(Value::as_str), Some("spin"));
    assert!(store.get("path").and_then(Value::as_str).is_some());

    let providers = rc
        .get("config_provider")
        .or_else(|| rc.get("variables_provider"))
        .and_then(Value::as_array)
        .expect("a variables provider list");
    let env = providers
        .iter()
        .filter_map(Value::as_table)
        .find(|p| p.get("type").and_then(Value::as_str) == Some("env"))
        .expect("an env provider");
    assert_eq!(
        env.get("prefix").and_then(Value::as_str),
        Some("SPIN_VARIABLE")
    );
    for p in providers.iter().filter_map(Value::as_table) {
        let ty = p.get("type").and_then(Value::as_str).unwrap_or("");
        assert!(
            ["env", "vault", "azure_key_vault", "static"].contains(&ty),
            "unknown provider type {ty:?}"
        );
    }
}

#[test]
fn the_guide_sets_real_variables_and_every_required_one() {
    let guide = std::fs::read_to_string(root().join("spin").join("README.md")).unwrap();
    let mut named = BTreeSet::new();
    let mut rest = guide.as_str();
    while let Some(i) = rest.find("SPIN_VARIABLE_") {
        rest = &rest[i + "SPIN_VARIABLE_".len()..];
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
            .collect();
        if !name.is_empty() {
            named.insert(name.to_lowercase());
        }
    }
    for n in &named {
        assert!(
            key_names().contains(n.as_str()),
            "spin/README.md sets SPIN_VARIABLE_{}, which is no variable",
            n.to_uppercase()
        );
    }
    for k in KEYS.iter().filter(|k| k.decl == Required) {
        assert!(
            named.contains(k.name),
            "spin/README.md's example never sets the required SPIN_VARIABLE_{}",
            k.name.to_uppercase()
        );
    }
}

/// The README's tenant configuration table names every key of the contract, and no
/// key the contract does not have.
#[test]
fn the_readme_configuration_table_follows_the_contract() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let start = readme
        .find("### Tenant configuration")
        .expect("README has a tenant configuration section");
    let table: String = readme[start..]
        .lines()
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .filter_map(|l| l.split('|').nth(1))
        .collect::<Vec<_>>()
        .join(" ");
    let named: BTreeSet<String> = table
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect();
    let contract: BTreeSet<String> = key_names().iter().map(|k| k.to_string()).collect();
    let missing: Vec<_> = contract.difference(&named).collect();
    let extra: Vec<_> = named.difference(&contract).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "README configuration table: missing {missing:?}, not in the contract {extra:?}"
    );
}
