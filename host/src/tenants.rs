//! Tenants (MSSP customers): their configuration, with secrets sealed under
//! the master key, in the host's SQLite database.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;

use anyhow::{Context as _, anyhow, bail};
use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};

use crate::secrets::{MasterKey, SecretString, is_secret_key};
use mssp_runtime::config::is_valid_key;
use mssp_runtime::outbound::Allowlist;

/// What is stored in clear about a tenant (never a secret value).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct TenantSettings {
    /// Plain configuration values, served to the guest through `wasi:config`.
    pub config: BTreeMap<String, String>,
    /// Names of the secrets that are set (values are sealed).
    pub secret_names: Vec<String>,
    /// Seconds between ticks; the host default when absent.
    pub interval_secs: Option<u64>,
    /// Origins allowed beyond those of the `*_url` config values.
    pub allowed_outbound: Vec<String>,
    /// A component other than the host's default for this tenant (a canary
    /// build, or a test's hostile build).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub component: Option<std::path::PathBuf>,
}

/// What `TenantStore::rekey` did: tenants re-sealed, and tenants already under the
/// new key (a rerun).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Rekeyed {
    pub resealed: usize,
    pub already: usize,
}

/// A tenant ready to run: configuration with secrets opened.
pub struct ResolvedTenant {
    pub id: String,
    pub settings: TenantSettings,
    pub config: BTreeMap<String, SecretString>,
    pub allowlist: Allowlist,
}

impl From<ResolvedTenant> for mssp_runtime::TenantSpec {
    fn from(t: ResolvedTenant) -> Self {
        Self {
            id: t.id,
            config: t.config,
            allowlist: t.allowlist,
            component: t.settings.component,
            interval: t.settings.interval_secs.map(std::time::Duration::from_secs),
            accounts: Vec::new(),
        }
    }
}

/// Tenant ids appear in URLs (`/tenants/{id}/…`) and logs.
pub fn validate_tenant_id(id: &str) -> anyhow::Result<()> {
    let ok = !id.is_empty()
        && id.len() <= 63
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !id.starts_with('-');
    if !ok {
        bail!(
            "tenant id {id:?} is not valid: use 1-63 characters of a-z, 0-9 and '-', not starting with '-'"
        );
    }
    Ok(())
}

pub struct TenantStore {
    conn: Mutex<Connection>,
}

impl TenantStore {
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        let conn = Connection::open(path)
            .with_context(|| format!("opening tenant database {}", path.display()))?;
        Self::init(conn)
    }

    pub fn in_memory() -> anyhow::Result<Self> {
        Self::init(Connection::open_in_memory()?)
    }

    fn init(conn: Connection) -> anyhow::Result<Self> {
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS tenants (
                id       TEXT PRIMARY KEY,
                settings TEXT NOT NULL,
                secrets  BLOB NOT NULL
            );",
        )?;
        Ok(Self {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> anyhow::Result<std::sync::MutexGuard<'_, Connection>> {
        self.conn
            .lock()
            .map_err(|_| anyhow!("tenant database connection poisoned"))
    }

    /// Adds a tenant, or replaces it when `replace` is set. Values of secret
    /// keys are sealed whichever map they arrive in.
    pub fn put(
        &self,
        key: &MasterKey,
        id: &str,
        mut settings: TenantSettings,
        mut secrets: BTreeMap<String, SecretString>,
        replace: bool,
    ) -> anyhow::Result<()> {
        check_candidate(id, &mut settings, &mut secrets)?;
        let sealed = key.seal(id, &secrets)?;
        let json = serde_json::to_string(&settings)?;
        let conn = self.conn()?;
        let sql = if replace {
            "INSERT OR REPLACE INTO tenants (id, settings, secrets) VALUES (?1, ?2, ?3)"
        } else {
            "INSERT INTO tenants (id, settings, secrets) VALUES (?1, ?2, ?3)"
        };
        conn.execute(sql, params![id, json, sealed]).map_err(|e| match e {
            rusqlite::Error::SqliteFailure(f, _)
                if f.code == rusqlite::ErrorCode::ConstraintViolation =>
            {
                anyhow!("tenant {id:?} already exists; remove it first or use `tenant add --replace`")
            }
            e => anyhow!("storing tenant {id:?}: {e}"),
        })?;
        Ok(())
    }

    pub fn list(&self) -> anyhow::Result<Vec<(String, TenantSettings)>> {
        let conn = self.conn()?;
        let mut stmt = conn.prepare("SELECT id, settings FROM tenants ORDER BY id")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
        let mut out = Vec::new();
        for row in rows {
            let (id, json) = row?;
            let settings = serde_json::from_str(&json)
                .with_context(|| format!("tenant {id:?}: stored settings are corrupt"))?;
            out.push((id, settings));
        }
        Ok(out)
    }

    pub fn get(&self, id: &str) -> anyhow::Result<Option<TenantSettings>> {
        let conn = self.conn()?;
        let json: Option<String> = conn
            .query_row(
                "SELECT settings FROM tenants WHERE id=?1",
                params![id],
                |r| r.get(0),
            )
            .optional()?;
        json.map(|j| {
            serde_json::from_str(&j)
                .with_context(|| format!("tenant {id:?}: stored settings are corrupt"))
        })
        .transpose()
    }

    /// Removes a tenant; returns whether it existed.
    pub fn remove(&self, id: &str) -> anyhow::Result<bool> {
        let conn = self.conn()?;
        Ok(conn.execute("DELETE FROM tenants WHERE id=?1", params![id])? > 0)
    }

    /// Opens a tenant's secrets and merges them into its configuration.
    pub fn resolve(&self, key: &MasterKey, id: &str) -> anyhow::Result<ResolvedTenant> {
        let row: Option<(String, Vec<u8>)> = {
            let conn = self.conn()?;
            conn.query_row(
                "SELECT settings, secrets FROM tenants WHERE id=?1",
                params![id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?
        };
        let (json, sealed) = row.ok_or_else(|| anyhow!("no tenant {id:?}"))?;
        let settings: TenantSettings = serde_json::from_str(&json)
            .with_context(|| format!("tenant {id:?}: stored settings are corrupt"))?;
        let secrets = key.open(id, &sealed)?;
        resolved(id, settings, &secrets)
    }

    /// Re-seals every tenant's secrets under `new` in ONE transaction: a crash (even
    /// SIGKILL) before the commit leaves every tenant sealed under `old`, after it
    /// under `new` — never a mix. A tenant that `new` already opens is left as it is,
    /// so running it again after a completed run changes nothing. Errors (nothing
    /// written): a tenant neither key opens, named.
    pub fn rekey(&self, old: &MasterKey, new: &MasterKey) -> anyhow::Result<Rekeyed> {
        let mut conn = self.conn()?;
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let rows: Vec<(String, Vec<u8>)> = {
            let mut stmt = tx.prepare("SELECT id, secrets FROM tenants ORDER BY id")?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect::<Result<_, _>>()?
        };
        let mut done = Rekeyed::default();
        for (id, sealed) in rows {
            if new.open(&id, &sealed).is_ok() {
                done.already += 1;
                continue;
            }
            let secrets = old.open(&id, &sealed).map_err(|_| {
                anyhow!(
                    "tenant {id:?}: neither the current nor the new master key opens its secrets; nothing was changed"
                )
            })?;
            let resealed = new.seal(&id, &secrets)?;
            tx.execute(
                "UPDATE tenants SET secrets=?1 WHERE id=?2",
                params![resealed, id],
            )?;
            done.resealed += 1;
        }
        tx.commit()?;
        Ok(done)
    }

    pub fn resolve_all(&self, key: &MasterKey) -> anyhow::Result<Vec<ResolvedTenant>> {
        self.list()?
            .into_iter()
            .map(|(id, _)| self.resolve(key, &id))
            .collect()
    }
}

/// A tenant as `put` would store it, resolved without storing anything: secret keys
/// given in plain `config` are moved to `secrets`, every key must be lower_snake_case,
/// and every upstream URL must parse (the allowlist). Errors name the key, never a
/// secret value.
pub fn resolve_candidate(
    id: &str,
    mut settings: TenantSettings,
    mut secrets: BTreeMap<String, SecretString>,
) -> anyhow::Result<ResolvedTenant> {
    let (config, allowlist) = check_candidate(id, &mut settings, &mut secrets)?;
    Ok(ResolvedTenant {
        id: id.to_string(),
        settings,
        config,
        allowlist,
    })
}

/// Settings and secrets as the runtime takes them: one configuration, its allowlist.
fn resolved(
    id: &str,
    settings: TenantSettings,
    secrets: &BTreeMap<String, SecretString>,
) -> anyhow::Result<ResolvedTenant> {
    let config = merged(&settings.config, secrets);
    let allowlist = Allowlist::from_config(&config, &settings.allowed_outbound)
        .map_err(|e| anyhow!("tenant {id:?}: {e}"))?;
    Ok(ResolvedTenant {
        id: id.to_string(),
        settings,
        config,
        allowlist,
    })
}

/// The checks of [`TenantStore::put`] and [`resolve_candidate`]; also records the
/// secret names in `settings`. Returns the resolved configuration and its allowlist.
fn check_candidate(
    id: &str,
    settings: &mut TenantSettings,
    secrets: &mut BTreeMap<String, SecretString>,
) -> anyhow::Result<(BTreeMap<String, SecretString>, Allowlist)> {
    validate_tenant_id(id)?;
    let plain: Vec<String> = settings
        .config
        .keys()
        .filter(|k| is_secret_key(k))
        .cloned()
        .collect();
    for k in plain {
        if let Some(v) = settings.config.remove(&k) {
            secrets.insert(k, SecretString::new(v));
        }
    }
    for k in settings.config.keys().chain(secrets.keys()) {
        if !is_valid_key(k) {
            bail!("config key {k:?} is not valid: use lower_snake_case (a-z, 0-9, '_')");
        }
        // The component reads only the contract's keys: an unknown one (a misspelling)
        // would be stored and silently ignored, the tenant running on the default.
        if !mssp_contract::is_known(k) {
            bail!(
                "config key {k:?} is not one the bridge reads (see the README's tenant \
                 configuration table)"
            );
        }
        if k == mssp_contract::HOST_READ_TOKEN {
            bail!(
                "config key {k:?} is set by the running host itself (a new random value \
                 each run), never by an operator; use read_token for a reader's credential"
            );
        }
    }
    // Refuse what could not run: every *_url must parse.
    let config = merged(&settings.config, secrets);
    let allowlist = Allowlist::from_config(&config, &settings.allowed_outbound)
        .map_err(|e| anyhow!("tenant {id:?}: {e}"))?;
    settings.secret_names = secrets.keys().cloned().collect();
    Ok((config, allowlist))
}

fn merged(
    config: &BTreeMap<String, String>,
    secrets: &BTreeMap<String, SecretString>,
) -> BTreeMap<String, SecretString> {
    config
        .iter()
        .map(|(k, v)| (k.clone(), SecretString::new(v.clone())))
        .chain(secrets.iter().map(|(k, v)| (k.clone(), v.clone())))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> MasterKey {
        MasterKey::parse(&MasterKey::generate(), "test").unwrap()
    }

    #[test]
    fn secrets_passed_as_plain_config_are_sealed_anyway() {
        let store = TenantStore::in_memory().unwrap();
        let k = key();
        let mut settings = TenantSettings::default();
        settings
            .config
            .insert("amp_api_key".into(), "plain-but-secret".into());
        settings
            .config
            .insert("amp_base_url".into(), "https://api.amp.cisco.com".into());
        store
            .put(&k, "acme", settings, BTreeMap::new(), false)
            .unwrap();
        let stored = store.get("acme").unwrap().unwrap();
        assert!(!stored.config.contains_key("amp_api_key"));
        assert_eq!(stored.secret_names, vec!["amp_api_key"]);
        let resolved = store.resolve(&k, "acme").unwrap();
        assert_eq!(resolved.config["amp_api_key"].expose(), "plain-but-secret");
        assert!(store.resolve(&key(), "acme").is_err());
    }

    #[test]
    fn a_key_the_bridge_does_not_read_is_refused_and_nothing_stored() {
        let store = TenantStore::in_memory().unwrap();
        let k = key();
        for typo in [
            "late_window_secs",
            "ratelimit_cooldown_seconds",
            "amp_api_keys",
        ] {
            let mut settings = TenantSettings::default();
            settings.config.insert(typo.into(), "60".into());
            let e = store
                .put(&k, "acme", settings, BTreeMap::new(), false)
                .unwrap_err()
                .to_string();
            assert!(
                e.contains(typo) && e.contains("not one the bridge reads"),
                "{e}"
            );
        }
        assert!(store.get("acme").unwrap().is_none());
        // The crash suites' hook is a known key.
        let mut settings = TenantSettings::default();
        settings
            .config
            .insert("debug_crash_after".into(), "open".into());
        store
            .put(&k, "acme", settings, BTreeMap::new(), false)
            .unwrap();
    }

    #[test]
    fn bad_ids_keys_and_duplicates_are_refused_clearly() {
        let store = TenantStore::in_memory().unwrap();
        let k = key();
        let e = store
            .put(
                &k,
                "Acme Corp",
                TenantSettings::default(),
                BTreeMap::new(),
                false,
            )
            .unwrap_err();
        assert!(e.to_string().contains("a-z, 0-9"), "{e}");
        let mut s = TenantSettings::default();
        s.config.insert("AmpKey".into(), "x".into());
        let e = store
            .put(&k, "acme", s, BTreeMap::new(), false)
            .unwrap_err();
        assert!(e.to_string().contains("lower_snake_case"), "{e}");
        store
            .put(
                &k,
                "acme",
                TenantSettings::default(),
                BTreeMap::new(),
                false,
            )
            .unwrap();
        let e = store
            .put(
                &k,
                "acme",
                TenantSettings::default(),
                BTreeMap::new(),
                false,
            )
            .unwrap_err();
        assert!(e.to_string().contains("already exists"), "{e}");
    }
}
