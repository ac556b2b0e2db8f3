//! The MSSP bridge logic. Everything but `wasi` is plain Rust over the traits of `ports`.

pub mod api;
pub mod backfill;
pub mod bench;
pub mod callback;
pub mod config;
pub mod cursor;
pub mod detection;
pub mod event;
pub mod incident;
pub mod lifecycle;
pub mod payload;
pub mod pipeline;
pub mod poll;
pub mod ports;
pub mod report;
pub mod retention;
pub mod retry;
#[cfg(test)]
mod scenarios;
#[cfg(test)]
mod scenarios_budget;
#[cfg(test)]
mod scenarios_late;
#[cfg(test)]
mod scenarios_xdr_writes;
pub mod severity;
pub mod store;
#[cfg(any(test, feature = "testkit"))]
pub mod testkit;
pub mod upstream;

#[cfg(target_arch = "wasm32")]
mod wasi;
