//! Guest stdout/stderr: forwarded line by line to the host's log, tagged with
//! the tenant, up to a byte cap per invocation; the rest is dropped and counted.
//! Lines are text for people: nothing is parsed out of them (the component's
//! reports reach the host as data, see [`crate::report`]).

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};

use crate::stats::{StopKind, TenantStats};

/// Longest line kept; longer lines are cut.
const MAX_LINE: usize = 4096;

struct Sink {
    tenant: Arc<str>,
    stream: &'static str,
    line: Vec<u8>,
    budget: usize,
    dropped: bool,
    stats: Arc<TenantStats>,
}

impl Sink {
    fn emit(&mut self) {
        if self.line.is_empty() {
            return;
        }
        let text = String::from_utf8_lossy(&self.line);
        tracing::info!(target: "guest", tenant = %self.tenant, stream = self.stream, "{}", text.trim_end());
        self.line.clear();
    }

    fn write(&mut self, buf: &[u8]) {
        let take = buf.len().min(self.budget);
        if take < buf.len() && !self.dropped {
            self.dropped = true;
            self.stats.stop(StopKind::LogDropped);
            tracing::warn!(tenant = %self.tenant, "guest log cap reached; further output of this invocation is dropped");
        }
        self.budget -= take;
        for &b in &buf[..take] {
            if b == b'\n' {
                self.emit();
            } else if self.line.len() < MAX_LINE {
                self.line.push(b);
            }
        }
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.emit();
    }
}

/// One output stream (stdout or stderr) of one invocation.
#[derive(Clone)]
pub struct GuestLog(Arc<Mutex<Sink>>);

impl GuestLog {
    pub fn new(
        tenant: Arc<str>,
        stream: &'static str,
        cap: usize,
        stats: Arc<TenantStats>,
    ) -> Self {
        Self(Arc::new(Mutex::new(Sink {
            tenant,
            stream,
            line: Vec::new(),
            budget: cap,
            dropped: false,
            stats,
        })))
    }
}

impl IsTerminal for GuestLog {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestLog {
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

impl AsyncWrite for GuestLog {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if let Ok(mut sink) = self.0.lock() {
            sink.write(buf);
        }
        // Report everything as written: a flooding guest is throttled by the
        // cap, not by back-pressure that would stall it.
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
