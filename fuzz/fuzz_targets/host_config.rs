//! The host's configuration: the settings TOML and a tenant's configuration
//! (id, keys, upstream URLs) as `tenant add` stores it.
//!
//! Input: the whole text is parsed as the host settings file. Its first line
//! is also taken as a tenant id and the other lines as `key=value` config
//! pairs for `TenantStore::put`. Properties: never a panic; a stored tenant
//! has a valid id and valid keys, resolves again, keeps in clear exactly the
//! non-secret values, and each upstream URL (`UPSTREAM_URL_KEYS`) is in its
//! outbound allowlist.
#![no_main]

use std::collections::BTreeMap;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use mssp_bridge::outbound::{Origin, UPSTREAM_URL_KEYS};
use mssp_bridge::secrets::{MasterKey, SecretString, is_secret_key};
use mssp_bridge::settings::Settings;
use mssp_bridge::tenants::{TenantSettings, TenantStore, validate_tenant_id};
use mssp_bridge::wasi_config::is_valid_key;

fn master() -> &'static MasterKey {
    static KEY: OnceLock<MasterKey> = OnceLock::new();
    KEY.get_or_init(|| {
        MasterKey::parse("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=", "fuzz").unwrap()
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(s) = Settings::parse(text) {
        // Limits derived from any accepted file do not overflow.
        let _ = s.limits.memory_bytes();
        let _ = s.limits.outbound();
    }

    let mut lines = text.lines();
    let id = lines.next().unwrap_or_default();
    let mut settings = TenantSettings::default();
    let mut secrets = BTreeMap::new();
    for line in lines {
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        let _ = Origin::parse(v);
        if let Some(extra) = k.strip_prefix('+') {
            settings.allowed_outbound.push(format!("{extra}{v}"));
        } else if let Some(secret) = k.strip_prefix('!') {
            secrets.insert(secret.to_string(), SecretString::new(v));
        } else {
            settings.config.insert(k.to_string(), v.to_string());
        }
    }
    let clear_expected: BTreeMap<String, String> = settings
        .config
        .iter()
        .filter(|(k, _)| !is_secret_key(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let Ok(store) = TenantStore::in_memory() else {
        return;
    };
    if store.put(master(), id, settings, secrets, false).is_ok() {
        assert!(validate_tenant_id(id).is_ok());
        let stored = store.get(id).unwrap().unwrap();
        for k in stored.config.keys().chain(stored.secret_names.iter()) {
            assert!(is_valid_key(k), "{k:?}");
            assert!(!stored.config.contains_key(k) || !is_secret_key(k));
        }
        // Exactly the non-secret values are kept in clear.
        assert_eq!(stored.config, clear_expected);
        let resolved = store
            .resolve(master(), id)
            .expect("a stored tenant resolves");
        for (k, v) in &resolved.config {
            if UPSTREAM_URL_KEYS.contains(&k.as_str()) && !v.expose().is_empty() {
                let uri: http::Uri = v.expose().parse().unwrap();
                assert!(resolved.allowlist.allows(&uri), "{k} not allowed");
            }
        }
    }
});
