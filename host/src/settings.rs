//! The host's own configuration file (TOML). Every field has a default, so an
//! empty file (or none) is a valid configuration.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

pub use mssp_runtime::{BudgetSettings, LimitSettings};

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Address of the private (operator's) HTTP listener: status pages, `/metrics`,
    /// every tenant route. Loopback unless set otherwise.
    pub listen: SocketAddr,
    /// Address of the public HTTP listener: only `/healthz` and the signed ServiceNow
    /// callback (`POST /tenants/{tenant}/v1/servicenow/events`), for ServiceNow to
    /// reach (behind a TLS-terminating proxy in production). Loopback until set.
    pub public_listen: SocketAddr,
    /// SQLite database holding tenants and key-value data.
    pub database: PathBuf,
    /// The bridge component (`.wasm`).
    pub component: PathBuf,
    /// Where compiled components are cached, keyed by the wasm's hash.
    pub cache_dir: PathBuf,
    /// File holding the master key (else `MSSP_MASTER_KEY`).
    pub master_key_file: Option<PathBuf>,
    /// Log format: "text" or "json".
    pub log_format: LogFormat,
    pub scheduler: SchedulerSettings,
    pub limits: LimitSettings,
    /// Budgets and cooldowns of the shared upstream accounts (`[budgets]`).
    pub budgets: BudgetSettings,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            public_listen: SocketAddr::from(([127, 0, 0, 1], 8081)),
            database: PathBuf::from("mssp-bridge.db"),
            component: PathBuf::from("target/wasm32-wasip2/release/mssp_guest.wasm"),
            cache_dir: PathBuf::from(".mssp/cache"),
            master_key_file: None,
            log_format: LogFormat::Text,
            scheduler: SchedulerSettings::default(),
            limits: LimitSettings::default(),
            budgets: BudgetSettings::default(),
        }
    }
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SchedulerSettings {
    /// Seconds between two ticks of one tenant (a tenant may override it).
    pub interval_secs: u64,
    /// Up to this many seconds are added at random to each interval.
    pub jitter_secs: u64,
    /// Ticks running at once across all tenants.
    pub max_concurrent_ticks: usize,
}

impl Default for SchedulerSettings {
    fn default() -> Self {
        Self {
            interval_secs: 60,
            jitter_secs: 5,
            max_concurrent_ticks: 32,
        }
    }
}

impl Settings {
    /// Reads a settings file; a missing file at the default path means defaults.
    pub fn load(path: Option<&Path>) -> anyhow::Result<Self> {
        let Some(path) = path else {
            return Ok(Self::default());
        };
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("reading settings file {}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| anyhow::anyhow!("settings file {}: {e}", path.display()))
    }

    pub fn parse(text: &str) -> Result<Self, toml::de::Error> {
        toml::from_str(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_means_defaults_and_typos_are_refused() {
        let s = Settings::parse("").unwrap();
        assert!(s.listen.ip().is_loopback());
        assert_eq!(s.limits.memory_mib, 64);
        let s = Settings::parse("[limits]\nmemory_mib = 32\n").unwrap();
        assert_eq!(s.limits.memory_bytes(), 32 << 20);
        let e = Settings::parse("[limits]\nmemroy_mib = 32\n").unwrap_err();
        assert!(e.to_string().contains("memroy_mib"), "{e}");
        assert_eq!(s.budgets.snow_per_hour, None);
        let s = Settings::parse("[budgets]\nxdr_per_hour = 8000\nsnow_per_hour = 2000\n").unwrap();
        assert_eq!(
            (s.budgets.xdr_per_hour, s.budgets.snow_per_hour),
            (Some(8000), Some(2000))
        );
        let e = Settings::parse("[budgets]\nsnow_per_hour = -1\n").unwrap_err();
        assert!(e.to_string().contains("snow_per_hour"), "{e}");
    }
}
