//! The durable event cursor: a time watermark plus the ids already taken in, so that
//! overlapping queries and re-delivered events are recognised.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::event::Event;

/// The smallest late-arrival window (seconds): the overlap every query has always had,
/// for offsets that shift while paging and for clock skew.
pub const OVERLAP_SECONDS: i64 = 900;

/// Default late-arrival window (seconds), config key `late_window_seconds`: each query
/// starts this far before the watermark, so an event that reaches Secure Endpoint's
/// cloud up to this long after its own `timestamp` (an endpoint that was offline and
/// reconnects) is still fetched. `GET /v1/events` filters by the event's timestamp
/// (`start_date`), not by when it arrived (upstream-apis.md, "GET /v1/events"), so an
/// event that arrives later than the window behind the watermark is never listed by any
/// query the bridge makes: it is missed (README, "Late events").
pub const DEFAULT_LATE_WINDOW_SECONDS: u64 = 3_600;

/// Bounds of `late_window_seconds`: at least the historic overlap, at most one day
/// (every tick re-reads the window; see BENCHMARKS.md for what it costs).
pub const MIN_LATE_WINDOW_SECONDS: u64 = OVERLAP_SECONDS as u64;
pub const MAX_LATE_WINDOW_SECONDS: u64 = 86_400;

/// How far behind the bridge's clock the watermark stays when it catches up with a
/// quiet tenant (Secure Endpoint's clock and ours may differ by this much).
pub const CLOCK_MARGIN_SECONDS: i64 = 300;

/// The watermark catches up with the clock only when it lags by more than this, so an
/// idle tenant's cursor is written at most once per this many seconds.
pub const CATCH_UP_STEP_SECONDS: i64 = 300;

/// Ids remembered at most (the newest). When the window holds more, the ids dropped are
/// marked by [`Cursor::complete_after`]: re-read events at or before it are taken in
/// again and recognised by their incident records (which de-duplicate by event id), and
/// are not counted as late.
pub const MAX_RECENT: usize = 2_000;

/// Width (seconds) of the buckets in which the cursor counts the events of its window,
/// and the grain to which query starts are rounded down, so that a query's item count
/// can be compared with the buckets it covers.
pub const COUNT_BUCKET_SECONDS: i64 = 60;

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
    /// `(event id, timestamp)` of events taken in within the late-arrival window.
    #[serde(default)]
    pub recent: Vec<(u64, i64)>,
    /// A backlog being read page by page (absent when one page holds everything).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paging: Option<Paging>,
    /// Id of the newest event read: when the window holds more than one page, the first
    /// page is used up to this event, provided the items below it are as many as
    /// `counts` says (a late arrival below it changes their count).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub newest: Option<u64>,
    /// `(bucket start, items)`: how many items the service listed per
    /// [`COUNT_BUCKET_SECONDS`] of event time, at or below `newest`, over the window;
    /// rebuilt by every read of a whole window, added to by reads of its newest end.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub counts: Vec<(i64, u64)>,
    /// Unix seconds: `recent` holds every event taken in with a later timestamp; ids at
    /// or before it may have been dropped by the [`MAX_RECENT`] cap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub complete_after: Option<i64>,
    /// Unix seconds: where the first run started (`now − lookback_seconds`); no query
    /// starts before it, so the window never reaches further back than the look-back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<i64>,
}

impl Cursor {
    pub fn first_run(now_secs: i64, lookback_seconds: u64) -> Cursor {
        let since = now_secs - i64::try_from(lookback_seconds).unwrap_or(i64::MAX / 2);
        Cursor {
            since,
            recent: Vec::new(),
            paging: None,
            newest: None,
            counts: Vec::new(),
            complete_after: None,
            origin: Some(bucket(since)),
        }
    }

    /// Remembered ids at or after `start` (how many items of a query from there are
    /// known, as far as the cursor can tell).
    pub fn known_since(&self, start: i64) -> u64 {
        self.recent.iter().filter(|(_, ts)| *ts >= start).count() as u64
    }

    /// Items counted at or after `start` (a bucket start): how many items a query from
    /// `start` lists at or below `newest`, unless something arrived late.
    pub fn counted_since(&self, start: i64) -> u64 {
        self.counts
            .iter()
            .filter(|(b, _)| *b >= start)
            .map(|(_, n)| *n)
            .sum()
    }

    /// Forgets the counts from `start` on: a read of the whole query from there follows.
    pub fn recount_from(&mut self, start: i64) {
        self.counts.retain(|(b, _)| *b < start);
    }

    /// Counts items read (by their timestamps) that were not counted before.
    pub fn count(&mut self, timestamps: impl IntoIterator<Item = i64>) {
        for ts in timestamps {
            let b = bucket(ts);
            match self.counts.binary_search_by_key(&b, |(k, _)| *k) {
                Ok(i) => self.counts[i].1 += 1,
                Err(i) => self.counts.insert(i, (b, 1)),
            }
        }
    }

    /// Whether `id` is remembered.
    pub fn remembers(&self, id: u64) -> bool {
        self.recent.iter().any(|(i, _)| *i == id)
    }

    /// The `start_date` of the next query: `window` seconds (the late-arrival window)
    /// before the watermark, rounded down to a count bucket, never before the first
    /// run's start.
    pub fn query_from(&self, window: i64) -> i64 {
        let from = bucket(self.since - window.max(OVERLAP_SECONDS));
        self.origin.map_or(from, |o| from.max(o))
    }

    /// Whether a fresh event (not remembered) arrived late: its timestamp lies behind
    /// `watermark`, the `since` the tenant had before this tick, and the cursor would
    /// have remembered it had it been taken in before (it is after `complete_after`).
    pub fn is_late(&self, e: &Event, watermark: i64) -> bool {
        e.timestamp < watermark && self.complete_after.is_none_or(|c| e.timestamp > c)
    }

    /// After a poll that read its whole query (started at `polled_at`, Unix seconds),
    /// every event that had reached the service by then is taken in; only late
    /// arrivals can still come, and the late-arrival window catches those. So the
    /// watermark may follow the clock (less a margin for clock skew) instead of staying
    /// at the newest event: a tenant that went quiet after a burst stops counting the
    /// burst's time as unread. Moves only when it lags by more than
    /// [`CATCH_UP_STEP_SECONDS`]; returns whether it moved.
    pub fn catch_up(&mut self, polled_at: i64, window: i64) -> bool {
        let target = polled_at - CLOCK_MARGIN_SECONDS;
        if target - self.since <= CATCH_UP_STEP_SECONDS {
            return false;
        }
        self.since = target;
        self.forget_before(window);
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
    /// real present (its own future-dated event stays in `recent` until then). Ids
    /// older than the window (`window` seconds before the watermark) are forgotten.
    pub fn advance(&mut self, taken: &[Event], now_secs: i64, window: i64) {
        for e in taken {
            self.recent.push((e.id, e.timestamp));
            self.since = self.since.max(e.timestamp.min(now_secs));
        }
        self.forget_before(window);
        // Oldest first, so the newest `MAX_RECENT` are the tail.
        self.recent.sort_unstable_by_key(|(id, ts)| (*ts, *id));
        self.recent.dedup();
        let excess = self.recent.len().saturating_sub(MAX_RECENT);
        if let Some(dropped) = self.recent.drain(..excess).map(|(_, ts)| ts).max() {
            self.complete_after = Some(self.complete_after.map_or(dropped, |c| c.max(dropped)));
        }
    }

    fn forget_before(&mut self, window: i64) {
        let floor = self.query_from(window);
        self.recent.retain(|(_, ts)| *ts >= floor);
        if self.complete_after.is_some_and(|c| c < floor) {
            self.complete_after = None;
        }
        self.counts.retain(|(b, _)| *b >= floor);
    }
}

/// The start of the count bucket holding `ts`.
fn bucket(ts: i64) -> i64 {
    ts.div_euclid(COUNT_BUCKET_SECONDS) * COUNT_BUCKET_SECONDS
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detection::tests::event;

    /// The historic overlap, as a window.
    const W: i64 = OVERLAP_SECONDS;

    #[test]
    fn a_quiet_cursor_follows_the_clock_in_steps_and_forgets_what_it_leaves() {
        let mut c = Cursor::first_run(10_000, 3600);
        c.advance(&[event(1, 9_000, 1, None)], 10_000, W);
        assert_eq!(c.since, 9_000);
        // Within a step of the clock (less the margin): stays.
        assert!(!c.catch_up(9_000 + CLOCK_MARGIN_SECONDS + CATCH_UP_STEP_SECONDS, W));
        assert_eq!(c.since, 9_000);
        // Further behind: follows the clock, and the remembered id left the window.
        assert!(c.catch_up(20_000, W));
        assert_eq!(c.since, 20_000 - CLOCK_MARGIN_SECONDS);
        assert!(c.recent.is_empty());
        // Never backwards.
        assert!(!c.catch_up(15_000, W));
        assert_eq!(c.since, 20_000 - CLOCK_MARGIN_SECONDS);
    }

    #[test]
    fn first_run_looks_back() {
        let c = Cursor::first_run(10_000, 3600);
        assert_eq!(c.since, 6_400);
        // The first query reaches back exactly the look-back, never further.
        assert_eq!(c.query_from(W), bucket(6_400));
        assert_eq!(c.query_from(3_600), bucket(6_400));
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
        c.advance(&fresh, 10_000, W);
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
        c.advance(&[event(1, 100, 1, None)], 10_000, W);
        // The window is rounded down to a count bucket.
        let later = 100 + OVERLAP_SECONDS + COUNT_BUCKET_SECONDS + 1;
        c.advance(&[event(2, later, 1, None)], 10_000, W);
        assert_eq!(c.recent, vec![(2, later)]);
    }

    #[test]
    fn a_future_dated_event_does_not_drag_the_cursor_ahead() {
        let mut c = Cursor::first_run(10_000, 600);
        c.advance(&[event(1, 10_000 + 86_400, 1, None)], 10_000, W);
        assert_eq!(c.since, 10_000);
        // Still remembered, so the next overlapping query does not take it in twice.
        assert!(c.fresh(vec![event(1, 10_000 + 86_400, 1, None)]).is_empty());
        assert_eq!(c.fresh(vec![event(2, 10_000 + 60, 1, None)]).len(), 1);
    }

    #[test]
    fn nothing_taken_in_moves_nothing() {
        let mut c = Cursor::first_run(10_000, 60);
        let before = c.clone();
        c.advance(&[], 10_000, W);
        assert_eq!(c, before);
    }

    #[test]
    fn remembers_at_most_the_newest_ids() {
        let mut c = Cursor::first_run(100_000, 3_600);
        let burst: Vec<Event> = (0..MAX_RECENT as u64 + 500)
            .map(|i| event(i, 99_000 + (i as i64 % 600), 1, None))
            .collect();
        c.advance(&burst, 100_000, W);
        assert_eq!(c.recent.len(), MAX_RECENT);
        let oldest_kept = c.recent.iter().map(|(_, ts)| *ts).min().unwrap();
        assert!(
            burst
                .iter()
                .filter(|e| e.timestamp > oldest_kept)
                .all(|e| c.recent.contains(&(e.id, e.timestamp)))
        );
        assert_eq!(c.known_since(oldest_kept), MAX_RECENT as u64);
        // What the cap dropped is marked: counts from there on are not exact.
        assert!(
            c.complete_after
                .is_some_and(|t| t >= 99_000 && t <= oldest_kept)
        );
        // A re-read event the cap dropped is not counted as late.
        assert!(!c.is_late(&event(1_000_000, 99_000, 1, None), 99_599));
    }

    #[test]
    fn the_late_window_keeps_ids_and_queries_that_far_back() {
        let mut c = Cursor::first_run(100_000, 7_200);
        c.advance(&[event(1, 95_000, 1, None)], 100_000, 3_600);
        // Quiet afterwards: the watermark follows the clock.
        assert!(c.catch_up(97_000, 3_600));
        assert_eq!(c.since, 97_000 - CLOCK_MARGIN_SECONDS);
        // Still inside the hour-long window: remembered, and queried.
        assert_eq!(c.recent, vec![(1, 95_000)]);
        assert_eq!(
            c.query_from(3_600),
            bucket(97_000 - CLOCK_MARGIN_SECONDS - 3_600)
        );
        // With the old 900 s overlap it would be forgotten and no longer queried.
        let mut short = c.clone();
        short.advance(&[], 97_000, OVERLAP_SECONDS);
        assert!(short.recent.is_empty());
        assert!(short.query_from(OVERLAP_SECONDS) > 95_000);
        // An event 25 minutes old appearing now lies behind the watermark: late.
        let late = event(2, 97_000 - 1_500, 1, None);
        assert!(c.is_late(&late, c.since));
        assert!(!c.is_late(&event(3, c.since + 1, 1, None), c.since));
        // A window below the historic overlap is treated as the overlap; starts are
        // rounded down to a count bucket.
        assert_eq!(c.query_from(10), bucket(c.since - OVERLAP_SECONDS));
        assert_eq!(c.query_from(10) % COUNT_BUCKET_SECONDS, 0);
    }

    #[test]
    fn counts_per_bucket_answer_how_many_items_a_query_lists() {
        let mut c = Cursor::first_run(10_000, 3_600);
        c.count([6_400, 6_459, 6_460, 9_000]);
        assert_eq!(c.counts, vec![(6_360, 1), (6_420, 2), (9_000, 1)]);
        assert_eq!(c.counted_since(6_420), 3);
        c.recount_from(6_420);
        assert_eq!(c.counted_since(0), 1);
    }
}
