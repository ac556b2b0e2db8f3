//! mssp-bridge host: a thin wasmtime host that runs the MSSP bridge component
//! once per customer (tenant), each in its own sandbox.
//!
//! Each capability is one module with a narrow interface: [`kv`] (key-value
//! store per tenant), [`wasi_config`] (configuration), [`outbound`] (HTTP
//! allowlist and limits), [`connections`] (kept-alive upstream connections), [`scheduler`] (ticks), [`tenants`] (customers and
//! their sealed secrets), [`server`] (inbound HTTP), tied together by
//! [`runtime`].

pub mod backfill;
pub mod bindings;
pub mod connections;
#[cfg(feature = "demo")]
pub mod demo;
pub mod doctor;
pub mod guest_api;
pub mod guest_log;
pub mod incidents_cli;
pub mod kv;
pub mod outbound;
pub mod runtime;
pub mod scheduler;
pub mod secrets;
pub mod server;
pub mod settings;
pub mod state;
pub mod stats;
pub mod status_page;
pub mod tenants;
pub mod wasi_config;

/// Milliseconds since the Unix epoch.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
