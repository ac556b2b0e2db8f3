//! Editing tenants and shared accounts from the command line (`tenant add|set|unset`,
//! `account add|list|show|set|unset|remove`): every edit starts from what is stored,
//! changes only the keys named (every other key and sealed secret stays as it is),
//! and is judged by the bridge component itself before anything is saved — the same
//! configuration check every tick makes, run in-process against a throw-away
//! key-value store, no network. A refused edit is an error in the component's own
//! words and saves nothing. Secrets arrive by file, environment variable or a prompt
//! without echo, never printed.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context as _, anyhow, bail};

use crate::accounts::{
    Account, AccountSettings, BUDGET_KEY, OpenAccount, check_key, probe_tenant, reference_key,
    referenced_kind,
};
use crate::secrets::{MasterKey, SecretString, is_secret_key};
use crate::tenants::{ResolvedTenant, TenantSettings, TenantStore};
use mssp_runtime::Runtime;

/// Secrets given to a command, never on its command line.
#[derive(clap::Args, Default)]
pub struct SecretArgs {
    /// A secret read from a file, KEY=PATH (repeatable; a final newline is dropped).
    #[arg(long = "secret-file", value_name = "KEY=PATH")]
    pub secret_file: Vec<String>,
    /// A secret read from an environment variable, KEY=VAR (repeatable).
    #[arg(long = "secret-env", value_name = "KEY=VAR")]
    pub secret_env: Vec<String>,
}

impl SecretArgs {
    /// The secrets, by key. Errors: a pair without `=`, an unreadable file, an unset
    /// variable (named; never the value).
    pub fn read(&self) -> anyhow::Result<BTreeMap<String, SecretString>> {
        let mut secrets = BTreeMap::new();
        for pair in &self.secret_file {
            let (k, path) = split_pair(pair)?;
            let v = std::fs::read_to_string(Path::new(&path))
                .with_context(|| format!("reading secret {k} from {path}"))?;
            secrets.insert(k, SecretString::new(v.trim_end_matches(['\r', '\n'])));
        }
        for pair in &self.secret_env {
            let (k, var) = split_pair(pair)?;
            let v = std::env::var(&var)
                .map_err(|_| anyhow!("secret {k}: environment variable {var} is not set"))?;
            secrets.insert(k, SecretString::new(v));
        }
        Ok(secrets)
    }
}

/// `KEY=VALUE` → (`KEY`, `VALUE`); the key trimmed, the value as given.
pub fn split_pair(s: &str) -> anyhow::Result<(String, String)> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| anyhow!("expected KEY=VALUE, got {s:?}"))?;
    Ok((k.trim().to_string(), v.to_string()))
}

/// Asks for each of `names` not in `given`, without echo — only on an interactive
/// terminal (scripts are never blocked on a prompt). Enter skips one.
pub fn prompt_missing_secrets<'a>(
    names: impl Iterator<Item = &'a str>,
    given: &dyn Fn(&str) -> bool,
    secrets: &mut BTreeMap<String, SecretString>,
) -> anyhow::Result<()> {
    use std::io::IsTerminal as _;
    if !std::io::stdin().is_terminal() {
        return Ok(());
    }
    for name in names {
        if given(name) {
            continue;
        }
        let value = rpassword::prompt_password(format!("{name} (secret, Enter to skip): "))
            .with_context(|| format!("reading {name} from the terminal"))?;
        if !value.is_empty() {
            secrets.insert(name.to_string(), SecretString::new(value));
        }
    }
    Ok(())
}

/// One edit: keys to remove, then values to set, then secrets to set.
#[derive(Default)]
pub struct Edit {
    /// Keys to remove (a setting, a secret, an account reference, `budget_per_hour`).
    pub unset: Vec<String>,
    /// `KEY=VALUE` settings.
    pub set: Vec<(String, String)>,
    /// Secrets, by key (from [`SecretArgs`] or a prompt).
    pub secrets: BTreeMap<String, SecretString>,
}

impl Edit {
    /// From the command's `KEY=VALUE` pairs, `--unset` keys and secret flags.
    pub fn parse(pairs: &[String], unset: &[String], secrets: &SecretArgs) -> anyhow::Result<Edit> {
        Ok(Edit {
            unset: unset.iter().map(|k| k.trim().to_string()).collect(),
            set: pairs
                .iter()
                .map(|p| split_pair(p))
                .collect::<anyhow::Result<_>>()?,
            secrets: secrets.read()?,
        })
    }

    /// The edit of `set`/`unset`, which must change something.
    pub fn changing(self) -> anyhow::Result<Edit> {
        if self.unset.is_empty() && self.set.is_empty() && self.secrets.is_empty() {
            bail!("nothing to change: give KEY=VALUE, --unset KEY, --secret-file or --secret-env");
        }
        Ok(self)
    }

    /// Refuses a secret given as `KEY=VALUE` (it would stay in shell history and the
    /// process list): `tenant set` and the account commands take secrets only by file,
    /// variable or prompt.
    pub fn refuse_plain_secrets(&self) -> anyhow::Result<()> {
        if let Some((k, _)) = self.set.iter().find(|(k, _)| is_secret_key(k)) {
            bail!(
                "{k} is a secret: give it with --secret-file {k}=PATH or --secret-env {k}=VAR, never on the command line (nothing was saved)"
            );
        }
        Ok(())
    }

    /// Applies the edit to a tenant's own settings and secrets. `xdr_account` and
    /// `snow_account` name (or, unset, stop using) a shared account. Errors: a key the
    /// bridge does not read, an empty account name, a non-secret given as a secret.
    pub fn apply_to_tenant(
        self,
        id: &str,
        settings: &mut TenantSettings,
        secrets: &mut BTreeMap<String, SecretString>,
    ) -> anyhow::Result<()> {
        for k in &self.unset {
            let had = match referenced_kind(k) {
                Some(kind) => settings.accounts.remove(&kind).is_some(),
                None => {
                    if !mssp_contract::is_known(k) {
                        bail!(
                            "config key {k:?} is not one the bridge reads (see the README's tenant configuration table)"
                        );
                    }
                    let a = settings.config.remove(k).is_some();
                    secrets.remove(k).is_some() || a
                }
            };
            if !had {
                eprintln!("note: tenant {id} had no {k}");
            }
        }
        for (k, v) in self.set {
            match referenced_kind(&k) {
                Some(kind) if v.trim().is_empty() => bail!(
                    "{k} needs the name of a {} account (`mssp-bridge account list`); to stop using one, unset it",
                    kind.title()
                ),
                Some(kind) => {
                    settings.accounts.insert(kind, v.trim().to_string());
                }
                None => {
                    secrets.remove(&k);
                    settings.config.insert(k, v);
                }
            }
        }
        for (k, v) in self.secrets {
            if !is_secret_key(&k) {
                bail!("{k} is not a secret: set it with {k}=VALUE");
            }
            settings.config.remove(&k);
            secrets.insert(k, v);
        }
        Ok(())
    }

    /// Applies the edit to an account of `kind`. Errors: a key an account of that
    /// kind does not hold (naming those it does), a bad budget, a non-secret given as
    /// a secret.
    pub fn apply_to_account(
        self,
        name: &str,
        kind: Account,
        settings: &mut AccountSettings,
        secrets: &mut BTreeMap<String, SecretString>,
    ) -> anyhow::Result<()> {
        for k in &self.unset {
            let a = settings.unset(kind, k)?;
            if !(secrets.remove(k).is_some() || a) {
                eprintln!("note: account {name} had no {k}");
            }
        }
        for (k, v) in &self.set {
            settings.set(kind, k, v)?;
            secrets.remove(k);
        }
        for (k, v) in self.secrets {
            check_key(kind, &k)?;
            if !is_secret_key(&k) {
                bail!("{k} is not a secret: set it with {k}=VALUE");
            }
            settings.config.remove(&k);
            secrets.insert(k, v);
        }
        Ok(())
    }
}

/// The bridge component's verdict on candidate configurations: each one is loaded into
/// the command's own runtime, whose key-value store is in memory (nothing of a real
/// tenant is read or written, no upstream is called), and the `config` field of its
/// `GET /v1/status` is read: the check every tick makes.
pub struct ComponentCheck {
    /// The runtime, or why there is none (not built yet, `--unchecked`).
    runtime: Result<Arc<Runtime>, String>,
}

impl ComponentCheck {
    /// Checks with `runtime`; `Err(why)` skips every check with a warning naming why
    /// (the component is not built, or the operator said `--unchecked`).
    pub fn new(runtime: Result<Arc<Runtime>, String>) -> Self {
        Self { runtime }
    }

    /// `Ok(())` when the component accepts `candidate` or could not be asked (then a
    /// warning says why and how to check later); otherwise the error `"{what} not
    /// saved: the bridge component refuses the configuration: {its error}"`.
    pub async fn require(&self, what: &str, candidate: ResolvedTenant) -> anyhow::Result<()> {
        let verdict = match &self.runtime {
            Err(why) => Err(why.clone()),
            Ok(rt) => match rt.upsert_tenant(candidate) {
                Ok(tenant) => crate::doctor::component_verdict(rt, tenant).await,
                Err(e) => Err(format!("{e:#}")),
            },
        };
        match verdict {
            Ok(v) if v == "ok" => Ok(()),
            Ok(refused) => {
                bail!("{what} not saved: the bridge component refuses the configuration: {refused}")
            }
            Err(why) => {
                eprintln!(
                    "warning: {what}: configuration not checked by the bridge component ({why}); \
                     run `mssp-bridge doctor` once it is built"
                );
                Ok(())
            }
        }
    }
}

/// What every edit works with: the registry, the master key, the component's check.
pub struct Editor<'a> {
    pub store: &'a TenantStore,
    pub key: &'a MasterKey,
    pub check: &'a ComponentCheck,
}

impl<'a> Editor<'a> {
    pub fn new(store: &'a TenantStore, key: &'a MasterKey, check: &'a ComponentCheck) -> Self {
        Self { store, key, check }
    }

    /// `tenant add`: a new tenant (or `--replace`d) from `settings` and `secrets`,
    /// checked by the component with the accounts it uses, then saved.
    pub async fn tenant_add(
        &self,
        id: &str,
        settings: TenantSettings,
        secrets: BTreeMap<String, SecretString>,
        replace: bool,
        out: &mut dyn Write,
    ) -> anyhow::Result<()> {
        let candidate =
            self.store
                .resolve_candidate(self.key, id, settings.clone(), secrets.clone())?;
        self.check
            .require(&format!("tenant {id}"), candidate)
            .await?;
        self.store.put(self.key, id, settings, secrets, replace)?;
        writeln!(out, "tenant {id} saved")?;
        Ok(())
    }

    /// `tenant set|unset`: the stored tenant with `edit` applied (every other key and
    /// secret kept), checked by the component with the accounts it uses, then saved.
    pub async fn tenant_edit(
        &self,
        id: &str,
        edit: Edit,
        interval_secs: Option<u64>,
        out: &mut dyn Write,
    ) -> anyhow::Result<()> {
        let (mut settings, mut secrets) = self.store.open_tenant(self.key, id)?;
        edit.apply_to_tenant(id, &mut settings, &mut secrets)?;
        if interval_secs.is_some() {
            settings.interval_secs = interval_secs;
        }
        self.tenant_add(id, settings, secrets, true, out).await
    }

    /// `account add KIND NAME`: checked by the component, then saved.
    pub async fn account_add(
        &self,
        kind: Account,
        name: &str,
        edit: Edit,
        out: &mut dyn Write,
    ) -> anyhow::Result<()> {
        if self.store.account(name)?.is_some() {
            bail!(
                "account {name:?} already exists; change it with `mssp-bridge account set {name} KEY=VALUE…`"
            );
        }
        let mut settings = AccountSettings::default();
        let mut secrets = BTreeMap::new();
        edit.apply_to_account(name, kind, &mut settings, &mut secrets)?;
        let candidate = crate::accounts::candidate(name, kind, settings, secrets)?;
        self.save_account(candidate, false).await?;
        writeln!(out, "{} account {name} saved", kind.title())?;
        Ok(())
    }

    /// `account set|unset NAME`: the stored account with `edit` applied (every other
    /// key and secret kept), checked by the component on its own and with every tenant
    /// that uses it, then saved; those tenants run with it from their next resolve
    /// (`serve` resolves tenants when it starts).
    pub async fn account_edit(
        &self,
        name: &str,
        edit: Edit,
        out: &mut dyn Write,
    ) -> anyhow::Result<()> {
        let OpenAccount {
            record,
            mut secrets,
        } = self.store.open_account(self.key, name)?;
        let mut settings = record.settings;
        edit.apply_to_account(name, record.kind, &mut settings, &mut secrets)?;
        let candidate = crate::accounts::candidate(name, record.kind, settings, secrets)?;
        self.save_account(candidate, true).await?;
        let users = self.store.tenants_using(name)?;
        writeln!(
            out,
            "account {name} saved{}",
            if users.is_empty() {
                String::new()
            } else {
                format!(
                    "; used by {} (running `serve` replicas apply it within seconds)",
                    users.join(", ")
                )
            }
        )?;
        Ok(())
    }

    /// The component's verdict on an account, then the save: on its own (with the
    /// contract's examples for every other key, [`probe_tenant`]) and with each tenant
    /// that uses it. Errors name the tenant whose configuration the account would
    /// break; nothing is saved then.
    async fn save_account(&self, account: OpenAccount, replace: bool) -> anyhow::Result<()> {
        let name = &account.record.name;
        self.check
            .require(&format!("account {name}"), probe_tenant(&account)?)
            .await?;
        for tenant in self.store.tenants_using(name)? {
            let candidate = self
                .store
                .resolve_with_account(self.key, &tenant, &account)?;
            self.check
                .require(
                    &format!("account {name} (used by tenant {tenant})"),
                    candidate,
                )
                .await?;
        }
        self.store.put_account(
            self.key,
            name,
            account.record.kind,
            account.record.settings,
            account.secrets,
            replace,
        )
    }
}

/// `tenant show`: settings in clear, secrets by name, the accounts it uses.
pub fn print_tenant(id: &str, s: &TenantSettings, out: &mut dyn Write) -> std::io::Result<()> {
    writeln!(out, "tenant {id}")?;
    if let Some(client) = s.config.get("amp_client_id") {
        // What ServiceNow's business rule routes this tenant's callbacks by
        // (`x_mssp.bridge_tenant_tags`).
        let tag = mssp_contract::incident::customer_tag(client);
        writeln!(out, "  customer tag: {tag} (incident keys amp-{tag}-…)")?;
    }
    if let Some(i) = s.interval_secs {
        writeln!(out, "  interval_secs = {i}")?;
    }
    for (kind, name) in &s.accounts {
        writeln!(out, "  {} = {name}", reference_key(*kind))?;
    }
    for (k, v) in &s.config {
        writeln!(out, "  {k} = {v}")?;
    }
    for k in &s.secret_names {
        writeln!(out, "  {k} = <secret, sealed>")?;
    }
    for o in &s.allowed_outbound {
        writeln!(out, "  allowed_outbound = {o}")?;
    }
    Ok(())
}

/// `account list`: name, kind, budget, tenants using it.
pub fn list_accounts(store: &TenantStore, out: &mut dyn Write) -> anyhow::Result<()> {
    let accounts = store.accounts()?;
    if accounts.is_empty() {
        writeln!(
            out,
            "no accounts; add one with `mssp-bridge account add xdr|snow NAME …`"
        )?;
    }
    for a in accounts {
        let users = store.tenants_using(&a.name)?;
        writeln!(
            out,
            "{}\t{}\t{}\tused by {}",
            a.name,
            a.kind.name(),
            budget_text(a.settings.budget_per_hour),
            users_text(&users)
        )?;
    }
    Ok(())
}

/// `account show NAME`: settings in clear, secrets by name, budget, tenants using it.
pub fn show_account(store: &TenantStore, name: &str, out: &mut dyn Write) -> anyhow::Result<()> {
    let a = store
        .account(name)?
        .ok_or_else(|| anyhow!("no account {name:?}"))?;
    writeln!(out, "{} account {}", a.kind.title(), a.name)?;
    writeln!(
        out,
        "  {BUDGET_KEY} = {}",
        a.settings
            .budget_per_hour
            .map_or_else(|| "unset (no budget)".to_string(), |b| b.to_string())
    )?;
    for (k, v) in &a.settings.config {
        writeln!(out, "  {k} = {v}")?;
    }
    for k in &a.settings.secret_names {
        writeln!(out, "  {k} = <secret, sealed>")?;
    }
    let users = store.tenants_using(name)?;
    writeln!(out, "  used by: {}", users_text(&users))?;
    Ok(())
}

/// Tenants for people: `acme, globex` or `no tenant`.
fn users_text(users: &[String]) -> String {
    if users.is_empty() {
        "no tenant".to_string()
    } else {
        users.join(", ")
    }
}

/// A budget for people: `600 calls/h` or `no budget`.
pub fn budget_text(budget: Option<u32>) -> String {
    budget.map_or_else(|| "no budget".to_string(), |b| format!("{b} calls/h"))
}
