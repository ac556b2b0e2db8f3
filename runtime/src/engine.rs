//! The engine: one wasmtime [`Engine`] for every tenant (pooling allocator, epoch
//! interruption), the component compiled once and cached on disk by hash, and the
//! [`Linker`] that serves the bridge world.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use sha2::{Digest, Sha256};
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use crate::bindings::{self, BridgePre};
use crate::config::TenantConfig;
use crate::kv::HasKv;
use crate::limits::LimitSettings;
use crate::store::HostState;

/// How often the epoch advances; CPU deadlines are checked at this grain.
const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Builds the engine used for every tenant.
pub fn engine(limits: &LimitSettings, max_instances: u32) -> anyhow::Result<Engine> {
    let mut cfg = wasmtime::Config::new();
    cfg.epoch_interruption(true);
    let memory = limits.memory_bytes().max(1 << 20);
    let mut pool = PoolingAllocationConfig::default();
    pool.total_component_instances(max_instances)
        .total_core_instances(max_instances * 8)
        .total_memories(max_instances * 2)
        .total_tables(max_instances * 4)
        .total_stacks(max_instances)
        .max_core_instances_per_component(16)
        .max_memories_per_component(2)
        .max_tables_per_component(8)
        .max_memory_size(memory);
    // `linear_memory_keep_resident` stays 0: keeping the first 1 MiB of a slot
    // resident (memset on every reuse) made instantiation 31 µs instead of 17 µs
    // and the real bridge's idle tick 824 µs CPU instead of 738 µs (BENCHMARKS.md,
    // "The runtime's own cost"): the guest touches few of those pages per tick.
    cfg.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    // Reserve the whole 32-bit range (address space only, not RSS) so that
    // compiled code needs no bounds checks; the tenant's memory cap is
    // enforced by `max_memory_size` and the store's limiter.
    cfg.memory_reservation(1 << 32);
    cfg.memory_reservation_for_growth(0);
    Ok(Engine::new(&cfg)?)
}

/// Compiles `wasm_path`, or loads the compiled artifact cached under `cache_dir`.
pub fn load_component(
    engine: &Engine,
    wasm_path: &Path,
    cache_dir: &Path,
) -> anyhow::Result<Component> {
    let wasm = std::fs::read(wasm_path).with_context(|| {
        format!(
            "reading component {}; build it with `cargo xtask build`",
            wasm_path.display()
        )
    })?;
    let mut h = Sha256::new();
    h.update(&wasm);
    let mut compat = std::collections::hash_map::DefaultHasher::new();
    std::hash::Hash::hash(&engine.precompile_compatibility_hash(), &mut compat);
    let key = format!(
        "{}-{:016x}.cwasm",
        hex::encode(h.finalize()),
        std::hash::Hasher::finish(&compat)
    );
    let cached = cache_dir.join(key);
    if cached.exists() {
        // SAFETY: the file was produced by `Component::serialize` of this very
        // engine configuration (its name carries the compatibility hash), in a
        // cache directory only this host writes.
        match unsafe { Component::deserialize_file(engine, &cached) } {
            Ok(c) => return Ok(c),
            Err(e) => {
                tracing::warn!(path = %cached.display(), "ignoring unusable cached component: {e}")
            }
        }
    }
    let component = Component::new(engine, &wasm)
        .map_err(anyhow::Error::from)
        .with_context(|| format!("compiling component {}", wasm_path.display()))?;
    if let Err(e) = write_cache(&component, cache_dir, &cached) {
        tracing::warn!(dir = %cache_dir.display(), "cannot cache the compiled component: {e}");
    }
    Ok(component)
}

fn write_cache(component: &Component, dir: &Path, path: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, component.serialize()?)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// Registers every interface of the bridge world on `linker`.
///
/// Each capability is linked with its own view of the store's state: WASI and
/// HTTP through wasmtime's views, key-value through [`crate::kv::KvView`],
/// configuration through [`crate::config::TenantConfig`].
pub fn linker(engine: &Engine) -> anyhow::Result<Linker<HostState>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
    bindings::wasi::keyvalue::store::add_to_linker::<HostState, HasKv>(
        &mut linker,
        HostState::kv_view,
    )?;
    bindings::wasi::keyvalue::atomics::add_to_linker::<HostState, HasKv>(
        &mut linker,
        HostState::kv_view,
    )?;
    bindings::wasi::config::store::add_to_linker::<HostState, HasSelf<TenantConfig>>(
        &mut linker,
        |s| &mut s.config,
    )?;
    Ok(linker)
}

pub(crate) fn prepare(
    linker: &Linker<HostState>,
    component: &Component,
    path: &Path,
) -> anyhow::Result<BridgePre<HostState>> {
    let instance_pre = linker
        .instantiate_pre(component)
        .map_err(anyhow::Error::from)
        .with_context(|| format!("component {} does not fit the bridge world", path.display()))?;
    Ok(BridgePre::new(instance_pre)?)
}

/// Advances the engine's epoch until dropped.
pub(crate) struct EpochTicker {
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl EpochTicker {
    pub(crate) fn start(engine: Engine) -> Self {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        std::thread::Builder::new()
            .name("epoch".into())
            .spawn(move || {
                while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    engine.increment_epoch();
                }
            })
            .ok();
        Self { stop }
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}
