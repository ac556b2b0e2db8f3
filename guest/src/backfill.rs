//! Backfill: replaying a past window `[since, until)` of Secure Endpoint events through
//! the same exactly-once take-in, oldest first, beside the live poll (which keeps its
//! own cursor and goes first in every tick).
//!
//! `POST /v1/backfill` only records a request (`backfill/request`); the next tick
//! installs it under the worker lease, fixing `until` at the live cursor, and walks the
//! window a bounded number of pages per tick. A detection already known (its incident
//! key exists, open or closed) adds nothing; a new one opens an incident.

use std::collections::BTreeSet;

use mssp_contract::civil;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::cursor::{Cursor, Paging};
use crate::detection;
use crate::event::Event;
use crate::lifecycle::Worker;
use crate::poll::{WalkError, Walker};
use crate::store::{self, StoreError};
use crate::upstream::PAGE_LIMIT;

pub const STATE: &str = "backfill";
pub const REQUEST: &str = "backfill/request";

/// Pages a backfill reads at most per tick (the live poll keeps the rest).
pub const PAGES_PER_TICK: usize = 50;

/// `POST /v1/backfill` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    pub since: i64,
    #[serde(default)]
    pub restart: bool,
}

/// The backfill in progress or last finished.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Backfill {
    /// Window start, Unix seconds.
    pub since: i64,
    /// Window end (the live cursor when the backfill was installed), Unix seconds.
    pub until: i64,
    pub done: bool,
    pub events_seen: u64,
    pub incidents_opened: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paging: Option<Paging>,
}

/// Parses and checks a request body; the error is the 400 message.
pub fn parse_request(body: &[u8], now_secs: i64) -> Result<Request, String> {
    let v: Value = serde_json::from_slice(body).map_err(|e| format!("body is not JSON: {e}"))?;
    let since = v
        .get("since")
        .and_then(Value::as_i64)
        .ok_or("body needs \"since\": Unix seconds (a whole number)")?;
    let restart = match v.get("restart") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err("\"restart\" must be true or false".into()),
    };
    if since <= 0 || since >= now_secs {
        return Err(format!(
            "\"since\" must be a past Unix time in seconds, got {since}"
        ));
    }
    Ok(Request { since, restart })
}

/// `true` when a backfill is installed and not finished, or a request waits.
pub fn running(kv: &mut dyn crate::ports::Kv) -> Result<bool, StoreError> {
    let state: Option<Backfill> = store::get_json(kv, STATE)?;
    Ok(state.is_some_and(|b| !b.done) || kv.get(REQUEST)?.is_some())
}

/// What `GET /v1/status` shows: the pending request or the installed backfill.
pub fn status(kv: &mut dyn crate::ports::Kv) -> Value {
    if let Ok(Some(req)) = store::get_json::<Request>(kv, REQUEST) {
        return json!({"since": civil::iso_seconds(req.since), "done": false, "events_seen": 0,
                      "incidents_opened": 0, "pending": true});
    }
    match store::get_json::<Backfill>(kv, STATE) {
        Ok(Some(b)) => json!({
            "since": civil::iso_seconds(b.since),
            "until": civil::iso_seconds(b.until),
            "done": b.done,
            "events_seen": b.events_seen,
            "incidents_opened": b.incidents_opened,
        }),
        Ok(None) => Value::Null,
        Err(e) => json!({"error": e.to_string()}),
    }
}

/// One tick's share of the backfill (called under the lease, after the live poll).
pub fn step(w: &mut Worker<'_, '_>, pages_allowed: usize) -> Result<(), StoreError> {
    let kv = &mut *w.up.ports.kv;
    let mut state: Option<Backfill> = store::get_json(kv, STATE)?;
    if let Some(req) = store::get_json::<Request>(kv, REQUEST)? {
        if req.restart || state.as_ref().is_none_or(|b| b.done) {
            let cursor: Option<Cursor> = store::get_json(kv, store::CURSOR)?;
            let until = cursor.map_or(w.up.now_ms() / 1000, |c| c.since);
            let b = Backfill {
                since: req.since,
                until,
                done: req.since >= until,
                events_seen: 0,
                incidents_opened: 0,
                paging: None,
            };
            store::put_json(w.up.ports.kv, STATE, &b)?;
            state = Some(b);
        }
        w.up.ports.kv.delete(REQUEST)?;
    }
    let Some(mut b) = state.filter(|b| !b.done) else {
        return Ok(());
    };
    if pages_allowed == 0 {
        return Ok(());
    }
    let cfg = w.up.cfg;
    let first = match w
        .up
        .amp_events_page(b.since, &cfg.event_types, 0, PAGE_LIMIT)
    {
        Ok(p) => p,
        Err(e) => {
            w.report.error(format!("backfill: {e}"));
            return Ok(());
        }
    };
    if first.next.is_none() {
        replay(w, &mut b, first.events)?;
        b.done = true;
        b.paging = None;
        return store::put_json(w.up.ports.kv, STATE, &b);
    }
    let total = first.total.unwrap_or(first.item_ids.len() as u64);
    let paging = b.paging.take().unwrap_or(Paging {
        start: b.since,
        read: 0,
        boundary: None,
    });
    let mut walker = Walker::new(paging, total, first.item_ids.len() as u64);
    let none = BTreeSet::new();
    while walker.pages < pages_allowed && w.up.remaining_ms() >= cfg.tick_budget_ms / 2 {
        let read = match walker.step(&mut w.up, &cfg.event_types, &none) {
            Ok(Some(read)) => read,
            Ok(None) => continue,
            Err(e @ (WalkError::Call(_) | WalkError::Adrift(_))) => {
                w.report.error(format!("backfill: {e}"));
                break;
            }
        };
        let past_window = read.fresh.iter().any(|e| e.timestamp >= b.until);
        replay(w, &mut b, read.fresh)?;
        b.done = read.done || past_window;
        b.paging = (!b.done).then(|| walker.paging.clone());
        store::put_json(w.up.ports.kv, STATE, &b)?;
        if b.done {
            break;
        }
    }
    Ok(())
}

/// Takes in the window's events of one page: new detections only.
fn replay(w: &mut Worker<'_, '_>, b: &mut Backfill, events: Vec<Event>) -> Result<(), StoreError> {
    let cfg = w.up.cfg;
    let mut in_window: Vec<Event> = events
        .into_iter()
        .filter(|e| e.timestamp >= b.since && e.timestamp < b.until)
        .collect();
    in_window.sort_by_key(|e| (e.timestamp, e.id));
    b.events_seen += in_window.len() as u64;
    w.report.backfill_events += in_window.len();
    let wanted: Vec<Event> = in_window
        .into_iter()
        .filter(|e| detection::is_wanted(cfg, e))
        .collect();
    w.report.events_kept += wanted.len();
    for group in detection::group(cfg, wanted) {
        // Known (open, closed, even unreadable): nothing to add.
        if w.up
            .ports
            .kv
            .get(&store::incident_key(&group.key))?
            .is_some()
        {
            continue;
        }
        w.take_in(&group)?;
        b.incidents_opened += 1;
        w.report.incidents_new += 1;
    }
    w.flush()
}
