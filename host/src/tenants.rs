//! Tenants (MSSP customers): their configuration, with secrets sealed under
//! the master key, in the host's SQLite database; resolved with the shared upstream
//! accounts they use ([`crate::accounts`]) into what the runtime runs.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;

use anyhow::{Context as _, anyhow, bail};
use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};

use crate::accounts::{Account, AccountUse, OpenAccount, apply_accounts, reference_key};
use crate::secrets::{MasterKey, Owner, SecretString, is_secret_key};
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
    /// The shared accounts it uses, by kind (`xdr_account=NAME`, `snow_account=NAME`);
    /// a kind not named here is configured by the tenant's own keys.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub accounts: BTreeMap<Account, String>,
}

/// What `TenantStore::rekey` did: tenants and accounts re-sealed, and those already
/// under the new key (a rerun).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Rekeyed {
    pub resealed: usize,
    pub already: usize,
    pub accounts_resealed: usize,
    pub accounts_already: usize,
}

/// A tenant ready to run: configuration with secrets opened, its accounts' keys in it.
pub struct ResolvedTenant {
    pub id: String,
    pub settings: TenantSettings,
    /// Every `wasi:config` value the component reads (never a host key such as
    /// `xdr_account`).
    pub config: BTreeMap<String, SecretString>,
    pub allowlist: Allowlist,
    /// The shared accounts it uses, one per service (`xdr`, `snow`) at most, with
    /// their budgets; empty when it has its own keys for every service.
    pub accounts: Vec<AccountUse>,
}

impl From<ResolvedTenant> for mssp_runtime::TenantSpec {
    fn from(t: ResolvedTenant) -> Self {
        Self {
            id: t.id,
            config: t.config,
            allowlist: t.allowlist,
            component: t.settings.component,
            interval: t.settings.interval_secs.map(std::time::Duration::from_secs),
            // The shared accounts the operator set up (`account add`) name the runtime's
            // budget accounts; a service without one keeps the account the runtime
            // derives from the credential. An account without `budget_per_hour` takes
            // the host's `[budgets]` default for its service.
            accounts: t
                .accounts
                .into_iter()
                .map(|a| mssp_runtime::AccountRef {
                    service: a.service.to_string(),
                    name: a.name,
                    per_hour: a.budget_per_hour,
                })
                .collect(),
        }
    }
}

/// Tenant ids appear in URLs (`/tenants/{id}/…`) and logs.
pub fn validate_tenant_id(id: &str) -> anyhow::Result<()> {
    validate_name("tenant id", id)
}

/// The rule of tenant ids and account names: 1-63 characters of a-z, 0-9 and '-',
/// not starting with '-'. `what` names the thing in the error.
pub fn validate_name(what: &str, id: &str) -> anyhow::Result<()> {
    let ok = !id.is_empty()
        && id.len() <= 63
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !id.starts_with('-');
    if !ok {
        bail!(
            "{what} {id:?} is not valid: use 1-63 characters of a-z, 0-9 and '-', not starting with '-'"
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
            );
            CREATE TABLE IF NOT EXISTS accounts (
                name     TEXT PRIMARY KEY,
                kind     TEXT NOT NULL,
                settings TEXT NOT NULL,
                secrets  BLOB NOT NULL
            );",
        )?;
        Ok(Self {
            conn: Mutex::new(conn),
        })
    }

    pub(crate) fn conn(&self) -> anyhow::Result<std::sync::MutexGuard<'_, Connection>> {
        self.conn
            .lock()
            .map_err(|_| anyhow!("tenant database connection poisoned"))
    }

    /// Adds a tenant, or replaces it when `replace` is set. Values of secret
    /// keys are sealed whichever map they arrive in. Errors (nothing stored): those
    /// of [`TenantStore::resolve_candidate`], an existing tenant without `replace`.
    pub fn put(
        &self,
        key: &MasterKey,
        id: &str,
        mut settings: TenantSettings,
        mut secrets: BTreeMap<String, SecretString>,
        replace: bool,
    ) -> anyhow::Result<()> {
        check_candidate(id, &mut settings, &mut secrets)?;
        self.assemble(key, id, settings.clone(), &secrets, None)?;
        let sealed = key.seal(Owner::Tenant(id), &secrets)?;
        let json = serde_json::to_string(&settings)?;
        let mut conn = self.conn()?;
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        // One Secure Endpoint organisation, one tenant: its client id names the tenant's
        // incidents (the customer tag in every key), so a second tenant on it would open
        // every incident again and could not be told apart in ServiceNow.
        if let Some(client) = settings.config.get("amp_client_id") {
            for (other, s) in tenant_rows(&tx)? {
                if other != id && s.config.get("amp_client_id") == Some(client) {
                    bail!(
                        "tenant {id:?}: amp_client_id {client:?} is already tenant {other:?}'s; \
                         two tenants on one Secure Endpoint organisation would open every \
                         incident twice (edit {other:?} instead, or remove it first)"
                    );
                }
            }
        }
        // The accounts it uses still exist when it is written (an `account remove` of
        // another process cannot slip in between).
        for (kind, name) in &settings.accounts {
            let stored: Option<String> = tx
                .query_row(
                    "SELECT kind FROM accounts WHERE name=?1",
                    params![name],
                    |r| r.get(0),
                )
                .optional()?;
            if stored.as_deref() != Some(kind.name()) {
                bail!(
                    "tenant {id:?}: the {} account {name:?} is gone",
                    kind.title()
                );
            }
        }
        let sql = if replace {
            "INSERT OR REPLACE INTO tenants (id, settings, secrets) VALUES (?1, ?2, ?3)"
        } else {
            "INSERT INTO tenants (id, settings, secrets) VALUES (?1, ?2, ?3)"
        };
        tx.execute(sql, params![id, json, sealed]).map_err(|e| match e {
            rusqlite::Error::SqliteFailure(f, _)
                if f.code == rusqlite::ErrorCode::ConstraintViolation =>
            {
                anyhow!("tenant {id:?} already exists; remove it first or use `tenant add --replace`")
            }
            e => anyhow!("storing tenant {id:?}: {e}"),
        })?;
        tx.commit()?;
        Ok(())
    }

    pub fn list(&self) -> anyhow::Result<Vec<(String, TenantSettings)>> {
        tenant_rows(&*self.conn()?)
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

    /// Opens a tenant's secrets and merges them, and the keys of the accounts it uses,
    /// into its configuration. Errors: no such tenant, the wrong master key, a missing
    /// account, an own key of a service it takes from an account.
    pub fn resolve(&self, key: &MasterKey, id: &str) -> anyhow::Result<ResolvedTenant> {
        let (settings, secrets) = self.open_tenant(key, id)?;
        self.assemble(key, id, settings, &secrets, None)
    }

    /// As [`TenantStore::resolve`], with `account` in place of the stored account of
    /// that name: how a tenant would run after an account edit, before it is saved.
    pub fn resolve_with_account(
        &self,
        key: &MasterKey,
        id: &str,
        account: &OpenAccount,
    ) -> anyhow::Result<ResolvedTenant> {
        let (settings, secrets) = self.open_tenant(key, id)?;
        self.assemble(key, id, settings, &secrets, Some(account))
    }

    /// A tenant's stored settings and its opened secrets (its own, no account's).
    pub fn open_tenant(
        &self,
        key: &MasterKey,
        id: &str,
    ) -> anyhow::Result<(TenantSettings, BTreeMap<String, SecretString>)> {
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
        let secrets = key.open(Owner::Tenant(id), &sealed)?;
        Ok((settings, secrets))
    }

    /// A tenant as `put` would store it, resolved without storing anything: secret
    /// keys given in plain `config` are moved to `secrets`, every key must be one the
    /// component reads, the accounts it names must exist with their kind, and every
    /// upstream URL must parse (the allowlist). Errors name the key, never a secret
    /// value.
    pub fn resolve_candidate(
        &self,
        key: &MasterKey,
        id: &str,
        mut settings: TenantSettings,
        mut secrets: BTreeMap<String, SecretString>,
    ) -> anyhow::Result<ResolvedTenant> {
        check_candidate(id, &mut settings, &mut secrets)?;
        self.assemble(key, id, settings, &secrets, None)
    }

    /// Settings, secrets and the accounts they name (`replacing` one of them) as the
    /// runtime takes them: one configuration, its allowlist, the accounts used.
    fn assemble(
        &self,
        key: &MasterKey,
        id: &str,
        settings: TenantSettings,
        secrets: &BTreeMap<String, SecretString>,
        replacing: Option<&OpenAccount>,
    ) -> anyhow::Result<ResolvedTenant> {
        let mut accounts = Vec::new();
        for (kind, name) in &settings.accounts {
            let open = match replacing {
                Some(a) if &a.record.name == name => OpenAccount {
                    record: a.record.clone(),
                    secrets: a.secrets.clone(),
                },
                _ => self.open_account(key, name).map_err(|e| {
                    anyhow!("tenant {id:?}: {}={name}: {e:#}", reference_key(*kind))
                })?,
            };
            if open.record.kind != *kind {
                bail!(
                    "tenant {id:?}: {}={name} names the {} account {name:?}, not a {} one",
                    reference_key(*kind),
                    open.record.kind.title(),
                    kind.title()
                );
            }
            accounts.push(open);
        }
        let mut config = merged(&settings.config, secrets);
        let uses = apply_accounts(id, &mut config, &accounts)?;
        let allowlist = Allowlist::from_config(&config, &settings.allowed_outbound)
            .map_err(|e| anyhow!("tenant {id:?}: {e}"))?;
        Ok(ResolvedTenant {
            id: id.to_string(),
            settings,
            config,
            allowlist,
            accounts: uses,
        })
    }

    /// Re-seals every tenant's and every account's secrets under `new` in ONE
    /// transaction: a crash (even SIGKILL) before the commit leaves every one sealed
    /// under `old`, after it under `new` — never a mix. One that `new` already opens is
    /// left as it is, so running it again after a completed run changes nothing.
    /// Errors (nothing written): a tenant or account neither key opens, named.
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
            if new.open(Owner::Tenant(&id), &sealed).is_ok() {
                done.already += 1;
                continue;
            }
            let secrets = old.open(Owner::Tenant(&id), &sealed).map_err(|_| {
                anyhow!(
                    "tenant {id:?}: neither the current nor the new master key opens its secrets; nothing was changed"
                )
            })?;
            let resealed = new.seal(Owner::Tenant(&id), &secrets)?;
            tx.execute(
                "UPDATE tenants SET secrets=?1 WHERE id=?2",
                params![resealed, id],
            )?;
            done.resealed += 1;
        }
        let rows: Vec<(String, Vec<u8>)> = {
            let mut stmt = tx.prepare("SELECT name, secrets FROM accounts ORDER BY name")?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect::<Result<_, _>>()?
        };
        for (name, sealed) in rows {
            let owner = Owner::Account(&name);
            if new.open(owner, &sealed).is_ok() {
                done.accounts_already += 1;
                continue;
            }
            let secrets = old.open(owner, &sealed).map_err(|_| {
                anyhow!(
                    "account {name:?}: neither the current nor the new master key opens its secrets; nothing was changed"
                )
            })?;
            let resealed = new.seal(owner, &secrets)?;
            tx.execute(
                "UPDATE accounts SET secrets=?1 WHERE name=?2",
                params![resealed, name],
            )?;
            done.accounts_resealed += 1;
        }
        tx.commit()?;
        Ok(done)
    }

    /// Writes a consistent copy of the whole registry to `path` (SQLite's `VACUUM INTO`;
    /// `path` must not exist): the image a shared store keeps.
    pub fn vacuum_into(&self, path: &Path) -> anyhow::Result<()> {
        let target = path
            .to_str()
            .ok_or_else(|| anyhow!("registry image path {} is not UTF-8", path.display()))?;
        self.conn()?
            .execute("VACUUM INTO ?1", params![target])
            .with_context(|| format!("writing the registry image {}", path.display()))?;
        Ok(())
    }

    /// Rows changed through this store since it was opened (SQLite's `total_changes`).
    pub fn changes(&self) -> anyhow::Result<u64> {
        Ok(self.conn()?.total_changes())
    }

    /// SQLite's `data_version`: changes whenever another connection commits to the
    /// file, so a server sees edits made by `mssp-bridge tenant …` meanwhile.
    pub fn data_version(&self) -> anyhow::Result<u64> {
        let v: i64 = self
            .conn()?
            .query_row("PRAGMA data_version", [], |r| r.get(0))?;
        Ok(u64::try_from(v).unwrap_or_default())
    }

    pub fn resolve_all(&self, key: &MasterKey) -> anyhow::Result<Vec<ResolvedTenant>> {
        self.list()?
            .into_iter()
            .map(|(id, _)| self.resolve(key, &id))
            .collect()
    }
}

/// The checks of [`TenantStore::put`] and [`TenantStore::resolve_candidate`] on the
/// tenant's own keys; also records the secret names in `settings`.
fn check_candidate(
    id: &str,
    settings: &mut TenantSettings,
    secrets: &mut BTreeMap<String, SecretString>,
) -> anyhow::Result<()> {
    validate_tenant_id(id)?;
    move_secrets(&mut settings.config, secrets);
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
    for name in settings.accounts.values() {
        validate_name("account name", name)?;
    }
    settings.secret_names = secrets.keys().cloned().collect();
    Ok(())
}

/// Every tenant's id and stored settings, by id, on `conn` (a transaction's too).
pub(crate) fn tenant_rows(conn: &Connection) -> anyhow::Result<Vec<(String, TenantSettings)>> {
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

/// Moves every secret key's value given in plain `config` to `secrets`, so it is
/// sealed whichever way it came.
pub(crate) fn move_secrets(
    config: &mut BTreeMap<String, String>,
    secrets: &mut BTreeMap<String, SecretString>,
) {
    let plain: Vec<String> = config
        .keys()
        .filter(|k| is_secret_key(k))
        .cloned()
        .collect();
    for k in plain {
        if let Some(v) = config.remove(&k) {
            secrets.insert(k, SecretString::new(v));
        }
    }
}

/// Plain values and opened secrets as one configuration.
pub(crate) fn merged(
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
    fn a_second_tenant_on_one_secure_endpoint_organisation_is_refused() {
        let store = TenantStore::in_memory().unwrap();
        let k = key();
        let with_client = |client: &str| {
            let mut s = TenantSettings::default();
            s.config.insert("amp_client_id".into(), client.into());
            s
        };
        store
            .put(&k, "acme", with_client("acme-amp"), BTreeMap::new(), false)
            .unwrap();
        let err = store
            .put(
                &k,
                "initech",
                with_client("acme-amp"),
                BTreeMap::new(),
                false,
            )
            .unwrap_err()
            .to_string();
        assert!(err.contains("already tenant \"acme\""), "{err}");
        assert_eq!(store.list().unwrap().len(), 1, "nothing stored");
        // The tenant itself may be saved again with its own client id.
        store
            .put(&k, "acme", with_client("acme-amp"), BTreeMap::new(), true)
            .unwrap();
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
