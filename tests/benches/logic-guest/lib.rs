//! The guest's `bench::process_page` in one warm instance: `handle-cron-event`
//! runs it on the page of `../bridge/logic.rs` `bench_iterations` times (after
//! one warm-up run), timing each run with the WASI monotonic clock, and stores
//! the timings under `bench/ns` (comma-separated nanoseconds) and the number of
//! groups under `bench/groups`. The guest's own `POST /v1/bench/pipeline` runs
//! the same function once per (fresh) instance.
#![cfg(target_arch = "wasm32")]

// The guest's logic modules, from their source: linking the `mssp-guest` crate
// would bring its own component exports along.
#[path = "../../../guest/src/bench.rs"]
mod bench;
#[path = "../../../guest/src/config.rs"]
#[allow(dead_code)] // compiled whole; the benchmark uses a part
mod config;
#[path = "../../../guest/src/detection.rs"]
#[allow(dead_code)] // compiled whole; the benchmark uses a part
mod detection;
#[path = "../../../guest/src/event.rs"]
#[allow(dead_code)] // compiled whole; the benchmark uses a part
mod event;
#[path = "../../../guest/src/incident.rs"]
#[allow(dead_code)] // compiled whole; the benchmark uses a part
mod incident;
#[path = "../../../guest/src/payload.rs"]
#[allow(dead_code)] // compiled whole; the benchmark uses a part
mod payload;
#[path = "../../../guest/src/severity.rs"]
#[allow(dead_code)] // compiled whole; the benchmark uses a part
mod severity;

#[path = "../bridge/logic.rs"]
mod logic;

wit_bindgen::generate!({
    path: "../../../wit",
    world: "mssp:bridge/bridge",
    generate_all,
});

use exports::wasi::http::incoming_handler::Guest as HttpGuest;
use wasi::http::types::{Fields, IncomingRequest, OutgoingResponse, ResponseOutparam};
use wasi::keyvalue::store;

struct Bench;

fn other(e: impl std::fmt::Debug) -> Error {
    Error::Other(format!("{e:?}"))
}

impl Guest for Bench {
    fn handle_cron_event(_: Metadata) -> Result<(), Error> {
        let iterations: usize = wasi::config::store::get("bench_iterations")
            .ok()
            .flatten()
            .and_then(|v| v.parse().ok())
            .unwrap_or(30);
        let cfg = config::Config::from_getter(&|k: &str| {
            logic::CONFIG
                .iter()
                .find(|(key, _)| *key == k)
                .map(|(_, v)| v.to_string())
        })
        .map_err(other)?;
        let body = logic::page_body();
        let groups = bench::process_page(&body, &cfg).map_err(other)?.groups;
        let mut times = Vec::with_capacity(iterations);
        for _ in 0..iterations {
            let start = std::time::Instant::now();
            let b = bench::process_page(std::hint::black_box(&body), &cfg).map_err(other)?;
            times.push(start.elapsed().as_nanos().to_string());
            std::hint::black_box(b);
        }
        let bucket = store::open("default").map_err(other)?;
        bucket
            .set("bench/ns", times.join(",").as_bytes())
            .map_err(other)?;
        bucket
            .set("bench/groups", groups.to_string().as_bytes())
            .map_err(other)?;
        Ok(())
    }
}

impl HttpGuest for Bench {
    fn handle(_: IncomingRequest, out: ResponseOutparam) {
        let resp = OutgoingResponse::new(Fields::new());
        let _ = resp.set_status_code(404);
        ResponseOutparam::set(out, Ok(resp));
    }
}

export!(Bench);
