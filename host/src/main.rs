//! `mssp-bridge`: the command line of the host.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use std::io::Write as _;

use anyhow::{Context as _, anyhow, bail};
use clap::{Parser, Subcommand};
use mssp_bridge::accounts::Account;
use mssp_bridge::edit::{ComponentCheck, Edit, Editor, SecretArgs};
use mssp_bridge::registry::Registry;
use mssp_bridge::replicas::Leases;
use mssp_bridge::scheduler::Scheduler;
use mssp_bridge::secrets::{MasterKey, SecretString, is_secret_key};
use mssp_bridge::server::Server;
use mssp_bridge::settings::{LogFormat, Settings};
use mssp_bridge::tenants::{TenantSettings, TenantStore};
use mssp_runtime::kv::{KvBackend, RedisKv, SqliteKv};
use mssp_runtime::{Runtime, RuntimeParts};

#[derive(Parser)]
#[command(
    name = "mssp-bridge",
    version,
    about = "Cisco Secure Endpoint → XDR + ServiceNow, per customer, exactly once"
)]
struct Cli {
    /// Host settings file (TOML). Defaults apply when absent.
    #[arg(long, global = true, env = "MSSP_CONFIG")]
    config: Option<PathBuf>,
    /// File holding the master key (else the MSSP_MASTER_KEY variable).
    #[arg(long, global = true)]
    master_key_file: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the scheduler and the HTTP listener for every tenant.
    Serve,
    /// Manage tenants (customers).
    Tenant {
        #[command(subcommand)]
        command: TenantCommand,
    },
    /// Manage the shared upstream accounts tenants use: the MSSP's XDR organisation
    /// and ServiceNow instance.
    Account {
        #[command(subcommand)]
        command: AccountCommand,
    },
    /// Run one tick of one tenant now and print the outcome.
    Tick { tenant: String },
    /// Print a fresh random master key (base64 of 32 bytes).
    Keygen,
    /// Re-seal every tenant's and account's secrets under a new master key, in one transaction
    /// (interrupted, nothing changes; run again, it finishes). The current key as
    /// usual (`MSSP_MASTER_KEY` or --master-key-file); the new one from
    /// `MSSP_NEW_MASTER_KEY` or --new-key-file. Then run with the new key.
    Rekey {
        /// File holding the new master key (else `MSSP_NEW_MASTER_KEY`).
        #[arg(long)]
        new_key_file: Option<std::path::PathBuf>,
    },
    /// Check each tenant's upstream accounts (Secure Endpoint, XDR, ServiceNow):
    /// one line per check, with the fix; exits non-zero when a check fails.
    Doctor {
        /// Only this tenant (default: every tenant).
        #[arg(long)]
        tenant: Option<String>,
        /// Seconds to wait for each upstream answer.
        #[arg(long, default_value_t = 10)]
        timeout_secs: u64,
    },
    /// Replay a window of Secure Endpoint history through the same
    /// exactly-once pipeline (needs the tenant's tick_token).
    Backfill {
        /// The tenant to backfill.
        #[arg(long)]
        tenant: String,
        /// Start of the window: 7d, 12h, 30m, 90s or 2026-11-21T00:00:00Z.
        #[arg(long)]
        since: String,
        /// Give up after this many ticks.
        #[arg(long, default_value_t = 10_000)]
        max_ticks: u64,
    },
    /// Incidents as the bridge recorded them, with links and audit timeline.
    Incidents {
        #[command(subcommand)]
        command: IncidentsCommand,
    },
    /// Run the whole loop against in-process simulators and print what happened.
    #[cfg(feature = "demo")]
    Demo,
}

#[derive(clap::Args)]
struct AddArgs {
    id: String,
    /// A config value, KEY=VALUE (repeatable); `xdr_account=NAME` and
    /// `snow_account=NAME` use a shared account.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    #[command(flatten)]
    secrets: SecretArgs,
    /// Seconds between ticks (default: the host's interval).
    #[arg(long)]
    interval_secs: Option<u64>,
    /// Replace the tenant if it exists.
    #[arg(long)]
    replace: bool,
    #[command(flatten)]
    check: CheckArgs,
}

#[derive(clap::Args)]
struct CheckArgs {
    /// Save without the bridge component's configuration check (it then runs at the
    /// first tick and in `mssp-bridge doctor`).
    #[arg(long)]
    unchecked: bool,
}

#[derive(clap::Args)]
struct SetArgs {
    /// The tenant or account to change.
    name: String,
    /// Values to set, KEY=VALUE (secrets only by --secret-file / --secret-env).
    #[arg(value_name = "KEY=VALUE")]
    pairs: Vec<String>,
    /// A key to remove (repeatable), applied before the values.
    #[arg(long = "unset", value_name = "KEY")]
    unset: Vec<String>,
    #[command(flatten)]
    secrets: SecretArgs,
    #[command(flatten)]
    check: CheckArgs,
}

#[derive(clap::Args)]
struct UnsetArgs {
    /// The tenant or account to change.
    name: String,
    /// The keys to remove.
    #[arg(value_name = "KEY", required = true)]
    keys: Vec<String>,
    #[command(flatten)]
    check: CheckArgs,
}

impl SetArgs {
    /// The edit: something to change, no secret on the command line.
    fn edit(&self) -> anyhow::Result<Edit> {
        let edit = Edit::parse(&self.pairs, &self.unset, &self.secrets)?.changing()?;
        edit.refuse_plain_secrets()?;
        Ok(edit)
    }
}

impl UnsetArgs {
    /// The edit: the keys to remove.
    fn edit(&self) -> Edit {
        Edit {
            unset: self.keys.iter().map(|k| k.trim().to_string()).collect(),
            ..Edit::default()
        }
    }
}

#[derive(Subcommand)]
enum TenantCommand {
    /// Add a tenant. Secret keys are sealed under the master key.
    Add(AddArgs),
    /// Change some keys of a tenant; every other key and secret stays as stored.
    Set {
        #[command(flatten)]
        args: SetArgs,
        /// Seconds between ticks.
        #[arg(long)]
        interval_secs: Option<u64>,
    },
    /// Remove keys of a tenant (e.g. `xdr_account` to stop using a shared account).
    Unset(UnsetArgs),
    /// List tenants (never prints a secret).
    List,
    /// Show one tenant's configuration (secrets by name only).
    Show { id: String },
    /// Remove a tenant and its key-value data.
    Remove { id: String },
}

#[derive(Subcommand)]
enum AccountCommand {
    /// Add a shared account: `xdr` (an XDR organisation) or `snow` (a ServiceNow
    /// instance). Tenants use it with `--set xdr_account=NAME` / `snow_account=NAME`.
    Add {
        /// `xdr` or `snow`.
        #[arg(value_parser = ["xdr", "snow"])]
        kind: String,
        /// Its name (a-z, 0-9, '-').
        name: String,
        /// A value, KEY=VALUE (repeatable): the kind's keys, `budget_per_hour`.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        #[command(flatten)]
        secrets: SecretArgs,
        #[command(flatten)]
        check: CheckArgs,
    },
    /// List accounts: kind, budget, the tenants that use each.
    List,
    /// Show one account (secrets by name only) and the tenants that use it.
    Show { name: String },
    /// Change some keys of an account (checked with every tenant that uses it).
    Set(SetArgs),
    /// Remove keys of an account.
    Unset(UnsetArgs),
    /// Remove an account no tenant uses.
    Remove { name: String },
}

#[derive(Subcommand)]
enum IncidentsCommand {
    /// Every incident of each tenant: state, host, ServiceNow number, XDR id.
    List {
        /// Only this tenant (default: every tenant).
        #[arg(long)]
        tenant: Option<String>,
    },
    /// One incident: facts, links to XDR, ServiceNow and the console, timeline.
    Show {
        /// The tenant to look in (default: every tenant).
        #[arg(long)]
        tenant: Option<String>,
        /// The incident key, as `incidents list` shows it.
        key: String,
    },
}

/// The key-value store the settings name and the tenant registry that goes with it:
/// the `database` file beside SQLite, an image in the store on Redis
/// ([`Registry`]; a command that edits it calls [`Registry::publish`]).
fn open_stores(settings: &Settings) -> anyhow::Result<(Registry, Arc<dyn KvBackend>)> {
    if let Some(dir) = settings
        .database
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
    {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating database folder {}", dir.display()))?;
    }
    let kv: Arc<dyn KvBackend> = match settings.store.redis_options()? {
        Some(options) => Arc::new(RedisKv::connect(&options).with_context(|| {
            format!(
                "key-value store {}: check [store] url and that the server runs",
                settings.store.describe(&settings.database)
            )
        })?),
        None => Arc::new(SqliteKv::open(&settings.database)?),
    };
    let registry = match Registry::shared(&kv)? {
        Some(shared) => shared,
        None => Registry::local(TenantStore::open(&settings.database)?),
    };
    Ok((registry, kv))
}

fn master_key(cli: &Cli, settings: &Settings) -> anyhow::Result<MasterKey> {
    let file = cli
        .master_key_file
        .as_deref()
        .or(settings.master_key_file.as_deref());
    Ok(MasterKey::load(file)?)
}

/// Logs to stderr at `RUST_LOG`, else at `default` (`info`; the demo's `warn`, so its
/// story is not buried in per-tick log lines).
fn init_logging(format: LogFormat, default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

fn build_runtime(settings: &Settings, kv: Arc<dyn KvBackend>) -> anyhow::Result<Arc<Runtime>> {
    let max_instances =
        (settings.scheduler.max_concurrent_ticks + settings.limits.max_concurrent_requests) as u32;
    Ok(Arc::new(Runtime::new(RuntimeParts {
        component: &settings.component,
        cache_dir: &settings.cache_dir,
        kv,
        limits: settings.limits.clone(),
        max_instances,
        budgets: settings.budgets.clone(),
    })?))
}

/// The resolved tenants a command works on: one by name, or all of them.
fn resolve_tenants(
    store: &TenantStore,
    key: &MasterKey,
    only: Option<&str>,
) -> anyhow::Result<Vec<mssp_bridge::tenants::ResolvedTenant>> {
    let tenants = match only {
        Some(id) => vec![store.resolve(key, id)?],
        None => store.resolve_all(key)?,
    };
    if tenants.is_empty() {
        bail!("no tenants; add one with `mssp-bridge tenant add`");
    }
    Ok(tenants)
}

async fn doctor(
    tenants: Vec<mssp_bridge::tenants::ResolvedTenant>,
    runtime: Result<Arc<Runtime>, String>,
    timeout: std::time::Duration,
) -> anyhow::Result<()> {
    use std::io::Write as _;
    let (mut failed, mut checks, mut skipped) = (0, 0, 0);
    let mut out = std::io::stdout().lock();
    for t in tenants {
        let report = mssp_bridge::doctor::diagnose(&t.id, &t.config, &t.accounts, timeout);
        let mut report = report.await;
        let verdict = match &runtime {
            Ok(rt) => match rt.upsert_tenant(t) {
                Ok(tenant) => mssp_bridge::doctor::component_verdict(rt, tenant).await,
                Err(e) => Err(format!("{e:#}")),
            },
            Err(e) => Err(e.clone()),
        };
        report.add_component_verdict(verdict);
        report.print(&mut out)?;
        failed += report.failed();
        skipped += report.not_checked();
        checks += report.checks.len();
    }
    writeln!(
        out,
        "doctor: {checks} checks, {failed} failed, {skipped} not checked"
    )?;
    if failed > 0 {
        bail!("{failed} check(s) failed; see the fixes above");
    }
    Ok(())
}

/// The bridge component's own judge of configurations before they are saved: a
/// runtime of its own over an in-memory key-value store (no tenant's data touched),
/// or, with `--unchecked` or when the component cannot load, why there is none.
fn component_check(settings: &Settings, check: &CheckArgs) -> ComponentCheck {
    if check.unchecked {
        return ComponentCheck::new(Err("--unchecked".to_string()));
    }
    let runtime = SqliteKv::in_memory()
        .and_then(|kv| build_runtime(settings, Arc::new(kv)))
        .map_err(|e| format!("{e:#}"));
    ComponentCheck::new(runtime)
}

/// The master key and the component's check that an edit needs.
fn edit_tools(
    cli: &Cli,
    settings: &Settings,
    check: &CheckArgs,
) -> anyhow::Result<(MasterKey, ComponentCheck)> {
    Ok((master_key(cli, settings)?, component_check(settings, check)))
}

/// `tenant add`: every `--set`, the secrets by file, variable or (on a terminal) a
/// prompt; checked by the component, then saved.
async fn tenant_add(editor: &Editor<'_>, args: &AddArgs) -> anyhow::Result<()> {
    let mut settings = TenantSettings {
        interval_secs: args.interval_secs,
        ..TenantSettings::default()
    };
    let mut secrets = BTreeMap::new();
    let mut edit = Edit::parse(&args.set, &[], &args.secrets)?;
    for (k, _) in edit.set.iter().filter(|(k, _)| is_secret_key(k)) {
        eprintln!(
            "note: {k} is a secret; it is sealed, but prefer --secret-file or --secret-env so it stays out of shell history"
        );
    }
    let given: Vec<String> = edit.set.iter().map(|(k, _)| k.clone()).collect();
    let referenced: Vec<Account> = given
        .iter()
        .filter_map(|k| mssp_bridge::accounts::referenced_kind(k))
        .collect();
    // Prompt only for the secrets the tenant keeps itself (not an account's).
    let own_secrets = mssp_bridge::secrets::secret_keys().filter(|k| {
        mssp_contract::config_key(k)
            .and_then(|c| c.sharing.account())
            .is_none_or(|a| !referenced.contains(&a))
    });
    let mut prompted = BTreeMap::new();
    mssp_bridge::edit::prompt_missing_secrets(
        own_secrets,
        &|k| edit.secrets.contains_key(k) || given.iter().any(|g| g == k),
        &mut prompted,
    )?;
    edit.secrets.extend(prompted);
    edit.apply_to_tenant(&args.id, &mut settings, &mut secrets)?;
    let mut out = std::io::stdout().lock();
    editor
        .tenant_add(&args.id, settings, secrets, args.replace, &mut out)
        .await
}

/// `account add`: as `tenant add`, for one account of `kind`.
async fn account_add(
    editor: &Editor<'_>,
    kind: Account,
    name: &str,
    set: &[String],
    secrets: &SecretArgs,
    out: &mut dyn std::io::Write,
) -> anyhow::Result<()> {
    let mut edit = Edit::parse(set, &[], secrets)?;
    edit.refuse_plain_secrets()?;
    let secret_names = kind
        .keys()
        .filter(|k| k.role == mssp_contract::Role::Secret)
        .map(|k| k.name);
    let mut prompted = BTreeMap::new();
    mssp_bridge::edit::prompt_missing_secrets(
        secret_names,
        &|k| edit.secrets.contains_key(k),
        &mut prompted,
    )?;
    edit.secrets.extend(prompted);
    editor.account_add(kind, name, edit, out).await
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let default_path = Path::new("mssp-bridge.toml");
    let settings_path = cli
        .config
        .clone()
        .or_else(|| default_path.exists().then(|| default_path.to_path_buf()));
    let settings = Settings::load(settings_path.as_deref())?;
    #[cfg(feature = "demo")]
    let quiet = matches!(cli.command, Command::Demo);
    #[cfg(not(feature = "demo"))]
    let quiet = false;
    init_logging(settings.log_format, if quiet { "warn" } else { "info" });
    match &cli.command {
        Command::Keygen => {
            println!("{}", MasterKey::generate());
        }
        Command::Rekey { new_key_file } => {
            let old = master_key(&cli, &settings)?;
            let new = MasterKey::load_new(new_key_file.as_deref())?;
            let (mut store, _kv) = open_stores(&settings)?;
            let done = store.rekey(&old, &new)?;
            store.publish()?;
            println!(
                "re-sealed {} tenant(s) under the new master key ({} already were) and {} account(s) ({} already were); from now on run with the new key",
                done.resealed, done.already, done.accounts_resealed, done.accounts_already
            );
        }
        #[cfg(feature = "demo")]
        Command::Demo => {
            let mut out = std::io::stdout();
            let report =
                mssp_bridge::demo::run(&settings.component, &settings.cache_dir, &mut out).await?;
            if !report.problems.is_empty() {
                bail!("the demo found {} problem(s)", report.problems.len());
            }
        }
        Command::Tenant { command } => {
            let (mut store, kv) = open_stores(&settings)?;
            match command {
                TenantCommand::Add(args) => {
                    let (key, check) = edit_tools(&cli, &settings, &args.check)?;
                    tenant_add(&Editor::new(&store, &key, &check), args).await?;
                }
                TenantCommand::Set {
                    args,
                    interval_secs,
                } => {
                    let (key, check) = edit_tools(&cli, &settings, &args.check)?;
                    let editor = Editor::new(&store, &key, &check);
                    let mut out = std::io::stdout().lock();
                    editor
                        .tenant_edit(&args.name, args.edit()?, *interval_secs, &mut out)
                        .await?;
                }
                TenantCommand::Unset(args) => {
                    let (key, check) = edit_tools(&cli, &settings, &args.check)?;
                    let editor = Editor::new(&store, &key, &check);
                    let mut out = std::io::stdout().lock();
                    editor
                        .tenant_edit(&args.name, args.edit(), None, &mut out)
                        .await?;
                }
                TenantCommand::List => {
                    let list = store.list()?;
                    if list.is_empty() {
                        println!("no tenants; add one with `mssp-bridge tenant add`");
                    }
                    for (id, s) in list {
                        let name = s.config.get("customer_name").map_or("", String::as_str);
                        let accounts: String = s
                            .accounts
                            .iter()
                            .map(|(kind, a)| {
                                format!("\t{}={a}", mssp_bridge::accounts::reference_key(*kind))
                            })
                            .collect();
                        println!("{id}\t{name}\t{} secrets{accounts}", s.secret_names.len());
                    }
                }
                TenantCommand::Show { id } => {
                    let s = store.get(id)?.ok_or_else(|| anyhow!("no tenant {id:?}"))?;
                    mssp_bridge::edit::print_tenant(id, &s, &mut std::io::stdout().lock())?;
                }
                TenantCommand::Remove { id } => {
                    if !store.remove(id)? {
                        bail!("no tenant {id:?}");
                    }
                    // Out of the registry first: no replica ticks it again.
                    store.publish()?;
                    kv.drop_tenant(id)?;
                    println!("tenant {id} removed");
                }
            }
            // On a shared store: the edit made above reaches every replica.
            store.publish()?;
        }
        Command::Account { command } => {
            let (mut store, _kv) = open_stores(&settings)?;
            let mut out = std::io::stdout().lock();
            match command {
                AccountCommand::Add {
                    kind,
                    name,
                    set,
                    secrets,
                    check,
                } => {
                    let kind = Account::parse(kind)
                        .ok_or_else(|| anyhow!("account kind {kind:?}: use xdr or snow"))?;
                    let (key, check) = edit_tools(&cli, &settings, check)?;
                    let editor = Editor::new(&store, &key, &check);
                    account_add(&editor, kind, name, set, secrets, &mut out).await?;
                }
                AccountCommand::List => mssp_bridge::edit::list_accounts(&store, &mut out)?,
                AccountCommand::Show { name } => {
                    mssp_bridge::edit::show_account(&store, name, &mut out)?
                }
                AccountCommand::Set(args) => {
                    let (key, check) = edit_tools(&cli, &settings, &args.check)?;
                    let editor = Editor::new(&store, &key, &check);
                    editor
                        .account_edit(&args.name, args.edit()?, &mut out)
                        .await?;
                }
                AccountCommand::Unset(args) => {
                    let (key, check) = edit_tools(&cli, &settings, &args.check)?;
                    let editor = Editor::new(&store, &key, &check);
                    editor
                        .account_edit(&args.name, args.edit(), &mut out)
                        .await?;
                }
                AccountCommand::Remove { name } => {
                    store.remove_account(name)?;
                    writeln!(out, "account {name} removed")?;
                }
            }
            store.publish()?;
        }
        Command::Doctor {
            tenant,
            timeout_secs,
        } => {
            let key = master_key(&cli, &settings)?;
            let (store, kv) = open_stores(&settings)?;
            // Opening it connected (Redis: and had its PING answered).
            println!(
                "key-value store: {} (reachable)",
                settings.store.describe(&settings.database)
            );
            let tenants = resolve_tenants(&store, &key, tenant.as_deref())?;
            // The component's own verdict on each configuration, when it loads.
            let runtime = build_runtime(&settings, kv).map_err(|e| format!("{e:#}"));
            doctor(
                tenants,
                runtime,
                std::time::Duration::from_secs(*timeout_secs),
            )
            .await?;
        }
        Command::Incidents { command } => {
            let (only, show) = match command {
                IncidentsCommand::List { tenant } => (tenant.as_deref(), None),
                IncidentsCommand::Show { tenant, key } => (tenant.as_deref(), Some(key)),
            };
            let key = master_key(&cli, &settings)?;
            let (store, kv) = open_stores(&settings)?;
            let resolved = resolve_tenants(&store, &key, only)?;
            let runtime = build_runtime(&settings, kv)?;
            let mut tenants = Vec::new();
            for t in resolved {
                tenants.push(runtime.upsert_tenant(t)?);
            }
            let mut out = std::io::stdout().lock();
            match show {
                None => mssp_bridge::incidents_cli::list(&runtime, &tenants, &mut out).await?,
                Some(k) => {
                    mssp_bridge::incidents_cli::show(&runtime, &tenants, k, &mut out).await?
                }
            }
        }
        Command::Backfill {
            tenant,
            since,
            max_ticks,
        } => {
            let key = master_key(&cli, &settings)?;
            let (store, kv) = open_stores(&settings)?;
            let resolved = store.resolve(&key, tenant)?;
            let runtime = build_runtime(&settings, kv)?;
            let t = runtime.upsert_tenant(resolved)?;
            let mut out = std::io::stdout();
            mssp_bridge::backfill::command(&runtime, t, since, *max_ticks, &mut out).await?;
        }
        Command::Tick { tenant } => {
            let key = master_key(&cli, &settings)?;
            let (store, kv) = open_stores(&settings)?;
            let resolved = store.resolve(&key, tenant)?;
            let runtime = build_runtime(&settings, kv)?;
            let t = runtime.upsert_tenant(resolved)?;
            runtime.tick(&t, mssp_bridge::unix_ms() / 1000).await?;
            println!("tick of {tenant} finished");
        }
        Command::Serve => {
            let key = master_key(&cli, &settings)?;
            let (store, kv) = open_stores(&settings)?;
            let tenants = store.resolve_all(&key)?;
            let running = mssp_bridge::registry::fingerprints(&tenants);
            let runtime = build_runtime(&settings, kv)?;
            for t in tenants {
                runtime.upsert_tenant(t)?;
            }
            // On a shared store, this replica ticks only the tenants whose lease it holds.
            let leases = Leases::for_store(runtime.kv().clone(), &settings.replicas);
            if let Some(leases) = &leases {
                tracing::info!(
                    replica = leases.replica(),
                    lease_ttl_secs = settings.replicas.lease_ttl_secs,
                    "replica on a shared store: tenants are ticked under leases"
                );
                tokio::spawn(leases.clone().run(runtime.clone()));
            }
            let scheduler =
                Scheduler::with_leases(runtime.clone(), settings.scheduler.clone(), leases.clone());
            scheduler.start_all();
            // Tenants added, edited or removed meanwhile apply without a restart.
            tokio::spawn(store.follow(
                running,
                key,
                runtime.clone(),
                scheduler.clone(),
                runtime.kv().clone(),
            ));
            let admin_token = std::env::var(mssp_bridge::server::ADMIN_TOKEN_ENV)
                .ok()
                .filter(|t| !t.is_empty())
                .map(SecretString::new);
            if admin_token.is_none() && !settings.listen.ip().is_loopback() {
                tracing::warn!(
                    listen = %settings.listen,
                    "the status page and /metrics are open to the network: set {} or listen on loopback",
                    mssp_bridge::server::ADMIN_TOKEN_ENV
                );
            }
            let addr = Server::with_admin_token(runtime.clone(), admin_token)
                .spawn(settings.listen)
                .await?;
            let public = Server::public(runtime.clone())
                .spawn(settings.public_listen)
                .await?;
            tracing::info!(
                private = %addr,
                public = %public,
                tenants = runtime.tenants().len(),
                store = %settings.store.describe(&settings.database),
                "mssp-bridge serving (public: callbacks and /healthz only)"
            );
            shutdown_signal().await?;
            tracing::info!("shutting down");
            if let Some(leases) = &leases {
                // Hand the leases back so the other replicas take over at once.
                tokio::task::block_in_place(|| leases.leave());
            }
        }
    }
    Ok(())
}

/// Waits for Ctrl-C (SIGINT) or SIGTERM (what Kubernetes sends before it stops a pod).
async fn shutdown_signal() -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r?,
        _ = term.recv() => {}
    }
    Ok(())
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
