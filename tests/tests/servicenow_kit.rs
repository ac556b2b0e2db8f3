//! The ServiceNow kit (servicenow/business_rule.js), run under Node.js with
//! small stand-ins for the platform objects it uses (`current`, `previous`,
//! `gs`, `GlideCertificateEncryption`, `sn_ws.RESTMessageV2`). The request it
//! builds must verify with the contract's signature scheme and close the
//! incident when sent to a real host.
//!
//! Without `node` on the machine the tests print "skipped: node not
//! installed" and return.

use std::io::Write as _;
use std::process::{Command, Stdio};

use mssp_e2e::{CustomerSpec, World, unix_now, workspace_root};
use serde_json::{Value, json};

/// Stand-ins for the ServiceNow server-side API, recording what the rule does.
const HARNESS: &str = r#"
'use strict';
const vm = require('vm');
const fs = require('fs');
const crypto = require('crypto');
const input = JSON.parse(fs.readFileSync(0, 'utf8'));
const requests = [];
const logs = [];
function record(fields) {
  return {
    getValue: (name) => (Object.prototype.hasOwnProperty.call(fields, name) ? fields[name] : null),
    getUniqueValue: () => fields.sys_id,
  };
}
function RESTMessageV2() {
  const req = { headers: {}, sent: null };
  requests.push(req);
  this.setEndpoint = (u) => { req.endpoint = u; };
  this.setHttpMethod = (m) => { req.method = m; };
  this.setRequestHeader = (k, v) => { req.headers[k] = v; };
  this.setRequestBody = (b) => { req.body = b; };
  this.setHttpTimeout = (t) => { req.timeout = t; };
  this.executeAsync = () => { req.sent = 'async'; return {}; };
  this.execute = () => {
    req.sent = 'sync';
    const status = input.response_status || 200;
    return {
      getStatusCode: () => status,
      getErrorMessage: () => (status >= 400 ? 'Method failed' : ''),
      getBody: () => '{"error":"refused"}',
    };
  };
}
const sandbox = {
  current: record(input.current),
  previous: input.previous ? record(input.previous) : null,
  gs: {
    getProperty: (name, dflt) =>
      Object.prototype.hasOwnProperty.call(input.properties, name)
        ? input.properties[name]
        : (dflt === undefined ? null : dflt),
    error: (m) => logs.push(['error', String(m)]),
    warn: (m) => logs.push(['warn', String(m)]),
    info: (m) => logs.push(['info', String(m)]),
  },
  GlideCertificateEncryption: function () {
    this.generateMac = (keyB64, algorithm, data) => {
      if (algorithm !== 'HmacSHA256') throw new Error('unsupported ' + algorithm);
      return crypto.createHmac('sha256', Buffer.from(keyB64, 'base64'))
        .update(data, 'utf8').digest('base64');
    };
  },
  sn_ws: { RESTMessageV2 },
};
vm.createContext(sandbox);
vm.runInContext(fs.readFileSync(input.script, 'utf8'), sandbox, { filename: 'business_rule.js' });
process.stdout.write(JSON.stringify({ requests, logs }));
"#;

fn node_installed() -> bool {
    let found = Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        println!("skipped: node not installed");
    }
    found
}

/// Runs the business rule once; returns `{requests: [...], logs: [...]}`.
fn run_rule(mut input: Value) -> Value {
    let script = workspace_root().join("servicenow").join("business_rule.js");
    input["script"] = json!(script.to_string_lossy());
    let mut child = Command::new("node")
        .arg("-e")
        .arg(HARNESS)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("node starts");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the rule threw: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("harness output is JSON")
}

const KEY: &str = "c2VydmljZW5vdy1jYWxsYmFjay1rZXktb2YtYWNtZQ==";

fn closed_incident() -> Value {
    json!({
        "sys_id": "9d385017c611228701d22104cc95c371",
        "number": "INC0010042",
        "state": "7",
        "correlation_id": "amp-1a2b3c4d-d6180352115244793858",
        "correlation_display": "mssp-bridge",
        "close_code": "Solved (Permanently)",
        "sys_created_by": "svc_bridge_acme",
    })
}

fn single_tenant_properties() -> Value {
    json!({
        "x_mssp.bridge_callback_url": "https://bridge.example/v1/servicenow/events",
        "x_mssp.bridge_callback_key": KEY,
    })
}

fn with_state(mut record: Value, state: &str) -> Value {
    record["state"] = json!(state);
    record
}

#[test]
fn the_business_rule_sends_one_callback_signed_as_the_contract_says() {
    if !node_installed() {
        return;
    }
    let before = unix_now();
    let out = run_rule(json!({
        "current": closed_incident(),
        "previous": with_state(closed_incident(), "2"),
        "properties": single_tenant_properties(),
    }));
    let requests = out["requests"].as_array().unwrap();
    assert_eq!(requests.len(), 1, "{out}");
    let req = &requests[0];
    assert_eq!(
        req["endpoint"],
        "https://bridge.example/v1/servicenow/events"
    );
    assert_eq!(req["method"], "post");
    assert_eq!(
        req["sent"], "async",
        "an after rule never waits for the bridge"
    );
    assert_eq!(req["headers"]["Content-Type"], "application/json");

    let body = req["body"].as_str().unwrap();
    let ts: i64 = req["headers"]["X-Bridge-Timestamp"]
        .as_str()
        .unwrap()
        .parse()
        .expect("timestamp in Unix seconds");
    assert!((before - 5..=unix_now() + 5).contains(&ts), "{ts}");
    let expected = mssp_sim::snow::sign(KEY, ts, body.as_bytes()).unwrap();
    assert_eq!(
        req["headers"]["X-Bridge-Signature"].as_str(),
        Some(expected.as_str()),
        "v1=base64(HMAC-SHA256(base64-decode(key), \"<ts>.<body>\"))"
    );
    let sent: Value = serde_json::from_str(body).unwrap();
    assert_eq!(
        sent,
        json!({
            "sys_id": "9d385017c611228701d22104cc95c371",
            "number": "INC0010042",
            "state": "7",
            "correlation_id": "amp-1a2b3c4d-d6180352115244793858",
            "close_code": "Solved (Permanently)",
        }),
        "exactly the five fields, state as a string"
    );
    assert!(out["logs"].as_array().unwrap().is_empty(), "{out}");
}

#[test]
fn the_business_rule_stays_quiet_for_other_incidents_and_changes_that_do_not_close() {
    if !node_installed() {
        return;
    }
    let props = single_tenant_properties();
    let mut not_ours = closed_incident();
    not_ours["correlation_display"] = json!("some-other-integration");
    let cases = [
        (
            "an incident the bridge did not open",
            not_ours,
            json!({"state": "2"}),
        ),
        (
            "a change to In Progress",
            with_state(closed_incident(), "2"),
            json!({"state": "1"}),
        ),
        (
            "an update of an already closed incident",
            closed_incident(),
            json!({"state": "7"}),
        ),
    ];
    for (what, current, previous) in cases {
        let previous = {
            let mut p = current.clone();
            p["state"] = previous["state"].clone();
            p
        };
        let out = run_rule(json!({"current": current, "previous": previous, "properties": props}));
        assert_eq!(out["requests"], json!([]), "{what}: {out}");
        assert_eq!(out["logs"], json!([]), "{what}: {out}");
    }

    // Misconfigured: nothing is sent and the reason is logged.
    let out = run_rule(json!({
        "current": closed_incident(),
        "previous": with_state(closed_incident(), "2"),
        "properties": {"x_mssp.bridge_callback_key": KEY},
    }));
    assert_eq!(out["requests"], json!([]));
    assert!(
        out["logs"][0][1]
            .as_str()
            .is_some_and(|m| m.contains("x_mssp.bridge_callback_url is not set")),
        "{out}"
    );
}

#[test]
fn as_an_async_rule_it_logs_a_refused_callback() {
    if !node_installed() {
        return;
    }
    let out = run_rule(json!({
        "current": closed_incident(),
        "previous": null,
        "properties": single_tenant_properties(),
        "response_status": 401,
    }));
    assert_eq!(out["requests"][0]["sent"], "sync", "{out}");
    let logs = out["logs"].as_array().unwrap();
    assert_eq!(logs.len(), 1, "{out}");
    assert_eq!(logs[0][0], "error");
    assert!(logs[0][1].as_str().unwrap().contains("HTTP 401"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_business_rule_callback_closes_the_incident_on_a_real_host() {
    if !node_installed() {
        return;
    }
    let w = World::start().await.unwrap();
    // No simulated rule: the kit's script is the one that calls back.
    let c = w.customer("kit", CustomerSpec::default().without_callback());
    w.publish(&c, 31, 12);
    w.tick(&c).await.expect("tick");
    let incident = w.snow_incidents_of(&c)[0].clone();
    w.sim
        .snow()
        .analyst_close(incident.sys_id(), 7, "Solved (Permanently)", "done")
        .await
        .unwrap();
    let closed = w.sim.snow().incident(incident.sys_id()).unwrap();
    assert_eq!(closed.state(), "7");
    assert_eq!(
        closed.field("correlation_display"),
        "mssp-bridge",
        "the business rule's condition matches what the bridge sets"
    );

    let field = |name: &str| json!(closed.field(name));
    let current = json!({
        "sys_id": field("sys_id"),
        "number": field("number"),
        "state": field("state"),
        "correlation_id": field("correlation_id"),
        "correlation_display": field("correlation_display"),
        "close_code": field("close_code"),
        "sys_created_by": field("sys_created_by"),
    });
    let mut previous = current.clone();
    previous["state"] = json!(incident.state());
    let out = run_rule(json!({
        "current": current,
        "previous": previous,
        "properties": {
            "x_mssp.bridge_callback_url":
                w.host.url("/tenants/{tenant}/v1/servicenow/events"),
            "x_mssp.bridge_tenants": json!({ c.snow_user.clone(): "kit", "svc_other": "other" }).to_string(),
            "x_mssp.bridge_callback_key.kit": c.callback_key,
            "x_mssp.bridge_callback_key.other": "b3RoZXIta2V5",
        },
    }));
    let req = &out["requests"][0];
    assert_eq!(
        req["endpoint"].as_str(),
        Some(w.host.url("/tenants/kit/v1/servicenow/events").as_str()),
        "{out}"
    );
    let headers: Vec<(&str, &str)> = req["headers"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str().unwrap()))
        .collect();

    let reply = mssp_e2e::send(
        "POST",
        req["endpoint"].as_str().unwrap(),
        &headers,
        req["body"].as_str().unwrap().to_string(),
    )
    .await
    .unwrap();

    assert_eq!(reply.status, 200, "{}", reply.text());
    let key = incident.field("correlation_id");
    // The callback does the host steps; the XDR close comes with the next tick
    // (one batched read of every XDR incident closing in it).
    assert_eq!(w.bridge_incident(&c, key).await["state"], "closing");
    w.tick(&c).await.expect("tick after the callback");
    assert_eq!(w.bridge_incident(&c, key).await["state"], "closed");
    let xdr = w
        .xdr_incidents_of(&c)
        .into_iter()
        .find(|i| i["external_ids"][0] == key)
        .unwrap();
    assert_eq!(xdr["status"], "Closed");
}

/// Given two customers whose tickets one shared ServiceNow user opens (a shared
/// ServiceNow account), the rule finds each incident's tenant by the customer tag in its
/// correlation_id — not by the user, which would send both to one tenant — signs with
/// that tenant's key, and falls back to the user map for incidents of an unknown tag.
#[test]
fn with_a_shared_servicenow_user_callbacks_go_to_the_tenant_the_incident_names() {
    if !node_installed() {
        return;
    }
    let acme_tag = mssp_contract::incident::customer_tag("acme-amp-client");
    let globex_tag = mssp_contract::incident::customer_tag("globex-amp-client");
    let globex_key = "Z2xvYmV4LWNhbGxiYWNrLWtleS0wMTIzNDU2Nzg5";
    let props = json!({
        "x_mssp.bridge_callback_url": "https://bridge.example/tenants/{tenant}/v1/servicenow/events",
        "x_mssp.bridge_tenant_tags": json!({ acme_tag.clone(): "acme", globex_tag.clone(): "globex" }).to_string(),
        "x_mssp.bridge_tenants": json!({ "svc_bridge_mssp": "acme" }).to_string(),
        "x_mssp.bridge_callback_key.acme": KEY,
        "x_mssp.bridge_callback_key.globex": globex_key,
    });
    for (tag, tenant, key) in [
        (globex_tag.as_str(), "globex", globex_key),
        (acme_tag.as_str(), "acme", KEY),
        ("0badc0de", "acme", KEY),
    ] {
        let mut current = closed_incident();
        current["sys_created_by"] = json!("svc_bridge_mssp");
        current["correlation_id"] = json!(format!("amp-{tag}-d42"));
        let out = run_rule(json!({
            "current": current,
            "previous": with_state(current.clone(), "2"),
            "properties": props,
        }));
        let req = &out["requests"][0];
        assert_eq!(
            req["endpoint"],
            format!("https://bridge.example/tenants/{tenant}/v1/servicenow/events"),
            "tag {tag}: {out}"
        );
        let ts: i64 = req["headers"]["X-Bridge-Timestamp"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        let body = req["body"].as_str().unwrap();
        let expected = mssp_sim::snow::sign(key, ts, body.as_bytes()).unwrap();
        assert_eq!(
            req["headers"]["X-Bridge-Signature"].as_str(),
            Some(expected.as_str())
        );
    }
}
