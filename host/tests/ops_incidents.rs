//! `mssp-bridge incidents list|show`, run as an operator would after the
//! bridge (`mssp-bridge tick`) turned detections into incidents against the
//! in-process simulators: states, ServiceNow numbers, XDR ids, deep links to
//! XDR, ServiceNow and the Secure Endpoint console, and the audit timeline.

mod common;
use common::component;
use common::serve::Bridge;

use std::process::Output;

use base64::Engine as _;
use mssp_sim::{ComputerSpec, OrgSpec, Sim, SimConfig};

/// A bridge logging JSON at `info`, running the built component.
fn json_logging_bridge() -> Bridge {
    Bridge::with_settings("info", &component(), "log_format = \"json\"\n")
}

impl Bridge {
    /// `mssp-bridge <args>` with acme's secrets in the environment.
    fn run(&self, args: &[&str]) -> Output {
        self.command()
            .env("ACME_AMP_KEY", "ampkey-acme-1c9e")
            .env("ACME_XDR_SECRET", "xdrsecret-acme-77f0")
            .env("ACME_SNOW_PASSWORD", "snowpass-acme-4b2d")
            .env(
                "ACME_CALLBACK_KEY",
                base64::engine::general_purpose::STANDARD.encode("callback-acme-0a0b"),
            )
            .args(args)
            .output()
            .unwrap()
    }
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_lists_incidents_and_reads_one_with_links_and_timeline() {
    let sim = Sim::start(SimConfig::default()).await.unwrap();
    sim.amp()
        .add_org(OrgSpec::new("acme-amp", "ampkey-acme-1c9e"));
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
    sim.xdr().add_client("acme-xdr", "xdrsecret-acme-77f0");
    sim.snow().add_basic_user("acme-snow", "snowpass-acme-4b2d");

    let bridge = json_logging_bridge();
    let add = bridge.run(&[
        "tenant",
        "add",
        "acme",
        "--set",
        "customer_name=Acme Corp",
        "--set",
        &format!("amp_base_url={}", sim.amp_url()),
        "--set",
        "amp_console_url=https://console.eu.amp.cisco.com",
        "--set",
        "amp_client_id=acme-amp",
        "--set",
        &format!("xdr_auth_url={}", sim.xdr_auth_url()),
        "--set",
        &format!("xdr_api_url={}", sim.xdr_api_url()),
        "--set",
        "xdr_client_id=acme-xdr",
        "--set",
        &format!("snow_base_url={}", sim.snow_url()),
        "--set",
        "snow_user=acme-snow",
        "--secret-env",
        "amp_api_key=ACME_AMP_KEY",
        "--secret-env",
        "xdr_client_secret=ACME_XDR_SECRET",
        "--secret-env",
        "snow_password=ACME_SNOW_PASSWORD",
        "--secret-env",
        "callback_key=ACME_CALLBACK_KEY",
    ]);
    assert!(add.status.success(), "{}", stderr(&add));

    let empty = bridge.run(&["incidents", "list"]);
    assert!(empty.status.success(), "{}", stderr(&empty));
    assert_eq!(
        stdout(&empty),
        "acme (Acme Corp) — 0 incidents, 0 not closed\n"
    );

    let events = sim.amp().generate_events("acme-amp", 5, 8).unwrap();
    sim.amp().push_events("acme-amp", events).unwrap();
    for _ in 0..2 {
        let tick = bridge.run(&["tick", "acme"]);
        assert!(tick.status.success(), "{}", stderr(&tick));
        // JSON logs: the tick report (read by the host as data) is one line whose
        // numbers and tenant are fields.
        let report = stderr(&tick)
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|l| l["target"] == "tick")
            .unwrap_or_else(|| panic!("no JSON tick line in {}", stderr(&tick)));
        assert_eq!(report["fields"]["tenant"], "acme", "{report}");
        assert_eq!(report["fields"]["outcome"], "ok", "{report}");
        assert!(report["fields"]["events_new"].is_u64(), "{report}");
    }

    let list = bridge.run(&["incidents", "list", "--tenant", "acme"]);
    let listed = stdout(&list);
    println!("{listed}");
    assert!(list.status.success(), "{}", stderr(&list));
    let snow = sim.inspect().snow_incidents();
    assert!(!snow.is_empty());
    assert!(
        listed.starts_with(&format!(
            "acme (Acme Corp) — {n} incidents, {n} not closed\n",
            n = snow.len()
        )),
        "{listed}"
    );
    for s in &snow {
        let number = s.field("number");
        let row = listed
            .lines()
            .find(|l| l.contains(number))
            .unwrap_or_else(|| panic!("{number} not listed:\n{listed}"));
        assert!(row.contains(" open "), "{row}");
        assert!(row.contains("incident-"), "the XDR id is listed: {row}");
    }

    // The first listed incident, in full.
    let key = listed
        .lines()
        .nth(2)
        .and_then(|l| l.split_whitespace().next())
        .unwrap()
        .to_string();
    let show = bridge.run(&["incidents", "show", &key]);
    let shown = stdout(&show);
    println!("{shown}");
    assert!(show.status.success(), "{}", stderr(&show));
    assert!(shown.starts_with(&format!("incident {key}\n")), "{shown}");
    assert!(shown.contains("  tenant       acme (Acme Corp)"), "{shown}");
    assert!(shown.contains("  state        open"), "{shown}");
    let snow_line = shown
        .lines()
        .find(|l| l.trim_start().starts_with("ServiceNow"))
        .unwrap();
    let record = snow
        .iter()
        .find(|s| snow_line.contains(s.field("number")))
        .unwrap_or_else(|| panic!("{snow_line}"));
    assert!(
        snow_line.ends_with(&format!(
            "{}/nav_to.do?uri=incident.do?sys_id={}",
            sim.snow_url(),
            record.field("sys_id")
        )),
        "{snow_line}"
    );
    let xdr_line = shown
        .lines()
        .find(|l| l.trim_start().starts_with("XDR"))
        .unwrap();
    assert!(
        xdr_line.contains(&format!("{}/ctia/incident/incident-", sim.xdr_api_url())),
        "{xdr_line}"
    );
    let console = shown
        .lines()
        .find(|l| l.trim_start().starts_with("console"))
        .unwrap();
    assert!(
        console.contains("https://console.eu.amp.cisco.com/computers/acme-guid-")
            && console.ends_with("/trajectory2"),
        "{console}"
    );
    let timeline: Vec<&str> = shown
        .lines()
        .skip_while(|l| *l != "timeline")
        .skip(1)
        .collect();
    for step in ["new", "xdr_created", "open"] {
        assert!(
            timeline
                .iter()
                .any(|l| l.split_whitespace().nth(1) == Some(step)),
            "timeline has {step}: {shown}"
        );
    }

    let missing = bridge.run(&["incidents", "show", "--tenant", "acme", "amp-nope-d1"]);
    assert!(!missing.status.success());
    assert!(
        stderr(&missing).contains("no incident \"amp-nope-d1\" in tenant(s) acme"),
        "{}",
        stderr(&missing)
    );
    let unknown = bridge.run(&["incidents", "list", "--tenant", "initech"]);
    assert!(!unknown.status.success());
    sim.shutdown().await;
}
