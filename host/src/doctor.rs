//! `mssp-bridge doctor`: checks one tenant's upstream accounts from the host
//! process — Secure Endpoint, XDR and ServiceNow — with the tenant's own
//! resolved configuration, and says for every check what is wrong and how to
//! fix it. Reads only; never prints a secret.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::accounts::AccountUse;
use crate::secrets::{SecretString, secret_keys};
use mssp_contract::Sharing;

/// Largest upstream answer the doctor reads.
const MAX_BODY: usize = 4 * 1024 * 1024;
/// The external id looked up to prove the XDR incident API can be read.
const XDR_PROBE_ID: &str = "mssp-bridge-doctor-probe";

/// How one check ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Fail {
        fix: String,
    },
    /// The check could not be made; `detail` says why.
    NotChecked,
}

/// One line of the doctor's report.
#[derive(Clone, Debug)]
pub struct Check {
    pub service: &'static str,
    pub verdict: Verdict,
    pub detail: String,
}

/// Every check of one tenant.
#[derive(Debug)]
pub struct TenantReport {
    pub tenant: String,
    pub customer: String,
    /// The shared accounts the tenant uses (shown, never their secrets).
    pub accounts: Vec<AccountUse>,
    pub checks: Vec<Check>,
}

impl TenantReport {
    pub fn failed(&self) -> usize {
        self.checks
            .iter()
            .filter(|c| matches!(c.verdict, Verdict::Fail { .. }))
            .count()
    }

    pub fn not_checked(&self) -> usize {
        self.checks
            .iter()
            .filter(|c| c.verdict == Verdict::NotChecked)
            .count()
    }

    /// Adds the bridge component's own verdict on the configuration (the
    /// `config` field of its `GET /v1/status`: `ok` or the error), right
    /// after the config line; `Err` = the verdict could not be had.
    pub fn add_component_verdict(&mut self, verdict: Result<String, String>) {
        const S: &str = "bridge";
        let check = match verdict {
            Ok(v) if v == "ok" => Check {
                service: S,
                verdict: Verdict::Pass,
                detail: "the bridge component accepts the configuration".into(),
            },
            Ok(error) => Check {
                service: S,
                verdict: Verdict::Fail {
                    fix: format!(
                        "correct the key named here, then: {}",
                        edit_command(&self.tenant, &self.accounts, &key_named(&error))
                    ),
                },
                detail: format!("the bridge component refuses the configuration: {error}"),
            },
            Err(why) => Check {
                service: S,
                verdict: Verdict::NotChecked,
                detail: format!("configuration not checked by the bridge component: {why}"),
            },
        };
        let at = self.checks.len().min(1);
        self.checks.insert(at, check);
    }

    /// Which account the tenant uses for XDR and ServiceNow, e.g. `accounts: XDR
    /// mssp-xdr (600 calls/h), ServiceNow its own keys`.
    pub fn accounts_line(&self) -> String {
        let parts: Vec<String> = mssp_contract::Account::ALL
            .into_iter()
            .map(
                |kind| match self.accounts.iter().find(|a| a.service == kind.name()) {
                    Some(a) => format!(
                        "{} account {} ({})",
                        kind.title(),
                        a.name,
                        crate::edit::budget_text(a.budget_per_hour)
                    ),
                    None => format!("{} its own keys", kind.title()),
                },
            )
            .collect();
        format!("accounts: {}", parts.join(", "))
    }

    /// Prints the report, one line per check (and one per fix).
    pub fn print(&self, out: &mut dyn Write) -> std::io::Result<()> {
        writeln!(out, "{} ({})", self.tenant, self.customer)?;
        writeln!(out, "  {}", self.accounts_line())?;
        for c in &self.checks {
            let mark = match c.verdict {
                Verdict::Pass => "✓",
                Verdict::Fail { .. } => "✗",
                Verdict::NotChecked => "-",
            };
            writeln!(out, "  {mark} {:<15} {}", c.service, c.detail)?;
            if let Verdict::Fail { fix } = &c.verdict {
                writeln!(out, "    {:<15} fix: {fix}", "")?;
            }
        }
        Ok(())
    }
}

/// The first configuration key the component's error names (it quotes them:
/// `config key "xdr_api_url" must be …`), so a fix points to where it is set.
fn key_named(error: &str) -> Vec<&str> {
    error
        .split('"')
        .skip(1)
        .step_by(2)
        .filter(|k| mssp_contract::config_key(k).is_some())
        .take(1)
        .collect()
}

/// One upstream answer.
struct Reply {
    status: u16,
    body: Bytes,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    /// The upstream's own words for an error, from the usual envelopes of the
    /// three APIs, else the status alone.
    fn reason(&self) -> String {
        let v = self.json();
        let found = [
            v.pointer("/errors/0/details/0"),
            v.pointer("/errors/0/description"),
            v.pointer("/error/message"),
            v.get("error_description"),
            v.get("message"),
            v.get("error"),
        ]
        .into_iter()
        .flatten()
        .find_map(|x| x.as_str().filter(|s| !s.is_empty()));
        match found {
            Some(text) => format!("HTTP {} {}", self.status, clip(text, 160)),
            None => format!("HTTP {}", self.status),
        }
    }
}

fn clip(s: &str, max: usize) -> String {
    let mut out: String = s.chars().take(max).collect();
    if out.len() < s.len() {
        out.push('…');
    }
    out
}

/// One request over a fresh connection (plain HTTP or TLS with the web PKI roots).
async fn fetch(
    method: Method,
    url: &str,
    headers: &[(&str, String)],
    body: Option<String>,
    timeout: Duration,
) -> Result<Reply, String> {
    tokio::time::timeout(timeout, fetch_inner(method, url, headers, body))
        .await
        .map_err(|_| format!("no answer within {} s", timeout.as_secs()))?
}

async fn fetch_inner(
    method: Method,
    url: &str,
    headers: &[(&str, String)],
    body: Option<String>,
) -> Result<Reply, String> {
    let uri: http::Uri = url.parse().map_err(|e| format!("bad URL {url:?}: {e}"))?;
    let https = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => return Err(format!("URL {url:?} is neither http:// nor https://")),
    };
    let host = uri
        .host()
        .ok_or_else(|| format!("URL {url:?} has no host"))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let authority = uri
        .authority()
        .map(|a| a.as_str().to_string())
        .unwrap_or_else(|| host.clone());
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::HOST, authority)
        .header(http::header::ACCEPT, "application/json")
        .header(http::header::USER_AGENT, "mssp-bridge-doctor");
    for (k, v) in headers {
        req = req.header(*k, v.as_str());
    }
    let req = req
        .body(Full::new(Bytes::from(body.unwrap_or_default())))
        .map_err(|e| format!("building the request: {e}"))?;
    let tcp = TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|e| format!("cannot connect to {host}:{port}: {e}"))?;
    if https {
        let config = mssp_runtime::connections::tls_config()?;
        let name = tokio_rustls::rustls::pki_types::ServerName::try_from(host.clone())
            .map_err(|e| format!("TLS server name {host:?}: {e}"))?;
        let tls = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(|e| {
                format!(
                    "TLS handshake with {host}:{port} failed: {e} (the bridge trusts the Mozilla root store, as the tenants' sandboxes do; a TLS-inspecting proxy must let this host through)"
                )
            })?;
        exchange(tls, req).await
    } else {
        exchange(tcp, req).await
    }
}

async fn exchange<S>(io: S, req: Request<Full<Bytes>>) -> Result<Reply, String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| format!("HTTP handshake failed: {e}"))?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!("doctor connection ended: {e}");
        }
    });
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("the request failed: {e}"))?;
    let status = resp.status().as_u16();
    let body = Limited::new(resp.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| format!("reading the answer failed: {e}"))?
        .to_bytes();
    Ok(Reply { status, body })
}

/// The command that changes `keys` of `tenant`: `mssp-bridge account set NAME …` when
/// the shared account it uses holds them (for a default of the account, also the
/// tenant's own override), else `mssp-bridge tenant set TENANT …`.
pub fn edit_command(tenant: &str, accounts: &[AccountUse], keys: &[&str]) -> String {
    let tenant_set =
        format!("mssp-bridge tenant set {tenant} KEY=VALUE (secrets with --secret-file KEY=PATH)");
    let held = keys.iter().find_map(|k| {
        let sharing = mssp_contract::config_key(k)?.sharing;
        let kind = sharing.account()?;
        let used = accounts.iter().find(|a| a.service == kind.name())?;
        Some((sharing, used))
    });
    match held {
        Some((Sharing::AccountDefault(_), a)) => format!(
            "mssp-bridge account set {} KEY=VALUE (every tenant of the account), or {tenant_set} for this tenant only",
            a.name
        ),
        Some((_, a)) => format!(
            "mssp-bridge account set {} KEY=VALUE (secrets with --secret-file KEY=PATH; every tenant of the account follows)",
            a.name
        ),
        None => tenant_set,
    }
}

/// The checks of one tenant, run in order; later checks of a service are
/// skipped (not checked) when its connection or credentials failed.
struct Doctor<'a> {
    config: &'a BTreeMap<String, SecretString>,
    /// The shared accounts the tenant uses (where a fix of their keys is made).
    accounts: &'a [AccountUse],
    tenant: &'a str,
    timeout: Duration,
    checks: Vec<Check>,
}

impl Doctor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.config
            .get(key)
            .map(|v| v.expose().trim())
            .filter(|v| !v.is_empty())
    }

    fn base(&self, key: &str) -> Option<String> {
        self.get(key).map(|v| v.trim_end_matches('/').to_string())
    }

    /// Replaces every configured secret value in `text`.
    fn redact(&self, text: String) -> String {
        let mut out = text;
        for name in secret_keys() {
            if let Some(v) = self.get(name).filter(|v| v.len() >= 4) {
                out = out.replace(v, "<secret>");
            }
        }
        out
    }

    fn pass(&mut self, service: &'static str, detail: String) {
        let detail = self.redact(detail);
        self.checks.push(Check {
            service,
            verdict: Verdict::Pass,
            detail,
        });
    }

    fn fail(&mut self, service: &'static str, detail: String, fix: String) {
        let (detail, fix) = (self.redact(detail), self.redact(fix));
        self.checks.push(Check {
            service,
            verdict: Verdict::Fail { fix },
            detail,
        });
    }

    fn skip(&mut self, service: &'static str, detail: String) {
        let detail = self.redact(detail);
        self.checks.push(Check {
            service,
            verdict: Verdict::NotChecked,
            detail,
        });
    }

    /// `what` to do about `keys`, and the command that does it: `account set` when a
    /// shared account the tenant uses holds them (every tenant of the account
    /// follows), else `tenant set`.
    fn fix(&self, keys: &[&str], what: &str) -> String {
        format!(
            "{what}, then: {}",
            edit_command(self.tenant, self.accounts, keys)
        )
    }

    async fn call(
        &self,
        method: Method,
        url: &str,
        auth: String,
        body: Option<(&str, String)>,
    ) -> Result<Reply, String> {
        let mut headers = vec![("authorization", auth)];
        let body = body.map(|(content_type, b)| {
            headers.push(("content-type", content_type.to_string()));
            b
        });
        fetch(method, url, &headers, body, self.timeout).await
    }

    fn basic(user: &str, password: &str) -> String {
        let b64 = base64::engine::general_purpose::STANDARD;
        format!("Basic {}", b64.encode(format!("{user}:{password}")))
    }

    /// Who may read this customer's incidents: an operator's opt-in to open reads is
    /// a failed check (shown in red), with the fix.
    fn read_access_check(&mut self) {
        use crate::guest_api::{Readers, readers};
        match readers(|k| self.get(k)) {
            Readers::ReadToken => self.pass(
                "reads",
                "read routes need the tenant's read_token (or the admin token)".into(),
            ),
            Readers::Anyone => self.fail(
                "reads",
                "open_reads=true: anyone who reaches the bridge reads this customer's incidents (user names, addresses, host names)".into(),
                self.fix(&["read_token"], "set read_token instead (readers send it as a bearer) and drop open_reads"),
            ),
            Readers::HostOnly => self.pass(
                "reads",
                "read routes need the admin token (no read_token set)".into(),
            ),
        }
    }

    fn config_check(&mut self) {
        // The contract's required keys.
        let mut missing: Vec<&str> = mssp_contract::CONFIG_KEYS
            .iter()
            .filter(|k| k.presence == mssp_contract::Presence::Required)
            .map(|k| k.name)
            .filter(|k| self.get(k).is_none())
            .collect();
        if self.get("snow_token").is_none() {
            missing.extend(
                ["snow_user", "snow_password"]
                    .into_iter()
                    .filter(|k| self.get(k).is_none()),
            );
        }
        if missing.is_empty() {
            self.pass("config", "every required key is set".into());
        } else {
            let list = missing.join(", ");
            let fix = self.fix(&missing, &format!("set {list}"));
            self.fail("config", format!("missing: {list}"), fix);
        }
    }

    async fn secure_endpoint(&mut self) {
        const S: &str = "Secure Endpoint";
        let (Some(base), Some(client), Some(key)) = (
            self.base("amp_base_url"),
            self.get("amp_client_id"),
            self.get("amp_api_key"),
        ) else {
            self.skip(
                S,
                "not checked: amp_base_url, amp_client_id or amp_api_key is not set".into(),
            );
            return;
        };
        let auth = Self::basic(client, key);
        let url = format!("{base}/v1/version");
        match self.call(Method::GET, &url, auth.clone(), None).await {
            Ok(r) if r.status == 200 => {
                self.pass(S, "credentials accepted (GET /v1/version → 200)".into())
            }
            Ok(r) if r.status == 401 || r.status == 403 => {
                let fix = self.fix(
                    &["amp_api_key"],
                    "check amp_client_id and amp_api_key (an API credential of this customer's organisation, in the region of amp_base_url)",
                );
                self.fail(
                    S,
                    format!(
                        "credentials refused for client id {client} (GET /v1/version → {})",
                        r.reason()
                    ),
                    fix,
                );
                return;
            }
            Ok(r) => {
                let fix = format!(
                    "check amp_base_url ({base}): it must be the API host of the customer's region, e.g. https://api.amp.cisco.com, https://api.eu.amp.cisco.com or https://api.apjc.amp.cisco.com"
                );
                self.fail(
                    S,
                    format!("unexpected answer (GET /v1/version → {})", r.reason()),
                    fix,
                );
                return;
            }
            Err(e) => {
                let fix = format!(
                    "check amp_base_url ({base}) and that this machine can reach it (proxy, firewall)"
                );
                self.fail(S, format!("unreachable: {e}"), fix);
                return;
            }
        }
        self.event_types(&base, auth.clone()).await;
        self.triage_group(&base, auth).await;
    }

    async fn event_types(&mut self, base: &str, auth: String) {
        const S: &str = "Secure Endpoint";
        let url = format!("{base}/v1/event_types");
        let known: Vec<(u64, String)> = match self.call(Method::GET, &url, auth, None).await {
            Ok(r) if r.status == 200 => r
                .json()
                .get("data")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|t| {
                            Some((
                                t.get("id")?.as_u64()?,
                                t.get("name")?.as_str().unwrap_or("").to_string(),
                            ))
                        })
                        .collect()
                })
                .unwrap_or_default(),
            Ok(r) => {
                self.fail(
                    S,
                    format!("event types unreadable (GET /v1/event_types → {})", r.reason()),
                    "the API credential needs read access to event types; check its scope in the Secure Endpoint console".into(),
                );
                return;
            }
            Err(e) => {
                self.fail(
                    S,
                    format!("event types unreadable: {e}"),
                    "retry; if it persists check the network path to amp_base_url".into(),
                );
                return;
            }
        };
        for key in ["event_types", "containment_event_types"] {
            let Some(list) = self.get(key) else {
                if key == "event_types" {
                    self.pass(
                        S,
                        format!(
                            "{} event types known upstream; event_types not set, the bridge's default high-priority list applies",
                            known.len()
                        ),
                    );
                }
                continue;
            };
            let mut unknown = Vec::new();
            let mut names = Vec::new();
            for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                match item
                    .parse::<u64>()
                    .ok()
                    .and_then(|id| known.iter().find(|(k, _)| *k == id))
                {
                    Some((_, name)) => names.push(name.clone()),
                    None => unknown.push(item.to_string()),
                }
            }
            if unknown.is_empty() {
                self.pass(
                    S,
                    format!(
                        "{key}: all {} ids exist in /v1/event_types ({})",
                        names.len(),
                        clip(&names.join(", "), 120)
                    ),
                );
            } else {
                let fix = self.fix(
                    &[key],
                    &format!(
                        "remove or correct {} in {key} (ids are listed by GET /v1/event_types)",
                        unknown.join(", ")
                    ),
                );
                self.fail(
                    S,
                    format!("{key}: {} not in /v1/event_types", unknown.join(", ")),
                    fix,
                );
            }
        }
    }

    async fn triage_group(&mut self, base: &str, auth: String) {
        const S: &str = "Secure Endpoint";
        let containment = self.get("containment").unwrap_or("none").to_string();
        let Some(guid) = self.get("triage_group_guid").map(str::to_string) else {
            if containment == "move" {
                let fix = self.fix(
                    &["triage_group_guid"],
                    "set triage_group_guid to a group guid listed by GET /v1/groups",
                );
                self.fail(
                    S,
                    "containment = move but triage_group_guid is not set".into(),
                    fix,
                );
            } else {
                self.skip(
                    S,
                    format!(
                        "triage group not checked: triage_group_guid is not set (needed only for containment = move; containment = {containment})"
                    ),
                );
            }
            return;
        };
        let url = format!("{base}/v1/groups/{guid}");
        match self.call(Method::GET, &url, auth.clone(), None).await {
            Ok(r) if r.status == 200 => {
                let name = r
                    .json()
                    .pointer("/data/name")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string();
                self.pass(S, format!("triage group {guid} exists ({name})"));
            }
            Ok(r) if r.status == 404 => {
                let choices = self.group_choices(base, auth).await;
                let fix = self.fix(
                    &["triage_group_guid"],
                    &format!("set triage_group_guid to a group of this organisation{choices}"),
                );
                self.fail(
                    S,
                    format!(
                        "triage group {guid} not found in /v1/groups ({})",
                        r.reason()
                    ),
                    fix,
                );
            }
            Ok(r) => self.fail(
                S,
                format!("triage group {guid} unreadable ({})", r.reason()),
                "the API credential needs read access to groups".into(),
            ),
            Err(e) => self.fail(
                S,
                format!("triage group {guid} unreadable: {e}"),
                "retry; if it persists check the network path to amp_base_url".into(),
            ),
        }
    }

    /// A few groups of the organisation, for the fix of a wrong group guid.
    async fn group_choices(&self, base: &str, auth: String) -> String {
        let url = format!("{base}/v1/groups?limit=100");
        let Ok(r) = self.call(Method::GET, &url, auth, None).await else {
            return String::new();
        };
        let groups: Vec<String> = r
            .json()
            .get("data")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|g| {
                        Some(format!(
                            "{} = {}",
                            g.get("name")?.as_str()?,
                            g.get("guid")?.as_str()?
                        ))
                    })
                    .take(6)
                    .collect()
            })
            .unwrap_or_default();
        if groups.is_empty() {
            String::new()
        } else {
            format!(", e.g. {}", groups.join("; "))
        }
    }

    async fn xdr(&mut self) {
        const S: &str = "XDR";
        let (Some(auth_base), Some(api_base), Some(client), Some(secret)) = (
            self.base("xdr_auth_url"),
            self.base("xdr_api_url"),
            self.get("xdr_client_id"),
            self.get("xdr_client_secret"),
        ) else {
            self.skip(
                S,
                "not checked: xdr_auth_url, xdr_api_url, xdr_client_id or xdr_client_secret is not set".into(),
            );
            return;
        };
        let client = client.to_string();
        let url = format!("{auth_base}/iroh/oauth2/token");
        let token = match self
            .call(
                Method::POST,
                &url,
                Self::basic(&client, secret),
                Some((
                    "application/x-www-form-urlencoded",
                    "grant_type=client_credentials".into(),
                )),
            )
            .await
        {
            Ok(r) if r.status == 200 => {
                match r.json().get("access_token").and_then(Value::as_str) {
                    Some(t) if !t.is_empty() => {
                        self.pass(
                            S,
                            format!(
                                "token issued to client {client} (POST /iroh/oauth2/token → 200)"
                            ),
                        );
                        SecretString::new(t)
                    }
                    _ => {
                        self.fail(
                            S,
                            "the token answer has no access_token".into(),
                            format!("check xdr_auth_url ({auth_base}): it must be the XDR token host, e.g. https://visibility.amp.cisco.com"),
                        );
                        return;
                    }
                }
            }
            Ok(r) if matches!(r.status, 400 | 401 | 403) => {
                let fix = self.fix(
                    &["xdr_client_secret"],
                    "check xdr_client_id and xdr_client_secret (an API client of the XDR organisation, in the region of xdr_auth_url)",
                );
                self.fail(
                    S,
                    format!(
                        "token refused for client {client} (POST /iroh/oauth2/token → {})",
                        r.reason()
                    ),
                    fix,
                );
                return;
            }
            Ok(r) => {
                self.fail(
                    S,
                    format!("unexpected token answer (POST /iroh/oauth2/token → {})", r.reason()),
                    format!("check xdr_auth_url ({auth_base}), e.g. https://visibility.amp.cisco.com, https://visibility.eu.amp.cisco.com or https://visibility.apjc.amp.cisco.com"),
                );
                return;
            }
            Err(e) => {
                self.fail(
                    S,
                    format!("token host unreachable: {e}"),
                    format!("check xdr_auth_url ({auth_base}) and that this machine can reach it"),
                );
                return;
            }
        };
        let url = format!("{api_base}/ctia/incident/external_id/{XDR_PROBE_ID}");
        let auth = format!("Bearer {}", token.expose());
        match self.call(Method::GET, &url, auth, None).await {
            Ok(r) if r.status == 200 => self.pass(
                S,
                "incident API readable (GET /ctia/incident/external_id/… → 200)".into(),
            ),
            Ok(r) if r.status == 401 || r.status == 403 => self.fail(
                S,
                format!("incident API refused the token ({})", r.reason()),
                "xdr_api_url must be in the same region as xdr_auth_url, and the API client needs the Incident scope (read/write)".into(),
            ),
            Ok(r) => self.fail(
                S,
                format!("incident API: unexpected answer ({})", r.reason()),
                format!("check xdr_api_url ({api_base}), e.g. https://private.intel.amp.cisco.com"),
            ),
            Err(e) => self.fail(
                S,
                format!("incident API unreachable: {e}"),
                format!("check xdr_api_url ({api_base}) and that this machine can reach it"),
            ),
        }
    }

    async fn servicenow(&mut self) {
        const S: &str = "ServiceNow";
        let Some(base) = self.base("snow_base_url") else {
            self.skip(S, "not checked: snow_base_url is not set".into());
            return;
        };
        let (auth, who) = match (
            self.get("snow_token"),
            self.get("snow_user"),
            self.get("snow_password"),
        ) {
            (Some(t), _, _) => (format!("Bearer {t}"), "the bearer token".to_string()),
            (None, Some(u), Some(p)) => (Self::basic(u, p), format!("user {u}")),
            _ => {
                self.skip(
                    S,
                    "not checked: neither snow_token nor snow_user + snow_password is set".into(),
                );
                return;
            }
        };
        let url = format!("{base}/api/now/table/incident?sysparm_limit=1&sysparm_fields=sys_id");
        match self.call(Method::GET, &url, auth.clone(), None).await {
            Ok(r) if r.status == 200 => self.pass(
                S,
                format!("incident table readable by {who} (GET /api/now/table/incident → 200)"),
            ),
            Ok(r) if r.status == 401 => {
                let fix = self.fix(
                    &["snow_password"],
                    "check snow_user and snow_password (or snow_token) of the integration account",
                );
                self.fail(
                    S,
                    format!("credentials of {who} refused ({})", r.reason()),
                    fix,
                );
                return;
            }
            Ok(r) if r.status == 403 => {
                self.fail(
                    S,
                    format!("{who} may not read the incident table ({})", r.reason()),
                    "give the integration account the itil role (or ACLs to read and write incident)".into(),
                );
                return;
            }
            Ok(r) => {
                self.fail(
                    S,
                    format!("unexpected answer (GET /api/now/table/incident → {})", r.reason()),
                    format!("check snow_base_url ({base}): it must be the instance, e.g. https://acme.service-now.com"),
                );
                return;
            }
            Err(e) => {
                self.fail(
                    S,
                    format!("unreachable: {e}"),
                    format!(
                        "check snow_base_url ({base}) and that this machine can reach the instance"
                    ),
                );
                return;
            }
        }
        for (key, table, what) in [
            ("snow_caller_id", "sys_user", "caller"),
            (
                "snow_assignment_group",
                "sys_user_group",
                "assignment group",
            ),
        ] {
            let Some(id) = self.get(key).map(str::to_string) else {
                self.skip(S, format!("{what} not checked: {key} is not set"));
                continue;
            };
            let url = format!("{base}/api/now/table/{table}/{id}?sysparm_fields=sys_id,name");
            match self.call(Method::GET, &url, auth.clone(), None).await {
                Ok(r) if r.status == 200 => {
                    let name = r
                        .json()
                        .pointer("/result/name")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string();
                    self.pass(S, format!("{what} {id} exists in {table} ({name})"));
                }
                Ok(r) if r.status == 404 => {
                    let fix = self.fix(&[key], &format!(
                        "set {key} to the sys_id of an existing {table} record"
                    ));
                    self.fail(
                        S,
                        format!("{what} {id}: no such {table} record ({})", r.reason()),
                        fix,
                    );
                }
                Ok(r) => self.skip(
                    S,
                    format!(
                        "{what} {id} not checked: the instance does not let {who} read {table} ({})",
                        r.reason()
                    ),
                ),
                Err(e) => self.skip(S, format!("{what} {id} not checked: {e}")),
            }
        }
    }
}

/// The `config` verdict of the tenant's own `GET /v1/status`.
pub async fn component_verdict(
    runtime: &Arc<mssp_runtime::Runtime>,
    tenant: Arc<mssp_runtime::Tenant>,
) -> Result<String, String> {
    let r = crate::guest_api::get(runtime, tenant, "/v1/status")
        .await
        .map_err(|e| e.to_string())?;
    if r.status != 200 {
        return Err(format!("GET /v1/status answered {}", r.error_text()));
    }
    r.json
        .get("config")
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| "GET /v1/status has no config verdict".to_string())
}

/// Runs every check of one tenant. `config` is its resolved configuration
/// (secrets included; none of them appears in the report).
pub async fn diagnose(
    tenant: &str,
    config: &BTreeMap<String, SecretString>,
    accounts: &[AccountUse],
    timeout: Duration,
) -> TenantReport {
    let mut d = Doctor {
        config,
        accounts,
        tenant,
        timeout,
        checks: Vec::new(),
    };
    d.config_check();
    d.read_access_check();
    d.secure_endpoint().await;
    d.xdr().await;
    d.servicenow().await;
    TenantReport {
        tenant: tenant.to_string(),
        customer: d.get("customer_name").unwrap_or("").to_string(),
        accounts: accounts.to_vec(),
        checks: d.checks,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_reads_is_flagged_and_a_read_token_passes() {
        let verdict = |pairs: &[(&str, &str)]| {
            let config: BTreeMap<String, SecretString> = pairs
                .iter()
                .map(|(k, v)| (k.to_string(), SecretString::new(*v)))
                .collect();
            let mut d = Doctor {
                config: &config,
                accounts: &[],
                tenant: "acme",
                timeout: Duration::from_secs(1),
                checks: Vec::new(),
            };
            d.read_access_check();
            d.checks.remove(0).verdict
        };
        assert!(matches!(
            verdict(&[("open_reads", "true")]),
            Verdict::Fail { .. }
        ));
        assert_eq!(verdict(&[("open_reads", "false")]), Verdict::Pass);
        assert_eq!(verdict(&[]), Verdict::Pass);
        assert_eq!(
            verdict(&[("open_reads", "true"), ("read_token", "r-1")]),
            Verdict::Pass
        );
    }

    #[test]
    fn a_fix_is_made_where_the_key_is_held() {
        let uses = [AccountUse {
            service: "snow",
            name: "mssp-snow".into(),
            budget_per_hour: None,
        }];
        let own = edit_command("acme", &uses, &["xdr_client_secret"]);
        assert!(
            own.starts_with("mssp-bridge tenant set acme KEY=VALUE"),
            "{own}"
        );
        let shared = edit_command("acme", &uses, &["snow_password"]);
        assert!(
            shared.starts_with("mssp-bridge account set mssp-snow"),
            "{shared}"
        );
        let default = edit_command("acme", &uses, &["snow_caller_id"]);
        assert!(
            default.contains("account set mssp-snow") && default.contains("tenant set acme"),
            "{default}"
        );
        assert!(edit_command("acme", &[], &["snow_password"]).contains("tenant set acme"));
        assert_eq!(
            key_named("missing config key \"snow_user\"/\"snow_password\" (or set \"snow_token\")"),
            ["snow_user"]
        );
        assert!(key_named("no quoted key \"here\"").is_empty());
    }

    #[test]
    fn upstream_error_envelopes_give_their_reason() {
        let amp = Reply {
            status: 401,
            body: Bytes::from_static(
                br#"{"errors":[{"error_code":401,"description":"Unauthorized","details":["Unknown API key or Client ID"]}]}"#,
            ),
        };
        assert_eq!(amp.reason(), "HTTP 401 Unknown API key or Client ID");
        let snow = Reply {
            status: 401,
            body: Bytes::from_static(
                br#"{"error":{"message":"User Not Authenticated","detail":"x"}}"#,
            ),
        };
        assert_eq!(snow.reason(), "HTTP 401 User Not Authenticated");
        let html = Reply {
            status: 503,
            body: Bytes::from_static(b"<html>gateway</html>"),
        };
        assert_eq!(html.reason(), "HTTP 503");
    }

    #[test]
    fn secrets_are_redacted_from_every_line() {
        let config: BTreeMap<String, SecretString> =
            [("amp_api_key", "amp-key-123456"), ("customer_name", "Acme")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), SecretString::new(v)))
                .collect();
        let d = Doctor {
            config: &config,
            accounts: &[],
            tenant: "acme",
            timeout: Duration::from_secs(1),
            checks: Vec::new(),
        };
        assert_eq!(
            d.redact("echoed amp-key-123456 back".into()),
            "echoed <secret> back"
        );
    }
}
