//! The data of one store: one invocation (a tick or an HTTP request) of one tenant.

use std::sync::Arc;

use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use crate::config::TenantConfig;
use crate::kv::{KvView, TenantKv};
use crate::limits::MemoryCap;
use crate::outbound::OutboundPolicy;

/// Everything one store holds. Each capability reaches only its own part, through
/// its own view: [`WasiView`], [`WasiHttpView`] (with the [`OutboundPolicy`] as its
/// hooks), [`HostState::kv_view`], and the [`TenantConfig`] itself.
pub struct HostState {
    pub table: ResourceTable,
    pub wasi: WasiCtx,
    pub http: WasiHttpCtx,
    pub hooks: OutboundPolicy,
    pub kv: TenantKv,
    pub config: TenantConfig,
    pub memory: MemoryCap,
    pub tenant: Arc<str>,
}

impl HostState {
    /// The key-value capability's view: the tenant's namespace and the resource table.
    pub fn kv_view(&mut self) -> KvView<'_> {
        KvView {
            kv: &mut self.kv,
            table: &mut self.table,
        }
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for HostState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.hooks,
        }
    }
}
