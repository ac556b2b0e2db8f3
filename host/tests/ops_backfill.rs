//! `mssp-bridge backfill`, run as an operator would: it refuses clearly when
//! the tenant cannot be backfilled (no tick_token, a component without the
//! backfill route), and — once the guest serves `POST /v1/backfill` — replays
//! a week of history through the exactly-once pipeline.

mod common;
use common::serve::Bridge;
use common::wasm;

use std::process::Output;

use base64::Engine as _;
use mssp_sim::{ComputerSpec, OrgSpec, Sim, SimConfig};

/// A bridge whose tenants run `component` (e.g. "mssp_guest").
fn bridge_with(component: &str) -> Bridge {
    Bridge::with_settings("warn", &wasm(component), "")
}

impl Bridge {
    /// `mssp-bridge <args>` with acme's secrets in the environment.
    fn run(&self, args: &[&str]) -> Output {
        self.command()
            .env("ACME_AMP_KEY", "ampkey-acme-2e8f")
            .env("ACME_XDR_SECRET", "xdrsecret-acme-91aa")
            .env("ACME_SNOW_PASSWORD", "snowpass-acme-c3d4")
            .env("ACME_TICK_TOKEN", "ticktoken-acme-5566")
            .env(
                "ACME_CALLBACK_KEY",
                base64::engine::general_purpose::STANDARD.encode("callback-acme-0c0d"),
            )
            .args(args)
            .output()
            .unwrap()
    }

    fn add_acme(&self, sim: &Sim, with_tick_token: bool) {
        let mut args: Vec<String> = ["tenant", "add", "acme"].map(String::from).to_vec();
        for (k, v) in [
            ("customer_name", "Acme Corp".to_string()),
            ("amp_base_url", sim.amp_url().to_string()),
            ("amp_client_id", "acme-amp".to_string()),
            ("xdr_auth_url", sim.xdr_auth_url().to_string()),
            ("xdr_api_url", sim.xdr_api_url().to_string()),
            ("xdr_client_id", "acme-xdr".to_string()),
            ("snow_base_url", sim.snow_url().to_string()),
            ("snow_user", "acme-snow".to_string()),
        ] {
            args.push("--set".into());
            args.push(format!("{k}={v}"));
        }
        let mut secrets = vec![
            ("amp_api_key", "ACME_AMP_KEY"),
            ("xdr_client_secret", "ACME_XDR_SECRET"),
            ("snow_password", "ACME_SNOW_PASSWORD"),
            ("callback_key", "ACME_CALLBACK_KEY"),
        ];
        if with_tick_token {
            secrets.push(("tick_token", "ACME_TICK_TOKEN"));
        }
        for (k, var) in secrets {
            args.push("--secret-env".into());
            args.push(format!("{k}={var}"));
        }
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = self.run(&refs);
        assert!(out.status.success(), "{}", stderr(&out));
    }
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

async fn acme_upstream() -> Sim {
    let sim = Sim::start(SimConfig::default()).await.unwrap();
    sim.amp()
        .add_org(OrgSpec::new("acme-amp", "ampkey-acme-2e8f"));
    sim.amp()
        .add_group("acme-amp", "grp-acme-protect", "Protect")
        .unwrap();
    for i in 0..3 {
        sim.amp()
            .add_computer(
                "acme-amp",
                ComputerSpec::new(
                    format!("acme-guid-{i}"),
                    format!("ACME-WS{i:03}"),
                    "grp-acme-protect",
                ),
            )
            .unwrap();
    }
    sim.xdr().add_client("acme-xdr", "xdrsecret-acme-91aa");
    sim.snow().add_basic_user("acme-snow", "snowpass-acme-c3d4");
    sim
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backfill_needs_the_tick_token_and_says_so() {
    let sim = acme_upstream().await;
    let bridge = bridge_with("mssp_guest");
    bridge.add_acme(&sim, false);
    let out = bridge.run(&["backfill", "--tenant", "acme", "--since", "7d"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("tenant acme has no tick_token"), "{err}");
    assert!(err.contains("--secret-file tick_token=PATH"), "{err}");

    let out = bridge.run(&["backfill", "--tenant", "acme", "--since", "a week"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("expected e.g. 7d"),
        "{}",
        stderr(&out)
    );
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_component_without_the_backfill_route_is_named_as_the_cause() {
    let sim = acme_upstream().await;
    // The probe component serves none of the bridge's routes.
    let bridge = bridge_with("mssp_probe");
    bridge.add_acme(&sim, true);
    let out = bridge.run(&["backfill", "--tenant", "acme", "--since", "7d"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("tenant acme: its bridge component has no backfill route (POST /v1/backfill answered 404"),
        "{err}"
    );
    assert!(
        !err.contains("ticktoken-acme-5566"),
        "the token is never printed: {err}"
    );
    assert_eq!(stdout(&out), "");
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_week_of_history_is_replayed_exactly_once() {
    let sim = acme_upstream().await;
    let bridge = bridge_with("mssp_guest");
    bridge.add_acme(&sim, true);
    // The bridge starts today: its first tick looks back one hour only.
    let tick = bridge.run(&["tick", "acme"]);
    assert!(tick.status.success(), "{}", stderr(&tick));
    // Three days ago, before the bridge existed, detections happened.
    let mut events = sim.amp().generate_events("acme-amp", 9, 12).unwrap();
    for e in &mut events {
        e.timestamp -= 3 * 86_400;
        e.date = mssp_bridge::status_page::iso(e.timestamp).replace('Z', "+00:00");
    }
    sim.amp().push_events("acme-amp", events).unwrap();
    let tick = bridge.run(&["tick", "acme"]);
    assert!(tick.status.success(), "{}", stderr(&tick));
    assert!(
        sim.inspect().snow_incidents().is_empty(),
        "old events are not seen by ticks"
    );

    let out = bridge.run(&["backfill", "--tenant", "acme", "--since", "7d"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let summary = stdout(&out);
    let opened = sim.inspect().snow_incidents().len();
    assert!(opened > 0);
    assert_eq!(sim.inspect().xdr_incidents().len(), opened);
    assert!(summary.starts_with("backfill of acme since "), "{summary}");
    assert!(
        summary.contains(&format!(" events seen, {opened} incidents opened")),
        "{summary}"
    );

    // A second backfill of the same window opens nothing new.
    let again = bridge.run(&["backfill", "--tenant", "acme", "--since", "7d"]);
    assert!(again.status.success(), "{}", stderr(&again));
    assert!(
        stdout(&again).contains("0 incidents opened"),
        "{}",
        stdout(&again)
    );
    assert_eq!(sim.inspect().snow_incidents().len(), opened);
    sim.shutdown().await;
}
