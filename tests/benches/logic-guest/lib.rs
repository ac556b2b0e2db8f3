//! `handle-cron-event` runs the guest's pure logic (`../bridge/logic.rs`) on one page of
//! 500 events `bench_iterations` times (after one warm-up run), timing each run
//! with the WASI monotonic clock, and stores the timings under `bench/ns`
//! (comma-separated nanoseconds) and the work done under `bench/bytes`.
#![cfg(target_arch = "wasm32")]

// The guest's logic modules, from their source: linking the `mssp-guest` crate
// would bring its own component exports along.
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
#[path = "../../../guest/src/time.rs"]
#[allow(dead_code)] // compiled whole; the benchmark uses a part
mod time;

mod guest {
    pub(crate) use crate::{config, detection, event, incident, payload};
}

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
        let cfg = logic::config().map_err(other)?;
        let names = logic::type_names();
        let body = logic::page_body();
        let bytes = logic::run(&cfg, &names, &body).map_err(other)?;
        let mut times = Vec::with_capacity(iterations);
        for _ in 0..iterations {
            let start = std::time::Instant::now();
            let b = logic::run(&cfg, &names, std::hint::black_box(&body)).map_err(other)?;
            times.push(start.elapsed().as_nanos().to_string());
            std::hint::black_box(b);
        }
        let bucket = store::open("default").map_err(other)?;
        bucket
            .set("bench/ns", times.join(",").as_bytes())
            .map_err(other)?;
        bucket
            .set("bench/bytes", bytes.to_string().as_bytes())
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
