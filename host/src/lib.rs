//! mssp-bridge: the application that runs the MSSP bridge component for an MSSP's
//! customers (tenants) on [`mssp_runtime`], the embeddable sandbox runtime.
//!
//! Here: the tenant registry with its sealed secrets ([`tenants`], [`secrets`]) and
//! the shared upstream accounts tenants use ([`accounts`]), the
//! settings file ([`settings`]), the scheduler ([`scheduler`]), the inbound HTTP
//! server ([`server`]) with the status page ([`status_page`]), and the operator
//! commands ([`edit`] of tenants and accounts, [`doctor`], [`backfill`],
//! [`incidents_cli`], the demo).

pub mod accounts;
pub mod backfill;
#[cfg(feature = "demo")]
pub mod demo;
pub mod doctor;
pub mod edit;
pub mod guest_api;
pub mod incidents_cli;
pub mod registry;
pub mod replicas;
pub mod scheduler;
pub mod secrets;
pub mod server;
pub mod settings;
pub mod status_page;
pub mod tenants;

pub use mssp_runtime::unix_ms;
