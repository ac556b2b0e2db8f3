//! Reading Secure Endpoint events: one page when everything fits, otherwise a walk by
//! offset from the oldest end of the query towards the newest, a bounded number of
//! pages per tick, resumable across ticks.
//!
//! The API lists newest first, and events arriving while we page land at the newest
//! end (offset 0), so every offset shifts. Counting from the *oldest* end instead
//! (`total − offset`) is stable, and each page is asked to overlap the last one read by
//! a margin: the page is used only if it contains the newest item already read (the
//! boundary), which proves nothing lies between the two. A page that does not connect
//! (more arrivals than the margin) is asked again at the offset the new total gives.
//!
//! Events that arrive late (their timestamp lies inside the query, behind what was read)
//! are inserted *below* the newest items, not at offset 0, because the API orders by the
//! event's own timestamp (upstream-apis.md, "GET /v1/events"). So a boundary carried over
//! from an earlier tick is trusted only when the items at or below it are exactly the
//! ones known ([`Walker::verifying`]); otherwise the walk starts at the oldest end.

use std::collections::BTreeSet;

use crate::cursor::Paging;
use crate::event::{Event, EventPage};
use crate::upstream::{CallError, Upstream};

/// Pages read at most by one walk in one tick (100 000 events at 500 per page).
pub const MAX_PAGES_PER_TICK: usize = 200;
/// Pages in a row that failed to connect, at most, before a walk gives up for this tick.
const MAX_MISSES: u32 = 3;

/// One connected page: its new items (oldest first) and where the walk stands.
#[derive(Debug)]
pub struct PageRead {
    /// Items newer than the previous boundary and not known, oldest first.
    pub fresh: Vec<Event>,
    pub rejected: Vec<String>,
    /// Items on the page (all of them, known ones included).
    pub items: usize,
    /// Timestamps of every usable item newer than the previous boundary, known or not
    /// (for the cursor's counts).
    pub newer_ts: Vec<i64>,
    /// The page was connected at the oldest end of the query (no boundary): the walk
    /// reads the whole query, so its counts start afresh.
    pub from_oldest: bool,
    /// The newest end of the query has been read.
    pub done: bool,
}

/// A walk over one query, from the oldest end.
pub struct Walker {
    pub paging: Paging,
    limit: u64,
    margin: u64,
    offset: u64,
    /// The total the planned offset was computed from.
    planned_total: u64,
    misses: u32,
    pub pages: usize,
    /// The boundary came from an earlier tick: the first page that holds it must show
    /// exactly `paging.read` items at or below it, else the walk restarts at the oldest end.
    verify: bool,
}

impl Walker {
    /// Starts or resumes a walk, given the total of the query and the page size the
    /// service actually serves (both from a first page at offset 0).
    pub fn new(paging: Paging, total: u64, limit: u64) -> Walker {
        let limit = limit.max(2);
        let margin = (limit / 10).max(1);
        let mut w = Walker {
            paging,
            limit,
            margin,
            offset: 0,
            planned_total: total,
            misses: 0,
            pages: 0,
            verify: false,
        };
        w.plan(total);
        w
    }

    /// A walk that starts at a boundary read by an earlier tick (`paging.boundary`, with
    /// `paging.read` the items known at or below it): late arrivals may have been
    /// inserted below it since, so the first page that holds it is checked by count, and
    /// on a mismatch the walk reads the whole query from its oldest end instead.
    pub fn verifying(mut self) -> Walker {
        self.verify = self.paging.boundary.is_some();
        self
    }

    /// Plans the next page for a query of `total` items: it ends `margin` items past
    /// the last item read (or past the oldest end), so that up to `margin` arrivals
    /// before it is served still leave it connected.
    fn plan(&mut self, total: u64) {
        let unread = total.saturating_sub(self.paging.read);
        self.offset = unread.saturating_sub(self.limit - self.margin);
        self.planned_total = total;
    }

    /// Reads the next page. `Ok(None)`: it did not connect and is asked again next call
    /// (or, after `MAX_MISSES`, an error ends this tick's walk).
    pub fn step(
        &mut self,
        up: &mut Upstream<'_, '_>,
        event_types: &[u64],
        known: &BTreeSet<u64>,
    ) -> Result<Option<PageRead>, WalkError> {
        let offset = self.offset;
        let page = up
            .amp_events_page(self.paging.start, event_types, offset, self.limit)
            .map_err(WalkError::Call)?;
        self.pages += 1;
        let total = page.total.unwrap_or(offset + page.item_ids.len() as u64);
        let Some(newer) = self.newer_items(&page, offset, total) else {
            self.misses += 1;
            if self.misses >= MAX_MISSES {
                return Err(WalkError::Adrift(self.misses));
            }
            if self.paging.boundary.is_none() || self.verify {
                // Where the known items end was taken from an earlier tick and did not
                // hold: read from the oldest end.
                self.paging.read = 0;
                self.paging.boundary = None;
                self.verify = false;
            }
            // Events arrive faster than the margin allows for: widen it to twice the
            // shift just seen (at most half a page, so every page still progresses).
            let shift = total.saturating_sub(self.planned_total);
            self.margin = self.margin.max(shift.saturating_mul(2)).min(self.limit / 2);
            self.plan(total);
            return Ok(None);
        };
        if self.verify {
            self.verify = false;
            let boundary = self.paging.boundary;
            let pos = page
                .item_ids
                .iter()
                .position(|id| id.is_some() && *id == boundary);
            let below = pos.map(|p| total.saturating_sub(offset + p as u64));
            if below != Some(self.paging.read) {
                // Something arrived below the boundary: read everything, from the oldest end.
                self.paging.read = 0;
                self.paging.boundary = None;
                self.plan(total);
                return Ok(None);
            }
        }
        let from_oldest = self.paging.boundary.is_none();
        let newer_ts = page
            .events
            .iter()
            .filter(|e| newer.contains(&e.id))
            .map(|e| e.timestamp)
            .collect();
        let mut fresh: Vec<Event> = page
            .events
            .into_iter()
            .filter(|e| newer.contains(&e.id) && !known.contains(&e.id))
            .collect();
        fresh.sort_by_key(|e| (e.timestamp, e.id));
        self.misses = 0;
        let items = page.item_ids.len();
        if let Some(top) = page.item_ids.iter().flatten().next() {
            self.paging.boundary = Some(*top);
        }
        self.paging.read = total.saturating_sub(offset);
        self.plan(total);
        Ok(Some(PageRead {
            fresh,
            rejected: page.rejected,
            items,
            newer_ts,
            from_oldest,
            done: offset == 0,
        }))
    }

    /// The ids on the page that are newer than what was read before, or `None` when the
    /// page does not connect to it.
    fn newer_items(&self, page: &EventPage, offset: u64, total: u64) -> Option<BTreeSet<u64>> {
        let ids = &page.item_ids;
        if ids.is_empty() {
            return None;
        }
        let all = || ids.iter().flatten().copied().collect();
        match self.paging.boundary {
            Some(b) => {
                let pos = ids.iter().position(|id| *id == Some(b))?;
                Some(ids[..pos].iter().flatten().copied().collect())
            }
            // Without a boundary, only a page that reaches the oldest end connects: known
            // ids elsewhere prove nothing about what lies below them (late arrivals).
            None if offset + ids.len() as u64 >= total => Some(all()),
            None => None,
        }
    }
}

#[derive(Debug)]
pub enum WalkError {
    Call(CallError),
    /// Pages kept failing to connect (events arriving faster than the margin).
    Adrift(u32),
}

impl std::fmt::Display for WalkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WalkError::Call(e) => write!(f, "{e}"),
            WalkError::Adrift(n) => write!(
                f,
                "{n} event pages in a row did not connect to the last one read (events arriving too fast); paging resumes next tick"
            ),
        }
    }
}
