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
    /// SQLite database holding tenants (and key-value data when `[store]` is SQLite).
    pub database: PathBuf,
    /// The bridge component (`.wasm`).
    pub component: PathBuf,
    /// Where compiled components are cached, keyed by the wasm's hash.
    pub cache_dir: PathBuf,
    /// File holding the master key (else `MSSP_MASTER_KEY`).
    pub master_key_file: Option<PathBuf>,
    /// Log format: "text" or "json".
    pub log_format: LogFormat,
    /// Where tenants' key-value data lives (`[store]`).
    pub store: StoreSettings,
    /// Tenant leases between replicas (`[replicas]`), used when `[store]` is shared.
    pub replicas: crate::replicas::ReplicaSettings,
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
            store: StoreSettings::default(),
            replicas: crate::replicas::ReplicaSettings::default(),
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

/// `[store]`: the tenants' key-value store. The tenant registry stays in
/// `database` (SQLite) whatever the kind.
#[derive(Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreSettings {
    /// `"sqlite"` (default: the `database` file) or `"redis"` (shared by replicas).
    pub kind: StoreKind,
    /// For `redis`: `redis://host:port[/db]`, `rediss://…` for TLS; a user and
    /// password may be given as `redis://user:password@host` (shown redacted),
    /// better in `password_file`.
    pub url: Option<String>,
    /// For `redis`: a file holding the password (trailing newline ignored).
    pub password_file: Option<PathBuf>,
    /// For `rediss://`: PEM certificates to trust instead of the system's roots
    /// (a private CA).
    pub ca_file: Option<PathBuf>,
}

impl std::fmt::Debug for StoreSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreSettings")
            .field("kind", &self.kind)
            .field(
                "url",
                &self.url.as_deref().map(mssp_runtime::kv::redact_url),
            )
            .field("password_file", &self.password_file)
            .field("ca_file", &self.ca_file)
            .finish()
    }
}

/// Which key-value backend (`[store] kind`).
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    #[default]
    Sqlite,
    Redis,
}

impl StoreSettings {
    /// Checks the combination: `redis` needs a `url` of scheme `redis` or
    /// `rediss`, a password either in the URL or in `password_file`, not both;
    /// `sqlite` takes none of them.
    fn validate(&self) -> Result<(), String> {
        match (self.kind, &self.url) {
            (StoreKind::Sqlite, None) => {
                if self.password_file.is_some() || self.ca_file.is_some() {
                    return Err("[store] password_file and ca_file are for kind = \"redis\"".into());
                }
                Ok(())
            }
            (StoreKind::Sqlite, Some(_)) => {
                Err("[store] url is for kind = \"redis\" (add kind = \"redis\")".into())
            }
            (StoreKind::Redis, None) => Err(
                "[store] kind = \"redis\" needs url = \"redis://host:port\" (or rediss:// for TLS)"
                    .into(),
            ),
            (StoreKind::Redis, Some(url)) => {
                if !url.starts_with("redis://") && !url.starts_with("rediss://") {
                    return Err(format!(
                        "[store] url {} must start with redis:// or rediss://",
                        mssp_runtime::kv::redact_url(url)
                    ));
                }
                let redacted = mssp_runtime::kv::redact_url(url);
                if self.password_file.is_some() && redacted != *url {
                    return Err(format!(
                        "[store] url {redacted} carries a password and password_file is set: keep one"
                    ));
                }
                if self.ca_file.is_some() && !url.starts_with("rediss://") {
                    return Err("[store] ca_file is for a rediss:// (TLS) url".into());
                }
                Ok(())
            }
        }
    }

    /// How logs and `doctor` name the store: `sqlite <file>` or `redis <url>`
    /// with any password as `***`.
    pub fn describe(&self, database: &Path) -> String {
        match (self.kind, &self.url) {
            (StoreKind::Redis, Some(url)) => {
                format!("redis {}", mssp_runtime::kv::redact_url(url))
            }
            _ => format!("sqlite {}", database.display()),
        }
    }

    /// The Redis connection options (`None` for SQLite), with the password and
    /// CA files read. Errors name the file that cannot be read.
    pub fn redis_options(&self) -> anyhow::Result<Option<mssp_runtime::kv::RedisOptions>> {
        let (StoreKind::Redis, Some(url)) = (self.kind, &self.url) else {
            return Ok(None);
        };
        let password = match &self.password_file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    anyhow::anyhow!("[store] password_file {}: {e}", path.display())
                })?;
                Some(mssp_runtime::SecretString::new(
                    text.trim_end_matches(['\r', '\n']),
                ))
            }
            None => None,
        };
        let ca_pem = match &self.ca_file {
            Some(path) => Some(
                std::fs::read(path)
                    .map_err(|e| anyhow::anyhow!("[store] ca_file {}: {e}", path.display()))?,
            ),
            None => None,
        };
        Ok(Some(mssp_runtime::kv::RedisOptions {
            url: url.clone(),
            password,
            ca_pem,
        }))
    }
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

    /// Parses and checks a settings file's text; errors name the key at fault.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let settings: Self = toml::from_str(text)?;
        settings.store.validate().map_err(anyhow::Error::msg)?;
        settings.replicas.validate().map_err(anyhow::Error::msg)?;
        if settings.scheduler.interval_secs == 0 {
            anyhow::bail!(
                "scheduler.interval_secs = 0: ticks need at least 1 second between them (60 is the default)"
            );
        }
        Ok(settings)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The settings files the project ships (container image, Kubernetes) parse and
    /// say what their comments say.
    #[test]
    fn settings_that_would_hammer_or_stall_are_refused_by_name() {
        for (text, named) in [
            (
                "[scheduler]\ninterval_secs = 0\n",
                "scheduler.interval_secs",
            ),
            (
                "[replicas]\nlease_ttl_secs = 0\n",
                "replicas.lease_ttl_secs",
            ),
            (
                "[replicas]\nlease_ttl_secs = 99999999999\n",
                "replicas.lease_ttl_secs",
            ),
        ] {
            let e = Settings::parse(text).unwrap_err().to_string();
            assert!(e.contains(named), "{text}: {e}");
        }
    }

    #[test]
    fn the_shipped_settings_files_are_valid() {
        let container =
            Settings::parse(include_str!("../../deploy/mssp-bridge.container.toml")).unwrap();
        assert_eq!(container.store.kind, StoreKind::Sqlite);
        let manifest = include_str!("../../deploy/kubernetes/bridge.yaml");
        let embedded: String = manifest
            .lines()
            .skip_while(|l| !l.trim_end().ends_with("mssp-bridge.toml: |"))
            .skip(1)
            .take_while(|l| l.is_empty() || l.starts_with("    "))
            .map(|l| format!("{}\n", l.get(4..).unwrap_or("")))
            .collect();
        let k8s = Settings::parse(&embedded).unwrap();
        assert_eq!(k8s.store.kind, StoreKind::Redis, "{embedded}");
        assert!(!k8s.listen.ip().is_loopback() && !k8s.public_listen.ip().is_loopback());
        assert_eq!(k8s.replicas.lease_ttl_secs, 15.0);
    }

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

    #[test]
    fn the_store_is_sqlite_by_default_and_redis_when_chosen() {
        let s = Settings::parse("").unwrap();
        assert_eq!(s.store.kind, StoreKind::Sqlite);
        assert!(s.store.redis_options().unwrap().is_none());
        let s = Settings::parse(
            "[store]\nkind = \"redis\"\nurl = \"rediss://bridge:s3cr3t-pw@redis.example:6380/2\"\n",
        )
        .unwrap();
        let options = s.store.redis_options().unwrap().unwrap();
        assert_eq!(
            options.url,
            "rediss://bridge:s3cr3t-pw@redis.example:6380/2"
        );
        let shown = s.store.describe(&s.database);
        assert_eq!(shown, "redis rediss://bridge:***@redis.example:6380/2");
        assert!(!format!("{s:?} {options:?}").contains("s3cr3t-pw"));
    }

    #[test]
    fn a_store_setting_that_cannot_work_is_refused_when_read() {
        for (text, names) in [
            ("[store]\nkind = \"redis\"\n", "needs url"),
            ("[store]\nurl = \"redis://h\"\n", "url is for kind"),
            (
                "[store]\nkind = \"redis\"\nurl = \"http://h\"\n",
                "redis:// or rediss://",
            ),
            ("[store]\nkind = \"memcached\"\n", "memcached"),
            (
                "[store]\nkind = \"sqlite\"\npassword_file = \"p\"\n",
                "password_file",
            ),
            (
                "[store]\nkind = \"redis\"\nurl = \"redis://:pw-in-url@h\"\npassword_file = \"p\"\n",
                "keep one",
            ),
            (
                "[store]\nkind = \"redis\"\nurl = \"redis://h\"\nca_file = \"ca.pem\"\n",
                "rediss://",
            ),
        ] {
            let e = Settings::parse(text).unwrap_err().to_string();
            assert!(e.contains(names), "{text}: {e}");
            assert!(!e.contains("pw-in-url"), "{e}");
        }
    }

    #[test]
    fn the_password_file_is_read_without_its_newline() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("redis.pw");
        std::fs::write(&file, "from-a-file\n").unwrap();
        let s = Settings::parse(&format!(
            "[store]\nkind = \"redis\"\nurl = \"redis://127.0.0.1:6379\"\npassword_file = {:?}\n",
            file.display().to_string()
        ))
        .unwrap();
        let options = s.store.redis_options().unwrap().unwrap();
        assert_eq!(
            options.password.as_ref().map(|p| p.expose()),
            Some("from-a-file")
        );
        std::fs::remove_file(&file).unwrap();
        let e = s.store.redis_options().unwrap_err().to_string();
        assert!(e.contains("password_file"), "{e}");
    }
}
