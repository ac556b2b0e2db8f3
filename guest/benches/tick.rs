//! Native CPU cost of the bridge logic, against the scripted fakes (no network, no
//! WASI): parsing a full events page, a tick that opens incidents, an idle tick.
//!
//! `CARGO_TARGET_DIR=/work/target-guest cargo bench -p mssp-guest --features testkit`
//! Prints one line per case: iterations and median time per iteration.

use std::hint::black_box;
use std::time::{Duration, Instant};

use mssp_guest::testkit::{NOW, World, amp_event};

const TD: u64 = 1_090_519_054;

/// Median of `rounds` timings of `f`.
fn measure(name: &str, rounds: usize, mut f: impl FnMut()) {
    let mut times: Vec<Duration> = (0..rounds)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed()
        })
        .collect();
    times.sort();
    println!(
        "{name:<48} {rounds:>5} rounds   median {:>12?}",
        times[rounds / 2]
    );
}

fn main() {
    let page: Vec<serde_json::Value> = (0..500)
        .map(|i| {
            amp_event(
                6_533_241_145_273_614_339 + i,
                NOW - 1000 + i as i64,
                TD,
                Some(&format!("{}", 900 + i % 50)),
                &format!("host-{i}"),
            )
        })
        .collect();
    let body = serde_json::json!({"version": "v1.2.0", "metadata": {"links": {}}, "data": page})
        .to_string();
    measure("parse one 500-event page", 200, || {
        let v: serde_json::Value = serde_json::from_str(black_box(&body)).unwrap_or_default();
        black_box(
            mssp_guest::event::page_from_value(&v)
                .map(|p| p.events.len())
                .unwrap_or(0),
        );
    });
    // The same function `POST /v1/bench/pipeline` runs inside the component.
    let cfg = World::new().cfg();
    measure(
        "bench::process_page (parse, filter, group, payloads)",
        200,
        || {
            black_box(mssp_guest::bench::process_page(black_box(body.as_bytes()), &cfg).ok());
        },
    );

    for n in [1u64, 50] {
        measure(
            &format!("tick taking in and opening {n} incident(s)"),
            50,
            || {
                let mut w = World::new();
                w.up.events = (0..n)
                    .map(|i| amp_event(100 + i, NOW - 100, TD, None, &format!("h{i}")))
                    .collect();
                black_box(w.tick());
            },
        );
    }

    let mut idle = World::new();
    idle.up.events = (0..200)
        .map(|i| amp_event(100 + i, NOW - 100, TD, None, &format!("h{i}")))
        .collect();
    idle.tick();
    measure("idle tick with 200 open incidents (reconcile)", 200, || {
        idle.clock.advance(60_000);
        black_box(idle.tick());
    });
}
