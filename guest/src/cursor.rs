//! The durable event cursor: a time watermark plus the ids already taken in, so that
//! overlapping queries and re-delivered events are recognised.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::event::Event;

/// How far before the watermark each query starts. Events that reach the cloud late, and
/// offsets that shift while paging, are caught by this overlap and de-duplicated by id.
pub const OVERLAP_SECONDS: i64 = 900;

/// How far behind the bridge's clock the watermark stays when it catches up with a
/// quiet tenant (Secure Endpoint's clock and ours may differ by this much).
pub const CLOCK_MARGIN_SECONDS: i64 = 300;

/// The watermark catches up with the clock only when it lags by more than this, so an
/// idle tenant's cursor is written at most once per this many seconds.
pub const CATCH_UP_STEP_SECONDS: i64 = 300;

/// Ids remembered at most (the newest); beyond, re-read events are still recognised by
/// their incident records, and a paged backlog is de-duplicated by position.
pub const MAX_RECENT: usize = 2_000;

/// A query too large for one page, read from its oldest end across pages and ticks.
/// Items are counted from the oldest end, so events arriving meanwhile (at the newest
/// end) move nothing already counted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Paging {
    /// `start_date` of the paged query, kept until its newest end is reached.
    pub start: i64,
    /// Items of that query, counted from its oldest end, already read.
    pub read: u64,
    /// Id of the newest item read (the first item of the last page read).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boundary: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    /// Unix seconds: every event up to this time has been taken in.
    pub since: i64,
    /// `(event id, timestamp)` of events taken in within the overlap window.
    #[serde(default)]
    pub recent: Vec<(u64, i64)>,
    /// A backlog being read page by page (absent when one page holds everything).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paging: Option<Paging>,
    /// Id of the newest event read: when the overlap window holds more than one page,
    /// the first page is used up to this event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub newest: Option<u64>,
}

impl Cursor {
    pub fn first_run(now_secs: i64, lookback_seconds: u64) -> Cursor {
        Cursor {
            since: now_secs - i64::try_from(lookback_seconds).unwrap_or(i64::MAX / 2),
            recent: Vec::new(),
            paging: None,
            newest: None,
        }
    }

    /// Remembered ids at or after `start` (how many items of a query from there are
    /// known, as far as the cursor can tell).
    pub fn known_since(&self, start: i64) -> u64 {
        self.recent.iter().filter(|(_, ts)| *ts >= start).count() as u64
    }

    /// The `start_date` of the next query.
    pub fn query_from(&self) -> i64 {
        self.since - OVERLAP_SECONDS
    }

    /// After a poll that read its whole query (started at `polled_at`, Unix seconds),
    /// every event that had reached the service by then is taken in; only late
    /// arrivals can still come, and the overlap catches those. So the watermark may
    /// follow the clock (less a margin for clock skew) instead of staying at the newest
    /// event: a tenant that went quiet after a burst stops re-reading that burst on
    /// every tick. Moves only when it lags by more than [`CATCH_UP_STEP_SECONDS`];
    /// returns whether it moved.
    pub fn catch_up(&mut self, polled_at: i64) -> bool {
        let target = polled_at - CLOCK_MARGIN_SECONDS;
        if target - self.since <= CATCH_UP_STEP_SECONDS {
            return false;
        }
        self.since = target;
        let floor = self.query_from();
        self.recent.retain(|(_, ts)| *ts >= floor);
        true
    }

    /// Drops duplicates (by id) and events already taken in, and orders the rest oldest
    /// first, the order in which they are handled.
    pub fn fresh(&self, fetched: Vec<Event>) -> Vec<Event> {
        let mut seen: BTreeSet<u64> = self.recent.iter().map(|(id, _)| *id).collect();
        let mut out: Vec<Event> = fetched.into_iter().filter(|e| seen.insert(e.id)).collect();
        crate::event::chronological(&mut out);
        out
    }

    /// Moves the watermark past events that have been durably taken in, but never past
    /// `now_secs`: an endpoint whose clock runs ahead must not make the bridge skip the
    /// real present (its own future-dated event stays in `recent` until then).
    pub fn advance(&mut self, taken: &[Event], now_secs: i64) {
        for e in taken {
            self.recent.push((e.id, e.timestamp));
            self.since = self.since.max(e.timestamp.min(now_secs));
        }
        let floor = self.query_from();
        self.recent.retain(|(_, ts)| *ts >= floor);
        // Oldest first, so the newest `MAX_RECENT` are the tail.
        self.recent.sort_unstable_by_key(|(id, ts)| (*ts, *id));
        self.recent.dedup();
        let excess = self.recent.len().saturating_sub(MAX_RECENT);
        self.recent.drain(..excess);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detection::tests::event;

    #[test]
    fn a_quiet_cursor_follows_the_clock_in_steps_and_forgets_what_it_leaves() {
        let mut c = Cursor::first_run(10_000, 3600);
        c.advance(&[event(1, 9_000, 1, None)], 10_000);
        assert_eq!(c.since, 9_000);
        // Within a step of the clock (less the margin): stays.
        assert!(!c.catch_up(9_000 + CLOCK_MARGIN_SECONDS + CATCH_UP_STEP_SECONDS));
        assert_eq!(c.since, 9_000);
        // Further behind: follows the clock, and the remembered id left the window.
        assert!(c.catch_up(20_000));
        assert_eq!(c.since, 20_000 - CLOCK_MARGIN_SECONDS);
        assert!(c.recent.is_empty());
        // Never backwards.
        assert!(!c.catch_up(15_000));
        assert_eq!(c.since, 20_000 - CLOCK_MARGIN_SECONDS);
    }

    #[test]
    fn first_run_looks_back() {
        let c = Cursor::first_run(10_000, 3600);
        assert_eq!(c.since, 6_400);
        assert_eq!(c.query_from(), 6_400 - OVERLAP_SECONDS);
    }

    #[test]
    fn dedups_pages_and_overlap_and_orders_oldest_first() {
        let mut c = Cursor::first_run(10_000, 3600);
        // Newest first, with event 2 repeated on two pages.
        let fetched = vec![
            event(3, 9_000, 1, None),
            event(2, 8_500, 1, None),
            event(2, 8_500, 1, None),
            event(1, 7_000, 1, None),
        ];
        let fresh = c.fresh(fetched);
        assert_eq!(
            fresh.iter().map(|e| e.id).collect::<Vec<_>>(),
            vec![1, 2, 3]
        );
        c.advance(&fresh, 10_000);
        assert_eq!(c.since, 9_000);
        // The next query overlaps: 2 and 3 come again, plus a new one at the same second.
        let again = c.fresh(vec![
            event(4, 9_000, 1, None),
            event(3, 9_000, 1, None),
            event(2, 8_500, 1, None),
        ]);
        assert_eq!(again.iter().map(|e| e.id).collect::<Vec<_>>(), vec![4]);
    }

    #[test]
    fn forgets_ids_older_than_the_window() {
        let mut c = Cursor::first_run(0, 1);
        c.advance(&[event(1, 100, 1, None)], 10_000);
        c.advance(&[event(2, 100 + OVERLAP_SECONDS + 1, 1, None)], 10_000);
        assert_eq!(c.recent, vec![(2, 100 + OVERLAP_SECONDS + 1)]);
    }

    #[test]
    fn a_future_dated_event_does_not_drag_the_cursor_ahead() {
        let mut c = Cursor::first_run(10_000, 600);
        c.advance(&[event(1, 10_000 + 86_400, 1, None)], 10_000);
        assert_eq!(c.since, 10_000);
        // Still remembered, so the next overlapping query does not take it in twice.
        assert!(c.fresh(vec![event(1, 10_000 + 86_400, 1, None)]).is_empty());
        assert_eq!(c.fresh(vec![event(2, 10_000 + 60, 1, None)]).len(), 1);
    }

    #[test]
    fn nothing_taken_in_moves_nothing() {
        let mut c = Cursor::first_run(10_000, 60);
        let before = c.clone();
        c.advance(&[], 10_000);
        assert_eq!(c, before);
    }

    #[test]
    fn remembers_at_most_the_newest_ids() {
        let mut c = Cursor::first_run(100_000, 600);
        let burst: Vec<Event> = (0..MAX_RECENT as u64 + 500)
            .map(|i| event(i, 99_000 + (i as i64 % 600), 1, None))
            .collect();
        c.advance(&burst, 100_000);
        assert_eq!(c.recent.len(), MAX_RECENT);
        let oldest_kept = c.recent.iter().map(|(_, ts)| *ts).min().unwrap();
        assert!(
            burst
                .iter()
                .filter(|e| e.timestamp > oldest_kept)
                .all(|e| c.recent.contains(&(e.id, e.timestamp)))
        );
        assert_eq!(c.known_since(oldest_kept), MAX_RECENT as u64);
    }
}
