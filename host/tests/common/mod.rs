//! What the host's command-line tests share.

use std::path::{Path, PathBuf};

/// The bridge component built by `cargo xtask build`; a missing one fails
/// the test with the fix rather than passing vacuously.
pub fn component() -> PathBuf {
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
        .join("mssp_guest.wasm");
    assert!(
        wasm.exists(),
        "component {} is missing: run `cargo xtask build` first",
        wasm.display()
    );
    wasm
}
