//! Shared upstream accounts, run as an MSSP operator would: one XDR organisation and
//! one ServiceNow instance added once (`mssp-bridge account add`), customers that
//! keep only their own Secure Endpoint and use those accounts, ticks against the
//! simulators (which check every credential), edits that keep what they do not
//! name, and refusals that save nothing.

mod common;
use common::component;
use common::serve::{Bridge, expected};

use std::collections::{BTreeMap, BTreeSet};
use std::process::Output;

use base64::Engine as _;
use mssp_bridge::secrets::{MasterKey, SecretString};
use mssp_bridge::tenants::TenantStore;
use mssp_sim::{ComputerSpec, OrgSpec, Sim, SimConfig};

const XDR_SECRET: &str = "mssp-xdr-secret-5d1f0c77";
const XDR_SECRET_ROTATED: &str = "mssp-xdr-secret-rotated-9a3e";
const SNOW_PASSWORD: &str = "mssp-snow-pass-e20b41aa";

fn amp_key(id: &str) -> String {
    format!("ampkey-{id}-77c1e0")
}

fn callback_key(id: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(format!("callback-{id}-31f2"))
}

/// Every secret value of the tests, to look for in outputs and the database.
fn all_secrets() -> Vec<String> {
    let mut v = vec![
        XDR_SECRET.to_string(),
        XDR_SECRET_ROTATED.to_string(),
        SNOW_PASSWORD.to_string(),
    ];
    for id in ["acme", "globex"] {
        v.push(amp_key(id));
        v.push(callback_key(id));
    }
    v
}

/// The bridge's commands, with every secret in the environment (never an argument),
/// and everything they printed.
struct Operator {
    bridge: Bridge,
    printed: std::cell::RefCell<String>,
}

impl Operator {
    fn new() -> Operator {
        let bridge = Bridge::with_settings("warn", &component(), "");
        std::fs::write(
            bridge.dir.path().join("snow.pass"),
            format!("{SNOW_PASSWORD}\n"),
        )
        .unwrap();
        Operator {
            bridge,
            printed: Default::default(),
        }
    }

    fn try_run(&self, args: &[&str]) -> Output {
        let mut c = self.bridge.command();
        c.env("XDR_SECRET", XDR_SECRET)
            .env("XDR_SECRET_ROTATED", XDR_SECRET_ROTATED)
            .env("SNOW_PASSWORD", SNOW_PASSWORD);
        for id in ["acme", "globex"] {
            c.env(format!("{}_AMP_KEY", id.to_uppercase()), amp_key(id))
                .env(
                    format!("{}_CALLBACK_KEY", id.to_uppercase()),
                    callback_key(id),
                );
        }
        let out = c.args(args).output().unwrap();
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        for s in all_secrets() {
            assert!(
                !said.contains(&s),
                "a secret was printed by {args:?}:\n{said}"
            );
        }
        self.printed.borrow_mut().push_str(&said);
        out
    }

    /// Runs a command that must succeed; its stdout.
    fn run(&self, args: &[&str]) -> String {
        let out = self.try_run(args);
        assert!(out.status.success(), "{args:?}: {}", text(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs a command that must fail and change nothing in the database; its error.
    fn refused(&self, args: &[&str]) -> String {
        let before = self.dump();
        let out = self.try_run(args);
        assert!(
            !out.status.success(),
            "{args:?} was accepted: {}",
            text(&out)
        );
        assert!(self.dump() == before, "{args:?} changed the database");
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// Every row of tenants and accounts, sealed boxes included (a re-seal draws a
    /// new nonce, so an unchanged box proves nothing was written).
    fn dump(&self) -> Vec<(String, String, Vec<u8>)> {
        let conn = rusqlite::Connection::open(self.bridge.db()).unwrap();
        let mut out = Vec::new();
        for sql in [
            "SELECT id, settings, secrets FROM tenants ORDER BY id",
            "SELECT name, kind || settings, secrets FROM accounts ORDER BY name",
        ] {
            let mut stmt = conn.prepare(sql).unwrap();
            let rows = stmt
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .unwrap();
            out.extend(rows.map(Result::unwrap));
        }
        out
    }

    fn store(&self) -> (TenantStore, MasterKey) {
        (
            TenantStore::open(&self.bridge.db()).unwrap(),
            MasterKey::parse(&self.bridge.master_key, "test").unwrap(),
        )
    }

    /// One key of a tenant as the component would get it.
    fn resolved(&self, tenant: &str, key: &str) -> Option<String> {
        let (store, k) = self.store();
        let t = store.resolve(&k, tenant).unwrap();
        t.config
            .get(key)
            .map(|v| SecretString::expose(v).to_string())
    }

    /// The database files' bytes hold no secret in clear.
    fn assert_database_sealed(&self) {
        let mut db = Vec::new();
        for entry in std::fs::read_dir(self.bridge.dir.path()).unwrap() {
            let p = entry.unwrap().path();
            if p.to_string_lossy().contains("bridge.db") {
                db.extend(std::fs::read(&p).unwrap());
            }
        }
        assert!(!db.is_empty());
        for s in all_secrets() {
            assert!(
                !db.windows(s.len()).any(|w| w == s.as_bytes()),
                "{s} is in the database in clear"
            );
        }
    }

    /// The shared XDR and ServiceNow accounts, at the simulators' (or any) URLs.
    fn add_accounts(&self, xdr_auth: &str, xdr_api: &str, snow: &str) {
        self.add_xdr_account(xdr_auth, xdr_api);
        self.run(&[
            "account",
            "add",
            "snow",
            "mssp-snow",
            "--set",
            &format!("snow_base_url={snow}"),
            "--set",
            "snow_user=mssp-bridge",
            "--set",
            "snow_assignment_group=287ebd7da9fe198100f92cc8d1d2154e",
            "--secret-file",
            "snow_password=snow.pass",
        ]);
    }

    /// The shared XDR organisation, 600 calls an hour.
    fn add_xdr_account(&self, xdr_auth: &str, xdr_api: &str) {
        let said = self.run(&[
            "account",
            "add",
            "xdr",
            "mssp-xdr",
            "--set",
            &format!("xdr_auth_url={xdr_auth}"),
            "--set",
            &format!("xdr_api_url={xdr_api}"),
            "--set",
            "xdr_client_id=mssp-xdr-client",
            "--set",
            "budget_per_hour=600",
            "--secret-env",
            "xdr_client_secret=XDR_SECRET",
        ]);
        assert_eq!(said, "XDR account mssp-xdr saved\n");
    }

    /// A customer with its own Secure Endpoint and the shared accounts.
    fn add_customer(&self, id: &str, amp_url: &str, extra: &[&str]) {
        let upper = id.to_uppercase();
        let mut args: Vec<String> = [
            "tenant",
            "add",
            id,
            "--set",
            &format!("customer_name={upper} Corp"),
            "--set",
            &format!("amp_base_url={amp_url}"),
            "--set",
            &format!("amp_client_id={id}-amp"),
            "--set",
            "xdr_account=mssp-xdr",
            "--set",
            "snow_account=mssp-snow",
            "--set",
            "tick_budget_ms=5000",
            "--secret-env",
            &format!("amp_api_key={upper}_AMP_KEY"),
            "--secret-env",
            &format!("callback_key={upper}_CALLBACK_KEY"),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        for e in extra {
            args.extend(["--set".to_string(), e.to_string()]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        assert_eq!(self.run(&args), format!("tenant {id} saved\n"));
    }
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Given two customers that each keep their own Secure Endpoint and share the MSSP's
/// one XDR organisation and one ServiceNow instance: after their ticks, every
/// detection of each is one XDR incident in the shared organisation and one
/// ServiceNow incident created by the shared user, linked, once — with the
/// instance's assignment group unless the customer set its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn customers_share_the_mssps_xdr_organisation_and_servicenow_instance() {
    let sim = Sim::start(SimConfig::default()).await.unwrap();
    let op = Operator::new();
    // Upstream: one XDR API client and one ServiceNow user for the MSSP (the
    // simulators refuse any other credential), one Secure Endpoint org per customer.
    sim.xdr().add_client("mssp-xdr-client", XDR_SECRET);
    sim.snow().add_basic_user("mssp-bridge", SNOW_PASSWORD);
    let mut wanted = BTreeSet::new();
    for (seed, id) in [(11, "acme"), (12, "globex")] {
        let client = format!("{id}-amp");
        sim.amp().add_org(OrgSpec::new(&client, amp_key(id)));
        sim.amp()
            .add_group(&client, &format!("grp-{id}"), "Protect")
            .unwrap();
        for i in 0..3 {
            sim.amp()
                .add_computer(
                    &client,
                    ComputerSpec::new(
                        format!("{id}-guid-{i}"),
                        format!("{id}-WS{i}"),
                        format!("grp-{id}"),
                    ),
                )
                .unwrap();
        }
        let events = sim.amp().generate_events(&client, seed, 12).unwrap();
        let (groups, _) = expected(&events);
        wanted.extend(groups.into_iter().map(|g| (id.to_string(), g)));
        sim.amp().push_events(&client, events).unwrap();
    }
    assert!(wanted.len() >= 4, "the events hold detections: {wanted:?}");

    op.add_accounts(sim.xdr_auth_url(), sim.xdr_api_url(), sim.snow_url());
    op.add_customer("acme", sim.amp_url(), &[]);
    op.add_customer(
        "globex",
        sim.amp_url(),
        &["snow_assignment_group=a1b2c3d4e5f60718293a4b5c6d7e8f90"],
    );

    let listed = op.run(&["account", "list"]);
    assert!(
        listed.contains("mssp-xdr\txdr\t600 calls/h\tused by acme, globex"),
        "{listed}"
    );
    assert!(
        listed.contains("mssp-snow\tsnow\tno budget\tused by acme, globex"),
        "{listed}"
    );
    let shown = op.run(&["account", "show", "mssp-xdr"]);
    assert!(
        shown.contains("xdr_client_secret = <secret, sealed>"),
        "{shown}"
    );
    assert!(shown.contains("xdr_client_id = mssp-xdr-client"), "{shown}");
    let tenant = op.run(&["tenant", "show", "acme"]);
    assert!(
        tenant.contains("xdr_account = mssp-xdr") && tenant.contains("snow_account = mssp-snow"),
        "{tenant}"
    );
    assert!(
        !tenant.contains("xdr_client_id"),
        "the tenant holds no XDR key of its own: {tenant}"
    );

    for _ in 0..2 {
        for id in ["acme", "globex"] {
            op.run(&["tick", id]);
        }
    }

    let xdr = sim.inspect().xdr_incidents();
    let snow = sim.inspect().snow_incidents();
    assert_eq!(xdr.len(), wanted.len(), "one XDR incident per detection");
    assert_eq!(
        snow.len(),
        wanted.len(),
        "one ServiceNow incident per detection"
    );
    let xdr_keys: BTreeSet<String> = xdr
        .iter()
        .map(|i| {
            assert_eq!(
                i["owner"], "mssp-xdr-client",
                "in the MSSP's organisation: {i}"
            );
            i["external_ids"][0].as_str().unwrap().to_string()
        })
        .collect();
    let mut seen = BTreeSet::new();
    for s in &snow {
        assert_eq!(s.owner, "mssp-bridge", "created by the shared user");
        let key = s.field("correlation_id").to_string();
        assert!(
            xdr_keys.contains(&key),
            "{key} is linked to its XDR incident"
        );
        assert!(seen.insert(key.clone()), "{key} twice in ServiceNow");
        let group = s.field("assignment_group");
        if s.field("short_description").starts_with("[GLOBEX Corp]") {
            assert_eq!(
                group, "a1b2c3d4e5f60718293a4b5c6d7e8f90",
                "globex's own group wins"
            );
        } else {
            assert_eq!(
                group, "287ebd7da9fe198100f92cc8d1d2154e",
                "the instance's default"
            );
        }
    }
    for id in ["acme", "globex"] {
        let n = wanted.iter().filter(|(t, _)| t == id).count();
        let title = format!("[{} Corp]", id.to_uppercase());
        let got = snow
            .iter()
            .filter(|s| s.field("short_description").starts_with(&title))
            .count();
        assert_eq!(got, n, "{id}'s incidents");
    }

    // doctor checks the shared accounts with the customer and says which it uses.
    let report = op.run(&["doctor", "--tenant", "acme"]);
    assert!(
        report.contains(
            "accounts: XDR account mssp-xdr (600 calls/h), ServiceNow account mssp-snow (no budget)"
        ),
        "{report}"
    );
    assert!(
        report.contains("token issued to client mssp-xdr-client"),
        "{report}"
    );

    // The MSSP rotates its XDR secret upstream: doctor sends the operator to the
    // account, not to each customer; one edit of the account, every customer follows.
    sim.xdr().add_client("mssp-xdr-client", XDR_SECRET_ROTATED);
    let out = op.try_run(&["doctor", "--tenant", "globex"]);
    let report = text(&out);
    assert!(!out.status.success(), "{report}");
    let mut lines = report.lines();
    lines.find(|l| l.contains("token refused for client mssp-xdr-client"));
    let fix = lines.next().unwrap_or_default();
    assert!(
        fix.contains("fix: ") && fix.contains("mssp-bridge account set mssp-xdr"),
        "{report}"
    );
    op.run(&[
        "account",
        "set",
        "mssp-xdr",
        "--secret-env",
        "xdr_client_secret=XDR_SECRET_ROTATED",
    ]);
    for id in ["acme", "globex"] {
        assert_eq!(
            op.resolved(id, "xdr_client_secret").as_deref(),
            Some(XDR_SECRET_ROTATED)
        );
        assert_eq!(
            op.resolved(id, "amp_api_key"),
            Some(amp_key(id)),
            "its own secret kept"
        );
    }
    let report = op.run(&["doctor"]);
    assert!(report.contains(" checks, 0 failed"), "{report}");
    op.assert_database_sealed();
    sim.shutdown().await;
}

/// `tenant set|unset` and `account set|unset` change only what they name (every
/// other key and sealed secret stays); what the component (or the account rules)
/// refuses is an error naming the key, and the database is left as it was.
#[test]
fn edits_keep_what_they_do_not_name_and_refusals_save_nothing() {
    let op = Operator::new();
    op.add_accounts(
        "https://visibility.amp.cisco.com",
        "https://private.intel.amp.cisco.com",
        "https://mssp.service-now.com",
    );
    op.add_customer("acme", "https://api.eu.amp.cisco.com", &[]);

    op.run(&[
        "tenant",
        "set",
        "acme",
        "snow_tag=[SOC]",
        "lookback_seconds=7200",
    ]);
    op.run(&["tenant", "unset", "acme", "lookback_seconds"]);
    op.run(&["account", "set", "mssp-xdr", "xdr_client_id=renamed-client"]);
    op.run(&["account", "unset", "mssp-xdr", "budget_per_hour"]);
    assert_eq!(op.resolved("acme", "snow_tag").as_deref(), Some("[SOC]"));
    assert_eq!(op.resolved("acme", "lookback_seconds"), None);
    assert_eq!(
        op.resolved("acme", "xdr_client_id").as_deref(),
        Some("renamed-client")
    );
    assert_eq!(
        op.resolved("acme", "xdr_client_secret").as_deref(),
        Some(XDR_SECRET)
    );
    assert_eq!(
        op.resolved("acme", "snow_password").as_deref(),
        Some(SNOW_PASSWORD)
    );
    assert_eq!(op.resolved("acme", "amp_api_key"), Some(amp_key("acme")));
    assert_eq!(
        op.resolved("acme", "callback_key"),
        Some(callback_key("acme"))
    );
    let (store, k) = op.store();
    assert_eq!(
        store.resolve(&k, "acme").unwrap().accounts[0].budget_per_hour,
        None
    );

    // Refused by the component, in its own words (`true`), or by the account rules
    // (`false`), by name; nothing saved.
    for (args, (by_component, named)) in [
        (
            &["tenant", "set", "acme", "containment=move"][..],
            (true, "triage_group_guid"),
        ),
        (
            &["tenant", "set", "acme", "late_window_seconds=10"],
            (true, "late_window_seconds"),
        ),
        (
            &["tenant", "set", "acme", "severities=Urgent"],
            (true, "severities"),
        ),
        (
            &[
                "tenant",
                "set",
                "acme",
                "previous_callback_key_until=2026-12-31T00:00:00Z",
            ],
            (true, "previous_callback_key"),
        ),
        (
            &["tenant", "unset", "acme", "callback_key"],
            (true, "callback_key"),
        ),
        (
            &["tenant", "unset", "acme", "snow_account"],
            (true, "snow_base_url"),
        ),
        (
            &["account", "unset", "mssp-snow", "snow_password"],
            (true, "snow_password"),
        ),
        (
            &[
                "account",
                "add",
                "snow",
                "other",
                "--set",
                "snow_base_url=https://x.service-now.com",
            ],
            (true, "snow_user"),
        ),
        (
            &["tenant", "set", "acme", "xdr_client_id=own-client"][..],
            (false, "sets xdr_client_id itself"),
        ),
        (
            &["tenant", "set", "acme", "xdr_account=nope"],
            (false, "no account \"nope\""),
        ),
        (
            &["tenant", "set", "acme", "xdr_account=mssp-snow"],
            (false, "names the ServiceNow account"),
        ),
        (
            &["tenant", "set", "acme", "amp_api_key=inline-secret"],
            (false, "--secret-file amp_api_key=PATH"),
        ),
        (
            &["tenant", "set", "acme", "late_window_secs=7200"],
            (false, "not one the bridge reads"),
        ),
        (
            &["account", "set", "mssp-xdr", "snow_user=x"],
            (false, "not a key of XDR accounts"),
        ),
        (
            &[
                "account",
                "set",
                "mssp-xdr",
                "xdr_api_url=ftp://intel.example",
            ],
            (
                false,
                "xdr_api_url: \"ftp://intel.example\" needs an http:// or https:// scheme",
            ),
        ),
        (
            &["account", "set", "mssp-xdr", "budget_per_hour=0"],
            (false, "budget_per_hour"),
        ),
        (
            &[
                "account",
                "add",
                "xdr",
                "mssp-xdr",
                "--set",
                "xdr_client_id=x",
            ],
            (false, "already exists"),
        ),
        (
            &["account", "remove", "mssp-xdr"],
            (false, "used by tenant(s) acme"),
        ),
        (&["tenant", "set", "acme"], (false, "nothing to change")),
    ] {
        let e = op.refused(args);
        assert!(e.contains(named), "{args:?}: {e}");
        let words = "not saved: the bridge component refuses the configuration";
        assert_eq!(e.contains(words), by_component, "{args:?}: {e}");
    }
    // Back to its own XDR keys in one edit; then the account can go.
    op.refused(&["tenant", "unset", "acme", "xdr_account"]);
    op.run(&[
        "tenant",
        "set",
        "acme",
        "--unset",
        "xdr_account",
        "xdr_auth_url=https://visibility.eu.amp.cisco.com",
        "xdr_api_url=https://private.intel.eu.amp.cisco.com",
        "xdr_client_id=acme-own-client",
        "--secret-env",
        "xdr_client_secret=XDR_SECRET_ROTATED",
    ]);
    assert_eq!(
        op.resolved("acme", "xdr_client_id").as_deref(),
        Some("acme-own-client")
    );
    assert_eq!(
        op.resolved("acme", "snow_password").as_deref(),
        Some(SNOW_PASSWORD)
    );
    assert_eq!(
        op.run(&["account", "remove", "mssp-xdr"]),
        "account mssp-xdr removed\n"
    );
    // And onto an account again: its own keys must go in the same edit.
    op.add_xdr_account(
        "https://visibility.amp.cisco.com",
        "https://private.intel.amp.cisco.com",
    );
    let e = op.refused(&["tenant", "set", "acme", "xdr_account=mssp-xdr"]);
    assert!(
        e.contains("sets xdr_api_url, xdr_auth_url, xdr_client_id, xdr_client_secret itself"),
        "{e}"
    );
    op.run(&[
        "tenant",
        "set",
        "acme",
        "xdr_account=mssp-xdr",
        "--unset",
        "xdr_auth_url",
        "--unset",
        "xdr_api_url",
        "--unset",
        "xdr_client_id",
        "--unset",
        "xdr_client_secret",
    ]);
    assert_eq!(
        op.resolved("acme", "xdr_client_id").as_deref(),
        Some("mssp-xdr-client")
    );
    let (store, k) = op.store();
    let used: BTreeMap<&str, String> = store
        .resolve(&k, "acme")
        .unwrap()
        .accounts
        .into_iter()
        .map(|a| (a.service, a.name))
        .collect();
    assert_eq!(
        used,
        BTreeMap::from([
            ("snow", "mssp-snow".to_string()),
            ("xdr", "mssp-xdr".to_string())
        ])
    );
    op.assert_database_sealed();
    assert!(!op.printed.borrow().is_empty());
}
