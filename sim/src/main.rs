//! `mssp-sim`: all simulators with a small demo population, until Ctrl-C.
//!
//! Usage: `mssp-sim [--base-port N] [--events N] [--isolation-delay-ms N]`
//! With `--base-port N` the listeners use N (AMP), N+1 (XDR token), N+2 (XDR CTIA),
//! N+3 (ServiceNow), N+4 (control); otherwise free ports are picked.

use std::process::ExitCode;
use std::time::Duration;

use mssp_sim::{ComputerSpec, OrgSpec, Sim, SimConfig, SimError, SimPorts};

struct Args {
    base_port: Option<u16>,
    events: usize,
    isolation_delay_ms: u64,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        base_port: None,
        events: 40,
        isolation_delay_ms: 5000,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = |name: &str| it.next().ok_or_else(|| format!("{name} needs a value"));
        match flag.as_str() {
            "--base-port" => {
                let v = value("--base-port")?;
                let port = v
                    .parse::<u16>()
                    .map_err(|e| format!("--base-port {v:?}: {e}"))?;
                if port > u16::MAX - 4 {
                    return Err(format!("--base-port {port} leaves no room for 5 ports"));
                }
                args.base_port = Some(port);
            }
            "--events" => {
                let v = value("--events")?;
                args.events = v.parse().map_err(|e| format!("--events {v:?}: {e}"))?;
            }
            "--isolation-delay-ms" => {
                let v = value("--isolation-delay-ms")?;
                args.isolation_delay_ms = v
                    .parse()
                    .map_err(|e| format!("--isolation-delay-ms {v:?}: {e}"))?;
            }
            "-h" | "--help" => {
                return Err(
                    "usage: mssp-sim [--base-port N] [--events N] [--isolation-delay-ms N]".into(),
                );
            }
            other => return Err(format!("unknown argument {other:?} (try --help)")),
        }
    }
    Ok(args)
}

/// Two customers with groups, computers and events; one XDR client and one ServiceNow user
/// each (the second ServiceNow tenant authenticates with a bearer token).
fn populate(sim: &Sim, events: usize) -> Result<(), SimError> {
    let amp = sim.amp();
    for (i, customer) in ["acme", "globex"].iter().enumerate() {
        let client_id = format!("{customer}-amp-client");
        let mut org = OrgSpec::new(&client_id, format!("{customer}-amp-key"));
        org.name = customer.to_string();
        if i == 1 {
            org.move_status = 202;
        }
        amp.add_org(org);
        let workstations = format!("{customer}-grp-workstations");
        let triage = format!("{customer}-grp-triage");
        amp.add_group(&client_id, &workstations, "Workstations")?;
        amp.add_group(&client_id, &triage, "Triage")?;
        for n in 1..=4 {
            let mut spec = ComputerSpec::new(
                format!("{customer}-cguid-{n:04}"),
                format!("{}-WS{n:02}", customer.to_uppercase()),
                &workstations,
            );
            spec.isolation_allowed = n != 4;
            amp.add_computer(&client_id, spec)?;
        }
        let generated = amp.generate_events(&client_id, 7 + i as u64, events)?;
        amp.push_events(&client_id, generated)?;
        sim.xdr().add_client(
            &format!("{customer}-xdr-client"),
            &format!("{customer}-xdr-secret"),
        );
    }
    sim.snow().add_basic_user("acme-snow", "acme-snow-password");
    sim.snow()
        .add_bearer_token("globex-snow-token", "globex-snow");
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };
    let mut config = SimConfig {
        isolation_delay: Duration::from_millis(args.isolation_delay_ms),
        ..SimConfig::default()
    };
    if let Some(base) = args.base_port {
        config.ports = SimPorts {
            amp: base,
            xdr_auth: base + 1,
            xdr_api: base + 2,
            snow: base + 3,
            control: base + 4,
        };
    }
    let sim = match Sim::start(config).await {
        Ok(sim) => sim,
        Err(e) => {
            eprintln!(
                "starting the simulators: {e} (is a port already taken? try another --base-port)"
            );
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = populate(&sim, args.events) {
        eprintln!("populating the demo data: {e}");
        return ExitCode::FAILURE;
    }
    println!("amp_base_url={}", sim.amp_url());
    println!("xdr_auth_url={}", sim.xdr_auth_url());
    println!("xdr_api_url={}", sim.xdr_api_url());
    println!("snow_base_url={}", sim.snow_url());
    println!("control_url={}", sim.control_url());
    println!("# demo credentials");
    println!(
        "# AMP:  acme-amp-client / acme-amp-key, globex-amp-client / globex-amp-key (moves answer 202)"
    );
    println!(
        "#       groups <customer>-grp-workstations, <customer>-grp-triage; <customer>-cguid-0004 may not be isolated"
    );
    println!("# XDR:  acme-xdr-client / acme-xdr-secret, globex-xdr-client / globex-xdr-secret");
    println!(
        "# SNOW: basic acme-snow / acme-snow-password; bearer globex-snow-token (user globex-snow)"
    );
    println!(
        "# set a callback: PUT {}/_sim/snow/users/acme-snow/callback {{\"url\":..,\"key_b64\":..}}",
        sim.control_url()
    );
    if let Err(e) = tokio::signal::ctrl_c().await {
        eprintln!("waiting for Ctrl-C: {e}");
        return ExitCode::FAILURE;
    }
    sim.shutdown().await;
    ExitCode::SUCCESS
}
