//! `mssp-bridge`: the command line of the host.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context as _, anyhow, bail};
use clap::{Parser, Subcommand};
use mssp_bridge::scheduler::Scheduler;
use mssp_bridge::secrets::{MasterKey, SecretString, is_secret_key};
use mssp_bridge::server::Server;
use mssp_bridge::settings::{LogFormat, Settings};
use mssp_bridge::tenants::{TenantSettings, TenantStore};
use mssp_runtime::kv::SqliteKv;
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
    /// Run one tick of one tenant now and print the outcome.
    Tick { tenant: String },
    /// Print a fresh random master key (base64 of 32 bytes).
    Keygen,
    /// Re-seal every tenant's secrets under a new master key, in one transaction
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
    /// A config value, KEY=VALUE (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// A secret read from a file, KEY=PATH (repeatable).
    #[arg(long = "secret-file", value_name = "KEY=PATH")]
    secret_file: Vec<String>,
    /// A secret read from an environment variable, KEY=VAR (repeatable).
    #[arg(long = "secret-env", value_name = "KEY=VAR")]
    secret_env: Vec<String>,
    /// Seconds between ticks (default: the host's interval).
    #[arg(long)]
    interval_secs: Option<u64>,
    /// Replace the tenant if it exists.
    #[arg(long)]
    replace: bool,
    /// Save without the bridge component's configuration check (it then runs at the
    /// first tick and in `mssp-bridge doctor`).
    #[arg(long)]
    unchecked: bool,
}

#[derive(Subcommand)]
enum TenantCommand {
    /// Add a tenant. Secret keys are sealed under the master key.
    Add(AddArgs),
    /// List tenants (never prints a secret).
    List,
    /// Show one tenant's configuration (secrets by name only).
    Show { id: String },
    /// Remove a tenant and its key-value data.
    Remove { id: String },
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

fn split_pair(s: &str) -> anyhow::Result<(String, String)> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| anyhow!("expected KEY=VALUE, got {s:?}"))?;
    Ok((k.trim().to_string(), v.to_string()))
}

fn open_stores(settings: &Settings) -> anyhow::Result<(TenantStore, SqliteKv)> {
    if let Some(dir) = settings
        .database
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
    {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating database folder {}", dir.display()))?;
    }
    Ok((
        TenantStore::open(&settings.database)?,
        SqliteKv::open(&settings.database)?,
    ))
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

fn build_runtime(settings: &Settings, kv: SqliteKv) -> anyhow::Result<Arc<Runtime>> {
    let max_instances =
        (settings.scheduler.max_concurrent_ticks + settings.limits.max_concurrent_requests) as u32;
    Ok(Arc::new(Runtime::new(RuntimeParts {
        component: &settings.component,
        cache_dir: &settings.cache_dir,
        kv: Arc::new(kv),
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
        let mut report = mssp_bridge::doctor::diagnose(&t.id, &t.config, timeout).await;
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

/// The bridge component's own verdict on a tenant's configuration before it is saved
/// (the `config` field of its `GET /v1/status`, run in-process against that
/// configuration): `Ok(Ok(()))` accepted, `Ok(Err(error))` refused, `Err(why)` when the
/// component could not be asked (e.g. not built yet).
async fn check_with_component(
    settings: &Settings,
    kv: SqliteKv,
    candidate: mssp_bridge::tenants::ResolvedTenant,
) -> Result<Result<(), String>, String> {
    let runtime = build_runtime(settings, kv).map_err(|e| format!("{e:#}"))?;
    let tenant = runtime
        .upsert_tenant(candidate)
        .map_err(|e| format!("{e:#}"))?;
    let verdict = mssp_bridge::doctor::component_verdict(&runtime, tenant).await?;
    Ok(if verdict == "ok" {
        Ok(())
    } else {
        Err(verdict)
    })
}

/// `tenant add`: the configuration is checked by the bridge component itself (the
/// same check a tick makes) before anything is saved; a refused one is an error naming
/// the key, and nothing is stored.
async fn tenant_add<F, Fut>(
    store: &TenantStore,
    key: &MasterKey,
    args: &AddArgs,
    check: F,
) -> anyhow::Result<()>
where
    F: FnOnce(mssp_bridge::tenants::ResolvedTenant) -> Fut,
    Fut: std::future::Future<Output = Result<Result<(), String>, String>>,
{
    let mut settings = TenantSettings {
        interval_secs: args.interval_secs,
        ..TenantSettings::default()
    };
    let mut secrets = BTreeMap::new();
    for pair in &args.set {
        let (k, v) = split_pair(pair)?;
        if is_secret_key(&k) {
            eprintln!(
                "note: {k} is a secret; it is sealed, but prefer --secret-file or --secret-env so it stays out of shell history"
            );
        }
        settings.config.insert(k, v);
    }
    for pair in &args.secret_file {
        let (k, path) = split_pair(pair)?;
        let v = std::fs::read_to_string(Path::new(&path))
            .with_context(|| format!("reading secret {k} from {path}"))?;
        secrets.insert(k, SecretString::new(v.trim_end_matches(['\r', '\n'])));
    }
    for pair in &args.secret_env {
        let (k, var) = split_pair(pair)?;
        let v = std::env::var(&var)
            .map_err(|_| anyhow!("secret {k}: environment variable {var} is not set"))?;
        secrets.insert(k, SecretString::new(v));
    }
    prompt_missing_secrets(&settings, &mut secrets)?;
    let candidate =
        mssp_bridge::tenants::resolve_candidate(&args.id, settings.clone(), secrets.clone())?;
    let verdict = if args.unchecked {
        Err("--unchecked".to_string())
    } else {
        check(candidate).await
    };
    match verdict {
        Ok(Ok(())) => {}
        Ok(Err(refused)) => bail!(
            "tenant {} not saved: the bridge component refuses the configuration: {refused}",
            args.id
        ),
        Err(why) => eprintln!(
            "warning: tenant {}: configuration not checked by the bridge component ({why}); \
             run `mssp-bridge doctor` once it is built",
            args.id
        ),
    }
    store.put(key, &args.id, settings, secrets, args.replace)?;
    println!("tenant {} saved", args.id);
    Ok(())
}

/// Asks for each secret not given by flag, file or variable, without echo —
/// only on an interactive terminal (scripts are never blocked on a prompt).
fn prompt_missing_secrets(
    settings: &TenantSettings,
    secrets: &mut BTreeMap<String, SecretString>,
) -> anyhow::Result<()> {
    use std::io::IsTerminal as _;
    if !std::io::stdin().is_terminal() {
        return Ok(());
    }
    for name in mssp_bridge::secrets::secret_keys() {
        if secrets.contains_key(name) || settings.config.contains_key(name) {
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

fn print_tenant(id: &str, s: &TenantSettings) {
    println!("tenant {id}");
    if let Some(i) = s.interval_secs {
        println!("  interval_secs = {i}");
    }
    for (k, v) in &s.config {
        println!("  {k} = {v}");
    }
    for k in &s.secret_names {
        println!("  {k} = <secret, sealed>");
    }
    for o in &s.allowed_outbound {
        println!("  allowed_outbound = {o}");
    }
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
            let (store, _kv) = open_stores(&settings)?;
            let done = store.rekey(&old, &new)?;
            println!(
                "re-sealed {} tenant(s) under the new master key ({} already were); from now on run with the new key",
                done.resealed, done.already
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
            let (store, kv) = open_stores(&settings)?;
            match command {
                TenantCommand::Add(args) => {
                    let key = master_key(&cli, &settings)?;
                    tenant_add(&store, &key, args, |candidate| {
                        check_with_component(&settings, kv, candidate)
                    })
                    .await?;
                }
                TenantCommand::List => {
                    let list = store.list()?;
                    if list.is_empty() {
                        println!("no tenants; add one with `mssp-bridge tenant add`");
                    }
                    for (id, s) in list {
                        let name = s.config.get("customer_name").map_or("", String::as_str);
                        println!("{id}\t{name}\t{} secrets", s.secret_names.len());
                    }
                }
                TenantCommand::Show { id } => {
                    let s = store.get(id)?.ok_or_else(|| anyhow!("no tenant {id:?}"))?;
                    print_tenant(id, &s);
                }
                TenantCommand::Remove { id } => {
                    if !store.remove(id)? {
                        bail!("no tenant {id:?}");
                    }
                    use mssp_runtime::kv::KvBackend as _;
                    kv.drop_tenant(id)?;
                    println!("tenant {id} removed");
                }
            }
        }
        Command::Doctor {
            tenant,
            timeout_secs,
        } => {
            let key = master_key(&cli, &settings)?;
            let (store, kv) = open_stores(&settings)?;
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
            let runtime = build_runtime(&settings, kv)?;
            for t in tenants {
                runtime.upsert_tenant(t)?;
            }
            let scheduler = Scheduler::new(runtime.clone(), settings.scheduler.clone());
            scheduler.start_all();
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
                "mssp-bridge serving (public: callbacks and /healthz only)"
            );
            tokio::signal::ctrl_c().await?;
            tracing::info!("shutting down");
        }
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
