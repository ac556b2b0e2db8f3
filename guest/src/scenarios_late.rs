//! Late events (issue 14, finding 4): an event that reaches Secure Endpoint after the
//! cursor passed its timestamp is taken in once while it lies inside the late-arrival
//! window (`late_window_seconds`), on a quiet tenant and on a busy one, and counted.

use serde_json::{Value, json};

use crate::ports::Method;
use crate::testkit::{NOW, World, amp_event};

const TD: u64 = 1_090_519_054;

/// `n` events of one detection (one incident), evenly spread over the last 50 minutes.
fn steady(n: u64) -> Vec<Value> {
    (0..n)
        .map(|i| {
            let mut e = amp_event(
                10_000 + i,
                NOW - 3_000 + (i as i64 * 2_940 / n as i64),
                TD,
                None,
                "busy",
            );
            e["detection_id"] = json!("d-busy");
            e
        })
        .collect()
}

/// Ticks (a minute apart) until no backlog is left.
fn settle(w: &mut World) {
    for _ in 0..10 {
        let r = w.tick();
        assert!(r.errors.is_empty(), "{:?}", r.errors);
        w.clock.advance(60_000);
        if !r.backlog {
            return;
        }
    }
    panic!("the backlog did not drain");
}

/// One tick; returns its report and the `GET /v1/events` requests it made.
fn tick_counting(w: &mut World) -> (crate::report::TickReport, usize) {
    let before = w.up.calls(Method::Get, "/v1/events");
    let r = w.tick();
    w.clock.advance(60_000);
    (r, w.up.calls(Method::Get, "/v1/events") - before)
}

fn now(w: &World) -> i64 {
    w.clock.now_ms / 1000
}

#[test]
fn a_busy_tenant_reads_one_page_per_tick_yet_catches_a_late_event_once() {
    let mut w = World::new();
    w.up.events = steady(600);
    w.up.page_size = 100;
    settle(&mut w);
    assert_eq!(w.incidents().len(), 1);
    // Caught up: the window holds six pages, but its first one proves (by count) that
    // nothing arrived below the newest event read.
    let (r, calls) = tick_counting(&mut w);
    assert_eq!((calls, r.events_new, r.events_late), (1, 0, 0), "{r:?}");
    // A new event on top: still one page.
    w.up.events
        .push(amp_event(90_001, now(&w) - 30, TD, None, "top"));
    let (r, calls) = tick_counting(&mut w);
    assert_eq!((calls, r.events_new, r.events_late), (1, 1, 0), "{r:?}");
    // An offline laptop reconnects: its event is 25 minutes old, below 300 known ones.
    w.up.events
        .push(amp_event(90_002, now(&w) - 1_500, TD, None, "laptop"));
    let (r, calls) = tick_counting(&mut w);
    assert_eq!((r.events_new, r.events_late), (1, 1), "{r:?}");
    assert!(
        calls > 1,
        "the count no longer matched: the window was read"
    );
    assert_eq!(w.incidents().len(), 3);
    assert!(w.incidents().iter().any(|i| i.event_ids == vec![90_002]));
    // Exactly once, and back to one page per tick.
    for _ in 0..3 {
        let (r, calls) = tick_counting(&mut w);
        assert_eq!((calls, r.events_new, r.events_late), (1, 0, 0), "{r:?}");
    }
    assert_eq!(w.up.xdr_incidents.len(), 3);
    assert_eq!(w.up.snow_incidents.len(), 3);
}

#[test]
fn more_than_a_page_of_new_events_is_read_from_the_newest_known_one_not_the_oldest_end() {
    let mut w = World::new();
    w.up.events = steady(600);
    w.up.page_size = 100;
    settle(&mut w);
    let t = now(&w);
    for i in 0..250 {
        w.up.events
            .push(amp_event(80_000 + i, t - 20, TD, Some("d-new"), "new"));
    }
    let (r, calls) = tick_counting(&mut w);
    assert_eq!((r.events_new, r.events_late), (250, 0), "{r:?}");
    // First page, then about three pages above the newest known event; not all nine.
    assert!(calls <= 5, "{calls} requests");
    let (r, calls) = tick_counting(&mut w);
    assert_eq!((calls, r.events_new), (1, 0), "{r:?}");
}

#[test]
fn a_late_event_among_more_events_than_the_cursor_remembers_is_taken_in_once() {
    // 2 500 events in the window: more ids than `MAX_RECENT`.
    let mut w = World::new();
    w.up.events = steady(2_500);
    settle(&mut w);
    let (_, calls) = tick_counting(&mut w);
    assert_eq!(calls, 1);
    w.up.events
        .push(amp_event(90_003, now(&w) - 1_500, TD, None, "laptop"));
    let (r, _) = tick_counting(&mut w);
    assert_eq!(r.events_late, 1, "{r:?}");
    assert_eq!(w.incidents().len(), 2);
    for _ in 0..2 {
        let (r, calls) = tick_counting(&mut w);
        assert_eq!((calls, r.events_late), (1, 0), "{r:?}");
    }
    assert_eq!(w.incidents().len(), 2);
    assert_eq!(w.up.xdr_incidents.len(), 2, "no duplicate upstream");
    assert_eq!(w.up.snow_incidents.len(), 2);
}

#[test]
fn the_window_is_per_tenant_a_short_one_misses_what_a_long_one_catches() {
    for (window, caught) in [(None, true), (Some("900"), false), (Some("7200"), true)] {
        let mut w = World::new();
        if let Some(v) = window {
            w.set("late_window_seconds", v);
        }
        // Quiet: an empty poll, then the watermark follows the clock.
        for _ in 0..10 {
            tick_counting(&mut w);
        }
        w.up.events
            .push(amp_event(90_004, now(&w) - 1_500, TD, None, "laptop"));
        let (r, _) = tick_counting(&mut w);
        assert_eq!(
            (w.incidents().len(), r.events_late),
            (usize::from(caught), usize::from(caught)),
            "window {window:?}: {r:?}"
        );
    }
}

#[test]
fn an_event_older_than_the_window_is_missed() {
    let mut w = World::new();
    for _ in 0..10 {
        tick_counting(&mut w);
    }
    // 2 hours late, with the default one-hour window: never listed by any query.
    w.up.events
        .push(amp_event(90_005, now(&w) - 7_200, TD, None, "laptop"));
    for _ in 0..3 {
        let (r, _) = tick_counting(&mut w);
        assert_eq!((r.events_fetched, r.events_new), (0, 0), "{r:?}");
    }
    assert!(w.incidents().is_empty());
}
