//! One tick: poll events, take them in, drive incidents, reconcile with ServiceNow.
//! The same code serves the cron export and `POST /v1/tick`.

use mssp_contract::civil;

use crate::backfill;
use crate::config::Config;
use std::collections::BTreeSet;

use crate::cursor::{Cursor, Paging};
use crate::detection;
use crate::event::Event;
use crate::incident::{IncidentRecord, State};
use crate::lifecycle::{Progress, Worker};
use crate::poll::{MAX_PAGES_PER_TICK, WalkError, Walker};
use crate::ports::Ports;
use crate::report::TickReport;
use crate::retention;
use crate::store::{self, Index, StoreError};
use crate::upstream::{CallError, OPEN_STATES, PAGE_LIMIT, Upstream};

/// ServiceNow `sys_idIN` lists are sent in chunks of this many ids.
const RECONCILE_CHUNK: usize = 100;

/// How long the worker lease lives: long enough to outlast any tick that is still
/// running (budget plus one in-flight request and its retry waits).
pub fn lease_ttl_ms(cfg: &Config) -> i64 {
    (cfg.tick_budget_ms + 2 * cfg.http_timeout_ms + 5_000) as i64
}

pub fn lease_owner(ports: &mut Ports<'_>) -> String {
    format!("{:016x}", ports.clock.random_u64())
}

/// Runs one tick under the worker lease and records its report.
pub fn run_tick(ports: &mut Ports<'_>, cfg: &Config) -> TickReport {
    let owner = lease_owner(ports);
    let now = ports.clock.now_ms();
    let mut report = TickReport {
        started_at: civil::iso_millis(now),
        ..TickReport::default()
    };
    match store::acquire_lease(ports.kv, &owner, now, lease_ttl_ms(cfg)) {
        Ok(true) => {}
        Ok(false) => {
            report.outcome = "skipped".into();
            report.detail = Some("another tick or callback holds the worker lease".into());
            report.finished_at = report.started_at.clone();
            return report;
        }
        Err(e) => {
            report.outcome = "failed".into();
            report.detail = Some(format!("taking the worker lease: {e}"));
            report.finished_at = report.started_at.clone();
            return report;
        }
    }
    let index = match Index::load(ports.kv) {
        Ok(i) => i,
        Err(e) => {
            let _ = store::release_lease(ports.kv, &owner);
            report.outcome = "failed".into();
            report.detail = Some(format!("reading the incident index: {e}"));
            return report;
        }
    };
    let up = Upstream::new(ports, cfg, cfg.tick_budget_ms);
    let mut w = Worker::new(up, index, report, owner.clone());
    let result = tick(&mut w);
    let result = result.and(w.flush());
    w.up.finish();
    let mut report = w.report;
    w.up.account(&mut report);
    report.finished_at = civil::iso_millis(w.up.now_ms());
    report.outcome = match result {
        Err(e) => {
            report.detail = Some(format!("store failure: {e}"));
            "failed".into()
        }
        Ok(()) if report.errors_total > 0 || report.deferred > 0 => "partial".into(),
        Ok(()) => "ok".into(),
    };
    let kv = &mut *w.up.ports.kv;
    let _ = store::put_json(kv, store::LAST_TICK, &report);
    crate::upstream::record_counters(kv, &report);
    let _ = store::release_lease(kv, &owner);
    report
}

fn tick(w: &mut Worker<'_, '_>) -> Result<(), StoreError> {
    if let Err(e) = poll(w) {
        match e {
            PollError::Store(e) => return Err(e),
            PollError::Call(e) => w.report.error(format!("polling events: {e}")),
        }
    }
    // A backfill reads only when the live poll is caught up (it is never starved).
    let backfill_pages = if w.report.backlog {
        0
    } else {
        backfill::PAGES_PER_TICK
    };
    backfill::step(w, backfill_pages)?;
    let budget_left = drive_active(w)?;
    if budget_left {
        reconcile(w)?;
    }
    xdr_batch(w)?;
    // Closes of this tick go to `index/closed` first.
    w.flush()?;
    let now = w.up.now_ms();
    match retention::prune(w.up.ports.kv, now, w.up.cfg.retention_days) {
        Ok(n) => w.report.incidents_pruned += n,
        Err(e) => w.report.error(format!("retention: {e}")),
    }
    Ok(())
}

enum PollError {
    Store(StoreError),
    Call(CallError),
}

impl From<StoreError> for PollError {
    fn from(e: StoreError) -> Self {
        PollError::Store(e)
    }
}

/// Reads events since the cursor, takes the wanted ones into incident records, then
/// moves the cursor past everything taken in (records first, cursor last: a crash in
/// between re-reads events that the records already hold, which adds nothing).
///
/// Every query starts `late_window_seconds` before the watermark, busy tenant or quiet:
/// `GET /v1/events` filters and orders by the event's own timestamp, so an event that
/// reaches the cloud late is listed below events already read, never at the top
/// (upstream-apis.md, "GET /v1/events"). Events inside the window are taken in once (by
/// id against `recent`, which covers the window); those behind the watermark the tenant
/// had are counted as late.
///
/// One page usually holds the whole window. When it does not, the first page is used up
/// to the newest event read before only if the items below it are exactly the ones
/// known (their count proves that nothing arrived below it); otherwise the window is
/// read from its oldest end (`poll::Walker`), the cursor moving after each page, until
/// the newest end is reached or this tick's share of pages or time is used; the next
/// tick resumes.
fn poll(w: &mut Worker<'_, '_>) -> Result<(), PollError> {
    let cfg = w.up.cfg;
    let window = i64::try_from(cfg.late_window_seconds).unwrap_or(crate::cursor::OVERLAP_SECONDS);
    let now = w.up.now_ms();
    let stored: Option<Cursor> = store::get_json(w.up.ports.kv, store::CURSOR)?;
    let first_run = stored.is_none();
    let mut cursor = stored.unwrap_or_else(|| Cursor::first_run(now / 1000, cfg.lookback_seconds));
    // Events behind this watermark, taken in now, arrived late (none on a first run).
    let watermark = (!first_run).then_some(cursor.since);
    let start = cursor
        .paging
        .as_ref()
        .map_or(cursor.query_from(window), |p| p.start);
    let first =
        w.up.amp_events_page(start, &cfg.event_types, 0, PAGE_LIMIT)
            .map_err(PollError::Call)?;
    let fits = first.next.is_none();
    let total = first.total.unwrap_or(first.item_ids.len() as u64);
    let position = |b: u64| first.item_ids.iter().position(|id| *id == Some(b));
    let boundary_at = match &cursor.paging {
        // Resuming a walk: what lies above its boundary is what is left.
        Some(p) => p.boundary.and_then(position),
        // Above the newest event read before, provided the items at or below it are
        // as many as counted (a late arrival below it breaks the count).
        None => cursor
            .newest
            .and_then(position)
            .filter(|pos| cursor.counted_since(start) == total.saturating_sub(*pos as u64)),
    };
    if fits || boundary_at.is_some() {
        // Everything new is on this page: all of it (de-duplicated by id) when it holds
        // the whole query, else what lies above the newest event read before.
        let newer: Option<BTreeSet<u64>> = boundary_at
            .filter(|_| !fits)
            .map(|pos| first.item_ids[..pos].iter().flatten().copied().collect());
        w.report.events_fetched += first.item_ids.len();
        note_rejected(w, &first.rejected);
        let top = first.item_ids.iter().flatten().next().copied();
        let events: Vec<Event> = first
            .events
            .into_iter()
            .filter(|e| newer.as_ref().is_none_or(|n| n.contains(&e.id)))
            .collect();
        if newer.is_none() {
            // The whole query is on this page: count it afresh.
            cursor.recount_from(start);
        }
        cursor.count(events.iter().map(|e| e.timestamp));
        let fresh = cursor.fresh(events);
        count_late(w, &cursor, &fresh, watermark);
        take_in_events(w, &fresh)?;
        let was_paging = cursor.paging.take().is_some();
        let newest = top.or(cursor.newest);
        let mut changed = first_run || was_paging || !fresh.is_empty() || newest != cursor.newest;
        cursor.newest = newest;
        cursor.advance(&fresh, now / 1000, window);
        // The whole query was read: the watermark may follow the clock.
        changed |= cursor.catch_up(now / 1000, window);
        if changed {
            store::put_json(w.up.ports.kv, store::CURSOR, &cursor)?;
        }
        w.report.cursor = Some(civil::iso_seconds(cursor.since));
        return Ok(());
    }
    let known: BTreeSet<u64> = cursor.recent.iter().map(|(id, _)| *id).collect();
    let resumed = cursor.paging.is_some();
    let paging = cursor.paging.take().unwrap_or_else(|| {
        // Start above the newest event read before, checked by the count below it
        // (`Walker::verifying`), else at the oldest end of the window.
        match cursor.newest {
            Some(b) if cursor.remembers(b) => Paging {
                start,
                read: cursor.counted_since(start),
                boundary: Some(b),
            },
            _ => Paging {
                start,
                read: 0,
                boundary: None,
            },
        }
    });
    let mut walker = Walker::new(paging, total, first.item_ids.len() as u64);
    if !resumed {
        walker = walker.verifying();
    }
    cursor.paging = Some(walker.paging.clone());
    let mut moved = false;
    let result = loop {
        if walker.pages >= MAX_PAGES_PER_TICK || w.up.remaining_ms() < cfg.tick_budget_ms / 2 {
            w.report.backlog = true;
            break Ok(());
        }
        let read = match walker.step(&mut w.up, &cfg.event_types, &known) {
            Ok(Some(read)) => read,
            Ok(None) => continue,
            Err(WalkError::Call(e)) => break Err(PollError::Call(e)),
            Err(e @ WalkError::Adrift(_)) => {
                w.report.error(format!("polling events: {e}"));
                w.report.backlog = true;
                break Ok(());
            }
        };
        w.report.events_fetched += read.items;
        note_rejected(w, &read.rejected);
        if read.from_oldest {
            cursor.recount_from(walker.paging.start);
        }
        cursor.count(read.newer_ts.iter().copied());
        count_late(w, &cursor, &read.fresh, watermark);
        take_in_events(w, &read.fresh)?;
        cursor.advance(&read.fresh, now / 1000, window);
        cursor.paging = (!read.done).then(|| walker.paging.clone());
        if read.done {
            cursor.newest = walker.paging.boundary;
        }
        store::put_json(w.up.ports.kv, store::CURSOR, &cursor)?;
        moved = true;
        if read.done {
            break Ok(());
        }
    };
    if first_run && !moved {
        store::put_json(w.up.ports.kv, store::CURSOR, &cursor)?;
    }
    w.report.cursor = Some(civil::iso_seconds(cursor.since));
    result
}

/// Counts the fresh events that arrived late: behind the watermark the tenant had at
/// the start of the tick (`None` on a first run, where nothing is late).
fn count_late(w: &mut Worker<'_, '_>, cursor: &Cursor, fresh: &[Event], watermark: Option<i64>) {
    if let Some(mark) = watermark {
        w.report.events_late += fresh.iter().filter(|e| cursor.is_late(e, mark)).count();
    }
}

fn note_rejected(w: &mut Worker<'_, '_>, rejected: &[String]) {
    w.report.events_rejected += rejected.len();
    for why in rejected.iter().take(3) {
        w.report.error(format!("event skipped: {why}"));
    }
}

/// Takes fresh events (oldest first) into their incident records and writes the index,
/// so that every record taken in is indexed before the cursor leaves its events behind.
fn take_in_events(w: &mut Worker<'_, '_>, fresh: &[Event]) -> Result<(), StoreError> {
    w.report.events_new += fresh.len();
    let cfg = w.up.cfg;
    let wanted: Vec<Event> = fresh
        .iter()
        .filter(|e| detection::is_wanted(cfg, e))
        .cloned()
        .collect();
    w.report.events_kept += wanted.len();
    for group in detection::group(cfg, wanted) {
        if w.take_in(&group)? {
            w.report.incidents_new += 1;
        } else {
            w.report.incidents_updated += 1;
        }
    }
    w.flush()
}

/// Drives every incident that has work, oldest first. Returns false when the time
/// budget ran out.
fn drive_active(w: &mut Worker<'_, '_>) -> Result<bool, StoreError> {
    let keys: Vec<String> = w
        .index
        .entries
        .iter()
        .filter(|e| e.needs_work)
        .map(|e| e.key.clone())
        .collect();
    for (i, key) in keys.iter().enumerate() {
        if w.up.remaining_ms() == 0 {
            w.report.deferred += keys.len() - i;
            return Ok(false);
        }
        let Some(mut rec) = load_or_report(w, key)? else {
            continue;
        };
        match w.drive(&mut rec)? {
            Progress::OutOfBudget => {
                w.report.deferred += keys.len() - i;
                return Ok(false);
            }
            Progress::Waiting | Progress::Failed => w.report.deferred += 1,
            Progress::Settled => {}
        }
    }
    Ok(true)
}

/// A record named by the index; an unreadable one is reported and skipped.
fn load_or_report(
    w: &mut Worker<'_, '_>,
    key: &str,
) -> Result<Option<crate::incident::IncidentRecord>, StoreError> {
    match store::load_incident(w.up.ports.kv, key) {
        Ok(Some(rec)) => Ok(Some(rec)),
        Ok(None) => {
            w.report
                .error(format!("{key}: indexed but missing from the store"));
            Ok(None)
        }
        Err(StoreError::Corrupt { key, detail }) => {
            w.report
                .error(format!("{key}: unreadable record: {detail}"));
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// Closed incidents are watched for a re-open this long after the bridge closed them.
pub const REOPEN_WATCH_MS: i64 = 7 * 86_400_000;
/// At most this many closed incidents (the most recently closed) are watched.
pub const REOPEN_WATCH_MAX: usize = 50;
/// With no open incident to ride along with, the watched closed ones are queried at
/// most this often (one request).
pub const REOPEN_QUIET_EVERY_MS: i64 = 10 * 60_000;
/// When the watched closed incidents were last queried on their own (Unix ms).
const REOPEN_CHECKED: &str = "reconcile/reopen_checked_at";
/// When the last reconcile poll that got its answers ran (Unix ms).
const RECONCILED_AT: &str = "reconcile/last_at";

/// Closed incidents still watched for a re-open: `(sys_id, key)`, newest close first.
fn watched_closed(w: &mut Worker<'_, '_>, now: i64) -> Vec<(String, String)> {
    let closed: crate::retention::ClosedIndex =
        store::get_json(w.up.ports.kv, crate::retention::CLOSED_INDEX)
            .ok()
            .flatten()
            .unwrap_or_default();
    let mut recent: Vec<_> = closed
        .entries
        .into_iter()
        .filter(|e| now - e.closed_at_ms < REOPEN_WATCH_MS)
        .collect();
    recent.sort_by_key(|e| std::cmp::Reverse(e.closed_at_ms));
    recent
        .into_iter()
        .filter_map(|e| Some((e.sys_id?, e.key)))
        .take(REOPEN_WATCH_MAX)
        .collect()
}

/// One ServiceNow query per 100 incidents for the state of every open incident, and of
/// the recently closed ones riding along (no extra request while any incident is open;
/// alone, at most one request per `REOPEN_QUIET_EVERY_MS`):
/// - open, ServiceNow in a `close_states` state: closed here even if no callback came;
/// - open or closed, a state neither open (1, 2, 3) nor in `close_states` (a custom
///   state): warned once per incident and state (audit, report warning, counter);
/// - closed by the bridge, ServiceNow open again: noticed once (audit, report warning,
///   counter) and told in a work note ([`payload::reopened_note`]); the bridge does not
///   reopen XDR or contain the host again.
///
/// At most once per `reconcile_interval_secs` (the poll that got its answers counts; one
/// deferred or failed is tried again next tick).
fn reconcile(w: &mut Worker<'_, '_>) -> Result<(), StoreError> {
    let now = w.up.now_ms();
    let last: i64 = store::get_json(w.up.ports.kv, RECONCILED_AT)
        .ok()
        .flatten()
        .unwrap_or(0);
    let interval_ms =
        i64::try_from(w.up.cfg.reconcile_interval_secs.saturating_mul(1000)).unwrap_or(i64::MAX);
    if now.saturating_sub(last) < interval_ms {
        return Ok(());
    }
    let open: Vec<(String, String)> = w
        .index
        .entries
        .iter()
        .filter(|e| e.state == State::Open && !w.opened_now.contains(&e.key))
        .filter_map(|e| Some((e.sys_id.clone()?, e.key.clone())))
        .collect();
    let mut closed = watched_closed(w, now);
    if open.is_empty() && !closed.is_empty() {
        let last: i64 = store::get_json(w.up.ports.kv, REOPEN_CHECKED)
            .ok()
            .flatten()
            .unwrap_or(0);
        if now - last < REOPEN_QUIET_EVERY_MS {
            closed.clear();
        } else {
            let _ = store::put_json(w.up.ports.kv, REOPEN_CHECKED, &now);
        }
    }
    let asked: Vec<(String, String, bool)> = open
        .into_iter()
        .map(|(s, k)| (s, k, true))
        .chain(closed.into_iter().map(|(s, k)| (s, k, false)))
        .collect();
    if !asked.is_empty() {
        reconcile_asked(w, &asked)?;
    }
    Ok(())
}

/// The reconcile poll itself: one query per [`RECONCILE_CHUNK`] incidents; noted in
/// [`RECONCILED_AT`] once every query got its answer.
fn reconcile_asked(
    w: &mut Worker<'_, '_>,
    asked: &[(String, String, bool)],
) -> Result<(), StoreError> {
    let started = w.up.now_ms();
    for chunk in asked.chunks(RECONCILE_CHUNK) {
        let ids: Vec<String> = chunk.iter().map(|(s, _, _)| s.clone()).collect();
        let states = match w.up.snow_states_among(&ids) {
            Ok(c) => c,
            Err(e) => {
                w.report.error(format!("reconcile with ServiceNow: {e}"));
                return Ok(());
            }
        };
        for c in states {
            let Some((_, key, was_open)) = chunk.iter().find(|(s, _, _)| *s == c.sys_id) else {
                continue;
            };
            let Some(mut rec) = load_or_report(w, key)? else {
                continue;
            };
            if !*was_open {
                snow_state_after_close(w, &mut rec, &c)?;
                continue;
            }
            if !w.up.cfg.close_states.contains(&c.state) {
                if rec.state == State::Open && !OPEN_STATES.contains(&c.state.as_str()) {
                    warn_unknown_state(w, &mut rec, &c)?;
                }
                continue;
            }
            let now = w.up.now_ms();
            if rec.begin_close("reconcile", &c.state, c.close_code.as_deref(), now) {
                w.checkpoint(&mut rec, "closing")?;
            } else if rec.state != State::Closing {
                // Closed already (its index line lagged); nothing to do.
                continue;
            }
            match w.drive(&mut rec)? {
                Progress::OutOfBudget => {
                    // Its answers are in: the closes left are driven by the next ticks.
                    w.report.deferred += 1;
                    let _ = store::put_json(w.up.ports.kv, RECONCILED_AT, &started);
                    return Ok(());
                }
                Progress::Waiting | Progress::Failed => w.report.deferred += 1,
                Progress::Settled => {}
            }
        }
    }
    // Losing this only costs one poll before its time.
    let _ = store::put_json(w.up.ports.kv, RECONCILED_AT, &started);
    Ok(())
}

/// A ServiceNow state that is neither open nor in `close_states`: said once per
/// incident and state (audit entry, report warning naming the key to change, counter).
fn warn_unknown_state(
    w: &mut Worker<'_, '_>,
    rec: &mut IncidentRecord,
    c: &crate::upstream::SnowClosed,
) -> Result<(), StoreError> {
    if rec.snow_unknown_states.contains(&c.state) {
        return Ok(());
    }
    let cfg = w.up.cfg;
    let msg = format!(
        "ServiceNow ticket {} is in state {}, which is neither open (1, 2, 3) nor one of \
         close_states ({}); the bridge leaves the incident as it is. If state {} closes \
         tickets for this customer, add it to the config key close_states",
        c.number,
        c.state,
        cfg.close_states.join(","),
        c.state
    );
    rec.snow_unknown_states.push(c.state.clone());
    let now = w.up.now_ms();
    rec.audit(now, "reconcile", &msg);
    w.save(rec)?;
    w.report.snow_unknown_states += 1;
    w.report.warning(format!("{}: {msg}", rec.key));
    Ok(())
}

/// The ServiceNow state of a ticket whose incident the bridge has closed: a re-open is
/// noticed once and told in a work note; any other state is still closed (no warning:
/// an instance's own closed state, or one `close_states` no longer lists).
fn snow_state_after_close(
    w: &mut Worker<'_, '_>,
    rec: &mut IncidentRecord,
    c: &crate::upstream::SnowClosed,
) -> Result<(), StoreError> {
    if rec.state != State::Closed {
        return Ok(());
    }
    let now = w.up.now_ms();
    // Only a re-open matters once the loop is closed: any state that is not open (one of
    // `close_states`, or an instance's own closed state) is still closed.
    if !OPEN_STATES.contains(&c.state.as_str()) {
        if rec.snow_reopened {
            rec.snow_reopened = false;
            let msg = format!("ServiceNow ticket closed again (state {})", c.state);
            rec.audit(now, "reconcile", &msg);
            w.save(rec)?;
        }
    } else if !rec.snow_reopened {
        rec.snow_reopened = true;
        rec.reopen_note_pending = true;
        let msg = format!(
            "ServiceNow ticket {} re-opened (state {}) after the bridge closed the loop; \
             XDR is not reopened and the host not contained again",
            c.number, c.state
        );
        rec.audit(now, "reconcile", &msg);
        w.save(rec)?;
        w.report.snow_reopened += 1;
        w.report.warning(format!("{}: {msg}", rec.key));
    }
    if rec.reopen_note_pending {
        let note = crate::payload::reopened_note(rec, &c.state);
        let outcome = match w.up.snow_work_note(&c.sys_id, &note) {
            Ok(()) => "work note written: what a re-open does and does not do".to_string(),
            Err(e) if e.status().is_some() => format!("re-open work note not written: {e}"),
            Err(e) => {
                w.report
                    .error(format!("{}: re-open work note: {e}", rec.key));
                return Ok(());
            }
        };
        rec.reopen_note_pending = false;
        rec.audit(w.up.now_ms(), "reconcile", &outcome);
        w.save(rec)?;
    }
    Ok(())
}

/// The XDR writes of this tick, read first in one batch: every incident whose XDR close
/// or follow-up update came due while it was driven (by `drive_active`, `reconcile`)
/// waits in `w.xdr_due`; here ONE `GET /ctia/bulk?incidents=…` (per
/// [`crate::upstream::BULK_CHUNK`] ids) reads them all, then each is driven again and
/// writes against what XDR holds (`payload::xdr_close`, `payload::xdr_update`). An
/// incident that could not be read fails its own step (audited, tried again next tick,
/// a definite refusal given up after a few); a used-up budget leaves them all for the
/// next tick.
fn xdr_batch(w: &mut Worker<'_, '_>) -> Result<(), StoreError> {
    let keys = std::mem::take(&mut w.xdr_due);
    if keys.is_empty() || w.up.remaining_ms() == 0 {
        w.report.deferred += keys.len();
        return Ok(());
    }
    let mut recs = Vec::new();
    for key in &keys {
        if let Some(rec) = load_or_report(w, key)? {
            recs.push(rec);
        }
    }
    let ids: Vec<crate::incident::XdrRef> = recs.iter().filter_map(|r| r.xdr.clone()).collect();
    // One outcome per incident: one it cannot read fails only its own step.
    let read = w.up.xdr_read_incidents(&ids);
    w.xdr_read.extend(read);
    for (i, mut rec) in recs.into_iter().enumerate() {
        match w.drive(&mut rec)? {
            Progress::OutOfBudget => {
                w.report.deferred += keys.len() - i;
                return Ok(());
            }
            Progress::Waiting | Progress::Failed => w.report.deferred += 1,
            Progress::Settled => {}
        }
    }
    Ok(())
}
