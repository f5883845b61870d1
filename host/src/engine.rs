//! The WebAssembly engine: one wasmtime engine per process, components compiled once and
//! cached on disk, one store per plugin instance with its stage's grants and limits.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};
use wasmtime::Store;
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime_wasi::WasiCtxBuilder;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;

use crate::builtin;
use crate::capabilities::{self, Grants, StoreState};
use crate::config::{Limits, PluginRef};
use crate::limits::MemoryLimiter;

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
                    // The watchdog of stage deadlines and of the grace after a cancellation:
                    // a stage blocked in a host call never reaches an epoch check.
                    crate::shutdown::tick();
                    std::thread::sleep(EPOCH_TICK);
                }
            })
            .context("cannot start the epoch thread")?;

        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)
            .map_err(anyhow::Error::from)
            .context("cannot link WASI")?;
        // Every capability's host interfaces (the shared types first).
        crate::bindings::host::pipeline::plugin::types::add_to_linker::<
            StoreState,
            HasSelf<StoreState>,
        >(&mut linker, |s| s)?;
        capabilities::link(&mut linker)
            .map_err(anyhow::Error::from)
            .context("cannot link the host's capabilities")?;
        // Plugins built against earlier contracts, served by the same capabilities.
        crate::contract::v0_2::add_to_linker(&mut linker)
            .map_err(anyhow::Error::from)
            .context("cannot link the earlier contracts' host interfaces")?;

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
        let mut embedded = None;
        let bytes: &[u8] = match plugin {
            PluginRef::Builtin(name) => {
                embedded.insert(builtin::component(name).with_context(|| {
                    format!(
                        "no built-in plugin named `{name}` (built-ins: {})",
                        builtin::names().join(", ")
                    )
                })?)
            }
            PluginRef::File(path) => {
                owned = std::fs::read(path)
                    .with_context(|| format!("cannot read plugin file {}", path.display()))?;
                &owned
            }
            PluginRef::Oci(r) => {
                owned = crate::oci::load(r)?;
                &owned
            }
        };
        let component = self
            .component(bytes)
            .with_context(|| format!("cannot load plugin {plugin}"));
        if let Some(bytes) = embedded {
            release_pages(bytes);
        }
        component
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
            "{}-{:016x}.{CACHE_VERSION}.cwasm",
            hex::encode(&digest[..16]),
            h.finish()
        )))
    }

    /// A cache entry is native code: it is loaded only from a directory and a file this
    /// user owns and nobody else can write, and only if its SHA-256 matches the digest
    /// file beside it; otherwise the wasm is compiled again (and the warning says why).
    /// The code is mapped from the file, not copied: only the pages that run become
    /// resident (the `s3` sink's 13 MB of code cost 13 MB of RSS when copied).
    fn cached(&self, wasm: &[u8], path: &Path) -> Result<Component> {
        let loaded = open_cache(path).and_then(|entry| match entry {
            Some((file, digest)) => self.map_cached(&file, &digest, path),
            None => Ok(None),
        });
        match loaded {
            Ok(Some(c)) => return Ok(c),
            Ok(None) => {}
            Err(reason) => crate::logging::warn(
                None,
                &format!(
                    "not loading the compiled plugin cached in {}: {reason}; compiling it again",
                    path.display()
                ),
            ),
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

    /// The checked cache entry `file` as a component: mapped through `/proc/self/fd` (the
    /// very file that was checked, whatever its path now names), or read into memory
    /// where it cannot be mapped executable (a `noexec` mount). `None`: wasmtime refused it
    /// (another version's); an error: the bytes read no longer match the digest.
    fn map_cached(
        &self,
        file: &std::fs::File,
        digest: &str,
        path: &Path,
    ) -> Result<Option<Component>, String> {
        use std::os::fd::AsRawFd;
        let fd_path = PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()));
        // SAFETY: the file was written by `write_cache` from `serialize`, its SHA-256
        // matched the digest written beside it just now, and it and its directory can be
        // written by this user only (who must not edit an entry in place while a run maps
        // it: pages are read from the file as they are used); wasmtime checks the header
        // and the engine's version and settings.
        match unsafe { Component::deserialize_file(&self.engine, &fd_path) } {
            Ok(c) => return Ok(Some(c)),
            Err(e) => crate::logging::debug(
                None,
                &format!(
                    "cannot map cache entry {}: {e:#}; reading it",
                    path.display()
                ),
            ),
        }
        let bytes = read_checked(file, digest)?;
        // SAFETY: as above, for the bytes just read and checked again.
        match unsafe { Component::deserialize(&self.engine, &bytes) } {
            Ok(c) => Ok(Some(c)),
            Err(e) => {
                crate::logging::debug(
                    None,
                    &format!("ignoring cache entry {}: {e:#}", path.display()),
                );
                Ok(None)
            }
        }
    }

    /// A fresh store for one plugin instance, with exactly `grants` and `limits`.
    pub fn store(
        &self,
        stage: &str,
        grants: &Grants,
        limits: &Limits,
    ) -> Result<Store<StoreState>> {
        // Nothing new starts once the run is stopped.
        if let Some(stopped) = crate::shutdown::error() {
            bail!("stage `{stage}` was not started: {stopped}");
        }
        self.new_store(stage, grants, limits, true)
    }

    /// A store for a plugin that reports on the run, a notifier: it starts even after the
    /// run was stopped and is not trapped for the stop, only by its own time limit (and
    /// the process's exit [`crate::shutdown::GRACE`] after the stop).
    pub fn store_after_stop(
        &self,
        stage: &str,
        grants: &Grants,
        limits: &Limits,
    ) -> Result<Store<StoreState>> {
        self.new_store(stage, grants, limits, false)
    }

    fn new_store(
        &self,
        stage: &str,
        grants: &Grants,
        limits: &Limits,
        stoppable: bool,
    ) -> Result<Store<StoreState>> {
        let mut wasi = WasiCtxBuilder::new();
        capabilities::wasi(&mut wasi, stage, grants).with_context(|| format!("stage `{stage}`"))?;
        let stderr = MemoryOutputPipe::new(PLUGIN_STDERR_CAPACITY);
        wasi.stdout(stderr.clone()).stderr(stderr.clone());
        // Each stage has a thread of its own, so a file operation may block it: done on the
        // thread, a sink's write costs no hand-off to a tokio worker and back (two wake-ups
        // per chunk, measured with bench/files.sh).
        wasi.allow_blocking_current_thread(true);
        let memory = usize::try_from(limits.memory).unwrap_or(usize::MAX);
        let state = StoreState::new(
            stage,
            grants,
            wasi.build(),
            MemoryLimiter::new(memory),
            stderr,
        );
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limits);
        // Checked at every tick: the stage's own deadline traps it (`Trap::Interrupt`, named
        // as its time limit); a stopped run traps it after TRAP_AFTER, leaving time for its
        // failure path (remove a partial, abort an upload) first. The watchdog
        // (shutdown::tick) watches the same deadline for stages blocked in host calls.
        // A notifier is not watched by the run's watchdog: its deadline passing must not
        // stop the run it reports on (crate::notify leaves it behind instead).
        let watch = stoppable.then(|| crate::shutdown::watch_stage(stage, limits.timeout));
        let deadline = match &watch {
            Some(w) => w.deadline(),
            None => Instant::now()
                .checked_add(limits.timeout)
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(100 * 365 * 86400)),
        };
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(move |_| {
            // Holds the watch as long as the store lives.
            let _watched = &watch;
            if Instant::now() >= deadline {
                return Err(wasmtime::Trap::Interrupt.into());
            }
            if stoppable
                && let Some(for_) = crate::shutdown::cancelled_for()
                && for_ >= crate::shutdown::TRAP_AFTER
                && let Some(stopped) = crate::shutdown::error()
            {
                return Err(stopped.into());
            }
            Ok(wasmtime::UpdateDeadline::Continue(1))
        });
        Ok(store)
    }
}

/// The cache's layout: `NAME.2.cwasm` holds what `Component::serialize` wrote (so it can
/// be mapped as it is) and `NAME.2.cwasm.sha256` its SHA-256, after [`DIGEST_HEADER`].
/// Version 1 kept both in one file, which had to be copied to be loaded.
const CACHE_VERSION: u32 = 2;
const DIGEST_HEADER: &str = "pipeline component cache 2\n";

/// Why a cache directory or file cannot be trusted, if it cannot: it must be a real
/// directory or file (not a symbolic link), owned by this user and not writable by the
/// group or others. Anyone who can write there could make this process run their code.
pub(crate) fn untrusted(meta: &std::fs::Metadata, what: &str, dir: bool) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let euid = unsafe { libc::geteuid() };
    let kind_ok = if dir { meta.is_dir() } else { meta.is_file() };
    if !kind_ok {
        return Some(format!(
            "the {what} is not a {}",
            if dir { "directory" } else { "regular file" }
        ));
    }
    if meta.uid() != euid {
        return Some(format!(
            "the {what} is owned by uid {}, not by this user (uid {euid})",
            meta.uid()
        ));
    }
    if meta.mode() & 0o022 != 0 {
        return Some(format!(
            "the {what} is writable by {} (mode {:o}); `chmod go-w` it",
            if meta.mode() & 0o002 != 0 {
                "every user"
            } else {
                "its group"
            },
            meta.mode() & 0o7777
        ));
    }
    None
}

/// A cache entry's file, opened and checked (trusted, and its SHA-256 the one recorded
/// beside it), with that SHA-256; `None` when there is none. Hashed through a small
/// buffer: the bytes stay in the page cache, not in this process's memory.
fn open_cache(path: &Path) -> Result<Option<(std::fs::File, String)>, String> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent().ok_or("the cache path has no directory")?;
    match std::fs::symlink_metadata(dir) {
        Ok(m) => {
            if let Some(why) = untrusted(&m, "cache directory", true) {
                return Err(why);
            }
        }
        Err(_) => return Ok(None),
    }
    let open = |p: &Path| {
        std::fs::File::options()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(p)
    };
    // O_NOFOLLOW, and the checks on the opened files themselves: what is read is what was
    // checked.
    let file = match open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot open it: {e}")),
    };
    let meta = file.metadata().map_err(|e| e.to_string())?;
    if let Some(why) = untrusted(&meta, "cache file", false) {
        return Err(why);
    }
    // An entry without its digest (a run stopped between the two renames) is written again.
    let digest_path = digest_path(path);
    let mut digest_file = match open(&digest_path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot open {}: {e}", digest_path.display())),
    };
    let meta = digest_file.metadata().map_err(|e| e.to_string())?;
    if let Some(why) = untrusted(&meta, "cache digest file", false) {
        return Err(why);
    }
    let mut recorded = String::new();
    std::io::Read::read_to_string(
        &mut std::io::Read::take(&mut digest_file, 256),
        &mut recorded,
    )
    .map_err(|e| format!("cannot read {}: {e}", digest_path.display()))?;
    let recorded = recorded
        .strip_prefix(DIGEST_HEADER)
        .map(str::trim_end)
        .ok_or("its digest file is not one of this version")?;
    if hash_file(&file).map_err(|e| format!("cannot read it: {e}"))? != recorded {
        return Err(MISMATCH.into());
    }
    Ok(Some((file, recorded.to_owned())))
}

fn digest_path(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".sha256");
    PathBuf::from(p)
}

/// The hex SHA-256 of a whole file, read from its start through a 256 KiB buffer.
fn hash_file(file: &std::fs::File) -> std::io::Result<String> {
    use std::os::unix::fs::FileExt;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut at = 0u64;
    loop {
        match file.read_at(&mut buf, at) {
            Ok(0) => break,
            Ok(n) => {
                hasher.update(&buf[..n]);
                at += n as u64;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(hex::encode(hasher.finalize()))
}

const MISMATCH: &str = "its SHA-256 does not match its contents (corrupted or replaced)";

/// An entry's bytes, read whole and checked against `digest`, for when it cannot be
/// mapped.
fn read_checked(file: &std::fs::File, digest: &str) -> Result<Vec<u8>, String> {
    use std::os::unix::fs::FileExt;
    let len = file.metadata().map_err(|e| e.to_string())?.len();
    let mut bytes = vec![0u8; usize::try_from(len).map_err(|e| e.to_string())?];
    file.read_exact_at(&mut bytes, 0)
        .map_err(|e| format!("cannot read it: {e}"))?;
    if hex::encode(Sha256::digest(&bytes)) != digest {
        return Err(MISMATCH.into());
    }
    Ok(bytes)
}

/// Writes the entry and then its digest, each to a fresh private file (0600, no link
/// followed, synced) renamed into place: a reader sees an old pair, a new pair, or an
/// entry without a matching digest (which it compiles again), never a half-written file.
fn write_cache(path: &Path, component: &Component) -> Result<()> {
    let bytes = component.serialize()?;
    let dir = path.parent().context("cache path has no parent")?;
    std::fs::create_dir_all(dir)?;
    let meta = std::fs::symlink_metadata(dir)?;
    if let Some(why) = untrusted(&meta, "cache directory", true) {
        bail!("{why}");
    }
    let digest = format!("{DIGEST_HEADER}{}\n", hex::encode(Sha256::digest(&bytes)));
    crate::history::write_atomically(path, &bytes, 0o600)?;
    crate::history::write_atomically(&digest_path(path), digest.as_bytes(), 0o600)?;
    // The same entry in version 1's layout, left by an earlier pipeline: never read again.
    let suffix = format!(".{CACHE_VERSION}.cwasm");
    if let Some(name) = path.to_str().and_then(|p| p.strip_suffix(&suffix)) {
        let _ = std::fs::remove_file(format!("{name}.cwasm"));
    }
    Ok(())
}

/// Takes a built-in's embedded wasm out of this process's resident memory once it is
/// loaded. Its bytes are read at every run (hashed, to find the compiled code in the
/// cache), and the pages read would stay counted in the run's RSS: 5 MiB for `s3`. Only
/// whole pages inside the slice, and only where they are what the binary's file holds (a
/// private, read-only mapping of a file): there a page dropped is read again from the
/// file if needed. A binary unpacked into anonymous memory (UPX) keeps its pages.
fn release_pages(bytes: &'static [u8]) {
    // SAFETY: sysconf has no preconditions.
    let page = match usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }) {
        Ok(p) if p.is_power_of_two() => p,
        _ => return,
    };
    let start = (bytes.as_ptr() as usize).next_multiple_of(page);
    let end = (bytes.as_ptr() as usize + bytes.len()) & !(page - 1);
    let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else {
        return;
    };
    if end > start && read_only_file_mapping(&maps, start, end) {
        // SAFETY: whole pages inside a `'static` slice, in a private read-only mapping of
        // a file: pages of bytes that need no relocation were never written, so
        // MADV_DONTNEED only drops them from this process's page tables, and a later read
        // faults the same bytes back in from the file.
        unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED) };
    }
}

/// Whether `start..end` lies within one mapping of `maps` (`/proc/self/maps`) that is
/// private, not writable, and backed by a file (an inode, a path).
fn read_only_file_mapping(maps: &str, start: usize, end: usize) -> bool {
    maps.lines().any(|line| {
        let mut f = line.split_whitespace();
        let (Some(range), Some(perms), Some(_offset), Some(_dev), Some(inode), Some(path)) =
            (f.next(), f.next(), f.next(), f.next(), f.next(), f.next())
        else {
            return false;
        };
        let Some((lo, hi)) = range.split_once('-') else {
            return false;
        };
        let (Ok(lo), Ok(hi)) = (usize::from_str_radix(lo, 16), usize::from_str_radix(hi, 16))
        else {
            return false;
        };
        lo <= start
            && end <= hi
            && perms.starts_with('r')
            && !perms.contains('w')
            && perms.ends_with('p')
            && inode != "0"
            && path.starts_with('/')
    })
}

/// `$PIPELINE_CACHE_DIR`, else `$XDG_CACHE_HOME/pipeline`, else `~/.cache/pipeline`.
pub(crate) fn cache_dir() -> Option<PathBuf> {
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
        .find_map(|e| e.downcast_ref::<crate::limits::MemoryLimitExceeded>())
    {
        return format!(
            "stage `{stage} was stopped at its memory limit ({} MiB): it asked to grow its memories and tables to {} MiB in all; raise `limits.memory` if that is expected",
            limits.memory >> 20,
            hit.desired >> 20
        );
    }
    if let Some(stopped) = err
        .chain()
        .find_map(|e| e.downcast_ref::<crate::error::Cancelled>())
    {
        return format!("stage `{stage} was stopped: {stopped}");
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

/// Rejects a component built against a version of the WIT package this host does not run
/// (it runs every version since 0.2: [`crate::contract`]), naming the versions it runs.
pub fn check_world_version(component: &Component, engine: &Engine) -> Result<()> {
    crate::contract::version_of(&engine.engine, component)
        .map(|_| ())
        .map_err(|e| anyhow::anyhow!(e))
}

#[cfg(test)]
mod tests {
    use super::read_only_file_mapping;

    const MAPS: &str = "\
5581a0000000-5581a0400000 r--p 00000000 fd:01 1234 /usr/bin/pipeline
5581a0400000-5581a0800000 r-xp 00400000 fd:01 1234 /usr/bin/pipeline
5581a0800000-5581a0900000 rw-p 00800000 fd:01 1234 /usr/bin/pipeline
5581a0900000-5581a0a00000 r--p 00000000 00:00 0
7f0000000000-7f0000100000 r--s 00000000 fd:01 99 /tmp/shared
";

    #[test]
    fn only_private_read_only_file_mappings_have_their_pages_released() {
        let ok = |a: usize, b: usize| read_only_file_mapping(MAPS, a, b);
        assert!(
            ok(0x5581a0001000, 0x5581a0003000),
            "read-only data of the binary"
        );
        assert!(ok(0x5581a0401000, 0x5581a0402000), "its code");
        assert!(!ok(0x5581a03ff000, 0x5581a0401000), "across two mappings");
        assert!(!ok(0x5581a0801000, 0x5581a0802000), "writable");
        assert!(
            !ok(0x5581a0901000, 0x5581a0902000),
            "anonymous (an unpacked binary)"
        );
        assert!(!ok(0x7f0000001000, 0x7f0000002000), "shared");
        assert!(!ok(0x1000, 0x2000), "not mapped");
        assert!(!read_only_file_mapping("garbage\n\n", 0x1000, 0x2000));
    }
}
