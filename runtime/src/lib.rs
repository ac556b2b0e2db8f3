//! mssp-runtime: runs the MSSP bridge component (`mssp_guest.wasm`) for many tenants,
//! each invocation in its own wasmtime sandbox. Embed it to run the bridge inside
//! another Rust program; the `mssp-bridge` application (CLI, server, scheduler) is one
//! such embedding.
//!
//! ```text
//! Runtime::new(RuntimeParts{component, cache_dir, kv, limits, max_instances})
//!   └─ upsert_tenant(TenantSpec{id, config, allowlist, ..}) -> Arc<Tenant>
//!        ├─ tick(&tenant, unix_seconds)            handle-cron-event
//!        └─ handle_http(tenant, request)           wasi:http/incoming-handler
//! ```
//!
//! One module per capability, each with its own view of the store's state
//! ([`store::HostState`]) and no module depending on another's internals:
//! - [`engine`]: the wasmtime engine (pooling allocator, epochs), the compiled-component
//!   cache, the linker;
//! - [`kv`]: `wasi:keyvalue` over the [`kv::KvBackend`] seam ([`kv::SqliteKv`] embedded,
//!   [`kv::RedisKv`] shared by replicas);
//! - [`config`]: `wasi:config` from the tenant's values;
//! - [`outbound`]: the outbound allowlist and limits (wasi-http's send hook), over
//!   [`connections`], the tenant's kept-alive upstream connections, and [`budget`], the
//!   shared upstream accounts' budgets and cooldowns it enforces;
//! - [`limits`]: memory, time, body and log caps, and what a stop was;
//! - [`guest_log`]: the guest's stdout/stderr, capped, into `tracing`;
//! - [`report`]: the component's tick report and counters, read as data from its
//!   key-value writes (the contract's `report` keys);
//! - [`stats`]: per-tenant counters and the Prometheus registry;
//! - [`invoke`]: the [`Runtime`] tying them together per invocation.
//!
//! A runnable example: `runtime/examples/one_tick.rs`.

pub mod bindings;
pub mod budget;
pub mod config;
pub mod connections;
pub mod engine;
pub mod guest_log;
pub mod invoke;
pub mod kv;
pub mod limits;
pub mod outbound;
pub mod report;
pub mod secret;
pub mod stats;
pub mod store;

pub use budget::{AccountRef, BudgetSettings};
pub use invoke::{InvokeError, Runtime, RuntimeParts, Tenant, TenantSpec};
pub use limits::LimitSettings;
pub use secret::SecretString;

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
