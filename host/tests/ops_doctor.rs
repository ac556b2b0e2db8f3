//! `mssp-bridge doctor`, run as an operator would, against the in-process
//! simulators: a healthy customer passes every check; wrong keys, an unknown
//! triage group, unknown event types and an unreachable ServiceNow each fail
//! with their reason and fix — and no secret is ever printed.

mod common;
use common::component;
use common::serve::Bridge;

use std::path::Path;
use std::process::Output;

use mssp_sim::{OrgSpec, Sim, SimConfig};

impl Bridge {
    /// `tenant add` with plain settings and secrets passed by environment.
    fn add_tenant(&self, id: &str, set: &[(&str, String)], secrets: &[(&str, String)]) {
        let out = self.try_add_tenant(id, set, secrets, &[]);
        assert!(out.status.success(), "{}", text(&out));
    }

    /// `tenant add` with extra flags; the command's output, whatever it is.
    fn try_add_tenant(
        &self,
        id: &str,
        set: &[(&str, String)],
        secrets: &[(&str, String)],
        flags: &[&str],
    ) -> Output {
        let mut c = self.command();
        c.args(["tenant", "add", id]).args(flags);
        for (k, v) in set {
            c.args(["--set", &format!("{k}={v}")]);
        }
        for (i, (k, v)) in secrets.iter().enumerate() {
            let var = format!("DOCTOR_SECRET_{i}");
            c.env(&var, v).args(["--secret-env", &format!("{k}={var}")]);
        }
        c.output().unwrap()
    }

    fn doctor(&self, args: &[&str]) -> Output {
        let mut c = self.command();
        c.arg("doctor").args(args);
        c.output().unwrap()
    }
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The line of `report` that contains `needle`.
fn line<'a>(report: &'a str, needle: &str) -> &'a str {
    report
        .lines()
        .find(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no line with {needle:?} in:\n{report}"))
}

/// The fix printed under the line that contains `needle`.
fn fix_of<'a>(report: &'a str, needle: &str) -> &'a str {
    let mut lines = report.lines();
    lines
        .by_ref()
        .find(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no line with {needle:?} in:\n{report}"));
    lines
        .next()
        .filter(|l| l.trim_start().starts_with("fix:"))
        .unwrap_or_else(|| panic!("no fix under {needle:?} in:\n{report}"))
}

/// A customer's upstream accounts in the simulators.
struct Account {
    amp_client: String,
    amp_key: String,
    xdr_client: String,
    xdr_secret: String,
    snow_user: String,
    snow_password: String,
    triage: String,
}

fn account(sim: &Sim, id: &str) -> Account {
    let a = Account {
        amp_client: format!("{id}-amp"),
        amp_key: format!("ampkey-{id}-5f1e9a"),
        xdr_client: format!("{id}-xdr"),
        xdr_secret: format!("xdrsecret-{id}-0b7c2d"),
        snow_user: format!("{id}-snow"),
        snow_password: format!("snowpass-{id}-e4a1c9"),
        triage: format!("grp-{id}-triage"),
    };
    sim.amp().add_org(OrgSpec::new(&a.amp_client, &a.amp_key));
    sim.amp()
        .add_group(&a.amp_client, &format!("grp-{id}-protect"), "Protect")
        .unwrap();
    sim.amp()
        .add_group(&a.amp_client, &a.triage, "Triage")
        .unwrap();
    sim.xdr().add_client(&a.xdr_client, &a.xdr_secret);
    sim.snow().add_basic_user(&a.snow_user, &a.snow_password);
    a
}

fn settings(sim: &Sim, name: &str, a: &Account) -> Vec<(&'static str, String)> {
    vec![
        ("customer_name", name.to_string()),
        ("amp_base_url", sim.amp_url().to_string()),
        ("amp_client_id", a.amp_client.clone()),
        ("xdr_auth_url", sim.xdr_auth_url().to_string()),
        ("xdr_api_url", sim.xdr_api_url().to_string()),
        ("xdr_client_id", a.xdr_client.clone()),
        ("snow_base_url", sim.snow_url().to_string()),
        ("snow_user", a.snow_user.clone()),
        ("containment", "move".to_string()),
        ("triage_group_guid", a.triage.clone()),
        ("event_types", "1090519054,553648143".to_string()),
        (
            "snow_caller_id",
            "6816f79cc0a8016401c5a33be04be441".to_string(),
        ),
    ]
}

fn secrets(a: &Account) -> Vec<(&'static str, String)> {
    vec![
        ("amp_api_key", a.amp_key.clone()),
        ("xdr_client_secret", a.xdr_secret.clone()),
        ("snow_password", a.snow_password.clone()),
        ("callback_key", "Y2FsbGJhY2sta2V5LWRvY3Rvcg==".to_string()),
    ]
}

fn assert_no_secret(report: &str, secrets: &[(&str, String)]) {
    for (name, value) in secrets {
        assert!(
            !report.contains(value.as_str()),
            "{name} was printed:\n{report}"
        );
    }
}

fn replace(list: &mut Vec<(&'static str, String)>, key: &'static str, value: String) {
    list.retain(|(k, _)| *k != key);
    list.push((key, value));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_customer_passes_every_check() {
    let sim = Sim::start(SimConfig::default()).await.unwrap();
    let bridge = Bridge::with_settings("warn", &component(), "");
    let a = account(&sim, "acme");
    bridge.add_tenant("acme", &settings(&sim, "Acme Corp", &a), &secrets(&a));

    let out = bridge.doctor(&[]);
    let report = text(&out);
    println!("{report}");
    assert!(out.status.success(), "{report}");
    let (store, tenants) = report.split_once('\n').unwrap();
    assert_eq!(
        store,
        format!(
            "key-value store: sqlite {} (reachable)",
            bridge.db().display()
        )
    );
    assert!(tenants.starts_with("acme (Acme Corp)"), "{report}");
    assert!(line(&report, "credentials accepted").contains("✓ Secure Endpoint"));
    assert!(line(&report, "event_types: all 2 ids exist").contains('✓'));
    assert!(line(&report, "triage group grp-acme-triage exists (Triage)").contains('✓'));
    assert!(line(&report, "token issued to client acme-xdr").contains("✓ XDR"));
    assert!(line(&report, "incident API readable").contains('✓'));
    assert!(line(&report, "incident table readable by user acme-snow").contains("✓ ServiceNow"));
    // The simulated instance serves only the incident table: the caller
    // reference degrades to "not checked", with the instance's reason.
    let caller = line(
        &report,
        "caller 6816f79cc0a8016401c5a33be04be441 not checked",
    );
    assert!(caller.contains("- ServiceNow"), "{caller}");
    assert!(caller.contains("Invalid table sys_user"), "{caller}");
    assert!(
        line(&report, "assignment group not checked").contains("snow_assignment_group is not set")
    );
    assert!(line(&report, "the bridge component accepts the configuration").contains("✓ bridge"));
    // Without read_token nor open_reads, reads need the admin token: a pass.
    assert!(line(&report, "read routes need the admin token").contains("✓ reads"));
    assert!(
        report.contains("doctor: 11 checks, 0 failed, 2 not checked"),
        "{report}"
    );
    assert_no_secret(&report, &secrets(&a));

    // Without the component, its verdict is "not checked", with the fix.
    bridge.write_settings(Path::new("/nonexistent/mssp_guest.wasm"), "");
    let out = bridge.doctor(&[]);
    let report = text(&out);
    assert!(out.status.success(), "{report}");
    let verdict = line(&report, "configuration not checked by the bridge component");
    assert!(verdict.contains("- bridge"), "{verdict}");
    assert!(
        verdict.contains("/nonexistent/mssp_guest.wasm"),
        "{verdict}"
    );
    assert!(verdict.contains("cargo xtask build"), "{verdict}");
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_misconfiguration_is_named_with_its_fix() {
    let sim = Sim::start(SimConfig::default()).await.unwrap();
    let bridge = Bridge::with_settings("warn", &component(), "");

    // globex: wrong Secure Endpoint key, wrong XDR secret, ServiceNow down.
    let g = account(&sim, "globex");
    let mut g_secrets = secrets(&g);
    replace(
        &mut g_secrets,
        "amp_api_key",
        "ampkey-globex-OLD-rotated".into(),
    );
    replace(
        &mut g_secrets,
        "xdr_client_secret",
        "xdrsecret-globex-typo".into(),
    );
    let mut g_settings = settings(&sim, "Globex", &g);
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    replace(&mut g_settings, "snow_base_url", dead.clone());
    bridge.add_tenant("globex", &g_settings, &g_secrets);

    // initech: right keys, but a triage group and an event type that do not exist.
    let i = account(&sim, "initech");
    let mut i_settings = settings(&sim, "Initech", &i);
    replace(
        &mut i_settings,
        "triage_group_guid",
        "grp-deleted-last-year".into(),
    );
    replace(&mut i_settings, "event_types", "1090519054,999999".into());
    replace(&mut i_settings, "tick_budget_ms", "soon".into());
    // `tenant add` refuses that configuration unless told to save it unchecked.
    let refused = bridge.try_add_tenant("initech", &i_settings, &secrets(&i), &[]);
    assert!(!refused.status.success(), "{}", text(&refused));
    let saved = bridge.try_add_tenant("initech", &i_settings, &secrets(&i), &["--unchecked"]);
    assert!(saved.status.success(), "{}", text(&saved));

    let out = bridge.doctor(&[]);
    let report = text(&out);
    println!("{report}");
    assert!(
        !out.status.success(),
        "a failed check fails the command:\n{report}"
    );

    let amp = line(&report, "credentials refused for client id globex-amp");
    assert!(amp.contains("✗ Secure Endpoint"), "{amp}");
    assert!(
        amp.contains("HTTP 401 Unknown API key or Client ID"),
        "{amp}"
    );
    assert!(fix_of(&report, "globex-amp").contains("check amp_client_id and amp_api_key"));
    let xdr = line(&report, "token refused for client globex-xdr");
    assert!(xdr.contains("✗ XDR"), "{xdr}");
    assert!(fix_of(&report, "token refused").contains("xdr_client_secret"));
    let snow = line(&report, "unreachable: cannot connect to 127.0.0.1");
    assert!(snow.contains("✗ ServiceNow"), "{snow}");
    assert!(fix_of(&report, "unreachable: cannot connect").contains(&dead));

    let group = line(
        &report,
        "triage group grp-deleted-last-year not found in /v1/groups",
    );
    assert!(group.contains("✗ Secure Endpoint"), "{group}");
    let fix = fix_of(&report, "grp-deleted-last-year not found");
    assert!(fix.contains("Triage = grp-initech-triage"), "{fix}");
    assert!(
        fix.contains("mssp-bridge tenant set initech KEY=VALUE"),
        "{fix}"
    );
    assert!(line(&report, "event_types: 999999 not in /v1/event_types").contains('✗'));
    assert!(line(&report, "token issued to client initech-xdr").contains('✓'));

    let refused = line(&report, "the bridge component refuses the configuration");
    assert!(refused.contains("✗ bridge"), "{refused}");
    assert!(refused.contains("tick_budget_ms"), "{refused}");
    assert!(report.contains("6 failed"), "{report}");
    assert_no_secret(&report, &g_secrets);
    assert_no_secret(&report, &secrets(&i));

    // One tenant at a time.
    let out = bridge.doctor(&["--tenant", "initech"]);
    let report = text(&out);
    assert!(!out.status.success());
    assert!(!report.contains("globex"), "{report}");
    assert!(report.contains("3 failed"), "{report}");
    sim.shutdown().await;
}

#[test]
fn no_tenant_is_an_error_that_names_the_fix() {
    let bridge = Bridge::with_settings("warn", &component(), "");
    let out = bridge.doctor(&[]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("mssp-bridge tenant add"),
        "{}",
        text(&out)
    );
}

/// A Redis store that does not answer stops `doctor` (and every command) at once
/// with an error naming the store and the fix; its password never shows.
#[test]
fn an_unreachable_redis_store_is_named_with_its_fix_and_no_password() {
    let bridge = Bridge::with_settings(
        "warn",
        &component(),
        "[store]\nkind = \"redis\"\nurl = \"redis://bridge:hunter2-pw@127.0.0.1:1/0\"\n",
    );
    let out = bridge.doctor(&[]);
    let report = text(&out);
    assert!(!out.status.success(), "{report}");
    assert!(
        report.contains(
            "key-value store redis redis://bridge:***@127.0.0.1:1/0: check [store] url and that the server runs"
        ),
        "{report}"
    );
    assert!(!report.contains("hunter2-pw"), "{report}");
}

/// Bad input gets a clear error when it is given: `tenant add` runs the bridge
/// component's own configuration check and saves nothing it refuses — a bad value of
/// a tuning key (`late_window_seconds`, `rate_limit_cooldown_seconds`, issue 14), a
/// containment without its triage group, an unknown containment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_add_refuses_what_the_component_refuses_and_saves_nothing() {
    let sim = Sim::start(SimConfig::default()).await.unwrap();
    let bridge = Bridge::with_settings("warn", &component(), "");
    let a = account(&sim, "acme");
    let good = settings(&sim, "Acme Corp", &a);
    for (key, value, named) in [
        ("late_window_seconds", "abc", "late_window_seconds"),
        ("late_window_seconds", "999999", "late_window_seconds"),
        (
            "rate_limit_cooldown_seconds",
            "0",
            "rate_limit_cooldown_seconds",
        ),
        ("containment", "bogus", "containment"),
    ] {
        let mut set = good.clone();
        set.retain(|(k, _)| *k != key);
        set.push((key, value.to_string()));
        let out = bridge.try_add_tenant("acme", &set, &secrets(&a), &[]);
        let said = text(&out);
        assert!(!out.status.success(), "{key}={value} accepted: {said}");
        assert!(
            said.contains("not saved") && said.contains(named),
            "{key}={value}: {said}"
        );
        assert_no_secret(&said, &secrets(&a));
    }
    let mut set = good.clone();
    set.retain(|(k, _)| *k != "triage_group_guid");
    set.push(("containment", "move".into()));
    let out = bridge.try_add_tenant("acme", &set, &secrets(&a), &[]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("triage_group_guid"), "{}", text(&out));
    // Nothing was saved by the refused attempts; a good configuration is.
    let listed = bridge.command().args(["tenant", "list"]).output().unwrap();
    assert!(text(&listed).contains("no tenants"), "{}", text(&listed));
    bridge.add_tenant("acme", &good, &secrets(&a));
}
