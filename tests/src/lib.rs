//! Helpers for end-to-end tests: a real host (runtime + HTTP server) running
//! a real component, and a small HTTP client.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use mssp_bridge::kv::{KvBackend, SqliteKv};
use mssp_bridge::outbound::Allowlist;
use mssp_bridge::runtime::{Runtime, RuntimeParts, Tenant};
use mssp_bridge::secrets::SecretString;
use mssp_bridge::server::Server;
use mssp_bridge::settings::LimitSettings;
use mssp_bridge::tenants::{ResolvedTenant, TenantSettings};

/// The workspace's root folder.
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default()
}

/// Path of a component built by `cargo xtask build` (e.g. "mssp_guest").
///
/// Panics with the fix when the component has not been built: a test that
/// cannot find its component must fail, not pass vacuously.
pub fn component(name: &str) -> PathBuf {
    let dir = std::env::var_os("MSSP_WASM_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let target = std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| workspace_root().join("target"));
            target.join("wasm32-wasip2").join("release")
        });
    let path = dir.join(format!("{name}.wasm"));
    assert!(
        path.exists(),
        "component {} is missing: run `cargo xtask test` (it builds the components first)",
        path.display()
    );
    path
}

/// A running host: runtime, HTTP server on loopback, its database folder.
pub struct TestHost {
    pub runtime: Arc<Runtime>,
    pub addr: SocketAddr,
    pub kv: Arc<SqliteKv>,
    pub dir: tempfile::TempDir,
}

impl TestHost {
    pub async fn start(component_name: &str, limits: LimitSettings) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let kv = Arc::new(SqliteKv::open(&dir.path().join("bridge.db"))?);
        let cache = workspace_root().join("target").join("mssp-test-cache");
        let runtime = Arc::new(Runtime::new(RuntimeParts {
            component: &component(component_name),
            cache_dir: &cache,
            kv: kv.clone() as Arc<dyn KvBackend>,
            limits,
            max_instances: 64,
        })?);
        let addr = Server::new(runtime.clone())
            .spawn(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await?;
        Ok(Self {
            runtime,
            addr,
            kv,
            dir,
        })
    }

    /// Registers a tenant with the given configuration (secrets included).
    pub fn tenant(&self, id: &str, config: &[(&str, &str)]) -> Arc<Tenant> {
        let config: BTreeMap<String, SecretString> = config
            .iter()
            .map(|(k, v)| (k.to_string(), SecretString::new(*v)))
            .collect();
        let allowlist = Allowlist::from_config(&config, &[]).expect("valid test config");
        self.runtime.upsert_tenant(ResolvedTenant {
            id: id.to_string(),
            settings: TenantSettings::default(),
            config,
            allowlist,
        })
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }
}

/// One HTTP exchange: status, headers and body.
pub struct Reply {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

/// Sends one request over real HTTP.
pub async fn send(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> anyhow::Result<Reply> {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut req = http::Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = client.request(req.body(Full::new(body.into()))?).await?;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok(Reply {
        status,
        headers,
        body,
    })
}

pub async fn get(url: &str) -> anyhow::Result<Reply> {
    send("GET", url, &[], Bytes::new()).await
}
