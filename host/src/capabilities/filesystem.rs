//! Directories a plugin may reach: preopened at the same path it has on the host, so a
//! plugin's messages name real paths. Nothing else of the host's file system is visible.

use std::path::Path;

use anyhow::{Context, Result};
use wasmtime_wasi::{FsPerms, WasiCtxBuilder};

use super::Grants;

/// Preopens every granted directory.
pub fn preopen(builder: &mut WasiCtxBuilder, grants: &Grants) -> Result<()> {
    for (dir, writable) in &grants.directories {
        // A directory a run has not created yet (`pipeline list` before the first run):
        // the plugin finds nothing there, as it would in an empty one.
        if !dir.exists() {
            continue;
        }
        let guest = dir
            .to_str()
            .with_context(|| format!("directory {} is not valid UTF-8", dir.display()))?;
        let perms = if *writable {
            FsPerms::ReadWrite
        } else {
            FsPerms::ReadOnly
        };
        builder
            .preopened_dir(dir, guest, perms)
            .map_err(anyhow::Error::from)
            .with_context(|| format!("cannot open granted directory {}", dir.display()))?;
    }
    Ok(())
}

/// Creates a granted directory that the plugin asked to be created (mode 0700 under the
/// process umask the CLI sets), so that a first run into an empty place works.
pub fn create(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)
}
