//! Host-side bindings of the bridge world (`wit/bridge.wit`).
//!
//! Standard WASI packages map onto wasmtime's own implementations; the two
//! interfaces wasmtime does not ship at the versions Spin implements
//! (`wasi:keyvalue@0.2.0-draft2`, `wasi:config@0.2.0-draft-2024-09-27`) are
//! implemented by this crate ([`crate::kv`], [`crate::config`]).

wasmtime::component::bindgen!({
    path: "../wit",
    world: "mssp:bridge/bridge",
    imports: { default: async | trappable },
    exports: { default: async },
    with: {
        "wasi:io": wasmtime_wasi::p2::bindings::io,
        "wasi:clocks": wasmtime_wasi::p2::bindings::clocks,
        "wasi:random": wasmtime_wasi::p2::bindings::random,
        "wasi:http": wasmtime_wasi_http::p2::bindings::http,
        "wasi:keyvalue/store.bucket": crate::kv::BucketHandle,
        "wasi:keyvalue/atomics.cas": crate::kv::CasHandle,
    },
});
