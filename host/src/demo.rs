//! `mssp-bridge demo`: the whole loop on embedded defaults.
//!
//! Starts the simulators in-process, registers three customers (different
//! regions and containment policies) through the real tenant store with
//! sealed secrets, publishes detections, runs ticks, closes incidents in the
//! simulated ServiceNow — by signed callback for one customer, by the bridge's
//! reconcile poll for another — and shows the incidents closed and the hosts
//! released. Nothing here is specific to the demo except the simulators.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, anyhow};
use base64::Engine as _;
use mssp_contract::incident::{IncidentSummary, State};
use mssp_sim::{CallbackSpec, ComputerSpec, OrgSpec, Sim, SimConfig};

use crate::guest_api::dash;
use crate::secrets::{MasterKey, SecretString};
use crate::server::Server;
use crate::settings::LimitSettings;
use crate::tenants::{TenantSettings, TenantStore};
use mssp_runtime::kv::SqliteKv;
use mssp_runtime::{Runtime, RuntimeParts};

/// One demo customer.
struct DemoCustomer {
    id: &'static str,
    name: &'static str,
    region: &'static str,
    console: &'static str,
    containment: &'static str,
    /// ServiceNow calls back (business rule installed) or not (reconcile only).
    callback: bool,
    hosts: &'static [&'static str],
}

const CUSTOMERS: &[DemoCustomer] = &[
    DemoCustomer {
        id: "acme",
        name: "Acme Corp",
        region: "NAM",
        console: "https://console.amp.cisco.com",
        containment: "isolate",
        callback: true,
        hosts: &["ACME-WS001", "ACME-WS002", "ACME-LT117"],
    },
    DemoCustomer {
        id: "globex",
        name: "Globex",
        region: "EU",
        console: "https://console.eu.amp.cisco.com",
        containment: "move",
        callback: false,
        hosts: &["GLX-FIN-01", "GLX-HR-07"],
    },
    DemoCustomer {
        id: "initech",
        name: "Initech",
        region: "APJC",
        console: "https://console.apjc.amp.cisco.com",
        containment: "none",
        callback: true,
        hosts: &["INI-DEV-42", "INI-TPS-13"],
    },
];

/// What the demo found at the end; the command exits non-zero unless every
/// incident was opened once, linked, and closed with its host released.
#[derive(Debug, Default)]
pub struct DemoReport {
    pub incidents_opened: usize,
    pub incidents_closed: usize,
    pub hosts_released: usize,
    pub problems: Vec<String>,
}

fn secret_of(id: &str, what: &str) -> String {
    // Random per run: the demo's credentials are as secret as real ones.
    let mut bytes = [0u8; 12];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut bytes);
    format!("{id}-{what}-{}", hex::encode(bytes))
}

/// Runs the demo, printing to `out`. `component` is the bridge's `.wasm`.
pub async fn run(
    component: &Path,
    cache_dir: &Path,
    out: &mut (dyn Write + Send),
) -> anyhow::Result<DemoReport> {
    let sim = Sim::start(SimConfig {
        isolation_delay: Duration::from_millis(300),
        ..SimConfig::default()
    })
    .await
    .context("starting the simulators")?;
    let dir = tempfile::tempdir().context("creating the demo's database folder")?;
    let db = dir.path().join("demo.db");
    let key = MasterKey::parse(&MasterKey::generate(), "generated for the demo")?;
    let store = TenantStore::open(&db)?;
    let runtime = Arc::new(Runtime::new(RuntimeParts {
        component,
        cache_dir,
        kv: Arc::new(SqliteKv::open(&db)?),
        limits: LimitSettings::default(),
        max_instances: 32,
        budgets: Default::default(),
    })?);
    let addr = Server::new(runtime.clone())
        .spawn(std::net::SocketAddr::from(([127, 0, 0, 1], 0)))
        .await?;

    writeln!(out, "mssp-bridge demo")?;
    writeln!(
        out,
        "  simulators: Secure Endpoint {}  XDR {} / {}  ServiceNow {}",
        sim.amp_url(),
        sim.xdr_auth_url(),
        sim.xdr_api_url(),
        sim.snow_url()
    )?;
    writeln!(out, "  bridge listening on http://{addr}\n")?;

    // 1. Customers: upstream accounts in the simulators, tenants in the bridge.
    writeln!(out, "1. Customers")?;
    let b64 = base64::engine::general_purpose::STANDARD;
    for c in CUSTOMERS {
        let amp_client = format!("{}-client", c.id);
        let amp_key = secret_of(c.id, "amp");
        let xdr_client = format!("mssp-xdr-{}", c.id);
        let xdr_secret = secret_of(c.id, "xdr");
        let snow_user = format!("svc-bridge-{}", c.id);
        let snow_password = secret_of(c.id, "snow");
        let callback_key = b64.encode(secret_of(c.id, "callback"));
        let tick_token = secret_of(c.id, "tick");
        let protect = format!("{}-grp-protect", c.id);
        let triage = format!("{}-grp-triage", c.id);

        let amp = sim.amp();
        amp.add_org(OrgSpec::new(&amp_client, &amp_key));
        amp.add_group(&amp_client, &protect, "Protect")?;
        amp.add_group(&amp_client, &triage, "Triage")?;
        for (i, host) in c.hosts.iter().enumerate() {
            amp.add_computer(
                &amp_client,
                ComputerSpec::new(format!("{}-{i:04}-conn", c.id), *host, &protect),
            )?;
        }
        sim.xdr().add_client(&xdr_client, &xdr_secret);
        sim.snow().add_basic_user(&snow_user, &snow_password);
        if c.callback {
            sim.snow().set_callback(
                &snow_user,
                CallbackSpec::new(
                    format!("http://{addr}/tenants/{}/v1/servicenow/events", c.id),
                    &callback_key,
                ),
            );
        }

        let mut settings = TenantSettings::default();
        for (k, v) in [
            ("customer_name", c.name.to_string()),
            ("amp_base_url", sim.amp_url().to_string()),
            ("amp_console_url", c.console.to_string()),
            ("amp_client_id", amp_client.clone()),
            ("xdr_auth_url", sim.xdr_auth_url().to_string()),
            ("xdr_api_url", sim.xdr_api_url().to_string()),
            ("xdr_client_id", xdr_client),
            ("snow_base_url", sim.snow_url().to_string()),
            ("snow_user", snow_user),
            ("containment", c.containment.to_string()),
            ("triage_group_guid", triage),
        ] {
            settings.config.insert(k.to_string(), v);
        }
        let secrets: BTreeMap<String, SecretString> = [
            ("amp_api_key", amp_key),
            ("xdr_client_secret", xdr_secret),
            ("snow_password", snow_password),
            ("callback_key", callback_key),
            ("tick_token", tick_token),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), SecretString::new(v)))
        .collect();
        store.put(&key, c.id, settings, secrets, false)?;
        runtime.upsert_tenant(store.resolve(&key, c.id)?)?;
        writeln!(
            out,
            "   {:<8} {:<10} region {:<4}  containment {:<8} close-back {}",
            c.id,
            c.name,
            c.region,
            c.containment,
            if c.callback {
                "signed callback"
            } else {
                "reconcile poll"
            }
        )?;
    }

    // 2. Detections upstream.
    writeln!(out, "\n2. Events published in Secure Endpoint")?;
    for (i, c) in CUSTOMERS.iter().enumerate() {
        let client = format!("{}-client", c.id);
        let events = sim
            .amp()
            .generate_events(&client, 1000 + i as u64, 12)
            .map_err(|e| anyhow!("{e}"))?;
        let n = events.len();
        sim.amp()
            .push_events(&client, events)
            .map_err(|e| anyhow!("{e}"))?;
        writeln!(out, "   {:<8} {n} events", c.id)?;
    }

    // 3. One tick each: incidents, containment.
    writeln!(out, "\n3. One tick per customer")?;
    for c in CUSTOMERS {
        tick(&runtime, c.id).await?;
    }
    let mut report = DemoReport::default();
    for c in CUSTOMERS {
        let incidents = incidents(&runtime, c.id).await?;
        writeln!(out, "   {} — {} incidents", c.name, incidents.len())?;
        for i in &incidents {
            report.incidents_opened += 1;
            writeln!(
                out,
                "     {:<34} {:<9} host {:<11} XDR {:<45} ServiceNow {}",
                i.key,
                i.state.as_str(),
                dash(i.host.as_deref()),
                dash(i.xdr_id.as_deref()),
                dash(i.snow_number.as_deref()),
            )?;
        }
    }
    writeln!(
        out,
        "   upstream: {} XDR incidents, {} ServiceNow incidents",
        sim.inspect().xdr_incidents().len(),
        sim.inspect().snow_incidents().len()
    )?;
    show_hosts(&sim, out)?;

    // 4. Analysts resolve every ticket in ServiceNow.
    writeln!(out, "\n4. Analysts resolve the tickets in ServiceNow")?;
    for s in sim.inspect().snow_incidents() {
        let outcome = sim
            .snow()
            .analyst_close(
                s.field("sys_id"),
                6,
                "Solved (Permanently)",
                "Malware removed, host reimaged",
            )
            .await
            .map_err(|e| anyhow!("{e}"))?;
        let how = match outcome.status() {
            Some(status) => format!("callback answered {status}"),
            None => "no callback (the reconcile poll will see it)".to_string(),
        };
        writeln!(out, "   {} resolved — {how}", s.field("number"))?;
    }

    // 5. Next ticks: reconcile, finish releases.
    writeln!(
        out,
        "\n5. Next ticks (XDR closes: one batched read, then each write leaves an analyst's \
         changes alone; reconcile poll; isolation stop completes)"
    )?;
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        for c in CUSTOMERS {
            tick(&runtime, c.id).await?;
        }
    }
    for c in CUSTOMERS {
        for i in incidents(&runtime, c.id).await? {
            let state = i.state;
            if state == State::Closed {
                report.incidents_closed += 1;
            } else {
                report
                    .problems
                    .push(format!("{} {} is {state}", c.id, i.key));
            }
        }
    }
    let closed_xdr = sim
        .inspect()
        .xdr_incidents()
        .iter()
        .filter(|i| i["status"].as_str() == Some("Closed"))
        .count();
    writeln!(
        out,
        "   bridge: {} of {} incidents closed; XDR: {closed_xdr} incidents Closed",
        report.incidents_closed, report.incidents_opened
    )?;
    let unreferenced = sim
        .inspect()
        .xdr_incidents()
        .iter()
        .filter(|i| {
            !i["external_references"]
                .as_array()
                .is_some_and(|r| r.iter().any(|r| r["source_name"] == "ServiceNow"))
        })
        .count();
    if unreferenced > 0 {
        report.problems.push(format!(
            "{unreferenced} XDR incidents without a ServiceNow reference"
        ));
    }
    show_one_ticket(&sim, out)?;
    report.hosts_released = show_hosts(&sim, out)?;
    for c in CUSTOMERS {
        let client = format!("{}-client", c.id);
        for comp in sim.amp().computers(&client).map_err(|e| anyhow!("{e}"))? {
            let home = format!("{}-grp-protect", c.id);
            let isolated = !matches!(comp.isolation, mssp_sim::IsolationStatus::NotIsolated);
            if comp.group_guid != home || isolated {
                report.problems.push(format!(
                    "{} not released ({}, {:?})",
                    comp.hostname, comp.group_guid, comp.isolation
                ));
            }
        }
    }
    if closed_xdr != report.incidents_opened {
        report.problems.push(format!(
            "{closed_xdr} XDR incidents closed of {}",
            report.incidents_opened
        ));
    }
    writeln!(
        out,
        "\n{}",
        if report.problems.is_empty() {
            "Every detection: one XDR incident, one ServiceNow incident, linked, contained per policy, closed from ServiceNow, host released."
                .to_string()
        } else {
            format!("Problems: {}", report.problems.join("; "))
        }
    )?;
    sim.shutdown().await;
    Ok(report)
}

async fn tick(runtime: &Runtime, id: &str) -> anyhow::Result<()> {
    let t = runtime
        .tenant(id)
        .ok_or_else(|| anyhow!("no tenant {id}"))?;
    runtime
        .tick(&t, crate::unix_ms() / 1000)
        .await
        .map_err(|e| anyhow!("{e}"))
}

/// The tenant's incidents, as its status page reads them.
async fn incidents(runtime: &Arc<Runtime>, id: &str) -> anyhow::Result<Vec<IncidentSummary>> {
    let t = runtime
        .tenant(id)
        .ok_or_else(|| anyhow!("no tenant {id}"))?;
    Ok(crate::guest_api::incidents(runtime, t).await?.incidents)
}

/// What an analyst sees on one ticket: the facts the bridge wrote and its closing
/// work note (what it did in XDR and to the host).
fn show_one_ticket(sim: &Sim, out: &mut (dyn Write + Send)) -> anyhow::Result<()> {
    let tickets = sim.inspect().snow_incidents();
    let Some(t) = tickets.first() else {
        return Ok(());
    };
    writeln!(
        out,
        "   ticket {}, as an analyst reads it:",
        t.field("number")
    )?;
    for line in t.field("description").lines().filter(|l| {
        ["User:", "Detection:", "Command line:", "Network:", "File:"]
            .iter()
            .any(|p| l.starts_with(p))
    }) {
        writeln!(out, "     {line}")?;
    }
    if let Some(note) = t.work_notes.last() {
        for line in note.text.lines() {
            writeln!(out, "     | {line}")?;
        }
    }
    Ok(())
}

/// Prints every computer's group and isolation; returns how many are home
/// and not isolated.
fn show_hosts(sim: &Sim, out: &mut (dyn Write + Send)) -> anyhow::Result<usize> {
    let mut released = 0;
    writeln!(out, "   hosts:")?;
    for c in CUSTOMERS {
        let client = format!("{}-client", c.id);
        for comp in sim.amp().computers(&client).map_err(|e| anyhow!("{e}"))? {
            let home = comp.group_guid.ends_with("-grp-protect");
            let free = matches!(comp.isolation, mssp_sim::IsolationStatus::NotIsolated);
            if home && free {
                released += 1;
            }
            writeln!(
                out,
                "     {:<11} group {:<20} isolation {:?}",
                comp.hostname, comp.group_guid, comp.isolation
            )?;
        }
    }
    Ok(released)
}
