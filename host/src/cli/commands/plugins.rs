//! `pipeline plugins`: the built-in plugins, what a plugin file is and asks for, and a new
//! plugin crate.

use std::io::Write;
use std::path::Path;

use anyhow::Result;

use crate::cli::Context;
use crate::engine::Engine;
use crate::error::UsageError;
use crate::scaffold::Kind;
use crate::stages::component;
use crate::{bindings, builtin, logging};

/// The built-in plugins with their version, kind and configuration keys.
pub fn list(cx: &Context) -> Result<()> {
    let engine = cx.engine()?;
    let mut out = logging::stdout();
    for name in builtin::names() {
        let info = match crate::stages::native::describe(name) {
            Some(i) => i,
            None => {
                let c = engine.load(&crate::config::PluginRef::Builtin(name.into()))?;
                let role = role_of(engine, &c)?;
                component::describe(engine, &c, role, name)?
            }
        };
        print_info(&mut out, &info)?;
    }
    Ok(())
}

/// What a component file (or an `oci://` plugin, pulled into the cache) is and which host
/// capabilities it imports.
pub fn inspect(cx: &Context, file: &Path) -> Result<()> {
    let plugin = match file
        .to_str()
        .filter(|s| s.starts_with(crate::oci::reference::SCHEME))
    {
        Some(text) => crate::config::PluginRef::Oci(oci_reference(text)?),
        None => crate::config::PluginRef::File(file.to_path_buf()),
    };
    let engine = cx.engine()?;
    let c = engine.load(&plugin)?;
    // An incompatible plugin cannot even be instantiated: say why, with the versions.
    crate::engine::check_world_version(&c, engine)
        .map_err(|e| anyhow::anyhow!("{}: {e:#}", file.display()))?;
    let role = role_of(engine, &c)?;
    let info = component::describe(engine, &c, role, &file.display().to_string())?;
    let mut out = logging::stdout();
    print_info(&mut out, &info)?;
    let ty = c.component_type();
    let exports: Vec<String> = ty
        .exports(engine.wasmtime())
        .map(|(n, _)| n.to_string())
        .collect();
    let wit = exports
        .iter()
        .find_map(|n| {
            n.strip_prefix("pipeline:plugin/")
                .and_then(|r| r.split_once('@'))
                .map(|(_, v)| v)
        })
        .unwrap_or("unknown");
    // The contract it runs under: the current one, or an earlier one through its adapter.
    let compatible = match crate::contract::version_of(engine.wasmtime(), &c) {
        Err(e) => e,
        Ok(v) if bindings::WIT_VERSION.starts_with(&format!("{}.", v.as_str())) => format!(
            "compatible with this host (pipeline:plugin@{})",
            bindings::WIT_VERSION
        ),
        Ok(v) => format!(
            "compatible with this host (pipeline:plugin@{}), run as contract {} (see \"Versioning\" in docs/plugins.md)",
            bindings::WIT_VERSION,
            v.as_str()
        ),
    };
    writeln!(out, "  WIT: pipeline:plugin@{wit}: {compatible}")?;
    writeln!(out, "  exports: {}", exports.join(", "))?;
    writeln!(
        out,
        "  imports (what it can ask for; it gets only what its stage grants):"
    )?;
    for (name, _) in ty.imports(engine.wasmtime()) {
        match crate::capabilities::hint(name) {
            Some(hint) => writeln!(out, "    {name}  — {hint}")?,
            None => writeln!(out, "    {name}")?,
        }
    }
    Ok(())
}

/// `pipeline plugins pull REF`: into the cache, the manifest digest on stdout.
pub fn pull(reference: &str) -> Result<()> {
    let r = oci_reference(reference)?;
    let hex = crate::oci::pull(&r)?;
    logging::info(None, &format!("pulled {}", r.pinned(&hex)));
    println!("sha256:{hex}");
    Ok(())
}

/// `pipeline plugins push FILE REF`: a plugin this host runs, published; the manifest
/// digest on stdout.
pub fn push(cx: &Context, file: &Path, reference: &str) -> Result<()> {
    let r = oci_reference(reference)?;
    let wasm = std::fs::read(file)
        .map_err(|e| UsageError(format!("cannot read {}: {e}", file.display())))?;
    let engine = cx.engine()?;
    let c = engine.load(&crate::config::PluginRef::File(file.to_path_buf()))?;
    crate::engine::check_world_version(&c, engine)
        .map_err(|e| anyhow::anyhow!("{}: {e:#}", file.display()))?;
    role_of(engine, &c).map_err(|e| anyhow::anyhow!("{}: {e:#}", file.display()))?;
    let ty = c.component_type();
    let imports: Vec<String> = ty
        .imports(engine.wasmtime())
        .map(|(n, _)| n.to_string())
        .collect();
    let exports: Vec<String> = ty
        .exports(engine.wasmtime())
        .map(|(n, _)| n.to_string())
        .collect();
    let config = crate::oci::manifest::config(&wasm, imports, exports);
    let hex = crate::oci::push(&r, wasm, config)?;
    logging::info(
        None,
        &format!("pushed {} as {}", file.display(), r.pinned(&hex)),
    );
    println!("sha256:{hex}");
    Ok(())
}

fn oci_reference(text: &str) -> Result<crate::oci::Reference> {
    crate::oci::Reference::parse(text).map_err(|e| UsageError(format!("`{text}`: {e}")).into())
}

/// Writes a new plugin crate; needs no engine.
pub fn new(kind: Kind, name: &str, dir: Option<&Path>) -> Result<()> {
    crate::scaffold::check_name(name).map_err(|e| UsageError(e.to_string()))?;
    let dir = crate::scaffold::new_plugin(kind, name, dir)?;
    let lib = name.replace('-', "_");
    println!(
        "wrote {}\n\nnext:\n  cd {}\n  cargo build --target wasm32-wasip2 --release\n  pipeline plugins inspect target/wasm32-wasip2/release/{lib}.wasm\n\nsee its README.md for the stage to add to a pipeline file",
        dir.display(),
        dir.display()
    );
    Ok(())
}

fn role_of(engine: &Engine, c: &wasmtime::component::Component) -> Result<crate::config::Role> {
    use crate::bindings::PluginKind;
    use crate::config::Role;
    match component::kind_of(engine, c) {
        Some(PluginKind::Source) => Ok(Role::Source),
        Some(PluginKind::Transform) => Ok(Role::Transform),
        Some(PluginKind::Sink) => Ok(Role::Sink),
        Some(PluginKind::Notifier) => Ok(Role::Notifier),
        None => Err(anyhow::anyhow!(
            "the component exports no pipeline:plugin source, snapshot-source, transform, sink or notifier interface"
        )),
    }
}

fn print_info(out: &mut impl Write, info: &bindings::PluginInfo) -> Result<()> {
    writeln!(
        out,
        "{} {} ({}): {}",
        info.name, info.version, info.kind, info.description
    )?;
    let width = info
        .config_keys
        .iter()
        .map(|k| k.name.len())
        .max()
        .unwrap_or(0);
    for k in &info.config_keys {
        let req = if k.required { ", required" } else { "" };
        writeln!(
            out,
            "    {:<width$}  {}{req}: {}",
            k.name,
            k.value_type.as_str(),
            k.description
        )?;
    }
    Ok(())
}
