//! What one tick did, kept in the store for `GET /v1/status` and returned by `/v1/tick`.

pub use mssp_contract::report::{Cooldown, TickReport};
