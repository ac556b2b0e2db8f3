//! Issue 15, part 4: a second, independent host. The unchanged `mssp_guest.wasm`,
//! transpiled by jco and run under Node by `hosts/node/tick.mjs` (key-value and
//! config written in JS, the standard WASI interfaces from preview2-shim), does real
//! ticks against the simulators: events → XDR and ServiceNow incidents.
//!
//! Needs `node` and the host's npm packages (`npm ci --prefix hosts/node`, which
//! `.ci/run` does). Without them the test fails in CI and says "skipped" elsewhere.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use mssp_e2e::{CustomerSpec, THREAT_DETECTED, World, component, group_of_event, workspace_root};

/// Longest a transpile or a tick may take before the test gives up on it.
const STEP_LIMIT: Duration = Duration::from_secs(120);

/// `hosts/node` and its jco, or why the Node host cannot run here.
fn node_host() -> Result<(PathBuf, PathBuf), String> {
    let dir = workspace_root().join("hosts").join("node");
    match Command::new("node").arg("--version").output() {
        Ok(out) if out.status.success() => {}
        Ok(out) => return Err(format!("`node --version` failed with {}", out.status)),
        Err(e) => return Err(format!("node is not installed ({e})")),
    }
    let jco = dir.join("node_modules").join(".bin").join("jco");
    if !jco.exists() {
        return Err(format!(
            "{} is missing: run `npm ci --prefix hosts/node`",
            jco.display()
        ));
    }
    Ok((dir, jco))
}

/// Runs `cmd` to completion (at most [`STEP_LIMIT`]) and panics with its output
/// unless it succeeds.
fn run(what: &str, cmd: &mut Command) -> Output {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{what}: cannot start {cmd:?}: {e}"));
    let started = Instant::now();
    while child.try_wait().expect("wait").is_none() {
        if started.elapsed() > STEP_LIMIT {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("output");
    assert!(
        out.status.success(),
        "{what} failed ({}, after {:?}):\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        started.elapsed(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The Node host, ready to tick one tenant: the component transpiled into `work`,
/// the tenant's config as JSON, its key-value state file.
struct NodeTenant {
    dir: PathBuf,
    work: tempfile::TempDir,
}

impl NodeTenant {
    /// Transpiles the bridge component with jco and writes the tenant's config.
    fn new(dir: PathBuf, jco: &Path, config: &[(String, String)]) -> Self {
        let work = tempfile::tempdir().expect("temp dir");
        run(
            "jco transpile",
            Command::new(jco)
                .arg("transpile")
                .arg(component("mssp_guest"))
                .args(["--instantiation", "async", "--no-typescript", "--quiet"])
                .arg("-o")
                .arg(work.path().join("jco")),
        );
        let config: serde_json::Map<String, serde_json::Value> = config
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
            .collect();
        std::fs::write(
            work.path().join("config.json"),
            serde_json::Value::Object(config).to_string(),
        )
        .expect("config written");
        Self { dir, work }
    }

    fn kv_file(&self) -> PathBuf {
        self.work.path().join("kv.json")
    }

    /// One `node tick.mjs` run: the cron export, called once. Returns its stderr.
    async fn tick(&self) -> String {
        let mut cmd = Command::new("node");
        cmd.arg(self.dir.join("tick.mjs"))
            .arg("--component")
            .arg(self.work.path().join("jco"))
            .arg("--config")
            .arg(self.work.path().join("config.json"))
            .arg("--kv")
            .arg(self.kv_file());
        let out = tokio::task::spawn_blocking(move || run("node tick.mjs", &mut cmd))
            .await
            .expect("tick task");
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// Keys of the bucket "default" in the host's key-value file.
    fn kv_keys(&self) -> Vec<String> {
        let text = std::fs::read_to_string(self.kv_file()).expect("the key-value file exists");
        let doc: serde_json::Value = serde_json::from_str(&text).expect("JSON");
        doc["buckets"]["default"]
            .as_object()
            .map(|b| b.keys().cloned().collect())
            .unwrap_or_default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_two_detections_one_tick_by_the_node_host_opens_one_linked_incident_pair_each() {
    let (dir, jco) = match node_host() {
        Ok(found) => found,
        Err(why) if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("the Node host cannot run in CI: {why}")
        }
        Err(why) => {
            println!("skipped: {why}");
            return;
        }
    };
    let w = World::start().await.unwrap();
    // The Node host serves no incoming HTTP, so ServiceNow gets no callback rule.
    let (acme, config) = w.customer_accounts("acme", CustomerSpec::default().without_callback());
    let node = NodeTenant::new(dir, &jco, &config);

    // Two high-priority detections upstream, on two of the customer's computers.
    let mut events = w.detection(&acme, &acme.computers[0], &[THREAT_DETECTED]);
    events.extend(w.detection(&acme, &acme.computers[1], &[THREAT_DETECTED]));
    let detections: BTreeSet<String> = events.iter().map(group_of_event).collect();
    assert_eq!(detections.len(), 2);
    w.sim
        .amp()
        .push_events(&acme.amp_client_id, events)
        .expect("push");

    let log = node.tick().await;
    assert!(log.contains("node host: tick done"), "{log}");

    // One XDR incident and one ServiceNow incident per detection.
    let (xdr_groups, snow_groups) = w.groups_upstream(&acme);
    assert_eq!(xdr_groups, detections, "XDR incidents");
    assert_eq!(snow_groups, detections, "ServiceNow incidents");

    // Linked: each ServiceNow incident carries its XDR incident's key (correlation id)
    // and names the XDR incident in its description.
    let xdr = w.xdr_incidents_of(&acme);
    for ticket in w.snow_incidents_of(&acme) {
        let key = ticket.field("correlation_id");
        let incident = xdr
            .iter()
            .find(|i| i["external_ids"][0].as_str() == Some(key))
            .unwrap_or_else(|| panic!("no XDR incident carries {key}"));
        let id = incident["id"].as_str().expect("an XDR incident id");
        let short = id.rsplit('/').next().unwrap_or(id);
        assert!(
            ticket.field("description").contains(short),
            "the ticket for {key} links XDR incident {short}"
        );
    }

    // The bridge kept its records in the JS key-value store, and a second run of the
    // Node host over the same file opens nothing new.
    let keys = node.kv_keys();
    for i in &xdr {
        let key = i["external_ids"][0].as_str().unwrap_or_default();
        assert!(
            keys.contains(&mssp_guest::store::incident_key(key)),
            "the record of {key} in {keys:?}"
        );
    }
    let before = w.upstream_state();
    node.tick().await;
    let after = w.upstream_state();
    assert_eq!(after.xdr_incidents, before.xdr_incidents, "XDR unchanged");
    assert_eq!(
        after.snow_incidents, before.snow_incidents,
        "ServiceNow unchanged"
    );
}
