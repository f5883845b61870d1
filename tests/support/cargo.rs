//! Building a plugin crate the way its author would: `cargo build --target wasm32-wasip2
//! --release` in the crate's own directory, outside this repository's workspaces.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::scratch::repo;

/// Builds the crate in `dir` and returns its component, `<lib>.wasm`. The build shares
/// `target/examples` so repeated test runs (and CI) reuse what was compiled.
pub fn build_wasm(dir: &Path, lib: &str, locked: bool) -> PathBuf {
    let target_dir = repo().join("target").join("examples");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "--release", "--target", "wasm32-wasip2"])
        .current_dir(dir)
        .env("CARGO_TARGET_DIR", &target_dir);
    if locked {
        cmd.arg("--locked");
    }
    // What `cargo test` set for this process describes the host's build, not this one.
    for var in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_TARGET",
        "CARGO_BUILD_RUSTFLAGS",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTC_WRAPPER",
        "CARGO_MANIFEST_DIR",
        "CARGO_MANIFEST_PATH",
        "CARGO_PRIMARY_PACKAGE",
    ] {
        cmd.env_remove(var);
    }
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run cargo in {}: {e}", dir.display()));
    assert!(
        out.status.success(),
        "building {} for wasm32-wasip2 failed (is the target installed? `rustup target add wasm32-wasip2`):\n{}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let wasm = target_dir
        .join("wasm32-wasip2")
        .join("release")
        .join(format!("{lib}.wasm"));
    assert!(
        wasm.is_file(),
        "the build did not produce {}",
        wasm.display()
    );
    wasm
}
