//! Embedding the bridge: one tenant, one tick, one HTTP request. Run from the workspace:
//!   cargo xtask build && cargo run -p mssp-sim -- --base-port 9100   (or real APIs)
//!   cargo run -p mssp-runtime --example one_tick -- runtime/examples/acme.json
//! The JSON file is the tenant's `wasi:config` (keys: `mssp_contract::CONFIG_KEYS`).
use std::{collections::BTreeMap, sync::Arc};

use http_body_util::{BodyExt as _, Full};
use mssp_runtime::{kv::SqliteKv, *};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let file = std::env::args()
        .nth(1)
        .unwrap_or("runtime/examples/acme.json".into());
    let values: BTreeMap<String, String> = serde_json::from_slice(&std::fs::read(&file)?)?;
    let config: BTreeMap<_, _> = values
        .into_iter()
        .map(|(k, v)| (k, SecretString::new(v)))
        .collect();
    let runtime = Arc::new(Runtime::new(RuntimeParts {
        component: "target/wasm32-wasip2/release/mssp_guest.wasm".as_ref(),
        cache_dir: "target/mssp-cache".as_ref(),
        kv: Arc::new(SqliteKv::in_memory()?),
        limits: LimitSettings::default(),
        max_instances: 4,
        budgets: Default::default(),
    })?);
    let spec = TenantSpec::new("acme", config).map_err(anyhow::Error::msg)?;
    let tenant = runtime.upsert_tenant(spec)?;
    runtime.tick(&tenant, unix_ms() / 1000).await?;
    let body =
        Full::new(bytes::Bytes::new()).map_err(|e| -> wasmtime_wasi_http::Error { match e {} });
    let request = http::Request::get("/v1/status")
        .header("host", "localhost")
        .body(body)?;
    let answer = runtime.clone().handle_http(tenant, request).await?;
    let status = answer
        .into_body()
        .collect()
        .await
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    println!("{}", String::from_utf8_lossy(&status.to_bytes()));
    Ok(())
}
