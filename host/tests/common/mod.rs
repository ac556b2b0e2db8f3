//! What the host's command-line tests share.

#[allow(dead_code)] // each suite uses part of it
pub mod serve;

/// The tests' real `redis-server` (one file shared with the e2e crate's harness).
#[allow(dead_code)] // only the Redis suites start one
#[path = "../../../tests/src/redis_server.rs"]
pub mod redis_server;

use std::path::{Path, PathBuf};

/// The bridge component built by `cargo xtask build`.
#[allow(dead_code)] // not every test file that includes this module uses it
pub fn component() -> PathBuf {
    wasm("mssp_guest")
}

/// A component built by `cargo xtask build` (e.g. "mssp_probe"); a missing
/// one fails the test with the fix rather than passing vacuously.
pub fn wasm(name: &str) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let wasm = std::env::var_os("MSSP_WASM_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| target.join("wasm32-wasip2").join("release"))
        .join(format!("{name}.wasm"));
    assert!(
        wasm.exists(),
        "component {} is missing: run `cargo xtask build` first",
        wasm.display()
    );
    wasm
}
