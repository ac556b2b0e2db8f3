//! Rate-limit arithmetic, free of I/O: time goes in, a decision comes out.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Outcome of one request against a limiter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Decision {
    pub allowed: bool,
    pub limit: u32,
    pub remaining: u32,
    /// Time until the window resets (fixed window) or a slot frees up (sliding window).
    pub reset_in: Duration,
}

impl Decision {
    /// `reset_in` rounded up to whole seconds, never 0 while limited.
    pub fn reset_secs(&self) -> u64 {
        let whole = self.reset_in.as_secs() + u64::from(self.reset_in.subsec_nanos() > 0);
        if self.allowed { whole } else { whole.max(1) }
    }
}

/// A window that starts with the first request and resets as a whole (Secure Endpoint,
/// ServiceNow hourly rules).
#[derive(Debug)]
pub(crate) struct FixedWindow {
    pub limit: u32,
    window: Duration,
    started: Option<Instant>,
    used: u32,
}

impl FixedWindow {
    pub fn new(limit: u32, window: Duration) -> Self {
        FixedWindow {
            limit,
            window,
            started: None,
            used: 0,
        }
    }

    pub fn hit(&mut self, now: Instant) -> Decision {
        let start = match self.started {
            Some(s) if now.duration_since(s) < self.window => s,
            _ => {
                self.started = Some(now);
                self.used = 0;
                now
            }
        };
        let reset_in = self.window.saturating_sub(now.duration_since(start));
        let allowed = self.used < self.limit;
        if allowed {
            self.used += 1;
        }
        Decision {
            allowed,
            limit: self.limit,
            remaining: self.limit - self.used.min(self.limit),
            reset_in,
        }
    }
}

/// A rolling window: a request is allowed when fewer than `limit` requests happened during
/// the last `window` (Cisco XDR).
#[derive(Debug)]
pub(crate) struct SlidingWindow {
    pub limit: u32,
    window: Duration,
    hits: VecDeque<Instant>,
}

impl SlidingWindow {
    pub fn new(limit: u32, window: Duration) -> Self {
        SlidingWindow {
            limit,
            window,
            hits: VecDeque::new(),
        }
    }

    pub fn hit(&mut self, now: Instant) -> Decision {
        while let Some(&oldest) = self.hits.front() {
            if now.duration_since(oldest) >= self.window {
                self.hits.pop_front();
            } else {
                break;
            }
        }
        let used = u32::try_from(self.hits.len()).unwrap_or(u32::MAX);
        let allowed = used < self.limit;
        if allowed {
            self.hits.push_back(now);
        }
        let reset_in = self
            .hits
            .front()
            .map(|&oldest| self.window.saturating_sub(now.duration_since(oldest)))
            .unwrap_or_default();
        Decision {
            allowed,
            limit: self.limit,
            remaining: self
                .limit
                .saturating_sub(u32::try_from(self.hits.len()).unwrap_or(u32::MAX)),
            reset_in,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_window_counts_down_and_resets() {
        let t0 = Instant::now();
        let mut w = FixedWindow::new(2, Duration::from_secs(10));
        let a = w.hit(t0);
        assert!(a.allowed);
        assert_eq!(a.remaining, 1);
        assert_eq!(a.reset_secs(), 10);
        assert!(w.hit(t0 + Duration::from_secs(3)).allowed);
        let c = w.hit(t0 + Duration::from_millis(3500));
        assert!(!c.allowed);
        assert_eq!(c.remaining, 0);
        assert_eq!(c.reset_secs(), 7);
        let d = w.hit(t0 + Duration::from_secs(10));
        assert!(d.allowed);
        assert_eq!(d.remaining, 1);
    }

    #[test]
    fn sliding_window_frees_slots_one_by_one() {
        let t0 = Instant::now();
        let mut w = SlidingWindow::new(2, Duration::from_secs(10));
        assert!(w.hit(t0).allowed);
        assert!(w.hit(t0 + Duration::from_secs(4)).allowed);
        let limited = w.hit(t0 + Duration::from_secs(5));
        assert!(!limited.allowed);
        assert_eq!(limited.reset_secs(), 5);
        assert!(w.hit(t0 + Duration::from_secs(10)).allowed);
        assert!(!w.hit(t0 + Duration::from_secs(11)).allowed);
    }
}
