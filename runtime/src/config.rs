//! `wasi:config/store@0.2.0-draft-2024-09-27`, served from the tenant's configuration.
//!
//! On Spin the same interface reads application variables, so keys are
//! `lower_snake_case` everywhere.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::bindings::wasi::config::store;
use crate::secret::SecretString;

/// A tenant's resolved configuration: plain values and decrypted secrets.
pub type ConfigMap = Arc<BTreeMap<String, SecretString>>;

/// The configuration capability of one store: what [`store::Host`] is implemented on.
pub struct TenantConfig(pub ConfigMap);

/// Whether `key` is a valid config key (and so a valid Spin variable name).
pub fn is_valid_key(key: &str) -> bool {
    let mut chars = key.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && !key.ends_with('_')
        && !key.contains("__")
}

impl store::Host for TenantConfig {
    async fn get(&mut self, key: String) -> wasmtime::Result<Result<Option<String>, store::Error>> {
        Ok(Ok(self.0.get(&key).map(|v| v.expose().to_string())))
    }

    async fn get_all(&mut self) -> wasmtime::Result<Result<Vec<(String, String)>, store::Error>> {
        Ok(Ok(self
            .0
            .iter()
            .map(|(k, v)| (k.clone(), v.expose().to_string()))
            .collect()))
    }
}

#[cfg(test)]
mod tests {
    use super::is_valid_key;

    #[test]
    fn keys_follow_spin_variable_rules() {
        for good in ["amp_api_key", "customer_name", "x1", "tick_budget_ms"] {
            assert!(is_valid_key(good), "{good}");
        }
        for bad in [
            "", "Amp", "1x", "amp-key", "amp__key", "amp_", "_amp", "AMP_KEY",
        ] {
            assert!(!is_valid_key(bad), "{bad}");
        }
    }
}
