//! The sandbox's limits: what one invocation may use (memory, time, bodies, log),
//! and how a stopped invocation is classified.

use std::time::Duration;

use serde::Deserialize;
use wasmtime::ResourceLimiter;

use crate::outbound::OutboundLimits;

/// Sandbox limits applied to every invocation of every tenant.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitSettings {
    /// Linear memory cap of one instance, in MiB.
    pub memory_mib: usize,
    /// Wall-clock deadline of a tick, in seconds (CPU loops are interrupted
    /// by epoch checks, waits by the timer).
    pub tick_deadline_secs: u64,
    /// Deadline of one HTTP request handled by a tenant, in seconds.
    pub request_deadline_secs: u64,
    /// HTTP requests of one tenant handled at once (its ticks, one at a time, come
    /// on top and never wait for these).
    pub max_concurrent_per_tenant: usize,
    /// How long an invocation waits for one of its tenant's slots before it is
    /// refused as busy, in milliseconds.
    pub queue_wait_ms: u64,
    /// HTTP requests handled at once across all tenants.
    pub max_concurrent_requests: usize,
    /// Largest inbound request body passed to a guest, in bytes.
    pub max_inbound_body: u64,
    /// Largest response body a guest may send back to an inbound request, in bytes.
    pub max_response_body: u64,
    /// Largest outbound request body a guest may send, in bytes.
    pub max_outbound_request_body: u64,
    /// Largest upstream response body a guest may read, in bytes.
    pub max_outbound_response_body: usize,
    /// Outbound connect timeout, in milliseconds.
    pub connect_timeout_ms: u64,
    /// Outbound time to first byte, in milliseconds.
    pub first_byte_timeout_ms: u64,
    /// Outbound time between two body chunks, in milliseconds.
    pub between_bytes_timeout_ms: u64,
    /// Guest stdout+stderr kept per invocation, in bytes.
    pub log_bytes_per_invocation: usize,
}

impl Default for LimitSettings {
    fn default() -> Self {
        Self {
            memory_mib: 64,
            tick_deadline_secs: 60,
            request_deadline_secs: 30,
            max_concurrent_per_tenant: 4,
            queue_wait_ms: 1_000,
            max_concurrent_requests: 64,
            max_inbound_body: 1024 * 1024,
            max_response_body: 8 * 1024 * 1024,
            max_outbound_request_body: 4 * 1024 * 1024,
            max_outbound_response_body: 16 * 1024 * 1024,
            connect_timeout_ms: 5_000,
            first_byte_timeout_ms: 30_000,
            between_bytes_timeout_ms: 30_000,
            log_bytes_per_invocation: 64 * 1024,
        }
    }
}

impl LimitSettings {
    pub fn outbound(&self) -> OutboundLimits {
        OutboundLimits {
            connect_timeout: Duration::from_millis(self.connect_timeout_ms),
            first_byte_timeout: Duration::from_millis(self.first_byte_timeout_ms),
            between_bytes_timeout: Duration::from_millis(self.between_bytes_timeout_ms),
            max_request_body: self.max_outbound_request_body,
            max_response_body: self.max_outbound_response_body,
        }
    }

    pub fn memory_bytes(&self) -> usize {
        self.memory_mib.saturating_mul(1024 * 1024)
    }
}

/// Caps linear memory (and table) growth of one instance; remembers whether
/// the cap was hit so a resulting trap is reported as a memory stop.
pub struct MemoryCap {
    pub max_bytes: usize,
    pub hit: bool,
}

impl ResourceLimiter for MemoryCap {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.max_bytes {
            self.hit = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }
}
