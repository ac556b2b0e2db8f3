//! Shared upstream accounts: the MSSP's one XDR organisation and its one ServiceNow
//! instance, kept once in the host's database (table `accounts`, next to `tenants`)
//! and used by every tenant that names them (`xdr_account=NAME`,
//! `snow_account=NAME`). Secure Endpoint stays each customer's own.
//!
//! Which component keys an account holds is the contract's word
//! ([`mssp_contract::Sharing`]): an account supplies its keys to each tenant that uses
//! it, and a tenant that uses an account cannot also set those keys itself (an error
//! when it is saved, naming the keys); the defaults of new records
//! (`snow_caller_id`, `snow_assignment_group`, `snow_tag`) are the account's unless
//! the tenant sets its own. The component never sees an account: the host resolves
//! a tenant into the same plain keys (`TenantStore::resolve`), so the same `.wasm`
//! runs on Spin with per-app variables.
//!
//! An account's secrets are sealed like a tenant's, with `account:NAME` as the
//! associated data ([`Owner::Account`]), so a sealed box never opens in another row.

use std::collections::BTreeMap;

use anyhow::{Context as _, anyhow, bail};
use rusqlite::{OptionalExtension, params};
use serde::{Deserialize, Serialize};

pub use mssp_contract::Account;
use mssp_contract::Sharing;

use crate::secrets::{MasterKey, Owner, SecretString};
use crate::tenants::{
    ResolvedTenant, TenantStore, merged, move_secrets, tenant_rows, validate_name,
};

/// The account's own host key: how many upstream calls per hour every tenant using it
/// may make together (a whole number ≥ 1; unset = no budget). Read by the runtime's
/// budget enforcement through [`AccountUse::budget_per_hour`].
pub const BUDGET_KEY: &str = "budget_per_hour";

/// The tenant's host key that names the account of `kind` it uses: `xdr_account`,
/// `snow_account`. Never passed to the component.
pub const fn reference_key(kind: Account) -> &'static str {
    match kind {
        Account::Xdr => "xdr_account",
        Account::Snow => "snow_account",
    }
}

/// The kind of account a tenant key names (`xdr_account` → XDR), if it is one.
pub fn referenced_kind(key: &str) -> Option<Account> {
    Account::ALL.into_iter().find(|a| reference_key(*a) == key)
}

/// What is stored in clear about an account (never a secret value).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct AccountSettings {
    /// Plain values of the account's component keys (e.g. `xdr_client_id`).
    pub config: BTreeMap<String, String>,
    /// Names of the secrets that are set (values are sealed).
    pub secret_names: Vec<String>,
    /// Upstream calls per hour for all its tenants together ([`BUDGET_KEY`]).
    pub budget_per_hour: Option<u32>,
}

/// One stored account.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccountRecord {
    pub name: String,
    pub kind: Account,
    pub settings: AccountSettings,
}

/// An account with its secrets opened: what a tenant's configuration is resolved with.
pub struct OpenAccount {
    pub record: AccountRecord,
    pub secrets: BTreeMap<String, SecretString>,
}

/// Which shared account a resolved tenant uses for one service, and its budget
/// ([`ResolvedTenant::accounts`]; no entry = the tenant's own keys for that service).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccountUse {
    /// The service: `"xdr"` or `"snow"` (the metrics' service labels).
    pub service: &'static str,
    /// The account's name.
    pub name: String,
    /// Upstream calls per hour allowed to every tenant of the account together;
    /// `None` = no budget.
    pub budget_per_hour: Option<u32>,
}

impl AccountSettings {
    /// Applies one `KEY=VALUE` of `account add|set`: [`BUDGET_KEY`] or a plain
    /// component key of the account (secrets come sealed, by file, variable or prompt).
    /// Errors name the key and the keys an account of `kind` takes.
    pub fn set(&mut self, kind: Account, key: &str, value: &str) -> anyhow::Result<()> {
        if key == BUDGET_KEY {
            let n = value
                .trim()
                .parse::<u32>()
                .ok()
                .filter(|n| *n >= 1)
                .ok_or_else(|| {
                    anyhow!(
                        "{BUDGET_KEY} must be a whole number of calls per hour ≥ 1, got {value:?}"
                    )
                })?;
            self.budget_per_hour = Some(n);
            return Ok(());
        }
        check_key(kind, key)?;
        self.config.insert(key.to_string(), value.to_string());
        Ok(())
    }

    /// Removes one key (a setting, a secret's name, or [`BUDGET_KEY`]); whether it was
    /// set. The sealed value goes with the next save.
    pub fn unset(&mut self, kind: Account, key: &str) -> anyhow::Result<bool> {
        if key == BUDGET_KEY {
            return Ok(self.budget_per_hour.take().is_some());
        }
        check_key(kind, key)?;
        let had = self.config.remove(key).is_some();
        let len = self.secret_names.len();
        self.secret_names.retain(|k| k != key);
        Ok(had || self.secret_names.len() != len)
    }
}

/// A key an account of `kind` may hold, or an error listing those it may.
pub fn check_key(kind: Account, key: &str) -> anyhow::Result<()> {
    if kind.keys().any(|k| k.name == key) {
        return Ok(());
    }
    let keys: Vec<&str> = kind.keys().map(|k| k.name).chain([BUDGET_KEY]).collect();
    bail!(
        "{key:?} is not a key of {} accounts; they take {}",
        kind.title(),
        keys.join(", ")
    )
}

/// The checks of an account before it is saved: a valid name, only the account's
/// keys, secret keys moved from `settings` to `secrets` (sealed whichever way they
/// came), every upstream URL parses. Records the secret names in `settings`.
fn check_account(
    name: &str,
    kind: Account,
    settings: &mut AccountSettings,
    secrets: &mut BTreeMap<String, SecretString>,
) -> anyhow::Result<()> {
    validate_name("account name", name)?;
    move_secrets(&mut settings.config, secrets);
    for k in settings.config.keys().chain(secrets.keys()) {
        check_key(kind, k)?;
    }
    let config = merged(&settings.config, secrets);
    mssp_runtime::outbound::Allowlist::from_config(&config, &[])
        .map_err(|e| anyhow!("account {name:?}: {e}"))?;
    settings.secret_names = secrets.keys().cloned().collect();
    Ok(())
}

/// An account as `put_account` would store it, checked ([`check_account`]'s
/// errors), without storing anything: what the component judges before a save.
pub fn candidate(
    name: &str,
    kind: Account,
    mut settings: AccountSettings,
    mut secrets: BTreeMap<String, SecretString>,
) -> anyhow::Result<OpenAccount> {
    check_account(name, kind, &mut settings, &mut secrets)?;
    Ok(OpenAccount {
        record: AccountRecord {
            name: name.to_string(),
            kind,
            settings,
        },
        secrets,
    })
}

/// The keys of `kind` a tenant sets itself although it uses an account of that kind
/// for them (never the account's defaults, which a tenant may override).
pub fn conflicting_keys<'a>(kind: Account, own: impl Iterator<Item = &'a String>) -> Vec<&'a str> {
    own.map(String::as_str)
        .filter(|k| {
            mssp_contract::config_key(k).is_some_and(|c| c.sharing == Sharing::Account(kind))
        })
        .collect()
}

/// Puts each account's keys into a tenant's configuration `config` (its own keys):
/// the account's keys replace nothing (a conflict is an error, named), its defaults
/// fill what the tenant leaves unset. Returns what the tenant uses.
pub(crate) fn apply_accounts(
    tenant: &str,
    config: &mut BTreeMap<String, SecretString>,
    accounts: &[OpenAccount],
) -> anyhow::Result<Vec<AccountUse>> {
    let mut uses = Vec::new();
    for a in accounts {
        let kind = a.record.kind;
        let clash = conflicting_keys(kind, config.keys());
        if !clash.is_empty() {
            let unset: Vec<String> = clash.iter().map(|k| format!("--unset {k}")).collect();
            bail!(
                "tenant {tenant:?} uses the {} account {:?} ({}) and sets {} itself: keep one — \
                 remove them in the same edit (`mssp-bridge tenant set {tenant} {} …`) or stop \
                 using the account (`--unset {}`)",
                kind.title(),
                a.record.name,
                reference_key(kind),
                clash.join(", "),
                unset.join(" "),
                reference_key(kind),
            );
        }
        for (k, v) in merged(&a.record.settings.config, &a.secrets) {
            match mssp_contract::config_key(&k).map(|c| c.sharing) {
                Some(Sharing::AccountDefault(_)) if config.contains_key(&k) => {}
                _ => {
                    config.insert(k, v);
                }
            }
        }
        uses.push(AccountUse {
            service: kind.name(),
            name: a.record.name.clone(),
            budget_per_hour: a.record.settings.budget_per_hour,
        });
    }
    Ok(uses)
}

/// A configuration the component can judge an account by before any tenant uses it:
/// the contract's example of every key the account does not hold (valid by
/// construction), the account's own keys over them. A refusal is then about the
/// account's keys.
pub fn probe_tenant(account: &OpenAccount) -> anyhow::Result<ResolvedTenant> {
    let kind = account.record.kind;
    let mut config: BTreeMap<String, SecretString> = mssp_contract::CONFIG_KEYS
        .iter()
        .filter(|k| k.sharing.account() != Some(kind) && k.name != mssp_contract::HOST_READ_TOKEN)
        .map(|k| (k.name.to_string(), SecretString::new(k.example)))
        .collect();
    config.extend(merged(&account.record.settings.config, &account.secrets));
    let allowlist = mssp_runtime::outbound::Allowlist::from_config(&config, &[])
        .map_err(|e| anyhow!("account {:?}: {e}", account.record.name))?;
    Ok(ResolvedTenant {
        id: account.record.name.clone(),
        settings: crate::tenants::TenantSettings::default(),
        config,
        allowlist,
        accounts: Vec::new(),
    })
}

fn parse_kind(name: &str, kind: &str) -> anyhow::Result<Account> {
    Account::parse(kind).ok_or_else(|| anyhow!("account {name:?}: stored kind {kind:?} is unknown"))
}

impl TenantStore {
    /// Adds an account, or replaces it when `replace` is set (`account set`). Values
    /// of secret keys are sealed whichever map they arrive in. Errors (nothing
    /// stored): a bad name or key, an unparsable URL, an existing account without
    /// `replace`, a replaced account of another kind.
    pub fn put_account(
        &self,
        key: &MasterKey,
        name: &str,
        kind: Account,
        mut settings: AccountSettings,
        mut secrets: BTreeMap<String, SecretString>,
        replace: bool,
    ) -> anyhow::Result<()> {
        check_account(name, kind, &mut settings, &mut secrets)?;
        let sealed = key.seal(Owner::Account(name), &secrets)?;
        let json = serde_json::to_string(&settings)?;
        let mut conn = self.conn()?;
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let stored: Option<String> = tx
            .query_row(
                "SELECT kind FROM accounts WHERE name=?1",
                params![name],
                |r| r.get(0),
            )
            .optional()?;
        match stored {
            Some(_) if !replace => bail!(
                "account {name:?} already exists; change it with `mssp-bridge account set {name} KEY=VALUE…`"
            ),
            Some(k) if k != kind.name() => bail!(
                "account {name:?} is a {k} account, not {}; remove it first",
                kind.name()
            ),
            _ => {}
        }
        tx.execute(
            "INSERT OR REPLACE INTO accounts (name, kind, settings, secrets) VALUES (?1, ?2, ?3, ?4)",
            params![name, kind.name(), json, sealed],
        )
        .with_context(|| format!("storing account {name:?}"))?;
        tx.commit()?;
        Ok(())
    }

    /// Every account, by name.
    pub fn accounts(&self) -> anyhow::Result<Vec<AccountRecord>> {
        let conn = self.conn()?;
        let mut stmt = conn.prepare("SELECT name, kind, settings FROM accounts ORDER BY name")?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (name, kind, json) = row?;
            out.push(record(name, &kind, &json)?);
        }
        Ok(out)
    }

    /// One account, if it exists.
    pub fn account(&self, name: &str) -> anyhow::Result<Option<AccountRecord>> {
        Ok(self.account_row(name)?.map(|(record, _)| record))
    }

    fn account_row(&self, name: &str) -> anyhow::Result<Option<(AccountRecord, Vec<u8>)>> {
        let conn = self.conn()?;
        let row: Option<(String, String, Vec<u8>)> = conn
            .query_row(
                "SELECT kind, settings, secrets FROM accounts WHERE name=?1",
                params![name],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        row.map(|(kind, json, sealed)| Ok((record(name.to_string(), &kind, &json)?, sealed)))
            .transpose()
    }

    /// An account with its secrets opened. Errors: no such account (with the fix),
    /// the wrong master key.
    pub fn open_account(&self, key: &MasterKey, name: &str) -> anyhow::Result<OpenAccount> {
        let (record, sealed) = self.account_row(name)?.ok_or_else(|| {
            anyhow!("no account {name:?}; add it with `mssp-bridge account add xdr|snow {name} …`")
        })?;
        let secrets = key.open(Owner::Account(name), &sealed)?;
        Ok(OpenAccount { record, secrets })
    }

    /// The tenants that use the account `name`, by id.
    pub fn tenants_using(&self, name: &str) -> anyhow::Result<Vec<String>> {
        users_of(&*self.conn()?, name)
    }

    /// Removes an account, in one transaction with the check that no tenant uses it
    /// (a `tenant set` of another process cannot slip in between). Errors: no such
    /// account; tenants still use it (named).
    pub fn remove_account(&self, name: &str) -> anyhow::Result<()> {
        let mut conn = self.conn()?;
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let users = users_of(&tx, name)?;
        if !users.is_empty() {
            bail!(
                "account {name:?} is used by tenant(s) {}; point them elsewhere first (`mssp-bridge tenant set TENANT …`)",
                users.join(", ")
            );
        }
        if tx.execute("DELETE FROM accounts WHERE name=?1", params![name])? == 0 {
            bail!("no account {name:?}");
        }
        tx.commit()?;
        Ok(())
    }
}

/// The tenants that use the account `name`, on `conn`.
fn users_of(conn: &rusqlite::Connection, name: &str) -> anyhow::Result<Vec<String>> {
    Ok(tenant_rows(conn)?
        .into_iter()
        .filter(|(_, s)| s.accounts.values().any(|a| a == name))
        .map(|(id, _)| id)
        .collect())
}

fn record(name: String, kind: &str, json: &str) -> anyhow::Result<AccountRecord> {
    let kind = parse_kind(&name, kind)?;
    let settings = serde_json::from_str(json)
        .with_context(|| format!("account {name:?}: stored settings are corrupt"))?;
    Ok(AccountRecord {
        name,
        kind,
        settings,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tenants::TenantSettings;

    fn key() -> MasterKey {
        MasterKey::parse(&MasterKey::generate(), "test").unwrap()
    }

    fn secret(v: &str) -> SecretString {
        SecretString::new(v)
    }

    fn xdr_account(store: &TenantStore, k: &MasterKey, name: &str, budget: Option<u32>) {
        let mut s = AccountSettings::default();
        for (key, v) in [
            ("xdr_auth_url", "https://visibility.amp.cisco.com"),
            ("xdr_api_url", "https://private.intel.amp.cisco.com"),
            ("xdr_client_id", "mssp-client"),
        ] {
            s.set(Account::Xdr, key, v).unwrap();
        }
        s.budget_per_hour = budget;
        let secrets = [(
            "xdr_client_secret".to_string(),
            secret("mssp-xdr-secret-9f2"),
        )]
        .into();
        store
            .put_account(k, name, Account::Xdr, s, secrets, false)
            .unwrap();
    }

    fn tenant(refs: &[(Account, &str)], own: &[(&str, &str)]) -> TenantSettings {
        let mut s = TenantSettings::default();
        for (k, v) in own {
            s.config.insert(k.to_string(), v.to_string());
        }
        for (kind, name) in refs {
            s.accounts.insert(*kind, name.to_string());
        }
        s
    }

    #[test]
    fn a_tenant_resolves_with_its_accounts_keys_and_says_which_it_uses() {
        let store = TenantStore::in_memory().unwrap();
        let k = key();
        xdr_account(&store, &k, "mssp-xdr", Some(600));
        let mut snow = AccountSettings::default();
        snow.set(
            Account::Snow,
            "snow_base_url",
            "https://mssp.service-now.com",
        )
        .unwrap();
        snow.set(Account::Snow, "snow_user", "bridge").unwrap();
        snow.set(Account::Snow, "snow_assignment_group", "grp-soc")
            .unwrap();
        snow.set(Account::Snow, "snow_tag", "[MSSP]").unwrap();
        store
            .put_account(
                &k,
                "mssp-snow",
                Account::Snow,
                snow,
                [("snow_password".to_string(), secret("snow-pass-77"))].into(),
                false,
            )
            .unwrap();
        // acme uses both and overrides one ServiceNow default; globex only XDR.
        let acme = tenant(
            &[(Account::Xdr, "mssp-xdr"), (Account::Snow, "mssp-snow")],
            &[("customer_name", "Acme"), ("snow_tag", "[ACME]")],
        );
        store.put(&k, "acme", acme, BTreeMap::new(), false).unwrap();
        let globex = tenant(
            &[(Account::Xdr, "mssp-xdr")],
            &[("snow_base_url", "https://globex.service-now.com")],
        );
        store
            .put(&k, "globex", globex, BTreeMap::new(), false)
            .unwrap();

        let acme = store.resolve(&k, "acme").unwrap();
        let get = |t: &ResolvedTenant, key: &str| t.config.get(key).map(|v| v.expose().to_string());
        assert_eq!(get(&acme, "xdr_client_id").as_deref(), Some("mssp-client"));
        assert_eq!(
            get(&acme, "xdr_client_secret").as_deref(),
            Some("mssp-xdr-secret-9f2")
        );
        assert_eq!(get(&acme, "snow_password").as_deref(), Some("snow-pass-77"));
        assert_eq!(
            get(&acme, "snow_assignment_group").as_deref(),
            Some("grp-soc")
        );
        assert_eq!(
            get(&acme, "snow_tag").as_deref(),
            Some("[ACME]"),
            "the tenant's own default wins"
        );
        assert!(
            !acme.config.keys().any(|k| k.ends_with("_account")),
            "host keys never reach the component"
        );
        assert_eq!(
            acme.accounts,
            [
                AccountUse {
                    service: "xdr",
                    name: "mssp-xdr".into(),
                    budget_per_hour: Some(600)
                },
                AccountUse {
                    service: "snow",
                    name: "mssp-snow".into(),
                    budget_per_hour: None
                },
            ]
        );
        // The runtime counts acme's XDR and ServiceNow calls against these accounts,
        // with the XDR account's budget (the ServiceNow one takes the host default).
        let spec = mssp_runtime::TenantSpec::from(store.resolve(&k, "acme").unwrap());
        assert_eq!(
            spec.accounts,
            [
                mssp_runtime::AccountRef {
                    service: "xdr".into(),
                    name: "mssp-xdr".into(),
                    per_hour: Some(600)
                },
                mssp_runtime::AccountRef {
                    service: "snow".into(),
                    name: "mssp-snow".into(),
                    per_hour: None
                },
            ]
        );
        let allowed = |t: &ResolvedTenant, url: &str| {
            t.allowlist
                .service_of(&url.parse().unwrap())
                .map(str::to_string)
        };
        assert_eq!(
            allowed(&acme, "https://private.intel.amp.cisco.com/ctia/incident").as_deref(),
            Some("xdr")
        );
        assert_eq!(
            allowed(&acme, "https://mssp.service-now.com/api").as_deref(),
            Some("snow")
        );

        let globex = store.resolve(&k, "globex").unwrap();
        assert_eq!(
            get(&globex, "snow_base_url").as_deref(),
            Some("https://globex.service-now.com")
        );
        assert_eq!(globex.accounts.len(), 1);
        assert_eq!(store.tenants_using("mssp-xdr").unwrap(), ["acme", "globex"]);

        // An update of the account reaches every tenant that uses it at its next resolve.
        let mut open = store.open_account(&k, "mssp-xdr").unwrap();
        open.record
            .settings
            .set(Account::Xdr, "xdr_client_id", "rotated-client")
            .unwrap();
        store
            .put_account(
                &k,
                "mssp-xdr",
                Account::Xdr,
                open.record.settings,
                open.secrets,
                true,
            )
            .unwrap();
        for id in ["acme", "globex"] {
            let t = store.resolve(&k, id).unwrap();
            assert_eq!(get(&t, "xdr_client_id").as_deref(), Some("rotated-client"));
            assert_eq!(
                get(&t, "xdr_client_secret").as_deref(),
                Some("mssp-xdr-secret-9f2")
            );
        }
    }

    #[test]
    fn own_keys_of_a_used_account_an_unknown_account_and_a_wrong_kind_are_refused_by_name() {
        let store = TenantStore::in_memory().unwrap();
        let k = key();
        xdr_account(&store, &k, "mssp-xdr", None);
        let refused = |t: TenantSettings| {
            let e = store.put(&k, "acme", t, BTreeMap::new(), false);
            format!("{:#}", e.unwrap_err())
        };
        for own in ["xdr_client_id", "xdr_auth_url", "xdr_client_secret"] {
            let e = refused(tenant(
                &[(Account::Xdr, "mssp-xdr")],
                &[(own, "https://x.example")],
            ));
            let fix = format!("--unset {own}");
            assert!(
                e.contains(own) && e.contains("mssp-xdr") && e.contains(&fix),
                "{e}"
            );
        }
        let e = refused(tenant(&[(Account::Xdr, "nope")], &[]));
        assert!(
            e.contains("no account \"nope\"") && e.contains("account add"),
            "{e}"
        );
        let e = refused(tenant(&[(Account::Snow, "mssp-xdr")], &[]));
        assert!(
            e.contains("snow_account") && e.contains("XDR account"),
            "{e}"
        );
        assert!(store.get("acme").unwrap().is_none(), "nothing stored");
    }

    #[test]
    fn account_keys_budget_and_removal_are_checked() {
        let store = TenantStore::in_memory().unwrap();
        let k = key();
        let mut s = AccountSettings::default();
        let e = s
            .set(Account::Xdr, "snow_user", "x")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("not a key of XDR accounts") && e.contains("xdr_client_id"),
            "{e}"
        );
        let e = s
            .set(Account::Snow, "amp_api_key", "x")
            .unwrap_err()
            .to_string();
        assert!(e.contains("budget_per_hour"), "{e}");
        for bad in ["0", "-3", "lots", "1.5"] {
            assert!(s.set(Account::Xdr, BUDGET_KEY, bad).is_err(), "{bad}");
        }
        s.set(Account::Xdr, BUDGET_KEY, "1200").unwrap();
        assert_eq!(s.budget_per_hour, Some(1200));
        assert!(s.unset(Account::Xdr, BUDGET_KEY).unwrap());
        s.set(Account::Xdr, "xdr_auth_url", "not a url").unwrap();
        let e = store
            .put_account(&k, "bad", Account::Xdr, s, BTreeMap::new(), false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("xdr_auth_url"), "{e}");
        let e = store
            .put_account(
                &k,
                "Bad Name",
                Account::Xdr,
                AccountSettings::default(),
                BTreeMap::new(),
                false,
            )
            .unwrap_err()
            .to_string();
        assert!(e.contains("account name"), "{e}");

        xdr_account(&store, &k, "mssp-xdr", None);
        store
            .put(
                &k,
                "acme",
                tenant(&[(Account::Xdr, "mssp-xdr")], &[]),
                BTreeMap::new(),
                false,
            )
            .unwrap();
        let e = store.remove_account("mssp-xdr").unwrap_err().to_string();
        assert!(e.contains("used by tenant(s) acme"), "{e}");
        store.remove("acme").unwrap();
        store.remove_account("mssp-xdr").unwrap();
        assert!(store.account("mssp-xdr").unwrap().is_none());
        assert!(store.remove_account("mssp-xdr").is_err());
    }

    #[test]
    fn an_accounts_sealed_secrets_never_open_in_a_tenants_row() {
        let store = TenantStore::in_memory().unwrap();
        let k = key();
        xdr_account(&store, &k, "acme", None);
        store
            .put(
                &k,
                "acme",
                TenantSettings::default(),
                BTreeMap::new(),
                false,
            )
            .unwrap();
        // Swap the account's sealed box into the tenant of the same name.
        {
            let conn = store.conn().unwrap();
            let sealed: Vec<u8> = conn
                .query_row("SELECT secrets FROM accounts WHERE name='acme'", [], |r| {
                    r.get(0)
                })
                .unwrap();
            conn.execute(
                "UPDATE tenants SET secrets=?1 WHERE id='acme'",
                params![sealed],
            )
            .unwrap();
        }
        let e = store.resolve(&k, "acme").err().unwrap().to_string();
        assert!(
            e.contains("cannot decrypt the secrets of tenant \"acme\""),
            "{e}"
        );
        assert!(store.open_account(&k, "acme").is_ok());
    }
}
