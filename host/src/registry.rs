//! Where the tenant registry (tenants, their sealed secrets) lives, and how a running
//! `serve` follows its edits.
//!
//! - Beside an SQLite store: the `database` file itself ([`TenantStore`]).
//! - On a shared store (Redis, several replicas): one image of that same SQLite
//!   database, kept in the store ([`RegistryBackend`]) and versioned. A command opens
//!   the image into a private temporary file, edits it with the same code and
//!   transactions as the local registry, and writes it back only over the version it
//!   read ([`Registry::publish`]): an edit is atomic across every replica and
//!   operator, and one made on a stale image is refused whole, never merged. Secrets
//!   stay sealed in the image exactly as in the file.
//!
//! `serve` checks the registry's version every few seconds ([`Registry::follow`]) and
//! applies what changed — tenants added, edited or removed — without a restart.

use std::collections::BTreeMap;
use std::ops::Deref;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use sha2::{Digest, Sha256};

use crate::scheduler::Scheduler;
use crate::secrets::MasterKey;
use crate::tenants::{ResolvedTenant, TenantStore};
use mssp_runtime::Runtime;
use mssp_runtime::kv::{KvBackend, RegistryBackend};

/// How often `serve` looks for registry edits.
pub const FOLLOW_EVERY: Duration = Duration::from_secs(5);

/// The registry image's place on a shared store.
struct Shared {
    kv: Arc<dyn KvBackend>,
    /// The version the local copy was read at.
    version: u64,
    /// The working copy's change count when it was read or last published.
    published_changes: u64,
    /// The private copy being edited (removed with the folder).
    dir: tempfile::TempDir,
}

impl Shared {
    fn backend(&self) -> anyhow::Result<&dyn RegistryBackend> {
        self.kv
            .registry()
            .ok_or_else(|| anyhow!("the key-value store keeps no registry"))
    }
}

/// The tenant registry of this command or server.
pub struct Registry {
    store: TenantStore,
    shared: Option<Shared>,
}

impl Deref for Registry {
    type Target = TenantStore;

    fn deref(&self) -> &TenantStore {
        &self.store
    }
}

impl Registry {
    /// The registry beside an SQLite store: the `database` file.
    pub fn local(store: TenantStore) -> Registry {
        Registry {
            store,
            shared: None,
        }
    }

    /// The registry `kv` keeps, when it keeps one (a shared store), read now.
    /// `None`: the store keeps none (SQLite).
    pub fn shared(kv: &Arc<dyn KvBackend>) -> anyhow::Result<Option<Registry>> {
        let Some(backend) = kv.registry() else {
            return Ok(None);
        };
        let dir = tempfile::tempdir().context("a temporary folder for the registry")?;
        let path = dir.path().join("registry.db");
        let version = match backend.load()? {
            Some((image, version)) => {
                std::fs::write(&path, image).context("writing the registry's working copy")?;
                version
            }
            None => 0,
        };
        let store = TenantStore::open(&path)?;
        let published_changes = store.changes()?;
        Ok(Some(Registry {
            store,
            shared: Some(Shared {
                kv: kv.clone(),
                version,
                published_changes,
                dir,
            }),
        }))
    }

    /// Writes this command's edits back to a shared store, over the version they were
    /// made on. Nothing to do for a local registry (its transactions are committed) or
    /// when nothing changed since the last publish.
    /// Errors: another operator or replica edited the registry meanwhile (nothing of
    /// this command is stored: run it again), or the store failed.
    pub fn publish(&mut self) -> anyhow::Result<()> {
        let Some(shared) = &mut self.shared else {
            return Ok(());
        };
        let changes = self.store.changes()?;
        if changes == shared.published_changes {
            return Ok(());
        }
        let image_path: PathBuf = shared.dir.path().join("image.db");
        let _ = std::fs::remove_file(&image_path);
        self.store.vacuum_into(&image_path)?;
        let image = std::fs::read(&image_path).context("reading the registry image")?;
        match shared.backend()?.store(&image, shared.version)? {
            Some(version) => {
                shared.version = version;
                shared.published_changes = changes;
                Ok(())
            }
            None => bail!(
                "the tenant registry was edited by someone else while this command ran; \
                 nothing of this command was saved: run it again"
            ),
        }
    }

    /// The registry's current version where it is kept: the store's version of the
    /// image, or SQLite's `data_version` of the file (changes with every commit made
    /// by another connection).
    fn version_now(&self) -> anyhow::Result<u64> {
        match &self.shared {
            Some(shared) => Ok(shared.backend()?.version()?),
            None => self.store.data_version(),
        }
    }

    /// Runs in `serve`: every [`FOLLOW_EVERY`], when the registry's version moved,
    /// resolves every tenant again and applies the difference to the runtime — new
    /// tenants start ticking, edited ones are replaced (their loop restarts), removed
    /// ones stop. A tenant that no longer resolves keeps running as it was, and the
    /// reason is logged. `running`: [`fingerprints`] of the tenants `serve` started with.
    pub async fn follow(
        mut self,
        mut running: Running,
        key: MasterKey,
        runtime: Arc<Runtime>,
        scheduler: Arc<Scheduler>,
        kv: Arc<dyn KvBackend>,
    ) {
        let mut seen = self.version_now().ok();
        loop {
            tokio::time::sleep(FOLLOW_EVERY).await;
            let now = match tokio::task::block_in_place(|| self.version_now()) {
                Ok(v) => v,
                Err(e) => {
                    tracing::warn!("registry version unreadable: {e:#}");
                    continue;
                }
            };
            if seen == Some(now) {
                continue;
            }
            if self.shared.is_some() {
                match tokio::task::block_in_place(|| Registry::shared(&kv)) {
                    Ok(Some(fresh)) => self = fresh,
                    Ok(None) => {}
                    Err(e) => {
                        tracing::warn!("registry unreadable: {e:#}");
                        continue;
                    }
                }
            }
            seen = Some(now);
            let all = match self.resolve_all(&key) {
                Ok(all) => all,
                Err(e) => {
                    tracing::warn!("registry edit not applied: {e:#}");
                    continue;
                }
            };
            apply(&runtime, &scheduler, &mut running, all);
        }
    }
}

/// The tenants running now, by id, with their [`fingerprint`].
pub type Running = BTreeMap<String, [u8; 32]>;

/// The fingerprints of tenants about to run (what [`Registry::follow`] starts from).
pub fn fingerprints(tenants: &[ResolvedTenant]) -> Running {
    tenants
        .iter()
        .map(|t| (t.id.clone(), fingerprint(t)))
        .collect()
}

/// What identifies a tenant's running form: its id, settings and every configuration
/// value (hashed in memory, never kept in clear).
fn fingerprint(t: &ResolvedTenant) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(t.id.as_bytes());
    h.update(serde_json::to_vec(&t.settings).unwrap_or_default());
    for (k, v) in &t.config {
        h.update([0]);
        h.update(k.as_bytes());
        h.update([0]);
        h.update(v.expose().as_bytes());
    }
    h.finalize().into()
}

/// Applies a fresh resolution of the registry to the runtime.
fn apply(
    runtime: &Arc<Runtime>,
    scheduler: &Arc<Scheduler>,
    running: &mut Running,
    all: Vec<ResolvedTenant>,
) {
    let ids: Vec<String> = all.iter().map(|t| t.id.clone()).collect();
    for t in all {
        let print = fingerprint(&t);
        if running.get(&t.id) == Some(&print) {
            continue;
        }
        let id = t.id.clone();
        let added = !running.contains_key(&id);
        match runtime.upsert_tenant(t) {
            Ok(tenant) => {
                scheduler.start(tenant);
                running.insert(id.clone(), print);
                tracing::info!(tenant = %id, "{}", if added { "tenant added" } else { "tenant updated" });
            }
            Err(e) => tracing::warn!(tenant = %id, "tenant edit not applied: {e:#}"),
        }
    }
    let gone: Vec<String> = running
        .keys()
        .filter(|id| !ids.contains(id))
        .cloned()
        .collect();
    for id in gone {
        runtime.remove_tenant(&id);
        running.remove(&id);
        tracing::info!(tenant = %id, "tenant removed");
    }
}
