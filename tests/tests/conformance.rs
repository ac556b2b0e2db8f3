//! The built bridge component runs unchanged on the project's host and on Spin.
//!
//! Decodes `target/wasm32-wasip2/release/mssp_guest.wasm` (built by `cargo xtask
//! build`) and fails when:
//!
//! - an import falls outside Spin's HTTP-trigger platform world (the vendored WIT of
//!   `tests/fixtures/spin/wit`, Spin-only interfaces left out), compared the way
//!   wasmtime-based hosts compare: interface names semver-compatibly (`@0.2.12`
//!   matches `@0.2.0`; pre-releases such as `draft2` only exactly), and every
//!   function and resource the component needs must exist at the WASI level Spin
//!   declares (`@since` ≤ 0.2.0). The world-level cron types (`metadata`, `error`)
//!   are imported as value types carrying their own definition: no host supplies
//!   anything for them, so they pass;
//! - the host's own linker cannot pre-instantiate it, or the host's bindings of the
//!   bridge world cannot bind its exports;
//! - an export that Spin's HTTP trigger or cron trigger looks for is missing, or
//!   `handle-cron-event` does not have the cron trigger's exact type.
//!
//! The same checking functions reject synthetic components that import what Spin
//! lacks, so the gate is known to close.

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};

use mssp_runtime::LimitSettings;
use semver::Version;
use wasmparser::component_types::{ComponentAnyTypeId, ComponentEntityType};
use wasmparser::{Parser, Payload, Validator, WasmFeatures};
use wit_component::{ComponentEncoder, DecodedWasm, StringEncoding};
use wit_parser::{
    Function, InterfaceId, ManglingAndAbi, Resolve, Stability, Type, TypeDefKind, WorldItem,
    WorldKey,
};

/// The WASI 0.2 level Spin's platform world names (`wasi:cli/imports@0.2.0`,
/// `wasi:http/outgoing-handler@0.2.0` in Spin 3.x). Items of the vendored WASI
/// 0.2.12 WIT marked `@since` a later version do not count as provided.
const SPIN_WASI_P2_BASELINE: Version = Version::new(0, 2, 0);

/// The export Spin's cron trigger (plugin `trigger-cron`) calls.
const CRON_EXPORT: &str = "handle-cron-event";

fn fixtures() -> PathBuf {
    mssp_e2e::workspace_root()
        .join("tests")
        .join("fixtures")
        .join("spin")
}

// ---------------------------------------------------------------------------
// Interface names and the semver rule of wasmtime-based hosts
// ---------------------------------------------------------------------------

/// `namespace:package/interface@version`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct InterfaceName {
    package: String,
    interface: String,
    version: Option<Version>,
}

impl InterfaceName {
    fn parse(name: &str) -> Option<Self> {
        let (path, version) = match name.split_once('@') {
            Some((path, v)) => (path, Some(Version::parse(v).ok()?)),
            None => (name, None),
        };
        let (package, interface) = path.split_once('/')?;
        let (namespace, pkg) = package.split_once(':')?;
        let valid = |s: &str| {
            !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        };
        if !(valid(namespace) && valid(pkg) && valid(interface)) {
            return None;
        }
        Some(Self {
            package: package.to_string(),
            interface: interface.to_string(),
            version,
        })
    }

    /// Whether a host defining `self` satisfies an import (or lookup) of `other`.
    fn matches(&self, other: &InterfaceName) -> bool {
        self.package == other.package
            && self.interface == other.interface
            && versions_compatible(self.version.as_ref(), other.version.as_ref())
    }
}

impl fmt::Display for InterfaceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.package, self.interface)?;
        if let Some(v) = &self.version {
            write!(f, "@{v}")?;
        }
        Ok(())
    }
}

/// wasmtime's rule (`alternate_lookup_key` in wasmtime-environ): two versions
/// match when equal, or when both are release versions with the same major
/// (1.x and up) or the same `0.minor` (`0.minor > 0`). Pre-releases and `0.0.x`
/// match only exactly. Build metadata is ignored.
fn versions_compatible(a: Option<&Version>, b: Option<&Version>) -> bool {
    fn key(v: &Version) -> Option<(u64, u64)> {
        if !v.pre.is_empty() {
            None
        } else if v.major != 0 {
            Some((v.major, 0))
        } else if v.minor != 0 {
            Some((0, v.minor))
        } else {
            None
        }
    }
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => {
            (a.major, a.minor, a.patch, &a.pre) == (b.major, b.minor, b.patch, &b.pre)
                || key(a).is_some_and(|k| key(b) == Some(k))
        }
        _ => false,
    }
}

// ---------------------------------------------------------------------------
// What a component imports and exports (wasmparser, component model)
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum ItemKind {
    Func,
    Resource,
    /// A non-resource type: checked structurally through the functions that use
    /// it, by wasmtime and Spin alike, so its name needs no counterpart.
    Type,
    Other,
}

#[derive(Debug)]
struct Import {
    name: String,
    /// For an instance import: each item its type lists, by name.
    items: Vec<(String, ItemKind)>,
    /// Not an instance (a bare function, type, module...).
    bare: Option<&'static str>,
}

#[derive(Debug)]
struct Surface {
    imports: Vec<Import>,
    exports: Vec<(String, &'static str)>,
}

fn entity_kind(ty: &ComponentEntityType) -> &'static str {
    match ty {
        ComponentEntityType::Module(_) => "module",
        ComponentEntityType::Func(_) => "func",
        ComponentEntityType::Value(_) => "value",
        ComponentEntityType::Type { .. } => "type",
        ComponentEntityType::Instance(_) => "instance",
        ComponentEntityType::Component(_) => "component",
    }
}

/// Decodes and validates a component, listing its top-level imports (with the
/// items of each imported instance) and exports.
fn surface(bytes: &[u8]) -> anyhow::Result<Surface> {
    let types = Validator::new_with_features(WasmFeatures::all()).validate_all(bytes)?;
    let types = types.as_ref();

    let mut import_names = Vec::new();
    let mut export_names = Vec::new();
    let mut depth = 0usize;
    for payload in Parser::new(0).parse_all(bytes) {
        match payload? {
            Payload::Version { .. } => depth += 1,
            Payload::End(_) => depth = depth.saturating_sub(1),
            Payload::ComponentImportSection(reader) if depth == 1 => {
                for import in reader {
                    let name = import?.name;
                    anyhow::ensure!(
                        name.version_suffix.is_none() && name.implements.is_none(),
                        "import {:?} uses extern-name options (versionsuffix/implements), \
                         newer than the component model Spin 3.x/4.x were built on; \
                         this check does not interpret them",
                        name.name
                    );
                    import_names.push(name.name.to_string());
                }
            }
            Payload::ComponentExportSection(reader) if depth == 1 => {
                for export in reader {
                    export_names.push(export?.name.name.to_string());
                }
            }
            _ => {}
        }
    }

    let mut imports = Vec::new();
    for name in import_names {
        let item = types
            .component_item_for_import(&name)
            .ok_or_else(|| anyhow::anyhow!("no type for import {name}"))?;
        let import = match &item.ty {
            ComponentEntityType::Instance(id) => {
                let items = types[*id]
                    .exports
                    .iter()
                    .map(|(n, it)| {
                        let kind = match &it.ty {
                            ComponentEntityType::Func(_) => ItemKind::Func,
                            ComponentEntityType::Type {
                                referenced: ComponentAnyTypeId::Resource(_),
                                ..
                            } => ItemKind::Resource,
                            ComponentEntityType::Type { .. } => ItemKind::Type,
                            _ => ItemKind::Other,
                        };
                        (n.to_string(), kind)
                    })
                    .collect();
                Import {
                    name,
                    items,
                    bare: None,
                }
            }
            ComponentEntityType::Type {
                referenced: ComponentAnyTypeId::Defined(_),
                ..
            } => Import {
                name,
                items: Vec::new(),
                bare: Some("value-type"),
            },
            other => Import {
                name,
                items: Vec::new(),
                bare: Some(entity_kind(other)),
            },
        };
        imports.push(import);
    }

    let mut exports = Vec::new();
    for name in export_names {
        let kind = types
            .component_item_for_export(&name)
            .map(|it| entity_kind(&it.ty))
            .unwrap_or("?");
        exports.push((name, kind));
    }
    Ok(Surface { imports, exports })
}

fn print_surface(label: &str, s: &Surface) {
    println!("{label}: {} imports", s.imports.len());
    for import in &s.imports {
        match import.bare {
            Some(kind) => println!("  import {} ({kind})", import.name),
            None => {
                let items: Vec<String> = import
                    .items
                    .iter()
                    .filter(|(_, k)| *k != ItemKind::Type)
                    .map(|(n, _)| n.clone())
                    .collect();
                println!("  import {}: {}", import.name, items.join(", "));
            }
        }
    }
    for (name, kind) in &s.exports {
        println!("  export {name} ({kind})");
    }
}

// ---------------------------------------------------------------------------
// Spin's world (vendored WIT) and the check against it
// ---------------------------------------------------------------------------

struct SpinWorld {
    resolve: Resolve,
    imports: Vec<(InterfaceName, InterfaceId)>,
    exports: Vec<InterfaceName>,
}

fn interface_name(resolve: &Resolve, id: InterfaceId) -> anyhow::Result<InterfaceName> {
    let name = resolve
        .id_of(id)
        .ok_or_else(|| anyhow::anyhow!("anonymous interface in Spin's world"))?;
    InterfaceName::parse(&name).ok_or_else(|| anyhow::anyhow!("unparsable interface {name}"))
}

fn spin_world() -> anyhow::Result<SpinWorld> {
    let mut resolve = Resolve::default();
    let (pkg, _) = resolve.push_dir(fixtures().join("wit"))?;
    let world = resolve.select_world(&[pkg], Some("http-trigger"))?;
    let mut imports = Vec::new();
    let mut exports = Vec::new();
    for item in resolve.worlds[world].imports.values() {
        match item {
            WorldItem::Interface { id, .. } => imports.push((interface_name(&resolve, *id)?, *id)),
            _ => anyhow::bail!("Spin's platform world imports only interfaces"),
        }
    }
    for item in resolve.worlds[world].exports.values() {
        if let WorldItem::Interface { id, .. } = item {
            exports.push(interface_name(&resolve, *id)?);
        }
    }
    Ok(SpinWorld {
        resolve,
        imports,
        exports,
    })
}

/// Whether an item of Spin's vendored WIT exists at the level Spin declares.
fn provided(stability: &Stability, package_version: Option<&Version>) -> bool {
    let wasi_p2 = package_version.is_some_and(|v| v.major == 0 && v.minor == 2 && v.pre.is_empty());
    match stability {
        Stability::Unknown => true,
        Stability::Unstable { .. } => false,
        Stability::Stable { since, .. } => !wasi_p2 || *since <= SPIN_WASI_P2_BASELINE,
    }
}

/// Whether a type is a resource, or a `use` of one from another interface.
fn is_resource(resolve: &Resolve, mut id: wit_parser::TypeId) -> bool {
    loop {
        match &resolve.types[id].kind {
            TypeDefKind::Resource => return true,
            TypeDefKind::Type(Type::Id(next)) => id = *next,
            _ => return false,
        }
    }
}

/// Every reason the component's imports do not run on Spin; empty when they do.
fn check_imports_against_spin(s: &Surface, spin: &SpinWorld) -> Vec<String> {
    let mut problems = Vec::new();
    for import in &s.imports {
        let Some(name) = InterfaceName::parse(&import.name) else {
            // A world-level value type (the cron `metadata` and `error`) is imported
            // with its own definition (`eq` bound): hosts supply nothing for it.
            if import.bare != Some("value-type") {
                problems.push(format!(
                    "import `{}` ({}) is not an interface; a host would have to supply it, \
                     and Spin supplies only interfaces",
                    import.name,
                    import.bare.unwrap_or("instance")
                ));
            }
            continue;
        };
        if let Some(kind) = import.bare {
            problems.push(format!("import `{name}` is a bare {kind}, not an instance"));
            continue;
        }
        let Some((spin_name, id)) = spin.imports.iter().find(|(n, _)| n.matches(&name)) else {
            let near: Vec<String> = spin
                .imports
                .iter()
                .filter(|(n, _)| n.package == name.package && n.interface == name.interface)
                .map(|(n, _)| n.to_string())
                .collect();
            problems.push(if near.is_empty() {
                format!("import `{name}` is not in Spin's platform world")
            } else {
                format!(
                    "import `{name}` does not match Spin's `{}` (pre-release versions match only exactly)",
                    near.join("`, `")
                )
            });
            continue;
        };
        let iface = &spin.resolve.interfaces[*id];
        let pkg_version = iface
            .package
            .and_then(|p| spin.resolve.packages[p].name.version.as_ref());
        if !provided(&iface.stability, pkg_version) {
            problems.push(format!(
                "import `{name}`: Spin's `{spin_name}` is newer than Spin's declared level"
            ));
            continue;
        }
        for (item, kind) in &import.items {
            let ok = match kind {
                ItemKind::Func => iface
                    .functions
                    .get(item)
                    .is_some_and(|f| provided(&f.stability, pkg_version)),
                ItemKind::Resource => iface.types.get(item).is_some_and(|t| {
                    is_resource(&spin.resolve, *t)
                        && provided(&spin.resolve.types[*t].stability, pkg_version)
                }),
                ItemKind::Type => true,
                ItemKind::Other => false,
            };
            if !ok {
                problems.push(format!(
                    "import `{name}` needs `{item}` ({kind:?}), which Spin's `{spin_name}` does not \
                     provide at WASI {SPIN_WASI_P2_BASELINE}"
                ));
            }
        }
    }
    problems
}

/// Every export that Spin's HTTP trigger or the cron trigger looks for and the
/// component lacks.
fn check_exports(s: &Surface, spin: &SpinWorld) -> Vec<String> {
    let mut problems = Vec::new();
    for wanted in &spin.exports {
        let found = s.exports.iter().any(|(n, kind)| {
            *kind == "instance" && InterfaceName::parse(n).is_some_and(|n| wanted.matches(&n))
        });
        if !found {
            problems.push(format!(
                "no export matching `{wanted}` (Spin's HTTP trigger needs it)"
            ));
        }
    }
    if !s
        .exports
        .iter()
        .any(|(n, kind)| n == CRON_EXPORT && *kind == "func")
    {
        problems.push(format!(
            "no function export `{CRON_EXPORT}` (the host's timers and Spin's cron trigger call it)"
        ));
    }
    problems
}

// ---------------------------------------------------------------------------
// The cron export's exact type
// ---------------------------------------------------------------------------

/// A structural rendering of a type: what the component model compares.
fn shape(resolve: &Resolve, ty: &Type) -> String {
    let Type::Id(id) = ty else {
        return format!("{ty:?}").to_lowercase();
    };
    let opt = |t: &Option<Type>| t.as_ref().map_or("_".to_string(), |t| shape(resolve, t));
    match &resolve.types[*id].kind {
        TypeDefKind::Type(t) => shape(resolve, t),
        TypeDefKind::Record(r) => {
            let fields: Vec<String> = r
                .fields
                .iter()
                .map(|f| format!("{}: {}", f.name, shape(resolve, &f.ty)))
                .collect();
            format!("record {{ {} }}", fields.join(", "))
        }
        TypeDefKind::Variant(v) => {
            let cases: Vec<String> = v
                .cases
                .iter()
                .map(|c| format!("{}({})", c.name, opt(&c.ty)))
                .collect();
            format!("variant {{ {} }}", cases.join(", "))
        }
        TypeDefKind::Result(r) => format!("result<{}, {}>", opt(&r.ok), opt(&r.err)),
        TypeDefKind::Option(t) => format!("option<{}>", shape(resolve, t)),
        TypeDefKind::List(t) => format!("list<{}>", shape(resolve, t)),
        TypeDefKind::Tuple(t) => {
            let types: Vec<String> = t.types.iter().map(|t| shape(resolve, t)).collect();
            format!("tuple<{}>", types.join(", "))
        }
        TypeDefKind::Enum(e) => {
            let cases: Vec<&str> = e.cases.iter().map(|c| c.name.as_str()).collect();
            format!("enum {{ {} }}", cases.join(", "))
        }
        other => format!("<{}>", other.as_str()),
    }
}

fn func_shape(resolve: &Resolve, f: &Function) -> String {
    let params: Vec<String> = f
        .params
        .iter()
        .map(|p| format!("{}: {}", p.name, shape(resolve, &p.ty)))
        .collect();
    let result = f
        .result
        .as_ref()
        .map_or(String::new(), |r| format!(" -> {}", shape(resolve, r)));
    format!("func({}){result}", params.join(", "))
}

fn exported_func(resolve: &Resolve, world: wit_parser::WorldId, name: &str) -> Option<Function> {
    match resolve.worlds[world]
        .exports
        .get(&WorldKey::Name(name.to_string()))?
    {
        WorldItem::Function(f) => Some(f.clone()),
        _ => None,
    }
}

/// The cron trigger's `handle-cron-event` type (fixtures/spin/cron/cron.wit).
fn spin_cron_shape() -> anyhow::Result<String> {
    let mut resolve = Resolve::default();
    let (pkg, _) = resolve.push_path(fixtures().join("cron").join("cron.wit"))?;
    let world = resolve.select_world(&[pkg], Some("spin-cron"))?;
    let f = exported_func(&resolve, world, CRON_EXPORT)
        .ok_or_else(|| anyhow::anyhow!("cron.wit lacks {CRON_EXPORT}"))?;
    Ok(func_shape(&resolve, &f))
}

fn component_cron_shape(bytes: &[u8]) -> anyhow::Result<Option<String>> {
    let DecodedWasm::Component(resolve, world) = wit_component::decode(bytes)? else {
        anyhow::bail!("not a component");
    };
    Ok(exported_func(&resolve, world, CRON_EXPORT).map(|f| func_shape(&resolve, &f)))
}

// ---------------------------------------------------------------------------
// The host's linker
// ---------------------------------------------------------------------------

/// Pre-instantiates the component file with the host's own engine and linker, and
/// binds its exports with the host's own bindings of the bridge world.
fn host_accepts(path: &Path, cache: &Path) -> anyhow::Result<()> {
    let engine = mssp_runtime::engine::engine(&LimitSettings::default(), 4)?;
    let linker = mssp_runtime::engine::linker(&engine)?;
    let component = mssp_runtime::engine::load_component(&engine, path, cache)?;
    let pre = linker
        .instantiate_pre(&component)
        .map_err(anyhow::Error::from)?;
    mssp_runtime::bindings::BridgePre::new(pre).map_err(anyhow::Error::from)?;
    Ok(())
}

// ---------------------------------------------------------------------------
// Synthetic components (for the gate's own tests)
// ---------------------------------------------------------------------------

/// Builds a component of `world` from WIT source, whose core module imports every
/// function of the world (so the component imports all of it).
fn synthetic(resolve: &mut Resolve, pkg: wit_parser::PackageId, world: &str) -> Vec<u8> {
    let world = resolve.select_world(&[pkg], Some(world)).unwrap();
    let mut module = wit_component::dummy_module(resolve, world, ManglingAndAbi::Standard32);
    wit_component::embed_component_metadata(&mut module, resolve, world, StringEncoding::UTF8)
        .unwrap();
    ComponentEncoder::default()
        .module(&module)
        .unwrap()
        .validate(true)
        .encode()
        .unwrap()
}

/// A component of a world written in `wit`, resolved against Spin's vendored
/// WASI packages (and any package `wit` nests itself).
fn synthetic_from(wit: &str, world: &str) -> Vec<u8> {
    let mut resolve = Resolve::default();
    resolve.push_dir(fixtures().join("wit")).unwrap();
    let pkg = resolve.push_str("synthetic.wit", wit).unwrap();
    synthetic(&mut resolve, pkg, world)
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[test]
fn the_built_component_runs_on_spin_and_on_the_host() {
    let path = mssp_e2e::component("mssp_guest");
    let bytes = std::fs::read(&path).unwrap();
    let s = surface(&bytes).unwrap();
    print_surface(&format!("{}", path.display()), &s);

    let spin = spin_world().unwrap();
    let mut problems = check_imports_against_spin(&s, &spin);
    problems.extend(check_exports(&s, &spin));
    assert!(
        problems.is_empty(),
        "the component would not run on Spin:\n  {}",
        problems.join("\n  ")
    );

    let want = spin_cron_shape().unwrap();
    let got = component_cron_shape(&bytes).unwrap();
    assert_eq!(
        got.as_deref(),
        Some(want.as_str()),
        "`{CRON_EXPORT}` must have exactly the type of Spin's cron trigger (fermyon:spin-cron@2.0.0)"
    );

    let cache = mssp_e2e::workspace_root()
        .join("target")
        .join("mssp-test-cache");
    if let Err(e) = host_accepts(&path, &cache) {
        panic!("the host's linker cannot instantiate the component: {e:#}");
    }
}

#[test]
fn the_declared_world_itself_conforms() {
    // A component of exactly `mssp:bridge/bridge` importing every function of
    // every interface it names: what the guest may grow into, not only what it
    // imports today.
    let mut resolve = Resolve::default();
    let (pkg, _) = resolve
        .push_dir(mssp_e2e::workspace_root().join("wit"))
        .unwrap();
    let bytes = synthetic(&mut resolve, pkg, "bridge");
    let s = surface(&bytes).unwrap();
    let spin = spin_world().unwrap();
    let problems = check_imports_against_spin(&s, &spin);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert!(
        check_exports(&s, &spin).is_empty(),
        "{:?}",
        check_exports(&s, &spin)
    );
    assert_eq!(
        component_cron_shape(&bytes).unwrap().as_deref(),
        Some(spin_cron_shape().unwrap().as_str())
    );

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bridge-world.wasm");
    std::fs::write(&path, &bytes).unwrap();
    host_accepts(&path, dir.path()).unwrap();
}

#[test]
fn a_spin_only_import_is_rejected_by_both_gates() {
    let bytes = synthetic_from(
        r#"
        package test:negative;
        world uses-spin-kv {
          import fermyon:spin/key-value@2.0.0;
        }
        package fermyon:spin@2.0.0 {
          interface key-value {
            open: func(label: string) -> result<u32, string>;
          }
        }
        "#,
        "uses-spin-kv",
    );
    let s = surface(&bytes).unwrap();
    let problems = check_imports_against_spin(&s, &spin_world().unwrap());
    assert!(
        problems
            .iter()
            .any(|p| p.contains("fermyon:spin/key-value@2.0.0") && p.contains("not in Spin")),
        "{problems:?}"
    );
    // No exports at all: both trigger exports are reported missing.
    let missing = check_exports(&s, &spin_world().unwrap());
    assert_eq!(missing.len(), 2, "{missing:?}");

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("spin-only.wasm");
    std::fs::write(&path, &bytes).unwrap();
    let err = host_accepts(&path, dir.path()).unwrap_err();
    assert!(
        format!("{err:#}").contains("fermyon:spin/key-value"),
        "{err:#}"
    );
}

#[test]
fn another_keyvalue_draft_is_rejected() {
    let bytes = synthetic_from(
        r#"
        package test:negative;
        world old-draft {
          import wasi:keyvalue/store@0.2.0-draft;
        }
        package wasi:keyvalue@0.2.0-draft {
          interface store {
            open: func(identifier: string) -> result<u32, string>;
          }
        }
        "#,
        "old-draft",
    );
    let problems = check_imports_against_spin(&surface(&bytes).unwrap(), &spin_world().unwrap());
    assert!(
        problems
            .iter()
            .any(|p| p.contains("`wasi:keyvalue/store@0.2.0-draft`")
                && p.contains("`wasi:keyvalue/store@0.2.0-draft2`")),
        "{problems:?}"
    );
}

#[test]
fn a_function_newer_than_spins_wasi_level_is_rejected() {
    // wasi:cli/exit@0.2.12 has `exit-with-code` (@since 0.2.12); Spin declares 0.2.0.
    let bytes = synthetic_from(
        r#"
        package test:negative;
        world exits {
          import wasi:cli/exit@0.2.12;
        }
        "#,
        "exits",
    );
    let problems = check_imports_against_spin(&surface(&bytes).unwrap(), &spin_world().unwrap());
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].contains("exit-with-code"), "{problems:?}");
}

#[test]
fn interface_names_match_like_wasmtime() {
    let n = |s: &str| InterfaceName::parse(s).unwrap();
    let spin = n("wasi:http/outgoing-handler@0.2.0");
    assert!(spin.matches(&n("wasi:http/outgoing-handler@0.2.12")));
    assert!(n("wasi:http/outgoing-handler@0.2.12").matches(&spin));
    assert!(!spin.matches(&n("wasi:http/outgoing-handler@0.3.0")));
    assert!(!spin.matches(&n("wasi:http/incoming-handler@0.2.0")));
    assert!(!spin.matches(&n("wasi:https/outgoing-handler@0.2.0")));
    assert!(!spin.matches(&n("wasi:http/outgoing-handler")));

    let draft2 = n("wasi:keyvalue/store@0.2.0-draft2");
    assert!(draft2.matches(&n("wasi:keyvalue/store@0.2.0-draft2")));
    assert!(!draft2.matches(&n("wasi:keyvalue/store@0.2.0-draft")));
    assert!(!draft2.matches(&n("wasi:keyvalue/store@0.2.0")));
    let config = n("wasi:config/store@0.2.0-draft-2024-09-27");
    assert!(!config.matches(&n("wasi:config/store@0.2.0-rc.1")));

    assert!(n("a:b/c@1.0.0").matches(&n("a:b/c@1.4.2")));
    assert!(!n("a:b/c@1.0.0").matches(&n("a:b/c@2.0.0")));
    assert!(!n("a:b/c@0.0.1").matches(&n("a:b/c@0.0.2")));
    assert!(n("a:b/c@0.0.1").matches(&n("a:b/c@0.0.1")));

    for bad in [
        "handle-cron-event",
        "wasi:http",
        "wasi/http@0.2.0",
        "Wasi:http/types",
    ] {
        assert!(InterfaceName::parse(bad).is_none(), "{bad}");
    }
}

#[test]
fn spins_vendored_world_is_what_the_fixture_claims() {
    let spin = spin_world().unwrap();
    let names: BTreeSet<String> = spin.imports.iter().map(|(n, _)| n.to_string()).collect();
    // Spin's platform world: wasi:cli/imports + outgoing HTTP + keyvalue + config.
    for must in [
        "wasi:http/outgoing-handler@0.2.12",
        "wasi:http/types@0.2.12",
        "wasi:keyvalue/store@0.2.0-draft2",
        "wasi:keyvalue/atomics@0.2.0-draft2",
        "wasi:keyvalue/batch@0.2.0-draft2",
        "wasi:config/store@0.2.0-draft-2024-09-27",
        "wasi:clocks/wall-clock@0.2.12",
        "wasi:clocks/monotonic-clock@0.2.12",
        "wasi:random/random@0.2.12",
        "wasi:random/insecure@0.2.12",
        "wasi:random/insecure-seed@0.2.12",
        "wasi:cli/environment@0.2.12",
        "wasi:cli/stderr@0.2.12",
        "wasi:filesystem/preopens@0.2.12",
        "wasi:sockets/tcp@0.2.12",
        "wasi:io/streams@0.2.12",
    ] {
        assert!(names.contains(must), "{must} missing from {names:?}");
    }
    assert!(
        names
            .iter()
            .all(|n| n.starts_with("wasi:") && !n.starts_with("wasi:clocks/timezone")),
        "Spin-only or unstable interfaces in the fixture: {names:?}"
    );
    assert_eq!(
        spin.exports
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        ["wasi:http/incoming-handler@0.2.12"]
    );
}
