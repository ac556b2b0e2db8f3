//! Per-tenant counters, kept by the host and exported on `/metrics`.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// Why the sandbox stopped or refused something a guest did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StopKind {
    /// The guest trapped (panic, unreachable, bad resource use).
    Trap,
    /// The invocation ran past its deadline.
    Timeout,
    /// The guest tried to grow memory past its cap.
    Memory,
    /// An outbound request to an origin outside the allowlist.
    DeniedRequest,
    /// A request or response body over the size cap.
    BodyTooLarge,
    /// Guest log output dropped over the log cap.
    LogDropped,
    /// The tenant already had its maximum of concurrent invocations.
    Busy,
}

impl StopKind {
    pub const ALL: [StopKind; 7] = [
        StopKind::Trap,
        StopKind::Timeout,
        StopKind::Memory,
        StopKind::DeniedRequest,
        StopKind::BodyTooLarge,
        StopKind::LogDropped,
        StopKind::Busy,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            StopKind::Trap => "trap",
            StopKind::Timeout => "timeout",
            StopKind::Memory => "memory",
            StopKind::DeniedRequest => "denied_request",
            StopKind::BodyTooLarge => "body_too_large",
            StopKind::LogDropped => "log_dropped",
            StopKind::Busy => "busy",
        }
    }

    fn index(self) -> usize {
        Self::ALL.iter().position(|k| *k == self).unwrap_or(0)
    }
}

/// What happened to one tenant since the host started.
#[derive(Default, Debug)]
pub struct TenantStats {
    pub ticks_ok: AtomicU64,
    pub ticks_failed: AtomicU64,
    pub ticks_skipped_overlap: AtomicU64,
    pub http_requests: AtomicU64,
    stops: [AtomicU64; 7],
    pub last_tick_unix_ms: AtomicU64,
    pub last_tick_duration_us: AtomicU64,
    pub last_error: Mutex<Option<String>>,
}

impl TenantStats {
    pub fn stop(&self, kind: StopKind) {
        self.stops[kind.index()].fetch_add(1, Ordering::Relaxed);
    }

    pub fn stops(&self, kind: StopKind) -> u64 {
        self.stops[kind.index()].load(Ordering::Relaxed)
    }

    pub fn set_error(&self, error: Option<String>) {
        if let Ok(mut e) = self.last_error.lock() {
            *e = error;
        }
    }

    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().ok().and_then(|e| e.clone())
    }
}
