//! The WebAssembly engine: one wasmtime engine per process, components compiled once and
//! cached on disk, one store per plugin instance with its stage's grants and limits.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{ResourceLimiter, Store};
use wasmtime_wasi::WasiCtxBuilder;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;

use crate::bindings;
use crate::builtin;
use crate::capabilities::{Grants, StoreState, filesystem, sockets};
use crate::config::{Limits, PluginRef};

/// How often the epoch advances; stage time limits are counted in these ticks.
const EPOCH_TICK: Duration = Duration::from_millis(100);
/// What a plugin's own stdout/stderr may hold before it is logged (panic messages).
const PLUGIN_STDERR_CAPACITY: usize = 64 * 1024;

pub struct Engine {
    engine: wasmtime::Engine,
    linker: Linker<StoreState>,
    cache_dir: Option<PathBuf>,
    loaded: Mutex<HashMap<[u8; 32], Component>>,
}

impl Engine {
    pub fn new() -> Result<Engine> {
        let mut config = wasmtime::Config::new();
        config
            .wasm_component_model(true)
            // Concurrency support makes every call 2-3x slower and we do not use p3 async.
            .concurrency_support(false)
            .epoch_interruption(true)
            .cranelift_opt_level(wasmtime::OptLevel::Speed);
        let engine = wasmtime::Engine::new(&config)
            .map_err(anyhow::Error::from)
            .context("cannot create the WebAssembly engine")?;

        let ticker = engine.weak();
        std::thread::Builder::new()
            .name("epoch".into())
            .spawn(move || {
                while let Some(engine) = ticker.upgrade() {
                    engine.increment_epoch();
                    drop(engine);
                    std::thread::sleep(EPOCH_TICK);
                }
            })
            .context("cannot start the epoch thread")?;

        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)
            .map_err(anyhow::Error::from)
            .context("cannot link WASI")?;
        // Outbound HTTP; every request passes the stage's host grants (capabilities::http).
        wasmtime_wasi_http::p2::add_only_http_to_linker_sync(&mut linker)
            .map_err(anyhow::Error::from)
            .context("cannot link WASI HTTP")?;
        {
            use bindings::host::pipeline::plugin::{log, process, types};
            types::add_to_linker::<StoreState, HasSelf<StoreState>>(&mut linker, |s| s)?;
            log::add_to_linker::<StoreState, HasSelf<StoreState>>(&mut linker, |s| s)?;
            process::add_to_linker::<StoreState, HasSelf<StoreState>>(&mut linker, |s| s)?;
            bindings::snapshot_source::pipeline::plugin::postgres::add_to_linker::<
                StoreState,
                HasSelf<StoreState>,
            >(&mut linker, |s| s)?;
            bindings::snapshot_sink::pipeline::plugin::git::add_to_linker::<
                StoreState,
                HasSelf<StoreState>,
            >(&mut linker, |s| s)?;
            bindings::aws_sink::pipeline::plugin::aws_credentials::add_to_linker::<
                StoreState,
                HasSelf<StoreState>,
            >(&mut linker, |s| s)?;
        }

        Ok(Engine {
            engine,
            linker,
            cache_dir: cache_dir(),
            loaded: Mutex::new(HashMap::new()),
        })
    }

    pub fn wasmtime(&self) -> &wasmtime::Engine {
        &self.engine
    }

    pub fn linker(&self) -> &Linker<StoreState> {
        &self.linker
    }

    /// The compiled component of a plugin, from memory, the disk cache, or compiled now.
    pub fn load(&self, plugin: &PluginRef) -> Result<Component> {
        let owned;
        let bytes: &[u8] = match plugin {
            PluginRef::Builtin(name) => builtin::component(name).with_context(|| {
                format!(
                    "no built-in plugin named `{name}` (built-ins: {})",
                    builtin::names().join(", ")
                )
            })?,
            PluginRef::File(path) => {
                owned = std::fs::read(path)
                    .with_context(|| format!("cannot read plugin file {}", path.display()))?;
                &owned
            }
        };
        self.component(bytes)
            .with_context(|| format!("cannot load plugin {plugin}"))
    }

    fn component(&self, wasm: &[u8]) -> Result<Component> {
        let digest: [u8; 32] = Sha256::digest(wasm).into();
        if let Some(c) = self
            .loaded
            .lock()
            .ok()
            .and_then(|m| m.get(&digest).cloned())
        {
            return Ok(c);
        }
        let component = match self.cache_path(&digest) {
            Some(path) => self.cached(wasm, &path)?,
            None => Component::new(&self.engine, wasm)?,
        };
        if let Ok(mut m) = self.loaded.lock() {
            m.insert(digest, component.clone());
        }
        Ok(component)
    }

    /// Cache entries are keyed by the wasm's hash and the engine's compatibility hash, so
    /// a new pipeline version or changed engine settings never load a stale artifact.
    fn cache_path(&self, digest: &[u8; 32]) -> Option<PathBuf> {
        let dir = self.cache_dir.as_ref()?;
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.engine.precompile_compatibility_hash().hash(&mut h);
        Some(dir.join(format!(
            "{}-{:016x}.cwasm",
            hex::encode(&digest[..16]),
            h.finish()
        )))
    }

    fn cached(&self, wasm: &[u8], path: &Path) -> Result<Component> {
        if path.is_file() {
            // SAFETY: the file was written by `serialize` below into a directory only this
            // user can write (umask 077); wasmtime also checks its header and version.
            match unsafe { Component::deserialize_file(&self.engine, path) } {
                Ok(c) => return Ok(c),
                Err(e) => crate::logging::debug(
                    None,
                    &format!("ignoring cache entry {}: {e:#}", path.display()),
                ),
            }
        }
        let component = Component::new(&self.engine, wasm)?;
        if let Err(e) = write_cache(path, &component) {
            crate::logging::debug(
                None,
                &format!("cannot write component cache {}: {e:#}", path.display()),
            );
        }
        Ok(component)
    }

    /// A fresh store for one plugin instance, with exactly `grants` and `limits`.
    pub fn store(
        &self,
        stage: &str,
        grants: &Grants,
        limits: &Limits,
    ) -> Result<Store<StoreState>> {
        let mut wasi = WasiCtxBuilder::new();
        filesystem::preopen(&mut wasi, grants).with_context(|| format!("stage `{stage}`"))?;
        sockets::deny_all(&mut wasi, stage);
        let stderr = MemoryOutputPipe::new(PLUGIN_STDERR_CAPACITY);
        wasi.stdout(stderr.clone()).stderr(stderr.clone());
        let memory = usize::try_from(limits.memory).unwrap_or(usize::MAX);
        let state = StoreState {
            wasi: wasi.build(),
            table: Default::default(),
            limits: MemoryLimiter { max: memory },
            stage: stage.to_string(),
            plugin: None,
            grants: grants.clone(),
            stderr,
            http: crate::capabilities::http::HttpState::new(stage, &grants.hosts),
            postgres: Default::default(),
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limits);
        let ticks = limits.timeout.as_millis() / EPOCH_TICK.as_millis();
        store.set_epoch_deadline(u64::try_from(ticks).unwrap_or(u64::MAX).max(1));
        store.epoch_deadline_trap();
        Ok(store)
    }
}

/// A plugin's memory limit (`limits.memory`). Growing past it traps with
/// [`MemoryLimitExceeded`] rather than failing the allocation: a guest would abort on a
/// failed allocation anyway, and the trap lets the message name the limit.
pub struct MemoryLimiter {
    max: usize,
}

/// The trap of a plugin that tried to grow a memory beyond its stage's limit.
#[derive(Debug, thiserror::Error)]
#[error("memory limit exceeded: growing to {desired} bytes, limit {max} bytes")]
pub struct MemoryLimitExceeded {
    pub desired: usize,
    pub max: usize,
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.max {
            return Err(MemoryLimitExceeded {
                desired,
                max: self.max,
            }
            .into());
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // Tables hold function references; a million entries is far beyond any real plugin.
        Ok(desired <= 1 << 20)
    }

    fn instances(&self) -> usize {
        64
    }

    fn tables(&self) -> usize {
        64
    }

    fn memories(&self) -> usize {
        16
    }
}

fn write_cache(path: &Path, component: &Component) -> Result<()> {
    let bytes = component.serialize()?;
    let dir = path.parent().context("cache path has no parent")?;
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(
        ".{}.{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("c"),
        std::process::id()
    ));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// `$PIPELINE_CACHE_DIR`, else `$XDG_CACHE_HOME/pipeline`, else `~/.cache/pipeline`.
fn cache_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("PIPELINE_CACHE_DIR") {
        return Some(PathBuf::from(d));
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
        return Some(PathBuf::from(d).join("pipeline"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/pipeline"))
}

/// Turns a trap or host error of a plugin call into a message that names the stage and,
/// for the limits, which limit stopped it and how to raise it.
pub fn describe_trap(
    stage: &str,
    plugin: Option<&str>,
    limits: &Limits,
    err: &anyhow::Error,
) -> String {
    let stage = match plugin {
        Some(p) if !stage.ends_with(p) => format!("{stage}` (plugin {p})"),
        _ => format!("{stage}`"),
    };
    if let Some(hit) = err
        .chain()
        .find_map(|e| e.downcast_ref::<MemoryLimitExceeded>())
    {
        return format!(
            "stage `{stage} was stopped at its memory limit ({} MiB): it asked to grow its memory to {} MiB; raise `limits.memory` if that is expected",
            limits.memory >> 20,
            hit.desired >> 20
        );
    }
    if let Some(wasmtime::Trap::Interrupt) = err.downcast_ref::<wasmtime::Trap>() {
        return format!(
            "stage `{stage} ran longer than its time limit ({}s) and was stopped; raise `limits.timeout` if that is expected",
            limits.timeout.as_secs()
        );
    }
    let text = format!("{err:#}");
    format!("stage `{stage} crashed: {text}")
}

/// Rejects a component built against an incompatible version of the WIT package.
pub fn check_world_version(component: &Component, engine: &Engine) -> Result<()> {
    let ty = component.component_type();
    for (name, _) in ty.exports(&engine.engine) {
        if let Some(rest) = name.strip_prefix("pipeline:plugin/") {
            let version = rest.split_once('@').map(|(_, v)| v).unwrap_or("");
            if !compatible(version, bindings::WIT_VERSION) {
                bail!(
                    "the plugin was built against pipeline:plugin@{version}, which this host (pipeline:plugin@{}) cannot run",
                    bindings::WIT_VERSION
                );
            }
        }
    }
    Ok(())
}

/// Semver compatibility as the WIT package promises it: same major, and same minor while
/// the major is 0.
fn compatible(plugin: &str, host: &str) -> bool {
    let parse = |v: &str| -> Option<(u64, u64)> {
        let mut it = v.split('.');
        Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
    };
    match (parse(plugin), parse(host)) {
        (Some((pm, pn)), Some((hm, hn))) => pm == hm && (hm != 0 || pn == hn),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn version_compatibility() {
        assert!(super::compatible("0.1.0", "0.1.3"));
        assert!(!super::compatible("0.2.0", "0.1.0"));
        assert!(super::compatible("1.4.0", "1.0.0"));
        assert!(!super::compatible("2.0.0", "1.0.0"));
        assert!(!super::compatible("", "0.1.0"));
    }
}
